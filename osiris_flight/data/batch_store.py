"""The per-worker store of task outputs: in memory up to a budget, spilled to Arrow IPC files beyond it.

* An output is a list of *chunks*: a batch in memory, or a reference to one batch in a spill file.
  Readers walk the list by index, so a spill (swapping in-memory chunks for file references in place)
  never invalidates a reader half-way through: its next index is simply read from disk.
* The producer never waits for consumers: when an append takes the store over budget, the appending
  thread spills and carries on. Memory is bounded by configuration, not by data size or reader speed.
* Victims: **oldest output first** (creation order), all of its in-memory chunks at once. Stages
  consume outputs roughly in the order they were produced, and the newest output is usually the one
  being written *and* streamed live from its tail, so it stays in memory longest. One file per output
  per spill gives few large files (better compression, fewer opens) and a deterministic order.
* Spilled chunks are read with plain file reads (not a memory map, whose touched pages would stay in
  the worker's RSS), one decoded batch at a time per reader.

One lock guards all state; each output has a condition on it, so an append wakes only its readers.
Spill I/O runs outside that lock (readers are never held up by disk writes), serialised by a spill lock.
"""

from __future__ import annotations

import contextlib
import itertools
import re
import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.ipc as ipc

from osiris_flight.data.rowstream import StreamClosedError
from osiris_flight.data.shrink import restore, shrink_batch
from osiris_flight.errors import UpstreamLost

OutputKey = tuple[str, str, int, int]
"""(run_id, stage_id, partition, attempt): the same tuple as ``FetchOutput.key``."""

SPILL_FORMAT_VERSION = "1"
_SPILL_VERSION_KEY = b"osiris_flight.spill_version"
_POLL_S = 0.2  # how often a waiting reader re-checks its ``cancelled`` callback, seconds
_TOMBSTONES = 4096  # released keys remembered so late readers fail at once instead of waiting


def batch_nbytes(batch: pa.RecordBatch) -> int:
    """Memory a batch accounts for, in bytes: ``nbytes``, the buffer ranges it references.

    Not ``get_total_buffer_size``: batches are often slices of one table (``to_batches``, re-chunking)
    and that counts the parent's whole buffers once per slice, so 150 slices of a 400 MB table would
    "hold" 60 GB. ``nbytes`` counts each slice's own range, whose sum is the real total. It
    undercounts only a lone small slice pinning a large parent, which producers do not hand us.
    """
    return int(batch.nbytes)


def ipc_write_options(compression: str | None) -> ipc.IpcWriteOptions:
    """IPC options for ``compression``: "zstd", "lz4", or "none"/None (the config file spells it "none")."""
    codec = None if compression in (None, "", "none") else compression
    if codec not in (None, "zstd", "lz4"):
        raise ValueError(f"compression must be zstd, lz4 or none, got {compression!r}")
    return ipc.IpcWriteOptions(compression=codec)


def format_key(key: OutputKey) -> str:
    run_id, stage_id, partition, attempt = key
    return f"output run={run_id} stage={stage_id} partition={partition} attempt={attempt}"


@dataclass(frozen=True)
class SpillEvent:
    """One spill: ``batches`` of output ``key`` that held ``bytes_in_memory_before`` bytes in memory were
    written as ``bytes_written_to_disk`` bytes (compressed IPC file size) to ``path``."""

    key: OutputKey
    batches: int
    bytes_in_memory_before: int
    bytes_written_to_disk: int
    path: Path


@dataclass(frozen=True)
class OutputInfo:
    """A snapshot of one output. ``bytes`` is the in-memory size of everything appended (logical size);
    ``bytes_held`` the size it took in the store (smaller when batches are shrunk);
    ``bytes_in_memory`` and ``bytes_on_disk`` say where it lives now."""

    key: OutputKey
    rows: int
    batches: int
    bytes: int
    bytes_in_memory: int
    bytes_on_disk: int
    spill_files: int
    complete: bool
    error: str | None
    bytes_held: int = 0


@dataclass(frozen=True)
class _MemChunk:
    batch: pa.RecordBatch
    nbytes: int


@dataclass(frozen=True)
class _SpillChunk:
    path: Path
    index: int  # batch index inside the IPC file


@dataclass(eq=False)
class _Output:
    key: OutputKey
    schema: pa.Schema
    cond: threading.Condition
    seq: int  # creation order: the spill victim order
    chunks: list[_MemChunk | _SpillChunk] = field(default_factory=list)
    rows: int = 0
    bytes: int = 0
    bytes_held: int = 0
    bytes_in_memory: int = 0
    bytes_on_disk: int = 0
    spill_files: list[Path] = field(default_factory=list)
    complete: bool = False
    error: str | None = None  # abort reason
    released: str | None = None  # why it was released, once it is

    def info(self) -> OutputInfo:
        disk = (self.bytes_in_memory, self.bytes_on_disk, len(self.spill_files))
        return OutputInfo(
            self.key,
            self.rows,
            len(self.chunks),
            self.bytes,
            *disk,
            self.complete,
            self.error,
            self.bytes_held,
        )


class OutputWriter:
    """The producer's handle on one output. Use as a context manager: an exception aborts the output."""

    def __init__(self, store: BatchStore, output: _Output) -> None:
        self._store = store
        self._output = output

    @property
    def key(self) -> OutputKey:
        return self._output.key

    def append(self, batch: pa.RecordBatch) -> None:
        """Add one batch (empty ones are dropped); may spill to disk before returning, never waits
        for readers."""
        self._store._append(self._output, batch)

    def close(self) -> None:
        """Mark the output complete: readers end after its last batch."""
        self._store._finish(self._output, error=None)

    def abort(self, reason: str) -> None:
        """Mark the output failed: every reader (current or future) gets UpstreamLost with ``reason``.
        Never raises (safe in an error handler); a second abort keeps the first reason."""
        self._store._finish(self._output, error=reason or "aborted")

    def __enter__(self) -> OutputWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if exc is None:
            self.close()
        else:
            self.abort(f"producer failed: {type(exc).__name__}: {exc}")


class BatchStore:
    """Task outputs of one worker, keyed by ``OutputKey``. Thread-safe.

    ``memory_limit_bytes`` bounds the bytes held in memory across all outputs (see ``batch_nbytes``);
    beyond it, batches go to IPC files under ``spill_dir/<run_id>/`` compressed with ``compression``
    ("zstd", "lz4" or "none"). ``on_spill`` is called (on the producer's thread, outside the store's
    locks) once per spill.
    """

    def __init__(
        self,
        memory_limit_bytes: int,
        spill_dir: Path,
        compression: str | None = "zstd",
        on_spill: Callable[[SpillEvent], None] | None = None,
        shrink: bool = False,
    ) -> None:
        if memory_limit_bytes < 0:
            raise ValueError(f"memory_limit_bytes must be >= 0, got {memory_limit_bytes}")
        self.memory_limit_bytes = memory_limit_bytes
        self.spill_dir = Path(spill_dir)
        self._owns_spill_dir = not self.spill_dir.exists()
        self._write_options = ipc_write_options(compression)
        self._on_spill = on_spill
        # Hold batches in their smallest lossless form (see shrink.py); readers and spill files
        # always get the output's logical schema back.
        self.shrink = shrink
        self._lock = threading.Lock()
        self._created = threading.Condition(self._lock)
        self._spill_lock = threading.Lock()
        self._outputs: dict[OutputKey, _Output] = {}
        self._tombstones: OrderedDict[OutputKey, str] = OrderedDict()
        self._seq = itertools.count()
        self._file_seq = itertools.count()
        self._closed = False
        self._bytes_in_memory = 0
        self._bytes_spilled_total = 0
        self._spill_count = 0

    # -- stats ------------------------------------------------------------------------------------
    @property
    def bytes_in_memory(self) -> int:
        """Bytes of batches held in memory now, across all outputs."""
        return self._bytes_in_memory

    @property
    def bytes_spilled_total(self) -> int:
        """Bytes written to spill files since the store started (compressed, cumulative)."""
        return self._bytes_spilled_total

    @property
    def spill_count(self) -> int:
        """Spill events since the store started."""
        return self._spill_count

    def outputs(self) -> list[OutputInfo]:
        """A snapshot of every output in the store."""
        with self._lock:
            return [o.info() for o in self._outputs.values()]

    def info(self, key: OutputKey) -> OutputInfo:
        with self._lock:
            if (output := self._outputs.get(key)) is None:
                raise KeyError(f"{format_key(key)} is not in this store")
            return output.info()

    def resident_batches(self, key: OutputKey) -> tuple[pa.Schema, list[pa.RecordBatch]] | None:
        """Schema and batches of a complete output held wholly in memory, else None (serve-fast path)."""
        with self._lock:
            o = self._outputs.get(key)
            if o is None or not o.complete or o.error or any(isinstance(c, _SpillChunk) for c in o.chunks):
                return None
            return o.schema, [restore(c.batch, o.schema) for c in o.chunks if isinstance(c, _MemChunk)]

    # -- producer side ----------------------------------------------------------------------------
    def create(self, key: OutputKey, schema: pa.Schema) -> OutputWriter:
        """Start a new output; readers waiting for ``key`` wake up. A key is created once."""
        with self._lock:
            if self._closed:
                raise StreamClosedError("the batch store is closed")
            if key in self._outputs:
                raise ValueError(f"{format_key(key)} already exists (each attempt writes its own output)")
            self._tombstones.pop(key, None)
            output = _Output(key, schema, threading.Condition(self._lock), next(self._seq))
            self._outputs[key] = output
            self._created.notify_all()
        return OutputWriter(self, output)

    def _append(self, output: _Output, batch: pa.RecordBatch) -> None:
        if not batch.schema.equals(output.schema):
            raise ValueError(
                f"{format_key(output.key)}: batch schema {batch.schema} differs from the output's "
                f"schema {output.schema}"
            )
        logical_bytes = batch_nbytes(batch)
        held = shrink_batch(batch) if self.shrink else batch
        chunk = _MemChunk(held, logical_bytes if held is batch else batch_nbytes(held))
        with self._lock:
            self._check_writable(output)
            if batch.num_rows == 0:
                # Dropped: no data, and the C++ fast path (RecordBatchStream) skips empty batches, so
                # keeping them would make what a reader sees depend on where the output lives.
                return
            output.chunks.append(chunk)
            output.rows += batch.num_rows
            output.bytes += logical_bytes
            output.bytes_held += chunk.nbytes
            output.bytes_in_memory += chunk.nbytes
            self._bytes_in_memory += chunk.nbytes
            output.cond.notify_all()
            over = self._bytes_in_memory > self.memory_limit_bytes
        if over:
            with self._spill_lock:
                if chunk.nbytes > self.memory_limit_bytes:
                    self._spill(output, [chunk])  # bigger than the whole budget: straight to disk
                self._spill_until_under_budget()

    def _check_writable(self, output: _Output) -> None:
        if output.released is not None:
            raise StreamClosedError(f"{format_key(output.key)} was released: {output.released}")
        if output.complete or output.error is not None:
            raise StreamClosedError(f"{format_key(output.key)} is already closed or aborted")

    def _finish(self, output: _Output, error: str | None) -> None:
        with self._lock:
            if error is not None:
                # Never raises: abort runs in producers' error handlers, where raising would hide the
                # real failure. Aborting a released output changes nothing (its readers already failed).
                if output.released is None and output.error is None:
                    output.error = error
            elif output.released is not None or output.error is not None:
                raise StreamClosedError(
                    f"{format_key(output.key)} cannot be completed: {output.released or output.error}"
                )
            else:
                output.complete = True
            output.cond.notify_all()

    # -- spilling ---------------------------------------------------------------------------------
    def _spill_until_under_budget(self) -> None:
        """Spill oldest outputs first until memory is within budget. Caller holds the spill lock."""
        while True:
            with self._lock:
                if self._bytes_in_memory <= self.memory_limit_bytes:
                    return
                victims = [o for o in self._outputs.values() if o.bytes_in_memory > 0]
                if not victims:
                    return
                victim = min(victims, key=lambda o: o.seq)
                chunks = [c for c in victim.chunks if isinstance(c, _MemChunk)]
            self._spill(victim, chunks)

    def _spill(self, output: _Output, chunks: list[_MemChunk]) -> None:
        """Write ``chunks`` of ``output`` to one new IPC file, then swap them for references to it.
        Caller holds the spill lock, not the main lock: readers go on meanwhile."""
        with self._lock:  # another spill may have moved some already (e.g. a big batch's own output)
            in_memory = {id(c) for c in output.chunks if isinstance(c, _MemChunk)}
            chunks = [c for c in chunks if id(c) in in_memory]
            if not chunks or output.released is not None:
                return
        run_id, stage_id, partition, attempt = output.key
        run_dir = self.spill_dir / _safe(run_id)
        path = run_dir / f"{_safe(stage_id)}-p{partition}-a{attempt}-{next(self._file_seq)}.arrow"
        metadata = {_SPILL_VERSION_KEY: SPILL_FORMAT_VERSION.encode()}
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            with ipc.new_file(str(path), output.schema, options=self._write_options, metadata=metadata) as w:
                for chunk in chunks:
                    w.write_batch(restore(chunk.batch, output.schema))
            disk_bytes = path.stat().st_size
        except OSError:
            path.unlink(missing_ok=True)
            if output.released is None:
                raise  # a real I/O problem (disk full, permissions): the producer's task fails
            return  # released while we wrote (release_run removed the directory): nothing to keep
        mem_bytes = sum(c.nbytes for c in chunks)
        with self._lock:
            if output.released is not None:
                path.unlink(missing_ok=True)
                return
            position = {id(c): i for i, c in enumerate(chunks)}
            for n, c in enumerate(output.chunks):
                if isinstance(c, _MemChunk) and id(c) in position:
                    output.chunks[n] = _SpillChunk(path, position[id(c)])
            output.bytes_in_memory -= mem_bytes
            self._bytes_in_memory -= mem_bytes
            output.spill_files.append(path)
            output.bytes_on_disk += disk_bytes
            self._bytes_spilled_total += disk_bytes
            self._spill_count += 1
        if self._on_spill is not None:
            self._on_spill(SpillEvent(output.key, len(chunks), mem_bytes, disk_bytes, path))

    # -- consumer side ----------------------------------------------------------------------------
    def open_reader(
        self,
        key: OutputKey,
        wait_timeout_s: float = 60.0,
        cancelled: Callable[[], bool] | None = None,
    ) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
        """Schema and an iterator over every batch of ``key`` from the first, independent of other readers.

        Waits up to ``wait_timeout_s`` seconds for the output to be created (its producer may not have
        started yet); the iterator blocks for more batches while the output is being written and ends
        when it is closed. UpstreamLost when the output does not appear in time, was aborted, or is
        released (also mid-way). ``cancelled`` is polled while waiting (e.g. server shutdown, client
        gone): when it returns True the wait ends with UpstreamLost instead of blocking on.
        """
        deadline = time.monotonic() + wait_timeout_s
        with self._lock:
            while (output := self._outputs.get(key)) is None:
                if key in self._tombstones:
                    raise UpstreamLost(f"{format_key(key)} was released: {self._tombstones[key]}")
                if self._closed:
                    raise UpstreamLost(f"{format_key(key)}: the batch store is closed")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise UpstreamLost(
                        f"{format_key(key)} did not appear within {wait_timeout_s:g} s "
                        "(its producer has not started, failed, or runs on another worker)"
                    )
                if cancelled is not None and cancelled():
                    raise UpstreamLost(f"{format_key(key)}: reader cancelled while waiting for it")
                self._created.wait(min(remaining, _POLL_S) if cancelled is not None else remaining)
            self._check_readable(output)
        return output.schema, self._read(output, cancelled)

    def _check_readable(self, output: _Output) -> None:
        if output.released is not None:
            raise UpstreamLost(f"{format_key(output.key)} was released: {output.released}")
        if output.error is not None:
            raise UpstreamLost(f"{format_key(output.key)} was aborted by its producer: {output.error}")

    def _read(self, output: _Output, cancelled: Callable[[], bool] | None) -> Iterator[pa.RecordBatch]:
        index = 0
        open_path: Path | None = None
        file_reader: ipc.RecordBatchFileReader | None = None
        mapped: pa.NativeFile | None = None
        try:
            while True:
                with self._lock:
                    while True:
                        self._check_readable(output)
                        if index < len(output.chunks):
                            chunk = output.chunks[index]
                            break
                        if output.complete:
                            return
                        if cancelled is not None and cancelled():
                            raise UpstreamLost(f"{format_key(output.key)}: reader cancelled mid-stream")
                        output.cond.wait(_POLL_S if cancelled is not None else None)
                if isinstance(chunk, _MemChunk):
                    batch = restore(chunk.batch, output.schema)
                else:
                    if chunk.path != open_path:
                        if mapped is not None:
                            mapped.close()
                        mapped, file_reader = None, None
                        try:
                            # Plain reads, not a memory map: mapped pages a reader has touched count
                            # in the worker's RSS until unmapped, so a long spilled output read
                            # through a map makes RSS grow with data size; a read batch is freed
                            # as soon as the consumer drops it.
                            mapped = pa.OSFile(str(chunk.path), "r")
                            file_reader = _open_spill(mapped, chunk.path)
                        except (OSError, pa.ArrowException) as exc:
                            with self._lock:
                                self._check_readable(output)  # released: report that, not the I/O error
                            raise UpstreamLost(
                                f"{format_key(output.key)}: cannot read spill file {chunk.path}: {exc}"
                            ) from exc
                        open_path = chunk.path
                    assert file_reader is not None
                    batch = file_reader.get_batch(chunk.index)
                index += 1
                yield batch
        finally:
            if mapped is not None:
                mapped.close()

    # -- release ----------------------------------------------------------------------------------
    def release(self, key: OutputKey, reason: str = "released") -> None:
        """Drop one output and delete its spill files; attached readers get UpstreamLost."""
        self._drop(lambda k: k == key, reason, also=key)

    def release_run(self, run_id: str, reason: str = "run released") -> None:
        """Drop every output of ``run_id`` and its spill directory."""
        self._drop(lambda k: k[0] == run_id, reason)
        _rmdir_quiet(self.spill_dir / _safe(run_id))

    def _drop(self, match: Callable[[OutputKey], bool], reason: str, also: OutputKey | None = None) -> None:
        """Release matching outputs (and remember ``also`` as released even if it never existed)."""
        files: list[Path] = []
        with self._lock:
            for key in [k for k in self._outputs if match(k)] + ([also] if also else []):
                self._tombstones[key] = reason
                if (output := self._outputs.pop(key, None)) is not None:
                    output.released = reason
                    self._bytes_in_memory -= output.bytes_in_memory
                    output.bytes_in_memory = 0
                    output.cond.notify_all()
                    files += output.spill_files
            while len(self._tombstones) > _TOMBSTONES:
                self._tombstones.popitem(last=False)
        for path in files:
            path.unlink(missing_ok=True)

    def close(self) -> None:
        """Release everything and remove the spill directory (wholly, when this store created it)."""
        with self._lock:
            self._closed = True
            run_ids = {k[0] for k in self._outputs}
            self._created.notify_all()
        for run_id in run_ids:
            self.release_run(run_id, reason="batch store closed")
        if self._owns_spill_dir:
            shutil.rmtree(self.spill_dir, ignore_errors=True)
        else:
            _rmdir_quiet(self.spill_dir)

    def __enter__(self) -> BatchStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _open_spill(source: pa.NativeFile, path: Path) -> ipc.RecordBatchFileReader:
    reader = ipc.open_file(source)
    version = (reader.metadata or {}).get(_SPILL_VERSION_KEY)
    if version != SPILL_FORMAT_VERSION.encode():
        raise OSError(f"spill file {path} has format version {version!r}, expected {SPILL_FORMAT_VERSION}")
    return reader


def _safe(name: str) -> str:
    """A path component for a run or stage id (ids come from users; keep them out of path syntax)."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".")
    return cleaned or "_"


def _rmdir_quiet(path: Path) -> None:
    with contextlib.suppress(OSError):  # not empty (another store's files) or already gone
        path.rmdir()
