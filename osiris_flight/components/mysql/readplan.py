"""The extractor's SQL: keyset chunks, partition ranges, typed key literals and checkpoint tokens.

A keyed read is a series of statements, each ``SELECT ... WHERE <range> AND key > <last> ORDER BY
key LIMIT <n>`` -- keyset pagination, never OFFSET, so every chunk costs the same however deep into
the table it starts. A chunk's checkpoint token is the last key it delivered; a resumed read starts
right after it. Rows whose key is NULL cannot be paged by key: they are read first, in one
statement, and the token records that they are done.

Key values travel in tokens typed (``int``, ``num``, ``str``, ``bin``) and as the exact text the
server sent, so a resumed read compares exactly what it compared before: BIGINT UNSIGNED keys stay
integers (never doubles), DATETIME(6) keys keep their microseconds.
"""

from __future__ import annotations

import base64
import datetime as dt
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from osiris_flight.components.mysql.connection import quote_ident
from osiris_flight.components.mysql.types import Kind
from osiris_flight.data.rowstream import decode_checkpoint, encode_checkpoint
from osiris_flight.errors import TerminalError

Quote = Callable[[Any], str]  # the connection's escape(): handles NO_BACKSLASH_ESCAPES
TypedValue = dict[str, str]  # {"t": "int" | "num" | "str" | "bin", "v": text (base64 for bin)}
QUERY_ALIAS = "_osiris_q"


def typed_from_raw(kind: Kind, raw: bytes) -> TypedValue:
    """A key value as the server sent it, tagged with how to write it back as a literal."""
    if kind is Kind.INT:
        return {"t": "int", "v": raw.decode("ascii")}
    if kind is Kind.BIT:
        return {"t": "int", "v": str(int.from_bytes(raw, "big"))}
    if kind in (Kind.DECIMAL, Kind.FLOAT):
        return {"t": "num", "v": raw.decode("ascii")}
    if kind is Kind.BINARY:
        return {"t": "bin", "v": base64.b64encode(raw).decode("ascii")}
    return {"t": "str", "v": raw.decode("utf-8")}


def typed_from_python(value: object) -> TypedValue:
    """A bound from config or from MIN/MAX (int, float, Decimal, str, date, datetime)."""
    if isinstance(value, bool):
        raise TerminalError(f"partition bound {value!r} is a boolean; give a number or a string")
    if isinstance(value, int):
        return {"t": "int", "v": str(value)}
    if isinstance(value, float | Decimal):
        return {"t": "num", "v": repr(value) if isinstance(value, float) else str(value)}
    if isinstance(value, dt.datetime):
        return {"t": "str", "v": value.strftime("%Y-%m-%d %H:%M:%S.%f")}
    if isinstance(value, dt.date):
        return {"t": "str", "v": value.isoformat()}
    if isinstance(value, str):
        return {"t": "str", "v": value}
    raise TerminalError(f"partition bound {value!r} is not a number or a string")


def literal(value: TypedValue, quote: Quote) -> str:
    """SQL text for a typed value; numbers are validated, strings and bytes escaped by the server's rules."""
    kind, text = value.get("t"), value.get("v", "")
    try:
        if kind == "int":
            return str(int(text))
        if kind == "num":
            number = Decimal(text)
            if not number.is_finite():
                raise InvalidOperation
            return str(number)
    except (ValueError, InvalidOperation):
        raise ValueError(f"bad {kind} value in checkpoint or bound: {text!r}") from None
    if kind == "bin":
        return quote(base64.b64decode(text))
    if kind == "str":
        return quote(text)
    raise ValueError(f"unknown value type in checkpoint or bound: {kind!r}")


@dataclass(frozen=True)
class Range:
    """This task's slice of the partition column: ``lo <= c < hi`` (None: unbounded); partition 0
    also takes the NULLs; ``nothing`` is an empty slice (an empty table split N ways)."""

    lo: TypedValue | None = None
    hi: TypedValue | None = None
    with_nulls: bool = True
    nothing: bool = False

    def to_state(self) -> dict[str, object]:
        return {"lo": self.lo, "hi": self.hi, "nulls": self.with_nulls, "nothing": self.nothing}

    @staticmethod
    def from_state(state: Mapping[str, Any]) -> Range:
        return Range(state.get("lo"), state.get("hi"), bool(state.get("nulls")), bool(state.get("nothing")))


def range_for(partition: int, cuts: list[TypedValue] | None) -> Range:
    """Partition ``partition`` of ``len(cuts) + 1``; ``cuts`` None means no non-null values at all."""
    if cuts is None:
        return Range(nothing=partition > 0)
    lo = cuts[partition - 1] if partition > 0 else None
    hi = cuts[partition] if partition < len(cuts) else None
    return Range(lo, hi, with_nulls=partition == 0)


def computed_cuts(low: object, high: object, parts: int, column: str) -> list[TypedValue] | None:
    """N-1 evenly spaced cut points between MIN and MAX of the partition column."""
    if low is None or high is None:
        return None
    if isinstance(low, dt.datetime) and isinstance(high, dt.datetime):
        lo_us, hi_us = (_epoch_us(low), _epoch_us(high))
        return [
            typed_from_python(_from_epoch_us(lo_us + (hi_us - lo_us + 1) * i // parts))
            for i in range(1, parts)
        ]
    if isinstance(low, dt.date) and isinstance(high, dt.date):
        lo_d, hi_d = low.toordinal(), high.toordinal()
        return [
            typed_from_python(dt.date.fromordinal(lo_d + (hi_d - lo_d + 1) * i // parts))
            for i in range(1, parts)
        ]
    if isinstance(low, int | float | Decimal) and isinstance(high, int | float | Decimal):
        lo_i, hi_i = math.floor(low), math.floor(high)
        return [typed_from_python(lo_i + (hi_i - lo_i + 1) * i // parts) for i in range(1, parts)]
    raise TerminalError(
        f"config.partition.column: cannot split column '{column}' of this type into ranges "
        f"(MIN is {type(low).__name__}); give explicit partition.bounds"
    )


def _epoch_us(value: dt.datetime) -> int:
    delta = value.replace(tzinfo=None) - dt.datetime(1970, 1, 1)
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def _from_epoch_us(micros: int) -> dt.datetime:
    return dt.datetime(1970, 1, 1) + dt.timedelta(microseconds=micros)


@dataclass
class ReadPlan:
    """Builds every statement of one task's read."""

    source: str  # `db`.`table`, or (query) AS _osiris_q
    select_list: str
    key: str | None = None
    nullable_key: bool = False
    partition_column: str | None = None
    range: Range = field(default_factory=Range)
    raw_query: str | None = None  # a plain query, sent exactly as written (no key, no partition)
    condition: str | None = None  # a table read's ``where`` (MySQL text), in every statement

    def where(self, quote: Quote, *, after: TypedValue | None, nulls: bool) -> list[str]:
        conds: list[str] = [f"({self.condition})"] if self.condition else []
        if self.partition_column is not None:
            column = quote_ident(self.partition_column)
            if self.range.nothing:
                conds.append("0 = 1")
            if self.range.lo is not None:
                conds.append(f"{column} >= {literal(self.range.lo, quote)}")
            if self.range.hi is not None:
                below = f"{column} < {literal(self.range.hi, quote)}"
                conds.append(f"({column} IS NULL OR {below})" if self.range.with_nulls else below)
        if self.key is not None:
            key = quote_ident(self.key)
            if nulls:
                conds.append(f"{key} IS NULL")
            elif after is not None:
                conds.append(f"{key} > {literal(after, quote)}")
            elif self.nullable_key:
                conds.append(f"{key} IS NOT NULL")
        return conds

    def bounds_sql(self, column: str) -> str:
        """MIN and MAX of the partition column over the rows the read keeps (its ``where``), so the
        ranges cut between them split only those rows: none is spent on rows the condition excludes."""
        column_sql = quote_ident(column)
        text = f"SELECT MIN({column_sql}), MAX({column_sql}) FROM {self.source}"
        return text + (f" WHERE ({self.condition})" if self.condition else "")

    def sql(
        self, quote: Quote, *, after: TypedValue | None = None, nulls: bool = False, limit: int | None = None
    ) -> str:
        """One statement: the keyed chunk after ``after`` (or the NULL-key rows), or the whole read.

        A plain query is returned as written; ``limit`` is then enforced by the reader.
        """
        if self.raw_query is not None:
            return self.raw_query
        text = f"SELECT {self.select_list} FROM {self.source}"
        conds = self.where(quote, after=after, nulls=nulls)
        if conds:
            text += " WHERE " + " AND ".join(conds)
        if self.key is not None and not nulls:
            text += f" ORDER BY {quote_ident(self.key)}"
        if limit is not None:
            text += f" LIMIT {int(limit)}"
        return text


@dataclass(frozen=True)
class Position:
    """Where a task's read stands: rows delivered, last key, NULL-key rows done, its range."""

    rows: int = 0
    key: TypedValue | None = None
    nulls_done: bool = False
    done: bool = False
    partition: int = 0
    partitions: int = 1
    range: Range | None = None

    def token(self) -> str:
        return encode_checkpoint(
            {
                "rows": self.rows,
                "key": self.key,
                "nulls_done": self.nulls_done,
                "done": self.done,
                "part": [self.partition, self.partitions],
                "range": None if self.range is None else self.range.to_state(),
            }
        )

    @staticmethod
    def from_token(token: str, partition: int, partitions: int) -> Position:
        try:
            state = decode_checkpoint(token)
        except ValueError as exc:
            raise TerminalError(f"cannot resume the MySQL read: {exc}") from None
        if state.get("part") != [partition, partitions]:
            raise TerminalError(
                f"cannot resume the MySQL read: the checkpoint is for partition {state.get('part')}, "
                f"this task reads [{partition}, {partitions}]"
            )
        key, rng, rows = state.get("key"), state.get("range"), state.get("rows")
        return Position(
            rows=rows if isinstance(rows, int) else 0,
            key=key if isinstance(key, dict) else None,
            nulls_done=bool(state.get("nulls_done")),
            done=bool(state.get("done")),
            partition=partition,
            partitions=partitions,
            range=Range.from_state(rng) if isinstance(rng, dict) else None,
        )
