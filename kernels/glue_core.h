/* C loops of kernels/glue.pyx (see there). Plain scalar loops: the pooled rows are a few
   elements long, where vectorised loops spend their time in prologues and remainders. */
#ifndef JC_GLUE_CORE_H
#define JC_GLUE_CORE_H
#include <math.h>
#include <stdint.h>

#if defined(__GNUC__) && !defined(__clang__)
#define JC_SCALAR __attribute__((optimize("no-tree-vectorize", "no-wrapv")))
#else
#define JC_SCALAR
#endif

/* 2x2 windows at stride 2 over rows of unit stride, into output rows of unit stride. */
static JC_SCALAR void jc_max_pool_2x2(const float *x, int64_t N, int64_t C, int64_t xn, int64_t xc, int64_t xh,
                                      float *y, int64_t P, int64_t Q, int64_t yn, int64_t yc, int64_t yh) {
    for (int64_t n = 0; n < N; n++)
        for (int64_t c = 0; c < C; c++) {
            const float *plane = x + n * xn + c * xc;
            float *out = y + n * yn + c * yc;
            for (int64_t p = 0; p < P; p++) {
                const float *restrict r0 = plane + 2 * p * xh;
                const float *restrict r1 = r0 + xh;
                float *restrict yr = out + p * yh;
                for (int64_t q = 0; q < Q; q++)
                    yr[q] = fmaxf(fmaxf(r0[2 * q], r0[2 * q + 1]), fmaxf(r1[2 * q], r1[2 * q + 1]));
            }
        }
}

/* Max pooling, no padding or dilation; strides in elements. */
static JC_SCALAR void jc_max_pool(const float *x, int64_t N, int64_t C, int64_t H, int64_t W,
                                  int64_t xn, int64_t xc, int64_t xh, int64_t xw,
                                  int64_t kh, int64_t kw, int64_t sh, int64_t sw,
                                  float *y, int64_t P, int64_t Q, int64_t yn, int64_t yc, int64_t yh, int64_t yw) {
    (void)H; (void)W;
    if (kh == 2 && kw == 2 && sh == 2 && sw == 2 && xw == 1 && yw == 1) {
        jc_max_pool_2x2(x, N, C, xn, xc, xh, y, P, Q, yn, yc, yh);
        return;
    }
    for (int64_t n = 0; n < N; n++)
        for (int64_t c = 0; c < C; c++) {
            const float *plane = x + n * xn + c * xc;
            float *out = y + n * yn + c * yc;
            if (kh == 2 && kw == 2 && sh == 2 && sw == 2 && xw == 1) {
                for (int64_t p = 0; p < P; p++) {
                    const float *r0 = plane + 2 * p * xh, *r1 = r0 + xh;
                    float *yr = out + p * yh;
                    for (int64_t q = 0; q < Q; q++)
                        yr[q * yw] = fmaxf(fmaxf(r0[2 * q], r0[2 * q + 1]), fmaxf(r1[2 * q], r1[2 * q + 1]));
                }
                continue;
            }
            for (int64_t p = 0; p < P; p++)
                for (int64_t q = 0; q < Q; q++) {
                    const float *win = plane + p * sh * xh + q * sw * xw;
                    float v = win[0];
                    for (int64_t r = 0; r < kh; r++)
                        for (int64_t s = 0; s < kw; s++)
                            v = fmaxf(v, win[r * xh + s * xw]);
                    out[p * yh + q * yw] = v;
                }
        }
}

/* y[b, f] = sum over row f's nonzeros of data[j] * x[b, idx[j]] (+ bias[f]), then ReLU.
   Eight rows at a time (then one at a time): eight independent sums per weight load. */
static void jc_csr_rows(const int32_t *indptr, const int32_t *idx, const float *data, int64_t F,
                        const float *x, int64_t B, int64_t xb, const float *bias, int relu,
                        float *y, int64_t yb, int64_t yf) {
    int64_t b = 0;
    for (; b + 8 <= B; b += 8) {  /* eight rows at once: eight independent sums per weight load */
        for (int64_t f = 0; f < F; f++) {
            float acc[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
            for (int32_t j = indptr[f]; j < indptr[f + 1]; j++) {
                const float w = data[j];
                const float *xk = x + b * xb + idx[j];
                for (int i = 0; i < 8; i++) acc[i] += w * xk[i * xb];
            }
            float *yr = y + b * yb + f * yf;
            for (int i = 0; i < 8; i++) {
                float v = acc[i];
                if (bias) v += bias[f];
                if (relu && v < 0.0f) v = 0.0f;
                yr[i * yb] = v;
            }
        }
    }
    for (; b < B; b++) {
        const float *xr = x + b * xb;
        for (int64_t f = 0; f < F; f++) {
            float acc = 0.0f;
            for (int32_t j = indptr[f]; j < indptr[f + 1]; j++)
                acc += data[j] * xr[idx[j]];
            if (bias) acc += bias[f];
            if (relu && acc < 0.0f) acc = 0.0f;
            y[b * yb + f * yf] = acc;
        }
    }
}

/* y[n, c] = mean (or max) of the plane x[n, c, :, :]; strides in elements. Sums in float,
   vectorised (partial sums in every lane) along a contiguous plane or a unit-stride row. */
static void jc_global_pool(const float *x, int64_t N, int64_t C, int64_t H, int64_t W,
                           int64_t xn, int64_t xc, int64_t xh, int64_t xw, int avg,
                           float *y, int64_t yn, int64_t yc) {
    for (int64_t n = 0; n < N; n++)
        for (int64_t c = 0; c < C; c++) {
            const float *plane = x + n * xn + c * xc;
            double total = 0.0;
            float best = plane[0];
            if (avg && xw == 1 && xh == W) {  /* a contiguous plane: one loop over H*W */
                float acc = 0.0f;
                for (int64_t k = 0; k < H * W; k++) acc += plane[k];
                y[n * yn + c * yc] = acc / (float)(H * W);
                continue;
            }
            for (int64_t h = 0; h < H; h++) {
                const float *row = plane + h * xh;
                if (avg) {
                    float acc = 0.0f;
                    if (xw == 1)
                        for (int64_t w = 0; w < W; w++) acc += row[w];
                    else
                        for (int64_t w = 0; w < W; w++) acc += row[w * xw];
                    total += acc;
                } else {
                    for (int64_t w = 0; w < W; w++) best = fmaxf(best, row[w * xw]);
                }
            }
            y[n * yn + c * yc] = avg ? (float)(total / (double)(H * W)) : best;
        }
}
#endif
