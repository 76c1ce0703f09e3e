"""MySQL through the whole engine (real coordinator, workers, MariaDB): a mysql.extractor ->
mysql.writer copy survives a SIGKILLed worker, a server-side KILL of its connection, and a killed
run resumed with --resume, and the target always ends with every row exactly once."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.cluster.conftest import (
    assert_no_orphans,
    events,
    latest_run_dir,
    osiris,
    start_osiris,
    wait_until,
    worker_pid,
)
from tests.mysql.conftest import MySQLServer
from tests.mysql.helpers import rows, unique

pytestmark = pytest.mark.cluster

ROWS = 60_000


def source_table(server: MySQLServer) -> str:
    name = unique("src")
    server.execute(
        f"CREATE TABLE {name} (id BIGINT PRIMARY KEY, amount DECIMAL(12,2), label VARCHAR(20) NULL, "
        "at DATETIME(6))"
    )
    server.execute(
        f"INSERT INTO {name} SELECT seq, seq * 1.25, IF(seq % 7 = 0, NULL, CONCAT('r', seq)), "
        f"'2026-01-01' + INTERVAL seq SECOND FROM seq_1_to_{ROWS}"
    )
    return name


def pipeline(src: str, dst: str, delay_s: float) -> str:
    return f"""
oml_version: "0.1.0"
name: mysql_copy
steps:
  - id: extract
    component: mysql.extractor
    mode: read
    config: {{connection: "@mysql.test", table: {src}, chunk_rows: 5000, batch_size: 2500}}
  - id: pace
    component: chaos.slow
    mode: transform
    config: {{delay_s: {delay_s}}}
  - id: load
    component: mysql.writer
    mode: write
    config: {{connection: "@mysql.test", table: {dst}, mode: replace, create_table: true}}
"""


def setup(tmp_path: Path, server: MySQLServer, delay_s: float) -> tuple[str, str]:
    src, dst = source_table(server), unique("dst")
    server.connections_yaml(tmp_path / "osiris_connections.yaml")
    (tmp_path / "pipeline.yaml").write_text(pipeline(src, dst, delay_s))
    return src, dst


def assert_exact_copy(server: MySQLServer, src: str, dst: str) -> None:
    assert rows(server, f"SELECT COUNT(*), COUNT(DISTINCT id) FROM {dst}") == [(ROWS, ROWS)]
    differing = rows(
        server,
        f"SELECT COUNT(*) FROM {src} s JOIN {dst} d ON s.id = d.id "
        "WHERE NOT (s.amount <=> d.amount AND s.label <=> d.label AND s.at <=> d.at)",
    )
    assert differing == [(0,)]


def checkpoints(run_dir: Path) -> int:
    return sum(e["event"] == "checkpoint" for e in events(run_dir))


def test_sigkilled_worker_mid_copy_leaves_every_row_exactly_once(
    tmp_path: Path, mysql_server: MySQLServer
) -> None:
    src, dst = setup(tmp_path, mysql_server, delay_s=0.15)
    proc = start_osiris(["run", "pipeline.yaml", "--json", "--workers", "2"], tmp_path)
    try:
        run_dir = wait_until(lambda: latest_run_dir(tmp_path), 60, "the run directory")
        wait_until(lambda: checkpoints(run_dir) >= 2, 90, "two committed chunks")
        start = next(e for e in events(run_dir) if e["event"] == "task_start")
        os.kill(wait_until(lambda: worker_pid(proc.pid, start["worker_id"]), 10, "pid"), signal.SIGKILL)
        _, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert_exact_copy(mysql_server, src, dst)
    starts = [e for e in events(run_dir) if e["event"] == "task_start"]
    assert len(starts) == 2 and starts[1]["worker_id"] != start["worker_id"]
    assert_no_orphans(tmp_path)


def test_server_side_kill_of_the_extract_connection_is_survived(
    tmp_path: Path, mysql_server: MySQLServer
) -> None:
    src, dst = setup(tmp_path, mysql_server, delay_s=0.1)
    proc = start_osiris(["run", "pipeline.yaml", "--json", "--workers", "1"], tmp_path)
    try:
        run_dir = wait_until(lambda: latest_run_dir(tmp_path), 60, "the run directory")
        wait_until(lambda: checkpoints(run_dir) >= 1, 90, "a committed chunk")

        def extract_connection() -> int | None:
            found = [e for e in events(run_dir) if e["event"] == "mysql_connected" and e["step"] == "extract"]
            return int(found[-1]["connection_id"]) if found else None

        victim = wait_until(extract_connection, 30, "the extractor's connection")
        mysql_server.execute(f"KILL {victim}")
        time.sleep(0.2)
        _, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert_exact_copy(mysql_server, src, dst)
    assert any(e["event"] == "mysql_retry" for e in events(run_dir)), "the extractor reconnected in-task"
    assert_no_orphans(tmp_path)


def test_resume_of_a_killed_copy_continues_after_the_last_committed_chunk(
    tmp_path: Path, mysql_server: MySQLServer
) -> None:
    src, dst = setup(tmp_path, mysql_server, delay_s=0.15)
    proc = start_osiris(["run", "pipeline.yaml", "--json", "--workers", "1"], tmp_path)
    try:
        run_dir = wait_until(lambda: latest_run_dir(tmp_path), 60, "the run directory")
        wait_until(lambda: checkpoints(run_dir) >= 3, 90, "three committed chunks")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert_no_orphans(tmp_path)
    result = osiris(["run", "--resume", run_dir.name.rsplit("_", 1)[-1], "--json"], tmp_path, timeout=300)
    assert result.code == 0, result.stderr
    assert_exact_copy(mysql_server, src, dst)
    read_after_resume = [
        e for e in events(run_dir) if e["event"] == "task_complete" and "extract" in e["steps"]
    ][-1]["steps"]["extract"]["rows"]
    assert read_after_resume <= ROWS - 3 * 5000  # it did not start from zero
    assert_no_orphans(tmp_path)


LOAD_ROWS = 600_000
LOAD_PIPELINE = """
oml_version: "0.2.0"
name: csv_to_mysql
steps:
  - id: extract
    component: filesystem.csv_extractor
    mode: read
    config: {{path: wide.csv}}
  - id: load
    component: mysql.writer
    mode: write
    depends_on: [extract]
    config: {{connection: "@mysql.test", table: {dst}, mode: replace, create_table: true, batch_size: 300000}}
"""


def _kill_during_load_data(server: MySQLServer, run_dir: Path) -> int:
    """KILL the writer's connection (from its mysql_connected event) while it runs LOAD DATA."""
    admin = server.connect()
    try:
        deadline = time.monotonic() + 120
        with admin.cursor() as cur:
            while time.monotonic() < deadline:
                found = [e for e in events(run_dir) if e["event"] == "mysql_connected"]
                if found:
                    victim = int(found[-1]["connection_id"])
                    cur.execute("SELECT INFO FROM information_schema.PROCESSLIST WHERE ID = %s", (victim,))
                    info = cur.fetchone()
                    if info and str(info[0] or "").startswith("LOAD DATA LOCAL INFILE"):
                        cur.execute(f"KILL {victim}")
                        return victim
                time.sleep(0.002)
    finally:
        admin.close()
    raise AssertionError("the writer's connection was never seen running LOAD DATA")


def test_server_side_kill_during_load_data_is_a_prompt_transient_retry(
    tmp_path: Path, mysql_server: MySQLServer
) -> None:
    """pymysql blocked ~105 s in sendall after the KILL, then raised AttributeError from its finally
    (a terminal failure). The upload now ends at the KILL, as a lost connection (2013, from the
    server's end-of-file, not a send timeout), and the engine retries it."""
    dst = unique("loaded")
    mysql_server.connections_yaml(tmp_path / "osiris_connections.yaml")
    (tmp_path / "osiris.yaml").write_text("engine:\n  batch_rows: 300000\n")
    (tmp_path / "pipeline.yaml").write_text(LOAD_PIPELINE.format(dst=dst))
    with (tmp_path / "wide.csv").open("w") as fh:
        fh.write("id,label\n")
        fh.writelines(f"{i},row-{i}-{'x' * 60}\n" for i in range(LOAD_ROWS))
    proc = start_osiris(["run", "pipeline.yaml", "--json", "--workers", "1"], tmp_path)
    try:
        run_dir = wait_until(lambda: latest_run_dir(tmp_path), 60, "the run directory")
        victim = _kill_during_load_data(mysql_server, run_dir)
        _, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    failed = [e for e in events(run_dir) if e["event"] == "task_failed"]
    assert len(failed) == 1 and failed[0]["transient"], failed
    assert "MySQL error 2013" in failed[0]["error"] or "MySQL error 2006" in failed[0]["error"], failed[0]
    retry = [e for e in events(run_dir) if e["event"] == "task_retry"]
    assert len(retry) == 1 and retry[0]["counted"]
    connected = [e for e in events(run_dir) if e["event"] == "mysql_connected" and e["step"] == "load"]
    assert int(connected[0]["connection_id"]) == victim and len(connected) == 2
    assert rows(mysql_server, f"SELECT COUNT(*), COUNT(DISTINCT id), MIN(id), MAX(id) FROM {dst}") == [
        (LOAD_ROWS, LOAD_ROWS, 0, LOAD_ROWS - 1)
    ]
    assert_no_orphans(tmp_path)
