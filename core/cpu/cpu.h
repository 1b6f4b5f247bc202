/* cpu/cpu.h — the cpu backend's kernels and helpers. */
#ifndef SL_CPU_H
#define SL_CPU_H

#include "../internal.h"

/* Hot loops are built for AVX2+FMA and a portable fallback; the loader
 * picks one at run time, so the library runs on any x86-64. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_ADDRESS__)
#define SL__CPU_VECTOR __attribute__((target_clones("arch=haswell", "default")))
#else
#define SL__CPU_VECTOR
#endif

sl_status sl__cpu_attn_dense(const sl__kargs *a);
sl_status sl__cpu_attn_block_sparse(const sl__kargs *a);
size_t sl__cpu_attn_scratch(sl_op op, const void *params, const sl_tensor *in, int n_threads);

/* Our kernels parallelise over work items themselves, so each sgemm they
 * call must run on the calling thread alone. */
void sl__cpu_blas_single(void);

#endif
