"""Osiris compatibility through the real `osiris-flight` CLI, coordinator and worker processes:
Osiris-style drivers (tests/osiris_plugin.py, loaded by OSIRIS_FLIGHT_PLUGINS) and duckdb.processor
in OML 0.1.0 pipelines written as Osiris writes them."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from tests.cluster.conftest import assert_no_orphans, latest_run_dir, osiris

pytestmark = pytest.mark.cluster

ITEMS = pa.table({"sku": ["a", "b", "c", "d"], "qty": [1, 2, 3, 4], "price": [2.5, 1.0, 4.0, 0.5]})
CUSTOMERS = pa.table({"customer_id": [1, 2, 3], "name": ["Ada", "Bő", "Çağ 😀"]})
ORDERS = pa.table(
    {"order_id": [10, 11, 12, 13], "customer_id": [1, 1, 3, 9], "amount": [5.0, 7.5, 1.25, 3.0]}
)

DRIVERS = """\
oml_version: "0.1.0"
name: osiris-drivers
steps:
  - id: extract-items
    component: filesystem.csv_extractor
    mode: read
    config: {path: items.csv}
  - id: enrich-items
    component: demo.enrich
    mode: transform
    config: {column: value}
  - id: spec-enrich
    component: demo.spec_enrich
    mode: transform
  - id: write-items
    component: filesystem.csv_writer
    mode: write
    config: {path: out/items.csv}
  - id: extract-customers
    component: filesystem.csv_extractor
    mode: read
    config: {path: customers.csv}
  - id: extract.orders
    component: filesystem.csv_extractor
    mode: read
    config: {path: orders.csv}
  - id: match
    component: demo.match
    mode: transform
    needs: [extract-customers, extract.orders]
    config: {"on": customer_id, expect_keys: [df_extract_customers, df_extract_orders]}
  - id: write-matched
    component: demo.csv_writer
    mode: write
    needs: [match]
    config: {path: out/matched.csv}
"""


def write_inputs(workdir: Path) -> None:
    pacsv.write_csv(ITEMS, workdir / "items.csv")
    pacsv.write_csv(CUSTOMERS, workdir / "customers.csv")
    pacsv.write_csv(ORDERS, workdir / "orders.csv")


def test_osiris_drivers_run_in_a_pipeline(workdir: Path) -> None:
    write_inputs(workdir)
    (workdir / "pipeline.yaml").write_text(DRIVERS)
    result = osiris(["run", "pipeline.yaml", "--workers", "2", "--json"], workdir)
    assert result.code == 0, result.stderr + result.stdout
    items = pd.read_csv(workdir / "out" / "items.csv")
    assert items["value"].tolist() == [2.5, 2.0, 12.0, 2.0]
    assert items["total"].tolist() == items["value"].tolist()
    matched = pd.read_csv(workdir / "out" / "matched.csv")
    assert matched[["order_id", "name"]].values.tolist() == [[10, "Ada"], [11, "Ada"], [12, "Çağ 😀"]]
    run_dir = latest_run_dir(workdir)
    assert run_dir is not None
    summary = json.loads((run_dir / "artifacts" / "enrich-items" / "summary.json").read_text())
    assert summary == {"step": "enrich-items", "rows": 4, "column": "value"}
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any(
        m["metric"] == "rows_enriched" and m["value"] == 4 and m["step"] == "enrich-items" for m in metrics
    )
    assert_no_orphans(workdir)


SQL = """\
oml_version: "0.1.0"
name: osiris-duckdb
steps:
  - id: extract-customers
    component: filesystem.csv_extractor
    mode: read
    config: {path: customers.csv}
  - id: extract.orders
    component: filesystem.csv_extractor
    mode: read
    config: {path: orders.csv}
  - id: customer-totals
    component: duckdb.processor
    mode: transform
    needs: [extract-customers, extract.orders]
    config:
      query: |
        SELECT c.customer_id, c.name, count(o.order_id) AS orders, coalesce(sum(o.amount), 0) AS total
        FROM df_extract_customers c LEFT JOIN {orders} o USING (customer_id)
        GROUP BY ALL ORDER BY c.customer_id
  - id: write-totals
    component: filesystem.csv_writer
    mode: write
    config: {path: out/totals.csv}
"""


def test_duckdb_processor_joins_two_upstream_steps(workdir: Path) -> None:
    write_inputs(workdir)
    (workdir / "pipeline.yaml").write_text(SQL.replace("{orders}", "df_extract_orders"))
    result = osiris(["run", "pipeline.yaml", "--workers", "2", "--json"], workdir)
    assert result.code == 0, result.stderr + result.stdout
    totals = pd.read_csv(workdir / "out" / "totals.csv")
    assert totals.values.tolist() == [[1, "Ada", 2, 12.5], [2, "Bő", 0, 0.0], [3, "Çağ 😀", 1, 1.25]]
    assert_no_orphans(workdir)


def test_duckdb_processor_errors_reach_the_user(workdir: Path) -> None:
    write_inputs(workdir)
    (workdir / "pipeline.yaml").write_text(SQL.replace("{orders}", "df_orders"))
    result = osiris(["run", "pipeline.yaml", "--workers", "2"], workdir)
    assert result.code == 1
    output = result.stdout + result.stderr
    assert "error: step 'customer-totals': config.query reads table 'df_orders'" in output
    assert "available tables: df_extract_customers, df_extract_orders" in output
    assert "Traceback" not in output
    (workdir / "pipeline.yaml").write_text(
        SQL.replace("{orders}", "df_extract_orders").replace("GROUP BY ALL", "GROUP ALL")
    )
    invalid = osiris(["validate", "pipeline.yaml"], workdir)
    assert invalid.code == 2
    assert "customer-totals" in invalid.stderr and "DuckDB cannot parse the query" in invalid.stderr
    assert_no_orphans(workdir)
