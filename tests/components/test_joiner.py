"""transform.joiner: every join type against pandas.merge on the same data (order-insensitive)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from osiris_flight.components import joiner
from osiris_flight.components.joiner import Joiner
from osiris_flight.data.rowstream import RowStream
from osiris_flight.errors import TerminalError
from tests.components.helpers import assert_same_rows, collect, make_ctx, stream_of

JOIN_TYPES = ["inner", "left", "right", "full", "semi", "anti"]
PANDAS_HOW = {"inner": "inner", "left": "left", "right": "right", "full": "outer"}


def join(
    tmp_path: Path,
    left: pa.Table,
    right: pa.Table,
    config: dict,
    *,
    rows_per_batch: int = 100,
    batch_rows: int = 100,
    **ctx_extra: Any,
) -> RowStream:
    ctx = make_ctx(tmp_path, config, step_id="join_aggregates", batch_rows=batch_rows, **ctx_extra)
    inputs = {"users": stream_of(left, rows_per_batch), "products": stream_of(right, rows_per_batch)}
    return Joiner(ctx).apply(inputs)


def frame(table: pa.Table) -> pd.DataFrame:
    mapping = {
        pa.int64(): pd.Int64Dtype(),
        pa.float64(): pd.Float64Dtype(),
        pa.string(): pd.StringDtype("python"),
    }
    return table.to_pandas(types_mapper=mapping.get)


def _listed(keys: str | list[str]) -> list[str]:
    return [keys] if isinstance(keys, str) else keys


def pandas_join(left: pa.Table, right: pa.Table, how: str, **keys: Any) -> pd.DataFrame:
    lf, rf = frame(left), frame(right)
    if how in PANDAS_HOW:
        return lf.merge(rf, how=PANDAS_HOW[how], suffixes=("", "_right"), **keys)
    right_keys = _listed(keys.get("on") or keys["right_on"])
    left_keys = _listed(keys.get("on") or keys["left_on"])
    present = set(map(tuple, rf[right_keys].astype(object).itertuples(index=False)))
    hit = [tuple(row) in present for row in lf[left_keys].astype(object).itertuples(index=False)]
    mask = pd.Series(hit, index=lf.index, dtype=bool)
    return lf.loc[mask if how == "semi" else ~mask].reset_index(drop=True)


def tables(rows_left: int, rows_right: int, seed: int) -> tuple[pa.Table, pa.Table]:
    rng = np.random.default_rng(seed)
    left = pa.table(
        {
            "date": rng.integers(0, 30, rows_left),
            "shop": rng.choice(["a", "b", "c"], rows_left),
            "users": rng.integers(0, 1000, rows_left),
            "note": rng.choice(["x", "y"], rows_left),
        }
    )
    right = pa.table(
        {
            "shop": rng.choice(["a", "b", "d"], rows_right),
            "revenue": np.round(rng.normal(100, 30, rows_right), 2),
            "date": rng.integers(10, 40, rows_right),
            "note": rng.choice(["p", "q"], rows_right),
        }
    )
    return left, right


@pytest.mark.parametrize("join_type", JOIN_TYPES)
def test_each_join_type_matches_pandas_merge(tmp_path: Path, join_type: str) -> None:
    left, right = tables(3000, 400, seed=11)
    config = {"join_type": join_type, "on": ["date", "shop"]}
    result = collect(join(tmp_path, left, right, config, rows_per_batch=77, batch_rows=256))
    expected = pandas_join(left, right, join_type, on=["date", "shop"])
    assert len(expected) > 0
    assert_same_rows(frame(result), expected, check_dtype=False)


@pytest.mark.parametrize("join_type", JOIN_TYPES)
def test_left_on_right_on_keeps_both_keys_like_pandas(tmp_path: Path, join_type: str) -> None:
    left, right = tables(500, 60, seed=2)
    right = right.rename_columns(["store", "revenue", "day", "note"])
    config = {"join_type": join_type, "left_on": ["date", "shop"], "right_on": ["day", "store"]}
    result = collect(join(tmp_path, left, right, config, rows_per_batch=33))
    expected = pandas_join(left, right, join_type, left_on=["date", "shop"], right_on=["day", "store"])
    assert_same_rows(frame(result), expected, check_dtype=False)


@pytest.mark.parametrize("join_type", JOIN_TYPES)
def test_big_right_side_is_probed_in_chunks(tmp_path: Path, join_type: str) -> None:
    rng = np.random.default_rng(4)
    left = pa.table({"date": rng.integers(0, 6000, 20_000), "users": rng.integers(0, 9, 20_000)})
    right = pa.table({"date": rng.integers(3000, 9000, 5_000), "revenue": rng.normal(0, 1, 5_000)})
    stream = join(tmp_path, left, right, {"join_type": join_type, "on": "date"})
    batches = list(stream.batches())
    assert all(b.num_rows == 100 for b in batches[:-1])
    expected = pandas_join(left, right, join_type, on="date")
    assert_same_rows(frame(pa.Table.from_batches(batches, stream.schema)), expected, check_dtype=False)


def test_sql_null_keys_never_match_and_order_is_deterministic(tmp_path: Path) -> None:
    left = pa.table({"k": [1, 2, None, 3, 1], "x": ["a", "b", "c", "d", "e"]})
    right = pa.table({"k": [1, 1, None, 4], "y": ["p", "q", "r", "s"]})
    expected = {
        "inner": {"k": [1, 1, 1, 1], "x": ["a", "a", "e", "e"], "y": ["p", "q", "p", "q"]},
        "left": {
            "k": [1, 1, 2, None, 3, 1, 1],
            "x": ["a", "a", "b", "c", "d", "e", "e"],
            "y": ["p", "q", None, None, None, "p", "q"],
        },
        "right": {
            "k": [1, 1, 1, 1, None, 4],
            "x": ["a", "a", "e", "e", None, None],
            "y": ["p", "q", "p", "q", "r", "s"],
        },
        "full": {
            "k": [1, 1, 2, None, 3, 1, 1, None, 4],
            "x": ["a", "a", "b", "c", "d", "e", "e", None, None],
            "y": ["p", "q", None, None, None, "p", "q", "r", "s"],
        },
        "semi": {"k": [1, 1], "x": ["a", "e"]},
        "anti": {"k": [2, None, 3], "x": ["b", "c", "d"]},
    }
    for join_type, want in expected.items():
        for rows_per_batch in (1, 2, 5):
            result = join(
                tmp_path, left, right, {"join_type": join_type, "on": "k"}, rows_per_batch=rows_per_batch
            )
            assert collect(result).to_pydict() == want, (join_type, rows_per_batch)


def test_suffixes_and_clashes(tmp_path: Path) -> None:
    left = pa.table({"k": [1], "v": [10], "v_r": [0]})
    right = pa.table({"k": [1], "v": [20]})
    result = collect(join(tmp_path, left, right, {"on": "k", "suffixes": ["_l", "_r2"]}))
    assert result.to_pydict() == {"k": [1], "v_l": [10], "v_r": [0], "v_r2": [20]}
    with pytest.raises(TerminalError, match=r"step 'join_aggregates': config\.suffixes: .*\[v_r\] twice"):
        join(tmp_path, left, right, {"on": "k", "suffixes": ["", "_r"]})


def test_left_and_right_name_the_inputs(tmp_path: Path) -> None:
    users = pa.table({"date": [1, 2], "users": [5, 6]})
    products = pa.table({"date": [2, 3], "revenue": [7.0, 8.0]})
    ctx = make_ctx(tmp_path, {"join_type": "left", "on": "date", "left": "products"})
    inputs = {"users": stream_of(users), "products": stream_of(products)}
    assert collect(Joiner(ctx).apply(inputs)).to_pydict() == {
        "date": [2, 3],
        "revenue": [7.0, 8.0],
        "users": [6, None],
    }
    ctx = make_ctx(tmp_path, {"on": "date", "right": "elsewhere"})
    with pytest.raises(
        TerminalError, match=r"config\.right: 'elsewhere' is not an input.*\[users, products\]"
    ):
        Joiner(ctx).apply({"users": stream_of(users), "products": stream_of(products)})


def test_key_types_are_unified_or_rejected(tmp_path: Path) -> None:
    left = pa.table({"k": pa.array([1, 2], pa.int64()), "s": pa.array(["a", "b"], pa.large_string())})
    right = pa.table({"k": pa.array([2, 3], pa.int32()), "s": pa.array(["b", "c"], pa.string()), "v": [1, 2]})
    assert collect(join(tmp_path, left, right, {"on": ["k", "s"], "join_type": "full"})).to_pydict() == {
        "k": [1, 2, 3],
        "s": ["a", "b", "c"],
        "v": [None, 1, 2],
    }
    text = pa.table({"k": ["1"]})
    with pytest.raises(
        TerminalError, match=r"join key 'k' of input 'users' is int64 but 'k' of input 'products' is string"
    ):
        join(tmp_path, left, text, {"on": "k"})
    overflow = pa.table({"k": pa.array([2**40], pa.int64())})
    small = pa.table({"k": pa.array([1], pa.int32())})
    with pytest.raises(TerminalError, match=r"join key 'k' of input 'products' does not fit .* int32"):
        collect(join(tmp_path, small, overflow, {"on": "k"}))


def test_missing_key_names_input_key_and_columns(tmp_path: Path) -> None:
    left, right = tables(5, 5, seed=0)
    with pytest.raises(
        TerminalError,
        match=r"step 'join_aggregates': config\.on: column 'day' is not in the input 'users'; "
        r"available columns: \[date, shop, users, note\]",
    ):
        join(tmp_path, left, right, {"on": "day"})
    with pytest.raises(
        TerminalError, match=r"config\.right_on: column 'x' is not in the input 'products'; .*revenue"
    ):
        join(tmp_path, left, right, {"left_on": "date", "right_on": "x"})


@pytest.mark.parametrize("join_type", JOIN_TYPES)
def test_empty_inputs(tmp_path: Path, join_type: str) -> None:
    left, right = tables(50, 20, seed=9)
    for lt, rt in (
        (left.slice(0, 0), right),
        (left, right.slice(0, 0)),
        (left.slice(0, 0), right.slice(0, 0)),
    ):
        stream = join(tmp_path, lt, rt, {"join_type": join_type, "on": "date"})
        result = collect(stream)
        expected = pandas_join(lt, rt, join_type, on="date")
        assert result.num_rows == len(expected), (join_type, lt.num_rows, rt.num_rows)
        assert result.schema == stream.schema


def test_output_schema_is_known_before_reading_and_build_over_budget_is_reported(tmp_path: Path) -> None:
    left, right = tables(100, 3000, seed=1)
    events: list[tuple[str, dict]] = []
    stream = join(
        tmp_path,
        left,
        right,
        {"join_type": "full", "on": "date"},
        memory_limit_bytes=10_000,
        log_event=lambda name, **fields: events.append((name, fields)),
    )
    assert stream.schema.names == ["date", "shop", "users", "note", "shop_right", "revenue", "note_right"]
    assert not events  # the right side is read lazily, when the output is
    collect(stream)
    assert [name for name, _ in events] == ["join_build_over_budget"]
    assert events[0][1]["input"] == "products" and events[0][1]["limit_bytes"] == 10_000


def test_wrong_number_of_inputs(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, {"on": "k"})
    with pytest.raises(TerminalError, match="needs exactly 2 inputs, got 1"):
        Joiner(ctx).apply({"a": stream_of(pa.table({"k": [1]}))})


@pytest.mark.parametrize(
    ("config", "field", "fragment"),
    [
        ({"on": "k", "left_on": "k"}, "config.on", "not both"),
        ({}, "config.on", "no join keys"),
        ({"left_on": "k"}, "config.right_on", "right_on is missing"),
        ({"right_on": ["k"]}, "config.left_on", "left_on is missing"),
        (
            {"left_on": ["a", "b"], "right_on": "a"},
            "config.right_on",
            "left_on has 2 keys but right_on has 1",
        ),
        ({"on": "k", "suffixes": ["_x", "_x"]}, "config.suffixes", "must differ"),
        ({"on": "k", "left": "a", "right": "a"}, "config.right", "same step"),
    ],
)
def test_check_problems(config: dict, field: str, fragment: str) -> None:
    (problem,) = joiner.check(config)
    assert problem.field == field and fragment in problem.message


def test_config_schema() -> None:
    (spec,) = joiner.COMPONENTS
    validator = Draft202012Validator(spec.config_schema)
    assert not list(validator.iter_errors({"join_type": "inner", "on": ["date"]}))
    assert not list(validator.iter_errors({"left_on": "a", "right_on": "b", "suffixes": ["", "_r"]}))
    assert list(validator.iter_errors({"on": "a", "join_type": "cross"}))
    assert list(validator.iter_errors({"on": []}))
    assert list(validator.iter_errors({"on": "a", "how": "left"}))
    assert spec.check({"join_type": "inner", "on": ["date"]}) == []
    assert (spec.min_inputs, spec.max_inputs, spec.partitionwise) == (2, 2, False)


side = st.lists(st.tuples(st.integers(0, 5), st.sampled_from(["a", "b"]), st.integers(-9, 9)), max_size=25)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    left_rows=side,
    right_rows=side,
    join_type=st.sampled_from(JOIN_TYPES),
    keys=st.sampled_from([["k"], ["k", "g"]]),
    batch=st.integers(1, 6),
)
def test_property_matches_pandas(
    tmp_path: Path, left_rows: list, right_rows: list, join_type: str, keys: list[str], batch: int
) -> None:
    def table(rows: list, value: str) -> pa.Table:
        k, g, v = (list(c) for c in zip(*rows, strict=True)) if rows else ([], [], [])
        return pa.table(
            {"k": pa.array(k, pa.int64()), "g": pa.array(g, pa.string()), value: pa.array(v, pa.int64())}
        )

    left, right = table(left_rows, "v"), table(right_rows, "w")
    config = {"join_type": join_type, "on": keys}
    result = collect(join(tmp_path, left, right, config, rows_per_batch=batch, batch_rows=batch))
    assert_same_rows(frame(result), pandas_join(left, right, join_type, on=keys), check_dtype=False)
