/* Direct sparse convolution for small-channel layers: y[n, m] = bias[m] + sum over the CSR
 * nonzeros (c, r, s) of row m of w * xpad[n, c, oy*stride_h + r*dil_h, ox*stride_w + s*dil_w],
 * NCHW float32.
 *
 * Why: the im2col panel kernel (sparse_core.h) packs a K x 64 panel before any row of W touches
 * it; with 16-32 output rows that packing is most of the work. Here nothing is packed per
 * panel: the batch is copied once into a zero-padded buffer and every nonzero of a filter adds
 * w * (a shifted window of one padded input plane) to the outputs held in registers.
 *
 * The padded plane is read as one flat array of row width Ws. Output (oy, ox) at flat lane
 * j = oy * Ws + ox under the nonzero (c, r, s) reads xpad[off(c, r, s) + j], so every nonzero
 * reads a *contiguous* run of lanes: a chunk of up to 128 lanes (8 vectors of 16; 4 without
 * AVX-512) is kept in registers across all the nonzeros of a filter. Lanes with ox >= Q wrap into the next row and are computed and
 * dropped; with stride 1 that costs (S-1)*dil_w / Wp of the lanes, instead of the 75% a per-row
 * vector of 16 would waste on a 4-wide output. Strides > 1 use the same loop on a phase-split
 * copy (see jc_dc_pad_channel). A chunk may read up to 15 floats past the last plane,
 * so the padded buffer carries that much zeroed slack.
 *
 * Vectors are GCC vector extensions (16 floats): one zmm with -march=native on AVX-512, split
 * into narrower vectors elsewhere, so the native and portable builds share one code path.
 *
 * The caller (direct_conv.pyx) validates every array and the CSR before calling; nothing here
 * checks bounds.
 */
#ifndef JOULECUT_DIRECT_CONV_H
#define JOULECUT_DIRECT_CONV_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#ifdef __AVX512F__
#include <immintrin.h>
#endif

#define JC_DC_VW 16                    /* floats per vector */
/* Vectors per chunk: 8 (16 accumulators of the 32 AVX-512 registers) amortise each nonzero's
 * offset load and broadcast over more FMAs and hold a whole 8x8 output plane in one pass; 4
 * where 16-float vectors are split into narrower registers (16 of them with AVX2). */
#ifdef __AVX512F__
#define JC_DC_NV 8
#else
#define JC_DC_NV 4
#endif
#define JC_DC_CHUNK (JC_DC_VW * JC_DC_NV) /* output lanes held in registers per pass */
#define JC_DC_SLACK JC_DC_VW           /* floats read past the last padded plane, at most */

typedef float jc_dc_v16 __attribute__((vector_size(64), aligned(64)));
typedef float jc_dc_v16u __attribute__((vector_size(64), aligned(4))); /* unaligned access */
typedef int32_t jc_dc_vi16 __attribute__((vector_size(64), aligned(64)));

typedef struct {
    int64_t N, C, H, W;                 /* input x[n, c, h, w] at x + n*sN + c*sC + h*sH + w*sW */
    ptrdiff_t sN, sC, sH, sW;
    int64_t M, R, S, P, Q;
    int64_t stride_h, stride_w, pad_h, pad_w, dil_h, dil_w;
    ptrdiff_t yN, yM;                   /* y[n, m] plane at y + n*yN + m*yM, P x Q contiguous */
} jc_dc_geom;

typedef struct {
    const int32_t *indptr, *indices;    /* CSR of the [M, C*R*S] weight */
    const float *data;
} jc_dc_csr;

/* The padded image in phase-split form: padded row h, column w of channel c lives in phase
 * (h % stride_h, w % stride_w) at (h / stride_h, w / stride_w) of a [Hs, Ws] plane. A conv of
 * any stride is then a stride-1 conv over the phase planes: output (oy, ox) under tap (r, s)
 * reads phase ((r*dil_h) % sh, (s*dil_w) % sw) at (oy + r*dil_h / sh, ox + s*dil_w / sw). With
 * stride 1 there is one phase and this is the plain zero-padded plane. */
static inline int64_t jc_dc_ws(const jc_dc_geom *g) { return (g->W + 2 * g->pad_w + g->stride_w - 1) / g->stride_w; }
static inline int64_t jc_dc_hs(const jc_dc_geom *g) { return (g->H + 2 * g->pad_h + g->stride_h - 1) / g->stride_h; }
static inline int64_t jc_dc_phase(const jc_dc_geom *g) { return jc_dc_hs(g) * jc_dc_ws(g); }
static inline int64_t jc_dc_channel(const jc_dc_geom *g) { return g->stride_h * g->stride_w * jc_dc_phase(g); }

#ifdef __AVX512F__
static inline __mmask16 jc_dc_lanes(int64_t lo, int64_t hi) /* lanes [lo, hi) of 16, clamped */
{
    lo = lo < 0 ? 0 : lo;
    hi = hi > JC_DC_VW ? JC_DC_VW : hi;
    return hi <= lo ? 0 : (__mmask16)(((1u << hi) - 1) & ~((1u << lo) - 1));
}

/* One phase, unit-stride rows: each padded row is built 16 lanes at a time, the input read
 * with a lane mask (masked-off lanes are never touched, so reading "before" the row is safe)
 * and stored whole, zeros included: no memset / memcpy calls for rows of a few floats. */
static void jc_dc_pad_rows(const jc_dc_geom *g, const float *src, float *dst)
{
    const int64_t Ws = jc_dc_ws(g), Hp = jc_dc_hs(g), pw = g->pad_w;
    for (int64_t hp = 0; hp < Hp; hp++) {
        const int64_t h = hp - g->pad_h;
        const int inside = h >= 0 && h < g->H;
        const float *in = src + (inside ? h : 0) * g->sH - pw;
        float *row = dst + hp * Ws;
        for (int64_t v = 0; v < Ws; v += JC_DC_VW) {
            const __mmask16 load = inside ? jc_dc_lanes(pw - v, pw + g->W - v) : 0;
            _mm512_mask_storeu_ps(row + v, jc_dc_lanes(0, Ws - v), _mm512_maskz_loadu_ps(load, in + v));
        }
    }
}
#endif

/* Whether some kernel tap reads phase (a, b). */
static inline int jc_dc_phase_used(const jc_dc_geom *g, int64_t a, int64_t b)
{
    int rows = 0, cols = 0;
    for (int64_t r = 0; r < g->R && !rows; r++) rows = (r * g->dil_h) % g->stride_h == a;
    for (int64_t s = 0; s < g->S && !cols; s++) cols = (s * g->dil_w) % g->stride_w == b;
    return rows && cols;
}

/* Copy channel (n, c) of x (any strides) into its zero-padded, phase-split slot. */
static void jc_dc_pad_channel(const jc_dc_geom *g, const float *x, int64_t n, int64_t c, float *dst)
{
    const int64_t Ws = jc_dc_ws(g), sh = g->stride_h, sw = g->stride_w;
    const float *src = x + n * g->sN + c * g->sC;
#ifdef __AVX512F__
    if (sh == 1 && sw == 1 && g->sW == 1) {
        jc_dc_pad_rows(g, src, dst);
        return;
    }
#endif
    if (sh == 1 && sw == 1) {  /* one phase: zero only the border */
        memset(dst, 0, (size_t)(g->pad_h * Ws) * sizeof(float));
        memset(dst + (g->pad_h + g->H) * Ws, 0, (size_t)(g->pad_h * Ws) * sizeof(float));
        for (int64_t h = 0; h < g->H; h++) {
            float *row = dst + (h + g->pad_h) * Ws;
            const float *in = src + h * g->sH;
            for (int64_t w = 0; w < g->pad_w; w++) row[w] = row[g->pad_w + g->W + w] = 0.0f;
            if (g->sW == 1) {
                memcpy(row + g->pad_w, in, (size_t)g->W * sizeof(float));
            } else {
                for (int64_t w = 0; w < g->W; w++) row[g->pad_w + w] = in[w * g->sW];
            }
        }
        return;
    }
    /* phase (a, b) row i, column j holds padded (i*sh + a, j*sw + b): zero where that falls in
     * the padding or past the padded image (the phase grid is rounded up). Loops, no divisions. */
    const int64_t phase = jc_dc_phase(g), Hs = jc_dc_hs(g);
    for (int64_t a = 0; a < sh; a++) {
        for (int64_t b = 0; b < sw; b++) {
            float *plane = dst + (a * sw + b) * phase;
            if (!jc_dc_phase_used(g, a, b)) {  /* e.g. all but (0, 0) for a 1x1 stride-2 conv */
                memset(plane, 0, (size_t)phase * sizeof(float));
                continue;
            }
            /* columns j with an input column w = j*sw + b - pad_w in [0, W) */
            int64_t j_lo = 0, j_hi = Ws;
            while (j_lo < Ws && j_lo * sw + b < g->pad_w) j_lo++;
            while (j_hi > j_lo && (j_hi - 1) * sw + b >= g->pad_w + g->W) j_hi--;
            for (int64_t i = 0; i < Hs; i++) {
                float *row = plane + i * Ws;
                const int64_t h = i * sh + a - g->pad_h;
                if (h < 0 || h >= g->H) {
                    for (int64_t j = 0; j < Ws; j++) row[j] = 0.0f;
                    continue;
                }
                const float *in = src + h * g->sH + (j_lo * sw + b - g->pad_w) * g->sW;
                const ptrdiff_t step = sw * g->sW;
                for (int64_t j = 0; j < j_lo; j++) row[j] = 0.0f;
                for (int64_t j = j_lo; j < j_hi; j++) row[j] = in[(j - j_lo) * step];
                for (int64_t j = j_hi; j < Ws; j++) row[j] = 0.0f;
            }
        }
    }
}

/* Offset of every stored nonzero's window in a padded image (see jc_dc_pad_channel), from a
 * table over the C*R*S taps built by nested loops: per-nonzero divisions to split k into
 * (c, r, s) cost more than all the FMAs of a small layer. tap needs C*R*S entries. */
static void jc_dc_offsets(const jc_dc_geom *g, const jc_dc_csr *A, int64_t nnz, ptrdiff_t *tap, ptrdiff_t *off)
{
    const int64_t Ws = jc_dc_ws(g), phase = jc_dc_phase(g), channel = jc_dc_channel(g);
    const int64_t sh = g->stride_h, sw = g->stride_w;
    int64_t k = 0;
    for (int64_t c = 0; c < g->C; c++) {
        for (int64_t r = 0; r < g->R; r++) {
            const int64_t dy = r * g->dil_h;
            for (int64_t s = 0; s < g->S; s++, k++) {
                const int64_t dx = s * g->dil_w;
                tap[k] = c * channel + ((dy % sh) * sw + dx % sw) * phase + (dy / sh) * Ws + dx / sw;
            }
        }
    }
    for (int64_t p = 0; p < nnz; p++) off[p] = tap[A->indices[p]];
}

/* Which of a chunk's lanes [j0, j0 + len) of the flat grid (row width G) are real outputs
 * (ox < Q), worked out once per chunk, not per filter (the divisions cost more than a small
 * filter's FMAs). In flat order the real lanes are consecutive outputs of the P x Q plane, from
 * ``first`` on: per vector, a lane mask and its count (for compress + store), and as runs of
 * whole lanes (lane offset, output offset, length) for the portable store. */
typedef struct {
    int64_t first;
    uint32_t mask[JC_DC_NV];
    int count[JC_DC_NV];
    int64_t n, lane[JC_DC_CHUNK + 1], out[JC_DC_CHUNK + 1], len[JC_DC_CHUNK + 1];
} jc_dc_runs;

static void jc_dc_chunk_runs(int64_t j0, int64_t len, int64_t G, int64_t Q, jc_dc_runs *runs)
{
    const int64_t oy0 = j0 / G;
    int64_t ox = j0 - oy0 * G;
    runs->first = oy0 * Q + (ox < Q ? ox : Q);
    runs->n = 0;
    for (int v = 0; v < JC_DC_NV; v++) {
        runs->mask[v] = 0;
        runs->count[v] = 0;
    }
    for (int64_t l = 0, oy = oy0; l < len; l++) {
        if (ox < Q) {
            runs->mask[l / JC_DC_VW] |= 1u << (l % JC_DC_VW);
            runs->count[l / JC_DC_VW]++;
            if (ox == 0 || l == 0) {  /* a run starts */
                runs->lane[runs->n] = l;
                runs->out[runs->n] = oy * Q + ox;
                runs->len[runs->n++] = 0;
            }
            runs->len[runs->n - 1]++;
        }
        if (++ox == G) {
            ox = 0;
            oy++;
        }
    }
}

#ifdef __AVX512F__
/* Compress each vector's real lanes together and store them with a mask: no round trip through
 * memory (a masked reload of a just-stored vector stalls store forwarding). The compress is the
 * register form: its memory form is slow on some CPUs (AMD Zen 4). */
static inline __attribute__((always_inline)) void
jc_dc_store(const jc_dc_v16 *acc, int NV, const jc_dc_runs *runs, float *y)
{
    float *dst = y + runs->first;
    for (int v = 0; v < NV; v++) {
        const __m512 packed = _mm512_maskz_compress_ps((__mmask16)runs->mask[v], (__m512)acc[v]);
        _mm512_mask_storeu_ps(dst, (__mmask16)((1u << runs->count[v]) - 1), packed);
        dst += runs->count[v];
    }
}
#else
static inline void jc_dc_store(const jc_dc_v16 *acc, int NV, const jc_dc_runs *runs, float *y)
{
    const float *lanes = (const float *)acc;
    (void)NV;
    for (int64_t i = 0; i < runs->n; i++) memcpy(y + runs->out[i], lanes + runs->lane[i], (size_t)runs->len[i] * sizeof(float));
}
#endif

/* One chunk of filter m over padded image xn. NV vectors (1..JC_DC_NV) is a
 * constant after inlining so the accumulators stay in registers; two accumulator sets (even /
 * odd nonzeros) halve the FMA dependency chain. */
static inline __attribute__((always_inline)) void
jc_dc_chunk(const float *restrict xn, const ptrdiff_t *restrict off, const float *restrict val,
            int64_t p0, int64_t p1, float bias, int relu, int64_t j0, const jc_dc_runs *runs,
            float *restrict y, const int NV)
{
    jc_dc_v16 a[JC_DC_NV], b[JC_DC_NV];
    for (int v = 0; v < NV; v++) {
        a[v] = (jc_dc_v16){0} + bias;
        b[v] = (jc_dc_v16){0};
    }
    const float *base = xn + j0;
    int64_t p = p0;
    for (; p + 1 < p1; p += 2) {
        const float va = val[p], vb = val[p + 1];
        const float *xa = base + off[p], *xb = base + off[p + 1];
        for (int v = 0; v < NV; v++) {
            a[v] += va * *(const jc_dc_v16u *)(xa + v * JC_DC_VW);
            b[v] += vb * *(const jc_dc_v16u *)(xb + v * JC_DC_VW);
        }
    }
    if (p < p1) {
        const float va = val[p];
        const float *xa = base + off[p];
        for (int v = 0; v < NV; v++) a[v] += va * *(const jc_dc_v16u *)(xa + v * JC_DC_VW);
    }
    for (int v = 0; v < NV; v++) {
        a[v] += b[v];
        if (relu) a[v] = (jc_dc_v16)((jc_dc_vi16)a[v] & (a[v] > 0.0f)); /* C has no vector ?: */
    }
    jc_dc_store(a, NV, runs, y);
}

/* Filters [m0, m1) of image n, the flat-grid chunk starting at lane j0. */
static void jc_dc_flat_item(const jc_dc_geom *g, const jc_dc_csr *A, const ptrdiff_t *off, const float *xn,
                            const float *bias, int relu, int64_t j0, int64_t m0, int64_t m1, float *yn)
{
    const int64_t G = jc_dc_ws(g), L = (g->P - 1) * G + g->Q;
    const int64_t len = (L - j0 < JC_DC_CHUNK) ? L - j0 : JC_DC_CHUNK;
    const int nv = (int)((len + JC_DC_VW - 1) / JC_DC_VW);
    jc_dc_runs runs;
    jc_dc_chunk_runs(j0, len, G, g->Q, &runs);
    for (int64_t m = m0; m < m1; m++) {
        const int64_t p0 = A->indptr[m], p1 = A->indptr[m + 1];
        const float b = bias ? bias[m] : 0.0f;
        float *ym = yn + m * g->yM;
#define JC_DC_CASE(NV) case NV: jc_dc_chunk(xn, off, A->data, p0, p1, b, relu, j0, &runs, ym, NV); break
        switch (nv) {
        JC_DC_CASE(1);
        JC_DC_CASE(2);
        JC_DC_CASE(3);
#if JC_DC_NV > 4
        JC_DC_CASE(4);
        JC_DC_CASE(5);
        JC_DC_CASE(6);
        JC_DC_CASE(7);
#endif
        default: jc_dc_chunk(xn, off, A->data, p0, p1, b, relu, j0, &runs, ym, JC_DC_NV); break;
        }
#undef JC_DC_CASE
    }
}

/* Filters per work item: whole M when (image, chunk) pairs already give every thread several
 * items, else M split so that there are about 4 items per thread. */
static int64_t jc_dc_mblock(int64_t M, int64_t pairs, int threads)
{
    if (threads <= 1 || pairs >= 4 * (int64_t)threads) return M;
    const int64_t splits = (4 * (int64_t)threads + pairs - 1) / pairs;
    const int64_t mb = (M + splits - 1) / splits;
    return mb < 1 ? 1 : mb;
}

/* Work item it: image-major, then chunk, then filter block, so that a chunk's input window
 * stays in cache across the filters that read it. */
static inline void jc_dc_item(const jc_dc_geom *g, const jc_dc_csr *A, const ptrdiff_t *off, const float *xp,
                              const float *bias, int relu, float *y, int64_t it, int64_t chunks, int64_t mblocks,
                              int64_t mb)
{
    const int64_t n = it / (chunks * mblocks), rest = it % (chunks * mblocks);
    const int64_t chunk = rest / mblocks, m0 = (rest % mblocks) * mb;
    const int64_t m1 = m0 + mb < g->M ? m0 + mb : g->M;
    jc_dc_flat_item(g, A, off, xp + n * g->C * jc_dc_channel(g), bias, relu, chunk * JC_DC_CHUNK, m0, m1,
                    y + n * g->yN);
}

/* y = conv(x, A) (+ bias, ReLU). Returns 0, or -1 when a buffer cannot be allocated. */
static int jc_direct_conv(const jc_dc_geom *g, const jc_dc_csr *A, const float *x, const float *bias,
                          int relu, float *y, int threads)
{
    if (g->N == 0 || g->M == 0) return 0;
    const int64_t channel = jc_dc_channel(g), image = g->C * channel, nnz = A->indptr[g->M];
    float *xp = (float *)malloc((size_t)(g->N * image + JC_DC_SLACK) * sizeof(float));
    const int64_t taps = g->C * g->R * g->S;
    ptrdiff_t *off = (ptrdiff_t *)malloc((size_t)(nnz + taps + 1) * sizeof(ptrdiff_t));
    if (!xp || !off) {
        free(xp);
        free(off);
        return -1;
    }
    memset(xp + g->N * image, 0, JC_DC_SLACK * sizeof(float));
    jc_dc_offsets(g, A, nnz, off + nnz, off);
    const int64_t planes = g->N * g->C;
    const int64_t L = (g->P - 1) * jc_dc_ws(g) + g->Q, chunks = (L + JC_DC_CHUNK - 1) / JC_DC_CHUNK;
    const int64_t pairs = g->N * chunks, mb = jc_dc_mblock(g->M, pairs, threads);
    const int64_t mblocks = (g->M + mb - 1) / mb, items = pairs * mblocks;
    /* one thread: plain loops (an OpenMP region costs about a microsecond even when it is
     * switched off by an if clause, a good share of a small layer) */
    if (threads <= 1) {
        for (int64_t i = 0; i < planes; i++) jc_dc_pad_channel(g, x, i / g->C, i % g->C, xp + i * channel);
        for (int64_t it = 0; it < items; it++) jc_dc_item(g, A, off, xp, bias, relu, y, it, chunks, mblocks, mb);
    } else {
        #pragma omp parallel num_threads(threads)
        {
            #pragma omp for schedule(static)
            for (int64_t i = 0; i < planes; i++) jc_dc_pad_channel(g, x, i / g->C, i % g->C, xp + i * channel);
            #pragma omp for schedule(static)
            for (int64_t it = 0; it < items; it++) jc_dc_item(g, A, off, xp, bias, relu, y, it, chunks, mblocks, mb);
        }
    }
    free(xp);
    free(off);
    return 0;
}

#endif /* JOULECUT_DIRECT_CONV_H */
