"""File helpers shared by the file extractors and writers: path resolution and atomic commit.

Why temp + rename: a task can fail or be killed at any moment and is then retried, perhaps on another
worker. If a writer wrote its target in place, a reader could see half a file, and a retry could
leave a mix of two attempts. Instead every writer writes ``.<name>.tmp-<run>-<task>-<attempt>`` in
the target's own directory (same filesystem, so the rename is atomic), fsyncs it, and
``os.replace``-s it onto the target, then fsyncs the directory so the rename survives a crash. On
any error the temp file is removed and the target is exactly as it was.

An *append* (a new file holding the old rows and the new ones) is atomic the same way, but not
idempotent by itself: if the worker dies after the rename and before the coordinator hears that the
task finished, the task runs again and would append its rows twice. So just before the rename the
writer records the commit in ``.<name>.osiris-append.json``: run, task, rows, and the identity of
the file about to become the target (inode, size, modification time; a rename keeps all three). An
attempt of the same run and task that finds that record *and* the target still being that very file
knows its rows are in, and reports the recorded result instead of appending again
(``already_appended``). A crash before the rename leaves a record naming a file that never became
the target, which matches nothing. A new run (another run id) appends as it should.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa

from osiris_flight.components.base import StepContext, WriteResult
from osiris_flight.errors import TerminalError

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


BASE_PATH_ENV = "OSIRIS_FILESYSTEM_BASE"  # Osiris's name; osiris_settings.py sets it from osiris.yaml


def resolve_path(ctx: StepContext, path: str, field: str = "path") -> Path:
    """An absolute path stays; a relative one is taken from ``$OSIRIS_FILESYSTEM_BASE`` (Osiris's
    ``filesystem.base_path``, which ``osiris-flight`` exports from osiris.yaml) when set, else from
    the process's working directory; then ``confine`` checks it against the worker's file roots.

    In the default local mode the workers inherit both from ``osiris-flight run``, so relative paths
    mean what they mean to Osiris. (``ctx.work_dir`` is not used: it is a per-task scratch directory
    that is deleted when the task ends.)
    """
    candidate = Path(os.path.expanduser(path))
    if not candidate.is_absolute():
        candidate = Path(os.environ.get(BASE_PATH_ENV) or Path.cwd()) / candidate
    return confine(ctx, candidate, field)


def confine(ctx: StepContext, path: Path, field: str = "path") -> Path:
    """``path`` itself when the worker has no file roots; otherwise its real path (every symlink
    resolved, ``..`` applied) if that is inside one of ``ctx.file_roots``, else a TerminalError
    naming the step, the field and the roots, raised before anything opens the file. A path that
    does not exist yet resolves through its existing part, so a writer's new directories count."""
    roots = ctx.file_roots
    if roots is None:
        return path
    real = Path(os.path.realpath(path))
    if any(real == root or root in real.parents for root in roots):
        return real
    allowed = ", ".join(str(root) for root in roots) or "none"
    raise TerminalError(
        f"step '{ctx.step_id}': config.{field}: {path} is outside the directories this worker may "
        f"read and write (engine.file_roots: {allowed})"
    )


def real_roots(roots: list[str] | tuple[str, ...]) -> tuple[Path, ...]:
    """The real paths of configured file roots (each must be an existing directory: ValueError)."""
    out = []
    for root in roots:
        real = Path(os.path.realpath(os.path.expanduser(root)))
        if not real.is_dir():
            raise ValueError(f"{root} is not a directory")
        out.append(real)
    return tuple(out)


def partition_target(ctx: StepContext, target: Path) -> Path:
    """The file one partition task writes.

    A single-partition step writes ``target`` itself. When a writer is fused behind a source split
    into N partitions, each task writes its own ``<stem>.part-<p>-of-<N><suffix>`` next to it, so
    partitions never overwrite each other.
    """
    if ctx.partitions <= 1:
        return target
    width = len(str(ctx.partitions - 1))
    name = f"{target.stem}.part-{ctx.partition:0{width}d}-of-{ctx.partitions}{target.suffix}"
    return target.with_name(name)


def _temp_prefix(target: Path, ctx: StepContext) -> str:
    run = _UNSAFE.sub("_", ctx.run_id)
    task = _UNSAFE.sub("_", ctx.task_id)
    return f".{target.name}.tmp-{run}-{task}-"


def temp_path(target: Path, ctx: StepContext) -> Path:
    """``.<name>.tmp-<run_id>-<task_id>-<attempt>`` in the target's directory."""
    return target.with_name(f"{_temp_prefix(target, ctx)}{ctx.attempt}")


def _remove_stale_temps(target: Path, ctx: StepContext) -> None:
    """Delete temp files that earlier attempts of this same task left behind when they were killed.

    If an earlier attempt is in fact still alive (a worker wrongly declared dead), its later
    ``os.replace`` fails because its temp file is gone, so it can never overwrite this attempt's commit.
    """
    prefix = _temp_prefix(target, ctx)
    with contextlib.suppress(OSError):
        for entry in target.parent.iterdir():
            suffix = entry.name[len(prefix) :] if entry.name.startswith(prefix) else ""
            if suffix.isdigit() and int(suffix) < ctx.attempt:
                with contextlib.suppress(OSError):
                    entry.unlink()


def prepare_target(ctx: StepContext, target: Path, *, create_dirs: bool, field: str = "path") -> None:
    """Make sure the target's directory exists (or fail clearly) and that the target is not a dir."""
    parent = target.parent
    if not parent.is_dir():
        if not create_dirs:
            raise TerminalError(
                f"step '{ctx.step_id}': config.{field}: directory {parent} does not exist "
                "(create it, or set create_dirs: true)"
            )
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TerminalError(
                f"step '{ctx.step_id}': config.{field}: cannot create directory {parent}: {exc.strerror}"
            ) from None
    if target.is_dir():
        raise TerminalError(f"step '{ctx.step_id}': config.{field}: {target} is a directory, not a file")


def _fsync_path(path: Path, *, directory: bool = False) -> None:
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        if directory:  # some platforms cannot open a directory; the rename is still atomic
            return
        raise
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def io_errors(ctx: StepContext, what: str) -> Iterator[None]:
    """Turn a failure of the writer's own file or encoding work into a TerminalError naming ``what``.

    Wrap only the writer's operations, never the iteration over its input stream: an upstream
    failure (a lost worker is a ConnectionError, itself an OSError) must keep its own class, so the
    scheduler can retry it.
    """
    try:
        yield
    except UnicodeEncodeError as exc:
        raise TerminalError(
            f"step '{ctx.step_id}': config.encoding: {exc.object[exc.start : exc.end]!r} cannot be "
            f"written in {exc.encoding}; choose an encoding that has it (utf-8 has every character)"
        ) from None
    except (OSError, pa.ArrowException) as exc:
        raise TerminalError(f"step '{ctx.step_id}': {what}: {exc}") from None


def append_record_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.osiris-append.json")


def _identity(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_ino, st.st_size, st.st_mtime_ns]


def already_appended(ctx: StepContext, target: Path) -> WriteResult | None:
    """The result of this run's and task's append when an earlier attempt committed it (see above)."""
    try:
        record = json.loads(append_record_path(target).read_text(encoding="utf-8"))
        if (record["run_id"], record["task_id"]) != (ctx.run_id, ctx.task_id):
            return None
        if record["file"] != _identity(target):
            return None
        return WriteResult(rows=int(record["rows"]), bytes=target.stat().st_size, target=str(target))
    except (OSError, ValueError, KeyError, TypeError):  # no record, or not ours, or unreadable
        return None


def record_append(ctx: StepContext, target: Path, temp: Path, rows: int) -> None:
    """Write the append record for ``temp``, about to replace ``target`` (atomically, durably)."""
    record = {
        "run_id": ctx.run_id,
        "task_id": ctx.task_id,
        "attempt": ctx.attempt,
        "rows": rows,
        "file": _identity(temp),
    }
    path = append_record_path(target)
    scratch = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    with scratch.open("w", encoding="utf-8") as out:
        json.dump(record, out)
        out.flush()
        os.fsync(out.fileno())
    os.replace(scratch, path)


@contextlib.contextmanager
def atomic_target(
    ctx: StepContext, target: Path, before_commit: Callable[[Path], None] | None = None
) -> Iterator[Path]:
    """Yield a temp path to write; on success fsync it and atomically replace ``target`` with it.

    The caller must have closed every handle on the temp file when its ``with`` body ends. Any
    exception (including KeyboardInterrupt or a cancellation) removes the temp file and propagates.
    ``before_commit(temp)`` runs after the temp file is durable and right before the rename.
    """
    _remove_stale_temps(target, ctx)
    temp = temp_path(target, ctx)
    try:
        yield temp
        with io_errors(ctx, f"cannot commit {target}"):
            _fsync_path(temp)
            if before_commit is not None:
                before_commit(temp)
            os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
    with contextlib.suppress(OSError):  # durability of the rename only; the commit has happened
        _fsync_path(target.parent, directory=True)
