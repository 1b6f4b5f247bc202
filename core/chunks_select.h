/* chunks_select.h — select.chunks (issue 20, session 4): the capacity of a
 * query block's list, shared by the shape rule (op_tsel.c) and the kernels
 * (ref/tsel.c, cpu/tsel.c, cuda/tsel.cu); the contract is in sparselab.h. */
#ifndef SL_CHUNKS_SELECT_H
#define SL_CHUNKS_SELECT_H

#include "sparselab.h"

#if defined(__CUDACC__)
#define SL_CHUNKS_HD __host__ __device__
#else
#define SL_CHUNKS_HD
#endif

/* Entries query block r may list: min(budget, lo), 0 when it lists nothing. */
SL_CHUNKS_HD static inline int64_t sl__chunks_capacity(const sl_select_chunks_params *p, int64_t r)
{
    int64_t A = (r + 1) * p->block < p->n ? (r + 1) * p->block : p->n;
    int64_t lo = A - p->local_tokens > 0 ? A - p->local_tokens : 0;
    if (r * p->block >= p->ctx || lo == 0)
        return 0;
    int64_t budget = A <= p->topk ? lo : p->topk - p->local_tokens;
    if (budget <= 0)
        return 0;
    return budget < lo ? budget : lo;
}

/* lo of query block r: the end of the keys it may list. */
SL_CHUNKS_HD static inline int64_t sl__chunks_lo(const sl_select_chunks_params *p, int64_t r)
{
    int64_t A = (r + 1) * p->block < p->n ? (r + 1) * p->block : p->n;
    return A - p->local_tokens > 0 ? A - p->local_tokens : 0;
}

#endif
