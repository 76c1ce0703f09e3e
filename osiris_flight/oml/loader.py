"""Load an OML file into an ``OmlDocument``: structure checked, nothing resolved yet.

This is the structural half of validation: keys, types, ids, params and profiles. It knows nothing of
components, dependencies or the environment (that is compile's job), so it can report every
structural problem of a file in one go. JSON schemas describe the shape, so the valid keys live in
one place and errors say what is valid; version-specific rules (``depends_on`` is 0.2.0) and
cross-field rules (duplicate ids) are plain code.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from osiris_flight.errors import InvalidInput, Problem
from osiris_flight.oml.schema_errors import describe, format_path, schema_problems, type_name
from osiris_flight.oml.yaml_source import YamlPath, YamlSource, read_yaml

OML_VERSIONS = ("0.1.0", "0.2.0")
MODES = ("read", "transform", "write")
TOP_KEYS = ("oml_version", "name", "steps", "params", "profiles", "description", "metadata", "schedule")
# Keys from older drafts that Osiris rejects with a pointer to the right one.
FORBIDDEN_TOP_KEYS = {
    "version": "use 'oml_version'",
    "tasks": "use 'steps'",
    "connectors": "name connections in step config as '@family.alias' (osiris_connections.yaml)",
    "outputs": "write outputs as steps with mode: write",
}
PARAM_KEYS = ("default", "type", "description")
# Declared param types -> canonical name; CLI strings are coerced to these.
PARAM_TYPES = {
    "string": "string",
    "str": "string",
    "integer": "integer",
    "int": "integer",
    "number": "number",
    "float": "number",
    "boolean": "boolean",
    "bool": "boolean",
}
PARAM_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")

_DEPS = {"type": "array", "items": {"type": "string", "minLength": 1}}
_TOP_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["oml_version", "name", "steps"],
    "additionalProperties": False,
    "properties": {
        "oml_version": {"type": "string", "enum": list(OML_VERSIONS)},
        "name": {"type": "string", "minLength": 1},
        "steps": {"type": "array", "minItems": 1},
        "params": {"type": "object"},
        "profiles": {"type": "object", "additionalProperties": {"type": "object"}},
        "description": {},
        "metadata": {},
        "schedule": {},
    },
}


def _step_schema(version: str) -> dict[str, Any]:
    props: dict[str, Any] = {
        "id": {"type": "string", "minLength": 1},
        "component": {"type": "string", "minLength": 1},
        "mode": {"type": "string", "enum": list(MODES)},
        "config": {"type": "object"},
        "needs": _DEPS,
        "description": {"type": "string"},
    }
    if version != "0.1.0":
        props["depends_on"] = _DEPS
    return {
        "type": "object",
        "required": ["id", "component", "mode"],
        "additionalProperties": False,
        "properties": props,
    }


@dataclass(frozen=True)
class ParamDecl:
    """A declared param. ``type`` is canonical (string|integer|number|boolean) or None."""

    name: str
    default: Any = None
    has_default: bool = False
    type: str | None = None
    description: str | None = None

    def kind(self) -> str | None:
        """The declared type, else the default's (integer/number/boolean); None: any value, CLI strings."""
        if self.type:
            return self.type
        if isinstance(self.default, bool):
            return "boolean"
        if isinstance(self.default, int):
            return "integer"
        if isinstance(self.default, float):
            return "number"
        return None


@dataclass(frozen=True)
class RawStep:
    """A step as written. ``deps`` is the explicit dependency list (None when the step has none);
    ``deps_key`` is the key it came from (``needs`` or ``depends_on``), for messages."""

    index: int
    id: str
    component: str
    mode: str
    config: dict[str, Any]
    deps: tuple[str, ...] | None = None
    deps_key: str = "needs"
    description: str | None = None


@dataclass(frozen=True)
class OmlDocument:
    file: str
    sha256: str
    oml_version: str
    name: str
    steps: tuple[RawStep, ...]
    params: dict[str, ParamDecl] = field(default_factory=dict)
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)
    description: Any = None
    metadata: Any = None
    source: YamlSource | None = None

    def line_of(self, *path: str | int) -> int | None:
        """Line of a YAML path such as ``("steps", 2, "config", "query")``."""
        return self.source.line_of(path) if self.source else None

    def step_line(self, step: RawStep, *path: str | int) -> int | None:
        return self.line_of("steps", step.index, *path)


def load_oml(path: str | Path) -> OmlDocument:
    """Read and structurally validate an OML file; raise one InvalidInput listing every problem."""
    source, problems = read_yaml(path, "pipeline file")
    file, data = source.file, source.data
    if not isinstance(data, dict):
        got = "empty" if data is None else type_name(data)
        raise InvalidInput(
            Problem(
                f"the top level of an OML file must be a mapping, got {got}",
                file=file,
                line=source.line_of(()),
                hint="start with 'oml_version: 0.2.0', 'name: ...', 'steps: [...]'",
            )
        )

    for key, hint in FORBIDDEN_TOP_KEYS.items():
        if key in data:
            problems.append(
                Problem(
                    f"forbidden key '{key}'", file=file, field=key, hint=hint, line=source.line_of((key,))
                )
            )
    top = {k: v for k, v in data.items() if k not in FORBIDDEN_TOP_KEYS}
    problems += schema_problems(_TOP_SCHEMA, top, file=file, line_of=source.line_of)

    version = data.get("oml_version")
    version = version if version in OML_VERSIONS else OML_VERSIONS[-1]
    steps_raw = data.get("steps")
    steps = _load_steps(steps_raw, version, source, problems) if isinstance(steps_raw, list) else []
    problems = [_name_step(p, steps_raw) for p in problems]
    params = _load_params(data.get("params"), source, problems)
    profiles = _load_profiles(data.get("profiles"), params, source, problems)
    if problems:
        raise InvalidInput(problems)
    return OmlDocument(
        file=file,
        sha256=source.sha256,
        oml_version=str(data["oml_version"]),
        name=str(data["name"]),
        steps=tuple(steps),
        params=params,
        profiles=profiles,
        description=data.get("description"),
        metadata=data.get("metadata"),
        source=source,
    )


_STEP_FIELD = re.compile(r"^steps\[(\d+)\]\.?(.*)$")


def _name_step(problem: Problem, steps: Any) -> Problem:
    """``field 'steps[3].config.x'`` -> ``step 'join', field 'config.x'`` when step 3 has an id."""
    match = _STEP_FIELD.match(problem.field or "")
    if problem.step or not match or not isinstance(steps, list):
        return problem
    index = int(match.group(1))
    step = steps[index] if index < len(steps) else None
    step_id = step.get("id") if isinstance(step, dict) else None
    if not isinstance(step_id, str) or not step_id:
        return problem
    return replace(problem, step=step_id, field=match.group(2) or None)


def _load_steps(raw: list[Any], version: str, src: YamlSource, problems: list[Problem]) -> list[RawStep]:
    schema = _step_schema(version)
    first_seen: dict[str, int] = {}
    steps = [_load_step(i, item, version, schema, src, problems, first_seen) for i, item in enumerate(raw)]
    return [s for s in steps if s is not None]


def _load_step(
    index: int,
    item: Any,
    version: str,
    schema: dict[str, Any],
    src: YamlSource,
    problems: list[Problem],
    first_seen: dict[str, int],
) -> RawStep | None:
    """Check one step; None when it is too broken to build (its problems are already reported)."""
    where: YamlPath = ("steps", index)
    if not isinstance(item, dict):
        problems.append(
            Problem(
                f"a step must be a mapping, got {type_name(item)}",
                file=src.file,
                field=format_path(where),
                line=src.line_of(where),
                hint="a step has id, component, mode and config",
            )
        )
        return None
    step_id = item.get("id")
    step = step_id if isinstance(step_id, str) and step_id else None
    # A step without a usable id is named by its position instead: steps[3].mode
    prefix: YamlPath = () if step else where

    def located(message: str, key: str, hint: str) -> Problem:
        return Problem(
            message,
            file=src.file,
            step=step,
            field=format_path((*prefix, key)),
            hint=hint,
            line=src.line_of((*where, key)),
        )

    body = dict(item)
    if version == "0.1.0" and "depends_on" in body:
        body.pop("depends_on")
        problems.append(
            located(
                "'depends_on' is not part of OML 0.1.0",
                "depends_on",
                "use 'needs' (or set oml_version: 0.2.0)",
            )
        )
    problems += schema_problems(
        schema, body, file=src.file, step=step, prefix=prefix, line_prefix=where, line_of=src.line_of
    )
    if "needs" in body and "depends_on" in body:
        problems.append(
            located("both 'needs' and 'depends_on' are given", "depends_on", "they are synonyms; keep one")
        )
    if "depends_on" in body or "needs" in body:
        deps_key = "depends_on" if "depends_on" in body else "needs"
    else:
        deps_key = "needs" if version == "0.1.0" else "depends_on"
    deps = body.get(deps_key)
    if isinstance(deps, list):
        for dep in sorted({d for d in deps if isinstance(d, str) and deps.count(d) > 1}):
            problems.append(located(f"'{dep}' is listed more than once", deps_key, "list each input once"))
    if step is not None:
        if step in first_seen:
            problems.append(
                located(
                    f"duplicate step id '{step}'",
                    "id",
                    f"first used by step #{first_seen[step] + 1}; ids must be unique",
                )
            )
        first_seen.setdefault(step, index)
    complete = all(isinstance(body.get(k), str) for k in ("id", "component", "mode"))
    if not complete or not isinstance(body.get("config", {}), dict):
        return None
    description = body.get("description")
    return RawStep(
        index=index,
        id=body["id"],
        component=body["component"],
        mode=body["mode"],
        config=dict(body.get("config") or {}),
        deps=tuple(deps) if isinstance(deps, list) else None,
        deps_key=deps_key,
        description=description if isinstance(description, str) else None,
    )


def _load_params(raw: Any, src: YamlSource, problems: list[Problem]) -> dict[str, ParamDecl]:
    """``params: {n: 5}`` or ``params: {n: {default: 5, type: int, description: ...}}``."""
    if not isinstance(raw, dict):
        return {}
    decls: dict[str, ParamDecl] = {}
    for name, spec in raw.items():
        where: YamlPath = ("params", name)

        def report(
            message: str, key: str | None = None, hint: str | None = None, *, _w: YamlPath = where
        ) -> None:
            path = (*_w, key) if key else _w
            problems.append(
                Problem(message, file=src.file, field=format_path(path), hint=hint, line=src.line_of(path))
            )

        if not PARAM_NAME.match(str(name)):
            report(f"param name '{name}' is not valid", hint="use letters, digits, '_' and '-'")
            continue
        if not isinstance(spec, dict):
            decls[name] = ParamDecl(name, default=spec, has_default=True)
            continue
        for key in spec:
            if key not in PARAM_KEYS:
                report(
                    f"unknown key '{key}' in param declaration", key, "valid keys: " + ", ".join(PARAM_KEYS)
                )
        declared = spec.get("type")
        canonical = PARAM_TYPES.get(declared) if isinstance(declared, str) else None
        if declared is not None and canonical is None:
            report(f"unknown param type {declared!r}", "type", "expected one of: " + ", ".join(PARAM_TYPES))
        description = spec.get("description")
        decl = ParamDecl(
            name,
            default=spec.get("default"),
            has_default="default" in spec,
            type=canonical,
            description=description if isinstance(description, str) else None,
        )
        if decl.has_default and decl.default is not None and not value_fits(decl.default, canonical):
            report(f"default is {type_name(decl.default)} but the param is declared {canonical}", "default")
        decls[name] = decl
    return decls


def _load_profiles(
    raw: Any, params: Mapping[str, ParamDecl], src: YamlSource, problems: list[Problem]
) -> dict[str, dict[str, Any]]:
    """``profiles: {prod: {n: 10}}``; Osiris's ``{prod: {params: {n: 10}}}`` is accepted as well."""
    if not isinstance(raw, dict):
        return {}
    profiles: dict[str, dict[str, Any]] = {}
    for name, overrides in raw.items():
        if not isinstance(overrides, dict):
            continue  # reported by the schema
        base: YamlPath = ("profiles", name)
        if set(overrides) == {"params"} and isinstance(overrides["params"], dict) and "params" not in params:
            overrides, base = overrides["params"], (*base, "params")
        for key, value in overrides.items():
            path = (*base, key)
            decl = params.get(key)
            if decl is None:
                problems.append(
                    Problem(
                        f"profile '{name}' sets undeclared param '{key}'",
                        file=src.file,
                        field=format_path(path),
                        line=src.line_of(path),
                        hint="declared params: "
                        + (", ".join(params) if params else "none (add a 'params' section)"),
                    )
                )
            elif value is not None and not value_fits(value, decl.kind()):
                problems.append(
                    Problem(
                        f"profile '{name}' sets param '{key}' to {type_name(value)}",
                        hint=f"expected {describe({'type': decl.kind()})}",
                        file=src.file,
                        field=format_path(path),
                        line=src.line_of(path),
                    )
                )
        profiles[name] = dict(overrides)
    return profiles


def value_fits(value: Any, param_type: str | None) -> bool:
    """Does a YAML value match a canonical param type? (An int is a fine ``number``.)"""
    if param_type is None:
        return True
    if param_type == "boolean":
        return isinstance(value, bool)
    if param_type == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if param_type == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, str)
