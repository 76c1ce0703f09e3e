"""duckdb.processor: Osiris's table naming, any number of inputs, streaming in and out of a real
DuckDB with spilling, and errors that name the step and carry DuckDB's message."""

from __future__ import annotations

import contextlib
import datetime as dt
import decimal
import hashlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pyarrow as pa
import pytest

from osiris_flight.components.base import Cancelled
from osiris_flight.components.duckdb_processor import DuckDBProcessor, check_config
from osiris_flight.components.step_names import dataframe_keys, sanitize_step_id
from osiris_flight.data.rowstream import RowStream
from osiris_flight.errors import TerminalError, is_transient
from tests.components.helpers import collect, failing_stream, make_ctx, stream_of

ORDERS = pa.table(
    {
        "order_id": [1, 2, 3, 4, 5],
        "customer_id": [10, 11, 10, 12, 13],
        "amount": pa.array(
            [decimal.Decimal(v) for v in ("10.50", "3.25", "7.00", "99.99", "1.00")], pa.decimal128(10, 2)
        ),
    }
)
CUSTOMERS = pa.table({"customer_id": [10, 11, 12], "name": ["Ada", "Bő", "Çağ 😀"]})
PRODUCTS = pa.table({"customer_id": [10, 12], "vip": [True, False]})


def run(tmp_path: Path, query: str, inputs: dict[str, RowStream], **ctx_extra: object) -> pa.Table:
    ctx = make_ctx(tmp_path, {"query": query}, step_id="sql", **ctx_extra)  # type: ignore[arg-type]
    return collect(DuckDBProcessor(ctx).apply(inputs))


def test_osiris_sanitization_rules() -> None:
    assert sanitize_step_id("extract-movies") == "extract_movies"
    assert sanitize_step_id("extract.reviews") == "extract_reviews"
    assert sanitize_step_id("123movies") == "_123movies"
    assert dataframe_keys(["extract-movies", "x"]) == {"extract-movies": "df_extract_movies", "x": "df_x"}
    keys = dataframe_keys(["a-b", "a.b"])
    assert keys == {
        "a-b": "df_a_b_" + hashlib.sha256(b"a-b").hexdigest()[:8],
        "a.b": "df_a_b_" + hashlib.sha256(b"a.b").hexdigest()[:8],
    }


def test_multi_input_query_over_sanitized_table_names(tmp_path: Path) -> None:
    query = """
        SELECT c.name, count(*) AS orders, sum(o.amount) AS total, coalesce(p.vip, false) AS vip
        FROM df_extract_orders o
        JOIN df_extract_customers c USING (customer_id)
        LEFT JOIN df__3products p USING (customer_id)
        GROUP BY ALL ORDER BY c.name
    """
    out = run(
        tmp_path,
        query,
        {
            "extract-orders": stream_of(ORDERS, 2),
            "extract.customers": stream_of(CUSTOMERS, 2),
            "3products": stream_of(PRODUCTS),
        },
    ).to_pandas()
    expected = (
        ORDERS.to_pandas()
        .merge(CUSTOMERS.to_pandas(), on="customer_id")
        .merge(PRODUCTS.to_pandas(), on="customer_id", how="left")
        .groupby("name", as_index=False)
        .agg(orders=("order_id", "count"), total=("amount", "sum"), vip=("vip", "max"))
        .sort_values("name", ignore_index=True)
    )
    expected["vip"] = expected["vip"].fillna(False).astype(bool)
    assert out["name"].tolist() == expected["name"].tolist() == ["Ada", "Bő", "Çağ 😀"]
    assert out["orders"].tolist() == expected["orders"].tolist()
    assert out["total"].tolist() == expected["total"].tolist()
    assert out["vip"].tolist() == expected["vip"].tolist()


def test_colliding_step_ids_use_hashed_names(tmp_path: Path) -> None:
    keys = dataframe_keys(["a-b", "a.b"])
    query = (
        f"SELECT (SELECT count(*) FROM {keys['a-b']}) AS left_rows, (SELECT count(*) FROM {keys['a.b']}) AS r"
    )
    out = run(tmp_path, query, {"a-b": stream_of(ORDERS), "a.b": stream_of(CUSTOMERS)})
    assert out.to_pylist() == [{"left_rows": 5, "r": 3}]


def test_a_query_without_inputs_generates_rows(tmp_path: Path) -> None:
    out = run(tmp_path, "SELECT i AS id, 'user_' || i AS username FROM generate_series(1, 4) s(i)", {})
    assert out.to_pylist() == [{"id": i, "username": f"user_{i}"} for i in range(1, 5)]


def test_a_table_read_twice_is_materialized_first(tmp_path: Path) -> None:
    query = """
        SELECT a.order_id, b.order_id AS other FROM df_o a JOIN df_o b ON a.customer_id = b.customer_id
        WHERE a.order_id < b.order_id AND a.amount > (SELECT min(amount) FROM df_o)
    """
    out = run(tmp_path, query, {"o": stream_of(ORDERS, 1)})
    assert out.to_pylist() == [{"order_id": 1, "other": 3}]


def test_several_statements_run_and_the_last_is_the_output(tmp_path: Path) -> None:
    query = """
        CREATE TEMPORARY TABLE big AS SELECT * FROM df_o WHERE amount > 5;
        SELECT order_id FROM big ORDER BY order_id
    """
    out = run(tmp_path, query, {"o": stream_of(ORDERS)})
    assert out.column("order_id").to_pylist() == [1, 3, 4]


def test_types_and_nulls_pass_through_unchanged(tmp_path: Path) -> None:
    table = pa.table(
        {
            "i8": pa.array([-128, None, 127], pa.int8()),
            "u64": pa.array([0, None, 2**64 - 1], pa.uint64()),
            "dec": pa.array(
                [decimal.Decimal("-99999999.9999"), None, decimal.Decimal("0.0001")], pa.decimal128(12, 4)
            ),
            "f64": [1.5, None, -0.0],
            "s": ["plain", None, "4-byte 😀𝄞"],
            "b": pa.array([b"\x00\xff", None, b""], pa.binary()),
            "ok": [True, None, False],
            "d": pa.array([dt.date(1970, 1, 1), None, dt.date(9999, 12, 31)]),
            "ts": pa.array(
                [dt.datetime(2024, 2, 29, 23, 59, 59, 999999), None, dt.datetime(1, 1, 1)], pa.timestamp("us")
            ),
            "t": pa.array([dt.time(0, 0), None, dt.time(23, 59, 59, 999999)], pa.time64("us")),
        }
    )
    out = run(tmp_path, "SELECT * FROM df_t", {"t": stream_of(table, 1)})
    assert out.schema == table.schema
    assert out.equals(table)


def test_row_order_is_kept_without_order_by_and_batches_are_batch_rows(tmp_path: Path) -> None:
    ids = np.arange(300_000)
    table = pa.table({"id": ids, "keep": ids % 3 != 0})
    ctx = make_ctx(tmp_path, {"query": "SELECT id FROM df_t WHERE keep"}, step_id="sql", batch_rows=4096)
    stream = DuckDBProcessor(ctx).apply({"t": stream_of(table, 10_000)})
    sizes = [b.num_rows for b in stream.batches()]
    assert sizes[:-1] == [4096] * (len(sizes) - 1)
    stream2 = DuckDBProcessor(ctx).apply({"t": stream_of(table, 10_000)})
    assert collect(stream2).column("id").to_numpy().tolist() == ids[ids % 3 != 0].tolist()


def test_metrics_follow_osiris(tmp_path: Path) -> None:
    metrics: list[tuple[str, float, dict[str, object]]] = []
    ctx = make_ctx(
        tmp_path,
        {"query": "SELECT * FROM df_o WHERE amount > 5"},
        step_id="sql",
        log_metric=lambda name, value, **tags: metrics.append((name, value, tags)),
    )
    collect(DuckDBProcessor(ctx).apply({"o": stream_of(ORDERS)}))
    assert metrics == [("rows_read", 5, {"step": "sql"}), ("rows_written", 3, {"step": "sql"})]


# -- streaming and spilling ------------------------------------------------------------------------
BIG_ROWS = 8_000_000
CHUNK = 65_536


def big_batches() -> Iterator[pa.RecordBatch]:
    """~450 MB of Arrow, made on the fly: nothing holds the whole input but DuckDB."""
    pad = pa.array(np.full(CHUNK, "abcdefghijklmnopqrstuvwxyz0123456789"))
    for start in range(0, BIG_ROWS, CHUNK):
        ids = np.arange(start, min(start + CHUNK, BIG_ROWS), dtype=np.int64)
        # g is a permutation of the ids, so sorting by it is a full sort of the input.
        yield pa.record_batch({"id": ids, "g": (ids * 7_919) % BIG_ROWS, "pad": pad.slice(0, len(ids))})


def test_a_large_input_streams_in_and_duckdb_spills_under_a_small_memory_limit(tmp_path: Path) -> None:
    schema = next(big_batches()).schema
    input_bytes = sum(b.nbytes for b in big_batches())
    process = psutil.Process()
    base_rss = process.memory_info().rss
    seen = {"peak": base_rss, "spilled": 0}
    done = threading.Event()
    work = tmp_path / "work"

    def spill_bytes() -> int:
        # DuckDB creates and deletes its temp files while this walks them: a file (or the directory)
        # gone mid-walk counts as nothing.
        total = 0
        with contextlib.suppress(OSError):
            for f in work.rglob("*"):
                with contextlib.suppress(OSError):
                    total += f.stat().st_size if f.is_file() else 0
        return total

    def watch() -> None:
        while not done.is_set():
            seen["peak"] = max(seen["peak"], process.memory_info().rss)
            seen["spilled"] = max(seen["spilled"], spill_bytes())
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    ctx = make_ctx(
        tmp_path,
        {"query": "SELECT g, id FROM df_events ORDER BY g"},
        step_id="sort",
        batch_rows=65_536,
        memory_limit_bytes=64 << 20,
    )
    try:
        out = DuckDBProcessor(ctx).apply({"events": RowStream(big_batches(), schema)})
        rows, last, ordered = 0, -1, True
        for batch in out.batches():
            g = batch.column(0).to_numpy()
            ordered = ordered and g[0] > last and bool((np.diff(g) == 1).all())
            last = int(g[-1])
            rows += batch.num_rows
    finally:
        done.set()
        watcher.join()
    assert rows == BIG_ROWS and ordered and last == BIG_ROWS - 1
    assert seen["spilled"] > 8 << 20, f"DuckDB spilled only {seen['spilled']} bytes"
    growth = seen["peak"] - base_rss
    assert growth < 0.8 * input_bytes, (growth, input_bytes)
    assert not any(work.glob("duckdb-*")), "the spill directory is removed when the step ends"


# -- errors ----------------------------------------------------------------------------------------
def test_check_reports_a_syntax_error_with_duckdbs_message() -> None:
    (problem,) = check_config({"query": "SELEC * FROM df_x"})
    assert problem.field == "query"
    assert 'syntax error at or near "SELEC"' in problem.message
    assert check_config({"query": "SELECT 1"}) == []
    assert check_config({"query": "CREATE TEMP TABLE t AS SELECT 1; SELECT * FROM t"}) == []
    (blank,) = check_config({"query": "   "})
    assert "blank" in blank.message


def test_an_unknown_input_table_lists_the_available_ones(tmp_path: Path) -> None:
    with pytest.raises(TerminalError) as err:
        run(
            tmp_path,
            "SELECT * FROM df_extract_order",
            {"extract-orders": stream_of(ORDERS), "c": stream_of(CUSTOMERS)},
        )
    message = str(err.value)
    assert message.startswith("step 'sql': ")
    assert "'df_extract_order'" in message
    assert "available tables: df_extract_orders, df_c" in message


def test_sql_errors_name_the_step_and_carry_duckdbs_message(tmp_path: Path) -> None:
    with pytest.raises(TerminalError) as err:
        run(tmp_path, "SELECT no_such_column FROM df_o", {"o": stream_of(ORDERS)})
    assert str(err.value).startswith("step 'sql': DuckDB query failed: Binder Error")
    assert "no_such_column" in str(err.value)
    with pytest.raises(TerminalError) as err:  # a run-time error, raised while rows stream out
        query = "SELECT CASE WHEN order_id = 4 THEN error('order 4 is bad') ELSE order_id END FROM df_o"
        run(tmp_path, query, {"o": stream_of(ORDERS, 1)})
    assert "order 4 is bad" in str(err.value)
    assert not is_transient(err.value)


def test_an_upstream_failure_is_reraised_as_itself(tmp_path: Path) -> None:
    table = pa.table({"x": np.arange(100_000)})
    with pytest.raises(ConnectionError, match="upstream worker died") as err:
        run(tmp_path, "SELECT sum(x) FROM df_up", {"up": failing_stream(table, 1000, fail_after=5)})
    assert is_transient(err.value)


def test_a_cancelled_attempt_stops(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, {"query": "SELECT * FROM df_o"}, step_id="sql")
    stream = DuckDBProcessor(ctx).apply({"o": stream_of(ORDERS, 1)})
    ctx.cancel_event.set()
    with pytest.raises(Cancelled):
        collect(stream)


def test_work_files_are_removed_even_when_the_output_is_never_read(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, {"query": "SELECT * FROM df_o"}, step_id="sql")
    stream = DuckDBProcessor(ctx).apply({"o": stream_of(ORDERS)})
    assert any((tmp_path / "work").glob("duckdb-*"))
    del stream
    assert not any((tmp_path / "work").glob("duckdb-*"))
    assert os.path.isdir(tmp_path / "work")


def test_output_is_a_pandas_frame_too(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, {"query": "SELECT name FROM df_c ORDER BY name"}, step_id="sql")
    frames = list(DuckDBProcessor(ctx).apply({"c": stream_of(CUSTOMERS)}).read_batch(2))
    assert pd.concat(frames, ignore_index=True)["name"].tolist() == ["Ada", "Bő", "Çağ 😀"]


# -- lockdown: the query reaches its inputs and nothing else -------------------------------------
def test_sql_cannot_read_or_write_files_and_errors_carry_no_content(tmp_path: Path) -> None:
    secret = tmp_path / "worker.key_secret"
    secret.write_text("secret-key = 'S3CR3T-KEY-CONTENT'\n")
    hostname = Path("/etc/hostname").read_text().strip()
    attacks = [
        "SELECT * FROM read_text('/etc/hostname')",
        "SELECT * FROM read_blob('/proc/self/environ')",
        f"SELECT CAST(content AS INTEGER) FROM read_text('{secret}')",
        f"SELECT * FROM read_csv('{secret}', columns = {{'line': 'VARCHAR'}})",
        f"SELECT * FROM sniff_csv('{secret}')",
        f"SELECT * FROM glob('{tmp_path}/*')",
        f"COPY (SELECT 1 AS x) TO '{tmp_path / 'copied.csv'}'; SELECT 1",
        f"ATTACH '{tmp_path / 'attached.db'}' AS a; SELECT 1",
        "SELECT * FROM read_csv('https://example.com/data.csv')",
        "SET enable_external_access = true; SELECT * FROM read_text('/etc/hostname')",
    ]
    for query in attacks:
        with pytest.raises(TerminalError) as err:
            run(tmp_path, query, {"o": stream_of(ORDERS)})
        message = str(err.value)
        assert message.startswith("step 'sql': DuckDB query failed: "), message
        assert "disabled by configuration" in message or "configuration has been locked" in message, message
        assert "S3CR3T" not in message and (not hostname or hostname not in message), message
        assert not is_transient(err.value)
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["worker.key_secret"]


def test_settings_the_engine_needs_are_set_before_the_lock(tmp_path: Path) -> None:
    query = (
        "SELECT current_setting('enable_external_access') AS ext, current_setting('lock_configuration') AS "
        "locked, current_setting('temp_directory') AS temp, current_setting('threads') AS threads"
    )
    (row,) = run(tmp_path, query, {}).to_pylist()
    assert row["ext"] is False and row["locked"] is True
    assert row["temp"].startswith(str(tmp_path)) and int(row["threads"]) >= 1
