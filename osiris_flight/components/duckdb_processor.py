"""``duckdb.processor``: a DuckDB SQL ``query`` over the step's inputs, as Osiris defines it.

Osiris semantics (``osiris/drivers/duckdb_processor_driver.py``, ``components/duckdb.processor``):
config is ``query`` alone; each upstream step is a table named ``df_<sanitized step id>`` (see
``step_names``); any number of inputs, zero included (``SELECT * FROM generate_series(1, 10)``);
the result of the query is the step's output. Osiris registers whole pandas DataFrames; here the
data streams instead:

* Each input is handed to DuckDB as an Arrow ``RecordBatchReader`` over the upstream RowStream, so
  DuckDB pulls batches as it scans and this module never holds an input. A reader can be scanned
  only once, so an input the query names more than once (a self-join, a subquery over the same
  table), or any input of a statement DuckDB cannot analyse, is first copied into a DuckDB temporary
  table, which DuckDB itself keeps within its memory limit by spilling.
* DuckDB runs in memory with ``memory_limit`` = half the task's budget (at least
  ``MIN_MEMORY_BYTES``: smaller limits make DuckDB fail sorts instead of spilling) and spills sorts,
  joins, aggregates and temporary tables to ``temp_directory`` under ``ctx.work_dir``, deleted when
  the step ends.
* The query reaches nothing but its inputs (``LOCKDOWN``): DuckDB's external access is off and its
  configuration locked, so SQL cannot read or write files (``read_text``, ``read_csv``, ``COPY``,
  ``ATTACH``), fetch URLs or load extensions on the worker. Osiris's processor works on in-memory
  DataFrames and its examples read nothing from SQL; files are read by ``filesystem.*`` steps,
  which the worker confines to ``engine.file_roots``.
* The result streams out as Arrow batches of ``ctx.batch_rows`` rows. Insertion order is preserved
  (DuckDB's default), so a query without ORDER BY returns rows in the same order as in Osiris.

The query starts in ``apply()`` (its output schema is only known once DuckDB runs it); rows are
produced as the consumer pulls. Errors name the step and carry DuckDB's own message; a failure of an
upstream stream is re-raised as itself, so a lost upstream worker stays a transient error.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import weakref
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from osiris_flight.components._common import SCHEMA_DIALECT, rebatch
from osiris_flight.components.base import ComponentSpec, Transform
from osiris_flight.components.step_names import dataframe_keys, sanitize_step_id
from osiris_flight.data.rowstream import RowStream
from osiris_flight.errors import Problem, TaskError, TerminalError

if TYPE_CHECKING:
    import duckdb

MIN_MEMORY_BYTES = 128 * 1024 * 1024
# DuckDB's default is every core; several tasks share a worker, so one step takes at most this many.
MAX_THREADS = 4
# Set on every connection once its memory limit, threads and spill directory are (in this order: with
# external access off those can no longer be set). The query then reaches only its inputs: no file,
# URL, database file, extension or Python variable (read_text, read_csv, COPY, ATTACH, httpfs, ...
# fail with DuckDB's "Permission Error: Cannot access file ..."), while DuckDB still spills to its
# temp directory; the locked configuration refuses any SET that would undo it.
LOCKDOWN = (
    "SET enable_progress_bar = false",
    "SET python_enable_replacements = false",
    "SET autoinstall_known_extensions = false",
    "SET autoload_known_extensions = false",
    "SET enable_external_access = false",
    "SET lock_configuration = true",
)
# An input materialized before the query is registered under this private name first.
_STAGING = "__osiris_input_{}"
# Plenty for any real pipeline; the planner needs an upper bound.
MAX_INPUTS = 256
_MISSING_TABLE = re.compile(r"Table with name (\S+) does not exist")
_NAMING = (
    "inputs are named df_<upstream step id> with every character other than [A-Za-z0-9_] replaced by '_'"
)

CONFIG_SCHEMA: dict[str, Any] = {
    "$schema": SCHEMA_DIALECT,
    "title": "duckdb.processor",
    "type": "object",
    "additionalProperties": False,
    "required": ["query"],
    "properties": {
        "query": {
            "type": "string",
            "minLength": 1,
            "description": "DuckDB SQL whose result is the step's output. Upstream steps are tables "
            "named df_<step id>, with characters other than letters, digits and '_' replaced by '_' "
            "(step 'extract-orders' is df_extract_orders).",
        },
    },
}


def _duckdb() -> Any:
    """The duckdb module, imported on first use: compiling a pipeline without it stays fast."""
    try:
        import duckdb
    except ImportError:  # a broken install: duckdb is a declared dependency
        raise TerminalError(
            "duckdb.processor needs the 'duckdb' package: pip install 'duckdb>=1.1'"
        ) from None
    return duckdb


def parse_query(query: str) -> dict[str, Any]:
    """DuckDB's own parse of ``query`` (``json_serialize_sql``), so checks use DuckDB's dialect.

    The result has ``error`` true with ``error_type`` ``parser`` for a syntax error, and ``not
    implemented`` for statements DuckDB does not serialize (anything but SELECT, several statements
    in a row), which are still valid to run.
    """
    con = _duckdb().connect(":memory:")
    try:
        row = con.execute("SELECT json_serialize_sql(CAST(? AS VARCHAR))", [query]).fetchone()
    finally:
        con.close()
    parsed = json.loads(row[0]) if row else {}
    return parsed if isinstance(parsed, dict) else {}


def table_references(parsed: Mapping[str, Any]) -> Counter[str] | None:
    """How often each table name (lower-cased) appears in a parsed query; None if it did not parse."""
    if parsed.get("error", True):
        return None
    counts: Counter[str] = Counter()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type") == "BASE_TABLE" and isinstance(node.get("table_name"), str):
                counts[node["table_name"].lower()] += 1
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(parsed.get("statements"))
    return counts


def check_config(config: Mapping[str, Any]) -> list[Problem]:
    """The query must be non-blank and parse as DuckDB SQL (tables are only known at run time)."""
    query = config.get("query")
    if not isinstance(query, str):
        return []  # the schema reports a missing or mistyped query
    if not query.strip():
        return [Problem("query is blank", field="query", hint="give a DuckDB SELECT over df_<step id>")]
    parsed = parse_query(query)
    if parsed.get("error") and parsed.get("error_type") == "parser":
        return [
            Problem(
                f"DuckDB cannot parse the query: {parsed.get('error_message', 'syntax error')}",
                field="query",
                hint="duckdb.processor runs DuckDB SQL",
            )
        ]
    return []


class _Session:
    """A DuckDB connection and its spill directory; ``close()`` is idempotent and thread-safe."""

    def __init__(self, con: duckdb.DuckDBPyConnection, temp_dir: Path) -> None:
        self.con = con
        self.temp_dir = temp_dir
        self.closed = threading.Event()
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            if self.closed.is_set():
                return
            self.closed.set()
        try:
            self.con.close()
        finally:
            shutil.rmtree(self.temp_dir, ignore_errors=True)


class DuckDBProcessor(Transform):
    """Runs ``config.query`` over the inputs streamed into DuckDB; see the module docstring."""

    def apply(self, inputs: Mapping[str, RowStream]) -> RowStream:
        ctx = self.ctx
        query = str(self.config["query"])
        if not query.strip():
            raise TerminalError(f"step '{ctx.step_id}': config.query is blank")
        keys = dataframe_keys(inputs)
        session = self._open_session()
        failures: list[BaseException] = []  # what an input stream raised inside a DuckDB thread
        rows_in = [0]
        try:
            references = table_references(parse_query(query))
            for index, (step_id, stream) in enumerate(inputs.items()):
                name = keys[step_id]
                reader = self._reader(step_id, stream, failures, rows_in)
                uses = None if references is None else references[name.lower()]
                if uses is None or uses > 1:
                    _materialize(session, name, reader, index)
                else:
                    session.con.register(name, reader)
            relation = session.con.sql(query)
            if relation is None:  # duckdb 1.x: the last statement returns no rows
                raise TerminalError(
                    f"step '{ctx.step_id}': config.query must end with a SELECT (a statement that "
                    "returns rows); its result is the step's output"
                )
            output = _arrow_reader(relation, ctx.batch_rows)
        except BaseException as exc:
            session.close()
            raise self._error(exc, failures, keys) from None
        self._interrupt_on_cancel(session)
        stream = RowStream(
            rebatch(self._output(session, output, failures, keys, rows_in), ctx.batch_rows),
            output.schema,
            name=ctx.step_id,
        )
        # A stream dropped unread (a downstream step failed first) still frees DuckDB and its files.
        weakref.finalize(stream, session.close)
        return stream

    # -- setup --------------------------------------------------------------------------------
    def _open_session(self) -> _Session:
        ctx = self.ctx
        temp_dir = ctx.work_dir / f"duckdb-{sanitize_step_id(ctx.step_id)}-p{ctx.partition}"
        temp_dir.mkdir(parents=True, exist_ok=True)
        limit_mib = max(MIN_MEMORY_BYTES, ctx.memory_limit_bytes // 2) // (1024 * 1024)
        config = {
            "memory_limit": f"{limit_mib}MiB",
            "temp_directory": str(temp_dir),
            "threads": max(1, min(MAX_THREADS, os.cpu_count() or 1)),
        }
        try:
            con = _duckdb().connect(":memory:", config=config)
            for setting in LOCKDOWN:
                con.execute(setting)
        except Exception as exc:
            shutil.rmtree(temp_dir, ignore_errors=True)
            raise TerminalError(f"step '{ctx.step_id}': cannot start DuckDB: {exc}") from None
        return _Session(con, temp_dir)

    def _reader(
        self, step_id: str, stream: RowStream, failures: list[BaseException], rows_in: list[int]
    ) -> pa.RecordBatchReader:
        """A reader DuckDB pulls from; it records what the upstream raised before DuckDB wraps it."""
        ctx = self.ctx
        schema = stream.schema
        if len(schema) == 0:
            raise TerminalError(f"step '{ctx.step_id}': input '{step_id}' has no columns")

        def batches() -> Iterator[pa.RecordBatch]:
            try:
                for batch in stream.batches():
                    ctx.check_cancelled()
                    rows_in[0] += batch.num_rows
                    yield batch if batch.schema == schema else batch.cast(schema)
            except BaseException as exc:
                failures.append(exc)
                raise

        return pa.RecordBatchReader.from_batches(schema, batches())

    def _interrupt_on_cancel(self, session: _Session) -> None:
        """Stop a long DuckDB operator (a big sort) at once when the attempt is cancelled."""
        cancel = self.ctx.cancel_event

        def watch() -> None:
            while not session.closed.wait(0.2):
                if cancel.is_set():
                    session.con.interrupt()
                    return

        threading.Thread(target=watch, name=f"duckdb-cancel-{self.ctx.step_id}", daemon=True).start()

    # -- output -------------------------------------------------------------------------------
    def _output(
        self,
        session: _Session,
        reader: pa.RecordBatchReader,
        failures: list[BaseException],
        keys: Mapping[str, str],
        rows_in: list[int],
    ) -> Iterator[pa.RecordBatch]:
        ctx = self.ctx
        rows_out = 0
        try:
            while True:
                ctx.check_cancelled()
                try:
                    batch = reader.read_next_batch()
                except StopIteration:
                    break
                rows_out += batch.num_rows
                yield batch
        except BaseException as exc:
            raise self._error(exc, failures, keys) from None
        finally:
            session.close()
        # Osiris's driver reports both; the engine adds rows_processed per step.
        ctx.log_metric("rows_read", rows_in[0], step=ctx.step_id)
        ctx.log_metric("rows_written", rows_out, step=ctx.step_id)

    # -- errors -------------------------------------------------------------------------------
    def _error(
        self, exc: BaseException, failures: list[BaseException], keys: Mapping[str, str]
    ) -> BaseException:
        """The error to raise for ``exc``: an upstream's own failure, or DuckDB's message located."""
        ctx = self.ctx
        if failures:
            return failures[0]
        if isinstance(exc, TaskError | KeyboardInterrupt | SystemExit | GeneratorExit):
            return exc
        if ctx.cancel_event.is_set():
            ctx.check_cancelled()  # raises Cancelled (transient)
        message = _duckdb_message(exc)
        missing = _MISSING_TABLE.search(message)
        if missing:
            table = missing.group(1).strip("\"'").split(".")[-1]
            available = ", ".join(keys.values()) or "none (the step has no inputs)"
            return TerminalError(
                f"step '{ctx.step_id}': config.query reads table '{table}', which is not an input of "
                f"this step; available tables: {available} ({_NAMING})"
            )
        duckdb = _duckdb()
        if isinstance(exc, duckdb.OutOfMemoryException):
            return TerminalError(
                f"step '{ctx.step_id}': DuckDB ran out of memory: {message} (DuckDB may use "
                f"{max(MIN_MEMORY_BYTES, ctx.memory_limit_bytes // 2) >> 20} MiB here, half of the "
                "worker's memory budget; raise the workers' memory limit)"
            )
        if isinstance(exc, getattr(duckdb, "PermissionException", ())):
            return TerminalError(
                f"step '{ctx.step_id}': DuckDB query failed: {message} (duckdb.processor reads only its "
                "inputs, tables df_<step id>: read files with a filesystem.* step upstream)"
            )
        return TerminalError(f"step '{ctx.step_id}': DuckDB query failed: {message}")


def _materialize(session: _Session, name: str, reader: pa.RecordBatchReader, index: int) -> None:
    """Copy one input into a DuckDB temporary table (spilled by DuckDB), for repeated scans."""
    staging = _STAGING.format(index)
    session.con.register(staging, reader)
    try:
        session.con.execute(f'CREATE TEMPORARY TABLE "{name}" AS SELECT * FROM "{staging}"')
    finally:
        session.con.unregister(staging)


def _duckdb_message(exc: BaseException) -> str:
    """DuckDB's message without the Python traceback pyarrow appends to a stream error."""
    message = str(exc).strip() or type(exc).__name__
    return message.split(" Detail: Python exception:", 1)[0].strip()


def _arrow_reader(relation: Any, rows: int) -> pa.RecordBatchReader:
    """The relation's result as a reader of ``rows``-row batches (DuckDB 1.x and 2.x names)."""
    for method in ("to_arrow_reader", "fetch_arrow_reader", "record_batch"):
        if hasattr(relation, method):
            reader: pa.RecordBatchReader = getattr(relation, method)(rows)
            return reader
    raise TerminalError("this duckdb version cannot return Arrow record batches; install duckdb>=1.1")


COMPONENTS: list[ComponentSpec] = [
    ComponentSpec(
        name="duckdb.processor",
        role="transform",
        operator=DuckDBProcessor,
        config_schema=CONFIG_SCHEMA,
        description="Run a DuckDB SQL query over the inputs (tables df_<step id>), streamed as Arrow.",
        min_inputs=0,
        max_inputs=MAX_INPUTS,
        check=check_config,
    ),
]
