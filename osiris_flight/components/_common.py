"""Small pieces every built-in component uses: batch sizing, column checks, schema fragments."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import pyarrow as pa

from osiris_flight.components.base import StepContext
from osiris_flight.errors import TerminalError

# JSON-schema dialect every component config schema declares.
SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
RELATIVE_PATHS = "A relative path is taken from the directory the run was started in."

# Arrow types a config may name for a column (csv column_types, casts). Keys are what users write.
ARROW_TYPE_NAMES: dict[str, pa.DataType] = {
    "int8": pa.int8(),
    "int16": pa.int16(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "uint8": pa.uint8(),
    "uint16": pa.uint16(),
    "uint32": pa.uint32(),
    "uint64": pa.uint64(),
    "float32": pa.float32(),
    "float64": pa.float64(),
    "double": pa.float64(),
    "string": pa.string(),
    "large_string": pa.large_string(),
    "binary": pa.binary(),
    "bool": pa.bool_(),
    "boolean": pa.bool_(),
    "date": pa.date32(),
    "date32": pa.date32(),
    "timestamp": pa.timestamp("us"),
    "timestamp[s]": pa.timestamp("s"),
    "timestamp[ms]": pa.timestamp("ms"),
    "timestamp[us]": pa.timestamp("us"),
    "timestamp[ns]": pa.timestamp("ns"),
    "time": pa.time64("us"),
}


def column_list_schema(description: str, *, min_items: int = 0) -> dict[str, Any]:
    """A JSON-schema fragment for a list of distinct column names."""
    return {
        "type": "array",
        "items": {"type": "string", "minLength": 1},
        "uniqueItems": True,
        "minItems": min_items,
        "description": description,
    }


def format_columns(names: Iterable[str], limit: int = 40) -> str:
    """``[a, b, c]`` for an error message, shortened when a table is very wide."""
    names = list(names)
    shown = ", ".join(names[:limit])
    if len(names) > limit:
        shown += f", ... ({len(names) - limit} more)"
    return f"[{shown}]"


def require_columns(
    ctx: StepContext,
    wanted: Iterable[str],
    schema: pa.Schema,
    *,
    field: str,
    source: str = "input",
) -> None:
    """Raise TerminalError naming the first column of ``wanted`` that ``schema`` lacks.

    ``field`` is the config key that named the column; ``source`` says whose columns these are
    (``input``, ``input 'orders'``, ``file /x.csv``) so the user knows where to look.
    """
    available = schema.names
    for name in wanted:
        if name not in available:
            raise TerminalError(
                f"step '{ctx.step_id}': config.{field}: column '{name}' is not in the {source}; "
                f"available columns: {format_columns(available)}"
            )


def rebatch(batches: Iterable[pa.RecordBatch], rows: int) -> Iterator[pa.RecordBatch]:
    """Re-cut a batch stream into batches of ``rows`` rows (the last may be shorter).

    Operators whose output sizes vary (a selective filter, a fanning-out join, a CSV block) pass
    their output through this so downstream steps see ~``ctx.batch_rows`` rows per batch. Holds at
    most about ``2 * rows`` rows. Empty batches are dropped.
    """
    if rows <= 0:
        raise ValueError("rebatch rows must be positive")
    pending: list[pa.RecordBatch] = []
    pending_rows = 0
    for batch in batches:
        if batch.num_rows == 0:
            continue
        if not pending and batch.num_rows == rows:
            yield batch  # the common case: already the right size, no copy
            continue
        pending.append(batch)
        pending_rows += batch.num_rows
        if pending_rows < rows:
            continue
        combined = pa.concat_batches(pending) if len(pending) > 1 else pending[0]
        offset = 0
        while combined.num_rows - offset >= rows:
            yield combined.slice(offset, rows)
            offset += rows
        rest = combined.slice(offset)
        pending = [rest] if rest.num_rows else []
        pending_rows = rest.num_rows
    if pending:
        yield pa.concat_batches(pending) if len(pending) > 1 else pending[0]
