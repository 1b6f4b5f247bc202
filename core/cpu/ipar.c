/* cpu/ipar.c — the cpu kernel of ipar.rectify: pass 1 pools every video
 * key block of every kv head (mean and mean |deviation| of K, mean of V;
 * one work item per (kv head, block)); pass 2, one work item per (head,
 * video query block): the query block's statistics, its pooled logits
 * against the video blocks and the text keys (sgemv), the merged softmax,
 * GAPR, r and N, and the rows O = r.O* + N. */
#include "cpu.h"
#include "parallel.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

typedef struct ipar_job {
    const sl__kargs *a;
    const sl_ipar_rectify_params *p;
    sl__attn_dims dm;
    int64_t b, nbv, v0, B0, nqb, text;
    float *km, *ke, *vm; /* [Hkv, nbv, d] each */
    size_t per_thread;   /* bytes of pass 2's thread scratch */
} ipar_job;

static size_t round64(size_t x) { return (x + 63) & ~(size_t)63; }

static void block_stats(const float *x, int64_t b, int64_t d, float *mean, float *dev)
{
    for (int64_t c = 0; c < d; c++)
        mean[c] = 0;
    for (int64_t r = 0; r < b; r++)
        for (int64_t c = 0; c < d; c++)
            mean[c] += x[r * d + c];
    for (int64_t c = 0; c < d; c++)
        mean[c] /= (float)b;
    if (!dev)
        return;
    for (int64_t c = 0; c < d; c++)
        dev[c] = 0;
    for (int64_t r = 0; r < b; r++)
        for (int64_t c = 0; c < d; c++)
            dev[c] += fabsf(x[r * d + c] - mean[c]);
    for (int64_t c = 0; c < d; c++)
        dev[c] /= (float)b;
}

static float dotf(const float *x, const float *y, int64_t d)
{
    float s = 0;
    for (int64_t c = 0; c < d; c++)
        s += x[c] * y[c];
    return s;
}

static void pool_item(int64_t item, void *ud, int thread)
{
    (void)thread;
    const ipar_job *j = ud;
    int64_t g = item / j->nbv, KB = item % j->nbv, d = j->dm.d, n = j->dm.nk;
    int64_t row0 = g * n + j->v0 + KB * j->b;
    float *dst = j->km + item * d;
    block_stats((const float *)j->a->in[1].data + row0 * d, j->b, d, dst, j->ke + item * d);
    block_stats((const float *)j->a->in[2].data + row0 * d, j->b, d, j->vm + item * d, NULL);
}

static void rect_item(int64_t item, void *ud, int thread)
{
    const ipar_job *j = ud;
    const sl_ipar_rectify_params *p = j->p;
    int64_t nbv = j->nbv, d = j->dm.d, n = j->dm.nk, b = j->b;
    int64_t h = item / nbv, QB = item % nbv, g = h / j->dm.group;
    int64_t hm = j->a->in[3].shape[0], mh = h / (j->dm.hq / hm);
    const int32_t *rp = j->a->in[3].data, *ci = j->a->in[4].data;
    const float *q = j->a->in[0].data, *k = j->a->in[1].data, *os = j->a->in[7].data;
    float *o = j->a->out[0].data;
    char *scr = (char *)j->a->scratch + round64(3 * sizeof(float) * (size_t)(j->dm.hkv * nbv * d)) +
                (size_t)thread * j->per_thread;
    float *qm = (float *)scr, *qe = qm + d, *nsum = qe + d, *lg = nsum + d, *lt = lg + nbv;
    uint8_t *kept = (uint8_t *)(lt + j->text);
    int64_t i0 = j->v0 + QB * b;
    block_stats(q + (h * n + i0) * d, b, d, qm, qe);
    memset(kept, 0, (size_t)nbv);
    for (int32_t e = rp[mh * (j->nqb + 1) + j->B0 + QB]; e < rp[mh * (j->nqb + 1) + j->B0 + QB + 1]; e++)
        if (ci[e] >= j->B0 && ci[e] < j->B0 + nbv)
            kept[ci[e] - j->B0] = 1;
    const float *km = j->km + g * nbv * d, *ke = j->ke + g * nbv * d, *vm = j->vm + g * nbv * d;
    float scale = (float)j->dm.scale, lb = logf((float)b), mx = -INFINITY;
    for (int64_t KB = 0; KB < nbv; KB++) {
        lg[KB] = scale * dotf(qm, km + KB * d, d) + lb;
        mx = fmaxf(mx, lg[KB]);
    }
    /* text keys: [0, v0) and [v0 + n_video, n) of kv head g, one sgemv each */
    const float *kg = k + g * n * d;
    int64_t pre = j->v0, post = n - j->v0 - j->p->n_video;
    if (pre > 0)
        cblas_sgemv(CblasRowMajor, CblasNoTrans, (int)pre, (int)d, scale, kg, (int)d, qm, 1, 0.f, lt, 1);
    if (post > 0)
        cblas_sgemv(CblasRowMajor, CblasNoTrans, (int)post, (int)d, scale, kg + (j->v0 + p->n_video) * d, (int)d, qm, 1,
                    0.f, lt + pre, 1);
    for (int64_t t = 0; t < j->text; t++)
        mx = fmaxf(mx, lt[t]);
    double ptext = 0, z;
    for (int64_t t = 0; t < j->text; t++)
        ptext += (double)expf(lt[t] - mx);
    z = ptext;
    for (int64_t KB = 0; KB < nbv; KB++) {
        lg[KB] = expf(lg[KB] - mx);
        z += (double)lg[KB];
    }
    double r = ptext / z, restored = 0;
    for (int64_t c = 0; c < d; c++)
        nsum[c] = 0;
    for (int64_t KB = 0; KB < nbv; KB++) {
        float pj = (float)((double)lg[KB] / z);
        const float *kj = km + KB * d;
        int trusted = !p->gapr || fabsf(dotf(qm, kj, d)) > fabsf(dotf(qe, kj, d)) + fabsf(dotf(qm, ke + KB * d, d));
        if (kept[KB] || !trusted) {
            r += pj;
            continue;
        }
        restored += pj;
        for (int64_t c = 0; c < d; c++)
            nsum[c] += pj * vm[KB * d + c];
    }
    ((float *)j->a->out[1].data)[h * nbv + QB] = (float)r;
    ((float *)j->a->out[2].data)[h * nbv + QB] = (float)restored;
    float rf = (float)r;
    for (int64_t i = i0; i < i0 + b; i++)
        for (int64_t c = 0; c < d; c++) {
            int64_t x = (h * n + i) * d + c;
            o[x] = rf * os[x] + nsum[c];
        }
}

static size_t per_thread(int64_t d, int64_t nbv, int64_t text)
{
    return round64(sizeof(float) * (size_t)(3 * d + nbv + text) + (size_t)nbv);
}

sl_status sl__cpu_ipar_rectify(const sl__kargs *a)
{
    const sl_ipar_rectify_params *p = a->params;
    ipar_job j = {.a = a, .p = p, .dm = sl__attn_dims_of(&a->in[0], &a->in[1], p->scale), .b = p->bq};
    j.nbv = p->n_video / j.b;
    j.v0 = p->video0;
    j.B0 = j.v0 / j.b;
    j.nqb = (j.dm.nk + j.b - 1) / j.b;
    j.text = j.dm.nk - p->n_video;
    j.km = a->scratch;
    j.ke = j.km + j.dm.hkv * j.nbv * j.dm.d;
    j.vm = j.ke + j.dm.hkv * j.nbv * j.dm.d;
    j.per_thread = per_thread(j.dm.d, j.nbv, j.text);
    /* rows outside the video blocks (text queries) keep o_sparse */
    memcpy(a->out[0].data, a->in[7].data, sizeof(float) * (size_t)(j.dm.hq * j.dm.nq * j.dm.d));
    sl_status s = sl__cpu_parallel(a->ctx, j.dm.hkv * j.nbv, pool_item, &j);
    if (s)
        return s;
    return sl__cpu_parallel(a->ctx, j.dm.hq * j.nbv, rect_item, &j);
}

size_t sl__cpu_ipar_scratch(sl_op op, const void *params, const sl_tensor *in, int n_threads)
{
    (void)op;
    const sl_ipar_rectify_params *p = params;
    int64_t d = in[0].shape[2], nbv = p->n_video / p->bq, text = in[1].shape[1] - p->n_video;
    return round64(3 * sizeof(float) * (size_t)(in[1].shape[0] * nbv * d)) +
           (size_t)(n_threads > 0 ? n_threads : 1) * per_thread(d, nbv, text);
}
