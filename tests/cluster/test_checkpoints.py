"""Chunked tasks commit chunk by chunk: a killed worker's retry and a --resume of a killed run both
continue after the last durable chunk, and every row ends up in the target exactly once."""

from __future__ import annotations

import os
import signal
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

pytestmark = pytest.mark.cluster

ROWS = 60_000

PIPELINE = f"""
oml_version: "0.2.0"
name: chunked
steps:
  - id: numbers
    component: chaos.sequence
    mode: read
    config: {{rows: {ROWS}, chunk_rows: 5000, delay_s: 0.25}}
  - id: evens
    component: transform.filter
    mode: transform
    depends_on: [numbers]
    config: {{where: "n % 2 = 0"}}
  - id: ledger
    component: chaos.ledger
    mode: write
    depends_on: [evens]
    config: {{path: out/evens.txt}}
"""


def checkpoints(run_dir: Path) -> list[dict]:
    return [e for e in events(run_dir) if e["event"] == "checkpoint"]


def assert_exactly_once(path: Path) -> None:
    values = [int(v) for v in path.read_text().split()]
    assert values == list(range(0, ROWS, 2))


def test_killed_worker_retry_continues_after_the_last_committed_chunk(workdir: Path) -> None:
    (workdir / "pipeline.yaml").write_text(PIPELINE)
    proc = start_osiris(["run", "pipeline.yaml", "--json", "--workers", "2"], workdir)
    try:
        run_dir = wait_until(lambda: latest_run_dir(workdir), 60, "the run directory")
        wait_until(lambda: len(checkpoints(run_dir)) >= 3, 60, "three committed chunks")
        start = next(e for e in events(run_dir) if e["event"] == "task_start")
        pid = wait_until(lambda: worker_pid(proc.pid, start["worker_id"]), 10, "the worker's pid")
        os.kill(pid, signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert_exactly_once(workdir / "out/evens.txt")
    starts = [e for e in events(run_dir) if e["event"] == "sequence_start"]
    assert starts[0]["start"] == 0
    assert starts[-1]["start"] >= 15_000  # the retry skipped the committed chunks
    assert_no_orphans(workdir)


def test_resume_of_a_killed_run_continues_after_the_last_committed_chunk(workdir: Path) -> None:
    (workdir / "pipeline.yaml").write_text(PIPELINE)
    proc = start_osiris(["run", "pipeline.yaml", "--json", "--workers", "1"], workdir)
    try:
        run_dir = wait_until(lambda: latest_run_dir(workdir), 60, "the run directory")
        wait_until(lambda: len(checkpoints(run_dir)) >= 4, 60, "four committed chunks")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert_no_orphans(workdir)
    assert not (workdir / "out/evens.txt").exists()
    committed = len(checkpoints(run_dir))

    result = osiris(["run", "--resume", run_dir.name.rsplit("_", 1)[-1], "--json"], workdir)
    assert result.code == 0, result.stderr
    assert_exactly_once(workdir / "out/evens.txt")
    starts = [e for e in events(run_dir) if e["event"] == "sequence_start"]
    assert starts[-1]["start"] >= committed * 5000 - 5000
    assert starts[-1]["start"] > 0
    assert_no_orphans(workdir)
