/* cpu/parallel.c — the cpu kernels' parallel-for: the core's thread pool
 * with OpenBLAS held to one thread per work item. */
#include "parallel.h"

#include <cblas.h>

void sl__cpu_blas_single(void)
{
    if (openblas_get_num_threads() != 1)
        openblas_set_num_threads(1);
}

sl_status sl__cpu_parallel(sl_ctx *ctx, int64_t n, sl__parallel_fn fn, void *ud)
{
    int saved = openblas_get_num_threads();
    sl__cpu_blas_single();
    sl_status s = sl__parallel_for(ctx, n, sl_ctx_threads(ctx), fn, ud);
    if (saved != 1)
        openblas_set_num_threads(saved);
    return s;
}
