/* cpu/cpu.h — the cpu backend's kernels and helpers. */
#ifndef SL_CPU_H
#define SL_CPU_H

#include "../internal.h"

/* Row operations of the online softmax, in the best variant this CPU runs
 * (AVX2+FMA or portable C): exp_sum replaces s[i] by exp(s[i] - m) and
 * returns the sum; max returns max(m, s[...]); scale multiplies in place. */
typedef struct sl__cpu_rowops {
    float (*exp_sum)(float *s, int64_t n, float m);
    float (*max)(const float *s, int64_t n, float m);
    void (*scale)(float *x, int64_t n, float a);
} sl__cpu_rowops;

sl__cpu_rowops sl__cpu_rowops_get(void);

sl_status sl__cpu_attn_dense(const sl__kargs *a);
sl_status sl__cpu_attn_block_sparse(const sl__kargs *a);
size_t sl__cpu_attn_scratch(sl_op op, const void *params, const sl_tensor *in, int n_threads);

/* Our kernels parallelise over work items themselves, so each sgemm they
 * call must run on the calling thread alone. */
void sl__cpu_blas_single(void);

#endif
