"""``mysql.extractor``: stream a table or a query as Arrow batches, in resumable keyset chunks.

Every statement is read unbuffered (``wire.py``): the client holds one batch of raw rows at a time
(``batch_size`` rows, at most ``MAX_BATCH_BYTES``), decodes it to Arrow (``decode.py``) and hands it
on, so memory stays flat whatever the table size. With a key (``key``, or a table's single-column
primary key) the read goes in chunks of ``chunk_rows`` rows (``readplan.py``); each chunk's token is
its last key. A transient error in the middle of a chunk (a lost or killed connection, a deadlock)
is retried inside the task after a backoff, continuing right after the last key delivered, so no
row is lost or repeated; without a key, a transient error fails the attempt and the task restarts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from typing import Any

import pyarrow as pa
import pymysql
from pymysql.connections import Connection
from pymysql.constants import FIELD_TYPE

from osiris_flight._native_mysql import ColumnSplitter
from osiris_flight.components._common import format_columns
from osiris_flight.components.base import Chunk, ChunkedSource, StepContext
from osiris_flight.components.mysql import catalog
from osiris_flight.components.mysql.connection import (
    MySQLTransientError,
    classify,
    close_quietly,
    connect,
    quote_ident,
    secret_values,
)
from osiris_flight.components.mysql.decode import DecodedBatch, decode_columns, split_values
from osiris_flight.components.mysql.readplan import (
    QUERY_ALIAS,
    Position,
    ReadPlan,
    TypedValue,
    computed_cuts,
    range_for,
    typed_from_python,
    typed_from_raw,
)
from osiris_flight.components.mysql.types import Layout, layout_of
from osiris_flight.components.mysql.wire import PreparedResult, UnbufferedResult, typed_key
from osiris_flight.data.rowstream import RowStream
from osiris_flight.errors import TaskError, TerminalError

DEFAULT_BATCH_ROWS = 65536
DEFAULT_CHUNK_ROWS = 500_000
DEFAULT_RETRIES = 5
MAX_BATCH_BYTES = 64 * 1024 * 1024  # raw row bytes held before a batch is cut early (wide rows)
BACKOFF_FIRST_S = 0.2
BACKOFF_MAX_S = 30.0


def backoff_s(failure: int) -> float:
    """Seconds to wait before retry number ``failure`` (1, 2, ...): 0.2, 0.4, 0.8, ... capped at 30."""
    return min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** (failure - 1))


class _LazyChunk(Chunk):
    """A keyset chunk: its token (the last key it delivered) is known once its stream is read."""

    _token: Callable[[], str]

    def __init__(self, stream: RowStream, token: Callable[[], str]) -> None:
        object.__setattr__(self, "stream", stream)
        object.__setattr__(self, "_token", token)

    @property
    def token(self) -> str:
        return self._token()


class _ChunkState:
    """One statement of the read: what it asks for (``kind``) and how far it got.

    ``kind`` is ``keyed`` (a keyset chunk of at most ``limit`` rows), ``nulls`` (the rows whose key
    is NULL, one statement) or ``whole`` (no key: the whole read in one statement).
    """

    def __init__(self, start: Position, *, kind: str, limit: int | None) -> None:
        self.start = start
        self.kind = kind
        self.limit = limit
        self.rows = 0
        self.last_key = start.key
        self.finished = False

    @property
    def resumable(self) -> bool:
        """Can a broken statement continue after its last delivered row (or only restart empty)?"""
        return self.kind == "keyed"

    def token(self) -> str:
        return self.end_position().token()

    def end_position(self) -> Position:
        if not self.finished:
            raise RuntimeError("a chunk's token was asked for before its stream was read to the end")
        if self.kind == "keyed":
            done = self.limit is not None and self.rows < self.limit
        else:
            done = self.kind == "whole"
        return replace(
            self.start,
            rows=self.start.rows + self.rows,
            key=self.last_key,
            nulls_done=self.start.nulls_done or self.kind == "nulls",
            done=done,
        )


class MySQLExtractor(ChunkedSource):
    """Reads this task's partition of a MySQL table or query (see the module docstring)."""

    def __init__(self, ctx: StepContext) -> None:
        super().__init__(ctx)
        cfg = self.config
        self.ref = str(cfg["connection"])
        self._conn_cfg = ctx.connection(self.ref)
        self._secrets = secret_values(self._conn_cfg)
        self.batch_rows = int(cfg.get("batch_size", DEFAULT_BATCH_ROWS))
        self.chunk_rows = int(cfg.get("chunk_rows", DEFAULT_CHUNK_ROWS))
        self.retries = int(cfg.get("retries", DEFAULT_RETRIES))
        # The replaceable piece. binary (default): the statement runs as a server-side prepared
        # statement and its binary rows are decoded in Cython straight into Arrow buffers (the
        # server skips formatting values as text: ~2x the rows/s of the text protocol here).
        # native: text-protocol rows split in Cython; reference: the same in pure Python. The
        # conversion of split text columns to Arrow types is shared by the last two.
        decoder = cfg.get("decoder", "binary")
        self.binary = decoder == "binary"
        self.native = decoder == "native"
        self._slice_zero_dates: dict[str, int] = {}
        self.max_rows: int | None = cfg.get("limit")
        self._conn: Connection | None = None
        self._plan: ReadPlan | None = None
        self._layout: Layout | None = None
        self._keep: list[int] = []
        self._key_index = -1
        self._schema: pa.Schema | None = None
        self._estimate: int | None = None
        self.zero_dates: dict[str, int] = {}
        self.retried = 0  # transient errors survived in this task (also reported as mysql_retry events)

    # -- public face ----------------------------------------------------------------------------
    def open(self) -> RowStream:
        schema = self._prepare()

        def batches() -> Iterator[pa.RecordBatch]:
            for chunk in self.open_chunks(None):
                yield from chunk.stream.batches()

        return RowStream(batches(), schema, estimated_rows=self._estimate, name=self.ctx.step_id)

    def open_chunks(self, resume_token: str | None) -> Iterator[Chunk]:
        ctx = self.ctx
        schema = self._prepare()
        plan = self._plan
        assert plan is not None
        position = Position(partition=ctx.partition, partitions=ctx.partitions)
        if resume_token:
            position = Position.from_token(resume_token, ctx.partition, ctx.partitions)
        try:
            position = self._fix_range(position)
            while not position.done:
                remaining = None if self.max_rows is None else self.max_rows - position.rows
                if remaining is not None and remaining <= 0:
                    break
                if plan.key is None:
                    state = _ChunkState(replace(position, rows=0), kind="whole", limit=remaining)
                elif plan.nullable_key and not position.nulls_done:
                    state = _ChunkState(position, kind="nulls", limit=remaining)
                else:
                    limit = self.chunk_rows if remaining is None else min(self.chunk_rows, remaining)
                    state = _ChunkState(position, kind="keyed", limit=limit)
                stream = RowStream(self._chunk_batches(state), schema, name=ctx.step_id)
                yield _LazyChunk(stream, state.token)
                position = state.end_position()
            self._report_zero_dates()
        finally:
            self._disconnect()

    # -- preparation ----------------------------------------------------------------------------
    def _prepare(self) -> pa.Schema:
        """Probe the result's columns (``LIMIT 0``: not executed), decide the key and the SQL."""
        if self._schema is not None:
            return self._schema
        try:
            self._plan, self._layout, hidden = self._build_plan(self._connection())
        except (pymysql.err.MySQLError, OSError) as exc:
            self._disconnect()
            raise self._error(exc, "cannot prepare the read") from None
        self._keep = [i for i in range(len(self._layout.plans)) if i not in hidden]
        self._schema = pa.schema([self._layout.schema.field(i) for i in self._keep])
        return self._schema

    def _build_plan(self, conn: Connection) -> tuple[ReadPlan, Layout, set[int]]:
        cfg, step = self.config, self.ctx.step_id
        table, database = cfg.get("table"), cfg.get("schema") or catalog.current_database(conn)
        key: str | None = cfg.get("key")
        partition_column: str | None = (cfg.get("partition") or {}).get("column")
        query = ""
        if table is not None:
            source = f"{quote_ident(database)}.{quote_ident(table)}" if database else quote_ident(table)
            if key is None and database:
                primary = catalog.primary_key(conn, database, table)
                key = primary[0] if len(primary) == 1 else None
            wanted = list(cfg.get("columns") or [])
            names = wanted + ([key] if key and wanted and key not in wanted else [])
            probe_list = ", ".join(quote_ident(n) for n in names) if names else "*"
            if database and self.ctx.partitions == 1:
                self._estimate = catalog.estimated_rows(conn, database, table)
        else:
            query = str(cfg["query"]).strip().rstrip(";").strip()
            source, probe_list = f"({query}) AS {QUERY_ALIAS}", "*"
        probe = UnbufferedResult(conn, f"SELECT {probe_list} FROM {source} LIMIT 0")
        probe.read(1, 1)
        columns = probe.columns
        names = [c.name for c in columns]  # distinct: a derived table refuses duplicates (1060)
        for column, what in ((key, "key"), (partition_column if table is None else None, "partition.column")):
            if column is not None and column not in names:
                raise TerminalError(
                    f"step '{step}': config.{what}: column '{column}' is not in the result; "
                    f"its columns are {format_columns(names)}"
                )
        layout = layout_of(columns, catalog.column_types(conn, columns))
        hidden = {names.index(key)} if key and cfg.get("columns") and key not in cfg["columns"] else set()
        self._key_index = names.index(key) if key else -1
        # MariaDB's text protocol sends FLOAT with 6 significant digits; CAST(... AS DOUBLE) holds
        # every float exactly. Only where the select list is ours: a plain query is sent as written
        # (wrapping it could lose its ORDER BY), and reads FLOAT as Osiris does.
        owned = table is not None or key is not None or partition_column is not None
        select = ", ".join(
            f"CAST({quote_ident(c.name)} AS DOUBLE) AS {quote_ident(c.name)}"
            if c.type_code == FIELD_TYPE.FLOAT
            else quote_ident(c.name)
            for c in columns
        )
        plan = ReadPlan(
            source=source,
            select_list=select,
            key=key,
            nullable_key=bool(key) and not columns[self._key_index].not_null,
            partition_column=partition_column,
            raw_query=None if owned else query,
            condition=cfg.get("where") if table is not None else None,
        )
        return plan, layout, hidden

    def _fix_range(self, position: Position) -> Position:
        """This task's partition range: from the checkpoint, else the bounds, else MIN/MAX now."""
        assert self._plan is not None
        spec = self.config.get("partition")
        if not spec:
            return position
        if position.range is None:
            cuts: list[TypedValue] | None
            if "bounds" in spec:
                cuts = [typed_from_python(b) for b in spec["bounds"]]
            else:
                low, high = self._min_max(spec["column"])
                cuts = computed_cuts(low, high, partitions_of(self.config), spec["column"])
            position = replace(position, range=range_for(self.ctx.partition, cuts))
        assert position.range is not None
        self._plan.range = position.range
        return position

    def _min_max(self, column: str) -> tuple[object, object]:
        assert self._plan is not None
        sql = self._plan.bounds_sql(column)
        failures = 0
        while True:
            try:
                with self._connection().cursor() as cur:
                    cur.execute(sql)
                    low, high = cur.fetchone()
                return low, high
            except (pymysql.err.MySQLError, OSError, MySQLTransientError) as exc:
                self._disconnect()
                error = self._error(exc, f"cannot compute the range of partition column '{column}'")
                failures += 1
                if not error.transient or failures > self.retries:
                    raise error from None
                self._wait(failures, error)

    # -- reading --------------------------------------------------------------------------------
    def _chunk_batches(self, state: _ChunkState) -> Iterator[pa.RecordBatch]:
        """Stream one statement; a transient error reconnects and continues after the last key."""
        try:
            yield from self._read_statement(state)
        finally:
            if not state.finished:  # abandoned mid-result: the connection cannot be reused
                self._disconnect()

    def _read_statement(self, state: _ChunkState) -> Iterator[pa.RecordBatch]:
        assert self._plan is not None and self._layout is not None
        plan, layout, ctx = self._plan, self._layout, self.ctx
        limit_bytes = max(1 << 20, min(MAX_BATCH_BYTES, ctx.memory_limit_bytes // 8))
        failures = 0
        while True:
            ctx.check_cancelled()
            try:
                conn = self._connection()
                limit = None if state.limit is None else state.limit - state.rows
                nulls = state.kind == "nulls"
                sql = plan.sql(conn.escape, after=state.last_key, nulls=nulls, limit=limit)
                result = (PreparedResult if self.binary else UnbufferedResult)(conn, sql)
                if [c.name for c in result.columns] != [c.name for c in layout.columns]:
                    raise TerminalError(
                        f"step '{ctx.step_id}': the result's columns changed during the read "
                        f"(now {format_columns(c.name for c in result.columns)}); restart the run"
                    )
                # Our statements carry their LIMIT: read them to the end (EOF), so the connection
                # serves the next chunk. A plain query is capped here, and its connection dropped
                # rather than drained.
                cap = state.limit if plan.raw_query is not None else None
                for columns in self._column_slices(result, layout, limit_bytes):
                    rows = len(columns[0])
                    if cap is not None and state.rows + rows > cap:
                        columns = [c.slice(0, cap - state.rows) for c in columns]
                    yield self._deliver(state, columns)
                    failures = 0
                    if cap is not None and state.rows >= cap:
                        break
                if not result.done:
                    self._disconnect()
                state.finished = True
                return
            except (pymysql.err.MySQLError, OSError, MySQLTransientError) as exc:
                self._disconnect()
                error = self._error(exc, "read failed")
                if not error.transient or (state.rows and not state.resumable):
                    raise error from None
                failures += 1
                if failures > self.retries:
                    raise type(error)(f"{error} (gave up after {self.retries} retries)") from None
                self._wait(failures, error, after_rows=state.start.rows + state.rows)

    def _column_slices(
        self, result: UnbufferedResult | PreparedResult, layout: Layout, limit_bytes: int
    ) -> Iterator[list[pa.BinaryArray]]:
        """The result's rows as split columns (binary: final arrays), a bounded slice at a time."""
        if isinstance(result, PreparedResult):
            while arrays := result.read_arrays(layout, self.batch_rows, limit_bytes):
                self._slice_zero_dates = result.zero_dates
                yield arrays
            return
        if self.native:
            splitter = ColumnSplitter(len(layout.plans))
            while columns := result.read_columns(splitter, self.batch_rows, limit_bytes):
                yield columns
            return
        while packets := result.read(self.batch_rows, limit_bytes):
            yield [pa.array(v, pa.binary()) for v in split_values(packets, len(layout.plans))]

    def _deliver(self, state: _ChunkState, columns: list[pa.BinaryArray]) -> pa.RecordBatch:
        """Convert a slice of split rows and advance the statement's position past it."""
        assert self._layout is not None
        layout = self._layout
        if self.binary:
            batch = pa.RecordBatch.from_arrays(columns, schema=layout.schema)
            decoded = DecodedBatch(batch, self._slice_zero_dates)
        else:
            decoded = decode_columns(columns, layout)
        for column, count in decoded.zero_dates.items():
            self.zero_dates[column] = self.zero_dates.get(column, 0) + count
        if self._key_index >= 0:
            raw = columns[self._key_index][-1].as_py()
            if raw is not None:
                kind = layout.plans[self._key_index].kind
                state.last_key = typed_key(raw) if self.binary else typed_from_raw(kind, raw)
        state.rows += len(columns[0])
        batch = decoded.batch
        if len(self._keep) != batch.num_columns:
            batch = batch.select(self._keep)
        # Running count under its own name: rows_read is the engine's one record per step (as in Osiris).
        self.ctx.log_metric("mysql_rows_fetched", state.start.rows + state.rows, step=self.ctx.step_id)
        return batch

    # -- plumbing -------------------------------------------------------------------------------
    def _connection(self) -> Connection:
        if self._conn is None or not self._conn.open:
            self._conn = connect(self._conn_cfg, step_id=self.ctx.step_id, ref=self.ref, purpose="read")
            # The server's id of this connection, so an operator can find it in SHOW PROCESSLIST.
            self.ctx.log_event("mysql_connected", step=self.ctx.step_id, connection_id=self._conn.thread_id())
        return self._conn

    def _disconnect(self) -> None:
        close_quietly(self._conn)
        self._conn = None

    def _error(self, exc: BaseException, what: str) -> TaskError:
        if isinstance(exc, TaskError):
            return exc
        return classify(exc, step_id=self.ctx.step_id, ref=self.ref, what=what, secrets=self._secrets)

    def _wait(self, failure: int, error: Exception, *, after_rows: int = 0) -> None:
        delay = backoff_s(failure)
        self.retried += 1
        self.ctx.log_event(
            "mysql_retry",
            step=self.ctx.step_id,
            attempt=failure,
            of=self.retries,
            delay_s=delay,
            after_rows=after_rows,
            error=str(error),
        )
        self.ctx.cancel_event.wait(delay)
        self.ctx.check_cancelled()

    def _report_zero_dates(self) -> None:
        """One warning per column: zero or invalid dates were read as null."""
        for column, count in sorted(self.zero_dates.items()):
            self.ctx.log_event("mysql_zero_dates", step=self.ctx.step_id, column=column, count=count)
            self.ctx.log_metric("mysql_zero_dates", count, step=self.ctx.step_id, column=column)


def partitions_of(config: Mapping[str, Any]) -> int:
    """Parallel tasks a step splits into: ``partition.partitions``, or ``len(bounds) + 1``."""
    spec = config.get("partition")
    if not isinstance(spec, Mapping):
        return 1
    if isinstance(spec.get("bounds"), list):
        return len(spec["bounds"]) + 1
    return max(1, int(spec.get("partitions", 1)))
