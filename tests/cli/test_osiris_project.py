"""An Osiris project directory as ``osiris init`` writes it, used as it is.

The project (``osiris.yaml`` and ``osiris_connections.example.yaml``) and the example pipelines are
read from ../shared/osiris-reference/ (unmodified files of the Osiris repository) and copied into
tmp_path at test time: nothing of them is kept in this repository. The one edit a user makes is the
one Osiris asks for: copy the connections example to ``osiris_connections.yaml`` and point it at a
database (here: name the MySQL alias the example pipeline uses, and set the variables it reads).
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from osiris_flight.cluster.client import Client
from tests.cluster.conftest import BIN, Result, assert_no_orphans, cli_env, osiris, start_coordinator
from tests.mysql.conftest import MySQLServer
from tests.osiris_reference import osiris_reference

pytestmark = pytest.mark.cluster

REFERENCE = osiris_reference()
PROJECT = REFERENCE / "project"
EXAMPLES = REFERENCE / "examples"
CSV_EXAMPLE = "mysql_to_local_csv_all_tables.yaml"
SUPABASE_EXAMPLE = "mysql_duckdb_supabase_demo.yaml"
# The Osiris keys of the reference osiris.yaml that have no effect here (osiris_settings.py).
IGNORED = [
    "aiop",
    "discovery",
    "filesystem.aiop_dir",
    "filesystem.artifacts",
    "filesystem.build_dir",
    "filesystem.cache_dir",
    "filesystem.index_dir",
    "filesystem.mcp_logs_dir",
    "filesystem.naming",
    "filesystem.outputs",
    "filesystem.pipelines_dir",
    "filesystem.profiles",
    "filesystem.retention",
    "filesystem.sessions_dir",
    "ids",
    "llm",
    "logging.cli_flags",
    "logging.env_overrides",
    "logging.events",
    "logging.metrics",
    "logging.retention",
    "pipeline",
    "validate",
    "validation",
]
MOVIES = {
    "directors": (
        "CREATE TABLE directors (director_id INT PRIMARY KEY, name VARCHAR(100) NOT NULL, born DATE NULL)",
        [(1, "Agnès Varda", "1928-05-30"), (2, "Bong Joon-ho", "1969-09-14"), (3, "Anonymous", None)],
    ),
    "movies": (
        "CREATE TABLE movies (movie_id INT PRIMARY KEY, title VARCHAR(200) NOT NULL, director_id INT, "
        "budget DECIMAL(12,2) NULL)",
        [
            (10, "Cléo from 5 to 7", 1, "64000.00"),
            (11, "Parasite", 2, "11400000.50"),
            (12, "Untitled", 3, None),
        ],
    ),
    "actors": (
        "CREATE TABLE actors (actor_id INT PRIMARY KEY, name VARCHAR(100) NOT NULL)",
        [(100, "Corinne Marchand"), (101, "Song Kang-ho"), (102, 'Jane "JD" Doe, Jr.')],
    ),
    "movie_actors": (
        "CREATE TABLE movie_actors (movie_id INT, actor_id INT, PRIMARY KEY (movie_id, actor_id))",
        [(10, 100), (11, 101), (12, 102), (11, 102)],
    ),
    "reviews": (
        "CREATE TABLE reviews (review_id INT PRIMARY KEY, movie_id INT, rating TINYINT, body TEXT NULL)",
        [(1, 10, 5, "un chef-d'œuvre"), (2, 11, 5, "line one\nline two"), (3, 12, 1, None)],
    ),
}


@pytest.fixture(scope="module")
def movies(mysql_server: MySQLServer) -> MySQLServer:
    """The tables the example pipeline reads (actors, directors, movie_actors, movies, reviews)."""
    for table, (ddl, rows) in MOVIES.items():
        mysql_server.execute(f"DROP TABLE IF EXISTS {table}")
        mysql_server.execute(ddl)
        marks = ", ".join(["%s"] * len(rows[0]))
        conn = mysql_server.connect()
        try:
            with conn.cursor() as cur:
                cur.executemany(f"INSERT INTO {table} VALUES ({marks})", rows)
        finally:
            conn.close()
    return mysql_server


def make_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: MySQLServer | None = None) -> Path:
    """A copy of the project ``osiris init`` writes, with its connections example put in place as
    Osiris's comment says; the example's mysql alias is named as the example pipelines name it."""
    project = tmp_path / "project"
    shutil.copytree(PROJECT, project)
    for path in [project, *project.iterdir()]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    example = (project / "osiris_connections.example.yaml").read_text(encoding="utf-8")
    assert 'version: "1.0"' in example and "  mysql:\n    primary:\n" in example
    (project / "osiris_connections.yaml").write_text(
        example.replace("  mysql:\n    primary:\n", "  mysql:\n    db_movies:\n"), encoding="utf-8"
    )
    if server is not None:
        monkeypatch.setenv("MYSQL_HOST", server.host)
        monkeypatch.setenv("MYSQL_USER", server.user)
        monkeypatch.setenv("MYSQL_PASSWORD", server.password)
        monkeypatch.setenv("MYSQL_DATABASE", server.database)
    return project


def add_pipeline(project: Path, name: str) -> str:
    (project / "pipelines").mkdir(exist_ok=True)
    shutil.copyfile(EXAMPLES / name, project / "pipelines" / name)
    return f"pipelines/{name}"


def example_line(path: Path, text: str) -> int:
    [line] = [n for n, content in enumerate(path.read_text().splitlines(), 1) if text in content]
    return line


def warnings(result: Result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("warning:")]


def test_the_osiris_example_runs_in_an_osiris_project_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, movies: MySQLServer
) -> None:
    project = make_project(tmp_path, monkeypatch, movies)
    pipeline = add_pipeline(project, CSV_EXAMPLE)

    checked = osiris(["validate", pipeline], project)
    assert checked.code == 0, checked.stderr
    assert "valid (10 steps" in checked.stdout
    notes = [line for line in checked.stderr.splitlines() if line.startswith("note: osiris.yaml: ")]
    assert [line.split()[2] for line in notes] == IGNORED
    assert "note: osiris.yaml: aiop has no effect here: AI operation packs are not written" in notes
    as_json = osiris(["validate", pipeline, "--json"], project)
    assert as_json.code == 0 and len(as_json.json()["notes"]) == len(IGNORED)

    result = osiris(["run", pipeline, "--workers", "2", "--json"], project, timeout=300)
    assert result.code == 0, result.stdout + result.stderr
    [warning] = warnings(result)
    assert warning.startswith("warning: osiris.yaml: these Osiris settings have no effect here: ")
    assert all(key in warning for key in IGNORED)
    # logging.level: INFO reaches the embedded cluster's processes (their default is warning).
    assert "INFO osiris_flight.worker" in result.stderr
    run_id = result.json()["run_id"]
    # filesystem.run_logs_dir: run_logs, under the project (base_path is empty: the directory run
    # was started in).
    [run_dir] = (project / "run_logs").glob(f"mysql-to-local-csv-all-tables/*_{run_id}")
    assert json.loads((run_dir / "status.json").read_text())["status"] == "success"
    for table, (_, rows) in MOVIES.items():
        with (project / "output" / f"{table}.csv").open(encoding="utf-8", newline="") as handle:
            lines = list(csv.reader(handle))
        assert len(lines) == 1 + len(rows), table
        assert lines[0] == sorted(lines[0]), table  # Osiris's writer sorts the columns
    with (project / "output" / "reviews.csv").open(encoding="utf-8", newline="") as handle:
        reviews = {row["review_id"]: row for row in csv.DictReader(handle)}
    assert reviews["2"]["body"] == "line one\nline two" and reviews["3"]["body"] == ""
    assert_no_orphans(project)

    listed = osiris(["runs", "--json"], project)
    assert listed.code == 0 and [r["run_id"] for r in listed.json()] == [run_id]
    assert len(warnings(listed)) == 1


def test_the_connections_file_osiris_init_writes_resolves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``version: "1.0"``, aliases marked ``default: true``, Osiris's extra fields (pool_size,
    timeout, description) and variables that only the connections in use need."""
    project = make_project(tmp_path, monkeypatch)
    shutil.copyfile(PROJECT / "osiris_connections.example.yaml", project / "osiris_connections.yaml")
    monkeypatch.setenv("MYSQL_HOST", "db.example")
    monkeypatch.setenv("MYSQL_USER", "etl")
    monkeypatch.setenv("MYSQL_PASSWORD", "s3cret-pw")
    monkeypatch.delenv("MYSQL_DATABASE", raising=False)
    listed = osiris(["connections", "list", "--json"], project)
    assert listed.code == 0, listed.stderr
    refs = {c["ref"]: c for c in listed.json()["connections"]}
    assert set(refs) == {
        "@mysql.primary",
        "@supabase.primary",
        "@duckdb.memory",
        "@filesystem.local",
        "@filesystem.exports",
    }
    assert refs["@mysql.primary"]["default"] and not refs["@filesystem.exports"]["default"]
    assert "s3cret-pw" not in listed.stdout
    (project / "p.yaml").write_text(
        'oml_version: "0.1.0"\nname: p\nsteps:\n- id: read\n  component: mysql.extractor\n  mode: read\n'
        '  config: {connection: "@mysql", table: t}\n'
    )
    missing = osiris(["validate", "p.yaml"], project)
    assert missing.code == 2
    assert "connection '@mysql' uses environment variable 'MYSQL_DATABASE'" in missing.stderr
    line = example_line(project / "osiris_connections.yaml", "database: ${MYSQL_DATABASE}")
    assert f"osiris_connections.yaml:{line}:" in missing.stderr
    monkeypatch.setenv("MYSQL_DATABASE", "shop")
    ok = osiris(["validate", "p.yaml"], project)
    assert ok.code == 0, ok.stderr


def test_a_key_neither_osiris_nor_ours_is_still_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = make_project(tmp_path, monkeypatch)
    pipeline = add_pipeline(project, CSV_EXAMPLE)
    config = project / "osiris.yaml"
    text = config.read_text(encoding="utf-8")
    line = text.count("\n") + 1
    config.write_text(text + "engnie:\n  workers: 2\n", encoding="utf-8")
    result = osiris(["validate", pipeline], project)
    assert result.code == 2
    assert f"error: osiris.yaml:{line}: field 'engnie': unknown key (did you mean 'engine'?" in result.stderr
    assert "Traceback" not in result.stderr
    config.write_text(text + "engine:\n  workers: 2\n  slots: 4\n", encoding="utf-8")
    result = osiris(["run", pipeline], project)
    assert result.code == 2
    assert f"error: osiris.yaml:{line + 2}: field 'engine.slots': unknown key" in result.stderr
    config.write_text(text.replace("level: INFO", "level: LOUD"), encoding="utf-8")
    result = osiris(["validate", pipeline], project)
    assert result.code == 2 and "field 'logging.level': invalid log level 'LOUD'" in result.stderr


def test_observability_is_accepted_and_named_as_having_no_effect(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The M3 milestone's ``observability:`` section (issue 10 implements it) is accepted, and every
    command says it has no effect yet; this engine's own keys work next to Osiris's."""
    project = make_project(tmp_path, monkeypatch)
    config = project / "osiris.yaml"
    config.write_text(
        config.read_text(encoding="utf-8")
        + "observability:\n  metrics:\n    - type: prometheus\n      config: {push_gateway: 'http://p:9091'}\n"
        + "  tracing: {type: opentelemetry, config: {endpoint: 'http://otel:4317'}}\n"
        + "engine:\n  workers: 1\nrun_logs: run_logs\n",
        encoding="utf-8",
    )
    result = osiris(["runs"], project)
    assert result.code == 0, result.stderr
    [warning] = warnings(result)
    assert "observability (not implemented yet)" in warning
    (project / "p.yaml").write_text(
        'oml_version: "0.1.0"\nname: p\nsteps:\n- id: read\n  component: filesystem.csv_extractor\n'
        "  mode: read\n  config: {path: in.csv}\n"
    )
    checked = osiris(["validate", "p.yaml"], project)
    assert checked.code == 0, checked.stderr
    assert "note: osiris.yaml: observability has no effect here: not implemented yet" in checked.stderr


def test_base_path_is_where_relative_paths_and_run_logs_go(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """filesystem.base_path set: relative pipeline paths and run_logs_dir resolve under it, whatever
    the working directory (Osiris's FilesystemContract)."""
    project = make_project(tmp_path, monkeypatch)
    base = tmp_path / "srv"
    (base / "data").mkdir(parents=True)
    (base / "data" / "in.csv").write_text("id,name\n2,b\n1,a\n", encoding="utf-8")
    config = project / "osiris.yaml"
    config.write_text(
        config.read_text(encoding="utf-8")
        .replace('base_path: ""', f'base_path: "{base}"')
        .replace('run_logs_dir: "run_logs"', 'run_logs_dir: "logs/runs"'),
        encoding="utf-8",
    )
    (project / "p.yaml").write_text(
        'oml_version: "0.1.0"\nname: copy\nsteps:\n'
        "- id: read\n  component: filesystem.csv_extractor\n  mode: read\n  config: {path: data/in.csv}\n"
        "- id: write\n  component: filesystem.csv_writer\n  mode: write\n  needs: [read]\n"
        "  config: {path: out/copy.csv}\n"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = osiris(
        ["run", str(project / "p.yaml"), "--config", str(config), "--workers", "1", "--json"], elsewhere
    )
    assert result.code == 0, result.stdout + result.stderr
    assert (base / "out" / "copy.csv").read_text(encoding="utf-8").splitlines()[1:] == ['2,"b"', '1,"a"']
    assert list((base / "logs" / "runs" / "copy").iterdir())
    assert not (elsewhere / "out").exists() and not (elsewhere / "run_logs").exists()
    assert_no_orphans(elsewhere)


def test_an_example_needing_a_hosted_service_fails_validation_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, movies: MySQLServer
) -> None:
    project = make_project(tmp_path, monkeypatch, movies)
    pipeline = add_pipeline(project, SUPABASE_EXAMPLE)
    result = osiris(["validate", pipeline], project)
    assert result.code == 2
    assert (
        f"error: {pipeline}:71: step 'write-director-stats': field 'component': component 'supabase.writer' "
        "is not available here: it is an Osiris component that needs Supabase (a hosted service)"
    ) in result.stderr
    assert "Traceback" not in result.stderr
    ran = osiris(["run", pipeline], project)
    assert ran.code == 2 and "component 'supabase.writer' is not available here" in ran.stderr
    assert not (project / "run_logs").exists()
    others = sorted(p.name for p in EXAMPLES.glob("*.yaml") if p.name not in (CSV_EXAMPLE, SUPABASE_EXAMPLE))
    assert len(others) == 3
    for name in others:
        result = osiris(["validate", add_pipeline(project, name)], project)
        assert result.code == 2 and "'supabase.writer' is not available here" in result.stderr, name


def test_daemons_in_an_osiris_project_take_its_log_level_and_base_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``osiris-coordinator`` and ``osiris-worker`` started with the project's osiris.yaml: they log
    at its logging.level (no warning of their own), and the worker resolves relative paths under
    its filesystem.base_path."""
    project = make_project(tmp_path, monkeypatch)
    base = tmp_path / "srv"
    (base / "data").mkdir(parents=True)
    (base / "data" / "in.csv").write_text("id\n1\n2\n", encoding="utf-8")
    config = project / "osiris.yaml"
    config.write_text(
        config.read_text(encoding="utf-8").replace('base_path: ""', f'base_path: "{base}"'), encoding="utf-8"
    )
    coordinator, address = start_coordinator(project, "--config", "osiris.yaml")
    worker = subprocess.Popen(
        [
            str(BIN / "osiris-worker"),
            "--config",
            "osiris.yaml",
            "--coordinator",
            address,
            "--worker-id",
            "w1",
        ],
        cwd=project,
        env=cli_env(),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        with Client(address) as client:
            client.wait_for_workers(1, timeout_s=60)
        (project / "p.yaml").write_text(
            'oml_version: "0.1.0"\nname: copy\nsteps:\n'
            "- id: read\n  component: filesystem.csv_extractor\n  mode: read\n  config: {path: data/in.csv}\n"
            "- id: write\n  component: filesystem.csv_writer\n  mode: write\n  needs: [read]\n"
            "  config: {path: out/copy.csv}\n"
        )
        result = osiris(["run", "p.yaml", "--cluster", address, "--json"], project)
        assert result.code == 0, result.stdout + result.stderr
        assert (base / "out" / "copy.csv").read_text(encoding="utf-8").splitlines() == ['"id"', "1", "2"]
    finally:
        worker.terminate()
        coordinator.terminate()
        _, stderr = worker.communicate(timeout=30)
        coordinator.wait(timeout=30)
    assert "INFO osiris_flight.worker" in stderr and "joined" in stderr
    assert "warning:" not in stderr and "has no effect" not in stderr
