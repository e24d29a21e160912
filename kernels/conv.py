"""Convolutions on the sparse kernels, and the dense path for channel-pruned layers.

- ``conv2d_sparse``: im2col convolution whose columns are packed into panels straight from the
  image (the im2col matrix is never materialised), multiplied by a CSR/BSR weight.
- ``compact_channels`` + ``dense_gemm`` / ``conv2d_dense``: a channel-pruned layer physically
  loses its all-zero output and input channels and runs as a smaller dense GEMM. With few kept
  output channels (``use_skinny``) that GEMM is ``sparse_gemm.skinny_gemm``, which reads the
  activations in place (a BLAS packs them first, and with few rows that pass is not hidden);
  otherwise ``numpy.matmul`` (NumPy's BLAS, with whatever thread count its BLAS is set to).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from kernels._checks import array
from kernels.formats import BSRMatrix, CSRMatrix
from kernels.reference import _pair, conv_output_size, im2col
from kernels.sparse_gemm import SkinnyWeight, _check_threads, skinny_gemm, spmm_im2col

# Kept output rows up to which a CompactWeight is packed for skinny_gemm, and the rule for when
# it runs instead of numpy.matmul. Measured (benchmarks/bench_sparse.py shapes, one thread):
# skinny_gemm is 1.1-1.6x faster than OpenBLAS up to ~256 rows when N >= 128 columns; with
# fewer columns (N = 49, 64) only up to ~64 rows, and BLAS wins beyond.
SKINNY_MAX_ROWS = 256
SKINNY_MAX_ROWS_NARROW = 64
SKINNY_NARROW_COLS = 128


def use_skinny(rows: int, cols: int) -> bool:
    """Whether a [rows, K] @ [K, cols] product of a CompactWeight runs on skinny_gemm."""
    limit = SKINNY_MAX_ROWS if cols >= SKINNY_NARROW_COLS else SKINNY_MAX_ROWS_NARROW
    return 0 < rows <= limit


def _check_x(x: object) -> np.ndarray:
    return array(x, "x", np.float32, 4, "[N, C, H, W]")


def _check_conv_args(stride, pad, dilation, groups) -> tuple:
    st, pd, dl = _pair(stride, "stride"), _pair(pad, "pad"), _pair(dilation, "dilation")
    if min(st + dl) < 1 or min(pd) < 0:
        raise ValueError(f"stride and dilation must be >= 1 and pad >= 0, got {st}, {dl}, {pd}")
    if not isinstance(groups, int | np.integer) or isinstance(groups, bool) or groups < 1:
        raise ValueError(f"groups must be a positive integer, got {groups!r}")
    return st, pd, dl, int(groups)


def _check_bias(bias: object, m: int) -> np.ndarray | None:
    if bias is None:
        return None
    if not isinstance(bias, np.ndarray) or bias.shape != (m,):
        raise ValueError(f"bias must be a numpy.ndarray of shape ({m},), got "
                         f"{getattr(bias, 'shape', type(bias).__name__)}")
    if not np.issubdtype(bias.dtype, np.floating):
        raise TypeError(f"bias must be floating point, got {bias.dtype}")
    return bias.astype(np.float32, copy=False)


def conv2d_sparse(x: np.ndarray, W: CSRMatrix | BSRMatrix, bias: np.ndarray | None = None,
                  stride: int | tuple[int, int] = 1, pad: int | tuple[int, int] = 0,
                  dilation: int | tuple[int, int] = 1, groups: int = 1, threads: int = 1,
                  kernel_size: int | tuple[int, int] | None = None,
                  return_macs: bool = False):
    """y[N, M, P, Q] = conv(x[N, C, H, W], W) + bias, float32.

    W is the weight flattened to [M, (C/groups)*R*S] (``w.reshape(M, -1)`` of a PyTorch/ONNX
    [M, C/groups, R, S] weight) as a CSRMatrix or BSRMatrix; for groups > 1 its rows
    [g*M/g, (g+1)*M/g) belong to group g (a BSR's block height must divide M/groups).
    ``kernel_size`` (R, S) defaults to the square that fits W's width.
    With ``return_macs`` returns (y, macs): the multiply-adds the kernels executed (see spmm).
    """
    x = _check_x(x)
    if not isinstance(W, CSRMatrix | BSRMatrix):
        raise TypeError(f"W must be a CSRMatrix or BSRMatrix, got {type(W).__name__} "
                        "(use CSRMatrix.from_dense(w.reshape(M, -1)))")
    st, pd, dl, groups = _check_conv_args(stride, pad, dilation, groups)
    n, c, h, wd = x.shape
    m, k = W.shape
    if c % groups or m % groups:
        raise ValueError(f"groups={groups} must divide both C={c} and M={m}")
    cg, mg = c // groups, m // groups
    if kernel_size is None:
        side = math.isqrt(k // cg) if cg and k % cg == 0 else 0
        if cg == 0 or side * side * cg != k:
            raise ValueError(f"cannot infer a square kernel from W's {k} columns and C/groups={cg}; "
                             "pass kernel_size")
        ks = (side, side)
    else:
        ks = _pair(kernel_size, "kernel_size")
    if k != cg * ks[0] * ks[1]:
        raise ValueError(f"shape mismatch: W has {k} columns, C/groups*R*S = {cg}*{ks[0]}*{ks[1]}")
    b = _check_bias(bias, m)
    p, q = conv_output_size(h, wd, ks, st, pd, dl)
    if p < 1 or q < 1:
        raise ValueError(f"the kernel {ks} does not fit the padded input {h}x{wd}")
    y = np.empty((m, n * p * q), dtype=np.float32)
    macs = 0
    for g in range(groups):
        wg = W if groups == 1 else W.row_slice(g * mg, (g + 1) * mg)
        spmm_im2col(wg, x[:, g * cg:(g + 1) * cg], ks, st, pd, dl, out=y[g * mg:(g + 1) * mg],
                    threads=threads)
        macs += wg.macs(n * p * q)
    out = np.ascontiguousarray(y.reshape(m, n, p, q).transpose(1, 0, 2, 3))
    if b is not None:
        out += b[None, :, None, None]
    return (out, macs) if return_macs else out


@dataclass(frozen=True)
class CompactWeight:
    """A weight with its all-zero output and input channels physically removed.

    weight: [len(out_index), len(in_index), ...] float32; out_index / in_index: kept channel
    numbers (int64, ascending) of the original [M, C, ...] weight of shape ``full_shape``.
    The weight is kept read-only (a writeable one is copied): with at most SKINNY_MAX_ROWS kept
    rows it is also packed once, here, into ``skinny`` for skinny_gemm, which must not go stale.
    """

    weight: np.ndarray
    out_index: np.ndarray
    in_index: np.ndarray
    full_shape: tuple[int, ...]
    skinny: SkinnyWeight | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        w = self.weight
        if not isinstance(w, np.ndarray) or w.dtype != np.float32 or w.ndim not in (2, 4):
            raise TypeError("weight must be a float32 numpy.ndarray [M', C', ...] (2-D or 4-D)")
        if (len(self.full_shape) != w.ndim or w.shape[0] != len(self.out_index)
                or w.shape[1] != len(self.in_index)):
            raise ValueError(f"weight {w.shape} does not match the kept channels "
                             f"({len(self.out_index)}, {len(self.in_index)}) of {self.full_shape}")
        if w.flags.writeable or not w.flags.c_contiguous:
            w = np.array(w, dtype=np.float32, order="C")
            w.setflags(write=False)
            object.__setattr__(self, "weight", w)
        if 0 < w.shape[0] <= SKINNY_MAX_ROWS:
            object.__setattr__(self, "skinny", SkinnyWeight(w.reshape(w.shape[0], -1)))

    def macs(self, n_cols: int) -> int:
        """Multiply-adds of one product with n_cols columns (per-pixel count for a conv)."""
        return int(self.weight.size) * int(n_cols)


def compact_channels(w: np.ndarray) -> CompactWeight:
    """Drop output channels whose filter is all zero and input channels no filter reads.

    w: [M, C] (a GEMM / fully connected weight) or [M, C, R, S] (a groups=1 convolution)."""
    if not isinstance(w, np.ndarray):
        raise TypeError(f"w must be a numpy.ndarray, got {type(w).__name__}")
    if w.ndim not in (2, 4):
        raise ValueError(f"w must be [M, C] or [M, C, R, S], got shape {w.shape}")
    if not np.issubdtype(w.dtype, np.floating):
        raise TypeError(f"w must be floating point, got {w.dtype}")
    nz = w.reshape(w.shape[0], w.shape[1], -1) != 0
    out_index = np.flatnonzero(nz.any(axis=(1, 2)))
    in_index = np.flatnonzero(nz.any(axis=(0, 2)))
    small = np.ascontiguousarray(w[out_index][:, in_index], dtype=np.float32)
    small.setflags(write=False)
    return CompactWeight(small, out_index, in_index, tuple(w.shape))


def _check_dense_x(x: object, k: int) -> np.ndarray:
    if not isinstance(x, np.ndarray):
        raise TypeError(f"X must be a numpy.ndarray, got {type(x).__name__}")
    if x.dtype != np.float32:
        raise TypeError(f"X must have dtype float32, got {x.dtype}")
    if x.ndim != 2 or x.shape[0] != k:
        raise ValueError(f"shape mismatch: X must be [{k}, N], got {x.shape}")
    return x


def _compact_matmul(W: CompactWeight, xs: np.ndarray, threads: int) -> np.ndarray:
    """The kept rows of W (flattened) times xs[K', N]: skinny_gemm or numpy.matmul."""
    if W.skinny is not None and use_skinny(W.weight.shape[0], xs.shape[1]):
        return skinny_gemm(W.skinny, xs, threads=threads)
    return np.matmul(W.weight.reshape(W.weight.shape[0], -1), xs)


def dense_gemm(W: np.ndarray | CompactWeight, X: np.ndarray, expand: bool = True,
               return_macs: bool = False, threads: int = 1):
    """Y = W @ X (float32).

    W: a dense float32 [M, K] matrix (numpy.matmul), or a 2-D CompactWeight; then only the kept
    rows of X are read and only the kept output rows computed, on skinny_gemm with ``threads``
    OpenMP threads when ``use_skinny`` says so, else numpy.matmul. ``expand=True`` scatters them
    into a zero [M, N] result; ``expand=False`` returns just the kept rows (what a physically
    smaller layer hands on). With ``return_macs`` returns (Y, macs executed)."""
    threads = _check_threads(threads)
    if isinstance(W, CompactWeight):
        if len(W.full_shape) != 2:
            raise ValueError("dense_gemm takes a 2-D CompactWeight; use conv2d_dense for 4-D")
        X = _check_dense_x(X, W.full_shape[1])
        xs = X if W.in_index.size == X.shape[0] else X[W.in_index]
        ys = _compact_matmul(W, xs, threads)
        macs = W.macs(X.shape[1])
        if expand:
            y = np.zeros((W.full_shape[0], X.shape[1]), dtype=np.float32)
            y[W.out_index] = ys
            ys = y
        return (ys, macs) if return_macs else ys
    if not isinstance(W, np.ndarray) or W.dtype != np.float32 or W.ndim != 2:
        raise TypeError("W must be a float32 2-D numpy.ndarray or a CompactWeight")
    X = _check_dense_x(X, W.shape[1])
    y = np.matmul(W, X)
    return (y, int(W.size) * X.shape[1]) if return_macs else y


def conv2d_dense(x: np.ndarray, w: np.ndarray | CompactWeight, bias: np.ndarray | None = None,
                 stride: int | tuple[int, int] = 1, pad: int | tuple[int, int] = 0,
                 dilation: int | tuple[int, int] = 1, expand: bool = True,
                 return_macs: bool = False, threads: int = 1):
    """groups=1 convolution as im2col + a GEMM; with a CompactWeight only the kept input
    channels are unfolded and only the kept output channels computed, on skinny_gemm or
    numpy.matmul as in dense_gemm (``expand`` as there too: zeros — plus bias — in the dropped
    output channels, or just the kept ones). A plain weight runs on numpy.matmul."""
    threads = _check_threads(threads)
    x = _check_x(x)
    st, pd, dl, _ = _check_conv_args(stride, pad, dilation, 1)
    if isinstance(w, CompactWeight):
        if len(w.full_shape) != 4:
            raise ValueError("conv2d_dense needs a CompactWeight of a 4-D [M, C, R, S] weight")
        m, c = w.full_shape[:2]
        weight, out_index, in_index = w.weight, w.out_index, w.in_index
    else:
        if not isinstance(w, np.ndarray) or w.ndim != 4 or w.dtype != np.float32:
            raise TypeError("w must be a float32 [M, C, R, S] numpy.ndarray or a CompactWeight")
        m, c = w.shape[:2]
        weight, out_index, in_index = w, np.arange(m), np.arange(c)
    if x.shape[1] != c:
        raise ValueError(f"shape mismatch: x has {x.shape[1]} channels, the weight expects {c}")
    b = _check_bias(bias, m)
    n, _, h, wd = x.shape
    ks = weight.shape[2:]
    p, q = conv_output_size(h, wd, ks, st, pd, dl)
    if p < 1 or q < 1:
        raise ValueError(f"the kernel {ks} does not fit the padded input {h}x{wd}")
    xs = x if in_index.size == c else x[:, in_index]
    cols = im2col(xs, ks, st, pd, dl)
    if isinstance(w, CompactWeight):
        ys = _compact_matmul(w, cols, threads)
    else:
        ys = np.matmul(weight.reshape(weight.shape[0], -1), cols)
    ys = ys.reshape(-1, n, p, q).transpose(1, 0, 2, 3)
    macs = int(weight.size) * n * p * q
    if expand:
        y = np.zeros((n, m, p, q), dtype=np.float32)
        y[:, out_index] = ys
        if b is not None:
            y += b[None, :, None, None]
    else:
        y = np.ascontiguousarray(ys)
        if b is not None:
            y += b[out_index][None, :, None, None]
    return (y, macs) if return_macs else y
