"""A worker's spill directory, marked as owned while the worker lives; dead owners' are removed.

A worker that stops normally removes its spill directory; one killed with SIGKILL (or by the OOM
killer, or a power cut) cannot, and its spill files stayed. So each spill directory holds a lock
file, ``.owner``, that its worker keeps locked (``flock``) for as long as it runs; the kernel drops
the lock when the process dies, however it dies. A starting worker looks at the other spill
directories under the same spill root and removes those whose ``.owner`` it can lock: their owner
is gone. A directory without ``.owner`` is not a worker's (or is from before this scheme) and is
left alone. ``.owner`` also says, for people, which process owned it (pid, host, start time).

The lock file is locked before it gets its name (a temp name, locked, then renamed), so no other
worker can ever lock a live worker's ``.owner``. flock is per host: spill roots are local disks.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

OWNER_FILE = ".owner"
TEMP_PREFIX = "osiris_spill_"  # spill directories in the system temp directory (no spill_dir set)


def claim_spill_dir(spill_root: str | None, worker_id: str) -> tuple[Path, IO[str]]:
    """Remove dead workers' spill directories under the root, then create and lock this worker's:
    ``<spill_root>/<worker_id>``, or a new ``osiris_spill_*`` in the temp directory when no root is
    set. Returns the directory and the open lock file (keep it open while the worker lives)."""
    if spill_root is None:
        root = Path(tempfile.gettempdir())
        remove_orphans(root, prefix=TEMP_PREFIX)
        path = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX))
    else:
        root = Path(spill_root)
        root.mkdir(parents=True, exist_ok=True)
        remove_orphans(root)
        path = root / worker_id
        path.mkdir(parents=True, exist_ok=True)
    return path, _lock_owner(path)


def _lock_owner(path: Path) -> IO[str]:
    fd, temp = tempfile.mkstemp(prefix=".owner-", dir=path)
    fh = os.fdopen(fd, "w", encoding="utf-8")
    fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # a new file: nobody else holds it
    fh.write(f"pid {os.getpid()} host {socket.gethostname()} started {time.time():.0f}\n")
    fh.flush()
    os.replace(temp, path / OWNER_FILE)
    return fh


def remove_orphans(root: Path, prefix: str = "") -> list[Path]:
    """Remove the spill directories under ``root`` (named ``prefix*``) whose owner is dead."""
    removed: list[Path] = []
    try:
        entries = list(root.iterdir())
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(prefix) or entry.is_symlink() or not entry.is_dir():
            continue
        if _owner_dead(entry / OWNER_FILE):
            shutil.rmtree(entry, ignore_errors=True)
            log.info("removed the spill directory of a dead worker: %s", entry)
            removed.append(entry)
    return removed


def _owner_dead(owner: Path) -> bool:
    try:
        fd = os.open(owner, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False  # no marker: not a worker's directory, or not ours to judge
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False  # locked: its worker is alive
    else:
        return True
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
