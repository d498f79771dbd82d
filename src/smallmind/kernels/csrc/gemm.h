/* The float32 GEMM behind training and prefill: C (M,N) = alpha * A (M,K) @ B (K,N), with the
 * element-wise work around a linear layer fused into the store of each output tile.
 *
 * A is read through any two strides (x, dout or dout.T), in place or copied a block at a time
 * where its layout would slow the tiles (gemm.c); B is packed once per (KC x NC) block into panels of SM_GEMM_NR columns, each row of a panel one aligned vector
 * load. Every stride is in elements; module.c validates every shape and overlap first. */
#ifndef SMALLMIND_GEMM_H
#define SMALLMIND_GEMM_H

#include <stdint.h>

#define SM_GEMM_NR 16    /* columns of a packed B panel (two AVX2 vectors, one AVX-512 vector) */
#define SM_GEMM_MAX_MR 12 /* the largest micro-tile's rows */
/* depth of one packed block: a 32 KB panel, read from L1 and L2; half the passes over C that 256
 * makes, measured 2-5% faster on training's products */
#define SM_GEMM_KC 512
#define SM_GEMM_NC 1024  /* columns of one packed block: 2 MB of B, each thread its own */
#define SM_GEMM_MC 72    /* rows of A a thread walks per panel (reused from L2) */

typedef struct {
    const float *a;
    long ars, acs;           /* A (M,K): element (i,k) at a[i*ars + k*acs] */
    const float *b;
    long brs, bcs;           /* B (K,N): element (k,j) at b[k*brs + j*bcs] */
    float *c;
    long crs;                /* C (M,N): rows crs apart, unit columns */
    long M, N, K;
    float alpha;
    int beta;                /* 1: C += ..., 0: C = ... */
    const float *bias;       /* (N,) added once, or NULL */
    const float *resid;      /* (M,N) added once (rows rrs apart), or NULL */
    long rrs;
    float *act;              /* (M,N) gelu(C) written beside C (rows acts apart), or NULL */
    long acts;
    const float *gx;         /* (M,N): C *= gelu'(gx) at the end (rows gxs apart), or NULL */
    long gxs;
    float *asum;             /* (M,): += alpha * A's row sums (a bias gradient), or NULL */
    int bf16;                /* 1: the products in BF16 (A and B rounded to it, float32 sums) on the
                                table's tile_bf16, which must exist */
} GemmArgs;

typedef struct {
    const char *name;
    int mr;                  /* micro-tile rows */
    /* rows i..i+mr-1 (mr <= the table's), columns j..j+nr-1 of C from kc columns of A (a: row i's
     * first, element (r,k) at a[r*ars + k*acs]) and the packed panel bp (kc x SM_GEMM_NR);
     * first/last: this is the first/last k block */
    void (*tile)(const GemmArgs *g, const float *a, long ars, long acs, const float *bp, long i, long j, long kc,
                 long mr, long nr, int first, int last);
    void (*round_bf16)(const float *x, float *out, long n);
    /* the BF16 tile, or NULL: as tile, from kp k pairs; ap holds mr words a pair (row r's two
     * BF16 values of k = 2p, 2p+1, the first in the low half), the panel bp NR words a pair */
    void (*tile_bf16)(const GemmArgs *g, const uint32_t *ap, const uint32_t *bp, long i, long j, long kp, long mr,
                      long nr, int first, int last);
    int bf16_kpad;    /* the BF16 packs' pairs padded with zeros to a multiple of this (AMX: 16) */
    int bf16_a_rows;  /* 1: A's BF16 panel row by row (row r's pair p at r*kp + p: AMX's A tile) */
    void (*bf16_begin)(void), (*bf16_end)(void);  /* around a thread's BF16 part, or NULL */
} GemmTable;

extern const GemmTable sm_gtable_generic;
#if defined(__x86_64__) && defined(__GNUC__)
extern const GemmTable sm_gtable_avx2;
extern const GemmTable sm_gtable_avx512;
extern const GemmTable sm_gtable_avx512bf16;      /* and the AVX512-BF16 tile */
extern const GemmTable sm_gtable_avx512_emulated;  /* tests only: both AVX-512 tiles on AVX2 */
extern const GemmTable sm_gtable_amx;             /* the AVX-512 tiles, BF16 products on AMX */
extern const GemmTable sm_gtable_amx_emulated;    /* tests only: that build on AVX2 */
#endif

/* C as described by g, on the native pool (call without the GIL): 0, or -1 when the packing buffer cannot be allocated */
int sm_gemm(const GemmTable *t, const GemmArgs *g);

#endif
