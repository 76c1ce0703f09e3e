"""The Osiris sections of ``osiris.yaml``: what of the file ``osiris init`` writes this engine reads.

An Osiris project's ``osiris.yaml`` (``version: '2.0'``, ``filesystem``, ``ids``, ``logging``,
``discovery``, ``llm``, ``pipeline``, ``validate``, ``validation``, ``aiop``; older files also
``output`` and ``sessions``) is accepted as it is,
next to this engine's own keys (``engine``, ``cluster``, ...). Read here:

- ``filesystem.base_path``: the root relative pipeline paths resolve against (as Osiris's
  ``$OSIRIS_FILESYSTEM_BASE`` overrides it, so does it here); empty means the working directory.
- ``filesystem.run_logs_dir``: where run directories go, under ``base_path`` when that is set.
- ``logging.level``: the log level of the embedded cluster's coordinator and workers.

Every other Osiris key is accepted and has no effect; ``IGNORED`` says why, for the one warning
the commands print and the notes ``osiris-flight validate`` gives. ``observability`` (the M3
milestone's section) is accepted the same way until it is implemented.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from osiris_flight.errors import Problem

BASE_PATH_ENV = "OSIRIS_FILESYSTEM_BASE"  # Osiris's own override of filesystem.base_path
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

_AIOP = "AI operation packs are not written"
_RETENTION = "run directories are kept until removed"
# Osiris key -> why it has no effect here. A section named whole has no key read here.
IGNORED: dict[str, str] = {
    "ids": "run ids are 12 hex digits and manifests are fingerprinted with sha256",
    "discovery": "this engine does no schema discovery",
    "llm": "this engine uses no LLM",
    "pipeline": "no chat-generated pipelines; SQL is not screened for keywords or length",
    "validate": "osiris-flight validate has its own output, and --json",
    "validation": "this engine makes no LLM validation retries",
    "aiop": _AIOP,
    "observability": "not implemented yet; issue 10 brings metrics export, tracing and log shipping",
    # Sections of older Osiris files (and of Osiris's built-in defaults).
    "output": "writers write where their path says",
    "sessions": "this engine keeps no chat sessions",
    "filesystem.profiles": "paths get no {profile}/ segment; --profile selects a params profile",
    "filesystem.pipelines_dir": "pipelines are given by path",
    "filesystem.build_dir": "compile writes the manifest to stdout or --out",
    "filesystem.aiop_dir": _AIOP,
    "filesystem.sessions_dir": "this engine keeps no chat sessions",
    "filesystem.cache_dir": "this engine keeps no discovery cache",
    "filesystem.index_dir": "runs are listed from the run directories",
    "filesystem.mcp_logs_dir": "this engine has no MCP server",
    "filesystem.naming": "run directories are named <pipeline>/<UTC timestamp>_<run id>",
    "filesystem.artifacts": "compile writes one manifest",
    "filesystem.retention": _RETENTION,
    "filesystem.outputs": "writers write where their path says",
    "logging.events": "every event goes to events.jsonl",
    "logging.file": "no osiris.log is written; the embedded cluster logs to stderr",
    "logging.format": "log lines have this engine's format",
    "logging.metrics": "every metric goes to metrics.jsonl",
    "logging.retention": _RETENTION,
    "logging.env_overrides": "OSIRIS_LOG_LEVEL is not read",
    "logging.cli_flags": "the daemons take --log-level",
}
OSIRIS_KEYS = ("version", "filesystem", "logging", *(k for k in IGNORED if "." not in k))
_READ = {"filesystem": ("base_path", "run_logs_dir"), "logging": ("level",)}


@dataclass(frozen=True)
class OsirisSettings:
    """What the Osiris sections set; ``None`` where they set nothing."""

    base_path: str | None = None  # absolute
    run_logs_dir: str | None = None  # as written (relative to base_path when that is set)
    log_level: str | None = None  # lower case
    ignored: tuple[str, ...] = ()  # the Osiris keys present that have no effect, sorted

    def run_logs(self) -> str | None:
        if self.run_logs_dir is None:
            return None
        if self.base_path and not Path(self.run_logs_dir).is_absolute():
            return str(Path(self.base_path) / self.run_logs_dir)
        return self.run_logs_dir

    def apply_base_path(self) -> None:
        """Make relative pipeline paths resolve under ``base_path`` in this process and the ones
        it starts (components/_files.py reads the variable); a variable already set wins."""
        if self.base_path and not os.environ.get(BASE_PATH_ENV):
            os.environ[BASE_PATH_ENV] = self.base_path


def read_osiris_sections(
    data: dict[str, Any], file: str, line_of: Any
) -> tuple[OsirisSettings, list[Problem]]:
    """The Osiris keys of a loaded osiris.yaml mapping; ``line_of(key, ...)`` gives a key's line."""
    problems: list[Problem] = []
    ignored: list[str] = []
    values: dict[str, str] = {}

    def problem(message: str, *path: str, hint: str | None = None) -> None:
        problems.append(Problem(message, file=file, field=".".join(path), line=line_of(*path), hint=hint))

    if "version" in data and not isinstance(data["version"], str | int | float):
        problem("must be a version string such as '2.0'", "version")
    for section in OSIRIS_KEYS:
        if section == "version" or section not in data:
            continue
        if section not in _READ:
            ignored.append(section)
            continue
        content = data[section]
        if content is None:
            continue
        if not isinstance(content, dict):
            problem("must be a mapping", section)
            continue
        for key, value in content.items():
            if key not in _READ[section]:
                ignored.append(f"{section}.{key}")
            elif value is None or value == "":
                continue
            elif key == "level":
                if not isinstance(value, str) or value.upper() not in LOG_LEVELS:
                    problem(
                        f"invalid log level {value!r}", section, key, hint="one of: " + ", ".join(LOG_LEVELS)
                    )
                else:
                    values["log_level"] = value.lower()
            elif not isinstance(value, str):
                problem("must be a path string", section, key)
            else:
                values[key] = value
    base = values.get("base_path")
    return (
        OsirisSettings(
            base_path=os.path.abspath(os.path.expanduser(base)) if base else None,
            run_logs_dir=values.get("run_logs_dir"),
            log_level=values.get("log_level"),
            ignored=tuple(sorted(ignored)),
        ),
        problems,
    )


def why_ignored(key: str) -> str:
    return IGNORED.get(key, "not a setting this engine reads")


def ignored_warning(file: str, ignored: tuple[str, ...]) -> str | None:
    """The one line the commands print for an Osiris project's osiris.yaml, or None."""
    if not ignored:
        return None
    named = [f"{k} (not implemented yet)" if k == "observability" else k for k in ignored]
    return (
        f"{file}: these Osiris settings have no effect here: {', '.join(named)} "
        "(osiris-flight validate says why)"
    )


def ignored_notes(file: str, ignored: tuple[str, ...]) -> list[str]:
    """One note per ignored Osiris key, with the reason (``osiris-flight validate``)."""
    return [f"{file}: {key} has no effect here: {why_ignored(key)}" for key in ignored]
