"""SLIDE hashed layer (kernels/hashing.pyx, kernels/slide.py) against NumPy references."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from kernels import hashing as h
from kernels.slide import HashedLinear, SparseActivations, choose_k_l

EMPTY = np.uint32(h.EMPTY_CODE)


# ---------------------------------------------------------------- references

def ref_simhash(x: np.ndarray, proj: np.ndarray, L: int, K: int):
    """(codes, certain): codes from float64 projections; `certain` marks rows whose every
    projection is far enough from 0 that float32 rounding cannot flip a bit."""
    p = x.astype(np.float64) @ proj.astype(np.float64)
    bits = (p > 0).reshape(len(x), L, K)
    codes = (bits * (1 << np.arange(K))).sum(axis=2).astype(np.uint32)
    certain = (np.abs(p) > 1e-3).reshape(len(x), L, K).all(axis=2)
    return codes, certain


def _probe(l: int, k: int, a: int, K: int) -> int:
    m32 = 0xFFFFFFFF
    hv = ((l * 0x85EBCA6B) & m32) ^ ((k * 0xC2B2AE35) & m32) ^ ((a * 0x27D4EB2F) & m32)
    hv ^= hv >> 15
    hv = (hv * 0x2C1B3C6D) & m32
    hv ^= hv >> 12
    return hv % K


def ref_dwta(x: np.ndarray, idx: np.ndarray, L: int, K: int, m: int) -> np.ndarray:
    log2m = m.bit_length() - 1
    codes = np.zeros((len(x), L), dtype=np.uint32)
    for i, row in enumerate(x):
        for l in range(L):
            bins = []
            for k in range(K):
                v = row[idx[l * K + k]]
                nz = np.flatnonzero(v != 0)
                bins.append(int(nz[np.argmax(v[nz])]) if nz.size else -1)
            if all(b < 0 for b in bins):
                codes[i, l] = EMPTY
                continue
            c = 0
            for k in range(K):
                v = bins[k]
                if v < 0:
                    for a in range(1, 2 * K + 1):
                        if bins[_probe(l, k, a, K)] >= 0:
                            v = bins[_probe(l, k, a, K)]
                            break
                    else:
                        v = next(bins[(k + s) % K] for s in range(1, K) if bins[(k + s) % K] >= 0)
                c |= v << (k * log2m)
            codes[i, l] = c
    return codes


def ref_active(neuron_codes: np.ndarray, query_codes: np.ndarray) -> list[np.ndarray]:
    hit = (neuron_codes[None, :, :] == query_codes[:, None, :]) & (query_codes[:, None, :] != EMPTY)
    return [np.flatnonzero(r.any(axis=1)) for r in hit]


def ref_forward(layer: HashedLinear, x: np.ndarray):
    sets = ref_active(layer.hash_codes(layer.weight), layer.hash_codes(x))
    dense = x.astype(np.float64) @ layer.weight.T.astype(np.float64) + layer.bias
    y = np.zeros((len(x), layer.n_out))
    for b, s in enumerate(sets):
        y[b, s] = dense[b, s]
    return y, sets


def _layer(rng, n_out, n_in, family="simhash", **kw):
    W = rng.standard_normal((n_out, n_in)).astype(np.float32)
    b = rng.standard_normal(n_out).astype(np.float32)
    return HashedLinear(W, b, family=family, **kw)


# ---------------------------------------------------------------- hash codes

@pytest.mark.parametrize("n_in", [1, 7, 33, 128])
def test_simhash_codes_match_reference(n_in):
    rng = np.random.default_rng(n_in)
    layer = _layer(rng, 5, n_in, K=7, L=5, seed=3)
    x = rng.standard_normal((40, n_in)).astype(np.float32)
    codes = layer.hash_codes(x)
    ref, certain = ref_simhash(x, layer._proj, 5, 7)
    assert codes.dtype == np.uint32 and codes.shape == (40, 5)
    assert certain.mean() > 0.5
    np.testing.assert_array_equal(codes[certain], ref[certain])


def test_simhash_projections_are_sparse_signs():
    layer = _layer(np.random.default_rng(0), 4, 30, K=4, L=3, density=0.2)
    assert set(np.unique(layer._proj)) <= {-1.0, 0.0, 1.0}
    assert ((layer._proj != 0).sum(axis=0) == 6).all()


@pytest.mark.parametrize("bin_size", [2, 8])
def test_dwta_codes_match_reference_with_empty_bins(bin_size):
    rng = np.random.default_rng(bin_size)
    layer = _layer(rng, 5, 24, family="dwta", K=4, L=6, bin_size=bin_size, seed=1)
    x = rng.standard_normal((30, 24)).astype(np.float32)
    x[rng.random(x.shape) < 0.7] = 0          # many empty bins -> densification
    x[0] = 0                                  # every bin empty
    x[1, :] = 0
    x[1, 5] = -2.0                            # one negative nonzero still wins its bins
    x[2] = 1.0                                # all ties: first coordinate of each bin wins
    codes = layer.hash_codes(x)
    np.testing.assert_array_equal(codes, ref_dwta(x, layer._bins, 6, 4, bin_size))
    assert (codes[0] == EMPTY).all()
    assert (codes[2] == 0).all()


def test_codes_do_not_depend_on_batch_or_layout():
    rng = np.random.default_rng(5)
    layer = _layer(rng, 10, 50, K=9, L=4)
    x = rng.standard_normal((64, 100)).astype(np.float32)
    view = x[:, ::2]                          # non-contiguous
    full = layer.hash_codes(view)
    np.testing.assert_array_equal(full[17:18], layer.hash_codes(np.ascontiguousarray(view[17:18])))
    np.testing.assert_array_equal(full, layer.hash_codes(np.asfortranarray(view)))


# ---------------------------------------------------------------- forward

@pytest.mark.parametrize("family,K,L", [("simhash", 4, 6), ("simhash", 12, 3), ("dwta", 2, 5)])
@pytest.mark.parametrize("mode", ["per_sample", "batched"])
def test_forward_matches_reference(family, K, L, mode):
    rng = np.random.default_rng(K * L)
    layer = _layer(rng, 300, 37, family=family, K=K, L=L, seed=2)
    x = rng.standard_normal((70, 37)).astype(np.float32)
    y, sets = layer.forward(x, mode=mode)
    y_ref, sets_ref = ref_forward(layer, x)
    assert y.dtype == np.float32 and y.shape == (70, 300)
    for s, r in zip(sets, sets_ref):
        np.testing.assert_array_equal(s, r)
    np.testing.assert_allclose(y, y_ref, rtol=1e-4, atol=1e-4)
    assert 0 < layer.active_fraction < 1
    assert layer.active_fraction == pytest.approx(sum(map(len, sets_ref)) / (70 * 300))


def test_modes_agree_beyond_one_group_chunk_and_on_views():
    rng = np.random.default_rng(9)
    layer = _layer(rng, 500, 20, K=5, L=4)
    x = rng.standard_normal((2 * h.GROUP_CHUNK + 13, 40)).astype(np.float32)[:, 1::2]
    a = layer.forward_sparse(x, mode="per_sample")
    b = layer.forward_sparse(x, mode="batched")
    np.testing.assert_array_equal(a.indptr, b.indptr)
    np.testing.assert_allclose(a.to_dense(), b.to_dense(), rtol=1e-5, atol=1e-5)
    # batched output is sorted per sample; per-sample output is in discovery order
    for s in range(b.batch):
        seg = b.indices[b.indptr[s]:b.indptr[s + 1]]
        assert (np.diff(seg) > 0).all()
    np.testing.assert_allclose(a.to_dense(), ref_forward(layer, x)[0], rtol=1e-4, atol=1e-4)


def test_one_neuron_and_all_zero_weights():
    rng = np.random.default_rng(1)
    one = HashedLinear(rng.standard_normal((1, 9)).astype(np.float32), None, K=2, L=3)
    x = rng.standard_normal((16, 9)).astype(np.float32)
    for mode in ("per_sample", "batched"):
        y, sets = one.forward(x, mode)
        y_ref, sets_ref = ref_forward(one, x)
        assert [list(s) for s in sets] == [list(s) for s in sets_ref]
        np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    # all-zero rows: SimHash code 0 (all projections 0); bias only where active
    zero = HashedLinear(np.zeros((50, 8), np.float32), np.arange(50, dtype=np.float32), K=3, L=2)
    assert (zero.hash_codes(zero.weight) == 0).all()
    xz = np.zeros((3, 8), np.float32)
    y, sets = zero.forward(xz)
    assert all(len(s) == 50 for s in sets)
    np.testing.assert_array_equal(y, np.tile(np.arange(50, dtype=np.float32), (3, 1)))
    # DWTA: all-zero rows and inputs are EMPTY, so nothing is active
    zd = HashedLinear(np.zeros((50, 8), np.float32), None, family="dwta", K=2, L=2, bin_size=4)
    for mode in ("per_sample", "batched"):
        y, sets = zd.forward(xz, mode)
        assert all(len(s) == 0 for s in sets) and not y.any()
        assert zd.macs_executed == 0 and zd.active_fraction == 0.0


def test_empty_active_sets_and_empty_batch():
    rng = np.random.default_rng(2)
    layer = _layer(rng, 40, 16, family="dwta", K=3, L=2, bin_size=4)
    x = rng.standard_normal((5, 16)).astype(np.float32)
    x[2] = 0                                   # this sample selects nothing
    for mode in ("per_sample", "batched"):
        y, sets = layer.forward(x, mode)
        assert len(sets[2]) == 0 and not y[2].any()
        out = layer.forward_sparse(np.zeros((0, 16), np.float32), mode)
        assert out.batch == 0 and out.to_dense().shape == (0, 40)


@settings(max_examples=25, deadline=None)
@given(n_out=st.integers(1, 60), n_in=st.integers(2, 20), batch=st.integers(1, 70),
       K=st.integers(1, 6), L=st.integers(1, 5), seed=st.integers(0, 10**6),
       family=st.sampled_from(["simhash", "dwta"]), zero_frac=st.sampled_from([0.0, 0.5, 0.9]))
def test_forward_property(n_out, n_in, batch, K, L, seed, family, zero_frac):
    rng = np.random.default_rng(seed)
    # small integers: every projection is exact, so the reference codes are exact too
    W = rng.integers(-3, 4, (n_out, n_in)).astype(np.float32)
    x = rng.integers(-3, 4, (batch, n_in)).astype(np.float32)
    x[rng.random(x.shape) < zero_frac] = 0
    kw = dict(bin_size=2, K=min(K, 31)) if family == "dwta" else dict(K=K)
    layer = HashedLinear(W, rng.standard_normal(n_out).astype(np.float32), family=family,
                         L=L, seed=seed, **kw)
    if family == "simhash":
        ref_codes, _ = ref_simhash(x, layer._proj, L, K)
        ref_w, _ = ref_simhash(W, layer._proj, L, K)
        # a projection exactly 0 is "not > 0" in both; integer data makes them exact
        np.testing.assert_array_equal(layer.hash_codes(x), ref_codes)
        np.testing.assert_array_equal(layer.hash_codes(W), ref_w)
    y_ref, sets_ref = ref_forward(layer, x)
    for mode in ("per_sample", "batched"):
        y, sets = layer.forward(x, mode)
        assert all(np.array_equal(a, b) for a, b in zip(sets, sets_ref))
        np.testing.assert_allclose(y, y_ref, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- tables

def test_tables_nested_in_L_and_rehash_rows_equals_full_rebuild():
    rng = np.random.default_rng(4)
    W = rng.standard_normal((400, 24)).astype(np.float32)
    x = rng.standard_normal((20, 24)).astype(np.float32)
    small = HashedLinear(W, None, K=6, L=3, seed=8)
    big = HashedLinear(W, None, K=6, L=9, seed=8)
    for s, b in zip(small.active_sets(x), big.active_sets(x)):
        assert set(s) <= set(b)
    np.testing.assert_array_equal(big._codes[:, :3], small._codes)
    changed = np.array([3, 77, 399])
    big.weight[changed] = rng.standard_normal((3, 24)).astype(np.float32)
    big.rehash(rows=changed)
    fresh = HashedLinear(big.weight, None, K=6, L=9, seed=8)
    np.testing.assert_array_equal(big._codes, fresh._codes)
    for a, b in zip(big.active_sets(x), fresh.active_sets(x)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(big.tables.offsets, fresh.tables.offsets)


def test_bucket_tables_group_codes_with_folding():
    # 31-bit codes on 10 neurons fold into 16 slots; lookups still match exact codes only
    codes = np.array([[5], [5 | 1 << 30], [5], [7], [h.EMPTY_CODE]] * 2, dtype=np.uint32)
    t = h.BucketTables(codes, 31)
    assert t.slot_bits == 4 and t.bucket_sizes().sum() == 8      # EMPTY rows left out
    indptr, idx = t.active_sets(np.array([[5], [5 | 1 << 30], [h.EMPTY_CODE], [9]], np.uint32))
    sets = [sorted(idx[indptr[i]:indptr[i + 1]]) for i in range(4)]
    assert sets == [[0, 2, 5, 7], [1, 6], [], []]
    np.testing.assert_array_equal(t.prefix_union_sizes(np.array([[5]], np.uint32)), [[4]])


def test_recall_and_work_counters():
    rng = np.random.default_rng(6)
    layer = _layer(rng, 200, 16, K=1, L=12)    # every neuron lands in one of 2 buckets
    x = rng.standard_normal((8, 16)).astype(np.float32)
    out = layer.forward_sparse(x, "per_sample")
    nnz = len(out.indices)
    assert layer.macs_executed == nnz * 16 and layer.bytes_gathered == nnz * 16 * 4
    layer.forward_sparse(x, "batched")
    distinct = len(np.unique(out.indices))
    assert layer.macs_executed == nnz * 16 and layer.bytes_gathered == distinct * 16 * 4
    # recall against a hand computation
    k = 10
    dense = x @ layer.weight.T + layer.bias
    top = np.argsort(-dense, axis=1)[:, :k]
    sets = layer.active_sets(x)
    expect = np.mean([np.isin(top[b], sets[b]).mean() for b in range(8)])
    assert layer.recall_at_k(x, k) == pytest.approx(expect)
    assert layer.active_fraction > 0.95 and layer.recall_at_k(x, k) > 0.95


def test_choose_k_l_reaches_target_on_clustered_weights():
    rng = np.random.default_rng(7)
    centers = rng.standard_normal((40, 32)).astype(np.float32)
    W = (centers[rng.integers(0, 40, 2000)] + 0.5 * rng.standard_normal((2000, 32))).astype(np.float32)
    calib = (centers[rng.integers(0, 40, 50)] + 0.5 * rng.standard_normal((50, 32))).astype(np.float32)
    K, L, info = choose_k_l(W, calib, 0.05, K_range=(4, 10), L_max=32)
    assert 4 <= K <= 10 and 1 <= L <= 32
    assert 0.8 * 0.05 <= info["active_fraction"] <= 1.25 * 0.05
    layer = HashedLinear(W, None, K=K, L=L)
    layer.forward(calib)
    assert layer.active_fraction == pytest.approx(info["active_fraction"])
    assert layer.recall_at_k(calib) == pytest.approx(info["recall"])
    assert info["recall"] > 0.5          # hashing beats a random 5% (recall 0.05) by far
    assert len(info["candidates"]) == 7


# ---------------------------------------------------------------- training

def test_backward_matches_reference_and_touches_active_rows_only():
    rng = np.random.default_rng(8)
    layer = _layer(rng, 120, 10, K=4, L=3)
    x = rng.standard_normal((6, 10)).astype(np.float32)
    out = layer.forward_sparse(x)
    g = rng.standard_normal(len(out.indices)).astype(np.float32)
    W0, b0 = layer.weight.copy(), layer.bias.copy()
    gx = layer.backward(x, out, g, lr=0.1)
    rows = np.repeat(np.arange(6), np.diff(out.indptr))
    G = np.zeros((6, 120))
    np.add.at(G, (rows, out.indices), g)
    np.testing.assert_allclose(gx, G @ W0, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(layer.weight, W0 - 0.1 * G.T @ x, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(layer.bias, b0 - 0.1 * G.sum(axis=0), rtol=1e-4, atol=1e-5)
    untouched = np.setdiff1d(np.arange(120), out.indices)
    np.testing.assert_array_equal(layer.weight[untouched], W0[untouched])
    assert layer._changed.sum() == len(np.unique(out.indices))


def test_sparse_training_learns_clustered_classes():
    """256 classes of clustered points in 32-d; a hashed softmax layer trained from small
    random weights with sparse updates (active set + label) reaches >= 95% accuracy when
    predicting through the hash tables, using under a fifth of the neurons per sample."""
    rng = np.random.default_rng(0)
    n_cls, d = 256, 32
    centers = rng.standard_normal((n_cls, d)).astype(np.float32)

    def sample(n):
        y = rng.integers(0, n_cls, n)
        return (centers[y] + 0.3 * rng.standard_normal((n, d))).astype(np.float32), y

    layer = HashedLinear(0.01 * rng.standard_normal((n_cls, d)).astype(np.float32), None,
                         K=6, L=8, seed=1, num_threads=1)
    xt, yt = sample(1000)
    before = (layer.predict(xt) == yt).mean()
    for step in range(300):
        xb, yb = sample(64)
        layer.train_step(xb, yb, lr=0.5, rehash_every=10)
    acc = (layer.predict(xt) == yt).mean()
    layer.forward(xt)
    assert before < 0.1 and acc >= 0.95, (before, acc)
    assert layer.active_fraction < 0.2


# ---------------------------------------------------------------- bad input

def test_bad_input_raises_before_any_loop():
    rng = np.random.default_rng(0)
    W = rng.standard_normal((20, 8)).astype(np.float32)
    with pytest.raises(TypeError, match="float32"):
        HashedLinear(W.astype(np.float64))
    with pytest.raises(ValueError, match="2-D"):
        HashedLinear(W[0])
    with pytest.raises(ValueError, match="shape"):
        HashedLinear(W, np.zeros(19, np.float32))
    with pytest.raises(TypeError, match="bias"):
        HashedLinear(W, np.zeros(20))
    with pytest.raises(ValueError, match="K must be"):
        HashedLinear(W, K=0)
    with pytest.raises(ValueError, match="K must be"):
        HashedLinear(W, K=32)
    with pytest.raises(ValueError, match="K must be"):
        HashedLinear(W, family="dwta", K=11, bin_size=8)
    with pytest.raises(ValueError, match="L must be"):
        HashedLinear(W, L=0)
    with pytest.raises(ValueError, match="bin_size"):
        HashedLinear(W, family="dwta", bin_size=16)
    with pytest.raises(ValueError, match="bin_size"):
        HashedLinear(W, family="dwta", bin_size=3)
    with pytest.raises(ValueError, match="family"):
        HashedLinear(W, family="minhash")
    bad = W.copy()
    bad[3, 3] = np.nan
    with pytest.raises(ValueError, match="finite"):
        HashedLinear(bad)
    layer = HashedLinear(W, K=3, L=2)
    with pytest.raises(ValueError, match="8 columns"):
        layer.forward(np.zeros((2, 7), np.float32))
    with pytest.raises(TypeError, match="float32"):
        layer.forward(np.zeros((2, 8)))
    with pytest.raises(ValueError, match="mode"):
        layer.forward(np.zeros((2, 8), np.float32), mode="fast")
    with pytest.raises(ValueError, match="rows must be in"):
        layer.rehash(rows=np.array([20]))
    with pytest.raises(ValueError, match="rows must be in"):
        layer.rehash(rows=np.array([-1]))
    with pytest.raises(ValueError, match="k must be"):
        layer.recall_at_k(np.zeros((2, 8), np.float32), k=21)
    with pytest.raises(ValueError, match="labels"):
        layer.train_step(np.zeros((2, 8), np.float32), np.array([0, 20]), 0.1)
    with pytest.raises(ValueError, match="target_active_fraction"):
        choose_k_l(W, np.zeros((2, 8), np.float32), 1.5)


def test_kernel_level_validation():
    t = h.BucketTables(np.zeros((4, 2), np.uint32), 3)
    with pytest.raises(ValueError, match="fit in 3 bits"):
        h.BucketTables(np.full((4, 2), 8, np.uint32), 3)
    with pytest.raises(ValueError, match="fit in 3 bits"):
        t.active_sets(np.full((1, 2), 8, np.uint32))
    with pytest.raises(ValueError, match="2 columns"):
        t.active_sets(np.zeros((1, 3), np.uint32))
    with pytest.raises(TypeError, match="uint32"):
        t.active_sets(np.zeros((1, 2), np.int64))
    W = np.zeros((4, 5), np.float32)
    with pytest.raises(ValueError, match="4 rows"):
        t.forward_grouped(np.zeros((1, 5), np.float32), np.zeros((3, 5), np.float32), None,
                          np.zeros((1, 2), np.uint32))
    with pytest.raises(ValueError, match="rows"):
        t.forward_per_sample(np.zeros((2, 5), np.float32), W, None, np.zeros((1, 2), np.uint32))
    with pytest.raises(ValueError, match="idx entries"):
        h.dwta_codes(np.zeros((1, 4), np.float32), np.full((2, 2), 4, np.int32), 1, 2, 2)
    with pytest.raises(ValueError, match="proj must have"):
        h.simhash_codes(np.zeros((1, 4), np.float32), np.zeros((5, 2), np.float32), 1, 2)
    x = np.zeros((2, 5), np.float32)
    ip = np.array([0, 1, 2], np.int64)
    with pytest.raises(ValueError, match="indices must be in"):
        h.sparse_backward(x, W, None, ip, np.array([0, 4], np.int32), np.zeros(2, np.float32), 0.1)
    with pytest.raises(ValueError, match="non-decreasing"):
        h.sparse_backward(x, W, None, np.array([0, 2, 1], np.int64), np.array([0], np.int32),
                          np.zeros(1, np.float32), 0.1)
    with pytest.raises(ValueError, match="grad must have shape"):
        h.sparse_backward(x, W, None, ip, np.array([0, 1], np.int32), np.zeros(3, np.float32), 0.1)
    with pytest.raises(TypeError, match="C-contiguous"):
        h.sparse_backward(x, np.asfortranarray(np.zeros((4, 5), np.float32)), None, ip,
                          np.array([0, 1], np.int32), np.zeros(2, np.float32), 0.1)
    assert isinstance(SparseActivations(ip, np.array([0, 1], np.int32),
                                        np.ones(2, np.float32), 4).to_dense(), np.ndarray)


# ---------------------------------------------------------------- fused per-sample path

def _fused_forward(layer: HashedLinear, x: np.ndarray) -> SparseActivations:
    """The fused single-thread kernel (small batches, or per_sample on one thread)."""
    layer.num_threads = 1
    return layer.forward_sparse(x, "per_sample")


@pytest.mark.parametrize("family,K,L,n_in", [("simhash", 3, 1, 1), ("simhash", 5, 7, 33),
                                             ("simhash", 9, 40, 130), ("dwta", 2, 6, 16),
                                             ("dwta", 3, 12, 128)])
def test_fused_forward_matches_reference_with_sorted_ids(family, K, L, n_in):
    rng = np.random.default_rng(K * 100 + L)
    kw = dict(bin_size=4) if family == "dwta" else {}
    layer = _layer(rng, 700, n_in, family=family, K=K, L=L, seed=4, **kw)
    x = rng.standard_normal((9, n_in)).astype(np.float32)
    out = layer.forward_sparse(x)                 # B < AUTO_BATCHED_MIN: the fused kernel
    y_ref, sets_ref = ref_forward(layer, x)
    for b, ref in enumerate(sets_ref):
        np.testing.assert_array_equal(out.indices[out.indptr[b]:out.indptr[b + 1]], ref)  # ascending
    np.testing.assert_allclose(out.to_dense(), y_ref, rtol=1e-4, atol=1e-4)
    assert layer.bytes_gathered == len(out.indices) * n_in * 4


def test_fused_forward_on_views_and_one_sample_equals_batch():
    rng = np.random.default_rng(11)
    layer = _layer(rng, 300, 24, K=6, L=9)
    base = rng.standard_normal((6, 48)).astype(np.float32)
    view = base[:, 1::2]                          # non-contiguous
    full = layer.forward_sparse(view)
    np.testing.assert_allclose(full.to_dense(), ref_forward(layer, np.ascontiguousarray(view))[0],
                               rtol=1e-4, atol=1e-4)
    one = layer.forward_sparse(view[3:4])
    np.testing.assert_array_equal(one.indices, full.indices[full.indptr[3]:full.indptr[4]])
    np.testing.assert_array_equal(one.values, full.values[full.indptr[3]:full.indptr[4]])
    fortran = layer.forward_sparse(np.asfortranarray(view))
    np.testing.assert_array_equal(fortran.indices, full.indices)


def test_fused_forward_spills_over_its_output_buffer():
    # K=1, many tables: every sample selects nearly all 150 neurons, so 70 samples need ~70x
    # the N-sized buffer: the kernel stops, hands back what fits and resumes
    rng = np.random.default_rng(12)
    layer = _layer(rng, 150, 10, K=1, L=10)
    x = rng.standard_normal((70, 10)).astype(np.float32)
    out = _fused_forward(layer, x)
    assert len(out.indices) > 10 * layer.n_out
    y_ref, sets_ref = ref_forward(layer, x)
    for b, ref in enumerate(sets_ref):
        np.testing.assert_array_equal(out.indices[out.indptr[b]:out.indptr[b + 1]], ref)
    np.testing.assert_allclose(out.to_dense(), y_ref, rtol=1e-4, atol=1e-4)
    batched = layer.forward_sparse(x, "batched")
    np.testing.assert_array_equal(batched.indptr, out.indptr)


def test_fused_forward_all_candidates_empty_buckets_and_folded_codes():
    rng = np.random.default_rng(13)
    # all-zero weights: SimHash code 0 everywhere, an all-zero input hits every neuron
    zero = HashedLinear(np.zeros((130, 8), np.float32), np.arange(130, dtype=np.float32), K=4, L=3)
    out = zero.forward_sparse(np.zeros((2, 8), np.float32))
    np.testing.assert_array_equal(out.indices, np.tile(np.arange(130), 2))
    np.testing.assert_array_equal(out.values, np.tile(np.arange(130, dtype=np.float32), 2))
    # DWTA: an all-zero input is EMPTY in every table and selects nothing
    dw = _layer(rng, 80, 16, family="dwta", K=3, L=4, bin_size=4)
    xz = rng.standard_normal((3, 16)).astype(np.float32)
    xz[1] = 0
    out = dw.forward_sparse(xz)
    assert out.indptr[2] == out.indptr[1]
    np.testing.assert_allclose(out.to_dense(), ref_forward(dw, xz)[0], rtol=1e-4, atol=1e-4)
    # K=31 on 40 neurons: slots fold the codes, so the kernel must compare full codes
    big_k = _layer(rng, 40, 12, K=31, L=5)
    assert big_k.tables.slot_bits < big_k.code_bits
    x = np.repeat(big_k.weight[:3], 2, axis=0)    # inputs equal to neuron rows: sure hits
    out = big_k.forward_sparse(x)
    _, sets_ref = ref_forward(big_k, x)
    for b, ref in enumerate(sets_ref):
        assert b // 2 in ref
        np.testing.assert_array_equal(out.indices[out.indptr[b]:out.indptr[b + 1]], ref)


def test_fused_forward_rejects_bad_input():
    rng = np.random.default_rng(14)
    layer = _layer(rng, 30, 8, K=3, L=2)
    x = rng.standard_normal((2, 8)).astype(np.float32)
    x[1, 5] = np.inf
    with pytest.raises(ValueError, match="finite"):
        layer.forward_sparse(x)
    x[1, 5] = np.nan
    with pytest.raises(ValueError, match="finite"):
        layer.forward_sparse(x)
    with pytest.raises(TypeError, match="float32"):
        layer.forward_sparse(np.zeros((1, 8), np.float16))
    with pytest.raises(ValueError, match="8 columns"):
        layer.forward_sparse(np.zeros((1, 9), np.float32))
    with pytest.raises(ValueError, match="2-D"):
        layer.forward_sparse(np.zeros(8, np.float32))
    fused = layer._fused
    ok = np.zeros((1, 8), np.float32)
    with pytest.raises(ValueError, match="weight must have shape"):
        fused(ok, layer.weight[:29], layer.bias)
    with pytest.raises(TypeError, match="bias"):
        fused(ok, layer.weight, layer.bias.astype(np.float64))
    with pytest.raises(ValueError, match="bias must have shape"):
        fused(ok, layer.weight, layer.bias[:5])
    with pytest.raises(ValueError, match="code_bits"):
        h.FusedForward(layer.tables, "simhash", 4, 8, proj=layer._proj_i8)
    with pytest.raises(ValueError, match="proj must have shape"):
        h.FusedForward(layer.tables, "simhash", 3, 8, proj=layer._proj_i8[:7])
    with pytest.raises(ValueError, match="-1, 0 or"):
        h.FusedForward(layer.tables, "simhash", 3, 8, proj=layer._proj * 0.5)
    with pytest.raises(ValueError, match="bins entries"):
        h.FusedForward(h.BucketTables(np.zeros((30, 2), np.uint32), 2), "dwta", 2, 8,
                       bins=np.full((4, 2), 8, np.int32), bin_size=2)
    with pytest.raises(ValueError, match="family"):
        h.FusedForward(layer.tables, "minhash", 3, 8)
    with pytest.raises(ValueError, match="-1, 0 or"):
        h.simhash_codes(ok, np.full((8, 6), 2, np.int8), 2, 3)
    # a failed call leaves the kernel's scratch clean: the next call is still exact
    good = rng.standard_normal((3, 8)).astype(np.float32)
    np.testing.assert_allclose(layer.forward_sparse(good).to_dense(), ref_forward(layer, good)[0],
                               rtol=1e-4, atol=1e-4)


def test_weight_copy_is_cache_line_aligned_and_writeable():
    W = np.random.default_rng(15).standard_normal((50, 33)).astype(np.float32)
    layer = HashedLinear(W[:, :33], None, K=4, L=2)
    assert layer.weight.ctypes.data % 64 == 0 and layer.weight.flags.c_contiguous
    np.testing.assert_array_equal(layer.weight, W)
    layer.weight[0] = 1.0                          # a copy: the caller's array is untouched
    assert not (W[0] == 1.0).all()


def test_layer_survives_pickle_with_its_fused_kernel():
    import copy
    import pickle
    rng = np.random.default_rng(16)
    for family in ("simhash", "dwta"):
        layer = _layer(rng, 200, 16, family=family, K=3, L=4, bin_size=4)
        x = rng.standard_normal((3, 16)).astype(np.float32)
        for clone in (pickle.loads(pickle.dumps(layer)), copy.deepcopy(layer)):
            a, b = layer.forward_sparse(x), clone.forward_sparse(x)
            np.testing.assert_array_equal(a.indices, b.indices)
            np.testing.assert_array_equal(a.values, b.values)
