"""Where the Osiris reference material is: unmodified files of Osiris's public repository (project
directory, example pipelines, component specs, drivers) that tests read but the repository never
copies. ``$OSIRIS_REFERENCE``, else ``../shared/osiris-reference`` next to the checkout (or next to
the directory holding a git worktree of it)."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def osiris_reference() -> Path:
    candidates = [Path(os.environ["OSIRIS_REFERENCE"])] if os.environ.get("OSIRIS_REFERENCE") else []
    candidates += [parent / "shared" / "osiris-reference" for parent in REPO.parents[:2]]
    for candidate in candidates:
        if (candidate / "project" / "osiris.yaml").is_file():
            return candidate
    raise FileNotFoundError(
        "the Osiris reference material is missing (looked in "
        + ", ".join(map(str, candidates))
        + "); set OSIRIS_REFERENCE to its directory"
    )
