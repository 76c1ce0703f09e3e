"""The embedded cluster's private directory: where its sockets live, readable by its user only.

``osiris-flight run`` without ``--cluster`` runs a coordinator and workers on this machine. Their
control socket (ZeroMQ ``ipc://``) and Flight servers (gRPC over Unix sockets) are files in a
directory of mode 0700, made under umask 077: the kernel refuses every other local user (except
root) at the path, before any byte is exchanged, so nobody else can register as a worker, fetch a
run's data or even list the sockets. A loopback TCP port, what this replaced, is open to every user
of the machine. No keys are needed: nothing to generate, no handshake.

The directory, ``osiris-flight-<uid>-<pid>-<random>/`` where ``<pid>`` is the process that made it,
is made in ``$XDG_RUNTIME_DIR`` when that is usable (the user's own tmpfs, 0700 by the XDG spec),
else in the temp directory. It is removed when the cluster stops; one left behind by a process
that died (SIGKILL, a crash) is removed at the next embedded start of the same user, while a live
one is never touched. An ``owner`` file holds the creator's process start time, so that a recycled pid
does not keep a dead run's directory alive (only the reverse mistake, keeping one, is possible).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil

PREFIX = "osiris-flight-"
OWNER_FILE = "owner"
CONTROL_SOCKET = "control.sock"
# AF_UNIX paths hold at most 107 bytes (108 with the NUL), and ZeroMQ's ipc:// the same. Under the
# base go the directory's name ("osiris-flight-<uid>-<pid>-<8 random>", up to ~45) and the longest
# socket name, a respawned worker's Flight socket ("/flight-local-15.16.sock", 24).
MAX_BASE_CHARS = 107 - 45 - 24


def control_address(directory: Path | str) -> str:
    """The coordinator's ZeroMQ address in ``directory``."""
    return f"ipc://{Path(directory) / CONTROL_SOCKET}"


def flight_socket(directory: Path | str, worker_id: str) -> str:
    """The path of a worker's Flight server socket in ``directory``."""
    return str(Path(directory) / f"flight-{worker_id}.sock")


@contextlib.contextmanager
def private_umask() -> Iterator[None]:
    """Files and sockets made inside are ``0600``/``0700``. The process umask is global: use it
    only around creating a socket, before other threads could create files of their own."""
    previous = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(previous)


def _own_private_dir(path: str | None) -> bool:
    if not path or not os.path.isabs(path) or len(path) > MAX_BASE_CHARS:
        return False
    try:
        st = os.stat(path)
    except OSError:
        return False
    return (
        stat.S_ISDIR(st.st_mode)
        and st.st_uid == os.geteuid()
        and st.st_mode & 0o077 == 0
        and os.access(path, os.W_OK | os.X_OK)
    )


def base_dir() -> Path:
    """``$XDG_RUNTIME_DIR`` if it is ours, 0700 and writable, else the temp directory (or ``/tmp``
    when ``$TMPDIR`` is too long for socket paths)."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if _own_private_dir(runtime):
        return Path(runtime)  # type: ignore[arg-type]
    temp = tempfile.gettempdir()
    return Path(temp if len(temp) <= MAX_BASE_CHARS else "/tmp")


def _start_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def make(base: Path | None = None) -> Path:
    """Remove this user's stale private directories, then make a new one owned by this process."""
    base = base or base_dir()
    remove_stale(base)
    pid = os.getpid()
    path = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.geteuid()}-{pid}-", dir=base))  # mode 0700
    with private_umask():
        (path / OWNER_FILE).write_text(json.dumps({"pid": pid, "started": _start_time(pid)}))
    return path


def _owner(path: Path) -> tuple[int, float | None] | None:
    """The creating pid (from the name) and its start time (from the owner file, when readable)."""
    try:
        pid = int(path.name[len(PREFIX) :].split("-")[1])
    except (IndexError, ValueError):
        return None
    try:
        started = json.loads((path / OWNER_FILE).read_text()).get("started")
    except (OSError, ValueError, AttributeError):
        started = None
    return pid, started if isinstance(started, int | float) else None


def is_stale(path: Path) -> bool:
    """True when the process that made ``path`` is gone (dead, or its pid now another process)."""
    owner = _owner(path)
    if owner is None:
        return False
    pid, started = owner
    now_started = _start_time(pid)
    if now_started is None:
        return True
    return started is not None and abs(now_started - started) > 1.0


def remove_stale(base: Path) -> list[Path]:
    """Remove the private directories in ``base`` that this user made and whose process is gone.
    Returns those removed. Other users' directories and live ones are left alone."""
    removed = []
    for path in base.glob(f"{PREFIX}{os.geteuid()}-*"):
        try:
            st = path.lstat()
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or not is_stale(path):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
