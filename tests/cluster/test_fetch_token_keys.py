"""Fetch-token keys on live daemons: each worker's Flight server checks tokens with its own key
(data/fetch_token.py ``server_key``), so a worker turned hostile, holding an authorized worker key and
the cluster's Flight certificate, cannot mint a token another worker accepts.

A CURVE + Flight TLS cluster made by ``osiris-flight keys cluster``: the producer (extract + a held
``chaos.slow``) runs on alpha (one slot), both consumers of the fan-out on beta, which joins after it
started and reads alpha's output over Flight once the hold is released. Meanwhile the attacker, a raw
DEALER socket with a second authorized worker key, registers, takes the key its Welcome carries,
mints a token for alpha's output and asks alpha for it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pyarrow.flight as flight
import pytest
import zmq
import zmq.auth

from osiris_flight import protocol as p
from osiris_flight.cluster.client import Client
from osiris_flight.data import fetch_token
from osiris_flight.data.tls import WORKER_SERVER_NAME, load_flight_tls
from osiris_flight.oml.model import parse_task_id
from tests.cluster.conftest import (
    BIN,
    cli_env,
    curve,
    events,
    latest_run_dir,
    osiris,
    read_csv,
    same_rows,
    start_coordinator,
    start_osiris,
    wait_until,
    write_events_csv,
)

pytestmark = pytest.mark.cluster

FANOUT = """
oml_version: "0.2.0"
name: fanout_tokens
steps:
  - id: extract
    component: filesystem.csv_extractor
    mode: read
    config: {{path: events.csv}}
  - id: hold
    component: chaos.slow
    mode: transform
    depends_on: [extract]
    config: {{delay_s: 0, hold_until: "{hold}"}}
  - id: copy_a
    component: filesystem.csv_writer
    mode: write
    depends_on: [hold]
    config: {{path: out/a.csv}}
  - id: copy_b
    component: filesystem.csv_writer
    mode: write
    depends_on: [hold]
    config: {{path: out/b.csv}}
"""


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    """A cluster's keys from the keys command, plus a second worker key, "evil"."""
    folder = tmp_path / "keys"
    made = osiris(["keys", "cluster", str(folder)], tmp_path)
    assert made.code == 0, made.stderr
    assert osiris(["keys", "create", "evil", "--dir", str(folder)], tmp_path).code == 0
    shutil.copy(folder / "evil.key", folder / "authorized" / "workers" / "evil.key")
    return folder


def start_worker(keys: Path, address: str, name: str, slots: int, cwd: Path) -> subprocess.Popen[Any]:
    tls = keys / "tls"
    return subprocess.Popen(
        [
            str(BIN / "osiris-worker"),
            *("--coordinator", address, "--worker-id", name, "--slots", str(slots)),
            *("--curve-secret-key", str(keys / "worker.key_secret")),
            *("--curve-server-key", str(keys / "coordinator.key")),
            *("--tls-cert", str(tls / "worker.pem"), "--tls-key", str(tls / "worker.key")),
            *("--tls-ca", str(tls / "ca.pem")),
        ],
        cwd=cwd,
        env=cli_env(),
    )


def workers(address: str, keys: Path, count: int) -> dict[str, str]:
    """Wait for ``count`` workers; their Flight URIs by worker id (an admin's view)."""
    with Client(address, curve=curve(keys, "admin")) as admin:
        status = admin.wait_for_workers(count, timeout_s=60)
        return {str(w["worker_id"]): str(w["flight_uri"]) for w in status.workers}


def hostile_worker_key(address: str, keys: Path) -> bytes:
    """Register as worker "evil" with the evil key, as a raw DEALER socket: the key in its Welcome."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt_string(zmq.IDENTITY, "evil")
    public, secret = zmq.auth.load_certificate(str(keys / "evil.key_secret"))
    server, _ = zmq.auth.load_certificate(str(keys / "coordinator.key"))
    sock.curve_publickey, sock.curve_secretkey, sock.curve_serverkey = public, secret, server
    try:
        sock.connect(address)
        sock.send(p.encode(p.Register("evil", "attacker", 1, 1, "grpc://127.0.0.1:9", 1 << 20)))
        assert sock.poll(30_000), "no answer to the hostile Register"
        welcome = p.decode(sock.recv())
    finally:
        sock.close()
    assert isinstance(welcome, p.Welcome), welcome
    assert len(welcome.fetch_token_key) == fetch_token.KEY_BYTES
    return welcome.fetch_token_key


def test_a_worker_key_cannot_mint_a_token_another_worker_accepts(
    tmp_path: Path, keys: Path, daemons: list[subprocess.Popen[Any]]
) -> None:
    table = write_events_csv(tmp_path / "events.csv", 20_000)
    hold = tmp_path / "go"
    (tmp_path / "pipeline.yaml").write_text(FANOUT.format(hold=hold))
    (tmp_path / "coordinator.yaml").write_text("engine:\n  heartbeat_interval_s: 0.5\n")
    proc, address = start_coordinator(
        tmp_path,
        *("--config", "coordinator.yaml"),
        *("--curve-secret-key", str(keys / "coordinator.key_secret")),
        *("--curve-authorized-keys", str(keys / "authorized")),
    )
    daemons.append(proc)
    (tmp_path / "osiris.yaml").write_text(  # the CLI's: this cluster, the client key
        f"cluster:\n  coordinator: {address}\n"
        f"  curve_secret_key: {keys / 'client.key_secret'}\n"
        f"  curve_server_key: {keys / 'coordinator.key'}\n"
    )
    daemons.append(start_worker(keys, address, "alpha", 1, tmp_path))
    workers(address, keys, 1)
    run = start_osiris(["run", "pipeline.yaml", "--cluster", address, "--json"], tmp_path)
    try:
        run_dir = wait_until(lambda: latest_run_dir(tmp_path), 60, "the run directory")
        producer = wait_until(
            lambda: next((e for e in events(run_dir) if e["event"] == "task_start"), None),
            60,
            "the producer to start on alpha",
        )
        assert "hold" in producer["steps"]
        assert producer["worker_id"] == "alpha"
        daemons.append(start_worker(keys, address, "beta", 2, tmp_path))
        uris = workers(address, keys, 2)
        wait_until(
            lambda: [e for e in events(run_dir) if e["event"] == "task_start" and e["worker_id"] == "beta"],
            60,
            "a consumer to start on beta",
        )

        # The attacker mints, with its own Welcome key, the very ticket beta was given for alpha's
        # output (reader "beta"), and presents the cluster's Flight certificate to alpha.
        key = hostile_worker_key(address, keys)
        stage_id, partition = parse_task_id(producer["task_id"])
        target = p.FetchOutput(run_dir.name.rsplit("_", 1)[-1], stage_id, partition, producer["attempt"])
        forged = fetch_token.mint(key, target, "beta", 600.0)
        tls = load_flight_tls(*(str(keys / "tls" / f) for f in ("worker.pem", "worker.key", "ca.pem")))
        assert tls is not None
        client = flight.FlightClient(
            uris["alpha"],
            tls_root_certs=tls.ca,
            cert_chain=tls.cert_chain,
            private_key=tls.private_key,
            override_hostname=WORKER_SERVER_NAME,
        )
        try:
            with pytest.raises(flight.FlightUnauthenticatedError) as refused:
                # Bounded: a server that accepted the token would wait for the held output.
                options = flight.FlightCallOptions(timeout=30)
                client.do_get(flight.Ticket(p.encode_ticket(forged)), options).read_all()
        finally:
            client.close()
        assert "fetch refused: the token does not match the ticket" in str(refused.value)
        assert "Traceback" not in str(refused.value)

        assert run.poll() is None  # the real run goes on: its producer is still held
        hold.touch()
        out, err = run.communicate(timeout=180)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert run.returncode == 0, err
    assert json.loads(out)["status"] == "success"
    for name in ("a", "b"):
        assert same_rows(read_csv(tmp_path / "out" / f"{name}.csv"), table)
    consumers = [e for e in events(run_dir) if e["event"] == "task_start" and "hold" not in e["steps"]]
    assert {e["worker_id"] for e in consumers} == {"beta"}  # the real tickets crossed workers
    assert not [e for e in events(run_dir) if e["event"] == "task_failed"]
