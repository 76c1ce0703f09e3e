"""Layout of ``run_logs/<pipeline>/<utc-timestamp>_<run_id>/`` and finding runs again.

A run directory (and a pipeline directory this makes) is mode ``0750`` (less under a stricter umask):
its events, errors and artifacts may quote the run's data, so only the coordinator's user and its
group read them; add who runs ``osiris-flight runs``/``logs`` there to that group.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from osiris_flight.errors import InvalidInput, Problem

STATUS_VERSION = 1
RUN_DIR_MODE = 0o750
_RUN_ID = re.compile(r"^[0-9a-f]{12}$")


def read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any] | None]]:
    """``(line number, record)`` of each non-empty line of a JSON-lines file the engine appends to.

    The last line may be torn (a process killed mid-write, or a reader racing the writer): it comes
    as ``None`` so the caller decides; a bad line before the last raises ValueError naming it.
    """
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                yield number, None
                return
            raise ValueError(f"{path}:{number}: not a JSON line") from None
        yield number, record


def new_run_id() -> str:
    return secrets.token_hex(6)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "pipeline"


@dataclass(frozen=True)
class RunDir:
    path: Path

    @classmethod
    def create(cls, root: Path, pipeline: str, run_id: str) -> RunDir:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        path = root / _safe(pipeline) / f"{stamp}_{run_id}"
        root.mkdir(parents=True, exist_ok=True)
        path.parent.mkdir(mode=RUN_DIR_MODE, exist_ok=True)
        path.mkdir(mode=RUN_DIR_MODE, exist_ok=False)
        (path / "artifacts").mkdir(mode=RUN_DIR_MODE)
        return cls(path.resolve())

    @property
    def run_id(self) -> str:
        return self.path.name.rsplit("_", 1)[-1]

    @property
    def pipeline(self) -> str:
        return self.path.parent.name

    manifest = property(lambda self: self.path / "manifest.json")
    plan = property(lambda self: self.path / "plan.json")
    events = property(lambda self: self.path / "events.jsonl")
    metrics = property(lambda self: self.path / "metrics.jsonl")
    status = property(lambda self: self.path / "status.json")
    journal = property(lambda self: self.path / "journal.jsonl")
    artifacts = property(lambda self: self.path / "artifacts")

    def write_status(self, **fields: Any) -> None:
        """Atomically replace status.json (temp + rename) so readers never see half a file."""
        body = {"status_version": STATUS_VERSION, "run_id": self.run_id, "pipeline": self.pipeline, **fields}
        tmp = self.status.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(body, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
        os.replace(tmp, self.status)

    def read_status(self) -> dict[str, Any]:
        try:
            data = json.loads(self.status.read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            return {"run_id": self.run_id, "pipeline": self.pipeline, "status": "unknown"}
        return data if isinstance(data, dict) else {}


def list_runs(root: Path) -> list[RunDir]:
    """Every run under ``root``, newest first."""
    if not root.is_dir():
        return []
    runs = [RunDir(p) for p in root.glob("*/*_*") if p.is_dir() and _RUN_ID.match(p.name.rsplit("_", 1)[-1])]
    return sorted(runs, key=lambda r: r.path.name, reverse=True)


def find_run(root: Path, run_id: str) -> RunDir:
    matches = [r for r in list_runs(root) if r.run_id == run_id or r.path.name == run_id]
    if not matches:
        known = ", ".join(r.run_id for r in list_runs(root)[:5]) or "none"
        raise InvalidInput(Problem(f"no run {run_id!r} under {root}", hint=f"recent runs: {known}"))
    return matches[0]
