"""Sources and partition-wise transforms stream: Arrow memory stays flat while a file far larger
than one batch passes through (measured with pyarrow's own allocator counter, no mocks)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from osiris_flight.components.aggregator import Aggregator
from osiris_flight.components.csv_files import CsvExtractor, CsvWriter
from osiris_flight.components.filter import Filter
from osiris_flight.components.joiner import Joiner
from osiris_flight.components.parquet_files import ParquetExtractor
from osiris_flight.data.rowstream import RowStream
from tests.components.helpers import make_ctx

ROWS = 1_000_000


@pytest.fixture(scope="module")
def big_table() -> pa.Table:
    rng = np.random.default_rng(0)
    return pa.table(
        {
            "id": np.arange(ROWS),
            "amount": rng.integers(0, 1000, ROWS),
            "price": rng.normal(50, 10, ROWS),
            "tag": pa.array(rng.choice(["alpha", "beta", "gamma", "delta"], ROWS)),
        }
    )


def peak_allocation(batches: Iterator[pa.RecordBatch]) -> tuple[int, int]:
    """(rows seen, peak Arrow bytes allocated above the starting level) while draining ``batches``."""
    base = pa.total_allocated_bytes()
    peak = rows = 0
    for batch in batches:
        rows += batch.num_rows
        peak = max(peak, pa.total_allocated_bytes() - base)
        del batch
    return rows, peak


def test_csv_extractor_memory_is_flat(tmp_path: Path, big_table: pa.Table) -> None:
    path = tmp_path / "big.csv"
    pacsv.write_csv(big_table, path)
    size = path.stat().st_size  # about 35 MB
    ctx = make_ctx(tmp_path, {"path": str(path)}, batch_rows=8192, memory_limit_bytes=32 << 20)
    rows, peak = peak_allocation(CsvExtractor(ctx).open().batches())
    assert rows == ROWS
    # Blocks are sized so that the reader's working set (~40 blocks) fits the task's budget,
    # whatever the file's size (here about 35 MB).
    assert peak < ctx.memory_limit_bytes // 2 and peak < size / 3, (peak, size)


def test_parquet_extractor_memory_is_flat(tmp_path: Path, big_table: pa.Table) -> None:
    path = tmp_path / "big.parquet"
    pq.write_table(big_table, path, row_group_size=50_000, compression="none")
    in_memory = big_table.nbytes
    ctx = make_ctx(tmp_path, {"path": str(path)}, batch_rows=8192)
    rows, peak = peak_allocation(ParquetExtractor(ctx).open().batches())
    assert rows == ROWS
    assert peak < in_memory / 5, (peak, in_memory)


def test_csv_to_filter_to_csv_chain_streams(tmp_path: Path, big_table: pa.Table) -> None:
    table = pa.concat_tables([big_table] * 3)  # ~110 MB of CSV
    source = tmp_path / "big.csv"
    pacsv.write_csv(table, source)
    size = source.stat().st_size
    # A 4 MiB task budget caps the reader's blocks at 100 KiB, so its read-ahead (up to ~40 blocks,
    # more when the consumer is starved) stays near 4 MiB however the threads are scheduled.
    read_ctx = make_ctx(tmp_path, {"path": str(source)}, batch_rows=8192, memory_limit_bytes=4 << 20)
    stream = CsvExtractor(read_ctx).open()
    filtered = Filter(make_ctx(tmp_path, {"where": "amount >= 500"}, batch_rows=8192)).apply({"src": stream})
    base = pa.total_allocated_bytes()
    peak = 0

    def watched() -> Iterator[pa.RecordBatch]:
        nonlocal peak
        for batch in filtered.batches():
            peak = max(peak, pa.total_allocated_bytes() - base)
            yield batch

    target = tmp_path / "out.csv"
    result = CsvWriter(make_ctx(tmp_path, {"path": str(target)})).write(RowStream(watched(), filtered.schema))
    expected = 3 * int(np.count_nonzero(big_table.column("amount").to_numpy() >= 500))
    assert result.rows == expected
    # Holding the file would take more than its size in Arrow memory. The chain's working set (CSV
    # blocks read ahead, a batch per step, the writer's buffer) is a few MB whatever the file's
    # size, so a tenth of 110 MB bounds it with room to spare and still fails any chain that holds
    # the data.
    assert peak < size / 10, (peak, size)


def test_aggregator_state_follows_groups_not_rows(tmp_path: Path, big_table: pa.Table) -> None:
    config = {"group_by": ["tag"], "aggregations": {"n": "count", "amount": "sum", "price": "mean"}}
    ctx = make_ctx(tmp_path, config, batch_rows=8192)
    stream = Aggregator(ctx).apply(
        {"src": RowStream(big_table.to_batches(max_chunksize=8192), big_table.schema)}
    )
    rows, peak = peak_allocation(stream.batches())
    assert rows == 4
    assert peak < big_table.nbytes / 20, (peak, big_table.nbytes)


def test_joiner_streams_its_left_input(tmp_path: Path, big_table: pa.Table) -> None:
    right = pa.table({"tag": ["alpha", "beta", "gamma"], "weight": [1.0, 2.0, 3.0]})
    ctx = make_ctx(tmp_path, {"join_type": "left", "on": "tag"}, batch_rows=8192)
    left = RowStream(big_table.to_batches(max_chunksize=8192), big_table.schema)
    stream = Joiner(ctx).apply({"events": left, "weights": RowStream(right.to_batches(), right.schema)})
    rows, peak = peak_allocation(stream.batches())
    assert rows == ROWS
    assert peak < big_table.nbytes / 5, (peak, big_table.nbytes)
