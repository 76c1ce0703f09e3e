"""Reading one result set unbuffered, straight from pymysql's socket.

pymysql does the connection and the authentication. ``UnbufferedResult`` lets pymysql send a text
query and read the column descriptors, then reads the rows itself: as raw ``bytes`` payloads for
the pure-Python reference decoder (``read``), or split by the Cython module into Arrow columns
(``read_columns``). ``PreparedResult`` runs the statement as a server-side prepared statement and
has the binary-protocol rows decoded natively. pymysql's per-row Python conversion is skipped.

Nothing here holds more than one bounded slice of the result. A row larger than 16 MiB arrives as
several packets (each 0xFFFFFF bytes long, the last shorter) and is joined into one payload.
"""

from __future__ import annotations

import datetime as dt
import struct
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import pyarrow as pa
from pymysql import err
from pymysql.connections import Connection
from pymysql.constants import CR, FIELD_TYPE
from pymysql.protocol import FieldDescriptorPacket

from osiris_flight._native_mysql import ColumnSplitter
from osiris_flight._native_mysql_binary import BinaryRowReader
from osiris_flight.components.mysql.decode import convert_column
from osiris_flight.components.mysql.readplan import TypedValue, typed_from_python, typed_from_raw
from osiris_flight.components.mysql.types import ColumnInfo, Kind, Layout
from osiris_flight.errors import TerminalError

MAX_PACKET = 0xFFFFFF  # a packet this long is continued by the next one
_MORE_RESULTS = 0x0008  # SERVER_MORE_RESULTS_EXISTS in the EOF packet's status flags


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def column_info(field: Any) -> ColumnInfo:
    """A pymysql FieldDescriptorPacket as the mapping table (types.py) reads it."""
    return ColumnInfo(
        name=_text(field.name),
        type_code=int(field.type_code),
        flags=int(field.flags),
        length=int(field.length),
        decimals=int(field.scale),
        charsetnr=int(field.charsetnr),
        db=_text(field.db),
        org_table=_text(field.org_table),
        org_name=_text(field.org_name),
    )


def ready_socket(conn: Connection) -> Connection:
    """The connection, its socket set to the read timeout (as pymysql does before each read)."""
    if conn._sock is None:
        raise err.OperationalError(CR.CR_SERVER_LOST, "Lost connection to MySQL server during query")
    if conn._current_timeout != conn._read_timeout:
        conn._sock.settimeout(conn._read_timeout)
        conn._current_timeout = conn._read_timeout
    return conn


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
        self.columns = [column_info(f) for f in result.fields]
        self.done = not result.unbuffered_active
        self.warnings = 0

    def read(self, max_rows: int, max_bytes: int) -> list[bytes]:
        """Up to ``max_rows`` row payloads, stopping early once ``max_bytes`` are held; [] at the end.

        Raises pymysql errors: ``OperationalError(2013)`` when the connection is lost, or the
        server's error (for instance 1317 or 1927 when the query or connection is killed).
        """
        if self.done:
            return []
        conn = ready_socket(self._conn)
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
        conn = ready_socket(self._conn)
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


# -- the binary protocol (``decoder: binary``) ----------------------------------------------------

COM_STMT_PREPARE = 0x16
COM_STMT_EXECUTE = 0x17
COM_STMT_CLOSE = 0x19

# Wire layouts and outputs of native/mysql_binary.pyx (its W_* and O_* enums).
_W_INT = {
    FIELD_TYPE.TINY: 1,
    FIELD_TYPE.SHORT: 2,
    FIELD_TYPE.YEAR: 2,
    FIELD_TYPE.LONG: 3,
    FIELD_TYPE.INT24: 3,
}
_W_INT[FIELD_TYPE.LONGLONG] = 4
_W_FLOAT = {FIELD_TYPE.FLOAT: 5, FIELD_TYPE.DOUBLE: 6}
_W_DATETIME = 7
_W_TIME = 8
_W_LENENC = 9
_DATE_TYPES = {FIELD_TYPE.DATE, FIELD_TYPE.NEWDATE, FIELD_TYPE.DATETIME, FIELD_TYPE.TIMESTAMP}
_O_BYTES, _O_INT, _O_F32, _O_F64, _O_DATE32, _O_TS, _O_DUR_US = range(7)
_MICROS_PER_UNIT = {"s": 1_000_000, "ms": 1000, "us": 1}

Spec = tuple[int, int, int, int, pa.DataType]


def _wire_layout(code: int) -> int:
    if code in _W_INT:
        return _W_INT[code]
    if code in _W_FLOAT:
        return _W_FLOAT[code]
    if code in _DATE_TYPES:
        return _W_DATETIME
    return _W_TIME if code == FIELD_TYPE.TIME else _W_LENENC


def binary_specs(columns: Sequence[ColumnInfo], layout: Layout) -> list[Spec]:
    """For each column, how its binary value is laid out on the wire (the executed statement's
    column definition) and which Arrow buffer of the layout's type it is written to."""
    specs: list[Spec] = []
    for col, plan in zip(columns, layout.plans, strict=True):
        wire, kind, target = _wire_layout(col.type_code), plan.kind, plan.arrow_type
        spec: Spec | None = None
        if kind is Kind.INT and wire in (1, 2, 3, 4):
            spec = (wire, _O_INT, target.bit_width // 8, 0 if col.unsigned else 1, target)
        elif kind is Kind.FLOAT and wire in (5, 6):
            spec = (wire, _O_F32 if target == pa.float32() else _O_F64, target.bit_width // 8, 0, target)
        elif kind is Kind.DATE and wire == _W_DATETIME:
            spec = (wire, _O_DATE32, 4, 0, target)
        elif kind is Kind.DATETIME and wire == _W_DATETIME:
            spec = (wire, _O_TS, 8, _MICROS_PER_UNIT[target.unit], target)
        elif kind is Kind.TIME and wire == _W_TIME:
            spec = (wire, _O_DUR_US, 8, 0, target)
        elif kind in (Kind.DECIMAL, Kind.STRING, Kind.BINARY, Kind.BIT, Kind.NULL) and wire == _W_LENENC:
            spec = (wire, _O_BYTES, 0, 0, pa.binary())
        if spec is None:
            raise TerminalError(
                f"column '{col.name}': the binary decoder cannot read MySQL type code {col.type_code} "
                f"as {target}; use decoder: native"
            )
        specs.append(spec)
    return specs


class PreparedResult:
    """One SELECT run as a server-side prepared statement, its rows read in the binary protocol.

    COM_STMT_PREPARE (no parameters: the SQL already holds its values, escaped), COM_STMT_EXECUTE
    (no cursor, one iteration), the column definitions (pymysql's FieldDescriptorPacket; pymysql
    does not set CLIENT_DEPRECATE_EOF, so an EOF packet follows them), then the rows, decoded by
    native/mysql_binary.pyx from the socket buffer, and COM_STMT_CLOSE once the result is read to
    its end. As ``UnbufferedResult``: read to the end, or close the connection.
    """

    def __init__(self, conn: Connection, sql: str) -> None:
        self._conn = conn
        self.done = False
        self.warnings = 0
        self.zero_dates: dict[str, int] = {}
        self._reader: BinaryRowReader | None = None
        self._stmt: int | None = None
        conn._execute_command(COM_STMT_PREPARE, sql)
        prepared = conn._read_packet().get_all_data()  # an error packet raises here
        self._stmt, ncols, nparams = struct.unpack_from("<IHH", prepared, 1)
        for _ in range(nparams + (1 if nparams else 0) + ncols + (1 if ncols else 0)):
            conn._read_packet()  # parameter and column definitions (the execute response repeats them)
        try:
            if nparams:
                raise err.ProgrammingError(0, "the statement has parameter markers ('?')")
            conn._execute_command(COM_STMT_EXECUTE, struct.pack("<IBI", self._stmt, 0, 1))
            first = conn._read_packet()
            if first.is_ok_packet():
                raise err.ProgrammingError(0, "the statement returned no result set (it must be a SELECT)")
            count = first.read_length_encoded_integer()
            fields = [conn._read_packet(FieldDescriptorPacket) for _ in range(count)]
            if not conn._read_packet().is_eof_packet():
                raise self._lost("no EOF packet after the column definitions")
        except err.MySQLError:
            if conn._sock is not None:
                self._close_statement()
            raise
        self.columns = [column_info(f) for f in fields]

    def read_arrays(self, layout: Layout, max_rows: int, max_bytes: int) -> list[pa.Array]:
        """Up to ``max_rows`` rows (fewer once ``max_bytes`` are read) as arrays of ``layout``'s
        types, [] at the end; the zero dates of the slice are in ``zero_dates``."""
        self.zero_dates = {}
        if self.done:
            return []
        conn = ready_socket(self._conn)
        if self._reader is None:
            self._reader = BinaryRowReader(binary_specs(self.columns, layout), max_rows)
        reader = self._reader
        try:
            status, seq, payload = reader.read_rows(conn._rfile, conn._next_seq_id, max_rows, max_bytes)
        except (OSError, ConnectionError) as exc:
            raise self._lost(str(exc)) from None
        if status == "out_of_sequence":
            self.done = True
            conn._force_close()
            if seq == 0 and payload is not None and payload[:1] == b"\xff":
                err.raise_mysql_exception(payload)
            raise self._lost(f"packet sequence number {seq} out of order")
        conn._next_seq_id = seq
        if status == "error":
            assert payload is not None
            self.done = True
            self._close_statement()
            err.raise_mysql_exception(payload)
        if status == "eof":
            assert payload is not None
            if reader.pending_bytes:
                raise self._lost(f"{reader.pending_bytes} unexpected bytes after the end of the result")
            self.done = True
            self.warnings = int.from_bytes(payload[1:3], "little") if len(payload) >= 3 else 0
            conn.server_status = int.from_bytes(payload[3:5], "little") if len(payload) >= 5 else 0
            self._close_statement()
        if not reader.rows:
            return []
        arrays, zeros = reader.finish()
        out: list[pa.Array] = []
        for plan, array, zero in zip(layout.plans, arrays, zeros, strict=True):
            if pa.types.is_binary(array.type) and plan.arrow_type != array.type:
                array = convert_column(plan, array)
            out.append(array)
            if zero:
                self.zero_dates[plan.name] = zero
        return out

    def _close_statement(self) -> None:
        """COM_STMT_CLOSE (the server sends no reply)."""
        if self._stmt is not None:
            stmt, self._stmt = self._stmt, None
            self._conn._execute_command(COM_STMT_CLOSE, struct.pack("<I", stmt))

    def _lost(self, why: str) -> err.OperationalError:
        self.done = True
        self._conn._force_close()
        return err.OperationalError(
            CR.CR_SERVER_LOST, f"Lost connection to MySQL server during query ({why})"
        )


def typed_key(value: object) -> TypedValue:
    """The key of a chunk's last row, decoded by the binary decoder, as a typed literal."""
    if isinstance(value, bytes):
        return typed_from_raw(Kind.BINARY, value)
    if isinstance(value, Decimal):  # plain digits: '1E-30' would be a DOUBLE literal in SQL
        return {"t": "num", "v": format(value, "f")}
    if isinstance(value, dt.timedelta):
        micros = value // dt.timedelta(microseconds=1)
        sign, micros = ("-" if micros < 0 else ""), abs(micros)
        seconds, fraction = divmod(micros, 1_000_000)
        text = f"{sign}{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}.{fraction:06d}"
        return {"t": "str", "v": text}
    return typed_from_python(value)
