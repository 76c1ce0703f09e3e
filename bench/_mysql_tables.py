"""The MariaDB side of the MySQL benchmarks (bench_mysql, bench_optimizer): connections, and the
7-column ``orders7_<rows>`` table both read, created once server-side and reused between runs.

Each benchmark keeps its own database and its own table comment (the comment says what the table
holds: a table whose comment and id range match is reused, anything else is rebuilt). pymysql is
imported only where a connection is made: bench_mysql's reader subprocesses import this module and
their RSS after imports is measured.
"""

from __future__ import annotations

import time
from typing import Any

from _common import MYSQL_HOST, MYSQL_PASSWORD, MYSQL_PORT, MYSQL_USER

ROWS_PER_INSERT = 1_000_000  # one statement per million rows keeps the undo log small


def table_name(rows: int) -> str:
    return f"orders7_{rows}"


def conn_kwargs(database: str | None) -> dict[str, Any]:
    """pymysql.connect keywords for the benchmarks' MariaDB (``None``: no default database)."""
    kw: dict[str, Any] = {
        "host": MYSQL_HOST,
        "port": MYSQL_PORT,
        "user": MYSQL_USER,
        "password": MYSQL_PASSWORD,
        "charset": "utf8mb4",
    }
    if database:
        kw["database"] = database
    return kw


def connection_fields(database: str) -> dict[str, Any]:
    """The resolved ``@mysql.bench`` connection, as osiris_connections.yaml gives it to operators."""
    return {
        "host": MYSQL_HOST,
        "port": MYSQL_PORT,
        "database": database,
        "user": MYSQL_USER,
        "password": MYSQL_PASSWORD,
    }


def connections_yaml(database: str) -> str:
    """An osiris_connections.yaml defining ``@mysql.bench`` on ``database``."""
    return (
        "version: 1\nconnections:\n  mysql:\n    bench:\n"
        f"      host: {MYSQL_HOST}\n      port: {MYSQL_PORT}\n      database: {database}\n"
        f'      user: {MYSQL_USER}\n      password: "{MYSQL_PASSWORD}"\n'
    )


def server_version() -> str:
    import pymysql

    conn = pymysql.connect(**conn_kwargs(None))
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT VERSION()")
            return str(cur.fetchone()[0])
    finally:
        conn.close()


def ensure_orders_table(database: str, rows: int, comment: str) -> dict[str, Any]:
    """Create ``database.orders7_<rows>`` once (server-side INSERT ... SELECT from the SEQUENCE engine's
    seq_N_to_M tables); reuse it when its comment is ``comment`` and it holds ids 1..rows.

    7 columns: BIGINT key, INT, DECIMAL(12,2), DATETIME(6), VARCHAR(16) with 5 values, VARCHAR(64)
    (~30 chars) with 10% NULLs, DOUBLE. Returns ``{"table", "created", "create_s"}``."""
    import pymysql

    table = table_name(rows)
    qualified = f"`{database}`.`{table}`"
    admin = pymysql.connect(**conn_kwargs(None), autocommit=True)
    try:
        with admin.cursor() as cur:
            cur.execute(
                f"CREATE DATABASE IF NOT EXISTS `{database}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
            )
            cur.execute(f"USE `{database}`")  # the SEQUENCE engine's seq_* tables need a database
            cur.execute(
                "SELECT TABLE_COMMENT FROM information_schema.TABLES WHERE TABLE_SCHEMA=%s AND TABLE_NAME=%s",
                (database, table),
            )
            found = cur.fetchone()
            if found and found[0] == comment:
                cur.execute(f"SELECT MIN(id), MAX(id), COUNT(*) FROM {qualified}")
                if cur.fetchone() == (1, rows, rows):
                    return {"table": table, "created": False, "create_s": 0.0}
            print(f"creating {database}.{table} ({rows:,} rows, server-side) ...", flush=True)
            started = time.perf_counter()
            cur.execute(f"DROP TABLE IF EXISTS {qualified}")
            cur.execute(
                f"""CREATE TABLE {qualified} (
                    id BIGINT NOT NULL PRIMARY KEY,
                    user_id INT NOT NULL,
                    amount DECIMAL(12,2) NOT NULL,
                    created_at DATETIME(6) NOT NULL,
                    status VARCHAR(16) NOT NULL,
                    note VARCHAR(64) NULL,
                    score DOUBLE NOT NULL
                ) ENGINE=InnoDB COMMENT='building'"""
            )
            # Deterministic values from the sequence, one statement per million rows. status has 5
            # values; note is NULL on every 10th row; created_at spans a year.
            for low in range(1, rows + 1, ROWS_PER_INSERT):
                high = min(rows, low + ROWS_PER_INSERT - 1)
                cur.execute(
                    f"""INSERT INTO {qualified}
                    SELECT seq,
                           (seq * 7919) % 1000003,
                           ((seq * 104729) % 10000000) / 100,
                           TIMESTAMP('2024-01-01') + INTERVAL (seq * 6311007) MICROSECOND,
                           ELT(1 + seq % 5, 'new', 'paid', 'shipped', 'cancelled', 'refunded'),
                           IF(seq % 10 = 0, NULL,
                              CONCAT('order ', seq, ' for customer ', (seq * 7919) % 1000003)),
                           (seq % 99991) * 0.123456789e0
                    FROM seq_{low}_to_{high}"""
                )
            cur.execute(f"ALTER TABLE {qualified} COMMENT=%s", (comment,))
            cur.execute(f"ANALYZE TABLE {qualified}")
            cur.fetchall()
            took = time.perf_counter() - started
            print(f"created {database}.{table} in {took:.1f} s", flush=True)
            return {"table": table, "created": True, "create_s": took}
    finally:
        admin.close()


def table_facts(database: str, table: str) -> dict[str, Any]:
    """InnoDB data size, average row length and the CREATE TABLE statement."""
    import pymysql

    conn = pymysql.connect(**conn_kwargs(database))
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT DATA_LENGTH, AVG_ROW_LENGTH FROM information_schema.TABLES "
                "WHERE TABLE_SCHEMA=%s AND TABLE_NAME=%s",
                (database, table),
            )
            data_length, avg_row = cur.fetchone()
            cur.execute(f"SHOW CREATE TABLE `{table}`")
            ddl = cur.fetchone()[1]
        return {"data_mb": int(data_length) / 2**20, "avg_row_bytes": int(avg_row), "ddl": ddl}
    finally:
        conn.close()
