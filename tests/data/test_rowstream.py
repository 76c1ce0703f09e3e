"""RowStream: the milestone's API (read_batch of DataFrames, batches of Arrow, write_batch,
estimate_size, checkpoint/resume)."""

from __future__ import annotations

import threading

import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from osiris_flight.data.rowstream import BufferedRowStream, RowStream, StreamClosedError


def batches(sizes: list[int]) -> list[pa.RecordBatch]:
    out, start = [], 0
    for n in sizes:
        out.append(pa.record_batch({"id": pa.array(range(start, start + n), pa.int64())}))
        start += n
    return out


@given(st.lists(st.integers(0, 50), max_size=12), st.integers(1, 40))
def test_read_batch_gives_exact_sizes_and_every_row_in_order(sizes: list[int], size: int) -> None:
    stream = RowStream(batches(sizes), pa.schema([("id", pa.int64())]))
    frames = list(stream.read_batch(size))
    total = sum(sizes)
    assert all(len(f) == size for f in frames[:-1])
    assert sum(len(f) for f in frames) == total
    if frames:
        assert isinstance(frames[0], pd.DataFrame)
        assert pd.concat(frames)["id"].tolist() == list(range(total))


@given(st.lists(st.integers(1, 30), min_size=1, max_size=10), st.data())
def test_checkpoint_then_resume_continues_exactly_after_the_position(
    sizes: list[int], data: st.DataObject
) -> None:
    first = RowStream(batches(sizes))
    take = data.draw(st.integers(0, len(sizes)))
    it = first.batches()
    seen = [next(it) for _ in range(take)]
    token = first.checkpoint()
    second = RowStream(batches(sizes))
    second.resume(token)
    rest = list(second.batches())
    ids = [v for b in [*seen, *rest] for v in b.column(0).to_pylist()]
    assert ids == list(range(sum(sizes)))


def test_resume_rejects_foreign_tokens() -> None:
    with pytest.raises(ValueError, match="not a RowStream checkpoint"):
        RowStream([]).resume("%%%")


def test_schema_is_discovered_from_the_first_batch_without_losing_it() -> None:
    stream = RowStream(batches([3, 2]))
    assert stream.schema == pa.schema([("id", pa.int64())])
    assert sum(b.num_rows for b in stream.batches()) == 5


def test_estimate_size() -> None:
    assert RowStream([], estimated_rows=42).estimate_size() == 42
    assert RowStream([]).estimate_size() == -1


def test_buffered_stream_is_written_by_one_thread_and_read_by_another() -> None:
    stream = BufferedRowStream()

    def produce() -> None:
        for i in range(100):
            stream.write_batch(pd.DataFrame({"id": [i]}))
        stream.close()

    thread = threading.Thread(target=produce)
    thread.start()
    ids = [v for b in stream.batches() for v in b.column("id").to_pylist()]
    thread.join()
    assert ids == list(range(100))
    with pytest.raises(StreamClosedError):
        stream.write_batch(pd.DataFrame({"id": [1]}))


def test_buffered_stream_propagates_the_producer_error() -> None:
    stream = BufferedRowStream()
    stream.write_batch(pa.record_batch({"x": [1]}))
    stream.close(RuntimeError("producer died"))
    it = stream.batches()
    assert next(it).num_rows == 1
    with pytest.raises(RuntimeError, match="producer died"):
        next(it)


def test_read_only_stream_refuses_writes() -> None:
    with pytest.raises(StreamClosedError, match="read-only"):
        RowStream([]).write_batch(pa.record_batch({"x": [1]}))
