"""The worker's decisions as a pure state machine: messages in, instructions out; no sockets.

``cluster/worker.py`` is the I/O shell around it: it decodes what the coordinator sends, feeds it
here together with the events of its own task threads (``TaskEnded``), and carries out what
``handle`` returns (start or cancel a task thread, drop stored outputs, send a report, register
again, stop). Every rule about which message is acted on and when lives in this module, so it is
tested by asserting exact instruction lists (tests/cluster/test_worker_state.py), the way
dask/distributed tests its worker.

The rules, in short:

* Before the first Welcome the worker is *joining*: a Reject then means it may not join at all
  (wrong protocol version, a key without the worker role) and it stops.
* After a Welcome it is *joined*. A Reject with ``rejoin`` set means the coordinator declared it
  dead (paused past the heartbeat limit) and reran its work elsewhere: it abandons its running
  tasks, drops the outputs of their runs and registers again (*rejoining*). Further such Rejects
  before the next Welcome are answers to reports it sent meanwhile and change nothing. A Reject
  without ``rejoin`` refused one message (one the coordinator could not decode or handle): it is
  logged, and nothing else changes.
* An assignment is started once per (run, task, attempt); a duplicate, or one that arrives while
  rejoining (sent to the incarnation the coordinator declared dead), is ignored.
* Releasing a whole run also cancels that run's tasks still running here: a run that ended must not
  go on writing on this worker.
* A task's final report is sent when its thread ends, unless the task was abandoned by a Reject (the
  coordinator has disowned that attempt, and would only answer with another Reject).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from osiris_flight import protocol as p
from osiris_flight.oml.model import parse_task_id

TaskKey = tuple[str, str, int]  # (run id, task id, attempt)


class Phase(StrEnum):
    JOINING = "joining"  # sent Register, no Welcome yet
    JOINED = "joined"
    REJOINING = "rejoining"  # rejected after joining: sent Register again
    STOPPED = "stopped"


# -- events (besides the coordinator's messages) -----------------------------------------------------
@dataclass(frozen=True)
class TaskEnded:
    """A task thread finished, failed or was cancelled; ``report`` is its encoded final message."""

    key: TaskKey
    report: bytes


Event = p.Message | TaskEnded


# -- instructions ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StartTask:
    assignment: p.AssignTask


@dataclass(frozen=True)
class CancelTask:
    key: TaskKey
    reason: str


@dataclass(frozen=True)
class ReleaseOutput:
    """Drop one stored output: (run id, stage id, partition, attempt)."""

    key: tuple[str, str, int, int]


@dataclass(frozen=True)
class ReleaseRun:
    """Drop every output and scratch file of a run."""

    run_id: str
    reason: str


@dataclass(frozen=True)
class SendReport:
    data: bytes


@dataclass(frozen=True)
class Register:
    """Send Register (again)."""


@dataclass(frozen=True)
class Joined:
    """The coordinator welcomed this worker: load its plugins, follow its heartbeat interval, check
    fetch tokens with its key."""

    plugins: tuple[str, ...]
    heartbeat_interval_s: float
    fetch_token_key: bytes = field(default=b"", repr=False)  # a secret


@dataclass(frozen=True)
class Refused:
    """The coordinator refused one message of this worker's: log the reason."""

    reason: str


@dataclass(frozen=True)
class Stop:
    reason: str
    exit_code: int = 0


Instruction = (
    StartTask | CancelTask | ReleaseOutput | ReleaseRun | SendReport | Register | Joined | Refused | Stop
)


@dataclass
class WorkerState:
    phase: Phase = Phase.JOINING
    running: set[TaskKey] = field(default_factory=set)
    # Tasks abandoned by a Reject: their threads are still winding down; their reports are dropped.
    abandoned: set[TaskKey] = field(default_factory=set)

    def handle(self, event: Event) -> list[Instruction]:
        if self.phase is Phase.STOPPED:
            return []
        match event:
            case TaskEnded():
                return self._task_ended(event)
            case p.Welcome():
                self.phase = Phase.JOINED
                return [Joined(tuple(event.plugins), event.heartbeat_interval_s, event.fetch_token_key)]
            case p.Reject():
                return self._rejected(event)
            case p.AssignTask():
                key = (event.run_id, event.task_id, event.attempt)
                if self.phase is not Phase.JOINED or key in self.running or key in self.abandoned:
                    return []
                self.running.add(key)
                return [StartTask(event)]
            case p.CancelTask():
                key = (event.run_id, event.task_id, event.attempt)
                return [CancelTask(key, event.reason or "cancelled")] if key in self.running else []
            case p.ReleaseOutputs():
                return self._release(event)
            case p.Shutdown():
                self.phase = Phase.STOPPED
                out: list[Instruction] = [CancelTask(k, "worker stopping") for k in sorted(self.running)]
                return [*out, Stop(f"shutdown requested: {event.reason}")]
        return []

    # -- handlers ------------------------------------------------------------------------------
    def _task_ended(self, event: TaskEnded) -> list[Instruction]:
        self.running.discard(event.key)
        if event.key in self.abandoned:
            self.abandoned.discard(event.key)
            return []
        return [SendReport(event.report)]

    def _rejected(self, event: p.Reject) -> list[Instruction]:
        if self.phase is Phase.JOINING:
            self.phase = Phase.STOPPED
            return [Stop(f"the coordinator rejected this worker: {event.reason}", exit_code=3)]
        if not event.rejoin:
            return [Refused(event.reason)]
        if self.phase is Phase.REJOINING:
            return []  # an answer to a report sent before our Register arrived
        self.phase = Phase.REJOINING
        out: list[Instruction] = []
        for key in sorted(self.running):
            out.append(CancelTask(key, "the coordinator declared this worker lost"))
            self.abandoned.add(key)
        self.running.clear()
        out += [ReleaseRun(run_id, "worker rejoined") for run_id in sorted({k[0] for k in self.abandoned})]
        return [*out, Register()]

    def _release(self, event: p.ReleaseOutputs) -> list[Instruction]:
        if event.task_id:
            stage_id, partition = parse_task_id(event.task_id)
            return [ReleaseOutput((event.run_id, stage_id, partition, event.attempt))]
        # The run ended: anything of it still running here must stop before its outputs go.
        out: list[Instruction] = [
            CancelTask(key, "the run ended") for key in sorted(self.running) if key[0] == event.run_id
        ]
        return [*out, ReleaseRun(event.run_id, "run released")]
