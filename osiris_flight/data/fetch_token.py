"""Fetch tokens: the coordinator's signature on one Flight ``do_get``.

A worker's Flight server serves an output only to a ticket (``FetchOutput``) carrying a token the
coordinator minted when it assigned the reading task: HMAC-SHA256 over the run, stage, partition,
bucket, attempt, reader worker id and expiry. Changing any of those (another run's output, another
attempt) breaks the signature; a stranger without the key cannot make one; a token stops working at
``expires_at``.

Keys. The coordinator makes a master key at start and never sends it. Each worker's Flight server
verifies with its own key, ``server_key(master, worker_id)`` = HMAC-SHA256(master, domain || worker
id), which only that worker receives, in its ``Welcome`` (over the CURVE-encrypted control plane, or
the embedded cluster's private link; again in the Welcome of a rejoin, the id being the same). The
coordinator mints the ticket for an input with the key of the worker serving it. So a worker's key
mints tokens only for its own outputs, which it holds anyway: a hostile worker cannot read another
worker's outputs with it. The ``reader`` field is signed but not checked against the caller: all
workers share one TLS certificate name, so the server cannot tell which worker is calling.

Lifetime (``cluster.fetch_token_ttl_s``, default ``DEFAULT_TTL_S`` = 24 h). A token is minted when
the task is assigned and checked when each input partition's stream opens, and a task opens its
inputs one after another: a join reads its right input whole before the left, a task may wait for a
slow producer, a partition may be read hours into a long task. A token that expires first fails the
run (it is an authentication failure, not retried), so the lifetime is longer than a task is expected
to run. A token names one attempt's output of one run, and outputs are deleted when their run ends,
so it is of no use after its run whatever its lifetime. Expiry is compared with the serving worker's
clock: hosts' clocks must agree to well within the lifetime.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import secrets
import time

import msgpack

from osiris_flight.protocol import FetchOutput

DEFAULT_TTL_S = 24 * 3600.0
KEY_BYTES = 32
_DOMAIN = b"osiris-flight fetch token v1"
# Fixed prefix of a server key's derivation input, then the worker id (so distinct ids are distinct
# inputs). The master key signs nothing else: tokens are signed with server keys.
_SERVER_KEY_DOMAIN = b"osiris-flight fetch-token server key v1\x00"


class TokenRefused(Exception):
    """The ticket's token is missing, forged, for other fields, or expired (the message says which,
    never the token)."""


def new_key() -> bytes:
    """A fresh master key (the coordinator makes one at start and keeps it)."""
    return secrets.token_bytes(KEY_BYTES)


def server_key(master: bytes, server_id: str) -> bytes:
    """The key worker ``server_id``'s Flight server verifies tokens with, and the coordinator mints
    tickets for that worker's outputs with: HMAC-SHA256(master, domain || server_id)."""
    return hmac.new(master, _SERVER_KEY_DOMAIN + server_id.encode(), hashlib.sha256).digest()


def _signed_fields(ticket: FetchOutput) -> bytes:
    return msgpack.packb(
        [
            _DOMAIN,
            ticket.run_id,
            ticket.stage_id,
            ticket.partition,
            ticket.bucket,
            ticket.attempt,
            ticket.reader,
            ticket.expires_at,
        ],
        use_bin_type=True,
    )


def _mac(key: bytes, ticket: FetchOutput) -> bytes:
    return hmac.new(key, _signed_fields(ticket), hashlib.sha256).digest()


def mint(key: bytes, ticket: FetchOutput, reader: str, ttl_s: float, now: float | None = None) -> FetchOutput:
    """``ticket`` for ``reader``, valid ``ttl_s`` seconds from ``now``, signed with ``key`` (the
    serving worker's ``server_key``)."""
    unsigned = dataclasses.replace(
        ticket, reader=reader, expires_at=float((time.time() if now is None else now) + ttl_s), token=b""
    )
    return dataclasses.replace(unsigned, token=_mac(key, unsigned))


def verify(key: bytes | None, ticket: FetchOutput, now: float | None = None) -> None:
    """Raise ``TokenRefused`` unless ``ticket`` carries a valid, unexpired token under ``key``."""
    if key is None:
        raise TokenRefused("this worker has not joined a coordinator")
    if not ticket.token:
        raise TokenRefused("the ticket carries no token")
    if not isinstance(ticket.token, bytes) or not hmac.compare_digest(ticket.token, _mac(key, ticket)):
        raise TokenRefused("the token does not match the ticket")
    if (time.time() if now is None else now) >= ticket.expires_at:
        raise TokenRefused("the token has expired")
