"""An Osiris OML 0.1.0 pipeline, written as Osiris writes it (docs/examples/mysql_to_local_csv_all_
tables.yaml in the Osiris repository: ``mysql.extractor`` with ``connection: "@mysql.<alias>"`` and
``query``, ``filesystem.csv_writer`` with ``needs``), plus a ``duckdb.processor`` join of two
extracted tables, run through the real CLI on the real MariaDB with an Osiris
``osiris_connections.yaml``. Every CSV file must equal its table: the same columns (in alphabetical
order, as Osiris' csv_writer writes them), and the same rows value for value (NULLs, DECIMAL
scale, microseconds, BIGINT UNSIGNED extremes and 4-byte UTF-8 included)."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from tests.cluster.conftest import assert_no_orphans, osiris
from tests.mysql.conftest import MySQLServer
from tests.mysql.seed import PRIMARY_KEYS, TABLES, seed

pytestmark = pytest.mark.cluster

SCALE = 3
TOTALS_QUERY = """
SELECT c.customer_id, c.email, count(o.order_id) AS orders, coalesce(sum(o.total), 0) AS revenue
FROM {customers} c LEFT JOIN {orders} o ON o.customer_id = c.customer_id
GROUP BY c.customer_id, c.email
ORDER BY c.customer_id
"""


def osiris_pipeline() -> str:
    """The pipeline text. order_items is read with ``table`` (the other Osiris form), the rest with
    ``query``; writers take Osiris's csv_writer keys (path, delimiter, header, encoding)."""
    lines = ['oml_version: "0.1.0"', "name: mysql-to-local-csv-all-tables", "steps:"]
    for table in TABLES:
        step = table.replace("_", "-")
        source = "table: order_items" if table == "order_items" else f'query: "SELECT * FROM {table}"'
        lines += [
            f"# --- {table.upper()} ---",
            f"- id: extract-{step}",
            "  component: mysql.extractor",
            "  mode: read",
            "  config:",
            '    connection: "@mysql.shop"',
            f"    {source}",
            "",
            f"- id: write-{step}-csv",
            "  component: filesystem.csv_writer",
            "  mode: write",
            f'  needs: [ "extract-{step}" ]',
            "  config:",
            f'    path: "./output/{table}.csv"',
            '    delimiter: ","',
            "    header: true",
            '    encoding: "utf-8"',
            "",
        ]
    query = TOTALS_QUERY.format(customers="df_extract_customers", orders="df_extract_orders")
    lines += [
        "# --- DUCKDB: revenue per customer ---",
        "- id: customer-totals",
        "  component: duckdb.processor",
        "  mode: transform",
        '  needs: [ "extract-customers", "extract-orders" ]',
        "  config:",
        "    query: |",
        *[f"      {line}" for line in query.strip().splitlines()],
        "",
        "- id: write-customer-totals-csv",
        "  component: filesystem.csv_writer",
        "  mode: write",
        '  needs: [ "customer-totals" ]',
        "  config:",
        '    path: "./output/customer_totals.csv"',
    ]
    return "\n".join(lines) + "\n"


def arrow_type(data_type: str, column_type: str, precision: Any, scale: Any) -> pa.DataType:
    """The Arrow type a column's CSV text is read back as, from MySQL's own column metadata."""
    if data_type == "decimal":
        return pa.decimal128(int(precision), int(scale))
    if data_type in ("tinyint", "smallint", "mediumint", "int", "bigint"):
        return pa.uint64() if data_type == "bigint" and "unsigned" in column_type else pa.int64()
    if data_type in ("double", "float"):
        return pa.float64()
    if data_type in ("datetime", "timestamp"):
        return pa.timestamp("us")
    if data_type == "date":
        return pa.date32()
    return pa.string()


def table_columns(server: MySQLServer, table: str) -> list[tuple[str, pa.DataType]]:
    rows = server.execute(
        "SELECT column_name, data_type, column_type, numeric_precision, numeric_scale "
        "FROM information_schema.columns WHERE table_schema = %s AND table_name = %s "
        "ORDER BY ordinal_position",
        (server.database, table),
    )
    return [(str(name), arrow_type(str(dt_), str(ct), p, s)) for name, dt_, ct, p, s in rows]


def read_back(path: Path, columns: list[tuple[str, pa.DataType]]) -> pa.Table:
    """The CSV as the writer's convention defines it: an empty unquoted field is NULL, "" is ''."""
    return pacsv.read_csv(
        path,
        read_options=pacsv.ReadOptions(use_threads=False),
        parse_options=pacsv.ParseOptions(newlines_in_values=True),
        convert_options=pacsv.ConvertOptions(
            column_types=dict(columns),
            null_values=[""],
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
        ),
    )


def sorted_rows(
    rows: Iterator[tuple[Any, ...]] | list[tuple[Any, ...]], key: list[int]
) -> list[tuple[Any, ...]]:
    return sorted(rows, key=lambda row: tuple(row[i] for i in key))


@pytest.fixture(scope="module")
def shop(mysql_server: MySQLServer) -> dict[str, int]:
    conn = mysql_server.connect()
    try:
        return seed(conn, SCALE)
    finally:
        conn.close()


def test_seed_is_deterministic_and_mixed(mysql_server: MySQLServer, shop: dict[str, int]) -> None:
    assert (
        shop["products"] == 20 * SCALE and shop["customers"] == 50 * SCALE and shop["orders"] == 200 * SCALE
    )
    checksum = "CHECKSUM TABLE products, customers, orders, order_items"
    first = mysql_server.execute(checksum)
    conn = mysql_server.connect()
    try:
        seed(conn, SCALE)
    finally:
        conn.close()
    assert mysql_server.execute(checksum) == first
    assert mysql_server.execute("SELECT max(barcode), count(*) - count(barcode) FROM products") == [
        (2**64 - 1, 8)
    ]
    assert (
        mysql_server.execute("SELECT count(*) FROM customers WHERE full_name REGEXP '[😀-🫶]|[一-龥]'")[0][0]
        > 0
    )


def test_an_osiris_pipeline_copies_every_table_to_csv_unchanged(
    tmp_path: Path, mysql_server: MySQLServer, shop: dict[str, int]
) -> None:
    mysql_server.connections_yaml(tmp_path / "osiris_connections.yaml", alias="shop")
    (tmp_path / "pipeline.yaml").write_text(osiris_pipeline(), encoding="utf-8")
    result = osiris(["run", "pipeline.yaml", "--workers", "2", "--json"], tmp_path, timeout=300)
    assert result.code == 0, result.stdout + result.stderr
    for table in TABLES:
        columns = table_columns(mysql_server, table)
        path = tmp_path / "output" / f"{table}.csv"
        with path.open(encoding="utf-8", newline="") as handle:
            header = next(csv.reader(handle))
        assert header == sorted(name for name, _ in columns), table
        from_csv = read_back(path, columns).select([name for name, _ in columns])
        assert from_csv.num_rows == shop[table], table
        names = [name for name, _ in columns]
        key = [names.index(k) for k in PRIMARY_KEYS[table]]
        expected = sorted_rows(mysql_server.execute(f"SELECT * FROM `{table}`"), key)
        actual = sorted_rows([tuple(r.values()) for r in from_csv.to_pylist()], key)
        for want, got in zip(expected, actual, strict=True):
            assert got == want, (table, want, got)
    totals = list(
        csv.reader((tmp_path / "output" / "customer_totals.csv").open(encoding="utf-8", newline=""))
    )
    mysql_totals = mysql_server.execute(TOTALS_QUERY.format(customers="customers", orders="orders"))
    assert totals[0] == ["customer_id", "email", "orders", "revenue"]
    assert [(int(a), b, int(c), Decimal(d)) for a, b, c, d in totals[1:]] == [
        (int(a), b, int(c), Decimal(d)) for a, b, c, d in mysql_totals
    ]
    assert_no_orphans(tmp_path)
