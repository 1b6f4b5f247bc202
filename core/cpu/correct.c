/* cpu/correct.c — the corrections (correct.*) on the CPU: element-wise
 * passes over the sparse output, threaded over (head, row chunk) items. *
 * correct.reshape, correct.cache_reuse and correct.linear_branch run over
 * chunks of rows on the thread pool. */
#include "cpu.h"
#include "parallel.h"

#include <math.h>
#include <string.h>

#define DELTA_ROWS 256 /* rows per work item of correct.delta */

typedef struct delta_job {
    const sl__kargs *a;
    int64_t n, d, s_p, g_n, r_n, items_per_head;
} delta_job;

static void delta_item(int64_t item, void *ud, int thread)
{
    (void)thread;
    const delta_job *j = ud;
    const sl_correct_delta_params *p = j->a->params;
    const float *os = j->a->in[0].data, *ls = j->a->in[1].data, *orw = j->a->in[2].data, *lr = j->a->in[3].data;
    float *o = j->a->out[0].data, *lse = j->a->out[1].data;
    int64_t h = item / j->items_per_head, i0 = (item % j->items_per_head) * DELTA_ROWS, d = j->d, gamma = p->gamma;
    int64_t i1 = i0 + DELTA_ROWS < j->n ? i0 + DELTA_ROWS : j->n;
    const float *rows = orw + h * j->r_n * d;
    for (int64_t i = i0; i < i1; i++) {
        float *oi = o + (h * j->n + i) * d;
        const float *si = os + (h * j->n + i) * d;
        int64_t dense_row = i >= j->s_p ? j->g_n + (i - j->s_p) : i % gamma == 0 ? i / gamma : -1;
        if (dense_row >= 0) {
            /* sampled and tail rows are the dense rows themselves */
            memcpy(oi, rows + dense_row * d, (size_t)d * sizeof *oi);
            lse[h * j->n + i] = lr[h * j->r_n + dense_row];
            continue;
        }
        lse[h * j->n + i] = ls[h * j->n + i];
        if (p->mode == 1) {
            memcpy(oi, si, (size_t)d * sizeof *oi);
            continue;
        }
        int64_t g = i / gamma;
        const float *a1 = rows + g * d, *s1 = os + (h * j->n + g * gamma) * d;
        if (!p->smooth) {
            for (int64_t c = 0; c < d; c++)
                oi[c] = si[c] + (a1[c] - s1[c]);
            continue;
        }
        int64_t g2 = g + 1 < j->g_n ? g + 1 : g;
        const float *a2 = rows + g2 * d, *s2 = os + (h * j->n + g2 * gamma) * d;
        float r = (float)(i % gamma) / (float)gamma;
        for (int64_t c = 0; c < d; c++)
            oi[c] = si[c] + (1.0f - r) * (a1[c] - s1[c]) + r * (a2[c] - s2[c]);
    }
}

sl_status sl__cpu_correct_delta(const sl__kargs *a)
{
    const sl_correct_delta_params *p = a->params;
    delta_job j = {.a = a, .n = a->in[0].shape[1], .d = a->in[0].shape[2]};
    int64_t t;
    sl_correct_delta_layout(j.n, p->gamma, p->tail, &j.s_p, &j.g_n, &t);
    j.r_n = j.g_n + t;
    j.items_per_head = (j.n + DELTA_ROWS - 1) / DELTA_ROWS;
    return sl__cpu_parallel(a->ctx, j.items_per_head * a->in[0].shape[0], delta_item, &j);
}

/* ---- correct.rectify ----
 * Pass 1 pools every key block (k̄, e^k, v̄ per kv head, in scratch); pass 2
 * takes one (head, query block) per item: the pooled logits and GAPR flags
 * of every key block visible to the block's last row, the sums over blocks
 * every row of the block sees in full (computed once), then per row only the
 * partially visible blocks (causal diagonal) on top. */

typedef struct rect_job {
    const sl__kargs *a;
    sl__attn_dims dm;
    int64_t bq, bk, nqb, nkb, hm;
    double *kbar, *kdev, *vbar; /* [hkv, nkb, d] */
    char *thread_ws;
    size_t ws_bytes;
} rect_job;

static void rect_pool_item(int64_t item, void *ud, int thread)
{
    (void)thread;
    const rect_job *j = ud;
    const float *k = j->a->in[1].data, *v = j->a->in[2].data;
    int64_t g = item / j->nkb, J = item % j->nkb, d = j->dm.d;
    int64_t j0 = J * j->bk, j1 = j0 + j->bk < j->dm.nk ? j0 + j->bk : j->dm.nk, n = j1 - j0;
    double *km = j->kbar + item * d, *ke = j->kdev + item * d, *vm = j->vbar + item * d;
    const float *kg = k + (g * j->dm.nk) * d, *vg = v + (g * j->dm.nk) * d;
    for (int64_t c = 0; c < d; c++)
        km[c] = vm[c] = ke[c] = 0;
    for (int64_t r = j0; r < j1; r++)
        for (int64_t c = 0; c < d; c++) {
            km[c] += kg[r * d + c];
            vm[c] += vg[r * d + c];
        }
    for (int64_t c = 0; c < d; c++) {
        km[c] /= (double)n;
        vm[c] /= (double)n;
    }
    for (int64_t r = j0; r < j1; r++)
        for (int64_t c = 0; c < d; c++)
            ke[c] += fabs(kg[r * d + c] - km[c]);
    for (int64_t c = 0; c < d; c++)
        ke[c] /= (double)n;
}

static double dotd(const double *a, const double *b, int64_t d)
{
    double s = 0;
    for (int64_t c = 0; c < d; c++)
        s += a[c] * b[c];
    return s;
}

static void rect_block_item(int64_t item, void *ud, int thread)
{
    const rect_job *j = ud;
    const sl__kargs *a = j->a;
    const sl_correct_rectify_params *p = a->params;
    const sl__attn_dims *dm = &j->dm;
    int64_t h = item / j->nqb, I = item % j->nqb, d = dm->d, g = h / dm->group, mh = h / (dm->hq / j->hm);
    int64_t nkb = j->nkb, bk = j->bk;
    int64_t i0 = I * j->bq, i1 = i0 + j->bq < dm->nq ? i0 + j->bq : dm->nq;
    double *qm = (double *)(j->thread_ws + (size_t)thread * j->ws_bytes), *qe = qm + d, *u = qe + d, *ns = u + d;
    double *sc = ns + d;               /* nkb pooled logits, then 3·d for a partial block's means */
    uint8_t *flag = (uint8_t *)(sc + nkb + 3 * d); /* per key block: 1 in C (kept or untrusted), 2 restored */
    const float *q = a->in[0].data, *os = a->in[7].data;
    const int32_t *rp = a->in[3].data, *ci = a->in[4].data;
    float *o = a->out[0].data, *r_out = a->out[1].data, *rest = a->out[2].data, *trusted = a->out[3].data;

    /* pooled query block */
    for (int64_t c = 0; c < d; c++)
        qm[c] = qe[c] = 0;
    for (int64_t i = i0; i < i1; i++)
        for (int64_t c = 0; c < d; c++)
            qm[c] += q[(h * dm->nq + i) * d + c];
    for (int64_t c = 0; c < d; c++)
        qm[c] /= (double)(i1 - i0);
    for (int64_t i = i0; i < i1; i++)
        for (int64_t c = 0; c < d; c++)
            qe[c] += fabs(q[(h * dm->nq + i) * d + c] - qm[c]);
    for (int64_t c = 0; c < d; c++)
        qe[c] /= (double)(i1 - i0);

    /* key blocks any row of the block sees: [0, n_vis); every row sees [0, n_full) whole */
    int64_t n_vis = nkb, n_full = nkb;
    if (p->causal) {
        int64_t last = dm->offset + i1 - 1, first = dm->offset + i0;
        n_vis = last / bk + 1 < nkb ? last / bk + 1 : nkb;
        n_full = (first + 1) / bk; /* blocks ending at or before the first row's position */
        if ((first + 1) >= dm->nk)
            n_full = nkb;
        n_full = n_full < n_vis ? n_full : n_vis;
    }
    memset(flag, 0, (size_t)nkb);
    for (int32_t e = rp[mh * (j->nqb + 1) + I]; e < rp[mh * (j->nqb + 1) + I + 1]; e++)
        flag[ci[e]] = 1;
    /* causal means: a block some row sees only in part is pooled per row over what it sees */
    const int per_row = p->causal && p->causal_means;
    /* the last row's own view of the last visible block: partial -> its GAPR is decided per row */
    int64_t last_partial = -1;
    if (per_row && n_vis > 0) {
        int64_t J = n_vis - 1, j0 = J * bk, j1 = j0 + bk < dm->nk ? j0 + bk : dm->nk, pos = dm->offset + i1 - 1;
        if (pos + 1 < j1)
            last_partial = J;
    }
    double mxf = -INFINITY, n_trusted = 0;
    for (int64_t J = 0; J < n_vis; J++) {
        const double *km = j->kbar + (g * nkb + J) * d, *ke = j->kdev + (g * nkb + J) * d;
        double raw = dotd(qm, km, d);
        sc[J] = dm->scale * raw;
        if (J < n_full)
            mxf = sc[J] > mxf ? sc[J] : mxf;
        if (!flag[J]) {
            int ng = p->gapr && !(fabs(raw) > fabs(dotd(qe, km, d)) + fabs(dotd(qm, ke, d)));
            flag[J] = ng ? 1 : 2;
            if (J != last_partial)
                n_trusted += !ng;
        }
    }
    if (!per_row) { /* one stabiliser for every block (all share the full-block logits) */
        for (int64_t J = n_full; J < n_vis; J++)
            mxf = sc[J] > mxf ? sc[J] : mxf;
    }
    /* the blocks every row sees whole, relative to mxf */
    double z_in = 0, z_out = 0;
    for (int64_t c = 0; c < d; c++)
        u[c] = 0;
    for (int64_t J = 0; J < n_full; J++) {
        int64_t len = (J + 1) * bk < dm->nk ? bk : dm->nk - J * bk;
        double w = (p->ipar ? (double)len : 1.0) * exp(sc[J] - mxf);
        if (flag[J] == 2) {
            z_out += w;
            const double *vm = j->vbar + (g * nkb + J) * d;
            for (int64_t c = 0; c < d; c++)
                u[c] += w * vm[c];
        } else
            z_in += w;
    }
    double *pk = sc + nkb, *pe = pk + d, *pv = pe + d; /* one partial block's means (per_row) */
    for (int64_t i = i0; i < i1; i++) {
        int64_t pos = dm->offset + i;
        /* this row's stabiliser: mxf, or above it a partial block's own logit */
        double mrow = mxf;
        if (per_row)
            for (int64_t J = n_full; J < n_vis; J++) {
                int64_t j0 = J * bk, j1 = j0 + bk < dm->nk ? j0 + bk : dm->nk;
                if (pos < j0)
                    continue;
                double s_row = sc[J];
                if (pos + 1 < j1) {
                    const float *kg = a->in[1].data;
                    kg += (g * dm->nk) * d;
                    int64_t cnt = pos + 1 - j0;
                    for (int64_t c = 0; c < d; c++) {
                        double m = 0;
                        for (int64_t r = j0; r < j0 + cnt; r++)
                            m += kg[r * d + c];
                        pk[c] = m / (double)cnt;
                    }
                    s_row = dm->scale * dotd(qm, pk, d);
                }
                mrow = s_row > mrow ? s_row : mrow;
            }
        double f = mxf > -INFINITY ? exp(mxf - mrow) : 0;
        double zi = z_in * f, zo = z_out * f;
        for (int64_t c = 0; c < d; c++)
            ns[c] = u[c] * f;
        for (int64_t J = n_full; J < n_vis; J++) {
            int64_t j0 = J * bk, j1 = j0 + bk < dm->nk ? j0 + bk : dm->nk;
            int64_t cnt = p->causal ? (pos < j0 ? 0 : (pos + 1 < j1 ? pos + 1 : j1) - j0) : j1 - j0;
            if (!cnt)
                continue;
            double s_row = sc[J];
            int restored = flag[J] == 2;
            const double *vm = j->vbar + (g * nkb + J) * d;
            if (per_row && cnt < j1 - j0) {
                const float *kg = (const float *)a->in[1].data + (g * dm->nk) * d;
                const float *vg = (const float *)a->in[2].data + (g * dm->nk) * d;
                for (int64_t c = 0; c < d; c++) {
                    double mk = 0, mv = 0, e = 0;
                    for (int64_t r = j0; r < j0 + cnt; r++) {
                        mk += kg[r * d + c];
                        mv += vg[r * d + c];
                    }
                    mk /= (double)cnt;
                    for (int64_t r = j0; r < j0 + cnt; r++)
                        e += fabs(kg[r * d + c] - mk);
                    pk[c] = mk;
                    pe[c] = e / (double)cnt;
                    pv[c] = mv / (double)cnt;
                }
                double raw = dotd(qm, pk, d);
                s_row = dm->scale * raw;
                int in_m = 0;
                for (int32_t e = rp[mh * (j->nqb + 1) + I]; e < rp[mh * (j->nqb + 1) + I + 1]; e++)
                    in_m |= ci[e] == J;
                int ng = p->gapr && !(fabs(raw) > fabs(dotd(qe, pk, d)) + fabs(dotd(qm, pe, d)));
                restored = !in_m && !ng;
                if (J == last_partial && i == i1 - 1)
                    n_trusted += restored;
                vm = pv;
            }
            double w = (p->ipar ? (double)cnt : 1.0) * exp(s_row - mrow);
            if (restored) {
                zo += w;
                for (int64_t c = 0; c < d; c++)
                    ns[c] += w * vm[c];
            } else
                zi += w;
        }
        float *oi = o + (h * dm->nq + i) * d;
        const float *si = os + (h * dm->nq + i) * d;
        double z = zi + zo;
        if (!(z > 0)) {
            memcpy(oi, si, (size_t)d * sizeof *oi);
            r_out[h * dm->nq + i] = 1;
            rest[h * dm->nq + i] = 0;
            continue;
        }
        double r = zi / z;
        for (int64_t c = 0; c < d; c++)
            oi[c] = (float)(r * (double)si[c] + ns[c] / z);
        r_out[h * dm->nq + i] = (float)r;
        rest[h * dm->nq + i] = (float)(zo / z);
    }
    trusted[h * j->nqb + I] = (float)n_trusted;
}

static size_t rect_thread_bytes(int64_t d, int64_t nkb)
{
    return ((size_t)(7 * d + nkb) * sizeof(double) + (size_t)nkb + 63) / 64 * 64;
}

size_t sl__cpu_correct_scratch(sl_op op, const void *params, const sl_tensor *in, int n_threads)
{
    if (op == SL_OP_CORRECT_RECTIFY) {
        const sl_correct_rectify_params *p = params;
        int64_t d = in[0].shape[2], nkb = (in[1].shape[1] + p->bk - 1) / p->bk;
        return (size_t)(3 * in[1].shape[0] * nkb * d) * sizeof(double) + rect_thread_bytes(d, nkb) * (size_t)n_threads;
    }
    if (op == SL_OP_CORRECT_COMPENSATE || op == SL_OP_CORRECT_SMOOTH_K) {
        /* per q head (compensate) or kv head (smooth_k): a running sum / mean of d doubles */
        int64_t d = in[0].shape[2];
        return (size_t)d * sizeof(double) * (size_t)(op == SL_OP_CORRECT_SMOOTH_K ? in[1].shape[0] : n_threads);
    }
    return 0;
}

sl_status sl__cpu_correct_rectify(const sl__kargs *a)
{
    const sl_correct_rectify_params *p = a->params;
    rect_job j = {.a = a, .dm = sl__attn_dims_of(&a->in[0], &a->in[1], p->scale), .bq = p->bq, .bk = p->bk};
    j.nqb = (j.dm.nq + j.bq - 1) / j.bq;
    j.nkb = (j.dm.nk + j.bk - 1) / j.bk;
    j.hm = a->in[3].shape[0];
    size_t pooled = (size_t)(j.dm.hkv * j.nkb * j.dm.d);
    j.kbar = a->scratch;
    j.kdev = j.kbar + pooled;
    j.vbar = j.kdev + pooled;
    j.thread_ws = (char *)(j.vbar + pooled);
    j.ws_bytes = rect_thread_bytes(j.dm.d, j.nkb);
    sl_status s = sl__cpu_parallel(a->ctx, j.dm.hkv * j.nkb, rect_pool_item, &j);
    if (s == SL_OK)
        s = sl__cpu_parallel(a->ctx, j.dm.hq * j.nqb, rect_block_item, &j);
    return s;
}

/* ---- correct.compensate ---- one item per query head: the running mean of
 * V moves forward with the rows (positions only grow). */

typedef struct comp_job {
    const sl__kargs *a;
} comp_job;

static void comp_item(int64_t h, void *ud, int thread)
{
    const comp_job *j = ud;
    const sl__kargs *a = j->a;
    const sl_correct_comp_params *p = a->params;
    const float *oin = a->in[0].data, *lse = a->in[1].data, *lref = a->in[2].data, *v = a->in[3].data;
    int64_t hq = a->in[0].shape[0], nq = a->in[0].shape[1], d = a->in[0].shape[2];
    int64_t hkv = a->in[3].shape[0], nk = a->in[3].shape[1], off = nk - nq;
    float *o = a->out[0].data, *l_out = a->out[1].data, *lost = a->out[2].data;
    const float *vg = v + (h / (hq / hkv)) * nk * d;
    double *sum = (double *)a->scratch + (size_t)thread * (size_t)d;
    int64_t summed = 0; /* keys in sum */
    for (int64_t c = 0; c < d; c++)
        sum[c] = 0;
    double log_c = log(p->sdc_scale);
    for (int64_t i = 0; i < nq; i++) {
        const float *oi = oin + (h * nq + i) * d;
        float *out = o + (h * nq + i) * d;
        int64_t seen = p->causal ? off + i + 1 : nk;
        float L = lse[h * nq + i], R = lref[h * nq + i];
        if (seen <= p->min_len) {
            memcpy(out, oi, (size_t)d * sizeof *out);
            l_out[h * nq + i] = L;
            lost[h * nq + i] = 0;
            continue;
        }
        double f = 1, lnew = L;
        double lmiss = p->estimate == 0 ? (R > L ? R + log1p(-exp((double)L - R)) : -INFINITY) : R;
        if (lmiss > -INFINITY && p->sdc_scale > 0) {
            double lc = log_c + lmiss;
            if (L == -INFINITY) {
                f = 0;
                lnew = lc;
            } else {
                double m = L > lc ? L : lc;
                lnew = m + log(exp(L - m) + exp(lc - m));
                f = exp(L - lnew);
            }
        }
        double lam = p->vmc ? 1 - f : 0;
        if (lam > 0) {
            for (; summed < seen; summed++)
                for (int64_t c = 0; c < d; c++)
                    sum[c] += vg[summed * d + c];
            for (int64_t c = 0; c < d; c++)
                out[c] = (float)(f * oi[c] + lam * sum[c] / (double)seen);
        } else {
            for (int64_t c = 0; c < d; c++)
                out[c] = (float)(f * oi[c]);
        }
        l_out[h * nq + i] = (float)lnew;
        lost[h * nq + i] = (float)(1 - f);
    }
}

sl_status sl__cpu_correct_compensate(const sl__kargs *a)
{
    comp_job j = {a};
    return sl__cpu_parallel(a->ctx, a->in[0].shape[0], comp_item, &j);
}

/* ---- correct.smooth_k ---- one item per kv head. */

static void smooth_item(int64_t g, void *ud, int thread)
{
    (void)thread;
    const sl__kargs *a = ud;
    const sl_correct_smooth_params *p = a->params;
    sl__attn_dims dm = sl__attn_dims_of(&a->in[0], &a->in[1], p->scale);
    const float *q = a->in[0].data, *k = a->in[1].data, *lse = a->in[2].buf ? a->in[2].data : NULL;
    float *ks = a->out[0].data, *l_out = a->out[1].data;
    double *mean = (double *)a->scratch + g * dm.d;
    const float *kg = k + g * dm.nk * dm.d;
    for (int64_t c = 0; c < dm.d; c++)
        mean[c] = 0;
    for (int64_t j = 0; j < dm.nk; j++)
        for (int64_t c = 0; c < dm.d; c++)
            mean[c] += kg[j * dm.d + c];
    for (int64_t c = 0; c < dm.d; c++)
        mean[c] /= (double)dm.nk;
    for (int64_t j = 0; j < dm.nk; j++)
        for (int64_t c = 0; c < dm.d; c++)
            ks[(g * dm.nk + j) * dm.d + c] = (float)(kg[j * dm.d + c] - mean[c]);
    for (int64_t h = g * dm.group; h < (g + 1) * dm.group; h++)
        for (int64_t i = 0; i < dm.nq; i++) {
            double s = 0;
            const float *qi = q + (h * dm.nq + i) * dm.d;
            for (int64_t c = 0; c < dm.d; c++)
                s += qi[c] * mean[c];
            l_out[h * dm.nq + i] = (float)((lse ? lse[h * dm.nq + i] : 0.0) + dm.scale * s);
        }
}

sl_status sl__cpu_correct_smooth_k(const sl__kargs *a)
{
    return sl__cpu_parallel(a->ctx, a->in[1].shape[0], smooth_item, (void *)a);
}

/* ---- correct.lepe ---- items of (head, row chunk). */

typedef struct lepe_job {
    const sl__kargs *a;
    int64_t items_per_head;
} lepe_job;

static void lepe_item(int64_t item, void *ud, int thread)
{
    (void)thread;
    const lepe_job *j = ud;
    const sl__kargs *a = j->a;
    const sl_correct_lepe_params *p = a->params;
    const float *oin = a->in[0].data, *v = a->in[1].data, *w = a->in[2].buf ? a->in[2].data : NULL;
    int64_t hq = a->in[0].shape[0], nq = a->in[0].shape[1], d = a->in[0].shape[2];
    int64_t hkv = a->in[1].shape[0], nk = a->in[1].shape[1], kn = p->kernel;
    int64_t h = item / j->items_per_head, i0 = (item % j->items_per_head) * DELTA_ROWS;
    int64_t i1 = i0 + DELTA_ROWS < nq ? i0 + DELTA_ROWS : nq;
    const float *vg = v + (h / (hq / hkv)) * nk * d;
    const float *wr = w ? w + (a->in[2].shape[0] == 1 ? 0 : h) * kn * d : NULL;
    float *o = a->out[0].data;
    float alpha = (float)p->alpha, uni = (float)(1.0 / (double)kn);
    for (int64_t i = i0; i < i1; i++) {
        int64_t pos = nk - nq + i, first = p->causal ? pos - kn + 1 : pos - kn / 2;
        float *oi = o + (h * nq + i) * d;
        const float *src = oin + (h * nq + i) * d;
        memcpy(oi, src, (size_t)d * sizeof *oi);
        int64_t t0 = first < 0 ? -first : 0, t1 = first + kn > nk ? nk - first : kn;
        for (int64_t t = t0; t < t1; t++) {
            const float *vr = vg + (first + t) * d;
            if (wr)
                for (int64_t c = 0; c < d; c++)
                    oi[c] += alpha * wr[t * d + c] * vr[c];
            else
                for (int64_t c = 0; c < d; c++)
                    oi[c] += alpha * uni * vr[c];
        }
    }
}

sl_status sl__cpu_correct_lepe(const sl__kargs *a)
{
    lepe_job j = {a, (a->in[0].shape[1] + DELTA_ROWS - 1) / DELTA_ROWS};
    return sl__cpu_parallel(a->ctx, j.items_per_head * a->in[0].shape[0], lepe_item, &j);
}

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
