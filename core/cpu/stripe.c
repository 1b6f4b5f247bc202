/* cpu/stripe.c — fast kernels of score.antidiag (XAttention), score.strided
 * (ProxyAttn), score.anchor (AnchorAttention) and gather.rows (PBS-Attn):
 * work items of (head, query tile) on the context's threads, score tiles by
 * one OpenBLAS sgemm each (strided operands through the leading dimension,
 * no copies), softmax in float. Contracts in sparselab.h; ref/stripe.c is
 * the oracle. */
#include "cpu.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }
static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* Items flag a failed allocation here; the caller reports it. */
typedef struct xa_job {
    const sl__kargs *a;
    sl__attn_dims dm;
    double scale;
    int64_t n_items_per_head;
    volatile int oom;
} xa_job;

static sl_status finish(const sl__kargs *a, sl_status s, const xa_job *j)
{
    if (s)
        return s;
    if (j->oom)
        return sl_ctx_fail(a->ctx, SL_ENOMEM, "%s[cpu]: out of memory", sl_op_info_get(a->op)->name);
    return SL_OK;
}

/* In-place softmax of s[0..n) in float; n >= 1. */
static void softmax_f(float *s, int64_t n)
{
    float m = -INFINITY, z = 0;
    for (int64_t j = 0; j < n; j++)
        m = s[j] > m ? s[j] : m;
    for (int64_t j = 0; j < n; j++)
        z += (s[j] = expf(s[j] - m));
    float inv = 1.f / z;
    for (int64_t j = 0; j < n; j++)
        s[j] *= inv;
}

/* ---- score.antidiag: item (h, query block r) ---- */

static void antidiag_item(int64_t item, void *ud, int thread)
{
    (void)thread;
    xa_job *j = ud;
    const sl_score_antidiag_params *p = j->a->params;
    const sl__attn_dims *dm = &j->dm;
    int64_t S = p->stride, B = p->block, sd = S * dm->d;
    int64_t Mq = cdiv(dm->nq, S), Mk = cdiv(dm->nk, S), Mk_full = dm->nk / S;
    int64_t nkb = j->a->out[0].shape[2], nqb = j->a->out[0].shape[1];
    int64_t h = item / nqb, r = item % nqb;
    int64_t i0 = r * (B / S), i1 = min64(i0 + B / S, Mq), rows = i1 - i0;
    const float *qh = (const float *)j->a->in[0].data + h * dm->nq * dm->d;
    const float *kh = (const float *)j->a->in[1].data + (h / dm->group) * dm->nk * dm->d;
    float *out = (float *)j->a->out[0].data + (h * nqb + r) * nkb;
    memset(out, 0, sizeof *out * (size_t)nkb);
    if (rows <= 0 || Mk == 0)
        return;
    float *qr = malloc(sizeof *qr * (size_t)(rows * sd)), *s = malloc(sizeof *s * (size_t)(rows * Mk));
    if (!qr || !s) {
        j->oom = 1;
        free(qr);
        free(s);
        return;
    }
    /* reversed query super-tokens: slot t of row i holds q[iS + S-1-t] */
    for (int64_t i = 0; i < rows; i++)
        for (int64_t t = 0; t < S; t++) {
            int64_t qi = (i0 + i) * S + S - 1 - t;
            float *dst = qr + i * sd + t * dm->d;
            if (qi < dm->nq)
                memcpy(dst, qh + qi * dm->d, sizeof *dst * (size_t)dm->d);
            else
                memset(dst, 0, sizeof *dst * (size_t)dm->d);
        }
    int64_t vis_max = p->causal ? min64(Mk, (dm->offset + (i1 - 1) * S) / S + 1) : Mk;
    int64_t full = min64(vis_max, Mk_full);
    if (full > 0)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)rows, (int)full, (int)sd, (float)j->scale, qr,
                    (int)sd, kh, (int)sd, 0.f, s, (int)Mk);
    if (vis_max > full) { /* the partial last key super-token */
        int64_t jl = Mk - 1, valid = dm->nk - jl * S;
        for (int64_t i = 0; i < rows; i++) {
            double x = 0;
            for (int64_t t = 0; t < valid; t++)
                for (int64_t c = 0; c < dm->d; c++)
                    x += (double)qr[i * sd + t * dm->d + c] * (double)kh[(jl * S + t) * dm->d + c];
            s[i * Mk + jl] = (float)(j->scale * x);
        }
    }
    for (int64_t i = 0; i < rows; i++) {
        int64_t n_vis = p->causal ? min64(Mk, (dm->offset + (i0 + i) * S) / S + 1) : Mk;
        if (n_vis < 1)
            continue;
        float *row = s + i * Mk;
        softmax_f(row, n_vis);
        for (int64_t jj = 0; jj < n_vis; jj++)
            out[(jj * S) / B] += row[jj];
    }
    free(qr);
    free(s);
}

sl_status sl__cpu_score_antidiag(const sl__kargs *a)
{
    const sl_score_antidiag_params *p = a->params;
    xa_job j = {a, sl__attn_dims_of(&a->in[0], &a->in[1], 0), 0, 0, 0};
    j.scale = p->scale > 0 ? p->scale : 1.0 / (sqrt((double)j.dm.d) * (double)p->stride);
    int64_t n = j.dm.hq * a->out[0].shape[1];
    return finish(a, sl__cpu_parallel(a->ctx, n, antidiag_item, &j), &j);
}

/* ---- score.strided: item (h, query tile r) ---- */

static void strided_item(int64_t item, void *ud, int thread)
{
    (void)thread;
    xa_job *j = ud;
    const sl_score_strided_params *p = j->a->params;
    const sl__attn_dims *dm = &j->dm;
    int64_t S = p->stride, d = dm->d, Mk = cdiv(dm->nk, S);
    int64_t nqb = j->a->out[0].shape[1], nkb = j->a->out[0].shape[2];
    int64_t h = item / nqb, r = item % nqb;
    float *out = (float *)j->a->out[0].data + (h * nqb + r) * nkb;
    memset(out, 0, sizeof *out * (size_t)nkb);
    /* sampled rows i·S inside [r·bq, (r+1)·bq) */
    int64_t i0 = cdiv(r * p->bq, S), i1 = cdiv(min64((r + 1) * p->bq, dm->nq), S), rows = i1 - i0;
    if (rows <= 0 || Mk == 0)
        return;
    const float *qh = (const float *)j->a->in[0].data + h * dm->nq * d;
    const float *kh = (const float *)j->a->in[1].data + (h / dm->group) * dm->nk * d;
    int64_t vis_max = p->causal ? min64(Mk, (dm->offset + (i1 - 1) * S) / S + 1) : Mk;
    if (vis_max < 1)
        return;
    float *s = malloc(sizeof *s * (size_t)(rows * vis_max));
    if (!s) {
        j->oom = 1;
        return;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)rows, (int)vis_max, (int)d, (float)dm->scale,
                qh + i0 * S * d, (int)(S * d), kh, (int)(S * d), 0.f, s, (int)vis_max);
    for (int64_t i = 0; i < rows; i++) {
        int64_t n_vis = p->causal ? min64(Mk, (dm->offset + (i0 + i) * S) / S + 1) : Mk;
        if (n_vis < 1)
            continue;
        float *row = s + i * vis_max;
        softmax_f(row, n_vis);
        for (int64_t jj = 0; jj < n_vis; jj++) {
            float *cell = out + (jj * S) / p->bk;
            *cell = row[jj] > *cell ? row[jj] : *cell;
        }
    }
    free(s);
}

sl_status sl__cpu_score_strided(const sl__kargs *a)
{
    const sl_score_strided_params *p = a->params;
    xa_job j = {a, sl__attn_dims_of(&a->in[0], &a->in[1], p->scale), 0, 0, 0};
    return finish(a, sl__cpu_parallel(a->ctx, j.dm.hq * a->out[0].shape[1], strided_item, &j), &j);
}

/* ---- score.anchor: item (h, big block b) ---- */

static void anchor_item(int64_t item, void *ud, int thread)
{
    (void)thread;
    xa_job *j = ud;
    const sl_score_anchor_params *p = j->a->params;
    const sl__attn_dims *dm = &j->dm;
    int64_t N = dm->nq, d = dm->d, B = p->block, G = p->block * p->step, nb = j->a->out[0].shape[1];
    int64_t h = item / nb, b = item % nb;
    int64_t r0 = b * G, r1 = min64(r0 + G, N), nt = cdiv(r1 - r0, B);
    int64_t init_end = p->init_cnt * G, local0 = b - p->local_cnt + 1 > 0 ? (b - p->local_cnt + 1) * G : 0;
    int64_t n_init = min64(init_end, local0), n_local = r1 - local0;
    const float *qh = (const float *)j->a->in[0].data + h * N * d;
    const float *kh = (const float *)j->a->in[1].data + (h / dm->group) * N * d;
    uint8_t *out = (uint8_t *)j->a->out[0].data + (h * nb + b) * N;
    memset(out, 0, (size_t)N);
    int64_t m0 = p->overlap ? B : init_end, m1 = min64(p->overlap ? local0 - B : local0, r0);
    if (m0 < 0)
        m0 = 0;
    if (m1 <= m0)
        return; /* nothing to scan: the anchors are not needed */
    int64_t width = n_init + n_local;
    float *s = malloc(sizeof *s * (size_t)(B * (width > m1 - m0 ? width : m1 - m0)));
    float *qbar = malloc(sizeof *qbar * (size_t)(nt * d)), *xbar = malloc(sizeof *xbar * (size_t)nt);
    if (!s || !qbar || !xbar) {
        j->oom = 1;
        free(s);
        free(qbar);
        free(xbar);
        return;
    }
    for (int64_t t = 0; t < nt; t++) {
        int64_t i0 = r0 + t * B, rows = min64(B, r1 - i0);
        /* structured scores: initial keys then local keys (up to r1) */
        if (n_init > 0)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)rows, (int)n_init, (int)d, (float)dm->scale,
                        qh + i0 * d, (int)d, kh, (int)d, 0.f, s, (int)width);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)rows, (int)n_local, (int)d, (float)dm->scale,
                    qh + i0 * d, (int)d, kh + local0 * d, (int)d, 0.f, s + n_init, (int)width);
        double xs = 0;
        for (int64_t i = 0; i < rows; i++) {
            const float *row = s + i * width;
            float mx = -INFINITY;
            for (int64_t c = 0; c < n_init; c++)
                mx = row[c] > mx ? row[c] : mx;
            int64_t lim = i0 + i - local0 + 1; /* local keys up to the row itself */
            for (int64_t c = 0; c < lim; c++)
                mx = row[n_init + c] > mx ? row[n_init + c] : mx;
            xs += mx;
        }
        xbar[t] = (float)(xs / (double)rows);
        for (int64_t c = 0; c < d; c++) {
            double acc = 0;
            for (int64_t i = 0; i < rows; i++)
                acc += qh[(i0 + i) * d + c];
            qbar[t * d + c] = (float)(acc / (double)rows);
        }
    }
    /* the scan: pooled queries against the middle keys */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)nt, (int)(m1 - m0), (int)d, (float)dm->scale, qbar,
                (int)d, kh + m0 * d, (int)d, 0.f, s, (int)(m1 - m0));
    float theta = (float)p->theta;
    for (int64_t t = 0; t < nt; t++) {
        const float *row = s + t * (m1 - m0);
        for (int64_t c = 0; c < m1 - m0; c++)
            if (row[c] + theta >= xbar[t])
                out[m0 + c] = 1;
    }
    free(s);
    free(qbar);
    free(xbar);
}

sl_status sl__cpu_score_anchor(const sl__kargs *a)
{
    const sl_score_anchor_params *p = a->params;
    xa_job j = {a, sl__attn_dims_of(&a->in[0], &a->in[1], p->scale), 0, 0, 0};
    return finish(a, sl__cpu_parallel(a->ctx, j.dm.hq * a->out[0].shape[1], anchor_item, &j), &j);
}

/* ---- gather.rows: item = output head ---- */

static void gather_item(int64_t h, void *ud, int thread)
{
    (void)thread;
    xa_job *j = ud;
    const sl_tensor *x = &j->a->in[0], *idx = &j->a->in[1];
    int64_t hx = x->shape[0], n = x->shape[1], d = x->shape[2], hi = idx->shape[0], m = idx->shape[1];
    const float *src = (const float *)x->data + (h / (hi / hx)) * n * d;
    const int32_t *ix = (const int32_t *)idx->data + h * m;
    float *out = (float *)j->a->out[0].data + h * m * d;
    for (int64_t t = 0; t < m; t++)
        memcpy(out + t * d, src + (int64_t)ix[t] * d, sizeof *out * (size_t)d);
}

sl_status sl__cpu_gather_rows(const sl__kargs *a)
{
    xa_job j = {a, {0}, 0, 0, 0};
    return finish(a, sl__cpu_parallel(a->ctx, a->in[1].shape[0], gather_item, &j), &j);
}
