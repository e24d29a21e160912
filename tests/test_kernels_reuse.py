"""Adaptive deep reuse (kernels/_reuse.pyx, kernels/reuse.py) against NumPy references."""
from __future__ import annotations

import numpy as np
import pytest

from kernels._reuse import HASH_BF16, reuse_matmul_kernel
from kernels.reuse import (ReuseSchedule, conv_thresholds, conv_weight_rows, im2col, projections,
                           reuse_conv2d, reuse_matmul)


def ref_reuse(X, W, proj, sub_len, block_rows):
    """Straight NumPy version of the algorithm: (Y, clusters, zero_rows, min |projection|)."""
    N, K = X.shape
    Y = np.zeros((N, W.shape[1]))
    n_blocks, n_pos = -(-N // block_rows), -(-K // sub_len)
    clusters = np.zeros((n_blocks, n_pos), np.int64)
    zeros = np.zeros((n_blocks, n_pos), np.int64)
    margin = np.inf
    for b in range(n_blocks):
        r = slice(b * block_rows, min((b + 1) * block_rows, N))
        for p in range(n_pos):
            c = slice(p * sub_len, min((p + 1) * sub_len, K))
            xs = X[r, c].astype(np.float64)
            nz = xs.any(axis=1)
            proj_v = xs @ proj[c].astype(np.float64)
            if nz.any():
                margin = min(margin, np.abs(proj_v[nz]).min())
            groups: dict[bytes, list[int]] = {}
            for i in np.flatnonzero(nz):
                groups.setdefault((proj_v[i] > 0).tobytes(), []).append(i)
            for rows in groups.values():
                Y[r][rows] += xs[rows].mean(axis=0) @ W[c].astype(np.float64)
            clusters[b, p] = len(groups)
            zeros[b, p] = (~nz).sum()
    return Y, clusters, zeros, margin


@pytest.mark.parametrize("N,K,M,sub_len,H,block", [
    (300, 37, 5, 8, 3, 64),     # K not a multiple of sub_len, several blocks, last one short
    (50, 16, 33, 16, 6, 4096),  # one sub-vector per row, one block
    (1, 1, 1, 1, 1, 1),         # one row, one column
    (97, 20, 7, 3, 10, 13),
    (120, 12, 20, 6, 24, 50),   # 17..32 hashes: the two-vector path
    (61, 10, 4, 5, 36, 64),     # more than 32 hashes: the generic path
])
def test_kernel_matches_reference(N, K, M, sub_len, H, block):
    rng = np.random.default_rng(N + K)
    # few distinct values so that clusters hold several rows
    X = rng.integers(-2, 3, (N, K)).astype(np.float32)
    X[rng.random(X.shape) < 0.3] = 0
    W = rng.standard_normal((K, M)).astype(np.float32)
    proj = projections(K, H, seed=1)
    Y, clusters, zeros = reuse_matmul_kernel(X, W, proj, sub_len, block)
    Y_ref, c_ref, z_ref, margin = ref_reuse(X, W, proj, sub_len, block)
    assert margin > 1e-4                      # no code can flip between float32 and float64
    np.testing.assert_array_equal(clusters, c_ref)
    np.testing.assert_array_equal(zeros, z_ref)
    np.testing.assert_allclose(Y, Y_ref, rtol=1e-4, atol=1e-4)


def test_weight_at_any_alignment_gives_the_same_result():
    # the kernel copies a weight that is not on a 64-byte boundary (its rows are loaded as
    # whole vectors); the copy must not change a value, and Y comes out aligned
    rng = np.random.default_rng(5)
    X = rng.integers(-2, 3, (90, 24)).astype(np.float32)
    W = rng.standard_normal((24, 32)).astype(np.float32)
    proj = projections(24, 12, seed=2)
    Y0, c0, _ = reuse_matmul_kernel(X, W, proj, 8, 32)
    buf = np.empty(W.size + 16, np.float32)
    for shift in range(4):
        Ws = buf[shift:shift + W.size].reshape(W.shape)
        Ws[:] = W
        Y, c, _ = reuse_matmul_kernel(X, Ws, proj, 8, 32)
        np.testing.assert_array_equal(Y, Y0)
        np.testing.assert_array_equal(c, c0)
        assert Y.ctypes.data % 64 == 0


def test_stats_follow_the_cost_model():
    rng = np.random.default_rng(3)
    X = rng.integers(0, 2, (200, 24)).astype(np.float32)   # many repeats, some zero sub-vectors
    W = rng.standard_normal((24, 10)).astype(np.float32)
    Y, st = reuse_matmul(X, W, sub_len=5, n_hashes=4, seed=2, block_rows=64)
    _, clusters, zeros, _ = ref_reuse(X, W, projections(24, 4, 2), 5, 64)
    lens = np.array([5, 5, 5, 5, 4])
    assert st.macs_hash == 200 * 24 * 4 and st.macs_dense == 200 * 24 * 10
    assert st.macs_product == int((clusters * lens).sum()) * 10
    assert st.macs_executed == st.macs_hash + st.macs_product
    assert st.cluster_ratio == pytest.approx((clusters + (zeros > 0)).sum() / (200 * 5))
    assert st.zero_fraction == pytest.approx(zeros.sum() / (200 * 5))
    exact = X @ W
    assert st.relative_error == pytest.approx(np.linalg.norm(Y - exact) / np.linalg.norm(exact), rel=1e-5)
    assert st.mac_ratio == pytest.approx(st.macs_dense / st.macs_executed)
    assert reuse_matmul(X, W, 5, 4, compute_error=False)[1].relative_error is None


def test_duplicate_rows_are_exact_and_fine_hashing_converges():
    rng = np.random.default_rng(4)
    W = rng.standard_normal((48, 16)).astype(np.float32)
    X = np.repeat(rng.standard_normal((10, 48)).astype(np.float32), 30, axis=0)
    rng.shuffle(X)
    X = np.asfortranarray(X)                  # non-contiguous input
    Y, st = reuse_matmul(X, W, sub_len=12, n_hashes=32)
    assert st.relative_error < 1e-5
    assert st.cluster_ratio == pytest.approx(10 / 300)
    # random rows: more hashes -> less reuse, less error
    Xr = rng.standard_normal((2000, 48)).astype(np.float32)
    coarse = reuse_matmul(Xr, W, 12, 2)[1]
    fine = reuse_matmul(Xr, W, 12, 24)[1]
    assert coarse.cluster_ratio < fine.cluster_ratio
    assert fine.relative_error < coarse.relative_error
    exact = reuse_matmul(Xr, W, 12, 64)[1]
    assert exact.cluster_ratio > 0.99 and exact.relative_error < 1e-4


def test_all_zero_input_and_empty_batch():
    W = np.ones((12, 3), np.float32)
    Y, st = reuse_matmul(np.zeros((40, 12), np.float32), W, 4, 5)
    assert not Y.any() and st.macs_product == 0 and st.zero_fraction == 1.0
    assert st.cluster_ratio == pytest.approx(1 / 40)
    assert st.relative_error == 0.0
    Y, st = reuse_matmul(np.zeros((0, 12), np.float32), W, 4, 5)
    assert Y.shape == (0, 3) and st.macs_executed == 0


def _naive_conv(x, w, b, stride, pad):
    N, C, H, Wd = x.shape
    M, _, R, S = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    P, Q = (H + 2 * pad - R) // stride + 1, (Wd + 2 * pad - S) // stride + 1
    y = np.zeros((N, M, P, Q))
    for p in range(P):
        for q in range(Q):
            patch = xp[:, :, p * stride:p * stride + R, q * stride:q * stride + S]
            y[:, :, p, q] = np.einsum("ncrs,mcrs->nm", patch, w)
    return y + b[None, :, None, None]


@pytest.mark.parametrize("stride,pad", [(1, 1), (2, 0), (2, 1)])
def test_conv_helper_matches_naive_conv(stride, pad):
    rng = np.random.default_rng(stride * 10 + pad)
    x = rng.standard_normal((2, 3, 7, 6)).astype(np.float32)
    w = rng.standard_normal((5, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(5).astype(np.float32)
    cols, P, Q = im2col(x, 3, 3, stride, pad)
    ref = _naive_conv(x, w, b, stride, pad)
    assert cols.shape == (2 * P * Q, 27) and ref.shape[2:] == (P, Q)
    dense = (cols @ w.reshape(5, -1).T + b).reshape(2, P, Q, 5).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(dense, ref, rtol=1e-4, atol=1e-4)
    # 64 sign bits on 9-long random sub-vectors (one channel's 3x3 patch): every nonzero
    # one is its own cluster. (Sign hashes see direction only: shorter sub-vectors that are
    # positive multiples of each other, as padding makes them, would share a cluster.)
    y, st = reuse_conv2d(x, w, b, stride=stride, pad=pad, sub_len=9, n_hashes=64, share="im2col")
    np.testing.assert_allclose(y, ref, rtol=1e-3, atol=1e-3)
    y2, st2 = reuse_conv2d(x, w, b, stride=stride, pad=pad, sub_len=27, n_hashes=2, share="im2col")
    assert st2.cluster_ratio < st.cluster_ratio and st2.relative_error > st.relative_error


def bf16(a):
    """float32 a rounded to bfloat16 (nearest even), as float64."""
    u = np.ascontiguousarray(a, np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
    return u.astype(np.uint32).view(np.float32).astype(np.float64)


def test_bf16_rounding_helper():
    x = np.array([1.0, 1 + 2**-8, 1 + 3 * 2**-8, 1 + 2**-9, -2.5, 0.0], np.float32)
    np.testing.assert_array_equal(bf16(x), [1.0, 1.0, 1 + 2**-6, 1.0, -2.5, 0.0])


def ref_pixel_reuse(x, w, proj, sub_len, block_imgs, stride, pad, clusters=None):
    """Reuse shared across kernel offsets = an exact conv of x with every pixel's channel
    chunk replaced by the mean of its cluster (clusters per block of images and chunk).
    clusters: a list that gets each (block, chunk)'s nonzero cluster sizes. The hash codes
    use bfloat16 values where the kernel hashes in bfloat16 (HASH_BF16)."""
    N, C, H, Wd = x.shape
    xh = x.astype(np.float64).transpose(0, 2, 3, 1).copy()          # NHWC
    hx = bf16(xh) if HASH_BF16 else xh
    hproj = bf16(proj) if HASH_BF16 else proj.astype(np.float64)
    for i0 in range(0, N, block_imgs):
        for c0 in range(0, C, sub_len):
            c = slice(c0, min(c0 + sub_len, C))
            px = xh[i0:i0 + block_imgs, :, :, c].reshape(-1, c.stop - c.start)
            nz = px.any(axis=1)
            keys = (hx[i0:i0 + block_imgs, :, :, c].reshape(px.shape) @ hproj[c] > 0)
            groups: dict[bytes, list[int]] = {}
            for i in np.flatnonzero(nz):
                groups.setdefault(keys[i].tobytes(), []).append(i)
            for rows in groups.values():
                px[rows] = px[rows].mean(axis=0)
            if clusters is not None:
                clusters.append(sorted(len(r) for r in groups.values()))
            xh[i0:i0 + block_imgs, :, :, c] = px.reshape(xh[i0:i0 + block_imgs, :, :, c].shape)
    return _naive_conv(xh.transpose(0, 3, 1, 2), w.astype(np.float64), np.zeros(len(w)), stride, pad)


@pytest.mark.parametrize("C,sub_len,H,stride,pad,block_rows,metric", [
    (6, 4, 5, 1, 1, 100, "input"), (16, 16, 8, 2, 0, 4096, "input"), (3, 1, 2, 1, 2, 30, "input"),
    (8, 8, 20, 1, 1, 60, "input"),
    (16, 16, 40, 1, 1, 90, "input"),    # 33..48 hashes: three vectors per code
    (32, 16, 60, 2, 1, 60, "input"),    # 49..64 hashes, two chunks
    (40, 40, 20, 1, 1, 60, "input"),    # chunks longer than 32 values (two bfloat16 groups)
    (16, 8, 12, 1, 1, 4096, "output"), (6, 4, 36, 1, 0, 60, "output")])
def test_pixel_shared_conv_matches_reference(C, sub_len, H, stride, pad, block_rows, metric):
    rng = np.random.default_rng(C + H)
    x = rng.integers(0, 3, (5, C, 6, 5)).astype(np.float32)       # repeats and zero chunks
    w = rng.standard_normal((7, C, 3, 3)).astype(np.float32)
    y, st = reuse_conv2d(x, w, None, stride=stride, pad=pad, sub_len=sub_len, n_hashes=H,
                         seed=4, block_rows=block_rows, metric=metric)
    block_imgs = max(1, block_rows // 30)
    rows = conv_weight_rows(w) if metric == "output" else None
    ref = ref_pixel_reuse(x, w, projections(C, H, 4, rows, sub_len), sub_len, block_imgs, stride,
                          pad)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)
    n_chunks = -(-C // sub_len)
    assert st.macs_hash == 5 * 30 * C * H
    assert st.macs_dense == y.shape[0] * y.shape[2] * y.shape[3] * C * 9 * 7
    assert 0 < st.cluster_ratio <= 1 and 0 <= st.zero_fraction <= 1
    assert st.macs_product <= 5 * 30 * n_chunks * sub_len * 9 * 7


@pytest.mark.parametrize("stride,pad", [(1, 1), (2, 1), (1, 0)])
def test_singleton_and_shared_clusters_together(stride, pad):
    """Singleton clusters' products are formed per image, shared ones in the block's table:
    a mix of both (and all-zero pixels) against the reference, cluster sizes included."""
    rng = np.random.default_rng(30 + stride + pad)
    x = rng.standard_normal((6, 16, 5, 7)).astype(np.float32)        # all distinct ...
    common = rng.standard_normal((3, 16)).astype(np.float32)
    pick = rng.random((6, 5, 7)) < 0.5                                 # ... but half repeat
    x.transpose(0, 2, 3, 1)[pick] = common[rng.integers(0, 3, pick.sum())]
    x[:, :, 0, 0] = 0                                                  # zero pixels
    w = rng.standard_normal((20, 16, 3, 3)).astype(np.float32)
    b = rng.standard_normal(20).astype(np.float32)
    y, st = reuse_conv2d(x, w, b, stride=stride, pad=pad, sub_len=16, n_hashes=48, seed=1,
                         block_rows=70)                                # blocks of 2 images
    sizes = []
    ref = ref_pixel_reuse(x, w, projections(16, 48, 1), 16, 2, stride, pad, sizes)
    np.testing.assert_allclose(y, ref + b[None, :, None, None], rtol=1e-4, atol=1e-4)
    flat = [n for s in sizes for n in s]
    assert 1 in flat and max(flat) > 10
    assert st.relative_error < 1e-5 and st.zero_fraction == pytest.approx(1 / 35)
    assert st.cluster_ratio == pytest.approx((len(flat) + len(sizes)) / (6 * 35))


def test_large_output_is_exact_with_fine_hashes():
    """An output over 4 MB with 32 channels is streamed past the caches: same values."""
    rng = np.random.default_rng(40)
    x = rng.standard_normal((130, 16, 16, 16)).astype(np.float32)
    w = rng.standard_normal((32, 16, 3, 3)).astype(np.float32)
    b = rng.standard_normal(32).astype(np.float32)
    y, st = reuse_conv2d(x, w, b, pad=1, sub_len=16, n_hashes=64, block_rows=8192)
    assert y.nbytes > 4 << 20 and st.cluster_ratio == 1.0
    cols, P, Q = im2col(x, 3, 3, 1, 1)
    ref = (cols @ w.reshape(32, -1).T + b).reshape(130, P, Q, 32).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)


def test_pixel_shared_conv_is_exact_with_fine_hashes():
    rng = np.random.default_rng(11)
    x = rng.standard_normal((3, 8, 7, 7)).astype(np.float32)         # no two pixels alike
    w = rng.standard_normal((5, 8, 3, 3)).astype(np.float32)
    b = rng.standard_normal(5).astype(np.float32)
    y, st = reuse_conv2d(x, w, b, stride=1, pad=1, sub_len=8, n_hashes=64)
    np.testing.assert_allclose(y, _naive_conv(x, w, b, 1, 1), rtol=1e-3, atol=1e-3)
    assert st.cluster_ratio == 1.0 and st.relative_error < 1e-5
    # shared hashing costs R*S times less than hashing every im2col row
    st_im = reuse_conv2d(x, w, b, stride=1, pad=1, sub_len=8, n_hashes=64, share="im2col")[1]
    assert st_im.macs_hash == 9 * st.macs_hash


def test_output_metric_ignores_what_the_weight_does_not_see():
    """Channels with zero weight do not change the output: hashing in the output metric
    merges pixels that differ only there (exact result, few clusters); the input metric
    splits them by that noise."""
    rng = np.random.default_rng(21)
    seen = rng.integers(0, 2, (60, 4, 5, 5)).astype(np.float32)    # 16 patterns on 4 channels
    x = np.concatenate([seen, rng.standard_normal((60, 4, 5, 5)).astype(np.float32)], axis=1)
    w = rng.standard_normal((6, 8, 3, 3)).astype(np.float32)
    w[:, 4:] = 0                                                    # channels 4..7 unseen
    out = reuse_conv2d(x, w, sub_len=8, n_hashes=24, pad=1, block_rows=1 << 14, metric="output")[1]
    inp = reuse_conv2d(x, w, sub_len=8, n_hashes=24, pad=1, block_rows=1 << 14, metric="input")[1]
    assert out.relative_error < 1e-5 and out.cluster_ratio <= 16 / (60 * 25)
    assert inp.cluster_ratio > 0.5 and inp.relative_error > 0.05
    # the matmul: the same metric
    X = np.concatenate([rng.integers(0, 2, (500, 4)), rng.standard_normal((500, 4))], axis=1)
    W = rng.standard_normal((8, 5))
    W[4:] = 0
    X, W = X.astype(np.float32), W.astype(np.float32)
    mm = reuse_matmul(X, W, 8, 24, metric="output")[1]
    assert mm.relative_error < 1e-5 and mm.cluster_ratio <= 16 / 500
    assert reuse_matmul(X, W, 8, 24)[1].cluster_ratio > 0.5
    with pytest.raises(ValueError, match="metric"):
        reuse_conv2d(x, w, sub_len=8, metric="l2")
    with pytest.raises(ValueError, match="metric"):
        reuse_matmul(np.ones((3, 4), np.float32), np.ones((4, 2), np.float32), 2, 2, metric="")


def test_output_metric_projections_are_the_weight_times_gaussians():
    rng = np.random.default_rng(5)
    Wk = rng.standard_normal((10, 7))
    proj = projections(10, 6, 3, Wk, 4)
    g = np.random.default_rng(3)
    ref = np.concatenate([Wk[k0:k0 + 4] @ g.standard_normal((7, 6)) / np.sqrt(7) for k0 in (0, 4, 8)])
    np.testing.assert_allclose(proj, ref, rtol=1e-5, atol=1e-6)
    gauss = np.random.default_rng(3).standard_normal((10, 6)).astype(np.float32)
    np.testing.assert_array_equal(projections(10, 6, 3), gauss)
    with pytest.raises(ValueError, match="weight"):
        projections(10, 6, 3, Wk[:5], 4)
    with pytest.raises(ValueError, match="sub_len"):
        projections(10, 6, 3, Wk)
    x = rng.random((4, 10, 3, 3)).astype(np.float32)
    w = rng.standard_normal((5, 10, 3, 3)).astype(np.float32)
    with pytest.raises(ValueError, match="weight"):
        conv_thresholds(x, 4, 6, weight=w[:, :3])
    thr = conv_thresholds(x, 4, 6, seed=2, weight=w)
    assert thr.shape == (3, 6) and np.isfinite(thr).all()
    assert not np.allclose(thr, conv_thresholds(x, 4, 6, seed=2))


def test_nan_in_a_pixel_reaches_the_outputs_that_read_it():
    x = np.ones((2, 16, 4, 4), np.float32)
    x[1, 3, 2, 2] = np.nan
    w = np.ones((32, 16, 3, 3), np.float32)
    y = reuse_conv2d(x, w, sub_len=16, n_hashes=8, pad=1, compute_error=False)[0]
    reads = np.zeros((4, 4), bool)
    reads[1:4, 1:4] = True                  # the 3x3 outputs around pixel (2, 2)
    assert np.isnan(y[1][:, reads]).all() and np.isfinite(y[1][:, ~reads]).all()
    assert np.isfinite(y[0]).all()


def test_centred_thresholds_split_by_magnitude():
    """Sign hashing puts positive multiples of a vector in one cluster; centred thresholds
    separate them, and precomputed thresholds give the same result as centered=True."""
    base = np.abs(np.random.default_rng(12).standard_normal(8)).astype(np.float32)
    scales = np.linspace(0.1, 3.0, 40, dtype=np.float32)
    x = (scales[:, None] * base[None, :]).reshape(40, 8, 1, 1)          # 40 images, 1 pixel
    w = np.random.default_rng(13).standard_normal((3, 8, 1, 1)).astype(np.float32)
    plain = reuse_conv2d(x, w, sub_len=8, n_hashes=16)[1]
    cen = reuse_conv2d(x, w, sub_len=8, n_hashes=16, centered=True)
    assert plain.cluster_ratio == pytest.approx(1 / 40) and plain.relative_error > 0.3
    assert cen[1].cluster_ratio > 4 / 40 and cen[1].relative_error < plain.relative_error / 2
    thr = conv_thresholds(x, 8, 16)
    pre = reuse_conv2d(x, w, sub_len=8, n_hashes=16, thresholds=thr)
    np.testing.assert_array_equal(pre[0], cen[0])
    with pytest.raises(ValueError, match="thresholds"):
        reuse_conv2d(x, w, sub_len=8, n_hashes=16, thresholds=thr[:, :3])
    with pytest.raises(ValueError, match="share='pixel'"):
        reuse_conv2d(x, w, sub_len=8, n_hashes=16, thresholds=thr, share="im2col")


def test_bad_input_raises():
    X = np.ones((4, 6), np.float32)
    W = np.ones((6, 2), np.float32)
    with pytest.raises(TypeError, match="float32"):
        reuse_matmul(X.astype(np.float64), W, 2, 2)
    with pytest.raises(ValueError, match="6 rows"):
        reuse_matmul(X, np.ones((5, 2), np.float32), 2, 2)
    with pytest.raises(ValueError, match="n_hashes"):
        reuse_matmul(X, W, 2, 0)
    with pytest.raises(ValueError, match="n_hashes"):
        reuse_matmul(X, W, 2, 65)
    with pytest.raises(ValueError, match="sub_len"):
        reuse_matmul(X, W, 0, 2)
    with pytest.raises(ValueError, match="sub_len"):
        reuse_matmul(X, W, 7, 2)
    with pytest.raises(ValueError, match="block_rows"):
        reuse_matmul(X, W, 2, 2, block_rows=0)
    with pytest.raises(TypeError, match="integers"):
        reuse_matmul(X, W, 2.5, 2)
    bad = X.copy()
    bad[1, 1] = np.nan                        # no error: NaN propagates as in X @ W
    assert np.isnan(reuse_matmul(bad, W, 2, 2, compute_error=False)[0][1]).all()
    with pytest.raises(ValueError, match="2-D"):
        reuse_matmul(X[0], W, 2, 2)
    x = np.ones((1, 2, 4, 4), np.float32)
    with pytest.raises(ValueError, match="3 channels"):
        reuse_conv2d(x, np.ones((4, 3, 3, 3), np.float32))
    with pytest.raises(ValueError, match="bias"):
        reuse_conv2d(x, np.ones((4, 2, 3, 3), np.float32), np.ones(3, np.float32), sub_len=3)
    with pytest.raises(ValueError, match="does not fit"):
        im2col(x, 5, 5)
    with pytest.raises(ValueError, match="does not fit"):
        reuse_conv2d(x, np.ones((4, 2, 5, 5), np.float32), sub_len=2)
    with pytest.raises(ValueError, match="sub_len"):
        reuse_conv2d(x, np.ones((4, 2, 3, 3), np.float32), sub_len=3)
    with pytest.raises(ValueError, match="share"):
        reuse_conv2d(x, np.ones((4, 2, 3, 3), np.float32), sub_len=2, share="tiles")
    with pytest.raises(TypeError, match="float32"):
        reuse_conv2d(x.astype(np.float64), np.ones((4, 2, 3, 3), np.float32), sub_len=2)
    with pytest.raises(ValueError, match="n_hashes"):
        reuse_conv2d(x, np.ones((4, 2, 3, 3), np.float32), sub_len=2, n_hashes=0)
    with pytest.raises(ValueError, match="stride"):
        im2col(x, 3, 3, stride=0)


# ---------------------------------------------------------------- schedule

def test_schedule_by_epoch_fraction():
    s = ReuseSchedule(stages=[(32, 4), (16, 8), (8, 16), None], policy="epoch")
    seen = []
    for f in [0.0, 0.1, 0.24, 0.25, 0.6, 0.3, 0.75, 1.0]:
        changed = s.step(epoch_fraction=f)
        seen.append((s.current, changed))
    assert seen == [((32, 4), False), ((32, 4), False), ((32, 4), False), ((16, 8), True),
                    ((8, 16), True), ((8, 16), False),       # never moves back
                    (None, True), (None, False)]
    with pytest.raises(ValueError, match="epoch_fraction"):
        s.step(epoch_fraction=1.5)


def test_schedule_on_loss_plateau():
    s = ReuseSchedule(stages=[(16, 4), (8, 8), None], policy="plateau", patience=2, min_delta=0.05)
    decisions = [s.step(loss=v) for v in [1.0, 0.8, 0.79, 0.78]]   # improves, then stalls x2
    assert decisions == [False, False, False, True] and s.current == (8, 8)
    decisions = [s.step(loss=v) for v in [0.6, 0.59, 0.7]]
    assert decisions == [False, False, True] and s.current is None
    assert [s.step(loss=v) for v in [0.7, 0.7, 0.7]] == [False] * 3   # already exact
    with pytest.raises(ValueError, match="loss"):
        s.step(loss=float("nan"))


def test_schedule_validation():
    with pytest.raises(ValueError, match="policy"):
        ReuseSchedule(policy="cosine")
    with pytest.raises(ValueError, match="only the last"):
        ReuseSchedule(stages=[None, (8, 8)])
    with pytest.raises(ValueError, match="stage 0"):
        ReuseSchedule(stages=[(8, 99)])
    with pytest.raises(ValueError, match="empty"):
        ReuseSchedule(stages=[])
