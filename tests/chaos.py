"""Plugin components for tests that disturb runs on purpose (loaded via OSIRIS_FLIGHT_PLUGINS).

* ``chaos.slow``: passes batches through, sleeping ``delay_s`` seconds before each, so a test can
  act (kill a worker, interrupt the CLI) while a task is certainly running. With ``hold_until`` (a
  file path) it waits, cancellable, until that file exists before its first batch: the test decides
  when the step may go on, whatever the machine's speed.
* ``chaos.flaky``: raises a transient error on attempts below ``succeed_on_attempt``, a terminal
  error when ``terminal`` is set, else passes through.
* ``chaos.sequence`` and ``chaos.ledger``: a chunked source and a chunked, durable file sink, to
  test chunk checkpoints, retries and --resume without a database.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa

from osiris_flight.components.base import (
    AlreadyFinished,
    Chunk,
    ChunkedSink,
    ChunkedSource,
    ComponentSpec,
    Transform,
    WriteResult,
)
from osiris_flight.data.rowstream import RowStream, decode_checkpoint, encode_checkpoint
from osiris_flight.errors import TerminalError, TransientError


class Slow(Transform):
    def apply(self, inputs: Mapping[str, RowStream]) -> RowStream:
        (stream,) = inputs.values()
        delay = float(self.config.get("delay_s", 0.1))
        hold = self.config.get("hold_until")

        def gen() -> Iterator[pa.RecordBatch]:
            while hold and not Path(hold).exists():
                self.ctx.check_cancelled()
                time.sleep(0.05)
            for batch in stream.batches():
                time.sleep(delay)
                yield batch

        return RowStream(gen(), stream.schema, name=self.ctx.step_id)


class Flaky(Transform):
    def apply(self, inputs: Mapping[str, RowStream]) -> RowStream:
        (stream,) = inputs.values()
        if self.config.get("terminal"):
            # A server that echoes the credential it refused, as some do.
            echoed = f" (token {self.config['api_token']} refused)" if "api_token" in self.config else ""
            raise TerminalError(
                f"step '{self.ctx.step_id}': {self.config.get('message', 'terminal failure')}{echoed}"
            )
        if self.config.get("unreportable_event"):
            # An event msgpack encodes but the protocol refuses (a map with int keys).
            self.ctx.log_event("histogram", buckets={0: 1, 1: 2})
        if self.ctx.attempt < int(self.config.get("succeed_on_attempt", 1)):
            raise TransientError(
                f"step '{self.ctx.step_id}': transient failure on attempt {self.ctx.attempt}"
            )
        return stream


_ANY = {"type": "object"}
COMPONENTS = [
    ComponentSpec(
        name="chaos.slow",
        role="transform",
        operator=Slow,
        config_schema={
            "type": "object",
            "additionalProperties": False,
            "properties": {"delay_s": {"type": "number", "minimum": 0}, "hold_until": {"type": "string"}},
        },
        min_inputs=1,
        max_inputs=1,
        partitionwise=True,
    ),
    ComponentSpec(
        name="chaos.flaky",
        role="transform",
        operator=Flaky,
        config_schema={
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "succeed_on_attempt": {"type": "integer"},
                "terminal": {"type": "boolean"},
                "message": {"type": "string"},
                "api_token": {"type": "string"},
                "unreportable_event": {"type": "boolean"},
            },
        },
        min_inputs=1,
        max_inputs=1,
        partitionwise=True,
    ),
]


class Sequence(ChunkedSource):
    """Rows n = 0..rows-1 in chunks of ``chunk_rows``, sleeping ``delay_s`` before each chunk."""

    def _chunk(self, start: int, stop: int) -> RowStream:
        batch = pa.record_batch({"n": pa.array(range(start, stop), pa.int64())})
        return RowStream([batch], batch.schema)

    def open_chunks(self, resume_token: str | None) -> Iterator[Chunk]:
        rows, size = int(self.config["rows"]), int(self.config.get("chunk_rows", 1000))
        start = int(decode_checkpoint(resume_token)["next"]) if resume_token else 0  # type: ignore[call-overload]
        self.ctx.log_event("sequence_start", start=start)
        for lo in range(start, rows, size):
            time.sleep(float(self.config.get("delay_s", 0)))
            hi = min(rows, lo + size)
            yield Chunk(self._chunk(lo, hi), encode_checkpoint({"rows": hi, "next": hi}))

    def open(self) -> RowStream:
        chunks = self.open_chunks(None)
        return RowStream((b for c in chunks for b in c.stream.batches()), pa.schema([("n", pa.int64())]))


class Ledger(ChunkedSink):
    """Appends rows as text lines to ``<path>.staging``, fsyncs at each commit, renames at finish;
    a marker file records which task published, so a late retry is told AlreadyFinished."""

    def _paths(self) -> tuple[Path, Path, Path]:
        path = Path(self.config["path"])
        return path, path.with_name(path.name + ".staging"), path.with_name(path.name + ".published")

    def begin(self, resume_state: Mapping[str, Any] | None) -> str | None:
        path, staging, marker = self._paths()
        me = f"{self.ctx.run_id}/{self.ctx.task_id}"
        if marker.exists() and marker.read_text() == me:
            return self._already(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if resume_state and staging.exists():
            with staging.open("r+b") as fh:
                fh.truncate(int(resume_state["bytes"]))
            self._rows = int(resume_state["rows"])
            return str(resume_state["token"])
        staging.write_bytes(b"")
        self._rows = 0
        return None

    def _already(self, path: Path) -> str | None:
        rows = len(path.read_text().splitlines())
        raise AlreadyFinished(WriteResult(rows, path.stat().st_size, str(path)))

    def write_chunk(self, stream: RowStream) -> None:
        _, staging, _ = self._paths()
        with staging.open("a") as fh:
            for batch in stream.batches():
                values = batch.column(0).to_pylist()
                fh.write("".join(f"{v}\n" for v in values))
                self._rows += len(values)

    def commit_chunk(self, token: str) -> dict[str, Any]:
        _, staging, _ = self._paths()
        with staging.open("rb") as fh:
            os.fsync(fh.fileno())
        return {"token": token, "bytes": staging.stat().st_size, "rows": self._rows}

    def finish(self) -> WriteResult:
        path, staging, marker = self._paths()
        os.replace(staging, path)
        marker.write_text(f"{self.ctx.run_id}/{self.ctx.task_id}")
        return WriteResult(self._rows, path.stat().st_size, str(path))

    def abort(self) -> None:
        return None  # the staging file stays for a resume


COMPONENTS += [
    ComponentSpec(
        name="chaos.sequence",
        role="source",
        operator=Sequence,
        config_schema={
            "type": "object",
            "additionalProperties": False,
            "required": ["rows"],
            "properties": {
                "rows": {"type": "integer"},
                "chunk_rows": {"type": "integer"},
                "delay_s": {"type": "number"},
            },
        },
    ),
    ComponentSpec(
        name="chaos.ledger",
        role="sink",
        operator=Ledger,
        config_schema={
            "type": "object",
            "additionalProperties": False,
            "required": ["path"],
            "properties": {"path": {"type": "string"}},
        },
        min_inputs=1,
        max_inputs=1,
    ),
]
