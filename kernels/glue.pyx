# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Small C loops for the graph runner's glue between weight layers, where NumPy's per-call and
per-row overhead dominates on small tensors (benchmarks/bench_runner.py, RESULTS.md "Whole-model
runner"):

- ``max_pool``: max pooling without padding or dilation over [N, C, H, W] of any element
  strides (the runner's channel-major conv outputs included), into a given output of any
  element strides: no copy of the input, no allocation.
- ``global_pool``: GlobalAveragePool / GlobalMaxPool over [N, C, H, W] of any element strides
  into a given [N, C, 1, 1] output.
- ``csr_rows``: Y[B, F] = X[B, K] @ W.T (+ bias, then optionally max(., 0)) for a CSR W[F, K]
  and few rows B: per output, a gather-dot over the row's nonzeros. It executes exactly
  ``W.macs(B)`` = nnz * B multiply-adds, as spmm does, without spmm's panel packing (which
  dominates at a few hundred nonzeros).

The checks here are the ones the C loops need to stay in bounds (shapes, dtypes, strides);
the runner calls these on arrays it allocated itself.
"""
from __future__ import annotations

import numpy as np
cimport numpy as cnp
from libc.stdint cimport int32_t, int64_t

from kernels.formats import CSRMatrix
from kernels.sparse_gemm import _check_weight

cnp.import_array()

cdef extern from "glue_core.h" nogil:
    void jc_max_pool(const float *x, int64_t N, int64_t C, int64_t H, int64_t W, int64_t xn, int64_t xc,
                     int64_t xh, int64_t xw, int64_t kh, int64_t kw, int64_t sh, int64_t sw, float *y,
                     int64_t P, int64_t Q, int64_t yn, int64_t yc, int64_t yh, int64_t yw)
    void jc_global_pool(const float *x, int64_t N, int64_t C, int64_t H, int64_t W, int64_t xn, int64_t xc,
                        int64_t xh, int64_t xw, int avg, float *y, int64_t yn, int64_t yc)
    void jc_csr_rows(const int32_t *indptr, const int32_t *idx, const float *data, int64_t F, const float *x,
                     int64_t B, int64_t xb, const float *bias, int relu, float *y, int64_t yb, int64_t yf)


cdef bint _float_strides(cnp.ndarray a):
    cdef int d
    for d in range(a.ndim):
        if a.strides[d] % 4:
            return False
    return True


def _check_planes(x, out) -> None:
    """x and out must be 4-D float32 arrays of whole-element strides, out writeable."""
    if not (isinstance(x, np.ndarray) and isinstance(out, np.ndarray)):
        raise TypeError("x and out must be numpy.ndarrays")
    if x.dtype != np.float32 or out.dtype != np.float32 or x.ndim != 4 or out.ndim != 4:
        raise TypeError("x and out must be 4-D float32 arrays")
    if not (_float_strides(x) and _float_strides(out)) or not out.flags.writeable:
        raise ValueError("x and out need whole-element strides and out must be writeable")


def max_pool(x, kernel, stride, out):
    """out[n, c, p, q] = max over the kernel window of x[n, c, p*sh + r, q*sw + s] (no padding,
    no dilation). x, out: float32 4-D arrays of any element strides (out must not overlap x);
    out's shape must be [N, C, P, Q] with P = (H - kh) // sh + 1, Q likewise. Returns out."""
    _check_planes(x, out)
    cdef int64_t kh = kernel[0], kw = kernel[1], sh = stride[0], sw = stride[1]
    if min(kh, kw, sh, sw) < 1:
        raise ValueError("kernel and stride must be >= 1")
    cdef int64_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    if H < kh or W < kw:
        raise ValueError(f"the pooling window {tuple(kernel)} does not fit the input {H}x{W}")
    cdef int64_t P = (H - kh) // sh + 1, Q = (W - kw) // sw + 1
    if tuple(out.shape) != (N, C, P, Q):
        raise ValueError(f"out must have shape {(N, C, P, Q)}, got {tuple(out.shape)}")
    if np.may_share_memory(x, out):
        raise ValueError("out must not overlap x")
    cdef const float *xp = <const float *>cnp.PyArray_DATA(<cnp.ndarray>x)
    cdef float *yp = <float *>cnp.PyArray_DATA(<cnp.ndarray>out)
    cdef Py_ssize_t xn = x.strides[0] // 4, xc = x.strides[1] // 4, xh = x.strides[2] // 4, xw = x.strides[3] // 4
    cdef Py_ssize_t yn = out.strides[0] // 4, yc = out.strides[1] // 4, yh = out.strides[2] // 4, yw = out.strides[3] // 4
    with nogil:
        jc_max_pool(xp, N, C, H, W, xn, xc, xh, xw, kh, kw, sh, sw, yp, P, Q, yn, yc, yh, yw)
    return out


def global_pool(x, bint average, out):
    """out[n, c, 0, 0] = the mean (``average``) or max of x[n, c, :, :]. x, out: float32 4-D
    arrays of any element strides; out must be [N, C, 1, 1] and not overlap x. Returns out."""
    _check_planes(x, out)
    cdef int64_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    if H < 1 or W < 1:
        raise ValueError(f"global pooling needs a non-empty plane, got {H}x{W}")
    if tuple(out.shape) != (N, C, 1, 1):
        raise ValueError(f"out must have shape {(N, C, 1, 1)}, got {tuple(out.shape)}")
    if np.may_share_memory(x, out):
        raise ValueError("out must not overlap x")
    cdef const float *xp = <const float *>cnp.PyArray_DATA(<cnp.ndarray>x)
    cdef float *yp = <float *>cnp.PyArray_DATA(<cnp.ndarray>out)
    cdef Py_ssize_t xn = x.strides[0] // 4, xc = x.strides[1] // 4, xh = x.strides[2] // 4, xw = x.strides[3] // 4
    cdef Py_ssize_t yn = out.strides[0] // 4, yc = out.strides[1] // 4
    with nogil:
        jc_global_pool(xp, N, C, H, W, xn, xc, xh, xw, average, yp, yn, yc)
    return out


def csr_rows(W, x, bias, bint relu, out):
    """out[b, f] = sum_j W.data[j] * x[b, W.indices[j]] over row f's nonzeros (+ bias[f]; then
    max(., 0) with ``relu``). W: float32 CSRMatrix [F, K]; x: float32 [B, K] with unit stride
    along K (any row stride); bias: None or float32 [F] contiguous; out: float32 [B, F] of any
    element strides, not overlapping x. Executes nnz * B multiply-adds. Returns out."""
    _check_weight(W)
    if not isinstance(W, CSRMatrix) or W.data.dtype != np.float32:
        raise TypeError("W must be a float32 CSRMatrix")
    if not (isinstance(x, np.ndarray) and isinstance(out, np.ndarray)):
        raise TypeError("x and out must be numpy.ndarrays")
    if x.dtype != np.float32 or out.dtype != np.float32 or x.ndim != 2 or out.ndim != 2:
        raise TypeError("x and out must be 2-D float32 arrays")
    cdef int64_t F = W.shape[0], K = W.shape[1], B = x.shape[0]
    if x.shape[1] != K or tuple(out.shape) != (B, F):
        raise ValueError(f"shape mismatch: W {W.shape}, x {x.shape}, out {out.shape}")
    if (K > 1 and x.strides[1] != 4) or x.strides[0] % 4 or not _float_strides(out) or not out.flags.writeable:
        raise ValueError("x needs unit stride along K and whole-element row strides; out whole-element strides")
    if np.may_share_memory(x, out):
        raise ValueError("out must not overlap x")
    cdef const float *bp = NULL
    if bias is not None:
        if not (isinstance(bias, np.ndarray) and bias.dtype == np.float32 and bias.shape == (F,)
                and bias.flags.c_contiguous):
            raise ValueError(f"bias must be a contiguous float32 [{F}]")
        bp = <const float *>cnp.PyArray_DATA(<cnp.ndarray>bias)
    cdef cnp.ndarray indptr = W.indptr, indices = W.indices, data = W.data
    cdef const int32_t *ip = <const int32_t *>cnp.PyArray_DATA(indptr)
    cdef const int32_t *ix = <const int32_t *>cnp.PyArray_DATA(indices)
    cdef const float *wv = <const float *>cnp.PyArray_DATA(data)
    cdef const float *xp = <const float *>cnp.PyArray_DATA(<cnp.ndarray>x)
    cdef float *yp = <float *>cnp.PyArray_DATA(<cnp.ndarray>out)
    cdef Py_ssize_t xb = x.strides[0] // 4, yb = out.strides[0] // 4, yf = out.strides[1] // 4
    with nogil:
        jc_csr_rows(ip, ix, wv, F, xp, B, xb, bp, relu, yp, yb, yf)
    return out
