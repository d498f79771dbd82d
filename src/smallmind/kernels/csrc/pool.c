/* Thread pool behind sm_parallel_for (see pool.h).
 *
 * A job is split into a few chunks per thread that the caller and the workers claim from
 * one atomic counter. The caller never waits for a worker to wake up: on a busy machine
 * (more runnable threads than cores) it simply claims the chunks itself, and only waits
 * for chunks a worker has already started. The counter holds the job id, the job's chunk
 * count and the next chunk (job << 32 | nchunks << 16 | next) in one word, so a worker can
 * only claim a chunk of the job it read, and only one that exists: a worker that read the
 * exhausted counter of the last job must not compare its chunk with the count of a job the
 * caller is setting up but has not published (it would run a chunk outside that job's
 * accounting, and the caller could return while it still reads the caller's stack). */
#include "pool.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <time.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define SM_RELAX() _mm_pause()
#else
#define SM_RELAX() ((void)0)
#endif

#define SM_MAX_THREADS 64
#define SM_CHUNKS_PER_THREAD 4   /* SM_MAX_THREADS * SM_CHUNKS_PER_THREAD must fit in 16 bits */

#define JOB_OF(c) ((uint32_t)((c) >> 32))
#define NCHUNKS_OF(c) ((long)(((c) >> 16) & 0xFFFF))
#define NEXT_OF(c) ((long)((c) & 0xFFFF))

static struct {
    int n;                 /* threads, counting the caller */
    pthread_t th[SM_MAX_THREADS];
    _Atomic uint64_t counter;
    atomic_long done;
    atomic_int sleepers;
    atomic_int stop;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_mutex_t busy;  /* one job at a time (Python threads may call with the GIL released) */
    sm_task_fn fn;
    void *ctx;
    long total, grain, nchunks;
    long spin_ns;
    long claim_stall_ns;   /* tests: a pause after a claimer reads the counter */
    long publish_stall_ns; /* tests: a pause between setting up a job and publishing it */
} P = {
    .n = 1,
    .mu = PTHREAD_MUTEX_INITIALIZER,
    .cv = PTHREAD_COND_INITIALIZER,
    .busy = PTHREAD_MUTEX_INITIALIZER,
    .spin_ns = 50000,
};

static long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000L + ts.tv_nsec;
}

static void stall(long ns)
{
    struct timespec ts = {ns / 1000000000L, ns % 1000000000L};
    nanosleep(&ts, NULL);
}

/* claim and run chunks of job `job` until none are left */
static void work(uint32_t job)
{
    for (;;) {
        uint64_t c = atomic_load_explicit(&P.counter, memory_order_acquire);
        if (P.claim_stall_ns) stall(P.claim_stall_ns);
        if (JOB_OF(c) != job || NEXT_OF(c) >= NCHUNKS_OF(c)) return;
        /* the job's fields: if the claim below succeeds, the counter was still c, so job
         * `job` had chunk NEXT_OF(c) unclaimed and its caller had not moved on */
        sm_task_fn fn = P.fn;
        void *ctx = P.ctx;
        long total = P.total, grain = P.grain, nchunks = NCHUNKS_OF(c), i = NEXT_OF(c);
        if (!atomic_compare_exchange_weak(&P.counter, &c, c + 1)) continue;
        long units = (total + grain - 1) / grain;
        long a = units * i / nchunks * grain, b = units * (i + 1) / nchunks * grain;
        if (b > total) b = total;
        if (a < b) fn(ctx, a, b);
        atomic_fetch_add_explicit(&P.done, 1, memory_order_release);
    }
}

static uint32_t current_job(void) { return JOB_OF(atomic_load(&P.counter)); }

static void *worker(void *arg)
{
    uint32_t seen = (uint32_t)(uintptr_t)arg;
    for (;;) {
        uint32_t job = current_job();
        if (job == seen) {
            long deadline = now_ns() + P.spin_ns;
            int spins = 0;
            while ((job = current_job()) == seen) {
                SM_RELAX();
                if ((++spins & 63) == 0 && now_ns() > deadline) break;
            }
            if (job == seen) {
                pthread_mutex_lock(&P.mu);
                atomic_fetch_add(&P.sleepers, 1);
                while ((job = current_job()) == seen) pthread_cond_wait(&P.cv, &P.mu);
                atomic_fetch_sub(&P.sleepers, 1);
                pthread_mutex_unlock(&P.mu);
            }
        }
        seen = job;
        if (atomic_load(&P.stop)) return NULL;
        work(job);
    }
}

/* publish a new job id with P.nchunks chunks, chunk 0 next, and wake sleeping workers */
static uint32_t publish(void)
{
    uint32_t job = current_job() + 1;
    atomic_store(&P.done, 0);
    atomic_store(&P.counter, (uint64_t)job << 32 | (uint64_t)P.nchunks << 16);
    if (atomic_load(&P.sleepers) > 0) {
        pthread_mutex_lock(&P.mu);
        pthread_cond_broadcast(&P.cv);
        pthread_mutex_unlock(&P.mu);
    }
    return job;
}

static void stop_workers(void)
{
    if (P.n <= 1) return;
    atomic_store(&P.stop, 1);
    P.nchunks = 0;
    publish();
    for (int i = 1; i < P.n; i++) pthread_join(P.th[i], NULL);
    atomic_store(&P.stop, 0);
    P.n = 1;
}

static void after_fork_child(void)
{
    /* the workers do not exist in a forked child: run single-threaded there */
    pthread_mutex_t fresh = PTHREAD_MUTEX_INITIALIZER;
    pthread_cond_t fresh_cv = PTHREAD_COND_INITIALIZER;
    P.mu = fresh;
    P.busy = fresh;
    P.cv = fresh_cv;
    P.n = 1;
    atomic_store(&P.sleepers, 0);
    atomic_store(&P.stop, 0);
}

int sm_pool_set_threads(int n)
{
    static int atfork_done = 0;
    if (!atfork_done) {
        pthread_atfork(NULL, NULL, after_fork_child);
        atfork_done = 1;
    }
    if (n < 1) n = 1;
    if (n > SM_MAX_THREADS) n = SM_MAX_THREADS;
    pthread_mutex_lock(&P.busy);
    stop_workers();
    uint32_t job = current_job();
    int started = 1;
    for (; started < n; started++)
        if (pthread_create(&P.th[started], NULL, worker, (void *)(uintptr_t)job) != 0) break;
    P.n = started;
    pthread_mutex_unlock(&P.busy);
    return started == n ? 0 : -1;
}

int sm_pool_threads(void) { return P.n; }
void sm_pool_set_spin_us(long us) { P.spin_ns = us < 0 ? 0 : us * 1000; }
long sm_pool_spin_us(void) { return P.spin_ns / 1000; }
void sm_pool_set_stalls_ns(long claim, long publish)
{
    P.claim_stall_ns = claim < 0 ? 0 : claim;
    P.publish_stall_ns = publish < 0 ? 0 : publish;
}

void sm_parallel_for(sm_task_fn fn, void *ctx, long total, long grain)
{
    if (total <= 0) return;
    if (grain < 1) grain = 1;
    if (P.n <= 1 || total <= grain || pthread_mutex_trylock(&P.busy) != 0) {
        fn(ctx, 0, total);
        return;
    }
    long units = (total + grain - 1) / grain;
    long nchunks = (long)P.n * SM_CHUNKS_PER_THREAD;
    P.fn = fn;
    P.ctx = ctx;
    P.total = total;
    P.grain = grain;
    P.nchunks = units < nchunks ? units : nchunks;
    if (P.publish_stall_ns) stall(P.publish_stall_ns);
    uint32_t job = publish();
    work(job);
    /* only chunks a worker already claimed remain; yield if that worker lost its core */
    for (int spins = 0; atomic_load_explicit(&P.done, memory_order_acquire) < P.nchunks; spins++) {
        if (spins < 4096) SM_RELAX();
        else sched_yield();
    }
    pthread_mutex_unlock(&P.busy);
}
