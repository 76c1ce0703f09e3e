"""``osiris-flight connections list | doctor``: what ``osiris_connections.yaml`` holds, and whether
each connection works, as Osiris's ``osiris connections list | doctor`` report it.

``list`` shows every ``@family.alias``, which alias ``@family`` means, its fields with secrets
shown as ``***``, and whether each environment variable it uses is set. ``doctor`` connects: for
``mysql`` it opens a pymysql session and runs ``SELECT 1`` (latency in ms covers both); for
``duckdb`` it opens the database file (or checks its directory is writable); other families are
skipped. Probes run in parallel. No secret value ever reaches the output: every secret of the
connection is masked in any message a server or driver returns.

Exit codes: 0 every checked connection is ok (skipped ones do not count), 1 at least one failed,
2 invalid input (no connections file, a malformed file, an unknown family or alias).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import click

from osiris_flight.cli.project_config import project_config
from osiris_flight.errors import EXIT_INVALID_INPUT, EXIT_OK, EXIT_RUN_FAILED, InvalidInput, Problem
from osiris_flight.oml.connections import (
    CONNECTIONS_ENV,
    CONNECTIONS_FILENAME,
    ConnectionsFile,
    is_secret_key,
    load_connections,
    locate_connections_file,
    parse_ref,
)
from osiris_flight.oml.interpolate import env_names, substitute
from osiris_flight.oml.schema_errors import valid_choices_hint
from osiris_flight.redaction import REDACTED, redact

DEFAULT_TIMEOUT_S = 5.0
# In a connection (unlike a step config, where ``key`` names a column) these hold credentials too:
# Osiris's compiler treats them as secrets (Supabase's ``key``, ``anon_key``, a DSN).
_CONNECTION_SECRETS = frozenset({"key", "dsn", "connection_string", "conn_str"})
MAX_PARALLEL_PROBES = 8
# MySQL error numbers -> what kind of problem it is (Osiris reports a category too).
_CATEGORIES = {
    1044: "auth",
    1045: "auth",
    1049: "database",
    1130: "auth",
    2002: "network",
    2003: "network",
    2005: "network",
    2006: "network",
    2013: "network",
}
_HINTS = {
    1044: "the user may not use this database; check database and grants",
    1045: "check the connection's user and password",
    1049: "check the connection's database name",
    1130: "the server does not accept this user from this host",
    2003: "check host and port, and that the server is running",
    2005: "check the host name",
}


# -- the data ----------------------------------------------------------------------------------
@dataclass
class Target:
    """One connection to show or check: its fields with ``${VAR}`` filled where set."""

    family: str
    alias: str
    default: bool
    fields: dict[str, Any]
    env_vars: dict[str, bool]
    missing: list[str] = field(default_factory=list)

    @property
    def ref(self) -> str:
        return f"@{self.family}.{self.alias}"

    def secrets(self) -> list[str]:
        """Secret values worth masking (very short ones would garble every message)."""
        found: list[str] = []

        def walk(value: Any, secret: bool) -> None:
            if isinstance(value, Mapping):
                for key, item in value.items():
                    walk(item, secret or is_connection_secret(key))
            elif isinstance(value, list):
                for item in value:
                    walk(item, secret)
            elif secret and value not in (None, "") and len(str(value)) >= 3:
                found.append(str(value))

        walk(self.fields, False)
        return sorted(found, key=len, reverse=True)

    def describe(self) -> dict[str, Any]:
        return {
            "ref": self.ref,
            "family": self.family,
            "alias": self.alias,
            "default": self.default,
            "fields": redact_connection(self.fields),
            "env_vars": self.env_vars,
        }


@dataclass
class Check:
    ref: str
    family: str
    alias: str
    status: str  # ok | failed | error (configuration) | skipped
    message: str
    latency_ms: float | None = None
    category: str | None = None
    server: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def is_connection_secret(name: object) -> bool:
    """A connection field holding a credential: the engine's secret names, plus ``key``, ``*_key``
    and DSN-like fields, which in a connection are credentials rather than column names."""
    if is_secret_key(name):
        return True
    lowered = str(name).lower()
    return lowered in _CONNECTION_SECRETS or lowered.endswith("_key")


def redact_connection(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Fields fit for display: every credential ``***`` (URL passwords too)."""
    shown = redact(fields)
    for key, value in shown.items():
        if is_connection_secret(key):
            shown[key] = REDACTED
        elif isinstance(value, Mapping):
            shown[key] = redact_connection(value)
    return shown


def _targets(conns: ConnectionsFile, environ: Mapping[str, str]) -> list[Target]:
    targets = []
    for family in conns.families():
        default = conns.default_alias(family)
        for alias in conns.aliases(family):
            raw = {k: v for k, v in conns.connections[family][alias].items() if k != "default"}
            names = list(dict.fromkeys(n for text in _strings(raw) for n in env_names(text)))
            missing: list[str] = []
            fields = _expand(raw, environ, missing)
            targets.append(
                Target(
                    family,
                    alias,
                    alias == default,
                    fields,
                    {n: n in environ for n in names},
                    list(dict.fromkeys(missing)),
                )
            )
    return targets


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, Mapping):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
    elif isinstance(value, str):
        yield value


def _expand(value: Any, environ: Mapping[str, str], missing: list[str]) -> Any:
    if isinstance(value, Mapping):
        return {k: _expand(v, environ, missing) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, environ, missing) for v in value]
    if not isinstance(value, str):
        return value
    result, unresolved = substitute(value, environ=environ)
    missing.extend(u.name for u in unresolved if u.kind == "env")
    return result


# -- probes ------------------------------------------------------------------------------------
def probe(target: Target, timeout_s: float) -> Check:
    """Connect to one connection; the result never holds one of its secret values."""

    def make(status: str, message: str, **extra: Any) -> Check:
        return Check(
            target.ref, target.family, target.alias, status, _mask(message, target.secrets()), **extra
        )

    if target.missing:
        names = ", ".join(target.missing)
        return make("error", f"environment variable {names} is not set", category="config")
    if target.family == "mysql":
        return _probe_mysql(target, timeout_s, make)
    if target.family == "duckdb":
        return _probe_duckdb(target, make)
    return make("skipped", f"no check for connection family '{target.family}'", category="unsupported")


def _probe_mysql(target: Target, timeout_s: float, make: Any) -> Check:
    import pymysql

    cfg = target.fields
    user = cfg.get("user", cfg.get("username"))
    port = cfg.get("port") or 3306
    if not str(port).isdigit() or not 1 <= int(str(port)) <= 65535:
        message = f"field 'port' is {port!r}, not a whole number from 1 to 65535"
        return make("error", message, category="config")
    try:
        kwargs: dict[str, Any] = {
            "host": str(cfg.get("host") or "localhost"),
            "port": int(cfg.get("port") or 3306),
            "user": None if user is None else str(user),
            "password": str(cfg.get("password") or ""),
            "database": cfg.get("database") or cfg.get("schema") or None,
            "charset": "utf8mb4",
            "connect_timeout": timeout_s,
            "read_timeout": timeout_s,
        }
    except (TypeError, ValueError) as exc:
        return make("error", f"invalid connection field: {exc}", category="config")
    if isinstance(cfg.get("ssl"), Mapping):
        kwargs["ssl"] = dict(cfg["ssl"])
    started = time.perf_counter()
    try:
        conn = pymysql.connect(**kwargs)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
                cur.fetchone()
            server = str(conn.get_server_info())
        finally:
            conn.close()
    except (pymysql.err.MySQLError, OSError) as exc:
        latency = _ms(started)
        number = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
        text = (
            str(exc.args[1]) if number is not None and len(exc.args) > 1 else str(exc) or type(exc).__name__
        )
        message = f"MySQL error {number}: {text}" if number is not None else f"{type(exc).__name__}: {text}"
        if number in _HINTS:
            message += f" ({_HINTS[number]})"
        category = _CATEGORIES.get(number or 0, "network" if isinstance(exc, OSError) else "unknown")
        return make("failed", message, latency_ms=latency, category=category)
    latency = _ms(started)
    server = server.removeprefix("5.5.5-")  # MariaDB's replication-compatibility prefix
    return make("ok", f"connected, SELECT 1 ok ({server})", latency_ms=latency, server=server)


def _probe_duckdb(target: Target, make: Any) -> Check:
    import duckdb

    path = str(target.fields.get("path") or ":memory:")
    started = time.perf_counter()
    if path != ":memory:" and not Path(path).exists():
        parent = Path(path).parent
        if parent.is_dir() and os.access(parent, os.W_OK):
            return make(
                "ok", f"{path} does not exist yet; its directory is writable", latency_ms=_ms(started)
            )
        return make(
            "failed", f"{path} does not exist and {parent} is not a writable directory", category="config"
        )
    try:
        con = duckdb.connect(path, read_only=path != ":memory:")
        try:
            con.execute("SELECT 1").fetchall()
        finally:
            con.close()
    except duckdb.Error as exc:
        return make("failed", f"DuckDB: {exc}", latency_ms=_ms(started), category="unknown")
    return make("ok", "opened, SELECT 1 ok", latency_ms=_ms(started))


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)


def _mask(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


# -- the commands ------------------------------------------------------------------------------
def _fail(exc: InvalidInput, as_json: bool) -> NoReturn:
    if as_json:
        problems = [p.to_dict() for p in exc.problems]
        click.echo(json.dumps({"ok": False, "error": str(exc), "problems": problems}, indent=2))
    else:
        for line in str(exc).splitlines():
            click.echo("error: " + line, err=True)
    sys.exit(exc.exit_code)


def _load(connections_file: str | None, config_path: str | None) -> ConnectionsFile:
    explicit = connections_file or project_config(config_path).connections_file
    path = locate_connections_file(explicit)
    if path is None:
        raise InvalidInput(
            Problem(
                "no connections file found",
                hint=f"create {CONNECTIONS_FILENAME} in this directory, set {CONNECTIONS_ENV}, "
                "or pass --connections",
            )
        )
    return load_connections(path)


def _options(f: Any) -> Any:
    f = click.option("--json", "as_json", is_flag=True, help="machine-readable output")(f)
    f = click.option(
        "--config",
        "config_path",
        type=click.Path(),
        default=None,
        help="osiris.yaml (default: ./osiris.yaml)",
    )(f)
    return click.option(
        "--connections",
        "connections_file",
        type=click.Path(),
        default=None,
        help=f"{CONNECTIONS_FILENAME} (default: ${CONNECTIONS_ENV}, then ./)",
    )(f)


@click.group("connections")
def connections() -> None:
    """List the connections of osiris_connections.yaml, or check that they work."""


@connections.command("list")
@_options
def list_cmd(connections_file: str | None, config_path: str | None, as_json: bool) -> None:
    """Families, aliases (which one @family means), fields with secrets as ***."""
    try:
        conns = _load(connections_file, config_path)
    except InvalidInput as exc:
        _fail(exc, as_json)
    targets = _targets(conns, os.environ)
    if as_json:
        click.echo(json.dumps({"file": conns.file, "connections": [t.describe() for t in targets]}, indent=2))
        return
    click.echo(f"{conns.file}:")
    if not targets:
        click.echo("  no connections")
    for family in conns.families():
        click.echo(f"  {family}")
        for target in (t for t in targets if t.family == family):
            fields = " ".join(f"{k}={_show(v)}" for k, v in redact_connection(target.fields).items())
            line = f"    {target.ref}{' (default)' if target.default else ''}  {fields}"
            if target.env_vars:
                line += "  env: " + ", ".join(
                    f"{n} {'set' if ok else 'NOT SET'}" for n, ok in target.env_vars.items()
                )
            click.echo(line)


def _show(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


@connections.command("doctor")
@click.argument("refs", nargs=-1, metavar="[@FAMILY.ALIAS]...")
@click.option("--family", default=None, help="check only this family (Osiris's option)")
@click.option("--alias", default=None, help="with --family: check only this alias")
@click.option("--timeout", type=float, default=DEFAULT_TIMEOUT_S, show_default=True, help="seconds per probe")
@_options
def doctor_cmd(
    refs: tuple[str, ...],
    family: str | None,
    alias: str | None,
    timeout: float,
    connections_file: str | None,
    config_path: str | None,
    as_json: bool,
) -> None:
    """Connect to each connection (all, or the ones named): mysql runs SELECT 1; shows latency."""
    try:
        conns = _load(connections_file, config_path)
        wanted = _select(conns, refs, family, alias)
    except InvalidInput as exc:
        _fail(exc, as_json)
    targets = [t for t in _targets(conns, os.environ) if (t.family, t.alias) in wanted]
    targets.sort(key=lambda t: wanted.index((t.family, t.alias)))
    # Import the client libraries here, once: an import inside a probe thread would hold the GIL
    # and add to every probe's latency.
    if any(t.family == "mysql" for t in targets):
        import pymysql  # noqa: F401
    if any(t.family == "duckdb" for t in targets):
        import duckdb  # noqa: F401
    with ThreadPoolExecutor(max_workers=max(1, min(MAX_PARALLEL_PROBES, len(targets)))) as pool:
        checks = list(pool.map(lambda t: probe(t, timeout), targets))
    ok = all(c.status in ("ok", "skipped") for c in checks)
    if as_json:
        click.echo(
            json.dumps({"ok": ok, "file": conns.file, "results": [c.to_dict() for c in checks]}, indent=2)
        )
    else:
        width = max((len(c.ref) for c in checks), default=0)
        for c in checks:
            latency = f"{c.latency_ms:8.1f} ms" if c.latency_ms is not None else " " * 11
            click.echo(f"{c.status:<8} {c.ref:<{width}} {latency}  {c.message}")
        counts = {s: sum(c.status == s for c in checks) for s in ("ok", "failed", "error", "skipped")}
        click.echo(f"{len(checks)} checked: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n))
    sys.exit(EXIT_OK if ok else EXIT_RUN_FAILED)


def _select(
    conns: ConnectionsFile, refs: tuple[str, ...], family: str | None, alias: str | None
) -> list[tuple[str, str]]:
    """The (family, alias) pairs to check, in the order asked; unknown names are invalid input."""
    wanted: list[str] = [r if r.startswith("@") else "@" + r for r in refs]
    if family is not None:
        wanted.append(f"@{family}.{alias}" if alias else f"@{family}.*")
    elif alias is not None:
        raise InvalidInput(Problem("--alias needs --family", hint="or name it as @family.alias"))
    if not wanted:
        return [(f, a) for f in conns.families() for a in conns.aliases(f)]
    problems: list[Problem] = []
    pairs: list[tuple[str, str]] = []
    for ref in wanted:
        if ref.endswith(".*") and parse_ref(ref[:-2]) is not None:
            fam = ref[1:-2]
            if fam not in conns.connections:
                problems.append(_unknown_family(conns, fam, ref))
            pairs += [(fam, a) for a in conns.aliases(fam)]
            continue
        parsed = parse_ref(ref)
        if parsed is None:
            problems.append(Problem(f"'{ref}' is not a connection reference", hint="write @family.alias"))
            continue
        fam, name = parsed
        if fam not in conns.connections:
            problems.append(_unknown_family(conns, fam, ref))
            continue
        if name is None:
            name = conns.default_alias(fam)
            if name is None:
                problems.append(
                    Problem(
                        f"'{ref}' names no alias and family '{fam}' has no default",
                        file=conns.file,
                        hint=f"write @{fam}.<alias> (aliases: {', '.join(conns.aliases(fam))})",
                    )
                )
                continue
        elif name not in conns.connections[fam]:
            problems.append(
                Problem(
                    f"unknown connection alias '{name}' in '{ref}'",
                    file=conns.file,
                    hint=valid_choices_hint(name, conns.aliases(fam), f"aliases of '{fam}'"),
                )
            )
            continue
        pairs.append((fam, name))
    if problems:
        raise InvalidInput(problems)
    return list(dict.fromkeys(pairs))


def _unknown_family(conns: ConnectionsFile, family: str, ref: str) -> Problem:
    return Problem(
        f"unknown connection family '{family}' in '{ref}'",
        file=conns.file,
        hint=valid_choices_hint(family, conns.families(), "families"),
    )


__all__ = ["EXIT_INVALID_INPUT", "connections", "probe"]
