"""Whole-cluster fixtures: real `osiris-flight` processes, a real coordinator and real workers."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from osiris_flight.cluster.curve import CurveKeys
from osiris_flight.runs.rundir import read_jsonl

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["OSIRIS_FLIGHT_PLUGINS"] = "tests.chaos,tests.osiris_plugin"
    for name in ("OSIRIS_CONNECTIONS_FILE", "OSIRIS_HOME", "OSIRIS_FILESYSTEM_BASE"):  # set by tests only
        env.pop(name, None)
    return env


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


def osiris(args: list[str], cwd: Path, timeout: float = 180) -> Result:
    proc = subprocess.run(
        [str(BIN / "osiris-flight"), *args],
        cwd=cwd,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def start_coordinator(cwd: Path, *flags: str) -> tuple[subprocess.Popen[str], str]:
    """An osiris-coordinator daemon on a free loopback port (``--announce``): the process, its address.
    ``--insecure``: without CURVE keys (in ``flags`` or its osiris.yaml) any local user could use it;
    these tests' daemons are theirs alone."""
    proc = subprocess.Popen(
        [str(BIN / "osiris-coordinator"), "--bind", "tcp://127.0.0.1:*", "--announce", "--insecure", *flags],
        cwd=cwd,
        env=cli_env(),
        text=True,
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    return proc, proc.stdout.readline().split()[1]


def start_osiris(args: list[str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(BIN / "osiris-flight"), *args],
        cwd=cwd,
        env=cli_env(),
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def events(run_dir: Path) -> list[dict[str, Any]]:
    """The run's events so far (a torn last line of a run still writing is left for the next read)."""
    path = run_dir / "events.jsonl"
    if not path.exists():
        return []
    return [record for _, record in read_jsonl(path) if record is not None]


def latest_run_dir(root: Path) -> Path | None:
    dirs = sorted(root.glob("run_logs/*/*_*"))
    return dirs[-1] if dirs else None


def wait_until(predicate: Callable[[], Any], timeout: float = 60, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def worker_pid(cli_pid: int, worker_id: str) -> int | None:
    """PID of the local worker with this id, under the CLI's process tree."""
    try:
        for proc in psutil.Process(cli_pid).children(recursive=True):
            try:
                cmd = proc.cmdline()
            except psutil.Error:
                continue
            if "--worker-id" in cmd and cmd[cmd.index("--worker-id") + 1] == worker_id:
                return proc.pid
    except psutil.NoSuchProcess:
        return None
    return None


def engine_processes(cwd: Path | None = None) -> list[psutil.Process]:
    """Coordinator and worker processes (of runs started in ``cwd``, when given)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info.get("cmdline") or []
        if not any("osiris_flight.cli.daemons" in part for part in cmd) or proc.pid == os.getpid():
            continue
        try:
            if cwd is not None and not proc.cwd().startswith(str(cwd)):
                continue
        except psutil.Error:
            continue
        found.append(proc)
    return found


def assert_no_orphans(cwd: Path, timeout: float = 15) -> None:
    def gone() -> bool:
        alive = []
        for proc in engine_processes(cwd):
            try:
                if proc.status() != psutil.STATUS_ZOMBIE:
                    alive.append(proc)
            except psutil.Error:
                pass
        return not alive

    wait_until(gone, timeout, "engine processes to exit")


def write_events_csv(path: Path, rows: int, seed: int = 7) -> pa.Table:
    rng = np.random.default_rng(seed)
    table = pa.table(
        {
            "event_id": np.arange(rows, dtype=np.int64),
            "user_id": rng.integers(1, 5000, rows),
            "product_id": rng.integers(1, 300, rows),
            "day": rng.integers(1, 31, rows),
            "revenue": np.round(rng.gamma(2.0, 20.0, rows), 2),
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    pacsv.write_csv(table, path)
    return table


def read_csv(path: Path) -> pa.Table:
    return pacsv.read_csv(path)


def same_rows(got: pa.Table, want: pa.Table, key: str = "event_id") -> bool:
    """Same rows and columns, whatever the column order (CSV writers sort columns, as Osiris does)."""
    return bool(got.select(want.column_names).sort_by(key).equals(want.sort_by(key)))


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
    for proc in engine_processes(tmp_path):
        with contextlib.suppress(psutil.Error):
            proc.send_signal(signal.SIGKILL)


@pytest.fixture
def daemons() -> Iterator[list[subprocess.Popen[Any]]]:
    """Daemon processes a test starts (append them): stopped, the last started first, at its end."""
    started: list[subprocess.Popen[Any]] = []
    yield started
    for proc in reversed(started):
        proc.terminate()
    for proc in started:
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def curve(keys: Path, name: str) -> CurveKeys:
    """The CURVE keys of ``name`` in a ``keys cluster`` directory, as a client or worker holds them."""
    return CurveKeys(str(keys / f"{name}.key_secret"), server_key=str(keys / "coordinator.key"))
