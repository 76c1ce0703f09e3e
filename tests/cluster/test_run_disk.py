"""A run directory that fails under a shared coordinator (disk full, read-only) fails that run only.

The coordinator daemon serves two clients; one client's run_logs is on a tiny tmpfs mounted by the
test. That run fails with the file and the system's error; the other run succeeds and the
coordinator keeps serving.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from osiris_flight.cluster.client import Client
from tests.cluster.conftest import (
    events,
    read_csv,
    same_rows,
    start_osiris,
    wait_until,
    write_events_csv,
)
from tests.cluster.test_daemons import Daemons

pytestmark = pytest.mark.cluster

ENGINE = "  heartbeat_interval_s: 0.5\n  heartbeat_misses: 20\n  batch_rows: 4096\n"


def pipeline(name: str, hold: Path, out: str) -> str:
    return f"""
oml_version: "0.2.0"
name: {name}
steps:
  - id: extract
    component: filesystem.csv_extractor
    mode: read
    config: {{path: events.csv}}
  - id: held
    component: chaos.slow
    mode: transform
    depends_on: [extract]
    config: {{delay_s: 0, hold_until: {hold}}}
  - id: write
    component: filesystem.csv_writer
    mode: write
    depends_on: [held]
    config: {{path: {out}}}
"""


@contextlib.contextmanager
def tmpfs(path: Path, size: str = "256k") -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(directory: Path) -> None:
    """Write a file until the filesystem has no space left."""
    with (directory / "filler").open("wb", buffering=0) as fh, contextlib.suppress(OSError):
        while True:
            fh.write(b"x" * 4096)


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Daemons]:
    cluster = Daemons(tmp_path)
    yield cluster
    cluster.stop()


def run_dir_of(root: Path) -> Path | None:
    dirs = sorted(root.glob("*/*_*"))
    return dirs[-1] if dirs else None


def started(run_dir: Path) -> bool:
    return any(e["event"] == "task_start" for e in events(run_dir))


def test_a_full_run_logs_disk_fails_that_run_only(tmp_path: Path, daemons: Daemons) -> None:
    table = write_events_csv(tmp_path / "events.csv", 20_000)
    (tmp_path / "full.yaml").write_text(pipeline("on_full_disk", tmp_path / "go_full", "out/full.csv"))
    (tmp_path / "fine.yaml").write_text(pipeline("on_good_disk", tmp_path / "go_fine", "out/fine.csv"))
    daemons.start(("alpha", "beta"), ENGINE)
    with tmpfs(tmp_path / "small") as small:
        full = start_osiris(
            ["run", "full.yaml", "--cluster", daemons.address, "--run-logs", str(small), "--json"], tmp_path
        )
        fine = start_osiris(
            ["run", "fine.yaml", "--cluster", daemons.address, "--run-logs", "good_logs", "--json"], tmp_path
        )
        try:
            full_dir = wait_until(lambda: run_dir_of(small), 60, "the first run's directory")
            fine_dir = wait_until(
                lambda: run_dir_of(tmp_path / "good_logs"), 60, "the second run's directory"
            )
            wait_until(lambda: started(full_dir) and started(fine_dir), 60, "both tasks to start")
            fill(small)
            (tmp_path / "go_full").touch()
            out, err = full.communicate(timeout=120)
            assert full.returncode == 1, err
            result = json.loads(out)
            assert result["status"] == "failed"
            assert result["error"].startswith("run directory failed: cannot write " + str(full_dir))
            assert "No space left on device (ENOSPC)" in result["error"]
            assert daemons.processes[0].poll() is None  # the coordinator is still up
            assert fine.poll() is None  # ... and the other run still going
            (tmp_path / "go_fine").touch()
            out, err = fine.communicate(timeout=120)
        finally:
            for proc in (full, fine):
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    assert fine.returncode == 0, err
    assert json.loads(out)["status"] == "success"
    assert same_rows(read_csv(tmp_path / "out/fine.csv"), table)
    status = json.loads((fine_dir / "status.json").read_text())
    assert status["status"] == "success"
    assert daemons.processes[0].poll() is None
    with Client(daemons.address) as client:
        assert len(client.wait_for_workers(2, timeout_s=30).workers) == 2


def test_run_logs_turned_read_only_fail_the_run_with_the_reason(tmp_path: Path, daemons: Daemons) -> None:
    table = write_events_csv(tmp_path / "events.csv", 2_000)
    (tmp_path / "p.yaml").write_text(pipeline("read_only", tmp_path / "go", "out/copy.csv"))
    daemons.start(("alpha", "beta"), ENGINE)
    logs = tmp_path / "logs"
    logs.mkdir()
    held = start_osiris(
        ["run", "p.yaml", "--cluster", daemons.address, "--run-logs", str(logs), "--json"], tmp_path
    )
    try:
        run_dir = wait_until(lambda: run_dir_of(logs), 60, "the run directory")
        wait_until(lambda: started(run_dir), 60, "the task to start")
        # The directory turns read-only under the running run (a bind mount over itself, read-only).
        subprocess.run(["mount", "--bind", str(logs), str(logs)], check=True)
        try:
            subprocess.run(["mount", "-o", "remount,bind,ro", str(logs)], check=True)
            (tmp_path / "go").touch()
            out, err = held.communicate(timeout=120)
            assert held.returncode == 1, err
            error = json.loads(out)["error"]
            assert error.startswith("run directory failed: cannot write " + str(run_dir)), error
            assert "Read-only file system (EROFS)" in error
            # A run started on the read-only directory fails at once, saying where and why.
            refused = start_osiris(
                ["run", "p.yaml", "--cluster", daemons.address, "--run-logs", str(logs), "--json"], tmp_path
            )
            out, err = refused.communicate(timeout=120)
            assert refused.returncode == 1, err
            error = json.loads(out)["error"]
            assert str(logs) in error and "Read-only file system" in error
        finally:
            subprocess.run(["umount", "-l", str(logs)], check=False)
    finally:
        if held.poll() is None:
            held.kill()
            held.wait()
    assert daemons.processes[0].poll() is None
    ok = start_osiris(["run", "p.yaml", "--cluster", daemons.address, "--json"], tmp_path)
    out, err = ok.communicate(timeout=120)
    assert ok.returncode == 0, err
    assert same_rows(read_csv(tmp_path / "out/copy.csv"), table)
