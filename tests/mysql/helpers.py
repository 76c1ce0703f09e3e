"""Helpers for the mysql.extractor / mysql.writer tests: contexts that record telemetry, table names,
and drivers that run an operator the way the task runner does."""

from __future__ import annotations

import secrets
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from osiris_flight.components.base import AlreadyFinished, StepContext, WriteResult
from osiris_flight.components.mysql.extractor import MySQLExtractor
from osiris_flight.components.mysql.writer import MySQLWriter
from osiris_flight.data.rowstream import RowStream
from tests.mysql.conftest import MySQLServer

REF = "@mysql.test"


@dataclass
class Telemetry:
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    metrics: list[tuple[str, float, dict[str, Any]]] = field(default_factory=list)

    def event(self, name: str, **fields: Any) -> None:
        self.events.append((name, fields))

    def metric(self, name: str, value: float, **tags: Any) -> None:
        self.metrics.append((name, value, tags))

    def named(self, name: str) -> list[dict[str, Any]]:
        return [fields for event, fields in self.events if event == name]


def unique(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(4)}"


def connection(server: MySQLServer, **overrides: Any) -> dict[str, Any]:
    return {
        "host": server.host,
        "port": server.port,
        "user": server.user,
        "password": server.password,
        "database": server.database,
        **overrides,
    }


def make_ctx(
    server: MySQLServer,
    config: Mapping[str, Any],
    *,
    tmp_path: Path | None = None,
    telemetry: Telemetry | None = None,
    conn: Mapping[str, Any] | None = None,
    step_id: str = "step1",
    **extra: Any,
) -> StepContext:
    """A StepContext as the task runner builds one, with ``@mysql.test`` resolved to ``server``."""
    telemetry = telemetry or Telemetry()
    work = tmp_path or Path(tempfile.gettempdir()) / "osiris-flight-mysql-tests"  # LOAD DATA files, deleted
    return StepContext(
        step_id=step_id,
        component="test",
        config={"connection": REF, **config},
        connections={REF: dict(conn or connection(server))},
        work_dir=work,
        output_dir=work / "out",
        log_event=telemetry.event,
        log_metric=telemetry.metric,
        **extra,
    )


def read(server: MySQLServer, telemetry: Telemetry | None = None, **config: Any) -> pa.Table:
    """The whole read of a mysql.extractor step with ``config``, as one table."""
    stream = MySQLExtractor(make_ctx(server, config, telemetry=telemetry)).open()
    return pa.Table.from_batches(list(stream.batches()), schema=stream.schema)


def read_chunks(extractor: MySQLExtractor, token: str | None = None) -> Iterator[tuple[pa.Table, str]]:
    for chunk in extractor.open_chunks(token):
        table = pa.Table.from_batches(list(chunk.stream.batches()), schema=chunk.stream.schema)
        yield table, chunk.token


def write(server: MySQLServer, data: pa.Table, *, run_id: str | None = None, **config: Any) -> WriteResult:
    """One unchunked mysql.writer task writing ``data`` (config keys as keywords, e.g. table=...)."""
    ctx = make_ctx(server, config, run_id=run_id or uuid.uuid4().hex)
    return MySQLWriter(ctx).write(RowStream(data.to_batches(max_chunksize=1000), data.schema))


def copy_chunked(
    source: MySQLExtractor, sink: MySQLWriter, *, stop_after_chunks: int | None = None
) -> WriteResult | None:
    """Drive [source, sink] as the runtime does; ``stop_after_chunks`` abandons both mid-way (a crash)."""
    try:
        token = sink.begin(None)
    except AlreadyFinished as done:
        return done.result
    for done_chunks, chunk in enumerate(source.open_chunks(token), start=1):
        sink.write_chunk(chunk.stream)
        sink.commit_chunk(chunk.token)
        if stop_after_chunks is not None and done_chunks >= stop_after_chunks:
            return None
    return sink.finish()


def rows(server: MySQLServer, sql: str, args: Any = None) -> list[tuple[Any, ...]]:
    return server.execute(sql, args)
