"""CurveZMQ on the control plane, with real daemons: an authorized worker and client run a pipeline
whose task carries a connection secret, and the bytes between worker and coordinator (recorded by a
TCP relay in between) hold neither that secret nor any readable message; a worker or client whose
key is not authorized gets nothing."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from osiris_flight.cluster.client import Client
from osiris_flight.cluster.curve import CurveKeys, create_keypair
from osiris_flight.errors import OsirisFlightError
from tests.cluster.conftest import BIN, cli_env, osiris, read_csv, start_coordinator

SECRET = "s3cret-on-the-wire-7731"

PIPELINE = """
oml_version: "0.2.0"
name: curve
steps:
  - id: numbers
    component: demo.numbers
    mode: read
    config: {count: 5000, connection: "@demo.main"}
  - id: write
    component: filesystem.csv_writer
    mode: write
    depends_on: [numbers]
    config: {path: out/numbers.csv}
"""


class Relay:
    """Forwards TCP connections to ``target`` and keeps every byte that passes, both ways."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.recorded = bytearray()
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                inbound, _ = self._listener.accept()
            except OSError:
                return
            try:
                outbound = socket.create_connection(self.target)
            except OSError:  # the coordinator is stopping
                inbound.close()
                continue
            for a, b in ((inbound, outbound), (outbound, inbound)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                with self._lock:
                    self.recorded += data
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._listener.close()


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    folder, authorized = tmp_path / "keys", tmp_path / "authorized"
    for name in ("coordinator", "worker", "client", "rogue"):
        create_keypair(folder, name)
    for name, role in (("worker", "workers"), ("client", "clients")):
        (authorized / role).mkdir(parents=True)
        shutil.copy(folder / f"{name}.key", authorized / role / f"{name}.key")
    return folder


def coordinator(daemons: list, cwd: Path, *flags: str) -> str:
    """A coordinator daemon stopped with the others; its address."""
    proc, address = start_coordinator(cwd, *flags)
    daemons.append(proc)
    return address


def write_pipeline(cwd: Path) -> None:
    """PIPELINE and the connection its task carries, with the secret from OSIRIS_TEST_SECRET."""
    (cwd / "pipeline.yaml").write_text(PIPELINE)
    (cwd / "osiris_connections.yaml").write_text(
        "version: 1\nconnections:\n  demo:\n    main:\n      host: db.internal\n"
        '      password: "${OSIRIS_TEST_SECRET}"\n'
    )


def start_worker(
    daemons: list, keys: Path | None, address: str, name: str, cwd: Path
) -> subprocess.Popen[str]:
    curve = (
        [
            "--curve-secret-key",
            str(keys / f"{name}.key_secret"),
            "--curve-server-key",
            str(keys / "coordinator.key"),
        ]
        if keys
        else []
    )
    proc = subprocess.Popen(
        [str(BIN / "osiris-worker"), "--coordinator", address, "--worker-id", name, *curve],
        cwd=cwd,
        env=cli_env(),
        text=True,
        stderr=subprocess.PIPE,
    )
    daemons.append(proc)
    return proc


def test_curve_encrypts_the_control_plane_and_shuts_out_unknown_keys(
    tmp_path: Path, keys: Path, daemons: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    address = coordinator(
        daemons,
        tmp_path,
        "--curve-secret-key",
        str(keys / "coordinator.key_secret"),
        "--curve-authorized-keys",
        str(tmp_path / "authorized"),
    )
    relay = Relay(("127.0.0.1", int(address.rsplit(":", 1)[1])))
    try:
        start_worker(daemons, keys, f"tcp://127.0.0.1:{relay.port}", "worker", tmp_path)
        rogue = start_worker(daemons, keys, address, "rogue", tmp_path)
        client_keys = CurveKeys(str(keys / "client.key_secret"), server_key=str(keys / "coordinator.key"))
        with Client(address, curve=client_keys) as client:
            status = client.wait_for_workers(1, timeout_s=60)
        assert [w["worker_id"] for w in status.workers] == ["worker"]

        write_pipeline(tmp_path)
        (tmp_path / "osiris.yaml").write_text(
            f"cluster:\n  coordinator: {address}\n"
            f"  curve_secret_key: {keys / 'client.key_secret'}\n"
            f"  curve_server_key: {keys / 'coordinator.key'}\n"
        )
        monkeypatch.setenv("OSIRIS_TEST_SECRET", SECRET)
        result = osiris(["run", "pipeline.yaml", "--cluster", address, "--json"], tmp_path)
        assert result.code == 0, result.stdout + result.stderr
        assert json.loads(result.stdout)["status"] == "success"
        assert read_csv(tmp_path / "out/numbers.csv").num_rows == 5000

        # The task (and its resolved connection) went through the relay, encrypted.
        assert len(relay.recorded) > 2000
        assert SECRET.encode() not in relay.recorded
        assert b"assign_task" not in relay.recorded and b"db.internal" not in relay.recorded

        # Unauthorized: the rogue worker never joined, a client with its key gets no answer.
        assert rogue.poll() is None or rogue.returncode != 0
        rogue_keys = CurveKeys(str(keys / "rogue.key_secret"), server_key=str(keys / "coordinator.key"))
        with Client(address, curve=rogue_keys) as stranger, pytest.raises(OsirisFlightError, match="CURVE"):
            stranger.status(timeout_s=2)
        with Client(address) as plain, pytest.raises(OsirisFlightError, match="requires CURVE keys"):
            plain.status(timeout_s=2)
    finally:
        relay.close()


def test_without_curve_the_same_run_sends_the_secret_in_clear(
    tmp_path: Path, daemons: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The relay's control: with CURVE off it does see the secret (so the test above can fail)."""
    address = coordinator(daemons, tmp_path)
    relay = Relay(("127.0.0.1", int(address.rsplit(":", 1)[1])))
    try:
        start_worker(daemons, None, f"tcp://127.0.0.1:{relay.port}", "worker", tmp_path)
        with Client(address) as client:
            client.wait_for_workers(1, timeout_s=60)
        write_pipeline(tmp_path)
        monkeypatch.setenv("OSIRIS_TEST_SECRET", SECRET)
        result = osiris(["run", "pipeline.yaml", "--cluster", address, "--json"], tmp_path)
        assert result.code == 0, result.stdout + result.stderr
        assert SECRET.encode() in relay.recorded and b"assign_task" in relay.recorded
    finally:
        relay.close()


def test_a_missing_key_file_is_a_clear_error(tmp_path: Path, keys: Path) -> None:
    worker = subprocess.run(
        [
            str(BIN / "osiris-worker"),
            "--coordinator",
            "tcp://127.0.0.1:9",
            "--curve-secret-key",
            str(tmp_path / "nope.key_secret"),
            "--curve-server-key",
            str(keys / "coordinator.key"),
        ],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert worker.returncode == 2, worker.stderr
    assert "nope.key_secret: cannot read the secret key" in worker.stderr
    assert "Traceback" not in worker.stderr
    created = osiris(["keys", "create", "coordinator", "--dir", str(keys)], tmp_path)
    assert created.code == 2 and "exists" in created.stderr  # never overwrites a key
