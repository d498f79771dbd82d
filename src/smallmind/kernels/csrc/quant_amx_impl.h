/* AMX-INT8 many-row products for the block formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, and the
 * K-quants further down), included by quant_impl.h in the builds that set SM_QUANT_AMX (after
 * its AVX2 helpers).
 *
 * Sixteen weight rows at a time are unpacked once into a panel of AMX B tiles: a block of 32
 * values a row makes one 8 x 64-byte tile in which tile row k holds values 4k..4k+3 of each of
 * the 16 weight rows (their dword-transpose), with the rows' block scales beside it. Then for
 * each tile of up to 16 activation rows, block by block: the activation tile A (its rows the
 * 32 int8 quants of that block, loaded with the activations' row stride) times the weight tile
 * B gives C, the 16 x 16 exact block sums (TDPBSSD for Q8_0's signed quants, TDPBSUD for the
 * unsigned nibble formats); C goes through memory to 16-lane float code that applies the
 * offset and the scales with the twin's expressions in block order, one lane a weight row, so
 * the results are the twins' bits as on every other path.
 *
 * Tiles (amx.h): 0 = C (rows x 64 bytes: 16 int32), 1 = A (rows x 32 bytes), 2 = B (8 x 64
 * bytes); the emulated build (SM_AMX_EMULATED) runs their exact integer semantics in C. */

#define SM_AMX_MIN_T 16 /* activation rows from which a product runs on the tiles */

/* the 64-byte vectors below are passed only between static inline functions; without
 * AVX-512 (the emulated build) GCC warns of an ABI that never applies to them */
#pragma GCC diagnostic ignored "-Wpsabi"

#include "amx.h"

/* sixteen float or int32 lanes, one a weight row (GCC vector extensions: zmm code in the AMX
 * build, two ymm halves in the emulated one; each operation rounds as the scalar one does) */
typedef float v16sf __attribute__((vector_size(64)));
typedef int32_t v16si __attribute__((vector_size(64)));

static inline v16sf v16_load(const float *p) { v16sf v; memcpy(&v, p, 64); return v; }
static inline v16si v16i_load(const void *p) { v16si v; memcpy(&v, p, 64); return v; }

/* a thread's panel: grown, never shrunk (the pool's threads live as long as the process) */
static __thread uint8_t *amx_panel;
static __thread size_t amx_panel_size;

static uint8_t *amx_panel_for(size_t n)
{
    if (n > amx_panel_size) {
        uint8_t *p = realloc(amx_panel, n);
        if (!p) return NULL;
        amx_panel = p;
        amx_panel_size = n;
    }
    return amx_panel;
}

/* values k0 .. k0 + kb - 1 of 16 rows (row r's 32 at rows[r]) -> one B tile (kb / 4 x 64
 * bytes): tile row k holds values k0 + 4k .. k0 + 4k + 3 of every row */
static inline void amx_transpose(const uint32_t rows[16][8], int k0, int kb, uint8_t *tile)
{
    uint32_t *b = (uint32_t *)tile;
    for (int k = 0; k < kb / 4; k++)
        for (int r = 0; r < 16; r++) b[16 * k + r] = rows[r][k0 / 4 + k];
}

/* out[t, n..n+15] = (out +) acc[t] + b[n..n+15], as store_tile does lane by lane */
static inline void amx_store_out(const QLinearArgs *a, long t0, long tn, long n, const v16sf *acc)
{
    for (long t = 0; t < tn; t++) {
        v16sf s = acc[t];
        if (a->b) s = s + v16_load(a->b + n);
        float *o = a->out + (t0 + t) * a->os + n;
        if (a->accumulate) s = v16_load(o) + s;
        memcpy(o, &s, 64);
    }
}

/* UNPACK(blk) -> the block's 32 values in order as a VB; TERM uses isum, dx, dy (and mx,
 * ys for the formats with a min), with the X8 kernels' (and the twin's) expressions */
#define AMX_32(name, BYTES, UNPACK, SIGNED, ACTT, HAS_M, OFFSET, SUM, TERM)                       \
    static long QFN(name)(const QLinearArgs *a, long n0, long n1)                                  \
    {                                                                                          \
        long nb = a->K / 32, n_end = n0 + (n1 - n0) / 16 * 16;                                 \
        size_t tiles = (size_t)nb * 512, scales = (size_t)nb * 16 * sizeof(float);             \
        uint8_t *panel = n_end > n0 ? amx_panel_for(tiles + 2 * scales) : NULL;               \
        if (!panel) return n0;                                                                 \
        float *dws = (float *)(panel + tiles), *mws = (float *)(panel + tiles + scales);      \
        AmxConfig cfg;                                                                         \
        int rows_set = 16;                                                                     \
        amx_setup(&cfg, 16, 32);                                                               \
        for (long n = n0; n < n_end; n += 16) {                                                \
            for (long ib = 0; ib < nb; ib++) {                                                 \
                uint32_t vals[16][8];                                                          \
                for (int r = 0; r < 16; r++) {                                                 \
                    const uint8_t *blk = a->w + (n + r) * a->wrow + ib * (BYTES);              \
                    _mm256_storeu_si256((__m256i *)vals[r], UNPACK);                           \
                    dws[16 * ib + r] = h2f(blk);                                               \
                    if (HAS_M) mws[16 * ib + r] = h2f(blk + 2);                                \
                }                                                                              \
                amx_transpose((const uint32_t(*)[8])vals, 0, 32, panel + 512 * ib);            \
            }                                                                                  \
            for (long t0 = 0; t0 < a->T; t0 += 16) {                                           \
                int tn = a->T - t0 < 16 ? (int)(a->T - t0) : 16;                               \
                if (tn != rows_set) {                                                          \
                    amx_setup(&cfg, tn, 32);                                                   \
                    rows_set = tn;                                                             \
                }                                                                              \
                v16sf acc[16];                                                                 \
                for (int t = 0; t < tn; t++) acc[t] = (v16sf){0};                              \
                for (long ib = 0; ib < nb; ib++) {                                             \
                    int32_t c[16][16];                                                         \
                    amx_zero_c();                                                              \
                    amx_load(1, ACT(ACTT, t0, ib)->qs, a->xrow);                               \
                    amx_load(2, panel + 512 * ib, 64);                                         \
                    amx_dot(SIGNED);                                                           \
                    amx_store_c(c, 64);                                                        \
                    v16sf dx = v16_load(dws + 16 * ib);                                        \
                    v16sf mx = HAS_M ? v16_load(mws + 16 * ib) : dx;                           \
                    (void)mx;                                                                  \
                    for (int t = 0; t < tn; t++) {                                             \
                        const ACTT *y = ACT(ACTT, t0 + t, ib);                                 \
                        v16si is = v16i_load(c[t]);                                            \
                        if (OFFSET) is = is - (OFFSET) * (SUM);                                \
                        v16sf isum = __builtin_convertvector(is, v16sf);                       \
                        float dy = y->d;                                                       \
                        acc[t] = acc[t] + (TERM);                                              \
                    }                                                                          \
                }                                                                              \
                amx_store_out(a, t0, tn, n, acc);                                              \
            }                                                                                  \
        }                                                                                      \
        amx_release();                                                                         \
        return n_end;                                                                          \
    }

AMX_32(amx_q4_0, 18, vb_nibbles(blk + 2), 0, sm_q8_0, 0, 8, y->sum, (isum * dx) * dy)
AMX_32(amx_q5_0, 22, vb_or(vb_nibbles(blk + 6), vb_high_bits(blk + 2)), 0, sm_q8_0, 0, 16, y->sum, (dx * dy) * isum)
AMX_32(amx_q8_0, 34, vb_load(blk + 2), 1, sm_q8_0, 0, 0, 0, isum * (dx * dy))
AMX_32(amx_q4_1, 20, vb_nibbles(blk + 4), 0, sm_q8_1, 1, 0, 0, (dx * dy) * isum + mx * y->s)
AMX_32(amx_q5_1, 24, vb_or(vb_nibbles(blk + 8), vb_high_bits(blk + 4)), 0, sm_q8_1, 1, 0, 0,
       (dx * dy) * isum + mx * y->s)
#undef AMX_32

/* The K-quants: each sub-block (32 values of Q4_K / Q5_K, 16 of Q6_K) has its own 6- or 8-bit
 * scale a row, so each is one tile product, and its 16 x 16 block sums are multiplied by the
 * rows' scales and added up in int32 (exact, as the twin's integer sum) before the super-block's
 * float expression. The quants go in signed (Q4_K 0..15, Q5_K 0..31, Q6_K's less 32), so no
 * offset is left; Q4_K / Q5_K's mins term is the activations' 32-value sums times the rows'
 * mins, also in int32. Per super-block a panel holds the sub-blocks' tiles (4 kB), the scales
 * and mins as int32 lanes, and d, dmin as floats. */
#define AMX_KPANEL (4096 + 16 * 16 * 4 + 8 * 16 * 4 + 2 * 16 * 4)

static void QFN(amx_k_pack)(const QLinearArgs *a, long n, long ib, uint8_t *p)
{
    int q6 = a->qtype == SM_Q6_K, five = a->qtype == SM_Q5_K;
    long bytes = q6 ? 210 : five ? 176 : 144;
    int32_t *sc = (int32_t *)(p + 4096), *mn = sc + 16 * 16;
    float *d = (float *)(mn + 8 * 16), *dm = d + 16;
    uint32_t vals[8][16][8]; /* [32-value group][row][dword] */
    for (int r = 0; r < 16; r++) {
        const uint8_t *blk = a->w + (n + r) * a->wrow + ib * bytes;
        if (q6) {
            for (int g = 0; g < 8; g++) {
                int h = g / 4, j = g % 4;
                _mm256_storeu_si256((__m256i *)vals[g][r], vb_q6(blk + 64 * h + 32 * (j % 2), 4 * (j / 2), blk + 128 + 32 * h, 2 * j));
            }
            for (int g = 0; g < 16; g++) sc[16 * g + r] = ((const int8_t *)(blk + 192))[g];
            d[r] = h2f(blk + 208);
            continue;
        }
        uint8_t s[8], m[8];
        k_scales(blk + 4, s, m);
        for (int c = 0; c < 4; c++) {
            VB lo, hi;
            vb_q4_pair(blk + (five ? 48 : 16) + 32 * c, &lo, &hi);
            if (five) {
                VB l5, h5;
                vb_q5_high(blk + 16, c, &l5, &h5);
                lo = vb_or(lo, l5);
                hi = vb_or(hi, h5);
            }
            _mm256_storeu_si256((__m256i *)vals[2 * c][r], lo);
            _mm256_storeu_si256((__m256i *)vals[2 * c + 1][r], hi);
        }
        for (int j = 0; j < 8; j++) {
            sc[16 * j + r] = s[j];
            mn[16 * j + r] = m[j];
        }
        d[r] = h2f(blk);
        dm[r] = h2f(blk + 2);
    }
    for (int g = 0; g < 8; g++) {
        if (q6) {
            amx_transpose((const uint32_t(*)[8])vals[g], 0, 16, p + 512 * g);
            amx_transpose((const uint32_t(*)[8])vals[g], 16, 16, p + 512 * g + 256);
        } else {
            amx_transpose((const uint32_t(*)[8])vals[g], 0, 32, p + 512 * g);
        }
    }
}

static long QFN(amx_k)(const QLinearArgs *a, long n0, long n1)
{
    int q6 = a->qtype == SM_Q6_K;
    int subs = q6 ? 16 : 8, kb = q6 ? 16 : 32;
    long nb = a->K / 256, n_end = n0 + (n1 - n0) / 16 * 16;
    uint8_t *panel = n_end > n0 ? amx_panel_for((size_t)nb * AMX_KPANEL) : NULL;
    if (!panel) return n0;
    AmxConfig cfg;
    int rows_set = 16;
    amx_setup(&cfg, 16, kb);
    for (long n = n0; n < n_end; n += 16) {
        for (long ib = 0; ib < nb; ib++) QFN(amx_k_pack)(a, n, ib, panel + ib * AMX_KPANEL);
        for (long t0 = 0; t0 < a->T; t0 += 16) {
            int tn = a->T - t0 < 16 ? (int)(a->T - t0) : 16;
            if (tn != rows_set) {
                amx_setup(&cfg, tn, kb);
                rows_set = tn;
            }
            v16sf acc[16];
            for (int t = 0; t < tn; t++) acc[t] = (v16sf){0};
            for (long ib = 0; ib < nb; ib++) {
                const uint8_t *p = panel + ib * AMX_KPANEL;
                const int32_t *sc = (const int32_t *)(p + 4096), *mn = sc + 16 * 16;
                const float *d = (const float *)(mn + 8 * 16), *dm = d + 16;
                v16si is[16];
                for (int t = 0; t < tn; t++) is[t] = (v16si){0};
                for (int j = 0; j < subs; j++) {
                    int32_t c[16][16];
                    amx_zero_c();
                    amx_load(1, ACT(sm_q8_k, t0, ib)->qs + kb * j, a->xrow);
                    amx_load(2, p + (size_t)(kb * 16) * j, 64);
                    amx_dot(1);
                    amx_store_c(c, 64);
                    v16si s = v16i_load(sc + 16 * j);
                    for (int t = 0; t < tn; t++) is[t] = is[t] + s * v16i_load(c[t]);
                }
                v16sf dx = v16_load(d);
                for (int t = 0; t < tn; t++) {
                    const sm_q8_k *y = ACT(sm_q8_k, t0 + t, ib);
                    float dy = y->d;
                    v16sf isum = __builtin_convertvector(is[t], v16sf);
                    if (q6) {
                        acc[t] = acc[t] + (dx * dy) * isum;
                        continue;
                    }
                    v16si ms = (v16si){0};
                    for (int j = 0; j < 8; j++) ms = ms + y->bsum32[j] * v16i_load(mn + 16 * j);
                    v16sf msum = __builtin_convertvector(ms, v16sf);
                    acc[t] = acc[t] + ((dx * dy) * isum - (v16_load(dm) * dy) * msum);
                }
            }
            amx_store_out(a, t0, tn, n, acc);
        }
    }
    amx_release();
    return n_end;
}

/* rows n0.. in groups of 16 on the tiles where the product has SM_AMX_MIN_T activation rows
 * and a block format; returns the first row left to the other kernels */
static long QFN(linear_rows_amx)(const QLinearArgs *a, long n0, long n1)
{
    if (a->T < SM_AMX_MIN_T) return n0;
    switch (a->qtype) {
    case SM_Q4_0: return QFN(amx_q4_0)(a, n0, n1);
    case SM_Q4_1: return QFN(amx_q4_1)(a, n0, n1);
    case SM_Q5_0: return QFN(amx_q5_0)(a, n0, n1);
    case SM_Q5_1: return QFN(amx_q5_1)(a, n0, n1);
    case SM_Q8_0: return QFN(amx_q8_0)(a, n0, n1);
    case SM_Q4_K: case SM_Q5_K: case SM_Q6_K: return QFN(amx_k)(a, n0, n1);
    default: return n0;
    }
}
