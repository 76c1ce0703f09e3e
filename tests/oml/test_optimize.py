"""The query optimizer, pure (no server): each rewrite, each refusal and its reason, determinism.

Pipelines are compiled from YAML with the real component registry, so every rewritten config is
also checked against the real schemas (the optimizer refuses rather than produce an invalid one).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from osiris_flight.components.registry import build_registry
from osiris_flight.oml import mysql_rewrite
from osiris_flight.oml.compile import compile_pipeline
from osiris_flight.oml.model import Manifest
from osiris_flight.oml.optimize import Rewrite, describe_rewrites, optimize, read_summaries
from osiris_flight.oml.plan import plan_manifest

REGISTRY = build_registry()
CONNECTIONS = (
    "version: 1\nconnections:\n  mysql:\n    db:\n"
    "      host: 127.0.0.1\n      database: shop\n      user: u\n      password: secret\n"
)


def read(id_: str = "extract", **config: Any) -> dict[str, Any]:
    return {
        "id": id_,
        "component": "mysql.extractor",
        "mode": "read",
        "config": {"connection": "@mysql.db", **config},
    }


def keep(id_: str, after: str, where: str, columns: list[str] | None = None) -> dict[str, Any]:
    config: dict[str, Any] = {"where": where}
    if columns is not None:
        config["columns"] = columns
    return {
        "id": id_,
        "component": "transform.filter",
        "mode": "transform",
        "depends_on": [after],
        "config": config,
    }


def csv(id_: str, after: str) -> dict[str, Any]:
    return {
        "id": id_,
        "component": "filesystem.csv_writer",
        "mode": "write",
        "depends_on": [after],
        "config": {"path": f"{id_}.csv"},
    }


def aggregate(id_: str, after: str, group_by: list[str], aggregations: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": id_,
        "component": "transform.aggregator",
        "mode": "transform",
        "depends_on": [after],
        "config": {"group_by": group_by, "aggregations": aggregations},
    }


def compiled(tmp_path: Path, *steps: dict[str, Any]) -> Manifest:
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(
        yaml.safe_dump({"oml_version": "0.2.0", "name": "opt", "steps": list(steps)}, sort_keys=False)
    )
    connections = tmp_path / "osiris_connections.yaml"
    connections.write_text(CONNECTIONS)
    return compile_pipeline(pipeline, REGISTRY, connections_file=connections, environ={})


def run(tmp_path: Path, *steps: dict[str, Any]) -> tuple[Manifest, dict[tuple[str, str], Rewrite]]:
    optimized, rewrites = optimize(compiled(tmp_path, *steps), REGISTRY)
    plan_manifest(optimized, REGISTRY)  # the rewritten manifest still plans
    return optimized, {(r.step, r.rule): r for r in rewrites}


def config(manifest: Manifest, step_id: str) -> dict[str, Any]:
    return manifest.step(step_id).config


# -- what a filter condition means in MySQL ----------------------------------------------------------
@pytest.mark.parametrize(
    ("where", "verdicts"),
    [
        ("amount < 100", ["exact"]),
        ("a >= 1 AND b IS NULL AND NOT (c IN (1, 2)) AND d <=> 3", ["exact"] * 4),
        ("a BETWEEN -5 AND 5 OR b % 3 = 1", ["exact"]),
        ("ts >= TIMESTAMP '2024-01-01 10:00:00' AND d < DATE '2024-02-01'", ["exact", "exact"]),
        ("flag", ["exact"]),
        ("status = 'paid'", ["looser"]),
        ("status IN ('a', 'b', NULL)", ["looser"]),
        ("name LIKE 'ab%'", ["looser"]),
        ("name NOT LIKE 'ab%'", ["filter"]),
        ("status <> 'paid'", ["filter"]),
        ("status < 'm'", ["filter"]),
        (r"status = 'a\\b'", ["filter"]),
        ("a / 2 > 1", ["filter"]),
        ("a * 1.5 > 3", ["filter"]),
        ("a = b", ["filter"]),
        ("a = 99999999999999999999", ["filter"]),
        ("amount > 10.5 AND a = b", ["exact", "filter"]),
        ("TRUE", []),
    ],
)
def test_conjunct_verdicts(where: str, verdicts: list[str]) -> None:
    assert [c.verdict for c in mysql_rewrite.conjuncts(where)] == verdicts


def test_condition_is_written_for_mysql_and_the_filter() -> None:
    parts = mysql_rewrite.conjuncts("NOT a IN (1, 2) AND ts < TIMESTAMP '2024-01-01 10:00:00.5'")
    text = mysql_rewrite.render(mysql_rewrite.for_mysql([p.node for p in parts]))
    # NOT keeps its operand in parentheses (HIGH_NOT_PRECEDENCE cannot regroup it); the timestamp
    # keeps its microseconds and stays a literal the filter's own parser accepts.
    assert text == "NOT (`a` IN (1, 2)) AND `ts` < CAST('2024-01-01 10:00:00.5' AS DATETIME(6))"
    from osiris_flight.components.sql_predicate import parse_predicate

    assert parse_predicate(text).columns == ("a", "ts")


# -- predicate pushdown ------------------------------------------------------------------------------
def test_filter_goes_into_a_simple_query_and_the_filter_keeps_every_row(tmp_path: Path) -> None:
    manifest, rewrites = run(
        tmp_path,
        read(query="SELECT * FROM orders"),
        keep("keep", "extract", "amount < 100"),
        csv("out", "keep"),
    )
    assert config(manifest, "extract")["query"] == "SELECT * FROM `orders` WHERE `amount` < 100"
    assert config(manifest, "keep")["where"] == "TRUE"
    rewrite = rewrites[("extract", "predicate")]
    assert rewrite.applied and rewrite.steps == ("keep",)
    assert rewrite.before == "SELECT * FROM orders" and rewrite.after == config(manifest, "extract")["query"]
    assert "'keep' now keeps every row (where: TRUE)" in rewrite.detail
    assert [s.id for s in manifest.steps] == ["extract", "keep", "out"]  # the DAG is untouched


def test_filter_is_anded_into_an_existing_where_through_aliases(tmp_path: Path) -> None:
    query = "SELECT o.id, o.total AS amount FROM orders o WHERE o.state = 1 OR o.id < 5 ORDER BY o.id"
    manifest, _ = run(
        tmp_path, read(query=query), keep("keep", "extract", "amount >= 10"), csv("out", "keep")
    )
    assert config(manifest, "extract")["query"] == (
        "SELECT `o`.`id`, `o`.`total` AS `amount` FROM `orders` AS `o` "
        "WHERE (`o`.`state` = 1 OR `o`.`id` < 5) AND `o`.`total` >= 10 ORDER BY `o`.`id`"
    )


@pytest.mark.parametrize(
    "query",
    [
        "SELECT status, COUNT(*) AS n FROM orders GROUP BY status",
        "SELECT DISTINCT status, 1 AS n FROM orders",
        "SELECT status, id AS n FROM orders LIMIT 10",
        "SELECT status, ROW_NUMBER() OVER (ORDER BY id) AS n FROM orders",
        "SELECT status, n FROM a UNION ALL SELECT status, n FROM b",
        "SELECT status, id * 2 AS n FROM orders",
    ],
)
def test_filter_goes_around_queries_it_would_change_inside(tmp_path: Path, query: str) -> None:
    """GROUP BY, DISTINCT, LIMIT, window functions, UNION, a computed column: the condition would
    mean something else inside, so the query becomes a derived table filtered outside."""
    manifest, rewrites = run(
        tmp_path, read(query=query), keep("keep", "extract", "n > 3"), csv("out", "keep")
    )
    rewritten = config(manifest, "extract")["query"]
    assert rewritten.startswith("SELECT * FROM (") and rewritten.endswith(") AS `_osiris_opt` WHERE `n` > 3")
    assert rewrites[("extract", "predicate")].applied


def test_table_read_gets_a_where(tmp_path: Path) -> None:
    manifest, rewrites = run(
        tmp_path,
        read(table="orders", where="`region` = 2"),
        keep("keep", "extract", "amount < 100 AND id > 5"),
        csv("out", "keep"),
    )
    assert config(manifest, "extract")["where"] == "`region` = 2 AND `amount` < 100 AND `id` > 5"
    assert rewrites[("extract", "predicate")].after == (
        "SELECT * FROM `orders` WHERE `region` = 2 AND `amount` < 100 AND `id` > 5"
    )


def test_text_is_pushed_as_a_pre_filter_and_still_checked(tmp_path: Path) -> None:
    manifest, rewrites = run(
        tmp_path,
        read(table="orders"),
        keep("keep", "extract", "status = 'paid' AND amount / 2 > 10 AND id > 5"),
        csv("out", "keep"),
    )
    assert config(manifest, "extract")["where"] == "`status` = 'paid' AND `id` > 5"
    assert config(manifest, "keep")["where"] == "`status` = 'paid' AND `amount` / 2 > 10"
    detail = rewrites[("extract", "predicate")].detail
    assert "`status` = 'paid' is also kept in 'keep' (it compares text" in detail
    assert "`amount` / 2 > 10 stays in 'keep' ('/' divides" in detail


def test_a_chain_of_filters_is_pushed(tmp_path: Path) -> None:
    manifest, rewrites = run(
        tmp_path,
        read(table="orders"),
        keep("first", "extract", "id > 5", columns=["id", "amount"]),
        keep("second", "first", "amount < 9"),
        csv("out", "second"),
    )
    assert config(manifest, "extract")["where"] == "`id` > 5 AND `amount` < 9"
    assert config(manifest, "first") == {"where": "TRUE", "columns": ["id", "amount"]}
    assert config(manifest, "second")["where"] == "TRUE"
    assert rewrites[("extract", "predicate")].steps == ("first", "second")


def test_a_filter_reading_a_dropped_column_is_not_pushed(tmp_path: Path) -> None:
    manifest, rewrites = run(
        tmp_path,
        read(table="orders"),
        keep("first", "extract", "id > 5", columns=["id"]),
        keep("second", "first", "amount < 9"),
        csv("out", "second"),
    )
    assert config(manifest, "extract")["where"] == "`id` > 5"
    assert config(manifest, "second")["where"] == "amount < 9"
    assert (
        "'second' reads 'amount', which the steps before it drop" in rewrites[("extract", "predicate")].detail
    )


# -- refusals ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("extractor", "where", "reason"),
    [
        (read(query="SELECT * FROM t", limit=10), "id > 1", "the read has a limit"),
        (read(query="SHOW TABLES"), "id > 1", "the query is not a SELECT (it is a SHOW)"),
        (read(query="SELECT * FROM t ORDER BY id LIMIT 5"), "id > 1", "ORDER BY that a derived table"),
        (read(query="SELECT id, RAND() AS r FROM t LIMIT 5"), "id > 1", "calls RAND()"),
        (read(query="SELECT @n := @n + 1 AS id FROM t"), "id > 1", "variables (@name)"),
        (read(query="SELECT a, b FROM t"), "id > 1", "column 'id' is not in the query's result"),
        (read(query="SELECT * FROM t WHERE"), "id > 1", "sqlglot cannot parse the query"),
        (read(query="SELECT * FROM t LOCK IN SHARE MODE"), "id > 1", "the query locks rows"),
        (read(query="SELECT * FROM t FORCE INDEX (PRIMARY)"), "id > 1", "does not write the query back"),
        (read(table="t", columns=["id"]), "amount > 1", "'keep' reads 'amount', which the steps before it"),
        (read(table="t"), "status <> 'x' AND a / 2 > 1", "nothing in the filter condition can be evaluated"),
    ],
)
def test_refusals_leave_the_read_as_written(
    tmp_path: Path, extractor: dict[str, Any], where: str, reason: str
) -> None:
    original = compiled(tmp_path, extractor, keep("keep", "extract", where), csv("out", "keep"))
    manifest, rewrites = optimize(original, REGISTRY)
    rewrite = next(r for r in rewrites if r.rule == "predicate")
    assert not rewrite.applied and reason in rewrite.detail
    assert rewrite.before == rewrite.after
    assert config(manifest, "keep") == config(original, "keep")
    assert rewrite.to_dict()["reason"] == rewrite.detail


def test_an_ordered_query_is_wrapped_when_the_extractor_orders_by_its_key(tmp_path: Path) -> None:
    manifest, rewrites = run(
        tmp_path,
        read(query="SELECT * FROM t ORDER BY id LIMIT 5", key="id"),
        keep("keep", "extract", "id > 1"),
        csv("out", "keep"),
    )
    assert rewrites[("extract", "predicate")].applied
    assert config(manifest, "extract")["query"].endswith(") AS `_osiris_opt` WHERE `id` > 1")


def test_shared_or_missing_filters_are_explained(tmp_path: Path) -> None:
    _, rewrites = run(tmp_path, read(table="t"), keep("a", "extract", "x > 1"), keep("b", "extract", "y > 1"))
    assert "it feeds 2 steps (a, b)" in rewrites[("extract", "predicate")].detail
    _, rewrites = run(tmp_path, read(table="t"), csv("out", "extract"))
    assert (
        "no transform.filter follows it ('out' is a filesystem.csv_writer)"
        in rewrites[("extract", "predicate")].detail
    )
    assert "'out' (filesystem.csv_writer) reads every column" in rewrites[("extract", "projection")].detail


# -- projection pushdown -----------------------------------------------------------------------------
def test_only_the_columns_used_are_selected(tmp_path: Path) -> None:
    manifest, rewrites = run(
        tmp_path,
        read(query="SELECT * FROM orders"),
        keep("keep", "extract", "amount < 100", columns=["id", "note"]),
        csv("out", "keep"),
    )
    # The condition went into MySQL, so the filter no longer reads amount: only id and note travel.
    assert config(manifest, "extract")["query"] == "SELECT `id`, `note` FROM `orders` WHERE `amount` < 100"
    assert rewrites[("extract", "projection")].detail == "reads 2 columns: id, note"


def test_projection_through_filters_into_an_aggregator(tmp_path: Path) -> None:
    manifest, _ = run(
        tmp_path,
        read(table="orders"),
        keep("keep", "extract", "status = 'paid'"),
        aggregate("agg", "keep", ["region"], {"total": {"fn": "sum", "column": "amount"}, "n": "count"}),
        csv("out", "agg"),
    )
    assert config(manifest, "extract")["columns"] == ["status", "region", "amount"]


def test_projection_unions_the_consumers_and_stops_at_a_join(tmp_path: Path) -> None:
    manifest, _ = run(
        tmp_path,
        read(table="orders"),
        aggregate("by_region", "extract", ["region"], {"n": "count"}),
        aggregate("by_day", "extract", ["day"], {"amount": "sum"}),
    )
    assert config(manifest, "extract")["columns"] == ["region", "day", "amount"]
    join = {
        "id": "join",
        "component": "transform.joiner",
        "mode": "transform",
        "depends_on": ["extract", "other"],
        "config": {"on": ["id"]},
    }
    _, rewrites = run(tmp_path, read(table="orders"), read("other", table="x"), join)
    assert "'join' (transform.joiner) reads every column" in rewrites[("extract", "projection")].detail


def test_projection_refusals(tmp_path: Path) -> None:
    _, rewrites = run(
        tmp_path, read(table="t"), aggregate("agg", "extract", [], {"n": "count"}), csv("o", "agg")
    )
    assert rewrites[("extract", "projection")].detail == "no step after it reads a column by name"
    _, rewrites = run(
        tmp_path, read(table="t", columns=["a"]), aggregate("agg", "extract", ["a"], {"n": "count"})
    )
    assert rewrites[("extract", "projection")].detail == "it already reads only the columns used"
    _, rewrites = run(
        tmp_path, read(query="SELECT a, b FROM t"), aggregate("agg", "extract", ["a", "b"], {"n": "count"})
    )
    assert rewrites[("extract", "projection")].detail == "the query already selects only the columns used"
    _, rewrites = run(
        tmp_path, read(query="SELECT a FROM t"), aggregate("agg", "extract", ["b"], {"n": "count"})
    )
    assert (
        "column 'b' is not in the query's result (its columns are a)"
        in rewrites[("extract", "projection")].detail
    )


def test_projection_keeps_the_key_and_what_order_by_refers_to(tmp_path: Path) -> None:
    manifest, _ = run(
        tmp_path,
        read(query="SELECT id, a, b AS s, c FROM t ORDER BY s", key="id"),
        aggregate("agg", "extract", ["a"], {"n": "count"}),
    )
    assert config(manifest, "extract")["query"] == "SELECT `id`, `a`, `b` AS `s` FROM `t` ORDER BY `s`"
    manifest, _ = run(
        tmp_path,
        read(query="SELECT DISTINCT a, b FROM t"),
        aggregate("agg", "extract", ["a"], {"n": "count"}),
    )
    assert (
        config(manifest, "extract")["query"]
        == "SELECT `a` FROM (SELECT DISTINCT `a`, `b` FROM `t`) AS `_osiris_opt`"
    )


# -- partitions --------------------------------------------------------------------------------------
def test_partition_bounds_outside_the_condition_are_pruned(tmp_path: Path) -> None:
    partition = {"column": "id", "bounds": [100, 200, 300, 400]}
    manifest, rewrites = run(
        tmp_path,
        read(table="t", partition=partition),
        keep("keep", "extract", "id >= 150 AND id < 300"),
        csv("o", "keep"),
    )
    assert config(manifest, "extract")["partition"] == {"column": "id", "bounds": [200]}
    assert "3 of 5 ranges of 'id' hold no row" in rewrites[("extract", "partitions")].detail
    assert plan_manifest(manifest, REGISTRY).stages[0].partitions == 2


@pytest.mark.parametrize(
    ("where", "bounds"),
    [
        ("id BETWEEN 0 AND 99", None),  # partition 0 alone
        ("id IN (250, 260)", None),
        ("id = 100", None),  # 100 opens partition 1: lower bounds are inclusive
        ("id > 400", None),
        ("id > 100 AND id <= 200", [200]),  # 200 opens partition 2
        ("id < 150 OR id > 350", [100, 200, 300, 400]),  # an OR is not a range: nothing pruned
    ],
)
def test_pruning_edges(tmp_path: Path, where: str, bounds: list[int] | None) -> None:
    partition = {"column": "id", "bounds": [100, 200, 300, 400]}
    manifest, _ = run(
        tmp_path, read(table="t", partition=partition), keep("keep", "extract", where), csv("o", "keep")
    )
    assert (config(manifest, "extract").get("partition") or {}).get("bounds") == bounds


def test_a_query_read_left_with_one_range_stays_partitioned_once(tmp_path: Path) -> None:
    partition = {"column": "id", "bounds": [100]}
    manifest, _ = run(
        tmp_path, read(query="SELECT * FROM t", partition=partition), keep("k", "extract", "id < 50")
    )
    assert config(manifest, "extract")["partition"] == {"column": "id", "partitions": 1}


def test_computed_partitions_are_explained(tmp_path: Path) -> None:
    partition = {"column": "id", "partitions": 4}
    _, rewrites = run(
        tmp_path, read(table="t", partition=partition), keep("k", "extract", "id < 50"), csv("o", "k")
    )
    assert "cut at run time between MIN and MAX of the rows the pushed condition keeps" in (
        rewrites[("extract", "partitions")].detail
    )


# -- determinism, records, display -------------------------------------------------------------------
def test_optimized_manifest_is_deterministic_and_idempotent(tmp_path: Path) -> None:
    steps = (
        read(query="SELECT * FROM orders", partition={"column": "id", "bounds": [10, 20]}),
        keep("keep", "extract", "id > 12 AND status = 'x'", columns=["id"]),
        csv("out", "keep"),
    )
    first = optimize(compiled(tmp_path, *steps), REGISTRY)[0].to_json()
    second = optimize(compiled(tmp_path, *steps), REGISTRY)[0].to_json()
    assert first == second
    once = Manifest.from_dict(__import__("json").loads(first))
    again, rewrites = optimize(once, REGISTRY)
    assert [s.config for s in again.steps] == [s.config for s in once.steps]
    assert not any(r.applied for r in rewrites)


def test_records_travel_in_the_manifest(tmp_path: Path) -> None:
    plain = compiled(tmp_path, read(table="t"), keep("k", "extract", "id < 5"), csv("o", "k"))
    assert "optimizations" not in plain.to_dict()  # a manifest as compiled keeps its bytes
    optimized, rewrites = optimize(plain, REGISTRY)
    body = optimized.to_dict()
    assert body["optimizations"] == [r.to_dict() for r in rewrites]
    assert Manifest.from_dict(body) == optimized
    assert [Rewrite.from_dict(r) for r in body["optimizations"]] == rewrites
    assert optimized.fingerprint() != plain.fingerprint()


def test_plan_text_and_summaries(tmp_path: Path) -> None:
    _, rewrites = optimize(
        compiled(
            tmp_path,
            read(query="SELECT * FROM orders"),
            keep("keep", "extract", "id < 5"),
            csv("out", "keep"),
            read("raw", query="SHOW TABLES"),
            csv("out2", "raw"),
        ),
        REGISTRY,
    )
    text = describe_rewrites(rewrites)
    assert (
        "      original:  SELECT * FROM orders\n      rewritten: SELECT * FROM `orders` WHERE `id` < 5"
        in text
    )
    assert "not rewritten: predicate: no transform.filter follows it" in text
    summaries = read_summaries(rewrites)
    assert summaries[0]["rewritten"] == "SELECT * FROM `orders` WHERE `id` < 5"
    assert summaries[1]["rewritten"] is None and summaries[1]["original"] == "SHOW TABLES"
    assert describe_rewrites([], enabled=False).startswith("query optimizer: off")
