"""The row decoder on hand-built text-protocol packets (no server): every length encoding, every
kind, NULLs, zero dates, and a property test against values built independently. A native twin of
the decoder must pass these same tests."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pymysql.constants import FIELD_TYPE, FLAG

from osiris_flight.components.mysql.decode import decode_rows, row_values, split_values
from osiris_flight.components.mysql.types import ColumnInfo, layout_of
from osiris_flight.errors import TerminalError

UTF8MB4 = 45


def lenc(value: bytes | None) -> bytes:
    """A length-encoded string, as the server writes it (0xFB for NULL)."""
    if value is None:
        return b"\xfb"
    n = len(value)
    if n < 251:
        head = bytes([n])
    elif n < 1 << 16:
        head = b"\xfc" + n.to_bytes(2, "little")
    elif n < 1 << 24:
        head = b"\xfd" + n.to_bytes(3, "little")
    else:
        head = b"\xfe" + n.to_bytes(8, "little")
    return head + value


def packet(*values: bytes | None) -> bytes:
    return b"".join(lenc(v) for v in values)


def col(name: str, code: int, **kw: int) -> ColumnInfo:
    return ColumnInfo(name=name, type_code=code, **kw)


def test_split_handles_every_length_encoding() -> None:
    values = [b"", b"x" * 250, b"y" * 251, b"z" * 70000, None, b"\xfb"]
    packets = [packet(*values), packet(*reversed(values))]
    columns = split_values(packets, len(values))
    assert [c[0] for c in columns] == values
    assert [c[1] for c in columns] == list(reversed(values))
    assert row_values(packets[0], len(values)) == values


def test_split_nine_byte_length() -> None:
    big = b"q" * (1 << 24)  # 16 MiB: the 0xFE + 8-byte length form
    assert split_values([packet(big, b"1")], 2) == [[big], [b"1"]]


def test_integer_extremes_and_unsigned() -> None:
    cols = [
        col("t", FIELD_TYPE.TINY),
        col("tu", FIELD_TYPE.TINY, flags=FLAG.UNSIGNED),
        col("s", FIELD_TYPE.SHORT),
        col("m", FIELD_TYPE.INT24, flags=FLAG.UNSIGNED),
        col("i", FIELD_TYPE.LONG),
        col("b", FIELD_TYPE.LONGLONG),
        col("bu", FIELD_TYPE.LONGLONG, flags=FLAG.UNSIGNED),
        col("y", FIELD_TYPE.YEAR, flags=FLAG.UNSIGNED | FLAG.ZEROFILL),
    ]
    layout = layout_of(cols, {})
    rows = [
        packet(
            b"-128",
            b"255",
            b"-32768",
            b"16777215",
            b"-2147483648",
            b"-9223372036854775808",
            b"18446744073709551615",
            b"2155",
        ),
        packet(b"127", b"0", b"32767", b"0", b"2147483647", b"9223372036854775807", b"0", b"0000"),
        packet(None, None, None, None, None, None, None, None),
    ]
    batch = decode_rows(rows, layout).batch
    assert [f.type for f in batch.schema] == [
        pa.int8(),
        pa.uint8(),
        pa.int16(),
        pa.uint32(),
        pa.int32(),
        pa.int64(),
        pa.uint64(),
        pa.int16(),
    ]
    assert batch.to_pylist()[0] == {
        "t": -128,
        "tu": 255,
        "s": -32768,
        "m": 16777215,
        "i": -2147483648,
        "b": -9223372036854775808,
        "bu": 18446744073709551615,
        "y": 2155,
    }
    assert batch.to_pylist()[1]["bu"] == 0 and batch.to_pylist()[1]["y"] == 0
    assert all(v is None for v in batch.to_pylist()[2].values())


def test_decimal_precision_and_scale_from_metadata() -> None:
    cols = [
        col("d", FIELD_TYPE.NEWDECIMAL, length=12, decimals=2),  # DECIMAL(10,2)
        col(
            "du", FIELD_TYPE.NEWDECIMAL, length=11, decimals=2, flags=FLAG.UNSIGNED
        ),  # DECIMAL(10,2) UNSIGNED
        col("d0", FIELD_TYPE.NEWDECIMAL, length=6, decimals=0),  # DECIMAL(5,0)
        col("big", FIELD_TYPE.NEWDECIMAL, length=67, decimals=30),  # DECIMAL(65,30)
    ]
    layout = layout_of(cols, {})
    assert [f.type for f in layout.schema] == [
        pa.decimal128(10, 2),
        pa.decimal128(10, 2),
        pa.decimal128(5, 0),
        pa.decimal256(65, 30),
    ]
    big = "-" + "9" * 35 + "." + "9" * 30
    batch = decode_rows([packet(b"-99999999.99", b"99999999.99", b"99999", big.encode())], layout).batch
    assert batch.to_pylist()[0] == {
        "d": Decimal("-99999999.99"),
        "du": Decimal("99999999.99"),
        "d0": Decimal("99999"),
        "big": Decimal(big),
    }
    assert [f.metadata[b"mysql.type"] for f in layout.schema] == [
        b"decimal(10,2)",
        b"decimal(10,2) unsigned",
        b"decimal(5,0)",
        b"decimal(65,30)",
    ]


def test_floats_bits_and_binary() -> None:
    cols = [
        col("f", FIELD_TYPE.FLOAT, decimals=31),
        col("d", FIELD_TYPE.DOUBLE, decimals=31),
        col("bit5", FIELD_TYPE.BIT, length=5, flags=FLAG.UNSIGNED),
        col("bit64", FIELD_TYPE.BIT, length=64, flags=FLAG.UNSIGNED),
        col("vb", FIELD_TYPE.VAR_STRING, length=10, flags=FLAG.BINARY),
        col("bl", FIELD_TYPE.BLOB, length=65535, flags=FLAG.BLOB | FLAG.BINARY),
    ]
    layout = layout_of(cols, {})
    batch = decode_rows(
        [packet(b"0.10000000149011612", b"1.7976931348623157e308", b"\x15", b"\xff" * 8, b"\x00\xff", b"")],
        layout,
    ).batch
    assert [f.type for f in batch.schema] == [
        pa.float32(),
        pa.float64(),
        pa.uint64(),
        pa.uint64(),
        pa.binary(),
        pa.binary(),
    ]
    row = batch.to_pylist()[0]
    assert row["f"] == pa.scalar(0.1, pa.float32()).as_py()
    assert row["d"] == 1.7976931348623157e308
    assert (row["bit5"], row["bit64"]) == (21, 2**64 - 1)
    assert (row["vb"], row["bl"]) == (b"\x00\xff", b"")


def test_temporal_types_units_and_zero_dates() -> None:
    cols = [
        col("d", FIELD_TYPE.DATE),
        col("dt0", FIELD_TYPE.DATETIME),
        col("dt3", FIELD_TYPE.DATETIME, decimals=3),
        col("dt6", FIELD_TYPE.DATETIME, decimals=6),
        col("ts", FIELD_TYPE.TIMESTAMP, decimals=6),
        col("t", FIELD_TYPE.TIME, decimals=6),
    ]
    layout = layout_of(cols, {})
    assert [f.type for f in layout.schema] == [
        pa.date32(),
        pa.timestamp("s"),
        pa.timestamp("ms"),
        pa.timestamp("us"),
        pa.timestamp("us", "UTC"),
        pa.duration("us"),
    ]
    rows = [
        packet(
            b"9999-12-31",
            b"1000-01-01 00:00:00",
            b"2020-02-29 23:59:59.999",
            b"0001-01-01 00:00:00.000001",
            b"2038-01-19 03:14:07.999999",
            b"-838:59:59.000000",
        ),
        packet(
            b"0000-00-00",
            b"0000-00-00 00:00:00",
            b"2020-00-10 00:00:00.000",
            b"2020-05-00 00:00:00.000000",
            b"0000-00-00 00:00:00.000000",
            b"838:59:59.000000",
        ),
        packet(None, None, None, None, None, b"-00:00:00.000001"),
    ]
    decoded = decode_rows(rows, layout)
    first, zeros, nulls = decoded.batch.to_pylist()
    assert first["d"] == dt.date(9999, 12, 31)
    assert first["dt3"] == dt.datetime(2020, 2, 29, 23, 59, 59, 999000)
    assert first["dt6"] == dt.datetime(1, 1, 1, 0, 0, 0, 1)
    assert first["ts"].replace(tzinfo=None) == dt.datetime(2038, 1, 19, 3, 14, 7, 999999)
    assert first["t"] == -dt.timedelta(hours=838, minutes=59, seconds=59)
    assert {k: v for k, v in zeros.items() if k != "t"} == dict.fromkeys(["d", "dt0", "dt3", "dt6", "ts"])
    assert zeros["t"] == dt.timedelta(hours=838, minutes=59, seconds=59)
    assert nulls["t"] == -dt.timedelta(microseconds=1)
    assert decoded.zero_dates == {"d": 1, "dt0": 1, "dt3": 1, "dt6": 1, "ts": 1}


def test_strings_enum_set_json_and_invalid_utf8() -> None:
    cols = [
        col("c", FIELD_TYPE.STRING, length=20, charsetnr=UTF8MB4),
        col("e", FIELD_TYPE.STRING, length=4, charsetnr=UTF8MB4, flags=FLAG.ENUM),
        col("s", FIELD_TYPE.STRING, length=12, charsetnr=UTF8MB4, flags=FLAG.SET),
        col("j", FIELD_TYPE.BLOB, length=0xFFFFFFFF, charsetnr=46, flags=FLAG.BLOB | FLAG.BINARY),
        col("n", FIELD_TYPE.NULL),
    ]
    layout = layout_of(cols, {("db", "t", "j"): "json"})
    assert [f.type for f in layout.schema] == [pa.string()] * 4 + [pa.null()]
    assert [f.metadata[b"mysql.type"] for f in layout.schema] == [
        b"char(5)",
        b"enum",
        b"set",
        b"longtext",
        b"null",
    ]
    batch = decode_rows([packet("x😀".encode(), b"b", b"x,y", b'{"a": 1}', None)], layout).batch
    assert batch.to_pylist() == [{"c": "x😀", "e": "b", "s": "x,y", "j": '{"a": 1}', "n": None}]
    with pytest.raises(TerminalError, match="column 'c'"):
        decode_rows([packet(b"\xff\xfe", b"b", b"x", b"{}", None)], layout)


_INT64 = st.integers(-(2**63), 2**63 - 1)
_UINT64 = st.integers(0, 2**64 - 1)
_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=300)
_DEC = st.decimals(
    min_value=Decimal("-99999999.99"), max_value=Decimal("99999999.99"), places=2, allow_nan=False
)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.none() | _INT64,
            st.none() | _UINT64,
            st.none() | _TEXT,
            st.none() | _DEC,
            st.none() | st.binary(max_size=70000),
        ),
        min_size=1,
        max_size=30,
    )
)
def test_property_decode_matches_values(rows: list[tuple[object, ...]]) -> None:
    cols = [
        col("i", FIELD_TYPE.LONGLONG),
        col("u", FIELD_TYPE.LONGLONG, flags=FLAG.UNSIGNED),
        col("s", FIELD_TYPE.VAR_STRING, length=4000, charsetnr=UTF8MB4),
        col("d", FIELD_TYPE.NEWDECIMAL, length=12, decimals=2),
        col("b", FIELD_TYPE.BLOB, length=65535 * 4, flags=FLAG.BLOB | FLAG.BINARY),
    ]

    def text(value: object) -> bytes | None:
        if value is None:
            return None
        if isinstance(value, bytes):
            return value
        return (f"{value:.2f}" if isinstance(value, Decimal) else str(value)).encode()

    packets = [packet(*(text(v) for v in row)) for row in rows]
    batch = decode_rows(packets, layout_of(cols, {})).batch
    assert [tuple(r.values()) for r in batch.to_pylist()] == rows
