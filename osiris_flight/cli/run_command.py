"""What ``osiris-flight run`` does: compile (or reload for --resume), resolve connections, submit to a
cluster (an embedded local one by default), show progress, and stop cleanly, also on Ctrl-C."""

from __future__ import annotations

import json
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from osiris_flight import protocol as p
from osiris_flight.cli.progress import ProgressView, StepView, print_summary
from osiris_flight.cluster.client import Client
from osiris_flight.cluster.curve import curve_keys
from osiris_flight.cluster.local import LocalCluster
from osiris_flight.components.registry import build_registry
from osiris_flight.config import Config
from osiris_flight.errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_RUN_FAILED, InvalidInput, Problem
from osiris_flight.oml.compile import compile_pipeline
from osiris_flight.oml.connections import resolve_connections
from osiris_flight.oml.model import Manifest
from osiris_flight.oml.optimize import optimize
from osiris_flight.oml.params import parse_param_args
from osiris_flight.oml.plan import plan_manifest
from osiris_flight.oml.validate import ignored_config
from osiris_flight.runs.rundir import find_run, new_run_id

CANCEL_GRACE_S = 15.0


@dataclass
class RunRequest:
    pipeline: str | None
    params: tuple[str, ...] = ()
    profile: str | None = None
    connections_file: str | None = None
    resume_id: str | None = None
    cluster: str | None = None
    run_logs: Path = field(default_factory=lambda: Path("run_logs").resolve())
    quiet: bool = False  # no live progress, only the summary
    as_json: bool = False  # nothing on stdout but the final JSON document


@dataclass
class RunOutcome:
    run_id: str
    status: str
    error: str
    summary: dict[str, Any]
    exit_code: int


def _manifest(config: Config, request: RunRequest, console: Console) -> tuple[Manifest, str]:
    """A fresh compile (optimized unless ``engine.optimize`` is off), or a resumed run's own manifest
    exactly as it started (already optimized or not: resuming never rewrites it again)."""
    registry = build_registry(config.plugins)
    if request.resume_id:
        run_dir = find_run(request.run_logs, request.resume_id)
        try:
            manifest = Manifest.from_dict(json.loads(run_dir.manifest.read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError) as exc:
            raise InvalidInput(
                Problem(
                    f"cannot read the manifest of run {request.resume_id}: {exc}", file=str(run_dir.manifest)
                )
            ) from None
        return manifest, run_dir.run_id
    assert request.pipeline is not None
    manifest = compile_pipeline(
        request.pipeline,
        registry,
        params=parse_param_args(request.params),
        profile=request.profile,
        connections_file=request.connections_file,
    )
    if config.engine.optimize:  # the run directory's manifest.json is this one, with its optimizations
        manifest, _ = optimize(manifest, registry)
    if not (request.quiet or request.as_json):
        for note in ignored_config(manifest.steps, registry):
            console.print(f"note: {escape(note)}", highlight=False)
    return manifest, new_run_id()


def execute(config: Config, request: RunRequest, console: Console) -> RunOutcome:
    manifest, run_id = _manifest(config, request, console)
    plan = plan_manifest(manifest, build_registry(config.plugins))
    connections = resolve_connections(manifest, request.connections_file)
    submit = p.SubmitRun(
        run_id=run_id,
        run_logs=str(request.run_logs),
        manifest=manifest.to_dict(),
        plan=plan.to_dict(),
        connections=connections,
        resume=request.resume_id is not None,
        max_attempts=config.engine.max_attempts,
        batch_rows=config.engine.batch_rows,
    )
    local = None if request.cluster else LocalCluster(config)
    interrupted = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: interrupted.set())
    try:
        address = request.cluster or local.start()  # type: ignore[union-attr]
        if interrupted.is_set():
            return RunOutcome(run_id, "cancelled", "interrupted before the run started", {}, EXIT_INTERRUPTED)
        # CURVE only towards a cluster given by address: the embedded one has private Unix sockets.
        curve = curve_keys(config.cluster) if request.cluster else None
        with Client(address, curve=curve) as client:
            return _follow(client, submit, manifest, request, console, interrupted)
    finally:
        if local is not None:
            local.stop()
        signal.signal(signal.SIGINT, previous)


def _follow(
    client: Client,
    submit: p.SubmitRun,
    manifest: Manifest,
    request: RunRequest,
    console: Console,
    interrupted: threading.Event,
) -> RunOutcome:
    steps = {s.id: StepView(s.component) for s in manifest.steps}
    cancel_sent_at: float | None = None
    if not (request.quiet or request.as_json):
        verb = "resuming" if submit.resume else "running"
        console.print(f"{verb} {escape(manifest.name)} as run {submit.run_id}", highlight=False)
    with ProgressView(steps, quiet=request.quiet or request.as_json, console=console) as view:
        for message in client.run(submit):
            if interrupted.is_set() and cancel_sent_at is None:
                client.cancel(submit.run_id, "interrupted (Ctrl-C)")
                cancel_sent_at = time.monotonic()
            if cancel_sent_at is not None and time.monotonic() - cancel_sent_at > CANCEL_GRACE_S:
                return RunOutcome(
                    submit.run_id,
                    "cancelled",
                    "interrupted; the coordinator did not confirm",
                    {},
                    EXIT_INTERRUPTED,
                )
            if isinstance(message, p.RunEvents):
                for event in message.events:
                    view.event(event)
            elif isinstance(message, p.RunFinished):
                finished = message
                break
        else:  # pragma: no cover - client.run always ends with RunFinished
            raise RuntimeError("the run stream ended without a result")
    if not request.as_json:
        print_summary(console, finished.run_id, finished.status, finished.error, finished.summary)
    if cancel_sent_at is not None:
        code = EXIT_INTERRUPTED
    else:
        code = EXIT_OK if finished.status == "success" else EXIT_RUN_FAILED
    return RunOutcome(finished.run_id, finished.status, finished.error, finished.summary, code)
