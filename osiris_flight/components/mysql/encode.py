"""Arrow -> MySQL text, vectorized: the VALUES of multi-row INSERTs, or the lines of a LOAD DATA file.

Each column becomes an Arrow string array of SQL text in C++ (number casts, ``strftime``, substring
escapes, a numpy hex table for binary), the columns are joined row-wise, and a statement is a slice
of the joined buffer: no Python work per value, so encoding is far cheaper than sending.

Exactness: integers (uint64 included) and decimals are written as their exact digits (decimals
quoted, so a tiny value that Arrow prints as ``1E-9`` is still parsed as an exact DECIMAL); floats
as the shortest text that parses back to the same double (a float32 through its exact double
value); timestamps with all their fractional digits (tz-aware ones as UTC wall time, which is what
the writer's ``+00:00`` session stores); durations as signed ``[-]H:MM:SS.ffffff``; binary as hex.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from osiris_flight.errors import TerminalError

_HEX = np.array([list(f"{i:02x}".encode()) for i in range(256)], dtype=np.uint8)
_INSERT_ESCAPES = (("\\", "\\\\"), ("'", "\\'"))
# LOAD DATA ... FIELDS TERMINATED BY '\t' ESCAPED BY '\\' LINES TERMINATED BY '\n'
_LOAD_ESCAPES = (("\\", "\\\\"), ("\t", "\\t"), ("\n", "\\n"))
INSERT, LOAD = "insert", "load"


def _dense(array: pa.Array) -> pa.Array:
    """The array with offset 0 (its buffers can then be read directly)."""
    return pa.concat_arrays([array]) if array.offset else array


def _hex(array: pa.Array) -> pa.Array:
    """Binary values as lowercase hex text (large_string), nulls kept."""
    array = _dense(array.cast(pa.large_binary()))
    validity, offsets_buf, data_buf = array.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=np.int64)[: len(array) + 1]
    data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    hexed = _HEX[data[offsets[0] : offsets[-1]]].reshape(-1)
    new_offsets = (offsets - offsets[0]) * 2
    return pa.Array.from_buffers(
        pa.large_string(),
        len(array),
        [validity, pa.py_buffer(new_offsets), pa.py_buffer(hexed)],
        null_count=array.null_count,
    )


def _escape(text: pa.Array, escapes: Sequence[tuple[str, str]]) -> pa.Array:
    for plain, escaped in escapes:
        text = pc.replace_substring(text, plain, escaped)
    return text


def _join(*parts: pa.Array | str, sep: str = "") -> pa.Array:
    """Row-wise concatenation; strings are broadcast. All large_string: a batch may pass 2 GiB."""
    args = [
        pa.scalar(p, pa.large_string()) if isinstance(p, str) else p.cast(pa.large_string()) for p in parts
    ]
    return pc.binary_join_element_wise(*args, pa.scalar(sep, pa.large_string()))


def _quoted(text: pa.Array) -> pa.Array:
    return _join("'", text, "'")


def _duration_text(array: pa.Array) -> pa.Array:
    """Durations (any unit, truncated to microseconds) as MySQL TIME text '[-]H:MM:SS.ffffff'."""
    micros = array.cast(pa.duration("us")).cast(pa.int64())
    magnitude = pc.abs(micros)
    seconds = pc.divide(magnitude, 1_000_000)
    fraction = pc.subtract(magnitude, pc.multiply(seconds, 1_000_000))

    def pad(values: pa.Array, width: int) -> pa.Array:
        return pc.utf8_lpad(values.cast(pa.string()), width, "0")

    sign = pc.if_else(pc.less(micros, 0), pa.scalar("-"), pa.scalar(""))
    hours = pc.divide(seconds, 3600).cast(pa.string())
    minutes = pad(pc.divide(pc.subtract(seconds, pc.multiply(pc.divide(seconds, 3600), 3600)), 60), 2)
    secs = pad(pc.subtract(seconds, pc.multiply(pc.divide(seconds, 60), 60)), 2)
    return _join(sign, _join(hours, minutes, secs, sep=":"), ".", pad(fraction, 6))


def column_text(array: pa.Array, name: str, style: str) -> pa.Array:
    """One column as SQL text (large_string); nulls stay null (the caller writes NULL or \\N)."""
    arrow = array.type
    quote = style == INSERT
    if pa.types.is_dictionary(arrow):
        return column_text(array.cast(arrow.value_type), name, style)
    if isinstance(arrow, pa.ExtensionType):
        return column_text(array.storage, name, style)
    if pa.types.is_boolean(arrow):
        text = array.cast(pa.int8()).cast(pa.string())
    elif pa.types.is_integer(arrow):
        text = array.cast(pa.string())
    elif pa.types.is_floating(arrow):
        finite = pc.fill_null(pc.is_finite(array), True)
        if not pc.all(finite).as_py():
            raise TerminalError(f"column '{name}' holds NaN or infinity, which MySQL cannot store")
        text = array.cast(pa.float64()).cast(pa.string())
    elif pa.types.is_decimal(arrow):
        text = _quoted(array.cast(pa.string())) if quote else array.cast(pa.string())
    elif pa.types.is_string(arrow) or pa.types.is_large_string(arrow):
        text = _escape(array, _INSERT_ESCAPES if quote else _LOAD_ESCAPES)
        text = _quoted(text) if quote else text
    elif pa.types.is_binary(arrow) or pa.types.is_large_binary(arrow) or pa.types.is_fixed_size_binary(arrow):
        hexed = _hex(array)
        text = _join("X'", hexed, "'") if quote else hexed
    elif pa.types.is_date(arrow):
        text = array.cast(pa.date32()).cast(pa.string())
        text = _quoted(text) if quote else text
    elif pa.types.is_timestamp(arrow):
        naive = array.cast(pa.timestamp(arrow.unit))  # tz-aware: the UTC wall time
        text = pc.strftime(naive, "%Y-%m-%d %H:%M:%S")
        text = _quoted(text) if quote else text
    elif pa.types.is_time(arrow):
        text = array.cast(pa.string())
        text = _quoted(text) if quote else text
    elif pa.types.is_duration(arrow):
        text = _duration_text(array)
        text = _quoted(text) if quote else text
    elif pa.types.is_null(arrow):
        text = pa.nulls(len(array), pa.string())
    else:
        raise TerminalError(f"column '{name}': Arrow type {arrow} cannot be written to MySQL; cast it first")
    return text.cast(pa.large_string())


def _rows_text(batch: pa.RecordBatch, style: str) -> pa.Array:
    """Every row as one text value: ``(v1,v2,...),`` for INSERT, ``v1\\tv2...\\n`` for LOAD DATA."""
    null = pa.scalar("NULL" if style == INSERT else "\\N", pa.large_string())
    columns = [
        pc.fill_null(column_text(batch.column(i), batch.schema.field(i).name, style), null)
        for i in range(batch.num_columns)
    ]
    joined = _join(*columns, sep="," if style == INSERT else "\t")
    return _join("(", joined, "),") if style == INSERT else _join(joined, "\n")


def _buffer(rows: pa.Array) -> tuple[np.ndarray, memoryview]:
    rows = _dense(rows.cast(pa.large_string()))
    offsets = np.frombuffer(rows.buffers()[1], dtype=np.int64)[: len(rows) + 1]
    return offsets, memoryview(rows.buffers()[2] or b"")


def insert_values(batch: pa.RecordBatch, *, max_rows: int, max_bytes: int) -> Iterator[bytes]:
    """The ``VALUES`` bodies ``(..),(..)`` of INSERT statements, each within max_rows and max_bytes
    (a single row longer than max_bytes gets a statement of its own)."""
    if batch.num_rows == 0:
        return
    offsets, data = _buffer(_rows_text(batch, INSERT))
    start = 0
    n = len(offsets) - 1
    while start < n:
        by_bytes = int(np.searchsorted(offsets, offsets[start] + max_bytes, side="right")) - 1
        end = max(start + 1, min(n, start + max_rows, by_bytes))
        yield bytes(data[offsets[start] : offsets[end] - 1])  # without the last row's comma
        start = end


def load_data_lines(batch: pa.RecordBatch) -> memoryview:
    """The batch as a LOAD DATA file body (tab-separated, backslash-escaped, ``\\N`` for NULL)."""
    if batch.num_rows == 0:
        return memoryview(b"")
    offsets, data = _buffer(_rows_text(batch, LOAD))
    return data[offsets[0] : offsets[-1]]


def needs_unhex(field: pa.Field) -> bool:
    """Binary columns travel as hex in a LOAD DATA file and are decoded with UNHEX() on the server."""
    arrow = field.type
    if pa.types.is_dictionary(arrow):
        arrow = arrow.value_type
    return bool(
        pa.types.is_binary(arrow) or pa.types.is_large_binary(arrow) or pa.types.is_fixed_size_binary(arrow)
    )
