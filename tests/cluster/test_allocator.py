"""runtime/allocator.py in a fresh process, as a worker starts: both settings apply on this Linux."""

from __future__ import annotations

import json
import os
import subprocess
import sys

SCRIPT = """
import json
from osiris_flight.runtime import allocator
allocator.choose_arrow_pool()
import pyarrow as pa
applied = allocator.tune()
print(json.dumps({"applied": applied, "pool": pa.default_memory_pool().backend_name}))
"""


def run(env: dict[str, str]) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=60, check=True
    )
    return dict(json.loads(out.stdout))


def test_a_worker_process_gets_jemalloc_with_short_decay_and_a_fixed_mmap_threshold() -> None:
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    result = run(env)
    assert result["pool"] == "jemalloc"
    assert result["applied"] == ["glibc M_MMAP_THRESHOLD=131072", "jemalloc decay_ms=100"]


def test_a_pool_chosen_in_the_environment_is_kept() -> None:
    result = run({**os.environ, "ARROW_DEFAULT_MEMORY_POOL": "system"})
    assert result["pool"] == "system"
    assert result["applied"] == ["glibc M_MMAP_THRESHOLD=131072"]  # no jemalloc to tune
