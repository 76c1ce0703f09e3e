"""The real MariaDB fixture for the CLI tests (``connections doctor`` connects to it)."""

from tests.mysql.conftest import mysql_server  # noqa: F401 - a fixture, used by name
