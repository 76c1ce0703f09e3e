"""Bookkeeping of one run on the coordinator: step and task states, counters, events, journal.

It turns what the scheduler decides and what workers report into the run directory's records
(events.jsonl, metrics.jsonl, status.json, journal.jsonl) and into live events for the client. Event
and metric names follow Osiris where Osiris has them (run_start, step_start, step_complete with
rows_processed and duration_ms, step_failed, run_end; rows_read, rows_written with a step tag).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from osiris_flight import protocol as p
from osiris_flight.errors import disk_error
from osiris_flight.oml.model import Manifest, Plan, parse_task_id
from osiris_flight.runs.journal import Journal
from osiris_flight.runs.rundir import RunDir
from osiris_flight.telemetry.events import CallbackSink, JsonlSink, Telemetry


@dataclass
class StepProgress:
    state: str = "pending"
    started_at: float | None = None
    finished_at: float | None = None
    rows_by_task: dict[str, int] = field(default_factory=dict)
    bytes_by_task: dict[str, int] = field(default_factory=dict)
    target: str | None = None
    rss_bytes: int = 0  # resident memory of the worker process running this step, last report

    @property
    def rows(self) -> int:
        return sum(self.rows_by_task.values())


# What the submitting client's live view shows (progress is forwarded separately).
CLIENT_EVENTS = frozenset(
    {
        "run_start",
        "run_resumed",
        "run_end",
        "step_start",
        "step_complete",
        "step_failed",
        "task_retry",
        "task_recompute",
        "worker_lost",
    }
)


class RunTracker:
    def __init__(
        self,
        run_dir: RunDir,
        manifest: Manifest,
        plan: Plan,
        *,
        resumed: bool,
        committed: dict[str, dict[str, Any]],
        checkpoints: dict[str, dict[str, Any]],
        forward: Callable[[list[dict[str, Any]]], None],
    ) -> None:
        self.run_dir = run_dir
        self.run_id = run_dir.run_id
        self.manifest = manifest
        self.plan = plan
        self.resumed = resumed
        self.started_at = time.time()
        # Client events since the last flush: sent as one RunEvents per coordinator loop pass (one
        # message per event cost the coordinator a fifth of its time on runs of small tasks).
        self._outbox: list[dict[str, Any]] = []
        self._progress_due = False  # a progress event is owed (built at flush: the latest counts)
        # The run directory may fail under the run (disk full, I/O error, read-only): the sink and the
        # journal then stop writing and keep the reason, ``disk_error`` reports it, and the
        # coordinator fails this run only.
        self._status_error: str | None = None
        self._records = JsonlSink(run_dir.events, run_dir.metrics)
        self.telemetry = Telemetry(
            [self._records, CallbackSink(self._outbox.append, CLIENT_EVENTS)],
            run_id=self.run_id,
            pipeline=manifest.name,
        )
        self.journal = Journal(run_dir.journal)
        self.steps: dict[str, StepProgress] = {s.id: StepProgress() for s in manifest.steps}
        self.tasks_done: set[str] = set()
        self.forward = forward
        self.spilled_bytes = 0
        self.retries = 0
        self.finished = False
        # Last durable chunk of each chunked task: a retried or resumed attempt continues there.
        self.checkpoints: dict[str, dict[str, Any]] = dict(checkpoints)
        self.failed_steps: dict[str, str] = {}  # task id -> the step its last failure came from
        for task_id, record in committed.items():
            self._count_committed(task_id, record.get("steps", {}))

    def _count_committed(self, task_id: str, steps: dict[str, dict[str, Any]]) -> None:
        self.tasks_done.add(task_id)
        for step_id, counters in steps.items():
            if step_id in self.steps:
                self.steps[step_id].rows_by_task[task_id] = int(counters.get("rows", 0))
                self.steps[step_id].state = "skipped"

    @property
    def disk_error(self) -> str | None:
        """Why this run's directory can no longer be written (which file, what error), or None."""
        return self._records.error or self.journal.error or self._status_error

    def _write_status(self, **fields: Any) -> None:
        if self._status_error is not None:
            return
        try:
            self.run_dir.write_status(**fields)
        except OSError as exc:
            self._status_error = disk_error(self.run_dir.status, exc)

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self, skipped_tasks: list[str]) -> None:
        for task_id in skipped_tasks:
            for step_id in self.plan.stage(parse_task_id(task_id)[0]).steps:
                if self.steps[step_id].state == "pending":
                    self.steps[step_id].state = "skipped"
        self.journal.started(self.manifest.fingerprint(), self.resumed)
        self.telemetry.event(
            "run_resumed" if self.resumed else "run_start",
            manifest_fingerprint=self.manifest.fingerprint(),
            steps=len(self.manifest.steps),
            stages=len(self.plan.stages),
            tasks=sum(s.partitions for s in self.plan.stages),
            skipped_tasks=skipped_tasks,
        )
        self._write_status(status="running", started_at=self.started_at, resumed=self.resumed)

    def finish(self, status: str, error: str = "", failed_task: str | None = None) -> dict[str, Any]:
        now = time.time()
        if failed_task:
            # The step that raised fails; the others of its fused chain did not run to the end.
            stage, _ = parse_task_id(failed_task)
            blamed = self.failed_steps.get(failed_task)
            for step_id in self.plan.stage(stage).steps:
                if self.steps[step_id].state in ("complete", "skipped"):
                    continue
                if blamed in (None, step_id):
                    self.steps[step_id].state = "failed"
                    self.telemetry.event("step_failed", step_id=step_id, error=error)
                else:
                    self.steps[step_id].state = "cancelled"
        if status != "success":
            # Nothing runs after the run ended: no step stays "running" or "pending" in the record.
            for sp in self.steps.values():
                if sp.state in ("running", "pending"):
                    sp.state = "cancelled"
                    sp.finished_at = sp.finished_at or (now if sp.started_at else None)
        summary = self.summary(now)
        self.telemetry.event(
            "run_end",
            status=status,
            error=error or None,
            duration_ms=summary["duration_ms"],
            steps=summary["steps"],
        )
        self.journal.ended(status)
        self._write_status(
            status=status,
            error=error or None,
            started_at=self.started_at,
            finished_at=now,
            resumed=self.resumed,
            summary=summary,
        )
        self._progress_due = False  # the summary follows in RunFinished
        self.flush()
        self.telemetry.close()
        self.journal.close()
        self.finished = True
        return summary

    def summary(self, now: float | None = None) -> dict[str, Any]:
        now = now or time.time()
        steps = {}
        for step_id, sp in self.steps.items():
            duration = ((sp.finished_at or now) - sp.started_at) if sp.started_at else 0.0
            steps[step_id] = {
                "state": sp.state,
                "rows": sp.rows,
                "duration_ms": round(duration * 1000, 1),
                **({"target": sp.target} if sp.target else {}),
            }
        return {
            "duration_ms": round((now - self.started_at) * 1000, 1),
            "steps": steps,
            "spilled_bytes": self.spilled_bytes,
            "retries": self.retries,
            "run_dir": str(self.run_dir.path),
        }

    # -- scheduler decisions -------------------------------------------------------------------
    def assigned(self, task_id: str, attempt: int, worker_id: str) -> None:
        self.telemetry.event("task_assigned", task_id=task_id, attempt=attempt, worker_id=worker_id)

    def retry(self, task_id: str, attempt: int, reason: str, delay_s: float, counted: bool) -> None:
        self.retries += 1
        self.telemetry.event(
            "task_retry", task_id=task_id, attempt=attempt, reason=reason, delay_s=delay_s, counted=counted
        )
        self._reset_steps(task_id)

    def recompute(self, task_id: str, reason: str) -> None:
        self.tasks_done.discard(task_id)
        self.telemetry.event("task_recompute", task_id=task_id, reason=reason)
        self._reset_steps(task_id)

    def _reset_steps(self, task_id: str) -> None:
        stage, _ = parse_task_id(task_id)
        for step_id in self.plan.stage(stage).steps:
            sp = self.steps[step_id]
            sp.rows_by_task.pop(task_id, None)
            if sp.state == "complete":
                sp.state = "running"
                sp.finished_at = None

    def cluster_event(self, name: str, **fields: Any) -> None:
        self.telemetry.event(name, **fields)

    # -- worker reports ------------------------------------------------------------------------
    def task_started(self, msg: p.TaskStarted) -> None:
        stage = self.plan.stage(parse_task_id(msg.task_id)[0])
        self.telemetry.event(
            "task_start",
            at=msg.started_at,
            task_id=msg.task_id,
            attempt=msg.attempt,
            worker_id=msg.worker_id,
            steps=list(stage.steps),
        )
        for step_id in stage.steps:
            sp = self.steps[step_id]
            if sp.started_at is None:
                sp.started_at = msg.started_at
                sp.state = "running"
                self.telemetry.event(
                    "step_start",
                    at=msg.started_at,
                    step_id=step_id,
                    component=self.manifest.step(step_id).component,
                    task_id=msg.task_id,
                )

    def task_progress(self, msg: p.TaskProgress) -> None:
        for step_id, counters in msg.steps.items():
            if step_id in self.steps:
                self.steps[step_id].rows_by_task[msg.task_id] = int(counters.get("rows", 0))
                self.steps[step_id].rss_bytes = msg.rss_bytes
        self._progress_due = True

    def flush(self) -> None:
        """Write buffered records to the run directory and forward the client's events (called once
        per coordinator loop pass, and at the end of the run before RunFinished)."""
        self.telemetry.flush()
        if self._progress_due:
            self._progress_due = False
            self._outbox.append(
                {
                    "event": "progress",
                    "t": time.time(),
                    "run_id": self.run_id,
                    "steps": {
                        s: {"rows": sp.rows, "state": sp.state, "rss_bytes": sp.rss_bytes}
                        for s, sp in self.steps.items()
                    },
                }
            )
        if self._outbox:
            events, self._outbox = self._outbox, []
            self.forward(events)

    def task_telemetry(self, msg: p.TaskTelemetry) -> None:
        """A component's own event or metric, tagged with its task and attempt."""
        fields = {k: v for k, v in msg.fields.items() if k not in ("task_id", "attempt", "at")}
        if msg.kind == "metric":
            self.telemetry.metric(msg.name, msg.value, task_id=msg.task_id, **fields)
        else:
            self.telemetry.event(msg.name, task_id=msg.task_id, attempt=msg.attempt, **fields)

    def task_checkpoint(self, msg: p.TaskCheckpoint) -> None:
        self.checkpoints[msg.task_id] = msg.sink_state
        self.journal.checkpoint(msg.task_id, msg.token, msg.sink_state, msg.rows)
        self.telemetry.event("checkpoint", task_id=msg.task_id, attempt=msg.attempt, rows=msg.rows)

    def output_spilled(self, msg: p.OutputSpilled) -> None:
        self.spilled_bytes += msg.bytes
        self.telemetry.event(
            "spill",
            task_id=msg.task_id,
            attempt=msg.attempt,
            worker_id=msg.worker_id,
            bytes=msg.bytes,
            batches=msg.batches,
            memory_before=msg.memory_before,
        )
        self.telemetry.metric("bytes_spilled", msg.bytes, task_id=msg.task_id)

    def task_finished(self, msg: p.TaskFinished) -> None:
        stage = self.plan.stage(parse_task_id(msg.task_id)[0])
        duration_ms = round((msg.finished_at - msg.started_at) * 1000, 1)
        self.telemetry.event(
            "task_complete",
            at=msg.finished_at,
            task_id=msg.task_id,
            attempt=msg.attempt,
            worker_id=msg.worker_id,
            duration_ms=duration_ms,
            output_rows=msg.output_rows,
            output_bytes=msg.output_bytes,
            steps=msg.steps,
        )
        self.telemetry.metric("task_duration_ms", duration_ms, task_id=msg.task_id)
        for step_id, counters in msg.steps.items():
            sp = self.steps[step_id]
            sp.rows_by_task[msg.task_id] = int(counters.get("rows", 0))
            sp.bytes_by_task[msg.task_id] = int(counters.get("bytes", 0))
            if counters.get("target"):
                sp.target = str(counters["target"])
        for step_id, counters in msg.steps.items():
            if "held_bytes" in counters:  # an exchange output: its size as Arrow, and as held
                self.telemetry.metric("bytes_logical", int(counters.get("bytes", 0)), step=step_id)
                self.telemetry.metric("bytes_held", int(counters["held_bytes"]), step=step_id)
        if stage.output in ("sink", "discard"):
            self.journal.committed(msg.task_id, msg.attempt, stage.output, msg.steps)
        self.tasks_done.add(msg.task_id)
        if all(t in self.tasks_done for t in stage.task_ids()):
            for step_id in stage.steps:
                self._step_complete(step_id, msg.finished_at)

    def _step_complete(self, step_id: str, at: float) -> None:
        sp = self.steps[step_id]
        sp.state = "complete"
        sp.finished_at = at
        duration_ms = round((at - (sp.started_at or at)) * 1000, 1)
        mode = self.manifest.step(step_id).mode
        self.telemetry.event(
            "step_complete",
            at=at,
            step_id=step_id,
            rows_processed=sp.rows,
            duration_ms=duration_ms,
            **({"target": sp.target} if sp.target else {}),
        )
        self.telemetry.metric("rows_processed", sp.rows, at=at, step=step_id)
        self.telemetry.metric("step_duration_ms", duration_ms, at=at, step=step_id)
        if mode == "read":
            self.telemetry.metric("rows_read", sp.rows, at=at, step=step_id)
        elif mode == "write":
            self.telemetry.metric("rows_written", sp.rows, at=at, step=step_id)

    def task_failed(self, msg: p.TaskFailed) -> None:
        if msg.step_id:
            self.failed_steps[msg.task_id] = msg.step_id
        self.telemetry.event(
            "task_failed",
            task_id=msg.task_id,
            attempt=msg.attempt,
            worker_id=msg.worker_id,
            step_id=msg.step_id,
            error=msg.error,
            error_type=msg.error_type,
            transient=msg.transient,
        )
