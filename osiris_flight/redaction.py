"""Which config fields hold secrets, and how to show a mapping or a message without them.

One small module below every layer, because several places need the same answer: connection checks
(never name a secret value in an error), params/env substitution (a secret field's ``${VAR}`` is
resolved at run time so that its value never reaches a manifest), ``connections list`` (display
with ``***``), telemetry (events and metrics mask secret-looking fields) and task errors (a
server's message scrubbed of the secrets the task resolved).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

SECRET_KEYS = frozenset(
    {
        "password",
        "passwd",
        "pwd",
        "secret",
        "token",
        "api_key",
        "apikey",
        "key_file",
        "private_key",
        "access_key",
        "secret_key",
        "secret_access_key",
        "client_secret",
        "auth_token",
        "access_token",
        "refresh_token",
        "service_role_key",
        "credentials",
    }
)
# Suffixes catch the many spellings (mysql_password, aws_secret, github_token, private_key_file)
# without catching ordinary keys such as primary_key or partition_key.
_SECRET_SUFFIXES = ("password", "passwd", "secret", "token", "api_key", "apikey", "_key_file", "private_key")
REDACTED = "***"
# A mapping under one of these keys is an inline connection definition: resolved at run time.
CONNECTION_KEYS = ("connection", "connections")
# user:password@ in a URL or DSN.
_URL_CREDENTIALS = re.compile(r"(://[^:/@\s]+:)[^@\s]+@")


def is_secret_key(name: object) -> bool:
    """True when a field named ``name`` holds a secret (case-insensitive)."""
    if not isinstance(name, str):
        return False
    lowered = name.lower()
    return lowered in SECRET_KEYS or lowered.endswith(_SECRET_SUFFIXES)


def is_deferred(path: tuple[str | int, ...]) -> bool:
    """Is this step-config path filled from the environment at run time rather than compile time?

    True for secret fields and for anything inside an inline connection mapping: their ``${VAR}``
    stays in the manifest, so a secret never does.
    """
    if any(is_secret_key(part) for part in path):
        return True
    return any(part in CONNECTION_KEYS for part in path[:-1])


def secret_values(value: Any, inside_secret: bool = False) -> set[str]:
    """Every value under a secret-looking key, at any depth of a resolved config or connection
    mapping: what to scrub from free text such as a server's error message. Values shorter than 3
    characters are left out: scrubbing them would mangle the text and hide nothing."""
    found: set[str] = set()
    if isinstance(value, Mapping):
        for key, item in value.items():
            found |= secret_values(item, inside_secret or is_secret_key(key))
    elif isinstance(value, list):
        for item in value:
            found |= secret_values(item, inside_secret)
    elif inside_secret and value is not None and len(str(value)) >= 3:
        found.add(str(value))
    return found


def scrub(text: str, secrets: set[str]) -> str:
    """``text`` with each of ``secrets`` replaced by ``***`` (longest first, so no part is left)."""
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text


# A task's error as the worker reports it: a component's message may quote input values (a CSV row,
# the value DuckDB could not convert), so what reaches the client and the run's events is bounded.
MAX_ERROR_CHARS = 2000
TRUNCATED = "…(truncated)"


def cap(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """``text`` cut to at most ``limit`` characters, ending in ``…(truncated)`` when it was cut."""
    return text if len(text) <= limit else text[: limit - len(TRUNCATED)] + TRUNCATED


def redact(conn: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``conn`` fit for display: secret values become ``***``, URL passwords too."""
    return {key: REDACTED if is_secret_key(key) else _redact_value(value) for key, value in conn.items()}


def _redact_value(value: Any) -> Any:
    if isinstance(value, Mapping):
        return redact(value)
    if isinstance(value, list):
        return [_redact_value(v) for v in value]
    if isinstance(value, str):
        return _URL_CREDENTIALS.sub(rf"\g<1>{REDACTED}@", value)
    return value
