"""transform.filter: SQL WHERE semantics (three-valued logic) checked against pandas' nullable types.

The reference evaluates the same condition with pandas' masked arrays (Int64, Float64, string,
boolean), whose ``& | ~`` follow Kleene logic like SQL; it shares no code with the translator.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from osiris_flight.components import filter as filter_component
from osiris_flight.components.filter import Filter
from osiris_flight.data.rowstream import RowStream
from osiris_flight.errors import TerminalError
from osiris_flight.oml.validate import ColumnUse
from tests.components.helpers import collect, make_ctx, stream_of


def run_filter(
    tmp_path: Path, table: pa.Table, config: dict, *, rows_per_batch: int = 100, batch_rows: int = 100
):
    ctx = make_ctx(tmp_path, config, step_id="only_paid", batch_rows=batch_rows)
    return Filter(ctx).apply({"orders": stream_of(table, rows_per_batch)})


def random_table(rows: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)

    def with_nulls(values: list, rate: float = 0.15) -> list:
        return [None if rng.random() < rate else v for v in values]

    words = ["apple", "apricot", "banana", "x_y", "50%", "", "Apple", "zed"]
    return pa.table(
        {
            "rid": pa.array(range(rows), pa.int64()),
            "a": pa.array(with_nulls(rng.integers(-20, 20, rows).tolist()), pa.int64()),
            "b": pa.array(with_nulls(np.round(rng.normal(0, 5, rows), 2).tolist()), pa.float64()),
            "s": pa.array(with_nulls(rng.choice(words, rows).tolist()), pa.string()),
            "flag": pa.array(with_nulls(rng.integers(0, 2, rows).astype(bool).tolist()), pa.bool_()),
        }
    )


def to_nullable_pandas(table: pa.Table) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "rid": table.column("rid").to_pylist(),
            "a": pd.array(table.column("a").to_pylist(), dtype="Int64"),
            "b": pd.array(table.column("b").to_pylist(), dtype="Float64"),
            "s": pd.array(table.column("s").to_pylist(), dtype=pd.StringDtype("python")),
            "flag": pd.array(table.column("flag").to_pylist(), dtype="boolean"),
        }
    )


# -- a reference for each construct, built alongside its SQL text ---------------------------------

Frame: TypeAlias = pd.DataFrame
Fn: TypeAlias = Callable[[Frame], pd.Series]


@dataclass(frozen=True)
class Node:
    sql: str
    fn: Fn


def _elementwise(series: pd.Series, f: Callable, dtype: str) -> pd.Series:
    return pd.Series(
        pd.array([pd.NA if pd.isna(v) else f(v) for v in series], dtype=dtype), index=series.index
    )


def _mysql_mod(a: int, b: int) -> int:
    r = abs(a) % abs(b)
    return r if a >= 0 else -r


ints = st.integers(-6, 6)
numbers = st.one_of(ints.map(str), st.sampled_from(["2.5", "-0.5", "10"]))


@st.composite
def numeric(draw: st.DrawFn) -> Node:
    choice = draw(st.integers(0, 6))
    if choice == 0:
        return Node("a", lambda f: f["a"])
    if choice == 1:
        return Node("`b`", lambda f: f["b"])
    if choice == 2:
        k = draw(ints)
        op = draw(st.sampled_from(["+", "-", "*"]))
        ops = {"+": lambda s: s + k, "-": lambda s: s - k, "*": lambda s: s * k}
        return Node(f"(a {op} {k})", lambda f: ops[op](f["a"]))
    if choice == 3:
        k = draw(ints)
        if k == 0:
            return Node(
                "(a / 0)", lambda f: pd.Series(pd.array([pd.NA] * len(f), dtype="Float64"), index=f.index)
            )
        return Node(f"(a / {k})", lambda f: f["a"].astype("Float64") / k)
    if choice == 4:
        k = draw(ints)
        if k == 0:
            return Node(
                "(a % 0)", lambda f: pd.Series(pd.array([pd.NA] * len(f), dtype="Int64"), index=f.index)
            )
        return Node(f"(a % {k})", lambda f: _elementwise(f["a"], lambda v: _mysql_mod(int(v), k), "Int64"))
    if choice == 5:
        return Node("-a", lambda f: -f["a"])
    return Node("(b * 2)", lambda f: f["b"] * 2)


def _like_regex(pattern: str) -> re.Pattern[str]:
    """LIKE semantics: % any run, _ one character, backslash makes the next character literal."""
    out, chars = [], iter(pattern)
    for c in chars:
        if c == "\\":
            out.append(re.escape(next(chars, "\\")))
        else:
            out.append(".*" if c == "%" else "." if c == "_" else re.escape(c))
    return re.compile("".join(out), re.DOTALL)


def _number(text: str) -> Node:
    return Node(text, lambda f: pd.Series(float(text), index=f.index, dtype="Float64"))


@st.composite
def predicate(draw: st.DrawFn) -> Node:
    choice = draw(st.integers(0, 8))
    if choice <= 2:
        left, right = draw(numeric()), draw(st.one_of(numeric(), numbers.map(_number)))
        op = draw(st.sampled_from(["=", "!=", "<>", "<", "<=", ">", ">="]))
        compare: Callable[[Any, Any], pd.Series] = {
            "=": lambda x, y: x == y,
            "!=": lambda x, y: x != y,
            "<>": lambda x, y: x != y,
            "<": lambda x, y: x < y,
            "<=": lambda x, y: x <= y,
            ">": lambda x, y: x > y,
            ">=": lambda x, y: x >= y,
        }[op]
        return Node(f"{left.sql} {op} {right.sql}", lambda f: compare(left.fn(f), right.fn(f)))
    if choice == 3:
        column = draw(st.sampled_from(["a", "b", "s", "flag"]))
        negate = draw(st.booleans())
        return Node(
            f"{column} IS {'NOT ' if negate else ''}NULL",
            lambda f: f[column].notna() if negate else f[column].isna(),
        )
    if choice == 4:
        values = draw(st.lists(st.one_of(ints.map(int), st.none()), min_size=1, max_size=5))
        negate = draw(st.booleans())
        text = ", ".join("NULL" if v is None else str(v) for v in values)
        present, has_null = {v for v in values if v is not None}, None in values

        def member(v: int) -> object:
            return True if v in present else (pd.NA if has_null else False)

        def fn(f: Frame) -> pd.Series:
            inside = _elementwise(f["a"], member, "boolean")
            return ~inside if negate else inside

        return Node(f"a {'NOT ' if negate else ''}IN ({text})", fn)
    if choice == 5:
        low, high = sorted(draw(st.lists(ints, min_size=2, max_size=2)))
        negate = draw(st.booleans())

        def between(f: Frame) -> pd.Series:
            inside = (f["b"] >= low) & (f["b"] <= high)
            return ~inside if negate else inside

        return Node(f"b {'NOT ' if negate else ''}BETWEEN {low} AND {high}", between)
    if choice == 6:
        pattern = draw(st.sampled_from(["ap%", "%a", "_pple", "%", "", "x\\_y", "50\\%", "A%", "%an%"]))
        negate = draw(st.booleans())
        regex = _like_regex(pattern)

        def like(f: Frame) -> pd.Series:
            hit = _elementwise(f["s"], lambda v: bool(regex.fullmatch(v)), "boolean")
            return ~hit if negate else hit

        escaped = pattern.replace("\\", "\\\\")
        return Node(f"s {'NOT ' if negate else ''}LIKE '{escaped}'", like)
    if choice == 7:
        form = draw(st.sampled_from(["flag", "flag IS TRUE", "flag IS NOT FALSE", "flag = TRUE"]))
        fns: dict[str, Fn] = {
            "flag": lambda f: f["flag"],
            "flag IS TRUE": lambda f: f["flag"].fillna(False),
            "flag IS NOT FALSE": lambda f: ~(f["flag"] == False).fillna(False),  # noqa: E712
            "flag = TRUE": lambda f: f["flag"] == True,  # noqa: E712
        }
        return Node(form, fns[form])
    word = draw(st.sampled_from(["apple", "banana", "", "zed"]))
    op = draw(st.sampled_from(["=", "<", ">=", "<=>"]))
    if op == "<=>":
        return Node(f"s <=> '{word}'", lambda f: (f["s"] == word).fillna(False))
    versus: Callable[[pd.Series], pd.Series] = {
        "=": lambda x: x == word,
        "<": lambda x: x < word,
        ">=": lambda x: x >= word,
    }[op]
    return Node(f's {op} "{word}"', lambda f: versus(f["s"]))


def conditions() -> st.SearchStrategy[Node]:
    def extend(children: st.SearchStrategy[Node]) -> st.SearchStrategy[Node]:
        both = st.tuples(children, children, st.sampled_from(["AND", "OR", "&&", "||", "XOR"]))

        def combine(parts: tuple[Node, Node, str]) -> Node:
            left, right, op = parts
            if op in ("AND", "&&"):
                return Node(f"({left.sql}) {op} ({right.sql})", lambda f: left.fn(f) & right.fn(f))
            if op == "XOR":
                return Node(f"({left.sql}) XOR ({right.sql})", lambda f: left.fn(f) ^ right.fn(f))
            return Node(f"({left.sql}) {op} ({right.sql})", lambda f: left.fn(f) | right.fn(f))

        negated = children.map(lambda n: Node(f"NOT ({n.sql})", lambda f: ~n.fn(f)))
        return st.one_of(both.map(combine), negated)

    return st.recursive(predicate(), extend, max_leaves=6)


def reference_rids(table: pa.Table, node: Node) -> list[int]:
    frame = to_nullable_pandas(table)
    mask = node.fn(frame).astype("boolean").fillna(False).astype(bool)
    return frame.loc[mask, "rid"].tolist()


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(node=conditions(), seed=st.integers(0, 3), rows_per_batch=st.integers(1, 97))
def test_property_matches_sql_semantics(tmp_path: Path, node: Node, seed: int, rows_per_batch: int) -> None:
    table = random_table(300, seed)
    assert filter_component.check({"where": node.sql}) == []
    out = collect(run_filter(tmp_path, table, {"where": node.sql}, rows_per_batch=rows_per_batch))
    assert out.column("rid").to_pylist() == reference_rids(table, node), node.sql


# -- specific semantics -----------------------------------------------------------------------------

ORDERS = pa.table(
    {
        "id": [1, 2, 3, 4, 5],
        "status": ["paid", "open", None, "paid", "void"],
        "amount": pa.array([10, None, 7, 250, -3], pa.int64()),
        "day": pa.array([dt.date(2024, 1, d) for d in (1, 2, 3, 4, 5)]),
        "at": pa.array([dt.datetime(2024, 1, 1, h) for h in (1, 5, 9, 13, 17)], pa.timestamp("us")),
    }
)


@pytest.mark.parametrize(
    ("where", "ids"),
    [
        ("status = 'paid' AND amount >= 10", [1, 4]),
        ("NOT (status = 'paid')", [2, 5]),  # NULL status: NOT NULL is NULL, dropped
        ("amount > 5 OR status IS NULL", [1, 3, 4]),
        ("amount = NULL", []),
        ("amount <=> NULL", [2]),
        ("status NOT IN ('paid', 'void')", [2]),
        ("status NOT IN ('paid', NULL)", []),
        ("amount / 0 IS NULL", [1, 2, 3, 4, 5]),
        ("amount % 4 = -3", [5]),
        ("amount / 4 = 2.5", [1]),
        ("day > '2024-01-03'", [4, 5]),
        ("day BETWEEN DATE '2024-01-02' AND '2024-01-04'", [2, 3, 4]),
        ("at >= TIMESTAMP '2024-01-01 09:00:00'", [3, 4, 5]),
        ("at < '2024-01-01 09:00:00'", [1, 2]),
        ("day IN ('2024-01-01', '2024-01-05')", [1, 5]),
        ("`status` LIKE 'p%' AND id <> 4", [1]),
        ("TRUE", [1, 2, 3, 4, 5]),
        ("1 = 0", []),
        ("NULL", []),
    ],
)
def test_sql_semantics(tmp_path: Path, where: str, ids: list[int]) -> None:
    assert filter_component.check({"where": where}) == []
    assert collect(run_filter(tmp_path, ORDERS, {"where": where})).column("id").to_pylist() == ids


def test_projection_and_batch_sizes(tmp_path: Path) -> None:
    table = random_table(5000, 7)
    stream = run_filter(
        tmp_path, table, {"where": "a > 0", "columns": ["s", "rid"]}, rows_per_batch=37, batch_rows=500
    )
    assert stream.schema.names == ["s", "rid"]
    batches = list(stream.batches())
    assert all(b.num_rows == 500 for b in batches[:-1]) and 0 < batches[-1].num_rows <= 500
    expected = table.filter(pc.greater(table.column("a"), 0)).select(["s", "rid"])
    assert pa.Table.from_batches(batches).equals(expected)


def test_undeclared_input_schema_is_taken_from_first_batch(tmp_path: Path) -> None:
    from osiris_flight.data.rowstream import RowStream

    stream = RowStream(ORDERS.to_batches(max_chunksize=2))
    ctx = make_ctx(tmp_path, {"where": "amount > 8"})
    assert collect(Filter(ctx).apply({"orders": stream})).column("id").to_pylist() == [1, 4]


@pytest.mark.parametrize(
    ("where", "named"),
    [
        ("UPPER(status) = 'PAID'", "function UPPER() is not supported"),
        ("my_udf(amount) > 1", "function MY_UDF() is not supported"),
        ("id IN (SELECT id FROM refunds)", "IN (subquery) is not supported"),
        ("EXISTS (SELECT 1)", "is not supported"),
        ("CASE WHEN amount > 1 THEN 1 ELSE 0 END = 1", "CASE/IF is not supported"),
        ("CAST(amount AS CHAR) = '1'", "CAST is not supported"),
        ("amount + 1", "must be true/false, but 'amount + 1' is a value"),
        ("'paid'", "must be true/false"),
        ("orders.amount > 1", "'orders.amount': write a plain column name"),
        ("amount > 1; DROP TABLE orders", "found several statements"),
        ("amount >", "not valid SQL"),
        ("status = 'open", "not valid SQL"),
        ("status LIKE other", "the LIKE pattern must be a 'string' literal"),
        ("amount AND 1", "AND needs conditions, but '1' is a value"),
        ("status REGEXP '^p'", "function REGEXP_LIKE() is not supported"),
        ("id IN (1, 'x')", "the IN list mixes types"),
        ("amount > ?", "parameter placeholder is not supported"),
        ("   ", "the condition is empty"),
    ],
)
def test_unsupported_constructs_are_problems_at_validation(where: str, named: str) -> None:
    problems = filter_component.check({"where": where})
    assert len(problems) == 1
    problem = problems[0]
    assert problem.field == "config.where"
    assert named in problem.message
    assert problem.hint is not None and "IN (list)" in problem.hint and "LIKE" in problem.hint


def test_missing_column_is_terminal_naming_column_step_and_columns(tmp_path: Path) -> None:
    with pytest.raises(
        TerminalError,
        match=r"step 'only_paid': config\.where: column 'state' is not in the input; "
        r"available columns: \[id, status, amount, day, at\]",
    ):
        run_filter(tmp_path, ORDERS, {"where": "state = 'paid'"})
    with pytest.raises(TerminalError, match=r"config\.columns: column 'nope'"):
        run_filter(tmp_path, ORDERS, {"where": "id > 1", "columns": ["id", "nope"]})


def test_type_errors_fail_before_reading_rows(tmp_path: Path) -> None:
    with pytest.raises(TerminalError, match=r"step 'only_paid': config\.where: .*status string"):
        run_filter(tmp_path, ORDERS, {"where": "status > 5"})
    with pytest.raises(TerminalError, match=r"config\.where: the condition must be true/false, but 'amount'"):
        run_filter(tmp_path, ORDERS, {"where": "amount"})
    with pytest.raises(TerminalError, match=r"config\.where: 'yesterday' is not a valid date32"):
        run_filter(tmp_path, ORDERS, {"where": "day > 'yesterday'"})


def test_integer_overflow_is_an_error_not_a_wrap(tmp_path: Path) -> None:
    table = pa.table({"x": pa.array([2**62, 1], pa.int64())})
    stream = run_filter(tmp_path, table, {"where": "x * 4 > 0"})
    with pytest.raises(
        TerminalError, match=r"step 'only_paid': config\.where: 'x \* 4 > 0' failed.*overflow"
    ):
        collect(stream)


def test_spec_shape() -> None:
    (spec,) = filter_component.COMPONENTS
    assert spec.name == "transform.filter" and spec.partitionwise
    assert (spec.min_inputs, spec.max_inputs) == (1, 1)


def test_where_true_passes_batches_on_untouched(tmp_path: Path) -> None:
    """What the query optimizer leaves behind when MySQL applied the condition: the very batches go on."""
    table = pa.table({"id": list(range(250)), "note": [f"n{i}" for i in range(250)]})
    source = table.to_batches(max_chunksize=100)
    ctx = make_ctx(tmp_path, {"where": "TRUE"}, step_id="keep", batch_rows=100)
    out = list(Filter(ctx).apply({"read": RowStream(source, table.schema)}).batches())
    assert [b.num_rows for b in out] == [100, 100, 50]
    assert out[0] is source[0] and out[1] is source[1]
    projected = Filter(make_ctx(tmp_path, {"where": "TRUE", "columns": ["note"]})).apply(
        {"read": stream_of(table, 100)}
    )
    assert collect(projected).column_names == ["note"]


def test_columns_used_is_what_the_optimizer_projects() -> None:
    assert filter_component.columns_used({"where": "a > 1 AND b IS NULL"}) == ColumnUse(("a", "b"), True)
    assert filter_component.columns_used({"where": "a > 1", "columns": ["c", "a"]}) == ColumnUse(("a", "c"))
    assert filter_component.columns_used({"where": "a >"}) is None
