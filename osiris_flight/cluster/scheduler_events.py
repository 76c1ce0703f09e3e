"""What the scheduler takes in (events) and gives out (instructions): plain frozen dataclasses.

The scheduler's state machine (scheduler.py) and the coordinator that feeds it both speak these;
every event carries ``now`` (seconds, any monotonic origin), so backoff and timeouts are tested
without a clock.
"""

from __future__ import annotations

from dataclasses import dataclass

from osiris_flight.oml.model import Plan


# -- events -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WorkerJoined:
    worker_id: str
    slots: int
    now: float


@dataclass(frozen=True)
class WorkerLost:
    worker_id: str
    reason: str
    now: float


@dataclass(frozen=True)
class RunSubmitted:
    run_id: str
    plan: Plan
    now: float
    max_attempts: int = 3
    committed: frozenset[str] = frozenset()
    # Attempts are numbered from here: a resumed run starts past every attempt of its earlier
    # incarnations, which a worker may still be winding down (see coordinator.RESUME_ATTEMPT_STRIDE).
    first_attempt: int = 1


@dataclass(frozen=True)
class TaskSucceeded:
    run_id: str
    task_id: str
    attempt: int
    worker_id: str
    now: float


@dataclass(frozen=True)
class TaskFailed:
    run_id: str
    task_id: str
    attempt: int
    worker_id: str
    error: str
    transient: bool
    now: float
    # The task lost an input it was reading (UpstreamLost): its producer's worker may be dying, which
    # only the heartbeat limit will tell; not the task's own failure.
    upstream_lost: bool = False


@dataclass(frozen=True)
class RunCancelled:
    """Stop the run. ``drain``: wait (bounded) for its running attempts to stop before RunFailed;
    without it (the coordinator itself is stopping) RunFailed comes at once."""

    run_id: str
    reason: str
    now: float
    drain: bool = True


@dataclass(frozen=True)
class TaskStarted:
    """The worker began the attempt it was assigned (its acknowledgement of the assignment)."""

    run_id: str
    task_id: str
    attempt: int
    now: float


@dataclass(frozen=True)
class Tick:
    now: float


Event = (
    WorkerJoined | WorkerLost | RunSubmitted | TaskStarted | TaskSucceeded | TaskFailed | RunCancelled | Tick
)


# -- instructions -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunStarted:
    """The run was accepted; ``skipped`` are its tasks already done (resume) or not needed. Always
    the first instruction of a RunSubmitted."""

    run_id: str
    skipped: tuple[str, ...]


@dataclass(frozen=True)
class InputLocation:
    """One partition of an input stage: which worker serves it and which attempt to fetch."""

    stage_id: str
    partition: int
    worker_id: str
    attempt: int


@dataclass(frozen=True)
class Assign:
    run_id: str
    task_id: str
    attempt: int
    worker_id: str
    inputs: tuple[InputLocation, ...]


@dataclass(frozen=True)
class Cancel:
    run_id: str
    task_id: str
    attempt: int
    worker_id: str
    reason: str


@dataclass(frozen=True)
class Release:
    """The output of this attempt is no longer needed: the worker may drop it."""

    run_id: str
    task_id: str
    attempt: int
    worker_id: str


@dataclass(frozen=True)
class Retry:
    """Informational: a task attempt failed or was disturbed and will run again after ``delay_s``."""

    run_id: str
    task_id: str
    attempt: int
    reason: str
    delay_s: float
    counted: bool


@dataclass(frozen=True)
class Recompute:
    """Informational: a finished task's output was lost and will be computed again."""

    run_id: str
    task_id: str
    reason: str


@dataclass(frozen=True)
class RunSucceeded:
    run_id: str


@dataclass(frozen=True)
class RunFailed:
    """The run ended failed. ``unstopped``: attempts (task ids) cancelled that never reported back
    within the drain timeout (their workers are alive but silent about them)."""

    run_id: str
    error: str
    task_id: str | None = None
    unstopped: tuple[str, ...] = ()


Instruction = RunStarted | Assign | Cancel | Release | Retry | Recompute | RunSucceeded | RunFailed
