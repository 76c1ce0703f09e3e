"""MySQL -> Arrow and MySQL -> CSV: the mysql.extractor against pandas, connectorx and pymysql, one table.

One MariaDB table of ``--rows`` (default 5,000,000) rows and 7 mixed columns (BIGINT key, INT,
DECIMAL(12,2), DATETIME(6), low-cardinality VARCHAR(16), VARCHAR(64) with 10% NULLs, DOUBLE) is
created once, server-side (``INSERT ... SELECT`` from MariaDB's SEQUENCE engine), in the database
``osiris_bench``, and reused by later runs while its comment says it holds the same rows.

(1) Single-stream MySQL -> Arrow, each reader in its own subprocess (so its peak RSS is its own):
    the engine's ``mysql.extractor`` operator driven in-process through the public component API
    with ``decoder: native`` and ``decoder: reference`` (when the config schema has no ``decoder``
    key yet, the extractor runs as it is, labelled by what it is, and the native row says it is
    missing); ``pandas.read_sql(chunksize=10000)`` over a pymysql unbuffered connection (the
    milestone's approach); ``connectorx`` (``return_type="arrow_stream"``, Rust) with its default
    binary protocol and with the text protocol the extractor reads; and a pymysql
    ``SSCursor`` whose rows are turned into Arrow batches (issue 4's ~80k rows/s reference). Each
    reports rows/s over the read (connect to last batch, imports excluded), its RSS after imports
    and its peak RSS (``ru_maxrss``, the kernel's high-water mark), and the same for its private
    memory (``RssAnon``: RSS without shared library pages). The engine's readers run with a
    worker's allocator settings (jemalloc pool, ``osiris_flight/runtime/allocator.py``).
(2) MySQL -> CSV: ``mysql.extractor -> filesystem.csv_writer`` through the engine (submitted to a
    started local cluster, and end to end with the ``osiris-flight run`` CLI), against a hand-written
    ``connectorx`` + ``pyarrow.csv`` script and ``pymysql`` + ``pandas.to_csv`` in chunks; and the
    engine's own two operators run in one process without a cluster (the engine's own cost).

Fast variants run ``--repeats`` times (default 3), slow pymysql/pandas baselines ``--slow-repeats``
times (default 1), interleaved, the order rotated every round; medians are reported. connectorx is
installed into this interpreter's environment with pip when it is missing (an optional bench
dependency; the run says so), and its rows are marked unavailable if that fails.

This script runs the rounds and writes the results; the table is made by ``_mysql_tables.py`` (shared
with bench_optimizer), the readers each child process runs are in ``_mysql_readers.py``, and
mysql.md / mysql.png are written by ``_mysql_report.py``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    RESULTS,
    WORK,
    RssSampler,
    cli_run,
    compile_file,
    machine,
    median,
    require_success,
    rotate,
    submit,
    write_results,
)
from _mysql_readers import BATCH_ROWS, DATABASE, ENGINE_READERS, child_main
from _mysql_report import markdown, plot
from _mysql_tables import connections_yaml, ensure_orders_table, server_version, table_facts

from osiris_flight.runtime import allocator

TABLE_VERSION = 1  # in the table's comment: a new version rebuilds it


# -- setup ---------------------------------------------------------------------------------------------
def ensure_connectorx() -> str:
    """'' when connectorx imports (installing it with pip when missing), else why it cannot."""
    if importlib.util.find_spec("connectorx") is not None:
        return ""
    print("connectorx is missing: installing it into this environment with pip (optional bench dependency)")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "connectorx"], capture_output=True, text=True
    )
    importlib.invalidate_caches()
    if proc.returncode != 0 or importlib.util.find_spec("connectorx") is None:
        why = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["unknown error"]
        print(f"connectorx could not be installed: {why[0]}")
        return f"pip install connectorx failed: {why[0]}"
    print("installed connectorx into", sys.prefix)
    return ""


def ensure_table(rows: int) -> dict[str, Any]:
    """Create the table once (server-side INSERT ... SELECT from seq_1_to_N); reuse it when it matches."""
    return ensure_orders_table(DATABASE, rows, f"osiris-flight bench v{TABLE_VERSION} rows={rows}")


def decoder_key_exists() -> bool:
    from osiris_flight.components.mysql.config import EXTRACTOR_SCHEMA

    return "decoder" in EXTRACTOR_SCHEMA["properties"]


# -- a reader in its own process (this script with ``--child NAME``, see _mysql_readers.py) --------------
def run_child(name: str, table: str, out: Path | None = None) -> dict[str, Any]:
    env = dict(os.environ)
    if name in ENGINE_READERS:  # Arrow's pool is picked when pyarrow first allocates: set it up front
        env["ARROW_DEFAULT_MEMORY_POOL"] = allocator.ARROW_POOL
    proc = subprocess.run(
        [sys.executable, __file__, "--child", name, "--table", table, "--out", str(out or os.devnull)],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"reader {name} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- the engine pipeline ---------------------------------------------------------------------------------
def pipeline_yaml(table: str, out: Path) -> str:
    return f"""oml_version: "0.2.0"
name: bench_mysql_csv
steps:
  - id: extract
    component: mysql.extractor
    mode: read
    config: {{connection: "@mysql.bench", table: "{table}"}}
  - id: write
    component: filesystem.csv_writer
    mode: write
    depends_on: [extract]
    config: {{path: "{out}"}}
"""


def csv_rows(path: Path) -> int:
    """Data lines of a CSV written by any of the variants (no value holds a newline)."""
    with open(path, "rb") as f:
        lines = sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 24), b""))
    return lines - 1


# -- measuring -------------------------------------------------------------------------------------------
def summarize(runs: list[dict[str, Any]], rows: int) -> dict[str, Any]:
    read_s = median([r["read_s"] for r in runs])
    return {
        "runs": runs,
        "repeats": len(runs),
        "median_s": read_s,
        "rows_per_s": rows / read_s,
        "peak_rss_mb": max(r["peak_rss"] for r in runs) / 2**20,
        "rss_ready_mb": median([r["rss_ready"] for r in runs]) / 2**20,
        "peak_private_mb": max(r.get("peak_private", 0) for r in runs) / 2**20,
        "private_ready_mb": median([r.get("private_ready", 0) for r in runs]) / 2**20,
    }


def measure_readers(table: str, rows: int, readers: dict[str, int], rounds: int) -> dict[str, Any]:
    """``readers`` maps a child reader's name to its repeats; rounds interleave them (rotating order)."""
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in readers}
    for i in range(rounds):
        line = f"  arrow round {i + 1}:"
        for name in rotate(list(readers), i):
            if len(runs[name]) >= readers[name]:
                continue
            r = run_child(name, table)
            if r["rows"] != rows:
                raise SystemExit(f"reader {name} read {r['rows']} rows, expected {rows}")
            runs[name].append(r)
            line += f" {name} {r['read_s']:.2f} s / {r['peak_rss'] / 2**20:.0f} MB,"
        print(line.rstrip(","), flush=True)
    return {name: summarize(rs, rows) for name, rs in runs.items()}


def measure_csv(
    table: str, rows: int, work: Path, repeats: int, slow_repeats: int, cx_ok: bool
) -> dict[str, Any]:
    from osiris_flight.cluster.local import LocalCluster
    from osiris_flight.components.registry import build_registry
    from osiris_flight.config import Config, EngineConfig

    out = work / "out"
    out.mkdir(parents=True, exist_ok=True)
    (work / "osiris_connections.yaml").write_text(connections_yaml(DATABASE), encoding="utf-8")
    pipeline = work / "mysql_csv.yaml"
    pipeline.write_text(pipeline_yaml(table, out / "engine.csv"), encoding="utf-8")
    compiled = compile_file(pipeline, build_registry())

    scripts = {"csv_operators": repeats}
    if cx_ok:
        scripts["csv_connectorx"] = repeats
    scripts["csv_pandas"] = slow_repeats
    engine: list[dict[str, Any]] = []
    base: dict[str, list[dict[str, Any]]] = {k: [] for k in scripts}
    config = Config(engine=EngineConfig(workers=2, slots_per_worker=2))
    cluster = LocalCluster(config)
    cluster.start()
    try:
        assert cluster.process is not None
        sampler = RssSampler(cluster.process.pid, interval_s=0.05).start()
        idle = 0
        try:
            time.sleep(0.3)
            idle = max(s[1] for s in sampler.samples)
            for i in range(max(repeats, slow_repeats)):
                line = f"  csv round {i + 1}:"
                for key in rotate(["engine", *scripts], i):
                    os.sync()
                    if key == "engine":
                        if len(engine) >= repeats:
                            continue
                        t0 = time.monotonic()
                        run = submit(cluster.address, compiled, work / "run_logs", batch_rows=BATCH_ROWS)
                        t1 = time.monotonic()
                        require_success(run, f"MySQL -> CSV run {i + 1}")
                        window = sampler.window(t0, t1) or sampler.samples[-1:]
                        engine.append(
                            {
                                "wall_s": run.wall_s,
                                "cluster_peak_rss": max(s[1] for s in window),
                                "worker_peak_rss": max(
                                    max((v for p, v in s[2].items() if p != cluster.process.pid), default=0)
                                    for s in window
                                ),
                            }
                        )
                        line += f" engine {run.wall_s:.2f} s,"
                        continue
                    if len(base[key]) >= scripts[key]:
                        continue
                    r = run_child(key, table, out / f"{key}.csv")
                    if r["rows"] != rows:
                        raise SystemExit(f"{key} wrote {r['rows']} rows, expected {rows}")
                    base[key].append(r)
                    line += f" {key} {r['read_s']:.2f} s,"
                print(line.rstrip(","), flush=True)
        finally:
            sampler.stop()
    finally:
        cluster.stop()
    written = csv_rows(out / "engine.csv")
    if written != rows:
        raise SystemExit(f"the engine's CSV holds {written} rows, expected {rows}")
    sizes = {k: (out / f"{k}.csv").stat().st_size / 1e6 for k in scripts}
    sizes["engine"] = (out / "engine.csv").stat().st_size / 1e6

    e2e: list[float] = []
    for i in range(repeats):
        os.sync()
        e2e.append(cli_run(pipeline, work, timeout=900))
        print(f"  csv via CLI #{i + 1}: {e2e[-1]:.2f} s", flush=True)
    shutil.rmtree(out, ignore_errors=True)

    eng = median([e["wall_s"] for e in engine])
    result: dict[str, Any] = {
        "tasks": compiled.tasks,
        "engine": {
            "runs": engine,
            "median_s": eng,
            "rows_per_s": rows / eng,
            "cluster_idle_rss_mb": idle / 2**20,
            "cluster_peak_rss_mb": max(e["cluster_peak_rss"] for e in engine) / 2**20,
            "worker_peak_rss_mb": max(e["worker_peak_rss"] for e in engine) / 2**20,
        },
        "cli": {"runs_s": e2e, "median_s": median(e2e), "rows_per_s": rows / median(e2e)},
        "baselines": {},
        "csv_mb": sizes,
    }
    for key, runs in base.items():
        s = summarize(runs, rows)
        s["engine_speedup"] = result["engine"]["rows_per_s"] / s["rows_per_s"]
        s["cli_speedup"] = result["cli"]["rows_per_s"] / s["rows_per_s"]
        result["baselines"][key] = s
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each fast variant")
    parser.add_argument("--slow-repeats", type=int, default=1, help="runs of the pymysql/pandas baselines")
    parser.add_argument("--skip-csv", action="store_true", help="only the MySQL -> Arrow readers")
    parser.add_argument("--note", action="append", default=[], help="a line for the report (repeatable)")
    parser.add_argument(
        "--rerender", action="store_true", help="only rewrite mysql.md and mysql.png from mysql.json"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--table", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(args.child, args.table, Path(args.out))
        return

    if args.rerender:
        saved = json.loads((RESULTS / "mysql.json").read_text(encoding="utf-8"))
        plot(saved, RESULTS / "mysql.png")
        write_results("mysql", saved, markdown(saved))
        return

    started = time.perf_counter()
    load_start = round(os.getloadavg()[0], 2)
    notes: list[str] = list(args.note)
    cx_missing = ensure_connectorx()
    if cx_missing:
        notes.append(f"connectorx unavailable ({cx_missing}): its rows are missing.")
    made = ensure_table(args.rows)
    table = made["table"]
    has_key = decoder_key_exists()
    readers: dict[str, int] = {}
    if has_key:
        readers["binary"] = args.repeats
        readers["native"] = args.repeats
        readers["reference"] = args.repeats
    else:
        readers["extractor"] = args.repeats
        notes.append(
            "mysql.extractor has no `decoder` config key yet: the extractor ran as it is (its one decoder, "
            "the pure-Python reference); the native row appears once the key exists."
        )
    if not cx_missing:
        readers["connectorx"] = args.repeats
        readers["connectorx_text"] = args.repeats
    readers["sscursor"] = args.slow_repeats
    readers["pandas"] = args.slow_repeats

    results: dict[str, Any] = {
        "rows": args.rows,
        "table": {**made, **table_facts(DATABASE, table)},
        "server": server_version(),
        "repeats": args.repeats,
        "slow_repeats": args.slow_repeats,
        "decoder_key": has_key,
        "load_start": load_start,
        "connectorx_missing": cx_missing,
    }
    if importlib.util.find_spec("connectorx") is not None:
        import connectorx

        results["connectorx_version"] = getattr(connectorx, "__version__", "?")
    results["arrow"] = measure_readers(table, args.rows, readers, max(readers.values()))
    if not args.skip_csv:
        work = WORK / "mysql"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        results["csv"] = measure_csv(table, args.rows, work, args.repeats, args.slow_repeats, not cx_missing)
    results["notes"] = notes
    results["script_s"] = time.perf_counter() - started
    results["machine"] = machine()
    plot(results, RESULTS / "mysql.png")
    write_results("mysql", results, markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
