/* test_stripe_ops.c — score.antidiag (XAttention), score.strided
 * (ProxyAttn), score.anchor (AnchorAttention) and gather.rows (PBS-Attn) on
 * every available backend against ref (sentinel allocator, ragged sizes,
 * GQA, decode offsets), each against an independent float64 computation
 * written here from the papers' definitions (the antidiagonal of each S × S
 * tile of the full token score matrix; softmax on the strided grid; the
 * anchor as a row max over the init + local keys; plain row copies), the
 * invariants (antidiag rows sum to their super-row count; theta = ±huge
 * keeps every / no middle key) and the errors a caller sees. */
#include "opsutil.h"

/* Every wanted backend against ref: floats within tol of the output's scale,
 * u8 exactly. */
static void check_xa_backends(sl_ctx *ctx, sl_op op, const void *p, const sl_tensor *in, double tol, const char *what)
{
    sl_tensor ref, out;
    sl_status s = sl_op_run(ctx, SL_BACKEND_REF, op, p, in, &ref);
    ck_assert_msg(s == SL_OK, "%s on ref: %s", what, sl_ctx_error(ctx));
    sl_backend_id bs[SL_BACKEND__COUNT];
    int nb = other_backends(bs);
    for (int b = 0; b < nb; b++) {
        s = sl_op_run(ctx, bs[b], op, p, in, &out);
        if (s == SL_EUNSUPPORTED && bs[b] != SL_BACKEND_CPU) {
            printf("SKIP %s on %s: %s\n", what, sl_backend_name(bs[b]), sl_ctx_error(ctx));
            continue;
        }
        ck_assert_msg(s == SL_OK, "%s on %s: %s", what, sl_backend_name(bs[b]), sl_ctx_error(ctx));
        int64_t n = sl_tensor_numel(&ref);
        ck_assert_int_eq(sl_tensor_numel(&out), n);
        if (ref.dtype == SL_U8) {
            const uint8_t *x = out.data, *r = ref.data;
            for (int64_t i = 0; i < n; i++)
                if (x[i] != r[i])
                    ck_abort_msg("%s on %s: [%lld] = %d, ref %d", what, sl_backend_name(bs[b]), (long long)i, x[i], r[i]);
        } else {
            double scale = 1e-30;
            for (int64_t i = 0; i < n; i++)
                scale = fmax(scale, fabs(tu_at(&ref, i)));
            for (int64_t i = 0; i < n; i++) {
                float x = tu_at(&out, i), r = tu_at(&ref, i);
                if (!(fabs(x - r) <= tol * fmax(1.0, scale)))
                    ck_abort_msg("%s on %s: [%lld] = %.9g, ref %.9g", what, sl_backend_name(bs[b]), (long long)i, x, r);
            }
        }
        sl_tensor_release(&out);
    }
    sl_tensor_release(&ref);
}

static double dot64(const float *a, const float *b, int64_t d)
{
    double s = 0;
    for (int64_t c = 0; c < d; c++)
        s += (double)a[c] * (double)b[c];
    return s;
}

/* ---- score.antidiag ---- */

START_TEST(test_antidiag_backends)
{
    const shape_case *c = &CASES[_i];
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 7000 + (uint64_t)_i);
    sl_tensor in[2] = {tu_randn(ctx, &rng, c->hq, c->nq, c->d, 1), tu_randn(ctx, &rng, c->hkv, c->nk, c->d, 1)};
    int64_t strides[3] = {1, 4, 8};
    for (int t = 0; t < 3; t++) {
        sl_score_antidiag_params p = {.block = strides[t] * 4, .stride = strides[t], .causal = c->causal};
        check_xa_backends(ctx, SL_OP_SCORE_ANTIDIAG, &p, in, 1e-5, "score.antidiag");
    }
    release_n(in, 2);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* The definition from the full token score matrix: tile (I, J) of S × S
 * scores, its antidiagonal summed, softmax per super-row over the visible
 * super-tokens, tiles of B summed. Ragged n (zero rows). */
START_TEST(test_antidiag_independent)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 7100);
    int64_t hq = 4, hkv = 2, n = 45, d = 8, S = 4, B = 8;
    sl_tensor in[2] = {tu_randn(ctx, &rng, hq, n, d, 1), tu_randn(ctx, &rng, hkv, n, d, 1)};
    sl_score_antidiag_params p = {.block = B, .stride = S, .causal = 1};
    sl_tensor out;
    ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_SCORE_ANTIDIAG, &p, in, &out), SL_OK);
    int64_t M = (n + S - 1) / S, nb = (n + B - 1) / B;
    ck_assert_int_eq(out.shape[1], nb);
    const float *q = in[0].data, *k = in[1].data;
    double scale = 1.0 / (sqrt((double)d) * (double)S);
    for (int64_t h = 0; h < hq; h++) {
        double tok[45][45], want[12][12] = {{0}};
        for (int64_t i = 0; i < n; i++)
            for (int64_t j = 0; j < n; j++)
                tok[i][j] = dot64(q + (h * n + i) * d, k + ((h / 2) * n + j) * d, d);
        for (int64_t I = 0; I < M; I++) {
            double s[12], mx = -INFINITY, z = 0;
            for (int64_t J = 0; J <= I; J++) {
                double x = 0;
                for (int64_t t = 0; t < S; t++) {
                    int64_t i = I * S + S - 1 - t, j = J * S + t;
                    if (i < n && j < n)
                        x += tok[i][j];
                }
                s[J] = scale * x;
                mx = fmax(mx, s[J]);
            }
            for (int64_t J = 0; J <= I; J++)
                z += exp(s[J] - mx);
            for (int64_t J = 0; J <= I; J++)
                want[I * S / B][J * S / B] += exp(s[J] - mx) / z;
        }
        for (int64_t r = 0; r < nb; r++) {
            double row = 0;
            for (int64_t cc = 0; cc < nb; cc++) {
                float got = tu_at(&out, (h * nb + r) * nb + cc);
                ck_assert_msg(fabs(got - want[r][cc]) < 1e-5, "head %lld tile (%lld, %lld): %.7g, want %.7g",
                              (long long)h, (long long)r, (long long)cc, got, want[r][cc]);
                row += got;
            }
            /* a tile row sums to its super-row count */
            int64_t rows = (r + 1) * (B / S) < M ? B / S : M - r * (B / S);
            ck_assert_msg(fabs(row - (double)rows) < 1e-5, "row %lld sums to %.7g", (long long)r, row);
        }
    }
    sl_tensor_release(&out);
    release_n(in, 2);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* ---- score.strided ---- */

START_TEST(test_strided_backends)
{
    const shape_case *c = &CASES[_i];
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 7200 + (uint64_t)_i);
    sl_tensor in[2] = {tu_randn(ctx, &rng, c->hq, c->nq, c->d, 1), tu_randn(ctx, &rng, c->hkv, c->nk, c->d, 1)};
    int64_t strides[3] = {1, 3, 8};
    for (int t = 0; t < 3; t++) {
        sl_score_strided_params p = {.stride = strides[t], .bq = 16, .bk = 8, .causal = c->causal};
        check_xa_backends(ctx, SL_OP_SCORE_STRIDED, &p, in, 1e-5, "score.strided");
    }
    release_n(in, 2);
    tu_ctx_done(ctx, &al);
}
END_TEST

START_TEST(test_strided_independent)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 7300);
    int64_t hq = 2, n = 50, d = 8, S = 3, bq = 8, bk = 16;
    sl_tensor in[2] = {tu_randn(ctx, &rng, hq, n, d, 1), tu_randn(ctx, &rng, 1, n, d, 1)};
    sl_score_strided_params p = {.stride = S, .bq = bq, .bk = bk, .causal = 1};
    sl_tensor out;
    ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_SCORE_STRIDED, &p, in, &out), SL_OK);
    int64_t nqb = (n + bq - 1) / bq, nkb = (n + bk - 1) / bk;
    const float *q = in[0].data, *k = in[1].data;
    for (int64_t h = 0; h < hq; h++) {
        double want[7][4] = {{0}};
        for (int64_t i = 0; i < n; i += S) {
            double s[50], mx = -INFINITY, z = 0;
            for (int64_t j = 0; j <= i; j += S) {
                s[j] = dot64(q + (h * n + i) * d, k + j * d, d) / sqrt((double)d);
                mx = fmax(mx, s[j]);
            }
            for (int64_t j = 0; j <= i; j += S)
                z += exp(s[j] - mx);
            for (int64_t j = 0; j <= i; j += S)
                want[i / bq][j / bk] = fmax(want[i / bq][j / bk], exp(s[j] - mx) / z);
        }
        for (int64_t r = 0; r < nqb; r++)
            for (int64_t cc = 0; cc < nkb; cc++) {
                float got = tu_at(&out, (h * nqb + r) * nkb + cc);
                ck_assert_msg(fabs(got - want[r][cc]) < 1e-6, "head %lld tile (%lld, %lld): %.7g, want %.7g",
                              (long long)h, (long long)r, (long long)cc, got, want[r][cc]);
            }
    }
    sl_tensor_release(&out);
    release_n(in, 2);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* ---- score.anchor ---- */

START_TEST(test_anchor_backends)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 7400);
    int64_t ns[3] = {64, 100, 37};
    for (int t = 0; t < 3; t++) {
        sl_tensor in[2] = {tu_randn(ctx, &rng, 4, ns[t], 16, 1), tu_randn(ctx, &rng, 2, ns[t], 16, 1)};
        for (int overlap = 0; overlap < 2; overlap++)
            for (int lc = 1; lc < 3; lc++) {
                sl_score_anchor_params p = {.block = 4, .step = 2, .init_cnt = 1, .local_cnt = lc, .theta = 1.5,
                                            .overlap = overlap};
                check_xa_backends(ctx, SL_OP_SCORE_ANCHOR, &p, in, 0, "score.anchor");
            }
        release_n(in, 2);
    }
    tu_ctx_done(ctx, &al);
}
END_TEST

/* The card's rule written out: anchors as row maxima over init ∪ local,
 * pooled per B rows, keys of the middle region kept when within theta. */
START_TEST(test_anchor_independent)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 7500);
    int64_t n = 70, d = 8, B = 5, step = 2, G = 10;
    sl_tensor in[2] = {tu_randn(ctx, &rng, 1, n, d, 1), tu_randn(ctx, &rng, 1, n, d, 1)};
    const float *q = in[0].data, *k = in[1].data;
    double sc = 1 / sqrt((double)d);
    for (int big = 0; big < 3; big++) {
        double theta = big == 0 ? 1e9 : big == 1 ? -1e9 : 0.7;
        sl_score_anchor_params p = {.block = B, .step = step, .init_cnt = 1, .local_cnt = 1, .theta = theta};
        sl_tensor out;
        ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_SCORE_ANCHOR, &p, in, &out), SL_OK);
        const uint8_t *keep = out.data;
        for (int64_t b = 0; b < 7; b++) {
            for (int64_t j = 0; j < n; j++) {
                int middle = j >= G && j < b * G;
                int want = 0;
                if (middle && big == 0)
                    want = 1;
                else if (middle && big == 2)
                    for (int64_t t = 0; t < step && !want; t++) {
                        double qb[8] = {0}, xb = 0;
                        for (int64_t i = b * G + t * B; i < b * G + (t + 1) * B; i++) {
                            double mx = -INFINITY;
                            for (int64_t jj = 0; jj <= i; jj++)
                                if (jj < G || jj >= b * G)
                                    mx = fmax(mx, sc * dot64(q + i * d, k + jj * d, d));
                            xb += mx / (double)B;
                            for (int64_t c = 0; c < d; c++)
                                qb[c] += q[i * d + c] / (double)B;
                        }
                        double x = 0;
                        for (int64_t c = 0; c < d; c++)
                            x += qb[c] * k[j * d + c];
                        want = sc * x + theta >= xb;
                    }
                ck_assert_msg(keep[b * n + j] == want, "theta %g big block %lld key %lld: %d, want %d", theta,
                              (long long)b, (long long)j, keep[b * n + j], want);
            }
        }
        sl_tensor_release(&out);
    }
    release_n(in, 2);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* ---- gather.rows ---- */

START_TEST(test_gather_rows)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 7600);
    int64_t hx = 2, n = 30, d = 5, hi = 4, m = 17;
    sl_tensor in[2] = {tu_randn(ctx, &rng, hx, n, d, 1), i32_tensor(ctx, hi, m)};
    int32_t *ix = in[1].data;
    for (int64_t i = 0; i < hi * m; i++)
        ix[i] = (int32_t)((i * 7 + 3) % n);
    check_xa_backends(ctx, SL_OP_GATHER_ROWS, NULL, in, 0, "gather.rows");
    sl_tensor out;
    ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_GATHER_ROWS, NULL, in, &out), SL_OK);
    ck_assert_int_eq(out.shape[0], hi);
    ck_assert_int_eq(out.shape[1], m);
    const float *x = in[0].data;
    for (int64_t h = 0; h < hi; h++)
        for (int64_t t = 0; t < m; t++)
            for (int64_t c = 0; c < d; c++)
                ck_assert(tu_at(&out, (h * m + t) * d + c) == x[((h / 2) * n + ix[h * m + t]) * d + c]);
    sl_tensor_release(&out);
    ck_assert_double_eq(sl_op_flops(SL_OP_GATHER_ROWS, NULL, in), 0);
    release_n(in, 2);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* ---- errors ---- */

START_TEST(test_stripe_validation)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 7700);
    sl_tensor in[2] = {tu_randn(ctx, &rng, 2, 20, 4, 1), tu_randn(ctx, &rng, 1, 20, 4, 1)}, out;
    sl_score_antidiag_params ap = {.block = 6, .stride = 4, .causal = 1};
    ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_SCORE_ANTIDIAG, &ap, in, &out), SL_EARG);
    ck_assert_ptr_nonnull(strstr(sl_ctx_error(ctx), "multiple of stride"));
    ((float *)in[0].data)[5] = NAN;
    ap.block = 8;
    ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_SCORE_ANTIDIAG, &ap, in, &out), SL_EARG);
    ck_assert_ptr_nonnull(strstr(sl_ctx_error(ctx), "score.antidiag"));
    ((float *)in[0].data)[5] = 0.5f;
    sl_tensor short_q = tu_randn(ctx, &rng, 2, 10, 4, 1);
    sl_tensor ain[2] = {short_q, in[1]};
    sl_score_anchor_params np = {.block = 2, .step = 2, .init_cnt = 1, .local_cnt = 1, .theta = 1};
    ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_SCORE_ANCHOR, &np, ain, &out), SL_ESHAPE);
    ck_assert_ptr_nonnull(strstr(sl_ctx_error(ctx), "n_q == n_k"));
    sl_tensor gin[2] = {in[1], i32_tensor(ctx, 1, 3)};
    int32_t bad[3] = {0, 20, 1};
    memcpy(gin[1].data, bad, sizeof bad);
    ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_GATHER_ROWS, NULL, gin, &out), SL_EARG);
    ck_assert_ptr_nonnull(strstr(sl_ctx_error(ctx), "idx[1] = 20"));
    sl_tensor_release(&gin[1]);
    sl_tensor_release(&short_q);
    release_n(in, 2);
    tu_ctx_done(ctx, &al);
}
END_TEST

START_TEST(test_stripe_alloc_failures_leak_nothing)
{
    sl_rng rng;
    for (long fail = 1; fail < 20; fail++) {
        tu_alloc al;
        sl_ctx *ctx = tu_ctx(&al);
        sl_rng_seed(&rng, 7800);
        sl_tensor in[2] = {tu_randn(ctx, &rng, 2, 40, 8, 1), tu_randn(ctx, &rng, 1, 40, 8, 1)}, out = {0};
        al.fail_at = al.calls + fail;
        sl_score_antidiag_params ap = {.block = 8, .stride = 4, .causal = 1};
        sl_status s = sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_SCORE_ANTIDIAG, &ap, in, &out);
        ck_assert_msg(s == SL_OK || s == SL_ENOMEM, "fail %ld: %d %s", fail, s, sl_ctx_error(ctx));
        if (s == SL_OK)
            sl_tensor_release(&out);
        sl_score_anchor_params np = {.block = 4, .step = 2, .init_cnt = 1, .local_cnt = 1, .theta = 1};
        s = sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_SCORE_ANCHOR, &np, in, &out);
        ck_assert_msg(s == SL_OK || s == SL_ENOMEM, "fail %ld: %d %s", fail, s, sl_ctx_error(ctx));
        if (s == SL_OK)
            sl_tensor_release(&out);
        al.fail_at = 0;
        release_n(in, 2);
        tu_ctx_done(ctx, &al);
    }
}
END_TEST

static Suite *stripe_suite(void)
{
    Suite *s = suite_create("stripe_ops");
    TCase *tc = tcase_create("stripe_ops");
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, test_antidiag_backends, 0, N_CASES);
    tcase_add_test(tc, test_antidiag_independent);
    tcase_add_loop_test(tc, test_strided_backends, 0, N_CASES);
    tcase_add_test(tc, test_strided_independent);
    tcase_add_test(tc, test_anchor_backends);
    tcase_add_test(tc, test_anchor_independent);
    tcase_add_test(tc, test_gather_rows);
    tcase_add_test(tc, test_stripe_validation);
    tcase_add_test(tc, test_stripe_alloc_failures_leak_nothing);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return tu_run(stripe_suite()); }
