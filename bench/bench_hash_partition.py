"""Hash partitioning (issue 9): the Cython kernel (osiris_flight._native_hash) against its pyarrow.compute
+ numpy reference, on 8M rows in the engine's 65,536-row batches, keyed by an int64, a string and both.

Per case and variant, the median of REPEAT runs:
- hash: ``hash_rows`` (kernel) vs ``reference_hash_rows``. The reference is vectorized (pyarrow.compute
  + numpy) for fixed-width keys, a fair baseline there; for strings it runs XXH64 in a Python loop
  per value, no fair baseline, so it is timed on the first SAMPLE_ROWS rows only, and DuckDB's own
  vectorized ``hash()`` over the same rows (one query) is shown beside it (another function, same job).
- partition into BUCKETS: ``partition_batch`` (kernel hash + counting sort + the kernel's gather) vs
  ``reference_partition_batch`` (reference hash + stable numpy argsort + the same takes).
- memory speed: copying the key columns' buffers (numpy, into fresh memory, as the hash writes a fresh
  array), the yardstick the kernel is measured against.

rows/s counts input rows; GB/s counts the key columns' bytes (hash, copy) or the whole batch's bytes
(partition). Writes bench/results/hash_partition.{md,json}.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import duckdb
import numpy as np
import pyarrow as pa
from _common import fmt, machine, md_table, median, write_results

from osiris_flight.data import hash_partition as hp

ROWS = int(os.environ.get("OSIRIS_BENCH_HASH_ROWS", "8000000"))  # smaller for a quick try
BATCH = 65_536
BUCKETS = 16
REPEAT = 5
SAMPLE_ROWS = 262_144  # rows the reference hashes where it loops in Python (string keys)
CASES = {"int64": ["user_id"], "string": ["user_name"], "int64 + string": ["user_id", "user_name"]}


def batches(rows: int, seed: int = 9) -> list[pa.RecordBatch]:
    """An int64 key (5M distinct of 2**40), a string key ('user-<n>', 10-12 bytes), two payloads."""
    rng = np.random.default_rng(seed)
    out = []
    for start in range(0, rows, BATCH):
        n = min(BATCH, rows - start)
        ids = rng.integers(0, 5_000_000, n) * 219_902 + 7
        out.append(
            pa.record_batch(
                {
                    "user_id": pa.array(ids, pa.int64()),
                    "user_name": pa.array(
                        np.char.add("user-", (ids % 5_000_000).astype(str)).tolist(), pa.string()
                    ),
                    "amount": pa.array(rng.random(n)),
                    "event_id": pa.array(np.arange(start, start + n, dtype=np.int64)),
                }
            )
        )
    return out


def key_bytes(data: list[pa.RecordBatch], keys: list[str]) -> int:
    return sum(b.column(k).nbytes for b in data for k in keys)


def copy_columns(data: list[pa.RecordBatch], names: list[str]) -> list[np.ndarray]:
    return copy_keys(data, names)


def copy_keys(data: list[pa.RecordBatch], keys: list[str]) -> list[np.ndarray]:
    """Copies of the key columns' buffers, all kept (as the hash keeps its outputs): fresh memory."""
    return [
        np.frombuffer(buf, dtype=np.uint8).copy()
        for b in data
        for k in keys
        for buf in b.column(k).buffers()
        if buf is not None
    ]


def duckdb_hash(con: duckdb.DuckDBPyConnection, table: pa.Table, keys: list[str]) -> None:
    """DuckDB's hash() of the keys over all batches in one query (its vectorized engine, no per-batch
    query overhead), fetched as Arrow."""
    con.register("t", table)
    con.sql(f"SELECT hash({', '.join(keys)}) AS h FROM t").to_arrow_table()
    con.unregister("t")


def timed(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return median(times)


def figures(seconds: float, rows: int, nbytes: int) -> dict[str, float]:
    return {
        "median_s": seconds,
        "rows": rows,
        "rows_per_s": rows / seconds,
        "gb_per_s": nbytes / seconds / 1e9,
    }


def measure_case(
    name: str, keys: list[str], data: list[pa.RecordBatch], con: duckdb.DuckDBPyConnection
) -> dict[str, Any]:
    fixed = name == "int64"
    total_rows = sum(b.num_rows for b in data)
    ref_data = data if fixed else data[: SAMPLE_ROWS // BATCH]
    ref_rows = sum(b.num_rows for b in ref_data)
    ref_repeat = REPEAT if fixed else 3
    kb = key_bytes(data, keys)
    all_bytes = sum(b.nbytes for b in data)
    table = pa.Table.from_batches(data)
    case: dict[str, Any] = {"keys": keys, "key_bytes": kb}
    case["memcpy"] = figures(timed(lambda: copy_keys(data, keys), REPEAT), total_rows, kb)
    case["hash"] = {
        "native": figures(timed(lambda: [hp.hash_rows(b, keys) for b in data], REPEAT), total_rows, kb),
        "reference": figures(
            timed(lambda: [hp.reference_hash_rows(b, keys) for b in ref_data], ref_repeat),
            ref_rows,
            key_bytes(ref_data, keys),
        ),
        "duckdb": figures(timed(lambda: duckdb_hash(con, table, keys), REPEAT), total_rows, kb),
    }
    case["partition"] = {
        "native": figures(
            timed(lambda: [hp.partition_batch(b, keys, BUCKETS) for b in data], REPEAT), total_rows, all_bytes
        ),
        "reference": figures(
            timed(lambda: [hp.reference_partition_batch(b, keys, BUCKETS) for b in ref_data], ref_repeat),
            ref_rows,
            sum(b.nbytes for b in ref_data),
        ),
    }
    h, p = case["hash"], case["partition"]
    case["hash_speedup"] = h["native"]["rows_per_s"] / h["reference"]["rows_per_s"]
    case["partition_speedup"] = p["native"]["rows_per_s"] / p["reference"]["rows_per_s"]
    case["hash_vs_memcpy"] = h["native"]["median_s"] / case["memcpy"]["median_s"]
    print(
        f"  {name}: hash {h['native']['rows_per_s'] / 1e6:,.0f} M rows/s "
        f"({h['native']['gb_per_s']:.2f} GB/s, {case['hash_vs_memcpy']:.1f}x a copy of the keys), "
        f"reference {h['reference']['rows_per_s'] / 1e6:,.1f} M rows/s ({case['hash_speedup']:.1f}x); "
        f"partition {p['native']['rows_per_s'] / 1e6:,.0f} M rows/s vs "
        f"{p['reference']['rows_per_s'] / 1e6:,.1f} ({case['partition_speedup']:.1f}x)",
        flush=True,
    )
    return case


def measure(data: list[pa.RecordBatch]) -> dict[str, Any]:
    con = duckdb.connect()
    con.execute("SET threads = 1")  # one core, as the kernel (a task's thread) uses
    return {name: measure_case(name, keys, data, con) for name, keys in CASES.items()}


def report(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        "# Hash partitioning: Cython kernel vs pyarrow.compute reference\n",
        f"Run {m['date_utc']}; {m['nproc']} CPUs ({m['cpu']}); pyarrow {m['pyarrow']}; commit "
        f"`{m['engine_commit']}`; 1-minute load average {m['load_avg_1m']} at the end (other work on this "
        "machine skews both sides). Regenerate with `.venv/bin/python bench/bench_hash_partition.py`.\n",
        f"{result['rows']:,} rows in batches of {result['batch_rows']:,} (the engine's default); "
        f"{result['buckets']} buckets; medians of {result['repeat']} runs. The reference is "
        "`reference_hash_rows`: pyarrow.compute + numpy, vectorized for fixed-width keys (a fair "
        "baseline there); for string keys it runs XXH64 in a Python loop per value, so it is timed on "
        f"the first {result['sample_rows']:,} rows and is no fair baseline: DuckDB's vectorized "
        "`hash()` over the same rows (its own function; one query over all batches, one thread, as the "
        "kernel runs in one task's thread) stands beside it. "
        "*copy* is numpy copying the key columns' buffers into fresh memory, every copy kept as the "
        "hashes are: the memory-speed yardstick. GB/s counts the key columns' bytes (hash, copy) "
        "or the whole batch's (partition, "
        f"{result['batch_bytes'] / 1e9:.2f} GB).\n",
    ]
    rows = []
    for name, c in result["cases"].items():
        h, p = c["hash"], c["partition"]
        sampled = " (sample)" if h["reference"]["rows"] < result["rows"] else ""
        rows.append(
            [
                name,
                f"{h['native']['rows_per_s'] / 1e6:,.0f} M/s, {fmt(h['native']['gb_per_s'])} GB/s",
                f"{c['memcpy']['rows_per_s'] / 1e6:,.0f} M/s, {fmt(c['memcpy']['gb_per_s'])} GB/s",
                f"{fmt(c['hash_vs_memcpy'], 1)}x",
                f"{h['reference']['rows_per_s'] / 1e6:,.2f} M/s{sampled}",
                f"{fmt(c['hash_speedup'], 1)}x",
                f"{h['duckdb']['rows_per_s'] / 1e6:,.0f} M/s",
            ]
        )
    lines.append("## Row hash\n")
    lines.append(
        md_table(
            [
                "keys",
                "kernel",
                "copy of the keys",
                "kernel / copy time",
                "reference",
                "speedup",
                "DuckDB hash()",
            ],
            rows,
        )
    )
    rows = []
    for name, c in result["cases"].items():
        p = c["partition"]
        sampled = " (sample)" if p["reference"]["rows"] < result["rows"] else ""
        rows.append(
            [
                name,
                f"{p['native']['rows_per_s'] / 1e6:,.1f} M/s, {fmt(p['native']['gb_per_s'])} GB/s",
                f"{p['reference']['rows_per_s'] / 1e6:,.2f} M/s{sampled}",
                f"{fmt(c['partition_speedup'], 1)}x",
                f"{fmt(c['hash']['native']['median_s'] / p['native']['median_s'] * 100, 0)}%",
                f"{fmt(p['native']['median_s'] / result['batch_copy']['median_s'], 1)}x",
            ]
        )
    lines.append(f"\n## Split into {result['buckets']} buckets (`partition_batch`)\n")
    lines.append(
        md_table(
            [
                "keys",
                "kernel: hash + counting sort + gather",
                "reference: hash + argsort + takes",
                "speedup",
                "hash share",
                "split / copy time",
            ],
            rows,
        )
    )
    lines.append(
        "\nThe kernel's split gathers each bucket's rows column by column into buffers of its own (so a "
        "bucket released frees its memory); the reference's is one pyarrow `take` per bucket. *hash share*: "
        "the kernel's row hash in the kernel's split time. *split / copy time* compares the split with "
        "copying every buffer of the batches into fresh memory "
        f"({result['batch_copy']['gb_per_s']:.2f} GB/s, the split's memory-speed yardstick).\n"
    )
    return "\n".join(lines)


def main() -> None:
    data = batches(ROWS)
    result: dict[str, Any] = {
        "rows": ROWS,
        "batch_rows": BATCH,
        "buckets": BUCKETS,
        "repeat": REPEAT,
        "sample_rows": SAMPLE_ROWS,
        "batch_bytes": sum(b.nbytes for b in data),
        "cases": measure(data),
        "batch_copy": figures(
            timed(lambda: copy_columns(data, data[0].schema.names), REPEAT),
            sum(b.num_rows for b in data),
            sum(b.nbytes for b in data),
        ),
    }
    result["machine"] = machine()
    write_results("hash_partition", result, report(result))
    print("wrote bench/results/hash_partition.{md,json}")


if __name__ == "__main__":
    main()
