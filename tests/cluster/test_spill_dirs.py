"""A SIGKILLed worker's spill directory is removed when the next worker starts under the same spill
root; a live worker's, and directories that are not a worker's, are left alone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from osiris_flight.cluster.client import Client
from tests.cluster.conftest import cli_env, start_coordinator, wait_until

pytestmark = pytest.mark.cluster
BIN = Path(sys.executable).parent


class Cluster:
    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.coordinator, self.address = start_coordinator(cwd)
        self.workers: dict[str, subprocess.Popen[bytes]] = {}

    def start_worker(self, name: str, *flags: str, env: dict[str, str] | None = None) -> None:
        self.workers[name] = subprocess.Popen(
            [str(BIN / "osiris-worker"), "--coordinator", self.address, "--worker-id", name, *flags],
            cwd=self.cwd,
            env={**cli_env(), **(env or {})},
        )
        with Client(self.address) as client:
            joined = lambda: name in {w["worker_id"] for w in client.status().workers}  # noqa: E731
            wait_until(joined, 60, f"{name} to join")

    def kill(self, name: str) -> None:
        proc = self.workers.pop(name)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()

    def stop(self) -> None:
        for proc in [*self.workers.values(), self.coordinator]:
            proc.terminate()
        for proc in [*self.workers.values(), self.coordinator]:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    started = Cluster(tmp_path)
    yield started
    started.stop()


def test_a_killed_workers_spill_dir_under_a_spill_root_is_removed_at_the_next_start(
    tmp_path: Path, cluster: Cluster
) -> None:
    root = tmp_path / "spill"
    foreign = root / "not_a_worker"
    foreign.mkdir(parents=True)
    (foreign / "keep.txt").write_text("mine")
    cluster.start_worker("alpha", "--spill-dir", str(root))
    cluster.start_worker("beta", "--spill-dir", str(root))
    assert (root / "alpha" / ".owner").read_text().startswith(f"pid {cluster.workers['alpha'].pid} ")
    (root / "alpha" / "some-run").mkdir()
    (root / "alpha" / "some-run" / "o.arrow").write_bytes(b"x" * 1000)  # a spill file left behind
    cluster.kill("alpha")
    assert (root / "alpha" / "some-run" / "o.arrow").exists()  # nobody removed it
    cluster.start_worker("gamma", "--spill-dir", str(root))
    assert not (root / "alpha").exists()
    assert (root / "beta" / ".owner").exists()  # alive: kept
    assert (root / "gamma" / ".owner").exists()
    assert (foreign / "keep.txt").read_text() == "mine"  # no marker: not a worker's


def test_a_killed_workers_temp_spill_dir_is_removed_at_the_next_start(
    tmp_path: Path, cluster: Cluster
) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {"TMPDIR": str(temp)}
    unrelated = temp / "osiris_spill_by_hand"
    unrelated.mkdir()
    cluster.start_worker("alpha", env=env)
    (alpha,) = [d for d in temp.glob("osiris_spill_*") if d != unrelated]
    cluster.kill("alpha")
    assert alpha.exists()
    cluster.start_worker("beta", env=env)
    assert not alpha.exists()
    assert unrelated.exists()
    assert len([d for d in temp.glob("osiris_spill_*") if (d / ".owner").exists()]) == 1  # beta's
