"""``decoder: binary`` (a server-side prepared statement, binary-protocol rows decoded natively)
reads the same MySQL results into the same Arrow batches as the native text decoder: every type,
random rows (hypothesis), extremes, NULLs, zero dates, keyset chunks on one connection, plain queries.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from osiris_flight.components.mysql.extractor import MySQLExtractor
from tests.mysql.conftest import MySQLServer
from tests.mysql.helpers import Telemetry, make_ctx, read, unique
from tests.mysql.test_extractor import _kill_when_streaming, _numbers
from tests.mysql.test_roundtrip import _ROW, _create_source, _fill

_TABLES: dict[str, str] = {}


def _both(server: MySQLServer, **config: Any) -> tuple[pa.Table, pa.Table]:
    native = read(server, **config, decoder="native")
    binary = read(server, **config, decoder="binary")
    assert binary.schema.equals(native.schema, check_metadata=True)
    return native, binary


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.lists(_ROW, min_size=1, max_size=30), batch=st.integers(1, 9))
def test_binary_and_native_decoders_give_identical_batches(
    mysql_server: MySQLServer, data: list[dict[str, Any]], batch: int
) -> None:
    table = _TABLES.setdefault(mysql_server.database, _create_source(mysql_server))
    _fill(mysql_server, table, data)
    # chunk_rows=7: several prepared statements on one connection, so the binary decoder must leave
    # it usable after every result (EOF consumed, statement closed, sequence ids right).
    native, binary = _both(mysql_server, table=table, chunk_rows=7, batch_size=batch)
    assert binary.num_rows == len(data)
    assert binary.equals(native)
    # A plain query is sent as written: the text protocol reads its FLOAT with 6 significant digits,
    # the binary protocol the float itself (what the table read above gets through CAST AS DOUBLE).
    by_query, binary_query = _both(mysql_server, query=f"SELECT * FROM {table}", batch_size=batch)
    assert binary_query.drop_columns(["f"]).equals(by_query.drop_columns(["f"]))
    assert binary_query.column("f").equals(native.column("f"))


_EDGE_DDL = """id INT PRIMARY KEY, ti TINYINT, tu TINYINT UNSIGNED, si SMALLINT, mi MEDIUMINT,
    mu MEDIUMINT UNSIGNED, i INT, iu INT UNSIGNED, bi BIGINT, bu BIGINT UNSIGNED, y YEAR, b1 BIT(1),
    b64 BIT(64), dw DECIMAL(65,30), dn DECIMAL(5,2), f FLOAT, db DOUBLE, d DATE, dt0 DATETIME,
    dt3 DATETIME(3), dt6 DATETIME(6), ts TIMESTAMP(6) NULL, tm TIME(6), tm0 TIME, vc VARCHAR(20),
    bl BLOB, j JSON, e ENUM('a','c d','é'), s SET('x','y','z')"""
_EDGE_ROWS = [
    "(1, -128, 0, -32768, -8388608, 0, -2147483648, 0, -9223372036854775808, 0, 1901, b'0', 0, "
    f"'-{'9' * 35}.{'9' * 30}', -999.99, -3.4e38, -1.7976931348623157e308, '1000-01-01', "
    "'1000-01-01 00:00:00', '1000-01-01 00:00:00.000', '1000-01-01 00:00:00.000001', "
    "'1970-01-01 00:00:01', '-838:59:59.000000', '-838:59:59', '😀𝄞', x'00', '[]', 'a', '')",
    "(2, 127, 255, 32767, 8388607, 16777215, 2147483647, 4294967295, 9223372036854775807, "
    "18446744073709551615, 2155, b'1', 18446744073709551615, "
    f"'{'9' * 35}.{'9' * 30}', 999.99, 3.4e38, 1.7976931348623157e308, '9999-12-31', "
    "'9999-12-31 23:59:59', '9999-12-31 23:59:59.999', '9999-12-31 23:59:59.999999', "
    "'2038-01-19 03:14:07.999999', '838:59:59.000000', '100:00:01', 'é中😀', x'ff00', "
    "'{\"a\": \"😀\"}', 'c d', 'x,y,z')",
    "(3" + ", NULL" * 28 + ")",
    "(4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, NULL, NULL, 0, 0, 0, 0, '0000-00-00', '2024-02-00 10:00:00', "
    "'0000-00-00 00:00:00', '2024-00-10 00:00:00', '0000-00-00 00:00:00', '-00:00:00.500000', "
    "'00:00:00', '', '', 'null', 'é', 'x')",
    "(5, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2000, NULL, 1, '0.000000000000000000000000000001', 0.01, 1.5, "
    "2.5e-300, '2024-02-29', '2024-01-01 00:00:00', '2024-01-01 10:00:00.000', "
    "'2024-01-01 10:00:00.100000', '2024-01-01 00:00:00', '10:00:00', '-00:00:01', 'x', NULL, "
    "'1', NULL, NULL)",
]


def test_extremes_nulls_zero_dates_and_every_type_agree(mysql_server: MySQLServer) -> None:
    name = unique("binedge")
    mysql_server.execute(f"CREATE TABLE {name} ({_EDGE_DDL}) DEFAULT CHARSET=utf8mb4")
    conn = mysql_server.connect()
    with conn.cursor() as cur:
        cur.execute("SET SESSION sql_mode = '', time_zone = '+00:00'")
        cur.execute(f"INSERT INTO {name} VALUES {', '.join(_EDGE_ROWS)}")
    conn.close()
    zero_dates = {}
    tables = {}
    for decoder in ("native", "binary"):
        telemetry = Telemetry()
        extractor = MySQLExtractor(
            make_ctx(
                mysql_server,
                {"table": name, "batch_size": 2, "chunk_rows": 3, "decoder": decoder},
                telemetry=telemetry,
            )
        )
        stream = extractor.open()
        tables[decoder] = pa.Table.from_batches(list(stream.batches()), schema=stream.schema)
        zero_dates[decoder] = telemetry.named("mysql_zero_dates")
    native, binary = tables["native"], tables["binary"]
    assert binary.schema.equals(native.schema, check_metadata=True)
    assert binary.num_rows == len(_EDGE_ROWS)
    for column in native.column_names:
        assert binary.column(column).equals(native.column(column)), column
    assert zero_dates["binary"] == zero_dates["native"]
    assert {z["column"] for z in zero_dates["binary"]} == {"d", "dt0", "dt3", "dt6", "ts"}
    assert binary.column("bu").to_pylist()[1] == 2**64 - 1
    assert binary.column("tm").to_pylist()[3].total_seconds() == -0.5
    by_query, binary_query = _both(mysql_server, query=f"SELECT * FROM {name}", batch_size=2)
    assert binary_query.drop_columns(["f"]).equals(by_query.drop_columns(["f"]))


def test_keyset_chunks_on_every_key_type_agree(mysql_server: MySQLServer) -> None:
    """The next chunk starts after the last key the binary decoder delivered, whatever its type."""
    keys = {
        "k_str": ("VARCHAR(10)", ["'a'", "'é'", "'😀'", "'😀😀'", "'z'"]),
        "k_dt": ("DATETIME(6)", [f"'2024-01-0{d} 00:00:0{d}.12345{d}'" for d in range(1, 6)]),
        "k_dec": ("DECIMAL(10,3)", ["-1.5", "0", "0.001", "2.5", "100"]),
        "k_dw": ("DECIMAL(65,30)", ["-1e-30", "0", "1e-30", "2e-30", "1e34"]),
        "k_bin": ("VARBINARY(4)", ["x'00'", "x'0001'", "x'7f'", "x'80'", "x'ff'"]),
        "k_tm": ("TIME(6)", ["'-100:00:00.5'", "'-00:00:00.5'", "'00:00:00'", "'01:00:00'", "'200:00:00'"]),
        "k_bu": ("BIGINT UNSIGNED", ["0", "1", "2", "9223372036854775808", "18446744073709551615"]),
    }
    for key, (ddl, values) in keys.items():
        name = unique("binkey")
        mysql_server.execute(f"CREATE TABLE {name} ({key} {ddl} PRIMARY KEY, v INT) DEFAULT CHARSET=utf8mb4")
        mysql_server.execute(
            f"INSERT INTO {name} VALUES " + ", ".join(f"({v}, {i})" for i, v in enumerate(values))
        )
        native, binary = _both(mysql_server, table=name, chunk_rows=2, batch_size=1)
        assert binary.num_rows == len(values), key
        assert binary.equals(native), key


def test_rows_larger_than_16_mib_and_the_connection_stays_usable(mysql_server: MySQLServer) -> None:
    (before,) = mysql_server.execute("SELECT @@GLOBAL.max_allowed_packet")[0]
    mysql_server.execute("SET GLOBAL max_allowed_packet = 67108864")
    try:
        name = unique("binbig")
        mysql_server.execute(f"CREATE TABLE {name} (id INT PRIMARY KEY, t LONGTEXT, b LONGBLOB)")
        mysql_server.execute(
            f"INSERT INTO {name} VALUES (1, CONCAT(REPEAT('a', 17000000), '😀'), REPEAT(x'00ff', 9000000)), "
            "(2, 's', NULL), (3, REPEAT('b', 16777200), x'01')"
        )
        # chunk_rows=1: each big row is its own prepared statement on the same connection.
        native, binary = _both(mysql_server, table=name, chunk_rows=1)
        assert binary.equals(native)
        first = binary.to_pylist()[0]
        assert len(first["t"]) == 17000001 and first["t"].endswith("😀")
        assert binary.to_pylist()[1] == {"id": 2, "t": "s", "b": None}
    finally:
        mysql_server.execute(f"SET GLOBAL max_allowed_packet = {int(before)}")


def test_server_side_kill_mid_extract_resumes_with_identical_output(mysql_server: MySQLServer) -> None:
    name = _numbers(mysql_server, 200_000, filler=200)
    undisturbed = read(mysql_server, table=name)
    telemetry = Telemetry()
    config = {"table": name, "batch_size": 2000, "decoder": "binary"}
    batches = MySQLExtractor(make_ctx(mysql_server, config, telemetry=telemetry)).open().batches()
    got = [next(batches) for _ in range(3)]  # the server is now blocked on a full socket
    _kill_when_streaming(mysql_server, name)
    got += list(batches)
    assert pa.Table.from_batches(got).equals(undisturbed)
    retries = telemetry.named("mysql_retry")
    assert len(retries) == 1 and retries[0]["after_rows"] >= 6000
