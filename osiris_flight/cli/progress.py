"""How a run looks on a terminal: a live per-step table (state, rows, rows/s, memory) and a summary.

On a TTY this is a rich Live table refreshed from the coordinator's events; elsewhere (CI logs, pipes)
it prints one line per step transition, retry or lost worker, so logs stay readable.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

STATE_STYLE = {
    "pending": "dim",
    "running": "cyan",
    "complete": "green",
    "failed": "red",
    "cancelled": "magenta",
    "skipped": "yellow",
}


@dataclass
class StepView:
    component: str
    state: str = "pending"
    rows: int = 0
    started: float | None = None
    finished: float | None = None
    rss_bytes: int = 0

    def rate(self, now: float) -> float:
        if self.started is None:
            return 0.0
        elapsed = (self.finished or now) - self.started
        return self.rows / elapsed if elapsed > 0 else 0.0


def _human(n: float, unit: str = "") -> str:
    for suffix in ("", "k", "M", "G", "T"):
        if abs(n) < 1000:
            return f"{n:,.0f}{suffix}{unit}" if suffix == "" else f"{n:.1f}{suffix}{unit}"
        n /= 1000
    return f"{n:.1f}P{unit}"


def _bytes(n: float) -> str:
    for suffix in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {suffix}" if suffix == "B" else f"{n:.1f} {suffix}"
        n /= 1024
    return f"{n:.1f} TiB"


@dataclass
class ProgressView:
    steps: dict[str, StepView]
    live: bool = field(default_factory=lambda: sys.stdout.isatty())
    quiet: bool = False
    console: Console = field(default_factory=lambda: Console(stderr=False))
    _live: Live | None = None

    def __enter__(self) -> ProgressView:
        if self.live and not self.quiet:
            self._live = Live(self._table(), console=self.console, refresh_per_second=4, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._live is not None:
            self._live.update(self._table())
            self._live.__exit__(None, None, None)

    def _say(self, text: str) -> None:
        if not self.quiet and self._live is None:
            print(text, flush=True)

    def event(self, ev: dict[str, Any]) -> None:
        name = ev.get("event")
        step = self.steps.get(str(ev.get("step_id")))
        now = float(ev.get("t", time.time()))
        if name == "progress":
            for step_id, info in ev.get("steps", {}).items():
                if step_id in self.steps:
                    self.steps[step_id].rows = int(info.get("rows", 0))
                    self.steps[step_id].rss_bytes = int(info.get("rss_bytes", 0))
        elif name == "step_start" and step:
            step.state, step.started = "running", now
            self._say(f"  start     {ev['step_id']} ({step.component})")
        elif name == "step_complete" and step:
            step.state, step.finished, step.rows = "complete", now, int(ev.get("rows_processed", 0))
            self._say(f"  complete  {ev['step_id']}: {step.rows:,} rows in {ev.get('duration_ms', 0):.0f} ms")
        elif name == "step_failed" and step:
            step.state = "failed"
            self._say(f"  failed    {ev['step_id']}: {ev.get('error')}")
        elif name == "task_retry":
            self._say(f"  retry     {ev.get('task_id')}: {ev.get('reason')}")
        elif name == "task_recompute":
            self._say(f"  recompute {ev.get('task_id')}: {ev.get('reason')}")
        elif name == "worker_lost":
            self._say(f"  worker    {ev.get('worker_id')} lost: {ev.get('reason')}")
        elif name == "run_resumed":
            for task in ev.get("skipped_tasks", []):
                self._say(f"  skip      {task} (committed before)")
        if self._live is not None:
            self._live.update(self._table())

    def _table(self) -> Table:
        now = time.time()
        table = Table(title="osiris-flight", expand=False)
        # memory: resident size of the worker process running the step (last progress report).
        for column in ("step", "component", "state", "rows", "rows/s", "memory"):
            table.add_column(column, justify="left" if column in ("step", "component", "state") else "right")
        for step_id, step in self.steps.items():
            style = STATE_STYLE.get(step.state, "")
            memory = _bytes(step.rss_bytes) if step.rss_bytes else ""
            rate = _human(step.rate(now))
            table.add_row(
                escape(step_id),
                escape(step.component),
                f"[{style}]{step.state}[/]",
                f"{step.rows:,}",
                rate,
                memory,
            )
        return table


def print_summary(console: Console, run_id: str, status: str, error: str, summary: dict[str, Any]) -> None:
    colour = "green" if status == "success" else "red"
    console.print(f"run {run_id}: [{colour}]{status}[/] in {summary.get('duration_ms', 0) / 1000:.2f} s")
    for step_id, info in summary.get("steps", {}).items():
        target = f" -> {info['target']}" if info.get("target") else ""
        line = f"  {step_id:<24} {info.get('state', ''):<9} {info.get('rows', 0):>14,} rows{target}"
        console.print(escape(line), highlight=False)
    if summary.get("spilled_bytes"):
        console.print(f"  spilled {_bytes(summary['spilled_bytes'])} to disk")
    if summary.get("retries"):
        console.print(f"  {summary['retries']} task retries")
    if error:
        # The error is the engine's or a server's text (SQL, paths, column lists): never markup.
        console.print(f"[red]error:[/] {escape(error)}", highlight=False)
    if summary.get("run_dir"):
        console.print(f"  run directory: {escape(str(summary['run_dir']))}", highlight=False)
