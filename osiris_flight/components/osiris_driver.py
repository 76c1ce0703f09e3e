"""Osiris-style drivers on this engine: a driver class becomes a ComponentSpec.

An Osiris component is a spec (``components/<name>/spec.yaml``: ``name``, ``modes``,
``configSchema``, ``x-runtime.driver`` = ``package.module.Class``) plus a driver class whose
``run(*, step_id, config, inputs, ctx) -> dict`` does the work (``osiris/core/driver.py``). This
module gives such a driver what Osiris's runner (``osiris/core/runner_v0.py``) gives it:

* ``config``: the step's config with ``connection`` replaced by ``resolved_connection`` (the
  resolved ``@family.alias`` fields, secrets included) and ``mode`` set to the component mode
  (``extract`` / ``transform`` / ``write``) unless the config has its own ``mode``.
* ``inputs``: None for a step without inputs; otherwise, per upstream step, ``inputs[step_id] =
  {"df": DataFrame}`` and ``inputs["df_<sanitized id>"] = DataFrame`` (``step_names``).
* ``ctx``: ``output_dir`` (the step's artifacts directory, created) and ``log_metric(name, value,
  **tags)`` (ADR-0042's whole contract), plus ``log_event(name, **fields)``.
* The result: ``{"df": DataFrame}`` from an extractor or a transform, which becomes the step's
  output stream; a writer returns ``{}``.

Osiris drivers are not streaming: every input is materialized as one pandas DataFrame before
``run`` is called, and the result DataFrame is held whole. Memory is about twice the input plus
the output; size the workers for it, or write a native streaming component for big data. A writer
driver commits as its own code does, so a retried attempt may write again: the engine's atomic and
idempotent guarantees hold only for native sinks.

Register drivers from a plugin module's ``COMPONENTS`` list: ``osiris_component(name, driver=...,
mode=..., config_schema=...)`` for a driver class, or ``load_osiris_spec(path)`` /
``load_osiris_components(root)`` for Osiris spec directories as they are.
"""

from __future__ import annotations

import importlib
import json
import re
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import yaml

from osiris_flight.components import _files
from osiris_flight.components.base import (
    ComponentSpec,
    Operator,
    Role,
    Sink,
    Source,
    StepContext,
    Transform,
    WriteResult,
)
from osiris_flight.components.step_names import dataframe_keys
from osiris_flight.data.rowstream import RowStream
from osiris_flight.errors import InvalidInput, Problem, TaskError, TerminalError, TransientError, is_transient
from osiris_flight.redaction import scrub, secret_values

# OML step modes and Osiris component-spec modes -> this engine's role.
ROLE_OF_MODE: dict[str, Role] = {
    "read": "source",
    "extract": "source",
    "transform": "transform",
    "write": "sink",
    "load": "sink",  # Osiris's deprecated name of write
}
# What Osiris's compiler writes into a step's config as ``mode`` (ModeMapper.to_component_mode).
COMPONENT_MODE: dict[Role, str] = {"source": "extract", "transform": "transform", "sink": "write"}
# Metrics the engine reports itself for a step of this role (see cluster.run_tracker).
ENGINE_METRICS: dict[Role, frozenset[str]] = {
    "source": frozenset({"rows_read"}),
    "transform": frozenset(),
    "sink": frozenset({"rows_written"}),
}
# Spec modes that do not run in a pipeline (discovery, ad-hoc analysis).
NON_RUNNING_MODES = frozenset({"discover", "analyze", "stream"})
# Upper bound of inputs of a transform driver (the planner needs one).
MAX_INPUTS = 256
_DRIVER_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$")
_CONNECTION_PROPERTY = {
    "type": "string",
    "pattern": r"^@[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)?$",
    "description": "Connection '@family.alias' from osiris_connections.yaml; the driver receives its "
    "resolved fields as config.resolved_connection.",
}

DriverFactory = Callable[[], Any]


class DriverContext:
    """The ``ctx`` a driver gets: the Osiris contract (``output_dir``, ``log_metric``) and
    ``log_event``; ``step_id`` and ``run_id`` are extras for logging."""

    def __init__(self, ctx: StepContext, engine_metrics: frozenset[str] = frozenset()) -> None:
        self._ctx = ctx
        self._engine_metrics = engine_metrics
        self.step_id = ctx.step_id
        self.run_id = ctx.run_id
        self.output_dir = Path(ctx.output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)

    def log_metric(self, name: str, value: Any, **tags: Any) -> None:
        """A metric tagged with ``step``. A non-numeric value (Osiris allows strings), or a metric
        the engine itself reports for this step (``rows_read`` of an extractor, ``rows_written`` of
        a writer: one record per step in metrics.jsonl), is recorded as a ``driver_metric`` event."""
        tags = {k: _plain(v) for k, v in tags.items()}
        tags.setdefault("step", self.step_id)
        if isinstance(value, int | float) and name not in self._engine_metrics:  # bool is an int
            self._ctx.log_metric(str(name), float(value), **tags)
        else:
            self._ctx.log_event("driver_metric", metric=str(name), value=_plain(value), **tags)

    def log_event(self, name: str, **fields: Any) -> None:
        fields = {k: _plain(v) for k, v in fields.items()}
        fields.setdefault("step_id", self.step_id)
        self._ctx.log_event(str(name), **fields)


def _plain(value: Any) -> Any:
    """A value that survives msgpack on the control plane (anything else becomes its str)."""
    return value if value is None or isinstance(value, str | int | float | bool) else str(value)


# -- the operators -------------------------------------------------------------------------------
class _DriverOperator(Operator):
    """Shared by the three roles; ``driver_factory`` and ``driver_name`` are set per component."""

    driver_factory: DriverFactory
    driver_name: str
    role: Role

    def _run(self, inputs: Mapping[str, RowStream] | None) -> dict[str, Any]:
        ctx = self.ctx
        ctx.check_cancelled()
        config = driver_config(ctx, self.role)
        frames = None if inputs is None else driver_inputs(inputs)
        try:
            driver = type(self).driver_factory()
            driver_ctx = DriverContext(ctx, ENGINE_METRICS[self.role])
            result = driver.run(step_id=ctx.step_id, config=config, inputs=frames, ctx=driver_ctx)
        except TaskError:
            raise
        except Exception as exc:
            raise self._failure(exc, config) from None
        ctx.check_cancelled()
        if result is None:
            return {}
        if not isinstance(result, Mapping):
            raise TerminalError(
                f"step '{ctx.step_id}': Osiris driver {self.driver_name} returned "
                f"{type(result).__name__}, not a dict such as {{'df': DataFrame}}"
            )
        return dict(result)

    def _failure(self, exc: Exception, config: Mapping[str, Any]) -> TaskError:
        """The driver's error as a task error: its type and message, any connection secret masked."""
        text = scrub(f"{type(exc).__name__}: {exc}", secret_values(config))
        message = f"step '{self.ctx.step_id}': Osiris driver {self.driver_name} failed: {text}"
        return TransientError(message) if is_transient(exc) else TerminalError(message)

    def _output(self, result: Mapping[str, Any]) -> RowStream:
        ctx = self.ctx
        frame = result.get("df")
        if isinstance(frame, pa.Table):
            table = frame
        elif isinstance(frame, pd.DataFrame):
            try:
                table = pa.Table.from_pandas(frame, preserve_index=False)
            except (pa.ArrowException, ValueError, TypeError) as exc:
                raise TerminalError(
                    f"step '{ctx.step_id}': the DataFrame returned by Osiris driver {self.driver_name} "
                    f"cannot become Arrow: {exc}"
                ) from None
        else:
            got = "no 'df'" if frame is None else f"'df' of type {type(frame).__name__}"
            raise TerminalError(
                f"step '{ctx.step_id}': Osiris driver {self.driver_name} returned {got}; an extractor "
                "or a transform returns {'df': pandas.DataFrame}"
            )
        batches = table.to_batches(max_chunksize=ctx.batch_rows)
        return RowStream(batches, table.schema, estimated_rows=table.num_rows, name=ctx.step_id)


class DriverSource(_DriverOperator, Source):
    role: Role = "source"

    def open(self) -> RowStream:
        return self._output(self._run(None))


class DriverTransform(_DriverOperator, Transform):
    role: Role = "transform"

    def apply(self, inputs: Mapping[str, RowStream]) -> RowStream:
        return self._output(self._run(inputs))


class DriverSink(_DriverOperator, Sink):
    role: Role = "sink"

    def write(self, stream: RowStream) -> WriteResult:
        rows = [0]

        def counting() -> Any:
            for batch in stream.batches():
                rows[0] += batch.num_rows
                yield batch

        counted = RowStream(counting(), stream.schema, name=stream.name)
        self._run({_upstream_id(stream, self.ctx): counted})
        cfg = self.config
        target = str(cfg.get("path") or cfg.get("table") or self.ctx.step_id)
        return WriteResult(rows=rows[0], target=target)


_OPERATORS: dict[Role, type[_DriverOperator]] = {
    "source": DriverSource,
    "transform": DriverTransform,
    "sink": DriverSink,
}


def _upstream_id(stream: RowStream, ctx: StepContext) -> str:
    """A sink sees one stream; its name is the upstream step id (the runtime names streams so)."""
    return stream.name if stream.name and stream.name != "stream" else f"{ctx.step_id}_input"


def driver_config(ctx: StepContext, role: Role) -> dict[str, Any]:
    """The config a driver receives, built the way Osiris's compiler and runner build it."""
    config: dict[str, Any] = {"mode": COMPONENT_MODE[role], **ctx.config}
    if isinstance(config.get("path"), str):  # Osiris's filesystem drivers: held to the file roots too
        _files.resolve_path(ctx, config["path"])
    ref = config.pop("connection", None)
    if isinstance(ref, str) and ref.startswith("@"):
        try:
            config["resolved_connection"] = dict(ctx.connection(ref))
        except KeyError as exc:
            raise TerminalError(f"step '{ctx.step_id}': {exc.args[0]}") from None
    elif isinstance(ref, Mapping):  # an inline connection mapping, resolved by the runtime already
        config["resolved_connection"] = dict(ref)
    return config


def driver_inputs(streams: Mapping[str, RowStream]) -> dict[str, Any]:
    """Materialize each input as one DataFrame, keyed as Osiris's runner keys them."""
    keys = dataframe_keys(streams)
    inputs: dict[str, Any] = {}
    frames = {step_id: stream.to_table().to_pandas() for step_id, stream in streams.items()}
    for step_id, frame in frames.items():
        inputs[step_id] = {"df": frame}
    for step_id, frame in frames.items():
        inputs[keys[step_id]] = frame
    return inputs


# -- building specs ------------------------------------------------------------------------------
def osiris_component(
    name: str,
    *,
    driver: type | str | DriverFactory,
    mode: str,
    config_schema: Mapping[str, Any] | None = None,
    description: str = "",
    connection_fields: tuple[str, ...] = (),
    min_inputs: int | None = None,
    max_inputs: int | None = None,
) -> ComponentSpec:
    """A ComponentSpec running an Osiris driver.

    ``driver`` is the driver class, its dotted path (``package.module.Class``, imported on first
    use, as Osiris's ``x-runtime.driver``) or a zero-argument factory returning a driver. ``mode``
    is an OML mode (read, transform, write) or an Osiris spec mode (extract, transform, write).
    ``config_schema`` is the driver's JSON schema (Osiris ``configSchema``; default: any object);
    ``connection`` is always accepted, and the fields in ``connection_fields`` are not required
    in the step config, since the connection supplies them. Inputs: a source none, a sink one, a
    transform 1..MAX_INPUTS unless given.
    """
    role = ROLE_OF_MODE.get(mode)
    if role is None:
        raise ValueError(f"Osiris component {name!r}: mode {mode!r} is not one of {sorted(ROLE_OF_MODE)}")
    factory, driver_name = _factory(name, driver)
    operator = type(
        f"OsirisDriver[{name}]",
        (_OPERATORS[role],),
        {"driver_factory": staticmethod(factory), "driver_name": driver_name, "__module__": __name__},
    )
    low, high = {"source": (0, 0), "transform": (1, MAX_INPUTS), "sink": (1, 1)}[role]
    return ComponentSpec(
        name=name,
        role=role,
        operator=operator,
        config_schema=adapt_config_schema(config_schema, connection_fields),
        description=description or f"Osiris driver {driver_name} (materializes its inputs as DataFrames).",
        min_inputs=low if min_inputs is None else min_inputs,
        max_inputs=high if max_inputs is None else max_inputs,
    )


def adapt_config_schema(
    schema: Mapping[str, Any] | None, connection_fields: tuple[str, ...] = ()
) -> dict[str, Any]:
    """The driver's config schema, accepting ``connection`` the way Osiris's runner does."""
    adapted: dict[str, Any] = json.loads(json.dumps(dict(schema or {"type": "object"})))
    if adapted.get("type", "object") == "object":
        properties = adapted.setdefault("properties", {})
        properties.setdefault("connection", dict(_CONNECTION_PROPERTY))
        if connection_fields and isinstance(adapted.get("required"), list):
            adapted["required"] = [k for k in adapted["required"] if k not in connection_fields]
    return adapted


def _factory(name: str, driver: type | str | DriverFactory) -> tuple[DriverFactory, str]:
    if isinstance(driver, str):
        if not _DRIVER_PATH.match(driver):
            raise ValueError(
                f"Osiris component {name!r}: driver {driver!r} is not a 'package.module.Class' path"
            )
        return _LazyClass(driver), driver
    if isinstance(driver, type):
        if not callable(getattr(driver, "run", None)):
            raise ValueError(f"Osiris component {name!r}: driver {driver.__qualname__} has no run() method")
        return driver, f"{driver.__module__}.{driver.__qualname__}"
    if callable(driver):
        return driver, getattr(driver, "__qualname__", repr(driver))
    raise ValueError(f"Osiris component {name!r}: driver must be a class, a dotted path or a factory")


class _LazyClass:
    """Imports ``package.module.Class`` on first call (on the worker), then instantiates it."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._cls: type | None = None
        self._lock = threading.Lock()

    def __call__(self) -> Any:
        with self._lock:
            if self._cls is None:
                module_name, class_name = self.path.rsplit(".", 1)
                try:
                    cls = getattr(importlib.import_module(module_name), class_name)
                except (ImportError, AttributeError) as exc:
                    raise TerminalError(f"cannot load Osiris driver {self.path}: {exc}") from None
                if not isinstance(cls, type) or not callable(getattr(cls, "run", None)):
                    raise TerminalError(f"Osiris driver {self.path} is not a class with a run() method")
                self._cls = cls
        return self._cls()


# -- Osiris spec files ---------------------------------------------------------------------------
SPEC_FILES = ("spec.yaml", "spec.yml", "spec.json")


def load_osiris_spec(path: str | Path) -> ComponentSpec:
    """A ComponentSpec from an Osiris component spec (a spec.yaml/spec.json, or its directory).

    Used: ``name``, ``modes`` (the runnable one: extract, transform or write; discover is ignored),
    ``configSchema``, ``x-runtime.driver``, ``description``/``title``, and as connection-supplied
    fields the names in ``x-connection-fields`` and the top-level keys of ``secrets`` pointers.
    Problems are reported as InvalidInput naming the file and the field.
    """
    file = _spec_file(Path(path))
    where = str(file)
    try:
        text = file.read_text(encoding="utf-8")
        spec = json.loads(text) if file.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise InvalidInput(Problem(f"cannot read Osiris component spec: {exc}", file=where)) from None
    if not isinstance(spec, dict):
        raise InvalidInput(Problem("an Osiris component spec must be a mapping", file=where))
    problems: list[Problem] = []
    name = spec.get("name", file.parent.name)
    if not isinstance(name, str) or not name:
        problems.append(Problem("'name' must be a non-empty string", file=where, field="name"))
    modes = spec.get("modes")
    listed: list[Any] = modes if isinstance(modes, list) else []
    roles = sorted({ROLE_OF_MODE[m] for m in listed if m in ROLE_OF_MODE})
    unknown = [m for m in listed if m not in ROLE_OF_MODE and m not in NON_RUNNING_MODES]
    if len(roles) != 1 or unknown:
        problems.append(
            Problem(
                f"'modes' must hold exactly one runnable mode, got {modes!r}",
                file=where,
                field="modes",
                hint="one of extract, transform, write (discover may be listed too)",
            )
        )
    schema = spec.get("configSchema", {"type": "object"})
    if not isinstance(schema, dict):
        problems.append(
            Problem("'configSchema' must be a JSON schema mapping", file=where, field="configSchema")
        )
    runtime = spec.get("x-runtime")
    driver = runtime.get("driver") if isinstance(runtime, dict) else None
    if not isinstance(driver, str) or not _DRIVER_PATH.match(driver):
        problems.append(
            Problem(
                "'x-runtime.driver' must name the driver class as package.module.Class",
                file=where,
                field="x-runtime.driver",
            )
        )
    if problems:
        raise InvalidInput(problems)
    assert isinstance(driver, str) and isinstance(schema, dict)
    return osiris_component(
        str(name),
        driver=driver,
        mode=COMPONENT_MODE[roles[0]],
        config_schema=schema,
        description=str(spec.get("description") or spec.get("title") or ""),
        connection_fields=_connection_fields(spec),
    )


def load_osiris_components(root: str | Path) -> list[ComponentSpec]:
    """Every ``<root>/<component>/spec.yaml`` (Osiris's ``components/`` layout), sorted by directory."""
    base = Path(root)
    if not base.is_dir():
        raise InvalidInput(Problem(f"Osiris components directory {base} does not exist", field="plugins"))
    return [
        load_osiris_spec(d)
        for d in sorted(p for p in base.iterdir() if p.is_dir())
        if any((d / f).is_file() for f in SPEC_FILES)
    ]


def _spec_file(path: Path) -> Path:
    if path.is_dir():
        for name in SPEC_FILES:
            if (path / name).is_file():
                return path / name
        raise InvalidInput(Problem(f"no spec.yaml or spec.json in {path}", file=str(path)))
    return path


def _connection_fields(spec: Mapping[str, Any]) -> tuple[str, ...]:
    fields: list[str] = []
    for item in spec.get("x-connection-fields") or []:
        if isinstance(item, Mapping) and isinstance(item.get("name"), str):
            fields.append(item["name"])
        elif isinstance(item, str):
            fields.append(item)
    for pointer in spec.get("secrets") or []:
        if isinstance(pointer, str) and pointer.startswith("/") and pointer.count("/") == 1:
            fields.append(pointer[1:])
    return tuple(dict.fromkeys(fields))
