# The packet reading shared by the row readers of mysql_split.pyx and mysql_binary.pyx, included at
# module level by both (Cython cannot inherit a cdef class across extension modules, so each module
# compiles its own copy of this one source). A subclass says what one row payload becomes by
# overriding ``_add_row``.

cdef enum:
    MAX_PACKET = 0xFFFFFF  # a packet this long is continued by the next one
    READ_CHUNK = 262144  # bytes asked of the socket at a time


cdef class PacketReader:
    """Reads MySQL row packets straight from pymysql's buffered socket file (``read_rows``)."""

    cdef int64_t rows
    cdef bytes buf      # bytes read from the socket and not yet parsed
    cdef Py_ssize_t pos

    def __cinit__(self, *args, **kwargs):
        self.rows = 0
        self.buf = b""
        self.pos = 0

    @property
    def pending_bytes(self):
        """Bytes read from the socket but not yet parsed (must be 0 at the end of a result)."""
        return PyBytes_GET_SIZE(self.buf) - self.pos

    cdef int _add_row(self, const uint8_t* p, Py_ssize_t size) except -1:
        raise TypeError(f"{type(self).__name__} must define what a row payload becomes")

    def add_packets(self, packets):
        """Add row payloads (``bytes``, without their packet headers) as if read from a socket."""
        cdef bytes data
        for data in packets:
            self._add_row(<const uint8_t*> PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))

    cdef int _need(self, object read1, Py_ssize_t k) except -1:
        """Make ``k`` unparsed bytes available in ``self.buf[self.pos:]``."""
        cdef Py_ssize_t have = PyBytes_GET_SIZE(self.buf) - self.pos
        cdef bytes more
        if have >= k:
            return 0
        if k - have > READ_CHUNK:  # a large packet: gather it without quadratic copying
            parts = bytearray(self.buf[self.pos:])
            while len(parts) < k:
                more = read1(k - len(parts))
                if not more:
                    raise ConnectionError("connection closed by the server")
                parts += more
            self.buf = bytes(parts)
            self.pos = 0
            return 0
        while have < k:
            more = read1(READ_CHUNK)
            if not more:
                raise ConnectionError("connection closed by the server")
            self.buf = self.buf[self.pos:] + more
            self.pos = 0
            have = PyBytes_GET_SIZE(self.buf)
        return 0

    def read_rows(self, rfile, int seq, Py_ssize_t max_rows, Py_ssize_t max_bytes):
        """Parse row packets from ``rfile`` (pymysql's buffered socket file) into the columns.

        Stops after ``max_rows`` rows or ``max_bytes`` payload bytes, at the end of the result, or
        at an error packet. Returns ``(status, seq, payload)``: ``("rows", seq, None)`` when a
        limit was reached, ``("eof", seq, eof_payload)`` at the end, ``("error", seq, payload)``
        for an error packet, ``("out_of_sequence", got, payload)`` for a packet numbered wrongly.
        A closed connection raises ConnectionError.
        """
        cdef Py_ssize_t start_rows = self.rows
        cdef Py_ssize_t held = 0
        cdef Py_ssize_t length
        cdef const uint8_t* h
        cdef const uint8_t* payload
        cdef int got
        cdef bytearray big
        read1 = rfile.read1
        while self.rows - start_rows < max_rows and held < max_bytes:
            self._need(read1, 4)
            h = <const uint8_t*> PyBytes_AS_STRING(self.buf) + self.pos
            length = h[0] | (h[1] << 8) | (h[2] << 16)
            got = h[3]
            self.pos += 4
            self._need(read1, length)
            payload = <const uint8_t*> PyBytes_AS_STRING(self.buf) + self.pos
            if got != seq:
                data = PyBytes_FromStringAndSize(<const char*> payload, length)
                self.pos += length
                return ("out_of_sequence", got, data)
            seq = (seq + 1) & 0xFF
            if length == MAX_PACKET:  # a row of 16 MiB or more: join its packets
                big = bytearray(PyBytes_FromStringAndSize(<const char*> payload, length))
                self.pos += length
                while True:
                    self._need(read1, 4)
                    h = <const uint8_t*> PyBytes_AS_STRING(self.buf) + self.pos
                    length = h[0] | (h[1] << 8) | (h[2] << 16)
                    got = h[3]
                    self.pos += 4
                    self._need(read1, length)
                    if got != seq:
                        data = self.buf[self.pos:self.pos + length]
                        self.pos += length
                        return ("out_of_sequence", got, data)
                    seq = (seq + 1) & 0xFF
                    big += self.buf[self.pos:self.pos + length]
                    self.pos += length
                    if length < MAX_PACKET:
                        break
                row = bytes(big)
                self._add_row(<const uint8_t*> PyBytes_AS_STRING(row), PyBytes_GET_SIZE(row))
                held += PyBytes_GET_SIZE(row)
                continue
            if length and payload[0] == 0xFE and length < 9:
                data = PyBytes_FromStringAndSize(<const char*> payload, length)
                self.pos += length
                return ("eof", seq, data)
            if length and payload[0] == 0xFF:
                data = PyBytes_FromStringAndSize(<const char*> payload, length)
                self.pos += length
                return ("error", seq, data)
            self._add_row(payload, length)
            self.pos += length
            held += length
        return ("rows", seq, None)
