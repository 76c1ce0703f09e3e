"""Small test components so the oml tests do not depend on the real ones being written elsewhere.

Each has the real ComponentSpec shape: a role, input bounds, a JSON schema with
``additionalProperties: false`` and, for some, a semantic ``check`` and a ``partitions`` rule.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pyarrow as pa

from osiris_flight.components.base import ComponentSpec, Sink, Source, Transform, WriteResult
from osiris_flight.components.registry import Registry
from osiris_flight.data.rowstream import RowStream
from osiris_flight.errors import Problem


class EmptySource(Source):
    def open(self) -> RowStream:
        return RowStream([], schema=pa.schema([("x", pa.int64())]))


class FirstInput(Transform):
    def apply(self, inputs: Mapping[str, RowStream]) -> RowStream:
        return next(iter(inputs.values()))


class CountingSink(Sink):
    def write(self, stream: RowStream) -> WriteResult:
        return WriteResult(rows=sum(b.num_rows for b in stream.batches()))


def _writer_check(config: Mapping[str, Any]) -> list[Problem]:
    if str(config.get("path", "")).endswith("/"):
        return [Problem("path names a directory, not a file", field="path", hint="end it with a file name")]
    return []


def _obj(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}


READER = ComponentSpec(
    name="test.reader",
    role="source",
    operator=EmptySource,
    config_schema=_obj(
        {
            "path": {"type": "string"},
            "delimiter": {"type": "string", "minLength": 1},
            "partitions": {"type": "integer", "minimum": 1},
            "batch_size": {"type": "integer", "minimum": 1},
        },
        ["path"],
    ),
    partitions=lambda config: int(config.get("partitions", 1)),
)
MYSQL = ComponentSpec(
    name="mysql.extractor",
    role="source",
    operator=EmptySource,
    config_schema=_obj(
        {"connection": {"type": "string"}, "query": {"type": "string"}}, ["connection", "query"]
    ),
)
FILTER = ComponentSpec(
    name="test.filter",
    role="transform",
    operator=FirstInput,
    config_schema=_obj({"predicate": {"type": "string"}}, ["predicate"]),
    min_inputs=1,
    max_inputs=1,
    partitionwise=True,
)
AGGREGATE = ComponentSpec(
    name="test.aggregate",
    role="transform",
    operator=FirstInput,
    config_schema=_obj({"group_by": {"type": "array", "items": {"type": "string"}}}, ["group_by"]),
    min_inputs=1,
    max_inputs=1,
)
JOIN = ComponentSpec(
    name="test.join",
    role="transform",
    operator=FirstInput,
    config_schema=_obj({"on": {"type": "string"}, "how": {"enum": ["inner", "left"]}}, ["on"]),
    min_inputs=2,
    max_inputs=2,
)
UNION = ComponentSpec(
    name="test.union",
    role="transform",
    operator=FirstInput,
    config_schema=_obj({}, []),
    min_inputs=1,
    max_inputs=8,
    partitionwise=True,
)
WRITER = ComponentSpec(
    name="test.writer",
    role="sink",
    operator=CountingSink,
    config_schema=_obj(
        {
            "path": {"type": "string"},
            "write_mode": {"type": "string", "enum": ["overwrite", "append"]},
            "batch_size": {"type": "integer", "minimum": 1},
            "header": {"type": "boolean"},
        },
        ["path"],
    ),
    min_inputs=1,
    max_inputs=1,
    check=_writer_check,
)
# Accepts any config: for tests about substitution in fields a strict schema would reject.
OPEN_WRITER = ComponentSpec(
    name="test.open_writer",
    role="sink",
    operator=CountingSink,
    config_schema={"type": "object"},
    min_inputs=1,
    max_inputs=1,
)

ALL = (READER, MYSQL, FILTER, AGGREGATE, JOIN, UNION, WRITER, OPEN_WRITER)


def make_registry() -> Registry:
    return Registry(ALL)
