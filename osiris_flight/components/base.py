"""The one shape every component has: a ComponentSpec (name, role, config schema) and an Operator.

An operator is built once per step per task attempt from a ``StepContext``. Sources ``open()`` a
RowStream; transforms ``apply()`` to their input streams and return a RowStream (lazily, so that a
fused chain of steps passes batches in-process, one at a time); sinks ``write()`` a stream to its
target atomically and return what they wrote.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from osiris_flight.data.rowstream import RowStream
from osiris_flight.errors import Problem, TransientError

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
class ComponentSpec:
    """Declares a component: what OML mode it takes, how many inputs, its config JSON schema.

    ``check`` adds semantic checks that a JSON schema cannot express (a filter expression parses,
    two keys are not both given); it returns located problems with ``field`` set, never raises.
    ``partitions`` says into how many parallel tasks a source step splits (1 unless configured).
    ``partitionwise`` transforms handle each batch independently, so they may run per partition.
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

    @property
    def mode(self) -> str:
        return ROLE_MODES[self.role]
