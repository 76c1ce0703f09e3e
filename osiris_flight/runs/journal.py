"""The run journal: an append-only, versioned JSON-lines file that ``--resume`` reads.

It records what must survive a crash: which terminal tasks (sinks, discarded outputs) committed, and
source checkpoints. A line is written only after the thing it records is durable, so a resumed run
never skips work that was not finished. Lines are flushed to the kernel at once (a killed process
loses nothing) but not fsynced: a line lost to a power cut only makes a resume redo a committed task,
which is safe for overwrite-mode files and staged MySQL loads (a CSV ``write_mode: append`` redone
that way would append twice: see docs/components.md), and an fsync per task would cost milliseconds
per task on the coordinator's hot path. A reader refuses a journal whose version it does not know.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from osiris_flight.errors import disk_error
from osiris_flight.runs.rundir import read_jsonl

JOURNAL_VERSION = 1


class JournalError(ValueError):
    pass


@dataclass
class JournalState:
    manifest_fingerprint: str | None = None
    committed: dict[str, dict[str, Any]] = field(default_factory=dict)
    checkpoints: dict[str, dict[str, Any]] = field(default_factory=dict)
    attempts: int = 0
    ended: str | None = None


class Journal:
    """Appends journal lines. A line that cannot be written (disk full, I/O error, read-only) does not
    raise: the first failure is kept in ``error`` and nothing more is written, and the owner fails
    the run (a commit the journal could not record must not count as durable)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.error: str | None = None
        self._fh: Any = None
        try:
            self._fh = path.open("a", encoding="utf-8")
        except OSError as exc:
            self.error = disk_error(path, exc)

    def _append(self, record: dict[str, Any]) -> None:
        if self._fh is None:
            return
        try:
            self._fh.write(json.dumps({"v": JOURNAL_VERSION, **record}, sort_keys=True, default=str) + "\n")
            self._fh.flush()
        except OSError as exc:
            self.error = self.error or disk_error(self.path, exc)
            self.close()

    def started(self, manifest_fingerprint: str, resumed: bool) -> None:
        self._append({"type": "run_start", "manifest": manifest_fingerprint, "resumed": resumed})

    def committed(self, task_id: str, attempt: int, output: str, steps: dict[str, Any]) -> None:
        self._append(
            {
                "type": "task_committed",
                "task_id": task_id,
                "attempt": attempt,
                "output": output,
                "steps": steps,
            }
        )

    def checkpoint(self, task_id: str, token: str, sink_state: dict[str, Any], rows: int) -> None:
        self._append(
            {"type": "checkpoint", "task_id": task_id, "token": token, "sink_state": sink_state, "rows": rows}
        )

    def ended(self, status: str) -> None:
        self._append({"type": "run_end", "status": status})

    def close(self) -> None:
        fh, self._fh = self._fh, None
        if fh is not None:
            try:
                fh.close()
            except OSError as exc:  # the buffered tail could not be written
                self.error = self.error or disk_error(self.path, exc)


def read_journal(path: Path) -> JournalState:
    state = JournalState()
    if not path.exists():
        return state
    try:
        records = list(read_jsonl(path))
    except ValueError as exc:
        raise JournalError(f"corrupt journal line: {exc}") from None
    for number, record in records:
        if record is None:
            break  # a torn last line from a kill mid-write records nothing that was durable
        if record.get("v") != JOURNAL_VERSION:
            raise JournalError(f"{path}:{number}: journal version {record.get('v')!r} is not supported")
        kind = record.get("type")
        if kind == "run_start":
            state.manifest_fingerprint = record["manifest"]
            state.attempts += 1
            state.ended = None
        elif kind == "task_committed":
            state.committed[record["task_id"]] = record
        elif kind == "checkpoint":
            state.checkpoints[record["task_id"]] = dict(record["sink_state"])
        elif kind == "run_end":
            state.ended = record["status"]
    return state
