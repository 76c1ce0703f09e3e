"""The worker state machine is pure: these tests feed it messages and assert whole instruction lists."""

from __future__ import annotations

from osiris_flight import protocol as p
from osiris_flight.cluster.worker_state import (
    CancelTask,
    Joined,
    Phase,
    Refused,
    Register,
    ReleaseOutput,
    ReleaseRun,
    SendReport,
    StartTask,
    Stop,
    TaskEnded,
    WorkerState,
)


def assign(run: str = "r1", task: str = "s0.p0", attempt: int = 1) -> p.AssignTask:
    stage, _, part = task.partition(".p")
    return p.AssignTask(run, task, stage, int(part), 1, attempt, [], {}, "sink", "/tmp/out")


def joined() -> WorkerState:
    state = WorkerState()
    state.handle(p.Welcome("w1", 1.0, ["tests.chaos"]))
    return state


def test_welcome_joins_with_the_coordinators_plugins_and_interval():
    state = WorkerState()
    assert state.handle(p.Welcome("w1", 0.5, ["a", "b"], b"k" * 32)) == [Joined(("a", "b"), 0.5, b"k" * 32)]
    assert "kkkk" not in repr(Joined(("a",), 0.5, b"k" * 32))
    assert state.phase is Phase.JOINED


def test_reject_before_joining_stops_with_exit_3():
    state = WorkerState()
    assert state.handle(p.Reject("protocol version 9")) == [
        Stop("the coordinator rejected this worker: protocol version 9", exit_code=3)
    ]
    assert state.handle(p.Welcome("w1", 1.0)) == []  # stopped: nothing more happens


def test_assignment_starts_once_and_not_before_joining():
    a = assign()
    assert WorkerState().handle(a) == []
    state = joined()
    assert state.handle(a) == [StartTask(a)]
    assert state.handle(a) == []  # a duplicate of a running attempt
    assert state.handle(assign(attempt=2)) == [StartTask(assign(attempt=2))]


def test_task_end_sends_its_report_once():
    state = joined()
    state.handle(assign())
    assert state.handle(TaskEnded(("r1", "s0.p0", 1), b"done")) == [SendReport(b"done")]
    assert state.running == set()


def test_cancel_only_a_running_attempt():
    state = joined()
    state.handle(assign())
    assert state.handle(p.CancelTask("r1", "s0.p0", 2)) == []
    assert state.handle(p.CancelTask("r1", "s0.p0", 1, "run failed")) == [
        CancelTask(("r1", "s0.p0", 1), "run failed")
    ]


def test_release_one_output():
    state = joined()
    assert state.handle(p.ReleaseOutputs("r1", "s3.p2", 4)) == [ReleaseOutput(("r1", "s3", 2, 4))]


def test_releasing_a_run_cancels_its_running_tasks_first():
    state = joined()
    state.handle(assign("r1", "s0.p0"))
    state.handle(assign("r1", "s1.p0"))
    state.handle(assign("r2", "s0.p0"))
    assert state.handle(p.ReleaseOutputs("r1")) == [
        CancelTask(("r1", "s0.p0", 1), "the run ended"),
        CancelTask(("r1", "s1.p0", 1), "the run ended"),
        ReleaseRun("r1", "run released"),
    ]
    # The cancelled tasks still report (the coordinator may be waiting for them to stop).
    assert state.handle(TaskEnded(("r1", "s0.p0", 1), b"cancelled")) == [SendReport(b"cancelled")]


def test_reject_after_joining_abandons_work_and_registers_again():
    state = joined()
    state.handle(assign("r1", "s0.p0"))
    state.handle(assign("r2", "s1.p0"))
    assert state.handle(p.Reject("unknown worker 'w1': register again", rejoin=True)) == [
        CancelTask(("r1", "s0.p0", 1), "the coordinator declared this worker lost"),
        CancelTask(("r2", "s1.p0", 1), "the coordinator declared this worker lost"),
        ReleaseRun("r1", "worker rejoined"),
        ReleaseRun("r2", "worker rejoined"),
        Register(),
    ]
    assert state.phase is Phase.REJOINING
    # Answers to reports sent meanwhile change nothing; neither do assignments to the old self.
    assert state.handle(p.Reject("unknown worker", rejoin=True)) == []
    assert state.handle(assign("r3")) == []
    # The abandoned tasks' reports are dropped: the coordinator disowned those attempts.
    assert state.handle(TaskEnded(("r1", "s0.p0", 1), b"late")) == []
    assert state.handle(p.Welcome("w1", 1.0)) == [Joined((), 1.0)]
    assert state.handle(assign("r3")) == [StartTask(assign("r3"))]
    # An abandoned attempt is never started again here, even if it arrives once more.
    assert state.handle(assign("r2", "s1.p0")) == []


def test_a_refused_report_is_logged_and_changes_nothing():
    state = joined()
    state.handle(assign("r1", "s0.p0"))
    assert state.handle(p.Reject("task_telemetry: field fields has a int key")) == [
        Refused("task_telemetry: field fields has a int key")
    ]
    assert state.phase is Phase.JOINED and state.running == {("r1", "s0.p0", 1)}
    assert state.handle(TaskEnded(("r1", "s0.p0", 1), b"done")) == [SendReport(b"done")]


def test_shutdown_cancels_everything_and_stops():
    state = joined()
    state.handle(assign("r1", "s0.p0"))
    assert state.handle(p.Shutdown("coordinator stopping")) == [
        CancelTask(("r1", "s0.p0", 1), "worker stopping"),
        Stop("shutdown requested: coordinator stopping"),
    ]
    assert state.handle(assign("r1", "s1.p0")) == []


def test_messages_a_worker_does_not_act_on_are_ignored():
    state = joined()
    assert state.handle(p.ClusterStatusRequest()) == []
    assert state.handle(p.Heartbeat("w2")) == []
