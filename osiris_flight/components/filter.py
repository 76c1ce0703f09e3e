"""``transform.filter``: keep the rows for which a SQL condition is true.

The condition language is a subset of a SQL WHERE clause in the MySQL dialect (see
``sql_predicate`` for exactly what is supported). Osiris users already write SQL for their
extractors, so they need not learn a second expression language; and a condition written as SQL is
pushed down into a MySQL read by the query optimizer (``oml/optimize.py``), for the parts MySQL
evaluates exactly as this filter does; ``where: TRUE`` is then what is left here. The text is parsed
with sqlglot when the pipeline is validated (an unsupported construct is reported before anything
runs) and translated into a pyarrow compute expression evaluated per batch, so the filter streams:
it holds one input batch and at most ~2 x ``ctx.batch_rows`` output rows.

Rows where the condition is NULL are dropped, as in SQL (``amount > 10`` drops rows whose amount is
NULL; write ``amount > 10 OR amount IS NULL`` to keep them).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import pyarrow as pa
from sqlglot import exp

from osiris_flight.components._common import (
    SCHEMA_DIALECT,
    column_list_schema,
    rebatch,
    require_columns,
)
from osiris_flight.components.base import ComponentSpec, Transform
from osiris_flight.components.sql_predicate import SUPPORTED, PredicateError, parse_predicate
from osiris_flight.data.rowstream import RowStream
from osiris_flight.errors import Problem, TerminalError
from osiris_flight.oml.validate import ColumnUse

CONFIG_SCHEMA: dict[str, Any] = {
    "$schema": SCHEMA_DIALECT,
    "title": "transform.filter",
    "type": "object",
    "additionalProperties": False,
    "required": ["where"],
    "properties": {
        "where": {
            "type": "string",
            "minLength": 1,
            "description": "The condition, as after WHERE in MySQL, e.g. "
            "\"status = 'paid' AND amount >= 10\". Supported: " + SUPPORTED + ". Rows where it is "
            "false or NULL are dropped.",
        },
        "columns": column_list_schema(
            "Keep only these columns (in this order) after filtering. Default: all."
        ),
    },
}


def check(config: Mapping[str, Any]) -> list[Problem]:
    """Parse ``where`` at validation time, so an unsupported construct is reported before running."""
    where = config.get("where")
    if not isinstance(where, str):
        return []  # the JSON schema reports a missing or non-string where
    try:
        parse_predicate(where)
    except PredicateError as exc:
        return [Problem(str(exc), field="config.where", hint=f"supported: {SUPPORTED}")]
    return []


def columns_used(config: Mapping[str, Any]) -> ColumnUse | None:
    """The condition's columns and the kept ones; without ``columns`` every other column goes on."""
    try:
        predicate = parse_predicate(str(config.get("where", "")))
    except PredicateError:
        return None  # not validated yet: claim nothing, so nothing is projected away
    kept = [str(c) for c in config.get("columns") or []]
    return ColumnUse(tuple(dict.fromkeys([*predicate.columns, *kept])), passes_through=not kept)


class Filter(Transform):
    """Per-batch ``RecordBatch.filter`` with the translated condition, then an optional projection."""

    def apply(self, inputs: Mapping[str, RowStream]) -> RowStream:
        step = self.ctx.step_id
        if len(inputs) != 1:
            raise TerminalError(f"step '{step}': transform.filter takes exactly one input, got {len(inputs)}")
        (stream,) = inputs.values()
        where = str(self.config["where"])
        schema = stream.schema
        try:
            predicate = parse_predicate(where)
            require_columns(self.ctx, predicate.columns, schema, field="where")
            expression = predicate.to_arrow(schema)
        except PredicateError as exc:
            raise TerminalError(f"step '{step}': config.where: {exc}") from None
        try:
            # Bind against the schema now, so a type error fails the step before any row is read.
            schema.empty_table().filter(expression)
        except (pa.ArrowNotImplementedError, pa.ArrowTypeError, pa.ArrowInvalid) as exc:
            types = ", ".join(f"{c} {schema.field(c).type}" for c in predicate.columns)
            raise TerminalError(
                f"step '{step}': config.where: {where!r} does not fit the input's column types "
                f"({types}): {exc}"
            ) from None
        columns = list(self.config.get("columns") or [])
        require_columns(self.ctx, columns, schema, field="columns")
        out_schema = pa.schema([schema.field(c) for c in columns]) if columns else schema
        # ``where: TRUE`` is what the query optimizer leaves when MySQL already applied the condition:
        # pass batches on untouched instead of copying each through a filter that keeps every row.
        keeps_all = isinstance(predicate.tree, exp.Boolean) and bool(predicate.tree.this)

        def batches() -> Iterator[pa.RecordBatch]:
            for batch in stream.batches():
                self.ctx.check_cancelled()
                if keeps_all:
                    yield batch.select(columns) if columns else batch
                    continue
                try:
                    kept = batch.filter(expression)
                except pa.ArrowException as exc:  # e.g. integer overflow in the condition's arithmetic
                    raise TerminalError(
                        f"step '{step}': config.where: {where!r} failed on a batch: {exc}"
                    ) from None
                yield kept.select(columns) if columns else kept

        return RowStream(rebatch(batches(), self.ctx.batch_rows), out_schema, name=step)


COMPONENTS: list[ComponentSpec] = [
    ComponentSpec(
        name="transform.filter",
        role="transform",
        operator=Filter,
        config_schema=CONFIG_SCHEMA,
        description="Keep the rows for which a SQL (MySQL WHERE-clause) condition is true.",
        min_inputs=1,
        max_inputs=1,
        partitionwise=True,
        check=check,
        columns_used=columns_used,
    ),
]
