"""Engine and cluster configuration: ``osiris.yaml`` (optional), overridden by CLI flags.

```yaml
engine:
  memory_limit_mb: 512      # batch-store budget of the whole local cluster (split over its workers)
  workers: 2                # local worker processes (default: one per CPU)
  slots_per_worker: 2       # tasks a worker runs at once
  batch_rows: 65536         # target rows per Arrow batch
  max_attempts: 3           # counted failures before a task fails the run
  heartbeat_interval_s: 1.0
  heartbeat_misses: 3       # a worker is dead after this many silent intervals
  spill_dir: null           # default: a temp directory per worker
  spill_compression: lz4    # lz4 (fastest) | zstd (smallest) | none
  flight_compression: none  # do_get streams between workers: none (loopback, fast LAN) | lz4 | zstd
  shrink_batches: true      # hold batches dictionary-encoded / narrowed (same data out; see shrink.py)
  optimize: true            # push filters and column lists into MySQL reads (docs/optimizer.md)
  file_roots: null          # workers: the only directories file steps may read and write, e.g.
                            #   [/srv/osiris/data]; null = anywhere the worker's user can (docs/running.md)
cluster:
  coordinator: null         # tcp://host:port of a running osiris-coordinator; null = embedded cluster
  curve_secret_key: null    # CurveZMQ (docs/running.md): this process's NAME.key_secret
  curve_server_key: null    # workers and clients: the coordinator's public NAME.key
  curve_authorized_keys: null  # coordinator: accepted public keys in workers/, clients/, admins/
  tls_cert: null            # workers: Flight TLS certificate, its key and the cluster CA
  tls_key: null             #   (osiris-flight keys tls DIR writes worker.pem, worker.key, ca.pem)
  tls_ca: null
  fetch_token_ttl_s: 86400  # coordinator: lifetime of the Flight fetch tokens it mints
run_logs: run_logs
connections_file: null      # default: $OSIRIS_CONNECTIONS_FILE, then ./osiris_connections.yaml
plugins: []                 # modules with extra COMPONENTS
```

The Osiris sections of the file ``osiris init`` writes are accepted next to these
(``osiris_settings.py`` says which are read); any other top-level key is an error.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from osiris_flight.errors import InvalidInput, Problem
from osiris_flight.osiris_settings import OSIRIS_KEYS, OsirisSettings, read_osiris_sections

DEFAULT_CONFIG_FILE = "osiris.yaml"


@dataclass(frozen=True)
class EngineConfig:
    memory_limit_mb: int = 512
    workers: int = field(default_factory=lambda: max(1, os.cpu_count() or 1))
    slots_per_worker: int = 2
    batch_rows: int = 65536
    max_attempts: int = 3
    heartbeat_interval_s: float = 1.0
    heartbeat_misses: int = 3
    spill_dir: str | None = None
    spill_compression: str = "lz4"
    flight_compression: str = "none"
    shrink_batches: bool = True
    optimize: bool = True  # the query optimizer (oml/optimize.py) between compile and plan
    # Workers: file components open paths only inside these directories (components/_files.py);
    # None: anywhere the worker's OS user can.
    file_roots: tuple[str, ...] | None = None

    @property
    def memory_limit_bytes(self) -> int:
        return self.memory_limit_mb * 1024 * 1024


@dataclass(frozen=True)
class ClusterConfig:
    coordinator: str | None = None
    # CurveZMQ key files (cluster/curve.py): this process's NAME.key_secret, the coordinator's
    # public NAME.key (workers, clients), the directory of accepted public keys (coordinator).
    curve_secret_key: str | None = None
    curve_server_key: str | None = None
    curve_authorized_keys: str | None = None
    # Flight over mutual TLS (data/tls.py): a worker's certificate, its key, the cluster CA.
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_ca: str | None = None
    fetch_token_ttl_s: float = 86400.0  # data/fetch_token.py: why this long


@dataclass(frozen=True)
class Config:
    engine: EngineConfig = field(default_factory=EngineConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    run_logs: str = "run_logs"
    connections_file: str | None = None
    plugins: tuple[str, ...] = ()
    source: str | None = None
    osiris: OsirisSettings = field(default_factory=OsirisSettings)  # the Osiris sections


_POSITIVE = {
    "memory_limit_mb",
    "workers",
    "slots_per_worker",
    "batch_rows",
    "max_attempts",
    "heartbeat_interval_s",
    "heartbeat_misses",
    "fetch_token_ttl_s",
}
_PATH_LISTS = {"file_roots"}
_CHOICES = {"spill_compression": ("zstd", "lz4", "none"), "flight_compression": ("none", "lz4", "zstd")}


LineOf = Callable[..., "int | None"]


def _section(cls: type, data: Any, file: str, name: str, line_of: LineOf) -> Any:
    if data is None:
        return cls()
    if not isinstance(data, dict):
        raise InvalidInput(Problem("must be a mapping", file=file, field=name, line=line_of(name)))
    known = {f.name: f for f in fields(cls)}
    problems: list[Problem] = []
    values: dict[str, Any] = {}
    defaults = cls()
    for key, value in data.items():
        where = f"{name}.{key}"
        line = line_of(name, key)
        if key not in known:
            problems.append(
                Problem(
                    "unknown key",
                    file=file,
                    field=where,
                    line=line,
                    hint="valid keys: " + ", ".join(sorted(known)),
                )
            )
            continue
        expected = type(getattr(defaults, key))
        if value is None and getattr(defaults, key) is None:
            values[key] = None
            continue
        if key in _PATH_LISTS:
            if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                problems.append(Problem(f"expected a list of paths, got {value!r}", file=file, field=where))
            else:
                values[key] = tuple(value)
            continue
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if getattr(defaults, key) is None:
            expected = str
        if not isinstance(value, expected) or isinstance(value, bool) != (expected is bool):
            problems.append(
                Problem(f"expected {expected.__name__}, got {value!r}", file=file, field=where, line=line)
            )
            continue
        if key in _POSITIVE and value <= 0:
            problems.append(Problem(f"must be positive, got {value!r}", file=file, field=where, line=line))
            continue
        if key in _CHOICES and value not in _CHOICES[key]:
            problems.append(
                Problem(
                    f"invalid value {value!r}",
                    file=file,
                    field=where,
                    line=line,
                    hint="expected one of: " + ", ".join(_CHOICES[key]),
                )
            )
            continue
        values[key] = value
    if problems:
        raise InvalidInput(problems)
    return replace(defaults, **values)


def _line_index(text: str) -> dict[tuple[str, ...], int]:
    """Line (1-based) of each top-level key and of each key one level below it."""
    lines: dict[tuple[str, ...], int] = {}
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:  # safe_load already accepted the text; a line is a nicety
        return lines
    if not isinstance(root, yaml.MappingNode):
        return lines
    for key, value in root.value:
        lines[(str(key.value),)] = key.start_mark.line + 1
        if isinstance(value, yaml.MappingNode):
            for sub, _ in value.value:
                lines[(str(key.value), str(sub.value))] = sub.start_mark.line + 1
    return lines


OWN_KEYS = ("engine", "cluster", "run_logs", "connections_file", "plugins")


def _unknown_key_hint(key: str) -> str:
    close = difflib.get_close_matches(key, (*OWN_KEYS, *OSIRIS_KEYS), n=1)
    valid = f"valid keys: {', '.join(OWN_KEYS)}, and Osiris's: {', '.join(sorted(OSIRIS_KEYS))}"
    return (f"did you mean '{close[0]}'? " if close else "") + valid


def load_config(path: str | Path | None = None) -> Config:
    """Read ``path`` (or ./osiris.yaml when present); a missing default file means all defaults."""
    if path is None:
        if not Path(DEFAULT_CONFIG_FILE).exists():
            return Config()
        path = DEFAULT_CONFIG_FILE
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
        data = yaml.safe_load(text)
    except FileNotFoundError:
        raise InvalidInput(Problem("config file not found", file=file)) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise InvalidInput(
            Problem(
                f"YAML syntax error: {getattr(exc, 'problem', exc)}",
                file=file,
                line=mark.line + 1 if mark else None,
            )
        ) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InvalidInput(Problem("top level must be a mapping", file=file))
    index = _line_index(text)

    def line_of(*key: str) -> int | None:
        return index.get(tuple(key)) or index.get(tuple(key[:1]))

    unknown = [str(k) for k in data if k not in OWN_KEYS and k not in OSIRIS_KEYS]
    if unknown:
        raise InvalidInput(
            [
                Problem(
                    "unknown key",
                    file=file,
                    field=k,
                    line=line_of(k),
                    hint=_unknown_key_hint(k),
                )
                for k in unknown
            ]
        )
    osiris, problems = read_osiris_sections(data, file, line_of)
    plugins = data.get("plugins") or []
    if not isinstance(plugins, list) or not all(isinstance(p, str) for p in plugins):
        problems.append(
            Problem("must be a list of module names", file=file, field="plugins", line=line_of("plugins"))
        )
    for key in ("run_logs", "connections_file"):
        if data.get(key) is not None and not isinstance(data[key], str):
            problems.append(Problem("must be a path string", file=file, field=key, line=line_of(key)))
    run_logs = data.get("run_logs")
    if isinstance(run_logs, str) and osiris.run_logs_dir is not None and run_logs != osiris.run_logs_dir:
        problems.append(
            Problem(
                f"run_logs ({run_logs!r}) and filesystem.run_logs_dir ({osiris.run_logs_dir!r}) disagree",
                file=file,
                field="run_logs",
                line=line_of("run_logs"),
                hint="set one of them",
            )
        )
    if problems:
        raise InvalidInput(problems)
    if not isinstance(run_logs, str) or osiris.base_path:
        run_logs = osiris.run_logs() or run_logs
    return Config(
        engine=_section(EngineConfig, data.get("engine"), file, "engine", line_of),
        cluster=_section(ClusterConfig, data.get("cluster"), file, "cluster", line_of),
        run_logs=run_logs or "run_logs",
        connections_file=data.get("connections_file"),
        plugins=tuple(plugins),
        source=file,
        osiris=osiris,
    )


def with_overrides(config: Config, **engine: Any) -> Config:
    """Apply CLI flags (None means 'not given')."""
    given = {k: v for k, v in engine.items() if v is not None}
    return replace(config, engine=replace(config.engine, **given)) if given else config
