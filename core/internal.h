/* internal.h — what the core's files share and the public API does not show:
 * the context and buffer structs, the backend interface and kernel arguments. */
#ifndef SL_INTERNAL_H
#define SL_INTERNAL_H

#include "sparselab.h"

#include <stdarg.h>

#define SL__ERRMSG_BYTES 512

struct sl_ctx {
    sl_alloc_fn alloc;
    void *alloc_ud;
    int n_threads;
    volatile int *interrupt;
    size_t live_allocs, live_bytes;
    sl_status last_status;
    char err[SL__ERRMSG_BYTES];
};

struct sl_buffer {
    sl_ctx *ctx;
    int refcount;
    size_t bytes;
    void *data;
};

/* What a kernel gets. Inputs are contiguous; float inputs are f32, index
 * inputs i32, bit inputs u8. Outputs are allocated (contiguous, f32 unless
 * the op says otherwise) and the kernel fills every element. scratch holds
 * scratch_bytes bytes from the backend's scratch_bytes() for this call. */
typedef struct sl__kargs {
    sl_ctx *ctx;
    sl_op op;
    const void *params;
    const sl_tensor *in;
    sl_tensor *out;
    void *scratch;
    size_t scratch_bytes;
} sl__kargs;

typedef sl_status (*sl__kernel_fn)(const sl__kargs *a);

typedef struct sl__backend {
    const char *name;
    int (*available)(void);
    const char *(*status)(void);
    /* SL_OP__COUNT entries; NULL where the backend has no kernel. */
    const sl__kernel_fn *kernels;
    /* Scratch a call needs (0 when none); NULL means none for every op. */
    size_t (*scratch_bytes)(sl_op op, const void *params, const sl_tensor *in, int n_threads);
} sl__backend;

extern const sl__backend sl__backend_ref;
extern const sl__backend sl__backend_cpu;
extern const sl__backend sl__backend_cuda;

/* Records a failure with a va_list (sl_ctx_fail's worker). */
sl_status sl__vfail(sl_ctx *ctx, sl_status s, const char *fmt, va_list ap);

/* Attention geometry shared by validation and kernels. */
typedef struct sl__attn_dims {
    int64_t hq, hkv, nq, nk, d;
    int64_t group;        /* hq / hkv */
    int64_t offset;       /* nk - nq: query row r is at position offset + r */
    double scale;
} sl__attn_dims;

sl__attn_dims sl__attn_dims_of(const sl_tensor *q, const sl_tensor *k, double scale);

/* Runs fn(i, ud, thread) for i in [0, n) on up to n_threads threads, handing
 * out indices in order (dynamic scheduling). Returns SL_EINTERRUPT when the
 * context's interrupt flag was raised (remaining items are skipped). */
typedef void (*sl__parallel_fn)(int64_t i, void *ud, int thread);
sl_status sl__parallel_for(sl_ctx *ctx, int64_t n, int n_threads, sl__parallel_fn fn, void *ud);

/* The ops of issue 5 in correct_ext.c (correct.reshape, correct.cache_reuse,
 * correct.linear_branch, attn.linear, attn.pooled_kv): op.c's infer(),
 * content checks and cost function dispatch to these. */
sl_status sl__correct_ext_infer(sl_ctx *ctx, const sl_op_info *info, const void *params, const sl_tensor *in,
                                int out_ndim[], int64_t out_shape[][SL_MAX_DIMS], sl_dtype out_dtype[]);
sl_status sl__correct_ext_check(sl_ctx *ctx, const sl_op_info *info, const void *params, const sl_tensor *in);
double sl__correct_ext_flops(sl_op op, const void *params, const sl_tensor *in);
/* Shape rules, content checks and FLOP counts of pool.tokens, score.lowbit
 * and attn.bucket (op_token_score.c). */
sl_status sl__token_score_infer(sl_ctx *ctx, sl_op op, const void *params, const sl_tensor *in, int out_ndim[],
                           int64_t out_shape[][SL_MAX_DIMS], sl_dtype out_dtype[]);
sl_status sl__token_score_check_contents(sl_ctx *ctx, sl_op op, const sl_tensor *in);
double sl__token_score_flops(sl_op op, const void *params, const sl_tensor *in);
/* Input checks shared by the estimator validators (op_check.c): a float
 * tensor dtype; a float [H, N, D] input named nm; q = in[0], k = in[1] with
 * equal head_dim, Hq a multiple of Hkv and n_q <= n_k. */
int sl__op_is_float(sl_dtype t);
sl_status sl__op_need_float3(sl_ctx *ctx, const sl_op_info *info, const sl_tensor *t, const char *nm);
sl_status sl__op_qk_pair(sl_ctx *ctx, const sl_op_info *info, const sl_tensor *in);
/* Shape rules, content checks and FLOP counts of score.antidiag,
 * score.strided, score.anchor and gather.rows (op_stripe.c). */
sl_status sl__stripe_infer(sl_ctx *ctx, sl_op op, const void *params, const sl_tensor *in, int out_ndim[],
                            int64_t out_shape[][SL_MAX_DIMS], sl_dtype out_dtype[]);
sl_status sl__stripe_check_contents(sl_ctx *ctx, sl_op op, const sl_tensor *in);
double sl__stripe_flops(sl_op op, const void *params, const sl_tensor *in);

#endif
