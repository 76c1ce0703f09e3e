"""Reading one result set unbuffered, as raw text-protocol row packets.

pymysql does the connection, the authentication and the query; its unbuffered mode reads the
column descriptors and leaves the rows on the socket. From there this module reads the row packets
itself, straight from the connection's buffered socket file, and hands them over undecoded: a list
of ``bytes`` payloads, one per row, bounded in rows and bytes. Decoding them into Arrow is the job
of ``decode.py`` (one replaceable piece), and pymysql's per-row Python conversion is skipped.

Nothing here holds more than one bounded slice of the result. A row larger than 16 MiB arrives as
several packets (each 0xFFFFFF bytes long, the last shorter) and is joined into one payload.
"""

from __future__ import annotations

import pyarrow as pa
from pymysql import err
from pymysql.connections import Connection
from pymysql.constants import CR

from osiris_flight._native_mysql import ColumnSplitter
from osiris_flight.components.mysql.types import ColumnInfo

MAX_PACKET = 0xFFFFFF  # a packet this long is continued by the next one
_MORE_RESULTS = 0x0008  # SERVER_MORE_RESULTS_EXISTS in the EOF packet's status flags


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


class UnbufferedResult:
    """One SELECT in progress on ``conn``: its columns, then its rows in bounded slices.

    Read until ``read`` returns an empty list (the end of the result) before the connection runs
    another statement; a result abandoned half-way is not drained (that could be gigabytes): close
    the connection instead.
    """

    def __init__(self, conn: Connection, sql: str) -> None:
        self._conn = conn
        conn.query(sql, unbuffered=True)
        result = conn._result
        if result is None or not result.field_count:
            raise err.ProgrammingError(0, "the statement returned no result set (it must be a SELECT)")
        self._result = result
        self.columns = [
            ColumnInfo(
                name=_text(f.name),
                type_code=int(f.type_code),
                flags=int(f.flags),
                length=int(f.length),
                decimals=int(f.scale),
                charsetnr=int(f.charsetnr),
                db=_text(f.db),
                org_table=_text(f.org_table),
                org_name=_text(f.org_name),
            )
            for f in result.fields
        ]
        self.done = not result.unbuffered_active
        self.warnings = 0

    def read(self, max_rows: int, max_bytes: int) -> list[bytes]:
        """Up to ``max_rows`` row payloads, stopping early once ``max_bytes`` are held; [] at the end.

        Raises pymysql errors: ``OperationalError(2013)`` when the connection is lost, or the
        server's error (for instance 1317 or 1927 when the query or connection is killed).
        """
        if self.done:
            return []
        conn = self._conn
        if conn._sock is None:
            raise err.OperationalError(CR.CR_SERVER_LOST, "Lost connection to MySQL server during query")
        if conn._current_timeout != conn._read_timeout:
            conn._sock.settimeout(conn._read_timeout)
            conn._current_timeout = conn._read_timeout
        read = conn._rfile.read
        seq = conn._next_seq_id
        rows: list[bytes] = []
        held = 0
        try:
            while len(rows) < max_rows and held < max_bytes:
                header = read(4)
                if len(header) < 4:
                    raise self._lost("connection closed by the server")
                length = header[0] | (header[1] << 8) | (header[2] << 16)
                if header[3] != seq:
                    self._out_of_sequence(header[3], read(length))
                seq = (seq + 1) & 0xFF
                payload = read(length)
                if len(payload) < length:
                    raise self._lost("connection closed by the server")
                if length == MAX_PACKET:
                    payload, seq = self._continued(payload, seq)
                first = payload[0] if payload else 0
                if first == 0xFE and len(payload) < 9:
                    self._finish(payload)
                    break
                if first == 0xFF:
                    self._fail()
                    err.raise_mysql_exception(payload)
                rows.append(payload)
                held += length
        except OSError as exc:  # a socket timeout or reset
            raise self._lost(str(exc)) from None
        finally:
            conn._next_seq_id = seq
        return rows

    def read_columns(self, splitter: ColumnSplitter, max_rows: int, max_bytes: int) -> list[pa.BinaryArray]:
        """Like ``read``, but the native splitter parses the rows straight from the socket buffer into
        one binary array per column (no Python object per row or value); [] at the end."""
        if self.done:
            return []
        conn = self._conn
        if conn._sock is None:
            raise err.OperationalError(CR.CR_SERVER_LOST, "Lost connection to MySQL server during query")
        if conn._current_timeout != conn._read_timeout:
            conn._sock.settimeout(conn._read_timeout)
            conn._current_timeout = conn._read_timeout
        try:
            status, seq, payload = splitter.read_rows(conn._rfile, conn._next_seq_id, max_rows, max_bytes)
        except (OSError, ConnectionError) as exc:  # a socket timeout, reset, or the server hung up
            raise self._lost(str(exc)) from None
        if status == "out_of_sequence":
            assert payload is not None
            self._out_of_sequence(seq, payload)
        conn._next_seq_id = seq
        if status == "error":
            assert payload is not None
            self._fail()
            err.raise_mysql_exception(payload)
        if status == "eof":
            assert payload is not None
            if splitter.pending_bytes:
                raise self._lost(f"{splitter.pending_bytes} unexpected bytes after the end of the result")
            self._finish(payload)
        return splitter.finish() if splitter.rows else []

    def _continued(self, first: bytes, seq: int) -> tuple[bytes, int]:
        """Join a payload split over several packets (a row of 16 MiB or more)."""
        read = self._conn._rfile.read
        parts = [first]
        while True:
            header = read(4)
            if len(header) < 4:
                raise self._lost("connection closed by the server")
            length = header[0] | (header[1] << 8) | (header[2] << 16)
            if header[3] != seq:
                self._out_of_sequence(header[3], read(length))
            seq = (seq + 1) & 0xFF
            part = read(length)
            if len(part) < length:
                raise self._lost("connection closed by the server")
            parts.append(part)
            if length < MAX_PACKET:
                return b"".join(parts), seq

    def _out_of_sequence(self, got: int, payload: bytes) -> None:
        """MariaDB reports a killed connection or a shutdown with an error packet numbered 0."""
        self._fail()
        if got == 0 and payload[:1] == b"\xff":
            err.raise_mysql_exception(payload)
        raise self._lost(f"packet sequence number {got} out of order")

    def _finish(self, eof: bytes) -> None:
        self.done = True
        self.warnings = int.from_bytes(eof[1:3], "little") if len(eof) >= 3 else 0
        status = int.from_bytes(eof[3:5], "little") if len(eof) >= 5 else 0
        self._result.warning_count = self.warnings
        self._result.has_next = bool(status & _MORE_RESULTS)
        self._result.unbuffered_active = False
        self._result.connection = None
        self._conn.server_status = status

    def _fail(self) -> None:
        self.done = True
        self._result.unbuffered_active = False
        self._result.connection = None

    def _lost(self, why: str) -> err.OperationalError:
        self._fail()
        self._conn._force_close()
        return err.OperationalError(
            CR.CR_SERVER_LOST, f"Lost connection to MySQL server during query ({why})"
        )
