"""CurveZMQ on the control plane: encrypted, mutually authenticated links between hosts.

The control plane carries connection secrets (AssignTask hands a task the resolved connections its
steps use), so across hosts it must not travel in clear. libzmq's CURVE (Curve25519 keys, the
handshake and encryption done in libzmq) does this without TLS machinery: the coordinator holds a
keypair and a directory of the public keys it accepts (``authorized_keys``, read again on every new
connection, so adding a worker is dropping its ``.key`` file there); workers and clients hold their
own keypair and the coordinator's public key. A peer whose key is not authorized never completes
the handshake: it cannot register, submit, or receive a single message.

A key is authorized *for a role* (roles.py): the authorized keys directory has one subdirectory per
role, ``workers/``, ``clients/`` and ``admins/``. A key file placed directly in the directory grants
nothing: the coordinator refuses to start while one is there (and ignores one added later, with a
warning), rather than guess its role. The handshake records each key's roles (``KeyRoles``); the
coordinator reads them per message from the ZAP User-Id (the key, Z85).

Key files are libzmq's certificate format (``zmq.auth.create_certificates``): ``NAME.key`` holds the
public key, ``NAME.key_secret`` both keys; ``osiris-flight keys create NAME`` writes a pair and
``osiris-flight keys cluster DIR`` a whole cluster's (``create_cluster_keys``).

The coordinator's own key holds the admin role only. The local workers a CURVE coordinator spawns
(``--spawn-workers``) never get it: at start the coordinator makes them an ephemeral keypair
(``SpawnedWorkerKeys``: a private 0700 directory, the secret file 0600, removed at teardown) that it
accepts for the worker role alone, so a task that reads its worker's key file learns a worker key
that dies with this coordinator, never the coordinator's.

The embedded local cluster does not use CURVE. Flight streams are not covered by this module.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from osiris_flight.cluster import private_dir
from osiris_flight.cluster.roles import ROLE_DIRS, Role
from osiris_flight.config import ClusterConfig
from osiris_flight.errors import InvalidInput, Problem

log = logging.getLogger("osiris_flight.curve")


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


def secure_server(
    context: zmq.Context, sock: zmq.Socket, keys: CurveKeys, spawned_worker: bytes | None = None
) -> tuple[ThreadAuthenticator, KeyRoles]:
    """Make ``sock`` (before it binds) a CURVE server accepting only keys authorized for a role, the
    coordinator's own (admin) and ``spawned_worker`` (the public key of its local workers: worker).
    Returns the authenticator (stop it when the socket closes) and the roles of the keys that
    connected, by Z85 key (the User-Id of their messages)."""
    public, secret = _load(keys.secret_key, "coordinator's secret key", secret=True)
    directory = Path(keys.authorized_keys) if keys.authorized_keys else None
    if directory is not None:
        check_authorized_dir(directory)
    roles = KeyRoles(public, directory, spawned_worker)
    authenticator = ThreadAuthenticator(context)
    authenticator.start()
    authenticator.configure_curve_callback(domain="*", credentials_provider=roles)
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_server = True
    return authenticator, roles


def check_authorized_dir(directory: Path) -> None:
    """InvalidInput unless ``directory`` has role subdirectories and no key file outside them."""
    layout = "workers/, clients/ and admins/ subdirectories (osiris-flight keys cluster DIR makes them)"
    if not directory.is_dir():
        raise InvalidInput(
            Problem("the authorized keys directory does not exist", file=str(directory), hint=layout)
        )
    if stray := sorted(directory.glob("*.key")):
        raise InvalidInput(
            Problem(
                f"{stray[0].name} is directly in the authorized keys directory, which grants no role",
                file=str(directory),
                hint="move each NAME.key into workers/, clients/ or admins/",
            )
        )
    if not any((directory / name).is_dir() for name in ROLE_DIRS):
        raise InvalidInput(
            Problem(
                "the authorized keys directory has no role subdirectory", file=str(directory), hint=layout
            )
        )


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


def authorized_roles(directory: Path | None) -> dict[bytes, frozenset[Role]]:
    """Z85 public key -> roles, from the role subdirectories of ``directory``."""
    found: dict[bytes, set[Role]] = {}
    if directory is None:
        return {}
    for name, role in ROLE_DIRS.items():
        for path in (directory / name).glob("*.key"):
            try:
                public, _ = zmq.auth.load_certificate(str(path))
            except (OSError, ValueError):
                continue  # a file being written, or not a certificate: not a key to accept
            found.setdefault(public, set()).add(role)
    return {key: frozenset(roles) for key, roles in found.items()}


class KeyRoles:
    """The credentials provider pyzmq's authenticator asks at each CURVE handshake (keys in Z85),
    which also remembers the roles each accepted key was given, for the coordinator to look up."""

    def __init__(self, own: bytes, directory: Path | None, spawned_worker: bytes | None = None) -> None:
        self.directory = directory
        # Keys accepted whatever the directory holds: the coordinator's own, and its local workers'.
        self._fixed = {own: frozenset({Role.ADMIN})}
        if spawned_worker is not None:
            self._fixed[spawned_worker] = frozenset({Role.WORKER})
        self._roles: dict[str, frozenset[Role]] = {k.decode("ascii"): r for k, r in self._fixed.items()}

    def callback(self, _domain: str, key: bytes) -> bool:
        if key in self._fixed:
            return True
        roles = authorized_roles(self.directory).get(key, frozenset())
        if not roles and self.directory is not None and any(self.directory.glob("*.key")):
            log.warning(
                "a key file directly in %s grants no role: move it into workers/, clients/ or admins/",
                self.directory,
            )
        if roles:  # written by the authenticator's thread before the peer's first message is read
            self._roles[key.decode("ascii")] = roles
        return bool(roles)

    def of(self, user_id: str) -> frozenset[Role]:
        """The roles of the key whose Z85 form is ``user_id`` (a message's ZAP User-Id)."""
        return self._roles.get(user_id, frozenset())


class SpawnedWorkerKeys:
    """The keypair of the local workers a CURVE coordinator spawns, made fresh at its start in a
    private directory (private_dir.py: 0700, removed with ``remove()``, or at the next start of a
    private directory by the same user if this process is killed), with a copy of the coordinator's
    public key for the workers' ``--curve-server-key``."""

    def __init__(self, coordinator: CurveKeys) -> None:
        server_public, _ = _load(coordinator.secret_key, "coordinator's secret key", secret=True)
        self.directory = private_dir.make()
        try:
            public_file, secret_file = create_keypair(self.directory, "spawned-worker")
            self.public, _ = zmq.auth.load_certificate(str(public_file))
            self.secret_key = str(secret_file)
            self.server_key = str(self.directory / "coordinator.key")
            _write_public_key(Path(self.server_key), server_public)
        except BaseException:
            self.remove()
            raise

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def _write_public_key(path: Path, public: bytes) -> None:
    """A public certificate file of ``public`` (Z85) that ``zmq.auth.load_certificate`` reads."""
    text = (
        "#   ZeroMQ CURVE Public Certificate\n"
        "#   written by osiris-flight: the coordinator's public key, for the workers it spawned\n\n"
        f'metadata\ncurve\n    public-key = "{public.decode("ascii")}"\n'
    )
    path.write_text(text, encoding="ascii")
    os.chmod(path, 0o644)


# The keys ``create_cluster_keys`` makes: (name, the role its public key is authorized for).
CLUSTER_KEYS = (("worker", Role.WORKER), ("client", Role.CLIENT), ("admin", Role.ADMIN))


def create_cluster_keys(directory: str | Path) -> list[tuple[Path, str]]:
    """A whole cluster's CURVE keys in ``directory``: the coordinator's keypair, one keypair per
    role (worker, client, admin) and the ``authorized/`` directory with each public key in its role
    subdirectory. Returns each file written with where it goes, in order."""
    folder = Path(directory)
    authorized = folder / "authorized"
    for path in [
        folder / "coordinator.key",
        *(folder / f"{name}.key" for name, _ in CLUSTER_KEYS),
        authorized,
    ]:
        if path.exists():
            raise InvalidInput(Problem("keys exist there already", file=str(path), hint="pick an empty DIR"))
    folder.mkdir(parents=True, exist_ok=True)
    public, secret = create_keypair(folder, "coordinator")
    placed = [
        (secret, "coordinator host: cluster.curve_secret_key (--curve-secret-key)"),
        (public, "every worker and client host: cluster.curve_server_key (--curve-server-key)"),
    ]
    for name in ROLE_DIRS:
        (authorized / name).mkdir(parents=True, exist_ok=True)
        os.chmod(authorized / name, 0o755)
    os.chmod(authorized, 0o755)
    placed.append((authorized, "coordinator host: cluster.curve_authorized_keys (--curve-authorized-keys)"))
    role_dir = {role: name for name, role in ROLE_DIRS.items()}
    for name, role in CLUSTER_KEYS:
        public, secret = create_keypair(folder, name)
        copy = authorized / role_dir[role] / public.name
        shutil.copyfile(public, copy)
        os.chmod(copy, 0o644)
        placed.append((secret, f"{name} hosts: cluster.curve_secret_key (the {role} role)"))
    return placed
