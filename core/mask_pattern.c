/* mask_pattern.c — analytic mask patterns into block masks: the rules of
 * sparselab.h's pattern table (cards sliding_window, streaming_llm,
 * s2_attention, power_attention, triangle_mix, neighborhood_attention,
 * blindsight, videoxl2_chunk_prefill, vertical_slash, sparse_flash_attention),
 * term validation, per-term preparation (membership lists, segments, slash
 * intervals, drop draws), block classification from block corners, and
 * token fills of the blocks a closed form cannot decide. */
#include "mask_impl.h"

#include <stdlib.h>
#include <string.h>

static const char *const NAMES[SL_PAT__COUNT] = {
    "full",         "causal",   "window",     "sink",          "strided",    "block_diag",
    "power",        "triangle", "neighborhood", "document",    "segment_sink", "global_tokens",
    "dense_rows",   "dense_cols", "vertical", "slash",         "drop"};

const char *sl_pattern_name(sl_pattern_kind k) { return (int)k >= 0 && k < SL_PAT__COUNT ? NAMES[k] : "unknown"; }

int sl_pattern_from_name(const char *name)
{
    for (int k = 0; name && k < SL_PAT__COUNT; k++)
        if (strcmp(NAMES[k], name) == 0)
            return k;
    return -1;
}

static uint64_t mix64(uint64_t x)
{
    x += UINT64_C(0x9E3779B97F4A7C15);
    x = (x ^ (x >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
    x = (x ^ (x >> 27)) * UINT64_C(0x94D049BB133111EB);
    return x ^ (x >> 31);
}

double sl_mask_drop_draw(uint64_t seed, int64_t head, int which, int64_t position)
{
    uint64_t x = mix64(seed);
    x = mix64(x + (uint64_t)head);
    x = mix64(x + (uint64_t)which);
    x = mix64(x + (uint64_t)position);
    return (double)(x >> 11) * 0x1.0p-53;
}

static int uses_list(sl_pattern_kind k)
{
    return k == SL_PAT_STRIDED || k == SL_PAT_DOCUMENT || k == SL_PAT_SEGMENT_SINK || k == SL_PAT_GLOBAL_TOKENS ||
           k == SL_PAT_DENSE_ROWS || k == SL_PAT_DENSE_COLS || k == SL_PAT_VERTICAL || k == SL_PAT_SLASH;
}

int sl_pattern_head_dependent(const sl_pattern_term *t)
{
    if (t->kind == SL_PAT_STRIDED)
        return t->idx != NULL || t->head_step != 0;
    if (t->kind == SL_PAT_DROP)
        return t->a != 1;
    return uses_list(t->kind) && t->idx_ptr != NULL && t->n_lists > 1;
}

static int64_t pmod(int64_t a, int64_t b)
{
    int64_t m = a % b;
    return m < 0 ? m + b : m;
}
static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
static int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

/* ---- validation ------------------------------------------------------------------------------ */

#define FN "sl_mask_from_pattern"
#define BIG (INT64_C(1) << 40)

static sl_status bad(sl_ctx *ctx, int k, const sl_pattern_term *t, const char *what, long long v)
{
    return sl_ctx_fail(ctx, SL_EARG, FN ": term %d (%s): %s, found %lld", k, sl_pattern_name(t->kind), what, v);
}

/* The list of head h (or the shared list). */
static void list_of(const sl_pattern_term *t, int h, const int64_t **p, int64_t *n)
{
    if (t->idx_ptr && t->n_lists > 1) {
        *p = t->idx + t->idx_ptr[h];
        *n = t->idx_ptr[h + 1] - t->idx_ptr[h];
    } else if (t->idx_ptr) {
        *p = t->idx + t->idx_ptr[0];
        *n = t->idx_ptr[1] - t->idx_ptr[0];
    } else {
        *p = t->idx;
        *n = t->n_idx;
    }
}

static sl_status check_list(sl_ctx *ctx, int k, const sl_pattern_term *t, int n_heads, int64_t n_k)
{
    if (!uses_list(t->kind)) {
        if (t->idx || t->n_idx || t->idx_ptr)
            return bad(ctx, k, t, "takes no list (idx must be NULL)", (long long)t->n_idx);
        return SL_OK;
    }
    if (t->n_idx < 0 || (t->n_idx > 0 && !t->idx))
        return bad(ctx, k, t, "idx must hold n_idx >= 0 entries", (long long)t->n_idx);
    if (t->kind == SL_PAT_STRIDED) {
        if (t->idx_ptr)
            return bad(ctx, k, t, "per-head residues are idx[h] (no idx_ptr)", (long long)t->n_lists);
        if (t->idx && t->n_idx != n_heads)
            return sl_ctx_fail(ctx, SL_EARG, FN ": term %d (strided): %lld per-head offsets but %d heads", k,
                               (long long)t->n_idx, n_heads);
        for (int64_t i = 0; t->idx && i < t->n_idx; i++)
            if (t->idx[i] < -BIG || t->idx[i] > BIG)
                return bad(ctx, k, t, "offsets must lie within +-2^40", (long long)t->idx[i]);
        return SL_OK;
    }
    int lists = 1;
    if (t->idx_ptr) {
        if (t->n_lists != 1 && t->n_lists != n_heads)
            return sl_ctx_fail(ctx, SL_EARG, FN ": term %d (%s): %d per-head lists but %d heads", k,
                               sl_pattern_name(t->kind), t->n_lists, n_heads);
        lists = t->n_lists;
        if (t->idx_ptr[0] != 0 || t->idx_ptr[lists] != t->n_idx)
            return bad(ctx, k, t, "idx_ptr must run from 0 to n_idx", (long long)t->idx_ptr[lists]);
        for (int h = 0; h < lists; h++)
            if (t->idx_ptr[h + 1] < t->idx_ptr[h])
                return bad(ctx, k, t, "idx_ptr must not decrease", (long long)t->idx_ptr[h + 1]);
    }
    for (int h = 0; h < lists; h++) {
        const int64_t *p;
        int64_t n;
        list_of(t, lists > 1 ? h : 0, &p, &n);
        for (int64_t i = 0; i < n; i++) {
            if (t->kind == SL_PAT_SLASH) {
                if (p[i] < -BIG || p[i] > BIG)
                    return bad(ctx, k, t, "offsets must lie within +-2^40", (long long)p[i]);
                continue;
            }
            if (p[i] < 0 || p[i] >= n_k)
                return sl_ctx_fail(ctx, SL_EARG, FN ": term %d (%s): position %lld outside [0, %lld)", k,
                                   sl_pattern_name(t->kind), (long long)p[i], (long long)n_k);
            if ((t->kind == SL_PAT_DOCUMENT || t->kind == SL_PAT_SEGMENT_SINK) && i > 0 && p[i] <= p[i - 1])
                return bad(ctx, k, t, "segment starts must increase strictly", (long long)p[i]);
        }
    }
    return SL_OK;
}

static sl_status check_term(sl_ctx *ctx, int k, const sl_pattern_term *t, int n_heads, int64_t n_k)
{
    if ((int)t->kind < 0 || t->kind >= SL_PAT__COUNT)
        return sl_ctx_fail(ctx, SL_EARG, FN ": unknown pattern kind %d", (int)t->kind);
    if (t->causal < -1 || t->causal > 1)
        return bad(ctx, k, t, "causal must be -1, 0 or 1", t->causal);
    if (t->unit < 0 || t->unit > BIG)
        return bad(ctx, k, t, "unit must be in [0, 2^40]", (long long)t->unit);
    if (t->a < 0 || t->a > BIG || t->b < 0 || t->b > BIG || t->c < 0 || t->c > BIG)
        return bad(ctx, k, t, "sizes a, b, c must be in [0, 2^40]",
                   (long long)(t->a < 0 || t->a > BIG ? t->a : t->b < 0 || t->b > BIG ? t->b : t->c));
    if (t->offset < -BIG || t->offset > BIG || t->head_step < -BIG || t->head_step > BIG)
        return bad(ctx, k, t, "offset and head_step must lie within +-2^40", (long long)t->offset);
    switch (t->kind) {
    case SL_PAT_WINDOW:
        if (t->a < 1)
            return bad(ctx, k, t, "window size (a) must be >= 1", (long long)t->a);
        if (t->b > (1 << 20))
            return bad(ctx, k, t, "dilation (b) must be in [0, 2^20]", (long long)t->b);
        break;
    case SL_PAT_STRIDED:
        if (t->a < 1)
            return bad(ctx, k, t, "stride (a) must be >= 1", (long long)t->a);
        if (t->b > 1)
            return bad(ctx, k, t, "b must be 0 (absolute) or 1 (relative)", (long long)t->b);
        break;
    case SL_PAT_BLOCK_DIAG:
        if (t->a < 1)
            return bad(ctx, k, t, "block size (a) must be >= 1", (long long)t->a);
        break;
    case SL_PAT_DROP:
        if (!(t->rate >= 0 && t->rate <= 1) || !(t->q_rate >= 0 && t->q_rate <= 1))
            return sl_ctx_fail(ctx, SL_EARG, FN ": term %d (drop): rate and q_rate must be in [0, 1], found %g and %g",
                               k, t->rate, t->q_rate);
        if (t->a > 1)
            return bad(ctx, k, t, "a must be 0 (a draw per head) or 1 (shared)", (long long)t->a);
        break;
    case SL_PAT_NEIGHBORHOOD: {
        if (t->n_dims < 1 || t->n_dims > SL_PATTERN_MAX_DIMS)
            return bad(ctx, k, t, "n_dims must be 1, 2 or 3", t->n_dims);
        int64_t prod = 1;
        for (int d = 0; d < t->n_dims; d++) {
            int64_t x = t->grid[d] == 0 && t->n_dims == 1 ? n_k : t->grid[d];
            if (x < 1 || x > BIG)
                return bad(ctx, k, t, "grid sizes must be >= 1 (0 only in 1-D, meaning n_k)", (long long)t->grid[d]);
            if (t->kernel[d] < 1 || t->kernel[d] > BIG)
                return bad(ctx, k, t, "kernel sizes must be >= 1", (long long)t->kernel[d]);
            if (t->stride[d] < 0 || t->stride[d] > t->kernel[d])
                return bad(ctx, k, t, "strides must be in [1, kernel] (0 means 1)", (long long)t->stride[d]);
            if (t->dilation[d] < 0 || t->dilation[d] > BIG)
                return bad(ctx, k, t, "dilations must be >= 1 (0 means 1)", (long long)t->dilation[d]);
            prod = prod > BIG / x ? BIG + 1 : prod * x;
        }
        if (prod > n_k)
            return sl_ctx_fail(ctx, SL_EARG, FN ": term %d (neighborhood): the grid holds %lld tokens, more than n_k = %lld",
                               k, (long long)prod, (long long)n_k);
        break;
    }
    default: break;
    }
    return check_list(ctx, k, t, n_heads, n_k);
}

/* ---- preparation ------------------------------------------------------------------------------- */

#define MAX_ALLOCS 6

typedef struct tprep {
    const sl_pattern_term *t;
    sl_pattern_kind kind;
    int causal;
    int64_t u;
    int n_data;       /* per-head arrays: 1 (shared) or n_heads */
    int64_t n_k;
    uint8_t *mem;     /* [n_data][n_k] membership: columns, rows (dense_rows), sinks, drop keys */
    int32_t *pre;     /* [n_data][n_k + 1] prefix counts of mem */
    uint8_t *qmem;    /* drop: kept queries */
    int32_t *qpre;
    int32_t *seg;     /* document: [n_data][n_k] segment of each position */
    int64_t *sstart;  /* document: starts of segments, head h at sstart + sptr[h] */
    int64_t *sptr;    /* [n_data + 1] */
    int64_t *iv;      /* slash: merged [lo, hi] pairs, head h at iv + 2 ivptr[h] */
    int64_t *ivptr;   /* [n_data + 1] */
    int64_t *ivn;     /* [n_data] intervals of each head */
    int64_t n_last;   /* triangle */
    int nd;           /* neighborhood */
    int64_t gn, X[SL_PATTERN_MAX_DIMS], k[SL_PATTERN_MAX_DIMS], s[SL_PATTERN_MAX_DIMS], dl[SL_PATTERN_MAX_DIMS];
    int64_t st[SL_PATTERN_MAX_DIMS];
    int dc[SL_PATTERN_MAX_DIMS];
    void *alloc[MAX_ALLOCS];
    size_t alloc_bytes[MAX_ALLOCS];
    int n_alloc;
} tprep;

static void *tp_alloc(sl_ctx *ctx, tprep *p, size_t bytes)
{
    if (p->n_alloc >= MAX_ALLOCS) {
        sl_ctx_fail(ctx, SL_EINTERNAL, FN ": too many allocations for one term");
        return NULL;
    }
    void *q = sl_ctx_alloc(ctx, bytes ? bytes : 1);
    if (q) {
        p->alloc[p->n_alloc] = q;
        p->alloc_bytes[p->n_alloc++] = bytes ? bytes : 1;
    }
    return q;
}

static void tp_free(sl_ctx *ctx, tprep *p)
{
    for (int i = 0; i < p->n_alloc; i++)
        sl_ctx_dealloc(ctx, p->alloc[i], p->alloc_bytes[i]);
    p->n_alloc = 0;
}

static void prefix(const uint8_t *mem, int32_t *pre, int64_t n)
{
    pre[0] = 0;
    for (int64_t p = 0; p < n; p++)
        pre[p + 1] = pre[p] + (mem[p] != 0);
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static sl_status prepare(sl_ctx *ctx, tprep *p, const sl_pattern_term *t, int n_heads, int64_t n_k)
{
    memset(p, 0, sizeof *p);
    p->t = t;
    p->kind = t->kind;
    p->causal = t->causal == 1 || (t->causal == 0 && t->kind != SL_PAT_FULL && t->kind != SL_PAT_NEIGHBORHOOD);
    p->u = t->unit > 1 ? t->unit : 1;
    p->n_k = n_k;
    p->n_data = sl_pattern_head_dependent(t) && t->kind != SL_PAT_STRIDED ? n_heads : 1;
    size_t nk = (size_t)n_k, nd = (size_t)p->n_data;
    switch (t->kind) {
    case SL_PAT_TRIANGLE: p->n_last = min64(t->c, n_k > 0 ? n_k - 1 : 0); break;
    case SL_PAT_NEIGHBORHOOD:
        p->nd = t->n_dims;
        p->gn = 1;
        for (int d = 0; d < p->nd; d++) {
            p->X[d] = t->grid[d] == 0 ? n_k : t->grid[d];
            p->k[d] = t->kernel[d];
            p->s[d] = t->stride[d] > 0 ? t->stride[d] : 1;
            p->dl[d] = t->dilation[d] > 0 ? t->dilation[d] : 1;
            p->dc[d] = t->dim_causal[d] != 0;
            p->gn *= p->X[d];
        }
        p->st[p->nd - 1] = 1;
        for (int d = p->nd - 2; d >= 0; d--)
            p->st[d] = p->st[d + 1] * p->X[d + 1];
        break;
    case SL_PAT_DOCUMENT: {
        int64_t total = 0;
        for (int h = 0; h < p->n_data; h++) {
            const int64_t *l;
            int64_t n;
            list_of(t, h, &l, &n);
            total += n + 1;
        }
        if (!(p->seg = tp_alloc(ctx, p, nd * nk * sizeof(int32_t))) ||
            !(p->sstart = tp_alloc(ctx, p, (size_t)total * sizeof(int64_t))) ||
            !(p->sptr = tp_alloc(ctx, p, (nd + 1) * sizeof(int64_t))))
            return SL_ENOMEM;
        p->sptr[0] = 0;
        for (int h = 0; h < p->n_data; h++) {
            const int64_t *l;
            int64_t n;
            list_of(t, h, &l, &n);
            int64_t *ss = p->sstart + p->sptr[h];
            ss[0] = 0;
            for (int64_t i = 0; i < n; i++)
                ss[i + 1] = l[i];
            p->sptr[h + 1] = p->sptr[h] + n + 1;
            int32_t *sg = p->seg + (size_t)h * nk, s = 0;
            for (int64_t q = 0; q < n_k; q++) {
                while (s < n && l[s] <= q)
                    s++;
                sg[q] = s;
            }
        }
        break;
    }
    case SL_PAT_SLASH: {
        int64_t total = 0;
        for (int h = 0; h < p->n_data; h++) {
            const int64_t *l;
            int64_t n;
            list_of(t, h, &l, &n);
            total += n;
        }
        if (!(p->iv = tp_alloc(ctx, p, (size_t)(2 * total) * sizeof(int64_t))) ||
            !(p->ivptr = tp_alloc(ctx, p, (nd + 1) * sizeof(int64_t))) ||
            !(p->ivn = tp_alloc(ctx, p, nd * sizeof(int64_t))))
            return SL_ENOMEM;
        int64_t w = t->a > 0 ? t->a : 1;
        p->ivptr[0] = 0;
        for (int h = 0; h < p->n_data; h++) {
            const int64_t *l;
            int64_t n;
            list_of(t, h, &l, &n);
            /* Sort the offsets into the upper half of the head's pair array,
             * then merge touching bands [o, o + w - 1] into disjoint
             * intervals written from the bottom: pair m lands at 2m, 2m + 1
             * <= n + i, never past the offset i being read. */
            int64_t *iv = p->iv + 2 * p->ivptr[h], *sorted = iv + n, m = 0;
            memcpy(sorted, l, (size_t)n * sizeof(int64_t));
            qsort(sorted, (size_t)n, sizeof(int64_t), cmp_i64);
            for (int64_t i = 0; i < n; i++) {
                int64_t lo = sorted[i], hi = sorted[i] + w - 1;
                if (m > 0 && lo <= iv[2 * m - 1] + 1) {
                    iv[2 * m - 1] = max64(iv[2 * m - 1], hi);
                    continue;
                }
                iv[2 * m] = lo;
                iv[2 * m + 1] = hi;
                m++;
            }
            p->ivn[h] = m;
            p->ivptr[h + 1] = p->ivptr[h] + n;
        }
        break;
    }
    case SL_PAT_DROP:
        if (!(p->qmem = tp_alloc(ctx, p, nd * nk)) || !(p->qpre = tp_alloc(ctx, p, nd * (nk + 1) * sizeof(int32_t))))
            return SL_ENOMEM;
        /* The keys go into mem like the lists below. */
        /* fall through */
    case SL_PAT_SEGMENT_SINK:
    case SL_PAT_GLOBAL_TOKENS:
    case SL_PAT_DENSE_ROWS:
    case SL_PAT_DENSE_COLS:
    case SL_PAT_VERTICAL:
        if (!(p->mem = tp_alloc(ctx, p, nd * nk)) || !(p->pre = tp_alloc(ctx, p, nd * (nk + 1) * sizeof(int32_t))))
            return SL_ENOMEM;
        for (int h = 0; h < p->n_data; h++) {
            uint8_t *mem = p->mem + (size_t)h * nk;
            memset(mem, 0, nk);
            if (t->kind == SL_PAT_DROP) {
                uint8_t *qm = p->qmem + (size_t)h * nk;
                for (int64_t q = 0; q < n_k; q++) {
                    mem[q] = sl_mask_drop_draw(t->seed, h, 0, q) >= t->rate;
                    qm[q] = sl_mask_drop_draw(t->seed, h, 1, q) >= t->q_rate;
                }
                prefix(qm, p->qpre + (size_t)h * (nk + 1), n_k);
            } else {
                const int64_t *l;
                int64_t n;
                list_of(t, h, &l, &n);
                if (t->kind == SL_PAT_SEGMENT_SINK) {
                    for (int64_t s = 0; s <= n; s++) {
                        int64_t start = s == 0 ? 0 : l[s - 1], end = s < n ? l[s] : n_k;
                        for (int64_t q = start; q < end && q < start + t->a; q++)
                            mem[q] = 1;
                    }
                } else {
                    for (int64_t i = 0; i < n; i++)
                        mem[l[i]] = 1;
                    if (t->kind == SL_PAT_DENSE_ROWS || t->kind == SL_PAT_DENSE_COLS) {
                        for (int64_t q = 0; q < min64(t->b, n_k); q++)
                            mem[q] = 1;
                        for (int64_t q = max64(0, n_k - t->a); q < n_k; q++)
                            mem[q] = 1;
                    }
                }
            }
            prefix(mem, p->pre + (size_t)h * (nk + 1), n_k);
        }
        break;
    default: break;
    }
    return SL_OK;
}

/* ---- classification ------------------------------------------------------------------------------ */

static int cls_range(int64_t lo, int64_t hi, int64_t a, int64_t b)
{
    if (hi < a || lo > b)
        return SL__BLK_EMPTY;
    return lo >= a && hi <= b ? SL__BLK_FULL : SL__BLK_PARTIAL;
}

static int cls_count(int64_t n, int64_t total) { return n == 0 ? SL__BLK_EMPTY : n == total ? SL__BLK_FULL : SL__BLK_PARTIAL; }

static int64_t count_in(const int32_t *pre, int64_t a, int64_t b) { return pre[b + 1] - pre[a]; }

static int64_t strided_offset(const sl_pattern_term *t, int h)
{
    return t->idx ? t->idx[h] : t->offset + (int64_t)h * t->head_step;
}

/* The first interval of head h's slash list with hi >= x (sorted, disjoint). */
static int64_t iv_first(const tprep *p, int h, int64_t x)
{
    const int64_t *iv = p->iv + 2 * p->ivptr[h];
    int64_t lo = 0, hi = p->ivn[h];
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        if (iv[2 * mid + 1] < x)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* Class of the rule alone on positions [p0, p1] × keys [j0, j1]; rowlo and
 * rowhi bound the keys a neighborhood keeps for these rows. */
static int rule_class(const tprep *p, int h, int64_t p0, int64_t p1, int64_t j0, int64_t j1, const int64_t *rc)
{
    const sl_pattern_term *t = p->t;
    int64_t u = p->u, I0 = rc[0], I1 = rc[1], J0 = u == 1 ? j0 : j0 / u, J1 = u == 1 ? j1 : j1 / u;
    int64_t dmin = I0 - J1, dmax = I1 - J0, rowlo = rc[2], rowhi = rc[3];
    int hd = p->n_data > 1 ? h : 0;
    switch (p->kind) {
    case SL_PAT_FULL:
    case SL_PAT_CAUSAL: return SL__BLK_FULL;
    case SL_PAT_WINDOW: {
        int64_t r = t->b > 1 ? t->b : 1;
        if (r == 1)
            return cls_range(dmin, dmax, 0, t->a - 1);
        int64_t lo = max64(dmin, 0), hi = min64(dmax, (t->a - 1) * r), m = (lo + r - 1) / r * r;
        if (m > hi)
            return SL__BLK_EMPTY;
        return dmin == dmax ? SL__BLK_FULL : SL__BLK_PARTIAL;
    }
    case SL_PAT_SINK: return J0 >= t->a ? SL__BLK_EMPTY : J1 < t->a ? SL__BLK_FULL : SL__BLK_PARTIAL;
    case SL_PAT_STRIDED: {
        int64_t o = strided_offset(t, h);
        if (t->b == 0) {
            if (J0 + pmod(-(J0 + o), t->a) > J1)
                return SL__BLK_EMPTY;
            return J0 == J1 || t->a == 1 ? SL__BLK_FULL : SL__BLK_PARTIAL;
        }
        if (dmin + pmod(-(dmin + o), t->a) > dmax)
            return SL__BLK_EMPTY;
        return dmin == dmax || t->a == 1 ? SL__BLK_FULL : SL__BLK_PARTIAL;
    }
    case SL_PAT_BLOCK_DIAG: {
        int64_t S = t->a, a0 = p0 / S, a1 = p1 / S, b0 = j0 / S, b1 = j1 / S;
        if (a1 < b0 || b1 < a0)
            return SL__BLK_EMPTY;
        return a0 == a1 && b0 == b1 ? SL__BLK_FULL : SL__BLK_PARTIAL;
    }
    case SL_PAT_POWER: {
        if (dmax < 0)
            return SL__BLK_EMPTY;
        int64_t lo = max64(dmin, 0), pw = 1;
        while (pw < lo)
            pw <<= 1;
        if (lo != 0 && pw > dmax)
            return SL__BLK_EMPTY;
        return dmin == dmax ? SL__BLK_FULL : SL__BLK_PARTIAL;
    }
    case SL_PAT_TRIANGLE: {
        int64_t L = p->n_k - p->n_last;
        int c1 = p0 >= L ? SL__BLK_FULL : p1 < L ? SL__BLK_EMPTY : SL__BLK_PARTIAL;
        int c2 = j0 >= t->a ? SL__BLK_EMPTY : j1 < t->a ? SL__BLK_FULL : SL__BLK_PARTIAL;
        int c3 = t->b == 0 ? SL__BLK_EMPTY : cls_range(p0 - j1, p1 - j0, 0, t->b - 1);
        if (c1 == SL__BLK_FULL || c2 == SL__BLK_FULL || c3 == SL__BLK_FULL)
            return SL__BLK_FULL;
        return c1 || c2 || c3 ? SL__BLK_PARTIAL : SL__BLK_EMPTY;
    }
    case SL_PAT_NEIGHBORHOOD:
        if (rowlo > rowhi || j1 < rowlo || j0 > rowhi)
            return SL__BLK_EMPTY;
        return SL__BLK_PARTIAL;
    case SL_PAT_DOCUMENT: {
        const int32_t *sg = p->seg + (size_t)hd * (size_t)p->n_k;
        return cls_range((int64_t)sg[p0] - sg[j1], (int64_t)sg[p1] - sg[j0], 0, t->b);
    }
    case SL_PAT_DENSE_ROWS: return cls_count(count_in(p->pre + (size_t)hd * (size_t)(p->n_k + 1), p0, p1), p1 - p0 + 1);
    case SL_PAT_SEGMENT_SINK:
    case SL_PAT_DENSE_COLS:
    case SL_PAT_VERTICAL: return cls_count(count_in(p->pre + (size_t)hd * (size_t)(p->n_k + 1), j0, j1), j1 - j0 + 1);
    case SL_PAT_GLOBAL_TOKENS: {
        const int32_t *pre = p->pre + (size_t)hd * (size_t)(p->n_k + 1);
        int64_t R = count_in(pre, p0, p1), C = count_in(pre, j0, j1);
        if (R == p1 - p0 + 1 || C == j1 - j0 + 1)
            return SL__BLK_FULL;
        return R == 0 && C == 0 ? SL__BLK_EMPTY : SL__BLK_PARTIAL;
    }
    case SL_PAT_SLASH: {
        int64_t lo = p0 - j1, hi = p1 - j0, e = iv_first(p, hd, lo), n = p->ivn[hd];
        const int64_t *iv = p->iv + 2 * p->ivptr[hd];
        if (e >= n || iv[2 * e] > hi)
            return SL__BLK_EMPTY;
        return iv[2 * e] <= lo && iv[2 * e + 1] >= hi ? SL__BLK_FULL : SL__BLK_PARTIAL;
    }
    case SL_PAT_DROP: {
        int64_t R = count_in(p->qpre + (size_t)hd * (size_t)(p->n_k + 1), p0, p1);
        int64_t C = count_in(p->pre + (size_t)hd * (size_t)(p->n_k + 1), j0, j1);
        if (R == 0 || C == 0)
            return SL__BLK_EMPTY;
        return R == p1 - p0 + 1 && C == j1 - j0 + 1 ? SL__BLK_FULL : SL__BLK_PARTIAL;
    }
    default: return SL__BLK_EMPTY;
    }
}

static int term_class(const tprep *p, int h, int64_t p0, int64_t p1, int64_t j0, int64_t j1, const int64_t *row)
{
    int rc = rule_class(p, h, p0, p1, j0, j1, row);
    if (!p->causal || rc == SL__BLK_EMPTY)
        return rc;
    int cc = j1 <= p0 ? SL__BLK_FULL : j0 > p1 ? SL__BLK_EMPTY : SL__BLK_PARTIAL;
    if (cc == SL__BLK_EMPTY)
        return SL__BLK_EMPTY;
    return rc == SL__BLK_FULL && cc == SL__BLK_FULL ? SL__BLK_FULL : SL__BLK_PARTIAL;
}

/* ---- neighborhood ---------------------------------------------------------------------------------- */

/* Per dim, the keys query position i keeps: coordinates g + dl·y' for y' in
 * [lo[d], hi[d]]. Returns 0 when i is outside the grid. */
static int nbhd_window(const tprep *p, int64_t i, int64_t g[], int64_t lo[], int64_t hi[])
{
    if (i >= p->gn)
        return 0;
    for (int d = 0; d < p->nd; d++) {
        int64_t x = i / p->st[d] % p->X[d], dl = p->dl[d], k = p->k[d], s = p->s[d];
        g[d] = x % dl;
        int64_t xp = x / dl, Xp = (p->X[d] - g[d] + dl - 1) / dl;
        if (p->dc[d]) {
            int64_t L = min64(xp / s * s + s - 1, Xp - 1);
            lo[d] = max64(0, L - k + 1);
            hi[d] = xp;
        } else {
            int64_t L = min64(xp / s * s + s / 2, Xp - 1), lf = k / 2, rt = k - 1 - lf;
            int64_t c = min64(max64(L, lf), Xp - 1 - rt);
            lo[d] = max64(0, c - lf);
            hi[d] = min64(Xp - 1, c + rt);
        }
        if (lo[d] > hi[d])
            return 0;
    }
    return 1;
}

/* A query position's window, cached per row of a block row: w[0] = 1 when
 * the position is in the grid, then g[3], lo[3], hi[3] as nbhd_window gives. */
#define NB_W 10

static void nbhd_cache(const tprep *p, int64_t i, int64_t *w)
{
    w[0] = nbhd_window(p, i, w + 1, w + 4, w + 7);
}

/* Sets the kept keys of a cached window within [j0, j1] in row (row[0] is j0). */
static void nbhd_fill_row(const tprep *p, const int64_t *w, int64_t j0, int64_t j1, uint8_t *row)
{
    if (!w[0])
        return;
    const int64_t *g = w + 1, *lo = w + 4, *hi = w + 7;
    int64_t y[SL_PATTERN_MAX_DIMS];
    int nd = p->nd, last = nd - 1;
    for (int d = 0; d < last; d++)
        y[d] = lo[d];
    for (;;) {
        int64_t base = 0;
        for (int d = 0; d < last; d++)
            base += (g[d] + p->dl[d] * y[d]) * p->st[d];
        int64_t dl = p->dl[last], a = base + g[last] + dl * lo[last], b = base + g[last] + dl * hi[last];
        if (a > j1)
            break; /* bases only grow from here */
        if (b >= j0) {
            if (dl == 1) {
                int64_t x0 = max64(a, j0), x1 = min64(b, j1);
                memset(row + (x0 - j0), 1, (size_t)(x1 - x0 + 1));
            } else {
                int64_t first = a >= j0 ? a : a + (j0 - a + dl - 1) / dl * dl;
                for (int64_t x = first; x <= min64(b, j1); x += dl)
                    row[x - j0] = 1;
            }
        }
        int d = last - 1;
        while (d >= 0 && ++y[d] > hi[d]) {
            y[d] = lo[d];
            d--;
        }
        if (d < 0)
            break;
    }
}

/* The smallest and largest key position of a cached window (mn > mx: none). */
static void nbhd_bounds(const tprep *p, const int64_t *w, int64_t *mn, int64_t *mx)
{
    *mn = INT64_MAX;
    *mx = -1;
    if (!w[0])
        return;
    int64_t a = 0, b = 0;
    for (int d = 0; d < p->nd; d++) {
        a += (w[1 + d] + p->dl[d] * w[4 + d]) * p->st[d];
        b += (w[1 + d] + p->dl[d] * w[7 + d]) * p->st[d];
    }
    *mn = a;
    *mx = b;
}

/* ---- token fills ------------------------------------------------------------------------------------ */

static void set_range(uint8_t *row, int64_t j0, int64_t lo, int64_t hi)
{
    if (lo < j0)
        lo = j0;
    if (lo <= hi)
        memset(row + (lo - j0), 1, (size_t)(hi - lo + 1));
}

static void set_members(uint8_t *row, int64_t j0, int64_t lo, int64_t hi, const uint8_t *mem, const int32_t *pre)
{
    if (lo > hi || count_in(pre, lo, hi) == 0)
        return;
    for (int64_t j = lo; j <= hi; j++)
        row[j - j0] |= mem[j];
}

/* Sets the pairs the rule keeps for position i and keys [j0, hi] in row;
 * nbw is the position's cached neighborhood window. */
static void fill_row(const tprep *p, int h, int64_t i, int64_t j0, int64_t hi, const int64_t *nbw, uint8_t *row)
{
    const sl_pattern_term *t = p->t;
    int64_t u = p->u, I = i / u;
    int hd = p->n_data > 1 ? h : 0;
    size_t nk = (size_t)p->n_k;
    switch (p->kind) {
    case SL_PAT_FULL:
    case SL_PAT_CAUSAL: set_range(row, j0, j0, hi); break;
    case SL_PAT_WINDOW: {
        int64_t r = t->b > 1 ? t->b : 1;
        if (r == 1) {
            set_range(row, j0, (I - t->a + 1) * u, min64(hi, I * u + u - 1));
            break;
        }
        int64_t dlo = max64(0, I - hi / u), dhi = min64(I - j0 / u, (t->a - 1) * r);
        for (int64_t d = (dlo + r - 1) / r * r; d <= dhi; d += r)
            set_range(row, j0, (I - d) * u, min64(hi, (I - d) * u + u - 1));
        break;
    }
    case SL_PAT_SINK: set_range(row, j0, j0, min64(hi, t->a * u - 1)); break;
    case SL_PAT_STRIDED: {
        int64_t o = strided_offset(t, h), Jlo = j0 / u, Jhi = hi / u;
        int64_t J = t->b == 0 ? Jlo + pmod(-(Jlo + o), t->a) : Jlo + pmod(I + o - Jlo, t->a);
        for (; J <= Jhi; J += t->a)
            set_range(row, j0, J * u, min64(hi, J * u + u - 1));
        break;
    }
    case SL_PAT_BLOCK_DIAG: {
        int64_t lo = i / t->a * t->a;
        set_range(row, j0, lo, min64(hi, lo + t->a - 1));
        break;
    }
    case SL_PAT_POWER: {
        int64_t dlo = I - hi / u, dhi = I - j0 / u;
        for (int64_t d = 0; d <= dhi; d = d ? d << 1 : 1)
            if (d >= dlo)
                set_range(row, j0, (I - d) * u, min64(hi, (I - d) * u + u - 1));
        break;
    }
    case SL_PAT_TRIANGLE:
        if (i >= p->n_k - p->n_last) {
            set_range(row, j0, j0, hi);
            break;
        }
        set_range(row, j0, j0, min64(hi, t->a - 1));
        if (t->b > 0)
            set_range(row, j0, i - t->b + 1, min64(hi, i));
        break;
    case SL_PAT_NEIGHBORHOOD: nbhd_fill_row(p, nbw, j0, hi, row); break;
    case SL_PAT_DOCUMENT: {
        const int32_t *sg = p->seg + (size_t)hd * nk;
        const int64_t *ss = p->sstart + p->sptr[hd];
        int64_t n_seg = p->sptr[hd + 1] - p->sptr[hd], s = sg[i], s0 = max64(0, s - t->b);
        int64_t end = s + 1 < n_seg ? ss[s + 1] - 1 : p->n_k - 1;
        set_range(row, j0, ss[s0], min64(hi, end));
        break;
    }
    case SL_PAT_DENSE_ROWS:
        if (p->mem[(size_t)hd * nk + (size_t)i])
            set_range(row, j0, j0, hi);
        break;
    case SL_PAT_GLOBAL_TOKENS:
        if (p->mem[(size_t)hd * nk + (size_t)i]) {
            set_range(row, j0, j0, hi);
            break;
        }
        /* Otherwise the global columns, as for the lists below. */
        /* fall through */
    case SL_PAT_SEGMENT_SINK:
    case SL_PAT_DENSE_COLS:
    case SL_PAT_VERTICAL: set_members(row, j0, j0, hi, p->mem + (size_t)hd * nk, p->pre + (size_t)hd * (nk + 1)); break;
    case SL_PAT_SLASH: {
        const int64_t *iv = p->iv + 2 * p->ivptr[hd];
        int64_t n = p->ivn[hd];
        for (int64_t e = iv_first(p, hd, i - hi); e < n && iv[2 * e] <= i - j0; e++)
            set_range(row, j0, i - iv[2 * e + 1], min64(hi, i - iv[2 * e]));
        break;
    }
    case SL_PAT_DROP:
        if (p->qmem[(size_t)hd * nk + (size_t)i])
            set_members(row, j0, j0, hi, p->mem + (size_t)hd * nk, p->pre + (size_t)hd * (nk + 1));
        break;
    default: break;
    }
}

/* ---- materialisation --------------------------------------------------------------------------------- */

typedef struct pat_job {
    const sl__mgeom *g;
    const tprep *tp;
    int n_terms;
    size_t blk_bytes;
    const int *nb_slot;   /* per term: its window cache, or -1 */
} pat_job;

/* Per term and query block: I0, I1 (first and last query unit) and the
 * bounds of the keys a neighborhood keeps for these rows. */
#define ROW_CTX 4

/* Scratch of one row: bits, ROW_CTX int64 per term, NB_W int64 per row per
 * neighborhood term, a class byte per term. */
static size_t pat_scratch(const pat_job *J, int n_nb)
{
    return J->blk_bytes + ((size_t)J->n_terms * ROW_CTX + (size_t)n_nb * (size_t)J->g->bq * NB_W) * 8 +
           (size_t)J->n_terms + 16;
}

/* Key units [*lo, *hi] outside of which term p keeps nothing for the rows
 * whose units are rc[0] .. rc[1] (a superset of what rule_class keeps), or 0
 * when the term has no such bound (issue 20, session 5: a sink + window
 * pattern classified all nb^2 / 2 visible blocks, quadratic in n for a mask
 * of O(nb) blocks). */
static int term_keys(const tprep *p, const int64_t *rc, int64_t *lo, int64_t *hi)
{
    switch (p->kind) {
    case SL_PAT_SINK:
        *lo = 0;
        *hi = p->t->a - 1;
        return 1;
    case SL_PAT_WINDOW: {
        int64_t r = p->t->b > 1 ? p->t->b : 1;
        *lo = rc[0] - (p->t->a - 1) * r;
        *hi = rc[1];
        return 1;
    }
    default: return 0;
    }
}

enum { KEY_SPANS = 8 };

/* The key blocks of a row of blocks that a term may keep, as n spans [b0,
 * b1] sorted by b0 (they may overlap): one span of every block unless each
 * term bounds its keys (term_keys). */
static int key_spans(const pat_job *J, const int64_t *rowc, int64_t n_kb, int64_t *span)
{
    const sl__mgeom *g = J->g;
    int n = 0;
    if (J->n_terms < 1 || J->n_terms > KEY_SPANS || n_kb < 1)
        goto all;
    for (int t = 0; t < J->n_terms; t++) {
        const tprep *tp = &J->tp[t];
        int64_t lo, hi;
        if (!term_keys(tp, rowc + ROW_CTX * t, &lo, &hi))
            goto all;
        lo = max64(lo, 0);
        hi = min64(hi, (g->n_k - 1) / tp->u);
        if (lo > hi)
            continue;
        int64_t b0 = lo * tp->u / g->bk, b1 = min64((hi * tp->u + tp->u - 1) / g->bk, n_kb - 1);
        if (b0 > b1)
            continue;
        int i = n++;
        for (; i > 0 && span[2 * (i - 1)] > b0; i--) {
            span[2 * i] = span[2 * (i - 1)];
            span[2 * i + 1] = span[2 * (i - 1) + 1];
        }
        span[2 * i] = b0;
        span[2 * i + 1] = b1;
    }
    return n;
all:
    span[0] = 0;
    span[1] = n_kb - 1;
    return 1;
}

static void pattern_row(void *ud, void *scratch, int h, int64_t r, sl__mb_sink *sink)
{
    const pat_job *J = ud;
    const sl__mgeom *g = J->g;
    uint8_t *bits = scratch;
    int64_t *rowc = (int64_t *)(bits + J->blk_bytes); /* ROW_CTX per term */
    int64_t *nbw = rowc + ROW_CTX * J->n_terms;      /* windows of neighborhood terms */
    int n_nb = 0;
    for (int t = 0; t < J->n_terms; t++)
        n_nb += J->nb_slot[t] >= 0;
    uint8_t *cls = (uint8_t *)(nbw + (size_t)n_nb * (size_t)g->bq * NB_W); /* per term: class of the current block */
    int64_t rows = sl__mg_rows(g, r), p0 = g->offset + r * g->bq, p1 = p0 + rows - 1, n_kb = g->n_kb;
    int all_causal = J->n_terms > 0;
    for (int t = 0; t < J->n_terms; t++) {
        const tprep *tp = &J->tp[t];
        int64_t *rc = rowc + ROW_CTX * t;
        rc[0] = p0 / tp->u;
        rc[1] = p1 / tp->u;
        rc[2] = 0;
        rc[3] = -1;
        all_causal &= tp->causal;
        if (J->nb_slot[t] < 0)
            continue;
        int64_t mn = INT64_MAX, mx = -1, *w = nbw + (size_t)J->nb_slot[t] * (size_t)g->bq * NB_W;
        for (int64_t a = 0; a < rows; a++) {
            int64_t lo, hi;
            nbhd_cache(tp, p0 + a, w + a * NB_W);
            nbhd_bounds(tp, w + a * NB_W, &lo, &hi);
            mn = min64(mn, lo);
            mx = max64(mx, hi);
        }
        rc[2] = mn;
        rc[3] = mx;
    }
    /* Causal terms keep nothing right of the block's last position. */
    if (all_causal && p1 / g->bk + 1 < n_kb)
        n_kb = p1 / g->bk + 1;
    /* only the blocks some term may keep, ascending (each visited once where spans overlap) */
    int64_t span[2 * KEY_SPANS], next = 0;
    int n_span = key_spans(J, rowc, n_kb, span);
    for (int sp = 0; sp < n_span; next = max64(next, span[2 * sp + 1] + 1), sp++)
    for (int64_t c = max64(span[2 * sp], next); c <= span[2 * sp + 1]; c++) {
        int64_t j0 = c * g->bk, j1 = j0 + sl__mg_cols(g, c) - 1;
        int full = 0, partial = 0;
        for (int t = 0; t < J->n_terms && !full; t++) {
            cls[t] = (uint8_t)term_class(&J->tp[t], h, p0, p1, j0, j1, rowc + ROW_CTX * t);
            full = cls[t] == SL__BLK_FULL;
            partial |= cls[t] == SL__BLK_PARTIAL;
        }
        if (full) {
            sl__mb_emit(sink, c, SL__BLK_FULL, NULL);
            continue;
        }
        if (!partial)
            continue;
        memset(bits, 0, (size_t)rows * (size_t)g->bk);
        for (int t = 0; t < J->n_terms; t++) {
            if (cls[t] != SL__BLK_PARTIAL)
                continue;
            const tprep *tp = &J->tp[t];
            const int64_t *w = J->nb_slot[t] >= 0 ? nbw + (size_t)J->nb_slot[t] * (size_t)g->bq * NB_W : NULL;
            for (int64_t a = 0; a < rows; a++) {
                int64_t i = p0 + a, hi = tp->causal ? min64(j1, i) : j1;
                if (hi >= j0)
                    fill_row(tp, h, i, j0, hi, w ? w + a * NB_W : NULL, bits + a * g->bk);
            }
        }
        sl__mb_emit(sink, c, SL__BLK_PARTIAL, bits);
    }
}

sl_status sl_mask_from_pattern_heads(sl_ctx *ctx, const sl_pattern_term *terms, int n_terms, int n_heads,
                                     int64_t n_q, int64_t n_k, int bq, int bk, sl_mask *out)
{
    memset(out, 0, sizeof *out);
    sl_status s = sl__mask_check_geometry(ctx, FN, n_q, n_k, bq, bk);
    if (s)
        return s;
    if (n_heads < 1 || n_heads > 65536)
        return sl_ctx_fail(ctx, SL_EARG, FN ": n_heads must be in [1, 65536], found %d", n_heads);
    if (n_terms < 0 || (n_terms > 0 && !terms))
        return sl_ctx_fail(ctx, SL_EARG, FN ": expected n_terms >= 0 terms, found %d", n_terms);
    int per_head = 0;
    for (int t = 0; t < n_terms; t++) {
        if ((s = check_term(ctx, t, &terms[t], n_heads, n_k)))
            return s;
        per_head |= sl_pattern_head_dependent(&terms[t]);
    }
    int heads = per_head ? n_heads : 1;
    size_t tp_bytes = sizeof(tprep) * (size_t)(n_terms > 0 ? n_terms : 1);
    size_t slot_bytes = sizeof(int) * (size_t)(n_terms > 0 ? n_terms : 1);
    tprep *tp = sl_ctx_alloc(ctx, tp_bytes);
    int *nb_slot = tp ? sl_ctx_alloc(ctx, slot_bytes) : NULL;
    if (!nb_slot) {
        if (tp)
            sl_ctx_dealloc(ctx, tp, tp_bytes);
        return SL_ENOMEM;
    }
    memset(tp, 0, tp_bytes);
    int n_nb = 0;
    for (int t = 0; t < n_terms; t++)
        nb_slot[t] = terms[t].kind == SL_PAT_NEIGHBORHOOD ? n_nb++ : -1;
    for (int t = 0; t < n_terms && !s; t++)
        s = prepare(ctx, &tp[t], &terms[t], heads, n_k);
    if (!s) {
        sl__mgeom g = sl__mgeom_make(n_q, n_k, bq, bk);
        size_t blk = ((size_t)bq * (size_t)bk + 15) / 16 * 16;
        pat_job job = {&g, tp, n_terms, blk, nb_slot};
        s = sl__mask_build(ctx, FN, heads, &g, pattern_row, &job, pat_scratch(&job, n_nb), out);
    }
    sl_ctx_dealloc(ctx, nb_slot, slot_bytes);
    for (int t = 0; t < n_terms; t++)
        tp_free(ctx, &tp[t]);
    sl_ctx_dealloc(ctx, tp, tp_bytes);
    return s;
}

sl_status sl_mask_from_pattern(sl_ctx *ctx, const sl_pattern_term *terms, int n_terms, int64_t n_q, int64_t n_k,
                               int bq, int bk, sl_mask *out)
{
    return sl_mask_from_pattern_heads(ctx, terms, n_terms, 1, n_q, n_k, bq, bk, out);
}
