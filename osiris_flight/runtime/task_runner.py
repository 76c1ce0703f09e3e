"""Run one task attempt: build the fused operator chain and drive batches through it.

The chain is composed lazily: the first step reads its inputs (Flight streams of other stages, or
nothing for a source), each later step wraps the stream of the step before, and the task pulls
batches from the end of the chain into the batch store (an exchange output), into a writer (a sink),
or into nothing (a discarded output). Batches therefore pass step to step in-process, one at a time:
that is what fusion buys.

Every step's output is wrapped in a counter (rows, bytes) that also checks for cancellation, so a
cancelled attempt stops at the next batch boundary of any step.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from osiris_flight.components.base import (
    AlreadyFinished,
    ChunkedSink,
    ChunkedSource,
    Operator,
    Sink,
    Source,
    StepContext,
    Transform,
    WriteResult,
)
from osiris_flight.components.registry import Registry
from osiris_flight.data.batch_store import BatchStore
from osiris_flight.data.rowstream import RowStream
from osiris_flight.errors import TerminalError
from osiris_flight.oml.connections import resolve_runtime_config
from osiris_flight.redaction import secret_values


@dataclass
class StepCounters:
    """Rows and bytes that left a step so far (for a sink: rows written)."""

    rows: int = 0
    bytes: int = 0
    batches: int = 0
    held_bytes: int | None = None  # what the batch store held for this output (exchange outputs)

    def to_dict(self) -> dict[str, int]:
        held = {} if self.held_bytes is None else {"held_bytes": self.held_bytes}
        return {"rows": self.rows, "bytes": self.bytes, "batches": self.batches, **held}


@dataclass
class TaskSpec:
    """What a worker needs to run one attempt (decoded from protocol.AssignTask)."""

    run_id: str
    task_id: str
    stage_id: str
    partition: int
    partitions: int
    attempt: int
    steps: list[dict[str, Any]]
    output: str
    output_dir: Path
    batch_rows: int
    connections: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # The last journaled sink state of this task (chunked tasks resume from it), or empty.
    resume_state: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class TaskResult:
    steps: dict[str, dict[str, Any]]
    output_rows: int = 0
    output_bytes: int = 0
    write: WriteResult | None = None


@dataclass
class TaskRun:
    """One attempt in progress: its counters are read by the progress reporter while it runs."""

    spec: TaskSpec
    cancel: threading.Event = field(default_factory=threading.Event)
    counters: dict[str, StepCounters] = field(default_factory=dict)
    current_step: str | None = None
    started_at: float = field(default_factory=time.time)
    # Secret values this attempt resolved (connections, secret config fields): scrubbed from its
    # error message, whatever component or server wrote it.
    secrets: set[str] = field(default_factory=set)

    def progress(self) -> dict[str, dict[str, int]]:
        # Read by the worker's main thread while the task thread adds counters: iterate a snapshot.
        return {step: c.to_dict() for step, c in list(self.counters.items())}


InputFactory = Callable[[str], RowStream]


@dataclass
class _Step:
    step_id: str
    ctx: StepContext
    operator: Operator
    counters: StepCounters
    partitionwise: bool


CheckpointFn = Callable[[str, dict[str, Any], int], None]


def run_task(
    task: TaskRun,
    registry: Registry,
    store: BatchStore,
    open_input: InputFactory,
    *,
    work_dir: Path,
    memory_limit_bytes: int,
    log_metric: Callable[..., None] = lambda name, value, **tags: None,
    log_event: Callable[..., None] = lambda name, **fields: None,
    on_checkpoint: CheckpointFn = lambda token, state, rows: None,
    file_roots: tuple[Path, ...] | None = None,
) -> TaskResult:
    """Run the chain to completion; raise on failure (the caller classifies the error).

    ``open_input(step_id)`` returns the stream of an upstream step that lives in another stage.
    ``on_checkpoint(token, sink_state, rows)`` is called after each durable chunk commit of a
    chunked task, so that the coordinator can journal where a resumed attempt may continue.
    ``file_roots``: the directories file components may open (None: anywhere; StepContext).
    """
    spec = task.spec
    steps = [
        _build(task, registry, step, work_dir, memory_limit_bytes, log_metric, log_event, file_roots)
        for step in spec.steps
    ]
    stream: RowStream | None = None
    write: WriteResult | None = None
    result = TaskResult(steps={})
    try:
        if _is_chunked(steps):
            write = _run_chunked(task, steps, on_checkpoint)
        else:
            stream, write = _run_streaming(steps, spec.steps[0], open_input)
        if stream is not None:
            if spec.output == "exchange":
                result.output_rows, result.output_bytes = _store_output(task, stream, store)
            else:
                for batch in stream.batches():
                    result.output_rows += batch.num_rows
    except BaseException as exc:
        # In a fused chain every step runs inside the last one's pull: report the step that raised.
        task.current_step = getattr(exc, BLAME, None) or task.current_step
        raise
    result.write = write
    last = spec.steps[-1]["id"]
    result.steps = {
        step: {**c.to_dict(), **({"target": write.target} if write and step == last else {})}
        for step, c in task.counters.items()
    }
    task.current_step = None
    return result


def _build(
    task: TaskRun,
    registry: Registry,
    step: dict[str, Any],
    work_dir: Path,
    memory_limit_bytes: int,
    log_metric: Callable[..., None],
    log_event: Callable[..., None],
    file_roots: tuple[Path, ...] | None,
) -> _Step:
    spec = task.spec
    step_id = step["id"]
    task.current_step = step_id
    component = registry.get(step["component"])
    if component is None:
        raise TerminalError(
            f"step '{step_id}': component {step['component']!r} is not installed on this worker"
        )
    config = resolve_runtime_config(step["config"])
    task.secrets |= secret_values(config) | secret_values(spec.connections)
    ctx = StepContext(
        step_id=step_id,
        component=step["component"],
        config=config,
        run_id=spec.run_id,
        task_id=spec.task_id,
        attempt=spec.attempt,
        partition=spec.partition,
        partitions=spec.partitions,
        work_dir=work_dir,
        output_dir=spec.output_dir / step_id,
        connections=spec.connections,
        memory_limit_bytes=memory_limit_bytes,
        batch_rows=spec.batch_rows,
        log_metric=log_metric,
        log_event=log_event,
        cancel_event=task.cancel,
        file_roots=file_roots,
    )
    operator = component.operator(ctx)
    if not isinstance(operator, Source | Transform | Sink):
        raise TerminalError(f"step '{step_id}': {type(operator).__name__} is not a Source, Transform or Sink")
    counters = task.counters.setdefault(step_id, StepCounters())
    return _Step(step_id, ctx, operator, counters, component.partitionwise)


def _is_chunked(steps: list[_Step]) -> bool:
    """[ChunkedSource, partition-wise transforms..., ChunkedSink] commits chunk by chunk."""
    return (
        len(steps) >= 2
        and isinstance(steps[0].operator, ChunkedSource)
        and isinstance(steps[-1].operator, ChunkedSink)
        and all(isinstance(s.operator, Transform) and s.partitionwise for s in steps[1:-1])
    )


def _run_streaming(
    steps: list[_Step], first: dict[str, Any], open_input: InputFactory
) -> tuple[RowStream | None, WriteResult | None]:
    """Compose the chain lazily; a sink at the end drains it, otherwise the stream is returned."""
    stream: RowStream | None = None
    for index, step in enumerate(steps):
        if index == 0:
            inputs = {dep: open_input(dep) for dep in first.get("inputs", ())}
        else:
            assert stream is not None
            inputs = {steps[index - 1].step_id: stream}
        op = step.operator
        with _blamed_on(step.step_id):
            if isinstance(op, Sink):
                if len(inputs) != 1:
                    raise TerminalError(
                        f"step '{step.step_id}': a writer takes exactly one input, got {len(inputs)}"
                    )
                write = op.write(next(iter(inputs.values())))
                step.counters.rows, step.counters.bytes = write.rows, write.bytes
                return None, write
            if isinstance(op, Source):
                stream = op.open()
            else:
                assert isinstance(op, Transform)
                stream = op.apply(inputs)
        stream = _observed(stream, step)
    return stream, None


def _run_chunked(task: TaskRun, steps: list[_Step], on_checkpoint: CheckpointFn) -> WriteResult:
    source, sink = steps[0].operator, steps[-1].operator
    assert isinstance(source, ChunkedSource) and isinstance(sink, ChunkedSink)
    sink_id = steps[-1].step_id
    try:
        with _blamed_on(sink_id):
            token = sink.begin(task.spec.resume_state or None)
    except AlreadyFinished as done:
        steps[-1].counters.rows, steps[-1].counters.bytes = done.result.rows, done.result.bytes
        return done.result
    try:
        with _blamed_on(steps[0].step_id):
            chunks = source.open_chunks(token)
        for chunk in chunks:
            stream = _observed(chunk.stream, steps[0])
            for index, step in enumerate(steps[1:-1], start=1):
                assert isinstance(step.operator, Transform)
                with _blamed_on(step.step_id):
                    stream = step.operator.apply({steps[index - 1].step_id: stream})
                stream = _observed(stream, step)
            before = steps[-1].counters.rows
            with _blamed_on(sink_id):
                sink.write_chunk(_observed(stream, steps[-1]))
                state = sink.commit_chunk(chunk.token)
            on_checkpoint(chunk.token, state, steps[-1].counters.rows - before)
        with _blamed_on(sink_id):
            write = sink.finish()
    except BaseException:
        sink.abort()
        raise
    steps[-1].counters.rows, steps[-1].counters.bytes = write.rows, write.bytes
    return write


BLAME = "osiris_step"  # attribute naming the step an exception came from


@contextlib.contextmanager
def _blamed_on(step_id: str) -> Iterator[None]:
    """Mark an exception with the step it came from, unless an inner step marked it already."""
    try:
        yield
    except BaseException as exc:
        if not hasattr(exc, BLAME):
            with contextlib.suppress(AttributeError, TypeError):
                setattr(exc, BLAME, step_id)
        raise


def _observed(stream: RowStream, step: _Step) -> RowStream:
    """The step's output as the next step sees it: counted, cancellable, and with errors blamed on
    this step when they come from its own code (or from upstream ones, already blamed)."""
    counters, ctx = step.counters, step.ctx

    def gen() -> Iterator[pa.RecordBatch]:
        batches = stream.batches()
        while True:
            with _blamed_on(step.step_id):
                batch = next(batches, None)
            if batch is None:
                return
            ctx.check_cancelled()
            counters.rows += batch.num_rows
            counters.bytes += batch.nbytes
            counters.batches += 1
            yield batch

    wrapped = RowStream(
        gen(),
        None,
        estimated_rows=stream.estimate_size() if stream.estimate_size() >= 0 else None,
        name=stream.name,
    )
    wrapped._schema = stream._schema
    return wrapped


def _store_output(task: TaskRun, stream: RowStream, store: BatchStore) -> tuple[int, int]:
    spec = task.spec
    key = (spec.run_id, spec.stage_id, spec.partition, spec.attempt)
    writer = store.create(key, stream.schema)
    rows = nbytes = 0
    try:
        for batch in stream.batches():
            writer.append(batch)
            rows += batch.num_rows
            nbytes += batch.nbytes
    except BaseException as exc:
        writer.abort(f"producer of {spec.stage_id} partition {spec.partition} failed: {exc}")
        raise
    writer.close()
    held = store.info(key).bytes_held
    last = task.counters[spec.steps[-1]["id"]]
    last.held_bytes = held
    return rows, nbytes
