"""Another local user's probe of an embedded cluster (standard library only: it runs as ``nobody``
under the system's python3, which has no pyzmq and cannot read the project's venv).

Given the paths it was told about (argv[1], JSON: ``{"dirs": [...], "sockets": [...]}``; process
command lines are world-readable, so an attacker knows them too) and whatever it finds itself (the
temp directory, ``/proc/net/unix``), it tries to list each directory and to connect to each socket.
Where a connect succeeds it speaks first, as a ZeroMQ peer would (a ZMTP 3.0 greeting, NULL
security), and keeps every byte the other side sends. It prints one JSON object: per path, ``ok``
or the errno name, and everything it received.
"""

from __future__ import annotations

import errno
import glob
import json
import os
import re
import socket
import sys
import tempfile

# ZMTP 3.0 greeting: signature, version 3.0, mechanism "NULL", as-server 0, filler.
ZMTP_GREETING = b"\xff" + b"\x00" * 8 + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\x00") + b"\x00" * 32


# The embedded cluster's directories: osiris-flight-<uid>-<pid>-<random> (cluster/private_dir.py).
PRIVATE_DIR = re.compile(r"osiris-flight-\d+-\d+-[^/]+")


def _errno(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, str(exc))


def _listed_sockets() -> list[str]:
    try:
        with open("/proc/net/unix") as f:
            lines = f.read().splitlines()[1:]
    except OSError:
        return []
    paths = [line.split()[-1] for line in lines if len(line.split()) == 8]
    return [
        p for p in paths if p.startswith("/") and PRIVATE_DIR.fullmatch(os.path.basename(os.path.dirname(p)))
    ]


def _probe(path: str) -> tuple[str, str]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(2.0)
    received = b""
    try:
        sock.connect(path)
    except OSError as exc:
        sock.close()
        return _errno(exc), ""
    try:
        sock.sendall(ZMTP_GREETING)
        while len(received) < 1 << 20:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
    except OSError:
        pass
    finally:
        sock.close()
    return "ok", received.decode("latin-1")


def main() -> None:
    told = json.loads(sys.argv[1])
    found = glob.glob(os.path.join(tempfile.gettempdir(), "osiris-flight-*"))
    dirs = sorted(set(told["dirs"]) | {d for d in found if PRIVATE_DIR.fullmatch(os.path.basename(d))})
    sockets = sorted(set(told["sockets"]) | set(_listed_sockets()))
    result: dict[str, object] = {"uid": os.getuid(), "dirs": {}, "sockets": {}, "received": {}}
    for d in dirs:
        try:
            result["dirs"][d] = "ok: " + " ".join(sorted(os.listdir(d)))  # type: ignore[index]
        except OSError as exc:
            result["dirs"][d] = _errno(exc)  # type: ignore[index]
    for path in sockets:
        outcome, received = _probe(path)
        result["sockets"][path] = outcome  # type: ignore[index]
        result["received"][path] = received  # type: ignore[index]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
