"""Hash partitioning (osiris_flight/data/hash_partition.py): the Cython kernel against its pure
reference on generated batches of every supported type (nulls, slices, several keys), the same hash
in a fresh interpreter and pinned golden values, equal hashes for equal values of one logical type
(integer widths, string layouts, date units, timestamp units, decimal scales, float zeros and NaNs),
the split into buckets, and the spread over buckets of skewed keys."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
from collections.abc import Callable
from decimal import Context, Decimal
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from osiris_flight import _native_hash
from osiris_flight.data import hash_partition as hp

# -- XXH64 itself -----------------------------------------------------------------------------------
# Checked against the xxhash library (xxhash.xxh64_intdigest, seed 0) when these were pinned.
XXH64_VECTORS = {
    b"": 0xEF46DB3751D8E999,
    b"a": 0xD24EC4F1A98C6E5B,
    b"abc": 0x44BC2CF5AD770999,
    b"Nobody inspects the spammish repetition": 0xFBCEA83C8A378BF1,
    bytes(range(100)): 0x6AC1E58032166597,
}


@pytest.mark.parametrize("data", list(XXH64_VECTORS))
def test_xxh64_kernel_and_reference_match_the_published_function(data: bytes) -> None:
    assert _native_hash.xxh64(data) == XXH64_VECTORS[data]
    assert hp.xxh64(data) == XXH64_VECTORS[data]


@given(st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=9))
def test_vectorized_xxh64_of_words_is_xxh64_of_their_bytes(words: list[int]) -> None:
    data = b"".join(w.to_bytes(8, "little") for w in words)
    columns = [np.array([w], dtype=np.uint64) for w in words]
    assert int(hp.xxh64_words(columns)[0]) == hp.xxh64(data) == _native_hash.xxh64(data)


# -- golden values: a change of the function fails here ---------------------------------------------
GOLDEN_BATCH_CODE = """
import datetime
from decimal import Decimal
import pyarrow as pa
batch = pa.record_batch({
    "i": pa.array([5, None, -3, 2**40], pa.int64()),
    "s": pa.array(["a", None, "", "hello world, a string past thirty-two bytes"]),
    "d": pa.array([Decimal("1.50"), None, Decimal("0.00"), Decimal("-12345.67")], pa.decimal128(12, 2)),
    "t": pa.array([1_500_000_000_000, None, -1, 0], pa.timestamp("ms")),
    "day": pa.array(
        [datetime.date(2026, 12, 5), None, datetime.date(1969, 12, 31), datetime.date(1970, 1, 2)]
    ),
    "f": pa.array([-0.0, None, float("nan"), 1.5]),
})
"""
# Row 0 of "i", "d", "t", "i,s" and row 2 of "day" were also checked against xxhash.xxh64_intdigest of
# the canonical bytes written out by hand (int64 5; (15, scale 1); (1_500_000_000 s, 0 ns); days -1).
GOLDEN: dict[str, list[str]] = {
    "i": ["0x89be0b2dd5c2593d", "0x9e3779b97f4a7c15", "0xdfb98331207f3823", "0xa13ea4c7924fd453"],
    "s": ["0xd24ec4f1a98c6e5b", "0x9e3779b97f4a7c15", "0xef46db3751d8e999", "0x3676ad3c1c0e1480"],
    "d": ["0xfb31ec4abe47489d", "0x9e3779b97f4a7c15", "0xbb3302e8a9608868", "0x63bcd77d1864e1a1"],
    "t": ["0x88cf8b1622b43774", "0x9e3779b97f4a7c15", "0x12957592230ab348", "0xaf09f71516247c32"],
    "day": ["0x1f563a0d2e76f132", "0x9e3779b97f4a7c15", "0x85d136adb773c6c9", "0x9f29cb17a2a49995"],
    "f": ["0x34c96acdcadb1bbb", "0x9e3779b97f4a7c15", "0xe9adb09fee122aac", "0x49f7b96b6b5ccaf9"],
    "i,s": ["0xe70143f161027946", "0xdc5ccc52ba536d6d", "0x5979e0ff7279e593", "0x4e38f53c80ce765d"],
    "s,i,d,t,day,f": ["0xe95e3dc88f1d377c", "0xdac87b4e483a7143", "0xde6cec25c37bdd82", "0x7c8c5c61c1c8d1c0"],
}


def _golden_batch() -> pa.RecordBatch:
    scope: dict[str, Any] = {}
    exec(GOLDEN_BATCH_CODE, scope)
    return scope["batch"]


def _hex(hashes: np.ndarray) -> list[str]:
    return [hex(int(h)) for h in hashes]


@pytest.mark.parametrize("keys", list(GOLDEN))
def test_golden_row_hashes(keys: str) -> None:
    batch = _golden_batch()
    assert _hex(hp.hash_rows(batch, keys.split(","))) == GOLDEN[keys]
    assert _hex(hp.reference_hash_rows(batch, keys.split(","))) == GOLDEN[keys]


def test_a_fresh_interpreter_with_another_hash_seed_computes_the_same_hashes_and_buckets() -> None:
    code = (
        GOLDEN_BATCH_CODE
        + "import json\nfrom osiris_flight.data import hash_partition as hp\n"
        + f"out = {{k: [hex(int(h)) for h in hp.hash_rows(batch, k.split(','))] for k in {list(GOLDEN)!r}}}\n"
        + "out['buckets'] = [b.column('i').to_pylist() for b in hp.partition_batch(batch, ['s', 'i'], 3)]\n"
        + "print(json.dumps(out))\n"
    )
    batch = _golden_batch()
    here = {k: _hex(hp.hash_rows(batch, k.split(","))) for k in GOLDEN}
    here_buckets = [b.column("i").to_pylist() for b in hp.partition_batch(batch, ["s", "i"], 3)]
    for seed in ("0", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        proc = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120, check=True
        )
        there = json.loads(proc.stdout)
        assert there.pop("buckets") == here_buckets
        assert there == here


# -- the kernel against the reference on generated batches -------------------------------------------
def _int_type(t: pa.DataType) -> st.SearchStrategy[int]:
    bits = t.bit_width
    if pa.types.is_signed_integer(t):
        return st.integers(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    return st.integers(0, 2**bits - 1)


def _dec(unscaled: int, scale: int) -> Decimal:
    """unscaled * 10**-scale, exact (the default context would round to 28 digits)."""
    return Decimal(unscaled).scaleb(-scale, Context(prec=100))


INT64 = st.integers(-(2**63), 2**63 - 1)
COLUMN_TYPES: list[tuple[pa.DataType, st.SearchStrategy[Any]]] = [
    *[(t, _int_type(t)) for t in (pa.int8(), pa.int16(), pa.int32(), pa.int64())],
    *[(t, _int_type(t)) for t in (pa.uint8(), pa.uint16(), pa.uint32(), pa.uint64())],
    (pa.bool_(), st.booleans()),
    (pa.float32(), st.floats(width=32)),
    (pa.float64(), st.floats() | st.sampled_from([0.0, -0.0, float("nan"), float("-nan")])),
    (pa.date32(), st.dates()),
    (pa.date64(), st.dates()),
    *[(pa.timestamp(u), INT64) for u in ("s", "ms", "us", "ns")],
    (pa.timestamp("us", "Europe/Warsaw"), INT64),
    (pa.duration("ms"), INT64),
    (pa.time32("s"), st.integers(0, 86_399)),
    (pa.time32("ms"), st.integers(0, 86_399_999)),
    (pa.time64("us"), st.integers(0, 86_399_999_999)),
    (pa.time64("ns"), st.integers(0, 86_399_999_999_999)),
    (pa.string(), st.text(max_size=40)),
    (pa.large_string(), st.text(max_size=40)),
    (pa.string_view(), st.text(max_size=40)),
    (pa.binary(), st.binary(max_size=70)),
    (pa.large_binary(), st.binary(max_size=70)),
    (pa.binary_view(), st.binary(max_size=40)),
    (pa.binary(3), st.binary(min_size=3, max_size=3)),
    (pa.decimal32(7, 2), st.integers(-(10**7) + 1, 10**7 - 1).map(lambda v: _dec(v, 2))),
    (pa.decimal64(15, 0), st.integers(-(10**15) + 1, 10**15 - 1).map(Decimal)),
    (
        pa.decimal128(38, 4),
        (st.integers(-(10**38) + 1, 10**38 - 1) | st.sampled_from([0, 10**30, -(10**37), 2**100])).map(
            lambda v: _dec(v, 4)
        ),
    ),
    (
        pa.decimal256(76, 3),
        (
            st.integers(-(10**76) + 1, 10**76 - 1)
            | st.sampled_from([0, 10**70, -(10**70), 2**127, -(2**127), 2**127 * 1000, -(2**127) * 10])
        ).map(lambda v: _dec(v, 3)),
    ),
    (pa.null(), st.none()),
]
DICTIONARY_TYPES: list[tuple[pa.DataType, st.SearchStrategy[Any]]] = [
    (
        pa.dictionary(pa.int8(), pa.string()),
        st.sampled_from(["a", "b", "", "long value past 32 bytes ......"]),
    ),
    (pa.dictionary(pa.uint16(), pa.int64()), st.integers(-3, 3)),
    (pa.dictionary(pa.int32(), pa.decimal128(10, 2)), st.sampled_from([Decimal("1.50"), Decimal("-2.00")])),
]


@st.composite
def columns(draw: st.DrawFn, rows: int) -> pa.Array:
    type_, values = draw(st.sampled_from(COLUMN_TYPES + DICTIONARY_TYPES))
    items = draw(st.lists(st.none() | values, min_size=rows, max_size=rows))
    if pa.types.is_dictionary(type_):
        return pa.array(items, type_.value_type).dictionary_encode().cast(type_)
    if pa.types.is_timestamp(type_) or pa.types.is_duration(type_):
        return pa.array(items, pa.int64()).view(type_)
    return pa.array(items, type_)


@st.composite
def batches(draw: st.DrawFn) -> tuple[pa.RecordBatch, list[str]]:
    rows = draw(st.integers(0, 40))
    ncols = draw(st.integers(1, 5))
    batch = pa.record_batch({f"c{i}": draw(columns(rows)) for i in range(ncols)})
    start = draw(st.integers(0, rows))
    batch = batch.slice(start, draw(st.integers(0, rows - start)))  # a non-zero offset
    keys = draw(st.permutations(batch.schema.names))[: draw(st.integers(1, ncols))]
    return batch, keys


@settings(max_examples=400)
@given(batches())
def test_kernel_equals_reference(case: tuple[pa.RecordBatch, list[str]]) -> None:
    batch, keys = case
    native = hp.hash_rows(batch, keys)
    assert native.dtype == np.uint64 and len(native) == batch.num_rows
    assert _hex(native) == _hex(hp.reference_hash_rows(batch, keys))
    for name in keys:  # a column's value hash does not depend on the other columns
        alone = hp.reference_hash_rows(batch, [name])
        assert _hex(hp.hash_rows(batch, [name])) == _hex(alone)


@given(batches())
def test_a_table_of_several_chunks_hashes_as_its_rows(case: tuple[pa.RecordBatch, list[str]]) -> None:
    batch, keys = case
    half = batch.num_rows // 2
    table = pa.Table.from_batches([batch.slice(0, half), batch.slice(half)], batch.schema)
    assert _hex(hp.hash_rows(table, keys)) == _hex(hp.hash_rows(batch, keys))
    assert _hex(hp.reference_hash_rows(table, keys)) == _hex(hp.hash_rows(batch, keys))


# -- equal values of one logical type hash equal ----------------------------------------------------
def _same_hashes(arrays: list[pa.Array]) -> None:
    got = [_hex(hp.hash_rows(pa.record_batch({"k": a}), ["k"])) for a in arrays]
    ref = [_hex(hp.reference_hash_rows(pa.record_batch({"k": a}), ["k"])) for a in arrays]
    assert all(g == got[0] for g in got), got
    assert ref == got


def test_integers_of_every_width_hash_equal() -> None:
    values = [0, 1, 5, 127, None]
    types = [pa.int8(), pa.int16(), pa.int32(), pa.int64(), pa.uint8(), pa.uint16(), pa.uint32(), pa.uint64()]
    _same_hashes([pa.array(values, t) for t in types])
    _same_hashes([pa.array([-5, -(2**15), None], t) for t in (pa.int16(), pa.int32(), pa.int64())])
    _same_hashes([pa.array([2**32 - 1, 2**31], t) for t in (pa.uint32(), pa.int64(), pa.uint64())])
    # a join of an int32 key with an int64 key: the same value in the same bucket
    a = hp.partition_batch(pa.record_batch({"k": pa.array(range(100), pa.int32())}), ["k"], 7)
    b = hp.partition_batch(pa.record_batch({"k": pa.array(range(100), pa.int64())}), ["k"], 7)
    assert [x.column("k").to_pylist() for x in a] == [x.column("k").to_pylist() for x in b]


def test_strings_and_binaries_of_every_layout_hash_equal() -> None:
    text = ["a", "", None, "zażółć gęślą jaźń", "x" * 100, "a"]
    plain = pa.array(text, pa.string())
    _same_hashes(
        [
            plain,
            pa.array(text, pa.large_string()),
            pa.array(text, pa.string_view()),
            plain.dictionary_encode(),
            pa.array(text, pa.large_string())
            .dictionary_encode()
            .cast(pa.dictionary(pa.int64(), pa.large_string())),
            pa.array([t.encode() if t is not None else None for t in text], pa.binary()),
            pa.array([t.encode() if t is not None else None for t in text], pa.large_binary()),
        ]
    )
    fixed = [b"abc", None, b"\x00\x01\x02"]
    _same_hashes(
        [pa.array(fixed, pa.binary(3)), pa.array(fixed, pa.binary()), pa.array(fixed, pa.binary_view())]
    )


def test_dates_of_both_units_hash_equal() -> None:
    days = [datetime.date(2026, 12, 5), datetime.date(1969, 12, 31), datetime.date(1, 1, 1), None]
    _same_hashes([pa.array(days, pa.date32()), pa.array(days, pa.date64())])


def test_timestamps_of_every_unit_and_zone_hash_equal_for_the_same_instant() -> None:
    seconds = [0, -1, 1_733_400_000, None]
    _same_hashes(
        [
            *[
                pa.array([None if s is None else s * m for s in seconds], pa.timestamp(u))
                for u, m in hp.UNITS_PER_SECOND.items()
            ],
            pa.array(seconds, pa.timestamp("s")).cast(pa.timestamp("ns", "Asia/Tokyo")),
        ]
    )
    # 0001-01-01, beyond the range of int64 nanoseconds: s, ms and us still agree
    year_one = -62_135_596_800
    _same_hashes(
        [pa.array([year_one * m], pa.timestamp(u)) for u, m in (("s", 1), ("ms", 1000), ("us", 10**6))]
    )
    # 1.5 s before the epoch, a sub-second instant
    _same_hashes(
        [pa.array([-1500 * m], pa.timestamp(u)) for u, m in (("ms", 1), ("us", 1000), ("ns", 10**6))]
    )
    _same_hashes([pa.array([-1500 * m], pa.duration(u)) for u, m in (("ms", 1), ("us", 1000), ("ns", 10**6))])


def test_times_of_every_unit_hash_equal() -> None:
    secs = [0, 1, 86_399, None]
    _same_hashes(
        [
            pa.array(secs, pa.time32("s")),
            pa.array([None if s is None else s * 1000 for s in secs], pa.time32("ms")),
            pa.array([None if s is None else s * 10**6 for s in secs], pa.time64("us")),
            pa.array([None if s is None else s * 10**9 for s in secs], pa.time64("ns")),
        ]
    )


def test_decimals_of_equal_value_hash_equal_whatever_precision_and_scale() -> None:
    _same_hashes(
        [
            pa.array([Decimal("1.50"), Decimal("0.00"), Decimal("-3.10"), None], pa.decimal128(5, 2)),
            pa.array([Decimal("1.5"), Decimal("0.0"), Decimal("-3.1"), None], pa.decimal128(10, 1)),
            pa.array([Decimal("1.5000"), Decimal("0"), Decimal("-3.1000"), None], pa.decimal256(40, 4)),
            pa.array([Decimal("1.50"), Decimal("0"), Decimal("-3.10"), None], pa.decimal32(4, 2)),
            pa.array([Decimal("1.500"), Decimal("0"), Decimal("-3.100"), None], pa.decimal64(18, 3)),
        ]
    )
    _same_hashes(
        [
            pa.array([Decimal(1200)], pa.decimal128(10, 0)),
            pa.array([Decimal("1200.00")], pa.decimal256(50, 2)),
        ]
    )
    big = Decimal(2**130)  # beyond 128 bits: decimal256 only, at two scales
    _same_hashes(
        [
            pa.array([big], pa.decimal256(60, 0)),
            pa.array([_dec(2**130 * 100, 2)], pa.decimal256(62, 2)),
        ]
    )
    assert _hex(
        hp.hash_rows(pa.record_batch({"k": pa.array([Decimal("1.5")], pa.decimal128(5, 1))}), ["k"])
    ) != _hex(hp.hash_rows(pa.record_batch({"k": pa.array([Decimal("15")], pa.decimal128(5, 0))}), ["k"]))


def test_float_zeros_and_nans_hash_equal_and_float32_equals_float64() -> None:
    nan_payload = np.frombuffer(np.uint64(0x7FF0000000000123).tobytes(), np.float64)[0]
    _same_hashes([pa.array([0.0, float("nan"), 1.5, None]), pa.array([-0.0, nan_payload, 1.5, None])])
    _same_hashes([pa.array([-0.0, float("-nan"), 1.5], pa.float32()), pa.array([0.0, float("nan"), 1.5])])


def test_booleans_and_nulls() -> None:
    _same_hashes([pa.array([True, False, None]), pa.array([1, 0, None], pa.int8())])  # documented: 0/1
    nulls = hp.hash_rows(pa.record_batch({"a": pa.array([None, None], pa.string()), "n": pa.nulls(2)}), ["a"])
    assert _hex(nulls) == [hex(hp.NULL_HASH)] * 2
    assert _hex(hp.hash_rows(pa.record_batch({"n": pa.nulls(2)}), ["n"])) == [hex(hp.NULL_HASH)] * 2


def test_unsupported_types_and_bad_keys_are_clear_errors() -> None:
    batch = pa.record_batch(
        {
            "l": pa.array([[1]]),
            "st": pa.array([{"a": 1}]),
            "h": pa.array([np.float16(1)], pa.float16()),
            "ok": pa.array([1]),
        }
    )
    for name, shown in (("l", "list<item: int64>"), ("st", "struct<a: int64>"), ("h", "halffloat")):
        for fn in (hp.hash_rows, hp.reference_hash_rows):
            with pytest.raises(TypeError, match=rf"key column '{name}' has type {shown}, which has no hash"):
                fn(batch, ["ok", name])
    with pytest.raises(KeyError, match="no key column 'nope'"):
        hp.hash_rows(batch, ["nope"])
    with pytest.raises(ValueError, match="at least one key column"):
        hp.hash_rows(batch, [])
    with pytest.raises(ValueError, match="at least 1 bucket"):
        hp.partition_batch(batch, ["ok"], 0)


# -- the split ---------------------------------------------------------------------------------------
def _nan_free(batch: pa.RecordBatch) -> pa.RecordBatch:
    """``batch`` with NaN as 0.0 (NaN != NaN in ``equals``) and views as large types (no take for views)."""
    batch = batch.cast(hp._view_free(batch.schema))
    arrays = [
        pc.if_else(pc.is_nan(a), 0.0, a).cast(a.type) if pa.types.is_floating(a.type) else a
        for a in batch.columns
    ]
    return pa.record_batch(arrays, schema=batch.schema)


@settings(max_examples=200)
@given(batches(), st.integers(1, 9))
def test_partition_batch_puts_every_row_in_its_bucket_in_order(
    case: tuple[pa.RecordBatch, list[str]], n: int
) -> None:
    batch, keys = case
    batch = batch.append_column("__row", pa.array(range(batch.num_rows), pa.int64()))
    hashes = hp.hash_rows(batch, keys)
    parts = hp.partition_batch(batch, keys, n)
    assert len(parts) == n
    seen: list[int] = []
    for b, part in enumerate(parts):
        assert part.schema == batch.schema
        rows = part.column("__row").to_pylist()
        assert rows == sorted(rows)  # order kept within a bucket
        assert all((int(hashes[r]) * n) >> 64 == b for r in rows)
        assert _nan_free(part).equals(_nan_free(batch).take(pa.array(rows, pa.int64())))
        seen += rows
    assert sorted(seen) == list(range(batch.num_rows))  # each row in exactly one bucket
    reference = hp.reference_partition_batch(batch, keys, n)
    assert [p.column("__row").to_pylist() for p in reference] == [
        p.column("__row").to_pylist() for p in parts
    ]


def test_payload_columns_of_any_type_travel_with_their_rows() -> None:
    """Only the keys need a hash; the split carries every other column too (float16 and intervals by
    the kernel's fixed-width gather, lists and structs by pyarrow's take), offsets included."""
    batch = pa.record_batch(
        {
            "k": pa.array(range(40)),
            "half": pa.array(np.arange(40, dtype=np.float16)),
            "span": pa.array([pa.MonthDayNano([i, 2, 3]) for i in range(40)]),
            "list": pa.array([[i, None] if i % 3 else None for i in range(40)]),
            "struct": pa.array([{"a": i, "b": str(i)} for i in range(40)]),
        }
    ).slice(3, 30)
    parts = hp.partition_batch(batch, ["k"], 4)
    expected = hp.reference_partition_batch(batch, ["k"], 4)
    assert [p.num_rows for p in parts] == [e.num_rows for e in expected]
    assert all(p.equals(e) for p, e in zip(parts, expected, strict=True))


def test_empty_buckets_are_zero_row_batches_with_the_schema() -> None:
    batch = pa.record_batch({"k": pa.array([7, 7, 7]), "v": pa.array(["a", "b", "c"])})
    parts = hp.partition_batch(batch, ["k"], 5)
    assert sorted(p.num_rows for p in parts) == [0, 0, 0, 0, 3]
    assert all(p.schema == batch.schema for p in parts)
    empty = hp.partition_batch(batch.slice(0, 0), ["k"], 3)
    assert [p.num_rows for p in empty] == [0, 0, 0]


# -- spread over buckets -----------------------------------------------------------------------------
def _bucket_counts(keys: pa.Array, n: int) -> np.ndarray:
    _, offsets = hp.bucket_order(hp.hash_rows(pa.record_batch({"k": keys}), ["k"]), n)
    return np.diff(offsets)


def _zipf_keys(distinct: int, exponent: float, rows: int, make: Callable[[np.ndarray], pa.Array]) -> pa.Array:
    """Deterministic Zipf data: key k (1-based rank) appears round(c / k**exponent) times."""
    ranks = np.arange(1, distinct + 1)
    weights = 1.0 / ranks**exponent
    counts = np.maximum(1, np.round(weights / weights.sum() * rows)).astype(np.int64)
    return make(np.repeat(ranks, counts))


@pytest.mark.parametrize("n", [4, 16, 64])
@pytest.mark.parametrize(
    "kind, make",
    [
        ("int64", lambda v: pa.array(v, pa.int64())),
        ("string", lambda v: pa.array(np.char.add("user-", v.astype(str)))),
    ],
)
def test_zipf_keys_spread_over_buckets_as_a_random_function_would(
    n: int, kind: str, make: Callable[[np.ndarray], pa.Array], record_property: Callable[[str, object], None]
) -> None:
    """100k distinct keys, Zipf exponent 0.8, 1M rows (the hottest key holds 2.2% of the rows).

    A key's rows all go to one bucket, so heavy keys (each at least a tenth of a bucket's mean) move
    buckets by themselves, and the skew reported shows it (at 64 buckets the hottest key alone is
    1.4 times a bucket's mean). The rest must spread as a random function would spread them: bucket
    b's load of light keys has mean light_rows/n and variance sum(c_k**2) (1/n)(1 - 1/n) over their
    row counts c_k, and every bucket stays within 4 standard deviations of that mean (for a random
    function one of 64 buckets falls outside about 0.4% of the time; data and hash are fixed, so the
    outcome is too)."""
    keys = _zipf_keys(100_000, 0.8, 1_000_000, make)
    counts = _bucket_counts(keys, n)
    assert counts.sum() == len(keys)
    values, per_key = np.unique(keys.to_numpy(zero_copy_only=False), return_counts=True)
    heavy = per_key >= len(keys) / n / 10
    heavy_hashes = hp.hash_rows(pa.record_batch({"k": pa.array(values[heavy], keys.type)}), ["k"])
    heavy_counts = np.bincount(hp.bucket_of(heavy_hashes, n), per_key[heavy], minlength=n)
    light = counts - heavy_counts
    mean = light.sum() / n
    sd = float(np.sqrt((per_key[~heavy].astype(np.float64) ** 2).sum() * (1 / n) * (1 - 1 / n)))
    skew = hp.bucket_skew(counts)
    record_property("bucket_skew", round(skew, 4))
    print(
        f"zipf {kind} over {n} buckets: skew {skew:.3f} ({heavy.sum()} heavy keys); light keys: skew "
        f"{hp.bucket_skew(light):.3f}, worst bucket {np.abs(light - mean).max() / sd:.1f} sd from the mean"
    )
    assert np.all(np.abs(light - mean) <= 4 * sd)


def test_distinct_keys_spread_within_two_percent(record_property: Callable[[str, object], None]) -> None:
    counts = _bucket_counts(pa.array(np.arange(1_000_000), pa.int64()), 16)
    skew = hp.bucket_skew(counts)
    record_property("bucket_skew", round(skew, 4))
    print(f"1M distinct int64 keys over 16 buckets: skew {skew:.4f}")
    assert skew < 1.02


def test_a_single_hot_key_lands_in_one_bucket(record_property: Callable[[str, object], None]) -> None:
    """No hash spreads one value: all its rows share a bucket (skew = n). Spreading a hot key needs
    salting or a broadcast join, which is the planner's business, not the hash's."""
    keys = pa.array(np.concatenate([np.full(90_000, 42), np.arange(10_000)]), pa.int64())
    counts = _bucket_counts(keys, 8)
    skew = hp.bucket_skew(counts)
    record_property("bucket_skew", round(skew, 4))
    print(f"one key in 90% of rows over 8 buckets: skew {skew:.2f}")
    assert counts.max() >= 90_000
    assert skew >= 0.9 * 8 - 0.01


@given(st.lists(st.integers(0, 2**64 - 1), max_size=50), st.integers(1, 2**32 - 1) | st.integers(1, 300))
def test_bucket_of_is_the_high_bits_of_hash_times_n(hashes: list[int], n: int) -> None:
    array = np.array(hashes, dtype=np.uint64)
    assert hp.bucket_of(array, n).tolist() == [(h * n) >> 64 for h in hashes]
    if n > 2**16:
        return  # bucket_order holds n + 1 offsets
    indices, offsets = hp.bucket_order(array, n)
    assert np.diff(offsets).sum() == len(hashes)
    for b in {(h * n) >> 64 for h in hashes}:
        assert indices[offsets[b] : offsets[b + 1]].tolist() == [
            i for i, h in enumerate(hashes) if (h * n) >> 64 == b
        ]


def test_bucket_skew() -> None:
    assert hp.bucket_skew([10, 10, 10, 10]) == 1.0
    assert hp.bucket_skew([40, 0, 0, 0]) == 4.0
    assert hp.bucket_skew([]) == 1.0
    assert hp.bucket_skew([0, 0]) == 1.0
