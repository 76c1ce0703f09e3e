# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""MySQL binary-protocol result rows (a server-side prepared statement's result) -> Arrow columns.

Twin of ``mysql_split.pyx`` for ``decoder: binary``: row packets are read from pymysql's buffered
socket file in large chunks (packet framing, 16 MiB continuation, EOF and error packets, sequence
ids) and decoded straight into Arrow buffers of the layout's types, with no Python object per value.
Integers and floats are written as fixed-width values, DATE as date32 days, DATETIME/TIMESTAMP in
the layout's unit, TIME as microseconds; zero or invalid dates become null and are counted per
column. Length-encoded values (DECIMAL, strings, blobs, JSON, ENUM, SET, BIT) become binary arrays
that ``wire.PreparedResult`` converts with decode.py's shared casts.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t, uintptr_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset

import pyarrow as pa

include "packet_reader.pxi"

# How a value is laid out on the wire (from the executed statement's column definitions).
cdef enum:
    W_INT1 = 1
    W_INT2 = 2
    W_INT4 = 3
    W_INT8 = 4
    W_FLOAT = 5
    W_DOUBLE = 6
    W_DATETIME = 7
    W_TIME = 8
    W_LENENC = 9

# What Arrow buffer it goes to (from the layout).
cdef enum:
    O_BYTES = 0
    O_INT = 1
    O_F32 = 2
    O_F64 = 3
    O_DATE32 = 4
    O_TS = 5
    O_DUR_US = 6

cdef int64_t MAX_COLUMN_BYTES = 2147483647  # int32 offsets of pa.binary()


cdef struct Column:
    int wire
    int out
    int width        # bytes per value of a fixed-width output
    int64_t scale    # O_TS: microseconds per unit (1, 1000, 1000000); O_INT: 1 if signed
    uint8_t* validity  # the addresses of the column's Arrow buffers (BinaryRowReader.bufs)
    int32_t* offsets
    char* data
    int64_t data_len
    int64_t data_cap
    int64_t data_hint  # data bytes of the previous batch: the next one starts with that much room
    int64_t nulls
    int64_t zeros


class BinaryRowError(ValueError):
    """A binary row packet that does not hold the expected values (a protocol or framing error)."""


cdef inline uint64_t _le(const uint8_t* p, int n) nogil:
    cdef uint64_t v = 0
    cdef int k
    for k in range(n):
        v |= (<uint64_t> p[k]) << (8 * k)
    return v


cdef inline int64_t _days_from_civil(int64_t y, int64_t m, int64_t d) nogil:
    """Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm)."""
    cdef int64_t era, yoe, doy, doe
    if m <= 2:
        y -= 1
    era = (y if y >= 0 else y - 399) // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


cdef inline bint _valid_date(int64_t y, int64_t m, int64_t d) nogil:
    cdef int dim
    if m < 1 or m > 12 or d < 1:
        return False
    if m == 2:
        dim = 29 if (y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)) else 28
    elif m == 4 or m == 6 or m == 9 or m == 11:
        dim = 30
    else:
        dim = 31
    return d <= dim


cdef enum:
    VALIDITY = 0
    OFFSETS = 1
    DATA = 2


cdef class BinaryRowReader(PacketReader):
    """Accumulates binary-protocol rows; ``finish()`` hands out one Arrow array per column.

    Values are written straight into buffers of Arrow's memory pool (``pa.allocate_buffer``), which
    ``finish()`` gives to the arrays as they are: no copy at the end of a batch, and the pool (not
    malloc, which maps and unmaps large blocks) recycles the memory of batches already consumed. A
    batch starts with room for ``rows_hint`` rows and the previous batch's bytes per column, so the
    buffers rarely grow mid-batch.
    """

    cdef Column* cols
    cdef int ncols
    cdef int bitmap_len
    cdef int64_t row_cap
    cdef int64_t rows_hint
    cdef list types     # Arrow type of each column's output array
    cdef list bufs      # per column: [validity, offsets, data] ResizableBuffers (None: not yet)

    def __cinit__(self, list specs, int64_t rows_hint=0):
        """``specs``: one ``(wire, out, width, scale, arrow_type)`` per column; ``rows_hint``: the rows
        a batch usually holds (room is made for that many at once)."""
        cdef int i
        self.ncols = len(specs)
        if self.ncols <= 0:
            raise ValueError("a result has at least one column")
        self.cols = <Column*> malloc(self.ncols * sizeof(Column))
        if self.cols == NULL:
            raise MemoryError()
        memset(self.cols, 0, self.ncols * sizeof(Column))
        self.types = []
        for i, (wire, out, width, scale, arrow_type) in enumerate(specs):
            self.cols[i].wire = wire
            self.cols[i].out = out
            self.cols[i].width = width
            self.cols[i].scale = scale
            self.types.append(arrow_type)
        self.bitmap_len = (self.ncols + 7 + 2) // 8
        self.rows_hint = max(rows_hint, 0)
        self._release()

    def __dealloc__(self):
        if self.cols != NULL:
            free(self.cols)

    cdef void _release(self):
        """Forget the batch's buffers (handed to arrays, or dropped) and start an empty one."""
        cdef int i
        for i in range(self.ncols):
            self.cols[i].validity = NULL
            self.cols[i].offsets = NULL
            self.cols[i].data = NULL
            self.cols[i].data_len = 0
            self.cols[i].data_cap = 0
            self.cols[i].nulls = 0
            self.cols[i].zeros = 0
        self.bufs = [[None, None, None] for i in range(self.ncols)]
        self.row_cap = 0

    cdef char* _grow(self, int i, int which, int64_t size) except NULL:
        """Resize buffer ``which`` of column ``i`` to ``size`` bytes (contents kept); its address."""
        slots = <list> self.bufs[i]
        buf = slots[which]
        if buf is None:
            buf = pa.allocate_buffer(max(size, 64), resizable=True)
            slots[which] = buf
        else:
            buf.resize(size)
        return <char*> <uintptr_t> buf.address

    @property
    def rows(self):
        return self.rows

    cdef int _reserve_rows(self, int64_t wanted) except -1:
        cdef int i
        cdef int64_t cap
        cdef Column* c
        if wanted <= self.row_cap:
            return 0
        cap = max(wanted, self.row_cap * 2, self.rows_hint, 1024)
        for i in range(self.ncols):
            c = &self.cols[i]
            c.validity = <uint8_t*> self._grow(i, VALIDITY, (cap + 7) // 8)
            memset(c.validity + (self.row_cap + 7) // 8, 0, (cap + 7) // 8 - (self.row_cap + 7) // 8)
            if c.out == O_BYTES:
                c.offsets = <int32_t*> self._grow(i, OFFSETS, (cap + 1) * sizeof(int32_t))
                if self.row_cap == 0:
                    c.offsets[0] = 0
            else:
                c.data = self._grow(i, DATA, cap * c.width)
                c.data_cap = cap * c.width
        self.row_cap = cap
        return 0

    cdef int _append(self, int i, const uint8_t* value, int64_t n) except -1:
        cdef int64_t cap
        cdef Column* c = &self.cols[i]
        if c.data_len + n > MAX_COLUMN_BYTES:
            raise BinaryRowError("a column of this batch exceeds 2 GiB; read smaller batches")
        if c.data_len + n > c.data_cap:
            cap = max(c.data_len + n, c.data_cap * 2, c.data_hint + c.data_hint // 8, 65536)
            c.data = self._grow(i, DATA, cap)
            c.data_cap = cap
        if n:
            memcpy(c.data + c.data_len, value, n)
        c.data_len += n
        return 0

    cdef inline void _null(self, Column* c, int64_t row):
        c.nulls += 1
        if c.out == O_BYTES:
            c.offsets[row + 1] = <int32_t> c.data_len
        else:
            memset(c.data + row * c.width, 0, c.width)

    cdef int _add_row(self, const uint8_t* p, Py_ssize_t size) except -1:
        cdef Py_ssize_t pos
        cdef int i, k, L
        cdef uint64_t n, u
        cdef int64_t v, days, secs
        cdef double d
        cdef float f
        cdef uint8_t b
        cdef const uint8_t* q
        cdef Column* c
        cdef int64_t row = self.rows
        cdef const uint8_t* bitmap = p + 1
        if size < 1 + self.bitmap_len or p[0] != 0:
            raise BinaryRowError(f"row {row}: not a binary result row")
        self._reserve_rows(row + 1)
        pos = 1 + self.bitmap_len
        for i in range(self.ncols):
            c = &self.cols[i]
            if bitmap[(i + 2) >> 3] & (1 << ((i + 2) & 7)):
                self._null(c, row)
                continue
            if c.wire == W_LENENC:
                if pos >= size:
                    raise BinaryRowError(f"row {row} ends before column {i}")
                b = p[pos]
                if b < 251:
                    n = b
                    pos += 1
                elif b == 252 and pos + 3 <= size:
                    n = _le(p + pos + 1, 2)
                    pos += 3
                elif b == 253 and pos + 4 <= size:
                    n = _le(p + pos + 1, 3)
                    pos += 4
                elif b == 254 and pos + 9 <= size:
                    n = _le(p + pos + 1, 8)
                    pos += 9
                else:
                    raise BinaryRowError(f"row {row}: invalid length of column {i}")
                if n > <uint64_t> (size - pos):
                    raise BinaryRowError(f"row {row}: value of column {i} runs past the end of the row")
                self._append(i, p + pos, <int64_t> n)
                pos += <Py_ssize_t> n
                c.offsets[row + 1] = <int32_t> c.data_len
            elif c.wire <= W_INT8:
                k = 1 if c.wire == W_INT1 else 2 if c.wire == W_INT2 else 4 if c.wire == W_INT4 else 8
                if pos + k > size:
                    raise BinaryRowError(f"row {row}: value of column {i} runs past the end of the row")
                u = _le(p + pos, k)
                pos += k
                if c.width > k and c.scale:  # signed: sign-extend into the wider output
                    u = <uint64_t> ((<int64_t> (u << (64 - 8 * k))) >> (64 - 8 * k))
                memcpy(c.data + row * c.width, &u, c.width)
            elif c.wire == W_FLOAT or c.wire == W_DOUBLE:
                k = 4 if c.wire == W_FLOAT else 8
                if pos + k > size:
                    raise BinaryRowError(f"row {row}: value of column {i} runs past the end of the row")
                if k == 4:
                    memcpy(&f, p + pos, 4)
                    d = f
                else:
                    memcpy(&d, p + pos, 8)
                pos += k
                if c.out == O_F32:
                    f = <float> d
                    memcpy(c.data + row * 4, &f, 4)
                else:
                    memcpy(c.data + row * 8, &d, 8)
            else:
                if pos >= size:
                    raise BinaryRowError(f"row {row} ends before column {i}")
                L = p[pos]
                if pos + 1 + L > size:
                    raise BinaryRowError(f"row {row}: value of column {i} runs past the end of the row")
                q = p + pos + 1
                pos += 1 + L
                if c.wire == W_TIME:
                    if L != 0 and L != 8 and L != 12:
                        raise BinaryRowError(f"row {row}: TIME value of length {L} in column {i}")
                    v = 0
                    if L:
                        v = ((<int64_t> _le(q + 1, 4) * 24 + q[5]) * 3600 + q[6] * 60 + q[7]) * 1000000
                        if L == 12:
                            v += <int64_t> _le(q + 8, 4)
                        if q[0]:
                            v = -v
                    memcpy(c.data + row * 8, &v, 8)
                else:
                    if L != 0 and L != 4 and L != 7 and L != 11:
                        raise BinaryRowError(f"row {row}: date value of length {L} in column {i}")
                    if L == 0 or not _valid_date(_le(q, 2), q[2], q[3]):
                        c.zeros += 1
                        self._null(c, row)
                        continue
                    days = _days_from_civil(_le(q, 2), q[2], q[3])
                    if c.out == O_DATE32:
                        memcpy(c.data + row * 4, &days, 4)  # little-endian low half
                    else:
                        secs = days * 86400
                        if L >= 7:
                            secs += q[4] * 3600 + q[5] * 60 + q[6]
                        v = secs * (1000000 // c.scale)
                        if L == 11:
                            v += <int64_t> _le(q + 7, 4) // c.scale
                        memcpy(c.data + row * 8, &v, 8)
            c.validity[row >> 3] |= <uint8_t> (1 << (row & 7))
        if pos != size:
            raise BinaryRowError(f"row {row} has {size - pos} bytes after its {self.ncols} values")
        self.rows = row + 1
        return 0

    def finish(self):
        """``(arrays, zeros)``: the columns so far and the zero dates per column; then a reset."""
        cdef int i
        cdef Column* c
        cdef int64_t n = self.rows
        arrays = []
        zeros = []
        for i in range(self.ncols):
            c = &self.cols[i]
            arrow_type = self.types[i]
            zeros.append(c.zeros)
            if n == 0:
                arrays.append(pa.array([], arrow_type))
                continue
            validity, offsets, data = self.bufs[i]
            if c.nulls:
                validity.resize((n + 7) // 8)
            else:
                validity = None
            if c.out == O_BYTES:
                offsets.resize((n + 1) * sizeof(int32_t))
                if data is None:
                    data = pa.py_buffer(b"")
                else:
                    data.resize(c.data_len)
                c.data_hint = c.data_len
                buffers = [validity, offsets, data]
            else:
                data.resize(n * c.width)
                buffers = [validity, data]
            arrays.append(pa.Array.from_buffers(arrow_type, n, buffers, null_count=c.nulls))
        self._release()
        self.rows = 0
        return arrays, zeros
