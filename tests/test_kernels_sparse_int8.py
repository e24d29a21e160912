"""int8 weights x int8 activations -> exact int32, for every format, against int64 NumPy."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels import BSRMatrix, CSRMatrix, conv2d_sparse, spmm
from kernels.sparse_gemm import MAX_INT8_K

BLOCKS = [None, (4, 1), (4, 4), (4, 8), (2, 3), (1, 4)]  # None = CSR; (4, 4|8) take the quad path


def make(w: np.ndarray, block):
    return CSRMatrix.from_dense(w) if block is None else BSRMatrix.from_dense(w, block=block)


def int8_matrix(rng, shape, density=1.0) -> np.ndarray:
    a = rng.integers(-128, 128, shape).astype(np.int8)
    a[rng.random(shape) >= density] = 0
    return a


def exact(w, x) -> np.ndarray:
    return w.astype(np.int64) @ x.astype(np.int64)


@pytest.mark.parametrize("block", BLOCKS)
@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (5, 7, 3), (17, 33, 49), (9, 64, 64), (13, 70, 145)])
def test_int8_matches_exact_reference(block, m, k, n):
    rng = np.random.default_rng(m + 100 * k + 10000 * n)
    w = int8_matrix(rng, (m, k), 0.3)
    x = int8_matrix(rng, (k, n))
    W = make(w, block)
    assert W.dtype == np.int8
    y, macs = spmm(W, x, threads=2, return_macs=True)
    assert y.dtype == np.int32
    np.testing.assert_array_equal(y, exact(w, x))
    assert macs == W.macs(n)


@pytest.mark.parametrize("block", BLOCKS)
def test_int8_adversarial(block):
    rng = np.random.default_rng(3)
    x = int8_matrix(rng, (37, 70))
    w = np.zeros((11, 37), np.int8)
    np.testing.assert_array_equal(spmm(make(w, block), x), np.zeros((11, 70)))
    w[10, 36] = -128                                   # one nonzero, extreme value, last row/col
    np.testing.assert_array_equal(spmm(make(w, block), x), exact(w, x))
    w = int8_matrix(rng, (11, 37), 0.5)
    w[[0, 4, 5]] = 0                                   # empty rows
    xs = int8_matrix(rng, (74, 150))[::2, 7:120:3]     # strided, non-contiguous
    np.testing.assert_array_equal(spmm(make(w, block), xs), exact(w, xs))


@pytest.mark.parametrize("block", [None, (4, 4)])
@pytest.mark.parametrize("wv,xv", [(127, 127), (-128, -128), (-128, 127), (127, -128)])
def test_int8_extremes_at_the_largest_k(block, wv, xv):
    k = MAX_INT8_K
    w = np.full((4, k), wv, np.int8)
    x = np.full((k, 17), xv, np.int8)
    y = spmm(make(w, block), x)
    np.testing.assert_array_equal(y, np.full((4, 17), wv * xv * k, np.int64))


def test_int8_argument_checks():
    w = int8_matrix(np.random.default_rng(0), (4, 6), 0.5)
    W = CSRMatrix.from_dense(w)
    with pytest.raises(TypeError, match="int8"):
        spmm(W, np.ones((6, 3), np.float32))
    with pytest.raises(TypeError, match="float32"):
        spmm(CSRMatrix.from_dense(w.astype(np.float32)), np.ones((6, 3), np.int8))
    with pytest.raises(TypeError, match="int32"):
        spmm(W, np.ones((6, 3), np.int8), out=np.empty((4, 3), np.float32))
    with pytest.raises(ValueError, match="K <="):
        spmm(CSRMatrix.from_dense(np.zeros((1, MAX_INT8_K + 1), np.int8)),
             np.zeros((MAX_INT8_K + 1, 1), np.int8))
    with pytest.raises(TypeError, match="quantise"):
        CSRMatrix.from_dense(np.ones((2, 2), np.float32), dtype=np.int8)
    with pytest.raises(TypeError, match="float32"):
        conv2d_sparse(np.ones((1, 1, 3, 3), np.float32), CSRMatrix.from_dense(np.ones((1, 9), np.int8)))
    out = np.full((4, 3), 99, np.int32)
    assert spmm(W, np.ones((6, 3), np.int8), out=out) is out
    np.testing.assert_array_equal(out, exact(w, np.ones((6, 3), np.int8)))


def test_int8_to_dense_sums_duplicates_exactly():
    W = CSRMatrix(np.array([0, 2], np.int32), np.array([0, 0], np.int32),
                  np.array([100, 100], np.int8), (1, 2))
    d = W.to_dense()
    assert d.dtype == np.int32
    np.testing.assert_array_equal(d, [[200, 0]])
    np.testing.assert_array_equal(spmm(W, np.array([[2], [5]], np.int8)), [[400]])


@settings(max_examples=40, deadline=None)
@given(m=st.integers(1, 30), k=st.integers(1, 70), n=st.integers(1, 140),
       density=st.sampled_from([0.0, 0.05, 0.5, 1.0]), block=st.sampled_from(BLOCKS),
       threads=st.integers(1, 2), seed=st.integers(0, 2**31))
def test_int8_random_shapes(m, k, n, density, block, threads, seed):
    rng = np.random.default_rng(seed)
    w = int8_matrix(rng, (m, k), density)
    x = int8_matrix(rng, (k, n))
    np.testing.assert_array_equal(spmm(make(w, block), x, threads=threads), exact(w, x))
