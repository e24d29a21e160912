"""Adaptive deep reuse (Ning & Shen, ICDE 2019; ICS 2019): cluster similar input
sub-vectors by LSH and compute one product per cluster.

    Y, stats = reuse_matmul(X, W, sub_len=16, n_hashes=8, seed=0)     # Y ~= X @ W
    y, stats = reuse_conv2d(x, weight, bias, stride=1, pad=1, sub_len=16, n_hashes=6)

Cost model (multiply-accumulates): N*K*H to hash + r_c*N*K*M for the centroid products,
r_c = clusters / rows averaged over sub-vector positions. For a conv (share="pixel", the
default) a sub-vector is a channel chunk of one input pixel, hashed once for all R*S im2col
rows that read it: hashing costs pixels*C*H instead of N*K*H. Hyperplanes: Gaussian
(metric="input") or drawn through the weight (metric="output", hashing the error a shared
product makes); thresholds: 0 (sign) or centred on calibration data (conv_thresholds).
ReuseSchedule picks (sub_len, n_hashes) during training, coarse (more reuse) first and
finer later.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from kernels._reuse import MAX_HASHES, reuse_conv_kernel, reuse_matmul_kernel

# Rows (pixels, for conv) clustered together: more rows, more reuse; the digits CNN kept its
# accuracy at 8192 (benchmarks/RESULTS.md).
DEFAULT_BLOCK_ROWS = 8192


@dataclass(frozen=True)
class ReuseStats:
    """What one reuse product cost and how close it came.

    cluster_ratio: clusters / rows, averaged over sub-vector positions (and row blocks);
    for conv share="pixel", clusters / input pixels averaged over channel chunks.
    macs_hash: N*K*H (pixel mode: pixels*C*H); macs_product: sum of clusters x sub-vector
    length x M (pixel mode: x R*S) over the nonzero clusters; macs_dense: N*K*M;
    relative_error: ||Y - X W||_F / ||X W||_F (None when not computed); zero_fraction:
    share of sub-vectors that were all zero (they form one cluster whose product is skipped).
    """

    cluster_ratio: float
    macs_hash: int
    macs_product: int
    macs_dense: int
    relative_error: float | None
    zero_fraction: float
    sub_len: int
    n_hashes: int

    @property
    def macs_executed(self) -> int:
        return self.macs_hash + self.macs_product

    @property
    def mac_ratio(self) -> float:
        """Dense MACs over executed MACs (the cost model's ideal speed-up)."""
        return self.macs_dense / max(self.macs_executed, 1)


METRICS = ("input", "output")


def projections(K: int, n_hashes: int, seed: int, weight: np.ndarray | None = None,
                sub_len: int | None = None) -> np.ndarray:
    """[K, n_hashes] float32 projections; rows k0..k1 serve the sub-vector there.

    weight None: Gaussian N(0, I) hyperplanes (Ning & Shen), hashing the distance ||x - y||.
    weight [K, n] (what the sub-vectors multiply: W of X @ W, or a conv's weight as
    [C, R*S*M]) with sub_len: the output metric. Per sub-vector position, proj =
    weight[k0:k1] @ G / sqrt(n) with G ~ N(0, I): hyperplanes Gaussian with covariance
    W W^T, so that the hashes split by ||(x - y) W||, the error a shared product makes,
    and spend no bits on directions W hardly sees.
    """
    rng = np.random.default_rng(seed)
    if weight is None:
        return rng.standard_normal((K, n_hashes)).astype(np.float32)
    if not isinstance(weight, np.ndarray) or weight.ndim != 2 or weight.shape[0] != K:
        raise ValueError(f"weight must be [{K}, n], got {getattr(weight, 'shape', type(weight).__name__)}")
    if sub_len is None or not 1 <= sub_len <= K:
        raise ValueError(f"sub_len must be in 1..{K} with a weight, got {sub_len}")
    w = weight.astype(np.float64)
    out = np.empty((K, n_hashes), np.float32)
    for k0 in range(0, K, sub_len):
        g = rng.standard_normal((w.shape[1], n_hashes))
        out[k0:k0 + sub_len] = w[k0:k0 + sub_len] @ g / np.sqrt(max(w.shape[1], 1))
    return out


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")


def conv_weight_rows(weight: np.ndarray) -> np.ndarray:
    """A conv weight [M, C, R, S] as [C, R*S*M]: the rows a pixel's channels multiply."""
    M, C, R, S = weight.shape
    return np.ascontiguousarray(weight.transpose(1, 2, 3, 0)).reshape(C, R * S * M)


CALIB_ROWS = 1024


def centered_thresholds(sub: np.ndarray, proj: np.ndarray, sub_len: int, seed: int) -> np.ndarray:
    """[n_pos, H] thresholds t = mean + std * z of each hash's projections over the nonzero
    sub-vectors of the sample rows `sub` [n, K] (z ~ N(0, 1), seeded).

    Sign hashing through the origin sees only a sub-vector's direction: ReLU activations all
    sit in one orthant, and two chunks that are multiples of each other always collide.
    Hyperplanes through the data's centre at random offsets also split by magnitude.
    """
    K, H = proj.shape
    z = np.random.default_rng([seed, 1]).standard_normal((-(-K // sub_len), H))
    out = np.zeros_like(z, dtype=np.float32)
    for p, k0 in enumerate(range(0, K, sub_len)):
        xs = sub[:, k0:k0 + sub_len].astype(np.float32)
        xs = xs[xs.any(axis=1)]
        if len(xs) == 0:
            continue
        # elementwise, not BLAS: a BLAS call would leave its thread pool spinning
        v = (xs[:, :, None] * proj[k0:k0 + sub_len][None]).sum(axis=1, dtype=np.float64)
        out[p] = v.mean(axis=0) + v.std(axis=0) * z[p]
    return out


def _calib_rows(X: np.ndarray, seed: int) -> np.ndarray:
    if len(X) <= CALIB_ROWS:
        return X
    return X[np.random.default_rng([seed, 2]).choice(len(X), CALIB_ROWS, replace=False)]


def _pixel_sample(x: np.ndarray, seed: int) -> np.ndarray:
    """Up to CALIB_ROWS pixel vectors [n, C] of NCHW x, picked without a full copy."""
    N, C, H, Wd = x.shape
    n_px = N * H * Wd
    pick = np.random.default_rng([seed, 2]).choice(n_px, min(n_px, CALIB_ROWS), replace=False)
    n_i, rest = np.divmod(pick, H * Wd)
    return x[n_i, :, rest // Wd, rest % Wd]


def conv_thresholds(x_calib: np.ndarray, sub_len: int, n_hashes: int, seed: int = 0, *,
                    weight: np.ndarray | None = None) -> np.ndarray:
    """Centred thresholds [n_chunks, n_hashes] for reuse_conv2d(share="pixel"), calibrated
    once on NCHW inputs x_calib (what centered=True computes on every call's own input).
    weight [M, C, R, S]: for reuse_conv2d(metric="output", same weight and seed)."""
    if not isinstance(x_calib, np.ndarray) or x_calib.ndim != 4 or x_calib.shape[0] == 0:
        raise ValueError("x_calib must be a non-empty 4-D NCHW numpy.ndarray")
    C = x_calib.shape[1]
    if not 1 <= sub_len <= C or not 1 <= n_hashes <= MAX_HASHES:
        raise ValueError(f"sub_len must be in 1..{C} and n_hashes in 1..{MAX_HASHES}, got {sub_len}, {n_hashes}")
    if weight is not None and (not isinstance(weight, np.ndarray) or weight.ndim != 4 or weight.shape[1] != C):
        raise ValueError(f"weight must be [M, {C}, R, S], got {getattr(weight, 'shape', type(weight).__name__)}")
    rows = None if weight is None else conv_weight_rows(weight)
    return centered_thresholds(_pixel_sample(x_calib.astype(np.float32, copy=False), seed),
                               projections(C, n_hashes, seed, rows, sub_len), sub_len, seed)


def reuse_matmul(X: np.ndarray, W: np.ndarray, sub_len: int, n_hashes: int, seed: int = 0, *,
                 block_rows: int = DEFAULT_BLOCK_ROWS, centered: bool = False,
                 metric: str = "input", compute_error: bool = True,
                 num_threads: int = 0) -> tuple[np.ndarray, ReuseStats]:
    """Y ~= X @ W by clustering the sub-vectors of X's rows. X [N, K], W [K, M] float32.

    Rows are clustered within blocks of block_rows rows (the blocks run in parallel).
    centered=False: bit = sign of a random projection (Ning & Shen); True: thresholds from
    centered_thresholds on up to CALIB_ROWS rows of X (magnitude-aware clusters).
    metric "input": Gaussian hyperplanes; "output": hyperplanes drawn through W (see
    projections), so clusters are tight where it matters for X @ W.
    compute_error=True also computes the exact X @ W for stats.relative_error.
    """
    _check_metric(metric)
    if not isinstance(sub_len, (int, np.integer)) or not isinstance(n_hashes, (int, np.integer)):
        raise TypeError(f"sub_len and n_hashes must be integers, got {sub_len!r}, {n_hashes!r}")
    if not 1 <= n_hashes <= MAX_HASHES:
        raise ValueError(f"n_hashes must be in 1..{MAX_HASHES}, got {n_hashes}")
    if not isinstance(X, np.ndarray) or X.ndim != 2:
        raise ValueError(f"X must be a 2-D numpy.ndarray, got {getattr(X, 'shape', type(X).__name__)}")
    if not isinstance(W, np.ndarray) or W.ndim != 2 or W.shape[0] != X.shape[1]:
        raise ValueError(f"W must be 2-D with {X.shape[1]} rows (X's columns), got "
                         f"{getattr(W, 'shape', type(W).__name__)}")
    N, K = X.shape
    M = W.shape[1]
    if metric == "output" and not (isinstance(sub_len, (int, np.integer)) and 1 <= sub_len <= K):
        raise ValueError(f"sub_len must be in 1..{K} (the columns of X), got {sub_len}")
    proj = projections(K, int(n_hashes), seed, W if metric == "output" else None,
                       int(sub_len) if metric == "output" else None)
    thr = None
    if centered and N and 1 <= sub_len <= K:
        thr = centered_thresholds(_calib_rows(X, seed), proj, int(sub_len), seed)
    Y, clusters, zero_rows = reuse_matmul_kernel(X, W, proj, int(sub_len), int(block_rows),
                                                 int(num_threads), thr)
    lens = np.diff(np.minimum(np.arange(0, K + sub_len, sub_len), K))[: clusters.shape[1]]
    all_clusters = clusters + (zero_rows > 0)      # the zero cluster is a cluster, at no cost
    err = None
    if compute_error:
        exact = X @ W
        denom = float(np.linalg.norm(exact))
        err = float(np.linalg.norm(Y - exact)) / denom if denom > 0 else float(np.linalg.norm(Y))
    n_sub = max(N * len(lens), 1)
    stats = ReuseStats(
        cluster_ratio=float(all_clusters.sum() / n_sub),
        macs_hash=int(N * K * n_hashes),
        macs_product=int((clusters * lens[None, :]).sum() * M),
        macs_dense=int(N * K * M),
        relative_error=err,
        zero_fraction=float(zero_rows.sum() / n_sub),
        sub_len=int(sub_len), n_hashes=int(n_hashes),
    )
    return Y, stats


def im2col(x: np.ndarray, R: int, S: int, stride: int = 1, pad: int = 0) -> tuple[np.ndarray, int, int]:
    """(X [N*P*Q, C*R*S], P, Q) for NCHW x; columns ordered (c, r, s) like weight.reshape(M, -1)."""
    if not isinstance(x, np.ndarray) or x.ndim != 4:
        raise ValueError(f"x must be a 4-D NCHW numpy.ndarray, got {getattr(x, 'shape', type(x).__name__)}")
    if stride < 1 or pad < 0:
        raise ValueError(f"stride must be >= 1 and pad >= 0, got stride={stride}, pad={pad}")
    N, C, H, Wd = x.shape
    if H + 2 * pad < R or Wd + 2 * pad < S:
        raise ValueError(f"kernel {R}x{S} does not fit the padded input {H + 2 * pad}x{Wd + 2 * pad}")
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad))) if pad else x
    win = np.lib.stride_tricks.sliding_window_view(xp, (R, S), axis=(2, 3))[:, :, ::stride, ::stride]
    P, Q = win.shape[2], win.shape[3]
    cols = win.transpose(0, 2, 3, 1, 4, 5).reshape(N * P * Q, C * R * S)
    return np.ascontiguousarray(cols), P, Q


def reuse_conv2d(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None, *,
                 stride: int = 1, pad: int = 0, sub_len: int = 16, n_hashes: int = 8,
                 seed: int = 0, share: str = "pixel", block_rows: int = DEFAULT_BLOCK_ROWS,
                 centered: bool = False, thresholds: np.ndarray | None = None,
                 metric: str = "input", compute_error: bool = True,
                 num_threads: int = 0) -> tuple[np.ndarray, ReuseStats]:
    """Conv2d (NCHW, groups=1) with deep reuse. weight [M, C, R, S] float32.

    share="pixel": a sub-vector is a chunk of sub_len channels of one input pixel, i.e. the
    im2col layout (r, s, c); such a chunk is the sub-vector of all R*S im2col rows that
    read the pixel, so it is hashed and clustered once instead of R*S times (the products
    per cluster are formed for every (r, s)). Rows are clustered within blocks of about
    block_rows input pixels (whole images). Stats count clusters per input pixel. The
    result is an NCHW view of channels-last memory (as torch.channels_last; np.ascontiguousarray
    gives plain NCHW).
    share="im2col": reuse_matmul on the (c, r, s)-ordered im2col matrix, sub-vectors of
    sub_len consecutive columns, clustered per im2col position.
    centered: hash thresholds through the data's centre (see centered_thresholds), computed
    on this call's x; thresholds: precomputed ones instead (share="pixel" only, e.g. from
    conv_thresholds on calibration data, with the same weight for metric="output"),
    [n_chunks, n_hashes].
    metric "input": Gaussian hyperplanes (Ning & Shen); "output": hyperplanes drawn through
    the weight (see projections): at the same cluster ratio, a lower output error.
    """
    _check_metric(metric)
    if share not in ("pixel", "im2col"):
        raise ValueError(f"share must be 'pixel' or 'im2col', got {share!r}")
    if not isinstance(weight, np.ndarray) or weight.ndim != 4:
        raise ValueError(f"weight must be [M, C, R, S], got {getattr(weight, 'shape', type(weight).__name__)}")
    if not isinstance(x, np.ndarray) or x.ndim != 4 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"x must be NCHW with {weight.shape[1]} channels, got "
                         f"{getattr(x, 'shape', type(x).__name__)}")
    M, C, R, S = weight.shape
    if bias is not None and (not isinstance(bias, np.ndarray) or bias.shape != (M,)):
        raise ValueError(f"bias must have shape ({M},), got {getattr(bias, 'shape', None)}")
    if not isinstance(n_hashes, (int, np.integer)) or not 1 <= n_hashes <= MAX_HASHES:
        raise ValueError(f"n_hashes must be an integer in 1..{MAX_HASHES}, got {n_hashes!r}")
    if share == "im2col":
        if thresholds is not None:
            raise ValueError("thresholds are for share='pixel'; use centered=True with share='im2col'")
        cols, P, Q = im2col(x, R, S, stride, pad)
        Wm = np.ascontiguousarray(weight.reshape(M, C * R * S).T)
        Y, stats = reuse_matmul(cols, Wm, sub_len, n_hashes, seed, block_rows=block_rows,
                                centered=centered, metric=metric, compute_error=compute_error,
                                num_threads=num_threads)
    else:
        N, _, H, Wd = x.shape
        if not isinstance(sub_len, (int, np.integer)) or not 1 <= sub_len <= C:
            raise ValueError(f"sub_len must be in 1..{C} (the input channels), got {sub_len!r}")
        proj = projections(C, int(n_hashes), seed,
                           conv_weight_rows(weight) if metric == "output" else None, int(sub_len))
        block_imgs = max(1, block_rows // max(H * Wd, 1))
        thr = thresholds
        if thr is None and centered and N:
            thr = centered_thresholds(_pixel_sample(x, seed), proj, int(sub_len), seed)
        y, clusters, zeros = reuse_conv_kernel(
            x, weight, proj, int(sub_len), int(stride), int(pad), block_imgs, int(num_threads),
            thr, None if bias is None else bias.astype(np.float32))
        lens = np.diff(np.minimum(np.arange(0, C + sub_len, sub_len), C))[: clusters.shape[1]]
        n_sub = max(N * H * Wd * len(lens), 1)
        err = None
        if compute_error:
            cols, P, Q = im2col(x, R, S, stride, pad)
            exact = cols @ weight.reshape(M, -1).T
            got = y.transpose(0, 2, 3, 1).reshape(exact.shape)   # y is channels-last in memory
            if bias is not None:
                got = got - bias.astype(np.float32)
            denom = float(np.linalg.norm(exact))
            err = float(np.linalg.norm(got - exact)) / denom if denom > 0 else float(np.linalg.norm(got))
        stats = ReuseStats(
            cluster_ratio=float((clusters + (zeros > 0)).sum() / n_sub),
            macs_hash=int(N * H * Wd * C * n_hashes),
            macs_product=int((clusters * lens[None, :]).sum() * R * S * M),
            macs_dense=int(N * y.shape[2] * y.shape[3] * C * R * S * M),
            relative_error=err,
            zero_fraction=float(zeros.sum() / n_sub),
            sub_len=int(sub_len), n_hashes=int(n_hashes),
        )
        return y, stats
    if bias is not None:
        Y += bias.astype(np.float32)
    y = Y.reshape(x.shape[0], P, Q, M).transpose(0, 3, 1, 2)
    return np.ascontiguousarray(y), stats


@dataclass
class ReuseSchedule:
    """Reuse settings for training, coarse to fine (Ning & Shen's adaptive deep reuse).

    stages: (sub_len, n_hashes) pairs from most reuse (long sub-vectors, few hashes) to
    least; the last stage may be None for exact products. policy "epoch": stage =
    floor(epoch_fraction * len(stages)); policy "plateau": advance one stage when the loss
    has not improved by more than min_delta (relative) for `patience` updates in a row.
    The stage never moves back.
    """

    stages: list = field(default_factory=lambda: [(32, 4), (16, 8), (8, 16), None])
    policy: str = "plateau"
    patience: int = 3
    min_delta: float = 0.01
    index: int = 0
    _best: float = float("inf")
    _wait: int = 0

    def __post_init__(self) -> None:
        if self.policy not in ("epoch", "plateau"):
            raise ValueError(f"policy must be 'epoch' or 'plateau', got {self.policy!r}")
        if not self.stages:
            raise ValueError("stages must not be empty")
        for i, s in enumerate(self.stages):
            if s is None:
                if i != len(self.stages) - 1:
                    raise ValueError("only the last stage may be None (exact)")
                continue
            if len(s) != 2 or s[0] < 1 or not 1 <= s[1] <= MAX_HASHES:
                raise ValueError(f"stage {i} must be (sub_len >= 1, n_hashes in 1..{MAX_HASHES}), got {s}")
        if self.patience < 1 or self.min_delta < 0:
            raise ValueError(f"patience must be >= 1 and min_delta >= 0, got {self.patience}, {self.min_delta}")

    @property
    def current(self) -> tuple[int, int] | None:
        """(sub_len, n_hashes) now, or None for exact products."""
        return self.stages[self.index]

    def step(self, *, epoch_fraction: float | None = None, loss: float | None = None) -> bool:
        """Feed progress (policy "epoch": epoch_fraction in [0, 1]) or a loss (policy
        "plateau"). Returns True when the stage changed."""
        before = self.index
        if self.policy == "epoch":
            if epoch_fraction is None or not 0 <= epoch_fraction <= 1:
                raise ValueError(f"epoch_fraction must be in [0, 1], got {epoch_fraction}")
            want = min(int(epoch_fraction * len(self.stages)), len(self.stages) - 1)
            self.index = max(self.index, want)
        else:
            if loss is None or not np.isfinite(loss):
                raise ValueError(f"loss must be a finite number, got {loss}")
            if loss < self._best * (1 - self.min_delta) or self._best == float("inf"):
                self._best, self._wait = loss, 0
            else:
                self._wait += 1
                if self._wait >= self.patience and self.index < len(self.stages) - 1:
                    self.index += 1
                    self._best, self._wait = loss, 0
        return self.index != before
