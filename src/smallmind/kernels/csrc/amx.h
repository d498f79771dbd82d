/* AMX tiles for the kernels that use them (quant_amx_impl.h, gemm_impl.h): three tiles, C (0)
 * += A (1) times B (2), configured by amx_setup, with the int8 and BF16 products.
 *
 * The real build emits the instructions by inline assembly (AT&T operand order): unlike the
 * compiler's tile intrinsics, the loads and the store tell the compiler that they read or
 * write memory, so no store to a packed panel is delayed past a tile load and no read of C
 * comes before its tile store. A kernel runs them only where the OS saves the tile state and
 * Linux granted this process the tile data (module.c): a tile instruction without that grant
 * kills the process. With SM_AMX_EMULATED they are plain C with the instructions' semantics
 * (exact for the integer products), so the tests check the kernels on every machine. */
#ifndef SMALLMIND_AMX_H
#define SMALLMIND_AMX_H

#include <stdint.h>
#include <string.h>

typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} AmxConfig;

#ifdef SM_AMX_EMULATED
static __thread struct { int rows, colsb; uint8_t d[16][64]; } amx_emu[3];

static inline void amx_config(const AmxConfig *c)
{
    for (int i = 0; i < 3; i++) {
        amx_emu[i].rows = c->rows[i];
        amx_emu[i].colsb = c->colsb[i];
    }
}
static inline void amx_load(int t, const void *p, long stride)
{
    for (int r = 0; r < amx_emu[t].rows; r++)
        memcpy(amx_emu[t].d[r], (const uint8_t *)p + r * stride, (size_t)amx_emu[t].colsb);
}
static inline void amx_zero_c(void) { memset(amx_emu[0].d, 0, sizeof amx_emu[0].d); }
static inline void amx_store_c(void *p, long stride)
{
    for (int r = 0; r < amx_emu[0].rows; r++)
        memcpy((uint8_t *)p + r * stride, amx_emu[0].d[r], (size_t)amx_emu[0].colsb);
}
/* TDPBSSD / TDPBSUD: C[m][n] += sum over k, i of A[m][4k+i] (signed) * B[k][4n+i] (signed or
 * unsigned), int32 wrapping */
static inline void amx_dot(int b_signed)
{
    for (int m = 0; m < amx_emu[1].rows; m++)
        for (int n = 0; n < amx_emu[2].colsb / 4; n++) {
            int32_t c;
            memcpy(&c, &amx_emu[0].d[m][4 * n], 4);
            uint32_t s = (uint32_t)c;
            for (int k = 0; k < amx_emu[1].colsb / 4; k++)
                for (int i = 0; i < 4; i++) {
                    int av = (int8_t)amx_emu[1].d[m][4 * k + i], bv = amx_emu[2].d[k][4 * n + i];
                    s += (uint32_t)(av * (b_signed ? (int)(int8_t)bv : bv));
                }
            c = (int32_t)s;
            memcpy(&amx_emu[0].d[m][4 * n], &c, 4);
        }
}
static inline float amx_bf16_float(const uint8_t *p)
{
    uint32_t u = (uint32_t)(p[0] | p[1] << 8) << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
/* TDPBF16PS: C[m][n] (float32) += A[m] pair k . B[k] pair n, the pair's second product
 * first (the instruction also flushes denormals, which these tests never make) */
static inline void amx_dot_bf16(void)
{
    for (int m = 0; m < amx_emu[1].rows; m++)
        for (int n = 0; n < amx_emu[2].colsb / 4; n++) {
            float c;
            memcpy(&c, &amx_emu[0].d[m][4 * n], 4);
            for (int k = 0; k < amx_emu[1].colsb / 4; k++) {
                c += amx_bf16_float(&amx_emu[1].d[m][4 * k + 2]) * amx_bf16_float(&amx_emu[2].d[k][4 * n + 2]);
                c += amx_bf16_float(&amx_emu[1].d[m][4 * k]) * amx_bf16_float(&amx_emu[2].d[k][4 * n]);
            }
            memcpy(&amx_emu[0].d[m][4 * n], &c, 4);
        }
}
static inline void amx_release(void) {}
#else
static inline void amx_config(const AmxConfig *c) { __asm__ volatile("ldtilecfg %0" ::"m"(*c)); }
#define amx_load(t, p, stride) \
    __asm__ volatile("tileloadd (%0,%1,1), %%tmm" #t ::"r"((const void *)(p)), "r"((long)(stride)) : "memory")
#define amx_zero_c() __asm__ volatile("tilezero %%tmm0" ::)
#define amx_store_c(p, stride) \
    __asm__ volatile("tilestored %%tmm0, (%0,%1,1)" ::"r"((void *)(p)), "r"((long)(stride)) : "memory")
#define amx_dot(b_signed)                                                    \
    do {                                                                     \
        if (b_signed) __asm__ volatile("tdpbssd %%tmm2, %%tmm1, %%tmm0" ::); \
        else __asm__ volatile("tdpbsud %%tmm2, %%tmm1, %%tmm0" ::);          \
    } while (0)
#define amx_dot_bf16() __asm__ volatile("tdpbf16ps %%tmm2, %%tmm1, %%tmm0" ::)
#define amx_release() __asm__ volatile("tilerelease" ::)
#endif

/* C: rows x 64 bytes; A: rows x kbytes; B: kbytes / 4 rows x 64 bytes */
static inline void amx_setup(AmxConfig *c, int rows, int kbytes)
{
    memset(c, 0, sizeof *c);
    c->palette = 1;
    c->rows[0] = (uint8_t)rows;
    c->colsb[0] = 64;
    c->rows[1] = (uint8_t)rows;
    c->colsb[1] = (uint16_t)kbytes;
    c->rows[2] = (uint8_t)(kbytes / 4);
    c->colsb[2] = 64;
    amx_config(c);
}

#endif
