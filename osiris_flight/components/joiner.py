"""``transform.joiner``: SQL joins of two inputs (inner, left, right, full, semi, anti).

Design: a hash join with the RIGHT input as the build side. The right input is read into memory
(only its key columns, de-duplicated, for semi and anti joins), so put the smaller input on the
right. The LEFT input streams: it is probed in chunks with pyarrow ``Table.join`` (single-threaded).
Because ``Table.join`` rebuilds its hash table on every call, a probe chunk holds at least as many
rows as the right side (but at most a quarter of the task's memory budget), which keeps the total
work O(left + right) rows instead of O(left x right / chunk). Right and full joins remember which
right rows matched (one byte per right row) and emit the unmatched ones, with NULL left columns, at
the end.

Semantics are SQL's: NULL keys never match. With ``on`` (SQL ``USING``) each key appears once; in a
right or full join it takes the right side's value where the left has no match. With
``left_on``/``right_on`` both sides' key columns are kept. A non-key column name present on both
sides gets ``suffixes`` (default ``["", "_right"]``: the left keeps its name). Output order is
deterministic: left rows in input order, each followed by its matches in right input order, then
(right, full) the unmatched right rows in right input order. Key types may differ if the right
key casts to the left key's type (int32 vs int64, string vs large_string).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from osiris_flight.components._common import SCHEMA_DIALECT, format_columns, rebatch, require_columns
from osiris_flight.components.base import ComponentSpec, Transform
from osiris_flight.data.rowstream import RowStream
from osiris_flight.errors import Problem, TerminalError

JOIN_TYPES = ("inner", "left", "right", "full", "semi", "anti")
# The pyarrow join each chunk of the left input runs; right/full add the unmatched right rows.
_ARROW_JOIN = {
    "inner": "inner",
    "left": "left outer",
    "right": "inner",
    "full": "left outer",
    "semi": "left semi",
    "anti": "left anti",
}
_LID, _RID = "__left_row", "__right_row"

_KEYS = {
    "anyOf": [
        {"type": "string", "minLength": 1},
        {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1},
    ]
}

CONFIG_SCHEMA: dict[str, Any] = {
    "$schema": SCHEMA_DIALECT,
    "title": "transform.joiner",
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "join_type": {
            "enum": list(JOIN_TYPES),
            "default": "inner",
            "description": "inner (default), left, right, full (outer), semi (left rows that have a "
            "match, left columns only) or anti (left rows that have none).",
        },
        "on": {**_KEYS, "description": "Key column(s) with the same name in both inputs."},
        "left_on": {**_KEYS, "description": "Key column(s) of the left input (with right_on)."},
        "right_on": {**_KEYS, "description": "Key column(s) of the right input, same count as left_on."},
        "suffixes": {
            "type": "array",
            "items": {"type": "string"},
            "minItems": 2,
            "maxItems": 2,
            "default": ["", "_right"],
            "description": "Appended to a non-key column name present in both inputs: [left, right]. "
            "Default ['', '_right'].",
        },
        "left": {
            "type": "string",
            "minLength": 1,
            "description": "Step id of the left (streamed) input. Default: the first dependency.",
        },
        "right": {
            "type": "string",
            "minLength": 1,
            "description": "Step id of the right (in-memory, so preferably smaller) input. Default: "
            "the other dependency.",
        },
    },
}


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def check(config: Mapping[str, Any]) -> list[Problem]:
    """The rules a JSON schema states badly: ``on`` xor ``left_on``+``right_on``, equal lengths."""
    problems = []
    on, left_on, right_on = (config.get(k) for k in ("on", "left_on", "right_on"))
    if on is not None and (left_on is not None or right_on is not None):
        problems.append(Problem("give either on, or left_on with right_on, not both", field="config.on"))
    elif on is None and left_on is None and right_on is None:
        problems.append(
            Problem(
                "no join keys",
                field="config.on",
                hint="set on: [key] (same name in both inputs), or left_on and right_on",
            )
        )
    elif on is None and (left_on is None) != (right_on is None):
        missing = "right_on" if right_on is None else "left_on"
        problems.append(Problem(f"{missing} is missing", field=f"config.{missing}"))
    elif on is None and len(_as_list(left_on)) != len(_as_list(right_on)):
        problems.append(
            Problem(
                f"left_on has {len(_as_list(left_on))} keys but right_on has {len(_as_list(right_on))}",
                field="config.right_on",
                hint="give one right key per left key, in the same order",
            )
        )
    suffixes = config.get("suffixes")
    if isinstance(suffixes, list) and len(suffixes) == 2 and suffixes[0] == suffixes[1]:
        problems.append(Problem("the two suffixes must differ", field="config.suffixes"))
    if config.get("left") is not None and config.get("left") == config.get("right"):
        problems.append(Problem("left and right name the same step", field="config.right"))
    return problems


@dataclass(frozen=True)
class _Plan:
    """Names and types worked out from the two schemas before any row is read."""

    join_type: str
    left_keys: list[str]
    right_keys: list[str]
    using: bool  # `on`: each key once
    left_names: list[str]  # output name of each left column, input order
    right_cols: list[str]  # right columns in the output, input order
    right_names: list[str]  # their output names
    key_types: list[pa.DataType]  # the left keys' types; each right key is cast to its left key's type


class Joiner(Transform):
    """Hash join, right side in memory, left side streamed (see the module docstring)."""

    def apply(self, inputs: Mapping[str, RowStream]) -> RowStream:
        step = self.ctx.step_id
        if len(inputs) != 2:
            raise TerminalError(
                f"step '{step}': transform.joiner needs exactly 2 inputs, got {len(inputs)}: "
                f"{format_columns(inputs)}"
            )
        left_id, right_id = self._sides(list(inputs))
        left, right = inputs[left_id], inputs[right_id]
        plan = self._plan(left.schema, right.schema, left_id, right_id)
        right_schema = self._build_schema(plan, right.schema)
        out_schema = self._join(plan, left.schema.empty_table(), right_schema.empty_table()).schema

        def batches() -> Iterator[pa.RecordBatch]:
            build = self._build(plan, right, right_id)
            matched = np.zeros(build.num_rows, dtype=bool)
            probe_rows = max(self.ctx.batch_rows, build.num_rows)
            probe_bytes = max(1 << 20, self.ctx.memory_limit_bytes // 4)
            for chunk in _chunks(left.batches(), probe_rows, probe_bytes, self.ctx.check_cancelled):
                joined = self._join(plan, chunk, build, matched)
                yield from joined.to_batches(max_chunksize=self.ctx.batch_rows)
            if plan.join_type in ("right", "full"):
                rest = self._unmatched(plan, build, matched, out_schema, left.schema)
                yield from rest.to_batches(max_chunksize=self.ctx.batch_rows)

        return RowStream(rebatch(batches(), self.ctx.batch_rows), out_schema, name=step)

    def _sides(self, ids: list[str]) -> tuple[str, str]:
        left, right = self.config.get("left"), self.config.get("right")
        for key, value in (("left", left), ("right", right)):
            if value is not None and value not in ids:
                raise TerminalError(
                    f"step '{self.ctx.step_id}': config.{key}: '{value}' is not an input of this step; "
                    f"its inputs are {format_columns(ids)}"
                )
        if left is None and right is None:
            return ids[0], ids[1]
        if left is None:
            return next(i for i in ids if i != right), str(right)
        return str(left), str(right) if right is not None else next(i for i in ids if i != left)

    def _plan(self, lschema: pa.Schema, rschema: pa.Schema, left_id: str, right_id: str) -> _Plan:
        cfg, step = self.config, self.ctx.step_id
        using = cfg.get("on") is not None
        left_keys = _as_list(cfg.get("on") if using else cfg.get("left_on"))
        right_keys = _as_list(cfg.get("on") if using else cfg.get("right_on"))
        require_columns(
            self.ctx, left_keys, lschema, field="on" if using else "left_on", source=f"input '{left_id}'"
        )
        require_columns(
            self.ctx, right_keys, rschema, field="on" if using else "right_on", source=f"input '{right_id}'"
        )
        key_types = []
        for lk, rk in zip(left_keys, right_keys, strict=True):
            ltype, rtype = lschema.field(lk).type, rschema.field(rk).type
            if ltype != rtype and not _comparable(rtype, ltype):
                raise TerminalError(
                    f"step '{step}': join key '{lk}' of input '{left_id}' is {ltype} but '{rk}' of input "
                    f"'{right_id}' is {rtype}; convert one of them so the keys have comparable types"
                )
            key_types.append(ltype)
        join_type = str(cfg.get("join_type", "inner"))
        right_cols = [n for n in rschema.names if not (using and n in right_keys)]
        if join_type in ("semi", "anti"):
            return _Plan(join_type, left_keys, right_keys, using, lschema.names, [], [], key_types)
        left_free = [n for n in lschema.names if not (using and n in left_keys)]
        clash = set(left_free) & set(right_cols)
        suffix_left, suffix_right = cfg.get("suffixes") or ["", "_right"]
        left_names = [n + suffix_left if n in clash else n for n in lschema.names]
        right_names = [n + suffix_right if n in clash else n for n in right_cols]
        names = left_names + right_names
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise TerminalError(
                f"step '{step}': config.suffixes: the output would have columns {format_columns(duplicates)} "
                f"twice (left columns {format_columns(lschema.names)}, right columns "
                f"{format_columns(rschema.names)}); choose other suffixes"
            )
        return _Plan(join_type, left_keys, right_keys, using, left_names, right_cols, right_names, key_types)

    @staticmethod
    def _build_schema(plan: _Plan, rschema: pa.Schema) -> pa.Schema:
        """The in-memory right table: keys k0.. (cast to the left types), payload r0.., its row id."""
        fields = [pa.field(f"k{i}", t) for i, t in enumerate(plan.key_types)]
        fields += [pa.field(f"r{i}", rschema.field(c).type) for i, c in enumerate(plan.right_cols)]
        return pa.schema([*fields, pa.field(_RID, pa.int64())])

    def _build(self, plan: _Plan, right: RowStream, right_id: str) -> pa.Table:
        """Read the whole right input into the build table (keys only, distinct, for semi/anti)."""
        parts = []
        for batch in right.batches():
            self.ctx.check_cancelled()
            columns = [
                self._key(batch, k, t, right_id) for k, t in zip(plan.right_keys, plan.key_types, strict=True)
            ]
            columns += [batch.column(c) for c in plan.right_cols]
            names = [f"k{i}" for i in range(len(plan.right_keys))]
            names += [f"r{i}" for i in range(len(plan.right_cols))]
            part = pa.table(columns, names=names)
            if plan.join_type in ("semi", "anti"):
                part = part.group_by(names, use_threads=False).aggregate([])
            parts.append(part)
        schema = self._build_schema(plan, right.schema).remove(len(plan.key_types) + len(plan.right_cols))
        table = pa.concat_tables(parts).combine_chunks() if parts else schema.empty_table()
        if plan.join_type in ("semi", "anti") and len(parts) > 1:
            table = table.group_by(schema.names, use_threads=False).aggregate([]).select(schema.names)
        if table.nbytes > self.ctx.memory_limit_bytes:
            self.ctx.log_event(
                "join_build_over_budget",
                step=self.ctx.step_id,
                input=right_id,
                bytes=table.nbytes,
                limit_bytes=self.ctx.memory_limit_bytes,
            )
        return table.append_column(_RID, pa.array(np.arange(table.num_rows, dtype=np.int64)))

    def _key(self, batch: pa.RecordBatch, key: str, to: pa.DataType, right_id: str) -> pa.Array:
        try:
            return batch.column(key).cast(to)
        except pa.ArrowInvalid as exc:
            raise TerminalError(
                f"step '{self.ctx.step_id}': join key '{key}' of input '{right_id}' does not fit the left "
                f"key's type {to}: {exc}"
            ) from None

    def _join(
        self, plan: _Plan, chunk: pa.Table, build: pa.Table, matched: np.ndarray | None = None
    ) -> pa.Table:
        """Join one chunk of the left input; output columns renamed and ordered as the plan says."""
        n = len(chunk.column_names)
        probe = chunk.rename_columns([f"l{i}" for i in range(n)])
        probe = probe.append_column(_LID, pa.array(np.arange(chunk.num_rows, dtype=np.int64)))
        left_key_names = [f"l{chunk.column_names.index(k)}" for k in plan.left_keys]
        right_key_names = [f"k{i}" for i in range(len(plan.right_keys))]
        try:
            joined = probe.join(
                build,
                keys=left_key_names,
                right_keys=right_key_names,
                join_type=_ARROW_JOIN[plan.join_type],
                coalesce_keys=False,
                use_threads=False,
            )
        except pa.ArrowException as exc:
            raise TerminalError(f"step '{self.ctx.step_id}': cannot join: {exc}") from None
        if plan.join_type in ("semi", "anti"):
            joined = joined.sort_by([(_LID, "ascending")])
            return joined.select([f"l{i}" for i in range(n)]).rename_columns(plan.left_names)
        joined = joined.sort_by([(_LID, "ascending"), (_RID, "ascending")])
        if matched is not None and plan.join_type in ("right", "full"):
            ids = joined.column(_RID).drop_null().to_numpy()
            matched[ids] = True
        columns = [f"l{i}" for i in range(n)] + [f"r{i}" for i in range(len(plan.right_cols))]
        return joined.select(columns).rename_columns(plan.left_names + plan.right_names)

    def _unmatched(
        self, plan: _Plan, build: pa.Table, matched: np.ndarray, schema: pa.Schema, lschema: pa.Schema
    ) -> pa.Table:
        """Right rows no left row matched, with NULL left columns (keys from the right with ``on``)."""
        rest = build.filter(pa.array(~matched)) if build.num_rows else build
        columns = []
        for name, field in zip(lschema.names, schema, strict=False):
            if plan.using and name in plan.left_keys:
                columns.append(rest.column(f"k{plan.left_keys.index(name)}"))
            else:
                columns.append(pa.nulls(rest.num_rows, field.type))
        columns += [rest.column(f"r{i}") for i in range(len(plan.right_cols))]
        return pa.Table.from_arrays(columns, schema=schema)


_FAMILIES = (
    pa.types.is_integer,
    pa.types.is_floating,
    lambda t: pa.types.is_string(t) or pa.types.is_large_string(t),
    lambda t: pa.types.is_binary(t) or pa.types.is_large_binary(t),
    pa.types.is_date,
    pa.types.is_timestamp,
    pa.types.is_decimal,
)


def _comparable(source: pa.DataType, target: pa.DataType) -> bool:
    """Right key type ``source`` may be cast to left key type ``target`` (same kind of value)."""
    return any(family(source) and family(target) for family in _FAMILIES)


def _chunks(
    batches: Iterator[pa.RecordBatch], rows: int, max_bytes: int, check: Callable[[], None]
) -> Iterator[pa.Table]:
    """Group batches into tables of at least ``rows`` rows or ``max_bytes`` bytes (the last may be less)."""
    pending: list[pa.RecordBatch] = []
    pending_rows = pending_bytes = 0
    for batch in batches:
        check()
        pending.append(batch)
        pending_rows += batch.num_rows
        pending_bytes += batch.nbytes
        if pending_rows >= rows or pending_bytes >= max_bytes:
            yield pa.Table.from_batches(pending)
            pending, pending_rows, pending_bytes = [], 0, 0
    if pending:
        yield pa.Table.from_batches(pending)


COMPONENTS: list[ComponentSpec] = [
    ComponentSpec(
        name="transform.joiner",
        role="transform",
        operator=Joiner,
        config_schema=CONFIG_SCHEMA,
        description="Join two inputs (inner, left, right, full, semi, anti); the right one is in memory.",
        min_inputs=2,
        max_inputs=2,
        partitionwise=False,
        check=check,
    ),
]
