"""``transform.aggregator``: SQL-style GROUP BY with count, sum, min, max, mean, count_distinct.

Streaming with bounded state. Each input batch is reduced at once to partial aggregates per group
(pyarrow ``Table.group_by(...).aggregate``, single-threaded); the partials are kept and, whenever
their rows pass a threshold, compacted by aggregating them again with each state's merge function
(counts and sums add up, min of mins, max of maxes; a mean is kept as a sum and a count). So the
state is proportional to the number of groups (plus, for each ``count_distinct``, the number of
distinct (group, value) pairs), not to the number of input rows: a billion rows in ten groups hold
ten rows of state. The threshold doubles with the compacted size, so compaction costs amortised
O(rows). Nothing is emitted until the input ends (an aggregate needs every row).

Semantics follow SQL: NULL group keys form a group; ``sum``, ``min``, ``max``, ``mean`` skip NULLs
(and are NULL when a group has only NULLs); ``count`` counts rows, ``{fn: count, column: c}``
counts non-NULL values of c; ``count_distinct`` ignores NULLs. A global aggregate (empty
``group_by``) returns one row even for empty input. Output is sorted by the group keys (NULLs last),
so a re-run gives byte-identical files; columns are the group_by columns, then the aggregations in
config order. Types: count and count_distinct int64; sum of integers int64, of floats float64;
mean float64; min and max keep the column's type.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from osiris_flight.components._common import (
    SCHEMA_DIALECT,
    column_list_schema,
    rebatch,
    require_columns,
)
from osiris_flight.components.base import ComponentSpec, StepContext, Transform
from osiris_flight.data.rowstream import RowStream
from osiris_flight.errors import Problem, TerminalError
from osiris_flight.oml.validate import ColumnUse

FUNCTIONS = ("count", "sum", "min", "max", "mean", "avg", "count_distinct")
# Partial rows kept before a compaction is due, at least (rows of state, not bytes).
MIN_COMPACT_ROWS = 65536

CONFIG_SCHEMA: dict[str, Any] = {
    "$schema": SCHEMA_DIALECT,
    "title": "transform.aggregator",
    "type": "object",
    "additionalProperties": False,
    "required": ["aggregations"],
    "properties": {
        "group_by": column_list_schema(
            "Group key columns. Default [] (one global row). NULL keys form a group."
        ),
        "aggregations": {
            "type": "object",
            "minProperties": 1,
            "description": "Output column -> function. Short form 'sum' (or min, max, mean, avg, "
            "count_distinct) applies it to the input column with the output's name; 'count' counts "
            "rows. Long form {fn: sum, column: amount}; {fn: count, column: c} counts non-NULL c.",
            "additionalProperties": {
                "anyOf": [
                    {"enum": list(FUNCTIONS)},
                    {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["fn"],
                        "properties": {
                            "fn": {"enum": list(FUNCTIONS)},
                            "column": {
                                "type": "string",
                                "minLength": 1,
                                "description": "Input column. Default: the output name (count: rows).",
                            },
                        },
                    },
                ]
            },
        },
    },
}


@dataclass(frozen=True)
class Aggregation:
    """One output column: ``fn`` (count_all, count, sum, min, max, mean, count_distinct) of ``column``."""

    name: str
    fn: str
    column: str | None


def parse_aggregations(config: Mapping[str, Any]) -> list[Aggregation]:
    """The aggregations in config order, with short forms and ``avg`` resolved."""
    result = []
    for name, spec in (config.get("aggregations") or {}).items():
        fn, column = (spec, None) if isinstance(spec, str) else (spec.get("fn"), spec.get("column"))
        fn = "mean" if fn == "avg" else fn
        if fn == "count":
            result.append(Aggregation(name, "count" if column else "count_all", column))
        else:
            result.append(Aggregation(name, str(fn), column or name))
    return result


def check(config: Mapping[str, Any]) -> list[Problem]:
    keys = config.get("group_by") or []
    return [
        Problem(
            f"output column '{name}' is also a group_by column",
            field=f"config.aggregations.{name}",
            hint="give the aggregation another name",
        )
        for name in (config.get("aggregations") or {})
        if name in keys
    ]


def columns_used(config: Mapping[str, Any]) -> ColumnUse:
    """The group keys and the aggregated columns (a row count reads none); nothing else goes on."""
    keys = [str(k) for k in config.get("group_by") or []]
    values = [a.column for a in parse_aggregations(config) if a.column]
    return ColumnUse(tuple(dict.fromkeys(keys + values)), passes_through=False)


@dataclass(frozen=True)
class _State:
    """One partial-aggregate column: pyarrow function per batch, and the function that merges partials."""

    value: str | None  # renamed input column (v0, v1, ...), None for count_all
    fn: str
    merge: str


_STATES = {
    "count_all": [("count_all", "sum")],
    "count": [("count", "sum")],
    "sum": [("sum", "sum")],
    "min": [("min", "min")],
    "max": [("max", "max")],
    "mean": [("sum", "sum"), ("count", "sum")],
    "count_distinct": [],  # kept as distinct (keys, value) pairs instead
}


class _Partials:
    """Accumulated partial tables of one kind, compacted when they grow past a threshold."""

    def __init__(self, keys: list[str], aggregates: list[tuple[str, str]], min_rows: int) -> None:
        self.keys = keys
        self.aggregates = aggregates  # (column, merge fn); group_by(keys) alone for distinct pairs
        self.tables: list[pa.Table] = []
        self.rows = 0
        self.threshold = min_rows

    def add(self, table: pa.Table) -> None:
        self.tables.append(table)
        self.rows += table.num_rows
        if self.rows > self.threshold:
            self.compact()
            self.threshold = max(self.threshold, 2 * self.rows)

    def compact(self) -> pa.Table:
        merged = pa.concat_tables(self.tables) if len(self.tables) != 1 else self.tables[0]
        if len(self.tables) != 1:
            merged = _group(merged, self.keys, self.aggregates)
        self.tables, self.rows = [merged], merged.num_rows
        return merged


def _group(table: pa.Table, keys: list[str], aggregates: list[tuple[str, str]]) -> pa.Table:
    """``group_by(keys).aggregate`` with the outputs named as the input columns (``s0``, not ``s0_sum``)."""
    specs: list[tuple[Any, str]] = [([] if fn == "count_all" else col, fn) for col, fn in aggregates]
    out = table.group_by(keys, use_threads=False).aggregate(specs)
    names = [fn if fn == "count_all" else f"{col}_{fn}" for col, fn in aggregates]
    return out.select(keys + names).rename_columns(keys + [f"s{i}" for i in range(len(aggregates))])


class Aggregator(Transform):
    """Grouped aggregation with state bounded by the number of groups (see the module docstring)."""

    def apply(self, inputs: Mapping[str, RowStream]) -> RowStream:
        step = self.ctx.step_id
        if len(inputs) != 1:
            raise TerminalError(f"step '{step}': transform.aggregator takes one input, got {len(inputs)}")
        (stream,) = inputs.values()
        schema = stream.schema
        self.group_by = list(self.config.get("group_by") or [])
        self.aggregations = parse_aggregations(self.config)
        require_columns(self.ctx, self.group_by, schema, field="group_by")
        for agg in self.aggregations:
            if agg.column is not None:
                require_columns(self.ctx, [agg.column], schema, field=f"aggregations.{agg.name}")
        self._plan(schema)
        out_schema = self._finalize(*self._reduce(iter(()), schema)).schema

        def batches() -> Iterator[pa.RecordBatch]:
            tables = (pa.Table.from_batches([b]) for b in stream.batches())
            result = self._finalize(*self._reduce(tables, schema))
            yield from result.to_batches(max_chunksize=self.ctx.batch_rows)

        return RowStream(rebatch(batches(), self.ctx.batch_rows), out_schema, name=step)

    def _plan(self, schema: pa.Schema) -> None:
        """Rename inputs to k0.. (keys) and v0.. (values), so no user name can clash with a state name."""
        self.keys = [f"k{i}" for i in range(len(self.group_by))]
        values = list(dict.fromkeys(a.column for a in self.aggregations if a.column))
        self.value_of = {column: f"v{i}" for i, column in enumerate(values)}
        self.input_columns = self.group_by + values
        self.states: list[_State] = [_State(None, "count_all", "sum")]  # always: every group counted
        for agg in self.aggregations:
            value = self.value_of.get(agg.column) if agg.column else None
            for fn, merge in _STATES[agg.fn]:
                if _State(value, fn, merge) not in self.states:
                    self.states.append(_State(value, fn, merge))
        self.distinct = list(
            dict.fromkeys(a.column for a in self.aggregations if a.fn == "count_distinct" and a.column)
        )

    def _reduce(self, tables: Iterator[pa.Table], schema: pa.Schema) -> tuple[pa.Table, dict[str, pa.Table]]:
        """Fold input tables into compacted partial state: (main state, distinct pairs per column).

        An empty table goes first, so the state has its types even when the input has no rows (and a
        global aggregate of no rows still gives its one row: count 0, the rest NULL).
        """
        threshold = max(MIN_COMPACT_ROWS, 4 * self.ctx.batch_rows)
        state_names = [f"s{i}" for i in range(len(self.states))]
        main = _Partials(
            self.keys, [(n, s.merge) for n, s in zip(state_names, self.states, strict=True)], threshold
        )
        pairs = {c: _Partials([*self.keys, "d"], [], threshold) for c in self.distinct}
        renamed = self.keys + [self.value_of[c] for c in self.input_columns[len(self.keys) :]]
        for table in itertools.chain([schema.empty_table()], tables):
            self.ctx.check_cancelled()
            table = table.select(self.input_columns).rename_columns(renamed)
            try:
                main.add(_group(table, self.keys, [(s.value or "", s.fn) for s in self.states]))
                for column, partial in pairs.items():
                    value = table.column(self.value_of[column])
                    distinct_input = table.select(self.keys).append_column("d", value)
                    partial.add(_group(distinct_input, [*self.keys, "d"], []))
            except pa.ArrowException as exc:
                raise self._error(schema, exc) from None
        try:
            return main.compact(), {c: p.compact() for c, p in pairs.items()}
        except pa.ArrowException as exc:
            raise self._error(schema, exc) from None

    def _error(self, schema: pa.Schema, exc: Exception) -> TerminalError:
        types = ", ".join(f"{c} {schema.field(c).type}" for c in self.input_columns)
        return TerminalError(f"step '{self.ctx.step_id}': cannot aggregate ({types}): {exc}")

    def _finalize(self, main: pa.Table, pairs: Mapping[str, pa.Table]) -> pa.Table:
        """Sorted output table: group_by columns, then each aggregation in config order."""
        order = [(k, "ascending") for k in self.keys]
        try:
            if order:
                main = main.sort_by(order)  # NULL keys sort last (the default)
            counts = {}
            for column, table in pairs.items():
                grouped = table.group_by(self.keys, use_threads=False).aggregate([("d", "count")])
                if order:
                    grouped = grouped.sort_by(order)
                counts[column] = grouped.column("d_count")
        except pa.ArrowException as exc:
            raise TerminalError(f"step '{self.ctx.step_id}': cannot sort the groups: {exc}") from None
        columns: dict[str, Any] = {
            name: main.column(k) for name, k in zip(self.group_by, self.keys, strict=True)
        }
        for agg in self.aggregations:
            if agg.fn == "count_distinct":
                assert agg.column is not None
                columns[agg.name] = counts[agg.column].cast(pa.int64())
            else:
                columns[agg.name] = self._output(main, agg)
        return pa.table(columns)

    def _state(self, main: pa.Table, agg: Aggregation, fn: str) -> pa.ChunkedArray:
        value = self.value_of.get(agg.column) if agg.column else None
        index = next(i for i, s in enumerate(self.states) if s.value == value and s.fn == fn)
        return main.column(f"s{index}")

    def _output(self, main: pa.Table, agg: Aggregation) -> pa.ChunkedArray:
        if agg.fn in ("count_all", "count"):
            return self._state(main, agg, agg.fn).cast(pa.int64())
        if agg.fn == "mean":
            total = self._state(main, agg, "sum").cast(pa.float64())
            count = self._state(main, agg, "count").cast(pa.float64())
            return pc.divide(total, count)
        result = self._state(main, agg, agg.fn)
        if agg.fn == "sum":
            if pa.types.is_integer(result.type) or pa.types.is_boolean(result.type):
                return _cast_sum(self.ctx, agg, result, pa.int64())
            if pa.types.is_floating(result.type):
                return result.cast(pa.float64())
        return result


def _cast_sum(
    ctx: StepContext, agg: Aggregation, values: pa.ChunkedArray, to: pa.DataType
) -> pa.ChunkedArray:
    try:
        return values.cast(to)
    except pa.ArrowInvalid:
        raise TerminalError(
            f"step '{ctx.step_id}': config.aggregations.{agg.name}: the sum of '{agg.column}' does not "
            f"fit in {to}"
        ) from None


COMPONENTS: list[ComponentSpec] = [
    ComponentSpec(
        name="transform.aggregator",
        role="transform",
        operator=Aggregator,
        config_schema=CONFIG_SCHEMA,
        description="Group rows and aggregate (count, sum, min, max, mean, count_distinct), streaming.",
        min_inputs=1,
        max_inputs=1,
        partitionwise=False,
        check=check,
        columns_used=columns_used,
    ),
]
