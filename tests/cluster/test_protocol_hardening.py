"""The messages that crashed the coordinator (issue 8, finding 5) sent to a live coordinator daemon
while a pipeline runs on two live workers: each is refused with a Reject (or the run it submits
fails with a reason), the coordinator stays up, its memory does not take a 300 MB frame, and the
run goes on to succeed with every row."""

from __future__ import annotations

from pathlib import Path

import msgpack
import psutil
import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from osiris_flight import protocol as p
from osiris_flight.cluster.client import Client
from tests.cluster.conftest import (
    events,
    latest_run_dir,
    read_csv,
    same_rows,
    start_osiris,
    wait_until,
    write_events_csv,
)
from tests.cluster.test_daemons import ENGINE, PIPELINE, Daemons
from tests.cluster.test_protocol import MANIFEST, PLAN

pytestmark = pytest.mark.cluster

V = p.PROTOCOL_VERSION
REGISTER = {
    "worker_id": "stranger",
    "host": "h",
    "pid": 1,
    "flight_uri": "grpc://h:1",
    "memory_limit_bytes": 1,
}


def wire(op: str, **fields: object) -> bytes:
    return msgpack.packb({"v": V, "op": op, **fields})


def deeper_than_msgpack_allows() -> bytes:
    head = b"".join(msgpack.packb(x) for x in ("v", V, "op", "cancel_run", "run_id", "r", "reason"))
    return b"\x84" + head + b"\x81\xa1a" * 5000 + b"\x80"


def nested(depth: int) -> dict:
    value: dict = {}
    for _ in range(depth):
        value = {"a": value}
    return value


# (frame, what the Reject's reason says)
CRASHERS = [
    (wire("cancel_run", run_id={"a": 1}), "cancel_run: field run_id must be a string, got map"),
    (
        wire("submit_run", run_id="r1", run_logs="logs", manifest="notadict", plan=PLAN),
        "submit_run: field manifest must be a map, got string",
    ),
    (wire("register", **REGISTER, slots="two"), "register: field slots must be an int, got string"),
    (wire("launch_missiles"), "unknown op 'launch_missiles'"),
    (p.encode(p.CancelRun("r", "because"))[:-4], "undecodable message"),
    (b"\xc1", "undecodable message"),
    (
        msgpack.packb({"v": V + 7, "op": "cancel_run", "run_id": "r"}),
        f"protocol version {V + 7} is not supported",
    ),
    (wire("register", **REGISTER | {"slots": 2, "pid": 2**64 - 1}), "field pid must be an int in 0.."),
    (wire("cancel_task", run_id="r", task_id="t", attempt=-(2**63)), "field attempt must be an int in 0.."),
    (
        wire(
            "submit_run", run_id="r1", run_logs="logs", manifest=MANIFEST | {"params": nested(200)}, plan=PLAN
        ),
        "nested deeper than 32 levels",
    ),
    (deeper_than_msgpack_allows(), "undecodable message"),
    (wire("cancel_run", run_id="../../etc"), "field run_id must match"),
    (
        wire("run_events", run_id="r", events=[{"no_event_key": 1}]),
        "run_events: field events[0] is missing key 'event'",
    ),
]


def test_crash_messages_are_rejected_while_a_run_goes_on(tmp_path: Path) -> None:
    table = write_events_csv(tmp_path / "events.csv", 50_000)
    (tmp_path / "pipeline.yaml").write_text(PIPELINE)
    daemons = Daemons(tmp_path)
    ctx = zmq.Context()
    try:
        daemons.start(("alpha", "beta"), ENGINE)
        coordinator = psutil.Process(daemons.processes[0].pid)
        proc = start_osiris(["run", "pipeline.yaml", "--cluster", daemons.address, "--json"], tmp_path)
        run_dir = wait_until(lambda: latest_run_dir(tmp_path), 60, "the run directory")
        wait_until(lambda: any(e["event"] == "task_start" for e in events(run_dir)), 60, "the task to start")

        stranger = ctx.socket(zmq.DEALER)
        stranger.setsockopt_string(zmq.IDENTITY, "stranger")
        stranger.connect(daemons.address)
        for frame, reason in CRASHERS:
            stranger.send(frame)
            assert stranger.poll(10_000), f"no answer to a message meant to draw: {reason}"
            reply = p.decode(stranger.recv())
            assert isinstance(reply, p.Reject) and reason in reply.reason, (reason, reply)
            assert daemons.processes[0].poll() is None

        # Well-typed, but the plan does not fit the manifest: the run fails with the reason.
        bad_plan = PLAN | {"stages": [PLAN["stages"][0] | {"steps": ["nope"]}]}  # type: ignore[operator]
        stranger.send(p.encode(p.SubmitRun("r1", str(tmp_path / "logs"), MANIFEST, bad_plan)))
        assert stranger.poll(10_000)
        finished = p.decode(stranger.recv())
        assert isinstance(finished, p.RunFinished) and finished.status == "failed"
        assert "names steps the manifest does not have" in finished.error

        # A 300 MB frame: libzmq drops the sender's connection before buffering it (MAXMSGSIZE).
        before = _memory_kib(coordinator)
        big = ctx.socket(zmq.DEALER)
        big.setsockopt_string(zmq.IDENTITY, "big")
        monitor = big.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        big.connect(daemons.address)
        big.send(bytes(300 * 1024 * 1024), copy=False)
        assert monitor.poll(60_000), "the coordinator kept the connection of a peer sending 300 MB"
        assert recv_monitor_message(monitor)["event"] == zmq.EVENT_DISCONNECTED
        big.disable_monitor()
        big.close(linger=0)
        after = _memory_kib(coordinator)
        assert after["VmHWM"] - before["VmHWM"] < 64 * 1024, (before, after)  # peak RSS grew < 64 MiB

        # Still serving: it answers a client, both workers are still there, and the run succeeds.
        with Client(daemons.address) as client:
            assert sorted(w["worker_id"] for w in client.status().workers) == ["alpha", "beta"]
        stranger.send(p.encode(p.ClusterStatusRequest()))
        assert stranger.poll(10_000) and isinstance(p.decode(stranger.recv()), p.ClusterStatus)
        stranger.close(linger=0)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, out + err
        assert same_rows(read_csv(tmp_path / "out/copy.csv"), table)
        assert daemons.processes[0].poll() is None
    finally:
        ctx.destroy(linger=0)
        daemons.stop()


def _memory_kib(process: psutil.Process) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, in KiB."""
    fields = {}
    for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0])
    return fields
