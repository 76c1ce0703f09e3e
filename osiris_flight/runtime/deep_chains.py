"""Room on a worker's stack for long fused chains.

A fused chain is a pull chain: each step's generator pulls from the one before it, so running a
chain of N steps nests about ten Python frames per step (the step's own generator, the RowStream
around it, the engine's counting wrapper), each resumed on the C stack as well. Python's default
recursion limit (1000) failed chains of ~100 steps with RecursionError; an 8 MiB thread stack holds
roughly 20000 nested generator frames (~400 bytes each, measured). A worker therefore starts its
threads with a 64 MiB stack (address space: pages are touched only as deep as a chain goes) and a
recursion limit that fits ``MAX_FUSED_STEPS`` with room to spare, yet stays well inside that stack
(so a runaway recursion in a task is still a RecursionError, not a crash); the planner refuses a
longer fused chain with that limit named (oml/plan.py). The worker's main thread keeps its own
(8 MiB) stack and runs no chains.
"""

from __future__ import annotations

import sys
import threading

from osiris_flight.oml.plan import MAX_FUSED_STEPS

FRAMES_PER_STEP = 20  # measured ~10 for a filter; room for components that nest more
TASK_THREAD_STACK_BYTES = 64 * 1024 * 1024
RECURSION_LIMIT = 10_000 + FRAMES_PER_STEP * MAX_FUSED_STEPS  # 50000 frames: ~20 MiB of stack


def allow_deep_chains() -> None:
    """Give threads started from now on a stack deep enough for ``MAX_FUSED_STEPS`` fused steps."""
    threading.stack_size(TASK_THREAD_STACK_BYTES)
    sys.setrecursionlimit(max(sys.getrecursionlimit(), RECURSION_LIMIT))
