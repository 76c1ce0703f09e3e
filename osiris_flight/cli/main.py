"""``osiris-flight``: validate, compile, plan, run, runs, logs.

Exit codes: 0 success, 1 the run failed, 2 invalid input (reported before anything runs, never with
a traceback), 130 interrupted. Every command takes ``--json`` for machines.
"""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
from rich.console import Console

from osiris_flight.cli.keys import keys
from osiris_flight.cli.project_config import config_notes, project_config
from osiris_flight.config import Config, with_overrides
from osiris_flight.errors import (
    EXIT_INTERRUPTED,
    EXIT_INVALID_INPUT,
    EXIT_OK,
    EXIT_RUN_FAILED,
    InvalidInput,
    OsirisFlightError,
    Problem,
)

F = TypeVar("F", bound=Callable[..., Any])
console = Console(highlight=False, soft_wrap=True)


def _fail(exc: OsirisFlightError, as_json: bool) -> NoReturn:
    if as_json:
        problems = [p.to_dict() for p in exc.problems] if isinstance(exc, InvalidInput) else []
        click.echo(json.dumps({"ok": False, "error": str(exc), "problems": problems}, indent=2))
    else:
        lines = str(exc).splitlines() or [type(exc).__name__]
        click.echo("error: " + lines[0], err=True)
        for line in lines[1:]:
            click.echo("error: " + line, err=True)
    sys.exit(exc.exit_code)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def pipeline_options(f: F) -> F:
    f = click.option("--param", "params", multiple=True, metavar="K=V", help="set a pipeline param")(f)
    f = click.option("--profile", default=None, help="params profile to apply")(f)
    f = click.option(
        "--connections",
        "connections_file",
        type=click.Path(),
        default=None,
        help="osiris_connections.yaml (default: $OSIRIS_CONNECTIONS_FILE, then ./)",
    )(f)
    f = click.option(
        "--config",
        "config_path",
        type=click.Path(),
        default=None,
        help="osiris.yaml (default: ./osiris.yaml when present)",
    )(f)
    f = click.option("--json", "as_json", is_flag=True, help="machine-readable output")(f)
    return f


def _compile(
    pipeline: str,
    params: tuple[str, ...],
    profile: str | None,
    connections_file: str | None,
    config_path: str | None,
    *,
    optimize: bool | None = False,
    warn: bool = True,
) -> tuple[Config, Any, Any, Any, list[Any] | None]:
    """Config, registry, manifest, plan and the optimizer's rewrites (None when it did not run).

    ``optimize``: False never, True always, None as ``engine.optimize`` in osiris.yaml says.
    """
    from osiris_flight.components.registry import build_registry
    from osiris_flight.oml.compile import compile_pipeline
    from osiris_flight.oml.optimize import optimize as optimize_manifest
    from osiris_flight.oml.params import parse_param_args
    from osiris_flight.oml.plan import plan_manifest

    config = project_config(config_path, warn=warn)
    registry = build_registry(config.plugins)
    manifest = compile_pipeline(
        pipeline,
        registry,
        params=parse_param_args(params),
        profile=profile,
        connections_file=connections_file or config.connections_file,
    )
    rewrites = None
    if optimize or (optimize is None and config.engine.optimize):
        manifest, rewrites = optimize_manifest(manifest, registry)
    return config, registry, manifest, plan_manifest(manifest, registry), rewrites


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="osiris-flight")
def cli() -> None:
    """Run Osiris OML pipelines on a coordinator and worker processes streaming Arrow over Flight."""


@cli.command()
@click.argument("pipeline", type=click.Path())
@pipeline_options
def validate(
    pipeline: str,
    params: tuple[str, ...],
    profile: str | None,
    connections_file: str | None,
    config_path: str | None,
    as_json: bool,
) -> None:
    """Check a pipeline: syntax, steps, dependencies, component configs, params, connections."""
    from osiris_flight.oml.validate import ignored_config

    try:
        config, registry, manifest, plan, _ = _compile(
            pipeline, params, profile, connections_file, config_path, warn=False
        )
    except OsirisFlightError as exc:
        _fail(exc, as_json)
    notes = config_notes(config) + ignored_config(manifest.steps, registry)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "ok": True,
                    "pipeline": manifest.name,
                    "steps": len(manifest.steps),
                    "stages": len(plan.stages),
                    "notes": notes,
                }
            )
        )
    else:
        steps, stages = len(manifest.steps), len(plan.stages)
        click.echo(f"{pipeline}: valid ({_count(steps, 'step')}, {_count(stages, 'stage')})")
        for note in notes:
            click.echo(f"note: {note}", err=True)


@cli.command("compile")
@click.argument("pipeline", type=click.Path())
@pipeline_options
@click.option("--out", type=click.Path(), default=None, help="write the manifest here instead of stdout")
@click.option(
    "--optimized",
    is_flag=True,
    help="the manifest after the query optimizer, as run uses it (with its optimizations list)",
)
def compile_cmd(
    pipeline: str,
    params: tuple[str, ...],
    profile: str | None,
    connections_file: str | None,
    config_path: str | None,
    as_json: bool,
    out: str | None,
    optimized: bool,
) -> None:
    """Compile to a deterministic, secret-free manifest (JSON, with sha256 fingerprints)."""
    try:
        _, _, manifest, _, _ = _compile(
            pipeline, params, profile, connections_file, config_path, optimize=optimized
        )
    except OsirisFlightError as exc:
        _fail(exc, as_json)
    text = manifest.to_json()
    if out:
        try:
            Path(out).write_text(text, encoding="utf-8")
        except OSError as exc:
            _fail(InvalidInput(Problem(f"cannot write the manifest: {exc.strerror}", file=out)), as_json)
        click.echo(
            json.dumps({"ok": True, "manifest": out, "fingerprint": manifest.fingerprint()})
            if as_json
            else f"wrote {out} (sha256 {manifest.fingerprint()})"
        )
    else:
        click.echo(text, nl=False)


NO_OPTIMIZE_HELP = "do not push filters and column lists into MySQL reads (engine.optimize: false)"


@cli.command()
@click.argument("pipeline", type=click.Path())
@pipeline_options
@click.option("--no-optimize", is_flag=True, help=NO_OPTIMIZE_HELP)
def plan(
    pipeline: str,
    params: tuple[str, ...],
    profile: str | None,
    connections_file: str | None,
    config_path: str | None,
    as_json: bool,
    no_optimize: bool,
) -> None:
    """Show the stages, tasks, fused chains and exchanges a pipeline runs as, and for each MySQL
    read its query as written and as the query optimizer rewrote it (or why it did not)."""
    from osiris_flight.oml.optimize import describe_rewrites, read_summaries
    from osiris_flight.oml.plan import describe_plan

    try:
        _, _, manifest, physical, rewrites = _compile(
            pipeline, params, profile, connections_file, config_path, optimize=False if no_optimize else None
        )
    except OsirisFlightError as exc:
        _fail(exc, as_json)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "pipeline": manifest.name,
                    **physical.to_dict(),
                    "exchanges": [list(e) for e in physical.exchanges()],
                    "optimizer": {
                        "enabled": rewrites is not None,
                        "reads": read_summaries(rewrites or []),
                        "rewrites": [r.to_dict() for r in rewrites or []],
                    },
                },
                indent=2,
            )
        )
    else:
        click.echo(describe_plan(physical, manifest))
        click.echo(describe_rewrites(rewrites or [], enabled=rewrites is not None), nl=False)


@cli.command()
@click.argument("pipeline", type=click.Path(), required=False)
@pipeline_options
@click.option("--resume", "resume_id", default=None, metavar="RUN_ID", help="continue a failed or killed run")
@click.option(
    "--cluster", default=None, help="coordinator address (default: start an embedded local cluster)"
)
@click.option(
    "--workers", type=click.IntRange(min=1), default=None, help="local workers (default: one per CPU)"
)
@click.option(
    "--memory-limit-mb", type=click.IntRange(min=1), default=None, help="batch-store budget before spilling"
)
@click.option(
    "--run-logs", default=None, type=click.Path(), help="root of run directories (default: run_logs)"
)
@click.option("--quiet", is_flag=True, help="no progress output, only the summary")
@click.option("--no-optimize", is_flag=True, help=NO_OPTIMIZE_HELP)
def run(
    pipeline: str | None,
    params: tuple[str, ...],
    profile: str | None,
    connections_file: str | None,
    config_path: str | None,
    as_json: bool,
    resume_id: str | None,
    cluster: str | None,
    workers: int | None,
    memory_limit_mb: int | None,
    run_logs: str | None,
    quiet: bool,
    no_optimize: bool,
) -> None:
    """Run a pipeline (or --resume a run) and show live progress."""
    from osiris_flight.cli.run_command import RunRequest, execute

    if pipeline is None and resume_id is None:
        _fail(InvalidInput(Problem("give a pipeline file, or --resume RUN_ID")), as_json)
    if resume_id is not None:
        # A resumed run runs its stored manifest: anything that would change it is refused rather
        # than silently ignored.
        ignored = [
            name
            for name, given in (
                ("PIPELINE", pipeline),
                ("--param", params),
                ("--profile", profile),
                ("--no-optimize", no_optimize),
            )
            if given
        ]
        if ignored:
            _fail(
                InvalidInput(
                    Problem(
                        "--resume runs the manifest stored with the run; "
                        f"it does not take {', '.join(ignored)}",
                        field="--resume",
                        hint=f"osiris-flight run --resume {resume_id}, or start a new run of the pipeline",
                    )
                ),
                as_json,
            )
    try:
        config = with_overrides(
            project_config(config_path),
            workers=workers,
            memory_limit_mb=memory_limit_mb,
            optimize=False if no_optimize else None,
        )
        request = RunRequest(
            pipeline=pipeline,
            params=params,
            profile=profile,
            connections_file=connections_file or config.connections_file,
            resume_id=resume_id,
            cluster=cluster or config.cluster.coordinator,
            run_logs=Path(run_logs or config.run_logs).resolve(),
            quiet=quiet,
            as_json=as_json,
        )
        outcome = execute(config, request, console)
    except OsirisFlightError as exc:
        _fail(exc, as_json)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "run_id": outcome.run_id,
                    "status": outcome.status,
                    "error": outcome.error or None,
                    "summary": outcome.summary,
                },
                indent=2,
                default=str,
            )
        )
    sys.exit(outcome.exit_code)


def _run_logs(run_logs: str | None, config_path: str | None, as_json: bool) -> Path:
    """--run-logs, else osiris.yaml's run_logs, else ./run_logs."""
    if run_logs:
        return Path(run_logs)
    try:
        return Path(project_config(config_path).run_logs)
    except OsirisFlightError as exc:
        _fail(exc, as_json)


@cli.command()
@click.option(
    "--run-logs", default=None, type=click.Path(), help="default: osiris.yaml run_logs, or run_logs"
)
@click.option("--config", "config_path", type=click.Path(), default=None)
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def runs(run_logs: str | None, config_path: str | None, limit: int, as_json: bool) -> None:
    """List recent runs, newest first."""
    from osiris_flight.runs.rundir import list_runs

    root = _run_logs(run_logs, config_path, as_json)
    rows = []
    for run_dir in list_runs(root)[:limit]:
        status = run_dir.read_status()
        rows.append(
            {
                "run_id": run_dir.run_id,
                "pipeline": run_dir.pipeline,
                "status": status.get("status"),
                "started_at": status.get("started_at"),
                "error": status.get("error"),
                "run_dir": str(run_dir.path),
            }
        )
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo(f"no runs under {root}")
    for row in rows:
        click.echo(f"{row['run_id']}  {row['status'] or '?':<8}  {row['pipeline']:<28} {row['run_dir']}")


@cli.command()
@click.argument("run_id")
@click.option(
    "--run-logs", default=None, type=click.Path(), help="default: osiris.yaml run_logs, or run_logs"
)
@click.option("--config", "config_path", type=click.Path(), default=None)
@click.option("--json", "as_json", is_flag=True, help="the events as JSON lines")
def logs(run_id: str, run_logs: str | None, config_path: str | None, as_json: bool) -> None:
    """Show a run's events."""
    from osiris_flight.runs.rundir import find_run, read_jsonl

    try:
        run_dir = find_run(_run_logs(run_logs, config_path, as_json), run_id)
    except OsirisFlightError as exc:
        _fail(exc, as_json)
    if not run_dir.events.exists():
        click.echo(f"run {run_id} has no events yet", err=True)
        return
    try:
        records = list(read_jsonl(run_dir.events))
    except ValueError as exc:
        _fail(OsirisFlightError(f"run {run_id}: events file is corrupt: {exc}"), as_json)
    for _, ev in records:
        if ev is None:  # the last line of a run still writing (or killed mid-write)
            continue
        if as_json:
            click.echo(json.dumps(ev, ensure_ascii=False))
            continue
        detail = {k: v for k, v in ev.items() if k not in ("ts", "t", "event", "run_id", "pipeline")}
        click.echo(f"{ev['ts']}  {ev['event']:<16} " + " ".join(f"{k}={v}" for k, v in detail.items()))


cli.add_command(__import__("osiris_flight.cli.connections", fromlist=["connections"]).connections)
cli.add_command(keys)


def main() -> None:
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    try:
        cli(standalone_mode=True)
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)


__all__ = ["EXIT_INVALID_INPUT", "EXIT_OK", "EXIT_RUN_FAILED", "cli", "main"]
