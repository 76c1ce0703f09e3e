"""Arrow Flight transport of task outputs: a server over a worker's BatchStore, a pooled client.

The ticket is the protocol's ``FetchOutput`` message, so a peer speaking another protocol version is
refused with a clear error rather than misread. Every ticket carries the coordinator's fetch token
(data/fetch_token.py); the server serves nothing without a valid one, and only ``do_get``: every
other Flight method is refused. Across hosts the server and its clients speak mutual TLS
(data/tls.py): ``grpc+tls://`` URIs, certificates of one cluster CA on both sides.

Every failure a consumer can see while fetching an input (peer gone, output aborted or released,
stream cut) reaches it as ``UpstreamLost`` naming the peer and the output, which the scheduler
retries; a refused ticket is terminal (``ProtocolError``), and so is a refused token or a TLS
certificate the peer does not accept (``FetchRefused``): retrying cannot help. A stranger gets a
Flight status code and one short sentence, never a Python traceback (details go to this log).
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.flight as flight

from osiris_flight.data import fetch_token
from osiris_flight.data.batch_store import BatchStore, format_key, ipc_write_options
from osiris_flight.data.rowstream import RowStream
from osiris_flight.data.tls import FlightTLS
from osiris_flight.errors import ProtocolError, TerminalError, UpstreamLost
from osiris_flight.protocol import FetchOutput, decode_ticket, encode_ticket

log = logging.getLogger(__name__)

# Wire compression of do_get streams. Measured on loopback (2 vCPU, noisy; 10M rows of
# int64/float64/string = 419 MB in 65536-row batches; best of 3-5, three runs): from memory, none
# 1.0-1.7 GB/s (24-40 M rows/s), lz4 0.8-1.2 GB/s, zstd 0.5-0.9 GB/s; from zstd spill files, none
# 0.7-1.1 GB/s, lz4 0.7-0.8 GB/s. When the link runs at memory speed, compressing costs more CPU than
# it saves, so the default is none. Across a real network (1 Gbit/s = 0.125 GB/s) lz4 should win:
# ``engine.flight_compression: lz4`` in osiris.yaml (``--flight-compression`` of a worker) sets it.
WIRE_COMPRESSION: str | None = None

# Receive window of a do_get stream. gRPC by default grows a stream's HTTP/2 flow-control window by
# probing the bandwidth-delay product, and on loopback it grew until a consumer held 50-75 MiB of
# received but unread messages (outside Arrow's pool), more than the batch store's budget, and more
# with every consumer (measured in a client reading 1.3 GB from a worker: +48..+76 MiB of RSS, against
# +26..+30 MiB with a fixed 4 MiB window, read at the same 13-17 M rows/s, far above what any operator
# consumes). A fixed window bounds what each input holds in flight: one message being assembled, one
# being read, and the window. 4 MiB keeps a 1 ms round trip at 4 GB/s.
RECEIVE_WINDOW_BYTES = 4 * 1024 * 1024
CHANNEL_OPTIONS: list[tuple[str, int | str]] = [
    ("grpc.http2.bdp_probe", 0),
    ("grpc.http2.lookahead_bytes", RECEIVE_WINDOW_BYTES),
]

# The largest ticket the server reads. A real one (an encoded FetchOutput with its token) is about 200
# bytes; anything bigger was minted by no coordinator, and is refused before it is decoded: msgpack
# turns one byte of a hostile ticket into a Python object of ~60 bytes (two 16 MB tickets of empty
# maps took a worker to 2.5 GB). gRPC itself still receives the whole message: Arrow's server sets no
# receive limit (SetMaxReceiveMessageSize(-1), for do_put) and pyarrow 26's FlightServerBase exposes
# no option (generic_options, builder_hook) to set one, so a big ticket still costs its size, in
# copies freed when the call ends.
MAX_TICKET_BYTES = 4096
BAD_TICKET = "bad ticket"  # prefix of the server's refusal; the client maps it to ProtocolError
FETCH_REFUSED = "fetch refused"  # prefix of a refused token (FlightUnauthenticatedError)
ONLY_DO_GET = "an osiris-flight worker serves do_get with a ticket from its coordinator only"
# Texts of gRPC's status when TLS itself failed (our certificate or the peer's is not accepted): a
# peer that is gone says "Connection refused" or "Socket closed" instead.
# What gRPC says when a peer's certificate does not verify (another CA, another name): retrying
# cannot help. Other handshake failures (a peer dying mid-handshake: SSL_ERROR_SYSCALL) are a lost
# input like any other.
_TLS_FAILURES = ("CERTIFICATE_VERIFY_FAILED", "certificate verify failed", "Peer name")


class FetchRefused(TerminalError):
    """A peer refused to serve an input: its token was not accepted, or TLS between the two workers
    failed (certificates of another CA, a wrong server name). Retrying cannot help: terminal."""


class FlightDataServer(flight.FlightServerBase):
    """Serves the outputs of ``store`` by ``FetchOutput`` ticket, to tickets whose token verifies
    under ``token_key``, this worker's own key (``set_token_key``: the worker learns it in Welcome;
    until then every fetch is refused); a ticket over ``MAX_TICKET_BYTES`` is refused undecoded.
    With ``tls`` it listens on ``grpc+tls://`` and requires a client certificate signed by ``tls.ca``.

    A complete output held wholly in memory is sent by C++ (``RecordBatchStream``: no Python per
    batch); anything else (still being written, or spilled) streams through the store's reader as it
    is produced. ``wait_timeout_s`` (seconds) is how long a request waits for an output whose producer
    has not started yet. The server listens as soon as it is constructed; ``start()`` just runs the
    serve loop in a daemon thread.
    """

    def __init__(
        self,
        store: BatchStore,
        location: str = "grpc://127.0.0.1:0",
        *,
        compression: str | None = WIRE_COMPRESSION,
        wait_timeout_s: float = 60.0,
        tls: FlightTLS | None = None,
        token_key: bytes | None = None,
    ) -> None:
        if tls is not None:
            location = location.replace("grpc://", "grpc+tls://", 1)
            super().__init__(
                location,
                tls_certificates=[flight.CertKeyPair(tls.cert_chain, tls.private_key)],
                verify_client=True,
                root_certificates=tls.ca,
                middleware={"only_do_get": _OnlyDoGet()},
            )
        else:
            super().__init__(location, middleware={"only_do_get": _OnlyDoGet()})
        self._token_key = token_key
        self._store = store
        self._wait_timeout_s = wait_timeout_s
        self._options = ipc_write_options(compression)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        parts = urlsplit(location)
        host = parts.hostname or "127.0.0.1"
        if host in ("0.0.0.0", "::"):
            host = socket.gethostname()  # listening on all interfaces: advertise a reachable name
        self._uri = f"{parts.scheme or 'grpc'}://{host}:{self.port}"

    @property
    def uri(self) -> str:
        """The URI peers connect to, with the real bound port (``location`` may ask for port 0)."""
        return self._uri

    def set_token_key(self, key: bytes | None) -> None:
        """The key tickets' tokens must verify under: this worker's, from the coordinator's Welcome
        (data/fetch_token.py ``server_key``; None: refuse all)."""
        self._token_key = key or None

    def start(self) -> FlightDataServer:
        """Run the serve loop in a daemon thread (requests are already accepted before this)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self.serve, name=f"flight-server {self._uri}", daemon=True)
            self._thread.start()
        return self

    def shutdown(self) -> None:
        """Stop serving. Streams waiting for data end with an error (the client sees UpstreamLost)
        instead of holding the shutdown; call from outside a Flight handler. Idempotent."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        super().shutdown()
        if self._thread is not None:
            self._thread.join(timeout=10.0)

    def do_get(self, context: flight.ServerCallContext, ticket: flight.Ticket) -> flight.FlightDataStream:
        """Serve one output. Anything unexpected is logged here and answered with a short Flight
        error: pyarrow would send a Python exception's traceback to the caller."""
        try:
            return self._serve(context, ticket)
        except flight.FlightError:
            raise
        except Exception:
            log.exception("do_get from %s failed", _peer(context))
            raise flight.FlightServerError("internal error (see the serving worker's log)") from None

    def _serve(self, context: flight.ServerCallContext, ticket: flight.Ticket) -> flight.FlightDataStream:
        raw = ticket.ticket
        if len(raw) > MAX_TICKET_BYTES:
            log.warning("refused a %d-byte ticket from %s", len(raw), _peer(context))
            raise flight.FlightUnauthenticatedError(
                f"{FETCH_REFUSED}: the ticket has {len(raw)} bytes, more than the {MAX_TICKET_BYTES} "
                "a coordinator's ticket may have"
            )
        try:
            fetch = decode_ticket(raw)
        except ProtocolError as exc:
            raise flight.FlightServerError(
                f"{BAD_TICKET}: {exc} (the ticket must be an encoded FetchOutput; are both peers the "
                "same osiris-flight version?)"
            ) from None
        except Exception:  # field types decode() does not check: a ticket we never minted
            raise flight.FlightServerError(f"{BAD_TICKET}: malformed FetchOutput") from None
        try:
            fetch_token.verify(self._token_key, fetch)
        except fetch_token.TokenRefused as exc:
            log.warning("refused a fetch from %s: %s", _peer(context), exc)
            raise flight.FlightUnauthenticatedError(f"{FETCH_REFUSED}: {exc}") from None
        key = fetch.key
        resident = self._store.resident_batches(key)
        if resident is not None:
            schema, batches = resident
            return flight.RecordBatchStream(pa.Table.from_batches(batches, schema=schema), self._options)

        def cancelled() -> bool:
            return self._stopping.is_set() or context.is_cancelled()

        try:
            schema, reader = self._store.open_reader(key, self._wait_timeout_s, cancelled)
        except UpstreamLost as exc:
            raise flight.FlightUnavailableError(str(exc)) from None
        return flight.GeneratorStream(schema, self._guarded(reader, format_key(key)), self._options)

    def _guarded(self, batches: Iterator[pa.RecordBatch], what: str) -> Iterator[pa.RecordBatch]:
        """Turn store errors into Flight errors the client understands (never a Python traceback)."""
        try:
            yield from batches
        except UpstreamLost as exc:
            if self._stopping.is_set():
                raise flight.FlightUnavailableError(f"{what}: the serving worker is shutting down") from None
            raise flight.FlightUnavailableError(str(exc)) from None
        except Exception:
            log.exception("serving %s failed", what)
            raise flight.FlightServerError(f"{what}: serving failed (see the serving worker's log)") from None
        finally:
            close = getattr(batches, "close", None)
            if close is not None:
                close()


def _peer(context: flight.ServerCallContext) -> str:
    try:
        return str(context.peer())
    except Exception:
        return "?"


class _OnlyDoGet(flight.ServerMiddlewareFactory):
    """Refuses every Flight method but ``do_get`` (list_flights, get_flight_info, get_schema, do_put,
    do_exchange, do_action, list_actions, handshake) before any handler runs: a status and one
    sentence. (Refusing in the handlers is not enough: pyarrow answers an exception raised in
    ``get_schema``, and its default ``NotImplementedError`` everywhere, with a Python traceback.)"""

    def start_call(self, info: flight.CallInfo, headers: dict[str, list[str]]) -> None:
        if info.method != flight.FlightMethod.DO_GET:
            method = info.method.name.lower()
            log.warning("refused %s", method)
            raise flight.FlightUnauthenticatedError(f"{method} refused: {ONLY_DO_GET}")


def _short(exc: BaseException) -> str:
    """The first sentence of a Flight error: gRPC appends long debug contexts after it."""
    text = str(exc)
    for marker in (". Detail:", ". gRPC client debug context:"):
        text = text.split(marker, 1)[0]
    return text.strip() or type(exc).__name__


def _describe(uri: str, ticket: FetchOutput) -> str:
    return f"{format_key(ticket.key)} from {uri}"


def _translate(uri: str, ticket: FetchOutput, exc: BaseException, when: str) -> Exception:
    message = _short(exc)
    if isinstance(exc, flight.FlightServerError) and message.startswith(BAD_TICKET):
        return ProtocolError(f"{_describe(uri, ticket)}: the peer refused the ticket: {message}")
    if isinstance(exc, flight.FlightUnauthenticatedError | flight.FlightUnauthorizedError):
        hint = (
            "tokens live cluster.fetch_token_ttl_s seconds from assignment; are the hosts' clocks in sync?"
            if "expired" in message
            else "is the serving worker joined to the coordinator that assigned this task?"
        )
        return FetchRefused(f"{_describe(uri, ticket)}: the peer refused the fetch token: {message} ({hint})")
    if isinstance(exc, flight.FlightUnavailableError) and any(t in message for t in _TLS_FAILURES):
        return FetchRefused(
            f"{_describe(uri, ticket)}: TLS with the peer failed: {message} (both workers need "
            "certificates signed by the same cluster CA, with the cluster-wide server name; see "
            "docs/running.md)"
        )
    if uri.startswith("grpc+tls://") and "Socket closed" in message:
        message += " (with TLS this is also how a peer refuses our certificate: same cluster CA?)"
    return UpstreamLost(f"lost {_describe(uri, ticket)} {when}: {message}")


_TRANSPORT_ERRORS = (flight.FlightError, pa.ArrowException, OSError)


class FlightClientPool:
    """One ``FlightClient`` per peer URI, created on first use and reused (a gRPC channel multiplexes
    concurrent streams, so one per peer is enough). Thread-safe.

    ``generic_options`` go to every client's gRPC channel after ``CHANNEL_OPTIONS`` (the bounded
    receive window), e.g. keepalive settings for networks where a peer can vanish without closing its
    connections. With ``tls`` every client speaks mutual TLS (``grpc+tls://`` URIs): it trusts only
    the cluster CA, presents this worker's certificate, and checks the server's certificate against
    the cluster-wide server name rather than the host it dials (data/tls.py says why).
    """

    def __init__(
        self, generic_options: list[tuple[str, int | str]] | None = None, tls: FlightTLS | None = None
    ) -> None:
        self._generic_options = CHANNEL_OPTIONS + list(generic_options or [])
        self._connect: Callable[[str], flight.FlightClient]
        if tls is None:
            self._connect = lambda uri: flight.FlightClient(uri, generic_options=self._generic_options)
        else:  # mutual TLS: trust the cluster CA only, present our certificate, check the cluster name

            def connect(uri: str) -> flight.FlightClient:
                if not uri.startswith(("grpc+tls://", "grpc+unix://")):
                    # A peer serving in clear (started with --insecure) would get our tokens, and
                    # its rows would cross the network unencrypted: a TLS worker never downgrades.
                    raise FetchRefused(
                        f"refusing to read from {uri} without TLS: this worker uses Flight TLS and the "
                        "peer serves in clear (started with --insecure?); give every worker the cluster's "
                        "TLS certificates"
                    )
                return flight.FlightClient(
                    uri,
                    tls_root_certs=tls.ca,
                    cert_chain=tls.cert_chain,
                    private_key=tls.private_key,
                    override_hostname=tls.server_name,
                    generic_options=self._generic_options,
                )

            self._connect = connect
        self._clients: dict[str, flight.FlightClient] = {}
        self._lock = threading.Lock()
        self._closed = False

    def client(self, uri: str) -> flight.FlightClient:
        with self._lock:
            if self._closed:
                raise RuntimeError("the Flight client pool is closed")
            client = self._clients.get(uri)
            if client is None:
                client = self._connect(uri)
                self._clients[uri] = client
            return client

    def read(self, uri: str, ticket: FetchOutput, name: str = "flight") -> RowStream:
        """Stream one output from a peer. Connects and reads the schema now (so a missing peer or a
        refused ticket fails here); batches arrive as the consumer pulls them, never read whole."""
        reader = self._open(uri, ticket)
        return RowStream(self._drain(reader, uri, ticket), reader.schema, name=name)

    def read_many(self, sources: list[tuple[str, FetchOutput]], name: str = "flight") -> RowStream:
        """Stream several outputs (partitions) one after another, in the order given. The first is
        opened now for the schema; each next one when the previous ends. All must share a schema."""
        if not sources:
            raise ValueError(f"{name}: read_many needs at least one (uri, ticket) source")
        first_uri, first_ticket = sources[0]
        first = self._open(first_uri, first_ticket)
        schema = first.schema

        def chain() -> Iterator[pa.RecordBatch]:
            yield from self._drain(first, first_uri, first_ticket)
            for uri, ticket in sources[1:]:
                reader = self._open(uri, ticket)
                if not reader.schema.equals(schema, check_metadata=False):
                    reader.cancel()
                    raise TerminalError(
                        f"{name}: {_describe(uri, ticket)} has schema {reader.schema}, but the first "
                        f"partition has {schema}; partitions of one input must share a schema"
                    )
                yield from self._drain(reader, uri, ticket)

        return RowStream(chain(), schema, name=name)

    def close(self) -> None:
        """Close every client (streams in progress fail)."""
        with self._lock:
            self._closed = True
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()

    def __enter__(self) -> FlightClientPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _open(self, uri: str, ticket: FetchOutput) -> flight.FlightStreamReader:
        try:
            reader = self.client(uri).do_get(flight.Ticket(encode_ticket(ticket)))
            _ = reader.schema  # the server sends the schema first: wait for it so failures show here
        except _TRANSPORT_ERRORS as exc:
            raise _translate(uri, ticket, exc, "when opening the stream") from exc
        return reader

    @staticmethod
    def _drain(reader: flight.FlightStreamReader, uri: str, ticket: FetchOutput) -> Iterator[pa.RecordBatch]:
        finished = False
        rows = 0
        try:
            while True:
                try:
                    chunk = reader.read_chunk()
                except StopIteration:
                    finished = True
                    return
                except _TRANSPORT_ERRORS as exc:
                    finished = True  # the stream is already dead: nothing to cancel
                    raise _translate(uri, ticket, exc, f"mid-stream after {rows} rows") from exc
                rows += chunk.data.num_rows
                yield chunk.data
        finally:
            if not finished:
                reader.cancel()  # the consumer stopped early: let the server stop producing
