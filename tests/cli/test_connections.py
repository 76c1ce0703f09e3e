"""`osiris-flight connections list | doctor` through the real CLI against the real MariaDB: a working
connection, wrong credentials, an unreachable server, unknown names, and never a secret in any output."""

from __future__ import annotations

from pathlib import Path

from tests.cluster.conftest import osiris
from tests.mysql.conftest import MySQLServer

WRONG_PASSWORD = "Wr0ng-Pa55word-7f3a"
LIST_SECRET = "Sup3r-Secret-Value-91"
API_KEY = "sk_live_0123456789abcdef"


def connections_file(directory: Path, server: MySQLServer) -> Path:
    path = directory / "osiris_connections.yaml"
    path.write_text(
        "version: 1\n"
        "connections:\n"
        "  mysql:\n"
        f"    test: {{host: {server.host}, port: {server.port}, database: {server.database}, "
        f'user: {server.user}, password: "{server.password}", default: true}}\n'
        f"    wrong: {{host: {server.host}, port: {server.port}, database: {server.database}, "
        f'user: {server.user}, password: "${{OSIRIS_TEST_UNSET_PW:-{WRONG_PASSWORD}}}"}}\n'
        f'    down: {{host: 127.0.0.1, port: 1, user: etl, password: "{LIST_SECRET}"}}\n'
        f'    unset: {{host: {server.host}, user: etl, password: "${{OSIRIS_TEST_SURELY_UNSET}}"}}\n'
        "  supabase:\n"
        f'    main: {{url: "https://etl:{LIST_SECRET}@example.supabase.co", key: "{API_KEY}"}}\n'
    )
    return path


def test_doctor_connects_runs_select_1_and_reports_latency(tmp_path: Path, mysql_server: MySQLServer) -> None:
    connections_file(tmp_path, mysql_server)
    result = osiris(["connections", "doctor", "@mysql.test", "--json"], tmp_path)
    assert result.code == 0, result.stdout + result.stderr
    report = result.json()
    assert report["ok"] is True
    (check,) = report["results"]
    assert (check["ref"], check["status"]) == ("@mysql.test", "ok")
    assert check["latency_ms"] > 0
    assert check["server"]
    text = osiris(["connections", "doctor", "@mysql"], tmp_path)  # @family means its default alias
    assert text.code == 0
    assert text.stdout.startswith("ok ") and "@mysql.test" in text.stdout and " ms " in text.stdout


def test_wrong_password_fails_with_the_servers_error_and_no_secret(
    tmp_path: Path, mysql_server: MySQLServer
) -> None:
    connections_file(tmp_path, mysql_server)
    for args in (["--json"], []):
        result = osiris(["connections", "doctor", "@mysql.wrong", "@mysql.test", *args], tmp_path)
        assert result.code == 1
        output = result.stdout + result.stderr
        assert WRONG_PASSWORD not in output
        assert "Access denied" in output and "1045" in output
    results = {c["ref"]: c for c in osiris(["connections", "doctor", "--json"], tmp_path).json()["results"]}
    assert results["@mysql.wrong"]["status"] == "failed"
    assert results["@mysql.wrong"]["category"] == "auth"
    assert results["@mysql.test"]["status"] == "ok"
    assert results["@mysql.down"]["status"] == "failed" and results["@mysql.down"]["category"] == "network"
    assert results["@mysql.unset"]["status"] == "error"
    assert "OSIRIS_TEST_SURELY_UNSET" in results["@mysql.unset"]["message"]
    assert results["@supabase.main"]["status"] == "skipped"


def test_list_shows_aliases_and_defaults_with_secrets_redacted(
    tmp_path: Path, mysql_server: MySQLServer
) -> None:
    connections_file(tmp_path, mysql_server)
    text = osiris(["connections", "list"], tmp_path)
    assert text.code == 0, text.stderr
    as_json = osiris(["connections", "list", "--json"], tmp_path)
    assert as_json.code == 0
    for output in (text.stdout, as_json.stdout):
        for secret in (LIST_SECRET, API_KEY, WRONG_PASSWORD):
            assert secret not in output
        assert "***" in output
    assert "@mysql.test (default)" in text.stdout
    assert "OSIRIS_TEST_SURELY_UNSET NOT SET" in text.stdout
    listed = {c["ref"]: c for c in as_json.json()["connections"]}
    assert set(listed) == {"@mysql.test", "@mysql.wrong", "@mysql.down", "@mysql.unset", "@supabase.main"}
    assert listed["@mysql.test"]["default"] is True and listed["@mysql.wrong"]["default"] is False
    assert listed["@mysql.test"]["fields"]["database"] == mysql_server.database
    assert listed["@mysql.down"]["fields"]["password"] == "***"
    assert listed["@supabase.main"]["fields"] == {"url": "https://etl:***@example.supabase.co", "key": "***"}
    assert listed["@mysql.unset"]["env_vars"] == {"OSIRIS_TEST_SURELY_UNSET": False}


def test_unknown_names_and_a_missing_file_are_invalid_input(
    tmp_path: Path, mysql_server: MySQLServer
) -> None:
    missing = osiris(["connections", "doctor"], tmp_path)
    assert missing.code == 2 and "no connections file found" in missing.stderr
    connections_file(tmp_path, mysql_server)
    result = osiris(["connections", "doctor", "@mysql.tset", "@postgres.main"], tmp_path)
    assert result.code == 2
    assert "unknown connection alias 'tset'" in result.stderr and "did you mean 'test'?" in result.stderr
    assert "unknown connection family 'postgres'" in result.stderr
    as_json = osiris(["connections", "doctor", "--family", "mysql", "--alias", "nope", "--json"], tmp_path)
    assert as_json.code == 2 and as_json.json()["ok"] is False
    other = tmp_path / "elsewhere.yaml"
    (tmp_path / "osiris_connections.yaml").rename(other)
    moved = osiris(
        ["connections", "doctor", "--connections", str(other), "--family", "mysql", "--alias", "test"],
        tmp_path,
    )
    assert moved.code == 0, moved.stdout + moved.stderr


def test_doctor_names_the_field_of_a_bad_port(tmp_path: Path) -> None:
    (tmp_path / "osiris_connections.yaml").write_text(
        "version: 1\nconnections:\n  mysql:\n"
        '    db: {host: 127.0.0.1, port: "${OSIRIS_TEST_PORT:-abc}", user: etl}\n'
    )
    result = osiris(["connections", "doctor", "@mysql.db", "--json"], tmp_path)
    assert result.code == 1 and "Traceback" not in result.stderr
    (check,) = result.json()["results"]
    assert (check["ref"], check["status"], check["category"]) == ("@mysql.db", "error", "config")
    assert check["message"] == "field 'port' is 'abc', not a whole number from 1 to 65535"
