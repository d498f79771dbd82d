/* Argument blocks and the per-ISA function table shared by the module and the kernel TUs.
 * Every stride is in elements (float32), every index a long; the module validates all
 * shapes before a kernel sees them, so kernels never bounds-check. */
#ifndef SMALLMIND_KERNELS_H
#define SMALLMIND_KERNELS_H

#define SM_ROPE_MAX_HALF 512   /* rope/attention keep per-row tables on the stack */
#define SM_ATTN_MAX_D 1024
#define SM_ATTN_TILE 64
#define SM_ATTN_QBLOCK 16     /* queries sharing one transposed key tile in prefill */
#define SM_ATTN_BLOCKED_MAX_D 128
#define SM_ATTN_SCORES 8192   /* f16-cache attention keeps this many scores on the stack; longer
                                 spans recompute them per pass instead */
#define SM_ATTN_GROUP_MAX 8       /* and at most this many of them */
#define SM_ATTN_GROUP_FLOATS 2048 /* f16-cache attention: query heads sharing a KV head taken
                                     together (one conversion of each key and value) hold at
                                     most this many floats of queries and of outputs */

#include <stdint.h>
#include <string.h>

/* IEEE half <-> float, round to nearest even (what F16C and numpy's astype do), NaN kept */
static inline uint16_t sm_f32_to_f16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000u, ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) return (uint16_t)(sign | 0x7e00u | ((ax >> 13) & 0x3ffu));
    if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* rounds past the largest half */
    if (ax < 0x38800000u) { /* below the smallest normal half: a subnormal or zero */
        if (ax < 0x33000000u) return (uint16_t)sign;            /* below half the smallest subnormal */
        uint32_t m = (ax & 0x7fffffu) | 0x800000u;
        int shift = 126 - (int)(ax >> 23); /* 14..24: the subnormal's bits are m >> shift */
        uint32_t h = m >> shift, rem = m & ((1u << shift) - 1), halfway = 1u << (shift - 1);
        h += rem > halfway || (rem == halfway && (h & 1u));
        return (uint16_t)(sign | h);
    }
    uint32_t h = ((ax >> 13) - (112u << 10)), rem = ax & 0x1fffu;
    h += rem > 0x1000u || (rem == 0x1000u && (h & 1u));
    return (uint16_t)(sign | h);
}

static inline float sm_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu, x;
    if (e == 0x1fu) x = sign | 0x7f800000u | (m << 13);
    else if (e) x = sign | ((e + 112u) << 23) | (m << 13);
    else {
        float f = (float)m * 5.9604644775390625e-8f; /* m * 2^-24 is exact */
        memcpy(&x, &f, 4);
        x |= sign;
    }
    float f;
    memcpy(&f, &x, 4);
    return f;
}

typedef struct {
    const float *x, *w, *b;
    float *out;
    long T, K, N, xs, ws, os;
    int accumulate;
} LinearArgs;

typedef struct {
    const float *q, *kc, *vc;
    float *out;
    long T, H, D, group, pos0;
    long qs_t, qs_h, ks_h, ks_s, vs_h, vs_s, os_t, os_h;
    float scale;
    long window;  /* > 0: query at position p sees keys j with p - j < window (sliding window) */
    const uint16_t *kh, *vh;  /* the cache as IEEE half (kc, vc unused), for attention_half */
    long hsub;  /* attention_half: query heads per unit (0 or 1: one; else a divisor of group,
                   at most SM_ATTN_GROUP_MAX, hsub * D <= SM_ATTN_GROUP_FLOATS); unit i =
                   (h / hsub) * T + t */
} AttnArgs;

/* layer_norm / rms_norm over rows of C features */
typedef struct {
    const float *x, *w, *b;
    float *out, *mean, *rstd;
    long C, xs, os, ms, rs;
    float eps;
} NormArgs;

typedef struct {
    const float *dout, *x, *w, *mean, *rstd;
    float *dx, *dw, *db;
    long T, C, ds, xs, dxs, ms, rs;
} NormBwdArgs;

/* softmax: rows of S */
typedef struct {
    const float *x;
    float *out;
    long S, xs, os;
} SoftmaxArgs;

typedef struct {
    const float *x;
    float *out;
    long T, H, half, pos0, xs_t, xs_h, os_t, os_h;
    double theta;
    int neox;
    const float *freq_factors;  /* (half,) divisors of each pair's frequency, or NULL */
    const void *positions;      /* (T,) int32 or int64 (positions_64), row t's position at
                                   t * ps; NULL: row t is at pos0 + t */
    int positions_64;
    long ps;
    const float *table;         /* (2,T,half): row t's cos and sin, or NULL: computed per row */
} RopeArgs;

typedef struct {
    const float *logits;
    float *losses, *dlogits;
    const void *targets;
    int targets_64;
    long V, ls, lss, ts, ds;
    float dscale;
} XentArgs;

typedef struct {
    float *p, *m, *v;
    const float *g;
    float lr, beta1, beta2, eps, wd, inv_bc1, inv_bc2;
} AdamArgs;

enum { SM_GELU, SM_SILU, SM_GELU_BWD, SM_SWIGLU, SM_GEGLU };

typedef struct {
    const char *name;
    void (*linear_cols)(const LinearArgs *, long n0, long n1);
    void (*attention)(const AttnArgs *, long i0, long i1);
    void (*attention_blocked)(const AttnArgs *, long i0, long i1);
    void (*attention_half)(const AttnArgs *, long i0, long i1);
    void (*layer_norm_rows)(const NormArgs *, long r0, long r1);
    void (*rms_norm_rows)(const NormArgs *, long r0, long r1);
    /* rows r0..r1: dx += their gradient; pdw, pdb (C,) = these rows' dweight, dbias sums */
    void (*layer_norm_bwd_block)(const NormBwdArgs *, long r0, long r1, float *pdw, float *pdb);
    void (*elementwise)(int op, const float *a, const float *b, float *out, long n);
    void (*softmax_rows)(const SoftmaxArgs *, long r0, long r1);
    void (*rope_rows)(const RopeArgs *, long t0, long t1);
    void (*cross_entropy_rows)(const XentArgs *, long r0, long r1);
    void (*adamw)(const AdamArgs *, long i0, long i1);
    void (*add_rows)(float *out, const float *a, const float *b, long n);  /* out = a + b (b may be NULL) */
    void (*to_half)(const float *x, uint16_t *out, long n);  /* out = x rounded to IEEE half */
    /* sample_softmax in parts: max of scale * x; p = exp(scale * x - m) and its sum; the first
     * index whose running sum of p exceeds target (-1 when none does) */
    float (*scaled_max)(const float *x, long n, float scale);
    double (*shifted_exp)(const float *x, float *p, long n, float scale, float m);
    long (*running_sum_above)(const float *p, long n, double target);
} KernelTable;

extern const KernelTable sm_table_generic;
#if defined(__x86_64__) && defined(__GNUC__)
#define SM_HAVE_X86 1
extern const KernelTable sm_table_avx2;
extern const KernelTable sm_table_avx512;
#endif

#endif
