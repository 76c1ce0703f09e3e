"""Embedded cluster start and stop, before and after its sockets became private (issue 8): the
coordinator on ``tcp://127.0.0.1:*`` and Flight on ``grpc://127.0.0.1:0`` (before) against
``ipc://<0700 dir>/control.sock`` and ``grpc+unix://`` (after).

"Before" is another checkout of the engine with its own venv (default ``/work/main``, only read: its
``.venv/bin/python`` runs this file's measuring snippet, its ``osiris-flight`` the CLI), "after"
this one. For each variant, alternating in rotating order, ``--rounds`` times:

* ``LocalCluster.start()`` (coordinator and workers started, every worker registered) and
  ``stop()``, timed inside a fresh Python process that has already imported the engine;
* a tiny ``osiris-flight run`` (1,000-row CSV -> CSV) end to end, wall clock from outside.

Writes bench/results/embedded_start.{md,json}: medians, and every sample.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import REPO, fmt, machine, md_table, median, rotate, write_results

MEASURE = """
import json, sys, time
from osiris_flight.cluster.local import LocalCluster
from osiris_flight.config import Config, EngineConfig
cluster = LocalCluster(Config(engine=EngineConfig(workers=int(sys.argv[1]), slots_per_worker=2)))
t0 = time.perf_counter(); address = cluster.start(); t1 = time.perf_counter()
cluster.stop(); t2 = time.perf_counter()
print(json.dumps({"start_s": t1 - t0, "stop_s": t2 - t1, "address": address}))
"""

PIPELINE = """oml_version: "0.2.0"
name: tiny
steps:
  - id: read
    component: filesystem.csv_extractor
    mode: read
    config: {path: in.csv}
  - id: write
    component: filesystem.csv_writer
    mode: write
    depends_on: [read]
    config: {path: out.csv}
"""


PYCACHE = ""  # set in main()


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True).stdout.strip()


def _env(repo: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OSIRIS_FLIGHT_PLUGINS", "PYTHONPATH")}
    env["PYTHONPATH"] = str(repo)
    # Bytecode of both variants goes to the bench's own cache (filled by the warm-up), never into the
    # "before" checkout, which is only read.
    env["PYTHONPYCACHEPREFIX"] = PYCACHE
    return env


def cluster_sample(repo: Path, workers: int, cwd: Path) -> dict[str, float | str]:
    out = subprocess.run(
        [str(repo / ".venv/bin/python"), "-c", MEASURE, str(workers)],
        cwd=cwd,
        env=_env(repo),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def run_sample(repo: Path, workers: int, cwd: Path) -> float:
    flags = ["--workers", str(workers), "--run-logs", str(cwd / "run_logs")]
    started = time.perf_counter()
    proc = subprocess.run(
        [str(repo / ".venv/bin/osiris-flight"), "run", "pipeline.yaml", "--quiet", "--json", *flags],
        cwd=cwd,
        env=_env(repo),
        capture_output=True,
        text=True,
        timeout=300,
    )
    wall = time.perf_counter() - started
    if proc.returncode != 0 or json.loads(proc.stdout)["status"] != "success":
        raise SystemExit(f"{repo}: osiris-flight run failed ({proc.returncode}): {proc.stdout}{proc.stderr}")
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--before", type=Path, default=Path("/work/main"), help="checkout with .venv: the tcp code"
    )
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    repos = {"before (tcp loopback)": args.before.resolve(), "after (private ipc)": REPO}
    for name, repo in repos.items():
        if not (repo / ".venv/bin/python").exists():
            raise SystemExit(f"{name}: no {repo}/.venv/bin/python")
    load_start = os.getloadavg()[0]
    before_at_start = _git(args.before, "rev-parse", "--short", "HEAD")
    samples: dict[str, dict[str, list]] = {
        n: {"start_s": [], "stop_s": [], "run_s": [], "address": []} for n in repos
    }
    with tempfile.TemporaryDirectory(prefix="bench_embedded_") as tmp:
        work = Path(tmp)
        global PYCACHE
        PYCACHE = str(work / "pycache")
        (work / "in.csv").write_text("id,v\n" + "".join(f"{i},v{i}\n" for i in range(1000)))
        (work / "pipeline.yaml").write_text(PIPELINE)
        for repo in repos.values():  # warm-up: page cache, .pyc files
            cluster_sample(repo, args.workers, work)
            run_sample(repo, args.workers, work)
        for i in range(args.rounds):
            for name in rotate(list(repos), i):
                c = cluster_sample(repos[name], args.workers, work)
                for key in ("start_s", "stop_s", "address"):
                    samples[name][key].append(c[key])
                samples[name]["run_s"].append(run_sample(repos[name], args.workers, work))
            print(f"round {i + 1}/{args.rounds} done", flush=True)

    medians = {
        n: {k: median(v) for k, v in s.items() if k != "address"} | {"address_example": s["address"][0]}
        for n, s in samples.items()
    }
    before, after = medians["before (tcp loopback)"], medians["after (private ipc)"]
    data = {
        "machine": machine(),
        "before_repo": str(args.before),
        "before_commit_start": before_at_start,
        "before_commit": _git(args.before, "rev-parse", "--short", "HEAD"),
        "after_commit": _git(REPO, "rev-parse", "--short", "HEAD"),
        "workers": args.workers,
        "rounds": args.rounds,
        "medians": medians,
        "samples": samples,
    }
    names = list(repos)
    paired = {
        key: median([a - b for a, b in zip(samples[names[1]][key], samples[names[0]][key], strict=True)])
        for key in ("start_s", "stop_s", "run_s")
    }
    data["paired_difference_median_s"] = paired
    data["load_avg_1m_start"] = load_start
    rows = [
        [
            what,
            fmt(before[key], 3),
            fmt(after[key], 3),
            f"{min(samples[names[0]][key]):.3f} / {min(samples[names[1]][key]):.3f}",
            f"{paired[key] * 1000:+.0f} ms",
        ]
        for what, key in (
            ("`LocalCluster.start()` (all workers registered)", "start_s"),
            ("`LocalCluster.stop()`", "stop_s"),
            ("`osiris-flight run` tiny CSV -> CSV, end to end", "run_s"),
        )
    ]
    m = data["machine"]
    moved = (
        "" if before_at_start == data["before_commit"] else f" (`{before_at_start}` when the bench started)"
    )
    markdown = (
        "# Embedded cluster start: loopback TCP (before) vs private IPC sockets (after)\n\n"
        f"`bench/bench_embedded_start.py --rounds {args.rounds} --workers {args.workers}`: medians of "
        f"{args.rounds} alternating rounds (rotating order, one warm-up each), seconds. Before: "
        f"`{args.before}` at `{data['before_commit']}`{moved} (coordinator `tcp://127.0.0.1:*`, Flight "
        f"`grpc://127.0.0.1:0`); after: this branch at `{data['after_commit']}` (`ipc://` and "
        f"`grpc+unix://` in a 0700 directory). {m['nproc']} CPUs ({m['cpu']}), 1-minute load "
        f"{load_start:.2f} at the start and {m['load_avg_1m']} at the end (other work shared the machine), "
        f"{m['date_utc']}.\n\n"
        + md_table(
            ["", "before (tcp) median", "after (ipc) median", "fastest before / after", "after - before*"],
            rows,
        )
        + "\n\\* median of the per-round differences (each round runs both variants back to back, so a\n"
        "round's differences share that moment's machine load).\n"
        + "\nExample addresses: before `"
        + str(before["address_example"])
        + "`, after `"
        + str(after["address_example"])
        + "`.\n"
    )
    write_results("embedded_start", data, markdown)
    print(markdown)


if __name__ == "__main__":
    main()
