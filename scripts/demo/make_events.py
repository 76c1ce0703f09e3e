"""Write a reproducible sample events CSV: event_id, user_id, product_id, date, event_type, revenue."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

EVENT_TYPES = np.array(["view", "click", "add_to_cart", "purchase", "refund"])
CHUNK = 500_000


def chunk(start: int, n: int, rng: np.random.Generator) -> pa.RecordBatch:
    days = rng.integers(0, 90, n)
    dates = (np.datetime64("2026-01-01") + days.astype("timedelta64[D]")).astype("datetime64[D]")
    kind = rng.choice(len(EVENT_TYPES), n, p=[0.6, 0.25, 0.08, 0.06, 0.01])
    revenue = np.where(kind == 3, np.round(rng.gamma(2.0, 20.0, n), 2), 0.0)
    return pa.record_batch(
        {
            "event_id": pa.array(np.arange(start, start + n, dtype=np.int64)),
            "user_id": pa.array(rng.integers(1, 50_000, n)),
            "product_id": pa.array(rng.integers(1, 2_000, n)),
            "date": pa.array(dates),
            "event_type": pa.array(EVENT_TYPES[kind]),
            "revenue": pa.array(revenue),
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    first = chunk(0, min(CHUNK, args.rows), rng)
    with pacsv.CSVWriter(args.out, first.schema) as writer:
        writer.write_batch(first)
        done = first.num_rows
        while done < args.rows:
            batch = chunk(done, min(CHUNK, args.rows - done), rng)
            writer.write_batch(batch)
            done += batch.num_rows
    print(f"wrote {args.rows:,} events to {args.out}")


if __name__ == "__main__":
    main()
