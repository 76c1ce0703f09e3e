"""BatchStore without the network: streaming reads, fan-out, spill, abort, release, thread safety."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pytest

from osiris_flight.data.batch_store import BatchStore, SpillEvent, batch_nbytes
from osiris_flight.data.rowstream import StreamClosedError
from osiris_flight.errors import UpstreamLost

SCHEMA = pa.schema([("id", pa.int64()), ("x", pa.float64()), ("s", pa.string())])  # as make_batch
BatchFactory = Callable[[int, int], pa.RecordBatch]
KEY = ("run-1", "stage-a", 0, 1)
pytestmark = pytest.mark.timeout(60)


def _read_all(
    store: BatchStore, key: tuple[str, str, int, int], wait_timeout_s: float = 5
) -> list[pa.RecordBatch]:
    _, batches = store.open_reader(key, wait_timeout_s)
    return list(batches)


def test_reader_gets_every_batch_in_order(store: BatchStore, make_batch: BatchFactory) -> None:
    sent = [make_batch(i * 100, 100) for i in range(50)]
    with store.create(KEY, SCHEMA) as writer:
        for batch in sent:
            writer.append(batch)
    schema, batches = store.open_reader(KEY)
    assert schema == SCHEMA
    assert [b.equals(s) for b, s in zip(batches, sent, strict=True)] == [True] * 50
    info = store.info(KEY)
    assert (info.rows, info.batches, info.complete) == (5000, 50, True)
    assert info.bytes == sum(batch_nbytes(b) for b in sent) == store.bytes_in_memory


def test_reader_waits_for_creation_then_streams_while_written(
    store: BatchStore, make_batch: BatchFactory
) -> None:
    got: list[int] = []
    progress = threading.Semaphore(0)

    def consume() -> None:
        _, batches = store.open_reader(KEY, wait_timeout_s=30)
        for batch in batches:
            got.append(batch.num_rows)
            progress.release()

    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(consume)
        writer = store.create(KEY, SCHEMA)
        for i in range(5):
            writer.append(make_batch(i * 10, 10))
            assert progress.acquire(timeout=10), "reader did not see a batch of an open output"
        assert not future.done()  # still open: the reader blocks for more
        writer.close()
        future.result(timeout=10)
    assert got == [10] * 5


def test_missing_output_times_out_naming_the_key(store: BatchStore) -> None:
    with pytest.raises(UpstreamLost, match=r"run=run-1 stage=stage-a partition=0 attempt=1 did not appear"):
        store.open_reader(KEY, wait_timeout_s=0.2)


def test_cancelled_reader_stops_waiting(store: BatchStore) -> None:
    with pytest.raises(UpstreamLost, match="cancelled"):
        store.open_reader(KEY, wait_timeout_s=30, cancelled=lambda: True)
    writer = store.create(KEY, SCHEMA)
    _, batches = store.open_reader(KEY, cancelled=lambda: True)
    with pytest.raises(UpstreamLost, match="cancelled mid-stream"):
        next(batches)
    writer.close()


def test_fan_out_readers_are_independent(store: BatchStore, make_batch: BatchFactory) -> None:
    writer = store.create(KEY, SCHEMA)
    writer.append(make_batch(0, 10))
    _, first = store.open_reader(KEY)
    assert next(first).column("id")[0].as_py() == 0
    writer.append(make_batch(10, 10))
    writer.close()
    _, second = store.open_reader(KEY)  # a late reader also starts at the beginning
    assert [b.column("id")[0].as_py() for b in second] == [0, 10]
    assert [b.column("id")[0].as_py() for b in first] == [10]


def test_spill_bounds_memory_and_readers_continue(spill_dir: Path, make_batch: BatchFactory) -> None:
    sent = [make_batch(i * 1000, 1000) for i in range(100)]
    budget = sum(batch_nbytes(b) for b in sent) // 20  # the output is 20x the budget
    biggest = max(batch_nbytes(b) for b in sent)
    events: list[SpillEvent] = []
    store = BatchStore(budget, spill_dir, on_spill=events.append)
    writer = store.create(KEY, SCHEMA)
    _, early = store.open_reader(KEY)  # attached before anything is spilled
    early_got = []
    for n, batch in enumerate(sent):
        writer.append(batch)
        assert store.bytes_in_memory <= budget + biggest
        if n % 10 == 0:
            early_got.append(next(early))  # a reader mid-way while its chunks move to disk
    writer.close()
    files = sorted(spill_dir.rglob("*.arrow"))
    assert files and all(f.parent == spill_dir / "run-1" for f in files)
    assert store.spill_count == len(events) == len(files) and store.bytes_spilled_total > 0
    assert sum(e.batches for e in events) >= 90
    assert all(e.key == KEY and e.bytes_written_to_disk == e.path.stat().st_size for e in events)
    early_got += list(early)
    late = _read_all(store, KEY)
    expected = pa.Table.from_batches(sent)
    for got in (early_got, late):
        assert [b.num_rows for b in got] == [1000] * 100
        assert pa.Table.from_batches(got).equals(expected)
    store.release_run("run-1")
    assert not (spill_dir / "run-1").exists()
    assert store.bytes_in_memory == 0 and store.outputs() == []
    store.close()
    assert not spill_dir.exists()


def test_batch_larger_than_budget_goes_straight_to_disk(spill_dir: Path, make_batch: BatchFactory) -> None:
    big = make_batch(0, 5000)
    with BatchStore(batch_nbytes(big) - 1, spill_dir) as store:
        with store.create(KEY, SCHEMA) as writer:
            writer.append(big)
        assert store.bytes_in_memory == 0 and store.spill_count == 1
        assert store.info(KEY).bytes_on_disk > 0
        assert _read_all(store, KEY)[0].equals(big)


def test_oldest_output_is_spilled_first(spill_dir: Path, make_batch: BatchFactory) -> None:
    batch = make_batch(0, 1000)
    events: list[SpillEvent] = []
    with BatchStore(batch_nbytes(batch) * 3, spill_dir, on_spill=events.append) as store:
        old = store.create(("r", "old", 0, 0), SCHEMA)
        new = store.create(("r", "new", 0, 0), SCHEMA)
        old.append(batch)
        old.append(batch)
        new.append(batch)
        new.append(batch)  # four batches over a three-batch budget
        assert [e.key[1] for e in events] == ["old"] and events[0].batches == 2
        assert store.info(("r", "new", 0, 0)).bytes_in_memory == 2 * batch_nbytes(batch)


def test_abort_reaches_waiting_and_late_readers(store: BatchStore, make_batch: BatchFactory) -> None:
    writer = store.create(KEY, SCHEMA)
    writer.append(make_batch(0, 10))
    _, batches = store.open_reader(KEY)
    next(batches)
    with ThreadPoolExecutor(1) as pool:
        blocked = pool.submit(next, batches)  # waits for a batch that never comes
        writer.abort("extract step failed: connection refused")
        with pytest.raises(UpstreamLost, match="aborted by its producer: extract step failed"):
            blocked.result(timeout=10)
    with pytest.raises(UpstreamLost, match="aborted"):
        store.open_reader(KEY)


def test_producer_exception_aborts_the_output(store: BatchStore) -> None:
    with pytest.raises(RuntimeError), store.create(KEY, SCHEMA):
        raise RuntimeError("boom")
    with pytest.raises(UpstreamLost, match="RuntimeError: boom"):
        store.open_reader(KEY)


def test_release_mid_read_and_after(spill_dir: Path, make_batch: BatchFactory) -> None:
    batch = make_batch(0, 1000)
    with BatchStore(batch_nbytes(batch) * 2, spill_dir) as store:
        writer = store.create(KEY, SCHEMA)
        for i in range(6):
            writer.append(make_batch(i * 1000, 1000))
        _, batches = store.open_reader(KEY)
        next(batches)
        store.release(KEY, reason="run cancelled")
        with pytest.raises(UpstreamLost, match="released: run cancelled"):
            next(batches)
        with pytest.raises(UpstreamLost, match="released"):
            store.open_reader(KEY, wait_timeout_s=30)  # fails at once, no wait
        with pytest.raises(StreamClosedError, match="released"):
            writer.append(batch)
        assert list(spill_dir.rglob("*.arrow")) == [] and store.bytes_in_memory == 0


def test_writer_misuse_is_refused(store: BatchStore, make_batch: BatchFactory) -> None:
    writer = store.create(KEY, SCHEMA)
    with pytest.raises(ValueError, match="already exists"):
        store.create(KEY, SCHEMA)
    with pytest.raises(ValueError, match="differs from the output's schema"):
        writer.append(pa.record_batch([pa.array([1])], names=["other"]))
    writer.close()
    with pytest.raises(StreamClosedError):
        writer.append(make_batch(0, 1))
    with pytest.raises(ValueError, match="compression must be zstd, lz4 or none"):
        BatchStore(1, Path("unused"), compression="gzip")


def test_abort_is_safe_in_error_handlers(store: BatchStore) -> None:
    """abort() never raises (it runs in except blocks); close() after abort or release does."""
    writer = store.create(KEY, SCHEMA)
    writer.abort("first failure")
    writer.abort("second failure")
    with pytest.raises(StreamClosedError, match="first failure"):
        writer.close()
    other = store.create(("run-1", "b", 0, 0), SCHEMA)
    store.release_run("run-1")
    other.abort("too late")  # no error: the run is gone already
    with pytest.raises(StreamClosedError, match="run released"):
        other.close()


def test_concurrent_producers_and_readers_under_spill(spill_dir: Path, make_batch: BatchFactory) -> None:
    """Four producers and eight readers against a budget of a few batches: every reader sees exactly
    what its producer wrote, and nothing deadlocks."""
    budget = batch_nbytes(make_batch(0, 200)) * 3
    keys = [("run", f"stage-{i}", i, 0) for i in range(4)]
    with BatchStore(budget, spill_dir) as store, ThreadPoolExecutor(12) as pool:
        readers = [pool.submit(_read_all, store, key, wait_timeout_s=30) for key in keys for _ in range(2)]

        def produce(key: tuple[str, str, int, int]) -> None:
            with store.create(key, SCHEMA) as writer:
                for i in range(40):
                    writer.append(make_batch(key[2] * 100_000 + i * 200, 200))
                    if i % 8 == 0:
                        time.sleep(0.001)

        for done in [pool.submit(produce, key) for key in keys]:
            done.result(timeout=60)
        for n, future in enumerate(readers):
            key = keys[n // 2]
            ids = pa.Table.from_batches(future.result(timeout=60)).column("id").to_pylist()
            assert ids == list(range(key[2] * 100_000, key[2] * 100_000 + 8000))
        assert store.spill_count > 0


def test_empty_batches_are_dropped_and_empty_outputs_end_at_once(
    store: BatchStore, make_batch: BatchFactory
) -> None:
    with store.create(KEY, SCHEMA) as writer:
        writer.append(make_batch(0, 0))
        writer.append(make_batch(0, 3))
        writer.append(make_batch(3, 0))
    assert [b.num_rows for b in _read_all(store, KEY)] == [3]
    store.create(("r", "empty", 0, 0), SCHEMA).close()
    assert _read_all(store, ("r", "empty", 0, 0)) == []
