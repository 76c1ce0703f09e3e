"""The scheduler is pure: these tests feed it events and assert the whole instruction list each one
returns, order included, so that an extra instruction (a spurious Cancel, a duplicate Assign, an
early Release) fails the test as surely as a missing one."""

from __future__ import annotations

from osiris_flight.cluster.scheduler import (
    Assign,
    Cancel,
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
    Scheduler,
    Status,
    TaskFailed,
    TaskStarted,
    TaskSucceeded,
    Tick,
    WorkerJoined,
    WorkerLost,
)
from osiris_flight.oml.model import Plan, Stage

# extract -> (agg_users, agg_products) -> join+write: the milestone's parallel example.
DIAMOND = Plan(
    stages=(
        Stage("s0", ("extract",), consumers=("s1", "s2")),
        Stage("s1", ("agg_users",), inputs=("s0",), consumers=("s3",)),
        Stage("s2", ("agg_products",), inputs=("s0",), consumers=("s3",)),
        Stage("s3", ("join", "write"), inputs=("s1", "s2"), output="sink"),
    )
)
# s0 feeds s1, which writes.
PAIR = Plan((Stage("s0", ("a",), consumers=("s1",)), Stage("s1", ("w",), inputs=("s0",), output="sink")))
SINGLE = Plan((Stage("s0", ("a",), output="sink"),))


def cluster(*workers: tuple[str, int]) -> Scheduler:
    s = Scheduler()
    for wid, slots in workers:
        assert s.handle(WorkerJoined(wid, slots, now=0.0)) == []
    return s


def finish(s: Scheduler, task_id: str, attempt: int, worker_id: str, now: float = 1.0) -> list[Instruction]:
    return s.handle(TaskSucceeded("r", task_id, attempt, worker_id, now=now))


def test_source_first_then_branches_start_together_while_producer_runs():
    s = cluster(("w1", 2), ("w2", 2))
    # Consumers may stream an output that is still being produced: both branches start with s0,
    # and the join starts as soon as both of its inputs are running.
    assert s.handle(RunSubmitted("r", DIAMOND, now=0.0)) == [
        RunStarted("r", ()),
        Assign("r", "s0.p0", 1, "w2", ()),
        Assign("r", "s1.p0", 1, "w1", (InputLocation("s0", 0, "w2", 1),)),
        Assign("r", "s2.p0", 1, "w2", (InputLocation("s0", 0, "w2", 1),)),
        Assign("r", "s3.p0", 1, "w1", (InputLocation("s1", 0, "w1", 1), InputLocation("s2", 0, "w2", 1))),
    ]


def test_a_consumer_waits_for_a_free_slot_and_for_its_inputs_to_start():
    s = cluster(("w1", 1))
    assert s.handle(RunSubmitted("r", DIAMOND, now=0.0)) == [
        RunStarted("r", ()),
        Assign("r", "s0.p0", 1, "w1", ()),
    ]
    assert finish(s, "s0.p0", 1, "w1") == [Assign("r", "s1.p0", 1, "w1", (InputLocation("s0", 0, "w1", 1),))]
    # s3 is not ready while s2 has not started; s2 takes the slot. s0 is kept: s2 still reads it.
    assert finish(s, "s1.p0", 1, "w1") == [Assign("r", "s2.p0", 1, "w1", (InputLocation("s0", 0, "w1", 1),))]


def test_outputs_released_when_all_consumers_done_and_run_succeeds():
    s = cluster(("w1", 4))
    assert s.handle(RunSubmitted("r", DIAMOND, now=0.0)) == [
        RunStarted("r", ()),
        Assign("r", "s0.p0", 1, "w1", ()),
        Assign("r", "s1.p0", 1, "w1", (InputLocation("s0", 0, "w1", 1),)),
        Assign("r", "s2.p0", 1, "w1", (InputLocation("s0", 0, "w1", 1),)),
        Assign("r", "s3.p0", 1, "w1", (InputLocation("s1", 0, "w1", 1), InputLocation("s2", 0, "w1", 1))),
    ]
    assert finish(s, "s0.p0", 1, "w1") == []
    assert finish(s, "s1.p0", 1, "w1") == []  # s0 still read by s2; s1 still read by s3
    assert finish(s, "s2.p0", 1, "w1") == [Release("r", "s0.p0", 1, "w1")]
    assert finish(s, "s3.p0", 1, "w1") == [
        Release("r", "s1.p0", 1, "w1"),
        Release("r", "s2.p0", 1, "w1"),
        RunSucceeded("r"),
    ]


def test_transient_failure_retries_with_backoff_on_another_worker():
    s = cluster(("w1", 1), ("w2", 1))
    assert s.handle(RunSubmitted("r", SINGLE, now=0.0)) == [
        RunStarted("r", ()),
        Assign("r", "s0.p0", 1, "w2", ()),
    ]
    assert s.handle(TaskFailed("r", "s0.p0", 1, "w2", "lost connection", True, now=10.0)) == [
        Retry("r", "s0.p0", 1, "lost connection", 0.25, counted=True)  # backing off: nothing assigned
    ]
    assert s.handle(Tick(now=10.125)) == []
    assert s.handle(Tick(now=10.25)) == [Assign("r", "s0.p0", 2, "w1", ())]


def test_attempts_are_bounded():
    s = cluster(("w1", 1))
    assert s.handle(RunSubmitted("r", SINGLE, now=0.0, max_attempts=2)) == [
        RunStarted("r", ()),
        Assign("r", "s0.p0", 1, "w1", ()),
    ]
    assert s.handle(TaskFailed("r", "s0.p0", 1, "w1", "boom", True, now=1.0)) == [
        Retry("r", "s0.p0", 1, "boom", 0.25, counted=True)
    ]
    assert s.handle(Tick(now=100.0)) == [Assign("r", "s0.p0", 2, "w1", ())]
    assert s.handle(TaskFailed("r", "s0.p0", 2, "w1", "boom again", True, now=101.0)) == [
        RunFailed("r", "task s0.p0 failed 2 times; last error: boom again", "s0.p0")
    ]


def test_terminal_failure_cancels_the_rest_and_fails_the_run_once_they_stopped():
    s = cluster(("w1", 4))
    assert s.handle(RunSubmitted("r", DIAMOND, now=0.0)) == [
        RunStarted("r", ()),
        Assign("r", "s0.p0", 1, "w1", ()),
        Assign("r", "s1.p0", 1, "w1", (InputLocation("s0", 0, "w1", 1),)),
        Assign("r", "s2.p0", 1, "w1", (InputLocation("s0", 0, "w1", 1),)),
        Assign("r", "s3.p0", 1, "w1", (InputLocation("s1", 0, "w1", 1), InputLocation("s2", 0, "w1", 1))),
    ]
    assert s.handle(TaskFailed("r", "s1.p0", 1, "w1", "unknown column 'x'", False, now=1.0)) == [
        Release("r", "s1.p0", 1, "w1"),  # the failed attempt's partial output
        Cancel("r", "s0.p0", 1, "w1", "run failed"),
        Cancel("r", "s2.p0", 1, "w1", "run failed"),
        Cancel("r", "s3.p0", 1, "w1", "run failed"),
    ]
    assert s.holder("r", "s2.p0", 1) == "w1"  # still stopping: its report is still accepted
    assert s.handle(Tick(now=2.0)) == []  # draining: nothing new starts, nothing ends yet
    assert s.handle(TaskFailed("r", "s0.p0", 1, "w1", "cancelled", False, now=2.0)) == []
    assert s.handle(TaskSucceeded("r", "s3.p0", 1, "w1", now=2.5)) == []  # finished before the cancel
    assert s.handle(TaskFailed("r", "s2.p0", 1, "w1", "cancelled", False, now=3.0)) == [
        RunFailed("r", "unknown column 'x'", "s1.p0")
    ]
    assert s.active_runs() == [] and s.workers["w1"].free == 4
    assert s.handle(TaskFailed("r", "s2.p0", 1, "w1", "late", False, now=4.0)) == []


def test_a_drain_ends_when_the_worker_of_a_stopping_task_is_lost():
    s = cluster(("w1", 1), ("w2", 1))
    plan = Plan((Stage("s0", ("a",), output="sink"), Stage("s1", ("b",), output="sink")))
    assert s.handle(RunSubmitted("r", plan, now=0.0)) == [
        RunStarted("r", ()),
        Assign("r", "s0.p0", 1, "w2", ()),
        Assign("r", "s1.p0", 1, "w1", ()),
    ]
    assert s.handle(TaskFailed("r", "s0.p0", 1, "w2", "boom", False, now=1.0)) == [
        Cancel("r", "s1.p0", 1, "w1", "run failed")
    ]
    assert s.handle(WorkerLost("w1", "missed 3 heartbeats", now=2.0)) == [RunFailed("r", "boom", "s0.p0")]


def test_a_drain_is_bounded_and_names_the_attempts_that_never_answered():
    s = Scheduler(drain_timeout_s=30.0)
    assert s.handle(WorkerJoined("w1", 2, now=0.0)) == []
    plan = Plan((Stage("s0", ("a",), output="sink"), Stage("s1", ("b",), output="sink")))
    assert s.handle(RunSubmitted("r", plan, now=0.0)) == [
        RunStarted("r", ()),
        Assign("r", "s0.p0", 1, "w1", ()),
        Assign("r", "s1.p0", 1, "w1", ()),
    ]
    assert s.handle(RunCancelled("r", "Ctrl-C", now=1.0)) == [
        Cancel("r", "s0.p0", 1, "w1", "run failed"),
        Cancel("r", "s1.p0", 1, "w1", "run failed"),
    ]
    assert s.handle(TaskFailed("r", "s1.p0", 1, "w1", "cancelled", False, now=2.0)) == []
    assert s.handle(Tick(now=30.9)) == []
    assert s.handle(Tick(now=31.0)) == [RunFailed("r", "cancelled: Ctrl-C", None, ("s0.p0",))]
    assert s.active_runs() == [] and s.workers["w1"].free == 2


def test_a_cancel_without_drain_fails_the_run_at_once():
    s = cluster(("w1", 1))
    assert s.handle(RunSubmitted("r", SINGLE, now=0.0)) == [
        RunStarted("r", ()),
        Assign("r", "s0.p0", 1, "w1", ()),
    ]
    assert s.handle(RunCancelled("r", "coordinator stopping", now=1.0, drain=False)) == [
        Cancel("r", "s0.p0", 1, "w1", "run failed"),
        RunFailed("r", "cancelled: coordinator stopping", None, ("s0.p0",)),
    ]


def test_holder_names_only_the_worker_running_that_attempt():
    s = cluster(("w1", 1), ("w2", 1))
    assert s.handle(RunSubmitted("r", SINGLE, now=0.0)) == [
        RunStarted("r", ()),
        Assign("r", "s0.p0", 1, "w2", ()),
    ]
    assert s.holder("r", "s0.p0", 1) == "w2"
    assert s.holder("r", "s0.p0", 2) is None and s.holder("r", "s9.p0", 1) is None
    assert s.holder("other", "s0.p0", 1) is None
    assert s.handle(TaskSucceeded("r", "s0.p0", 1, "w2", now=1.0)) == [RunSucceeded("r")]
    assert s.holder("r", "s0.p0", 1) is None  # the run ended and left the scheduler


def test_stale_reports_are_ignored():
    s = cluster(("w1", 1), ("w2", 1))
    assert s.handle(RunSubmitted("r", SINGLE, now=0.0)) == [
        RunStarted("r", ()),
        Assign("r", "s0.p0", 1, "w2", ()),
    ]
    assert s.handle(WorkerLost("w2", "killed", now=1.0)) == [
        Retry("r", "s0.p0", 1, "worker w2 lost (killed)", 0.0, counted=False),
        Assign("r", "s0.p0", 2, "w1", ()),
    ]
    # The dead attempt's success report arrives late: it must not finish the run.
    assert s.handle(TaskSucceeded("r", "s0.p0", 1, "w2", now=2.0)) == []
    assert finish(s, "s0.p0", 2, "w1", now=3.0) == [RunSucceeded("r")]


def test_a_lost_input_is_retried_uncounted_until_the_dead_producer_is_noticed():
    """A consumer whose producer's worker was killed fails fast (UpstreamLost), seconds before the
    heartbeat limit declares that worker dead: it must wait, not use up its attempts."""
    s = cluster(("w1", 1), ("w2", 1))
    assert s.handle(RunSubmitted("r", PAIR, now=0.0, max_attempts=2)) == [
        RunStarted("r", ()),
        Assign("r", "s0.p0", 1, "w2", ()),
        Assign("r", "s1.p0", 1, "w1", (InputLocation("s0", 0, "w2", 1),)),
    ]
    assert finish(s, "s0.p0", 1, "w2") == []
    # More lost-input reports than max_attempts, each retried after a doubling pause, uncounted.
    # The fault is upstream, so no worker is avoided: w2 wins each tie between free slots.
    worker, now = "w1", 1.0
    for attempt, delay in ((1, 0.25), (2, 0.5), (3, 1.0), (4, 2.0)):
        lost = TaskFailed("r", "s1.p0", attempt, worker, "lost s0", True, now, upstream_lost=True)
        assert s.handle(lost) == [Retry("r", "s1.p0", attempt, "lost s0", delay, counted=False)]
        now += delay
        worker = "w2"
        assert s.handle(Tick(now=now)) == [
            Assign("r", "s1.p0", attempt + 1, worker, (InputLocation("s0", 0, "w2", 1),))
        ]
    # The heartbeat limit declares w2 dead: s0 is recomputed, and its reader there (gone with w2)
    # waits for it.
    assert s.handle(WorkerLost("w2", "missed 3 heartbeats", now=now)) == [
        Recompute("r", "s0.p0", "worker w2 lost (missed 3 heartbeats)"),
        Retry("r", "s1.p0", 5, "input s0.p0 was lost", 0.0, counted=False),
        Assign("r", "s0.p0", 2, "w1", ()),
    ]


def test_an_output_is_released_when_its_consumers_finished_before_it_did():
    s = cluster(("w1", 2))
    assert s.handle(RunSubmitted("r", PAIR, now=0.0)) == [
        RunStarted("r", ()),
        Assign("r", "s0.p0", 1, "w1", ()),
        Assign("r", "s1.p0", 1, "w1", (InputLocation("s0", 0, "w1", 1),)),
    ]
    assert finish(s, "s1.p0", 1, "w1") == []  # read what it needed (a LIMIT) and finished first
    assert finish(s, "s0.p0", 1, "w1") == [Release("r", "s0.p0", 1, "w1"), RunSucceeded("r")]


def test_worker_loss_reruns_running_tasks_and_recomputes_lost_outputs():
    s = cluster(("w1", 1), ("w2", 1))
    assert s.handle(RunSubmitted("r", DIAMOND, now=0.0)) == [
        RunStarted("r", ()),
        Assign("r", "s0.p0", 1, "w2", ()),
        Assign("r", "s1.p0", 1, "w1", (InputLocation("s0", 0, "w2", 1),)),
    ]
    # s0 finishes on w2; the branches run on both workers, reading it.
    assert finish(s, "s0.p0", 1, "w2") == [Assign("r", "s2.p0", 1, "w2", (InputLocation("s0", 0, "w2", 1),))]
    # w2, holding s0's output, dies: s0 is recomputed, its readers rerun uncounted. The reader on the
    # live w1 is cancelled and its partial output released; the one on w2 stopped with it.
    assert s.handle(WorkerLost("w2", "SIGKILL", now=2.0)) == [
        Recompute("r", "s0.p0", "worker w2 lost (SIGKILL)"),
        Cancel("r", "s1.p0", 1, "w1", "input s0.p0 was lost"),
        Release("r", "s1.p0", 1, "w1"),
        Retry("r", "s1.p0", 1, "input s0.p0 was lost", 0.0, counted=False),
        Retry("r", "s2.p0", 1, "input s0.p0 was lost", 0.0, counted=False),
        Assign("r", "s0.p0", 2, "w1", ()),
    ]


def test_lineage_recomputes_through_released_outputs():
    chain = Plan(
        (
            Stage("s0", ("a",), consumers=("s1",)),
            Stage("s1", ("b",), inputs=("s0",), consumers=("s2", "s3")),
            Stage("s2", ("c",), inputs=("s1",), output="sink"),
            Stage("s3", ("d",), inputs=("s1",), output="sink"),
        )
    )
    s = cluster(("w1", 1), ("w2", 1))
    assert s.handle(RunSubmitted("r", chain, now=0.0)) == [
        RunStarted("r", ()),
        Assign("r", "s0.p0", 1, "w2", ()),
        Assign("r", "s1.p0", 1, "w1", (InputLocation("s0", 0, "w2", 1),)),
    ]
    assert finish(s, "s0.p0", 1, "w2") == [Assign("r", "s2.p0", 1, "w2", (InputLocation("s1", 0, "w1", 1),))]
    assert finish(s, "s1.p0", 1, "w1") == [
        Release("r", "s0.p0", 1, "w2"),  # its only consumer is done
        Assign("r", "s3.p0", 1, "w1", (InputLocation("s1", 0, "w1", 1),)),
    ]
    assert finish(s, "s2.p0", 1, "w2") == []  # s1 is still read by s3
    # s1's output is gone with w1 and still needed by s3; s0 was released, so it is recomputed first.
    assert s.handle(WorkerLost("w1", "SIGKILL", now=3.0)) == [
        Recompute("r", "s1.p0", "worker w1 lost (SIGKILL)"),
        Retry("r", "s3.p0", 1, "input s1.p0 was lost", 0.0, counted=False),
        Recompute("r", "s0.p0", "s1.p0 needs s0.p0 again"),
        Assign("r", "s0.p0", 2, "w2", ()),
    ]


def test_resume_skips_committed_sinks_and_what_only_fed_them():
    s = cluster(("w1", 4))
    plan = Plan(
        (
            Stage("s0", ("src",), consumers=("s1", "s2")),
            Stage("s1", ("w1",), inputs=("s0",), output="sink"),
            Stage("s2", ("w2",), inputs=("s0",), output="sink"),
            Stage("s3", ("other", "w3"), output="sink"),
        )
    )
    out = s.handle(
        RunSubmitted("r", plan, now=0.0, committed=frozenset({"s1.p0", "s3.p0"}), first_attempt=1001)
    )
    assert out == [
        RunStarted("r", ("s1.p0", "s3.p0")),
        Assign("r", "s0.p0", 1001, "w1", ()),
        Assign("r", "s2.p0", 1001, "w1", (InputLocation("s0", 0, "w1", 1001),)),  # this incarnation's
    ]
    out = s.handle(RunSubmitted("r2", plan, now=0.0, committed=frozenset({"s1.p0", "s2.p0", "s3.p0"})))
    # s0 only fed committed sinks: skipped; the run is done at once.
    assert out == [RunStarted("r2", ("s0.p0", "s1.p0", "s2.p0", "s3.p0")), RunSucceeded("r2")]


def test_slots_bound_concurrency_and_free_on_completion():
    wide = Plan(tuple(Stage(f"s{i}", (f"x{i}",), output="sink") for i in range(5)))
    s = cluster(("w1", 2))
    assert s.handle(RunSubmitted("r", wide, now=0.0)) == [
        RunStarted("r", ()),
        Assign("r", "s0.p0", 1, "w1", ()),
        Assign("r", "s1.p0", 1, "w1", ()),
    ]
    assert finish(s, "s0.p0", 1, "w1") == [Assign("r", "s2.p0", 1, "w1", ())]


def test_cancel_run():
    s = cluster(("w1", 2))
    assert s.handle(RunSubmitted("r", DIAMOND, now=0.0)) == [
        RunStarted("r", ()),
        Assign("r", "s0.p0", 1, "w1", ()),
        Assign("r", "s1.p0", 1, "w1", (InputLocation("s0", 0, "w1", 1),)),
    ]
    out = s.handle(RunCancelled("r", "Ctrl-C", now=1.0))
    assert out == [Cancel("r", "s0.p0", 1, "w1", "run failed"), Cancel("r", "s1.p0", 1, "w1", "run failed")]
    assert s.handle(RunCancelled("r", "again", now=1.5)) == []
    assert s.handle(TaskFailed("r", "s0.p0", 1, "w1", "cancelled", False, now=2.0)) == []
    assert s.handle(TaskFailed("r", "s1.p0", 1, "w1", "cancelled", False, now=2.0)) == [
        RunFailed("r", "cancelled: Ctrl-C")
    ]


def test_partitioned_stage_gathers_all_partitions():
    plan = Plan(
        (
            Stage("s0", ("src",), partitions=3, consumers=("s1",)),
            Stage("s1", ("agg", "write"), inputs=("s0",), output="sink"),
        )
    )
    s = cluster(("w1", 8))
    assert s.handle(RunSubmitted("r", plan, now=0.0)) == [
        RunStarted("r", ()),
        Assign("r", "s0.p0", 1, "w1", ()),
        Assign("r", "s0.p1", 1, "w1", ()),
        Assign("r", "s0.p2", 1, "w1", ()),
        Assign(
            "r",
            "s1.p0",
            1,
            "w1",
            tuple(InputLocation("s0", partition, "w1", 1) for partition in range(3)),
        ),
    ]


# -- property: any interleaving of events keeps the bookkeeping exact and ends the run --------------
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@st.composite
def plans(draw: st.DrawFn) -> Plan:
    n = draw(st.integers(1, 7))
    stages = []
    for i in range(n):
        inputs = (
            tuple(sorted(draw(st.sets(st.sampled_from([f"s{j}" for j in range(i)]), max_size=2))))
            if i
            else ()
        )
        stages.append([f"s{i}", inputs, draw(st.integers(1, 3))])
    consumers = {s[0]: [] for s in stages}
    for sid, inputs, _ in stages:
        for src in inputs:
            consumers[src].append(sid)
    return Plan(
        tuple(
            Stage(
                sid,
                (f"step{sid}",),
                partitions=parts,
                inputs=inputs,
                consumers=tuple(consumers[sid]),
                output="exchange" if consumers[sid] else "sink",
            )
            for sid, inputs, parts in stages
        )
    )


def check_bookkeeping(s: Scheduler) -> None:
    for run in s.runs.values():
        if run.finished:
            continue
        pending = sorted((t.order, t.task_id) for t in run.tasks.values() if t.status is Status.PENDING)
        assert run.pending == pending
        assert run.unfinished == sum(
            t.status not in (Status.DONE, Status.SKIPPED) for t in run.tasks.values()
        )
        for t in run.tasks.values():
            assert t.consumers_done == sum(run.tasks[c].status is Status.DONE for c in t.consumers)
    for w in s.workers.values():
        assert len(w.running) <= w.slots


def check_addressed(s: Scheduler, ins: Instruction) -> None:
    """An instruction for a worker goes to one the scheduler knows: a lost worker is sent nothing."""
    if isinstance(ins, (Assign, Cancel, Release)):
        assert ins.worker_id in s.workers, ins


@settings(max_examples=150, deadline=None)
@given(
    plans(),
    st.lists(
        st.tuples(st.sampled_from(["ok", "transient", "lose", "join"]), st.integers(0, 50)), max_size=60
    ),
)
def test_any_event_sequence_keeps_bookkeeping_exact_and_finishes(plan: Plan, script: list) -> None:
    s = cluster(("w0", 2), ("w1", 1))
    running: dict[str, Assign] = {}

    def apply(instructions: list) -> None:
        for ins in instructions:
            check_addressed(s, ins)
            if isinstance(ins, Assign):
                running[ins.task_id] = ins
                assert not s.handle(
                    TaskStarted("r", ins.task_id, ins.attempt, now=now)
                )  # the worker acknowledges
            elif isinstance(ins, Cancel):
                running.pop(ins.task_id, None)

    now, spawned = 0.0, 2
    apply(s.handle(RunSubmitted("r", plan, now=now, max_attempts=1000)))
    for action, pick in script:
        now += 10.0
        check_bookkeeping(s)
        if "r" not in s.runs:
            break
        live = [
            a
            for a in running.values()
            if s.task("r", a.task_id).attempt == a.attempt and s.task("r", a.task_id).status is Status.RUNNING
        ]
        if action == "join":
            apply(s.handle(WorkerJoined(f"w{spawned}", 1 + pick % 2, now=now)))
            spawned += 1
        elif action == "lose" and len(s.workers) > 1:
            victim = sorted(s.workers)[pick % len(s.workers)]
            apply(s.handle(WorkerLost(victim, "test", now=now)))
        elif live:
            a = live[pick % len(live)]
            running.pop(a.task_id)
            if action == "transient":
                apply(s.handle(TaskFailed("r", a.task_id, a.attempt, a.worker_id, "x", True, now=now)))
            else:
                apply(s.handle(TaskSucceeded("r", a.task_id, a.attempt, a.worker_id, now=now)))
        apply(s.handle(Tick(now=now)))
    # Then let everything succeed: the run must finish.
    for _ in range(10_000):
        check_bookkeeping(s)
        if "r" not in s.runs:
            break
        now += 10.0
        live = [
            a
            for a in running.values()
            if s.task("r", a.task_id).attempt == a.attempt and s.task("r", a.task_id).status is Status.RUNNING
        ]
        if not live:
            apply(s.handle(Tick(now=now)))
            continue
        a = live[0]
        running.pop(a.task_id)
        apply(s.handle(TaskSucceeded("r", a.task_id, a.attempt, a.worker_id, now=now)))
    assert "r" not in s.runs  # succeeded (no failure is terminal here) and left the scheduler


def test_an_assignment_never_acknowledged_is_rerun_elsewhere():
    """AssignTask lost on the way (the worker's link was reconnecting): no TaskStarted comes, and
    without a timeout the run would wait forever."""
    s = Scheduler(start_timeout_s=10.0)
    for wid in ("w1", "w2"):
        assert s.handle(WorkerJoined(wid, 1, now=0.0)) == []
    assert s.handle(RunSubmitted("r", SINGLE, now=0.0)) == [
        RunStarted("r", ()),
        Assign("r", "s0.p0", 1, "w2", ()),
    ]
    assert s.handle(Tick(now=9.0)) == []
    reason = "worker w2 never started attempt 1 (the assignment was lost)"
    assert s.handle(Tick(now=10.0)) == [
        Cancel("r", "s0.p0", 1, "w2", reason),
        Retry("r", "s0.p0", 1, reason, 0.0, counted=False),
        Assign("r", "s0.p0", 2, "w1", ()),
    ]
    assert s.handle(TaskStarted("r", "s0.p0", 2, now=10.5)) == []
    assert s.handle(Tick(now=100.0)) == []  # acknowledged: no timeout however long it runs
    assert finish(s, "s0.p0", 2, "w1", now=101.0) == [RunSucceeded("r")]


@settings(max_examples=150, deadline=None)
@given(
    plans(),
    st.lists(
        st.tuples(
            st.sampled_from(["ok", "transient", "terminal", "cancel", "lose", "join", "tick"]),
            st.integers(0, 50),
        ),
        max_size=40,
    ),
)
def test_any_run_ends_exactly_once_and_a_failed_one_frees_every_slot(plan: Plan, script: list) -> None:
    """Terminal failures and cancels among the rest: the run ends with exactly one RunSucceeded or
    RunFailed, only after every attempt it cancelled reported back (or its worker was lost, or the
    drain timed out), every slot is free then, and nothing about the run comes out afterwards."""
    s = Scheduler(drain_timeout_s=25.0, max_disturbances=2)
    for wid, slots in (("w0", 2), ("w1", 1)):
        s.handle(WorkerJoined(wid, slots, now=0.0))
    issued: dict[tuple[str, int], str] = {}  # (task, attempt) -> worker, every attempt ever assigned
    endings: list = []
    now, spawned = 0.0, 2

    def apply(instructions: list) -> None:
        for ins in instructions:
            check_addressed(s, ins)
            if isinstance(ins, Assign):
                assert (ins.task_id, ins.attempt) not in issued, ins  # no attempt is assigned twice
                issued[(ins.task_id, ins.attempt)] = ins.worker_id
            elif isinstance(ins, (RunSucceeded, RunFailed)):
                endings.append(ins)
            if endings and ins is not endings[-1]:
                assert not isinstance(ins, (Assign, Retry, Recompute)), ins  # nothing after the end
            if isinstance(ins, RunFailed):
                assert all(
                    s.holder("r", t, a) is None for (t, a) in issued
                )  # it left the scheduler: no attempt is held any more

    def live() -> list[tuple[str, int, str]]:
        return [(t, a, w) for (t, a), w in issued.items() if s.holder("r", t, a) == w]

    apply(s.handle(RunSubmitted("r", plan, now=now, max_attempts=3)))
    steps = [(action, pick) for action, pick in script] + [("drain", 0)] * 2000
    for action, pick in steps:
        if "r" not in s.runs:
            break
        now += 10.0
        running = live()
        if action == "join":
            apply(s.handle(WorkerJoined(f"w{spawned}", 1 + pick % 2, now=now)))
            spawned += 1
        elif action == "lose" and len(s.workers) > 1:
            apply(s.handle(WorkerLost(sorted(s.workers)[pick % len(s.workers)], "test", now=now)))
        elif action == "cancel":
            apply(s.handle(RunCancelled("r", "test", now=now)))
        elif action in ("ok", "transient", "terminal", "drain") and running:
            t, a, w = running[pick % len(running)]
            if action in ("ok", "drain") and not s.runs["r"].finished:
                apply(s.handle(TaskSucceeded("r", t, a, w, now=now)))
            else:
                apply(s.handle(TaskFailed("r", t, a, w, "x", action == "transient", now=now)))
        apply(s.handle(Tick(now=now)))
    assert "r" not in s.runs and len(endings) == 1
    assert all(not w.running for w in s.workers.values())
    for t, a, w in [(t, a, w) for (t, a), w in issued.items()]:
        assert s.handle(TaskFailed("r", t, a, w, "late", False, now=now + 1)) == []


def test_a_lost_worker_is_sent_nothing():
    """What ran on a lost worker stopped with it: no Cancel (nor Release) is addressed to it, even
    when its task is disturbed as the reader of a lost output, or its run fails on the way."""
    s = cluster(("w1", 2))
    assert s.handle(RunSubmitted("r", PAIR, now=0.0)) == [
        RunStarted("r", ()),
        Assign("r", "s0.p0", 1, "w1", ()),
        Assign("r", "s1.p0", 1, "w1", (InputLocation("s0", 0, "w1", 1),)),
    ]
    assert s.handle(TaskSucceeded("r", "s0.p0", 1, "w1", now=1.0)) == []
    assert s.handle(WorkerLost("w1", "SIGKILL", now=2.0)) == [
        Recompute("r", "s0.p0", "worker w1 lost (SIGKILL)"),
        Retry("r", "s1.p0", 1, "input s0.p0 was lost", 0.0, counted=False),
    ]
    assert s.handle(WorkerJoined("w2", 2, now=3.0)) == [
        Assign("r", "s0.p0", 2, "w2", ()),
        Assign("r", "s1.p0", 2, "w2", (InputLocation("s0", 0, "w2", 2),)),
    ]

    s = Scheduler(max_disturbances=0)
    assert s.handle(WorkerJoined("w1", 2, now=0.0)) == []
    assert s.handle(WorkerJoined("w2", 1, now=0.0)) == []
    wide = Plan(tuple(Stage(f"s{i}", (f"x{i}",), output="sink") for i in range(3)))
    assert s.handle(RunSubmitted("r", wide, now=0.0)) == [
        RunStarted("r", ()),
        Assign("r", "s0.p0", 1, "w1", ()),
        Assign("r", "s1.p0", 1, "w2", ()),
        Assign("r", "s2.p0", 1, "w1", ()),
    ]
    # s0's disturbance fails the run while s0 and s2 still count as running on w1: only w2 hears of it.
    assert s.handle(WorkerLost("w1", "SIGKILL", now=1.0)) == [Cancel("r", "s1.p0", 1, "w2", "run failed")]
    assert s.handle(TaskFailed("r", "s1.p0", 1, "w2", "cancelled", False, now=2.0)) == [
        RunFailed("r", "task s0.p0 was disturbed 1 times; last: worker w1 lost (SIGKILL)", "s0.p0")
    ]
