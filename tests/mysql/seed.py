"""A seeded, deterministic shop database for the Osiris compatibility tests (and benches).

``seed(conn, scale)`` (re)creates four related tables and fills them from a fixed random seed, so
the same ``scale`` always gives byte-identical data:

* ``products``: INT UNSIGNED key, BIGINT UNSIGNED barcode up to 2^64-1, VARCHAR names with 4-byte
  UTF-8, DECIMAL(10,2) price, nullable DOUBLE, TINYINT(1) flag, DATETIME(6).
* ``customers``: BIGINT key, emails, names with emoji / CJK / quotes / commas, nullable CHAR(2),
  nullable DECIMAL(12,2), DATE, nullable DATETIME, TEXT notes with newlines or NULL.
* ``orders``: BIGINT key, customer foreign key, ENUM status, DATETIME(6), DECIMAL(14,2) total,
  nullable DECIMAL(5,4) discount, nullable VARCHAR.
* ``order_items``: composite key (order_id, line_no SMALLINT), INT UNSIGNED product, INT quantity,
  DECIMAL(10,2) unit price.

About ``20 * scale`` products, ``50 * scale`` customers, ``200 * scale`` orders and 1-4 items per
order. NULLs appear in every nullable column, and so do the extremes of the numeric types.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Iterable, Sequence
from decimal import Decimal
from typing import Any

TABLES = ("products", "customers", "orders", "order_items")
PRIMARY_KEYS = {
    "products": ("product_id",),
    "customers": ("customer_id",),
    "orders": ("order_id",),
    "order_items": ("order_id", "line_no"),
}

DDL = {
    "products": """
        CREATE TABLE products (
          product_id INT UNSIGNED NOT NULL PRIMARY KEY,
          sku VARCHAR(32) NOT NULL,
          name VARCHAR(200) NOT NULL,
          barcode BIGINT UNSIGNED NULL,
          price DECIMAL(10,2) NOT NULL,
          weight_kg DOUBLE NULL,
          active TINYINT(1) NOT NULL,
          created_at DATETIME(6) NOT NULL
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin""",
    "customers": """
        CREATE TABLE customers (
          customer_id BIGINT NOT NULL PRIMARY KEY,
          email VARCHAR(255) NOT NULL,
          full_name VARCHAR(200) NOT NULL,
          country CHAR(2) NULL,
          credit_limit DECIMAL(12,2) NULL,
          signup_date DATE NOT NULL,
          last_login DATETIME NULL,
          notes TEXT NULL
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin""",
    "orders": """
        CREATE TABLE orders (
          order_id BIGINT NOT NULL PRIMARY KEY,
          customer_id BIGINT NOT NULL,
          status ENUM('new','paid','shipped','cancelled') NOT NULL,
          ordered_at DATETIME(6) NOT NULL,
          total DECIMAL(14,2) NOT NULL,
          discount DECIMAL(5,4) NULL,
          note VARCHAR(500) NULL,
          KEY (customer_id)
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin""",
    "order_items": """
        CREATE TABLE order_items (
          order_id BIGINT NOT NULL,
          line_no SMALLINT NOT NULL,
          product_id INT UNSIGNED NOT NULL,
          quantity INT NOT NULL,
          unit_price DECIMAL(10,2) NOT NULL,
          PRIMARY KEY (order_id, line_no)
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin""",
}

FIRST = ["Ada", "Bő", "Çağ", "Dörte", "Émile", "Fiona", "Grzegorz", "Hana", "Ilse", "José", "Kǎi", "Łucja"]
LAST = ["Lovelace", "O'Brien", "Nguyễn", "Smith, Jr.", 'the "Great"', "山田", "Øster", "Müller", "🦊 Fox"]
WORDS = ["lamp", "chair", "mug", "kite", "🎸 guitar", "ノート", "tea, green", 'say "hi"', "𝄞 clef", "Ωmega"]
NOTES = ["", "call back", "line one\nline two", "émoji 😀 and 𠜎𠝹", 'comma, quote " and tab\t', "   "]
COUNTRIES = ["CZ", "DE", "US", "JP", "BR", None]
STATUSES = ["new", "paid", "shipped", "cancelled"]
EPOCH = dt.datetime(2020, 1, 1)


def _rows(scale: int) -> dict[str, list[tuple[Any, ...]]]:
    rng = random.Random(20240229 + scale)
    n_products, n_customers, n_orders = 20 * scale, 50 * scale, 200 * scale
    products = []
    for pid in range(1, n_products + 1):
        barcode = 2**64 - 1 if pid == 1 else 0 if pid == 2 else None if pid % 7 == 0 else rng.getrandbits(64)
        products.append(
            (
                pid,
                f"SKU-{pid:06d}",
                f"{rng.choice(WORDS)} {rng.choice(WORDS)} #{pid}",
                barcode,
                Decimal(rng.randint(1, 99_999_999)) / 100 if pid > 1 else Decimal("99999999.99"),
                None if pid % 5 == 0 else round(rng.uniform(0.001, 5000), 6),
                pid % 3 != 0,
                EPOCH + dt.timedelta(seconds=rng.randint(0, 10**8), microseconds=rng.randint(0, 999_999)),
            )
        )
    customers = []
    for cid in range(1, n_customers + 1):
        customers.append(
            (
                cid if cid > 1 else -(2**63),
                f"user{cid}@example.com",
                f"{rng.choice(FIRST)} {rng.choice(LAST)}",
                rng.choice(COUNTRIES),
                None if cid % 4 == 0 else Decimal(rng.randint(-99_999_999, 9_999_999_999)) / 100,
                dt.date(2015, 1, 1) + dt.timedelta(days=rng.randint(0, 3650)),
                None if cid % 3 == 0 else EPOCH + dt.timedelta(seconds=rng.randint(0, 10**8)),
                None if cid % 6 == 0 else rng.choice(NOTES),
            )
        )
    customer_ids = [c[0] for c in customers]
    orders, items = [], []
    for oid in range(1, n_orders + 1):
        lines = rng.randint(1, 4)
        line_items = []
        for line in range(1, lines + 1):
            product = products[rng.randrange(n_products)]
            line_items.append((oid, line, product[0], rng.randint(1, 50), product[4]))
        total = sum((q * p for _, _, _, q, p in line_items), Decimal("0.00"))
        orders.append(
            (
                oid if oid < n_orders else 2**63 - 1,
                rng.choice(customer_ids),
                rng.choice(STATUSES),
                EPOCH + dt.timedelta(seconds=rng.randint(0, 10**8), microseconds=rng.randint(0, 999_999)),
                total,
                None if oid % 3 else Decimal(rng.randint(0, 9999)) / 10000,
                None if oid % 2 else f"{rng.choice(WORDS)} — {rng.choice(NOTES)}",
            )
        )
        items += [(orders[-1][0], *rest) for _, *rest in line_items]
    return {"products": products, "customers": customers, "orders": orders, "order_items": items}


def seed(conn: Any, scale: int = 1) -> dict[str, int]:
    """(Re)create the tables in ``conn``'s current database and fill them; returns rows per table.

    ``conn`` is a pymysql connection (utf8mb4). Deterministic: the same ``scale`` gives the same
    rows. The caller owns the database; the tables are dropped first if they exist.
    """
    if scale < 1:
        raise ValueError("scale must be at least 1")
    data = _rows(scale)
    with conn.cursor() as cur:
        for table in reversed(TABLES):
            cur.execute(f"DROP TABLE IF EXISTS `{table}`")
        for table in TABLES:
            cur.execute(DDL[table])
            _insert(cur, table, data[table])
    conn.commit()
    return {table: len(rows) for table, rows in data.items()}


def _insert(cur: Any, table: str, rows: Sequence[tuple[Any, ...]], chunk: int = 1000) -> None:
    if not rows:
        return
    marks = "(" + ", ".join(["%s"] * len(rows[0])) + ")"
    for start in range(0, len(rows), chunk):
        part = rows[start : start + chunk]
        cur.execute(f"INSERT INTO `{table}` VALUES " + ", ".join([marks] * len(part)), _flat(part))


def _flat(rows: Iterable[tuple[Any, ...]]) -> list[Any]:
    return [value for row in rows for value in row]
