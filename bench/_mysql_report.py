"""bench_mysql's report: mysql.md (the tables and goal verdicts) and mysql.png, from the results dict
(also what ``bench_mysql.py --rerender`` reads back from mysql.json)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from _common import fmt, md_table, pyplot, save_figure
from _mysql_readers import DATABASE, PANDAS_CHUNK

# Goals of issue 4.
GOAL_NATIVE_VS_CX = 1.0  # native extractor rows/s >= connectorx rows/s
GOAL_NATIVE_VS_PANDAS = 10.0  # native extractor rows/s >= 10x pandas.read_sql
GOAL_RSS_MB = 150.0  # peak RSS of the reading process
GOAL_ENGINE_VS_CX_CSV = 0.8  # engine MySQL -> CSV rows/s >= 0.8x connectorx + pyarrow.csv
GOAL_ENGINE_VS_PANDAS_CSV = 10.0  # and >= 10x pymysql + pandas.to_csv


ORDER = ("binary", "native", "reference", "extractor", "connectorx", "connectorx_text", "sscursor", "pandas")
LABELS = {
    "binary": "mysql.extractor, decoder=binary (default)",
    "native": "mysql.extractor, decoder=native",
    "reference": "mysql.extractor, decoder=reference",
    "extractor": "mysql.extractor (no decoder key yet: pure-Python decoder)",
    "connectorx": "connectorx arrow_stream (Rust; binary protocol, its default)",
    "connectorx_text": "connectorx arrow_stream, text protocol (the extractor's protocol)",
    "pandas": f"pandas.read_sql(chunksize={PANDAS_CHUNK:,}) + pymysql",
    "sscursor": "pymysql SSCursor -> Arrow batches",
    "csv_connectorx": "connectorx + pyarrow.csv script",
    "csv_pandas": "pymysql + pandas.to_csv (chunked)",
    "csv_operators": "engine's operators in one process, no cluster",
}
SHORT = {
    "binary": "extractor\nbinary",
    "native": "extractor\nnative",
    "reference": "extractor\nreference",
    "extractor": "extractor\n(current)",
    "connectorx": "connectorx\n(binary)",
    "connectorx_text": "connectorx\n(text)",
    "pandas": "pandas\nread_sql",
    "sscursor": "pymysql\nSSCursor",
}
COLORS = {
    "binary": "tab:green",
    "native": "tab:blue",
    "reference": "tab:cyan",
    "extractor": "tab:cyan",
    "connectorx": "tab:orange",
    "connectorx_text": "navajowhite",
    "sscursor": "tab:olive",
    "pandas": "tab:red",
}


def verdict(ok: bool) -> str:
    return "met" if ok else "**goal missed**"


def plot(results: dict[str, Any], path: Path) -> None:
    plt = pyplot()

    readers = results["arrow"]
    names = [n for n in ORDER if n in readers]
    fig, (ax1, ax2, ax3) = plt.subplots(
        1, 3, figsize=(15, 4.8), gridspec_kw={"width_ratios": [3.2, 3.2, 2.6]}
    )
    x = list(range(len(names)))
    tput = [readers[n]["rows_per_s"] / 1e3 for n in names]
    bars = ax1.bar(x, tput, color=[COLORS[n] for n in names])
    for bar, v in zip(bars, tput, strict=True):
        ax1.text(bar.get_x() + bar.get_width() / 2, v, f"{v:,.0f}", ha="center", va="bottom", fontsize=8)
    ax1.axhline(100, color="grey", ls=":", lw=1, label="milestone: 100k rows/s")
    ax1.set_ylim(0, max(tput) * 1.18)
    ax1.set_xticks(x, [SHORT[n] for n in names], fontsize=7)
    ax1.set_ylabel("thousand rows / s (median)")
    ax1.set_title("MySQL -> Arrow, one stream: throughput (higher is better)", fontsize=10)
    ax1.legend(fontsize=7, loc="upper right")
    ax1.grid(axis="y", alpha=0.3)

    ready = [readers[n]["rss_ready_mb"] for n in names]
    extra = [readers[n]["peak_rss_mb"] - readers[n]["rss_ready_mb"] for n in names]
    ax2.bar(x, ready, color="lightgrey", label="RSS after imports")
    bars = ax2.bar(x, extra, bottom=ready, color=[COLORS[n] for n in names], label="added by the read")
    for bar, r, e in zip(bars, ready, extra, strict=True):
        ax2.text(
            bar.get_x() + bar.get_width() / 2, r + e, f"{r + e:,.0f}", ha="center", va="bottom", fontsize=8
        )
    ax2.axhline(GOAL_RSS_MB, color="grey", ls=":", lw=1, label=f"goal: < {GOAL_RSS_MB:.0f} MB")
    ax2.set_ylim(0, max(r + e for r, e in zip(ready, extra, strict=True)) * 1.35)
    ax2.set_xticks(x, [SHORT[n] for n in names], fontsize=7)
    ax2.set_ylabel("peak RSS of the reading process, MB")
    ax2.set_title("MySQL -> Arrow, one stream: peak memory (lower is better)", fontsize=10)
    ax2.legend(fontsize=7, loc="upper right", ncol=3)
    ax2.grid(axis="y", alpha=0.3)

    csv = results.get("csv")
    if csv:
        labels = ["engine\n(cluster)", "engine\nCLI e2e"]
        vals = [csv["engine"]["rows_per_s"] / 1e3, csv["cli"]["rows_per_s"] / 1e3]
        cols = ["tab:blue", "tab:cyan"]
        for key, short, color in (
            ("csv_operators", "engine ops,\nno cluster", "lightsteelblue"),
            ("csv_connectorx", "connectorx +\npyarrow.csv", "tab:orange"),
            ("csv_pandas", "pymysql +\npandas.to_csv", "tab:red"),
        ):
            if key in csv["baselines"]:
                labels.append(short)
                vals.append(csv["baselines"][key]["rows_per_s"] / 1e3)
                cols.append(color)
        bars = ax3.bar(range(len(vals)), vals, color=cols)
        for bar, v in zip(bars, vals, strict=True):
            ax3.text(bar.get_x() + bar.get_width() / 2, v, f"{v:,.0f}", ha="center", va="bottom", fontsize=8)
        ax3.set_xticks(range(len(vals)), labels, fontsize=7)
        ax3.set_ylim(0, max(vals) * 1.15)
        ax3.set_ylabel("thousand rows / s (median)")
        ax3.set_title("MySQL -> CSV file (higher is better)", fontsize=10)
        ax3.grid(axis="y", alpha=0.3)
    fig.suptitle(
        f"{results['rows']:,} rows x 7 columns, MariaDB {results['server'].split('-')[0]} on the same "
        f"{results['machine']['nproc']}-CPU machine; {results['machine']['date_utc']}",
        fontsize=10,
    )
    save_figure(fig, path)


def markdown(results: dict[str, Any]) -> str:
    m, rows, arrow = results["machine"], results["rows"], results["arrow"]
    t = results["table"]
    lines = [
        "# MySQL -> Arrow and MySQL -> CSV\n",
        f"{m['date_utc']}; {m['nproc']} CPUs ({m['cpu']}), {m['ram_gb']} GB RAM; MariaDB {results['server']} "
        f"on the same machine (127.0.0.1); engine at `{m['engine_commit'] or '?'}`"
        + (" with uncommitted engine changes" if m["engine_uncommitted_changes"] else "")
        + f"; 1-minute load average {results['load_start']} at the start, {m['load_avg_1m']} at the end; "
        f"script {results['script_s']:.0f} s. Table `{DATABASE}.{t['table']}`: {rows:,} rows, 7 columns "
        f"(BIGINT PK, INT, DECIMAL(12,2), DATETIME(6), VARCHAR(16) with 5 values, VARCHAR(64) ~30 chars "
        f"with 10% NULL, DOUBLE), {t['data_mb']:,.0f} MiB of InnoDB data, buffer-pool warm. Medians of "
        f"{results['repeats']} runs for the fast readers and {results['slow_repeats']} for the "
        "pymysql/pandas baselines (a run of those takes about a minute); the rounds interleave every "
        "variant in a rotating order.\n",
    ]
    if results.get("notes"):
        lines.append("\n".join(f"- {n}" for n in results["notes"]) + "\n")

    lines.append("\n## 1. Single stream MySQL -> Arrow\n")
    lines.append(
        "Each reader runs in its own subprocess; rows/s over the read (connect, query, last batch; "
        "imports excluded); RSS after imports, and peak RSS (`ru_maxrss`) of that process; and the "
        "same for its private memory (`RssAnon`, sampled every 10 ms): RSS without the pages of shared "
        "libraries mapped from disk (pyarrow's alone are ~66 MB), which every process using them "
        "shares. The engine's readers run with the worker's allocator settings (jemalloc pool, "
        "`runtime/allocator.py`); the others with their libraries' defaults.\n"
    )
    table_rows = []
    pandas_rps = arrow["pandas"]["rows_per_s"]
    cx_rps = arrow["connectorx"]["rows_per_s"] if "connectorx" in arrow else None
    for name in ORDER:
        if name not in arrow:
            continue
        r = arrow[name]
        table_rows.append(
            [
                LABELS[name],
                r["repeats"],
                fmt(r["median_s"]),
                f"{r['rows_per_s']:,.0f}",
                f"{r['rows_per_s'] / cx_rps:.2f}x" if cx_rps else "-",
                f"{r['rows_per_s'] / pandas_rps:.1f}x",
                f"{r['rss_ready_mb']:,.0f}",
                f"{r['peak_rss_mb']:,.0f}",
                f"{r['peak_rss_mb'] - r['rss_ready_mb']:,.0f}",
                f"{r['private_ready_mb']:,.0f}",
                f"{r['peak_private_mb']:,.0f}",
                "yes" if any(x.get("pandas_loaded") for x in r["runs"]) else "no",
            ]
        )
    lines.append(
        md_table(
            [
                "reader",
                "runs",
                "median s",
                "rows/s",
                "vs connectorx",
                "vs pandas",
                "RSS after imports MB",
                "peak RSS MB",
                "added by the read MB",
                "private after imports MB",
                "peak private MB",
                "pandas imported",
            ],
            table_rows,
        )
    )
    lines.append("\nGoals (issue 4), for the extractor's default decoder (binary; else native):\n")
    goals = []
    default = "binary" if "binary" in arrow else "native"
    nat = arrow.get(default)
    if nat is None:
        goals.append(
            [
                "native decoder",
                "not measured: mysql.extractor has no `decoder` config key yet "
                "(the row appears once it exists)",
                "-",
                "-",
                "**goal missed**",
            ]
        )
        nat_name = "extractor" if "extractor" in arrow else "reference"
        nat = arrow[nat_name]
        who = f"{LABELS[nat_name]} (standing in)"
    else:
        who = LABELS[default]
    if cx_rps:
        goals.append(
            [
                f"{who}: rows/s vs connectorx",
                f"{nat['rows_per_s']:,.0f} vs {cx_rps:,.0f}",
                f"{nat['rows_per_s'] / cx_rps:.2f}x",
                f">= {GOAL_NATIVE_VS_CX:g}x",
                verdict(nat["rows_per_s"] >= GOAL_NATIVE_VS_CX * cx_rps),
            ]
        )
    else:
        goals.append([f"{who}: rows/s vs connectorx", results.get("connectorx_missing", ""), "-", "-", "-"])
    goals.append(
        [
            f"{who}: rows/s vs pandas.read_sql",
            f"{nat['rows_per_s']:,.0f} vs {pandas_rps:,.0f}",
            f"{nat['rows_per_s'] / pandas_rps:.1f}x",
            f">= {GOAL_NATIVE_VS_PANDAS:g}x",
            verdict(nat["rows_per_s"] >= GOAL_NATIVE_VS_PANDAS * pandas_rps),
        ]
    )
    goals.append(
        [
            f"{who}: peak RSS of the stream",
            f"{nat['peak_rss_mb']:,.0f} MB ({nat['rss_ready_mb']:,.0f} MB after imports)",
            "-",
            f"< {GOAL_RSS_MB:g} MB",
            verdict(nat["peak_rss_mb"] < GOAL_RSS_MB),
        ]
    )
    lines.append(md_table(["goal", "figures", "ratio", "target", "verdict"], goals))

    csv = results.get("csv")
    if csv:
        e, cli = csv["engine"], csv["cli"]
        lines.append("\n## 2. MySQL -> CSV\n")
        lines.append(
            f"`mysql.extractor -> filesystem.csv_writer` ({csv['tasks']} task(s)), extractor at its defaults "
            f"(decoder: {'binary' if results['decoder_key'] else 'the only one, pure Python'}; "
            "keyset chunks of 500,000 rows), on a started local cluster (2 workers x 2 slots), submit to "
            "finish; and end to end with `osiris-flight run` (process start, compile, cluster start, run, "
            "stop). Baselines run as scripts in their own subprocess. CSV sizes (MB): "
            + ", ".join(f"{k} {v:,.0f}" for k, v in csv["csv_mb"].items())
            + ".\n"
        )
        crow = [
            [label, len(runs), fmt(r["median_s"]), f"{r['rows_per_s']:,.0f}", "", "", ""]
            for label, runs, r in (
                ("engine, started cluster", e["runs"], e),
                ("engine, `osiris-flight run` CLI", cli["runs_s"], cli),
            )
        ]
        for key, b in csv["baselines"].items():
            crow.append(
                [
                    LABELS[key],
                    b["repeats"],
                    fmt(b["median_s"]),
                    f"{b['rows_per_s']:,.0f}",
                    f"{b['engine_speedup']:.2f}x",
                    f"{b['cli_speedup']:.2f}x",
                    f"{b['peak_rss_mb']:,.0f}",
                ]
            )
        lines.append(
            md_table(
                [
                    "variant",
                    "runs",
                    "median s",
                    "rows/s",
                    "engine (cluster) / this",
                    "engine (CLI) / this",
                    "peak RSS MB",
                ],
                crow,
            )
        )
        lines.append(
            f"\nEngine memory: cluster (coordinator + 2 workers) idle {e['cluster_idle_rss_mb']:,.0f} MB, "
            f"peak {e['cluster_peak_rss_mb']:,.0f} MB; busiest worker peak {e['worker_peak_rss_mb']:,.0f} MB "
            "(psutil, sampled every 50 ms).\n"
        )
        goals = []
        for key, target in (
            ("csv_connectorx", GOAL_ENGINE_VS_CX_CSV),
            ("csv_pandas", GOAL_ENGINE_VS_PANDAS_CSV),
        ):
            if key not in csv["baselines"]:
                goals.append(
                    [f"engine vs {LABELS[key]}", results.get("connectorx_missing", ""), "-", "-", "-"]
                )
                continue
            b = csv["baselines"][key]
            goals.append(
                [
                    f"engine (started cluster) vs {LABELS[key]}",
                    f"{e['rows_per_s']:,.0f} vs {b['rows_per_s']:,.0f} rows/s",
                    f"{b['engine_speedup']:.2f}x (CLI {b['cli_speedup']:.2f}x)",
                    f">= {target:g}x",
                    verdict(b["engine_speedup"] >= target),
                ]
            )
        lines.append(md_table(["goal", "figures", "ratio", "target", "verdict"], goals))

    lines.append(
        "\nReaders: `mysql.extractor` is the engine's operator built from its component spec "
        "(`osiris_flight.components.mysql.COMPONENTS`, `spec.operator(StepContext(...))`, "
        "`open().batches()` drained), so the figures are the reader's and not the cluster's (only the "
        "MySQL component package is imported, not the CSV, Parquet and other modules a worker "
        "loads). connectorx reads `arrow_stream` batches of 65,536 "
        "rows, with its default MySQL protocol (binary: the server sends numbers and dates as binary "
        "values, not text), and, for the comparison on equal terms, with the text protocol the "
        "extractor uses; it maps DECIMAL(12,2) to decimal128(38,10) (hence its larger CSV), where the "
        "extractor keeps decimal128(12,2). `pandas imported`: whether the reading process ended with "
        "pandas in `sys.modules` (about 40 MB of RSS). `pymysql SSCursor -> Arrow` builds each column with "
        "`pa.array(values, type)` (exact types). pandas reads through an unbuffered pymysql connection "
        "(`SSCursor`; with pymysql's default buffered cursor every chunk would wait for the whole result "
        "in memory) in chunks of 10,000 rows, the milestone's batch size, and keeps the DataFrames as they "
        "come (no Arrow conversion).\n\n![mysql](mysql.png)\n"
    )
    return "\n".join(lines)
