/* test_patterns.c — Check suite for the mask patterns and the mask algebra
 * (core/mask_pattern.c, mask_algebra.c, mask_convert.c): every pattern kind
 * at ragged sizes and block sizes against a brute-force predicate written
 * here from the cards' definitions (sparselab.h's pattern table; NATTEN's
 * flex mask for neighborhood), densities against brute counts, the algebra
 * laws pair by pair (union / intersect / difference, permute and its
 * inverse, the causal test on original positions, assign, resize, coarsen,
 * align), index ↔ block ↔ bits round trips, argument errors, leak checks
 * and failure of every allocation. */
#include "testutil.h"

#include <limits.h>

/* ck_assert records its location on every pass; loops over many pairs check
 * this way instead. */
#define CHECK(cond, ...)               \
    do {                               \
        if (!(cond))                   \
            ck_abort_msg(__VA_ARGS__); \
    } while (0)

#define N_OF(a) (int)(sizeof(a) / sizeof((a)[0]))

static int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

/* ---- truths: dense bits [heads, n_q, n_k] -------------------------------------------- */

typedef struct truth { int heads; int64_t n_q, n_k; uint8_t *v; } truth;

static truth truth_new(int heads, int64_t n_q, int64_t n_k)
{
    truth t = {heads, n_q, n_k, calloc((size_t)(heads * n_q * n_k) + 1, 1)};
    ck_assert_ptr_nonnull(t.v);
    return t;
}
static void truth_free(truth *t) { free(t->v); }
static uint8_t *at(const truth *t, int h, int64_t r, int64_t j) { return t->v + ((int64_t)h * t->n_q + r) * t->n_k + j; }
/* A one-head truth read for any head (broadcast). */
static int tget(const truth *t, int h, int64_t r, int64_t j) { return *at(t, t->heads == 1 ? 0 : h, r, j); }

static double causal_pairs(int64_t n_q, int64_t n_k)
{
    double total = 0;
    for (int64_t r = 0; r < n_q; r++)
        total += (double)(n_k - n_q + r + 1 < n_k ? n_k - n_q + r + 1 : n_k);
    return total;
}

/* The mask equals the truth pair by pair, its arrays are canonical (sorted,
 * listed blocks non-empty, -1 exactly for full blocks, bits zero outside the
 * clipped area), and its kept counts and densities match. */
static void check_mask(sl_ctx *ctx, const sl_mask *m, const truth *t, const char *what)
{
    ck_assert_msg(sl_mask_validate(ctx, m) == SL_OK, "%s: validate: %s", what, sl_ctx_error(ctx));
    ck_assert_msg(m->n_heads == t->heads, "%s: %d heads, want %d", what, m->n_heads, t->heads);
    ck_assert_msg(m->n_q == t->n_q && m->n_k == t->n_k, "%s: sizes", what);
    int64_t all = 0;
    for (int h = 0; h < t->heads; h++) {
        int64_t kept = 0;
        for (int64_t r = 0; r < t->n_q; r++)
            for (int64_t j = 0; j < t->n_k; j++) {
                int want = *at(t, h, r, j), got = sl_mask_get(m, h, r, j);
                CHECK(want == got, "%s: head %d row %lld key %lld: mask %d, brute force %d", what, h, (long long)r,
                      (long long)j, got, want);
                kept += want;
            }
        CHECK(sl_mask_kept(m, h) == kept, "%s: head %d keeps %lld, brute force %lld", what, h,
              (long long)sl_mask_kept(m, h), (long long)kept);
        all += kept;
    }
    double cp = causal_pairs(t->n_q, t->n_k) * t->heads, ap = (double)t->n_q * (double)t->n_k * t->heads;
    double dc = cp > 0 ? (double)all / cp : 0, da = ap > 0 ? (double)all / ap : 0;
    CHECK(fabs(sl_mask_density(m, 1) - dc) <= 1e-12 * fmax(1, dc), "%s: causal density %.15g, brute %.15g", what,
          sl_mask_density(m, 1), dc);
    CHECK(fabs(sl_mask_density(m, 0) - da) <= 1e-12 * fmax(1, da), "%s: density %.15g, brute %.15g", what,
          sl_mask_density(m, 0), da);
    const int32_t *rp = m->row_ptr.data, *col = m->col_idx.data, *part = m->part.data;
    int64_t bq = m->bq, bk = m->bk;
    for (int h = 0; h < m->n_heads; h++)
        for (int64_t r = 0; r < m->n_qb; r++) {
            const int32_t *hr = rp + h * (m->n_qb + 1);
            int64_t rows = t->n_q - r * bq < bq ? t->n_q - r * bq : bq;
            for (int32_t e = hr[r]; e < hr[r + 1]; e++) {
                int64_t c = col[e], cols = t->n_k - c * bk < bk ? t->n_k - c * bk : bk, kept = 0;
                for (int64_t a = 0; a < rows; a++)
                    for (int64_t b = 0; b < cols; b++)
                        kept += *at(t, h, r * bq + a, c * bk + b);
                CHECK(kept > 0, "%s: head %d block (%lld, %lld) listed but empty", what, h, (long long)r, (long long)c);
                CHECK((part[e] == -1) == (kept == rows * cols), "%s: head %d block (%lld, %lld): part %d, kept %lld of %lld",
                      what, h, (long long)r, (long long)c, part[e], (long long)kept, (long long)(rows * cols));
                if (part[e] < 0)
                    continue;
                const uint8_t *blk = (const uint8_t *)m->bits.data + (size_t)part[e] * (size_t)(bq * bk);
                for (int64_t a = 0; a < bq; a++)
                    for (int64_t b = 0; b < bk; b++)
                        CHECK(blk[a * bk + b] == (a < rows && b < cols ? *at(t, h, r * bq + a, c * bk + b) : 0),
                              "%s: bits of head %d block (%lld, %lld) at (%lld, %lld)", what, h, (long long)r,
                              (long long)c, (long long)a, (long long)b);
            }
        }
}

/* Canonical masks of equal pairs have equal arrays. */
static void assert_same_arrays(const sl_mask *a, const sl_mask *b, const char *what)
{
    ck_assert_msg(a->n_heads == b->n_heads && a->n_qb == b->n_qb && a->bq == b->bq && a->bk == b->bk, "%s: geometry",
                  what);
    const sl_tensor *ta[4] = {&a->row_ptr, &a->col_idx, &a->part, &a->bits}, *tb[4] = {&b->row_ptr, &b->col_idx, &b->part,
                                                                                      &b->bits};
    for (int i = 0; i < 4; i++) {
        ck_assert_msg(sl_tensor_nbytes(ta[i]) == sl_tensor_nbytes(tb[i]), "%s: array %d sizes %zu and %zu", what, i,
                      sl_tensor_nbytes(ta[i]), sl_tensor_nbytes(tb[i]));
        ck_assert_msg(memcmp(ta[i]->data, tb[i]->data, sl_tensor_nbytes(ta[i])) == 0, "%s: array %d differs", what, i);
    }
}

/* ---- the brute force, from the definitions --------------------------------------------- */

static void list_of(const sl_pattern_term *t, int h, const int64_t **p, int64_t *n)
{
    if (t->idx_ptr) {
        int l = t->n_lists > 1 ? h : 0;
        *p = t->idx + t->idx_ptr[l];
        *n = t->idx_ptr[l + 1] - t->idx_ptr[l];
    } else {
        *p = t->idx;
        *n = t->n_idx;
    }
}

static int in_list(const sl_pattern_term *t, int h, int64_t x)
{
    const int64_t *p;
    int64_t n;
    list_of(t, h, &p, &n);
    for (int64_t i = 0; i < n; i++)
        if (p[i] == x)
            return 1;
    return 0;
}

/* Segment of position x: the number of starts <= x; and the start of segment s. */
static int64_t seg_of(const sl_pattern_term *t, int h, int64_t x)
{
    const int64_t *p;
    int64_t n, s = 0;
    list_of(t, h, &p, &n);
    for (int64_t i = 0; i < n; i++)
        s += p[i] <= x;
    return s;
}
static int64_t seg_start(const sl_pattern_term *t, int h, int64_t s)
{
    const int64_t *p;
    int64_t n;
    list_of(t, h, &p, &n);
    return s == 0 ? 0 : p[s - 1];
}

static int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
static int64_t imax(int64_t a, int64_t b) { return a > b ? a : b; }

/* NATTEN's single_dim_tiling_mask (src/natten/backends/flex.py), per pair. */
static int natten_keeps(const sl_pattern_term *t, int64_t n_k, int64_t qi, int64_t kj)
{
    int nd = t->n_dims;
    int64_t X[3], prod = 1, qc[3], kc[3];
    for (int d = 0; d < nd; d++) {
        X[d] = nd == 1 && t->grid[0] == 0 ? n_k : t->grid[d];
        prod *= X[d];
    }
    if (qi >= prod || kj >= prod)
        return 0;
    for (int d = nd - 1; d >= 0; d--) {
        qc[d] = qi % X[d];
        qi /= X[d];
        kc[d] = kj % X[d];
        kj /= X[d];
    }
    for (int d = 0; d < nd; d++) {
        int64_t k = t->kernel[d], s = t->stride[d] ? t->stride[d] : 1, dil = t->dilation[d] ? t->dilation[d] : 1;
        int64_t qdi = qc[d] / dil, kdi = kc[d] / dil, qg = qc[d] % dil, kg = kc[d] % dil;
        int64_t pad = 1 - ((qg + (dil - (X[d] % dil))) / dil), Xc = X[d] / dil + pad;
        if (qg != kg)
            return 0;
        int ok;
        if (t->dim_causal[d]) {
            int64_t leader = imin((qdi / s) * s + s - 1, Xc - 1);
            ok = qdi - kdi >= 0 && leader - kdi < k;
        } else {
            int64_t leader = imin((qdi / s) * s + s / 2, Xc - 1), left = k / 2, right = k / 2 + (k % 2 - 1);
            int64_t center = imin(imax(leader, left), Xc - 1 - right); /* torch.clamp: max wins */
            int64_t w0 = center - kdi, w1 = kdi - center;
            ok = (0 <= w0 && w0 <= left) || (0 <= w1 && w1 <= right);
        }
        if (!ok)
            return 0;
    }
    return 1;
}

/* Whether term t keeps (query position i, key j) for head h. */
static int bf_keeps(const sl_pattern_term *t, int h, int64_t n_k, int64_t i, int64_t j)
{
    int64_t u = t->unit > 1 ? t->unit : 1, I = i / u, J = j / u;
    int causal = t->causal == 1 || (t->causal == 0 && t->kind != SL_PAT_FULL && t->kind != SL_PAT_NEIGHBORHOOD);
    if (causal && j > i)
        return 0;
    switch (t->kind) {
    case SL_PAT_FULL:
    case SL_PAT_CAUSAL: return 1;
    case SL_PAT_WINDOW: {
        int64_t r = t->b ? t->b : 1, d = I - J;
        return d >= 0 && d < t->a * r && d % r == 0;
    }
    case SL_PAT_SINK: return J < t->a;
    case SL_PAT_STRIDED: {
        int64_t o = t->idx ? t->idx[h] : t->offset + h * t->head_step, v = (t->b ? I - J : J) + o;
        return ((v % t->a) + t->a) % t->a == 0;
    }
    case SL_PAT_BLOCK_DIAG: return i / t->a == j / t->a;
    case SL_PAT_POWER: {
        int64_t d = I - J;
        return d >= 0 && (d & (d - 1)) == 0;
    }
    case SL_PAT_TRIANGLE: {
        int64_t last = imin(t->c, n_k - 1);
        return j < t->a || (i - j >= 0 && i - j < t->b) || i >= n_k - last;
    }
    case SL_PAT_NEIGHBORHOOD: return natten_keeps(t, n_k, i, j);
    case SL_PAT_DOCUMENT: {
        int64_t d = seg_of(t, h, i) - seg_of(t, h, j);
        return d >= 0 && d <= t->b;
    }
    case SL_PAT_SEGMENT_SINK: return j - seg_start(t, h, seg_of(t, h, j)) < t->a;
    case SL_PAT_GLOBAL_TOKENS: return in_list(t, h, i) || in_list(t, h, j);
    case SL_PAT_DENSE_ROWS: return in_list(t, h, i) || i < t->b || i >= n_k - t->a;
    case SL_PAT_DENSE_COLS: return in_list(t, h, j) || j < t->b || j >= n_k - t->a;
    case SL_PAT_VERTICAL: return in_list(t, h, j);
    case SL_PAT_SLASH: {
        const int64_t *p;
        int64_t n, w = t->a ? t->a : 1;
        list_of(t, h, &p, &n);
        for (int64_t x = 0; x < n; x++)
            if (i - j >= p[x] && i - j < p[x] + w)
                return 1;
        return 0;
    }
    case SL_PAT_DROP: {
        int64_t hh = t->a == 1 ? 0 : h;
        return sl_mask_drop_draw(t->seed, hh, 1, i) >= t->q_rate && sl_mask_drop_draw(t->seed, hh, 0, j) >= t->rate;
    }
    default: return 0;
    }
}

static truth truth_of(const sl_pattern_term *terms, int n, int heads, int64_t n_q, int64_t n_k)
{
    int dep = 0;
    for (int k = 0; k < n; k++)
        dep |= sl_pattern_head_dependent(&terms[k]);
    truth t = truth_new(dep ? heads : 1, n_q, n_k);
    for (int h = 0; h < t.heads; h++)
        for (int64_t r = 0; r < n_q; r++)
            for (int64_t j = 0; j < n_k; j++)
                for (int k = 0; k < n && !*at(&t, h, r, j); k++)
                    *at(&t, h, r, j) = (uint8_t)bf_keeps(&terms[k], h, n_k, n_k - n_q + r, j);
    return t;
}

/* ---- sizes -------------------------------------------------------------------------------- */

typedef struct geom { int64_t n_q, n_k; int bq, bk; } geom;

static const geom GEOMS[] = {
    {37, 37, 8, 8},  {37, 37, 8, 16}, {37, 37, 16, 8}, {50, 50, 1, 7}, {50, 50, 7, 1},  {1, 1, 1, 1},
    {1, 60, 4, 8},   {5, 77, 4, 16},  {64, 64, 16, 16}, {33, 70, 5, 3}, {20, 20, 32, 32}, {40, 41, 3, 5},
    {0, 12, 4, 4},
};
#define N_GEOMS N_OF(GEOMS)

/* A pattern with the lists its terms point into (never copied). */
typedef struct tpat {
    int n;
    sl_pattern_term t[4];
    int64_t lists[4][96];
    int64_t ptrs[4][8];
} tpat;

static uint64_t rnd(sl_rng *r, uint64_t n) { return n ? sl_rng_next(r) % n : 0; }

/* Random sorted distinct positions in [lo, n) (at most max of them) into out. */
static int64_t rand_positions(sl_rng *r, int64_t lo, int64_t n, int64_t max, int64_t *out)
{
    int64_t k = 0;
    for (int64_t p = lo; p < n && k < max; p++)
        if (rnd(r, 100) < 12)
            out[k++] = p;
    return k;
}

/* One random term of kind into slot k of p, valid for n_k and heads. */
static void rand_term(sl_rng *r, tpat *p, int k, sl_pattern_kind kind, int64_t n_k, int heads)
{
    sl_pattern_term *t = &p->t[k];
    int64_t *l = p->lists[k], *ptr = p->ptrs[k];
    memset(t, 0, sizeof *t);
    t->kind = kind;
    int64_t span = n_k + 2;
    if (rnd(r, 4) == 0)
        t->causal = rnd(r, 2) ? -1 : 1;
    /* Per-head lists for list kinds, on a coin flip. */
    int per_head = heads > 1 && rnd(r, 2);
    switch (kind) {
    case SL_PAT_WINDOW:
        t->a = 1 + (int64_t)rnd(r, (uint64_t)span);
        t->b = (int64_t)rnd(r, 4);
        t->unit = rnd(r, 3) == 0 ? 1 + (int64_t)rnd(r, 9) : 0;
        break;
    case SL_PAT_SINK:
        t->a = (int64_t)rnd(r, (uint64_t)span);
        t->unit = rnd(r, 3) == 0 ? 1 + (int64_t)rnd(r, 9) : 0;
        break;
    case SL_PAT_STRIDED:
        t->a = 1 + (int64_t)rnd(r, 6);
        t->b = (int64_t)rnd(r, 2);
        t->offset = (int64_t)rnd(r, 7) - 3;
        t->unit = rnd(r, 2) ? 1 + (int64_t)rnd(r, 9) : 0;
        if (heads > 1 && rnd(r, 3) == 0) {
            for (int h = 0; h < heads; h++)
                l[h] = (int64_t)rnd(r, 9) - 2;
            t->idx = l;
            t->n_idx = heads;
        } else
            t->head_step = (int64_t)rnd(r, 3);
        break;
    case SL_PAT_BLOCK_DIAG: t->a = 1 + (int64_t)rnd(r, (uint64_t)span); break;
    case SL_PAT_POWER: t->unit = (int64_t)rnd(r, 6); break;
    case SL_PAT_TRIANGLE:
        t->a = (int64_t)rnd(r, 6);
        t->b = (int64_t)rnd(r, (uint64_t)span);
        t->c = (int64_t)rnd(r, (uint64_t)span);
        break;
    case SL_PAT_NEIGHBORHOOD: {
        int nd = 1 + (int)rnd(r, 3);
        int64_t g[3] = {0, 0, 0};
        if (nd == 1)
            g[0] = rnd(r, 2) ? 0 : 1 + (int64_t)rnd(r, (uint64_t)n_k);
        else if (nd == 2) {
            g[0] = 1 + (int64_t)rnd(r, 4);
            g[1] = n_k / g[0] > 0 ? 1 + (int64_t)rnd(r, (uint64_t)(n_k / g[0])) : 0;
        } else {
            g[0] = 1 + (int64_t)rnd(r, 3);
            g[1] = 1 + (int64_t)rnd(r, 3);
            g[2] = n_k / (g[0] * g[1]) > 0 ? 1 + (int64_t)rnd(r, (uint64_t)(n_k / (g[0] * g[1]))) : 0;
        }
        if ((nd == 2 && g[1] == 0) || (nd == 3 && g[2] == 0) || (nd == 1 && g[0] == 0 && n_k == 0)) {
            nd = 1;
            g[0] = n_k > 0 ? 1 + (int64_t)rnd(r, (uint64_t)n_k) : 0;
            if (g[0] == 0) {
                t->kind = SL_PAT_CAUSAL;
                break;
            }
        }
        t->n_dims = nd;
        for (int d = 0; d < nd; d++) {
            int64_t X = g[d] ? g[d] : n_k;
            t->grid[d] = g[d];
            t->kernel[d] = 1 + (int64_t)rnd(r, (uint64_t)X + 1);
            t->stride[d] = (int64_t)rnd(r, (uint64_t)t->kernel[d] + 1);
            t->dilation[d] = rnd(r, 3) == 0 ? (int64_t)rnd(r, 4) : 0;
            t->dim_causal[d] = (int)rnd(r, 2);
        }
        break;
    }
    case SL_PAT_DOCUMENT:
    case SL_PAT_SEGMENT_SINK:
    case SL_PAT_GLOBAL_TOKENS:
    case SL_PAT_DENSE_ROWS:
    case SL_PAT_DENSE_COLS:
    case SL_PAT_VERTICAL:
    case SL_PAT_SLASH: {
        int lists = per_head ? heads : 1;
        int64_t used = 0;
        ptr[0] = 0;
        for (int h = 0; h < lists; h++) {
            if (kind == SL_PAT_SLASH) {
                int64_t n = (int64_t)rnd(r, 6);
                for (int64_t x = 0; x < n; x++)
                    l[used + x] = (int64_t)rnd(r, (uint64_t)n_k + 6) - 3;
                used += n;
            } else
                used += rand_positions(r, 0, n_k, 90 / lists, l + used);
            ptr[h + 1] = used;
        }
        t->idx = l;
        t->n_idx = used;
        if (per_head) {
            t->idx_ptr = ptr;
            t->n_lists = heads;
        }
        if (kind == SL_PAT_DOCUMENT)
            t->b = (int64_t)rnd(r, 3);
        if (kind == SL_PAT_SEGMENT_SINK)
            t->a = (int64_t)rnd(r, 4);
        if (kind == SL_PAT_DENSE_ROWS || kind == SL_PAT_DENSE_COLS) {
            t->a = (int64_t)rnd(r, 4);
            t->b = (int64_t)rnd(r, 4);
        }
        if (kind == SL_PAT_SLASH)
            t->a = (int64_t)rnd(r, 4);
        break;
    }
    case SL_PAT_DROP:
        t->rate = rnd(r, 4) / 3.0;
        t->q_rate = rnd(r, 3) / 4.0;
        t->seed = sl_rng_next(r);
        t->a = (int64_t)rnd(r, 2);
        break;
    default: break;
    }
}

static void describe(const sl_pattern_term *t, int n, char *buf, size_t size)
{
    size_t used = 0;
    buf[0] = '\0';
    for (int k = 0; k < n && used < size; k++)
        used += (size_t)snprintf(buf + used, size - used, "%s%s(a%lld b%lld c%lld u%lld causal%d n_idx%lld nd%d)",
                                 k ? " | " : "", sl_pattern_name(t[k].kind), (long long)t[k].a, (long long)t[k].b,
                                 (long long)t[k].c, (long long)t[k].unit, t[k].causal, (long long)t[k].n_idx, t[k].n_dims);
}

/* Materialises terms at g for `heads` heads and checks against the brute force. */
static void check_terms(sl_ctx *ctx, const sl_pattern_term *terms, int n, int heads, const geom *g)
{
    char what[512], desc[400];
    describe(terms, n, desc, sizeof desc);
    snprintf(what, sizeof what, "[%s] heads %d at n_q %lld n_k %lld bq %d bk %d", desc, heads, (long long)g->n_q,
             (long long)g->n_k, g->bq, g->bk);
    sl_mask m;
    sl_status s = sl_mask_from_pattern_heads(ctx, terms, n, heads, g->n_q, g->n_k, g->bq, g->bk, &m);
    ck_assert_msg(s == SL_OK, "%s: %s", what, sl_ctx_error(ctx));
    truth t = truth_of(terms, n, heads, g->n_q, g->n_k);
    check_mask(ctx, &m, &t, what);
    truth_free(&t);
    sl_mask_release(&m);
}

/* ---- every pattern kind, alone ------------------------------------------------------------ */

START_TEST(test_each_kind_matches_brute_force)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_pattern_kind kind = (sl_pattern_kind)_i;
    sl_rng_seed(&rng, 100 + (uint64_t)_i);
    for (int gi = 0; gi < N_GEOMS; gi++) {
        const geom *g = &GEOMS[gi];
        int reps = kind == SL_PAT_FULL || kind == SL_PAT_CAUSAL ? 3 : 24;
        for (int rep = 0; rep < reps; rep++) {
            tpat p;
            p.n = 1;
            rand_term(&rng, &p, 0, kind, g->n_k, 3);
            check_terms(ctx, p.t, 1, 3, g);
            /* One head: head 0 of head-dependent rules (lists must then be shared). */
            if (rep < 4 && p.t[0].n_lists <= 1 && !(p.t[0].kind == SL_PAT_STRIDED && p.t[0].idx))
                check_terms(ctx, p.t, 1, 1, g);
        }
    }
    tu_ctx_done(ctx, &al);
}
END_TEST

/* Hand-picked cases from the cards' checks. */
START_TEST(test_card_checks)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_mask m;
    /* streaming_llm: row i keeps min(i+1, n_local) + max(0, min(n_init, i+1-n_local)) keys. */
    sl_pattern_term a_shape[2] = {{.kind = SL_PAT_SINK, .a = 6}, {.kind = SL_PAT_WINDOW, .a = 20}};
    ck_assert_int_eq(sl_mask_from_pattern(ctx, a_shape, 2, 90, 90, 16, 16, &m), SL_OK);
    for (int64_t i = 0; i < 90; i++) {
        int64_t row = 0;
        for (int64_t j = 0; j < 90; j++)
            row += sl_mask_get(&m, 0, i, j);
        ck_assert_int_eq(row, imin(i + 1, 20) + imax(0, imin(6, i + 1 - 20)));
    }
    sl_mask_release(&m);
    /* power_attention token form: row i is {i} ∪ {i - 2^k >= 0}. */
    sl_pattern_term pw = {.kind = SL_PAT_POWER};
    ck_assert_int_eq(sl_mask_from_pattern(ctx, &pw, 1, 200, 200, 16, 16, &m), SL_OK);
    for (int64_t i = 0; i < 200; i++) {
        int64_t row = 0, want = 1;
        for (int64_t d = 1; d <= i; d <<= 1)
            want++;
        for (int64_t j = 0; j < 200; j++)
            row += sl_mask_get(&m, 0, i, j);
        ck_assert_int_eq(row, want);
    }
    sl_mask_release(&m);
    /* triangle_mix: the last n_last rows are dense causal; n_last >= n means dense. */
    sl_pattern_term tri = {.kind = SL_PAT_TRIANGLE, .a = 2, .b = 5, .c = 7};
    ck_assert_int_eq(sl_mask_from_pattern(ctx, &tri, 1, 60, 60, 8, 8, &m), SL_OK);
    for (int64_t i = 53; i < 60; i++)
        for (int64_t j = 0; j < 60; j++)
            ck_assert_int_eq(sl_mask_get(&m, 0, i, j), j <= i);
    sl_mask_release(&m);
    tri.c = 1000;
    ck_assert_int_eq(sl_mask_from_pattern(ctx, &tri, 1, 60, 60, 8, 8, &m), SL_OK);
    ck_assert_double_eq_tol(sl_mask_density(&m, 1), 1.0, 1e-15);
    sl_mask_release(&m);
    /* neighborhood: k = X with s = 1 is dense; non-causal, non-dilated rows keep prod(k) keys. */
    sl_pattern_term nb = {.kind = SL_PAT_NEIGHBORHOOD, .n_dims = 2, .grid = {6, 7}, .kernel = {6, 7}};
    ck_assert_int_eq(sl_mask_from_pattern(ctx, &nb, 1, 42, 42, 8, 8, &m), SL_OK);
    ck_assert_double_eq_tol(sl_mask_density(&m, 0), 1.0, 1e-15);
    sl_mask_release(&m);
    sl_pattern_term nb3 = {.kind = SL_PAT_NEIGHBORHOOD, .n_dims = 3, .grid = {4, 5, 6}, .kernel = {3, 2, 5}, .stride = {1, 2, 3}};
    ck_assert_int_eq(sl_mask_from_pattern(ctx, &nb3, 1, 120, 120, 16, 16, &m), SL_OK);
    for (int64_t i = 0; i < 120; i++) {
        int64_t row = 0;
        for (int64_t j = 0; j < 120; j++)
            row += sl_mask_get(&m, 0, i, j);
        ck_assert_int_eq(row, 3 * 2 * 5);
    }
    sl_mask_release(&m);
    /* s2_attention: with stride 4 and head_step 1, the strided shards of 4 heads cover every key block. */
    sl_pattern_term st = {.kind = SL_PAT_STRIDED, .a = 4, .unit = 8, .head_step = 1, .causal = -1};
    ck_assert_int_eq(sl_mask_from_pattern_heads(ctx, &st, 1, 4, 64, 64, 8, 8, &m), SL_OK);
    ck_assert_int_eq(m.n_heads, 4);
    for (int64_t j = 0; j < 64; j++) {
        int covered = 0;
        for (int h = 0; h < 4; h++)
            covered += sl_mask_get(&m, h, 0, j);
        ck_assert_int_eq(covered, 1);
    }
    sl_mask_release(&m);
    /* drop: about rate of the keys go, and a draw is a pure function of its inputs. */
    sl_pattern_term dr = {.kind = SL_PAT_DROP, .rate = 0.3, .seed = 7, .causal = -1};
    ck_assert_int_eq(sl_mask_from_pattern(ctx, &dr, 1, 1, 4000, 16, 64, &m), SL_OK);
    ck_assert_double_eq_tol(sl_mask_density(&m, 0), 0.7, 0.03);
    ck_assert(sl_mask_drop_draw(7, 0, 0, 5) == sl_mask_drop_draw(7, 0, 0, 5));
    ck_assert(sl_mask_drop_draw(7, 0, 0, 5) != sl_mask_drop_draw(7, 1, 0, 5));
    sl_mask_release(&m);
    /* blindsight: one segment: the document mask is dense causal. */
    int64_t seg0[1] = {0};
    sl_pattern_term doc = {.kind = SL_PAT_DOCUMENT, .idx = seg0, .n_idx = 1};
    ck_assert_int_eq(sl_mask_from_pattern(ctx, &doc, 1, 30, 30, 8, 8, &m), SL_OK);
    ck_assert_double_eq_tol(sl_mask_density(&m, 1), 1.0, 1e-15);
    sl_mask_release(&m);
    /* n = 16384 with 64 x 64 blocks: window ∪ sink has its analytic density. */
    sl_pattern_term ws[2] = {{.kind = SL_PAT_WINDOW, .a = 1024}, {.kind = SL_PAT_SINK, .a = 64}};
    int64_t n = 16384;
    ck_assert_int_eq(sl_mask_from_pattern(ctx, ws, 2, n, n, 64, 64, &m), SL_OK);
    double kept = 0;
    for (int64_t i = 0; i < n; i++)
        kept += (double)(imin(i + 1, 1024) + imax(0, imin(64, i + 1 - 1024)));
    ck_assert_double_eq_tol(sl_mask_density(&m, 1), kept / causal_pairs(n, n), 1e-12);
    sl_mask_release(&m);
    for (int k = 0; k < SL_PAT__COUNT; k++)
        ck_assert_int_eq(sl_pattern_from_name(sl_pattern_name((sl_pattern_kind)k)), k);
    ck_assert_int_eq(sl_pattern_from_name("nope"), -1);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* Unions of random terms of every kind, several heads, threads on larger sizes. */
START_TEST(test_random_unions)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 500 + (uint64_t)_i);
    const geom big[] = {{150, 150, 4, 4}, {97, 260, 2, 8}};
    for (int rep = 0; rep < 60; rep++) {
        const geom *g = rep < 50 ? &GEOMS[rep % N_GEOMS] : &big[rep % 2];
        tpat p;
        p.n = 1 + (int)rnd(&rng, 4);
        for (int k = 0; k < p.n; k++)
            rand_term(&rng, &p, k, (sl_pattern_kind)rnd(&rng, SL_PAT__COUNT), g->n_k, 3);
        check_terms(ctx, p.t, p.n, 3, g);
    }
    tu_ctx_done(ctx, &al);
}
END_TEST

/* Unions of sink and window terms only (issue 20, session 5): each row of
 * blocks visits only the key blocks these terms bound (key_spans in
 * mask_pattern.c), spans overlapping or apart; against brute force on
 * every geometry and two long causal ones. */
START_TEST(test_sink_window_spans)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 900);
    const geom big[] = {{300, 300, 16, 16}, {120, 333, 8, 32}};
    for (int rep = 0; rep < 80; rep++) {
        const geom *g = rep < 2 * N_GEOMS ? &GEOMS[rep % N_GEOMS] : &big[rep % 2];
        tpat p;
        p.n = 1 + (int)rnd(&rng, 4);
        for (int k = 0; k < p.n; k++)
            rand_term(&rng, &p, k, rnd(&rng, 2) ? SL_PAT_SINK : SL_PAT_WINDOW, g->n_k, 3);
        check_terms(ctx, p.t, p.n, 3, g);
    }
    tu_ctx_done(ctx, &al);
}
END_TEST

/* ---- random masks for the algebra -------------------------------------------------------- */

/* A random truth with empty, full and partial blocks of (bq, bk). */
static truth rand_truth(sl_rng *r, int heads, int64_t n_q, int64_t n_k, int bq, int bk)
{
    truth t = truth_new(heads, n_q, n_k);
    for (int h = 0; h < heads; h++)
        for (int64_t rb = 0; rb < cdiv(n_q, bq); rb++)
            for (int64_t cb = 0; cb < cdiv(n_k, bk); cb++) {
                double u = sl_rng_uniform(r), pr = u < 0.4 ? 0 : u < 0.6 ? 1 : 0.4;
                for (int64_t a = rb * bq; a < (rb + 1) * bq && a < n_q; a++)
                    for (int64_t b = cb * bk; b < (cb + 1) * bk && b < n_k; b++)
                        *at(&t, h, a, b) = (uint8_t)(sl_rng_uniform(r) < pr);
            }
    return t;
}

static sl_tensor bits_of(sl_ctx *ctx, const truth *t)
{
    sl_tensor b;
    int64_t shape[3] = {t->heads, t->n_q, t->n_k};
    ck_assert_int_eq(sl_tensor_new(ctx, SL_U8, 3, shape, &b), SL_OK);
    memcpy(b.data, t->v, (size_t)(t->heads * t->n_q * t->n_k));
    return b;
}

static void mask_of(sl_ctx *ctx, const truth *t, int bq, int bk, sl_mask *m)
{
    sl_tensor b = bits_of(ctx, t);
    ck_assert_msg(sl_mask_from_bits(ctx, &b, bq, bk, m) == SL_OK, "from_bits: %s", sl_ctx_error(ctx));
    sl_tensor_release(&b);
}

START_TEST(test_bits_round_trip)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 900);
    for (int gi = 0; gi < N_GEOMS; gi++) {
        const geom *g = &GEOMS[gi];
        truth t = rand_truth(&rng, 1 + gi % 3, g->n_q, g->n_k, g->bq, g->bk);
        sl_mask m;
        mask_of(ctx, &t, g->bq, g->bk, &m);
        check_mask(ctx, &m, &t, "from_bits");
        sl_tensor b;
        ck_assert_int_eq(sl_mask_to_bits(ctx, &m, &b), SL_OK);
        ck_assert_int_eq(b.ndim, 3);
        ck_assert(memcmp(b.data, t.v, (size_t)(t.heads * t.n_q * t.n_k)) == 0);
        /* A 2-D view (one head) and values other than 1 count as kept. */
        if (t.heads == 1 && g->n_q > 0) {
            sl_tensor v2 = {0};
            int64_t shape[2] = {g->n_q, g->n_k};
            ck_assert_int_eq(sl_tensor_new(ctx, SL_U8, 2, shape, &v2), SL_OK);
            for (int64_t i = 0; i < g->n_q * g->n_k; i++)
                ((uint8_t *)v2.data)[i] = (uint8_t)(t.v[i] * 7);
            sl_mask m2;
            ck_assert_int_eq(sl_mask_from_bits(ctx, &v2, g->bq, g->bk, &m2), SL_OK);
            assert_same_arrays(&m, &m2, "2-D bits");
            sl_mask_release(&m2);
            sl_tensor_release(&v2);
        }
        sl_tensor_release(&b);
        sl_mask_release(&m);
        truth_free(&t);
    }
    tu_ctx_done(ctx, &al);
}
END_TEST

START_TEST(test_set_operations)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 1000);
    const int head_pairs[][2] = {{1, 1}, {3, 3}, {1, 3}, {3, 1}};
    for (int gi = 0; gi < N_GEOMS; gi++)
        for (int hp = 0; hp < 4; hp++) {
            const geom *g = &GEOMS[gi];
            truth ta = rand_truth(&rng, head_pairs[hp][0], g->n_q, g->n_k, g->bq, g->bk);
            truth tb = rand_truth(&rng, head_pairs[hp][1], g->n_q, g->n_k, g->bq, g->bk);
            sl_mask a, b, out;
            mask_of(ctx, &ta, g->bq, g->bk, &a);
            mask_of(ctx, &tb, g->bq, g->bk, &b);
            int heads = ta.heads > tb.heads ? ta.heads : tb.heads;
            for (int op = 0; op < 3; op++) {
                truth want = truth_new(heads, g->n_q, g->n_k);
                for (int h = 0; h < heads; h++)
                    for (int64_t r = 0; r < g->n_q; r++)
                        for (int64_t j = 0; j < g->n_k; j++) {
                            int x = tget(&ta, h, r, j), y = tget(&tb, h, r, j);
                            *at(&want, h, r, j) = (uint8_t)(op == 0 ? x | y : op == 1 ? x & y : x & !y);
                        }
                sl_status s = op == 0   ? sl_mask_union(ctx, &a, &b, &out)
                              : op == 1 ? sl_mask_intersect(ctx, &a, &b, &out)
                                        : sl_mask_difference(ctx, &a, &b, &out);
                ck_assert_msg(s == SL_OK, "%s", sl_ctx_error(ctx));
                check_mask(ctx, &out, &want, op == 0 ? "union" : op == 1 ? "intersect" : "difference");
                sl_mask_release(&out);
                truth_free(&want);
            }
            /* Laws: a ∪ ∅ = a, a ∩ full = a, a ∖ ∅ = a (identical arrays), a ∖ a = ∅. */
            sl_mask empty, full;
            sl_pattern_term f = {.kind = SL_PAT_FULL};
            ck_assert_int_eq(sl_mask_from_pattern(ctx, NULL, 0, g->n_q, g->n_k, g->bq, g->bk, &empty), SL_OK);
            ck_assert_int_eq(sl_mask_from_pattern(ctx, &f, 1, g->n_q, g->n_k, g->bq, g->bk, &full), SL_OK);
            ck_assert_int_eq(sl_mask_union(ctx, &a, &empty, &out), SL_OK);
            assert_same_arrays(&a, &out, "a + empty");
            sl_mask_release(&out);
            ck_assert_int_eq(sl_mask_union(ctx, &empty, &a, &out), SL_OK);
            assert_same_arrays(&a, &out, "empty + a");
            sl_mask_release(&out);
            ck_assert_int_eq(sl_mask_intersect(ctx, &a, &full, &out), SL_OK);
            assert_same_arrays(&a, &out, "a * full");
            sl_mask_release(&out);
            ck_assert_int_eq(sl_mask_difference(ctx, &a, &empty, &out), SL_OK);
            assert_same_arrays(&a, &out, "a - empty");
            sl_mask_release(&out);
            ck_assert_int_eq(sl_mask_difference(ctx, &a, &a, &out), SL_OK);
            ck_assert_int_eq((int)out.col_idx.shape[0], 0);
            sl_mask_release(&out);
            sl_mask_release(&empty);
            sl_mask_release(&full);
            sl_mask_release(&a);
            sl_mask_release(&b);
            truth_free(&ta);
            truth_free(&tb);
        }
    tu_ctx_done(ctx, &al);
}
END_TEST

START_TEST(test_assign)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 1100);
    const geom *g = &GEOMS[_i % N_GEOMS];
    truth t1 = rand_truth(&rng, 1, g->n_q, g->n_k, g->bq, g->bk), t3 = rand_truth(&rng, 3, g->n_q, g->n_k, g->bq, g->bk);
    sl_mask ms[3], out;
    mask_of(ctx, &t1, g->bq, g->bk, &ms[0]);
    mask_of(ctx, &t3, g->bq, g->bk, &ms[1]);
    mask_of(ctx, &t1, g->bq, g->bk, &ms[2]);
    ck_assert_int_eq(sl_mask_assign(ctx, ms, 3, &out), SL_OK);
    truth want = truth_new(5, g->n_q, g->n_k);
    size_t plane = (size_t)(g->n_q * g->n_k);
    memcpy(want.v, t1.v, plane);
    memcpy(want.v + plane, t3.v, 3 * plane);
    memcpy(want.v + 4 * plane, t1.v, plane);
    check_mask(ctx, &out, &want, "assign");
    sl_mask_release(&out);
    for (int i = 0; i < 3; i++)
        sl_mask_release(&ms[i]);
    truth_free(&want);
    truth_free(&t1);
    truth_free(&t3);
    tu_ctx_done(ctx, &al);
}
END_TEST

static void shuffle(sl_rng *r, int64_t *p, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        p[i] = i;
    for (int64_t i = n - 1; i > 0; i--) {
        int64_t j = (int64_t)rnd(r, (uint64_t)i + 1), x = p[i];
        p[i] = p[j];
        p[j] = x;
    }
}

START_TEST(test_permute)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 1200);
    for (int gi = 0; gi < N_GEOMS; gi++) {
        const geom *g = &GEOMS[gi];
        int64_t pq[128], pk[128];
        truth t = rand_truth(&rng, 2, g->n_q, g->n_k, g->bq, g->bk);
        sl_mask m, p, back;
        mask_of(ctx, &t, g->bq, g->bk, &m);
        for (int same = 0; same < 2; same++) {
            if (same && g->n_q != g->n_k)
                continue;
            shuffle(&rng, pq, g->n_q);
            shuffle(&rng, pk, g->n_k);
            const int64_t *k = same ? NULL : pk, *kk = same ? pq : pk;
            ck_assert_msg(sl_mask_permute(ctx, &m, pq, k, &p) == SL_OK, "%s", sl_ctx_error(ctx));
            truth want = truth_new(2, g->n_q, g->n_k);
            for (int h = 0; h < 2; h++)
                for (int64_t r = 0; r < g->n_q; r++)
                    for (int64_t j = 0; j < g->n_k; j++)
                        *at(&want, h, r, j) = *at(&t, h, pq[r], kk[j]);
            check_mask(ctx, &p, &want, "permute");
            /* The causal test on original positions: count by hand. */
            int64_t bad = 0;
            for (int h = 0; h < 2; h++)
                for (int64_t r = 0; r < g->n_q; r++)
                    for (int64_t j = 0; j < g->n_k; j++)
                        bad += *at(&want, h, r, j) && kk[j] > g->n_k - g->n_q + pq[r];
            ck_assert_int_eq(sl_mask_causal_violations(&p, pq, k), bad);
            ck_assert_msg(sl_mask_permute_inverse(ctx, &p, pq, k, &back) == SL_OK, "%s", sl_ctx_error(ctx));
            assert_same_arrays(&m, &back, "permute then inverse");
            sl_mask_release(&back);
            sl_mask_release(&p);
            truth_free(&want);
        }
        sl_mask_release(&m);
        truth_free(&t);
    }
    /* A causal pattern stays causal in original positions under any permutation. */
    sl_pattern_term terms[2] = {{.kind = SL_PAT_WINDOW, .a = 9}, {.kind = SL_PAT_SINK, .a = 3}};
    sl_mask m, p;
    int64_t perm[80];
    shuffle(&rng, perm, 80);
    ck_assert_int_eq(sl_mask_from_pattern(ctx, terms, 2, 80, 80, 8, 8, &m), SL_OK);
    ck_assert_int_eq(sl_mask_causal_violations(&m, NULL, NULL), 0);
    ck_assert_int_eq(sl_mask_permute(ctx, &m, perm, NULL, &p), SL_OK);
    ck_assert_int_eq(sl_mask_causal_violations(&p, perm, NULL), 0);
    ck_assert_int_gt(sl_mask_causal_violations(&p, NULL, NULL), 0); /* in permuted order it looks ahead */
    ck_assert_double_eq_tol(sl_mask_density(&p, 1), sl_mask_density(&m, 1), 1e-15);
    sl_mask_release(&p);
    sl_mask_release(&m);
    tu_ctx_done(ctx, &al);
}
END_TEST

START_TEST(test_resize_and_coarsen)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 1300);
    const int blocks[][2] = {{1, 1}, {3, 5}, {8, 8}, {16, 4}, {64, 64}, {7, 13}};
    for (int gi = 0; gi < N_GEOMS; gi++) {
        const geom *g = &GEOMS[gi];
        truth t = rand_truth(&rng, 2, g->n_q, g->n_k, g->bq, g->bk);
        sl_mask m, r, back;
        mask_of(ctx, &t, g->bq, g->bk, &m);
        for (int bi = 0; bi < N_OF(blocks); bi++) {
            int bq = blocks[bi][0], bk = blocks[bi][1];
            ck_assert_int_eq(sl_mask_resize(ctx, &m, bq, bk, &r), SL_OK);
            ck_assert_int_eq(r.bq, bq);
            check_mask(ctx, &r, &t, "resize");
            ck_assert_int_eq(sl_mask_resize(ctx, &r, g->bq, g->bk, &back), SL_OK);
            assert_same_arrays(&m, &back, "resize there and back");
            sl_mask_release(&back);
            sl_mask_release(&r);
            /* Coarsen: a block is full iff it holds a kept pair. */
            ck_assert_int_eq(sl_mask_coarsen(ctx, &m, bq, bk, &r), SL_OK);
            truth want = truth_new(2, g->n_q, g->n_k);
            for (int h = 0; h < 2; h++)
                for (int64_t rb = 0; rb < cdiv(g->n_q, bq); rb++)
                    for (int64_t cb = 0; cb < cdiv(g->n_k, bk); cb++) {
                        int any = 0;
                        for (int64_t a = rb * bq; a < (rb + 1) * bq && a < g->n_q; a++)
                            for (int64_t b = cb * bk; b < (cb + 1) * bk && b < g->n_k; b++)
                                any |= *at(&t, h, a, b);
                        for (int64_t a = rb * bq; a < (rb + 1) * bq && a < g->n_q; a++)
                            for (int64_t b = cb * bk; b < (cb + 1) * bk && b < g->n_k; b++)
                                *at(&want, h, a, b) = (uint8_t)any;
                    }
            check_mask(ctx, &r, &want, "coarsen");
            ck_assert_int_eq((int)r.bits.shape[0], 0);
            /* Coarsened ⊇ token mask: nothing of m is outside it. */
            sl_mask d, rr;
            ck_assert_int_eq(sl_mask_resize(ctx, &r, g->bq, g->bk, &rr), SL_OK);
            ck_assert_int_eq(sl_mask_difference(ctx, &m, &rr, &d), SL_OK);
            ck_assert_int_eq(sl_mask_kept(&d, 0) + sl_mask_kept(&d, 1), 0);
            sl_mask_release(&d);
            sl_mask_release(&rr);
            sl_mask_release(&r);
            truth_free(&want);
        }
        sl_mask_release(&m);
        truth_free(&t);
    }
    tu_ctx_done(ctx, &al);
}
END_TEST

START_TEST(test_align)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 1400);
    for (int gi = 0; gi < N_GEOMS; gi++) {
        const geom *g = &GEOMS[gi];
        int hs = 1 + gi % 3 / 2 * 2, he = 1 + (gi + 1) % 3 / 2 * 2; /* 1 or 3 heads each */
        truth ts = rand_truth(&rng, hs, g->n_q, g->n_k, g->bq, g->bk), te = rand_truth(&rng, he, g->n_q, g->n_k, 3, 2);
        sl_mask s, e;
        mask_of(ctx, &ts, g->bq, g->bk, &s);
        mask_of(ctx, &te, 3, 2, &e);
        int heads = hs > he ? hs : he;
        for (int causal = 0; causal < 2; causal++) {
            sl_mask_alignment a;
            ck_assert_msg(sl_mask_align(ctx, &s, &e, causal, &a) == SL_OK, "%s", sl_ctx_error(ctx));
            int64_t ks = 0, ke = 0, kb = 0;
            for (int h = 0; h < heads; h++)
                for (int64_t r = 0; r < g->n_q; r++)
                    for (int64_t j = 0; j < g->n_k; j++) {
                        int x = tget(&ts, h, r, j), y = tget(&te, h, r, j);
                        ks += x;
                        ke += y;
                        kb += x && y;
                    }
            double total = (causal ? causal_pairs(g->n_q, g->n_k) : (double)g->n_q * (double)g->n_k) * heads;
            ck_assert_int_eq(a.kept_semantic, ks);
            ck_assert_int_eq(a.kept_executed, ke);
            ck_assert_int_eq(a.kept_both, kb);
            ck_assert_double_eq_tol(a.density_semantic, total > 0 ? ks / total : 0, 1e-12);
            ck_assert_double_eq_tol(a.density_executed, total > 0 ? ke / total : 0, 1e-12);
            ck_assert_double_eq_tol(a.extra, total > 0 ? (ke - kb) / total : 0, 1e-12);
            ck_assert_double_eq_tol(a.recall, ks ? (double)kb / (double)ks : 1, 1e-12);
        }
        /* Executed ⊇ semantic (the coarsened mask) has recall 1. */
        sl_mask c;
        sl_mask_alignment a;
        ck_assert_int_eq(sl_mask_coarsen(ctx, &s, 8, 8, &c), SL_OK);
        ck_assert_int_eq(sl_mask_align(ctx, &s, &c, 1, &a), SL_OK);
        ck_assert_double_eq(a.recall, 1.0);
        ck_assert(a.density_executed >= a.density_semantic);
        sl_mask_release(&c);
        sl_mask_release(&s);
        sl_mask_release(&e);
        truth_free(&ts);
        truth_free(&te);
    }
    tu_ctx_done(ctx, &al);
}
END_TEST

START_TEST(test_index_round_trips)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 1500);
    for (int gi = 0; gi < N_GEOMS; gi++) {
        const geom *g = &GEOMS[gi];
        truth t = rand_truth(&rng, 2, g->n_q, g->n_k, g->bq, g->bk);
        sl_mask m;
        mask_of(ctx, &t, g->bq, g->bk, &m);
        const int64_t bs[] = {1, 2, 3, g->bq, g->n_q + 5};
        for (int bi = 0; bi < N_OF(bs); bi++) {
            int64_t b = bs[bi], n_e = cdiv(g->n_q, b);
            sl_mask_index x;
            ck_assert_int_eq(sl_mask_to_index(ctx, &m, b, &x), SL_OK);
            ck_assert_int_eq(sl_mask_index_validate(ctx, &x), SL_OK);
            ck_assert_int_eq(x.n_entries, n_e);
            /* Entry e lists the union of its rows' keys, ascending. */
            const int32_t *rp = x.row_ptr.data, *col = x.col.data;
            truth want = truth_new(2, g->n_q, g->n_k);
            for (int h = 0; h < 2; h++)
                for (int64_t e = 0; e < n_e; e++) {
                    int32_t i = rp[h * (n_e + 1) + e];
                    for (int64_t j = 0; j < g->n_k; j++) {
                        int any = 0;
                        for (int64_t r = e * b; r < (e + 1) * b && r < g->n_q; r++)
                            any |= *at(&t, h, r, j);
                        if (!any)
                            continue;
                        CHECK(i < rp[h * (n_e + 1) + e + 1] && col[i] == j, "to_index b %lld head %d entry %lld key %lld",
                              (long long)b, h, (long long)e, (long long)j);
                        i++;
                        for (int64_t r = e * b; r < (e + 1) * b && r < g->n_q; r++)
                            *at(&want, h, r, j) = 1;
                    }
                    CHECK(i == rp[h * (n_e + 1) + e + 1], "to_index: extra keys in head %d entry %lld", h, (long long)e);
                }
            sl_mask back;
            ck_assert_int_eq(sl_mask_from_index(ctx, &x, g->bq, g->bk, &back), SL_OK);
            check_mask(ctx, &back, &want, "from_index");
            if (b == 1)
                assert_same_arrays(&m, &back, "block -> index -> block");
            sl_mask_release(&back);
            truth_free(&want);
            sl_mask_index_release(&x);
        }
        sl_mask_release(&m);
        truth_free(&t);
    }
    tu_ctx_done(ctx, &al);
}
END_TEST

/* ---- errors -------------------------------------------------------------------------------- */

START_TEST(test_pattern_errors)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    int64_t l3[3] = {0, 5, 2}, bad_pos[2] = {3, 40}, ptr[3] = {0, 1, 3}, bad_ptr[3] = {0, 2, 1};
    struct { sl_pattern_term t; int heads; } cases[] = {
        {{.kind = SL_PAT_WINDOW, .a = 0}, 1},
        {{.kind = SL_PAT_WINDOW, .a = 3, .b = -1}, 1},
        {{.kind = SL_PAT_SINK, .a = -1}, 1},
        {{.kind = SL_PAT_SINK, .a = 1, .unit = -1}, 1},
        {{.kind = SL_PAT_CAUSAL, .a = 0, .causal = 2}, 1},
        {{.kind = SL_PAT_STRIDED, .a = 0}, 1},
        {{.kind = SL_PAT_STRIDED, .a = 2, .b = 2}, 1},
        {{.kind = SL_PAT_STRIDED, .a = 2, .idx = l3, .n_idx = 3}, 2},
        {{.kind = SL_PAT_BLOCK_DIAG, .a = 0}, 1},
        {{.kind = SL_PAT_TRIANGLE, .a = -1, .b = 2, .c = 3}, 1},
        {{.kind = SL_PAT_NEIGHBORHOOD, .n_dims = 0}, 1},
        {{.kind = SL_PAT_NEIGHBORHOOD, .n_dims = 4}, 1},
        {{.kind = SL_PAT_NEIGHBORHOOD, .n_dims = 2, .grid = {5, 5}, .kernel = {3, 3}}, 1}, /* 25 > n_k = 20 */
        {{.kind = SL_PAT_NEIGHBORHOOD, .n_dims = 1, .kernel = {0}}, 1},
        {{.kind = SL_PAT_NEIGHBORHOOD, .n_dims = 1, .kernel = {3}, .stride = {4}}, 1},
        {{.kind = SL_PAT_NEIGHBORHOOD, .n_dims = 2, .grid = {2, 0}, .kernel = {1, 1}}, 1},
        {{.kind = SL_PAT_DOCUMENT, .idx = l3, .n_idx = 3}, 1}, /* not increasing */
        {{.kind = SL_PAT_DOCUMENT, .idx = bad_pos, .n_idx = 2}, 1},
        {{.kind = SL_PAT_VERTICAL, .idx = bad_pos, .n_idx = 2}, 1},
        {{.kind = SL_PAT_VERTICAL, .idx = NULL, .n_idx = 2}, 1},
        {{.kind = SL_PAT_VERTICAL, .idx = l3, .n_idx = 3, .idx_ptr = ptr, .n_lists = 2}, 3},
        {{.kind = SL_PAT_VERTICAL, .idx = l3, .n_idx = 3, .idx_ptr = bad_ptr, .n_lists = 2}, 2},
        {{.kind = SL_PAT_GLOBAL_TOKENS, .idx = l3, .n_idx = -1}, 1},
        {{.kind = SL_PAT_WINDOW, .a = 2, .idx = l3, .n_idx = 3}, 1}, /* a list where none is taken */
        {{.kind = SL_PAT_DROP, .rate = 1.5}, 1},
        {{.kind = SL_PAT_DROP, .q_rate = -0.1}, 1},
        {{.kind = SL_PAT_DROP, .a = 2}, 1},
        {{.kind = (sl_pattern_kind)SL_PAT__COUNT, .a = 1}, 1},
        {{.kind = SL_PAT_CAUSAL, .a = 0}, 0},
        {{.kind = SL_PAT_CAUSAL, .a = 0}, 70000},
    };
    for (int k = 0; k < N_OF(cases); k++) {
        sl_mask m;
        sl_ctx_clear_error(ctx);
        sl_status s = sl_mask_from_pattern_heads(ctx, &cases[k].t, 1, cases[k].heads, 10, 20, 4, 4, &m);
        ck_assert_msg(s == SL_EARG, "case %d: %s (%s)", k, sl_status_name(s), sl_ctx_error(ctx));
        ck_assert_msg(strncmp(sl_ctx_error(ctx), "sl_mask_from_pattern", 20) == 0, "case %d: message \"%s\"", k,
                      sl_ctx_error(ctx));
        ck_assert_ptr_null(m.row_ptr.buf);
    }
    tu_ctx_done(ctx, &al);
}
END_TEST

START_TEST(test_algebra_errors)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_pattern_term c = {.kind = SL_PAT_CAUSAL, .a = 0}, st = {.kind = SL_PAT_STRIDED, .a = 2, .head_step = 1};
    sl_mask a, b, h2, h3, out;
    ck_assert_int_eq(sl_mask_from_pattern(ctx, &c, 1, 20, 20, 4, 4, &a), SL_OK);
    ck_assert_int_eq(sl_mask_from_pattern(ctx, &c, 1, 20, 20, 4, 8, &b), SL_OK);
    ck_assert_int_eq(sl_mask_from_pattern_heads(ctx, &st, 1, 2, 20, 20, 4, 4, &h2), SL_OK);
    ck_assert_int_eq(sl_mask_from_pattern_heads(ctx, &st, 1, 3, 20, 20, 4, 4, &h3), SL_OK);
    ck_assert_int_eq(sl_mask_union(ctx, &a, &b, &out), SL_ESHAPE);
    ck_assert_ptr_nonnull(strstr(sl_ctx_error(ctx), "resize first"));
    ck_assert_int_eq(sl_mask_intersect(ctx, &h2, &h3, &out), SL_ESHAPE);
    ck_assert_int_eq(sl_mask_difference(ctx, &a, &b, &out), SL_ESHAPE);
    ck_assert_int_eq(sl_mask_assign(ctx, &a, 0, &out), SL_EARG);
    sl_mask pair[2] = {a, b};
    ck_assert_int_eq(sl_mask_assign(ctx, pair, 2, &out), SL_ESHAPE);
    int64_t dup[20], range[20];
    for (int i = 0; i < 20; i++) {
        dup[i] = i / 2;
        range[i] = i + 1;
    }
    ck_assert_int_eq(sl_mask_permute(ctx, &a, dup, NULL, &out), SL_EARG);
    ck_assert_int_eq(sl_mask_permute(ctx, &a, range, NULL, &out), SL_EARG);
    ck_assert_int_eq(sl_mask_permute(ctx, &a, NULL, NULL, &out), SL_EARG);
    ck_assert_int_eq(sl_mask_permute_inverse(ctx, &a, dup, NULL, &out), SL_EARG);
    sl_mask dec;
    ck_assert_int_eq(sl_mask_from_pattern(ctx, &c, 1, 5, 20, 4, 4, &dec), SL_OK);
    int64_t p5[5] = {0, 1, 2, 3, 4};
    ck_assert_int_eq(sl_mask_permute(ctx, &dec, p5, NULL, &out), SL_ESHAPE);
    ck_assert_int_eq(sl_mask_resize(ctx, &a, 0, 4, &out), SL_EARG);
    ck_assert_int_eq(sl_mask_coarsen(ctx, &a, 4, 5000, &out), SL_EARG);
    sl_mask_alignment alg;
    ck_assert_int_eq(sl_mask_align(ctx, &a, &dec, 1, &alg), SL_ESHAPE);
    ck_assert_int_eq(sl_mask_align(ctx, &h2, &h3, 1, &alg), SL_ESHAPE);
    ck_assert_ptr_null(out.row_ptr.buf);
    /* Index form. */
    sl_mask_index x;
    ck_assert_int_eq(sl_mask_to_index(ctx, &a, 0, &x), SL_EARG);
    ck_assert_int_eq(sl_mask_to_index(ctx, &a, 1, &x), SL_OK);
    int32_t *col = x.col.data, *rp = x.row_ptr.data;
    int32_t keep = col[1];
    col[1] = 99;
    ck_assert_int_eq(sl_mask_from_index(ctx, &x, 4, 4, &out), SL_EFORMAT);
    col[1] = keep;
    rp[3] = rp[2] - 1;
    ck_assert_int_eq(sl_mask_index_validate(ctx, &x), SL_EFORMAT);
    x.n_entries = 3;
    ck_assert_int_eq(sl_mask_index_validate(ctx, &x), SL_ESHAPE);
    sl_mask_index_release(&x);
    sl_mask_index_release(NULL);
    /* Dense bits. */
    sl_tensor bits = {0}, f = {0};
    int64_t fs[2] = {4, 4};
    ck_assert_int_eq(sl_tensor_new(ctx, SL_F32, 2, fs, &f), SL_OK);
    ck_assert_int_eq(sl_mask_from_bits(ctx, &f, 4, 4, &out), SL_ESHAPE);
    ck_assert_int_eq(sl_mask_from_bits(ctx, &bits, 4, 4, &out), SL_ESHAPE);
    sl_tensor_release(&f);
    int64_t ws[2] = {8, 4};
    ck_assert_int_eq(sl_tensor_zeros(ctx, SL_U8, 2, ws, &f), SL_OK);
    ck_assert_int_eq(sl_mask_from_bits(ctx, &f, 4, 4, &out), SL_ESHAPE); /* n_q > n_k */
    sl_tensor_release(&f);
    sl_mask huge;
    ck_assert_int_eq(sl_mask_from_pattern(ctx, &c, 1, 20000, 20000, 4096, 4096, &huge), SL_OK);
    ck_assert_int_eq(sl_mask_to_bits(ctx, &huge, &bits), SL_EARG);
    ck_assert_ptr_null(bits.buf);
    sl_mask_release(&huge);
    sl_mask_release(&dec);
    sl_mask_release(&a);
    sl_mask_release(&b);
    sl_mask_release(&h2);
    sl_mask_release(&h3);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* ---- allocation failures ----------------------------------------------------------------------- */

/* Runs op with the n-th allocation failing for n = 1, 2, ... until it
 * succeeds: every failure is SL_ENOMEM and leaves nothing allocated. */
typedef sl_status (*op_fn)(sl_ctx *ctx, void *ud);

static void fail_each(sl_ctx *ctx, tu_alloc *al, op_fn op, void *ud, const char *what)
{
    size_t live = sl_ctx_live_allocs(ctx);
    for (long n = 1;; n++) {
        ck_assert_msg(n < 400, "%s: still failing after %ld allocations", what, n);
        al->fail_at = al->calls + n;
        sl_status s = op(ctx, ud);
        al->fail_at = 0;
        ck_assert_msg(sl_ctx_live_allocs(ctx) == live, "%s: %zu allocations leaked after failure %ld", what,
                      sl_ctx_live_allocs(ctx) - live, n);
        if (s == SL_OK)
            break;
        ck_assert_msg(s == SL_ENOMEM, "%s: failure %ld gave %s (%s)", what, n, sl_status_name(s), sl_ctx_error(ctx));
    }
}

typedef struct fx { sl_mask a, b; tpat p; int64_t perm[40]; sl_tensor bits; sl_mask_index x; } fx;

static sl_status op_pattern(sl_ctx *ctx, void *ud)
{
    fx *f = ud;
    sl_mask m;
    sl_status s = sl_mask_from_pattern_heads(ctx, f->p.t, f->p.n, 3, 40, 40, 8, 8, &m);
    sl_mask_release(&m);
    return s;
}
static sl_status op_ops(sl_ctx *ctx, void *ud)
{
    fx *f = ud;
    sl_mask m[8] = {{0}};
    sl_mask_alignment al;
    sl_mask_index x = {0};
    sl_tensor t = {0};
    sl_status s;
    if (!(s = sl_mask_union(ctx, &f->a, &f->b, &m[0])) && !(s = sl_mask_intersect(ctx, &f->a, &f->b, &m[1])) &&
        !(s = sl_mask_difference(ctx, &f->a, &f->b, &m[2])) && !(s = sl_mask_permute(ctx, &f->a, f->perm, NULL, &m[3])) &&
        !(s = sl_mask_resize(ctx, &f->a, 3, 5, &m[4])) && !(s = sl_mask_coarsen(ctx, &f->a, 16, 16, &m[5])) &&
        !(s = sl_mask_assign(ctx, &f->a, 1, &m[6])) && !(s = sl_mask_align(ctx, &f->a, &m[4], 1, &al)) &&
        !(s = sl_mask_to_index(ctx, &f->a, 3, &x)) && !(s = sl_mask_from_index(ctx, &x, 8, 8, &m[7])) &&
        !(s = sl_mask_to_bits(ctx, &f->a, &t))) {
        sl_mask tmp;
        s = sl_mask_from_bits(ctx, &t, 4, 4, &tmp);
        sl_mask_release(&tmp);
    }
    for (int i = 0; i < 8; i++)
        sl_mask_release(&m[i]);
    sl_mask_index_release(&x);
    sl_tensor_release(&t);
    return s;
}

START_TEST(test_alloc_failures)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 1600);
    fx f;
    f.p.n = 4;
    rand_term(&rng, &f.p, 0, SL_PAT_DOCUMENT, 40, 3);
    rand_term(&rng, &f.p, 1, SL_PAT_SLASH, 40, 3);
    rand_term(&rng, &f.p, 2, SL_PAT_DROP, 40, 3);
    rand_term(&rng, &f.p, 3, SL_PAT_VERTICAL, 40, 3);
    fail_each(ctx, &al, op_pattern, &f, "from_pattern");
    sl_pattern_term w[2] = {{.kind = SL_PAT_WINDOW, .a = 7}, {.kind = SL_PAT_SINK, .a = 2}};
    ck_assert_int_eq(sl_mask_from_pattern_heads(ctx, f.p.t, f.p.n, 3, 40, 40, 8, 8, &f.a), SL_OK);
    ck_assert_int_eq(sl_mask_from_pattern(ctx, w, 2, 40, 40, 8, 8, &f.b), SL_OK);
    shuffle(&rng, f.perm, 40);
    fail_each(ctx, &al, op_ops, &f, "algebra and conversions");
    sl_mask_release(&f.a);
    sl_mask_release(&f.b);
    tu_ctx_done(ctx, &al);
}
END_TEST

static Suite *patterns_suite(void)
{
    Suite *s = suite_create("patterns");
    TCase *tc = tcase_create("patterns");
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, test_each_kind_matches_brute_force, 0, SL_PAT__COUNT);
    tcase_add_test(tc, test_card_checks);
    tcase_add_loop_test(tc, test_random_unions, 0, 4);
    tcase_add_test(tc, test_sink_window_spans);
    suite_add_tcase(s, tc);
    TCase *ta = tcase_create("algebra");
    tcase_set_timeout(ta, 120);
    tcase_add_test(ta, test_bits_round_trip);
    tcase_add_test(ta, test_set_operations);
    tcase_add_loop_test(ta, test_assign, 0, 4);
    tcase_add_test(ta, test_permute);
    tcase_add_test(ta, test_resize_and_coarsen);
    tcase_add_test(ta, test_align);
    tcase_add_test(ta, test_index_round_trips);
    tcase_add_test(ta, test_pattern_errors);
    tcase_add_test(ta, test_algebra_errors);
    tcase_add_test(ta, test_alloc_failures);
    suite_add_tcase(s, ta);
    return s;
}

int main(void) { return tu_run(patterns_suite()); }
