/* A small persistent thread pool: workers spin briefly after each job (decode issues
 * kernels microseconds apart) and then sleep on a condition variable, so they do not
 * compete with BLAS's own threads when the two alternate. */
#ifndef SMALLMIND_POOL_H
#define SMALLMIND_POOL_H

typedef void (*sm_task_fn)(void *ctx, long i0, long i1);

int sm_pool_set_threads(int n);       /* 0 on success; n counts the calling thread */
int sm_pool_threads(void);
void sm_pool_set_spin_us(long us);
long sm_pool_spin_us(void);
/* tests only: pauses that widen the pool's races, after a claimer reads the job counter and
 * between a caller's setting up a job and its publishing it (0 and 0: none, the default) */
void sm_pool_set_stalls_ns(long claim, long publish);
/* run fn over [0, total) split into per-thread chunks that are multiples of grain;
 * runs inline when the pool is single-threaded or busy (another Python thread). */
void sm_parallel_for(sm_task_fn fn, void *ctx, long total, long grain);

#endif
