/* test_page_ops.c — the page family (decode over a paged KV cache, issue 13)
 * on every backend of SL_TEST_BACKENDS against ref, ref against plain
 * float64 loops written here, and the card checks: Quest's bound (q.k <= U_p
 * for every key of every page, by brute force), page selection keeps the
 * forced pages and the best-scored rest, page-sparse attention with every
 * page listed equals attn.dense to 1e-5 (any split), split-K partials merged
 * by LSE equal one pass, and sl_kvcache's incremental metadata equals
 * page.meta rebuilt after random appends and evictions. */

#include "opsutil.h"

static sl_page_meta_params meta_p(int64_t page)
{
    sl_page_meta_params p;
    sl_op_params_default(SL_OP_PAGE_META, &p);
    p.page = page;
    return p;
}

/* page.meta on ragged sizes: backends vs ref, ref vs plain loops. */
/* m distinct indices of [0, len) in increasing order (selection sampling), m <= len. */
static void sorted_sample(sl_rng *rng, int32_t *row, int64_t m, int64_t len)
{
    int64_t got = 0;
    for (int64_t t = 0; t < len && got < m; t++)
        if (sl_rng_uniform(rng) < (double)(m - got) / (double)(len - t))
            row[got++] = (int32_t)t;
}

START_TEST(test_page_meta)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 13001);
    const int64_t shapes[][4] = {{2, 37, 8, 16}, {3, 64, 5, 16}, {1, 5, 4, 8}, {2, 50, 16, 7}};
    for (int c = 0; c < 4; c++) {
        int64_t h = shapes[c][0], n = shapes[c][1], d = shapes[c][2], P = shapes[c][3], np = (n + P - 1) / P;
        sl_page_meta_params p = meta_p(P);
        sl_tensor k = tu_randn(ctx, &rng, h, n, d, 1.5);
        check_op_vs_ref(ctx, SL_OP_PAGE_META, &p, &k, 1e-6, "page.meta");
        sl_tensor out[3];
        ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_REF, SL_OP_PAGE_META, &p, &k, out), SL_OK);
        ck_assert_int_eq(out[0].shape[1], np);
        for (int64_t hh = 0; hh < h; hh++)
            for (int64_t pg = 0; pg < np; pg++)
                for (int64_t ch = 0; ch < d; ch++) {
                    double lo = 1e30, hi = -1e30, s = 0;
                    int64_t cnt = 0;
                    for (int64_t t = pg * P; t < n && t < (pg + 1) * P; t++, cnt++) {
                        double x = tu_at(&k, (hh * n + t) * d + ch);
                        lo = fmin(lo, x);
                        hi = fmax(hi, x);
                        s += x;
                    }
                    int64_t o = (hh * np + pg) * d + ch;
                    ck_assert(tu_at(&out[0], o) == (float)lo && tu_at(&out[1], o) == (float)hi);
                    ck_assert(fabs(tu_at(&out[2], o) - s / (double)cnt) < 1e-6);
                }
        release_n(out, 3);
        sl_tensor_release(&k);
    }
    tu_ctx_done(ctx, &al);
}
END_TEST

/* Quest's bound: q.k <= U_p for every key of page p (brute force), with
 * equality when one key holds every channel's extreme; backends vs ref. */
START_TEST(test_page_bounds)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 13002);
    int64_t hq = 4, hkv = 2, r = 2, n = 75, d = 12, P = 16, np = 5;
    sl_tensor k = tu_randn(ctx, &rng, hkv, n, d, 1.0);
    sl_page_meta_params mp = meta_p(P);
    sl_tensor meta[3];
    ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_PAGE_META, &mp, &k, meta), SL_OK);
    sl_tensor in[3] = {tu_randn(ctx, &rng, hq, r, d, 1.0), meta[0], meta[1]};
    check_op_vs_ref(ctx, SL_OP_PAGE_BOUNDS, NULL, in, 1e-5, "page.bounds");
    sl_tensor u = run_op1(ctx, SL_BACKEND_REF, SL_OP_PAGE_BOUNDS, NULL, in);
    ck_assert_int_eq(u.shape[2], np);
    for (int64_t h = 0; h < hq; h++)
        for (int64_t i = 0; i < r; i++) {
            const float *q = f32p(&in[0]) + (h * r + i) * d;
            for (int64_t pg = 0; pg < np; pg++) {
                double up = tu_at(&u, (h * r + i) * np + pg), best = -1e30;
                for (int64_t t = pg * P; t < n && t < (pg + 1) * P; t++) {
                    double s = 0;
                    for (int64_t c = 0; c < d; c++)
                        s += (double)q[c] * tu_at(&k, ((h / 2) * n + t) * d + c);
                    ck_assert_msg(s <= up + 1e-5, "q.k = %g above the bound %g (head %lld page %lld)", s, up,
                                  (long long)h, (long long)pg);
                    best = fmax(best, s);
                }
                ck_assert(best <= up + 1e-5);
            }
        }
    sl_tensor_release(&u);
    /* equality: a page of one key (P = 1) has min = max = the key */
    sl_page_meta_params one = meta_p(1);
    sl_tensor m1[3];
    ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_REF, SL_OP_PAGE_META, &one, &k, m1), SL_OK);
    sl_tensor in1[3] = {in[0], m1[0], m1[1]};
    u = run_op1(ctx, SL_BACKEND_REF, SL_OP_PAGE_BOUNDS, NULL, in1);
    for (int64_t t = 0; t < n; t++) {
        double s = 0;
        for (int64_t c = 0; c < d; c++)
            s += (double)f32p(&in[0])[c] * tu_at(&k, t * d + c);
        ck_assert(fabs(s - tu_at(&u, t)) < 1e-5);
    }
    sl_tensor_release(&u);
    release_n(m1, 3);
    sl_tensor_release(&in[0]);
    release_n(meta, 3);
    sl_tensor_release(&k);
    tu_ctx_done(ctx, &al);
}
END_TEST

static sl_page_select_params sel_p(int64_t k, int64_t group, int64_t sink, int last)
{
    sl_page_select_params p;
    sl_op_params_default(SL_OP_PAGE_SELECT, &p);
    p.k = k;
    p.group = group;
    p.sink = sink;
    p.last = last;
    return p;
}

/* page.select: backends equal ref exactly; the lists hold the forced pages
 * and, past them, pages whose group-summed score beats every page left out. */
START_TEST(test_page_select)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 13003);
    const int64_t cases[][7] = {/* h, r, np, k, group, sink, last */
                                {4, 1, 30, 6, 1, 0, 1}, {4, 2, 30, 6, 2, 1, 1}, {8, 1, 17, 40, 4, 2, 0},
                                {2, 3, 9, 3, 2, 4, 1},  {3, 1, 1, 2, 1, 0, 1}, {6, 2, 25, 5, 3, 0, 0}};
    for (int c = 0; c < 6; c++) {
        const int64_t *cs = cases[c];
        sl_page_select_params p = sel_p(cs[3], cs[4], cs[5], (int)cs[6]);
        sl_tensor x = random_scores(ctx, &rng, cs[0], cs[1], cs[2], 1);
        check_op_vs_ref(ctx, SL_OP_PAGE_SELECT, &p, &x, 0, "page.select");
        sl_tensor out = run_op1(ctx, SL_BACKEND_REF, SL_OP_PAGE_SELECT, &p, &x);
        int64_t np = cs[2], m = cs[3] < np ? cs[3] : np, lists = cs[0] / cs[4], r = cs[1];
        ck_assert_int_eq(out.shape[0], lists);
        ck_assert_int_eq(out.shape[2], m);
        const int32_t *ids = out.data;
        for (int64_t l = 0; l < lists; l++)
            for (int64_t i = 0; i < r; i++) {
                const int32_t *row = ids + (l * r + i) * m;
                uint8_t in_list[64] = {0};
                for (int64_t e = 0; e < m; e++) {
                    ck_assert(row[e] >= 0 && row[e] < np && (e == 0 || row[e] > row[e - 1]));
                    in_list[row[e]] = 1;
                }
                int64_t forced = 0;
                if (p.last) {
                    ck_assert(in_list[np - 1]);
                    forced++;
                }
                for (int64_t s = 0; s < p.sink && s < np && forced < m; s++, forced++)
                    ck_assert(in_list[s]);
                double worst_in = INFINITY, best_out = -INFINITY;
                for (int64_t pg = 0; pg < np; pg++) {
                    if ((p.last && pg == np - 1) || pg < p.sink)
                        continue;
                    double s = 0;
                    for (int64_t g = 0; g < p.group; g++)
                        s += tu_at(&x, ((l * p.group + g) * r + i) * np + pg);
                    if (in_list[pg])
                        worst_in = fmin(worst_in, s);
                    else
                        best_out = fmax(best_out, s);
                }
                ck_assert(worst_in == INFINITY || best_out == -INFINITY || worst_in >= best_out);
            }
        sl_tensor_release(&out);
        sl_tensor_release(&x);
    }
    tu_ctx_done(ctx, &al);
}
END_TEST

/* Top-p: backends equal ref exactly; the kept set holds >= p of the row's
 * softmax mass and dropping its lowest-ranked unforced entry falls below p;
 * p = 1 keeps every finite entry. */
START_TEST(test_page_select_topp)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 13008);
    const double ps[] = {0.3, 0.8, 0.95, 1.0};
    for (int c = 0; c < 4; c++)
        for (int last = 0; last <= 1; last++) {
            int64_t h = 4, r = 2, np = 40;
            sl_page_select_params p = sel_p(np, 1, 0, last);
            p.p = ps[c];
            sl_tensor x = random_scores(ctx, &rng, h, r, np, 1);
            for (int64_t i = 0; i < h * r * np; i++)
                if (isfinite(f32p(&x)[i]))
                    f32p(&x)[i] *= 3;  /* peaked enough that top-p differs from keeping everything */
            check_op_vs_ref(ctx, SL_OP_PAGE_SELECT, &p, &x, 0, "page.select top-p");
            sl_tensor out = run_op1(ctx, SL_BACKEND_REF, SL_OP_PAGE_SELECT, &p, &x);
            const int32_t *ids = out.data;
            for (int64_t row = 0; row < h * r; row++) {
                const float *s = f32p(&x) + row * np;
                double mx = -INFINITY, total = 0, kept = 0, smallest = INFINITY;
                int64_t finite = 0, n_kept = 0;
                for (int64_t j = 0; j < np; j++)
                    mx = fmax(mx, s[j]);
                for (int64_t j = 0; j < np; j++)
                    if (isfinite(s[j])) {
                        total += exp(s[j] - mx);
                        finite++;
                    }
                for (int64_t e = 0; e < np && ids[row * np + e] >= 0; e++, n_kept++) {
                    int32_t id = ids[row * np + e];
                    double w = isfinite(s[id]) ? exp(s[id] - mx) : 0;
                    kept += w;
                    if (!(last && id == np - 1))
                        smallest = fmin(smallest, w);
                }
                for (int64_t e = n_kept; e < np; e++)
                    ck_assert_int_eq(ids[row * np + e], -1);
                if (ps[c] >= 1) {
                    int64_t want = finite + (last && !isfinite(s[np - 1]));
                    ck_assert_int_eq(n_kept, want);
                } else {
                    ck_assert_msg(kept >= ps[c] * total * (1 - 1e-9), "mass %g below p %g", kept / total, ps[c]);
                    ck_assert_msg(smallest == INFINITY || kept - smallest < ps[c] * total * (1 + 1e-9),
                                  "not minimal: %g without the smallest", (kept - smallest) / total);
                }
            }
            sl_tensor_release(&out);
            sl_tensor_release(&x);
        }
    tu_ctx_done(ctx, &al);
}
END_TEST

/* page.token_scores: backends vs ref (channel subsets per q or kv head,
 * listed pages, bits 0 and 4, qbits 0 and 2 — Double Sparsity's label
 * pseudo-quantisation of the query row); ref vs plain loops. */
START_TEST(test_page_token_scores)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 13009);
    int64_t hq = 4, hkv = 2, r = 2, nk = 45, d = 12, P = 8, np = 6;
    sl_tensor q = tu_randn(ctx, &rng, hq, r, d, 1.0), k = tu_randn(ctx, &rng, hkv, nk, d, 1.0);
    for (int ch_heads = 0; ch_heads <= 2; ch_heads++)
        for (int with_pages = 0; with_pages <= 1; with_pages++)
            for (int bq = 0; bq < 4; bq++) {
                int bits = bq % 2 ? 4 : 0, qbits = bq >= 2 ? 2 : 0;
                sl_tensor in[4] = {q, k, {0}, {0}};
                int64_t hc = ch_heads == 1 ? hq : hkv, nc = 5;
                if (ch_heads) {
                    in[2] = i32_tensor(ctx, hc, nc);
                    for (int64_t h = 0; h < hc; h++)
                        for (int64_t c = 0; c < nc; c++)
                            ((int32_t *)in[2].data)[h * nc + c] = (int32_t)((h * 5 + c * 7) % d);
                }
                if (with_pages) {
                    int64_t sh[3] = {hkv, r, 3};
                    ck_assert_int_eq(sl_tensor_new(ctx, SL_I32, 3, sh, &in[3]), SL_OK);
                    int32_t lists[2][3] = {{0, 2, 5}, {1, 4, -1}};
                    for (int64_t l = 0; l < hkv * r; l++)
                        memcpy((int32_t *)in[3].data + l * 3, lists[l % 2], sizeof lists[0]);
                }
                sl_page_scores_params p;
                sl_op_params_default(SL_OP_PAGE_TOKEN_SCORES, &p);
                p.page = P;
                p.bits = bits;
                p.qbits = qbits;
                check_op_vs_ref(ctx, SL_OP_PAGE_TOKEN_SCORES, &p, in, 1e-5, "page.token_scores");
                sl_tensor s = run_op1(ctx, SL_BACKEND_REF, SL_OP_PAGE_TOKEN_SCORES, &p, in);
                for (int64_t h = 0; h < hq; h++)
                    for (int64_t i = 0; i < r; i++)
                        for (int64_t j = 0; j < nk; j++) {
                            int vis = j <= nk - r + i;
                            if (with_pages) {
                                const int32_t *ls = (const int32_t *)in[3].data + ((h / 2) * r + i) * 3;
                                int in_list = 0;
                                for (int e = 0; e < 3; e++)
                                    in_list |= ls[e] == j / P;
                                vis &= in_list;
                            }
                            double got = tu_at(&s, (h * r + i) * nk + j);
                            if (!vis) {
                                ck_assert(got == -INFINITY);
                                continue;
                            }
                            int64_t use = ch_heads ? nc : d;
                            const int32_t *cols = ch_heads ? (const int32_t *)in[2].data + (h / (hq / hc)) * nc : NULL;
                            const float *kj = f32p(&k) + ((h / 2) * nk + j) * d, *qi = f32p(&q) + (h * r + i) * d;
                            double lo = 1e30, hi = -1e30, want = 0;
                            for (int64_t c = 0; c < use; c++) {
                                double x = kj[cols ? cols[c] : c];
                                lo = fmin(lo, x);
                                hi = fmax(hi, x);
                            }
                            double step = (hi - lo) / 15, qlo = 1e30, qhi = -1e30;
                            for (int64_t c = 0; c < use; c++) {
                                qlo = fmin(qlo, qi[cols ? cols[c] : c]);
                                qhi = fmax(qhi, qi[cols ? cols[c] : c]);
                            }
                            double qstep = (qhi - qlo) / 3;
                            for (int64_t c = 0; c < use; c++) {
                                int64_t cc = cols ? cols[c] : c;
                                double x = kj[cc], y = qi[cc];
                                if (bits)  /* nearest of the 16 levels lo + t.step */
                                    x = lo + floor((x - lo) / step + 0.5) * step;
                                if (qbits)  /* nearest of the 4 levels qlo + t.qstep */
                                    y = qlo + floor((y - qlo) / qstep + 0.5) * qstep;
                                want += y * x;
                            }
                            want /= sqrt((double)use);
                            ck_assert_msg(fabs(got - want) < 1e-5, "score %g, want %g", got, want);
                        }
                sl_tensor_release(&s);
                sl_tensor_release(&in[2]);
                sl_tensor_release(&in[3]);
            }
    (void)np;
    sl_tensor_release(&q);
    sl_tensor_release(&k);
    tu_ctx_done(ctx, &al);
}
END_TEST

static sl_page_attn_params attn_p(int64_t page, int64_t n, int causal, int64_t split)
{
    sl_page_attn_params p;
    sl_op_params_default(SL_OP_PAGE_ATTEND, &p);
    p.page = page;
    p.n = n;
    p.causal = causal;
    p.split = split;
    return p;
}

/* Every page listed: page.attend equals attn.dense (decode offset) to 1e-5
 * on every backend and split; a random subset equals ref on every backend
 * and ref equals a float64 softmax over the listed keys. */
START_TEST(test_page_attend)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 13004);
    const int64_t cases[][7] = {/* hq, hkv, lists, r, nk, d, P */
                                {4, 2, 2, 1, 70, 16, 16}, {4, 2, 4, 2, 64, 8, 8}, {8, 2, 8, 1, 33, 32, 4},
                                {2, 1, 1, 3, 100, 12, 32}, {2, 2, 2, 1, 5, 4, 16}};
    for (int c = 0; c < 5; c++) {
        const int64_t *cs = cases[c];
        int64_t hq = cs[0], hkv = cs[1], lists = cs[2], r = cs[3], nk = cs[4], d = cs[5], P = cs[6];
        int64_t np = (nk + P - 1) / P;
        shape_case sc = {hq, hkv, r, nk, d, 1};
        sl_tensor in[4];
        qkv_of(ctx, &rng, &sc, 1.0, in);
        int64_t sh[3] = {lists, r, np};
        ck_assert_int_eq(sl_tensor_new(ctx, SL_I32, 3, sh, &in[3]), SL_OK);
        for (int64_t i = 0; i < lists * r * np; i++)
            ((int32_t *)in[3].data)[i] = (int32_t)(i % np);
        sl_attn_params dp;
        sl_op_params_default(SL_OP_ATTN_DENSE, &dp);
        sl_tensor dense[2];
        run_attn(ctx, SL_BACKEND_REF, SL_OP_ATTN_DENSE, &dp, in, dense);
        for (int64_t split = 0; split <= 3; split++) {
            sl_page_attn_params p = attn_p(P, 0, 1, split);
            check_equals(ctx, SL_OP_PAGE_ATTEND, &p, in, dense, "page.attend every page = dense");
        }
        release_n(dense, 2);
        /* a random subset of pages per list, -1 padding at the end */
        int64_t m = np > 2 ? np - 1 : np;
        sl_tensor_release(&in[3]);
        int64_t sh2[3] = {lists, r, m};
        ck_assert_int_eq(sl_tensor_new(ctx, SL_I32, 3, sh2, &in[3]), SL_OK);
        int32_t *ids = in[3].data;
        for (int64_t l = 0; l < lists * r; l++) {
            int64_t e = 0;
            for (int64_t pg = 0; pg < np; pg++)
                if (sl_rng_uniform(&rng) < 0.6 && e < m)
                    ids[l * m + e++] = (int32_t)pg;
            while (e < m)
                ids[l * m + e++] = -1;
        }
        for (int64_t split = 0; split <= 2; split++) {
            sl_page_attn_params p = attn_p(P, 0, 1, split);
            check_backends(ctx, SL_OP_PAGE_ATTEND, &p, in, "page.attend subset");
        }
        sl_page_attn_params p = attn_p(P, 0, 1, 1);
        sl_tensor ro[2];
        run_attn(ctx, SL_BACKEND_REF, SL_OP_PAGE_ATTEND, &p, in, ro);
        double scale = 1 / sqrt((double)d);
        for (int64_t h = 0; h < hq; h++)
            for (int64_t i = 0; i < r; i++) {
                const int32_t *row = ids + ((h / (hq / lists)) * r + i) * m;
                double mx = -INFINITY, sum = 0, acc[64] = {0};
                double sc_[512];
                int64_t keys[512], nkeys = 0;
                for (int64_t e = 0; e < m; e++)
                    for (int64_t t = (int64_t)row[e] * P; row[e] >= 0 && t < (row[e] + 1) * P && t <= nk - r + i; t++) {
                        double s = 0;
                        for (int64_t ch = 0; ch < d; ch++)
                            s += (double)tu_at(&in[0], (h * r + i) * d + ch) *
                                 tu_at(&in[1], ((h / (hq / hkv)) * nk + t) * d + ch);
                        sc_[nkeys] = s * scale;
                        keys[nkeys++] = t;
                        mx = fmax(mx, s * scale);
                    }
                if (nkeys == 0) {
                    ck_assert(tu_at(&ro[1], h * r + i) == -INFINITY);
                    continue;
                }
                for (int64_t j = 0; j < nkeys; j++) {
                    double w = exp(sc_[j] - mx);
                    sum += w;
                    for (int64_t ch = 0; ch < d; ch++)
                        acc[ch] += w * tu_at(&in[2], ((h / (hq / hkv)) * nk + keys[j]) * d + ch);
                }
                ck_assert(fabs(tu_at(&ro[1], h * r + i) - (mx + log(sum))) < 1e-5);
                for (int64_t ch = 0; ch < d; ch++)
                    ck_assert(fabs(tu_at(&ro[0], (h * r + i) * d + ch) - acc[ch] / sum) < 1e-5);
            }
        release_n(ro, 2);
        release_n(in, 4);
    }
    tu_ctx_done(ctx, &al);
}
END_TEST

/* n below k's rows: the capacity past n is never read (NaN there is
 * harmless), and a NaN inside a listed page is an error. */
START_TEST(test_page_attend_capacity)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 13005);
    shape_case sc = {2, 1, 1, 48, 8, 1};
    sl_tensor in[4];
    qkv_of(ctx, &rng, &sc, 1.0, in);
    for (int64_t t = 40; t < 48; t++)
        f32p(&in[1])[t * 8] = NAN;
    int32_t ids[5] = {0, 1, 2, 3, 4};
    in[3] = i32_vec(ctx, ids, 5);
    in[3].ndim = 3;
    in[3].shape[0] = 1, in[3].shape[1] = 1, in[3].shape[2] = 5;
    in[3].stride[0] = 5, in[3].stride[1] = 5, in[3].stride[2] = 1;
    sl_page_attn_params p = attn_p(8, 40, 1, 2);
    sl_tensor out[2];
    sl_backend_id bs[SL_BACKEND__COUNT];
    int nb = other_backends(bs);
    bs[nb++] = SL_BACKEND_REF;
    for (int b = 0; b < nb; b++) {
        ck_assert_msg(sl_op_run(ctx, bs[b], SL_OP_PAGE_ATTEND, &p, in, out) == SL_OK, "%s", sl_ctx_error(ctx));
        release_n(out, 2);
    }
    f32p(&in[1])[9 * 8] = NAN;
    expect_fail(ctx, SL_OP_PAGE_ATTEND, &p, in, SL_EARG, "NaN");
    release_n(in, 4);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* Bad input: page 0, an empty cache, page ids out of range or unsorted. */
START_TEST(test_page_validation)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 13006);
    sl_tensor k = tu_randn(ctx, &rng, 1, 10, 4, 1.0);
    sl_page_meta_params mp = meta_p(4);
    mp.page = 0;
    expect_fail(ctx, SL_OP_PAGE_META, &mp, &k, SL_EARG, "'page' = 0");
    sl_tensor empty = tu_randn(ctx, &rng, 1, 0, 4, 1.0);
    mp.page = 4;
    expect_fail(ctx, SL_OP_PAGE_META, &mp, &empty, SL_ESHAPE, "empty cache");
    sl_tensor in[4];
    shape_case sc = {1, 1, 1, 10, 4, 1};
    qkv_of(ctx, &rng, &sc, 1.0, in);
    int32_t bad[3] = {0, 3, 1};
    in[3] = i32_vec(ctx, bad, 3);
    in[3].ndim = 3;
    in[3].shape[0] = 1, in[3].shape[1] = 1, in[3].shape[2] = 3;
    in[3].stride[0] = 3, in[3].stride[1] = 3, in[3].stride[2] = 1;
    sl_page_attn_params p = attn_p(4, 0, 1, 0);
    expect_fail(ctx, SL_OP_PAGE_ATTEND, &p, in, SL_EARG, "pages[0][1] = 3");
    ((int32_t *)in[3].data)[1] = 2;
    expect_fail(ctx, SL_OP_PAGE_ATTEND, &p, in, SL_EARG, "pages[0][2] = 1");
    p.n = 20;
    expect_fail(ctx, SL_OP_PAGE_ATTEND, &p, in, SL_EARG, "n = 20");
    release_n(in, 4);
    sl_tensor_release(&empty);
    sl_tensor_release(&k);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* sl_kvcache: random appends and evictions against a shadow copy kept
 * here; after each, the stored keys and values equal the shadow and the
 * incremental metadata equals page.meta rebuilt from the shadow. */
/* Slot token positions (issue 13, session 4b): after random appends (the
 * counter, or explicit positions) and random per-head evictions, each head's
 * "pos" equals a brute-force list model; f32 and quantised pages (whose
 * eviction path differs); shrink keeps them; bad pos refused in one line. */
START_TEST(test_kvcache_positions)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 13411);
    int64_t h = 3, d = 8, P = 4;
    for (int quant = 0; quant < 2; quant++) {
        sl_kvcache *c;
        ck_assert_int_eq(sl_kvcache_new(ctx, h, d, P, &c), SL_OK);
        if (quant)
            ck_assert_int_eq(sl_kvcache_set_quant(ctx, c, 8, 4), SL_OK);
        int32_t model[3][400];
        int64_t len = 0, next = 0;
        for (int step = 0; step < 60; step++) {
            double u = sl_rng_uniform(&rng);
            if (u < 0.55 || len < 4) {
                int64_t t = 1 + (int64_t)(sl_rng_uniform(&rng) * 6);
                sl_tensor k = tu_randn(ctx, &rng, h, t, d, 1.0), v = tu_randn(ctx, &rng, h, t, d, 1.0);
                if (step % 4 == 3) { /* explicit positions, different per head */
                    sl_tensor pos = i32_tensor(ctx, h, t);
                    int64_t mx = next;
                    for (int64_t hh = 0; hh < h; hh++)
                        for (int64_t i = 0; i < t; i++) {
                            int32_t x = (int32_t)(next + 3 * i + hh + (int64_t)(sl_rng_uniform(&rng) * 5));
                            ((int32_t *)pos.data)[hh * t + i] = x;
                            model[hh][len + i] = x;
                            mx = x + 1 > mx ? x + 1 : mx;
                        }
                    ck_assert_int_eq(sl_kvcache_append_at(ctx, c, &k, &v, &pos), SL_OK);
                    next = mx;
                    sl_tensor_release(&pos);
                } else {
                    ck_assert_int_eq(sl_kvcache_append(ctx, c, &k, &v), SL_OK);
                    for (int64_t hh = 0; hh < h; hh++)
                        for (int64_t i = 0; i < t; i++)
                            model[hh][len + i] = (int32_t)(next + i);
                    next += t;
                }
                len += t;
                release_n(&k, 1);
                release_n(&v, 1);
            } else if (u < 0.95) {
                int64_t m = 1 + (int64_t)(sl_rng_uniform(&rng) * 3);
                sl_tensor idx = i32_tensor(ctx, h, m);
                for (int64_t hh = 0; hh < h; hh++) {
                    int32_t *row = (int32_t *)idx.data + hh * m;
                    sorted_sample(&rng, row, m, len);
                    /* the model: a list with the evicted entries removed */
                    int64_t w = 0, j = 0;
                    for (int64_t t = 0; t < len; t++) {
                        if (j < m && row[j] == t) {
                            j++;
                            continue;
                        }
                        model[hh][w++] = model[hh][t];
                    }
                }
                ck_assert_int_eq(sl_kvcache_evict(ctx, c, &idx), SL_OK);
                len -= m;
                sl_tensor_release(&idx);
            } else {
                ck_assert_int_eq(sl_kvcache_shrink(ctx, c), SL_OK);
            }
            sl_tensor ps;
            ck_assert_int_eq(sl_kvcache_tensor(ctx, c, "pos", &ps), SL_OK);
            ck_assert(ps.dtype == SL_I32 && ps.ndim == 2 && ps.shape[0] == h && ps.shape[1] == len);
            for (int64_t hh = 0; hh < h; hh++)
                for (int64_t t = 0; t < len; t++)
                    ck_assert_msg(((int32_t *)ps.data)[hh * len + t] == model[hh][t], "quant %d step %d head %lld slot %lld: %d, model %d",
                                  quant, step, (long long)hh, (long long)t, ((int32_t *)ps.data)[hh * len + t], model[hh][t]);
            sl_tensor_release(&ps);
        }
        if (quant) { /* an eviction that fails (out of memory) leaves the positions with their slots */
            sl_tensor ps, idx = i32_tensor(ctx, h, 1);
            for (int64_t hh = 0; hh < h; hh++)
                ((int32_t *)idx.data)[hh] = 0;
            al.fail_at = al.calls + 1;
            ck_assert_int_eq(sl_kvcache_evict(ctx, c, &idx), SL_ENOMEM);
            al.fail_at = 0;
            ck_assert_int_eq(sl_kvcache_len(c), len);
            ck_assert_int_eq(sl_kvcache_tensor(ctx, c, "pos", &ps), SL_OK);
            for (int64_t hh = 0; hh < h; hh++)
                for (int64_t t = 0; t < len; t++)
                    ck_assert_msg(((int32_t *)ps.data)[hh * len + t] == model[hh][t],
                                  "after a failed eviction: head %lld slot %lld: %d, model %d", (long long)hh, (long long)t,
                                  ((int32_t *)ps.data)[hh * len + t], model[hh][t]);
            sl_tensor_release(&ps);
            sl_tensor_release(&idx);
        }
        /* bad pos: wrong shape, wrong dtype, negative */
        sl_tensor k = tu_randn(ctx, &rng, h, 2, d, 1.0), v = tu_randn(ctx, &rng, h, 2, d, 1.0);
        sl_tensor bad = i32_tensor(ctx, h, 3);
        ck_assert_int_eq(sl_kvcache_append_at(ctx, c, &k, &v, &bad), SL_ESHAPE);
        ck_assert(strstr(sl_ctx_error(ctx), "pos must be contiguous i32 [3, 2]"));
        sl_tensor neg = i32_tensor(ctx, h, 2);
        for (int64_t i = 0; i < h * 2; i++) /* valid positions (sl_tensor_new leaves them unset), then one bad */
            ((int32_t *)neg.data)[i] = (int32_t)(len + i);
        ((int32_t *)neg.data)[1] = -4;
        ck_assert_int_eq(sl_kvcache_append_at(ctx, c, &k, &v, &neg), SL_EARG);
        ck_assert(strstr(sl_ctx_error(ctx), "= -4"));
        ck_assert_int_eq(sl_kvcache_len(c), len);
        sl_tensor_release(&bad);
        sl_tensor_release(&neg);
        release_n(&k, 1);
        release_n(&v, 1);
        sl_kvcache_free(c);
    }
    tu_ctx_done(ctx, &al);
}
END_TEST

START_TEST(test_kvcache_incremental)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 13007);
    int64_t h = 3, d = 6, P = 5;
    sl_kvcache *c;
    ck_assert_int_eq(sl_kvcache_new(ctx, h, d, P, &c), SL_OK);
    sl_tensor none;
    ck_assert_int_eq(sl_kvcache_tensor(ctx, c, "min", &none), SL_EARG);
    ck_assert(strstr(sl_ctx_error(ctx), "empty"));
    float *shadow_k = calloc((size_t)(h * 400 * d), sizeof(float)), *shadow_v = calloc((size_t)(h * 400 * d), sizeof(float));
    int64_t len = 0;
    for (int step = 0; step < 40; step++) {
        if (step % 3 != 2 || len < 4) {
            int64_t t = 1 + (int64_t)(sl_rng_uniform(&rng) * (step == 0 ? 23 : 7));
            sl_tensor k = tu_randn(ctx, &rng, h, t, d, 1.0), v = tu_randn(ctx, &rng, h, t, d, 1.0);
            ck_assert_int_eq(sl_kvcache_append(ctx, c, &k, &v), SL_OK);
            for (int64_t hh = 0; hh < h; hh++)
                for (int64_t i = 0; i < t * d; i++) {
                    shadow_k[(hh * 400 + len) * d + i] = f32p(&k)[hh * t * d + i];
                    shadow_v[(hh * 400 + len) * d + i] = f32p(&v)[hh * t * d + i];
                }
            len += t;
            release_n(&k, 1);
            release_n(&v, 1);
        } else {
            int64_t m = 1 + (int64_t)(sl_rng_uniform(&rng) * 3);
            sl_tensor idx = i32_tensor(ctx, h, m);
            for (int64_t hh = 0; hh < h; hh++) {
                /* m distinct sorted indices */
                int32_t *row = (int32_t *)idx.data + hh * m;
                sorted_sample(&rng, row, m, len);
                int64_t w = 0, j = 0;
                for (int64_t t = 0; t < len; t++) {
                    if (j < m && row[j] == t) {
                        j++;
                        continue;
                    }
                    memmove(shadow_k + (hh * 400 + w) * d, shadow_k + (hh * 400 + t) * d, sizeof(float) * (size_t)d);
                    memmove(shadow_v + (hh * 400 + w) * d, shadow_v + (hh * 400 + t) * d, sizeof(float) * (size_t)d);
                    w++;
                }
            }
            ck_assert_int_eq(sl_kvcache_evict(ctx, c, &idx), SL_OK);
            len -= m;
            sl_tensor_release(&idx);
        }
        ck_assert_int_eq(sl_kvcache_len(c), len);
        ck_assert_int_eq(sl_kvcache_pages(c), (len + P - 1) / P);
        sl_tensor ks, vs, kk = tu_randn(ctx, &rng, h, len, d, 1.0);
        ck_assert_int_eq(sl_kvcache_tensor(ctx, c, "k", &ks), SL_OK);
        ck_assert_int_eq(sl_kvcache_tensor(ctx, c, "v", &vs), SL_OK);
        int64_t cap = ks.shape[1];
        for (int64_t hh = 0; hh < h; hh++)
            for (int64_t i = 0; i < len * d; i++) {
                ck_assert(f32p(&ks)[hh * cap * d + i] == shadow_k[hh * 400 * d + i]);
                ck_assert(f32p(&vs)[hh * cap * d + i] == shadow_v[hh * 400 * d + i]);
                f32p(&kk)[hh * len * d + i] = shadow_k[hh * 400 * d + i];
            }
        sl_page_meta_params mp = meta_p(P);
        sl_tensor rebuilt[3];
        ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_REF, SL_OP_PAGE_META, &mp, &kk, rebuilt), SL_OK);
        const char *parts[3] = {"min", "max", "mean"};
        for (int q = 0; q < 3; q++) {
            sl_tensor inc;
            ck_assert_int_eq(sl_kvcache_tensor(ctx, c, parts[q], &inc), SL_OK);
            assert_tensor_close(&inc, &rebuilt[q], q == 2 ? 1e-6 : 0, parts[q]);
            sl_tensor_release(&inc);
        }
        release_n(rebuilt, 3);
        sl_tensor_release(&kk);
        sl_tensor_release(&ks);
        sl_tensor_release(&vs);
    }
    /* memory: K/V storage plus metadata within 1.1x raw K/V at P = 16 is the
     * bench's business; here the bytes are at least the raw K/V */
    ck_assert(sl_kvcache_bytes(c) >= sizeof(float) * (size_t)(2 * h * len * d));
    /* bad input */
    sl_tensor idx = i32_tensor(ctx, h, 1);
    for (int64_t hh = 0; hh < h; hh++)
        ((int32_t *)idx.data)[hh] = (int32_t)len;
    ck_assert_int_eq(sl_kvcache_evict(ctx, c, &idx), SL_EARG);
    ck_assert(strstr(sl_ctx_error(ctx), "sl_kvcache_evict: idx[0][0]"));
    sl_tensor_release(&idx);
    sl_tensor wrong = tu_randn(ctx, &rng, h + 1, 2, d, 1.0);
    ck_assert_int_eq(sl_kvcache_append(ctx, c, &wrong, &wrong), SL_ESHAPE);
    sl_tensor_release(&wrong);
    sl_kvcache *bad;
    ck_assert_int_eq(sl_kvcache_new(ctx, 2, 4, 0, &bad), SL_EARG);
    ck_assert(strstr(sl_ctx_error(ctx), "page = 0"));
    sl_kvcache_free(c);
    free(shadow_k);
    free(shadow_v);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* A cache with a 4-bit copy of K: page.qscores on every backend vs ref, and
 * equal to page.token_scores with bits = 4 over the same keys (the same
 * quantisation); the copy survives eviction; bytes grow by D + 8 per token. */
START_TEST(test_page_qscores)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 13010);
    int64_t hq = 4, hkv = 2, d = 12, P = 8, n = 45, r = 2;
    sl_kvcache *c;
    ck_assert_int_eq(sl_kvcache_new(ctx, hkv, d, P, &c), SL_OK);
    ck_assert_int_eq(sl_kvcache_set_bits(ctx, c, 1), SL_EARG);
    ck_assert_int_eq(sl_kvcache_set_bits(ctx, c, 4), SL_OK);
    sl_tensor k = tu_randn(ctx, &rng, hkv, n + 3, d, 1.0), v = tu_randn(ctx, &rng, hkv, n + 3, d, 1.0);
    ck_assert_int_eq(sl_kvcache_append(ctx, c, &k, &v), SL_OK);
    ck_assert_int_eq(sl_kvcache_set_bits(ctx, c, 8), SL_EARG);
    sl_tensor idx = i32_tensor(ctx, hkv, 3);
    int32_t ev[6] = {1, 7, 30, 0, 2, 44};
    memcpy(idx.data, ev, sizeof ev);
    ck_assert_int_eq(sl_kvcache_evict(ctx, c, &idx), SL_OK);
    ck_assert_int_eq(sl_kvcache_len(c), n);
    sl_tensor in[4] = {tu_randn(ctx, &rng, hq, r, d, 1.0), {0}, {0}, {0}};
    ck_assert_int_eq(sl_kvcache_tensor(ctx, c, "kq", &in[1]), SL_OK);
    ck_assert_int_eq(sl_kvcache_tensor(ctx, c, "kscale", &in[2]), SL_OK);
    sl_page_qscores_params p;
    sl_op_params_default(SL_OP_PAGE_QSCORES, &p);
    p.page = P;
    p.n = n;
    check_op_vs_ref(ctx, SL_OP_PAGE_QSCORES, &p, in, 1e-5, "page.qscores");
    int64_t sh[3] = {hkv, r, 2};
    ck_assert_int_eq(sl_tensor_new(ctx, SL_I32, 3, sh, &in[3]), SL_OK);
    int32_t lists[4] = {1, 4, 0, -1};
    memcpy(in[3].data, lists, sizeof lists);
    memcpy((int32_t *)in[3].data + 4, lists, sizeof lists);
    check_op_vs_ref(ctx, SL_OP_PAGE_QSCORES, &p, in, 1e-5, "page.qscores listed");
    sl_tensor_release(&in[3]);
    sl_tensor qs = run_op1(ctx, SL_BACKEND_REF, SL_OP_PAGE_QSCORES, &p, in);
    /* the same keys through page.token_scores with bits = 4 */
    sl_tensor ks;
    ck_assert_int_eq(sl_kvcache_tensor(ctx, c, "k", &ks), SL_OK);
    sl_tensor tin[4] = {in[0], ks, {0}, {0}};
    sl_page_scores_params tp;
    sl_op_params_default(SL_OP_PAGE_TOKEN_SCORES, &tp);
    tp.n = n;
    tp.bits = 4;
    sl_tensor ts = run_op1(ctx, SL_BACKEND_REF, SL_OP_PAGE_TOKEN_SCORES, &tp, tin);
    assert_tensor_close(&qs, &ts, 1e-5, "qscores = token_scores(bits = 4)");
    sl_tensor_release(&ts);
    sl_kvcache *plain;
    ck_assert_int_eq(sl_kvcache_new(ctx, hkv, d, P, &plain), SL_OK);
    ck_assert_int_eq(sl_kvcache_append(ctx, plain, &k, &v), SL_OK);
    ck_assert_int_eq(sl_kvcache_tensor(ctx, plain, "kq", &ts) == SL_EARG, 1);
    ck_assert(strstr(sl_ctx_error(ctx), "no low-bit keys"));
    ck_assert(sl_kvcache_bytes(c) > sl_kvcache_bytes(plain));
    sl_kvcache_free(plain);
    release_n(&qs, 1);
    sl_tensor_release(&ks);
    release_n(in, 3);
    sl_tensor_release(&idx);
    sl_tensor_release(&k);
    sl_tensor_release(&v);
    sl_kvcache_free(c);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* ---- quantised pages (issue 13, session 3) ---- */

/* The value of channel ch of a code row of b bits, read here from the
 * contract (8: byte - 128; 4: nibble - 8, even channels in the low nibble). */
static double code_val(const uint8_t *row, int64_t ch, int bits)
{
    if (bits == 8)
        return (double)row[ch] - 128.0;
    return (double)((ch % 2 == 0 ? row[ch / 2] : row[ch / 2] >> 4) & 0x0F) - 8.0;
}

/* Random u8 codes [h, n, dc] (every byte value possible). */
static sl_tensor rand_codes(sl_ctx *ctx, sl_rng *rng, int64_t h, int64_t n, int64_t dc)
{
    sl_tensor t;
    int64_t sh[3] = {h, n, dc};
    ck_assert_int_eq(sl_tensor_new(ctx, SL_U8, 3, sh, &t), SL_OK);
    for (int64_t i = 0; i < h * n * dc; i++)
        ((uint8_t *)t.data)[i] = (uint8_t)(sl_rng_uniform(rng) * 256.0);
    return t;
}

/* Positive per-page, per-channel scales [h, np, d], spread over a decade. */
static sl_tensor rand_scales(sl_ctx *ctx, sl_rng *rng, int64_t h, int64_t np, int64_t d, double base)
{
    sl_tensor t = tu_randn(ctx, rng, h, np, d, 1.0);
    for (int64_t i = 0; i < h * np * d; i++)
        f32p(&t)[i] = (float)(base * pow(10.0, sl_rng_uniform(rng) - 0.5));
    return t;
}

/* The unsigned b-bit code of channel ch (asymmetric codes: value = code . scale + zero). */
static double code_raw(const uint8_t *row, int64_t ch, int bits)
{
    return bits == 8 ? (double)row[ch] : (double)((ch % 2 == 0 ? row[ch / 2] : row[ch / 2] >> 4) & 0x0F);
}

/* Dequantises codes [h, n, dc] with scales [h, ceil(n/P), d] into f32 [h, n, d]. */
static sl_tensor dequant_here(sl_ctx *ctx, const sl_tensor *codes, const sl_tensor *sc, int bits, int64_t d, int64_t P);

/* The same with zero points z [h, ceil(n/P), d] (asymmetric codes); z NULL or empty: symmetric. */
static sl_tensor dequant_here_z(sl_ctx *ctx, const sl_tensor *codes, const sl_tensor *sc, const sl_tensor *z, int bits,
                                int64_t d, int64_t P)
{
    if (!z || !z->buf)
        return dequant_here(ctx, codes, sc, bits, d, P);
    int64_t h = codes->shape[0], n = codes->shape[1], dc = codes->shape[2], np = sc->shape[1];
    sl_tensor out;
    int64_t sh[3] = {h, n, d};
    ck_assert_int_eq(sl_tensor_new(ctx, SL_F32, 3, sh, &out), SL_OK);
    for (int64_t g = 0; g < h; g++)
        for (int64_t t = 0; t < n; t++)
            for (int64_t ch = 0; ch < d; ch++) {
                int64_t at = (g * np + t / P) * d + ch;
                /* in f32, product and sum rounded separately (the cache's stored values are bit-compared) */
                float prod = (float)code_raw((const uint8_t *)codes->data + (g * n + t) * dc, ch, bits) *
                             (float)tu_at(sc, at);
                f32p(&out)[(g * n + t) * d + ch] = prod + (float)tu_at(z, at);
            }
    return out;
}

static sl_tensor dequant_here(sl_ctx *ctx, const sl_tensor *codes, const sl_tensor *sc, int bits, int64_t d, int64_t P)
{
    int64_t h = codes->shape[0], n = codes->shape[1], dc = codes->shape[2], np = sc->shape[1];
    sl_tensor out;
    int64_t sh[3] = {h, n, d};
    ck_assert_int_eq(sl_tensor_new(ctx, SL_F32, 3, sh, &out), SL_OK);
    for (int64_t g = 0; g < h; g++)
        for (int64_t t = 0; t < n; t++)
            for (int64_t ch = 0; ch < d; ch++)
                f32p(&out)[(g * n + t) * d + ch] =
                    (float)(code_val((const uint8_t *)codes->data + (g * n + t) * dc, ch, bits) *
                            (double)tu_at(sc, (g * np + t / P) * d + ch));
    return out;
}

/* page.attend_q: every backend vs ref (int8 / int4 keys; f32, int8 or int4
 * values; GQA per-head and shared lists; splits; n below the rows), and ref
 * equals page.attend over the keys and values dequantised here. Bad input:
 * bits, a missing or extra opt.vscale, a code row of the wrong width, a NaN
 * scale in a listed page. Session 4: asymmetric codes (opt.kzero, opt.vzero)
 * in cases 3-5, against the test's own c . scale + zero decoding; bad
 * input: a zero point with float v, a wrongly shaped kzero. */
START_TEST(test_page_attend_q)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 13011);
    const int64_t cases[][11] = {/* hq, hkv, lists, r, nk, d, P, kbits, vbits (0: f32 v), n, zero points (1 k, 2 k+v) */
                                 {4, 2, 2, 1, 70, 16, 16, 8, 0, 0, 0},  {4, 2, 4, 2, 64, 8, 8, 4, 4, 60, 0},
                                 {8, 2, 8, 1, 33, 31, 4, 4, 8, 0, 0},   {2, 1, 1, 3, 100, 12, 32, 8, 8, 97, 2},
                                 {2, 2, 2, 1, 5, 7, 16, 4, 0, 0, 1},    {4, 2, 2, 1, 45, 15, 8, 4, 4, 0, 2}};
    for (int c = 0; c < 6; c++) {
        const int64_t *cs = cases[c];
        int64_t hq = cs[0], hkv = cs[1], lists = cs[2], r = cs[3], nk = cs[4], d = cs[5], P = cs[6];
        int kb = (int)cs[7], vb = (int)cs[8];
        int64_t n = cs[9] ? cs[9] : nk, np = (nk + P - 1) / P, npv = (n + P - 1) / P;
        int64_t dk = kb == 8 ? d : (d + 1) / 2, dv = vb == 8 ? d : (d + 1) / 2;
        sl_tensor in[8] = {tu_randn(ctx, &rng, hq, r, d, 1.0), rand_codes(ctx, &rng, hkv, nk, dk),
                           rand_scales(ctx, &rng, hkv, np, d, kb == 8 ? 0.02 : 0.3), {0}, {0}, {0}, {0}, {0}};
        in[3] = vb ? rand_codes(ctx, &rng, hkv, nk, dv) : tu_randn(ctx, &rng, hkv, nk, d, 1.0);
        if (vb)
            in[5] = rand_scales(ctx, &rng, hkv, np, d, vb == 8 ? 0.01 : 0.2);
        if (cs[10] >= 1)   /* zero points: page-channel minima around -(2^b / 2) steps */
            in[6] = tu_randn(ctx, &rng, hkv, np, d, 1.0);
        if (cs[10] >= 2 && vb)
            in[7] = tu_randn(ctx, &rng, hkv, np, d, 1.0);
        int64_t m = npv > 2 ? npv - 1 : npv, sh[3] = {lists, r, m};
        ck_assert_int_eq(sl_tensor_new(ctx, SL_I32, 3, sh, &in[4]), SL_OK);
        int32_t *ids = in[4].data;
        for (int64_t l = 0; l < lists * r; l++) {
            int64_t e = 0;
            for (int64_t pg = 0; pg < npv; pg++)
                if ((sl_rng_uniform(&rng) < 0.6 || pg == npv - 1) && e < m)
                    ids[l * m + e++] = (int32_t)pg;
            while (e < m)
                ids[l * m + e++] = -1;
        }
        sl_page_attnq_params p;
        sl_op_params_default(SL_OP_PAGE_ATTEND_Q, &p);
        p.page = P;
        p.n = cs[9];
        p.kbits = kb;
        p.vbits = vb ? vb : 8;
        for (int64_t split = 0; split <= 2; split++) {
            p.split = split;
            check_backends(ctx, SL_OP_PAGE_ATTEND_Q, &p, in, "page.attend_q");
        }
        /* ref = page.attend over the dequantised keys and values */
        sl_tensor kf = dequant_here_z(ctx, &in[1], &in[2], &in[6], kb, d, P);
        sl_tensor vf = vb ? dequant_here_z(ctx, &in[3], &in[5], &in[7], vb, d, P) : sl_tensor_retain(&in[3]);
        sl_tensor fin[4] = {in[0], kf, vf, in[4]};
        sl_page_attn_params fp = attn_p(P, cs[9], 1, 0);
        sl_tensor want[2], got[2];
        run_attn(ctx, SL_BACKEND_REF, SL_OP_PAGE_ATTEND, &fp, fin, want);
        run_attn(ctx, SL_BACKEND_REF, SL_OP_PAGE_ATTEND_Q, &p, in, got);
        assert_attn_close(&got[0], &got[1], &want[0], &want[1], "page.attend_q ref = page.attend(dequantised)");
        release_n(want, 2);
        release_n(got, 2);
        if (c == 1) {
            p.kbits = 5;
            expect_fail(ctx, SL_OP_PAGE_ATTEND_Q, &p, in, SL_EARG, "kbits = 5");
            p.kbits = 8;
            expect_fail(ctx, SL_OP_PAGE_ATTEND_Q, &p, in, SL_ESHAPE, "input 'kq'");
            p.kbits = kb;
            sl_tensor vs = in[5];
            in[5] = (sl_tensor){0};
            expect_fail(ctx, SL_OP_PAGE_ATTEND_Q, &p, in, SL_EARG, "opt.vscale is required");
            in[5] = vs;
            f32p(&in[2])[(1 * np + ids[0]) * d] = NAN;
            expect_fail(ctx, SL_OP_PAGE_ATTEND_Q, &p, in, SL_EARG, "NaN");
        }
        if (c == 0) {
            in[5] = rand_scales(ctx, &rng, hkv, np, d, 0.1);
            expect_fail(ctx, SL_OP_PAGE_ATTEND_Q, &p, in, SL_EARG, "v is float");
        }
        if (c == 4) {
            in[7] = tu_randn(ctx, &rng, hkv, np, d, 1.0);
            expect_fail(ctx, SL_OP_PAGE_ATTEND_Q, &p, in, SL_EARG, "opt.vzero is given but v is float");
            sl_tensor_release(&in[7]);
            in[7] = (sl_tensor){0};
            sl_tensor z = in[6];
            in[6] = tu_randn(ctx, &rng, hkv, np + 1, d, 1.0);
            expect_fail(ctx, SL_OP_PAGE_ATTEND_Q, &p, in, SL_ESHAPE, "opt.kzero");
            sl_tensor_release(&in[6]);
            in[6] = z;
        }
        sl_tensor_release(&kf);
        sl_tensor_release(&vf);
        release_n(in, 8);
    }
    tu_ctx_done(ctx, &al);
}
END_TEST

/* sl_kvcache with quantised pages (int8 / int4 K, f32 / int8 / int4 V):
 * random appends and evictions against an f32 shadow kept here. After each:
 * the codes dequantised here equal the cache's "k" / "v"; every value is
 * within half a step of the shadow before the first eviction (one step
 * after: moved tokens are quantised twice); the metadata equals page.meta
 * over the dequantised keys (so Quest's bound holds for what attention
 * reads); page.attend_q over the codes equals page.attend over the
 * dequantised copies; and the cache holds fewer bytes than an f32 one. */
/* sl_kvcache_set_quant_all (Lua's c:set_quant) is all or nothing: under an
 * allocation failure at each allocation in turn, and with a bad zero
 * argument, the cache keeps its widths and zero points (issue 13 review),
 * leaks nothing, and still takes the setting afterwards. */
START_TEST(test_kvcache_set_quant_all_atomic)
{
    const int from[][3] = {{0, 0, 0}, {8, 0, 0}, {4, 4, 1}};
    const int to[][3] = {{8, 8, 1}, {8, 8, 0}, {8, 0, 1}};
    for (int x = 0; x < 3; x++)
        for (long fail = 1; fail < 4; fail++) {
            tu_alloc al;
            sl_ctx *ctx = tu_ctx(&al);
            sl_kvcache *c;
            ck_assert_int_eq(sl_kvcache_new(ctx, 2, 5, 4, &c), SL_OK);
            ck_assert_int_eq(sl_kvcache_set_quant_all(ctx, c, from[x][0], from[x][1], from[x][2]), SL_OK);
            al.fail_at = al.calls + fail;
            sl_status s = sl_kvcache_set_quant_all(ctx, c, to[x][0], to[x][1], to[x][2]);
            al.fail_at = 0;
            const int *want = s == SL_OK ? to[x] : from[x];
            ck_assert_msg(s == SL_OK || s == SL_ENOMEM, "case %d fail %ld: %s", x, fail, sl_ctx_error(ctx));
            int vb = -1, kb = sl_kvcache_quant(c, &vb);
            ck_assert_msg(kb == want[0] && vb == want[1] && sl_kvcache_quant_zero(c) == want[2],
                          "case %d fail %ld (status %d): widths %d/%d zero %d, expected %d/%d zero %d", x, fail, s, kb,
                          vb, sl_kvcache_quant_zero(c), want[0], want[1], want[2]);
            /* a bad zero argument changes nothing either */
            ck_assert_int_eq(sl_kvcache_set_quant_all(ctx, c, 4, 4, 2), SL_EARG);
            ck_assert_int_eq(sl_kvcache_set_quant_all(ctx, c, 0, 0, 1), SL_EARG);
            kb = sl_kvcache_quant(c, &vb);
            ck_assert(kb == want[0] && vb == want[1] && sl_kvcache_quant_zero(c) == want[2]);
            ck_assert_int_eq(sl_kvcache_set_quant_all(ctx, c, to[x][0], to[x][1], to[x][2]), SL_OK);
            sl_kvcache_free(c);
            tu_ctx_done(ctx, &al);
        }
}
END_TEST

START_TEST(test_kvcache_quant)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 13012);
    /* kbits, vbits, zero points (session 4: asymmetric pages) */
    const int modes[][3] = {{8, 0, 0}, {8, 8, 0}, {4, 4, 0}, {4, 0, 0}, {4, 4, 1}, {8, 0, 1}};
    for (int md = 0; md < 6; md++) {
        int kb = modes[md][0], vb = modes[md][1], az = modes[md][2];
        int64_t h = 2, d = 7, P = 4, cap = 400;
        sl_kvcache *c, *plain;
        ck_assert_int_eq(sl_kvcache_new(ctx, h, d, P, &c), SL_OK);
        ck_assert_int_eq(sl_kvcache_new(ctx, h, d, P, &plain), SL_OK);
        ck_assert_int_eq(sl_kvcache_set_quant(ctx, c, 3, 0), SL_EARG);
        ck_assert(strstr(sl_ctx_error(ctx), "kbits = 3"));
        ck_assert_int_eq(sl_kvcache_set_quant(ctx, c, 0, 8), SL_EARG);
        ck_assert_int_eq(sl_kvcache_set_quant_zero(ctx, c, 1), SL_EARG);  /* zero points need quantised pages */
        ck_assert(strstr(sl_ctx_error(ctx), "sl_kvcache_set_quant_zero"));
        ck_assert_int_eq(sl_kvcache_set_quant(ctx, c, kb, vb), SL_OK);
        ck_assert_int_eq(sl_kvcache_set_quant_zero(ctx, c, az), SL_OK);
        ck_assert_int_eq(sl_kvcache_quant_zero(c), az);
        ck_assert_int_eq(sl_kvcache_set_bits(ctx, c, 4), SL_EARG);
        float *sk = calloc((size_t)(h * cap * d), sizeof(float)), *sv = calloc((size_t)(h * cap * d), sizeof(float));
        int64_t len = 0;
        int evicted = 0;
        for (int step = 0; step < 18; step++) {
            if (step % 3 != 2 || len < 4) {
                int64_t t = 1 + (int64_t)(sl_rng_uniform(&rng) * (step == 0 ? 13 : 6));
                sl_tensor k = tu_randn(ctx, &rng, h, t, d, 1.0), v = tu_randn(ctx, &rng, h, t, d, 1.0);
                ck_assert_int_eq(sl_kvcache_append(ctx, c, &k, &v), SL_OK);
                ck_assert_int_eq(sl_kvcache_append(ctx, plain, &k, &v), SL_OK);
                for (int64_t g = 0; g < h; g++)
                    for (int64_t i = 0; i < t * d; i++) {
                        sk[(g * cap + len) * d + i] = f32p(&k)[g * t * d + i];
                        sv[(g * cap + len) * d + i] = f32p(&v)[g * t * d + i];
                    }
                len += t;
                release_n(&k, 1);
                release_n(&v, 1);
            } else {
                int64_t m = 1 + (int64_t)(sl_rng_uniform(&rng) * 3), plain_m = m;
                sl_tensor idx = i32_tensor(ctx, h, m);
                for (int64_t g = 0; g < h; g++) {
                    int64_t start = (int64_t)(sl_rng_uniform(&rng) * (double)(len - m));
                    for (int64_t j = 0; j < m; j++)
                        ((int32_t *)idx.data)[g * m + j] = (int32_t)(start + j * (len - start) / m);
                    int64_t w = 0, j = 0;
                    for (int64_t t = 0; t < len; t++) {
                        if (j < m && t == ((int32_t *)idx.data)[g * m + j]) {
                            j++;
                            continue;
                        }
                        memmove(sk + (g * cap + w) * d, sk + (g * cap + t) * d, sizeof(float) * (size_t)d);
                        memmove(sv + (g * cap + w) * d, sv + (g * cap + t) * d, sizeof(float) * (size_t)d);
                        w++;
                    }
                }
                ck_assert_int_eq(sl_kvcache_evict(ctx, c, &idx), SL_OK);
                ck_assert_int_eq(sl_kvcache_evict(ctx, plain, &idx), SL_OK);
                (void)plain_m;
                len -= m;
                evicted = 1;
                sl_tensor_release(&idx);
            }
            ck_assert_int_eq(sl_kvcache_len(c), len);
            /* codes dequantised here = the cache's k / v; within a step of the shadow */
            for (int side = 0; side < 2; side++) {
                int bits = side ? vb : kb;
                sl_tensor got;
                ck_assert_int_eq(sl_kvcache_tensor(ctx, c, side ? "v" : "k", &got), SL_OK);
                const float *shadow = side ? sv : sk;
                if (!bits) {
                    for (int64_t g = 0; g < h; g++)
                        for (int64_t i = 0; i < len * d; i++)
                            ck_assert(tu_at(&got, g * got.shape[1] * d + i) == shadow[g * cap * d + i]);
                    sl_tensor_release(&got);
                    continue;
                }
                ck_assert_int_eq(got.shape[1], len);
                sl_tensor codes, sc;
                ck_assert_int_eq(sl_kvcache_tensor(ctx, c, side ? "vcodes" : "kcodes", &codes), SL_OK);
                ck_assert_int_eq(sl_kvcache_tensor(ctx, c, side ? "vscales" : "kscales", &sc), SL_OK);
                ck_assert_int_eq(codes.shape[2], bits == 8 ? d : (d + 1) / 2);
                sl_tensor zp = {0};
                if (az)
                    ck_assert_int_eq(sl_kvcache_tensor(ctx, c, side ? "vzeros" : "kzeros", &zp), SL_OK);
                else
                    ck_assert_int_eq(sl_kvcache_tensor(ctx, c, side ? "vzeros" : "kzeros", &zp), SL_EARG);
                /* decoded here: c . scale + zero (asymmetric) or (c - 2^(b-1)) . scale */
                sl_tensor mine = dequant_here_z(ctx, &codes, &sc, &zp, bits, d, P);
                sl_tensor_release(&zp);
                int64_t ncap = codes.shape[1], qmax = (1 << (bits - 1)) - 1;
                for (int64_t g = 0; g < h; g++)
                    for (int64_t t = 0; t < len; t++)
                        for (int64_t ch = 0; ch < d; ch++) {
                            double x = tu_at(&got, (g * len + t) * d + ch), want = shadow[(g * cap + t) * d + ch];
                            ck_assert(x == tu_at(&mine, (g * ncap + t) * d + ch));
                            /* the page's scale bounds the error: half a step, a step after evictions */
                            double amax = 0;
                            for (int64_t u = t / P * P; u < len && u < t / P * P + P; u++)
                                amax = fmax(amax, fabs(shadow[(g * cap + u) * d + ch]));
                            double tol = (evicted ? 1.05 : 0.5) * (amax + (evicted ? 2.0 : 0.0)) / (double)qmax + 1e-6;
                            ck_assert_msg(fabs(x - want) <= tol, "%d-bit %c: token %lld ch %lld: %g vs %g (tol %g)", bits,
                                          side ? 'v' : 'k', (long long)t, (long long)ch, x, want, tol);
                        }
                sl_tensor_release(&mine);
                sl_tensor_release(&codes);
                sl_tensor_release(&sc);
                sl_tensor_release(&got);
            }
            /* metadata = page.meta over the dequantised keys */
            sl_tensor kd;
            ck_assert_int_eq(sl_kvcache_tensor(ctx, c, "k", &kd), SL_OK);
            sl_page_meta_params mp = meta_p(P);
            sl_tensor meta[3];
            ck_assert_int_eq(sl_op_run(ctx, SL_BACKEND_REF, SL_OP_PAGE_META, &mp, &kd, meta), SL_OK);
            const char *parts[3] = {"min", "max", "mean"};
            for (int q = 0; q < 3; q++) {
                sl_tensor inc;
                ck_assert_int_eq(sl_kvcache_tensor(ctx, c, parts[q], &inc), SL_OK);
                assert_tensor_close(&inc, &meta[q], 1e-6, parts[q]);
                sl_tensor_release(&inc);
            }
            release_n(meta, 3);
            /* page.attend_q over the codes = page.attend over the dequantised copies */
            if (step % 4 == 3) {
                int64_t hq = 2 * h, np = (len + P - 1) / P;
                sl_tensor in[8] = {tu_randn(ctx, &rng, hq, 1, d, 1.0), {0}, {0}, {0}, {0}, {0}, {0}, {0}};
                ck_assert_int_eq(sl_kvcache_tensor(ctx, c, "kcodes", &in[1]), SL_OK);
                ck_assert_int_eq(sl_kvcache_tensor(ctx, c, "kscales", &in[2]), SL_OK);
                ck_assert_int_eq(sl_kvcache_tensor(ctx, c, vb ? "vcodes" : "v", &in[3]), SL_OK);
                if (vb)
                    ck_assert_int_eq(sl_kvcache_tensor(ctx, c, "vscales", &in[5]), SL_OK);
                if (az) {
                    ck_assert_int_eq(sl_kvcache_tensor(ctx, c, "kzeros", &in[6]), SL_OK);
                    if (vb)
                        ck_assert_int_eq(sl_kvcache_tensor(ctx, c, "vzeros", &in[7]), SL_OK);
                }
                int64_t sh[3] = {h, 1, np};
                ck_assert_int_eq(sl_tensor_new(ctx, SL_I32, 3, sh, &in[4]), SL_OK);
                for (int64_t i = 0; i < h * np; i++)
                    ((int32_t *)in[4].data)[i] = (int32_t)(i % np);
                sl_page_attnq_params p;
                sl_op_params_default(SL_OP_PAGE_ATTEND_Q, &p);
                p.page = P;
                p.n = len;
                p.kbits = kb;
                p.vbits = vb ? vb : 8;
                sl_tensor vd, vcap;
                ck_assert_int_eq(sl_kvcache_tensor(ctx, c, "v", &vcap), SL_OK);
                int64_t vsh[3] = {h, len, d};
                ck_assert_int_eq(sl_tensor_new(ctx, SL_F32, 3, vsh, &vd), SL_OK);
                for (int64_t g = 0; g < h; g++)  /* f32 v is the [H, capacity, D] storage: its first len rows */
                    memcpy(f32p(&vd) + g * len * d, f32p(&vcap) + g * vcap.shape[1] * d, sizeof(float) * (size_t)(len * d));
                sl_tensor_release(&vcap);
                sl_tensor fin[4] = {in[0], kd, vd, in[4]};
                sl_page_attn_params fp = attn_p(P, 0, 1, 0);
                sl_tensor want[2];
                run_attn(ctx, SL_BACKEND_REF, SL_OP_PAGE_ATTEND, &fp, fin, want);
                check_equals(ctx, SL_OP_PAGE_ATTEND_Q, &p, in, want, "cache codes = dequantised");
                release_n(want, 2);
                sl_tensor_release(&vd);
                release_n(in, 8);
            }
            sl_tensor_release(&kd);
        }
        free(sk);
        free(sv);
        sl_kvcache_free(c);
        sl_kvcache_free(plain);
        /* resident bytes at a realistic page (P = 16, D = 64, 512 tokens): codes,
         * scales, metadata and the open page, against the f32 cache */
        int64_t D = 64, Pb = 16, n = 512;
        ck_assert_int_eq(sl_kvcache_new(ctx, h, D, Pb, &c), SL_OK);
        ck_assert_int_eq(sl_kvcache_new(ctx, h, D, Pb, &plain), SL_OK);
        ck_assert_int_eq(sl_kvcache_set_quant(ctx, c, kb, vb), SL_OK);
        ck_assert_int_eq(sl_kvcache_set_quant_zero(ctx, c, az), SL_OK);
        sl_tensor k = tu_randn(ctx, &rng, h, n, D, 1.0), v = tu_randn(ctx, &rng, h, n, D, 1.0);
        ck_assert_int_eq(sl_kvcache_append(ctx, c, &k, &v), SL_OK);
        ck_assert_int_eq(sl_kvcache_append(ctx, plain, &k, &v), SL_OK);
        double row = (kb == 8 ? D : D / 2) + (vb == 0 ? 4 * D : vb == 8 ? D : D / 2);
        double nq = 1 + (vb > 0), want = (double)(h * n) * row + 4.0 * (double)(h * (n / Pb) * D) * (3 + nq * (1 + az)) +
                                         4.0 * (double)(h * Pb * D) * nq + 4.0 * (double)(h * n);
        ck_assert_msg((double)sl_kvcache_bytes(c) == want, "bytes %zu, expected %g", sl_kvcache_bytes(c), want);
        ck_assert((double)sl_kvcache_bytes(plain) ==
                  (double)(h * n) * 8 * D + 12.0 * (double)(h * (n / Pb) * D) + 4.0 * (double)(h * n));
        double ratio = (double)sl_kvcache_bytes(c) / (double)sl_kvcache_bytes(plain);
        /* zero points add one f32 per page and channel per side: 4 / (8 P) of the f32 cache each */
        ck_assert_msg(ratio < (vb == 0 ? 0.75 : kb == 8 ? 0.42 : 0.30) + az * nq * 0.5 / (double)Pb,
                      "%d/%d bits: %g of the f32 cache", kb, vb, ratio);
        sl_tensor_release(&k);
        sl_tensor_release(&v);
        sl_kvcache_free(c);
        sl_kvcache_free(plain);
    }
    tu_ctx_done(ctx, &al);
}
END_TEST

/* sl_kvcache_shrink: after an eviction the capacity past the last page is
 * freed (bytes drop with the tokens), contents and metadata unchanged, and
 * appends go on (f32 and quantised pages). */
START_TEST(test_kvcache_shrink)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 13013);
    for (int quant = 0; quant < 2; quant++) {
        int64_t h = 2, d = 8, P = 4, n = 64, m = 48;
        sl_kvcache *c;
        ck_assert_int_eq(sl_kvcache_new(ctx, h, d, P, &c), SL_OK);
        if (quant)
            ck_assert_int_eq(sl_kvcache_set_quant(ctx, c, 8, 8), SL_OK);
        sl_tensor k = tu_randn(ctx, &rng, h, n, d, 1.0), v = tu_randn(ctx, &rng, h, n, d, 1.0);
        ck_assert_int_eq(sl_kvcache_append(ctx, c, &k, &v), SL_OK);
        size_t full = sl_kvcache_bytes(c);
        sl_tensor idx = i32_tensor(ctx, h, m);
        for (int64_t g = 0; g < h; g++)
            for (int64_t j = 0; j < m; j++)
                ((int32_t *)idx.data)[g * m + j] = (int32_t)(j + (g == 0 ? 0 : 3));
        ck_assert_int_eq(sl_kvcache_evict(ctx, c, &idx), SL_OK);
        sl_tensor before[4];
        const char *parts[4] = {"k", "v", "min", "mean"};
        for (int q = 0; q < 4; q++)
            ck_assert_int_eq(sl_kvcache_tensor(ctx, c, parts[q], &before[q]), SL_OK);
        ck_assert_int_eq(sl_kvcache_bytes(c), full);   /* evicting alone keeps the capacity */
        ck_assert_int_eq(sl_kvcache_shrink(ctx, c), SL_OK);
        double ratio = (double)sl_kvcache_bytes(c) / (double)full;
        double open = quant ? 2.0 * (double)(h * P * d) * sizeof(float) / (double)full : 0;  /* the open page's f32 rows */
        ck_assert_msg(ratio <= (double)(n - m) / (double)n + open + 1e-9, "bytes after shrink: %g of before", ratio);
        for (int q = 0; q < 4; q++) {
            sl_tensor after;
            ck_assert_int_eq(sl_kvcache_tensor(ctx, c, parts[q], &after), SL_OK);
            int64_t rows = q < 2 ? n - m : (n - m + P - 1) / P;
            for (int64_t g = 0; g < h; g++)
                for (int64_t i = 0; i < rows * d; i++)
                    ck_assert(tu_at(&after, g * after.shape[1] * d + i) == tu_at(&before[q], g * before[q].shape[1] * d + i));
            sl_tensor_release(&after);
            sl_tensor_release(&before[q]);
        }
        sl_tensor k1 = tu_randn(ctx, &rng, h, 9, d, 1.0), v1 = tu_randn(ctx, &rng, h, 9, d, 1.0);
        ck_assert_int_eq(sl_kvcache_append(ctx, c, &k1, &v1), SL_OK);
        ck_assert_int_eq(sl_kvcache_len(c), n - m + 9);
        sl_tensor_release(&k1);
        sl_tensor_release(&v1);
        sl_tensor_release(&idx);
        sl_tensor_release(&k);
        sl_tensor_release(&v);
        sl_kvcache_free(c);
    }
    tu_ctx_done(ctx, &al);
}
END_TEST

static void add_tests(TCase *tc)
{
    tcase_add_test(tc, test_page_meta);
    tcase_add_test(tc, test_page_bounds);
    tcase_add_test(tc, test_page_select);
    tcase_add_test(tc, test_page_select_topp);
    tcase_add_test(tc, test_page_token_scores);
    tcase_add_test(tc, test_page_attend);
    tcase_add_test(tc, test_page_attend_capacity);
    tcase_add_test(tc, test_page_validation);
    tcase_add_test(tc, test_kvcache_incremental);
    tcase_add_test(tc, test_kvcache_positions);
    tcase_add_test(tc, test_page_qscores);
    tcase_add_test(tc, test_page_attend_q);
    tcase_add_test(tc, test_kvcache_quant);
    tcase_add_test(tc, test_kvcache_set_quant_all_atomic);
    tcase_add_test(tc, test_kvcache_shrink);
}

int main(void) { return run_op_suite("page_ops", add_tests); }
