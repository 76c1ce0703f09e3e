"""``osiris-coordinator`` and ``osiris-worker``: thin wrappers that parse flags and serve.

Both read ``osiris.yaml`` (``--config``) for defaults; flags win. The embedded local cluster starts
exactly these entry points as child processes (``python -m osiris_flight.cli.daemons ...``).
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
from typing import TypeVar

import click

from osiris_flight.config import Config, load_config
from osiris_flight.errors import InvalidInput
from osiris_flight.runtime import allocator
from osiris_flight.runtime.deep_chains import allow_deep_chains

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


def _config(path: str | None) -> Config:
    try:
        return load_config(path)
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
@click.option("--curve-authorized-keys", default=None, help="CURVE: directory of the public keys it accepts")
@click.option("--no-curve", is_flag=True, hidden=True, help="the embedded cluster: loopback, no CURVE")
@click.option("--log-level", default="warning", show_default=True)
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
    log_level: str,
) -> None:
    """Run the coordinator: accepts workers and runs, schedules tasks."""
    from osiris_flight.cluster.coordinator import Coordinator, CoordinatorOptions
    from osiris_flight.cluster.curve import curve_keys

    _logging(log_level)
    config = _config(config_path)
    engine = config.engine
    curve = None
    if not no_curve:
        curve = _or_exit(
            lambda: curve_keys(config.cluster, curve_secret_key, authorized_keys=curve_authorized_keys)
        )
    options = CoordinatorOptions(
        bind=bind or config.cluster.coordinator or "tcp://127.0.0.1:5555",
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
@click.option("--curve-secret-key", default=None, help="CURVE: this worker's NAME.key_secret file")
@click.option("--curve-server-key", default=None, help="CURVE: the coordinator's public NAME.key file")
@click.option("--log-level", default="warning", show_default=True)
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
    curve_secret_key: str | None,
    curve_server_key: str | None,
    log_level: str,
) -> None:
    """Run a worker: joins a coordinator, runs tasks, serves outputs over Arrow Flight."""
    from osiris_flight.cluster.curve import client_keys, curve_keys
    from osiris_flight.cluster.worker import Worker, WorkerOptions

    _logging(log_level)
    allocator.tune()
    allow_deep_chains()  # before any task thread starts
    config = _config(config_path)
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
        curve=curve,
    )
    sys.exit(Worker(options).run())


@click.group()
def _local() -> None:
    """Entry used by the embedded local cluster: python -m osiris_flight.cli.daemons {coordinator|worker}."""


_local.add_command(coordinator_main, "coordinator")
_local.add_command(worker_main, "worker")

if __name__ == "__main__":
    _local()
