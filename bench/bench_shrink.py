"""Memory optimizer (issue 4): bytes the batch store holds for an events-like table, shrunk vs plain
Arrow, and what shrinking costs in time. Baseline and optimized run in the same process on the same
batches. Goal: at least 50% fewer bytes held. Writes bench/results/shrink.{md,json,png}."""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import pyarrow as pa
from _common import RESULTS, fmt, machine, md_table, median, pyplot, save_figure, write_results

from osiris_flight.data.batch_store import BatchStore

ROWS = 2_000_000
BATCH = 65_536
REPEAT = 3


def events(rows: int, seed: int = 7) -> list[pa.RecordBatch]:
    """ids, a low-cardinality event type, small-range integers, amounts, timestamps, short notes."""
    rng = np.random.default_rng(seed)
    out = []
    for start in range(0, rows, BATCH):
        n = min(BATCH, rows - start)
        out.append(
            pa.record_batch(
                {
                    "event_id": pa.array(np.arange(start, start + n, dtype=np.int64)),
                    "user_id": pa.array(rng.integers(1, 200_000, n)),
                    "event_type": pa.array(
                        rng.choice(["view", "click", "add_to_cart", "purchase", "refund"], n)
                    ),
                    "quantity": pa.array(rng.integers(1, 20, n)),
                    "amount": pa.array(np.round(rng.gamma(2.0, 20.0, n), 2)),
                    "at": pa.array(
                        (
                            np.datetime64("2026-01-01T00:00:00")
                            + rng.integers(0, 90 * 86400, n).astype("timedelta64[s]")
                        ).astype("datetime64[us]")
                    ),
                    "note": pa.array(rng.choice(["", "gift", "express", "late delivery", "coupon"], n)),
                }
            )
        )
    return out


def measure(batches: list[pa.RecordBatch], shrink: bool) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as spill:
        store = BatchStore(1 << 40, Path(spill), shrink=shrink)
        key = ("bench", "s0", 0, 1)
        t0 = time.perf_counter()
        writer = store.create(key, batches[0].schema)
        for batch in batches:
            writer.append(batch)
        writer.close()
        t1 = time.perf_counter()
        _, reader = store.open_reader(key)
        rows = sum(b.num_rows for b in reader)
        t2 = time.perf_counter()
        assert rows == ROWS
        return {"held_bytes": store.bytes_in_memory, "append_s": t1 - t0, "read_s": t2 - t1}


def main() -> None:
    batches = events(ROWS)
    logical = sum(b.nbytes for b in batches)
    runs: dict[str, list[dict[str, float]]] = {"plain": [], "shrunk": []}
    for _ in range(REPEAT):
        for mode in ("plain", "shrunk"):
            runs[mode].append(measure(batches, mode == "shrunk"))
    summary = {mode: {k: median([r[k] for r in rs]) for k in rs[0]} for mode, rs in runs.items()}
    m = machine()
    saving = 1 - summary["shrunk"]["held_bytes"] / summary["plain"]["held_bytes"]
    met = "met" if saving >= 0.5 else "**goal missed**"
    rows = [
        [mode, fmt(s["held_bytes"] / 2**20, 1), fmt(s["append_s"], 3), fmt(s["read_s"], 3)]
        for mode, s in summary.items()
    ]
    markdown = (
        "# Memory optimizer: bytes held by the batch store\n\n"
        f"{m['date_utc']}; {m['nproc']} CPUs, {m['ram_gb']} GB RAM, load {m['load_avg_1m']}; "
        f"{ROWS:,} events-like rows in {BATCH:,}-row batches ({logical / 2**20:.1f} MiB as plain Arrow); "
        f"medians of {REPEAT} runs, same process, same batches.\n\n"
        + md_table(["store", "held MiB", "append s", "read back s"], rows)
        + f"\nHeld bytes saved: **{saving:.1%}** (goal: at least 50%): {met}. Reading back restores "
        "the logical types (dictionary columns decoded, narrowed integers widened): the time cost above.\n"
        "\n![held](shrink.png)\n"
    )
    write_results(
        "shrink", {"machine": m, "rows": ROWS, "runs": runs, "summary": summary, "saving": saving}, markdown
    )
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.bar(list(summary), [s["held_bytes"] / 2**20 for s in summary.values()], color=["#999", "#2a7"])
    ax.set_ylabel("MiB held")
    ax.set_title(f"Batch store, {ROWS / 1e6:.0f}M events rows: {saving:.0%} less")
    save_figure(fig, RESULTS / "shrink.png")
    print(markdown)


if __name__ == "__main__":
    main()
