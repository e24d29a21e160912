# cython: boundscheck=False, wraparound=False, cdivision=True
"""Sparse weight x dense activation products on packed column panels, and the skinny dense GEMM
of channel-pruned layers (C core in sparse_core.h).

All checks happen here, in Python, before the C loop runs; the containers in ``formats`` are
validated at construction and hold read-only arrays.
"""
from __future__ import annotations

import numpy as np
cimport numpy as cnp
from libc.stdint cimport int8_t, int32_t, int64_t

from kernels._checks import array, matrix
from kernels.formats import BSRMatrix, CSRMatrix

cnp.import_array()

cdef extern from "sparse_core.h" nogil:
    ctypedef struct jc_src:
        int kind
        const float *x
        const int8_t *x8
        Py_ssize_t sk, sn
        int64_t C, H, W, R, S, P, Q
        int64_t stride_h, stride_w, pad_h, pad_w, dil_h, dil_w
        Py_ssize_t sN, sC, sH, sW
    ctypedef struct jc_sparse:
        const int32_t *indptr
        const int32_t *indices
        const float *data
        const int8_t *data8
        int is_int8
        int64_t br, bc
        int64_t n_units
    int jc_spmm(const jc_sparse *A, const jc_src *src, int64_t M, int64_t K, int64_t kpad,
                int64_t N, void *Y, Py_ssize_t ldy, int threads)
    int JC_PW
    int JC_SK_MR, JC_SK_W, JC_SK_KC, JC_SK_ALIGN_MIN_N
    void jc_sk_pack_w(const float *W, Py_ssize_t ldw, int64_t M, int64_t K, float *Wp)
    int jc_skinny(const float *Wp, int64_t M, int64_t K, const float *X, Py_ssize_t ldx,
                  int64_t N, float *Y, Py_ssize_t ldy, int threads)

PANEL_WIDTH = JC_PW
MAX_THREADS = 256  # each thread holds a K x 64 panel buffer
# int8 products accumulate (x + 128) * w in int32: at most 128 * 255 per term.
MAX_INT8_K = (2**31 - 1) // (128 * 255)


def _check_threads(threads) -> int:
    if (not isinstance(threads, (int, np.integer)) or isinstance(threads, bool)
            or not 1 <= threads <= MAX_THREADS):
        raise ValueError(f"threads must be an integer in [1, {MAX_THREADS}], got {threads!r}")
    return int(threads)


def _check_weight(W) -> None:
    if not isinstance(W, (CSRMatrix, BSRMatrix)):
        raise TypeError(f"W must be a CSRMatrix or BSRMatrix, got {type(W).__name__}")
    # Cheap consistency checks in case the (read-only) arrays were swapped after construction.
    br, bc = (1, 1) if isinstance(W, CSRMatrix) else W.block
    n_units = -(-W.shape[0] // br)
    if (W.indptr.dtype != np.int32 or W.indices.dtype != np.int32
            or W.data.dtype not in (np.float32, np.int8)
            or W.indptr.shape[0] != n_units + 1 or W.indptr[0] != 0
            or W.indptr[n_units] != W.indices.shape[0] or W.data.shape[0] != W.indices.shape[0]
            or W.data.size != W.indices.shape[0] * br * bc
            or not (W.indptr.flags.c_contiguous and W.indices.flags.c_contiguous
                    and W.data.flags.c_contiguous)):
        raise ValueError("W's arrays are inconsistent; build it again with CSRMatrix/BSRMatrix")
    # The constructors leave the arrays read-only; one made writeable again may have been edited
    # since it was checked, so check it all again (indptr order, index ranges) before the C loop.
    if W.indptr.flags.writeable or W.indices.flags.writeable or W.data.flags.writeable:
        try:
            if isinstance(W, CSRMatrix):
                CSRMatrix(W.indptr, W.indices, W.data, W.shape)
            else:
                BSRMatrix(W.indptr, W.indices, W.data, W.shape, W.block)
        except (TypeError, ValueError) as e:
            raise ValueError(f"W was modified after construction and is no longer valid: {e}") from None


def _float_strides(a: np.ndarray) -> bool:
    return all(s % 4 == 0 for s in a.strides)


def _prepare_out(out, Py_ssize_t M, Py_ssize_t N, inputs, dtype=np.float32) -> np.ndarray:
    if out is None:
        return np.empty((M, N), dtype=dtype)
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a numpy.ndarray, got {type(out).__name__}")
    if out.dtype != dtype:
        raise TypeError(f"out must have dtype {np.dtype(dtype)}, got {out.dtype}")
    if out.shape != (M, N):
        raise ValueError(f"out must have shape {(M, N)}, got {out.shape}")
    if not out.flags.writeable:
        raise ValueError("out must be writeable")
    if (N > 1 and out.strides[1] != 4) or (M > 1 and (out.strides[0] % 4 or out.strides[0] < 4 * N)):
        raise ValueError("out must have contiguous, non-overlapping rows (stride 4 bytes along axis 1)")
    for a in inputs:
        if np.may_share_memory(out, a):
            raise ValueError("out must not overlap the input")
    return out


cdef void _fill_sparse(jc_sparse *A, W, cnp.ndarray indptr, cnp.ndarray indices, cnp.ndarray data):
    A.indptr = <const int32_t *>cnp.PyArray_DATA(indptr)
    A.indices = <const int32_t *>cnp.PyArray_DATA(indices)
    A.is_int8 = data.dtype == np.int8
    A.data = <const float *>cnp.PyArray_DATA(data) if not A.is_int8 else NULL
    A.data8 = <const int8_t *>cnp.PyArray_DATA(data) if A.is_int8 else NULL
    if isinstance(W, CSRMatrix):
        A.br = 1
        A.bc = 1
    else:
        A.br = W.block[0]
        A.bc = W.block[1]
    A.n_units = indptr.shape[0] - 1


cdef _run(W, jc_src *src, Py_ssize_t N, cnp.ndarray Y, int threads):
    cdef jc_sparse A
    cdef cnp.ndarray indptr = W.indptr, indices = W.indices, data = W.data
    _fill_sparse(&A, W, indptr, indices, data)
    cdef int64_t M = W.shape[0], K = W.shape[1]
    cdef int64_t kpad = (K + A.bc - 1) // A.bc * A.bc  # C division: keep it non-negative
    cdef void *y = cnp.PyArray_DATA(Y)
    cdef Py_ssize_t ldy = Y.strides[0] // 4 if M > 1 else N
    cdef int rc
    with nogil:
        rc = jc_spmm(&A, src, M, K, kpad, N, y, ldy, threads)
    if rc != 0:
        raise MemoryError("could not allocate the packed panel buffer")


def spmm(W, X, out=None, threads=1, return_macs=False):
    """Y[M, N] = W @ X for a CSRMatrix or BSRMatrix W[M, K] and a dense X[K, N].

    float32 W: X float32, Y float32. int8 W: X int8, Y int32, exact (AVX-512 VNNI where the
    build has it; K at most MAX_INT8_K).
    X may be any strided view (transposed, sliced); it is packed 64 columns at a time.
    ``out`` (optional) must be [M, N] of Y's dtype with contiguous rows and must not overlap X.
    ``threads``: OpenMP threads over (panel, row-chunk) work items.
    Returns Y, or (Y, macs) with ``return_macs`` — the multiply-adds executed: nnz * N for CSR,
    n_blocks * br * bc * N for BSR (lanes padding a remainder panel to whole vectors not counted).
    """
    _check_weight(W)
    cdef int nthreads = _check_threads(threads)
    int8 = W.data.dtype == np.int8
    want = np.int8 if int8 else np.float32
    if not isinstance(X, np.ndarray):
        raise TypeError(f"X must be a numpy.ndarray, got {type(X).__name__}")
    if X.dtype != want:
        raise TypeError(f"X must have dtype {np.dtype(want)} for a {W.data.dtype} W, got {X.dtype}")
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D [K, N], got shape {X.shape}")
    cdef Py_ssize_t M = W.shape[0], K = W.shape[1], N = X.shape[1]
    if X.shape[0] != K:
        raise ValueError(f"shape mismatch: W is {W.shape} but X is {X.shape} (X must have {K} rows)")
    if int8 and K > MAX_INT8_K:
        raise ValueError(f"int8 products need K <= {MAX_INT8_K} (int32 accumulators), got {K}")
    if not int8 and not _float_strides(X):
        X = np.ascontiguousarray(X)
    Y = _prepare_out(out, M, N, (X,), np.int32 if int8 else np.float32)
    cdef jc_src src
    src.kind = 0
    src.x = NULL
    src.x8 = NULL
    cdef Py_ssize_t item = X.itemsize
    if int8:
        src.x8 = <const int8_t *>cnp.PyArray_DATA(<cnp.ndarray>X)
    else:
        src.x = <const float *>cnp.PyArray_DATA(<cnp.ndarray>X)
    src.sk = X.strides[0] // item
    src.sn = X.strides[1] // item
    _run(W, &src, N, Y, nthreads)
    return (Y, W.macs(N)) if return_macs else Y


def spmm_im2col(W, x, kernel_size, stride, pad, dilation, out=None, threads=1):
    """Y[M, N*P*Q] = W @ im2col(x) without materialising im2col: columns are packed into panels
    straight from x[N, C, H, W] (float32, any strides). W is [M, C*R*S]; row k of im2col is
    (c, r, s) in C order and column j is (n, p, q) — the layout of ``reference.im2col``.
    Arguments are validated by ``conv.conv2d_sparse``; this checks only what guards memory.
    """
    _check_weight(W)
    if W.data.dtype != np.float32:
        raise TypeError(f"convolution needs a float32 W, got {W.data.dtype}")
    cdef int nthreads = _check_threads(threads)
    if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim != 4:
        raise TypeError("x must be a float32 numpy.ndarray [N, C, H, W]")
    if not _float_strides(x):
        x = np.ascontiguousarray(x)
    cdef int64_t n = x.shape[0], C = x.shape[1], H = x.shape[2], Wd = x.shape[3]
    R, S = (int(v) for v in kernel_size)
    sh, sw = (int(v) for v in stride)
    ph, pw = (int(v) for v in pad)
    dh, dw = (int(v) for v in dilation)
    if min(R, S, sh, sw, dh, dw) < 1 or min(ph, pw) < 0:
        raise ValueError("kernel, stride and dilation must be >= 1 and padding >= 0")
    P = (H + 2 * ph - dh * (R - 1) - 1) // sh + 1
    Q = (Wd + 2 * pw - dw * (S - 1) - 1) // sw + 1
    if P < 1 or Q < 1:
        raise ValueError(f"the kernel does not fit the padded input: output would be {P} x {Q}")
    if W.shape[1] != C * R * S:
        raise ValueError(f"shape mismatch: W has {W.shape[1]} columns, im2col has C*R*S = {C * R * S}")
    cdef Py_ssize_t cols = n * P * Q
    Y = _prepare_out(out, W.shape[0], cols, (x,))
    cdef jc_src src
    src.kind = 1
    src.x8 = NULL
    src.x = <const float *>cnp.PyArray_DATA(<cnp.ndarray>x)
    src.sk = 0
    src.sn = 0
    src.C, src.H, src.W, src.R, src.S, src.P, src.Q = C, H, Wd, R, S, P, Q
    src.stride_h, src.stride_w, src.pad_h, src.pad_w, src.dil_h, src.dil_w = sh, sw, ph, pw, dh, dw
    src.sN, src.sC, src.sH, src.sW = (s // 4 for s in x.strides)
    _run(W, &src, cols, Y, nthreads)
    return Y


# ---------------------------------------------------------------------------------------------
# Skinny dense GEMM (channel-pruned layers): few rows of W against a large X read in place.

SKINNY_STRIP = JC_SK_W       # columns of X per strip
SKINNY_ROW_BLOCK = JC_SK_MR  # most rows per register block
SKINNY_ALIGN_MIN_COLS = JC_SK_ALIGN_MIN_N  # from this width the in-place columns start on a cache line


class SkinnyWeight:
    """A dense float32 W[M, K] packed once for ``skinny_gemm`` (rows grouped into register
    blocks, each block stored k-major so its broadcasts are contiguous). Read-only."""

    __slots__ = ("shape", "packed")

    def __init__(self, W):
        cdef cnp.ndarray w = matrix(W, "W", np.float32, layout="[M, K]")
        cdef int64_t M = w.shape[0], K = w.shape[1]
        cdef cnp.ndarray packed = np.empty(M * K, dtype=np.float32)
        cdef const float *src = <const float *>cnp.PyArray_DATA(w)
        cdef float *dst = <float *>cnp.PyArray_DATA(packed)
        with nogil:
            jc_sk_pack_w(src, K, M, K, dst)
        packed.setflags(write=False)
        self.shape = (int(M), int(K))
        self.packed = packed


def skinny_gemm(W, X, out=None, threads=1):
    """Y[M, N] = W @ X, float32, for a SkinnyWeight W[M, K] and a dense X[K, N].

    Meant for few rows (M up to ~100; see conv.SKINNY_MAX_ROWS): X is read in place, in
    64-column strips, with no packing pass. X must be float32 with K rows; a view whose rows are
    not contiguous is copied first. ``out`` as in spmm. ``threads``: OpenMP threads over
    (strip, row-block) work items."""
    if not isinstance(W, SkinnyWeight):
        raise TypeError(f"W must be a SkinnyWeight, got {type(W).__name__}")
    cdef int nthreads = _check_threads(threads)
    array(X, "X", np.float32, 2, "[K, N]")
    cdef Py_ssize_t M = W.shape[0], K = W.shape[1], N = X.shape[1]
    if X.shape[0] != K:
        raise ValueError(f"shape mismatch: W is {W.shape} but X is {X.shape} (X must have {K} rows)")
    cdef cnp.ndarray packed = W.packed
    if packed.dtype != np.float32 or packed.size != M * K or not packed.flags.c_contiguous:
        raise ValueError("W's packed array is inconsistent; build it again with SkinnyWeight")
    # the kernel reads whole rows of X at a positive row stride
    if K > 1 and (X.strides[1] != 4 or X.strides[0] < 4 * N or X.strides[0] % 4):
        X = np.ascontiguousarray(X)
    elif K <= 1 or N <= 1:
        X = np.ascontiguousarray(X)
    Y = _prepare_out(out, M, N, (X,))
    if M == 0 or N == 0:
        return Y
    if K == 0:
        Y.fill(0.0)
        return Y
    cdef const float *wp = <const float *>cnp.PyArray_DATA(packed)
    cdef const float *x = <const float *>cnp.PyArray_DATA(<cnp.ndarray>X)
    cdef float *y = <float *>cnp.PyArray_DATA(<cnp.ndarray>Y)
    cdef Py_ssize_t ldx = X.strides[0] // 4 if K > 1 else N
    cdef Py_ssize_t ldy = Y.strides[0] // 4 if M > 1 else N
    cdef int rc
    with nogil:
        rc = jc_skinny(wp, M, K, x, ldx, N, y, ldy, nthreads)
    if rc != 0:
        raise MemoryError("could not allocate the tail-strip buffers")
    return Y
