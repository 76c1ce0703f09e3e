"""``osiris-coordinator`` and ``osiris-worker``: thin wrappers that parse flags and serve.

Both read ``osiris.yaml`` (``--config``) for defaults; flags win. The embedded local cluster starts
exactly these entry points as child processes (``python -m osiris_flight.cli.daemons ...``).

Secure by default: a coordinator listening on, or a worker connecting to, an address other hosts can
reach refuses to start without CURVE keys (exit 2) unless ``--insecure`` is given.
"""

from __future__ import annotations

import logging
import os
import sys

# Batches that arrive over Flight sit in gRPC buffers that are not 64-byte aligned. Acero (behind
# group_by and join) warns on every such batch by default; unaligned loads are safe on the x86-64 and
# aarch64 machines this runs on, and copying every batch to align it would cost a memcpy per batch.
os.environ.setdefault("ACERO_ALIGNMENT_HANDLING", "ignore")

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import click

from osiris_flight.config import Config, load_config
from osiris_flight.errors import InvalidInput
from osiris_flight.runtime import allocator

# Before pyarrow allocates anything: the pool is picked on first use (runtime/allocator.py says why).
allocator.choose_arrow_pool()

T = TypeVar("T")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d] %(message)s"


def _logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT, stream=sys.stderr)


def _or_exit(make: Callable[[], T]) -> T:
    """``make()``, or a one-line error and exit code 2 when the user's input (keys, config) is bad."""
    try:
        return make()
    except InvalidInput as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)


def _require_keys(address: str, flag: str, keys_flags: str, insecure: bool, listening: bool) -> None:
    """Exit 2 when CURVE is off, unless ``--insecure``: for a coordinator listening anywhere (on
    loopback, every local user can connect: the embedded cluster's private directory is the only
    keyless place), for a worker joining a coordinator beyond this host."""
    from osiris_flight.hosts import stays_on_host

    if not listening and stays_on_host(address):
        return
    if insecure:
        logging.getLogger("osiris_flight.daemons").warning(
            "INSECURE (--insecure): %s %s without CURVE keys; the control plane, connection secrets "
            "included, is open to anyone who can reach it",
            flag,
            address,
        )
        return
    reach = (
        "every local user can connect to it" if stays_on_host(address) else "it is reachable from other hosts"
    )
    click.echo(
        f"error: {flag} {address} without CURVE keys: {reach}, and could register as a worker (and "
        f"receive connection secrets) or submit runs; give {keys_flags} (osiris-flight keys cluster DIR "
        "makes them), or --insecure to run without",
        err=True,
    )
    sys.exit(2)


def _file_roots(roots: tuple[str, ...] | None, where: str) -> tuple[Path, ...] | None:
    """The real paths of the file roots (exit 2 naming one that is not a directory); None: none set."""
    from osiris_flight.components._files import real_roots

    if roots is None:
        return None
    try:
        return real_roots(roots)
    except ValueError as exc:
        click.echo(f"error: {where}: {exc} (file steps may use only existing directories)", err=True)
        sys.exit(2)


def _config(path: str | None) -> Config:
    try:
        config = load_config(path)
        config.osiris.apply_base_path()  # an Osiris filesystem.base_path: where relative paths resolve
        return config
    except InvalidInput as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)


@click.command("osiris-coordinator")
@click.option("--config", "config_path", type=click.Path(), help="osiris.yaml with engine defaults")
@click.option("--bind", default=None, help="ZeroMQ address to listen on, e.g. tcp://0.0.0.0:5555")
@click.option(
    "--spawn-workers", type=click.IntRange(min=0), default=0, help="start and own this many local workers"
)
@click.option("--worker-slots", type=click.IntRange(min=1), default=None)
@click.option("--worker-memory-limit-bytes", type=click.IntRange(min=1), default=None)
@click.option("--spill-dir", default=None)
@click.option("--parent-pid", type=int, default=None, hidden=True)
@click.option("--announce", is_flag=True, hidden=True, help="print READY <address> on stdout once bound")
@click.option("--curve-secret-key", default=None, help="CURVE: the coordinator's NAME.key_secret file")
@click.option(
    "--curve-authorized-keys",
    default=None,
    help="CURVE: directory of accepted public keys, one subdirectory per role: workers/, clients/, admins/",
)
@click.option("--no-curve", is_flag=True, hidden=True, help="the embedded cluster: private sockets, no CURVE")
@click.option(
    "--insecure",
    is_flag=True,
    help="listen beyond this host without CURVE keys (anyone reaching it is trusted)",
)
@click.option(
    "--private-dir",
    default=None,
    hidden=True,
    help="the embedded cluster: listen on ipc://DIR/control.sock; workers serve Flight on sockets in DIR",
)
@click.option(
    "--log-level", default=None, help="default: logging.level of an Osiris osiris.yaml, else warning"
)
def coordinator_main(
    config_path: str | None,
    bind: str | None,
    spawn_workers: int,
    worker_slots: int | None,
    worker_memory_limit_bytes: int | None,
    spill_dir: str | None,
    parent_pid: int | None,
    announce: bool,
    curve_secret_key: str | None,
    curve_authorized_keys: str | None,
    no_curve: bool,
    insecure: bool,
    private_dir: str | None,
    log_level: str | None,
) -> None:
    """Run the coordinator: accepts workers and runs, schedules tasks."""
    from osiris_flight.cluster.coordinator import Coordinator, CoordinatorOptions
    from osiris_flight.cluster.curve import curve_keys
    from osiris_flight.cluster.private_dir import control_address

    config = _config(config_path)
    log_level = log_level or config.osiris.log_level or "warning"
    _logging(log_level)
    engine = config.engine
    curve = None
    if not no_curve:
        curve = _or_exit(
            lambda: curve_keys(config.cluster, curve_secret_key, authorized_keys=curve_authorized_keys)
        )
    if private_dir and bind:
        click.echo("error: --private-dir sets the address; it cannot be combined with --bind", err=True)
        sys.exit(2)
    if private_dir:
        bind = control_address(private_dir)
    address = bind or config.cluster.coordinator or "tcp://127.0.0.1:5555"
    if curve is None and not private_dir:  # the embedded cluster's socket is private to its user
        _require_keys(
            address, "--bind", "--curve-secret-key and --curve-authorized-keys", insecure, listening=True
        )
    options = CoordinatorOptions(
        bind=address,
        heartbeat_interval_s=engine.heartbeat_interval_s,
        heartbeat_misses=engine.heartbeat_misses,
        plugins=config.plugins,
        spawn_workers=spawn_workers,
        worker_slots=worker_slots or engine.slots_per_worker,
        worker_memory_limit_bytes=worker_memory_limit_bytes
        or engine.memory_limit_bytes // max(1, spawn_workers or engine.workers),
        spill_dir=spill_dir or engine.spill_dir,
        spill_compression=engine.spill_compression,
        flight_compression=engine.flight_compression,
        shrink_batches=engine.shrink_batches,
        parent_pid=parent_pid,
        curve=curve,
        private_dir=private_dir,
        fetch_token_ttl_s=config.cluster.fetch_token_ttl_s,
        worker_log_level=log_level,
        file_roots=engine.file_roots,
    )

    def ready(address: str) -> None:
        if announce:
            print(f"READY {address}", flush=True)
        logging.getLogger("osiris_flight.coordinator").info("listening on %s", address)

    sys.exit(_or_exit(lambda: Coordinator(options)).serve(on_ready=ready))


@click.command("osiris-worker")
@click.option("--config", "config_path", type=click.Path(), help="osiris.yaml with engine defaults")
@click.option("--coordinator", default=None, help="coordinator address, e.g. tcp://10.0.0.5:5555")
@click.option("--worker-id", default="", help="default: <host>-<pid>-<random>")
@click.option("--slots", type=click.IntRange(min=1), default=None, help="tasks run at once")
@click.option(
    "--memory-limit-bytes",
    type=click.IntRange(min=1),
    default=None,
    help="batch-store budget before spilling",
)
@click.option("--spill-dir", default=None)
@click.option("--spill-compression", default=None, type=click.Choice(["zstd", "lz4", "none"]))
@click.option(
    "--flight-compression",
    default=None,
    type=click.Choice(["none", "lz4", "zstd"]),
    help="compression of the streams this worker serves to others",
)
@click.option("--bind-host", default="127.0.0.1", show_default=True, help="interface for the Flight server")
@click.option(
    "--advertise-host", default=None, help="host name peers use to reach this worker's Flight server"
)
@click.option("--heartbeat-interval", type=click.FloatRange(min=0, min_open=True), default=None)
@click.option(
    "--shrink-batches/--no-shrink-batches", default=None, help="hold batches in their smallest lossless form"
)
@click.option("--parent-pid", type=int, default=None, hidden=True)
@click.option(
    "--flight-socket",
    default=None,
    hidden=True,
    help="the embedded cluster: serve Flight on this Unix socket (made 0600) instead of TCP",
)
@click.option("--curve-secret-key", default=None, help="CURVE: this worker's NAME.key_secret file")
@click.option("--curve-server-key", default=None, help="CURVE: the coordinator's public NAME.key file")
@click.option(
    "--file-root",
    "file_roots",
    multiple=True,
    help="a directory file steps may read and write (repeat for several; default: engine.file_roots, "
    "else anywhere this user can)",
)
@click.option("--tls-cert", default=None, help="Flight TLS: this worker's certificate (PEM)")
@click.option("--tls-key", default=None, help="Flight TLS: the certificate's private key (PEM)")
@click.option("--tls-ca", default=None, help="Flight TLS: the cluster CA certificate (PEM)")
@click.option(
    "--insecure",
    is_flag=True,
    help="join a coordinator beyond this host without CURVE keys, or serve Flight beyond it without TLS "
    "(control messages or task data in clear on the network)",
)
@click.option(
    "--log-level", default=None, help="default: logging.level of an Osiris osiris.yaml, else warning"
)
def worker_main(
    config_path: str | None,
    coordinator: str | None,
    worker_id: str,
    slots: int | None,
    memory_limit_bytes: int | None,
    spill_dir: str | None,
    spill_compression: str | None,
    flight_compression: str | None,
    bind_host: str,
    advertise_host: str | None,
    heartbeat_interval: float | None,
    shrink_batches: bool | None,
    parent_pid: int | None,
    flight_socket: str | None,
    curve_secret_key: str | None,
    curve_server_key: str | None,
    file_roots: tuple[str, ...],
    tls_cert: str | None,
    tls_key: str | None,
    tls_ca: str | None,
    insecure: bool,
    log_level: str | None,
) -> None:
    """Run a worker: joins a coordinator, runs tasks, serves outputs over Arrow Flight."""
    from osiris_flight.cluster.curve import client_keys, curve_keys
    from osiris_flight.cluster.worker import Worker, WorkerOptions
    from osiris_flight.data.tls import load_flight_tls
    from osiris_flight.hosts import is_loopback

    config = _config(config_path)
    _logging(log_level or config.osiris.log_level or "warning")
    allocator.tune()
    from osiris_flight.runtime.deep_chains import allow_deep_chains  # imports the planner: workers only

    allow_deep_chains()  # before any task thread starts
    engine = config.engine
    address = coordinator or config.cluster.coordinator
    if not address:
        click.echo(
            "error: no coordinator address: pass --coordinator or set cluster.coordinator in osiris.yaml",
            err=True,
        )
        sys.exit(2)
    curve = _or_exit(lambda: curve_keys(config.cluster, curve_secret_key, curve_server_key))
    if curve is not None:
        _or_exit(lambda: client_keys(curve))
    else:
        _require_keys(
            address, "--coordinator", "--curve-secret-key and --curve-server-key", insecure, listening=False
        )
    cluster = config.cluster
    tls = _or_exit(
        lambda: load_flight_tls(
            tls_cert or cluster.tls_cert, tls_key or cluster.tls_key, tls_ca or cluster.tls_ca
        )
    )
    if tls is None and not insecure and not is_loopback(bind_host):
        click.echo(
            f"error: --bind-host {bind_host}: a Flight server reachable from other hosts needs TLS "
            "(--tls-cert/--tls-key/--tls-ca or cluster.tls_* in osiris.yaml; osiris-flight keys tls DIR "
            "makes them), or --insecure to serve task data in clear",
            err=True,
        )
        sys.exit(2)
    roots = _file_roots(file_roots or engine.file_roots, "--file-root" if file_roots else "engine.file_roots")
    if roots is None and parent_pid is None:
        logging.getLogger("osiris_flight.worker").warning(
            "engine.file_roots is not set: file steps of any run may read and write whatever this "
            "worker's user can; set it (or --file-root) on a shared cluster (docs/running.md)"
        )
    options = WorkerOptions(
        coordinator=address,
        worker_id=worker_id,
        slots=slots or engine.slots_per_worker,
        memory_limit_bytes=memory_limit_bytes or engine.memory_limit_bytes,
        spill_dir=spill_dir or engine.spill_dir,
        spill_compression=spill_compression or engine.spill_compression,
        flight_compression=flight_compression or engine.flight_compression,
        bind_host=bind_host,
        advertise_host=advertise_host,
        heartbeat_interval_s=heartbeat_interval or engine.heartbeat_interval_s,
        shrink_batches=engine.shrink_batches if shrink_batches is None else shrink_batches,
        parent_pid=parent_pid,
        flight_socket=flight_socket,
        curve=curve,
        tls=tls,
        file_roots=roots,
    )
    sys.exit(Worker(options).run())


@click.group()
def _local() -> None:
    """Entry used by the embedded local cluster: python -m osiris_flight.cli.daemons {coordinator|worker}."""


_local.add_command(coordinator_main, "coordinator")
_local.add_command(worker_main, "worker")

if __name__ == "__main__":
    _local()
