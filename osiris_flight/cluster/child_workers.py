"""Local mode: the worker processes a coordinator starts and owns (``--spawn-workers``).

A child's exit is seen at once: its stdout is a pipe the coordinator's poller watches, and end of
file on it means the process is gone, whatever killed it (no waiting out heartbeats). Each child
gets SIGTERM when its parent dies (Linux ``PR_SET_PDEATHSIG``), so none outlives the coordinator.
A lost child is replaced, up to ``max_respawns`` replacements per coordinator, named
``<original id>.<generation>`` so a replacement is never taken for the worker it replaces.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

import zmq

log = logging.getLogger("osiris_flight.coordinator")


@dataclass
class _Child:
    worker_id: str
    process: subprocess.Popen[bytes]


class ChildWorkers:
    def __init__(self, poller: zmq.Poller, command: Callable[[str], list[str]], max_respawns: int) -> None:
        self._poller = poller
        self._command = command  # the argv that starts the worker of this id
        self._max_respawns = max_respawns
        self._respawns = 0
        self._children: dict[int, _Child] = {}

    def spawn(self, worker_id: str) -> None:
        process = subprocess.Popen(
            self._command(worker_id),
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent,
        )
        self._children[process.pid] = _Child(worker_id, process)
        assert process.stdout is not None
        os.set_blocking(process.stdout.fileno(), False)
        self._poller.register(process.stdout.fileno(), zmq.POLLIN)
        log.info("started local worker %s (pid %d)", worker_id, process.pid)

    def drain(self, fd: int) -> None:
        """A child's stdout is watched only to see its exit at once (EOF); discard what it prints."""
        try:
            while os.read(fd, 65536):
                pass
        except (BlockingIOError, OSError):
            pass

    def reap(self, respawn: bool) -> list[tuple[str, str]]:
        """The children that exited, as (worker id, reason); each is replaced while ``respawn`` and
        the replacement budget allow."""
        exited = []
        for pid, child in list(self._children.items()):
            code = child.process.poll()
            if code is None:
                continue
            del self._children[pid]
            if child.process.stdout is not None:
                self._poller.unregister(child.process.stdout.fileno())
                child.process.stdout.close()
            exited.append((child.worker_id, f"process {pid} exited with {_describe_exit(code)}"))
            if respawn and self._respawns < self._max_respawns:
                self._respawns += 1
                self.spawn(f"{child.worker_id.split('.')[0]}.{self._respawns}")
        return exited

    def wait(self, timeout_s: float) -> None:
        """Wait for every child to exit (they were told to stop), killing those still there after
        ``timeout_s`` seconds."""
        deadline = time.monotonic() + timeout_s
        for child in self._children.values():
            try:
                child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait()


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return signal.Signals(-code).name
        except ValueError:
            return f"signal {-code}"
    return f"code {code}"


def die_with_parent() -> None:
    """In a child process: get SIGTERM when the parent dies, however it dies (Linux prctl)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass
