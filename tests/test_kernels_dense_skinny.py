"""skinny_gemm (the dense GEMM of channel-pruned layers) against NumPy, and its dispatch."""
from __future__ import annotations

import numpy as np
import pytest

from kernels import compact_channels, conv2d_dense, dense_gemm
from kernels.conv import SKINNY_MAX_ROWS, use_skinny
from kernels.reference import conv2d_reference
from kernels.sparse_gemm import (SKINNY_ALIGN_MIN_COLS, SKINNY_ROW_BLOCK, SKINNY_STRIP, SkinnyWeight,
                                 skinny_gemm)

RNG = np.random.default_rng(7)


def rand(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def assert_close(got, want):
    want = np.asarray(want, dtype=np.float64)
    scale = max(1.0, float(np.abs(want).max(initial=0.0)))
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * scale)


# M: 1, a single register block, blocks of unequal height; K: 1, below / across / not a multiple
# of the 128-row K block; N: 1, < 16 (tail only), 16..48 in place, one strip, strip + tail, more
# than one 512-column panel with a remainder.
@pytest.mark.parametrize("m,k,n", [
    (1, 1, 1), (1, 7, 5), (3, 129, 16), (SKINNY_ROW_BLOCK, 128, 33), (SKINNY_ROW_BLOCK + 1, 300, 64),
    (13, 257, SKINNY_STRIP + 15), (26, 64, 49), (51, 200, 1100), (128, 40, 196), (7, 513, 17),
])
def test_matches_numpy(m, k, n):
    w, x = rand(m, k), rand(k, n)
    for threads in (1, 2):
        assert_close(skinny_gemm(SkinnyWeight(w), x, threads=threads), w.astype(np.float64) @ x)


def offset_copy(x, off, ld=None):
    """x copied into rows of stride ld (default: x's width) starting off floats past a 64-byte
    line, as NumPy's large arrays start 16 bytes (4 floats) in."""
    k, n = x.shape
    ld = n if ld is None else ld
    buf = np.empty(k * ld + 32, np.float32)
    start = (-buf.ctypes.data % 64) // 4 + off
    out = buf[start:start + k * ld].reshape(k, ld)[:, :n]
    out[:] = x
    assert out.ctypes.data % 64 == 4 * off
    return out


# From SKINNY_ALIGN_MIN_COLS columns the in-place part starts on a line, the columns before it
# run through the narrow path: every offset, with and without a tail after the aligned part,
# odd row counts (blocks of unequal height), threads splitting columns and (M > N) row blocks.
@pytest.mark.parametrize("off", range(16))
@pytest.mark.parametrize("m,k,n", [
    (51, 130, SKINNY_ALIGN_MIN_COLS), (26, 129, SKINNY_ALIGN_MIN_COLS + 21), (7, 64, 3 * 512 + 9),
    (SKINNY_ALIGN_MIN_COLS + 7, 33, SKINNY_ALIGN_MIN_COLS + 3), (5, 20, SKINNY_ALIGN_MIN_COLS - 1),
])
def test_row_starts_anywhere_in_a_line(off, m, k, n):
    w, x = rand(m, k), offset_copy(rand(k, n), off)
    want = w.astype(np.float64) @ x
    for threads in (1, 2):
        assert_close(skinny_gemm(SkinnyWeight(w), x, threads=threads), want)


@pytest.mark.parametrize("ld", [SKINNY_ALIGN_MIN_COLS + 16, SKINNY_ALIGN_MIN_COLS + 5])
def test_strided_rows_at_any_offset(ld):
    # ld a multiple of 16: every row at the same offset (head path); else rows at varying offsets
    w = rand(13, 70)
    for off in (0, 3, 4, 15):
        x = offset_copy(rand(70, SKINNY_ALIGN_MIN_COLS + 2), off, ld)
        assert x.strides[0] == 4 * ld
        for threads in (1, 2):
            assert_close(skinny_gemm(SkinnyWeight(w), x, threads=threads), w.astype(np.float64) @ x)


def test_out_view_with_an_aligned_head():
    w, x = rand(9, 40), offset_copy(rand(40, 300), 4)
    out = np.full((9, 320), np.nan, np.float32)
    skinny_gemm(SkinnyWeight(w), x, out=out[:, 7:307], threads=2)
    assert_close(out[:, 7:307], w.astype(np.float64) @ x)
    assert np.isnan(out[:, :7]).all() and np.isnan(out[:, 307:]).all()


@pytest.mark.parametrize("m,n", [(40, 30), (3, 200)])  # rows shared out / columns shared out
def test_two_threads_split_rows_or_columns(m, n):
    w, x = rand(m, 50), rand(50, n)
    assert_close(skinny_gemm(SkinnyWeight(w), x, threads=2), w.astype(np.float64) @ x)


def test_exact_small_integers():
    w = np.array([[1, 2, 0], [0, -1, 3]], np.float32)
    x = np.arange(3 * 18, dtype=np.float32).reshape(3, 18)
    np.testing.assert_array_equal(skinny_gemm(SkinnyWeight(w), x), w @ x)


def test_all_zero_and_empty():
    x = rand(9, 70)
    np.testing.assert_array_equal(skinny_gemm(SkinnyWeight(np.zeros((5, 9), np.float32)), x),
                                  np.zeros((5, 70), np.float32))
    np.testing.assert_array_equal(skinny_gemm(SkinnyWeight(rand(4, 9)), np.zeros((9, 70), np.float32)),
                                  np.zeros((4, 70), np.float32))
    assert skinny_gemm(SkinnyWeight(rand(3, 9)), rand(9, 0)).shape == (3, 0)
    assert skinny_gemm(SkinnyWeight(rand(0, 9)), x).shape == (0, 70)
    np.testing.assert_array_equal(skinny_gemm(SkinnyWeight(rand(3, 0)), rand(0, 4)), np.zeros((3, 4)))


def test_non_contiguous_x_and_out():
    w = rand(6, 40)
    big = rand(80, 90)
    for x in (big[::2, 3:73], big[:40, :70][::-1], np.asfortranarray(big[:40, :70]), big[:40, ::3]):
        assert_close(skinny_gemm(SkinnyWeight(w), x), w.astype(np.float64) @ x)
    out = np.full((6, 100), np.nan, np.float32)
    skinny_gemm(SkinnyWeight(w), big[:40, :50], out=out[:, 10:60])
    assert_close(out[:, 10:60], w.astype(np.float64) @ big[:40, :50])
    assert np.isnan(out[:, :10]).all() and np.isnan(out[:, 60:]).all()  # nothing written outside


def test_packed_once_not_tied_to_the_input():
    w = rand(5, 20)
    sw = SkinnyWeight(w)
    want = w.astype(np.float64) @ np.eye(20, dtype=np.float32)
    w[:] = 0.0  # the caller's array changes; the packed copy does not
    assert_close(skinny_gemm(sw, np.eye(20, dtype=np.float32)), want)
    assert sw.shape == (5, 20) and not sw.packed.flags.writeable


def test_bad_input_raises_before_c():
    sw = SkinnyWeight(rand(4, 10))
    with pytest.raises(TypeError, match="SkinnyWeight"):
        skinny_gemm(rand(4, 10), rand(10, 3))
    with pytest.raises(TypeError, match="float32"):
        skinny_gemm(sw, rand(10, 3).astype(np.float64))
    with pytest.raises(TypeError, match="numpy.ndarray"):
        skinny_gemm(sw, [[1.0] * 3] * 10)
    with pytest.raises(ValueError, match="2-D"):
        skinny_gemm(sw, rand(10))
    with pytest.raises(ValueError, match="shape mismatch"):
        skinny_gemm(sw, rand(11, 3))
    with pytest.raises(ValueError, match="threads"):
        skinny_gemm(sw, rand(10, 3), threads=0)
    with pytest.raises(ValueError, match="out must have shape"):
        skinny_gemm(sw, rand(10, 3), out=np.empty((4, 4), np.float32))
    x = rand(10, 3)
    with pytest.raises(ValueError, match="overlap"):
        skinny_gemm(SkinnyWeight(rand(10, 10)), x, out=x)
    with pytest.raises(TypeError, match="float32"):
        SkinnyWeight(rand(4, 10).astype(np.float64))
    with pytest.raises(ValueError, match="2-D"):
        SkinnyWeight(rand(4, 10, 1))
    sw.packed = np.zeros(3, np.float32)  # swapped for an array of the wrong size
    with pytest.raises(ValueError, match="inconsistent"):
        skinny_gemm(sw, rand(10, 3))


def test_dispatch_rule():
    assert use_skinny(1, 3136) and use_skinny(SKINNY_MAX_ROWS, 3136)
    assert not use_skinny(SKINNY_MAX_ROWS + 1, 3136) and not use_skinny(0, 3136)
    assert use_skinny(64, 49) and not use_skinny(65, 49)


def test_dense_gemm_compact_uses_skinny_and_matches():
    w = rand(40, 30)
    w[5:] = 0.0     # 5 of 40 output channels kept
    w[:, ::3] = 0.0  # every third input channel unread
    cw = compact_channels(w)
    assert cw.skinny is not None and cw.skinny.shape == (5, 20) and not cw.weight.flags.writeable
    x = rand(30, 150)
    for threads in (1, 2):
        assert_close(dense_gemm(cw, x, threads=threads), w.astype(np.float64) @ x)
        assert_close(dense_gemm(cw, x, expand=False, threads=threads), (w.astype(np.float64) @ x)[:5])
    with pytest.raises(ValueError, match="threads"):
        dense_gemm(cw, x, threads=True)


def test_compact_above_the_row_limit_runs_on_numpy():
    w = rand(SKINNY_MAX_ROWS + 3, 8)
    cw = compact_channels(w)
    assert cw.skinny is None
    x = rand(8, 130)
    assert_close(dense_gemm(cw, x), w.astype(np.float64) @ x)


def test_conv2d_dense_compact_on_skinny():
    x = rand(2, 6, 11, 11)
    w = rand(10, 6, 3, 3)
    w[[1, 2, 7]] = 0.0
    w[:, 4] = 0.0
    b = rand(10)
    cw = compact_channels(w)
    assert cw.skinny is not None and use_skinny(7, 2 * 11 * 11)
    ref = conv2d_reference(x, w, b, pad=1)
    assert_close(conv2d_dense(x, cw, b, pad=1), ref)
    assert_close(conv2d_dense(x, cw, b, pad=1, expand=False, threads=2), ref[:, cw.out_index])


def test_compact_weight_rejects_inconsistent_fields():
    from kernels import CompactWeight
    with pytest.raises(ValueError, match="kept channels"):
        CompactWeight(rand(3, 4), np.arange(2), np.arange(4), (5, 6))
    with pytest.raises(TypeError, match="float32"):
        CompactWeight(rand(3, 4).astype(np.float64), np.arange(3), np.arange(4), (5, 6))
