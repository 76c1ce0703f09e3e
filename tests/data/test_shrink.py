"""Shrunk batches: smaller while held, identical when read back, spilled or served over Flight."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from osiris_flight.data.batch_store import BatchStore
from osiris_flight.data.shrink import restore, shrink_batch


def events(n: int, seed: int = 1) -> pa.RecordBatch:
    rng = np.random.default_rng(seed)
    return pa.record_batch(
        {
            "id": pa.array(np.arange(n, dtype=np.int64) + 10**6),
            "event_type": pa.array(rng.choice(["view", "click", "add_to_cart", "purchase"], n)),
            "quantity": pa.array(rng.integers(0, 100, n)),
            "amount": pa.array(np.round(rng.random(n) * 100, 2)),
            "at": pa.array(np.arange(n).astype("datetime64[us]")),
            "note": pa.array(rng.choice(["", "gift", "late", "express"], n)),
        },
        metadata={b"origin": b"test"},
    )


def test_an_events_batch_is_held_in_under_half_its_size_and_restored_exactly() -> None:
    batch = events(65_536)
    small = shrink_batch(batch)
    assert small.nbytes < 0.5 * batch.nbytes
    assert restore(small, batch.schema).equals(batch)
    assert restore(small, batch.schema).schema.equals(batch.schema, check_metadata=True)


@settings(max_examples=120, deadline=None)
@given(
    st.lists(st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)), min_size=64, max_size=200),
    st.lists(
        st.one_of(st.none(), st.sampled_from(["a", "b", "ccc"]), st.text(max_size=3)),
        min_size=64,
        max_size=64,
    ),
    st.integers(0, 2**16),
)
def test_shrink_then_restore_is_the_identity(ints: list, texts: list, small: int) -> None:
    batch = pa.record_batch(
        {
            "i": pa.array(ints[:64], pa.int64()),
            "u": pa.array([small] * 64, pa.uint64()),
            "s": pa.array(texts, pa.string()),
            "b": pa.array([t.encode() if t is not None else None for t in texts], pa.binary()),
        }
    )
    assert restore(shrink_batch(batch), batch.schema).equals(batch)


def test_the_store_holds_less_and_readers_spill_and_fast_path_see_the_logical_batches(tmp_path: Path) -> None:
    batches = [events(20_000, seed) for seed in range(6)]
    key = ("run", "s0", 0, 1)
    plain, shrunk = BatchStore(1 << 30, tmp_path / "a"), BatchStore(1 << 30, tmp_path / "b", shrink=True)
    for store in (plain, shrunk):
        writer = store.create(key, batches[0].schema)
        for b in batches:
            writer.append(b)
        writer.close()
    assert shrunk.bytes_in_memory < 0.5 * plain.bytes_in_memory
    info = shrunk.info(key)
    assert info.bytes == plain.info(key).bytes and info.bytes_held == shrunk.bytes_in_memory
    _, reader = shrunk.open_reader(key)
    assert [b.equals(want) for b, want in zip(reader, batches, strict=True)] == [True] * 6
    schema, resident = shrunk.resident_batches(key) or (None, [])
    assert schema == batches[0].schema and all(b.schema.equals(schema) for b in resident)
    # Spilled (budget 0: everything goes to disk) and read back: still the logical batches.
    tight = BatchStore(0, tmp_path / "c", shrink=True)
    writer = tight.create(key, batches[0].schema)
    for b in batches:
        writer.append(b)
    writer.close()
    assert tight.spill_count > 0
    _, reader = tight.open_reader(key)
    assert pa.Table.from_batches(list(reader)).equals(pa.Table.from_batches(batches))
