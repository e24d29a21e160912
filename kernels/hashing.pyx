# cython: boundscheck=False, cdivision=True
"""Cython kernels of the SLIDE hashed layer: hash codes, bucket tables, active-set forward
(per sample, grouped per neuron, and FusedForward: hash + lookup + products of small batches
in one C call) and the sparse backward update.

Every function checks dtypes, shapes and ranges in Python before the C loop runs
(kernels/hashing_core.h). The Python API on top is kernels/slide.py.
"""
import numpy as np
cimport numpy as cnp
from libc.stdint cimport int8_t, int32_t, int64_t, uint32_t, uint64_t
from libc.string cimport memcpy

from kernels._checks import array, matrix

cnp.import_array()

cdef extern from "hashing_core.h" nogil:
    uint32_t JC_EMPTY
    void jc_simhash(const float *x, int64_t n, int64_t d, const int8_t *proj, int L, int K,
                    uint32_t *codes, int nthreads)
    void jc_dwta(const float *x, int64_t n, int64_t d, const int32_t *idx, int L, int K,
                 int m, int log2m, uint32_t *codes, int nthreads)
    void jc_build_tables(const uint32_t *codes, int64_t N, int L, int code_bits,
                         int slot_bits, int32_t *offsets, int32_t *ids, uint32_t *ecodes,
                         int nthreads)
    int64_t jc_bounds(const uint32_t *qcodes, int64_t B, int L, int code_bits, int slot_bits,
                      const int32_t *offsets, int64_t *bound)
    void jc_collect(const uint32_t *qcodes, int64_t B, int L, int code_bits, int slot_bits,
                    const int32_t *offsets, const int32_t *ids, const uint32_t *ecodes,
                    int64_t N, const int64_t *start, int32_t *buf, int64_t *count,
                    int32_t *stamps, int32_t epoch, int T)
    void jc_pair_dots(const float *x, int64_t d, const float *W, const float *bias,
                      const int32_t *sample, const int32_t *indices, int64_t nnz,
                      float *values, int nthreads)
    void jc_mark(const uint32_t *qcodes, int64_t B, int L, int code_bits, int slot_bits,
                 const int32_t *offsets, const int32_t *ids, const uint32_t *ecodes,
                 int64_t N, int T, uint64_t *bits, int64_t *cnt, int nthreads)
    int jc_threads(int requested)
    void jc_grouped_dots(const uint64_t *bits, const float *x, int64_t B, int64_t d,
                         const float *W, const float *bias, int64_t N, int T,
                         int64_t *cursor, int32_t *indices, float *values,
                         int64_t *distinct)
    void jc_prefix_union(const uint32_t *qcodes, int64_t B, int L, int code_bits,
                         int slot_bits, const int32_t *offsets, const int32_t *ids,
                         const uint32_t *ecodes, int64_t N, int64_t *sizes, int nthreads)
    ctypedef struct jc_layer:
        int family, L, K, m, log2m
        const int8_t *proj
        const int32_t *bins
        int code_bits, slot_bits
        int64_t N
        const int32_t *offsets
        const int32_t *ids
        const uint32_t *ecodes
    int64_t jc_forward_fused(const jc_layer *t, const float *x, int64_t B, int64_t d,
                             const float *W, const float *bias, uint64_t *seen,
                             float *scratch, uint32_t *codes, int32_t *lo, int32_t *hi,
                             int *bins, int64_t cap, int32_t *ids_out, float *vals_out,
                             int64_t *counts)
    void jc_sparse_backward(const float *x, int64_t B, int64_t d, float *W, float *bias,
                            const int64_t *indptr, const int32_t *indices, const float *g,
                            float lr, float *grad_x, int nthreads)

EMPTY_CODE = int(JC_EMPTY)
MAX_CODE_BITS = 31
# Samples per grouped pass: bounds the per-neuron bitmap at N * 4 words.
GROUP_CHUNK = 256


def _matrix(a, name, dtype, cols=None):
    """a as a C-contiguous 2-D array of dtype; wrong dtype or rank is an error, not a cast."""
    return matrix(a, name, dtype, cols=cols)


def _vector(a, name, dtype, length):
    a = array(a, name, dtype)
    if a.ndim != 1 or a.shape[0] != length:
        raise ValueError(f"{name} must have shape ({length},), got {a.shape}")
    return np.ascontiguousarray(a)


def _finite(a, name):
    if a.size and not np.isfinite(a).all():
        raise ValueError(f"{name} must be finite (no NaN or inf)")


def sign_projections(proj):
    """proj [d, P] (float32 or int8, entries -1, 0, +1) as the C-contiguous int8 matrix the
    SimHash kernels read; any other entry is an error."""
    if not isinstance(proj, np.ndarray) or proj.dtype not in (np.float32, np.int8) or proj.ndim != 2:
        raise TypeError("proj must be a 2-D float32 or int8 numpy.ndarray of -1/0/+1 entries")
    if proj.dtype == np.int8:
        ok = not proj.size or (proj.min() >= -1 and proj.max() <= 1)
    else:
        ok = ((proj == -1) | (proj == 0) | (proj == 1)).all()
    if not ok:
        raise ValueError("proj entries must be -1, 0 or +1")
    return np.ascontiguousarray(proj, dtype=np.int8)


def simhash_codes(x, proj, int L, int K, int nthreads=0):
    """SimHash codes [n, L] (uint32, K low bits) of the rows of x [n, d] float32.

    proj [d, L*K] holds the projections (entries -1, 0, +1; int8, or float32 converted by
    sign_projections); bit k of table l is (x . proj[:, l*K + k] > 0).
    """
    if not 1 <= K <= MAX_CODE_BITS:
        raise ValueError(f"K must be in 1..{MAX_CODE_BITS} for SimHash, got {K}")
    if L < 1:
        raise ValueError(f"L must be >= 1, got {L}")
    x = _matrix(x, "x", np.float32)
    proj = sign_projections(proj)
    if proj.shape[1] != L * K:
        raise ValueError(f"proj must have L*K = {L * K} columns, got shape {proj.shape}")
    if proj.shape[0] != x.shape[1]:
        raise ValueError(f"proj must have {x.shape[1]} rows (input features), got {proj.shape[0]}")
    _finite(x, "x")
    codes = np.empty((x.shape[0], L), dtype=np.uint32)
    cdef float[:, ::1] xv = x
    cdef const int8_t[:, ::1] pv = proj
    cdef uint32_t[:, ::1] cv = codes
    if x.shape[0] and x.shape[1]:
        with nogil:
            jc_simhash(&xv[0, 0], xv.shape[0], xv.shape[1], &pv[0, 0], L, K, &cv[0, 0], nthreads)
    elif x.shape[0]:
        codes[:] = 0
    return codes


def dwta_codes(x, idx, int L, int K, int bin_size, int nthreads=0):
    """Densified winner-take-all codes [n, L] (uint32) of the rows of x [n, d] float32.

    idx [L*K, bin_size] int32: the coordinates of each bin. A row whose every bin in a table
    is all-zero gets EMPTY_CODE for that table (it matches no neuron).
    """
    if bin_size < 2 or bin_size & (bin_size - 1):
        raise ValueError(f"bin_size must be a power of two >= 2, got {bin_size}")
    cdef int log2m = int(bin_size).bit_length() - 1
    if K < 1 or K * log2m > MAX_CODE_BITS:
        raise ValueError(f"K must be in 1..{MAX_CODE_BITS // log2m} for DWTA with bin_size "
                         f"{bin_size}, got {K}")
    if L < 1:
        raise ValueError(f"L must be >= 1, got {L}")
    x = _matrix(x, "x", np.float32)
    idx = _matrix(idx, "idx", np.int32, cols=bin_size)
    if idx.shape[0] != L * K:
        raise ValueError(f"idx must have L*K = {L * K} rows, got {idx.shape[0]}")
    if idx.size and (idx.min() < 0 or idx.max() >= x.shape[1]):
        raise ValueError(f"idx entries must be in [0, {x.shape[1]}), got "
                         f"[{idx.min()}, {idx.max()}]")
    _finite(x, "x")
    codes = np.empty((x.shape[0], L), dtype=np.uint32)
    cdef float[:, ::1] xv = x
    cdef int32_t[:, ::1] iv = idx
    cdef uint32_t[:, ::1] cv = codes
    if x.shape[0]:
        with nogil:
            jc_dwta(&xv[0, 0], xv.shape[0], xv.shape[1], &iv[0, 0], L, K, bin_size, log2m,
                    &cv[0, 0], nthreads)
    return codes


cdef class BucketTables:
    """L bucket tables over N neurons, built from their codes [N, L] (uint32).

    Table l groups the neurons by code; `slot_bits` = min(code_bits, max(ceil(log2 N), 4))
    slots per table, each slot a contiguous run of (neuron id, code). Lookups filter on the
    full code, so the slot fold affects only memory, never which neurons match.
    """
    cdef readonly int L, code_bits, slot_bits
    cdef readonly int64_t N
    cdef readonly object offsets, ids, codes_sorted, codes
    cdef public int64_t last_distinct  # rows loaded by the last forward_grouped (per chunk)
    cdef object _bits
    cdef object _stamps   # [T, N] int32 dedupe marks kept between calls (see jc_collect)
    cdef int64_t _epoch

    def __init__(self, codes, int code_bits, int nthreads=0):
        if not 1 <= code_bits <= MAX_CODE_BITS:
            raise ValueError(f"code_bits must be in 1..{MAX_CODE_BITS}, got {code_bits}")
        codes = _matrix(codes, "codes", np.uint32)
        if codes.shape[1] < 1:
            raise ValueError("codes must have at least one table (column)")
        bad = (codes != np.uint32(EMPTY_CODE)) & (codes >> np.uint32(code_bits) != 0)
        if bad.any():
            raise ValueError(f"codes must fit in {code_bits} bits (or be EMPTY_CODE)")
        self.N = codes.shape[0]
        self.L = codes.shape[1]
        self.code_bits = code_bits
        self.slot_bits = min(code_bits, max(4, int(max(self.N - 1, 1)).bit_length()))
        self.codes = codes
        self._bits = None
        self._stamps = None
        self._epoch = 0
        S = 1 << self.slot_bits
        self.offsets = np.zeros((self.L, S + 1), dtype=np.int32)
        self.ids = np.zeros((self.L, max(self.N, 1)), dtype=np.int32)
        self.codes_sorted = np.zeros((self.L, max(self.N, 1)), dtype=np.uint32)
        cdef uint32_t[:, ::1] cv = codes
        cdef int32_t[:, ::1] ov = self.offsets
        cdef int32_t[:, ::1] iv = self.ids
        cdef uint32_t[:, ::1] ev = self.codes_sorted
        if self.N:
            with nogil:
                jc_build_tables(&cv[0, 0], self.N, self.L, self.code_bits, self.slot_bits,
                                &ov[0, 0], &iv[0, 0], &ev[0, 0], nthreads)

    def bucket_sizes(self):
        """[L, 2**slot_bits] int32: entries per slot (all codes of that slot together)."""
        return np.diff(self.offsets, axis=1)

    def _queries(self, qcodes, L_use=None):
        qcodes = _matrix(qcodes, "query codes", np.uint32)
        if qcodes.shape[1] != self.L:
            raise ValueError(f"query codes must have {self.L} columns (tables), got {qcodes.shape[1]}")
        if L_use is not None and L_use != self.L:
            if not 1 <= L_use <= self.L:
                raise ValueError(f"L_use must be in 1..{self.L}, got {L_use}")
        bad = (qcodes != np.uint32(EMPTY_CODE)) & (qcodes >> np.uint32(self.code_bits) != 0)
        if bad.any():
            raise ValueError(f"query codes must fit in {self.code_bits} bits (or be EMPTY_CODE)")
        return qcodes

    def active_sets(self, qcodes, int nthreads=0):
        """Per query, the union of its buckets over all L tables, as CSR (indptr int64
        [B+1], indices int32). Ids are unique per query, in discovery order (table by table)."""
        qcodes = self._queries(qcodes)
        cdef int64_t B = qcodes.shape[0]
        bound = np.zeros(B, dtype=np.int64)
        cdef uint32_t[:, ::1] qv = qcodes
        cdef int32_t[:, ::1] ov = self.offsets
        cdef int32_t[:, ::1] iv = self.ids
        cdef uint32_t[:, ::1] ev = self.codes_sorted
        cdef int64_t[::1] bv = bound
        cdef int64_t total = 0
        if B == 0:
            return np.zeros(1, dtype=np.int64), np.zeros(0, dtype=np.int32)
        with nogil:
            total = jc_bounds(&qv[0, 0], B, self.L, self.code_bits, self.slot_bits,
                              &ov[0, 0], &bv[0])
        start = np.zeros(B, dtype=np.int64)
        np.cumsum(bound[:-1], out=start[1:])
        buf = np.empty(max(total, 1), dtype=np.int32)
        count = np.zeros(B, dtype=np.int64)
        cdef int T = max(1, jc_threads(nthreads))
        if B >= 2**30:
            raise ValueError(f"at most 2**30 queries per call, got {B}")
        if self._stamps is None or self._stamps.shape[0] < T or self._epoch + B >= 2**31 - 1:
            self._stamps = np.full((T, max(self.N, 1)), -1, dtype=np.int32)
            self._epoch = 0
        cdef int32_t epoch = self._epoch
        self._epoch += B
        cdef int64_t[::1] sv = start
        cdef int32_t[::1] bufv = buf
        cdef int64_t[::1] cntv = count
        cdef int32_t[:, ::1] stv = self._stamps
        with nogil:
            jc_collect(&qv[0, 0], B, self.L, self.code_bits, self.slot_bits, &ov[0, 0],
                       &iv[0, 0], &ev[0, 0], self.N, &sv[0], &bufv[0], &cntv[0],
                       &stv[0, 0], epoch, T)
        indptr = np.zeros(B + 1, dtype=np.int64)
        np.cumsum(count, out=indptr[1:])
        if indptr[-1] == total:
            return indptr, buf[:total]
        keep = np.repeat(start - indptr[:-1], count) + np.arange(indptr[-1], dtype=np.int64)
        return indptr, buf[keep]

    def prefix_union_sizes(self, qcodes, int nthreads=0):
        """[B, L] int64: size of each query's union over tables 0..l (for choosing L)."""
        qcodes = self._queries(qcodes)
        cdef int64_t B = qcodes.shape[0]
        sizes = np.zeros((B, self.L), dtype=np.int64)
        if B == 0:
            return sizes
        cdef uint32_t[:, ::1] qv = qcodes
        cdef int32_t[:, ::1] ov = self.offsets
        cdef int32_t[:, ::1] iv = self.ids
        cdef uint32_t[:, ::1] ev = self.codes_sorted
        cdef int64_t[:, ::1] zv = sizes
        with nogil:
            jc_prefix_union(&qv[0, 0], B, self.L, self.code_bits, self.slot_bits, &ov[0, 0],
                            &iv[0, 0], &ev[0, 0], self.N, &zv[0, 0], nthreads)
        return sizes

    def _check_layer(self, x, W, bias):
        W = _matrix(W, "weight", np.float32)
        if W.shape[0] != self.N:
            raise ValueError(f"weight must have {self.N} rows (neurons), got {W.shape[0]}")
        x = _matrix(x, "x", np.float32, cols=W.shape[1])
        if bias is not None:
            bias = _vector(bias, "bias", np.float32, self.N)
        return x, W, bias

    def forward_per_sample(self, x, W, bias, qcodes, int nthreads=0):
        """Active-set forward gathering rows sample by sample: (indptr, indices, values) with
        values[p] = W[indices[p]] . x[b] + bias[indices[p]] for p in sample b's range."""
        x, W, bias = self._check_layer(x, W, bias)
        qcodes = self._queries(qcodes)
        if qcodes.shape[0] != x.shape[0]:
            raise ValueError(f"query codes must have {x.shape[0]} rows, got {qcodes.shape[0]}")
        indptr, indices = self.active_sets(qcodes, nthreads)
        cdef int64_t nnz = indices.shape[0]
        values = np.empty(nnz, dtype=np.float32)
        if nnz == 0 or W.shape[1] == 0:
            values[:] = 0 if bias is None else bias[indices]
            return indptr, indices, values
        sample = np.repeat(np.arange(x.shape[0], dtype=np.int32), np.diff(indptr))
        cdef float[:, ::1] xv = x
        cdef float[:, ::1] wv = W
        cdef const float *bp = NULL
        cdef float[::1] biasv
        if bias is not None:
            biasv = bias
            bp = &biasv[0]
        cdef int32_t[::1] smv = sample
        cdef int32_t[::1] inv = indices
        cdef float[::1] vv = values
        with nogil:
            jc_pair_dots(&xv[0, 0], xv.shape[1], &wv[0, 0], bp, &smv[0], &inv[0], nnz,
                         &vv[0], nthreads)
        return indptr, indices, values

    def forward_grouped(self, x, W, bias, qcodes, int nthreads=0):
        """Active-set forward grouped per neuron: each selected weight row is loaded once for
        all samples of a chunk (GROUP_CHUNK samples) that selected it. Same result as
        forward_per_sample, with ids sorted within each sample."""
        x, W, bias = self._check_layer(x, W, bias)
        qcodes = self._queries(qcodes)
        if qcodes.shape[0] != x.shape[0]:
            raise ValueError(f"query codes must have {x.shape[0]} rows, got {qcodes.shape[0]}")
        cdef int64_t B = x.shape[0]
        self.last_distinct = 0
        if B == 0:
            return np.zeros(1, dtype=np.int64), np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.float32)
        parts = [self._grouped_chunk(x[i:i + GROUP_CHUNK], W, bias, qcodes[i:i + GROUP_CHUNK], nthreads)
                 for i in range(0, B, GROUP_CHUNK)]
        if len(parts) == 1:
            return parts[0]
        counts = np.concatenate([np.diff(p[0]) for p in parts])
        indptr = np.zeros(B + 1, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        return (indptr, np.concatenate([p[1] for p in parts]),
                np.concatenate([p[2] for p in parts]))

    def _grouped_chunk(self, x, W, bias, qcodes, int nthreads):
        cdef int64_t B = x.shape[0]
        cdef int64_t N = self.N
        cdef int64_t d = W.shape[1]
        cdef int T = min(64, max(1, jc_threads(nthreads)))
        cdef int64_t nw = (B + 63) // 64
        if N == 0:
            return np.zeros(B + 1, dtype=np.int64), np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.float32)
        # the bitmap is scratch: keep it between calls (no page faults on every forward)
        if self._bits is None or self._bits.shape[0] < nw * N:
            self._bits = np.empty(nw * N, dtype=np.uint64)
        cdef uint64_t[::1] bitv = self._bits
        cdef uint32_t[:, ::1] qv = qcodes
        cdef int32_t[:, ::1] ov = self.offsets
        cdef int32_t[:, ::1] iv = self.ids
        cdef uint32_t[:, ::1] ev = self.codes_sorted
        cnt = np.zeros((T, B), dtype=np.int64)
        cdef int64_t[:, ::1] cntv = cnt
        with nogil:
            jc_mark(&qv[0, 0], B, self.L, self.code_bits, self.slot_bits, &ov[0, 0],
                    &iv[0, 0], &ev[0, 0], N, T, &bitv[0], &cntv[0, 0], nthreads)
        indptr = np.zeros(B + 1, dtype=np.int64)
        np.cumsum(cnt.sum(axis=0), out=indptr[1:])
        # cursor[t, b]: where thread t's share of sample b starts
        cursor = np.ascontiguousarray(indptr[:-1][None, :] + np.cumsum(cnt, axis=0) - cnt)
        cdef int64_t nnz = indptr[-1]
        indices = np.empty(max(nnz, 1), dtype=np.int32)
        values = np.empty(max(nnz, 1), dtype=np.float32)
        if nnz == 0:
            return indptr, indices[:0], values[:0]
        if d == 0:
            x = np.zeros((B, 1), dtype=np.float32)
            W = np.zeros((N, 1), dtype=np.float32)
            d = 1
        cdef float[:, ::1] xv = x
        cdef float[:, ::1] wv = W
        cdef const float *bp = NULL
        cdef float[::1] biasv
        if bias is not None:
            biasv = bias
            bp = &biasv[0]
        cdef int64_t[:, ::1] curv = cursor
        cdef int32_t[::1] inv = indices
        cdef float[::1] vv = values
        distinct = np.zeros(T, dtype=np.int64)
        cdef int64_t[::1] dv = distinct
        with nogil:
            jc_grouped_dots(&bitv[0], &xv[0, 0], B, d, &wv[0, 0], bp, N, T, &curv[0, 0],
                            &inv[0], &vv[0], &dv[0])
        self.last_distinct += int(distinct.sum())
        return indptr, indices[:nnz], values[:nnz]


cdef inline void *_data(cnp.ndarray a):
    return cnp.PyArray_DATA(a)


cdef cnp.ndarray _float32_array(obj, str name):
    """``obj`` if it is a float32 numpy.ndarray (checked through the C API: FusedForward's
    batch-1 call is ~0.1 ms of C work), else a TypeError naming it."""
    if not isinstance(obj, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(obj).__name__}")
    cdef cnp.ndarray a = obj
    if cnp.PyArray_TYPE(a) != cnp.NPY_FLOAT32:
        raise TypeError(f"{name} must have dtype float32, got {obj.dtype}")
    return a


cdef inline cnp.ndarray _c_contiguous(cnp.ndarray a):
    return a if cnp.PyArray_IS_C_CONTIGUOUS(a) else np.ascontiguousarray(a)


cdef class FusedForward:
    """Per-sample forward of a hashed layer in one C call per batch: for every sample, hash
    it, mark the neurons of its buckets in a bitmap, drain the bitmap into sorted ids and
    multiply those weight rows (prefetched ahead), with no per-sample Python work and no
    array of N flags to clear. Single-threaded (meant for small batches). A call costs a
    handful of Python operations: scratch lives in the object, arrays are passed to C as
    raw pointers after their checks.

    tables: the BucketTables of the layer; family "simhash" with proj [d, L*K] (-1/0/+1)
    or "dwta" with bins [L*K, bin_size] int32. The hash parameters must be the ones the
    tables' codes were computed with.
    """
    cdef readonly object tables, family
    cdef readonly int64_t d
    cdef readonly int K, bin_size
    cdef jc_layer layer
    cdef cnp.ndarray _proj, _bins, _offsets, _ids_t, _codes_t
    cdef cnp.ndarray _seen, _scratch, _codes, _lo, _hi, _binbuf, _ids, _vals

    def __init__(self, BucketTables tables, str family, int K, int64_t d, proj=None,
                 bins=None, int bin_size=2):
        if d < 1:
            raise ValueError(f"d (input features) must be >= 1, got {d}")
        if K < 1:
            raise ValueError(f"K must be >= 1, got {K}")
        cdef int L = tables.L
        self.tables, self.d, self.family, self.K, self.bin_size = tables, d, family, K, bin_size
        self.layer.L, self.layer.K = L, K
        self.layer.code_bits, self.layer.slot_bits, self.layer.N = tables.code_bits, tables.slot_bits, tables.N
        self.layer.proj, self.layer.bins = NULL, NULL
        self.layer.m, self.layer.log2m = 0, 0
        if family == "simhash":
            if K != tables.code_bits:
                raise ValueError(f"K must equal the tables' code_bits ({tables.code_bits}) for simhash, got {K}")
            self._proj = sign_projections(proj)
            if (self._proj.shape[0], self._proj.shape[1]) != (d, L * K):
                raise ValueError(f"proj must have shape ({d}, {L * K}), got {(self._proj.shape[0], self._proj.shape[1])}")
            self.layer.family = 0
            self.layer.proj = <const int8_t *>_data(self._proj)
        elif family == "dwta":
            if bin_size < 2 or bin_size & (bin_size - 1):
                raise ValueError(f"bin_size must be a power of two >= 2, got {bin_size}")
            self.layer.log2m = int(bin_size).bit_length() - 1
            if K * self.layer.log2m != tables.code_bits:
                raise ValueError(f"K * log2(bin_size) must equal the tables' code_bits "
                                 f"({tables.code_bits}), got {K * self.layer.log2m}")
            self._bins = _matrix(bins, "bins", np.int32, cols=bin_size)
            if self._bins.shape[0] != L * K:
                raise ValueError(f"bins must have L*K = {L * K} rows, got {self._bins.shape[0]}")
            if self._bins.min() < 0 or self._bins.max() >= d:
                raise ValueError(f"bins entries must be in [0, {d})")
            self.layer.family, self.layer.m = 1, bin_size
            self.layer.bins = <const int32_t *>_data(self._bins)
        else:
            raise ValueError(f"family must be 'simhash' or 'dwta', got {family!r}")
        self._offsets, self._ids_t, self._codes_t = tables.offsets, tables.ids, tables.codes_sorted
        self.layer.offsets = <const int32_t *>_data(self._offsets)
        self.layer.ids = <const int32_t *>_data(self._ids_t)
        self.layer.ecodes = <const uint32_t *>_data(self._codes_t)
        # scratch kept for the object's life: a call allocates only its outputs
        self._seen = np.zeros(max(1, (tables.N + 63) // 64), dtype=np.uint64)
        self._scratch = np.empty(max(1, L * K), dtype=np.float32)
        self._codes = np.empty(L, dtype=np.uint32)
        self._lo = np.empty(L, dtype=np.int32)
        self._hi = np.empty(L, dtype=np.int32)
        self._binbuf = np.empty(K, dtype=np.intc)
        self._ids = np.empty(max(1, tables.N), dtype=np.int32)
        self._vals = np.empty(max(1, tables.N), dtype=np.float32)

    def __reduce__(self):
        # the C struct holds raw pointers: rebuild it from the arrays (copy, pickle, torch.save)
        return (FusedForward, (self.tables, self.family, self.K, self.d, self._proj, self._bins,
                               self.bin_size))

    cdef cnp.ndarray _checked_x(self, x):
        cdef cnp.ndarray a = _float32_array(x, "x")
        if a.ndim != 2 or a.shape[1] != self.d:
            raise ValueError(f"x must be 2-D with {self.d} columns (input features), got shape {x.shape}")
        return _c_contiguous(a)

    cdef cnp.ndarray _checked_weight(self, W):
        if not isinstance(W, np.ndarray):
            raise TypeError("weight must be a 2-D float32 numpy.ndarray")
        cdef cnp.ndarray a = W
        if cnp.PyArray_TYPE(a) != cnp.NPY_FLOAT32 or a.ndim != 2:
            raise TypeError("weight must be a 2-D float32 numpy.ndarray")
        if a.shape[0] != self.tables.N or a.shape[1] != self.d:
            raise ValueError(f"weight must have shape ({self.tables.N}, {self.d}), got {W.shape}")
        return _c_contiguous(a)

    cdef cnp.ndarray _checked_bias(self, bias):
        cdef cnp.ndarray a = _float32_array(bias, "bias")
        if a.ndim != 1 or a.shape[0] != self.tables.N:
            raise ValueError(f"bias must have shape ({self.tables.N},), got {bias.shape}")
        return _c_contiguous(a)

    def __call__(self, x, W, bias):
        """(indptr int64 [B+1], indices int32, values float32) of x [B, d] float32: sample b's
        active ids, ascending, and W[id] . x[b] + bias[id]. W [N, d], bias [N] or None.
        Type and shape checks use the NumPy C API (a batch-1 call is ~0.1 ms of C work, so
        Python-level checks would be a visible share)."""
        cdef cnp.ndarray xa = self._checked_x(x)
        cdef cnp.ndarray wa = self._checked_weight(W)
        cdef cnp.ndarray ba = None if bias is None else self._checked_bias(bias)
        cdef int64_t B = xa.shape[0]
        cdef cnp.npy_intp nptr = B + 1
        cdef cnp.ndarray counts = cnp.PyArray_ZEROS(1, &nptr, cnp.NPY_INT64, 0)
        if B == 0 or self.tables.N == 0:
            return counts, self._copy_out(self._ids, 0), self._copy_out(self._vals, 0)
        cdef const float *xp = <const float *>_data(xa)
        cdef const float *wp = <const float *>_data(wa)
        cdef const float *bp = NULL if ba is None else <const float *>_data(ba)
        cdef int64_t *cp = <int64_t *>_data(counts)
        cdef int32_t *idp = <int32_t *>_data(self._ids)
        cdef float *vap = <float *>_data(self._vals)
        cdef uint64_t *seen = <uint64_t *>_data(self._seen)
        cdef float *scratch = <float *>_data(self._scratch)
        cdef uint32_t *codes = <uint32_t *>_data(self._codes)
        cdef int32_t *lo = <int32_t *>_data(self._lo)
        cdef int32_t *hi = <int32_t *>_data(self._hi)
        cdef int *binbuf = <int *>_data(self._binbuf)
        cdef int64_t cap = self._ids.shape[0], b = 0, done = 0, n, i
        parts = None
        while b < B:   # cap >= N, so every call finishes at least one sample
            with nogil:
                done = jc_forward_fused(&self.layer, xp + b * self.d, B - b, self.d, wp, bp,
                                        seen, scratch, codes, lo, hi, binbuf, cap, idp, vap,
                                        cp + b + 1)
            if done < 0:
                raise ValueError("x must be finite (no NaN or inf)")
            n = 0
            for i in range(b + 1, b + 1 + done):
                n += cp[i]
            ids, vals = self._copy_out(self._ids, n), self._copy_out(self._vals, n)
            b += done
            if b == done and b == B:     # one pass did all: no concatenation
                break
            parts = (parts or []) + [(ids, vals)]
        for i in range(1, B + 1):
            cp[i] += cp[i - 1]
        if parts is None:
            return counts, ids, vals
        return counts, np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    cdef cnp.ndarray _copy_out(self, cnp.ndarray buf, int64_t n):
        cdef cnp.npy_intp dims = n
        cdef cnp.ndarray out = cnp.PyArray_SimpleNew(1, &dims, cnp.PyArray_TYPE(buf))
        if n:
            memcpy(_data(out), _data(buf), <size_t>n * 4)
        return out


def sparse_backward(x, W, bias, indptr, indices, grad, float lr, int nthreads=0):
    """Sparse SGD step for y[b, n] = W[n] . x[b] + bias[n] over active pairs only.

    grad[p] is dLoss/dy for pair p (CSR indptr/indices over samples). Updates W and bias
    in place (only the rows listed in indices) and returns grad_x [B, d] computed with the
    weights before the update. W and bias must be C-contiguous float32 (they are written).
    """
    if not isinstance(W, np.ndarray) or W.dtype != np.float32 or W.ndim != 2 or not W.flags.c_contiguous:
        raise TypeError("weight must be a C-contiguous 2-D float32 numpy.ndarray (updated in place)")
    if not W.flags.writeable:
        raise ValueError("weight must be writeable")
    cdef int64_t N = W.shape[0]
    cdef int64_t d = W.shape[1]
    x = _matrix(x, "x", np.float32, cols=d)
    cdef int64_t B = x.shape[0]
    if bias is not None:
        if not isinstance(bias, np.ndarray) or bias.dtype != np.float32 or bias.shape != (N,) \
                or not bias.flags.c_contiguous or not bias.flags.writeable:
            raise TypeError(f"bias must be a writeable C-contiguous float32 array of shape ({N},)")
    indptr = _vector(indptr, "indptr", np.int64, B + 1)
    if indptr[0] != 0 or (np.diff(indptr) < 0).any():
        raise ValueError("indptr must start at 0 and be non-decreasing")
    cdef int64_t nnz = int(indptr[-1])
    indices = _vector(indices, "indices", np.int32, nnz)
    grad = _vector(grad, "grad", np.float32, nnz)
    if nnz and (indices.min() < 0 or indices.max() >= N):
        raise ValueError(f"indices must be in [0, {N}), got [{indices.min()}, {indices.max()}]")
    _finite(grad, "grad")
    grad_x = np.zeros((B, d), dtype=np.float32)
    if B == 0 or d == 0 or nnz == 0:
        if bias is not None and nnz:
            np.subtract.at(bias, indices, lr * grad)
        return grad_x
    cdef float[:, ::1] xv = x
    cdef float[:, ::1] wv = W
    cdef float *bp = NULL
    cdef float[::1] biasv
    if bias is not None:
        biasv = bias
        bp = &biasv[0]
    cdef int64_t[::1] ipv = indptr
    cdef int32_t[::1] inv = indices
    cdef float[::1] gv = grad
    cdef float[:, ::1] gxv = grad_x
    with nogil:
        jc_sparse_backward(&xv[0, 0], B, d, &wv[0, 0], bp, &ipv[0], &inv[0], &gv[0], lr,
                           &gxv[0, 0], nthreads)
    return grad_x
