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
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    MYSQL_HOST,
    MYSQL_PASSWORD,
    MYSQL_PORT,
    MYSQL_USER,
    RESULTS,
    WORK,
    RssSampler,
    compile_file,
    fmt,
    machine,
    md_table,
    median,
    require_success,
    submit,
    write_results,
)

from osiris_flight.runtime import allocator

DATABASE = "osiris_bench"
TABLE_VERSION = 1
BATCH_ROWS = 65536
PANDAS_CHUNK = 10_000  # the milestone's MySQLStreamingExtractor default batch_size
COLUMNS = "id, user_id, amount, created_at, status, note, score"

# Goals of issue 4.
GOAL_NATIVE_VS_CX = 1.0  # native extractor rows/s >= connectorx rows/s
GOAL_NATIVE_VS_PANDAS = 10.0  # native extractor rows/s >= 10x pandas.read_sql
GOAL_RSS_MB = 150.0  # peak RSS of the reading process
GOAL_ENGINE_VS_CX_CSV = 0.8  # engine MySQL -> CSV rows/s >= 0.8x connectorx + pyarrow.csv
GOAL_ENGINE_VS_PANDAS_CSV = 10.0  # and >= 10x pymysql + pandas.to_csv


def table_name(rows: int) -> str:
    return f"orders7_{rows}"


def conn_kwargs(database: str | None = DATABASE) -> dict[str, Any]:
    kw: dict[str, Any] = {
        "host": MYSQL_HOST,
        "port": MYSQL_PORT,
        "user": MYSQL_USER,
        "password": MYSQL_PASSWORD,
        "charset": "utf8mb4",
    }
    if database:
        kw["database"] = database
    return kw


def connection_fields() -> dict[str, Any]:
    """The resolved ``@mysql.bench`` connection, as osiris_connections.yaml gives it to operators."""
    return {
        "host": MYSQL_HOST,
        "port": MYSQL_PORT,
        "database": DATABASE,
        "user": MYSQL_USER,
        "password": MYSQL_PASSWORD,
    }


def cx_url() -> str:
    auth = MYSQL_USER + (f":{MYSQL_PASSWORD}" if MYSQL_PASSWORD else "")
    return f"mysql://{auth}@{MYSQL_HOST}:{MYSQL_PORT}/{DATABASE}"


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
    import pymysql

    table = table_name(rows)
    comment = f"osiris-flight bench v{TABLE_VERSION} rows={rows}"
    admin = pymysql.connect(**conn_kwargs(None), autocommit=True)
    try:
        with admin.cursor() as cur:
            cur.execute(
                f"CREATE DATABASE IF NOT EXISTS `{DATABASE}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
            )
            cur.execute(f"USE `{DATABASE}`")  # the SEQUENCE engine's seq_* tables need a database
            cur.execute(
                "SELECT TABLE_COMMENT FROM information_schema.TABLES WHERE TABLE_SCHEMA=%s AND TABLE_NAME=%s",
                (DATABASE, table),
            )
            found = cur.fetchone()
            if found and found[0] == comment:
                cur.execute(f"SELECT MIN(id), MAX(id) FROM `{DATABASE}`.`{table}`")
                if cur.fetchone() == (1, rows):
                    return {"table": table, "created": False, "create_s": 0.0}
            print(f"creating {DATABASE}.{table} ({rows:,} rows, server-side) ...", flush=True)
            started = time.perf_counter()
            cur.execute(f"DROP TABLE IF EXISTS `{DATABASE}`.`{table}`")
            cur.execute(
                f"""CREATE TABLE `{DATABASE}`.`{table}` (
                    id BIGINT NOT NULL PRIMARY KEY,
                    user_id INT NOT NULL,
                    amount DECIMAL(12,2) NOT NULL,
                    created_at DATETIME(6) NOT NULL,
                    status VARCHAR(16) NOT NULL,
                    note VARCHAR(64) NULL,
                    score DOUBLE NOT NULL
                ) ENGINE=InnoDB COMMENT='building'"""
            )
            # Deterministic values from the sequence; one statement per million rows keeps the undo
            # log small. status has 5 values; note is NULL on every 10th row; created_at spans a year.
            step = 1_000_000
            for low in range(1, rows + 1, step):
                high = min(rows, low + step - 1)
                cur.execute(
                    f"""INSERT INTO `{DATABASE}`.`{table}`
                    SELECT seq,
                           (seq * 7919) % 1000003,
                           ((seq * 104729) % 10000000) / 100,
                           TIMESTAMP('2024-01-01') + INTERVAL (seq * 6311007) MICROSECOND,
                           ELT(1 + seq % 5, 'new', 'paid', 'shipped', 'cancelled', 'refunded'),
                           IF(seq % 10 = 0, NULL,
                              CONCAT('order ', seq, ' for customer ', (seq * 7919) % 1000003)),
                           (seq % 99991) * 0.123456789e0
                    FROM seq_{low}_to_{high}"""
                )
            cur.execute(f"ALTER TABLE `{DATABASE}`.`{table}` COMMENT=%s", (comment,))
            cur.execute(f"ANALYZE TABLE `{DATABASE}`.`{table}`")
            cur.fetchall()
            took = time.perf_counter() - started
            print(f"created {DATABASE}.{table} in {took:.1f} s", flush=True)
            return {"table": table, "created": True, "create_s": took}
    finally:
        admin.close()


def table_facts(table: str) -> dict[str, Any]:
    import pymysql

    conn = pymysql.connect(**conn_kwargs())
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT DATA_LENGTH, AVG_ROW_LENGTH FROM information_schema.TABLES "
                "WHERE TABLE_SCHEMA=%s AND TABLE_NAME=%s",
                (DATABASE, table),
            )
            data_length, avg_row = cur.fetchone()
            cur.execute(f"SHOW CREATE TABLE `{table}`")
            ddl = cur.fetchone()[1]
        return {"data_mb": int(data_length) / 2**20, "avg_row_bytes": int(avg_row), "ddl": ddl}
    finally:
        conn.close()


def decoder_key_exists() -> bool:
    from osiris_flight.components.mysql.config import EXTRACTOR_SCHEMA

    return "decoder" in EXTRACTOR_SCHEMA["properties"]


# -- readers (each runs in a child process: ``--child NAME``) ------------------------------------------
def read_osiris(table: str, decoder: str | None) -> Iterator[int]:
    """The engine's mysql.extractor operator, built from its component spec and drained in this
    process. Only the MySQL component package is imported (as a reader needs), not every component
    ``build_registry`` loads (CSV, Parquet, filter, ...: ~20 MB more RSS that a stream does not use)."""
    from osiris_flight.components.base import Source, StepContext
    from osiris_flight.components.mysql import COMPONENTS

    spec = next(c for c in COMPONENTS if c.name == "mysql.extractor")
    config: dict[str, Any] = {"connection": "@mysql.bench", "table": table}
    if decoder is not None:
        config["decoder"] = decoder
    ctx = StepContext(
        step_id="extract",
        component="mysql.extractor",
        config=config,
        connections={"@mysql.bench": connection_fields()},
        batch_rows=BATCH_ROWS,
    )
    yield 0  # imports and registry done: the read starts here
    operator = spec.operator(ctx)
    assert isinstance(operator, Source)
    stream = operator.open()
    for batch in stream.batches():
        yield batch.num_rows


def read_pandas(table: str) -> Iterator[int]:
    """pandas.read_sql(chunksize) over a pymysql connection (unbuffered, so chunks stream)."""
    import warnings

    import pandas as pd
    import pymysql
    import pymysql.cursors

    warnings.simplefilter("ignore", UserWarning)  # pandas: "only supports SQLAlchemy ... or sqlite3"
    yield 0
    conn = pymysql.connect(**conn_kwargs(), cursorclass=pymysql.cursors.SSCursor)
    try:
        for df in pd.read_sql(f"SELECT {COLUMNS} FROM `{table}`", conn, chunksize=PANDAS_CHUNK):
            yield len(df)
    finally:
        conn.close()


def read_connectorx(table: str, protocol: Literal["binary", "text"] = "binary") -> Iterator[int]:
    """connectorx (Rust) as a stream of Arrow batches; ``binary`` is its default MySQL protocol,
    ``text`` the one the extractor reads (the server formats every value as text)."""
    import connectorx as cx

    yield 0
    reader = cx.read_sql(
        cx_url(),
        f"SELECT {COLUMNS} FROM `{table}`",
        return_type="arrow_stream",
        batch_size=BATCH_ROWS,
        protocol=protocol,
    )
    for batch in reader:
        yield batch.num_rows


def read_sscursor(table: str) -> Iterator[int]:
    """pymysql SSCursor (unbuffered), fetchmany -> columns -> pa.array with the exact types."""
    import pyarrow as pa
    import pymysql
    import pymysql.cursors

    schema = pa.schema(
        [
            ("id", pa.int64()),
            ("user_id", pa.int32()),
            ("amount", pa.decimal128(12, 2)),
            ("created_at", pa.timestamp("us")),
            ("status", pa.string()),
            ("note", pa.string()),
            ("score", pa.float64()),
        ]
    )
    yield 0
    conn = pymysql.connect(**conn_kwargs(), cursorclass=pymysql.cursors.SSCursor)
    try:
        with conn.cursor() as cur:
            cur.execute(f"SELECT {COLUMNS} FROM `{table}`")
            while rows := cur.fetchmany(BATCH_ROWS):
                columns = list(zip(*rows, strict=True))
                batch = pa.RecordBatch.from_arrays(
                    [pa.array(c, type=f.type) for c, f in zip(columns, schema, strict=True)], schema=schema
                )
                yield batch.num_rows
    finally:
        conn.close()


def csv_connectorx(table: str, out: Path) -> Iterator[int]:
    """Hand-written script: connectorx arrow_stream -> pyarrow.csv.CSVWriter."""
    import connectorx as cx
    import pyarrow.csv as pacsv

    yield 0
    reader = cx.read_sql(
        cx_url(), f"SELECT {COLUMNS} FROM `{table}`", return_type="arrow_stream", batch_size=BATCH_ROWS
    )
    with pacsv.CSVWriter(str(out), reader.schema) as writer:
        for batch in reader:
            writer.write_batch(batch)
            yield batch.num_rows


def csv_pandas(table: str, out: Path) -> Iterator[int]:
    """pymysql (unbuffered) + pandas.read_sql(chunksize) + DataFrame.to_csv appended chunk by chunk."""
    import warnings

    import pandas as pd
    import pymysql
    import pymysql.cursors

    warnings.simplefilter("ignore", UserWarning)
    yield 0
    conn = pymysql.connect(**conn_kwargs(), cursorclass=pymysql.cursors.SSCursor)
    try:
        with open(out, "w", encoding="utf-8", newline="") as f:
            first = True
            for df in pd.read_sql(f"SELECT {COLUMNS} FROM `{table}`", conn, chunksize=PANDAS_CHUNK):
                df.to_csv(f, header=first, index=False)
                first = False
                yield len(df)
    finally:
        conn.close()


def csv_operators(table: str, out: Path) -> Iterator[int]:
    """The engine's own two operators (mysql.extractor -> filesystem.csv_writer, same configs as the
    pipeline) run in this process without a cluster: splits the engine's gap into its own cost and
    the operators' cost."""
    from osiris_flight.components.base import Sink, Source, StepContext
    from osiris_flight.components.registry import build_registry

    registry = build_registry()
    conns = {"@mysql.bench": connection_fields()}
    ext_spec, csv_spec = registry.get("mysql.extractor"), registry.get("filesystem.csv_writer")
    assert ext_spec is not None and csv_spec is not None
    extractor = ext_spec.operator(
        StepContext(
            step_id="extract",
            component="mysql.extractor",
            config={"connection": "@mysql.bench", "table": table},
            connections=conns,
            batch_rows=BATCH_ROWS,
        )
    )
    writer = csv_spec.operator(
        StepContext(
            step_id="write",
            component="filesystem.csv_writer",
            config={"path": str(out)},
            work_dir=out.parent,
            output_dir=out.parent,
            batch_rows=BATCH_ROWS,
        )
    )
    assert isinstance(extractor, Source) and isinstance(writer, Sink)
    yield 0
    yield writer.write(extractor.open()).rows


CHILD_READERS: dict[str, Callable[[str, Path], Iterator[int]]] = {
    "binary": lambda t, o: read_osiris(t, "binary"),
    "native": lambda t, o: read_osiris(t, "native"),
    "reference": lambda t, o: read_osiris(t, "reference"),
    "extractor": lambda t, o: read_osiris(t, None),  # before the decoder key exists
    "pandas": lambda t, o: read_pandas(t),
    "connectorx": lambda t, o: read_connectorx(t),
    "connectorx_text": lambda t, o: read_connectorx(t, "text"),
    "sscursor": lambda t, o: read_sscursor(t),
    "csv_connectorx": csv_connectorx,
    "csv_pandas": csv_pandas,
    "csv_operators": csv_operators,
}


# The engine's operators run as a worker runs them: Arrow's jemalloc pool and runtime/allocator.py's
# settings (the baselines keep their libraries' defaults).
ENGINE_READERS = frozenset({"binary", "native", "reference", "extractor", "csv_operators"})


def _status_kib(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


class PrivatePeak:
    """Peak of the process's anonymous (private) resident memory, sampled every 10 ms in a thread:
    RSS without the file-backed pages of shared libraries (pyarrow's alone map ~66 MB of them),
    which every process using those libraries shares and the kernel maps in as code runs."""

    def __init__(self) -> None:
        self.peak_kib = _status_kib("RssAnon")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.peak_kib = max(self.peak_kib, _status_kib("RssAnon"))

    def __enter__(self) -> PrivatePeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_kib = max(self.peak_kib, _status_kib("RssAnon"))


def child_main(name: str, table: str, out: Path) -> None:
    """Run one reader; print one JSON line: rows, read seconds, RSS after imports, peak RSS, and the
    same two for private (anonymous) memory."""
    import psutil

    if name in ENGINE_READERS:
        allocator.tune()  # what a worker does at start (its pool was chosen by run_child's env)
    gen = CHILD_READERS[name](table, out)
    assert next(gen) == 0
    rss_ready = psutil.Process().memory_info().rss
    private_ready = _status_kib("RssAnon") * 1024
    with PrivatePeak() as private:
        started = time.perf_counter()
        rows = sum(gen)
        read_s = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    report = {
        "rows": rows,
        "read_s": read_s,
        "rss_ready": rss_ready,
        "peak_rss": peak,
        "private_ready": private_ready,
        "peak_private": private.peak_kib * 1024,
        "pandas_loaded": "pandas" in sys.modules,  # ~40 MB of RSS when a reader pulls it in
    }
    print(json.dumps(report), flush=True)


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


def connections_yaml() -> str:
    return (
        "version: 1\nconnections:\n  mysql:\n    bench:\n"
        f"      host: {MYSQL_HOST}\n      port: {MYSQL_PORT}\n      database: {DATABASE}\n"
        f'      user: {MYSQL_USER}\n      password: "{MYSQL_PASSWORD}"\n'
    )


def csv_rows(path: Path) -> int:
    """Data lines of a CSV written by any of the variants (no value holds a newline)."""
    with open(path, "rb") as f:
        lines = sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 24), b""))
    return lines - 1


def cli_run(pipeline: Path, cwd: Path) -> float:
    exe = Path(sys.executable).parent / "osiris-flight"
    started = time.perf_counter()
    proc = subprocess.run(
        [str(exe), "run", str(pipeline), "--quiet", "--json", "--run-logs", str(cwd / "run_logs")],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=900,
    )
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"osiris-flight run failed ({proc.returncode}): {proc.stdout}\n{proc.stderr}")
    return wall


# -- measuring -------------------------------------------------------------------------------------------
def rotate(items: list[str], i: int) -> list[str]:
    k = i % len(items)
    return items[k:] + items[:k]


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
    (work / "osiris_connections.yaml").write_text(connections_yaml(), encoding="utf-8")
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
        e2e.append(cli_run(pipeline, work))
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


# -- reporting -------------------------------------------------------------------------------------------
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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
            [
                "engine, started cluster",
                len(e["runs"]),
                fmt(e["median_s"]),
                f"{e['rows_per_s']:,.0f}",
                "",
                "",
                "",
            ],
            [
                "engine, `osiris-flight run` CLI",
                len(cli["runs_s"]),
                fmt(cli["median_s"]),
                f"{cli['rows_per_s']:,.0f}",
                "",
                "",
                "",
            ],
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


def server_version() -> str:
    import pymysql

    conn = pymysql.connect(**conn_kwargs(None))
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT VERSION()")
            return str(cur.fetchone()[0])
    finally:
        conn.close()


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
        "table": {**made, **table_facts(table)},
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
