"""Type stub of the Cython module built from native/hash_partition.pyx."""

import numpy as np
import pyarrow as pa

NULL_HASH: int

def xxh64(data: bytes) -> int: ...
def hash_columns(specs: list[tuple[object, ...]], rows: int) -> np.ndarray: ...
def bucket_order(hashes: np.ndarray, n_buckets: int) -> tuple[np.ndarray, np.ndarray]: ...
def split_bits(
    address: int, offset: int, indices: np.ndarray, offsets: np.ndarray
) -> list[tuple[pa.Buffer, int]]: ...
def split_fixed(address: int, width: int, indices: np.ndarray, offsets: np.ndarray) -> list[pa.Buffer]: ...
def split_binary(
    offsets_address: int,
    offset_width: int,
    data_address: int,
    base: int,
    indices: np.ndarray,
    offsets: np.ndarray,
) -> list[tuple[pa.Buffer, pa.Buffer]]: ...
