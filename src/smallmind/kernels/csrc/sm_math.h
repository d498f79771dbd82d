/* Scalar math shared by the per-ISA kernel builds (included after `#pragma GCC target`, so
 * each build vectorizes these with its own instructions). */
#ifndef SM_MATH_H_GUARD
#define SM_MATH_H_GUARD
#include <math.h>
#include <stdint.h>
#include <string.h>

static inline float sm_bits_to_float(uint32_t i) { float f; memcpy(&f, &i, 4); return f; }
static inline uint32_t sm_float_bits(float f) { uint32_t i; memcpy(&i, &f, 4); return i; }

/* x -> the float32 bits of its nearest BF16 (ties to even), the low 16 bits zero; NaN stays
 * NaN (quietened) and overflow rounds to inf, as the hardware conversion does */
static inline uint32_t sm_bf16_round_bits(float x)
{
    uint32_t u = sm_float_bits(x);
    return (x != x ? (u | 0x00400000u) : u + 0x7FFFu + ((u >> 16) & 1u)) & 0xFFFF0000u;
}

/* exp with about 1 ulp error (Cephes expf polynomial). Range reduction x = n ln2 + r with
 * round-to-nearest through the 1.5*2^23 trick, reading n from the float's low bits (no libm
 * call and no float-to-int conversion, so loops stay vectorized and NaN is well defined);
 * 2^n is applied as two factors so n from -150 to 128 neither wraps nor flushes early. */
static inline float sm_exp(float x)
{
    float xc = x < -104.0f ? -104.0f : x;
    xc = xc > 89.0f ? 89.0f : xc;
    float nm = xc * 1.44269504088896341f + 12582912.0f;
    float n = nm - 12582912.0f;
    float r = xc - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * (r * r) + r + 1.0f;
    int32_t ni = (int32_t)(sm_float_bits(nm) - 0x4B400000u);
    int32_t n1 = ni >> 1, n2 = ni - n1;
    float y = p * sm_bits_to_float((uint32_t)(n1 + 127) << 23) * sm_bits_to_float((uint32_t)(n2 + 127) << 23);
    return x != x ? x : y;
}

#define SM_GELU_C 0.7978845608028654f

/* GELU through 0.5 (1 + tanh u) = sigmoid(2u): no 1 + tanh cancellation, so the tails
 * keep their relative accuracy (the float32 tanh formula loses it near tanh = -1). */
static inline float sm_gelu(float x)
{
    float u = SM_GELU_C * (x + 0.044715f * x * x * x);
    return x / (1.0f + sm_exp(-2.0f * u));
}

/* d/dx: s + 2 x u' s (1 - s) with s = sigmoid(2u), s (1 - s) = e / (1 + e)^2, e = exp(-2|u|) */
static inline float sm_gelu_grad(float x)
{
    float u = SM_GELU_C * (x + 0.044715f * x * x * x);
    float du = SM_GELU_C * (1.0f + 3.0f * 0.044715f * x * x);
    float e = sm_exp(-2.0f * fabsf(u));
    float inv = 1.0f / (1.0f + e);
    float s = u >= 0.0f ? inv : e * inv;
    return s + 2.0f * x * du * e * inv * inv;
}

/* RoPE, as the reference computes it: pair i turns by position * inv[i] radians, inv[i] =
 * theta^(-2i/D) / freq_factors[i], in double, its cos and sin then rounded to float */
static inline void sm_rope_inverse_frequencies(double theta, const float *freq_factors, long half, double *inv)
{
    for (long i = 0; i < half; i++) {
        inv[i] = pow(theta, -(double)(2 * i) / (double)(2 * half));
        if (freq_factors) inv[i] /= (double)freq_factors[i];
    }
}

static inline void sm_rope_angles(double pos, const double *inv, long half, float *cs, float *sn)
{
    for (long i = 0; i < half; i++) {
        double ang = pos * inv[i];
        cs[i] = (float)cos(ang);
        sn[i] = (float)sin(ang);
    }
}

#endif
