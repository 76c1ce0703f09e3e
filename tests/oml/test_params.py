"""Params (defaults < profile < --param, typed) and ${VAR} substitution into step configs."""

from __future__ import annotations

import pytest

from osiris_flight.errors import InvalidInput
from osiris_flight.oml.compile import compile_pipeline
from osiris_flight.oml.connections import resolve_runtime_config
from osiris_flight.oml.interpolate import substitute
from osiris_flight.oml.params import coerce, parse_param_args
from tests.oml.helpers import find, problems_of

PIPELINE = """
oml_version: 0.2.0
name: params_demo
params:
  n: 5
  ratio: 0.5
  header: {default: true, type: bool}
  out: {default: out.csv, description: where to write}
  day: {type: string}
profiles:
  prod: {n: 500, out: prod.csv}
steps:
  - id: extract
    component: test.reader
    mode: read
    config: {path: "in/${params.day}.csv", batch_size: "${params.n}"}
  - id: write
    component: test.writer
    mode: write
    depends_on: [extract]
    config:
      path: "${OUT_DIR:-/tmp/out}/${params.out}"
      header: "${params.header}"
      batch_size: "${params.n}"
"""


def compile_(path, registry, **kwargs):
    kwargs.setdefault("environ", {})
    return compile_pipeline(path, registry, **kwargs)


def test_whole_string_reference_keeps_the_type(write, registry):
    manifest = compile_(write(PIPELINE), registry, params={"day": "2024-01-01"})
    extract, writer = manifest.steps
    assert extract.config == {"path": "in/2024-01-01.csv", "batch_size": 5}
    assert writer.config == {"path": "/tmp/out/out.csv", "header": True, "batch_size": 5}
    assert manifest.params == {"day": "2024-01-01", "header": True, "n": 5, "out": "out.csv", "ratio": 0.5}


def test_precedence_cli_over_profile_over_default(write, registry):
    path = write(PIPELINE)
    manifest = compile_(path, registry, params={"day": "d"}, profile="prod")
    assert manifest.params["n"] == 500 and manifest.params["out"] == "prod.csv"
    assert manifest.profile == "prod"
    manifest = compile_(path, registry, params={"day": "d", "n": "42", "header": "no"}, profile="prod")
    assert manifest.step("extract").config["batch_size"] == 42
    assert manifest.step("write").config["header"] is False
    assert manifest.step("write").config["path"] == "/tmp/out/prod.csv"


def test_cli_values_are_coerced_to_the_declared_or_default_type():
    assert coerce("42", "integer") == 42
    assert coerce("2.5", "number") == 2.5
    assert coerce("YES", "boolean") is True and coerce("off", "boolean") is False
    assert coerce("007", None) == "007"
    with pytest.raises(ValueError, match="expected an integer"):
        coerce("many", "integer")


def test_bad_cli_value_is_reported(write, registry):
    problems = problems_of(compile_, write(PIPELINE), registry, params={"day": "d", "n": "many"})
    problem = find(problems, "--param n='many'")
    assert problem.hint == "expected an integer"


def test_unknown_param_and_unknown_profile(write, registry):
    problems = problems_of(compile_, write(PIPELINE), registry, params={"day": "d", "nn": "1"}, profile="qa")
    param = find(problems, "unknown param 'nn'")
    assert param.field == "--param" and "did you mean 'n'?" in (param.hint or "")
    profile = find(problems, "unknown profile 'qa'")
    assert profile.field == "--profile" and "prod" in (profile.hint or "")


def test_reference_with_no_value_names_step_field_and_param(write, registry):
    problems = problems_of(compile_, write(PIPELINE), registry)
    problem = find(problems, "param 'day' has no value")
    assert (problem.step, problem.field, problem.line) == ("extract", "config.path", 15)
    assert "--param day=" in (problem.hint or "")
    text = PIPELINE.replace("${params.out}", "${params.outt}")
    problem = find(problems_of(compile_, write(text), registry, params={"day": "d"}), "param 'outt'")
    assert (problem.step, problem.field) == ("write", "config.path")
    assert "did you mean 'out'?" in (problem.hint or "")


def test_unresolved_reference_does_not_add_schema_noise(write, registry):
    problems = problems_of(
        compile_, write(PIPELINE.replace("${params.n}", "${params.size}")), registry, params={"day": "d"}
    )
    assert all("no value" in p.message for p in problems), [p.render() for p in problems]


def test_env_vars_defaults_and_unset(write, registry):
    path = write(PIPELINE)
    manifest = compile_(path, registry, params={"day": "d"}, environ={"OUT_DIR": "/data"})
    assert manifest.step("write").config["path"] == "/data/out.csv"
    text = PIPELINE.replace("${OUT_DIR:-/tmp/out}", "${OUT_DIR}")
    problems = problems_of(compile_, write(text), registry, params={"day": "d"})
    problem = find(problems, "environment variable 'OUT_DIR' is not set")
    assert (problem.step, problem.field) == ("write", "config.path")


def test_escape_and_malformed_references(write, registry):
    text = PIPELINE.replace('"in/${params.day}.csv"', '"in/$${HOME}/$${params.day}.csv"')
    manifest = compile_(write(text), registry)
    assert manifest.step("extract").config["path"] == "in/${HOME}/${params.day}.csv"
    text = PIPELINE.replace('"in/${params.day}.csv"', '"in/${not a ref}.csv"')
    problem = find(problems_of(compile_, write(text), registry, params={"day": "d"}), "not a valid reference")
    assert problem.field == "config.path" and "$${" in (problem.hint or "")


def test_interpolation_of_non_string_values():
    assert substitute("n=${params.n}, ok=${params.ok}", params={"n": 5, "ok": False}, environ={}) == (
        "n=5, ok=false",
        [],
    )
    value, missing = substitute("${params.items}", params={"items": [1, 2]}, environ={})
    assert value == [1, 2] and missing == []


def test_secret_fields_keep_their_variable_until_run_time(write, registry):
    text = """
    oml_version: 0.2.0
    name: secrets
    steps:
      - id: extract
        component: test.reader
        mode: read
        config: {path: "${DATA_DIR}/x.csv"}
      - id: write
        component: test.open_writer
        mode: write
        depends_on: [extract]
        config: {path: out.csv, api_token: "${API_TOKEN}", connection: {host: "${DB_HOST}"}}
    """
    path = write(text)
    env = {"DATA_DIR": "/data", "API_TOKEN": "tok-s3cr3t", "DB_HOST": "db1"}
    manifest = compile_(path, registry, environ=env)
    assert manifest.step("extract").config["path"] == "/data/x.csv"
    config = manifest.step("write").config
    assert config["api_token"] == "${API_TOKEN}" and config["connection"] == {"host": "${DB_HOST}"}
    assert "tok-s3cr3t" not in manifest.to_json()
    resolved = resolve_runtime_config(config, env)
    assert resolved["api_token"] == "tok-s3cr3t" and resolved["connection"] == {"host": "db1"}
    # compile still checks that the variable is set, without printing anything secret
    problems = problems_of(compile_, path, registry, environ={"DATA_DIR": "/data", "DB_HOST": "db1"})
    assert find(problems, "'API_TOKEN' is not set").field == "config.api_token"
    with pytest.raises(InvalidInput, match="API_TOKEN"):
        resolve_runtime_config(config, {"DB_HOST": "db1"})


def test_parse_param_args():
    assert parse_param_args(["n=5", "q=a=b", "empty="]) == {"n": "5", "q": "a=b", "empty": ""}
    with pytest.raises(InvalidInput, match="NAME=VALUE"):
        parse_param_args(["novalue"])
