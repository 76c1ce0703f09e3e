"""Parquet files: ``filesystem.parquet_extractor`` (source) and ``filesystem.parquet_writer`` (sink).

The extractor reads a file, a directory (every ``*.parquet`` below it) or a glob, in sorted path
order, streaming row groups with ``ParquetFile.iter_batches`` so memory stays about one row group's
column chunks plus one batch. With ``partitions: N`` the row groups of all files are cut into N
contiguous runs, one per parallel task; reading partitions 0..N-1 in order gives the rows in the
same order as a single-task read.

The writer buffers batches up to one row group (``row_group_size`` rows, or a quarter of the task's
memory budget, whichever comes first: small row groups make Parquet slow to read), writes it with
``ParquetWriter`` into a temp file and commits with an atomic rename (see ``_files``). Parquet
cannot be appended to in place, so ``write_mode: append`` is rejected when the pipeline is checked.

Dictionary pages are capped at ``DICTIONARY_PAGE_BYTES``: Parquet dictionary-encodes every column
until its dictionary outgrows that cap, and the hash table behind a dictionary is several times its
size, so with pyarrow's 1 MiB default a row group of unique ids, amounts and timestamps held ~30 MiB
of hash tables in an 8 MiB row group, more than the batches themselves. Low-cardinality columns (the
ones dictionaries are for) stay far below 256 KiB; the others fall back to plain encoding sooner. On
the benchmark's events data the file came out 2% smaller (bench/bench_memory.py measures memory).
"""

from __future__ import annotations

import contextlib
import glob
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from osiris_flight.components import _files
from osiris_flight.components._common import (
    RELATIVE_PATHS,
    SCHEMA_DIALECT,
    column_list_schema,
    format_columns,
    rebatch,
    require_columns,
)
from osiris_flight.components.base import ComponentSpec, Sink, Source, StepContext, WriteResult
from osiris_flight.data.rowstream import RowStream
from osiris_flight.errors import Problem, TerminalError

PARQUET_SUFFIXES = (".parquet", ".parq", ".pq")
DEFAULT_ROW_GROUP_ROWS = 1024 * 1024
DICTIONARY_PAGE_BYTES = 256 * 1024
COMPRESSIONS = {"snappy": "snappy", "zstd": "zstd", "gzip": "gzip", "lz4": "lz4", "none": None}

EXTRACTOR_SCHEMA: dict[str, Any] = {
    "$schema": SCHEMA_DIALECT,
    "title": "filesystem.parquet_extractor",
    "type": "object",
    "additionalProperties": False,
    "required": ["path"],
    "properties": {
        "path": {
            "type": "string",
            "minLength": 1,
            "description": "A Parquet file, a directory (every *.parquet/*.parq/*.pq file below it, "
            "hidden and _-prefixed files skipped) or a glob such as data/2024-*/*.parquet ('**' "
            "matches any depth). Files are read in sorted path order. " + RELATIVE_PATHS,
        },
        "columns": column_list_schema("Read only these columns, in this order. Default: all."),
        "batch_size": {
            "type": "integer",
            "minimum": 1,
            "description": "Rows per output batch. Default: the engine's batch size.",
        },
        "partitions": {
            "type": "integer",
            "minimum": 1,
            "default": 1,
            "description": "Read as this many parallel tasks, each taking a contiguous run of row "
            "groups. Default 1.",
        },
    },
}

WRITER_SCHEMA: dict[str, Any] = {
    "$schema": SCHEMA_DIALECT,
    "title": "filesystem.parquet_writer",
    "type": "object",
    "additionalProperties": False,
    "required": ["path"],
    "properties": {
        "path": {
            "type": "string",
            "minLength": 1,
            "description": "Parquet file to write. " + RELATIVE_PATHS,
        },
        "compression": {
            "enum": sorted(COMPRESSIONS),
            "default": "snappy",
            "description": "Column chunk compression. Default snappy.",
        },
        "row_group_size": {
            "type": "integer",
            "minimum": 1,
            "default": DEFAULT_ROW_GROUP_ROWS,
            "description": "Maximum rows per row group. Default 1048576. A row group is also closed "
            "when its buffered data reaches a quarter of the task's memory budget.",
        },
        "write_mode": {
            "enum": ["overwrite", "append"],
            "default": "overwrite",
            "description": "Default overwrite, the only mode supported (Parquet cannot append).",
        },
        "create_dirs": {
            "type": "boolean",
            "default": True,
            "description": "Create missing parent directories. Default true.",
        },
    },
}


def check_writer(config: Mapping[str, Any]) -> list[Problem]:
    if config.get("write_mode", "overwrite") == "append":
        return [
            Problem(
                "a Parquet file cannot be appended to",
                field="config.write_mode",
                hint="use write_mode: overwrite, write each run to its own file, or use "
                "filesystem.csv_writer for append",
            )
        ]
    return []


def _is_hidden(path: Path, root: Path | None) -> bool:
    parts = path.relative_to(root).parts if root is not None else (path.name,)
    return any(part.startswith((".", "_")) for part in parts)


def list_files(ctx: StepContext, spec: str) -> list[Path]:
    """The Parquet files ``spec`` names, sorted; TerminalError when there are none."""
    path = _files.resolve_path(ctx, spec)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = [
            p
            for p in path.rglob("*")
            if p.suffix.lower() in PARQUET_SUFFIXES and p.is_file() and not _is_hidden(p, path)
        ]
        where = f"directory {path} has no *.parquet files"
    elif glob.has_magic(str(path)):
        files = [Path(p) for p in glob.glob(str(path), recursive=True)]
        files = [p for p in files if p.is_file() and not _is_hidden(p, None)]
        where = f"glob {path} matches no files"
    else:
        files, where = [], f"Parquet file {path} does not exist"
    if not files:
        raise TerminalError(f"step '{ctx.step_id}': config.path: {where}")
    return sorted(_files.confine(ctx, file) for file in files)  # a listed file may be a symlink out


@dataclass(frozen=True)
class _Unit:
    """One row group of one file: the unit partitions are cut from."""

    file: Path
    row_group: int
    rows: int


class ParquetExtractor(Source):
    """Streams Parquet row groups as Arrow batches of ``batch_size`` rows."""

    def open(self) -> RowStream:
        files = list_files(self.ctx, str(self.config["path"]))
        schema = self._schema(files)
        units = self._my_units(files)
        columns = list(self.config.get("columns") or []) or None
        batch_rows = int(self.config.get("batch_size") or self.ctx.batch_rows)
        step = self.ctx.step_id

        def batches() -> Iterator[pa.RecordBatch]:
            for file, groups in _by_file(units):
                self.ctx.check_cancelled()
                try:
                    # pre_buffer would read every requested row group up front: off, to stream.
                    with pq.ParquetFile(file, pre_buffer=False) as reader:
                        yield from reader.iter_batches(
                            batch_size=batch_rows, row_groups=groups, columns=columns, use_threads=False
                        )
                except (pa.ArrowException, OSError) as exc:
                    raise TerminalError(f"step '{step}': cannot read Parquet file {file}: {exc}") from None

        return RowStream(
            rebatch(batches(), batch_rows),
            schema,
            estimated_rows=sum(u.rows for u in units),
            name=step,
        )

    def _schema(self, files: list[Path]) -> pa.Schema:
        """The first file's schema, projected onto ``columns``; every other file must agree with it."""
        columns = list(self.config.get("columns") or [])
        schema: pa.Schema | None = None
        for file in files:
            file_schema = self._read_schema(file)
            require_columns(self.ctx, columns, file_schema, field="columns", source=f"Parquet file {file}")
            if columns:
                file_schema = pa.schema([file_schema.field(c) for c in columns])
            if schema is None:
                schema = file_schema
            elif not file_schema.equals(schema):
                differ = [
                    f"{f.name}: {f.type} vs {file_schema.field(f.name).type}"
                    if f.name in file_schema.names
                    else f"{f.name}: missing"
                    for f in schema
                    if f.name not in file_schema.names or file_schema.field(f.name).type != f.type
                ] or [f"columns {format_columns(file_schema.names)} vs {format_columns(schema.names)}"]
                raise TerminalError(
                    f"step '{self.ctx.step_id}': Parquet file {file} does not match the schema of "
                    f"{files[0]} ({'; '.join(differ)}); read the files in separate steps, or use "
                    "config.columns to read only the columns they share"
                )
        assert schema is not None  # list_files never returns an empty list
        return schema

    def _read_schema(self, file: Path) -> pa.Schema:
        try:
            return pq.read_schema(file)
        except (pa.ArrowException, OSError) as exc:
            raise self._unreadable(file, exc) from None

    def _unreadable(self, file: Path, exc: Exception) -> TerminalError:
        return TerminalError(f"step '{self.ctx.step_id}': cannot read Parquet file {file}: {exc}")

    def _my_units(self, files: list[Path]) -> list[_Unit]:
        """This task's contiguous share of all row groups (partition p of N gets units[pn/N:(p+1)n/N])."""
        units: list[_Unit] = []
        for file in files:
            try:
                meta = pq.read_metadata(file)
            except (pa.ArrowException, OSError) as exc:
                raise self._unreadable(file, exc) from None
            units += [_Unit(file, i, meta.row_group(i).num_rows) for i in range(meta.num_row_groups)]
        parts, part = max(1, self.ctx.partitions), self.ctx.partition
        return units[part * len(units) // parts : (part + 1) * len(units) // parts]


def _by_file(units: list[_Unit]) -> Iterator[tuple[Path, list[int]]]:
    """Group consecutive units of the same file, so each file is opened once."""
    current: Path | None = None
    groups: list[int] = []
    for unit in units:
        if unit.file != current:
            if current is not None:
                yield current, groups
            current, groups = unit.file, []
        groups.append(unit.row_group)
    if current is not None:
        yield current, groups


class ParquetWriter(Sink):
    """Writes the stream to one Parquet file, atomically (temp file + fsync + rename)."""

    def write(self, stream: RowStream) -> WriteResult:
        cfg = self.config
        step = self.ctx.step_id
        if cfg.get("write_mode", "overwrite") != "overwrite":
            raise TerminalError(f"step '{step}': config.write_mode: Parquet supports only overwrite")
        target = _files.partition_target(self.ctx, _files.resolve_path(self.ctx, str(cfg["path"])))
        target = _files.confine(self.ctx, target)  # the partition's own file may be a symlink too
        _files.prepare_target(self.ctx, target, create_dirs=bool(cfg.get("create_dirs", True)))
        schema = stream.schema
        group_rows = int(cfg.get("row_group_size", DEFAULT_ROW_GROUP_ROWS))
        group_bytes = max(1 << 20, self.ctx.memory_limit_bytes // 4)
        what = f"cannot write Parquet file {target}"
        rows = 0
        with _files.atomic_target(self.ctx, target) as temp:
            with _files.io_errors(self.ctx, what):
                compression = COMPRESSIONS[str(cfg.get("compression", "snappy"))]
                writer = pq.ParquetWriter(
                    str(temp),
                    schema,
                    compression=compression,
                    dictionary_pagesize_limit=DICTIONARY_PAGE_BYTES,
                )
            try:
                pending: list[pa.RecordBatch] = []
                pending_rows = pending_bytes = 0
                for batch in stream.batches():  # an upstream failure propagates as it is
                    self.ctx.check_cancelled()
                    pending.append(batch)
                    pending_rows += batch.num_rows
                    pending_bytes += batch.nbytes
                    if pending_rows >= group_rows or pending_bytes >= group_bytes:
                        with _files.io_errors(self.ctx, f"{what} after {rows} rows"):
                            rows += _flush(writer, pending, schema, group_rows)
                        pending, pending_rows, pending_bytes = [], 0, 0
                with _files.io_errors(self.ctx, f"{what} after {rows} rows"):
                    rows += _flush(writer, pending, schema, group_rows)
                    writer.close()
            finally:
                with contextlib.suppress(Exception):
                    writer.close()  # no-op after a clean close; releases the file after a failure
        return WriteResult(rows=rows, bytes=target.stat().st_size, target=str(target))


def _flush(
    writer: pq.ParquetWriter, pending: list[pa.RecordBatch], schema: pa.Schema, group_rows: int
) -> int:
    """Write buffered batches as row groups of at most ``group_rows`` rows; returns rows written."""
    if not pending:
        return 0
    table = pa.Table.from_batches(pending, schema=schema)
    writer.write_table(table, row_group_size=group_rows)
    return table.num_rows


def _partitions(config: Mapping[str, Any]) -> int:
    return max(1, int(config.get("partitions", 1)))


COMPONENTS: list[ComponentSpec] = [
    ComponentSpec(
        name="filesystem.parquet_extractor",
        role="source",
        operator=ParquetExtractor,
        config_schema=EXTRACTOR_SCHEMA,
        description="Read Parquet files (a file, a directory or a glob) as a stream of Arrow batches.",
        partitions=_partitions,
    ),
    ComponentSpec(
        name="filesystem.parquet_writer",
        role="sink",
        operator=ParquetWriter,
        config_schema=WRITER_SCHEMA,
        description="Write a stream to a Parquet file, atomically (temp file + rename).",
        min_inputs=1,
        max_inputs=1,
        partitionwise=True,
        check=check_writer,
    ),
]
