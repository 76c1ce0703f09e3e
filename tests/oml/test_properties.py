"""Property tests: valid DAGs always compile and plan soundly; garbage only ever gives InvalidInput."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from osiris_flight.errors import InvalidInput
from osiris_flight.oml.compile import compile_pipeline
from osiris_flight.oml.plan import plan_manifest
from tests.oml.components import make_registry

REGISTRY = make_registry()
# component -> (mode, number of inputs, config)
KINDS: dict[str, tuple[str, int, dict[str, Any]]] = {
    "test.reader": ("read", 0, {"path": "in.csv"}),
    "test.filter": ("transform", 1, {"predicate": "x > 0"}),
    "test.aggregate": ("transform", 1, {"group_by": ["k"]}),
    "test.join": ("transform", 2, {"on": "id"}),
    "test.union": ("transform", -1, {}),
    "test.writer": ("write", 1, {"path": "out.csv"}),
}


@st.composite
def dags(draw: st.DrawFn) -> tuple[str, list[dict[str, Any]]]:
    """A valid pipeline: inputs always point to earlier producers, then file order is shuffled."""
    count = draw(st.integers(1, 10))
    steps: list[dict[str, Any]] = []
    for i in range(count):
        producers = [s["id"] for s in steps if s["mode"] != "write"]
        choices = ["test.reader"] + (list(KINDS)[1:] if producers else [])
        component = draw(st.sampled_from(choices))
        mode, arity, config = KINDS[component]
        if arity == -1:
            arity = draw(st.integers(1, min(8, len(producers))))
        if arity > len(producers):
            component, (mode, arity, config) = "test.reader", KINDS["test.reader"]
        config = dict(config)
        if component == "test.reader":
            config["partitions"] = draw(st.integers(1, 3))
        step: dict[str, Any] = {"id": f"s_{i}", "component": component, "mode": mode, "config": config}
        if arity:
            step["depends_on"] = draw(
                st.lists(st.sampled_from(producers), min_size=arity, max_size=arity, unique=True)
            )
        steps.append(step)
    order = draw(st.permutations(steps))
    version = draw(st.sampled_from(["0.2.0", "0.1.0"]))
    if version == "0.1.0":
        for step in order:
            if "depends_on" in step:
                step["needs"] = step.pop("depends_on")
            elif step["mode"] != "read":
                step["needs"] = []
    return version, list(order)


def write_yaml(directory: str, data: Any) -> Path:
    path = Path(directory) / "pipeline.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dags())
def test_every_valid_dag_compiles_and_plans_soundly(dag: tuple[str, list[dict[str, Any]]]) -> None:
    version, steps = dag
    with tempfile.TemporaryDirectory() as directory:
        path = write_yaml(directory, {"oml_version": version, "name": "prop", "steps": steps})
        manifest = compile_pipeline(path, REGISTRY, environ={})
        plan = plan_manifest(manifest, REGISTRY)
        assert compile_pipeline(path, REGISTRY, environ={}).to_json() == manifest.to_json()
    assert [s.id for s in manifest.steps] == [s["id"] for s in steps]
    placed = [step_id for stage in plan.stages for step_id in stage.steps]
    assert sorted(placed) == sorted(s.id for s in manifest.steps)  # each step in exactly one stage
    position = {stage.id: i for i, stage in enumerate(plan.stages)}
    assert [stage.id for stage in plan.stages] == [f"s{i}" for i in range(len(plan.stages))]
    for i, stage in enumerate(plan.stages):
        assert all(position[src] < i for src in stage.inputs)  # topological
        first = manifest.step(stage.steps[0])
        assert stage.inputs == tuple(plan.stage_of_step(d).id for d in first.inputs)
        for before, after in zip(stage.steps, stage.steps[1:], strict=False):
            assert manifest.step(after).inputs == (before,)  # fused chains are straight lines
            assert manifest.consumers(before) == [after]
        consumers = sorted({c.id for c in plan.stages if stage.id in c.inputs}, key=position.__getitem__)
        assert list(stage.consumers) == consumers
        expected = (
            "sink"
            if manifest.step(stage.last_step).mode == "write"
            else ("exchange" if consumers else "discard")
        )
        assert stage.output == expected


KEYS = [
    "oml_version",
    "name",
    "steps",
    "id",
    "component",
    "mode",
    "config",
    "needs",
    "depends_on",
    "params",
    "profiles",
    "default",
    "type",
    "path",
    "predicate",
    "group_by",
    "connection",
    "partitions",
]
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 10),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(
        [
            "0.1.0",
            "0.2.0",
            "read",
            "write",
            "transform",
            "test.reader",
            "test.writer",
            "test.filter",
            "s_0",
            "s_1",
            "${params.n}",
            "${HOME}",
            "${NOPE:-x}",
            "$${x}",
            "${bad ref}",
            "@mysql.a",
            "@x",
            "int",
            "",
        ]
    ),
    st.text(max_size=8),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=4), inner, max_size=5),
    ),
    max_leaves=25,
)


def only_invalid_input(path: Path) -> None:
    try:
        manifest = compile_pipeline(
            path, REGISTRY, params={"n": "1"}, profile=None, environ={"HOME": "/h"}, connections_file=path
        )
        plan_manifest(manifest, REGISTRY)
        manifest.to_json()
    except InvalidInput as exc:
        assert exc.problems and all(p.render() for p in exc.problems)


@settings(max_examples=300, deadline=None)
@given(VALUES)
def test_structured_garbage_gives_only_invalid_input(data: Any) -> None:
    with tempfile.TemporaryDirectory() as directory:
        only_invalid_input(write_yaml(directory, data))


@settings(max_examples=300, deadline=None)
@given(
    st.text(alphabet=st.sampled_from(list("abc:-[]{}&*!|>'\"#%@` \n\t$0.,?")), max_size=80)
    | st.binary(max_size=60)
)
def test_text_garbage_gives_only_invalid_input(blob: str | bytes) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "pipeline.yaml"
        if isinstance(blob, bytes):
            path.write_bytes(blob)
        else:
            path.write_text(blob, encoding="utf-8")
        only_invalid_input(path)


@settings(max_examples=200, deadline=None)
@given(dags(), st.data())
def test_mutated_valid_pipelines_give_only_invalid_input(
    dag: tuple[str, list[dict[str, Any]]], data: st.DataObject
) -> None:
    version, steps = dag
    step = data.draw(st.sampled_from(steps))
    key = data.draw(st.sampled_from(["id", "component", "mode", "config", "needs", "depends_on", "extra"]))
    step[key] = data.draw(VALUES)
    with tempfile.TemporaryDirectory() as directory:
        only_invalid_input(write_yaml(directory, {"oml_version": version, "name": "m", "steps": steps}))
