"""RowStream: the streaming interface the milestone names (ADR-0022), with Arrow as its native form.

A RowStream is a single pass over Arrow record batches of one schema. ``batches()`` is the engine's
path; ``read_batch(size)`` is the pandas face for Osiris-style code. ``checkpoint()`` returns an opaque
token saying how far a reader got; ``resume(token)`` makes the next pass start there. The generic
token counts rows (the stream skips them on resume); sources that can seek (a keyset MySQL read, a file
offset) override ``_resume_at`` to do it without re-reading.
"""

from __future__ import annotations

import base64
import json
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

import pyarrow as pa

if TYPE_CHECKING:
    import pandas as pd

CHECKPOINT_VERSION = 1


class StreamClosedError(RuntimeError):
    """write_batch() on a stream that was closed, or on a read-only stream."""


def encode_checkpoint(state: dict[str, object]) -> str:
    """An opaque, versioned, URL-safe token."""
    payload = json.dumps({"v": CHECKPOINT_VERSION, **state}, sort_keys=True, separators=(",", ":"))
    return base64.urlsafe_b64encode(payload.encode()).decode()


def decode_checkpoint(token: str) -> dict[str, object]:
    try:
        state = json.loads(base64.urlsafe_b64decode(token.encode()))
    except (ValueError, json.JSONDecodeError) as exc:
        raise ValueError(f"not a RowStream checkpoint token: {token!r}") from exc
    if not isinstance(state, dict) or state.get("v") != CHECKPOINT_VERSION:
        raise ValueError(f"checkpoint token has unsupported version: {state!r}")
    return state


class RowStream:
    """A single-pass stream of ``pyarrow.RecordBatch`` with a known or discoverable schema.

    Build one from any iterable of batches. ``estimated_rows`` is a hint (None when unknown).
    Writable streams (``BufferedRowStream``) also accept ``write_batch``.
    """

    def __init__(
        self,
        batches: Iterable[pa.RecordBatch],
        schema: pa.Schema | None = None,
        *,
        estimated_rows: int | None = None,
        name: str = "stream",
    ) -> None:
        self._source = batches
        self._schema = schema
        self._estimated_rows = estimated_rows
        self._rows_delivered = 0
        self._skip_rows = 0
        self._peeked: pa.RecordBatch | None = None
        self._iter: Iterator[pa.RecordBatch] | None = None
        self.name = name

    # -- Arrow face ---------------------------------------------------------------------------
    @property
    def schema(self) -> pa.Schema:
        """The stream's schema; pulls the first batch when the producer did not declare one."""
        if self._schema is None:
            first = next(self._raw(), None)
            if first is None:
                self._schema = pa.schema([])
            else:
                self._peeked = first
                self._schema = first.schema
        return self._schema

    def _raw(self) -> Iterator[pa.RecordBatch]:
        if self._iter is None:
            self._iter = iter(self._source)
        return self._iter

    def batches(self) -> Iterator[pa.RecordBatch]:
        """Yield the stream's record batches (skipping rows before a resumed checkpoint)."""
        if self._peeked is not None:
            first, self._peeked = self._peeked, None
            yield from self._deliver(first)
        for batch in self._raw():
            yield from self._deliver(batch)

    def _deliver(self, batch: pa.RecordBatch) -> Iterator[pa.RecordBatch]:
        if self._skip_rows:
            if batch.num_rows <= self._skip_rows:
                self._skip_rows -= batch.num_rows
                self._rows_delivered += batch.num_rows
                return
            self._rows_delivered += self._skip_rows
            batch = batch.slice(self._skip_rows)
            self._skip_rows = 0
        self._rows_delivered += batch.num_rows
        yield batch

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        return self.batches()

    def to_table(self) -> pa.Table:
        """Materialise the rest of the stream (use only where the data is known to be small)."""
        return pa.Table.from_batches(list(self.batches()), schema=self.schema)

    # -- pandas face (the milestone's API) ----------------------------------------------------
    def read_batch(self, size: int = 1000) -> Iterator[pd.DataFrame]:
        """Yield DataFrames of exactly ``size`` rows (the last may be shorter)."""
        if size <= 0:
            raise ValueError("read_batch size must be positive")
        pending: deque[pa.RecordBatch] = deque()
        pending_rows = 0
        for batch in self.batches():
            pending.append(batch)
            pending_rows += batch.num_rows
            while pending_rows >= size:
                table = pa.Table.from_batches(list(pending), schema=self.schema)
                yield table.slice(0, size).to_pandas()
                rest = table.slice(size)
                pending = deque(rest.to_batches())
                pending_rows = rest.num_rows
        if pending_rows:
            yield pa.Table.from_batches(list(pending), schema=self.schema).to_pandas()

    def write_batch(self, batch: pd.DataFrame | pa.RecordBatch) -> None:
        raise StreamClosedError(f"{self.name} is a read-only stream")

    # -- sizing and checkpoints ---------------------------------------------------------------
    def estimate_size(self) -> int:
        """Estimated total rows, or -1 when the producer cannot tell."""
        return -1 if self._estimated_rows is None else self._estimated_rows

    @property
    def rows_delivered(self) -> int:
        return self._rows_delivered

    def checkpoint(self) -> str:
        """A token for the position after the last delivered batch."""
        return encode_checkpoint({"rows": self._rows_delivered, **self._checkpoint_state()})

    def resume(self, checkpoint: str) -> None:
        """Make the next ``batches()`` pass start after the checkpointed position."""
        state = decode_checkpoint(checkpoint)
        rows = state.get("rows")
        if not isinstance(rows, int) or rows < 0:
            raise ValueError(f"checkpoint token has no valid row position: {state!r}")
        self._resume_at(state)

    def _checkpoint_state(self) -> dict[str, object]:
        """Extra state a seeking source stores in its checkpoint (override with ``_resume_at``)."""
        return {}

    def _resume_at(self, state: dict[str, object]) -> None:
        rows = int(state["rows"])  # type: ignore[call-overload]
        self._skip_rows = max(0, rows - self._rows_delivered)


def _as_record_batch(batch: pd.DataFrame | pa.RecordBatch, schema: pa.Schema | None) -> pa.RecordBatch:
    if isinstance(batch, pa.RecordBatch):
        return batch
    return pa.RecordBatch.from_pandas(batch, schema=schema, preserve_index=False)


class BufferedRowStream(RowStream):
    """A writable stream: producers ``write_batch`` and ``close``; one reader consumes concurrently.

    Unbounded by design only in the sense of a queue between a producer and its consumer in the same
    process; the engine's cross-task buffering (with spill) is the batch store, not this class.
    """

    def __init__(self, schema: pa.Schema | None = None, *, name: str = "buffer") -> None:
        self._queue: deque[pa.RecordBatch] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._error: BaseException | None = None
        super().__init__(self._drain(), schema, name=name)

    def write_batch(self, batch: pd.DataFrame | pa.RecordBatch) -> None:
        record_batch = _as_record_batch(batch, self._schema)
        with self._cond:
            if self._closed:
                raise StreamClosedError(f"{self.name} is closed")
            if self._schema is None:
                self._schema = record_batch.schema
            self._queue.append(record_batch)
            self._cond.notify_all()

    def close(self, error: BaseException | None = None) -> None:
        with self._cond:
            self._closed = True
            self._error = error
            self._cond.notify_all()

    def _drain(self) -> Iterator[pa.RecordBatch]:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if self._queue:
                    batch = self._queue.popleft()
                elif self._error is not None:
                    raise self._error
                else:
                    return
            yield batch
