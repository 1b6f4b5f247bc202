/* ref/tsel.c — the reference kernels of the tsel family (prefill token
 * selectors, issue 16): float64, plain loops, the contracts in sparselab.h
 * read literally. */
#include "ref.h"
#include "chunks_select.h"

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

/* ---- select.hip_tree ---- */

typedef struct hip_node {
    int64_t a, b;
    double s;
} hip_node;

static int hip_node_cmp(const void *x, const void *y)
{
    const hip_node *u = x, *v = y;
    if (u->s != v->s)
        return u->s > v->s ? -1 : 1;
    return (u->a > v->a) - (u->a < v->a);
}

/* scale . max over the block's rows i0, i0 + qstride, .. <= i1 and the keys of
 * key block c of q_i . k_j (float64) */
static double hip_rep(const sl__attn_dims *dm, const float *q, const float *k, int64_t h, int64_t i0, int64_t i1,
                      int64_t c, int64_t bk, int64_t qstride)
{
    int64_t g = h / dm->group;
    double best = -INFINITY;
    int64_t f = i0 + qstride - 1 < i1 ? i0 + qstride - 1 : i1; /* stride 2: rows 1, 3, .. (q[1::2]) */
    for (int64_t i = f; i <= i1; i += qstride)
        for (int64_t j = c * bk; j < (c + 1) * bk && j < dm->nk; j++) {
            double s = 0;
            for (int64_t e = 0; e < dm->d; e++)
                s += (double)q[(h * dm->nq + i) * dm->d + e] * (double)k[(g * dm->nk + j) * dm->d + e];
            if (s > best)
                best = s;
        }
    return dm->scale * best;
}

sl_status sl__ref_select_hip_tree(const sl__kargs *a)
{
    const sl_select_hip_tree_params *p = a->params;
    sl__attn_dims dm = sl__attn_dims_of(&a->in[0], &a->in[1], p->scale);
    const float *q = a->in[0].data, *k = a->in[1].data;
    int64_t R = (dm.nq + p->bq - 1) / p->bq, C = (dm.nk + p->bk - 1) / p->bk;
    uint8_t *keep = a->out[0].data;
    int32_t *evals = a->out[1].data;
    hip_node *cur = a->scratch, *next = cur + (p->kb < C ? p->kb : C); /* nodes only when T > kb, so kb < C */
    memset(keep, 0, (size_t)(dm.hq * R * C));
    for (int64_t h = 0; h < dm.hq; h++)
        for (int64_t r = 0; r < R; r++) {
            if (sl_ctx_interrupted(a->ctx))
                return interrupted(a);
            uint8_t *row = keep + (h * R + r) * C;
            int64_t i0 = r * p->bq, i1 = (r + 1) * p->bq < dm.nq ? (r + 1) * p->bq - 1 : dm.nq - 1, T = C;
            if (p->causal) {
                /* positions: floor division of a possibly negative numerator */
                int64_t vis = (int64_t)floor((double)(i1 + dm.offset) / (double)p->bk) + 1;
                int64_t w0 = (int64_t)floor((double)(i0 + dm.offset - p->window) / (double)p->bk);
                vis = vis > C ? C : vis;
                w0 = w0 < 0 ? 0 : w0;
                for (int64_t c = w0; c < vis; c++)
                    row[c] = 1;
                T = w0 < vis ? w0 : vis;
            }
            int32_t ev = 0;
            if (T <= p->kb) {
                for (int64_t c = 0; c < T; c++)
                    row[c] = 1;
                evals[h * R + r] = 0;
                continue;
            }
            int64_t n = p->kb;
            for (int64_t g = 0; g < n; g++) {
                cur[g].a = g * T / p->kb;
                cur[g].b = (g + 1) * T / p->kb - 1;
                /* a one-block initial group is scored when made (it may carry over) */
                cur[g].s = cur[g].a == cur[g].b ? hip_rep(&dm, q, k, h, i0, i1, cur[g].a, p->bk, p->qstride) : 0;
                ev += cur[g].a == cur[g].b;
            }
            for (;;) {
                int64_t m = 0, split = 0;
                for (int64_t g = 0; g < n; g++) {
                    if (cur[g].b > cur[g].a) {
                        /* the draft's split: the left half holds floor(size / 2) blocks */
                        int64_t mid = cur[g].a + (cur[g].b - cur[g].a + 1) / 2 - 1;
                        next[m].a = cur[g].a;
                        next[m].b = mid;
                        next[m].s = hip_rep(&dm, q, k, h, i0, i1, cur[g].a, p->bk, p->qstride);
                        m++;
                        next[m].a = mid + 1;
                        next[m].b = cur[g].b;
                        next[m].s = hip_rep(&dm, q, k, h, i0, i1, mid + 1, p->bk, p->qstride);
                        m++;
                        split++;
                    } else {
                        next[m++] = cur[g];
                    }
                }
                if (!split)
                    break;
                ev += (int32_t)(2 * split);
                qsort(next, (size_t)m, sizeof *next, hip_node_cmp);
                n = m < p->kb ? m : p->kb;
                memcpy(cur, next, (size_t)n * sizeof *cur);
            }
            for (int64_t g = 0; g < n; g++)
                row[cur[g].a] = 1;
            evals[h * R + r] = ev;
        }
    return SL_OK;
}

/* select.chunks, read as the card states it: every token j < lo scores its
 * chunk's S (upsampled), the budget's tokens are the top ones by (score
 * descending, position descending), listed ascending. Scratch: qa [d], ka
 * [C, d], S [C], tokens [n]. */
typedef struct chunk_tok { double s; int64_t j; } chunk_tok;

static int tok_order(const void *x, const void *y)
{
    const chunk_tok *a = x, *b = y;
    if (a->s != b->s)
        return a->s > b->s ? -1 : 1;
    return (a->j < b->j) - (a->j > b->j);
}

static int pos_order(const void *x, const void *y)
{
    int64_t a = ((const chunk_tok *)x)->j, b = ((const chunk_tok *)y)->j;
    return (a > b) - (a < b);
}

sl_status sl__ref_select_chunks(const sl__kargs *a)
{
    const sl_select_chunks_params *p = a->params;
    const float *qp = a->in[0].data, *kp = a->in[1].data;
    const int32_t *st = a->in[2].data;
    int64_t Hq = a->in[0].shape[0], R = a->in[0].shape[1], d = a->in[0].shape[2];
    int64_t Hk = a->in[1].shape[0], C = a->in[1].shape[1], cap = a->out[1].shape[0];
    int32_t *rp = a->out[0].data, *col = a->out[1].data;
    double *qa = a->scratch, *ka = qa + d, *S = ka + C * d;
    chunk_tok *tok = (chunk_tok *)(S + C);
    for (int64_t c = 0; c < C; c++)
        for (int64_t e = 0; e < d; e++) {
            double s = 0;
            for (int64_t h = 0; h < Hk; h++)
                s += kp[(h * C + c) * d + e];
            ka[c * d + e] = s / (double)Hk;
        }
    int64_t out = 0;
    rp[0] = 0;
    for (int64_t r = 0; r < R; r++) {
        if (sl_ctx_interrupted(a->ctx))
            return interrupted(a);
        int64_t budget = sl__chunks_capacity(p, r), lo = sl__chunks_lo(p, r);
        if (budget > 0) {
            for (int64_t e = 0; e < d; e++) {
                double s = 0;
                for (int64_t h = 0; h < Hq; h++)
                    s += qp[(h * R + r) * d + e];
                qa[e] = s / (double)Hq;
            }
            for (int64_t c = 0; c < C; c++) {
                double s = 0;
                for (int64_t e = 0; e < d; e++)
                    s += qa[e] * ka[c * d + e];
                S[c] = s;
            }
            int64_t c = 0;
            for (int64_t j = 0; j < lo; j++) {
                while (c + 1 < C && st[c + 1] <= j)
                    c++;
                tok[j] = (chunk_tok){S[c], j};
            }
            qsort(tok, (size_t)lo, sizeof *tok, tok_order);
            qsort(tok, (size_t)budget, sizeof *tok, pos_order);
            for (int64_t i = p->splice ? p->globals : 0; i < budget; i++)
                if (tok[i].j >= p->globals)
                    col[out++] = (int32_t)tok[i].j;
        }
        rp[r + 1] = (int32_t)out;
    }
    for (int64_t i = out; i < cap; i++)
        col[i] = -1;
    return SL_OK;
}

/* ---- select.token_budget (issue 20, session 5) ----
 * The contract read literally: every float64 quantity in its own array, the
 * head mean's order by qsort, and each head's top B by a qsort of the
 * prefix positions on (importance descending, position ascending). */
typedef struct tb_pos {
    double v;
    int64_t j;
} tb_pos;

static int tb_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static int tb_cmp_pos(const void *a, const void *b)
{
    const tb_pos *x = a, *y = b;
    if (x->v != y->v)
        return x->v > y->v ? -1 : 1;
    return (x->j > y->j) - (x->j < y->j);
}

sl_status sl__ref_select_token_budget(const sl__kargs *a)
{
    const sl_select_token_budget_params *p = a->params;
    const sl_tensor *x = &a->in[0];
    int64_t H = x->shape[0], W = x->shape[1], C = x->shape[2], P = C - W, half = p->ks / 2;
    const float *xd = x->data;
    int32_t *idx = a->out[0].data, *info = a->out[1].data;
    double *raw = a->scratch, *imp = raw + H * P, *g = imp + H * P, *gs = g + P;
    tb_pos *order = (tb_pos *)(gs + P);
    for (int64_t h = 0; h < H; h++) {
        for (int64_t j = 0; j < P; j++) {
            double s = 0;
            for (int64_t r = 0; r < W; r++)
                s += xd[(h * W + r) * C + j];
            raw[h * P + j] = s / (double)W;
        }
        double tot = 0;
        for (int64_t j = 0; j < P; j++) {
            double s = 0;
            for (int64_t i = j - half; i <= j + half; i++)
                if (i >= 0 && i < P)
                    s += raw[h * P + i];
            imp[h * P + j] = s / (double)p->ks;
            tot += imp[h * P + j];
        }
        for (int64_t j = 0; j < P; j++)
            imp[h * P + j] = tot > 0 ? imp[h * P + j] / tot : 0;
    }
    double gt = 0;
    for (int64_t j = 0; j < P; j++) {
        g[j] = 0;
        for (int64_t h = 0; h < H; h++)
            g[j] += imp[h * P + j] / (double)H;
        gt += g[j];
    }
    for (int64_t j = 0; j < P; j++)
        gs[j] = gt > 0 ? g[j] / gt : 0;
    qsort(gs, (size_t)P, sizeof *gs, tb_cmp_double);
    int64_t count = 0;
    double cum = 0;
    while (count < P && (cum += gs[count]) < p->coverage)
        count++;
    int64_t B = P;
    if (count > 0) {
        B = P - count - 1 > p->m_min ? P - count - 1 : p->m_min;
        B = B < P ? B : P;
    }
    info[0] = (int32_t)count;
    info[1] = (int32_t)B;
    for (int64_t h = 0; h < H; h++) {
        int32_t *row = idx + h * C;
        for (int64_t j = 0; j < C; j++)
            row[j] = B < P ? -1 : (int32_t)j;
        if (B == P)
            continue;
        for (int64_t j = 0; j < P; j++)
            order[j] = (tb_pos){imp[h * P + j], j};
        qsort(order, (size_t)P, sizeof *order, tb_cmp_pos);
        uint8_t *kept = (uint8_t *)raw; /* raw is no longer needed: P flags */
        for (int64_t j = 0; j < P; j++)
            kept[j] = 0;
        for (int64_t t = 0; t < B; t++)
            kept[order[t].j] = 1;
        int64_t n = 0;
        for (int64_t j = 0; j < P; j++)
            if (kept[j])
                row[n++] = (int32_t)j;
        for (int64_t j = P; j < C; j++)
            row[n++] = (int32_t)j;
    }
    return SL_OK;
}

/* ---- select.theta_rows (issue 20, session 5) ----
 * Every row on its own: the nearest key by a scan of all the head's keys
 * (the first of equally near ones, keys ascending: the shorter). */
sl_status sl__ref_select_theta_rows(const sl__kargs *a)
{
    const sl_select_theta_rows_params *p = a->params;
    int64_t H = a->in[0].shape[0], L = a->in[0].shape[1];
    const int32_t *keys = a->in[0].data;
    const float *vals = a->in[1].data;
    float *th = a->out[0].data;
    for (int64_t h = 0; h < H; h++)
        for (int64_t i = 0; i < p->rows; i++) {
            int64_t r = p->r0 + p->step * i, best = -1;
            for (int64_t t = 0; t < L && r > p->k; t++) {
                int64_t kr = keys[h * L + t];
                if (kr < 0)
                    continue;
                if (best < 0 || llabs(kr - r) < llabs(keys[h * L + best] - r))
                    best = t;
            }
            th[h * p->rows + i] = best < 0 ? -1e30f : vals[h * L + best];
        }
    return SL_OK;
}

size_t sl__ref_tsel_scratch(sl_op op, const void *params, const sl_tensor *in, int n_threads)
{
    (void)n_threads;
    switch (op) {
    case SL_OP_ATTN_THRESHOLD: return (size_t)(in[1].shape[1] + in[0].shape[2]) * sizeof(double);
    case SL_OP_SELECT_PQ_MATCH:
        return (size_t)(in[1].shape[1] * in[2].shape[1] + in[2].shape[1] + in[1].shape[1]) * sizeof(int32_t);
    case SL_OP_SELECT_HIP_TREE: {
        const sl_select_hip_tree_params *p = params;
        /* nodes exist only when T > kb, so kb < C: min(kb, C) bounds them */
        int64_t C = (in[1].shape[1] + p->bk - 1) / p->bk;
        return (size_t)(3 * (p->kb < C ? p->kb : C)) * sizeof(hip_node);
    }
    case SL_OP_SELECT_CHUNKS: {
        const sl_select_chunks_params *p = params;
        int64_t d = in[0].shape[2], C = in[1].shape[1];
        return (size_t)(d + C * d + C) * sizeof(double) + (size_t)p->n * (sizeof(double) + sizeof(int64_t));
    }
    case SL_OP_SELECT_TOKEN_BUDGET: {
        /* raw and imp [H, P], g and gs [P], the order [P] */
        int64_t H = in[0].shape[0], P = in[0].shape[2] - in[0].shape[1];
        P = P > 0 ? P : 0;
        return (size_t)(2 * H * P + 2 * P) * sizeof(double) + (size_t)P * sizeof(tb_pos);
    }
    default: return 0;
    }
}
