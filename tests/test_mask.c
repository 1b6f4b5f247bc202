/* test_mask.c — Check suite for core/mask.c: block masks from every pattern
 * kind and their unions on ragged sizes, compared pair by pair with a brute
 * force written from the definitions in sparselab.h; the block form's
 * invariants read from the arrays; mask union (OR, commutative, idempotent,
 * identity, head broadcasting, mismatches); validation of hand-corrupted
 * masks; argument errors; and failure of every allocation. */
#include "testutil.h"

#include <limits.h>

/* ck_assert records its location on every pass (a write to the parent);
 * loops over many pairs check this way instead. */
#define CHECK(cond, ...)               \
    do {                               \
        if (!(cond))                   \
            ck_abort_msg(__VA_ARGS__); \
    } while (0)

#define N_OF(a) (int)(sizeof(a) / sizeof((a)[0]))

/* ---- the brute force -------------------------------------------------------------- */

typedef struct pat { int n; sl_pattern_term t[3]; } pat;

/* Whether a union of terms keeps (position i, key j), from the header:
 * full: every pair; causal: j <= i; window a: 0 <= i - j < a; sink a: j < a and j <= i. */
static int pat_keeps(const pat *p, int64_t i, int64_t j)
{
    for (int k = 0; k < p->n; k++) {
        int64_t a = p->t[k].a;
        switch (p->t[k].kind) {
        case SL_PAT_FULL: return 1;
        case SL_PAT_CAUSAL:
            if (j <= i)
                return 1;
            break;
        case SL_PAT_WINDOW:
            if (i - j >= 0 && i - j < a)
                return 1;
            break;
        case SL_PAT_SINK:
            if (j < a && j <= i)
                return 1;
            break;
        default: break;
        }
    }
    return 0;
}

/* Which pairs are kept, per mask head: kept[(h * n_q + row) * n_k + key]. */
typedef struct truth { int heads; int64_t n_q, n_k; uint8_t *kept; } truth;

static truth truth_new(int heads, int64_t n_q, int64_t n_k)
{
    truth t = {heads, n_q, n_k, calloc((size_t)(heads * n_q * n_k) + 1, 1)};
    ck_assert_ptr_nonnull(t.kept);
    return t;
}

static uint8_t *truth_at(const truth *t, int h, int64_t row, int64_t key)
{
    return &t->kept[((int64_t)h * t->n_q + row) * t->n_k + key];
}

/* A pattern's truth: query row `row` sits at position n_k - n_q + row. */
static truth truth_of(const pat *p, int64_t n_q, int64_t n_k)
{
    truth t = truth_new(1, n_q, n_k);
    for (int64_t r = 0; r < n_q; r++)
        for (int64_t j = 0; j < n_k; j++)
            *truth_at(&t, 0, r, j) = (uint8_t)pat_keeps(p, n_k - n_q + r, j);
    return t;
}

/* Head-wise OR; a one-head side is broadcast. */
static truth truth_or(const truth *a, const truth *b)
{
    int heads = a->heads > b->heads ? a->heads : b->heads;
    truth t = truth_new(heads, a->n_q, a->n_k);
    for (int h = 0; h < heads; h++)
        for (int64_t r = 0; r < a->n_q; r++)
            for (int64_t j = 0; j < a->n_k; j++)
                *truth_at(&t, h, r, j) =
                    *truth_at(a, a->heads == 1 ? 0 : h, r, j) | *truth_at(b, b->heads == 1 ? 0 : h, r, j);
    return t;
}

static void truth_free(truth *t)
{
    free(t->kept);
    t->kept = NULL;
}

static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

/* ---- checking a mask against the truth -------------------------------------------------- */

/* Everything the header promises about a block mask, read from the arrays. */
static void check_mask(sl_ctx *ctx, const sl_mask *m, const truth *t, int bq, int bk, const char *what)
{
    ck_assert_msg(sl_mask_validate(ctx, m) == SL_OK, "%s: validate: %s", what, sl_ctx_error(ctx));
    ck_assert_int_eq(m->n_heads, t->heads);
    ck_assert_int_eq(m->n_q, t->n_q);
    ck_assert_int_eq(m->n_k, t->n_k);
    ck_assert_int_eq(m->bq, bq);
    ck_assert_int_eq(m->bk, bk);
    int64_t n_qb = ceil_div(t->n_q, bq), n_kb = ceil_div(t->n_k, bk);
    ck_assert_int_eq(m->n_qb, n_qb);
    ck_assert_int_eq(m->n_kb, n_kb);
    ck_assert(m->row_ptr.dtype == SL_I32 && m->row_ptr.ndim == 2);
    ck_assert(m->row_ptr.shape[0] == t->heads && m->row_ptr.shape[1] == n_qb + 1);
    ck_assert(m->col_idx.dtype == SL_I32 && m->col_idx.ndim == 1);
    ck_assert(m->part.dtype == SL_I32 && m->part.ndim == 1 && m->part.shape[0] == m->col_idx.shape[0]);
    ck_assert(m->bits.dtype == SL_U8 && m->bits.ndim == 3 && m->bits.shape[1] == bq && m->bits.shape[2] == bk);

    /* Pair by pair. */
    double total_kept = 0;
    for (int h = 0; h < t->heads; h++) {
        int64_t kept = 0;
        for (int64_t r = 0; r < t->n_q; r++)
            for (int64_t j = 0; j < t->n_k; j++) {
                int want = *truth_at(t, h, r, j), got = sl_mask_get(m, h, r, j);
                CHECK(got == want, "%s: head %d row %lld key %lld: mask %d, definition %d", what, h, (long long)r,
                      (long long)j, got, want);
                kept += want;
            }
        ck_assert_msg(sl_mask_kept(m, h) == kept, "%s: head %d keeps %lld pairs, brute force %lld", what, h,
                      (long long)sl_mask_kept(m, h), (long long)kept);
        total_kept += (double)kept;
    }
    /* Outside the mask nothing is kept. */
    ck_assert_int_eq(sl_mask_get(m, 0, t->n_q, 0), 0);
    ck_assert_int_eq(sl_mask_get(m, 0, 0, t->n_k), 0);
    ck_assert_int_eq(sl_mask_get(m, 0, -1, 0), 0);
    ck_assert_int_eq(sl_mask_get(m, 0, 0, -1), 0);

    /* Density: kept over all pairs, and over causal pairs (key <= position). */
    if (t->n_q > 0) {
        double causal_pairs = 0;
        for (int64_t r = 0; r < t->n_q; r++)
            for (int64_t j = 0; j < t->n_k; j++)
                causal_pairs += j <= t->n_k - t->n_q + r;
        double all = total_kept / ((double)t->heads * (double)(t->n_q * t->n_k));
        double causal = total_kept / ((double)t->heads * causal_pairs);
        ck_assert_msg(fabs(sl_mask_density(m, 0) - all) <= 1e-12 * all, "%s: density %.15g, brute %.15g", what,
                      sl_mask_density(m, 0), all);
        ck_assert_msg(fabs(sl_mask_density(m, 1) - causal) <= 1e-12 * causal, "%s: causal density %.15g, brute %.15g",
                      what, sl_mask_density(m, 1), causal);
    }

    /* The block form: sorted columns; -1 exactly when the clipped block is
     * all kept; a partial block's bits are the pairs, hold at least one and
     * not all of them, and are zero outside the clipped area. */
    const int32_t *rp = m->row_ptr.data, *col = m->col_idx.data, *part = m->part.data;
    const uint8_t *bits = m->bits.data;
    int64_t n_part = m->bits.shape[0];
    for (int h = 0; h < t->heads; h++)
        for (int64_t r = 0; r < n_qb; r++) {
            const int32_t *hr = rp + h * (n_qb + 1);
            int64_t rows = t->n_q - r * bq < bq ? t->n_q - r * bq : bq;
            for (int32_t e = hr[r]; e < hr[r + 1]; e++) {
                CHECK(e == hr[r] || col[e] > col[e - 1], "%s: head %d block row %lld: columns not sorted", what, h,
                      (long long)r);
                int64_t c = col[e], cols = t->n_k - c * bk < bk ? t->n_k - c * bk : bk;
                int64_t kept = 0;
                for (int64_t a = 0; a < rows; a++)
                    for (int64_t b = 0; b < cols; b++)
                        kept += *truth_at(t, h, r * bq + a, c * bk + b);
                CHECK(kept > 0, "%s: head %d block (%lld, %lld) is listed but keeps nothing", what, h, (long long)r,
                      (long long)c);
                if (part[e] == -1) {
                    CHECK(kept == rows * cols, "%s: head %d block (%lld, %lld) marked full keeps %lld of %lld", what, h,
                          (long long)r, (long long)c, (long long)kept, (long long)(rows * cols));
                    continue;
                }
                CHECK(part[e] >= 0 && part[e] < n_part, "%s: part %d out of range", what, part[e]);
                CHECK(kept < rows * cols, "%s: head %d block (%lld, %lld) is all kept but not marked full", what, h,
                      (long long)r, (long long)c);
                const uint8_t *blk = bits + (size_t)part[e] * (size_t)bq * (size_t)bk;
                for (int64_t a = 0; a < bq; a++)
                    for (int64_t b = 0; b < bk; b++) {
                        int want = a < rows && b < cols ? *truth_at(t, h, r * bq + a, c * bk + b) : 0;
                        CHECK(blk[a * bk + b] == want, "%s: head %d block (%lld, %lld) bit (%lld, %lld) is %d, want %d",
                              what, h, (long long)r, (long long)c, (long long)a, (long long)b, blk[a * bk + b], want);
                    }
            }
        }
}

static void assert_no_overrun(const tu_alloc *al, const char *what)
{
    ck_assert_msg(al->corrupted == 0, "%s: wrote past an allocation (%ld sentinels overwritten)", what, al->corrupted);
}

/* ---- a block mask built by hand from a truth (any number of heads) ------------------------- */

static void build_mask(sl_ctx *ctx, const truth *t, int bq, int bk, sl_mask *m)
{
    int64_t n_qb = ceil_div(t->n_q, bq), n_kb = ceil_div(t->n_k, bk), nnz = 0, n_part = 0;
    for (int pass = 0; pass < 2; pass++) {
        int32_t *rp = pass ? m->row_ptr.data : NULL, *col = pass ? m->col_idx.data : NULL;
        int32_t *part = pass ? m->part.data : NULL;
        uint8_t *bits = pass ? m->bits.data : NULL;
        int64_t e = 0, pi = 0;
        for (int h = 0; h < t->heads; h++)
            for (int64_t r = 0; r < n_qb; r++) {
                if (pass)
                    rp[h * (n_qb + 1) + r] = (int32_t)e;
                int64_t rows = t->n_q - r * bq < bq ? t->n_q - r * bq : bq;
                for (int64_t c = 0; c < n_kb; c++) {
                    int64_t cols = t->n_k - c * bk < bk ? t->n_k - c * bk : bk, kept = 0;
                    for (int64_t a = 0; a < rows; a++)
                        for (int64_t b = 0; b < cols; b++)
                            kept += *truth_at(t, h, r * bq + a, c * bk + b);
                    if (kept == 0)
                        continue;
                    int full = kept == rows * cols;
                    if (pass) {
                        col[e] = (int32_t)c;
                        part[e] = full ? -1 : (int32_t)pi;
                        if (!full)
                            for (int64_t a = 0; a < rows; a++)
                                for (int64_t b = 0; b < cols; b++)
                                    bits[(pi * bq + a) * bk + b] = *truth_at(t, h, r * bq + a, c * bk + b);
                    }
                    e++;
                    pi += !full;
                }
                if (pass)
                    rp[h * (n_qb + 1) + n_qb] = (int32_t)e;
            }
        if (!pass) {
            nnz = e;
            n_part = pi;
            *m = (sl_mask){.n_heads = t->heads, .n_q = t->n_q, .n_k = t->n_k, .bq = bq, .bk = bk, .n_qb = n_qb,
                           .n_kb = n_kb};
            int64_t rs[2] = {t->heads, n_qb + 1}, ns[1] = {nnz}, bs[3] = {n_part, bq, bk};
            ck_assert_int_eq(sl_tensor_new(ctx, SL_I32, 2, rs, &m->row_ptr), SL_OK);
            ck_assert_int_eq(sl_tensor_new(ctx, SL_I32, 1, ns, &m->col_idx), SL_OK);
            ck_assert_int_eq(sl_tensor_new(ctx, SL_I32, 1, ns, &m->part), SL_OK);
            ck_assert_int_eq(sl_tensor_zeros(ctx, SL_U8, 3, bs, &m->bits), SL_OK);
        }
    }
}

/* A random truth with every kind of block: empty, full, partial. */
static truth truth_random(sl_rng *r, int heads, int64_t n_q, int64_t n_k, int bq, int bk)
{
    truth t = truth_new(heads, n_q, n_k);
    for (int h = 0; h < heads; h++)
        for (int64_t rb = 0; rb < ceil_div(n_q, bq); rb++)
            for (int64_t cb = 0; cb < ceil_div(n_k, bk); cb++) {
                double u = sl_rng_uniform(r), p = u < 0.4 ? 0 : u < 0.6 ? 1 : 0.5;
                for (int64_t a = rb * bq; a < (rb + 1) * bq && a < n_q; a++)
                    for (int64_t b = cb * bk; b < (cb + 1) * bk && b < n_k; b++)
                        *truth_at(&t, h, a, b) = (uint8_t)(sl_rng_uniform(r) < p);
            }
    return t;
}

/* ---- sizes and patterns ------------------------------------------------------------------- */

typedef struct geom_case { int64_t n_q, n_k; int bq, bk; } geom_case;

static const geom_case GEOMS[] = {
    {37, 37, 8, 8},   /* ragged, square blocks */
    {37, 37, 8, 16},  /* bq != bk */
    {37, 37, 16, 8},  /* bq > bk */
    {50, 50, 1, 7},   /* bq = 1 */
    {50, 50, 7, 1},   /* bk = 1 */
    {1, 1, 1, 1},     /* one pair */
    {1, 100, 4, 8},   /* one query (decode) */
    {1, 100, 1, 1},   /* one query, unit blocks */
    {5, 77, 4, 16},   /* decode offset, ragged */
    {13, 64, 16, 16}, /* fewer queries than a block */
    {64, 64, 16, 16}, /* exact tiles */
    {33, 70, 5, 3},   /* odd everything */
    {20, 20, 32, 32}, /* blocks larger than the sizes */
    {40, 41, 3, 5},   /* off by one */
    {2, 9, 2, 4},     /* tiny decode */
};
#define N_GEOMS N_OF(GEOMS)

/* Designated initialisers: a term has more fields than the four kinds here use. */
#define TERM(k, x) {.kind = (k), .a = (x)}

static pat pat1(sl_pattern_kind k, int64_t a) { return (pat){1, {TERM(k, a)}}; }
static pat pat2(sl_pattern_kind k1, int64_t a1, sl_pattern_kind k2, int64_t a2)
{
    return (pat){2, {TERM(k1, a1), TERM(k2, a2)}};
}

/* One to three random terms (window >= 1, sink >= 0), sizes from 0 to past n_k. */
static pat pat_random(sl_rng *r, int64_t n_k, int min_terms)
{
    pat p = {min_terms + (int)(sl_rng_next(r) % (uint64_t)(4 - min_terms)), {TERM(SL_PAT_FULL, 0)}};
    for (int k = 0; k < p.n; k++) {
        double u = sl_rng_uniform(r);
        sl_pattern_kind kind = u < 0.45 ? SL_PAT_WINDOW : u < 0.85 ? SL_PAT_SINK : u < 0.97 ? SL_PAT_CAUSAL : SL_PAT_FULL;
        int64_t a = (int64_t)(sl_rng_next(r) % (uint64_t)(n_k + 3));
        if (kind == SL_PAT_WINDOW && a < 1)
            a = 1;
        p.t[k] = (sl_pattern_term)TERM(kind, a);
    }
    return p;
}

static void pat_describe(const pat *p, char *buf, size_t n)
{
    size_t used = 0;
    buf[0] = '\0';
    for (int k = 0; k < p->n && used < n; k++)
        used += (size_t)snprintf(buf + used, n - used, "%s%s %lld", k ? " | " : "", sl_pattern_name(p->t[k].kind),
                                 (long long)p->t[k].a);
}

/* Materialises p at g and checks it against the brute force. The
 * sentinels are read when a buffer is freed, so overruns are checked after
 * the release. */
static void check_pattern(sl_ctx *ctx, const tu_alloc *al, const pat *p, const geom_case *g)
{
    char what[160], desc[96];
    pat_describe(p, desc, sizeof desc);
    snprintf(what, sizeof what, "[%s] at n_q %lld n_k %lld bq %d bk %d", desc, (long long)g->n_q, (long long)g->n_k,
             g->bq, g->bk);
    sl_mask m;
    sl_status s = sl_mask_from_pattern(ctx, p->t, p->n, g->n_q, g->n_k, g->bq, g->bk, &m);
    ck_assert_msg(s == SL_OK, "%s: %s", what, sl_ctx_error(ctx));
    truth t = truth_of(p, g->n_q, g->n_k);
    check_mask(ctx, &m, &t, g->bq, g->bk, what);
    truth_free(&t);
    sl_mask_release(&m);
    assert_no_overrun(al, what);
}

START_TEST(test_pattern_each_kind)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    const geom_case *g = &GEOMS[_i];
    const pat pats[] = {
        pat1(SL_PAT_FULL, 0),       pat1(SL_PAT_CAUSAL, 0),     pat1(SL_PAT_WINDOW, 1),
        pat1(SL_PAT_WINDOW, 2),     pat1(SL_PAT_WINDOW, 3),     pat1(SL_PAT_WINDOW, g->bq),
        pat1(SL_PAT_WINDOW, g->bk + 1), pat1(SL_PAT_WINDOW, 16), pat1(SL_PAT_WINDOW, g->n_k),
        pat1(SL_PAT_WINDOW, 1000),  pat1(SL_PAT_SINK, 0),       pat1(SL_PAT_SINK, 1),
        pat1(SL_PAT_SINK, 2),       pat1(SL_PAT_SINK, g->bk),   pat1(SL_PAT_SINK, 5),
        pat1(SL_PAT_SINK, g->n_k),  pat1(SL_PAT_SINK, 1000),
    };
    for (int k = 0; k < N_OF(pats); k++)
        check_pattern(ctx, &al, &pats[k], g);
    tu_ctx_done(ctx, &al);
}
END_TEST

START_TEST(test_pattern_unions)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    const geom_case *g = &GEOMS[_i];
    const pat pats[] = {
        pat2(SL_PAT_WINDOW, 4, SL_PAT_SINK, 2),
        pat2(SL_PAT_WINDOW, 1, SL_PAT_SINK, 1),
        pat2(SL_PAT_WINDOW, 2, SL_PAT_WINDOW, 9),
        pat2(SL_PAT_SINK, 0, SL_PAT_WINDOW, 1),
        pat2(SL_PAT_FULL, 0, SL_PAT_WINDOW, 2),
        pat2(SL_PAT_SINK, 3, SL_PAT_CAUSAL, 0),
        {3, {TERM(SL_PAT_SINK, 3), TERM(SL_PAT_SINK, 1), TERM(SL_PAT_WINDOW, 5)}},
        {3, {TERM(SL_PAT_WINDOW, 3), TERM(SL_PAT_SINK, g->bk), TERM(SL_PAT_WINDOW, g->bq + 2)}},
    };
    for (int k = 0; k < N_OF(pats); k++)
        check_pattern(ctx, &al, &pats[k], g);
    /* Fresh random unions of two or three terms. */
    sl_rng rng;
    sl_rng_seed(&rng, 2000 + (uint64_t)_i);
    for (int k = 0; k < 12; k++) {
        pat p = pat_random(&rng, g->n_k, 2);
        check_pattern(ctx, &al, &p, g);
    }
    tu_ctx_done(ctx, &al);
}
END_TEST

/* Sizes where a mask has no rows or no terms, and the largest block size. */
START_TEST(test_pattern_edges)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    const pat causal = pat1(SL_PAT_CAUSAL, 0), none = {0, {TERM(SL_PAT_FULL, 0)}};
    const geom_case edges[] = {{0, 5, 4, 4}, {0, 0, 1, 1}, {10, 10, 4096, 4096}, {3, 7, 4096, 1}, {9, 12, 1, 4096}};
    for (int k = 0; k < N_OF(edges); k++) {
        check_pattern(ctx, &al, &causal, &edges[k]);
        check_pattern(ctx, &al, &none, &edges[k]);
    }
    /* No terms: nothing kept, no entries. */
    sl_mask m;
    ck_assert_int_eq(sl_mask_from_pattern(ctx, NULL, 0, 30, 40, 8, 8, &m), SL_OK);
    ck_assert_int_eq(m.col_idx.shape[0], 0);
    ck_assert_int_eq(m.bits.shape[0], 0);
    ck_assert_int_eq(sl_mask_kept(&m, 0), 0);
    ck_assert_double_eq(sl_mask_density(&m, 1), 0);
    ck_assert_int_eq(sl_mask_validate(ctx, &m), SL_OK);
    /* A one-head mask serves every query head. */
    sl_mask_release(&m);
    ck_assert_int_eq(sl_mask_from_pattern(ctx, &causal.t[0], 1, 30, 40, 8, 8, &m), SL_OK);
    for (int h = 0; h < 4; h++) {
        ck_assert_int_eq(sl_mask_get(&m, h, 5, 15), 1);
        ck_assert_int_eq(sl_mask_get(&m, h, 5, 16), 0);
    }
    /* The seven inputs of attn.block_sparse are the mask's own tensors. */
    sl_tensor q = {0}, k = {0}, v = {0}, in[7];
    sl_mask_inputs(&m, &q, &k, &v, in);
    ck_assert_ptr_eq(in[3].data, m.row_ptr.data);
    ck_assert_ptr_eq(in[4].data, m.col_idx.data);
    ck_assert_ptr_eq(in[5].data, m.part.data);
    ck_assert_ptr_eq(in[6].data, m.bits.data);
    sl_mask_release(&m);
    sl_mask_release(NULL);
    /* Pattern names are distinct. */
    for (int a = 0; a < SL_PAT__COUNT; a++)
        for (int b = 0; b < a; b++)
            ck_assert_str_ne(sl_pattern_name((sl_pattern_kind)a), sl_pattern_name((sl_pattern_kind)b));
    ck_assert_ptr_nonnull(sl_pattern_name(SL_PAT__COUNT));
    tu_ctx_done(ctx, &al);
}
END_TEST

/* ---- union ---------------------------------------------------------------------------------- */

static void make_pattern(sl_ctx *ctx, const pat *p, const geom_case *g, sl_mask *m)
{
    ck_assert_msg(sl_mask_from_pattern(ctx, p->t, p->n, g->n_q, g->n_k, g->bq, g->bk, m) == SL_OK, "%s",
                  sl_ctx_error(ctx));
}

static void check_union(sl_ctx *ctx, tu_alloc *al, const sl_mask *a, const sl_mask *b, const truth *want,
                        const geom_case *g, const char *what)
{
    sl_mask u;
    sl_status s = sl_mask_union(ctx, a, b, &u);
    ck_assert_msg(s == SL_OK, "%s: %s", what, sl_ctx_error(ctx));
    check_mask(ctx, &u, want, g->bq, g->bk, what);
    sl_mask_release(&u);
    assert_no_overrun(al, what);
}

START_TEST(test_union_matches_or)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    const geom_case *g = &GEOMS[_i];
    sl_rng rng;
    sl_rng_seed(&rng, 3000 + (uint64_t)_i);
    pat empty = {0, {TERM(SL_PAT_FULL, 0)}};
    sl_mask me;
    make_pattern(ctx, &empty, g, &me);
    truth te = truth_of(&empty, g->n_q, g->n_k);
    for (int k = 0; k < 10; k++) {
        pat pa = pat_random(&rng, g->n_k, 1), pb = pat_random(&rng, g->n_k, 1);
        char what[256], da[96], db[96];
        pat_describe(&pa, da, sizeof da);
        pat_describe(&pb, db, sizeof db);
        snprintf(what, sizeof what, "union of [%s] and [%s] at n_q %lld n_k %lld bq %d bk %d", da, db,
                 (long long)g->n_q, (long long)g->n_k, g->bq, g->bk);
        sl_mask ma, mb;
        make_pattern(ctx, &pa, g, &ma);
        make_pattern(ctx, &pb, g, &mb);
        truth ta = truth_of(&pa, g->n_q, g->n_k), tb = truth_of(&pb, g->n_q, g->n_k), tab = truth_or(&ta, &tb);
        check_union(ctx, &al, &ma, &mb, &tab, g, what);  /* the OR */
        check_union(ctx, &al, &mb, &ma, &tab, g, what);  /* commutative */
        check_union(ctx, &al, &ma, &ma, &ta, g, what);   /* idempotent */
        check_union(ctx, &al, &ma, &me, &ta, g, what);   /* the empty mask is the identity */
        check_union(ctx, &al, &me, &mb, &tb, g, what);
        truth_free(&ta);
        truth_free(&tb);
        truth_free(&tab);
        sl_mask_release(&ma);
        sl_mask_release(&mb);
    }
    check_union(ctx, &al, &me, &me, &te, g, "empty with empty");
    truth_free(&te);
    sl_mask_release(&me);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* Blocks that no term covers alone but the union covers: they are full,
 * and their bits must not be written anywhere (the bits array has no slot
 * for them: n_part is 0 or 1 here and the covered block comes last). */
START_TEST(test_partials_covering_a_block)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    const struct { geom_case g; int64_t window, sink; } cases[] = {
        {{1, 2, 1, 2}, 1, 1}, /* one query at position 1: the window keeps key 1, the sink key 0 */
        {{2, 2, 1, 2}, 1, 1}, /* the same after a partial row */
        {{3, 3, 2, 2}, 2, 1}, /* position 2 sees key 1 through the window and key 0 as a sink */
        {{3, 3, 2, 4}, 1, 2},
    };
    for (int k = 0; k < N_OF(cases); k++) {
        const geom_case *g = &cases[k].g;
        pat pa = pat1(SL_PAT_WINDOW, cases[k].window), pb = pat1(SL_PAT_SINK, cases[k].sink);
        pat pab = pat2(SL_PAT_WINDOW, cases[k].window, SL_PAT_SINK, cases[k].sink);
        char what[64];
        /* Both terms in one pattern. */
        snprintf(what, sizeof what, "covering case %d, one pattern", k);
        sl_mask m;
        ck_assert_int_eq(sl_mask_from_pattern(ctx, pab.t, pab.n, g->n_q, g->n_k, g->bq, g->bk, &m), SL_OK);
        truth tab = truth_of(&pab, g->n_q, g->n_k);
        check_mask(ctx, &m, &tab, g->bq, g->bk, what);
        sl_mask_release(&m);
        assert_no_overrun(&al, what);
        /* The union of the two single-term masks. */
        snprintf(what, sizeof what, "covering case %d, union", k);
        sl_mask a, b;
        make_pattern(ctx, &pa, g, &a);
        make_pattern(ctx, &pb, g, &b);
        check_union(ctx, &al, &a, &b, &tab, g, what);
        check_union(ctx, &al, &b, &a, &tab, g, what);
        truth_free(&tab);
        sl_mask_release(&a);
        sl_mask_release(&b);
    }
    tu_ctx_done(ctx, &al);
}
END_TEST

START_TEST(test_union_heads)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 4000);
    const geom_case g = {29, 45, 4, 6};
    truth t2 = truth_random(&rng, 2, g.n_q, g.n_k, g.bq, g.bk), u2 = truth_random(&rng, 2, g.n_q, g.n_k, g.bq, g.bk);
    truth t3 = truth_random(&rng, 3, g.n_q, g.n_k, g.bq, g.bk), t4 = truth_random(&rng, 4, g.n_q, g.n_k, g.bq, g.bk);
    sl_mask m2, n2, m3, m4;
    build_mask(ctx, &t2, g.bq, g.bk, &m2);
    build_mask(ctx, &u2, g.bq, g.bk, &n2);
    build_mask(ctx, &t3, g.bq, g.bk, &m3);
    build_mask(ctx, &t4, g.bq, g.bk, &m4);
    /* The hand-built masks are masks: get, kept and density per head. */
    check_mask(ctx, &m2, &t2, g.bq, g.bk, "hand-built 2 heads");
    check_mask(ctx, &m3, &t3, g.bq, g.bk, "hand-built 3 heads");

    pat p = pat2(SL_PAT_WINDOW, 7, SL_PAT_SINK, 3);
    sl_mask m1;
    make_pattern(ctx, &p, &g, &m1);
    truth t1 = truth_of(&p, g.n_q, g.n_k);
    truth t21 = truth_or(&t2, &t1), t22 = truth_or(&t2, &u2), t31 = truth_or(&t3, &t1);
    check_union(ctx, &al, &m2, &m1, &t21, &g, "2 heads with 1");
    check_union(ctx, &al, &m1, &m2, &t21, &g, "1 head with 2");
    check_union(ctx, &al, &m2, &n2, &t22, &g, "2 heads with 2");
    check_union(ctx, &al, &n2, &m2, &t22, &g, "2 heads with 2, swapped");
    check_union(ctx, &al, &m2, &m2, &t2, &g, "2 heads with themselves");
    check_union(ctx, &al, &m3, &m1, &t31, &g, "3 heads with 1");

    /* Head counts that neither match nor broadcast. */
    const sl_mask *bad[][2] = {{&m2, &m3}, {&m3, &m2}, {&m2, &m4}, {&m4, &m3}};
    size_t live = sl_ctx_live_allocs(ctx);
    for (int k = 0; k < N_OF(bad); k++) {
        sl_mask u;
        sl_ctx_clear_error(ctx);
        ck_assert_int_eq(sl_mask_union(ctx, bad[k][0], bad[k][1], &u), SL_ESHAPE);
        ck_assert(sl_ctx_error(ctx)[0] != '\0');
        ck_assert_uint_eq(sl_ctx_live_allocs(ctx), live);
    }
    truth *ts[] = {&t1, &t2, &u2, &t3, &t4, &t21, &t22, &t31};
    for (int k = 0; k < N_OF(ts); k++)
        truth_free(ts[k]);
    sl_mask *ms[] = {&m1, &m2, &n2, &m3, &m4};
    for (int k = 0; k < N_OF(ms); k++)
        sl_mask_release(ms[k]);
    tu_ctx_done(ctx, &al);
}
END_TEST

START_TEST(test_union_size_mismatch)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    const pat p = pat1(SL_PAT_CAUSAL, 0);
    const geom_case base = {20, 30, 4, 8};
    const geom_case other[] = {{21, 30, 4, 8}, {20, 31, 4, 8}, {20, 30, 5, 8}, {20, 30, 4, 4}, {19, 29, 4, 8}};
    sl_mask a;
    make_pattern(ctx, &p, &base, &a);
    for (int k = 0; k < N_OF(other); k++) {
        sl_mask b, u;
        make_pattern(ctx, &p, &other[k], &b);
        size_t live = sl_ctx_live_allocs(ctx);
        for (int swap = 0; swap < 2; swap++) {
            sl_ctx_clear_error(ctx);
            ck_assert_msg(sl_mask_union(ctx, swap ? &b : &a, swap ? &a : &b, &u) == SL_ESHAPE, "case %d", k);
            ck_assert(sl_ctx_error(ctx)[0] != '\0');
            ck_assert_uint_eq(sl_ctx_live_allocs(ctx), live);
        }
        sl_mask_release(&b);
    }
    sl_mask_release(&a);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* ---- validation of corrupted masks -------------------------------------------------------------- */

/* A deep copy (its own buffers) to corrupt. */
static void clone_mask(sl_ctx *ctx, const sl_mask *m, sl_mask *c)
{
    *c = *m;
    ck_assert_int_eq(sl_tensor_convert(ctx, &m->row_ptr, SL_I32, &c->row_ptr), SL_OK);
    ck_assert_int_eq(sl_tensor_convert(ctx, &m->col_idx, SL_I32, &c->col_idx), SL_OK);
    ck_assert_int_eq(sl_tensor_convert(ctx, &m->part, SL_I32, &c->part), SL_OK);
    ck_assert_int_eq(sl_tensor_convert(ctx, &m->bits, SL_U8, &c->bits), SL_OK);
}

/* Replaces one of the mask's tensors with a new one of this dtype and shape. */
static void replace_tensor(sl_ctx *ctx, sl_tensor *t, sl_dtype dt, int ndim, const int64_t *shape)
{
    sl_tensor_release(t);
    ck_assert_int_eq(sl_tensor_zeros(ctx, dt, ndim, shape, t), SL_OK);
}

enum {
    C_UNSORTED, C_DUPLICATE, C_COL_HIGH, C_COL_NEG, C_PART_HIGH, C_PART_NEG, C_RP_DECREASING, C_RP_PAST_NNZ,
    C_RP_END_SHORT, C_RP_START, C_BITS_COLS, C_BITS_ROWS, C_BITS_DTYPE, C_BITS_NDIM, C_RP_SHAPE, C_RP_DTYPE,
    C_LENGTHS, C_HEADS, C__COUNT
};

START_TEST(test_validate_rejects_corruption)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    /* Window 9 and sinks 4 on 40 x 40 in blocks of 8: rows with three
     * entries, full and partial blocks. */
    const pat p = pat2(SL_PAT_WINDOW, 9, SL_PAT_SINK, 4);
    sl_mask m;
    ck_assert_int_eq(sl_mask_from_pattern(ctx, p.t, p.n, 40, 40, 8, 8, &m), SL_OK);
    const int32_t *rp0 = m.row_ptr.data;
    int64_t nnz = m.col_idx.shape[0], n_part = m.bits.shape[0];
    int r3 = -1; /* a block row with at least three entries */
    for (int r = 0; r < m.n_qb && r3 < 0; r++)
        if (rp0[r + 1] - rp0[r] >= 3)
            r3 = r;
    ck_assert_int_ge(r3, 1);
    ck_assert_int_gt(n_part, 0);
    for (int k = 0; k < C__COUNT; k++) {
        sl_mask c;
        clone_mask(ctx, &m, &c);
        ck_assert_int_eq(sl_mask_validate(ctx, &c), SL_OK);
        int32_t *rp = c.row_ptr.data, *col = c.col_idx.data, *part = c.part.data;
        int32_t e = rp[r3];
        sl_status want = SL_EFORMAT;
        switch (k) {
        case C_UNSORTED: {
            int32_t x = col[e];
            col[e] = col[e + 1];
            col[e + 1] = x;
            break;
        }
        case C_DUPLICATE: col[e + 1] = col[e]; break;
        case C_COL_HIGH: col[rp[r3 + 1] - 1] = (int32_t)c.n_kb; break;
        case C_COL_NEG: col[e] = -1; break;
        case C_PART_HIGH: part[e] = (int32_t)n_part; break;
        case C_PART_NEG: part[e] = -2; break;
        case C_RP_DECREASING: rp[r3] = rp[r3 + 1] + 1; break;
        case C_RP_PAST_NNZ: rp[c.n_qb - 1] = (int32_t)nnz + 1; break;
        case C_RP_END_SHORT: rp[c.n_qb] = (int32_t)nnz - 1; break;
        case C_RP_START: rp[0] = 1; break;
        case C_BITS_COLS: replace_tensor(ctx, &c.bits, SL_U8, 3, (int64_t[]){n_part, 8, 9}); want = SL_ESHAPE; break;
        case C_BITS_ROWS: replace_tensor(ctx, &c.bits, SL_U8, 3, (int64_t[]){n_part, 4, 8}); want = SL_ESHAPE; break;
        case C_BITS_DTYPE: replace_tensor(ctx, &c.bits, SL_I32, 3, (int64_t[]){n_part, 8, 8}); want = SL_ESHAPE; break;
        case C_BITS_NDIM: replace_tensor(ctx, &c.bits, SL_U8, 2, (int64_t[]){n_part, 64}); want = SL_ESHAPE; break;
        case C_RP_SHAPE: replace_tensor(ctx, &c.row_ptr, SL_I32, 2, (int64_t[]){1, c.n_qb}); want = SL_ESHAPE; break;
        case C_RP_DTYPE:
            replace_tensor(ctx, &c.row_ptr, SL_F32, 2, (int64_t[]){1, c.n_qb + 1});
            want = SL_ESHAPE;
            break;
        case C_LENGTHS: replace_tensor(ctx, &c.part, SL_I32, 1, (int64_t[]){nnz - 1}); want = SL_ESHAPE; break;
        case C_HEADS: c.n_heads = 2; want = SL_ESHAPE; break;
        default: break;
        }
        sl_ctx_clear_error(ctx);
        sl_status s = sl_mask_validate(ctx, &c);
        ck_assert_msg(s == want, "corruption %d: %s, expected %s", k, sl_status_name(s), sl_status_name(want));
        ck_assert_msg(sl_ctx_error(ctx)[0] != '\0', "corruption %d: no message", k);
        sl_mask_release(&c);
    }
    sl_mask_release(&m);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* The block counts must agree with the sizes: a mask claiming more query
 * rows than its row_ptr covers would send sl_mask_get past the array. */
START_TEST(test_validate_checks_block_counts)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    const pat p = pat1(SL_PAT_CAUSAL, 0);
    sl_mask m;
    ck_assert_int_eq(sl_mask_from_pattern(ctx, p.t, p.n, 4, 32, 2, 8, &m), SL_OK);
    for (int k = 0; k < 4; k++) {
        sl_mask c = m;
        switch (k) {
        case 0: c.n_q = 9; break;  /* 5 query blocks of 2, row_ptr has 2 */
        case 1: c.n_k = 40; break; /* 5 key blocks of 8, mask says 4 */
        case 2: c.bq = 1; break;   /* 4 query blocks of 1 */
        default: c.n_q = 0; break; /* no rows, but blocks */
        }
        sl_ctx_clear_error(ctx);
        sl_status s = sl_mask_validate(ctx, &c);
        ck_assert_msg(s == SL_ESHAPE || s == SL_EFORMAT, "case %d: n_q %lld n_k %lld bq %d bk %d with n_qb %lld n_kb %lld accepted",
                      k, (long long)c.n_q, (long long)c.n_k, c.bq, c.bk, (long long)c.n_qb, (long long)c.n_kb);
    }
    sl_mask_release(&m);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* ---- argument errors ------------------------------------------------------------------------------- */

START_TEST(test_pattern_argument_errors)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    const struct { pat p; int64_t n_q, n_k; int bq, bk; int bad_term; } cases[] = {
        {{1, {TERM(SL_PAT_WINDOW, 0)}}, 8, 8, 4, 4, 1},
        {{1, {TERM(SL_PAT_WINDOW, -3)}}, 8, 8, 4, 4, 1},
        {{2, {TERM(SL_PAT_CAUSAL, 0), TERM(SL_PAT_SINK, -1)}}, 8, 8, 4, 4, 1},
        {{1, {TERM((sl_pattern_kind)SL_PAT__COUNT, 1)}}, 8, 8, 4, 4, 1},
        {{1, {TERM((sl_pattern_kind)-1, 1)}}, 8, 8, 4, 4, 1},
        {{1, {TERM(SL_PAT_CAUSAL, 0)}}, 9, 8, 4, 4, 0},
        {{1, {TERM(SL_PAT_CAUSAL, 0)}}, -1, 8, 4, 4, 0},
        {{1, {TERM(SL_PAT_CAUSAL, 0)}}, 8, -1, 4, 4, 0},
        {{1, {TERM(SL_PAT_CAUSAL, 0)}}, 8, 8, 0, 4, 0},
        {{1, {TERM(SL_PAT_CAUSAL, 0)}}, 8, 8, 4, 0, 0},
        {{1, {TERM(SL_PAT_CAUSAL, 0)}}, 8, 8, -4, 4, 0},
        {{1, {TERM(SL_PAT_CAUSAL, 0)}}, 8, 8, 4097, 4, 0},
        {{1, {TERM(SL_PAT_CAUSAL, 0)}}, 8, 8, 4, 4097, 0},
        {{1, {TERM(SL_PAT_CAUSAL, 0)}}, 8, 8, INT_MAX, INT_MAX, 0},
        /* Key blocks past the i32 index: refused before any allocation. */
        {{1, {TERM(SL_PAT_CAUSAL, 0)}}, 1, INT64_MAX, 1, 1, 0},
        {{1, {TERM(SL_PAT_CAUSAL, 0)}}, 1, INT64_C(1) << 40, 1, 1, 0},
        {{1, {TERM(SL_PAT_CAUSAL, 0)}}, 1, INT64_MAX - 1, 1, 1, 0},
    };
    for (int k = 0; k < N_OF(cases); k++) {
        sl_mask m;
        sl_ctx_clear_error(ctx);
        sl_status s = sl_mask_from_pattern(ctx, cases[k].p.t, cases[k].p.n, cases[k].n_q, cases[k].n_k, cases[k].bq,
                                           cases[k].bk, &m);
        /* A bad term is SL_EARG; bad sizes may be read as a bad argument or
         * as sizes that do not fit (SL_ESHAPE): either is an error. */
        int ok = cases[k].bad_term ? s == SL_EARG : s == SL_EARG || s == SL_ESHAPE;
        ck_assert_msg(ok, "case %d: %s (%s)", k, sl_status_name(s), sl_ctx_error(ctx));
        ck_assert_msg(strncmp(sl_ctx_error(ctx), "sl_mask_from_pattern", 20) == 0, "case %d: message \"%s\"", k,
                      sl_ctx_error(ctx));
        ck_assert_uint_eq(sl_ctx_live_allocs(ctx), 0);
    }
    tu_ctx_done(ctx, &al);
}
END_TEST

/* ---- allocation failure ------------------------------------------------------------------------------ */

START_TEST(test_alloc_failures_from_pattern)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    const pat p = {3, {TERM(SL_PAT_WINDOW, 6), TERM(SL_PAT_SINK, 3), TERM(SL_PAT_SINK, 1)}};
    const geom_case g = {27, 35, 4, 8};
    truth t = truth_of(&p, g.n_q, g.n_k);
    int failures = 0;
    for (long n = 1;; n++) {
        ck_assert_msg(n < 200, "still failing after %ld allocations", n);
        sl_mask m;
        al.fail_at = al.calls + n;
        sl_status s = sl_mask_from_pattern(ctx, p.t, p.n, g.n_q, g.n_k, g.bq, g.bk, &m);
        al.fail_at = 0;
        ck_assert_msg(s == SL_OK || s == SL_ENOMEM, "allocation %ld failing gave %s", n, sl_status_name(s));
        if (s == SL_ENOMEM) {
            failures++;
            ck_assert_msg(sl_ctx_live_allocs(ctx) == 0, "allocation %ld failing left %zu allocations", n,
                          sl_ctx_live_allocs(ctx));
            continue;
        }
        check_mask(ctx, &m, &t, g.bq, g.bk, "after failures");
        sl_mask_release(&m);
        break;
    }
    ck_assert_int_gt(failures, 0);
    truth_free(&t);
    tu_ctx_done(ctx, &al);
}
END_TEST

START_TEST(test_alloc_failures_union)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 5000);
    const geom_case g = {27, 35, 4, 8};
    truth t2 = truth_random(&rng, 2, g.n_q, g.n_k, g.bq, g.bk);
    const pat p = pat2(SL_PAT_WINDOW, 5, SL_PAT_SINK, 2);
    truth t1 = truth_of(&p, g.n_q, g.n_k), want = truth_or(&t2, &t1);
    sl_mask a, b;
    build_mask(ctx, &t2, g.bq, g.bk, &a);
    make_pattern(ctx, &p, &g, &b);
    size_t live = sl_ctx_live_allocs(ctx);
    int failures = 0;
    for (long n = 1;; n++) {
        ck_assert_msg(n < 200, "still failing after %ld allocations", n);
        sl_mask u;
        al.fail_at = al.calls + n;
        sl_status s = sl_mask_union(ctx, &a, &b, &u);
        al.fail_at = 0;
        ck_assert_msg(s == SL_OK || s == SL_ENOMEM, "allocation %ld failing gave %s", n, sl_status_name(s));
        if (s == SL_ENOMEM) {
            failures++;
            ck_assert_msg(sl_ctx_live_allocs(ctx) == live, "allocation %ld failing left %zu allocations", n,
                          sl_ctx_live_allocs(ctx) - live);
            continue;
        }
        check_mask(ctx, &u, &want, g.bq, g.bk, "union after failures");
        sl_mask_release(&u);
        break;
    }
    ck_assert_int_gt(failures, 0);
    sl_mask_release(&a);
    sl_mask_release(&b);
    truth_free(&t1);
    truth_free(&t2);
    truth_free(&want);
    tu_ctx_done(ctx, &al);
}
END_TEST

static Suite *mask_suite(void)
{
    Suite *s = suite_create("mask");
    TCase *tc = tcase_create("mask");
    tcase_set_timeout(tc, 60);
    tcase_add_loop_test(tc, test_pattern_each_kind, 0, N_GEOMS);
    tcase_add_loop_test(tc, test_pattern_unions, 0, N_GEOMS);
    tcase_add_test(tc, test_pattern_edges);
    tcase_add_loop_test(tc, test_union_matches_or, 0, N_GEOMS);
    tcase_add_test(tc, test_partials_covering_a_block);
    tcase_add_test(tc, test_union_heads);
    tcase_add_test(tc, test_union_size_mismatch);
    tcase_add_test(tc, test_validate_rejects_corruption);
    tcase_add_test(tc, test_validate_checks_block_counts);
    tcase_add_test(tc, test_pattern_argument_errors);
    tcase_add_test(tc, test_alloc_failures_from_pattern);
    tcase_add_test(tc, test_alloc_failures_union);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return tu_run(mask_suite()); }
