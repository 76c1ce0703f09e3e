"""mysql.writer against the real server: append/replace/upsert, failures leave the target as it was,
resumed and retried loads write every row exactly once, late attempts see AlreadyFinished."""

from __future__ import annotations

import uuid
from typing import Any

import pyarrow as pa
import pytest

from osiris_flight.components.base import AlreadyFinished
from osiris_flight.components.mysql.config import check_writer
from osiris_flight.components.mysql.connection import MySQLTerminalError, MySQLTransientError, close_quietly
from osiris_flight.components.mysql.extractor import MySQLExtractor
from osiris_flight.components.mysql.loadstate import STATE_TABLE
from osiris_flight.components.mysql.writer import MySQLWriter
from osiris_flight.data.rowstream import RowStream
from osiris_flight.errors import TerminalError
from tests.components.helpers import failing_stream
from tests.mysql.conftest import MySQLServer
from tests.mysql.helpers import connection, copy_chunked, make_ctx, read, read_chunks, rows, unique, write

METHODS = ["insert", "load_data"]
SECRET = "Never-Show-This-Pw-9157"


def _people(n: int, start: int = 1, name: str = "p") -> pa.Table:
    ids = list(range(start, start + n))
    return pa.table({"id": pa.array(ids, pa.int64()), "name": [f"{name}{i}" for i in ids]})


def _target(server: MySQLServer, *rows_: tuple[int, str]) -> str:
    table = unique("people")
    server.execute(
        f"CREATE TABLE {table} (id BIGINT PRIMARY KEY, name VARCHAR(40) NOT NULL, "
        "note VARCHAR(10) DEFAULT 'd')"
    )
    for row in rows_:
        server.execute(f"INSERT INTO {table} (id, name) VALUES (%s, %s)", row)
    return table


def _content(server: MySQLServer, table: str) -> list[tuple[Any, ...]]:
    return rows(server, f"SELECT id, name FROM {table} ORDER BY id")


def _leftovers(server: MySQLServer) -> list[str]:
    return [str(r[0]) for r in rows(server, "SHOW TABLES LIKE '\\_osiris\\_%'") if r[0] != STATE_TABLE]


@pytest.mark.parametrize("method", METHODS)
def test_append_adds_rows_and_keeps_existing(mysql_server: MySQLServer, method: str) -> None:
    table = _target(mysql_server, (10000, "old"))
    result = write(mysql_server, _people(2500), table=table, load_method=method)
    assert (result.rows, result.target) == (2500, f"{mysql_server.database}.{table}")
    got = _content(mysql_server, table)
    assert len(got) == 2501 and got[-2] == (2500, "p2500") and got[-1] == (10000, "old")
    assert (
        rows(mysql_server, f"SELECT COUNT(*) FROM {table} WHERE note = 'd'")[0][0] == 2501
    )  # defaults apply
    assert not [t for t in _leftovers(mysql_server) if table in t]


@pytest.mark.parametrize("method", METHODS)
def test_replace_swaps_in_exactly_the_new_rows(mysql_server: MySQLServer, method: str) -> None:
    table = _target(mysql_server, (1, "old1"), (99999, "old2"))
    mysql_server.execute(f"CREATE INDEX ix_name ON {table} (name)")
    write(mysql_server, _people(3000, name="new"), table=table, mode="replace", load_method=method)
    got = _content(mysql_server, table)
    assert got == [(i, f"new{i}") for i in range(1, 3001)]
    create = rows(mysql_server, f"SHOW CREATE TABLE {table}")[0][1]
    assert "KEY `ix_name`" in create and "DEFAULT 'd'" in create  # the table's definition is kept
    fresh = unique("fresh")
    write(mysql_server, _people(5), table=fresh, mode="replace", primary_key=["id"])
    assert len(_content(mysql_server, fresh)) == 5
    assert "PRIMARY KEY (`id`)" in rows(mysql_server, f"SHOW CREATE TABLE {fresh}")[0][1]


@pytest.mark.parametrize("method", METHODS)
def test_upsert_updates_inserts_and_last_duplicate_wins(mysql_server: MySQLServer, method: str) -> None:
    table = _target(mysql_server, (1, "old1"), (2, "old2"), (50, "keep"))
    data = pa.concat_tables([_people(3, name="a"), _people(2, start=3, name="b")])  # id 3 twice: b3 wins
    write(mysql_server, data, table=table, mode="upsert", upsert_keys=["id"], load_method=method)
    assert _content(mysql_server, table) == [(1, "a1"), (2, "a2"), (3, "b3"), (4, "b4"), (50, "keep")]
    created = unique("up")
    write(mysql_server, _people(3), table=created, mode="upsert", upsert_keys=["id"], create_table=True)
    write(mysql_server, _people(2, start=2, name="z"), table=created, mode="upsert", upsert_keys=["id"])
    assert _content(mysql_server, created) == [(1, "p1"), (2, "z2"), (3, "z3")]


def test_upsert_needs_a_unique_index_on_its_keys(mysql_server: MySQLServer) -> None:
    table = _target(mysql_server)
    with pytest.raises(TerminalError, match=r"no PRIMARY KEY or UNIQUE index on \(name\)"):
        write(mysql_server, _people(1), table=table, mode="upsert", upsert_keys=["name"])
    write(mysql_server, _people(2), table=table, mode="upsert")  # no keys given: the primary key
    assert len(_content(mysql_server, table)) == 2


@pytest.mark.parametrize("mode", ["append", "replace", "upsert"])
@pytest.mark.parametrize("method", METHODS)
def test_a_failed_write_leaves_the_target_as_it_was(
    mysql_server: MySQLServer, mode: str, method: str
) -> None:
    table = _target(mysql_server, (1, "old1"), (2, "old2"))
    before = _content(mysql_server, table)
    data = _people(5000, name="new")
    ctx = make_ctx(
        mysql_server, {"table": table, "mode": mode, "load_method": method}, run_id=uuid.uuid4().hex
    )
    with pytest.raises(ConnectionError):  # the upstream's own error class, not wrapped
        MySQLWriter(ctx).write(failing_stream(data, 1000, fail_after=3))
    assert _content(mysql_server, table) == before
    bad = pa.table({"id": [7], "name": ["x" * 41]})  # too long for VARCHAR(40): the server refuses
    with pytest.raises(MySQLTerminalError, match=r"1406|1265") as info:  # LOAD DATA: a warning made an error
        write(mysql_server, bad, table=table, mode=mode, load_method=method)
    assert "step 'step1'" in str(info.value)
    assert _content(mysql_server, table) == before


@pytest.mark.parametrize("mode", ["append", "upsert"])
def test_a_failed_load_into_a_new_table_creates_no_table(mysql_server: MySQLServer, mode: str) -> None:
    """create_table: the new target appears only when its rows are published; the failed attempt's
    work is kept (privately) and its retry publishes every row once."""
    table = unique("fresh")
    data = _people(5000, name="new")
    config = {"table": table, "mode": mode, "create_table": True, "primary_key": ["id"]}
    run = uuid.uuid4().hex

    def attempt(number: int) -> MySQLWriter:
        return MySQLWriter(make_ctx(mysql_server, config, run_id=run, task_id="t", attempt=number))

    first = attempt(1)
    assert first.begin(None) is None
    first.write_chunk(RowStream(data.slice(0, 2000).to_batches(), data.schema))
    first.commit_chunk("after-2000")
    with pytest.raises(ConnectionError):
        first.write_chunk(failing_stream(data.slice(2000), 1000, fail_after=1))
    first.abort()
    assert not rows(mysql_server, f"SHOW TABLES LIKE '{table}'")  # no new, empty target

    second = attempt(2)
    assert second.begin(None) == "after-2000"
    second.write_chunk(RowStream(data.slice(2000).to_batches(), data.schema))
    second.commit_chunk("after-5000")
    assert second.finish().rows == 5000
    assert _content(mysql_server, table) == [(i, f"new{i}") for i in range(1, 5001)]
    assert "PRIMARY KEY (`id`)" in rows(mysql_server, f"SHOW CREATE TABLE {table}")[0][1]
    assert not [t for t in _leftovers(mysql_server) if second.stage[-24:] in t]


def test_resumed_load_continues_from_the_database_token(mysql_server: MySQLServer) -> None:
    source = _people(2600)
    src = unique("src")
    write(mysql_server, source, table=src, mode="replace", primary_key=["id"])
    dst = _target(mysql_server, (0, "existing"))
    run = uuid.uuid4().hex

    def pair(attempt: int) -> tuple[MySQLExtractor, MySQLWriter]:
        extractor = MySQLExtractor(make_ctx(mysql_server, {"table": src, "chunk_rows": 500}, step_id="read"))
        writer_ctx = make_ctx(
            mysql_server, {"table": dst}, step_id="write", run_id=run, task_id="s1.p0", attempt=attempt
        )
        return extractor, MySQLWriter(writer_ctx)

    extractor, writer = pair(1)
    assert copy_chunked(extractor, writer, stop_after_chunks=2) is None
    # The crash: attempt 1 dies with a third chunk written but not committed.
    third = _chunks_of(mysql_server, src)[2]
    writer.write_chunk(RowStream(third.to_batches(), third.schema))
    close_quietly(writer._conn)
    assert _content(mysql_server, dst) == [(0, "existing")]  # nothing published yet

    extractor, writer = pair(2)
    token = writer.begin({"token": "stale journal token", "rows": 0})  # the database's token wins
    assert token is not None and writer._rows == 1000
    for chunk in extractor.open_chunks(token):
        writer.write_chunk(chunk.stream)
        writer.commit_chunk(chunk.token)
    result = writer.finish()
    assert result.rows == 2600
    assert _content(mysql_server, dst) == [(0, "existing")] + [(i, f"p{i}") for i in range(1, 2601)]

    extractor, late = pair(3)  # a late retry of the same task: told, and writes nothing
    with pytest.raises(AlreadyFinished) as done:
        late.begin(None)
    assert done.value.result.rows == 2600
    assert late.write(RowStream(source.to_batches(), source.schema)).rows == 2600
    assert len(_content(mysql_server, dst)) == 2601
    assert not [t for t in _leftovers(mysql_server) if writer.stage in t]


def _chunks_of(server: MySQLServer, table: str) -> list[pa.Table]:
    return [t for t, _ in read_chunks(MySQLExtractor(make_ctx(server, {"table": table, "chunk_rows": 500})))]


def test_a_newer_attempt_fences_off_a_zombie(mysql_server: MySQLServer) -> None:
    table = _target(mysql_server)
    run = uuid.uuid4().hex
    data = _people(10)

    def writer(attempt: int) -> MySQLWriter:
        return MySQLWriter(make_ctx(mysql_server, {"table": table}, run_id=run, task_id="t", attempt=attempt))

    zombie, fresh = writer(1), writer(2)
    assert zombie.begin(None) is None
    zombie.write_chunk(RowStream(data.slice(0, 5).to_batches(), data.schema))
    zombie.commit_chunk("after-5")
    zombie.write_chunk(RowStream(data.slice(5).to_batches(), data.schema))
    assert fresh.begin(None) == "after-5"
    with pytest.raises(MySQLTransientError, match="taken over"):
        zombie.commit_chunk("after-10")
    zombie.abort()
    fresh.write_chunk(RowStream(data.slice(5).to_batches(), data.schema))
    fresh.commit_chunk("after-10")
    assert fresh.finish().rows == 10
    assert [r[0] for r in _content(mysql_server, table)] == list(range(1, 11))


def test_replace_interrupted_between_swap_and_mark_is_finished(mysql_server: MySQLServer) -> None:
    table = _target(mysql_server, (1, "old"))
    run = uuid.uuid4().hex
    ctx = make_ctx(mysql_server, {"table": table, "mode": "replace"}, run_id=run, task_id="t")
    MySQLWriter(ctx).write(RowStream(_people(3).to_batches(), _people(3).schema))
    # Rewind the state row to the moment after the RENAME and before the finished mark.
    mysql_server.execute(
        f"UPDATE {STATE_TABLE} SET finished = 0, phase = 'publishing' WHERE target_table = %s",
        (f"{mysql_server.database}.{table}",),
    )
    with pytest.raises(AlreadyFinished):
        MySQLWriter(
            make_ctx(mysql_server, {"table": table, "mode": "replace"}, run_id=run, task_id="t")
        ).begin(None)
    assert _content(mysql_server, table) == [(1, "p1"), (2, "p2"), (3, "p3")]


def test_writer_errors_are_clear(mysql_server: MySQLServer) -> None:
    table = _target(mysql_server)
    with pytest.raises(TerminalError, match="does not exist; create it, or set create_table: true"):
        write(mysql_server, _people(1), table=unique("missing"))
    with pytest.raises(TerminalError, match=r"column\(s\) \['extra'\] are not in table"):
        write(mysql_server, _people(1).append_column("extra", pa.array([1])), table=table)
    with pytest.raises(TerminalError, match="mode replace needs one writer task"):
        MySQLWriter(make_ctx(mysql_server, {"table": table, "mode": "replace"}, partitions=2)).begin(None)
    with pytest.raises(TerminalError, match="NaN"):
        write(
            mysql_server,
            pa.table({"id": [1], "name": ["x"], "note": pa.array([float("nan")])}),
            table=unique("n"),
            create_table=True,
        )
    ctx = make_ctx(mysql_server, {"table": table}, conn=connection(mysql_server, password=SECRET))
    with pytest.raises(MySQLTerminalError) as info:
        MySQLWriter(ctx).write(RowStream(_people(1).to_batches(), _people(1).schema))
    assert info.value.errno == 1045 and SECRET not in str(info.value)
    assert (
        check_writer({"connection": "@mysql.a", "table": "t", "upsert_keys": ["id"]})[0].field
        == "config.upsert_keys"
    )


def test_partitioned_read_appends_into_one_table(mysql_server: MySQLServer) -> None:
    src = unique("src")
    write(mysql_server, _people(3000), table=src, mode="replace", primary_key=["id"])
    dst = unique("dst")
    config = {"table": src, "partition": {"column": "id", "partitions": 3}, "chunk_rows": 400}
    for p in range(3):
        source = MySQLExtractor(make_ctx(mysql_server, config, partition=p, partitions=3))
        sink = MySQLWriter(
            make_ctx(
                mysql_server,
                {"table": dst, "create_table": True, "primary_key": ["id"]},
                task_id=f"s.p{p}",
                partition=p,
                partitions=3,
            )
        )
        copy_chunked(source, sink)
    assert read(mysql_server, query=f"SELECT * FROM {dst} ORDER BY id").equals(
        read(mysql_server, query=f"SELECT * FROM {src} ORDER BY id")
    )
