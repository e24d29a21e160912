"""CSR / BSR containers and the packed-panel spmm kernel against the NumPy reference."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels import PANEL_WIDTH, BSRMatrix, CSRMatrix, spmm
from kernels.reference import spmm_reference

RNG = np.random.default_rng(20261201)
FORMATS = [
    ("csr", lambda w: CSRMatrix.from_dense(w)),
    ("bsr4x1", lambda w: BSRMatrix.from_dense(w, block=(4, 1))),
    ("bsr4x4", lambda w: BSRMatrix.from_dense(w, block=(4, 4))),
    ("bsr2x3", lambda w: BSRMatrix.from_dense(w, block=(2, 3))),  # the generic block path
    ("bsr1x8", lambda w: BSRMatrix.from_dense(w, block=(1, 8))),
]


def sparse_matrix(m: int, k: int, density: float, rng=RNG) -> np.ndarray:
    w = rng.standard_normal((m, k)).astype(np.float32)
    w[rng.random((m, k)) >= density] = 0.0
    return w


def assert_close(y: np.ndarray, ref: np.ndarray) -> None:
    assert y.dtype == np.float32 and y.shape == ref.shape
    scale = max(1.0, float(np.abs(ref).max())) if ref.size else 1.0
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-5 * scale)


# ---------------------------------------------------------------- formats


@pytest.mark.parametrize("name,make", FORMATS)
def test_from_dense_round_trips(name, make):
    w = sparse_matrix(13, 29, 0.3)
    W = make(w)
    np.testing.assert_array_equal(W.to_dense(), w)
    assert W.shape == (13, 29)
    assert W.nnz == np.count_nonzero(w)
    assert W.density == pytest.approx(np.count_nonzero(w) / w.size)


@settings(max_examples=40, deadline=None)
@given(m=st.integers(0, 12), k=st.integers(1, 12), n=st.integers(1, 70), seed=st.integers(0, 2**31))
def test_csr_raw_arrays_unsorted_with_duplicates(m, k, n, seed):
    """Any valid raw CSR (column order free, repeats summed) gives to_dense() @ X."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 2 * k, m)
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    indices = rng.integers(0, k, int(indptr[-1])).astype(np.int32)
    data = rng.standard_normal(int(indptr[-1])).astype(np.float32)
    W = CSRMatrix(indptr, indices, data, (m, k))
    dense = np.zeros((m, k))
    for i in range(m):
        for p in range(indptr[i], indptr[i + 1]):
            dense[i, indices[p]] += data[p]
    np.testing.assert_allclose(W.to_dense(), dense, rtol=1e-5, atol=1e-5)
    x = rng.standard_normal((k, n)).astype(np.float32)
    assert_close(spmm(W, x, threads=2), dense @ x)


def test_csr_from_dense_layout_by_hand():
    w = np.array([[0, 2, 0], [0, 0, 0], [1, 0, 3]], dtype=np.float32)
    W = CSRMatrix.from_dense(w)
    np.testing.assert_array_equal(W.indptr, [0, 1, 1, 3])
    np.testing.assert_array_equal(W.indices, [1, 0, 2])
    np.testing.assert_array_equal(W.data, [2, 1, 3])
    assert W.macs(10) == 30
    assert not W.data.flags.writeable  # validated arrays cannot be changed behind our back


def test_bsr_stores_only_nonzero_blocks_and_counts_stored_work():
    w = np.zeros((8, 8), dtype=np.float32)
    w[0, 0] = 1.0  # block (0, 0)
    w[6, 5] = 2.0  # block (1, 1)
    W = BSRMatrix.from_dense(w, block=(4, 4))
    assert W.n_blocks == 2 and W.nnz == 2 and W.stored == 32
    np.testing.assert_array_equal(W.indptr, [0, 1, 2])
    np.testing.assert_array_equal(W.indices, [0, 1])
    assert W.macs(3) == 2 * 16 * 3  # every stored block entry, zeros included


def test_bsr_overhanging_blocks_when_shape_not_divisible():
    w = sparse_matrix(7, 10, 0.5)
    W = BSRMatrix.from_dense(w, block=(4, 4))
    assert W.indptr.shape == (3,)  # ceil(7 / 4) block rows + 1
    np.testing.assert_array_equal(W.to_dense(), w)


def test_all_zero_and_empty_matrices():
    W = CSRMatrix.from_dense(np.zeros((5, 4), np.float32))
    assert W.nnz == 0 and W.density == 0.0
    B = BSRMatrix.from_dense(np.zeros((0, 4), np.float32), block=(4, 4))
    assert B.n_blocks == 0 and B.density == 0.0 and B.to_dense().shape == (0, 4)


def test_csr_duplicates_are_summed_consistently():
    W = CSRMatrix(np.array([0, 2], np.int32), np.array([1, 1], np.int32),
                  np.array([1.5, 2.0], np.float32), (1, 3))
    np.testing.assert_array_equal(W.to_dense(), [[0, 3.5, 0]])
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    np.testing.assert_allclose(spmm(W, x), [[3.5 * 2, 3.5 * 3]])


def _csr_args():
    return (np.array([0, 1, 3], np.int32), np.array([2, 0, 1], np.int32),
            np.array([1, 2, 3], np.float32), (2, 3))


@pytest.mark.parametrize("change,exc,msg", [
    (lambda a: (a[0].astype(np.int64), *a[1:]), TypeError, "indptr must have dtype int32"),
    (lambda a: (a[0], a[1].astype(np.int64), *a[2:]), TypeError, "indices must have dtype int32"),
    (lambda a: (a[0], a[1], a[2].astype(np.float64), a[3]), TypeError, "data must have dtype float32"),
    (lambda a: (a[0], list(a[1]), a[2], a[3]), TypeError, "indices must be a numpy.ndarray"),
    (lambda a: (np.array([0, 4, 3], np.int32), *a[1:]), ValueError, "non-decreasing"),  # overshoots nnz
    (lambda a: (np.array([1, 1, 3], np.int32), *a[1:]), ValueError, "start at 0"),
    (lambda a: (np.array([0, 1, 2], np.int32), *a[1:]), ValueError, "end at the number"),
    (lambda a: (np.array([0, 3], np.int32), *a[1:]), ValueError, "entries"),
    (lambda a: (a[0], np.array([2, 0, 3], np.int32), *a[2:]), ValueError, "outside"),
    (lambda a: (a[0], np.array([2, -1, 1], np.int32), *a[2:]), ValueError, "outside"),
    (lambda a: (a[0], a[1], a[2][:2], a[3]), ValueError, "same length"),
    (lambda a: (*a[:3], (2, -3)), ValueError, "non-negative"),
    (lambda a: (*a[:3], (2,)), ValueError, "pair"),
])
def test_csr_constructor_rejects_malformed_input(change, exc, msg):
    with pytest.raises(exc, match=msg):
        CSRMatrix(*change(_csr_args()))


def test_csr_indptr_decreasing_in_the_middle():
    with pytest.raises(ValueError, match="non-decreasing"):
        CSRMatrix(np.array([0, 3, 1, 3], np.int32), np.array([0, 1, 2], np.int32),
                  np.ones(3, np.float32), (3, 3))


def test_bsr_constructor_rejects_malformed_input():
    ok = dict(indptr=np.array([0, 1], np.int32), indices=np.array([0], np.int32),
              data=np.ones((1, 4, 4), np.float32), shape=(4, 4), block=(4, 4))
    BSRMatrix(**ok)
    with pytest.raises(ValueError, match=r"shape \(n_blocks, 4, 4\)"):
        BSRMatrix(**{**ok, "data": np.ones((1, 4, 1), np.float32)})
    with pytest.raises(ValueError, match="outside"):
        BSRMatrix(**{**ok, "indices": np.array([1], np.int32)})
    with pytest.raises(ValueError, match="entries"):
        BSRMatrix(**{**ok, "indptr": np.array([0, 1, 1], np.int32)})
    with pytest.raises(ValueError, match="block sizes"):
        BSRMatrix(**{**ok, "block": (0, 4)})
    with pytest.raises(TypeError, match="float32"):
        BSRMatrix(**{**ok, "data": np.ones((1, 4, 4), np.float64)})
    # overhanging entries of a 3x3 matrix in a 4x4 block must be zero
    with pytest.raises(ValueError, match="below the last row"):
        BSRMatrix(**{**ok, "shape": (3, 4)})
    with pytest.raises(ValueError, match="past the last column"):
        BSRMatrix(**{**ok, "shape": (4, 3)})


def test_from_dense_rejects_bad_input():
    with pytest.raises(ValueError, match="2-D"):
        CSRMatrix.from_dense(np.zeros(3, np.float32))
    with pytest.raises(TypeError, match="numpy.ndarray"):
        CSRMatrix.from_dense([[1.0]])
    with pytest.raises(TypeError, match="dtype"):
        BSRMatrix.from_dense(np.zeros((2, 2), np.complex64))


def test_row_slice():
    w = sparse_matrix(12, 9, 0.4)
    np.testing.assert_array_equal(CSRMatrix.from_dense(w).row_slice(3, 8).to_dense(), w[3:8])
    B = BSRMatrix.from_dense(w, block=(4, 1))
    np.testing.assert_array_equal(B.row_slice(4, 12).to_dense(), w[4:12])
    with pytest.raises(ValueError, match="aligned"):
        B.row_slice(2, 8)


# ---------------------------------------------------------------- spmm


@pytest.mark.parametrize("name,make", FORMATS)
@pytest.mark.parametrize("m,k,n", [
    (1, 1, 1),
    (5, 7, 3),
    (17, 33, 49),                      # N below one panel, nothing divisible
    (9, 70, PANEL_WIDTH),              # exactly one panel
    (13, 64, 2 * PANEL_WIDTH + 17),    # remainder panel of 17 lanes
    (30, 129, 100),
])
@pytest.mark.parametrize("threads", [1, 2])
def test_spmm_matches_reference(name, make, m, k, n, threads):
    rng = np.random.default_rng(m * 1000 + k * 10 + n)
    w = sparse_matrix(m, k, 0.25, rng)
    x = rng.standard_normal((k, n)).astype(np.float32)
    assert_close(spmm(make(w), x, threads=threads), spmm_reference(w, x))


@pytest.mark.parametrize("name,make", FORMATS)
def test_spmm_adversarial_weights(name, make):
    x = RNG.standard_normal((37, 70)).astype(np.float32)
    w = np.zeros((11, 37), np.float32)
    assert_close(spmm(make(w), x), np.zeros((11, 70)))           # all zero
    w[5, 36] = -2.5                                                # one nonzero, last column
    assert_close(spmm(make(w), x), spmm_reference(w, x))
    w = sparse_matrix(11, 37, 0.5)
    w[[0, 3, 4, 10]] = 0.0                                         # empty rows, first and last
    assert_close(spmm(make(w), x, threads=2), spmm_reference(w, x))
    w = RNG.standard_normal((11, 37)).astype(np.float32)          # fully dense
    assert_close(spmm(make(w), x), spmm_reference(w, x))


@pytest.mark.parametrize("name,make", FORMATS)
def test_spmm_non_contiguous_inputs(name, make):
    w = sparse_matrix(10, 40, 0.3)
    W = make(w)
    base = RNG.standard_normal((80, 150)).astype(np.float32)
    for x in (base[::2, 3:140], base[:40, ::-2], np.asfortranarray(base[:40, :77]),
              base.T[:40, :33].T.T):
        assert_close(spmm(W, x, threads=2), spmm_reference(w, x))


def test_spmm_empty_dimensions():
    for m, k, n in [(0, 5, 4), (4, 0, 6), (4, 5, 0)]:
        w = np.zeros((m, k), np.float32)
        x = np.ones((k, n), np.float32)
        for W in (CSRMatrix.from_dense(w), BSRMatrix.from_dense(w, block=(4, 4))):
            y = spmm(W, x)
            assert y.shape == (m, n)
            np.testing.assert_array_equal(y, np.zeros((m, n)))


def test_spmm_out_and_macs():
    w = sparse_matrix(9, 20, 0.3)
    x = RNG.standard_normal((20, 70)).astype(np.float32)
    big = np.full((9, 100), 7.0, np.float32)
    out = big[:, 10:80]                     # rows with a stride: only the view is written
    y, macs = spmm(CSRMatrix.from_dense(w), x, out=out, return_macs=True)
    assert y is out
    assert_close(out, spmm_reference(w, x))
    assert np.all(big[:, :10] == 7.0) and np.all(big[:, 80:] == 7.0)
    assert macs == np.count_nonzero(w) * 70
    B = BSRMatrix.from_dense(w, block=(4, 4))
    assert spmm(B, x, return_macs=True)[1] == B.n_blocks * 16 * 70


def test_spmm_rejects_bad_arguments():
    W = CSRMatrix.from_dense(sparse_matrix(4, 6, 0.5))
    x = np.ones((6, 3), np.float32)
    with pytest.raises(TypeError, match="float32"):
        spmm(W, x.astype(np.float64))
    with pytest.raises(ValueError, match="shape mismatch"):
        spmm(W, np.ones((5, 3), np.float32))
    with pytest.raises(ValueError, match="2-D"):
        spmm(W, np.ones(6, np.float32))
    with pytest.raises(TypeError, match="CSRMatrix or BSRMatrix"):
        spmm(np.ones((4, 6), np.float32), x)
    for bad in (0, -1, 1.5, True, 10**6):
        with pytest.raises(ValueError, match="threads"):
            spmm(W, x, threads=bad)
    with pytest.raises(ValueError, match="out must have shape"):
        spmm(W, x, out=np.empty((4, 4), np.float32))
    with pytest.raises(TypeError, match="out must have dtype"):
        spmm(W, x, out=np.empty((4, 3), np.float64))
    with pytest.raises(ValueError, match="contiguous"):
        spmm(W, x, out=np.empty((4, 6), np.float32)[:, ::2])
    with pytest.raises(ValueError, match="writeable"):
        o = np.empty((4, 3), np.float32)
        o.setflags(write=False)
        spmm(W, x, out=o)
    buf = np.ones((6, 6), np.float32)
    with pytest.raises(ValueError, match="overlap"):
        spmm(W, buf[:, :3], out=buf[:4, 3:])


def test_spmm_detects_arrays_swapped_after_construction():
    W = CSRMatrix.from_dense(sparse_matrix(4, 6, 0.5))
    object.__setattr__(W, "indptr", np.array([0, 1], np.int32))  # deliberately broken
    with pytest.raises(ValueError, match="inconsistent"):
        spmm(W, np.ones((6, 3), np.float32))


def test_spmm_revalidates_arrays_made_writeable_again():
    W = CSRMatrix.from_dense(sparse_matrix(4, 6, 0.5))
    x = np.ones((6, 3), np.float32)
    W.indices.setflags(write=True)
    assert_close(spmm(W, x), spmm_reference(W.to_dense(), x))  # still valid: accepted
    W.indices[0] = 1000                                         # now points outside the matrix
    with pytest.raises(ValueError, match="modified after construction.*outside"):
        spmm(W, x)
    B = BSRMatrix.from_dense(sparse_matrix(8, 8, 0.5), block=(4, 4))
    B.indptr.setflags(write=True)
    B.indptr[1] = B.indptr[2] + 1
    with pytest.raises(ValueError, match="modified after construction"):
        spmm(B, np.ones((8, 2), np.float32))


@settings(max_examples=40, deadline=None)
@given(m=st.integers(1, 40), k=st.integers(1, 60), n=st.integers(1, 150),
       density=st.sampled_from([0.0, 0.02, 0.2, 0.7, 1.0]), fmt=st.sampled_from(range(len(FORMATS))),
       threads=st.integers(1, 2), seed=st.integers(0, 2**31))
def test_spmm_random_shapes(m, k, n, density, fmt, threads, seed):
    rng = np.random.default_rng(seed)
    w = sparse_matrix(m, k, density, rng)
    x = rng.standard_normal((k, n)).astype(np.float32)
    assert_close(spmm(FORMATS[fmt][1](w), x, threads=threads), spmm_reference(w, x))
