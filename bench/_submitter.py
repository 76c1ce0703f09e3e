"""A submitter process for bench_memory.py: what ``osiris-flight run`` does, split into steps.

Started with the working directory holding ``osiris.yaml`` and the pipeline files as arguments. Like
the CLI it compiles and plans first, then starts an embedded LocalCluster from that config and prints
one JSON line (``ready``, pids); then for each pipeline index read from stdin it submits and waits,
printing one JSON line per run (status, monotonic submit and finish times, summary). ``quit`` or end
of input stops the cluster. Splitting start and run lets the benchmark sample the idle cluster's RSS
before the data flows, with the same processes.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import compile_file, submit

from osiris_flight.cluster.local import LocalCluster
from osiris_flight.components.registry import build_registry
from osiris_flight.config import load_config


def say(**fields: object) -> None:
    print(json.dumps(fields, default=str), flush=True)


def main() -> None:
    config = load_config("osiris.yaml")
    registry = build_registry(config.plugins)
    compiled = [compile_file(Path(arg), registry) for arg in sys.argv[1:]]
    cluster = LocalCluster(config)
    started = time.perf_counter()
    cluster.start()
    assert cluster.process is not None
    say(
        ready=True,
        start_s=time.perf_counter() - started,
        address=cluster.address,
        coordinator=cluster.process.pid,
        workers=cluster.worker_pids(),
        budget_mb=config.engine.memory_limit_mb,
    )
    try:
        for line in sys.stdin:
            command = line.strip()
            if not command or command == "quit":
                break
            t_submit = time.monotonic()
            result = submit(
                cluster.address, compiled[int(command)], Path("run_logs").resolve(), config.engine.batch_rows
            )
            say(
                status=result.status,
                error=result.error,
                t_submit=t_submit,
                t_finish=time.monotonic(),
                wall_s=result.wall_s,
                summary=result.summary,
            )
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
