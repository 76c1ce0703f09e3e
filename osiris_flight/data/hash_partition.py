"""Hash partitioning of Arrow record batches: a row hash that every process computes alike, and the
split of a batch into N buckets by it (for hash exchanges and for spilling by bucket).

The function (stable: a change of any of this is a change of the function, and the golden values in
tests/data/test_hash_partition.py catch it):

- **Value hash.** ``XXH64(canonical_bytes(value), seed=0)`` (xxHash, 64-bit). A NULL's value hash is
  the constant ``NULL_HASH`` (0x9E3779B97F4A7C15), whatever the column's type, so all NULL keys of a
  column land in one bucket: group-by keeps NULLs together as one group, and joins, which never
  match NULL to anything, lose nothing by it.
- **Canonical bytes** (little-endian throughout), one form per *logical* type, so equal values of
  different physical types hash equal:

  - integers (int8..int64, uint8..uint64), booleans (0/1): the value as 8 bytes of int64 two's
    complement (a uint64 above 2**63 - 1 wraps: it shares its hash with a negative int64, a harmless
    collision);
  - date32, date64: days since 1970-01-01 as int64 (date64 milliseconds floor-divided by 86,400,000);
  - timestamp (any unit, any time zone: the stored UTC instant counts) and duration: 16 bytes, whole
    seconds as int64 (floor) then nanoseconds within the second (0..999,999,999) as int64: lossless
    for every unit and range, so the same instant in s, ms, us or ns hashes equal;
  - time32, time64: nanoseconds since midnight as int64;
  - float32, float64: the float64 value's IEEE bits as 8 bytes, with -0.0 made 0.0 and every NaN the
    single NaN 0x7FF8000000000000;
  - decimal32/64/128/256: the unscaled integer with trailing decimal zeros stripped (the scale
    lowered to match; zero is 0 at scale 0), as 16 bytes of two's complement (32 bytes when it needs
    more than 128 bits), then the scale as int64: 1.50 as decimal(5,2) and 1.5 as decimal(10,1) are
    both (15, 1);
  - string, large_string, binary, large_binary, fixed_size_binary (and their views): the bytes
    (UTF-8 for strings);
  - dictionary: the hash of the value the index points at;
  - null type: NULL.

  Values of different logical types (the integer 5, the decimal 5, the float 5.0, the string "5")
  are not promised equal hashes: a join on such keys casts them to one type first.
- **Row hash.** One key column: its value hash. Several: ``XXH64`` (seed 0) of their value hashes as
  consecutive 8-byte little-endian words, in key order.
- **Bucket** among n: ``(row_hash * n) >> 64``, the high 64 bits of the 128-bit product
  (multiply-shift, Lemire 2019): as even as ``row_hash % n`` and one multiplication instead of a
  64-bit division, which cost more than the hash itself. It reads the hash's high bits; a second
  level of partitioning (a spilled bucket split again) uses the low 64 bits of the product, or
  another key order, never the same rule twice.

``hash_rows`` runs the Cython kernel (``osiris_flight._native_hash``, native/hash_partition.pyx),
which reads the Arrow buffers directly without the GIL; ``reference_hash_rows`` is its pure twin
(pyarrow.compute + numpy; a Python loop per value for strings, binaries and decimals), written from
this definition without the kernel's buffer arithmetic. Both raise ``TypeError`` naming the column
and its type for a key of any other type (lists, structs, maps, unions, intervals, float16, run-end
encoded, extension types).
"""

from __future__ import annotations

import decimal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeAlias

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from osiris_flight import _native_hash

if sys.byteorder != "little":  # the canonical bytes are read in place from little-endian buffers
    raise ImportError("osiris_flight.data.hash_partition needs a little-endian host")

NULL_HASH = 0x9E3779B97F4A7C15
CANONICAL_NAN = 0x7FF8000000000000
MS_PER_DAY = 86_400_000
NS_PER_UNIT = {"s": 1_000_000_000, "ms": 1_000_000, "us": 1_000, "ns": 1}
UNITS_PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}

# Kinds shared with the kernel (the enum in native/hash_partition.pyx).
NULLTYPE, INT, BOOL, FLOAT32, FLOAT64, DATE64, INSTANT, TIME, BINARY32, BINARY64, FIXEDBIN, DECIMAL, DICT = (
    range(13)
)

Batch: TypeAlias = pa.RecordBatch | pa.Table


@dataclass(frozen=True)
class _Kind:
    """How one Arrow type is hashed: the kernel's kind and its parameters."""

    kind: int
    width: int = 0  # bytes per value (integers, times, decimals, dictionary indices)
    signed: bool = True
    param: int = 0  # units per second (instants), ns per unit (times), scale, fixed width


def _unsupported(name: str, type_: pa.DataType) -> TypeError:
    return TypeError(
        f"hash partitioning: key column {name!r} has type {type_}, which has no hash; supported: "
        "integers, boolean, float32/64, decimals, date, time, timestamp, duration, string, binary "
        "(plain, large, fixed-size, view) and dictionaries of those"
    )


def _kind(name: str, t: pa.DataType) -> _Kind:
    """The hashing kind of type ``t`` (a view type is cast to its large twin before hashing)."""
    if pa.types.is_null(t):
        return _Kind(NULLTYPE)
    if pa.types.is_boolean(t):
        return _Kind(BOOL)
    if pa.types.is_integer(t):
        return _Kind(INT, t.bit_width // 8, pa.types.is_signed_integer(t))
    if pa.types.is_date32(t):
        return _Kind(INT, 4, True)
    if pa.types.is_date64(t):
        return _Kind(DATE64, 8)
    if pa.types.is_timestamp(t) or pa.types.is_duration(t):
        return _Kind(INSTANT, 8, True, UNITS_PER_SECOND[t.unit])
    if pa.types.is_time(t):
        return _Kind(TIME, t.bit_width // 8, True, NS_PER_UNIT[t.unit])
    if pa.types.is_float32(t):
        return _Kind(FLOAT32, 4)
    if pa.types.is_float64(t):
        return _Kind(FLOAT64, 8)
    if pa.types.is_decimal(t):
        return _Kind(DECIMAL, t.bit_width // 8, True, t.scale)
    if pa.types.is_string(t) or pa.types.is_binary(t):
        return _Kind(BINARY32)
    if pa.types.is_large_string(t) or pa.types.is_large_binary(t):
        return _Kind(BINARY64)
    if pa.types.is_fixed_size_binary(t):
        return _Kind(FIXEDBIN, param=t.byte_width)
    if pa.types.is_dictionary(t):
        _kind(name, t.value_type)  # the values must be hashable
        return _Kind(DICT, t.index_type.bit_width // 8, pa.types.is_signed_integer(t.index_type))
    raise _unsupported(name, t)


def _unview(name: str, array: pa.Array) -> pa.Array:
    """string_view/binary_view arrays as large_string/large_binary (same bytes, one layout to read)."""
    t = array.type
    if pa.types.is_string_view(t):
        return array.cast(pa.large_string())
    if pa.types.is_binary_view(t):
        return array.cast(pa.large_binary())
    if pa.types.is_dictionary(t) and (
        pa.types.is_string_view(t.value_type) or pa.types.is_binary_view(t.value_type)
    ):
        assert isinstance(array, pa.DictionaryArray)
        return pa.DictionaryArray.from_arrays(array.indices, _unview(name, array.dictionary))
    return array


def _key_arrays(batch: pa.RecordBatch, keys: Sequence[str]) -> list[tuple[str, pa.Array]]:
    if not keys:
        raise ValueError("hash partitioning needs at least one key column")
    out = []
    for name in keys:
        index = batch.schema.get_field_index(name)
        if index < 0:
            raise KeyError(f"hash partitioning: no key column {name!r} (columns: {batch.schema.names})")
        out.append((name, _unview(name, batch.column(index))))
    return out


def _per_batch(batch: Batch, hash_batch: Callable[[pa.RecordBatch], np.ndarray]) -> np.ndarray:
    if isinstance(batch, pa.RecordBatch):
        return hash_batch(batch)
    parts = [hash_batch(b) for b in batch.to_batches()]
    return np.concatenate(parts) if parts else np.empty(0, dtype=np.uint64)


# -- the kernel --------------------------------------------------------------------------------------
def _address(buffer: pa.Buffer | None) -> int:
    return 0 if buffer is None else buffer.address


def _spec(name: str, array: pa.Array) -> tuple[object, ...]:
    k = _kind(name, array.type)
    if k.kind == DICT:
        assert isinstance(array, pa.DictionaryArray)
        dict_hashes = _native_column(name, array.dictionary)
        array = array.indices
    else:
        dict_hashes = None
    buffers = array.buffers()
    validity = _address(buffers[0]) if array.null_count else 0
    if k.kind == NULLTYPE:
        data, offsets = 0, 0
    elif k.kind in (BINARY32, BINARY64):
        data, offsets = _address(buffers[2]), _address(buffers[1])
    else:
        data, offsets = _address(buffers[1]), 0
    return (k.kind, k.width, int(k.signed), k.param, validity, data, offsets, array.offset, dict_hashes)


def _native_column(name: str, array: pa.Array) -> np.ndarray:
    return _native_hash.hash_columns([_spec(name, array)], len(array))


def _native_batch(batch: pa.RecordBatch, keys: Sequence[str]) -> np.ndarray:
    arrays = _key_arrays(batch, keys)
    specs = [_spec(name, array) for name, array in arrays]
    out = _native_hash.hash_columns(specs, batch.num_rows)
    del arrays  # the buffers the kernel read stay alive until here
    return out


def hash_rows(batch: Batch, keys: Sequence[str]) -> np.ndarray:
    """The row hash (numpy uint64, one per row) of ``keys`` of ``batch``, by the Cython kernel."""
    return _per_batch(batch, lambda b: _native_batch(b, keys))


# -- the reference -----------------------------------------------------------------------------------
_M64 = (1 << 64) - 1
P1, P2, P3, P4, P5 = (
    0x9E3779B185EBCA87,
    0xC2B2AE3D27D4EB4F,
    0x165667B19E3779F9,
    0x85EBCA77C2B2AE63,
    0x27D4EB2F165667C5,
)


def xxh64(data: bytes, seed: int = 0) -> int:
    """XXH64 of ``data`` in pure Python (the reference's byte hash; slow, exact)."""

    def rotl(x: int, r: int) -> int:
        return ((x << r) | (x >> (64 - r))) & _M64

    def round_(acc: int, lane: int) -> int:
        return (rotl((acc + lane * P2) & _M64, 31) * P1) & _M64

    n = len(data)
    p = 0
    if n >= 32:
        v = [(seed + P1 + P2) & _M64, (seed + P2) & _M64, seed, (seed - P1) & _M64]
        while p + 32 <= n:
            for j in range(4):
                v[j] = round_(v[j], int.from_bytes(data[p : p + 8], "little"))
                p += 8
        h = (rotl(v[0], 1) + rotl(v[1], 7) + rotl(v[2], 12) + rotl(v[3], 18)) & _M64
        for x in v:
            h = ((h ^ round_(0, x)) * P1 + P4) & _M64
    else:
        h = (seed + P5) & _M64
    h = (h + n) & _M64
    while p + 8 <= n:
        h ^= round_(0, int.from_bytes(data[p : p + 8], "little"))
        h = (rotl(h, 27) * P1 + P4) & _M64
        p += 8
    if p + 4 <= n:
        h ^= (int.from_bytes(data[p : p + 4], "little") * P1) & _M64
        h = (rotl(h, 23) * P2 + P3) & _M64
        p += 4
    while p < n:
        h ^= (data[p] * P5) & _M64
        h = (rotl(h, 11) * P1) & _M64
        p += 1
    h ^= h >> 33
    h = (h * P2) & _M64
    h ^= h >> 29
    h = (h * P3) & _M64
    return h ^ (h >> 32)


def _u64(x: int) -> np.uint64:
    return np.uint64(x)


def _np_rotl(x: np.ndarray, r: int) -> np.ndarray:
    return (x << _u64(r)) | (x >> _u64(64 - r))


def _np_round(acc: np.ndarray, lane: np.ndarray) -> np.ndarray:
    return _np_rotl(acc + lane * _u64(P2), 31) * _u64(P1)


def _np_avalanche(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> _u64(33))
    h = h * _u64(P2)
    h = h ^ (h >> _u64(29))
    h = h * _u64(P3)
    return h ^ (h >> _u64(32))


def xxh64_words(words: Sequence[np.ndarray]) -> np.ndarray:
    """XXH64 (seed 0), vectorized over rows, of the 8-byte little-endian words ``words[0][i], ...``."""
    with np.errstate(over="ignore"):
        rows = len(words[0])
        n = 8 * len(words)
        p = 0
        if n >= 32:
            v = [
                np.full(rows, (P1 + P2) & _M64, np.uint64),
                np.full(rows, P2, np.uint64),
                np.zeros(rows, np.uint64),
                np.full(rows, (-P1) & _M64, np.uint64),
            ]
            while 8 * p + 32 <= n:
                for j in range(4):
                    v[j] = _np_round(v[j], words[p])
                    p += 1
            h = _np_rotl(v[0], 1) + _np_rotl(v[1], 7) + _np_rotl(v[2], 12) + _np_rotl(v[3], 18)
            for x in v:
                h = (h ^ _np_round(np.zeros(rows, np.uint64), x)) * _u64(P1) + _u64(P4)
        else:
            h = np.full(rows, P5, np.uint64)
        h = h + _u64(n)
        while p < len(words):
            h = h ^ _np_round(np.zeros(rows, np.uint64), words[p])
            h = _np_rotl(h, 27) * _u64(P1) + _u64(P4)
            p += 1
        return _np_avalanche(h)


def _ints(array: pa.Array) -> np.ndarray:
    """Non-null values as int64 (nulls as 0; uint64 wraps, as the canonical form says)."""
    return np.asarray(pc.fill_null(array, 0).to_numpy(zero_copy_only=False)).astype(np.int64)


def _decimal_bytes(value: decimal.Decimal) -> bytes:
    sign, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)
    unscaled = int("".join(map(str, digits)) or "0") * (-1 if sign else 1)
    scale = -exponent
    if unscaled == 0:
        scale = 0
    while unscaled and unscaled % 10 == 0:
        unscaled //= 10
        scale -= 1
    width = 16 if -(2**127) <= unscaled < 2**127 else 32
    return unscaled.to_bytes(width, "little", signed=True) + scale.to_bytes(8, "little", signed=True)


def _reference_values(name: str, array: pa.Array) -> np.ndarray:
    """Value hashes of one column (NULLs still unset: the caller applies the validity)."""
    k = _kind(name, array.type)
    rows = len(array)
    words: list[np.ndarray]
    if k.kind == NULLTYPE:
        return np.zeros(rows, np.uint64)
    if k.kind == DICT:
        assert isinstance(array, pa.DictionaryArray)
        values = reference_column_hashes(name, array.dictionary)
        return values[_ints(array.indices)] if len(values) else np.zeros(rows, np.uint64)
    if k.kind in (INT, BOOL):
        words = [_ints(array.cast(pa.int64()) if k.kind == BOOL else array.view(_int_view(array.type)))]
    elif k.kind == DATE64:
        words = [_ints(array.view(pa.int64())) // MS_PER_DAY]
    elif k.kind == INSTANT:
        v = _ints(array.view(pa.int64()))
        words = [v // k.param, (v % k.param) * (1_000_000_000 // k.param)]
    elif k.kind == TIME:
        words = [_ints(array.view(pa.int32() if k.width == 4 else pa.int64())) * k.param]
    elif k.kind in (FLOAT32, FLOAT64):
        d = np.asarray(pc.fill_null(array.cast(pa.float64()), 0.0).to_numpy(zero_copy_only=False))
        d = np.where(d == 0.0, 0.0, d)  # -0.0 -> 0.0
        bits = d.view(np.uint64)
        words = [np.where(np.isnan(d), np.uint64(CANONICAL_NAN), bits)]
    else:
        return np.array([_scalar_hash(k, v) for v in array.to_pylist()], dtype=np.uint64)
    return xxh64_words([w.astype(np.int64).view(np.uint64) for w in words])


def _int_view(t: pa.DataType) -> pa.DataType:
    return pa.int32() if pa.types.is_date32(t) else t


def _scalar_hash(k: _Kind, value: object) -> int:
    if value is None:
        return 0
    if k.kind == DECIMAL:
        assert isinstance(value, decimal.Decimal)
        return xxh64(_decimal_bytes(value))
    if isinstance(value, str):
        return xxh64(value.encode("utf-8"))
    assert isinstance(value, bytes)
    return xxh64(value)


def reference_column_hashes(name: str, array: pa.Array) -> np.ndarray:
    """Value hashes of one column, NULLs as ``NULL_HASH``: the reference."""
    array = _unview(name, array)
    values = _reference_values(name, array)
    if pa.types.is_null(array.type):
        return np.full(len(array), NULL_HASH, np.uint64)
    valid = np.asarray(array.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    return np.where(valid, values, np.uint64(NULL_HASH))


def _reference_batch(batch: pa.RecordBatch, keys: Sequence[str]) -> np.ndarray:
    columns = [reference_column_hashes(name, array) for name, array in _key_arrays(batch, keys)]
    return columns[0] if len(columns) == 1 else xxh64_words(columns)


def reference_hash_rows(batch: Batch, keys: Sequence[str]) -> np.ndarray:
    """The row hash computed from the definition with pyarrow.compute and numpy (the kernel's twin)."""
    return _per_batch(batch, lambda b: _reference_batch(b, keys))


# -- partitioning ------------------------------------------------------------------------------------
def bucket_order(hashes: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices grouped by bucket ``(hash * n) >> 64``, row order kept in each: ``(indices, offsets)``,
    bucket ``b`` being ``indices[offsets[b]:offsets[b + 1]]`` (a counting sort in the kernel)."""
    return _native_hash.bucket_order(np.ascontiguousarray(hashes, dtype=np.uint64), n)


def _view_free(schema: pa.Schema) -> pa.Schema:
    def plain(t: pa.DataType) -> pa.DataType:
        if pa.types.is_string_view(t):
            return pa.large_string()
        if pa.types.is_binary_view(t):
            return pa.large_binary()
        return t

    return pa.schema([f.with_type(plain(f.type)) for f in schema], metadata=schema.metadata)


def _split(
    batch: pa.RecordBatch,
    indices: np.ndarray,
    offsets: np.ndarray,
    gather: Callable[[pa.RecordBatch, np.ndarray, np.ndarray], list[pa.RecordBatch]],
) -> list[pa.RecordBatch]:
    schema = batch.schema
    plain = _view_free(schema)
    if plain != schema:  # pyarrow has no take for string_view/binary_view: split their large twins
        batch = batch.cast(plain)
    parts = gather(batch, indices, offsets)
    return parts if plain == schema else [p.cast(schema) for p in parts]


def _gather_take(batch: pa.RecordBatch, indices: np.ndarray, offsets: np.ndarray) -> list[pa.RecordBatch]:
    """One pyarrow take per bucket (the reference's split, and the kernel's for other types)."""
    return [
        batch.take(pa.array(indices[int(offsets[b]) : int(offsets[b + 1])])) for b in range(len(offsets) - 1)
    ]


def _gather_native(batch: pa.RecordBatch, indices: np.ndarray, offsets: np.ndarray) -> list[pa.RecordBatch]:
    """Each bucket's rows gathered column by column into buffers of its own by the kernel (fixed-width,
    boolean, binary/string and dictionary columns; any other column by pyarrow's take)."""
    if indices.dtype != np.int32:  # 2**31 rows or more
        return _gather_take(batch, indices, offsets)
    counts = np.diff(offsets)
    columns: list[list[pa.Array]] = [[] for _ in counts]
    for array in batch.columns:
        for b, part in enumerate(_split_array(array, indices, offsets, counts)):
            columns[b].append(part)
    return [pa.RecordBatch.from_arrays(cols, schema=batch.schema) for cols in columns]


def _split_array(
    array: pa.Array, indices: np.ndarray, offsets: np.ndarray, counts: np.ndarray
) -> list[pa.Array]:
    t = array.type
    if pa.types.is_dictionary(t):
        assert isinstance(array, pa.DictionaryArray)
        return [
            pa.DictionaryArray.from_buffers(t, len(p), p.buffers(), array.dictionary, p.null_count)
            for p in _split_array(array.indices, indices, offsets, counts)
        ]
    if pa.types.is_null(t):
        return [pa.nulls(int(n)) for n in counts]
    buffers = array.buffers()
    fixed = pa.types.is_primitive(t) and not pa.types.is_boolean(t)
    fixed = fixed or pa.types.is_decimal(t) or pa.types.is_fixed_size_binary(t)
    binary = pa.types.is_string(t) or pa.types.is_binary(t) or pa.types.is_large_string(t)
    binary = binary or pa.types.is_large_binary(t)
    if len(buffers) != (3 if binary else 2) or not (fixed or binary or pa.types.is_boolean(t)):
        return [
            array.take(pa.array(indices[int(offsets[b]) : int(offsets[b + 1])])) for b in range(len(counts))
        ]
    if array.null_count:
        validity = _native_hash.split_bits(buffers[0].address, array.offset, indices, offsets)
    else:
        validity = [(None, 0) for _ in counts]
    if binary:
        width = 8 if pa.types.is_large_string(t) or pa.types.is_large_binary(t) else 4
        data = _native_hash.split_binary(
            buffers[1].address, width, _address(buffers[2]), array.offset, indices, offsets
        )
        return [
            pa.Array.from_buffers(t, int(n), [v, o, d], null_count=z)
            for n, (v, z), (o, d) in zip(counts, validity, data, strict=True)
        ]
    if pa.types.is_boolean(t):
        bits = [buf for buf, _ in _native_hash.split_bits(buffers[1].address, array.offset, indices, offsets)]
    else:
        width = t.byte_width if pa.types.is_fixed_size_binary(t) else t.bit_width // 8
        bits = _native_hash.split_fixed(buffers[1].address + array.offset * width, width, indices, offsets)
    return [
        pa.Array.from_buffers(t, int(n), [v, d], null_count=z)
        for n, (v, z), d in zip(counts, validity, bits, strict=True)
    ]


def partition_batch(batch: pa.RecordBatch, keys: Sequence[str], n: int) -> list[pa.RecordBatch]:
    """``batch`` split into ``n`` batches: bucket ``i`` holds the rows whose bucket is ``i``, in
    their order in ``batch``; an empty bucket is a 0-row batch with the schema."""
    if n < 1:
        raise ValueError(f"hash partitioning needs at least 1 bucket, not {n}")
    indices, offsets = bucket_order(hash_rows(batch, keys), n)
    return _split(batch, indices, offsets, _gather_native)


def bucket_of(hashes: np.ndarray, n: int) -> np.ndarray:
    """The bucket (int64) of each row hash among ``n``: ``(hash * n) >> 64``, in 32-bit halves so
    numpy needs no 128-bit integers (hi * n + (lo * n >> 32) < 2**64 for n < 2**32)."""
    if not 1 <= n < 2**32:
        raise ValueError(f"the number of buckets must be in 1..4294967295, not {n}")
    h = np.asarray(hashes, dtype=np.uint64)
    hi, lo, m = h >> np.uint64(32), h & np.uint64(0xFFFFFFFF), np.uint64(n)
    return ((hi * m + ((lo * m) >> np.uint64(32))) >> np.uint64(32)).astype(np.int64)


def reference_partition_batch(batch: pa.RecordBatch, keys: Sequence[str], n: int) -> list[pa.RecordBatch]:
    """``partition_batch`` from the reference hash, the split by a stable numpy argsort and take."""
    if n < 1:
        raise ValueError(f"hash partitioning needs at least 1 bucket, not {n}")
    buckets = bucket_of(reference_hash_rows(batch, keys), n)
    indices = np.argsort(buckets, kind="stable")
    offsets = np.concatenate([[0], np.cumsum(np.bincount(buckets, minlength=n))])
    return _split(batch, indices, offsets, _gather_take)


def bucket_skew(counts: Sequence[int] | np.ndarray) -> float:
    """Skew of a spread over buckets: the fullest bucket's rows over the mean (1.0 is even; 0 rows: 1.0)."""
    arr = np.asarray(counts, dtype=np.float64)
    if arr.size == 0 or arr.sum() == 0:
        return 1.0
    return float(arr.max() / arr.mean())
