"""``${params.name}``, ``${VAR}``, ``${VAR:-default}`` and the ``$${`` escape, in one scanner.

Params and environment variables share a syntax, so one tokenizer decides what every ``${...}`` is;
that keeps the escape rule identical everywhere. Substitution can run in two passes over the same
text (params at compile time, environment at run time, for secret fields): a pass that leaves the
environment alone also leaves ``$${`` alone, so the escape is undone exactly once.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_TOKEN = re.compile(r"\$\$\{|\$\{([^}]*)\}")
_PARAM = re.compile(r"^params\.([A-Za-z_][A-Za-z0-9_-]*)$")
_ENV = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?$", re.DOTALL)
ESCAPE_HINT = "write $${ for a literal ${"


@dataclass(frozen=True)
class Unresolved:
    """A reference substitution could not fill. ``kind``: param, env or malformed."""

    kind: str
    name: str


def has_reference(text: str) -> bool:
    return "${" in text


def env_names(text: str) -> list[str]:
    """The environment variables ``text`` refers to (with or without defaults), in order."""
    return _names(text, _ENV)


def param_names(text: str) -> list[str]:
    """The params ``text`` refers to, in order."""
    return _names(text, _PARAM)


def _names(text: str, kind: re.Pattern[str]) -> list[str]:
    bodies = (m.group(1) for m in _TOKEN.finditer(text) if m.group(1) is not None)
    return [found.group(1) for body in bodies if (found := kind.match(body))]


def substitute(
    text: str,
    *,
    params: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> tuple[Any, list[Unresolved]]:
    """Fill references in ``text``. ``params``/``environ`` None: leave those references as written.

    A string that is exactly one ``${params.x}`` becomes the param's value with its type (int 5
    stays 5); anything else interpolates into a string. Unresolvable references stay as written and
    are returned so the caller can report them with step and field.
    """
    whole = _TOKEN.fullmatch(text)
    if whole and whole.group(1) is not None and params is not None:
        param = _PARAM.match(whole.group(1))
        if param and param.group(1) in params:
            return params[param.group(1)], []
    missing: list[Unresolved] = []

    def replace(match: re.Match[str]) -> str:
        body = match.group(1)
        if body is None:  # the $${ escape
            return "${" if environ is not None else match.group(0)
        param = _PARAM.match(body)
        if param:
            if params is None:
                return match.group(0)
            if param.group(1) not in params:
                missing.append(Unresolved("param", param.group(1)))
                return match.group(0)
            return format_value(params[param.group(1)])
        env = _ENV.match(body)
        if env:
            if environ is None:
                return match.group(0)
            value = environ.get(env.group(1))
            if env.group(2) is not None and not value:  # shell semantics: unset or empty
                return env.group(2)
            if value is None:
                missing.append(Unresolved("env", env.group(1)))
                return match.group(0)
            return value
        if environ is not None:
            missing.append(Unresolved("malformed", body))
        return match.group(0)

    return _TOKEN.sub(replace, text), missing


def format_value(value: Any) -> str:
    """How a non-string param reads inside a string: 5, 1.5, true, null, JSON for lists."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
