"""The whole contract between clients, the coordinator and workers, in one module.

Every control message is a frozen dataclass with an ``op`` tag. On the wire it is a msgpack map
``{"v": PROTOCOL_VERSION, "op": ..., <fields>}``; ``decode`` rejects a different version, an unknown
op, missing/extra fields, or a field whose value does not have the declared type, with a
ProtocolError that names the op, the field and the expected type. No pickle anywhere.

Types are checked against the dataclass annotations, compiled once per message class into a
checker (bool is not an int; a plain ``int`` is 0..2**63-1, ``Annotated[int, Range(lo, hi)]``
narrows it). A loosely typed field (``dict[str, Any]``, kept loose for the code that builds it) can
declare its stricter wire shape with ``Annotated[..., Wire(T)]``: TypedDicts for fixed records,
``Keys`` for open ones. ``Any`` on the wire means plain data: str, int, float, bool, None, bytes,
lists and string-keyed maps, at most ``MAX_NESTING`` levels deep. Every socket carrying these
messages refuses a frame over ``MAX_MESSAGE_BYTES`` (ZMQ_MAXMSGSIZE: the peer is disconnected before
the frame is buffered).

The Flight ticket that names a task output (``FetchOutput``) is a message of this module too.

Compatibility rules: a field removed from a message is retired, never reused with another meaning;
any change to a message's fields bumps PROTOCOL_VERSION.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, TypedDict

import msgpack

from osiris_flight.errors import ProtocolError
from osiris_flight.wire_schema import Keys, Match, Mismatch, Range, Wire, schema_of

PROTOCOL_VERSION = 4
# Changed in v4:
# - ClusterStatus: a client is shown only the runs it submitted, and each worker's worker_id and
#   slots only; an admin (roles.py) sees every run and each worker's host, pid, flight_uri and stats.
# - FetchOutput (the Flight ticket) gains bucket (0 until hash exchanges exist), reader (the worker
#   id the ticket was minted for), expires_at (unix seconds) and token (HMAC-SHA256 by the
#   coordinator over the other fields, data/fetch_token.py); a worker serves no ticket without a
#   valid token, and refuses a ticket over 4 KiB undecoded (flight_io.MAX_TICKET_BYTES).
# - Welcome gains fetch_token_key: this worker's own HMAC key, which its Flight server checks tokens
#   with, derived from a master key the coordinator never sends (data/fetch_token.py server_key); the
#   coordinator signs each ticket with its serving worker's key. A secret: travels only inside CURVE
#   or the embedded cluster's private link.
# - Reject gains rejoin: only a Reject with rejoin set tells a worker it is not registered (declared
#   lost) and must register again; any other Reject refused that one message and nothing more.
# - Every field is checked against its declared type and bounds on decode, ids are single safe path
#   components, and frames are limited to MAX_MESSAGE_BYTES: a v3 peer sending loose types is refused.
# Retired in v3: TaskFinished.spills (a spill is reported when it happens, OutputSpilled: an output
# usually spills after its task finished, when newer outputs need the memory) and RunEvent
# ("run_event", one event per message; RunEvents carries what a coordinator pass produced).

# The largest frame any socket of the cluster accepts (ZMQ_MAXMSGSIZE on every control socket):
# above a real manifest (5,000 steps of SQL transforms encode to 1.4 MB). It also bounds memory a
# peer can make a daemon spend: decoded msgpack can take ~80x its frame (a frame of empty maps),
# and a stranger's unfinished CURVE handshake frame is buffered up to it. A bigger frame makes
# libzmq drop the sender's connection.
MAX_MESSAGE_BYTES = 8 * 1024 * 1024
# A connection that has not completed its handshake (CURVE: proved its key) by then is dropped.
HANDSHAKE_TIMEOUT_MS = 10_000
MAX_PARTITIONS = 65536
MAX_ATTEMPT = 2**31 - 1

_REGISTRY: dict[str, type[Message]] = {}


class VersionMismatch(ProtocolError):
    """The peer speaks another protocol version: nothing it says can be understood."""


# Run and task ids become path components on the coordinator and the workers (run directories,
# a task's scratch directory): one safe component, never "..", "/" or empty.
SafeName = Annotated[str, Match(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")]
Attempt = Annotated[int, Range(0, MAX_ATTEMPT)]
Partition = Annotated[int, Range(0, MAX_PARTITIONS - 1)]
Partitions = Annotated[int, Range(1, MAX_PARTITIONS)]
Slots = Annotated[int, Range(1, 4096)]
BatchRows = Annotated[int, Range(1, 1 << 30)]
MaxAttempts = Annotated[int, Range(1, 1000)]
Interval = Annotated[float, Range(0.001, 3600.0)]


class FlightInput(TypedDict):
    """One input partition of an AssignTask: where to fetch it, and the ticket (FetchOutput)."""

    flight_uri: str
    ticket: bytes


class _StepKeys(TypedDict):
    id: str
    component: str
    mode: str
    config: dict[str, Any]


class ManifestStep(_StepKeys, total=False):
    """A manifest step as ``StepSpec.to_dict`` writes it (``inputs`` and ``fingerprint`` optional)."""

    inputs: list[str]
    fingerprint: str


class PlanStage(TypedDict):
    """A plan stage as ``Stage.to_dict`` writes it."""

    id: str
    steps: list[str]
    partitions: Partitions
    inputs: list[str]
    consumers: list[str]
    output: str


ManifestDict = Annotated[
    dict[str, Any],
    Keys(
        manifest_version=int,
        pipeline=Annotated[dict[str, Any], Keys(name=str, oml_version=str)],
        steps=list[ManifestStep],
    ),
]
PlanDict = Annotated[dict[str, Any], Keys(plan_version=int, stages=list[PlanStage])]
EventDict = Annotated[dict[str, Any], Keys(event=str)]


@dataclass(frozen=True)
class Message:
    op: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.op:
            if cls.op in _REGISTRY:
                raise TypeError(f"protocol op {cls.op!r} defined twice")
            _REGISTRY[cls.op] = cls

    def to_wire(self) -> dict[str, Any]:
        body = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {"v": PROTOCOL_VERSION, "op": self.op, **body}


def encode(message: Message) -> bytes:
    return msgpack.packb(message.to_wire(), use_bin_type=True)


def decode(data: bytes) -> Message:
    try:
        body = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types
        raise ProtocolError(f"undecodable message ({len(data)} bytes): {exc}") from None
    if not isinstance(body, dict):
        raise ProtocolError("message is not a map")
    version = body.pop("v", None)
    if type(version) is not int:  # not a message of any version: malformed
        raise ProtocolError(f"message has no protocol version (this peer speaks {PROTOCOL_VERSION})")
    if version != PROTOCOL_VERSION:
        raise VersionMismatch(
            f"protocol version {version!r} is not supported (this peer speaks {PROTOCOL_VERSION})"
        )
    op = body.pop("op", None)
    cls = _REGISTRY.get(op) if isinstance(op, str) else None
    if cls is None:
        raise ProtocolError(f"unknown op {op!r}")
    schema = schema_of(cls)
    if missing := schema.required - body.keys():
        raise ProtocolError(f"{op}: missing fields {sorted(missing)}")
    if extra := body.keys() - schema.names:
        raise ProtocolError(f"{op}: unknown fields {sorted(map(str, extra))}")
    for name, check in schema.checks:
        if name in body:
            try:
                check(body[name])
            except Mismatch as exc:
                raise ProtocolError(f"{op}: field {name}{exc.where()} {exc.problem}") from None
    return cls(**body)


def encode_checked(message: Message) -> bytes:
    """Encode, having checked the fields as the receiver's ``decode`` will: for messages carrying
    what components produced (events, metrics, checkpoint state, counters), which msgpack would
    encode although the protocol refuses it (a map with int keys, nesting past MAX_NESTING).
    ProtocolError names the op and field."""
    data = encode(message)
    decode(data)
    return data


def peek_op(data: bytes) -> str:
    """The op of an encoded message, for a log line about it ("?" when there is none)."""
    try:
        body = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception:  # msgpack raises several unrelated types
        return "?"
    op = body.get("op") if isinstance(body, dict) else None
    return op[:64] if isinstance(op, str) else "?"


# -- worker -> coordinator -----------------------------------------------------------------------
@dataclass(frozen=True)
class Register(Message):
    """First message of a worker. ``flight_uri`` is where its outputs are served."""

    op: ClassVar[str] = "register"
    worker_id: str
    host: str
    pid: int
    slots: Slots
    flight_uri: str
    memory_limit_bytes: int


@dataclass(frozen=True)
class Heartbeat(Message):
    op: ClassVar[str] = "heartbeat"
    worker_id: str
    running: list[str] = field(default_factory=list)
    rss_bytes: int = 0
    store_bytes: int = 0
    spilled_bytes: int = 0


@dataclass(frozen=True)
class TaskStarted(Message):
    op: ClassVar[str] = "task_started"
    run_id: SafeName
    task_id: SafeName
    attempt: Attempt
    worker_id: str
    started_at: float


@dataclass(frozen=True)
class TaskProgress(Message):
    """Per-step counters of a running task (rows and bytes so far), plus worker memory."""

    op: ClassVar[str] = "task_progress"
    run_id: SafeName
    task_id: SafeName
    attempt: Attempt
    steps: dict[str, dict[str, int]]
    rss_bytes: int = 0


@dataclass(frozen=True)
class TaskTelemetry(Message):
    """An event (``value`` unused) or a metric a component reported through its StepContext."""

    op: ClassVar[str] = "task_telemetry"
    run_id: SafeName
    task_id: SafeName
    attempt: Attempt
    kind: str
    name: str
    value: float = 0.0
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TaskCheckpoint(Message):
    """A chunked task made ``rows`` more rows durable, together with the source ``token``;
    ``sink_state`` is what the sink needs to continue there (journaled by the coordinator)."""

    op: ClassVar[str] = "task_checkpoint"
    run_id: SafeName
    task_id: SafeName
    attempt: Attempt
    token: str
    sink_state: dict[str, Any]
    rows: int


@dataclass(frozen=True)
class TaskFinished(Message):
    """``steps`` maps step id to its counters."""

    op: ClassVar[str] = "task_finished"
    run_id: SafeName
    task_id: SafeName
    attempt: Attempt
    worker_id: str
    started_at: float
    finished_at: float
    steps: dict[str, dict[str, Any]]
    output_rows: int = 0
    output_bytes: int = 0


@dataclass(frozen=True)
class OutputSpilled(Message):
    """Part of a task attempt's output moved from memory to a spill file, during or after the task:
    ``bytes`` written to disk, ``batches`` moved, ``memory_before`` bytes the store held before."""

    op: ClassVar[str] = "output_spilled"
    run_id: SafeName
    task_id: SafeName
    attempt: Attempt
    worker_id: str
    bytes: int
    batches: int
    memory_before: int


@dataclass(frozen=True)
class TaskFailed(Message):
    op: ClassVar[str] = "task_failed"
    run_id: SafeName
    task_id: SafeName
    attempt: Attempt
    worker_id: str
    error: str
    error_type: str
    transient: bool
    step_id: str | None = None


@dataclass(frozen=True)
class Goodbye(Message):
    op: ClassVar[str] = "goodbye"
    worker_id: str
    reason: str = ""


# -- coordinator -> worker -----------------------------------------------------------------------
@dataclass(frozen=True)
class Welcome(Message):
    op: ClassVar[str] = "welcome"
    worker_id: str
    heartbeat_interval_s: Interval
    plugins: list[str] = field(default_factory=list)
    fetch_token_key: bytes = b""  # this worker's own key (fetch_token.server_key); secret: never log it

    def __repr__(self) -> str:
        return f"Welcome(worker_id={self.worker_id!r}, heartbeat_interval_s={self.heartbeat_interval_s!r})"


@dataclass(frozen=True)
class Reject(Message):
    """Sent instead of Welcome, or in reply to any message the coordinator refuses, with the reason.

    ``rejoin``: the sender is not (any more) a registered worker, e.g. it was declared lost while
    paused: it must drop its work and register again. Without it, only that one message was refused
    and the sender goes on as it was.
    """

    op: ClassVar[str] = "reject"
    reason: str
    rejoin: bool = False


@dataclass(frozen=True)
class AssignTask(Message):
    """Run one task attempt. ``steps`` are manifest step dicts of the fused chain, in order.

    ``inputs`` maps each upstream step id of the first step to one ``{"flight_uri": str, "ticket":
    bytes}`` map per partition of its stage, in partition order (the ticket is an encoded
    FetchOutput). ``connections`` carries resolved connection secrets for the steps that use them;
    it is never logged or written to disk. ``resume_state`` is the task's last journaled checkpoint
    (a chunked task continues from it), empty when it starts from the beginning.
    """

    op: ClassVar[str] = "assign_task"
    run_id: SafeName
    task_id: SafeName
    stage_id: str
    partition: Partition
    partitions: Partitions
    attempt: Attempt
    steps: Annotated[list[dict[str, Any]], Wire(list[ManifestStep])]
    inputs: Annotated[dict[str, list[dict[str, Any]]], Wire(dict[str, list[FlightInput]])]
    output: str
    output_dir: str
    connections: dict[str, dict[str, Any]] = field(default_factory=dict)
    batch_rows: BatchRows = 65536
    resume_state: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CancelTask(Message):
    op: ClassVar[str] = "cancel_task"
    run_id: SafeName
    task_id: SafeName
    attempt: Attempt
    reason: str = ""


@dataclass(frozen=True)
class ReleaseOutputs(Message):
    """Drop stored outputs: of one task attempt, or of the whole run when ``task_id`` is empty."""

    op: ClassVar[str] = "release_outputs"
    run_id: SafeName
    task_id: Annotated[str, Match(r"|[A-Za-z0-9][A-Za-z0-9._-]{0,127}")] = ""
    attempt: Attempt = 0


@dataclass(frozen=True)
class Shutdown(Message):
    op: ClassVar[str] = "shutdown"
    reason: str = ""


# -- client <-> coordinator ----------------------------------------------------------------------
@dataclass(frozen=True)
class SubmitRun(Message):
    """Start (or resume) a run. The coordinator creates the run directory under ``run_logs`` (a path
    on its host); with ``resume`` it reopens the existing directory of ``run_id`` there instead.

    ``connections`` maps ``@family.alias`` references to resolved connection dicts (secrets): held
    in memory for the run and passed only to the tasks that need them.
    """

    op: ClassVar[str] = "submit_run"
    run_id: SafeName
    run_logs: str
    manifest: ManifestDict
    plan: PlanDict
    connections: dict[str, dict[str, Any]] = field(default_factory=dict)
    resume: bool = False
    max_attempts: MaxAttempts = 3
    batch_rows: BatchRows = 65536


@dataclass(frozen=True)
class RunAccepted(Message):
    op: ClassVar[str] = "run_accepted"
    run_id: SafeName
    run_dir: str
    skipped_tasks: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RunEvents(Message):
    """Events of a run, as written to events.jsonl, forwarded live to the submitting client: what
    one pass of the coordinator's loop produced, in order (at most the latest ``progress``)."""

    op: ClassVar[str] = "run_events"
    run_id: SafeName
    events: list[EventDict]


@dataclass(frozen=True)
class RunFinished(Message):
    op: ClassVar[str] = "run_finished"
    run_id: SafeName
    status: str
    error: str = ""
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CancelRun(Message):
    op: ClassVar[str] = "cancel_run"
    run_id: SafeName
    reason: str = ""


@dataclass(frozen=True)
class ClusterStatusRequest(Message):
    op: ClassVar[str] = "cluster_status_request"


@dataclass(frozen=True)
class ClusterStatus(Message):
    op: ClassVar[str] = "cluster_status"
    workers: list[dict[str, Any]]
    runs: list[str]


# -- data plane ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class FetchOutput(Message):
    """The Flight ticket naming one task output: run, stage, partition, attempt (and the ``bucket``
    of a hash exchange, 0 until they exist), with the coordinator's permission to read it: the
    ``reader`` worker it was minted for, ``expires_at`` (unix seconds) and ``token``, the HMAC over
    all of them (data/fetch_token.py)."""

    op: ClassVar[str] = "fetch_output"
    run_id: SafeName
    stage_id: str
    partition: Partition
    attempt: Attempt
    bucket: Partition = 0
    reader: str = ""
    expires_at: float = 0.0
    token: bytes = b""

    def __repr__(self) -> str:  # the token stays out of logs and error messages
        return (
            f"FetchOutput(run_id={self.run_id!r}, stage_id={self.stage_id!r}, partition={self.partition!r}, "
            f"attempt={self.attempt!r}, bucket={self.bucket!r}, reader={self.reader!r})"
        )

    @property
    def key(self) -> tuple[str, str, int, int]:
        return (self.run_id, self.stage_id, self.partition, self.attempt)


def encode_ticket(ticket: FetchOutput) -> bytes:
    return encode(ticket)


def decode_ticket(data: bytes) -> FetchOutput:
    message = decode(data)
    if not isinstance(message, FetchOutput):
        raise ProtocolError(f"ticket is a {message.op!r} message, expected 'fetch_output'")
    return message
