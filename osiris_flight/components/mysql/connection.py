"""Connecting to MySQL/MariaDB from a resolved Osiris connection, and classifying its errors.

Every session runs with ``charset=utf8mb4`` (4-byte characters survive) and ``time_zone='+00:00'``
(TIMESTAMP values travel as UTC, whatever the server's zone). An extractor session also raises
``net_write_timeout``: a streaming read is paced by the consumer, and the server would otherwise cut
a reader that pauses longer than its default 60 s (for instance while a downstream writer commits).

Errors are classified by the server's error number: transient ones (lost connection, lock wait
timeout, deadlock, too many connections, killed query) are worth a retry; terminal ones (bad SQL,
unknown table or column, access denied, bad data) fail at once. Messages carry the server's own
text, the step id and the connection reference, and never a secret: any secret value of the
connection that would appear in a message is masked.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterable, Mapping
from typing import Any

import pymysql
from pymysql.connections import Connection

from osiris_flight.errors import TerminalError, TransientError
from osiris_flight.redaction import is_secret_key

DEFAULT_PORT = 3306
CONNECT_TIMEOUT_S = 10
# A streaming read may wait long for its first row (a big sort on the server): one hour.
READ_TIMEOUT_S = 3600
WRITE_TIMEOUT_S = 600
# Server side, seconds the server waits on a slow reader (extractor) or a slow sender (LOAD DATA).
NET_WRITE_TIMEOUT_S = 3600
NET_READ_TIMEOUT_S = 600
# The writer's session: strict (bad data is an error, never a silent truncation), explicit zero
# into an AUTO_INCREMENT column stays zero, and backslash escapes on (the encoder relies on them).
WRITER_SQL_MODE = "STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION,NO_AUTO_VALUE_ON_ZERO"

# Worth retrying: the connection or the server's state, not the request, is at fault.
TRANSIENT_ERRNOS = frozenset(
    {
        1040,  # too many connections
        1053,  # server shutdown in progress
        1158,  # got an error reading communication packets
        1159,  # got timeout reading communication packets
        1160,  # got an error writing communication packets
        1161,  # got timeout writing communication packets
        1203,  # user has exceeded max_user_connections
        1205,  # lock wait timeout exceeded
        1213,  # deadlock found when trying to get lock
        1317,  # query execution was interrupted (KILL QUERY)
        1615,  # prepared statement needs to be re-prepared
        1927,  # MariaDB: connection was killed
        2002,  # can't connect through socket
        2003,  # can't connect to server
        2006,  # server has gone away
        2013,  # lost connection during query
        2055,  # lost connection at ... system error
        4031,  # MySQL 8: disconnected by the server because of inactivity
    }
)
# Common terminal errors, with what to do about them (any number not in TRANSIENT_ERRNOS is terminal).
HINTS = {
    1044: "the user may not use this database; check the connection's database and grants",
    1045: "check the connection's user and password",
    1049: "check the connection's database name",
    1054: "check the column names in the config or the query",
    1060: "a query's columns need distinct names: give them distinct aliases",
    1064: "check the SQL syntax of the query",
    1142: "grant the user the privilege on this table",
    1146: "check the table name (and the connection's database)",
    1148: "enable local_infile on the server, or the writer falls back to INSERT",
    1406: "a value is longer than the target column allows",
}


def secret_values(conn_cfg: Mapping[str, Any]) -> list[str]:
    """The connection's secret values long enough to mask without garbling messages."""
    return [str(v) for k, v in conn_cfg.items() if is_secret_key(k) and v is not None and len(str(v)) >= 4]


def mask(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def error_number(exc: BaseException) -> int | None:
    """The MySQL error number of a pymysql error (client errors 2xxx included), else None."""
    if isinstance(exc, pymysql.err.MySQLError) and exc.args and isinstance(exc.args[0], int):
        return int(exc.args[0])
    return None


def is_transient(exc: BaseException) -> bool:
    number = error_number(exc)
    if number is not None:
        return number in TRANSIENT_ERRNOS
    # A socket error, or a pymysql error without a number (a closed connection, a protocol
    # desync after a lost packet): the connection is gone, a new one may well work.
    return isinstance(exc, OSError | socket.timeout | pymysql.err.InterfaceError | pymysql.err.InternalError)


class MySQLTransientError(TransientError):
    """A retryable MySQL failure; ``errno`` is the server's (or client's) error number."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


class MySQLTerminalError(TerminalError):
    """A MySQL failure that retrying cannot fix; ``errno`` is the server's error number."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


def classify(
    exc: BaseException, *, step_id: str, ref: str, what: str, secrets: Iterable[str] = ()
) -> MySQLTransientError | MySQLTerminalError:
    """A task error for ``exc``: the step, what we were doing, the server's message, a hint."""
    number = error_number(exc)
    if number is not None and len(exc.args) > 1:
        server_text = str(exc.args[1])
    else:
        server_text = str(exc) or type(exc).__name__
    code = f"MySQL error {number}" if number is not None else f"MySQL connection error ({type(exc).__name__})"
    message = f"step '{step_id}': {what} ({ref}): {code}: {server_text}"
    hint = HINTS.get(number or 0)
    if hint:
        message += f" ({hint})"
    message = mask(message, secrets)
    if is_transient(exc):
        return MySQLTransientError(message, number)
    return MySQLTerminalError(message, number)


def connect(
    conn_cfg: Mapping[str, Any],
    *,
    step_id: str,
    ref: str,
    purpose: str = "read",
    local_infile: bool = False,
) -> Connection:
    """Open a session for ``purpose`` ``read`` (extractor) or ``write`` (writer).

    Connection fields (Osiris's): host, port, database, user (or username), password; optional
    connect_timeout / read_timeout / write_timeout (seconds) and ssl (a pymysql ssl dict).
    Raises MySQLTransientError / MySQLTerminalError.
    """
    user = conn_cfg.get("user", conn_cfg.get("username"))
    kwargs: dict[str, Any] = {
        "host": str(conn_cfg.get("host") or "localhost"),
        "port": int(conn_cfg.get("port") or DEFAULT_PORT),
        "user": None if user is None else str(user),
        "password": str(conn_cfg.get("password") or ""),
        "database": conn_cfg.get("database") or conn_cfg.get("schema") or None,
        "charset": "utf8mb4",
        "autocommit": True,
        "connect_timeout": float(conn_cfg.get("connect_timeout", CONNECT_TIMEOUT_S)),
        "read_timeout": float(conn_cfg.get("read_timeout", READ_TIMEOUT_S)),
        "write_timeout": float(conn_cfg.get("write_timeout", WRITE_TIMEOUT_S)),
        "local_infile": local_infile,
    }
    if isinstance(conn_cfg.get("ssl"), Mapping):
        kwargs["ssl"] = dict(conn_cfg["ssl"])
    secrets = secret_values(conn_cfg)
    try:
        conn = pymysql.connect(**kwargs)
    except (pymysql.err.MySQLError, OSError) as exc:
        raise classify(exc, step_id=step_id, ref=ref, what="cannot connect", secrets=secrets) from None
    # local_infile announces LOAD DATA LOCAL at the handshake (the writer's bulk path needs it), but
    # pymysql would send whatever file the *server* names in answer to any query, and the server is
    # the run's to choose (a client supplies its connections): a rogue one could read the worker's
    # files. So pymysql's own handler is off; load_local.py sends only the file its statement names.
    conn._local_infile = False
    settings = ["time_zone = '+00:00'"]
    if purpose == "read":
        settings.append(f"net_write_timeout = {NET_WRITE_TIMEOUT_S}")
    else:
        settings += [f"net_read_timeout = {NET_READ_TIMEOUT_S}", f"sql_mode = '{WRITER_SQL_MODE}'"]
    try:
        with conn.cursor() as cur:
            cur.execute("SET SESSION " + ", ".join(settings))
    except (pymysql.err.MySQLError, OSError) as exc:
        close_quietly(conn)
        raise classify(exc, step_id=step_id, ref=ref, what="cannot set up session", secrets=secrets) from None
    return conn


def close_quietly(conn: Connection | None) -> None:
    """Close without raising; a connection in the middle of a result is dropped, not drained."""
    if conn is None:
        return
    result = conn._result
    if result is not None and result.unbuffered_active:
        # Abandon the unread rest: pymysql would otherwise drain it when the result is collected
        # (gigabytes, perhaps, and from a closed socket).
        result.unbuffered_active = False
        result.connection = None
    # Closing a broken socket may fail in many ways; there is nothing left to do about any of them.
    with contextlib.suppress(Exception):
        if conn.open:
            conn._force_close()


def quote_ident(name: str) -> str:
    """A backtick-quoted identifier (backticks doubled), valid whatever the sql_mode."""
    return "`" + name.replace("`", "``") + "`"


def qualified(table: str, schema: str | None = None) -> str:
    return f"{quote_ident(schema)}.{quote_ident(table)}" if schema else quote_ident(table)
