"""Flight transport with real servers on 127.0.0.1: round trips, streaming while produced, fan-out,
spill, and every way a fetch can fail reaching the consumer as a clear, classified error."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Generator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.flight as flight
import pytest

from osiris_flight.data.batch_store import BatchStore, batch_nbytes
from osiris_flight.data.flight_io import FlightClientPool, FlightDataServer
from osiris_flight.data.rowstream import RowStream
from osiris_flight.errors import ProtocolError, TerminalError, UpstreamLost
from osiris_flight.protocol import PROTOCOL_VERSION, FetchOutput, encode
from tests.data.conftest import TOKEN_KEY, signed

BatchFactory = Callable[[int, int], pa.RecordBatch]
TICKET = signed(FetchOutput("run-1", "stage-a", 3, 2), ttl_s=24 * 3600)
pytestmark = pytest.mark.timeout(60)


def _ids(stream: RowStream) -> list[int]:
    return [i for batch in stream.batches() for i in batch.column("id").to_pylist()]


def test_round_trip_of_many_batches(
    store: BatchStore,
    server: FlightDataServer,
    pool: FlightClientPool,
    schema: pa.Schema,
    make_batch: BatchFactory,
) -> None:
    sent = [make_batch(i * 500, 500) for i in range(200)]
    with store.create(TICKET.key, schema) as writer:
        for batch in sent:
            writer.append(batch)
    stream = pool.read(server.uri, TICKET, name="input")
    assert stream.schema == schema and stream.name == "input"
    got = list(stream.batches())
    assert pa.Table.from_batches(got).equals(pa.Table.from_batches(sent))
    assert pool.client(server.uri) is pool.client(server.uri)


def test_consumer_reads_while_producer_appends(
    store: BatchStore,
    server: FlightDataServer,
    pool: FlightClientPool,
    schema: pa.Schema,
    make_batch: BatchFactory,
) -> None:
    seen = threading.Semaphore(0)

    def consume() -> list[int]:
        ids = []
        for batch in pool.read(server.uri, TICKET).batches():
            ids += batch.column("id").to_pylist()
            seen.release()
        return ids

    with ThreadPoolExecutor(1) as executor:
        consumer = executor.submit(consume)  # asks before the output exists
        time.sleep(0.05)
        with store.create(TICKET.key, schema) as writer:
            for i in range(20):
                writer.append(make_batch(i * 100, 100))
                # each batch reaches the consumer before the next one is produced
                assert seen.acquire(timeout=10), f"batch {i} not streamed while the output was open"
        assert consumer.result(timeout=10) == list(range(2000))


def test_fan_out_two_concurrent_readers(
    store: BatchStore,
    server: FlightDataServer,
    pool: FlightClientPool,
    schema: pa.Schema,
    make_batch: BatchFactory,
) -> None:
    with ThreadPoolExecutor(2) as executor:
        readers = [executor.submit(lambda: _ids(pool.read(server.uri, TICKET))) for _ in range(2)]
        with store.create(TICKET.key, schema) as writer:
            for i in range(50):
                writer.append(make_batch(i * 100, 100))
                time.sleep(0.001)
        for reader in readers:
            assert reader.result(timeout=20) == list(range(5000))


def test_spilled_output_served_to_two_readers(
    spill_dir: Path, pool: FlightClientPool, schema: pa.Schema, make_batch: BatchFactory
) -> None:
    sent = [make_batch(i * 2000, 2000) for i in range(60)]
    budget = sum(batch_nbytes(b) for b in sent) // 20
    biggest = max(batch_nbytes(b) for b in sent)
    store = BatchStore(budget, spill_dir)
    server = FlightDataServer(store, wait_timeout_s=10, token_key=TOKEN_KEY).start()
    try:
        with ThreadPoolExecutor(2) as executor:
            readers = [executor.submit(lambda: list(pool.read(server.uri, TICKET).batches())) for _ in "ab"]
            with store.create(TICKET.key, schema) as writer:
                for batch in sent:
                    writer.append(batch)
                    assert store.bytes_in_memory <= budget + biggest
            assert list(spill_dir.rglob("*.arrow")), "a 20x-budget output must have spilled"
            late = list(pool.read(server.uri, TICKET).batches())  # complete but spilled
            expected = pa.Table.from_batches(sent)
            for got in [r.result(timeout=30) for r in readers] + [late]:
                assert [b.num_rows for b in got] == [2000] * 60
                assert all(g.equals(s) for g, s in zip(got, sent, strict=True))
                assert pa.Table.from_batches(got).equals(expected)
        store.release_run(TICKET.run_id)
        assert list(spill_dir.rglob("*.arrow")) == []
    finally:
        server.shutdown()
        store.close()


def test_aborted_output_reaches_the_reader_as_upstream_lost(
    store: BatchStore,
    server: FlightDataServer,
    pool: FlightClientPool,
    schema: pa.Schema,
    make_batch: BatchFactory,
) -> None:
    writer = store.create(TICKET.key, schema)
    writer.append(make_batch(0, 10))
    batches = pool.read(server.uri, TICKET).batches()
    assert next(batches).num_rows == 10
    writer.abort("transform step failed: division by zero")
    with pytest.raises(UpstreamLost) as caught:
        next(batches)
    message = str(caught.value)
    for part in ("run=run-1", "stage=stage-a", "partition=3", "attempt=2", server.uri, "division by zero"):
        assert part in message
    with pytest.raises(UpstreamLost, match="aborted by its producer"):
        pool.read(server.uri, TICKET)


def test_released_output_is_upstream_lost(
    store: BatchStore,
    server: FlightDataServer,
    pool: FlightClientPool,
    schema: pa.Schema,
    make_batch: BatchFactory,
) -> None:
    with store.create(TICKET.key, schema) as writer:
        writer.append(make_batch(0, 10))
    store.release_run(TICKET.run_id)
    with pytest.raises(UpstreamLost, match="was released"):
        pool.read(server.uri, TICKET)


def test_server_shutdown_mid_stream(
    store: BatchStore, pool: FlightClientPool, schema: pa.Schema, make_batch: BatchFactory
) -> None:
    server = FlightDataServer(store, wait_timeout_s=10, token_key=TOKEN_KEY).start()
    writer = store.create(TICKET.key, schema)
    writer.append(make_batch(0, 10))
    batches = pool.read(server.uri, TICKET).batches()
    next(batches)  # the server now waits for a batch the producer has not written
    with ThreadPoolExecutor(1) as executor:
        stopping = executor.submit(server.shutdown)
        with pytest.raises(UpstreamLost, match="serving worker is shutting down"):
            next(batches)
        stopping.result(timeout=20)
    writer.close()


def test_unreachable_peer_is_upstream_lost(pool: FlightClientPool) -> None:
    with pytest.raises(UpstreamLost, match=r"from grpc://127.0.0.1:1 when opening"):
        pool.read("grpc://127.0.0.1:1", TICKET)


def test_killed_worker_mid_stream_is_upstream_lost(tmp_path: Path, pool: FlightClientPool) -> None:
    """A worker process dies (SIGKILL) while a consumer streams from it: no hang, UpstreamLost."""
    script = (
        "import sys, time, pathlib, pyarrow as pa\n"
        "from osiris_flight.data.batch_store import BatchStore\n"
        "from osiris_flight.data.flight_io import FlightDataServer\n"
        f"store = BatchStore(1 << 20, pathlib.Path({str(tmp_path / 'spill')!r}))\n"
        f"server = FlightDataServer(store, token_key={TOKEN_KEY!r}).start()\n"
        f"writer = store.create({TICKET.key!r}, pa.schema([('id', pa.int64())]))\n"
        "print(server.uri, flush=True)\n"
        "i = 0\n"
        "while True:\n"
        "    writer.append(pa.record_batch([pa.array([i])], names=['id'])); i += 1; time.sleep(0.01)\n"
    )
    worker, uri = _spawn(script)
    try:
        batches = pool.read(uri, TICKET).batches()
        assert [next(batches).num_rows for _ in range(3)] == [1, 1, 1]
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(timeout=10)

        def drain() -> None:
            for _ in batches:
                pass

        with ThreadPoolExecutor(1) as executor, pytest.raises(UpstreamLost, match=uri):
            executor.submit(drain).result(timeout=30)
    finally:
        worker.kill()
        worker.wait(timeout=10)


def _spawn(script: str) -> tuple[subprocess.Popen[str], str]:
    """Run a worker-like process serving Flight; returns it and the URI it printed."""
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def test_version_skewed_peer_refusal_is_a_protocol_error(tmp_path: Path, pool: FlightClientPool) -> None:
    """A peer speaking another protocol version refuses our ticket: terminal (retrying cannot help)."""
    script = (
        "import pathlib, time, osiris_flight.protocol as protocol\n"
        "from osiris_flight.data.batch_store import BatchStore\n"
        "from osiris_flight.data.flight_io import FlightDataServer\n"
        "protocol.PROTOCOL_VERSION += 1\n"
        f"server = FlightDataServer(BatchStore(1 << 20, pathlib.Path({str(tmp_path / 'spill')!r}))).start()\n"
        "print(server.uri, flush=True)\n"
        "time.sleep(60)\n"
    )
    peer, uri = _spawn(script)
    try:
        ours = f"protocol version {PROTOCOL_VERSION} is not"
        with pytest.raises(ProtocolError, match=rf"refused the ticket: bad ticket: {ours}"):
            pool.read(uri, TICKET)
    finally:
        peer.kill()
        peer.wait(timeout=10)


def test_bad_ticket_is_refused_clearly(server: FlightDataServer) -> None:
    client = flight.FlightClient(server.uri)
    try:
        with pytest.raises(flight.FlightServerError, match=r"bad ticket: .*protocol version 99"):
            client.do_get(flight.Ticket(b"\x82\xa1v\x63\xa2op\xa1x")).read_all()  # {"v": 99, "op": "x"}
        other = encode(FetchOutput("r", "s", 0, 0)).replace(b"fetch_output", b"fetch_outpux")
        with pytest.raises(flight.FlightServerError, match="bad ticket: unknown op 'fetch_outpux'"):
            client.do_get(flight.Ticket(other)).read_all()
        with pytest.raises(flight.FlightServerError, match="bad ticket: undecodable"):
            client.do_get(flight.Ticket(b"\xc1")).read_all()
    finally:
        client.close()


def test_read_many_concatenates_partitions_in_order(
    tmp_path: Path, pool: FlightClientPool, schema: pa.Schema, make_batch: BatchFactory
) -> None:
    stores = [BatchStore(1 << 20, tmp_path / f"spill-{n}") for n in range(2)]
    servers = [FlightDataServer(s, wait_timeout_s=10, token_key=TOKEN_KEY).start() for s in stores]
    try:
        tickets = [signed(FetchOutput("run", "scan", p, 0)) for p in range(4)]
        for ticket in tickets:  # partitions alternate between the two workers
            with stores[ticket.partition % 2].create(ticket.key, schema) as writer:
                writer.append(make_batch(ticket.partition * 100, 100))
        sources = [(servers[t.partition % 2].uri, t) for t in reversed(tickets)]
        stream = pool.read_many(sources, name="scan")
        assert stream.schema == schema
        assert _ids(stream) == [i for p in reversed(range(4)) for i in range(p * 100, p * 100 + 100)]

        odd = signed(FetchOutput("run", "scan", 9, 0))
        with stores[0].create(odd.key, pa.schema([("id", pa.int32())])) as writer:
            writer.append(pa.record_batch([pa.array([1], pa.int32())], names=["id"]))
        with pytest.raises(TerminalError, match="must share a schema"):
            _ids(pool.read_many([(servers[0].uri, tickets[0]), (servers[0].uri, odd)], name="scan"))
        with pytest.raises(ValueError, match="at least one"):
            pool.read_many([], name="scan")
    finally:
        for server in servers:
            server.shutdown()
        for store in stores:
            store.close()


def test_consumer_stopping_early_frees_the_server(
    store: BatchStore,
    server: FlightDataServer,
    pool: FlightClientPool,
    schema: pa.Schema,
    make_batch: BatchFactory,
) -> None:
    writer = store.create(TICKET.key, schema)
    for i in range(5):
        writer.append(make_batch(i * 10, 10))
    batches = pool.read(server.uri, TICKET).batches()
    assert isinstance(batches, Generator)
    next(batches)
    batches.close()  # e.g. a LIMIT satisfied: the stream is cancelled, not drained
    writer.close()
    assert _ids(pool.read(server.uri, TICKET)) == list(range(50))
