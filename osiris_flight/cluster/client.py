"""A client of the coordinator: submits runs, streams their events, cancels, asks for status."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import zmq

from osiris_flight import protocol as p
from osiris_flight.cluster.curve import CurveKeys, secure_client
from osiris_flight.errors import EXIT_INVALID_INPUT, OsirisFlightError


class CoordinatorUnreachable(OsirisFlightError):
    pass


class CoordinatorRefused(CoordinatorUnreachable):
    """The coordinator answered with Reject: this key may not do that (its role), or the request was
    malformed. Its reason is the message."""

    exit_code = EXIT_INVALID_INPUT


class Client:
    def __init__(self, address: str, curve: CurveKeys | None = None) -> None:
        self.address = address
        self.curve = curve
        self._zmq = zmq.Context()
        self.sock = self._zmq.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 500)
        self.sock.setsockopt(zmq.MAXMSGSIZE, p.MAX_MESSAGE_BYTES)
        self.sock.setsockopt_string(zmq.IDENTITY, f"client-{uuid.uuid4().hex[:10]}")
        if curve is not None:
            secure_client(self.sock, curve)
        self.sock.connect(address)

    def close(self) -> None:
        self.sock.close(linger=500)
        self._zmq.term()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, message: p.Message) -> None:
        self.sock.send(p.encode(message))

    def _silence_hint(self) -> str:
        # A CURVE handshake that fails is silent by design: say what to check.
        if self.curve is None:
            return (
                "is it running there? a coordinator that requires CURVE keys ignores a client without "
                "them: set cluster.curve_secret_key and cluster.curve_server_key in osiris.yaml"
            )
        return (
            "is it running there? with CURVE, its authorized keys must hold this client's public key "
            "and cluster.curve_server_key must be the coordinator's public key"
        )

    def receive(self, timeout_s: float) -> p.Message | None:
        if not self.sock.poll(int(timeout_s * 1000)):
            return None
        return p.decode(self.sock.recv())

    def status(self, timeout_s: float = 5.0) -> p.ClusterStatus:
        self.send(p.ClusterStatusRequest())
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            message = self.receive(deadline - time.monotonic())
            if isinstance(message, p.ClusterStatus):
                return message
            if isinstance(message, p.Reject):
                raise CoordinatorRefused(f"the coordinator at {self.address} refused: {message.reason}")
        raise CoordinatorUnreachable(
            f"no answer from the coordinator at {self.address} in {timeout_s:.0f} s ({self._silence_hint()})"
        )

    def wait_for_workers(self, count: int, timeout_s: float = 60.0) -> p.ClusterStatus:
        deadline = time.monotonic() + timeout_s
        while True:
            status = self.status(max(1.0, deadline - time.monotonic()))
            if len(status.workers) >= count:
                return status
            if time.monotonic() > deadline:
                joined = len(status.workers)
                raise CoordinatorUnreachable(
                    f"only {joined} of {count} workers joined {self.address} in {timeout_s:.0f} s"
                )
            time.sleep(0.05)

    def run(
        self, submit: p.SubmitRun, accept_timeout_s: float = 30.0, silence_limit_s: float = 15.0
    ) -> Iterator[p.Message]:
        """Submit and yield RunAccepted, RunEvents and finally RunFinished.

        A quiet coordinator is pinged (ClusterStatusRequest) after a few silent seconds; one that
        stays silent for ``silence_limit_s`` is declared gone rather than waited for forever.
        """
        self.send(submit)
        accepted = False
        deadline = time.monotonic() + accept_timeout_s
        last_heard = time.monotonic()
        pinged = False
        while True:
            message = self.receive(0.5)
            now = time.monotonic()
            if message is None:
                if not accepted and now > deadline:
                    raise CoordinatorUnreachable(
                        f"the coordinator at {self.address} did not accept the run ({self._silence_hint()})"
                    )
                if accepted and now - last_heard > silence_limit_s:
                    raise CoordinatorUnreachable(
                        f"the coordinator at {self.address} stopped answering during run {submit.run_id}; "
                        f"the run can be continued with --resume {submit.run_id} once it is back"
                    )
                if accepted and not pinged and now - last_heard > silence_limit_s / 3:
                    self.send(p.ClusterStatusRequest())
                    pinged = True
                yield p.RunEvents(submit.run_id, [{"event": "tick"}])
                continue
            last_heard, pinged = now, False
            if isinstance(message, p.Reject):
                if not accepted:  # the submission itself was refused (this key's role, its shape)
                    raise CoordinatorRefused(
                        f"the coordinator at {self.address} refused run {submit.run_id}: {message.reason}"
                    )
                continue
            if getattr(message, "run_id", submit.run_id) != submit.run_id:
                continue
            if isinstance(message, p.RunAccepted):
                accepted = True
            yield message
            if isinstance(message, p.RunFinished):
                return

    def cancel(self, run_id: str, reason: str) -> None:
        self.send(p.CancelRun(run_id, reason))

    def shutdown(self) -> None:
        self.send(p.Shutdown("client asked"))
