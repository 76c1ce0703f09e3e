"""Simulated hosts on Linux network namespaces, a packet capture between them, CPU caps per host.

Standard library only (no osiris_flight import), so tests and ``bench/`` both use it::

    from tests.netns import Network

    with Network(hosts=3) as net:              # namespaces osf<pid>x<n>-h0..h2, 10.231.0.1..3
        with net.capture() as cap:              # every frame between hosts, from a capture process
            coordinator = net.hosts[0].popen([...])
            worker = net.hosts[1].popen([...], cpus=1.0)  # under a CPU cap of one core
            ...
        cap.result.streams_containing(b"secret")     # reassembled TCP byte streams

**Topology.** Each host is a network namespace with loopback up and one interface, ``eth0``, at
``10.231.0.<i+1>/24``. Its veth peer, ``h<i>``, is a port of the bridge ``br0``, which lives in a
namespace of its own (``osf<pid>x<n>-br``) that has no address and no route. Nothing is added to the
root namespace: the hosts reach each other and nothing else (no default route, no path out), and the
root namespace (the test process, MariaDB on 127.0.0.1) cannot reach them either.

**Processes.** ``Host.popen`` and ``Host.run`` start a command inside the host's namespace
(``ip netns exec``, which execs the command, so the Popen's pid is the command's). ``Network.close``
stops every process that ``popen`` started and every process still inside the namespaces
(``ip netns pids``): SIGTERM, then SIGKILL after a grace period; then it removes the cgroups and the
namespaces. It runs on ``with`` exit, and at interpreter exit for a network that was not closed.
A new ``Network`` first removes what a dead process left behind: namespaces and cgroups named
``osf<pid>x...`` whose pid is no longer running (a SIGKILLed test run).

**Capture.** ``Network.capture()`` runs this file as a script in the bridge namespace: an
``AF_PACKET`` raw socket (no tcpdump needed) records each frame once, as it enters the bridge from
the sending host's port (frames the bridge sends out of a port are the same frames again and are
skipped). Frames go to a pcap file (``Capture.path``, readable by Wireshark); the kernel's drop
count and the number of truncated frames are reported, and ``CaptureResult`` reassembles each TCP
direction into one byte stream (by sequence number, so segment boundaries and retransmissions do not
hide or repeat a string).

**CPU caps.** ``popen(..., cpus=1.5)`` starts the process inside a cgroup whose CPU bandwidth is
1.5 cores: cgroup v2 ``cpu.max`` where the cpu controller is on the v2 hierarchy, otherwise the
cgroup v1 cpu controller (``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``), which is what this
project's CI machine has (its v2 mount holds only ``hugetlb``). ``cpu_cgroup_support()`` says which
one is used, or why none can be.

Needs root (``ip netns add`` needs CAP_SYS_ADMIN, the capture CAP_NET_RAW) and iproute2;
``unavailable()`` names what is missing.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import select
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PREFIX = "osf"
SUBNET = "10.231.0"  # 10.231.0.0/24: exists only on the bridges of these namespaces
MAX_HOSTS = 250
CGROUP_ROOT = Path("/sys/fs/cgroup")
CPU_PERIOD_US = 100_000

_counter = 0
_counter_lock = threading.Lock()


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=60, check=check)


def unavailable() -> str | None:
    """Why namespaces cannot be made here (None: they can)."""
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed"
    if os.geteuid() != 0:
        return "creating network namespaces needs root (CAP_SYS_ADMIN)"
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _owner_pid(name: str) -> int | None:
    """The pid in a name ``osf<pid>x<n>-...`` (None for other names)."""
    if not name.startswith(PREFIX):
        return None
    head = name[len(PREFIX) :].split("x", 1)[0]
    return int(head) if head.isdigit() else None


def _namespaces() -> list[str]:
    listed = _ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in listed.splitlines() if line.strip()]


def clean_stale() -> list[str]:
    """Remove namespaces and cgroups of this module whose owning process is gone; their names."""
    removed = []
    for name in _namespaces():
        pid = _owner_pid(name)
        if pid is not None and pid != os.getpid() and not _pid_alive(pid):
            _kill_netns_processes(name, grace_s=1.0)
            _ip("netns", "del", name, check=False)
            removed.append(name)
    support = cpu_cgroup_support()
    for base in (support.base, CGROUP_ROOT / "cpuacct"):
        if base is None or not base.is_dir() or not os.access(base, os.W_OK):
            continue
        for group in base.iterdir():
            pid = _owner_pid(group.name)
            if group.is_dir() and pid is not None and pid != os.getpid() and not _pid_alive(pid):
                _remove_cgroup(group)
                removed.append(str(group))
    return removed


def _kill_netns_processes(netns: str, grace_s: float) -> None:
    def pids() -> list[int]:
        out = _ip("netns", "pids", netns, check=False).stdout
        return [int(p) for p in out.split() if p.isdigit() and int(p) != os.getpid()]

    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        left = pids()
        if not left:
            return
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and pids():
            time.sleep(0.05)


# --- CPU caps ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class CpuCgroupSupport:
    version: int | None  # 2, 1 or None (no CPU cap possible)
    base: Path | None  # the directory new cgroups are made in
    reason: str  # what is used, or what is missing


def cpu_cgroup_support() -> CpuCgroupSupport:
    """Where a CPU-capped cgroup can be made: cgroup v2 with the cpu controller, else cgroup v1's."""
    for root in (CGROUP_ROOT, CGROUP_ROOT / "unified"):
        controllers = root / "cgroup.controllers"
        if controllers.is_file() and "cpu" in controllers.read_text().split():
            if not os.access(root, os.W_OK):
                return CpuCgroupSupport(None, None, f"{root} (cgroup v2) is not writable")
            return CpuCgroupSupport(2, root, f"cgroup v2 cpu.max under {root}")
    v1 = CGROUP_ROOT / "cpu"
    if (v1 / "cpu.cfs_quota_us").is_file():
        if not os.access(v1, os.W_OK):
            return CpuCgroupSupport(None, None, f"{v1} (cgroup v1 cpu controller) is not writable")
        return CpuCgroupSupport(1, v1, f"cgroup v1 cpu.cfs_quota_us under {v1} (no cpu controller on v2)")
    return CpuCgroupSupport(None, None, "no cgroup cpu controller is mounted (neither v2 cpu.max nor v1 cpu)")


def _make_cpu_cgroup(name: str, cpus: float) -> list[Path]:
    """The cgroups a capped process joins: the capping one first (v1 adds a cpuacct group, so that
    ``cgroup_cpu_usage_us`` can count its CPU time)."""
    support = cpu_cgroup_support()
    if support.base is None:
        raise RuntimeError(f"cannot cap CPU: {support.reason}")
    if cpus <= 0:
        raise ValueError(f"cpus must be positive, got {cpus}")
    quota = max(1000, round(cpus * CPU_PERIOD_US))
    group = support.base / name
    group.mkdir(exist_ok=True)
    if support.version == 2:
        if support.base == CGROUP_ROOT or support.base == CGROUP_ROOT / "unified":
            with contextlib.suppress(OSError):  # already on, or not delegable: cpu.max says which
                (support.base / "cgroup.subtree_control").write_text("+cpu")
        (group / "cpu.max").write_text(f"{quota} {CPU_PERIOD_US}")
    else:
        (group / "cpu.cfs_period_us").write_text(str(CPU_PERIOD_US))
        (group / "cpu.cfs_quota_us").write_text(str(quota))
        acct = CGROUP_ROOT / "cpuacct" / name
        if acct.parent.is_dir() and os.access(acct.parent, os.W_OK):
            acct.mkdir(exist_ok=True)
            return [group, acct]
    return [group]


def _remove_cgroup(group: Path) -> None:
    procs = group / "cgroup.procs"
    for _ in range(100):
        try:
            members = procs.read_text().split() if procs.exists() else []
        except OSError:
            members = []
        for pid in members:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        try:
            group.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.05)


def cgroup_cpu_usage_us(group: Path) -> int:
    """CPU time the cgroup's processes used so far, in microseconds (v2 cpu.stat or v1 cpuacct)."""
    stat = group / "cpu.stat"
    if stat.is_file():
        for line in stat.read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "usage_usec":
                return int(value)
    acct = CGROUP_ROOT / "cpuacct" / group.name / "cpuacct.usage"  # v1: the cpuacct twin
    if acct.is_file():
        return int(acct.read_text()) // 1000
    raise RuntimeError(f"no CPU usage counter for {group}")


def cgroup_throttled(group: Path) -> int:
    """How many periods the cap throttled the cgroup (``nr_throttled`` of cpu.stat, v1 and v2)."""
    for line in (group / "cpu.stat").read_text().splitlines():
        key, _, value = line.partition(" ")
        if key == "nr_throttled":
            return int(value)
    raise RuntimeError(f"no nr_throttled in {group / 'cpu.stat'}")


# --- hosts and network ------------------------------------------------------------------------


@dataclass
class Host:
    index: int
    netns: str
    address: str
    network: Network = field(repr=False)

    def command(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *argv]

    def popen(self, argv: Sequence[str], *, cpus: float | None = None, **kwargs: Any) -> subprocess.Popen:
        """Start ``argv`` in this host's namespace (and, with ``cpus``, under that CPU cap); stopped
        by ``Network.close``."""
        command = self.command(argv)
        if cpus is not None:
            # A shell joins the cgroups, then execs `ip netns exec` (same pid): the command runs
            # capped from its first instruction, and everything it starts stays capped. (Joining
            # happens before entering the namespace: `ip netns exec` mounts a /sys without cgroups.)
            procs = " ".join(shlex.quote(str(g / "cgroup.procs")) for g in self.network._cgroups(self, cpus))
            join = f'for g in {procs}; do echo $$ > "$g" || exit 125; done; exec "$@"'
            command = ["sh", "-c", join, "sh", *command]
        proc = subprocess.Popen(command, **kwargs)
        self.network.processes.append(proc)
        return proc

    def run(self, argv: Sequence[str], timeout: float = 120, **kwargs: Any) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(argv), timeout=timeout, **kwargs)

    def cgroup(self) -> Path | None:
        """This host's CPU cgroup, once a process was started with ``cpus``."""
        groups = self.network.cgroups.get(self.index)
        return groups[0] if groups else None


class Network:
    """``hosts`` namespaces on one private bridge; a context manager that removes everything."""

    def __init__(self, hosts: int, *, mtu: int = 1500) -> None:
        reason = unavailable()
        if reason:
            raise RuntimeError(f"network namespaces: {reason}")
        if not 1 <= hosts <= MAX_HOSTS:
            raise ValueError(f"hosts must be 1..{MAX_HOSTS}, got {hosts}")
        clean_stale()
        global _counter
        with _counter_lock:
            _counter += 1
            self.name = f"{PREFIX}{os.getpid()}x{_counter}"
        self.bridge_netns = f"{self.name}-br"
        self.hosts: list[Host] = []
        self.processes: list[subprocess.Popen] = []
        self.cgroups: dict[int, list[Path]] = {}
        self._closed = False
        atexit.register(self.close)
        try:
            self._build(hosts, mtu)
        except BaseException:
            self.close()
            raise

    def _build(self, hosts: int, mtu: int) -> None:
        br = self.bridge_netns
        _ip("netns", "add", br)
        _ip("-n", br, "link", "add", "br0", "mtu", str(mtu), "type", "bridge", "stp_state", "0")
        _ip("-n", br, "link", "set", "br0", "up")
        for i in range(hosts):
            netns = f"{self.name}-h{i}"
            address = f"{SUBNET}.{i + 1}"
            _ip("netns", "add", netns)
            self.hosts.append(Host(i, netns, address, self))
            port = f"h{i}"
            _ip(
                "-n",
                br,
                "link",
                "add",
                port,
                "mtu",
                str(mtu),
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                netns,
            )
            _ip("-n", br, "link", "set", port, "master", "br0")
            _ip("-n", br, "link", "set", port, "up")
            _ip("-n", netns, "link", "set", "lo", "up")
            _ip("-n", netns, "addr", "add", f"{address}/24", "dev", "eth0")
            _ip("-n", netns, "link", "set", "eth0", "up")

    def __enter__(self) -> Network:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _cgroups(self, host: Host, cpus: float) -> list[Path]:
        """The host's cgroups (made at its first capped process; one cap per host)."""
        if host.index not in self.cgroups:
            self.cgroups[host.index] = _make_cpu_cgroup(host.netns, cpus)
        return self.cgroups[host.index]

    def wait_reachable(self, timeout: float = 60) -> None:
        """Until every host answers a TCP connect from host 0 (the links are up): a refused connection
        is an answer; only silence (ARP or link not ready) is not."""
        port = 9
        deadline = time.monotonic() + timeout
        for host in self.hosts[1:]:
            probe = (
                "import socket,sys\n"
                "s=socket.socket(); s.settimeout(1)\n"
                f"e=s.connect_ex(({host.address!r},{port}))\n"
                "sys.exit(0 if e in (0,111) else 1)\n"
            )
            while True:
                done = self.hosts[0].run([sys.executable, "-c", probe], timeout=30, capture_output=True)
                if done.returncode == 0:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{host.netns} ({host.address}) not reachable from {self.hosts[0].netns}"
                    )
                time.sleep(0.1)

    def capture(self, directory: Path | None = None) -> Capture:
        return Capture(self, directory)

    def close(self, grace_s: float = 10.0) -> None:
        """Stop every process started in the hosts, remove the cgroups and the namespaces."""
        if self._closed:
            return
        self._closed = True
        for proc in self.processes:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
        deadline = time.monotonic() + grace_s
        for proc in self.processes:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)
        for host in self.hosts:
            _kill_netns_processes(host.netns, grace_s=2.0)
        _kill_netns_processes(self.bridge_netns, grace_s=2.0)
        for groups in self.cgroups.values():
            for group in groups:
                _remove_cgroup(group)
        for netns in [h.netns for h in self.hosts] + [self.bridge_netns]:
            _ip("netns", "del", netns, check=False)
        with contextlib.suppress(Exception):
            atexit.unregister(self.close)


# --- capture ----------------------------------------------------------------------------------

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_STATISTICS = 6
PACKET_OUTGOING = 4
FRAME_BUFFER = 1 << 20  # larger than any GSO frame a veth passes up
PCAP_HEADER = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, FRAME_BUFFER, 1)  # LINKTYPE_ETHERNET


def _capture_main(out_path: str, port_prefix: str) -> int:
    """The capture process (run inside the bridge namespace): frames entering the bridge from a host
    port go to ``out_path`` as pcap until SIGTERM; then one JSON line of counts on stdout."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.setsockopt(socket.SOL_SOCKET, 33, 64 << 20)  # SO_RCVBUFFORCE (root): no drops under load
    buffer = bytearray(FRAME_BUFFER)
    frames = truncated = 0
    with open(out_path, "wb") as out:
        out.write(PCAP_HEADER)
        out.flush()
        print("READY", flush=True)
        while True:
            ready, _, _ = select.select([sock], [], [], 0.1)
            if not ready:
                if stop.is_set():
                    break  # stop only once the socket is drained
                continue
            size, (ifname, _proto, pkttype, _hatype, _addr) = sock.recvfrom_into(buffer, 0, socket.MSG_TRUNC)
            if not ifname.startswith(port_prefix) or pkttype == PACKET_OUTGOING:
                continue
            kept = min(size, FRAME_BUFFER)
            truncated += size > FRAME_BUFFER
            frames += 1
            now = time.time()
            out.write(struct.pack("<IIII", int(now), int(now % 1 * 1e6), kept, size))
            out.write(buffer[:kept])
    _packets, drops = struct.unpack("II", sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
    print(json.dumps({"frames": frames, "truncated": truncated, "kernel_drops": drops}), flush=True)
    return 0


@dataclass(frozen=True)
class Segment:
    src: str
    sport: int
    dst: str
    dport: int
    seq: int
    syn: bool
    payload: bytes


def read_pcap(path: Path) -> Iterator[bytes]:
    data = path.read_bytes()
    offset = len(PCAP_HEADER)
    while offset + 16 <= len(data):
        _, _, caplen, _ = struct.unpack_from("<IIII", data, offset)
        offset += 16
        yield data[offset : offset + caplen]
        offset += caplen


def tcp_segments(frames: Iterator[bytes]) -> Iterator[Segment]:
    """The IPv4 TCP segments among Ethernet frames (other frames, e.g. ARP and IPv6, are skipped)."""
    for frame in frames:
        if len(frame) < 34 or frame[12:14] != b"\x08\x00":
            continue
        ip = frame[14:]
        ihl = (ip[0] & 0x0F) * 4
        total = struct.unpack_from("!H", ip, 2)[0]
        if ip[9] != 6 or len(ip) < ihl + 20:
            continue
        tcp = ip[ihl:total]
        sport, dport, seq = struct.unpack_from("!HHI", tcp, 0)
        offset = (tcp[12] >> 4) * 4
        syn = bool(tcp[13] & 0x02)
        yield Segment(
            socket.inet_ntoa(ip[12:16]),
            sport,
            socket.inet_ntoa(ip[16:20]),
            dport,
            seq,
            syn,
            bytes(tcp[offset:]),
        )


Flow = tuple[str, int, str, int]  # src, sport, dst, dport: one direction of one connection


def reassemble(segments: Iterator[Segment]) -> dict[Flow, bytes]:
    """Each direction's byte stream, in sequence order: a retransmitted or overlapping segment adds
    only bytes not seen yet; a gap (a segment never captured) is left out."""
    by_flow: dict[Flow, list[Segment]] = {}
    base: dict[Flow, int] = {}
    for seg in segments:
        flow = (seg.src, seg.sport, seg.dst, seg.dport)
        by_flow.setdefault(flow, []).append(seg)
        if seg.syn:
            base[flow] = seg.seq + 1
    streams = {}
    for flow, segs in by_flow.items():
        start = base.get(flow, segs[0].seq)
        pieces = sorted(((s.seq - start) % 2**32, s.payload) for s in segs if s.payload)
        stream = bytearray()
        for rel, payload in pieces:
            end = len(stream)
            if rel + len(payload) <= end:
                continue
            stream += payload[max(0, end - rel) :]
        streams[flow] = bytes(stream)
    return streams


@dataclass
class CaptureResult:
    streams: dict[Flow, bytes]
    frames: int
    truncated: int
    kernel_drops: int

    @property
    def total_bytes(self) -> int:
        return sum(len(s) for s in self.streams.values())

    def address_pairs(self) -> set[frozenset[str]]:
        return {frozenset((src, dst)) for src, _, dst, _ in self.streams}

    def between(self, a: str, b: str, port: int | None = None) -> dict[Flow, bytes]:
        """The streams between two addresses (either direction), optionally to or from ``port``."""
        return {
            flow: data
            for flow, data in self.streams.items()
            if {flow[0], flow[2]} == {a, b} and (port is None or port in (flow[1], flow[3]))
        }

    def streams_containing(self, needle: bytes) -> list[Flow]:
        return [flow for flow, data in self.streams.items() if needle in data]


class Capture:
    """Records every frame between the network's hosts while the ``with`` block runs."""

    def __init__(self, network: Network, directory: Path | None) -> None:
        self.network = network
        folder = directory or Path(os.environ.get("TMPDIR", "/tmp"))
        self.path = folder / f"{network.name}.pcap"
        self.result: CaptureResult | None = None
        self._proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> Capture:
        self._proc = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                self.network.bridge_netns,
                sys.executable,
                __file__,
                "capture",
                str(self.path),
                "h",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.network.processes.append(self._proc)
        assert self._proc.stdout is not None
        ready, _, _ = select.select([self._proc.stdout], [], [], 120)
        line = self._proc.stdout.readline().strip() if ready else ""
        if line != "READY":
            self._proc.kill()
            raise RuntimeError(f"the capture process did not start (said {line!r}, exit {self._proc.wait()})")
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> CaptureResult:
        if self.result is not None:
            return self.result
        assert self._proc is not None and self._proc.stdout is not None
        self._proc.terminate()
        ready, _, _ = select.select([self._proc.stdout], [], [], 120)
        counts = json.loads(self._proc.stdout.readline() or "{}") if ready else {}
        try:
            self._proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self.result = CaptureResult(
            reassemble(tcp_segments(read_pcap(self.path))),
            frames=counts.get("frames", -1),
            truncated=counts.get("truncated", -1),
            kernel_drops=counts.get("kernel_drops", -1),
        )
        return self.result


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "capture":
        sys.exit(_capture_main(sys.argv[2], sys.argv[3]))
    print("usage: netns.py capture OUT.pcap PORT_PREFIX", file=sys.stderr)
    sys.exit(2)
