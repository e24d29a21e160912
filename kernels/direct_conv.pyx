# cython: boundscheck=False, wraparound=False, cdivision=True
"""Direct sparse convolution for small-channel layers (C core in direct_conv.h): the CSR
filters applied to a zero-padded copy of the batch, without im2col panels.

All checks happen here, before the C loop runs. The CSR container is checked as the im2col
kernel checks it (``sparse_gemm._check_weight``), so an edited or inconsistent CSR raises.
"""
from __future__ import annotations

import numpy as np
cimport numpy as cnp
from libc.stdint cimport int32_t, int64_t

from kernels._checks import array
from kernels.formats import CSRMatrix
from kernels.sparse_gemm import _check_threads, _check_weight

cnp.import_array()

cdef extern from "direct_conv.h" nogil:
    ctypedef struct jc_dc_geom:
        int64_t N, C, H, W
        Py_ssize_t sN, sC, sH, sW
        int64_t M, R, S, P, Q
        int64_t stride_h, stride_w, pad_h, pad_w, dil_h, dil_w
        Py_ssize_t yN, yM
    ctypedef struct jc_dc_csr:
        const int32_t *indptr
        const int32_t *indices
        const float *data
    int jc_direct_conv(const jc_dc_geom *g, const jc_dc_csr *A, const float *x, const float *bias,
                       int relu, float *y, int threads)


def _pair(v, name: str) -> tuple[int, int]:
    if type(v) is tuple and len(v) == 2 and type(v[0]) is int and type(v[1]) is int:
        return v  # the common case, without the conversions below (this runs per call)
    try:
        a, b = v
        if isinstance(a, bool) or isinstance(b, bool):
            raise TypeError
        return int(a), int(b)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair of integers, got {v!r}") from None


cdef bint _whole_float_strides(cnp.ndarray a):
    """Whether every stride is a non-negative whole number of floats (the C loop's units)."""
    cdef int i
    for i in range(a.ndim):
        if a.strides[i] < 0 or a.strides[i] % 4:
            return False
    return True


cdef bint _overlap(cnp.ndarray a, cnp.ndarray b):
    """Whether the memory extents of a and b intersect (numpy.may_share_memory's bounds test)."""
    cdef char *lo_a = <char *>cnp.PyArray_DATA(a)
    cdef char *lo_b = <char *>cnp.PyArray_DATA(b)
    cdef char *hi_a = lo_a
    cdef char *hi_b = lo_b
    cdef int i
    if a.size == 0 or b.size == 0:
        return False
    for i in range(a.ndim):
        if a.strides[i] < 0:
            lo_a += a.strides[i] * (a.shape[i] - 1)
        else:
            hi_a += a.strides[i] * (a.shape[i] - 1)
    for i in range(b.ndim):
        if b.strides[i] < 0:
            lo_b += b.strides[i] * (b.shape[i] - 1)
        else:
            hi_b += b.strides[i] * (b.shape[i] - 1)
    return lo_a < hi_b + cnp.PyArray_ITEMSIZE(b) and lo_b < hi_a + cnp.PyArray_ITEMSIZE(a)


cdef cnp.ndarray _check_out(out, Py_ssize_t n, Py_ssize_t m, Py_ssize_t p, Py_ssize_t q, cnp.ndarray x, bias):
    """``out`` as [N, M, P, Q] float32 whose P x Q planes are C-contiguous and do not overlap:
    the NCHW layout, or the channel-major one ([M, N, P, Q] memory seen as [N, M, P, Q]).
    Typed checks: this runs on every call of a layer that may take only a few microseconds."""
    if out is None:
        return np.empty((n, m, p, q), dtype=np.float32)
    if not (isinstance(out, np.ndarray) and out.dtype == np.float32 and out.ndim == 4):
        array(out, "out", np.float32, 4, "[N, M, P, Q]")  # raises, naming what is wrong
    cdef cnp.ndarray y = out
    if y.shape[0] != n or y.shape[1] != m or y.shape[2] != p or y.shape[3] != q:
        raise ValueError(f"out must have shape {(n, m, p, q)}, got {out.shape}")
    if not cnp.PyArray_ISWRITEABLE(y):
        raise ValueError("out must be writeable")
    cdef Py_ssize_t plane = 4 * p * q
    if (q > 1 and y.strides[3] != 4) or (p > 1 and y.strides[2] != 4 * q):
        raise ValueError("out's P x Q planes must be C-contiguous")
    # a stride of a length-1 axis is never used
    cdef bint n_plane = n == 1 or y.strides[0] == plane, m_plane = m == 1 or y.strides[1] == plane
    cdef bint nchw = m_plane and (n == 1 or y.strides[0] == m * plane)
    cdef bint channel_major = n_plane and (m == 1 or y.strides[1] == n * plane)
    if not (nchw or channel_major):
        raise ValueError("out must be [N, M, P, Q] C-contiguous or the [N, M, P, Q] view of a "
                         "C-contiguous [M, N, P, Q] array")
    if _overlap(y, x) or (bias is not None and _overlap(y, <cnp.ndarray>bias)):
        raise ValueError("out must not overlap the input or the bias")
    return y


def direct_conv(W, x, kernel_size, stride=(1, 1), pad=(0, 0), dilation=(1, 1), bias=None,
                relu=False, out=None, threads=1):
    """y[N, M, P, Q] = conv(x, W) (+ bias[m]) (then max(., 0) with ``relu``), float32.

    W: CSRMatrix [M, C*R*S], float32, row k = (c, r, s) in C order (``reference.im2col``'s).
    x: float32 [N, C, H, W], any strides (read once into a zero-padded copy).
    stride, pad (symmetric), dilation: pairs (h, w). bias: None or float32 [M].
    out: None, or a float32 [N, M, P, Q] to write: C-contiguous, or the [N, M, P, Q] view of a
    C-contiguous [M, N, P, Q] array (what the runner hands on); must not overlap x or bias.
    threads: OpenMP threads over (image, chunk of up to 128 output lanes, filter block) work items.
    Executes nnz * N * P * Q multiply-adds, as ``W.macs(N * P * Q)`` counts (the lanes that
    wrap past a row's end are computed and dropped, and not counted).
    """
    _check_weight(W)
    if not isinstance(W, CSRMatrix):
        raise TypeError(f"W must be a CSRMatrix, got {type(W).__name__}")
    if W.data.dtype != np.float32:
        raise TypeError(f"convolution needs a float32 W, got {W.data.dtype}")
    cdef int nthreads = _check_threads(threads)
    if not (isinstance(x, np.ndarray) and x.dtype == np.float32 and x.ndim == 4):
        array(x, "x", np.float32, 4, "[N, C, H, W]")  # raises, naming what is wrong
    if not _whole_float_strides(x):
        x = np.ascontiguousarray(x)
    R, S = _pair(kernel_size, "kernel_size")
    sh, sw = _pair(stride, "stride")
    ph, pw = _pair(pad, "pad")
    dh, dw = _pair(dilation, "dilation")
    if min(R, S, sh, sw, dh, dw) < 1 or min(ph, pw) < 0:
        raise ValueError("kernel, stride and dilation must be >= 1 and padding >= 0")
    n, C, H, Wd = x.shape
    if W.shape[1] != C * R * S:
        raise ValueError(f"shape mismatch: W has {W.shape[1]} columns, C*R*S = {C * R * S}")
    P = (H + 2 * ph - dh * (R - 1) - 1) // sh + 1
    Q = (Wd + 2 * pw - dw * (S - 1) - 1) // sw + 1
    if P < 1 or Q < 1:
        raise ValueError(f"the kernel does not fit the padded input: output would be {P} x {Q}")
    M = W.shape[0]
    if bias is not None:
        if not (isinstance(bias, np.ndarray) and bias.dtype == np.float32 and bias.ndim == 1):
            array(bias, "bias", np.float32, 1, "[M]")  # raises
        if bias.shape[0] != M:
            raise ValueError(f"bias must have {M} entries, got shape {bias.shape}")
        bias = np.ascontiguousarray(bias)
    Y = _check_out(out, n, M, P, Q, x, bias)
    return _run(W, x, bias, bool(relu), Y, (R, S, sh, sw, ph, pw, dh, dw), nthreads)


cdef _run(W, cnp.ndarray x, bias, bint relu, cnp.ndarray Y, tuple geom, int threads):
    cdef jc_dc_geom g
    g.N, g.C, g.H, g.W = x.shape[0], x.shape[1], x.shape[2], x.shape[3]
    g.sN, g.sC, g.sH, g.sW = x.strides[0] // 4, x.strides[1] // 4, x.strides[2] // 4, x.strides[3] // 4
    g.R, g.S, g.stride_h, g.stride_w, g.pad_h, g.pad_w, g.dil_h, g.dil_w = geom
    g.M, g.P, g.Q = Y.shape[1], Y.shape[2], Y.shape[3]
    g.yN, g.yM = Y.strides[0] // 4, Y.strides[1] // 4
    cdef cnp.ndarray indptr = W.indptr, indices = W.indices, data = W.data
    cdef jc_dc_csr A
    A.indptr = <const int32_t *>cnp.PyArray_DATA(indptr)
    A.indices = <const int32_t *>cnp.PyArray_DATA(indices)
    A.data = <const float *>cnp.PyArray_DATA(data)
    cdef const float *b = NULL
    if bias is not None:
        b = <const float *>cnp.PyArray_DATA(<cnp.ndarray>bias)
    cdef const float *xs = <const float *>cnp.PyArray_DATA(x)
    cdef float *y = <float *>cnp.PyArray_DATA(Y)
    cdef int rc
    with nogil:
        rc = jc_direct_conv(&g, &A, xs, b, relu, y, threads)
    if rc != 0:
        raise MemoryError("could not allocate the padded input buffer")
    return Y
