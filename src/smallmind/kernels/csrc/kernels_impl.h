/* Kernel bodies, compiled once per ISA: the including file sets `#pragma GCC target`
 * and defines SM_SUFFIX. Loops are written for GCC's vectorizer (`omp simd` with
 * -fopenmp-simd allows the reassociated reductions that plain -O3 would not). */
#include <math.h>
#include <stdint.h>
#include <string.h>
#include "kernels.h"

#define SM_CAT2(a, b) a##_##b
#define SM_CAT(a, b) SM_CAT2(a, b)
#define FN(name) SM_CAT(name, SM_SUFFIX)

#include "sm_math.h"

/* a, b (n,) -> sum a*b */
static inline float sm_dot(const float *a, const float *b, long n)
{
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (long i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

/* out[t, n] = (out[t, n] +) s + b[n] */
static inline void sm_linear_store(const LinearArgs *a, long t, long n, float s)
{
    if (a->b) s += a->b[n];
    float *o = a->out + t * a->os + n;
    *o = a->accumulate ? *o + s : s;
}

#ifndef SM_LINEAR_AVX2
/* 4 weight rows x 4 tokens: 8 vector loads feed 16 FMAs (the single-token loop is load bound) */
static inline void sm_linear_4x4(const LinearArgs *a, long n, long t)
{
    const long K = a->K;
    const float *w0 = a->w + n * a->ws, *w1 = w0 + a->ws, *w2 = w1 + a->ws, *w3 = w2 + a->ws;
    const float *x0 = a->x + t * a->xs, *x1 = x0 + a->xs, *x2 = x1 + a->xs, *x3 = x2 + a->xs;
    float s00 = 0, s01 = 0, s02 = 0, s03 = 0, s10 = 0, s11 = 0, s12 = 0, s13 = 0;
    float s20 = 0, s21 = 0, s22 = 0, s23 = 0, s30 = 0, s31 = 0, s32 = 0, s33 = 0;
#pragma omp simd reduction(+ : s00, s01, s02, s03, s10, s11, s12, s13, s20, s21, s22, s23, s30, s31, s32, s33)
    for (long k = 0; k < K; k++) {
        float a0 = w0[k], a1 = w1[k], a2 = w2[k], a3 = w3[k];
        float b0 = x0[k], b1 = x1[k], b2 = x2[k], b3 = x3[k];
        s00 += b0 * a0; s01 += b0 * a1; s02 += b0 * a2; s03 += b0 * a3;
        s10 += b1 * a0; s11 += b1 * a1; s12 += b1 * a2; s13 += b1 * a3;
        s20 += b2 * a0; s21 += b2 * a1; s22 += b2 * a2; s23 += b2 * a3;
        s30 += b3 * a0; s31 += b3 * a1; s32 += b3 * a2; s33 += b3 * a3;
    }
    sm_linear_store(a, t, n, s00); sm_linear_store(a, t, n + 1, s01);
    sm_linear_store(a, t, n + 2, s02); sm_linear_store(a, t, n + 3, s03);
    sm_linear_store(a, t + 1, n, s10); sm_linear_store(a, t + 1, n + 1, s11);
    sm_linear_store(a, t + 1, n + 2, s12); sm_linear_store(a, t + 1, n + 3, s13);
    sm_linear_store(a, t + 2, n, s20); sm_linear_store(a, t + 2, n + 1, s21);
    sm_linear_store(a, t + 2, n + 2, s22); sm_linear_store(a, t + 2, n + 3, s23);
    sm_linear_store(a, t + 3, n, s30); sm_linear_store(a, t + 3, n + 1, s31);
    sm_linear_store(a, t + 3, n + 2, s32); sm_linear_store(a, t + 3, n + 3, s33);
}

#endif

/* 8 weight rows x 1 token (decode): eight independent row streams keep enough loads in
 * flight when the weights come from L3, and the next block's rows are prefetched. */
static inline void sm_linear_8x1(const LinearArgs *a, long n, long t, long n_end)
{
    const long K = a->K, ws = a->ws;
    const float *w0 = a->w + n * ws;
    const float *x = a->x + t * a->xs;
    if (K <= 512 && n + 16 <= n_end) /* long rows: the hardware prefetcher keeps up alone */
        for (long r = 8; r < 16; r++)
            for (long k = 0; k < K; k += 16) __builtin_prefetch(w0 + r * ws + k);
    const float *w1 = w0 + ws, *w2 = w1 + ws, *w3 = w2 + ws, *w4 = w3 + ws, *w5 = w4 + ws, *w6 = w5 + ws,
                *w7 = w6 + ws;
    float s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0, s5 = 0, s6 = 0, s7 = 0;
#pragma omp simd reduction(+ : s0, s1, s2, s3, s4, s5, s6, s7)
    for (long k = 0; k < K; k++) {
        float xv = x[k];
        s0 += xv * w0[k]; s1 += xv * w1[k]; s2 += xv * w2[k]; s3 += xv * w3[k];
        s4 += xv * w4[k]; s5 += xv * w5[k]; s6 += xv * w6[k]; s7 += xv * w7[k];
    }
    sm_linear_store(a, t, n, s0); sm_linear_store(a, t, n + 1, s1);
    sm_linear_store(a, t, n + 2, s2); sm_linear_store(a, t, n + 3, s3);
    sm_linear_store(a, t, n + 4, s4); sm_linear_store(a, t, n + 5, s5);
    sm_linear_store(a, t, n + 6, s6); sm_linear_store(a, t, n + 7, s7);
}

#ifndef SM_LINEAR_AVX2
/* 4 weight rows x 1 token */
static inline void sm_linear_4x1(const LinearArgs *a, long n, long t)
{
    const long K = a->K;
    const float *w0 = a->w + n * a->ws, *w1 = w0 + a->ws, *w2 = w1 + a->ws, *w3 = w2 + a->ws;
    const float *x = a->x + t * a->xs;
    float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
    for (long k = 0; k < K; k++) {
        float xv = x[k];
        s0 += xv * w0[k];
        s1 += xv * w1[k];
        s2 += xv * w2[k];
        s3 += xv * w3[k];
    }
    sm_linear_store(a, t, n, s0);
    sm_linear_store(a, t, n + 1, s1);
    sm_linear_store(a, t, n + 2, s2);
    sm_linear_store(a, t, n + 3, s3);
}

#endif

#ifdef SM_LINEAR_AVX2
#include <immintrin.h>

/* [sum a, sum b, sum c, sum d] of four 8-lane vectors */
static inline __m128 sm_hsum4(__m256 a, __m256 b, __m256 c, __m256 d)
{
    __m256 abcd = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
    return _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1));
}

/* 4 weight rows x R tokens (R <= 3): each weight vector, loaded once, feeds R FMAs, so a
 * batch of decode rows costs little more than one (12 accumulators + 4 weights fit the 16
 * registers; the token vectors are FMA memory operands). */
static inline __attribute__((always_inline)) void sm_linear_4xR(const LinearArgs *a, long n, long t, int R)
{
    const long K = a->K, ws = a->ws, xs = a->xs;
    const float *w = a->w + n * ws, *x = a->x + t * xs;
    __m256 acc[3][4];
    for (int r = 0; r < 3; r++)
        for (int j = 0; j < 4; j++) acc[r][j] = _mm256_setzero_ps();
    long k = 0;
    for (; k + 8 <= K; k += 8) {
        __m256 w0 = _mm256_loadu_ps(w + k), w1 = _mm256_loadu_ps(w + ws + k);
        __m256 w2 = _mm256_loadu_ps(w + 2 * ws + k), w3 = _mm256_loadu_ps(w + 3 * ws + k);
        for (int r = 0; r < R; r++) {
            __m256 xv = _mm256_loadu_ps(x + r * xs + k);
            acc[r][0] = _mm256_fmadd_ps(xv, w0, acc[r][0]);
            acc[r][1] = _mm256_fmadd_ps(xv, w1, acc[r][1]);
            acc[r][2] = _mm256_fmadd_ps(xv, w2, acc[r][2]);
            acc[r][3] = _mm256_fmadd_ps(xv, w3, acc[r][3]);
        }
    }
    if (k < K) { /* the last K % 8 features through masked loads (nothing read past a row) */
        __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(K - k)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        __m256 w0 = _mm256_maskload_ps(w + k, m), w1 = _mm256_maskload_ps(w + ws + k, m);
        __m256 w2 = _mm256_maskload_ps(w + 2 * ws + k, m), w3 = _mm256_maskload_ps(w + 3 * ws + k, m);
        for (int r = 0; r < R; r++) {
            __m256 xv = _mm256_maskload_ps(x + r * xs + k, m);
            acc[r][0] = _mm256_fmadd_ps(xv, w0, acc[r][0]);
            acc[r][1] = _mm256_fmadd_ps(xv, w1, acc[r][1]);
            acc[r][2] = _mm256_fmadd_ps(xv, w2, acc[r][2]);
            acc[r][3] = _mm256_fmadd_ps(xv, w3, acc[r][3]);
        }
    }
    for (int r = 0; r < R; r++) {
        float s[4];
        _mm_storeu_ps(s, sm_hsum4(acc[r][0], acc[r][1], acc[r][2], acc[r][3]));
        for (int j = 0; j < 4; j++) sm_linear_store(a, t + r, n + j, s[j]);
    }
}


/* W <= 3 weight rows x R <= 4 tokens: the decode batch's tile. Three weight vectors and one
 * token vector stay in registers beside the 12 accumulators, so each step of 8 features is 7
 * loads for 12 FMAs: bound by the FMA units, where 4 rows x 3 tokens (its token vectors read
 * as memory operands, 16 loads for 12 FMAs) is bound by the loads. Every output is summed in
 * the same order as in sm_linear_4xR whatever W and R, so a column's value does not depend on
 * how the threads split the columns. */
static inline __attribute__((always_inline)) void sm_linear_3xR(const LinearArgs *a, long n, long t, int W, int R)
{
    const long K = a->K, ws = a->ws, xs = a->xs;
    const float *w = a->w + n * ws, *x = a->x + t * xs;
    __m256 acc[4][3];
    for (int r = 0; r < 4; r++)
        for (int j = 0; j < 3; j++) acc[r][j] = _mm256_setzero_ps();
    long k = 0;
    for (; k + 8 <= K; k += 8) {
        __m256 w0 = _mm256_loadu_ps(w + k);
        __m256 w1 = W > 1 ? _mm256_loadu_ps(w + ws + k) : _mm256_setzero_ps();
        __m256 w2 = W > 2 ? _mm256_loadu_ps(w + 2 * ws + k) : _mm256_setzero_ps();
        for (int r = 0; r < R; r++) {
            __m256 xv = _mm256_loadu_ps(x + r * xs + k);
            acc[r][0] = _mm256_fmadd_ps(xv, w0, acc[r][0]);
            if (W > 1) acc[r][1] = _mm256_fmadd_ps(xv, w1, acc[r][1]);
            if (W > 2) acc[r][2] = _mm256_fmadd_ps(xv, w2, acc[r][2]);
        }
    }
    if (k < K) {
        __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(K - k)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        __m256 w0 = _mm256_maskload_ps(w + k, m);
        __m256 w1 = W > 1 ? _mm256_maskload_ps(w + ws + k, m) : _mm256_setzero_ps();
        __m256 w2 = W > 2 ? _mm256_maskload_ps(w + 2 * ws + k, m) : _mm256_setzero_ps();
        for (int r = 0; r < R; r++) {
            __m256 xv = _mm256_maskload_ps(x + r * xs + k, m);
            acc[r][0] = _mm256_fmadd_ps(xv, w0, acc[r][0]);
            if (W > 1) acc[r][1] = _mm256_fmadd_ps(xv, w1, acc[r][1]);
            if (W > 2) acc[r][2] = _mm256_fmadd_ps(xv, w2, acc[r][2]);
        }
    }
    for (int r = 0; r < R; r++) {
        float s[4];
        _mm_storeu_ps(s, sm_hsum4(acc[r][0], acc[r][1], acc[r][2], _mm256_setzero_ps()));
        for (int j = 0; j < W; j++) sm_linear_store(a, t + r, n + j, s[j]);
    }
}

/* columns n..n+W-1 (W <= 3) for every token, in tiles of 4 tokens */
static inline __attribute__((always_inline)) void sm_linear_3xT(const LinearArgs *a, long n, int W)
{
    long t = 0;
    for (; t + 4 <= a->T; t += 4) sm_linear_3xR(a, n, t, W, 4);
    if (a->T - t == 3) sm_linear_3xR(a, n, t, W, 3);
    else if (a->T - t == 2) sm_linear_3xR(a, n, t, W, 2);
    else if (a->T - t == 1) sm_linear_3xR(a, n, t, W, 1);
}
#endif

/* out columns n0..n1 of out (T,N) = x (T,K) @ w (N,K).T + b: weight rows are streamed
 * once from memory in groups of four (three from 4 tokens up, on AVX2) and reused from L1
 * for every token. */
static void FN(linear_cols)(const LinearArgs *a, long n0, long n1)
{
    long n = n0;
    if (a->T == 1)
        for (; n + 8 <= n1; n += 8) sm_linear_8x1(a, n, 0, n1);
#ifdef SM_LINEAR_AVX2
    if (a->T >= 4) {
        for (; n + 3 <= n1; n += 3) {
            if (n + 6 <= n1)
                for (long r = 3; r < 6; r++)
                    for (long k = 0; k < a->K; k += 16) __builtin_prefetch(a->w + (n + r) * a->ws + k);
            sm_linear_3xT(a, n, 3);
        }
        if (n1 - n == 2) sm_linear_3xT(a, n, 2);
        else if (n1 - n == 1) sm_linear_3xT(a, n, 1);
        return;
    }
#endif
    for (; n + 4 <= n1; n += 4) {
        long t = 0;
#ifdef SM_LINEAR_AVX2
        /* the next four weight rows are on their way from L3/memory while these are used */
        if (n + 8 <= n1)
            for (long r = 4; r < 8; r++)
                for (long k = 0; k < a->K; k += 16) __builtin_prefetch(a->w + (n + r) * a->ws + k);
        for (; t + 3 <= a->T; t += 3) sm_linear_4xR(a, n, t, 3);
        if (a->T - t == 2) sm_linear_4xR(a, n, t, 2);
        else if (a->T - t == 1) sm_linear_4xR(a, n, t, 1);
#else
        for (; t + 4 <= a->T; t += 4) sm_linear_4x4(a, n, t);
        for (; t < a->T; t++) sm_linear_4x1(a, n, t);
#endif
    }
    for (; n < n1; n++)
        for (long t = 0; t < a->T; t++)
            sm_linear_store(a, t, n, sm_dot(a->x + t * a->xs, a->w + n * a->ws, a->K));
}

#ifdef SM_LINEAR_AVX2
/* sc[j] = scale * (q . key j) for nb keys ks floats apart, D a multiple of 8: eight keys at a
 * time, whose eight partial-sum vectors are reduced together by one transpose-add (a dot
 * product each, as sm_dot takes, ends in a horizontal sum that costs more than its FMAs at
 * the head dims of small models) */
static inline void sm_scores(const float *q, const float *k, long ks, long D, long nb, float scale, float *sc)
{
    long j = 0;
    for (; j + 8 <= nb; j += 8) {
        const float *kj = k + j * ks;
        __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0, s4 = s0, s5 = s0, s6 = s0, s7 = s0;
        for (long d = 0; d < D; d += 8) {
            __m256 qv = _mm256_loadu_ps(q + d);
            s0 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(kj + d), s0);
            s1 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(kj + ks + d), s1);
            s2 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(kj + 2 * ks + d), s2);
            s3 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(kj + 3 * ks + d), s3);
            s4 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(kj + 4 * ks + d), s4);
            s5 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(kj + 5 * ks + d), s5);
            s6 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(kj + 6 * ks + d), s6);
            s7 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(kj + 7 * ks + d), s7);
        }
        /* lanes 0..3 of each 128-bit half: keys 0..3 (low half) and 4..7 (high half) of
         * each vector's low and high halves; the two halves then add */
        __m256 a = _mm256_hadd_ps(_mm256_hadd_ps(s0, s1), _mm256_hadd_ps(s2, s3));
        __m256 b = _mm256_hadd_ps(_mm256_hadd_ps(s4, s5), _mm256_hadd_ps(s6, s7));
        __m256 sum = _mm256_add_ps(_mm256_permute2f128_ps(a, b, 0x20), _mm256_permute2f128_ps(a, b, 0x31));
        _mm256_storeu_ps(sc + j, _mm256_mul_ps(sum, _mm256_set1_ps(scale)));
    }
    for (; j < nb; j++) sc[j] = sm_dot(q, k + j * ks, D) * scale;
}
#endif

/* One (head, query) pair per i = h*T + t: online softmax over key tiles, so memory is
 * O(tile) however long the context, and masked keys (beyond pos0+t, or before the sliding
 * window) are never touched. */
static void FN(attention)(const AttnArgs *a, long i0, long i1)
{
    float sc[SM_ATTN_TILE];
    float acc[SM_ATTN_MAX_D];
    const long D = a->D;
    for (long i = i0; i < i1; i++) {
        long h = i / a->T, t = i % a->T, kvh = h / a->group;
        const float *q = a->q + t * a->qs_t + h * a->qs_h;
        const float *kbase = a->kc + kvh * a->ks_h, *vbase = a->vc + kvh * a->vs_h;
        long S = a->pos0 + t + 1;
        long first = a->window > 0 && S > a->window ? S - a->window : 0;
        float m = -INFINITY, l = 0.0f;
        for (long d = 0; d < D; d++) acc[d] = 0.0f;
        for (long j0 = first; j0 < S; j0 += SM_ATTN_TILE) {
            long nb = S - j0 < SM_ATTN_TILE ? S - j0 : SM_ATTN_TILE;
            float bm = -INFINITY;
#ifdef SM_LINEAR_AVX2
            if (D % 8 == 0)
                sm_scores(q, kbase + j0 * a->ks_s, a->ks_s, D, nb, a->scale, sc);
            else
#endif
                for (long j = 0; j < nb; j++) sc[j] = sm_dot(q, kbase + (j0 + j) * a->ks_s, D) * a->scale;
#pragma omp simd reduction(max : bm)
            for (long j = 0; j < nb; j++) bm = sc[j] > bm ? sc[j] : bm;
            float mnew = bm > m ? bm : m;
            float corr = m == -INFINITY ? 0.0f : sm_exp(m - mnew);
            float bl = 0.0f;
#pragma omp simd reduction(+ : bl)
            for (long j = 0; j < nb; j++) {
                float p = sm_exp(sc[j] - mnew);
                sc[j] = p;
                bl += p;
            }
            l = l * corr + bl;
#ifdef SM_LINEAR_AVX2
            if (D % 8 == 0) {
                /* eight values of acc at a time kept in a register across the tile's keys: per
                 * element the same operations in the same order as the loop below */
                const __m256 vc = _mm256_set1_ps(corr);
                const float *vt = vbase + j0 * a->vs_s;
                for (long d = 0; d < D; d += 8) {
                    __m256 x = _mm256_mul_ps(_mm256_loadu_ps(acc + d), vc);
                    for (long j = 0; j < nb; j++)
                        x = _mm256_fmadd_ps(_mm256_set1_ps(sc[j]), _mm256_loadu_ps(vt + j * a->vs_s + d), x);
                    _mm256_storeu_ps(acc + d, x);
                }
                m = mnew;
                continue;
            }
#endif
#pragma omp simd
            for (long d = 0; d < D; d++) acc[d] *= corr;
            for (long j = 0; j < nb; j++) {
                const float *v = vbase + (j0 + j) * a->vs_s;
                float p = sc[j];
#pragma omp simd
                for (long d = 0; d < D; d++) acc[d] += p * v[d];
            }
            m = mnew;
        }
        float inv = 1.0f / l;
        float *o = a->out + t * a->os_t + h * a->os_h;
#pragma omp simd
        for (long d = 0; d < D; d++) o[d] = acc[d] * inv;
    }
}

/* Prefill: one (head, block of SM_ATTN_QBLOCK queries) per i = h*nblocks + b. Each key tile
 * is transposed once into kt (D, TILE) and shared by the block's queries, so a score row
 * is D vector FMAs across 64 keys instead of 64 dot products each ending in a horizontal
 * sum. Online softmax per query as in attention(); masked keys are neither scored into
 * the max nor exponentiated. Needs D <= SM_ATTN_BLOCKED_MAX_D (stack tiles). */
static void FN(attention_blocked)(const AttnArgs *a, long i0, long i1)
{
    float kt[SM_ATTN_BLOCKED_MAX_D * SM_ATTN_TILE];
    float acc[SM_ATTN_QBLOCK][SM_ATTN_BLOCKED_MAX_D];
    float m[SM_ATTN_QBLOCK], l[SM_ATTN_QBLOCK];
    float sc[SM_ATTN_TILE];
    const long D = a->D, QB = SM_ATTN_QBLOCK, TILE = SM_ATTN_TILE;
    const long nblocks = (a->T + QB - 1) / QB;
    for (long i = i0; i < i1; i++) {
        long h = i / nblocks, t0 = (i % nblocks) * QB;
        long nq = a->T - t0 < QB ? a->T - t0 : QB;
        long kvh = h / a->group;
        const float *kbase = a->kc + kvh * a->ks_h, *vbase = a->vc + kvh * a->vs_h;
        long S = a->pos0 + t0 + nq; /* keys the last query of the block sees */
        long first = a->window > 0 && a->pos0 + t0 + 1 > a->window ? a->pos0 + t0 + 1 - a->window : 0;
        for (long q = 0; q < nq; q++) {
            m[q] = -INFINITY;
            l[q] = 0.0f;
            for (long d = 0; d < D; d++) acc[q][d] = 0.0f;
        }
        for (long j0 = first; j0 < S; j0 += TILE) {
            long nb = S - j0 < TILE ? S - j0 : TILE;
            for (long j = 0; j < nb; j++) {
                const float *k = kbase + (j0 + j) * a->ks_s;
                for (long d = 0; d < D; d++) kt[d * TILE + j] = k[d];
            }
            for (long d = 0; d < D && nb < TILE; d++)
                for (long j = nb; j < TILE; j++) kt[d * TILE + j] = 0.0f;
            for (long q = 0; q < nq; q++) {
                long seen = a->pos0 + t0 + q + 1 - j0; /* keys of this tile query q may see */
                long from = a->window > 0 ? seen - a->window : 0; /* ... from this one on */
                if (seen > nb) seen = nb;
                if (from < 0) from = 0;
                if (seen <= from) continue;
                const float *qv = a->q + (t0 + q) * a->qs_t + h * a->qs_h;
                for (long j = 0; j < TILE; j++) sc[j] = 0.0f;
                for (long d = 0; d < D; d++) {
                    const float qd = qv[d];
                    const float *kd = kt + d * TILE;
#pragma omp simd
                    for (long j = 0; j < TILE; j++) sc[j] += qd * kd[j];
                }
                float bm = -INFINITY;
#pragma omp simd reduction(max : bm)
                for (long j = from; j < seen; j++) {
                    sc[j] *= a->scale;
                    bm = sc[j] > bm ? sc[j] : bm;
                }
                float mnew = bm > m[q] ? bm : m[q];
                float corr = m[q] == -INFINITY ? 0.0f : sm_exp(m[q] - mnew);
                float bl = 0.0f;
#pragma omp simd reduction(+ : bl)
                for (long j = from; j < seen; j++) {
                    float p = sm_exp(sc[j] - mnew);
                    sc[j] = p;
                    bl += p;
                }
                l[q] = l[q] * corr + bl;
                float *aq = acc[q];
#pragma omp simd
                for (long d = 0; d < D; d++) aq[d] *= corr;
                for (long j = from; j < seen; j++) {
                    const float *v = vbase + (j0 + j) * a->vs_s;
                    const float p = sc[j];
#pragma omp simd
                    for (long d = 0; d < D; d++) aq[d] += p * v[d];
                }
                m[q] = mnew;
            }
        }
        for (long q = 0; q < nq; q++) {
            float inv = 1.0f / l[q];
            float *o = a->out + (t0 + q) * a->os_t + h * a->os_h;
#pragma omp simd
            for (long d = 0; d < D; d++) o[d] = acc[q][d] * inv;
        }
    }
}

#if defined(__F16C__) && defined(__FMA__)
#include <immintrin.h>
/* the dot's two accumulators summed, then the values from d on one by one */
static inline float sm_dot_half_end(__m256 s0, __m256 s1, const float *q, const uint16_t *k, long d, long D)
{
    s0 = _mm256_add_ps(s0, s1);
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(s0), _mm256_extractf128_ps(s0, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    h = _mm_add_ss(h, _mm_movehdup_ps(h));
    float s = _mm_cvtss_f32(h);
    for (; d < D; d++) s += q[d] * sm_f16_to_f32(k[d]);
    return s;
}

/* dot of float q with a half row (F16C widens 8 halves a load) */
static inline float sm_dot_half(const float *q, const uint16_t *k, long D)
{
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    long d = 0;
    for (; d + 16 <= D; d += 16) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + d), _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(k + d))), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(q + d + 8),
                             _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(k + d + 8))), s1);
    }
    for (; d + 8 <= D; d += 8)
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + d), _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(k + d))), s0);
    return sm_dot_half_end(s0, s1, q, k, d, D);
}

/* acc += p * v for a half row v */
static inline void sm_axpy_half(float *acc, float p, const uint16_t *v, long D)
{
    const __m256 pv = _mm256_set1_ps(p);
    long d = 0;
    for (; d + 8 <= D; d += 8)
        _mm256_storeu_ps(acc + d, _mm256_fmadd_ps(pv, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(v + d))),
                                                  _mm256_loadu_ps(acc + d)));
    for (; d < D; d++) acc[d] += p * sm_f16_to_f32(v[d]);
}
#else
static inline float sm_dot_half(const float *q, const uint16_t *k, long D)
{
    float s = 0.0f;
    for (long d = 0; d < D; d++) s += q[d] * sm_f16_to_f32(k[d]);
    return s;
}

static inline void sm_axpy_half(float *acc, float p, const uint16_t *v, long D)
{
    for (long d = 0; d < D; d++) acc[d] += p * sm_f16_to_f32(v[d]);
}
#endif

/* x[j] = f16(x[j] * mul), back in float: ggml's rounding of the probabilities to f16 */
static inline void sm_round_half(float *x, long n, float mul)
{
    long j = 0;
#if defined(__F16C__) && defined(__FMA__)
    const __m256 mv = _mm256_set1_ps(mul);
    for (; j + 8 <= n; j += 8)
        _mm256_storeu_ps(x + j, _mm256_cvtph_ps(_mm256_cvtps_ph(_mm256_mul_ps(_mm256_loadu_ps(x + j), mv),
                                                                _MM_FROUND_TO_NEAREST_INT)));
#endif
    for (; j < n; j++) x[j] = sm_f16_to_f32(sm_f32_to_f16(x[j] * mul));
}

/* sc[j] = scale * (q . k_{j0+j}) for n keys of a half cache; returns their max */
static inline float sm_scores_half(float *sc, const float *q, const uint16_t *k, long ks, long j0, long n, long D,
                                   float scale)
{
    float m = -INFINITY;
    for (long j = 0; j < n; j++) {
        float s = sm_dot_half(q, k + (j0 + j) * ks, D) * scale;
        sc[j] = s;
        m = s > m ? s : m;
    }
    return m;
}

#if defined(__F16C__) && defined(__FMA__)
/* sm_dot_half of GN queries (D floats apart) with one half row, each key vector widened once
 * for all of them: every query's sum takes sm_dot_half's operations in its order */
static inline __attribute__((always_inline)) void sm_dot_half_n(float *s, const float *q, const uint16_t *k,
                                                                 long D, const int GN)
{
    __m256 a0[4], a1[4];
    for (int g = 0; g < GN; g++) a0[g] = a1[g] = _mm256_setzero_ps();
    long d = 0;
    for (; d + 16 <= D; d += 16) {
        __m256 k0 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(k + d)));
        __m256 k1 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(k + d + 8)));
        for (int g = 0; g < GN; g++) {
            a0[g] = _mm256_fmadd_ps(_mm256_loadu_ps(q + g * D + d), k0, a0[g]);
            a1[g] = _mm256_fmadd_ps(_mm256_loadu_ps(q + g * D + d + 8), k1, a1[g]);
        }
    }
    for (; d + 8 <= D; d += 8) {
        __m256 k0 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(k + d)));
        for (int g = 0; g < GN; g++) a0[g] = _mm256_fmadd_ps(_mm256_loadu_ps(q + g * D + d), k0, a0[g]);
    }
    for (int g = 0; g < GN; g++) s[g] = sm_dot_half_end(a0[g], a1[g], q + g * D, k, d, D);
}
#endif

/* sc[g * scs + j] = scale * (query g . k_{j0+j}) for G queries (qh: D floats apart) and n keys
 * of a half cache, the same values as sm_scores_half per query; m[g] = max(m[g], their max) */
static inline void sm_scores_half_heads(float *sc, long scs, const float *qh, long G, const uint16_t *k, long ks,
                                        long j0, long n, long D, float scale, float *m)
{
#if defined(__F16C__) && defined(__FMA__)
    for (long g0 = 0; g0 < G; g0 += 4) {
        const long gn = G - g0 < 4 ? G - g0 : 4;
        const float *q = qh + g0 * D;
        for (long j = 0; j < n; j++) {
            float s[4];
            const uint16_t *kj = k + (j0 + j) * ks;
            switch (gn) {
            case 4: sm_dot_half_n(s, q, kj, D, 4); break;
            case 3: sm_dot_half_n(s, q, kj, D, 3); break;
            case 2: sm_dot_half_n(s, q, kj, D, 2); break;
            default: sm_dot_half_n(s, q, kj, D, 1); break;
            }
            for (long g = 0; g < gn; g++) {
                float v = s[g] * scale;
                sc[(g0 + g) * scs + j] = v;
                m[g0 + g] = v > m[g0 + g] ? v : m[g0 + g];
            }
        }
    }
#else
    for (long g = 0; g < G; g++) {
        float cm = sm_scores_half(sc + g * scs, qh + g * D, k, ks, j0, n, D, scale);
        m[g] = cm > m[g] ? cm : m[g];
    }
#endif
}

/* acc += p[j] * v_{j0+j} for the n keys whose p[j] is not 0, in key order: sm_axpy_half's
 * operations per value, with eight vectors of acc held in registers across 32 keys at a time
 * (their values re-read from L1) instead of loaded and stored for every key */
static inline void sm_axpy_half_keys(float *acc, const float *p, const uint16_t *v, long vs, long j0, long n, long D)
{
#if defined(__F16C__) && defined(__FMA__)
    if (D % 8 == 0) {
        for (long b0 = 0; b0 < n; b0 += 32) {
            const long bn = n - b0 < 32 ? n - b0 : 32;
            long d = 0;
            for (; d + 64 <= D; d += 64) {
                __m256 x[8];
                for (int u = 0; u < 8; u++) x[u] = _mm256_loadu_ps(acc + d + 8 * u);
                for (long j = b0; j < b0 + bn; j++) {
                    if (p[j] == 0.0f) continue;
                    const __m256 pv = _mm256_set1_ps(p[j]);
                    const uint16_t *vj = v + (j0 + j) * vs + d;
                    for (int u = 0; u < 8; u++)
                        x[u] = _mm256_fmadd_ps(pv, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(vj + 8 * u))), x[u]);
                }
                for (int u = 0; u < 8; u++) _mm256_storeu_ps(acc + d + 8 * u, x[u]);
            }
            for (; d < D; d += 8) {
                __m256 x = _mm256_loadu_ps(acc + d);
                for (long j = b0; j < b0 + bn; j++)
                    if (p[j] != 0.0f)
                        x = _mm256_fmadd_ps(_mm256_set1_ps(p[j]),
                                            _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(v + (j0 + j) * vs + d))), x);
                _mm256_storeu_ps(acc + d, x);
            }
        }
        return;
    }
#endif
    for (long j = 0; j < n; j++)
        if (p[j] != 0.0f) sm_axpy_half(acc, p[j], v + (j0 + j) * vs, D);
}

/* sc[j] = exp(sc[j] - m) for n scores; returns their sum in double, as ggml's softmax */
static inline double sm_exp_sum(float *sc, long n, float m)
{
#pragma omp simd
    for (long j = 0; j < n; j++) sc[j] = sm_exp(sc[j] - m);
    double sum = 0.0;
#pragma omp simd reduction(+ : sum)
    for (long j = 0; j < n; j++) sum += (double)sc[j];
    return sum;
}

/* Attention over a half (f16) cache as llama.cpp's CPU backend computes it without flash
 * attention: KQ = mul_mat(K f16, Q) rounds Q to f16 and sums in f32; the softmax is exact
 * (max first, sum of exp in double, times 1/sum); KQV = mul_mat(V f16, P) rounds the
 * probabilities to f16. One (head, query) per i = h*T + t. The scores of up to
 * SM_ATTN_SCORES keys stay on the stack; a longer span is taken in chunks of that many,
 * recomputing each chunk's scores in the sum and output passes. */
static void FN(attention_half)(const AttnArgs *a, long i0, long i1)
{
    const long G = a->hsub > 1 ? a->hsub : 1, D = a->D;
    float sc[SM_ATTN_SCORES];
    float qh[SM_ATTN_GROUP_FLOATS > SM_ATTN_MAX_D ? SM_ATTN_GROUP_FLOATS : SM_ATTN_MAX_D];
    float acc[SM_ATTN_GROUP_FLOATS > SM_ATTN_MAX_D ? SM_ATTN_GROUP_FLOATS : SM_ATTN_MAX_D];
    float m[SM_ATTN_GROUP_MAX], inv[SM_ATTN_GROUP_MAX];
    double sum[SM_ATTN_GROUP_MAX];
    const long CH = SM_ATTN_SCORES / G; /* keys whose scores stay on the stack, per head */
    const float scale = a->scale;
    for (long i = i0; i < i1; i++) {
        long h0 = i / a->T * G, t = i % a->T, kvh = h0 / a->group;
        const uint16_t *kbase = a->kh + kvh * a->ks_h, *vbase = a->vh + kvh * a->vs_h;
        long S = a->pos0 + t + 1;
        long first = a->window > 0 && S > a->window ? S - a->window : 0;
        long n = S - first;
        for (long g = 0; g < G; g++) {
            const float *q = a->q + t * a->qs_t + (h0 + g) * a->qs_h;
            for (long d = 0; d < D; d++) qh[g * D + d] = q[d];
            m[g] = -INFINITY;
            sum[g] = 0.0;
        }
        sm_round_half(qh, G * D, 1.0f); /* q * 1 is q: the F16C rounding where the ISA has it */
        for (long d = 0; d < G * D; d++) acc[d] = 0.0f;
        for (long c0 = 0; c0 < n; c0 += CH) {
            long cn = n - c0 < CH ? n - c0 : CH;
            sm_scores_half_heads(sc, CH, qh, G, kbase, a->ks_s, first + c0, cn, D, scale, m);
        }
        if (n <= CH) {
            for (long g = 0; g < G; g++) sum[g] = sm_exp_sum(sc + g * CH, n, m[g]);
        } else {
            for (long c0 = 0; c0 < n; c0 += CH) {
                long cn = n - c0 < CH ? n - c0 : CH;
                float dummy[SM_ATTN_GROUP_MAX];
                for (long g = 0; g < G; g++) dummy[g] = -INFINITY;
                sm_scores_half_heads(sc, CH, qh, G, kbase, a->ks_s, first + c0, cn, D, scale, dummy);
                for (long g = 0; g < G; g++) sum[g] += sm_exp_sum(sc + g * CH, cn, m[g]);
            }
        }
        for (long g = 0; g < G; g++) inv[g] = (float)(1.0 / sum[g]);
        for (long c0 = 0; c0 < n; c0 += CH) {
            long cn = n - c0 < CH ? n - c0 : CH;
            if (n > CH) {
                float dummy[SM_ATTN_GROUP_MAX];
                for (long g = 0; g < G; g++) dummy[g] = -INFINITY;
                sm_scores_half_heads(sc, CH, qh, G, kbase, a->ks_s, first + c0, cn, D, scale, dummy);
                for (long g = 0; g < G; g++) sm_exp_sum(sc + g * CH, cn, m[g]);
            }
            for (long g = 0; g < G; g++) {
                sm_round_half(sc + g * CH, cn, inv[g]);
                sm_axpy_half_keys(acc + g * D, sc + g * CH, vbase, a->vs_s, first + c0, cn, D);
            }
        }
        for (long g = 0; g < G; g++) {
            float *o = a->out + t * a->os_t + (h0 + g) * a->os_h;
            for (long d = 0; d < D; d++) o[d] = acc[g * D + d];
        }
    }
}

/* rows r0..r1 of x, out (T,C); mean, rstd (T,) when given: two-pass mean and variance */
static void FN(layer_norm_rows)(const NormArgs *a, long r0, long r1)
{
    const long C = a->C;
    for (long r = r0; r < r1; r++) {
        const float *x = a->x + r * a->xs;
        float *o = a->out + r * a->os;
        float s = 0.0f;
#pragma omp simd reduction(+ : s)
        for (long c = 0; c < C; c++) s += x[c];
        float mean = s / (float)C;
        float v = 0.0f;
#pragma omp simd reduction(+ : v)
        for (long c = 0; c < C; c++) { float d = x[c] - mean; v += d * d; }
        float rstd = 1.0f / sqrtf(v / (float)C + a->eps);
#pragma omp simd
        for (long c = 0; c < C; c++) o[c] = (x[c] - mean) * rstd * a->w[c] + a->b[c];
        if (a->mean) a->mean[r * a->ms] = mean;
        if (a->rstd) a->rstd[r * a->rs] = rstd;
    }
}

/* rows r0..r1 of x, out (T,C): out = x / sqrt(mean(x^2) + eps) * w, as ggml computes it: the
 * float squares summed in double, the mean rounded to float, then (x * rstd) * w in float.
 * A last-bit difference here flips the 8-bit rounding of the next quantized product. */
static void FN(rms_norm_rows)(const NormArgs *a, long r0, long r1)
{
    const long C = a->C;
    for (long r = r0; r < r1; r++) {
        const float *x = a->x + r * a->xs;
        float *o = a->out + r * a->os;
        double s = 0.0;
#pragma omp simd reduction(+ : s)
        for (long c = 0; c < C; c++) s += (double)(x[c] * x[c]);
        float mean = (float)(s / (double)C);
        float rstd = 1.0f / sqrtf(mean + a->eps);
#pragma omp simd
        for (long c = 0; c < C; c++) o[c] = x[c] * rstd * a->w[c];
    }
}

/* rows r0..r1 in one pass: dx += rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)),
 * dxhat = dout * w, while pdw = sum of dout * xhat and pdb = sum of dout over these rows (the
 * row is still in L1 for its second loop; dx may be dout or x, each element read first) */
static void FN(layer_norm_bwd_block)(const NormBwdArgs *a, long r0, long r1, float *pdw, float *pdb)
{
    const long C = a->C;
    const float *w = a->w;
    memset(pdw, 0, (size_t)C * sizeof(float));
    memset(pdb, 0, (size_t)C * sizeof(float));
    for (long r = r0; r < r1; r++) {
        const float *dout = a->dout + r * a->ds, *x = a->x + r * a->xs;
        float *dx = a->dx + r * a->dxs;
        const float mean = a->mean[r * a->ms], rstd = a->rstd[r * a->rs];
        float s1 = 0.0f, s2 = 0.0f;
#pragma omp simd reduction(+ : s1, s2)
        for (long c = 0; c < C; c++) {
            float dxhat = dout[c] * w[c];
            s1 += dxhat;
            s2 += dxhat * ((x[c] - mean) * rstd);
        }
        s1 /= (float)C;
        s2 /= (float)C;
#pragma omp simd
        for (long c = 0; c < C; c++) {
            float g = dout[c], xhat = (x[c] - mean) * rstd;
            pdb[c] += g;
            pdw[c] += g * xhat;
            dx[c] += rstd * (g * w[c] - s1 - xhat * s2);
        }
    }
}

/* a, b, out (n,): out = op(a[, b]); out may be a or b itself (same-index reads before writes) */
static void FN(elementwise)(int op, const float *a, const float *b, float *out, long n)
{
    switch (op) {
    case SM_GELU:
#pragma omp simd
        for (long i = 0; i < n; i++) out[i] = sm_gelu(a[i]);
        break;
    case SM_SILU:
#pragma omp simd
        for (long i = 0; i < n; i++) out[i] = a[i] / (1.0f + sm_exp(-a[i]));
        break;
    case SM_GELU_BWD: /* a = x, b = dout */
#pragma omp simd
        for (long i = 0; i < n; i++) out[i] = b[i] * sm_gelu_grad(a[i]);
        break;
    case SM_SWIGLU: /* a = gate, b = up */
#pragma omp simd
        for (long i = 0; i < n; i++) out[i] = a[i] / (1.0f + sm_exp(-a[i])) * b[i];
        break;
    case SM_GEGLU:
#pragma omp simd
        for (long i = 0; i < n; i++) out[i] = sm_gelu(a[i]) * b[i];
        break;
    }
}

/* softmax per row */
static void FN(softmax_rows)(const SoftmaxArgs *a, long r0, long r1)
{
    const long n = a->S;
    for (long r = r0; r < r1; r++) {
        const float *x = a->x + r * a->xs;
        float *o = a->out + r * a->os;
        float m = -INFINITY;
#pragma omp simd reduction(max : m)
        for (long j = 0; j < n; j++) m = x[j] > m ? x[j] : m;
        if (m == -INFINITY) m = 0.0f; /* an all -inf row gives NaN like the reference */
        float z = 0.0f;
#pragma omp simd reduction(+ : z)
        for (long j = 0; j < n; j++) { float e = sm_exp(x[j] - m); o[j] = e; z += e; }
        float inv = 1.0f / z;
#pragma omp simd
        for (long j = 0; j < n; j++) o[j] *= inv;
    }
}

/* row t's position: its own (rope_rows) or pos0 + t; exact in double either way */
static inline double sm_rope_position(const RopeArgs *a, long t)
{
    if (!a->positions) return (double)a->pos0 + (double)t;
    return a->positions_64 ? (double)((const int64_t *)a->positions)[t * a->ps]
                           : (double)((const int32_t *)a->positions)[t * a->ps];
}

/* rows t0..t1 of (T,H,D): angles in double like the reference (sm_rope_angles), then float
 * rotations; with a->table, the angles' cos and sin made once per call (module.c) */
static void FN(rope_rows)(const RopeArgs *a, long t0, long t1)
{
    float cs_row[SM_ROPE_MAX_HALF], sn_row[SM_ROPE_MAX_HALF];
    double inv[SM_ROPE_MAX_HALF];
    const long half = a->half;
    if (!a->table) sm_rope_inverse_frequencies(a->theta, a->freq_factors, half, inv);
    for (long t = t0; t < t1; t++) {
        const float *cs = cs_row, *sn = sn_row;
        if (a->table) {
            cs = a->table + t * half;
            sn = a->table + (a->T + t) * half;
        } else {
            sm_rope_angles(sm_rope_position(a, t), inv, half, cs_row, sn_row);
        }
        for (long h = 0; h < a->H; h++) {
            const float *x = a->x + t * a->xs_t + h * a->xs_h;
            float *o = a->out + t * a->os_t + h * a->os_h;
            if (a->neox) {
#pragma omp simd
                for (long i = 0; i < half; i++) {
                    float x0 = x[i], x1 = x[i + half];
                    o[i] = x0 * cs[i] - x1 * sn[i];
                    o[i + half] = x0 * sn[i] + x1 * cs[i];
                }
            } else {
#pragma omp simd
                for (long i = 0; i < half; i++) {
                    float x0 = x[2 * i], x1 = x[2 * i + 1];
                    o[2 * i] = x0 * cs[i] - x1 * sn[i];
                    o[2 * i + 1] = x0 * sn[i] + x1 * cs[i];
                }
            }
        }
    }
}

/* loss = logsumexp(row) - row[target]; dlogits (which may be the logits buffer itself)
 * = (softmax - onehot) * dscale. The target logit is read before anything is written. */
static void FN(cross_entropy_rows)(const XentArgs *a, long r0, long r1)
{
    const long V = a->V;
    for (long r = r0; r < r1; r++) {
        const float *x = a->logits + r * a->ls;
        long tgt = a->targets_64 ? (long)((const int64_t *)a->targets)[r * a->ts]
                                 : (long)((const int32_t *)a->targets)[r * a->ts];
        float xt = x[tgt];
        float m = -INFINITY;
#pragma omp simd reduction(max : m)
        for (long j = 0; j < V; j++) m = x[j] > m ? x[j] : m;
        float z = 0.0f;
        if (a->dlogits) {
            float *d = a->dlogits + r * a->ds;
#pragma omp simd reduction(+ : z)
            for (long j = 0; j < V; j++) { float e = sm_exp(x[j] - m); d[j] = e; z += e; }
            float k = a->dscale / z;
#pragma omp simd
            for (long j = 0; j < V; j++) d[j] *= k;
            d[tgt] -= a->dscale;
        } else {
#pragma omp simd reduction(+ : z)
            for (long j = 0; j < V; j++) z += sm_exp(x[j] - m);
        }
        a->losses[r * a->lss] = (float)(log((double)z) + (double)m - (double)xt);
    }
}

/* elements i0..i1 of p, g, m, v (N,): one fused pass, bias corrections precomputed */
static void FN(adamw)(const AdamArgs *a, long i0, long i1)
{
    float *p = a->p, *m = a->m, *v = a->v;
    const float *g = a->g;
    const float b1 = a->beta1, b2 = a->beta2, c1 = 1.0f - a->beta1, c2 = 1.0f - a->beta2;
#pragma omp simd
    for (long i = i0; i < i1; i++) {
        float mi = b1 * m[i] + c1 * g[i];
        float vi = b2 * v[i] + c2 * g[i] * g[i];
        m[i] = mi;
        v[i] = vi;
        float upd = (mi * a->inv_bc1) / (sqrtf(vi * a->inv_bc2) + a->eps) + a->wd * p[i];
        p[i] -= a->lr * upd;
    }
}

/* out, a, b (n,): out = a + b, or a copy of a when b is NULL (out may be a) */
static void FN(add_rows)(float *out, const float *a, const float *b, long n)
{
    if (b) {
#pragma omp simd
        for (long i = 0; i < n; i++) out[i] = a[i] + b[i];
    } else {
        memmove(out, a, (size_t)n * sizeof(float));
    }
}

/* out (n,) = x as IEEE half, rounded to nearest even: sm_f32_to_f16's bits, F16C's where the
 * build has it (the KV cache store) */
static void FN(to_half)(const float *x, uint16_t *out, long n)
{
    long j = 0;
#if defined(__F16C__)
    for (; j + 8 <= n; j += 8)
        _mm_storeu_si128((__m128i *)(out + j),
                         _mm256_cvtps_ph(_mm256_loadu_ps(x + j), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#endif
    for (; j < n; j++) out[j] = sm_f32_to_f16(x[j]);
}

/* The parts of sample_softmax (module.c runs the first two over slices of the vocabulary on
 * the pool and combines them). */
static float FN(scaled_max)(const float *x, long n, float scale)
{
    float m = -INFINITY;
#pragma omp simd reduction(max : m)
    for (long j = 0; j < n; j++) m = x[j] * scale > m ? x[j] * scale : m;
    return m;
}

/* p = exp(scale * x - m); returns sum(p) in double */
static double FN(shifted_exp)(const float *x, float *p, long n, float scale, float m)
{
#pragma omp simd
    for (long j = 0; j < n; j++) p[j] = sm_exp(x[j] * scale - m);
    double total = 0.0;
#pragma omp simd reduction(+ : total)
    for (long j = 0; j < n; j++) total += (double)p[j];
    return total;
}

/* the first index whose running sum of p (in double) exceeds target, skipping whole blocks by
 * their sums; -1 when the sum of all stays at or below it */
#define SM_SCAN_BLOCK 256
static long FN(running_sum_above)(const float *p, long n, double target)
{
    double run = 0.0;
    long j = 0;
    for (; j + SM_SCAN_BLOCK <= n; j += SM_SCAN_BLOCK) {
        double s = 0.0;
#pragma omp simd reduction(+ : s)
        for (long i = j; i < j + SM_SCAN_BLOCK; i++) s += (double)p[i];
        if (run + s > target) break;
        run += s;
    }
    for (; j < n; j++) {
        run += (double)p[j];
        if (run > target) return j;
    }
    return -1;
}

const KernelTable SM_CAT(sm_table, SM_SUFFIX) = {
    .name = SM_ISA_NAME,
    .linear_cols = FN(linear_cols),
    .attention = FN(attention),
    .attention_blocked = FN(attention_blocked),
    .attention_half = FN(attention_half),
    .layer_norm_rows = FN(layer_norm_rows),
    .rms_norm_rows = FN(rms_norm_rows),
    .layer_norm_bwd_block = FN(layer_norm_bwd_block),
    .elementwise = FN(elementwise),
    .softmax_rows = FN(softmax_rows),
    .rope_rows = FN(rope_rows),
    .cross_entropy_rows = FN(cross_entropy_rows),
    .adamw = FN(adamw),
    .add_rows = FN(add_rows),
    .to_half = FN(to_half),
    .scaled_max = FN(scaled_max),
    .shifted_exp = FN(shifted_exp),
    .running_sum_above = FN(running_sum_above),
};
