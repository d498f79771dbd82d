/* Quantized-weight kernel bodies, compiled once per ISA: the including file sets
 * `#pragma GCC target`, SM_QSUFFIX, and SM_QUANT_AVX2 for the AVX2 build, which
 * SM_QUANT_VNNI turns into the AVX-512 VNNI one (and SM_QUANT_VNNI_EMULATED into that one's
 * AVX2 stand-in for the tests); SM_QUANT_AMX adds the AMX-INT8 many-row products
 * (quant_amx_impl.h, on the tiles of amx.h; SM_AMX_EMULATED, their stand-in).
 *
 * A product walks its output features; for each weight row and each tile of up to
 * SM_QTILE activation rows it unpacks every weight block once and takes its integer dot
 * product with each activation row of the tile. Each block's exact integer sum is then
 * scaled and added to a float32 accumulator in block order with the expressions of the NumPy
 * twin (llama.cpp's scalar vec_dot), so the results match it bit for bit. Contraction into
 * FMA is off here for that reason: a fused multiply-add rounds once where the twin rounds
 * twice.
 *
 * The AVX2 build works on groups of eight rows (one float lane per row, see "eight weight
 * rows at once"), with decode (one activation row) variants that keep the accumulator in a
 * register and prefetch the weights ahead; leftover rows and F16/BF16 weights take the
 * one-row code. Many-row products take the activation rows in L2-sized blocks, and the
 * activations themselves are quantized once per product (module.c) by quantize_row, eight
 * values at a time in the AVX2 build, to quant.c's exact bytes. */
#pragma GCC optimize("fp-contract=off")
#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#endif
#include <stdlib.h>
#include <string.h>

#include "quant.h"
#ifdef SM_QUANT_AVX2
#include <immintrin.h>
#endif

#define SM_QCAT2(a, b) a##_##b
#define SM_QCAT(a, b) SM_QCAT2(a, b)
#define QFN(name) SM_QCAT(name, SM_QSUFFIX)

/* ---------------------------------------------------------------- 32 int8 values */

#ifdef SM_QUANT_AVX2
typedef __m256i VB;   /* 32 int8 */
typedef __m256i VI;   /* 8 int32 partial sums */

static inline float h2f(const uint8_t *p) { uint16_t h; memcpy(&h, p, 2); return _cvtsh_ss(h); }
static inline VB vb_load(const void *p) { return _mm256_loadu_si256((const __m256i *)p); }

/* qs (16,) -> values 0..15: low nibbles first, then high nibbles */
static inline VB vb_nibbles(const uint8_t *qs)
{
    __m128i v = _mm_loadu_si128((const __m128i *)qs);
    __m256i both = _mm256_set_m128i(_mm_srli_epi16(v, 4), v);
    return _mm256_and_si256(both, _mm256_set1_epi8(0x0F));
}

/* 0x10 in byte j where bit j of qh is set */
static inline VB vb_high_bits(const uint8_t *qh4)
{
    uint32_t qh;
    memcpy(&qh, qh4, 4);
    const __m256i pick = _mm256_set_epi64x(0x0303030303030303LL, 0x0202020202020202LL,
                                           0x0101010101010101LL, 0x0000000000000000LL);
    const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ULL);
    __m256i bytes = _mm256_shuffle_epi8(_mm256_set1_epi32((int)qh), pick);
    __m256i set = _mm256_cmpeq_epi8(_mm256_and_si256(bytes, bit), bit);
    return _mm256_and_si256(set, _mm256_set1_epi8(0x10));
}

static inline VB vb_or(VB a, VB b) { return _mm256_or_si256(a, b); }
static inline VB vb_sub(VB a, int c) { return _mm256_sub_epi8(a, _mm256_set1_epi8((char)c)); }

/* pairwise int16 sums of w*y: w unsigned (0..255 as uint8), y signed */
static inline __m256i p16_us(VB w, VB y) { return _mm256_maddubs_epi16(w, y); }
/* signed w: |w| times y with w's sign (|w| * |y| * 2 stays below 2^15 for our ranges) */
static inline __m256i p16_ss(VB w, VB y) { return _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(y, w)); }

static inline int vi_sum(VI v)
{
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 1));
    return _mm_cvtsi128_si32(s);
}

static inline int dot_us(VB w, VB y) { return vi_sum(_mm256_madd_epi16(p16_us(w, y), _mm256_set1_epi16(1))); }
static inline int dot_ss(VB w, VB y) { return vi_sum(_mm256_madd_epi16(p16_ss(w, y), _mm256_set1_epi16(1))); }
static inline VI vi_zero(void) { return _mm256_setzero_si256(); }
/* acc + scale * dot(w, y) lane-wise (w unsigned) */
static inline VI vi_add_us(VI acc, VB w, VB y, int scale)
{
    return _mm256_add_epi32(acc, _mm256_madd_epi16(p16_us(w, y), _mm256_set1_epi16((short)scale)));
}
/* acc + sc0 * dot(w[0:16], y[0:16]) + sc1 * dot(w[16:32], y[16:32]) (w signed) */
static inline VI vi_add_ss2(VI acc, VB w, VB y, int sc0, int sc1)
{
    __m256i sc = _mm256_set_m128i(_mm_set1_epi16((short)sc1), _mm_set1_epi16((short)sc0));
    return _mm256_add_epi32(acc, _mm256_madd_epi16(p16_ss(w, y), sc));
}

/* Q6_K group, unsigned: lo = (ql32 >> lshift) & 15, hi = (qh32 >> hshift) & 3, value = lo | hi << 4 */
static inline VB vb_q6u(const uint8_t *ql32, int lshift, const uint8_t *qh32, int hshift)
{
    __m256i lo = _mm256_and_si256(_mm256_srli_epi16(vb_load(ql32), lshift), _mm256_set1_epi8(0x0F));
    __m256i hi = _mm256_and_si256(_mm256_srli_epi16(vb_load(qh32), hshift), _mm256_set1_epi8(0x03));
    return _mm256_or_si256(lo, _mm256_slli_epi16(hi, 4));
}
/* the same minus 32: -32..31 */
static inline VB vb_q6(const uint8_t *ql32, int lshift, const uint8_t *qh32, int hshift)
{
    return vb_sub(vb_q6u(ql32, lshift, qh32, hshift), 32);
}

/* Q4_K / Q5_K sub-block pair c: low and high nibbles of qs[32c .. 32c+31] */
static inline void vb_q4_pair(const uint8_t *qs32, VB *lo, VB *hi)
{
    __m256i v = vb_load(qs32);
    *lo = _mm256_and_si256(v, _mm256_set1_epi8(0x0F));
    *hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), _mm256_set1_epi8(0x0F));
}

/* Q5_K fifth bits of sub-blocks 2c and 2c+1: bits 2c and 2c+1 of qh[0..31], as 0x10 */
static inline void vb_q5_high(const uint8_t *qh32, int c, VB *lo, VB *hi)
{
    __m256i v = vb_load(qh32);
    const __m256i b = _mm256_set1_epi8(0x01);
    *lo = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(v, 2 * c), b), 4);
    *hi = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(v, 2 * c + 1), b), 4);
}

static inline int mins_dot(const int32_t *bsum32, const uint8_t *mins)
{
    __m256i m = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)mins));
    return vi_sum(_mm256_mullo_epi32(m, _mm256_loadu_si256((const __m256i *)bsum32)));
}

#else
typedef struct { int8_t v[32]; } VB;
typedef int32_t VI;

static inline float h2f(const uint8_t *p) { uint16_t h; memcpy(&h, p, 2); return sm_half_to_float(h); }
static inline VB vb_load(const void *p) { VB r; memcpy(r.v, p, 32); return r; }

static inline VB vb_nibbles(const uint8_t *qs)
{
    VB r;
    for (int j = 0; j < 16; j++) {
        r.v[j] = (int8_t)(qs[j] & 0x0F);
        r.v[j + 16] = (int8_t)(qs[j] >> 4);
    }
    return r;
}

static inline VB vb_high_bits(const uint8_t *qh4)
{
    uint32_t qh;
    memcpy(&qh, qh4, 4);
    VB r;
    for (int j = 0; j < 32; j++) r.v[j] = (int8_t)(((qh >> j) & 1u) << 4);
    return r;
}

static inline VB vb_or(VB a, VB b) { for (int j = 0; j < 32; j++) a.v[j] |= b.v[j]; return a; }
static inline VB vb_sub(VB a, int c) { for (int j = 0; j < 32; j++) a.v[j] = (int8_t)(a.v[j] - c); return a; }

static inline int dot_ss(VB w, VB y)
{
    int s = 0;
    for (int j = 0; j < 32; j++) s += w.v[j] * y.v[j];
    return s;
}
static inline int dot_us(VB w, VB y)
{
    int s = 0;
    for (int j = 0; j < 32; j++) s += (uint8_t)w.v[j] * y.v[j];
    return s;
}
static inline VI vi_zero(void) { return 0; }
static inline int vi_sum(VI v) { return v; }
static inline VI vi_add_us(VI acc, VB w, VB y, int scale) { return acc + scale * dot_us(w, y); }
static inline VI vi_add_ss2(VI acc, VB w, VB y, int sc0, int sc1)
{
    int s0 = 0, s1 = 0;
    for (int j = 0; j < 16; j++) {
        s0 += w.v[j] * y.v[j];
        s1 += w.v[j + 16] * y.v[j + 16];
    }
    return acc + sc0 * s0 + sc1 * s1;
}

static inline VB vb_q6(const uint8_t *ql32, int lshift, const uint8_t *qh32, int hshift)
{
    VB r;
    for (int j = 0; j < 32; j++)
        r.v[j] = (int8_t)((((ql32[j] >> lshift) & 0x0F) | (((qh32[j] >> hshift) & 0x03) << 4)) - 32);
    return r;
}

static inline void vb_q4_pair(const uint8_t *qs32, VB *lo, VB *hi)
{
    for (int j = 0; j < 32; j++) {
        lo->v[j] = (int8_t)(qs32[j] & 0x0F);
        hi->v[j] = (int8_t)(qs32[j] >> 4);
    }
}

static inline void vb_q5_high(const uint8_t *qh32, int c, VB *lo, VB *hi)
{
    for (int j = 0; j < 32; j++) {
        lo->v[j] = (int8_t)(((qh32[j] >> (2 * c)) & 1) << 4);
        hi->v[j] = (int8_t)(((qh32[j] >> (2 * c + 1)) & 1) << 4);
    }
}

static inline int mins_dot(const int32_t *bsum32, const uint8_t *mins)
{
    int s = 0;
    for (int j = 0; j < 8; j++) s += bsum32[j] * mins[j];
    return s;
}
#endif

/* ---------------------------------------------------------------- shared pieces */

/* the 6-bit scales and mins of a Q4_K / Q5_K super-block */
static inline void k_scales(const uint8_t *s, uint8_t *sc, uint8_t *mn)
{
    for (int j = 0; j < 4; j++) {
        sc[j] = s[j] & 0x3F;
        mn[j] = s[j + 4] & 0x3F;
        sc[j + 4] = (uint8_t)((s[j + 8] & 0x0F) | ((s[j] >> 2) & 0x30));
        mn[j + 4] = (uint8_t)((s[j + 8] >> 4) | ((s[j + 4] >> 2) & 0x30));
    }
}

/* out[t, n] = (out +) acc[t] + b[n] for the tile's rows */
static inline void store_tile(const QLinearArgs *a, long t0, long tn, long n, const float *acc)
{
    for (long t = 0; t < tn; t++) {
        float s = acc[t];
        if (a->b) s += a->b[n];
        float *o = a->out + (t0 + t) * a->os + n;
        *o = a->accumulate ? *o + s : s;
    }
}

#define ACT(type, t, ib) ((const type *)(a->xq + (t) * a->xrow) + (ib))

/* ---------------------------------------------------------------- 32-value blocks */

/* one weight row over one tile: unpack each block once, dot with every activation row */
#define ROWS_32(name, BYTES, UNPACK, DOT, ACTT, TERM)                                   \
    static void QFN(name)(const QLinearArgs *a, long n0, long n1)                      \
    {                                                                                \
        long nb = a->K / 32;                                                         \
        for (long n = n0; n < n1; n++) {                                             \
            const uint8_t *wr = a->w + n * a->wrow;                                  \
            for (long t0 = 0; t0 < a->T; t0 += SM_QTILE) {                           \
                long tn = a->T - t0 < SM_QTILE ? a->T - t0 : SM_QTILE;               \
                float acc[SM_QTILE] = {0};                                           \
                for (long ib = 0; ib < nb; ib++) {                                   \
                    const uint8_t *blk = wr + ib * (BYTES);                          \
                    VB w = UNPACK;                                                   \
                    for (long t = 0; t < tn; t++) {                                  \
                        const ACTT *y = ACT(ACTT, t0 + t, ib);                       \
                        int sumi = DOT(w, vb_load(y->qs));                           \
                        acc[t] += TERM;                                              \
                    }                                                                \
                }                                                                    \
                store_tile(a, t0, tn, n, acc);                                       \
            }                                                                        \
        }                                                                            \
    }

ROWS_32(rows_q4_0, 18, vb_sub(vb_nibbles(blk + 2), 8), dot_ss, sm_q8_0,
        (float)sumi * h2f(blk) * y->d)
ROWS_32(rows_q5_0, 22, vb_sub(vb_or(vb_nibbles(blk + 6), vb_high_bits(blk + 2)), 16), dot_ss, sm_q8_0,
        (h2f(blk) * y->d) * (float)sumi)
ROWS_32(rows_q8_0, 34, vb_load(blk + 2), dot_ss, sm_q8_0,
        (float)sumi * (h2f(blk) * y->d))
ROWS_32(rows_q4_1, 20, vb_nibbles(blk + 4), dot_us, sm_q8_1,
        (h2f(blk) * y->d) * (float)sumi + h2f(blk + 2) * y->s)
ROWS_32(rows_q5_1, 24, vb_or(vb_nibbles(blk + 8), vb_high_bits(blk + 4)), dot_us, sm_q8_1,
        (h2f(blk) * y->d) * (float)sumi + h2f(blk + 2) * y->s)

/* ---------------------------------------------------------------- K-quant super-blocks */

static void QFN(rows_q4_k)(const QLinearArgs *a, long n0, long n1)
{
    long nb = a->K / 256;
    for (long n = n0; n < n1; n++) {
        const uint8_t *wr = a->w + n * a->wrow;
        for (long t0 = 0; t0 < a->T; t0 += SM_QTILE) {
            long tn = a->T - t0 < SM_QTILE ? a->T - t0 : SM_QTILE;
            float acc[SM_QTILE] = {0};
            for (long ib = 0; ib < nb; ib++) {
                const uint8_t *blk = wr + ib * 144;
                uint8_t sc[8], mn[8];
                k_scales(blk + 4, sc, mn);
                VB w[8];
                for (int c = 0; c < 4; c++) vb_q4_pair(blk + 16 + 32 * c, &w[2 * c], &w[2 * c + 1]);
                float dx = h2f(blk), dmx = h2f(blk + 2);
                for (long t = 0; t < tn; t++) {
                    const sm_q8_k *y = ACT(sm_q8_k, t0 + t, ib);
                    VI s = vi_zero();
                    for (int j = 0; j < 8; j++) s = vi_add_us(s, w[j], vb_load(y->qs + 32 * j), sc[j]);
                    int isum = vi_sum(s), msum = mins_dot(y->bsum32, mn);
                    acc[t] += (dx * y->d) * (float)isum - (dmx * y->d) * (float)msum;
                }
            }
            store_tile(a, t0, tn, n, acc);
        }
    }
}

static void QFN(rows_q5_k)(const QLinearArgs *a, long n0, long n1)
{
    long nb = a->K / 256;
    for (long n = n0; n < n1; n++) {
        const uint8_t *wr = a->w + n * a->wrow;
        for (long t0 = 0; t0 < a->T; t0 += SM_QTILE) {
            long tn = a->T - t0 < SM_QTILE ? a->T - t0 : SM_QTILE;
            float acc[SM_QTILE] = {0};
            for (long ib = 0; ib < nb; ib++) {
                const uint8_t *blk = wr + ib * 176;
                uint8_t sc[8], mn[8];
                k_scales(blk + 4, sc, mn);
                VB w[8];
                for (int c = 0; c < 4; c++) {
                    VB lo, hi;
                    vb_q4_pair(blk + 48 + 32 * c, &w[2 * c], &w[2 * c + 1]);
                    vb_q5_high(blk + 16, c, &lo, &hi);
                    w[2 * c] = vb_or(w[2 * c], lo);
                    w[2 * c + 1] = vb_or(w[2 * c + 1], hi);
                }
                float dx = h2f(blk), dmx = h2f(blk + 2);
                for (long t = 0; t < tn; t++) {
                    const sm_q8_k *y = ACT(sm_q8_k, t0 + t, ib);
                    VI s = vi_zero();
                    for (int j = 0; j < 8; j++) s = vi_add_us(s, w[j], vb_load(y->qs + 32 * j), sc[j]);
                    int isum = vi_sum(s), msum = mins_dot(y->bsum32, mn);
                    acc[t] += (dx * y->d) * (float)isum - (dmx * y->d) * (float)msum;
                }
            }
            store_tile(a, t0, tn, n, acc);
        }
    }
}

static void QFN(rows_q6_k)(const QLinearArgs *a, long n0, long n1)
{
    long nb = a->K / 256;
    for (long n = n0; n < n1; n++) {
        const uint8_t *wr = a->w + n * a->wrow;
        for (long t0 = 0; t0 < a->T; t0 += SM_QTILE) {
            long tn = a->T - t0 < SM_QTILE ? a->T - t0 : SM_QTILE;
            float acc[SM_QTILE] = {0};
            for (long ib = 0; ib < nb; ib++) {
                const uint8_t *blk = wr + ib * 210;
                const int8_t *sc = (const int8_t *)(blk + 192);
                VB w[8];
                for (int g = 0; g < 8; g++) {
                    int h = g / 4, j = g % 4;
                    w[g] = vb_q6(blk + 64 * h + 32 * (j % 2), 4 * (j / 2), blk + 128 + 32 * h, 2 * j);
                }
                float dx = h2f(blk + 208);
                for (long t = 0; t < tn; t++) {
                    const sm_q8_k *y = ACT(sm_q8_k, t0 + t, ib);
                    VI s = vi_zero();
                    for (int g = 0; g < 8; g++) s = vi_add_ss2(s, w[g], vb_load(y->qs + 32 * g), sc[2 * g], sc[2 * g + 1]);
                    acc[t] += (dx * y->d) * (float)vi_sum(s);
                }
            }
            store_tile(a, t0, tn, n, acc);
        }
    }
}

/* ---------------------------------------------------------------- 16-bit float weights */

#define SM_FCHUNK 256

static inline void half_row(int qtype, const uint8_t *src, float *dst, long n)
{
    if (qtype == SM_F16) {
#ifdef SM_QUANT_AVX2
        long i = 0;
        for (; i + 8 <= n; i += 8)
            _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + 2 * i))));
        for (; i < n; i++) dst[i] = h2f(src + 2 * i);
#else
        for (long i = 0; i < n; i++) dst[i] = h2f(src + 2 * i);
#endif
    } else {
        for (long i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, src + 2 * i, 2);
            uint32_t u = (uint32_t)h << 16;
            memcpy(dst + i, &u, 4);
        }
    }
}

/* the activations are already rounded to the weight's format (quant.c); sums in float32 */
static void QFN(rows_f16)(const QLinearArgs *a, long n0, long n1)
{
    float wbuf[SM_FCHUNK];
    for (long n = n0; n < n1; n++) {
        const uint8_t *wr = a->w + n * a->wrow;
        for (long t0 = 0; t0 < a->T; t0 += SM_QTILE) {
            long tn = a->T - t0 < SM_QTILE ? a->T - t0 : SM_QTILE;
            float acc[SM_QTILE] = {0};
            for (long k0 = 0; k0 < a->K; k0 += SM_FCHUNK) {
                long kn = a->K - k0 < SM_FCHUNK ? a->K - k0 : SM_FCHUNK;
                half_row(a->qtype, wr + 2 * k0, wbuf, kn);
                for (long t = 0; t < tn; t++) {
                    const float *x = (const float *)(a->xq + (t0 + t) * a->xrow) + k0;
                    float s = 0.0f;
#pragma omp simd reduction(+ : s)
                    for (long i = 0; i < kn; i++) s += wbuf[i] * x[i];
                    acc[t] += s;
                }
            }
            store_tile(a, t0, tn, n, acc);
        }
    }
}

#ifdef SM_QUANT_AVX2
/* ---------------------------------------------------------------- AVX2: eight weight rows at once
 *
 * Eight rows' block sums are reduced together (one transposing reduction instead of eight
 * horizontal sums) and scaled and accumulated as one vector whose lane r is row r: each lane
 * sees exactly the scalar float operations of the single-row code, in the same order. */

/* v[r] (8 partial int32 sums each) -> lane r = total of v[r]; a transpose by unpacks and
 * adds (one micro-op each) rather than hadd (three each on Zen 3) */
static inline __m256i reduce8(const __m256i *v)
{
    __m256i p[4], q[2];
    for (int i = 0; i < 4; i++)   /* rows 2i, 2i+1: lanes (2i, 2i+1, 2i, 2i+1 | ...) */
        p[i] = _mm256_add_epi32(_mm256_unpacklo_epi32(v[2 * i], v[2 * i + 1]),
                                _mm256_unpackhi_epi32(v[2 * i], v[2 * i + 1]));
    for (int i = 0; i < 2; i++)   /* rows 4i..4i+3, once per 128-bit lane */
        q[i] = _mm256_add_epi32(_mm256_unpacklo_epi64(p[2 * i], p[2 * i + 1]),
                                _mm256_unpackhi_epi64(p[2 * i], p[2 * i + 1]));
    return _mm256_add_epi32(_mm256_permute2x128_si256(q[0], q[1], 0x20), _mm256_permute2x128_si256(q[0], q[1], 0x31));
}

/* the two halves at byte offset boff of rows n..n+7 (row r at wr + r * wrow; d and m, or
 * d and dmin), as floats: one 32-bit load a row, sorted by a byte shuffle */
static inline void halves8x2(const QLinearArgs *a, const uint8_t *wr, long boff, __m256 *first, __m256 *second)
{
    uint32_t v[8];
    for (int r = 0; r < 8; r++) memcpy(&v[r], wr + r * a->wrow + boff, 4);
    __m256i words = _mm256_set_m128i(_mm_setr_epi32((int)v[4], (int)v[5], (int)v[6], (int)v[7]),
                                     _mm_setr_epi32((int)v[0], (int)v[1], (int)v[2], (int)v[3]));
    const __m256i sort = _mm256_setr_epi8(0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15,
                                          0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15);
    __m256i halves = _mm256_permute4x64_epi64(_mm256_shuffle_epi8(words, sort), 0xD8);
    *first = _mm256_cvtph_ps(_mm256_castsi256_si128(halves));
    *second = _mm256_cvtph_ps(_mm256_extracti128_si256(halves, 1));
}

/* one half at byte offset boff of rows n..n+7, as floats; packed in general-purpose
 * registers (idle here), which also avoids a failed store forward */
static inline __m256 halves8(const QLinearArgs *a, const uint8_t *wr, long boff)
{
    uint64_t q[2] = {0, 0};
    for (int r = 0; r < 8; r++) {
        uint16_t h;
        memcpy(&h, wr + r * a->wrow + boff, 2);
        q[r / 4] |= (uint64_t)h << (16 * (r % 4));
    }
    return _mm256_cvtph_ps(_mm_set_epi64x((long long)q[1], (long long)q[0]));
}

/* out[t, n..n+7] = (out +) acc[t] + b[n..n+7] */
static inline void store8(const QLinearArgs *a, long t0, long tn, long n, const __m256 *acc)
{
    for (long t = 0; t < tn; t++) {
        __m256 s = acc[t];
        if (a->b) s = _mm256_add_ps(s, _mm256_loadu_ps(a->b + n));
        float *o = a->out + (t0 + t) * a->os + n;
        _mm256_storeu_ps(o, a->accumulate ? _mm256_add_ps(_mm256_loadu_ps(o), s) : s);
    }
}

/* Decode reads each weight once, from memory: the eight rows of a group are one span of
 * 8 * wrow bytes walked as eight interleaved short streams, which the hardware prefetcher
 * follows late; so each block of a group asks for its step of the span SM_QPREFETCH_GROUPS
 * groups ahead, a few lines at a time (a burst of a whole span's lines overflows the core's
 * miss buffers). */
#define SM_QPREFETCH_GROUPS 2
typedef struct { const uint8_t *next, *stop; long step; } Prefetch;

static inline Prefetch prefetch_plan(const QLinearArgs *a, const uint8_t *wr, long nb)
{
    long span = 8 * a->wrow;
    const uint8_t *next = wr + SM_QPREFETCH_GROUPS * span, *end = a->w + a->N * a->wrow;
    Prefetch f = {next, next + span < end ? next + span : end, ((span + nb - 1) / nb + 63) & ~63L};
    return f;
}

static inline void prefetch_step(Prefetch *f)
{
    const uint8_t *stop = f->next + f->step < f->stop ? f->next + f->step : f->stop;
    for (; f->next < stop; f->next += 64) _mm_prefetch((const char *)f->next, _MM_HINT_T0);
}

static inline __m256i madd1(__m256i p16) { return _mm256_madd_epi16(p16, _mm256_set1_epi16(1)); }

#ifdef SM_QUANT_VNNI
/* AVX-512 VNNI on 256-bit vectors: dpbusd adds four unsigned-by-signed byte products to each
 * int32 lane in one instruction (maddubs, madd and add before, and no int16 stage that could
 * saturate); dpwssd adds the int16 pair products (madd and add). Both wrap as the sequences
 * they replace do, so every integer sum is the same. The emulated build (the stand-ins below,
 * from AVX2 instructions) runs these kernels' exact integer steps on CPUs without VNNI, so
 * the tests check their logic on every machine. */
#ifdef SM_QUANT_VNNI_EMULATED
static inline __m256i vnni_dpbusd(__m256i acc, __m256i u, __m256i s)
{
    /* the even and the odd bytes widened to int16 (u zero-extended, s sign-extended): each
     * product fits int16 and madd sums two of them exactly into int32 */
    const __m256i low = _mm256_set1_epi16(0x00FF);
    __m256i ue = _mm256_and_si256(u, low), uo = _mm256_srli_epi16(u, 8);
    __m256i se = _mm256_srai_epi16(_mm256_slli_epi16(s, 8), 8), so = _mm256_srai_epi16(s, 8);
    return _mm256_add_epi32(acc, _mm256_add_epi32(_mm256_madd_epi16(ue, se), _mm256_madd_epi16(uo, so)));
}
static inline __m256i vnni_dpwssd(__m256i acc, __m256i a, __m256i b) { return _mm256_add_epi32(acc, _mm256_madd_epi16(a, b)); }
#else
static inline __m256i vnni_dpbusd(__m256i acc, __m256i u, __m256i s) { return _mm256_dpbusd_epi32(acc, u, s); }
static inline __m256i vnni_dpwssd(__m256i acc, __m256i a, __m256i b) { return _mm256_dpwssd_epi32(acc, a, b); }
#endif
/* acc + madd(p16, scale) */
#define ADD_MADD(acc, p16, sc) vnni_dpwssd(acc, p16, sc)
#else
#define ADD_MADD(acc, p16, sc) _mm256_add_epi32(acc, _mm256_madd_epi16(p16, sc))
#endif

/* The 32-value formats pair rows: rows i and i+4 of a group share a vector, row i in the
 * low 128-bit lane and row i+4 in the high one; `lo` holds each row's values 0..15 and
 * `hi` its values 16..31, dotted with the activation halves broadcast to both lanes. So a
 * maddubs works on two rows at once and the eight rows' sums reduce from four vectors
 * (reduce4x2: 6 operations) instead of eight (reduce8: 21). */

/* 16 bytes of row i (low lane) and row i+4 (high lane) */
static inline __m256i pair16(const uint8_t *p, const uint8_t *q)
{
    return _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)p)),
                                   _mm_loadu_si128((const __m128i *)q), 1);
}

/* 16 bytes of nibbles a row (low nibbles are values 0..15, high ones 16..31) */
static inline void pair_nibbles(const uint8_t *p, const uint8_t *q, VB *lo, VB *hi)
{
    const __m256i m = _mm256_set1_epi8(0x0F);
    __m256i v = pair16(p, q);
    *lo = _mm256_and_si256(v, m);
    *hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m);
}

/* the fifth bits (4 bytes a row, bit j for value j) or-ed in as 0x10 */
static inline void pair_high_bits(const uint8_t *p, const uint8_t *q, VB *lo, VB *hi)
{
    uint32_t qp, qq;
    memcpy(&qp, p, 4);
    memcpy(&qq, q, 4);
    __m256i v = _mm256_blend_epi32(_mm256_set1_epi32((int)qp), _mm256_set1_epi32((int)qq), 0xF0);
    const __m256i pick_lo = _mm256_set_epi64x(0x0101010101010101LL, 0, 0x0101010101010101LL, 0);
    const __m256i pick_hi = _mm256_set_epi64x(0x0303030303030303LL, 0x0202020202020202LL,
                                              0x0303030303030303LL, 0x0202020202020202LL);
    const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ULL), h = _mm256_set1_epi8(0x10);
    __m256i bl = _mm256_and_si256(_mm256_shuffle_epi8(v, pick_lo), bit);
    __m256i bh = _mm256_and_si256(_mm256_shuffle_epi8(v, pick_hi), bit);
    *lo = _mm256_or_si256(*lo, _mm256_and_si256(_mm256_cmpeq_epi8(bl, bit), h));
    *hi = _mm256_or_si256(*hi, _mm256_and_si256(_mm256_cmpeq_epi8(bh, bit), h));
}

/* v[i] = (4 partial sums of row i | 4 of row i+4) -> lane r = total of row r */
static inline __m256i reduce4x2(const __m256i *v)
{
    __m256i p0 = _mm256_add_epi32(_mm256_unpacklo_epi32(v[0], v[1]), _mm256_unpackhi_epi32(v[0], v[1]));
    __m256i p1 = _mm256_add_epi32(_mm256_unpacklo_epi32(v[2], v[3]), _mm256_unpackhi_epi32(v[2], v[3]));
    return _mm256_add_epi32(_mm256_unpacklo_epi64(p0, p1), _mm256_unpackhi_epi64(p0, p1));
}

/* UNPACK sets lo[i], hi[i] from the blocks p (row i) and q (row i+4). Signed quants (Q8_0)
 * dot as |w| times y with w's sign, |w| taken once per block; unsigned ones (nibbles, at
 * most 31 * 127 * 2 a pair) add their two halves' int16 pair sums before widening. With
 * VNNI both are one dpbusd a half: signed quants are made unsigned as w + 128 (w xor 0x80),
 * and 128 times the activations' block sum comes off the integer sum after. */
#ifdef SM_QUANT_VNNI
#define X8_UNSIGN(v) _mm256_xor_si256(v, _mm256_set1_epi8((char)0x80))
#define X8_DOT(SIGNED, i) vnni_dpbusd(vnni_dpbusd(_mm256_setzero_si256(), lu[i], yl), hu[i], yh)
#define X8_SIGNED_OFFSET 128
#else
#define X8_UNSIGN(v) _mm256_sign_epi8(v, v)
#define X8_DOT(SIGNED, i)                                                                    \
    (SIGNED ? _mm256_add_epi32(madd1(p16_us(lu[i], _mm256_sign_epi8(yl, lo[i]))),             \
                               madd1(p16_us(hu[i], _mm256_sign_epi8(yh, hi[i]))))             \
            : madd1(_mm256_add_epi16(p16_us(lu[i], yl), p16_us(hu[i], yh))))
#define X8_SIGNED_OFFSET 0
#endif
#define X8_32(name, BYTES, UNPACK, SIGNED, ACTT, HAS_M, OFFSET, TERM)                           \
    static inline __attribute__((always_inline)) void QFN(name##_body)(const QLinearArgs *a, long n, \
                                                                      long t0, long tn)      \
    {                                                                                      \
        long nb = a->K / 32;                                                               \
        const uint8_t *wr = a->w + n * a->wrow;                                            \
        __m256 acc[SM_QTILE];                                                              \
        for (long t = 0; t < tn; t++) acc[t] = _mm256_setzero_ps();                        \
        Prefetch pf = prefetch_plan(a, wr, nb);                                            \
        for (long ib = 0; ib < nb; ib++) {                                                 \
            if (t0 == 0) prefetch_step(&pf);                                               \
            VB lo[4], hi[4], lu[4], hu[4];                                                 \
            for (int i = 0; i < 4; i++) {                                                  \
                const uint8_t *p = wr + i * a->wrow + ib * (BYTES), *q = p + 4 * a->wrow;  \
                UNPACK;                                                                    \
                lu[i] = SIGNED ? X8_UNSIGN(lo[i]) : lo[i];                                 \
                hu[i] = SIGNED ? X8_UNSIGN(hi[i]) : hi[i];                                 \
            }                                                                              \
            __m256 dx, mx;                                                                 \
            if (HAS_M) halves8x2(a, wr, ib * (BYTES), &dx, &mx);                           \
            else dx = mx = halves8(a, wr, ib * (BYTES));                                   \
            (void)mx;                                                                      \
            for (long t = 0; t < tn; t++) {                                                \
                const ACTT *y = ACT(ACTT, t0 + t, ib);                                     \
                __m256i yl = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)y->qs)); \
                __m256i yh = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(y->qs + 16))); \
                __m256i s[4];                                                              \
                for (int i = 0; i < 4; i++) s[i] = X8_DOT(SIGNED, i);                      \
                __m256i is = reduce4x2(s);                                                 \
                int off = (OFFSET) + (SIGNED ? X8_SIGNED_OFFSET : 0);                      \
                if (off) is = _mm256_sub_epi32(is, _mm256_set1_epi32(off * SUM_OF(y)));    \
                __m256 isum = _mm256_cvtepi32_ps(is);                                      \
                __m256 dy = _mm256_set1_ps(y->d);                                          \
                acc[t] = _mm256_add_ps(acc[t], TERM);                                      \
            }                                                                              \
        }                                                                                  \
        store8(a, t0, tn, n, acc);                                                         \
    }                                                                                      \
    static void QFN(name)(const QLinearArgs *a, long n, long t0, long tn) { QFN(name##_body)(a, n, t0, tn); } \
    /* decode: one activation row, the accumulator in a register */                        \
    static void QFN(name##_one)(const QLinearArgs *a, long n) { QFN(name##_body)(a, n, 0, 1); }

#define NIB(off) pair_nibbles(p + (off), q + (off), &lo[i], &hi[i])
#define HIGH(off) pair_high_bits(p + (off), q + (off), &lo[i], &hi[i])
#define MUL _mm256_mul_ps
/* Q4_0 and Q5_0 take their quants unsigned (0..15, 0..31; no sign juggling in the dot) and
 * subtract the offset times the activations' block sum: the same integer as the signed dot */
#define SUM_OF(y) (y)->sum
X8_32(x8_q4_0, 18, NIB(2), 0, sm_q8_0, 0, 8, MUL(MUL(isum, dx), dy))
X8_32(x8_q5_0, 22, (NIB(6), HIGH(2)), 0, sm_q8_0, 0, 16, MUL(MUL(dx, dy), isum))
X8_32(x8_q8_0, 34, (lo[i] = pair16(p + 2, q + 2), hi[i] = pair16(p + 18, q + 18)), 1, sm_q8_0, 0, 0,
      MUL(isum, MUL(dx, dy)))
#undef SUM_OF
#define SUM_OF(y) 0
X8_32(x8_q4_1, 20, NIB(4), 0, sm_q8_1, 1, 0,
      _mm256_add_ps(MUL(MUL(dx, dy), isum), MUL(mx, _mm256_set1_ps(y->s))))
X8_32(x8_q5_1, 24, (NIB(8), HIGH(4)), 0, sm_q8_1, 1, 0,
      _mm256_add_ps(MUL(MUL(dx, dy), isum), MUL(mx, _mm256_set1_ps(y->s))))
#undef SUM_OF
#undef NIB
#undef HIGH

/* The K-quants take TW activation rows at a time (TW <= 4, a constant once inlined, so the
 * accumulators stay in registers): each weight row's super-block is unpacked straight from
 * its bytes once for the TW rows, whose activations are the only loads of the inner loop.
 * Eight weight rows' sums are then reduced together per activation row. */
#define SM_KTW 4

/* Q4_K / Q5_K: the 6-bit scales unpacked a 32-bit word at a time and broadcast by byte
 * shuffles; per row the 8 scaled sub-block sums and the mins term */
static inline __attribute__((always_inline)) void QFN(q45_k_rows)(const QLinearArgs *a, long n, long t0, int TW)
{
    int five = a->qtype == SM_Q5_K;
    long bytes = five ? 176 : 144, nb = a->K / 256;
    const uint8_t *wr = a->w + n * a->wrow;
    const __m256i nib = _mm256_set1_epi8(0x0F), one = _mm256_set1_epi8(0x01);
    __m256 acc[SM_KTW];
    for (int t = 0; t < TW; t++) acc[t] = _mm256_setzero_ps();
    Prefetch pf = prefetch_plan(a, wr, nb);
    for (long ib = 0; ib < nb; ib++) {
        if (t0 == 0) prefetch_step(&pf);
        const sm_q8_k *y[SM_KTW];
        __m256i bs[SM_KTW], s[SM_KTW][8], m[SM_KTW][8];
        for (int t = 0; t < TW; t++) {
            y[t] = ACT(sm_q8_k, t0 + t, ib);
            bs[t] = _mm256_loadu_si256((const __m256i *)y[t]->bsum32);
        }
        for (int r = 0; r < 8; r++) {
            const uint8_t *blk = wr + r * a->wrow + ib * bytes;
            uint32_t k[3], sm[4];
            memcpy(k, blk + 4, 12);
            sm[0] = k[0] & 0x3F3F3F3Fu;                                        /* scales 0..3 */
            sm[1] = (k[2] & 0x0F0F0F0Fu) | ((k[0] >> 2) & 0x30303030u);       /* scales 4..7 */
            sm[2] = k[1] & 0x3F3F3F3Fu;                                        /* mins 0..3 */
            sm[3] = ((k[2] >> 4) & 0x0F0F0F0Fu) | ((k[1] >> 2) & 0x30303030u); /* mins 4..7 */
            __m128i scm = _mm_loadu_si128((const __m128i *)sm);
            __m256i sc16 = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(scm));
            __m256i mn32 = _mm256_cvtepu8_epi32(_mm_srli_si128(scm, 8));
            for (int t = 0; t < TW; t++) m[t][r] = _mm256_mullo_epi32(mn32, bs[t]);
            const uint8_t *qs = blk + (five ? 48 : 16);
            __m256i hb = five ? vb_load(blk + 16) : _mm256_setzero_si256();
            __m256i v[SM_KTW];
            for (int t = 0; t < TW; t++) v[t] = _mm256_setzero_si256();
            for (int c = 0; c < 4; c++) {
                __m256i q = vb_load(qs + 32 * c);
                __m256i lo = _mm256_and_si256(q, nib), hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), nib);
                if (five) {
                    lo = _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 2 * c), one), 4));
                    hi = _mm256_or_si256(hi, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 2 * c + 1), one), 4));
                }
                __m256i s_lo = _mm256_shuffle_epi8(sc16, _mm256_set1_epi16((short)(4 * c | (4 * c + 1) << 8)));
                __m256i s_hi = _mm256_shuffle_epi8(sc16, _mm256_set1_epi16((short)((4 * c + 2) | (4 * c + 3) << 8)));
                for (int t = 0; t < TW; t++) {
                    v[t] = ADD_MADD(v[t], p16_us(lo, vb_load(y[t]->qs + 64 * c)), s_lo);
                    v[t] = ADD_MADD(v[t], p16_us(hi, vb_load(y[t]->qs + 64 * c + 32)), s_hi);
                }
            }
            for (int t = 0; t < TW; t++) s[t][r] = v[t];
        }
        __m256 dx, dmx;
        halves8x2(a, wr, ib * bytes, &dx, &dmx);
        for (int t = 0; t < TW; t++) {
            __m256 isum = _mm256_cvtepi32_ps(reduce8(s[t])), msum = _mm256_cvtepi32_ps(reduce8(m[t]));
            __m256 dy = _mm256_set1_ps(y[t]->d);
            acc[t] = _mm256_add_ps(acc[t], _mm256_sub_ps(MUL(MUL(dx, dy), isum), MUL(MUL(dmx, dy), msum)));
        }
    }
    store8(a, t0, TW, n, acc);
}

/* Q6_K: quants unsigned (0..63) against the activations, minus 32 times each group of 16's
 * scale times that group's activation sum: the same integer as the signed dot; the scales
 * of groups 2g (low 16 values) and 2g+1 (high 16) reach the two 128-bit lanes by a shuffle */
static inline __attribute__((always_inline)) void QFN(q6_k_rows)(const QLinearArgs *a, long n, long t0, int TW)
{
    long nb = a->K / 256;
    const uint8_t *wr = a->w + n * a->wrow;
    __m256 acc[SM_KTW];
    for (int t = 0; t < TW; t++) acc[t] = _mm256_setzero_ps();
    Prefetch pf = prefetch_plan(a, wr, nb);
    for (long ib = 0; ib < nb; ib++) {
        if (t0 == 0) prefetch_step(&pf);
        const sm_q8_k *y[SM_KTW];
        __m256i ys[SM_KTW], s[SM_KTW][8];
        for (int t = 0; t < TW; t++) {
            y[t] = ACT(sm_q8_k, t0 + t, ib);
            ys[t] = _mm256_loadu_si256((const __m256i *)y[t]->bsum16);
        }
        for (int r = 0; r < 8; r++) {
            const uint8_t *blk = wr + r * a->wrow + ib * 210;
            __m128i sc8 = _mm_loadu_si128((const __m128i *)(blk + 192));
            __m256i sc16 = _mm256_cvtepi8_epi16(sc8);
            __m256i sca = _mm256_broadcastsi128_si256(_mm256_castsi256_si128(sc16));      /* scales 0..7 */
            __m256i scb = _mm256_broadcastsi128_si256(_mm256_extracti128_si256(sc16, 1)); /* scales 8..15 */
            __m256i v[SM_KTW];
            for (int t = 0; t < TW; t++)
                v[t] = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(_mm256_madd_epi16(sc16, ys[t]), 5));
#pragma GCC unroll 8
            for (int g = 0; g < 8; g++) {
                int h = g / 4, j = g % 4, k = 2 * (g % 4);
                __m256i q = vb_q6u(blk + 64 * h + 32 * (j % 2), 4 * (j / 2), blk + 128 + 32 * h, 2 * j);
                __m256i ctrl = _mm256_set_m128i(_mm_set1_epi16((short)((2 * k + 2) | (2 * k + 3) << 8)),
                                                _mm_set1_epi16((short)((2 * k) | (2 * k + 1) << 8)));
                __m256i scv = _mm256_shuffle_epi8(g < 4 ? sca : scb, ctrl);
#pragma GCC unroll 4
                for (int t = 0; t < TW; t++)
                    v[t] = ADD_MADD(v[t], p16_us(q, vb_load(y[t]->qs + 32 * g)), scv);
            }
            for (int t = 0; t < TW; t++) s[t][r] = v[t];
        }
        __m256 dx = halves8(a, wr, ib * 210 + 208);
        for (int t = 0; t < TW; t++) {
            __m256 isum = _mm256_cvtepi32_ps(reduce8(s[t]));
            acc[t] = _mm256_add_ps(acc[t], MUL(MUL(dx, _mm256_set1_ps(y[t]->d)), isum));
        }
    }
    store8(a, t0, TW, n, acc);
}

/* a tile of tn activation rows in steps of SM_KTW, each step a specialised body */
#define K_TILE(name, rows, W)                                                              \
    static void QFN(name)(const QLinearArgs *a, long n, long t0, long tn)                  \
    {                                                                                      \
        long t = 0;                                                                        \
        for (; t + (W) <= tn; t += (W)) QFN(rows)(a, n, t0 + t, (W));                      \
        switch (tn - t) {                                                                  \
        case 3: QFN(rows)(a, n, t0 + t, 3); break;                                         \
        case 2: QFN(rows)(a, n, t0 + t, 2); break;                                         \
        case 1: QFN(rows)(a, n, t0 + t, 1); break;                                         \
        default: break;                                                                    \
        }                                                                                  \
    }                                                                                      \
    /* decode: one activation row */                                                       \
    static void QFN(name##_one)(const QLinearArgs *a, long n) { QFN(rows)(a, n, 0, 1); }

K_TILE(x8_q45_k, q45_k_rows, SM_KTW)
K_TILE(x8_q6_k, q6_k_rows, SM_KTW)
#undef K_TILE

#undef MUL

typedef void (*x8_fn)(const QLinearArgs *, long, long, long);
typedef void (*one_fn)(const QLinearArgs *, long);

/* groups of eight rows here, the remaining rows (and F16/BF16) by the one-row code */
static long QFN(linear_rows_x8)(const QLinearArgs *a, long n0, long n1)
{
    x8_fn f = NULL;
    switch (a->qtype) {
    case SM_Q4_0: f = QFN(x8_q4_0); break;
    case SM_Q4_1: f = QFN(x8_q4_1); break;
    case SM_Q5_0: f = QFN(x8_q5_0); break;
    case SM_Q5_1: f = QFN(x8_q5_1); break;
    case SM_Q8_0: f = QFN(x8_q8_0); break;
    case SM_Q4_K: case SM_Q5_K: f = QFN(x8_q45_k); break;
    case SM_Q6_K: f = QFN(x8_q6_k); break;
    default: return n0;
    }
    long n = n0;
    if (a->T == 1) {
        one_fn g = NULL;
        switch (a->qtype) {
        case SM_Q4_0: g = QFN(x8_q4_0_one); break;
        case SM_Q4_1: g = QFN(x8_q4_1_one); break;
        case SM_Q5_0: g = QFN(x8_q5_0_one); break;
        case SM_Q5_1: g = QFN(x8_q5_1_one); break;
        case SM_Q8_0: g = QFN(x8_q8_0_one); break;
        case SM_Q4_K: case SM_Q5_K: g = QFN(x8_q45_k_one); break;
        default: g = QFN(x8_q6_k_one); break;
        }
        for (; n + 8 <= n1; n += 8) g(a, n);
        return n;
    }
    /* activation rows in blocks that stay in the core's L2 while every weight row of the
     * range passes over them (a long prompt's activations would stream from L3 once per
     * group of eight weight rows otherwise) */
    long n_end = n0 + (n1 - n0) / 8 * 8;
    for (long tb = 0; tb < a->T; tb += SM_QTBLOCK) {
        long te = a->T - tb < SM_QTBLOCK ? a->T : tb + SM_QTBLOCK;
        for (n = n0; n < n_end; n += 8)
            for (long t0 = tb; t0 < te; t0 += SM_QTILE) f(a, n, t0, te - t0 < SM_QTILE ? te - t0 : SM_QTILE);
    }
    return n_end;
}
#endif

#ifdef SM_QUANT_AMX
#include "quant_amx_impl.h"
#endif

static void QFN(linear_rows)(const QLinearArgs *a, long n0, long n1)
{
#ifdef SM_QUANT_AMX
    n0 = QFN(linear_rows_amx)(a, n0, n1);
#endif
#ifdef SM_QUANT_AVX2
    n0 = QFN(linear_rows_x8)(a, n0, n1);
#endif
    switch (a->qtype) {
    case SM_Q4_0: QFN(rows_q4_0)(a, n0, n1); break;
    case SM_Q4_1: QFN(rows_q4_1)(a, n0, n1); break;
    case SM_Q5_0: QFN(rows_q5_0)(a, n0, n1); break;
    case SM_Q5_1: QFN(rows_q5_1)(a, n0, n1); break;
    case SM_Q8_0: QFN(rows_q8_0)(a, n0, n1); break;
    case SM_Q4_K: QFN(rows_q4_k)(a, n0, n1); break;
    case SM_Q5_K: QFN(rows_q5_k)(a, n0, n1); break;
    case SM_Q6_K: QFN(rows_q6_k)(a, n0, n1); break;
    default: QFN(rows_f16)(a, n0, n1); break;
    }
}

#ifdef SM_QUANT_AVX2
/* ---------------------------------------------------------------- AVX2: activations
 *
 * quant.c's formulas eight values at a time, with the same float32 operations (max, one
 * multiply, rounding to nearest even) so the bytes are identical, down to non-finite
 * products (see q_lanes) and NaNs skipped by the maximum as fmaxf and `a > amax` skip them. */

static inline __m256 abs8(__m256 x) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), x); }

/* the largest lane (no NaN lanes) */
static inline float hmax8(__m256 v)
{
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

/* v * s rounded to the nearest integer, ties to even, at most `top`; then NaN and +-inf
 * become 0, as the scalar conversion to int8 gives (its int32 0x80000000 ends in 0) */
static inline __m256i q_lanes(__m256 v, __m256 s, __m256 top)
{
    __m256 r = _mm256_min_ps(top, _mm256_round_ps(_mm256_mul_ps(v, s), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    r = _mm256_and_ps(r, _mm256_cmp_ps(abs8(r), _mm256_set1_ps(__builtin_inff()), _CMP_LT_OQ));
    return _mm256_cvtps_epi32(r);
}

/* four vectors of 8 int32 in -128..127 -> 32 int8 in order */
static inline __m256i pack32(const __m256i *r)
{
    __m256i v = _mm256_packs_epi16(_mm256_packs_epi32(r[0], r[1]), _mm256_packs_epi32(r[2], r[3]));
    return _mm256_permutevar8x32_epi32(v, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

/* x (32,) -> q and the sum of q; returns d = amax / 127 (unrounded) */
static inline float q8_block8(const float *x, int8_t *q, int32_t *sum)
{
    __m256 v[4], m = _mm256_setzero_ps();
    for (int i = 0; i < 4; i++) {
        v[i] = _mm256_loadu_ps(x + 8 * i);
        m = _mm256_max_ps(abs8(v[i]), m);
    }
    float amax = hmax8(m);
    /* no clamp: quant.c's Q8_0 has none */
    __m256 id = _mm256_set1_ps(amax != 0.0f ? 127.0f / amax : 0.0f), top = _mm256_set1_ps(__builtin_inff());
    __m256i r[4];
    for (int i = 0; i < 4; i++) r[i] = q_lanes(v[i], id, top);
    _mm256_storeu_si256((__m256i *)q, pack32(r));
    *sum = vi_sum(_mm256_add_epi32(_mm256_add_epi32(r[0], r[1]), _mm256_add_epi32(r[2], r[3])));
    return amax / 127.0f;
}

/* x (256,) -> one Q8_K block: the first value of largest magnitude maps to -127 */
static inline void q8_k_block8(const float *x, sm_q8_k *y)
{
    __m256 m = _mm256_setzero_ps();
    for (int i = 0; i < 32; i++) m = _mm256_max_ps(abs8(_mm256_loadu_ps(x + 8 * i)), m);
    float amax = hmax8(m), peak = 0.0f;
    if (amax == 0.0f) {
        memset(y, 0, sizeof *y);
        return;
    }
    for (int i = 0; i < 32; i++) {
        int hit = _mm256_movemask_ps(_mm256_cmp_ps(abs8(_mm256_loadu_ps(x + 8 * i)), _mm256_set1_ps(amax), _CMP_EQ_OQ));
        if (hit) {
            peak = x[8 * i + __builtin_ctz((unsigned)hit)];
            break;
        }
    }
    float iscale = -127.0f / peak;
    __m256 s = _mm256_set1_ps(iscale), top = _mm256_set1_ps(127.0f);
    for (int c = 0; c < 8; c++) {
        __m256i r[4];
        for (int i = 0; i < 4; i++) r[i] = q_lanes(_mm256_loadu_ps(x + 32 * c + 8 * i), s, top);
        _mm256_storeu_si256((__m256i *)(y->qs + 32 * c), pack32(r));
        int s0 = vi_sum(_mm256_add_epi32(r[0], r[1])), s1 = vi_sum(_mm256_add_epi32(r[2], r[3]));
        y->bsum16[2 * c] = (int16_t)s0;
        y->bsum16[2 * c + 1] = (int16_t)s1;
        y->bsum32[c] = s0 + s1;
    }
    y->d = 1.0f / iscale;
}

static void QFN(quantize_row)(int qtype, const float *x, uint8_t *dst, long K)
{
    switch (qtype) {
    case SM_Q4_1: case SM_Q5_1: {
        sm_q8_1 *y = (sm_q8_1 *)dst;
        for (long b = 0; b < K / 32; b++) {
            int32_t sum;
            float d = q8_block8(x + 32 * b, y[b].qs, &sum);
            y[b].d = sm_round_half(d);
            y[b].s = sm_round_half(d * (float)sum);
        }
        return;
    }
    case SM_Q4_0: case SM_Q5_0: case SM_Q8_0: {
        sm_q8_0 *y = (sm_q8_0 *)dst;
        for (long b = 0; b < K / 32; b++) y[b].d = sm_round_half(q8_block8(x + 32 * b, y[b].qs, &y[b].sum));
        return;
    }
    case SM_Q4_K: case SM_Q5_K: case SM_Q6_K: {
        sm_q8_k *y = (sm_q8_k *)dst;
        for (long b = 0; b < K / 256; b++) q8_k_block8(x + 256 * b, &y[b]);
        return;
    }
    default:
        sm_quantize_row(qtype, x, dst, K);
        return;
    }
}
#define SM_QUANTIZE_ROW QFN(quantize_row)
#else
#define SM_QUANTIZE_ROW sm_quantize_row
#endif

/* ---------------------------------------------------------------- dequantize */

/* one row of K values, with the float operations of the reference decoder (gguf) */
static void QFN(dequant_row)(int qtype, const uint8_t *src, float *dst, long K)
{
    switch (qtype) {
    case SM_F16: case SM_BF16: half_row(qtype, src, dst, K); return;
    case SM_Q4_K: case SM_Q5_K:
        for (long ib = 0; ib < K / 256; ib++) {
            const uint8_t *blk = src + ib * (qtype == SM_Q4_K ? 144 : 176);
            const uint8_t *qs = blk + (qtype == SM_Q4_K ? 16 : 48), *qh = blk + 16;
            uint8_t sc[8], mn[8];
            k_scales(blk + 4, sc, mn);
            float d = h2f(blk), dmin = h2f(blk + 2);
            float *o = dst + 256 * ib;
            for (int s = 0; s < 8; s++) {
                float ds = d * (float)sc[s], dm = dmin * (float)mn[s];
                int shift = 4 * (s % 2);
                for (int j = 0; j < 32; j++) {
                    int q = (qs[32 * (s / 2) + j] >> shift) & 0x0F;
                    if (qtype == SM_Q5_K) q |= ((qh[j] >> s) & 1) << 4;
                    o[32 * s + j] = ds * (float)q - dm;
                }
            }
        }
        return;
    case SM_Q6_K:
        for (long ib = 0; ib < K / 256; ib++) {
            const uint8_t *blk = src + ib * 210;
            const int8_t *sc = (const int8_t *)(blk + 192);
            float d = h2f(blk + 208);
            float *o = dst + 256 * ib;
            for (int g = 0; g < 8; g++) {
                int h = g / 4, j = g % 4;
                const uint8_t *ql = blk + 64 * h + 32 * (j % 2), *qh = blk + 128 + 32 * h;
                for (int i = 0; i < 32; i++) {
                    int q = (((ql[i] >> (4 * (j / 2))) & 0x0F) | (((qh[i] >> (2 * j)) & 0x03) << 4)) - 32;
                    o[32 * g + i] = (d * (float)sc[2 * g + i / 16]) * (float)q;
                }
            }
        }
        return;
    default:
        break;
    }
    static const int bytes[SM_NQTYPES] = {[SM_Q4_0] = 18, [SM_Q4_1] = 20, [SM_Q5_0] = 22, [SM_Q5_1] = 24, [SM_Q8_0] = 34};
    for (long ib = 0; ib < K / 32; ib++) {
        const uint8_t *blk = src + ib * bytes[qtype];
        float *o = dst + 32 * ib;
        float d = h2f(blk);
        switch (qtype) {
        case SM_Q8_0:
            for (int j = 0; j < 32; j++) o[j] = (float)(int8_t)blk[2 + j] * d;
            break;
        case SM_Q4_0:
            for (int j = 0; j < 16; j++) {
                o[j] = d * (float)((blk[2 + j] & 0x0F) - 8);
                o[j + 16] = d * (float)((blk[2 + j] >> 4) - 8);
            }
            break;
        case SM_Q4_1: {
            float m = h2f(blk + 2);
            for (int j = 0; j < 16; j++) {
                o[j] = d * (float)(blk[4 + j] & 0x0F) + m;
                o[j + 16] = d * (float)(blk[4 + j] >> 4) + m;
            }
            break;
        }
        case SM_Q5_0: case SM_Q5_1: {
            int one = qtype == SM_Q5_1;
            uint32_t qh;
            memcpy(&qh, blk + 2 + 2 * one, 4);
            const uint8_t *qs = blk + 6 + 2 * one;
            float m = one ? h2f(blk + 2) : 0.0f;
            for (int j = 0; j < 32; j++) {
                int q = ((j < 16 ? qs[j] & 0x0F : qs[j - 16] >> 4) | (int)(((qh >> j) & 1u) << 4));
                o[j] = one ? d * (float)q + m : d * (float)(q - 16);
            }
            break;
        }
        }
    }
}

#ifdef SM_QUANT_AMX
#define SM_QROW_GRAIN 16
#else
#define SM_QROW_GRAIN 8
#endif
const QuantTable SM_QCAT(sm_qtable, SM_QSUFFIX) = {SM_QISA_NAME, QFN(linear_rows), QFN(dequant_row), SM_QUANTIZE_ROW,
                                                   SM_QROW_GRAIN};
