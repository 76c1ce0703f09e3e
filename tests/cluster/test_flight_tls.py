"""The data plane on live daemons: Flight over mutual TLS with certificates made by ``osiris-flight
keys tls``, fetch tokens minted by the coordinator, and what a stranger and a misconfigured worker get.

Every test forces a read across workers: the producer task (extract + a held ``chaos.slow``) starts
on the only worker, which has one slot; the second worker joins after it, so both consumers of the
fan-out run there and read the producer's output over Flight; then the hold is released.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.flight as flight
import pytest

from osiris_flight.cluster.client import Client
from osiris_flight.data.tls import WORKER_SERVER_NAME, load_flight_tls
from osiris_flight.protocol import FetchOutput, encode_ticket
from tests.cluster.conftest import (
    Result,
    cli_env,
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
BIN = Path(sys.executable).parent

FANOUT = """
oml_version: "0.2.0"
name: fanout_tls
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
ENGINE = "engine:\n  heartbeat_interval_s: 0.5\n  heartbeat_misses: 6\n  batch_rows: 4096\n"


def tls_flags(keys: Path) -> list[str]:
    files = {"--tls-cert": "worker.pem", "--tls-key": "worker.key", "--tls-ca": "ca.pem"}
    return [part for flag, name in files.items() for part in (flag, str(keys / name))]


def make_keys(directory: Path) -> Path:
    done = osiris(["keys", "tls", str(directory)], directory.parent)
    assert done.code == 0, done.stderr
    return directory


@dataclass
class Cluster:
    cwd: Path
    address: str = ""
    processes: list[subprocess.Popen[Any]] = field(default_factory=list)

    def coordinator(self, yaml: str = ENGINE) -> None:
        (self.cwd / "osiris.yaml").write_text(yaml)
        proc, self.address = start_coordinator(self.cwd, "--config", "osiris.yaml")
        self.processes.append(proc)

    def worker(self, name: str, slots: int, *flags: str, expect: int, cwd: Path | None = None) -> None:
        command = [str(BIN / "osiris-worker"), "--coordinator", self.address, "--worker-id", name]
        self.processes.append(
            subprocess.Popen(
                [*command, "--slots", str(slots), *flags],
                cwd=cwd or self.cwd,
                env=cli_env(),
            )
        )
        with Client(self.address) as client:
            client.wait_for_workers(expect, timeout_s=60)

    def status(self) -> list[dict[str, Any]]:
        with Client(self.address) as client:
            return list(client.wait_for_workers(1, timeout_s=30).workers)

    def stop(self) -> None:
        for proc in reversed(self.processes):
            proc.terminate()
        for proc in self.processes:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    yield c
    c.stop()


def run_across_workers(
    cluster: Cluster, flags_a: list[str], flags_b: list[str], yaml: str = ENGINE
) -> tuple[Result, list[dict[str, Any]]]:
    """The fan-out pipeline with its consumers on worker beta reading alpha's output over Flight:
    the run's result and events."""
    cwd = cluster.cwd
    hold = cwd / "go"
    (cwd / "pipeline.yaml").write_text(FANOUT.format(hold=hold))
    cluster.coordinator(yaml)
    cluster.worker("alpha", 1, *flags_a, expect=1)
    proc = start_osiris(["run", "pipeline.yaml", "--cluster", cluster.address, "--json"], cwd)
    try:
        run_dir = wait_until(lambda: latest_run_dir(cwd), 60, "the run directory")
        wait_until(
            lambda: any(e["event"] == "task_start" and "hold" in e["steps"] for e in events(run_dir)),
            60,
            "the producer to start on alpha",
        )
        cluster.worker("beta", 2, *flags_b, expect=2)

        wait_until(lambda: _consumer_starts(events(run_dir)), 60, "a consumer to start")
        hold.touch()
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    evs = events(run_dir)
    assert {e["worker_id"] for e in _consumer_starts(evs)} == {"beta"}, "a consumer ran on alpha"
    return Result(proc.returncode, out, err), evs


def _consumer_starts(evs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in evs if e["event"] == "task_start" and "hold" not in e["steps"]]


def test_fan_out_across_workers_over_tls_gives_the_same_output_as_plain(tmp_path: Path) -> None:
    table = write_events_csv(tmp_path / "tls" / "events.csv", 60_000)
    write_events_csv(tmp_path / "plain" / "events.csv", 60_000)
    keys = make_keys(tmp_path / "keys")
    outputs = {}
    for mode, flags in (("tls", tls_flags(keys)), ("plain", [])):
        cluster = Cluster(tmp_path / mode)
        try:
            result, evs = run_across_workers(cluster, flags, flags)
            assert result.code == 0, result.stdout + result.stderr
            assert len(_consumer_starts(evs)) == 2
            uris = sorted(w["flight_uri"] for w in cluster.status())
            assert all(u.startswith("grpc+tls://" if mode == "tls" else "grpc://") for u in uris), uris
            if mode == "tls":
                stranger_gets_nothing(uris[0], keys)
        finally:
            cluster.stop()
        outputs[mode] = [(tmp_path / mode / "out" / f"{n}.csv").read_bytes() for n in "ab"]
        for name in "ab":
            assert same_rows(read_csv(tmp_path / mode / "out" / f"{name}.csv"), table)
    assert outputs["tls"] == outputs["plain"]


def stranger_gets_nothing(uri: str, keys: Path) -> None:
    """Against a live TLS worker: plain TCP fails; a client holding a valid certificate but no token
    (run and stage guessed right, or not) is refused; other methods are refused; never a traceback."""
    plain = flight.FlightClient(uri.replace("grpc+tls://", "grpc://"))
    ticket = flight.Ticket(encode_ticket(FetchOutput("any", "extract", 0, 1)))
    try:
        with pytest.raises(flight.FlightUnavailableError):
            plain.do_get(ticket).read_all()
    finally:
        plain.close()
    tls = load_flight_tls(str(keys / "worker.pem"), str(keys / "worker.key"), str(keys / "ca.pem"))
    assert tls is not None
    client = flight.FlightClient(
        uri,
        tls_root_certs=tls.ca,
        cert_chain=tls.cert_chain,
        private_key=tls.private_key,
        override_hostname=WORKER_SERVER_NAME,
    )
    try:
        with pytest.raises(flight.FlightUnauthenticatedError) as refused:
            client.do_get(ticket).read_all()
        assert "fetch refused: the ticket carries no token" in str(refused.value)
        with pytest.raises(flight.FlightUnauthenticatedError) as listing:
            list(client.list_flights())
        for caught in (refused, listing):
            assert "Traceback" not in str(caught.value) and ".py" not in str(caught.value)
    finally:
        client.close()


def test_workers_of_another_cluster_ca_fail_the_run_at_once(tmp_path: Path, cluster: Cluster) -> None:
    """alpha and beta hold certificates of two different CAs: beta's fetch fails the TLS handshake,
    a terminal error naming TLS, not a lost input retried."""
    write_events_csv(tmp_path / "events.csv", 20_000)
    ours, theirs = make_keys(tmp_path / "ours"), make_keys(tmp_path / "theirs")
    result, evs = run_across_workers(cluster, tls_flags(ours), tls_flags(theirs))
    assert result.code == 1
    failed = [e for e in evs if e["event"] == "task_failed"]
    assert failed and "TLS with the peer failed" in failed[0]["error"], failed
    assert failed[0]["error_type"] == "FetchRefused" and failed[0]["transient"] is False
    assert "same cluster CA" in failed[0]["error"]
    assert not [e for e in evs if e["event"] == "task_retry"]


def test_an_expired_token_fails_the_run_with_a_clear_error(tmp_path: Path, cluster: Cluster) -> None:
    """Tokens that live 1 ms (cluster.fetch_token_ttl_s) are expired when beta opens its input:
    refused, terminal, named; never retried as a lost input."""
    write_events_csv(tmp_path / "events.csv", 20_000)
    yaml = ENGINE + "cluster:\n  fetch_token_ttl_s: 0.001\n"
    result, evs = run_across_workers(cluster, [], [], yaml)
    assert result.code == 1
    failed = [e for e in evs if e["event"] == "task_failed"]
    assert failed and "fetch refused: the token has expired" in failed[0]["error"], failed
    assert failed[0]["error_type"] == "FetchRefused" and failed[0]["transient"] is False
    assert not [e for e in evs if e["event"] == "task_retry"]


def test_a_worker_serving_flight_beyond_loopback_needs_tls_or_insecure(
    tmp_path: Path, cluster: Cluster
) -> None:
    """Refused without TLS (exit 2, one line); served in clear with --insecure; over TLS with the
    flags or with osiris.yaml's cluster.tls_*; half the TLS settings is a clear error."""
    keys = make_keys(tmp_path / "keys")
    bare = tmp_path / "bare"  # no osiris.yaml here
    bare.mkdir()

    def refused(*flags: str) -> str:
        command = [str(BIN / "osiris-worker"), "--coordinator", "tcp://127.0.0.1:1", *flags]
        done = subprocess.run(command, cwd=bare, env=cli_env(), capture_output=True, text=True, timeout=60)
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
        return done.stderr

    err = refused("--bind-host", "0.0.0.0")
    assert "--bind-host 0.0.0.0" in err and "needs TLS" in err and "--insecure" in err
    err = refused("--tls-cert", str(keys / "worker.pem"))
    assert "together" in err and "cluster.tls_key (--tls-key)" in err
    err = refused("--tls-cert", str(keys / "worker.pem"), "--tls-key", str(keys / "ca.pem"), "--tls-ca", "x")
    assert "cannot read" in err or "not an unencrypted PEM private key" in err

    tls_yaml = "".join(f"  tls_{k}: {keys / f}\n" for k, f in (("cert", "worker.pem"), ("key", "worker.key")))
    cluster.coordinator(ENGINE + "cluster:\n" + tls_yaml + f"  tls_ca: {keys / 'ca.pem'}\n")
    cluster.worker("open", 1, "--bind-host", "0.0.0.0", "--insecure", expect=1, cwd=bare)
    cluster.worker("flags", 1, "--bind-host", "0.0.0.0", *tls_flags(keys), expect=2, cwd=bare)
    cluster.worker("config", 1, "--bind-host", "0.0.0.0", expect=3)  # reads ./osiris.yaml
    uris = {w["worker_id"]: w["flight_uri"] for w in cluster.status()}
    assert uris["open"].startswith("grpc://")
    assert uris["flags"].startswith("grpc+tls://") and uris["config"].startswith("grpc+tls://")
