"""The native (Cython) and reference (Python) decoders read the same MySQL results into identical
Arrow batches: every type, random rows (hypothesis), keyed chunks and plain queries."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.mysql.conftest import MySQLServer
from tests.mysql.helpers import read
from tests.mysql.test_roundtrip import _ROW, _create_source, _fill

_TABLES: dict[str, str] = {}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.lists(_ROW, min_size=1, max_size=30), batch=st.integers(1, 9))
def test_native_and_reference_decoders_give_identical_batches(
    mysql_server: MySQLServer, data: list[dict[str, Any]], batch: int
) -> None:
    table = _TABLES.setdefault(mysql_server.database, _create_source(mysql_server))
    _fill(mysql_server, table, data)
    # chunk_rows=7: several keyset statements on one connection, so each decoder must leave it
    # usable after every result (EOF packet consumed, sequence ids right).
    for config in ({"table": table, "chunk_rows": 7}, {"query": f"SELECT * FROM {table}"}):
        native = read(mysql_server, **config, batch_size=batch, decoder="native")
        reference = read(mysql_server, **config, batch_size=batch, decoder="reference")
        assert native.num_rows == len(data)
        assert native.schema.equals(reference.schema, check_metadata=True)
        assert native.equals(reference)
