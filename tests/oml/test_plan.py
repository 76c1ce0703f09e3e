"""Planning: stable topological stages, fusion of straight chains, exchanges where data crosses."""

from __future__ import annotations

from osiris_flight.oml.compile import compile_pipeline
from osiris_flight.oml.model import Plan
from osiris_flight.oml.plan import describe_plan, plan_manifest

PARALLEL = """
oml_version: 0.2.0
name: parallel
steps:
  - {id: extract, component: test.reader, mode: read, config: {path: events.csv}}
  - {id: agg_users, component: test.aggregate, mode: transform, depends_on: [extract],
     config: {group_by: [user]}}
  - id: agg_products
    component: test.aggregate
    mode: transform
    depends_on: [extract]
    config: {group_by: [product]}
  - {id: join, component: test.join, mode: transform, depends_on: [agg_users, agg_products],
     config: {"on": id}}
  - {id: write, component: test.writer, mode: write, depends_on: [join], config: {path: out.csv}}
"""


def plan_of(write, registry, text):
    manifest = compile_pipeline(write(text), registry, environ={})
    return manifest, plan_manifest(manifest, registry)


def shape(plan):
    return [list(s.steps) for s in plan.stages]


def test_milestone_parallel_example(write, registry):
    manifest, plan = plan_of(write, registry, PARALLEL)
    assert shape(plan) == [["extract"], ["agg_users"], ["agg_products"], ["join", "write"]]
    assert [s.id for s in plan.stages] == ["s0", "s1", "s2", "s3"]
    assert plan.exchanges() == [("s0", "s1"), ("s0", "s2"), ("s1", "s3"), ("s2", "s3")]
    s0, s1, s2, s3 = plan.stages
    assert s0.consumers == ("s1", "s2") and s0.output == "exchange"
    assert s1.consumers == s2.consumers == ("s3",)
    assert s3.inputs == ("s1", "s2") and s3.output == "sink" and s3.consumers == ()
    text = describe_plan(plan, manifest)
    assert "s3: join (test.join) -> write (test.writer)" in text
    assert "s0 => s1 (fan-out to 2)" in text and "s1 => s3 (fan-in of 2)" in text
    assert Plan.from_dict(plan.to_dict()) == plan


def test_linear_chain_fuses_into_one_task(write, registry):
    text = """
    oml_version: 0.1.0
    name: linear
    steps:
      - {id: read, component: test.reader, mode: read, config: {path: a.csv}}
      - {id: keep, component: test.filter, mode: transform, config: {predicate: "x > 1"}}
      - {id: save, component: test.writer, mode: write, config: {path: b.csv}}
    """
    manifest, plan = plan_of(write, registry, text)
    assert shape(plan) == [["read", "keep", "save"]]
    assert plan.stages[0].output == "sink" and plan.exchanges() == []
    assert "exchanges: none" in describe_plan(plan, manifest)


def test_partitions_follow_partitionwise_steps_only(write, registry):
    text = """
    oml_version: 0.2.0
    name: partitioned
    steps:
      - {id: read, component: test.reader, mode: read, config: {path: a.csv, partitions: 4}}
      - {id: keep, component: test.filter, mode: transform, depends_on: [read], config: {predicate: "x"}}
      - {id: agg, component: test.aggregate, mode: transform, depends_on: [keep], config: {group_by: [k]}}
      - {id: keep2, component: test.filter, mode: transform, depends_on: [agg], config: {predicate: "y"}}
    """
    manifest, plan = plan_of(write, registry, text)
    # the filter runs per partition of the read; the aggregate must see all rows: new stage, 1 task
    assert shape(plan) == [["read", "keep"], ["agg", "keep2"]]
    assert [s.partitions for s in plan.stages] == [4, 1]
    assert plan.stages[1].output == "discard"  # a transform nobody consumes
    assert plan.stages[0].task_ids() == ["s0.p0", "s0.p1", "s0.p2", "s0.p3"]
    assert "4 partitions -> 1" in describe_plan(plan, manifest)


def test_non_partitionwise_step_after_partitioned_source_starts_a_stage(write, registry):
    text = """
    oml_version: 0.2.0
    name: p
    steps:
      - {id: read, component: test.reader, mode: read, config: {path: a.csv, partitions: 2}}
      - {id: save, component: test.writer, mode: write, depends_on: [read], config: {path: b.csv}}
    """
    _, plan = plan_of(write, registry, text)
    assert shape(plan) == [["read"], ["save"]]
    assert [s.partitions for s in plan.stages] == [2, 1] and plan.exchanges() == [("s0", "s1")]


def test_stage_order_is_topological_with_file_order_ties(write, registry):
    text = """
    oml_version: 0.2.0
    name: order
    steps:
      - {id: late_sink, component: test.writer, mode: write, depends_on: [u], config: {path: o.csv}}
      - {id: b, component: test.reader, mode: read, config: {path: b.csv}}
      - {id: a, component: test.reader, mode: read, config: {path: a.csv}}
      - {id: u, component: test.union, mode: transform, depends_on: [a, b], config: {}}
    """
    _, plan = plan_of(write, registry, text)
    assert shape(plan) == [["b"], ["a"], ["u", "late_sink"]]
    assert plan.stages[2].inputs == ("s1", "s0")  # in u's declared input order: a, b
