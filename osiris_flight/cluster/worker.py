"""The worker daemon: a ZeroMQ DEALER loop, a Flight server for its outputs, task threads.

What the worker does with each coordinator message is decided by the pure state machine in
``worker_state.py``; this module is its I/O shell: it feeds it the decoded messages and the ends of
its task threads, and carries out the instructions it returns.

Threads and why:

* the main thread owns the DEALER socket and does only I/O (receive assignments, send reports,
  heartbeats), so compute never delays a heartbeat by more than a GIL switch interval;
* each task attempt runs in its own thread (pyarrow releases the GIL in its kernels and in Flight);
  it reports back through an inproc PUSH socket that the main loop polls, so a report goes out at
  once without the main thread sleeping on a queue;
* the Flight server serves outputs from the batch store on its own gRPC threads.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pyarrow as pa
import zmq
from zmq.utils.monitor import recv_monitor_message

from osiris_flight import protocol as p
from osiris_flight.cluster.curve import CurveKeys, secure_client
from osiris_flight.cluster.private_dir import private_umask
from osiris_flight.cluster.spill_dirs import claim_spill_dir
from osiris_flight.cluster.worker_state import (
    CancelTask,
    Instruction,
    Joined,
    Phase,
    Refused,
    Register,
    ReleaseOutput,
    ReleaseRun,
    SendReport,
    StartTask,
    Stop,
    TaskEnded,
    WorkerState,
)
from osiris_flight.components.base import Cancelled
from osiris_flight.components.registry import build_registry
from osiris_flight.data.batch_store import BatchStore, SpillEvent
from osiris_flight.data.flight_io import FlightClientPool, FlightDataServer
from osiris_flight.data.rowstream import RowStream
from osiris_flight.data.tls import FlightTLS
from osiris_flight.errors import ProtocolError, TerminalError, is_transient
from osiris_flight.oml.model import task_id as make_task_id
from osiris_flight.redaction import cap, scrub
from osiris_flight.runtime.task_runner import TaskRun, TaskSpec, run_task

log = logging.getLogger("osiris_flight.worker")

PROGRESS_INTERVAL_S = 0.5
STOP_GRACE_S = 5.0  # how long a stopping worker waits for its cancelled tasks to end
# libzmq reconnects a dropped connection at once (and says so: CONNECT_RETRIED), except one it
# dropped itself for a protocol error, such as a frame over MAX_MESSAGE_BYTES: then it never does,
# and the coordinator's side keeps the worker's identity, so connecting again is refused too. A drop
# followed by this long a silence is such a one: the worker stops (exit 3) instead of idling unseen
# (or blocking for ever in a send: a DEALER without a connection blocks).
LINK_LOST_AFTER_S = 2.0


class LinkLost(Exception):
    pass


@dataclass(frozen=True)
class WorkerOptions:
    coordinator: str
    worker_id: str = ""
    slots: int = 2
    memory_limit_bytes: int = 256 * 1024 * 1024
    spill_dir: str | None = None
    spill_compression: str = "lz4"
    flight_compression: str = "none"  # of the streams it serves (data/flight_io.py: when it pays)
    shrink_batches: bool = True
    bind_host: str = "127.0.0.1"
    advertise_host: str | None = None
    heartbeat_interval_s: float = 1.0
    register_timeout_s: float = 30.0
    parent_pid: int | None = None
    # The embedded cluster: serve Flight on this Unix socket (in its private 0700 directory, made
    # under umask 077: private_dir.py) instead of TCP on bind_host.
    flight_socket: str | None = None
    curve: CurveKeys | None = None  # the coordinator requires CURVE (curve.py)
    tls: FlightTLS | None = None  # Flight over mutual TLS (data/tls.py)
    # engine.file_roots: real paths of the directories file components may open (None: anywhere).
    file_roots: tuple[Path, ...] | None = None


class Worker:
    def __init__(self, options: WorkerOptions) -> None:
        self.options = options
        self.worker_id = options.worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:4]}"
        # Marked as this live worker's; dead workers' spill directories under the root are removed.
        self.spill_dir, self._spill_owner = claim_spill_dir(options.spill_dir, self.worker_id)
        self.work_dir = self.spill_dir / "work"
        self.work_dir.mkdir(exist_ok=True)
        self.store = BatchStore(
            options.memory_limit_bytes,
            self.spill_dir,
            compression=options.spill_compression,
            shrink=options.shrink_batches,
            on_spill=self._on_spill,
        )
        if options.flight_socket:
            # The embedded cluster: a Unix socket in its private directory; no TLS (no other user can
            # reach it), fetch tokens still checked.
            with private_umask():  # gRPC makes the socket file while the server is constructed
                self.flight = FlightDataServer(
                    self.store, f"grpc+unix://{options.flight_socket}", compression=options.flight_compression
                )
            self.clients = FlightClientPool()
        else:
            self.flight = FlightDataServer(
                self.store,
                f"grpc://{options.bind_host}:0",
                compression=options.flight_compression,
                tls=options.tls,
            )
            self.clients = FlightClientPool(tls=options.tls)
        self.registry = build_registry()
        self.tasks: dict[tuple[str, str, int], TaskRun] = {}
        self._stop = threading.Event()
        # Which coordinator message is acted on, and how: worker_state.py (pure, tested on its own).
        self.state = WorkerState()
        self._exit_code = 0
        self._rejoin_deadline = 0.0  # while rejoining: give up (exit 3) when no Welcome came by then
        # Task threads are reused (starting a thread per task cost ~1 ms under load).
        self._pool = ThreadPoolExecutor(max_workers=options.slots + 2, thread_name_prefix="task")
        self._running: set[Future[None]] = set()
        self._thread_state = threading.local()
        self.heartbeat_interval_s = options.heartbeat_interval_s
        self._zmq = zmq.Context()
        self._inbox_addr = f"inproc://inbox-{uuid.uuid4().hex}"
        self._process = psutil.Process()

    @property
    def flight_uri(self) -> str:
        """Where peers fetch this worker's outputs: a wildcard bind is advertised by host name."""
        if self.options.flight_socket:
            return f"grpc+unix://{self.options.flight_socket}"
        host = self.options.advertise_host or self.options.bind_host
        if host in ("0.0.0.0", "::", ""):
            host = socket.getfqdn()
        return f"{'grpc+tls' if self.options.tls else 'grpc'}://{host}:{self.flight.port}"

    # -- main loop -----------------------------------------------------------------------------
    def run(self) -> int:
        signal.signal(signal.SIGTERM, lambda *_: self._stop.set())
        self.flight.start()
        sock = self._zmq.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 1000)
        sock.setsockopt_string(zmq.IDENTITY, self.worker_id)
        sock.setsockopt(zmq.MAXMSGSIZE, p.MAX_MESSAGE_BYTES)
        if self.options.curve is not None:
            secure_client(sock, self.options.curve)
        inbox = self._zmq.socket(zmq.PULL)
        inbox.bind(self._inbox_addr)
        # Watched from before the connect: a drop right after the Welcome must not go unseen.
        self._link = sock.get_monitor_socket(
            zmq.EVENT_DISCONNECTED | zmq.EVENT_CONNECT_RETRIED | zmq.EVENT_CONNECTED
        )
        self._dropped_at: float | None = None
        try:
            try:
                sock.connect(self.options.coordinator)
            except zmq.ZMQError as exc:
                log.error(
                    "cannot connect to coordinator %s: %s (e.g. tcp://host:5555)",
                    self.options.coordinator,
                    exc,
                )
                return 2
            if not self._register(sock):
                return 3
            return self._loop(sock, inbox)
        finally:
            for task in list(self.tasks.values()):
                task.cancel.set()
            with contextlib.suppress(Exception):
                sock.send(p.encode(p.Goodbye(self.worker_id, "stopping")), zmq.NOBLOCK)
            sock.disable_monitor()
            self._link.close(linger=0)
            sock.close(linger=500)
            inbox.close(linger=0)
            self.flight.shutdown()
            self._pool.shutdown(wait=False, cancel_futures=True)
            # The cancelled tasks stop at their next batch: let them, so that none recreates its
            # scratch directory after the spill directory is gone (it would be left behind).
            futures_wait(self._running, timeout=STOP_GRACE_S)
            self.store.close()
            shutil.rmtree(self.spill_dir, ignore_errors=True)
            self._spill_owner.close()
            # destroy, not term: idle pool threads still hold their report sockets.
            self._zmq.destroy(linger=0)

    def _register_message(self) -> bytes:
        return p.encode(
            p.Register(
                self.worker_id,
                socket.gethostname(),
                os.getpid(),
                self.options.slots,
                self.flight_uri,
                self.options.memory_limit_bytes,
            )
        )

    def _register(self, sock: zmq.Socket) -> bool:
        sock.send(self._register_message())
        deadline = time.monotonic() + self.options.register_timeout_s
        while time.monotonic() < deadline and not self._stop.is_set():
            if sock.poll(200):
                try:
                    message = p.decode(sock.recv())
                except p.VersionMismatch as exc:  # nothing it says can be understood
                    log.error("cannot join coordinator %s: %s", self.options.coordinator, exc)
                    return False
                except ProtocolError as exc:  # names op and field, never a value
                    log.error("skipped a malformed message from the coordinator: %s", exc)
                    continue
                self._apply(sock, self.state.handle(message))
                if self.state.phase is Phase.JOINED:
                    log.info("worker %s joined %s", self.worker_id, self.options.coordinator)
                    return True
                if self.state.phase is Phase.STOPPED:
                    return False
            if self._parent_gone():
                return False
        log.error(
            "no answer from coordinator %s%s",
            self.options.coordinator,
            " (with CURVE: is this worker's public key in the coordinator's authorized keys?)"
            if self.options.curve
            else "",
        )
        return False

    def _loop(self, sock: zmq.Socket, inbox: zmq.Socket) -> int:
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(inbox, zmq.POLLIN)
        try:
            return self._serve(sock, inbox, poller)
        except LinkLost:
            log.error(
                "leaving coordinator %s: it broke the protocol (a frame over %d MiB?) and the link is gone",
                self.options.coordinator,
                p.MAX_MESSAGE_BYTES >> 20,
            )
            return 3

    def _check_link(self) -> None:
        """Raise LinkLost once the link was dropped and libzmq has not tried again for a while."""
        while self._link.poll(0):
            event = recv_monitor_message(self._link)["event"]
            self._dropped_at = time.monotonic() if event == zmq.EVENT_DISCONNECTED else None
        if self._dropped_at is not None and time.monotonic() - self._dropped_at > LINK_LOST_AFTER_S:
            raise LinkLost

    def _send(self, sock: zmq.Socket, frame: bytes) -> None:
        """Send to the coordinator: queued while it is away (blocking at the high-water mark, as
        before), LinkLost when the link is gone for good."""
        while True:
            try:
                sock.send(frame, zmq.NOBLOCK)
                return
            except zmq.Again:
                self._check_link()
                if self._stop.is_set():
                    return
                sock.poll(100, zmq.POLLOUT)

    def _serve(self, sock: zmq.Socket, inbox: zmq.Socket, poller: zmq.Poller) -> int:
        last_sent = time.monotonic()
        last_progress = last_sent
        interval = self.heartbeat_interval_s
        while not self._stop.is_set():
            events = dict(poller.poll(timeout=min(100, int(interval * 250))))
            self._check_link()
            if inbox in events:
                while True:
                    try:
                        frames = inbox.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    if len(frames) == 1:  # a report of a running task: straight on
                        self._send(sock, frames[0])
                    else:  # [b"end", run id, task id, attempt, its final report]
                        key = (frames[1].decode(), frames[2].decode(), int(frames[3]))
                        self.tasks.pop(key, None)
                        self._apply(sock, self.state.handle(TaskEnded(key, frames[4])))
                    last_sent = time.monotonic()
            if sock in events:
                while True:
                    try:
                        frame = sock.recv(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    try:
                        message = p.decode(frame)
                    except p.VersionMismatch as exc:  # an upgraded coordinator: restart with it
                        log.error("leaving coordinator %s: %s", self.options.coordinator, exc)
                        return 3
                    except ProtocolError as exc:  # names op and field, never a value
                        log.error("skipped a malformed message from the coordinator: %s", exc)
                        continue
                    try:
                        self._apply(sock, self.state.handle(message))
                    except Exception as exc:  # one message must never stop the worker
                        log.error(
                            "handling %s from the coordinator failed with %s; skipped",
                            message.op,
                            type(exc).__name__,
                        )
                    if self.state.phase is Phase.STOPPED:
                        return self._exit_code
            now = time.monotonic()
            if self.state.phase is Phase.REJOINING and now > self._rejoin_deadline:
                log.error("no Welcome from coordinator %s after registering again", self.options.coordinator)
                return 3
            if self.tasks and now - last_progress >= PROGRESS_INTERVAL_S:
                rss = self._process.memory_info().rss
                for task in list(self.tasks.values()):
                    spec = task.spec
                    self._send(
                        sock,
                        p.encode(
                            p.TaskProgress(spec.run_id, spec.task_id, spec.attempt, task.progress(), rss)
                        ),
                    )
                last_progress = last_sent = now
            if now - last_sent >= interval:
                self._send(
                    sock,
                    p.encode(
                        p.Heartbeat(
                            self.worker_id,
                            running=[f"{k[0]}/{k[1]}#{k[2]}" for k in list(self.tasks)],
                            rss_bytes=self._process.memory_info().rss,
                            store_bytes=self.store.bytes_in_memory,
                            spilled_bytes=self.store.bytes_spilled_total,
                        )
                    ),
                )
                last_sent = now
            if self._parent_gone():
                log.warning("parent process is gone; worker %s stops", self.worker_id)
                return 0
        return 0

    def _parent_gone(self) -> bool:
        return self.options.parent_pid is not None and os.getppid() != self.options.parent_pid

    # -- carrying out the state machine's instructions -----------------------------------------
    def _apply(self, sock: zmq.Socket, instructions: list[Instruction]) -> None:
        for ins in instructions:
            match ins:
                case StartTask():
                    self._start_task(ins.assignment)
                case CancelTask():
                    if (task := self.tasks.get(ins.key)) is not None:
                        task.cancel.set()
                case ReleaseOutput():
                    self.store.release(ins.key)
                case ReleaseRun():
                    self.store.release_run(ins.run_id, ins.reason)
                    shutil.rmtree(self.work_dir / ins.run_id, ignore_errors=True)
                case SendReport():
                    self._send(sock, ins.data)
                case Register():
                    log.warning("the coordinator declared this worker lost; joining again")
                    self._rejoin_deadline = time.monotonic() + self.options.register_timeout_s
                    self._send(sock, self._register_message())
                case Refused():
                    log.warning("the coordinator refused a message of this worker: %s", ins.reason)
                case Joined():
                    self.flight.set_token_key(ins.fetch_token_key)
                    for module in ins.plugins:  # loading a module twice is a no-op
                        self.registry.load_module(module)
                    # The coordinator's interval wins: it is the one that declares workers dead.
                    self.heartbeat_interval_s = ins.heartbeat_interval_s
                case Stop():
                    (log.error if ins.exit_code else log.info)(
                        "worker %s stops: %s", self.worker_id, ins.reason
                    )
                    self._exit_code = ins.exit_code

    def _start_task(self, msg: p.AssignTask) -> None:
        spec = TaskSpec(
            run_id=msg.run_id,
            task_id=msg.task_id,
            stage_id=msg.stage_id,
            partition=msg.partition,
            partitions=msg.partitions,
            attempt=msg.attempt,
            steps=msg.steps,
            output=msg.output,
            output_dir=Path(msg.output_dir),
            batch_rows=msg.batch_rows,
            connections=msg.connections,
            resume_state=msg.resume_state,
        )
        task = TaskRun(spec)
        self.tasks[(msg.run_id, msg.task_id, msg.attempt)] = task
        future = self._pool.submit(self._run_task, task, msg.inputs)
        self._running.add(future)
        future.add_done_callback(self._running.discard)
        future.add_done_callback(_log_escape)

    def _run_task(self, task: TaskRun, inputs: dict[str, list[dict[str, object]]]) -> None:
        spec = task.spec
        push = self._push_socket()

        def send(message: p.Message) -> None:
            # ZMQError: the worker is stopping and its context is gone, so there is nobody to tell.
            with contextlib.suppress(zmq.ZMQError):
                push.send(p.encode(message))

        def send_checked(message: p.TaskTelemetry | p.TaskCheckpoint) -> None:
            """What a component reported, checked here: a value the coordinator would refuse fails
            this (an event or metric is dropped, a checkpoint fails the task), not the worker."""
            try:
                data = p.encode_checked(message)
            except (ProtocolError, TypeError, ValueError) as exc:
                if isinstance(message, p.TaskCheckpoint):
                    raise TerminalError(f"the task's checkpoint cannot be reported: {exc}") from None
                log.warning(
                    "task %s: dropped a %s the protocol cannot carry: %s", spec.task_id, message.name, exc
                )
                return
            with contextlib.suppress(zmq.ZMQError):
                push.send(data)

        send(p.TaskStarted(spec.run_id, spec.task_id, spec.attempt, self.worker_id, task.started_at))

        def open_input(step_id: str) -> RowStream:
            pairs = [
                (str(s["flight_uri"]), p.decode_ticket(s["ticket"]))  # type: ignore[arg-type]
                for s in inputs.get(step_id, [])
            ]
            return self._read_input(pairs, step_id, task)

        # Created by the operators that need scratch space (most do not), removed after the task.
        work_dir = self.work_dir / spec.run_id / f"{spec.task_id}-{spec.attempt}"
        try:

            def checkpoint(token: str, state: dict[str, Any], rows: int) -> None:
                send_checked(p.TaskCheckpoint(spec.run_id, spec.task_id, spec.attempt, token, state, rows))

            def metric(name: str, value: float, **tags: Any) -> None:
                send_checked(
                    p.TaskTelemetry(
                        spec.run_id, spec.task_id, spec.attempt, "metric", name, float(value), tags
                    )
                )

            def event(name: str, **fields: Any) -> None:
                send_checked(
                    p.TaskTelemetry(spec.run_id, spec.task_id, spec.attempt, "event", name, 0.0, fields)
                )

            result = run_task(
                task,
                self.registry,
                self.store,
                open_input,
                work_dir=work_dir,
                memory_limit_bytes=self.options.memory_limit_bytes,
                log_metric=metric,
                log_event=event,
                on_checkpoint=checkpoint,
                file_roots=self.options.file_roots,
            )
            reply: p.Message = p.TaskFinished(
                spec.run_id,
                spec.task_id,
                spec.attempt,
                self.worker_id,
                task.started_at,
                time.time(),
                result.steps,
                result.output_rows,
                result.output_bytes,
            )
        except BaseException as exc:  # a task must always report, whatever it raised
            if not isinstance(exc, Cancelled):
                log.debug("task %s failed:\n%s", spec.task_id, scrub(traceback.format_exc(), task.secrets))
            reply = p.TaskFailed(
                spec.run_id,
                spec.task_id,
                spec.attempt,
                self.worker_id,
                error=cap(scrub(_describe(exc), task.secrets)),  # scrubbed whole, then cut
                error_type=type(exc).__name__,
                transient=is_transient(exc),
                step_id=task.current_step,
            )
        finally:
            shutil.rmtree(work_dir, ignore_errors=True)
        try:
            data = p.encode_checked(reply)
        except Exception as exc:  # a result the protocol cannot carry (a plugin's numpy count, a Path)
            data = p.encode(
                p.TaskFailed(
                    spec.run_id,
                    spec.task_id,
                    spec.attempt,
                    self.worker_id,
                    error=f"the task's result cannot be reported: {exc}",
                    error_type=type(exc).__name__,
                    transient=False,
                    step_id=task.current_step,
                )
            )
        with contextlib.suppress(zmq.ZMQError):  # the main loop forgets the task and sends this
            push.send_multipart(
                [b"end", spec.run_id.encode(), spec.task_id.encode(), b"%d" % spec.attempt, data]
            )

    def _push_socket(self) -> zmq.Socket:
        """This pool thread's socket to the main loop (ZeroMQ sockets must stay on one thread)."""
        push = getattr(self._thread_state, "push", None)
        if push is None:
            push = self._zmq.socket(zmq.PUSH)
            push.setsockopt(zmq.LINGER, 1000)
            push.connect(self._inbox_addr)
            self._thread_state.push = push
        return push

    def _read_input(self, pairs: list[tuple[str, p.FetchOutput]], name: str, task: TaskRun) -> RowStream:
        """An input's partitions in order; those this worker produced come straight from its own
        batch store, the others over Flight (one reused client per peer)."""
        if all(uri != self.flight_uri for uri, _ in pairs):
            return self.clients.read_many(pairs, name=name)

        def open_one(uri: str, ticket: p.FetchOutput) -> RowStream:
            if uri == self.flight_uri:
                schema, batches = self.store.open_reader(ticket.key, cancelled=task.cancel.is_set)
                return RowStream(batches, schema, name=name)
            return self.clients.read(uri, ticket, name=name)

        first = open_one(*pairs[0])

        def chain() -> Iterator[pa.RecordBatch]:
            yield from first.batches()
            for uri, ticket in pairs[1:]:
                stream = open_one(uri, ticket)
                if not stream.schema.equals(first.schema, check_metadata=False):
                    raise TerminalError(f"{name}: partitions of one input must share a schema")
                yield from stream.batches()

        return RowStream(chain(), first.schema, name=name)

    def _on_spill(self, event: SpillEvent) -> None:
        """Report a spill when it happens (on the thread that caused it, often not the spilled
        output's own task: a finished output is spilled when a newer one needs the memory)."""
        run_id, stage_id, partition, attempt = event.key
        spilled = p.OutputSpilled(
            run_id,
            make_task_id(stage_id, partition),
            attempt,
            self.worker_id,
            event.bytes_written_to_disk,
            event.batches,
            event.bytes_in_memory_before,
        )
        with contextlib.suppress(zmq.ZMQError):
            self._push_socket().send(p.encode(spilled))


def _log_escape(future: Future[None]) -> None:
    """_run_task reports whatever its task raises; anything escaping it is a bug, logged loudly."""
    if not future.cancelled() and (exc := future.exception()) is not None:
        log.error("task thread failed without reporting", exc_info=exc)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if type(exc).__module__.startswith("osiris_flight") else f"{type(exc).__name__}: {text}"
