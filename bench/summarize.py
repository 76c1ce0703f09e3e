"""Write bench/results/README.md: the latest figures of every benchmark, from their results JSON files."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, fmt, machine, md_table


def load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def verdict(ok: bool) -> str:
    return "met" if ok else "**goal missed**"


def mysql_rows(my: dict[str, Any]) -> list[list[Any]]:
    """bench_mysql: the extractor's default decoder (binary; native before it existed) and MySQL -> CSV."""
    out: list[list[Any]] = []
    arrow = my["arrow"]
    name = next((n for n in ("binary", "native", "reference", "extractor") if n in arrow), None)
    if name is None:
        return out
    native = name in ("binary", "native")  # a native decoder was measured (the goals are about it)
    who = f"extractor ({name} decoder)"
    r = arrow[name]
    link = "[mysql](mysql.md)"
    cx = arrow.get("connectorx")
    if cx:
        ratio = r["rows_per_s"] / cx["rows_per_s"]
        out.append(
            [
                f"{link}: {who} vs connectorx",
                f"{r['rows_per_s'] / 1e3:,.0f}k rows/s",
                f"connectorx {cx['rows_per_s'] / 1e3:,.0f}k rows/s",
                f"{ratio:.2f}x",
                ">= 1x",
                verdict(native and ratio >= 1.0),
            ]
        )
    pd_ = arrow["pandas"]
    ratio = r["rows_per_s"] / pd_["rows_per_s"]
    out.append(
        [
            f"{link}: {who} vs pandas.read_sql",
            f"{r['rows_per_s'] / 1e3:,.0f}k rows/s",
            f"pandas {pd_['rows_per_s'] / 1e3:,.0f}k rows/s",
            f"{ratio:.1f}x",
            ">= 10x",
            verdict(native and ratio >= 10.0),
        ]
    )
    out.append(
        [
            f"{link}: {who} peak RSS",
            f"{r['peak_rss_mb']:,.0f} MB ({r['rss_ready_mb']:,.0f} MB after imports)",
            f"connectorx {cx['peak_rss_mb']:,.0f} MB" if cx else "-",
            "-",
            "< 150 MB",
            verdict(native and r["peak_rss_mb"] < 150),
        ]
    )
    csv = my.get("csv")
    if csv:
        for key, label, goal in (
            ("csv_connectorx", "connectorx + pyarrow.csv", 0.8),
            ("csv_pandas", "pandas", 10.0),
        ):
            b = csv["baselines"].get(key)
            if not b:
                continue
            out.append(
                [
                    f"{link}: MySQL -> CSV, engine vs {label}",
                    f"{csv['engine']['rows_per_s'] / 1e3:,.0f}k rows/s "
                    f"(CLI {csv['cli']['rows_per_s'] / 1e3:,.0f}k)",
                    f"{label} {b['rows_per_s'] / 1e3:,.0f}k rows/s",
                    f"{b['engine_speedup']:.2f}x",
                    f">= {goal:g}x",
                    verdict(b["engine_speedup"] >= goal),
                ]
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--suite-seconds", type=int, default=None)
    parser.add_argument("--load-start", default=None, help="1-minute load average when the suite started")
    args = parser.parse_args()
    m = machine()
    lines = [
        "# Benchmark results\n",
        f"Latest run: {m['date_utc']}; {m['nproc']} CPUs ({m['cpu']}), {m['ram_gb']} GB RAM; Python "
        f"{m['python']}, pyarrow {m['pyarrow']}; engine at commit `{m['engine_commit']}`"
        + (" with uncommitted engine changes" if m["engine_uncommitted_changes"] else "")
        + (f"; whole suite {args.suite_seconds} s" if args.suite_seconds else "")
        + f"; 1-minute load average {args.load_start or '?'} at the start, {m['load_avg_1m']} at the end "
        f"(other work on this {m['nproc']}-CPU machine skews both sides of every comparison)"
        + ". Regenerate with `bench/run_all.sh`. Every figure is measured against a baseline in the same run "
        "(details, raw numbers and plots in the per-benchmark files).\n",
    ]
    rows: list[list[Any]] = []
    sched = load("scheduling")
    if sched:
        for name, s in sched["shapes"].items():
            rows.append(
                [
                    f"[scheduling](scheduling.md): {name}, {s['tasks']} tasks",
                    f"{fmt(s['engine_ms_per_task'], 3)} ms/task engine time "
                    f"(cluster {fmt(s['engine_wall_median_s'])} s)",
                    f"in-process {fmt(s['baseline_median_s'])} s",
                    f"{fmt(s['wall_over_baseline'], 2)}x wall",
                    f"< {sched['goal_ms_per_task']:g} ms/task",
                    verdict(s["engine_ms_per_task"] < sched["goal_ms_per_task"]),
                ]
            )
        rows.append(
            [
                "[scheduling](scheduling.md): cluster start / stop",
                f"{fmt(sched['cluster_start_s'], 2)} s / {fmt(sched.get('cluster_stop_s', 0.0), 2)} s",
                "-",
                "-",
                "reported",
                "-",
            ]
        )
    tp = load("throughput")
    if tp:
        for case in ("fused", "fanout"):
            r = tp[case]
            b = r["baselines"]["script (default options)"]
            goal = "within 1.2x" if case == "fused" else "reported"
            rows.append(
                [
                    f"[throughput](throughput.md): {case}",
                    f"{r['engine_rows_per_s'] / 1e6:.2f} M rows/s",
                    f"script {b['rows_per_s'] / 1e6:.2f} M rows/s",
                    f"{b['ratio']:.2f}x time",
                    goal,
                    verdict(b["ratio"] <= 1.2) if case == "fused" else "-",
                ]
            )
        f = tp["fused"]
        script = f["baselines"]["script (default options)"]
        rows.append(
            [
                "[throughput](throughput.md): fused via CLI, incl. start",
                f"{tp['rows'] / f['cli_end_to_end_median_s'] / 1e6:.2f} M rows/s",
                f"script {script['rows_per_s'] / 1e6:.2f} M rows/s",
                f"{f['cli_end_to_end_median_s'] / script['median_s']:.2f}x time",
                "reported",
                "-",
            ]
        )
    mem = load("memory")
    if mem:
        budget = mem["budget_mb"]
        for shape, sizes in mem["runs"].items():
            for size, r in sizes.items():
                rows.append(
                    [
                        f"[memory](memory.md): {shape} {size} ({r['data_mb']:,.0f} MiB)",
                        f"peak {r['peak_rss_mb']:,.0f} MiB, peak - idle {r['peak_minus_idle_mb']:,.0f} MiB",
                        f"idle {r['idle_rss_mb']:,.0f} MiB; budget {budget} MB",
                        f"overhead {r['peak_minus_idle_mb'] - budget:+,.0f} MiB",
                        "budget + fixed overhead",
                        "reported",
                    ]
                )
        largest = mem["sizes"][-1]
        for shape, flat in mem["flatness"].items():
            rows.append(
                [
                    f"[memory](memory.md): {shape} flat, under budget + fixed overhead",
                    f"{largest}: 2nd half peaks {flat['halves_growth_mb']:+,.0f} MiB vs 1st "
                    "(median over runs); "
                    f"{flat['growth_mb']:+,.0f} MiB from {mem['sizes'][0]} to {largest}",
                    "-",
                    f"overhead {flat['overhead_mb']:,.0f} MiB",
                    "2nd half < 1st + 10% of budget",
                    verdict(flat["flat"]),
                ]
            )
    my = load("mysql")
    if my:
        rows += mysql_rows(my)
    opt = load("optimizer")
    if opt:
        rows.append(
            [
                f"[optimizer](optimizer.md): SELECT * -> 10% filter, 2 columns -> CSV, {opt['rows']:,} rows",
                f"on {fmt(opt['on']['median_s'])} s ({opt['on']['rows_fetched']:,} rows fetched)",
                f"off {fmt(opt['off']['median_s'])} s ({opt['off']['rows_fetched']:,} rows fetched)",
                f"{opt['less_time']:.0%} less time",
                f">= {opt['goal_less_time']:.0%} less, same output",
                verdict(opt["goal_met"] and opt["same_output"]),
            ]
        )
    shrink = load("shrink")
    if shrink:
        plain, small = shrink["summary"]["plain"]["held_bytes"], shrink["summary"]["shrunk"]["held_bytes"]
        rows.append(
            [
                f"[shrink](shrink.md): batch store, {shrink['rows']:,} events-like rows",
                f"shrunk {small / 2**20:,.1f} MiB held",
                f"plain Arrow {plain / 2**20:,.1f} MiB",
                f"{shrink['saving']:.0%} less",
                ">= 50% fewer bytes held",
                verdict(shrink["saving"] >= 0.5),
            ]
        )
    fs = load("flight_security")
    if fs:
        for link, ratio in fs["ratios"].items():
            plain, secure = fs["summary"][link]["plain"], fs["summary"][link]["tls+tokens"]
            rows.append(
                [
                    f"[flight security](flight_security.md): TLS + tokens, {link}",
                    f"{secure['mb_per_s']:,.0f} MB/s",
                    f"plain {plain['mb_per_s']:,.0f} MB/s",
                    f"{ratio:.0%} of plain",
                    f"<= {fs['goal_max_loss']:.0%} less" if link == "loopback" else "reported",
                    verdict(1 - ratio <= fs["goal_max_loss"]) if link == "loopback" else "-",
                ]
            )
    hpart = load("hash_partition")
    if hpart:
        for name, c in hpart["cases"].items():
            h, part = c["hash"], c["partition"]
            sampled = " (Python loop, sample)" if h["reference"]["rows"] < hpart["rows"] else ""
            rows.append(
                [
                    f"[hash partition](hash_partition.md): row hash, {name} key, {hpart['rows']:,} rows",
                    f"{h['native']['rows_per_s'] / 1e6:,.0f} M rows/s ({fmt(h['native']['gb_per_s'])} GB/s; "
                    f"{fmt(c['hash_vs_memcpy'], 1)}x a copy of the keys)",
                    f"reference {h['reference']['rows_per_s'] / 1e6:,.2f} M rows/s{sampled}",
                    f"{fmt(c['hash_speedup'], 1)}x",
                    "memory speed (reported)",
                    "-",
                ]
            )
            rows.append(
                [
                    f"[hash partition](hash_partition.md): split into {hpart['buckets']}, {name} key",
                    f"{part['native']['rows_per_s'] / 1e6:,.1f} M rows/s",
                    f"reference {part['reference']['rows_per_s'] / 1e6:,.2f} M rows/s{sampled}",
                    f"{fmt(c['partition_speedup'], 1)}x",
                    "reported",
                    "-",
                ]
            )
    lines.append(md_table(["benchmark", "engine", "baseline", "ratio", "goal", "verdict"], rows))
    lines.append(
        "\n![scheduling](scheduling.png)\n\n![throughput](throughput.png)\n\n![memory](memory.png)\n"
        + ("\n![mysql](mysql.png)\n" if my else "")
        + ("\n![optimizer](optimizer.png)\n" if opt else "")
        + ("\n![shrink](shrink.png)\n" if shrink else "")
        + ("\n![flight security](flight_security.png)\n" if fs else "")
    )
    (RESULTS / "README.md").write_text("\n".join(lines), encoding="utf-8")


if __name__ == "__main__":
    main()
