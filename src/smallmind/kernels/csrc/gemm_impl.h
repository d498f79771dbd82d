/* GEMM micro-kernel and fused store, compiled once per ISA: the including file sets
 * `#pragma GCC target` and defines SM_GSUFFIX, and SM_GEMM_AVX2 for the AVX2 intrinsics
 * build or SM_GEMM_V16 for the 16-float-vector one (AVX-512, and its emulation on AVX2),
 * with SM_GEMM_BF16 for its BF16 tile (SM_GEMM_BF16_EMULATED: dpbf16ps in plain vector code),
 * on AMX tiles with SM_GEMM_AMX (amx.h; SM_AMX_EMULATED: in C). */
#include <stdint.h>
#include <string.h>
#include "gemm.h"
#include "sm_math.h"

#define SM_GCAT2(a, b) a##_##b
#define SM_GCAT(a, b) SM_GCAT2(a, b)
#define GFN(name) SM_GCAT(name, SM_GSUFFIX)
#define NR SM_GEMM_NR

#if defined(SM_GEMM_AVX2)
#include <immintrin.h>
#define SM_GMR 6
#elif defined(SM_GEMM_V16) && defined(SM_GEMM_AMX)
#define SM_GMR 16 /* an AMX tile's rows */
#elif defined(SM_GEMM_V16)
#define SM_GMR 12
#else
#define SM_GMR 4
#endif

/* acc (mr x NR, rows NR apart) -> rows i.., columns j..j+nr-1 of C. Before the last k block
 * C holds the partial sum; the last one adds bias and residual and applies the GELU (or its
 * gradient) while the tile is still in L1, which saves the separate passes over C. */
static inline void GFN(store)(const GemmArgs *g, const float *acc, long i, long j, long mr, long nr, int first,
                              int last)
{
    const float alpha = g->alpha;
    for (long r = 0; r < mr; r++) {
        const float *s = acc + r * NR;
        float *c = g->c + (i + r) * g->crs + j;
        float v[NR];
        if (first && !g->beta) {
#pragma omp simd
            for (long q = 0; q < nr; q++) v[q] = alpha * s[q];
        } else {
#pragma omp simd
            for (long q = 0; q < nr; q++) v[q] = alpha * s[q] + c[q];
        }
        if (last) {
            if (g->bias) {
                const float *b = g->bias + j;
#pragma omp simd
                for (long q = 0; q < nr; q++) v[q] += b[q];
            }
            if (g->resid) {
                const float *x = g->resid + (i + r) * g->rrs + j;
#pragma omp simd
                for (long q = 0; q < nr; q++) v[q] += x[q];
            }
            if (g->gx) {
                const float *x = g->gx + (i + r) * g->gxs + j;
#pragma omp simd
                for (long q = 0; q < nr; q++) v[q] *= sm_gelu_grad(x[q]);
            }
            if (g->act) {
                float *o = g->act + (i + r) * g->acts + j;
#pragma omp simd
                for (long q = 0; q < nr; q++) o[q] = sm_gelu(v[q]);
            }
        }
        memcpy(c, v, (size_t)nr * sizeof(float));
    }
}

#ifdef SM_GEMM_AVX2
/* 6 x 16 tile: per k, two panel loads and six broadcasts of A feed twelve FMAs into twelve
 * accumulators (15 of the 16 registers). Rows past mr repeat the last row and are dropped. */
static void GFN(tile)(const GemmArgs *g, const float *a, long ars, long acs, const float *bp, long i, long j,
                      long kc, long mr, long nr, int first, int last)
{
    const float *ak = a;
    long o1 = (mr > 1 ? 1 : mr - 1) * ars, o2 = (mr > 2 ? 2 : mr - 1) * ars;
    long o3 = (mr > 3 ? 3 : mr - 1) * ars, o4 = (mr > 4 ? 4 : mr - 1) * ars;
    long o5 = (mr > 5 ? 5 : mr - 1) * ars;
    __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
    __m256 c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
#define SM_GEMM_K_STEP(ak, bp)                                                                                \
    do {                                                                                                      \
        __m256 b0 = _mm256_load_ps(bp), b1 = _mm256_load_ps((bp) + 8), x;                                     \
        x = _mm256_broadcast_ss(ak);                                                                          \
        c00 = _mm256_fmadd_ps(x, b0, c00); c01 = _mm256_fmadd_ps(x, b1, c01);                                 \
        x = _mm256_broadcast_ss((ak) + o1);                                                                   \
        c10 = _mm256_fmadd_ps(x, b0, c10); c11 = _mm256_fmadd_ps(x, b1, c11);                                 \
        x = _mm256_broadcast_ss((ak) + o2);                                                                   \
        c20 = _mm256_fmadd_ps(x, b0, c20); c21 = _mm256_fmadd_ps(x, b1, c21);                                 \
        x = _mm256_broadcast_ss((ak) + o3);                                                                   \
        c30 = _mm256_fmadd_ps(x, b0, c30); c31 = _mm256_fmadd_ps(x, b1, c31);                                 \
        x = _mm256_broadcast_ss((ak) + o4);                                                                   \
        c40 = _mm256_fmadd_ps(x, b0, c40); c41 = _mm256_fmadd_ps(x, b1, c41);                                 \
        x = _mm256_broadcast_ss((ak) + o5);                                                                   \
        c50 = _mm256_fmadd_ps(x, b0, c50); c51 = _mm256_fmadd_ps(x, b1, c51);                                 \
    } while (0)
    /* what the store reads and writes, fetched during the k loop rather than waited for after
     * it (training's arrays are megabytes, far out of cache, and a tile's rows are kilobytes
     * apart, a pattern the hardware prefetcher does not follow) */
#define SM_GEMM_PREFETCH_ROW(p, rw) \
    (__builtin_prefetch((const char *)(p), rw, 3), __builtin_prefetch((const char *)(p) + 60, rw, 3))
    for (long r = 0; r < mr; r++) {
        SM_GEMM_PREFETCH_ROW(g->c + (i + r) * g->crs + j, 1);
        if (last && g->gx) SM_GEMM_PREFETCH_ROW(g->gx + (i + r) * g->gxs + j, 0);
        if (last && g->resid) SM_GEMM_PREFETCH_ROW(g->resid + (i + r) * g->rrs + j, 0);
        if (last && g->act) SM_GEMM_PREFETCH_ROW(g->act + (i + r) * g->acts + j, 1);
    }
#undef SM_GEMM_PREFETCH_ROW
    long k = 0;
    if (acs == SM_GMR && ars == 1 && mr == SM_GMR && kc >= 4) {
        /* A packed (the weight gradient's dout.T): a k's six values side by side. Written in
         * assembly, four k a trip: from intrinsics GCC kept the offsets o1..o5 in registers,
         * shuffled the twelve accumulators between registers and spilled one to the stack
         * inside the loop (15 of the 16 vector registers are live), which cost the weight
         * gradients 8-15% (benchmarks/gemm_vs_blas.py). ymm0-11 are the accumulators as the
         * compiler assigns them, ymm12-13 the panel's row of a k, ymm14-15 A's values. */
        long trips = kc / 4;
#define SM_GEMM_ASM_K(ao, bo)                                                                                 \
        "vmovaps " #bo "(%[b]), %%ymm12\n\t"                                                                \
        "vmovaps " #bo "+32(%[b]), %%ymm13\n\t"                                                             \
        "vbroadcastss " #ao "(%[a]), %%ymm14\n\t"                                                           \
        "vbroadcastss " #ao "+4(%[a]), %%ymm15\n\t"                                                         \
        "vfmadd231ps %%ymm12, %%ymm14, %[c00]\n\t"                                                          \
        "vfmadd231ps %%ymm13, %%ymm14, %[c01]\n\t"                                                          \
        "vfmadd231ps %%ymm12, %%ymm15, %[c10]\n\t"                                                          \
        "vfmadd231ps %%ymm13, %%ymm15, %[c11]\n\t"                                                          \
        "vbroadcastss " #ao "+8(%[a]), %%ymm14\n\t"                                                         \
        "vbroadcastss " #ao "+12(%[a]), %%ymm15\n\t"                                                        \
        "vfmadd231ps %%ymm12, %%ymm14, %[c20]\n\t"                                                          \
        "vfmadd231ps %%ymm13, %%ymm14, %[c21]\n\t"                                                          \
        "vfmadd231ps %%ymm12, %%ymm15, %[c30]\n\t"                                                          \
        "vfmadd231ps %%ymm13, %%ymm15, %[c31]\n\t"                                                          \
        "vbroadcastss " #ao "+16(%[a]), %%ymm14\n\t"                                                        \
        "vbroadcastss " #ao "+20(%[a]), %%ymm15\n\t"                                                        \
        "vfmadd231ps %%ymm12, %%ymm14, %[c40]\n\t"                                                          \
        "vfmadd231ps %%ymm13, %%ymm14, %[c41]\n\t"                                                          \
        "vfmadd231ps %%ymm12, %%ymm15, %[c50]\n\t"                                                          \
        "vfmadd231ps %%ymm13, %%ymm15, %[c51]\n\t"
        __asm__ volatile("1:\n\t"
                         SM_GEMM_ASM_K(0, 0) SM_GEMM_ASM_K(24, 64) SM_GEMM_ASM_K(48, 128) SM_GEMM_ASM_K(72, 192)
                         "add $96, %[a]\n\t"
                         "add $256, %[b]\n\t"
                         "dec %[n]\n\t"
                         "jnz 1b\n\t"
                         : [c00] "+x"(c00), [c01] "+x"(c01), [c10] "+x"(c10), [c11] "+x"(c11), [c20] "+x"(c20),
                           [c21] "+x"(c21), [c30] "+x"(c30), [c31] "+x"(c31), [c40] "+x"(c40), [c41] "+x"(c41),
                           [c50] "+x"(c50), [c51] "+x"(c51), [a] "+r"(ak), [b] "+r"(bp), [n] "+r"(trips)
                         :
                         : "xmm12", "xmm13", "xmm14", "xmm15", "cc", "memory");
#undef SM_GEMM_ASM_K
        k = kc / 4 * 4;
    }
    for (; k < kc; k++, ak += acs, bp += NR) SM_GEMM_K_STEP(ak, bp);
#undef SM_GEMM_K_STEP
    if (nr == NR && !g->gx && !g->act) {
        /* a whole tile with at most a bias and a residual to add: stored from the registers */
        const __m256 va = _mm256_set1_ps(g->alpha);
        const int load_c = !(first && !g->beta);
        const float *bias = last && g->bias ? g->bias + j : NULL;
        const float *resid = last && g->resid ? g->resid + i * g->rrs + j : NULL;
        __m256 bias0 = _mm256_setzero_ps(), bias1 = bias0;
        if (bias) bias0 = _mm256_loadu_ps(bias), bias1 = _mm256_loadu_ps(bias + 8);
#define SM_GEMM_STORE_ROW(r, lo, hi)                                                                          \
        if ((r) < mr) {                                                                                       \
            float *c = g->c + (i + (r)) * g->crs + j;                                                         \
            __m256 v0 = _mm256_mul_ps(va, lo), v1 = _mm256_mul_ps(va, hi);                                    \
            if (load_c) v0 = _mm256_add_ps(v0, _mm256_loadu_ps(c)), v1 = _mm256_add_ps(v1, _mm256_loadu_ps(c + 8)); \
            if (bias) v0 = _mm256_add_ps(v0, bias0), v1 = _mm256_add_ps(v1, bias1);                           \
            if (resid) {                                                                                      \
                const float *x = resid + (r) * g->rrs;                                                        \
                v0 = _mm256_add_ps(v0, _mm256_loadu_ps(x)), v1 = _mm256_add_ps(v1, _mm256_loadu_ps(x + 8));   \
            }                                                                                                 \
            _mm256_storeu_ps(c, v0), _mm256_storeu_ps(c + 8, v1);                                             \
        }
        SM_GEMM_STORE_ROW(0, c00, c01)
        SM_GEMM_STORE_ROW(1, c10, c11)
        SM_GEMM_STORE_ROW(2, c20, c21)
        SM_GEMM_STORE_ROW(3, c30, c31)
        SM_GEMM_STORE_ROW(4, c40, c41)
        SM_GEMM_STORE_ROW(5, c50, c51)
#undef SM_GEMM_STORE_ROW
        return;
    }
    float acc[SM_GMR * NR] __attribute__((aligned(32)));
    _mm256_store_ps(acc, c00); _mm256_store_ps(acc + 8, c01);
    _mm256_store_ps(acc + 16, c10); _mm256_store_ps(acc + 24, c11);
    _mm256_store_ps(acc + 32, c20); _mm256_store_ps(acc + 40, c21);
    _mm256_store_ps(acc + 48, c30); _mm256_store_ps(acc + 56, c31);
    _mm256_store_ps(acc + 64, c40); _mm256_store_ps(acc + 72, c41);
    _mm256_store_ps(acc + 80, c50); _mm256_store_ps(acc + 88, c51);
    GFN(store)(g, acc, i, j, mr, nr, first, last);
}
#elif defined(SM_GEMM_V16)
/* 12 x 16 tile on 16-float vectors (GCC vector extensions): one zmm register a row of the tile
 * in the AVX-512 build, so per k one panel load and twelve broadcast FMAs into twelve of the 32
 * registers; the emulated build (AVX2) runs the same operations on register pairs, for the
 * tests. Rows past mr repeat the last row and are dropped. */
typedef float v16f __attribute__((vector_size(64)));

static inline v16f v16f_loadu(const float *p) { v16f v; memcpy(&v, p, 64); return v; }

/* the tile's rows c[0..mr-1] -> C: a whole tile with at most a bias and a residual to add
 * straight from the registers, else through GFN(store) */
static inline void GFN(store16)(const GemmArgs *g, const v16f *c, long i, long j, long mr, long nr, int first,
                                int last)
{
    if (nr == NR && !g->gx && !g->act) {
        const int load_c = !(first && !g->beta);
        const float *bias = last && g->bias ? g->bias + j : NULL;
        const float *resid = last && g->resid ? g->resid + i * g->rrs + j : NULL;
        const v16f vb = bias ? v16f_loadu(bias) : (v16f){0};
        for (long r = 0; r < mr; r++) {
            float *cr = g->c + (i + r) * g->crs + j;
            v16f v = g->alpha * c[r];
            if (load_c) v = v + v16f_loadu(cr);
            if (bias) v = v + vb;
            if (resid) v = v + v16f_loadu(resid + r * g->rrs);
            memcpy(cr, &v, 64);
        }
        return;
    }
    float acc[SM_GMR * NR] __attribute__((aligned(64)));
    for (int r = 0; r < SM_GMR; r++) memcpy(acc + r * NR, &c[r], 64);
    GFN(store)(g, acc, i, j, mr, nr, first, last);
}

static void GFN(tile)(const GemmArgs *g, const float *a, long ars, long acs, const float *bp, long i, long j,
                      long kc, long mr, long nr, int first, int last)
{
    v16f c[SM_GMR];
    for (int r = 0; r < SM_GMR; r++) c[r] = (v16f){0};
    for (long r = 0; r < mr; r++) {
        __builtin_prefetch(g->c + (i + r) * g->crs + j, 1, 3);
        if (last && g->resid) __builtin_prefetch(g->resid + (i + r) * g->rrs + j, 0, 3);
    }
    if (acs == SM_GMR && ars == 1 && mr == SM_GMR) {
        /* a packed panel: the twelve values of each k side by side */
        for (long k = 0; k < kc; k++) {
            const v16f b = *(const v16f *)(bp + k * NR);
            const float *ak = a + k * SM_GMR;
#pragma GCC unroll 16
            for (int r = 0; r < SM_GMR; r++) c[r] += ak[r] * b;
        }
    } else {
        long off[SM_GMR];
        for (long r = 0; r < SM_GMR; r++) off[r] = (r < mr ? r : mr - 1) * ars;
        for (long k = 0; k < kc; k++) {
            const v16f b = *(const v16f *)(bp + k * NR);
            const float *ak = a + k * acs;
#pragma GCC unroll 16
            for (int r = 0; r < SM_GMR; r++) c[r] += ak[off[r]] * b;
        }
    }
    GFN(store16)(g, c, i, j, mr, nr, first, last);
}

#if defined(SM_GEMM_BF16) && defined(SM_GEMM_AMX)
/* 16 x 16 BF16 tile on AMX: A's panel row by row (16 rows of kp pairs, kp a multiple of 16)
 * and B's panel (kp rows of 16 pairs, the VNNI layout a B tile wants) go through tiles of 16
 * pairs each; C stays in its tile until the end, then takes the fused store */
#include "amx.h"

static void GFN(bf16_begin)(void)
{
    AmxConfig c;
    amx_setup(&c, 16, 64);
}

static void GFN(bf16_end)(void) { amx_release(); }

static void GFN(tile_bf16)(const GemmArgs *g, const uint32_t *ap, const uint32_t *bp, long i, long j, long kp,
                           long mr, long nr, int first, int last)
{
    float acc[SM_GMR * NR] __attribute__((aligned(64)));
    amx_zero_c();
    for (long p = 0; p < kp; p += 16) {
        amx_load(1, ap + p, kp * 4);
        amx_load(2, bp + p * NR, 64);
        amx_dot_bf16();
    }
    amx_store_c(acc, 64);
    GFN(store)(g, acc, i, j, mr, nr, first, last);
}
#define SM_GTILE_BF16 GFN(tile_bf16)
#define SM_GBF16_KPAD 16
#define SM_GBF16_A_ROWS 1
#define SM_GBF16_BEGIN GFN(bf16_begin)
#define SM_GBF16_END GFN(bf16_end)
#elif defined(SM_GEMM_BF16)
/* 12 x 16 BF16 tile: per k pair one panel load and twelve dpbf16ps, each adding two
 * products a lane (the pair's second, then its first, as the instruction does) */
typedef uint32_t v16u __attribute__((vector_size(64)));
#ifdef SM_GEMM_BF16_EMULATED
/* (pointers: 64-byte vectors passed by value draw ABI notes from GCC without AVX-512) */
static inline void dpbf16(v16f *c, uint32_t a, const v16u *b)
{
    uint32_t lo = a << 16, hi = a & 0xFFFF0000u;
    float alo, ahi;
    memcpy(&alo, &lo, 4);
    memcpy(&ahi, &hi, 4);
    /* BF16 x BF16 is exact in float32, so each step rounds once, as the instruction's does */
    *c = *c + ahi * (v16f)(*b & 0xFFFF0000u);
    *c = *c + alo * (v16f)(*b << 16);
}
#else
#include <immintrin.h>
static inline void dpbf16(v16f *c, uint32_t a, const v16u *b)
{
    *c = (v16f)_mm512_dpbf16_ps((__m512)*c, (__m512bh)_mm512_set1_epi32((int)a), (__m512bh)*b);
}
#endif

static void GFN(tile_bf16)(const GemmArgs *g, const uint32_t *ap, const uint32_t *bp, long i, long j, long kp,
                           long mr, long nr, int first, int last)
{
    v16f c[SM_GMR];
    for (int r = 0; r < SM_GMR; r++) c[r] = (v16f){0};
    for (long r = 0; r < mr; r++) __builtin_prefetch(g->c + (i + r) * g->crs + j, 1, 3);
    for (long p = 0; p < kp; p++) {
        const v16u b = *(const v16u *)(bp + p * NR);
        const uint32_t *a = ap + p * SM_GMR;
#pragma GCC unroll 16
        for (int r = 0; r < SM_GMR; r++) dpbf16(&c[r], a[r], &b);
    }
    GFN(store16)(g, c, i, j, mr, nr, first, last);
}
#define SM_GTILE_BF16 GFN(tile_bf16)
#endif
#else
/* 4 x 16 tile in plain C (the compiler vectorizes the 16 columns with what the baseline has) */
static void GFN(tile)(const GemmArgs *g, const float *a, long ars, long acs, const float *bp, long i, long j,
                      long kc, long mr, long nr, int first, int last)
{
    float acc[SM_GMR * NR];
    const float *ar[SM_GMR];
    for (long r = 0; r < SM_GMR; r++) ar[r] = a + (r < mr ? r : mr - 1) * ars;
    memset(acc, 0, sizeof acc);
    for (long k = 0; k < kc; k++) {
        const float *bk = bp + k * NR;
        for (long r = 0; r < SM_GMR; r++) {
            const float x = ar[r][k * acs];
            float *ac = acc + r * NR;
#pragma omp simd
            for (long q = 0; q < NR; q++) ac[q] += x * bk[q];
        }
    }
    GFN(store)(g, acc, i, j, mr, nr, first, last);
}
#endif

/* x, out (n,): each value's nearest BF16 kept as float32 (sm_bf16_round_bits) */
static void GFN(round_bf16)(const float *x, float *out, long n)
{
#pragma omp simd
    for (long i = 0; i < n; i++) out[i] = sm_bits_to_float(sm_bf16_round_bits(x[i]));
}

#ifndef SM_GTILE_BF16
#define SM_GTILE_BF16 NULL
#endif
#ifndef SM_GBF16_KPAD
#define SM_GBF16_KPAD 1
#define SM_GBF16_A_ROWS 0
#define SM_GBF16_BEGIN NULL
#define SM_GBF16_END NULL
#endif
const GemmTable SM_GCAT(sm_gtable, SM_GSUFFIX) = {
    .name = SM_GISA_NAME,
    .mr = SM_GMR,
    .tile = GFN(tile),
    .round_bf16 = GFN(round_bf16),
    .tile_bf16 = SM_GTILE_BF16,
    .bf16_kpad = SM_GBF16_KPAD,
    .bf16_a_rows = SM_GBF16_A_ROWS,
    .bf16_begin = SM_GBF16_BEGIN,
    .bf16_end = SM_GBF16_END,
};
