"""The reference row decoder: raw text-protocol row packets + the result's layout -> one Arrow batch.

This is the replaceable piece of the extractor in its pure-Python form: its native twin
(native/mysql_split.pyx) and the binary-protocol decoder (native/mysql_binary.pyx) are checked
against it for identical output. It works in two passes:

1. split: walk each row packet once, cutting its length-encoded values (``NULL`` is byte 0xFB) into
   one Python list per column -- the only per-value Python work;
2. convert: per column, vectorized Arrow casts in C++ (text -> int, decimal, float, date, timestamp),
   a regex split for TIME, UTF-8 validation for text.

Types come from the layout (the result's metadata), never from the values. Zero or otherwise
invalid dates and datetimes ('0000-00-00', '2024-02-00', ...) cannot be Arrow dates: they become
null and are counted per column in ``DecodedBatch.zero_dates``, so the caller can warn once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from osiris_flight.components.mysql.types import ColumnPlan, Kind, Layout
from osiris_flight.errors import TerminalError

Values = list[bytes | None]
# Month or day zero: MySQL's zero date and its partial-zero relatives (NO_ZERO_IN_DATE off).
_ZERO_DATE = r"^\d{4}-(?:00-|\d\d-00)"
_TIME = r"^(?P<sign>-?)(?P<h>\d+):(?P<m>\d\d):(?P<s>\d\d)(?:\.(?P<f>\d{1,6}))?$"
_US_PER_S = 1_000_000


@dataclass(frozen=True)
class DecodedBatch:
    batch: pa.RecordBatch
    zero_dates: dict[str, int] = field(default_factory=dict)


Decoder = Callable[[Sequence[bytes], Layout], DecodedBatch]


def split_values(packets: Sequence[bytes], ncols: int) -> list[Values]:
    """Cut every row packet into its ``ncols`` values: one list of ``bytes | None`` per column."""
    columns: list[Values] = [[] for _ in range(ncols)]
    appends = [column.append for column in columns]
    for data in packets:
        pos = 0
        for append in appends:
            n = data[pos]
            if n < 251:
                pos += 1
            elif n == 251:  # NULL
                append(None)
                pos += 1
                continue
            elif n == 252:
                n = data[pos + 1] | (data[pos + 2] << 8)
                pos += 3
            elif n == 253:
                n = data[pos + 1] | (data[pos + 2] << 8) | (data[pos + 3] << 16)
                pos += 4
            else:
                n = int.from_bytes(data[pos + 1 : pos + 9], "little")
                pos += 9
            end = pos + n
            append(data[pos:end])
            pos = end
    return columns


def row_values(packet: bytes, ncols: int) -> Values:
    """The values of one row packet (the extractor reads the key of a chunk's last row with it)."""
    return [column[0] for column in split_values([packet], ncols)]


def decode_rows(packets: Sequence[bytes], layout: Layout) -> DecodedBatch:
    """Decode ``packets`` (one text-protocol row each) into a RecordBatch of ``layout.schema``."""
    columns = split_values(packets, len(layout.plans))
    return decode_columns([pa.array(values, pa.binary()) for values in columns], layout)


def decode_columns(columns: Sequence[pa.BinaryArray], layout: Layout) -> DecodedBatch:
    """Convert split columns (the raw text of each value, null for NULL) into ``layout.schema``.

    Shared by both decoders: the reference splits rows in Python (``split_values``), the native one
    in Cython (``osiris_flight._native_mysql``), and from here on they run the same code.
    """
    arrays: list[pa.Array] = []
    zero_dates: dict[str, int] = {}
    for plan, values in zip(layout.plans, columns, strict=True):
        array, zeros = _convert_checked(plan, values)
        arrays.append(array)
        if zeros:
            zero_dates[plan.name] = zeros
    return DecodedBatch(pa.RecordBatch.from_arrays(arrays, schema=layout.schema), zero_dates)


def convert_column(plan: ColumnPlan, values: pa.BinaryArray) -> pa.Array:
    """One column's raw values -> its Arrow type (the binary decoder's DECIMAL, strings, BIT)."""
    return _convert_checked(plan, values)[0]


def _convert_checked(plan: ColumnPlan, values: pa.BinaryArray) -> tuple[pa.Array, int]:
    try:
        return _convert(plan, values)
    except (pa.ArrowInvalid, ValueError, UnicodeDecodeError) as exc:
        raise TerminalError(
            f"column '{plan.name}' ({plan.field.metadata[b'mysql.type'].decode()}): cannot decode a "
            f"value as {plan.arrow_type}: {exc}"
        ) from None


def _text(values: pa.BinaryArray) -> pa.StringArray:
    """The values as an Arrow string array, without UTF-8 validation (numbers and dates are ASCII)."""
    return values.view(pa.string())


def _convert(plan: ColumnPlan, values: pa.BinaryArray) -> tuple[pa.Array, int]:
    kind, target = plan.kind, plan.arrow_type
    if kind in (Kind.INT, Kind.DECIMAL):
        return _text(values).cast(target), 0
    if kind is Kind.FLOAT:
        # Through float64: a FLOAT read as CAST(... AS DOUBLE) text holds the float32 exactly.
        return _text(values).cast(pa.float64()).cast(target), 0
    if kind is Kind.STRING:
        return values.cast(pa.string()), 0  # validates UTF-8
    if kind is Kind.BINARY:
        return values, 0
    if kind is Kind.BIT:  # big-endian bytes, 1..8 of them (a rare type: per value is fine)
        return pa.array(
            [None if v is None else int.from_bytes(v, "big") for v in values.to_pylist()], pa.uint64()
        ), 0
    if kind is Kind.DATE or kind is Kind.DATETIME:
        return _dates(_text(values), target)
    if kind is Kind.TIME:
        return _time(_text(values)), 0
    if kind is Kind.NULL:
        return pa.nulls(len(values)), 0
    raise TerminalError(f"column '{plan.name}': no converter for {kind}")


def _dates(text: pa.StringArray, target: pa.DataType) -> tuple[pa.Array, int]:
    """Dates/datetimes; zero (and unparseable) ones become null and are counted.

    The plain cast comes first: Arrow refuses month or day 00, so a batch it accepts has no zero
    dates, and the zero-date scan (a regex over the column) runs only for the batches that need it.
    """
    parse_type = pa.timestamp(target.unit) if pa.types.is_timestamp(target) else target
    zeros = 0
    try:
        parsed = text.cast(parse_type)
    except pa.ArrowInvalid:
        zero = pc.fill_null(pc.match_substring_regex(text, _ZERO_DATE), pa.scalar(False))
        zeros = pc.sum(zero).as_py() or 0
        if zeros:
            text = pc.if_else(zero, pa.scalar(None, pa.string()), text)
        try:
            parsed = text.cast(parse_type)
        except pa.ArrowInvalid:
            parsed, invalid = _parse_each(text, parse_type)
            zeros += invalid
    return (parsed.cast(target) if parse_type != target else parsed), zeros


def _parse_each(text: pa.StringArray, parse_type: pa.DataType) -> tuple[pa.Array, int]:
    """Slow path for a batch holding an invalid date ('2024-02-30' under ALLOW_INVALID_DATES)."""
    out: list[object] = []
    invalid = 0
    for value in text:
        if not value.is_valid:
            out.append(None)
            continue
        try:
            out.append(pa.array([value.as_py()]).cast(parse_type)[0].as_py())
        except pa.ArrowInvalid:
            out.append(None)
            invalid += 1
    return pa.array(out, parse_type), invalid


def _time(text: pa.StringArray) -> pa.Array:
    """TIME '[-]H+:MM:SS[.ffffff]' (-838:59:59 .. 838:59:59) -> duration in microseconds."""
    parts = pc.extract_regex(text, _TIME)
    if parts.null_count != text.null_count:
        bad = pc.filter(text, pc.and_(pc.is_valid(text), pc.is_null(parts)))
        raise ValueError(f"not a TIME value: {bad[0].as_py()!r}")

    def number(name: str) -> pa.Array:
        return pc.struct_field(parts, name).cast(pa.int64())

    fraction = pc.utf8_rpad(pc.struct_field(parts, "f"), 6, "0").cast(pa.int64())
    seconds = pc.add(pc.multiply(pc.add(pc.multiply(number("h"), 60), number("m")), 60), number("s"))
    micros = pc.add(pc.multiply(seconds, _US_PER_S), fraction)
    negative = pc.equal(pc.struct_field(parts, "sign"), "-")
    micros = pc.if_else(negative, pc.negate(micros), micros)
    return micros.cast(pa.duration("us"))
