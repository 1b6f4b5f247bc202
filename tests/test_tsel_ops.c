/* test_tsel_ops.c — the tsel family (prefill token selectors, issue 16):
 * attn.threshold and select.pq_match on ref and every other wanted backend
 * (SL_TEST_BACKENDS) against ref, and ref against float64 math written out
 * here: the thresholded softmax, dense equivalence at theta = -1e30, the PQ
 * codes (L1-nearest codewords), match counts, the slot order of the
 * selection and its dense equivalence at nnz >= n. */

#include "opsutil.h"

static const shape_case TS_CASES[] = {
    {2, 1, 37, 37, 16, 1}, {4, 2, 40, 40, 32, 1}, {2, 2, 20, 50, 16, 0},
    {3, 3, 1, 77, 24, 1},  {2, 1, 17, 33, 64, 1}, {1, 1, 1, 1, 4, 1},
};
#define N_TS_CASES (int)(sizeof TS_CASES / sizeof TS_CASES[0])

/* ---- attn.threshold ---- */

START_TEST(test_threshold)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 18000 + (uint64_t)_i);
    const shape_case *c = &TS_CASES[_i];
    sl_tensor in[4];
    qkv_of(ctx, &rng, c, 1.0, in);
    in[3] = f32_2d(ctx, c->hq, c->nq);
    for (int64_t i = 0; i < c->hq * c->nq; i++)
        f32p(&in[3])[i] = (float)(0.5 + 0.5 * sl_rng_normal(&rng));
    const float *q = in[0].data, *k = in[1].data, *v = in[2].data;
    double scale = 1 / sqrt((double)c->d);
    for (int t = 0; t < 3; t++) {
        sl_attn_threshold_params p = {.causal = c->causal, .scale = 0, .dense_upto = t == 2 ? 5 : 0, .keep_max = t == 1};
        check_op_vs_ref(ctx, SL_OP_ATTN_THRESHOLD, &p, in, 1e-5, "attn.threshold");
        sl_tensor ref[3];
        ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_REF, SL_OP_ATTN_THRESHOLD, &p, in, ref), SL_OK);
        for (int64_t h = 0; h < c->hq; h++)
            for (int64_t i = 0; i < c->nq; i++) {
                int64_t g = h / (c->hq / c->hkv), n = c->causal ? i + c->nk - c->nq + 1 : c->nk, arg = 0;
                double s[128], mx = -INFINITY, l = 0, o[64] = {0};
                for (int64_t j = 0; j < n; j++) {
                    double x = 0;
                    for (int64_t e = 0; e < c->d; e++)
                        x += (double)q[(h * c->nq + i) * c->d + e] * k[(g * c->nk + j) * c->d + e];
                    s[j] = scale * x;
                    if (s[j] > s[arg])
                        arg = j;
                }
                int cnt = 0;
                for (int64_t j = 0; j < n; j++) {
                    int keep = n <= p.dense_upto || s[j] > tu_at(&in[3], h * c->nq + i) || (p.keep_max && j == arg);
                    if (!keep)
                        s[j] = -INFINITY;
                    else {
                        cnt++;
                        mx = fmax(mx, s[j]);
                    }
                }
                for (int64_t j = 0; j < n; j++)
                    if (s[j] > -INFINITY) {
                        double w = exp(s[j] - mx);
                        l += w;
                        for (int64_t e = 0; e < c->d; e++)
                            o[e] += w * v[(g * c->nk + j) * c->d + e];
                    }
                ck_assert_int_eq(((int32_t *)ref[2].data)[h * c->nq + i], cnt);
                if (p.keep_max)
                    ck_assert_int_ge(cnt, 1);
                for (int64_t e = 0; e < c->d; e++)
                    ck_assert_double_eq_tol(tu_at(&ref[0], (h * c->nq + i) * c->d + e), cnt ? o[e] / l : 0, 1e-5);
                if (cnt)
                    ck_assert_double_eq_tol(tu_at(&ref[1], h * c->nq + i), mx + log(l), 1e-5);
                else
                    ck_assert(isinf(tu_at(&ref[1], h * c->nq + i)));
            }
        release_n(ref, 3);
    }
    /* theta = -1e30 everywhere: attn.dense */
    for (int64_t i = 0; i < c->hq * c->nq; i++)
        f32p(&in[3])[i] = -1e30f;
    sl_attn_threshold_params p = {.causal = c->causal, .scale = 0, .dense_upto = 0, .keep_max = 0};
    sl_attn_params dp = {.causal = c->causal, .scale = 0};
    sl_tensor dense[2];
    ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_REF, SL_OP_ATTN_DENSE, &dp, in, dense), SL_OK);
    sl_backend_id bs[SL_BACKEND__COUNT + 1] = {SL_BACKEND_REF};
    int nb = 1 + other_backends(bs + 1);
    for (int b = 0; b < nb; b++) {
        sl_tensor out[3];
        ck_assert_int_eq(sl_op_run(ctx, bs[b], SL_OP_ATTN_THRESHOLD, &p, in, out), SL_OK);
        assert_attn_close(&out[0], &out[1], &dense[0], &dense[1], "threshold -1e30 vs dense");
        release_n(out, 3);
    }
    release_n(dense, 2);
    release_n(in, 4);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* ---- select.pq_match ---- */

static void codes_of(const float *x, const float *cb, int64_t S, int64_t C, int64_t dc, int *code)
{
    for (int64_t s = 0; s < S; s++) {
        double best = 1e300;
        for (int64_t c = 0; c < C; c++) {
            double dist = 0;
            for (int64_t e = 0; e < dc; e++)
                dist += fabs((double)x[s * dc + e] - cb[(s * C + c) * dc + e]);
            if (dist < best) {
                best = dist;
                code[s] = (int)c;
            }
        }
    }
}

/* Every backend equals ref exactly; ref's lists checked against codes and
 * counts computed here: sorted, unique, visible, min(n, nnz) per row, and
 * every kept key's slot >= every dropped key's, with the cut slot filled in
 * ascending order; identical q and k put the diagonal in the top slot; nnz
 * >= n keeps every visible key (attn.token_sparse then equals attn.dense). */
START_TEST(test_pq_match)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 18100 + (uint64_t)_i);
    const shape_case *c = &TS_CASES[_i];
    sl_tensor in[3];
    qkv_of(ctx, &rng, c, 1.0, in);
    int64_t S = c->d % 8 == 0 ? 8 : 4, dc = c->d / S, C = 4, hc = 1;
    int64_t cbs[4] = {hc, S, C, dc};
    sl_tensor cb = randn_shape(ctx, &rng, 4, cbs, 0.8);
    sl_tensor pin[3] = {in[0], in[1], cb};
    for (int t = 0; t < 2; t++) {
        sl_select_pq_match_params p = {.nnz = t ? 7 : 3, .causal = c->causal, .slots = 4};
        check_op_vs_ref(ctx, SL_OP_SELECT_PQ_MATCH, &p, pin, 0, "select.pq_match");
        sl_tensor out[2];
        ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_REF, SL_OP_SELECT_PQ_MATCH, &p, pin, out), SL_OK);
        const int32_t *rp = out[0].data, *col = out[1].data;
        for (int64_t h = 0; h < c->hq; h++) {
            int64_t g = h / (c->hq / c->hkv);
            for (int64_t i = 0; i < c->nq; i++) {
                int64_t n = c->causal ? i + c->nk - c->nq + 1 : c->nk;
                int qc[8], kc[8], slot[128], kept[128] = {0};
                codes_of(f32p(&in[0]) + (h * c->nq + i) * c->d, f32p(&cb), S, C, dc, qc);
                for (int64_t j = 0; j < n; j++) {
                    codes_of(f32p(&in[1]) + (g * c->nk + j) * c->d, f32p(&cb), S, C, dc, kc);
                    int m = 0;
                    for (int64_t s = 0; s < S; s++)
                        m += qc[s] == kc[s];
                    slot[j] = (int)(4 * m / S < 3 ? 4 * m / S : 3);
                }
                int32_t a = rp[h * (c->nq + 1) + i], b = rp[h * (c->nq + 1) + i + 1];
                ck_assert_int_eq(b - a, n < p.nnz ? n : p.nnz);
                for (int32_t e = a; e < b; e++) {
                    ck_assert(col[e] >= 0 && col[e] < n);
                    if (e > a)
                        ck_assert_int_gt(col[e], col[e - 1]);
                    kept[col[e]] = 1;
                }
                int min_kept = 99, max_dropped = -1;
                for (int64_t j = 0; j < n; j++) {
                    if (kept[j])
                        min_kept = slot[j] < min_kept ? slot[j] : min_kept;
                    else
                        max_dropped = slot[j] > max_dropped ? slot[j] : max_dropped;
                }
                ck_assert_int_ge(min_kept, max_dropped);
                /* in the cut slot, the kept keys come before the dropped ones */
                for (int64_t j = 0; j < n; j++)
                    for (int64_t x = j + 1; x < n; x++)
                        if (slot[j] == min_kept && slot[x] == min_kept && !kept[j] && kept[x])
                            ck_abort_msg("cut slot not filled in ascending order");
            }
        }
        release_n(out, 2);
    }
    /* nnz >= n: every visible key; through attn.token_sparse that is attn.dense */
    sl_select_pq_match_params all = {.nnz = c->nk, .causal = c->causal, .slots = 4};
    sl_tensor lists[2];
    ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_SELECT_PQ_MATCH, &all, pin, lists), SL_OK);
    sl_tensor tin[8] = {in[0], in[1], in[2], lists[0], lists[1], {0}, {0}, {0}}, ts[2], dense[2];
    sl_attn_token_params tp = {.rows_per_entry = 1, .scale = 0};
    sl_attn_params dp = {.causal = c->causal, .scale = 0};
    ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_ATTN_TOKEN_SPARSE, &tp, tin, ts), SL_OK);
    ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_REF, SL_OP_ATTN_DENSE, &dp, in, dense), SL_OK);
    assert_attn_close(&ts[0], &ts[1], &dense[0], &dense[1], "pq lists with nnz >= n vs dense");
    release_n(ts, 2);
    release_n(dense, 2);
    release_n(lists, 2);
    /* identical q and k (one head each): the diagonal is in the top slot and kept with nnz 1 when it is alone there */
    if (c->hq == c->hkv && c->nq == c->nk) {
        sl_tensor same[3] = {in[1], in[1], cb}, o2[2];
        sl_select_pq_match_params p1 = {.nnz = 2, .causal = 1, .slots = 4};
        ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_REF, SL_OP_SELECT_PQ_MATCH, &p1, same, o2), SL_OK);
        int hits = 0, rows = 0;
        for (int64_t h = 0; h < c->hq; h++)
            for (int64_t i = 0; i < c->nq; i++) {
                int32_t a = ((int32_t *)o2[0].data)[h * (c->nq + 1) + i], b = ((int32_t *)o2[0].data)[h * (c->nq + 1) + i + 1];
                for (int32_t e = a; e < b; e++)
                    hits += ((int32_t *)o2[1].data)[e] == i;
                rows++;
            }
        ck_assert_msg(hits * 2 > rows, "diagonal kept in %d of %d rows", hits, rows);
        release_n(o2, 2);
    }
    int64_t bad[4] = {1, S + 1, C, dc};
    sl_tensor cbb = randn_shape(ctx, &rng, 4, bad, 1.0), bin[3] = {in[0], in[1], cbb};
    sl_select_pq_match_params p = {.nnz = 3, .causal = c->causal, .slots = 4};
    expect_fail(ctx, SL_OP_SELECT_PQ_MATCH, &p, bin, SL_ESHAPE, "codebook must be");
    sl_tensor_release(&cbb);
    sl_tensor_release(&cb);
    release_n(in, 3);
    tu_ctx_done(ctx, &al);
}
END_TEST

static void add_tests(TCase *tc)
{
    tcase_add_loop_test(tc, test_threshold, 0, N_TS_CASES);
    tcase_add_loop_test(tc, test_pq_match, 0, N_TS_CASES);
}

int main(void) { return run_op_suite("tsel_ops", add_tests); }
