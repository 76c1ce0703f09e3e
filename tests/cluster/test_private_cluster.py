"""The embedded cluster is private to its user (issue 8, finding 3): its coordinator and workers
listen only on Unix sockets in a 0700 directory, so another local user (``nobody``, for real) can
neither list nor connect to them while root's run with a MySQL password is held mid-run; no inet
port is listened on; the directory goes when the cluster stops, and one left by a SIGKILLed run
goes at the next embedded start, while a live one stays."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import psutil
import pytest

from osiris_flight.cluster import private_dir
from osiris_flight.cluster.local import LocalCluster
from osiris_flight.config import Config, EngineConfig
from tests.cluster.conftest import (
    assert_no_orphans,
    events,
    latest_run_dir,
    osiris,
    read_csv,
    start_osiris,
    wait_until,
    write_events_csv,
)
from tests.mysql.conftest import MySQLServer, mysql_server  # noqa: F401 (the fixture)

pytestmark = pytest.mark.cluster

STRANGER = Path(__file__).with_name("local_stranger.py")
SYSTEM_PYTHON = "/usr/bin/python3"  # nobody cannot run the venv's python (it lives under /root)


def inet_listeners(pids: list[int]) -> list[Any]:
    found = []
    for pid in pids:
        found += [
            c for c in psutil.Process(pid).net_connections(kind="inet") if c.status == psutil.CONN_LISTEN
        ]
    return found


def engine_tree(cli_pid: int) -> list[psutil.Process]:
    return [
        p
        for p in psutil.Process(cli_pid).children(recursive=True)
        if "osiris_flight.cli.daemons" in p.cmdline()
    ]


def private_dir_of(cli_pid: int) -> Path | None:
    for proc in engine_tree(cli_pid):
        cmd = proc.cmdline()
        if "--private-dir" in cmd:
            return Path(cmd[cmd.index("--private-dir") + 1])
    return None


def as_nobody(argv: list[str]) -> list[str]:
    setpriv = shutil.which("setpriv")
    if setpriv:
        return [setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups", *argv]
    runuser = shutil.which("runuser")
    assert runuser, "this test needs setpriv or runuser to act as another local user"
    return [runuser, "-u", "nobody", "--", *argv]


def probe(told: dict[str, list[str]], *, stranger: bool) -> tuple[dict[str, Any], str]:
    """Run local_stranger.py (as nobody when ``stranger``, else as root); its result and raw output."""
    argv = [SYSTEM_PYTHON, str(STRANGER), json.dumps(told)]
    proc = subprocess.run(
        as_nobody(argv) if stranger else argv, cwd="/", capture_output=True, text=True, timeout=60, env={}
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout), proc.stdout + proc.stderr


def test_the_embedded_cluster_listens_on_no_inet_port_and_its_sockets_are_its_users_alone() -> None:
    cluster = LocalCluster(Config(engine=EngineConfig(workers=2, slots_per_worker=1)))
    cluster.start()
    try:
        assert cluster.process is not None
        directory = cluster.directory
        assert directory is not None and cluster.address == f"ipc://{directory}/control.sock"
        pids = [cluster.process.pid, *cluster.worker_pids()]
        assert len(pids) == 3
        assert inet_listeners(pids) == []
        assert [
            c for pid in pids for c in psutil.Process(pid).net_connections(kind="inet")
        ] == []  # none at all
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700 and directory.stat().st_uid == os.geteuid()
        names = sorted(p.name for p in directory.iterdir())
        assert names == ["control.sock", "flight-local-0.sock", "flight-local-1.sock", "owner"]
        for path in directory.iterdir():
            assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path  # made under umask 077
        unix = {c.laddr for pid in pids for c in psutil.Process(pid).net_connections(kind="unix")}
        assert {str(directory / n) for n in names if n.endswith(".sock")} <= unix
    finally:
        cluster.stop()
    assert not directory.exists()


PIPELINE = """
oml_version: "0.2.0"
name: private_run
steps:
  - id: extract
    component: mysql.extractor
    mode: read
    config: {{connection: "@mysql.priv", table: {table}}}
  - id: hold
    component: chaos.slow
    mode: transform
    depends_on: [extract]
    config: {{delay_s: 0, hold_until: "{release}"}}
  - id: write
    component: filesystem.csv_writer
    mode: write
    depends_on: [hold]
    config: {{path: out/rows.csv}}
"""


def test_another_local_user_can_neither_list_nor_connect_nor_learn_roots_mysql_password(
    workdir: Path,
    mysql_server: MySQLServer,  # noqa: F811
) -> None:
    assert os.geteuid() == 0, "root runs the cluster here, as in the issue"
    assert Path(SYSTEM_PYTHON).exists(), f"{SYSTEM_PYTHON} runs the stranger's standard-library script"
    password = "Pw-" + secrets.token_hex(12)
    user, table = f"priv_{secrets.token_hex(4)}", f"t_{secrets.token_hex(4)}"
    mysql_server.execute(f"CREATE TABLE {table} (id BIGINT PRIMARY KEY, v VARCHAR(20))")
    mysql_server.execute(f"INSERT INTO {table} SELECT seq, CONCAT('v', seq) FROM seq_1_to_500")
    mysql_server.execute(f"CREATE USER '{user}'@'%' IDENTIFIED BY '{password}'")
    try:
        mysql_server.execute(f"GRANT SELECT ON `{mysql_server.database}`.* TO '{user}'@'%'")
        (workdir / "osiris_connections.yaml").write_text(
            "version: 1\nconnections:\n  mysql:\n    priv:\n"
            f"      host: {mysql_server.host}\n      port: {mysql_server.port}\n"
            f"      database: {mysql_server.database}\n      user: {user}\n      password: {password}\n"
        )
        release = workdir / "release"
        (workdir / "pipeline.yaml").write_text(textwrap.dedent(PIPELINE.format(table=table, release=release)))
        proc = start_osiris(["run", "pipeline.yaml", "--json", "--workers", "2"], workdir)
        try:
            run_dir = wait_until(lambda: latest_run_dir(workdir), 60, "the run directory")
            wait_until(
                lambda: any(e["event"] == "task_start" and "hold" in e["steps"] for e in events(run_dir)),
                60,
                "the held step to start",
            )
            directory = wait_until(lambda: private_dir_of(proc.pid), 10, "the private directory")
            engine = engine_tree(proc.pid)
            assert len(engine) == 3 and inet_listeners([p.pid for p in engine]) == []
            told = {
                "dirs": [str(directory)],
                "sockets": [str(directory / "control.sock")]
                + [str(directory / f"flight-local-{i}.sock") for i in range(2)],
            }

            # The probe works: root (who can always) lists the directory and gets ZeroMQ's greeting.
            seen, _ = probe(told, stranger=False)
            assert seen["dirs"][str(directory)].startswith("ok: control.sock")
            assert seen["sockets"][str(directory / "control.sock")] == "ok"
            assert seen["received"][str(directory / "control.sock")].startswith("\xff")

            seen, raw = probe(told, stranger=True)
            assert seen["uid"] == 65534
            assert str(directory) in seen["dirs"]
            assert all(outcome == "EACCES" for outcome in seen["dirs"].values()), seen
            assert set(told["sockets"]) <= set(seen["sockets"])
            assert all(outcome == "EACCES" for outcome in seen["sockets"].values()), seen
            assert all(received == "" for received in seen["received"].values())
            assert password not in raw

            release.touch()
            out, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 0, err
        assert json.loads(out)["status"] == "success"
        assert read_csv(workdir / "out/rows.csv").num_rows == 500  # the password was real, and used
        assert_no_orphans(workdir)
        assert not directory.exists()
    finally:
        mysql_server.execute(f"DROP USER IF EXISTS '{user}'@'%'")


HELD = """
oml_version: "0.2.0"
name: held
steps:
  - id: extract
    component: filesystem.csv_extractor
    mode: read
    config: {{path: events.csv}}
  - id: hold
    component: chaos.slow
    mode: transform
    depends_on: [extract]
    config: {{delay_s: 0, hold_until: "{release}"}}
  - id: write
    component: filesystem.csv_writer
    mode: write
    depends_on: [hold]
    config: {{path: out/rows.csv}}
"""


def test_a_sigkilled_runs_directory_goes_at_the_next_start_and_a_live_runs_directory_stays(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Private directories go in a runtime directory of this test's own: an embedded run of anybody
    # else on the machine (same user) would otherwise clean up the orphan before this test looks.
    runtime = Path(tempfile.mkdtemp(prefix="xdg-"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    # A directory whose process lives: another embedded cluster of the same user, still running.
    # (Made first: making one removes the stale ones, which must be left to the run below.)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from osiris_flight.cluster import private_dir as d; print(d.make(), flush=True); input()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        live = Path(holder.stdout.readline().strip())
        assert live.exists()

        write_events_csv(workdir / "events.csv", 1_000)
        (workdir / "pipeline.yaml").write_text(textwrap.dedent(HELD.format(release=workdir / "never")))
        proc = start_osiris(["run", "pipeline.yaml", "--json", "--workers", "1"], workdir)
        try:
            orphan = wait_until(lambda: private_dir_of(proc.pid), 60, "the private directory")
            wait_until(lambda: (orphan / "control.sock").exists(), 60, "the control socket")
            proc.send_signal(signal.SIGKILL)  # the CLI cannot clean up after itself
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert_no_orphans(workdir)
        assert orphan.exists() and orphan.parent == live.parent  # left behind

        (workdir / "pipeline.yaml").write_text(textwrap.dedent(HELD.format(release=workdir / "events.csv")))
        result = osiris(["run", "pipeline.yaml", "--json", "--workers", "1"], workdir)
        assert result.code == 0, result.stderr
        assert not orphan.exists()
        assert live.exists()
    finally:
        holder.kill()
        holder.wait()
    assert live.parent == runtime  # the runtime directory was used, so the test was undisturbed
    assert live in private_dir.remove_stale(live.parent)
    assert not live.exists()
    shutil.rmtree(runtime, ignore_errors=True)


def test_ctrl_c_leaves_neither_a_process_nor_the_private_directory(workdir: Path) -> None:
    write_events_csv(workdir / "events.csv", 1_000)
    (workdir / "pipeline.yaml").write_text(textwrap.dedent(HELD.format(release=workdir / "never")))
    proc = start_osiris(["run", "pipeline.yaml", "--workers", "1"], workdir)
    try:
        directory = wait_until(lambda: private_dir_of(proc.pid), 60, "the private directory")
        run_dir = wait_until(lambda: latest_run_dir(workdir), 60, "the run directory")
        wait_until(lambda: any(e["event"] == "task_start" for e in events(run_dir)), 60, "a task to start")
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    assert_no_orphans(workdir)
    assert not directory.exists()


def test_stale_means_the_creating_process_is_gone_and_only_this_users_directories_are_removed(
    tmp_path: Path,
) -> None:
    mine = private_dir.make(tmp_path)
    assert stat.S_IMODE(mine.stat().st_mode) == 0o700
    assert not private_dir.is_stale(mine)

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    gone = tmp_path / f"{private_dir.PREFIX}{os.geteuid()}-{dead.pid}-abc"
    gone.mkdir(mode=0o700)
    # A recycled pid: this process's pid, but the owner file says another process made it.
    recycled = tmp_path / f"{private_dir.PREFIX}{os.geteuid()}-{os.getpid()}-def"
    recycled.mkdir(mode=0o700)
    (recycled / private_dir.OWNER_FILE).write_text(json.dumps({"pid": os.getpid(), "started": 1.0}))
    # Someone else's, with a dead pid in its name: not ours to remove.
    theirs = tmp_path / f"{private_dir.PREFIX}{os.geteuid()}-{dead.pid}-xyz"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, 65534, 65534)

    assert sorted(private_dir.remove_stale(tmp_path)) == sorted([gone, recycled])
    assert mine.exists() and theirs.exists() and not gone.exists() and not recycled.exists()


def test_xdg_runtime_dir_is_used_only_when_it_is_private_and_ours(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = Path(tempfile.mkdtemp(prefix="xdg-", dir="/tmp"))  # short: sockets go under it
    request.addfinalizer(lambda: shutil.rmtree(runtime))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    assert private_dir.base_dir() == runtime
    runtime.chmod(0o755)
    assert private_dir.base_dir() != runtime
    runtime.chmod(0o700)
    os.chown(runtime, 65534, 65534)
    assert private_dir.base_dir() != runtime
    monkeypatch.setenv("XDG_RUNTIME_DIR", "relative/path")
    assert private_dir.base_dir() != Path("relative/path")
