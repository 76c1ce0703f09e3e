"""Room on a worker's stack for long fused chains.

A fused chain is a pull chain: each step's generator pulls from the one before it, so running a
chain of N steps nests about ten Python frames per step (the step's own generator, the RowStream
around it, the engine's counting wrapper), each resumed on the C stack as well. Python's default
recursion limit (1000) failed chains of ~100 steps with RecursionError; an 8 MiB thread stack holds
roughly 20000 nested generator frames. A worker therefore starts its threads with a 256 MiB stack
(address space, not memory: pages are committed only when a chain reaches that deep) and a
recursion limit that fits ``MAX_FUSED_STEPS`` with room to spare; the planner refuses a longer fused
chain with that limit named (oml/plan.py).
"""

from __future__ import annotations

import sys
import threading

from osiris_flight.oml.plan import MAX_FUSED_STEPS

FRAMES_PER_STEP = 40  # measured ~10 for a filter; generous for components that nest more
TASK_THREAD_STACK_BYTES = 256 * 1024 * 1024
RECURSION_LIMIT = 50_000 + FRAMES_PER_STEP * MAX_FUSED_STEPS


def allow_deep_chains() -> None:
    """Give threads started from now on a stack deep enough for ``MAX_FUSED_STEPS`` fused steps."""
    threading.stack_size(TASK_THREAD_STACK_BYTES)
    sys.setrecursionlimit(max(sys.getrecursionlimit(), RECURSION_LIMIT))
