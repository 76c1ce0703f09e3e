"""filesystem.parquet_extractor and filesystem.parquet_writer against real files in tmp_path."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from osiris_flight.components import parquet_files
from osiris_flight.components.parquet_files import ParquetExtractor, ParquetWriter
from osiris_flight.errors import TerminalError
from tests.components.helpers import collect, failing_stream, make_ctx, stream_of


def numbers(start: int, rows: int) -> pa.Table:
    ids = list(range(start, start + rows))
    return pa.table({"id": ids, "half": [i / 2 for i in ids], "tag": [f"t{i % 7}" for i in ids]})


def read(tmp_path: Path, config: dict, **ctx_extra) -> pa.Table:
    return collect(ParquetExtractor(make_ctx(tmp_path, config, step_id="read_pq", **ctx_extra)).open())


def test_reads_a_file_in_batches_with_column_projection(tmp_path: Path) -> None:
    path = tmp_path / "n.parquet"
    pq.write_table(numbers(0, 10_000), path, row_group_size=3000)
    ctx = make_ctx(tmp_path, {"path": str(path), "columns": ["tag", "id"], "batch_size": 1024})
    stream = ParquetExtractor(ctx).open()
    assert stream.schema.names == ["tag", "id"]
    assert stream.estimate_size() == 10_000
    batches = list(stream.batches())
    assert [b.num_rows for b in batches[:-1]] == [1024] * (len(batches) - 1)
    table = pa.Table.from_batches(batches)
    assert table.equals(numbers(0, 10_000).select(["tag", "id"]))


def test_reads_directory_and_glob_in_sorted_order_skipping_hidden_files(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "b").mkdir(parents=True)
    pq.write_table(numbers(0, 5), data / "a.parquet")
    pq.write_table(numbers(5, 5), data / "b" / "c.parquet")
    pq.write_table(numbers(100, 5), data / ".a.parquet.tmp-run-t-1")  # a writer's temp file
    pq.write_table(numbers(200, 5), data / "_hidden.parquet")
    (data / "notes.txt").write_text("not parquet")
    expected = numbers(0, 10)
    assert read(tmp_path, {"path": str(data)}).equals(expected)
    assert read(tmp_path, {"path": str(data / "**" / "*.parquet")}).equals(expected)
    assert read(tmp_path, {"path": str(data / "b" / "*.parquet")}).equals(numbers(5, 5))


@pytest.mark.parametrize("partitions", [1, 2, 3, 7, 20])
def test_partitions_split_row_groups_and_cover_every_row_once(tmp_path: Path, partitions: int) -> None:
    for index in range(3):
        pq.write_table(numbers(index * 1000, 1000), tmp_path / f"part{index}.parquet", row_group_size=250)
    config = {"path": str(tmp_path / "*.parquet"), "partitions": partitions}
    assert parquet_files.COMPONENTS[0].partitions(config) == partitions
    pieces = [read(tmp_path, config, partition=p, partitions=partitions) for p in range(partitions)]
    assert pa.concat_tables(pieces).equals(numbers(0, 3000))
    sizes = [piece.num_rows for piece in pieces]
    assert max(sizes) - min(sizes) <= 250  # at most one row group apart


def test_missing_path_and_empty_glob_are_terminal(tmp_path: Path) -> None:
    with pytest.raises(
        TerminalError, match=r"step 'read_pq': config\.path: Parquet file .*nope\.parquet does not"
    ):
        read(tmp_path, {"path": str(tmp_path / "nope.parquet")})
    with pytest.raises(TerminalError, match=r"config\.path: glob .*\*\.parquet matches no files"):
        read(tmp_path, {"path": str(tmp_path / "*.parquet")})
    (tmp_path / "empty").mkdir()
    with pytest.raises(TerminalError, match=r"config\.path: directory .*empty has no \*\.parquet files"):
        read(tmp_path, {"path": str(tmp_path / "empty")})


def test_missing_column_names_file_and_available_columns(tmp_path: Path) -> None:
    pq.write_table(numbers(0, 3), tmp_path / "n.parquet")
    with pytest.raises(TerminalError, match=r"config\.columns: column 'nope'.*n\.parquet.*\[id, half, tag\]"):
        read(tmp_path, {"path": str(tmp_path / "n.parquet"), "columns": ["id", "nope"]})


def test_files_with_different_schemas_are_rejected_unless_columns_agree(tmp_path: Path) -> None:
    pq.write_table(numbers(0, 3), tmp_path / "a.parquet")
    pq.write_table(numbers(3, 3).set_column(0, "id", pa.array(["x", "y", "z"])), tmp_path / "b.parquet")
    with pytest.raises(
        TerminalError, match=r"b\.parquet does not match the schema of .*a\.parquet \(id: int64 vs string\)"
    ):
        read(tmp_path, {"path": str(tmp_path)})
    assert read(tmp_path, {"path": str(tmp_path), "columns": ["tag"]}).num_rows == 6


def test_corrupt_file_is_terminal(tmp_path: Path) -> None:
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(TerminalError, match=r"cannot read Parquet file .*bad\.parquet"):
        read(tmp_path, {"path": str(tmp_path / "bad.parquet")})


# -- writer --------------------------------------------------------------------------------------


@pytest.mark.parametrize("compression", ["snappy", "zstd", "gzip", "lz4", "none"])
def test_writes_with_each_compression(tmp_path: Path, compression: str) -> None:
    target = tmp_path / "out" / "n.parquet"
    ctx = make_ctx(tmp_path, {"path": str(target), "compression": compression})
    result = ParquetWriter(ctx).write(stream_of(numbers(0, 5000), 700))
    assert result.rows == 5000 and result.bytes == target.stat().st_size and result.target == str(target)
    assert pq.read_table(target).equals(numbers(0, 5000))
    codec = pq.ParquetFile(target).metadata.row_group(0).column(0).compression
    assert codec == {"none": "UNCOMPRESSED", "lz4": codec}.get(compression, compression.upper())


def test_row_groups_collect_small_batches_up_to_row_group_size(tmp_path: Path) -> None:
    target = tmp_path / "n.parquet"
    ctx = make_ctx(tmp_path, {"path": str(target), "row_group_size": 1000})
    ParquetWriter(ctx).write(stream_of(numbers(0, 4500), 100))
    meta = pq.ParquetFile(target).metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [1000] * 4 + [500]


def test_row_groups_are_also_bounded_by_memory_budget(tmp_path: Path) -> None:
    target = tmp_path / "n.parquet"
    table = numbers(0, 100_000)  # about 2.2 MB: 22 bytes a row
    ctx = make_ctx(tmp_path, {"path": str(target)}, memory_limit_bytes=4 << 20)
    ParquetWriter(ctx).write(stream_of(table, 1000))
    assert pq.ParquetFile(target).metadata.num_row_groups > 1
    assert pq.read_table(target).equals(table)


def test_empty_input_writes_schema_only_file(tmp_path: Path) -> None:
    target = tmp_path / "n.parquet"
    result = ParquetWriter(make_ctx(tmp_path, {"path": str(target)})).write(stream_of(numbers(0, 0)))
    assert result.rows == 0
    assert pq.read_table(target).schema == numbers(0, 0).schema


def test_failing_input_leaves_target_untouched_and_no_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "n.parquet"
    pq.write_table(numbers(0, 3), target)
    before = target.read_bytes()
    ctx = make_ctx(tmp_path, {"path": str(target), "row_group_size": 100})
    with pytest.raises(ConnectionError):
        ParquetWriter(ctx).write(failing_stream(numbers(0, 5000), 100, fail_after=20))
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["n.parquet"]


def test_writer_rejects_append_in_check_and_at_run_time(tmp_path: Path) -> None:
    assert parquet_files.check_writer({"path": "x"}) == []
    problem = parquet_files.check_writer({"path": "x", "write_mode": "append"})[0]
    assert problem.field == "config.write_mode" and "cannot be appended" in problem.message
    ctx = make_ctx(tmp_path, {"path": str(tmp_path / "n.parquet"), "write_mode": "append"})
    with pytest.raises(TerminalError, match="only overwrite"):
        ParquetWriter(ctx).write(stream_of(numbers(0, 1)))


def test_round_trip_of_many_types(tmp_path: Path) -> None:
    table = pa.table(
        {
            "i8": pa.array([1, None, -3], pa.int8()),
            "dec": pa.array([None, 1, 2], pa.decimal128(10, 2)),
            "ts": pa.array([0, 1, None], pa.timestamp("ms", tz="UTC")),
            "lst": pa.array([[1], [], None], pa.list_(pa.int64())),
            "st": pa.array([{"a": 1}, None, {"a": 3}], pa.struct([("a", pa.int64())])),
        }
    )
    target = tmp_path / "t.parquet"
    ParquetWriter(make_ctx(tmp_path, {"path": str(target)})).write(stream_of(table, 2))
    assert read(tmp_path, {"path": str(target), "batch_size": 2}).equals(table)
