/* Sparse weight x dense activation kernels: Y[M, N] = W[M, K] @ X[K, N], float32
 * (and int8 x int8 -> int32, further down).
 *
 * Why panels: a row-wise CSR loop streams X from DRAM once per row of W and is memory-bound.
 * Here X is cut into column panels of JC_PW = 64 floats (one 256-byte, 64-byte-aligned row per k),
 * packed once per panel into a buffer that stays in L2 (K * 256 bytes: 1.2 MB for K = 4608),
 * and every row of W is applied to that panel with the 64 outputs held in vector registers.
 *
 * The vector code uses GCC vector extensions (v16 = 16 floats): with -march=native on AVX-512 it
 * is one zmm register, on other targets GCC splits it into narrower vectors, so there is a single
 * code path for the native and the portable build (GCC / Clang only).
 *
 * Further down: jc_skinny, the dense GEMM of channel-pruned layers (few rows of W, X in place).
 *
 * The caller (sparse_gemm.pyx) validates every array before calling; nothing here checks bounds.
 */
#ifndef JOULECUT_SPARSE_CORE_H
#define JOULECUT_SPARSE_CORE_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define JC_PW 64      /* panel width in floats (4 vectors of 16) */
#define JC_VW 16      /* floats per vector */
#define JC_PREFETCH 16 /* rows of X fetched ahead while packing */

typedef float jc_v16 __attribute__((vector_size(64), aligned(64)));
typedef float jc_v16u __attribute__((vector_size(64), aligned(4))); /* unaligned access */

/* Where the dense operand comes from: a strided matrix, or an im2col view of an NCHW batch. */
typedef struct {
    int kind;                      /* 0: matrix X[k * sk + n * sn]; 1: im2col of x */
    const float *x;
    const int8_t *x8;              /* the int8 matrix instead of x (int8 products; kind 0 only) */
    ptrdiff_t sk, sn;              /* matrix strides, in elements */
    /* im2col: x[n, c, h, w] at x + n*sN + c*sC + h*sH + w*sW; column j = (n, p, q), row k = (c, r, s) */
    int64_t C, H, W, R, S, P, Q;
    int64_t stride_h, stride_w, pad_h, pad_w, dil_h, dil_w;
    ptrdiff_t sN, sC, sH, sW;
} jc_src;

/* The sparse operand. CSR: br = bc = 1, indptr over rows, data[nnz].
 * BSR: indptr over block rows, indices = block columns, data[nblocks][br][bc] row-major. */
typedef struct {
    const int32_t *indptr;
    const int32_t *indices;
    const float *data;
    const int8_t *data8;           /* int8 weights instead of data (then Y is int32) */
    int is_int8;
    int64_t br, bc;
    int64_t n_units;               /* rows (CSR) or block rows (BSR) */
} jc_sparse;

static inline int64_t jc_floordiv(int64_t a, int64_t b) /* b > 0 */
{
    const int64_t q = a / b;
    return (a % b != 0 && a < 0) ? q - 1 : q;
}

/* im2col columns [j0, j0 + w) straight from the image. The panel is cut into segments that
 * lie in one output row (same n, p; consecutive q): for each kernel tap (c, r, s) a segment
 * reads one input row, so it is a zero-filled head and tail around a (strided) copy. */
static void jc_pack_im2col(const jc_src *s, int64_t j0, int64_t w, float *Xp)
{
    int64_t seg_j[JC_PW], seg_len[JC_PW], seg_q[JC_PW], seg_h[JC_PW];
    ptrdiff_t seg_base[JC_PW];
    int64_t nseg = 0;
    const int64_t PQ = s->P * s->Q;
    for (int64_t j = 0; j < w; nseg++) {
        const int64_t col = j0 + j, n = col / PQ, pq = col % PQ, q = pq % s->Q;
        const int64_t len = (s->Q - q < w - j) ? s->Q - q : w - j;
        seg_j[nseg] = j;
        seg_len[nseg] = len;
        seg_q[nseg] = q;
        seg_h[nseg] = (pq / s->Q) * s->stride_h - s->pad_h;
        seg_base[nseg] = n * s->sN;
        j += len;
    }
    const ptrdiff_t step = s->stride_w * s->sW;
    int64_t k = 0;
    for (int64_t c = 0; c < s->C; c++) {
        const float *xc = s->x + c * s->sC;
        for (int64_t r = 0; r < s->R; r++) {
            for (int64_t t = 0; t < s->S; t++, k++) {
                float *dst = Xp + k * JC_PW;
                const int64_t off = t * s->dil_w - s->pad_w; /* input column = q * stride_w + off */
                /* output columns q whose input column falls inside [0, W) */
                const int64_t q_first = -jc_floordiv(off, s->stride_w);
                const int64_t q_last = jc_floordiv(s->W - 1 - off, s->stride_w); /* inclusive */
                for (int64_t g = 0; g < nseg; g++) {
                    float *d = dst + seg_j[g];
                    const int64_t h = seg_h[g] + r * s->dil_h, q0 = seg_q[g], q1 = q0 + seg_len[g];
                    if (h < 0 || h >= s->H) {
                        memset(d, 0, (size_t)seg_len[g] * sizeof(float));
                        continue;
                    }
                    int64_t lo = q0 > q_first ? q0 : q_first;
                    int64_t hi = q1 < q_last + 1 ? q1 : q_last + 1;
                    if (hi < lo) hi = lo = q1; /* the whole segment reads padding */
                    for (int64_t q = q0; q < lo; q++) d[q - q0] = 0.0f;
                    if (hi > lo) {
                        const float *src = xc + seg_base[g] + h * s->sH + (lo * s->stride_w + off) * s->sW;
                        if (step == 1) {
                            memcpy(d + (lo - q0), src, (size_t)(hi - lo) * sizeof(float));
                        } else {
                            for (int64_t q = lo; q < hi; q++) d[q - q0] = src[(q - lo) * step];
                        }
                    }
                    for (int64_t q = hi; q < q1; q++) d[q - q0] = 0.0f;
                }
                for (int64_t j = w; j < JC_PW; j++) dst[j] = 0.0f;
            }
        }
    }
}

/* Pack columns [j0, j0 + w) of the source into Xp[kpad][JC_PW]; lanes >= w and rows >= K are zero
 * so the compute loops can run whole vectors and whole blocks without tests. */
static void jc_pack(const jc_src *s, int64_t K, int64_t kpad, int64_t j0, int64_t w, float *Xp)
{
    if (s->kind == 0) {
        for (int64_t k = 0; k < K; k++) {
            float *dst = Xp + k * JC_PW;
            const float *src = s->x + k * s->sk + j0 * s->sn;
            /* Each row of the panel sits in a different page of X: fetch a few rows ahead so
             * the DRAM and TLB misses overlap instead of serialising. */
            if (s->sn == 1 && k + JC_PREFETCH < K) {
                const char *ahead = (const char *)(src + JC_PREFETCH * s->sk);
                for (int64_t b = 0; b < w * 4; b += 64) __builtin_prefetch(ahead + b, 0, 3);
            }
            if (s->sn == 1) {
                memcpy(dst, src, (size_t)w * sizeof(float));
            } else {
                for (int64_t j = 0; j < w; j++) dst[j] = src[j * s->sn];
            }
            for (int64_t j = w; j < JC_PW; j++) dst[j] = 0.0f;
        }
    } else {
        jc_pack_im2col(s, j0, w, Xp);
    }
    for (int64_t k = K; k < kpad; k++) memset(Xp + k * JC_PW, 0, JC_PW * sizeof(float));
}

/* Store the first w lanes of NV accumulator vectors to y. */
static inline __attribute__((always_inline)) void
jc_store(float *y, const jc_v16 *acc, int NV, int64_t w)
{
    if (w == (int64_t)NV * JC_VW) {
        for (int v = 0; v < NV; v++) *(jc_v16u *)(y + v * JC_VW) = acc[v];
    } else {
        memcpy(y, acc, (size_t)w * sizeof(float));
    }
}

/* CSR rows [r0, r1) against one packed panel. NV = vectors per panel (1..4), a constant after
 * inlining so the accumulators live in registers. Two accumulator sets (even / odd nonzeros)
 * halve the FMA dependency chain. */
static inline __attribute__((always_inline)) void
jc_csr_panel(const jc_sparse *A, int64_t r0, int64_t r1, const float *restrict Xp,
             float *restrict Y, ptrdiff_t ldy, int64_t j0, int64_t w, const int NV)
{
    for (int64_t i = r0; i < r1; i++) {
        jc_v16 a[4] = {0}, b[4] = {0};
        int64_t p = A->indptr[i];
        const int64_t end = A->indptr[i + 1];
        for (; p + 1 < end; p += 2) {
            const float va = A->data[p], vb = A->data[p + 1];
            const jc_v16 *xa = (const jc_v16 *)(Xp + (int64_t)A->indices[p] * JC_PW);
            const jc_v16 *xb = (const jc_v16 *)(Xp + (int64_t)A->indices[p + 1] * JC_PW);
            for (int v = 0; v < NV; v++) {
                a[v] += va * xa[v];
                b[v] += vb * xb[v];
            }
        }
        if (p < end) {
            const float va = A->data[p];
            const jc_v16 *xa = (const jc_v16 *)(Xp + (int64_t)A->indices[p] * JC_PW);
            for (int v = 0; v < NV; v++) a[v] += va * xa[v];
        }
        for (int v = 0; v < NV; v++) a[v] += b[v];
        jc_store(Y + i * ldy + j0, a, NV, w);
    }
}

/* BSR with 4-row blocks, block rows [r0, r1): 4 x NV accumulators (16 zmm for a full panel);
 * each packed X row is loaded once and used for all four output rows. */
static inline __attribute__((always_inline)) void
jc_bsr4_panel(const jc_sparse *A, int64_t M, int64_t r0, int64_t r1, const float *restrict Xp,
              float *restrict Y, ptrdiff_t ldy, int64_t j0, int64_t w, const int NV)
{
    const int64_t bc = A->bc;
    for (int64_t ib = r0; ib < r1; ib++) {
        jc_v16 a0[4] = {0}, a1[4] = {0}, a2[4] = {0}, a3[4] = {0};
        for (int64_t p = A->indptr[ib]; p < A->indptr[ib + 1]; p++) {
            const float *blk = A->data + p * 4 * bc;
            const float *xrow = Xp + (int64_t)A->indices[p] * bc * JC_PW;
            for (int64_t c = 0; c < bc; c++) {
                const jc_v16 *x = (const jc_v16 *)(xrow + c * JC_PW);
                const float v0 = blk[c], v1 = blk[bc + c], v2 = blk[2 * bc + c], v3 = blk[3 * bc + c];
                for (int v = 0; v < NV; v++) {
                    const jc_v16 xv = x[v];
                    a0[v] += v0 * xv;
                    a1[v] += v1 * xv;
                    a2[v] += v2 * xv;
                    a3[v] += v3 * xv;
                }
            }
        }
        /* the last block row may hang over M: its padding rows are computed but not stored */
        const int64_t row = ib * 4;
        float *y = Y + row * ldy + j0;
        jc_store(y, a0, NV, w);
        if (row + 1 < M) jc_store(y + ldy, a1, NV, w);
        if (row + 2 < M) jc_store(y + 2 * ldy, a2, NV, w);
        if (row + 3 < M) jc_store(y + 3 * ldy, a3, NV, w);
    }
}

/* Any other block height: one output row of the block at a time (correct, not tuned). */
static void jc_bsr_generic_panel(const jc_sparse *A, int64_t M, int64_t r0, int64_t r1,
                                 const float *restrict Xp, float *restrict Y, ptrdiff_t ldy,
                                 int64_t j0, int64_t w)
{
    const int64_t br = A->br, bc = A->bc;
    for (int64_t ib = r0; ib < r1; ib++) {
        for (int64_t r = 0; r < br && ib * br + r < M; r++) {
            jc_v16 a[4] = {0};
            for (int64_t p = A->indptr[ib]; p < A->indptr[ib + 1]; p++) {
                const float *brow = A->data + (p * br + r) * bc;
                const float *xrow = Xp + (int64_t)A->indices[p] * bc * JC_PW;
                for (int64_t c = 0; c < bc; c++) {
                    const jc_v16 *x = (const jc_v16 *)(xrow + c * JC_PW);
                    for (int v = 0; v < 4; v++) a[v] += brow[c] * x[v];
                }
            }
            jc_store(Y + (ib * br + r) * ldy + j0, a, 4, w);
        }
    }
}

/* Dispatch one (panel, unit range) work item to the kernel specialised for its vector count. */
static void jc_item(const jc_sparse *A, int64_t M, int64_t r0, int64_t r1, const float *Xp,
                    float *Y, ptrdiff_t ldy, int64_t j0, int64_t w)
{
    const int nv = (int)((w + JC_VW - 1) / JC_VW);
    if (A->br == 1 && A->bc == 1) {
        switch (nv) {
        case 1: jc_csr_panel(A, r0, r1, Xp, Y, ldy, j0, w, 1); break;
        case 2: jc_csr_panel(A, r0, r1, Xp, Y, ldy, j0, w, 2); break;
        case 3: jc_csr_panel(A, r0, r1, Xp, Y, ldy, j0, w, 3); break;
        default: jc_csr_panel(A, r0, r1, Xp, Y, ldy, j0, w, 4); break;
        }
    } else if (A->br == 4) {
        switch (nv) {
        case 1: jc_bsr4_panel(A, M, r0, r1, Xp, Y, ldy, j0, w, 1); break;
        case 2: jc_bsr4_panel(A, M, r0, r1, Xp, Y, ldy, j0, w, 2); break;
        case 3: jc_bsr4_panel(A, M, r0, r1, Xp, Y, ldy, j0, w, 3); break;
        default: jc_bsr4_panel(A, M, r0, r1, Xp, Y, ldy, j0, w, 4); break;
        }
    } else {
        jc_bsr_generic_panel(A, M, r0, r1, Xp, Y, ldy, j0, w);
    }
}

/* ------------------------------------------------------------------------------------------
 * int8 weights x int8 activations -> int32, exact.
 * X is packed as unsigned bytes u = x + 128 in k-quads: Xq[k / 4][j][k % 4], i.e. one 256-byte
 * row holds 64 columns x 4 consecutive k — the operand layout of AVX-512 VNNI vpdpbusd
 * (u8 x s8, four products summed into each int32 lane). A lone weight at k becomes a 32-bit
 * word with the weight in byte k % 4 and zeros elsewhere; a quad-aligned group of 4 weights of a
 * block row becomes one word. The +128 is taken out at the end: y = acc - 128 * sum(weights).
 * Without VNNI the same arithmetic runs on GCC vectors (jc_dpbusd below). */
typedef int32_t jc_vi16 __attribute__((vector_size(64), aligned(64)));
typedef uint32_t jc_vu16 __attribute__((vector_size(64), aligned(64)));

#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
#include <immintrin.h>
static inline __attribute__((always_inline)) void jc_dpbusd(jc_vi16 *acc, const jc_vi16 *u, int32_t wword)
{
    *acc = (jc_vi16)_mm512_dpbusd_epi32((__m512i)*acc, (__m512i)*u, _mm512_set1_epi32(wword));
}
#else
static inline __attribute__((always_inline)) void jc_dpbusd(jc_vi16 *acc, const jc_vi16 *u, int32_t wword)
{
    const jc_vu16 uu = (jc_vu16)*u;
    for (int b = 0; b < 4; b++) {
        const int32_t wb = (int8_t)(uint8_t)((uint32_t)wword >> (8 * b));
        *acc += (jc_vi16)((uu >> (8 * b)) & 0xffu) * wb;
    }
}
#endif

static void jc_pack_i8(const jc_src *s, int64_t K, int64_t kq, int64_t j0, int64_t w, uint8_t *Xq)
{
    static const int8_t zero = 0;
    for (int64_t q = 0; q < kq; q++) {
        uint32_t *dst = (uint32_t *)(Xq + q * JC_PW * 4);
        /* the quad's four rows; rows past K read a zero (stride 0) */
        const int8_t *r[4];
        ptrdiff_t st[4];
        for (int b = 0; b < 4; b++) {
            const int64_t k = q * 4 + b;
            r[b] = k < K ? s->x8 + k * s->sk + j0 * s->sn : &zero;
            st[b] = k < K ? s->sn : 0;
        }
        if (q * 4 + 4 + JC_PREFETCH <= K && s->sn == 1) {
            for (int b = 0; b < 4; b++) __builtin_prefetch(r[b] + JC_PREFETCH * s->sk, 0, 3);
        }
        if (q * 4 + 4 <= K && s->sn == 1) { /* the common case: four contiguous rows */
            for (int64_t j = 0; j < w; j++) {
                dst[j] = ((uint32_t)(uint8_t)r[0][j] | (uint32_t)(uint8_t)r[1][j] << 8 |
                          (uint32_t)(uint8_t)r[2][j] << 16 | (uint32_t)(uint8_t)r[3][j] << 24) ^ 0x80808080u;
            }
        } else {
            for (int64_t j = 0; j < w; j++) {
                dst[j] = ((uint32_t)(uint8_t)r[0][j * st[0]] | (uint32_t)(uint8_t)r[1][j * st[1]] << 8 |
                          (uint32_t)(uint8_t)r[2][j * st[2]] << 16 |
                          (uint32_t)(uint8_t)r[3][j * st[3]] << 24) ^ 0x80808080u;
            }
        }
        for (int64_t j = w; j < JC_PW; j++) dst[j] = 0x80808080u; /* x = 0 */
    }
}

static inline void jc_store_i32(int32_t *y, const jc_vi16 *acc, int32_t sum_w, int64_t w)
{
    int32_t tmp[JC_PW] __attribute__((aligned(64)));
    for (int v = 0; v < 4; v++) {
        const jc_vi16 r = acc[v] - 128 * sum_w;
        memcpy(tmp + v * JC_VW, &r, sizeof r);
    }
    memcpy(y, tmp, (size_t)w * sizeof(int32_t));
}

/* A lone weight v at column k as a vpdpbusd word: v in byte k % 4. */
static inline int32_t jc_word(int8_t v, int64_t k)
{
    return (int32_t)((uint32_t)(uint8_t)v << (8 * (k & 3)));
}

/* CSR rows, or any block shape one output row at a time (br = bc = 1 is CSR). */
static void jc_generic_i8(const jc_sparse *A, int64_t M, int64_t r0, int64_t r1,
                          const uint8_t *restrict Xq, int32_t *restrict Y, ptrdiff_t ldy,
                          int64_t j0, int64_t w)
{
    const int64_t br = A->br, bc = A->bc;
    for (int64_t ib = r0; ib < r1; ib++) {
        for (int64_t r = 0; r < br && ib * br + r < M; r++) {
            jc_vi16 a[4] = {0};
            int32_t sum_w = 0;
            for (int64_t p = A->indptr[ib]; p < A->indptr[ib + 1]; p++) {
                const int8_t *brow = A->data8 + (p * br + r) * bc;
                for (int64_t c = 0; c < bc; c++) {
                    const int64_t k = (int64_t)A->indices[p] * bc + c;
                    const jc_vi16 *u = (const jc_vi16 *)(Xq + (k >> 2) * JC_PW * 4);
                    const int32_t word = jc_word(brow[c], k);
                    for (int v = 0; v < 4; v++) jc_dpbusd(&a[v], &u[v], word);
                    sum_w += brow[c];
                }
            }
            jc_store_i32(Y + (ib * br + r) * ldy + j0, a, sum_w, w);
        }
    }
}

/* 4-row blocks whose width is a multiple of 4: each quad of a block row is one word, and each
 * packed quad row is loaded once for the four output rows. */
static void jc_bsr4q_i8(const jc_sparse *A, int64_t M, int64_t r0, int64_t r1,
                        const uint8_t *restrict Xq, int32_t *restrict Y, ptrdiff_t ldy,
                        int64_t j0, int64_t w)
{
    const int64_t bc = A->bc, nq = bc / 4;
    for (int64_t ib = r0; ib < r1; ib++) {
        jc_vi16 a0[4] = {0}, a1[4] = {0}, a2[4] = {0}, a3[4] = {0};
        int32_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        for (int64_t p = A->indptr[ib]; p < A->indptr[ib + 1]; p++) {
            const int8_t *blk = A->data8 + p * 4 * bc;
            const uint8_t *xrow = Xq + (int64_t)A->indices[p] * nq * JC_PW * 4;
            for (int64_t c = 0; c < nq; c++) {
                const jc_vi16 *u = (const jc_vi16 *)(xrow + c * JC_PW * 4);
                int32_t w0, w1, w2, w3;
                memcpy(&w0, blk + c * 4, 4);
                memcpy(&w1, blk + bc + c * 4, 4);
                memcpy(&w2, blk + 2 * bc + c * 4, 4);
                memcpy(&w3, blk + 3 * bc + c * 4, 4);
                for (int v = 0; v < 4; v++) {
                    jc_dpbusd(&a0[v], &u[v], w0);
                    jc_dpbusd(&a1[v], &u[v], w1);
                    jc_dpbusd(&a2[v], &u[v], w2);
                    jc_dpbusd(&a3[v], &u[v], w3);
                }
                for (int e = 0; e < 4; e++) {
                    s0 += blk[c * 4 + e];
                    s1 += blk[bc + c * 4 + e];
                    s2 += blk[2 * bc + c * 4 + e];
                    s3 += blk[3 * bc + c * 4 + e];
                }
            }
        }
        const int64_t row = ib * 4;
        int32_t *y = Y + row * ldy + j0;
        jc_store_i32(y, a0, s0, w);
        if (row + 1 < M) jc_store_i32(y + ldy, a1, s1, w);
        if (row + 2 < M) jc_store_i32(y + 2 * ldy, a2, s2, w);
        if (row + 3 < M) jc_store_i32(y + 3 * ldy, a3, s3, w);
    }
}

static void jc_item_i8(const jc_sparse *A, int64_t M, int64_t r0, int64_t r1, const uint8_t *Xq,
                       int32_t *Y, ptrdiff_t ldy, int64_t j0, int64_t w)
{
    if (A->br == 4 && A->bc % 4 == 0) jc_bsr4q_i8(A, M, r0, r1, Xq, Y, ldy, j0, w);
    else jc_generic_i8(A, M, r0, r1, Xq, Y, ldy, j0, w);
}

/* Y[M, N] (row stride ldy) = A @ src. K = logical columns of A; kpad = K rounded up to bc.
 * float32: Y is float; int8 (A->is_int8): Y is int32.
 * Work items are (panel, chunk of rows); when there are few panels the rows are split so both
 * threads have work. A thread repacks only when its panel changes.
 * Returns 0, or -1 if a panel buffer could not be allocated. */
static int jc_spmm(const jc_sparse *A, const jc_src *src, int64_t M, int64_t K, int64_t kpad,
                   int64_t N, void *Y, ptrdiff_t ldy, int threads)
{
    if (M == 0 || N == 0) return 0;
    const int64_t n_panels = (N + JC_PW - 1) / JC_PW;
    const int64_t units = A->n_units;
    int64_t chunks = 1;
    if (n_panels < 4 * (int64_t)threads) {
        chunks = (4 * (int64_t)threads + n_panels - 1) / n_panels;
        if (chunks > units) chunks = units;
        if (chunks < 1) chunks = 1;
    }
    const int64_t items = n_panels * chunks;
    const int64_t kq = (kpad + 3) / 4; /* int8: k-quads */
    const size_t bytes = A->is_int8 ? (size_t)(kq > 0 ? kq : 1) * JC_PW * 4
                                    : (size_t)(kpad > 0 ? kpad : 1) * JC_PW * sizeof(float);
    int failed = 0;
    if (threads < 1) threads = 1;
    if (items < threads) threads = (int)items;

    #pragma omp parallel num_threads(threads)
    {
        void *Xp = aligned_alloc(64, (bytes + 63) / 64 * 64);
        if (Xp == NULL) {
            #pragma omp atomic write
            failed = 1;
        }
        int64_t packed = -1;
        #pragma omp for schedule(dynamic, 1)
        for (int64_t it = 0; it < items; it++) {
            if (Xp == NULL) continue;
            const int64_t panel = it / chunks, chunk = it % chunks;
            const int64_t j0 = panel * JC_PW;
            const int64_t w = (N - j0 < JC_PW) ? N - j0 : JC_PW;
            const int64_t r0 = units * chunk / chunks, r1 = units * (chunk + 1) / chunks;
            if (A->is_int8) {
                if (panel != packed) jc_pack_i8(src, K, kq, j0, w, (uint8_t *)Xp);
                jc_item_i8(A, M, r0, r1, (const uint8_t *)Xp, (int32_t *)Y, ldy, j0, w);
            } else {
                if (panel != packed) jc_pack(src, K, kpad, j0, w, (float *)Xp);
                jc_item(A, M, r0, r1, (const float *)Xp, (float *)Y, ldy, j0, w);
            }
            packed = panel;
        }
        free(Xp);
    }
    return failed ? -1 : 0;
}

/* ------------------------------------------------------------------------------------------
 * Skinny dense GEMM for channel-pruned layers: Y[M, N] = W[M, K] @ X[K, N] with few rows M.
 *
 * Why not BLAS: a BLAS packs X (the large operand) into its own panels first; with few rows of
 * W there are too few FLOPs per byte of X to hide that extra pass. Here X is read in place: in
 * panels of JC_SK_NC = 512 columns (2 KB contiguous per row, kind to DRAM), K-blocked so a
 * panel block (JC_SK_KC = 128 rows, 256 KB) stays in L2, cut into strips of JC_SK_W = 64
 * columns (4 vectors) that every register block of rows runs over. A register block is up to
 * JC_SK_MR = 6 rows x 4 vectors = 24 accumulators (of the 32 zmm). The next panel block is
 * prefetched line by line, spread evenly over the current block's (strip, row block) calls, so
 * the DRAM stream overlaps the FMAs; the prefetch counts the lines a row really spans (with
 * NumPy's 16-byte offset a 2 KB row spans 33, and the 33rd, left to a demand miss, cost ~6% on
 * the 3x3 shape). W is packed once (jc_sk_pack_w) so each block's broadcasts come from
 * contiguous memory. Column edges: the in-place columns start on a cache line where X allows it
 * (jc_sk_head), a 16..48-column remainder runs in place on 1..3 vectors, and the < 16 columns
 * left at either edge are copied, a K block at a time, to a zero-padded 16-wide buffer (and
 * their Y goes through one). Tuned on an AVX-512 AMD EPYC core (1 MB L2): KC 64 / 256 and NC
 * 256 / 1024 were slower, and so were the t0, t2 and nta prefetch hints.
 * ------------------------------------------------------------------------------------------ */
#define JC_SK_MR 6
#define JC_SK_NV 4
#define JC_SK_W (JC_SK_NV * JC_VW)
#ifndef JC_SK_KC
#define JC_SK_KC 128     /* k rows per block: a panel block is 256 KB */
#endif
#ifndef JC_SK_NC
#define JC_SK_NC 512     /* columns per panel: 2 KB contiguous per row of X */
#endif
#ifndef JC_SK_PF_HINT
#define JC_SK_PF_HINT 2  /* prefetcht1: into L2 */
#endif

/* Row blocks: nb = ceil(M / MR) blocks of near-equal height (every block has >= MR - 1 rows
 * when M >= MR, so few accumulators sit idle); block b is rows [M b / nb, M (b + 1) / nb). */
static inline int64_t jc_sk_blocks(int64_t M) { return (M + JC_SK_MR - 1) / JC_SK_MR; }
static inline int64_t jc_sk_row(int64_t M, int64_t b) { return M * b / jc_sk_blocks(M); }

/* Packed W: block b (rows r0..r1) is stored at Wp + r0 * K as [K][r1 - r0]. */
static void jc_sk_pack_w(const float *W, ptrdiff_t ldw, int64_t M, int64_t K, float *Wp)
{
    const int64_t nb = jc_sk_blocks(M);
    for (int64_t b = 0; b < nb; b++) {
        const int64_t r0 = jc_sk_row(M, b), mr = jc_sk_row(M, b + 1) - r0;
        float *dst = Wp + r0 * K;
        for (int64_t k = 0; k < K; k++)
            for (int64_t r = 0; r < mr; r++) dst[k * mr + r] = W[(r0 + r) * ldw + k];
    }
}

/* Software prefetch of a run of lines of the next X block: `lines` cache lines starting at
 * line `first` of a block whose rows are `per_row` lines long (row stride ldx floats), `burst`
 * lines every `every` k steps. */
typedef struct {
    const char *base;
    ptrdiff_t row_bytes;
    int64_t per_row, first, lines, every, burst;
} jc_sk_pf;

/* The cache line holding p. */
static inline const char *jc_sk_line(const char *p) { return (const char *)((uintptr_t)p & ~(uintptr_t)63); }

/* Cache lines to prefetch per row so that rows of `bytes` bytes from row0 (stride row_bytes)
 * are covered from the line of each row's start: NumPy's large arrays start 16 bytes into a
 * line, so a 2 KB row spans 33 lines, and a missed last line costs a DRAM round trip. */
static inline int64_t jc_sk_lines(const char *row0, ptrdiff_t row_bytes, int64_t bytes)
{
    if (row_bytes % 64 == 0) return ((int64_t)((uintptr_t)row0 % 64) + bytes + 63) / 64;
    return (bytes + 63) / 64 + 1;
}

/* With up to 4 rows GCC folds the X loads into the FMAs as memory operands, loading each X
 * vector once per row: on this AMD core that made the loads, not the FMAs, the bottleneck
 * (~47 of ~100 GFLOP/s at 4 rows). An empty asm that needs the value in a register stops it. */
#ifndef JC_SK_IN_REGISTER
#if defined(__AVX512F__) && (defined(__x86_64__) || defined(__i386__))
#define JC_SK_IN_REGISTER(v) __asm__("" : "+v"(v))
#else
#define JC_SK_IN_REGISTER(v) ((void)0)
#endif
#endif

/* One register block: rows of wp ([kc][MR]) times kc rows of an NV-vector strip x (row stride
 * ldx), added to (or, first, stored into) y (row stride ldy), while issuing the prefetches of
 * pf. MR, NV are constants after inlining, so acc stays in registers. */
static inline __attribute__((always_inline)) void
jc_sk_micro(const float *restrict wp, const float *restrict x, ptrdiff_t ldx, int64_t kc,
            float *restrict y, ptrdiff_t ldy, int first, const jc_sk_pf *pf, const int MR,
            const int NV)
{
    jc_v16 acc[JC_SK_MR][JC_SK_NV];
    for (int r = 0; r < MR; r++)
        for (int v = 0; v < NV; v++)
            acc[r][v] = first ? (jc_v16){0} : *(const jc_v16u *)(y + r * ldy + v * JC_VW);
    int64_t left = pf->lines, countdown = 0, col = 0;
    const char *row = NULL;
    if (left > 0) {
        col = pf->first % pf->per_row;
        row = pf->base + (pf->first / pf->per_row) * pf->row_bytes;
    }
    for (int64_t k = 0; k < kc; k++) {
        if (left > 0 && --countdown <= 0) {
            for (int64_t i = 0; i < pf->burst && left > 0; i++, left--) {
                __builtin_prefetch(jc_sk_line(row) + col * 64, 0, JC_SK_PF_HINT);
                if (++col == pf->per_row) {
                    col = 0;
                    row += pf->row_bytes;
                }
            }
            countdown = pf->every;
        }
        jc_v16 xv[JC_SK_NV];
        for (int v = 0; v < NV; v++) {
            xv[v] = *(const jc_v16u *)(x + k * ldx + v * JC_VW);
            JC_SK_IN_REGISTER(xv[v]);
        }
        for (int r = 0; r < MR; r++) {
            const float w = wp[k * MR + r];
            for (int v = 0; v < NV; v++) acc[r][v] += w * xv[v];
        }
    }
    for (int r = 0; r < MR; r++)
        for (int v = 0; v < NV; v++) *(jc_v16u *)(y + r * ldy + v * JC_VW) = acc[r][v];
}

#define JC_SK_CASE_NV(MR)                                                        \
    switch (nv) {                                                                \
    case 1: jc_sk_micro(wp, x, ldx, kc, y, ldy, first, pf, MR, 1); break;        \
    case 2: jc_sk_micro(wp, x, ldx, kc, y, ldy, first, pf, MR, 2); break;        \
    case 3: jc_sk_micro(wp, x, ldx, kc, y, ldy, first, pf, MR, 3); break;        \
    default: jc_sk_micro(wp, x, ldx, kc, y, ldy, first, pf, MR, 4); break;       \
    }

static void jc_sk_block(const float *wp, const float *x, ptrdiff_t ldx, int64_t kc, float *y,
                        ptrdiff_t ldy, int first, const jc_sk_pf *pf, int64_t mr, int nv)
{
    switch (mr) {
    case 1: JC_SK_CASE_NV(1) break;
    case 2: JC_SK_CASE_NV(2) break;
    case 3: JC_SK_CASE_NV(3) break;
    case 4: JC_SK_CASE_NV(4) break;
    case 5: JC_SK_CASE_NV(5) break;
    default: JC_SK_CASE_NV(6) break;
    }
}

/* Row blocks [b0, b1) over one column panel: x = the panel's first column of X (row stride
 * ldx), width w (a multiple of 16, at most JC_SK_NC), y = Y at the same column (row stride ldy,
 * row 0 = row 0 of Y). Per K block the panel's strips each run every row block; the next K
 * block of the panel (or, for the last one, the first block of the panel at next_x, next_w
 * columns wide, if next_x is not NULL) is prefetched, spread evenly over those calls. */
static void jc_sk_panel(const float *Wp, int64_t M, int64_t K, int64_t b0, int64_t b1,
                        const float *x, ptrdiff_t ldx, int64_t w, float *y, ptrdiff_t ldy,
                        const float *next_x, int64_t next_w)
{
    const int64_t strips = (w + JC_SK_W - 1) / JC_SK_W;
    const int64_t calls = strips * (b1 - b0);
    for (int64_t k0 = 0; k0 < K; k0 += JC_SK_KC) {
        const int64_t kc = K - k0 < JC_SK_KC ? K - k0 : JC_SK_KC;
        jc_sk_pf pf = {NULL, ldx * (ptrdiff_t)sizeof(float), 0, 0, 0, 1, 1};
        int64_t total = 0;
        if (k0 + kc < K) {
            const int64_t rows = K - k0 - kc < JC_SK_KC ? K - k0 - kc : JC_SK_KC;
            pf.base = (const char *)(x + (k0 + kc) * ldx);
            pf.per_row = jc_sk_lines(pf.base, pf.row_bytes, w * 4);
            total = rows * pf.per_row;
        } else if (next_x != NULL) {
            const int64_t rows = K < JC_SK_KC ? K : JC_SK_KC;
            pf.base = (const char *)next_x;
            pf.per_row = jc_sk_lines(pf.base, pf.row_bytes, next_w * 4);
            total = rows * pf.per_row;
        }
        const int64_t per_call = (total + calls - 1) / calls;
        pf.burst = per_call > kc ? (per_call + kc - 1) / kc : 1;
        pf.every = per_call > 0 ? (kc > per_call ? kc / per_call : 1) : kc;
        int64_t c = 0;
        for (int64_t s = 0; s < strips; s++) {
            const int64_t j = s * JC_SK_W;
            const int nv = (int)((w - j < JC_SK_W ? w - j : JC_SK_W) / JC_VW);
            for (int64_t b = b0; b < b1; b++, c++) {
                const int64_t r0 = jc_sk_row(M, b), mr = jc_sk_row(M, b + 1) - r0;
                pf.first = c * per_call;
                pf.lines = total - pf.first < per_call ? total - pf.first : per_call;
                if (pf.lines < 0) pf.lines = 0;
                jc_sk_block(Wp + r0 * K + k0 * mr, x + k0 * ldx + j, ldx, kc, y + r0 * ldy + j, ldy,
                            k0 == 0, &pf, mr, nv);
            }
        }
    }
}

/* Row blocks [b0, b1) over columns [c0, c1) of X (multiples of 16), in panels of JC_SK_NC;
 * each panel's last K block prefetches the first block of the next panel. */
static void jc_sk_range(const float *Wp, int64_t M, int64_t K, int64_t b0, int64_t b1,
                        const float *X, ptrdiff_t ldx, int64_t c0, int64_t c1, float *Y,
                        ptrdiff_t ldy)
{
    for (int64_t j0 = c0; j0 < c1; j0 += JC_SK_NC) {
        const int64_t w = c1 - j0 < JC_SK_NC ? c1 - j0 : JC_SK_NC, nj = j0 + w;
        const int64_t next_w = c1 - nj < JC_SK_NC ? c1 - nj : JC_SK_NC;
        jc_sk_panel(Wp, M, K, b0, b1, X + j0, ldx, w, Y + j0, ldy, next_w > 0 ? X + nj : NULL,
                    next_w);
    }
}

/* Columns [c0, c0 + t0) and [c1, c1 + t1) of X, t0 + t1 <= 16 (the left and right edges
 * share one pass where they fit), rows of blocks [b0, b1): one K block at a time copied into a
 * zero-padded 16-wide buffer on the stack, multiplied into a 16-wide Y buffer, then the real
 * columns stored. -1: no memory for the Y buffer. */
static int jc_sk_narrow(const float *Wp, int64_t M, int64_t K, int64_t b0, int64_t b1,
                        const float *X, ptrdiff_t ldx, int64_t c0, int64_t t0, int64_t c1,
                        int64_t t1, float *Y, ptrdiff_t ldy)
{
    float xt[JC_SK_KC * JC_VW] __attribute__((aligned(64)));
    float *yt = aligned_alloc(64, (size_t)M * JC_VW * sizeof(float));
    if (yt == NULL) return -1;
    const jc_sk_pf none = {NULL, 0, 0, 0, 0, 1, 1};
    memset(xt, 0, sizeof xt); /* lanes t0 + t1 .. 15 stay zero */
    for (int64_t k0 = 0; k0 < K; k0 += JC_SK_KC) {
        const int64_t kc = K - k0 < JC_SK_KC ? K - k0 : JC_SK_KC;
        for (int64_t k = 0; k < kc; k++) {
            const float *row = X + (k0 + k) * ldx;
            float *dst = xt + k * JC_VW;
            for (int64_t j = 0; j < t0; j++) dst[j] = row[c0 + j];
            for (int64_t j = 0; j < t1; j++) dst[t0 + j] = row[c1 + j];
        }
        for (int64_t b = b0; b < b1; b++) {
            const int64_t r0 = jc_sk_row(M, b), mr = jc_sk_row(M, b + 1) - r0;
            jc_sk_block(Wp + r0 * K + k0 * mr, xt, JC_VW, kc, yt + r0 * JC_VW, JC_VW, k0 == 0,
                        &none, mr, 1);
        }
    }
    for (int64_t r = jc_sk_row(M, b0); r < jc_sk_row(M, b1); r++) {
        memcpy(Y + r * ldy + c0, yt + r * JC_VW, (size_t)t0 * sizeof(float));
        memcpy(Y + r * ldy + c1, yt + r * JC_VW + t0, (size_t)t1 * sizeof(float));
    }
    free(yt);
    return 0;
}

/* Columns of X skipped at the left (then run by jc_sk_narrow) so that the in-place vector loads
 * start on a cache line. NumPy's large arrays start 16 bytes into a line, so every 64-byte
 * load of X spans two lines: aligned, the 51- and 26-row 3x3 GEMMs (N = 3136) ran ~2.5%
 * faster. Only where all rows share the offset (ldx a multiple of 16 floats) and N is wide
 * enough that the extra narrow pass (another pass over W, up to 16 columns at one vector)
 * costs less: measured break-even between N = 1024 (1-2% slower) and 1568 (0-2% faster). */
#ifndef JC_SK_ALIGN_MIN_N
#define JC_SK_ALIGN_MIN_N 1536
#endif
static inline int64_t jc_sk_head(const float *X, ptrdiff_t ldx, int64_t N)
{
    const uintptr_t off = (uintptr_t)X % 64;
    if (off == 0 || off % sizeof(float) != 0 || ldx % JC_VW != 0 || N < JC_SK_ALIGN_MIN_N) return 0;
    return (int64_t)((64 - off) / sizeof(float));
}

/* Y[M, N] (row stride ldy) = W @ X, W packed by jc_sk_pack_w, X[K, N] with row stride ldx and
 * contiguous rows; K >= 1. Columns [head, head + n16) are read in place (head from jc_sk_head,
 * n16 a multiple of 16); the head and the last < 16 columns go through jc_sk_narrow. Each
 * thread takes one contiguous share: of the columns (each then reads all of W and its part of
 * X) or, when W has more rows than X has columns, of the row blocks (each reads its part of W
 * and all of X). Returns 0, or -1 if out of memory. */
static int jc_skinny(const float *Wp, int64_t M, int64_t K, const float *X, ptrdiff_t ldx,
                     int64_t N, float *Y, ptrdiff_t ldy, int threads)
{
    if (M == 0 || N == 0) return 0;
    const int64_t head = jc_sk_head(X, ldx, N);
    const int64_t n16 = (N - head) / JC_VW * JC_VW, tail = N - head - n16, units = n16 / JC_VW;
    const int64_t nb = jc_sk_blocks(M);
    if (threads < 1) threads = 1;
    const int split_rows = M > N;
    const int64_t parts = split_rows ? nb : (units > 0 ? units : 1);
    if (threads > parts) threads = (int)parts;
    int failed = 0;

    #pragma omp parallel for num_threads(threads) schedule(static, 1)
    for (int t = 0; t < threads; t++) {
        int64_t b0 = 0, b1 = nb, c0 = 0, c1 = n16;
        if (split_rows) {
            b0 = nb * t / threads;
            b1 = nb * (t + 1) / threads;
        } else {
            c0 = units * t / threads * JC_VW;
            c1 = units * (t + 1) / threads * JC_VW;
        }
        jc_sk_range(Wp, M, K, b0, b1, X + head, ldx, c0, c1, Y + head, ldy);
        /* the edges: one narrow pass where they fit in 16 columns, else the head on the first
         * thread and the tail on the last (every thread, each on its rows, when rows are split) */
        int rc = 0;
        const int first = split_rows || t == 0, last = split_rows || t == threads - 1;
        if (head + tail <= JC_VW) {
            if (head + tail > 0 && last)
                rc = jc_sk_narrow(Wp, M, K, b0, b1, X, ldx, 0, head, head + n16, tail, Y, ldy);
        } else {
            if (first) rc |= jc_sk_narrow(Wp, M, K, b0, b1, X, ldx, 0, head, 0, 0, Y, ldy);
            if (last) rc |= jc_sk_narrow(Wp, M, K, b0, b1, X, ldx, head + n16, tail, 0, 0, Y, ldy);
        }
        if (rc != 0) {
            #pragma omp atomic write
            failed = 1;
        }
    }
    return failed ? -1 : 0;
}

#endif /* JOULECUT_SPARSE_CORE_H */
