"""Roles and ownership on the control plane, against live daemons with real CURVE keys made by
``osiris-flight keys cluster``; the attackers are raw pyzmq sockets holding authorized keys."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import psutil
import pytest
import zmq
import zmq.auth

from osiris_flight import protocol as p
from osiris_flight.cluster.client import Client
from osiris_flight.cluster.roles import Peer, Role, record_owner, resume_refusal
from osiris_flight.components.registry import build_registry
from osiris_flight.oml.compile import compile_pipeline
from osiris_flight.oml.plan import plan_manifest
from tests.cluster.conftest import (
    BIN,
    cli_env,
    curve,
    events,
    latest_run_dir,
    osiris,
    read_csv,
    start_coordinator,
    start_osiris,
    wait_until,
)

SECRET = "roles-secret-5521"

HELD = """
oml_version: "0.2.0"
name: held
steps:
  - id: numbers
    component: demo.numbers
    mode: read
    config: {count: 3000, connection: "@demo.main"}
  - id: slow
    component: chaos.slow
    mode: transform
    depends_on: [numbers]
    config: {delay_s: 0, hold_until: "RELEASE"}
  - id: write
    component: filesystem.csv_writer
    mode: write
    depends_on: [slow]
    config: {path: out/held.csv}
"""

# One branch fails at once (terminal) while the other's writer is held: the run must cancel the held
# branch and report "failed" only after it stopped.
BRANCHES = """
oml_version: "0.2.0"
name: branches
steps:
  - id: numbers
    component: demo.numbers
    mode: read
    config: {count: 3000}
  - id: slow
    component: chaos.slow
    mode: transform
    depends_on: [numbers]
    config: {delay_s: 0, hold_until: "RELEASE"}
  - id: slow_write
    component: filesystem.csv_writer
    mode: write
    depends_on: [slow]
    config: {path: out/held.csv}
  - id: bad
    component: chaos.flaky
    mode: transform
    depends_on: [numbers]
    config: {terminal: true, message: "bad branch"}
  - id: bad_write
    component: filesystem.csv_writer
    mode: write
    depends_on: [bad]
    config: {path: out/bad.csv}
"""

COPY = """
oml_version: "0.2.0"
name: copy
steps:
  - id: read
    component: filesystem.csv_extractor
    mode: read
    config: {path: in.csv}
  - id: write
    component: filesystem.csv_writer
    mode: write
    depends_on: [read]
    config: {path: out/copy.csv}
"""

QUICK = """
oml_version: "0.2.0"
name: quick
steps:
  - id: numbers
    component: demo.numbers
    mode: read
    config: {count: 100}
  - id: write
    component: filesystem.csv_writer
    mode: write
    depends_on: [numbers]
    config: {path: out/quick.csv}
"""


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    """A cluster's keys from the keys command, plus a second client key ("other") and a second
    worker key ("evil", a worker that turned hostile)."""
    folder = tmp_path / "keys"
    made = osiris(["keys", "cluster", str(folder)], tmp_path)
    assert made.code == 0, made.stderr
    for name, role in (("other", "clients"), ("evil", "workers")):
        assert osiris(["keys", "create", name, "--dir", str(folder)], tmp_path).code == 0
        shutil.copy(folder / f"{name}.key", folder / "authorized" / role / f"{name}.key")
    return folder


def cluster(tmp_path: Path, keys: Path, daemons: list, workers: int = 1) -> str:
    """A CURVE coordinator and ``workers`` worker daemons (worker key); the coordinator's address."""
    proc, address = start_coordinator(
        tmp_path,
        "--curve-secret-key",
        str(keys / "coordinator.key_secret"),
        "--curve-authorized-keys",
        str(keys / "authorized"),
    )
    daemons.append(proc)
    for index in range(workers):
        daemons.append(
            subprocess.Popen(
                [
                    str(BIN / "osiris-worker"),
                    "--coordinator",
                    address,
                    "--worker-id",
                    f"w{index}",
                    "--curve-secret-key",
                    str(keys / "worker.key_secret"),
                    "--curve-server-key",
                    str(keys / "coordinator.key"),
                ],
                cwd=tmp_path,
                env=cli_env(),
                text=True,
            )
        )
    with Client(address, curve=curve(keys, "admin")) as admin:
        admin.wait_for_workers(workers, timeout_s=60)
    return address


def use_client_key(tmp_path: Path, address: str, keys: Path, name: str = "client") -> None:
    """osiris.yaml for the CLI: this cluster, this key; plus the connection the pipelines use."""
    (tmp_path / "osiris.yaml").write_text(
        f"cluster:\n  coordinator: {address}\n"
        f"  curve_secret_key: {keys / f'{name}.key_secret'}\n"
        f"  curve_server_key: {keys / 'coordinator.key'}\n"
    )
    (tmp_path / "osiris_connections.yaml").write_text(
        f"version: 1\nconnections:\n  demo:\n    main:\n      host: db.internal\n      password: {SECRET}\n"
    )


def raw_socket(address: str, keys: Path, name: str, identity: str) -> zmq.Socket:
    """An attacker's DEALER socket holding the authorized key ``name``."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt_string(zmq.IDENTITY, identity)
    public, secret = zmq.auth.load_certificate(str(keys / f"{name}.key_secret"))
    server, _ = zmq.auth.load_certificate(str(keys / "coordinator.key"))
    sock.curve_publickey, sock.curve_secretkey, sock.curve_serverkey = public, secret, server
    sock.connect(address)
    return sock


def received(sock: zmq.Socket, timeout_s: float) -> list[p.Message]:
    """Every message ``sock`` gets within ``timeout_s`` (the first wait) then while they keep coming."""
    out: list[p.Message] = []
    wait_ms = int(timeout_s * 1000)
    while sock.poll(wait_ms):
        out.append(p.decode(sock.recv()))
        wait_ms = 200
    return out


def register(sock: zmq.Socket, worker_id: str) -> None:
    sock.send(p.encode(p.Register(worker_id, "attacker", 1, 1, "grpc://127.0.0.1:9", 1 << 20)))


def held_pipeline(tmp_path: Path) -> Path:
    release = tmp_path / "release"
    (tmp_path / "pipeline.yaml").write_text(HELD.replace("RELEASE", str(release)))
    return release


def started_task(tmp_path: Path) -> dict:
    run_dir = wait_until(lambda: latest_run_dir(tmp_path), 60, "the run directory")
    return wait_until(
        lambda: next((e for e in events(run_dir) if e["event"] == "task_start"), None), 60, "a task start"
    )


def test_a_forged_report_for_another_workers_task_is_refused(
    tmp_path: Path, keys: Path, daemons: list
) -> None:
    address = cluster(tmp_path, keys, daemons)
    use_client_key(tmp_path, address, keys)
    release = held_pipeline(tmp_path)
    run = start_osiris(["run", "pipeline.yaml", "--cluster", address, "--json"], tmp_path)
    try:
        task = started_task(tmp_path)
        run_id = latest_run_dir(tmp_path).name.rsplit("_", 1)[-1]  # type: ignore[union-attr]
        # A second worker key (its holder turned hostile) registers after the task was assigned.
        evil = raw_socket(address, keys, "evil", "evil")
        register(evil, "evil")
        assert [type(m) for m in received(evil, 10)] == [p.Welcome]
        for claimed in ("evil", task["worker_id"]):
            evil.send(
                p.encode(
                    p.TaskFinished(run_id, task["task_id"], task["attempt"], claimed, 0.0, 1.0, {}, 3000, 1)
                )
            )
            (answer,) = received(evil, 10)
            assert isinstance(answer, p.Reject), answer
        # Nor can it swell the run's records with spills of an output it never held.
        evil.send(p.encode(p.OutputSpilled(run_id, task["task_id"], task["attempt"], "evil", 10**15, 1, 0)))
        (answer,) = received(evil, 10)
        assert isinstance(answer, p.Reject) and "not assigned" in answer.reason and not answer.rejoin
        assert run.poll() is None  # the run did not end: its held writer has not written a row
        release.touch()
        out, err = run.communicate(timeout=180)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 0, err
    assert json.loads(out)["status"] == "success"
    assert read_csv(tmp_path / "out/held.csv").num_rows == 3000
    assert not [e for e in events(latest_run_dir(tmp_path)) if e["event"] == "spill"]  # type: ignore[arg-type]
    evil.close()


def test_a_client_key_cannot_register_as_a_worker_nor_get_a_task_or_secret(
    tmp_path: Path, keys: Path, daemons: list
) -> None:
    address = cluster(tmp_path, keys, daemons)
    use_client_key(tmp_path, address, keys)
    sneaky = raw_socket(address, keys, "client", "sneaky")
    register(sneaky, "sneaky")
    (answer,) = received(sneaky, 10)
    assert isinstance(answer, p.Reject) and "worker role" in answer.reason
    held_pipeline(tmp_path).touch()
    result = osiris(["run", "pipeline.yaml", "--cluster", address, "--json"], tmp_path)
    assert result.code == 0, result.stderr
    assert received(sneaky, 1) == []  # no assign_task, no secret, nothing
    with Client(address, curve=curve(keys, "admin")) as admin:
        assert [w["worker_id"] for w in admin.status().workers] == ["w0"]
    sneaky.close()


def test_a_client_cannot_see_or_cancel_another_clients_run_and_an_admin_can(
    tmp_path: Path, keys: Path, daemons: list
) -> None:
    address = cluster(tmp_path, keys, daemons)
    use_client_key(tmp_path, address, keys)
    held_pipeline(tmp_path)
    run = start_osiris(["run", "pipeline.yaml", "--cluster", address, "--json"], tmp_path)
    try:
        started_task(tmp_path)
        run_id = latest_run_dir(tmp_path).name.rsplit("_", 1)[-1]  # type: ignore[union-attr]
        with Client(address, curve=curve(keys, "other")) as other:
            status = other.status()
            assert status.runs == []
            assert all(set(w) == {"worker_id", "slots"} for w in status.workers)  # no Flight address
            other.cancel(run_id, "not mine")
            answer = other.receive(10)
            assert isinstance(answer, p.Reject) and run_id in answer.reason
        with Client(address, curve=curve(keys, "client")) as same_key:  # the owner's key, new socket
            assert same_key.status().runs == [run_id]
        assert run.poll() is None
        with Client(address, curve=curve(keys, "admin")) as admin:
            assert admin.status().runs == [run_id]
            admin.cancel(run_id, "stopped by the admin")
        out, _ = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode != 0
    assert "stopped by the admin" in json.loads(out)["error"]
    # Another client key cannot resume it either (the run directory names its owner's key).
    use_client_key(tmp_path, address, keys, "other")
    resumed = osiris(["run", "--resume", run_id, "--cluster", address, "--json"], tmp_path)
    assert resumed.code != 0 and "started with another key" in resumed.stdout + resumed.stderr


def test_a_worker_key_cannot_submit_and_a_client_key_cannot_stop_the_coordinator(
    tmp_path: Path, keys: Path, daemons: list
) -> None:
    address = cluster(tmp_path, keys, daemons, workers=0)
    worker = raw_socket(address, keys, "worker", "w-submit")
    # A well-formed submission: refused for the sender's role, not for its shape.
    (tmp_path / "copy.yaml").write_text(COPY)
    registry = build_registry()
    manifest = compile_pipeline(tmp_path / "copy.yaml", registry, environ={})
    plan = plan_manifest(manifest, registry)
    for message in (
        p.ClusterStatusRequest(),
        p.SubmitRun("r1", str(tmp_path / "run_logs"), manifest.to_dict(), plan.to_dict()),
        p.CancelRun("r1"),
    ):
        worker.send(p.encode(message))
        (answer,) = received(worker, 10)
        assert isinstance(answer, p.Reject) and "needs the admin or client role" in answer.reason
    assert not (tmp_path / "run_logs").exists()
    client = raw_socket(address, keys, "client", "c-stop")
    client.send(p.encode(p.Shutdown("bye")))
    (answer,) = received(client, 10)
    assert isinstance(answer, p.Reject) and "admin role" in answer.reason
    with Client(address, curve=curve(keys, "client")) as alive:
        assert alive.status().runs == []
    worker.close()
    client.close()


def test_a_failed_run_stops_its_other_branches_before_it_reports(
    tmp_path: Path, keys: Path, daemons: list
) -> None:
    address = cluster(tmp_path, keys, daemons, workers=2)
    use_client_key(tmp_path, address, keys)
    release = tmp_path / "release"
    (tmp_path / "pipeline.yaml").write_text(BRANCHES.replace("RELEASE", str(release)))
    result = osiris(["run", "pipeline.yaml", "--cluster", address, "--json"], tmp_path)
    assert result.code != 0 and "bad branch" in result.json()["error"]
    run_dir = latest_run_dir(tmp_path)
    assert run_dir is not None
    names = [(e["event"], e.get("task_id"), e.get("error_type")) for e in events(run_dir)]
    end = next(i for i, (name, _, _) in enumerate(names) if name == "run_end")
    held = {e["task_id"] for e in events(run_dir) if e["event"] == "task_start" and "slow" in e["steps"]}
    assert len(held) == 1
    # The held branch was cancelled and reported stopped before the run ended, not after.
    assert ("task_failed", *held, "Cancelled") in names[:end]
    assert all(t not in held for name, t, _ in names[end:] if name.startswith("task_"))

    # Let the held step go on: nothing is left to write out/held.csv. A run after it succeeds.
    release.touch()
    (tmp_path / "quick.yaml").write_text(QUICK)
    after = osiris(["run", "quick.yaml", "--cluster", address, "--json"], tmp_path)
    assert after.code == 0, after.stderr
    assert not (tmp_path / "out/held.csv").exists()
    assert not (tmp_path / "out/bad.csv").exists()


def test_a_coordinator_without_keys_and_a_worker_beyond_loopback_need_insecure(
    tmp_path: Path, keys: Path
) -> None:
    def start(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / args[0]), *args[1:]], env=cli_env(), capture_output=True, text=True, timeout=60
        )

    # On loopback too: every local user could connect (only the embedded cluster's private socket
    # directory goes without keys).
    for bind in ("tcp://0.0.0.0:*", "tcp://*:*", "tcp://127.0.0.1:*", f"ipc://{tmp_path}/c.sock"):
        refused = start("osiris-coordinator", "--bind", bind)
        assert refused.returncode == 2, refused.stderr
        assert "--insecure" in refused.stderr and "keys cluster" in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
    worker = start("osiris-worker", "--coordinator", "tcp://192.0.2.1:5555")
    assert (
        worker.returncode == 2 and "--curve-secret-key" in worker.stderr and "Traceback" not in worker.stderr
    )

    # A key directly in the authorized directory grants no role: refused at start, not guessed.
    shutil.copy(keys / "client.key", keys / "authorized" / "client.key")
    stray = start(
        "osiris-coordinator",
        "--bind",
        "tcp://0.0.0.0:*",
        "--curve-secret-key",
        str(keys / "coordinator.key_secret"),
        "--curve-authorized-keys",
        str(keys / "authorized"),
    )
    assert stray.returncode == 2 and "client.key is directly in" in stray.stderr, stray.stderr

    # --insecure starts it, and says so in the log.
    proc = subprocess.Popen(
        [str(BIN / "osiris-coordinator"), "--bind", "tcp://0.0.0.0:*", "--insecure", "--announce"],
        env=cli_env(),
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().startswith("READY ")
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert "INSECURE" in err


def test_keys_cluster_makes_every_key_in_place_and_never_overwrites(tmp_path: Path) -> None:
    made = osiris(["keys", "cluster", str(tmp_path / "k"), "--json"], tmp_path)
    assert made.code == 0, made.stderr
    placed = {
        Path(entry["file"]).relative_to(tmp_path / "k").as_posix(): entry["goes_to"] for entry in made.json()
    }
    assert set(placed) == {
        "coordinator.key_secret",
        "coordinator.key",
        "authorized",
        "worker.key_secret",
        "client.key_secret",
        "admin.key_secret",
        "tls/ca.pem",
        "tls/worker.pem",
        "tls/worker.key",
        "tls/ca.key",
    }
    modes = {
        path.relative_to(tmp_path / "k").as_posix(): path.stat().st_mode & 0o777
        for path in (tmp_path / "k").rglob("*")
        if path.is_file()
    }
    assert modes == {
        **{f"{name}.key_secret": 0o600 for name in ("coordinator", "worker", "client", "admin")},
        **{f"{name}.key": 0o644 for name in ("coordinator", "worker", "client", "admin")},
        "authorized/workers/worker.key": 0o644,
        "authorized/clients/client.key": 0o644,
        "authorized/admins/admin.key": 0o644,
        "tls/ca.pem": 0o644,
        "tls/worker.pem": 0o644,
        "tls/worker.key": 0o600,
        "tls/ca.key": 0o600,
    }
    again = osiris(["keys", "cluster", str(tmp_path / "k")], tmp_path)
    assert again.code == 2 and "exist" in again.stderr and "Traceback" not in again.stderr


def test_spawned_workers_hold_a_worker_only_key_of_their_own_never_the_coordinators(
    tmp_path: Path, keys: Path, daemons: list
) -> None:
    proc, address = start_coordinator(
        tmp_path,
        "--curve-secret-key",
        str(keys / "coordinator.key_secret"),
        "--curve-authorized-keys",
        str(keys / "authorized"),
        "--spawn-workers",
        "1",
    )
    daemons.append(proc)
    with Client(address, curve=curve(keys, "admin")) as admin:
        admin.wait_for_workers(1, timeout_s=60)
    (child,) = psutil.Process(proc.pid).children()
    argv = child.cmdline()
    secret_file = Path(argv[argv.index("--curve-secret-key") + 1])
    server_file = Path(argv[argv.index("--curve-server-key") + 1])
    # No argument names the coordinator's secret key file, and no file the worker is given holds it.
    _, coordinator_secret = zmq.auth.load_certificate(str(keys / "coordinator.key_secret"))
    assert coordinator_secret is not None
    assert not any("coordinator.key_secret" in arg for arg in argv), argv
    for given in (secret_file, server_file):
        assert coordinator_secret.decode() not in given.read_text()
    assert zmq.auth.load_certificate(str(server_file)) == (
        zmq.auth.load_certificate(str(keys / "coordinator.key"))[0],
        None,
    )
    assert secret_file.stat().st_mode & 0o777 == 0o600
    assert secret_file.parent.stat().st_mode & 0o777 == 0o700

    # The spawned workers' key is a worker key and nothing more.
    spawned = key_socket(address, secret_file, keys, "spawned")
    for message in (p.Shutdown("mine now"), p.ClusterStatusRequest()):
        spawned.send(p.encode(message))
        (answer,) = received(spawned, 10)
        assert isinstance(answer, p.Reject) and "this key holds worker" in answer.reason, answer
    spawned.close()
    # The coordinator's own key is admin, no longer worker: it cannot register.
    own = key_socket(address, keys / "coordinator.key_secret", keys, "own")
    register(own, "own")
    (answer,) = received(own, 10)
    assert isinstance(answer, p.Reject) and "worker role" in answer.reason, answer
    own.close()

    use_client_key(tmp_path, address, keys)
    (tmp_path / "pipeline.yaml").write_text(QUICK)
    result = osiris(["run", "pipeline.yaml", "--cluster", address, "--json"], tmp_path)
    assert result.code == 0, result.stderr
    assert read_csv(tmp_path / "out/quick.csv").num_rows == 100

    proc.terminate()
    proc.wait(timeout=30)
    assert not secret_file.parent.exists()  # the ephemeral keypair is gone with its coordinator


def key_socket(address: str, secret_file: Path, keys: Path, identity: str) -> zmq.Socket:
    """A DEALER socket holding the keypair in ``secret_file``."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt_string(zmq.IDENTITY, identity)
    public, secret = zmq.auth.load_certificate(str(secret_file))
    server, _ = zmq.auth.load_certificate(str(keys / "coordinator.key"))
    sock.curve_publickey, sock.curve_secretkey, sock.curve_serverkey = public, secret, server
    sock.connect(address)
    return sock


def test_a_run_without_a_recorded_owner_is_resumed_only_by_an_admin(tmp_path: Path) -> None:
    """A run started on a coordinator without keys has no owner.json: on a CURVE coordinator only an
    admin may resume it (a client key once resumed, and rewrote, such a run of somebody else's)."""
    client = Peer(b"c", "key:client", frozenset({Role.CLIENT}))
    admin = Peer(b"a", "key:admin", frozenset({Role.ADMIN}))
    refused = resume_refusal(tmp_path, client)
    assert refused is not None and "no recorded owner" in refused
    assert resume_refusal(tmp_path, admin) is None
    record_owner(tmp_path, client)
    assert resume_refusal(tmp_path, client) is None
    assert resume_refusal(tmp_path, Peer(b"o", "key:other", frozenset({Role.CLIENT}))) is not None


def test_a_lost_workers_id_stays_with_its_key(tmp_path: Path, keys: Path, daemons: list) -> None:
    """Another worker key cannot take over the id of a worker that left (its fetch-token key is
    derived from the id); the same key can come back under it."""
    address = cluster(tmp_path, keys, daemons)
    worker = daemons[-1]
    worker.terminate()  # says goodbye: w0 is lost
    worker.wait(timeout=30)
    with Client(address, curve=curve(keys, "admin")) as admin:
        wait_until(lambda: not admin.status().workers, 30, "w0 to be gone")
    evil = raw_socket(address, keys, "evil", "w0")
    register(evil, "w0")
    (answer,) = received(evil, 10)
    assert isinstance(answer, p.Reject) and "belongs to another key" in answer.reason
    evil.close()
    same = raw_socket(address, keys, "worker", "w0")
    register(same, "w0")
    (answer,) = received(same, 10)
    assert isinstance(answer, p.Welcome)
    same.close()
