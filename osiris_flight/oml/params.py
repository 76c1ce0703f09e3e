"""Param values (defaults < profile < ``--param``) and their substitution into step configs.

Params and environment variables are resolved at compile time so that the manifest says exactly what
will run. The exception is secrets: a value under a secret-looking key (``password``, ``api_key``,
...) or inside an inline ``connection:`` mapping keeps its ``${VAR}`` in the manifest and is filled
at run time by ``connections.resolve_runtime_config``; compile still checks the variable is set.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from typing import Any

from osiris_flight.errors import InvalidInput, Problem
from osiris_flight.oml.interpolate import ESCAPE_HINT, Unresolved, param_names, substitute
from osiris_flight.oml.loader import OmlDocument, RawStep
from osiris_flight.oml.schema_errors import format_path, valid_choices_hint
from osiris_flight.redaction import is_deferred, is_secret_key

# Params are written into the manifest (they are what the run was compiled with), so a secret must
# come another way: the worker fills ${VAR} in a secret field from its environment at run time.
SECRET_PARAM_HINT = (
    "params are written into the manifest; pass a secret as ${VAR} in a secret field (filled from the"
    " environment at run time) or through osiris_connections.yaml"
)
_TRUE = {"true", "yes", "y", "on", "1"}
_FALSE = {"false", "no", "n", "off", "0"}


def parse_param_args(items: Iterable[str]) -> dict[str, str]:
    """``["n=5", "day=2024-01-01"]`` (the CLI's repeated ``--param``) -> ``{"n": "5", ...}``."""
    values: dict[str, str] = {}
    problems = []
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            problems.append(
                Problem(
                    f"--param {item!r} is not NAME=VALUE", field="--param", hint="e.g. --param batch_size=500"
                )
            )
            continue
        values[name.strip()] = value
    if problems:
        raise InvalidInput(problems)
    return values


def coerce(text: str, kind: str | None) -> Any:
    """A CLI string as the param's type; ValueError with a short reason when it does not fit."""
    if kind == "integer":
        try:
            return int(text.strip())
        except ValueError:
            raise ValueError("expected an integer") from None
    if kind == "number":
        try:
            number = float(text.strip())
        except ValueError:
            raise ValueError("expected a number") from None
        if not math.isfinite(number):  # a manifest is JSON: no NaN or infinity
            raise ValueError("expected a finite number")
        return number
    if kind == "boolean":
        lowered = text.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ValueError("expected true or false")
    return text


def resolve_params(
    doc: OmlDocument, cli: Mapping[str, str], profile: str | None
) -> tuple[dict[str, Any], list[Problem]]:
    """Each declared param's value by precedence: ``--param`` > profile > default.

    Params with no value anywhere are left out; referencing one is reported at the reference.
    """
    problems: list[Problem] = [
        Problem(
            f"param '{name}' looks like a secret",
            file=doc.file,
            field=f"params.{name}",
            hint=SECRET_PARAM_HINT,
            line=doc.line_of("params", name),
        )
        for name in doc.params
        if is_secret_key(name)
    ]
    values = {name: decl.default for name, decl in doc.params.items() if decl.has_default}
    if profile is not None:
        if profile in doc.profiles:
            values.update(doc.profiles[profile])
        else:
            problems.append(
                Problem(
                    f"unknown profile '{profile}'",
                    file=doc.file,
                    field="--profile",
                    hint=valid_choices_hint(profile, sorted(doc.profiles), "profiles in this pipeline"),
                )
            )
    for name, text in cli.items():
        decl = doc.params.get(name)
        if decl is None:
            problems.append(
                Problem(
                    f"unknown param '{name}' given with --param",
                    file=doc.file,
                    field="--param",
                    hint=valid_choices_hint(name, list(doc.params), "declared params"),
                )
            )
            continue
        try:
            values[name] = coerce(text, decl.kind())
        except ValueError as exc:
            problems.append(
                Problem(
                    f"--param {name}={text!r} does not fit the param",
                    file=doc.file,
                    field="--param",
                    hint=str(exc),
                )
            )
    return values, problems


def substitute_config(
    doc: OmlDocument,
    step: RawStep,
    params: Mapping[str, Any],
    environ: Mapping[str, str] | None = None,
) -> tuple[dict[str, Any], list[Problem]]:
    """The step's config with params and (non-secret) environment variables filled in."""
    env = os.environ if environ is None else environ
    problems: list[Problem] = []

    def walk(value: Any, path: tuple[str | int, ...]) -> Any:
        if isinstance(value, dict):
            return {k: walk(v, (*path, k)) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v, (*path, i)) for i, v in enumerate(value)]
        if not isinstance(value, str) or "${" not in value:
            return value
        if is_deferred(path) and param_names(value):
            problems.append(
                Problem(
                    "a secret field cannot take a param",
                    file=doc.file,
                    step=step.id,
                    field=format_path(path),
                    hint=SECRET_PARAM_HINT,
                    line=doc.step_line(step, *path),
                )
            )
            return value
        result, missing = substitute(value, params=params, environ=env)
        if is_deferred(path):
            # Check now (every variable set), but keep ${VAR} so that no secret enters the manifest.
            result, _ = substitute(value, params=params)
        for item in missing:
            problems.append(_unresolved_problem(doc, step, path, item))
        return result

    config = walk(step.config, ("config",))
    return config, problems


def _unresolved_problem(
    doc: OmlDocument, step: RawStep, path: tuple[str | int, ...], item: Unresolved
) -> Problem:
    def located(message: str, hint: str) -> Problem:
        return Problem(
            message,
            file=doc.file,
            step=step.id,
            field=format_path(path),
            hint=hint,
            line=doc.step_line(step, *path),
        )

    if item.kind == "param":
        if item.name in doc.params:
            hint = f"param '{item.name}' has no default: give --param {item.name}=... or set it in a profile"
        else:
            hint = valid_choices_hint(item.name, list(doc.params), "declared params")
        return located(f"param '{item.name}' has no value", hint)
    if item.kind == "env":
        return located(
            f"environment variable '{item.name}' is not set",
            f"export {item.name}=..., or give a default: ${{{item.name}:-value}}",
        )
    # A malformed reference in a secret field may be part of the secret: do not echo it.
    shown = "a '${...}'" if is_deferred(path) else f"'${{{item.name}}}'"
    return located(
        f"{shown} is not a valid reference", "use ${params.name}, ${VAR} or ${VAR:-default}; " + ESCAPE_HINT
    )
