"""A real MariaDB/MySQL for the tests: OSIRIS_TEST_MYSQL_HOST/PORT/USER/PASSWORD (default
127.0.0.1:3306, root, empty password) and a uniquely named database per test session, dropped at
the end. No skipping: if the server is not reachable the tests fail and say how to start it."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pymysql
import pytest


@dataclass(frozen=True)
class MySQLServer:
    host: str
    port: int
    user: str
    password: str
    database: str

    def connect(self, database: str | None = None, **kwargs: Any) -> pymysql.connections.Connection:
        return pymysql.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            database=database or self.database,
            charset="utf8mb4",
            autocommit=True,
            **kwargs,
        )

    def execute(self, sql: str, args: Any = None) -> list[tuple[Any, ...]]:
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(sql, args)
                return list(cur.fetchall())
        finally:
            conn.close()

    def connections_yaml(self, path: Path, alias: str = "test", password_env: str | None = None) -> Path:
        """Write an Osiris osiris_connections.yaml pointing at this database."""
        password = f"${{{password_env}}}" if password_env else self.password
        path.write_text(
            "version: 1\nconnections:\n  mysql:\n"
            f"    {alias}:\n      host: {self.host}\n      port: {self.port}\n"
            f"      database: {self.database}\n"
            f'      user: {self.user}\n      password: "{password}"\n'
        )
        return path


@pytest.fixture(scope="session")
def mysql_server() -> Iterator[MySQLServer]:
    host = os.environ.get("OSIRIS_TEST_MYSQL_HOST", "127.0.0.1")
    port = int(os.environ.get("OSIRIS_TEST_MYSQL_PORT", "3306"))
    user = os.environ.get("OSIRIS_TEST_MYSQL_USER", "root")
    password = os.environ.get("OSIRIS_TEST_MYSQL_PASSWORD", "")
    database = f"osiris_test_{secrets.token_hex(4)}"
    try:
        admin = pymysql.connect(host=host, port=port, user=user, password=password, autocommit=True)
    except pymysql.err.OperationalError as exc:
        pytest.fail(
            f"MySQL/MariaDB is not reachable at {host}:{port} as {user} ({exc.args[-1]}); "
            "start it (.ci/run does: start-stop-daemon --start --exec /usr/sbin/mariadbd) "
            "or set OSIRIS_TEST_MYSQL_HOST/PORT/USER/PASSWORD"
        )
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{database}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
    try:
        yield MySQLServer(host, port, user, password, database)
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{database}`")
        admin.close()
