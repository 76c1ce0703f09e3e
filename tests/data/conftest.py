"""Fixtures for the data-plane tests: a store on a temp spill dir, a real Flight server on 127.0.0.1
that checks fetch tokens under ``TOKEN_KEY`` (``signed`` mints one as the coordinator would), a
client pool, and deterministic batches (int64, float64, string)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa
import pytest

from osiris_flight.data import fetch_token
from osiris_flight.data.batch_store import BatchStore
from osiris_flight.data.flight_io import FlightClientPool, FlightDataServer
from osiris_flight.protocol import FetchOutput

SCHEMA = pa.schema([("id", pa.int64()), ("x", pa.float64()), ("s", pa.string())])

BatchFactory = Callable[[int, int], pa.RecordBatch]
TOKEN_KEY = b"k" * 32  # the coordinator's HMAC key in these tests


def signed(ticket: FetchOutput, reader: str = "reader-w", ttl_s: float = 600.0) -> FetchOutput:
    """``ticket`` with a token the servers of these tests accept, as the coordinator mints it."""
    return fetch_token.mint(TOKEN_KEY, ticket, reader, ttl_s)


def _make_batch(start: int, rows: int) -> pa.RecordBatch:
    ids = list(range(start, start + rows))
    return pa.record_batch(
        [pa.array(ids, pa.int64()), pa.array([i / 7 for i in ids]), pa.array([f"row-{i:08d}" for i in ids])],
        schema=SCHEMA,
    )


@pytest.fixture
def schema() -> pa.Schema:
    """The schema of ``make_batch``'s batches."""
    return SCHEMA


@pytest.fixture
def make_batch() -> BatchFactory:
    """``make_batch(start, rows)``: rows ``start..start+rows-1``, distinct values per row."""
    return _make_batch


@pytest.fixture
def spill_dir(tmp_path: Path) -> Path:
    return tmp_path / "spill"


@pytest.fixture
def store(spill_dir: Path) -> Iterator[BatchStore]:
    s = BatchStore(64 << 20, spill_dir)
    yield s
    s.close()


@pytest.fixture
def server(store: BatchStore) -> Iterator[FlightDataServer]:
    srv = FlightDataServer(store, wait_timeout_s=10.0, token_key=TOKEN_KEY).start()
    yield srv
    srv.shutdown()


@pytest.fixture
def pool() -> Iterator[FlightClientPool]:
    with FlightClientPool() as p:
        yield p
