/* cpu/quant.c — the cpu kernels of the quant family. quant.fake: one work
 * item per (head, group of rows): the group's max |x|, then the rounding
 * pass. quant.attn_block: V's codes and scales per (kv head, key block)
 * first, then one work item per (head, query block): per kept key block
 * the tile's scores by one sgemm, the online softmax statistics, the P
 * codes and the integer P.V — an sgemm of the integer-valued codes when
 * every partial sum stays below 2^24 (bk.qmax^2 < 2^24: exact in f32),
 * else int32 loops. */
#include "cpu.h"
#include "parallel.h"
#include "rowops.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

static void quant_item(int64_t item, void *ud, int thread)
{
    (void)thread;
    const sl__kargs *a = ud;
    const sl_quant_fake_params *p = a->params;
    const sl_tensor *x = &a->in[0];
    int64_t n = x->shape[1], d = x->shape[2], groups = (n + p->group - 1) / p->group;
    int64_t h = item / groups, r0 = (item % groups) * p->group, r1 = r0 + p->group < n ? r0 + p->group : n;
    const float *src = (const float *)x->data + (h * n + r0) * d;
    float *dst = (float *)a->out[0].data + (h * n + r0) * d;
    int64_t len = (r1 - r0) * d;
    float qmax = (float)((1 << (p->bits - 1)) - 1), m = 0;
    for (int64_t i = 0; i < len; i++)
        m = fmaxf(m, fabsf(src[i]));
    float step = m / qmax;
    if (!(step > 0))
        step = 1;
    for (int64_t i = 0; i < len; i++)
        dst[i] = fminf(fmaxf(roundf(src[i] / step), -qmax), qmax) * step;
}

sl_status sl__cpu_quant_fake(const sl__kargs *a)
{
    const sl_quant_fake_params *p = a->params;
    int64_t n = a->in[0].shape[1];
    return sl__cpu_parallel(a->ctx, a->in[0].shape[0] * ((n + p->group - 1) / p->group), quant_item, (void *)a);
}

typedef struct qattn_job {
    const sl__kargs *a;
    const sl_quant_attn_params *p;
    sl__attn_dims dm;
    int64_t nqb, nkb, hm;
    float qmax;
    sl__cpu_rowops ro;
    int quant, exact_f32; /* exact_f32: bk.qmax^2 < 2^24, the code product runs as an sgemm */
    float *w;         /* V codes [Hkv, nk, d] (integer values) */
    float *t;         /* V scales [Hkv, nkb, d] */
    size_t shared;    /* bytes of w and t */
    size_t per_thread;
} qattn_job;

static size_t round64(size_t x) { return (x + 63) & ~(size_t)63; }

static void vcode_item(int64_t item, void *ud, int thread)
{
    (void)thread;
    const qattn_job *j = ud;
    int64_t g = item / j->nkb, KB = item % j->nkb, d = j->dm.d, nk = j->dm.nk, bk = j->p->bk;
    int64_t j0 = KB * bk, j1 = j0 + bk < nk ? j0 + bk : nk;
    const float *v = (const float *)j->a->in[2].data + g * nk * d;
    float *t = j->t + item * d;
    for (int64_t c = 0; c < d; c++)
        t[c] = 0;
    for (int64_t r = j0; r < j1; r++)
        for (int64_t c = 0; c < d; c++)
            t[c] = fmaxf(t[c], fabsf(v[r * d + c]));
    for (int64_t c = 0; c < d; c++) {
        t[c] /= j->qmax;
        if (!(t[c] > 0))
            t[c] = 1;
    }
    float *w = j->w + g * nk * d;
    for (int64_t r = j0; r < j1; r++)
        for (int64_t c = 0; c < d; c++)
            w[r * d + c] = fminf(fmaxf(roundf(v[r * d + c] / t[c]), -j->qmax), j->qmax);
}

static void qattn_item(int64_t item, void *ud, int thread)
{
    const qattn_job *j = ud;
    const sl_quant_attn_params *p = j->p;
    const sl__attn_dims *dm = &j->dm;
    const sl__kargs *a = j->a;
    int64_t h = item / j->nqb, QB = item % j->nqb, g = h / dm->group, mh = h / (dm->hq / j->hm), d = dm->d;
    int64_t i0 = QB * p->bq, rows = p->bq < dm->nq - i0 ? p->bq : dm->nq - i0;
    const int32_t *rp = a->in[3].data, *ci = a->in[4].data, *part = a->in[5].data;
    const uint8_t *bits = a->in[6].data;
    const float *q = (const float *)a->in[0].data + (h * dm->nq + i0) * d;
    const float *k = (const float *)a->in[1].data + g * dm->nk * d, *v = (const float *)a->in[2].data + g * dm->nk * d;
    char *scr = (char *)a->scratch + j->shared + (size_t)thread * j->per_thread;
    float *s = (float *)scr, *oacc = s + p->bq * p->bk, *acc = oacc + p->bq * d, *m = acc + p->bq * d, *l = m + p->bq;
    float *sig = l + p->bq;
    int32_t *ia = (int32_t *)(sig + p->bq);
    for (int64_t r = 0; r < rows; r++) {
        m[r] = -INFINITY;
        l[r] = 0;
    }
    memset(oacc, 0, sizeof(float) * (size_t)(rows * d));
    const float *vsrc = j->quant ? j->w + g * dm->nk * d : v;
    int64_t e0 = rp[mh * (j->nqb + 1) + QB], e1 = rp[mh * (j->nqb + 1) + QB + 1];
    for (int64_t e = e0; e < e1; e++) {
        int64_t KB = ci[e], j0 = KB * p->bk, cols = p->bk < dm->nk - j0 ? p->bk : dm->nk - j0;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)rows, (int)cols, (int)d, (float)dm->scale, q, (int)d,
                    k + j0 * d, (int)d, 0.f, s, (int)cols);
        /* per row: the block max, the online statistics, then the row of s
         * replaced by the P codes (or the f32 P without quantisation) */
        for (int64_t r = 0; r < rows; r++) {
            float *sr = s + r * cols, mu = -INFINITY;
            if (part[e] >= 0) {
                const uint8_t *br = bits + ((int64_t)part[e] * p->bq + r) * p->bk;
                for (int64_t x = 0; x < cols; x++)
                    if (!br[x])
                        sr[x] = -INFINITY;
            }
            mu = j->ro.max(sr, cols, -INFINITY);
            if (mu == -INFINITY) {
                sig[r] = 0;
                for (int64_t x = 0; x < cols; x++)
                    sr[x] = 0;
                continue;
            }
            float mn = fmaxf(m[r], mu), alpha = expf(m[r] - mn), sum;
            float *orow = oacc + r * d;
            for (int64_t c = 0; c < d; c++)
                orow[c] *= alpha;
            if (j->quant) {
                /* exp(s - mu) once: the codes, and the f32 P's sum rescaled to the running max */
                sum = j->ro.exp_sum(sr, cols, mu) * expf(mu - mn);
                for (int64_t x = 0; x < cols; x++)
                    sr[x] = roundf(j->qmax * sr[x]);
            } else {
                sum = j->ro.exp_sum(sr, cols, mn);
            }
            l[r] = l[r] * alpha + sum;
            m[r] = mn;
            sig[r] = j->quant ? expf(mu - mn) / j->qmax : 1.f;
        }
        const float *vb = vsrc + j0 * d;
        if (!j->quant || j->exact_f32) {
            /* integer codes below 2^24 in every partial sum: the f32 product is the exact integer one */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)rows, (int)d, (int)cols, 1.f, s, (int)cols, vb,
                        (int)d, 0.f, acc, (int)d);
        } else {
            for (int64_t r = 0; r < rows; r++) {
                for (int64_t c = 0; c < d; c++)
                    ia[c] = 0;
                for (int64_t x = 0; x < cols; x++) {
                    int32_t pc = (int32_t)s[r * cols + x];
                    if (pc)
                        for (int64_t c = 0; c < d; c++)
                            ia[c] += pc * (int32_t)vb[x * d + c];
                }
                for (int64_t c = 0; c < d; c++)
                    acc[r * d + c] = (float)ia[c];
            }
        }
        const float *tJ = j->quant ? j->t + (g * j->nkb + KB) * d : NULL;
        for (int64_t r = 0; r < rows; r++) {
            float *orow = oacc + r * d;
            const float *ar = acc + r * d;
            if (tJ)
                for (int64_t c = 0; c < d; c++)
                    orow[c] += sig[r] * tJ[c] * ar[c];
            else
                for (int64_t c = 0; c < d; c++)
                    orow[c] += ar[c];
        }
    }
    float *o = (float *)a->out[0].data + (h * dm->nq + i0) * d, *lse = (float *)a->out[1].data + h * dm->nq + i0;
    for (int64_t r = 0; r < rows; r++) {
        for (int64_t c = 0; c < d; c++)
            o[r * d + c] = l[r] > 0 ? oacc[r * d + c] / l[r] : 0.f;
        lse[r] = l[r] > 0 ? m[r] + logf(l[r]) : -INFINITY;
    }
}

static size_t qattn_shared(const sl_tensor *in, int64_t bk)
{
    int64_t hkv = in[1].shape[0], nk = in[1].shape[1], d = in[1].shape[2];
    return round64(sizeof(float) * (size_t)(hkv * nk * d)) + round64(sizeof(float) * (size_t)(hkv * ((nk + bk - 1) / bk) * d));
}

static size_t qattn_per_thread(const sl_quant_attn_params *p, int64_t d)
{
    return round64(sizeof(float) * (size_t)(p->bq * p->bk + 2 * p->bq * d + 3 * p->bq) + sizeof(int32_t) * (size_t)d);
}

sl_status sl__cpu_quant_attn_block(const sl__kargs *a)
{
    const sl_quant_attn_params *p = a->params;
    qattn_job j = {.a = a, .p = p, .dm = sl__attn_dims_of(&a->in[0], &a->in[1], p->scale), .hm = a->in[3].shape[0]};
    j.nqb = (j.dm.nq + p->bq - 1) / p->bq;
    j.nkb = (j.dm.nk + p->bk - 1) / p->bk;
    j.qmax = (float)((1 << (p->bits - 1)) - 1);
    j.ro = sl__cpu_rowops_for(a->ctx);
    j.quant = p->bits != 16;
    j.exact_f32 = (double)p->bk * (double)j.qmax * (double)j.qmax < 16777216.0;
    j.w = a->scratch;
    j.t = (float *)((char *)a->scratch + round64(sizeof(float) * (size_t)(j.dm.hkv * j.dm.nk * j.dm.d)));
    j.shared = qattn_shared(a->in, p->bk);
    j.per_thread = qattn_per_thread(p, j.dm.d);
    sl_status s;
    if (j.quant && (s = sl__cpu_parallel(a->ctx, j.dm.hkv * j.nkb, vcode_item, &j)))
        return s;
    return sl__cpu_parallel(a->ctx, j.dm.hq * j.nqb, qattn_item, &j);
}

size_t sl__cpu_quant_scratch(sl_op op, const void *params, const sl_tensor *in, int n_threads)
{
    if (op != SL_OP_QUANT_ATTN_BLOCK)
        return 0;
    const sl_quant_attn_params *p = params;
    return qattn_shared(in, p->bk) + (size_t)(n_threads > 0 ? n_threads : 1) * qattn_per_thread(p, in[0].shape[2]);
}
