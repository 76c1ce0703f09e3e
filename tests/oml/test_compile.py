"""compile_pipeline: dependencies (the root rule), components, configs, determinism, no secrets."""

from __future__ import annotations

import hashlib
import os

import pytest

from osiris_flight.errors import InvalidInput
from osiris_flight.oml.compile import compile_pipeline
from osiris_flight.oml.model import Manifest
from tests.oml.helpers import find, problems_of

HEADER = "oml_version: {version}\nname: t\nsteps:\n"


def step(id_, component, mode, deps=None, key="depends_on", **config):
    if not config and component != "test.union":
        config = {"path": f"{id_}.csv"}
    text = f"  - id: {id_}\n    component: {component}\n    mode: {mode}\n    config: {config!r}\n"
    if deps is not None:
        text += f"    {key}: {list(deps)!r}\n"
    return text


def pipeline(write, version, *steps):
    return write(HEADER.format(version=version) + "".join(steps))


def compile_(path, registry, **kwargs):
    kwargs.setdefault("environ", {})
    return compile_pipeline(path, registry, **kwargs)


def inputs(manifest):
    return {s.id: s.inputs for s in manifest.steps}


def test_root_rule_0_1_0(write, registry):
    path = pipeline(
        write,
        "0.1.0",
        step("users", "test.reader", "read"),
        step("clean", "test.filter", "transform", predicate="x > 0"),
        step("orders", "test.reader", "read"),
        step("both", "test.join", "transform", ["clean", "orders"], key="needs", on="id"),
        step("out", "test.writer", "write"),
    )
    # a read step without needs is a root; any other step without needs consumes the one before it
    assert inputs(compile_(path, registry)) == {
        "users": (),
        "clean": ("users",),
        "orders": (),
        "both": ("clean", "orders"),
        "out": ("both",),
    }


def test_root_rule_0_2_0(write, registry):
    path = pipeline(
        write,
        "0.2.0",
        step("users", "test.reader", "read"),
        step("clean", "test.filter", "transform", ["users"], predicate="x > 0"),
        step("out", "test.writer", "write", ["clean"], key="needs"),
        step("orphan", "test.filter", "transform", predicate="x"),
    )
    problems = problems_of(compile_, path, registry)
    # in 0.2.0 a step without depends_on/needs is a root, so a transform there lacks an input
    [problem] = problems
    assert problem.step == "orphan" and "needs exactly 1 input, but this step has 0" in problem.message
    assert problem.field == "depends_on"


def test_0_1_0_chaining_into_a_writer_is_explained(write, registry):
    path = pipeline(
        write,
        "0.1.0",
        step("a", "test.reader", "read"),
        step("w", "test.writer", "write"),
        step("f", "test.filter", "transform", predicate="x"),
    )
    problem = find(problems_of(compile_, path, registry), "depends on 'w', a write step")
    assert problem.step == "f" and "0.1.0" in (problem.hint or "")


def test_unknown_component_suggests_the_closest(write, registry):
    path = pipeline(write, "0.2.0", step("a", "test.raeder", "read"))
    [problem] = problems_of(compile_, path, registry)
    assert problem.message == "unknown component 'test.raeder'" and problem.field == "component"
    assert (problem.hint or "").startswith("did you mean 'test.reader'? known components: mysql.extractor,")


def test_unknown_and_self_dependencies(write, registry):
    path = pipeline(
        write,
        "0.2.0",
        step("a", "test.reader", "read"),
        step("b", "test.filter", "transform", ["a", "ghost"], predicate="x"),
        step("c", "test.filter", "transform", ["c"], predicate="x"),
    )
    problems = problems_of(compile_, path, registry)
    unknown = find(problems, "depends on unknown step 'ghost'")
    assert (unknown.step, unknown.field) == ("b", "depends_on")
    assert unknown.hint == "steps in this pipeline: a, b, c"
    assert find(problems, "depends on itself").step == "c"


def test_cycle_message_names_the_cycle(write, registry):
    path = pipeline(
        write,
        "0.2.0",
        step("src", "test.reader", "read"),
        step("a", "test.union", "transform", ["src", "c"]),
        step("b", "test.union", "transform", ["a"]),
        step("c", "test.union", "transform", ["b"]),
        step("out", "test.writer", "write", ["c"]),
    )
    [problem] = problems_of(compile_, path, registry)
    assert problem.message == "dependency cycle: a -> b -> c -> a"
    assert problem.step == "a" and problem.line is not None


def test_two_separate_cycles_are_both_reported(write, registry):
    path = pipeline(
        write,
        "0.2.0",
        step("a", "test.union", "transform", ["b"]),
        step("b", "test.union", "transform", ["a"]),
        step("x", "test.union", "transform", ["y"]),
        step("y", "test.union", "transform", ["x"]),
    )
    messages = sorted(p.message for p in problems_of(compile_, path, registry))
    assert messages == ["dependency cycle: a -> b -> a", "dependency cycle: x -> y -> x"]


def test_config_problems_say_what_is_valid(write, registry):
    path = pipeline(
        write,
        "0.2.0",
        step("a", "test.reader", "read", path="in.csv", delimeter=";"),
        step("b", "test.aggregate", "transform", ["a"], group_by="user"),
        step("w", "test.writer", "write", ["b"], write_mode="replace", batch_size="10"),
        step("w2", "test.writer", "write", ["b"], path="out/"),
    )
    problems = problems_of(compile_, path, registry)
    unknown = find(problems, "unknown key 'delimeter'")
    assert (unknown.step, unknown.field) == ("a", "config.delimeter")
    assert (unknown.hint or "").startswith("did you mean 'delimiter'?")
    group_by = [p for p in problems if p.field == "config.group_by"]
    assert [(p.step, p.message, p.hint) for p in group_by] == [
        ("b", "wrong type: got a string", "expected a list of strings")
    ]
    missing = find(problems, "missing required key 'path'")
    assert (missing.step, missing.field, missing.hint) == ("w", "config.path", "expected a string")
    enum = find(problems, "'replace' is not a valid value")
    assert (enum.field, enum.hint) == ("config.write_mode", "expected one of: overwrite, append")
    typed = [p for p in problems if p.field == "config.batch_size"]
    assert typed and typed[0].hint == "expected an integer >= 1"
    # the component's own check() runs on schema-valid configs, located like the rest
    check = find(problems, "path names a directory")
    assert (check.step, check.field, check.file) == ("w2", "config.path", str(path))
    # every step's problems come in one InvalidInput
    assert {p.step for p in problems} == {"a", "b", "w", "w2"}


def test_mode_and_input_count(write, registry):
    path = pipeline(
        write,
        "0.2.0",
        step("a", "test.reader", "transform"),
        step("j", "test.join", "transform", ["a"], on="id"),
        step("w", "test.writer", "write", ["j"]),
        step("r", "test.reader", "read", ["a"]),
    )
    problems = problems_of(compile_, path, registry)
    mode = find(problems, "mode must be 'read', not 'transform'")
    assert (mode.step, mode.field) == ("a", "mode")
    count = find(problems, "needs exactly 2 inputs, but this step has 1")
    assert count.step == "j" and "depends_on" in (count.hint or "")
    assert find(problems, "takes no inputs").step == "r"


def test_manifest_fields(write, registry, tmp_path):
    path = pipeline(
        write, "0.2.0", step("a", "test.reader", "read"), step("w", "test.writer", "write", ["a"])
    )
    relative = os.path.relpath(path)
    manifest = compile_(relative, registry)
    assert manifest.source_file == relative  # as given, not absolutized
    assert manifest.source_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert [s.id for s in manifest.steps] == ["a", "w"] and manifest.step("w").inputs == ("a",)
    assert Manifest.from_dict(manifest.to_dict()) == manifest


def test_compile_is_deterministic(write, registry):
    text = (
        HEADER.format(version="0.2.0")
        + step("a", "test.reader", "read", path="${params.p}")
        + step("w", "test.writer", "write", ["a"], path="${OUT:-x}/o.csv", batch_size="${params.n}")
        + "params: {p: in.csv, n: 3, z: {default: [1, 2]}}\n"
    )
    path = write(text)
    first = compile_(path, registry, params={"n": "9"}).to_json()
    for _ in range(3):
        assert compile_(path, registry, params={"n": "9"}).to_json() == first
    assert compile_(path, registry, params={"n": "8"}).to_json() != first


def test_secrets_never_reach_the_manifest(write, registry):
    secret = "pa55-w0rd-xyz"
    connections = write(
        'version: 1\nconnections:\n  mysql:\n    main: {host: db, password: "${DB_PASSWORD}"}\n',
        "osiris_connections.yaml",
    )
    path = write(
        HEADER.format(version="0.2.0")
        + step("a", "mysql.extractor", "read", connection="@mysql.main", query="SELECT 1")
        + step("w", "test.open_writer", "write", ["a"], path="o.csv", password="${DB_PASSWORD}")
    )
    manifest = compile_(path, registry, connections_file=connections, environ={"DB_PASSWORD": secret})
    assert secret not in manifest.to_json()
    with pytest.raises(InvalidInput) as info:
        compile_(path, registry, connections_file=connections, environ={})
    assert "DB_PASSWORD" in str(info.value) and secret not in str(info.value)


def test_a_secret_cannot_come_through_params(write, registry):
    """Params are written into the manifest, so neither a secret-named param nor a param in a secret
    field is accepted: both are reported, and the value never appears in the message."""
    secret = "pa55-w0rd-xyz"
    path = write(
        HEADER.format(version="0.2.0")
        + step("a", "test.reader", "read", path="in.csv")
        + step("w", "test.open_writer", "write", ["a"], path="o.csv", password="${params.pw}")
        + "params: {pw: {default: x}, db_password: {default: y}}\n"
    )
    problems = problems_of(compile_, path, registry, params={"pw": secret, "db_password": secret})
    assert sorted(p.message for p in problems) == [
        "a secret field cannot take a param",
        "param 'db_password' looks like a secret",
    ]
    assert {p.field for p in problems} == {"config.password", "params.db_password"}
    assert all(secret not in str(p) for p in problems)


def test_0_1_0_cycle_through_implicit_chaining_is_explained(write, registry):
    path = pipeline(
        write,
        "0.1.0",
        step("x", "test.union", "transform", ["y"], key="needs"),
        step("y", "test.union", "transform"),  # implicitly consumes x
    )
    [problem] = problems_of(compile_, path, registry)
    assert problem.message == "dependency cycle: x -> y -> x"
    assert "consumes the step before it" in (problem.hint or "")


def test_config_key_order_survives_the_manifest_file(tmp_path):
    """An aggregator's outputs come out in the order written: the manifest must keep that order."""
    import json

    from osiris_flight.components.registry import build_registry
    from osiris_flight.oml.compile import compile_pipeline
    from osiris_flight.oml.model import Manifest

    (tmp_path / "p.yaml").write_text(
        'oml_version: "0.2.0"\nname: order\nsteps:\n'
        "  - {id: src, component: filesystem.csv_extractor, mode: read, config: {path: x.csv}}\n"
        "  - id: agg\n    component: transform.aggregator\n    mode: transform\n    depends_on: [src]\n"
        "    config:\n      group_by: [k]\n      aggregations: {zeta: count, alpha: {fn: sum, column: v}}\n"
    )
    manifest = compile_pipeline(tmp_path / "p.yaml", build_registry())
    reloaded = Manifest.from_dict(json.loads(manifest.to_json()))
    assert list(reloaded.step("agg").config["aggregations"]) == ["zeta", "alpha"]
    assert reloaded.to_json() == manifest.to_json()
