"""Every kind of invalid input, through the real `osiris-flight` command: exit code 2, a message that
names the problem, no traceback, nothing run."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.cluster.conftest import BIN, cli_env, osiris

GOOD = """\
oml_version: "0.2.0"
name: demo
steps:
  - id: extract
    component: filesystem.csv_extractor
    mode: read
    config: {path: in.csv}
  - id: keep
    component: transform.filter
    mode: transform
    depends_on: [extract]
    config: {where: "amount > 10"}
  - id: write
    component: filesystem.csv_writer
    mode: write
    depends_on: [keep]
    config: {path: out.csv}
"""

CASES = {
    "yaml_syntax": ("steps: [\n  - id: a\n", "YAML syntax error"),
    "top_level_not_mapping": ("- just\n- a list\n", "mapping"),
    "missing_key": (GOOD.replace("name: demo\n", ""), "name"),
    "forbidden_key": (GOOD.replace("name: demo", "name: demo\nversion: 1"), "version"),
    "empty_steps": ('oml_version: "0.2.0"\nname: x\nsteps: []\n', "steps"),
    "duplicate_id": (GOOD.replace("id: keep", "id: extract"), "extract"),
    "unknown_component": (GOOD.replace("transform.filter", "transform.filtre"), "transform.filter"),
    "unknown_dependency": (GOOD.replace("depends_on: [keep]", "depends_on: [kept]"), "kept"),
    "cycle": (GOOD.replace("depends_on: [extract]", "depends_on: [extract, write]"), "->"),
    "unknown_config_key": (
        GOOD.replace("config: {path: out.csv}", "config: {path: out.csv, colour: red}"),
        "colour",
    ),
    "missing_required_config": (GOOD.replace('config: {where: "amount > 10"}', "config: {}"), "where"),
    "wrong_config_type": (
        GOOD.replace("config: {path: out.csv}", "config: {path: out.csv, header: 3}"),
        "header",
    ),
    "bad_filter_expression": (GOOD.replace("amount > 10", "amount >>> 10"), "where"),
    "unresolved_param": (GOOD.replace("path: in.csv", 'path: "${params.source}"'), "source"),
    "unset_env_var": (
        GOOD.replace("path: in.csv", 'path: "${OSIRIS_TEST_SURELY_UNSET}"'),
        "OSIRIS_TEST_SURELY_UNSET",
    ),
    "unknown_connection": (
        GOOD.replace("config: {path: in.csv}", 'config: {path: in.csv, connection: "@mysql.nope"}'),
        "nope",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("command", ["validate", "run"])
def test_invalid_pipeline_exits_2_with_a_located_message(tmp_path: Path, case: str, command: str) -> None:
    text, needle = CASES[case]
    (tmp_path / "p.yaml").write_text(text)
    result = osiris([command, "p.yaml"], tmp_path)
    assert result.code == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    assert needle in result.stderr, result.stderr
    assert result.stderr.startswith("error: p.yaml") or "p.yaml" in result.stderr
    assert not (tmp_path / "run_logs").exists()  # nothing ran


def test_cycle_message_names_the_cycle(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(CASES["cycle"][0])
    result = osiris(["validate", "p.yaml"], tmp_path)
    assert "keep -> write -> keep" in result.stderr or "write -> keep -> write" in result.stderr, (
        result.stderr
    )


def test_json_errors_are_machine_readable(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(CASES["unknown_dependency"][0])
    result = osiris(["validate", "p.yaml", "--json"], tmp_path)
    assert result.code == 2
    body = json.loads(result.stdout)
    assert body["ok"] is False
    assert body["problems"][0]["step"] == "write"


def test_unknown_param_and_profile_on_the_command_line(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(GOOD)
    result = osiris(["validate", "p.yaml", "--param", "nosuch=1"], tmp_path)
    assert result.code == 2 and "nosuch" in result.stderr
    result = osiris(["validate", "p.yaml", "--profile", "prod"], tmp_path)
    assert result.code == 2 and "prod" in result.stderr


def test_missing_pipeline_file_and_bad_config_file(tmp_path: Path) -> None:
    result = osiris(["run", "nope.yaml"], tmp_path)
    assert result.code == 2 and "nope.yaml" in result.stderr
    (tmp_path / "p.yaml").write_text(GOOD)
    (tmp_path / "osiris.yaml").write_text("engine:\n  memory_limit_mb: lots\n")
    result = osiris(["run", "p.yaml"], tmp_path)
    assert result.code == 2 and "engine.memory_limit_mb" in result.stderr
    assert "Traceback" not in result.stderr
    (tmp_path / "osiris.yaml").write_text("engine:\n  flight_compression: gzip\n")
    result = osiris(["run", "p.yaml"], tmp_path)
    assert result.code == 2 and "engine.flight_compression" in result.stderr
    assert "none, lz4, zstd" in result.stderr and "Traceback" not in result.stderr


def test_resume_of_unknown_run(tmp_path: Path) -> None:
    result = osiris(["run", "--resume", "0123456789ab"], tmp_path)
    assert result.code == 2 and "0123456789ab" in result.stderr


def test_secret_never_appears_in_errors_or_manifest(tmp_path: Path) -> None:
    """A connection's password set through the environment: compile succeeds and its manifest does
    not hold the value; a pipeline that routes a secret through a param is refused without echoing it."""
    (tmp_path / "osiris_connections.yaml").write_text(
        "version: 1\nconnections:\n  mysql:\n    primary:\n      host: localhost\n      user: u\n"
        '      password: "${OSIRIS_TEST_PW}"\n'
    )
    text = GOOD.replace(
        "component: filesystem.csv_extractor\n    mode: read\n    config: {path: in.csv}",
        'component: mysql.extractor\n    mode: read\n    config: {connection: "@mysql.primary", table: t}',
    )
    (tmp_path / "p.yaml").write_text(text)
    leaky = text.replace("name: demo", 'name: demo\nparams: {db_password: {default: ""}}')
    (tmp_path / "leaky.yaml").write_text(leaky)
    import os

    os.environ["OSIRIS_TEST_PW"] = "s3cr3t-hunter2"
    try:
        compiled = osiris(["compile", "p.yaml"], tmp_path)
        refused = osiris(["compile", "leaky.yaml", "--param", "db_password=s3cr3t-hunter2"], tmp_path)
    finally:
        del os.environ["OSIRIS_TEST_PW"]
    assert compiled.code == 0, compiled.stderr
    manifest = json.loads(compiled.stdout)
    assert manifest["steps"][0]["config"]["connection"] == "@mysql.primary"
    assert refused.code == 2 and "looks like a secret" in refused.stderr
    for out in (compiled.stdout, compiled.stderr, refused.stdout, refused.stderr):
        assert "s3cr3t-hunter2" not in out


def test_bad_command_line_values_are_refused(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(GOOD)
    unwritable = osiris(["compile", "p.yaml", "--out", "no/such/dir/m.json"], tmp_path)
    assert unwritable.code == 2 and "no/such/dir/m.json" in unwritable.stderr
    for flag in ("--workers", "--memory-limit-mb"):
        result = osiris(["run", "p.yaml", flag, "0"], tmp_path)
        assert result.code == 2 and flag in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run_logs").exists()  # nothing ran


def test_resume_refuses_what_would_change_the_stored_manifest(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(GOOD)
    result = osiris(["run", "p.yaml", "--resume", "0123456789ab", "--param", "x=1"], tmp_path)
    assert result.code == 2 and "PIPELINE, --param" in result.stderr and "Traceback" not in result.stderr


def test_config_keys_accepted_for_osiris_but_ignored_are_named(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(
        GOOD.replace("config: {path: out.csv}", "config: {path: out.csv, chunk_size: 10}")
    )
    result = osiris(["validate", "p.yaml"], tmp_path)
    assert result.code == 0
    assert "note: step 'write': config.chunk_size has no effect here" in result.stderr
    body = json.loads(osiris(["validate", "p.yaml", "--json"], tmp_path).stdout)
    assert body["notes"] == [result.stderr.splitlines()[0].removeprefix("note: ")]


CONNECTIONS = """\
version: 1
connections:
  mysql:
    db:
      host: 127.0.0.1
      port: {port}
      database: shop
      user: etl
      password: "{password}"
"""

SPLIT_COPY = """\
oml_version: "0.2.0"
name: split_copy
steps:
  - id: extract
    component: mysql.extractor
    mode: read
    config: {connection: "@mysql.db", table: orders, partition: {column: id, partitions: 4}}
  - id: load
    component: mysql.writer
    mode: write
    depends_on: [extract]
    config: {connection: "@mysql.db", table: orders_copy, WRITE}
"""


@pytest.mark.parametrize(
    ("write", "field"),
    [("mode: replace", "config.mode"), ("truncate_before: true", "config.truncate_before")],
)
@pytest.mark.parametrize("command", ["validate", "plan", "run"])
def test_replace_after_a_partitioned_read_is_refused_before_anything_runs(
    tmp_path: Path, write: str, field: str, command: str
) -> None:
    (tmp_path / "osiris_connections.yaml").write_text(CONNECTIONS.format(port=3306, password="s3cret"))
    (tmp_path / "p.yaml").write_text(SPLIT_COPY.replace("WRITE", write))
    result = osiris([command, "p.yaml"], tmp_path)
    assert result.code == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: p.yaml: step 'load': field '{field}': "), line
    assert "needs one writer task" in line and "('extract', 4 partitions)" in line
    assert "drop the partition of the upstream read, or use mode: append into an emptied table" in line
    assert not (tmp_path / "run_logs").exists()
    # Appending per partition is valid.
    (tmp_path / "p.yaml").write_text(SPLIT_COPY.replace("WRITE", "mode: append"))
    assert osiris(["plan", "p.yaml"], tmp_path).code == 0


PORT_PIPELINE = """\
oml_version: "0.2.0"
name: port
steps:
  - id: extract
    component: mysql.extractor
    mode: read
    config: {connection: "@mysql.db", table: orders}
  - id: write
    component: filesystem.csv_writer
    mode: write
    depends_on: [extract]
    config: {path: out.csv}
"""


@pytest.mark.parametrize(
    ("port", "env", "shown"),
    [
        ("${MYSQL_PORT}", "abc", "'abc' (from environment variable MYSQL_PORT)"),
        ("${MYSQL_PORT}", "70000", "'70000' (from environment variable MYSQL_PORT)"),
        ("three", "", "'three'"),
    ],
)
@pytest.mark.parametrize("command", ["validate", "run"])
def test_a_bad_port_is_reported_against_the_connection_and_field(
    tmp_path: Path, port: str, env: str, shown: str, command: str
) -> None:
    (tmp_path / "osiris_connections.yaml").write_text(CONNECTIONS.format(port=port, password="s3cret"))
    (tmp_path / "p.yaml").write_text(PORT_PIPELINE)
    proc = subprocess.run(
        [str(BIN / "osiris-flight"), command, "p.yaml"],
        cwd=tmp_path,
        env={**cli_env(), "MYSQL_PORT": env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and "ValueError" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    connections = tmp_path / "osiris_connections.yaml"
    assert line == (
        f"error: {connections}:6: connection '@mysql.db' field 'port' is {shown}, "
        "not a whole number from 1 to 65535"
    )
    assert not (tmp_path / "run_logs").exists()
