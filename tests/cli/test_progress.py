"""The run summary prints the engine's text as it is: errors carry SQL, paths and column lists in
square brackets, which must neither vanish nor be read as rich markup."""

from __future__ import annotations

import io

from rich.console import Console

from osiris_flight.cli.progress import print_summary


def render(error: str, summary: dict) -> str:
    out = io.StringIO()
    print_summary(Console(file=out, width=200, color_system=None), "r1", "failed", error, summary)
    return out.getvalue()


def test_errors_and_targets_are_not_markup() -> None:
    error = "step keep: unknown column 'amt' (available columns: [id, name, amount]) in [/tmp/x]"
    text = render(error, {"steps": {"w": {"state": "failed", "rows": 3, "target": "/data/[raw]/o.csv"}}})
    assert error in text
    assert "/data/[raw]/o.csv" in text
