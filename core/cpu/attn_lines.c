/* cpu/attn_lines.c — attn.lines on the CPU (issue 19): a work item is (head,
 * tile of LINES_TQ rows); each row merges its visible columns (ascending)
 * with its diagonals' keys p - o (walked from the largest offset, so also
 * ascending) into one sorted key list without repeats; then the tile walks
 * the keys in windows of LINES_W positions, each row reading its keys of the
 * window in place (dot products for the scores, the online softmax of
 * rowops.c, P·V by the gathered-row pv), so a K/V row is fetched once per
 * tile. Memory is the lists plus per thread the tile's key lists and row
 * states; time is proportional to the pairs kept. */
#include "attn_lines.h"
#include "parallel.h"
#include "rowops.h"

#include <math.h>
#include <string.h>

#define LINES_TQ 32  /* query rows per work item */
#define LINES_W 512  /* key positions per window (a softmax step of each row) */

typedef struct lines_job {
    const sl__kargs *a;
    sl__cpu_rowops ro;
    sl__cpu_vecops vo;
    sl__attn_dims dm;
    int64_t hl, nc, ns, n_tiles;
} lines_job;

static size_t round64(size_t n) { return (n + 63) / 64 * 64; }

/* Per thread: LINES_TQ key lists (C + S keys each), and per row its scaled
 * query, accumulator and the scores of one window. */
static size_t thread_bytes(int64_t nc, int64_t ns, int64_t d)
{
    return round64((size_t)(LINES_TQ * (nc + ns)) * sizeof(int32_t)) +
           round64((size_t)(LINES_TQ * (2 * d + LINES_W)) * sizeof(float));
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
    int64_t g = h / dm->group, lh = h / (dm->hq / j->hl), d = dm->d, width = j->nc + j->ns;
    char *base = (char *)a->scratch + (size_t)thread * thread_bytes(j->nc, j->ns, d);
    float *fl = (float *)(void *)(base + round64((size_t)(LINES_TQ * width) * sizeof(int32_t)));
    const float *k = (const float *)a->in[1].data + g * dm->nk * d;
    const float *v = (const float *)a->in[2].data + g * dm->nk * d;
    const int32_t *cols = (const int32_t *)a->in[3].data + lh * j->nc;
    const int32_t *offs = (const int32_t *)a->in[4].data + lh * j->ns;
    float scale = (float)dm->scale;
    int64_t r0 = tile * LINES_TQ, rows = dm->nq - r0 < LINES_TQ ? dm->nq - r0 : LINES_TQ;
    int32_t *keys[LINES_TQ];
    float *qs[LINES_TQ], *acc[LINES_TQ], *s[LINES_TQ], m[LINES_TQ], l[LINES_TQ];
    int64_t nnz[LINES_TQ], cur[LINES_TQ];
    for (int64_t t = 0; t < rows; t++) {
        keys[t] = (int32_t *)(void *)base + t * width;
        nnz[t] = row_keys(cols, j->nc, offs, j->ns, dm->offset + r0 + t, keys[t]);
        cur[t] = 0;
        qs[t] = fl + t * (2 * d + LINES_W);
        acc[t] = qs[t] + d;
        s[t] = acc[t] + d;
        const float *q = (const float *)a->in[0].data + (h * dm->nq + r0 + t) * d;
        for (int64_t c = 0; c < d; c++)
            qs[t][c] = q[c] * scale;
        memset(acc[t], 0, (size_t)d * sizeof(float));
        m[t] = -INFINITY;
        l[t] = 0.f;
    }
    /* Windows of LINES_W key positions from the smallest key not yet read:
     * the tile's rows read their keys in the window one after the other, so
     * each K and V row comes from memory once per tile, not once per row
     * (neighbouring rows' diagonals hit neighbouring keys). */
    const float *vrow[LINES_W];
    for (;;) {
        int64_t j0 = INT64_MAX;
        for (int64_t t = 0; t < rows; t++)
            if (cur[t] < nnz[t] && keys[t][cur[t]] < j0)
                j0 = keys[t][cur[t]];
        if (j0 == INT64_MAX)
            break;
        for (int64_t t = 0; t < rows; t++) {
            const int32_t *kk = keys[t] + cur[t];
            int64_t n = 0;
            while (cur[t] + n < nnz[t] && kk[n] < j0 + LINES_W)
                n++;
            if (n == 0)
                continue;
            for (int64_t x = 0; x < n; x++) {
                s[t][x] = j->vo.dot(qs[t], k + (int64_t)kk[x] * d, d);
                vrow[x] = v + (int64_t)kk[x] * d;
            }
            float mnew = j->ro.max(s[t], n, m[t]);
            float alpha = m[t] == -INFINITY ? 0.f : expf(m[t] - mnew);
            l[t] = l[t] * alpha + j->ro.exp_sum(s[t], n, mnew);
            if (alpha != 1.f)
                j->ro.scale(acc[t], d, alpha);
            m[t] = mnew;
            j->vo.pv(acc[t], 1, d, vrow, s[t], LINES_W, n);
            cur[t] += n;
        }
    }
    for (int64_t t = 0; t < rows; t++) {
        float *o = (float *)a->out[0].data + (h * dm->nq + r0 + t) * d, *lse = (float *)a->out[1].data + h * dm->nq + r0 + t;
        if (l[t] <= 0.f) {
            memset(o, 0, (size_t)d * sizeof(float));
            *lse = -INFINITY;
            continue;
        }
        float inv = 1.f / l[t];
        for (int64_t c = 0; c < d; c++)
            o[c] = acc[t][c] * inv;
        *lse = m[t] + logf(l[t]);
    }
}

sl_status sl__cpu_attn_lines(const sl__kargs *a)
{
    const sl_attn_rows_params *p = a->params;
    lines_job j = {a, sl__cpu_rowops_for(a->ctx), sl__cpu_vecops_for(a->ctx), sl__attn_dims_of(&a->in[0], &a->in[1], p->scale),
                   a->in[3].shape[0], a->in[3].shape[1], a->in[4].shape[1], 0};
    if (j.dm.hq == 0 || j.dm.nq == 0)
        return SL_OK;
    j.n_tiles = (j.dm.nq + LINES_TQ - 1) / LINES_TQ;
    return sl__cpu_parallel(a->ctx, j.n_tiles * j.dm.hq, lines_item, &j);
}
