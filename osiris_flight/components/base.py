"""The one shape every component has: a ComponentSpec (name, role, config schema) and an Operator.

An operator is built once per step per task attempt from a ``StepContext``. Sources ``open()`` a
RowStream; transforms ``apply()`` to their input streams and return a RowStream (lazily, so that a
fused chain of steps passes batches in-process, one at a time); sinks ``write()`` a stream to its
target atomically and return what they wrote.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from osiris_flight.data.rowstream import RowStream
from osiris_flight.errors import Problem, TransientError
from osiris_flight.oml.validate import ColumnUse

Role = Literal["source", "transform", "sink"]
ROLE_MODES: dict[Role, str] = {"source": "read", "transform": "transform", "sink": "write"}

MetricFn = Callable[..., None]
EventFn = Callable[..., None]


class Cancelled(TransientError):
    """The scheduler cancelled this attempt (its input was lost, or the run is stopping)."""


@dataclass
class StepContext:
    """Everything an operator may use. ``connections`` holds resolved secrets: never log it."""

    step_id: str
    component: str
    config: Mapping[str, Any]
    run_id: str = "local"
    task_id: str = "t0"
    attempt: int = 1
    partition: int = 0
    partitions: int = 1
    work_dir: Path = field(default_factory=lambda: Path("."))
    output_dir: Path = field(default_factory=lambda: Path("."))
    connections: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    memory_limit_bytes: int = 256 * 1024 * 1024
    batch_rows: int = 65536
    log_metric: MetricFn = field(default=lambda name, value, **tags: None)
    log_event: EventFn = field(default=lambda name, **fields: None)
    cancel_event: threading.Event = field(default_factory=threading.Event)
    # The directories file components may open (real paths, symlinks resolved); None: any path the
    # worker's user can reach (``engine.file_roots``; _files.confine enforces it).
    file_roots: tuple[Path, ...] | None = None

    def check_cancelled(self) -> None:
        if self.cancel_event.is_set():
            raise Cancelled(f"step '{self.step_id}' attempt {self.attempt} was cancelled")

    def connection(self, ref: str) -> Mapping[str, Any]:
        """The resolved connection for an ``@family.alias`` reference."""
        try:
            return self.connections[ref]
        except KeyError:
            raise KeyError(f"connection {ref} was not resolved for step '{self.step_id}'") from None


class Operator(ABC):  # noqa: B024 - abstract through its three subclasses, not itself
    def __init__(self, ctx: StepContext) -> None:
        self.ctx = ctx
        self.config = ctx.config


class Source(Operator):
    @abstractmethod
    def open(self) -> RowStream:
        """Start reading this step's partition ``ctx.partition`` of ``ctx.partitions``."""


class Transform(Operator):
    @abstractmethod
    def apply(self, inputs: Mapping[str, RowStream]) -> RowStream:
        """Inputs are keyed by upstream step id, in the order the step declares its dependencies."""


@dataclass(frozen=True)
class WriteResult:
    rows: int
    bytes: int = 0
    target: str = ""


class Sink(Operator):
    @abstractmethod
    def write(self, stream: RowStream) -> WriteResult:
        """Write the whole stream; commit atomically (temp + rename, or a transaction)."""


@dataclass(frozen=True)
class Chunk:
    """A resumable slice of a source: its rows, and the token that resumes *after* them."""

    stream: RowStream
    token: str


class ChunkedSource(Source):
    """A source that reads in resumable chunks (a keyset range of a table, a byte range of a file).

    ``open_chunks(None)`` starts at the beginning; ``open_chunks(token)`` continues right after the
    chunk whose ``token`` that was. ``open()`` must still give the whole stream.
    """

    @abstractmethod
    def open_chunks(self, resume_token: str | None) -> Iterator[Chunk]:
        """Yield chunks in order; each chunk's stream must be consumed before the next is asked for."""


class AlreadyFinished(Exception):
    """Raised by ``ChunkedSink.begin`` when this task's output was already published (a retried
    attempt whose predecessor finished but died before reporting): the runtime reports ``result``
    and reads nothing."""

    def __init__(self, result: WriteResult) -> None:
        super().__init__(f"already published: {result.rows} rows to {result.target}")
        self.result = result


class ChunkedSink(Sink):
    """A sink that commits chunk by chunk, each commit durable *together with* the source token.

    The runtime drives a fused [ChunkedSource, partition-wise transforms..., ChunkedSink] task as:
    ``token = begin(state)``; for each chunk of ``open_chunks(token)``: ``write_chunk(rows)``, then
    ``state = commit_chunk(chunk.token)`` (reported and journaled); finally ``finish()`` publishes the
    result atomically. After a crash, ``begin(last journaled state)`` returns the token to resume the
    source from; the sink's own durable state wins over the journal when it is newer, which is what
    makes a resumed or retried task write every row exactly once. ``abort()`` leaves the target as
    it was (staging may stay, for a resume).
    """

    @abstractmethod
    def begin(self, resume_state: Mapping[str, Any] | None) -> str | None:
        """Prepare (staging, temp file); return the source token to resume after, or None."""

    @abstractmethod
    def write_chunk(self, stream: RowStream) -> None:
        """Write the chunk's rows (not yet durable)."""

    @abstractmethod
    def commit_chunk(self, token: str) -> dict[str, Any]:
        """Make the rows written so far durable together with ``token``; return JSON-able state."""

    @abstractmethod
    def finish(self) -> WriteResult:
        """Publish everything committed to the target atomically."""

    @abstractmethod
    def abort(self) -> None:
        """Called on failure: the target stays as it was."""

    def write(self, stream: RowStream) -> WriteResult:
        """Unchunked use: one chunk holding the whole stream."""
        self.begin(None)
        try:
            self.write_chunk(stream)
            self.commit_chunk("")
            return self.finish()
        except BaseException:
            self.abort()
            raise


@dataclass(frozen=True)
class ComponentSpec:
    """Declares a component: what OML mode it takes, how many inputs, its config JSON schema.

    ``check`` adds semantic checks that a JSON schema cannot express (a filter expression parses,
    two keys are not both given); it returns located problems with ``field`` set, never raises.
    ``partitions`` says into how many parallel tasks a source step splits (1 unless configured).
    ``partitionwise`` transforms handle each batch independently, so they may run per partition.
    ``columns_used`` tells the query optimizer which input columns a step with this config reads
    (None, or a function returning None: every column), so a MySQL read upstream can select only those.
    ``single_task`` (partition-wise components) says when a config cannot run once per partition:
    it returns the problem to report (with ``field``) if the planner would fuse the step behind a
    split input, else None.
    """

    name: str
    role: Role
    operator: type[Operator]
    config_schema: Mapping[str, Any]
    description: str = ""
    min_inputs: int = 0
    max_inputs: int = 0
    partitionwise: bool = False
    check: Callable[[Mapping[str, Any]], list[Problem]] = field(default=lambda config: [])
    partitions: Callable[[Mapping[str, Any]], int] = field(default=lambda config: 1)
    columns_used: Callable[[Mapping[str, Any]], ColumnUse | None] | None = None
    single_task: Callable[[Mapping[str, Any]], Problem | None] | None = None

    @property
    def mode(self) -> str:
        return ROLE_MODES[self.role]
