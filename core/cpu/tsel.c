/* cpu/tsel.c — the tsel family on the cpu backend (prefill token
 * selectors, issue 16). attn.threshold: one work item per (head, row),
 * scores by the vectorised dot, softmax and axpy over the kept keys.
 * select.pq_match: key codes per kv head first (one item per key row), then
 * one item per (head, row): a count per slot, the cut slot, and one ascending
 * pass that writes the row's keys already sorted. select.hip_tree: one item
 * per (head, query block), each level's new nodes scored by one sgemm.
 * select.token_budget (issue 20, session 5): see its section below. */
#include "cpu.h"
#include "chunks_select.h"
#include "parallel.h"
#include <cblas.h>

#include <math.h>
#include <stdlib.h>
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

/* ---- select.hip_tree ----
 * One work item per (head, query block). Each level's new nodes are scored
 * together: their representative blocks' keys are gathered into one buffer
 * and one sgemm gives every used query row against every gathered key; a
 * node's score is the max over its columns. Selection keeps the kb best by
 * rank (score desc, start asc). */

typedef struct hip_node {
    int64_t a, b;
    float s;
    int fresh; /* 1: made this level, not scored yet */
} hip_node;

typedef struct hip_job {
    const sl__kargs *a;
    sl__attn_dims dm;
    int64_t R, C, rows; /* rows: query rows per block used for scores */
    size_t per_thread;  /* scratch bytes per thread */
} hip_job;

/* Scores the fresh nodes of nodes[0..m) against the n gathered rows qb. */
static void hip_score(const hip_job *j, const float *qb, int64_t n, const float *kh, hip_node *nodes, int64_t m,
                      float *kbuf, float *sbuf)
{
    int64_t bk = ((const sl_select_hip_tree_params *)j->a->params)->bk, d = j->dm.d, keys = 0;
    for (int64_t x = 0; x < m; x++) {
        if (!nodes[x].fresh)
            continue;
        int64_t t0 = nodes[x].a * bk, t1 = t0 + bk < j->dm.nk ? t0 + bk : j->dm.nk;
        memcpy(kbuf + keys * d, kh + t0 * d, (size_t)((t1 - t0) * d) * sizeof(float));
        keys += t1 - t0;
    }
    if (keys == 0)
        return;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, (int)keys, (int)d, (float)j->dm.scale, qb, (int)d,
                kbuf, (int)d, 0.f, sbuf, (int)keys);
    int64_t col = 0;
    for (int64_t x = 0; x < m; x++) {
        if (!nodes[x].fresh)
            continue;
        int64_t t0 = nodes[x].a * bk, t1 = t0 + bk < j->dm.nk ? t0 + bk : j->dm.nk;
        float best = -INFINITY;
        for (int64_t i = 0; i < n; i++)
            for (int64_t c = col; c < col + t1 - t0; c++)
                best = sbuf[i * keys + c] > best ? sbuf[i * keys + c] : best;
        nodes[x].s = best;
        nodes[x].fresh = 0;
        col += t1 - t0;
    }
}

static void hip_item(int64_t item, void *ud, int thread)
{
    const hip_job *j = ud;
    const sl__kargs *a = j->a;
    const sl_select_hip_tree_params *p = a->params;
    const sl__attn_dims *dm = &j->dm;
    int64_t h = item / j->R, r = item % j->R, d = dm->d, kb = p->kb, kbl = kb < j->C ? kb : j->C;
    unsigned char *base = (unsigned char *)a->scratch + (size_t)thread * j->per_thread;
    hip_node *cur = (hip_node *)base, *next = cur + kbl; /* the layout of sl__cpu_tsel_scratch */
    float *qb = (float *)(next + 2 * kbl), *kbuf = qb + j->rows * d, *sbuf = kbuf + 2 * kbl * p->bk * d;
    uint8_t *row = (uint8_t *)a->out[0].data + item * j->C;
    int32_t *ev = (int32_t *)a->out[1].data + item;
    memset(row, 0, (size_t)j->C);
    int64_t i0 = r * p->bq, i1 = i0 + p->bq < dm->nq ? i0 + p->bq - 1 : dm->nq - 1, T = j->C;
    if (p->causal) {
        int64_t vis = (i1 + dm->offset) / p->bk + 1, w = i0 + dm->offset - p->window;
        int64_t w0 = w > 0 ? w / p->bk : 0;
        vis = vis < j->C ? vis : j->C;
        for (int64_t c = w0; c < vis; c++)
            row[c] = 1;
        T = w0 < vis ? w0 : vis;
    }
    *ev = 0;
    if (T <= kb) {
        for (int64_t c = 0; c < T; c++)
            row[c] = 1;
        return;
    }
    int64_t n = 0;
    for (int64_t i = i0 + p->qstride - 1 < i1 ? i0 + p->qstride - 1 : i1; i <= i1; i += p->qstride)
        memcpy(qb + (n++) * d, (const float *)a->in[0].data + (h * dm->nq + i) * d, (size_t)d * sizeof(float));
    const float *kh = (const float *)a->in[1].data + (h / dm->group) * dm->nk * d;
    int64_t groups = kb;
    for (int64_t g = 0; g < kb; g++) {
        cur[g] = (hip_node){g * T / kb, (g + 1) * T / kb - 1, 0.f, 0};
        cur[g].fresh = cur[g].a == cur[g].b; /* a one-block initial group is scored as made */
        *ev += cur[g].fresh;
    }
    hip_score(j, qb, n, kh, cur, kb, kbuf, sbuf);
    for (;;) {
        int64_t m = 0, split = 0;
        for (int64_t g = 0; g < groups; g++) {
            if (cur[g].b == cur[g].a) {
                next[m++] = cur[g];
                continue;
            }
            int64_t mid = cur[g].a + (cur[g].b - cur[g].a + 1) / 2 - 1; /* left: floor(size / 2) */
            next[m] = (hip_node){cur[g].a, mid, 0.f, 1};
            next[m + 1] = (hip_node){mid + 1, cur[g].b, 0.f, 1};
            m += 2;
            split++;
        }
        if (!split)
            break;
        *ev += (int32_t)(2 * split);
        hip_score(j, qb, n, kh, next, m, kbuf, sbuf);
        /* ranks are distinct because starts are: the kept set fills 0..kb-1 */
        groups = m < kb ? m : kb;
        for (int64_t x = 0; x < m; x++) {
            int64_t rank = 0;
            for (int64_t y = 0; y < m && rank < kb; y++)
                rank += next[y].s > next[x].s || (next[y].s == next[x].s && next[y].a < next[x].a);
            if (rank < kb)
                cur[rank] = next[x];
        }
    }
    for (int64_t g = 0; g < groups; g++)
        row[cur[g].a] = 1;
}

sl_status sl__cpu_select_hip_tree(const sl__kargs *a)
{
    const sl_select_hip_tree_params *p = a->params;
    hip_job j = {a, sl__attn_dims_of(&a->in[0], &a->in[1], p->scale), 0, 0, 0, 0};
    j.R = (j.dm.nq + p->bq - 1) / p->bq;
    j.C = (j.dm.nk + p->bk - 1) / p->bk;
    j.rows = (p->bq + p->qstride - 1) / p->qstride;
    j.per_thread = sl__cpu_tsel_scratch(a->op, p, a->in, 1);
    return sl__cpu_parallel(a->ctx, j.dm.hq * j.R, hip_item, &j);
}

/* select.chunks (issue 20, session 4): query blocks on threads. Scratch:
 * ka [C, d] (head-mean chunk keys, float64), the padded lists [cap] (row r
 * at the sum of the earlier capacities) and counts [R], then per thread qa
 * [d], entries [C] and take [C]. Per row: the eligible chunks' scores,
 * qsort by (score descending, chunk descending), the budget handed out from
 * the chunk ends, the taken tokens emitted chunk by chunk ascending; the
 * lists are packed into col afterwards. */
typedef struct chunk_ent { double s; int64_t c; } chunk_ent;

static int chunk_order(const void *x, const void *y)
{
    const chunk_ent *a = x, *b = y;
    if (a->s != b->s)
        return a->s > b->s ? -1 : 1;
    return (a->c < b->c) - (a->c > b->c);
}

typedef struct chunks_job {
    const sl__kargs *a;
    const sl_select_chunks_params *p;
    int64_t Hq, R, d, C;
    double *ka;
    int32_t *pad;
    int64_t *off, *cnt;
    unsigned char *thr; /* per-thread areas */
    size_t per_thread;
} chunks_job;

static void chunks_item(int64_t r, void *ud, int thread)
{
    const chunks_job *j = ud;
    const sl_select_chunks_params *p = j->p;
    int64_t budget = sl__chunks_capacity(p, r), lo = sl__chunks_lo(p, r), n_out = 0;
    j->cnt[r] = 0;
    if (budget <= 0)
        return;
    const float *qp = j->a->in[0].data;
    const int32_t *st = j->a->in[2].data;
    double *qa = (double *)(j->thr + (size_t)thread * j->per_thread);
    chunk_ent *ent = (chunk_ent *)(qa + j->d);
    int64_t *take = (int64_t *)(ent + j->C);
    for (int64_t e = 0; e < j->d; e++) {
        double s = 0;
        for (int64_t h = 0; h < j->Hq; h++)
            s += qp[(h * j->R + r) * j->d + e];
        qa[e] = s / (double)j->Hq;
    }
    int64_t ne = 0;
    while (ne < j->C && st[ne] < lo)
        ne++;
    for (int64_t c = 0; c < ne; c++) {
        const double *k = j->ka + c * j->d;
        double s = 0;
        for (int64_t e = 0; e < j->d; e++)
            s += qa[e] * k[e];
        ent[c] = (chunk_ent){s, c};
        take[c] = 0;
    }
    qsort(ent, (size_t)ne, sizeof *ent, chunk_order);
    for (int64_t i = 0, left = budget; i < ne && left > 0; i++) {
        int64_t c = ent[i].c, c1 = c + 1 < j->C && st[c + 1] < lo ? st[c + 1] : lo;
        take[c] = c1 - st[c] < left ? c1 - st[c] : left;
        left -= take[c];
    }
    int32_t *out = j->pad + j->off[r];
    int64_t skip = p->splice ? p->globals : 0;
    for (int64_t c = 0; c < ne; c++) {
        int64_t c1 = c + 1 < j->C && st[c + 1] < lo ? st[c + 1] : lo;
        for (int64_t t = c1 - take[c]; t < c1; t++) {
            if (skip > 0) {
                skip--;
                continue;
            }
            if (t >= p->globals)
                out[n_out++] = (int32_t)t;
        }
    }
    j->cnt[r] = n_out;
}

static void chunks_keys_item(int64_t c, void *ud, int thread)
{
    (void)thread;
    const chunks_job *j = ud;
    const float *kp = j->a->in[1].data;
    int64_t Hk = j->a->in[1].shape[0];
    for (int64_t e = 0; e < j->d; e++) {
        double s = 0;
        for (int64_t h = 0; h < Hk; h++)
            s += kp[(h * j->C + c) * j->d + e];
        j->ka[c * j->d + e] = s / (double)Hk;
    }
}

static size_t chunks_per_thread(int64_t d, int64_t C)
{
    size_t one = (size_t)d * sizeof(double) + (size_t)C * (sizeof(chunk_ent) + sizeof(int64_t));
    return (one + 63) / 64 * 64;
}

sl_status sl__cpu_select_chunks(const sl__kargs *a)
{
    const sl_select_chunks_params *p = a->params;
    chunks_job j = {.a = a, .p = p, .Hq = a->in[0].shape[0], .R = a->in[0].shape[1], .d = a->in[0].shape[2],
                    .C = a->in[1].shape[1]};
    int64_t cap = a->out[1].shape[0];
    unsigned char *base = a->scratch;
    j.ka = (double *)base;
    j.off = (int64_t *)(j.ka + j.C * j.d);
    j.cnt = j.off + j.R;
    j.pad = (int32_t *)(j.cnt + j.R);
    size_t head = ((size_t)(j.C * j.d) * sizeof(double) + (size_t)(2 * j.R) * sizeof(int64_t) +
                   (size_t)cap * sizeof(int32_t) + 63) / 64 * 64;
    j.thr = base + head;
    j.per_thread = chunks_per_thread(j.d, j.C);
    for (int64_t r = 0, o = 0; r < j.R; r++) {
        j.off[r] = o;
        o += sl__chunks_capacity(p, r);
    }
    sl_status s = sl__cpu_parallel(a->ctx, j.C, chunks_keys_item, &j);
    if (s == SL_OK)
        s = sl__cpu_parallel(a->ctx, j.R, chunks_item, &j);
    if (s != SL_OK)
        return s;
    int32_t *rp = a->out[0].data, *col = a->out[1].data;
    int64_t n = 0;
    rp[0] = 0;
    for (int64_t r = 0; r < j.R; r++) {
        memcpy(col + n, j.pad + j.off[r], (size_t)j.cnt[r] * sizeof(int32_t));
        n += j.cnt[r];
        rp[r + 1] = (int32_t)n;
    }
    for (int64_t i = n; i < cap; i++)
        col[i] = -1;
    return SL_OK;
}

/* ---- select.token_budget (issue 20, session 5) ----
 * Heads in parallel for the importance (column sums row by row into the
 * thread's buffer, the smoothing window per entry, the head's total),
 * chunks of keys for the head mean, then the budget: the k smallest of gs
 * by quickselect and only those sorted (k grown 8x while the running sum
 * stays under the coverage), so the count costs O(P) rather than a sort of
 * P; each head's cut is its (P - B)-th smallest importance by quickselect.
 * Every float64 sum is added in the contract's order (the recipe's Lua
 * arithmetic, operation for operation). */
typedef struct tb_job {
    const sl__kargs *a;
    int64_t H, W, C, P, half, B;
    double *imp, *g, *work; /* imp [H, P], g [P], per thread P */
} tb_job;

static int tb_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void tb_importance_item(int64_t h, void *ud, int thread)
{
    const tb_job *j = ud;
    int64_t W = j->W, C = j->C, P = j->P, half = j->half;
    const sl_select_token_budget_params *p = j->a->params;
    const float *x = (const float *)j->a->in[0].data + h * W * C;
    double *raw = j->work + (size_t)thread * (size_t)P, *imp = j->imp + h * P;
    for (int64_t c = 0; c < P; c++)
        raw[c] = 0;
    for (int64_t r = 0; r < W; r++)
        for (int64_t c = 0; c < P; c++)
            raw[c] += x[r * C + c];
    for (int64_t c = 0; c < P; c++)
        raw[c] /= (double)W;
    double tot = 0;
    for (int64_t c = 0; c < P; c++) {
        int64_t lo = c - half > 0 ? c - half : 0, hi = c + half < P - 1 ? c + half : P - 1;
        double s = 0;
        for (int64_t i = lo; i <= hi; i++)
            s += raw[i];
        imp[c] = s / (double)p->ks;
        tot += imp[c];
    }
    for (int64_t c = 0; c < P; c++)
        imp[c] = tot > 0 ? imp[c] / tot : 0;
}

enum { TB_CHUNK = 4096 };

static void tb_mean_item(int64_t item, void *ud, int thread)
{
    (void)thread;
    const tb_job *j = ud;
    int64_t c0 = item * TB_CHUNK, c1 = c0 + TB_CHUNK < j->P ? c0 + TB_CHUNK : j->P;
    for (int64_t c = c0; c < c1; c++) {
        double s = 0;
        for (int64_t h = 0; h < j->H; h++)
            s += j->imp[h * j->P + c] / (double)j->H;
        j->g[c] = s;
    }
}

static void tb_cut_item(int64_t h, void *ud, int thread)
{
    const tb_job *j = ud;
    int64_t P = j->P, C = j->C, B = j->B, n = 0;
    int32_t *row = (int32_t *)j->a->out[0].data + h * C;
    if (B >= P) {
        for (int64_t c = 0; c < C; c++)
            row[c] = (int32_t)c;
        return;
    }
    const double *x = j->imp + h * P;
    double *w = j->work + (size_t)thread * (size_t)P;
    int64_t D = P - B;
    memcpy(w, x, (size_t)P * sizeof *w);
    sl__cpu_select_kth_d(w, P, D - 1);
    double v = w[D - 1];
    /* dropped: every entry below v, and entries equal to v from the later end until D are out (w as flags) */
    int64_t need = D;
    for (int64_t c = 0; c < P; c++) {
        w[c] = x[c] < v;
        need -= x[c] < v;
    }
    for (int64_t c = P - 1; c >= 0 && need > 0; c--)
        if (x[c] == v) {
            w[c] = 1;
            need--;
        }
    for (int64_t c = 0; c < P; c++)
        if (w[c] == 0)
            row[n++] = (int32_t)c;
    for (int64_t c = P; c < C; c++)
        row[n++] = (int32_t)c;
    for (; n < C; n++)
        row[n] = -1;
}

sl_status sl__cpu_select_token_budget(const sl__kargs *a)
{
    const sl_select_token_budget_params *p = a->params;
    const sl_tensor *x = &a->in[0];
    tb_job j = {.a = a, .H = x->shape[0], .W = x->shape[1], .C = x->shape[2], .half = p->ks / 2};
    j.P = j.C - j.W;
    j.imp = a->scratch;
    j.g = j.imp + j.H * j.P;
    double *gs = j.g + j.P;
    j.work = gs + j.P;
    sl_status s = sl__cpu_parallel(a->ctx, j.H, tb_importance_item, &j);
    if (s == SL_OK)
        s = sl__cpu_parallel(a->ctx, (j.P + TB_CHUNK - 1) / TB_CHUNK, tb_mean_item, &j);
    if (s != SL_OK)
        return s;
    double gt = 0;
    for (int64_t c = 0; c < j.P; c++)
        gt += j.g[c];
    /* the count: the k smallest of gs sorted, k grown until the running sum reaches the coverage inside them */
    int64_t count = 0, k = j.P < 4096 ? j.P : 4096;
    while (k > 0) {
        for (int64_t c = 0; c < j.P; c++)
            gs[c] = gt > 0 ? j.g[c] / gt : 0;
        if (k < j.P)
            sl__cpu_select_kth_d(gs, j.P, k - 1);
        qsort(gs, (size_t)k, sizeof *gs, tb_cmp_double);
        double cum = 0;
        count = 0;
        while (count < k && (cum += gs[count]) < p->coverage)
            count++;
        if (count < k || k == j.P)
            break;
        k = k <= j.P / 8 ? 8 * k : j.P;
    }
    j.B = j.P;
    if (count > 0) {
        j.B = j.P - count - 1 > p->m_min ? j.P - count - 1 : p->m_min;
        j.B = j.B < j.P ? j.B : j.P;
    }
    int32_t *info = a->out[1].data;
    info[0] = (int32_t)count;
    info[1] = (int32_t)j.B;
    return sl__cpu_parallel(a->ctx, j.H, tb_cut_item, &j);
}

/* ---- select.theta_rows (issue 20, session 5) ----
 * One head per work item: the row lengths ascend (step 1) or stay (step 0),
 * so one walk over the keys serves every row: t = the first key >= r, then
 * the key before it when it is as near (the shorter on a tie). */
static void theta_rows_item(int64_t h, void *ud, int thread)
{
    (void)thread;
    const sl__kargs *a = ud;
    const sl_select_theta_rows_params *p = a->params;
    int64_t L = a->in[0].shape[1], n = 0;
    const int32_t *keys = (const int32_t *)a->in[0].data + h * L;
    const float *vals = (const float *)a->in[1].data + h * L;
    float *th = (float *)a->out[0].data + h * p->rows;
    while (n < L && keys[n] >= 0)
        n++;
    int64_t t = 0;
    for (int64_t i = 0; i < p->rows; i++) {
        int64_t r = p->r0 + p->step * i;
        if (r <= p->k || n == 0) {
            th[i] = -1e30f;
            continue;
        }
        while (t < n - 1 && keys[t] < r)
            t++;
        int64_t best = t;
        if (t > 0 && llabs(keys[t - 1] - r) <= llabs(keys[t] - r))
            best = t - 1;
        th[i] = vals[best];
    }
}

sl_status sl__cpu_select_theta_rows(const sl__kargs *a)
{
    return sl__cpu_parallel(a->ctx, a->in[0].shape[0], theta_rows_item, (void *)a);
}

size_t sl__cpu_tsel_scratch(sl_op op, const void *params, const sl_tensor *in, int n_threads)
{
    (void)params;
    switch (op) {
    case SL_OP_ATTN_THRESHOLD: return (size_t)n_threads * (size_t)(in[1].shape[1] + in[0].shape[2]) * sizeof(float);
    case SL_OP_SELECT_TOKEN_BUDGET: {
        /* imp [H, P], g and gs [P], one P buffer per thread */
        int64_t P = in[0].shape[2] - in[0].shape[1];
        P = P > 0 ? P : 0;
        return (size_t)((in[0].shape[0] + 2 + (n_threads > 0 ? n_threads : 1)) * P) * sizeof(double);
    }
    case SL_OP_SELECT_PQ_MATCH:
        return (size_t)in[0].shape[1] * sizeof(int64_t) +
               (size_t)(in[1].shape[0] * in[1].shape[1] * in[2].shape[1]) * sizeof(int32_t);
    case SL_OP_SELECT_HIP_TREE: {
        const sl_select_hip_tree_params *p = params;
        int64_t rows = (p->bq + p->qstride - 1) / p->qstride;
        /* nodes exist only when T > kb, so kb < C: min(kb, C) bounds them */
        int64_t C = (in[1].shape[1] + p->bk - 1) / p->bk, kbl = p->kb < C ? p->kb : C;
        int64_t keys = 2 * kbl * p->bk; /* the most keys one level gathers */
        size_t one = (size_t)(3 * kbl) * sizeof(hip_node) +
                     (size_t)(rows * in[0].shape[2] + keys * in[0].shape[2] + rows * keys) * sizeof(float);
        return (size_t)n_threads * ((one + 63) / 64 * 64);
    }
    case SL_OP_SELECT_CHUNKS: {
        /* ka, offsets and counts, the padded lists (at most n per query block), per-thread areas */
        const sl_select_chunks_params *p = params;
        int64_t d = in[0].shape[2], C = in[1].shape[1], R = in[0].shape[1], cap = 0;
        for (int64_t r = 0; r < R; r++)
            cap += sl__chunks_capacity(p, r);
        size_t head = ((size_t)(C * d) * sizeof(double) + (size_t)(2 * R) * sizeof(int64_t) +
                       (size_t)cap * sizeof(int32_t) + 63) / 64 * 64;
        return head + (size_t)(n_threads > 0 ? n_threads : 1) * chunks_per_thread(d, C);
    }
    default: return 0;
    }
}
