/* cpu/mass.c — the cpu kernel of mass.blocks: one work item per (head,
 * query block); the block's scores against the seen keys by one sgemm,
 * then exp(s - lse) summed per key block (float per block, double across). */
#include "cpu.h"
#include "parallel.h"

#include <cblas.h>
#include <math.h>

typedef struct mass_job {
    const sl__kargs *a;
    const sl_mass_blocks_params *p;
    sl__attn_dims dm;
    int64_t nqb, nkb;
    size_t scr_bytes; /* per thread: bq x nk floats, then nkb doubles */
} mass_job;

static size_t round64(size_t x) { return (x + 63) & ~(size_t)63; }

static void mass_item(int64_t item, void *ud, int thread)
{
    const mass_job *j = ud;
    const sl_mass_blocks_params *p = j->p;
    const sl__attn_dims *dm = &j->dm;
    int64_t h = item / j->nqb, r = item % j->nqb, i0 = r * p->bq;
    int64_t rows = p->bq < dm->nq - i0 ? p->bq : dm->nq - i0;
    const float *q = (const float *)j->a->in[0].data + (h * dm->nq + i0) * dm->d;
    const float *k = (const float *)j->a->in[1].data + (h / dm->group) * dm->nk * dm->d;
    const float *lse = (const float *)j->a->in[2].data + h * dm->nq + i0;
    float *s = (float *)((char *)j->a->scratch + (size_t)thread * j->scr_bytes);
    double *acc = (double *)((char *)s + round64((size_t)p->bq * (size_t)dm->nk * sizeof(float)));
    int64_t end = p->causal ? dm->offset + i0 + rows : dm->nk;
    if (end > dm->nk)
        end = dm->nk;
    for (int64_t c = 0; c < j->nkb; c++)
        acc[c] = 0;
    if (end > 0)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)rows, (int)end, (int)dm->d, (float)dm->scale, q,
                    (int)dm->d, k, (int)dm->d, 0.f, s, (int)end);
    for (int64_t i = 0; i < rows; i++) {
        if (isinf(lse[i]))
            continue;
        const float *si = s + i * end;
        int64_t lim = p->causal ? dm->offset + i0 + i + 1 : dm->nk;
        if (lim > dm->nk)
            lim = dm->nk;
        for (int64_t c = 0; c * p->bk < lim; c++) {
            int64_t j1 = (c + 1) * p->bk < lim ? (c + 1) * p->bk : lim;
            float bs = 0;
            for (int64_t x = c * p->bk; x < j1; x++)
                bs += expf(si[x] - lse[i]);
            acc[c] += (double)bs;
        }
    }
    float *out = (float *)j->a->out[0].data + (h * j->nqb + r) * j->nkb;
    for (int64_t c = 0; c < j->nkb; c++)
        out[c] = (float)acc[c];
}

static size_t per_thread(const sl_mass_blocks_params *p, int64_t nk)
{
    return round64((size_t)p->bq * (size_t)nk * sizeof(float)) +
           round64((size_t)((nk + p->bk - 1) / p->bk + 1) * sizeof(double));
}

sl_status sl__cpu_mass_blocks(const sl__kargs *a)
{
    const sl_mass_blocks_params *p = a->params;
    mass_job j = {.a = a, .p = p, .dm = sl__attn_dims_of(&a->in[0], &a->in[1], p->scale)};
    j.nqb = (j.dm.nq + p->bq - 1) / p->bq;
    j.nkb = (j.dm.nk + p->bk - 1) / p->bk;
    j.scr_bytes = per_thread(p, j.dm.nk);
    return sl__cpu_parallel(a->ctx, j.dm.hq * j.nqb, mass_item, &j);
}

size_t sl__cpu_mass_scratch(sl_op op, const void *params, const sl_tensor *in, int n_threads)
{
    (void)op;
    return (size_t)(n_threads > 0 ? n_threads : 1) * per_thread(params, in[1].shape[1]);
}
