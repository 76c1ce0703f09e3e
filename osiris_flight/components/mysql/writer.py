"""``mysql.writer``: exactly-once loads into MySQL through a staging table and a state row.

Rows never go straight into the target. Each task loads a staging table named from (run id, task
id, step, target) -- not the attempt, so a retried or resumed attempt finds its predecessor's
work -- and every chunk is committed in ONE transaction together with the source's checkpoint
token, in a row of ``_osiris_load_state`` (in the target's database). That row is the truth:
``begin`` returns the token stored there, so a resumed attempt continues exactly after the last
committed chunk. ``finish`` publishes atomically:

* append: ``INSERT INTO target SELECT ... FROM stage`` and the "finished" mark, one transaction;
  with ``create_table`` and no target, the new table is built under a private name (``new``) and
  renamed into place just before that transaction, so a failed run leaves no new, empty target;
* upsert: the same with ``ON DUPLICATE KEY UPDATE`` (the last row of a key wins);
* replace: the stage is a full copy of the table's definition; ``RENAME TABLE target TO old,
  stage TO target`` swaps it in atomically, so the old table stays whole until the new one is.

A late attempt of a finished task gets ``AlreadyFinished``. Each attempt takes ownership of the
state row, so a zombie attempt (declared dead, still running) can no longer commit. ``abort`` rolls
back and leaves the target untouched; the stage stays for a resume (docs/mysql.md: cleanup).
"""

from __future__ import annotations

import contextlib
import hashlib
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pymysql
from pymysql.connections import Connection
from pymysql.constants import SERVER_STATUS

from osiris_flight.components._common import format_columns
from osiris_flight.components.base import AlreadyFinished, ChunkedSink, StepContext, WriteResult
from osiris_flight.components.mysql import bulkload, catalog
from osiris_flight.components.mysql.config import writer_keys, writer_mode
from osiris_flight.components.mysql.connection import (
    MySQLTransientError,
    classify,
    close_quietly,
    connect,
    quote_ident,
    secret_values,
)
from osiris_flight.components.mysql.loadstate import STATE_TABLE, STATE_VERSION, LoadState
from osiris_flight.data.rowstream import RowStream
from osiris_flight.errors import TerminalError

SEQ = "_osiris_seq"
DEFAULT_BATCH_ROWS = 10000
# MySQL error 1050: the table a RENAME or CREATE names already exists.
ER_TABLE_EXISTS = 1050
COMMIT_ROWS = 500_000  # unchunked write(): rows per intermediate commit (bounds the transaction)


class MySQLWriter(ChunkedSink):
    """Writes a stream into a MySQL table exactly once (see the module docstring)."""

    def __init__(self, ctx: StepContext) -> None:
        super().__init__(ctx)
        cfg = self.config
        self.ref = str(cfg["connection"])
        self._conn_cfg = ctx.connection(self.ref)
        self._secrets = secret_values(self._conn_cfg)
        self.mode = writer_mode(cfg)
        self.keys = writer_keys(cfg)
        self.table = str(cfg["table"])
        self.batch_rows = int(cfg.get("batch_size", DEFAULT_BATCH_ROWS))
        self.method = str(cfg.get("load_method", "auto"))
        self._owner = uuid.uuid4().hex
        self._conn: Connection | None = None
        self.database = ""
        self.stage = self.old = self.new = ""
        self._rows = 0  # committed, all attempts
        self._pending = 0  # written in the open transaction
        self._bytes = 0
        self._columns: list[str] | None = None
        self._numeric_text: set[str] = set()
        self._schema: pa.Schema | None = None

    # -- names ----------------------------------------------------------------------------------
    def _q(self, table: str) -> str:
        return f"{quote_ident(self.database)}.{quote_ident(table)}"

    @property
    def target(self) -> str:
        return f"{self.database}.{self.table}"

    # -- ChunkedSink ----------------------------------------------------------------------------
    def begin(self, resume_state: Mapping[str, Any] | None) -> str | None:
        """Take over this task's load: a fresh state row, or the committed one (which wins)."""
        ctx = self.ctx
        self._conn = connect(
            self._conn_cfg,
            step_id=ctx.step_id,
            ref=self.ref,
            purpose="write",
            local_infile=self.method != "insert",
        )
        # The server's id of this connection, so an operator can find it in SHOW PROCESSLIST.
        ctx.log_event("mysql_connected", step=ctx.step_id, connection_id=self._conn.thread_id())
        with self._sql("cannot prepare the load"):
            self.database = str(self.config.get("schema") or catalog.current_database(self._conn) or "")
            if not self.database:
                raise TerminalError(
                    f"step '{ctx.step_id}': connection {self.ref} names no database; set its database "
                    "or the step's schema"
                )
            digest = hashlib.sha256(
                "\0".join((ctx.run_id, ctx.task_id, ctx.step_id, self.target)).encode()
            ).hexdigest()[:24]
            self.stage, self.old = f"_osiris_stage_{digest}", f"_osiris_old_{digest}"
            self.new = f"_osiris_new_{digest}"
            self._check_target()
            return self._take_over()

    def write_chunk(self, stream: RowStream) -> None:
        self._write_batches(stream, commit_every=None)

    def commit_chunk(self, token: str) -> dict[str, Any]:
        """The rows written since the last commit, and ``token``, in one transaction."""
        with self._sql("cannot commit a chunk"):
            self._begin_txn()
            if not self._state().add_chunk(token, self._pending):
                self._conn_().rollback()
                raise self._superseded()
            self._conn_().commit()
        self._rows += self._pending
        self._pending = 0
        return {"version": STATE_VERSION, "stage": self.stage, "token": token, "rows": self._rows}

    def finish(self) -> WriteResult:
        """Publish the staged rows atomically and mark the load finished."""
        if self._pending:
            raise RuntimeError("finish() with rows written but not committed")
        with self._sql(f"cannot publish into {self.target}"):
            if self.mode == "replace":
                self._publish_swap()
            else:
                self._publish_insert()
        close_quietly(self._conn)
        self._conn = None
        return WriteResult(self._rows, self._bytes, self.target)

    def abort(self) -> None:
        """Roll back whatever is open; the target is untouched, the stage stays for a resume."""
        conn, self._conn = self._conn, None
        if conn is not None and conn.open:
            with contextlib.suppress(Exception):
                conn.rollback()
        close_quietly(conn)

    def write(self, stream: RowStream) -> WriteResult:
        """Unchunked: the whole stream, committed every COMMIT_ROWS rows; a retry starts over."""
        try:
            token = self.begin(None)
        except AlreadyFinished as done:
            return done.result
        try:
            if token is not None or self._rows:
                self._reset()
            self._write_batches(stream, commit_every=COMMIT_ROWS)
            self.commit_chunk("")
            return self.finish()
        except BaseException:
            self.abort()
            raise

    # -- begin ----------------------------------------------------------------------------------
    def _check_target(self) -> None:
        conn, step = self._conn_(), self.ctx.step_id
        exists = catalog.table_exists(conn, self.database, self.table)
        if self.mode == "replace" and self.ctx.partitions > 1:
            raise TerminalError(
                f"step '{step}': mode replace needs one writer task, but its input is split into "
                f"{self.ctx.partitions} partitions; drop the partition of the upstream read, or append "
                "into an emptied table"
            )
        if not exists and self.mode != "replace" and not self.config.get("create_table"):
            raise TerminalError(
                f"step '{step}': table {self.target} does not exist; create it, or set create_table: true"
            )
        if self.mode != "upsert":
            return
        if not self.keys and exists:
            self.keys = catalog.primary_key(conn, self.database, self.table)
        if not self.keys:
            raise TerminalError(f"step '{step}': mode upsert needs upsert_keys (or primary_key)")
        if exists:
            indexes = catalog.unique_keys(conn, self.database, self.table)
            if not any(set(cols) == set(self.keys) for cols in indexes.values()):
                raise TerminalError(
                    f"step '{step}': mode upsert: table {self.target} has no PRIMARY KEY or UNIQUE index "
                    f"on ({', '.join(self.keys)}); add one (ALTER TABLE ... ADD UNIQUE (...)) or fix "
                    "upsert_keys"
                )

    def _take_over(self) -> str | None:
        conn, state, step = self._conn_(), self._state(), self.ctx.step_id
        state.ensure_table()
        self._begin_txn()
        row = state.lock()
        if row is None:
            state.create(target=self.target, mode=self.mode, run_id=self.ctx.run_id, task_id=self.ctx.task_id)
            conn.commit()
            # Left by a deleted state row.
            self._exec(f"DROP TABLE IF EXISTS {self._q(self.stage)}, {self._q(self.new)}")
            return None
        problem = None
        if row.version != STATE_VERSION:
            problem = f"has format version {row.version}, this writer understands {STATE_VERSION}"
        elif row.mode != self.mode:
            problem = f"was started with mode {row.mode}"
        if problem:
            conn.rollback()
            raise TerminalError(f"step '{step}': the staged load into {self.target} ({self.stage}) {problem}")
        self._rows = row.rows
        stage_exists = catalog.table_exists(conn, self.database, self.stage)
        finished = row.finished
        if row.phase == "publishing" and not stage_exists:  # the swap happened; the mark did not
            state.mark_finished()
            finished = True
        if finished:
            conn.commit()
            self._exec(
                f"DROP TABLE IF EXISTS {self._q(self.stage)}, {self._q(self.old)}, {self._q(self.new)}"
            )
            raise AlreadyFinished(WriteResult(self._rows, 0, self.target))
        if self._rows and not stage_exists:
            conn.rollback()
            raise TerminalError(
                f"step '{step}': staging table {self.stage} of {self.target} is gone; delete its row from "
                f"{STATE_TABLE} to start the load over"
            )
        state.take_over()
        conn.commit()
        return row.token

    def _reset(self) -> None:
        """Forget what earlier attempts staged (unchunked write(): the stream starts from row 0)."""
        with self._sql("cannot reset the staging table"):
            self._begin_txn()
            if catalog.table_exists(self._conn_(), self.database, self.stage):
                self._exec(f"DELETE FROM {self._q(self.stage)}")
            self._state().reset()
            self._conn_().commit()
        self._rows = 0

    # -- loading --------------------------------------------------------------------------------
    def _write_batches(self, stream: RowStream, *, commit_every: int | None) -> None:
        schema = stream.schema
        with self._sql("cannot create the staging table"):
            self._ensure_stage(schema)
        for batch in stream.batches():  # upstream errors pass through with their own class
            if batch.num_rows == 0:
                continue
            if batch.schema.names != schema.names:
                raise TerminalError(
                    f"step '{self.ctx.step_id}': a batch has columns {batch.schema.names}, not {schema.names}"
                )
            with self._sql(f"cannot load rows for {self.target}"):
                self._begin_txn()
                self._load(batch)
            self._pending += batch.num_rows
            self._bytes += batch.nbytes
            if commit_every is not None and self._pending >= commit_every:
                self.commit_chunk("")

    def _ensure_stage(self, schema: pa.Schema) -> None:
        conn, names = self._conn_(), list(schema.names)
        if self._columns is not None:
            if names != self._columns:
                raise TerminalError(f"step '{self.ctx.step_id}': the input's columns changed to {names}")
            return
        self._schema = schema
        if catalog.table_exists(conn, self.database, self.table):
            self._check_columns(names, [n for n, _ in catalog.table_columns(conn, self.database, self.table)])
        if not catalog.table_exists(conn, self.database, self.stage):
            self._create_stage(schema)
        staged_types = dict(catalog.table_columns(conn, self.database, self.stage))
        self._check_columns(names, [name for name in staged_types if name != SEQ])
        self._numeric_text = {
            name for name, data_type in staged_types.items() if data_type in ("bit", "year")
        }
        self._columns = names

    def _check_columns(self, names: list[str], available: list[str]) -> None:
        missing = [n for n in names if n not in available]
        if missing:
            raise TerminalError(
                f"step '{self.ctx.step_id}': column(s) {missing} are not in table {self.target} "
                f"(it has {format_columns(available)})"
            )

    def _create_stage(self, schema: pa.Schema) -> None:
        conn, stage = self._conn_(), self._q(self.stage)
        exists = catalog.table_exists(conn, self.database, self.table)
        keys = list(self.config.get("primary_key") or (self.keys if self.mode == "upsert" else []))
        if self.mode == "replace":
            if exists:
                self._exec(f"CREATE TABLE {stage} LIKE {self._q(self.table)}")
                self._exec(f"ALTER TABLE {stage} ENGINE=InnoDB")  # chunk commits must be transactional
            else:
                self._exec(bulkload.create_table_sql(stage, schema, keys))
            return
        template = self.table
        if not exists:  # create_table: the new target, under its private name until finish
            template = self.new
            self._exec(bulkload.create_table_sql(self._q(template), schema, keys, if_not_exists=True))
        columns = ", ".join(quote_ident(n) for n in schema.names)
        self._exec(
            f"CREATE TABLE {stage} ({quote_ident(SEQ)} BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY) "
            f"ENGINE=InnoDB SELECT {columns} FROM {self._q(template)} LIMIT 0"
        )

    def _load(self, batch: pa.RecordBatch) -> None:
        conn, stage = self._conn_(), self._q(self.stage)
        if self.method != "insert":
            try:
                Path(self.ctx.work_dir).mkdir(parents=True, exist_ok=True)
                work_file = Path(self.ctx.work_dir) / f"mysql-load-{self._owner}.tsv"
                bulkload.load_data(
                    conn,
                    stage,
                    batch,
                    max_rows=self.batch_rows,
                    work_file=work_file,
                    numeric_text=self._numeric_text,
                )
                return
            except pymysql.err.MySQLError as exc:
                if self.method == "load_data" or exc.args[0] not in bulkload.LOCAL_INFILE_REFUSED:
                    raise
                self.method = "insert"  # the server refuses LOCAL INFILE: INSERT from now on
        bulkload.insert(conn, stage, batch, max_rows=self.batch_rows)

    # -- publishing -----------------------------------------------------------------------------
    def _lock_state(self) -> None:
        self._begin_txn()
        if not self._state().owned():
            self._conn_().rollback()
            raise self._superseded()

    def _superseded(self) -> MySQLTransientError:
        return MySQLTransientError(
            f"step '{self.ctx.step_id}': the load into {self.target} was taken over by a newer attempt"
        )

    def _publish_insert(self) -> None:
        conn = self._conn_()
        has_stage = catalog.table_exists(conn, self.database, self.stage)
        columns = (
            [n for n, _ in catalog.table_columns(conn, self.database, self.stage) if n != SEQ]
            if has_stage
            else []
        )
        self._create_target()
        self._lock_state()
        if columns:
            names = ", ".join(quote_ident(c) for c in columns)
            sql = (
                f"INSERT INTO {self._q(self.table)} ({names}) SELECT {names} FROM {self._q(self.stage)} "
                f"ORDER BY {quote_ident(SEQ)}"
            )
            if self.mode == "upsert":
                updates = [c for c in columns if c not in self.keys] or self.keys[:1]
                sql += " ON DUPLICATE KEY UPDATE " + ", ".join(
                    f"{quote_ident(c)} = VALUES({quote_ident(c)})" for c in updates
                )
            self._exec(sql)
        self._state().mark_finished()
        conn.commit()
        self._exec(f"DROP TABLE IF EXISTS {self._q(self.stage)}")

    def _create_target(self) -> None:
        """Rename the table built for a missing target into place (create_table). Before the publishing
        transaction, as DDL commits anyway: a crash between the two leaves the target empty and the
        load resumable. Another partition's writer may have created the target first: then this
        one's copy is dropped."""
        conn = self._conn_()
        if catalog.table_exists(conn, self.database, self.table):
            self._exec(f"DROP TABLE IF EXISTS {self._q(self.new)}")
        elif catalog.table_exists(conn, self.database, self.new):
            try:
                self._exec(f"RENAME TABLE {self._q(self.new)} TO {self._q(self.table)}")
            except pymysql.err.MySQLError as exc:
                if exc.args[0] != ER_TABLE_EXISTS:
                    raise
                self._exec(f"DROP TABLE IF EXISTS {self._q(self.new)}")

    def _publish_swap(self) -> None:
        conn = self._conn_()
        exists = catalog.table_exists(conn, self.database, self.table)
        if not catalog.table_exists(conn, self.database, self.stage):
            if not exists and self._schema is None:
                self._lock_state()  # nothing was ever read and there is no table to empty
                self._state().mark_finished()
                conn.commit()
                return
            self._create_stage(self._schema or pa.schema([]))
        self._lock_state()
        self._state().set_phase("publishing")
        conn.commit()
        self._exec(f"DROP TABLE IF EXISTS {self._q(self.old)}")
        if exists:
            self._exec(
                f"RENAME TABLE {self._q(self.table)} TO {self._q(self.old)}, "
                f"{self._q(self.stage)} TO {self._q(self.table)}"
            )
        else:
            self._exec(f"RENAME TABLE {self._q(self.stage)} TO {self._q(self.table)}")
        self._state().mark_finished()
        conn.commit()
        self._exec(f"DROP TABLE IF EXISTS {self._q(self.old)}")

    # -- plumbing -------------------------------------------------------------------------------
    def _state(self) -> LoadState:
        return LoadState(self._conn_(), self.database, self.stage, self._owner)

    def _conn_(self) -> Connection:
        if self._conn is None:
            raise RuntimeError("mysql.writer used before begin()")
        return self._conn

    def _begin_txn(self) -> None:
        conn = self._conn_()
        if not conn.server_status & SERVER_STATUS.SERVER_STATUS_IN_TRANS:
            conn.begin()

    def _exec(self, sql: str, args: object = None) -> int:
        with self._conn_().cursor() as cur:
            return int(cur.execute(sql, args))

    @contextlib.contextmanager
    def _sql(self, what: str) -> Iterator[None]:
        """Turn a MySQL error of the writer's own statements into a classified task error."""
        try:
            yield
        except (pymysql.err.MySQLError, OSError) as exc:
            raise classify(
                exc, step_id=self.ctx.step_id, ref=self.ref, what=what, secrets=self._secrets
            ) from None
