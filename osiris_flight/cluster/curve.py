"""CurveZMQ on the control plane: encrypted, mutually authenticated links between hosts.

The control plane carries connection secrets (AssignTask hands a task the resolved connections its
steps use), so across hosts it must not travel in clear. libzmq's CURVE (Curve25519 keys, the
handshake and encryption done in libzmq) does this without TLS machinery: the coordinator holds a
keypair and a directory of the public keys it accepts (``authorized_keys``, read again on every new
connection, so adding a worker is dropping its ``.key`` file there); workers and clients hold their
own keypair and the coordinator's public key. A peer whose key is not authorized never completes
the handshake: it cannot register, submit, or receive a single message.

Key files are libzmq's certificate format (``zmq.auth.create_certificates``): ``NAME.key`` holds the
public key, ``NAME.key_secret`` both keys; ``osiris-flight keys create NAME`` writes a pair.

The embedded local cluster talks over loopback only and does not use CURVE. Flight streams (task
data, never secrets) are not covered by this module.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from osiris_flight.config import ClusterConfig
from osiris_flight.errors import InvalidInput, Problem


@dataclass(frozen=True)
class CurveKeys:
    """Where this process's keys are. ``secret_key``: its own ``.key_secret`` file (every role).
    ``server_key``: the coordinator's public ``.key`` (workers and clients). ``authorized_keys``: the
    directory of accepted public keys (the coordinator)."""

    secret_key: str
    server_key: str | None = None
    authorized_keys: str | None = None


def curve_keys(
    cluster: ClusterConfig,
    secret_key: str | None = None,
    server_key: str | None = None,
    authorized_keys: str | None = None,
) -> CurveKeys | None:
    """The keys flags (given) or osiris.yaml's ``cluster.curve_*`` name; None when CURVE is off."""
    secret = secret_key or cluster.curve_secret_key
    server = server_key or cluster.curve_server_key
    authorized = authorized_keys or cluster.curve_authorized_keys
    if secret is None:
        if server or authorized:
            raise InvalidInput(
                Problem(
                    "CURVE keys are set but not this process's own secret key",
                    field="cluster.curve_secret_key",
                    hint="its NAME.key_secret file (osiris-flight keys create NAME)",
                )
            )
        return None
    return CurveKeys(secret, server, authorized)


def _load(path: str, what: str, secret: bool) -> tuple[bytes, bytes | None]:
    try:
        public, private = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise InvalidInput(
            Problem(
                f"cannot read the {what}: {reason}",
                file=path,
                hint="create a keypair with: osiris-flight keys create NAME --dir DIR",
            )
        ) from None
    if secret and private is None:
        raise InvalidInput(
            Problem(f"the {what} holds no secret key", file=path, hint="give the NAME.key_secret file")
        )
    return public, private


def secure_server(context: zmq.Context, sock: zmq.Socket, keys: CurveKeys) -> ThreadAuthenticator:
    """Make ``sock`` (before it binds) a CURVE server accepting only authorized public keys and the
    coordinator's own (the workers it spawns use its keypair). Stop the returned authenticator when
    the socket closes."""
    public, secret = _load(keys.secret_key, "coordinator's secret key", secret=True)
    directory = Path(keys.authorized_keys) if keys.authorized_keys else None
    if directory is not None and not directory.is_dir():
        raise InvalidInput(
            Problem(
                "the authorized keys directory does not exist",
                file=str(directory),
                hint="a directory of the workers' and clients' NAME.key files",
            )
        )

    authenticator = ThreadAuthenticator(context)
    authenticator.start()
    authenticator.configure_curve_callback(domain="*", credentials_provider=_Authorized(public, directory))
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_server = True
    return authenticator


def client_keys(keys: CurveKeys) -> tuple[bytes, bytes, bytes]:
    """(public, secret, server public) of a worker or client, read from their files; InvalidInput
    naming the file when one is missing or wrong (checked at start, not at the first connect)."""
    if not keys.server_key:
        raise InvalidInput(
            Problem(
                "a CURVE secret key is set but not the coordinator's public key",
                field="cluster.curve_server_key",
                hint="the coordinator's NAME.key file",
            )
        )
    public, secret = _load(keys.secret_key, "secret key", secret=True)
    server, _ = _load(keys.server_key, "coordinator's public key", secret=False)
    assert secret is not None
    return public, secret, server


def secure_client(sock: zmq.Socket, keys: CurveKeys) -> None:
    """Make ``sock`` (before it connects) a CURVE client of the coordinator whose key is given."""
    public, secret, server = client_keys(keys)
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_serverkey = server


def create_keypair(directory: str | Path, name: str) -> tuple[Path, Path]:
    """Write ``NAME.key`` and ``NAME.key_secret`` (readable by the owner only) into ``directory``."""
    folder = Path(directory)
    for existing in (folder / f"{name}.key", folder / f"{name}.key_secret"):
        if existing.exists():
            raise InvalidInput(
                Problem("a key file of that name exists", file=str(existing), hint="pick another NAME")
            )
    folder.mkdir(parents=True, exist_ok=True)
    umask = os.umask(0o077)  # the secret file is never readable by others, not even for a moment
    try:
        public, secret = zmq.auth.create_certificates(str(folder), name)
    finally:
        os.umask(umask)
    os.chmod(public, 0o644)
    return Path(public), Path(secret)


def _authorized(directory: Path | None) -> set[bytes]:
    if directory is None:
        return set()
    keys = set()
    for path in directory.glob("*.key"):
        try:
            public, _ = zmq.auth.load_certificate(str(path))
        except (OSError, ValueError):
            continue  # a file being written, or not a certificate: not a key to accept
        keys.add(public)
    return keys


class _Authorized:
    """The credentials provider pyzmq's authenticator asks at each CURVE handshake (keys in Z85)."""

    def __init__(self, own: bytes, directory: Path | None) -> None:
        self.own, self.directory = own, directory

    def callback(self, _domain: str, key: bytes) -> bool:
        return key == self.own or key in _authorized(self.directory)
