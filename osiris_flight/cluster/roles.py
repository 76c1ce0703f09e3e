"""Who may send what to the coordinator: the role of each peer and the messages each role may send.

With CURVE, a peer's role comes from where its public key is authorized (curve.py: the ``workers/``,
``clients/`` and ``admins/`` subdirectories of the authorized keys directory); a key may hold
several roles. The coordinator's own key (its spawned local workers use it) is worker and admin.
Without CURVE (the embedded cluster, whose socket only its user can reach, or a daemon started with
``--insecure``) every peer holds every role.
"""

from __future__ import annotations

from enum import StrEnum

from osiris_flight import protocol as p


class Role(StrEnum):
    WORKER = "worker"
    CLIENT = "client"
    ADMIN = "admin"


ALL_ROLES = frozenset(Role)
# The authorized keys directory's subdirectory for each role.
ROLE_DIRS = {"workers": Role.WORKER, "clients": Role.CLIENT, "admins": Role.ADMIN}

# What only a registered worker sends about its tasks.
WORKER_REPORTS = (
    p.Heartbeat,
    p.TaskStarted,
    p.TaskProgress,
    p.TaskTelemetry,
    p.TaskCheckpoint,
    p.OutputSpilled,
    p.TaskFinished,
    p.TaskFailed,
)
# Reports about one task attempt: accepted only from the worker the attempt was assigned to.
ATTEMPT_REPORTS = (
    p.TaskStarted,
    p.TaskProgress,
    p.TaskTelemetry,
    p.TaskCheckpoint,
    p.TaskFinished,
    p.TaskFailed,
)

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
