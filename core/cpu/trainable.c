/* cpu/trainable.c — cpu kernels of the trainable family (issue 14; card
 * nsa): trainable.compress as items of (head, window) and trainable.nsa in
 * two passes on the thread pool: items of (kv head, query row) run the
 * compressed branch (each row's compressed tokens once per query head of its
 * group) and select the group's blocks; then items of (kv head, tile of
 * query rows) run the selected blocks and the window for the whole tile with
 * sgemm: the union of the tile's selected blocks and window blocks, scores
 * Q_tile·K_blockᵀ per block, per row the two masked softmaxes (selected,
 * window) and the union's log-sum-exp, one combined weight per key
 * (g_slc·p_slc + g_swa·p_swa) and P·V per block (session 4). */
#include "cpu.h"
#include "parallel.h"
#include "trainable_select.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- trainable.compress ---- */

typedef struct compress_job {
    const sl__kargs *a;
    double *acc; /* D doubles per thread */
} compress_job;

static void compress_item(int64_t item, void *ud, int thread)
{
    const compress_job *j = ud;
    const sl__kargs *a = j->a;
    const sl_trainable_compress_params *p = a->params;
    int64_t N = a->in[0].shape[1], D = a->in[0].shape[2], C = a->out[0].shape[1];
    int64_t h = item / C, i = item % C;
    const float *X = (const float *)a->in[0].data + h * N * D;
    const float *PE = a->in[2].buf ? (const float *)a->in[2].data + h * p->l * D : NULL;
    const float *W = p->mode == 1 ? (const float *)a->in[1].data + h * p->l * D * D : NULL;
    double *acc = j->acc + (size_t)thread * (size_t)D;
    for (int64_t c = 0; c < D; c++)
        acc[c] = 0;
    for (int64_t r = 0; r < p->l && i * p->s + r < N; r++) {
        const float *row = X + (i * p->s + r) * D;
        for (int64_t e = 0; e < D; e++) {
            double val = (double)row[e] + (PE ? PE[r * D + e] : 0.0f);
            if (!W) {
                acc[e] += val;
                continue;
            }
            const float *wr = W + (r * D + e) * D;
            for (int64_t c = 0; c < D; c++)
                acc[c] += val * wr[c];
        }
    }
    float *out = (float *)a->out[0].data + item * D;
    for (int64_t c = 0; c < D; c++)
        out[c] = (float)(W ? acc[c] : acc[c] / (double)p->l);
}

sl_status sl__cpu_trainable_compress(const sl__kargs *a)
{
    int64_t D = a->in[0].shape[2], items = a->out[0].shape[0] * a->out[0].shape[1];
    int nt = sl_ctx_threads(a->ctx);
    size_t bytes = sizeof(double) * (size_t)(D > 0 ? D : 1) * (size_t)(nt > 0 ? nt : 1);
    compress_job j = {a, sl_ctx_alloc(a->ctx, bytes)};
    if (!j.acc)
        return sl_ctx_fail(a->ctx, SL_ENOMEM, "trainable.compress[cpu]: out of memory for %zu bytes", bytes);
    sl_status s = sl__cpu_parallel(a->ctx, items, compress_item, &j);
    sl_ctx_dealloc(a->ctx, j.acc, bytes);
    return s;
}

/* ---- trainable.nsa ---- */

typedef struct nsa_job {
    const sl__kargs *a;
    sl__cpu_vecops vo;
    float *work; /* per thread: Nc scores, nb flags */
    int64_t per_thread;
    sl__cpu_rowops ro;
    const float **vptr; /* per thread: Nc value rows of the compressed tokens */
    int64_t np;
    /* the tile pass */
    int64_t tile;      /* query rows per tile */
    float *twork;      /* per thread: tile_per_thread floats */
    int64_t tile_per_thread;
    int32_t *tint;     /* per thread: tint_per_thread int32 */
    int64_t tint_per_thread;
    uint8_t *tsel;     /* per thread: tile x nb flags (row selects block) */
} nsa_job;

/* One online-softmax accumulator: running max m, sum l, acc (D floats). */
typedef struct online {
    float m, l;
    float *acc;
} online;

/* Adds key score sc with value row v (times vw) to the accumulator. */
static void online_add(online *o, const sl__cpu_vecops *vo, float sc, const float *v, float vw, int64_t D)
{
    if (sc > o->m) {
        float r = o->m == -INFINITY ? 0.0f : expf(o->m - sc);
        for (int64_t e = 0; e < D; e++)
            o->acc[e] *= r;
        o->l *= r;
        o->m = sc;
    }
    float w = expf(sc - o->m);
    o->l += w;
    vo->axpy(o->acc, v, D, w * vw);
}

/* The log-sum-exp's running (max, sum) only. */
static void lse_add(float *m, float *l, float sc)
{
    if (sc > *m) {
        *l = *l * (*m == -INFINITY ? 0.0f : expf(*m - sc)) + 1.0f;
        *m = sc;
    } else {
        *l += expf(sc - *m);
    }
}

static void nsa_item(int64_t item, void *ud, int thread)
{
    const nsa_job *jb = ud;
    const sl__kargs *a = jb->a;
    const sl_trainable_nsa_params *p = a->params;
    int64_t Hq = a->in[0].shape[0], Nq = a->in[0].shape[1], D = a->in[0].shape[2];
    int64_t Hkv = a->in[1].shape[0], Nk = a->in[1].shape[1], Nc = a->in[3].shape[1];
    int64_t g = Hq / Hkv, nb = (Nk + p->bs - 1) / p->bs, n = p->n;
    int64_t kv = item / Nq, t = item % Nq, pos = Nk - Nq + t, jq = pos / p->bs;
    float scale = (float)(p->scale > 0 ? p->scale : 1.0 / sqrt((double)D));
    const float *KC = (const float *)a->in[3].data + kv * Nc * D, *VC = (const float *)a->in[4].data + kv * Nc * D;
    const float *GC = a->in[5].data;
    float *O = a->out[0].data;
    float *imp = (float *)a->out[3].data + (kv * Nq + t) * nb;
    int32_t *brow = (int32_t *)a->out[2].data + (kv * Nq + t) * n;
    float *s = jb->work + (size_t)thread * (size_t)jb->per_thread;
    float *acc1 = s + Nc, *acc2 = acc1 + D, *chosen = acc2 + D;
    const sl__cpu_vecops *vo = &jb->vo;
    const sl__cpu_rowops *ro = &jb->ro;
    /* compressed tokens 0 .. nvis-1 are visible: i s + l - 1 <= pos */
    int64_t nvis = pos + 1 >= p->l ? (pos + 1 - p->l) / p->s + 1 : 0;
    if (nvis > Nc)
        nvis = Nc;
    memset(imp, 0, sizeof *imp * (size_t)nb);
    for (int64_t hh = 0; hh < g; hh++) {
        int64_t h = kv * g + hh;
        const float *qv = (const float *)a->in[0].data + (h * Nq + t) * D;
        float *o = O + (h * Nq + t) * D;
        memset(o, 0, sizeof *o * (size_t)D);
        if (nvis == 0)
            continue;
        for (int64_t i = 0; i < nvis; i++)
            s[i] = vo->dot(qv, KC + i * D, D) * scale;
        float z = ro->exp_sum(s, nvis, ro->max(s, nvis, -INFINITY));
        float gc = GC[h * Nq + t];
        const float **vc = jb->vptr + (size_t)thread * (size_t)jb->np; /* free until the second pass */
        for (int64_t i = 0; i < nvis; i++) {
            float pr = s[i] / z;
            vc[i] = VC + i * D;
            int64_t t0 = i * p->s, t1 = i * p->s + p->l;
            for (int64_t j = t0 / p->bs; j < nb && j * p->bs < t1; j++) {
                int64_t lo = t0 > j * p->bs ? t0 : j * p->bs, hi = t1 < (j + 1) * p->bs ? t1 : (j + 1) * p->bs;
                imp[j] += pr * (float)(hi - lo) / (float)p->s;
            }
        }
        ro->scale(s, nvis, gc / z);
        vo->pv(o, 1, D, vc, s, 0, nvis);
    }
    /* selection: forced blocks, then the largest importance (ties: lower j) */
    int64_t cnt = 0;
    for (int64_t j = 0; j <= jq; j++) {
        chosen[j] = (j < p->init || j > jq - p->local) ? 1.0f : 0.0f;
        cnt += chosen[j] != 0;
    }
    while (cnt < n && cnt < jq + 1) {
        int64_t best = -1;
        for (int64_t j = 0; j <= jq; j++)
            if (chosen[j] == 0 && (best < 0 || imp[j] > imp[best]))
                best = j;
        chosen[best] = 1.0f;
        cnt++;
    }
    int64_t c = 0;
    for (int64_t j = 0; j <= jq; j++)
        if (chosen[j] != 0)
            brow[c++] = (int32_t)j;
    for (; c < n; c++)
        brow[c] = -1;
}

/* One item of the tile pass: kv head kv, query rows [r0, r1). */
static void nsa_tile_item(int64_t item, void *ud, int thread)
{
    const nsa_job *jb = ud;
    const sl__kargs *a = jb->a;
    const sl_trainable_nsa_params *p = a->params;
    int64_t Hq = a->in[0].shape[0], Nq = a->in[0].shape[1], D = a->in[0].shape[2];
    int64_t Hkv = a->in[1].shape[0], Nk = a->in[1].shape[1];
    int64_t g = Hq / Hkv, bs = p->bs, nb = (Nk + bs - 1) / bs, n = p->n, T = jb->tile;
    int64_t ntile = (Nq + T - 1) / T, kv = item / ntile, r0 = item % ntile * T;
    int64_t r1 = r0 + T < Nq ? r0 + T : Nq, rows = r1 - r0, R = g * rows;
    float scale = (float)(p->scale > 0 ? p->scale : 1.0 / sqrt((double)D));
    const float *K = (const float *)a->in[1].data + kv * Nk * D, *V = (const float *)a->in[2].data + kv * Nk * D;
    const float *Q = a->in[0].data, *GS = a->in[6].data, *GW = a->in[7].data;
    float *O = a->out[0].data, *L = a->out[1].data;
    const int32_t *B = a->out[2].data;
    float *Qt = jb->twork + (size_t)thread * (size_t)jb->tile_per_thread, *Acc = Qt + g * T * D, *S = Acc + g * T * D;
    int32_t *ub = jb->tint + (size_t)thread * (size_t)jb->tint_per_thread, *uoff = ub + nb, *umap = uoff + nb + 1;
    uint8_t *sel = jb->tsel + (size_t)thread * (size_t)(T * nb);
    int64_t pos0 = Nk - Nq + r0, pos1 = Nk - Nq + r1 - 1;
    int64_t w00 = pos0 - p->window + 1 > 0 ? pos0 - p->window + 1 : 0;
    /* the union of blocks: every row's selected ones and those the tile's windows meet */
    memset(sel, 0, (size_t)(rows * nb));
    for (int64_t j = 0; j < nb; j++)
        umap[j] = 0;
    if (p->window > 0)
        for (int64_t j = w00 / bs; j <= pos1 / bs; j++)
            umap[j] = 1;
    for (int64_t t = r0; t < r1; t++) {
        const int32_t *br = B + (kv * Nq + t) * n;
        for (int64_t c = 0; c < n; c++)
            if (br[c] >= 0)
                sel[(t - r0) * nb + br[c]] = 1, umap[br[c]] = 1;
    }
    int64_t nu = 0, ncol = 0;
    for (int64_t j = 0; j < nb; j++)
        if (umap[j]) {
            int64_t w = (j + 1) * bs < Nk ? bs : Nk - j * bs;
            if (j * bs > pos1)
                continue;
            umap[j] = (int32_t)nu, ub[nu] = (int32_t)j, uoff[nu++] = (int32_t)ncol, ncol += w;
        }
    uoff[nu] = (int32_t)ncol;
    /* the tile's queries, g heads stacked: row hh * rows + (t - r0) */
    for (int64_t hh = 0; hh < g; hh++)
        memcpy(Qt + hh * rows * D, Q + ((kv * g + hh) * Nq + r0) * D, sizeof *Qt * (size_t)(rows * D));
    for (int64_t u = 0; u < nu; u++)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)R, (int)(uoff[u + 1] - uoff[u]), (int)D, scale, Qt,
                    (int)D, K + (int64_t)ub[u] * bs * D, (int)D, 0.f, S + uoff[u], (int)ncol);
    /* per row (vectorised over its own runs of columns: each selected block, and the window, which is
     * one run since the window's blocks are consecutive in the union): the selected softmax, the
     * window softmax, the union's log-sum-exp, and the combined weights W = g_slc p_slc + g_swa p_swa */
    const sl__cpu_vecops *vo = &jb->vo;
    const sl__cpu_rowops *ro = &jb->ro;
    float *W = S + (size_t)(g * T) * (size_t)Nk, *tmp = W + (size_t)(g * T) * (size_t)Nk;
    memset(W, 0, sizeof *W * (size_t)(R * ncol));
    for (int64_t r = 0; r < R; r++) {
        int64_t hh = r / rows, t = r0 + r % rows, pos = Nk - Nq + t, h = kv * g + hh;
        int64_t w0 = pos - p->window + 1 > 0 ? pos - p->window + 1 : 0;
        const int32_t *br = B + (kv * Nq + t) * n;
        const uint8_t *sr = sel + (t - r0) * nb;
        const float *x = S + r * ncol;
        float *w = W + r * ncol;
        float ms = -INFINITY, mw = -INFINITY, ls = 0, lw = 0, lwonly = 0;
        for (int64_t c = 0; c < n; c++) {
            if (br[c] < 0)
                continue;
            int64_t u = umap[br[c]], k0 = (int64_t)br[c] * bs, len = uoff[u + 1] - uoff[u];
            if (k0 + len > pos + 1)
                len = pos + 1 - k0;
            ms = ro->max(x + uoff[u], len, ms);
        }
        if (ms > -INFINITY) {
            for (int64_t c = 0; c < n; c++) {
                if (br[c] < 0)
                    continue;
                int64_t u = umap[br[c]], k0 = (int64_t)br[c] * bs, len = uoff[u + 1] - uoff[u];
                if (k0 + len > pos + 1)
                    len = pos + 1 - k0;
                memcpy(w + uoff[u], x + uoff[u], sizeof *w * (size_t)len);
                ls += ro->exp_sum(w + uoff[u], len, ms);
            }
            float as = ls > 0 ? GS[h * Nq + t] / ls : 0.0f;
            for (int64_t c = 0; c < n; c++) {
                if (br[c] < 0)
                    continue;
                int64_t u = umap[br[c]], k0 = (int64_t)br[c] * bs, len = uoff[u + 1] - uoff[u];
                if (k0 + len > pos + 1)
                    len = pos + 1 - k0;
                ro->scale(w + uoff[u], len, as);
            }
        }
        if (p->window > 0) {
            int64_t jw = w0 / bs, cw0 = uoff[umap[jw]] + (w0 - jw * bs), len = pos + 1 - w0;
            mw = ro->max(x + cw0, len, -INFINITY);
            memcpy(tmp, x + cw0, sizeof *tmp * (size_t)len);
            lw = ro->exp_sum(tmp, len, mw);
            for (int64_t j = jw; j <= pos / bs; j++) {
                if (sr[j])
                    continue;
                int64_t k0 = j * bs > w0 ? j * bs : w0, k1 = (j + 1) * bs < pos + 1 ? (j + 1) * bs : pos + 1;
                for (int64_t key = k0; key < k1; key++)
                    lwonly += tmp[key - w0];
            }
            if (lw > 0)
                vo->axpy(w + cw0, tmp, len, GW[h * Nq + t] / lw);
        }
        float mu = ms > mw ? ms : mw;
        float lu = (ls > 0 ? ls * expf(ms - mu) : 0.0f) + (lw > 0 ? lwonly * expf(mw - mu) : 0.0f);
        L[h * Nq + t] = mu == -INFINITY ? -INFINITY : mu + logf(lu);
    }
    memset(Acc, 0, sizeof *Acc * (size_t)(R * D));
    for (int64_t u = 0; u < nu; u++)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)R, (int)D, (int)(uoff[u + 1] - uoff[u]), 1.f,
                    W + uoff[u], (int)ncol, V + (int64_t)ub[u] * bs * D, (int)D, 1.f, Acc, (int)D);
    for (int64_t r = 0; r < R; r++) {
        int64_t hh = r / rows, t = r0 + r % rows;
        float *o = O + ((kv * g + hh) * Nq + t) * D;
        for (int64_t e = 0; e < D; e++)
            o[e] += Acc[r * D + e];
    }
}

sl_status sl__cpu_trainable_nsa(const sl__kargs *a)
{
    int64_t Hq = a->in[0].shape[0], Nq = a->in[0].shape[1], D = a->in[0].shape[2], Hkv = a->in[1].shape[0];
    int64_t Nk = a->in[1].shape[1], g = Hq / Hkv;
    int64_t Nc = a->in[3].shape[1], bs = ((const sl_trainable_nsa_params *)a->params)->bs, nb = (Nk + bs - 1) / bs;
    int nt = sl_ctx_threads(a->ctx);
    size_t nth = (size_t)(nt > 0 ? nt : 1);
    int64_t T = 8; /* query rows per tile: g T rows per sgemm; few rows keep the union of their blocks small */
    if (T > Nq)
        T = Nq;
    nsa_job j = {a, sl__cpu_vecops_for(a->ctx), NULL, Nc + 2 * D + nb, sl__cpu_rowops_for(a->ctx), NULL, Nc > 1 ? Nc : 1,
                 T, NULL, 2 * g * T * D + 2 * g * T * Nk + Nk, NULL, 3 * nb + 1, NULL};
    size_t fb = sizeof(float) * (size_t)j.per_thread * nth, pb = sizeof(float *) * (size_t)j.np * nth;
    size_t tb = sizeof(float) * (size_t)j.tile_per_thread * nth, ib = sizeof(int32_t) * (size_t)j.tint_per_thread * nth;
    size_t sb = (size_t)(T * nb) * nth;
    size_t bytes = pb + fb + tb + ib + sb + 16;
    char *mem = sl_ctx_alloc(a->ctx, bytes);
    if (!mem)
        return sl_ctx_fail(a->ctx, SL_ENOMEM, "trainable.nsa[cpu]: out of memory for %zu bytes", bytes);
    j.vptr = (const float **)mem, j.work = (float *)(mem + pb), j.twork = (float *)(mem + pb + fb);
    j.tint = (int32_t *)(mem + pb + fb + tb), j.tsel = (uint8_t *)(mem + pb + fb + tb + ib);
    sl_status s = sl__cpu_parallel(a->ctx, Hkv * Nq, nsa_item, &j);
    if (s == SL_OK)
        s = sl__cpu_parallel(a->ctx, Hkv * ((Nq + T - 1) / T), nsa_tile_item, &j);
    sl_ctx_dealloc(a->ctx, mem, bytes);
    return s;
}

/* ---- trainable.sparsek ---- */

typedef struct uidx {
    float u;
    int32_t j;
} uidx;

/* Larger u first, then the lower index. */
static int uidx_cmp(const void *x, const void *y)
{
    const uidx *a = x, *b = y;
    if (a->u != b->u)
        return a->u > b->u ? -1 : 1;
    return (a->j > b->j) - (a->j < b->j);
}

typedef struct sparsek_job {
    const sl__kargs *a;
    sl__cpu_vecops vo;
    unsigned char *work;
    size_t per_thread;
} sparsek_job;

static double cpu_tau(const float *u, int64_t m, double kk, double lo, double hi)
{
    for (int it = 0; it < 200; it++) {
        double mid = 0.5 * (lo + hi), f = 0;
        for (int64_t j = 0; j < m; j++) {
            double x = (double)u[j] - mid;
            f += x <= 0 ? 0 : x >= 1 ? 1 : x;
        }
        if (f > kk)
            lo = mid;
        else
            hi = mid;
    }
    return 0.5 * (lo + hi);
}

static void sparsek_item(int64_t item, void *ud, int thread)
{
    const sparsek_job *jb = ud;
    const sl__kargs *a = jb->a;
    const sl_trainable_sparsek_params *p = a->params;
    int64_t Hq = a->in[0].shape[0], Nq = a->in[0].shape[1], D = a->in[0].shape[2];
    int64_t Hkv = a->in[1].shape[0], Nk = a->in[1].shape[1], g = Hq / Hkv;
    int64_t kv = item / Nq, t = item % Nq, pos = Nk - Nq + t, m = pos + 1, kk = p->k < m ? p->k : m;
    float scale = (float)(p->scale > 0 ? p->scale : 1.0 / sqrt((double)D));
    const float *u = (const float *)a->in[3].data + kv * Nk;
    const float *K = (const float *)a->in[1].data + kv * Nk * D, *V = (const float *)a->in[2].data + kv * Nk * D;
    unsigned char *base = jb->work + (size_t)thread * jb->per_thread;
    uidx *ord = (uidx *)base;
    float *w = (float *)(ord + Nk), *acc = w + Nk;
    int32_t *list = (int32_t *)(acc + D);
    uint8_t *sel = (uint8_t *)(list + Nk);
    /* S: the kk first of the prefix in (u desc, index asc) order */
    double lo = INFINITY, hi = -INFINITY;
    for (int64_t j = 0; j < m; j++) {
        ord[j] = (uidx){u[j], (int32_t)j};
        w[j] = 1.0f;
        sel[j] = 0;
        lo = fmin(lo, (double)u[j] - 1.0);
        hi = fmax(hi, (double)u[j]);
    }
    qsort(ord, (size_t)m, sizeof *ord, uidx_cmp);
    double tau = p->weight && kk > 0 && kk < m ? cpu_tau(u, m, (double)kk, lo, hi) : 0;
    for (int64_t r = 0; r < kk; r++) {
        int64_t j = ord[r].j;
        double x = (double)u[j] - tau;
        w[j] = !p->weight || kk == m ? 1.0f : (float)(x <= 0 ? 0 : x >= 1 ? 1 : x);
        sel[j] = 1;
    }
    int64_t cnt = 0;
    for (int64_t j = 0; j < m; j++)
        if (sel[j] || j > pos - p->window)
            list[cnt++] = (int32_t)j;
    ((int32_t *)a->out[2].data)[kv * Nq + t] = (int32_t)cnt;
    for (int64_t hh = 0; hh < g; hh++) {
        int64_t h = kv * g + hh;
        const float *qv = (const float *)a->in[0].data + (h * Nq + t) * D;
        online os = {-INFINITY, 0, acc};
        memset(acc, 0, sizeof *acc * (size_t)D);
        for (int64_t c = 0; c < cnt; c++) {
            int64_t j = list[c];
            float sc = jb->vo.dot(qv, K + j * D, D) * w[j] * scale + (p->bias ? u[j] : 0.0f);
            online_add(&os, &jb->vo, sc, V + j * D, w[j], D);
        }
        float *o = (float *)a->out[0].data + (h * Nq + t) * D;
        for (int64_t e = 0; e < D; e++)
            o[e] = os.l > 0 ? acc[e] / os.l : 0.0f;
        ((float *)a->out[1].data)[h * Nq + t] = os.l > 0 ? os.m + logf(os.l) : -INFINITY;
    }
}

sl_status sl__cpu_trainable_sparsek(const sl__kargs *a)
{
    int64_t Nq = a->in[0].shape[1], D = a->in[0].shape[2], Hkv = a->in[1].shape[0], Nk = a->in[1].shape[1];
    int nt = sl_ctx_threads(a->ctx);
    sparsek_job j = {a, sl__cpu_vecops_for(a->ctx), NULL,
                     ((size_t)Nk * (sizeof(uidx) + sizeof(float) + sizeof(int32_t) + 1) + (size_t)D * sizeof(float) + 7) /
                         8 * 8};
    size_t bytes = j.per_thread * (size_t)(nt > 0 ? nt : 1);
    j.work = sl_ctx_alloc(a->ctx, bytes);
    if (!j.work)
        return sl_ctx_fail(a->ctx, SL_ENOMEM, "trainable.sparsek[cpu]: out of memory for %zu bytes", bytes);
    sl_status s = sl__cpu_parallel(a->ctx, Hkv * Nq, sparsek_item, &j);
    sl_ctx_dealloc(a->ctx, j.work, bytes);
    return s;
}

/* ---- trainable.fsa: KV-block-outer (FSA's order) ---- */

typedef struct fsa_job {
    const sl__kargs *a;
    sl__cpu_vecops vo;
    const int64_t *off;  /* per kv head, nb + 1 offsets into ent */
    const int64_t *ent;  /* t · n + slot of each (query, slot) that selected the block */
    float *part;         /* per (query head, row, slot): m, l, O[D] */
    int64_t nb;
} fsa_job;

/* Item (kv head, block b): every query that selected b, every head of the group. */
static void fsa_block_item(int64_t item, void *ud, int thread)
{
    (void)thread;
    const fsa_job *jb = ud;
    const sl__kargs *a = jb->a;
    const sl_trainable_fsa_params *p = a->params;
    int64_t Hq = a->in[0].shape[0], Nq = a->in[0].shape[1], D = a->in[0].shape[2];
    int64_t Hkv = a->in[1].shape[0], Nk = a->in[1].shape[1], n = a->in[3].shape[2], g = Hq / Hkv;
    int64_t kv = item / jb->nb, b = item % jb->nb;
    float scale = (float)(p->scale > 0 ? p->scale : 1.0 / sqrt((double)D));
    const float *K = (const float *)a->in[1].data + kv * Nk * D, *V = (const float *)a->in[2].data + kv * Nk * D;
    const int64_t *off = jb->off + kv * (jb->nb + 1);
    for (int64_t e = off[b]; e < off[b + 1]; e++) {
        int64_t t = jb->ent[kv * Nq * n + e] / n, x = jb->ent[kv * Nq * n + e] % n, pos = Nk - Nq + t;
        int64_t k0 = b * p->bs, k1 = (b + 1) * p->bs < pos + 1 ? (b + 1) * p->bs : pos + 1;
        if (k1 > Nk)
            k1 = Nk;
        for (int64_t hh = 0; hh < g; hh++) {
            int64_t h = kv * g + hh;
            const float *qv = (const float *)a->in[0].data + (h * Nq + t) * D;
            float *slot = jb->part + ((h * Nq + t) * n + x) * (D + 2), *acc = slot + 2;
            online os = {-INFINITY, 0, acc};
            for (int64_t j = k0; j < k1; j++)
                online_add(&os, &jb->vo, jb->vo.dot(qv, K + j * D, D) * scale, V + j * D, 1.0f, D);
            slot[0] = os.m, slot[1] = os.l;
        }
    }
}

/* Item (query head, row): the log-sum-exp merge of its slots. */
static void fsa_merge_item(int64_t item, void *ud, int thread)
{
    (void)thread;
    const fsa_job *jb = ud;
    const sl__kargs *a = jb->a;
    int64_t D = a->in[0].shape[2], n = a->in[3].shape[2];
    const float *slots = jb->part + item * n * (D + 2);
    float m = -INFINITY, l = 0;
    for (int64_t x = 0; x < n; x++)
        m = slots[x * (D + 2)] > m ? slots[x * (D + 2)] : m;
    float *o = (float *)a->out[0].data + item * D;
    const float *base = a->in[5].buf ? (const float *)a->in[5].data + item * D : NULL;
    float gate = a->in[4].buf ? ((const float *)a->in[4].data)[item] : 1.0f;
    for (int64_t c = 0; c < D; c++)
        o[c] = 0;
    if (m > -INFINITY)
        for (int64_t x = 0; x < n; x++) {
            const float *s = slots + x * (D + 2);
            if (s[0] == -INFINITY)
                continue;
            float r = expf(s[0] - m);
            l += s[1] * r;
            jb->vo.axpy(o, s + 2, D, r);
        }
    for (int64_t c = 0; c < D; c++)
        o[c] = (base ? base[c] : 0.0f) + (l > 0 ? gate * o[c] / l : 0.0f);
    ((float *)a->out[1].data)[item] = l > 0 ? m + logf(l) : -INFINITY;
}

sl_status sl__cpu_trainable_fsa(const sl__kargs *a)
{
    const sl_trainable_fsa_params *p = a->params;
    int64_t Hq = a->in[0].shape[0], Nq = a->in[0].shape[1], D = a->in[0].shape[2];
    int64_t Hkv = a->in[1].shape[0], Nk = a->in[1].shape[1], n = a->in[3].shape[2];
    int64_t nb = (Nk + p->bs - 1) / p->bs;
    size_t off_bytes = sizeof(int64_t) * (size_t)(Hkv * (nb + 1)), ent_bytes = sizeof(int64_t) * (size_t)(Hkv * Nq * n);
    size_t part_bytes = sizeof(float) * (size_t)(Hq * Nq * n * (D + 2));
    size_t bytes = off_bytes + ent_bytes + part_bytes;
    unsigned char *mem = sl_ctx_alloc(a->ctx, bytes > 0 ? bytes : 1);
    if (!mem)
        return sl_ctx_fail(a->ctx, SL_ENOMEM, "trainable.fsa[cpu]: out of memory for %zu bytes", bytes);
    fsa_job j = {a, sl__cpu_vecops_for(a->ctx), (int64_t *)mem, (int64_t *)(mem + off_bytes),
                 (float *)(mem + off_bytes + ent_bytes), nb};
    int64_t *off = (int64_t *)j.off, *ent = (int64_t *)j.ent;
    const int32_t *B = a->in[3].data;
    /* the inverse index: per kv head, block -> (query, slot) list, by counting sort */
    for (int64_t kv = 0; kv < Hkv; kv++) {
        int64_t *o = off + kv * (nb + 1), *en = ent + kv * Nq * n;
        memset(o, 0, sizeof *o * (size_t)(nb + 1));
        for (int64_t i = 0; i < Nq * n; i++)
            if (B[kv * Nq * n + i] >= 0)
                o[B[kv * Nq * n + i] + 1]++;
        for (int64_t b = 0; b < nb; b++)
            o[b + 1] += o[b];
        for (int64_t i = 0; i < Nq * n; i++) {
            int32_t b = B[kv * Nq * n + i];
            if (b >= 0)
                en[o[b]++] = i;
        }
        for (int64_t b = nb; b > 0; b--)
            o[b] = o[b - 1];
        o[0] = 0;
    }
    for (int64_t i = 0; i < Hq * Nq * n; i++) {
        j.part[i * (D + 2)] = -INFINITY;
        j.part[i * (D + 2) + 1] = 0;
        memset(j.part + i * (D + 2) + 2, 0, sizeof(float) * (size_t)D);
    }
    sl_status s = sl__cpu_parallel(a->ctx, Hkv * nb, fsa_block_item, &j);
    if (s == SL_OK)
        s = sl__cpu_parallel(a->ctx, Hq * Nq, fsa_merge_item, &j);
    sl_ctx_dealloc(a->ctx, mem, bytes > 0 ? bytes : 1);
    return s;
}

/* ---- trainable.routing: per (head, row) over the clusters holding the row ---- */

typedef struct routing_job {
    const sl__kargs *a;
    sl__cpu_vecops vo;
    const int64_t *off;  /* per (head, row): offsets into cl */
    const int32_t *cl;   /* the clusters holding each row */
    unsigned char *work; /* per thread: 2 D floats, Nk marks */
    size_t per_thread;
} routing_job;

static void routing_item(int64_t item, void *ud, int thread)
{
    const routing_job *jb = ud;
    const sl__kargs *a = jb->a;
    const sl_trainable_routing_params *p = a->params;
    int64_t Hq = a->in[0].shape[0], Nq = a->in[0].shape[1], D = a->in[0].shape[2];
    int64_t Hkv = a->in[1].shape[0], Nk = a->in[1].shape[1], C = a->in[3].shape[1], W = a->in[3].shape[2];
    int64_t h = item / Nq, t = item % Nq, kv = h / (Hq / Hkv), pos = Nk - Nq + t;
    float scale = (float)(p->scale > 0 ? p->scale : 1.0 / sqrt((double)D));
    const float *qv = (const float *)a->in[0].data + item * D;
    const float *K = (const float *)a->in[1].data + kv * Nk * D, *V = (const float *)a->in[2].data + kv * Nk * D;
    const int32_t *KS = a->in[4].data;
    float *acc = (float *)(jb->work + (size_t)thread * jb->per_thread), *sum = acc + D;
    uint8_t *mark = (uint8_t *)(sum + D);
    memset(sum, 0, sizeof *sum * (size_t)D);
    float um = -INFINITY, ul = 0;
    int64_t used = 0;
    for (int64_t e = jb->off[item]; e < jb->off[item + 1]; e++) {
        const int32_t *keys = KS + (h * C + jb->cl[e]) * W;
        online os = {-INFINITY, 0, acc};
        memset(acc, 0, sizeof *acc * (size_t)D);
        for (int64_t x = 0; x < W; x++) {
            int32_t j = keys[x];
            if (j < 0 || j > pos)
                continue;
            float sc = jb->vo.dot(qv, K + (int64_t)j * D, D) * scale;
            online_add(&os, &jb->vo, sc, V + (int64_t)j * D, 1.0f, D);
            if (!mark[j]) {
                mark[j] = 1;
                lse_add(&um, &ul, sc);
            }
        }
        if (os.l > 0) {
            jb->vo.axpy(sum, acc, D, 1.0f / os.l);
            used++;
        }
    }
    /* clear the marks of this row only */
    for (int64_t e = jb->off[item]; e < jb->off[item + 1]; e++) {
        const int32_t *keys = KS + (h * C + jb->cl[e]) * W;
        for (int64_t x = 0; x < W; x++)
            if (keys[x] >= 0)
                mark[keys[x]] = 0;
    }
    float *o = (float *)a->out[0].data + item * D;
    for (int64_t c = 0; c < D; c++)
        o[c] = used ? sum[c] / (float)used : 0.0f;
    ((float *)a->out[1].data)[item] = um == -INFINITY ? -INFINITY : um + logf(ul);
    ((int32_t *)a->out[2].data)[item] = (int32_t)(jb->off[item + 1] - jb->off[item]);
}

sl_status sl__cpu_trainable_routing(const sl__kargs *a)
{
    int64_t Hq = a->in[0].shape[0], Nq = a->in[0].shape[1], D = a->in[0].shape[2], Nk = a->in[1].shape[1];
    int64_t C = a->in[3].shape[1], W = a->in[3].shape[2];
    int nt = sl_ctx_threads(a->ctx);
    size_t per = ((size_t)(2 * D) * sizeof(float) + (size_t)Nk + 7) / 8 * 8;
    size_t off_bytes = sizeof(int64_t) * (size_t)(Hq * Nq + 1), cl_bytes = sizeof(int32_t) * (size_t)(Hq * C * W + 1);
    size_t bytes = off_bytes + cl_bytes + per * (size_t)(nt > 0 ? nt : 1) + 8;
    unsigned char *mem = sl_ctx_alloc(a->ctx, bytes);
    if (!mem)
        return sl_ctx_fail(a->ctx, SL_ENOMEM, "trainable.routing[cpu]: out of memory for %zu bytes", bytes);
    int64_t *off = (int64_t *)mem;
    int32_t *cl = (int32_t *)(mem + off_bytes);
    unsigned char *work = mem + off_bytes + cl_bytes;
    work = (unsigned char *)(((uintptr_t)work + 7) & ~(uintptr_t)7);
    memset(work, 0, per * (size_t)(nt > 0 ? nt : 1));
    /* the inverse of qsel: per (head, row) the clusters holding it, by counting sort */
    const int32_t *QS = a->in[3].data;
    memset(off, 0, off_bytes);
    for (int64_t h = 0; h < Hq; h++)
        for (int64_t i = 0; i < C * W; i++)
            if (QS[h * C * W + i] >= 0)
                off[h * Nq + QS[h * C * W + i] + 1]++;
    for (int64_t i = 0; i < Hq * Nq; i++)
        off[i + 1] += off[i];
    for (int64_t h = 0; h < Hq; h++)
        for (int64_t i = 0; i < C * W; i++) {
            int32_t t = QS[h * C * W + i];
            if (t >= 0)
                cl[off[h * Nq + t]++] = (int32_t)(i / W);
        }
    for (int64_t i = Hq * Nq; i > 0; i--)
        off[i] = off[i - 1];
    off[0] = 0;
    routing_job j = {a, sl__cpu_vecops_for(a->ctx), off, cl, work, per};
    sl_status s = sl__cpu_parallel(a->ctx, Hq * Nq, routing_item, &j);
    sl_ctx_dealloc(a->ctx, mem, bytes);
    return s;
}

/* ---- trainable.select (issue 14, session 3) ----
 * Features as float64 arrays (projected once per head), one item per (query
 * head, entry): the entry's scores into a per-thread array, the exact top-k
 * by quickselect on key indices (then the kept ones sorted ascending), the
 * statistical threshold by one mean and variance pass (no sort; the cap by
 * quickselect). Each item writes its rows' lists at their padded offsets in
 * col; one serial pass then compacts them (destinations never pass their
 * sources) and writes row_ptr. */

typedef struct select_job {
    const sl__kargs *a;
    int64_t Hq, Nq, Nk, Hkv, r, entries, per_head;
    const double *qf, *kf; /* [Hq, Nq, r], [Hq or Hkv, Nk, r] */
    int kf_per_q;          /* kf holds one feature set per query head (weights) */
    const int64_t *off;    /* padded offset of row t inside a head, [Nq + 1] */
    int64_t *cnt;          /* kept per (head, row) */
    double *sc;            /* Nk per thread */
    int32_t *idx;          /* Nk per thread */
} select_job;

/* x ranks before y: larger score, then the lower key. */
static inline int sel_before(const double *s, int32_t x, int32_t y)
{
    return s[x] > s[y] || (s[x] == s[y] && x < y);
}

/* Rearranges idx[0, n) so that its first k are the k best (any order). */
static void sel_quick(const double *s, int32_t *idx, int64_t n, int64_t k)
{
    int64_t lo = 0, hi = n - 1;
    while (lo < hi && k > lo && k <= hi) {
        int64_t mid = lo + (hi - lo) / 2;
        /* median of three to idx[hi] as the pivot */
        if (sel_before(s, idx[mid], idx[lo])) { int32_t t = idx[mid]; idx[mid] = idx[lo]; idx[lo] = t; }
        if (sel_before(s, idx[hi], idx[lo])) { int32_t t = idx[hi]; idx[hi] = idx[lo]; idx[lo] = t; }
        if (sel_before(s, idx[mid], idx[hi])) { int32_t t = idx[mid]; idx[mid] = idx[hi]; idx[hi] = t; }
        int32_t pv = idx[hi];
        int64_t w = lo;
        for (int64_t i = lo; i < hi; i++)
            if (sel_before(s, idx[i], pv)) {
                int32_t t = idx[i]; idx[i] = idx[w]; idx[w] = t;
                w++;
            }
        idx[hi] = idx[w], idx[w] = pv;
        if (w == k || w + 1 == k)
            return;
        if (w > k)
            hi = w - 1;
        else
            lo = w + 1;
    }
}

static int sel_i32_asc(const void *x, const void *y)
{
    int32_t a = *(const int32_t *)x, b = *(const int32_t *)y;
    return (a > b) - (a < b);
}

static void select_item(int64_t item, void *ud, int thread)
{
    const select_job *j = ud;
    const sl_trainable_select_params *p = j->a->params;
    int64_t h = item / j->entries, e = item % j->entries, r = j->r, Nq = j->Nq, Nk = j->Nk;
    int64_t g0 = p->mode == 0 ? e * p->group : e, g1 = g0 + (p->mode == 0 ? p->group : 1) - 1;
    g1 = g1 < Nq ? g1 : Nq - 1;
    int64_t m = sl__ts_vis(g1, Nq, Nk, (int)p->causal);
    double *s = j->sc + (size_t)thread * (size_t)Nk;
    int32_t *idx = j->idx + (size_t)thread * (size_t)Nk;
    const double *kf = j->kf + (j->kf_per_q ? h : h / (j->Hq / j->Hkv)) * Nk * r;
    for (int64_t x = 0; x < m; x++) {
        const double *kr = kf + x * r;
        double acc = 0;
        for (int64_t u = g0; u <= g1; u++) {
            const double *qr = j->qf + (h * Nq + u) * r;
            double z = 0;
            for (int64_t c = 0; c < r; c++)
                z += qr[c] * kr[c];
            acc += z;
        }
        s[x] = acc;
    }
    int64_t pool = 0, take;
    if (p->mode == 0 || p->k >= m) {
        for (int64_t x = 0; x < m; x++)
            idx[x] = (int32_t)x;
        pool = m;
        take = p->mode == 0 ? (m < p->k ? m : p->k) : (p->cap > 0 && m > p->cap ? p->cap : m);
    } else {
        double mean = 0, var = 0;
        for (int64_t x = 0; x < m; x++)
            mean += s[x];
        mean /= (double)m;
        for (int64_t x = 0; x < m; x++)
            var += (s[x] - mean) * (s[x] - mean);
        double theta = mean + sqrt(var / (double)m) * sl__ts_norm_inv(1.0 - (double)p->k / (double)m);
        for (int64_t x = 0; x < m; x++)
            if (s[x] - theta > 0)
                idx[pool++] = (int32_t)x;
        take = p->cap > 0 && pool > p->cap ? p->cap : pool;
    }
    if (take < pool) {
        sel_quick(s, idx, pool, take);
        qsort(idx, (size_t)take, sizeof *idx, sel_i32_asc);
    }
    int32_t *col = j->a->out[1].data;
    for (int64_t t = g0; t <= g1; t++) {
        int64_t lim = sl__ts_vis(t, Nq, Nk, (int)p->causal), n = 0;
        int32_t *dst = col + h * j->per_head + j->off[t];
        for (int64_t x = 0; x < take && idx[x] < lim; x++)
            dst[n++] = idx[x];
        j->cnt[h * Nq + t] = n;
    }
}

/* Features [H, n, r] of x [Hx, n, D] as float64: x . w[h] (w [H, D, r]) or the first r channels of head h. */
static void select_features(const sl_tensor *x, const sl_tensor *w, int64_t H, int64_t r, double *f)
{
    int64_t n = x->shape[1], D = x->shape[2];
    for (int64_t h = 0; h < H; h++) {
        const float *X = (const float *)x->data + (w->buf ? h / (H / x->shape[0]) : h) * n * D;
        const float *W = w->buf ? (const float *)w->data + h * D * r : NULL;
        for (int64_t t = 0; t < n; t++) {
            double *fr = f + (h * n + t) * r;
            for (int64_t c = 0; c < r; c++)
                fr[c] = W ? 0 : X[t * D + c];
            if (!W)
                continue;
            for (int64_t e = 0; e < D; e++) {
                double xv = X[t * D + e];
                for (int64_t c = 0; c < r; c++)
                    fr[c] += xv * W[e * r + c];
            }
        }
    }
}

sl_status sl__cpu_trainable_select(const sl__kargs *a)
{
    const sl_trainable_select_params *p = a->params;
    int64_t Hq = a->in[0].shape[0], Nq = a->in[0].shape[1], D = a->in[0].shape[2];
    int64_t Hkv = a->in[1].shape[0], Nk = a->in[1].shape[1];
    int has_w = a->in[2].buf != NULL;
    int64_t r = sl__ts_rank(has_w, has_w ? a->in[2].shape[2] : 0, p->split, D);
    int64_t hk = has_w ? Hq : Hkv, nt = sl_ctx_threads(a->ctx);
    nt = nt > 0 ? nt : 1;
    size_t bytes = sizeof(double) * (size_t)((Hq * Nq + hk * Nk) * r) + sizeof(int64_t) * (size_t)(Nq + 1 + Hq * Nq) +
                   (sizeof(double) + sizeof(int32_t)) * (size_t)(nt * Nk) + 16;
    char *mem = sl_ctx_alloc(a->ctx, bytes);
    if (!mem)
        return sl_ctx_fail(a->ctx, SL_ENOMEM, "trainable.select[cpu]: out of memory for %zu bytes", bytes);
    select_job j = {.a = a, .Hq = Hq, .Nq = Nq, .Nk = Nk, .Hkv = Hkv, .r = r, .kf_per_q = has_w};
    double *qf = (double *)mem, *kf = qf + Hq * Nq * r;
    int64_t *off = (int64_t *)(kf + hk * Nk * r), *cnt = off + Nq + 1;
    j.sc = (double *)(cnt + Hq * Nq);
    j.idx = (int32_t *)(j.sc + nt * Nk);
    select_features(&a->in[0], &a->in[2], Hq, r, qf);
    sl_tensor none = {0};
    if (has_w) {
        select_features(&a->in[1], &a->in[3], Hq, r, kf);
    } else {
        select_features(&a->in[1], &none, Hkv, r, kf);
    }
    off[0] = 0;
    for (int64_t t = 0; t < Nq; t++)
        off[t + 1] = off[t] + sl__ts_bound(p->mode, p->k, p->cap, p->group, (int)p->causal, t, Nq, Nk);
    j.qf = qf, j.kf = kf, j.off = off, j.cnt = cnt, j.per_head = off[Nq];
    j.entries = p->mode == 0 ? (Nq + p->group - 1) / p->group : Nq;
    sl_status st = sl__cpu_parallel(a->ctx, Hq * j.entries, select_item, &j);
    if (st == SL_OK) {
        int32_t *row_ptr = a->out[0].data, *col = a->out[1].data;
        int64_t at = 0;
        for (int64_t h = 0; h < Hq; h++) {
            for (int64_t t = 0; t < Nq; t++) {
                row_ptr[h * (Nq + 1) + t] = (int32_t)at;
                int64_t n = cnt[h * Nq + t];
                memmove(col + at, col + h * j.per_head + off[t], sizeof *col * (size_t)n);
                at += n;
            }
            row_ptr[h * (Nq + 1) + Nq] = (int32_t)at;
        }
        for (int64_t x = at; x < a->out[1].shape[0]; x++)
            col[x] = -1;
    }
    sl_ctx_dealloc(a->ctx, mem, bytes);
    return st;
}

/* ---- trainable.cells (issue 14, session 3; card sea) ----
 * One item per row: the budget's cells by quickselect over the H·T_M
 * values, then per head its kept cells ascending, each cell's keys found by
 * a binary search for the cell's first key (cell() is monotone in j): time
 * O(H·T_M + kept keys) per row. Rows write into a padded row-major buffer;
 * one serial pass copies them out head-major. */

typedef struct cells_job {
    const sl__kargs *a;
    int64_t H, N, tm;
    const int64_t *off; /* padded offset of row t, [N + 1] */
    int32_t *pad;       /* padded lists, row-major */
    int64_t *cnt, *start; /* [H, N]: kept keys and their start inside the row's padded region */
    double *val;        /* H·T_M per thread */
    int32_t *idx;       /* H·T_M per thread */
} cells_job;

static void cells_item(int64_t t, void *ud, int thread)
{
    const cells_job *j = ud;
    const sl_trainable_cells_params *p = j->a->params;
    int64_t H = j->H, N = j->N, tm = j->tm, HT = H * tm, w = t + 1;
    double *v = j->val + (size_t)thread * (size_t)HT;
    int32_t *idx = j->idx + (size_t)thread * (size_t)HT;
    const float *A = j->a->in[0].data;
    for (int64_t h = 0; h < H; h++)
        for (int64_t c = 0; c < tm; c++) {
            v[h * tm + c] = A[(h * N + t) * tm + c];
            idx[h * tm + c] = (int32_t)(h * tm + c);
        }
    int64_t b = sl__ts_budget(H, p->k, tm, w);
    if (b < HT)
        sel_quick(v, idx, HT, b);
    qsort(idx, (size_t)b, sizeof *idx, sel_i32_asc); /* flat ascending: head by head, cells ascending */
    int32_t *dst = j->pad + j->off[t];
    int64_t n = 0, x = 0;
    for (int64_t h = 0; h < H; h++) {
        j->start[h * N + t] = n;
        for (; x < b && idx[x] < (h + 1) * tm; x++) {
            int64_t c = idx[x] - h * tm;
            for (int64_t key = sl__ts_cell_first(c, w, tm); key < w && sl__ts_cell(key, w, tm) == c; key++)
                dst[n++] = (int32_t)key;
        }
        j->cnt[h * N + t] = n - j->start[h * N + t];
    }
}

sl_status sl__cpu_trainable_cells(const sl__kargs *a)
{
    const sl_trainable_cells_params *p = a->params;
    int64_t H = a->in[0].shape[0], N = a->in[0].shape[1], tm = a->in[0].shape[2], nt = sl_ctx_threads(a->ctx);
    int64_t bound = a->out[1].shape[0];
    nt = nt > 0 ? nt : 1;
    size_t bytes = sizeof(int64_t) * (size_t)(N + 1 + 2 * H * N) + sizeof(int32_t) * (size_t)(bound + nt * H * tm) +
                   sizeof(double) * (size_t)(nt * H * tm) + 16;
    char *mem = sl_ctx_alloc(a->ctx, bytes);
    if (!mem)
        return sl_ctx_fail(a->ctx, SL_ENOMEM, "trainable.cells[cpu]: out of memory for %zu bytes", bytes);
    cells_job j = {.a = a, .H = H, .N = N, .tm = tm};
    int64_t *off = (int64_t *)mem;
    j.cnt = off + N + 1, j.start = j.cnt + H * N;
    j.val = (double *)(j.start + H * N);
    j.pad = (int32_t *)(j.val + nt * H * tm);
    j.idx = j.pad + bound;
    off[0] = 0;
    for (int64_t t = 0; t < N; t++)
        off[t + 1] = off[t] + sl__ts_cell_bound(H, p->k, tm, t);
    j.off = off;
    sl_status st = sl__cpu_parallel(a->ctx, N, cells_item, &j);
    if (st == SL_OK) {
        int32_t *row_ptr = a->out[0].data, *col = a->out[1].data;
        int64_t at = 0;
        for (int64_t h = 0; h < H; h++) {
            for (int64_t t = 0; t < N; t++) {
                row_ptr[h * (N + 1) + t] = (int32_t)at;
                int64_t n = j.cnt[h * N + t];
                memcpy(col + at, j.pad + off[t] + j.start[h * N + t], sizeof *col * (size_t)n);
                at += n;
            }
            row_ptr[h * (N + 1) + N] = (int32_t)at;
        }
        for (int64_t x = at; x < bound; x++)
            col[x] = -1;
    }
    sl_ctx_dealloc(a->ctx, mem, bytes);
    return st;
}

/* ---- trainable.performer (issue 14, session 3b; card sea) ----
 * Per kv head: phi(k) by items of key rows, the float64 prefix sums S_j =
 * sum_{i<j} phi(k_i) by items of features; then one item per (query head of
 * the group, row): phi(q_t), the T_M + 1 dots d_b = phi(q_t) . S at the
 * first key of cell b, and a[c] = (d_{c+1} - d_c) / d_{T_M}. */
typedef struct perf_job {
    const sl__kargs *a;
    int64_t N, D, m, tm, g, kv;
    double s, sm, gmax;
    double *ek;  /* [N, m] exponents, then phi(k) */
    double *S;   /* [N + 1, m] prefix sums */
    double *rmx; /* [N] row maxima of the key exponents */
    double *tmp; /* per thread: m + T_M + 1 doubles */
} perf_job;

static void perf_exponents(const float *x, const float *w, int64_t D, int64_t m, double s, double *e)
{
    double nrm = 0;
    for (int64_t c = 0; c < D; c++)
        nrm += ((double)x[c] * s) * ((double)x[c] * s);
    for (int64_t f = 0; f < m; f++) {
        const float *wf = w + f * D;
        double d0 = 0, d1 = 0, d2 = 0, d3 = 0;
        int64_t c = 0;
        for (; c + 4 <= D; c += 4) {
            d0 += (double)wf[c] * ((double)x[c] * s);
            d1 += (double)wf[c + 1] * ((double)x[c + 1] * s);
            d2 += (double)wf[c + 2] * ((double)x[c + 2] * s);
            d3 += (double)wf[c + 3] * ((double)x[c + 3] * s);
        }
        for (; c < D; c++)
            d0 += (double)wf[c] * ((double)x[c] * s);
        e[f] = (d0 + d1) + (d2 + d3) - nrm / 2;
    }
}

static void perf_key_item(int64_t j, void *ud, int thread)
{
    (void)thread;
    const perf_job *p = ud;
    const float *K = (const float *)p->a->in[1].data + (p->kv * p->N + j) * p->D;
    double *e = p->ek + j * p->m, mx = -INFINITY;
    perf_exponents(K, p->a->in[2].data, p->D, p->m, p->s, e);
    for (int64_t f = 0; f < p->m; f++)
        mx = e[f] > mx ? e[f] : mx;
    p->rmx[j] = mx;
}

static void perf_prefix_item(int64_t f, void *ud, int thread)
{
    (void)thread;
    const perf_job *p = ud;
    double acc = 0;
    p->S[f] = 0;
    for (int64_t j = 0; j < p->N; j++) {
        acc += exp(p->ek[j * p->m + f] - p->gmax) / p->sm;
        p->S[(j + 1) * p->m + f] = acc;
    }
}

static double perf_dot(const double *x, const double *y, int64_t m)
{
    double d0 = 0, d1 = 0, d2 = 0, d3 = 0;
    int64_t f = 0;
    for (; f + 4 <= m; f += 4) {
        d0 += x[f] * y[f];
        d1 += x[f + 1] * y[f + 1];
        d2 += x[f + 2] * y[f + 2];
        d3 += x[f + 3] * y[f + 3];
    }
    for (; f < m; f++)
        d0 += x[f] * y[f];
    return (d0 + d1) + (d2 + d3);
}

static void perf_row_item(int64_t item, void *ud, int thread)
{
    const perf_job *p = ud;
    int64_t h = p->kv * p->g + item / p->N, t = item % p->N, m = p->m, tm = p->tm, w = t + 1;
    double *fq = p->tmp + (size_t)thread * (size_t)(m + tm + 1), *d = fq + m, mx = -INFINITY;
    perf_exponents((const float *)p->a->in[0].data + (h * p->N + t) * p->D, p->a->in[2].data, p->D, m, p->s, fq);
    for (int64_t f = 0; f < m; f++)
        mx = fq[f] > mx ? fq[f] : mx;
    for (int64_t f = 0; f < m; f++)
        fq[f] = exp(fq[f] - mx) / p->sm;
    d[0] = 0;
    for (int64_t b = 1; b <= tm; b++) {
        int64_t lo = b == tm ? w : sl__ts_cell_first(b, w, tm);
        d[b] = lo == 0 ? 0 : perf_dot(fq, p->S + lo * m, m);
    }
    float *A = (float *)p->a->out[0].data + (h * p->N + t) * tm;
    double z = d[tm];
    for (int64_t c = 0; c < tm; c++)
        A[c] = (float)(z > 0 ? (d[c + 1] - d[c]) / z : 0);
}

sl_status sl__cpu_trainable_performer(const sl__kargs *a)
{
    int64_t Hq = a->in[0].shape[0], N = a->in[0].shape[1], D = a->in[0].shape[2], Hkv = a->in[1].shape[0];
    int64_t m = a->in[2].shape[0], tm = a->out[0].shape[2], nt = sl_ctx_threads(a->ctx);
    nt = nt > 0 ? nt : 1;
    if (Hq * N == 0)
        return SL_OK;
    size_t bytes = sizeof(double) * (size_t)(N * m + (N + 1) * m + N + nt * (m + tm + 1));
    double *mem = sl_ctx_alloc(a->ctx, bytes);
    if (!mem)
        return sl_ctx_fail(a->ctx, SL_ENOMEM, "trainable.performer[cpu]: out of memory for %zu bytes", bytes);
    perf_job j = {.a = a, .N = N, .D = D, .m = m, .tm = tm, .g = Hq / Hkv};
    j.s = pow((double)D, -0.25), j.sm = sqrt((double)m);
    j.ek = mem, j.S = j.ek + N * m, j.rmx = j.S + (N + 1) * m, j.tmp = j.rmx + N;
    sl_status st = SL_OK;
    for (int64_t kv = 0; kv < Hkv && st == SL_OK; kv++) {
        j.kv = kv;
        if ((st = sl__cpu_parallel(a->ctx, N, perf_key_item, &j)))
            break;
        j.gmax = -INFINITY;
        for (int64_t x = 0; x < N; x++)
            j.gmax = j.rmx[x] > j.gmax ? j.rmx[x] : j.gmax;
        if ((st = sl__cpu_parallel(a->ctx, m, perf_prefix_item, &j)))
            break;
        st = sl__cpu_parallel(a->ctx, j.g * N, perf_row_item, &j);
    }
    sl_ctx_dealloc(a->ctx, mem, bytes);
    return st;
}

size_t sl__cpu_trainable_scratch(sl_op op, const void *params, const sl_tensor *in, int n_threads)
{
    (void)op, (void)params, (void)in, (void)n_threads;
    return 0;
}
