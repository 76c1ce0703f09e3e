"""The Cython row splitter against the pure-Python reference: identical columns for any rows, from
packet lists and from a framed byte stream (packet headers, sequence numbers, 16 MiB rows, EOF)."""

from __future__ import annotations

import io

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from osiris_flight._native_mysql import ColumnSplitter, SplitError
from osiris_flight.components.mysql.decode import split_values

Row = list[bytes | None]


def lenenc(value: bytes | None) -> bytes:
    if value is None:
        return b"\xfb"
    n = len(value)
    if n < 251:
        head = bytes([n])
    elif n < 1 << 16:
        head = b"\xfc" + n.to_bytes(2, "little")
    elif n < 1 << 24:
        head = b"\xfd" + n.to_bytes(3, "little")
    else:
        head = b"\xfe" + n.to_bytes(8, "little")
    return head + value


def packet(row: Row) -> bytes:
    return b"".join(lenenc(v) for v in row)


def frame(payloads: list[bytes], seq: int = 1) -> tuple[bytes, int]:
    """MySQL framing: 3-byte length + sequence id; payloads of 16 MiB or more are split."""
    out = bytearray()
    for payload in payloads:
        pos = 0
        while True:
            part = payload[pos : pos + 0xFFFFFF]
            out += len(part).to_bytes(3, "little") + bytes([seq])
            out += part
            seq = (seq + 1) & 0xFF
            pos += len(part)
            if len(part) < 0xFFFFFF:
                break
    return bytes(out), seq


EOF_PACKET = b"\xfe\x00\x00\x22\x00"

values = st.one_of(
    st.none(),
    st.binary(max_size=40),
    st.binary(min_size=251, max_size=300),
    st.text(max_size=20).map(lambda s: s.encode()),
)


@st.composite
def results(draw: st.DrawFn) -> tuple[int, list[Row]]:
    ncols = draw(st.integers(1, 6))
    rows = draw(st.lists(st.lists(values, min_size=ncols, max_size=ncols), max_size=40))
    return ncols, rows


def reference(ncols: int, rows: list[Row]) -> list[pa.Array]:
    return [pa.array(col, pa.binary()) for col in split_values([packet(r) for r in rows], ncols)]


@settings(max_examples=300, deadline=None)
@given(results())
def test_native_split_equals_reference(result: tuple[int, list[Row]]) -> None:
    ncols, rows = result
    splitter = ColumnSplitter(ncols)
    splitter.add_packets([packet(r) for r in rows])
    native = splitter.finish()
    want = reference(ncols, rows)
    assert [a.type for a in native] == [pa.binary()] * ncols
    for got, exp in zip(native, want, strict=True):
        got.validate(full=True)
        assert got.equals(exp)


@settings(max_examples=200, deadline=None)
@given(results(), st.integers(1, 50), st.integers(1, 5000))
def test_reading_a_framed_stream_equals_reference(
    result: tuple[int, list[Row]], max_rows: int, chunk: int
) -> None:
    ncols, rows = result
    data, seq = frame([packet(r) for r in rows] + [EOF_PACKET])
    rfile = io.BufferedReader(io.BytesIO(data), buffer_size=chunk)
    splitter = ColumnSplitter(ncols)
    got: list[list[bytes | None]] = [[] for _ in range(ncols)]
    next_seq = 1
    while True:
        status, next_seq, payload = splitter.read_rows(rfile, next_seq, max_rows, 1 << 20)
        for column, array in zip(got, splitter.finish(), strict=True):
            column.extend(array.to_pylist())
        if status == "eof":
            assert payload == EOF_PACKET
            break
        assert status == "rows"
    assert next_seq == seq
    assert splitter.pending_bytes == 0
    assert got == [a.to_pylist() for a in reference(ncols, rows)]


def test_a_row_of_16_mib_and_more_is_joined_across_packets() -> None:
    big = b"x" * (0xFFFFFF + 10)
    rows: list[Row] = [[b"a", big], [None, b"small"]]
    data, _ = frame([packet(r) for r in rows] + [EOF_PACKET])
    splitter = ColumnSplitter(2)
    status, _, _ = splitter.read_rows(io.BufferedReader(io.BytesIO(data)), 1, 100, 1 << 30)
    assert status == "eof"
    first, second = splitter.finish()
    assert first.to_pylist() == [b"a", None]
    assert second[0].as_py() == big and second[1].as_py() == b"small"


def test_limits_error_packets_and_sequence_errors() -> None:
    rows = [[b"1"], [b"2"], [b"3"]]
    data, _ = frame([packet(r) for r in rows] + [b"\xff\x19\x05#70100Query execution was interrupted"])
    splitter = ColumnSplitter(1)
    rfile = io.BufferedReader(io.BytesIO(data))
    assert splitter.read_rows(rfile, 1, 2, 1 << 20)[0] == "rows"
    assert splitter.finish()[0].to_pylist() == [b"1", b"2"]
    status, _, payload = splitter.read_rows(rfile, 3, 10, 1 << 20)
    assert status == "error" and b"interrupted" in payload
    assert splitter.finish()[0].to_pylist() == [b"3"]
    data, _ = frame([packet([b"1"])], seq=7)
    status, got, _ = ColumnSplitter(1).read_rows(io.BufferedReader(io.BytesIO(data)), 1, 10, 1 << 20)
    assert (status, got) == ("out_of_sequence", 7)


def test_a_closed_connection_and_malformed_rows_are_errors() -> None:
    data, _ = frame([packet([b"1"])])
    with pytest.raises(ConnectionError):
        ColumnSplitter(1).read_rows(
            io.BufferedReader(io.BytesIO(data[:-1] if len(data) > 5 else b"")), 1, 9, 99
        )
    with pytest.raises(ConnectionError):
        ColumnSplitter(1).read_rows(io.BufferedReader(io.BytesIO(data)), 1, 9, 1 << 20)
    splitter = ColumnSplitter(2)
    with pytest.raises(SplitError, match="ends before column 1"):
        splitter.add_packets([b"\x01a"])
    with pytest.raises(SplitError, match="runs past the end"):
        ColumnSplitter(1).add_packets([b"\x05ab"])
    with pytest.raises(SplitError, match="bytes after"):
        ColumnSplitter(1).add_packets([b"\x01ab"])
