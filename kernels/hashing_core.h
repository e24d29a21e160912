/* C core of the SLIDE hashed layer (kernels/hashing.pyx wraps it).
 *
 * All inputs are validated by the Cython wrapper before these functions run:
 * pointers are C-contiguous, ids are in range, sizes match. Nothing here allocates
 * Python objects or takes the GIL.
 *
 * Bucket tables: for table l, entries (neuron id, full code) are grouped by slot; slot =
 * the code itself when the code has few bits, else a multiplicative fold of it. A lookup
 * reads one slot range and keeps only entries whose full code equals the query's, so the
 * fold never changes which neurons match, only how compact the tables are.
 */
#ifndef JOULECUT_HASHING_CORE_H
#define JOULECUT_HASHING_CORE_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* Code of a row for which every DWTA bin was empty (all-zero input): matches no neuron. */
#define JC_EMPTY 0xFFFFFFFFu

static inline int jc_threads(int requested) {
#ifdef _OPENMP
    return requested > 0 ? requested : omp_get_max_threads();
#else
    (void)requested;
    return 1;
#endif
}

static inline uint32_t jc_slot(uint32_t code, int code_bits, int slot_bits) {
    if (code_bits <= slot_bits) return code;
    return (code * 0x9E3779B1u) >> (32 - slot_bits);
}

/* 16-float vectors through GCC's vector extension: one zmm with AVX-512, split into
 * narrower registers in the portable build. aligned(4): loads need no 64-byte alignment. */
typedef float jc_v16 __attribute__((vector_size(64), aligned(4)));

static inline jc_v16 jc_load(const float *p) { jc_v16 v; memcpy(&v, p, sizeof v); return v; }

typedef int32_t jc_i16 __attribute__((vector_size(64)));

#if defined(__clang__)
#define JC_SHUFFLE(v, ...) __builtin_shufflevector(v, v, __VA_ARGS__)
#else
#define JC_SHUFFLE(v, ...) __builtin_shuffle(v, (jc_i16){__VA_ARGS__})
#endif

/* Sum of the 16 lanes by halving (4 shuffles and adds, not 15 dependent scalar adds). */
static inline float jc_hsum(jc_v16 v) {
    v += JC_SHUFFLE(v, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7);
    v += JC_SHUFFLE(v, 4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11);
    v += JC_SHUFFLE(v, 2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13);
    v += JC_SHUFFLE(v, 1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14);
    return v[0];
}

/* Two accumulators so consecutive FMAs do not wait on each other. */
static inline float jc_dot(const float *a, const float *b, int64_t d) {
    jc_v16 s0 = {0}, s1 = {0};
    int64_t j = 0;
    for (; j + 32 <= d; j += 32) {
        s0 += jc_load(a + j) * jc_load(b + j);
        s1 += jc_load(a + j + 16) * jc_load(b + j + 16);
    }
    for (; j + 16 <= d; j += 16) s0 += jc_load(a + j) * jc_load(b + j);
    float acc = jc_hsum(s0 + s1);
    for (; j < d; j++) acc += a[j] * b[j];
    return acc;
}

/* One weight row against four inputs: each load of w feeds four independent FMAs. */
static inline void jc_dot4(const float *w, const float *x0, const float *x1, const float *x2,
                           const float *x3, int64_t d, float *out) {
    jc_v16 s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0};
    int64_t j = 0;
    for (; j + 16 <= d; j += 16) {
        const jc_v16 wv = jc_load(w + j);
        s0 += wv * jc_load(x0 + j);
        s1 += wv * jc_load(x1 + j);
        s2 += wv * jc_load(x2 + j);
        s3 += wv * jc_load(x3 + j);
    }
    float a0 = jc_hsum(s0), a1 = jc_hsum(s1), a2 = jc_hsum(s2), a3 = jc_hsum(s3);
    for (; j < d; j++) {
        a0 += w[j] * x0[j]; a1 += w[j] * x1[j]; a2 += w[j] * x2[j]; a3 += w[j] * x3[j];
    }
    out[0] = a0; out[1] = a1; out[2] = a2; out[3] = a3;
}

/* ---------------------------------------------------------------- hash codes */

/* SimHash of one row: bit k of table l is sign(x . proj[:, l*K + k]) > 0. proj is [d, P]
 * int8 row-major (P = L*K, entries -1/0/+1; a quarter of the bytes of float projections,
 * so a cold call reads less). acc is [P] scratch. The sum over j runs in a fixed order, and
 * every caller (batch hashing, the fused forward) uses this function, so a row gets the
 * same code however it is hashed. */
static inline void jc_simhash_row(const float *xi, int64_t d, const int8_t *proj, int L, int K,
                                  float *acc, uint32_t *codes) {
    const int64_t P = (int64_t)L * K;
    for (int64_t p = 0; p < P; p++) acc[p] = 0.0f;
    for (int64_t j = 0; j < d; j++) {
        const float v = xi[j];
        if (v == 0.0f) continue;          /* sparse inputs: skip zero coordinates */
        const int8_t *pj = proj + j * P;
        for (int64_t p = 0; p < P; p++) acc[p] += v * (float)pj[p];
    }
    for (int l = 0; l < L; l++) {
        uint32_t c = 0;
        for (int k = 0; k < K; k++) c |= (uint32_t)(acc[(int64_t)l * K + k] > 0.0f) << k;
        codes[l] = c;
    }
}

static void jc_simhash(const float *x, int64_t n, int64_t d, const int8_t *proj,
                       int L, int K, uint32_t *codes, int nthreads) {
    const int64_t P = (int64_t)L * K;
    #pragma omp parallel num_threads(jc_threads(nthreads)) if (n * P * d > (1 << 20))
    {
        float *acc = (float *)malloc(sizeof(float) * (size_t)(P > 0 ? P : 1));
        #pragma omp for schedule(static)
        for (int64_t i = 0; i < n; i++) jc_simhash_row(x + i * d, d, proj, L, K, acc, codes + i * L);
        free(acc);
    }
}

/* Densified winner-take-all of one row. idx is [L*K, m]: the m coordinates of each bin. A
 * bin's value is the position (0..m-1) of the first maximum among its coordinates; a bin
 * whose coordinates are all zero is empty and borrows the value of another bin of the same
 * table chosen by a fixed probe sequence (densified one-permutation hashing). The table code
 * packs the K bin values, log2(m) bits each. bins is [K] scratch. */
static inline void jc_dwta_row(const float *xi, const int32_t *idx, int L, int K, int m,
                               int log2m, int *bins, uint32_t *codes) {
    for (int l = 0; l < L; l++) {
        int n_full = 0;
        for (int k = 0; k < K; k++) {
            const int32_t *ix = idx + ((int64_t)l * K + k) * m;
            int best = -1;
            float bv = 0.0f;
            for (int t = 0; t < m; t++) {
                const float v = xi[ix[t]];
                if (v == 0.0f) continue;
                if (best < 0 || v > bv) { best = t; bv = v; }
            }
            /* a bin with only non-positive nonzeros still has a winner */
            bins[k] = best;
            n_full += best >= 0;
        }
        if (n_full == 0) { codes[l] = JC_EMPTY; continue; }
        uint32_t c = 0;
        for (int k = 0; k < K; k++) {
            int v = bins[k];
            if (v < 0) {
                /* probe donors h(l, k, a); after 2K misses take the next full bin */
                int found = -1;
                for (uint32_t a = 1; a <= (uint32_t)(2 * K) && found < 0; a++) {
                    uint32_t h = ((uint32_t)l * 0x85EBCA6Bu) ^ ((uint32_t)k * 0xC2B2AE35u)
                                 ^ (a * 0x27D4EB2Fu);
                    h ^= h >> 15; h *= 0x2C1B3C6Du; h ^= h >> 12;
                    int donor = (int)(h % (uint32_t)K);
                    if (bins[donor] >= 0) found = bins[donor];
                }
                for (int s = 1; s < K && found < 0; s++)
                    if (bins[(k + s) % K] >= 0) found = bins[(k + s) % K];
                v = found;
            }
            c |= (uint32_t)v << (k * log2m);
        }
        codes[l] = c;
    }
}

static void jc_dwta(const float *x, int64_t n, int64_t d, const int32_t *idx, int L, int K,
                    int m, int log2m, uint32_t *codes, int nthreads) {
    #pragma omp parallel num_threads(jc_threads(nthreads)) if (n * L * K * m > (1 << 18))
    {
        int *bins = (int *)malloc(sizeof(int) * (size_t)K);
        #pragma omp for schedule(static)
        for (int64_t i = 0; i < n; i++)
            jc_dwta_row(x + i * d, idx, L, K, m, log2m, bins, codes + i * L);
        free(bins);
    }
}

/* ---------------------------------------------------------------- tables */

/* Build table l for every l from codes [N, L]: offsets [L, S+1], ids/ecodes [L, N].
 * Neurons with code JC_EMPTY are left out. Within a slot, ids ascend. */
static void jc_build_tables(const uint32_t *codes, int64_t N, int L, int code_bits,
                            int slot_bits, int32_t *offsets, int32_t *ids, uint32_t *ecodes,
                            int nthreads) {
    const int64_t S = (int64_t)1 << slot_bits;
    #pragma omp parallel for schedule(dynamic, 1) num_threads(jc_threads(nthreads))
    for (int l = 0; l < L; l++) {
        int32_t *off = offsets + (int64_t)l * (S + 1);
        int32_t *tid = ids + (int64_t)l * N;
        uint32_t *tco = ecodes + (int64_t)l * N;
        memset(off, 0, sizeof(int32_t) * (size_t)(S + 1));
        for (int64_t i = 0; i < N; i++) {
            uint32_t c = codes[i * L + l];
            if (c != JC_EMPTY) off[jc_slot(c, code_bits, slot_bits) + 1]++;
        }
        for (int64_t s = 0; s < S; s++) off[s + 1] += off[s];
        int32_t *cur = (int32_t *)malloc(sizeof(int32_t) * (size_t)S);
        memcpy(cur, off, sizeof(int32_t) * (size_t)S);
        for (int64_t i = 0; i < N; i++) {
            uint32_t c = codes[i * L + l];
            if (c == JC_EMPTY) continue;
            int32_t pos = cur[jc_slot(c, code_bits, slot_bits)]++;
            tid[pos] = (int32_t)i;
            tco[pos] = c;
        }
        free(cur);
    }
}

/* ---------------------------------------------------------------- active sets */

/* Upper bound on each query's active-set size: the sum of its slot ranges. */
static int64_t jc_bounds(const uint32_t *qcodes, int64_t B, int L, int code_bits,
                         int slot_bits, const int32_t *offsets, int64_t *bound) {
    const int64_t S = (int64_t)1 << slot_bits;
    int64_t total = 0;
    for (int64_t b = 0; b < B; b++) {
        int64_t t = 0;
        for (int l = 0; l < L; l++) {
            uint32_t c = qcodes[b * L + l];
            if (c == JC_EMPTY) continue;
            const int32_t *off = offsets + (int64_t)l * (S + 1);
            uint32_t s = jc_slot(c, code_bits, slot_bits);
            t += off[s + 1] - off[s];
        }
        bound[b] = t;
        total += t;
    }
    return total;
}

/* Union of each query's buckets over all L tables, deduplicated with a stamp array per
 * thread: stamps [T, N] persist between calls, and query b of this call marks with
 * epoch + b, so the arrays never need clearing (the caller resets them, and the epoch,
 * before epoch + B could overflow). Writes ids at buf[start[b] ...] (start = prefix of the
 * bounds) and the count to count[b]. Order: table by table, ascending ids within a bucket. */
static void jc_collect(const uint32_t *qcodes, int64_t B, int L, int code_bits,
                       int slot_bits, const int32_t *offsets, const int32_t *ids,
                       const uint32_t *ecodes, int64_t N, const int64_t *start,
                       int32_t *buf, int64_t *count, int32_t *stamps, int32_t epoch, int T) {
    const int64_t S = (int64_t)1 << slot_bits;
    #pragma omp parallel num_threads(T) if (B > 1)
    {
    #ifdef _OPENMP
        int32_t *stamp = stamps + (int64_t)omp_get_thread_num() * N;
    #else
        int32_t *stamp = stamps;
    #endif
        #pragma omp for schedule(dynamic, 4)
        for (int64_t b = 0; b < B; b++) {
            const int32_t mark = epoch + (int32_t)b;
            int32_t *out = buf + start[b];
            int64_t cnt = 0;
            for (int l = 0; l < L; l++) {
                uint32_t c = qcodes[b * L + l];
                if (c == JC_EMPTY) continue;
                const int32_t *off = offsets + (int64_t)l * (S + 1);
                uint32_t s = jc_slot(c, code_bits, slot_bits);
                const int32_t *tid = ids + (int64_t)l * N;
                const uint32_t *tco = ecodes + (int64_t)l * N;
                for (int32_t e = off[s]; e < off[s + 1]; e++) {
                    if (tco[e] != c) continue;
                    int32_t nid = tid[e];
                    if (stamp[nid] == mark) continue;
                    stamp[nid] = mark;
                    out[cnt++] = nid;
                }
            }
            count[b] = cnt;
        }
    }
}

/* Per-sample dot products: values[p] = W[indices[p]] . x[sample[p]] + bias[indices[p]].
 * Parallel over all (sample, neuron) pairs so one sample can use every thread, but only
 * from about a million MACs: below that the fork/join (and, on a busy machine, waiting for
 * a descheduled thread at the barrier) costs more than it saves. */
static void jc_pair_dots(const float *x, int64_t d, const float *W, const float *bias,
                         const int32_t *sample, const int32_t *indices, int64_t nnz,
                         float *values, int nthreads) {
    #pragma omp parallel for schedule(static) num_threads(jc_threads(nthreads)) if (nnz * d > (1 << 20))
    for (int64_t p = 0; p < nnz; p++) {
        if (p + 8 < nnz) {   /* rows are scattered: fetch every line of a row 8 pairs ahead */
            const char *ahead = (const char *)(W + (int64_t)indices[p + 8] * d);
            for (int64_t c = 0; c < d * 4; c += 64) __builtin_prefetch(ahead + c);
        }
        const float *w = W + (int64_t)indices[p] * d;
        values[p] = jc_dot(w, x + (int64_t)sample[p] * d, d) + (bias ? bias[indices[p]] : 0.0f);
    }
}

/* ---------------------------------------------------------------- fused per-sample forward */

/* Everything one sample's forward reads, so the fused call keeps a short signature. */
typedef struct {
    int family;                  /* 0 = SimHash (proj), 1 = DWTA (bins) */
    int L, K, m, log2m;          /* m, log2m: DWTA bin size and its log2 */
    const int8_t *proj;          /* SimHash: [d, L*K] */
    const int32_t *bins;         /* DWTA: [L*K, m] */
    int code_bits, slot_bits;
    int64_t N;
    const int32_t *offsets;      /* [L, 2**slot_bits + 1] */
    const int32_t *ids;          /* [L, N] */
    const uint32_t *ecodes;      /* [L, N] */
} jc_layer;

/* Rows ahead of the one being multiplied that are prefetched: a row of 128 floats is 8
 * cache lines, so 16 rows keep ~130 lines in flight, enough to cover DRAM latency. They are
 * prefetched into L2 (prefetcht1, locality 2): gathering 5,000 scattered rows from DRAM in a
 * C harness took 130-156 us that way against 174-200 us with prefetcht2 (locality 1) and
 * ~280 us with none. */
#ifndef JC_GATHER_AHEAD
#define JC_GATHER_AHEAD 16
#endif

static inline void jc_prefetch_row(const float *row, int64_t d) {
    const char *p = (const char *)row;
    for (int64_t c = 0; c < d * 4; c += 64) __builtin_prefetch(p + c, 0, 2);
    __builtin_prefetch(p + d * 4 - 1, 0, 2);    /* the last line of an unaligned row */
}

/* Set bit n of seen for every neuron n in a bucket that sample `code` hits. All L slot
 * ranges are read first so their cache misses overlap instead of queuing one table at a
 * time. Where the slot is the code itself (code_bits <= slot_bits) every entry matches and
 * the stored codes are not read. lo/hi are [L] scratch. */
static void jc_mark_sample(const jc_layer *t, const uint32_t *code, int32_t *lo, int32_t *hi,
                           uint64_t *seen) {
    const int64_t S = (int64_t)1 << t->slot_bits;
    const int exact = t->code_bits <= t->slot_bits;
    for (int l = 0; l < t->L; l++) {
        lo[l] = hi[l] = 0;
        if (code[l] == JC_EMPTY) continue;
        const int32_t *off = t->offsets + (int64_t)l * (S + 1) + jc_slot(code[l], t->code_bits, t->slot_bits);
        lo[l] = off[0];
        hi[l] = off[1];
    }
    for (int l = 0; l < t->L; l++)
        if (hi[l] > lo[l]) __builtin_prefetch(t->ids + (int64_t)l * t->N + lo[l], 0, 1);
    for (int l = 0; l < t->L; l++) {
        const int32_t *tid = t->ids + (int64_t)l * t->N;
        if (exact) {
            for (int32_t e = lo[l]; e < hi[l]; e++) {
                const uint32_t n = (uint32_t)tid[e];
                seen[n >> 6] |= (uint64_t)1 << (n & 63);
            }
        } else {
            const uint32_t *tco = t->ecodes + (int64_t)l * t->N;
            for (int32_t e = lo[l]; e < hi[l]; e++) {
                const uint32_t n = (uint32_t)tid[e];
                seen[n >> 6] |= (uint64_t)(tco[e] == code[l]) << (n & 63);
            }
        }
    }
}

static inline int64_t jc_count_seen(const uint64_t *seen, int64_t nw) {
    int64_t c = 0;
    for (int64_t w = 0; w < nw; w++) c += __builtin_popcountll(seen[w]);
    return c;
}

/* Ids of the set bits, ascending, into out; clears seen on the way (ready for the next
 * sample without a pass over all N). */
static inline int64_t jc_drain_seen(uint64_t *seen, int64_t nw, int32_t *out) {
    int64_t k = 0;
    for (int64_t w = 0; w < nw; w++) {
        uint64_t m = seen[w];
        if (!m) continue;
        seen[w] = 0;
        while (m) {
            out[k++] = (int32_t)(w * 64 + __builtin_ctzll(m));
            m &= m - 1;
        }
    }
    return k;
}

/* values[p] = W[ids[p]] . x + bias[ids[p]], the rows (and biases) prefetched
 * JC_GATHER_AHEAD ids ahead: the ids are sorted but scattered over all of W. */
static void jc_gather_dots(const float *x, int64_t d, const float *W, const float *bias,
                           const int32_t *ids, int64_t n, float *values) {
    for (int64_t p = 0; p < n && p < JC_GATHER_AHEAD; p++) {
        jc_prefetch_row(W + (int64_t)ids[p] * d, d);
        if (bias) __builtin_prefetch(bias + ids[p], 0, 1);
    }
    for (int64_t p = 0; p < n; p++) {
        if (p + JC_GATHER_AHEAD < n) {
            const int32_t nxt = ids[p + JC_GATHER_AHEAD];
            jc_prefetch_row(W + (int64_t)nxt * d, d);
            if (bias) __builtin_prefetch(bias + nxt, 0, 1);
        }
        const int32_t r = ids[p];
        values[p] = jc_dot(W + (int64_t)r * d, x, d) + (bias ? bias[r] : 0.0f);
    }
}

/* 1 when every one of the n floats is finite. Tests the exponent bits: -ffast-math lets
 * the compiler assume isfinite() is always true. */
static inline int jc_all_finite(const float *v, int64_t n) {
    uint32_t bad = 0;
    for (int64_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, v + i, sizeof u);
        bad |= (u & 0x7F800000u) == 0x7F800000u;
    }
    return !bad;
}

/* Per-sample forward in one call, sample by sample: hash, mark the buckets' neurons in the
 * bitmap seen [ceil(N/64)] (all zero on entry and on return), drain it into sorted ids,
 * multiply those rows. Sample b's ids/values go to ids_out/vals_out from the end of sample
 * b-1's, its count to counts[b]. Stops before a sample whose ids would pass `cap` and
 * returns the number of samples done (B when all fit); returns -1, before any work, when x
 * holds a NaN or inf. scratch: [L*K] floats (SimHash), codes/lo/hi: [L] each, bins: [K].
 * One thread: a small batch's forward is too short to share. */
static int64_t jc_forward_fused(const jc_layer *t, const float *x, int64_t B, int64_t d,
                                const float *W, const float *bias, uint64_t *seen,
                                float *scratch, uint32_t *codes, int32_t *lo, int32_t *hi,
                                int *bins, int64_t cap, int32_t *ids_out, float *vals_out,
                                int64_t *counts) {
    if (!jc_all_finite(x, B * d)) return -1;
    const int64_t nw = (t->N + 63) / 64;
    int64_t pos = 0;
    for (int64_t b = 0; b < B; b++) {
        const float *xb = x + b * d;
        if (t->family == 0) jc_simhash_row(xb, d, t->proj, t->L, t->K, scratch, codes);
        else jc_dwta_row(xb, t->bins, t->L, t->K, t->m, t->log2m, bins, codes);
        jc_mark_sample(t, codes, lo, hi, seen);
        /* a sample has at most N ids: count them only when that much might not fit */
        if (pos + t->N > cap && pos + jc_count_seen(seen, nw) > cap) {
            memset(seen, 0, sizeof(uint64_t) * (size_t)nw);
            return b;
        }
        const int64_t k = jc_drain_seen(seen, nw, ids_out + pos);
        jc_gather_dots(xb, d, W, bias, ids_out + pos, k, vals_out + pos);
        counts[b] = k;
        pos += k;
    }
    return B;
}

/* ---------------------------------------------------------------- batched (per neuron) */

/* Neuron range of thread t out of T (static split, the same in both passes). */
static inline void jc_range(int64_t N, int t, int T, int64_t *n0, int64_t *n1) {
    *n0 = N * t / T;
    *n1 = N * (t + 1) / T;
}

/* Pass 1: marks, for every neuron, which samples of the batch selected it: bits[w*N + n]
 * bit s%64 is set when sample 64w+s hit neuron n in any table. cnt[t*B + b] counts the
 * distinct neurons of thread t's range (jc_range) that sample b selected, so pass 2 knows
 * where each thread's share of each sample's output starts. Threads own whole words (64
 * samples), so no two threads write the same word or count. */
static void jc_mark(const uint32_t *qcodes, int64_t B, int L, int code_bits, int slot_bits,
                    const int32_t *offsets, const int32_t *ids, const uint32_t *ecodes,
                    int64_t N, int T, uint64_t *bits, int64_t *cnt, int nthreads) {
    const int64_t S = (int64_t)1 << slot_bits;
    const int64_t nw = (B + 63) / 64;
    memset(cnt, 0, sizeof(int64_t) * (size_t)(T * B));
    #pragma omp parallel for schedule(static) num_threads(jc_threads(nthreads)) if (nw > 1)
    for (int64_t w = 0; w < nw; w++) {
        uint64_t *bw = bits + w * N;
        memset(bw, 0, sizeof(uint64_t) * (size_t)N);
        int64_t b1 = (w + 1) * 64 < B ? (w + 1) * 64 : B;
        for (int64_t b = w * 64; b < b1; b++) {
            const uint64_t mask = (uint64_t)1 << (b & 63);
            int64_t bound[65];        /* T <= 64 thread ranges: bound[t] = first neuron of t */
            for (int t = 0; t <= T; t++) bound[t] = N * t / T;
            for (int l = 0; l < L; l++) {
                uint32_t c = qcodes[b * L + l];
                if (c == JC_EMPTY) continue;
                const int32_t *off = offsets + (int64_t)l * (S + 1);
                uint32_t s = jc_slot(c, code_bits, slot_bits);
                const int32_t *tid = ids + (int64_t)l * N;
                const uint32_t *tco = ecodes + (int64_t)l * N;
                for (int32_t e = off[s]; e < off[s + 1]; e++) {
                    if (e + 8 < off[s + 1]) __builtin_prefetch(bw + tid[e + 8], 1);
                    if (tco[e] != c) continue;
                    const int32_t n = tid[e];
                    if (bw[n] & mask) continue;
                    bw[n] |= mask;
                    int t = 0;
                    while (n >= bound[t + 1]) t++;
                    cnt[(int64_t)t * B + b]++;
                }
            }
        }
    }
}

/* Pass 2: walk neurons in order; load each selected row once and compute it against every
 * sample that selected it, four samples at a time. cursor[t*B + b] starts where thread t's
 * part of sample b's output begins (from pass 1), so each sample's ids come out sorted. */
static void jc_grouped_dots(const uint64_t *bits, const float *x, int64_t B, int64_t d,
                            const float *W, const float *bias, int64_t N, int T,
                            int64_t *cursor, int32_t *indices, float *values,
                            int64_t *distinct) {
    const int64_t nw = (B + 63) / 64;
    #pragma omp parallel for schedule(static, 1) num_threads(T) if (T > 1)
    for (int t = 0; t < T; t++) {
        int64_t n0, n1;
        jc_range(N, t, T, &n0, &n1);
        int64_t *cur = cursor + (int64_t)t * B;
        int64_t *sel = (int64_t *)malloc(sizeof(int64_t) * (size_t)(B + 4));
        int64_t dist = 0;
        for (int64_t n = n0; n < n1; n++) {
            int64_t k = 0;
            for (int64_t w = 0; w < nw; w++) {
                uint64_t m = bits[w * N + n];
                while (m) {
                    sel[k++] = w * 64 + __builtin_ctzll(m);
                    m &= m - 1;
                }
            }
            if (k == 0) continue;
            dist++;
            /* the rows come in order but with gaps: prefetch a few rows ahead */
            if (n + 6 < n1) {
                const char *ahead = (const char *)(W + (n + 6) * d);
                for (int64_t c = 0; c < d * 4; c += 64) __builtin_prefetch(ahead + c);
            }
            const float *wr = W + n * d;
            const float bn = bias ? bias[n] : 0.0f;
            int64_t i = 0;
            float v[4];
            for (; i + 4 <= k; i += 4) {
                jc_dot4(wr, x + sel[i] * d, x + sel[i + 1] * d, x + sel[i + 2] * d,
                        x + sel[i + 3] * d, d, v);
                for (int u = 0; u < 4; u++) {
                    const int64_t pos = cur[sel[i + u]]++;
                    indices[pos] = (int32_t)n;
                    values[pos] = v[u] + bn;
                }
            }
            for (; i < k; i++) {
                const int64_t pos = cur[sel[i]]++;
                indices[pos] = (int32_t)n;
                values[pos] = jc_dot(wr, x + sel[i] * d, d) + bn;
            }
        }
        free(sel);
        distinct[t] = dist;
    }
}

/* For choose_k_l: sizes[b*L + l] = size of sample b's union over tables 0..l. */
static void jc_prefix_union(const uint32_t *qcodes, int64_t B, int L, int code_bits,
                            int slot_bits, const int32_t *offsets, const int32_t *ids,
                            const uint32_t *ecodes, int64_t N, int64_t *sizes, int nthreads) {
    const int64_t S = (int64_t)1 << slot_bits;
    #pragma omp parallel num_threads(jc_threads(nthreads)) if (B > 1)
    {
        int32_t *stamp = (int32_t *)malloc(sizeof(int32_t) * (size_t)(N > 0 ? N : 1));
        for (int64_t i = 0; i < N; i++) stamp[i] = -1;
        #pragma omp for schedule(dynamic, 4)
        for (int64_t b = 0; b < B; b++) {
            int64_t cnt = 0;
            for (int l = 0; l < L; l++) {
                uint32_t c = qcodes[b * L + l];
                if (c != JC_EMPTY) {
                    const int32_t *off = offsets + (int64_t)l * (S + 1);
                    uint32_t s = jc_slot(c, code_bits, slot_bits);
                    const int32_t *tid = ids + (int64_t)l * N;
                    const uint32_t *tco = ecodes + (int64_t)l * N;
                    for (int32_t e = off[s]; e < off[s + 1]; e++) {
                        if (tco[e] != c || stamp[tid[e]] == (int32_t)b) continue;
                        stamp[tid[e]] = (int32_t)b;
                        cnt++;
                    }
                }
                sizes[b * L + l] = cnt;
            }
        }
        free(stamp);
    }
}

/* ---------------------------------------------------------------- sparse backward */

/* grad_x[b] = sum over b's active neurons n of g[p] * W[n] (W before the update), then
 * W[n] -= lr * g[p] * x[b] and bias[n] -= lr * g[p] for every pair p. The update runs on
 * one thread: two samples may share a neuron. */
static void jc_sparse_backward(const float *x, int64_t B, int64_t d, float *W, float *bias,
                               const int64_t *indptr, const int32_t *indices, const float *g,
                               float lr, float *grad_x, int nthreads) {
    #pragma omp parallel for schedule(static) num_threads(jc_threads(nthreads))
    for (int64_t b = 0; b < B; b++) {
        float *gx = grad_x + b * d;
        for (int64_t j = 0; j < d; j++) gx[j] = 0.0f;
        for (int64_t p = indptr[b]; p < indptr[b + 1]; p++) {
            const float *w = W + (int64_t)indices[p] * d;
            const float gp = g[p];
            for (int64_t j = 0; j < d; j++) gx[j] += gp * w[j];
        }
    }
    for (int64_t b = 0; b < B; b++) {
        const float *xb = x + b * d;
        for (int64_t p = indptr[b]; p < indptr[b + 1]; p++) {
            float *w = W + (int64_t)indices[p] * d;
            const float s = lr * g[p];
            for (int64_t j = 0; j < d; j++) w[j] -= s * xb[j];
            if (bias) bias[indices[p]] -= s;
        }
    }
}

#endif
