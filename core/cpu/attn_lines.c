/* cpu/attn_lines.c — attn.lines on the CPU (issue 19): a work item is (head,
 * tile of LINES_TQ rows); each row merges its visible columns (ascending)
 * with its diagonals' keys p - o (walked from the largest offset, so also
 * ascending) into one sorted key list without repeats, then streams those K
 * and V rows in place: dot products for the scores, the online softmax of
 * rowops.c in chunks of LINES_KC keys, P·V by the gathered-row pv. Memory is
 * the lists plus per thread one key list and one row's state; time is
 * proportional to the pairs kept. */
#include "cpu.h"
#include "parallel.h"

#include <math.h>
#include <string.h>

#define LINES_TQ 32       /* query rows per work item */
#define LINES_KC 64       /* keys per softmax step */
#define LINES_PREFETCH 8  /* keys ahead whose K and V rows are prefetched */

typedef struct lines_job {
    const sl__kargs *a;
    sl__cpu_rowops ro;
    sl__cpu_vecops vo;
    sl__attn_dims dm;
    int64_t hl, nc, ns, n_tiles;
} lines_job;

static size_t round64(size_t n) { return (n + 63) / 64 * 64; }

/* Per thread: the key list (C + S keys), scores of one chunk, the row's
 * scaled query and accumulator. */
static size_t thread_bytes(int64_t nc, int64_t ns, int64_t d)
{
    return round64((size_t)(nc + ns) * sizeof(int32_t)) + round64((size_t)(LINES_KC + 2 * d) * sizeof(float));
}

size_t sl__cpu_attn_lines_scratch(const sl_tensor *in, int n_threads)
{
    int64_t d = in[0].ndim == 3 ? in[0].shape[2] : 0;
    int64_t nc = in[3].ndim == 2 ? in[3].shape[1] : 0, ns = in[4].ndim == 2 ? in[4].shape[1] : 0;
    return thread_bytes(nc, ns, d) * (size_t)n_threads;
}

/* Row keys at position pos: cols[0 .. nc) and pos - offs[...] merged, ascending, once each. */
static int64_t row_keys(const int32_t *cols, int64_t nc, const int32_t *offs, int64_t ns, int64_t pos, int32_t *keys)
{
    int64_t n = 0, i = 0, t = ns - 1;
    while (t >= 0 && (offs[t] < 0 || offs[t] > pos)) /* padding, or diagonals not reached yet */
        t--;
    for (;;) {
        int64_t c = i < nc && cols[i] >= 0 && cols[i] <= pos ? cols[i] : -1;
        int64_t s = t >= 0 ? pos - offs[t] : -1;
        if (c < 0 && s < 0)
            break;
        if (s < 0 || (c >= 0 && c < s)) {
            keys[n++] = (int32_t)c;
            i++;
        } else {
            keys[n++] = (int32_t)s;
            t--;
            if (c == s)
                i++;
        }
    }
    return n;
}

static void lines_item(int64_t item, void *ud, int thread)
{
    const lines_job *j = ud;
    const sl__attn_dims *dm = &j->dm;
    const sl__kargs *a = j->a;
    int64_t h = item % dm->hq, tile = j->n_tiles - 1 - item / dm->hq; /* the longest rows first */
    int64_t g = h / dm->group, lh = h / (dm->hq / j->hl), d = dm->d;
    char *base = (char *)a->scratch + (size_t)thread * thread_bytes(j->nc, j->ns, d);
    int32_t *keys = (int32_t *)(void *)base;
    float *s = (float *)(void *)(base + round64((size_t)(j->nc + j->ns) * sizeof(int32_t)));
    float *qs = s + LINES_KC, *acc = qs + d;
    const float *k = (const float *)a->in[1].data + g * dm->nk * d;
    const float *v = (const float *)a->in[2].data + g * dm->nk * d;
    const int32_t *cols = (const int32_t *)a->in[3].data + lh * j->nc;
    const int32_t *offs = (const int32_t *)a->in[4].data + lh * j->ns;
    float scale = (float)dm->scale;
    int64_t r_end = (tile + 1) * LINES_TQ < dm->nq ? (tile + 1) * LINES_TQ : dm->nq;
    for (int64_t r = tile * LINES_TQ; r < r_end; r++) {
        const float *q = (const float *)a->in[0].data + (h * dm->nq + r) * d;
        float *o = (float *)a->out[0].data + (h * dm->nq + r) * d, *lse = (float *)a->out[1].data + h * dm->nq + r;
        int64_t nnz = row_keys(cols, j->nc, offs, j->ns, dm->offset + r, keys);
        for (int64_t c = 0; c < d; c++)
            qs[c] = q[c] * scale;
        memset(acc, 0, (size_t)d * sizeof(float));
        float m = -INFINITY, l = 0.f;
        for (int64_t c0 = 0; c0 < nnz; c0 += LINES_KC) {
            int64_t n = nnz - c0 < LINES_KC ? nnz - c0 : LINES_KC;
            const float *vrow[LINES_KC];
            for (int64_t t = 0; t < n; t++) {
                if (c0 + t + LINES_PREFETCH < nnz) {
                    const float *kp = k + (int64_t)keys[c0 + t + LINES_PREFETCH] * d;
                    const float *vp = v + (int64_t)keys[c0 + t + LINES_PREFETCH] * d;
                    for (int64_t off = 0; off < d; off += 16) {
                        __builtin_prefetch(kp + off);
                        __builtin_prefetch(vp + off);
                    }
                }
                s[t] = j->vo.dot(qs, k + (int64_t)keys[c0 + t] * d, d);
                vrow[t] = v + (int64_t)keys[c0 + t] * d;
            }
            float mnew = j->ro.max(s, n, m);
            float alpha = m == -INFINITY ? 0.f : expf(m - mnew);
            l = l * alpha + j->ro.exp_sum(s, n, mnew);
            if (alpha != 1.f)
                j->ro.scale(acc, d, alpha);
            m = mnew;
            j->vo.pv(acc, 1, d, vrow, s, LINES_KC, n);
        }
        if (l <= 0.f) {
            memset(o, 0, (size_t)d * sizeof(float));
            *lse = -INFINITY;
            continue;
        }
        float inv = 1.f / l;
        for (int64_t c = 0; c < d; c++)
            o[c] = acc[c] * inv;
        *lse = m + logf(l);
    }
}

sl_status sl__cpu_attn_lines(const sl__kargs *a)
{
    const sl_attn_rows_params *p = a->params;
    lines_job j = {a, sl__cpu_rowops_get(), sl__cpu_vecops_get(), sl__attn_dims_of(&a->in[0], &a->in[1], p->scale),
                   a->in[3].shape[0], a->in[3].shape[1], a->in[4].shape[1], 0};
    if (j.dm.hq == 0 || j.dm.nq == 0)
        return SL_OK;
    j.n_tiles = (j.dm.nq + LINES_TQ - 1) / LINES_TQ;
    return sl__cpu_parallel(a->ctx, j.n_tiles * j.dm.hq, lines_item, &j);
}
