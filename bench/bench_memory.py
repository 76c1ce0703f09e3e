"""Peak memory of streams 5x, 20x and 40x the memory budget, through an exchange and through a fused chain.

``engine.memory_limit_mb = 64`` (an ``osiris.yaml`` in a temp directory; 2 workers x 2 slots, so 32 MB
per worker). Two pipelines over Parquet files holding 5x, 20x and 40x the budget as Arrow data:

* ``exchange``: ``parquet_extractor -> {parquet_writer, parquet_writer}`` (fan-out: the extract's
  output goes through the worker's batch store, which must spill beyond its budget, and over Flight);
* ``fused``: ``parquet_extractor -> filter (event_id >= 0: every row) -> parquet_writer`` (one task).

Memory is the summed RSS of every process (the submitter, which does what ``osiris-flight run`` does,
plus the coordinator and the workers), sampled with psutil every 50 ms. For each (pipeline, size) a
fresh cluster is started and sampled idle for 2 s first: the idle RSS is the processes with their code
loaded. Each size runs ``--repeats`` times (default 3, each on a fresh cluster); the median run's
figures are reported and every run's peak - idle is listed.

The issue's goal is "flat, under the budget plus a fixed overhead". Here the *overhead* is
``peak - idle - budget``: what running tasks hold besides the batch store (a reader's row group, a
writer's row group, a Flight stream's window and messages, modules loaded by the first task,
allocator slack). It is fixed when it does not grow as the data streams, so the verdict is: met
when, for the largest size, the peak of the stream's second half (by time) is less than 10% of the
budget above the peak of its first half (the median over its runs: one peak is one spike). Memory
that followed the data would keep rising; spikes that come and go have the same odds in both halves
of one run (across sizes they do not: a longer run catches higher spikes, so peaks across sizes are
reported beside it, not judged).

A what-if row reruns the largest size with allocator settings in the environment (``--what-if-env``,
default ``ARROW_DEFAULT_MEMORY_POOL=mimalloc``: pyarrow's own default pool instead of the jemalloc pool
the workers choose, see osiris_flight/runtime/allocator.py). It shows what that choice is worth.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
from _common import (
    BENCH,
    DATA,
    RESULTS,
    WORK,
    RssSampler,
    ensure_parquet,
    events_batch,
    fmt,
    machine,
    md_table,
    pyplot,
    save_figure,
    write_results,
)

MB = 2**20
IDLE_S = 2.0
FLAT_TOLERANCE = 0.10  # "flat": the largest run's second half peaks < 10% of the budget above its first


def exchange_yaml(src: Path, out: Path) -> str:
    return f"""oml_version: "0.2.0"
name: bench_mem_exchange
steps:
  - id: extract
    component: filesystem.parquet_extractor
    mode: read
    config: {{path: "{src}"}}
  - id: write_a
    component: filesystem.parquet_writer
    mode: write
    depends_on: [extract]
    config: {{path: "{out}/a.parquet"}}
  - id: write_b
    component: filesystem.parquet_writer
    mode: write
    depends_on: [extract]
    config: {{path: "{out}/b.parquet"}}
"""


def fused_yaml(src: Path, out: Path) -> str:
    return f"""oml_version: "0.2.0"
name: bench_mem_fused
steps:
  - id: extract
    component: filesystem.parquet_extractor
    mode: read
    config: {{path: "{src}"}}
  - id: keep_all
    component: transform.filter
    mode: transform
    depends_on: [extract]
    config: {{where: "event_id >= 0"}}
  - id: write
    component: filesystem.parquet_writer
    mode: write
    depends_on: [keep_all]
    config: {{path: "{out}/fused.parquet"}}
"""


def read_json_line(proc: subprocess.Popen[str]) -> dict[str, Any]:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        raise SystemExit(f"the submitter exited ({proc.wait()}) without answering")
    return dict(json.loads(line))


def measure(shape: str, pipeline: Path, workdir: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    proc = subprocess.Popen(
        [sys.executable, str(BENCH / "_submitter.py"), str(pipeline)],
        cwd=workdir,
        text=True,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    sampler = RssSampler(proc.pid, 0.05).start()
    try:
        ready = read_json_line(proc)
        t_ready = time.monotonic()
        time.sleep(IDLE_S)
        assert proc.stdin is not None
        proc.stdin.write("0\n")
        proc.stdin.flush()
        run = read_json_line(proc)
        time.sleep(0.5)
        proc.stdin.write("quit\n")
        proc.stdin.flush()
        proc.wait(timeout=60)
    finally:
        sampler.stop()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if run["status"] != "success":
        raise SystemExit(f"{shape}: run {run['status']}: {run['error']}")
    idle = [s[1] for s in sampler.window(t_ready + IDLE_S / 2, t_ready + IDLE_S)]
    during = sampler.window(run["t_submit"], run["t_finish"])
    idle_rss = float(np.median(idle))
    _, peak_rss, peak_per = max(during, key=lambda s: s[1])
    # The run's two halves (by time): memory that grew with the data streamed would peak higher in
    # the second half; spikes that come and go peak alike in both (same length, same odds).
    middle = (run["t_submit"] + run["t_finish"]) / 2
    first_half = max(total for t, total, _ in during if t < middle)
    second_half = max(total for t, total, _ in during if t >= middle)
    roles = {ready["coordinator"]: "coordinator", proc.pid: "submitter"}
    roles.update({pid: f"worker {i}" for i, pid in enumerate(ready["workers"])})
    return {
        "cluster_start_s": ready["start_s"],
        "idle_rss_mb": idle_rss / MB,
        "peak_rss_mb": peak_rss / MB,
        "peak_minus_idle_mb": (peak_rss - idle_rss) / MB,
        "first_half_peak_mb": first_half / MB,
        "second_half_peak_mb": second_half / MB,
        "peak_by_process_mb": {roles.get(pid, str(pid)): rss / MB for pid, rss in peak_per.items()},
        "wall_s": run["wall_s"],
        "spilled_mb": int(run["summary"].get("spilled_bytes", 0)) / MB,
        "samples": len(during),
        "timeline": [
            (t - run["t_submit"], total / MB)
            for t, total, _ in sampler.samples
            if t_ready <= t <= run["t_finish"] + 0.25  # not the cluster stopping afterwards
        ],
    }


def plot(results: dict[str, Any], path: Path) -> None:
    plt = pyplot()

    shapes = list(results["runs"])
    fig, axes = plt.subplots(1, len(shapes), figsize=(6.5 * len(shapes), 4.4), squeeze=False, sharey=True)
    budget = results["budget_mb"]
    for ax, shape in zip(axes[0], shapes, strict=True):
        for size, r in results["runs"][shape].items():
            t = [x for x, _ in r["timeline"]]
            v = [y for _, y in r["timeline"]]
            line = ax.plot(
                t, v, label=f"{size} ({r['data_mb']:,.0f} MiB Arrow), peak {r['peak_rss_mb']:,.0f} MiB"
            )
            ax.axhline(r["idle_rss_mb"] + budget, color=line[0].get_color(), ls=":", lw=1)
        ax.axvline(0, color="grey", lw=0.8)
        ax.set_title(f"{shape}: summed RSS (dotted: that run's idle + {budget} MB budget)")
        ax.set_xlabel("seconds since submit (negative: idle cluster)")
        ax.set_ylabel("MiB")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    save_figure(fig, path)


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    budget = results["budget_mb"]
    lines = [
        f"# Peak memory\n\n{m['date_utc']}; {m['nproc']} CPUs, {m['ram_gb']} GB RAM; budget "
        f"`engine.memory_limit_mb: {budget}` (2 workers x 2 slots, {budget // 2} MB each). Summed RSS of "
        "submitter + coordinator + workers, sampled every 50 ms; idle = median over the last second of "
        f"{IDLE_S:g} s of a freshly started idle cluster (same processes, same run); each size runs "
        f"{results['repeats']} times on fresh clusters, the median run is shown. Goal (issue 2): flat, "
        "under the budget plus a fixed overhead; overhead = peak - idle - budget, what running tasks hold "
        "besides the batch store (row groups being read and written, Flight windows, allocator slack). "
        "Verdict: met when, in the largest size's runs (median), the peak of the stream's second half "
        f"is less than {FLAT_TOLERANCE:.0%} of the budget above the peak of its first half (memory that "
        "followed the data would keep rising; spikes that come and go have the same odds in two halves "
        "of one run, "
        "while a longer run catches higher spikes than a short one, so peaks across sizes rise a little "
        "even when nothing grows). Peaks across sizes are shown too.\n"
    ]
    rows = []
    for shape, sizes in results["runs"].items():
        for size, r in sizes.items():
            rows.append(
                [
                    shape,
                    size,
                    f"{r['data_mb']:,.0f}",
                    fmt(r["wall_s"], 1),
                    f"{r['spilled_mb']:,.0f}",
                    f"{r['idle_rss_mb']:,.0f}",
                    f"{r['peak_rss_mb']:,.0f}",
                    f"{r['peak_minus_idle_mb']:,.0f}",
                    " / ".join(f"{x:,.0f}" for x in r["repeats_peak_minus_idle_mb"]),
                    f"{r['first_half_peak_mb']:,.0f} / {r['second_half_peak_mb']:,.0f}",
                    " / ".join(f"{x:+,.0f}" for x in r["repeats_halves_growth_mb"]),
                    f"{r['peak_minus_idle_mb'] - budget:+,.0f}",
                ]
            )
    lines.append(
        md_table(
            [
                "pipeline",
                "size",
                "Arrow MiB",
                "run s",
                "spilled MiB",
                "idle RSS MiB",
                "peak RSS MiB",
                "peak - idle MiB (median run)",
                "peak - idle of each run",
                "peak RSS, 1st / 2nd half MiB",
                "2nd - 1st half of each run",
                "overhead (peak - idle - budget) MiB",
            ],
            rows,
        )
    )
    if results.get("what_if"):
        lines.append(
            "\nWhat-if, the largest run again with allocator settings in the environment "
            "(not the engine's):\n"
        )
        wrows = []
        for shape, sizes in results["what_if"].items():
            for size, r in sizes.items():
                base = results["runs"][shape][size]
                wrows.append(
                    [
                        shape,
                        size,
                        " ".join(f"{k}={v}" for k, v in r["env"].items()),
                        f"{r['idle_rss_mb']:,.0f}",
                        f"{r['peak_rss_mb']:,.0f}",
                        f"{r['peak_minus_idle_mb']:,.0f}",
                        f"{r['first_half_peak_mb']:,.0f} / {r['second_half_peak_mb']:,.0f}",
                        f"{r['peak_minus_idle_mb'] - budget:+,.0f}",
                        f"{r['peak_minus_idle_mb'] - base['peak_minus_idle_mb']:+,.0f}",
                    ]
                )
        lines.append(
            md_table(
                [
                    "pipeline",
                    "size",
                    "env",
                    "idle RSS MiB",
                    "peak RSS MiB",
                    "peak - idle MiB",
                    "peak RSS, 1st / 2nd half MiB",
                    "overhead MiB",
                    "vs engine default MiB",
                ],
                wrows,
            )
        )
    lines.append(
        "\nGoal: flat, under the budget plus a fixed overhead (the verdict: within the largest run; "
        "then peak - idle between sizes):\n"
    )
    sizes = results["sizes"]
    three_or_more = len(sizes) > 2  # else the growth from the smallest is the growth from the next
    frows = []
    for shape, flat in results["flatness"].items():
        growth = [f"{flat['growth_mb']:+,.0f}"]
        if three_or_more:
            growth.append(f"{flat['last_growth_mb']:+,.0f}")
        frows.append(
            [
                shape,
                f"{flat['halves_growth_mb']:+,.0f}",
                *growth,
                f"{flat['overhead_mb']:,.0f}",
                "met (flat)" if flat["flat"] else "**goal missed: grows with data size**",
            ]
        )
    headers = [
        "pipeline",
        f"{sizes[-1]}: second half - first half MiB (median of runs)",
        f"{sizes[0]} -> {sizes[-1]} MiB",
        *([f"{sizes[-2]} -> {sizes[-1]} MiB"] if three_or_more else []),
        "overhead MiB (largest)",
        "verdict",
    ]
    lines.append(md_table(headers, frows))
    lines.append("\nRSS by process at each run's peak (MiB):\n")
    prow = []
    for shape, sizes in results["runs"].items():
        for size, r in sizes.items():
            prow.append(
                [shape, size, ", ".join(f"{k} {v:,.0f}" for k, v in sorted(r["peak_by_process_mb"].items()))]
            )
    lines.append(md_table(["pipeline", "size", "per process"], prow))
    lines.append(f"\n![rss]({results['name']}.png)\n")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-mb", type=int, default=64)
    parser.add_argument("--factors", type=int, nargs="+", default=[5, 20, 40])
    parser.add_argument("--repeats", type=int, default=3, help="runs per size; the median peak is reported")
    parser.add_argument(
        "--name", default="memory", help="results file name in bench/results/ (another budget: another name)"
    )
    parser.add_argument(
        "--what-if-env",
        nargs="*",
        default=["ARROW_DEFAULT_MEMORY_POOL=mimalloc"],
        help="KEY=VALUE settings for the what-if rerun of the largest size (none: skip it)",
    )
    args = parser.parse_args()
    what_if = dict(item.split("=", 1) for item in args.what_if_env)

    per_row = events_batch(0, 100_000, np.random.default_rng(0)).nbytes / 100_000
    work = WORK / "memory"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    (work / "osiris.yaml").write_text(
        f"engine:\n  memory_limit_mb: {args.budget_mb}\n  workers: 2\n  slots_per_worker: 2\n",
        encoding="utf-8",
    )
    if len(args.factors) < 2:
        parser.error("--factors needs at least two sizes to tell whether memory is flat")
    results: dict[str, Any] = {
        "machine": machine(),
        "budget_mb": args.budget_mb,
        "name": args.name,
        "sizes": [f"{f}x" for f in args.factors],
        "repeats": args.repeats,
        "runs": {},
        "flatness": {},
    }
    data: dict[str, tuple[Path, int]] = {}
    for factor in args.factors:
        rows = math.ceil(factor * args.budget_mb * MB / per_row)
        src = DATA / f"events_{rows}.parquet"
        data[f"{factor}x"] = (src, ensure_parquet(src, rows))
    for shape, make in (("exchange", exchange_yaml), ("fused", fused_yaml)):
        results["runs"][shape] = {}
        for size, (src, arrow_bytes) in data.items():
            out = work / "out" / f"{shape}_{size}"
            pipeline = work / f"{shape}_{size}.yaml"
            pipeline.write_text(make(src, out), encoding="utf-8")
            repeats = []
            for _ in range(args.repeats):
                r = measure(shape, pipeline, work)
                print(
                    f"  {shape} {size}: {arrow_bytes / MB:,.0f} MiB in {r['wall_s']:.1f} s, idle "
                    f"{r['idle_rss_mb']:,.0f} MiB, peak {r['peak_rss_mb']:,.0f} MiB "
                    f"(+{r['peak_minus_idle_mb']:,.0f}; halves {r['first_half_peak_mb']:,.0f} / "
                    f"{r['second_half_peak_mb']:,.0f}), spilled {r['spilled_mb']:,.0f} MiB",
                    flush=True,
                )
                repeats.append(r)
                shutil.rmtree(out, ignore_errors=True)
            # The run with the median peak - idle stands for the size (a peak is the largest of
            # thousands of samples, so one run's can land a spike higher or lower than the next's).
            repeats.sort(key=lambda r: r["peak_minus_idle_mb"])
            r = repeats[len(repeats) // 2]
            r["data_mb"] = arrow_bytes / MB
            r["repeats_peak_minus_idle_mb"] = [x["peak_minus_idle_mb"] for x in repeats]
            r["repeats_halves_growth_mb"] = [
                x["second_half_peak_mb"] - x["first_half_peak_mb"] for x in repeats
            ]
            results["runs"][shape][size] = r
        sizes = list(results["runs"][shape].values())
        excess = [r["peak_minus_idle_mb"] for r in sizes]
        halves = float(np.median(sizes[-1]["repeats_halves_growth_mb"]))
        results["flatness"][shape] = {
            "growth_mb": excess[-1] - excess[0],
            "last_growth_mb": excess[-1] - excess[-2],
            "halves_growth_mb": halves,
            "overhead_mb": excess[-1] - args.budget_mb,
            "flat": halves < FLAT_TOLERANCE * args.budget_mb,
        }
        if what_if:
            size = list(data)[-1]
            r = measure(shape, work / f"{shape}_{size}.yaml", work, what_if)
            r["data_mb"] = data[size][1] / MB
            r["env"] = what_if
            results.setdefault("what_if", {}).setdefault(shape, {})[size] = r
            print(
                f"  {shape} {size} what-if {what_if}: idle {r['idle_rss_mb']:,.0f} MiB, peak "
                f"{r['peak_rss_mb']:,.0f} MiB (+{r['peak_minus_idle_mb']:,.0f})",
                flush=True,
            )
            shutil.rmtree(work / "out" / f"{shape}_{size}", ignore_errors=True)
    plot(results, RESULTS / f"{args.name}.png")
    slim = json.loads(json.dumps(results))
    for group in ("runs", "what_if"):
        for sizes in slim.get(group, {}).values():
            for r in sizes.values():
                r.pop("timeline")
    write_results(args.name, slim, markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
