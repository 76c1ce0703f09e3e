# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Native twin of ``osiris_flight.data.hash_partition.reference_hash_rows``: the row hash of Arrow key
columns, read straight from their buffers (validity bitmap, offsets, data), and the counting sort of
row indices by bucket that ``partition_batch`` splits a batch with.

The hash function, its canonical forms and the NULL rule are defined (and documented) in
``osiris_flight/data/hash_partition.py``; this module only computes it. Every loop runs without the
GIL. Canonical bytes are little-endian; ``hash_partition.py`` refuses to load on a big-endian host.
"""

from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t, uint8_t
from libc.stdlib cimport free, malloc
from libc.string cimport memset

import numpy as np
import pyarrow as pa

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>

    #define OF_P1 0x9E3779B185EBCA87ULL
    #define OF_P2 0xC2B2AE3D27D4EB4FULL
    #define OF_P3 0x165667B19E3779F9ULL
    #define OF_P4 0x85EBCA77C2B2AE63ULL
    #define OF_P5 0x27D4EB2F165667C5ULL
    #define OF_NULL_HASH 0x9E3779B97F4A7C15ULL
    #define OF_CANONICAL_NAN 0x7FF8000000000000ULL
    #define OF_MS_PER_DAY 86400000LL

    enum {
        OF_NULLTYPE = 0, OF_INT = 1, OF_BOOL = 2, OF_FLOAT32 = 3, OF_FLOAT64 = 4, OF_DATE64 = 5,
        OF_INSTANT = 6, OF_TIME = 7, OF_BINARY32 = 8, OF_BINARY64 = 9, OF_FIXEDBIN = 10,
        OF_DECIMAL = 11, OF_DICT = 12
    };

    typedef struct {
        int kind;
        int width;               /* bytes per value (integers, times, decimals) or per index */
        int is_signed;
        int64_t param;           /* units per second, ns multiplier, decimal scale, fixed width */
        const uint8_t* validity; /* NULL: no nulls */
        const uint8_t* data;
        const uint8_t* offsets;  /* binary/string offsets (int32 or int64) */
        int64_t offset;          /* the array's offset, in values */
        const uint64_t* dict_hashes;
        int64_t dict_len;
    } of_col;

    static inline uint64_t of_rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
    static inline uint64_t of_read64(const uint8_t* p) { uint64_t v; memcpy(&v, p, 8); return v; }
    static inline uint32_t of_read32(const uint8_t* p) { uint32_t v; memcpy(&v, p, 4); return v; }
    static inline uint64_t of_round(uint64_t acc, uint64_t lane) {
        acc += lane * OF_P2; acc = of_rotl(acc, 31); return acc * OF_P1;
    }
    static inline uint64_t of_merge(uint64_t acc, uint64_t val) {
        acc ^= of_round(0, val); return acc * OF_P1 + OF_P4;
    }
    static inline uint64_t of_avalanche(uint64_t h) {
        h ^= h >> 33; h *= OF_P2; h ^= h >> 29; h *= OF_P3; h ^= h >> 32; return h;
    }

    /* XXH64 (xxHash, 64-bit), seed 0 is what the row hash uses. */
    static uint64_t of_xxh64(const uint8_t* p, size_t len, uint64_t seed) {
        const uint8_t* end = p + len;
        uint64_t h;
        if (len >= 32) {
            const uint8_t* limit = end - 32;
            uint64_t v1 = seed + OF_P1 + OF_P2, v2 = seed + OF_P2, v3 = seed, v4 = seed - OF_P1;
            do {
                v1 = of_round(v1, of_read64(p)); p += 8;
                v2 = of_round(v2, of_read64(p)); p += 8;
                v3 = of_round(v3, of_read64(p)); p += 8;
                v4 = of_round(v4, of_read64(p)); p += 8;
            } while (p <= limit);
            h = of_rotl(v1, 1) + of_rotl(v2, 7) + of_rotl(v3, 12) + of_rotl(v4, 18);
            h = of_merge(h, v1); h = of_merge(h, v2); h = of_merge(h, v3); h = of_merge(h, v4);
        } else {
            h = seed + OF_P5;
        }
        h += (uint64_t)len;
        while (p + 8 <= end) {
            h ^= of_round(0, of_read64(p));
            h = of_rotl(h, 27) * OF_P1 + OF_P4;
            p += 8;
        }
        if (p + 4 <= end) {
            h ^= (uint64_t)of_read32(p) * OF_P1;
            h = of_rotl(h, 23) * OF_P2 + OF_P3;
            p += 4;
        }
        while (p < end) {
            h ^= (uint64_t)(*p) * OF_P5;
            h = of_rotl(h, 11) * OF_P1;
            p++;
        }
        return of_avalanche(h);
    }

    /* XXH64 of the 8 little-endian bytes of v, seed 0 (the short path, unrolled). */
    static inline uint64_t of_xxh64_u64(uint64_t v) {
        uint64_t h = OF_P5 + 8;
        h ^= of_round(0, v);
        h = of_rotl(h, 27) * OF_P1 + OF_P4;
        return of_avalanche(h);
    }

    /* XXH64 of 16 bytes: a then b, little-endian, seed 0. */
    static inline uint64_t of_xxh64_u64x2(uint64_t a, uint64_t b) {
        uint64_t h = OF_P5 + 16;
        h ^= of_round(0, a);
        h = of_rotl(h, 27) * OF_P1 + OF_P4;
        h ^= of_round(0, b);
        h = of_rotl(h, 27) * OF_P1 + OF_P4;
        return of_avalanche(h);
    }

    static inline uint64_t of_float_bits(double d) {
        uint64_t b;
        if (d != d) return OF_CANONICAL_NAN;
        if (d == 0.0) d = 0.0;  /* -0.0 -> +0.0 */
        memcpy(&b, &d, 8);
        return b;
    }

    static inline int64_t of_floordiv(int64_t a, int64_t b) {
        int64_t q = a / b;
        if ((a % b != 0) && ((a < 0) != (b < 0))) q -= 1;
        return q;
    }

    /* An instant (timestamp) or a span (duration): (seconds, nanoseconds in [0, 1e9)). */
    static inline uint64_t of_hash_instant(int64_t v, int64_t ups) {
        int64_t s = of_floordiv(v, ups);
        int64_t ns = (v - s * ups) * (1000000000LL / ups);
        return of_xxh64_u64x2((uint64_t)s, (uint64_t)ns);
    }

    /* A decimal: the unscaled value with trailing decimal zeros stripped (scale lowered to match;
       zero is (0, 0)), as 16 bytes of two's complement, then the scale as 8 bytes. */
    static uint64_t of_hash_decimal_stripped(__int128 v, int64_t scale) {
        uint8_t buf[24];
        memcpy(buf, &v, 16);
        memcpy(buf + 16, &scale, 8);
        return of_xxh64(buf, 24, 0);
    }

    static uint64_t of_hash_decimal128(__int128 v, int64_t scale) {
        if (v == 0) {
            scale = 0;
        } else if (v >= INT64_MIN && v <= INT64_MAX) {
            int64_t s = (int64_t)v;
            while (s % 10 == 0) { s /= 10; scale--; }
            v = s;
        } else {
            while (v % 10 == 0) { v /= 10; scale--; }
        }
        return of_hash_decimal_stripped(v, scale);
    }

    /* decimal256: strip zeros on the magnitude (4 little-endian limbs); a value that then fits in
       128 bits hashes as a decimal128 would; a wider one as 32 bytes of two's complement + scale. */
    static uint64_t of_hash_decimal256(const uint8_t* p, int64_t scale) {
        uint64_t w[4], q[4];
        int neg, k;
        unsigned __int128 cur;
        uint64_t rem;
        memcpy(w, p, 32);
        neg = (int)(w[3] >> 63);
        if (neg) {
            unsigned carry = 1;
            for (k = 0; k < 4; k++) { w[k] = ~w[k] + carry; carry = carry && w[k] == 0; }
        }
        if ((w[0] | w[1] | w[2] | w[3]) == 0) return of_hash_decimal_stripped(0, 0);
        for (;;) {
            rem = 0;
            for (k = 3; k >= 0; k--) {
                cur = ((unsigned __int128)rem << 64) | w[k];
                q[k] = (uint64_t)(cur / 10);
                rem = (uint64_t)(cur % 10);
            }
            if (rem != 0) break;
            memcpy(w, q, 32);
            scale--;
        }
        if (w[3] == 0 && w[2] == 0 && (w[1] >> 63) == 0) {
            unsigned __int128 mag = ((unsigned __int128)w[1] << 64) | w[0];
            return of_hash_decimal_stripped(neg ? (__int128)(~mag + 1) : (__int128)mag, scale);
        }
        if (neg && w[3] == 0 && w[2] == 0 && w[1] == 0x8000000000000000ULL && w[0] == 0) {
            unsigned __int128 mag = ((unsigned __int128)w[1] << 64);
            return of_hash_decimal_stripped((__int128)(~mag + 1), scale);
        }
        if (neg) {
            unsigned carry = 1;
            for (k = 0; k < 4; k++) { w[k] = ~w[k] + carry; carry = carry && w[k] == 0; }
        }
        {
            uint8_t buf[40];
            memcpy(buf, w, 32);
            memcpy(buf + 32, &scale, 8);
            return of_xxh64(buf, 40, 0);
        }
    }

    static inline int64_t of_read_int(const uint8_t* data, int64_t i, int width, int is_signed) {
        switch (width) {
            case 1: return is_signed ? (int64_t)((const int8_t*)data)[i] : (int64_t)data[i];
            case 2: return is_signed ? (int64_t)((const int16_t*)data)[i] : (int64_t)((const uint16_t*)data)[i];
            case 4: return is_signed ? (int64_t)((const int32_t*)data)[i] : (int64_t)((const uint32_t*)data)[i];
            default: return ((const int64_t*)data)[i];
        }
    }

    static inline __int128 of_read_decimal(const uint8_t* data, int64_t i, int width) {
        switch (width) {
            case 4: return (__int128)((const int32_t*)data)[i];
            case 8: return (__int128)((const int64_t*)data)[i];
            default: {
                __int128 v;
                memcpy(&v, data + 16 * i, 16);
                return v;
            }
        }
    }

    #define OF_VALID(c, i) (!(c)->validity || (((c)->validity[(i) >> 3] >> ((i) & 7)) & 1))
    #define OF_LOOP(EXPR) \\
        if (!c->validity) { for (r = 0; r < n; r++) { i = base + r; out[r * stride] = (EXPR); } } \\
        else { for (r = 0; r < n; r++) { i = base + r; out[r * stride] = OF_VALID(c, i) ? (EXPR) : OF_NULL_HASH; } }

    /* Value hashes of rows [start, start + n) of one column, written to out[0], out[stride], ...
       Returns 0, or -1 when a dictionary index is out of range. */
    #if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11  /* x86-64-vN: gcc 11 */
    /* One copy per x86-64 level, chosen at load time: with AVX-512 (x86-64-v4) gcc runs the
       fixed-width loops 8 rows per instruction (64-bit multiplies and rotates in vector registers). */
    #define OF_CLONES __attribute__((target_clones("default", "arch=x86-64-v3", "arch=x86-64-v4")))
    #else
    #define OF_CLONES
    #endif

    OF_CLONES
    static int of_hash_column(const of_col* c, int64_t start, int64_t n, uint64_t* out, int64_t stride) {
        int64_t r, i, base = c->offset + start;
        const uint8_t* d = c->data;
        switch (c->kind) {
            case OF_NULLTYPE:
                for (r = 0; r < n; r++) out[r * stride] = OF_NULL_HASH;
                break;
            case OF_INT:
                switch (c->width * 2 + c->is_signed) {
                    case 2: OF_LOOP(of_xxh64_u64((uint64_t)(int64_t)d[i])); break;
                    case 3: OF_LOOP(of_xxh64_u64((uint64_t)(int64_t)((const int8_t*)d)[i])); break;
                    case 4: OF_LOOP(of_xxh64_u64((uint64_t)(int64_t)((const uint16_t*)d)[i])); break;
                    case 5: OF_LOOP(of_xxh64_u64((uint64_t)(int64_t)((const int16_t*)d)[i])); break;
                    case 8: OF_LOOP(of_xxh64_u64((uint64_t)((const uint32_t*)d)[i])); break;
                    case 9: OF_LOOP(of_xxh64_u64((uint64_t)(int64_t)((const int32_t*)d)[i])); break;
                    default: OF_LOOP(of_xxh64_u64(((const uint64_t*)d)[i])); break;
                }
                break;
            case OF_BOOL:
                OF_LOOP(of_xxh64_u64((uint64_t)((d[i >> 3] >> (i & 7)) & 1)));
                break;
            case OF_FLOAT32:
                OF_LOOP(of_xxh64_u64(of_float_bits((double)((const float*)d)[i])));
                break;
            case OF_FLOAT64:
                OF_LOOP(of_xxh64_u64(of_float_bits(((const double*)d)[i])));
                break;
            case OF_DATE64:
                OF_LOOP(of_xxh64_u64((uint64_t)of_floordiv(((const int64_t*)d)[i], OF_MS_PER_DAY)));
                break;
            case OF_INSTANT:
                OF_LOOP(of_hash_instant(((const int64_t*)d)[i], c->param));
                break;
            case OF_TIME:
                OF_LOOP(of_xxh64_u64((uint64_t)(of_read_int(d, i, c->width, 1) * c->param)));
                break;
            case OF_BINARY32: {
                const int32_t* o = (const int32_t*)c->offsets;
                OF_LOOP(of_xxh64(d + o[i], (size_t)(o[i + 1] - o[i]), 0));
                break;
            }
            case OF_BINARY64: {
                const int64_t* o = (const int64_t*)c->offsets;
                OF_LOOP(of_xxh64(d + o[i], (size_t)(o[i + 1] - o[i]), 0));
                break;
            }
            case OF_FIXEDBIN:
                OF_LOOP(of_xxh64(d + i * c->param, (size_t)c->param, 0));
                break;
            case OF_DECIMAL:
                if (c->width == 32) {
                    OF_LOOP(of_hash_decimal256(d + 32 * i, c->param));
                } else {
                    OF_LOOP(of_hash_decimal128(of_read_decimal(d, i, c->width), c->param));
                }
                break;
            case OF_DICT: {
                int bad = 0;
                for (r = 0; r < n; r++) {
                    int64_t k;
                    i = base + r;
                    if (!OF_VALID(c, i)) { out[r * stride] = OF_NULL_HASH; continue; }
                    k = of_read_int(d, i, c->width, c->is_signed);
                    if (k < 0 || k >= c->dict_len) { bad = 1; k = 0; out[r * stride] = 0; continue; }
                    out[r * stride] = c->dict_hashes[k];
                }
                if (bad) return -1;
                break;
            }
        }
        return 0;
    }

    /* Row hashes of n rows into out: one key column -> its value hash; several -> XXH64 (seed 0)
       of their value hashes as consecutive little-endian 8-byte words. Rows go in blocks so the
       per-block value hashes stay in cache. tmp holds block * ncols words. */
    /* The bucket of row hash h among n: the high 64 bits of h * n (multiply-shift, Lemire 2019),
       as even as h % n and one multiplication instead of a 64-bit division. */
    static inline uint64_t of_bucket(uint64_t h, uint64_t n) {
        return (uint64_t)(((unsigned __int128)h * n) >> 64);
    }

    #define OF_BLOCK 1024
    OF_CLONES
    static int of_hash_rows(const of_col* cols, int ncols, int64_t n, uint64_t* out, uint64_t* tmp) {
        int64_t start, r, m;
        int c;
        if (ncols == 1) {
            for (start = 0; start < n; start += OF_BLOCK) {
                m = n - start < OF_BLOCK ? n - start : OF_BLOCK;
                if (of_hash_column(&cols[0], start, m, out + start, 1) != 0) return -1;
            }
            return 0;
        }
        for (start = 0; start < n; start += OF_BLOCK) {
            m = n - start < OF_BLOCK ? n - start : OF_BLOCK;
            for (c = 0; c < ncols; c++)
                if (of_hash_column(&cols[c], start, m, tmp + c, ncols) != 0) return -1;
            if (ncols == 2) {
                for (r = 0; r < m; r++) out[start + r] = of_xxh64_u64x2(tmp[2 * r], tmp[2 * r + 1]);
            } else {
                for (r = 0; r < m; r++)
                    out[start + r] = of_xxh64((const uint8_t*)(tmp + r * ncols), (size_t)(8 * ncols), 0);
            }
        }
        return 0;
    }
    """
    ctypedef struct of_col:
        int kind
        int width
        int is_signed
        int64_t param
        const uint8_t* validity
        const uint8_t* data
        const uint8_t* offsets
        int64_t offset
        const uint64_t* dict_hashes
        int64_t dict_len

    uint64_t of_xxh64(const uint8_t* p, size_t len, uint64_t seed) nogil
    uint64_t of_bucket(uint64_t h, uint64_t n) nogil
    int of_hash_rows(const of_col* cols, int ncols, int64_t n, uint64_t* out, uint64_t* tmp) nogil
    int OF_BLOCK


NULL_HASH = 0x9E3779B97F4A7C15


def xxh64(data: bytes) -> int:
    """XXH64 of ``data`` with seed 0 (the byte hash of every canonical form)."""
    cdef const uint8_t[:] view = data
    if len(data) == 0:
        return of_xxh64(<const uint8_t*> b"", 0, 0)
    return of_xxh64(&view[0], len(data), 0)


cdef inline const uint8_t* _ptr(object address):
    return <const uint8_t*> <size_t> (address or 0)


def hash_columns(list specs, Py_ssize_t rows):
    """Row hashes (numpy uint64, ``rows`` long) of the key columns described by ``specs``.

    Each spec is ``(kind, width, is_signed, param, validity_address, data_address,
    offsets_address, offset, dict_hashes)``: addresses of the array's Arrow buffers (0: absent),
    ``dict_hashes`` the numpy uint64 value hashes of a dictionary's values (or None). The caller
    keeps the arrays alive for the call.
    """
    cdef Py_ssize_t ncols = len(specs)
    cdef of_col* cols
    cdef uint64_t* tmp = NULL
    cdef int rc
    cdef uint64_t[::1] out_view
    cdef uint64_t[::1] dict_view
    cdef uint64_t* out_ptr
    cdef int64_t n = rows
    if ncols == 0:
        raise ValueError("hash_columns needs at least one key column")
    out = np.empty(rows, dtype=np.uint64)
    if rows == 0:
        return out
    out_view = out
    out_ptr = &out_view[0]
    cols = <of_col*> malloc(ncols * sizeof(of_col))
    if cols == NULL:
        raise MemoryError()
    try:
        for c, spec in enumerate(specs):
            kind, width, is_signed, param, validity, data, offsets, offset, dict_hashes = spec
            cols[c].kind = kind
            cols[c].width = width
            cols[c].is_signed = is_signed
            cols[c].param = param
            cols[c].validity = _ptr(validity)
            cols[c].data = _ptr(data)
            cols[c].offsets = _ptr(offsets)
            cols[c].offset = offset
            cols[c].dict_hashes = NULL
            cols[c].dict_len = 0
            if dict_hashes is not None and len(dict_hashes) > 0:
                dict_view = dict_hashes
                cols[c].dict_hashes = &dict_view[0]
                cols[c].dict_len = len(dict_hashes)
        if ncols > 1:
            tmp = <uint64_t*> malloc(OF_BLOCK * ncols * sizeof(uint64_t))
            if tmp == NULL:
                raise MemoryError()
        with nogil:
            rc = of_hash_rows(cols, <int> ncols, n, out_ptr, tmp)
        if rc != 0:
            raise ValueError("a dictionary index is out of range of its dictionary")
        return out
    finally:
        free(tmp)
        free(cols)


def bucket_order(const uint64_t[::1] hashes, uint64_t n_buckets):
    """Counting sort of row indices by bucket ``(hash * n_buckets) >> 64``, stable (row order kept).

    Returns ``(indices, offsets)``: bucket ``b`` holds ``indices[offsets[b]:offsets[b + 1]]``.
    Indices are int32 when there are fewer than 2**31 rows (pyarrow's take is fastest on them), else
    int64.
    """
    cdef Py_ssize_t n = hashes.shape[0]
    cdef Py_ssize_t i
    cdef uint64_t b
    cdef int64_t[::1] counts
    cdef int64_t[::1] pos
    cdef int32_t[::1] idx32
    cdef int64_t[::1] idx64
    cdef bint small = n < 2147483648
    if n_buckets == 0 or n_buckets > 4294967295:
        raise ValueError(f"the number of buckets must be in 1..4294967295, not {n_buckets}")
    offsets = np.zeros(n_buckets + 1, dtype=np.int64)
    counts = offsets
    indices = np.empty(n, dtype=np.int32 if small else np.int64)
    if n == 0:
        return indices, offsets
    if small:
        idx32 = indices
    else:
        idx64 = indices
    cursor = np.empty(n_buckets, dtype=np.int64)
    pos = cursor
    with nogil:
        for i in range(n):
            counts[of_bucket(hashes[i], n_buckets) + 1] += 1
        for i in range(<Py_ssize_t> n_buckets):
            counts[i + 1] += counts[i]
            pos[i] = counts[i]
        if small:
            for i in range(n):  # recomputing the bucket (a multiply) beats storing and reloading it
                b = of_bucket(hashes[i], n_buckets)
                idx32[pos[b]] = <int32_t> i
                pos[b] += 1
        else:
            for i in range(n):
                b = of_bucket(hashes[i], n_buckets)
                idx64[pos[b]] = i
                pos[b] += 1
    return indices, offsets


# -- the split: gathering each bucket's rows of one column into buffers of its own --------------------
cdef extern from *:
    """
    /* Copy rows idx[0..n) of width-byte values from src to dst, in order. */
    static void of_gather_fixed(const uint8_t* src, int64_t width, const int32_t* idx, int64_t n, uint8_t* dst) {
        int64_t r;
        switch (width) {
            case 1: for (r = 0; r < n; r++) dst[r] = src[idx[r]]; break;
            case 2: for (r = 0; r < n; r++) ((uint16_t*)dst)[r] = ((const uint16_t*)src)[idx[r]]; break;
            case 4: for (r = 0; r < n; r++) ((uint32_t*)dst)[r] = ((const uint32_t*)src)[idx[r]]; break;
            case 8: for (r = 0; r < n; r++) ((uint64_t*)dst)[r] = ((const uint64_t*)src)[idx[r]]; break;
            case 16:
                for (r = 0; r < n; r++) memcpy(dst + 16 * r, src + 16 * (int64_t)idx[r], 16);
                break;
            default:
                for (r = 0; r < n; r++) memcpy(dst + width * r, src + width * (int64_t)idx[r], (size_t)width);
        }
    }

    /* Bits at positions offset + idx[r] of src into bits r of dst (zeroed first); returns the
       number of zero bits among the n gathered (the nulls, for a validity bitmap). */
    static int64_t of_gather_bits(const uint8_t* src, int64_t offset, const int32_t* idx, int64_t n, uint8_t* dst) {
        int64_t r, ones = 0;
        memset(dst, 0, (size_t)((n + 7) / 8));
        for (r = 0; r < n; r++) {
            int64_t i = offset + idx[r];
            uint8_t bit = (src[i >> 3] >> (i & 7)) & 1;
            dst[r >> 3] |= (uint8_t)(bit << (r & 7));
            ones += bit;
        }
        return n - ones;
    }

    /* Bytes of the values idx[0..n) of a binary column (offsets of offset_width bytes, the array's
       offset already added to idx by the caller's base pointer). */
    static int64_t of_binary_size(const uint8_t* offs, int offset_width, const int32_t* idx, int64_t n,
                                  int64_t base) {
        int64_t r, total = 0;
        if (offset_width == 4) {
            const int32_t* o = (const int32_t*)offs;
            for (r = 0; r < n; r++) total += o[base + idx[r] + 1] - o[base + idx[r]];
        } else {
            const int64_t* o = (const int64_t*)offs;
            for (r = 0; r < n; r++) total += o[base + idx[r] + 1] - o[base + idx[r]];
        }
        return total;
    }

    static void of_gather_binary(const uint8_t* offs, int offset_width, const uint8_t* data, const int32_t* idx,
                                 int64_t n, int64_t base, uint8_t* dst_offs, uint8_t* dst_data) {
        int64_t r, pos = 0;
        if (offset_width == 4) {
            const int32_t* o = (const int32_t*)offs;
            int32_t* d = (int32_t*)dst_offs;
            d[0] = 0;
            for (r = 0; r < n; r++) {
                int64_t i = base + idx[r], len = o[i + 1] - o[i];
                memcpy(dst_data + pos, data + o[i], (size_t)len);
                pos += len;
                d[r + 1] = (int32_t)pos;
            }
        } else {
            const int64_t* o = (const int64_t*)offs;
            int64_t* d = (int64_t*)dst_offs;
            d[0] = 0;
            for (r = 0; r < n; r++) {
                int64_t i = base + idx[r], len = o[i + 1] - o[i];
                memcpy(dst_data + pos, data + o[i], (size_t)len);
                pos += len;
                d[r + 1] = pos;
            }
        }
    }
    """
    void of_gather_fixed(const uint8_t* src, int64_t width, const int32_t* idx, int64_t n, uint8_t* dst) nogil
    int64_t of_gather_bits(const uint8_t* src, int64_t offset, const int32_t* idx, int64_t n, uint8_t* dst) nogil
    int64_t of_binary_size(const uint8_t* offs, int offset_width, const int32_t* idx, int64_t n, int64_t base) nogil
    void of_gather_binary(const uint8_t* offs, int offset_width, const uint8_t* data, const int32_t* idx,
                          int64_t n, int64_t base, uint8_t* dst_offs, uint8_t* dst_data) nogil


cdef inline uint8_t* _wptr(object buffer):
    return <uint8_t*> <size_t> buffer.address


def split_bits(object address, int64_t offset, const int32_t[::1] indices, const int64_t[::1] offsets):
    """Per bucket, ``(bitmap buffer, zero bits)``: bits ``offset + indices[...]`` of the bitmap at
    ``address``, gathered bucket by bucket (a validity bitmap: the zero bits are the nulls)."""
    cdef Py_ssize_t b, nb = offsets.shape[0] - 1
    cdef int64_t start, n, zeros
    cdef const uint8_t* src = _ptr(address)
    cdef uint8_t* dst
    out = []
    for b in range(nb):
        start = offsets[b]
        n = offsets[b + 1] - start
        buf = pa.allocate_buffer((n + 7) // 8)
        dst = _wptr(buf)
        with nogil:
            zeros = of_gather_bits(src, offset, &indices[0] + start if n else NULL, n, dst) if n else 0
        out.append((buf, zeros))
    return out


def split_fixed(object address, int64_t width, const int32_t[::1] indices, const int64_t[::1] offsets):
    """Per bucket, a buffer of its rows' ``width``-byte values (``address`` points at the array's first
    value, its offset already applied)."""
    cdef Py_ssize_t b, nb = offsets.shape[0] - 1
    cdef int64_t start, n
    cdef const uint8_t* src = _ptr(address)
    cdef uint8_t* dst
    out = []
    for b in range(nb):
        start = offsets[b]
        n = offsets[b + 1] - start
        buf = pa.allocate_buffer(n * width)
        if n:
            dst = _wptr(buf)
            with nogil:
                of_gather_fixed(src, width, &indices[0] + start, n, dst)
        out.append(buf)
    return out


def split_binary(object offsets_address, int offset_width, object data_address, int64_t base,
                 const int32_t[::1] indices, const int64_t[::1] offsets):
    """Per bucket, ``(offsets buffer, data buffer)`` of its rows of a binary/string column
    (``base``: the array's offset)."""
    cdef Py_ssize_t b, nb = offsets.shape[0] - 1
    cdef int64_t start, n, size
    cdef const uint8_t* offs = _ptr(offsets_address)
    cdef const uint8_t* data = _ptr(data_address)
    cdef uint8_t* dst_offs
    cdef uint8_t* dst_data
    cdef const int32_t* idx
    out = []
    for b in range(nb):
        start = offsets[b]
        n = offsets[b + 1] - start
        idx = &indices[0] + start if n else NULL
        with nogil:
            size = of_binary_size(offs, offset_width, idx, n, base) if n else 0
        if offset_width == 4 and size > 2147483647:
            raise OverflowError("a bucket of a string/binary column exceeds 2 GiB")
        obuf = pa.allocate_buffer((n + 1) * offset_width)
        dbuf = pa.allocate_buffer(size)
        dst_offs = _wptr(obuf)
        dst_data = _wptr(dbuf) if size else NULL
        with nogil:
            if n:
                of_gather_binary(offs, offset_width, data, idx, n, base, dst_offs, dst_data)
            else:
                memset(dst_offs, 0, offset_width)
        out.append((obuf, dbuf))
    return out
