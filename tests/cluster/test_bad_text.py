"""Invalid UTF-8 in a CSV is the reader's error (file, line, byte offset), not the writer's; or it is
decoded as the step's encoding_errors says."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cluster.conftest import events, latest_run_dir, osiris, read_csv

pytestmark = pytest.mark.cluster

PIPELINE = """
oml_version: "0.2.0"
name: bad_text
steps:
  - id: extract
    component: filesystem.csv_extractor
    mode: read
    config: {path: in.csv ERRORS}
  - id: write
    component: filesystem.csv_writer
    mode: write
    depends_on: [extract]
    config: {path: out.csv}
"""


def test_invalid_utf8_fails_the_reader_with_file_and_line(workdir: Path) -> None:
    (workdir / "in.csv").write_bytes(b"id,name\n1,ok\n2,caf\xe9\n")
    (workdir / "p.yaml").write_text(PIPELINE.replace(" ERRORS", ""))
    result = osiris(["run", "p.yaml", "--json", "--workers", "1"], workdir)
    assert result.code == 1
    failed = next(e for e in events(latest_run_dir(workdir)) if e["event"] == "task_failed")
    assert failed["step_id"] == "extract" and not failed["transient"]
    assert failed["error"].startswith(f"step 'extract': CSV file {workdir / 'in.csv'}: column 'name': ")
    assert "invalid utf-8 text at line 3 (byte offset 18: invalid continuation byte)" in failed["error"]
    assert result.json()["summary"]["steps"]["write"]["state"] == "cancelled"
    assert not (workdir / "out.csv").exists()


def test_encoding_errors_replace_reads_the_file(workdir: Path) -> None:
    (workdir / "in.csv").write_bytes(b"id,name\n1,ok\n2,caf\xe9\n")
    (workdir / "p.yaml").write_text(PIPELINE.replace(" ERRORS", ", encoding_errors: replace"))
    result = osiris(["run", "p.yaml", "--json", "--workers", "1"], workdir)
    assert result.code == 0, result.stdout + result.stderr
    assert read_csv(workdir / "out.csv").column("name").to_pylist() == ["ok", "caf\ufffd"]
    refused = osiris(["validate", "p.yaml"], workdir)
    assert refused.code == 0
    (workdir / "p.yaml").write_text(PIPELINE.replace(" ERRORS", ", encoding_errors: skip"))
    refused = osiris(["validate", "p.yaml"], workdir)
    assert refused.code == 2 and "encoding_errors" in refused.stderr and "replace" in refused.stderr
