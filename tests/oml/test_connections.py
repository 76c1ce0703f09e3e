"""Connections: references checked at compile time, resolved at run time, secrets never shown."""

from __future__ import annotations

from pathlib import Path

import pytest

from osiris_flight.errors import InvalidInput
from osiris_flight.oml.compile import compile_pipeline
from osiris_flight.oml.connections import (
    CONNECTIONS_ENV,
    check_references,
    find_references,
    load_connections,
    locate_connections_file,
    redact,
    resolve_connections,
)
from osiris_flight.redaction import is_secret_key
from tests.oml.helpers import find, problems_of

SECRET = "hunter2-very-secret"

CONNECTIONS = """
version: 1
connections:
  mysql:
    primary:
      host: db1.internal
      port: 3306
      database: shop
      user: etl
      password: "${MYSQL_PASSWORD}"
      default: true
    replica:
      host: "${REPLICA_HOST:-db2.internal}"
      port: 3306
      database: shop
      user: reader
      password: "${MYSQL_PASSWORD}"
  supabase:
    main:
      url: https://example.supabase.co
      service_role_key: "${SUPABASE_KEY}"
    other:
      url: https://other.supabase.co
      service_role_key: literal-key
"""

PIPELINE = """
oml_version: 0.2.0
name: conns
steps:
  - id: users
    component: mysql.extractor
    mode: read
    config: {connection: "@mysql.primary", query: "SELECT * FROM users"}
  - id: orders
    component: mysql.extractor
    mode: read
    config: {connection: "REF", query: "SELECT * FROM orders"}
"""


@pytest.fixture
def conns(write) -> Path:
    return write(CONNECTIONS, "osiris_connections.yaml")


def compile_(write, registry, conns, ref="@mysql.replica", env=None):
    path = write(PIPELINE.replace("REF", ref))
    env = {"MYSQL_PASSWORD": SECRET} if env is None else env
    return compile_pipeline(path, registry, connections_file=conns, environ=env)


def test_find_references(write, registry, conns):
    manifest = compile_(write, registry, conns)
    assert find_references(manifest) == {
        "@mysql.primary": [("users", "config.connection")],
        "@mysql.replica": [("orders", "config.connection")],
    }
    # the manifest keeps the reference, never the resolved connection
    assert manifest.step("users").config["connection"] == "@mysql.primary"
    assert SECRET not in manifest.to_json()


def test_unknown_family_and_alias_name_what_exists(write, registry, conns):
    problems = problems_of(compile_, write, registry, conns, "@mysql.replika")
    problem = find(problems, "unknown connection alias 'replika' in '@mysql.replika'")
    assert (problem.step, problem.field) == ("orders", "config.connection")
    assert "did you mean 'replica'?" in (problem.hint or "") and "primary, replica" in (problem.hint or "")
    problem = find(
        problems_of(compile_, write, registry, conns, "@postgres.main"), "unknown connection family"
    )
    assert "mysql, supabase" in (problem.hint or "")


def test_family_alone_means_the_default_or_the_only_alias(write, registry, conns, tmp_path):
    manifest = compile_(write, registry, conns, "@mysql")
    resolved = resolve_connections(manifest, conns, environ={"MYSQL_PASSWORD": SECRET})
    assert resolved["@mysql"]["host"] == "db1.internal"
    problem = find(problems_of(compile_, write, registry, conns, "@supabase"), "none marked default: true")
    assert "main, other" in (problem.hint or "")
    single = tmp_path / "single.yaml"
    single.write_text("version: 1\nconnections:\n  duckdb:\n    local: {path: ./x.duckdb}\n")
    path = write(PIPELINE.replace("@mysql.primary", "@duckdb").replace("REF", "@duckdb.local"))
    manifest = compile_pipeline(path, registry, connections_file=single, environ={})
    resolved = resolve_connections(manifest, single, environ={})
    assert resolved == {"@duckdb": {"path": "./x.duckdb"}, "@duckdb.local": {"path": "./x.duckdb"}}


def test_unset_variable_names_connection_and_var_never_a_value(write, registry, conns):
    problems = problems_of(compile_, write, registry, conns, "@supabase.main", {"MYSQL_PASSWORD": SECRET})
    problem = find(problems, "connection '@supabase.main'")
    assert "SUPABASE_KEY" in problem.message and "service_role_key" in problem.message
    assert problem.file == str(conns) and problem.line is not None
    for p in problems:
        assert SECRET not in p.render()
    # the default in ${REPLICA_HOST:-...} makes an unset REPLICA_HOST fine
    compile_(write, registry, conns, "@mysql.replica")


def test_resolve_connections_at_run_time(write, registry, conns):
    manifest = compile_(write, registry, conns)
    resolved = resolve_connections(manifest, conns, environ={"MYSQL_PASSWORD": SECRET, "REPLICA_HOST": "r9"})
    assert resolved["@mysql.primary"] == {
        "host": "db1.internal",
        "port": 3306,
        "database": "shop",
        "user": "etl",
        "password": SECRET,
    }
    assert resolved["@mysql.replica"]["host"] == "r9"
    with pytest.raises(InvalidInput) as info:
        resolve_connections(manifest, conns, environ={})
    assert "MYSQL_PASSWORD" in str(info.value)


def test_missing_connections_file(write, registry, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(CONNECTIONS_ENV, raising=False)
    path = write(PIPELINE.replace("REF", "@mysql.primary"))
    problems = problems_of(compile_pipeline, path, registry, environ={})
    problem = find(problems, "no connections file was found")
    assert problem.step == "users" and CONNECTIONS_ENV in (problem.hint or "")
    problems = problems_of(
        compile_pipeline, path, registry, connections_file=tmp_path / "nope.yaml", environ={}
    )
    find(problems, "cannot read connections file")


def test_locate_order(tmp_path):
    here = tmp_path / "cwd"
    elsewhere = tmp_path / "pipelines"
    here.mkdir()
    elsewhere.mkdir()
    assert locate_connections_file(cwd=here, environ={}) is None
    (elsewhere / "osiris_connections.yaml").write_text("version: 1\n")
    found = locate_connections_file(cwd=here, pipeline=elsewhere / "p.yaml", environ={})
    assert found == elsewhere / "osiris_connections.yaml"
    (here / "osiris_connections.yaml").write_text("version: 1\n")
    assert locate_connections_file(cwd=here, environ={}) == here / "osiris_connections.yaml"
    assert locate_connections_file(cwd=here, environ={CONNECTIONS_ENV: "/e.yaml"}) == Path("/e.yaml")
    assert locate_connections_file("x.yaml", cwd=here, environ={CONNECTIONS_ENV: "/e.yaml"}) == Path("x.yaml")


def test_connections_file_errors_never_show_values(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text(
        f"version: 2\nextra: 1\nconnections:\n  mysql:\n"
        f"    a: {{password: {SECRET}, default: {SECRET}}}\n"
        "    b: {default: true}\n    c: {default: true}\n"
    )
    problems = problems_of(load_connections, bad)
    text = "\n".join(p.render() for p in problems)
    assert SECRET not in text
    find(problems, "version 2 is not supported")
    find(problems, "unknown key 'extra'")
    assert find(problems, "'default' of '@mysql.a' must be true or false").line == 5
    find(problems, "marks 2 aliases default: true")
    bad.write_text(f"version: 1\nconnections:\n  mysql:\n    a: {{password: {SECRET}, host: [\n")
    [syntax] = problems_of(load_connections, bad)
    assert "YAML syntax error" in syntax.message and SECRET not in syntax.render()


def test_redact():
    conn = {
        "host": "db",
        "password": SECRET,
        "api_key": "k",
        "service_role_key": "s",
        "primary_key": "id",
        "url": f"mysql://etl:{SECRET}@db:3306/shop",
        "nested": {"token": "t", "user": "u"},
    }
    shown = redact(conn)
    assert shown["host"] == "db" and shown["primary_key"] == "id" and shown["nested"]["user"] == "u"
    assert (
        shown["password"]
        == shown["api_key"]
        == shown["service_role_key"]
        == shown["nested"]["token"]
        == "***"
    )
    assert shown["url"] == "mysql://etl:***@db:3306/shop"
    assert SECRET not in repr(shown)
    assert (
        is_secret_key("MYSQL_PASSWORD") and is_secret_key("key_file") and not is_secret_key("partition_key")
    )


def test_check_references_raises_once_with_every_problem(write, registry, conns):
    manifest = compile_(write, registry, conns)
    check_references(manifest, conns, environ={"MYSQL_PASSWORD": SECRET})
    with pytest.raises(InvalidInput) as info:
        check_references(manifest, conns, environ={})
    assert len(info.value.problems) == 2  # primary and replica both need MYSQL_PASSWORD
    assert SECRET not in str(info.value)


def test_version_1_0_as_osiris_init_writes_it(tmp_path):
    """``osiris init`` writes ``version: "1.0"``; Osiris's tests write ``version: 1``: both load. A
    version that is not 1 is still refused, naming its line."""
    for version in ('"1.0"', "1.0", "1", '"1"'):
        path = tmp_path / "c.yaml"
        path.write_text(
            f"version: {version}\nconnections:\n  duckdb:\n    memory: {{database: ':memory:'}}\n"
        )
        assert load_connections(path).aliases("duckdb") == ["memory"]
    for version in ('"2.0"', "true", "1.1"):
        path.write_text(f"version: {version}\nconnections: {{}}\n")
        problem = find(problems_of(load_connections, path), "is not supported")
        assert problem.line == 1 and '"1.0"' in (problem.hint or "")


def test_osiris_lookup_rules_osiris_home_and_an_alias_named_default(tmp_path):
    """Osiris looks for the file in ``$OSIRIS_HOME`` first, and ``@family`` without a ``default:
    true`` alias means the alias named ``default``."""
    home, here = tmp_path / "home", tmp_path / "here"
    home.mkdir()
    here.mkdir()
    (here / "osiris_connections.yaml").write_text("version: 1\n")
    assert (
        locate_connections_file(cwd=here, environ={"OSIRIS_HOME": str(home)})
        == here / "osiris_connections.yaml"
    )
    (home / "osiris_connections.yaml").write_text(
        'version: "1.0"\nconnections:\n  mysql:\n    default: {host: a}\n    other: {host: b}\n'
    )
    found = locate_connections_file(cwd=here, environ={"OSIRIS_HOME": str(home)})
    assert found == home / "osiris_connections.yaml"
    assert locate_connections_file(
        cwd=here, environ={"OSIRIS_HOME": str(home), CONNECTIONS_ENV: "/e.yaml"}
    ) == Path("/e.yaml")
    conns = load_connections(found)
    assert conns.default_alias("mysql") == "default"
    (home / "osiris_connections.yaml").write_text(
        "version: 1\nconnections:\n  mysql:\n    default: {host: a}\n    other: {host: b, default: true}\n"
    )
    assert load_connections(home / "osiris_connections.yaml").default_alias("mysql") == "other"
