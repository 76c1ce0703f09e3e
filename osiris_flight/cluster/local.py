"""The embedded local cluster: one coordinator process owning N worker processes.

Started by ``osiris-flight run`` when no cluster address is given and stopped when the run ends.
The coordinator runs in its own session (Ctrl-C reaches only the CLI, which cancels the run and then
stops the cluster in order) and gets SIGTERM if the CLI dies, however it dies; workers likewise with
their coordinator. So no process outlives the command.

The cluster is private to the user who runs it: its coordinator listens on a ZeroMQ ``ipc://``
socket and its workers serve Flight on Unix sockets, all in a directory of mode 0700
(``private_dir.py``). It opens no TCP port, so no other local user can connect to it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from osiris_flight.cluster import private_dir
from osiris_flight.cluster.child_workers import die_with_parent
from osiris_flight.cluster.client import Client, CoordinatorUnreachable
from osiris_flight.config import Config


@dataclass
class LocalCluster:
    config: Config
    log_level: str | None = None  # default: logging.level of an Osiris osiris.yaml, else warning
    start_timeout_s: float = 60.0
    process: subprocess.Popen[str] | None = None
    address: str = ""
    directory: Path | None = None  # the private directory of its sockets, while it runs

    def start(self) -> str:
        """Start the coordinator and its workers; returns the coordinator's address once every
        worker has joined. On any failure everything started is stopped again."""
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> str:
        engine = self.config.engine
        self.directory = private_dir.make()
        cmd = [
            sys.executable,
            "-m",
            "osiris_flight.cli.daemons",
            "coordinator",
            "--private-dir",
            str(self.directory),
            "--spawn-workers",
            str(engine.workers),
            "--worker-slots",
            str(engine.slots_per_worker),
            "--worker-memory-limit-bytes",
            str(max(1, engine.memory_limit_bytes // engine.workers)),
            "--parent-pid",
            str(os.getpid()),
            "--announce",
            "--no-curve",  # the private directory keeps others out; cluster.curve_* are for a remote cluster
            "--log-level",
            self.log_level or self.config.osiris.log_level or "warning",
        ]
        if self.config.source:
            cmd += ["--config", self.config.source]
        if engine.spill_dir:
            cmd += ["--spill-dir", engine.spill_dir]
        self.process = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().strip()
        if not line.startswith("READY "):
            raise CoordinatorUnreachable(f"the local coordinator did not start (said {line!r})")
        self.address = line.split(" ", 1)[1]
        with Client(self.address) as client:
            client.wait_for_workers(engine.workers, self.start_timeout_s)
        return self.address

    def stop(self, timeout_s: float = 10.0) -> None:
        try:
            self._stop_processes(timeout_s)
        finally:
            if self.directory is not None:
                private_dir.remove(self.directory)
                self.directory = None

    def _stop_processes(self, timeout_s: float) -> None:
        if self.process is None:
            return
        if self.process.poll() is None and self.address:
            try:
                with Client(self.address) as client:
                    client.shutdown()
                    client.receive(timeout_s)
            except Exception:  # stopping must go on whatever the socket says
                pass
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        self.process = None

    def worker_pids(self) -> list[int]:
        """PIDs of the live worker processes (for tests and benchmarks that kill or measure them)."""
        import psutil

        if self.process is None:
            return []
        try:
            return [c.pid for c in psutil.Process(self.process.pid).children()]
        except psutil.NoSuchProcess:
            return []

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
