/* The GEMM driver (see gemm.h): blocking, packing of B and the split across the native pool.
 *
 * For each block of NC columns and KC depth, the threads first pack B's block into panels
 * together, then each takes whole row ranges of C and walks them panel by panel (MC rows
 * at a time, so A's rows stay in L2 while a 16 KB panel stays in L1). */
#include "gemm.h"

#include <stdlib.h>
#include <string.h>

#include "pool.h"

#define NR SM_GEMM_NR

typedef struct {
    const GemmTable *t;
    const GemmArgs *g;
    float *bp;
    long jc, nc, pc, kc;
    int first, last;
} Block;

static long min_l(long a, long b) { return a < b ? a : b; }

/* panels q0..q1 of the block: panel q holds columns jc + q*NR.., each k row NR floats,
 * zero beyond the last column */
static void pack_task(void *ctx, long q0, long q1)
{
    const Block *s = ctx;
    const GemmArgs *g = s->g;
    for (long q = q0; q < q1; q++) {
        float *dst = s->bp + q * s->kc * NR;
        long j = s->jc + q * NR, nr = min_l(NR, s->jc + s->nc - j);
        const float *src = g->b + s->pc * g->brs + j * g->bcs;
        if (g->bcs == 1 && nr == NR) {
            for (long k = 0; k < s->kc; k++) memcpy(dst + k * NR, src + k * g->brs, NR * sizeof(float));
        } else {
            /* column by column: the reads run along B's rows when B is a transposed weight */
            for (long c = 0; c < NR; c++)
                for (long k = 0; k < s->kc; k++) dst[k * NR + c] = c < nr ? src[k * g->brs + c * g->bcs] : 0.0f;
        }
    }
}

/* A's rows that are not contiguous along k (A = dout.T: one k per row of dout, kilobytes
 * apart, so a tile's kc loads would fall into a few L1 sets) are first copied into panels of
 * mr rows, k-major, by the task that uses them */
static __thread float a_pack[SM_GEMM_MC * SM_GEMM_KC] __attribute__((aligned(64)));

/* rows ib..ie of A's block (columns pc..pc+kc) into a_pack: panel of row i at (i-ib)*kc */
static void pack_a(const GemmArgs *g, long mr, long ib, long ie, long pc, long kc)
{
    for (long i = ib; i < ie; i += mr) {
        float *dst = a_pack + (i - ib) * kc;
        long m = min_l(mr, ie - i);
        const float *src = g->a + i * g->ars + pc * g->acs;
        for (long k = 0; k < kc; k++)
            for (long r = 0; r < mr; r++) dst[k * mr + r] = src[k * g->acs + (r < m ? r : m - 1) * g->ars];
    }
}

/* row units u0..u1 (of the table's mr rows) of C for this block */
static void compute_task(void *ctx, long u0, long u1)
{
    const Block *s = ctx;
    const GemmArgs *g = s->g;
    const long mr = s->t->mr, r1 = min_l(u1 * mr, g->M), npanels = (s->nc + NR - 1) / NR;
    const int packed = g->acs != 1;
    for (long ib = u0 * mr; ib < r1; ib += SM_GEMM_MC) {
        long ie = min_l(ib + SM_GEMM_MC, r1);
        if (packed) pack_a(g, mr, ib, ie, s->pc, s->kc);
        for (long q = 0; q < npanels; q++) {
            long j = s->jc + q * NR, nr = min_l(NR, s->jc + s->nc - j);
            const float *bp = s->bp + q * s->kc * NR;
            for (long i = ib; i < ie; i += mr) {
                long m = min_l(mr, ie - i);
                if (packed)
                    s->t->tile(g, a_pack + (i - ib) * s->kc, 1, mr, bp, i, j, s->kc, m, nr, s->first, s->last);
                else
                    s->t->tile(g, g->a + i * g->ars + s->pc * g->acs, g->ars, 1, bp, i, j, s->kc, m, nr, s->first,
                               s->last);
            }
        }
    }
}

/* the calling thread's packing buffer, grown to the largest block seen and kept (a training
 * step's products all fit the first one) */
static __thread float *pack_buf;
static __thread long pack_cap;

int sm_gemm(const GemmTable *t, const GemmArgs *g)
{
    if (g->M <= 0 || g->N <= 0 || g->K <= 0) return 0;
    long ncmax = (min_l(g->N, SM_GEMM_NC) + NR - 1) / NR * NR;
    long need = min_l(g->K, SM_GEMM_KC) * ncmax;
    if (need > pack_cap) {
        void *p = NULL;
        if (posix_memalign(&p, 64, (size_t)need * sizeof(float))) return -1;
        free(pack_buf);
        pack_buf = p;
        pack_cap = need;
    }
    const long units = (g->M + t->mr - 1) / t->mr;
    for (long jc = 0; jc < g->N; jc += SM_GEMM_NC) {
        for (long pc = 0; pc < g->K; pc += SM_GEMM_KC) {
            Block s = {t, g, pack_buf, jc, min_l(SM_GEMM_NC, g->N - jc), pc, min_l(SM_GEMM_KC, g->K - pc),
                       pc == 0, pc + SM_GEMM_KC >= g->K};
            sm_parallel_for(pack_task, &s, (s.nc + NR - 1) / NR, 1);
            sm_parallel_for(compute_task, &s, units, SM_GEMM_MC / t->mr);
        }
    }
    return 0;
}

typedef struct {
    const float *x;
    long xs, M;
    float alpha;
    float *db;
} ColSum;

#define SM_COLSUM_BLOCK 512

/* columns j0..j1: sums over all rows, SM_COLSUM_BLOCK columns at a time on the stack */
static void colsum_task(void *ctx, long j0, long j1)
{
    const ColSum *s = ctx;
    float acc[SM_COLSUM_BLOCK];
    for (long jb = j0; jb < j1; jb += SM_COLSUM_BLOCK) {
        long n = min_l(SM_COLSUM_BLOCK, j1 - jb);
        memset(acc, 0, (size_t)n * sizeof(float));
        for (long r = 0; r < s->M; r++) {
            const float *x = s->x + r * s->xs + jb;
#pragma omp simd
            for (long q = 0; q < n; q++) acc[q] += x[q];
        }
        for (long q = 0; q < n; q++) s->db[jb + q] += s->alpha * acc[q];
    }
}

void sm_colsum(const float *x, long xs, long M, long N, float alpha, float *db)
{
    ColSum s = {x, xs, M, alpha, db};
    sm_parallel_for(colsum_task, &s, N, 64);
}
