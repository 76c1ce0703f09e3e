"""The telemetry facade: ``event(name, **fields)`` and ``metric(name, value, **tags)``.

Each record gets a UTC ISO timestamp (``ts``) and a float epoch (``t``, seconds) and goes to every
sink. Sinks are small: a JSON-lines file writer (events.jsonl / metrics.jsonl in the run directory) and
a callback (used to forward events live to the submitting client). Fields whose names look secret
are masked before any sink sees them: secrets never reach a log.
"""

from __future__ import annotations

import contextlib
import functools
import json
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from osiris_flight.errors import disk_error
from osiris_flight.redaction import REDACTED, is_secret_key

# Wider than is_secret_key on purpose: an event field is masked when its name merely contains one of
# these (``db_password_hint``, ``credentials_path``); a masked harmless field costs nothing here.
SECRET_MARKERS = ("password", "passwd", "secret", "token", "api_key", "apikey", "credential")


@functools.lru_cache(maxsize=4096)
def _masked(key: object) -> bool:
    """Is a field of this name masked? Cached: events reuse a small vocabulary of names."""
    return is_secret_key(key) or any(m in str(key).lower() for m in SECRET_MARKERS)


def mask_secrets(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: REDACTED if _masked(k) else mask_secrets(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [mask_secrets(v) for v in value]
    return value


class Sink(Protocol):
    def event(self, record: dict[str, Any]) -> None: ...
    def metric(self, record: dict[str, Any]) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


class JsonlSink:
    """Appends one JSON object per line. Lines are flushed by ``flush()``, which the coordinator calls
    once per pass of its loop (at most ~0.1 s apart): a killed coordinator loses at most that, and a
    flush per record cost a system call for each of the ~10 records of every task.

    A file that cannot be opened or written (disk full, I/O error, read-only) never raises into the
    caller: the sink records the first failure in ``error`` (naming the file and the system's
    message) and writes nothing more. Its owner decides what that means for the run."""

    def __init__(self, events_path: Path, metrics_path: Path) -> None:
        self._lock = threading.Lock()
        self.error: str | None = None
        self._files: dict[Path, Any] = {}
        for path in (events_path, metrics_path):
            try:
                self._files[path] = path.open("a", encoding="utf-8")
            except OSError as exc:
                self._fail(path, exc)
                return
        self._events = self._files[events_path]
        self._metrics = self._files[metrics_path]

    def _fail(self, path: Path, exc: OSError) -> None:
        if self.error is None:
            self.error = disk_error(path, exc)
        for fh in self._files.values():
            with contextlib.suppress(OSError, ValueError):
                fh.close()
        self._files = {}

    def _write(self, fh: Any, record: dict[str, Any]) -> None:
        line = json.dumps(record, ensure_ascii=False, default=str)
        with self._lock:
            if self.error is not None:
                return
            try:
                fh.write(line + "\n")
            except OSError as exc:
                self._fail(Path(fh.name), exc)

    def event(self, record: dict[str, Any]) -> None:
        if self.error is None:
            self._write(self._events, record)

    def metric(self, record: dict[str, Any]) -> None:
        if self.error is None:
            self._write(self._metrics, record)

    def flush(self) -> None:
        with self._lock:
            for path, fh in list(self._files.items()):
                try:
                    fh.flush()
                except OSError as exc:
                    self._fail(path, exc)
                    return

    def close(self) -> None:
        with self._lock:
            for path, fh in list(self._files.items()):
                try:
                    fh.close()
                except OSError as exc:
                    self._fail(path, exc)
            self._files = {}


class CallbackSink:
    """Hands events to a callback; with ``names``, only events of those names (each forwarded event
    goes over the wire, so a live view asks only for what it shows)."""

    def __init__(
        self, on_event: Callable[[dict[str, Any]], None], names: frozenset[str] | None = None
    ) -> None:
        self._on_event = on_event
        self._names = names

    def event(self, record: dict[str, Any]) -> None:
        if self._names is None or record.get("event") in self._names:
            self._on_event(record)

    def metric(self, record: dict[str, Any]) -> None:
        return None

    def flush(self) -> None:
        return None

    def close(self) -> None:
        return None


def _stamp(now: float) -> dict[str, Any]:
    return {"ts": datetime.fromtimestamp(now, UTC).isoformat(timespec="microseconds"), "t": now}


class Telemetry:
    def __init__(self, sinks: list[Sink] | None = None, **common: Any) -> None:
        self.sinks: list[Sink] = list(sinks or [])
        self.common = common

    def event(self, name: str, *, at: float | None = None, **fields: Any) -> dict[str, Any]:
        record = {
            **_stamp(at if at is not None else time.time()),
            "event": name,
            **self.common,
            **mask_secrets(fields),
        }
        for sink in self.sinks:
            sink.event(record)
        return record

    def metric(self, name: str, value: float, *, at: float | None = None, **tags: Any) -> None:
        record = {
            **_stamp(at if at is not None else time.time()),
            "metric": name,
            "value": value,
            **self.common,
            **mask_secrets(tags),
        }
        for sink in self.sinks:
            sink.metric(record)

    def flush(self) -> None:
        for sink in self.sinks:
            sink.flush()

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()
