"""Whole-cluster tests: `osiris-flight run` with an embedded coordinator and real worker processes,
ZeroMQ and Flight on loopback, and processes killed on purpose."""

from __future__ import annotations

import json
import os
import signal
import textwrap
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

from tests.cluster.conftest import (
    assert_no_orphans,
    events,
    latest_run_dir,
    osiris,
    read_csv,
    same_rows,
    start_osiris,
    wait_until,
    worker_pid,
    write_events_csv,
)

pytestmark = pytest.mark.cluster

PARALLEL = """
oml_version: "0.2.0"
name: parallel_processing
steps:
  - id: extract_source
    component: filesystem.csv_extractor
    mode: read
    config: {{path: events.csv}}
  - id: aggregate_users
    component: transform.aggregator
    mode: transform
    depends_on: [extract_source]
    config:
      group_by: [day]
      aggregations:
        event_count: count
        users: {{fn: count_distinct, column: user_id}}
  {slow_users}
  - id: aggregate_products
    component: transform.aggregator
    mode: transform
    depends_on: [extract_source]
    config:
      group_by: [day]
      aggregations:
        revenue: sum
        products: {{fn: count_distinct, column: product_id}}
  - id: join_aggregates
    component: transform.joiner
    mode: transform
    depends_on: [{users_step}, aggregate_products]
    config: {{join_type: inner, "on": [day]}}
  - id: write_summary
    component: filesystem.csv_writer
    mode: write
    depends_on: [join_aggregates]
    config: {{path: out/summary.csv}}
"""

SLOW_USERS = """- id: slow_users
    component: chaos.slow
    mode: transform
    depends_on: [aggregate_users]
    config: {delay_s: 3.0}"""


def parallel_pipeline(workdir: Path, rows: int, slow: bool = False) -> pa.Table:
    table = write_events_csv(workdir / "events.csv", rows)
    text = PARALLEL.format(
        slow_users=SLOW_USERS if slow else "", users_step="slow_users" if slow else "aggregate_users"
    )
    (workdir / "pipeline.yaml").write_text(textwrap.dedent(text))
    return table


def expected_summary(table: pa.Table) -> pd.DataFrame:
    df = table.to_pandas()
    users = df.groupby("day").agg(event_count=("event_id", "size"), users=("user_id", "nunique"))
    products = df.groupby("day").agg(revenue=("revenue", "sum"), products=("product_id", "nunique"))
    return users.join(products, how="inner").reset_index().sort_values("day").reset_index(drop=True)


def assert_summary_matches(path: Path, table: pa.Table) -> None:
    got = read_csv(path).to_pandas().sort_values("day").reset_index(drop=True)
    want = expected_summary(table)
    assert list(got.columns) == [
        "day",
        "event_count",
        "products",
        "revenue",
        "users",
    ]  # sorted, as Osiris writes
    pd.testing.assert_frame_equal(got[want.columns.tolist()], want, check_dtype=False, rtol=1e-9)


def interval(evs: list[dict], step: str) -> tuple[float, float]:
    start = next(e["t"] for e in evs if e["event"] == "step_start" and e["step_id"] == step)
    end = next(e["t"] for e in evs if e["event"] == "step_complete" and e["step_id"] == step)
    return start, end


def test_parallel_example_branches_overlap_and_output_is_correct(workdir: Path) -> None:
    table = parallel_pipeline(workdir, rows=400_000)
    result = osiris(["run", "pipeline.yaml", "--json", "--workers", "2"], workdir)
    assert result.code == 0, result.stderr
    body = result.json()
    assert body["status"] == "success"
    assert_summary_matches(workdir / "out/summary.csv", table)

    run_dir = Path(body["summary"]["run_dir"])
    evs = events(run_dir)
    names = [e["event"] for e in evs]
    assert names[0] == "run_start" and names[-1] == "run_end"
    users, products = interval(evs, "aggregate_users"), interval(evs, "aggregate_products")
    assert users[0] < products[1] and products[0] < users[1], (users, products)
    # The two branches ran in different tasks, at the same time, and both read the one extract.
    starts = {e["task_id"]: e for e in evs if e["event"] == "task_start"}
    assert len(starts) == 4
    complete = {e["step_id"]: e for e in evs if e["event"] == "step_complete"}
    assert complete["extract_source"]["rows_processed"] == table.num_rows
    assert complete["write_summary"]["rows_processed"] == 30
    metrics = [line for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any('"rows_read"' in m and '"extract_source"' in m for m in metrics)
    assert any('"rows_written"' in m and '"write_summary"' in m for m in metrics)
    for name in ("manifest.json", "plan.json", "status.json", "journal.jsonl"):
        assert (run_dir / name).exists()
    assert_no_orphans(workdir)


def test_sigkilled_worker_mid_run_gives_identical_output(workdir: Path) -> None:
    table = parallel_pipeline(workdir, rows=200_000, slow=True)
    proc = start_osiris(["run", "pipeline.yaml", "--json", "--workers", "2"], workdir)
    try:
        run_dir = wait_until(lambda: latest_run_dir(workdir), 60, "the run directory")

        def slow_task_start() -> dict | None:
            return next(
                (e for e in events(run_dir) if e["event"] == "task_start" and "slow_users" in e["steps"]),
                None,
            )

        start = wait_until(slow_task_start, 60, "the slow task to start")
        pid = wait_until(lambda: worker_pid(proc.pid, start["worker_id"]), 10, "the worker's pid")
        os.kill(pid, signal.SIGKILL)
        _, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert_summary_matches(workdir / "out/summary.csv", table)
    evs = events(run_dir)
    lost = [e for e in evs if e["event"] == "worker_lost"]
    assert start["worker_id"] in {e["worker_id"] for e in lost}
    assert any(e["event"] == "task_retry" and not e["counted"] for e in evs)
    reruns = [e for e in evs if e["event"] == "task_start" and "slow_users" in e["steps"]]
    assert len(reruns) >= 2 and reruns[-1]["worker_id"] != start["worker_id"]
    assert_no_orphans(workdir)


# The slow branch waits for the file RELEASE before its first batch: the test creates it.
TWO_SINKS = """
oml_version: "0.2.0"
name: two_sinks
steps:
  - id: extract
    component: filesystem.csv_extractor
    mode: read
    config: {path: events.csv}
  - id: quick_write
    component: filesystem.csv_writer
    mode: write
    depends_on: [extract]
    config: {path: out/quick.csv}
  - id: slow
    component: chaos.slow
    mode: transform
    depends_on: [extract]
    config: {delay_s: 0.5, hold_until: "RELEASE"}
  - id: slow_write
    component: filesystem.csv_writer
    mode: write
    depends_on: [slow]
    config: {path: out/slow.csv}
"""


def two_sinks(workdir: Path) -> Path:
    """Write the TWO_SINKS pipeline; returns the file whose creation releases its slow branch."""
    release = workdir / "release-slow-branch"
    (workdir / "pipeline.yaml").write_text(TWO_SINKS.replace("RELEASE", str(release)))
    return release


def test_resume_after_killed_run_skips_committed_steps_and_finishes_identically(workdir: Path) -> None:
    table = write_events_csv(workdir / "events.csv", 300_000)
    release = two_sinks(workdir)
    proc = start_osiris(["run", "pipeline.yaml", "--json", "--workers", "2"], workdir)
    try:
        run_dir = wait_until(lambda: latest_run_dir(workdir), 60, "the run directory")
        journal = run_dir / "journal.jsonl"
        wait_until(lambda: journal.exists() and '"task_committed"' in journal.read_text(), 60, "a commit")
        committed = journal.read_text()
        assert "slow_write" not in committed  # held: it cannot have begun writing
        proc.send_signal(signal.SIGKILL)  # the whole CLI, mid-run
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert_no_orphans(workdir)
    assert not (workdir / "out/slow.csv").exists()  # never half-written
    quick_mtime = (workdir / "out/quick.csv").stat().st_mtime_ns

    release.touch()
    run_id = run_dir.name.rsplit("_", 1)[-1]
    result = osiris(["run", "--resume", run_id, "--json", "--workers", "2"], workdir)
    assert result.code == 0, result.stderr
    assert result.json()["status"] == "success"
    resumed = [e for e in events(run_dir) if e["event"] == "run_resumed"]
    assert resumed and any(t for t in resumed[-1]["skipped_tasks"])
    assert (workdir / "out/quick.csv").stat().st_mtime_ns == quick_mtime  # not rewritten
    for name in ("quick.csv", "slow.csv"):
        got = read_csv(workdir / "out" / name)
        assert same_rows(got, table), name
    assert_no_orphans(workdir)


def test_killing_the_worker_holding_a_finished_output_recomputes_it_from_lineage(workdir: Path) -> None:
    table = write_events_csv(workdir / "events.csv", 300_000)
    release = two_sinks(workdir)
    proc = start_osiris(["run", "pipeline.yaml", "--json", "--workers", "2"], workdir)
    try:
        run_dir = wait_until(lambda: latest_run_dir(workdir), 60, "the run directory")

        def extract_done() -> dict | None:
            return next(
                (e for e in events(run_dir) if e["event"] == "task_complete" and "extract" in e["steps"]),
                None,
            )

        done = wait_until(extract_done, 60, "the extract to finish")
        # The slow branch is held, so it still needs the extract's output in that worker's store.
        pid = wait_until(lambda: worker_pid(proc.pid, done["worker_id"]), 10, "the worker's pid")
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: any(e["event"] == "worker_lost" for e in events(run_dir)), 60, "the loss")
        release.touch()
        _, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    evs = events(run_dir)
    assert done["task_id"] in {e["task_id"] for e in evs if e["event"] == "task_recompute"}
    extract_runs = [e for e in evs if e["event"] == "task_start" and e["task_id"] == done["task_id"]]
    assert len(extract_runs) == 2 and extract_runs[1]["worker_id"] != done["worker_id"]
    for name in ("quick.csv", "slow.csv"):
        got = read_csv(workdir / "out" / name)
        assert same_rows(got, table), name
    assert_no_orphans(workdir)


FAN_OUT = """
oml_version: "0.2.0"
name: fan_out
steps:
  - id: extract
    component: filesystem.csv_extractor
    mode: read
    config: {path: events.csv}
  - id: write_a
    component: filesystem.csv_writer
    mode: write
    depends_on: [extract]
    config: {path: out/a.csv}
  - id: write_b
    component: filesystem.parquet_writer
    mode: write
    depends_on: [extract]
    config: {path: out/b.parquet}
"""


def test_fan_out_larger_than_memory_budget_spills_and_both_consumers_get_every_row(workdir: Path) -> None:
    import pyarrow.parquet as pq

    table = write_events_csv(workdir / "events.csv", 600_000)  # ~24 MB as Arrow
    (workdir / "pipeline.yaml").write_text(FAN_OUT)
    (workdir / "osiris.yaml").write_text("engine:\n  memory_limit_mb: 4\n  batch_rows: 16384\n")
    result = osiris(["run", "pipeline.yaml", "--json", "--workers", "2"], workdir)
    assert result.code == 0, result.stderr
    summary = result.json()["summary"]
    assert summary["spilled_bytes"] > 0
    evs = events(Path(summary["run_dir"]))
    assert any(e["event"] == "spill" for e in evs)
    a = read_csv(workdir / "out/a.csv")
    b = pq.read_table(workdir / "out/b.parquet")
    assert same_rows(a, table)
    assert same_rows(b, table)
    assert_no_orphans(workdir)


FLAKY = """
oml_version: "0.2.0"
name: flaky
steps:
  - id: extract
    component: filesystem.csv_extractor
    mode: read
    config: {{path: events.csv}}
  - id: flaky
    component: chaos.flaky
    mode: transform
    depends_on: [extract]
    config: {flaky_config}
  - id: write
    component: filesystem.csv_writer
    mode: write
    depends_on: [flaky]
    config: {{path: out/flaky.csv}}
"""


def test_transient_failure_is_retried_and_the_run_succeeds(workdir: Path) -> None:
    table = write_events_csv(workdir / "events.csv", 10_000)
    (workdir / "pipeline.yaml").write_text(FLAKY.format(flaky_config="{succeed_on_attempt: 3}"))
    result = osiris(["run", "pipeline.yaml", "--json", "--workers", "2"], workdir)
    assert result.code == 0, result.stderr
    evs = events(Path(result.json()["summary"]["run_dir"]))
    retries = [e for e in evs if e["event"] == "task_retry" and e["counted"]]
    assert len(retries) == 2
    assert read_csv(workdir / "out/flaky.csv").num_rows == table.num_rows


def test_an_event_the_protocol_cannot_carry_is_dropped_not_the_worker(workdir: Path) -> None:
    """A component's event with int keys encodes (msgpack) but the coordinator would refuse it: the
    worker checks it before sending and drops it, so its worker is not declared lost and rejoined
    (as a refusal once made it do, until the run failed on disturbances)."""
    table = write_events_csv(workdir / "events.csv", 10_000)
    (workdir / "pipeline.yaml").write_text(FLAKY.format(flaky_config="{unreportable_event: true}"))
    result = osiris(["run", "pipeline.yaml", "--json", "--workers", "1"], workdir)
    assert result.code == 0, result.stderr
    evs = events(Path(result.json()["summary"]["run_dir"]))
    assert not [e for e in evs if e["event"] in ("worker_lost", "task_retry", "worker_joined")]
    assert not [e for e in evs if e["event"] == "histogram"]
    assert read_csv(workdir / "out/flaky.csv").num_rows == table.num_rows


def test_terminal_failure_fails_the_run_with_the_real_message_and_leaves_no_target(workdir: Path) -> None:
    write_events_csv(workdir / "events.csv", 10_000)
    (workdir / "pipeline.yaml").write_text(
        FLAKY.format(flaky_config='{terminal: true, message: "column amount is not numeric"}')
    )
    result = osiris(["run", "pipeline.yaml", "--workers", "1"], workdir)
    assert result.code == 1
    assert "column amount is not numeric" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    assert not (workdir / "out/flaky.csv").exists()
    run_dir = latest_run_dir(workdir)
    assert '"failed"' in (run_dir / "status.json").read_text()
    for made in (run_dir, run_dir.parent, run_dir / "artifacts"):  # the run's data: no other user
        assert made.stat().st_mode & 0o777 in (0o750, 0o700), (made, oct(made.stat().st_mode))
    assert_no_orphans(workdir)
    # The run is listed and its events read back, also with a torn last line (a coordinator killed
    # mid-write, or `logs` reading while a run writes).
    [listed] = json.loads(osiris(["runs", "--json"], workdir).stdout)
    assert listed["status"] == "failed" and "column amount is not numeric" in listed["error"]
    with (run_dir / "events.jsonl").open("a") as events_file:
        events_file.write('{"ts": "2026-01-01T00:0')
    shown = osiris(["logs", listed["run_id"]], workdir)
    assert shown.code == 0, shown.stderr
    assert "step_failed" in shown.stdout and "column amount is not numeric" in shown.stdout
    as_json = osiris(["logs", listed["run_id"], "--json"], workdir)
    assert [json.loads(line)["event"] for line in as_json.stdout.splitlines()][-1] == "run_end"


def test_a_secret_a_failing_step_echoes_is_scrubbed_from_every_record(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_events_csv(workdir / "events.csv", 1_000)
    secret = "tok-4f9a-very-secret"
    monkeypatch.setenv("OSIRIS_TEST_TOKEN", secret)
    (workdir / "pipeline.yaml").write_text(
        FLAKY.format(
            flaky_config='{terminal: true, message: "auth failed", api_token: "${OSIRIS_TEST_TOKEN}"}'
        )
    )
    result = osiris(["run", "pipeline.yaml", "--workers", "1"], workdir)
    assert result.code == 1
    assert "auth failed (token *** refused)" in result.stdout
    run_dir = latest_run_dir(workdir)
    for text in [result.stdout, result.stderr] + [f.read_text() for f in run_dir.iterdir() if f.is_file()]:
        assert secret not in text


def test_ctrl_c_cancels_the_run_and_stops_every_process(workdir: Path) -> None:
    write_events_csv(workdir / "events.csv", 100_000)
    release = two_sinks(workdir)
    proc = start_osiris(["run", "pipeline.yaml", "--workers", "2"], workdir)
    try:
        run_dir = wait_until(lambda: latest_run_dir(workdir), 60, "the run directory")
        # The slow branch is held and never released: the run cannot end before the interrupt.
        wait_until(lambda: any(e["event"] == "task_start" for e in events(run_dir)), 60, "a task to start")
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not release.exists()
    assert proc.returncode == 130
    assert_no_orphans(workdir)
    assert '"failed"' in (run_dir / "status.json").read_text()


def test_a_failure_inside_a_fused_chain_is_blamed_on_the_step_that_raised(workdir: Path) -> None:
    write_events_csv(workdir / "events.csv", 1_000)
    (workdir / "pipeline.yaml").write_text(
        'oml_version: "0.1.0"\nname: blame\nsteps:\n'  # 0.1.0: each non-read step needs the one before
        "  - {id: extract, component: filesystem.csv_extractor, mode: read, config: {path: events.csv}}\n"
        '  - {id: keep, component: transform.filter, mode: transform, config: {where: "amount > 1"}}\n'
        "  - {id: write, component: filesystem.csv_writer, mode: write, config: {path: out/x.csv}}\n"
    )
    result = osiris(["run", "pipeline.yaml", "--workers", "1"], workdir)
    assert result.code == 1
    evs = events(latest_run_dir(workdir))
    failed = next(e for e in evs if e["event"] == "task_failed")
    assert failed["step_id"] == "keep" and "amount" in failed["error"]
    assert failed["transient"] is False
    assert not (workdir / "out/x.csv").exists()


def test_shrunk_batches_change_what_is_held_but_not_a_single_output_byte(workdir: Path) -> None:
    write_events_csv(workdir / "events.csv", 200_000)
    (workdir / "pipeline.yaml").write_text(FAN_OUT)
    outputs = {}
    held = {}
    for shrink in ("true", "false"):
        (workdir / "osiris.yaml").write_text(f"engine:\n  shrink_batches: {shrink}\n  memory_limit_mb: 8\n")
        result = osiris(["run", "pipeline.yaml", "--json", "--workers", "2"], workdir)
        assert result.code == 0, result.stderr
        run_dir = Path(result.json()["summary"]["run_dir"])
        outputs[shrink] = ((workdir / "out/a.csv").read_bytes(), (workdir / "out/b.parquet").read_bytes())
        metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        held[shrink] = {m["metric"]: m["value"] for m in metrics if m.get("step") == "extract"}
    assert outputs["true"] == outputs["false"]
    assert held["true"]["bytes_logical"] == held["false"]["bytes_logical"]
    assert held["true"]["bytes_held"] < 0.7 * held["true"]["bytes_logical"]
    assert held["false"]["bytes_held"] == held["false"]["bytes_logical"]


def test_compressed_flight_streams_give_the_same_output_bytes(workdir: Path) -> None:
    # One slot per worker: the extract holds one worker's slot, so at least one writer runs on the
    # other worker and reads the extract's output over Flight.
    write_events_csv(workdir / "events.csv", 100_000)
    (workdir / "pipeline.yaml").write_text(FAN_OUT)
    outputs = {}
    for codec in ("none", "lz4", "zstd"):
        (workdir / "osiris.yaml").write_text(
            f"engine:\n  flight_compression: {codec}\n  slots_per_worker: 1\n  workers: 2\n"
        )
        result = osiris(["run", "pipeline.yaml", "--json"], workdir)
        assert result.code == 0, result.stderr
        outputs[codec] = ((workdir / "out/a.csv").read_bytes(), (workdir / "out/b.parquet").read_bytes())
    assert outputs["lz4"] == outputs["none"] == outputs["zstd"]
