"""filesystem.csv_extractor and filesystem.csv_writer against real files in tmp_path."""

from __future__ import annotations

import datetime as dt
import itertools
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from osiris_flight.components import csv_files
from osiris_flight.components._files import record_append
from osiris_flight.components.base import Cancelled
from osiris_flight.components.csv_files import CsvExtractor, CsvWriter
from osiris_flight.errors import TerminalError
from tests.components.helpers import collect, failing_stream, make_ctx, stream_of


def read(tmp_path: Path, config: dict, batch_rows: int = 1000) -> pa.Table:
    return collect(CsvExtractor(make_ctx(tmp_path, config, step_id="read_csv", batch_rows=batch_rows)).open())


_runs = itertools.count(1)


def write(tmp_path: Path, config: dict, table: pa.Table, rows_per_batch: int = 1000, **ctx_fields: Any):
    """Each call is a new run (a run id of its own) unless ``run_id`` says otherwise."""
    ctx_fields.setdefault("run_id", f"run{next(_runs)}")
    ctx = make_ctx(tmp_path, config, step_id="write_csv", **ctx_fields)
    return CsvWriter(ctx).write(stream_of(table, rows_per_batch))


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if ".tmp-" in p.name)


# -- extractor -----------------------------------------------------------------------------------


def test_reads_header_and_infers_types(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text("id,name,score,ok\n1,ann,1.5,true\n2,bob,,false\n3,,2.5,\n")
    table = read(tmp_path, {"path": str(path)})
    assert table.schema == pa.schema(
        [("id", pa.int64()), ("name", pa.string()), ("score", pa.float64()), ("ok", pa.bool_())]
    )
    assert table.to_pydict() == {
        "id": [1, 2, 3],
        "name": ["ann", "bob", None],
        "score": [1.5, None, 2.5],
        "ok": [True, False, None],
    }


def test_options_delimiter_skip_rows_columns_types_quote_and_nulls(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text("# exported\n# by hand\na;b;c\n'1;x';2024-01-02;NA\n'y';2024-02-03;7\n")
    config = {
        "path": str(path),
        "delimiter": ";",
        "skip_rows": 2,
        "columns": ["c", "b"],
        "column_types": {"b": "date", "c": "int32"},
        "quote_char": "'",
        "null_values": ["NA"],
    }
    table = read(tmp_path, config)
    assert table.schema == pa.schema([("c", pa.int32()), ("b", pa.date32())])
    assert table.to_pydict() == {"c": [None, 7], "b": [dt.date(2024, 1, 2), dt.date(2024, 2, 3)]}


def test_no_header_autogenerates_or_uses_column_names(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text("1,a\n2,b\n")
    assert read(tmp_path, {"path": str(path), "header": False}).column_names == ["f0", "f1"]
    named = read(tmp_path, {"path": str(path), "header": False, "column_names": ["id", "v"]})
    assert named.to_pydict() == {"id": [1, 2], "v": ["a", "b"]}


@pytest.mark.parametrize("encoding", ["latin-1", "utf-16", "cp1252"])
def test_reads_other_encodings(tmp_path: Path, encoding: str) -> None:
    path = tmp_path / "in.csv"
    path.write_bytes("name,city\nJosé,Zürich\nRenée,Besançon\n".encode(encoding))
    table = read(tmp_path, {"path": str(path), "encoding": encoding})
    assert table.column("city").to_pylist() == ["Zürich", "Besançon"]


def test_streams_in_batches_of_batch_rows_with_bounded_blocks(tmp_path: Path) -> None:
    path = tmp_path / "big.csv"
    with path.open("w") as handle:
        handle.write("i,s\n")
        for i in range(50_000):
            handle.write(f"{i},row{i}\n")
    ctx = make_ctx(tmp_path, {"path": str(path)}, batch_rows=4096, memory_limit_bytes=1 << 20)
    stream = CsvExtractor(ctx).open()
    assert 0.75 < stream.estimate_size() / 50_000 < 1.25  # from a sample of the file's first 64 KiB
    sizes = [b.num_rows for b in stream.batches()]
    assert sum(sizes) == 50_000
    assert all(size == 4096 for size in sizes[:-1])


def test_block_size_follows_sample_and_budget(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, {"path": "x"}, batch_rows=10_000, memory_limit_bytes=8 << 20)
    extractor = CsvExtractor(ctx)
    block, per_row = extractor._block_size(b"a,b\n" + b"123,456\n" * 1000)
    assert per_row == pytest.approx(8, abs=0.1)
    assert block == pytest.approx(80_000, rel=0.01)
    block, _ = extractor._block_size(b"x" * 70_000 + b"\n")
    assert block == (8 << 20) // 40  # 16 x the longest row, capped for the reader's ~40-block working set
    block, _ = extractor._block_size(b"x" * 200_000 + b"\n")
    assert block == 2 * 200_001  # the cap never cuts a block below what its longest row needs


def test_missing_file_names_path_and_step(tmp_path: Path) -> None:
    with pytest.raises(TerminalError, match=r"step 'read_csv'.*config\.path.*nope\.csv does not exist"):
        CsvExtractor(make_ctx(tmp_path, {"path": str(tmp_path / "nope.csv")}, step_id="read_csv")).open()


def test_relative_path_is_taken_from_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "in.csv").write_text("a\n1\n")
    monkeypatch.chdir(tmp_path)
    assert read(tmp_path, {"path": "data/in.csv"}).to_pydict() == {"a": [1]}


def test_parse_error_names_file_and_row(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("a,b\n1,2\n3,4,5\n")
    with pytest.raises(TerminalError, match=r"step 'read_csv'.*bad\.csv.*Row #3: Expected 2 columns"):
        read(tmp_path, {"path": str(path)})


def test_conversion_error_names_column_and_row(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("a,b\n" + "1,2\n" * 30_000 + "3,oops\n")
    with pytest.raises(TerminalError, match=r"bad\.csv: column 'b'.*Row #30002.*'oops'"):
        read(tmp_path, {"path": str(path), "column_types": {"b": "int64"}}, batch_rows=1000)


def test_unknown_columns_are_terminal_errors_listing_the_header(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(TerminalError, match=r"config\.columns: column 'zz'.*available columns: \[a, b\]"):
        read(tmp_path, {"path": str(path), "columns": ["a", "zz"]})
    with pytest.raises(TerminalError, match=r"config\.column_types: column 'zz'.*\[a, b\]"):
        read(tmp_path, {"path": str(path), "column_types": {"zz": "int64"}})


def test_extractor_check_problems() -> None:
    check = csv_files.check_extractor
    assert check({"path": "x"}) == []
    fields = {p.field for p in check({"path": "x", "encoding": "klingon", "column_names": ["a"]})}
    assert fields == {"config.encoding", "config.column_names"}
    problems = check({"path": "x", "columns": ["a"], "column_types": {"b": "int64"}})
    assert [p.field for p in problems] == ["config.column_types.b"]
    assert check({"path": "x", "delimiter": "'", "quote_char": "'"})[0].field == "config.quote_char"


# -- writer --------------------------------------------------------------------------------------

TABLE = pa.table(
    {
        "id": pa.array([1, 2, 3], pa.int64()),
        "name": ["a,b", None, 'say "hi"'],
        "when": pa.array([dt.date(2024, 1, 1), None, dt.date(2024, 12, 31)]),
    }
)


def test_writes_header_quotes_and_nulls(tmp_path: Path) -> None:
    target = tmp_path / "out" / "deep" / "t.csv"
    result = write(tmp_path, {"path": str(target)}, TABLE, rows_per_batch=2)
    assert result.rows == 3 and result.target == str(target)
    assert result.bytes == target.stat().st_size
    assert target.read_text() == '"id","name","when"\n1,"a,b",2024-01-01\n2,,\n3,"say ""hi""",2024-12-31\n'
    assert leftovers(target.parent) == []


def test_writer_options(tmp_path: Path) -> None:
    target = tmp_path / "t.csv"
    config = {
        "path": str(target),
        "delimiter": "|",
        "header": False,
        "newline": "\r\n",
        "quoting": "none",
        "null_string": "NULL",
    }
    write(tmp_path, config, pa.table({"a": [1, None], "b": ["x", "y"]}))
    assert target.read_bytes() == b"1|x\r\nNULL|y\r\n"


def test_round_trip_through_writer_and_extractor(tmp_path: Path) -> None:
    target = tmp_path / "t.csv"
    write(tmp_path, {"path": str(target)}, TABLE)
    back = read(tmp_path, {"path": str(target), "column_types": {"name": "string"}})
    assert back.equals(TABLE)


def test_writes_other_encodings_and_rejects_missing_characters(tmp_path: Path) -> None:
    target = tmp_path / "t.csv"
    table = pa.table({"city": ["Zürich", "Besançon"]})
    write(tmp_path, {"path": str(target), "encoding": "latin-1"}, table)
    assert target.read_bytes() == '"city"\n"Zürich"\n"Besançon"\n'.encode("latin-1")
    target.write_text("keep me")
    with pytest.raises(
        TerminalError, match=r"step 'write_csv'.*config\.encoding: '€' cannot be written in latin-1"
    ):
        write(tmp_path, {"path": str(target), "encoding": "latin-1"}, pa.table({"c": ["5 €"]}))
    assert target.read_text() == "keep me"
    assert leftovers(tmp_path) == []


def test_overwrite_replaces_file(tmp_path: Path) -> None:
    target = tmp_path / "t.csv"
    target.write_text("old,stuff\n1,2\n")
    write(tmp_path, {"path": str(target)}, pa.table({"a": [5]}))
    assert target.read_text() == '"a"\n5\n'


def test_append_adds_rows_without_second_header(tmp_path: Path) -> None:
    target = tmp_path / "t.csv"
    write(tmp_path, {"path": str(target), "write_mode": "append"}, pa.table({"a": [1], "b": ["x"]}))
    result = write(tmp_path, {"path": str(target), "write_mode": "append"}, pa.table({"a": [2], "b": ["y"]}))
    assert target.read_text() == '"a","b"\n1,"x"\n2,"y"\n'
    assert result.rows == 1


def test_a_retried_append_of_the_same_task_does_not_append_twice(tmp_path: Path) -> None:
    # Attempt 1 committed its append, then its worker died before reporting: attempt 2 of the same
    # run and task must report that append, not make another one.
    target = tmp_path / "t.csv"
    write(tmp_path, {"path": str(target)}, pa.table({"a": [1], "b": ["x"]}))
    config = {"path": str(target), "write_mode": "append"}
    first = write(tmp_path, config, pa.table({"a": [2, 3], "b": ["y", "z"]}), run_id="r7", attempt=1)
    again = write(tmp_path, config, pa.table({"a": [2, 3], "b": ["y", "z"]}), run_id="r7", attempt=2)
    assert target.read_text() == '"a","b"\n1,"x"\n2,"y"\n3,"z"\n'
    assert again.rows == first.rows == 2
    # Another run appends as asked.
    write(tmp_path, config, pa.table({"a": [4], "b": ["w"]}), run_id="r8")
    assert target.read_text().endswith('3,"z"\n4,"w"\n')
    assert leftovers(tmp_path) == []


def test_an_append_record_without_its_commit_does_not_stop_the_retry(tmp_path: Path) -> None:
    # Attempt 1 recorded its append and died before the rename: the target is the old file, so
    # attempt 2 appends. Also when the record names the target's file but another task wrote it.
    target = tmp_path / "t.csv"
    write(tmp_path, {"path": str(target)}, pa.table({"a": [1], "b": ["x"]}))
    config = {"path": str(target), "write_mode": "append"}
    stale = tmp_path / ".t.csv.tmp-r7-stage1.p0-1"
    stale.write_text('"a","b"\n1,"x"\n2,"y"\n')
    ctx = make_ctx(tmp_path, config, run_id="r7", attempt=1)
    record_append(ctx, target, stale, rows=1)
    write(tmp_path, config, pa.table({"a": [2], "b": ["y"]}), run_id="r7", attempt=2)
    assert target.read_text() == '"a","b"\n1,"x"\n2,"y"\n'
    assert not stale.exists()  # an earlier attempt's temp file is removed
    write(tmp_path, config, pa.table({"a": [3], "b": ["z"]}), run_id="r7", task_id="stage1.p1")
    assert target.read_text().endswith('2,"y"\n3,"z"\n')


def test_append_to_file_without_trailing_newline_and_plain_header(tmp_path: Path) -> None:
    target = tmp_path / "t.csv"
    target.write_text("a,b\n1,x")
    write(tmp_path, {"path": str(target), "write_mode": "append"}, pa.table({"a": [2], "b": ["y"]}))
    assert target.read_text() == 'a,b\n1,x\n2,"y"\n'


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16"])
def test_append_does_not_repeat_byte_order_mark(tmp_path: Path, encoding: str) -> None:
    target = tmp_path / "t.csv"
    config = {"path": str(target), "write_mode": "append", "encoding": encoding}
    write(tmp_path, config, pa.table({"a": ["é"]}))
    write(tmp_path, config, pa.table({"a": ["ü"]}))
    assert target.read_bytes().decode(encoding) == '"a"\n"é"\n"ü"\n'


def test_append_with_other_columns_fails_and_keeps_file(tmp_path: Path) -> None:
    target = tmp_path / "t.csv"
    target.write_text('"a","b"\n1,2\n')
    with pytest.raises(TerminalError, match=r"append.*has columns \[a, b\] but the input has \[a, c\]"):
        write(tmp_path, {"path": str(target), "write_mode": "append"}, pa.table({"a": [1], "c": [2]}))
    assert target.read_text() == '"a","b"\n1,2\n'


def test_append_to_empty_or_missing_file_writes_header(tmp_path: Path) -> None:
    target = tmp_path / "t.csv"
    target.write_text("")
    write(tmp_path, {"path": str(target), "write_mode": "append"}, pa.table({"a": [1]}))
    assert target.read_text() == '"a"\n1\n'


def test_empty_input_writes_header_only(tmp_path: Path) -> None:
    target = tmp_path / "t.csv"
    result = write(tmp_path, {"path": str(target)}, TABLE.slice(0, 0))
    assert result.rows == 0
    assert target.read_text() == '"id","name","when"\n'


@pytest.mark.parametrize("mode", ["overwrite", "append"])
def test_failing_input_leaves_target_untouched_and_no_temp_files(tmp_path: Path, mode: str) -> None:
    target = tmp_path / "t.csv"
    original = b'"id","name","when"\n9,"old",2020-01-01\n'
    target.write_bytes(original)
    big = pa.table(
        {"id": list(range(10_000)), "name": ["n"] * 10_000, "when": [dt.date(2024, 1, 1)] * 10_000}
    )
    ctx = make_ctx(tmp_path, {"path": str(target), "write_mode": mode})
    with pytest.raises(ConnectionError):
        CsvWriter(ctx).write(failing_stream(big, 1000, fail_after=5))
    assert target.read_bytes() == original
    assert leftovers(tmp_path) == []


def test_failing_input_with_no_target_creates_nothing(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, {"path": str(tmp_path / "t.csv")})
    with pytest.raises(ConnectionError):
        CsvWriter(ctx).write(failing_stream(TABLE, 1, fail_after=2))
    assert list(tmp_path.iterdir()) == []


def test_cancel_mid_write_leaves_no_trace(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, {"path": str(tmp_path / "t.csv")})
    ctx.cancel_event.set()
    with pytest.raises(Cancelled):
        CsvWriter(ctx).write(stream_of(TABLE))
    assert list(tmp_path.iterdir()) == []


def test_stale_temp_files_of_earlier_attempts_are_removed(tmp_path: Path) -> None:
    target = tmp_path / "t.csv"
    stale = tmp_path / ".t.csv.tmp-run42-stage1.p0-1"
    other_task = tmp_path / ".t.csv.tmp-run42-stage9.p0-1"
    stale.write_text("half")
    other_task.write_text("someone else's")
    ctx = make_ctx(tmp_path, {"path": str(target)}, attempt=2)
    CsvWriter(ctx).write(stream_of(TABLE))
    assert not stale.exists() and other_task.exists()


def test_missing_directory_without_create_dirs(tmp_path: Path) -> None:
    target = tmp_path / "missing" / "t.csv"
    with pytest.raises(TerminalError, match=r"config\.path: directory .*missing does not exist"):
        write(tmp_path, {"path": str(target), "create_dirs": False}, TABLE)


def test_nested_columns_are_rejected(tmp_path: Path) -> None:
    table = pa.table({"a": [1], "tags": [["x", "y"]]})
    with pytest.raises(TerminalError, match=r"nested columns \[tags\].*Parquet"):
        write(tmp_path, {"path": str(tmp_path / "t.csv")}, table)


def test_partitioned_writer_writes_one_file_per_partition(tmp_path: Path) -> None:
    target = tmp_path / "t.csv"
    for partition in range(3):
        ctx = make_ctx(tmp_path, {"path": str(target)}, partition=partition, partitions=3)
        CsvWriter(ctx).write(stream_of(pa.table({"p": [partition]})))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "t.part-0-of-3.csv",
        "t.part-1-of-3.csv",
        "t.part-2-of-3.csv",
    ]


def test_writer_check_rejects_unknown_encoding() -> None:
    assert csv_files.check_writer({"path": "x", "encoding": "utf-8"}) == []
    assert csv_files.check_writer({"path": "x", "encoding": "nope"})[0].field == "config.encoding"


# -- property: random tables survive writer + extractor -------------------------------------------

_TYPES = {
    "int64": (pa.int64(), st.integers(-(2**63), 2**63 - 1)),
    "float64": (pa.float64(), st.floats(allow_nan=False, allow_infinity=False)),
    "string": (pa.string(), st.text(st.characters(codec="utf-8"), max_size=12)),
    "bool": (pa.bool_(), st.booleans()),
    "date": (pa.date32(), st.dates(dt.date(1, 1, 1), dt.date(9999, 12, 31))),
    "timestamp": (
        pa.timestamp("us"),
        st.datetimes(dt.datetime(1900, 1, 1), dt.datetime(2200, 1, 1)),
    ),
}


@st.composite
def tables(draw: st.DrawFn) -> pa.Table:
    names = draw(st.lists(st.sampled_from(sorted(_TYPES)), min_size=1, max_size=6))
    rows = draw(st.integers(0, 40))
    columns = {}
    for index, type_name in enumerate(names):
        arrow_type, values = _TYPES[type_name]
        column = draw(st.lists(st.none() | values, min_size=rows, max_size=rows))
        columns[f"c{index}_{type_name}"] = pa.array(column, arrow_type)
    return pa.table(columns)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(table=tables(), delimiter=st.sampled_from([",", ";", "\t", "|"]), batch=st.integers(1, 7))
def test_property_round_trip(tmp_path: Path, table: pa.Table, delimiter: str, batch: int) -> None:
    target = tmp_path / "round.csv"
    write(tmp_path, {"path": str(target), "delimiter": delimiter}, table, rows_per_batch=batch)
    types = {name: name.split("_", 1)[1] for name in table.column_names}
    back = read(
        tmp_path, {"path": str(target), "delimiter": delimiter, "column_types": types}, batch_rows=batch
    )
    assert back.schema == table.schema
    assert back.to_pylist() == table.to_pylist()
    assert not any(".tmp-" in name for name in os.listdir(tmp_path))


def test_single_column_nulls_survive_as_empty_lines(tmp_path: Path) -> None:
    target = tmp_path / "one.csv"
    table = pa.table({"v": pa.array([None, 1, None], pa.int64())})
    write(tmp_path, {"path": str(target)}, table)
    assert target.read_text() == '"v"\n\n1\n\n'
    assert read(tmp_path, {"path": str(target)}).equals(table)


def test_conversion_error_in_a_picked_column_names_the_file_column(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("a,b,c\n1,2,zz\n")
    with pytest.raises(TerminalError, match=r"column 'c': In CSV column #2: Row #2.*'zz'"):
        read(tmp_path, {"path": str(path), "columns": ["c"], "column_types": {"c": "int64"}})


BAD_UTF8 = b"id,name\n1,ok\n2,caf\xe9 au lait\n3,x\n"


def test_invalid_utf8_is_the_readers_error_naming_file_line_and_offset(tmp_path: Path) -> None:
    """pyarrow inferred the column as binary and passed it on; the writer then took the blame."""
    (tmp_path / "in.csv").write_bytes(BAD_UTF8)
    with pytest.raises(TerminalError) as err:
        read(tmp_path, {"path": str(tmp_path / "in.csv")})
    assert str(err.value) == (
        f"step 'read_csv': CSV file {tmp_path / 'in.csv'}: column 'name': invalid utf-8 text at line 3 "
        "(byte offset 18: invalid continuation byte); fix the file, or set encoding to the file's "
        "encoding, or encoding_errors: replace (or ignore)"
    )


def test_invalid_utf8_after_the_first_block_is_located_too(tmp_path: Path) -> None:
    good = b"".join(b"%d,name%d\n" % (i, i) for i in range(50_000))
    (tmp_path / "in.csv").write_bytes(b"id,name\n" + good + b"50000,\xff\n")
    with pytest.raises(TerminalError) as err:
        read(tmp_path, {"path": str(tmp_path / "in.csv")}, batch_rows=1000)
    where = f"CSV file {tmp_path / 'in.csv'}: column 'name': invalid utf-8 text at line 50002 "
    assert where in str(err.value)
    assert f"(byte offset {len(good) + 8 + 6}: invalid start byte)" in str(err.value)


@pytest.mark.parametrize(("errors", "name"), [("replace", "caf\ufffd au lait"), ("ignore", "caf au lait")])
def test_encoding_errors_replace_or_ignore_decode_the_bad_bytes(
    tmp_path: Path, errors: str, name: str
) -> None:
    (tmp_path / "in.csv").write_bytes(BAD_UTF8)
    table = read(tmp_path, {"path": str(tmp_path / "in.csv"), "encoding_errors": errors})
    assert table.schema.field("name").type == pa.string()
    assert table.column("name").to_pylist() == ["ok", name, "x"]


def test_invalid_bytes_in_another_encoding_are_located(tmp_path: Path) -> None:
    (tmp_path / "in.csv").write_bytes("id,name\n1,é\n".encode("utf-16-le") + b"\x00\xd8,\x00")
    with pytest.raises(TerminalError) as err:
        read(tmp_path, {"path": str(tmp_path / "in.csv"), "encoding": "utf-16-le"})
    assert "invalid utf-16-le text at line 3" in str(err.value)
