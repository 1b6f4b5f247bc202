/* cpu/select.c — selectors of issue 4 on threads, one row per work item:
 * select.topk and select.topp sort the row's finite entries by (value
 * descending, index ascending) — the order ref defines by counting ranks —
 * and keep a prefix (topp and select.cover by a radix sort, topk by
 * quickselect); select.threshold is one pass. */
#include "cpu.h"
#include "parallel.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct entry {
    float v;
    int32_t i;
} entry;

static int entry_cmp(const void *pa, const void *pb)
{
    const entry *a = pa, *b = pb;
    if (a->v != b->v)
        return a->v > b->v ? -1 : 1;
    return a->i < b->i ? -1 : a->i > b->i;
}

typedef struct sel_job {
    const sl__kargs *a;
    int64_t rph, C;
    entry *scr;      /* per thread C entries */
} sel_job;

static sel_job job_of(const sl__kargs *a)
{
    const sl_tensor *x = &a->in[0];
    sel_job j = {.a = a, .C = x->shape[x->ndim - 1], .rph = x->ndim == 3 ? x->shape[1] : 1, .scr = a->scratch};
    return j;
}

/* The radix key of a value: ascending keys = the selectors' value order
 * (larger first). -0 and +0 compare equal (as entry_cmp has them), so both
 * take +0's key; the bits of any other float map order-preservingly
 * (negative: all bits flipped, else the sign bit set), then flipped. */
static inline uint32_t desc_key(float v)
{
    uint32_t u;
    if (v == 0)
        v = 0;
    memcpy(&u, &v, sizeof u);
    u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
    return ~u;
}

/* Sorts e[0..n) in the selectors' order (value descending, index
 * ascending) when e comes in ascending index order: a stable LSD radix
 * sort over desc_key, four passes of 8 bits (a pass whose byte is the same
 * for every entry is skipped), so O(n) instead of qsort's O(n log n)
 * (issue 20, session 5: select.cover's nb^2/2 blocks and select.topp's n
 * columns). tmp holds n entries; returns e or tmp, whichever holds the
 * order. */
static entry *radix_sorted(entry *e, entry *tmp, int64_t n)
{
    uint32_t cnt[4][256];
    memset(cnt, 0, sizeof cnt);
    for (int64_t i = 0; i < n; i++) {
        uint32_t k = desc_key(e[i].v);
        cnt[0][k & 255]++;
        cnt[1][(k >> 8) & 255]++;
        cnt[2][(k >> 16) & 255]++;
        cnt[3][k >> 24]++;
    }
    entry *src = e, *dst = tmp;
    for (int b = 0; b < 4; b++) {
        uint32_t *c = cnt[b];
        int one = 0;
        for (int x = 0; x < 256; x++)
            if (c[x] == (uint32_t)n) {
                one = 1;
                break;
            }
        if (one)
            continue;
        uint32_t sum = 0;
        for (int x = 0; x < 256; x++) {
            uint32_t t = c[x];
            c[x] = sum;
            sum += t;
        }
        int sh = 8 * b;
        for (int64_t i = 0; i < n; i++)
            dst[c[(desc_key(src[i].v) >> sh) & 255]++] = src[i];
        entry *t = src;
        src = dst;
        dst = t;
    }
    return src;
}

/* The row's finite entries in order, from e (tmp: as many again); returns
 * how many, *out the sorted array (e or tmp). */
static int64_t sorted_row(const float *row, int64_t C, entry *e, entry *tmp, entry **out)
{
    int64_t n = 0;
    for (int64_t c = 0; c < C; c++)
        if (row[c] != -INFINITY)
            e[n++] = (entry){row[c], (int32_t)c};
    *out = radix_sorted(e, tmp, n);
    return n;
}

/* a comes first in the selectors' order: larger value, then lower index
 * (a total order: indices are unique) */
static inline int entry_before(entry a, entry b) { return a.v > b.v || (a.v == b.v && a.i < b.i); }

/* Reorders e[0..n) so that e[0..k) are the first k of the order (in any
 * order among themselves), 0 < k < n: quickselect on the total order (a
 * median-of-three pivot; a sort of the rest after 64 rounds). */
static void select_first(entry *e, int64_t n, int64_t k)
{
    int64_t lo = 0, hi = n - 1, t = k - 1;
    for (int round = 0; hi > lo; round++) {
        if (round == 64) {
            qsort(e + lo, (size_t)(hi - lo + 1), sizeof *e, entry_cmp);
            return;
        }
        int64_t mid = lo + (hi - lo) / 2;
        entry a = e[lo], b = e[mid], c = e[hi], piv;
        if (entry_before(a, b))
            piv = entry_before(b, c) ? b : (entry_before(a, c) ? c : a);
        else
            piv = entry_before(a, c) ? a : (entry_before(b, c) ? c : b);
        int64_t i = lo, j = hi;
        while (i <= j) {
            while (entry_before(e[i], piv))
                i++;
            while (entry_before(piv, e[j]))
                j--;
            if (i <= j) {
                entry x = e[i];
                e[i++] = e[j];
                e[j--] = x;
            }
        }
        if (t <= j)
            hi = j;
        else if (t >= i)
            lo = i;
        else
            return;
    }
}

static void topk_item(int64_t item, void *ud, int thread)
{
    const sel_job *j = ud;
    const sl_select_topk_params *p = j->a->params;
    const float *row = (const float *)j->a->in[0].data + item * j->C;
    uint8_t *keep = (uint8_t *)j->a->out[0].data + item * j->C;
    entry *e = j->scr + (size_t)thread * (size_t)j->C;
    memset(keep, 0, (size_t)j->C);
    /* the kept set only (a keep mask has no order): quickselect on the
     * selectors' total order keeps exactly the entries a full sort would
     * put first, in O(C) rather than O(C log C) (issue 20, session 3) */
    int64_t n = 0, k = p->k;
    for (int64_t c = 0; c < j->C; c++)
        if (row[c] != -INFINITY)
            e[n++] = (entry){row[c], (int32_t)c};
    if (j->a->in[1].buf)
        k = ((const int32_t *)j->a->in[1].data)[item / j->rph];
    else if (p->ratio > 0)
        k = (int64_t)ceil(p->ratio * (double)n - 1e-9);
    if (k > 0 && k < n)
        select_first(e, n, k);
    for (int64_t i = 0; i < n && i < k; i++)
        keep[e[i].i] = 1;
}

static void topp_item(int64_t item, void *ud, int thread)
{
    const sel_job *j = ud;
    const sl_select_topp_params *p = j->a->params;
    const float *row = (const float *)j->a->in[0].data + item * j->C;
    uint8_t *keep = (uint8_t *)j->a->out[0].data + item * j->C;
    entry *e0 = j->scr + (size_t)thread * 2 * (size_t)(j->C + 1), *e;
    memset(keep, 0, (size_t)j->C);
    int64_t n = sorted_row(row, j->C, e0, e0 + j->C + 1, &e);
    double pp = j->a->in[1].buf ? (double)((const float *)j->a->in[1].data)[item / j->rph] : p->p;
    double m = n > 0 ? e[0].v : 0, total = 0;
    /* masses summed in the row's order, as ref does, so p = 1 stops exactly
     * at the last entry that adds mass */
    for (int64_t i = 0; i < n; i++)
        total += p->normalize ? exp((double)e[i].v - m) : (double)e[i].v;
    double cum = 0, target = pp * total;
    for (int64_t i = 0; i < n && cum < target; i++) {
        cum += p->normalize ? exp((double)e[i].v - m) : (double)e[i].v;
        keep[e[i].i] = 1;
    }
}

static void threshold_item(int64_t item, void *ud, int thread)
{
    (void)thread;
    const sel_job *j = ud;
    const sl_select_threshold_params *p = j->a->params;
    const float *row = (const float *)j->a->in[0].data + item * j->C;
    uint8_t *keep = (uint8_t *)j->a->out[0].data + item * j->C;
    double m = -INFINITY;
    for (int64_t c = 0; c < j->C; c++)
        m = row[c] > m ? row[c] : m;
    double t = p->relative ? p->t * m : p->t;
    for (int64_t c = 0; c < j->C; c++)
        keep[c] = row[c] != -INFINITY && (double)row[c] >= t;
}

static sl_status run(const sl__kargs *a, sl__parallel_fn fn)
{
    sel_job j = job_of(a);
    return sl__cpu_parallel(a->ctx, a->in[0].shape[0] * j.rph, fn, &j);
}

sl_status sl__cpu_select_topk(const sl__kargs *a) { return run(a, topk_item); }
sl_status sl__cpu_select_topp(const sl__kargs *a) { return run(a, topp_item); }
sl_status sl__cpu_select_threshold(const sl__kargs *a) { return run(a, threshold_item); }

size_t sl__cpu_select_scratch(sl_op op, const void *params, const sl_tensor *in, int n_threads)
{
    (void)params;
    if (op == SL_OP_SELECT_THRESHOLD)
        return 0;
    const sl_tensor *x = &in[0];
    int64_t c = x->ndim ? x->shape[x->ndim - 1] : 1;
    if (op == SL_OP_SELECT_COVER && x->ndim == 3)
        c *= x->shape[1];
    /* two arrays per thread: the radix sort's source and destination */
    return (size_t)(n_threads > 0 ? n_threads : 1) * 2 * (size_t)(c + 1) * sizeof(entry);
}

/* select.cover (issue 20, session 3c): one head per work item; the head's
 * taking-part entries sorted by the selectors' order (radix_sorted since
 * session 5, qsort before: the same order), summed in that
 * order, the first cnt (+ extra) kept. */
static void cover_item(int64_t h, void *ud, int thread)
{
    const sel_job *j = ud;
    const sl_select_cover_params *p = j->a->params;
    int64_t R = j->rph, C = j->C, m = R * C;
    const float *v = (const float *)j->a->in[0].data + h * m;
    uint8_t *keep = (uint8_t *)j->a->out[0].data + h * m;
    entry *e = j->scr + (size_t)thread * 2 * (size_t)(m + 1);
    if (j->a->in[2].buf) {
        const uint8_t *base = (const uint8_t *)j->a->in[2].data + h * m;
        for (int64_t f = 0; f < m; f++)
            keep[f] = base[f] != 0;
    } else
        memset(keep, 0, (size_t)m);
    if (j->a->in[1].buf && !((const uint8_t *)j->a->in[1].data)[h])
        return;
    int64_t n = 0;
    for (int64_t r = 0; r < R; r++) {
        int64_t cmax = p->causal ? r + (C - R) : C - 1;
        cmax = cmax < C - 1 ? cmax : C - 1;
        for (int64_t c = 0; c <= cmax; c++)
            if (v[r * C + c] != -INFINITY)
                e[n++] = (entry){v[r * C + c], (int32_t)(r * C + c)};
    }
    e = radix_sorted(e, e + m + 1, n);
    double cum = 0;
    int64_t cnt = 0;
    for (; cnt < n; cnt++) {
        cum += (double)e[cnt].v;
        if (cum > p->limit)
            break;
    }
    int64_t take = cnt + p->extra < n ? cnt + p->extra : n;
    for (int64_t i = 0; i < take; i++)
        keep[e[i].i] = 1;
}

sl_status sl__cpu_select_cover(const sl__kargs *a)
{
    sel_job j = job_of(a);
    if (a->in[0].shape[0] > 0 && j.rph * j.C > INT32_MAX)
        return sl_ctx_fail(a->ctx, SL_EARG, "select.cover: a head holds %lld entries; expected at most 2^31 - 1",
                           (long long)(j.rph * j.C));
    return sl__cpu_parallel(a->ctx, a->in[0].shape[0], cover_item, &j);
}

/* select.row_cover (issue 20, session 4b): one row per work item; the
 * row's candidate blocks sorted by the selectors' order (qsort, float
 * scores compare as their float64 values), then the contract's rule. */
static void row_cover_item(int64_t i, void *ud, int thread)
{
    const sel_job *j = ud;
    const sl_select_row_cover_params *p = j->a->params;
    int64_t R = j->rph, C = j->C, r = i % R;
    const float *row = (const float *)j->a->in[0].data + i * C;
    uint8_t *keep = (uint8_t *)j->a->out[0].data + i * C;
    entry *e = j->scr + (size_t)thread * (size_t)(C + 1);
    memset(keep, 0, (size_t)C);
    int64_t lim = r + (C - R) < C - 1 ? r + (C - R) : C - 1;
    if (lim < 0)
        return;
    if (p->mode == 0) {
        if (p->tau >= 1) {
            memset(keep, 1, (size_t)(lim + 1));
            return;
        }
        double total = 0;
        for (int64_t c = 0; c <= lim; c++)
            total += (double)row[c];
        keep[0] = keep[lim] = 1;
        double cum = (double)row[0] + (lim > 0 ? (double)row[lim] : 0.0), need = p->tau * total;
        if (!(cum < need))
            return;
        int64_t n = 0;
        for (int64_t c = 1; c < lim; c++)
            e[n++] = (entry){row[c], (int32_t)c};
        qsort(e, (size_t)n, sizeof *e, entry_cmp);
        for (int64_t t = 0; t < n && cum < need; t++) {
            keep[e[t].i] = 1;
            cum += (double)e[t].v;
        }
        return;
    }
    /* mode 1: blocks beyond r score 0 */
    double total = 0;
    for (int64_t c = 0; c < C; c++)
        total += c <= r ? (double)row[c] : 0.0;
    double req = total * p->tau;
    int64_t n = 0;
    for (int64_t c = 0; c < C; c++)
        if (c != r)
            e[n++] = (entry){c <= r ? row[c] : 0.f, (int32_t)c};
    qsort(e, (size_t)n, sizeof *e, entry_cmp);
    /* position 0: block r with cum 0; position 1: e[0] with cum 0 + 0;
     * position t >= 2: e[t - 1] with cum = x[r] + e[0] + ... + e[t - 3] */
    if (0 < req)
        keep[r] = 1;
    else
        keep[0] = 1;
    double cum = 0;
    for (int64_t t = 1; t < C; t++) {
        if (t >= 2)
            cum += t == 2 ? (double)row[r] : (double)e[t - 3].v;
        keep[cum < req ? e[t - 1].i : 0] = 1;
    }
    memset(keep + r + 1, 0, (size_t)(C - r - 1));
    keep[r] = 1;
}

sl_status sl__cpu_select_row_cover(const sl__kargs *a)
{
    sel_job j = job_of(a);
    return sl__cpu_parallel(a->ctx, a->in[0].shape[0] * j.rph, row_cover_item, &j);
}
