"""Throughput: a fused chain and a fan-out through the engine vs the same pyarrow calls in one script.

(a) fused: ``csv_extractor -> filter -> csv_writer`` (one task: batches pass in-process) over a 5M-row
    CSV (~314 MB), submitted to an already-started local cluster, and end to end with the
    ``osiris-flight run`` CLI (process start, compile, cluster start, run, stop). Baselines, in this
    process: the script ``pyarrow.csv.open_csv`` (streaming, default options) ->
    ``RecordBatch.filter(expression)`` -> ``pyarrow.csv.CSVWriter`` (the goal's baseline), and the
    engine's own operators built from the registry and run without a cluster (which splits the gap
    into the engine's cost and the operators' cost). Goal: engine within 1.2x of the script.
(b) fan-out: one CSV extract feeding two ``csv_writer`` steps (3 tasks; the extract's output goes
    through the batch store and Arrow Flight) vs one script reading once and writing twice (and the
    operators in one process, the shared output held as a list of batches).

Every variant runs ``--repeats`` times (default: 5 fused, 3 fan-out and CLI), interleaved with its
baselines in a rotating order, after an untimed ``os.sync``; the median is reported.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from _common import (
    DATA,
    RESULTS,
    WORK,
    Compiled,
    cli_run,
    compile_file,
    cpu_seconds,
    ensure_csv,
    fmt,
    machine,
    md_table,
    median,
    pyplot,
    require_success,
    rotate,
    run_in_process,
    save_figure,
    submit,
    write_results,
)

from osiris_flight.cluster.local import LocalCluster
from osiris_flight.components.registry import build_registry
from osiris_flight.config import Config, EngineConfig

GOAL_RATIO = 1.2
WHERE_SQL = "event_type <> 'view'"
BATCH_ROWS = 65536
WORKER_MEMORY = 512 * 1024 * 1024 // 2  # the default 512 MB budget split over 2 workers


def where_expr() -> pc.Expression:
    return pc.field("event_type") != "view"


def fused_yaml(src: Path, out: Path) -> str:
    return f"""oml_version: "0.2.0"
name: bench_tp_fused
steps:
  - id: extract
    component: filesystem.csv_extractor
    mode: read
    config: {{path: "{src}"}}
  - id: keep
    component: transform.filter
    mode: transform
    depends_on: [extract]
    config: {{where: "{WHERE_SQL}"}}
  - id: write
    component: filesystem.csv_writer
    mode: write
    depends_on: [keep]
    config: {{path: "{out}"}}
"""


def fanout_yaml(src: Path, out_a: Path, out_b: Path) -> str:
    return f"""oml_version: "0.2.0"
name: bench_tp_fanout
steps:
  - id: extract
    component: filesystem.csv_extractor
    mode: read
    config: {{path: "{src}"}}
  - id: write_a
    component: filesystem.csv_writer
    mode: write
    depends_on: [extract]
    config: {{path: "{out_a}"}}
  - id: write_b
    component: filesystem.csv_writer
    mode: write
    depends_on: [extract]
    config: {{path: "{out_b}"}}
"""


# -- baselines: plain pyarrow, one process ------------------------------------------------------------
def script_fused(src: Path, out: Path) -> int:
    """open_csv -> batch.filter(expression) -> CSVWriter; returns the rows written."""
    expr = where_expr()
    reader = pacsv.open_csv(str(src))
    written = 0
    with pacsv.CSVWriter(str(out), reader.schema) as writer:
        for batch in reader:
            kept = batch.filter(expr)
            written += kept.num_rows
            writer.write_batch(kept)
    return written


def script_fanout(src: Path, out_a: Path, out_b: Path) -> int:
    """Read once, write every batch to two CSV files; returns the rows written (both files)."""
    reader = pacsv.open_csv(str(src))
    written = 0
    with pacsv.CSVWriter(str(out_a), reader.schema) as wa, pacsv.CSVWriter(str(out_b), reader.schema) as wb:
        for batch in reader:
            wa.write_batch(batch)
            wb.write_batch(batch)
            written += 2 * batch.num_rows
    return written


def operators_in_process(compiled: Compiled) -> int:
    """The engine's own operators (same configs, except the output paths), run in this process."""
    return run_in_process(compiled.manifest, build_registry(), BATCH_ROWS, WORKER_MEMORY)


# -- measuring -----------------------------------------------------------------------------------------
def timed(fn: Any, *args: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    value = fn(*args)
    return time.perf_counter() - started, value


def measure(
    name: str,
    compiled: Compiled,
    address: str,
    pids: list[int],
    run_logs: Path,
    repeats: int,
    scripts: dict[str, tuple[Any, int]],
    rows_read: int,
) -> dict[str, Any]:
    """Run the engine and each baseline ``repeats`` times, interleaved, the order rotated every round so
    that no variant always follows the same one; dirty pages are flushed (``os.sync``, untimed) before
    each, so one variant's writeback does not slow the next. ``scripts`` maps a baseline's name to
    (function, the rows it must report writing); ``rows_read`` (source rows) gives the rows/s."""
    engine: list[float] = []
    spilled: list[int] = []
    cpu: list[dict[str, float]] = []
    base: dict[str, list[float]] = {k: [] for k in scripts}
    variants = ["engine", *scripts]
    for i in range(repeats):
        line = f"  {name} #{i + 1}:"
        for key in rotate(variants, i):
            os.sync()
            if key == "engine":
                before = cpu_seconds(pids)
                result = submit(address, compiled, run_logs, batch_rows=BATCH_ROWS)
                after = cpu_seconds(pids)
                require_success(result, f"{name} run {i + 1}")
                engine.append(result.wall_s)
                spilled.append(int(result.summary.get("spilled_bytes", 0)))
                cpu.append(
                    {
                        "coordinator": after[pids[0]] - before[pids[0]],
                        "workers": sum(after[p] - before[p] for p in pids[1:]),
                    }
                )
                line += f" engine {result.wall_s:.2f} s,"
                continue
            fn, expected = scripts[key]
            wall, written = timed(fn)
            if written != expected:
                raise SystemExit(f"{name} {key}: wrote {written} rows, expected {expected}")
            base[key].append(wall)
            line += f" {key} {wall:.2f} s,"
        print(line.rstrip(","), flush=True)
    eng = median(engine)
    out: dict[str, Any] = {
        "tasks": compiled.tasks,
        "stages": len(compiled.plan.stages),
        "engine_s": engine,
        "engine_median_s": eng,
        "engine_rows_per_s": rows_read / eng,
        "spilled_bytes": spilled,
        "cpu_s_median": {k: median([c[k] for c in cpu]) for k in ("coordinator", "workers")},
        "baselines": {},
    }
    for key, walls in base.items():
        b = median(walls)
        out["baselines"][key] = {"s": walls, "median_s": b, "rows_per_s": rows_read / b, "ratio": eng / b}
    return out


def plot(results: dict[str, Any], path: Path) -> None:
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(9, 4.2))
    labels: list[str] = []
    values: list[float] = []
    colors: list[str] = []
    for case in ("fused", "fanout"):
        r = results[case]
        labels.append(f"{case}\nengine")
        values.append(r["engine_rows_per_s"] / 1e6)
        colors.append("tab:blue")
        if case == "fused" and "cli_end_to_end_median_s" in r:
            labels.append(f"{case}\nengine via CLI\n(incl. start)")
            values.append(results["rows"] / r["cli_end_to_end_median_s"] / 1e6)
            colors.append("tab:cyan")
        for key, b in r["baselines"].items():
            labels.append(f"{case}\n" + key.replace(" (", "\n(").replace(" in one", "\nin one"))
            values.append(b["rows_per_s"] / 1e6)
            colors.append("tab:orange" if key.startswith("script") else "tab:olive")
    bars = ax.bar(range(len(values)), values, color=colors)
    for bar, v in zip(bars, values, strict=True):
        ax.text(bar.get_x() + bar.get_width() / 2, v, f"{v:.2f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(values)), labels, fontsize=7)
    ax.set_ylabel("million source rows / s (median)")
    ax.set_title(f"Throughput, {results['rows'] / 1e6:.0f}M-row CSV ({results['csv_mb']:.0f} MB)")
    ax.grid(axis="y", alpha=0.3)
    save_figure(fig, path)


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        f"# Throughput\n\n{m['date_utc']}; {m['nproc']} CPUs, {m['ram_gb']} GB RAM; {results['config']}; "
        f"{results['rows']:,}-row CSV ({results['csv_mb']:.0f} MB, page-cached); medians of "
        f"{results['repeats']['fused']} (fused) and {results['repeats']['fanout']} (fan-out, CLI) runs, each "
        "interleaved with its baselines (rotating order, untimed `os.sync` before each). "
        f"Filter: `{WHERE_SQL}` "
        f"(keeps {results['fused']['rows_written']:,} rows). Goal (fused): engine within "
        f"{GOAL_RATIO}x of the script.\n"
    ]
    rows = []
    for case in ("fused", "fanout"):
        r = results[case]
        for key, b in r["baselines"].items():
            verdict = ""
            if case == "fused" and key.startswith("script"):
                verdict = "met" if b["ratio"] <= GOAL_RATIO else "**goal missed**"
            rows.append(
                [
                    case,
                    key,
                    fmt(r["engine_median_s"]),
                    f"{r['engine_rows_per_s'] / 1e6:.2f}",
                    fmt(b["median_s"]),
                    f"{b['rows_per_s'] / 1e6:.2f}",
                    f"{b['ratio']:.2f}x",
                    verdict,
                ]
            )
    lines.append(
        md_table(
            [
                "case",
                "baseline",
                "engine s",
                "engine M rows/s",
                "baseline s",
                "baseline M rows/s",
                "engine / baseline",
                "goal",
            ],
            rows,
        )
    )
    f = results["fused"]
    e2e = f["cli_end_to_end_median_s"]
    script = f["baselines"]["script (default options)"]["median_s"]
    lines.append(
        "\nFused, end to end with `osiris-flight run` (process start, compile, cluster start, run, stop): "
        f"median **{fmt(e2e)} s** = {results['rows'] / e2e / 1e6:.2f} M rows/s "
        f"({', '.join(fmt(x) for x in f['cli_end_to_end_s'])} s); {e2e / script:.2f}x the default script.\n"
    )
    cpu_rows = [
        [
            case,
            results[case]["tasks"],
            fmt(results[case]["cpu_s_median"]["coordinator"]),
            fmt(results[case]["cpu_s_median"]["workers"]),
            f"{max(results[case]['spilled_bytes']) / 2**20:,.0f}",
        ]
        for case in ("fused", "fanout")
    ]
    lines.append("\nEngine runs: CPU seconds per run (median) and bytes spilled by the batch store:\n")
    lines.append(
        md_table(["case", "tasks", "coordinator CPU s", "workers CPU s", "max spilled MiB"], cpu_rows)
    )
    lines.append(
        "\n`script (default options)`: `pacsv.open_csv(path)` with pyarrow's defaults -> `batch.filter` -> "
        "`CSVWriter` (the goal's baseline: what a user would write). `operators in one process`: the "
        "engine's own component operators, built from the registry with the same configs and run in this "
        "process without a cluster, so `engine / operators` is the cost of the engine itself (tasks, "
        "messages, "
        "batch store, Flight), and `operators / script` the cost of the operators' choices (single-threaded "
        "reader, block size, re-batching, null handling, fsync + rename).\n\n"
        "![throughput](throughput.png)\n"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--repeats", type=int, default=3, help="fan-out and CLI runs")
    parser.add_argument("--fused-repeats", type=int, default=5)
    args = parser.parse_args()

    src = ensure_csv(DATA / f"events_{args.rows}.csv", args.rows)
    work = WORK / "throughput"
    shutil.rmtree(work, ignore_errors=True)
    (work / "out").mkdir(parents=True)
    out = work / "out"
    registry = build_registry()
    (work / "fused.yaml").write_text(fused_yaml(src, out / "fused.csv"), encoding="utf-8")
    (work / "fanout.yaml").write_text(
        fanout_yaml(src, out / "fan_a.csv", out / "fan_b.csv"), encoding="utf-8"
    )
    (work / "fused_local.yaml").write_text(fused_yaml(src, out / "local_fused.csv"), encoding="utf-8")
    (work / "fanout_local.yaml").write_text(
        fanout_yaml(src, out / "local_a.csv", out / "local_b.csv"), encoding="utf-8"
    )
    fused = compile_file(work / "fused.yaml", registry)
    fanout = compile_file(work / "fanout.yaml", registry)
    fused_local = compile_file(work / "fused_local.yaml", registry)
    fanout_local = compile_file(work / "fanout_local.yaml", registry)
    assert fused.tasks == 1, "the fused chain must plan as one task"

    rows_read = pacsv.read_csv(str(src)).num_rows  # also warms the page cache
    rows_written = script_fused(src, out / "warm.csv")
    config = Config(engine=EngineConfig(workers=2, slots_per_worker=2))
    cluster = LocalCluster(config)
    cluster.start()
    try:
        assert cluster.process is not None
        pids = [cluster.process.pid, *cluster.worker_pids()]
        run_logs = work / "run_logs"
        results: dict[str, Any] = {
            "machine": machine(),
            "config": "local cluster, 2 workers x 2 slots, 512 MB budget",
            "rows": rows_read,
            "csv_mb": src.stat().st_size / 1e6,
            "repeats": {"fused": args.fused_repeats, "fanout": args.repeats, "cli": args.repeats},
        }
        results["fused"] = measure(
            "fused",
            fused,
            cluster.address,
            pids,
            run_logs,
            args.fused_repeats,
            {
                "script (default options)": (lambda: script_fused(src, out / "base_fused.csv"), rows_written),
                "operators in one process": (lambda: operators_in_process(fused_local), rows_written),
            },
            rows_read,
        )
        results["fanout"] = measure(
            "fanout",
            fanout,
            cluster.address,
            pids,
            run_logs,
            args.repeats,
            {
                "script (default options)": (
                    lambda: script_fanout(src, out / "base_a.csv", out / "base_b.csv"),
                    2 * rows_read,
                ),
                "operators in one process": (lambda: operators_in_process(fanout_local), 2 * rows_read),
            },
            rows_read,
        )
    finally:
        cluster.stop()
    results["fused"]["rows_written"] = rows_written
    if pacsv.read_csv(str(out / "fused.csv")).num_rows != rows_written:
        raise SystemExit("the engine's fused output does not have the script's row count")
    for name in ("fan_a.csv", "fan_b.csv"):
        table: pa.Table = pacsv.read_csv(str(out / name), read_options=pacsv.ReadOptions(use_threads=True))
        if table.num_rows != rows_read:
            raise SystemExit(
                f"the engine's fan-out output {name} has {table.num_rows} rows, expected {rows_read}"
            )

    e2e = []
    for i in range(args.repeats):
        e2e.append(cli_run(work / "fused.yaml", work))
        print(f"  fused via CLI #{i + 1}: {e2e[-1]:.2f} s", flush=True)
    results["fused"]["cli_end_to_end_s"] = e2e
    results["fused"]["cli_end_to_end_median_s"] = median(e2e)
    shutil.rmtree(out, ignore_errors=True)

    plot(results, RESULTS / "throughput.png")
    write_results("throughput", results, markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
