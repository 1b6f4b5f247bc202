/* cpu/correct_ext.c — cpu kernels of the ops of issue 5 for cards
 * re_ttention (correct.reshape), flashblock (correct.cache_reuse), salad
 * (correct.linear_branch, attn.linear) and psa_pyramid (attn.pooled_kv).
 * The row-wise corrections run over chunks of rows on the thread pool.
 * attn.linear keeps the running state S = Σ phi(k) v^T, z = Σ phi(k) (in
 * double: a prefix sum over thousands of keys) and reads each key once per
 * query head: O(n·d²) instead of the reference's O(n²·d). attn.pooled_kv
 * pools K and V once per level in use, then runs the flash tile of cpu/attn.c
 * over each kept block's pooled keys with the log(count) bias. */
#include "cpu.h"

#include <math.h>
#include <string.h>

#define ROW_CHUNK 256 /* rows per work item of the row-wise corrections */

typedef struct rows_job {
    const sl__kargs *a;
    int64_t rows;
} rows_job;

static void reshape_item(int64_t item, void *ud, int thread)
{
    (void)thread;
    const rows_job *j = ud;
    const sl__kargs *a = j->a;
    const sl_correct_reshape_params *p = a->params;
    int64_t d = a->in[0].shape[2], i0 = item * ROW_CHUNK, i1 = i0 + ROW_CHUNK < j->rows ? i0 + ROW_CHUNK : j->rows;
    const float *o = a->in[0].data, *lse = a->in[1].data, *ref_o = a->in[2].data, *ref_l = a->in[3].data;
    const float *ratio = a->in[4].data, *res = a->in[5].data;
    float *out = a->out[0].data, *r_out = a->out[1].data, *res_out = a->out[2].data;
    for (int64_t i = i0; i < i1; i++) {
        const float *oi = o + i * d;
        float *yi = out + i * d, *ei = res_out + i * d;
        if (ref_o) {
            float r = !p->use_ratio || ref_l[i] == -INFINITY ? 1.f : expf(lse[i] - ref_l[i]);
            const float *xi = ref_o + i * d;
            for (int64_t c = 0; c < d; c++)
                ei[c] = xi[c] - r * oi[c];
            memcpy(yi, xi, (size_t)d * sizeof *yi);
            r_out[i] = r;
        } else {
            float r = p->use_ratio ? ratio[i] : 1.f;
            if (res) {
                memcpy(ei, res + i * d, (size_t)d * sizeof *ei);
                for (int64_t c = 0; c < d; c++)
                    yi[c] = r * oi[c] + ei[c];
            } else {
                memset(ei, 0, (size_t)d * sizeof *ei);
                for (int64_t c = 0; c < d; c++)
                    yi[c] = r * oi[c];
            }
            r_out[i] = (float)((double)ratio[i] + p->drift);
        }
    }
}

static void cache_item(int64_t item, void *ud, int thread)
{
    (void)thread;
    const rows_job *j = ud;
    const sl__kargs *a = j->a;
    const sl_correct_cache_params *p = a->params;
    int64_t d = a->in[0].shape[2], dq = a->in[4].buf ? a->in[4].shape[2] : 0;
    int64_t i0 = item * ROW_CHUNK, i1 = i0 + ROW_CHUNK < j->rows ? i0 + ROW_CHUNK : j->rows;
    const float *o1 = a->in[0].data, *l1 = a->in[1].data, *o2 = a->in[2].data, *l2 = a->in[3].data;
    const float *q = a->in[4].data, *cq = a->in[5].data;
    float *o = a->out[0].data, *lse = a->out[1].data, *reused = a->out[2].data;
    for (int64_t i = i0; i < i1; i++) {
        int reuse = 1;
        if (q) {
            double diff = 0, norm = 0;
            for (int64_t c = 0; c < dq; c++) {
                double t = (double)q[i * dq + c] - (double)cq[i * dq + c];
                diff += t * t;
                norm += (double)cq[i * dq + c] * (double)cq[i * dq + c];
            }
            reuse = sqrt(diff) <= p->tau * sqrt(norm);
        }
        reused[i] = (float)reuse;
        float x = l1[i], y = reuse ? l2[i] : -INFINITY, m = x > y ? x : y;
        if (m == -INFINITY) {
            memset(o + i * d, 0, (size_t)d * sizeof *o);
            lse[i] = -INFINITY;
            continue;
        }
        if (y == -INFINITY || x == -INFINITY) {
            /* one side empty: the other passes through exactly */
            memcpy(o + i * d, (y == -INFINITY ? o1 : o2) + i * d, (size_t)d * sizeof *o);
            lse[i] = m;
            continue;
        }
        float w1 = expf(x - m), w2 = expf(y - m), inv = 1.f / (w1 + w2);
        w1 *= inv;
        w2 *= inv;
        for (int64_t c = 0; c < d; c++)
            o[i * d + c] = w1 * o1[i * d + c] + w2 * o2[i * d + c];
        lse[i] = m + logf(1.f / inv);
    }
}

static void linear_branch_item(int64_t item, void *ud, int thread)
{
    (void)thread;
    const rows_job *j = ud;
    const sl__kargs *a = j->a;
    const sl_correct_linear_params *p = a->params;
    int64_t n = a->in[0].shape[1], d = a->in[0].shape[2];
    int64_t i0 = item * ROW_CHUNK, i1 = i0 + ROW_CHUNK < j->rows ? i0 + ROW_CHUNK : j->rows;
    const float *o = a->in[0].data, *ol = a->in[1].data, *gate = a->in[2].data, *proj = a->in[3].data;
    int64_t gh = a->in[2].shape[0], ph = proj ? a->in[3].shape[0] : 0;
    float *out = a->out[0].data;
    for (int64_t i = i0; i < i1; i++) {
        int64_t h = i / n;
        float g = gate[gh == 1 ? 0 : h], keep = p->convex ? 1.f - g : 1.f;
        const float *x = ol + i * d, *s = o + i * d, *P = proj ? proj + (ph == 1 ? 0 : h) * d * d : NULL;
        float *y = out + i * d;
        for (int64_t c = 0; c < d; c++) {
            float px = x[c];
            if (P) {
                px = 0.f;
                for (int64_t e = 0; e < d; e++)
                    px += P[c * d + e] * x[e];
            }
            y[c] = keep * s[c] + g * px;
        }
    }
}

static sl_status run_rows(const sl__kargs *a, int64_t rows, sl__parallel_fn fn)
{
    rows_job j = {a, rows};
    return sl__parallel_for(a->ctx, (rows + ROW_CHUNK - 1) / ROW_CHUNK, sl_ctx_threads(a->ctx), fn, &j);
}

sl_status sl__cpu_correct_reshape(const sl__kargs *a) { return run_rows(a, sl_tensor_numel(&a->in[1]), reshape_item); }
sl_status sl__cpu_correct_cache_reuse(const sl__kargs *a)
{
    return run_rows(a, sl_tensor_numel(&a->in[1]), cache_item);
}
sl_status sl__cpu_correct_linear_branch(const sl__kargs *a)
{
    return run_rows(a, a->in[0].shape[0] * a->in[0].shape[1], linear_branch_item);
}

/* ---- attn.linear ---- */

static inline float phi(float x, int feature) { return feature == 0 ? (x > 0.f ? x + 1.f : expf(x)) : (x > 0.f ? x : 0.f); }

typedef struct lin_job {
    const sl__kargs *a;
    sl__attn_dims dm;
} lin_job;

/* One query head: keys are folded into (S, z) as the rows' limits grow. */
static void lin_item(int64_t h, void *ud, int thread)
{
    const lin_job *j = ud;
    const sl__kargs *a = j->a;
    const sl__attn_dims *dm = &j->dm;
    const sl_attn_linear_params *p = a->params;
    int64_t d = dm->d, g = h / dm->group;
    double *S = (double *)a->scratch + (size_t)thread * (size_t)(d * d + 3 * d), *z = S + d * d, *fq = z + d, *fk = fq + d;
    const float *k = (const float *)a->in[1].data + g * dm->nk * d, *v = (const float *)a->in[2].data + g * dm->nk * d;
    const float *q = (const float *)a->in[0].data + h * dm->nq * d;
    float *o = (float *)a->out[0].data + h * dm->nq * d;
    int feature = (int)p->feature;
    memset(S, 0, (size_t)(d * d + d) * sizeof *S);
    int64_t seen = 0;
    for (int64_t r = 0; r < dm->nq; r++) {
        int64_t lim = p->causal ? dm->offset + r + 1 : dm->nk;
        for (; seen < lim; seen++) {
            const float *kj = k + seen * d, *vj = v + seen * d;
            for (int64_t c = 0; c < d; c++)
                fk[c] = phi(kj[c], feature);
            for (int64_t c = 0; c < d; c++) {
                double f = fk[c];
                double *Sr = S + c * d;
                z[c] += f;
                for (int64_t e = 0; e < d; e++)
                    Sr[e] += f * (double)vj[e];
            }
        }
        const float *qr = q + r * d;
        double den = 0;
        for (int64_t c = 0; c < d; c++) {
            fq[c] = phi(qr[c], feature);
            den += fq[c] * z[c];
        }
        float *orow = o + r * d;
        if (!(den > 0)) {
            memset(orow, 0, (size_t)d * sizeof *orow);
            continue;
        }
        /* o = fq^T S / den, accumulated row by row of S (contiguous) */
        double *acc = fk; /* fk is free until the next key */
        memset(acc, 0, (size_t)d * sizeof *acc);
        for (int64_t c = 0; c < d; c++) {
            double f = fq[c];
            const double *Sr = S + c * d;
            for (int64_t e = 0; e < d; e++)
                acc[e] += f * Sr[e];
        }
        for (int64_t e = 0; e < d; e++)
            orow[e] = (float)(acc[e] / den);
    }
}

sl_status sl__cpu_attn_linear(const sl__kargs *a)
{
    lin_job j = {a, sl__attn_dims_of(&a->in[0], &a->in[1], 0)};
    return sl__parallel_for(a->ctx, j.dm.hq, sl_ctx_threads(a->ctx), lin_item, &j);
}

/* ---- attn.pooled_kv ---- */

#define MAX_LEVEL_LOG 12 /* levels up to 2^12 = 4096 = the largest bk */

/* Where level 2^e's pooled keys live in the scratch: per kv head and key
 * block, G = ceil(bk / 2^e) slots of k (d floats), v (d floats) and log c. */
typedef struct pooled_layout {
    int64_t off[MAX_LEVEL_LOG + 1]; /* float offset of level 2^e (e >= 1); -1 when unused */
    int64_t slots[MAX_LEVEL_LOG + 1];
    size_t floats;                  /* pooled part */
    size_t tile_floats;             /* one thread's tile */
} pooled_layout;

static pooled_layout pooled_plan(const sl_attn_pooled_params *p, const sl_tensor *in)
{
    pooled_layout L;
    int64_t hkv = in[1].shape[0], nk = in[1].shape[1], d = in[0].shape[2], nkb = (nk + p->bk - 1) / p->bk;
    int used[MAX_LEVEL_LOG + 1] = {0};
    const uint8_t *lv = in[3].data;
    for (int64_t i = 0; i < sl_tensor_numel(&in[3]); i++)
        for (int e = 1; e <= MAX_LEVEL_LOG; e++)
            if (lv[i] == (1 << e))
                used[e] = 1;
    L.floats = 0;
    for (int e = 0; e <= MAX_LEVEL_LOG; e++) {
        L.off[e] = -1;
        L.slots[e] = 0;
        if (e == 0 || !used[e])
            continue;
        L.slots[e] = (p->bk + (1 << e) - 1) >> e;
        L.off[e] = (int64_t)L.floats;
        L.floats += (size_t)(hkv * nkb * L.slots[e] * (2 * d + 1));
    }
    L.floats = (L.floats + 15) / 16 * 16;
    L.tile_floats = (sl__cpu_tile_floats(p->bq, p->bk, d) + 15) / 16 * 16;
    return L;
}

typedef struct pooled_job {
    const sl__kargs *a;
    sl__attn_dims dm;
    pooled_layout L;
    sl__cpu_rowops ro;
    int64_t nqb, nkb, hm, n_used;
    int used_e[MAX_LEVEL_LOG];
} pooled_job;

/* Pointers of block c's slots at level 2^e for kv head g: k [G, d], v [G, d], logc [G]. */
static void slot_ptrs(const pooled_job *j, int e, int64_t g, int64_t c, float **k, float **v, float **lc)
{
    int64_t d = j->dm.d, G = j->L.slots[e];
    float *base = (float *)j->a->scratch + j->L.off[e];
    int64_t blocks = j->dm.hkv * j->nkb, at = g * j->nkb + c;
    *k = base + at * G * d;
    *v = base + blocks * G * d + at * G * d;
    *lc = base + 2 * blocks * G * d + at * G;
}

/* Item (level in use, kv head): pools every block of that head. */
static void pool_item(int64_t item, void *ud, int thread)
{
    (void)thread;
    const pooled_job *j = ud;
    const sl_attn_pooled_params *p = j->a->params;
    int e = j->used_e[item % j->n_used];
    int64_t g = item / j->n_used, d = j->dm.d, nk = j->dm.nk, s = (int64_t)1 << e;
    const float *K = (const float *)j->a->in[1].data + g * nk * d, *V = (const float *)j->a->in[2].data + g * nk * d;
    for (int64_t c = 0; c < j->nkb; c++) {
        float *pk, *pv, *lc;
        slot_ptrs(j, e, g, c, &pk, &pv, &lc);
        int64_t end = (c + 1) * p->bk < nk ? (c + 1) * p->bk : nk;
        for (int64_t t = 0, j0 = c * p->bk; j0 < end; t++, j0 += s) {
            int64_t j1 = j0 + s < end ? j0 + s : end, cnt = j1 - j0;
            float *kt = pk + t * d, *vt = pv + t * d;
            memset(kt, 0, (size_t)d * sizeof *kt);
            memset(vt, 0, (size_t)d * sizeof *vt);
            for (int64_t jj = j0; jj < j1; jj++)
                for (int64_t x = 0; x < d; x++) {
                    kt[x] += K[jj * d + x];
                    vt[x] += V[jj * d + x];
                }
            float inv = 1.f / (float)cnt;
            for (int64_t x = 0; x < d; x++) {
                kt[x] *= inv;
                vt[x] *= inv;
            }
            lc[t] = logf((float)cnt);
        }
    }
}

/* Item (query head, query block): the flash tile over every kept block. */
static void pooled_item(int64_t item, void *ud, int thread)
{
    const pooled_job *j = ud;
    const sl__kargs *a = j->a;
    const sl_attn_pooled_params *p = a->params;
    const sl__attn_dims *dm = &j->dm;
    int64_t h = item % dm->hq, qb = item / dm->hq, d = dm->d;
    int64_t r0 = qb * p->bq, rows = dm->nq - r0 < p->bq ? dm->nq - r0 : p->bq;
    int64_t g = h / dm->group, mh = h / (dm->hq / j->hm);
    sl__cpu_tile w = sl__cpu_tile_make((float *)a->scratch + j->L.floats + (size_t)thread * j->L.tile_floats, p->bq,
                                       p->bk, d);
    const float *q = (const float *)a->in[0].data + (h * dm->nq + r0) * d;
    for (int64_t i = 0; i < rows * d; i++)
        w.qs[i] = q[i] * (float)dm->scale;
    sl__cpu_tile_reset(&w, rows, d);
    const uint8_t *lv = (const uint8_t *)a->in[3].data + (mh * j->nqb + qb) * j->nkb;
    const float *K = (const float *)a->in[1].data + g * dm->nk * d, *V = (const float *)a->in[2].data + g * dm->nk * d;
    for (int64_t c = 0; c < j->nkb; c++) {
        int64_t s = lv[c];
        if (!s)
            continue;
        int64_t k0 = c * p->bk, len = dm->nk - k0 < p->bk ? dm->nk - k0 : p->bk;
        /* causal: skip a block no row of the tile sees at all */
        if (p->causal && k0 + (s < len ? s : len) - 1 > dm->offset + r0 + rows - 1)
            continue;
        const float *kp = K + k0 * d, *vp = V + k0 * d, *lc = NULL;
        int64_t nc = len;
        if (s > 1) {
            int e = 0;
            while (((int64_t)1 << e) < s)
                e++;
            float *pk, *pv, *plc;
            slot_ptrs(j, e, g, c, &pk, &pv, &plc);
            kp = pk, vp = pv, lc = plc;
            nc = (len + s - 1) / s;
        }
        sl__cpu_tile_scores(&w, rows, d, kp, nc, p->bk);
        for (int64_t r = 0; r < rows; r++) {
            float *sr = w.s + r * p->bk;
            int64_t pos = dm->offset + r0 + r;
            for (int64_t t = 0; t < nc; t++) {
                int64_t last = k0 + ((t + 1) * s < len ? (t + 1) * s : len) - 1;
                if (p->causal && last > pos)
                    sr[t] = -INFINITY;
                else if (lc)
                    sr[t] += lc[t];
            }
        }
        sl__cpu_tile_update(&w, &j->ro, rows, d, vp, nc, p->bk, 0, 0.f);
    }
    float *o = (float *)a->out[0].data + (h * dm->nq + r0) * d, *lse = (float *)a->out[1].data + h * dm->nq + r0;
    for (int64_t r = 0; r < rows; r++)
        sl__cpu_tile_end_row(&w, r, d, o + r * d, lse + r);
}

sl_status sl__cpu_attn_pooled_kv(const sl__kargs *a)
{
    const sl_attn_pooled_params *p = a->params;
    pooled_job j = {.a = a, .dm = sl__attn_dims_of(&a->in[0], &a->in[1], p->scale), .L = pooled_plan(p, a->in),
                    .ro = sl__cpu_rowops_get()};
    j.nqb = a->in[3].shape[1];
    j.nkb = a->in[3].shape[2];
    j.hm = a->in[3].shape[0];
    for (int e = 1; e <= MAX_LEVEL_LOG; e++)
        if (j.L.off[e] >= 0)
            j.used_e[j.n_used++] = e;
    if (j.dm.hq == 0 || j.dm.nq == 0)
        return SL_OK;
    sl_status s = SL_OK;
    if (j.n_used)
        s = sl__parallel_for(a->ctx, j.dm.hkv * j.n_used, sl_ctx_threads(a->ctx), pool_item, &j);
    if (s == SL_OK)
        s = sl__cpu_parallel(a->ctx, j.dm.hq * j.nqb, pooled_item, &j);
    return s;
}

size_t sl__cpu_correct_ext_scratch(sl_op op, const void *params, const sl_tensor *in, int n_threads)
{
    switch (op) {
    case SL_OP_ATTN_LINEAR: {
        int64_t d = in[0].shape[2];
        return (size_t)n_threads * (size_t)(d * d + 3 * d) * sizeof(double);
    }
    case SL_OP_ATTN_POOLED_KV: {
        pooled_layout L = pooled_plan(params, in);
        return (L.floats + (size_t)n_threads * L.tile_floats) * sizeof(float);
    }
    default: return 0;
    }
}
