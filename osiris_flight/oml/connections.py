"""Connections: ``@family.alias`` references in step configs, defined in ``osiris_connections.yaml``.

The file is Osiris's format (``version: "1.0"`` as ``osiris init`` writes it, or ``1``)::

    version: 1
    connections:
      mysql:
        primary: {host: db1, port: 3306, user: etl, password: "${MYSQL_PASSWORD}", default: true}

Two moments, two functions. At compile time ``check_references`` proves every reference names a
connection and every variable it needs is set, without reading any secret into the manifest (configs
keep the ``@family.alias`` string). At run time ``resolve_connections`` returns the fully resolved
dicts, secrets included, for the operators. No error message ever contains a connection's values:
they name the connection, the field and the variable instead.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from osiris_flight.errors import InvalidInput, Problem
from osiris_flight.oml.interpolate import ESCAPE_HINT, substitute
from osiris_flight.oml.model import Manifest
from osiris_flight.oml.schema_errors import format_path, valid_choices_hint
from osiris_flight.oml.yaml_source import YamlSource, read_yaml
from osiris_flight.redaction import SECRET_KEYS, is_deferred, is_secret_key, redact

__all__ = [
    "CONNECTIONS_ENV",
    "CONNECTIONS_FILENAME",
    "SECRET_KEYS",
    "ConnectionsFile",
    "check_references",
    "find_references",
    "is_secret_key",
    "load_connections",
    "locate_connections_file",
    "parse_ref",
    "redact",
    "reference_problems",
    "resolve_connections",
    "resolve_runtime_config",
]

CONNECTIONS_ENV = "OSIRIS_CONNECTIONS_FILE"
CONNECTIONS_FILENAME = "osiris_connections.yaml"
HOME_ENV = "OSIRIS_HOME"  # Osiris's project directory; its connections file is looked up first
CONNECTIONS_VERSION = 1
# Version 1 as written: ``osiris init`` writes ``version: "1.0"``, Osiris's own tests ``version: 1``.
ACCEPTED_VERSIONS = (1, "1", 1.0, "1.0")
_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
_REF = re.compile(r"^@([A-Za-z0-9_-]+)(?:\.([A-Za-z0-9_-]+))?$")
_WHERE_HINT = (
    f"create {CONNECTIONS_FILENAME} in the working directory, set {CONNECTIONS_ENV}, or pass --connections"
)


def parse_ref(value: object) -> tuple[str, str | None] | None:
    """``"@mysql.primary"`` -> ``("mysql", "primary")``; ``"@mysql"`` -> ``("mysql", None)``."""
    if not isinstance(value, str):
        return None
    match = _REF.match(value)
    return (match.group(1), match.group(2)) if match else None


@dataclass(frozen=True)
class ConnectionsFile:
    """A loaded connections file; field values still hold their ``${VAR}`` references."""

    file: str
    connections: dict[str, dict[str, dict[str, Any]]]
    source: YamlSource | None = None

    def families(self) -> list[str]:
        return sorted(self.connections)

    def aliases(self, family: str) -> list[str]:
        return sorted(self.connections.get(family, {}))

    def default_alias(self, family: str) -> str | None:
        """The alias ``@family`` means: the one marked ``default: true``, else one named
        ``default`` (Osiris's second rule), else the only one."""
        aliases = self.connections.get(family, {})
        marked = [a for a, fields in aliases.items() if fields.get("default") is True]
        if marked:
            return marked[0]
        if "default" in aliases:
            return "default"
        return next(iter(aliases)) if len(aliases) == 1 else None

    def line_of(self, *path: str | int) -> int | None:
        return self.source.line_of(("connections", *path)) if self.source else None


def locate_connections_file(
    explicit: str | Path | None = None,
    *,
    pipeline: str | Path | None = None,
    cwd: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Path | None:
    """Explicit path, else ``$OSIRIS_CONNECTIONS_FILE``, else ``$OSIRIS_HOME/osiris_connections.yaml``
    (Osiris looks there first), else ``./osiris_connections.yaml``, else one next to the pipeline
    file. An explicit or environment path is returned even when missing, so that loading it reports
    the mistake instead of silently falling back."""
    env = os.environ if environ is None else environ
    if explicit is not None:
        return Path(explicit)
    if env.get(CONNECTIONS_ENV):
        return Path(env[CONNECTIONS_ENV])
    candidates = [Path(env[HOME_ENV].strip()) / CONNECTIONS_FILENAME] if env.get(HOME_ENV, "").strip() else []
    candidates.append((cwd or Path.cwd()) / CONNECTIONS_FILENAME)
    if pipeline is not None:
        candidates.append(Path(pipeline).parent / CONNECTIONS_FILENAME)
    return next((c for c in candidates if c.is_file()), None)


def load_connections(path: str | Path) -> ConnectionsFile:
    """Read and check a connections file; errors name keys and lines, never values."""
    source, problems = read_yaml(path, "connections file")
    file, data = source.file, source.data

    def report(message: str, path: tuple[str | int, ...], hint: str | None = None) -> None:
        problems.append(
            Problem(message, file=file, field=format_path(path) or None, hint=hint, line=source.line_of(path))
        )

    if not isinstance(data, dict):
        raise InvalidInput(
            Problem(
                "a connections file must be a mapping with 'version' and 'connections'",
                file=file,
                line=source.line_of(()),
            )
        )
    for key in data:
        if key not in ("version", "connections"):
            report(f"unknown key '{key}'", (key,), "valid keys: version, connections")
    if "version" not in data:
        report("missing 'version'", (), f"add 'version: {CONNECTIONS_VERSION}'")
    elif isinstance(data["version"], bool) or data["version"] not in ACCEPTED_VERSIONS:
        report(
            f"connections file version {data['version']!r} is not supported",
            ("version",),
            f'expected {CONNECTIONS_VERSION} (or "1.0", as osiris init writes it)',
        )
    families = data.get("connections")
    result: dict[str, dict[str, dict[str, Any]]] = {}
    if not isinstance(families, dict):
        report(
            "'connections' must be a mapping of family -> alias -> fields",
            ("connections",),
            "e.g. connections: {mysql: {primary: {host: ..., password: ${MYSQL_PASSWORD}}}}",
        )
        families = {}
    for family, aliases in families.items():
        where: tuple[str | int, ...] = ("connections", family)
        if not _NAME.match(str(family)):
            report(f"family name '{family}' cannot be referenced", where, "use letters, digits, '_' and '-'")
        if not isinstance(aliases, dict):
            report(f"family '{family}' must be a mapping of alias -> fields", where)
            continue
        defaults = []
        for alias, fields in aliases.items():
            at = (*where, alias)
            if not _NAME.match(str(alias)):
                report(f"alias name '{alias}' cannot be referenced", at, "use letters, digits, '_' and '-'")
            if not isinstance(fields, dict):
                report(f"connection '@{family}.{alias}' must be a mapping of fields", at)
                continue
            if "default" in fields and not isinstance(fields["default"], bool):
                report(f"'default' of '@{family}.{alias}' must be true or false", (*at, "default"))
            if fields.get("default") is True:
                defaults.append(alias)
        if len(defaults) > 1:
            report(
                f"family '{family}' marks {len(defaults)} aliases default: true ({', '.join(defaults)})",
                where,
                "mark at most one",
            )
        result[family] = {a: f for a, f in aliases.items() if isinstance(f, dict)}
    if problems:
        raise InvalidInput(problems)
    return ConnectionsFile(file, result, source)


def find_references(manifest: Manifest) -> dict[str, list[tuple[str, str]]]:
    """Every ``@family[.alias]`` string in step configs -> [(step id, field)], in file order."""
    refs: dict[str, list[tuple[str, str]]] = {}

    def walk(value: Any, step_id: str, path: tuple[str | int, ...]) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(item, step_id, (*path, key))
        elif isinstance(value, list):
            for i, item in enumerate(value):
                walk(item, step_id, (*path, i))
        elif parse_ref(value) is not None:
            refs.setdefault(str(value), []).append((step_id, format_path(path)))

    for step in manifest.steps:
        walk(step.config, step.id, ("config",))
    return refs


def reference_problems(
    manifest: Manifest,
    connections_file: str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
) -> list[Problem]:
    """Compile-time check of every reference; an empty list means all resolve."""
    refs = find_references(manifest)
    if not refs:
        return []
    path = locate_connections_file(connections_file, pipeline=manifest.source_file or None, environ=environ)
    if path is None:
        return [
            Problem(
                f"connection '{ref}' is used but no connections file was found",
                file=manifest.source_file,
                step=step,
                field=field,
                hint=_WHERE_HINT,
            )
            for ref, uses in refs.items()
            for step, field in uses
        ]
    try:
        conns = load_connections(path)
    except InvalidInput as exc:
        return exc.problems
    problems: list[Problem] = []
    for ref, uses in refs.items():
        target, why, hint = _lookup(conns, ref)
        if target is None:
            problems += [Problem(why, file=manifest.source_file, step=s, field=f, hint=hint) for s, f in uses]
        else:
            problems += _env_problems(conns, ref, *target, environ) or _number_problems(
                conns, ref, *target, environ
            )
    return problems


def check_references(
    manifest: Manifest,
    connections_file: str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
) -> None:
    """Raise one InvalidInput if any connection reference would not resolve at run time."""
    problems = reference_problems(manifest, connections_file, environ=environ)
    if problems:
        raise InvalidInput(problems)


def resolve_connections(
    manifest: Manifest,
    path: str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Run time: every referenced connection, fully resolved (secrets included), keyed by the
    reference as written. Hand these to operators only; never log or persist them."""
    check_references(manifest, path, environ=environ)
    refs = find_references(manifest)
    if not refs:
        return {}
    located = locate_connections_file(path, pipeline=manifest.source_file or None, environ=environ)
    assert located is not None  # check_references reported a missing file
    conns = load_connections(located)
    env = os.environ if environ is None else environ
    resolved: dict[str, dict[str, Any]] = {}
    for ref in sorted(refs):
        target, _, _ = _lookup(conns, ref)
        assert target is not None
        fields = conns.connections[target[0]][target[1]]
        resolved[ref] = {k: _expand(v, env) for k, v in fields.items() if k != "default"}
    return resolved


def resolve_runtime_config(
    config: Mapping[str, Any], environ: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Fill the ``${VAR}`` references compile left in a step config's secret fields (see params.py).

    Only deferred fields are touched, so a compile-time ``$${`` escape is never expanded twice.
    """
    env = os.environ if environ is None else environ
    problems: list[Problem] = []

    def walk(value: Any, path: tuple[str | int, ...]) -> Any:
        if isinstance(value, dict):
            return {k: walk(v, (*path, k)) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v, (*path, i)) for i, v in enumerate(value)]
        if not isinstance(value, str) or not is_deferred(path):
            return value
        result, missing = substitute(value, environ=env)
        for item in missing:
            if item.kind == "malformed":  # may be part of a secret: not echoed
                problems.append(
                    Problem("invalid '${...}' reference", field=format_path(path), hint=ESCAPE_HINT)
                )
            else:
                problems.append(
                    Problem(
                        f"environment variable '{item.name}' is not set",
                        field=format_path(path),
                        hint=f"export {item.name}=... where the task runs",
                    )
                )
        return result

    resolved = walk(dict(config), ("config",))
    if problems:
        raise InvalidInput(problems)
    return dict(resolved)


def _lookup(conns: ConnectionsFile, ref: str) -> tuple[tuple[str, str] | None, str, str | None]:
    """((family, alias), "", None) or (None, why, hint)."""
    parsed = parse_ref(ref)
    assert parsed is not None
    family, alias = parsed
    if family not in conns.connections:
        return (
            None,
            f"unknown connection family '{family}' in '{ref}'",
            valid_choices_hint(family, conns.families(), f"families in {conns.file}"),
        )
    aliases = conns.aliases(family)
    if alias is None:
        alias = conns.default_alias(family)
        if alias is None:
            return (
                None,
                (
                    f"'{ref}' names no alias and family '{family}' has {len(aliases)} aliases, "
                    "none marked default: true"
                ),
                (
                    f"write @{family}.<alias> (aliases: {', '.join(aliases) or 'none'}) "
                    "or mark one default: true (or name it 'default')"
                ),
            )
    elif alias not in conns.connections[family]:
        return (
            None,
            f"unknown connection alias '{alias}' in '{ref}'",
            valid_choices_hint(alias, aliases, f"aliases of '{family}' in {conns.file}"),
        )
    return (family, alias), "", None


def _env_problems(
    conns: ConnectionsFile, ref: str, family: str, alias: str, environ: Mapping[str, str] | None
) -> list[Problem]:
    env = os.environ if environ is None else environ
    problems = []
    for key, value in _strings(conns.connections[family][alias], ()):
        _, missing = substitute(value, environ=env)
        for item in missing:
            if item.kind == "malformed":  # the reference itself may be part of a secret: not echoed
                message, hint = (
                    f"field '{format_path(key)}' holds an invalid '${{...}}' reference",
                    ESCAPE_HINT,
                )
            else:
                message = (
                    f"uses environment variable '{item.name}' (field '{format_path(key)}'), which is not set"
                )
                hint = f"export {item.name}=..., or give a default: ${{{item.name}:-value}}"
            problems.append(
                Problem(
                    f"connection '{ref}' {message}",
                    file=conns.file,
                    hint=hint,
                    line=conns.line_of(family, alias, *key),
                )
            )
    return problems


# Connection fields that must be numbers, whether written in the file or filled from the
# environment: (what a valid value is, its test). A bad one is reported at validate, against the
# connection and field, instead of as a bare ValueError where a task opens the connection.
_NUMERIC_FIELDS: dict[str, tuple[str, Any]] = {
    "port": ("a whole number from 1 to 65535", lambda v: 1 <= int(str(v)) <= 65535),
    "connect_timeout": ("a number of seconds above 0", lambda v: float(v) > 0),
    "read_timeout": ("a number of seconds above 0", lambda v: float(v) > 0),
    "write_timeout": ("a number of seconds above 0", lambda v: float(v) > 0),
}


def _number_problems(
    conns: ConnectionsFile, ref: str, family: str, alias: str, environ: Mapping[str, str] | None
) -> list[Problem]:
    env = os.environ if environ is None else environ
    fields = conns.connections[family][alias]
    problems = []
    for key, (valid, ok) in _NUMERIC_FIELDS.items():
        if key not in fields or fields[key] is None:
            continue
        raw = fields[key]
        value = _expand(raw, env)
        try:
            good = not isinstance(value, bool) and bool(ok(value))
        except (TypeError, ValueError, OverflowError):
            good = False
        if good:
            continue
        source = ""
        if isinstance(raw, str) and raw != value:
            names = re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", raw)
            source = f" (from environment variable {', '.join(names) or '?'})"
        problems.append(
            Problem(
                f"connection '{ref}' field '{key}' is {value!r}{source}, not {valid}",
                file=conns.file,
                line=conns.line_of(family, alias, key),
            )
        )
    return problems


def _strings(value: Any, path: tuple[str | int, ...]) -> list[tuple[tuple[str | int, ...], str]]:
    if isinstance(value, dict):
        return [item for k, v in value.items() for item in _strings(v, (*path, k))]
    if isinstance(value, list):
        return [item for i, v in enumerate(value) for item in _strings(v, (*path, i))]
    return [(path, value)] if isinstance(value, str) else []


def _expand(value: Any, env: Mapping[str, str]) -> Any:
    if isinstance(value, dict):
        return {k: _expand(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, env) for v in value]
    return substitute(value, environ=env)[0] if isinstance(value, str) else value
