/* ref/tsel.c — the reference kernels of the tsel family (prefill token
 * selectors, issue 16): float64, plain loops, the contracts in sparselab.h
 * read literally. */
#include "ref.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static sl_status interrupted(const sl__kargs *a)
{
    return sl_ctx_fail(a->ctx, SL_EINTERRUPT, "%s[ref]: interrupted", sl_op_info_get(a->op)->name);
}

sl_status sl__ref_attn_threshold(const sl__kargs *a)
{
    const sl_attn_threshold_params *p = a->params;
    sl__attn_dims dm = sl__attn_dims_of(&a->in[0], &a->in[1], p->scale);
    const float *q = a->in[0].data, *k = a->in[1].data, *v = a->in[2].data, *theta = a->in[3].data;
    float *o = a->out[0].data, *lse = a->out[1].data;
    int32_t *count = a->out[2].data;
    double *sc = a->scratch, *acc = sc + dm.nk;
    for (int64_t h = 0; h < dm.hq; h++) {
        int64_t g = h / dm.group;
        for (int64_t r = 0; r < dm.nq; r++) {
            if (sl_ctx_interrupted(a->ctx))
                return interrupted(a);
            int64_t n = p->causal ? dm.offset + r + 1 : dm.nk, best = -1;
            n = n > dm.nk ? dm.nk : n;
            for (int64_t j = 0; j < n; j++) {
                double s = 0;
                for (int64_t c = 0; c < dm.d; c++)
                    s += (double)q[(h * dm.nq + r) * dm.d + c] * (double)k[(g * dm.nk + j) * dm.d + c];
                sc[j] = dm.scale * s;
                if (best < 0 || sc[j] > sc[best])
                    best = j;
            }
            int dense = n <= p->dense_upto;
            double th = theta[h * dm.nq + r], mx = -INFINITY;
            int32_t cnt = 0;
            for (int64_t j = 0; j < n; j++) {
                int keep = dense || sc[j] > th || (p->keep_max && j == best);
                if (!keep) {
                    sc[j] = -INFINITY;
                    continue;
                }
                cnt++;
                mx = sc[j] > mx ? sc[j] : mx;
            }
            double l = 0;
            memset(acc, 0, (size_t)dm.d * sizeof *acc);
            for (int64_t j = 0; j < n; j++) {
                if (sc[j] == -INFINITY)
                    continue;
                double w = exp(sc[j] - mx);
                l += w;
                for (int64_t c = 0; c < dm.d; c++)
                    acc[c] += w * (double)v[(g * dm.nk + j) * dm.d + c];
            }
            for (int64_t c = 0; c < dm.d; c++)
                o[(h * dm.nq + r) * dm.d + c] = cnt ? (float)(acc[c] / l) : 0.f;
            lse[h * dm.nq + r] = cnt ? (float)(mx + log(l)) : -INFINITY;
            count[h * dm.nq + r] = cnt;
        }
    }
    return SL_OK;
}

/* The L1-nearest codeword of each of the S subspaces of x (D = S . dc). */
static void encode(const float *x, const float *cb, int64_t S, int64_t C, int64_t dc, int32_t *code)
{
    for (int64_t s = 0; s < S; s++) {
        double best = INFINITY;
        int32_t arg = 0;
        for (int64_t c = 0; c < C; c++) {
            double dist = 0;
            for (int64_t e = 0; e < dc; e++)
                dist += fabs((double)x[s * dc + e] - (double)cb[(s * C + c) * dc + e]);
            if (dist < best) {
                best = dist;
                arg = (int32_t)c;
            }
        }
        code[s] = arg;
    }
}

static int cmp_i32(const void *x, const void *y)
{
    int32_t a = *(const int32_t *)x, b = *(const int32_t *)y;
    return (a > b) - (a < b);
}

sl_status sl__ref_select_pq_match(const sl__kargs *a)
{
    const sl_select_pq_match_params *p = a->params;
    sl__attn_dims dm = sl__attn_dims_of(&a->in[0], &a->in[1], 0);
    const float *q = a->in[0].data, *k = a->in[1].data, *cb = a->in[2].data;
    int64_t hc = a->in[2].shape[0], S = a->in[2].shape[1], C = a->in[2].shape[2], dc = a->in[2].shape[3];
    int32_t *row_ptr = a->out[0].data, *col = a->out[1].data;
    int32_t *kcode = a->scratch, *qcode = kcode + dm.nk * S, *m = qcode + S;
    int64_t at = 0;
    for (int64_t h = 0; h < dm.hq; h++) {
        int64_t g = h / dm.group;
        const float *cbh = cb + (g / (dm.hkv / hc)) * S * C * dc;
        for (int64_t j = 0; j < dm.nk; j++)
            encode(k + (g * dm.nk + j) * dm.d, cbh, S, C, dc, kcode + j * S);
        for (int64_t r = 0; r < dm.nq; r++) {
            if (sl_ctx_interrupted(a->ctx))
                return interrupted(a);
            row_ptr[h * (dm.nq + 1) + r] = (int32_t)at;
            encode(q + (h * dm.nq + r) * dm.d, cbh, S, C, dc, qcode);
            int64_t n = p->causal ? dm.offset + r + 1 : dm.nk;
            n = n > dm.nk ? dm.nk : n;
            for (int64_t j = 0; j < n; j++) {
                int32_t cnt = 0;
                for (int64_t s = 0; s < S; s++)
                    cnt += qcode[s] == kcode[j * S + s];
                int64_t slot = (p->slots * cnt) / S;
                m[j] = (int32_t)(slot < p->slots - 1 ? slot : p->slots - 1);
            }
            int64_t want = n < p->nnz ? n : p->nnz, got = 0, first = at;
            for (int64_t slot = p->slots - 1; slot >= 0 && got < want; slot--)
                for (int64_t j = 0; j < n && got < want; j++)
                    if (m[j] == slot) {
                        col[at++] = (int32_t)j;
                        got++;
                    }
            qsort(col + first, (size_t)got, sizeof *col, cmp_i32);
        }
        row_ptr[h * (dm.nq + 1) + dm.nq] = (int32_t)at;
    }
    return SL_OK;
}

size_t sl__ref_tsel_scratch(sl_op op, const void *params, const sl_tensor *in, int n_threads)
{
    (void)params, (void)n_threads;
    switch (op) {
    case SL_OP_ATTN_THRESHOLD: return (size_t)(in[1].shape[1] + in[0].shape[2]) * sizeof(double);
    case SL_OP_SELECT_PQ_MATCH:
        return (size_t)(in[1].shape[1] * in[2].shape[1] + in[2].shape[1] + in[1].shape[1]) * sizeof(int32_t);
    default: return 0;
    }
}
