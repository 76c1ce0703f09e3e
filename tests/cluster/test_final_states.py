"""A run that fails or is cancelled ends with true step states: nothing stays "running" in
status.json or the summary while another branch was still at work."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from tests.cluster.conftest import events, latest_run_dir, start_osiris, wait_until, write_events_csv

pytestmark = pytest.mark.cluster


def pipeline(workdir: Path) -> None:
    """Two branches: 'gate' -> 'publish' fails once the gate opens ('publish' cannot rename its file
    over a directory); 'held' runs and never ends."""
    (workdir / "taken" / "dir").mkdir(parents=True)
    go, no = workdir / "go", workdir / "never"
    (workdir / "pipeline.yaml").write_text(
        f"""
oml_version: "0.2.0"
name: final_states
steps:
  - {{id: extract, component: filesystem.csv_extractor, mode: read, config: {{path: events.csv}}}}
  - {{id: gate, component: chaos.slow, mode: transform, depends_on: [extract], config: {{hold_until: {go}}}}}
  - id: publish
    component: chaos.ledger
    mode: write
    depends_on: [gate]
    config: {{path: {workdir / "taken"}}}
  - {{id: held, component: chaos.slow, mode: transform, depends_on: [extract], config: {{hold_until: {no}}}}}
  - {{id: out_held, component: filesystem.csv_writer, mode: write, depends_on: [held], config: {{path: c}}}}
"""
    )


def both_branches_running(run_dir: Path) -> bool:
    started = {e["step_id"] for e in events(run_dir) if e["event"] == "step_start"}
    return {"gate", "held"} <= started


def final_states(run_dir: Path) -> dict[str, str]:
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "failed"
    return {step: s["state"] for step, s in status["summary"]["steps"].items()}


def test_a_failed_run_leaves_no_step_running(workdir: Path) -> None:
    write_events_csv(workdir / "events.csv", 2_000)
    pipeline(workdir)
    proc = start_osiris(["run", "pipeline.yaml", "--workers", "5", "--json"], workdir)
    try:
        run_dir = wait_until(lambda: latest_run_dir(workdir), 60, "the run directory")
        wait_until(lambda: both_branches_running(run_dir), 60, "both branches to start")
        assert not any(e["event"] == "task_failed" for e in events(run_dir))
        (workdir / "go").touch()
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, err
    states = final_states(run_dir)
    assert states["publish"] == "failed" and states["gate"] == "cancelled", states
    assert states["held"] == "cancelled" and states["out_held"] == "cancelled", states
    assert "running" not in states.values() and "pending" not in states.values(), states
    assert (
        json.loads(out)["summary"]["steps"]
        == json.loads((run_dir / "status.json").read_text())["summary"]["steps"]
    )


def test_a_cancelled_run_leaves_no_step_running(workdir: Path) -> None:
    write_events_csv(workdir / "events.csv", 2_000)
    pipeline(workdir)
    proc = start_osiris(["run", "pipeline.yaml", "--workers", "5"], workdir)
    try:
        run_dir = wait_until(lambda: latest_run_dir(workdir), 60, "the run directory")
        wait_until(lambda: both_branches_running(run_dir), 60, "both branches to start")
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    states = final_states(run_dir)
    assert states["extract"] == "complete"
    assert set(states.values()) - {"complete"} == {"cancelled"}, states
