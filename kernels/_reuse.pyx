# cython: boundscheck=False, cdivision=True
"""Cython kernel of adaptive deep reuse (Ning & Shen, ICDE 2019 / ICS 2019).

Y ~= X @ W for X [N, K], W [K, M]: each row of X is cut into sub-vectors of length sub_len
(the last one may be shorter); within a block of rows, the sub-vectors at one position are
clustered by H sign bits of random projections; one centroid (mean) per cluster is
multiplied by the matching rows of W and the product is added to every member row.
All-zero sub-vectors form their own cluster whose product is zero and is skipped.

The Python API is kernels/reuse.py (this file is not reuse.pyx: an extension
kernels.reuse would shadow that module); this module checks its inputs before the C loop runs.
"""
import numpy as np
cimport numpy as cnp
from libc.stdint cimport int64_t, uint64_t

cnp.import_array()

cdef extern from *:
    """
    #include <stdint.h>
    #include <stdlib.h>
    #include <string.h>
    #ifdef _OPENMP
    #include <omp.h>
    #endif

    static inline int jr_threads(int requested) {
    #ifdef _OPENMP
        return requested > 0 ? requested : omp_get_max_threads();
    #else
        (void)requested;
        return 1;
    #endif
    }

    /* Cluster the rows r0..r1 of X at columns k0..k1 (len = k1-k0) and add the reused
     * products into Y. proj [K, H]: rows k0..k1 are this position's projections.
     * Scratch (per thread): code [nb], cid [nb], table [2*cap], cent [nb*len], cnt [nb],
     * prod [nb*M]. Returns the number of nonzero clusters; *n_zero_rows gets the number
     * of all-zero sub-vectors (they form one more cluster whose product is skipped). */
    static int64_t jr_position(const float *X, int64_t K, const float *W, int64_t M,
                               const float *proj, int H, int64_t r0, int64_t r1, int64_t k0,
                               int64_t k1, float *Y, uint64_t *code, int64_t *cid,
                               int64_t *table, int64_t cap, float *cent, int64_t *cnt,
                               float *prod, int64_t *n_zero_rows) {
        const int64_t nb = r1 - r0, len = k1 - k0;
        float acc[64];
        int64_t nc = 0, zeros = 0;
        for (int64_t s = 0; s < cap; s++) table[s] = -1;
        for (int64_t i = 0; i < nb; i++) {
            const float *xr = X + (r0 + i) * K + k0;
            int nz = 0;
            for (int h = 0; h < H; h++) acc[h] = 0.0f;
            for (int64_t j = 0; j < len; j++) {
                const float v = xr[j];
                if (v == 0.0f) continue;
                nz = 1;
                const float *pj = proj + (k0 + j) * H;
                for (int h = 0; h < H; h++) acc[h] += v * pj[h];
            }
            if (!nz) { cid[i] = -1; zeros++; continue; }
            uint64_t c = 0;
            for (int h = 0; h < H; h++) c |= (uint64_t)(acc[h] > 0.0f) << h;
            /* open addressing on the code: cap is a power of two >= 2 nb */
            uint64_t hs = c * 0x9E3779B97F4A7C15ull;
            int64_t s = (int64_t)(hs >> 40) & (cap - 1);
            while (table[s] >= 0 && code[table[s]] != c) s = (s + 1) & (cap - 1);
            if (table[s] < 0) {
                table[s] = nc;
                code[nc] = c;
                cnt[nc] = 0;
                memset(cent + nc * len, 0, sizeof(float) * (size_t)len);
                nc++;
            }
            const int64_t k = table[s];
            cid[i] = k;
            cnt[k]++;
            float *ck = cent + k * len;
            for (int64_t j = 0; j < len; j++) ck[j] += xr[j];
        }
        /* centroid products: prod[k] = mean_k @ W[k0:k1] */
        for (int64_t k = 0; k < nc; k++) {
            float *pk = prod + k * M;
            const float inv = 1.0f / (float)cnt[k];
            const float *ck = cent + k * len;
            for (int64_t m = 0; m < M; m++) pk[m] = 0.0f;
            for (int64_t j = 0; j < len; j++) {
                const float v = ck[j] * inv;
                const float *wj = W + (k0 + j) * M;
                for (int64_t m = 0; m < M; m++) pk[m] += v * wj[m];
            }
        }
        /* reuse: every member row gets its cluster's product */
        for (int64_t i = 0; i < nb; i++) {
            if (cid[i] < 0) continue;
            const float *pk = prod + cid[i] * M;
            float *yr = Y + (r0 + i) * M;
            for (int64_t m = 0; m < M; m++) yr[m] += pk[m];
        }
        *n_zero_rows = zeros;
        return nc;
    }

    /* Whole reuse matmul: row blocks in parallel (each owns its rows of Y), positions in
     * order. clusters / zero_rows [n_blocks, n_pos]: per (block, position), the nonzero
     * clusters and the all-zero sub-vectors. */
    static int jr_reuse_matmul(const float *X, int64_t N, int64_t K, const float *W, int64_t M,
                               const float *proj, int H, int64_t sub_len, int64_t block_rows,
                               float *Y, int64_t *clusters, int64_t *zero_rows, int nthreads) {
        const int64_t n_pos = (K + sub_len - 1) / sub_len;
        const int64_t n_blocks = (N + block_rows - 1) / block_rows;
        int failed = 0;
        memset(Y, 0, sizeof(float) * (size_t)(N * M));
        #pragma omp parallel num_threads(jr_threads(nthreads)) if (n_blocks > 1)
        {
            int64_t cap = 16;
            while (cap < 2 * block_rows) cap <<= 1;
            uint64_t *code = (uint64_t *)malloc(sizeof(uint64_t) * (size_t)block_rows);
            int64_t *cid = (int64_t *)malloc(sizeof(int64_t) * (size_t)block_rows);
            int64_t *table = (int64_t *)malloc(sizeof(int64_t) * (size_t)cap);
            float *cent = (float *)malloc(sizeof(float) * (size_t)(block_rows * sub_len));
            int64_t *cnt = (int64_t *)malloc(sizeof(int64_t) * (size_t)block_rows);
            float *prod = (float *)malloc(sizeof(float) * (size_t)(block_rows * M));
            if (!code || !cid || !table || !cent || !cnt || !prod) {
                #pragma omp atomic write
                failed = 1;
            } else {
                #pragma omp for schedule(dynamic, 1)
                for (int64_t b = 0; b < n_blocks; b++) {
                    const int64_t r0 = b * block_rows;
                    const int64_t r1 = r0 + block_rows < N ? r0 + block_rows : N;
                    for (int64_t p = 0; p < n_pos; p++) {
                        const int64_t k0 = p * sub_len;
                        const int64_t k1 = k0 + sub_len < K ? k0 + sub_len : K;
                        clusters[b * n_pos + p] = jr_position(X, K, W, M, proj, H, r0, r1, k0,
                                                              k1, Y, code, cid, table, cap,
                                                              cent, cnt, prod,
                                                              &zero_rows[b * n_pos + p]);
                    }
                }
            }
            free(code); free(cid); free(table); free(cent); free(cnt); free(prod);
        }
        return failed;
    }
    """
    int jr_reuse_matmul(const float *X, int64_t N, int64_t K, const float *W, int64_t M,
                        const float *proj, int H, int64_t sub_len, int64_t block_rows,
                        float *Y, int64_t *clusters, int64_t *zero_rows, int nthreads) nogil

MAX_HASHES = 64


def _matrix(a, name, rows=None, cols=None):
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(a).__name__}")
    if a.dtype != np.float32:
        raise TypeError(f"{name} must have dtype float32, got {a.dtype}")
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {a.shape}")
    if rows is not None and a.shape[0] != rows:
        raise ValueError(f"{name} must have {rows} rows, got shape {a.shape}")
    if cols is not None and a.shape[1] != cols:
        raise ValueError(f"{name} must have {cols} columns, got shape {a.shape}")
    if a.size and not np.isfinite(a).all():
        raise ValueError(f"{name} must be finite (no NaN or inf)")
    return np.ascontiguousarray(a)


def reuse_matmul_kernel(X, W, proj, int sub_len, int64_t block_rows, int nthreads=0):
    """(Y [N, M], clusters, zero_rows), the last two [n_blocks, n_pos] int64.

    X [N, K], W [K, M], proj [K, H] float32 (H = n_hashes <= 64 sign bits per sub-vector;
    the rows of proj at a position's columns are that position's projections).
    clusters[b, p]: nonzero clusters of row block b at sub-vector position p; zero_rows[b, p]:
    its all-zero sub-vectors (one more cluster, whose product is zero and skipped).
    """
    X = _matrix(X, "X")
    cdef int64_t N = X.shape[0]
    cdef int64_t K = X.shape[1]
    W = _matrix(W, "W", rows=K)
    cdef int64_t M = W.shape[1]
    proj = _matrix(proj, "proj", rows=K)
    cdef int H = proj.shape[1]
    if not 1 <= H <= MAX_HASHES:
        raise ValueError(f"n_hashes (proj columns) must be in 1..{MAX_HASHES}, got {H}")
    if K < 1:
        raise ValueError("X must have at least one column")
    if not 1 <= sub_len <= K:
        raise ValueError(f"sub_len must be in 1..{K} (the columns of X), got {sub_len}")
    if block_rows < 1:
        raise ValueError(f"block_rows must be >= 1, got {block_rows}")
    cdef int64_t n_pos = (K + sub_len - 1) // sub_len
    cdef int64_t n_blocks = (N + block_rows - 1) // block_rows
    Y = np.zeros((N, M), dtype=np.float32)
    clusters = np.zeros((n_blocks, n_pos), dtype=np.int64)
    zero_rows = np.zeros((n_blocks, n_pos), dtype=np.int64)
    if N == 0 or M == 0:
        return Y, clusters, zero_rows
    block_rows = min(block_rows, N)
    cdef float[:, ::1] xv = X
    cdef float[:, ::1] wv = W
    cdef float[:, ::1] pv = proj
    cdef float[:, ::1] yv = Y
    cdef int64_t[:, ::1] cv = clusters
    cdef int64_t[:, ::1] zv = zero_rows
    cdef int failed
    with nogil:
        failed = jr_reuse_matmul(&xv[0, 0], N, K, &wv[0, 0], M, &pv[0, 0], H, sub_len,
                                 block_rows, &yv[0, 0], &cv[0, 0], &zv[0, 0], nthreads)
    if failed:
        raise MemoryError("reuse_matmul: could not allocate per-thread scratch")
    return Y, clusters, zero_rows
