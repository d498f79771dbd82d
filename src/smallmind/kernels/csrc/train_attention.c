/* The driver of the training attention (see train_attention.h): scratch and the split of the
 * (sequence, head) pairs across the native pool. */
#include "train_attention.h"

#include <stdatomic.h>
#include <stdlib.h>

#include "pool.h"

#define MR SM_TATTN_MR
#define NR SM_TATTN_NR

static long round_up(long n, long m) { return (n + m - 1) / m * m; }

long sm_train_attention_scratch(const TrainAttnArgs *a, int backward)
{
    long Tp = round_up(a->T, NR), Dp = round_up(a->D, NR);
    if (!backward) return a->D * Tp + 2 * a->T * Dp + MR * Tp;  /* k^T, v, k, the dropped rows of a tile */
    return a->D * Tp + 4 * a->T * Dp + a->T * (Tp + NR);        /* v^T, k, q, dout, v, the scores' gradient */
}

/* the calling thread's scratch, grown to the largest pair seen and kept (a training run's
 * calls all fit the first one) */
static __thread float *scratch;
static __thread long scratch_cap;

static float *thread_scratch(long n)
{
    if (n > scratch_cap) {
        void *p = NULL;
        if (posix_memalign(&p, 64, (size_t)n * sizeof(float))) return NULL;
        free(scratch);
        scratch = p;
        scratch_cap = n;
    }
    return scratch;
}

typedef struct {
    const TrainAttnTable *t;
    const TrainAttnArgs *a;
    long need;
    int backward;
    atomic_int failed;
} Job;

static void pairs_task(void *ctx, long p0, long p1)
{
    Job *j = ctx;
    float *s = thread_scratch(j->need);
    if (!s) {
        atomic_store(&j->failed, 1);
        return;
    }
    for (long p = p0; p < p1; p++) {
        if (j->backward) j->t->backward_pair(j->a, p, s);
        else j->t->forward_pair(j->a, p, s);
    }
}

int sm_train_attention(const TrainAttnTable *t, const TrainAttnArgs *a, int backward)
{
    Job j = {t, a, sm_train_attention_scratch(a, backward), backward, 0};
    sm_parallel_for(pairs_task, &j, a->B * a->H, 1);
    return atomic_load(&j.failed) ? -1 : 0;
}
