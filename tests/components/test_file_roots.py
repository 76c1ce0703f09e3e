"""engine.file_roots in the file components themselves: every path is resolved (symlinks, ``..``)
before it is checked, and a path outside the roots fails the step before anything is opened."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from osiris_flight.components.csv_files import CsvExtractor, CsvWriter
from osiris_flight.components.parquet_files import ParquetExtractor, ParquetWriter
from osiris_flight.errors import TerminalError
from tests.components.helpers import collect, make_ctx, stream_of

TABLE = pa.table({"id": [1, 2], "name": ["a", "b"]})


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "root").mkdir()
    (tmp_path / "outside").mkdir()
    pq.write_table(TABLE, tmp_path / "outside" / "secret.parquet")
    (tmp_path / "outside" / "secret.csv").write_text("id,name\n9,secret\n")
    return tmp_path / "root"


def refused(make, path: Path | str, root: Path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(TerminalError) as err:
        make(path)
    assert str(err.value).startswith("step 's': config.path: "), err.value
    assert f"(engine.file_roots: {root})" in str(err.value)
    assert "secret" not in str(err.value).replace("secret.", "")


def test_parquet_reads_only_inside_the_roots(tmp_path: Path, root: Path) -> None:
    (root / "in").mkdir()
    pq.write_table(TABLE, root / "in" / "a.parquet")

    def read(path: Path | str) -> pa.Table:
        ctx = make_ctx(tmp_path, {"path": str(path)}, step_id="s", file_roots=(root,))
        return collect(ParquetExtractor(ctx).open())

    assert read(root / "in").num_rows == 2
    assert read(f"{root}/in/*.parquet").num_rows == 2
    refused(read, tmp_path / "outside" / "secret.parquet", root)
    refused(read, f"{root}/../outside/secret.parquet", root)
    refused(read, f"{root}/../outside/*.parquet", root)
    (root / "in" / "b.parquet").symlink_to(tmp_path / "outside" / "secret.parquet")
    refused(read, root / "in", root)  # a file listed in the directory links out
    refused(read, f"{root}/in/*.parquet", root)
    (root / "linkdir").symlink_to(tmp_path / "outside")
    refused(read, root / "linkdir", root)


def test_writers_and_csv_reads_stay_inside_the_roots(tmp_path: Path, root: Path) -> None:
    def ctx(path: Path | str):  # type: ignore[no-untyped-def]
        return make_ctx(tmp_path, {"path": str(path)}, step_id="s", file_roots=(root,))

    def write_csv(path: Path | str) -> None:
        CsvWriter(ctx(path)).write(stream_of(TABLE))

    def write_parquet(path: Path | str) -> None:
        ParquetWriter(ctx(path)).write(stream_of(TABLE))

    def read_csv(path: Path | str) -> pa.Table:
        return collect(CsvExtractor(ctx(path)).open())

    write_csv(root / "new" / "dir" / "out.csv")  # directories made inside the root are fine
    write_parquet(root / "out.parquet")
    assert read_csv(root / "new" / "dir" / "out.csv").num_rows == 2
    (root / "out-link.csv").symlink_to(tmp_path / "outside" / "secret.csv")
    for make in (write_csv, write_parquet):
        refused(make, tmp_path / "outside" / "new.out", root)
        refused(make, f"{root}/new/../../outside/new.out", root)
        refused(make, root / "out-link.csv", root)  # writing (or appending to) a link that leads out
    refused(read_csv, root / "out-link.csv", root)
    assert sorted(p.name for p in (tmp_path / "outside").iterdir()) == ["secret.csv", "secret.parquet"]
    assert (tmp_path / "outside" / "secret.csv").read_text() == "id,name\n9,secret\n"


def test_without_roots_paths_are_used_as_given(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, {"path": str(tmp_path / "a.csv")}, step_id="s")
    assert ctx.file_roots is None
    CsvWriter(ctx).write(stream_of(TABLE))
    assert collect(CsvExtractor(ctx).open()).num_rows == 2
