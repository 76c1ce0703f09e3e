"""The scheduler: a pure state machine. Events in, instructions out; no sockets, no clocks.

Every event carries ``now`` (seconds, any monotonic origin) so that backoff is testable. The
coordinator feeds it what happens (workers joining and dying, tasks finishing and failing, a tick
every loop) and carries out what it returns.

Policy, in short:

* A task is *ready* when every task it reads is running or done with its output still stored: a
  consumer may start while its producer is still producing (producers never block on consumers, they
  spill, so this cannot deadlock). Ready tasks start at once, in plan order, on the worker with the
  most free slots, avoiding the worker where the task last failed.
* A transient failure is retried with exponential backoff until ``max_attempts`` counted failures;
  a terminal failure fails the run. Tasks that were only *disturbed* (their worker died, their input
  vanished) are rerun without counting against that budget, up to ``max_disturbances``.
* A dead worker's running tasks are rerun elsewhere; the outputs it held that are still needed are
  recomputed from their lineage (recursively, through outputs already released). A lost worker is
  sent nothing more: what ran there stopped with it.
* An assignment the worker never acknowledges (no TaskStarted within ``start_timeout_s``: the
  message was lost on the way) is cancelled and rerun elsewhere, as a disturbance.
* Sinks commit once: a done sink is never rerun. On resume, sinks already committed in the journal
  are done, and every task that only fed them is skipped.
* A run that fails or is cancelled *drains*: every running attempt is cancelled, and RunFailed comes
  only once each of them reported back (finished or failed) or its worker was lost, or after
  ``drain_timeout_s`` (RunFailed then names the attempts that never answered). So when the client
  hears "failed", no task of the run is still writing anywhere.
* A run leaves the scheduler with its final instruction (RunSucceeded or RunFailed); reports about it
  that arrive later are ignored.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from enum import StrEnum

from osiris_flight.cluster.scheduler_events import (  # re-exported: the coordinator and tests use s.<Name>
    Assign,
    Cancel,
    Event,
    InputLocation,
    Instruction,
    Recompute,
    Release,
    Retry,
    RunCancelled,
    RunFailed,
    RunStarted,
    RunSubmitted,
    RunSucceeded,
    TaskFailed,
    TaskStarted,
    TaskSucceeded,
    Tick,
    WorkerJoined,
    WorkerLost,
)
from osiris_flight.oml.model import Plan, Stage

BACKOFF_BASE_S = 0.25
BACKOFF_MAX_S = 5.0


class Status(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    SKIPPED = "skipped"
    FAILED = "failed"


# -- state ------------------------------------------------------------------------------------------
@dataclass
class TaskState:
    run_id: str
    task_id: str
    stage: Stage
    partition: int
    order: int
    deps: tuple[str, ...]
    consumers: tuple[str, ...] = ()
    status: Status = Status.PENDING
    attempt: int = 0
    failures: int = 0
    disturbances: int = 0
    worker: str | None = None
    not_before: float = 0.0
    avoid_worker: str | None = None
    output_available: bool = False
    released: bool = False
    consumers_done: int = 0  # how many of ``consumers`` are DONE (kept by Scheduler._set_status)

    @property
    def has_output(self) -> bool:
        return self.stage.output == "exchange"


@dataclass
class WorkerState:
    worker_id: str
    slots: int
    running: set[tuple[str, str]] = field(default_factory=set)

    @property
    def free(self) -> int:
        return self.slots - len(self.running)


@dataclass
class RunState:
    run_id: str
    plan: Plan
    tasks: dict[str, TaskState]
    max_attempts: int
    max_disturbances: int
    finished: bool = False  # no more scheduling: succeeded, or failed and draining
    # Draining (a failed run): its final RunFailed, sent once no task is RUNNING or at the deadline.
    outcome: RunFailed | None = None
    drain_deadline: float = 0.0
    # PENDING tasks as (order, task_id), sorted: the scheduler scans only these, in plan order.
    pending: list[tuple[int, str]] = field(default_factory=list)
    unfinished: int = 0  # tasks neither DONE nor SKIPPED


class Scheduler:
    def __init__(
        self, max_disturbances: int = 8, start_timeout_s: float = 30.0, drain_timeout_s: float = 30.0
    ) -> None:
        self.workers: dict[str, WorkerState] = {}
        self.runs: dict[str, RunState] = {}  # active runs, draining ones included
        self.max_disturbances = max_disturbances
        self.start_timeout_s = start_timeout_s
        self.drain_timeout_s = drain_timeout_s
        self._now = 0.0  # the ``now`` of the event being handled
        # Assignments not yet acknowledged: (run id, task id) -> (attempt, deadline). Checked on
        # ticks; entries of attempts that moved on are dropped then.
        self._unstarted: dict[tuple[str, str], tuple[int, float]] = {}

    # -- entry point ---------------------------------------------------------------------------
    def handle(self, event: Event) -> list[Instruction]:
        out: list[Instruction] = []
        self._now = event.now
        match event:
            case WorkerJoined():
                self.workers[event.worker_id] = WorkerState(event.worker_id, max(1, event.slots))
            case WorkerLost():
                self._worker_lost(event, out)
            case RunSubmitted():
                self._submit(event, out)
            case TaskStarted():
                self._unstarted.pop((event.run_id, event.task_id), None)
                return out  # frees nothing, readies nothing: no need to look for work
            case TaskSucceeded():
                self._succeeded(event, out)
            case TaskFailed():
                self._failed(event, out)
            case RunCancelled():
                run = self.runs.get(event.run_id)
                if run is not None and not run.finished:
                    self._fail_run(run, f"cancelled: {event.reason}", None, out)
                if run is not None and not event.drain and event.run_id in self.runs:
                    self._end_drain(run, out)
            case Tick():
                self._check_unstarted(event.now, out)
                self._check_drains(event.now, out)
        self._schedule(event.now, out)
        return out

    # -- queries -------------------------------------------------------------------------------
    def task(self, run_id: str, task_id: str) -> TaskState:
        return self.runs[run_id].tasks[task_id]

    def active_runs(self) -> list[str]:
        """Runs not yet ended (a draining run counts: its tasks are still stopping)."""
        return list(self.runs)

    def holder(self, run_id: str, task_id: str, attempt: int) -> str | None:
        """The worker running this attempt now (draining included), or None: a report about the
        attempt from any other worker is forged or stale."""
        run = self.runs.get(run_id)
        t = run.tasks.get(task_id) if run is not None else None
        if t is None or t.status is not Status.RUNNING or t.attempt != attempt:
            return None
        return t.worker

    # -- handlers ------------------------------------------------------------------------------
    def _submit(self, ev: RunSubmitted, out: list[Instruction]) -> None:
        if ev.run_id in self.runs:
            raise ValueError(f"run {ev.run_id} was submitted twice")
        tasks: dict[str, TaskState] = {}
        order = 0
        for stage in ev.plan.stages:
            deps = tuple(t for src in stage.inputs for t in ev.plan.stage(src).task_ids())
            for partition, tid in enumerate(stage.task_ids()):
                tasks[tid] = TaskState(
                    ev.run_id, tid, stage, partition, order, deps, attempt=ev.first_attempt - 1
                )
                order += 1
        consumers: dict[str, list[str]] = {tid: [] for tid in tasks}
        for t in tasks.values():
            for dep in t.deps:
                consumers[dep].append(t.task_id)
        for t in tasks.values():
            t.consumers = tuple(consumers[t.task_id])
        run = RunState(ev.run_id, ev.plan, tasks, max(1, ev.max_attempts), self.max_disturbances)
        run.unfinished = len(tasks)
        run.pending = [(t.order, t.task_id) for t in tasks.values()]
        self.runs[ev.run_id] = run
        # Resume: committed terminal tasks are done; tasks that only fed committed ones are skipped.
        for t in tasks.values():
            if t.task_id in ev.committed:
                self._set_status(run, t, Status.DONE)
        for t in reversed(tasks.values()):
            if (
                t.status is Status.PENDING
                and t.consumers
                and all(tasks[c].status in (Status.DONE, Status.SKIPPED) for c in t.consumers)
            ):
                self._set_status(run, t, Status.SKIPPED)
        skipped = tuple(
            sorted(t.task_id for t in tasks.values() if t.status in (Status.SKIPPED, Status.DONE))
        )
        out.append(RunStarted(ev.run_id, skipped))
        self._check_run_done(run, out)

    def _succeeded(self, ev: TaskSucceeded, out: list[Instruction]) -> None:
        if self._drained(ev.run_id, ev.task_id, ev.attempt, Status.DONE, out):
            return
        t = self._current(ev.run_id, ev.task_id, ev.attempt)
        if t is None:
            return
        self._free_slot(t)
        run = self.runs[ev.run_id]
        self._set_status(run, t, Status.DONE)
        t.worker = ev.worker_id
        t.output_available = t.has_output
        t.released = False
        if t.has_output and not t.consumers:
            self._release(t, out)
        elif t.has_output:
            self._maybe_release(t, out)  # its consumers may all have finished reading already
        for dep in t.deps:
            self._maybe_release(run.tasks[dep], out)
        self._check_run_done(run, out)

    def _failed(self, ev: TaskFailed, out: list[Instruction]) -> None:
        if self._drained(ev.run_id, ev.task_id, ev.attempt, Status.FAILED, out):
            return
        t = self._current(ev.run_id, ev.task_id, ev.attempt)
        if t is None:
            return
        run = self.runs[ev.run_id]
        self._free_slot(t)
        self._set_status(run, t, Status.FAILED)
        if t.has_output:
            out.append(Release(t.run_id, t.task_id, t.attempt, ev.worker_id))
        if ev.upstream_lost:
            self._input_lost(run, t, ev, out)
            return
        if not ev.transient:
            self._fail_run(run, ev.error, t.task_id, out)
            return
        t.failures += 1
        if t.failures >= run.max_attempts:
            self._fail_run(
                run, f"task {t.task_id} failed {t.failures} times; last error: {ev.error}", t.task_id, out
            )
            return
        delay = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** (t.failures - 1))
        self._set_status(run, t, Status.PENDING)
        t.worker = None
        t.not_before = ev.now + delay
        t.avoid_worker = ev.worker_id
        out.append(Retry(t.run_id, t.task_id, t.attempt, ev.error, delay, counted=True))
        self._disturb_consumers(run, t, f"input {t.task_id} failed", out)

    def _input_lost(self, run: RunState, t: TaskState, ev: TaskFailed, out: list[Instruction]) -> None:
        """Retry a task whose input vanished without counting a failure, after a growing pause: if
        the producer's worker died, its loss is declared within the heartbeat limit and the input
        recomputed (the retry then waits for it); bounded by ``max_disturbances``."""
        t.disturbances += 1
        if t.disturbances > run.max_disturbances:
            self._fail_run(
                run,
                f"task {t.task_id} lost its input {t.disturbances} times; last: {ev.error}",
                t.task_id,
                out,
            )
            return
        delay = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** (t.disturbances - 1))
        self._set_status(run, t, Status.PENDING)
        t.worker = None
        t.not_before = ev.now + delay
        out.append(Retry(t.run_id, t.task_id, t.attempt, ev.error, delay, counted=False))
        self._disturb_consumers(run, t, f"input {t.task_id} failed", out)

    def _check_unstarted(self, now: float, out: list[Instruction]) -> None:
        for key, (attempt, deadline) in list(self._unstarted.items()):
            run = self.runs.get(key[0])
            t = run.tasks.get(key[1]) if run is not None else None
            if (
                run is None
                or t is None
                or run.finished
                or t.status is not Status.RUNNING
                or t.attempt != attempt
            ):
                del self._unstarted[key]  # that attempt ended one way or another
                continue
            if now >= deadline:
                del self._unstarted[key]
                reason = f"worker {t.worker} never started attempt {attempt} (the assignment was lost)"
                t.avoid_worker = t.worker  # rerun elsewhere if another worker has a free slot
                self._disturb(run, t, reason, out, cancel=True)

    def _worker_lost(self, ev: WorkerLost, out: list[Instruction]) -> None:
        worker = self.workers.pop(ev.worker_id, None)
        if worker is None:
            return
        reason = f"worker {ev.worker_id} lost ({ev.reason})"
        for run in list(self.runs.values()):
            for t in list(run.tasks.values()):  # plan order
                if run.finished:
                    break
                if t.worker != ev.worker_id:
                    continue
                if t.status is Status.RUNNING:
                    self._disturb(run, t, reason, out, cancel=False)
                elif t.status is Status.DONE and t.output_available:
                    t.output_available = False
                    if self._needed(run, t):
                        self._reset_done(run, t, reason, out)
            if run.outcome is not None and run.run_id in self.runs:
                # Draining: what ran on the lost worker has stopped with it.
                for t in run.tasks.values():
                    if t.status is Status.RUNNING and t.worker == ev.worker_id:
                        self._set_status(run, t, Status.FAILED)
                self._maybe_end_drain(run, out)

    # -- helpers -------------------------------------------------------------------------------
    def _set_status(self, run: RunState, t: TaskState, status: Status) -> None:
        """The one place a task's status changes, so the derived bookkeeping stays exact: the
        sorted pending queue, the count of unfinished tasks, each task's count of done consumers.
        """
        old = t.status
        if old is status:
            return
        if old is Status.PENDING:
            index = bisect.bisect_left(run.pending, (t.order, t.task_id))
            if index < len(run.pending) and run.pending[index] == (t.order, t.task_id):
                del run.pending[index]
        elif status is Status.PENDING:
            bisect.insort(run.pending, (t.order, t.task_id))
        finished = (Status.DONE, Status.SKIPPED)
        run.unfinished += (old in finished) - (status in finished)
        if (old is Status.DONE) != (status is Status.DONE):
            step = 1 if status is Status.DONE else -1
            for dep in t.deps:
                run.tasks[dep].consumers_done += step
        t.status = status

    def _current(self, run_id: str, task_id: str, attempt: int) -> TaskState | None:
        """The task if this report is about its current running attempt; stale reports are ignored."""
        run = self.runs.get(run_id)
        if run is None or run.finished:
            return None
        t = run.tasks.get(task_id)
        if t is None or t.status is not Status.RUNNING or t.attempt != attempt:
            return None
        return t

    def _free_slot(self, t: TaskState) -> None:
        if t.worker is not None and t.worker in self.workers:
            self.workers[t.worker].running.discard((t.run_id, t.task_id))

    def _needed(self, run: RunState, t: TaskState) -> bool:
        return any(run.tasks[c].status in (Status.PENDING, Status.RUNNING) for c in t.consumers)

    def _disturb(
        self, run: RunState, t: TaskState, reason: str, out: list[Instruction], *, cancel: bool
    ) -> None:
        """Stop a running attempt that is not at fault and queue it again without counting a failure."""
        # A lost worker gets nothing: it is gone from ``workers``, and what ran there stopped with it.
        alive = t.worker if t.worker in self.workers else None
        if cancel and alive is not None:
            out.append(Cancel(t.run_id, t.task_id, t.attempt, alive, reason))
        if t.has_output and alive is not None:
            out.append(Release(t.run_id, t.task_id, t.attempt, alive))
        self._free_slot(t)
        t.disturbances += 1
        if t.disturbances > run.max_disturbances:
            self._fail_run(
                run, f"task {t.task_id} was disturbed {t.disturbances} times; last: {reason}", t.task_id, out
            )
            return
        self._set_status(run, t, Status.PENDING)
        t.worker = None
        out.append(Retry(t.run_id, t.task_id, t.attempt, reason, 0.0, counted=False))
        self._disturb_consumers(run, t, f"input {t.task_id} was lost", out)
        self._ensure_inputs(run, t, out)

    def _disturb_consumers(self, run: RunState, t: TaskState, reason: str, out: list[Instruction]) -> None:
        for c in t.consumers:
            consumer = run.tasks[c]
            if consumer.status is Status.RUNNING and not run.finished:
                self._disturb(run, consumer, reason, out, cancel=True)

    def _reset_done(self, run: RunState, t: TaskState, reason: str, out: list[Instruction]) -> None:
        """A finished task's output is gone but still needed: compute it again from its lineage."""
        self._set_status(run, t, Status.PENDING)
        t.worker = None
        t.output_available = False
        out.append(Recompute(t.run_id, t.task_id, reason))
        self._disturb_consumers(run, t, f"input {t.task_id} was lost", out)
        self._ensure_inputs(run, t, out)

    def _ensure_inputs(self, run: RunState, t: TaskState, out: list[Instruction]) -> None:
        if run.finished:  # failed on the way (a disturbance limit): nothing will read them again
            return
        for dep_id in t.deps:
            dep = run.tasks[dep_id]
            if dep.status in (Status.DONE, Status.SKIPPED) and not dep.output_available:
                self._reset_done(run, dep, f"{t.task_id} needs {dep_id} again", out)

    def _maybe_release(self, t: TaskState, out: list[Instruction]) -> None:
        if t.output_available and not t.released and t.consumers_done == len(t.consumers):
            self._release(t, out)

    def _release(self, t: TaskState, out: list[Instruction]) -> None:
        if t.worker is not None:
            out.append(Release(t.run_id, t.task_id, t.attempt, t.worker))
        t.output_available = False
        t.released = True

    def _fail_run(self, run: RunState, error: str, task_id: str | None, out: list[Instruction]) -> None:
        """Cancel every running attempt and drain: RunFailed once they all stopped (_end_drain).
        Their slots stay taken until then: the work is still on the worker."""
        for t in run.tasks.values():
            # Not on a worker being lost (this run failed while _worker_lost walked it): that
            # attempt stopped with its worker, and _worker_lost ends it.
            if t.status is Status.RUNNING and t.worker is not None and t.worker in self.workers:
                out.append(Cancel(t.run_id, t.task_id, t.attempt, t.worker, "run failed"))
        run.finished = True
        run.outcome = RunFailed(run.run_id, error, task_id)
        run.drain_deadline = self._now + self.drain_timeout_s
        self._maybe_end_drain(run, out)

    def _drained(
        self, run_id: str, task_id: str, attempt: int, status: Status, out: list[Instruction]
    ) -> bool:
        """A report of a draining run: the attempt (if it was one still running) has stopped."""
        run = self.runs.get(run_id)
        if run is None or run.outcome is None:
            return False
        t = run.tasks.get(task_id)
        if t is not None and t.status is Status.RUNNING and t.attempt == attempt:
            self._free_slot(t)
            self._set_status(run, t, status)
            self._maybe_end_drain(run, out)
        return True

    def _maybe_end_drain(self, run: RunState, out: list[Instruction]) -> None:
        if not any(t.status is Status.RUNNING for t in run.tasks.values()):
            self._end_drain(run, out)

    def _end_drain(self, run: RunState, out: list[Instruction]) -> None:
        assert run.outcome is not None
        unstopped = []
        for t in run.tasks.values():
            if t.status is Status.RUNNING:
                unstopped.append(t.task_id)
                self._free_slot(t)
                self._set_status(run, t, Status.FAILED)
        outcome = run.outcome
        out.append(RunFailed(outcome.run_id, outcome.error, outcome.task_id, tuple(unstopped)))
        del self.runs[run.run_id]

    def _check_drains(self, now: float, out: list[Instruction]) -> None:
        for run in list(self.runs.values()):
            if run.outcome is not None and now >= run.drain_deadline:
                self._end_drain(run, out)

    def _check_run_done(self, run: RunState, out: list[Instruction]) -> None:
        if not run.finished and run.unfinished == 0:
            run.finished = True
            out.append(RunSucceeded(run.run_id))
            del self.runs[run.run_id]

    def _ready(self, run: RunState, t: TaskState, now: float) -> bool:
        if t.status is not Status.PENDING or t.not_before > now:
            return False
        for dep_id in t.deps:
            dep = run.tasks[dep_id]
            if dep.status is Status.RUNNING:
                continue
            if dep.status is Status.DONE and dep.output_available:
                continue
            return False
        return True

    def _pick_worker(self, t: TaskState) -> WorkerState | None:
        free = [w for w in self.workers.values() if w.free > 0]
        if not free:
            return None
        preferred = [w for w in free if w.worker_id != t.avoid_worker] or free
        return max(preferred, key=lambda w: (w.free, -len(w.running), w.worker_id))

    def _schedule(self, now: float, out: list[Instruction]) -> None:
        """Start ready tasks, in plan order, while slots are free. Scans only pending tasks."""
        for run in self.runs.values():
            if run.finished:
                continue
            for _, task_id in list(run.pending):
                if not any(w.free > 0 for w in self.workers.values()):
                    return
                t = run.tasks[task_id]
                if not self._ready(run, t, now):
                    continue
                worker = self._pick_worker(t)
                assert worker is not None
                inputs = tuple(
                    InputLocation(
                        run.tasks[d].stage.id,
                        run.tasks[d].partition,
                        run.tasks[d].worker or "",
                        run.tasks[d].attempt,
                    )
                    for d in t.deps
                )
                t.attempt += 1
                self._set_status(run, t, Status.RUNNING)
                t.worker = worker.worker_id
                worker.running.add((t.run_id, t.task_id))
                self._unstarted[(t.run_id, t.task_id)] = (t.attempt, now + self.start_timeout_s)
                out.append(Assign(t.run_id, t.task_id, t.attempt, worker.worker_id, inputs))
