# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Native twin of ``osiris_flight.components.mysql.decode.split_values`` and of the row-packet loop
of ``wire.UnbufferedResult.read``: MySQL text-protocol result rows -> one Arrow binary array per
column, with no Python object per value (and, reading from the socket, none per row either).

Each column is built straight into Arrow buffers (validity bitmap, int32 offsets, data); the
per-type conversion (text -> int, decimal, date, ...) stays the shared, vectorized Arrow code in
decode.py, so the native and the reference decoders differ only in this splitting, and the
differential tests compare exactly that.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport int32_t, int64_t, uint8_t, uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcpy, memset

import pyarrow as pa

include "packet_reader.pxi"

cdef int64_t MAX_COLUMN_BYTES = 2147483647  # int32 offsets of pa.binary()

cdef struct Column:
    uint8_t* validity
    int32_t* offsets
    char* data
    int64_t data_len
    int64_t data_cap
    int64_t row_cap
    int64_t nulls


class SplitError(ValueError):
    """A row packet that does not hold the expected values (a protocol or framing error)."""


cdef class ColumnSplitter(PacketReader):
    """Accumulates rows of ``ncols`` length-encoded values; ``finish()`` hands out the arrays."""

    cdef Column* cols
    cdef int ncols

    def __cinit__(self, int ncols):
        if ncols <= 0:
            raise ValueError("a result has at least one column")
        self.ncols = ncols
        self.cols = <Column*> malloc(ncols * sizeof(Column))
        if self.cols == NULL:
            raise MemoryError()
        memset(self.cols, 0, ncols * sizeof(Column))

    def __dealloc__(self):
        if self.cols != NULL:
            self._release()
            free(self.cols)

    cdef void _release(self):
        cdef int i
        for i in range(self.ncols):
            free(self.cols[i].validity)
            free(self.cols[i].offsets)
            free(self.cols[i].data)
        memset(self.cols, 0, self.ncols * sizeof(Column))

    @property
    def rows(self):
        return self.rows

    cdef int _reserve_rows(self, int64_t wanted) except -1:
        cdef int i
        cdef int64_t cap
        cdef Column* c
        if wanted <= self.cols[0].row_cap:
            return 0
        cap = max(wanted, self.cols[0].row_cap * 2, 1024)
        for i in range(self.ncols):
            c = &self.cols[i]
            c.offsets = <int32_t*> realloc(c.offsets, (cap + 1) * sizeof(int32_t))
            c.validity = <uint8_t*> realloc(c.validity, (cap + 7) // 8)
            if c.offsets == NULL or c.validity == NULL:
                raise MemoryError()
            if c.row_cap == 0:
                c.offsets[0] = 0
            memset(c.validity + (c.row_cap + 7) // 8, 0, (cap + 7) // 8 - (c.row_cap + 7) // 8)
            c.row_cap = cap
        return 0

    cdef int _append(self, Column* c, const uint8_t* value, int64_t n) except -1:
        cdef int64_t cap
        if c.data_len + n > MAX_COLUMN_BYTES:
            raise SplitError("a column of this batch exceeds 2 GiB; read smaller batches")
        if c.data_len + n > c.data_cap:
            cap = max(c.data_len + n, c.data_cap * 2, 65536)
            c.data = <char*> realloc(c.data, cap)
            if c.data == NULL:
                raise MemoryError()
            c.data_cap = cap
        if n:
            memcpy(c.data + c.data_len, value, n)
        c.data_len += n
        return 0

    cdef int _add_row(self, const uint8_t* p, Py_ssize_t size) except -1:
        """Cut one row payload into its values (NULL is the single byte 0xFB)."""
        cdef Py_ssize_t pos = 0
        cdef int i
        cdef uint64_t n
        cdef uint8_t b
        cdef Column* c
        cdef int64_t row = self.rows
        self._reserve_rows(row + 1)
        for i in range(self.ncols):
            c = &self.cols[i]
            if pos >= size:
                raise SplitError(f"row {row} ends before column {i}")
            b = p[pos]
            if b < 251:
                n = b
                pos += 1
            elif b == 251:
                pos += 1
                c.nulls += 1
                c.offsets[row + 1] = <int32_t> c.data_len
                continue
            elif b == 252:
                if pos + 3 > size:
                    raise SplitError(f"row {row}: truncated length of column {i}")
                n = p[pos + 1] | (<uint64_t> p[pos + 2] << 8)
                pos += 3
            elif b == 253:
                if pos + 4 > size:
                    raise SplitError(f"row {row}: truncated length of column {i}")
                n = p[pos + 1] | (<uint64_t> p[pos + 2] << 8) | (<uint64_t> p[pos + 3] << 16)
                pos += 4
            elif b == 254:
                if pos + 9 > size:
                    raise SplitError(f"row {row}: truncated length of column {i}")
                n = (p[pos + 1] | (<uint64_t> p[pos + 2] << 8) | (<uint64_t> p[pos + 3] << 16)
                     | (<uint64_t> p[pos + 4] << 24) | (<uint64_t> p[pos + 5] << 32)
                     | (<uint64_t> p[pos + 6] << 40) | (<uint64_t> p[pos + 7] << 48)
                     | (<uint64_t> p[pos + 8] << 56))
                pos += 9
            else:
                raise SplitError(f"row {row}: invalid length byte 0x{b:02x} in column {i}")
            if n > <uint64_t> (size - pos):
                raise SplitError(f"row {row}: value of column {i} runs past the end of the row")
            self._append(c, p + pos, <int64_t> n)
            pos += <Py_ssize_t> n
            c.validity[row >> 3] |= <uint8_t> (1 << (row & 7))
            c.offsets[row + 1] = <int32_t> c.data_len
        if pos != size:
            raise SplitError(f"row {row} has {size - pos} bytes after its {self.ncols} values")
        self.rows = row + 1
        return 0

    def finish(self):
        """The columns so far as ``pa.binary()`` arrays (nulls where NULL); the splitter is reset."""
        cdef int i
        cdef Column* c
        cdef int64_t n = self.rows
        arrays = []
        for i in range(self.ncols):
            c = &self.cols[i]
            if n == 0:
                arrays.append(pa.array([], pa.binary()))
                continue
            offsets = pa.py_buffer(PyBytes_FromStringAndSize(<char*> c.offsets, (n + 1) * sizeof(int32_t)))
            data = pa.py_buffer(PyBytes_FromStringAndSize(c.data, c.data_len) if c.data_len else b"")
            validity = None
            if c.nulls:
                validity = pa.py_buffer(PyBytes_FromStringAndSize(<char*> c.validity, (n + 7) // 8))
            arrays.append(pa.Array.from_buffers(pa.binary(), n, [validity, offsets, data], null_count=c.nulls))
        self._release()
        self.rows = 0
        return arrays
