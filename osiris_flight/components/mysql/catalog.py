"""What the extractor and the writer ask ``information_schema``: exact column types, primary and
unique keys, whether a table exists. Small buffered queries on an open connection."""

from __future__ import annotations

import re
from collections.abc import Iterable

import pymysql
from pymysql.connections import Connection

from osiris_flight.components.mysql.types import ColumnInfo

_JSON_CHECK = re.compile(r"^json_valid\(`((?:[^`]|``)+)`\)$", re.IGNORECASE)


def _rows(conn: Connection, sql: str, args: object = None) -> list[tuple[object, ...]]:
    with conn.cursor() as cur:
        cur.execute(sql, args)
        return list(cur.fetchall())


def current_database(conn: Connection) -> str | None:
    rows = _rows(conn, "SELECT DATABASE()")
    return None if not rows or rows[0][0] is None else str(rows[0][0])


def column_types(conn: Connection, columns: Iterable[ColumnInfo]) -> dict[tuple[str, str, str], str]:
    """Exact COLUMN_TYPE per (db, table, column) for the result columns that come from a table.

    MariaDB stores JSON as LONGTEXT with a ``json_valid`` check: such columns are reported as
    ``json``. Lookup failures (no privilege on information_schema, an old server) leave the map
    partial; the caller then derives the type from the wire metadata.
    """
    tables = sorted({(c.db, c.org_table) for c in columns if c.db and c.org_table})
    found: dict[tuple[str, str, str], str] = {}
    if not tables:
        return found
    where = " OR ".join(["(TABLE_SCHEMA = %s AND TABLE_NAME = %s)"] * len(tables))
    args = [part for table in tables for part in table]
    try:
        for db, table, name, ctype in _rows(
            conn,
            "SELECT TABLE_SCHEMA, TABLE_NAME, COLUMN_NAME, COLUMN_TYPE FROM information_schema.COLUMNS "
            f"WHERE {where}",
            args,
        ):
            text = str(ctype)
            # MariaDB's information_schema is utf8mb3: a 4-byte character in an ENUM/SET member
            # shows as '?'. Members we cannot trust are dropped (the writer then uses a text type).
            if "?" in text and text.lower().startswith(("enum(", "set(")):
                text = text[: text.index("(")]
            found[(str(db), str(table), str(name))] = text
    except pymysql.err.MySQLError:
        return found
    try:
        checks = _rows(
            conn,
            "SELECT CONSTRAINT_SCHEMA, TABLE_NAME, CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS "
            f"WHERE {where.replace('TABLE_SCHEMA', 'CONSTRAINT_SCHEMA')}",
            args,
        )
    except pymysql.err.MySQLError:  # MySQL's CHECK_CONSTRAINTS has no TABLE_NAME; it sends JSON natively
        checks = []
    for db, table, clause in checks:
        match = _JSON_CHECK.match(str(clause).strip())
        if match:
            key = (str(db), str(table), match.group(1).replace("``", "`"))
            if found.get(key, "").lower() == "longtext":
                found[key] = "json"
    return found


def table_exists(conn: Connection, database: str, table: str) -> bool:
    return bool(
        _rows(
            conn,
            "SELECT 1 FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s",
            (database, table),
        )
    )


def table_columns(conn: Connection, database: str, table: str) -> list[tuple[str, str]]:
    """(column name, DATA_TYPE such as 'int' or 'bit') in table order."""
    return [
        (str(name), str(data_type).lower())
        for name, data_type in _rows(
            conn,
            "SELECT COLUMN_NAME, DATA_TYPE FROM information_schema.COLUMNS "
            "WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s ORDER BY ORDINAL_POSITION",
            (database, table),
        )
    ]


def unique_keys(conn: Connection, database: str, table: str) -> dict[str, list[str]]:
    """Index name -> its columns in order, for the PRIMARY key and every UNIQUE index."""
    keys: dict[str, list[str]] = {}
    for index, column in _rows(
        conn,
        "SELECT INDEX_NAME, COLUMN_NAME FROM information_schema.STATISTICS "
        "WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s AND NON_UNIQUE = 0 ORDER BY INDEX_NAME, SEQ_IN_INDEX",
        (database, table),
    ):
        keys.setdefault(str(index), []).append(str(column))
    return keys


def primary_key(conn: Connection, database: str, table: str) -> list[str]:
    return unique_keys(conn, database, table).get("PRIMARY", [])


def estimated_rows(conn: Connection, database: str, table: str) -> int | None:
    """InnoDB's row estimate (a hint for progress, often off by tens of percent)."""
    rows = _rows(
        conn,
        "SELECT TABLE_ROWS FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s",
        (database, table),
    )
    return None if not rows or rows[0][0] is None else int(str(rows[0][0]))
