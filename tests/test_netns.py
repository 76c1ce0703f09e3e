"""The simulated-hosts harness itself (tests/netns.py): isolation, capture, CPU caps, cleanup."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests import netns
from tests.netns import Network, cgroup_throttled, cpu_cgroup_support


def namespaces() -> set[str]:
    return set(netns._namespaces())


def server(port: int, reply: bytes) -> list[str]:
    """A one-connection TCP server: reads to EOF, answers ``reply`` and its byte count."""
    code = (
        "import socket\n"
        f"s = socket.create_server(('0.0.0.0', {port}))\n"
        "c, _ = s.accept(); n = 0\n"
        "while (x := c.recv(65536)): n += len(x)\n"
        f"c.sendall({reply!r} + str(n).encode()); c.close()\n"
    )
    return [sys.executable, "-c", code]


def client(address: str, port: int, payload_repr: str) -> list[str]:
    code = (
        "import socket, time\n"
        "for _ in range(200):\n"
        "    try:\n"
        f"        c = socket.create_connection(({address!r}, {port}), timeout=5); break\n"
        "    except OSError: time.sleep(0.05)\n"
        f"c.sendall({payload_repr}); c.shutdown(socket.SHUT_WR)\n"
        "print(c.recv(100).decode())\n"
    )
    return [sys.executable, "-c", code]


def test_hosts_talk_over_the_bridge_and_the_capture_reassembles_each_direction(tmp_path: Path) -> None:
    with Network(hosts=3) as net:
        a, b, c = net.hosts
        assert [h.address for h in net.hosts] == ["10.231.0.1", "10.231.0.2", "10.231.0.3"]
        net.wait_reachable()
        with net.capture(tmp_path) as capture:
            srv = c.popen(server(7000, b"ok:"), stdout=subprocess.PIPE)
            # 3 MB: many segments (and GSO frames), the marker at the very end.
            sent = b.run(
                client(c.address, 7000, "b'x' * 3_000_000 + b'MARKER-77'"), capture_output=True, text=True
            )
            srv.wait(timeout=60)
        cap = capture.stop()
        assert sent.stdout.strip() == "ok:3000009", sent.stderr
        # The host's own view: it has only its address and loopback; no route leads out.
        routes = a.run(["ip", "route"], capture_output=True, text=True).stdout
        assert "default" not in routes and "10.231.0.0/24" in routes
    assert cap.truncated == 0 and cap.kernel_drops == 0 and cap.frames > 10
    assert cap.address_pairs() == {frozenset({b.address, c.address})}
    up = cap.between(b.address, c.address, 7000)
    assert sorted(len(d) for d in up.values() if d) == [len(b"ok:3000009"), 3_000_009]  # (and refused tries)
    assert cap.streams_containing(b"MARKER-77") == [next(f for f, d in up.items() if len(d) == 3_000_009)]
    assert (tmp_path / f"{net.name}.pcap").stat().st_size > 3_000_000
    assert not {n for n in namespaces() if n.startswith(net.name)}


def test_everything_is_removed_after_a_failure_and_a_dead_owners_leftovers_at_start() -> None:
    name = ""
    with pytest.raises(RuntimeError, match="boom"), Network(hosts=2) as net:
        name = net.name
        sleeper = net.hosts[1].popen(["sleep", "600"])
        raise RuntimeError("boom")
    assert sleeper.poll() is not None
    assert not {n for n in namespaces() if n.startswith(name)}

    # A namespace of a test run that was SIGKILLed: its owner pid no longer runs.
    gone = subprocess.Popen(["true"])
    gone.wait()
    stale = f"{netns.PREFIX}{gone.pid}x1-h0"
    subprocess.run(["ip", "netns", "add", stale], check=True, timeout=60)
    with Network(hosts=1) as net:
        assert stale not in namespaces()
        assert net.name in {n.rsplit("-", 1)[0] for n in namespaces()}


def test_a_cpu_cap_throttles_a_busy_process() -> None:
    support = cpu_cgroup_support()
    assert support.version in (1, 2), support.reason
    with Network(hosts=1) as net:
        host = net.hosts[0]
        busy = host.popen(
            [
                sys.executable,
                "-c",
                "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.5: pass",
            ],
            cpus=0.2,
        )
        assert busy.wait(timeout=120) == 0
        group = host.cgroup()
        assert group is not None
        # 0.5 s of CPU at 0.2 of a core: the cap must have stopped it in at least a few periods.
        assert cgroup_throttled(group) > 0
        assert netns.cgroup_cpu_usage_us(group) >= 500_000
    assert not group.exists()
