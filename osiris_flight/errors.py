"""Error types shared by every layer.

Two families matter to users and to the scheduler:

* ``InvalidInput`` -- the user's pipeline, params, connections or config is wrong. Reported before
  anything runs, with file, step, field and what would be valid; the CLI exits with code 2 and never
  prints a traceback for it.
* ``TaskError`` -- something failed while a task ran. ``TransientError`` is retried with backoff (on
  another worker where there is one); ``TerminalError`` fails the run at once with the real message.
  Any other exception raised by a component counts as terminal.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from pathlib import Path

EXIT_OK = 0
EXIT_RUN_FAILED = 1
EXIT_INVALID_INPUT = 2
EXIT_INTERRUPTED = 130


class OsirisFlightError(Exception):
    """Base class of every error this package raises on purpose."""

    exit_code = EXIT_RUN_FAILED


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the user's input, located as precisely as we can."""

    message: str
    file: str | None = None
    step: str | None = None
    field: str | None = None
    hint: str | None = None
    line: int | None = None

    def render(self) -> str:
        where = []
        if self.file:
            where.append(self.file + (f":{self.line}" if self.line else ""))
        if self.step:
            where.append(f"step '{self.step}'")
        if self.field:
            where.append(f"field '{self.field}'")
        text = (": ".join(where) + ": " if where else "") + self.message
        if self.hint:
            text += f" ({self.hint})"
        return text

    def to_dict(self) -> dict[str, object]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


class InvalidInput(OsirisFlightError):
    """The user's input is wrong; carries one or more located problems. Exit code 2."""

    exit_code = EXIT_INVALID_INPUT

    def __init__(self, problems: Problem | list[Problem]):
        self.problems = [problems] if isinstance(problems, Problem) else list(problems)
        super().__init__("\n".join(p.render() for p in self.problems))


class TaskError(OsirisFlightError):
    """A failure inside a running task. ``transient`` decides whether the scheduler retries it."""

    transient = False


class TransientError(TaskError):
    """Worth retrying: lost connection, lost upstream output, a timeout, a busy resource."""

    transient = True


class TerminalError(TaskError):
    """Retrying cannot help: bad SQL, a missing column, a type error in the data."""

    transient = False


class UpstreamLost(TransientError):
    """An input this task was streaming disappeared (its producer or its worker died)."""


class ProtocolError(OsirisFlightError):
    """A peer sent a message we cannot accept (bad version, unknown op, malformed fields)."""


def is_transient(exc: BaseException) -> bool:
    """Classify an exception raised while running a task."""
    if isinstance(exc, TaskError):
        return exc.transient
    return isinstance(exc, ConnectionError | TimeoutError)


def disk_error(path: Path, exc: OSError) -> str:
    """One line for a file the engine could not write: which file, and what the system said."""
    reason = exc.strerror or str(exc)
    if exc.errno is not None and exc.errno in errno.errorcode:
        reason += f" ({errno.errorcode[exc.errno]})"
    return f"cannot write {path}: {reason}"
