"""Peak memory of streams 5x and 20x the memory budget, through an exchange and through a fused chain.

``engine.memory_limit_mb = 64`` (an ``osiris.yaml`` in a temp directory; 2 workers x 2 slots, so 32 MB
per worker). Two pipelines over Parquet files holding 5x and 20x the budget as Arrow data:

* ``exchange``: ``parquet_extractor -> {parquet_writer, parquet_writer}`` (fan-out: the extract's
  output goes through the worker's batch store, which must spill beyond its budget, and over Flight);
* ``fused``: ``parquet_extractor -> filter (event_id >= 0: every row) -> parquet_writer`` (one task).

Memory is the summed RSS of every process (the submitter, which does what ``osiris-flight run`` does,
plus the coordinator and the workers), sampled with psutil every 50 ms. For each (pipeline, size) a
fresh cluster is started and sampled idle for 2 s first: the idle RSS is the fixed overhead. Goal:
peak - idle <= the budget, and flat (the 20x peak no higher than the 5x peak).

A what-if row reruns the largest size with allocator settings in the environment (``--what-if-env``,
default ``ARROW_DEFAULT_MEMORY_POOL=jemalloc``, i.e. Arrow's C++ default pool chosen at process start;
every engine process inherits it). It is not the engine's default; it shows how much of the excess is
allocator retention.
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
    write_results,
)

MB = 2**20
IDLE_S = 2.0
FLAT_TOLERANCE = 0.10  # "flat": the 20x excess over idle is within 10% of the budget of the 5x one


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
    roles = {ready["coordinator"]: "coordinator", proc.pid: "submitter"}
    roles.update({pid: f"worker {i}" for i, pid in enumerate(ready["workers"])})
    return {
        "cluster_start_s": ready["start_s"],
        "idle_rss_mb": idle_rss / MB,
        "peak_rss_mb": peak_rss / MB,
        "peak_minus_idle_mb": (peak_rss - idle_rss) / MB,
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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    budget = results["budget_mb"]
    lines = [
        f"# Peak memory\n\n{m['date_utc']}; {m['nproc']} CPUs, {m['ram_gb']} GB RAM; budget "
        f"`engine.memory_limit_mb: {budget}` (2 workers x 2 slots, {budget // 2} MB each). Summed RSS of "
        "submitter + coordinator + workers, sampled every 50 ms; idle = median over the last second of "
        f"{IDLE_S:g} s of a freshly started idle cluster (same processes, same run). Goal: peak - idle <= "
        f"budget, and flat (20x within {FLAT_TOLERANCE:.0%} of the budget of 5x).\n"
    ]
    rows = []
    for shape, sizes in results["runs"].items():
        for size, r in sizes.items():
            ok = "met" if r["peak_minus_idle_mb"] <= budget else "**goal missed**"
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
                    f"{r['peak_minus_idle_mb'] / budget:.2f}x",
                    ok,
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
                "peak - idle MiB",
                "(peak - idle) / budget",
                "goal",
            ],
            rows,
        )
    )
    if results.get("what_if"):
        lines.append(
            "\nWhat-if, same runs with allocator settings in the environment (not the engine default):\n"
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
                        f"{r['peak_minus_idle_mb'] / budget:.2f}x",
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
                    "(peak - idle) / budget",
                    "vs default MiB",
                ],
                wrows,
            )
        )
    lines.append("\nFlatness (peak - idle at 20x minus at 5x):\n")
    frows = []
    for shape, flat in results["flatness"].items():
        frows.append(
            [shape, f"{flat['growth_mb']:+,.0f}", "flat" if flat["flat"] else "**grows with data size**"]
        )
    lines.append(md_table(["pipeline", "growth MiB", "verdict"], frows))
    lines.append("\nRSS by process at each run's peak (MiB):\n")
    prow = []
    for shape, sizes in results["runs"].items():
        for size, r in sizes.items():
            prow.append(
                [shape, size, ", ".join(f"{k} {v:,.0f}" for k, v in sorted(r["peak_by_process_mb"].items()))]
            )
    lines.append(md_table(["pipeline", "size", "per process"], prow))
    lines.append("\n![rss](memory.png)\n")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-mb", type=int, default=64)
    parser.add_argument("--factors", type=int, nargs="+", default=[5, 20])
    parser.add_argument(
        "--what-if-env",
        nargs="*",
        default=["ARROW_DEFAULT_MEMORY_POOL=jemalloc"],
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
    results: dict[str, Any] = {"machine": machine(), "budget_mb": args.budget_mb, "runs": {}, "flatness": {}}
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
            r = measure(shape, pipeline, work)
            r["data_mb"] = arrow_bytes / MB
            results["runs"][shape][size] = r
            print(
                f"  {shape} {size}: {arrow_bytes / MB:,.0f} MiB in {r['wall_s']:.1f} s, idle "
                f"{r['idle_rss_mb']:,.0f} MiB, peak {r['peak_rss_mb']:,.0f} MiB "
                f"(+{r['peak_minus_idle_mb']:,.0f}), "
                f"spilled {r['spilled_mb']:,.0f} MiB",
                flush=True,
            )
            shutil.rmtree(out, ignore_errors=True)
        sizes = list(results["runs"][shape].values())
        growth = sizes[-1]["peak_minus_idle_mb"] - sizes[0]["peak_minus_idle_mb"]
        results["flatness"][shape] = {"growth_mb": growth, "flat": growth <= FLAT_TOLERANCE * args.budget_mb}
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
    plot(results, RESULTS / "memory.png")
    slim = json.loads(json.dumps(results))
    for group in ("runs", "what_if"):
        for sizes in slim.get(group, {}).values():
            for r in sizes.values():
                r.pop("timeline")
    write_results("memory", slim, markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
