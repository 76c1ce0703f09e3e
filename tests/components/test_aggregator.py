"""transform.aggregator against pandas groupby on the same data, computed independently."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from osiris_flight.components import aggregator
from osiris_flight.components.aggregator import Aggregator
from osiris_flight.errors import TerminalError
from tests.components.helpers import assert_same_rows, collect, make_ctx, stream_of


def aggregate(
    tmp_path: Path, table: pa.Table, config: dict, rows_per_batch: int = 1000, batch_rows: int = 1000
):
    ctx = make_ctx(tmp_path, config, step_id="by_user", batch_rows=batch_rows)
    return Aggregator(ctx).apply({"events": stream_of(table, rows_per_batch)})


def events(rows: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)

    def nulled(values: np.ndarray, rate: float) -> list[object]:
        return [None if drop else v for v, drop in zip(values.tolist(), rng.random(rows) < rate, strict=True)]

    return pa.table(
        {
            "user_id": pa.array(nulled(rng.integers(0, 300, rows), 0.05), pa.int64()),
            "country": pa.array(nulled(rng.choice(["de", "fr", "it", "es"], rows), 0.03), pa.string()),
            "amount": pa.array(nulled(rng.integers(-50, 500, rows), 0.1), pa.int64()),
            "price": pa.array(nulled(np.round(rng.normal(20, 8, rows), 3), 0.1), pa.float64()),
            "product_id": pa.array(nulled(rng.integers(0, 40, rows), 0.1), pa.int64()),
        }
    )


def nullable_frame(table: pa.Table) -> pd.DataFrame:
    """pandas with masked dtypes, so NULL stays NULL (not NaN-with-float-cast)."""
    mapping = {pa.int64(): pd.Int64Dtype(), pa.float64(): pd.Float64Dtype()}
    return table.to_pandas(types_mapper=mapping.get)


AGGREGATIONS: dict[str, Any] = {
    "events": "count",
    "amount": "sum",
    "price_total": {"fn": "sum", "column": "price"},
    "cheapest": {"fn": "min", "column": "price"},
    "top_amount": {"fn": "max", "column": "amount"},
    "avg_price": {"fn": "avg", "column": "price"},
    "priced": {"fn": "count", "column": "price"},
    "products": {"fn": "count_distinct", "column": "product_id"},
}
CONFIG: dict[str, Any] = {"group_by": ["user_id", "country"], "aggregations": AGGREGATIONS}


def pandas_reference(table: pa.Table, keys: list[str]) -> pd.DataFrame:
    frame = nullable_frame(table)
    grouped = frame.groupby(keys, dropna=False, sort=False) if keys else frame.groupby(lambda _: 0)
    out = pd.DataFrame(
        {
            "events": grouped.size(),
            "amount": grouped["amount"].sum(min_count=1),
            "price_total": grouped["price"].sum(min_count=1),
            "cheapest": grouped["price"].min(),
            "top_amount": grouped["amount"].max(),
            "avg_price": grouped["price"].mean(),
            "priced": grouped["price"].count(),
            "products": grouped["product_id"].nunique(),
        }
    )
    return out.reset_index(drop=not keys)


def as_frame(table: pa.Table) -> pd.DataFrame:
    return nullable_frame(table)


@pytest.mark.parametrize("compact_rows", [aggregator.MIN_COMPACT_ROWS, 500])
def test_matches_pandas_on_200k_rows_in_small_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compact_rows: int
) -> None:
    monkeypatch.setattr(aggregator, "MIN_COMPACT_ROWS", compact_rows)
    table = events(200_000, seed=1)
    stream = aggregate(tmp_path, table, CONFIG, rows_per_batch=997, batch_rows=100)
    result = collect(stream)
    assert result.column_names == ["user_id", "country", *AGGREGATIONS]
    expected = pandas_reference(table, ["user_id", "country"])
    assert result.num_rows == len(expected)
    assert_same_rows(as_frame(result), expected, check_dtype=False, rtol=1e-9)
    keys = result.select(["user_id", "country"])
    assert keys.equals(keys.sort_by([("user_id", "ascending"), ("country", "ascending")]))
    assert result.slice(result.num_rows - 1).column("user_id").to_pylist() == [None]  # NULL keys last


def test_output_types(tmp_path: Path) -> None:
    table = pa.table(
        {
            "k": ["a", "a", "b"],
            "i32": pa.array([1, 2, None], pa.int32()),
            "u8": pa.array([200, 100, 1], pa.uint8()),
            "f32": pa.array([1.5, None, 2.5], pa.float32()),
            "flag": [True, True, None],
            "day": pa.array([dt.date(2024, 1, 2), dt.date(2024, 1, 1), None]),
        }
    )
    config = {
        "group_by": ["k"],
        "aggregations": {
            "n": "count",
            "i32": "sum",
            "u8": "sum",
            "f32": "sum",
            "flag": "sum",
            "m": {"fn": "mean", "column": "i32"},
            "first_day": {"fn": "min", "column": "day"},
            "days": {"fn": "count_distinct", "column": "day"},
        },
    }
    result = collect(aggregate(tmp_path, table, config))
    assert result.schema == pa.schema(
        [
            ("k", pa.string()),
            ("n", pa.int64()),
            ("i32", pa.int64()),
            ("u8", pa.int64()),
            ("f32", pa.float64()),
            ("flag", pa.int64()),
            ("m", pa.float64()),
            ("first_day", pa.date32()),
            ("days", pa.int64()),
        ]
    )
    assert result.to_pydict() == {
        "k": ["a", "b"],
        "n": [2, 1],
        "i32": [3, None],
        "u8": [300, 1],
        "f32": [1.5, 2.5],
        "flag": [2, None],
        "m": [1.5, None],
        "first_day": [dt.date(2024, 1, 1), None],
        "days": [2, 0],
    }


def test_milestone_example_and_config_order(tmp_path: Path) -> None:
    table = pa.table({"product_id": [2, 1, 2, 1, 3], "revenue": [5.0, 1.0, 2.5, None, 4.0]})
    config = {"group_by": ["product_id"], "aggregations": {"revenue": "sum", "event_count": "count"}}
    result = collect(aggregate(tmp_path, table, config, rows_per_batch=2))
    assert result.to_pydict() == {
        "product_id": [1, 2, 3],
        "revenue": [1.0, 7.5, 4.0],
        "event_count": [2, 2, 1],
    }


def test_global_aggregate_and_empty_inputs(tmp_path: Path) -> None:
    table = events(1000, seed=3)
    config = {"aggregations": AGGREGATIONS}
    result = collect(aggregate(tmp_path, table, config, rows_per_batch=64))
    expected = pandas_reference(table, [])
    pd.testing.assert_frame_equal(as_frame(result), expected, check_dtype=False, rtol=1e-9)

    empty = collect(aggregate(tmp_path, table.slice(0, 0), config))
    assert empty.to_pylist() == [
        {
            "events": 0,
            "amount": None,
            "price_total": None,
            "cheapest": None,
            "top_amount": None,
            "avg_price": None,
            "priced": 0,
            "products": 0,
        }
    ]
    grouped_empty = aggregate(tmp_path, table.slice(0, 0), CONFIG)
    assert grouped_empty.schema.names == ["user_id", "country", *AGGREGATIONS]
    assert collect(grouped_empty).num_rows == 0


def test_output_schema_is_known_before_reading(tmp_path: Path) -> None:
    stream = aggregate(tmp_path, events(10, seed=0), CONFIG)
    assert stream.schema.field("avg_price").type == pa.float64()
    assert stream.schema == collect(aggregate(tmp_path, events(10, seed=0), CONFIG)).schema


def test_rerun_gives_identical_output(tmp_path: Path) -> None:
    table = events(20_000, seed=5)
    first = collect(aggregate(tmp_path, table, CONFIG, rows_per_batch=333))
    second = collect(aggregate(tmp_path, table, CONFIG, rows_per_batch=333))
    assert first.equals(second)


def test_output_batches_are_batch_rows(tmp_path: Path) -> None:
    table = pa.table({"k": list(range(10_000)), "v": [1] * 10_000})
    stream = aggregate(tmp_path, table, {"group_by": ["k"], "aggregations": {"v": "sum"}}, batch_rows=1024)
    sizes = [b.num_rows for b in stream.batches()]
    assert sizes == [1024] * 9 + [10_000 - 9 * 1024]


def test_state_is_bounded_by_groups_not_rows() -> None:
    partials = aggregator._Partials(["k0"], [("s0", "sum")], min_rows=1000)
    peak = 0
    for i in range(2000):  # 2000 partial tables x 50 groups = 100k partial rows in total
        partials.add(pa.table({"k0": list(range(50)), "s0": [i] * 50}))
        peak = max(peak, partials.rows)
    assert peak <= 1000 + 50
    merged = partials.compact()
    assert merged.num_rows == 50
    assert merged.sort_by("k0").column("s0").to_pylist() == [sum(range(2000))] * 50


def test_missing_columns_are_terminal_errors(tmp_path: Path) -> None:
    table = pa.table({"user_id": [1], "amount": [2]})
    with pytest.raises(
        TerminalError,
        match=r"step 'by_user': config\.group_by: column 'usr' is not in the input; available columns: "
        r"\[user_id, amount\]",
    ):
        aggregate(tmp_path, table, {"group_by": ["usr"], "aggregations": {"n": "count"}})
    with pytest.raises(
        TerminalError, match=r"config\.aggregations\.revenue: column 'revenue' is not in the input"
    ):
        aggregate(tmp_path, table, {"group_by": ["user_id"], "aggregations": {"revenue": "sum"}})


def test_unaggregatable_type_is_terminal(tmp_path: Path) -> None:
    table = pa.table({"k": [1], "tags": [["a"]]})
    with pytest.raises(TerminalError, match=r"step 'by_user': cannot aggregate \(k int64, tags list"):
        collect(aggregate(tmp_path, table, {"group_by": ["k"], "aggregations": {"tags": "sum"}}))


def test_config_schema_and_check() -> None:
    (spec,) = aggregator.COMPONENTS
    validator = Draft202012Validator(spec.config_schema)
    assert not list(validator.iter_errors(CONFIG))
    assert not list(validator.iter_errors({"aggregations": {"n": "count"}}))
    assert list(validator.iter_errors({"aggregations": {"n": "median"}}))
    assert list(validator.iter_errors({"aggregations": {"n": {"fn": "sum", "col": "x"}}}))
    assert list(validator.iter_errors({"aggregations": {}}))
    assert list(validator.iter_errors({"group_by": ["a"]}))
    assert spec.check(CONFIG) == []
    (problem,) = spec.check({"group_by": ["user_id"], "aggregations": {"user_id": "count"}})
    assert problem.field == "config.aggregations.user_id"
    assert not spec.partitionwise and (spec.min_inputs, spec.max_inputs) == (1, 1)


keys_values = st.one_of(st.none(), st.integers(0, 4))
rows_strategy = st.lists(
    st.tuples(
        keys_values,
        st.one_of(st.none(), st.sampled_from(["x", "y"])),
        st.one_of(st.none(), st.integers(-(10**6), 10**6)),
        st.one_of(st.none(), st.floats(-1e6, 1e6, allow_nan=False)),
        st.one_of(st.none(), st.integers(0, 3)),
    ),
    max_size=80,
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=rows_strategy,
    batch=st.integers(1, 9),
    keys=st.sampled_from([[], ["user_id"], ["user_id", "country"]]),
)
def test_property_matches_pandas(tmp_path: Path, rows: list[tuple], batch: int, keys: list[str]) -> None:
    columns: list[tuple[Any, ...]] = list(zip(*rows, strict=True)) if rows else [() for _ in range(5)]
    table = pa.table(
        {
            "user_id": pa.array(columns[0], pa.int64()),
            "country": pa.array(columns[1], pa.string()),
            "amount": pa.array(columns[2], pa.int64()),
            "price": pa.array(columns[3], pa.float64()),
            "product_id": pa.array(columns[4], pa.int64()),
        }
    )
    config = {"group_by": keys, "aggregations": AGGREGATIONS}
    result = collect(aggregate(tmp_path, table, config, rows_per_batch=batch, batch_rows=batch))
    expected = pandas_reference(table, keys)
    if not keys and not rows:  # pandas has no row for a global aggregate of nothing; SQL has one
        assert result.num_rows == 1 and result.column("events").to_pylist() == [0]
        return
    assert_same_rows(as_frame(result), expected, check_dtype=False, rtol=1e-9, atol=1e-6)


def test_a_group_key_may_also_be_aggregated(tmp_path: Path) -> None:
    table = pa.table({"k": [1, 1, 2, None], "v": [1, 2, 3, 4]})
    config = {
        "group_by": ["k"],
        "aggregations": {
            "keys": {"fn": "count_distinct", "column": "k"},
            "top": {"fn": "max", "column": "k"},
        },
    }
    result = collect(aggregate(tmp_path, table, config, rows_per_batch=1))
    assert result.to_pydict() == {"k": [1, 2, None], "keys": [1, 1, 0], "top": [1, 2, None]}
