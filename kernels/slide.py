"""SLIDE hashed fully connected layer (Spring & Shrivastava 2017; Chen et al. 2020).

L hash tables of K-bit (SimHash) or K-bin (densified winner-take-all) codes index the rows
of W[out, in]. For an input x, the active set is the union of the buckets x's codes hit in
the L tables; only those neurons are computed, the rest of y = W x + b reads as zero.

    layer = HashedLinear(W, b, family="simhash", K=9, L=20, seed=0)
    y, active = layer.forward(x)                 # dense y, zeros outside the active sets
    out = layer.forward_sparse(x)                # CSR: out.indptr, out.indices, out.values
    layer.active_fraction, layer.macs_executed, layer.recall_at_k(x, k=10)

Two execution modes: "per_sample" gathers each sample's active rows; "batched" groups the
work per neuron, loading each selected row once for every sample that picked it. Small
batches (and any batch on one thread) run per sample in one fused C call: hash, bucket
lookup into a bitmap, sorted ids, prefetched row products (hashing.FusedForward).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kernels import hashing as _h
from kernels._checks import matrix

FAMILIES = ("simhash", "dwta")
MODES = ("auto", "batched", "per_sample")
# Below this batch the per-neuron bitmap scan over all rows costs more than it saves.
AUTO_BATCHED_MIN = 16
# Weight rows start on cache-line boundaries: a 128-float row is then 8 lines, not 9.
WEIGHT_ALIGN = 64
MAX_TABLES = 1024


@dataclass(frozen=True)
class SparseActivations:
    """Active outputs of a batch in CSR form: sample b owns indices/values[indptr[b]:indptr[b+1]]."""

    indptr: np.ndarray   # int64 [B+1]
    indices: np.ndarray  # int32 [nnz], neuron ids, unique per sample
    values: np.ndarray   # float32 [nnz], W[id] . x[b] + bias[id]
    n_out: int

    @property
    def batch(self) -> int:
        return len(self.indptr) - 1

    def active_sets(self) -> list[np.ndarray]:
        """Per sample, the sorted ids of its active neurons."""
        return [np.sort(self.indices[self.indptr[b]:self.indptr[b + 1]]) for b in range(self.batch)]

    def to_dense(self) -> np.ndarray:
        """[B, n_out] float32 with zeros outside the active sets."""
        y = np.zeros((self.batch, self.n_out), dtype=np.float32)
        rows = np.repeat(np.arange(self.batch), np.diff(self.indptr))
        y[rows, self.indices] = self.values
        return y


def _as_float32_matrix(a, name: str, cols: int | None = None) -> np.ndarray:
    a = matrix(a, name, np.float32, cols=cols)
    if a.size and not np.isfinite(a).all():
        raise ValueError(f"{name} must be finite (no NaN or inf)")
    return a


def _aligned_copy(a: np.ndarray, align: int = WEIGHT_ALIGN) -> np.ndarray:
    """A C-contiguous copy of a whose data starts on an `align`-byte boundary."""
    raw = np.empty(a.nbytes + align, dtype=np.uint8)
    start = -raw.ctypes.data % align
    out = raw[start:start + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


class HashedLinear:
    """y = W x + b evaluated on hash-selected neurons only.

    weight: [out, in] float32 (copied); bias: [out] float32 or None.
    family: "simhash" (K sign bits of sparse +-1 projections, `density` of the inputs each)
    or "dwta" (K bins, each the argmax position over `bin_size` random coordinates, empty
    bins densified; code = K*log2(bin_size) bits). L tables; every table draws its own
    projections from (seed, table), so the first L' tables of a layer with L > L' tables are
    exactly the tables of the layer with L'.
    """

    def __init__(self, weight: np.ndarray, bias: np.ndarray | None = None, *,
                 family: str = "simhash", K: int = 8, L: int = 16, seed: int = 0,
                 bin_size: int = 8, density: float = 1 / 3, num_threads: int = 0) -> None:
        if family not in FAMILIES:
            raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
        self.weight = _aligned_copy(_as_float32_matrix(weight, "weight"))
        n_out, n_in = self.weight.shape
        if n_out < 1 or n_in < 1:
            raise ValueError(f"weight must have at least one row and one column, got {self.weight.shape}")
        if bias is None:
            self.bias = np.zeros(n_out, dtype=np.float32)
        else:
            if not isinstance(bias, np.ndarray) or bias.dtype != np.float32:
                raise TypeError(f"bias must be a float32 numpy.ndarray, got "
                                f"{getattr(bias, 'dtype', type(bias).__name__)}")
            if bias.shape != (n_out,):
                raise ValueError(f"bias must have shape ({n_out},), got {bias.shape}")
            self.bias = np.ascontiguousarray(bias).copy()
        if not isinstance(L, (int, np.integer)) or not 1 <= L <= MAX_TABLES:
            raise ValueError(f"L must be an integer in 1..{MAX_TABLES}, got {L!r}")
        if not isinstance(K, (int, np.integer)):
            raise ValueError(f"K must be an integer, got {K!r}")
        self.family, self.K, self.L, self.seed = family, int(K), int(L), int(seed)
        self.num_threads = int(num_threads)
        if family == "simhash":
            if not 1 <= self.K <= _h.MAX_CODE_BITS:
                raise ValueError(f"K must be in 1..{_h.MAX_CODE_BITS} for simhash, got {K}")
            if not 0 < density <= 1:
                raise ValueError(f"density must be in (0, 1], got {density}")
            self.code_bits = self.K
            self._proj = self._simhash_projections(n_in, density)
            self._proj_i8 = _h.sign_projections(self._proj)   # what the kernels read
        else:
            if bin_size < 2 or bin_size & (bin_size - 1):
                raise ValueError(f"bin_size must be a power of two >= 2, got {bin_size}")
            if bin_size > n_in:
                raise ValueError(f"bin_size must be <= the {n_in} input features, got {bin_size}")
            log2m = bin_size.bit_length() - 1
            if not 1 <= self.K <= _h.MAX_CODE_BITS // log2m:
                raise ValueError(f"K must be in 1..{_h.MAX_CODE_BITS // log2m} for dwta with "
                                 f"bin_size {bin_size}, got {K}")
            self.bin_size = int(bin_size)
            self.code_bits = self.K * log2m
            self._bins = self._dwta_bins(n_in)
        self._last: SparseActivations | None = None
        self._last_bytes = 0
        self._changed = np.zeros(n_out, dtype=bool)
        self._steps = 0
        self.rehash()

    # ------------------------------------------------------------------ hashing
    def _simhash_projections(self, n_in: int, density: float) -> np.ndarray:
        nnz = max(1, int(round(density * n_in)))
        proj = np.zeros((n_in, self.L * self.K), dtype=np.float32)
        for l in range(self.L):
            rng = np.random.default_rng([self.seed, l])
            for k in range(self.K):
                rows = rng.choice(n_in, size=nnz, replace=False)
                proj[rows, l * self.K + k] = rng.choice(np.array([-1.0, 1.0], np.float32), size=nnz)
        return proj

    def _dwta_bins(self, n_in: int) -> np.ndarray:
        idx = np.empty((self.L * self.K, self.bin_size), dtype=np.int32)
        for l in range(self.L):
            rng = np.random.default_rng([self.seed, l])
            for k in range(self.K):
                idx[l * self.K + k] = rng.choice(n_in, size=self.bin_size, replace=False)
        return idx

    def hash_codes(self, x: np.ndarray) -> np.ndarray:
        """Codes [n, L] uint32 of the rows of x [n, in] (float32)."""
        x = _as_float32_matrix(x, "x", self.weight.shape[1])
        if self.family == "simhash":
            return _h.simhash_codes(x, self._proj_i8, self.L, self.K, self.num_threads)
        return _h.dwta_codes(x, self._bins, self.L, self.K, self.bin_size, self.num_threads)

    def rehash(self, rows: np.ndarray | None = None) -> None:
        """Rebuild the tables from the weight rows; with rows=ids, recompute only those rows'
        codes (the tables' layout is then rebuilt in O(L * out), no hashing of other rows)."""
        if rows is None:
            self._codes = self.hash_codes(self.weight)
        else:
            rows = np.asarray(rows)
            if rows.dtype == bool:
                if rows.shape != (self.n_out,):
                    raise ValueError(f"boolean rows must have shape ({self.n_out},), got {rows.shape}")
                rows = np.flatnonzero(rows)
            if rows.ndim != 1 or (rows.size and not np.issubdtype(rows.dtype, np.integer)):
                raise TypeError(f"rows must be a 1-D array of integer ids, got {rows.dtype} {rows.shape}")
            if rows.size and (rows.min() < 0 or rows.max() >= self.n_out):
                raise ValueError(f"rows must be in [0, {self.n_out}), got [{rows.min()}, {rows.max()}]")
            if rows.size:
                self._codes[rows] = self.hash_codes(self.weight[rows])
        self.tables = _h.BucketTables(self._codes, self.code_bits, self.num_threads)
        if self.family == "simhash":
            self._fused = _h.FusedForward(self.tables, "simhash", self.K, self.n_in, proj=self._proj_i8)
        else:
            self._fused = _h.FusedForward(self.tables, "dwta", self.K, self.n_in, bins=self._bins,
                                          bin_size=self.bin_size)
        self._changed[:] = False if rows is None else self._changed & ~np.isin(np.arange(self.n_out), rows)

    @property
    def n_out(self) -> int:
        return self.weight.shape[0]

    @property
    def n_in(self) -> int:
        return self.weight.shape[1]

    # ------------------------------------------------------------------ forward
    def forward_sparse(self, x: np.ndarray, mode: str = "auto") -> SparseActivations:
        """Active outputs of x [B, in] float32 as CSR (see SparseActivations); ids ascend
        within each sample except in the multi-threaded per-sample path (discovery order).
        mode "auto": per_sample below AUTO_BATCHED_MIN samples, batched from there."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if mode != "batched" and isinstance(x, np.ndarray) and x.ndim == 2 and \
                (x.shape[0] < AUTO_BATCHED_MIN or (mode == "per_sample" and self.num_threads == 1)):
            # the fused kernel checks dtype, columns and NaN/inf itself, in C
            indptr, indices, values = self._fused(x, self.weight, self.bias)
            mode = "per_sample"
        else:   # threads share the samples (per sample) or the neurons (batched)
            x = _as_float32_matrix(x, "x", self.n_in)
            if mode == "auto":
                mode = "batched" if x.shape[0] >= AUTO_BATCHED_MIN else "per_sample"
            q = self.hash_codes(x)
            run = self.tables.forward_grouped if mode == "batched" else self.tables.forward_per_sample
            indptr, indices, values = run(x, self.weight, self.bias, q, self.num_threads)
        out = SparseActivations(indptr, indices, values, self.n_out)
        self._last = out
        if mode == "per_sample":
            self._last_bytes = len(indices) * self.n_in * 4
        else:  # each distinct row once per GROUP_CHUNK samples
            self._last_bytes = self.tables.last_distinct * self.n_in * 4
        return out

    def forward(self, x: np.ndarray, mode: str = "auto") -> tuple[np.ndarray, list[np.ndarray]]:
        """(y [B, out] float32 with zeros outside the active sets, per-sample sorted active ids)."""
        out = self.forward_sparse(x, mode)
        return out.to_dense(), out.active_sets()

    __call__ = forward

    def active_sets(self, x: np.ndarray) -> list[np.ndarray]:
        """Per sample, the sorted ids the hash tables select (no products computed)."""
        indptr, indices = self.tables.active_sets(self.hash_codes(x), self.num_threads)
        return [np.sort(indices[indptr[b]:indptr[b + 1]]) for b in range(len(indptr) - 1)]

    @property
    def active_fraction(self) -> float:
        """Mean fraction of the out neurons active per sample in the last forward."""
        if self._last is None or self._last.batch == 0:
            return 0.0
        return len(self._last.indices) / (self._last.batch * self.n_out)

    @property
    def macs_executed(self) -> int:
        """Multiply-accumulates of the last forward: active (sample, neuron) pairs x in."""
        return 0 if self._last is None else len(self._last.indices) * self.n_in

    @property
    def bytes_gathered(self) -> int:
        """Weight bytes the last forward loaded: per pair (per_sample) or per distinct row
        and sample chunk (batched)."""
        return self._last_bytes

    def recall_at_k(self, x: np.ndarray, k: int = 10) -> float:
        """Mean over samples of |true top-k of W x + b  intersect  active set| / k."""
        x = _as_float32_matrix(x, "x", self.n_in)
        if not isinstance(k, (int, np.integer)) or not 1 <= k <= self.n_out:
            raise ValueError(f"k must be an integer in 1..{self.n_out}, got {k!r}")
        if x.shape[0] == 0:
            raise ValueError("x must have at least one row")
        dense = x @ self.weight.T + self.bias
        top = np.argpartition(-dense, k - 1, axis=1)[:, :k]
        hits = 0
        for b, act in enumerate(self.active_sets(x)):
            hits += np.isin(top[b], act, assume_unique=True).sum()
        return hits / (k * x.shape[0])

    # ------------------------------------------------------------------ training
    def backward(self, x: np.ndarray, active: SparseActivations, grad_values: np.ndarray,
                 lr: float) -> np.ndarray:
        """SGD on the active pairs only: grad_values[p] = dLoss/dy for active pair p of
        `active` (the forward's output on x). Updates those rows and biases in place,
        marks them for rehashing and returns dLoss/dx [B, in]."""
        x = _as_float32_matrix(x, "x", self.n_in)
        if not isinstance(active, SparseActivations) or active.batch != x.shape[0]:
            raise ValueError("active must be the SparseActivations of a forward over x")
        grad_x = _h.sparse_backward(x, self.weight, self.bias, active.indptr, active.indices,
                                    grad_values, float(lr), self.num_threads)
        self._changed[active.indices] = True
        return grad_x

    def train_step(self, x: np.ndarray, labels: np.ndarray, lr: float,
                   rehash_every: int = 10) -> float:
        """One step of softmax cross-entropy over each sample's active set plus its label
        (the SLIDE output layer). Only active rows change; every `rehash_every` steps the
        changed rows are rehashed. Returns the mean loss."""
        x = _as_float32_matrix(x, "x", self.n_in)
        labels = np.asarray(labels)
        if labels.shape != (x.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"labels must be integer ids of shape ({x.shape[0]},), got "
                             f"{labels.dtype} {labels.shape}")
        if labels.size and (labels.min() < 0 or labels.max() >= self.n_out):
            raise ValueError(f"labels must be in [0, {self.n_out})")
        if rehash_every < 1:
            raise ValueError(f"rehash_every must be >= 1, got {rehash_every}")
        # active set of each sample, with its label added where the tables missed it
        sets = self.active_sets(x)
        sets = [s if np.isin(t, s) else np.append(s, np.int32(t)) for s, t in zip(sets, labels)]
        counts = np.array([len(s) for s in sets], dtype=np.int64)
        indptr = np.zeros(len(sets) + 1, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        indices = np.concatenate(sets).astype(np.int32) if sets else np.zeros(0, np.int32)
        rows = np.repeat(np.arange(len(sets)), counts)
        logits = np.einsum("ij,ij->i", self.weight[indices], x[rows]) + self.bias[indices]
        # softmax within each sample's segment
        seg_max = np.maximum.reduceat(logits, indptr[:-1])
        e = np.exp(logits - seg_max[rows])
        z = np.add.reduceat(e, indptr[:-1])
        p = e / z[rows]
        is_label = indices == labels[rows]
        loss = float(-np.log(np.maximum(p[is_label], 1e-30)).mean())
        grad = ((p - is_label) / len(sets)).astype(np.float32)
        active = SparseActivations(indptr, indices, logits.astype(np.float32), self.n_out)
        self.backward(x, active, grad, lr)
        self._steps += 1
        if self._steps % rehash_every == 0:
            self.rehash(rows=np.flatnonzero(self._changed))
        return loss

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Argmax over each sample's active set (-1 where the active set is empty)."""
        out = self.forward_sparse(x)
        pred = np.full(out.batch, -1, dtype=np.int64)
        for b in range(out.batch):
            lo, hi = out.indptr[b], out.indptr[b + 1]
            if hi > lo:
                pred[b] = out.indices[lo + np.argmax(out.values[lo:hi])]
        return pred


def choose_k_l(weight: np.ndarray, calib_x: np.ndarray, target_active_fraction: float, *,
               family: str = "simhash", K_range: tuple[int, int] | None = None,
               L_max: int = 64, seed: int = 0, k_recall: int = 10,
               bias: np.ndarray | None = None, **kwargs) -> tuple[int, int, dict]:
    """Search K (bits or bins per table) and L (tables) for a target active fraction on
    calibration inputs calib_x [n, in].

    For each K, one layer with L_max tables gives the mean active fraction after every
    prefix of tables (tables are nested in L); the smallest L reaching the target is that
    K's candidate. Among candidates whose fraction lies within [0.8, 1.25] x target, the one
    with the best recall@k_recall wins; if none does, the one nearest the target.
    Returns (K, L, info) with info["candidates"] = [(K, L, active_fraction, recall), ...].
    """
    if not 0 < target_active_fraction < 1:
        raise ValueError(f"target_active_fraction must be in (0, 1), got {target_active_fraction}")
    weight = _as_float32_matrix(weight, "weight")
    calib_x = _as_float32_matrix(calib_x, "calib_x", weight.shape[1])
    if calib_x.shape[0] == 0:
        raise ValueError("calib_x must have at least one row")
    if not 1 <= L_max <= MAX_TABLES:
        raise ValueError(f"L_max must be in 1..{MAX_TABLES}, got {L_max}")
    n_out = weight.shape[0]
    if K_range is None:
        if family == "dwta":
            K_range = (1, _h.MAX_CODE_BITS // (kwargs.get("bin_size", 8).bit_length() - 1))
        else:
            K_range = (1, min(_h.MAX_CODE_BITS, max(2, int(np.ceil(np.log2(max(n_out, 2)))) + 2)))
    lo, hi = K_range
    if not 1 <= lo <= hi:
        raise ValueError(f"K_range must be (lo, hi) with 1 <= lo <= hi, got {K_range}")
    k_recall = min(k_recall, n_out)
    dense = calib_x @ weight.T + (0 if bias is None else bias)
    top = np.argpartition(-dense, k_recall - 1, axis=1)[:, :k_recall]
    candidates = []
    for K in range(lo, hi + 1):
        layer = HashedLinear(weight, bias, family=family, K=K, L=L_max, seed=seed, **kwargs)
        q = layer.hash_codes(calib_x)
        frac = layer.tables.prefix_union_sizes(q).mean(axis=0) / n_out  # [L_max]
        reach = np.flatnonzero(frac >= target_active_fraction)
        L = int(reach[0]) + 1 if reach.size else L_max
        # the first L tables of this layer are the tables of a layer with L tables
        small = _h.BucketTables(np.ascontiguousarray(layer._codes[:, :L]), layer.code_bits)
        indptr, idx = small.active_sets(np.ascontiguousarray(q[:, :L]))
        hits = sum(np.isin(top[b], idx[indptr[b]:indptr[b + 1]]).sum() for b in range(len(top)))
        candidates.append((K, L, float(frac[L - 1]), hits / top.size))
    near = [c for c in candidates if 0.8 <= c[2] / target_active_fraction <= 1.25]
    best = max(near, key=lambda c: (c[3], -abs(c[2] - target_active_fraction))) if near else \
        min(candidates, key=lambda c: abs(np.log(max(c[2], 1e-12) / target_active_fraction)))
    return best[0], best[1], {"active_fraction": best[2], "recall": best[3], "candidates": candidates}
