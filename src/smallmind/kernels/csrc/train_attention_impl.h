/* Training attention bodies, compiled once per ISA: the including file sets `#pragma GCC target`
 * and defines SM_TSUFFIX. The tiles use GCC's vector extension (8 floats), which each build
 * turns into its own instructions (fused multiply-adds where the target has them: GNU C
 * contracts a * b + c by default).
 *
 * One (sequence, head) pair at a time, every (T, T) product restricted to the causal part:
 * rows of queries i see keys j <= i, so a tile of rows i0.. needs key columns below i0 + MR,
 * and a tile of key rows j0.. (the transposed products) needs queries from j0 on. */
#include <math.h>
#include <string.h>
#include "sm_math.h"
#include "train_attention.h"

#define SM_TCAT2(a, b) a##_##b
#define SM_TCAT(a, b) SM_TCAT2(a, b)
#define TFN(name) SM_TCAT(name, SM_TSUFFIX)
#define MR SM_TATTN_MR
#define NR SM_TATTN_NR

typedef float sm_v8 __attribute__((vector_size(32)));
typedef float sm_v8u __attribute__((vector_size(32), may_alias, aligned(4)));  /* unaligned access */

static inline long min_l(long a, long b) { return a < b ? a : b; }
static inline long round_nr(long n) { return (n + NR - 1) / NR * NR; }
static inline long round8(long n) { return (n + 7) / 8 * 8; }

/* acc (MR x NR, rows NR apart) = sum over k in [k0, k1) of A(r, k) * B(k, :), where A(r, k) is
 * a[r*ars + k*acs] and row k of B the NR floats at b + k*brs. Rows from mr on repeat row mr-1
 * (their sums are dropped by the caller). Per k: two loads of B and six broadcasts of A feed
 * twelve accumulators (15 of AVX2's 16 registers). */
static inline __attribute__((always_inline)) void tile(const float *a, long ars, long acs, const float *b, long brs,
                                                       long k0, long k1, long mr, float *acc)
{
    const float *a0 = a, *a1 = a + min_l(1, mr - 1) * ars, *a2 = a + min_l(2, mr - 1) * ars;
    const float *a3 = a + min_l(3, mr - 1) * ars, *a4 = a + min_l(4, mr - 1) * ars, *a5 = a + min_l(5, mr - 1) * ars;
    sm_v8 c00 = {0}, c01 = {0}, c10 = {0}, c11 = {0}, c20 = {0}, c21 = {0};
    sm_v8 c30 = {0}, c31 = {0}, c40 = {0}, c41 = {0}, c50 = {0}, c51 = {0};
    for (long k = k0; k < k1; k++) {
        const float *bk = b + k * brs;
        const sm_v8 b0 = *(const sm_v8u *)bk, b1 = *(const sm_v8u *)(bk + 8);
        const long o = k * acs;
        float x;
        x = a0[o]; c00 += x * b0; c01 += x * b1;
        x = a1[o]; c10 += x * b0; c11 += x * b1;
        x = a2[o]; c20 += x * b0; c21 += x * b1;
        x = a3[o]; c30 += x * b0; c31 += x * b1;
        x = a4[o]; c40 += x * b0; c41 += x * b1;
        x = a5[o]; c50 += x * b0; c51 += x * b1;
    }
    sm_v8u *o = (sm_v8u *)acc;
    o[0] = c00; o[1] = c01; o[2] = c10; o[3] = c11; o[4] = c20; o[5] = c21;
    o[6] = c30; o[7] = c31; o[8] = c40; o[9] = c41; o[10] = c50; o[11] = c51;
}

/* rows 0..mr-1, columns 0..nc-1 of alpha * acc -> dst (rows ds apart) */
static inline void put(const float *acc, long mr, long nc, float alpha, float *dst, long ds)
{
    for (long r = 0; r < mr; r++) {
        const float *s = acc + r * NR;
        float *o = dst + r * ds;
        if (nc == NR) { /* whole rows as two vector stores (a copy loop would become a slow rep movs) */
            ((sm_v8u *)o)[0] = alpha * ((const sm_v8u *)s)[0];
            ((sm_v8u *)o)[1] = alpha * ((const sm_v8u *)s)[1];
        } else {
            for (long c = 0; c < nc; c++) o[c] = alpha * s[c];
        }
    }
}

/* n rows of D floats (rows rs apart) -> dst (n, Dp), zero past D */
static void pack_rows(const float *src, long rs, long n, long D, long Dp, float *dst)
{
    for (long j = 0; j < n; j++) {
        memcpy(dst + j * Dp, src + j * rs, (size_t)D * sizeof(float));
        memset(dst + j * Dp + D, 0, (size_t)(Dp - D) * sizeof(float));
    }
}

/* src (n, Dp) packed rows -> dst (D, Tp) transposed, zero from column n (from the packed copy,
 * which is in cache, rather than from the qkv rows 3C floats apart) */
static void transpose_rows(const float *src, long Dp, long n, long D, long Tp, float *dst)
{
    for (long j = 0; j < n; j++) {
        const float *s = src + j * Dp;
        for (long d = 0; d < D; d++) dst[d * Tp + j] = s[d];
    }
    for (long d = 0; d < D; d++) memset(dst + d * Tp + n, 0, (size_t)(Tp - n) * sizeof(float));
}

/* x (n8,), 32-byte aligned, n8 = n rounded up to 8: the softmax of the first n entries (already
 * scaled), zeros after them, as softmax_rows computes it; whole vectors on an aligned row, so
 * no scalar remainder or alignment peel of sm_exp on the short rows near the diagonal */
static void softmax_row(float *x_, long n, long n8)
{
    float *x = __builtin_assume_aligned(x_, 32);
    float m = -INFINITY;
#pragma omp simd reduction(max : m)
    for (long j = 0; j < n8; j++) { float v = j < n ? x[j] : -INFINITY; m = v > m ? v : m; }
    if (m == -INFINITY) m = 0.0f;
    float z = 0.0f;
#pragma omp simd reduction(+ : z)
    for (long j = 0; j < n8; j++) {
        float e = sm_exp(x[j] - m);
        e = j < n ? e : 0.0f;
        x[j] = e;
        z += e;
    }
    float inv = 1.0f / z;
#pragma omp simd
    for (long j = 0; j < n8; j++) x[j] *= inv;
}

/* probs = causal softmax(scale * q k^T); out = (probs [* mask]) v, for pair p = b*H + h */
static void TFN(forward_pair)(const TrainAttnArgs *a, long p, float *s)
{
    const long T = a->T, D = a->D, H = a->H, b = p / H, h = p % H, C = H * D;
    const long Tp = round_nr(T), Dp = round_nr(D), rs = a->qkv_rs, ps = a->ps_t, os = a->out_rs;
    const float *q = a->qkv + b * T * rs + h * D, *k = q + C, *v = q + 2 * C;
    float *P = a->probs + b * a->ps_b + h * a->ps_h;
    const float *M = a->mask ? a->mask + b * a->ms_b + h * a->ms_h : NULL;
    float *out = a->out + b * T * os + h * D;
    float *kt = s, *vp = kt + D * Tp, *kp = vp + T * Dp, *pm = kp + T * Dp; /* each 64-byte aligned */
    float acc[MR * NR] __attribute__((aligned(32)));
    pack_rows(k, rs, T, D, Dp, kp);
    transpose_rows(kp, Dp, T, D, Tp, kt);
    pack_rows(v, rs, T, D, Dp, vp);
    for (long i0 = 0; i0 < T; i0 += MR) {
        const long mr = min_l(MR, T - i0), kc = i0 + mr; /* the tile's last query sees keys < kc */
        /* the tile's rows in pm (aligned, Tp wide): scores, softmax, copied to probs, dropped */
        for (long j0 = 0; j0 < kc; j0 += NR) {
            tile(q + i0 * rs, rs, 1, kt + j0, Tp, 0, D, mr, acc);
            put(acc, mr, NR, a->scale, pm + j0, Tp);
        }
        for (long r = 0; r < mr; r++) {
            const long i = i0 + r, n = i + 1, n8 = round8(n);
            float *x = pm + r * Tp, *pr = P + i * ps;
            softmax_row(x, n, n8);
            if (kc > n8) memset(x + n8, 0, (size_t)(kc - n8) * sizeof(float));
            memcpy(pr, x, (size_t)n * sizeof(float));
            memset(pr + n, 0, (size_t)(T - n) * sizeof(float));
            if (M) { /* probs keeps the softmax itself */
                const float *mk = M + i * a->ms_t;
                for (long j = 0; j < n; j++) x[j] *= mk[j];
            }
        }
        for (long d0 = 0; d0 < D; d0 += NR) {
            tile(pm, Tp, 1, vp + d0, Dp, 0, kc, mr, acc);
            put(acc, mr, min_l(NR, D - d0), 1.0f, out + i0 * os + d0, os);
        }
    }
}

/* dqkv of pair p from dout: dv = P'^T dout, dS = softmax backward of dP = (dout v^T) [* mask],
 * dq = dS k, dk = dS^T q (P' = probs [* mask]; only the causal part of probs and mask is read) */
static void TFN(backward_pair)(const TrainAttnArgs *a, long p, float *s)
{
    const long T = a->T, D = a->D, H = a->H, b = p / H, h = p % H, C = H * D;
    const long Tp = round_nr(T), Dp = round_nr(D), rs = a->qkv_rs, ps = a->ps_t, ds = a->dqkv_rs;
    const float *q = a->qkv + b * T * rs + h * D, *k = q + C, *v = q + 2 * C;
    const float *P = a->probs + b * a->ps_b + h * a->ps_h;
    const float *M = a->mask ? a->mask + b * a->ms_b + h * a->ms_h : NULL;
    const float *dout = a->dout + b * T * a->dout_rs + h * D;
    float *dq = a->dqkv + b * T * ds + h * D, *dk = dq + C, *dv = dq + 2 * C;
    /* g's rows gs apart: 64-byte aligned, but not a multiple of 512 bytes apart (the transposed
     * tiles read down g's columns, which would fall into a few L1 sets) */
    const long gs = Tp + NR;
    float *vt = s, *kp = vt + D * Tp, *qp = kp + T * Dp, *dop = qp + T * Dp, *vp = dop + T * Dp, *g = vp + T * Dp;
    float acc[MR * NR] __attribute__((aligned(32)));
    pack_rows(v, rs, T, D, Dp, vp);
    transpose_rows(vp, Dp, T, D, Tp, vt);
    pack_rows(k, rs, T, D, Dp, kp);
    pack_rows(q, rs, T, D, Dp, qp);
    pack_rows(dout, a->dout_rs, T, D, Dp, dop);

    /* g = P' with zeros above the diagonal, so a tile of key rows may start its sum at j0 */
    for (long i = 0; i < T; i++) {
        const float *pr = P + i * ps, *mk = M ? M + i * a->ms_t : NULL;
        float *o = __builtin_assume_aligned(g + i * gs, 32); /* g's rows are 64-byte aligned */
        const long n = i + 1, n8 = min_l(round8(n), T);
#pragma omp simd
        for (long j = 0; j < n8; j++) { float v = mk ? pr[j] * mk[j] : pr[j]; o[j] = j < n ? v : 0.0f; }
        memset(o + n8, 0, (size_t)(T - n8) * sizeof(float));
    }
    for (long j0 = 0; j0 < T; j0 += MR) {
        const long mr = min_l(MR, T - j0);
        for (long d0 = 0; d0 < D; d0 += NR) {
            tile(g + j0, 1, gs, dop + d0, Dp, j0, T, mr, acc);
            put(acc, mr, min_l(NR, D - d0), 1.0f, dv + j0 * ds + d0, ds);
        }
    }

    /* g = dS, a tile of query rows at a time, and that tile's dq at once */
    for (long i0 = 0; i0 < T; i0 += MR) {
        const long mr = min_l(MR, T - i0), kc = i0 + mr;
        for (long j0 = 0; j0 < kc; j0 += NR) {
            tile(dop + i0 * Dp, Dp, 1, vt + j0, Tp, 0, D, mr, acc);
            put(acc, mr, NR, 1.0f, g + i0 * gs + j0, gs);
        }
        for (long i = i0; i < kc; i++) {
            const float *pr = P + i * ps, *mk = M ? M + i * a->ms_t : NULL;
            float *dp = __builtin_assume_aligned(g + i * gs, 32);
            const long n = i + 1, n8 = min_l(round8(n), T); /* whole vectors, as in softmax_row */
            if (mk) {
#pragma omp simd
                for (long j = 0; j < n8; j++) { float v = dp[j] * mk[j]; dp[j] = j < n ? v : 0.0f; }
            }
            float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
            for (long j = 0; j < n8; j++) { float v = pr[j] * dp[j]; dot += j < n ? v : 0.0f; }
#pragma omp simd
            for (long j = 0; j < n8; j++) { float v = a->scale * pr[j] * (dp[j] - dot); dp[j] = j < n ? v : 0.0f; }
            memset(dp + n8, 0, (size_t)(T - n8) * sizeof(float));
        }
        for (long d0 = 0; d0 < D; d0 += NR) {
            tile(g + i0 * gs, gs, 1, kp + d0, Dp, 0, kc, mr, acc);
            put(acc, mr, min_l(NR, D - d0), 1.0f, dq + i0 * ds + d0, ds);
        }
    }

    for (long j0 = 0; j0 < T; j0 += MR) {
        const long mr = min_l(MR, T - j0);
        for (long d0 = 0; d0 < D; d0 += NR) {
            tile(g + j0, 1, gs, qp + d0, Dp, j0, T, mr, acc);
            put(acc, mr, min_l(NR, D - d0), 1.0f, dk + j0 * ds + d0, ds);
        }
    }
}

const TrainAttnTable SM_TCAT(sm_tatable, SM_TSUFFIX) = {
    .name = SM_TISA_NAME,
    .forward_pair = TFN(forward_pair),
    .backward_pair = TFN(backward_pair),
};
