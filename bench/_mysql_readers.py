"""bench_mysql's readers: what each child process (``bench_mysql.py --child NAME``) runs and measures.

A reader is a generator: it yields 0 once its imports are done (the read starts there), then the
rows of every batch it reads or writes. ``child_main`` drives one and prints one JSON line: rows,
read seconds, RSS after imports, peak RSS, and the same two for private (anonymous) memory. Keep this
module's top-level imports light: they are part of every reader's "RSS after imports".
"""

from __future__ import annotations

import json
import resource
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

from _common import MYSQL_HOST, MYSQL_PASSWORD, MYSQL_PORT, MYSQL_USER
from _mysql_tables import conn_kwargs, connection_fields

from osiris_flight.runtime import allocator

DATABASE = "osiris_bench"  # bench_mysql's database (bench_optimizer has its own)
BATCH_ROWS = 65536
PANDAS_CHUNK = 10_000  # the milestone's MySQLStreamingExtractor default batch_size
COLUMNS = "id, user_id, amount, created_at, status, note, score"


def cx_url() -> str:
    auth = MYSQL_USER + (f":{MYSQL_PASSWORD}" if MYSQL_PASSWORD else "")
    return f"mysql://{auth}@{MYSQL_HOST}:{MYSQL_PORT}/{DATABASE}"


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
        connections={"@mysql.bench": connection_fields(DATABASE)},
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
    conn = pymysql.connect(**conn_kwargs(DATABASE), cursorclass=pymysql.cursors.SSCursor)
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
    conn = pymysql.connect(**conn_kwargs(DATABASE), cursorclass=pymysql.cursors.SSCursor)
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
    conn = pymysql.connect(**conn_kwargs(DATABASE), cursorclass=pymysql.cursors.SSCursor)
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
    conns = {"@mysql.bench": connection_fields(DATABASE)}
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
