/* test_correct_ops.c — the corrections (correct.*) on every available
 * backend against ref (sentinel allocator, NaN and shape rejection, edge
 * sizes), and their closed forms computed here with plain loops from the
 * contracts in sparselab.h: correct.delta's sampled and tail rows are the
 * dense rows bit for bit and the other rows follow the delta rule. */
#include "opsutil.h"

/* The layout of the delta_attention card, derived here independently:
 * n_tail = (n mod gamma) + max(tail, gamma) clamped to n; groups cover
 * [0, n - n_tail) in steps of gamma. */
static void delta_layout(int64_t n, int64_t gamma, int64_t tail, int64_t *s_p, int64_t *groups, int64_t *n_tail)
{
    int64_t t = n % gamma + (tail > gamma ? tail : gamma);
    *n_tail = t < n ? t : n;
    *s_p = n - *n_tail;
    *groups = 0;
    for (int64_t i = 0; i < *s_p; i += gamma)
        (*groups)++;
}

static sl_tensor lse_tensor(sl_ctx *ctx, sl_rng *rng, int64_t h, int64_t n, int with_neg_inf)
{
    sl_tensor t;
    int64_t sh[2] = {h, n};
    ck_assert_int_eq(sl_tensor_new(ctx, SL_F32, 2, sh, &t), SL_OK);
    for (int64_t i = 0; i < h * n; i++)
        ((float *)t.data)[i] = with_neg_inf && i % 5 == 2 ? -INFINITY : (float)(2.0 * sl_rng_normal(rng));
    return t;
}

typedef struct delta_case { int64_t h, n, d, gamma, tail; } delta_case;

static const delta_case DELTA_CASES[] = {
    {2, 300, 16, 16, 128}, /* the card's layout with a tail of 128 + n mod gamma */
    {3, 200, 8, 24, 10},   /* gamma does not divide 128: a short last group */
    {1, 1000, 32, 64, 128},
    {2, 50, 8, 64, 128},   /* tail clamped to n: every row dense */
    {2, 97, 4, 1, 0},      /* gamma = 1: every row sampled */
    {1, 1, 8, 4, 0},       /* one row */
    {4, 130, 64, 7, 0},    /* tail = n mod gamma + gamma */
};
#define N_DELTA (int)(sizeof DELTA_CASES / sizeof DELTA_CASES[0])

/* Random inputs of one case: in[0..3] = o_sparse, lse_sparse, o_rows, lse_rows. */
static void delta_inputs(sl_ctx *ctx, sl_rng *rng, const delta_case *c, sl_tensor in[4])
{
    int64_t s_p, g, t;
    delta_layout(c->n, c->gamma, c->tail, &s_p, &g, &t);
    in[0] = tu_randn(ctx, rng, c->h, c->n, c->d, 1.0);
    in[1] = lse_tensor(ctx, rng, c->h, c->n, 1);
    in[2] = tu_randn(ctx, rng, c->h, g + t, c->d, 1.0);
    in[3] = lse_tensor(ctx, rng, c->h, g + t, 0);
}

START_TEST(test_delta_backends_match_ref)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 7100 + (uint64_t)_i);
    const delta_case *c = &DELTA_CASES[_i];
    sl_tensor in[4];
    delta_inputs(ctx, &rng, c, in);
    for (int mode = 0; mode < 2; mode++)
        for (int smooth = 0; smooth < 2; smooth++) {
            sl_correct_delta_params p = {.gamma = c->gamma, .tail = c->tail, .smooth = smooth, .mode = mode};
            char what[96];
            snprintf(what, sizeof what, "delta case %d mode %d smooth %d", _i, mode, smooth);
            check_backends(ctx, SL_OP_CORRECT_DELTA, &p, in, what);
        }
    release_n(in, 4);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* Every backend: sampled and tail rows equal o_rows exactly (and their L),
 * other rows A*[i] + (A[g] - A*[g·gamma]) (smooth: interpolated), L the
 * sparse L there; recompute leaves the other rows untouched. */
START_TEST(test_delta_closed_form)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 7200 + (uint64_t)_i);
    const delta_case *c = &DELTA_CASES[_i];
    sl_tensor in[4];
    delta_inputs(ctx, &rng, c, in);
    int64_t s_p, groups, n_tail;
    delta_layout(c->n, c->gamma, c->tail, &s_p, &groups, &n_tail);
    int64_t R = groups + n_tail, d = c->d;
    const float *os = in[0].data, *ls = in[1].data, *orw = in[2].data, *lr = in[3].data;
    for (int b = 0; b < SL_BACKEND__COUNT; b++) {
        if (!sl_backend_available((sl_backend_id)b) || !backend_wanted((sl_backend_id)b))
            continue;
        for (int variant = 0; variant < 3; variant++) { /* plain, smooth, recompute */
            sl_correct_delta_params p = {.gamma = c->gamma, .tail = c->tail, .smooth = variant == 1, .mode = variant == 2};
            sl_tensor out[2];
            run_attn(ctx, (sl_backend_id)b, SL_OP_CORRECT_DELTA, &p, in, out);
            const float *o = out[0].data, *l = out[1].data;
            for (int64_t h = 0; h < c->h; h++)
                for (int64_t i = 0; i < c->n; i++) {
                    int64_t row = i >= s_p ? groups + (i - s_p) : (i % c->gamma == 0 ? i / c->gamma : -1);
                    const float *oi = o + (h * c->n + i) * d;
                    if (row >= 0) {
                        ck_assert_msg(memcmp(oi, orw + (h * R + row) * d, (size_t)d * sizeof(float)) == 0,
                                      "%s case %d: row %lld is not dense row %lld", sl_backend_name((sl_backend_id)b),
                                      _i, (long long)i, (long long)row);
                        ck_assert_msg(l[h * c->n + i] == lr[h * R + row], "L of dense row %lld", (long long)i);
                        continue;
                    }
                    float li = l[h * c->n + i], lsi = ls[h * c->n + i];
                    ck_assert_msg(li == lsi || (isinf(li) && isinf(lsi)), "L of row %lld is the sparse L", (long long)i);
                    int64_t g = i / c->gamma, g2 = g + 1 < groups ? g + 1 : g;
                    double r = variant == 1 ? (double)(i % c->gamma) / (double)c->gamma : 0;
                    for (int64_t k = 0; k < d; k++) {
                        double si = os[(h * c->n + i) * d + k];
                        double d1 = (double)orw[(h * R + g) * d + k] - os[(h * c->n + g * c->gamma) * d + k];
                        double d2 = (double)orw[(h * R + g2) * d + k] - os[(h * c->n + g2 * c->gamma) * d + k];
                        double want = variant == 2 ? si : si + (1 - r) * d1 + r * d2;
                        if (!(fabs(oi[k] - want) <= 2e-6 * (1 + fabs(want))))
                            ck_abort_msg("%s case %d variant %d: O[%lld, %lld, %lld] = %.9g, expected %.9g",
                                         sl_backend_name((sl_backend_id)b), _i, variant, (long long)h, (long long)i,
                                         (long long)k, oi[k], want);
                    }
                }
            release_n(out, 2);
        }
    }
    release_n(in, 4);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* FLOPs: one subtraction per delta element, one add per other element before s_p. */
START_TEST(test_delta_flops)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 7300);
    delta_case c = {2, 4096, 16, 64, 128};
    sl_tensor in[4];
    delta_inputs(ctx, &rng, &c, in);
    sl_correct_delta_params p = {.gamma = 64, .tail = 128};
    /* 3968 rows before the tail, 62 groups */
    ck_assert(fabs(sl_op_flops(SL_OP_CORRECT_DELTA, &p, in) - 2.0 * 16 * 3968) < 1e-9);
    p.mode = 1;
    ck_assert(sl_op_flops(SL_OP_CORRECT_DELTA, &p, in) == 0);
    release_n(in, 4);
    tu_ctx_done(ctx, &al);
}
END_TEST

START_TEST(test_delta_validation)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 7400);
    delta_case c = {2, 300, 8, 16, 128};
    sl_tensor in[4], out[2] = {{0}};
    delta_inputs(ctx, &rng, &c, in);
    sl_correct_delta_params p = {.gamma = 16, .tail = 128};
#define EXPECT(st, text)                                                                                       \
    do {                                                                                                       \
        ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_CORRECT_DELTA, &p, in, out), st);                \
        ck_assert_msg(strncmp(sl_ctx_error(ctx), "correct.delta", 13) == 0, "%s", sl_ctx_error(ctx));          \
        ck_assert_msg(strstr(sl_ctx_error(ctx), text), "%s", sl_ctx_error(ctx));                              \
        ck_assert_ptr_null(out[0].buf);                                                                        \
    } while (0)
    ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_CORRECT_DELTA, &p, in, out), SL_OK);
    release_n(out, 2);
    p.gamma = 32; /* rows were made for gamma 16 */
    EXPECT(SL_ESHAPE, "o_rows and lse_rows must be");
    p.gamma = 0;
    EXPECT(SL_EARG, "parameter 'gamma'");
    p.gamma = 16;
    ((float *)in[0].data)[17] = NAN;
    EXPECT(SL_EARG, "o_sparse");
    ((float *)in[0].data)[17] = 0.5f;
    ((float *)in[3].data)[3] = INFINITY;
    EXPECT(SL_EARG, "+inf");
    ((float *)in[3].data)[3] = -INFINITY; /* an empty dense row is allowed */
    ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_CORRECT_DELTA, &p, in, out), SL_OK);
    release_n(out, 2);
    sl_tensor keep = in[1];
    in[1] = lse_tensor(ctx, &rng, 2, 299, 0);
    EXPECT(SL_ESHAPE, "lse_sparse must be [2, 300]");
    sl_tensor_release(&in[1]);
    in[1] = keep;
    release_n(in, 4);
    tu_ctx_done(ctx, &al);
#undef EXPECT
}
END_TEST

START_TEST(test_correct_alloc_failures_leak_nothing)
{
    sl_rng rng;
    for (long fail = 1; fail < 20; fail++) {
        tu_alloc al;
        sl_ctx *ctx = tu_ctx(&al);
        sl_rng_seed(&rng, 7500);
        delta_case c = {2, 100, 8, 8, 16};
        sl_tensor in[4], out[2] = {{0}};
        delta_inputs(ctx, &rng, &c, in);
        al.fail_at = al.calls + fail;
        sl_correct_delta_params p = {.gamma = 8, .tail = 16};
        sl_status s = sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_CORRECT_DELTA, &p, in, out);
        ck_assert(s == SL_OK || s == SL_ENOMEM);
        if (s == SL_OK)
            release_n(out, 2);
        al.fail_at = 0;
        release_n(in, 4);
        tu_ctx_done(ctx, &al);
    }
}
END_TEST

static Suite *correct_ops_suite(void)
{
    Suite *s = suite_create("correct_ops");
    TCase *tc = tcase_create("correct_ops");
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, test_delta_backends_match_ref, 0, N_DELTA);
    tcase_add_loop_test(tc, test_delta_closed_form, 0, N_DELTA);
    tcase_add_test(tc, test_delta_flops);
    tcase_add_test(tc, test_delta_validation);
    tcase_add_test(tc, test_correct_alloc_failures_leak_nothing);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return tu_run(correct_ops_suite()); }
