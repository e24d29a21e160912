# cython: boundscheck=False, cdivision=True
"""Cython kernel of adaptive deep reuse (Ning & Shen, ICDE 2019 / ICS 2019).

Y ~= X @ W for X [N, K], W [K, M]: each row of X is cut into sub-vectors of length sub_len
(the last one may be shorter); within a block of rows, the sub-vectors at one position are
clustered by H sign bits of random projections; one centroid (mean) per cluster is
multiplied by the matching rows of W and the product is added to every member row.
All-zero sub-vectors form their own cluster whose product is zero and is skipped.

The conv kernel (reuse_conv_kernel) clusters channel chunks of input pixels, once for all
R*S kernel offsets. Per block of images and chunk: each image's planes are turned
channels-last in L1, hashed (a GEMM micro-kernel; bfloat16 VDPBF16PS where the CPU has
AVX512-BF16, HASH_BF16) and inserted into an open-addressing table (slots stamped with a
generation, so no clearing; slots prefetched). Clusters with several members get their
R*S products in the block's table; a singleton's product (over half the clusters on noisy
inputs) is formed per image and read back from L1/L2. Each output pixel then sums R*S
products through a zero-padded pointer map (no branches), written straight to y (streamed
past the caches when y is large). Products skip the zero entries of a mean.

The Python API is kernels/reuse.py (this file is not reuse.pyx: an extension
kernels.reuse would shadow that module); this module checks its inputs before the C loop runs.
"""
import numpy as np
cimport numpy as cnp
from libc.stdint cimport int64_t, uint64_t

from kernels._checks import matrix

cnp.import_array()

cdef extern from *:
    """
    #include <stdint.h>
    #include <stdlib.h>
    #include <string.h>
    #if defined(__AVX512F__)
    #include <immintrin.h>
    #endif
    #ifdef _OPENMP
    #include <omp.h>
    #endif

    /* Scratch on 64-byte boundaries, like the weight rows (see _aligned_empty): the kernels
     * load and store whole 64-byte vectors at multiples of 64 bytes from a buffer's start, and
     * a vector that straddles two cache lines costs two accesses (weight rows at malloc's
     * 16-byte alignment made the products 25-30% slower in the processes where they fell off
     * the line). zero: the bytes cleared. */
    static void *jr_alloc(size_t bytes, int zero) {
        const size_t whole = (bytes + 63) / 64 * 64;
        void *p = aligned_alloc(64, whole ? whole : 64);
        if (p && zero) memset(p, 0, whole);
        return p;
    }

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
    typedef int32_t jr_i16 __attribute__((vector_size(64)));
    static inline jr_v16 jr_load(const float *p) { jr_v16 v; memcpy(&v, p, sizeof v); return v; }
    static inline void jr_store(float *p, jr_v16 v) { memcpy(p, &v, sizeof v); }

    /* Store that bypasses the caches (64-byte aligned p) where available: an output written
     * once and larger than the caches need not be read in first. jr_stream_done() orders the
     * streamed stores before the results are used. */
    #if defined(__AVX512F__)
    static inline void jr_stream(float *p, jr_v16 v) {
        __m512 x;
        memcpy(&x, &v, sizeof x);
        _mm512_stream_ps(p, x);
    }
    static inline void jr_stream_done(void) { _mm_sfence(); }
    #else
    static inline void jr_stream(float *p, jr_v16 v) { jr_store(p, v); }
    static inline void jr_stream_done(void) {}
    #endif

    /* fully unroll a loop over register accumulators (else they may be kept in memory) */
    #if defined(__clang__)
    #define JR_UNROLL _Pragma("unroll")
    #elif defined(__GNUC__)
    #define JR_UNROLL _Pragma("GCC unroll 24")
    #else
    #define JR_UNROLL
    #endif

    #if defined(__AVX512F__)
    #include <immintrin.h>
    static inline uint64_t jr_signbits(jr_v16 v) {
        __m512 x;
        memcpy(&x, &v, sizeof x);
        return (uint64_t)_mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_GT_OQ);
    }
    /* any lane != 0 (NaN counts as nonzero, as x != 0.0f does) */
    static inline int jr_any_nonzero(jr_v16 v) {
        __m512 x;
        memcpy(&x, &v, sizeof x);
        return _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_NEQ_UQ) != 0;
    }
    #else
    static inline uint64_t jr_signbits(jr_v16 v) {
        uint64_t c = 0;
        for (int h = 0; h < 16; h++) c |= (uint64_t)(v[h] > 0.0f) << h;
        return c;
    }
    static inline int jr_any_nonzero(jr_v16 v) {
        jr_i16 bits;
        memcpy(&bits, &v, sizeof bits);
        int nz = 0;
        for (int h = 0; h < 16; h++) nz |= (bits[h] & 0x7fffffff) != 0;
        return nz;
    }
    #endif

    /* x != 0 on the bits: -ffast-math may fold a float compare with NaN, which must count as
     * nonzero (it propagates, as in X @ W); -0 is zero. */
    static inline int jr_is_nonzero(float x) {
        uint32_t bits;
        memcpy(&bits, &x, sizeof bits);
        return (bits & 0x7fffffffu) != 0;
    }

    static inline int jr_nonzero(const float *x, int64_t len) {
        int64_t j = 0;
        for (; j + 16 <= len; j += 16)
            if (jr_any_nonzero(jr_load(x + j))) return 1;
        for (; j < len; j++)
            if (jr_is_nonzero(x[j])) return 1;
        return 0;
    }

    /* acc[0:len] += x[0:len] */
    static inline void jr_add(float *acc, const float *x, int64_t len) {
        int64_t j = 0;
        for (; j + 16 <= len; j += 16) jr_store(acc + j, jr_load(acc + j) + jr_load(x + j));
        for (; j < len; j++) acc[j] += x[j];
    }

    /* out[0:T*16] = sum_t v[t] * B[j[t]*ldb + 0:T*16]: T register accumulators (T <= 24,
     * with the broadcast value 25 of the 32 vector registers), no store per t. The loops over
     * the accumulators must be unrolled for them to live in registers (JR_UNROLL). */
    #define JR_TILE(T) \
        static void jr_tile##T(const float *v, const int32_t *j, int64_t nnz, const float *B, \
                               int64_t ldb, float *out) { \
            jr_v16 a[T]; \
            JR_UNROLL for (int u = 0; u < T; u++) a[u] = (jr_v16){0}; \
            for (int64_t t = 0; t < nnz; t++) { \
                const float *b = B + (int64_t)j[t] * ldb; \
                JR_UNROLL for (int u = 0; u < T; u++) a[u] += v[t] * jr_load(b + 16 * u); \
            } \
            JR_UNROLL for (int u = 0; u < T; u++) jr_store(out + 16 * u, a[u]); \
        }
    JR_TILE(1) JR_TILE(2) JR_TILE(3) JR_TILE(4) JR_TILE(5) JR_TILE(6) JR_TILE(7) JR_TILE(8)
    JR_TILE(9) JR_TILE(10) JR_TILE(11) JR_TILE(12) JR_TILE(13) JR_TILE(14) JR_TILE(15) JR_TILE(16)
    JR_TILE(17) JR_TILE(18) JR_TILE(19) JR_TILE(20) JR_TILE(21) JR_TILE(22) JR_TILE(23) JR_TILE(24)
    #undef JR_TILE
    #define JR_MAX_TILE 24
    typedef void (*jr_tile_fn)(const float *, const int32_t *, int64_t, const float *, int64_t, float *);
    static const jr_tile_fn JR_TILES[JR_MAX_TILE + 1] = {
        NULL, jr_tile1, jr_tile2, jr_tile3, jr_tile4, jr_tile5, jr_tile6, jr_tile7, jr_tile8,
        jr_tile9, jr_tile10, jr_tile11, jr_tile12, jr_tile13, jr_tile14, jr_tile15, jr_tile16,
        jr_tile17, jr_tile18, jr_tile19, jr_tile20, jr_tile21, jr_tile22, jr_tile23, jr_tile24};

    /* out[0:n] = sum_t v[t] * B[j[t]*ldb + 0:n] for t < nnz: a sparse row (values v at rows j
     * of B) times B. The whole vectors are split into as few tiles as fit in registers, of
     * as equal width as possible (e.g. 288 columns: one tile of 18): each value is broadcast
     * once per tile, and a tile's zeroing and stores are paid once per tile. */
    static void jr_vecmat(const float *v, const int32_t *j, int64_t nnz, const float *B, int64_t ldb,
                          int64_t n, float *out) {
        const int64_t nvec = n / 16, tiles = (nvec + JR_MAX_TILE - 1) / JR_MAX_TILE;
        for (int64_t t0 = 0, done = 0; t0 < tiles; t0++) {
            const int64_t width = (nvec - done) / (tiles - t0);   /* the rest, split evenly */
            JR_TILES[width](v, j, nnz, B + 16 * done, ldb, out + 16 * done);
            done += width;
        }
        for (int64_t m = nvec * 16; m < n; m++) {
            float a = 0.0f;
            for (int64_t t = 0; t < nnz; t++) a += v[t] * B[(int64_t)j[t] * ldb + m];
            out[m] = a;
        }
    }

    /* The nonzero entries of c[0:len] * scale: values nzv, indices nzj; returns how many.
     * (The zero entries of a cluster mean, a quarter or more on ReLU inputs, are skipped.) */
    static int64_t jr_compact(const float *c, float scale, int64_t len, float *nzv, int32_t *nzj) {
        int64_t nnz = 0;
        for (int64_t j = 0; j < len; j++) {          /* branch-free */
            nzv[nnz] = c[j] * scale;
            nzj[nnz] = (int32_t)j;
            nnz += jr_is_nonzero(c[j]);
        }
        return nnz;
    }

    /* out[0:n] = (c[0:len] * scale) @ B[0:len, 0:n]: one cluster's product, of its mean
     * (c: the members' sum, scale: 1 / members). nzv, nzj: len scratch. */
    static void jr_product(const float *c, float scale, int64_t len, const float *B, int64_t ldb,
                           int64_t n, float *out, float *nzv, int32_t *nzj) {
        jr_vecmat(nzv, nzj, jr_compact(c, scale, len, nzv, nzj), B, ldb, n, out);
    }

    /* prod[k*n + 0:n] = (cent[k] / cnt[k]) @ B[0:len, 0:n] for k < nc (cent [nc, len]). */
    static void jr_products(const float *cent, const int32_t *cnt, int64_t nc, int64_t len,
                            const float *B, int64_t ldb, int64_t n, float *prod, float *nzv,
                            int32_t *nzj) {
        for (int64_t k = 0; k < nc; k++)
            jr_product(cent + k * len, 1.0f / (float)cnt[k], len, B, ldb, n, prod + k * n, nzv, nzj);
    }

    /* Codes of nb sub-vectors of len values, value j of sub-vector i at X[i*rs + j*cs] (row-
     * or column-major, e.g. straight from NCHW planes): bit h = (x . proj_h > thr[h]).
     * projT [len, nv*16]: each value's projection coefficients, zero-padded to whole vectors;
     * thr [nv*16]: the thresholds (0 for plain sign hashing; padded lanes must have thr 0,
     * so they add no bit). The values are broadcast one at a time, so any stride is as cheap
     * as unit stride. ROWS sub-vectors at a time (a GEMM micro-kernel, ROWS x NV accumulators):
     * each projection load feeds ROWS independent FMA chains, so the FMAs do not wait on each
     * other. */
    #define JR_CODES(ROWS, NV) \
        static int64_t jr_codes_##ROWS##x##NV(const float *X, int64_t rs, int64_t cs, \
                                              const float *projT, const float *thr, int64_t nb, \
                                              int64_t len, uint64_t *code) { \
            int64_t i0 = 0; \
            for (; i0 + ROWS <= nb; i0 += ROWS) { \
                const float *xs = X + i0 * rs; \
                jr_v16 a[ROWS][NV]; \
                JR_UNROLL for (int u = 0; u < ROWS; u++) \
                    JR_UNROLL for (int v = 0; v < NV; v++) a[u][v] = -jr_load(thr + 16 * v); \
                for (int64_t j = 0; j < len; j++) { \
                    jr_v16 p[NV]; \
                    JR_UNROLL for (int v = 0; v < NV; v++) p[v] = jr_load(projT + j * NV * 16 + 16 * v); \
                    JR_UNROLL for (int u = 0; u < ROWS; u++) { \
                        const float x = xs[u * rs + j * cs]; \
                        JR_UNROLL for (int v = 0; v < NV; v++) a[u][v] += x * p[v]; \
                    } \
                } \
                for (int u = 0; u < ROWS; u++) { \
                    uint64_t c = 0; \
                    for (int v = 0; v < NV; v++) c |= jr_signbits(a[u][v]) << (16 * v); \
                    code[i0 + u] = c; \
                } \
            } \
            return i0; \
        }
    JR_CODES(8, 1) JR_CODES(4, 2) JR_CODES(3, 3) JR_CODES(2, 4)
    #undef JR_CODES

    static void jr_codes(const float *X, int64_t rs, int64_t cs, const float *projT, const float *thr,
                         int nv, int64_t nb, int64_t len, uint64_t *code) {
        const int64_t hp = (int64_t)nv * 16;
        int64_t i0 = nv == 1 ? jr_codes_8x1(X, rs, cs, projT, thr, nb, len, code)
                   : nv == 2 ? jr_codes_4x2(X, rs, cs, projT, thr, nb, len, code)
                   : nv == 3 ? jr_codes_3x3(X, rs, cs, projT, thr, nb, len, code)
                   : jr_codes_2x4(X, rs, cs, projT, thr, nb, len, code);
        for (int64_t i = i0; i < nb; i++) {       /* rows left over */
            const float *x0 = X + i * rs;
            jr_v16 a[4];
            for (int v = 0; v < nv; v++) a[v] = -jr_load(thr + 16 * v);
            for (int64_t j = 0; j < len; j++) {
                const float *pj = projT + j * hp;
                for (int v = 0; v < nv; v++) a[v] += x0[j * cs] * jr_load(pj + 16 * v);
            }
            uint64_t c = 0;
            for (int v = 0; v < nv; v++) c |= jr_signbits(a[v]) << (16 * v);
            code[i] = c;
        }
    }

    /* Open-addressing table from code to cluster id. A slot is live only if its gen is the
     * current pass's: a new pass bumps gen instead of clearing the table. */
    typedef struct { uint64_t key; int32_t gen; int32_t id; } jr_slot;

    /* rows hashed together, then inserted while they are still in L1 */
    #define JR_CODE_ROWS 64
    /* hash-table slots prefetched this many sub-vectors ahead */
    #define JR_PREFETCH 8

    /* Add nb sub-vectors of len values with codes code[0:nb] to a clustering pass: those
     * whose codes match share a cluster. The values are rows Xr[i*ldr + 0:len]. cid[i]: the
     * sub-vector's cluster (-1 if all zero); cnt[k]: members, cent[k*len ..]: their sum. tab
     * has cap slots (a power of two >= 2 x the pass's sub-vectors) and gen is this pass's.
     * *nc (clusters so far) and *n_zero (all-zero sub-vectors) are updated. */
    static void jr_insert(const uint64_t *code, const float *Xr, int64_t ldr, int64_t nb, int64_t len,
                          jr_slot *tab, int64_t cap, int32_t gen, int32_t *cid, float *cent,
                          int32_t *cnt, int64_t *nc, int64_t *n_zero) {
        const uint64_t mask = (uint64_t)cap - 1;
        for (int64_t i = 0; i < nb && i < JR_PREFETCH; i++)
            __builtin_prefetch(&tab[((code[i] * 0x9E3779B97F4A7C15ull) >> 32) & mask]);
        for (int64_t i = 0; i < nb; i++) {
            if (i + JR_PREFETCH < nb)   /* the table is random access: ask for slots early */
                __builtin_prefetch(&tab[((code[i + JR_PREFETCH] * 0x9E3779B97F4A7C15ull) >> 32) & mask]);
            const float *xr = Xr + i * ldr;
            if (!jr_nonzero(xr, len)) { cid[i] = -1; ++*n_zero; continue; }
            const uint64_t c = code[i];
            uint64_t s = ((c * 0x9E3779B97F4A7C15ull) >> 32) & mask;
            while (tab[s].gen == gen && tab[s].key != c) s = (s + 1) & mask;
            int32_t k;
            if (tab[s].gen != gen) {
                k = (int32_t)(*nc)++;
                tab[s].key = c; tab[s].gen = gen; tab[s].id = k;
                cnt[k] = 1;
                memcpy(cent + (int64_t)k * len, xr, sizeof(float) * (size_t)len);
            } else {
                k = tab[s].id;
                cnt[k]++;
                jr_add(cent + (int64_t)k * len, xr, len);
            }
            cid[i] = k;
        }
    }

    /* jr_codes + jr_insert for nb rows X[i*ld + 0:len], JR_CODE_ROWS at a time (hashed, then
     * inserted while still in L1). code: JR_CODE_ROWS scratch. */
    static void jr_cluster_rows(const float *X, int64_t ld, int64_t nb, int64_t len, const float *projT,
                                const float *thr, int nv, jr_slot *tab, int64_t cap, int32_t gen,
                                uint64_t *code, int32_t *cid, float *cent, int32_t *cnt, int64_t *nc,
                                int64_t *n_zero) {
        for (int64_t r0 = 0; r0 < nb; r0 += JR_CODE_ROWS) {
            const int64_t n = nb - r0 < JR_CODE_ROWS ? nb - r0 : JR_CODE_ROWS;
            jr_codes(X + r0 * ld, ld, 1, projT, thr, nv, n, len, code);
            jr_insert(code, X + r0 * ld, ld, n, len, tab, cap, gen, cid + r0, cent, cnt, nc, n_zero);
        }
    }

    #if defined(__AVX512BF16__)
    /* Where the CPU has AVX512-BF16, the conv kernel hashes in bfloat16: VDPBF16PS does two
     * multiply-adds per lane, and a hash bit only flips where a projection lies within
     * bfloat16 rounding (2^-8 relative) of its threshold. Products stay float32. */
    #define JR_HASH_BF16 1

    /* rows Xr[i*ld + 0:len] as bfloat16 pairs (value 2p in the low half, 2p+1 high; an odd
     * len is padded with 0): out[i*pstride + p], pstride = a whole number of 16-pair vectors */
    static void jr_bf16_pairs(const float *Xr, int64_t ld, int64_t nb, int64_t len, int64_t pstride,
                              uint32_t *out) {
        for (int64_t i = 0; i < nb; i++)
            for (int64_t j = 0; j < len; j += 32) {
                const int64_t r = len - j;
                const __mmask16 lo = r >= 16 ? 0xFFFF : (__mmask16)((1u << r) - 1);
                const __mmask16 hi = r >= 32 ? 0xFFFF : r <= 16 ? 0 : (__mmask16)((1u << (r - 16)) - 1);
                const __m512 a = _mm512_maskz_loadu_ps(lo, Xr + i * ld + j);
                const __m512 b = _mm512_maskz_loadu_ps(hi, Xr + i * ld + j + 16);
                _mm512_storeu_si512(out + i * pstride + j / 2, (__m512i)_mm512_cvtne2ps_pbh(b, a));
            }
    }

    /* projT [len, nv*16] float32 -> pairs [npairs][nv] vectors of 16 (proj[2p][h], proj[2p+1][h]) */
    static void jr_bf16_proj(const float *projT, int nv, int64_t len, __m512bh *out) {
        const int64_t hp = (int64_t)nv * 16;
        for (int64_t p = 0; p < (len + 1) / 2; p++)
            for (int v = 0; v < nv; v++) {
                float even[16], odd[16];
                for (int h = 0; h < 16; h++) {
                    even[h] = projT[2 * p * hp + 16 * v + h];
                    odd[h] = 2 * p + 1 < len ? projT[(2 * p + 1) * hp + 16 * v + h] : 0.0f;
                }
                /* lane h of the result: (even[h], odd[h]) */
                const __m512 e = _mm512_loadu_ps(even), o = _mm512_loadu_ps(odd);
                const __m512i pick_lo = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4,
                                                         19, 3, 18, 2, 17, 1, 16, 0);
                const __m512i pick_hi = _mm512_set_epi32(31, 15, 30, 14, 29, 13, 28, 12,
                                                         27, 11, 26, 10, 25, 9, 24, 8);
                const __m512 lo = _mm512_permutex2var_ps(e, pick_lo, o);
                const __m512 hi = _mm512_permutex2var_ps(e, pick_hi, o);
                out[p * nv + v] = _mm512_cvtne2ps_pbh(hi, lo);
            }
    }

    /* jr_codes on bfloat16 pairs: xp[i*pstride + p], projB from jr_bf16_proj. */
    #define JR_CODES_BF16(ROWS, NV) \
        static int64_t jr_codes_bf16_##ROWS##x##NV(const uint32_t *xp, int64_t pstride, \
                                                   const __m512bh *projB, const float *thr, \
                                                   int64_t nb, int64_t npairs, uint64_t *code) { \
            int64_t i0 = 0; \
            for (; i0 + ROWS <= nb; i0 += ROWS) { \
                __m512 a[ROWS][NV]; \
                JR_UNROLL for (int u = 0; u < ROWS; u++) \
                    JR_UNROLL for (int v = 0; v < NV; v++) \
                        a[u][v] = _mm512_sub_ps(_mm512_setzero_ps(), _mm512_loadu_ps(thr + 16 * v)); \
                for (int64_t p = 0; p < npairs; p++) { \
                    JR_UNROLL for (int u = 0; u < ROWS; u++) { \
                        const __m512bh x = (__m512bh)_mm512_set1_epi32((int)xp[(i0 + u) * pstride + p]); \
                        JR_UNROLL for (int v = 0; v < NV; v++) \
                            a[u][v] = _mm512_dpbf16_ps(a[u][v], x, projB[p * NV + v]); \
                    } \
                } \
                JR_UNROLL for (int u = 0; u < ROWS; u++) { \
                    uint64_t c = 0; \
                    JR_UNROLL for (int v = 0; v < NV; v++) \
                        c |= (uint64_t)_mm512_cmp_ps_mask(a[u][v], _mm512_setzero_ps(), \
                                                          _CMP_GT_OQ) << (16 * v); \
                    code[i0 + u] = c; \
                } \
            } \
            return i0; \
        }
    JR_CODES_BF16(8, 1) JR_CODES_BF16(4, 2) JR_CODES_BF16(3, 3) JR_CODES_BF16(2, 4)
    JR_CODES_BF16(1, 1) JR_CODES_BF16(1, 2) JR_CODES_BF16(1, 3) JR_CODES_BF16(1, 4)
    #undef JR_CODES_BF16

    static void jr_codes_bf16(const uint32_t *xp, int64_t pstride, const __m512bh *projB,
                              const float *thr, int nv, int64_t nb, int64_t npairs, uint64_t *code) {
        /* the main micro-kernel, then one row at a time */
    #define JR_BF16_CASE(NV, ROWS) \
        case NV: { \
            const int64_t i0 = jr_codes_bf16_##ROWS##x##NV(xp, pstride, projB, thr, nb, npairs, code); \
            jr_codes_bf16_1x##NV(xp + i0 * pstride, pstride, projB, thr, nb - i0, npairs, code + i0); \
            break; \
        }
        switch (nv) {
        JR_BF16_CASE(1, 8) JR_BF16_CASE(2, 4) JR_BF16_CASE(3, 3) default: JR_BF16_CASE(4, 2)
        }
    #undef JR_BF16_CASE
    }
    #else
    #define JR_HASH_BF16 0
    #endif

    /* slots for nb rows: a power of two >= 2 nb (the table stays at most half full) */
    static int64_t jr_table_cap(int64_t nb) {
        int64_t cap = 16;
        while (cap < 2 * nb) cap <<= 1;
        return cap;
    }

    /* Per-thread scratch of a clustering pass over up to `rows` sub-vectors of up to sub_len
     * values, with products of n floats per cluster (one spare row after the last; n = 0:
     * no product rows). */
    typedef struct {
        uint64_t *code; jr_slot *tab; int64_t cap; int32_t gen;
        int32_t *cid, *cnt, *nzj; float *cent, *prod, *nzv;
    } jr_scratch;

    static int jr_scratch_init(jr_scratch *w, int64_t rows, int64_t sub_len, int64_t n) {
        w->cap = jr_table_cap(rows);
        w->gen = 0;
        w->code = (uint64_t *)jr_alloc(sizeof(uint64_t) * JR_CODE_ROWS, 0);
        w->tab = (jr_slot *)jr_alloc(sizeof(jr_slot) * (size_t)w->cap, 1);
        w->cid = (int32_t *)jr_alloc(sizeof(int32_t) * (size_t)rows, 0);
        w->cnt = (int32_t *)jr_alloc(sizeof(int32_t) * (size_t)rows, 0);
        w->nzj = (int32_t *)jr_alloc(sizeof(int32_t) * (size_t)sub_len, 0);
        w->nzv = (float *)jr_alloc(sizeof(float) * (size_t)sub_len, 0);
        w->cent = (float *)jr_alloc(sizeof(float) * (size_t)(rows * sub_len), 0);
        w->prod = n ? (float *)jr_alloc(sizeof(float) * (size_t)((rows + 1) * n), 0) : NULL;
        return w->code && w->tab && w->cid && w->cnt && w->nzj && w->nzv && w->cent && (w->prod || !n);
    }

    static void jr_scratch_free(jr_scratch *w) {
        free(w->code); free(w->tab); free(w->cid); free(w->cnt); free(w->nzj); free(w->nzv);
        free(w->cent); free(w->prod);
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
        const int64_t hp = (int64_t)nv * 16;
        int failed = 0;
        memset(Y, 0, sizeof(float) * (size_t)(N * M));
        #pragma omp parallel num_threads(jr_threads(nthreads)) if (n_blocks > 1)
        {
            jr_scratch w;
            if (!jr_scratch_init(&w, block_rows, sub_len, M)) {
                #pragma omp atomic write
                failed = 1;
            } else {
                #pragma omp for schedule(dynamic, 1)
                for (int64_t b = 0; b < n_blocks; b++) {
                    const int64_t r0 = b * block_rows;
                    const int64_t nb = r0 + block_rows < N ? block_rows : N - r0;
                    float *Yb = Y + r0 * M;
                    for (int64_t p = 0; p < n_pos; p++) {
                        const int64_t k0 = p * sub_len;
                        const int64_t len = k0 + sub_len < K ? sub_len : K - k0;
                        int64_t nc = 0;
                        const float *Xb = X + r0 * K + k0;
                        jr_cluster_rows(Xb, K, nb, len, projT + k0 * hp, thr + p * hp, nv, w.tab, w.cap,
                                        ++w.gen, w.code, w.cid, w.cent, w.cnt, &nc,
                                        &zero_rows[b * n_pos + p]);
                        clusters[b * n_pos + p] = nc;
                        jr_products(w.cent, w.cnt, nc, len, W + k0 * M, M, M, w.prod, w.nzv, w.nzj);
                        /* reuse: every member row gets its cluster's product */
                        for (int64_t i = 0; i < nb; i++)
                            if (w.cid[i] >= 0) jr_add(Yb + i * M, w.prod + (int64_t)w.cid[i] * M, M);
                    }
                }
            }
            jr_scratch_free(&w);
        }
        return failed;
    }

    /* out[t*C + c] = in[c*px + t]: one image from planar (CHW) to channels-last. A plain loop
     * that reads the planes in memory order (the input usually comes from DRAM, and the
     * hardware prefetcher follows one stream better than C interleaved ones; software
     * prefetch of the next images only got in its way) and scatters into out, which sits in
     * L1. Simpler than the 16 x 16 register transpose it replaced, and the whole kernel is ~4%
     * faster for it (RESULTS.md, "Deep reuse kernel"). */
    static void jr_to_channels_last(const float *in, int64_t C, int64_t px, float *out) {
        for (int64_t c = 0; c < C; c++)
            for (int64_t t = 0; t < px; t++) out[t * C + c] = in[c * px + t];
    }

    /* pmap [(Hh + 2 pad) x (Wd + 2 pad)]: for each pixel of one zero-padded image, where its
     * R*S products (n = R*S*M floats) start. Padding and all-zero pixels: the zero row. A pixel
     * whose cluster is shared (cnt >= 2) reads the block's product table at the cluster's
     * slot; a singleton's product is formed here, into this image's local rows, so that the
     * table holds only what is reused and the one-off products are read back while still in
     * L1/L2 (over half the clusters are singletons on noisy inputs). A singleton only needs
     * the (r, s) that an output reads: at the image border, part of its product is skipped. */
    static void jr_pixel_products(const int32_t *cid, const int32_t *cnt, const int32_t *slot,
                                  const float *cent, int64_t len, const float *B, int64_t M,
                                  int64_t R, int64_t S, int64_t stride, int64_t P, int64_t Q,
                                  const float *table, const float *zero_row, int64_t Hh, int64_t Wd,
                                  int64_t pad, float *local, const float **pmap, float *nzv,
                                  int32_t *nzj) {
        const int64_t Wp = Wd + 2 * pad, n = R * S * M;
        for (int64_t t = 0; t < (Hh + 2 * pad) * Wp; t++) pmap[t] = zero_row;
        for (int64_t iy = 0; iy < Hh; iy++)
            for (int64_t ix = 0; ix < Wd; ix++) {
                const int64_t t = iy * Wd + ix;
                const int32_t k = cid[t];
                const float **p = &pmap[(iy + pad) * Wp + ix + pad];
                if (k < 0) continue;
                if (cnt[k] >= 2) { *p = table + (int64_t)slot[k] * n; continue; }
                *p = local + t * n;
                /* offsets read by some output: oy = (iy + pad - r) / stride in [0, P) (a
                 * superset where stride > 1) */
                const int64_t r0 = iy + pad - (P - 1) * stride > 0 ? iy + pad - (P - 1) * stride : 0;
                const int64_t r1 = iy + pad < R - 1 ? iy + pad : R - 1;
                const int64_t s0 = ix + pad - (Q - 1) * stride > 0 ? ix + pad - (Q - 1) * stride : 0;
                const int64_t s1 = ix + pad < S - 1 ? ix + pad : S - 1;
                if (r0 > r1 || s0 > s1) continue;
                const int64_t nnz = jr_compact(cent + (int64_t)k * len, 1.0f, len, nzv, nzj);
                if (s0 == 0 && s1 == S - 1) {      /* whole rows of offsets: one run of columns */
                    jr_vecmat(nzv, nzj, nnz, B + r0 * S * M, n, (r1 - r0 + 1) * S * M,
                              local + t * n + r0 * S * M);
                    continue;
                }
                for (int64_t r = r0; r <= r1; r++)
                    jr_vecmat(nzv, nzj, nnz, B + (r * S + s0) * M, n, (s1 - s0 + 1) * M,
                              local + t * n + (r * S + s0) * M);
            }
    }

    /* One image's output pixels (NHWC y, M channels): y[o] = base + sum over (r, s) of the
     * (r, s) product of the input pixel that (r, s) reads (pmap, see jr_pixel_products),
     * where base is y[o] itself (later channel chunks) or bias / 0 (first chunk: y is
     * written, not read). stream: y is written once, in 64-byte aligned rows (jr_stream).
     * Every output reads R*S products (padding reads the zero row): no branch in the loop. */
    static void jr_conv_gather(const float *const *pmap, int64_t Wd, int64_t M, int64_t R, int64_t S,
                               int64_t stride, int64_t pad, int64_t P, int64_t Q, int first,
                               int stream, const float *bias, float *y, const float **src) {
        const int64_t Wp = Wd + 2 * pad, RS = R * S;
        for (int64_t oy = 0; oy < P; oy++)
            for (int64_t ox = 0; ox < Q; ox++) {
                const float *const *win = pmap + oy * stride * Wp + ox * stride;
                for (int64_t r = 0; r < R; r++)
                    for (int64_t s2 = 0; s2 < S; s2++)
                        src[r * S + s2] = win[r * Wp + s2] + (r * S + s2) * M;
                float *yr = y + (oy * Q + ox) * M;
                int64_t m = 0;
                /* three partial sums per vector: the adds do not wait on each other */
                for (; m + 32 <= M; m += 32) {
                    jr_v16 a0, a1;
                    if (!first) { a0 = jr_load(yr + m); a1 = jr_load(yr + m + 16); }
                    else if (bias) { a0 = jr_load(bias + m); a1 = jr_load(bias + m + 16); }
                    else { a0 = (jr_v16){0}; a1 = (jr_v16){0}; }
                    jr_v16 b0 = {0}, b1 = {0}, c0 = {0}, c1 = {0};
                    int64_t u = 0;
                    for (; u + 3 <= RS; u += 3) {
                        a0 += jr_load(src[u] + m);     a1 += jr_load(src[u] + m + 16);
                        b0 += jr_load(src[u + 1] + m); b1 += jr_load(src[u + 1] + m + 16);
                        c0 += jr_load(src[u + 2] + m); c1 += jr_load(src[u + 2] + m + 16);
                    }
                    for (; u < RS; u++) {
                        a0 += jr_load(src[u] + m);
                        a1 += jr_load(src[u] + m + 16);
                    }
                    if (stream) {
                        jr_stream(yr + m, a0 + b0 + c0); jr_stream(yr + m + 16, a1 + b1 + c1);
                    } else {
                        jr_store(yr + m, a0 + b0 + c0); jr_store(yr + m + 16, a1 + b1 + c1);
                    }
                }
                for (; m + 16 <= M; m += 16) {
                    jr_v16 a0 = !first ? jr_load(yr + m) : bias ? jr_load(bias + m) : (jr_v16){0};
                    for (int64_t u = 0; u < RS; u++) a0 += jr_load(src[u] + m);
                    jr_store(yr + m, a0);
                }
                for (; m < M; m++) {
                    float a = !first ? yr[m] : bias ? bias[m] : 0.0f;
                    for (int64_t u = 0; u < RS; u++) a += src[u][m];
                    yr[m] = a;
                }
            }
    }

    /* Conv with reuse shared across kernel offsets. x NCHW [n_img, C, Hh, Wd]. A
     * sub-vector is a chunk of sub_len channels of one input pixel; it is the sub-vector
     * of every im2col row that reads that pixel, so it is hashed and clustered once (per
     * block of images) instead of R*S times. Per chunk g and cluster k the products
     * mean_k @ W3[c0 .. c0+len] are formed for all (r, s) at once, and each output pixel
     * adds, per (r, s), the product of the cluster its input pixel is in.
     * W3 [C, R*S*M]: W3[c][(r*S + s)*M + m] = weight[m, c, r, s]. bias [M] or NULL.
     * y NHWC [n_img, P, Q, M] (fully written). A chunk's planes of one image are turned
     * channels-last and clustered while they sit in L1.
     * clusters / zero_px [n_blocks, n_chunks]. Returns nonzero on allocation failure. */
    static int jr_reuse_conv(const float *x, int64_t n_img, int64_t Hh, int64_t Wd, int64_t C,
                             const float *projT, const float *thr, int nv, int64_t sub_len,
                             const float *W3, const float *bias, int64_t M, int64_t R, int64_t S,
                             int64_t stride, int64_t pad, int64_t P, int64_t Q,
                             int64_t block_imgs, float *y, int64_t *clusters, int64_t *zero_px,
                             int nthreads) {
        const int64_t n_chunks = (C + sub_len - 1) / sub_len;
        const int64_t n_blocks = (n_img + block_imgs - 1) / block_imgs;
        const int64_t px_img = Hh * Wd, out_img = P * Q, RS = R * S, hp = (int64_t)nv * 16;
        const int64_t cap_px = block_imgs * px_img;
        const int64_t Hp = Hh + 2 * pad, Wp = Wd + 2 * pad, n = RS * M;
        /* y written once (one chunk), in whole aligned vectors, and too big to stay cached */
        const int stream = n_chunks == 1 && M % 32 == 0 && ((uintptr_t)y & 63) == 0
                           && n_img * out_img * M * (int64_t)sizeof(float) > (4 << 20);
        int failed = 0;
    #if JR_HASH_BF16
        /* each chunk's projections as bfloat16 pairs, shared by the threads */
        const int64_t pairs_max = (sub_len + 1) / 2, pstride = (sub_len + 31) / 32 * 16;
        __m512bh *projB = (__m512bh *)aligned_alloc(64, sizeof(__m512bh)
                                                        * (size_t)(n_chunks * pairs_max * nv));
        if (projB)
            for (int64_t g = 0; g < n_chunks; g++) {
                const int64_t c0 = g * sub_len, len = c0 + sub_len < C ? sub_len : C - c0;
                jr_bf16_proj(projT + c0 * hp, nv, len, projB + g * pairs_max * nv);
            }
    #endif
        #pragma omp parallel num_threads(jr_threads(nthreads)) if (n_blocks > 1)
        {
            jr_scratch w;
            float *xs = (float *)jr_alloc(sizeof(float) * (size_t)(px_img * sub_len), 0);
            uint64_t *code = (uint64_t *)jr_alloc(sizeof(uint64_t) * (size_t)px_img, 0);
    #if JR_HASH_BF16
            uint32_t *xpairs = (uint32_t *)jr_alloc(sizeof(uint32_t) * (size_t)(px_img * pstride), 0);
    #endif
            float *local = (float *)jr_alloc(sizeof(float) * (size_t)(px_img * n), 0);
            float *zero_row = (float *)jr_alloc(sizeof(float) * (size_t)n, 1);
            int32_t *slot = (int32_t *)jr_alloc(sizeof(int32_t) * (size_t)cap_px, 0);
            const float **pmap = (const float **)jr_alloc(sizeof(float *) * (size_t)(Hp * Wp), 0);
            const float **src = (const float **)jr_alloc(sizeof(float *) * (size_t)RS, 0);
            float *table = NULL;             /* the block's shared products, grown as needed */
            int64_t table_rows = 0;
            if (!jr_scratch_init(&w, cap_px, sub_len, 0) || !xs || !code || !local || !zero_row
                    || !slot || !pmap || !src
    #if JR_HASH_BF16
                    || !xpairs || !projB
    #endif
                    ) {
                #pragma omp atomic write
                failed = 1;
            } else {
                #pragma omp for schedule(dynamic, 1)
                for (int64_t b = 0; b < n_blocks; b++) {
                    const int64_t i0 = b * block_imgs;
                    const int64_t ni = i0 + block_imgs < n_img ? block_imgs : n_img - i0;
                    for (int64_t g = 0; g < n_chunks; g++) {
                        const int64_t c0 = g * sub_len;
                        const int64_t len = c0 + sub_len < C ? sub_len : C - c0;
                        const float *B = W3 + c0 * n;
                        int64_t nc = 0, n_shared = 0;
                        ++w.gen;
                        for (int64_t im = 0; im < ni; im++) {
                            const float *planes = x + ((i0 + im) * C + c0) * px_img;
                            jr_to_channels_last(planes, len, px_img, xs);
    #if JR_HASH_BF16
                            jr_bf16_pairs(xs, len, px_img, len, pstride, xpairs);
                            jr_codes_bf16(xpairs, pstride, projB + g * pairs_max * nv, thr + g * hp,
                                          nv, px_img, (len + 1) / 2, code);
    #else
                            /* straight from the planes: xs was just stored, and its values would
                             * not forward to the scalar loads */
                            jr_codes(planes, 1, px_img, projT + c0 * hp, thr + g * hp, nv, px_img,
                                     len, code);
    #endif
                            jr_insert(code, xs, len, px_img, len, w.tab, w.cap, w.gen,
                                      w.cid + im * px_img, w.cent, w.cnt, &nc,
                                      &zero_px[b * n_chunks + g]);
                        }
                        clusters[b * n_chunks + g] = nc;
                        /* the table: table[slot*n + rs*M + m] = mean @ W3[c0 .. c0+len] (all
                         * (r, s)) for the clusters that are reused; sized to them (a tenth of
                         * the rows or so), so it is no fresh mapping to fault in on every call */
                        for (int64_t k = 0; k < nc; k++) n_shared += w.cnt[k] >= 2;
                        if (n_shared > table_rows) {    /* grown (its old rows are not needed) */
                            free(table);
                            table = (float *)jr_alloc(sizeof(float) * (size_t)(n_shared * n), 0);
                            table_rows = table ? n_shared : 0;
                            if (!table) {
                                #pragma omp atomic write
                                failed = 1;
                                continue;
                            }
                        }
                        n_shared = 0;
                        for (int64_t k = 0; k < nc; k++) {
                            if (w.cnt[k] < 2) continue;
                            slot[k] = (int32_t)n_shared;
                            jr_product(w.cent + k * len, 1.0f / (float)w.cnt[k], len, B, n, n,
                                       table + n_shared++ * n, w.nzv, w.nzj);
                        }
                        for (int64_t im = 0; im < ni; im++) {
                            jr_pixel_products(w.cid + im * px_img, w.cnt, slot, w.cent, len, B, M, R,
                                              S, stride, P, Q, table, zero_row, Hh, Wd, pad, local,
                                              pmap, w.nzv, w.nzj);
                            jr_conv_gather(pmap, Wd, M, R, S, stride, pad, P, Q, g == 0, stream, bias,
                                           y + (i0 + im) * out_img * M, src);
                        }
                    }
                }
            }
            jr_scratch_free(&w);
            jr_stream_done();   /* this thread's streamed rows, before the region's barrier */
            free(xs); free(code); free(table); free(local); free(zero_row); free(slot);
            free((void *)pmap); free((void *)src);
    #if JR_HASH_BF16
            free(xpairs);
    #endif
        }
    #if JR_HASH_BF16
        free(projB);
    #endif
        return failed;
    }
    """
    int jr_reuse_matmul(const float *X, int64_t N, int64_t K, const float *W, int64_t M,
                        const float *projT, const float *thr, int nv, int64_t sub_len,
                        int64_t block_rows, float *Y, int64_t *clusters, int64_t *zero_rows,
                        int nthreads) nogil
    int JR_HASH_BF16
    int jr_reuse_conv(const float *x, int64_t n_img, int64_t Hh, int64_t Wd, int64_t C,
                      const float *projT, const float *thr, int nv, int64_t sub_len,
                      const float *W3, const float *bias, int64_t M, int64_t R, int64_t S,
                      int64_t stride, int64_t pad, int64_t P, int64_t Q,
                      int64_t block_imgs, float *y, int64_t *clusters, int64_t *zero_px,
                      int nthreads) nogil

MAX_HASHES = 64
# True where reuse_conv_kernel hashes in bfloat16 (a build with AVX512-BF16): its codes are
# those of the sub-vectors and projections rounded to bfloat16 (nearest even)
HASH_BF16 = bool(JR_HASH_BF16)


def _matrix(a, name, rows=None, cols=None):
    return matrix(a, name, np.float32, rows, cols)


def _aligned_empty(shape):
    """float32 array of `shape` starting on a 64-byte boundary (the kernels load weight rows
    and stream output rows as whole 64-byte vectors)."""
    n = int(np.prod(shape))
    buf = np.empty(n + 16, dtype=np.float32)
    off = (-buf.ctypes.data % 64) // 4
    return buf[off:off + n].reshape(shape)


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
    if W.ctypes.data % 64:   # its rows are loaded as whole vectors
        aligned = _aligned_empty((K, M))
        aligned[:] = W
        W = aligned
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
    Y = _aligned_empty((N, M))   # zeroed by the kernel (or empty: N == 0 or M == 0)
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
    y_nhwc = _aligned_empty((N, P, Q, M))
    y = y_nhwc.transpose(0, 3, 1, 2)
    clusters = np.zeros((n_blocks, n_chunks), dtype=np.int64)
    zero_px = np.zeros((n_blocks, n_chunks), dtype=np.int64)
    if N == 0 or M == 0 or P * Q == 0:
        y[:] = 0 if bias is None else bias[None, :, None, None]
        return y, clusters, zero_px
    x = np.ascontiguousarray(x)
    # on a 64-byte boundary: its rows (R*S*M floats) are loaded as whole vectors
    W3 = _aligned_empty((C, R * S * M))
    W3[:] = weight.transpose(1, 2, 3, 0).reshape(C, R * S * M)
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
