"""A cluster of real daemons on simulated hosts (tests/netns.py): host 0 runs the coordinator, hosts
1..N one worker each, host N+1 the client. Used by tests/cluster/test_multihost.py; a benchmark
imports it the same way (``sys.path`` at the repository root, then ``from tests.cluster.multihost
import ...``) to run N workers, each on its own address and, with ``worker_cpus``, under a CPU cap.

Each process has its own working directory under ``root`` (``coordinator/``, ``worker-<i>/``,
``client/``), as on separate machines that share only what the test puts in absolute paths. The
root namespace cannot reach the hosts, so everything that talks to the cluster, the client and
``wait_for_workers`` included, runs on the client's host.

Security is chosen by flags: with ``keys`` (``make_keys``) every link is CURVE, and the workers get
``tls_flags`` for Flight once the worker has ``--tls-cert``; without keys the daemons get
``--insecure`` where they have it.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.cluster.conftest import BIN, cli_env
from tests.netns import Host, Network

TIMEOUT = 240.0  # seconds for one step (start, join, run) on a loaded 2-core machine


@functools.cache
def help_text(*command: str) -> str:
    shown = subprocess.run(
        [str(BIN / command[0]), *command[1:], "--help"],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    return shown.stdout


def accepts(binary: str, flag: str) -> bool:
    """Whether a daemon lists ``flag`` in its --help (how these tests follow flags other work adds)."""
    return flag in help_text(binary).split()


def keys_subcommands() -> set[str]:
    """The subcommands of ``osiris-flight keys`` (the first word of each line under "Commands:")."""
    text = help_text("osiris-flight", "keys")
    listed = text.split("Commands:", 1)[1] if "Commands:" in text else ""
    return {line.split()[0] for line in listed.splitlines() if line.strip()}


def tls_available() -> bool:
    """Whether workers serve Flight over TLS (they accept ``--tls-cert``)."""
    return accepts("osiris-worker", "--tls-cert")


def tls_flags(keys: Path) -> list[str]:
    """The workers' Flight TLS flags: the certificate and key that ``osiris-flight keys tls`` made
    in ``keys/tls`` (one for every worker) and the cluster CA; empty while workers have no TLS."""
    if not tls_available():
        return []
    tls = keys / "tls"
    return [
        "--tls-cert",
        str(tls / "worker.pem"),
        "--tls-key",
        str(tls / "worker.key"),
        "--tls-ca",
        str(tls / "ca.pem"),
    ]


def insecure_flag(binary: str) -> list[str]:
    """``--insecure`` for a run without keys, where the daemon has it (a daemon bound to a
    non-loopback address refuses to start without keys otherwise)."""
    return ["--insecure"] if accepts(binary, "--insecure") else []


def worker_names(count: int) -> list[str]:
    return [f"worker-{i}" for i in range(1, count + 1)]


def keys_command(*args: str) -> subprocess.CompletedProcess[str]:
    made = subprocess.run(
        [str(BIN / "osiris-flight"), "keys", *args],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert made.returncode == 0, made.stderr
    return made


def make_keys(root: Path, workers: int) -> Path:
    """``root/keys``: a CURVE keypair per process, made with ``osiris-flight keys create``, and, when
    workers have TLS, ``keys/tls`` made with ``osiris-flight keys tls``. ``root/authorized`` holds the
    public keys the coordinator accepts: every worker's and the client's, in the role subdirectories
    ``workers/`` and ``clients/`` where the coordinator has roles (``keys cluster`` makes that
    layout), else side by side."""
    keys, authorized = root / "keys", root / "authorized"
    roles = "cluster" in keys_subcommands()
    authorized.mkdir(parents=True)
    for name in ["coordinator", *worker_names(workers), "client"]:
        made = keys_command("create", name, "--dir", str(keys), "--json")
        public = Path(json.loads(made.stdout)["public_key_file"])
        if name != "coordinator":
            folder = authorized / ("clients" if name == "client" else "workers") if roles else authorized
            folder.mkdir(exist_ok=True)
            (folder / public.name).write_bytes(public.read_bytes())
    if tls_available():
        keys_command("tls", str(keys / "tls"))
    return keys


@dataclass
class Cluster:
    net: Network
    coordinator: Host
    workers: list[Host]
    client: Host
    address: str  # the coordinator's tcp://<host 0>:<port>
    port: int
    root: Path
    processes: list[subprocess.Popen] = field(default_factory=list)  # the daemons

    @property
    def client_dir(self) -> Path:
        """The client's working directory: osiris.yaml is there; put pipelines and connections in it."""
        return self.root / "client"

    def client_run(
        self, args: Sequence[str], timeout: float = TIMEOUT, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """``args`` on the client's host, in ``client_dir``, with the test environment plus ``env``."""
        full_env = {**cli_env(), **(env or {})}
        return self.client.run(
            list(args), timeout=timeout, cwd=self.client_dir, env=full_env, capture_output=True, text=True
        )

    def wait_for_workers(self, count: int, timeout: float = TIMEOUT) -> None:
        """Until ``count`` workers joined, asked from the client's host with the client's keys."""
        script = (
            "from osiris_flight.cluster.client import Client\n"
            "from osiris_flight.cluster.curve import curve_keys\n"
            "from osiris_flight.config import load_config\n"
            "config = load_config(None)\n"
            "with Client(config.cluster.coordinator, curve=curve_keys(config.cluster)) as client:\n"
            f"    client.wait_for_workers({count}, timeout_s={timeout})\n"
        )
        waiter = self.client.popen(
            [sys.executable, "-c", script],
            cwd=self.client_dir,
            env=cli_env(),
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + timeout + 30
        while waiter.poll() is None:
            exited = [(p.args, p.returncode) for p in self.processes if p.poll() is not None]
            if exited or time.monotonic() > deadline:
                waiter.kill()
                waiter.wait()
                raise AssertionError(f"workers did not join; daemons that exited: {exited}")
            time.sleep(0.2)
        assert waiter.stderr is not None
        assert waiter.returncode == 0, waiter.stderr.read()


def start_cluster(
    net: Network,
    root: Path,
    *,
    workers: int,
    keys: Path | None,
    slots: int = 1,
    worker_cpus: float | None = None,
    worker_flags: Sequence[str] = (),
) -> Cluster:
    """The coordinator on host 0, ``workers`` workers on hosts 1..N (each ``slots`` slots, under a
    ``worker_cpus`` cap when given), the client's directory for host N+1; returns once all joined."""
    if len(net.hosts) < workers + 2:
        raise ValueError(f"{workers} workers need {workers + 2} hosts, the network has {len(net.hosts)}")
    coordinator, worker_hosts, client = net.hosts[0], net.hosts[1 : workers + 1], net.hosts[workers + 1]
    env = cli_env()
    security = insecure_flag("osiris-coordinator")
    if keys:
        authorized = root / "authorized"
        security = ["--curve-secret-key", str(keys / "coordinator.key_secret")]
        security += ["--curve-authorized-keys", str(authorized)]
    cwd = root / "coordinator"
    cwd.mkdir()
    proc = coordinator.popen(
        [
            str(BIN / "osiris-coordinator"),
            "--bind",
            f"tcp://{coordinator.address}:*",
            "--announce",
            *security,
        ],
        cwd=cwd,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().split()
    assert line and line[0] == "READY", f"the coordinator did not start (exit {proc.poll()})"
    address = line[1]
    daemons = [proc]
    for host, name in zip(worker_hosts, worker_names(workers), strict=True):
        security = insecure_flag("osiris-worker")
        if keys:
            security = ["--curve-secret-key", str(keys / f"{name}.key_secret")]
            security += ["--curve-server-key", str(keys / "coordinator.key"), *tls_flags(keys)]
        wd = root / name
        wd.mkdir()
        command = [str(BIN / "osiris-worker"), "--coordinator", address, "--worker-id", name]
        command += ["--bind-host", host.address, "--slots", str(slots), "--spill-dir", str(wd / "spill")]
        daemons.append(host.popen([*command, *security, *worker_flags], cwd=wd, env=env, cpus=worker_cpus))
    port = int(address.rsplit(":", 1)[1])
    cluster = Cluster(net, coordinator, list(worker_hosts), client, address, port, root, daemons)
    cluster.client_dir.mkdir()
    settings = f"cluster:\n  coordinator: {address}\n"
    if keys:
        settings += f"  curve_secret_key: {keys / 'client.key_secret'}\n"
        settings += f"  curve_server_key: {keys / 'coordinator.key'}\n"
    (cluster.client_dir / "osiris.yaml").write_text(settings)
    cluster.wait_for_workers(workers)
    return cluster
