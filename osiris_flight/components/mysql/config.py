"""Config schemas and semantic checks of ``mysql.extractor`` and ``mysql.writer``.

Keys are Osiris's (``connection``, ``query``/``table``/``columns``, ``batch_size``; ``mode``,
``upsert_keys``, ``create_table``, ...) plus this engine's (``key``, ``chunk_rows``, ``partition``,
``retries``; ``primary_key``). Osiris keys that only tune a SQLAlchemy pool (``pool_size``,
``pool_recycle``, ``echo``) are accepted and ignored, so Osiris pipelines validate unchanged.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

from osiris_flight.components._common import SCHEMA_DIALECT, column_list_schema
from osiris_flight.errors import Problem
from osiris_flight.oml.validate import IGNORED_KEYWORD

_CONNECTION = {
    "type": "string",
    "pattern": r"^@[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)?$",
    "description": "Connection reference '@mysql.<alias>' from osiris_connections.yaml "
    "(host, port, database, user, password).",
}
_UNUSED = "accepted for Osiris compatibility; a task holds one connection, no pool"
_IGNORED = {
    "pool_size": {
        "type": "integer",
        "minimum": 1,
        "description": "Accepted for Osiris compatibility; unused.",
        IGNORED_KEYWORD: _UNUSED,
    },
    "pool_recycle": {
        "type": "integer",
        "description": "Accepted for Osiris compatibility; unused.",
        IGNORED_KEYWORD: _UNUSED,
    },
    "echo": {
        "type": "boolean",
        "description": "Accepted for Osiris compatibility; unused.",
        IGNORED_KEYWORD: "accepted for Osiris compatibility; statements are not echoed",
    },
}
_NAME = {"type": "string", "minLength": 1}

EXTRACTOR_SCHEMA: dict[str, Any] = {
    "$schema": SCHEMA_DIALECT,
    "title": "mysql.extractor",
    "type": "object",
    "additionalProperties": False,
    "required": ["connection"],
    "properties": {
        "connection": _CONNECTION,
        "query": {**_NAME, "description": "A SELECT to read. Give query or table, not both."},
        "table": {**_NAME, "description": "A table to read (all of it, or the columns listed)."},
        "schema": {**_NAME, "description": "Database of the table when not the connection's."},
        "columns": column_list_schema("With table: read only these columns, in this order."),
        "where": {
            **_NAME,
            "description": "With table: a MySQL condition the server applies to the rows (as after "
            "WHERE). The query optimizer sets it when it pushes a transform.filter into the read.",
        },
        "batch_size": {
            "type": "integer",
            "minimum": 1,
            "default": 65536,
            "description": "Rows per Arrow batch. Default 65536 (a batch is also cut at 64 MiB).",
        },
        "key": {
            **_NAME,
            "description": "A unique, orderable column: the read goes in resumable keyset chunks "
            "ordered by it. Default for a table: its primary key when it is one column; a query has "
            "no default key (it is then read in one statement and restarts from zero after a failure).",
        },
        "chunk_rows": {
            "type": "integer",
            "minimum": 1,
            "default": 500000,
            "description": "Rows per keyset chunk (one statement, one checkpoint). Default 500000.",
        },
        "partition": {
            "type": "object",
            "additionalProperties": False,
            "required": ["column"],
            "description": "Split the read into key ranges that run as parallel tasks: "
            "{column, partitions} (ranges between MIN and MAX, computed at run time) or "
            "{column, bounds: [b1, ...]} (N-1 ascending cut points for N ranges). Rows whose "
            "column is NULL go to partition 0.",
            "properties": {
                "column": {**_NAME, "description": "Column to split on (indexed, for speed)."},
                "partitions": {"type": "integer", "minimum": 1, "description": "Number of ranges."},
                "bounds": {
                    "type": "array",
                    "minItems": 1,
                    "items": {"type": ["integer", "number", "string"]},
                    "description": "Ascending cut points: partition i reads "
                    "bounds[i-1] <= column < bounds[i].",
                },
            },
        },
        "decoder": {
            "enum": ["binary", "native", "reference"],
            "default": "binary",
            "description": "binary (default): the statement runs as a server-side prepared statement "
            "and its binary-protocol rows are decoded by a Cython module straight into Arrow "
            "buffers; native: text-protocol rows cut into Arrow buffers by Cython; reference: the "
            "pure-Python text decoder the others are tested against. All give identical batches, "
            "except that in a plain query a FLOAT column keeps every float bit with binary (the "
            "text protocol sends 6 significant digits).",
        },
        "retries": {
            "type": "integer",
            "minimum": 0,
            "default": 5,
            "description": "Transient-error retries inside the task (backoff 0.2 s doubling, at "
            "most 30 s; the count resets after each delivered batch). Default 5.",
        },
        "limit": {"type": "integer", "minimum": 0, "description": "Read at most this many rows."},
        **_IGNORED,
    },
}

WRITER_SCHEMA: dict[str, Any] = {
    "$schema": SCHEMA_DIALECT,
    "title": "mysql.writer",
    "type": "object",
    "additionalProperties": False,
    "required": ["connection", "table"],
    "properties": {
        "connection": _CONNECTION,
        "table": {**_NAME, "description": "Target table."},
        "schema": {**_NAME, "description": "Database of the table when not the connection's."},
        "mode": {
            "enum": ["append", "replace", "upsert"],
            "default": "append",
            "description": "append (default): add the rows; replace: the table holds exactly the "
            "new rows (swapped in atomically); upsert: insert, or update rows whose upsert_keys match.",
        },
        "upsert_keys": column_list_schema(
            "Key columns for upsert (a PRIMARY or UNIQUE key of the table).", min_items=1
        ),
        "primary_key": column_list_schema(
            "Primary key of a table the writer creates; also the upsert keys when upsert_keys is not given.",
            min_items=1,
        ),
        "batch_size": {
            "type": "integer",
            "minimum": 1,
            "default": 10000,
            "description": "Rows per INSERT statement or LOAD DATA file. Default 10000.",
        },
        "create_table": {
            "type": "boolean",
            "default": False,
            "description": "Create the table from the input's schema when it does not exist "
            "(replace always creates it). Default false.",
        },
        "truncate_before": {
            "type": "boolean",
            "default": False,
            "description": "Osiris's flag: true makes the table hold exactly the new rows, as mode "
            "replace does (atomically). Default false.",
        },
        "load_method": {
            "enum": ["auto", "insert", "load_data"],
            "default": "auto",
            "description": "How rows reach the staging table: multi-row INSERT, or LOAD DATA LOCAL "
            "INFILE. Default auto: LOAD DATA, falling back to INSERT when the server refuses it.",
        },
        **_IGNORED,
    },
}


def check_extractor(config: Mapping[str, Any]) -> list[Problem]:
    problems: list[Problem] = []
    has_query, has_table = config.get("query") is not None, config.get("table") is not None
    if has_query == has_table:
        problems.append(
            Problem(
                "give exactly one of query and table",
                field="config.query" if has_query else "config.table",
                hint="table reads a whole table (optionally some columns); query runs a SELECT",
            )
        )
    if has_query and config.get("columns") is not None:
        problems.append(
            Problem(
                "columns is only used with table",
                field="config.columns",
                hint="select the columns in the query",
            )
        )
    if has_query and config.get("schema") is not None:
        problems.append(Problem("schema is only used with table", field="config.schema"))
    if has_query and config.get("where") is not None:
        problems.append(
            Problem("where is only used with table", field="config.where", hint="write it in the query")
        )
    partition = config.get("partition")
    if isinstance(partition, Mapping):
        if ("partitions" in partition) == ("bounds" in partition):
            problems.append(
                Problem(
                    "give exactly one of partitions and bounds",
                    field="config.partition",
                    hint="{column, partitions: 4}",
                )
            )
        bounds = partition.get("bounds")
        if (
            isinstance(bounds, list)
            and all(isinstance(b, int | float) and not isinstance(b, bool) for b in bounds)
            and any(a >= b for a, b in itertools.pairwise(bounds))
        ):
            problems.append(Problem("bounds must be strictly ascending", field="config.partition.bounds"))
        if config.get("limit") is not None:
            problems.append(
                Problem(
                    "limit cannot be combined with partition",
                    field="config.limit",
                    hint="each partition would apply it",
                )
            )
    return problems


def writer_keys(config: Mapping[str, Any]) -> list[str]:
    """The upsert keys: upsert_keys, else primary_key."""
    return list(config.get("upsert_keys") or config.get("primary_key") or [])


def writer_mode(config: Mapping[str, Any]) -> str:
    mode = str(config.get("mode", "append"))
    return "replace" if config.get("truncate_before") and mode == "append" else mode


def replace_needs_one_task(config: Mapping[str, Any]) -> Problem | None:
    """Mode replace swaps one staging table in: it cannot run once per partition of a split read."""
    if writer_mode(config) != "replace":
        return None
    field = "config.mode" if config.get("mode") == "replace" else "config.truncate_before"
    shown = "mode: replace" if field == "config.mode" else "truncate_before: true"
    return Problem(
        f"{shown} needs one writer task, but its input is a read split into partitions",
        field=field,
        hint="drop the partition of the upstream read, or use mode: append into an emptied table",
    )


def check_writer(config: Mapping[str, Any]) -> list[Problem]:
    problems: list[Problem] = []
    mode = config.get("mode", "append")
    if mode != "upsert" and config.get("upsert_keys"):
        problems.append(Problem("upsert_keys is only used with mode: upsert", field="config.upsert_keys"))
    if config.get("truncate_before") and mode == "upsert":
        problems.append(
            Problem("truncate_before cannot be combined with mode: upsert", field="config.truncate_before")
        )
    return problems
