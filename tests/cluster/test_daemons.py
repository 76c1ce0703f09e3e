"""The two daemons started on their own (as on separate hosts), a run submitted with --cluster, and a
worker that stops answering: only missed heartbeats can tell the coordinator it is gone."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from osiris_flight.cluster.client import Client
from tests.cluster.conftest import (
    cli_env,
    events,
    latest_run_dir,
    read_csv,
    same_rows,
    start_coordinator,
    start_osiris,
    wait_until,
    write_events_csv,
)

pytestmark = pytest.mark.cluster
BIN = Path(sys.executable).parent

PIPELINE = """
oml_version: "0.2.0"
name: paused_worker
steps:
  - id: extract
    component: filesystem.csv_extractor
    mode: read
    config: {path: events.csv}
  - id: slow
    component: chaos.slow
    mode: transform
    depends_on: [extract]
    config: {delay_s: 0.3}
  - id: write
    component: filesystem.csv_writer
    mode: write
    depends_on: [slow]
    config: {path: out/copy.csv}
"""


@dataclass
class Daemons:
    """A coordinator and workers started as the daemons (as on separate hosts), all on loopback."""

    cwd: Path
    address: str = ""
    processes: list[subprocess.Popen[Any]] = field(default_factory=list)
    pids: dict[str, int] = field(default_factory=dict)

    def start(self, workers: tuple[str, ...], engine: str) -> None:
        (self.cwd / "osiris.yaml").write_text("engine:\n" + engine)
        coordinator, self.address = start_coordinator(self.cwd, "--config", "osiris.yaml")
        self.processes.append(coordinator)
        for name in workers:
            worker = subprocess.Popen(
                [
                    str(BIN / "osiris-worker"),
                    "--config",
                    "osiris.yaml",
                    "--coordinator",
                    self.address,
                    "--worker-id",
                    name,
                    "--slots",
                    "1",
                ],
                cwd=self.cwd,
                env=cli_env(),
            )
            self.processes.append(worker)
            self.pids[name] = worker.pid
        with Client(self.address) as client:
            status = client.wait_for_workers(len(workers), timeout_s=60)
        assert sorted(w["worker_id"] for w in status.workers) == sorted(workers)

    def stop(self) -> None:
        for pid in self.pids.values():  # a SIGSTOPped worker must be able to take the SIGTERM
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        for d in self.processes:
            d.terminate()
        for d in self.processes:
            try:
                d.wait(timeout=15)
            except subprocess.TimeoutExpired:
                d.kill()
                d.wait()


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Daemons]:
    cluster = Daemons(tmp_path)
    yield cluster
    cluster.stop()


# Heartbeats every 0.5 s, dead after 2 s of silence: short for the test, long enough for a loaded
# machine (a healthy worker starved past 2 s may be declared dead too; it then rejoins).
ENGINE = "  heartbeat_interval_s: 0.5\n  heartbeat_misses: 4\n  batch_rows: 4096\n"


def test_worker_that_misses_heartbeats_is_declared_dead_and_its_task_reruns(
    tmp_path: Path, daemons: Daemons
) -> None:
    table = write_events_csv(tmp_path / "events.csv", 50_000)
    (tmp_path / "pipeline.yaml").write_text(PIPELINE)
    daemons.start(("alpha", "beta"), ENGINE)
    proc = start_osiris(["run", "pipeline.yaml", "--cluster", daemons.address, "--json"], tmp_path)
    try:
        run_dir = wait_until(lambda: latest_run_dir(tmp_path), 60, "the run directory")
        start = wait_until(
            lambda: next((e for e in events(run_dir) if e["event"] == "task_start"), None),
            60,
            "the task to start",
        )
        os.kill(daemons.pids[start["worker_id"]], signal.SIGSTOP)  # alive, but silent: no exit to notice
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    evs = events(run_dir)
    lost = {e["worker_id"]: e for e in evs if e["event"] == "worker_lost"}
    assert "missed 4 heartbeats" in lost[start["worker_id"]]["reason"]
    starts = [e for e in evs if e["event"] == "task_start"]
    assert starts[-1]["worker_id"] != start["worker_id"]
    assert same_rows(read_csv(tmp_path / "out/copy.csv"), table)


STREAMED = """
oml_version: "0.2.0"
name: killed_producer  # the fan-out makes extract a task of its own, read over Flight
steps:
  - id: extract
    component: filesystem.csv_extractor
    mode: read
    config: {path: events.csv}
  - id: slow
    component: chaos.slow
    mode: transform
    depends_on: [extract]
    config: {delay_s: 0.05}
  - id: write
    component: filesystem.csv_writer
    mode: write
    depends_on: [slow]
    config: {path: out/copy.csv}
  - id: quick
    component: filesystem.csv_writer
    mode: write
    depends_on: [extract]
    config: {path: out/quick.csv}
"""


def test_a_killed_producer_is_waited_for_not_counted_against_its_reader(
    tmp_path: Path, daemons: Daemons
) -> None:
    """The worker holding a finished output is SIGKILLed while another reads it over Flight. The
    reader's stream breaks at once, seconds before missed heartbeats declare the worker dead: its
    lost-input retries must not use up its attempts (max_attempts 1 here), and once the loss is
    declared the output is recomputed and the run ends with every row."""
    # ~16 MB as Arrow: far more than the reader's Flight receive window (4 MiB), so its stream is
    # still open when the producer's worker dies.
    table = write_events_csv(tmp_path / "events.csv", 400_000)
    (tmp_path / "pipeline.yaml").write_text(STREAMED)
    daemons.start(("alpha", "beta"), ENGINE + "  max_attempts: 1\n")
    proc = start_osiris(["run", "pipeline.yaml", "--cluster", daemons.address, "--json"], tmp_path)
    try:
        run_dir = wait_until(lambda: latest_run_dir(tmp_path), 60, "the run directory")

        def extract_done() -> dict | None:
            return next(
                (e for e in events(run_dir) if e["event"] == "task_complete" and "extract" in e["steps"]),
                None,
            )

        done = wait_until(extract_done, 60, "the extract to finish")
        os.kill(daemons.pids[done["worker_id"]], signal.SIGKILL)
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out + err
    evs = events(run_dir)
    assert done["task_id"] in {e["task_id"] for e in evs if e["event"] == "task_recompute"}
    assert not any(e["event"] == "task_retry" and e["counted"] for e in evs)
    for name in ("copy.csv", "quick.csv"):
        assert same_rows(read_csv(tmp_path / "out" / name), table), name


def test_bad_addresses_are_clear_errors(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        coordinator = subprocess.run(
            [str(BIN / "osiris-coordinator"), "--bind", f"tcp://127.0.0.1:{port}", "--insecure"],
            cwd=tmp_path,
            env=cli_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert coordinator.returncode == 2
    assert "cannot listen on" in coordinator.stderr and "Address already in use" in coordinator.stderr
    worker = subprocess.run(
        [str(BIN / "osiris-worker"), "--coordinator", "tpc://127.0.0.1:5555"],
        cwd=tmp_path,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert worker.returncode == 2 and "cannot connect to coordinator tpc://127.0.0.1:5555" in worker.stderr
    assert "Traceback" not in coordinator.stderr + worker.stderr
