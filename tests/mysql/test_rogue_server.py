"""A run's connections are the client's to choose, so a client key can point a worker's mysql.writer
at a server of its own. Such a server may answer any query with a request for a local file (LOAD
DATA LOCAL): pymysql's own handler sends whatever file it names. The writer's connections send only
the file their own LOAD DATA statement names."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pymysql
import pytest

from osiris_flight.components.mysql.connection import connect
from osiris_flight.components.mysql.load_local import query_load_local
from tests.cluster.conftest import events, latest_run_dir, osiris
from tests.mysql.rogue_server import RogueMySQL


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "worker.key_secret"
    path.write_text("secret-key = 'ROGUE-MUST-NOT-READ-THIS'\n")
    return path


@pytest.fixture
def rogue(secret_file: Path) -> Iterator[RogueMySQL]:
    server = RogueMySQL(str(secret_file))
    yield server
    server.close()


def test_stock_pymysql_sends_the_file_a_rogue_server_names(rogue: RogueMySQL) -> None:
    """The attack itself, so that the tests below cannot pass for want of a working rogue server."""
    conn = pymysql.connect(host="127.0.0.1", port=rogue.port, user="u", password="p", local_infile=True)
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
    conn.close()
    assert b"ROGUE-MUST-NOT-READ-THIS" in rogue.received


def test_the_writers_connection_sends_no_file_the_server_names(rogue: RogueMySQL, tmp_path: Path) -> None:
    cfg = {"host": "127.0.0.1", "port": rogue.port, "user": "u", "password": "p", "database": "d"}
    with pytest.raises(RuntimeError, match="local_infile option is false"):
        connect(cfg, step_id="load", ref="@mysql.rogue", purpose="write", local_infile=True)
    assert rogue.requests == 1 and rogue.received == b""

    # Its own LOAD DATA: the server asks for another file than the statement names: nothing sent.
    conn = pymysql.connect(host="127.0.0.1", port=rogue.port, user="u", password="p", local_infile=True)
    ours = tmp_path / "mysql-load-1.tsv"
    ours.write_text("1\n")
    with pytest.raises(pymysql.err.OperationalError, match="other than the load's own"):
        query_load_local(conn, f"LOAD DATA LOCAL INFILE '{ours}' INTO TABLE t", str(ours))
    assert rogue.requests == 2 and rogue.received == b""
    conn.close()


def test_a_client_cannot_read_a_workers_file_through_its_own_mysql_server(
    rogue: RogueMySQL, tmp_path: Path
) -> None:
    (tmp_path / "in.csv").write_text("id\n1\n2\n")
    (tmp_path / "osiris_connections.yaml").write_text(
        "version: 1\nconnections:\n  mysql:\n    rogue:\n"
        f"      host: 127.0.0.1\n      port: {rogue.port}\n"
        "      database: d\n      user: u\n      password: p\n"
    )
    (tmp_path / "pipeline.yaml").write_text(
        'oml_version: "0.2.0"\nname: rogue\nsteps:\n'
        "  - id: read\n    component: filesystem.csv_extractor\n    mode: read\n    config: {path: in.csv}\n"
        "  - id: load\n    component: mysql.writer\n    mode: write\n    depends_on: [read]\n"
        '    config: {connection: "@mysql.rogue", table: t, mode: append, load_method: load_data}\n'
    )
    result = osiris(["run", "pipeline.yaml", "--workers", "1", "--json"], tmp_path)
    assert result.code == 1, result.stdout
    failed = [e for e in events(latest_run_dir(tmp_path)) if e["event"] == "task_failed"]  # type: ignore[arg-type]
    assert failed and all(e["step_id"] == "load" for e in failed)
    assert rogue.requests >= 1 and rogue.received == b""
