"""Turn JSON-schema validation errors into Problems a person can act on.

jsonschema finds the failing path and rule precisely, but its messages dump instances and schemas
("{'a': 1} is not valid under any of the given schemas"). Users get instead: the field as a dotted
path (``config.columns[2].name``), what is wrong in words, and what would be valid ("expected one
of: overwrite, append"). Values are quoted only when short and never when the field is a secret.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from osiris_flight.errors import Problem
from osiris_flight.redaction import is_secret_key

Path = tuple[str | int, ...]
LineOf = Callable[[Path], int | None]

_TYPE_WORDS = {
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "array": "a list",
    "object": "a mapping",
    "null": "null",
}


def format_path(path: Iterable[str | int]) -> str:
    """``("config", "columns", 2, "name")`` -> ``config.columns[2].name``."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += ("." if text else "") + str(part)
    return text


def type_name(value: Any) -> str:
    """The YAML-facing name of a value's type, for "got a list" style messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def show_value(value: Any, path: Sequence[str | int] = ()) -> str:
    """A short rendering of a user value; secrets and long values are not echoed."""
    if any(is_secret_key(p) for p in path):
        return "the value"
    if isinstance(value, str | int | float | bool) or value is None:
        text = repr(value)
        return text if len(text) <= 60 else text[:57] + "...'"
    return type_name(value)


def describe(schema: Any) -> str:
    """What a schema accepts, in words: "an integer >= 1", "one of: csv, parquet"."""
    if not isinstance(schema, Mapping):
        return "a valid value"
    if "enum" in schema:
        return "one of: " + ", ".join(_plain(v) for v in schema["enum"])
    if "const" in schema:
        return _plain(schema["const"])
    for combinator in ("anyOf", "oneOf"):
        if combinator in schema:
            return " or ".join(dict.fromkeys(describe(s) for s in schema[combinator]))
    types = schema.get("type")
    if types is None:
        return "a valid value"
    if isinstance(types, list):
        return " or ".join(_TYPE_WORDS.get(t, str(t)) for t in types)
    if types == "string" and schema.get("minLength") == 1:
        text = "a non-empty string"
    else:
        text = _TYPE_WORDS.get(types, str(types))
    bounds = [f"{op} {schema[key]}" for key, op in _BOUNDS if key in schema]
    if bounds:
        text += " " + " and ".join(bounds)
    if types == "string" and schema.get("minLength", 0) > 1:
        text += f" of at least {schema['minLength']} characters"
    if types == "string" and "pattern" in schema:
        text += f" matching {schema['pattern']}"
    if types == "array" and isinstance(schema.get("items"), Mapping) and "type" in schema["items"]:
        text += " of " + _plural(describe(schema["items"]))
    return text


_BOUNDS = (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="), ("exclusiveMaximum", "<"))
_NOUN = re.compile(r"\b(string|integer|number|list|mapping)\b")


def _plural(phrase: str) -> str:
    """ "a non-empty string" -> "non-empty strings" (for "a list of ...")."""
    for article in ("an ", "a "):
        if phrase.startswith(article):
            phrase = phrase[len(article) :]
            break
    return _NOUN.sub(r"\1s", phrase, count=1)


def _plain(value: Any) -> str:
    return value if isinstance(value, str) else repr(value)


def closest(name: str, candidates: Iterable[str]) -> str | None:
    """The most similar candidate, for "did you mean ...?" hints."""
    matches = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return matches[0] if matches else None


def valid_choices_hint(name: str, candidates: Sequence[str], what: str) -> str:
    """ "did you mean 'delimiter'? valid keys: a, b, c" """
    guess = closest(name, candidates)
    listing = f"{what}: " + (", ".join(candidates) if candidates else "none")
    return f"did you mean '{guess}'? {listing}" if guess else listing


def schema_problems(
    schema: Mapping[str, Any] | Draft202012Validator,
    instance: Any,
    *,
    file: str | None = None,
    step: str | None = None,
    prefix: Path = (),
    line_prefix: Path | None = None,
    line_of: LineOf | None = None,
) -> list[Problem]:
    """Validate ``instance`` and translate every error; an empty list means valid.

    ``prefix`` is prepended to field paths shown to the user (``("config",)``); ``line_prefix`` is
    prepended to paths looked up in ``line_of`` (where the instance sits in the YAML document).
    """
    validator = schema if isinstance(schema, Draft202012Validator) else Draft202012Validator(schema)
    errors = list(validator.iter_errors(instance))
    typed_paths = {tuple(e.absolute_path) for e in errors if e.validator == "type"}
    problems: list[Problem] = []
    seen: set[tuple[str | None, str]] = set()
    for error in errors:
        path = tuple(error.absolute_path)
        if error.validator != "type" and path in typed_paths:
            continue  # one complaint per field: the wrong type says it all
        for rel, message, hint in _translate(error):
            full = path + rel
            key = (format_path(prefix + full), message)
            if key in seen:
                continue
            seen.add(key)
            line = line_of((line_prefix if line_prefix is not None else prefix) + full) if line_of else None
            problems.append(
                Problem(
                    message,
                    file=file,
                    step=step,
                    field=format_path(prefix + full) or None,
                    hint=hint,
                    line=line,
                )
            )
    return problems


def _expected(schema: Any) -> str | None:
    text = describe(schema)
    return None if text == "a valid value" else f"expected {text}"


def _translate(error: ValidationError) -> list[tuple[Path, str, str | None]]:
    """(extra path below the error's path, message, hint) triples for one jsonschema error."""
    kind = error.validator
    value = error.instance
    schema = error.schema if isinstance(error.schema, Mapping) else {}
    path = tuple(error.absolute_path)
    shown = show_value(value, path)
    if kind in ("additionalProperties", "unevaluatedProperties") and isinstance(value, Mapping):
        known = sorted(schema.get("properties", {}))
        patterns = list(schema.get("patternProperties", {}))
        extras = [k for k in value if k not in known and not any(re.search(p, str(k)) for p in patterns)]
        return [((k,), f"unknown key '{k}'", valid_choices_hint(str(k), known, "valid keys")) for k in extras]
    if kind == "required" and isinstance(value, Mapping):
        props = schema.get("properties", {})
        return [
            ((name,), f"missing required key '{name}'", _expected(props.get(name)))
            for name in error.validator_value
            if name not in value
        ]
    if kind == "dependentRequired" and isinstance(value, Mapping):
        return [
            ((dep,), f"missing key '{dep}', required when '{key}' is given", None)
            for key, deps in error.validator_value.items()
            if key in value
            for dep in deps
            if dep not in value
        ]
    if kind == "type":
        return [((), f"wrong type: got {type_name(value)}", f"expected {describe(schema)}")]
    if kind in ("enum", "const"):
        return [((), f"{shown} is not a valid value", f"expected {describe(schema)}")]
    if kind in ("minimum", "exclusiveMinimum"):
        return [((), f"{shown} is too small", f"expected {describe(schema)}")]
    if kind in ("maximum", "exclusiveMaximum"):
        return [((), f"{shown} is too large", f"expected {describe(schema)}")]
    if kind in ("minLength", "minItems", "minProperties"):
        if error.validator_value == 1:
            return [((), "must not be empty", f"expected {describe(schema)}")]
        return [((), f"is too short (at least {error.validator_value} needed)", None)]
    if kind in ("maxLength", "maxItems", "maxProperties"):
        return [((), f"is too long (at most {error.validator_value} allowed)", None)]
    if kind == "uniqueItems":
        return [((), "contains duplicate items", "expected each item once")]
    if kind == "pattern":
        return [((), f"{shown} does not match the expected pattern", f"expected {describe(schema)}")]
    if kind == "format":
        return [((), f"{shown} is not a valid {error.validator_value}", None)]
    if kind in ("anyOf", "oneOf"):
        if kind == "oneOf" and not error.context:
            return [
                ((), "matches more than one allowed form", f"expected exactly one of: {describe(schema)}")
            ]
        return [((), f"{shown} does not match any allowed form", f"expected {describe(schema)}")]
    if kind == "not":
        return [((), f"{shown} is not allowed here", None)]
    if kind == "multipleOf":
        return [((), f"{shown} is not a multiple of {error.validator_value}", None)]
    return [((), f"{shown} is not valid", f"schema rule '{kind}' failed")]
