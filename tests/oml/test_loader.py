"""Structural validation of OML files: every problem located by file, line, step and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from osiris_flight.oml.loader import load_oml
from tests.oml.helpers import find, problems_of

GOOD = """
oml_version: 0.2.0
name: demo
steps:
  - id: extract
    component: test.reader
    mode: read
    config: {path: in.csv}
"""


def test_loads_a_valid_file(write):
    doc = load_oml(write(GOOD))
    assert doc.name == "demo" and doc.oml_version == "0.2.0"
    assert [s.id for s in doc.steps] == ["extract"]
    assert doc.steps[0].config == {"path": "in.csv"}
    assert doc.steps[0].deps is None


def test_yaml_syntax_error_names_file_and_line(write):
    path = write("oml_version: 0.2.0\nname: x\nsteps:\n  - id: a\n    config: {path: [unclosed\n")
    [problem] = problems_of(load_oml, path)
    assert problem.file == str(path)
    assert "YAML syntax error" in problem.message
    assert problem.line is not None and problem.line >= 5


@pytest.mark.parametrize("text, got", [("- a\n- b\n", "a list"), ("", "empty"), ("just text\n", "a string")])
def test_top_level_must_be_a_mapping(write, text, got):
    [problem] = problems_of(load_oml, write(text))
    assert "must be a mapping" in problem.message and got in problem.message


def test_missing_required_top_level_keys(write):
    problems = problems_of(load_oml, write("description: nothing else\n"))
    assert {p.field for p in problems} >= {"oml_version", "name", "steps"}
    assert all("missing required key" in p.message for p in problems)


def test_forbidden_and_unknown_top_level_keys(write):
    problems = problems_of(load_oml, write(GOOD + "version: 1\ntasks: []\ncolour: red\n"))
    version = find(problems, "forbidden key 'version'")
    assert version.hint == "use 'oml_version'" and version.line == 8
    find(problems, "forbidden key 'tasks'")
    colour = find(problems, "unknown key 'colour'")
    assert colour.field == "colour"
    assert "oml_version" in (colour.hint or "") and "steps" in (colour.hint or "")
    # the forbidden key is reported once, as forbidden, not also as unknown
    assert not [p for p in problems if p.message == "unknown key 'version'"]


def test_unsupported_oml_version(write):
    problems = problems_of(load_oml, write(GOOD.replace("0.2.0", "0.3.0")))
    assert find(problems, "'0.3.0' is not a valid value").hint == "expected one of: 0.1.0, 0.2.0"
    problems = problems_of(load_oml, write(GOOD.replace("0.2.0", "0.2")))
    wrong = find(problems, "wrong type")
    assert wrong.field == "oml_version" and "0.1.0, 0.2.0" in (wrong.hint or "")


def test_empty_steps(write):
    problems = problems_of(load_oml, write("oml_version: 0.2.0\nname: x\nsteps: []\n"))
    assert find(problems, "must not be empty").field == "steps"


def test_step_missing_and_wrong_typed_keys(write):
    text = """
    oml_version: 0.2.0
    name: x
    steps:
      - id: a
        mode: fetch
        config: [1, 2]
        needs: b
        colour: red
      - just a string
    """
    problems = problems_of(load_oml, write(text))
    assert find(problems, "missing required key 'component'").step == "a"
    mode = find(problems, "'fetch' is not a valid value")
    assert (mode.step, mode.field, mode.hint) == ("a", "mode", "expected one of: read, transform, write")
    config = find(problems, "wrong type: got a list")
    assert config.field == "config" and config.hint == "expected a mapping" and config.line == 6
    needs = find(problems, "wrong type: got a string")
    assert needs.field == "needs" and needs.hint == "expected a list of non-empty strings"
    assert find(problems, "unknown key 'colour'").step == "a"
    assert find(problems, "a step must be a mapping").field == "steps[1]"


def test_step_ids_must_be_unique_non_empty_strings(write):
    text = """
    oml_version: 0.2.0
    name: x
    steps:
      - {id: a, component: test.reader, mode: read, config: {path: x}}
      - {id: a, component: test.reader, mode: read, config: {path: y}}
      - {id: 7, component: test.reader, mode: read}
      - {id: "", component: test.reader, mode: read}
    """
    problems = problems_of(load_oml, write(text))
    duplicate = find(problems, "duplicate step id 'a'")
    assert duplicate.step == "a" and duplicate.line == 5 and "#1" in (duplicate.hint or "")
    assert find(problems, "wrong type: got an integer").field == "steps[2].id"
    assert find(problems, "must not be empty").field == "steps[3].id"


def test_depends_on_is_an_error_in_0_1_0(write):
    text = """
    oml_version: 0.1.0
    name: x
    steps:
      - {id: a, component: test.reader, mode: read, config: {path: x}}
      - {id: b, component: test.writer, mode: write, depends_on: [a], config: {path: y}}
    """
    [problem] = problems_of(load_oml, write(text))
    assert (problem.step, problem.field) == ("b", "depends_on")
    assert "use 'needs'" in (problem.hint or "")


def test_needs_is_a_synonym_in_0_2_0_but_not_both(write):
    base = """
    oml_version: 0.2.0
    name: x
    steps:
      - {id: a, component: test.reader, mode: read, config: {path: x}}
      - {id: b, component: test.writer, mode: write, DEPS, config: {path: y}}
    """
    doc = load_oml(write(base.replace("DEPS", "needs: [a]")))
    assert doc.steps[1].deps == ("a",) and doc.steps[1].deps_key == "needs"
    doc = load_oml(write(base.replace("DEPS", "depends_on: [a]")))
    assert doc.steps[1].deps == ("a",) and doc.steps[1].deps_key == "depends_on"
    problems = problems_of(load_oml, write(base.replace("DEPS", "needs: [a], depends_on: [a]")))
    assert find(problems, "both 'needs' and 'depends_on'").step == "b"
    problems = problems_of(load_oml, write(base.replace("DEPS", "needs: [a, a]")))
    assert find(problems, "'a' is listed more than once").field == "needs"


def test_duplicate_yaml_keys_are_reported(write):
    text = GOOD.replace("config: {path: in.csv}", "config:\n      path: a.csv\n      path: b.csv")
    [problem] = problems_of(load_oml, write(text))
    assert "given twice" in problem.message
    assert (problem.step, problem.field, problem.line) == ("extract", "config.path", 9)


def test_bare_on_key_is_a_string_key_but_other_scalar_keys_are_reported(write):
    # The milestone's joiner example writes a bare `on:`; YAML 1.1 would read it as true.
    text = GOOD.replace("config: {path: in.csv}", "config:\n      path: in.csv\n      on: id\n      2: x")
    problems = problems_of(load_oml, write(text))
    assert not [p for p in problems if "'on'" in p.message]
    assert find(problems, "key '2' is not a string").line == 10
    doc = load_oml(
        write(GOOD.replace("config: {path: in.csv}", "config:\n      path: in.csv\n      on: [id]"))
    )
    assert doc.steps[0].config["on"] == ["id"]
    assert (
        load_oml(write(GOOD.replace("path: in.csv", "path: in.csv, header: yes"))).steps[0].config["header"]
        is True
    )


def test_dates_stay_strings_and_unsupported_values_are_reported(write):
    doc = load_oml(write(GOOD.replace("path: in.csv", "path: in.csv, since: 2024-01-01")))
    assert doc.steps[0].config["since"] == "2024-01-01"
    problems = problems_of(load_oml, write(GOOD.replace("path: in.csv", "path: !!binary aGVsbG8=")))
    assert find(problems, "type bytes are not supported").field == "config.path"
    problems = problems_of(load_oml, write(GOOD.replace("path: in.csv", "path: .nan")))
    assert find(problems, "NaN").step == "extract"


def test_recursive_alias_is_reported_not_crashing(write):
    problems = problems_of(load_oml, write(GOOD + "metadata: &m [*m]\n"))
    find(problems, "recursive YAML alias")


def test_unreadable_and_non_utf8_files(tmp_path: Path):
    [missing] = problems_of(load_oml, tmp_path / "nope.yaml")
    assert "cannot read pipeline file" in missing.message
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"name: \xff\xfe\n")
    [problem] = problems_of(load_oml, binary)
    assert "not UTF-8" in problem.message


def test_param_declarations(write):
    text = (
        GOOD
        + """
params:
  n: 5
  out: {default: out.csv, type: string, description: target file}
  day: {type: str}
  bad: {default: x, type: int}
  weird: {default: 1, kind: int}
  "not valid!": 1
"""
    )
    problems = problems_of(load_oml, write(text))
    assert (
        find(problems, "default is a string but the param is declared integer").field == "params.bad.default"
    )
    assert find(problems, "unknown key 'kind'").field == "params.weird.kind"
    find(problems, "param name 'not valid!' is not valid")
    doc = load_oml(write(GOOD + "params:\n  n: 5\n  day: {type: str}\n"))
    assert doc.params["n"].default == 5 and doc.params["n"].has_default
    assert doc.params["day"].type == "string" and not doc.params["day"].has_default


def test_profiles_must_set_declared_params(write):
    text = (
        GOOD
        + """
params: {n: 5}
profiles:
  prod: {n: 10, m: 3}
  osiris_style: {params: {n: 20}}
  wrong_type: {n: ten}
"""
    )
    problems = problems_of(load_oml, write(text))
    undeclared = find(problems, "profile 'prod' sets undeclared param 'm'")
    assert undeclared.field == "profiles.prod.m" and "n" in (undeclared.hint or "")
    assert find(problems, "profile 'wrong_type' sets param 'n' to a string").hint == "expected an integer"
    doc = load_oml(write(GOOD + "params: {n: 5}\nprofiles:\n  a: {params: {n: 20}}\n"))
    assert doc.profiles == {"a": {"n": 20}}
