"""Plain NumPy references for the sparse kernels, computed in float64 (slow, obviously correct).

The kernels are tested against these; nothing here is used on a fast path.
"""
from __future__ import annotations

import numpy as np


def _pair(v: int | tuple[int, int], name: str) -> tuple[int, int]:
    if isinstance(v, int | np.integer) and not isinstance(v, bool):
        return int(v), int(v)
    if isinstance(v, tuple | list) and len(v) == 2:
        return int(v[0]), int(v[1])
    raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}")


def spmm_reference(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """W[M, K] @ X[K, N] in float64, from the dense form of W."""
    return np.asarray(w, dtype=np.float64) @ np.asarray(x, dtype=np.float64)


def conv_output_size(h: int, w: int, kernel_size: tuple[int, int], stride: tuple[int, int],
                     pad: tuple[int, int], dilation: tuple[int, int]) -> tuple[int, int]:
    """Output height and width of a convolution (the PyTorch / ONNX formula)."""
    (r, s), (sh, sw), (ph, pw), (dh, dw) = kernel_size, stride, pad, dilation
    return (h + 2 * ph - dh * (r - 1) - 1) // sh + 1, (w + 2 * pw - dw * (s - 1) - 1) // sw + 1


def im2col(x: np.ndarray, kernel_size: int | tuple[int, int], stride: int | tuple[int, int] = 1,
           pad: int | tuple[int, int] = 0, dilation: int | tuple[int, int] = 1) -> np.ndarray:
    """cols[C*R*S, N*P*Q] of x[N, C, H, W]: row (c, r, s), column (n, p, q), both in C order;
    zero where the receptive field falls in the padding. Same dtype as x."""
    ks, st, pd, dl = (_pair(v, n) for v, n in ((kernel_size, "kernel_size"), (stride, "stride"),
                                              (pad, "pad"), (dilation, "dilation")))
    n, c, h, w = x.shape
    p, q = conv_output_size(h, w, ks, st, pd, dl)
    xp = np.zeros((n, c, h + 2 * pd[0], w + 2 * pd[1]), dtype=x.dtype)
    xp[:, :, pd[0]:pd[0] + h, pd[1]:pd[1] + w] = x
    cols = np.empty((c, ks[0], ks[1], n, p, q), dtype=x.dtype)
    for r in range(ks[0]):
        for s in range(ks[1]):
            h0, w0 = r * dl[0], s * dl[1]
            patch = xp[:, :, h0:h0 + st[0] * (p - 1) + 1:st[0], w0:w0 + st[1] * (q - 1) + 1:st[1]]
            cols[:, r, s] = patch.transpose(1, 0, 2, 3)
    return cols.reshape(c * ks[0] * ks[1], n * p * q)


def conv2d_reference(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None = None,
                     stride: int | tuple[int, int] = 1, pad: int | tuple[int, int] = 0,
                     dilation: int | tuple[int, int] = 1, groups: int = 1) -> np.ndarray:
    """Direct convolution of x[N, C, H, W] with w[M, C/groups, R, S] in float64 -> [N, M, P, Q].

    A sum over kernel offsets of strided slices — independent of im2col, so it checks it too."""
    st, pd, dl = _pair(stride, "stride"), _pair(pad, "pad"), _pair(dilation, "dilation")
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    n, c, h, wd = x.shape
    m, cg, r_, s_ = w.shape
    p, q = conv_output_size(h, wd, (r_, s_), st, pd, dl)
    xp = np.zeros((n, c, h + 2 * pd[0], wd + 2 * pd[1]))
    xp[:, :, pd[0]:pd[0] + h, pd[1]:pd[1] + wd] = x
    out = np.zeros((n, m, p, q))
    mg = m // groups
    for g in range(groups):
        xs = xp[:, g * cg:(g + 1) * cg]
        ws = w[g * mg:(g + 1) * mg]
        for r in range(r_):
            for s in range(s_):
                h0, w0 = r * dl[0], s * dl[1]
                patch = xs[:, :, h0:h0 + st[0] * (p - 1) + 1:st[0], w0:w0 + st[1] * (q - 1) + 1:st[1]]
                out[:, g * mg:(g + 1) * mg] += np.einsum("mc,ncpq->nmpq", ws[:, :, r, s], patch)
    if bias is not None:
        out += np.asarray(bias, dtype=np.float64)[None, :, None, None]
    return out
