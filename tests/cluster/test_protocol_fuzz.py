"""Hypothesis throws random and mutated messages at live daemons (issue 8, "a typed, bounded
protocol"): valid messages with a field, a nested value, the op or the version replaced by a wrong
type or a huge value, fields dropped or added, truncated msgpack and random bytes.

* A live coordinator daemon with two live workers, while a pipeline runs: it keeps serving and the
  run succeeds with every row.
* A live worker process, joined to a ROUTER socket this test owns (acting as its coordinator): it
  keeps heartbeating, then runs a valid task of a small CSV pipeline; its Flight server, fed random
  tickets, keeps serving that task's output.

The examples are derandomized and bounded, so CI judges the same ones every time.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import pyarrow as pa
import pyarrow.flight as flight
import pytest
import zmq
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from osiris_flight import protocol as p
from osiris_flight.cluster.client import Client
from osiris_flight.components.registry import build_registry
from osiris_flight.data import fetch_token
from osiris_flight.oml.compile import compile_pipeline
from osiris_flight.oml.plan import plan_manifest
from tests.cluster.conftest import (
    BIN,
    cli_env,
    events,
    latest_run_dir,
    read_csv,
    same_rows,
    start_osiris,
    wait_until,
    write_events_csv,
)
from tests.cluster.test_daemons import ENGINE, PIPELINE, Daemons

pytestmark = pytest.mark.cluster

FUZZ = settings(
    max_examples=200,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Text without "/" or ".": a fuzzed run_logs is then a directory under the coordinator's working
# directory (the test's tmp_path), never an absolute path or a parent.
TEXT = st.text(st.characters(blacklist_characters="/.\x00", blacklist_categories=("Cs",)), max_size=12)
# Values of every msgpack type: a few fixed ones (so a wrong type is drawn often), then random.
WRONG = [None, True, -1, 2**64 - 1, 1.5, "two", b"\x00", [1], {"a": {"b": 1}}]
JUNK = st.one_of(
    st.sampled_from(WRONG),
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.sampled_from([-1, 0, 2**31, 2**63 - 1, 2**63, 2**64 - 1]),
    st.floats(),
    TEXT,
    st.binary(max_size=12),
    st.lists(st.integers(min_value=-5, max_value=5), max_size=3),
    st.dictionaries(TEXT, st.integers(min_value=-5, max_value=5), max_size=3),
)


@st.composite
def mutated(draw: st.DrawFn, value: Any) -> Any:
    """``value`` with one spot in it (walked into at random) replaced, dropped or added to."""
    if isinstance(value, dict) and value:
        key = draw(st.sampled_from(sorted(value, key=str)))
        copy = dict(value)
        action = draw(st.integers(0, 3))
        if action == 0:
            copy[key] = draw(mutated(value[key]))
        elif action == 1:
            copy[key] = draw(JUNK)
        elif action == 2:
            del copy[key]
        else:
            copy[draw(TEXT)] = draw(JUNK)
        return copy
    if isinstance(value, list) and value:
        index = draw(st.integers(0, len(value) - 1))
        copy = list(value)
        copy[index] = draw(st.one_of(mutated(value[index]), JUNK))
        return copy
    return draw(JUNK)


@st.composite
def field_swapped(draw: st.DrawFn, body: dict[str, Any]) -> dict[str, Any]:
    """One field of a message (not its op or version) given a value of another type."""
    names = [name for name in body if name not in ("v", "op")]
    if not names:
        return body | {draw(TEXT): draw(JUNK)}
    return body | {draw(st.sampled_from(names)): draw(JUNK)}


def _obeyed(frame: bytes) -> bool:
    """A Shutdown, or a message of another protocol version: a worker obeys the first and leaves a
    coordinator speaking another version (exit 3, so its supervisor restarts it with the new one)."""
    try:
        body = msgpack.unpackb(frame, raw=False, strict_map_key=False)
    except Exception:
        return False
    version = body.get("v") if isinstance(body, dict) else None
    return p.peek_op(frame) == "shutdown" or (type(version) is int and version != p.PROTOCOL_VERSION)


def frames(samples: list[p.Message]) -> st.SearchStrategy[bytes]:
    """Valid, mutated and truncated encodings of ``samples``, and random bytes; never one a worker
    obeys by stopping (``_obeyed``)."""
    bodies = st.sampled_from([m.to_wire() for m in samples])
    valid = bodies.map(_pack)
    truncated = st.tuples(valid, st.integers(min_value=0)).map(lambda t: t[0][: t[1] % len(t[0])])
    swapped = bodies.flatmap(field_swapped).map(_pack)
    mutations = st.one_of(
        bodies.flatmap(mutated).map(_pack), bodies.flatmap(mutated).flatmap(mutated).map(_pack)
    )
    return st.one_of(swapped, swapped, mutations, truncated, st.binary(max_size=64), valid).filter(
        lambda frame: not _obeyed(frame)
    )


def _pack(body: Any) -> bytes:
    return msgpack.packb(body, use_bin_type=True)


STEP = {"id": "a", "component": "filesystem.csv_extractor", "mode": "read", "config": {"path": "missing.csv"}}
MANIFEST = {"manifest_version": 2, "pipeline": {"name": "fz", "oml_version": "0.2.0"}, "steps": [STEP]}
PLAN = {
    "plan_version": 1,
    "stages": [
        {"id": "s0", "steps": ["a"], "partitions": 1, "inputs": [], "consumers": [], "output": "sink"}
    ],
}
TICKET = p.encode_ticket(p.FetchOutput("fz", "s0", 0, 1))
ASSIGN = p.AssignTask(
    "fz",
    "s0.p0",
    "s0",
    0,
    1,
    1,
    [STEP | {"inputs": [], "fingerprint": "f"}],
    {"a": [{"flight_uri": "grpc://127.0.0.1:1", "ticket": TICKET}]},
    "exchange",
    "artifacts",
    {"@mysql.db": {"host": "h", "port": 3306, "password": "pw", "options": {"ssl": True}}},
    100,
    {"token": "t"},
)


# -- the coordinator --------------------------------------------------------------------------------
def coordinator_samples(run_logs: str) -> list[p.Message]:
    return [
        p.Register("fuzz-w", "h", 1, 1, "grpc://127.0.0.1:1", 1 << 20),
        p.Heartbeat("fuzz-w", ["fz/s0.p0#1"], 1, 2, 3),
        p.TaskStarted("fz", "s0.p0", 1, "fuzz-w", 1.0),
        p.TaskProgress("fz", "s0.p0", 1, {"a": {"rows": 1, "bytes": 2}}, 5),
        p.TaskTelemetry("fz", "s0.p0", 1, "event", "e", 0.0, {"k": [1, {"x": "y"}]}),
        p.TaskCheckpoint("fz", "s0.p0", 1, "tok", {"state": [1, 2]}, 3),
        p.TaskFinished("fz", "s0.p0", 1, "fuzz-w", 1.0, 2.0, {"a": {"rows": 1, "target": "x"}}, 1, 2),
        p.OutputSpilled("fz", "s0.p0", 1, "fuzz-w", 1, 1, 1),
        p.TaskFailed("fz", "s0.p0", 1, "fuzz-w", "boom", "UpstreamLost", True, "a"),
        p.Goodbye("fuzz-w", "bye"),
        p.SubmitRun("fz", run_logs, MANIFEST, PLAN, {"@mysql.db": {"password": "pw"}}, False, 1, 100),
        p.SubmitRun("fz", run_logs, MANIFEST, PLAN, resume=True),
        p.CancelRun("fz", "why"),
        p.ClusterStatusRequest(),
        # What only the coordinator sends: refused.
        ASSIGN,
        p.Welcome("fuzz-w", 1.0, ["x"]),
        p.RunFinished("fz", "success", "", {"a": 1}),
        p.RunEvents("fz", [{"event": "progress", "steps": {}}]),
        p.FetchOutput("fz", "s0", 0, 1),
    ]


def test_fuzzed_messages_never_stop_the_coordinator(tmp_path: Path) -> None:
    table = write_events_csv(tmp_path / "events.csv", 50_000)
    (tmp_path / "pipeline.yaml").write_text(PIPELINE)
    daemons = Daemons(tmp_path)
    ctx = zmq.Context()
    try:
        daemons.start(("alpha", "beta"), ENGINE)
        coordinator = daemons.processes[0]
        proc = start_osiris(["run", "pipeline.yaml", "--cluster", daemons.address, "--json"], tmp_path)
        run_dir = wait_until(lambda: latest_run_dir(tmp_path), 60, "the run directory")
        # Once the run's task is placed, so the fuzzing worker below is never handed it.
        wait_until(lambda: any(e["event"] == "task_start" for e in events(run_dir)), 60, "the task to start")
        worker, client = ctx.socket(zmq.DEALER), ctx.socket(zmq.DEALER)
        for sock, identity in ((worker, "fuzz-w"), (client, "fuzz-c")):
            sock.setsockopt_string(zmq.IDENTITY, identity)
            sock.connect(daemons.address)
        # Registered, so that its task reports are handled, not only refused as a stranger's.
        worker.send(p.encode(p.Register("fuzz-w", "h", 1, 1, "grpc://127.0.0.1:1", 1 << 20)))
        assert worker.poll(10_000) and isinstance(p.decode(worker.recv()), p.Welcome)
        answers: list[bytes] = []

        @FUZZ
        @given(frame=frames(coordinator_samples("fuzz_logs")), as_worker=st.booleans())
        @example(frame=_pack(p.CancelRun("r").to_wire() | {"run_id": {"a": 1}}), as_worker=False)
        @example(
            frame=_pack(coordinator_samples("x")[10].to_wire() | {"manifest": "notadict"}), as_worker=False
        )
        @example(frame=_pack(coordinator_samples("x")[0].to_wire() | {"slots": "two"}), as_worker=True)
        def attack(frame: bytes, as_worker: bool) -> None:
            (worker if as_worker else client).send(frame)
            for sock in (worker, client):
                while sock.poll(0):
                    answers.append(sock.recv())
            assert coordinator.poll() is None, "the coordinator died"

        attack()
        # Still serving: a status answer on a fresh socket, the fuzzer's queued answers all decode,
        # both workers are still there, and the run succeeds with every row.
        with Client(daemons.address) as status_client:
            status = status_client.status(timeout_s=30)
        assert {"alpha", "beta"} <= {w["worker_id"] for w in status.workers}
        assert answers and all(isinstance(p.decode(a), p.Message) for a in answers)
        assert any(isinstance(p.decode(a), p.Reject) for a in answers)
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, out + err
        assert same_rows(read_csv(tmp_path / "out/copy.csv"), table)
        assert coordinator.poll() is None
    finally:
        ctx.destroy(linger=0)
        daemons.stop()


# -- the worker -------------------------------------------------------------------------------------
FAN_OUT = """
oml_version: "0.2.0"
name: fan_out  # extract feeds two writers: it is a stage of its own, kept for Flight
steps:
  - {id: extract, component: filesystem.csv_extractor, mode: read, config: {path: events.csv}}
  - {id: one, component: filesystem.csv_writer, mode: write, depends_on: [extract], config: {path: out/1.csv}}
  - {id: two, component: filesystem.csv_writer, mode: write, depends_on: [extract], config: {path: out/2.csv}}
"""

TOKEN_KEY = fetch_token.new_key()
WORKER_SAMPLES: list[p.Message] = [
    p.Welcome("fw", 0.2, []),
    p.Reject("declared dead", rejoin=True),
    p.Reject("one report refused"),
    ASSIGN,
    p.CancelTask("fz", "s0.p0", 1, "why"),
    p.ReleaseOutputs("fz", "s0.p0", 1),
    p.ReleaseOutputs("fz"),
    # What a worker never receives: ignored.
    p.Heartbeat("fw"),
    p.RunFinished("fz", "failed", "x"),
    p.ClusterStatus([{"worker_id": "fw"}], ["fz"]),
    p.FetchOutput("fz", "s0", 0, 1),
]


class ActingCoordinator:
    """The ROUTER end a real worker joins: answers every Register with Welcome, keeps the rest."""

    def __init__(self, ctx: zmq.Context) -> None:
        self.sock = ctx.socket(zmq.ROUTER)
        self.port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.identity = b""
        self.received: list[p.Message] = []

    def pump(self, timeout_ms: int = 0) -> None:
        while self.sock.poll(timeout_ms):
            timeout_ms = 0
            self.identity, frame = self.sock.recv_multipart()
            message = p.decode(frame)  # what a worker sends must always decode
            if isinstance(message, p.Register):
                self.register = message
                self.send(p.encode(p.Welcome(message.worker_id, 0.2, [], TOKEN_KEY)))
            self.received.append(message)

    def send(self, frame: bytes) -> None:
        self.sock.send_multipart([self.identity, frame])

    def wait_for(self, predicate: Callable[[p.Message], bool], what: str, timeout_s: float = 60) -> p.Message:
        def found() -> p.Message | None:
            self.pump(50)
            return next((m for m in self.received if predicate(m)), None)

        return wait_until(found, timeout_s, what)


def test_fuzzed_messages_never_stop_a_worker(tmp_path: Path) -> None:
    table = write_events_csv(tmp_path / "events.csv", 5_000)
    (tmp_path / "fan_out.yaml").write_text(FAN_OUT)
    registry = build_registry()
    manifest = compile_pipeline(tmp_path / "fan_out.yaml", registry, environ={})
    stage = plan_manifest(manifest, registry).stages[0]
    assert stage.steps == ("extract",) and stage.output == "exchange"
    ctx = zmq.Context()
    coordinator = ActingCoordinator(ctx)
    log = (tmp_path / "worker.log").open("w")
    worker = subprocess.Popen(
        [
            str(BIN / "osiris-worker"),
            "--coordinator",
            f"tcp://127.0.0.1:{coordinator.port}",
            "--worker-id",
            "fw",
        ],
        cwd=tmp_path,
        env=cli_env(),
        stderr=log,
    )
    try:
        coordinator.wait_for(lambda m: isinstance(m, p.Register), "the worker to register", 30)

        @FUZZ
        @given(frame=frames(WORKER_SAMPLES))
        def attack(frame: bytes) -> None:
            coordinator.send(frame)
            coordinator.pump()
            assert worker.poll() is None, "the worker died"

        attack()
        # The fuzzing may have left the worker rejoining (a Reject) or holding another fetch-token key
        # (a mutated Welcome, which only its coordinator can send): welcome it as its coordinator.
        coordinator.send(p.encode(p.Welcome("fw", 0.2, [], TOKEN_KEY)))
        coordinator.received.clear()
        coordinator.wait_for(lambda m: isinstance(m, p.Heartbeat), "a heartbeat after the fuzzing")

        # A valid task still runs, and its output is served over Flight.
        steps = [manifest.step(step_id).to_dict() for step_id in stage.steps]
        task = p.AssignTask("ok", "s0.p0", "s0", 0, 1, 1, steps, {}, "exchange", str(tmp_path / "artifacts"))
        coordinator.send(p.encode(task))
        done = coordinator.wait_for(
            lambda m: isinstance(m, p.TaskFinished | p.TaskFailed) and m.run_id == "ok",
            "the valid task to end",
        )
        assert isinstance(done, p.TaskFinished), done
        reader = flight.connect(coordinator.register.flight_uri)

        # A well-formed ticket of an output not there yet is waited for (the store's wait timeout):
        # the call's own deadline ends that wait here.
        brief = flight.FlightCallOptions(timeout=0.5)

        @FUZZ
        @given(ticket=st.one_of(st.binary(max_size=64), frames([p.FetchOutput("ok", "s0", 0, 1)])))
        def fetch(ticket: bytes) -> None:
            with contextlib.suppress(flight.FlightError, pa.ArrowException):
                reader.do_get(flight.Ticket(ticket), options=brief).read_all()
            assert worker.poll() is None, "the worker died"

        fetch()
        ticket = fetch_token.mint(TOKEN_KEY, p.FetchOutput("ok", "s0", 0, 1), "reader", ttl_s=600)
        served = reader.do_get(flight.Ticket(p.encode_ticket(ticket))).read_all()
        assert same_rows(served, table)
        reader.close()
        assert worker.poll() is None
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=15)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        log.close()
        coordinator.sock.close(linger=0)
        ctx.destroy(linger=0)
    text = (tmp_path / "worker.log").read_text()
    assert "Traceback" not in text, text[-3000:]
    assert "skipped a malformed message from the coordinator" in text
