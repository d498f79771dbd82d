/* The GEMM driver (see gemm.h): blocking, packing and the split across the native pool.
 *
 * C is cut into one part per thread, by rows or by columns, and each thread computes its part
 * alone from start to end: no barrier per block, and equal parts keep both cores busy to the
 * end. Within a part, for each block of NC columns and KC depth, the thread packs B's block
 * into panels, then walks its rows MC at a time panel by panel (A's rows stay in L2 while a
 * panel is read from L1 and L2). A split by columns repeats A's packing in every thread (when A is
 * packed at all), one by rows repeats B's: the cheaper one is taken. */
#include "gemm.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "pool.h"
#include "sm_math.h"

#define NR SM_GEMM_NR

static long min_l(long a, long b) { return a < b ? a : b; }

/* the block of B at depth pc..pc+kc, columns jc..jc+nc into bp: panel q holds columns
 * jc + q*NR.., each k row NR floats, zero beyond the last column */
static void pack_b(const GemmArgs *g, float *bp, long jc, long nc, long pc, long kc)
{
    const long full = g->bcs == 1 ? nc / NR : 0;
    if (full) {
        /* B's rows contiguous (x, or a weight read as is): each row read once from start to
         * end, a pattern the hardware prefetcher follows, its NR-column pieces to their panels */
        const float *src = g->b + pc * g->brs + jc;
        for (long k = 0; k < kc; k++, src += g->brs)
            for (long q = 0; q < full; q++) memcpy(bp + q * kc * NR + k * NR, src + q * NR, NR * sizeof(float));
    }
    /* the rest (a transposed weight, or the last, partial panel) column by column: the reads
     * run along B's rows when B is a transposed weight; zeros past the last column */
    for (long q = full; q * NR < nc; q++) {
        float *dst = bp + q * kc * NR;
        long j = jc + q * NR, nr = min_l(NR, jc + nc - j);
        const float *src = g->b + pc * g->brs + j * g->bcs;
        for (long c = 0; c < NR; c++)
            for (long k = 0; k < kc; k++) dst[k * NR + c] = c < nr ? src[k * g->brs + c * g->bcs] : 0.0f;
    }
}

/* A is copied when its rows are not contiguous along k (A = dout.T: one k per row of dout,
 * kilobytes apart, so a tile's kc loads would fall into a few L1 sets), when its rows lie a
 * multiple of 4 KB apart (the six rows a tile broadcasts from would share one L1 set), and
 * when the row sums of A are wanted (they are taken from the copy's reads). */
static int packs_a(const GemmArgs *g) { return g->acs != 1 || g->asum || (g->ars % 1024) == 0; }

/* rows of a copy of A made from contiguous rows lie kc + SM_A_PAD apart: never 4 KB */
#define SM_A_PAD 16

/* rows ib..ie of A's block (columns pc..pc+kc) into ap, for tiles that read row i at
 * ap + (i-ib)*kc with rows 1 and k mr apart (k-major panels of mr rows, the last rows
 * repeated) when A's rows are not contiguous along k, else at ap + (i-ib)*(kc+SM_A_PAD)
 * with rows that far apart and k contiguous; with sums, sums[i-ib] += the row's kc values */
static void pack_a(const GemmArgs *g, float *ap, long mr, long ib, long ie, long pc, long kc, float *sums)
{
    const long ars = g->ars, acs = g->acs;
    if (acs == 1) {
        const long stride = kc + SM_A_PAD;
        for (long i = ib; i < ie; i++) {
            const float *row = g->a + i * ars + pc;
            memcpy(ap + (i - ib) * stride, row, (size_t)kc * sizeof(float));
            if (sums) {
                float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
                for (long k = 0; k < kc; k++) sum += row[k];
                sums[i - ib] += sum;
            }
        }
        return;
    }
    if (ars == 1) {
        /* A = dout.T: each k is a row of dout, read once across all of the part's rows */
        const float *src = g->a + ib + pc * acs;
        const long full = (ie - ib) / mr * mr;
        for (long k = 0; k < kc; k++, src += acs) {
            /* the rows are kilobytes apart, past what the hardware prefetcher follows: ask for
             * the part of the row eight ahead */
            if (k + 8 < kc)
                for (long i = 0; i < ie - ib; i += 16) __builtin_prefetch(src + 8 * acs + i);
            for (long i = 0; i < full; i += mr) {
                float *dst = ap + i * kc + k * mr;
                if (mr == 6)
                    memcpy(dst, src + i, 6 * sizeof(float));
                else
                    for (long r = 0; r < mr; r++) dst[r] = src[i + r];
            }
            if (sums) {
#pragma omp simd
                for (long i = 0; i < ie - ib; i++) sums[i] += src[i];
            }
        }
        for (long i = full; i < ie - ib; i += mr) {
            float *dst = ap + i * kc;
            long m = min_l(mr, ie - ib - i);
            const float *s2 = g->a + ib + i + pc * acs;
            for (long k = 0; k < kc; k++)
                for (long r = 0; r < mr; r++) dst[k * mr + r] = s2[k * acs + (r < m ? r : m - 1)];
        }
        return;
    }
    /* any other layout: k-major panels, element by element */
    for (long i = ib; i < ie; i += mr) {
        float *dst = ap + (i - ib) * kc;
        long m = min_l(mr, ie - i);
        const float *src = g->a + i * ars + pc * acs;
        for (long r = 0; r < mr; r++) {
            const float *row = src + (r < m ? r : m - 1) * ars;
            float sum = 0.0f;
            for (long k = 0; k < kc; k++) {
                dst[k * mr + r] = row[k * acs];
                sum += row[k * acs];
            }
            if (sums && r < m) sums[i - ib + r] += sum;
        }
    }
}

/* each thread's packing buffers, B's grown to the largest block seen and kept (a training
 * step's products all fit the first one) */
static __thread float a_pack_buf[SM_GEMM_MC * (SM_GEMM_KC + SM_A_PAD)] __attribute__((aligned(64)));
static __thread float *b_pack_buf;
static __thread long b_pack_cap;

typedef struct {
    const GemmTable *t;
    const GemmArgs *g;
    long parts;
    int by_cols;
    atomic_int failed;  /* a thread could not allocate its packing buffer */
} Job;

/* ---- BF16 products: A and B packed as pairs of BF16 values along k, one 32-bit word a pair */

/* the nearest BF16s of lo and hi in one word, lo's in the low half */
static inline uint32_t bf16_pair(float lo, float hi)
{
    return sm_bf16_round_bits(lo) >> 16 | sm_bf16_round_bits(hi);
}

/* pairs of a block of kc: (kc + 1) / 2, padded to the table's multiple */
static long bf16_pairs(const GemmTable *t, long kc)
{
    long kp = (kc + 1) / 2, pad = t->bf16_kpad > 1 ? t->bf16_kpad : 1;
    return (kp + pad - 1) / pad * pad;
}

/* B's block (depth pc..pc+kc, columns jc..jc+nc) into bp: panel q, pair p, column c at
 * bp[q*kp*NR + p*NR + c]; zeros past the last column, past k and in the padding pairs */
static void pack_b_bf16(const GemmArgs *g, uint32_t *bp, long jc, long nc, long pc, long kc, long kp)
{
    for (long q = 0; q * NR < nc; q++) {
        uint32_t *dst = bp + q * kp * NR;
        long j = jc + q * NR, nr = min_l(NR, jc + nc - j);
        memset(dst, 0, (size_t)kp * NR * sizeof *dst);
        for (long p = 0; 2 * p < kc; p++) {
            const int odd = 2 * p + 1 < kc;
            const float *r0 = g->b + (pc + 2 * p) * g->brs + j * g->bcs, *r1 = odd ? r0 + g->brs : r0;
            for (long c = 0; c < NR; c++)
                dst[p * NR + c] = c < nr ? bf16_pair(r0[c * g->bcs], odd ? r1[c * g->bcs] : 0.0f) : 0u;
        }
    }
}

/* rows ib..ie of A's block into ap: panels of mr rows (the last rows repeated) at
 * ap + (i-ib)*kp, pair p of row r at p*mr + r in the panel, or at r*kp + p with rows (the
 * AMX layout); zeros in the padding pairs; with sums, sums[i-ib] += the row's kc values */
static void pack_a_bf16(const GemmArgs *g, uint32_t *ap, long mr, int rows, long ib, long ie, long pc, long kc,
                        long kp, float *sums)
{
    const long ars = g->ars, acs = g->acs;
    const long sp = rows ? 1 : mr, sr = rows ? kp : 1;  /* strides of pairs and rows */
    for (long i = ib; i < ie; i += mr) {
        uint32_t *dst = ap + (i - ib) * kp;
        long m = min_l(mr, ie - i);
        for (long r = 0; r < mr; r++) {
            const float *row = g->a + (i + (r < m ? r : m - 1)) * ars + pc * acs;
            float sum = 0.0f;
            long p = 0;
            for (; 2 * p < kc; p++) {
                float lo = row[2 * p * acs], hi = 2 * p + 1 < kc ? row[(2 * p + 1) * acs] : 0.0f;
                dst[p * sp + r * sr] = bf16_pair(lo, hi);
                sum += lo;
                sum += hi;
            }
            for (; p < kp; p++) dst[p * sp + r * sr] = 0u;
            if (sums && r < m) sums[i - ib + r] += sum;
        }
    }
}

static int grow_b_pack(long need);

/* run_part for BF16 products: the same blocking, on BF16 pairs */
static void run_part_bf16(Job *job, long i0, long i1, long j0, long j1)
{
    const GemmTable *t = job->t;
    const GemmArgs *g = job->g;
    const long mr = t->mr;
    if (grow_b_pack(bf16_pairs(t, min_l(g->K, SM_GEMM_KC)) * ((min_l(j1 - j0, SM_GEMM_NC) + NR - 1) / NR * NR))) {
        atomic_store(&job->failed, 1);
        return;
    }
    uint32_t *bp = (uint32_t *)b_pack_buf, *ap = (uint32_t *)a_pack_buf;
    float sums[SM_GEMM_MC];
    if (t->bf16_begin) t->bf16_begin();
    for (long jc = j0; jc < j1; jc += SM_GEMM_NC) {
        const long nc = min_l(SM_GEMM_NC, j1 - jc), npanels = (nc + NR - 1) / NR;
        const int summed = g->asum && jc == 0;
        for (long pc = 0; pc < g->K; pc += SM_GEMM_KC) {
            const long kc = min_l(SM_GEMM_KC, g->K - pc), kp = bf16_pairs(t, kc);
            const int first = pc == 0, last = pc + SM_GEMM_KC >= g->K;
            pack_b_bf16(g, bp, jc, nc, pc, kc, kp);
            for (long ib = i0; ib < i1; ib += SM_GEMM_MC) {
                long ie = min_l(ib + SM_GEMM_MC, i1);
                if (summed) memset(sums, 0, sizeof sums);
                pack_a_bf16(g, ap, mr, t->bf16_a_rows, ib, ie, pc, kc, kp, summed ? sums : NULL);
                if (summed)
                    for (long i = ib; i < ie; i++) g->asum[i] += g->alpha * sums[i - ib];
                for (long q = 0; q < npanels; q++) {
                    long j = jc + q * NR, nr = min_l(NR, jc + nc - j);
                    for (long i = ib; i < ie; i += mr)
                        t->tile_bf16(g, ap + (i - ib) * kp, bp + q * kp * NR, i, j, kp, min_l(mr, ie - i), nr, first,
                                     last);
                }
            }
        }
    }
    if (t->bf16_end) t->bf16_end();
}

/* B's packing buffer holds at least `need` floats (or words): 0, or -1 without memory */
static int grow_b_pack(long need)
{
    if (need <= b_pack_cap) return 0;
    void *p = NULL;
    if (posix_memalign(&p, 64, (size_t)need * sizeof(float))) return -1;
    free(b_pack_buf);
    b_pack_buf = p;
    b_pack_cap = need;
    return 0;
}

/* C's rows i0..i1 (multiples of mr but the last) x columns j0..j1 (multiples of NR but the last) */
static void run_part(Job *job, long i0, long i1, long j0, long j1)
{
    if (job->g->bf16) {
        run_part_bf16(job, i0, i1, j0, j1);
        return;
    }
    const GemmTable *t = job->t;
    const GemmArgs *g = job->g;
    const long mr = t->mr;
    if (grow_b_pack(min_l(g->K, SM_GEMM_KC) * ((min_l(j1 - j0, SM_GEMM_NC) + NR - 1) / NR * NR))) {
        atomic_store(&job->failed, 1);
        return;
    }
    float *bp = b_pack_buf, *ap = a_pack_buf;
    const int packed = packs_a(g);
    float sums[SM_GEMM_MC];
    for (long jc = j0; jc < j1; jc += SM_GEMM_NC) {
        const long nc = min_l(SM_GEMM_NC, j1 - jc), npanels = (nc + NR - 1) / NR;
        /* the row sums once, with the block of the first columns */
        const int summed = g->asum && jc == 0;
        for (long pc = 0; pc < g->K; pc += SM_GEMM_KC) {
            const long kc = min_l(SM_GEMM_KC, g->K - pc);
            const int first = pc == 0, last = pc + SM_GEMM_KC >= g->K;
            pack_b(g, bp, jc, nc, pc, kc);
            for (long ib = i0; ib < i1; ib += SM_GEMM_MC) {
                long ie = min_l(ib + SM_GEMM_MC, i1);
                if (summed) memset(sums, 0, sizeof sums);
                if (packed) pack_a(g, ap, mr, ib, ie, pc, kc, summed ? sums : NULL);
                if (summed)
                    for (long i = ib; i < ie; i++) g->asum[i] += g->alpha * sums[i - ib];
                for (long q = 0; q < npanels; q++) {
                    long j = jc + q * NR, nr = min_l(NR, jc + nc - j);
                    const float *panel = bp + q * kc * NR;
                    for (long i = ib; i < ie; i += mr) {
                        long m = min_l(mr, ie - i);
                        if (packed && g->acs == 1)
                            t->tile(g, ap + (i - ib) * (kc + SM_A_PAD), kc + SM_A_PAD, 1, panel, i, j, kc, m, nr, first,
                                    last);
                        else if (packed)
                            t->tile(g, ap + (i - ib) * kc, 1, mr, panel, i, j, kc, m, nr, first, last);
                        else
                            t->tile(g, g->a + i * g->ars + pc * g->acs, g->ars, 1, panel, i, j, kc, m, nr, first,
                                    last);
                    }
                }
            }
        }
    }
}

/* parts p0..p1: equal shares of C's row units or column panels */
static void part_task(void *ctx, long p0, long p1)
{
    Job *job = ctx;
    const GemmArgs *g = job->g;
    const long mr = job->t->mr;
    for (long p = p0; p < p1; p++) {
        if (job->by_cols) {
            long panels = (g->N + NR - 1) / NR;
            long j0 = panels * p / job->parts * NR, j1 = min_l(panels * (p + 1) / job->parts * NR, g->N);
            if (j0 < j1) run_part(job, 0, g->M, j0, j1);
        } else {
            long units = (g->M + mr - 1) / mr;
            long i0 = units * p / job->parts * mr, i1 = min_l(units * (p + 1) / job->parts * mr, g->M);
            if (i0 < i1) run_part(job, i0, i1, 0, g->N);
        }
    }
}

int sm_gemm(const GemmTable *t, const GemmArgs *g)
{
    if (g->M <= 0 || g->N <= 0 || g->K <= 0) return 0;
    if (g->bf16 && !t->tile_bf16) return -1;  /* module.c asks only tables that have it */
    Job job = {t, g, sm_pool_threads(), 0, 0};
    /* floats each split packs more than once: by columns A (if packed), by rows B */
    double repeat_a = packs_a(g) ? (double)g->M * g->K : 0.0, repeat_b = (double)g->K * g->N;
    long panels = (g->N + NR - 1) / NR, units = (g->M + t->mr - 1) / t->mr;
    job.by_cols = panels >= job.parts && (repeat_a <= repeat_b || units < job.parts);
    sm_parallel_for(part_task, &job, job.parts, 1);
    return atomic_load(&job.failed) ? -1 : 0;
}
