"""Shrinking batches while the engine holds them, without changing what anyone sees.

A batch kept in the batch store is stored in a smaller physical form: integer columns in the
smallest integer type that holds their range *in that batch*, and string/binary columns of low
cardinality dictionary-encoded. Readers get the batch back in the output's logical schema
(``restore``), so operators, Flight peers, spill files and targets see exactly the original types
and values; only the bytes held in memory (and so how soon the store spills) change. Floats and
temporal types are left alone: narrowing them would lose information.

Each batch is shrunk on its own (its types may differ from its neighbours'), which is why the
shrunk form never leaves the store: an Arrow stream or file needs one schema.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

# Dictionary-encode a string column when its distinct values are at most this share of its rows.
DICTIONARY_MAX_DISTINCT_SHARE = 0.5
MIN_ROWS = 64  # smaller batches are not worth the work

_SIGNED = (pa.int8(), pa.int16(), pa.int32())
_UNSIGNED = (pa.uint8(), pa.uint16(), pa.uint32())


def _narrow_int(array: pa.Array) -> pa.Array:
    if array.null_count == len(array):
        return array
    bounds = pc.min_max(array)
    lo, hi = bounds["min"].as_py(), bounds["max"].as_py()
    for candidate in _UNSIGNED if lo >= 0 else _SIGNED:
        if candidate.bit_width >= array.type.bit_width:
            break
        info_lo = 0 if lo >= 0 else -(1 << (candidate.bit_width - 1))
        info_hi = (1 << candidate.bit_width) - 1 if lo >= 0 else (1 << (candidate.bit_width - 1)) - 1
        if info_lo <= lo and hi <= info_hi:
            return array.cast(candidate)
    return array


def _dictionary(array: pa.Array) -> pa.Array:
    encoded = pc.dictionary_encode(array)
    distinct = len(encoded.dictionary)
    if distinct > DICTIONARY_MAX_DISTINCT_SHARE * len(array):
        return array
    for index in (pa.int8(), pa.int16()):  # the smallest index type for this many values
        if distinct <= (1 << (index.bit_width - 1)) - 1:
            return encoded.cast(pa.dictionary(index, encoded.type.value_type))
    return encoded


def shrink_batch(batch: pa.RecordBatch) -> pa.RecordBatch:
    """The batch in its smallest lossless physical form (the same batch when nothing shrinks)."""
    if batch.num_rows < MIN_ROWS:
        return batch
    columns: list[pa.Array] = []
    changed = False
    for column in batch.columns:
        kind = column.type
        if pa.types.is_integer(kind) and kind.bit_width > 8:
            new = _narrow_int(column)
        elif pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_binary(kind):
            new = _dictionary(column)
        else:
            new = column
        changed |= new is not column
        columns.append(new)
    if not changed:
        return batch
    return pa.RecordBatch.from_arrays(columns, names=batch.schema.names)


def restore(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """The batch in the output's logical ``schema`` (a cheap no-op for batches never shrunk)."""
    if batch.schema.equals(schema, check_metadata=True):
        return batch
    columns = [
        column if column.type == field.type else column.cast(field.type)
        for column, field in zip(batch.columns, schema, strict=True)
    ]
    return pa.RecordBatch.from_arrays(columns, schema=schema)
