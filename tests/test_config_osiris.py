"""The Osiris sections of osiris.yaml, loaded directly (the CLI tests use the real project file)."""

from __future__ import annotations

from pathlib import Path

import pytest

from osiris_flight.config import load_config
from osiris_flight.errors import InvalidInput
from osiris_flight.osiris_settings import IGNORED, ignored_notes, ignored_warning


def test_an_older_osiris_file_is_accepted_and_every_ignored_key_has_a_reason(tmp_path: Path) -> None:
    """The sections of Osiris's built-in defaults (``output``, ``sessions``, ``logging.file``)."""
    path = tmp_path / "osiris.yaml"
    path.write_text(
        "version: '2.0'\nlogging: {level: DEBUG, file: null, format: '%(message)s'}\n"
        "output: {format: csv, directory: output/}\nsessions: {directory: .osiris_sessions/}\n"
        "discovery: {sample_size: 10}\nengine: {workers: 3}\n"
    )
    config = load_config(path)
    assert config.engine.workers == 3 and config.osiris.log_level == "debug"
    assert config.osiris.ignored == ("discovery", "logging.file", "logging.format", "output", "sessions")
    assert all(key in IGNORED for key in config.osiris.ignored)
    assert ignored_notes(str(path), config.osiris.ignored)[-1] == (
        f"{path}: sessions has no effect here: this engine keeps no chat sessions"
    )


def test_run_logs_follow_base_path_and_may_not_disagree(tmp_path: Path) -> None:
    path = tmp_path / "osiris.yaml"
    path.write_text(f"filesystem: {{base_path: '{tmp_path}/srv', run_logs_dir: logs}}\n")
    config = load_config(path)
    assert config.run_logs == f"{tmp_path}/srv/logs" and config.osiris.base_path == f"{tmp_path}/srv"
    assert ignored_warning(str(path), config.osiris.ignored) is None
    path.write_text("filesystem:\n  run_logs_dir: logs\nrun_logs: other\n")
    with pytest.raises(InvalidInput) as caught:
        load_config(path)
    [problem] = caught.value.problems
    assert problem.field == "run_logs" and problem.line == 3 and "disagree" in problem.message
    path.write_text("filesystem:\n  base_path: 5\nlogging: [INFO]\n")
    with pytest.raises(InvalidInput) as caught:
        load_config(path)
    assert [(p.field, p.line) for p in caught.value.problems] == [("filesystem.base_path", 2), ("logging", 3)]
