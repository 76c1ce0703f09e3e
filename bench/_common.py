"""Shared helpers of the benchmark scripts: data, submitting runs, events, RSS sampling, reporting.

Only public engine APIs are used: ``LocalCluster`` + ``Client`` to run, ``compile_pipeline`` +
``plan_manifest`` to build what is submitted (exactly what ``osiris-flight run`` sends), the
component registry for the in-process baselines, and the run directory's ``events.jsonl``.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pyarrow as pa

from osiris_flight import protocol as p
from osiris_flight.cluster.client import Client
from osiris_flight.components.registry import Registry
from osiris_flight.oml.compile import compile_pipeline
from osiris_flight.oml.connections import resolve_connections
from osiris_flight.oml.model import Manifest, Plan
from osiris_flight.oml.plan import plan_manifest
from osiris_flight.runs.rundir import new_run_id

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "results"
# The MariaDB the MySQL benchmarks use (the tests' settings: OSIRIS_TEST_MYSQL_*).
MYSQL_HOST = os.environ.get("OSIRIS_TEST_MYSQL_HOST", "127.0.0.1")
MYSQL_PORT = int(os.environ.get("OSIRIS_TEST_MYSQL_PORT", "3306"))
MYSQL_USER = os.environ.get("OSIRIS_TEST_MYSQL_USER", "root")
MYSQL_PASSWORD = os.environ.get("OSIRIS_TEST_MYSQL_PASSWORD", "")
DATA = BENCH / ".data"
WORK = DATA / "work"

EVENT_TYPES = np.array(["view", "click", "add_to_cart", "purchase", "refund"])
EVENT_P = [0.6, 0.25, 0.08, 0.06, 0.01]
COUNTRIES = np.array(["US", "DE", "FR", "GB", "PL", "ES", "IT", "NL", "SE", "JP"])


# -- data -------------------------------------------------------------------------------------------
def events_batch(start: int, rows: int, rng: np.random.Generator) -> pa.RecordBatch:
    """Synthetic click-stream rows (~69 bytes per CSV line, ~58 bytes per row in Arrow)."""
    days = rng.integers(0, 90, rows)
    dates = (np.datetime64("2026-01-01") + days.astype("timedelta64[D]")).astype("datetime64[D]")
    kind = rng.choice(len(EVENT_TYPES), rows, p=EVENT_P)
    revenue = np.where(kind == 3, np.round(rng.gamma(2.0, 20.0, rows), 2), 0.0)
    product = rng.integers(1, 2_000, rows)
    page = np.char.add(np.char.add("/p/", product.astype(str)), "/details")
    return pa.record_batch(
        {
            "event_id": pa.array(np.arange(start, start + rows, dtype=np.int64)),
            "user_id": pa.array(rng.integers(1, 500_000, rows)),
            "product_id": pa.array(product),
            "date": pa.array(dates),
            "event_type": pa.array(EVENT_TYPES[kind]),
            "revenue": pa.array(revenue),
            "country": pa.array(COUNTRIES[rng.integers(0, len(COUNTRIES), rows)]),
            "page": pa.array(page),
        }
    )


def event_batches(rows: int, seed: int = 42, chunk: int = 250_000) -> Iterable[pa.RecordBatch]:
    rng = np.random.default_rng(seed)
    done = 0
    while done < rows:
        n = min(chunk, rows - done)
        yield events_batch(done, n, rng)
        done += n


# -- machine and reporting --------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "cpu": cpu,
        "python": platform.python_version(),
        "pyarrow": pa.__version__,
        "date_utc": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "load_avg_1m": round(os.getloadavg()[0], 2),  # other work on the machine skews every figure
        "engine_commit": _git("rev-parse", "--short", "HEAD"),
        "engine_uncommitted_changes": bool(_git("status", "--porcelain", "--", "osiris_flight")),
    }


def _git(*args: str) -> str:
    import subprocess

    try:
        return subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def md_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_results(name: str, data: dict[str, Any], markdown: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    (RESULTS / f"{name}.md").write_text(markdown, encoding="utf-8")


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def percentiles(values: Sequence[float], qs: Sequence[float] = (50, 90, 99)) -> dict[str, float]:
    arr = np.asarray(values, dtype=float)
    out = {f"p{int(q)}": float(np.percentile(arr, q)) for q in qs}
    out["max"] = float(arr.max())
    out["mean"] = float(arr.mean())
    return out


def fmt(value: float, digits: int = 2) -> str:
    return f"{value:,.{digits}f}"


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (files only, no display), imported when a plot is drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path) -> None:
    """Lay out, write (110 dpi) and close a figure made with ``pyplot()``."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- runs --------------------------------------------------------------------------------------------
@dataclass
class Compiled:
    manifest: Manifest
    plan: Plan
    compile_s: float

    @property
    def tasks(self) -> int:
        return sum(s.partitions for s in self.plan.stages)


def compile_file(path: Path, registry: Registry) -> Compiled:
    started = time.perf_counter()
    manifest = compile_pipeline(path, registry)
    plan = plan_manifest(manifest, registry)
    return Compiled(manifest, plan, time.perf_counter() - started)


@dataclass
class RunResult:
    status: str
    error: str
    wall_s: float  # from sending SubmitRun to receiving RunFinished
    run_dir: Path
    summary: dict[str, Any] = field(default_factory=dict)

    def events(self) -> list[dict[str, Any]]:
        path = self.run_dir / "events.jsonl"
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def submit(address: str, compiled: Compiled, run_logs: Path, batch_rows: int = 65536) -> RunResult:
    """Submit one run to a started cluster, as ``osiris-flight run`` does, and wait for its end."""
    run_id = new_run_id()
    message = p.SubmitRun(
        run_id=run_id,
        run_logs=str(run_logs),
        manifest=compiled.manifest.to_dict(),
        plan=compiled.plan.to_dict(),
        connections=resolve_connections(compiled.manifest),
        resume=False,
        max_attempts=3,
        batch_rows=batch_rows,
    )
    with Client(address) as client:
        run_dir = ""
        started = time.perf_counter()
        for reply in client.run(message):
            if isinstance(reply, p.RunAccepted):
                run_dir = reply.run_dir
            elif isinstance(reply, p.RunFinished):
                wall = time.perf_counter() - started
                path = Path(run_dir or reply.summary.get("run_dir", ""))
                return RunResult(reply.status, reply.error, wall, path, dict(reply.summary))
    raise RuntimeError("the run stream ended without RunFinished")


def require_success(result: RunResult, what: str) -> None:
    if result.status != "success":
        raise SystemExit(f"{what}: run {result.status}: {result.error}")


def cli_run(pipeline: Path, cwd: Path, timeout: float = 600) -> float:
    """``osiris-flight run`` end to end (new processes, compile, cluster start, run, stop); its seconds."""
    import subprocess

    exe = Path(sys.executable).parent / "osiris-flight"
    started = time.perf_counter()
    proc = subprocess.run(
        [str(exe), "run", str(pipeline), "--quiet", "--json", "--run-logs", str(cwd / "run_logs")],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"osiris-flight run failed ({proc.returncode}): {proc.stdout}\n{proc.stderr}")
    return wall


def rotate(items: Sequence[str], i: int) -> list[str]:
    """``items`` rotated left by ``i``: round ``i``'s order (no variant always follows the same one)."""
    k = i % len(items)
    return [*items[k:], *items[:k]]


def cpu_seconds(pids: Iterable[int]) -> dict[int, float]:
    out: dict[int, float] = {}
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            out[pid] = t.user + t.system
        except psutil.Error:
            out[pid] = 0.0
    return out


# -- memory ------------------------------------------------------------------------------------------
def tree(root: int) -> list[psutil.Process]:
    try:
        proc = psutil.Process(root)
        return [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


class RssSampler:
    """Samples the summed RSS of a process and all its descendants every ``interval_s`` seconds."""

    def __init__(self, root: int, interval_s: float = 0.05) -> None:
        self.root = root
        self.interval_s = interval_s
        self.samples: list[tuple[float, int, dict[int, int]]] = []  # (t, total, {pid: rss})
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._procs: dict[int, psutil.Process] = {}

    def _sample(self) -> None:
        per: dict[int, int] = {}
        for proc in tree(self.root):
            proc = self._procs.setdefault(proc.pid, proc)
            try:
                per[proc.pid] = proc.memory_info().rss
            except psutil.Error:
                continue
        self.samples.append((time.monotonic(), sum(per.values()), per))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval_s)

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def window(self, start: float, end: float) -> list[tuple[float, int, dict[int, int]]]:
        return [s for s in self.samples if start <= s[0] <= end]


# -- in-process baseline ----------------------------------------------------------------------------
def run_in_process(
    manifest: Manifest,
    registry: Registry,
    batch_rows: int = 65536,
    memory_limit_bytes: int = 256 * 1024 * 1024,
) -> int:
    """Run a manifest's component operators in this process, no cluster: the scheduling baseline.

    Steps run in file order (the bench pipelines list every step after its inputs). An output read
    by one step is passed on lazily (what fusion does); an output read by several is materialised
    once as a list of batches (what the batch store holds); an output nobody reads is drained.
    Returns the rows that reached a sink or a drained end.
    """
    from osiris_flight.components.base import Sink, Source, StepContext, Transform
    from osiris_flight.data.rowstream import RowStream

    outputs: dict[str, RowStream | tuple[pa.Schema, list[pa.RecordBatch]]] = {}
    readers: dict[str, int] = {s.id: 0 for s in manifest.steps}
    for s in manifest.steps:
        for dep in dict.fromkeys(s.inputs):
            readers[dep] += 1
    rows = 0

    def take(step_id: str) -> RowStream:
        held = outputs[step_id]
        if isinstance(held, RowStream):
            return held
        schema, batches = held
        return RowStream(batches, schema, name=step_id)

    for step in manifest.steps:
        spec = registry.get(step.component)
        assert spec is not None
        ctx = StepContext(
            step_id=step.id,
            component=step.component,
            config=step.config,
            memory_limit_bytes=memory_limit_bytes,
            batch_rows=batch_rows,
        )
        operator = spec.operator(ctx)
        inputs = {dep: take(dep) for dep in step.inputs}
        if isinstance(operator, Sink):
            rows += operator.write(next(iter(inputs.values()))).rows
            continue
        if isinstance(operator, Source):
            stream = operator.open()
        else:
            assert isinstance(operator, Transform)
            stream = operator.apply(inputs)
        if readers[step.id] == 0:
            rows += sum(b.num_rows for b in stream.batches())
        elif readers[step.id] == 1:
            outputs[step.id] = stream
        else:
            outputs[step.id] = (stream.schema, list(stream.batches()))
    return rows


def ensure_csv(path: Path, rows: int, seed: int = 42) -> Path:
    """Generate the CSV once (a sidecar records rows and seed; a mismatch regenerates it)."""
    import pyarrow.csv as pacsv

    meta = path.with_suffix(path.suffix + ".meta.json")
    want = {"rows": rows, "seed": seed, "version": 1}
    if path.is_file() and meta.is_file() and json.loads(meta.read_text()) == want:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    writer: pacsv.CSVWriter | None = None
    for batch in event_batches(rows, seed):
        if writer is None:
            writer = pacsv.CSVWriter(str(path), batch.schema)
        writer.write_batch(batch)
    assert writer is not None
    writer.close()
    meta.write_text(json.dumps(want))
    print(
        f"generated {path} ({rows:,} rows, {path.stat().st_size / 1e6:,.0f} MB) in "
        f"{time.perf_counter() - started:.1f} s",
        flush=True,
    )
    return path


def ensure_parquet(path: Path, rows: int, seed: int = 42, row_group_rows: int = 65536) -> int:
    """Generate the Parquet file once; returns its Arrow size in bytes (sum of batch nbytes)."""
    import pyarrow.parquet as pq

    meta = path.with_suffix(path.suffix + ".meta.json")
    want = {"rows": rows, "seed": seed, "row_group_rows": row_group_rows, "version": 1}
    if path.is_file() and meta.is_file():
        have = json.loads(meta.read_text())
        if {k: have.get(k) for k in want} == want:
            return int(have["arrow_bytes"])
    path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    arrow_bytes = 0
    writer: pq.ParquetWriter | None = None
    for batch in event_batches(rows, seed, chunk=row_group_rows):
        if writer is None:
            writer = pq.ParquetWriter(str(path), batch.schema, compression="snappy")
        writer.write_batch(batch, row_group_size=row_group_rows)
        arrow_bytes += batch.nbytes
    assert writer is not None
    writer.close()
    meta.write_text(json.dumps({**want, "arrow_bytes": arrow_bytes}))
    print(
        f"generated {path} ({rows:,} rows, {arrow_bytes / 2**20:,.0f} MiB as Arrow, "
        f"{path.stat().st_size / 2**20:,.0f} MiB on disk) in {time.perf_counter() - started:.1f} s",
        flush=True,
    )
    return arrow_bytes
