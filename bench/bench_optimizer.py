"""Query optimizer: the same MySQL -> filter -> CSV pipeline with the optimizer on and off.

One MariaDB table of ``--rows`` (default 2,000,000) rows and 7 mixed columns (BIGINT key, INT,
DECIMAL(12,2), DATETIME(6), VARCHAR(16), VARCHAR(64) with 10% NULLs, DOUBLE) is created once,
server-side (``INSERT ... SELECT`` from MariaDB's SEQUENCE engine), in the database
``osiris_bench_opt``, and reused while its comment says it holds the same rows.

The pipeline reads ``SELECT *`` from it, keeps about 10% of the rows with a ``transform.filter``
(``score < 1234.5``, an unindexed DOUBLE) and 2 of the 7 columns, and writes them to a CSV file. It
is compiled once, and once more through the query optimizer (``oml/optimize.py``), which moves the
condition and the column list into the query; both manifests are submitted to the same started
local cluster (2 workers), ``--repeats`` times each (default 3), alternating which goes first;
medians are reported. Both runs must write byte-identical files. Also reported per variant: the
rows the extractor fetched and the size of that result in MySQL's text protocol.
Goal (issue 4): at least 30% less time with it on.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    RESULTS,
    WORK,
    Compiled,
    compile_file,
    fmt,
    machine,
    md_table,
    median,
    pyplot,
    require_success,
    save_figure,
    submit,
    write_results,
)
from _mysql_tables import conn_kwargs, connections_yaml, ensure_orders_table, server_version

DATABASE = "osiris_bench_opt"
TABLE_VERSION = 1  # in the table's comment: a new version rebuilds it
BATCH_ROWS = 65536
WHERE = "score < 1234.5"  # score is spread evenly over [0, 12344.6]: about 10% of the rows pass
KEPT = ["id", "note"]
ALL_COLUMNS = ["id", "user_id", "amount", "created_at", "status", "note", "score"]
GOAL_LESS_TIME = 0.30  # at least 30% less time with the optimizer on


def connect(database: str | None = DATABASE) -> Any:
    import pymysql

    return pymysql.connect(**conn_kwargs(database), autocommit=True)


def ensure_table(rows: int) -> dict[str, Any]:
    """Create the table once (server-side INSERT ... SELECT from seq_N_to_M); reuse it when it matches."""
    return ensure_orders_table(DATABASE, rows, f"osiris-flight optimizer bench v{TABLE_VERSION} rows={rows}")


def result_mb(query: str, columns: list[str]) -> float:
    """MB a query's result takes in MySQL's text protocol, computed by the server (values, one
    length byte each, a 4-byte packet header per row): what the extractor has to receive and split.

    Deterministic, unlike the server's global Bytes_sent counter, which other clients add to."""
    per_row = " + ".join(f"1 + COALESCE(LENGTH(`{c}`), 0)" for c in columns)
    conn = connect()
    try:
        with conn.cursor() as cur:
            cur.execute(f"SELECT COALESCE(SUM(4 + {per_row}), 0) FROM ({query}) AS q")
            return int(cur.fetchone()[0]) / 1e6
    finally:
        conn.close()


def pipeline_yaml(table: str, out: Path) -> str:
    return f"""oml_version: "0.2.0"
name: bench_optimizer
steps:
  - id: extract
    component: mysql.extractor
    mode: read
    config: {{connection: "@mysql.bench", query: "SELECT * FROM {table}"}}
  - id: keep
    component: transform.filter
    mode: transform
    depends_on: [extract]
    config: {{where: "{WHERE}", columns: {json.dumps(KEPT)}}}
  - id: write
    component: filesystem.csv_writer
    mode: write
    depends_on: [keep]
    config: {{path: "{out}", column_order: input}}
"""


def compile_variants(table: str, work: Path) -> dict[str, Compiled]:
    from osiris_flight.components.registry import build_registry
    from osiris_flight.oml.optimize import optimize
    from osiris_flight.oml.plan import plan_manifest

    registry = build_registry()
    compiled: dict[str, Compiled] = {}
    for variant in ("off", "on"):
        path = work / f"{variant}.yaml"
        path.write_text(pipeline_yaml(table, work / "out" / f"{variant}.csv"), encoding="utf-8")
        plain = compile_file(path, registry)
        if variant == "on":
            started = time.perf_counter()
            manifest, _ = optimize(plain.manifest, registry)
            plain = Compiled(manifest, plan_manifest(manifest, registry), plain.compile_s)
            print(f"  optimize took {1000 * (time.perf_counter() - started):.1f} ms", flush=True)
        compiled[variant] = plain
    return compiled


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            digest.update(chunk)
    return digest.hexdigest()


def measure(compiled: dict[str, Compiled], work: Path, repeats: int) -> dict[str, list[dict[str, Any]]]:
    from osiris_flight.cluster.local import LocalCluster
    from osiris_flight.config import Config, EngineConfig

    runs: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    cluster = LocalCluster(Config(engine=EngineConfig(workers=2, slots_per_worker=2)))
    cluster.start()
    try:
        for i in range(repeats):
            line = f"  round {i + 1}:"
            for variant in ("off", "on") if i % 2 == 0 else ("on", "off"):
                os.sync()
                run = submit(cluster.address, compiled[variant], work / "run_logs", batch_rows=BATCH_ROWS)
                require_success(run, f"optimizer {variant}, round {i + 1}")
                steps = run.summary.get("steps", {})
                runs[variant].append(
                    {
                        "wall_s": run.wall_s,
                        "rows_fetched": steps["extract"]["rows"],
                        "rows_written": steps["write"]["rows"],
                        "output_sha256": sha256(work / "out" / f"{variant}.csv"),
                    }
                )
                line += f" {variant} {run.wall_s:.2f} s,"
            print(line.rstrip(","), flush=True)
    finally:
        cluster.stop()
    return runs


def summarize(runs: list[dict[str, Any]], compiled: Compiled) -> dict[str, Any]:
    query = str(compiled.manifest.step("extract").config["query"])
    columns = ALL_COLUMNS if query.startswith("SELECT * ") else KEPT
    return {
        "runs": runs,
        "median_s": median([r["wall_s"] for r in runs]),
        "rows_fetched": runs[-1]["rows_fetched"],
        "rows_written": runs[-1]["rows_written"],
        "query": query,
        "result_mb": result_mb(query, columns),
    }


def plot(results: dict[str, Any], path: Path) -> None:
    plt = pyplot()

    off, on = results["off"], results["on"]
    labels = ["optimizer off\n(SELECT *, filter in the engine)", "optimizer on\n(WHERE + 2 columns in MySQL)"]
    colors = ["tab:grey", "tab:blue"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.4))
    times = [off["median_s"], on["median_s"]]
    bars = ax1.bar([0, 1], times, color=colors)
    for x, variant in enumerate(("off", "on")):
        ax1.scatter(
            [x] * len(results[variant]["runs"]),
            [r["wall_s"] for r in results[variant]["runs"]],
            color="black",
            s=12,
            zorder=3,
        )
    for bar, v in zip(bars, times, strict=True):
        ax1.text(bar.get_x() + bar.get_width() / 2, v, f"{v:.2f} s", ha="center", va="bottom", fontsize=9)
    ax1.axhline(
        off["median_s"] * (1 - GOAL_LESS_TIME),
        color="grey",
        ls=":",
        lw=1,
        label=f"goal: {GOAL_LESS_TIME:.0%} less than off",
    )
    ax1.set_xticks([0, 1], labels, fontsize=8)
    ax1.set_ylabel("seconds per run (median; dots: each run)")
    ax1.set_title(f"run time: {results['less_time']:.0%} less (lower is better)", fontsize=10)
    ax1.legend(fontsize=8)
    ax1.grid(axis="y", alpha=0.3)
    ax1.set_ylim(0, max(r["wall_s"] for v in ("off", "on") for r in results[v]["runs"]) * 1.2)

    mbs = [off["result_mb"], on["result_mb"]]
    bars = ax2.bar([0, 1], mbs, color=colors)
    for bar, v, variant in zip(bars, mbs, ("off", "on"), strict=True):
        rows = results[variant]["rows_fetched"]
        ax2.text(
            bar.get_x() + bar.get_width() / 2,
            v,
            f"{v:,.0f} MB\n{rows:,} rows",
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax2.set_xticks([0, 1], labels, fontsize=8)
    ax2.set_ylabel("MB of result rows (MySQL text protocol)")
    ax2.set_title("what MySQL sends to the extractor", fontsize=10)
    ax2.set_ylim(0, max(mbs) * 1.3)
    ax2.grid(axis="y", alpha=0.3)
    fig.suptitle(
        f"SELECT * from {results['rows']:,} rows x 7 columns -> filter ({WHERE}, 2 columns) -> CSV; "
        f"MariaDB {results['server'].split('-')[0]}, {results['machine']['nproc']} CPUs, "
        f"{results['machine']['date_utc']}",
        fontsize=9,
    )
    save_figure(fig, path)


def markdown(results: dict[str, Any]) -> str:
    off, on = results["off"], results["on"]
    m = results["machine"]
    verdict = "**met**" if results["goal_met"] else "**goal missed**"
    rows = [
        [
            name,
            fmt(r["median_s"]),
            ", ".join(fmt(x["wall_s"]) for x in r["runs"]),
            f"{r['rows_fetched']:,}",
            fmt(r["result_mb"], 1),
            f"{r['rows_written']:,}",
        ]
        for name, r in (("optimizer off", off), ("optimizer on", on))
    ]
    return f"""# Query optimizer: MySQL `SELECT *` -> filter -> CSV, on vs off

Goal (issue 4): at least {GOAL_LESS_TIME:.0%} less time with the optimizer on than off, same output.
Result: **{results["less_time"]:.1%} less time** ({fmt(off["median_s"])} s -> {fmt(on["median_s"])} s,
median of {results["repeats"]}), output files byte-identical: {results["same_output"]}. Verdict: {verdict}.

{m["date_utc"]}; {m["nproc"]} CPUs ({m["cpu"]}), {m["ram_gb"]} GB RAM; Python {m["python"]},
pyarrow {m["pyarrow"]}; MariaDB {results["server"]}; engine at commit `{m["engine_commit"]}`
{"with uncommitted engine changes" if m["engine_uncommitted_changes"] else ""}; 1-minute load average
{results["load_start"]} at the start (other work on the machine skews both sides).

Pipeline: `mysql.extractor` (`query: SELECT * FROM {results["table"]["table"]}`, {results["rows"]:,} rows x 7
columns) -> `transform.filter` (`where: {WHERE}`, `columns: {KEPT}`) -> `filesystem.csv_writer`, submitted to
one started local cluster (2 workers, 2 slots each), the two variants alternating. With the optimizer
on, the read becomes:

```sql
{results["rewritten_query"]}
```

and the filter's `where` becomes `TRUE` (it passes batches on untouched).

{md_table(["variant", "median s", "runs s", "rows fetched", "result MB", "rows written"], rows)}
"result MB": the size of the read's result in MySQL's text protocol (values, length bytes, packet
headers), computed by the server -- what the extractor receives and decodes.
Regenerate with `.venv/bin/python bench/bench_optimizer.py` (or `bench/run_all.sh`).

![optimizer](optimizer.png)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.rows < 2_000_000:
        print(f"note: {args.rows:,} rows is below the 2,000,000 the goal is stated for", flush=True)
    load_start = round(os.getloadavg()[0], 2)
    made = ensure_table(args.rows)
    work = WORK / "optimizer"
    shutil.rmtree(work, ignore_errors=True)
    (work / "out").mkdir(parents=True)
    connections = work / "osiris_connections.yaml"
    connections.write_text(connections_yaml(DATABASE), encoding="utf-8")
    os.environ["OSIRIS_CONNECTIONS_FILE"] = str(connections)  # read by submit's resolve_connections
    compiled = compile_variants(made["table"], work)
    runs = measure(compiled, work, args.repeats)
    hashes = {r["output_sha256"] for v in ("off", "on") for r in runs[v]}
    if len(hashes) != 1:
        raise SystemExit(f"the optimizer changed the output: {len(hashes)} different files")
    off, on = summarize(runs["off"], compiled["off"]), summarize(runs["on"], compiled["on"])
    if off["rows_written"] != on["rows_written"] or off["rows_fetched"] != args.rows:
        raise SystemExit(f"unexpected row counts: off {off}, on {on}")
    less = 1 - on["median_s"] / off["median_s"]
    results: dict[str, Any] = {
        "rows": args.rows,
        "repeats": args.repeats,
        "table": made,
        "server": server_version(),
        "machine": machine(),
        "load_start": load_start,
        "where": WHERE,
        "kept_columns": KEPT,
        "rewritten_query": compiled["on"].manifest.step("extract").config["query"],
        "optimizations": list(compiled["on"].manifest.optimizations),
        "off": off,
        "on": on,
        "less_time": less,
        "same_output": True,
        "goal_less_time": GOAL_LESS_TIME,
        "goal_met": less >= GOAL_LESS_TIME,
    }
    plot(results, RESULTS / "optimizer.png")
    write_results("optimizer", results, markdown(results))
    print(
        f"  optimizer off {off['median_s']:.2f} s ({off['rows_fetched']:,} rows fetched), "
        f"on {on['median_s']:.2f} s ({on['rows_fetched']:,} rows fetched): {less:.1%} less time "
        f"(goal >= {GOAL_LESS_TIME:.0%}: {'met' if results['goal_met'] else 'MISSED'}); same output",
        flush=True,
    )
    shutil.rmtree(work / "out", ignore_errors=True)


if __name__ == "__main__":
    main()
