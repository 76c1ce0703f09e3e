"""Whether a host stays on this machine: the one answer both security checks use.

A daemon reachable from other hosts must run with keys (CURVE on ZeroMQ, TLS on Flight) unless told
``--insecure``; one reachable from this machine only may go without. Names are resolved: a name is
local only when every address it resolves to is a loopback address (Debian's ``127.0.1.1`` host
name is local; a name that does not resolve, a wildcard or a LAN address is not).
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit


def is_loopback(host: str) -> bool:
    """Whether a host name or address is reachable from this machine only."""
    if host in ("", "*"):
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    addresses = [str(info[4][0]).split("%", 1)[0] for info in infos]  # drop an IPv6 scope id
    return bool(addresses) and all(ipaddress.ip_address(a).is_loopback for a in addresses)


def stays_on_host(address: str) -> bool:
    """Whether a ZeroMQ address stays on this host: ipc://, inproc://, or tcp:// to a loopback host."""
    scheme, _, rest = address.partition("://")
    if scheme in ("ipc", "inproc"):
        return True
    return is_loopback(urlsplit(f"//{rest}").hostname or "")
