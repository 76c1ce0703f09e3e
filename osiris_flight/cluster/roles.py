"""Who may send what to the coordinator: the role of each peer and the messages each role may send.

With CURVE, a peer's role comes from where its public key is authorized (curve.py: the ``workers/``,
``clients/`` and ``admins/`` subdirectories of the authorized keys directory); a key may hold
several roles. The coordinator's own key is admin; the local workers it spawns hold an ephemeral
key of their own, worker only (curve.py ``SpawnedWorkerKeys``).
Without CURVE (the embedded cluster, whose socket only its user can reach, or a daemon started with
``--insecure``) every peer holds every role.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from osiris_flight import protocol as p


class Role(StrEnum):
    WORKER = "worker"
    CLIENT = "client"
    ADMIN = "admin"


ALL_ROLES = frozenset(Role)
# The authorized keys directory's subdirectory for each role.
ROLE_DIRS = {"workers": Role.WORKER, "clients": Role.CLIENT, "admins": Role.ADMIN}

# Reports about one running task attempt: accepted only from the worker that holds it now.
ATTEMPT_REPORTS = (
    p.TaskStarted,
    p.TaskProgress,
    p.TaskTelemetry,
    p.TaskCheckpoint,
    p.TaskFinished,
    p.TaskFailed,
)
# What only a registered worker sends. OutputSpilled names an attempt that may have ended (an output
# spills when newer ones need the memory): accepted from the worker it was assigned to.
WORKER_REPORTS = (p.Heartbeat, p.OutputSpilled, *ATTEMPT_REPORTS)

_WORKER = frozenset({Role.WORKER})
_CLIENT = frozenset({Role.CLIENT, Role.ADMIN})
_ADMIN = frozenset({Role.ADMIN})
_ALLOWED: dict[type[p.Message], frozenset[Role]] = {
    p.Register: _WORKER,
    p.Goodbye: _WORKER,
    **{cls: _WORKER for cls in WORKER_REPORTS},
    p.SubmitRun: _CLIENT,
    p.CancelRun: _CLIENT,
    p.ClusterStatusRequest: _CLIENT,
    p.Shutdown: _ADMIN,
}


def refusal(message: p.Message, roles: frozenset[Role]) -> str | None:
    """Why a peer holding ``roles`` may not send ``message`` to the coordinator; None if it may."""
    allowed = _ALLOWED.get(type(message))
    if allowed is None:
        return f"the coordinator does not accept {message.op!r}"
    if roles & allowed:
        return None
    held = ", ".join(sorted(roles)) or "no role"
    needed = " or ".join(sorted(allowed))
    return f"{message.op!r} needs the {needed} role; this key holds {held}"


@dataclass(frozen=True)
class Peer:
    """Who sent a message: its socket identity, the principal it acts as (``key:<Z85 public key>``
    with CURVE, ``id:<socket identity, hex>`` without) and the roles it holds."""

    identity: bytes
    principal: str
    roles: frozenset[Role]

    @property
    def admin(self) -> bool:
        return Role.ADMIN in self.roles


# In a run directory started with a CURVE key: that key's principal (a public key, not a secret), so
# that only it or an admin resumes the run. A socket identity does not outlive its client: no file.
OWNER_FILE = "owner.json"
OWNER_VERSION = 1


def record_owner(run_dir: Path, peer: Peer) -> None:
    if peer.principal.startswith("key:"):
        record = {"owner_version": OWNER_VERSION, "principal": peer.principal}
        (run_dir / OWNER_FILE).write_text(json.dumps(record) + "\n", encoding="utf-8")


def resume_refusal(run_dir: Path, peer: Peer) -> str | None:
    """Why ``peer`` may not resume the run in ``run_dir``; None if it may (an admin always may)."""
    path = run_dir / OWNER_FILE
    if peer.admin:
        return None
    if not path.exists():  # started without CURVE keys (every peer an admin then): nobody owns it
        return "the run has no recorded owner (it was started without CURVE keys); an admin can resume it"
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        version, owner = record["owner_version"], record["principal"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"{path}: unreadable owner record ({exc}); an admin can resume the run"
    if version != OWNER_VERSION:
        return f"{path}: owner_version {version!r} is not supported (this coordinator reads {OWNER_VERSION})"
    if owner != peer.principal:
        return "the run was started with another key; its owner or an admin resumes it"
    return None
