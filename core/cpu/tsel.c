/* cpu/tsel.c — the tsel family on the cpu backend (prefill token
 * selectors, issue 16). attn.threshold: one work item per (head, row),
 * scores by the vectorised dot, softmax and axpy over the kept keys.
 * select.pq_match: key codes per kv head first (one item per key row), then
 * one item per (head, row): a count per slot, the cut slot, and one ascending
 * pass that writes the row's keys already sorted. */
#include "cpu.h"
#include "parallel.h"

#include <math.h>
#include <string.h>

/* ---- attn.threshold ---- */

typedef struct thr_job {
    const sl__kargs *a;
    sl__attn_dims dm;
    sl__cpu_vecops vo;
} thr_job;

static void thr_item(int64_t item, void *ud, int thread)
{
    const thr_job *j = ud;
    const sl__kargs *a = j->a;
    const sl__attn_dims *dm = &j->dm;
    const sl_attn_threshold_params *p = a->params;
    int64_t r = item % dm->nq, g = item / dm->nq / dm->group, d = dm->d;
    float *sc = (float *)a->scratch + (size_t)thread * (size_t)(dm->nk + d), *acc = sc + dm->nk;
    const float *qr = (const float *)a->in[0].data + item * d;
    const float *k = (const float *)a->in[1].data + g * dm->nk * d, *v = (const float *)a->in[2].data + g * dm->nk * d;
    int64_t n = p->causal ? dm->offset + r + 1 : dm->nk, best = -1;
    n = n > dm->nk ? dm->nk : n;
    float scale = (float)dm->scale, th = ((const float *)a->in[3].data)[item], mx = -INFINITY;
    for (int64_t t = 0; t < n; t++) {
        sc[t] = scale * j->vo.dot(qr, k + t * d, d);
        if (best < 0 || sc[t] > sc[best])
            best = t;
    }
    int dense = n <= p->dense_upto;
    int32_t cnt = 0;
    for (int64_t t = 0; t < n; t++) {
        if (dense || sc[t] > th || (p->keep_max && t == best)) {
            cnt++;
            mx = sc[t] > mx ? sc[t] : mx;
        } else {
            sc[t] = -INFINITY;
        }
    }
    memset(acc, 0, (size_t)d * sizeof *acc);
    double l = 0;
    for (int64_t t = 0; t < n; t++) {
        if (sc[t] == -INFINITY)
            continue;
        float w = expf(sc[t] - mx);
        l += w;
        j->vo.axpy(acc, v + t * d, d, w);
    }
    float *orow = (float *)a->out[0].data + item * d;
    for (int64_t c = 0; c < d; c++)
        orow[c] = cnt ? (float)(acc[c] / l) : 0.f;
    ((float *)a->out[1].data)[item] = cnt ? (float)(mx + log(l)) : -INFINITY;
    ((int32_t *)a->out[2].data)[item] = cnt;
}

sl_status sl__cpu_attn_threshold(const sl__kargs *a)
{
    const sl_attn_threshold_params *p = a->params;
    thr_job j = {a, sl__attn_dims_of(&a->in[0], &a->in[1], p->scale), sl__cpu_vecops_for(a->ctx)};
    return sl__cpu_parallel(a->ctx, j.dm.hq * j.dm.nq, thr_item, &j);
}

/* ---- select.pq_match ---- */

typedef struct pq_job {
    const sl__kargs *a;
    sl__attn_dims dm;
    int64_t hc, S, C, dc;
    int32_t *kcode;      /* [hkv, nk, S] */
    const int64_t *off;  /* [nq]: a row's first entry within its head */
    int64_t per_head;    /* entries per head */
} pq_job;

static void pq_encode(const float *x, const float *cb, int64_t S, int64_t C, int64_t dc, int32_t *code)
{
    for (int64_t s = 0; s < S; s++) {
        float best = INFINITY;
        int32_t arg = 0;
        for (int64_t c = 0; c < C; c++) {
            const float *w = cb + (s * C + c) * dc;
            float dist = 0.f;
            for (int64_t e = 0; e < dc; e++)
                dist += fabsf(x[s * dc + e] - w[e]);
            if (dist < best) {
                best = dist;
                arg = (int32_t)c;
            }
        }
        code[s] = arg;
    }
}

static const float *pq_codebook(const pq_job *j, int64_t kv_head)
{
    return (const float *)j->a->in[2].data + (kv_head / (j->dm.hkv / j->hc)) * j->S * j->C * j->dc;
}

static void pq_key_item(int64_t t, void *ud, int thread)
{
    (void)thread;
    const pq_job *j = ud;
    int64_t g = t / j->dm.nk;
    pq_encode((const float *)j->a->in[1].data + t * j->dm.d, pq_codebook(j, g), j->S, j->C, j->dc, j->kcode + t * j->S);
}

static void pq_row_item(int64_t item, void *ud, int thread)
{
    (void)thread;
    const pq_job *j = ud;
    const sl_select_pq_match_params *p = j->a->params;
    const sl__attn_dims *dm = &j->dm;
    int64_t h = item / dm->nq, r = item % dm->nq, g = h / dm->group, S = j->S, slots = p->slots;
    int32_t qcode[256], per_slot[64] = {0};
    pq_encode((const float *)j->a->in[0].data + item * dm->d, pq_codebook(j, g), S, j->C, j->dc, qcode);
    const int32_t *kc = j->kcode + g * dm->nk * S;
    int64_t n = p->causal ? dm->offset + r + 1 : dm->nk;
    n = n > dm->nk ? dm->nk : n;
    for (int64_t t = 0; t < n; t++) {
        int64_t m = 0;
        for (int64_t s = 0; s < S; s++)
            m += qcode[s] == kc[t * S + s];
        int64_t slot = slots * m / S;
        per_slot[slot < slots - 1 ? slot : slots - 1]++;
    }
    /* the cut: slots above it are taken whole, the first `need` of it in order */
    int64_t want = n < p->nnz ? n : p->nnz, above = 0, cut = slots - 1;
    while (cut > 0 && above + per_slot[cut] < want) {
        above += per_slot[cut];
        cut--;
    }
    int64_t need = want - above, at = h * j->per_head + j->off[r];
    int32_t *col = (int32_t *)j->a->out[1].data;
    for (int64_t t = 0; t < n; t++) {
        int64_t m = 0;
        for (int64_t s = 0; s < S; s++)
            m += qcode[s] == kc[t * S + s];
        int64_t slot = slots * m / S;
        slot = slot < slots - 1 ? slot : slots - 1;
        if (slot > cut || (slot == cut && need > 0)) {
            if (slot == cut)
                need--;
            col[at++] = (int32_t)t;
        }
    }
    int32_t *row_ptr = (int32_t *)j->a->out[0].data + h * (dm->nq + 1);
    row_ptr[r] = (int32_t)(h * j->per_head + j->off[r]);
    if (r == dm->nq - 1)
        row_ptr[dm->nq] = (int32_t)((h + 1) * j->per_head);
}

sl_status sl__cpu_select_pq_match(const sl__kargs *a)
{
    const sl_select_pq_match_params *p = a->params;
    pq_job j = {a, sl__attn_dims_of(&a->in[0], &a->in[1], 0), a->in[2].shape[0], a->in[2].shape[1], a->in[2].shape[2],
                a->in[2].shape[3], NULL, NULL, 0};
    if (j.S > 256)
        return sl_ctx_fail(a->ctx, SL_EUNSUPPORTED, "select.pq_match[cpu]: at most 256 subspaces, found %lld",
                           (long long)j.S);
    int64_t *off = a->scratch;
    j.kcode = (int32_t *)(off + j.dm.nq);
    for (int64_t r = 0; r < j.dm.nq; r++) {
        int64_t n = p->causal ? j.dm.offset + r + 1 : j.dm.nk;
        n = n > j.dm.nk ? j.dm.nk : n;
        off[r] = j.per_head;
        j.per_head += n < p->nnz ? n : p->nnz;
    }
    j.off = off;
    if (j.dm.nq == 0) {
        for (int64_t h = 0; h < j.dm.hq; h++)
            ((int32_t *)a->out[0].data)[h] = 0;
        return SL_OK;
    }
    sl_status s = sl__cpu_parallel(a->ctx, j.dm.hkv * j.dm.nk, pq_key_item, &j);
    if (s != SL_OK)
        return s;
    return sl__cpu_parallel(a->ctx, j.dm.hq * j.dm.nq, pq_row_item, &j);
}

size_t sl__cpu_tsel_scratch(sl_op op, const void *params, const sl_tensor *in, int n_threads)
{
    (void)params;
    switch (op) {
    case SL_OP_ATTN_THRESHOLD: return (size_t)n_threads * (size_t)(in[1].shape[1] + in[0].shape[2]) * sizeof(float);
    case SL_OP_SELECT_PQ_MATCH:
        return (size_t)in[0].shape[1] * sizeof(int64_t) +
               (size_t)(in[1].shape[0] * in[1].shape[1] * in[2].shape[1]) * sizeof(int32_t);
    default: return 0;
    }
}
