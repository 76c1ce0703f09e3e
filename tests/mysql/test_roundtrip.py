"""Every type round-trips MySQL -> Arrow -> MySQL exactly: extremes, NULLs, 4-byte UTF-8, escapes.

Rows are inserted by plain pymysql (an independent path), read by mysql.extractor, checked value by
value against what was inserted, written by mysql.writer into a table it creates from the Arrow
schema (its mysql.type metadata), and compared with the source on the server (``<=>`` on every
column) and read back to identical Arrow. A hypothesis property test generates the rows.
"""

from __future__ import annotations

import datetime as dt
import json
import struct
import uuid
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.mysql.conftest import MySQLServer
from tests.mysql.helpers import read, rows, unique, write

# name, DDL, Arrow type, value strategy
COLUMNS: list[tuple[str, str, pa.DataType, st.SearchStrategy[Any]]] = [
    ("ti", "TINYINT", pa.int8(), st.integers(-128, 127)),
    ("tu", "TINYINT UNSIGNED", pa.uint8(), st.integers(0, 255)),
    ("si", "SMALLINT", pa.int16(), st.integers(-(2**15), 2**15 - 1)),
    ("mu", "MEDIUMINT UNSIGNED", pa.uint32(), st.integers(0, 2**24 - 1)),
    ("i", "INT", pa.int32(), st.integers(-(2**31), 2**31 - 1)),
    ("iu", "INT UNSIGNED", pa.uint32(), st.integers(0, 2**32 - 1)),
    ("bi", "BIGINT", pa.int64(), st.integers(-(2**63), 2**63 - 1)),
    ("bu", "BIGINT UNSIGNED", pa.uint64(), st.integers(0, 2**64 - 1)),
    (
        "d",
        "DECIMAL(10,2)",
        pa.decimal128(10, 2),
        st.decimals(Decimal("-99999999.99"), Decimal("99999999.99"), places=2),
    ),
    ("du", "DECIMAL(20,0) UNSIGNED", pa.decimal128(20, 0), st.decimals(0, Decimal("9" * 20), places=0)),
    (
        "dw",
        "DECIMAL(65,30)",
        pa.decimal256(65, 30),
        st.decimals(Decimal("-" + "9" * 35 + "." + "9" * 30), Decimal("9" * 35 + "." + "9" * 30), places=30),
    ),
    (
        "f",
        "FLOAT",
        pa.float32(),
        st.floats(width=32, allow_nan=False, allow_infinity=False, allow_subnormal=False),
    ),
    ("db", "DOUBLE", pa.float64(), st.floats(allow_nan=False, allow_infinity=False, allow_subnormal=False)),
    ("b5", "BIT(5)", pa.uint64(), st.integers(0, 31)),
    ("b64", "BIT(64)", pa.uint64(), st.integers(0, 2**64 - 1)),
    ("y", "YEAR", pa.int16(), st.sampled_from([0]) | st.integers(1901, 2155)),
    ("dd", "DATE", pa.date32(), st.dates(dt.date(1000, 1, 1), dt.date(9999, 12, 31))),
    (
        "dt0",
        "DATETIME",
        pa.timestamp("s"),
        st.datetimes(dt.datetime(1000, 1, 1), dt.datetime(9999, 12, 31, 23, 59, 59)).map(
            lambda v: v.replace(microsecond=0)
        ),
    ),
    (
        "dt3",
        "DATETIME(3)",
        pa.timestamp("ms"),
        st.datetimes(dt.datetime(1000, 1, 1), dt.datetime(9999, 12, 31, 23, 59, 59)).map(
            lambda v: v.replace(microsecond=v.microsecond // 1000 * 1000)
        ),
    ),
    (
        "dt6",
        "DATETIME(6)",
        pa.timestamp("us"),
        st.datetimes(dt.datetime(1000, 1, 1), dt.datetime(9999, 12, 31, 23, 59, 59, 999999)),
    ),
    (
        "ts",
        "TIMESTAMP(6) NULL",
        pa.timestamp("us", "UTC"),
        st.datetimes(dt.datetime(1970, 1, 1, 0, 0, 1), dt.datetime(2038, 1, 19, 3, 14, 7, 999999)),
    ),
    (
        "tm",
        "TIME(6)",
        pa.duration("us"),
        st.integers(-(838 * 3600 + 59 * 60 + 59) * 10**6, (838 * 3600 + 59 * 60 + 59) * 10**6).map(
            lambda us: dt.timedelta(microseconds=us)
        ),
    ),
    ("c", "CHAR(10)", pa.string(), st.text(st.characters(exclude_categories=("Cs",)), max_size=10)),
    ("vc", "VARCHAR(60)", pa.string(), st.text(st.characters(exclude_categories=("Cs",)), max_size=60)),
    (
        "tx",
        "MEDIUMTEXT",
        pa.string(),
        st.text(
            st.characters(exclude_categories=("Cs",)) | st.sampled_from("\\'\"\t\n\r\x00\x1a😀N"),
            max_size=400,
        ),
    ),
    ("bn", "BINARY(4)", pa.binary(), st.binary(max_size=4)),
    ("vb", "VARBINARY(300)", pa.binary(), st.binary(max_size=300)),
    ("bl", "LONGBLOB", pa.binary(), st.binary(max_size=2000)),
    (
        "j",
        "JSON",
        pa.string(),
        st.recursive(
            st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.text(max_size=8),
            lambda inner: (
                st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
            ),
            max_leaves=6,
        ).map(lambda v: json.dumps(v, ensure_ascii=False)),
    ),
    ("e", "ENUM('a','b','c d','é')", pa.string(), st.sampled_from(["a", "b", "c d", "é"])),
    ("st", "SET('x','y','z')", pa.string(), st.sampled_from(["", "x", "y", "x,y", "x,z", "x,y,z"])),
]
NAMES = [name for name, *_ in COLUMNS]


def _time_literal(value: dt.timedelta) -> str:
    micros = value // dt.timedelta(microseconds=1)
    sign, micros = ("-" if micros < 0 else ""), abs(micros)
    seconds, fraction = divmod(micros, 10**6)
    return f"{sign}{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}.{fraction:06d}"


def _insertable(name: str, value: Any) -> Any:
    """pymysql's own conversion, except TIME (its negative timedelta escaping is wrong)."""
    return _time_literal(value) if name == "tm" and value is not None else value


def _expected(name: str, value: Any) -> Any:
    """What the extractor must return for an inserted value."""
    if value is None:
        return None
    if name == "f":
        return struct.unpack("f", struct.pack("f", value))[0]
    if name == "c":
        return value.rstrip(" ")  # CHAR drops trailing spaces
    if name == "bn":
        return value.ljust(4, b"\x00")  # BINARY pads with zero bytes
    if name == "ts":
        return value.replace(tzinfo=dt.UTC)
    return value


def _create_source(server: MySQLServer) -> str:
    table = unique("rt")
    ddl = ", ".join(f"`{name}` {sql}" for name, sql, *_ in COLUMNS)
    server.execute(f"CREATE TABLE {table} (id INT PRIMARY KEY, {ddl}) DEFAULT CHARSET=utf8mb4")
    return table


def _fill(server: MySQLServer, table: str, data: list[dict[str, Any]]) -> None:
    conn = server.connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SET SESSION time_zone = '+00:00', sql_mode = 'STRICT_ALL_TABLES'")
            cur.execute(f"DELETE FROM {table}")
            columns = ", ".join(f"`{n}`" for n in ["id", *NAMES])
            marks = ", ".join(["%s"] * (len(NAMES) + 1))
            cur.executemany(
                f"INSERT INTO {table} ({columns}) VALUES ({marks})",
                [[i, *(_insertable(n, row[n]) for n in NAMES)] for i, row in enumerate(data)],
            )
    finally:
        conn.close()


def _round_trip(server: MySQLServer, source: str, data: list[dict[str, Any]], method: str) -> None:
    extracted = read(server, table=source, batch_size=7)
    assert [(f.name, f.type) for f in extracted.schema] == [("id", pa.int32())] + [
        (n, t) for n, _, t, _ in COLUMNS
    ]
    for name in NAMES:
        assert extracted.column(name).to_pylist() == [_expected(name, row[name]) for row in data], name
    target = unique("rt_copy")
    result = write(
        server, extracted, table=target, mode="replace", load_method=method, run_id=uuid.uuid4().hex
    )
    assert result.rows == len(data)
    same = " AND ".join(f"s.`{n}` <=> t.`{n}`" for n in NAMES)
    matched = rows(server, f"SELECT COUNT(*) FROM {source} s JOIN {target} t ON s.id = t.id AND {same}")[0][0]
    differing = [
        n
        for n in NAMES
        if rows(
            server,
            f"SELECT COUNT(*) FROM {source} s JOIN {target} t ON s.id = t.id AND NOT s.`{n}` <=> t.`{n}`",
        )[0][0]
    ]
    assert differing == []
    assert (matched, rows(server, f"SELECT COUNT(*) FROM {target}")[0][0]) == (len(data), len(data))
    copied = read(server, table=target, batch_size=5)
    assert copied.schema.equals(
        extracted.schema, check_metadata=True
    )  # the same column types, via mysql.type
    assert copied.equals(extracted)
    server.execute(f"DROP TABLE {target}")


_ROW = st.fixed_dictionaries({name: st.none() | values for name, _, _, values in COLUMNS})


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.lists(_ROW, min_size=1, max_size=12), method=st.sampled_from(["insert", "load_data"]))
def test_property_every_type_round_trips_exactly(
    mysql_server: MySQLServer, data: list[dict[str, Any]], method: str
) -> None:
    source = _PROPERTY_TABLES.setdefault(mysql_server.database, _create_source(mysql_server))
    _fill(mysql_server, source, data)
    _round_trip(mysql_server, source, data, method)


_PROPERTY_TABLES: dict[str, str] = {}

EXTREMES: list[dict[str, Any]] = [
    {
        "ti": -128,
        "tu": 255,
        "si": -32768,
        "mu": 2**24 - 1,
        "i": -(2**31),
        "iu": 2**32 - 1,
        "bi": -(2**63),
        "bu": 2**64 - 1,
        "d": Decimal("-99999999.99"),
        "du": Decimal("9" * 20),
        "dw": Decimal("-" + "9" * 35 + "." + "9" * 30),
        "f": 3.4028234663852886e38,
        "db": -1.7976931348623157e308,
        "b5": 31,
        "b64": 2**64 - 1,
        "y": 2155,
        "dd": dt.date(9999, 12, 31),
        "dt0": dt.datetime(9999, 12, 31, 23, 59, 59),
        "dt3": dt.datetime(1000, 1, 1, 0, 0, 0, 1000),
        "dt6": dt.datetime(9999, 12, 31, 23, 59, 59, 999999),
        "ts": dt.datetime(2038, 1, 19, 3, 14, 7, 999999),
        "tm": -dt.timedelta(hours=838, minutes=59, seconds=59),
        "c": "😀😀😀😀😀😀😀😀😀😀",
        "vc": "tab\there\nnew'line\\",
        "tx": "\x00\x1a\\N\\\\N😀",
        "bn": b"\xff\x00\xff\x00",
        "vb": bytes(range(256)),
        "bl": b"",
        "j": '{"k": ["😀", null, 1.5]}',
        "e": "é",
        "st": "x,y,z",
    },
    {
        "ti": 127,
        "tu": 0,
        "si": 32767,
        "mu": 0,
        "i": 2**31 - 1,
        "iu": 0,
        "bi": 2**63 - 1,
        "bu": 0,
        "d": Decimal("0.01"),
        "du": Decimal("0"),
        "dw": Decimal("0." + "0" * 29 + "1"),
        "f": 1.1754943508222875e-38,
        "db": 2.2250738585072014e-308,
        "b5": 0,
        "b64": 0,
        "y": 0,
        "dd": dt.date(1000, 1, 1),
        "dt0": dt.datetime(1000, 1, 1),
        "dt3": dt.datetime(2020, 2, 29, 12, 0, 0, 999000),
        "dt6": dt.datetime(1970, 1, 1),
        "ts": dt.datetime(1970, 1, 1, 0, 0, 1),
        "tm": dt.timedelta(hours=838, minutes=59, seconds=59),
        "c": "",
        "vc": "",
        "tx": "",
        "bn": b"",
        "vb": b"\x00",
        "bl": b"\\N",
        "j": "[]",
        "e": "a",
        "st": "",
    },
    {
        "ti": 0,
        "tu": 1,
        "si": 0,
        "mu": 1,
        "i": 0,
        "iu": 1,
        "bi": 0,
        "bu": 1,
        "d": Decimal("-0.01"),
        "du": Decimal("1"),
        "dw": Decimal("-0." + "0" * 29 + "1"),
        "f": -0.0,
        "db": 0.1,
        "b5": 1,
        "b64": 1,
        "y": 1901,
        "dd": dt.date(2024, 2, 29),
        "dt0": dt.datetime(2024, 2, 29),
        "dt3": dt.datetime(2024, 1, 1),
        "dt6": dt.datetime(2024, 1, 1, 0, 0, 0, 1),
        "ts": dt.datetime(2024, 6, 1, 12, 0, 0, 500000),
        "tm": -dt.timedelta(microseconds=1),
        "c": "a b",
        "vc": "trailing spaces  ",
        "tx": "line\r\nbreak",
        "bn": b"ab",
        "vb": b"\t\n\\",
        "bl": b"\x00" * 100000,
        "j": '"😀"',
        "e": "c d",
        "st": "x,z",
    },
    dict.fromkeys(NAMES),
]


@pytest.mark.parametrize("method", ["insert", "load_data"])
def test_extremes_and_nulls_round_trip_exactly(mysql_server: MySQLServer, method: str) -> None:
    source = _create_source(mysql_server)
    _fill(mysql_server, source, EXTREMES)
    _round_trip(mysql_server, source, EXTREMES, method)


def test_enum_with_four_byte_members_keeps_its_values(mysql_server: MySQLServer) -> None:
    """MariaDB shows 4-byte ENUM members as '?' in information_schema: the members are not trusted,
    the values still round-trip (into a text column)."""
    source = unique("emoji_enum")
    mysql_server.execute(
        f"CREATE TABLE {source} (id INT PRIMARY KEY, e ENUM('a','😀')) DEFAULT CHARSET=utf8mb4"
    )
    mysql_server.execute(f"INSERT INTO {source} VALUES (1, '😀'), (2, 'a'), (3, NULL)")
    extracted = read(mysql_server, table=source)
    assert extracted.schema.field("e").metadata[b"mysql.type"] == b"enum"
    target = unique("emoji_copy")
    write(mysql_server, extracted, table=target, mode="replace")
    assert read(mysql_server, table=target).column("e").to_pylist() == ["😀", "a", None]
