/* test_sparse_ops.c — the executors over index lists and chosen rows
 * (attn.token_sparse, attn.vs_mixed, attn.rows) and attn.lse_merge on every
 * available backend against ref (sentinel allocator, NaN rejection, ragged
 * sizes, one query, decode offsets, empty lists, bias and state), and their
 * invariants: full index lists and all rows with causal limits equal
 * attn.dense; lse_merge of disjoint key sets equals their union; vs_mixed
 * equals block_sparse merged with the columns it adds; passes chained through
 * their state equal one pass; closed forms (one key gives its value row);
 * and attn.block_sparse's pv_skip option. */
#include "opsutil.h"

/* Index lists from a rule keep(ud, list head, entry, key). */
typedef int (*list_rule)(const void *ud, int64_t h, int64_t e, int64_t j);

static void make_lists(sl_ctx *ctx, int64_t hm, int64_t n_e, int64_t nk, list_rule keep, const void *ud, sl_tensor *rp,
                       sl_tensor *col)
{
    int64_t nnz = 0;
    for (int64_t h = 0; h < hm; h++)
        for (int64_t e = 0; e < n_e; e++)
            for (int64_t j = 0; j < nk; j++)
                nnz += keep(ud, h, e, j) != 0;
    int64_t rs[2] = {hm, n_e + 1}, cs[1] = {nnz};
    ck_assert_int_eq(sl_tensor_new(ctx, SL_I32, 2, rs, rp), SL_OK);
    ck_assert_int_eq(sl_tensor_new(ctx, SL_I32, 1, cs, col), SL_OK);
    int32_t *r = rp->data, *c = col->data, n = 0;
    for (int64_t h = 0; h < hm; h++) {
        for (int64_t e = 0; e < n_e; e++) {
            r[h * (n_e + 1) + e] = n;
            for (int64_t j = 0; j < nk; j++)
                if (keep(ud, h, e, j))
                    c[n++] = (int32_t)j;
        }
        r[h * (n_e + 1) + n_e] = n;
    }
}

static uint64_t mix(uint64_t x)
{
    x ^= x >> 31;
    x *= 0x9e3779b97f4a7c15ULL;
    x ^= x >> 29;
    x *= 0xbf58476d1ce4e5b9ULL;
    return x ^ (x >> 32);
}

/* The rules the tests use: keys kept with probability p (a seeded hash),
 * optionally only causal ones (per row: entry e is row e), optionally only
 * one side of a random split. */
typedef struct rule {
    uint64_t seed;
    double p;           /* 1: every key */
    int64_t b;          /* rows per entry */
    int64_t offset;     /* n_k - n_q */
    int causal;         /* only keys j <= offset + last row of the entry */
    int side;           /* 0: all; 1 or 2: keys whose split hash falls on that side */
    const sl_mask *not_in; /* drop keys this mask keeps at the entry's row (b = 1, head 0) */
} rule;

static int rule_keep(const void *ud, int64_t h, int64_t e, int64_t j)
{
    const rule *r = ud;
    if (r->causal && j > r->offset + (e + 1) * r->b - 1)
        return 0;
    uint64_t x = mix(r->seed ^ mix((uint64_t)h * 1000003u + (uint64_t)e * 7919u + (uint64_t)j));
    if (r->p < 1 && (double)(x >> 11) / 9007199254740992.0 >= r->p)
        return 0;
    if (r->side && (int)(mix(x + 17) & 1) != r->side - 1)
        return 0;
    if (r->not_in && sl_mask_get(r->not_in, 0, e, j))
        return 0;
    return 1;
}

/* Random lists (some entries empty) per row, per query block and per head,
 * shared and per-head list heads, with and without bias and state: every
 * backend against ref. */
START_TEST(test_token_sparse_backends_match_ref)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 8000 + (uint64_t)_i);
    const shape_case *c = &CASES[_i];
    sl_tensor in[8] = {tu_randn(ctx, &rng, c->hq, c->nq, c->d, 1.5), tu_randn(ctx, &rng, c->hkv, c->nk, c->d, 1.5),
                       tu_randn(ctx, &rng, c->hkv, c->nk, c->d, 1.0)};
    sl_tensor bias = tu_randn(ctx, &rng, c->hq, c->nq, c->nk, 1.0);
    sl_tensor st_o = tu_randn(ctx, &rng, c->hq, c->nq, c->d, 1.0), st_l;
    int64_t ls[2] = {c->hq, c->nq};
    ck_assert_int_eq(sl_tensor_new(ctx, SL_F32, 2, ls, &st_l), SL_OK);
    for (int64_t i = 0; i < c->hq * c->nq; i++)
        ((float *)st_l.data)[i] = i % 5 == 0 ? -INFINITY : (float)sl_rng_normal(&rng);
    const int64_t bs[] = {1, 3, 16, c->nq > 0 ? c->nq : 1};
    for (int bi = 0; bi < 4; bi++)
        for (int hm_i = 0; hm_i < 2; hm_i++) {
            int64_t b = bs[bi], hm = hm_i ? c->hq : 1, n_e = (c->nq + b - 1) / b;
            rule r = {.seed = (uint64_t)(bi * 10 + hm_i), .p = 0.3, .b = b, .offset = c->nk - c->nq,
                      .causal = c->causal && b == 1};
            make_lists(ctx, hm, n_e, c->nk, rule_keep, &r, &in[3], &in[4]);
            sl_attn_token_params p = {.rows_per_entry = b, .scale = 0};
            for (int opt = 0; opt < 3; opt++) {
                in[5] = opt == 1 ? bias : (sl_tensor){0};
                in[6] = opt == 2 ? st_o : (sl_tensor){0};
                in[7] = opt == 2 ? st_l : (sl_tensor){0};
                char what[96];
                snprintf(what, sizeof what, "token_sparse case %d b %lld hm %lld opt %d", _i, (long long)b,
                         (long long)hm, opt);
                check_backends(ctx, SL_OP_ATTN_TOKEN_SPARSE, &p, in, what);
            }
            release_n(&in[3], 2);
        }
    release_n(in, 3);
    sl_tensor_release(&bias);
    sl_tensor_release(&st_o);
    sl_tensor_release(&st_l);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* Dense equivalence of the index form: causal per-row lists equal causal
 * attn.dense; all-key lists per row, per query block and per head equal
 * non-causal attn.dense; per-block all-key lists with a causal bias of -1e9
 * equal causal attn.dense. */
START_TEST(test_token_sparse_full_lists_equal_dense)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 8500 + (uint64_t)_i);
    const shape_case *c = &CASES[_i];
    sl_tensor in[8] = {tu_randn(ctx, &rng, c->hq, c->nq, c->d, 1.5), tu_randn(ctx, &rng, c->hkv, c->nk, c->d, 1.5),
                       tu_randn(ctx, &rng, c->hkv, c->nk, c->d, 1.0)};
    sl_tensor dense_c[2], dense_n[2];
    sl_attn_params pc = {.causal = 1, .scale = 0}, pn = {.causal = 0, .scale = 0};
    run_attn(ctx, SL_BACKEND_REF, SL_OP_ATTN_DENSE, &pc, in, dense_c);
    run_attn(ctx, SL_BACKEND_REF, SL_OP_ATTN_DENSE, &pn, in, dense_n);
    int64_t off = c->nk - c->nq;
    const int64_t bs[] = {1, 16, c->nq > 0 ? c->nq : 1};
    for (int bi = 0; bi < 3; bi++)
        for (int causal = 0; causal < 2; causal++) {
            int64_t b = bs[bi], n_e = (c->nq + b - 1) / b;
            rule r = {.p = 1, .b = b, .offset = off, .causal = causal && b == 1};
            make_lists(ctx, 1, n_e, c->nk, rule_keep, &r, &in[3], &in[4]);
            sl_attn_token_params p = {.rows_per_entry = b, .scale = 0};
            sl_tensor bias = {0};
            if (causal && b > 1) {
                bias = tu_randn(ctx, &rng, 1, c->nq, c->nk, 0);
                for (int64_t i = 0; i < c->nq; i++)
                    for (int64_t j = 0; j < c->nk; j++)
                        ((float *)bias.data)[i * c->nk + j] = j > off + i ? -1e9f : 0.f;
            }
            in[5] = bias;
            char what[80];
            snprintf(what, sizeof what, "full lists case %d b %lld causal %d", _i, (long long)b, causal);
            check_equals(ctx, SL_OP_ATTN_TOKEN_SPARSE, &p, in, causal ? dense_c : dense_n, what);
            sl_tensor_release(&bias);
            in[5] = (sl_tensor){0};
            release_n(&in[3], 2);
        }
    release_n(in, 3);
    release_n(dense_c, 2);
    release_n(dense_n, 2);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* Independent math: a one-key list gives O = v of that key and L = its
 * scaled score; an empty list gives O = 0, L = -inf (also with no entries at
 * all); a constant bias c leaves O and adds c to L. */
START_TEST(test_token_sparse_closed_forms)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 8700);
    int64_t hq = 4, hkv = 2, nq = 6, nk = 40, d = 16;
    sl_tensor in[8] = {tu_randn(ctx, &rng, hq, nq, d, 1), tu_randn(ctx, &rng, hkv, nk, d, 1),
                       tu_randn(ctx, &rng, hkv, nk, d, 1)};
    /* one key per row: key 3 * row + head-dependent offset */
    in[3] = i32_tensor(ctx, hq, nq + 1);
    int64_t cs[1] = {hq * nq};
    ck_assert_int_eq(sl_tensor_new(ctx, SL_I32, 1, cs, &in[4]), SL_OK);
    for (int64_t h = 0; h < hq; h++)
        for (int64_t r = 0; r <= nq; r++) {
            ((int32_t *)in[3].data)[h * (nq + 1) + r] = (int32_t)(h * nq + r);
            if (r < nq)
                ((int32_t *)in[4].data)[h * nq + r] = (int32_t)(3 * r + h);
        }
    sl_attn_token_params p = {.rows_per_entry = 1, .scale = 0.5};
    sl_tensor bias = tu_randn(ctx, &rng, 1, nq, nk, 0);
    for (int64_t i = 0; i < nq * nk; i++)
        ((float *)bias.data)[i] = 2.5f;
    for (int b = 0; b < SL_BACKEND__COUNT; b++) {
        if (!sl_backend_available((sl_backend_id)b) || !backend_wanted((sl_backend_id)b))
            continue;
        for (int withb = 0; withb < 2; withb++) {
            in[5] = withb ? bias : (sl_tensor){0};
            sl_tensor out[2];
            sl_status s = sl_op_run(ctx, (sl_backend_id)b, SL_OP_ATTN_TOKEN_SPARSE, &p, in, out);
            if (s == SL_EUNSUPPORTED && b > SL_BACKEND_CPU) {
                printf("SKIP token_sparse closed form on %s: %s\n", sl_backend_name((sl_backend_id)b), sl_ctx_error(ctx));
                continue;
            }
            ck_assert_msg(s == SL_OK, "%s", sl_ctx_error(ctx));
            for (int64_t h = 0; h < hq; h++)
                for (int64_t r = 0; r < nq; r++) {
                    int64_t key = 3 * r + h, g = h / 2;
                    double sc = 0;
                    for (int64_t c = 0; c < d; c++) {
                        sc += (double)tu_at(&in[0], (h * nq + r) * d + c) * tu_at(&in[1], (g * nk + key) * d + c);
                        ck_assert_double_eq_tol(tu_at(&out[0], (h * nq + r) * d + c),
                                                tu_at(&in[2], (g * nk + key) * d + c), 1e-6);
                    }
                    ck_assert_double_eq_tol(tu_at(&out[1], h * nq + r), 0.5 * sc + (withb ? 2.5 : 0), 1e-5);
                }
            release_n(out, 2);
        }
    }
    in[5] = (sl_tensor){0};
    sl_tensor_release(&bias);
    release_n(&in[3], 2);
    /* empty lists: nothing at all, and lists that exist but are empty */
    for (int variant = 0; variant < 2; variant++) {
        rule r = {.p = variant ? 0 : 1, .b = 1};
        if (variant == 0) {
            in[3] = i32_tensor(ctx, 1, nq + 1);
            memset(in[3].data, 0, (size_t)(nq + 1) * sizeof(int32_t));
            int64_t z[1] = {0};
            ck_assert_int_eq(sl_tensor_new(ctx, SL_I32, 1, z, &in[4]), SL_OK);
        } else
            make_lists(ctx, hq, nq, nk, rule_keep, &r, &in[3], &in[4]);
        for (int b = 0; b < SL_BACKEND__COUNT; b++) {
            if (!sl_backend_available((sl_backend_id)b) || !backend_wanted((sl_backend_id)b))
                continue;
            sl_tensor out[2];
            run_attn(ctx, (sl_backend_id)b, SL_OP_ATTN_TOKEN_SPARSE, &p, in, out);
            for (int64_t i = 0; i < sl_tensor_numel(&out[0]); i++)
                ck_assert_msg(tu_at(&out[0], i) == 0.f, "O not zero on %s", sl_backend_name((sl_backend_id)b));
            for (int64_t i = 0; i < sl_tensor_numel(&out[1]); i++)
                ck_assert_msg(isinf(tu_at(&out[1], i)) && tu_at(&out[1], i) < 0, "L not -inf");
            release_n(out, 2);
        }
        release_n(&in[3], 2);
    }
    release_n(in, 3);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* Decode: Nq = 1 .. 4 queries at the end of a long cache, GQA 4:1, lists per
 * row, per query block and per head, list heads 1, Hkv and Hq (the direct
 * path with bundles of heads sharing a list), against ref and dense. */
START_TEST(test_token_sparse_decode)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 8800 + (uint64_t)_i);
    int64_t hq = 8, hkv = 2, nk = 700, d = 64, nq = _i + 1;
    sl_tensor in[8] = {tu_randn(ctx, &rng, hq, nq, d, 1.5), tu_randn(ctx, &rng, hkv, nk, d, 1.5),
                       tu_randn(ctx, &rng, hkv, nk, d, 1.0)};
    const int64_t hms[3] = {1, hkv, hq}, bs[3] = {1, 2, 64};
    for (int hi = 0; hi < 3; hi++)
        for (int bi = 0; bi < 3; bi++) {
            int64_t b = bs[bi], n_e = (nq + b - 1) / b;
            rule r = {.seed = (uint64_t)(hi * 3 + bi), .p = 0.2, .b = b, .offset = nk - nq, .causal = 1};
            make_lists(ctx, hms[hi], n_e, nk, rule_keep, &r, &in[3], &in[4]);
            sl_attn_token_params p = {.rows_per_entry = b, .scale = 0};
            char what[80];
            snprintf(what, sizeof what, "decode nq %lld hm %lld b %lld", (long long)nq, (long long)hms[hi], (long long)b);
            check_backends(ctx, SL_OP_ATTN_TOKEN_SPARSE, &p, in, what);
            release_n(&in[3], 2);
        }
    /* every causal key per row = dense with the decode offset */
    rule all = {.p = 1, .b = 1, .offset = nk - nq, .causal = 1};
    make_lists(ctx, hq, nq, nk, rule_keep, &all, &in[3], &in[4]);
    sl_tensor dense[2];
    sl_attn_params pc = {.causal = 1, .scale = 0};
    run_attn(ctx, SL_BACKEND_REF, SL_OP_ATTN_DENSE, &pc, in, dense);
    sl_attn_token_params p = {.rows_per_entry = 1, .scale = 0};
    check_equals(ctx, SL_OP_ATTN_TOKEN_SPARSE, &p, in, dense, "decode full lists");
    release_n(dense, 2);
    release_n(&in[3], 2);
    release_n(in, 3);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* attn.rows: random rows (any order, repeats) with random limits (0 and Nk
 * included), bias and state, against ref; all rows with causal limits equal
 * attn.dense; limit 1 gives O = v of key 0. */
START_TEST(test_rows)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 9000 + (uint64_t)_i);
    const shape_case *c = &CASES[_i];
    sl_tensor in[8] = {tu_randn(ctx, &rng, c->hq, c->nq, c->d, 1.5), tu_randn(ctx, &rng, c->hkv, c->nk, c->d, 1.5),
                       tu_randn(ctx, &rng, c->hkv, c->nk, c->d, 1.0)};
    int64_t n_out = 2 * c->nq + 3;
    sl_tensor bias = tu_randn(ctx, &rng, 1, c->nq, c->nk, 1.0);
    sl_tensor st_o = tu_randn(ctx, &rng, c->hq, n_out, c->d, 1.0), st_l;
    int64_t ls[2] = {c->hq, n_out};
    ck_assert_int_eq(sl_tensor_new(ctx, SL_F32, 2, ls, &st_l), SL_OK);
    for (int64_t i = 0; i < c->hq * n_out; i++)
        ((float *)st_l.data)[i] = i % 3 == 0 ? -INFINITY : (float)sl_rng_normal(&rng);
    sl_attn_rows_params p = {.scale = 0};
    for (int per_head = 0; per_head < 2; per_head++) {
        int64_t hr = per_head ? c->hq : 1;
        in[3] = i32_tensor(ctx, hr, n_out);
        in[4] = i32_tensor(ctx, hr, n_out);
        for (int64_t i = 0; i < hr * n_out; i++) {
            ((int32_t *)in[3].data)[i] = (int32_t)(sl_rng_next(&rng) % (uint64_t)c->nq);
            int64_t lim = (int64_t)(sl_rng_next(&rng) % (uint64_t)(c->nk + 1));
            ((int32_t *)in[4].data)[i] = (int32_t)(i % 7 == 0 ? 0 : i % 7 == 1 ? c->nk : lim);
        }
        for (int opt = 0; opt < 3; opt++) {
            in[5] = opt == 1 ? bias : (sl_tensor){0};
            in[6] = opt == 2 ? st_o : (sl_tensor){0};
            in[7] = opt == 2 ? st_l : (sl_tensor){0};
            char what[80];
            snprintf(what, sizeof what, "rows case %d hr %lld opt %d", _i, (long long)hr, opt);
            check_backends(ctx, SL_OP_ATTN_ROWS, &p, in, what);
        }
        in[5] = in[6] = in[7] = (sl_tensor){0};
        release_n(&in[3], 2);
    }
    /* all rows, causal (or full) limits = dense */
    in[3] = i32_tensor(ctx, 1, c->nq);
    in[4] = i32_tensor(ctx, 1, c->nq);
    for (int64_t r = 0; r < c->nq; r++) {
        ((int32_t *)in[3].data)[r] = (int32_t)r;
        ((int32_t *)in[4].data)[r] = (int32_t)(c->causal ? c->nk - c->nq + r + 1 : c->nk);
    }
    sl_tensor dense[2];
    sl_attn_params pd = {.causal = c->causal, .scale = 0};
    run_attn(ctx, SL_BACKEND_REF, SL_OP_ATTN_DENSE, &pd, in, dense);
    check_equals(ctx, SL_OP_ATTN_ROWS, &p, in, dense, "rows = dense");
    release_n(dense, 2);
    /* limit 1: O = v[0] */
    for (int64_t r = 0; r < c->nq; r++)
        ((int32_t *)in[4].data)[r] = 1;
    sl_tensor out[2];
    run_attn(ctx, SL_BACKEND_CPU, SL_OP_ATTN_ROWS, &p, in, out);
    for (int64_t h = 0; h < c->hq; h++)
        for (int64_t r = 0; r < c->nq; r++)
            for (int64_t x = 0; x < c->d; x++)
                ck_assert_double_eq_tol(tu_at(&out[0], (h * c->nq + r) * c->d + x),
                                        tu_at(&in[2], (h / (c->hq / c->hkv)) * c->nk * c->d + x), 1e-6);
    release_n(out, 2);
    release_n(&in[3], 2);
    release_n(in, 3);
    sl_tensor_release(&bias);
    sl_tensor_release(&st_o);
    sl_tensor_release(&st_l);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* lse_merge: closed forms with infinities, and the union invariant: two
 * token_sparse passes over a random split of the causal keys merge into
 * attn.dense, and over a random split of random keys into token_sparse over
 * their union. */
START_TEST(test_lse_merge)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 9500 + (uint64_t)_i);
    /* closed forms, [3 rows, 2 dims] */
    {
        int64_t so[2] = {3, 2}, sl[1] = {3};
        sl_tensor m[4];
        ck_assert_int_eq(sl_tensor_new(ctx, SL_F32, 2, so, &m[0]), SL_OK);
        ck_assert_int_eq(sl_tensor_new(ctx, SL_F32, 1, sl, &m[1]), SL_OK);
        ck_assert_int_eq(sl_tensor_new(ctx, SL_F32, 2, so, &m[2]), SL_OK);
        ck_assert_int_eq(sl_tensor_new(ctx, SL_F32, 1, sl, &m[3]), SL_OK);
        const float o1[6] = {1, 2, 3, 4, 5, 6}, o2[6] = {-1, 0, 7, 8, 9, 10};
        const float l1[3] = {0.f, -INFINITY, -INFINITY}, l2[3] = {logf(3.f), 1.5f, -INFINITY};
        memcpy(m[0].data, o1, sizeof o1);
        memcpy(m[1].data, l1, sizeof l1);
        memcpy(m[2].data, o2, sizeof o2);
        memcpy(m[3].data, l2, sizeof l2);
        for (int b = 0; b < SL_BACKEND__COUNT; b++) {
            if (!sl_backend_available((sl_backend_id)b) || !backend_wanted((sl_backend_id)b))
                continue;
            sl_tensor out[2];
            run_attn(ctx, (sl_backend_id)b, SL_OP_ATTN_LSE_MERGE, NULL, m, out);
            ck_assert_double_eq_tol(tu_at(&out[0], 0), 0.25 * 1 + 0.75 * -1, 1e-6);
            ck_assert_double_eq_tol(tu_at(&out[0], 1), 0.25 * 2 + 0.75 * 0, 1e-6);
            ck_assert_double_eq_tol(tu_at(&out[1], 0), log(4.0), 1e-6);
            ck_assert(tu_at(&out[0], 2) == 7.f && tu_at(&out[0], 3) == 8.f && tu_at(&out[1], 1) == 1.5f);
            ck_assert(tu_at(&out[0], 4) == 0.f && tu_at(&out[0], 5) == 0.f);
            ck_assert(isinf(tu_at(&out[1], 2)) && tu_at(&out[1], 2) < 0);
            release_n(out, 2);
        }
        release_n(m, 4);
    }
    const shape_case *c = &CASES[_i];
    sl_tensor in[8] = {tu_randn(ctx, &rng, c->hq, c->nq, c->d, 1.5), tu_randn(ctx, &rng, c->hkv, c->nk, c->d, 1.5),
                       tu_randn(ctx, &rng, c->hkv, c->nk, c->d, 1.0)};
    sl_tensor dense[2];
    sl_attn_params pd = {.causal = c->causal, .scale = 0};
    run_attn(ctx, SL_BACKEND_REF, SL_OP_ATTN_DENSE, &pd, in, dense);
    sl_attn_token_params p = {.rows_per_entry = 1, .scale = 0};
    for (int b = 0; b < SL_BACKEND__COUNT; b++) {
        if (!sl_backend_available((sl_backend_id)b) || !backend_wanted((sl_backend_id)b))
            continue;
        for (int random_keys = 0; random_keys < 2; random_keys++) {
            sl_tensor part[2][2], un[2], merged[2];
            double pk = random_keys ? 0.4 : 1;
            for (int side = 1; side <= 2; side++) {
                rule r = {.seed = 5, .p = pk, .b = 1, .offset = c->nk - c->nq, .causal = c->causal, .side = side};
                make_lists(ctx, c->hq, c->nq, c->nk, rule_keep, &r, &in[3], &in[4]);
                run_attn(ctx, (sl_backend_id)b, SL_OP_ATTN_TOKEN_SPARSE, &p, in, part[side - 1]);
                release_n(&in[3], 2);
            }
            rule r = {.seed = 5, .p = pk, .b = 1, .offset = c->nk - c->nq, .causal = c->causal};
            make_lists(ctx, c->hq, c->nq, c->nk, rule_keep, &r, &in[3], &in[4]);
            run_attn(ctx, SL_BACKEND_REF, SL_OP_ATTN_TOKEN_SPARSE, &p, in, un);
            release_n(&in[3], 2);
            sl_tensor m[4] = {part[0][0], part[0][1], part[1][0], part[1][1]};
            run_attn(ctx, (sl_backend_id)b, SL_OP_ATTN_LSE_MERGE, NULL, m, merged);
            char what[80];
            snprintf(what, sizeof what, "merge case %d on %s", _i, sl_backend_name((sl_backend_id)b));
            assert_attn_close(&merged[0], &merged[1], random_keys ? &un[0] : &dense[0], random_keys ? &un[1] : &dense[1],
                              what);
            release_n(m, 4);
            release_n(un, 2);
            release_n(merged, 2);
        }
    }
    release_n(dense, 2);
    release_n(in, 3);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* Continue-from-state: passes over disjoint key sets chained through
 * (O, L) equal one pass over their union — token_sparse then token_sparse,
 * token_sparse (far keys) then rows (near keys), and an empty first pass. */
START_TEST(test_state_chaining)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 9700 + (uint64_t)_i);
    const shape_case *c = &CASES[_i];
    sl_tensor in[8] = {tu_randn(ctx, &rng, c->hq, c->nq, c->d, 1.5), tu_randn(ctx, &rng, c->hkv, c->nk, c->d, 1.5),
                       tu_randn(ctx, &rng, c->hkv, c->nk, c->d, 1.0)};
    sl_attn_token_params p = {.rows_per_entry = 1, .scale = 0};
    for (int b = 0; b < SL_BACKEND__COUNT; b++) {
        if (!sl_backend_available((sl_backend_id)b) || !backend_wanted((sl_backend_id)b))
            continue;
        sl_tensor first[2], chained[2], whole[2];
        rule r1 = {.seed = 9, .p = 0.5, .b = 1, .offset = c->nk - c->nq, .causal = c->causal, .side = 1};
        make_lists(ctx, 1, c->nq, c->nk, rule_keep, &r1, &in[3], &in[4]);
        run_attn(ctx, (sl_backend_id)b, SL_OP_ATTN_TOKEN_SPARSE, &p, in, first);
        release_n(&in[3], 2);
        rule r2 = r1;
        r2.side = 2;
        make_lists(ctx, 1, c->nq, c->nk, rule_keep, &r2, &in[3], &in[4]);
        in[6] = first[0];
        in[7] = first[1];
        sl_status s = sl_op_run(ctx, (sl_backend_id)b, SL_OP_ATTN_TOKEN_SPARSE, &p, in, chained);
        in[6] = in[7] = (sl_tensor){0};
        release_n(&in[3], 2);
        if (s == SL_EUNSUPPORTED && b > SL_BACKEND_CPU) {
            printf("SKIP token_sparse chained state on %s: %s\n", sl_backend_name((sl_backend_id)b), sl_ctx_error(ctx));
            release_n(first, 2);
            continue;
        }
        ck_assert_msg(s == SL_OK, "%s", sl_ctx_error(ctx));
        rule r3 = r1;
        r3.side = 0;
        make_lists(ctx, 1, c->nq, c->nk, rule_keep, &r3, &in[3], &in[4]);
        run_attn(ctx, SL_BACKEND_REF, SL_OP_ATTN_TOKEN_SPARSE, &p, in, whole);
        release_n(&in[3], 2);
        assert_attn_close(&chained[0], &chained[1], &whole[0], &whole[1], "token_sparse chained");
        release_n(chained, 2);
        release_n(whole, 2);
        release_n(first, 2);

        /* far keys [0, split) by token_sparse, then rows over [split, ...) is
         * not expressible (rows start at 0), so: keys [h0, end) first by
         * token_sparse, then rows over [0, h0) from that state. */
        int64_t off = c->nk - c->nq;
        rule far = {.p = 1, .b = 1, .offset = off, .causal = c->causal};
        (void)far;
        sl_tensor rp = i32_tensor(ctx, 1, c->nq + 1), col;
        int64_t nnz = 0;
        int32_t *rpd = rp.data;
        for (int64_t r = 0; r < c->nq; r++) {
            int64_t end = c->causal ? off + r + 1 : c->nk, h0 = end / 2;
            rpd[r] = (int32_t)nnz;
            nnz += end - h0;
        }
        rpd[c->nq] = (int32_t)nnz;
        int64_t cs[1] = {nnz};
        ck_assert_int_eq(sl_tensor_new(ctx, SL_I32, 1, cs, &col), SL_OK);
        for (int64_t r = 0, n = 0; r < c->nq; r++) {
            int64_t end = c->causal ? off + r + 1 : c->nk;
            for (int64_t j = end / 2; j < end; j++)
                ((int32_t *)col.data)[n++] = (int32_t)j;
        }
        in[3] = rp;
        in[4] = col;
        run_attn(ctx, (sl_backend_id)b, SL_OP_ATTN_TOKEN_SPARSE, &p, in, first);
        release_n(&in[3], 2);
        in[3] = i32_tensor(ctx, 1, c->nq);
        in[4] = i32_tensor(ctx, 1, c->nq);
        for (int64_t r = 0; r < c->nq; r++) {
            ((int32_t *)in[3].data)[r] = (int32_t)r;
            ((int32_t *)in[4].data)[r] = (int32_t)((c->causal ? off + r + 1 : c->nk) / 2);
        }
        in[6] = first[0];
        in[7] = first[1];
        sl_attn_rows_params pr = {.scale = 0};
        run_attn(ctx, (sl_backend_id)b, SL_OP_ATTN_ROWS, &pr, in, chained);
        in[6] = in[7] = (sl_tensor){0};
        release_n(&in[3], 2);
        sl_attn_params pd = {.causal = c->causal, .scale = 0};
        run_attn(ctx, SL_BACKEND_REF, SL_OP_ATTN_DENSE, &pd, in, whole);
        assert_attn_close(&chained[0], &chained[1], &whole[0], &whole[1], "token_sparse then rows");
        release_n(chained, 2);
        release_n(whole, 2);
        release_n(first, 2);
    }
    release_n(in, 3);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* attn.vs_mixed: window ∪ sink blocks plus random columns (some inside kept
 * blocks) against ref on every backend, with bias and state; equal to
 * lse_merge(block_sparse(blocks), token_sparse(columns the blocks miss));
 * empty lists equal block_sparse; a causal mask with causal columns equals
 * attn.dense (every column is a duplicate). */
START_TEST(test_vs_mixed)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 9900 + (uint64_t)_i);
    /* hq, hkv, nq, bq, bk, d: blocks shorter and longer than a CUDA key tile, decode offset */
    const int geo[4][6] = {{2, 1, 203, 16, 32, 32}, {4, 2, 100, 7, 13, 32}, {2, 2, 5, 64, 8, 32}, {4, 1, 150, 32, 40, 72}};
    int64_t hq = geo[_i][0], hkv = geo[_i][1], nq = geo[_i][2], nk = nq + (_i == 2 ? 150 : 0), d = geo[_i][5];
    int bq = geo[_i][3], bk = geo[_i][4];
    sl_tensor in[12] = {tu_randn(ctx, &rng, hq, nq, d, 1.5), tu_randn(ctx, &rng, hkv, nk, d, 1.5),
                        tu_randn(ctx, &rng, hkv, nk, d, 1.0)};
    sl_pattern_term terms[2] = {{.kind = SL_PAT_WINDOW, .a = 21}, {.kind = SL_PAT_SINK, .a = 3}};
    sl_mask m;
    ck_assert_int_eq(sl_mask_from_pattern(ctx, terms, 2, nq, nk, bq, bk, &m), SL_OK);
    sl_mask_inputs(&m, &in[0], &in[1], &in[2], in);
    int64_t n_qb = (nq + bq - 1) / bq;
    rule cols = {.seed = 3, .p = 0.15, .b = bq};
    make_lists(ctx, hq, n_qb, nk, rule_keep, &cols, &in[7], &in[8]);
    sl_attn_vs_params p = {.bq = bq, .bk = bk, .scale = 0};
    sl_tensor bias = tu_randn(ctx, &rng, hq, nq, nk, 1.0), st_o = tu_randn(ctx, &rng, hq, nq, d, 1.0), st_l;
    int64_t ls[2] = {hq, nq};
    ck_assert_int_eq(sl_tensor_new(ctx, SL_F32, 2, ls, &st_l), SL_OK);
    for (int64_t i = 0; i < hq * nq; i++)
        ((float *)st_l.data)[i] = i % 4 == 0 ? -INFINITY : (float)sl_rng_normal(&rng);
    for (int opt = 0; opt < 3; opt++) {
        in[9] = opt == 1 ? bias : (sl_tensor){0};
        in[10] = opt == 2 ? st_o : (sl_tensor){0};
        in[11] = opt == 2 ? st_l : (sl_tensor){0};
        char what[64];
        snprintf(what, sizeof what, "vs_mixed geo %d opt %d", _i, opt);
        check_backends(ctx, SL_OP_ATTN_VS_MIXED, &p, in, what);
    }
    in[9] = in[10] = in[11] = (sl_tensor){0};
    /* = lse_merge(block_sparse, token_sparse over the columns the blocks miss) */
    sl_tensor bs_out[2], ts_out[2], want[2];
    sl_attn_block_params pb = {.bq = bq, .bk = bk, .scale = 0};
    run_attn(ctx, SL_BACKEND_REF, SL_OP_ATTN_BLOCK_SPARSE, &pb, in, bs_out);
    sl_tensor tin[8] = {in[0], in[1], in[2]};
    /* per-row lists: the query block's columns minus the pairs the mask keeps */
    {
        int64_t nnz = 0;
        for (int pass = 0; pass < 2; pass++) {
            nnz = 0;
            for (int64_t h = 0; h < hq; h++)
                for (int64_t r = 0; r < nq; r++) {
                    if (pass)
                        ((int32_t *)tin[3].data)[h * (nq + 1) + r] = (int32_t)nnz;
                    const int32_t *lrp = (const int32_t *)in[7].data + h * (n_qb + 1);
                    for (int32_t e = lrp[r / bq]; e < lrp[r / bq + 1]; e++) {
                        int32_t j = ((const int32_t *)in[8].data)[e];
                        if (sl_mask_get(&m, 0, r, j))
                            continue;
                        if (pass)
                            ((int32_t *)tin[4].data)[nnz] = j;
                        nnz++;
                    }
                    if (pass && r == nq - 1)
                        ((int32_t *)tin[3].data)[h * (nq + 1) + nq] = (int32_t)nnz;
                }
            if (!pass) {
                tin[3] = i32_tensor(ctx, hq, nq + 1);
                int64_t cs[1] = {nnz};
                ck_assert_int_eq(sl_tensor_new(ctx, SL_I32, 1, cs, &tin[4]), SL_OK);
            }
        }
    }
    sl_attn_token_params pt = {.rows_per_entry = 1, .scale = 0};
    run_attn(ctx, SL_BACKEND_REF, SL_OP_ATTN_TOKEN_SPARSE, &pt, tin, ts_out);
    sl_tensor mi[4] = {bs_out[0], bs_out[1], ts_out[0], ts_out[1]};
    run_attn(ctx, SL_BACKEND_REF, SL_OP_ATTN_LSE_MERGE, NULL, mi, want);
    check_equals(ctx, SL_OP_ATTN_VS_MIXED, &p, in, want, "vs_mixed = merge(blocks, columns)");
    release_n(want, 2);
    release_n(ts_out, 2);
    release_n(&tin[3], 2);
    /* empty lists = block_sparse */
    release_n(&in[7], 2);
    rule none = {.p = 0, .b = bq};
    make_lists(ctx, 1, n_qb, nk, rule_keep, &none, &in[7], &in[8]);
    check_equals(ctx, SL_OP_ATTN_VS_MIXED, &p, in, bs_out, "vs_mixed, empty lists = block_sparse");
    release_n(bs_out, 2);
    release_n(&in[7], 2);
    sl_mask_release(&m);
    /* causal mask + causal columns = dense */
    ck_assert_int_eq(sl_mask_from_pattern(ctx, &(sl_pattern_term){.kind = SL_PAT_CAUSAL}, 1, nq, nk, bq, bk, &m), SL_OK);
    sl_mask_inputs(&m, &in[0], &in[1], &in[2], in);
    rule causal_cols = {.seed = 4, .p = 0.3, .b = 1, .offset = nk - nq, .causal = 1};
    p.bq = 1; /* one row per entry: bq of a 1-row-block mask */
    sl_mask_release(&m);
    ck_assert_int_eq(sl_mask_from_pattern(ctx, &(sl_pattern_term){.kind = SL_PAT_CAUSAL}, 1, nq, nk, 1, bk, &m), SL_OK);
    sl_mask_inputs(&m, &in[0], &in[1], &in[2], in);
    make_lists(ctx, hq, nq, nk, rule_keep, &causal_cols, &in[7], &in[8]);
    sl_tensor dense[2];
    sl_attn_params pd = {.causal = 1, .scale = 0};
    run_attn(ctx, SL_BACKEND_REF, SL_OP_ATTN_DENSE, &pd, in, dense);
    check_equals(ctx, SL_OP_ATTN_VS_MIXED, &p, in, dense, "vs_mixed, causal mask + causal columns = dense");
    release_n(dense, 2);
    release_n(&in[7], 2);
    sl_mask_release(&m);
    sl_tensor_release(&bias);
    sl_tensor_release(&st_o);
    sl_tensor_release(&st_l);
    release_n(in, 3);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* pv_skip: every backend matches ref (blocks shorter than, equal to and
 * longer than a CUDA key tile, ragged last blocks, one run of kept blocks
 * per row and scattered runs with partial blocks); L never changes; a huge
 * threshold changes nothing; and a hand-made case: keys scoring 10 and 0 in
 * blocks of one key with pv_skip 5 drop the second value,
 * O = v0 e^10 / (e^10 + 1), on every backend. */
START_TEST(test_pv_skip)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 9950);
    sl_mask m;
    const int geo[3][6] = {{4, 2, 150, 32, 16, 8}, {2, 1, 203, 72, 32, 40}, {2, 2, 130, 64, 64, 64}}; /* hq hkv n d bq bk */
    for (int gi = 0; gi < 3; gi++) {
        int64_t hq = geo[gi][0], hkv = geo[gi][1], n = geo[gi][2], d = geo[gi][3];
        sl_tensor in[7] = {tu_randn(ctx, &rng, hq, n, d, 3), tu_randn(ctx, &rng, hkv, n, d, 3),
                           tu_randn(ctx, &rng, hkv, n, d, 1.0)};
        /* geo 0 causal (one run of blocks per row); the others every third
         * key block, a window and sinks: scattered runs, partial blocks */
        sl_pattern_term terms[3] = {{.kind = SL_PAT_STRIDED, .a = 3, .unit = geo[gi][5]},
                                    {.kind = SL_PAT_WINDOW, .a = 20}, {.kind = SL_PAT_SINK, .a = 2}};
        if (gi == 0)
            mask_of(ctx, SL_PAT_CAUSAL, 0, n, n, geo[gi][4], geo[gi][5], &m);
        else
            ck_assert_int_eq(sl_mask_from_pattern(ctx, terms, 3, n, n, geo[gi][4], geo[gi][5], &m), SL_OK);
        sl_mask_inputs(&m, &in[0], &in[1], &in[2], in);
        sl_attn_block_params p0 = {.bq = geo[gi][4], .bk = geo[gi][5], .scale = 0, .pv_skip = 0};
        sl_tensor plain[2];
        run_attn(ctx, SL_BACKEND_REF, SL_OP_ATTN_BLOCK_SPARSE, &p0, in, plain);
        const double lambdas[3] = {1.0, 4.0, 1e4};
        for (int li = 0; li < 3; li++) {
            sl_attn_block_params p = p0;
            p.pv_skip = lambdas[li];
            char what[64];
            snprintf(what, sizeof what, "pv_skip %g geo %d", lambdas[li], gi);
            check_backends(ctx, SL_OP_ATTN_BLOCK_SPARSE, &p, in, what);
            sl_tensor out[2];
            run_attn(ctx, SL_BACKEND_CPU, SL_OP_ATTN_BLOCK_SPARSE, &p, in, out);
            int64_t changed = 0;
            for (int64_t i = 0; i < hq * n; i++)
                ck_assert_double_eq_tol(tu_at(&out[1], i), tu_at(&plain[1], i), 1e-5 * fmax(1, fabs(tu_at(&plain[1], i))));
            for (int64_t i = 0; i < hq * n * d; i++)
                changed += fabs(tu_at(&out[0], i) - tu_at(&plain[0], i)) > 1e-4;
            if (lambdas[li] > 100)
                ck_assert_int_eq(changed, 0);
            else
                ck_assert_msg(changed > 0, "%s skipped nothing", what);
            release_n(out, 2);
        }
        release_n(plain, 2);
        sl_mask_release(&m);
        release_n(in, 3);
    }
    /* by hand */
    sl_tensor h[7] = {tu_randn(ctx, &rng, 1, 1, 1, 0), tu_randn(ctx, &rng, 1, 2, 1, 0), tu_randn(ctx, &rng, 1, 2, 1, 0)};
    ((float *)h[0].data)[0] = 1;
    ((float *)h[1].data)[0] = 10, ((float *)h[1].data)[1] = 0;
    ((float *)h[2].data)[0] = 2, ((float *)h[2].data)[1] = 7;
    mask_of(ctx, SL_PAT_FULL, 0, 1, 2, 1, 1, &m);
    sl_mask_inputs(&m, &h[0], &h[1], &h[2], h);
    sl_attn_block_params ph = {.bq = 1, .bk = 1, .scale = 1, .pv_skip = 5};
    for (int b = 0; b < SL_BACKEND__COUNT; b++) {
        if (!backend_wanted((sl_backend_id)b) || !sl_backend_available((sl_backend_id)b))
            continue;
        sl_tensor out[2];
        run_attn(ctx, (sl_backend_id)b, SL_OP_ATTN_BLOCK_SPARSE, &ph, h, out);
        ck_assert_double_eq_tol(tu_at(&out[0], 0), 2 * exp(10) / (exp(10) + 1), 1e-5);
        ck_assert_double_eq_tol(tu_at(&out[1], 0), log(exp(10) + 1), 1e-5);
        release_n(out, 2);
    }
    sl_mask_release(&m);
    release_n(h, 3);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* Malformed index lists, rows, limits, options and log-sum-exps are
 * rejected with a message that starts with the op name. */
START_TEST(test_sparse_validation)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 9990);
    int64_t hq = 4, nq = 6, nk = 20, d = 8;
    sl_tensor in[8] = {tu_randn(ctx, &rng, hq, nq, d, 1), tu_randn(ctx, &rng, 2, nk, d, 1),
                       tu_randn(ctx, &rng, 2, nk, d, 1)};
    rule r = {.p = 0.5, .b = 1};
    make_lists(ctx, hq, nq, nk, rule_keep, &r, &in[3], &in[4]);
    sl_attn_token_params p = {.rows_per_entry = 1, .scale = 0};
    sl_tensor out[2] = {{0}};
#define EXPECT(op, params, st, text)                                                                         \
    do {                                                                                                     \
        ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_CPU, op, params, in, out), st);                           \
        ck_assert_msg(strncmp(sl_ctx_error(ctx), sl_op_info_get(op)->name, strlen(sl_op_info_get(op)->name)) == 0, \
                      "%s", sl_ctx_error(ctx));                                                              \
        ck_assert_msg(strstr(sl_ctx_error(ctx), text), "%s", sl_ctx_error(ctx));                            \
        ck_assert_ptr_null(out[0].buf);                                                                      \
    } while (0)
    ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_ATTN_TOKEN_SPARSE, &p, in, out), SL_OK);
    release_n(out, 2);
    int32_t *col = in[4].data, *rp = in[3].data;
    int32_t save = col[1];
    col[1] = col[0]; /* duplicate */
    EXPECT(SL_OP_ATTN_TOKEN_SPARSE, &p, SL_EFORMAT, "sorted");
    col[1] = (int32_t)nk; /* out of range */
    EXPECT(SL_OP_ATTN_TOKEN_SPARSE, &p, SL_EFORMAT, "sorted, unique and in [0, 20)");
    col[1] = save;
    rp[2] += 1000; /* past nnz */
    EXPECT(SL_OP_ATTN_TOKEN_SPARSE, &p, SL_EFORMAT, "monotone");
    rp[2] -= 1000;
    p.rows_per_entry = 2; /* row_ptr made for 1 */
    EXPECT(SL_OP_ATTN_TOKEN_SPARSE, &p, SL_ESHAPE, "idx.row_ptr must be");
    p.rows_per_entry = 1;
    sl_tensor bad_bias = tu_randn(ctx, &rng, 2, nq, nk, 1);
    in[5] = bad_bias;
    EXPECT(SL_OP_ATTN_TOKEN_SPARSE, &p, SL_ESHAPE, "opt.bias");
    in[5] = (sl_tensor){0};
    in[6] = tu_randn(ctx, &rng, hq, nq, d, 1);
    EXPECT(SL_OP_ATTN_TOKEN_SPARSE, &p, SL_EARG, "state.o");
    sl_tensor_release(&in[6]);
    sl_tensor_release(&bad_bias);
    release_n(&in[3], 2);
    /* list heads that do not divide Hq */
    make_lists(ctx, 3, nq, nk, rule_keep, &r, &in[3], &in[4]);
    EXPECT(SL_OP_ATTN_TOKEN_SPARSE, &p, SL_ESHAPE, "divisor");
    release_n(&in[3], 2);
    /* rows and limits */
    sl_attn_rows_params pr = {.scale = 0};
    in[3] = i32_tensor(ctx, 1, 3);
    in[4] = i32_tensor(ctx, 1, 3);
    int32_t rows[3] = {0, 5, 2}, lim[3] = {1, 20, 3};
    memcpy(in[3].data, rows, sizeof rows);
    memcpy(in[4].data, lim, sizeof lim);
    ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_ATTN_ROWS, &pr, in, out), SL_OK);
    release_n(out, 2);
    ((int32_t *)in[3].data)[1] = (int32_t)nq;
    EXPECT(SL_OP_ATTN_ROWS, &pr, SL_EARG, "rows[1]");
    ((int32_t *)in[3].data)[1] = 5;
    ((int32_t *)in[4].data)[2] = (int32_t)nk + 1;
    EXPECT(SL_OP_ATTN_ROWS, &pr, SL_EARG, "limits[2]");
    release_n(&in[3], 2);
    in[3] = i32_tensor(ctx, 2, 3);
    in[4] = i32_tensor(ctx, 2, 3);
    EXPECT(SL_OP_ATTN_ROWS, &pr, SL_ESHAPE, "rows and limits");
    release_n(&in[3], 2);
    /* lse_merge: +inf and NaN in lse, mismatched shapes */
    int64_t sl1[1] = {4}, so1[2] = {4, 3};
    sl_tensor m[4];
    ck_assert_int_eq(sl_tensor_zeros(ctx, SL_F32, 2, so1, &m[0]), SL_OK);
    ck_assert_int_eq(sl_tensor_zeros(ctx, SL_F32, 1, sl1, &m[1]), SL_OK);
    ck_assert_int_eq(sl_tensor_zeros(ctx, SL_F32, 2, so1, &m[2]), SL_OK);
    ck_assert_int_eq(sl_tensor_zeros(ctx, SL_F32, 1, sl1, &m[3]), SL_OK);
    sl_tensor keep[3] = {in[0], in[1], in[2]};
    memcpy(in, m, sizeof m);
    ((float *)m[1].data)[2] = INFINITY;
    EXPECT(SL_OP_ATTN_LSE_MERGE, NULL, SL_EARG, "+inf");
    ((float *)m[1].data)[2] = NAN;
    EXPECT(SL_OP_ATTN_LSE_MERGE, NULL, SL_EARG, "NaN");
    ((float *)m[1].data)[2] = -INFINITY;
    ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_ATTN_LSE_MERGE, NULL, in, out), SL_OK);
    release_n(out, 2);
    in[3] = m[1].ndim ? keep[0] : m[3];
    EXPECT(SL_OP_ATTN_LSE_MERGE, NULL, SL_ESHAPE, "o2 and lse2");
#undef EXPECT
    release_n(m, 4);
    release_n(keep, 3);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* K and V are checked for NaN only where the lists read them: a NaN or an
 * infinity in a listed row is SL_EARG on every backend (direct and gather
 * paths), one in an unlisted row changes nothing. */
START_TEST(test_token_sparse_nan_in_read_rows)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 9980);
    int64_t hq = 2, nq = 24, nk = 50, d = 16;
    sl_tensor in[8] = {tu_randn(ctx, &rng, hq, nq, d, 1), tu_randn(ctx, &rng, 1, nk, d, 1),
                       tu_randn(ctx, &rng, 1, nk, d, 1)};
    /* every list holds the even keys only */
    for (int path = 0; path < 2; path++) {
        int64_t b = path ? nq : 1, n_e = (nq + b - 1) / b;
        in[3] = i32_tensor(ctx, 1, n_e + 1);
        int64_t cs[1] = {n_e * (nk / 2)};
        ck_assert_int_eq(sl_tensor_new(ctx, SL_I32, 1, cs, &in[4]), SL_OK);
        for (int64_t e = 0; e <= n_e; e++)
            ((int32_t *)in[3].data)[e] = (int32_t)(e * (nk / 2));
        for (int64_t i = 0; i < cs[0]; i++)
            ((int32_t *)in[4].data)[i] = (int32_t)(2 * (i % (nk / 2)));
        sl_attn_token_params p = {.rows_per_entry = b, .scale = 0};
        for (int b_ = 0; b_ < SL_BACKEND__COUNT; b_++) {
            if (!sl_backend_available((sl_backend_id)b_) || !backend_wanted((sl_backend_id)b_))
                continue;
            for (int which = 1; which <= 2; which++)
                for (int row = 7; row <= 8; row++) {
                    float *x = (float *)in[which].data + row * d + 3;
                    float save = *x;
                    for (int bad = 0; bad < 2; bad++) {
                        *x = bad ? INFINITY : NAN;
                        sl_tensor out[2] = {{0}};
                        sl_status s = sl_op_run(ctx, (sl_backend_id)b_, SL_OP_ATTN_TOKEN_SPARSE, &p, in, out);
                        if (row % 2) {
                            ck_assert_msg(s == SL_OK, "unread row %d: %s", row, sl_ctx_error(ctx));
                            release_n(out, 2);
                        } else {
                            ck_assert_msg(s == SL_EARG, "%s path %d which %d bad %d: status %d", sl_backend_name((sl_backend_id)b_),
                                          path, which, bad, s);
                            ck_assert_ptr_nonnull(strstr(sl_ctx_error(ctx), "attn.token_sparse: input 'k' or 'v'"));
                            ck_assert_ptr_null(out[0].buf);
                        }
                    }
                    *x = save;
                }
        }
        release_n(&in[3], 2);
    }
    release_n(in, 3);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* Every failing allocation inside the new executors leaves nothing behind. */
START_TEST(test_sparse_alloc_failures_leak_nothing)
{
    sl_rng rng;
    for (long fail = 1; fail < 40; fail++) {
        tu_alloc al;
        sl_ctx *ctx = tu_ctx(&al);
        sl_rng_seed(&rng, 9999);
        sl_tensor in[8] = {tu_randn(ctx, &rng, 2, 20, 8, 1), tu_randn(ctx, &rng, 2, 20, 8, 1),
                           tu_randn(ctx, &rng, 2, 20, 8, 1)};
        rule r = {.p = 0.5, .b = 4};
        make_lists(ctx, 2, 5, 20, rule_keep, &r, &in[3], &in[4]);
        in[6] = tu_randn(ctx, &rng, 2, 20, 8, 1);
        in[7] = tu_randn(ctx, &rng, 1, 2, 20, 1);
        in[7].ndim = 2, in[7].shape[0] = 2, in[7].shape[1] = 20, in[7].stride[0] = 20, in[7].stride[1] = 1;
        sl_tensor half; /* a strided state.o forces a conversion (one more allocation) */
        ck_assert_int_eq(sl_tensor_narrow(ctx, &in[6], 2, 0, 8, &half), SL_OK);
        al.fail_at = al.calls + fail;
        sl_attn_token_params p = {.rows_per_entry = 4, .scale = 0};
        sl_tensor out[2] = {{0}};
        sl_status s = sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_ATTN_TOKEN_SPARSE, &p, in, out);
        ck_assert(s == SL_OK || s == SL_ENOMEM);
        if (s == SL_OK)
            release_n(out, 2);
        al.fail_at = 0;
        sl_tensor_release(&half);
        release_n(in, 8);
        tu_ctx_done(ctx, &al);
    }
}
END_TEST

static Suite *sparse_ops_suite(void)
{
    Suite *s = suite_create("sparse_ops");
    TCase *tc = tcase_create("sparse_ops");
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, test_token_sparse_backends_match_ref, 0, N_CASES);
    tcase_add_loop_test(tc, test_token_sparse_full_lists_equal_dense, 0, N_CASES);
    tcase_add_test(tc, test_token_sparse_closed_forms);
    tcase_add_loop_test(tc, test_token_sparse_decode, 0, 4);
    tcase_add_loop_test(tc, test_rows, 0, N_CASES);
    tcase_add_loop_test(tc, test_lse_merge, 0, N_CASES);
    tcase_add_loop_test(tc, test_state_chaining, 0, N_CASES);
    tcase_add_loop_test(tc, test_vs_mixed, 0, 4);
    tcase_add_test(tc, test_pv_skip);
    tcase_add_test(tc, test_sparse_validation);
    tcase_add_test(tc, test_token_sparse_nan_in_read_rows);
    tcase_add_test(tc, test_sparse_alloc_failures_leak_nothing);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return tu_run(sparse_ops_suite()); }
