/* Quantized-weight kernels: GGUF block formats, the activations' vec_dot formats, the
 * argument block and the per-ISA function table. The module validates every argument
 * (formats, sizes, shapes, overlaps, token ids) before a kernel sees it. */
#ifndef SMALLMIND_QUANT_H
#define SMALLMIND_QUANT_H

#include <stdint.h>

enum { SM_F16, SM_BF16, SM_Q4_0, SM_Q4_1, SM_Q5_0, SM_Q5_1, SM_Q8_0, SM_Q4_K, SM_Q5_K, SM_Q6_K, SM_NQTYPES };

/* activations quantized for the products (our layout, not GGUF's: the half scales are
 * kept as the float32 values they hold, and Q8_K keeps the 32-value sums the K-quant
 * mins need) */
typedef struct { float d; int32_t sum; int8_t qs[32]; } sm_q8_0;  /* Q4_0, Q5_0, Q8_0; sum = sum qs */
typedef struct { float d, s; int8_t qs[32]; } sm_q8_1;            /* Q4_1, Q5_1: s = half(d * sum qs) */
typedef struct {                                                  /* Q4_K, Q5_K, Q6_K */
    float d;
    int32_t bsum32[8];   /* sums of qs over each 32 */
    int16_t bsum16[16];  /* and over each 16 */
    int8_t qs[256];
} sm_q8_k;

#define SM_QTILE 16   /* activation rows sharing one unpacked weight block */
#define SM_QTBLOCK 64 /* activation rows kept in L2 while a range of weight rows passes */

typedef struct {
    int qtype;
    const uint8_t *w;      /* N rows of wrow bytes */
    long wrow;
    const uint8_t *xq;     /* T rows of xrow bytes: the activations in the vec_dot format */
    long xrow;
    const float *b;        /* (N,) or NULL */
    float *out;            /* (T, N) with row stride os (elements) */
    long os, T, K, N;
    int accumulate;
} QLinearArgs;

typedef struct {
    const char *name;
    void (*linear_rows)(const QLinearArgs *, long n0, long n1);  /* output features n0..n1-1 */
    void (*dequant_row)(int qtype, const uint8_t *src, float *dst, long K);
    void (*quantize_row)(int qtype, const float *x, uint8_t *dst, long K);  /* = sm_quantize_row's bytes */
    long row_grain;  /* output features a thread takes at a time: its kernels' row group */
} QuantTable;

/* portable, identical on every ISA (quant.c): x (K,) -> one row of activations; bytes per row */
long sm_act_row_bytes(int qtype, long K);
void sm_quantize_row(int qtype, const float *x, uint8_t *dst, long K);
float sm_half_to_float(uint16_t h);
float sm_round_half(float f);  /* the nearest half's value, ties to even */

extern const QuantTable sm_qtable_generic;
#if defined(__x86_64__) && defined(__GNUC__)
extern const QuantTable sm_qtable_avx2;
extern const QuantTable sm_qtable_avx512vnni;
extern const QuantTable sm_qtable_vnni_emulated;  /* tests only: the VNNI kernels on AVX2 */
extern const QuantTable sm_qtable_amx;
extern const QuantTable sm_qtable_amx_emulated;   /* tests only: the AMX kernels on AVX2 */
#endif

#endif
