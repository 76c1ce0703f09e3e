"""CSV files: ``filesystem.csv_extractor`` (source) and ``filesystem.csv_writer`` (sink).

The extractor streams with pyarrow's incremental CSV reader, single-threaded, one block at a time,
so memory stays about one block (``block_size`` bytes, sized from a sample of the file to hold
~``ctx.batch_rows`` rows) plus one output batch, whatever the file size. The writer streams each
batch through pyarrow's CSVWriter into a temp file and commits it with an atomic rename (see
``_files``); ``append`` copies the existing file into the temp first, so an append is atomic too,
and records the commit so that a retry of a task that died after appending does not append twice.

Both read and write SQL-style NULLs: the writer writes a null as an empty unquoted field and quotes
every string, and the extractor (by default) reads an empty unquoted field as null but ``""`` as the
empty string, so a written file reads back to the same table.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import re
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv

from osiris_flight.components import _files
from osiris_flight.components._common import (
    ARROW_TYPE_NAMES,
    RELATIVE_PATHS,
    SCHEMA_DIALECT,
    column_list_schema,
    format_columns,
    rebatch,
)
from osiris_flight.components._encoding import (
    ENCODING_ERRORS,
    DecodedInput,
    Transcoder,
    bomless,
    check_encoding,
    codec_name,
    first_invalid,
)
from osiris_flight.components.base import ComponentSpec, Sink, Source, WriteResult
from osiris_flight.data.rowstream import RowStream
from osiris_flight.errors import Problem, TerminalError
from osiris_flight.oml.validate import IGNORED_KEYWORD

DEFAULT_NULL_VALUES = ["", "NULL", "null", "\\N"]
SAMPLE_BYTES = 64 * 1024
MIN_BLOCK_BYTES = 64 * 1024
# pyarrow's streaming CSV reader holds far more than one block: measured on pyarrow 26 with an
# 8-column events file, its memory pool peaked at ~37x the block size (39 MiB for 1 MiB blocks,
# 158 MiB for 4 MiB) while speed was the same from 512 KiB to 4 MiB blocks. So blocks stay small
# and are sized from the task's memory budget with that factor.
MAX_BLOCK_BYTES = 1024 * 1024
READER_MEMORY_FACTOR = 40

_ONE_CHAR = {"type": "string", "minLength": 1, "maxLength": 1}

EXTRACTOR_SCHEMA: dict[str, Any] = {
    "$schema": SCHEMA_DIALECT,
    "title": "filesystem.csv_extractor",
    "type": "object",
    "additionalProperties": False,
    "required": ["path"],
    "properties": {
        "path": {
            "type": "string",
            "minLength": 1,
            "description": "CSV file to read. " + RELATIVE_PATHS,
        },
        "delimiter": {**_ONE_CHAR, "default": ",", "description": "Field separator. Default ','."},
        "header": {
            "type": "boolean",
            "default": True,
            "description": "The first row (after skip_rows) holds column names. Default true. When "
            "false, columns are named by column_names, else f0, f1, ...",
        },
        "column_names": column_list_schema("Column names when header is false.", min_items=1),
        "encoding": {
            "type": "string",
            "minLength": 1,
            "default": "utf-8",
            "description": "Text encoding of the file (any Python codec name). Default utf-8.",
        },
        "encoding_errors": {
            "enum": list(ENCODING_ERRORS),
            "default": "strict",
            "description": "Bytes that are not valid text in the encoding: strict (default) fails the "
            "step, naming the file, the line and the byte offset; replace reads each bad sequence as "
            "U+FFFD; ignore drops it.",
        },
        "skip_rows": {
            "type": "integer",
            "minimum": 0,
            "default": 0,
            "description": "Lines to skip at the top of the file, before the header. Default 0.",
        },
        "columns": column_list_schema("Keep only these columns, in this order. Default: all."),
        "column_types": {
            "type": "object",
            "additionalProperties": {"enum": sorted(ARROW_TYPE_NAMES)},
            "description": "Column name -> type (int64, float64, string, bool, date, timestamp, ...). "
            "Columns not named here are inferred from the data.",
        },
        "quote_char": {
            "anyOf": [_ONE_CHAR, {"const": False}],
            "default": '"',
            "description": "Quote character, or false for none. Default '\"'.",
        },
        "null_values": {
            "type": "array",
            "items": {"type": "string"},
            "description": "Unquoted field values read as NULL. Default ['', 'NULL', 'null', '\\\\N']. "
            "A quoted value is never NULL.",
        },
        "newlines_in_values": {
            "type": "boolean",
            "default": True,
            "description": "Quoted values may contain line breaks. Default true; false parses faster.",
        },
    },
}

_NEWLINES = {"\n": "\n", "\r\n": "\r\n", "\r": "\r", "lf": "\n", "crlf": "\r\n", "cr": "\r"}
_QUOTING = {
    "needed": "needed",
    "all_valid": "all_valid",
    "none": "none",
    "minimal": "needed",
    "nonnumeric": "needed",
    "all": "all_valid",
}

WRITER_SCHEMA: dict[str, Any] = {
    "$schema": SCHEMA_DIALECT,
    "title": "filesystem.csv_writer",
    "type": "object",
    "additionalProperties": False,
    "required": ["path"],
    "properties": {
        "path": {
            "type": "string",
            "minLength": 1,
            "description": "CSV file to write. " + RELATIVE_PATHS,
        },
        "delimiter": {**_ONE_CHAR, "default": ",", "description": "Field separator. Default ','."},
        "header": {"type": "boolean", "default": True, "description": "Write a header row. Default true."},
        "encoding": {
            "type": "string",
            "minLength": 1,
            "default": "utf-8",
            "description": "Text encoding (any Python codec name). Default utf-8; other encodings are "
            "transcoded per batch and a character the encoding lacks fails the step.",
        },
        "newline": {
            "enum": ["\n", "\r\n", "\r", "lf", "crlf", "cr"],
            "default": "\n",
            "description": "Line ending: lf (default), crlf or cr (Osiris' names), or the characters.",
        },
        "column_order": {
            "enum": ["sorted", "input"],
            "default": "sorted",
            "description": "sorted (default, as Osiris writes CSV): columns in alphabetical order; "
            "input: in the order the stream has them.",
        },
        "chunk_size": {
            "type": "integer",
            "minimum": 1,
            "description": "Accepted for Osiris compatibility and ignored: the writer streams batches.",
            IGNORED_KEYWORD: "accepted for Osiris compatibility; the writer streams batches",
        },
        "write_mode": {
            "enum": ["overwrite", "append"],
            "default": "overwrite",
            "description": "overwrite (default) replaces the file; append adds rows after its existing "
            "rows (no second header). Both commit atomically.",
        },
        "create_dirs": {
            "type": "boolean",
            "default": True,
            "description": "Create missing parent directories. Default true.",
        },
        "quoting": {
            "enum": ["needed", "all_valid", "none", "minimal", "all", "nonnumeric"],
            "default": "needed",
            "description": "needed (default): quote strings; all_valid: quote every non-null value; "
            "none: never quote (fails on a value containing the delimiter, a quote or a newline). "
            "Osiris' names are accepted: minimal and nonnumeric mean needed (Arrow's writer quotes "
            "every string, so minimal quotes more than pandas would), all means all_valid.",
        },
        "null_string": {
            "type": "string",
            "default": "",
            "description": "Text written for NULL. Default '' (an empty unquoted field).",
        },
    },
}


def check_extractor(config: Mapping[str, Any]) -> list[Problem]:
    problems = check_encoding(config)
    if config.get("column_names") and config.get("header", True):
        problems.append(
            Problem(
                "column_names is only used when header is false",
                field="config.column_names",
                hint="set header: false, or remove column_names and use the file's header",
            )
        )
    if config.get("quote_char", '"') == config.get("delimiter", ","):
        problems.append(Problem("quote_char must differ from delimiter", field="config.quote_char"))
    columns, types = config.get("columns"), config.get("column_types") or {}
    if isinstance(columns, list) and isinstance(types, Mapping):
        for name in types:
            if name not in columns:
                problems.append(
                    Problem(
                        f"column_types names column '{name}', which columns does not keep",
                        field=f"config.column_types.{name}",
                        hint=f"columns keeps {format_columns(columns)}",
                    )
                )
    return problems


def check_writer(config: Mapping[str, Any]) -> list[Problem]:
    return check_encoding(config)


class CsvExtractor(Source):
    """Streams one CSV file as Arrow batches of ~``ctx.batch_rows`` rows (one partition)."""

    def open(self) -> RowStream:
        cfg = self.config
        path = _files.resolve_path(self.ctx, str(cfg["path"]))
        if not path.is_file():
            what = "is a directory, not a file" if path.is_dir() else "does not exist"
            raise TerminalError(f"step '{self.ctx.step_id}': config.path: CSV file {path} {what}")
        try:
            size = path.stat().st_size
            with path.open("rb") as handle:
                sample = handle.read(SAMPLE_BYTES)
        except OSError as exc:
            raise TerminalError(f"step '{self.ctx.step_id}': cannot read CSV file {path}: {exc}") from None
        block_size, bytes_per_row = self._block_size(sample)
        reader = self._open_reader(path, block_size)
        if len(reader.schema) == 1 and (self._file_columns(path) or []) == reader.schema.names:
            # One column: an empty line is a NULL value (that is how a writer writes it), not a gap.
            reader.close()
            reader = self._open_reader(path, block_size, ignore_empty_lines=False)
        self._check_types(reader.schema)
        self._check_text(path, reader)
        step = self.ctx.step_id

        def batches() -> Iterator[pa.RecordBatch]:
            try:
                while True:
                    try:
                        batch = reader.read_next_batch()
                    except StopIteration:
                        return
                    except pa.ArrowException as exc:
                        raise self._parse_error(path, exc) from None
                    except UnicodeDecodeError:  # pyarrow's transcoding of another encoding
                        raise self._invalid_text(path) from None
                    yield batch
            finally:
                reader.close()

        estimate = max(0, round(size / bytes_per_row) - (1 if cfg.get("header", True) else 0))
        return RowStream(
            rebatch(batches(), self.ctx.batch_rows), reader.schema, estimated_rows=estimate, name=step
        )

    def _block_size(self, sample: bytes) -> tuple[int, float]:
        """Bytes per block so one block holds ~batch_rows rows; returns it and mean bytes per row.

        The block also holds at least 16 of the longest sampled lines (pyarrow needs every row to fit
        in a block) and is capped so that the reader's ~40 blocks of working memory fit in the task's
        memory budget.
        """
        lines = sample.split(b"\n")
        if len(lines) > 1 and len(sample) == SAMPLE_BYTES:
            lines = lines[:-1]  # the last line of a full sample is cut short
        longest = max((len(line) + 1 for line in lines), default=1)
        per_row = max(1.0, len(sample) / max(1, len(lines)))
        cap = max(MIN_BLOCK_BYTES, min(MAX_BLOCK_BYTES, self.ctx.memory_limit_bytes // READER_MEMORY_FACTOR))
        wanted = max(int(per_row * self.ctx.batch_rows), 16 * longest, MIN_BLOCK_BYTES)
        return max(min(wanted, cap), 2 * longest), per_row  # a row must always fit in a block

    def _open_reader(
        self, path: Path, block_size: int, *, ignore_empty_lines: bool = True
    ) -> pacsv.CSVStreamingReader:
        cfg = self.config
        header = bool(cfg.get("header", True))
        column_names = cfg.get("column_names")
        encoding, errors = str(cfg.get("encoding", "utf-8")), str(cfg.get("encoding_errors", "strict"))
        source: Any = str(path)
        if errors != "strict":  # decoded here, so pyarrow reads UTF-8
            source, encoding = io.BufferedReader(DecodedInput(path, encoding, errors), 1 << 20), "utf-8"
        read_options = pacsv.ReadOptions(
            use_threads=False,  # one block in memory at a time: the memory bound
            block_size=block_size,
            skip_rows=int(cfg.get("skip_rows", 0)),
            column_names=None if header else column_names,
            autogenerate_column_names=not header and not column_names,
            encoding=encoding,
        )
        quote_char = cfg.get("quote_char", '"')
        parse_options = pacsv.ParseOptions(
            delimiter=str(cfg.get("delimiter", ",")),
            quote_char=quote_char if isinstance(quote_char, str) else False,
            newlines_in_values=bool(cfg.get("newlines_in_values", True)),
            ignore_empty_lines=ignore_empty_lines,
        )
        types = {name: ARROW_TYPE_NAMES[t] for name, t in (cfg.get("column_types") or {}).items()}
        convert_options = pacsv.ConvertOptions(
            column_types=types,
            include_columns=list(cfg.get("columns") or []),
            null_values=list(cfg.get("null_values", DEFAULT_NULL_VALUES)),
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
        )
        try:
            return pacsv.open_csv(
                source,
                read_options=read_options,
                parse_options=parse_options,
                convert_options=convert_options,
            )
        except pa.ArrowKeyError as exc:
            found = re.search(r"Column '(.*)' in include_columns", str(exc))
            column = found.group(1) if found else "?"
            raise TerminalError(
                f"step '{self.ctx.step_id}': config.columns: column '{column}' is not in CSV file {path}"
                f"{self._header_hint(path)}"
            ) from None
        except pa.ArrowException as exc:
            raise self._parse_error(path, exc) from None
        except UnicodeDecodeError:  # pyarrow's transcoding of another encoding
            raise self._invalid_text(path) from None

    def _check_text(self, path: Path, reader: pacsv.CSVStreamingReader) -> None:
        """Invalid UTF-8 in the first block makes pyarrow infer a column as binary, not string: in
        strict mode that is the file's error, not data for the steps after this one."""
        asked = self.config.get("column_types") or {}
        if self.config.get("encoding_errors", "strict") != "strict":
            return
        for f in reader.schema:
            if pa.types.is_binary(f.type) and f.name not in asked:
                reader.close()
                raise self._invalid_text(path, f"column '{f.name}'")

    def _invalid_text(self, path: Path, where: str = "") -> TerminalError:
        encoding = str(self.config.get("encoding", "utf-8"))
        try:
            found = first_invalid(path, encoding)
        except (OSError, LookupError):
            found = None
        located = f" at line {found[0]} (byte offset {found[1]}: {found[2]})" if found else ""
        where = f"{where}: " if where else ""
        return TerminalError(
            f"step '{self.ctx.step_id}': CSV file {path}: {where}invalid {encoding} text{located}; fix "
            "the file, or set encoding to the file's encoding, or encoding_errors: replace (or ignore)"
        )

    def _parse_error(self, path: Path, exc: pa.ArrowException) -> TerminalError:
        """A pyarrow CSV error as a message naming the file, the row and the column where pyarrow tells."""
        message = str(exc)
        if "invalid UTF8" in message:
            found = re.match(r"In CSV column #(\d+)", message)
            names = (self._file_columns(path) or []) if found else []
            column = int(found.group(1)) if found else -1
            return self._invalid_text(path, f"column '{names[column]}'" if 0 <= column < len(names) else "")
        found = re.match(r"In CSV column #(\d+)", message)
        names = self._file_columns(path) or [] if found else []  # pyarrow counts the file's columns
        if found and int(found.group(1)) < len(names):
            message = f"column '{names[int(found.group(1))]}': {message}"
        if "straddles two block boundaries" in message:
            message += "; a row is far longer than the rows sampled at the top of the file"
        return TerminalError(f"step '{self.ctx.step_id}': cannot read CSV file {path}: {message}")

    def _file_columns(self, path: Path) -> list[str] | None:
        """The file's own column names (before ``columns`` picks some), None if unreadable."""
        cfg = self.config
        quote_char = cfg.get("quote_char", '"')
        try:
            reader = pacsv.open_csv(
                str(path),
                read_options=pacsv.ReadOptions(
                    use_threads=False,
                    skip_rows=int(cfg.get("skip_rows", 0)),
                    encoding=str(cfg.get("encoding", "utf-8")),
                    column_names=None if cfg.get("header", True) else cfg.get("column_names"),
                    autogenerate_column_names=not cfg.get("header", True) and not cfg.get("column_names"),
                ),
                parse_options=pacsv.ParseOptions(
                    delimiter=str(cfg.get("delimiter", ",")),
                    quote_char=quote_char if isinstance(quote_char, str) else False,
                    newlines_in_values=bool(cfg.get("newlines_in_values", True)),
                ),
            )
        except (pa.ArrowException, OSError):
            return None
        names = reader.schema.names
        reader.close()
        return names

    def _header_hint(self, path: Path) -> str:
        names = self._file_columns(path)
        return "" if names is None else f"; available columns: {format_columns(names)}"

    def _check_types(self, schema: pa.Schema) -> None:
        for name in self.config.get("column_types") or {}:
            if name not in schema.names:
                raise TerminalError(
                    f"step '{self.ctx.step_id}': config.column_types: column '{name}' is not in the CSV "
                    f"file; available columns: {format_columns(schema.names)}"
                )


class CsvWriter(Sink):
    """Writes the stream to one CSV file, atomically (temp file + fsync + rename)."""

    def write(self, stream: RowStream) -> WriteResult:
        cfg = self.config
        step = self.ctx.step_id
        target = _files.partition_target(self.ctx, _files.resolve_path(self.ctx, str(cfg["path"])))
        target = _files.confine(self.ctx, target)  # the partition's own file may be a symlink too
        _files.prepare_target(self.ctx, target, create_dirs=bool(cfg.get("create_dirs", True)))
        schema = stream.schema
        order = sorted(schema.names) if cfg.get("column_order", "sorted") == "sorted" else schema.names
        if order != schema.names:
            source = stream
            stream = RowStream(
                (b.select(order) for b in source.batches()), pa.schema([schema.field(n) for n in order])
            )
            schema = stream.schema
        nested = [f.name for f in schema if pa.types.is_nested(f.type)]
        if nested:
            raise TerminalError(
                f"step '{step}': CSV cannot hold nested columns {format_columns(nested)}; "
                "drop them before this step or write Parquet instead"
            )
        encoding = codec_name(str(cfg.get("encoding", "utf-8"))) or "utf-8"
        append_mode = cfg.get("write_mode", "overwrite") == "append"
        append = append_mode and target.is_file()
        if append and (done := _files.already_appended(self.ctx, target)) is not None:
            return done  # an earlier attempt of this task appended, then died before reporting
        what = f"cannot write CSV file {target}"
        rows = 0

        def record(temp: Path) -> None:  # also for the first append, which creates the file
            _files.record_append(self.ctx, target, temp, rows)

        with _files.atomic_target(self.ctx, target, before_commit=record if append_mode else None) as temp:
            with _files.io_errors(self.ctx, what):
                if append:
                    shutil.copyfile(target, temp)
                handle = temp.open("ab" if append else "wb")
            writer: pacsv.CSVWriter | None = None
            try:
                with _files.io_errors(self.ctx, what):
                    existing = append and target.stat().st_size > 0
                    if existing:
                        encoding = self._prepare_append(target, handle, schema, encoding)
                    sink = handle if encoding == "utf-8" else Transcoder(handle, encoding)
                    writer = pacsv.CSVWriter(sink, schema, write_options=self._options(header=not existing))
                for batch in stream.batches():  # an upstream failure propagates as it is
                    self.ctx.check_cancelled()
                    with _files.io_errors(self.ctx, f"{what} after {rows} rows"):
                        writer.write_batch(batch)
                    rows += batch.num_rows
                with _files.io_errors(self.ctx, what):
                    writer.close()
                    if isinstance(sink, Transcoder):
                        sink.finish()
                    handle.flush()
                    os.fsync(handle.fileno())
            finally:
                if writer is not None:
                    with contextlib.suppress(Exception):
                        writer.close()  # no-op after a clean close; releases it after a failure
                handle.close()
        return WriteResult(rows=rows, bytes=target.stat().st_size, target=str(target))

    def _options(self, *, header: bool) -> pacsv.WriteOptions:
        cfg = self.config
        return pacsv.WriteOptions(
            include_header=bool(cfg.get("header", True)) and header,
            delimiter=str(cfg.get("delimiter", ",")),
            quoting_style=_QUOTING[str(cfg.get("quoting", "needed"))],
            eol=_NEWLINES[str(cfg.get("newline", "\n"))],
            null_string=str(cfg.get("null_string", "")),
        )

    def _prepare_append(self, target: Path, handle: Any, schema: pa.Schema, encoding: str) -> str:
        """Check the existing header matches the stream's columns; end the last line if it is open.

        Returns the encoding to append with: the BOM-writing codecs (utf-8-sig, utf-16, utf-32) must
        not write a second byte-order mark in the middle of the file.
        """
        cfg = self.config
        newline = _NEWLINES[str(cfg.get("newline", "\n"))]
        with target.open("r", encoding=encoding, newline="") as existing:
            first = existing.readline()
        if cfg.get("header", True):
            delimiter = str(cfg.get("delimiter", ","))
            names = next(csv.reader([first.rstrip("\r\n")], delimiter=delimiter), [])
            if names != schema.names:
                raise TerminalError(
                    f"step '{self.ctx.step_id}': write_mode append: {target} has columns "
                    f"{format_columns(names)} but the input has {format_columns(schema.names)}; "
                    "write to a new file, or use write_mode: overwrite"
                )
        with target.open("rb") as existing_bytes:
            encoding = bomless(encoding, existing_bytes.read(4))
            line_end = "\n".encode(encoding)
            existing_bytes.seek(max(0, target.stat().st_size - len(line_end)))
            if existing_bytes.read() != line_end:
                handle.write(newline.encode(encoding))
        return encoding


COMPONENTS: list[ComponentSpec] = [
    ComponentSpec(
        name="filesystem.csv_extractor",
        role="source",
        operator=CsvExtractor,
        config_schema=EXTRACTOR_SCHEMA,
        description="Read a CSV file as a stream of Arrow record batches.",
        check=check_extractor,
    ),
    ComponentSpec(
        name="filesystem.csv_writer",
        role="sink",
        operator=CsvWriter,
        config_schema=WRITER_SCHEMA,
        description="Write a stream to a CSV file, atomically (temp file + rename).",
        min_inputs=1,
        max_inputs=1,
        partitionwise=True,
        check=check_writer,
    ),
]
