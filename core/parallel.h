/* parallel.h — a parallel for over [0, n) on the context's threads (parallel.c). */
#ifndef SL_PARALLEL_H
#define SL_PARALLEL_H

#include "internal.h"

/* Runs fn(i, ud, thread) for i in [0, n) on up to n_threads threads, handing
 * out indices in order (dynamic scheduling). Returns SL_EINTERRUPT when the
 * context's interrupt flag was raised (remaining items are skipped). */
typedef void (*sl__parallel_fn)(int64_t i, void *ud, int thread);
sl_status sl__parallel_for(sl_ctx *ctx, int64_t n, int n_threads, sl__parallel_fn fn, void *ud);

#endif
