"""mysql.extractor against the real server: exact types, keyset chunks and resume, partitions,
a server-side KILL mid-read, a 16 MiB+ row, bounded batches, and clear errors without secrets."""

from __future__ import annotations

import datetime as dt
import threading
import tracemalloc
from decimal import Decimal

import pyarrow as pa
import pytest

from osiris_flight.components.mysql import COMPONENTS
from osiris_flight.components.mysql.config import check_extractor
from osiris_flight.components.mysql.connection import MySQLTerminalError, MySQLTransientError
from osiris_flight.components.mysql.extractor import MySQLExtractor
from osiris_flight.errors import TerminalError
from tests.mysql.conftest import MySQLServer
from tests.mysql.helpers import Telemetry, connection, make_ctx, read, read_chunks, unique

SECRET = "Never-Show-This-Pw-7731"


def _numbers(server: MySQLServer, n: int, *, filler: int = 0, nullable_key: bool = False) -> str:
    """A table of ``n`` rows: id 1..n (every 3rd NULL when nullable_key), grp = id % 7, v = text."""
    name = unique("nums")
    key = "id BIGINT NULL UNIQUE" if nullable_key else "id BIGINT PRIMARY KEY"
    server.execute(f"CREATE TABLE {name} (seq INT NOT NULL, {key}, grp INT NULL, v VARCHAR(300))")
    server.execute(
        f"INSERT INTO {name} SELECT seq, "
        + ("IF(seq % 3 = 0, NULL, seq)" if nullable_key else "seq")
        + f", IF(seq % 10 = 0, NULL, seq % 7), CONCAT('row-', seq, REPEAT('x', {filler})) FROM seq_1_to_{n}"
    )
    return name


def test_every_type_has_its_exact_arrow_type_and_metadata(mysql_server: MySQLServer) -> None:
    name = unique("types")
    mysql_server.execute(
        f"""CREATE TABLE {name} (id INT PRIMARY KEY, ti TINYINT, tu TINYINT UNSIGNED, si SMALLINT,
        mi MEDIUMINT UNSIGNED, i INT, bi BIGINT, bu BIGINT UNSIGNED, d DECIMAL(10,2),
        du DECIMAL(12,4) UNSIGNED,
        dw DECIMAL(65,30), f FLOAT, db DOUBLE, b BIT(5), b64 BIT(64), y YEAR, dd DATE, dt0 DATETIME,
        dt3 DATETIME(3), dt6 DATETIME(6), ts TIMESTAMP(6) NULL, tm TIME(6), c CHAR(5), vc VARCHAR(20),
        tx TEXT, bn BINARY(4), vb VARBINARY(10), bl BLOB, j JSON, e ENUM('a','b'), st SET('x','y'))"""
    )
    mysql_server.execute(
        f"""INSERT INTO {name} VALUES (1, -128, 255, -32768, 16777215, -2147483648, -9223372036854775808,
        18446744073709551615, -99999999.99, 99999999.9999, -{"9" * 35}.{"9" * 30}, 3.40282e38,
        -1.7976931348623157e308,
        b'10101', b'{"1" * 64}', 2155, '1000-01-01', '9999-12-31 23:59:59', '2020-02-29 12:00:00.123',
        '0001-01-01 00:00:00.000001', '2038-01-19 03:14:07.999999', '-838:59:59.000000', 'ab', 'x😀',
        'text', 'ab', 'cd', 'ef', '{{"a": [1, "😀"]}}', 'b', 'x,y')"""
    )
    mysql_server.execute(f"INSERT INTO {name} (id) VALUES (2)")
    table = read(mysql_server, table=name)
    expected = {
        "id": (pa.int32(), "int(11)"),
        "ti": (pa.int8(), "tinyint(4)"),
        "tu": (pa.uint8(), "tinyint(3) unsigned"),
        "si": (pa.int16(), "smallint(6)"),
        "mi": (pa.uint32(), "mediumint(8) unsigned"),
        "i": (pa.int32(), "int(11)"),
        "bi": (pa.int64(), "bigint(20)"),
        "bu": (pa.uint64(), "bigint(20) unsigned"),
        "d": (pa.decimal128(10, 2), "decimal(10,2)"),
        "du": (pa.decimal128(12, 4), "decimal(12,4) unsigned"),
        "dw": (pa.decimal256(65, 30), "decimal(65,30)"),
        "f": (pa.float32(), "float"),
        "db": (pa.float64(), "double"),
        "b": (pa.uint64(), "bit(5)"),
        "b64": (pa.uint64(), "bit(64)"),
        "y": (pa.int16(), "year(4)"),
        "dd": (pa.date32(), "date"),
        "dt0": (pa.timestamp("s"), "datetime"),
        "dt3": (pa.timestamp("ms"), "datetime(3)"),
        "dt6": (pa.timestamp("us"), "datetime(6)"),
        "ts": (pa.timestamp("us", "UTC"), "timestamp(6)"),
        "tm": (pa.duration("us"), "time(6)"),
        "c": (pa.string(), "char(5)"),
        "vc": (pa.string(), "varchar(20)"),
        "tx": (pa.string(), "text"),
        "bn": (pa.binary(), "binary(4)"),
        "vb": (pa.binary(), "varbinary(10)"),
        "bl": (pa.binary(), "blob"),
        "j": (pa.string(), "json"),
        "e": (pa.string(), "enum('a','b')"),
        "st": (pa.string(), "set('x','y')"),
    }
    assert {f.name: (f.type, f.metadata[b"mysql.type"].decode()) for f in table.schema} == expected
    assert table.schema.field("id").nullable is False and table.schema.field("ti").nullable is True
    full, empty = table.to_pylist()
    assert full["bu"] == 2**64 - 1 and full["bi"] == -(2**63) and full["b64"] == 2**64 - 1 and full["b"] == 21
    assert full["dw"] == Decimal("-" + "9" * 35 + "." + "9" * 30) and full["du"] == Decimal("99999999.9999")
    assert full["f"] == pa.scalar(3.40282e38, pa.float32()).as_py()  # the stored float exactly, not 6 digits
    assert full["dt6"] == dt.datetime(1, 1, 1, 0, 0, 0, 1) and full["dt3"] == dt.datetime(
        2020, 2, 29, 12, 0, 0, 123000
    )
    assert full["tm"] == -dt.timedelta(hours=838, minutes=59, seconds=59)
    assert (full["vc"], full["bn"], full["j"]) == ("x😀", b"ab\x00\x00", '{"a": [1, "😀"]}')
    assert all(v is None for k, v in empty.items() if k != "id")
    # The same columns through a query: the same Arrow types (from the wire), same values.
    by_query = read(mysql_server, query=f"SELECT * FROM {name} ORDER BY id")
    assert by_query.schema.remove_metadata() == table.schema.remove_metadata()
    assert [f.type for f in by_query.schema] == [f.type for f in table.schema]
    assert by_query.drop_columns(["f"]).equals(table.drop_columns(["f"]))


def test_zero_dates_become_null_and_are_counted_once(mysql_server: MySQLServer) -> None:
    name = unique("zeros")
    mysql_server.execute(f"CREATE TABLE {name} (id INT PRIMARY KEY, d DATE, t DATETIME(3), ok DATE)")
    conn = mysql_server.connect()
    with conn.cursor() as cur:
        cur.execute("SET SESSION sql_mode = ''")
        cur.execute(
            f"INSERT INTO {name} VALUES (1, '0000-00-00', '0000-00-00 00:00:00', '2024-01-01'), "
            "(2, '2024-02-00', '2024-01-01 00:00:00.5', NULL), (3, '0000-00-00', NULL, '2024-01-02')"
        )
    conn.close()
    telemetry = Telemetry()
    table = read(mysql_server, telemetry, table=name, batch_size=1)
    assert table.column("d").to_pylist() == [None, None, None]
    assert table.column("t").to_pylist() == [None, dt.datetime(2024, 1, 1, 0, 0, 0, 500000), None]
    assert telemetry.named("mysql_zero_dates") == [
        {"step": "step1", "column": "d", "count": 3},
        {"step": "step1", "column": "t", "count": 1},
    ]
    assert [v for n, v, _ in telemetry.metrics if n == "mysql_rows_fetched"] == [
        1,
        2,
        3,
    ]  # progress, cumulative
    assert [(n, v) for n, v, _ in telemetry.metrics if n == "mysql_zero_dates"] == [
        ("mysql_zero_dates", 3),
        ("mysql_zero_dates", 1),
    ]


def test_keyset_chunks_resume_exactly_after_each_token(mysql_server: MySQLServer) -> None:
    name = _numbers(mysql_server, 2500)
    whole = read(mysql_server, table=name)
    extractor = MySQLExtractor(make_ctx(mysql_server, {"table": name, "chunk_rows": 700, "batch_size": 300}))
    chunks, connections = [], set()
    for table, token in read_chunks(extractor):
        chunks.append((table, token))
        connections.add(id(extractor._conn))
    assert len(connections) == 1  # one connection serves every chunk
    assert [t.num_rows for t, _ in chunks] == [700, 700, 700, 400]
    assert pa.concat_tables([t for t, _ in chunks]).equals(whole)
    for index, (_, token) in enumerate(chunks):
        rest = list(
            read_chunks(MySQLExtractor(make_ctx(mysql_server, {"table": name, "chunk_rows": 700})), token)
        )
        expected = whole.slice(700 * (index + 1))
        got = pa.concat_tables([t for t, _ in rest]) if rest else whole.slice(0, 0)
        assert got.equals(expected), index


def test_nullable_key_reads_null_keys_first_then_resumes_by_key(mysql_server: MySQLServer) -> None:
    name = _numbers(mysql_server, 1000, nullable_key=True)
    config = {"table": name, "key": "id", "chunk_rows": 300}
    chunks = list(read_chunks(MySQLExtractor(make_ctx(mysql_server, config))))
    assert chunks[0][0].column("id").null_count == chunks[0][0].num_rows == 333
    seqs = pa.concat_tables([t for t, _ in chunks]).column("seq").to_pylist()
    assert sorted(seqs) == list(range(1, 1001))
    rest = list(read_chunks(MySQLExtractor(make_ctx(mysql_server, config)), chunks[0][1]))
    assert sorted(pa.concat_tables([t for t, _ in rest]).column("seq").to_pylist()) == sorted(
        s for s in range(1, 1001) if s % 3
    )


@pytest.mark.parametrize(
    "partition",
    [
        {"column": "grp", "partitions": 3},
        {"column": "id", "partitions": 4},
        {"column": "grp", "bounds": [2, 5]},
        {"column": "v", "bounds": ["row-3", "row-6"]},
    ],
)
def test_partitions_cover_every_row_exactly_once(
    mysql_server: MySQLServer, partition: dict[str, object]
) -> None:
    name = _numbers(mysql_server, 3000)
    spec = next(s for s in COMPONENTS if s.name == "mysql.extractor")
    config = {"table": name, "partition": partition, "chunk_rows": 400}
    parts = spec.partitions(config)
    assert parts == (len(partition["bounds"]) + 1 if "bounds" in partition else partition["partitions"])  # type: ignore[arg-type]
    seen: list[int] = []
    for p in range(parts):
        extractor = MySQLExtractor(make_ctx(mysql_server, config, partition=p, partitions=parts))
        table = pa.Table.from_batches(list(extractor.open().batches()), schema=extractor._prepare())
        if partition["column"] == "grp" and p > 0:
            assert table.column("grp").null_count == 0  # NULLs go to partition 0
        seen += table.column("seq").to_pylist()
    assert sorted(seen) == list(range(1, 3001))


def test_partition_by_datetime_and_resume_inside_a_partition(mysql_server: MySQLServer) -> None:
    name = unique("events")
    mysql_server.execute(f"CREATE TABLE {name} (id INT PRIMARY KEY, at DATETIME(6) NULL)")
    mysql_server.execute(
        f"INSERT INTO {name} SELECT seq, IF(seq % 50 = 0, NULL, '2024-01-01' + INTERVAL seq * 7919 SECOND) "
        "FROM seq_1_to_2000"
    )
    config = {"table": name, "partition": {"column": "at", "partitions": 3}, "chunk_rows": 250}
    seen: list[int] = []
    for p in range(3):
        chunks = list(read_chunks(MySQLExtractor(make_ctx(mysql_server, config, partition=p, partitions=3))))
        ids = [i for t, _ in chunks for i in t.column("id").to_pylist()]
        if len(chunks) > 2:  # a resumed read of this partition continues after its first chunk
            rest = read_chunks(
                MySQLExtractor(make_ctx(mysql_server, config, partition=p, partitions=3)), chunks[0][1]
            )
            assert [i for t, _ in rest for i in t.column("id").to_pylist()] == ids[chunks[0][0].num_rows :]
        seen += ids
    assert sorted(seen) == list(range(1, 2001))
    with pytest.raises(TerminalError, match="partition"):
        list(
            read_chunks(
                MySQLExtractor(make_ctx(mysql_server, config, partition=1, partitions=2)),
                next(read_chunks(MySQLExtractor(make_ctx(mysql_server, config, partition=0, partitions=3))))[
                    1
                ],
            )
        )


def test_partition_on_text_needs_bounds(mysql_server: MySQLServer) -> None:
    name = _numbers(mysql_server, 10)
    config = {"table": name, "partition": {"column": "v", "partitions": 2}}
    with pytest.raises(TerminalError, match=r"partition\.bounds"):
        MySQLExtractor(make_ctx(mysql_server, config, partition=0, partitions=2)).open().to_table()


def _kill_when_streaming(server: MySQLServer, table: str) -> int:
    """KILL (from another connection) the connection that is reading ``table``; return its id."""
    found = server.execute(
        "SELECT ID FROM information_schema.PROCESSLIST WHERE INFO LIKE %s AND ID <> CONNECTION_ID()",
        (f"%FROM %{table}%",),
    )
    assert found, "the extractor's statement is not running"
    server.execute(f"KILL {int(found[0][0])}")
    return int(found[0][0])


def test_server_side_kill_mid_extract_gives_identical_output(mysql_server: MySQLServer) -> None:
    name = _numbers(mysql_server, 200_000, filler=200)
    undisturbed = read(mysql_server, table=name)
    telemetry = Telemetry()
    stream = MySQLExtractor(
        make_ctx(mysql_server, {"table": name, "batch_size": 2000}, telemetry=telemetry)
    ).open()
    batches = stream.batches()
    got = [next(batches) for _ in range(3)]  # the server is now blocked on a full socket
    _kill_when_streaming(mysql_server, name)
    got += list(batches)
    assert pa.Table.from_batches(got).equals(undisturbed)
    retries = telemetry.named("mysql_retry")
    assert len(retries) == 1 and retries[0]["after_rows"] >= 6000
    assert "2013" in retries[0]["error"] or "1927" in retries[0]["error"]


def test_kill_without_a_key_fails_the_attempt_as_transient(mysql_server: MySQLServer) -> None:
    name = _numbers(mysql_server, 200_000, filler=200)
    stream = MySQLExtractor(
        make_ctx(mysql_server, {"query": f"SELECT * FROM {name}", "batch_size": 2000})
    ).open()
    batches = stream.batches()
    next(batches)
    _kill_when_streaming(mysql_server, name)
    with pytest.raises(MySQLTransientError):
        list(batches)


def test_row_larger_than_16_mib(mysql_server: MySQLServer) -> None:
    (before,) = mysql_server.execute("SELECT @@GLOBAL.max_allowed_packet")[0]
    mysql_server.execute("SET GLOBAL max_allowed_packet = 67108864")
    try:
        name = unique("big")
        mysql_server.execute(f"CREATE TABLE {name} (id INT PRIMARY KEY, t LONGTEXT, b LONGBLOB)")
        mysql_server.execute(
            f"INSERT INTO {name} VALUES (1, CONCAT(REPEAT('a', 17000000), '😀'), REPEAT(x'00ff', 9000000)), "
            "(2, 's', NULL)"
        )
        table = read(mysql_server, table=name)
        first = table.to_pylist()[0]
        assert len(first["t"]) == 17000001 and first["t"].endswith("😀")
        assert first["b"] == b"\x00\xff" * 9000000
        assert table.to_pylist()[1] == {"id": 2, "t": "s", "b": None}
    finally:
        mysql_server.execute(f"SET GLOBAL max_allowed_packet = {int(before)}")


def test_batches_are_bounded_in_rows_and_bytes(mysql_server: MySQLServer) -> None:
    name = _numbers(mysql_server, 5000, filler=290)
    small = MySQLExtractor(make_ctx(mysql_server, {"table": name, "batch_size": 700}))
    assert max(b.num_rows for b in small.open().batches()) == 700
    # A 4 MiB memory budget caps a batch at 1 MiB of raw rows (~3500 of these 300-byte rows).
    capped = MySQLExtractor(make_ctx(mysql_server, {"table": name}, memory_limit_bytes=4 << 20))
    sizes = [b.num_rows for b in capped.open().batches()]
    assert sum(sizes) == 5000 and max(sizes) < 4000 and len(sizes) >= 2


def test_memory_stays_flat_on_a_table_far_larger_than_a_batch(mysql_server: MySQLServer) -> None:
    """Arrow and Python allocations (tracemalloc) while draining ~65 MB: bounded by a few batches."""
    name = _numbers(mysql_server, 200_000, filler=280)
    size = int(mysql_server.execute(f"SELECT SUM(LENGTH(v)) + COUNT(*) * 12 FROM {name}")[0][0])
    read(mysql_server, table=name, limit=10)  # imports and caches, not data, out of the measure
    for config in ({"table": name}, {"query": f"SELECT * FROM {name}"}):
        stream = MySQLExtractor(make_ctx(mysql_server, {**config, "batch_size": 4096})).open()
        base, peak, rows = pa.total_allocated_bytes(), 0, 0
        tracemalloc.start()
        try:
            for batch in stream.batches():
                rows += batch.num_rows
                peak = max(peak, pa.total_allocated_bytes() - base)
                del batch
            python_peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert rows == 200_000
        assert peak < size / 10 and python_peak < size / 10, (peak, python_peak, size)


def test_columns_limit_and_query_with_key(mysql_server: MySQLServer) -> None:
    name = _numbers(mysql_server, 1000)
    some = read(mysql_server, table=name, columns=["v", "grp"], chunk_rows=300)
    assert some.column_names == ["v", "grp"] and some.num_rows == 1000  # the key is read, not output
    assert read(mysql_server, table=name, limit=450, chunk_rows=100).column("id").to_pylist() == list(
        range(1, 451)
    )
    assert read(mysql_server, query=f"SELECT * FROM {name}", limit=5).num_rows == 5
    query = f"SELECT id, v FROM {name} WHERE grp = 3"
    chunks = list(
        read_chunks(MySQLExtractor(make_ctx(mysql_server, {"query": query, "key": "id", "chunk_rows": 50})))
    )
    ids = [i for t, _ in chunks for i in t.column("id").to_pylist()]
    assert ids == sorted(i for i in range(1, 1001) if i % 7 == 3 and i % 10)
    assert read(mysql_server, query=query + ";").num_rows == len(ids)


def test_bad_sql_unknown_table_and_column_are_terminal(mysql_server: MySQLServer) -> None:
    cases = [
        ({"query": "SELEC 1"}, 1064, "SQL syntax"),
        ({"table": "no_such_table_x"}, 1146, "doesn't exist"),
        ({"table": _numbers(mysql_server, 3), "columns": ["nope"]}, 1054, "Unknown column 'nope'"),
    ]
    for config, errno, text in cases:
        with pytest.raises(MySQLTerminalError) as info:
            read(mysql_server, **config)
        assert info.value.errno == errno and text in str(info.value) and "step 'step1'" in str(info.value)
    with pytest.raises(TerminalError, match="column 'nope' is not in the result"):
        read(mysql_server, query="SELECT 1 AS a", key="nope")
    with pytest.raises(MySQLTerminalError, match=r"1060: Duplicate column name 'a'.*distinct aliases"):
        read(mysql_server, query="SELECT 1 AS a, 2 AS a")


def test_wrong_credentials_never_show_the_password(mysql_server: MySQLServer) -> None:
    ctx = make_ctx(mysql_server, {"table": "t"}, conn=connection(mysql_server, password=SECRET))
    with pytest.raises(MySQLTerminalError) as info:
        MySQLExtractor(ctx).open()
    message = str(info.value)
    assert info.value.errno == 1045 and "Access denied" in message and "@mysql.test" in message
    assert SECRET not in message and SECRET not in repr(info.value.args)
    refused = make_ctx(mysql_server, {"table": "t"}, conn=connection(mysql_server, port=1, password=SECRET))
    with pytest.raises(MySQLTransientError) as lost:
        MySQLExtractor(refused).open()
    assert lost.value.errno == 2003 and SECRET not in str(lost.value)


def test_cancellation_stops_a_read(mysql_server: MySQLServer) -> None:
    name = _numbers(mysql_server, 3000)
    cancel = threading.Event()
    stream = MySQLExtractor(
        make_ctx(mysql_server, {"table": name, "chunk_rows": 500}, cancel_event=cancel)
    ).open()
    batches = stream.batches()
    next(batches)
    cancel.set()
    with pytest.raises(Exception, match="cancelled"):
        list(batches)


def test_config_checks() -> None:
    assert check_extractor({"connection": "@mysql.a", "table": "t"}) == []
    assert [
        p.field for p in check_extractor({"connection": "@mysql.a", "table": "t", "query": "SELECT 1"})
    ] == ["config.query"]
    assert [p.field for p in check_extractor({"connection": "@mysql.a"})] == ["config.table"]
    assert [p.field for p in check_extractor({"connection": "@mysql.a", "query": "q", "columns": ["a"]})] == [
        "config.columns"
    ]
    both = {
        "connection": "@mysql.a",
        "table": "t",
        "partition": {"column": "c", "partitions": 2, "bounds": [1]},
    }
    assert [p.field for p in check_extractor(both)] == ["config.partition"]
    unordered = {
        "connection": "@mysql.a",
        "table": "t",
        "partition": {"column": "c", "bounds": [5, 1]},
        "limit": 3,
    }
    assert [p.field for p in check_extractor(unordered)] == ["config.partition.bounds", "config.limit"]
