/* op_mm.c — the mm family (issue 17): checks, shape rules and FLOP counts of
 * the sparse matmul executors and their weight formats: mm.dense,
 * mm.nm_encode, mm.nm, mm.bitmap_encode, mm.bitmap, mm.act_sparse
 * (contracts in sparselab.h; kernels in ref/mm.c, cpu/mm.c, cuda/mm.cu). */
#include "family.h"
#include "op_check.h"

#include <math.h>
#include <stdio.h>

/* x = in[0] float [T, K] and input i float 2-D with `cols` columns (-1: any). */
static sl_status need_2d(sl_ctx *ctx, const sl_op_info *info, const sl_tensor *in, int i, int64_t rows, int64_t cols)
{
    sl_status s = sl__need_float(ctx, info, in, i, 2);
    if (s)
        return s;
    char nm[32], desc[96];
    sl__input_name(info, i, nm, sizeof nm);
    sl_tensor_describe(&in[i], desc, sizeof desc);
    if ((rows >= 0 && in[i].shape[0] != rows) || (cols >= 0 && in[i].shape[1] != cols))
    {
        char r[24], c[24];
        snprintf(r, sizeof r, rows >= 0 ? "%lld" : "any", (long long)rows);
        snprintf(c, sizeof c, cols >= 0 ? "%lld" : "any", (long long)cols);
        return sl_ctx_fail(ctx, SL_ESHAPE, "%s: input '%s' must be [%s, %s], found %s", info->name, nm, r, c, desc);
    }
    return SL_OK;
}

static sl_status need_shape2(sl_ctx *ctx, const sl_op_info *info, const sl_tensor *in, int i, sl_dtype dt,
                             int64_t rows, int64_t cols)
{
    sl_status s = sl__need_index(ctx, info, in, i, dt, 2);
    if (s)
        return s;
    if (in[i].shape[0] != rows || in[i].shape[1] != cols) {
        char nm[32], desc[96];
        sl__input_name(info, i, nm, sizeof nm);
        sl_tensor_describe(&in[i], desc, sizeof desc);
        return sl_ctx_fail(ctx, SL_ESHAPE, "%s: input '%s' must be [%lld, %lld], found %s", info->name, nm,
                           (long long)rows, (long long)cols, desc);
    }
    return SL_OK;
}

static sl_status nm_params(sl_ctx *ctx, const sl_op_info *info, const sl_mm_nm_params *p)
{
    if (p->n > p->m)
        return sl_ctx_fail(ctx, SL_EARG, "%s: n = %lld kept per group exceeds the group size m = %lld", info->name,
                           (long long)p->n, (long long)p->m);
    return SL_OK;
}

static sl_status mm_infer(sl_ctx *ctx, const sl_op_info *info, const void *params, const sl_tensor *in,
                          int out_ndim[], int64_t out_shape[][SL_MAX_DIMS], sl_dtype out_dtype[])
{
    sl_status s;
    int64_t T = 0, K = 0, N = 0;
    out_ndim[0] = out_ndim[1] = 2;
    switch (info->op) {
    case SL_OP_MM_NM_ENCODE:
    case SL_OP_MM_BITMAP_ENCODE:
        if ((s = need_2d(ctx, info, in, 0, -1, -1)))
            return s;
        N = in[0].shape[0], K = in[0].shape[1];
        if (info->op == SL_OP_MM_NM_ENCODE) {
            const sl_mm_nm_params *p = params;
            if ((s = nm_params(ctx, info, p)))
                return s;
            int64_t w = sl__ceil_div(K, p->m) * p->n;
            out_shape[0][0] = out_shape[1][0] = N;
            out_shape[0][1] = out_shape[1][1] = w;
            out_dtype[1] = SL_U8;
        } else {
            const sl_mm_bitmap_params *p = params;
            out_dtype[0] = SL_I32;
            out_shape[0][0] = out_shape[1][0] = N;
            out_shape[0][1] = sl__ceil_div(K, 32);
            out_shape[1][1] = p->cap ? p->cap : K;
        }
        return SL_OK;
    default: break;
    }
    if ((s = need_2d(ctx, info, in, 0, -1, -1)))
        return s;
    T = in[0].shape[0], K = in[0].shape[1];
    switch (info->op) {
    case SL_OP_MM_DENSE:
        if ((s = need_2d(ctx, info, in, 1, -1, K)))
            return s;
        N = in[1].shape[0];
        break;
    case SL_OP_MM_NM: {
        const sl_mm_nm_params *p = params;
        if ((s = nm_params(ctx, info, p)) || (s = sl__need_float(ctx, info, in, 1, 2)))
            return s;
        N = in[1].shape[0];
        int64_t w = sl__ceil_div(K, p->m) * p->n;
        if ((s = need_2d(ctx, info, in, 1, N, w)) || (s = need_shape2(ctx, info, in, 2, SL_U8, N, w)))
            return s;
        break;
    }
    case SL_OP_MM_BITMAP:
        if ((s = sl__need_float(ctx, info, in, 2, 2)))
            return s;
        N = in[2].shape[0];
        if ((s = need_shape2(ctx, info, in, 1, SL_I32, N, sl__ceil_div(K, 32))))
            return s;
        break;
    case SL_OP_MM_ACT_SPARSE:
        if ((s = sl__need_float(ctx, info, in, 1, 2)))
            return s;
        N = in[1].shape[1];
        if ((s = need_2d(ctx, info, in, 1, K, N)))
            return s;
        break;
    case SL_OP_MM_OUT_SPARSE:
        if ((s = need_2d(ctx, info, in, 1, -1, K)) || (s = sl__need_index(ctx, info, in, 2, SL_I32, 2)))
            return s;
        N = in[1].shape[0];
        if (in[2].shape[0] != T)
            return sl_ctx_fail(ctx, SL_ESHAPE, "%s: sel has %lld rows, x has %lld", info->name,
                               (long long)in[2].shape[0], (long long)T);
        if (in[3].buf && (s = need_2d(ctx, info, in, 3, T, N)))
            return s;
        break;
    case SL_OP_MM_MOE: {
        /* x [T, D]; w1, w3, w2t [H, D]; offs i32 [E+1]; route i32 [T, k]; rw [T, k] */
        if ((s = sl__need_float(ctx, info, in, 1, 2)))
            return s;
        int64_t H = in[1].shape[0];
        if ((s = need_2d(ctx, info, in, 1, H, K)) || (s = need_2d(ctx, info, in, 2, H, K)) ||
            (s = need_2d(ctx, info, in, 3, H, K)) || (s = sl__need_index(ctx, info, in, 4, SL_I32, 1)) ||
            (s = sl__need_index(ctx, info, in, 5, SL_I32, 2)))
            return s;
        if (in[4].shape[0] < 2)
            return sl_ctx_fail(ctx, SL_ESHAPE, "%s: offs must hold E + 1 >= 2 entries, found %lld", info->name,
                               (long long)in[4].shape[0]);
        if (in[5].shape[0] != T)
            return sl_ctx_fail(ctx, SL_ESHAPE, "%s: route has %lld rows, x has %lld", info->name,
                               (long long)in[5].shape[0], (long long)T);
        if (in[6].buf && (s = need_2d(ctx, info, in, 6, T, in[5].shape[1])))
            return s;
        N = K;
        break;
    }
    default: return sl_ctx_fail(ctx, SL_EINTERNAL, "%s: not an op of the mm family", info->name);
    }
    out_ndim[0] = 2;
    out_shape[0][0] = T;
    out_shape[0][1] = N;
    return SL_OK;
}

static sl_status mm_check_contents(sl_ctx *ctx, const sl_op_info *info, const void *params, const sl_tensor *in)
{
    switch (info->op) {
    case SL_OP_MM_NM: {
        const sl_mm_nm_params *p = params;
        int64_t K = in[0].shape[1], N = in[2].shape[0], G = sl__ceil_div(K, p->m), n = p->n;
        const uint8_t *pos = in[2].data;
        for (int64_t r = 0; r < N; r++)
            for (int64_t g = 0; g < G; g++) {
                int64_t width = K - g * p->m < p->m ? K - g * p->m : p->m;
                const uint8_t *q = pos + (r * G + g) * n;
                for (int64_t s = 0; s < n; s++)
                    if (q[s] >= width)
                        return sl_ctx_fail(ctx, SL_EARG,
                                           "%s: pos[%lld, %lld] = %d is outside its group of %lld columns", info->name,
                                           (long long)r, (long long)(g * n + s), q[s], (long long)width);
            }
        return SL_OK;
    }
    case SL_OP_MM_BITMAP_ENCODE: {
        const sl_mm_bitmap_params *p = params;
        int64_t N = in[0].shape[0], K = in[0].shape[1], cap = p->cap ? p->cap : K;
        const float *w = in[0].data;
        for (int64_t r = 0; r < N; r++) {
            int64_t c = 0;
            for (int64_t k = 0; k < K; k++)
                c += w[r * K + k] != 0;
            if (c > cap)
                return sl_ctx_fail(ctx, SL_EARG, "%s: row %lld of w has %lld nonzeros, more than cap = %lld",
                                   info->name, (long long)r, (long long)c, (long long)cap);
        }
        return SL_OK;
    }
    case SL_OP_MM_BITMAP: {
        int64_t K = in[0].shape[1], N = in[1].shape[0], nw = in[1].shape[1], cap = in[2].shape[1];
        const uint32_t *bits = in[1].data;
        uint32_t tail = K % 32 ? ~((1u << (K % 32)) - 1u) : 0;
        for (int64_t r = 0; r < N; r++) {
            int64_t c = 0;
            for (int64_t j = 0; j < nw; j++)
                c += __builtin_popcount(bits[r * nw + j]);
            if (nw && (bits[r * nw + nw - 1] & tail))
                return sl_ctx_fail(ctx, SL_EARG, "%s: row %lld of bits has a bit past column K = %lld", info->name,
                                   (long long)r, (long long)K);
            if (c > cap)
                return sl_ctx_fail(ctx, SL_EARG, "%s: row %lld of bits has %lld bits set, more than vals' %lld slots",
                                   info->name, (long long)r, (long long)c, (long long)cap);
        }
        return SL_OK;
    }
    case SL_OP_MM_OUT_SPARSE: {
        const int32_t *sel = in[2].data;
        int64_t N = in[1].shape[0], n = sl_tensor_numel(&in[2]), S = in[2].shape[1];
        for (int64_t i = 0; i < n; i++)
            if (sel[i] < -1 || sel[i] >= N)
                return sl_ctx_fail(ctx, SL_EARG, "%s: sel[%lld, %lld] = %d is outside [0, %lld) (or -1)", info->name,
                                   (long long)(i / S), (long long)(i % S), sel[i], (long long)N);
        return SL_OK;
    }
    case SL_OP_MM_MOE: {
        const int32_t *offs = in[4].data, *route = in[5].data;
        int64_t E = in[4].shape[0] - 1, H = in[1].shape[0], n = sl_tensor_numel(&in[5]), k = in[5].shape[1];
        if (offs[0] != 0 || offs[E] != H)
            return sl_ctx_fail(ctx, SL_EARG, "%s: offs must run from 0 to H = %lld, found %d .. %d", info->name,
                               (long long)H, offs[0], offs[E]);
        for (int64_t e = 0; e < E; e++)
            if (offs[e + 1] < offs[e])
                return sl_ctx_fail(ctx, SL_EARG, "%s: offs must be nondecreasing, found offs[%lld] = %d > offs[%lld] = %d",
                                   info->name, (long long)e, offs[e], (long long)(e + 1), offs[e + 1]);
        for (int64_t i = 0; i < n; i++)
            if (route[i] < -1 || route[i] >= E)
                return sl_ctx_fail(ctx, SL_EARG, "%s: route[%lld, %lld] = %d is outside [0, %lld) (or -1)", info->name,
                                   (long long)(i / k), (long long)(i % k), route[i], (long long)E);
        return SL_OK;
    }
    default: return SL_OK;
    }
}

static int is_executor(sl_op op)
{
    return op == SL_OP_MM_DENSE || op == SL_OP_MM_NM || op == SL_OP_MM_BITMAP || op == SL_OP_MM_ACT_SPARSE ||
           op == SL_OP_MM_OUT_SPARSE || op == SL_OP_MM_MOE;
}

/* The executors leave their float inputs unscanned (a weight is read once per
 * call; a scan would cost as much as the product) and check y instead. */
static sl__input_policy mm_input_policy(const sl_op_info *info, int i)
{
    (void)i;
    return is_executor(info->op) ? SL__IN_UNCHECKED : SL__IN_FINITE;
}

static sl_status mm_check_outputs(sl_ctx *ctx, const sl_op_info *info, const sl_tensor *out)
{
    if (!is_executor(info->op))
        return SL_OK;
    const float *y = out[0].data;
    int64_t n = sl_tensor_numel(&out[0]);
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(y[i]))
            return sl_ctx_fail(ctx, SL_EARG,
                               "%s: y[%lld] is %g: an input holds NaN or infinity, or the product overflows float32",
                               info->name, (long long)i, (double)y[i]);
    return SL_OK;
}

static double mm_flops(const sl_op_info *info, const void *params, const sl_tensor *in)
{
    double T = (double)in[0].shape[0];
    switch (info->op) {
    case SL_OP_MM_DENSE: return 2 * T * (double)in[1].shape[0] * (double)in[0].shape[1];
    case SL_OP_MM_NM: return 2 * T * (double)sl_tensor_numel(&in[1]);
    case SL_OP_MM_BITMAP: {
        /* the products of the set bits only */
        const uint32_t *bits = in[1].data;
        double c = 0;
        for (int64_t i = 0, n = sl_tensor_numel(&in[1]); i < n; i++)
            c += __builtin_popcount(bits[i]);
        return 2 * T * c;
    }
    case SL_OP_MM_ACT_SPARSE: {
        double nz = 0;
        int64_t idx[2];
        for (idx[0] = 0; idx[0] < in[0].shape[0]; idx[0]++)
            for (idx[1] = 0; idx[1] < in[0].shape[1]; idx[1]++)
                nz += sl_tensor_get(&in[0], idx) != 0;
        return 2 * nz * (double)in[1].shape[1];
    }
    case SL_OP_MM_OUT_SPARSE: {
        const int32_t *sel = in[2].data;
        double c = 0;
        for (int64_t i = 0, n = sl_tensor_numel(&in[2]); i < n; i++)
            c += sel[i] >= 0;
        return c * (2 * (double)in[0].shape[1] + (in[3].buf ? 1 : 0));
    }
    case SL_OP_MM_MOE: {
        /* per routed pair (t, e): 3 products of |e| units by D, silu and the gating
         * product (4 per unit), the weighted add (2 per output) */
        const int32_t *offs = in[4].data, *route = in[5].data;
        double D = (double)in[0].shape[1], c = 0;
        for (int64_t i = 0, n = sl_tensor_numel(&in[5]); i < n; i++)
            if (route[i] >= 0) {
                double units = (double)(offs[route[i] + 1] - offs[route[i]]);
                c += 6 * units * D + 4 * units + 2 * D;
            }
        return c;
    }
    case SL_OP_MM_NM_ENCODE: {
        const sl_mm_nm_params *p = params;
        return (double)sl_tensor_numel(&in[0]) * (double)p->n; /* compares */
    }
    default: return (double)sl_tensor_numel(&in[0]);
    }
}

const sl__family sl__family_mm = {"mm", mm_infer, mm_check_contents, mm_check_outputs, mm_flops, mm_input_policy};
