"""The state row of a staged load: ``_osiris_load_state`` in the target's database.

One row per (run, task, step, target) load, keyed by its staging table's name. Chunk commits update
it in the same transaction as the staged rows, which is what makes it the truth about how far a
load got. ``owner`` is a fresh id per attempt: an attempt takes the row over in ``begin``, and every
later write checks it still owns the row, so a zombie attempt can no longer commit. The row carries
a format version; a writer refuses a version it does not understand.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pymysql.connections import Connection

from osiris_flight.components.mysql.connection import quote_ident

STATE_TABLE = "_osiris_load_state"
STATE_VERSION = 1
_DDL = """CREATE TABLE IF NOT EXISTS {table} (
  stage_table VARCHAR(64) NOT NULL PRIMARY KEY,
  target_table VARCHAR(200) NOT NULL,
  mode VARCHAR(16) NOT NULL,
  run_id VARCHAR(200) NOT NULL,
  task_id VARCHAR(200) NOT NULL,
  owner CHAR(32) NOT NULL,
  token MEDIUMTEXT NULL,
  `rows` BIGINT UNSIGNED NOT NULL DEFAULT 0,
  chunks BIGINT UNSIGNED NOT NULL DEFAULT 0,
  phase VARCHAR(16) NOT NULL DEFAULT 'loading',
  finished TINYINT(1) NOT NULL DEFAULT 0,
  format_version INT NOT NULL,
  updated_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"""


@dataclass(frozen=True)
class StateRow:
    mode: str
    owner: str
    token: str | None
    rows: int
    phase: str  # loading | publishing (a swap in progress) | finished
    finished: bool
    version: int


class LoadState:
    """Reads and writes one load's state row; the caller owns the transactions."""

    def __init__(self, conn: Connection, database: str, stage: str, owner: str) -> None:
        self.conn = conn
        self.table = f"{quote_ident(database)}.{quote_ident(STATE_TABLE)}"
        self.stage = stage
        self.owner = owner

    def _exec(self, sql: str, args: Any = None) -> int:
        with self.conn.cursor() as cur:
            return int(cur.execute(sql.format(table=self.table), args))

    def ensure_table(self) -> None:
        self._exec(_DDL)

    def lock(self) -> StateRow | None:
        """The row, locked until the transaction ends (None: a load not started yet)."""
        with self.conn.cursor() as cur:
            cur.execute(
                f"SELECT mode, owner, token, `rows`, phase, finished, format_version FROM {self.table} "
                "WHERE stage_table = %s FOR UPDATE",
                (self.stage,),
            )
            found = cur.fetchone()
        if found is None:
            return None
        mode, owner, token, rows, phase, finished, version = found
        return StateRow(
            str(mode),
            str(owner),
            None if token is None else str(token),
            int(rows),
            str(phase),
            bool(finished),
            int(version),
        )

    def create(self, *, target: str, mode: str, run_id: str, task_id: str) -> None:
        self._exec(
            "INSERT INTO {table} (stage_table, target_table, mode, run_id, task_id, owner, format_version) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s)",
            (self.stage, target, mode, run_id, task_id, self.owner, STATE_VERSION),
        )

    def take_over(self) -> None:
        self._exec(
            "UPDATE {table} SET owner = %s, phase = 'loading' WHERE stage_table = %s",
            (self.owner, self.stage),
        )

    def add_chunk(self, token: str, rows: int) -> bool:
        """Record a committed chunk; False when another attempt owns the load now."""
        updated = self._exec(
            "UPDATE {table} SET token = %s, `rows` = `rows` + %s, chunks = chunks + 1 "
            "WHERE stage_table = %s AND owner = %s AND finished = 0",
            (token, rows, self.stage, self.owner),
        )
        return updated == 1

    def owned(self) -> bool:
        """Lock the row and tell whether this attempt still owns an unfinished load."""
        row = self.lock()
        return row is not None and row.owner == self.owner and not row.finished

    def reset(self) -> None:
        self._exec(
            "UPDATE {table} SET token = NULL, `rows` = 0 WHERE stage_table = %s AND owner = %s",
            (self.stage, self.owner),
        )

    def set_phase(self, phase: str) -> None:
        self._exec("UPDATE {table} SET phase = %s WHERE stage_table = %s", (phase, self.stage))

    def mark_finished(self) -> None:
        self._exec(
            "UPDATE {table} SET finished = 1, phase = 'finished' WHERE stage_table = %s", (self.stage,)
        )
