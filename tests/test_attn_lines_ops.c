/* test_attn_lines_ops.c — attn.lines (issue 19), the line executor of the
 * vertical-slash methods: every backend of SL_TEST_BACKENDS against ref on
 * random sorted column and diagonal lists (padding, overlaps, per-head and
 * shared lists, every shape of opsutil's attention cases), ref against a
 * float64 softmax written here from the contract's key set, the two lists
 * that cover every causal key against attn.dense, the FLOP count against
 * pairs counted here, and the validation messages. */
#include "opsutil.h"

/* A random ascending list of distinct values in [0, n) of about frac·n
 * entries (some forced: 0 and n - 1 when want_ends), padded with -1 to width. */
static void random_list(sl_rng *rng, int64_t n, double frac, int want_ends, int32_t *out, int64_t width)
{
    int64_t k = 0;
    for (int64_t x = 0; x < n && k < width; x++)
        if (sl_rng_uniform(rng) < frac || (want_ends && (x == 0 || x == n - 1)))
            out[k++] = (int32_t)x;
    while (k < width)
        out[k++] = -1;
}

/* cols [hl, wc] and offs [hl, ws] from random lists over n_k. */
static void make_lines(sl_ctx *ctx, sl_rng *rng, int64_t hl, int64_t nk, int64_t wc, int64_t ws, sl_tensor *in)
{
    in[3] = i32_tensor(ctx, hl, wc);
    in[4] = i32_tensor(ctx, hl, ws);
    for (int64_t h = 0; h < hl; h++) {
        random_list(rng, nk, 0.15, h % 2 == 0, (int32_t *)in[3].data + h * wc, wc);
        random_list(rng, nk, 0.2, h % 2 == 1, (int32_t *)in[4].data + h * ws, ws);
    }
}

static int in_list(const int32_t *l, int64_t w, int64_t x)
{
    for (int64_t i = 0; i < w; i++)
        if (l[i] == x)
            return 1;
    return 0;
}

/* Whether row position pos keeps key j under list head lh: the contract's set. */
static int kept(const sl_tensor *cols, const sl_tensor *offs, int64_t lh, int64_t pos, int64_t j)
{
    int64_t wc = cols->shape[1], ws = offs->shape[1];
    if (j > pos)
        return 0;
    return in_list((const int32_t *)cols->data + lh * wc, wc, j) || in_list((const int32_t *)offs->data + lh * ws, ws, pos - j);
}

/* Every backend against ref, for every attention case, per-head and shared
 * lists, narrow and wide (padded) lists. */
START_TEST(test_lines_backends)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 19000 + (uint64_t)_i);
    const shape_case *c = attn_case(_i);
    sl_tensor in[5] = {{0}};
    qkv_of(ctx, &rng, c, 1.5, in);
    sl_attn_rows_params p = {.scale = 0};
    for (int shared = 0; shared < 2; shared++)
        for (int wide = 0; wide < 2; wide++) {
            int64_t hl = shared ? 1 : c->hq, w = wide ? c->nk + 3 : (c->nk + 3) / 4 + 1;
            make_lines(ctx, &rng, hl, c->nk, w, w, in);
            char what[96];
            snprintf(what, sizeof what, "lines case %d shared %d wide %d", _i, shared, wide);
            check_backends(ctx, SL_OP_ATTN_LINES, &p, in, what);
            release_n(&in[3], 2);
        }
    /* empty lists (width 0 and all padding): O = 0, L = -inf on every backend */
    for (int pad = 0; pad < 2; pad++) {
        in[3] = i32_tensor(ctx, 1, pad);
        in[4] = i32_tensor(ctx, 1, pad);
        if (pad)
            ((int32_t *)in[3].data)[0] = ((int32_t *)in[4].data)[0] = -1;
        sl_tensor want[2] = {f32_new(ctx, 3, in[0].shape), f32_2d(ctx, c->hq, c->nq)};
        memset(want[0].data, 0, (size_t)sl_tensor_numel(&want[0]) * sizeof(float));
        for (int64_t i = 0; i < c->hq * c->nq; i++)
            f32p(&want[1])[i] = -INFINITY;
        check_equals(ctx, SL_OP_ATTN_LINES, &p, in, want, pad ? "lines all padding" : "lines of width 0");
        release_n(want, 2);
        release_n(&in[3], 2);
    }
    release_n(in, 3);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* ref against a float64 softmax over the key set built here from the
 * contract (membership tests over the raw lists). */
START_TEST(test_lines_ref_vs_math)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 19100);
    const shape_case c = {4, 2, 45, 60, 16, 1};
    sl_tensor in[5] = {{0}};
    qkv_of(ctx, &rng, &c, 1.0, in);
    make_lines(ctx, &rng, 2, c.nk, 20, 25, in);
    sl_attn_rows_params p = {.scale = 0.3};
    sl_tensor out[2];
    run_attn(ctx, SL_BACKEND_REF, SL_OP_ATTN_LINES, &p, in, out);
    double s[64];
    for (int64_t h = 0; h < c.hq; h++) {
        int64_t g = h / (c.hq / c.hkv), lh = h / 2;
        for (int64_t r = 0; r < c.nq; r++) {
            int64_t pos = c.nk - c.nq + r;
            double m = -INFINITY;
            for (int64_t j = 0; j < c.nk; j++) {
                s[j] = -INFINITY;
                if (!kept(&in[3], &in[4], lh, pos, j))
                    continue;
                double dot = 0;
                for (int64_t x = 0; x < c.d; x++)
                    dot += (double)tu_at(&in[0], (h * c.nq + r) * c.d + x) * tu_at(&in[1], (g * c.nk + j) * c.d + x);
                s[j] = 0.3 * dot;
                m = s[j] > m ? s[j] : m;
            }
            if (m == -INFINITY) {
                ck_assert(isinf(tu_at(&out[1], h * c.nq + r)) && tu_at(&out[1], h * c.nq + r) < 0);
                continue;
            }
            double sum = 0;
            for (int64_t j = 0; j < c.nk; j++)
                sum += s[j] == -INFINITY ? 0 : exp(s[j] - m);
            ck_assert_double_eq_tol(tu_at(&out[1], h * c.nq + r), m + log(sum), 1e-5);
            for (int64_t x = 0; x < c.d; x++) {
                double acc = 0;
                for (int64_t j = 0; j < c.nk; j++)
                    if (s[j] != -INFINITY)
                        acc += exp(s[j] - m) / sum * tu_at(&in[2], (g * c.nk + j) * c.d + x);
                ck_assert_double_eq_tol(tu_at(&out[0], (h * c.nq + r) * c.d + x), acc, 1e-5);
            }
        }
    }
    /* FLOPs: 4·d per kept (row, key) pair of every query head, counted here */
    double pairs = 0;
    for (int64_t h = 0; h < c.hq; h++)
        for (int64_t r = 0; r < c.nq; r++)
            for (int64_t j = 0; j < c.nk; j++)
                pairs += kept(&in[3], &in[4], h / 2, c.nk - c.nq + r, j);
    ck_assert_double_eq_tol(sl_op_flops(SL_OP_ATTN_LINES, &p, in), 4.0 * (double)c.d * pairs, 1e-6);
    release_n(out, 2);
    release_n(in, 5);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* Every column, or every diagonal, or both (each key then on a column and a
 * diagonal: counted once) is causal attention: attn.dense. */
START_TEST(test_lines_cover_dense)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 19200);
    const shape_case c = {4, 2, 70, 90, 32, 1};
    sl_tensor in[5] = {{0}};
    qkv_of(ctx, &rng, &c, 1.0, in);
    sl_tensor dense[2];
    sl_attn_params pd = {.causal = 1, .scale = 0};
    run_attn(ctx, SL_BACKEND_REF, SL_OP_ATTN_DENSE, &pd, in, dense);
    sl_attn_rows_params p = {.scale = 0};
    for (int which = 1; which <= 3; which++) {
        in[3] = i32_tensor(ctx, 1, c.nk);
        in[4] = i32_tensor(ctx, 1, c.nk);
        for (int64_t j = 0; j < c.nk; j++) {
            ((int32_t *)in[3].data)[j] = which & 1 ? (int32_t)j : -1;
            ((int32_t *)in[4].data)[j] = which & 2 ? (int32_t)j : -1;
        }
        check_equals(ctx, SL_OP_ATTN_LINES, &p, in, dense, which == 1 ? "all columns" : which == 2 ? "all diagonals" : "both");
        release_n(&in[3], 2);
    }
    release_n(dense, 2);
    release_n(in, 3);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* Keys far apart (n_k past several of the cpu kernel's 512-key windows, so a
 * row's softmax continues across windows): random lines against ref, all
 * diagonals against attn.dense. */
START_TEST(test_lines_long_rows)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 19400);
    const shape_case c = {2, 1, 70, 1700, 16, 1};
    sl_tensor in[5] = {{0}};
    qkv_of(ctx, &rng, &c, 1.0, in);
    sl_attn_rows_params p = {.scale = 0};
    make_lines(ctx, &rng, 2, c.nk, 300, 400, in);
    check_backends(ctx, SL_OP_ATTN_LINES, &p, in, "long rows, random lines");
    release_n(&in[3], 2);
    in[3] = i32_tensor(ctx, 1, 1);
    in[4] = i32_tensor(ctx, 1, c.nk);
    ((int32_t *)in[3].data)[0] = -1;
    for (int64_t j = 0; j < c.nk; j++)
        ((int32_t *)in[4].data)[j] = (int32_t)j;
    sl_tensor dense[2];
    sl_attn_params pd = {.causal = 1, .scale = 0};
    run_attn(ctx, SL_BACKEND_REF, SL_OP_ATTN_DENSE, &pd, in, dense);
    check_equals(ctx, SL_OP_ATTN_LINES, &p, in, dense, "long rows, all diagonals");
    release_n(dense, 2);
    release_n(in, 5);
    tu_ctx_done(ctx, &al);
}
END_TEST

START_TEST(test_lines_validation)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 19300);
    const shape_case c = {4, 2, 16, 16, 8, 1};
    sl_tensor in[5] = {{0}};
    qkv_of(ctx, &rng, &c, 1.0, in);
    sl_attn_rows_params p = {.scale = 0};
    static const int32_t bad[][4] = {{3, 2, -1, -1}, {0, 16, -1, -1}, {1, -1, 5, -1}, {-2, -1, -1, -1}, {4, 4, -1, -1}};
    for (int b = 0; b < 5; b++)
        for (int which = 0; which < 2; which++) {
            in[3] = i32_tensor(ctx, 1, 4);
            in[4] = i32_tensor(ctx, 1, 4);
            for (int i = 0; i < 4; i++)
                ((int32_t *)in[3].data)[i] = ((int32_t *)in[4].data)[i] = i < 2 ? i : -1;
            memcpy(which ? in[4].data : in[3].data, bad[b], sizeof bad[b]);
            expect_fail(ctx, SL_OP_ATTN_LINES, &p, in, SL_EARG, which ? "offs row 0" : "cols row 0");
            release_n(&in[3], 2);
        }
    /* list heads: 3 does not divide 4; cols and offs disagree */
    in[3] = i32_tensor(ctx, 3, 2);
    in[4] = i32_tensor(ctx, 3, 2);
    memset(in[3].data, 0xff, 6 * sizeof(int32_t));
    memset(in[4].data, 0xff, 6 * sizeof(int32_t));
    expect_fail(ctx, SL_OP_ATTN_LINES, &p, in, SL_ESHAPE, "heads");
    release_n(&in[3], 2);
    in[3] = i32_tensor(ctx, 2, 2);
    in[4] = i32_tensor(ctx, 1, 2);
    memset(in[3].data, 0xff, 4 * sizeof(int32_t));
    memset(in[4].data, 0xff, 2 * sizeof(int32_t));
    expect_fail(ctx, SL_OP_ATTN_LINES, &p, in, SL_ESHAPE, "heads");
    release_n(&in[3], 2);
    release_n(in, 3);
    tu_ctx_done(ctx, &al);
}
END_TEST

static void add_tests(TCase *tc)
{
    tcase_add_loop_test(tc, test_lines_backends, 0, N_ATTN_CASES);
    tcase_add_test(tc, test_lines_ref_vs_math);
    tcase_add_test(tc, test_lines_cover_dense);
    tcase_add_test(tc, test_lines_long_rows);
    tcase_add_test(tc, test_lines_validation);
}

int main(void) { return run_op_suite("attn_lines_ops", add_tests); }
