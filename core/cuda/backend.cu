// cuda/backend.cu — the CUDA backend: device probe, kernel table, the staging of host tensors through device memory, and the host side of each executor.
#include "dialect.cuh"
#include "attn.cuh"
#include "sparse.cuh"
#include "correct.cuh"
#include "score.cuh"
#include "correct_ext.cuh"
#include "token_score.cuh"
#include "stripe.cuh"

extern "C" {
#include "../internal.h"
}
#include "attn_mma.cuh"  // wmma glue: bf16 / f16 attention on tensor cores

#include <cuda_runtime.h>

// Until the dispatcher hands kernels device buffers, each call stages its
// tensors: every input and output gets a device copy (cudaMalloc, cudaMemcpy),
// the kernel runs on the legacy default stream, outputs are copied back and
// everything is freed again, on success and on every failure path.

namespace {

const char *op_name(const sl__kargs *a) { return sl_op_info_get(a->op)->name; }

sl_status cuda_fail(const sl__kargs *a, cudaError_t err, const char *what)
{
    return sl_ctx_fail(a->ctx, err == cudaErrorMemoryAllocation ? SL_EDEVMEM : SL_EDEVICE, "%s[cuda]: %s: %s",
                       op_name(a), what, cudaGetErrorString(err));
}

constexpr int kMaxTensors = SL_OP_MAX_INPUTS;

// Device copies of a call's inputs and outputs. A tensor of 0 bytes has none (NULL).
struct staging {
    void *in[kMaxTensors] = {};
    void *out[kMaxTensors] = {};
    int n_in = 0, n_out = 0;

    ~staging()
    {
        for (int i = 0; i < n_in; i++)
            cudaFree(in[i]);
        for (int i = 0; i < n_out; i++)
            cudaFree(out[i]);
    }
};

sl_status stage_alloc(const sl__kargs *a, size_t bytes, const char *kind, int i, void **p)
{
    if (bytes == 0)
        return SL_OK;
    cudaError_t err = cudaMalloc(p, bytes);
    if (err == cudaSuccess)
        return SL_OK;
    *p = nullptr;
    (void)cudaGetLastError();  // an allocation failure is not sticky; clear it
    return sl_ctx_fail(a->ctx, err == cudaErrorMemoryAllocation ? SL_EDEVMEM : SL_EDEVICE,
                       "%s[cuda]: cudaMalloc of %zu bytes for %s %d failed: %s", op_name(a), bytes, kind, i,
                       cudaGetErrorString(err));
}

// Allocates and uploads every input and allocates every output.
sl_status stage_in(const sl__kargs *a, staging *st)
{
    const sl_op_info *info = sl_op_info_get(a->op);
    (void)cudaGetLastError();  // a stale error from earlier work must not be blamed on this call
    for (int i = 0; i < info->n_in; i++) {
        size_t bytes = a->in[i].buf ? sl_tensor_nbytes(&a->in[i]) : 0;  // an optional input left out has none
        st->n_in = i + 1;
        sl_status s = stage_alloc(a, bytes, "input", i, &st->in[i]);
        if (s != SL_OK)
            return s;
        cudaError_t err = bytes ? cudaMemcpy(st->in[i], a->in[i].data, bytes, cudaMemcpyHostToDevice) : cudaSuccess;
        if (err != cudaSuccess)
            return cuda_fail(a, err, "copying an input to the device");
    }
    for (int i = 0; i < info->n_out; i++) {
        st->n_out = i + 1;
        sl_status s = stage_alloc(a, sl_tensor_nbytes(&a->out[i]), "output", i, &st->out[i]);
        if (s != SL_OK)
            return s;
    }
    return SL_OK;
}

// Checks the launch, waits for the kernel and downloads every output.
sl_status stage_out(const sl__kargs *a, staging *st, cudaError_t launched)
{
    if (launched != cudaSuccess)
        return cuda_fail(a, launched, "kernel launch failed");
    cudaError_t err = cudaStreamSynchronize(0);
    if (err != cudaSuccess)
        return cuda_fail(a, err, "kernel failed");
    for (int i = 0; i < st->n_out; i++) {
        size_t bytes = sl_tensor_nbytes(&a->out[i]);
        err = bytes ? cudaMemcpy(a->out[i].data, st->out[i], bytes, cudaMemcpyDeviceToHost) : cudaSuccess;
        if (err != cudaSuccess)
            return cuda_fail(a, err, "copying an output to the host");
    }
    return SL_OK;
}

// Shared by both executors: checks sizes, stages, fills the pointer part of
// the arguments, launches through launch and copies the results back.
sl_status run_attention(const sl__kargs *a, double scale, int64_t bq, int64_t n_qb, sl__cuda_attn *args,
                        cudaError_t (*launch)(const sl__cuda_attn &, cudaStream_t))
{
    const sl__attn_dims dm = sl__attn_dims_of(&a->in[0], &a->in[1], scale);
    const char *why = sl__cuda_attn_unsupported(dm.hq, dm.nq, dm.nk, dm.d, bq, n_qb);
    if (why)
        return sl_ctx_fail(a->ctx, SL_EUNSUPPORTED, "%s[cuda]: %s; found head_dim %lld, %lld query heads, n_q %lld, n_k %lld",
                           op_name(a), why, (long long)dm.d, (long long)dm.hq, (long long)dm.nq, (long long)dm.nk);
    if (sl_ctx_interrupted(a->ctx))
        return sl_ctx_fail(a->ctx, SL_EINTERRUPT, "%s[cuda]: interrupted", op_name(a));
    if (dm.hq == 0 || dm.nq == 0)
        return SL_OK;  // no output element: nothing to launch (an empty grid is an error)

    staging st;
    sl_status s = stage_in(a, &st);
    if (s != SL_OK)
        return s;
    args->q = static_cast<const float *>(st.in[0]);
    args->k = static_cast<const float *>(st.in[1]);
    args->v = static_cast<const float *>(st.in[2]);
    args->o = static_cast<float *>(st.out[0]);
    args->lse = static_cast<float *>(st.out[1]);
    args->hq = (int)dm.hq, args->hkv = (int)dm.hkv, args->nq = (int)dm.nq, args->nk = (int)dm.nk, args->d = (int)dm.d;
    args->scale_log2 = (float)(dm.scale * 1.4426950408889634);  // log2(e)
    if (a->op == SL_OP_ATTN_BLOCK_SPARSE || a->op == SL_OP_ATTN_VS_MIXED) {
        args->row_ptr = static_cast<const int32_t *>(st.in[3]);
        args->col_idx = static_cast<const int32_t *>(st.in[4]);
        args->part = static_cast<const int32_t *>(st.in[5]);
        args->bits = static_cast<const uint8_t *>(st.in[6]);
    }
    if (a->op == SL_OP_ATTN_VS_MIXED) {
        args->list_ptr = static_cast<const int32_t *>(st.in[7]);
        args->list_col = static_cast<const int32_t *>(st.in[8]);
        args->hl = (int)a->in[7].shape[0];
        args->bias = static_cast<const float *>(st.in[9]);
        args->bias_heads = a->in[9].buf ? (int)a->in[9].shape[0] : 0;
        args->state_o = static_cast<const float *>(st.in[10]);
        args->state_lse = static_cast<const float *>(st.in[11]);
    }
    return stage_out(a, &st, launch(*args, 0));
}

sl_status cuda_attn_dense(const sl__kargs *a)
{
    const sl_attn_params *p = static_cast<const sl_attn_params *>(a->params);
    sl__cuda_attn args = {};
    args.causal = p->causal != 0;
    // -- wmma glue: bf16 / f16 q, k, v on tensor cores (attn_mma.cuh); a mix of dtypes runs as f32.
    const int mma = sl__mma_dtype(a);
    if (mma < 0)
        return sl__mma_as_f32(a, cuda_attn_dense);
    return run_attention(a, p->scale, 0, 0, &args,
                         mma == 1 ? sl__cuda_attn_mma_dense_bf16 : mma == 2 ? sl__cuda_attn_mma_dense_f16 : sl__cuda_attn_dense);
}

sl_status cuda_attn_block_sparse(const sl__kargs *a)
{
    const sl_attn_block_params *p = static_cast<const sl_attn_block_params *>(a->params);
    const sl_tensor *row_ptr = &a->in[3];
    sl__cuda_attn args = {};
    args.hm = (int)row_ptr->shape[0];
    args.n_qb = (int)(row_ptr->shape[1] - 1);
    args.bq = (int)p->bq;
    args.bk = (int)p->bk;
    args.pv_skip_log2 = (float)(p->pv_skip * 1.4426950408889634);  // log2(e): scores run in base 2
    // -- wmma glue: bf16 / f16 q, k, v on tensor cores (attn_mma.cuh); pv_skip or a mix of dtypes runs as f32.
    const int mma = sl__mma_dtype(a);
    if (mma < 0 || (mma > 0 && args.pv_skip_log2 > 0.f))
        return sl__mma_as_f32(a, cuda_attn_block_sparse);
    return run_attention(a, p->scale, p->bq, args.n_qb, &args,
                         mma == 1   ? sl__cuda_attn_mma_block_sparse_bf16
                         : mma == 2 ? sl__cuda_attn_mma_block_sparse_f16
                                    : sl__cuda_attn_block_sparse);
}

// attn.vs_mixed: the block kernel with the lists' columns after the blocks.
sl_status cuda_attn_vs_mixed(const sl__kargs *a)
{
    const sl_attn_vs_params *p = static_cast<const sl_attn_vs_params *>(a->params);
    const sl_tensor *row_ptr = &a->in[3];
    sl__cuda_attn args = {};
    args.hm = (int)row_ptr->shape[0];
    args.n_qb = (int)(row_ptr->shape[1] - 1);
    args.bq = (int)p->bq;
    args.bk = (int)p->bk;
    return run_attention(a, p->scale, p->bq, args.n_qb, &args, sl__cuda_attn_block_sparse);
}

// Device memory a call needs besides its staged tensors (the partials of
// split keys), freed on every path.
struct device_scratch {
    void *p = nullptr;
    ~device_scratch() { cudaFree(p); }
};

// Splits of the keys, so that a decode call (a few CTAs) still fills the
// device: about two CTAs per SM, at least one 32-key chunk per warp of a split.
int choose_splits(int64_t ctas, int64_t max_keys)
{
    int dev = 0, sms = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess)
        sms = 1;
    int64_t want = ctas > 0 ? (2 * (int64_t)sms + ctas - 1) / ctas : 1;
    int64_t cap = (max_keys + 127) / 128;
    int64_t n = want < cap ? want : cap;
    return n < 1 ? 1 : n > 64 ? 64 : (int)n;
}

// attn.token_sparse (list) and attn.rows: the gather kernel writes a partial
// per split of the keys, the merge kernel combines them with the state.
sl_status cuda_attn_token_sparse(const sl__kargs *a);

sl_status run_gather(const sl__kargs *a, bool list)
{
    // -- wmma glue: bf16 / f16 q, k, v of attn.token_sparse on tensor cores (attn_mma.cuh); a mix runs as f32.
    const int mma = list ? sl__mma_dtype(a) : 0;
    if (mma < 0)
        return sl__mma_as_f32(a, cuda_attn_token_sparse);
    const double scale = list ? static_cast<const sl_attn_token_params *>(a->params)->scale
                              : static_cast<const sl_attn_rows_params *>(a->params)->scale;
    const sl__attn_dims dm = sl__attn_dims_of(&a->in[0], &a->in[1], scale);
    const int64_t n_out = list ? dm.nq : a->in[3].shape[1], kr = sl__cuda_gather_rows_per_cta();
    int64_t b = 1, n_e = 0, n_rg = 0, groups, max_keys = 0;
    if (list) {
        b = static_cast<const sl_attn_token_params *>(a->params)->rows_per_entry;
        n_e = a->in[3].shape[1] - 1;
        n_rg = ((b < dm.nq ? b : dm.nq) + kr - 1) / kr;
        groups = n_e * n_rg;
        const int32_t *rp = static_cast<const int32_t *>(a->in[3].data);
        for (int64_t h = 0; h < a->in[3].shape[0]; h++)
            for (int64_t e = 0; e < n_e; e++) {
                int64_t n = rp[h * (n_e + 1) + e + 1] - rp[h * (n_e + 1) + e];
                max_keys = n > max_keys ? n : max_keys;
            }
    } else {
        groups = (n_out + kr - 1) / kr;
        const int32_t *lim = static_cast<const int32_t *>(a->in[4].data);
        for (int64_t i = 0; i < sl_tensor_numel(&a->in[4]); i++)
            max_keys = lim[i] > max_keys ? lim[i] : max_keys;
    }
    const char *why = sl__cuda_gather_unsupported(dm.hq, dm.d, groups);
    if (!why && (dm.nq > (1 << 30) || dm.nk > (1 << 30) || n_out > (1 << 30)))
        why = "more than 2^30 tokens or rows";
    if (why)
        return sl_ctx_fail(a->ctx, SL_EUNSUPPORTED, "%s[cuda]: %s; found head_dim %lld, %lld query heads",
                           op_name(a), why, (long long)dm.d, (long long)dm.hq);
    if (sl_ctx_interrupted(a->ctx))
        return sl_ctx_fail(a->ctx, SL_EINTERRUPT, "%s[cuda]: interrupted", op_name(a));
    if (dm.hq == 0 || n_out == 0)
        return SL_OK;

    const int n_split = choose_splits(groups * dm.hq, max_keys);
    staging st;
    sl_status s = stage_in(a, &st);
    if (s != SL_OK)
        return s;
    device_scratch ws;
    const size_t part_floats = (size_t)n_split * (size_t)dm.hq * (size_t)n_out;
    s = stage_alloc(a, part_floats * (size_t)(dm.d + 1) * sizeof(float), "partials", 0, &ws.p);
    if (s != SL_OK)
        return s;
    sl__cuda_gather g = {};
    g.q = static_cast<const float *>(st.in[0]);
    g.k = static_cast<const float *>(st.in[1]);
    g.v = static_cast<const float *>(st.in[2]);
    g.bias = static_cast<const float *>(st.in[5]);
    g.bias_heads = a->in[5].buf ? (int)a->in[5].shape[0] : 0;
    g.part_o = static_cast<float *>(ws.p);
    g.part_lse = g.part_o + part_floats * (size_t)dm.d;
    g.hq = (int)dm.hq, g.hkv = (int)dm.hkv, g.nq = (int)dm.nq, g.nk = (int)dm.nk, g.d = (int)dm.d;
    g.n_out = (int)n_out, g.n_split = n_split;
    g.scale_log2 = (float)(dm.scale * 1.4426950408889634);
    if (list) {
        g.row_ptr = static_cast<const int32_t *>(st.in[3]);
        g.col = static_cast<const int32_t *>(st.in[4]);
        g.hm = (int)a->in[3].shape[0], g.n_e = (int)n_e, g.b = (int)(b < dm.nq ? b : dm.nq), g.n_rg = (int)n_rg;
    } else {
        g.rows = static_cast<const int32_t *>(st.in[3]);
        g.limits = static_cast<const int32_t *>(st.in[4]);
        g.hr = (int)a->in[3].shape[0];
    }
    sl__cuda_merge_args mg = {g.part_o, g.part_lse, static_cast<const float *>(st.in[6]), static_cast<const float *>(st.in[7]),
                         static_cast<float *>(st.out[0]), static_cast<float *>(st.out[1]), dm.hq * n_out, (int)dm.d,
                         n_split};
    if (mma > 0)  // -- wmma glue: O and LSE straight from the kernel, starting from the state
        return stage_out(a, &st, sl__cuda_token_sparse_mma(g, mg.o2, mg.lse2, mg.o, mg.lse, mma == 1, 0));
    cudaError_t err = list ? sl__cuda_token_sparse(g, 0) : sl__cuda_rows(g, 0);
    if (err == cudaSuccess)
        err = sl__cuda_merge(mg, 0);
    return stage_out(a, &st, err);
}

sl_status cuda_attn_token_sparse(const sl__kargs *a) { return run_gather(a, true); }
sl_status cuda_attn_rows(const sl__kargs *a) { return run_gather(a, false); }

sl_status cuda_attn_lse_merge(const sl__kargs *a)
{
    const sl_tensor *o1 = &a->in[0];
    const int64_t rows = sl_tensor_numel(&a->in[1]), d = o1->shape[o1->ndim - 1];
    if (d > INT32_MAX)
        return sl_ctx_fail(a->ctx, SL_EUNSUPPORTED, "%s[cuda]: last dim over 2^31 - 1", op_name(a));
    if (rows == 0)
        return SL_OK;
    staging st;
    sl_status s = stage_in(a, &st);
    if (s != SL_OK)
        return s;
    sl__cuda_merge_args mg = {static_cast<const float *>(st.in[0]), static_cast<const float *>(st.in[1]),
                         static_cast<const float *>(st.in[2]), static_cast<const float *>(st.in[3]),
                         static_cast<float *>(st.out[0]), static_cast<float *>(st.out[1]), rows, (int)d, 1};
    return stage_out(a, &st, sl__cuda_merge(mg, 0));
}

sl_status cuda_correct_delta(const sl__kargs *a)
{
    const sl_correct_delta_params *p = static_cast<const sl_correct_delta_params *>(a->params);
    sl__cuda_delta g = {};
    g.h = a->in[0].shape[0], g.n = a->in[0].shape[1], g.d = a->in[0].shape[2], g.gamma = p->gamma;
    int64_t t = 0;
    sl_correct_delta_layout(g.n, g.gamma, p->tail, &g.s_p, &g.g_n, &t);
    g.r_n = g.g_n + t;
    g.smooth = p->smooth != 0, g.mode = (int)p->mode;
    if (g.h * g.n * g.d == 0)
        return SL_OK;
    if ((g.h * g.n * g.d + 255) / 256 > INT32_MAX)
        return sl_ctx_fail(a->ctx, SL_EUNSUPPORTED, "%s[cuda]: more than 2^31 blocks of 256 elements", op_name(a));
    staging st;
    sl_status s = stage_in(a, &st);
    if (s != SL_OK)
        return s;
    g.o_sparse = static_cast<const float *>(st.in[0]);
    g.lse_sparse = static_cast<const float *>(st.in[1]);
    g.o_rows = static_cast<const float *>(st.in[2]);
    g.lse_rows = static_cast<const float *>(st.in[3]);
    g.o = static_cast<float *>(st.out[0]);
    g.lse = static_cast<float *>(st.out[1]);
    return stage_out(a, &st, sl__cuda_correct_delta(g, 0));
}

// Sizes the correct.* kernels index with int.
bool fits_int(const sl__kargs *a)
{
    const sl_op_info *info = sl_op_info_get(a->op);
    for (int i = 0; i < info->n_in; i++)
        if (a->in[i].buf && sl_tensor_numel(&a->in[i]) > INT32_MAX)
            return false;
    return true;
}

sl_status cuda_correct_rectify(const sl__kargs *a)
{
    const sl_correct_rectify_params *p = static_cast<const sl_correct_rectify_params *>(a->params);
    const sl__attn_dims dm = sl__attn_dims_of(&a->in[0], &a->in[1], p->scale);
    if (!fits_int(a) || dm.hq > 65535)
        return sl_ctx_fail(a->ctx, SL_EUNSUPPORTED, "%s[cuda]: more than 2^31 - 1 elements or 65535 heads", op_name(a));
    if (dm.hq == 0 || dm.nq == 0)
        return SL_OK;
    sl__cuda_rectify g = {};
    g.hq = (int)dm.hq, g.hkv = (int)dm.hkv, g.nq = (int)dm.nq, g.nk = (int)dm.nk, g.d = (int)dm.d;
    g.bq = (int)p->bq, g.bk = (int)p->bk, g.nqb = (int)((dm.nq + p->bq - 1) / p->bq), g.nkb = (int)((dm.nk + p->bk - 1) / p->bk);
    g.hm = (int)a->in[3].shape[0], g.causal = p->causal != 0, g.ipar = p->ipar != 0, g.gapr = p->gapr != 0;
    g.scale = (float)dm.scale;
    staging st;
    sl_status s = stage_in(a, &st);
    if (s != SL_OK)
        return s;
    const size_t kv = (size_t)g.hkv * g.nkb * g.d, qb = (size_t)g.hq * g.nqb * g.d, pairs = (size_t)g.hq * g.nqb * g.nkb;
    device_scratch ws;
    s = stage_alloc(a, (3 * kv + 2 * qb + pairs) * sizeof(float) + pairs, "rectify scratch", 0, &ws.p);
    if (s != SL_OK)
        return s;
    float *f = static_cast<float *>(ws.p);
    g.kbar = f, g.kdev = f + kv, g.vbar = f + 2 * kv, g.qbar = f + 3 * kv, g.qdev = g.qbar + qb, g.score = g.qdev + qb;
    g.flag = reinterpret_cast<uint8_t *>(g.score + pairs);
    g.q = static_cast<const float *>(st.in[0]);
    g.k = static_cast<const float *>(st.in[1]);
    g.v = static_cast<const float *>(st.in[2]);
    g.row_ptr = static_cast<const int32_t *>(st.in[3]);
    g.col_idx = static_cast<const int32_t *>(st.in[4]);
    g.o_sparse = static_cast<const float *>(st.in[7]);
    g.o = static_cast<float *>(st.out[0]);
    g.r = static_cast<float *>(st.out[1]);
    g.rest = static_cast<float *>(st.out[2]);
    g.trusted = static_cast<float *>(st.out[3]);
    return stage_out(a, &st, sl__cuda_correct_rectify(g, 0));
}

sl_status cuda_correct_compensate(const sl__kargs *a)
{
    const sl_correct_comp_params *p = static_cast<const sl_correct_comp_params *>(a->params);
    if (!fits_int(a) || a->in[0].shape[0] > 65535)
        return sl_ctx_fail(a->ctx, SL_EUNSUPPORTED, "%s[cuda]: more than 2^31 - 1 elements or 65535 heads", op_name(a));
    sl__cuda_comp g = {};
    g.hq = (int)a->in[0].shape[0], g.nq = (int)a->in[0].shape[1], g.d = (int)a->in[0].shape[2];
    g.hkv = (int)a->in[3].shape[0], g.nk = (int)a->in[3].shape[1];
    g.estimate = (int)p->estimate, g.vmc = p->vmc != 0, g.causal = p->causal != 0, g.min_len = p->min_len;
    g.sdc_scale = p->sdc_scale;
    if (g.hq == 0 || g.nq == 0)
        return SL_OK;
    staging st;
    sl_status s = stage_in(a, &st);
    if (s != SL_OK)
        return s;
    device_scratch ws;
    if (g.vmc && (s = stage_alloc(a, (size_t)g.hkv * g.nk * g.d * sizeof(float), "prefix sums", 0, &ws.p)) != SL_OK)
        return s;
    g.cum = static_cast<float *>(ws.p);
    g.o_in = static_cast<const float *>(st.in[0]);
    g.lse = static_cast<const float *>(st.in[1]);
    g.lse_ref = static_cast<const float *>(st.in[2]);
    g.v = static_cast<const float *>(st.in[3]);
    g.o = static_cast<float *>(st.out[0]);
    g.lse_out = static_cast<float *>(st.out[1]);
    g.lost = static_cast<float *>(st.out[2]);
    return stage_out(a, &st, sl__cuda_correct_compensate(g, 0));
}

sl_status cuda_correct_smooth_k(const sl__kargs *a)
{
    const sl_correct_smooth_params *p = static_cast<const sl_correct_smooth_params *>(a->params);
    const sl__attn_dims dm = sl__attn_dims_of(&a->in[0], &a->in[1], p->scale);
    if (!fits_int(a))
        return sl_ctx_fail(a->ctx, SL_EUNSUPPORTED, "%s[cuda]: more than 2^31 - 1 elements", op_name(a));
    if (dm.hkv == 0 || dm.nk == 0)
        return SL_OK;
    sl__cuda_smooth g = {};
    g.hq = (int)dm.hq, g.hkv = (int)dm.hkv, g.nq = (int)dm.nq, g.nk = (int)dm.nk, g.d = (int)dm.d;
    g.scale = (float)dm.scale;
    staging st;
    sl_status s = stage_in(a, &st);
    if (s != SL_OK)
        return s;
    device_scratch ws;
    if ((s = stage_alloc(a, (size_t)g.hkv * g.d * sizeof(float), "key means", 0, &ws.p)) != SL_OK)
        return s;
    g.mean = static_cast<float *>(ws.p);
    g.q = static_cast<const float *>(st.in[0]);
    g.k = static_cast<const float *>(st.in[1]);
    g.lse = static_cast<const float *>(st.in[2]);
    g.k_out = static_cast<float *>(st.out[0]);
    g.lse_out = static_cast<float *>(st.out[1]);
    return stage_out(a, &st, sl__cuda_correct_smooth_k(g, 0));
}

sl_status cuda_correct_lepe(const sl__kargs *a)
{
    const sl_correct_lepe_params *p = static_cast<const sl_correct_lepe_params *>(a->params);
    if (!fits_int(a) || (sl_tensor_numel(&a->in[0]) + 255) / 256 > INT32_MAX)
        return sl_ctx_fail(a->ctx, SL_EUNSUPPORTED, "%s[cuda]: more than 2^31 - 1 elements", op_name(a));
    if (sl_tensor_numel(&a->in[0]) == 0)
        return SL_OK;
    sl__cuda_lepe g = {};
    g.hq = (int)a->in[0].shape[0], g.nq = (int)a->in[0].shape[1], g.d = (int)a->in[0].shape[2];
    g.hkv = (int)a->in[1].shape[0], g.nk = (int)a->in[1].shape[1];
    g.kernel = (int)p->kernel, g.causal = p->causal != 0, g.alpha = (float)p->alpha;
    g.w_heads = a->in[2].buf ? (int)a->in[2].shape[0] : 0;
    staging st;
    sl_status s = stage_in(a, &st);
    if (s != SL_OK)
        return s;
    g.o_in = static_cast<const float *>(st.in[0]);
    g.v = static_cast<const float *>(st.in[1]);
    g.w = static_cast<const float *>(st.in[2]);
    g.o = static_cast<float *>(st.out[0]);
    return stage_out(a, &st, sl__cuda_correct_lepe(g, 0));
}

int cuda_available(void)
{
    int n = 0;
    return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

// The status must outlive the call without a global buffer, so each likely
// cause is spelled out as one literal (the text is cudaGetErrorString's).
#define SL__NO_DEVICE(code, text) \
    case code: return "no CUDA device: " text;

const char *cuda_status(void)
{
    int n = 0;
    switch (cudaGetDeviceCount(&n)) {
    case cudaSuccess: return n > 0 ? "" : "no CUDA device: the runtime reports 0 devices";
    SL__NO_DEVICE(cudaErrorNoDevice, "no CUDA-capable device is detected")
    SL__NO_DEVICE(cudaErrorInsufficientDriver, "CUDA driver version is insufficient for CUDA runtime version")
    SL__NO_DEVICE(cudaErrorInitializationError, "initialization error")
    SL__NO_DEVICE(cudaErrorSystemDriverMismatch, "system has unsupported display driver / cuda driver combination")
    SL__NO_DEVICE(cudaErrorCompatNotSupportedOnDevice, "forward compatibility was attempted on non supported HW")
    SL__NO_DEVICE(cudaErrorDevicesUnavailable, "CUDA-capable device(s) is/are busy or unavailable")
    SL__NO_DEVICE(cudaErrorStubLibrary, "CUDA driver is a stub library")
    SL__NO_DEVICE(cudaErrorNotPermitted, "operation not permitted")
    SL__NO_DEVICE(cudaErrorOperatingSystem, "OS call failed or operation not supported on this OS")
    SL__NO_DEVICE(cudaErrorSystemNotReady, "system not yet initialized")
    default: return "no CUDA device: cudaGetDeviceCount failed";
    }
}

#undef SL__NO_DEVICE

// The kernel table, indexed by op: C++17 has no array designators, so a
// constexpr function fills it by name and SL_OP__COUNT fixes its length.
struct kernel_table {
    sl__kernel_fn fn[SL_OP__COUNT];
};

constexpr kernel_table make_kernel_table()
{
    kernel_table t = {};
    t.fn[SL_OP_ATTN_DENSE] = cuda_attn_dense;
    t.fn[SL_OP_ATTN_BLOCK_SPARSE] = cuda_attn_block_sparse;
    t.fn[SL_OP_ATTN_VS_MIXED] = cuda_attn_vs_mixed;
    t.fn[SL_OP_ATTN_TOKEN_SPARSE] = cuda_attn_token_sparse;
    t.fn[SL_OP_ATTN_ROWS] = cuda_attn_rows;
    t.fn[SL_OP_ATTN_LSE_MERGE] = cuda_attn_lse_merge;
    t.fn[SL_OP_CORRECT_RESHAPE] = sl__cuda_correct_reshape;
    t.fn[SL_OP_CORRECT_CACHE_REUSE] = sl__cuda_correct_cache_reuse;
    t.fn[SL_OP_CORRECT_LINEAR_BRANCH] = sl__cuda_correct_linear_branch;
    t.fn[SL_OP_ATTN_LINEAR] = sl__cuda_attn_linear;
    t.fn[SL_OP_ATTN_POOLED_KV] = sl__cuda_attn_pooled_kv;
    t.fn[SL_OP_CORRECT_DELTA] = cuda_correct_delta;
    t.fn[SL_OP_POOL_TOKENS] = sl__cuda_pool_tokens;
    t.fn[SL_OP_SCORE_LOWBIT] = sl__cuda_score_lowbit;
    t.fn[SL_OP_SCORE_ANTIDIAG] = sl__cuda_score_antidiag;
    t.fn[SL_OP_SCORE_STRIDED] = sl__cuda_score_strided;
    t.fn[SL_OP_SCORE_ANCHOR] = sl__cuda_score_anchor;
    t.fn[SL_OP_GATHER_ROWS] = sl__cuda_gather_rows;
    t.fn[SL_OP_ATTN_BUCKET] = sl__cuda_attn_bucket;
    t.fn[SL_OP_SCORE_HASH] = sl__cuda_score_hash;
    t.fn[SL_OP_SCORE_POOLED] = sl__cuda_score_pooled;
    t.fn[SL_OP_SCORE_LAST_Q] = sl__cuda_score_last_q;
    t.fn[SL_OP_SCORE_ROWS] = sl__cuda_score_rows;
    t.fn[SL_OP_SCORE_EXACT] = sl__cuda_score_exact;
    t.fn[SL_OP_REDUCE_COLUMNS] = sl__cuda_reduce_columns;
    t.fn[SL_OP_REDUCE_DIAGONALS] = sl__cuda_reduce_diagonals;
    t.fn[SL_OP_REDUCE_BLOCK] = sl__cuda_reduce_block;
    t.fn[SL_OP_REDUCE_HEADS] = sl__cuda_reduce_heads;
    t.fn[SL_OP_SELECT_TOPK] = sl__cuda_select_topk;
    t.fn[SL_OP_SELECT_TOPP] = sl__cuda_select_topp;
    t.fn[SL_OP_SELECT_THRESHOLD] = sl__cuda_select_threshold;
    t.fn[SL_OP_CORRECT_RECTIFY] = cuda_correct_rectify;
    t.fn[SL_OP_CORRECT_COMPENSATE] = cuda_correct_compensate;
    t.fn[SL_OP_CORRECT_SMOOTH_K] = cuda_correct_smooth_k;
    t.fn[SL_OP_CORRECT_LEPE] = cuda_correct_lepe;
    return t;
}

constexpr kernel_table cuda_kernels = make_kernel_table();

// -- wmma glue: the dtypes the kernels read natively for q, k, v (attn_mma.cuh).
struct dtype_table {
    unsigned bits[SL_OP__COUNT];
};

constexpr dtype_table make_native_table()
{
    dtype_table t = {};
    t.bits[SL_OP_ATTN_DENSE] = 1u << SL_F16 | 1u << SL_BF16;
    t.bits[SL_OP_ATTN_BLOCK_SPARSE] = 1u << SL_F16 | 1u << SL_BF16;
    t.bits[SL_OP_ATTN_TOKEN_SPARSE] = 1u << SL_F16 | 1u << SL_BF16;
    return t;
}

constexpr dtype_table cuda_native = make_native_table();

}  // namespace

extern "C" const sl__backend sl__backend_cuda = {"cuda", cuda_available, cuda_status, cuda_kernels.fn, nullptr, cuda_native.bits};
