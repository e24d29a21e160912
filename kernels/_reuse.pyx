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

    /* 16-float vectors (GCC vector extension; one zmm with AVX-512). aligned(4): no
     * alignment needed for loads. */
    typedef float jr_v16 __attribute__((vector_size(64), aligned(4)));
    static inline jr_v16 jr_load(const float *p) { jr_v16 v; memcpy(&v, p, sizeof v); return v; }
    static inline void jr_store(float *p, jr_v16 v) { memcpy(p, &v, sizeof v); }

    #if defined(__AVX512F__)
    #include <immintrin.h>
    static inline uint64_t jr_signbits(jr_v16 v) {
        __m512 x;
        memcpy(&x, &v, sizeof x);
        return (uint64_t)_mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_GT_OQ);
    }
    #else
    static inline uint64_t jr_signbits(jr_v16 v) {
        uint64_t c = 0;
        for (int h = 0; h < 16; h++) c |= (uint64_t)(v[h] > 0.0f) << h;
        return c;
    }
    #endif

    /* out[0:n] = scale * sum_j c[j] * B[j*ldb + 0:n] for j < len: the centroid times its
     * slice of W. 128 columns at a time in eight register accumulators: enough independent
     * FMA chains to hide the FMA latency, and no store per j. */
    static void jr_vecmat(const float *c, int64_t len, float scale, const float *B, int64_t ldb,
                          int64_t n, float *out) {
        int64_t m = 0;
        for (; m + 128 <= n; m += 128) {
            jr_v16 a[8] = {{0}, {0}, {0}, {0}, {0}, {0}, {0}, {0}};
            for (int64_t j = 0; j < len; j++) {
                const float v = c[j];
                const float *b = B + j * ldb + m;
                for (int u = 0; u < 8; u++) a[u] += v * jr_load(b + 16 * u);
            }
            for (int u = 0; u < 8; u++) jr_store(out + m + 16 * u, a[u] * scale);
        }
        for (; m + 32 <= n; m += 32) {
            jr_v16 a0 = {0}, a1 = {0};
            for (int64_t j = 0; j < len; j++) {
                a0 += c[j] * jr_load(B + j * ldb + m);
                a1 += c[j] * jr_load(B + j * ldb + m + 16);
            }
            jr_store(out + m, a0 * scale); jr_store(out + m + 16, a1 * scale);
        }
        for (; m + 16 <= n; m += 16) {
            jr_v16 a0 = {0};
            for (int64_t j = 0; j < len; j++) a0 += c[j] * jr_load(B + j * ldb + m);
            jr_store(out + m, a0 * scale);
        }
        for (; m < n; m++) {
            float a = 0.0f;
            for (int64_t j = 0; j < len; j++) a += c[j] * B[j * ldb + m];
            out[m] = a * scale;
        }
    }

    /* Codes of nb rows of X at columns k0..k0+len: bit h = (x . proj_h > thr[h]).
     * projT [K, nv*16]: each column's projection coefficients, zero-padded to whole vectors;
     * thr [nv*16]: this position's thresholds (0 for plain sign hashing; padded lanes must
     * have thr 0, so they add no bit). */
    static void jr_codes(const float *X, int64_t K, const float *projT, const float *thr, int nv,
                         int64_t r0, int64_t nb, int64_t k0, int64_t len, uint64_t *code) {
        const int64_t hp = (int64_t)nv * 16;
        const jr_v16 t0 = jr_load(thr);
        if (nv == 1) {
            /* eight rows at a time (a GEMM micro-kernel): each projection load feeds eight
             * independent FMA chains, so the FMAs are not waiting on each other */
            int64_t i = 0;
            for (; i + 8 <= nb; i += 8) {
                const float *xs = X + (r0 + i) * K + k0;
                jr_v16 a[8];
                for (int u = 0; u < 8; u++) a[u] = -t0;
                for (int64_t j = 0; j < len; j++) {
                    const jr_v16 p = jr_load(projT + (k0 + j) * hp);
                    for (int u = 0; u < 8; u++) a[u] += xs[u * K + j] * p;
                }
                for (int u = 0; u < 8; u++) code[i + u] = jr_signbits(a[u]);
            }
            for (; i < nb; i++) {
                const float *x0 = X + (r0 + i) * K + k0;
                jr_v16 a0 = -t0;
                for (int64_t j = 0; j < len; j++) a0 += x0[j] * jr_load(projT + (k0 + j) * hp);
                code[i] = jr_signbits(a0);
            }
            return;
        }
        int64_t i0 = 0;
        if (nv == 2) {
            /* 17..32 hashes: four rows x two vectors of accumulators */
            const jr_v16 t1 = jr_load(thr + 16);
            for (; i0 + 4 <= nb; i0 += 4) {
                const float *xs = X + (r0 + i0) * K + k0;
                jr_v16 a[4], b[4];
                for (int u = 0; u < 4; u++) { a[u] = -t0; b[u] = -t1; }
                for (int64_t j = 0; j < len; j++) {
                    const jr_v16 p = jr_load(projT + (k0 + j) * hp);
                    const jr_v16 q = jr_load(projT + (k0 + j) * hp + 16);
                    for (int u = 0; u < 4; u++) {
                        const float v = xs[u * K + j];
                        a[u] += v * p;
                        b[u] += v * q;
                    }
                }
                for (int u = 0; u < 4; u++) code[i0 + u] = jr_signbits(a[u]) | jr_signbits(b[u]) << 16;
            }
        }
        for (int64_t i = i0; i < nb; i++) {
            const float *x0 = X + (r0 + i) * K + k0;
            jr_v16 a[4];
            for (int v = 0; v < nv; v++) a[v] = -jr_load(thr + 16 * v);
            for (int64_t j = 0; j < len; j++) {
                const float *pj = projT + (k0 + j) * hp;
                for (int v = 0; v < nv; v++) a[v] += x0[j] * jr_load(pj + 16 * v);
            }
            uint64_t c = 0;
            for (int v = 0; v < nv; v++) c |= jr_signbits(a[v]) << (16 * v);
            code[i] = c;
        }
    }

    /* Cluster the rows r0..r1 of X at columns k0..k1 (len = k1-k0) and add the reused
     * products into Y. Scratch (per thread): code [nb], cid [nb], key [nb], table [cap],
     * cent [nb*len], cnt [nb], prod [nb*M]. Returns the number of nonzero clusters;
     * *n_zero_rows gets the number of all-zero sub-vectors (they form one more cluster
     * whose product is skipped). */
    static int64_t jr_position(const float *X, int64_t K, const float *W, int64_t M,
                               const float *projT, const float *thr, int nv, int64_t r0, int64_t r1, int64_t k0,
                               int64_t k1, float *Y, uint64_t *code, int32_t *cid,
                               uint64_t *key, int32_t *table, int64_t cap, float *cent,
                               int32_t *cnt, float *prod, int64_t *n_zero_rows) {
        const int64_t nb = r1 - r0, len = k1 - k0;
        int64_t nc = 0, zeros = 0;
        jr_codes(X, K, projT, thr, nv, r0, nb, k0, len, code);
        for (int64_t s = 0; s < cap; s++) table[s] = -1;
        for (int64_t i = 0; i < nb; i++) {
            const float *xr = X + (r0 + i) * K + k0;
            int nz = 0;
            for (int64_t j = 0; j < len; j++) nz |= xr[j] != 0.0f;
            if (!nz) { cid[i] = -1; zeros++; continue; }
            const uint64_t c = code[i];
            /* open addressing on the code: cap is a power of two >= 2 nb */
            int64_t s = (int64_t)((c * 0x9E3779B97F4A7C15ull) >> 40) & (cap - 1);
            while (table[s] >= 0 && key[table[s]] != c) s = (s + 1) & (cap - 1);
            if (table[s] < 0) {
                table[s] = (int32_t)nc;
                key[nc] = c;
                cnt[nc] = 0;
                memset(cent + nc * len, 0, sizeof(float) * (size_t)len);
                nc++;
            }
            const int64_t k = table[s];
            cid[i] = (int32_t)k;
            cnt[k]++;
            float *ck = cent + k * len;
            for (int64_t j = 0; j < len; j++) ck[j] += xr[j];
        }
        /* centroid products: prod[k] = mean_k @ W[k0:k1] */
        for (int64_t k = 0; k < nc; k++)
            jr_vecmat(cent + k * len, len, 1.0f / (float)cnt[k], W + k0 * M, M, M, prod + k * M);
        /* reuse: every member row gets its cluster's product */
        for (int64_t i = 0; i < nb; i++) {
            if (cid[i] < 0) continue;
            const float *pk = prod + (int64_t)cid[i] * M;
            float *yr = Y + (r0 + i) * M;
            int64_t m = 0;
            for (; m + 16 <= M; m += 16) jr_store(yr + m, jr_load(yr + m) + jr_load(pk + m));
            for (; m < M; m++) yr[m] += pk[m];
        }
        *n_zero_rows = zeros;
        return nc;
    }

    /* Whole reuse matmul: row blocks in parallel (each owns its rows of Y), positions in
     * order. clusters / zero_rows [n_blocks, n_pos]: per (block, position), the nonzero
     * clusters and the all-zero sub-vectors. */
    static int jr_reuse_matmul(const float *X, int64_t N, int64_t K, const float *W, int64_t M,
                               const float *projT, const float *thr, int nv, int64_t sub_len,
                               int64_t block_rows, float *Y, int64_t *clusters,
                               int64_t *zero_rows, int nthreads) {
        const int64_t n_pos = (K + sub_len - 1) / sub_len;
        const int64_t n_blocks = (N + block_rows - 1) / block_rows;
        int failed = 0;
        memset(Y, 0, sizeof(float) * (size_t)(N * M));
        #pragma omp parallel num_threads(jr_threads(nthreads)) if (n_blocks > 1)
        {
            int64_t cap = 16;
            while (cap < 2 * block_rows) cap <<= 1;
            uint64_t *code = (uint64_t *)malloc(sizeof(uint64_t) * (size_t)block_rows);
            uint64_t *key = (uint64_t *)malloc(sizeof(uint64_t) * (size_t)block_rows);
            int32_t *cid = (int32_t *)malloc(sizeof(int32_t) * (size_t)block_rows);
            int32_t *table = (int32_t *)malloc(sizeof(int32_t) * (size_t)cap);
            float *cent = (float *)malloc(sizeof(float) * (size_t)(block_rows * sub_len));
            int32_t *cnt = (int32_t *)malloc(sizeof(int32_t) * (size_t)block_rows);
            float *prod = (float *)malloc(sizeof(float) * (size_t)(block_rows * M));
            if (!code || !key || !cid || !table || !cent || !cnt || !prod) {
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
                        clusters[b * n_pos + p] = jr_position(X, K, W, M, projT,
                                                              thr + p * 16 * nv, nv, r0, r1,
                                                              k0, k1, Y, code, cid, key, table,
                                                              cap, cent, cnt, prod,
                                                              &zero_rows[b * n_pos + p]);
                    }
                }
            }
            free(code); free(key); free(cid); free(table); free(cent); free(cnt); free(prod);
        }
        return failed;
    }
    /* Conv with reuse shared across kernel offsets. x NCHW [n_img, C, Hh, Wd]. A
     * sub-vector is a chunk of sub_len channels of one input pixel; it is the sub-vector
     * of every im2col row that reads that pixel, so it is hashed and clustered once (per
     * block of images) instead of R*S times. Per chunk g and cluster k the products
     * cent_k @ W3[c0 .. c0+len] are formed for all (r, s) at once, and each output pixel
     * adds, per (r, s), the product of the cluster its input pixel is in.
     * W3 [C, R*S*M]: W3[c][(r*S + s)*M + m] = weight[m, c, r, s]. bias [M] or NULL.
     * y NCHW [n_img, M, P, Q] (fully written). Layout changes happen per block, in cache.
     * clusters / zero_px [n_blocks, n_chunks]. Returns nonzero on allocation failure. */
    static int jr_reuse_conv(const float *x, int64_t n_img, int64_t Hh, int64_t Wd, int64_t C,
                             const float *projT, const float *thr, int nv, int64_t sub_len,
                             const float *W3, const float *bias, int64_t M, int64_t R, int64_t S,
                             int64_t stride, int64_t pad, int64_t P, int64_t Q,
                             int64_t block_imgs, float *y, int64_t *clusters, int64_t *zero_px,
                             int nthreads) {
        const int64_t n_chunks = (C + sub_len - 1) / sub_len;
        const int64_t n_blocks = (n_img + block_imgs - 1) / block_imgs;
        const int64_t px_img = Hh * Wd, out_img = P * Q, RS = R * S;
        const int64_t cap_px = block_imgs * px_img;
        int failed = 0;
        #pragma omp parallel num_threads(jr_threads(nthreads)) if (n_blocks > 1)
        {
            int64_t cap = 16;
            while (cap < 2 * cap_px) cap <<= 1;
            uint64_t *code = (uint64_t *)malloc(sizeof(uint64_t) * (size_t)cap_px);
            uint64_t *key = (uint64_t *)malloc(sizeof(uint64_t) * (size_t)cap_px);
            int32_t *cid = (int32_t *)malloc(sizeof(int32_t) * (size_t)cap_px);
            int32_t *table = (int32_t *)malloc(sizeof(int32_t) * (size_t)cap);
            float *cent = (float *)malloc(sizeof(float) * (size_t)(cap_px * sub_len));
            int32_t *cnt = (int32_t *)malloc(sizeof(int32_t) * (size_t)cap_px);
            float *prod = (float *)malloc(sizeof(float) * (size_t)(cap_px * RS * M));
            float *xs = (float *)malloc(sizeof(float) * (size_t)(cap_px * C));     /* NHWC */
            const float **src = (const float **)malloc(sizeof(float *) * (size_t)RS);
            if (!code || !key || !cid || !table || !cent || !cnt || !prod || !xs || !src) {
                #pragma omp atomic write
                failed = 1;
            } else {
                #pragma omp for schedule(dynamic, 1)
                for (int64_t b = 0; b < n_blocks; b++) {
                    const int64_t i0 = b * block_imgs;
                    const int64_t i1 = i0 + block_imgs < n_img ? i0 + block_imgs : n_img;
                    const int64_t nb = (i1 - i0) * px_img, nout = (i1 - i0) * out_img;
                    /* NCHW -> channels-last, one image at a time (its planes sit in cache) */
                    for (int64_t im = i0; im < i1; im++) {
                        const float *xi = x + im * C * px_img;
                        float *xo = xs + (im - i0) * px_img * C;
                        for (int64_t t = 0; t < px_img; t++)
                            for (int64_t c = 0; c < C; c++) xo[t * C + c] = xi[c * px_img + t];
                    }
                    float *ys = y + i0 * out_img * M;      /* this block's rows of y (NHWC) */
                    for (int64_t o = 0; o < nout; o++)
                        for (int64_t m = 0; m < M; m++) ys[o * M + m] = bias ? bias[m] : 0.0f;
                    for (int64_t g = 0; g < n_chunks; g++) {
                        const int64_t c0 = g * sub_len;
                        const int64_t len = c0 + sub_len < C ? sub_len : C - c0;
                        int64_t nc = 0, zeros = 0;
                        jr_codes(xs, C, projT, thr + g * 16 * nv, nv, 0, nb, c0, len, code);
                        for (int64_t t = 0; t < cap; t++) table[t] = -1;
                        for (int64_t i = 0; i < nb; i++) {
                            const float *xr = xs + i * C + c0;
                            int nz = 0;
                            for (int64_t j = 0; j < len; j++) nz |= xr[j] != 0.0f;
                            if (!nz) { cid[i] = -1; zeros++; continue; }
                            const uint64_t c = code[i];
                            int64_t t = (int64_t)((c * 0x9E3779B97F4A7C15ull) >> 40) & (cap - 1);
                            while (table[t] >= 0 && key[table[t]] != c) t = (t + 1) & (cap - 1);
                            if (table[t] < 0) {
                                table[t] = (int32_t)nc;
                                key[nc] = c;
                                cnt[nc] = 0;
                                memset(cent + nc * len, 0, sizeof(float) * (size_t)len);
                                nc++;
                            }
                            const int64_t k = table[t];
                            cid[i] = (int32_t)k;
                            cnt[k]++;
                            float *ck = cent + k * len;
                            for (int64_t j = 0; j < len; j++) ck[j] += xr[j];
                        }
                        /* prod[k*RS*M + rs*M + m] = mean_k @ W3[c0 .. c0+len] (all (r, s)) */
                        for (int64_t k = 0; k < nc; k++)
                            jr_vecmat(cent + k * len, len, 1.0f / (float)cnt[k], W3 + c0 * RS * M,
                                      RS * M, RS * M, prod + k * RS * M);
                        /* each output pixel sums, in registers, the products of what it reads */
                        for (int64_t o = 0; o < nout; o++) {
                            const int64_t im = o / out_img, oy = (o % out_img) / Q, ox = o % Q;
                            int ns = 0;
                            for (int64_t r = 0; r < R; r++) {
                                const int64_t iy = oy * stride + r - pad;
                                if (iy < 0 || iy >= Hh) continue;
                                for (int64_t s2 = 0; s2 < S; s2++) {
                                    const int64_t ix = ox * stride + s2 - pad;
                                    if (ix < 0 || ix >= Wd) continue;
                                    const int32_t k = cid[im * px_img + iy * Wd + ix];
                                    if (k >= 0) src[ns++] = prod + ((int64_t)k * RS + r * S + s2) * M;
                                }
                            }
                            float *yr = ys + o * M;
                            int64_t m = 0;
                            /* three partial sums per vector: the adds do not wait on each other */
                            for (; m + 32 <= M; m += 32) {
                                jr_v16 a0 = jr_load(yr + m), a1 = jr_load(yr + m + 16);
                                jr_v16 b0 = {0}, b1 = {0}, c0 = {0}, c1 = {0};
                                int u = 0;
                                for (; u + 3 <= ns; u += 3) {
                                    a0 += jr_load(src[u] + m);     a1 += jr_load(src[u] + m + 16);
                                    b0 += jr_load(src[u + 1] + m); b1 += jr_load(src[u + 1] + m + 16);
                                    c0 += jr_load(src[u + 2] + m); c1 += jr_load(src[u + 2] + m + 16);
                                }
                                for (; u < ns; u++) {
                                    a0 += jr_load(src[u] + m);
                                    a1 += jr_load(src[u] + m + 16);
                                }
                                jr_store(yr + m, a0 + b0 + c0); jr_store(yr + m + 16, a1 + b1 + c1);
                            }
                            for (; m + 16 <= M; m += 16) {
                                jr_v16 a0 = jr_load(yr + m);
                                for (int u = 0; u < ns; u++) a0 += jr_load(src[u] + m);
                                jr_store(yr + m, a0);
                            }
                            for (; m < M; m++) {
                                float a = yr[m];
                                for (int u = 0; u < ns; u++) a += src[u][m];
                                yr[m] = a;
                            }
                        }
                        clusters[b * n_chunks + g] = nc;
                        zero_px[b * n_chunks + g] = zeros;
                    }
                }
            }
            free(code); free(key); free(cid); free(table); free(cent); free(cnt); free(prod);
            free(xs); free((void *)src);
        }
        return failed;
    }
    """
    int jr_reuse_matmul(const float *X, int64_t N, int64_t K, const float *W, int64_t M,
                        const float *projT, const float *thr, int nv, int64_t sub_len,
                        int64_t block_rows, float *Y, int64_t *clusters, int64_t *zero_rows,
                        int nthreads) nogil
    int jr_reuse_conv(const float *x, int64_t n_img, int64_t Hh, int64_t Wd, int64_t C,
                      const float *projT, const float *thr, int nv, int64_t sub_len,
                      const float *W3, const float *bias, int64_t M, int64_t R, int64_t S,
                      int64_t stride, int64_t pad, int64_t P, int64_t Q,
                      int64_t block_imgs, float *y, int64_t *clusters, int64_t *zero_px,
                      int nthreads) nogil

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
    return np.ascontiguousarray(a)


def _thresholds(thr, int n_pos, int H, int nv):
    """[n_pos, nv*16] float32 thresholds, zero-padded; None means 0 (plain sign hashing)."""
    out = np.zeros((n_pos, nv * 16), dtype=np.float32)
    if thr is not None:
        thr = _matrix(thr, "thresholds", rows=n_pos, cols=H)
        if not np.isfinite(thr).all():
            raise ValueError("thresholds must be finite")
        out[:, :H] = thr
    return out


def reuse_matmul_kernel(X, W, proj, int sub_len, int64_t block_rows, int nthreads=0,
                        thresholds=None):
    """(Y [N, M], clusters, zero_rows), the last two [n_blocks, n_pos] int64.

    X [N, K], W [K, M], proj [K, H] float32 (H = n_hashes <= 64 sign bits per sub-vector;
    the rows of proj at a position's columns are that position's projections).
    thresholds [n_pos, H] float32 or None: bit h of position p is (x . proj_h > thr[p, h]).
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
    if block_rows >= 2**30:
        raise ValueError(f"block_rows must be < 2**30, got {block_rows}")
    # projections padded to whole 16-float vectors (zero lanes give zero bits)
    cdef int nv = (H + 15) // 16
    projT = np.zeros((K, nv * 16), dtype=np.float32)
    projT[:, :H] = proj
    thr = _thresholds(thresholds, n_pos, H, nv)
    cdef float[:, ::1] tv = thr
    cdef float[:, ::1] xv = X
    cdef float[:, ::1] wv = W
    cdef float[:, ::1] pv = projT
    cdef float[:, ::1] yv = Y
    cdef int64_t[:, ::1] cv = clusters
    cdef int64_t[:, ::1] zv = zero_rows
    cdef int failed
    with nogil:
        failed = jr_reuse_matmul(&xv[0, 0], N, K, &wv[0, 0], M, &pv[0, 0], &tv[0, 0], nv, sub_len,
                                 block_rows, &yv[0, 0], &cv[0, 0], &zv[0, 0], nthreads)
    if failed:
        raise MemoryError("reuse_matmul: could not allocate per-thread scratch")
    return Y, clusters, zero_rows


def reuse_conv_kernel(x, weight, proj, int sub_len, int stride, int pad, int64_t block_imgs,
                      int nthreads=0, thresholds=None, bias=None):
    """Conv2d with deep reuse shared across kernel offsets: (y [N, M, P, Q], clusters,
    zero_px), the last two [n_blocks, n_chunks] int64 (per block of images and channel chunk:
    nonzero clusters of input pixels, all-zero pixel chunks). y is an NCHW view of
    channels-last memory (like torch.channels_last): y.transpose(0, 2, 3, 1) is contiguous.

    x [N, C, H, W], weight [M, C, R, S], proj [C, n_hashes] float32; sub-vectors are chunks
    of sub_len channels of one input pixel. thresholds [n_chunks, n_hashes] or None as in
    reuse_matmul_kernel; bias [M] float32 or None.
    """
    if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim != 4:
        raise TypeError(f"x must be a 4-D float32 numpy.ndarray (NCHW), got "
                        f"{getattr(x, 'dtype', type(x).__name__)} {getattr(x, 'shape', '')}")
    if not isinstance(weight, np.ndarray) or weight.dtype != np.float32 or weight.ndim != 4:
        raise TypeError("weight must be a 4-D float32 numpy.ndarray [M, C, R, S]")
    cdef int64_t N = x.shape[0], C = x.shape[1], Hh = x.shape[2], Wd = x.shape[3]
    cdef int64_t M = weight.shape[0], R = weight.shape[2], S = weight.shape[3]
    if weight.shape[1] != C:
        raise ValueError(f"weight must have {C} input channels, got {weight.shape[1]}")
    proj = _matrix(proj, "proj", rows=C)
    cdef int H = proj.shape[1]
    if not 1 <= H <= MAX_HASHES:
        raise ValueError(f"n_hashes (proj columns) must be in 1..{MAX_HASHES}, got {H}")
    if not 1 <= sub_len <= C:
        raise ValueError(f"sub_len must be in 1..{C} (the input channels), got {sub_len}")
    if stride < 1 or pad < 0:
        raise ValueError(f"stride must be >= 1 and pad >= 0, got stride={stride}, pad={pad}")
    if Hh + 2 * pad < R or Wd + 2 * pad < S or R < 1 or S < 1:
        raise ValueError(f"kernel {R}x{S} does not fit the padded input {Hh + 2 * pad}x{Wd + 2 * pad}")
    if block_imgs < 1:
        raise ValueError(f"block_imgs must be >= 1, got {block_imgs}")
    if bias is not None:
        if not isinstance(bias, np.ndarray) or bias.dtype != np.float32 or bias.shape != (M,):
            raise ValueError(f"bias must be a float32 array of shape ({M},)")
        bias = np.ascontiguousarray(bias)
    cdef int64_t P = (Hh + 2 * pad - R) // stride + 1
    cdef int64_t Q = (Wd + 2 * pad - S) // stride + 1
    cdef int64_t n_chunks = (C + sub_len - 1) // sub_len
    block_imgs = max(1, min(block_imgs, N))
    cdef int64_t n_blocks = (N + block_imgs - 1) // block_imgs if N else 0
    if block_imgs * Hh * Wd >= 2**30:
        raise ValueError("block_imgs * H * W must be < 2**30")
    y_nhwc = np.empty((N, P, Q, M), dtype=np.float32)
    y = y_nhwc.transpose(0, 3, 1, 2)
    clusters = np.zeros((n_blocks, n_chunks), dtype=np.int64)
    zero_px = np.zeros((n_blocks, n_chunks), dtype=np.int64)
    if N == 0 or M == 0 or P * Q == 0:
        y[:] = 0 if bias is None else bias[None, :, None, None]
        return y, clusters, zero_px
    x = np.ascontiguousarray(x)
    W3 = np.ascontiguousarray(weight.transpose(1, 2, 3, 0)).reshape(C, R * S * M)
    cdef int nv = (H + 15) // 16
    projT = np.zeros((C, nv * 16), dtype=np.float32)
    projT[:, :H] = proj
    thr = _thresholds(thresholds, n_chunks, H, nv)
    cdef float[:, ::1] tv = thr
    cdef float[:, :, :, ::1] xv = x
    cdef float[:, ::1] wv = W3
    cdef float[:, ::1] pv = projT
    cdef float[:, :, :, ::1] yv = y_nhwc
    cdef int64_t[:, ::1] cv = clusters
    cdef int64_t[:, ::1] zv = zero_px
    cdef const float *bp = NULL
    cdef float[::1] bv
    if bias is not None:
        bv = bias
        bp = &bv[0]
    cdef int failed
    with nogil:
        failed = jr_reuse_conv(&xv[0, 0, 0, 0], N, Hh, Wd, C, &pv[0, 0], &tv[0, 0], nv, sub_len,
                               &wv[0, 0], bp, M, R, S, stride, pad, P, Q, block_imgs,
                               &yv[0, 0, 0, 0], &cv[0, 0], &zv[0, 0], nthreads)
    if failed:
        raise MemoryError("reuse_conv: could not allocate per-thread scratch")
    return y, clusters, zero_px
