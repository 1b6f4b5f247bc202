/* test_tsel_ops.c — the tsel family (prefill token selectors, issue 16):
 * attn.threshold and select.pq_match on ref and every other wanted backend
 * (SL_TEST_BACKENDS) against ref, and ref against float64 math written out
 * here: the thresholded softmax, dense equivalence at theta = -1e30, the PQ
 * codes (L1-nearest codewords), match counts, the slot order of the
 * selection and its dense equivalence at nnz >= n; select.hip_tree against
 * a tree written here over every block's float64 representative score, the
 * window blocks, K_b blocks kept, the evaluation bound 2.K_b per level, a
 * planted needle, and budget >= n = every causal block. */

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

/* ---- select.hip_tree ---- */

typedef struct hnode {
    int64_t a, b;
} hnode;

/* The tree of the contract over precomputed block scores bs[0..T): returns
 * the kept starts in kept[] (count returned) and the halves scored in *ev.
 * Written apart from the kernels: full score table, insertion order by
 * (score desc, start asc) with a plain bubble pass. */
static int64_t tree_here(const double *bs, int64_t T, int64_t kb, int64_t *kept, int64_t *ev)
{
    *ev = 0;
    if (T <= kb) {
        for (int64_t c = 0; c < T; c++)
            kept[c] = c;
        return T;
    }
    hnode g[512], h[1024];
    int64_t n = kb;
    for (int64_t i = 0; i < kb; i++)
    {
        g[i] = (hnode){i * T / kb, (i + 1) * T / kb - 1};
        *ev += g[i].a == g[i].b; /* a one-block initial group is scored as made */
    }
    for (;;) {
        int64_t m = 0, any = 0;
        for (int64_t i = 0; i < n; i++)
            if (g[i].b > g[i].a) {
                int64_t mid = g[i].a + (g[i].b - g[i].a + 1) / 2 - 1;
                h[m++] = (hnode){g[i].a, mid};
                h[m++] = (hnode){mid + 1, g[i].b};
                any = 1;
                *ev += 2;
            } else
                h[m++] = g[i];
        if (!any)
            break;
        for (int64_t x = 0; x < m; x++)
            for (int64_t y = 0; y + 1 < m - x; y++) {
                double s0 = bs[h[y].a], s1 = bs[h[y + 1].a];
                if (s1 > s0 || (s1 == s0 && h[y + 1].a < h[y].a)) {
                    hnode t = h[y];
                    h[y] = h[y + 1];
                    h[y + 1] = t;
                }
            }
        n = m < kb ? m : kb;
        for (int64_t i = 0; i < n; i++)
            g[i] = h[i];
    }
    for (int64_t i = 0; i < n; i++)
        kept[i] = g[i].a;
    return n;
}

START_TEST(test_hip_tree)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 18600 + (uint64_t)_i);
    shape_case c = TS_CASES[_i];
    c.nq *= 3;
    c.nk *= 3;
    sl_tensor in[3];
    qkv_of(ctx, &rng, &c, 1.0, in);
    const float *q = in[0].data, *k = in[1].data;
    static const int64_t V[4][5] = {{4, 2, 3, 8, 1}, {8, 4, 2, 0, 2}, {3, 1, 5, 4, 1}, {5, 3, 1, 7, 3}};
    for (int t = 0; t < 4; t++) {
        sl_select_hip_tree_params p = {.bq = V[t][0], .bk = V[t][1], .kb = V[t][2], .window = V[t][3],
                                       .causal = c.causal, .qstride = V[t][4], .scale = 0};
        check_op_vs_ref(ctx, SL_OP_SELECT_HIP_TREE, &p, in, 0, "select.hip_tree");
        sl_tensor out[2];
        ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_REF, SL_OP_SELECT_HIP_TREE, &p, in, out), SL_OK);
        int64_t R = (c.nq + p.bq - 1) / p.bq, C = (c.nk + p.bk - 1) / p.bk, off = c.nk - c.nq;
        ck_assert_int_eq(out[0].shape[1], R);
        ck_assert_int_eq(out[0].shape[2], C);
        const uint8_t *keep = out[0].data;
        const int32_t *ev = out[1].data;
        for (int64_t h = 0; h < c.hq; h++) {
            int64_t g = h / (c.hq / c.hkv);
            for (int64_t r = 0; r < R; r++) {
                int64_t i0 = r * p.bq, i1 = i0 + p.bq - 1 < c.nq - 1 ? i0 + p.bq - 1 : c.nq - 1;
                int64_t vis = C, w0 = C;
                if (c.causal) {
                    vis = (int64_t)floor((double)(i1 + off) / (double)p.bk) + 1;
                    vis = vis < C ? vis : C;
                    w0 = (int64_t)fmax(0.0, floor((double)(i0 + off - p.window) / (double)p.bk));
                }
                int64_t T = c.causal ? (w0 < vis ? w0 : vis) : C;
                double bs[1024];
                for (int64_t b = 0; b < T; b++) {
                    double best = -INFINITY;
                    for (int64_t i = i0 + p.qstride - 1 < i1 ? i0 + p.qstride - 1 : i1; i <= i1; i += p.qstride)
                        for (int64_t j = b * p.bk; j < (b + 1) * p.bk && j < c.nk; j++) {
                            double x = 0;
                            for (int64_t e = 0; e < c.d; e++)
                                x += (double)q[(h * c.nq + i) * c.d + e] * k[(g * c.nk + j) * c.d + e];
                            best = fmax(best, x);
                        }
                    bs[b] = best;
                }
                int64_t kept[512], e = 0, nk = tree_here(bs, T, p.kb, kept, &e);
                uint8_t want[1024] = {0};
                for (int64_t i = 0; i < nk; i++)
                    want[kept[i]] = 1;
                if (c.causal)
                    for (int64_t b = w0; b < vis; b++)
                        want[b] = 1;
                for (int64_t b = 0; b < C; b++)
                    ck_assert_msg(keep[(h * R + r) * C + b] == want[b], "hip keep h %lld r %lld block %lld: %d, want %d",
                                  (long long)h, (long long)r, (long long)b, keep[(h * R + r) * C + b], want[b]);
                ck_assert_int_eq(nk, T < p.kb ? T : p.kb);
                ck_assert_int_eq(ev[h * R + r], e);
                /* at most K_b initial groups plus 2.K_b halves per level over ceil(log2(ceil(T/K_b))) levels */
                int64_t size = (T + p.kb - 1) / p.kb, levels = 0;
                while (size > 1) {
                    size = (size + 1) / 2;
                    levels++;
                }
                ck_assert_int_le(e, T > p.kb ? p.kb + 2 * p.kb * levels : 0);
            }
        }
        double fl = sl_op_flops(SL_OP_SELECT_HIP_TREE, &p, in);
        ck_assert(fl >= 0);
        release_n(out, 2);
        /* budget >= every block: the keep covers every visible block */
        sl_select_hip_tree_params all = p;
        all.kb = t == 0 ? (int64_t)1 << 28 : C + 1; /* a huge kb allocates no more than C nodes */
        check_op_vs_ref(ctx, SL_OP_SELECT_HIP_TREE, &all, in, 0, "select.hip_tree (kb >= C)");
        ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_SELECT_HIP_TREE, &all, in, out), SL_OK);
        for (int64_t h = 0; h < c.hq; h++)
            for (int64_t r = 0; r < R; r++) {
                int64_t i1 = r * p.bq + p.bq - 1 < c.nq - 1 ? r * p.bq + p.bq - 1 : c.nq - 1;
                int64_t vis = c.causal ? (int64_t)floor((double)(i1 + off) / (double)p.bk) + 1 : C;
                for (int64_t b = 0; b < C; b++)
                    ck_assert_int_eq(((uint8_t *)out[0].data)[(h * R + r) * C + b], b < vis);
                ck_assert_int_eq(((int32_t *)out[1].data)[h * R + r], 0);
            }
        release_n(out, 2);
    }
    /* a needle key at the start of the second initial group is found by every query block that sees it in its tree */
    if (c.causal && c.nq == c.nk && c.nk >= 60) {
        sl_select_hip_tree_params p = {.bq = 4, .bk = 2, .kb = 3, .window = 0, .causal = 1, .qstride = 1, .scale = 0};
        int64_t C = (c.nk + 1) / 2, R = (c.nq + 3) / 4, last = R - 1, T = (last * 4) / 2;
        int64_t needle_block = T / 3, j = needle_block * 2;
        float *kk = (float *)in[1].data, *qq = (float *)in[0].data;
        for (int64_t h = 0; h < c.hq; h++)
            for (int64_t e = 0; e < c.d; e++) {
                kk[(h / (c.hq / c.hkv) * c.nk + j) * c.d + e] = e == 0 ? 30.f : 0.f;
                qq[(h * c.nq + last * 4) * c.d + e] = e == 0 ? 30.f : (float)(0.1 * sl_rng_normal(&rng));
            }
        sl_tensor out[2];
        ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_SELECT_HIP_TREE, &p, in, out), SL_OK);
        for (int64_t h = 0; h < c.hq; h++)
            ck_assert_msg(((uint8_t *)out[0].data)[(h * R + last) * C + needle_block], "needle missed (head %lld)",
                          (long long)h);
        release_n(out, 2);
    }
    release_n(in, 3);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* select.chunks (issue 20, session 4): every backend against ref (lists
 * exactly), ragged n, uneven chunk starts, equal chunks (score ties),
 * splice 0/1, globals, instruction rows (ctx) and budgets below and above
 * the allowed keys; ref against the chunk-fill rule written out here
 * (chunks by score then later first, each from its end, sorted, splice,
 * globals left out) with float64 scores of the head means. */
static void chunks_oracle(const sl_tensor *qp, const sl_tensor *kp, const int32_t *st, int64_t C,
                          const sl_select_chunks_params *p, int32_t *rp, int32_t *col)
{
    int64_t Hq = qp->shape[0], R = qp->shape[1], d = qp->shape[2], Hk = kp->shape[0], n_out = 0;
    rp[0] = 0;
    for (int64_t r = 0; r < R; r++) {
        int64_t first = r * p->block, A = (r + 1) * p->block < p->n ? (r + 1) * p->block : p->n;
        int64_t lo = A - p->local_tokens > 0 ? A - p->local_tokens : 0;
        int64_t budget = A <= p->topk ? lo : p->topk - p->local_tokens;
        if (first < p->ctx && lo > 0 && budget > 0) {
            double S[64];
            int used[64] = {0};
            char mark[2048] = {0};
            for (int64_t c = 0; c < C; c++) {
                S[c] = 0;
                for (int64_t e = 0; e < d; e++) {
                    double qm = 0, km = 0;
                    for (int64_t h = 0; h < Hq; h++)
                        qm += tu_at(qp, (h * R + r) * d + e);
                    for (int64_t h = 0; h < Hk; h++)
                        km += tu_at(kp, (h * C + c) * d + e);
                    S[c] += (qm / (double)Hq) * (km / (double)Hk);
                }
            }
            for (;;) {
                int64_t best = -1;
                for (int64_t c = 0; c < C; c++)
                    if (!used[c] && st[c] < lo && (best < 0 || S[c] > S[best] || (S[c] == S[best] && c > best)))
                        best = c;
                if (best < 0 || budget <= 0)
                    break;
                used[best] = 1;
                int64_t end = best + 1 < C ? st[best + 1] : p->n;
                end = end < lo ? end : lo;
                for (int64_t j = end - 1; j >= st[best] && budget > 0; j--, budget--)
                    mark[j] = 1;
            }
            int64_t skip = p->splice ? p->globals : 0;
            for (int64_t j = 0; j < lo; j++)
                if (mark[j]) {
                    if (skip > 0)
                        skip--;
                    else if (j >= p->globals)
                        col[n_out++] = (int32_t)j;
                }
        }
        rp[r + 1] = (int32_t)n_out;
    }
}

START_TEST(test_select_chunks)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 48000);
    struct { int64_t n, b, hq, hk, d, C; } sh[] = {{300, 16, 2, 1, 8, 20}, {1000, 32, 3, 3, 16, 40}, {97, 8, 1, 1, 4, 13}};
    struct { int64_t L, topk, ctx, globals, splice; } ps[] = {
        {16, 120, 1 << 30, 8, 0}, {32, 64, 1 << 30, 0, 0}, {8, 1000, 200, 5, 1}, {0, 50, 1 << 30, 12, 1}, {16, 2, 1 << 30, 0, 0}};
    int ties_seen = 0;
    for (int si = 0; si < 3; si++) {
        int64_t n = sh[si].n, b = sh[si].b, R = (n + b - 1) / b, C = sh[si].C, d = sh[si].d;
        sl_tensor qp = tu_randn(ctx, &rng, sh[si].hq, R, d, 1.0), kp = tu_randn(ctx, &rng, sh[si].hk, C, d, 1.0);
        /* chunks 3 and 4 equal in every head: equal scores everywhere */
        for (int64_t h = 0; h < sh[si].hk; h++)
            for (int64_t e = 0; e < d; e++)
                ((float *)kp.data)[(h * C + 4) * d + e] = ((float *)kp.data)[(h * C + 3) * d + e];
        int32_t st[64];
        st[0] = 0;
        for (int64_t c = 1; c < C; c++) { /* uneven gaps, all below n */
            int64_t room = (n - 1 - st[c - 1]) - (C - c);
            int64_t gap = 1 + (int64_t)(sl_rng_uniform(&rng) * (double)(room < 2 * n / C ? room : 2 * n / C));
            st[c] = (int32_t)(st[c - 1] + (gap < 1 ? 1 : gap));
        }
        ck_assert_int_lt(st[C - 1], n);
        sl_tensor in[3] = {qp, kp, i32_vec(ctx, st, C)};
        for (int pi = 0; pi < 5; pi++) {
            sl_select_chunks_params p = {.n = n, .block = b, .local_tokens = ps[pi].L, .topk = ps[pi].topk,
                                         .ctx = ps[pi].ctx, .globals = ps[pi].globals, .splice = ps[pi].splice};
            sl_tensor ref[2];
            ck_assert_msg(sl_op_run(ctx, SL_BACKEND_REF, SL_OP_SELECT_CHUNKS, &p, in, ref) == SL_OK, "%s", sl_ctx_error(ctx));
            int32_t rp[130], col[20000];
            chunks_oracle(&qp, &kp, st, C, &p, rp, col);
            const int32_t *rr = ref[0].data, *rc = ref[1].data;
            for (int64_t r = 0; r <= R; r++)
                ck_assert_msg(rr[r] == rp[r], "chunks shape %d params %d: row_ptr[%lld] = %d, oracle %d", si, pi, (long long)r, rr[r], rp[r]);
            for (int64_t i = 0; i < rp[R]; i++)
                ck_assert_msg(rc[i] == col[i], "chunks shape %d params %d: col[%lld] = %d, oracle %d", si, pi, (long long)i, rc[i], col[i]);
            for (int64_t i = rp[R]; i < ref[1].shape[0]; i++)
                ck_assert_int_eq(rc[i], -1);
            for (int64_t i = 0; i < rp[R]; i++)
                ties_seen += rc[i] >= st[3] && rc[i] < st[5];
            release_n(ref, 2);
            check_op_vs_ref(ctx, SL_OP_SELECT_CHUNKS, &p, in, 0, "select.chunks");
        }
        sl_select_chunks_params bad = {.n = n, .block = b, .local_tokens = 16, .topk = 64, .ctx = 1 << 30};
        ((int32_t *)in[2].data)[1] = 0;
        expect_fail(ctx, SL_OP_SELECT_CHUNKS, &bad, in, SL_EARG, "starts");
        release_n(in, 3);
    }
    ck_assert_int_gt(ties_seen, 0);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* select.token_budget (issue 20, session 5): ref against the contract
 * computed in the test (the importance as the contract's sums, the count by
 * an insertion sort, each head's kept prefix keys by counting ranks: key j
 * is kept iff fewer than B keys come before it in (importance descending,
 * position ascending)); every backend equals ref exactly. Shapes with one
 * row, even and odd kernels, budgets below, at and above m_min, coverage 0
 * (the identity), 1 (all but one dropped before the floor) and grid values
 * with ks = 1 (equal importances split at the cut). */
static void token_budget_oracle(const sl_tensor *x, const sl_select_token_budget_params *p, int32_t *idx,
                                int32_t info[2])
{
    int64_t H = x->shape[0], W = x->shape[1], C = x->shape[2], P = C - W, half = p->ks / 2;
    double *imp = calloc((size_t)(H * P), sizeof(double)), *raw = calloc((size_t)P, sizeof(double));
    double *g = calloc((size_t)P, sizeof(double));
    for (int64_t h = 0; h < H; h++) {
        for (int64_t j = 0; j < P; j++) {
            double s = 0;
            for (int64_t r = 0; r < W; r++)
                s += tu_at(x, (h * W + r) * C + j);
            raw[j] = s / (double)W;
        }
        double tot = 0;
        for (int64_t j = 0; j < P; j++) {
            double s = 0;
            for (int64_t i = j - half; i <= j + half; i++)
                s += i >= 0 && i < P ? raw[i] : 0.0;
            imp[h * P + j] = s / (double)p->ks;
            tot += imp[h * P + j];
        }
        for (int64_t j = 0; j < P; j++)
            imp[h * P + j] = tot > 0 ? imp[h * P + j] / tot : 0;
    }
    double gt = 0;
    for (int64_t j = 0; j < P; j++) {
        for (int64_t h = 0; h < H; h++)
            g[j] += imp[h * P + j] / (double)H;
        gt += g[j];
    }
    for (int64_t j = 0; j < P; j++) { /* insertion sort of gs ascending */
        double v = gt > 0 ? g[j] / gt : 0;
        int64_t i = j;
        for (; i > 0 && raw[i - 1] > v; i--)
            raw[i] = raw[i - 1];
        raw[i] = v;
    }
    int64_t count = 0;
    double cum = 0;
    for (int64_t j = 0; j < P; j++) {
        cum += raw[j];
        if (!(cum < p->coverage))
            break;
        count++;
    }
    int64_t B = count == 0 ? P : (P - count - 1 > p->m_min ? P - count - 1 : p->m_min);
    if (B > P)
        B = P;
    info[0] = (int32_t)count;
    info[1] = (int32_t)B;
    for (int64_t h = 0; h < H; h++) {
        int64_t n = 0;
        for (int64_t j = 0; j < P; j++) {
            int64_t before = 0;
            double v = imp[h * P + j];
            for (int64_t i = 0; i < P; i++)
                before += imp[h * P + i] > v || (imp[h * P + i] == v && i < j);
            if (before < B)
                idx[h * C + n++] = (int32_t)j;
        }
        for (int64_t j = P; j < C; j++)
            idx[h * C + n++] = (int32_t)j;
        for (; n < C; n++)
            idx[h * C + n] = -1;
    }
    free(imp);
    free(raw);
    free(g);
}

START_TEST(test_select_token_budget)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 49000);
    const int64_t sh[][3] = {{1, 1, 40}, {3, 5, 300}, {2, 16, 700}, {4, 8, 129}};
    struct { int64_t ks; double coverage; int64_t m_min; } ps[] = {
        {7, 0.005, 10}, {4, 0.1, 0}, {1, 0.5, 20}, {7, 0, 0}, {3, 1, 0}, {7, 0.3, 100000}, {2, 0.02, 5}};
    int cut_seen = 0, ident_seen = 0, tie_cut = 0;
    for (int si = 0; si < 4; si++)
        for (int grid = 0; grid < 2; grid++) {
            int64_t H = sh[si][0], W = sh[si][1], C = sh[si][2], P = C - W;
            sl_tensor x = tu_randn(ctx, &rng, H, W, C, 1.0);
            for (int64_t i = 0; i < H * W * C; i++) { /* probabilities-like (>= 0); on a grid: many equal */
                float v = fabsf(((float *)x.data)[i]);
                ((float *)x.data)[i] = grid ? floorf(v * 2.0f) / 2.0f + 0.25f : v;
            }
            int32_t *want = malloc((size_t)(H * C) * sizeof(int32_t));
            for (int pi = 0; pi < 7; pi++) {
                sl_select_token_budget_params p = {.ks = ps[pi].ks, .coverage = ps[pi].coverage, .m_min = ps[pi].m_min};
                sl_tensor ref[2];
                ck_assert_msg(sl_op_run(ctx, SL_BACKEND_REF, SL_OP_SELECT_TOKEN_BUDGET, &p, &x, ref) == SL_OK, "%s",
                              sl_ctx_error(ctx));
                int32_t info[2];
                token_budget_oracle(&x, &p, want, info);
                const int32_t *ri = ref[1].data, *rx = ref[0].data;
                ck_assert_msg(ri[0] == info[0] && ri[1] == info[1], "token_budget shape %d grid %d params %d: info {%d, %d}, oracle {%d, %d}",
                              si, grid, pi, ri[0], ri[1], info[0], info[1]);
                for (int64_t i = 0; i < H * C; i++)
                    ck_assert_msg(rx[i] == want[i], "token_budget shape %d grid %d params %d: idx[%lld] = %d, oracle %d", si,
                                  grid, pi, (long long)i, rx[i], want[i]);
                cut_seen += info[1] < P;
                ident_seen += info[1] == P;
                tie_cut += grid && info[1] < P && ps[pi].ks == 1;
                release_n(ref, 2);
                check_op_vs_ref(ctx, SL_OP_SELECT_TOKEN_BUDGET, &p, &x, 0, "select.token_budget");
            }
            free(want);
            sl_tensor_release(&x);
        }
    ck_assert_int_gt(cut_seen, 0);
    ck_assert_int_gt(ident_seen, 0);
    ck_assert_int_gt(tie_cut, 0);
    sl_tensor bad = tu_randn(ctx, &rng, 2, 9, 9, 1.0);
    sl_select_token_budget_params p = {.ks = 7, .coverage = 0.1, .m_min = 0};
    expect_fail(ctx, SL_OP_SELECT_TOKEN_BUDGET, &p, &bad, SL_ESHAPE, "W < C");
    sl_tensor_release(&bad);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* select.theta_rows (issue 20, session 5): ref against the recipe's lookup
 * written in the test (binary search for the first key >= r, then the key
 * before it when as near); every backend equals ref exactly. Heads with
 * 0, 1 and many keys (padding), even gaps (rows exactly between two keys:
 * the shorter), step 0 and 1, k above some rows, rows past the last key;
 * unsorted or interleaved padding refused. */
static float theta_oracle(const int32_t *keys, const float *vals, int64_t L, int64_t r, int64_t k)
{
    int64_t n = 0;
    while (n < L && keys[n] >= 0)
        n++;
    if (r <= k || n == 0)
        return -1e30f;
    int64_t lo = 0, hi = n - 1;
    while (lo < hi) {
        int64_t mid = (lo + hi) / 2;
        if (keys[mid] < r)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo > 0 && llabs(keys[lo - 1] - r) <= llabs(keys[lo] - r))
        lo--;
    return vals[lo];
}

START_TEST(test_select_theta_rows)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 49500);
    enum { H = 4, L = 9 };
    int32_t keys[H * L];
    int64_t nkeys[H] = {9, 1, 0, 5};
    const int64_t shp[2] = {H, L};
    sl_tensor vals = randn_shape(ctx, &rng, 2, shp, 3.0);
    for (int64_t h = 0; h < H; h++) {
        int32_t r = 3 + (int32_t)(sl_rng_uniform(&rng) * 5);
        for (int64_t t = 0; t < L; t++) {
            keys[h * L + t] = t < nkeys[h] ? r : -1;
            r += 2 * (1 + (int32_t)(sl_rng_uniform(&rng) * 20)); /* even gaps: a row lies exactly between */
        }
    }
    sl_tensor in[2] = {{0}, vals};
    ck_assert_int_eq(sl_tensor_new(ctx, SL_I32, 2, shp, &in[0]), SL_OK);
    memcpy(in[0].data, keys, sizeof keys);
    struct { int64_t rows, r0, step, k; } ps[] = {{300, 1, 1, 0}, {300, 1, 1, 40}, {50, 120, 0, 10}, {50, 120, 0, 500},
                                                  {7, 1000, 1, 0}, {0, 1, 1, 0}, {257, 2, 1, 5}};
    int ties = 0;
    for (int pi = 0; pi < 7; pi++) {
        sl_select_theta_rows_params p = {.rows = ps[pi].rows, .r0 = ps[pi].r0, .step = ps[pi].step, .k = ps[pi].k};
        sl_tensor ref;
        ck_assert_msg(sl_op_run(ctx, SL_BACKEND_REF, SL_OP_SELECT_THETA_ROWS, &p, in, &ref) == SL_OK, "%s", sl_ctx_error(ctx));
        ck_assert_int_eq(ref.shape[0], H);
        ck_assert_int_eq(ref.shape[1], p.rows);
        for (int64_t h = 0; h < H; h++)
            for (int64_t i = 0; i < p.rows; i++) {
                int64_t r = p.r0 + p.step * i;
                float want = theta_oracle(keys + h * L, f32p(&vals) + h * L, L, r, p.k);
                ck_assert_msg(tu_at(&ref, h * p.rows + i) == want, "theta_rows params %d head %lld row %lld: %g, oracle %g",
                              pi, (long long)h, (long long)i, tu_at(&ref, h * p.rows + i), want);
                for (int64_t t = 1; t < nkeys[h]; t++)
                    ties += r > p.k && 2 * r == keys[h * L + t - 1] + keys[h * L + t];
            }
        sl_tensor_release(&ref);
        check_op_vs_ref(ctx, SL_OP_SELECT_THETA_ROWS, &p, in, 0, "select.theta_rows");
    }
    ck_assert_int_gt(ties, 0);
    sl_select_theta_rows_params p = {.rows = 5, .r0 = 1, .step = 1, .k = 0};
    int32_t *kd = in[0].data;
    int32_t save = kd[3];
    kd[3] = kd[2];
    expect_fail(ctx, SL_OP_SELECT_THETA_ROWS, &p, in, SL_EARG, "ascend strictly");
    kd[3] = save;
    kd[L + 2] = 17; /* a key after head 1's padding */
    expect_fail(ctx, SL_OP_SELECT_THETA_ROWS, &p, in, SL_EARG, "padding only");
    release_n(in, 2);
    tu_ctx_done(ctx, &al);
}
END_TEST

static void add_tests(TCase *tc)
{
    tcase_add_test(tc, test_select_chunks);
    tcase_add_test(tc, test_select_token_budget);
    tcase_add_test(tc, test_select_theta_rows);
    tcase_add_loop_test(tc, test_hip_tree, 0, N_TS_CASES);
    tcase_add_loop_test(tc, test_threshold, 0, N_TS_CASES);
    tcase_add_loop_test(tc, test_pq_match, 0, N_TS_CASES);
}

int main(void) { return run_op_suite("tsel_ops", add_tests); }
