"""The coordinator daemon: a ZeroMQ ROUTER loop around the pure Scheduler.

It registers workers, watches their heartbeats (any message counts; a worker is dead after
``heartbeat_misses`` silent intervals), accepts runs from clients, feeds the scheduler and carries
out its instructions. In local mode it also owns the worker processes: it starts them, sees a child
exit at once (EOF on the child's stdout pipe, which the poller watches) and starts a replacement.

Every message is checked before it is handled (a refused one gets Reject, is logged, and changes
nothing): the sender's role must allow it (roles.py; with CURVE the role comes from the sender's
key), a worker's report must come from the worker the attempt was assigned to (and with the key that
worker registered with), and a run is cancelled or shown only to the principal that submitted it
(its CURVE key, or without CURVE its socket identity) or an admin.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from osiris_flight import protocol as p
from osiris_flight.cluster import scheduler as s
from osiris_flight.cluster.child_workers import ChildWorkers
from osiris_flight.cluster.curve import CurveKeys, KeyRoles, SpawnedWorkerKeys, secure_server
from osiris_flight.cluster.private_dir import flight_socket, private_umask
from osiris_flight.cluster.roles import (
    ALL_ROLES,
    ATTEMPT_REPORTS,
    WORKER_REPORTS,
    Peer,
    record_owner,
    refusal,
    resume_refusal,
)
from osiris_flight.cluster.run_tracker import RunTracker
from osiris_flight.cluster.submission import parse_submission
from osiris_flight.data import fetch_token
from osiris_flight.errors import InvalidInput, Problem, ProtocolError, UpstreamLost
from osiris_flight.oml.model import Manifest, Plan, parse_task_id
from osiris_flight.runs.journal import JournalError, read_journal
from osiris_flight.runs.rundir import RunDir, find_run

log = logging.getLogger("osiris_flight.coordinator")
# A resumed run numbers its attempts from 1 + this x the runs before it (1001, 2001, ...): a task
# of an earlier incarnation still being cancelled on some worker can then never be taken for a new
# attempt (same worker-side key, same temporary file name). No task reaches 1,000 attempts:
# max_attempts and the scheduler's disturbance limit bound them far below.
RESUME_ATTEMPT_STRIDE = 1000


@dataclass(frozen=True)
class CoordinatorOptions:
    bind: str = "tcp://127.0.0.1:5555"
    heartbeat_interval_s: float = 1.0
    heartbeat_misses: int = 3
    plugins: tuple[str, ...] = ()
    # Local mode: start and own this many worker processes.
    spawn_workers: int = 0
    worker_slots: int = 2
    worker_memory_limit_bytes: int = 256 * 1024 * 1024
    spill_dir: str | None = None
    spill_compression: str = "lz4"
    flight_compression: str = "none"
    shrink_batches: bool = True
    parent_pid: int | None = None
    max_respawns: int = 16
    curve: CurveKeys | None = None  # CURVE-encrypted and authenticated control plane (curve.py)
    # The embedded cluster (private_dir.py): its sockets are made under umask 077 in this 0700
    # directory, and the workers it spawns serve Flight on Unix sockets there.
    private_dir: str | None = None
    fetch_token_ttl_s: float = fetch_token.DEFAULT_TTL_S  # lifetime of Flight fetch tokens
    worker_log_level: str = "warning"  # --log-level of the workers it spawns
    file_roots: tuple[str, ...] | None = None  # engine.file_roots of the workers it spawns


@dataclass
class WorkerInfo:
    worker_id: str
    identity: bytes
    principal: str
    flight_uri: str
    slots: int
    last_seen: float
    pid: int = 0
    host: str = ""
    stats: dict[str, int] = field(default_factory=dict)


@dataclass
class ActiveRun:
    tracker: RunTracker
    client: bytes
    owner: str  # the principal that submitted it
    manifest: Manifest
    plan: Plan
    connections: dict[str, dict[str, Any]]
    batch_rows: int
    disk_failed: bool = False  # its run directory broke: the run is being cancelled
    # (task id, attempt) -> the worker it was assigned to, for reports about ended attempts
    assigned: dict[tuple[str, int], str] = field(default_factory=dict)


class Coordinator:
    def __init__(self, options: CoordinatorOptions) -> None:
        self.options = options
        # An assignment is acknowledged by TaskStarted at once; ten heartbeats without it (at least
        # 10 s) means the message was lost (a peer reconnecting drops what was sent meanwhile).
        # A failed run's tasks get as long to report their cancellation before RunFailed goes out.
        patience = max(10.0, 10 * options.heartbeat_interval_s)
        self.scheduler = s.Scheduler(start_timeout_s=patience, drain_timeout_s=patience)
        self.workers: dict[str, WorkerInfo] = {}
        self._id_principals: dict[str, str] = {}  # worker id -> the principal that first registered it
        self.runs: dict[str, ActiveRun] = {}
        # Master of the Flight fetch-token keys; never sent: each worker gets only its own key
        # (fetch_token.server_key) in Welcome, and a ticket is signed with its serving worker's key.
        self._token_master = fetch_token.new_key()
        self._zmq = zmq.Context()
        self.sock = self._zmq.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 1000)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        # A bigger frame drops its sender's connection before it is buffered (protocol.py).
        self.sock.setsockopt(zmq.MAXMSGSIZE, p.MAX_MESSAGE_BYTES)
        self.sock.setsockopt(zmq.HANDSHAKE_IVL, p.HANDSHAKE_TIMEOUT_MS)
        self._authenticator = None
        self._key_roles: KeyRoles | None = None
        # Its local workers' own keypair, authorized for the worker role only (curve.py).
        self._spawned_keys: SpawnedWorkerKeys | None = None
        if options.curve is not None:
            if options.spawn_workers:
                self._spawned_keys = SpawnedWorkerKeys(options.curve)
            spawned = self._spawned_keys.public if self._spawned_keys else None
            try:
                self._authenticator, self._key_roles = secure_server(
                    self._zmq, self.sock, options.curve, spawned
                )
            except BaseException:
                if self._spawned_keys is not None:
                    self._spawned_keys.remove()
                raise
        try:
            with private_umask() if options.private_dir else contextlib.nullcontext():
                self.sock.bind(options.bind)  # libzmq makes an ipc:// socket file in this call
        except zmq.ZMQError as exc:
            self.sock.close(linger=0)
            if self._authenticator is not None:
                self._authenticator.stop()
            if self._spawned_keys is not None:
                self._spawned_keys.remove()
            self._zmq.term()
            raise InvalidInput(
                Problem(
                    f"cannot listen on {options.bind}: {exc}", field="--bind", hint="e.g. tcp://0.0.0.0:5555"
                )
            ) from None
        self.address = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.poller = zmq.Poller()
        self.poller.register(self.sock, zmq.POLLIN)
        self.children = ChildWorkers(self.poller, self._worker_command, options.max_respawns)
        self._stop = False
        self._shutdown_requested_by: bytes | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    def serve(self, on_ready: Any = None) -> int:
        signal.signal(signal.SIGTERM, lambda *_: self._request_stop())
        signal.signal(signal.SIGINT, lambda *_: self._request_stop())
        for index in range(self.options.spawn_workers):
            self.children.spawn(f"local-{index}")
        if on_ready is not None:
            on_ready(self.address)
        try:
            self._loop()
        finally:
            self._teardown()
        return 0

    def _request_stop(self) -> None:
        self._stop = True

    def _loop(self) -> None:
        tick_ms = max(20, int(self.options.heartbeat_interval_s * 100))
        while not self._stop:
            events = dict(self.poller.poll(timeout=tick_ms))
            if self.sock in events:
                while True:
                    try:
                        frames = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    if len(frames) != 2:
                        continue
                    identity, frame = frames[0].bytes, frames[1].bytes
                    try:
                        self._receive(self._peer(identity, frames[1]), frame)
                    except Exception as exc:  # one message must never stop the coordinator
                        self._handling_failed(identity, frame, exc)
            for fd in events:
                if isinstance(fd, int):
                    self.children.drain(fd)
            for worker_id, reason in self.children.reap(respawn=not self._stop):
                self._lose_worker(worker_id, reason)
            now = time.monotonic()
            self._check_heartbeats(now)
            self._feed(s.Tick(now))
            for run in self.runs.values():
                run.tracker.flush()
            self._fail_runs_on_broken_disks()
            if self._parent_gone():
                log.warning("parent process is gone; coordinator stops")
                self._stop = True
            if self._shutdown_requested_by is not None and not self.scheduler.active_runs():
                self._stop = True

    def _teardown(self) -> None:
        now = time.monotonic()
        for run_id in list(self.runs):
            reason = "coordinator stopped; resume with --resume " + run_id
            self._execute(self.scheduler.handle(s.RunCancelled(run_id, reason, now, drain=False)))
        for worker in self.workers.values():
            self._send(worker.identity, p.Shutdown("coordinator stopping"))
        self.children.wait(timeout_s=5.0)
        if self._shutdown_requested_by is not None:
            self._send(self._shutdown_requested_by, p.Shutdown("coordinator stopped"))
        self.sock.close(linger=500)
        if self._authenticator is not None:
            self._authenticator.stop()
        if self._spawned_keys is not None:
            self._spawned_keys.remove()
        self._zmq.term()

    def _parent_gone(self) -> bool:
        return self.options.parent_pid is not None and os.getppid() != self.options.parent_pid

    # -- local worker processes ----------------------------------------------------------------
    def _worker_command(self, worker_id: str) -> list[str]:
        """The argv of a local worker process (ChildWorkers starts it)."""
        o = self.options
        cmd = [
            sys.executable,
            "-m",
            "osiris_flight.cli.daemons",
            "worker",
            "--coordinator",
            self.address,
            "--worker-id",
            worker_id,
            "--slots",
            str(o.worker_slots),
            "--memory-limit-bytes",
            str(o.worker_memory_limit_bytes),
            "--heartbeat-interval",
            str(o.heartbeat_interval_s),
            "--spill-compression",
            o.spill_compression,
            "--flight-compression",
            o.flight_compression,
            "--shrink-batches" if o.shrink_batches else "--no-shrink-batches",
            "--parent-pid",
            str(os.getpid()),
            "--log-level",
            o.worker_log_level,
        ]
        if o.spill_dir:
            cmd += ["--spill-dir", o.spill_dir]
        for root in o.file_roots or ():
            cmd += ["--file-root", root]
        if o.private_dir:
            cmd += ["--flight-socket", flight_socket(o.private_dir, worker_id)]
        if self._spawned_keys is not None:  # their own worker-only keypair, never the coordinator's
            keys = self._spawned_keys
            cmd += ["--curve-secret-key", keys.secret_key, "--curve-server-key", keys.server_key]
        else:  # as insecure as their coordinator, which said so in its log
            cmd += ["--insecure"]
        return cmd

    # -- messages ------------------------------------------------------------------------------
    def _send(self, identity: bytes, message: p.Message) -> None:
        try:
            self.sock.send_multipart([identity, p.encode(message)], zmq.NOBLOCK)
        except zmq.ZMQError as exc:  # peer gone (ROUTER_MANDATORY) or its queue full
            log.warning("cannot send %s to %r: %s", message.op, identity, exc)

    def _peer(self, identity: bytes, frame: zmq.Frame) -> Peer:
        if self._key_roles is None:  # no CURVE: a private socket, or --insecure
            return Peer(identity, "id:" + identity.hex(), ALL_ROLES)
        user_id = str(frame.get("User-Id"))  # the sender's public key, Z85 (set at the CURVE handshake)
        return Peer(identity, "key:" + user_id, self._key_roles.of(user_id))

    def _refuse(self, peer: Peer, message: p.Message, reason: str) -> None:
        log.warning("refused %s from %r (%s): %s", message.op, peer.identity, peer.principal, reason)
        self._send(peer.identity, p.Reject(reason))

    def _receive(self, peer: Peer, frame: bytes) -> None:
        identity = peer.identity
        try:
            message = p.decode(frame)
        except ProtocolError as exc:
            log.warning("rejected a message from %r: %s", identity, exc)
            self._send(identity, p.Reject(str(exc)))
            return
        if reason := refusal(message, peer.roles):
            self._refuse(peer, message, reason)
            return
        worker_id = identity.decode(errors="replace")
        worker = self.workers.get(worker_id)
        if worker is not None and worker.principal != peer.principal:
            self._refuse(peer, message, f"worker {worker_id!r} registered with another key")
            return
        if worker is not None:
            worker.last_seen = time.monotonic()
        elif isinstance(message, WORKER_REPORTS):
            # A worker declared dead while busy (it sends reports, not heartbeats): tell it now, so it
            # drops the work that was rerun elsewhere and joins again, instead of finishing it unseen.
            self._send(identity, p.Reject(f"unknown worker {worker_id!r}: register again", rejoin=True))
            return
        if isinstance(message, WORKER_REPORTS) and getattr(message, "worker_id", worker_id) != worker_id:
            self._refuse(peer, message, f"a report of worker {worker_id!r} names another worker")
            return
        if isinstance(message, ATTEMPT_REPORTS):
            holder = self.scheduler.holder(message.run_id, message.task_id, message.attempt)
            if holder is None:  # about an attempt that ended (cancelled, rerun elsewhere): nothing to do
                log.debug(
                    "ignored %s about %s attempt %d: not running",
                    message.op,
                    message.task_id,
                    message.attempt,
                )
                return
            if holder != worker_id:
                self._refuse(
                    peer,
                    message,
                    f"{message.task_id} attempt {message.attempt} is not assigned to {worker_id!r}",
                )
                return
        run = self.runs.get(message.run_id) if isinstance(message, ATTEMPT_REPORTS) else None
        match message:
            case p.Register():
                self._register(peer, message)
            case p.Heartbeat():
                assert worker is not None
                worker.stats = {
                    "rss_bytes": message.rss_bytes,
                    "store_bytes": message.store_bytes,
                    "spilled_bytes": message.spilled_bytes,
                }
            case p.TaskStarted():
                if run:
                    run.tracker.task_started(message)
                self._feed(s.TaskStarted(message.run_id, message.task_id, message.attempt, time.monotonic()))
            case p.TaskProgress():
                if run:
                    run.tracker.task_progress(message)
            case p.TaskTelemetry():
                if run:
                    run.tracker.task_telemetry(message)
            case p.TaskCheckpoint():
                if run:
                    run.tracker.task_checkpoint(message)
            case p.OutputSpilled():
                # Any attempt's output, finished or not (the disk it took is real either way), but
                # only from the worker that attempt was assigned to.
                spilled = self.runs.get(message.run_id)
                if spilled and spilled.assigned.get((message.task_id, message.attempt)) == worker_id:
                    spilled.tracker.output_spilled(message)
                elif spilled:
                    self._refuse(
                        peer,
                        message,
                        f"{message.task_id} attempt {message.attempt} was not assigned to {worker_id!r}",
                    )
            case p.TaskFinished():
                if run:
                    run.tracker.task_finished(message)
                self._feed(
                    s.TaskSucceeded(
                        message.run_id, message.task_id, message.attempt, worker_id, time.monotonic()
                    )
                )
            case p.TaskFailed():
                if run:
                    run.tracker.task_failed(message)
                self._feed(
                    s.TaskFailed(
                        message.run_id,
                        message.task_id,
                        message.attempt,
                        worker_id,
                        message.error,
                        message.transient,
                        time.monotonic(),
                        upstream_lost=message.error_type == UpstreamLost.__name__,
                    )
                )
            case p.Goodbye():
                self._lose_worker(worker_id, f"said goodbye: {message.reason}")
            case p.SubmitRun():
                self._submit(peer, message)
            case p.CancelRun():
                if self._owned(peer, message.run_id):
                    reason = message.reason or "cancelled by client"
                    self._feed(s.RunCancelled(message.run_id, reason, time.monotonic()))
                else:
                    self._refuse(peer, message, f"no active run {message.run_id!r} of this client")
            case p.ClusterStatusRequest():
                self._send(identity, self._status(peer))
            case p.Shutdown():
                self._shutdown_requested_by = identity

    def _owned(self, peer: Peer, run_id: str) -> bool:
        """Whether ``peer`` may follow or cancel the run: its submitter, or an admin."""
        run = self.runs.get(run_id)
        return run is not None and (run.owner == peer.principal or peer.admin)

    def _handling_failed(self, identity: bytes, frame: bytes, exc: Exception) -> None:
        """Log (op and where, never the message or the error text: either may hold a secret) and
        answer Reject; the coordinator goes on serving."""
        op = p.peek_op(frame)
        frames = traceback.extract_tb(exc.__traceback__)
        where = f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "?"
        log.error(
            "handling %r from %r failed with %s at %s; answered with reject",
            op,
            identity[:64],
            type(exc).__name__,
            where,
        )
        self._send(identity, p.Reject(f"the coordinator could not handle this {op!r} message"))

    def _status(self, peer: Peer) -> p.ClusterStatus:
        """All workers and runs for an admin; a client sees its own runs and the workers' count and
        slots (not where their Flight servers listen)."""
        admin = peer.admin
        workers = [
            {
                "worker_id": w.worker_id,
                "slots": w.slots,
                **({"host": w.host, "pid": w.pid, "flight_uri": w.flight_uri, **w.stats} if admin else {}),
            }
            for w in self.workers.values()
        ]
        return p.ClusterStatus(workers=workers, runs=[r for r in self.runs if self._owned(peer, r)])

    def _register(self, peer: Peer, msg: p.Register) -> None:
        identity = peer.identity
        if identity.decode(errors="replace") != msg.worker_id:
            self._refuse(peer, msg, "worker id must equal the socket identity")
            return
        # A worker id stays with the key that first registered it: its fetch-token key is derived
        # from the id, so another key taking the id of a lost worker would get that worker's key.
        first = self._id_principals.setdefault(msg.worker_id, peer.principal)
        if first != peer.principal:
            self._refuse(peer, msg, f"worker id {msg.worker_id!r} belongs to another key")
            return
        if msg.worker_id in self.workers:
            self._lose_worker(msg.worker_id, "registered again")
        self.workers[msg.worker_id] = WorkerInfo(
            msg.worker_id,
            identity,
            peer.principal,
            msg.flight_uri,
            msg.slots,
            time.monotonic(),
            msg.pid,
            msg.host,
        )
        self._send(
            identity,
            p.Welcome(
                msg.worker_id,
                self.options.heartbeat_interval_s,
                list(self.options.plugins),
                fetch_token.server_key(self._token_master, msg.worker_id),
            ),
        )
        for run in self.runs.values():
            run.tracker.cluster_event(
                "worker_joined", worker_id=msg.worker_id, host=msg.host, slots=msg.slots
            )
        log.info("worker %s joined (%s, %d slots)", msg.worker_id, msg.flight_uri, msg.slots)
        self._feed(s.WorkerJoined(msg.worker_id, msg.slots, time.monotonic()))

    def _lose_worker(self, worker_id: str, reason: str) -> None:
        if self.workers.pop(worker_id, None) is None:
            return
        log.warning("worker %s lost: %s", worker_id, reason)
        for run in self.runs.values():
            run.tracker.cluster_event("worker_lost", worker_id=worker_id, reason=reason)
        self._feed(s.WorkerLost(worker_id, reason, time.monotonic()))

    def _check_heartbeats(self, now: float) -> None:
        limit = self.options.heartbeat_interval_s * self.options.heartbeat_misses
        for worker in list(self.workers.values()):
            if now - worker.last_seen > limit:
                self._lose_worker(worker.worker_id, f"missed {self.options.heartbeat_misses} heartbeats")

    # -- runs ----------------------------------------------------------------------------------
    def _submit(self, peer: Peer, msg: p.SubmitRun) -> None:
        client = peer.identity
        if msg.run_id in self.runs:
            self._send(client, p.RunFinished(msg.run_id, "failed", f"run {msg.run_id} is already active"))
            return
        try:
            manifest, plan = parse_submission(msg.manifest, msg.plan)
            root = Path(msg.run_logs)
            committed: dict[str, dict[str, Any]] = {}
            checkpoints: dict[str, dict[str, Any]] = {}
            first_attempt = 1
            if msg.resume:
                run_dir = find_run(root, msg.run_id)
                if refused := resume_refusal(run_dir.path, peer):
                    raise ValueError(f"run {msg.run_id}: {refused}")
                journal = read_journal(run_dir.journal)
                if journal.manifest_fingerprint not in (None, manifest.fingerprint()):
                    raise ValueError(
                        f"run {msg.run_id} was started from a different manifest; "
                        "resume it with the pipeline it was started with"
                    )
                committed = journal.committed
                checkpoints = journal.checkpoints
                first_attempt = 1 + RESUME_ATTEMPT_STRIDE * journal.attempts
            else:
                run_dir = RunDir.create(root, manifest.name, msg.run_id)
                record_owner(run_dir.path, peer)
                run_dir.manifest.write_text(manifest.to_json(), encoding="utf-8")
                run_dir.plan.write_text(
                    json.dumps(plan.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8"
                )
        except (InvalidInput, JournalError, ValueError, KeyError, OSError) as exc:
            error = str(exc)
            self._send(client, p.RunFinished(msg.run_id, "failed", f"cannot start run: {error}"))
            return

        def forward(events: list[dict[str, Any]], client: bytes = client, run_id: str = msg.run_id) -> None:
            self._send(client, p.RunEvents(run_id, events))

        tracker = RunTracker(
            run_dir,
            manifest,
            plan,
            resumed=msg.resume,
            committed=committed,
            checkpoints=checkpoints,
            forward=forward,
        )
        self.runs[msg.run_id] = ActiveRun(
            tracker, client, peer.principal, manifest, plan, msg.connections, batch_rows=msg.batch_rows
        )
        self._feed(
            s.RunSubmitted(
                msg.run_id, plan, time.monotonic(), msg.max_attempts, frozenset(committed), first_attempt
            )
        )

    def _fail_runs_on_broken_disks(self) -> None:
        """A run whose directory cannot be written (disk full, I/O error, read-only) fails alone, with
        the file and the error; the coordinator and the other runs go on."""
        for run_id, run in list(self.runs.items()):
            if run.tracker.disk_error and not run.disk_failed:
                run.disk_failed = True
                reason = f"run directory failed: {run.tracker.disk_error}"
                log.warning("run %s: %s", run_id, reason)
                self._feed(s.RunCancelled(run_id, reason, time.monotonic()))

    def _feed(self, event: s.Event) -> None:
        self._execute(self.scheduler.handle(event))

    def _execute(self, instructions: list[s.Instruction]) -> None:
        for ins in instructions:
            run = self.runs.get(ins.run_id) if hasattr(ins, "run_id") else None
            match ins:
                case s.RunStarted():
                    if run:
                        self._send(
                            run.client,
                            p.RunAccepted(ins.run_id, str(run.tracker.run_dir.path), list(ins.skipped)),
                        )
                        run.tracker.start(list(ins.skipped))
                case s.Assign():
                    self._assign(ins)
                case s.Cancel():
                    if worker := self.workers.get(ins.worker_id):
                        self._send(
                            worker.identity, p.CancelTask(ins.run_id, ins.task_id, ins.attempt, ins.reason)
                        )
                case s.Release():
                    if worker := self.workers.get(ins.worker_id):
                        self._send(worker.identity, p.ReleaseOutputs(ins.run_id, ins.task_id, ins.attempt))
                case s.Retry():
                    if run:
                        run.tracker.retry(ins.task_id, ins.attempt, ins.reason, ins.delay_s, ins.counted)
                case s.Recompute():
                    if run:
                        run.tracker.recompute(ins.task_id, ins.reason)
                case s.RunSucceeded():
                    self._finish_run(ins.run_id, "success", "")
                case s.RunFailed():
                    if ins.unstopped:
                        log.warning(
                            "run %s ends with tasks that never confirmed their cancellation: %s",
                            ins.run_id,
                            ", ".join(ins.unstopped),
                        )
                    self._finish_run(ins.run_id, "failed", ins.error, ins.task_id)

    def _assign(self, ins: s.Assign) -> None:
        run = self.runs[ins.run_id]
        worker = self.workers[ins.worker_id]
        stage_id, partition = parse_task_id(ins.task_id)
        stage = run.plan.stage(stage_id)
        steps = [run.manifest.step(step_id).to_dict() for step_id in stage.steps]
        inputs: dict[str, list[dict[str, Any]]] = {}
        for loc in ins.inputs:
            producer = run.plan.stage(loc.stage_id)
            uri = self.workers[loc.worker_id].flight_uri if loc.worker_id in self.workers else ""
            unsigned = p.FetchOutput(ins.run_id, loc.stage_id, loc.partition, loc.attempt)
            ttl = self.options.fetch_token_ttl_s
            key = fetch_token.server_key(self._token_master, loc.worker_id)  # the serving worker's
            ticket = p.encode_ticket(fetch_token.mint(key, unsigned, ins.worker_id, ttl))
            inputs.setdefault(producer.last_step, []).append({"flight_uri": uri, "ticket": ticket})
        refs = {ref for step in steps for ref in _connection_refs(step["config"])}
        connections = {ref: run.connections[ref] for ref in sorted(refs) if ref in run.connections}
        run.tracker.assigned(ins.task_id, ins.attempt, ins.worker_id)
        run.assigned[(ins.task_id, ins.attempt)] = ins.worker_id
        self._send(
            worker.identity,
            p.AssignTask(
                ins.run_id,
                ins.task_id,
                stage_id,
                partition,
                stage.partitions,
                ins.attempt,
                steps,
                inputs,
                stage.output,
                str(run.tracker.run_dir.artifacts),
                connections,
                run.batch_rows,
                run.tracker.checkpoints.get(ins.task_id, {}),
            ),
        )

    def _finish_run(self, run_id: str, status: str, error: str, failed_task: str | None = None) -> None:
        """The scheduler ended the run (every task of it stopped): write the final status, free the
        workers' outputs of it, tell the client."""
        run = self.runs.pop(run_id, None)
        if run is None:
            return
        summary = run.tracker.finish(status, error, failed_task)
        if status == "success" and run.tracker.disk_error:  # the run's own record could not be written
            status, error = "failed", f"run directory failed: {run.tracker.disk_error}"
        for worker in self.workers.values():
            self._send(worker.identity, p.ReleaseOutputs(run_id))
        self._send(run.client, p.RunFinished(run_id, status, error, summary))


def _connection_refs(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value] if value.startswith("@") else []
    if isinstance(value, dict):
        return [r for v in value.values() for r in _connection_refs(v)]
    if isinstance(value, list):
        return [r for v in value for r in _connection_refs(v)]
    return []
