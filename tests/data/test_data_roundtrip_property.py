"""Property: whatever the schema and batch sizes, data written to a store (spilling or not) and read
back over Flight while it is still being produced is identical to what was written."""

from __future__ import annotations

import datetime as dt
import threading
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from osiris_flight.data.batch_store import BatchStore, batch_nbytes
from osiris_flight.data.flight_io import FlightClientPool, FlightDataServer
from osiris_flight.protocol import FetchOutput
from tests.data.conftest import TOKEN_KEY, signed

# Arrow type -> strategy for one non-null value of it
_TYPES: list[tuple[pa.DataType, st.SearchStrategy[object]]] = [
    (pa.int64(), st.integers(-(2**63), 2**63 - 1)),
    (pa.int8(), st.integers(-128, 127)),
    (pa.float64(), st.floats(allow_nan=False)),
    (pa.bool_(), st.booleans()),
    (pa.string(), st.text(max_size=20)),
    (pa.large_binary(), st.binary(max_size=20)),
    (pa.timestamp("us", tz="UTC"), st.datetimes(timezones=st.just(dt.UTC))),
    (pa.date32(), st.dates()),
    (pa.decimal128(12, 3), st.decimals(-(10**8), 10**8, places=3).map(Decimal)),
    (pa.list_(pa.int32()), st.lists(st.integers(-(2**31), 2**31 - 1), max_size=4)),
    (
        pa.struct([("a", pa.int16()), ("b", pa.string())]),
        st.fixed_dictionaries({"a": st.integers(-(2**15), 2**15 - 1), "b": st.text(max_size=5)}),
    ),
]


@st.composite
def outputs(draw: st.DrawFn) -> tuple[pa.Schema, list[pa.RecordBatch]]:
    columns = draw(st.lists(st.sampled_from(range(len(_TYPES))), min_size=1, max_size=4))
    schema = pa.schema([pa.field(f"c{n}", _TYPES[t][0]) for n, t in enumerate(columns)])
    batches = []
    for rows in draw(st.lists(st.integers(0, 60), min_size=0, max_size=8)):
        arrays = [
            pa.array(draw(st.lists(st.none() | _TYPES[t][1], min_size=rows, max_size=rows)), _TYPES[t][0])
            for t in columns
        ]
        batches.append(pa.record_batch(arrays, schema=schema))
    return schema, batches


@pytest.mark.timeout(240)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=outputs(), budget_batches=st.integers(0, 4), compression=st.sampled_from(["zstd", "lz4", None]))
def test_store_spill_flight_round_trip_is_identical(
    tmp_path: Path, data: tuple[pa.Schema, list[pa.RecordBatch]], budget_batches: int, compression: str | None
) -> None:
    schema, batches = data
    budget = budget_batches * max((batch_nbytes(b) for b in batches), default=0)
    ticket = signed(FetchOutput("prop", "stage", 0, 0))
    store = BatchStore(budget, tmp_path / f"spill-{id(data)}", compression=compression)
    server = FlightDataServer(store, wait_timeout_s=30, token_key=TOKEN_KEY).start()
    try:
        with FlightClientPool() as pool:
            got: list[pa.RecordBatch] = []
            consumer = threading.Thread(target=lambda: got.extend(pool.read(server.uri, ticket).batches()))
            consumer.start()  # reads while the output is being produced
            with store.create(ticket.key, schema) as writer:
                for batch in batches:
                    writer.append(batch)
                    assert store.bytes_in_memory <= budget  # one producer: spilled back under at once
            consumer.join(timeout=60)
            assert not consumer.is_alive()
            late = list(pool.read(server.uri, ticket).batches())
            event(f"spill files: {min(store.info(ticket.key).spill_files, 3)}")
        non_empty = [b for b in batches if b.num_rows]  # the store drops empty batches
        for received in (got, late):
            assert len(received) == len(non_empty)
            for sent, back in zip(non_empty, received, strict=True):
                assert back.schema == schema
                assert back.equals(sent)
    finally:
        server.shutdown()
        store.close()
