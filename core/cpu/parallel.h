/* cpu/parallel.h — the cpu kernels' parallel-for (cpu/parallel.c). */
#ifndef SL_CPU_PARALLEL_H
#define SL_CPU_PARALLEL_H

#include "../parallel.h"

/* Our kernels parallelise over work items themselves, so each sgemm they
 * call must run on the calling thread alone. */
void sl__cpu_blas_single(void);
/* sl__parallel_for on the context's threads with OpenBLAS held to one thread
 * per call for its duration (each work item calls sgemm on its own thread);
 * OpenBLAS's own thread count is restored afterwards, so other users (the
 * model runner, the sgemm ceiling) keep theirs. */
sl_status sl__cpu_parallel(sl_ctx *ctx, int64_t n, sl__parallel_fn fn, void *ud);

#endif
