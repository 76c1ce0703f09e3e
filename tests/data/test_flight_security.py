"""The data plane against strangers: real Flight servers over mutual TLS (certificates made by
``osiris-flight keys tls``), fetch tokens, refused methods, and errors without tracebacks."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import stat
import struct
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pyarrow as pa
import pyarrow.flight as flight
import pytest

from osiris_flight.data import fetch_token
from osiris_flight.data.batch_store import BatchStore
from osiris_flight.data.flight_io import MAX_TICKET_BYTES, FetchRefused, FlightClientPool, FlightDataServer
from osiris_flight.data.tls import WORKER_SERVER_NAME, FlightTLS, load_flight_tls
from osiris_flight.errors import InvalidInput, TerminalError, UpstreamLost, is_transient
from osiris_flight.hosts import is_loopback, stays_on_host
from osiris_flight.protocol import FetchOutput, encode_ticket
from tests.data.conftest import TOKEN_KEY, BatchFactory, signed

pytestmark = pytest.mark.timeout(60)
BIN = Path(sys.executable).parent
UNSIGNED = FetchOutput("run-s", "stage-a", 1, 1)


def make_tls(directory: Path) -> FlightTLS:
    """Run the real command, then load what it wrote."""
    done = subprocess.run(
        [str(BIN / "osiris-flight"), "keys", "tls", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    tls = load_flight_tls(
        str(directory / "worker.pem"), str(directory / "worker.key"), str(directory / "ca.pem")
    )
    assert tls is not None
    return tls


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tls")


@pytest.fixture(scope="module")
def tls(keys: Path) -> FlightTLS:
    return make_tls(keys)


@pytest.fixture
def tls_server(store: BatchStore, tls: FlightTLS) -> Iterator[FlightDataServer]:
    srv = FlightDataServer(store, wait_timeout_s=10.0, tls=tls, token_key=TOKEN_KEY).start()
    yield srv
    srv.shutdown()


@pytest.fixture
def stored(store: BatchStore, schema: pa.Schema, make_batch: BatchFactory) -> FetchOutput:
    with store.create(UNSIGNED.key, schema) as writer:
        writer.append(make_batch(0, 100))
    return UNSIGNED


def _plain_uri(server: FlightDataServer) -> str:
    return server.uri.replace("grpc+tls://", "grpc://")


def _stranger(uri: str, tls: FlightTLS | None = None) -> flight.FlightClient:
    if tls is None:
        return flight.FlightClient(uri)
    return flight.FlightClient(
        uri,
        tls_root_certs=tls.ca,
        cert_chain=tls.cert_chain,
        private_key=tls.private_key,
        override_hostname=WORKER_SERVER_NAME,
    )


def test_keys_command_writes_a_ca_and_worker_certificate(keys: Path, tls: FlightTLS) -> None:
    assert sorted(p.name for p in keys.iterdir()) == ["ca.key", "ca.pem", "worker.key", "worker.pem"]
    for secret in ("ca.key", "worker.key"):
        assert stat.S_IMODE((keys / secret).stat().st_mode) == 0o600
    assert "PRIVATE" not in repr(tls)
    again = subprocess.run(
        [str(BIN / "osiris-flight"), "keys", "tls", str(keys)], capture_output=True, text=True, timeout=60
    )
    assert again.returncode == 2 and "already exist" in again.stderr and "Traceback" not in again.stderr


def test_tls_material_is_checked_when_loaded(keys: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    make_tls(other)
    with pytest.raises(InvalidInput, match="together"):
        load_flight_tls(str(keys / "worker.pem"), None, None)
    with pytest.raises(InvalidInput, match="does not belong to the certificate"):
        load_flight_tls(str(keys / "worker.pem"), str(other / "worker.key"), str(keys / "ca.pem"))
    with pytest.raises(InvalidInput, match="not a PEM certificate"):
        load_flight_tls(str(keys / "worker.key"), str(keys / "worker.key"), str(keys / "ca.pem"))
    with pytest.raises(InvalidInput, match="cannot read"):
        load_flight_tls(str(keys / "missing.pem"), str(keys / "worker.key"), str(keys / "ca.pem"))
    assert load_flight_tls(None, None, None) is None
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3") and not is_loopback("hostb")
    assert stays_on_host("ipc:///tmp/x.sock") and stays_on_host("tcp://127.0.0.1:5555")
    assert not stays_on_host("tcp://*:5555") and not stays_on_host("tcp://0.0.0.0:5555")


def test_tls_pool_reads_with_a_valid_token(
    tls_server: FlightDataServer, tls: FlightTLS, stored: FetchOutput
) -> None:
    assert tls_server.uri.startswith("grpc+tls://127.0.0.1:")
    with FlightClientPool(tls=tls) as pool:
        table = pa.Table.from_batches(list(pool.read(tls_server.uri, signed(stored)).batches()))
    assert table.num_rows == 100


def test_plain_tcp_client_to_a_tls_server_fails(tls_server: FlightDataServer, stored: FetchOutput) -> None:
    client = _stranger(_plain_uri(tls_server))
    try:
        with pytest.raises(flight.FlightUnavailableError):
            client.do_get(flight.Ticket(encode_ticket(signed(stored)))).read_all()
    finally:
        client.close()
    with FlightClientPool() as pool, pytest.raises(UpstreamLost):
        pool.read(_plain_uri(tls_server), signed(stored))


def test_a_tls_worker_never_reads_from_a_peer_serving_in_clear(
    store: BatchStore, tls: FlightTLS, stored: FetchOutput
) -> None:
    """A peer started with --insecure would get our token and send rows unencrypted: refused, terminal."""
    plain = FlightDataServer(store, wait_timeout_s=10.0, token_key=TOKEN_KEY).start()
    try:
        with FlightClientPool(tls=tls) as pool, pytest.raises(FetchRefused) as caught:
            pool.read(plain.uri, signed(stored))
    finally:
        plain.shutdown()
    assert "without TLS" in str(caught.value) and not is_transient(caught.value)


def test_a_client_without_a_certificate_fails(
    tls_server: FlightDataServer, tls: FlightTLS, stored: FetchOutput
) -> None:
    client = flight.FlightClient(tls_server.uri, tls_root_certs=tls.ca, override_hostname=WORKER_SERVER_NAME)
    try:
        with pytest.raises(flight.FlightUnavailableError):
            client.do_get(flight.Ticket(encode_ticket(signed(stored)))).read_all()
    finally:
        client.close()


def test_a_server_of_another_cluster_ca_is_a_terminal_tls_failure(
    tls_server: FlightDataServer, tmp_path: Path, stored: FetchOutput
) -> None:
    """Our client does not trust the peer's certificate: terminal, named, not UpstreamLost."""
    foreign = make_tls(tmp_path / "foreign")
    with FlightClientPool(tls=foreign) as pool, pytest.raises(FetchRefused) as caught:
        pool.read(tls_server.uri, signed(stored))
    assert "TLS with the peer failed" in str(caught.value) and "same cluster CA" in str(caught.value)
    assert not is_transient(caught.value) and isinstance(caught.value, TerminalError)


@pytest.mark.parametrize(
    "case",
    ["missing", "forged", "expired", "other run", "other partition", "other key", "reader changed"],
)
def test_a_fetch_without_a_valid_token_is_refused(
    tls_server: FlightDataServer, tls: FlightTLS, stored: FetchOutput, case: str
) -> None:
    good = signed(stored)
    ticket = {
        "missing": stored,
        "forged": dataclasses.replace(good, token=bytes(32)),
        "expired": signed(stored, ttl_s=-1.0),
        # a valid token for run A, with the ticket pointed at run B's output of the same shape
        "other run": dataclasses.replace(signed(FetchOutput("run-a", "stage-a", 1, 1)), run_id=stored.run_id),
        "other partition": dataclasses.replace(signed(FetchOutput("run-s", "stage-a", 0, 1)), partition=1),
        "other key": fetch_token.mint(b"x" * 32, stored, "reader-w", 600.0),
        "reader changed": dataclasses.replace(good, reader="someone-else"),
    }[case]
    reason = {"missing": "carries no token", "expired": "has expired"}.get(case, "does not match the ticket")
    with FlightClientPool(tls=tls) as pool, pytest.raises(FetchRefused) as caught:
        pool.read(tls_server.uri, ticket)
    assert "refused the fetch token: fetch refused: the" in str(caught.value)
    assert reason in str(caught.value) and "run=run-s" in str(caught.value)
    assert not is_transient(caught.value)
    client = _stranger(tls_server.uri, tls)
    try:
        with pytest.raises(flight.FlightUnauthenticatedError) as raw:
            client.do_get(flight.Ticket(encode_ticket(ticket))).read_all()
        assert "Traceback" not in str(raw.value)
    finally:
        client.close()


def test_a_worker_that_has_not_joined_refuses_every_fetch(
    store: BatchStore, stored: FetchOutput, pool: FlightClientPool
) -> None:
    server = FlightDataServer(store, wait_timeout_s=10.0).start()  # no key yet: Welcome not received
    try:
        with pytest.raises(FetchRefused, match="has not joined a coordinator"):
            pool.read(server.uri, signed(stored))
        server.set_token_key(TOKEN_KEY)
        assert sum(b.num_rows for b in pool.read(server.uri, signed(stored)).batches()) == 100
    finally:
        server.shutdown()


def test_every_other_flight_method_is_refused_without_a_traceback(
    tls_server: FlightDataServer, tls: FlightTLS
) -> None:
    client = _stranger(tls_server.uri, tls)
    descriptor = flight.FlightDescriptor.for_path("run-s")
    calls = {
        "list_flights": lambda: list(client.list_flights()),
        "get_flight_info": lambda: client.get_flight_info(descriptor),
        "get_schema": lambda: client.get_schema(descriptor),
        "do_put": lambda: client.do_put(descriptor, pa.schema([("a", pa.int64())]))[0].close(),
        "do_exchange": lambda: client.do_exchange(descriptor)[0].close(),
        "do_action": lambda: list(client.do_action(flight.Action("drop", b""))),
        "list_actions": lambda: list(client.list_actions()),
        "handshake": lambda: client.authenticate_basic_token("admin", "admin"),
    }
    try:
        for method, call in calls.items():
            # pyarrow's client raises OSError for a refused get_schema, the Flight error elsewhere
            error = OSError if method == "get_schema" else flight.FlightUnauthenticatedError
            with pytest.raises(error) as caught:
                call()
            assert f"{method} refused" in str(caught.value) and "Unauthenticated" in str(caught.value)
            assert "Traceback" not in str(caught.value) and ".py" not in str(caught.value), method
    finally:
        client.close()


@pytest.mark.parametrize(
    "ticket",
    [
        b"\x85\xa1v\x04\xa2op\xacfetch_output\xa6run_id\x81\x01\x02\xa8stage_id\xa1s\xa9partition\x90",
        b"\xc1",
        b"",
    ],
)
def test_a_malformed_ticket_gets_a_status_not_a_traceback(
    tls_server: FlightDataServer, tls: FlightTLS, ticket: bytes
) -> None:
    client = _stranger(tls_server.uri, tls)
    try:
        with pytest.raises(flight.FlightError) as caught:
            client.do_get(flight.Ticket(ticket)).read_all()
        assert "bad ticket" in str(caught.value)
        assert "Traceback" not in str(caught.value) and ".py" not in str(caught.value)
    finally:
        client.close()


def test_a_ticket_of_wrong_field_types_gets_a_status_not_a_traceback(
    tls_server: FlightDataServer, tls: FlightTLS, stored: FetchOutput
) -> None:
    """Fields ``decode`` may not type-check: a map as run id, a list as partition, a string token."""
    client = _stranger(tls_server.uri, tls)
    try:
        for ticket in (
            dataclasses.replace(signed(stored), run_id={"a": 1}),  # type: ignore[arg-type]
            dataclasses.replace(signed(stored), partition=[1]),  # type: ignore[arg-type]
            dataclasses.replace(signed(stored), token="abc"),  # type: ignore[arg-type]
            dataclasses.replace(signed(stored), expires_at="never"),  # type: ignore[arg-type]
        ):
            with pytest.raises(flight.FlightError) as caught:
                client.do_get(flight.Ticket(encode_ticket(ticket))).read_all()
            assert "Traceback" not in str(caught.value) and ".py" not in str(caught.value)
    finally:
        client.close()


def test_osiris_yaml_cluster_tls_and_token_lifetime_are_checked(tmp_path: Path) -> None:
    from osiris_flight.config import load_config

    good = tmp_path / "good.yaml"
    good.write_text(
        "cluster:\n  tls_cert: a.pem\n  tls_key: a.key\n  tls_ca: ca.pem\n  fetch_token_ttl_s: 3600\n"
    )
    cluster = load_config(good).cluster
    assert (cluster.tls_cert, cluster.tls_key, cluster.tls_ca) == ("a.pem", "a.key", "ca.pem")
    assert cluster.fetch_token_ttl_s == 3600.0
    for body, field in (("fetch_token_ttl_s: 0", "must be positive"), ("tls_cert: 5", "expected str")):
        bad = tmp_path / "bad.yaml"
        bad.write_text(f"cluster:\n  {body}\n")
        with pytest.raises(InvalidInput, match=field) as caught:
            load_config(bad)
        assert "cluster." + body.split(":")[0] in str(caught.value)


@pytest.mark.parametrize("encrypted", [False, True])
def test_the_bytes_on_the_wire_hold_no_row_value_or_token_with_tls(
    store: BatchStore,
    tls: FlightTLS,
    schema: pa.Schema,
    make_batch: BatchFactory,
    encrypted: bool,
) -> None:
    """A TCP relay between pool and server records every byte: without TLS the rows' strings and the
    token are there to read (the control), with TLS neither is."""
    from tests.cluster.test_curve import Relay

    with store.create(UNSIGNED.key, schema) as writer:
        writer.append(make_batch(0, 2000))
    server = FlightDataServer(store, tls=tls if encrypted else None, token_key=TOKEN_KEY).start()
    relay = Relay(("127.0.0.1", server.port))
    ticket = signed(UNSIGNED)
    try:
        scheme = "grpc+tls" if encrypted else "grpc"
        with FlightClientPool(tls=tls if encrypted else None) as pool:
            stream = pool.read(f"{scheme}://127.0.0.1:{relay.port}", ticket)
            assert sum(b.num_rows for b in stream.batches()) == 2000
        assert len(relay.recorded) > 50_000
        readable = b"row-00001999" in relay.recorded and ticket.token in relay.recorded
        assert readable is not encrypted
        assert (b"fetch_output" in relay.recorded) is not encrypted  # the ticket itself
    finally:
        relay.close()
        server.shutdown()


def test_each_worker_serves_with_its_own_key_derived_from_the_master(
    store: BatchStore, stored: FetchOutput, pool: FlightClientPool
) -> None:
    """server_key(master, id) is HMAC-SHA256(master, domain || id): the same for one id, another for
    another id or master, never the master; a token minted with worker B's key is refused by a
    server holding worker A's key, on the wire and in ``verify``."""
    master, other_master = fetch_token.new_key(), fetch_token.new_key()
    key_a = fetch_token.server_key(master, "alpha")
    key_b = fetch_token.server_key(master, "beta")
    assert key_a == fetch_token.server_key(master, "alpha") and len(key_a) == fetch_token.KEY_BYTES
    assert len({key_a, key_b, fetch_token.server_key(other_master, "alpha"), master}) == 4
    assert fetch_token.server_key(master, "alph") != fetch_token.server_key(master, "alpha")
    # The master's MAC of the bare id is not the key: the derivation is domain-separated.
    assert key_a != hmac.new(master, b"alpha", hashlib.sha256).digest()

    for_a = fetch_token.mint(key_a, stored, "beta", 600.0)
    for_b = fetch_token.mint(key_b, stored, "beta", 600.0)
    fetch_token.verify(key_a, for_a)
    with pytest.raises(fetch_token.TokenRefused, match="does not match"):
        fetch_token.verify(key_a, for_b)
    server = FlightDataServer(store, wait_timeout_s=10.0, token_key=key_a).start()
    try:
        with pytest.raises(FetchRefused, match="the token does not match the ticket"):
            pool.read(server.uri, for_b)
        assert sum(b.num_rows for b in pool.read(server.uri, for_a).batches()) == 100
    finally:
        server.shutdown()


def test_a_real_ticket_is_far_below_the_ticket_limit() -> None:
    longest = "x" * 128  # ids are bounded names; a stage id is a step id
    ticket = fetch_token.mint(TOKEN_KEY, FetchOutput(longest, longest, 65535, 2**31 - 1, 65535), longest, 1e9)
    assert len(encode_ticket(ticket)) < MAX_TICKET_BYTES // 4
    assert len(encode_ticket(signed(UNSIGNED))) < 256


def _peak_rss(pid: int) -> int:
    """The process's peak resident set since the last ``_reset_peak`` (VmHWM, bytes)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/PID/status")


def _reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux)


def test_an_oversized_ticket_is_refused_before_it_is_decoded(tmp_path: Path) -> None:
    """Two 16 MiB tickets of empty msgpack maps, at once (the red team's attack: decoded, they took
    a worker to 2.5 GB): refused with a short UNAUTHENTICATED status, the serving process's peak RSS
    grows by the copies gRPC and pyarrow make of the message before our check (gRPC's receive limit
    is not settable from pyarrow: measured ~6x the ticket), far from msgpack's ~80x; then the server
    still serves a valid fetch."""
    script = (
        "import pathlib, time, pyarrow as pa\n"
        "from osiris_flight.data.batch_store import BatchStore\n"
        "from osiris_flight.data.flight_io import FlightDataServer\n"
        f"store = BatchStore(1 << 20, pathlib.Path({str(tmp_path / 'spill')!r}))\n"
        f"with store.create({UNSIGNED.key!r}, pa.schema([('id', pa.int64())])) as writer:\n"
        "    writer.append(pa.record_batch([pa.array(range(100))], names=['id']))\n"
        f"server = FlightDataServer(store, token_key={TOKEN_KEY!r}).start()\n"
        "print(server.uri, flush=True)\n"
        "time.sleep(120)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    assert proc.stdout is not None
    uri = proc.stdout.readline().strip()
    client = flight.FlightClient(uri)
    try:
        size = 16 << 20
        ticket = b"\xdd" + struct.pack(">I", size - 5) + b"\x80" * (size - 5)  # an array of empty maps
        assert client.do_get(flight.Ticket(encode_ticket(signed(UNSIGNED)))).read_all().num_rows == 100
        _reset_peak(proc.pid)
        before = psutil.Process(proc.pid).memory_info().rss

        def send() -> BaseException:
            with pytest.raises(flight.FlightUnauthenticatedError) as caught:
                client.do_get(flight.Ticket(ticket)).read_all()
            return caught.value

        with ThreadPoolExecutor(2) as executor:
            refusals = list(executor.map(lambda _: send(), range(2)))
        grown = _peak_rss(proc.pid) - before
        for refused in refusals:
            message = str(refused)
            assert f"fetch refused: the ticket has {size} bytes, more than the {MAX_TICKET_BYTES}" in message
            assert "Traceback" not in message and ".py" not in message
        assert grown < 2 * size * 12, f"peak RSS grew by {grown >> 20} MiB"  # decoded: ~2.5 GB
        assert proc.poll() is None
        assert client.do_get(flight.Ticket(encode_ticket(signed(UNSIGNED)))).read_all().num_rows == 100
    finally:
        client.close()
        proc.kill()
        proc.wait(timeout=10)
