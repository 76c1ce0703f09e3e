"""Allocator settings for a worker process, so its RSS follows what it holds.

A worker's memory comes from two allocators, and with their defaults both keep freed memory long after
a batch is gone, so a long stream looked like a leak (RSS growing with data size while the batch
store stayed within its budget; measured with bench/bench_memory.py):

* **Arrow's pool** (jemalloc, chosen by ``ARROW_DEFAULT_MEMORY_POOL`` before pyarrow allocates) holds
  batches, Parquet pages and spill buffers. jemalloc returns freed pages to the OS after a *decay* time,
  so RSS includes what was freed during that time: on a worker streaming a batch every few
  milliseconds, tens of MiB. In the exchange of bench/bench_memory.py the producer's peak was ~10 MiB
  lower with ``decay_ms = 100`` than with 1000, at no measurable cost in bench_throughput.py; ``0``
  (return at once) saved ~30 MiB more but made the fused CSV chain 1.6x slower (a page fault on
  every reuse of a freed block).
* **glibc malloc** holds what gRPC receives (Flight messages, a batch each, wrapped zero-copy as Arrow
  buffers outside Arrow's pool) and Python objects. glibc serves blocks over its mmap threshold with
  ``mmap`` and unmaps them on free, but raises that threshold to the size of every mmapped block freed
  (up to 32 MiB), after which batch-sized blocks come from its heaps and stay there, fragmented, when
  freed. A fixed threshold (``M_MMAP_THRESHOLD``; setting it turns the adjustment off) keeps them mmapped.

``tune()`` applies both and says what it applied (the glibc setting only on Linux with glibc).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

log = logging.getLogger(__name__)

ARROW_POOL = "jemalloc"
JEMALLOC_DECAY_MS = 100
GLIBC_MMAP_THRESHOLD = 128 * 1024  # glibc's own initial value, now fixed
_M_MMAP_THRESHOLD = -3  # from glibc's malloc.h


def choose_arrow_pool() -> None:
    """Select jemalloc as Arrow's default pool unless the environment chose one. Call before pyarrow
    allocates anything (the pool is picked on first use)."""
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", ARROW_POOL)


def tune() -> list[str]:
    """Apply the settings above to this process; returns a line per setting applied."""
    applied: list[str] = []
    if sys.platform.startswith("linux") and _set_glibc_mmap_threshold(GLIBC_MMAP_THRESHOLD):
        applied.append(f"glibc M_MMAP_THRESHOLD={GLIBC_MMAP_THRESHOLD}")
    import pyarrow as pa

    if pa.default_memory_pool().backend_name == "jemalloc":
        pa.jemalloc_set_decay_ms(JEMALLOC_DECAY_MS)
        applied.append(f"jemalloc decay_ms={JEMALLOC_DECAY_MS}")
    log.debug("allocator settings: %s", ", ".join(applied) or "none")
    return applied


def _set_glibc_mmap_threshold(value: int) -> bool:
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, value))
