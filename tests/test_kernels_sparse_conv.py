"""Sparse im2col convolution and the channel-pruned dense path, against NumPy and torch."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels import (BSRMatrix, CSRMatrix, CompactWeight, compact_channels, conv2d_dense,
                     conv2d_sparse, dense_gemm)
from kernels.reference import conv2d_reference, im2col

RNG = np.random.default_rng(7)


def sparse_weight(shape, density, rng=RNG):
    w = rng.standard_normal(shape).astype(np.float32)
    w[rng.random(shape) >= density] = 0.0
    return w


def assert_close(y, ref):
    assert y.dtype == np.float32 and y.shape == ref.shape
    scale = max(1.0, float(np.abs(ref).max()))
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-5 * scale)


def test_im2col_by_hand():
    x = np.arange(9, dtype=np.float32).reshape(1, 1, 3, 3)
    cols = im2col(x, 2)
    # rows (r, s) = (0,0),(0,1),(1,0),(1,1); columns = output pixels (0,0),(0,1),(1,0),(1,1)
    np.testing.assert_array_equal(cols, [[0, 1, 3, 4], [1, 2, 4, 5], [3, 4, 6, 7], [4, 5, 7, 8]])
    padded = im2col(x, 3, pad=1)
    assert padded.shape == (9, 9)
    np.testing.assert_array_equal(padded[4], x.ravel())       # centre tap = the image
    np.testing.assert_array_equal(padded[0, :4], [0, 0, 0, 0])  # top-left tap starts in padding


def test_reference_matches_im2col_product():
    x = RNG.standard_normal((2, 3, 7, 6)).astype(np.float32)
    w = RNG.standard_normal((4, 3, 3, 2)).astype(np.float32)
    ref = conv2d_reference(x, w, stride=(2, 1), pad=(1, 0), dilation=(1, 2))
    cols = im2col(x.astype(np.float64), (3, 2), (2, 1), (1, 0), (1, 2))
    via = (w.reshape(4, -1).astype(np.float64) @ cols).reshape(4, 2, *ref.shape[2:]).transpose(1, 0, 2, 3)
    np.testing.assert_allclose(via, ref, rtol=1e-12, atol=1e-12)


CASES = [
    # n, c, h, w, m, (r, s), stride, pad, dilation, groups
    (1, 3, 8, 8, 5, (3, 3), 1, 1, 1, 1),
    (2, 6, 9, 11, 8, (3, 2), (2, 1), (1, 2), (1, 2), 2),
    (3, 4, 5, 7, 12, (1, 1), 1, 0, 1, 1),          # 1x1 conv, N*P*Q = 105: remainder panel
    (1, 8, 12, 12, 8, (3, 3), 2, 1, 1, 4),
    (2, 5, 6, 6, 7, (5, 5), 1, 2, 1, 1),           # M not divisible by the block height
    (1, 2, 15, 15, 4, (3, 3), 3, 0, 2, 1),
    (1, 4, 10, 10, 4, (3, 3), 1, 1, 1, 4),         # depthwise
    (2, 3, 4, 4, 5, (3, 3), 1, 3, 1, 1),           # padding wider than the kernel's reach
    (1, 3, 5, 3, 4, (3, 3), 1, 0, 1, 1),           # a single output column (Q = 1)
    (2, 2, 9, 13, 6, (2, 3), (1, 2), (0, 4), (2, 3), 1),  # stride_w 2 with dilation 3
    (1, 16, 1, 1, 9, (1, 1), 1, 0, 1, 1),          # 1x1 image
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("fmt", ["csr", "bsr4x1", "bsr4x4"])
def test_conv2d_sparse_matches_references(case, fmt):
    torch = pytest.importorskip("torch")
    n, c, h, wd, m, ks, stride, pad, dil, groups = case
    rng = np.random.default_rng(CASES.index(case) * 3 + ["csr", "bsr4x1", "bsr4x4"].index(fmt))
    x = rng.standard_normal((n, c, h, wd)).astype(np.float32)
    w = sparse_weight((m, c // groups, *ks), 0.3, rng)
    w[0] = 0.0  # an empty first row of W (a pruned output channel)
    b = rng.standard_normal(m).astype(np.float32)
    flat = w.reshape(m, -1)
    mg = m // groups
    if fmt == "csr":
        W = CSRMatrix.from_dense(flat)
    else:
        block = (4, 1) if fmt == "bsr4x1" else (4, 4)
        W = BSRMatrix.from_dense(flat, block=block)
        if groups > 1 and mg % 4:  # a block would straddle two groups
            with pytest.raises(ValueError, match="aligned"):
                conv2d_sparse(x, W, b, stride, pad, dil, groups, kernel_size=ks)
            return
    y, macs = conv2d_sparse(x, W, b, stride, pad, dil, groups, threads=2, kernel_size=ks,
                            return_macs=True)
    ref = conv2d_reference(x, w, b, stride, pad, dil, groups)
    assert_close(y, ref)
    tref = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b),
                                      stride=stride, padding=pad, dilation=dil, groups=groups)
    assert_close(y, tref.numpy().astype(np.float64))
    assert macs == W.macs(n * ref.shape[2] * ref.shape[3])


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 3), c=st.integers(1, 5), h=st.integers(1, 12), wd=st.integers(1, 12),
       m=st.integers(1, 9), r=st.integers(1, 4), s=st.integers(1, 4), sh=st.integers(1, 3),
       sw=st.integers(1, 3), ph=st.integers(0, 3), pw=st.integers(0, 3), dh=st.integers(1, 3),
       dw=st.integers(1, 3), fmt=st.sampled_from(["csr", "bsr4x1", "bsr4x4"]),
       seed=st.integers(0, 2**31))
def test_conv2d_sparse_random_geometry(n, c, h, wd, m, r, s, sh, sw, ph, pw, dh, dw, fmt, seed):
    if h + 2 * ph < dh * (r - 1) + 1 or wd + 2 * pw < dw * (s - 1) + 1:
        return  # the kernel does not fit: rejected input, tested elsewhere
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, wd)).astype(np.float32)
    w = sparse_weight((m, c, r, s), 0.5, rng)
    flat = w.reshape(m, -1)
    W = CSRMatrix.from_dense(flat) if fmt == "csr" else \
        BSRMatrix.from_dense(flat, (4, 1) if fmt == "bsr4x1" else (4, 4))
    y = conv2d_sparse(x, W, None, (sh, sw), (ph, pw), (dh, dw), kernel_size=(r, s), threads=2)
    assert_close(y, conv2d_reference(x, w, None, (sh, sw), (ph, pw), (dh, dw)))


def test_conv2d_sparse_non_contiguous_input_and_square_inference():
    x_full = RNG.standard_normal((2, 8, 10, 12)).astype(np.float32)
    x = x_full[:, ::2, :, 1:11]                       # strided channels and columns
    w = sparse_weight((6, 4, 3, 3), 0.4)
    y = conv2d_sparse(x, CSRMatrix.from_dense(w.reshape(6, -1)), pad=1)  # kernel size inferred
    assert_close(y, conv2d_reference(x, w, pad=1))
    xf = x_full[:, 1::2, ::-1, ::-1]                  # negative strides
    assert_close(conv2d_sparse(xf, CSRMatrix.from_dense(w.reshape(6, -1)), stride=2, pad=1),
                 conv2d_reference(xf, w, stride=2, pad=1))
    xt = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)  # NHWC memory
    assert_close(conv2d_sparse(xt, BSRMatrix.from_dense(w.reshape(6, -1), (4, 4)), pad=1),
                 conv2d_reference(x, w, pad=1))


def test_conv2d_sparse_all_zero_weight_gives_bias():
    x = RNG.standard_normal((1, 3, 5, 5)).astype(np.float32)
    b = np.array([1.0, -2.0], np.float32)
    y = conv2d_sparse(x, CSRMatrix.from_dense(np.zeros((2, 27), np.float32)), b, pad=1)
    np.testing.assert_array_equal(y, np.broadcast_to(b[None, :, None, None], (1, 2, 5, 5)))


def test_conv2d_sparse_rejects_bad_arguments():
    x = np.ones((1, 4, 6, 6), np.float32)
    W = CSRMatrix.from_dense(sparse_weight((4, 36), 0.5))
    with pytest.raises(TypeError, match="float32"):
        conv2d_sparse(x.astype(np.float64), W)
    with pytest.raises(ValueError, match="4-D"):
        conv2d_sparse(x[0], W)
    with pytest.raises(TypeError, match="CSRMatrix or BSRMatrix"):
        conv2d_sparse(x, np.ones((4, 4, 3, 3), np.float32))
    with pytest.raises(ValueError, match="shape mismatch"):
        conv2d_sparse(x, W, kernel_size=(2, 2))
    with pytest.raises(ValueError, match="infer"):
        conv2d_sparse(x, CSRMatrix.from_dense(np.ones((4, 20), np.float32)))
    with pytest.raises(ValueError, match="groups"):
        conv2d_sparse(x, W, groups=3)
    with pytest.raises(ValueError, match="does not fit"):
        conv2d_sparse(np.ones((1, 4, 2, 2), np.float32), W)
    with pytest.raises(ValueError, match="stride"):
        conv2d_sparse(x, W, stride=0)
    with pytest.raises(ValueError, match="bias"):
        conv2d_sparse(x, W, bias=np.ones(3, np.float32))
    with pytest.raises(ValueError, match="aligned"):  # BSR block straddling groups
        conv2d_sparse(np.ones((1, 6, 6, 6), np.float32),
                      BSRMatrix.from_dense(np.ones((6, 18), np.float32), (4, 1)), groups=3)


# ---------------------------------------------------------------- channel-pruned dense path


def test_compact_channels_drops_zero_channels():
    w = RNG.standard_normal((6, 5, 3, 3)).astype(np.float32)
    w[[1, 4]] = 0.0        # output channels 1 and 4 pruned
    w[:, 2] = 0.0          # input channel 2 read by no filter
    cw = compact_channels(w)
    np.testing.assert_array_equal(cw.out_index, [0, 2, 3, 5])
    np.testing.assert_array_equal(cw.in_index, [0, 1, 3, 4])
    assert cw.weight.shape == (4, 4, 3, 3) and cw.full_shape == (6, 5, 3, 3)
    np.testing.assert_array_equal(cw.weight, w[[0, 2, 3, 5]][:, [0, 1, 3, 4]])


def test_dense_gemm_compact_equals_full():
    w = RNG.standard_normal((10, 12)).astype(np.float32)
    w[[0, 3, 9]] = 0.0
    w[:, [5, 6]] = 0.0
    x = RNG.standard_normal((12, 70)).astype(np.float32)
    cw = compact_channels(w)
    y, macs = dense_gemm(cw, x, return_macs=True)
    assert_close(y, w.astype(np.float64) @ x)
    assert macs == 7 * 10 * 70
    kept = dense_gemm(cw, x, expand=False)
    assert_close(kept, (w.astype(np.float64) @ x)[cw.out_index])
    assert_close(dense_gemm(w, x), w.astype(np.float64) @ x)
    with pytest.raises(ValueError, match="shape mismatch"):
        dense_gemm(cw, x[:11])
    with pytest.raises(TypeError, match="float32"):
        dense_gemm(cw, x.astype(np.float64))


def test_conv2d_dense_compact_equals_reference():
    x = RNG.standard_normal((2, 5, 9, 9)).astype(np.float32)
    w = RNG.standard_normal((6, 5, 3, 3)).astype(np.float32)
    w[[2, 5]] = 0.0
    w[:, 0] = 0.0
    b = RNG.standard_normal(6).astype(np.float32)
    ref = conv2d_reference(x, w, b, stride=2, pad=1)
    cw = compact_channels(w)
    y, macs = conv2d_dense(x, cw, b, stride=2, pad=1, return_macs=True)
    assert_close(y, ref)
    assert macs == 4 * 4 * 9 * (2 * 5 * 5)
    assert_close(conv2d_dense(x, cw, b, stride=2, pad=1, expand=False), ref[:, cw.out_index])
    assert_close(conv2d_dense(x, w, b, stride=2, pad=1), ref)
    assert isinstance(cw, CompactWeight)
    with pytest.raises(ValueError, match="channels"):
        conv2d_dense(x[:, :4], cw)
