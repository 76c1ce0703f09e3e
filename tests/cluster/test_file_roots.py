"""What a client key can make a worker read or write, against live CURVE daemons: file steps stay
inside the worker's ``engine.file_roots`` (symlinks and ``..`` resolved first), duckdb.processor
reaches no file at all, and no error the client sees carries a file's content."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from osiris_flight.cluster.client import Client
from osiris_flight.cluster.curve import CurveKeys
from osiris_flight.redaction import MAX_ERROR_CHARS
from tests.cluster.conftest import BIN, cli_env, events, latest_run_dir, osiris, read_csv, start_coordinator

COPY = """
oml_version: "0.2.0"
name: copy
steps:
  - id: read
    component: filesystem.csv_extractor
    mode: read
    config: {path: "SOURCE"}
  - id: write
    component: filesystem.csv_writer
    mode: write
    depends_on: [read]
    config: {path: "TARGET"}
"""

SQL = """
oml_version: "0.2.0"
name: sql
steps:
  - id: peek
    component: duckdb.processor
    mode: transform
    config:
      query: "QUERY"
  - id: write
    component: filesystem.csv_writer
    mode: write
    depends_on: [peek]
    config: {path: "TARGET"}
"""


def test_a_client_key_reaches_only_the_workers_file_roots(tmp_path: Path, daemons: list) -> None:
    keys = tmp_path / "keys"
    assert osiris(["keys", "cluster", str(keys)], tmp_path).code == 0
    data = tmp_path / "data"
    data.mkdir()
    (data / "in.csv").write_text("id,name\n1,a\n2,b\n")
    (data / "link.csv").symlink_to("/etc/passwd")
    (data / "keylink.csv").symlink_to(keys / "worker.key_secret")
    proc, address = start_coordinator(
        tmp_path,
        "--curve-secret-key",
        str(keys / "coordinator.key_secret"),
        "--curve-authorized-keys",
        str(keys / "authorized"),
    )
    daemons.append(proc)
    worker_dir = tmp_path / "worker"
    worker_dir.mkdir()
    daemons.append(
        subprocess.Popen(
            [
                str(BIN / "osiris-worker"),
                "--coordinator",
                address,
                "--worker-id",
                "w0",
                "--curve-secret-key",
                str(keys / "worker.key_secret"),
                "--curve-server-key",
                str(keys / "coordinator.key"),
                "--file-root",
                str(data),
            ],
            cwd=worker_dir,
            env=cli_env(),
            text=True,
        )
    )
    client_keys = CurveKeys(str(keys / "client.key_secret"), server_key=str(keys / "coordinator.key"))
    with Client(address, curve=client_keys) as client:
        client.wait_for_workers(1, timeout_s=60)
    (tmp_path / "osiris.yaml").write_text(
        f"cluster:\n  coordinator: {address}\n"
        f"  curve_secret_key: {keys / 'client.key_secret'}\n"
        f"  curve_server_key: {keys / 'coordinator.key'}\n"
    )
    secrets = [Path("/etc/passwd").read_text().splitlines()[0], (keys / "worker.key_secret").read_text()]
    secrets += [
        line for line in (keys / "worker.key_secret").read_text().splitlines() if "secret-key" in line
    ]
    secrets.append(f"{os.environ.get('PATH', 'no-path')}")

    def run(pipeline: str) -> tuple[int, str, dict]:
        """The run's exit code, all its client saw and its run directory holds, its task failure."""
        (tmp_path / "pipeline.yaml").write_text(pipeline)
        result = osiris(["run", "pipeline.yaml", "--cluster", address, "--json"], tmp_path)
        assert result.code != 0 or result.json()["status"] == "success"
        said = result.stdout + result.stderr
        run_dir = latest_run_dir(tmp_path)
        assert run_dir is not None
        said += (run_dir / "events.jsonl").read_text()
        for secret in secrets:
            assert secret.strip() not in said, said
        failed = next((e for e in events(run_dir) if e["event"] == "task_failed"), {})
        return result.code, said, failed

    def copy(source: str, target: str) -> str:
        return COPY.replace("SOURCE", source).replace("TARGET", target)

    outside = tmp_path / "outside"
    escapes = {
        "read": [
            "/etc/passwd",
            str(data / "link.csv"),
            str(data / "keylink.csv"),
            f"{data}/../keys/worker.key_secret",
            str(keys / "worker.key_secret"),
        ],
        "write": [str(outside / "x.csv"), f"{data}/../outside/y.csv", "relative.csv"],
    }
    for step, paths in escapes.items():
        for path in paths:
            pipeline = (
                copy(path, str(data / "out.csv")) if step == "read" else copy(str(data / "in.csv"), path)
            )
            code, said, failed = run(pipeline)
            assert code == 1, said
            assert failed["step_id"] == step and not failed["transient"], failed
            error = failed["error"]
            assert error.startswith(f"step '{step}': config.path: "), error
            assert (
                f"is outside the directories this worker may read and write (engine.file_roots: {data})"
                in error
            )
    assert not outside.exists() and not (worker_dir / "relative.csv").exists()
    assert not (data / "out.csv").exists()

    # SQL reaches no file, whatever the roots: the worker's key, its environment, a file in the root.
    for target in ("/proc/self/environ", str(keys / "worker.key_secret"), str(data / "in.csv")):
        for query in (
            f"SELECT * FROM read_blob('{target}')",
            f"SELECT CAST(content AS INT) FROM read_text('{target}')",
        ):
            code, said, failed = run(SQL.replace("QUERY", query).replace("TARGET", str(data / "sql.csv")))
            assert code == 1 and failed["step_id"] == "peek", said
            assert "Permission Error: Cannot access file" in failed["error"], failed
    assert not (data / "sql.csv").exists()

    # Inside the root, the pipeline runs.
    code, said, _ = run(copy(str(data / "in.csv"), str(data / "copied" / "out.csv")))
    assert code == 0, said
    assert read_csv(data / "copied" / "out.csv").to_pylist() == [
        {"id": 1, "name": "a"},
        {"id": 2, "name": "b"},
    ]


def test_the_embedded_cluster_takes_file_roots_from_osiris_yaml(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "in.csv").write_text("id\n1\n")
    (tmp_path / "osiris.yaml").write_text("engine:\n  workers: 1\n  file_roots: [data]\n")
    (tmp_path / "pipeline.yaml").write_text(
        COPY.replace("SOURCE", "/etc/passwd").replace("TARGET", "data/o.csv")
    )
    result = osiris(["run", "pipeline.yaml", "--json"], tmp_path)
    assert result.code == 1
    failed = next(e for e in events(latest_run_dir(tmp_path)) if e["event"] == "task_failed")  # type: ignore[arg-type]
    assert failed["error"] == (
        "step 'read': config.path: /etc/passwd is outside the directories this worker may read and write "
        f"(engine.file_roots: {data})"
    )
    (tmp_path / "pipeline.yaml").write_text(
        COPY.replace("SOURCE", "data/in.csv").replace("TARGET", "data/o.csv")
    )
    result = osiris(["run", "pipeline.yaml", "--json"], tmp_path)
    assert result.code == 0, result.stderr
    assert read_csv(data / "o.csv").num_rows == 1


def test_bad_file_roots_stop_a_worker_at_start_with_exit_2(tmp_path: Path) -> None:
    def worker(*flags: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "osiris-worker"), "--coordinator", "tcp://127.0.0.1:9", *flags],
            cwd=tmp_path,
            env=cli_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )

    missing = worker("--file-root", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert f"error: --file-root: {tmp_path / 'nope'} is not a directory" in missing.stderr
    (tmp_path / "osiris.yaml").write_text("engine:\n  file_roots: /srv/data\n")
    mistyped = worker()
    assert mistyped.returncode == 2 and "Traceback" not in mistyped.stderr
    assert "engine.file_roots" in mistyped.stderr and "expected a list of paths" in mistyped.stderr


def test_a_task_error_reaches_the_client_capped(tmp_path: Path) -> None:
    """A component's message may quote input (here DuckDB's own error text, 50,000 characters): the
    worker reports at most MAX_ERROR_CHARS of it, to the client and the run's events."""
    query = "SELECT error(repeat('row-value ', 5000)) AS x"
    (tmp_path / "pipeline.yaml").write_text(SQL.replace("QUERY", query).replace("TARGET", "o.csv"))
    (tmp_path / "osiris.yaml").write_text("engine:\n  workers: 1\n")
    result = osiris(["run", "pipeline.yaml", "--json"], tmp_path)
    assert result.code == 1
    failed = next(e for e in events(latest_run_dir(tmp_path)) if e["event"] == "task_failed")  # type: ignore[arg-type]
    error = failed["error"]
    assert error.startswith("step 'peek': DuckDB query failed: Invalid Input Error: row-value row-value")
    assert len(error) == MAX_ERROR_CHARS and error.endswith("…(truncated)"), len(error)
    assert result.json()["error"] == error
