"""LOAD DATA LOCAL INFILE that notices at once when the server drops the connection mid-upload.

pymysql (1.1, 1.2) sends the file with a blocking ``sendall``. When the server kills the connection
while the file is on its way (``KILL``, a restart), the server stops reading and closes its end, and
the client's ``sendall`` waits on a zero TCP window until the kernel gives up on the half-closed
connection: about 105 s on Linux. Then pymysql's ``finally`` writes the end-of-file packet to the
socket it has just closed, and the ``AttributeError: 'NoneType' object has no attribute 'sendall'``
it raises there hides the OperationalError (so the task failed as terminal).

Here the file goes out packet by packet, each send waiting until the socket is writable *or*
readable. The server says nothing during an upload unless it gives up, so a readable socket (its
end-of-file, or an error packet) ends the upload at once with pymysql's own error for it: the
connection is closed, the error is a lost connection (2013) or the server's error, which the
writer classifies as transient. The socket is never touched after it failed.

This mirrors ``Connection.query`` / ``_read_query_result`` and ``MySQLResult._read_load_local_packet``
of pymysql 1.1-1.2 (private names; tests/mysql/test_writer.py runs it against MariaDB).
"""

from __future__ import annotations

import select
import socket
import ssl
import struct

import pymysql
from pymysql.connections import Connection, LoadLocalPacketWrapper, MySQLResult
from pymysql.constants import COMMAND, CR

PACKET_BYTES = 16 * 1024  # what pymysql sends per packet


def query_load_local(conn: Connection, sql: str | bytes, path: str) -> int:
    """Run a LOAD DATA LOCAL INFILE statement on ``conn`` that sends the file ``path`` (the one the
    statement names); the number of affected rows. A server asking for any other file gets none."""
    if isinstance(sql, str):
        sql = sql.encode(conn.encoding)
    conn._execute_command(COMMAND.COM_QUERY, sql)
    result = _WatchedUpload(conn)
    result.path = path
    result.read()
    conn._result = result
    if result.server_status is not None:
        conn.server_status = result.server_status
    conn._affected_rows = result.affected_rows
    return int(result.affected_rows or 0)


class _WatchedUpload(MySQLResult):
    path = ""  # the one file this upload may send

    def _read_load_local_packet(self, first_packet: object) -> None:
        conn: Connection = self.connection
        filename = LoadLocalPacketWrapper(first_packet).filename
        if isinstance(filename, bytes):
            filename = filename.decode(conn.encoding, errors="replace")
        if filename != self.path:  # a server asking for a file of its choice: send nothing
            conn.write_packet(b"")
            conn._read_packet()
            raise pymysql.err.OperationalError(
                CR.CR_UNKNOWN_ERROR, "the MySQL server asked for a local file other than the load's own"
            )
        try:
            fh = open(filename, "rb")  # noqa: SIM115 - closed below, the socket errors come first
        except OSError as exc:
            # As pymysql: tell the server there is no data, read its answer, then report the file.
            conn.write_packet(b"")
            conn._read_packet()
            raise pymysql.err.OperationalError(1017, f"Can't open file '{filename}': {exc}") from None
        with fh:
            packet_bytes = min(conn.max_allowed_packet, PACKET_BYTES)
            while chunk := fh.read(packet_bytes):
                _send_packet(conn, chunk)
        _send_packet(conn, b"")  # the end of the file
        ok_packet = conn._read_packet()
        if not ok_packet.is_ok_packet():
            raise pymysql.err.OperationalError(CR.CR_COMMANDS_OUT_OF_SYNC, "Commands Out of Sync")
        self._read_ok_packet(ok_packet)


def _send_packet(conn: Connection, payload: bytes) -> None:
    data = memoryview(struct.pack("<I", len(payload))[:3] + bytes([conn._next_seq_id]) + payload)
    conn._next_seq_id = (conn._next_seq_id + 1) % 256
    sock = conn._sock
    timeout = conn._write_timeout
    poller = select.poll()  # not select.select: it cannot watch a descriptor past 1023
    poller.register(sock, select.POLLIN | select.POLLOUT)
    while data:
        events = dict(poller.poll(None if timeout is None else timeout * 1000)).get(sock.fileno(), 0)
        readable, writable = (
            events & (select.POLLIN | select.POLLHUP | select.POLLERR),
            events & select.POLLOUT,
        )
        if readable:
            _server_spoke(conn)
        if not writable:
            conn._force_close()
            raise pymysql.err.OperationalError(
                CR.CR_SERVER_LOST, f"Lost connection to MySQL server: nothing could be sent for {timeout} s"
            )
        try:
            if isinstance(sock, ssl.SSLSocket):  # no MSG_DONTWAIT there; writable, so it hardly waits
                sent = sock.send(data)
            else:
                sent = sock.send(data, socket.MSG_DONTWAIT)
        except BlockingIOError:
            continue
        except OSError as exc:
            conn._force_close()
            raise pymysql.err.OperationalError(
                CR.CR_SERVER_GONE_ERROR, f"MySQL server has gone away ({exc!r})"
            ) from None
        data = data[sent:]


def _server_spoke(conn: Connection) -> None:
    """The server wrote during the upload: it gave up on it. Raise what it said (pymysql's error for
    its end-of-file, or its error packet), with the connection closed."""
    try:
        conn._read_packet()
    finally:
        if conn._sock is not None:
            conn._force_close()
    raise pymysql.err.OperationalError(
        CR.CR_SERVER_LOST, "Lost connection to MySQL server: it answered before the upload ended"
    )
