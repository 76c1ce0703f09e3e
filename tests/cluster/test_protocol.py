"""The protocol module, and a real coordinator daemon refusing what it must refuse."""

from __future__ import annotations

import dataclasses
import socket
import subprocess
import sys
from pathlib import Path

import msgpack
import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from osiris_flight import protocol as p
from osiris_flight.cluster.client import Client
from osiris_flight.cluster.submission import InvalidSubmission, parse_submission
from osiris_flight.errors import ProtocolError
from osiris_flight.wire_schema import schema_of
from tests.cluster.conftest import start_coordinator

BIN = Path(sys.executable).parent


STEP = {"id": "a", "component": "filesystem.csv_extractor", "mode": "read", "config": {"path": "x.csv"}}
MANIFEST = {"manifest_version": 2, "pipeline": {"name": "p", "oml_version": "0.2.0"}, "steps": [STEP]}
PLAN = {
    "plan_version": 1,
    "stages": [
        {"id": "s0", "steps": ["a"], "partitions": 1, "inputs": [], "consumers": [], "output": "sink"}
    ],
}


def test_every_message_round_trips() -> None:
    samples: list[p.Message] = [
        p.Register("w1", "host", 12, 2, "grpc://127.0.0.1:1", 1 << 20),
        p.Heartbeat("w1", ["r/t#1"], 10, 20, 30),
        p.TaskStarted("r", "s0.p0", 1, "w1", 1.5),
        p.TaskProgress("r", "s0.p0", 1, {"a": {"rows": 3}}, 99),
        p.TaskFinished("r", "s0.p0", 1, "w1", 1.0, 2.0, {"a": {"rows": 3}}, 3, 24),
        p.OutputSpilled("r", "s0.p0", 1, "w1", 5, 2, 9),
        p.TaskFailed("r", "s0.p0", 1, "w1", "boom", "TerminalError", False, "a"),
        p.AssignTask(
            "r",
            "s1.p0",
            "s1",
            0,
            1,
            2,
            [STEP],
            {"a": [{"flight_uri": "grpc://h:1", "ticket": b"\x01"}]},
            "exchange",
            "/tmp/x",
        ),
        p.SubmitRun("r", "/tmp/logs", MANIFEST, PLAN, {"@mysql.db": {"password": "x"}}, True, 3, 1024),
        p.RunEvents("r", [{"event": "step_start", "step_id": "a"}, {"event": "progress", "steps": {}}]),
        p.RunFinished("r", "success", "", {"steps": {}}),
        p.FetchOutput("r", "s0", 2, 3),
    ]
    for message in samples:
        assert p.decode(p.encode(message)) == message


def test_ticket_is_a_protocol_message() -> None:
    ticket = p.FetchOutput("run", "s3", 1, 2)
    assert p.decode_ticket(p.encode_ticket(ticket)).key == ("run", "s3", 1, 2)
    with pytest.raises(ProtocolError, match="expected 'fetch_output'"):
        p.decode_ticket(p.encode(p.Shutdown("x")))


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"v": 999, "op": "shutdown"}, "protocol version 999 is not supported"),
        ({"op": "shutdown"}, "message has no protocol version"),
        ({"v": p.PROTOCOL_VERSION, "op": "launch_missiles"}, "unknown op 'launch_missiles'"),
        (
            {"v": p.PROTOCOL_VERSION, "op": "cancel_task", "run_id": "r"},
            "missing fields ['attempt', 'task_id']",
        ),
        ({"v": p.PROTOCOL_VERSION, "op": "shutdown", "extra": 1}, "unknown fields ['extra']"),
    ],
)
def test_decode_rejects_with_a_reason(body: dict, error: str) -> None:
    with pytest.raises(ProtocolError, match=error.replace("[", r"\[").replace("]", r"\]")):
        p.decode(msgpack.packb(body))


def test_decode_rejects_garbage() -> None:
    with pytest.raises(ProtocolError, match="undecodable"):
        p.decode(b"\xc1\xc1\xc1")
    with pytest.raises(ProtocolError, match="not a map"):
        p.decode(msgpack.packb([1, 2]))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_coordinator_rejects_a_peer_speaking_another_version() -> None:
    address = f"tcp://127.0.0.1:{_free_port()}"
    daemon = subprocess.Popen([str(BIN / "osiris-coordinator"), "--bind", address, "--insecure"])
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt_string(zmq.IDENTITY, "old-worker")
    sock.connect(address)
    try:
        future = p.Register("old-worker", "h", 1, 1, "grpc://127.0.0.1:1", 1).to_wire() | {"v": 0}
        sock.send(msgpack.packb(future))
        assert sock.poll(10_000), "no answer from the coordinator"
        reply = p.decode(sock.recv())
        assert isinstance(reply, p.Reject)
        assert "protocol version 0 is not supported" in reply.reason
        # A correct register is welcomed on the same socket.
        sock.send(p.encode(p.Register("old-worker", "h", 1, 1, "grpc://127.0.0.1:1", 1)))
        assert sock.poll(10_000)
        assert isinstance(p.decode(sock.recv()), p.Welcome)
    finally:
        sock.close(linger=0)
        ctx.term()
        daemon.terminate()
        daemon.wait(timeout=10)


def test_a_worker_refuses_a_coordinator_speaking_another_version() -> None:
    """A real worker joining a (here hand-driven) coordinator of another version stops with a
    clear log line and exit code 3, not a traceback."""
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    worker = subprocess.Popen(
        [str(BIN / "osiris-worker"), "--coordinator", f"tcp://127.0.0.1:{port}", "--worker-id", "w"],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert router.poll(30_000), "the worker never registered"
        identity, frame = router.recv_multipart()
        assert isinstance(p.decode(frame), p.Register)
        welcome = p.Welcome("w", heartbeat_interval_s=1.0).to_wire() | {"v": p.PROTOCOL_VERSION + 1}
        router.send_multipart([identity, msgpack.packb(welcome)])
        _, err = worker.communicate(timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()
        router.close(linger=0)
        ctx.term()
    assert worker.returncode == 3
    assert f"protocol version {p.PROTOCOL_VERSION + 1} is not supported" in err and "Traceback" not in err


def test_a_worker_skips_what_it_cannot_understand_or_handle() -> None:
    """A real worker joined to a hand-driven coordinator: a malformed Welcome while it registers, a
    malformed message and one whose handling raises once it has joined are each logged and skipped
    (no traceback, no exit); it goes on heartbeating."""
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    worker = subprocess.Popen(
        [str(BIN / "osiris-worker"), "--coordinator", f"tcp://127.0.0.1:{port}", "--worker-id", "w"],
        stderr=subprocess.PIPE,
        text=True,
    )

    def next_heartbeat() -> p.Heartbeat:
        for _ in range(100):
            assert router.poll(10_000), "the worker went silent"
            message = p.decode(router.recv_multipart()[1])
            if isinstance(message, p.Heartbeat):
                return message
        raise AssertionError("no heartbeat")

    try:
        assert router.poll(30_000), "the worker never registered"
        identity, frame = router.recv_multipart()
        assert isinstance(p.decode(frame), p.Register)
        welcome = p.Welcome("w", heartbeat_interval_s=0.2).to_wire()
        router.send_multipart([identity, msgpack.packb(welcome | {"heartbeat_interval_s": "soon"})])
        router.send_multipart([identity, msgpack.packb(welcome)])
        next_heartbeat()
        router.send_multipart(
            [identity, msgpack.packb(p.CancelTask("r", "t", 1).to_wire() | {"attempt": "x"})]
        )
        router.send_multipart([identity, p.encode(p.ReleaseOutputs("r", "not-a-task-id", 1))])
        next_heartbeat()
        next_heartbeat()
        assert worker.poll() is None
        worker.terminate()
        _, err = worker.communicate(timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()
        router.close(linger=0)
        ctx.term()
    assert "welcome: field heartbeat_interval_s must be a number, got string" in err
    assert "cancel_task: field attempt must be an int, got string" in err
    assert "handling release_outputs from the coordinator failed with ValueError; skipped" in err
    assert "Traceback" not in err


def test_a_worker_declared_dead_is_told_by_its_next_task_report(tmp_path: Path) -> None:
    """A busy worker sends task reports, not heartbeats. Once the coordinator has declared it dead
    (silent past the limit), the next report draws a Reject, so the worker drops the work that is
    being rerun elsewhere and joins again, instead of finishing it unseen."""
    (tmp_path / "osiris.yaml").write_text("engine:\n  heartbeat_interval_s: 0.2\n  heartbeat_misses: 3\n")
    daemon, address = start_coordinator(tmp_path, "--config", "osiris.yaml")
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt_string(zmq.IDENTITY, "busy")
    try:
        sock.connect(address)
        sock.send(p.encode(p.Register("busy", "h", 1, 1, "grpc://127.0.0.1:1", 1)))
        assert sock.poll(10_000) and isinstance(p.decode(sock.recv()), p.Welcome)
        with Client(address) as client:  # silent now: wait until it is declared dead
            for _ in range(600):
                if not client.status().workers:
                    break
                client.receive(0.05)
            assert not client.status().workers
        sock.send(p.encode(p.TaskProgress("r", "s0.p0", 1, {"a": {"rows": 1}})))
        assert sock.poll(10_000), "the report of a worker declared dead got no answer"
        reply = p.decode(sock.recv())
        assert isinstance(reply, p.Reject) and reply.rejoin and "register again" in reply.reason
    finally:
        sock.close(linger=0)
        ctx.term()
        daemon.terminate()
        daemon.wait(timeout=10)


def _wire(op: str, **fields: object) -> bytes:
    return msgpack.packb({"v": p.PROTOCOL_VERSION, "op": op, **fields})


REGISTER = {
    "worker_id": "w",
    "host": "h",
    "pid": 1,
    "slots": 2,
    "flight_uri": "grpc://h:1",
    "memory_limit_bytes": 1,
}
ASSIGN = p.AssignTask(
    "r",
    "s1.p0",
    "s1",
    0,
    1,
    2,
    [STEP],
    {"a": [{"flight_uri": "grpc://h:1", "ticket": b"\x01"}]},
    "sink",
    "/x",
).to_wire()
del ASSIGN["v"], ASSIGN["op"]


def _nested(depth: int) -> dict:
    value: dict = {}
    for _ in range(depth):
        value = {"a": value}
    return value


def _deeper_than_msgpack_allows() -> bytes:
    head = b"".join(
        msgpack.packb(x) for x in ("v", p.PROTOCOL_VERSION, "op", "cancel_run", "run_id", "r", "reason")
    )
    return b"\x84" + head + b"\x81\xa1a" * 5000 + b"\x80"


@pytest.mark.parametrize(
    ("data", "error"),
    [
        # The three messages that crashed the coordinator (issue 8, finding 5).
        (_wire("cancel_run", run_id={"a": 1}), "cancel_run: field run_id must be a string, got map"),
        (
            _wire("submit_run", run_id="r", run_logs="/tmp", manifest="notadict", plan=PLAN),
            "submit_run: field manifest must be a map, got string",
        ),
        (
            _wire("register", **REGISTER | {"slots": "two"}),
            "register: field slots must be an int, got string",
        ),
        # bool is not an int; ints are bounded.
        (_wire("register", **REGISTER | {"slots": True}), "register: field slots must be an int, got bool"),
        (_wire("register", **REGISTER | {"slots": 0}), "register: field slots must be an int in 1..4096"),
        (_wire("register", **REGISTER | {"pid": -1}), "register: field pid must be an int in 0.."),
        (
            _wire("cancel_task", run_id="r", task_id="t", attempt=2**64 - 1),
            "field attempt must be an int in 0..",
        ),
        (_wire("register", **REGISTER | {"host": None}), "register: field host must be a string, got nil"),
        (
            _wire("task_started", run_id="r", task_id="t", attempt=1, worker_id="w", started_at="x"),
            "a number",
        ),
        (
            _wire("welcome", worker_id="w", heartbeat_interval_s=0.0),
            "heartbeat_interval_s must be a number in",
        ),
        (_wire("welcome", worker_id="w", heartbeat_interval_s=float("nan")), "heartbeat_interval_s must be"),
        (
            _wire(
                "task_failed",
                **{
                    "run_id": "r",
                    "task_id": "t",
                    "attempt": 1,
                    "worker_id": "w",
                    "error": "e",
                    "error_type": "E",
                    "transient": 1,
                },
            ),
            "field transient must be a bool, got int",
        ),
        # Run and task ids become path components: never a traversal.
        (_wire("release_outputs", run_id="../../etc"), "field run_id must match"),
        (_wire("release_outputs", run_id="/"), "field run_id must match"),
        (_wire("release_outputs", run_id="r", task_id=".."), "field task_id must match"),
        # Nested payloads.
        (
            _wire("assign_task", **ASSIGN | {"inputs": {"a": [{"flight_uri": "u", "ticket": "s"}]}}),
            "field inputs['a'][0]['ticket'] must be binary, got string",
        ),
        (
            _wire("assign_task", **ASSIGN | {"inputs": {"a": [{"flight_uri": "u"}]}}),
            "is missing keys ['ticket']",
        ),
        (_wire("assign_task", **ASSIGN | {"steps": [{"id": "a"}]}), "field steps[0] is missing keys"),
        (
            _wire("assign_task", **ASSIGN | {"steps": [STEP | {"config": []}]}),
            "steps[0]['config'] must be a map",
        ),
        (_wire("assign_task", **ASSIGN | {"connections": {"@m.x": {1: "x"}}}), "string keys, got a int key"),
        (_wire("assign_task", **ASSIGN | {"partitions": 0}), "field partitions must be an int in 1..65536"),
        (
            _wire("task_progress", run_id="r", task_id="t", attempt=1, steps={"a": {"rows": "x"}}),
            "field steps['a']['rows'] must be an int, got string",
        ),
        (
            _wire("run_events", run_id="r", events=[{"event": "x"}, {"step": "a"}]),
            "events[1] is missing key 'event'",
        ),
        (
            _wire("submit_run", run_id="r", run_logs="/tmp", manifest=MANIFEST | {"steps": "x"}, plan=PLAN),
            "field manifest['steps'] must be an array",
        ),
        (
            _wire("submit_run", run_id="r", run_logs="/tmp", manifest=MANIFEST, plan={"stages": []}),
            "field plan is missing key 'plan_version'",
        ),
        (
            _wire(
                "submit_run",
                run_id="r",
                run_logs="/tmp",
                manifest=MANIFEST | {"params": _nested(40)},
                plan=PLAN,
            ),
            "nested deeper than 32 levels",
        ),
        (_deeper_than_msgpack_allows(), "undecodable"),
        # Truncated and garbage frames.
        (
            _wire("assign_task", **ASSIGN)[:-7],
            "undecodable",
        ),
        (b"", "undecodable"),
        (
            msgpack.packb({"v": p.PROTOCOL_VERSION, "op": "cancel_run", "run_id": "r", 5: 1}),
            "unknown fields ['5']",
        ),
        (msgpack.packb({"v": p.PROTOCOL_VERSION, "op": ["x"]}), "unknown op"),
    ],
)
def test_decode_checks_every_field_type(data: bytes, error: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        p.decode(data)
    assert error in str(caught.value)


def test_every_message_type_has_a_checker() -> None:
    """Each registered op compiles into a checker (an unsupported annotation fails here, not in a daemon)."""
    for cls in p._REGISTRY.values():
        schema = schema_of(cls)
        assert [name for name, _ in schema.checks] == [f.name for f in dataclasses.fields(cls)]


def test_an_error_never_echoes_the_value() -> None:
    for data in (
        _wire("assign_task", **ASSIGN | {"batch_rows": "s3cret"}),
        _wire("assign_task", **ASSIGN | {"connections": {"@m.x": {"password": {"s3cret": {1: 2}}}}}),
    ):
        with pytest.raises(ProtocolError) as caught:
            p.decode(data)
        assert "s3cret" not in str(caught.value)


def test_the_manifest_and_plan_are_checked_against_each_other() -> None:
    assert parse_submission(MANIFEST, PLAN)[1].stages[0].steps == ("a",)
    stage = PLAN["stages"][0]
    bad_plans = {
        "names steps the manifest does not have": [stage | {"steps": ["nope"]}],
        "reads stages that do not come before it": [stage | {"inputs": ["s9"]}],
        "appears twice": [stage, stage],
        "has no steps": [stage | {"steps": []}],
        "unknown output kind": [stage | {"output": "teleport"}],
        "consumers that are not the stages reading it": [stage | {"consumers": ["s0"]}],
        "a stage id is letters": [stage | {"id": "../s0"}],
    }
    for error, stages in bad_plans.items():
        with pytest.raises(InvalidSubmission, match=error):
            parse_submission(MANIFEST, PLAN | {"stages": stages})
    with pytest.raises(InvalidSubmission, match="invalid manifest: manifest version 7"):
        parse_submission(MANIFEST | {"manifest_version": 7}, PLAN)
    with pytest.raises(InvalidSubmission, match="invalid manifest: not JSON data"):
        parse_submission(MANIFEST | {"steps": [STEP | {"config": {"path": b"x.csv"}}]}, PLAN)
    with pytest.raises(InvalidSubmission, match="invalid manifest: AttributeError"):
        parse_submission(MANIFEST | {"source": "x"}, PLAN)


def _oversize() -> bytes:
    return bytes(p.MAX_MESSAGE_BYTES + 1)


def test_a_worker_drops_a_coordinator_sending_an_oversize_frame() -> None:
    """A frame over MAX_MESSAGE_BYTES makes the worker's socket drop the connection (ZMQ_MAXMSGSIZE)
    instead of buffering it. libzmq never reconnects such a link, so the worker stops with a clear
    line and exit code 3 rather than idling unseen."""
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    monitor = router.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    worker = subprocess.Popen(
        [str(BIN / "osiris-worker"), "--coordinator", f"tcp://127.0.0.1:{port}", "--worker-id", "w"],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert router.poll(30_000), "the worker never registered"
        identity, _ = router.recv_multipart()
        router.send_multipart([identity, p.encode(p.Welcome("w", heartbeat_interval_s=0.2))])
        router.send_multipart([identity, _oversize()], copy=False)
        assert monitor.poll(30_000), "the worker kept the link of a coordinator sending an oversize frame"
        assert recv_monitor_message(monitor)["event"] == zmq.EVENT_DISCONNECTED
        _, err = worker.communicate(timeout=60)
    finally:
        if worker.poll() is None:
            worker.kill()
        router.disable_monitor()
        router.close(linger=0)
        ctx.destroy(linger=0)
    assert worker.returncode == 3
    assert (
        f"it broke the protocol (a frame over {p.MAX_MESSAGE_BYTES >> 20} MiB?) and the link is gone" in err
        and "Traceback" not in err
    )


def test_a_worker_leaves_a_coordinator_that_speaks_another_version() -> None:
    """After an upgrade of its coordinator, an old worker stops (exit 3) so that its supervisor
    starts the new version, instead of skipping every message for ever."""
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    worker = subprocess.Popen(
        [str(BIN / "osiris-worker"), "--coordinator", f"tcp://127.0.0.1:{port}", "--worker-id", "w"],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert router.poll(30_000), "the worker never registered"
        identity, _ = router.recv_multipart()
        router.send_multipart([identity, p.encode(p.Welcome("w", heartbeat_interval_s=0.2))])
        newer = p.CancelTask("r", "s0.p0", 1).to_wire() | {"v": p.PROTOCOL_VERSION + 1}
        router.send_multipart([identity, msgpack.packb(newer)])
        _, err = worker.communicate(timeout=60)
    finally:
        if worker.poll() is None:
            worker.kill()
        router.close(linger=0)
        ctx.destroy(linger=0)
    assert worker.returncode == 3
    assert f"protocol version {p.PROTOCOL_VERSION + 1} is not supported" in err and "Traceback" not in err


def test_a_client_drops_a_peer_sending_an_oversize_frame() -> None:
    """The client's socket drops a coordinator sending a frame over the limit instead of buffering
    it (libzmq does not reconnect after such a drop: a run being followed then ends with "the
    coordinator stopped answering", as for a coordinator that died)."""
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    monitor = router.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    try:
        with Client(f"tcp://127.0.0.1:{port}") as client:
            client.send(p.ClusterStatusRequest())
            assert router.poll(10_000)
            identity, _ = router.recv_multipart()
            router.send_multipart([identity, _oversize()], copy=False)
            assert monitor.poll(30_000), "the client kept the connection of a peer sending an oversize frame"
            assert recv_monitor_message(monitor)["event"] == zmq.EVENT_DISCONNECTED
            assert client.receive(0.2) is None
    finally:
        router.disable_monitor()
        router.close(linger=0)
        ctx.destroy(linger=0)
