/* parallel.c — a parallel for over [0, n) with dynamic scheduling on pthreads,
 * used by the cpu backend; threads live only for the duration of one call. */
#include "parallel.h"

#include <pthread.h>
#include <stdatomic.h>

typedef struct par_job {
    sl_ctx *ctx;
    int64_t n;
    atomic_llong next;
    atomic_int stopped;
    sl__parallel_fn fn;
    void *ud;
} par_job;

typedef struct par_arg { par_job *job; int thread; } par_arg;

static void *worker(void *p)
{
    par_arg *a = p;
    par_job *j = a->job;
    for (;;) {
        if (atomic_load(&j->stopped))
            break;
        if (sl_ctx_interrupted(j->ctx)) {
            atomic_store(&j->stopped, 1);
            break;
        }
        int64_t i = atomic_fetch_add(&j->next, 1);
        if (i >= j->n)
            break;
        j->fn(i, j->ud, a->thread);
    }
    return NULL;
}

#define SL__MAX_THREADS 256

sl_status sl__parallel_for(sl_ctx *ctx, int64_t n, int n_threads, sl__parallel_fn fn, void *ud)
{
    par_job job = {.ctx = ctx, .n = n, .fn = fn, .ud = ud};
    atomic_init(&job.next, 0);
    atomic_init(&job.stopped, 0);
    if (n_threads > SL__MAX_THREADS)
        n_threads = SL__MAX_THREADS;
    if (n_threads > n)
        n_threads = (int)n;
    if (n_threads < 1)
        n_threads = 1;
    pthread_t tid[SL__MAX_THREADS];
    par_arg args[SL__MAX_THREADS];
    int started = 1;
    for (int t = 1; t < n_threads; t++) {
        args[t] = (par_arg){&job, t};
        if (pthread_create(&tid[t], NULL, worker, &args[t]) != 0)
            break; /* fewer threads still finish the work */
        started++;
    }
    args[0] = (par_arg){&job, 0};
    worker(&args[0]);
    for (int t = 1; t < started; t++)
        pthread_join(tid[t], NULL);
    if (atomic_load(&job.stopped))
        return sl_ctx_fail(ctx, SL_EINTERRUPT, "interrupted");
    return SL_OK;
}
