/* Activation quantization for the quantized products, compiled once (not per ISA) so every
 * ISA multiplies exactly the same integers. The formulas are those of llama.cpp's x86 CPU
 * backend: Q8_0 / Q8_1 blocks of 32 with d = amax/127 and q = round-half-even(x * 127/amax),
 * Q8_1's s = half(d * sum q); Q8_K blocks of 256 with the signed value of largest magnitude
 * mapped to -127 and d = 1/iscale; F16 / BF16 round to nearest even. The NumPy twin
 * (quant_reference.py) computes the same float32 operations. */
#include <math.h>
#include <string.h>

#include "quant.h"
#include "sm_math.h"

static inline uint32_t f2u(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float u2f(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

float sm_half_to_float(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1F, man = h & 0x3FF;
    if (exp == 0x1F) return u2f(sign | 0x7F800000u | (man << 13));
    if (exp == 0) {
        /* zero or subnormal: man * 2^-24, exact in float32 */
        float v = (float)man * 5.9604644775390625e-8f;
        return sign ? -v : v;
    }
    return u2f(sign | ((exp + 112) << 23) | (man << 13));
}

/* float32 -> nearest half, ties to even (what F16C and numpy do) */
static uint16_t float_to_half(float f)
{
    uint32_t u = f2u(f), sign = (u >> 16) & 0x8000, a = u & 0x7FFFFFFFu;
    if (a >= 0x7F800000u) return (uint16_t)(sign | 0x7C00 | (a > 0x7F800000u ? 0x200 | ((a >> 13) & 0x3FF) : 0));
    if (a >= 0x477FF000u) return (uint16_t)(sign | 0x7C00);  /* rounds to beyond 65504 */
    if (a < 0x38800000u) {
        /* subnormal half (or zero): value / 2^-24 rounded to an integer, ties to even */
        float v = u2f(a) * 16777216.0f;
        float r = (v + 8388608.0f) - 8388608.0f;
        return (uint16_t)(sign | (uint32_t)r);
    }
    uint32_t mant = a + 0xFFFu + ((a >> 13) & 1u);  /* round the 13 dropped bits to even */
    return (uint16_t)(sign | ((mant - 0x38000000u) >> 13));
}

float sm_round_half(float f) { return sm_half_to_float(float_to_half(f)); }

/* nearest integer, ties to even, for |v| < 2^22 */
static inline float round_even(float v) { return (v + 12582912.0f) - 12582912.0f; }

long sm_act_row_bytes(int qtype, long K)
{
    switch (qtype) {
    case SM_F16: case SM_BF16: return K * (long)sizeof(float);
    case SM_Q4_1: case SM_Q5_1: return K / 32 * (long)sizeof(sm_q8_1);
    case SM_Q4_K: case SM_Q5_K: case SM_Q6_K: return K / 256 * (long)sizeof(sm_q8_k);
    default: return K / 32 * (long)sizeof(sm_q8_0);
    }
}

/* x (32,) -> q, returns d (unrounded) */
static float q8_block(const float *x, int8_t *q)
{
    float amax = 0.0f;
    for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(x[j]));
    float d = amax / 127.0f;
    float id = amax != 0.0f ? 127.0f / amax : 0.0f;
    for (int j = 0; j < 32; j++) q[j] = (int8_t)round_even(x[j] * id);
    return d;
}

static void q8_k_block(const float *x, sm_q8_k *y)
{
    float amax = 0.0f, peak = 0.0f;
    for (int j = 0; j < 256; j++) {
        float a = fabsf(x[j]);
        if (a > amax) { amax = a; peak = x[j]; }
    }
    if (amax == 0.0f) {
        memset(y, 0, sizeof *y);
        return;
    }
    float iscale = -127.0f / peak;
    for (int j = 0; j < 256; j++) {
        float r = round_even(iscale * x[j]);
        y->qs[j] = (int8_t)(r > 127.0f ? 127.0f : r);
    }
    for (int g = 0; g < 16; g++) {
        int32_t s = 0;
        for (int j = 0; j < 16; j++) s += y->qs[16 * g + j];
        y->bsum16[g] = (int16_t)s;
    }
    for (int g = 0; g < 8; g++) y->bsum32[g] = y->bsum16[2 * g] + y->bsum16[2 * g + 1];
    y->d = 1.0f / iscale;
}

void sm_quantize_row(int qtype, const float *x, uint8_t *dst, long K)
{
    switch (qtype) {
    case SM_F16: {
        float *o = (float *)dst;
        for (long i = 0; i < K; i++) o[i] = sm_round_half(x[i]);
        return;
    }
    case SM_BF16: {
        float *o = (float *)dst;
        for (long i = 0; i < K; i++) o[i] = u2f(sm_bf16_round_bits(x[i]));
        return;
    }
    case SM_Q4_1: case SM_Q5_1: {
        sm_q8_1 *y = (sm_q8_1 *)dst;
        for (long b = 0; b < K / 32; b++) {
            float d = q8_block(x + 32 * b, y[b].qs);
            int32_t sum = 0;
            for (int j = 0; j < 32; j++) sum += y[b].qs[j];
            y[b].d = sm_round_half(d);
            y[b].s = sm_round_half(d * (float)sum);
        }
        return;
    }
    case SM_Q4_K: case SM_Q5_K: case SM_Q6_K: {
        sm_q8_k *y = (sm_q8_k *)dst;
        for (long b = 0; b < K / 256; b++) q8_k_block(x + 256 * b, &y[b]);
        return;
    }
    default: {
        sm_q8_0 *y = (sm_q8_0 *)dst;
        for (long b = 0; b < K / 32; b++) {
            y[b].d = sm_round_half(q8_block(x + 32 * b, y[b].qs));
            int32_t sum = 0;
            for (int j = 0; j < 32; j++) sum += y[b].qs[j];
            y[b].sum = sum;
        }
        return;
    }
    }
}
