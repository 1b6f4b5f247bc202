/* test_select_ops.c — the selectors (select.topk, select.topp,
 * select.threshold, select.cover, select.row_cover) on every backend in SL_TEST_BACKENDS against ref (ties,
 * -inf entries, k = 0 and k = C, p = 0 and p = 1, opt.k and opt.p per head,
 * NaN and +inf rejected), their properties checked here (the minimality of
 * top-p), and the masks made from selections (sl_mask_from_blocks,
 * sl_mask_index_from_columns, sl_mask_from_slashes) against the causal
 * mask, attn.dense and a transcription of MInference's index conversion. */

#include "opsutil.h"

/* Scores with ties (a few levels) and -inf entries. */
static sl_tensor tied(sl_ctx *ctx, sl_rng *rng, int64_t h, int64_t r, int64_t c, int nonneg)
{
    sl_tensor x = random_scores(ctx, rng, h, r, c, 1);
    float *d = x.data;
    for (int64_t i = 0; i < h * r * c; i++)
        if (isfinite(d[i]))
            d[i] = nonneg ? (float)floor(fabs(d[i]) * 3) / 3.f : (float)floor(d[i] * 3) / 3.f;
    return x;
}

START_TEST(test_select_backends_match_ref)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 44000);
    const int64_t shapes[][3] = {{3, 7, 50}, {2, 1, 300}, {4, 3, 1}, {2, 0, 5}};
    for (int s = 0; s < 4; s++) {
        const int64_t *sh = shapes[s];
        for (int two = 0; two < 2; two++) {
            sl_tensor in[2] = {tied(ctx, &rng, sh[0], sh[1], sh[2], 1)};
            if (two) {
                /* [H, C]: the same data seen as H rows of R·C */
                in[0].ndim = 2;
                in[0].shape[1] = sh[1] * sh[2];
                in[0].stride[0] = sh[1] * sh[2];
                in[0].stride[1] = 1;
            }
            const int64_t ks[] = {0, 1, 3, sh[2], sh[2] + 5};
            for (int k = 0; k < 5; k++) {
                sl_select_topk_params p = {.k = ks[k]};
                check_op_vs_ref(ctx, SL_OP_SELECT_TOPK, &p, in, 0, "topk");
            }
            sl_select_topk_params pr = {.ratio = 0.3};
            check_op_vs_ref(ctx, SL_OP_SELECT_TOPK, &pr, in, 0, "topk ratio");
            const double ps[] = {0, 0.3, 0.9, 1};
            for (int i = 0; i < 4; i++)
                for (int norm = 0; norm < 2; norm++) {
                    sl_select_topp_params p = {.p = ps[i], .normalize = norm};
                    check_op_vs_ref(ctx, SL_OP_SELECT_TOPP, &p, in, 0, "topp");
                }
            for (int rel = 0; rel < 2; rel++) {
                sl_select_threshold_params p = {.t = 0.5, .relative = rel};
                check_op_vs_ref(ctx, SL_OP_SELECT_THRESHOLD, &p, in, 0, "threshold");
            }
            /* per-head budgets */
            int64_t hs[1] = {sh[0]};
            ck_assert_int_eq(sl_tensor_new(ctx, SL_I32, 1, hs, &in[1]), SL_OK);
            for (int64_t h = 0; h < sh[0]; h++)
                ((int32_t *)in[1].data)[h] = (int32_t)(h * 3);
            sl_select_topk_params pk = {.k = 1};
            check_op_vs_ref(ctx, SL_OP_SELECT_TOPK, &pk, in, 0, "topk opt.k");
            sl_tensor_release(&in[1]);
            ck_assert_int_eq(sl_tensor_new(ctx, SL_F32, 1, hs, &in[1]), SL_OK);
            for (int64_t h = 0; h < sh[0]; h++)
                ((float *)in[1].data)[h] = (float)(0.2 + 0.25 * (double)h);
            sl_select_topp_params pp = {.p = 0.5};
            check_op_vs_ref(ctx, SL_OP_SELECT_TOPP, &pp, in, 0, "topp opt.p");
            release_n(in, 2);
        }
    }
    tu_ctx_done(ctx, &al);
}
END_TEST

/* Properties checked here, not by comparison: topk keeps min(k, finite)
 * entries, none below an unkept finite one, ties to the lower index; topp's
 * set reaches p of the mass and loses it without its smallest member. */
START_TEST(test_select_properties)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 44500);
    int64_t H = 3, R = 6, C = 40;
    sl_tensor in[2] = {tied(ctx, &rng, H, R, C, 1)};
    for (int b = 0; b < SL_BACKEND__COUNT; b++) {
        if (!sl_backend_available((sl_backend_id)b) || !backend_wanted((sl_backend_id)b))
            continue;
        for (int64_t k = 0; k <= C; k += 7) {
            sl_select_topk_params p = {.k = k};
            sl_tensor keep = run_op1(ctx, (sl_backend_id)b, SL_OP_SELECT_TOPK, &p, in);
            const uint8_t *kp = keep.data;
            for (int64_t row = 0; row < H * R; row++) {
                const float *x = (const float *)in[0].data + row * C;
                int64_t n = 0, finite = 0;
                for (int64_t j = 0; j < C; j++) {
                    n += kp[row * C + j];
                    finite += isfinite(x[j]);
                    if (kp[row * C + j] && !isfinite(x[j]))
                        ck_abort_msg("topk kept -inf");
                }
                ck_assert_int_eq(n, k < finite ? k : finite);
                for (int64_t i = 0; i < C; i++)
                    for (int64_t j = 0; j < C; j++)
                        if (kp[row * C + i] && !kp[row * C + j] && isfinite(x[j]) &&
                            (x[j] > x[i] || (x[j] == x[i] && j < i)))
                            ck_abort_msg("topk k %lld keeps %lld (%g) but not %lld (%g)", (long long)k, (long long)i,
                                         x[i], (long long)j, x[j]);
            }
            sl_tensor_release(&keep);
        }
        for (int ip = 0; ip <= 4; ip++) {
            double pv = ip / 4.0;
            sl_select_topp_params p = {.p = pv};
            sl_tensor keep = run_op1(ctx, (sl_backend_id)b, SL_OP_SELECT_TOPP, &p, in);
            const uint8_t *kp = keep.data;
            for (int64_t row = 0; row < H * R; row++) {
                const float *x = (const float *)in[0].data + row * C;
                double total = 0, kept = 0, smallest = INFINITY;
                for (int64_t j = 0; j < C; j++) {
                    double w = isfinite(x[j]) ? x[j] : 0;
                    total += w;
                    if (kp[row * C + j]) {
                        kept += w;
                        smallest = fmin(smallest, w);
                    }
                }
                ck_assert_msg(kept >= pv * total - 1e-6 * total, "topp p %g keeps %g of %g", pv, kept, total);
                if (kept > 0)
                    ck_assert_msg(kept - smallest < pv * total + 1e-9 * total, "topp p %g is not minimal (%g - %g of %g)",
                                  pv, kept, smallest, total);
                else
                    ck_assert_msg(pv == 0 || total == 0, "topp p %g kept nothing of %g", pv, total);
            }
            sl_tensor_release(&keep);
        }
    }
    /* a row by hand: [1, 3, 3, 2, 3, -inf] with k = 2 keeps keys 1 and 2 */
    sl_tensor x;
    int64_t sh[2] = {1, 6};
    ck_assert_int_eq(sl_tensor_new(ctx, SL_F32, 2, sh, &x), SL_OK);
    const float vals[6] = {1, 3, 3, 2, 3, -INFINITY};
    memcpy(x.data, vals, sizeof vals);
    sl_select_topk_params p2 = {.k = 2};
    sl_tensor one[2] = {x}, keep = run_op1(ctx, SL_BACKEND_CPU, SL_OP_SELECT_TOPK, &p2, one);
    const uint8_t want[6] = {0, 1, 1, 0, 0, 0};
    ck_assert_mem_eq(keep.data, want, 6);
    sl_tensor_release(&keep);
    /* top-p of masses {1, 3, 3, 2, 3} (sum 12) at p = 0.5 needs two 3s */
    sl_select_topp_params pp = {.p = 0.5};
    keep = run_op1(ctx, SL_BACKEND_CPU, SL_OP_SELECT_TOPP, &pp, one);
    ck_assert_mem_eq(keep.data, want, 6);
    sl_tensor_release(&keep);
    sl_tensor_release(&x);
    release_n(in, 1);
    tu_ctx_done(ctx, &al);
}
END_TEST

static void assert_same_mask(sl_ctx *ctx, const sl_mask *a, const sl_mask *b, const char *what)
{
    sl_tensor ba, bb;
    ck_assert_int_eq(sl_mask_to_bits(ctx, a, &ba), SL_OK);
    ck_assert_int_eq(sl_mask_to_bits(ctx, b, &bb), SL_OK);
    int64_t n = sl_tensor_numel(&bb), hb = bb.shape[0], ha = ba.shape[0], per = n / hb;
    /* a one-head mask stands for every head of the other */
    int64_t heads = ha > hb ? ha : hb;
    for (int64_t h = 0; h < heads; h++)
        for (int64_t i = 0; i < per; i++) {
            uint8_t x = ((uint8_t *)ba.data)[(ha == 1 ? 0 : h) * per + i], y = ((uint8_t *)bb.data)[(hb == 1 ? 0 : h) * per + i];
            if (x != y)
                ck_abort_msg("%s: head %lld pair %lld: %d vs %d", what, (long long)h, (long long)i, x, y);
        }
    sl_tensor_release(&ba);
    sl_tensor_release(&bb);
}

START_TEST(test_from_blocks)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 46000 + (uint64_t)_i);
    const shape_case *c = &CASES[_i];
    int bq = 16, bk = 8;
    int64_t nqb = (c->nq + bq - 1) / bq, nkb = (c->nk + bk - 1) / bk;
    sl_tensor keep;
    int64_t ks[3] = {c->hq, nqb, nkb};
    ck_assert_int_eq(sl_tensor_new(ctx, SL_U8, 3, ks, &keep), SL_OK);
    memset(keep.data, 1, (size_t)sl_tensor_numel(&keep));
    sl_mask m, causal;
    ck_assert_int_eq(sl_mask_from_blocks(ctx, &keep, c->nq, c->nk, bq, bk, 1, &m), SL_OK);
    mask_of(ctx, SL_PAT_CAUSAL, 0, c->nq, c->nk, bq, bk, &causal);
    assert_same_mask(ctx, &m, &causal, "all blocks kept vs causal");
    ck_assert_msg(fabs(sl_mask_density(&m, 1) - 1) < 1e-12, "density %g", sl_mask_density(&m, 1));
    sl_tensor in[7] = {{0}};
    qkv_of(ctx, &rng, c, 1.0, in);
    sl_tensor dense[2];
    sl_attn_params pa = {.causal = 1};
    run_attn(ctx, SL_BACKEND_REF, SL_OP_ATTN_DENSE, &pa, in, dense);
    sl_mask_inputs(&m, &in[0], &in[1], &in[2], in);
    sl_attn_block_params pb = {.bq = bq, .bk = bk};
    check_equals(ctx, SL_OP_ATTN_BLOCK_SPARSE, &pb, in, dense, "from_blocks all kept vs dense");
    /* random blocks: pair (i, j) kept iff its block is kept and j <= position of i; block
     * shapes where the diagonal tiles repeat (bq = bk: one causal tile reused along the
     * diagonal by from_blocks' memo) and where they alternate (bq != bk, ragged 5 x 7);
     * density 0.4 and 0.95 (the memo also sees runs of full blocks between tiles) */
    static const int shapes[][2] = {{16, 8}, {8, 8}, {8, 16}, {5, 7}};
    for (int sh = 0; sh < 4; sh++)
        for (int dens = 0; dens < 2; dens++) {
            int sbq = shapes[sh][0], sbk = shapes[sh][1];
            int64_t snqb = (c->nq + sbq - 1) / sbq, snkb = (c->nk + sbk - 1) / sbk;
            sl_tensor kr;
            int64_t krs[3] = {c->hq, snqb, snkb};
            ck_assert_int_eq(sl_tensor_new(ctx, SL_U8, 3, krs, &kr), SL_OK);
            for (int64_t i = 0; i < sl_tensor_numel(&kr); i++)
                ((uint8_t *)kr.data)[i] = sl_rng_uniform(&rng) < (dens ? 0.95 : 0.4);
            sl_mask r;
            ck_assert_int_eq(sl_mask_from_blocks(ctx, &kr, c->nq, c->nk, sbq, sbk, 1, &r), SL_OK);
            for (int64_t h = 0; h < c->hq; h++)
                for (int64_t i = 0; i < c->nq; i++)
                    for (int64_t j = 0; j < c->nk; j++) {
                        int want = ((uint8_t *)kr.data)[(h * snqb + i / sbq) * snkb + j / sbk] && j <= c->nk - c->nq + i;
                        if (sl_mask_get(&r, (int)h, i, j) != want)
                            ck_abort_msg("from_blocks %dx%d: head %lld pair (%lld, %lld): %d, expected %d", sbq, sbk,
                                         (long long)h, (long long)i, (long long)j, sl_mask_get(&r, (int)h, i, j), want);
                    }
            sl_mask_release(&r);
            sl_tensor_release(&kr);
        }
    sl_mask_release(&m);
    sl_mask_release(&causal);
    release_n(dense, 2);
    release_n(in, 3);
    sl_tensor_release(&keep);
    tu_ctx_done(ctx, &al);
}
END_TEST

START_TEST(test_index_from_columns)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 47000 + (uint64_t)_i);
    const shape_case *c = &CASES[_i];
    sl_tensor in[8] = {{0}};
    qkv_of(ctx, &rng, c, 1.0, in);
    /* every column, listed twice in reverse with padding: dense (causal per row, all keys without) */
    sl_tensor cols = i32_tensor(ctx, 1, 2 * c->nk + 1);
    for (int64_t j = 0; j < c->nk; j++)
        ((int32_t *)cols.data)[j] = ((int32_t *)cols.data)[c->nk + j] = (int32_t)(c->nk - 1 - j);
    ((int32_t *)cols.data)[2 * c->nk] = -1;
    for (int causal = 0; causal < 2; causal++) {
        sl_mask_index x;
        ck_assert_int_eq(sl_mask_index_from_columns(ctx, &cols, c->nq, c->nk, 1, causal, &x), SL_OK);
        ck_assert_int_eq(sl_mask_index_validate(ctx, &x), SL_OK);
        in[3] = x.row_ptr, in[4] = x.col;
        sl_tensor dense[2];
        sl_attn_params pa = {.causal = causal};
        run_attn(ctx, SL_BACKEND_REF, SL_OP_ATTN_DENSE, &pa, in, dense);
        sl_attn_token_params pt = {.rows_per_entry = 1};
        check_equals(ctx, SL_OP_ATTN_TOKEN_SPARSE, &pt, in, dense, "index_from_columns all columns vs dense");
        release_n(dense, 2);
        sl_mask_index_release(&x);
    }
    sl_tensor_release(&cols);
    /* random per-head columns, entries of 5 rows: entry e lists the chosen columns up to its last row */
    int64_t n_c = 6, b = 5, n_e = (c->nq + b - 1) / b;
    cols = i32_tensor(ctx, c->hq, n_c);
    for (int64_t i = 0; i < c->hq * n_c; i++)
        ((int32_t *)cols.data)[i] = (int32_t)(sl_rng_next(&rng) % (uint64_t)c->nk);
    sl_mask_index x;
    ck_assert_int_eq(sl_mask_index_from_columns(ctx, &cols, c->nq, c->nk, b, 1, &x), SL_OK);
    for (int64_t h = 0; h < c->hq; h++)
        for (int64_t e = 0; e < n_e; e++) {
            const int32_t *rp = (const int32_t *)x.row_ptr.data + h * (n_e + 1);
            int64_t last = c->nk - c->nq + (e + 1) * b - 1;
            for (int64_t j = 0; j < c->nk; j++) {
                int chosen = 0, listed = 0;
                for (int64_t i = 0; i < n_c; i++)
                    chosen |= ((int32_t *)cols.data)[h * n_c + i] == j;
                for (int32_t t = rp[e]; t < rp[e + 1]; t++)
                    listed |= ((int32_t *)x.col.data)[t] == j;
                ck_assert_int_eq(listed, chosen && j <= last);
            }
        }
    /* the same columns as a u8 keep [H, n_k] give the same lists */
    sl_tensor keep;
    int64_t ks[2] = {c->hq, c->nk};
    ck_assert_int_eq(sl_tensor_zeros(ctx, SL_U8, 2, ks, &keep), SL_OK);
    for (int64_t h = 0; h < c->hq; h++)
        for (int64_t i = 0; i < n_c; i++)
            ((uint8_t *)keep.data)[h * c->nk + ((int32_t *)cols.data)[h * n_c + i]] = 1;
    sl_mask_index y;
    ck_assert_int_eq(sl_mask_index_from_columns(ctx, &keep, c->nq, c->nk, b, 1, &y), SL_OK);
    ck_assert_int_eq(sl_tensor_numel(&y.col), sl_tensor_numel(&x.col));
    ck_assert_mem_eq(y.row_ptr.data, x.row_ptr.data, (size_t)sl_tensor_nbytes(&x.row_ptr));
    if (sl_tensor_numel(&x.col))
        ck_assert_mem_eq(y.col.data, x.col.data, (size_t)sl_tensor_nbytes(&x.col));
    sl_mask_index_release(&y);
    sl_tensor_release(&keep);
    sl_mask_index_release(&x);
    sl_tensor_release(&cols);
    release_n(in, 3);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* MInference's conversion as its kernel reads (slash part, one query block
 * of bq = bk = B rows ending at position end): offsets sorted descending,
 * ranges merged, saved blocks; then the keys ∩ causal. Written from the
 * reference's loop, apart from the library's version. */
static void minference_block_keys(const int64_t *off_desc, int64_t n_s, int64_t end, int64_t B, int64_t n_k, uint8_t *keys)
{
    memset(keys, 0, (size_t)n_k);
    int64_t s = 0;
    while (s < n_s && off_desc[s] >= end)
        s++;
    if (s == n_s)
        return;
    int64_t s_idx = end - off_desc[s++];
    s_idx = s_idx > B ? s_idx : B;
    int64_t range_start = s_idx - B, range_end = s_idx;
    for (;;) {
        if (s < n_s) {
            s_idx = end - off_desc[s++];
            s_idx = s_idx > B ? s_idx : B;
        } else {
            for (int64_t j = range_start; j < range_end && j < n_k; j++)
                keys[j] = 1;
            break;
        }
        if (s_idx > range_end + B) {
            for (int64_t j = range_start; j < range_end && j < n_k; j++)
                keys[j] = 1;
            range_start = s_idx - B;
            range_end = s_idx;
        } else if (s_idx > range_end) {
            range_end += B;
        }
    }
}

START_TEST(test_from_slashes)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 48000 + (uint64_t)_i);
    const shape_case *c = &CASES[_i];
    int64_t B = 16, n_s = 5, off = c->nk - c->nq;
    sl_tensor offs = i32_tensor(ctx, c->hq, n_s);
    for (int64_t i = 0; i < c->hq * n_s; i++)
        ((int32_t *)offs.data)[i] = i % n_s == 0 ? 0 : (int32_t)(sl_rng_next(&rng) % (uint64_t)c->nk);
    sl_mask exact, wide;
    ck_assert_int_eq(sl_mask_from_slashes(ctx, &offs, c->nq, c->nk, (int)B, (int)B, 0, &exact), SL_OK);
    ck_assert_int_eq(sl_mask_from_slashes(ctx, &offs, c->nq, c->nk, (int)B, (int)B, 1, &wide), SL_OK);
    uint8_t *keys = malloc((size_t)c->nk);
    int64_t desc[5];
    for (int64_t h = 0; h < c->hq; h++) {
        /* offsets of head h, unique, descending */
        int64_t n = 0;
        for (int64_t i = 0; i < n_s; i++) {
            int64_t o = ((int32_t *)offs.data)[h * n_s + i], seen = 0;
            for (int64_t t = 0; t < n; t++)
                seen |= desc[t] == o;
            if (!seen)
                desc[n++] = o;
        }
        for (int64_t a = 0; a < n; a++)
            for (int64_t b2 = a + 1; b2 < n; b2++)
                if (desc[b2] > desc[a]) {
                    int64_t t = desc[a];
                    desc[a] = desc[b2];
                    desc[b2] = t;
                }
        for (int64_t r = 0; r * B < c->nq; r++) {
            minference_block_keys(desc, n, off + (r + 1) * B, B, c->nk, keys);
            for (int64_t i = r * B; i < c->nq && i < (r + 1) * B; i++)
                for (int64_t j = 0; j < c->nk; j++) {
                    int on_slash = 0;
                    for (int64_t t = 0; t < n; t++)
                        on_slash |= off + i - j == desc[t];
                    ck_assert_int_eq(sl_mask_get(&exact, (int)h, i, j), on_slash);
                    ck_assert_int_eq(sl_mask_get(&wide, (int)h, i, j), keys[j] && j <= off + i);
                    if (on_slash)
                        ck_assert_int_eq(sl_mask_get(&wide, (int)h, i, j), 1);
                }
        }
    }
    free(keys);
    sl_mask_release(&exact);
    sl_mask_release(&wide);
    sl_tensor_release(&offs);
    /* every offset: both forms are the causal mask */
    offs = i32_tensor(ctx, 1, c->nk);
    for (int64_t j = 0; j < c->nk; j++)
        ((int32_t *)offs.data)[j] = (int32_t)j;
    sl_mask causal;
    mask_of(ctx, SL_PAT_CAUSAL, 0, c->nq, c->nk, (int)B, (int)B, &causal);
    for (int w = 0; w < 2; w++) {
        sl_mask m;
        ck_assert_int_eq(sl_mask_from_slashes(ctx, &offs, c->nq, c->nk, (int)B, (int)B, w, &m), SL_OK);
        assert_same_mask(ctx, &m, &causal, w ? "widened, all offsets" : "exact, all offsets");
        sl_mask_release(&m);
    }
    sl_mask_release(&causal);
    sl_tensor_release(&offs);
    tu_ctx_done(ctx, &al);
}
END_TEST

START_TEST(test_mask_builders_reject)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_tensor keep, cols = i32_tensor(ctx, 1, 2);
    int64_t ks[3] = {1, 2, 3};
    ck_assert_int_eq(sl_tensor_zeros(ctx, SL_U8, 3, ks, &keep), SL_OK);
    sl_mask m;
    sl_mask_index x;
    ck_assert_int_eq(sl_mask_from_blocks(ctx, &keep, 20, 20, 8, 8, 1, &m), SL_ESHAPE);
    ck_assert_ptr_nonnull(strstr(sl_ctx_error(ctx), "mask from_blocks: keep has 2 x 3 blocks, expected 3 x 3"));
    ((int32_t *)cols.data)[0] = 3;
    ((int32_t *)cols.data)[1] = 20;
    ck_assert_int_eq(sl_mask_index_from_columns(ctx, &cols, 20, 20, 4, 1, &x), SL_EARG);
    ck_assert_ptr_nonnull(strstr(sl_ctx_error(ctx), "outside [0, 20)"));
    ((int32_t *)cols.data)[1] = -3;
    ck_assert_int_eq(sl_mask_from_slashes(ctx, &cols, 20, 20, 8, 8, 1, &m), SL_EARG);
    ck_assert_int_eq(sl_mask_index_from_columns(ctx, &cols, 20, 20, 0, 1, &x), SL_EARG);
    sl_tensor_release(&keep);
    sl_tensor_release(&cols);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* Selector parameters and inputs: p > 1 and k < 0 rejected; NaN and +inf
 * rejected, -inf allowed; masses must be >= 0 for top-p; opt.k one per
 * head, each >= 0. */
START_TEST(test_select_validation)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 45000);
    sl_select_topp_params pp;
    sl_select_topk_params pk;
    sl_op_params_default(SL_OP_SELECT_TOPP, &pp);
    sl_op_params_default(SL_OP_SELECT_TOPK, &pk);
    ck_assert_int_eq(sl_op_params_set(ctx, SL_OP_SELECT_TOPP, &pp, "p", 1.5), SL_EARG);
    ck_assert_int_eq(sl_op_params_set(ctx, SL_OP_SELECT_TOPK, &pk, "k", -1), SL_EARG);
    sl_tensor x[2] = {tu_randn(ctx, &rng, 2, 3, 5, 1.0)};
    ((float *)x[0].data)[4] = INFINITY;
    expect_fail(ctx, SL_OP_SELECT_TOPK, NULL, x, SL_EARG, "+inf");
    ((float *)x[0].data)[4] = NAN;
    expect_fail(ctx, SL_OP_SELECT_THRESHOLD, NULL, x, SL_EARG, "NaN");
    ((float *)x[0].data)[4] = -INFINITY;
    ck_assert_int_eq(sl_op_check(ctx, SL_OP_SELECT_TOPK, NULL, x), SL_OK);
    expect_fail(ctx, SL_OP_SELECT_TOPP, NULL, x, SL_EARG, "masses must be >= 0");
    int64_t hs[1] = {3};
    ck_assert_int_eq(sl_tensor_new(ctx, SL_I32, 1, hs, &x[1]), SL_OK);
    memset(x[1].data, 0, 12);
    expect_fail(ctx, SL_OP_SELECT_TOPK, NULL, x, SL_ESHAPE, "one per head");
    sl_tensor_release(&x[1]);
    hs[0] = 2;
    ck_assert_int_eq(sl_tensor_new(ctx, SL_I32, 1, hs, &x[1]), SL_OK);
    ((int32_t *)x[1].data)[0] = 1;
    ((int32_t *)x[1].data)[1] = -2;
    expect_fail(ctx, SL_OP_SELECT_TOPK, NULL, x, SL_EARG, "k >= 0");
    release_n(x, 2);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* select.cover (issue 20, session 3c): every backend against ref, over
 * square (causal triangle) and wide slices, -inf entries and ties, limits
 * from 0 past the total mass, extra 0 and 1; and ref against the rule
 * recomputed here: a descending sort of the taking-part values, the
 * running sum, then the kept count, no unkept entry above a kept one and
 * ties kept by lower flat index. */
static int dbl_desc(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x > y ? -1 : x < y;
}

START_TEST(test_select_cover)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 44020);
    const int64_t shapes[][3] = {{3, 9, 9}, {2, 6, 11}, {2, 1, 40}, {1, 17, 17}};
    for (int s = 0; s < 4; s++) {
        const int64_t *sh = shapes[s];
        int64_t H = sh[0], R = sh[1], C = sh[2], m = R * C;
        sl_tensor in[3] = {tied(ctx, &rng, H, R, C, 1)};
        const float *x = in[0].data;
        for (int causal = 0; causal < 2; causal++) {
            double total = 0;
            for (int64_t f = 0; f < m; f++)
                if (x[f] != -INFINITY && (!causal || f % C <= f / C + (C - R)))
                    total += x[f];
            const double fr[] = {0, 0.3, 0.5, 0.9, 1, 2};
            for (int i = 0; i < 6; i++)
                for (int extra = 0; extra < 2; extra++) {
                    sl_select_cover_params p = {.limit = fr[i] * total, .extra = extra, .causal = causal};
                    check_op_vs_ref(ctx, SL_OP_SELECT_COVER, &p, in, 0, "cover");
                    sl_tensor out[1] = {run_op1(ctx, SL_BACKEND_REF, SL_OP_SELECT_COVER, &p, in)};
                    const uint8_t *kp = out[0].data;
                    double *vals = malloc((size_t)m * sizeof *vals);
                    ck_assert_ptr_nonnull(vals);
                    for (int64_t h = 0; h < H; h++) {
                        int64_t n = 0, kept = 0;
                        for (int64_t f = 0; f < m; f++) {
                            int64_t g = h * m + f;
                            int part = x[g] != -INFINITY && (!causal || f % C <= f / C + (C - R));
                            if (part)
                                vals[n++] = x[g];
                            else
                                ck_assert_int_eq(kp[g], 0);
                            kept += kp[g];
                        }
                        qsort(vals, (size_t)n, sizeof *vals, dbl_desc);
                        double cum = 0;
                        int64_t cnt = 0;
                        while (cnt < n && (cum += vals[cnt]) <= p.limit)
                            cnt++;
                        int64_t take = cnt + extra < n ? cnt + extra : n;
                        ck_assert_int_eq(kept, take);
                        /* no unkept taking-part entry before a kept one in the order */
                        for (int64_t f = 0; f < m; f++)
                            for (int64_t e = 0; e < m; e++) {
                                int64_t gf = h * m + f, ge = h * m + e;
                                int part = x[ge] != -INFINITY && (!causal || e % C <= e / C + (C - R));
                                if (kp[gf] && !kp[ge] && part)
                                    ck_assert(x[gf] > x[ge] || (x[gf] == x[ge] && f < e));
                            }
                    }
                    free(vals);
                    sl_tensor_release(&out[0]);
                }
        }
        /* opt.heads: head 0 off keeps nothing; the others as without it */
        sl_tensor in2[3] = {in[0]};
        int64_t hs[1] = {H};
        ck_assert_int_eq(sl_tensor_new(ctx, SL_U8, 1, hs, &in2[1]), SL_OK);
        for (int64_t h = 0; h < H; h++)
            ((uint8_t *)in2[1].data)[h] = h != 0;
        sl_select_cover_params po = {.limit = 0.6 * (double)m, .extra = 1, .causal = 1};
        check_op_vs_ref(ctx, SL_OP_SELECT_COVER, &po, in2, 0, "cover opt.heads");
        sl_tensor ko = run_op1(ctx, SL_BACKEND_REF, SL_OP_SELECT_COVER, &po, in2);
        sl_tensor kf = run_op1(ctx, SL_BACKEND_REF, SL_OP_SELECT_COVER, &po, in);
        for (int64_t f = 0; f < H * m; f++)
            ck_assert_int_eq(((uint8_t *)ko.data)[f], f < m ? 0 : ((uint8_t *)kf.data)[f]);
        sl_tensor_release(&ko);
        /* opt.base (entries 0, 1 and 2): kept besides the selection, the output 0/1 */
        ck_assert_int_eq(sl_tensor_new(ctx, SL_U8, 3, in[0].shape, &in2[2]), SL_OK);
        for (int64_t f = 0; f < H * m; f++)
            ((uint8_t *)in2[2].data)[f] = (uint8_t)(f % 7 == 0 ? 1 : f % 11 == 0 ? 2 : 0);
        check_op_vs_ref(ctx, SL_OP_SELECT_COVER, &po, in2, 0, "cover opt.heads opt.base");
        sl_tensor kb = run_op1(ctx, SL_BACKEND_REF, SL_OP_SELECT_COVER, &po, in2);
        for (int64_t f = 0; f < H * m; f++)
            ck_assert_int_eq(((uint8_t *)kb.data)[f], (f < m ? 0 : ((uint8_t *)kf.data)[f]) | (f % 7 == 0 || f % 11 == 0));
        sl_tensor_release(&kb);
        sl_tensor_release(&kf);
        release_n(in2 + 1, 2);
        release_n(in, 1);
    }
    sl_tensor x2[3] = {{0}};
    int64_t shp[3] = {1, 2, 2};
    ck_assert_int_eq(sl_tensor_new(ctx, SL_F32, 3, shp, &x2[0]), SL_OK);
    for (int i = 0; i < 4; i++)
        ((float *)x2[0].data)[i] = i == 2 ? -0.5f : 0.25f;
    sl_select_cover_params pc = {.limit = 1, .causal = 1};
    expect_fail(ctx, SL_OP_SELECT_COVER, &pc, x2, SL_EARG, "masses must be >= 0");
    release_n(x2, 1);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* select.row_cover (issue 20, session 4b): every backend against ref over
 * square and wide rows (mode 0), square (mode 1), ties and zero scores, tau
 * from 0 past 1; and ref against each mode's rule written here as a
 * formula per block rather than a walk: mode 0 — block c (1 <= c < lim,
 * order position j among the candidates) is kept iff x[0] + x[lim] + (the
 * masses of the j candidates before it) < tau . total; mode 1 — the
 * candidate at order position j is kept iff (j = 0 ? 0 : y[r] + the first
 * j - 1 candidates' masses) < req, block 0 whenever some candidate or r
 * fails that, then tril and r. */
static const float *rc_row;
static int64_t rc_r, rc_mode;
static int rc_cmp(const void *a, const void *b)
{
    int64_t i = *(const int64_t *)a, j = *(const int64_t *)b;
    double x = rc_mode == 1 && i > rc_r ? 0 : rc_row[i], y = rc_mode == 1 && j > rc_r ? 0 : rc_row[j];
    if (x != y)
        return x > y ? -1 : 1;
    return i < j ? -1 : i > j;
}

START_TEST(test_select_row_cover)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_rng rng;
    sl_rng_seed(&rng, 44021);
    const int64_t shapes[][3] = {{2, 9, 9}, {2, 5, 12}, {1, 1, 30}, {1, 23, 23}, {2, 7, 4}};
    for (int s = 0; s < 5; s++) {
        const int64_t *sh = shapes[s];
        int64_t H = sh[0], R = sh[1], C = sh[2];
        sl_tensor in[1] = {tied(ctx, &rng, H, R, C, 1)};
        float *x = in[0].data;
        for (int64_t f = 0; f < H * R * C; f++)
            if (!isfinite(x[f]) || f % 13 == 5)
                x[f] = f % 13 == 5 ? 0.f : 1.f / 3.f;
        const double taus[] = {0, 0.2, 0.5, 0.8, 0.95, 1, 1.5};
        for (int mode = 0; mode < 2; mode++) {
            if (mode == 1 && R != C)
                continue;
            for (int i = 0; i < 7; i++) {
                sl_select_row_cover_params p = {.tau = taus[i], .mode = mode};
                check_op_vs_ref(ctx, SL_OP_SELECT_ROW_COVER, &p, in, 0, "row_cover");
                sl_tensor out = run_op1(ctx, SL_BACKEND_REF, SL_OP_SELECT_ROW_COVER, &p, in);
                const uint8_t *kp = out.data;
                int64_t *ord = malloc((size_t)(C + 1) * sizeof *ord);
                uint8_t *want = malloc((size_t)C);
                ck_assert(ord && want);
                for (int64_t h = 0; h < H; h++)
                    for (int64_t r = 0; r < R; r++) {
                        const float *row = x + (h * R + r) * C;
                        int64_t lim = r + (C - R) < C - 1 ? r + (C - R) : C - 1;
                        memset(want, 0, (size_t)C);
                        rc_row = row, rc_r = r, rc_mode = mode;
                        if (lim < 0) {
                        } else if (mode == 0) {
                            double total = 0;
                            for (int64_t c = 0; c <= lim; c++)
                                total += row[c];
                            int64_t n = 0;
                            for (int64_t c = 1; c < lim; c++)
                                ord[n++] = c;
                            qsort(ord, (size_t)n, sizeof *ord, rc_cmp);
                            want[0] = want[lim] = 1;
                            for (int64_t j = 0; j < n; j++) {
                                double before = (double)row[0] + (lim > 0 ? (double)row[lim] : 0.0);
                                for (int64_t t = 0; t < j; t++)
                                    before += row[ord[t]];
                                want[ord[j]] = taus[i] >= 1 || before < taus[i] * total;
                            }
                        } else {
                            double total = 0;
                            for (int64_t c = 0; c < C; c++)
                                total += c <= r ? (double)row[c] : 0.0;
                            double req = total * taus[i];
                            int64_t n = 0;
                            for (int64_t c = 0; c < C; c++)
                                if (c != r)
                                    ord[n++] = c;
                            qsort(ord, (size_t)n, sizeof *ord, rc_cmp);
                            int fail = !(0 < req);
                            for (int64_t j = 0; j < n; j++) {
                                double before = 0;
                                if (j > 0) {
                                    before = row[r];
                                    for (int64_t t = 0; t + 1 < j; t++)
                                        before += ord[t] <= r ? (double)row[ord[t]] : 0.0;
                                }
                                if (before < req)
                                    want[ord[j]] = 1;
                                else
                                    fail = 1;
                            }
                            if (fail)
                                want[0] = 1;
                            for (int64_t c = r + 1; c < C; c++)
                                want[c] = 0;
                            want[r] = 1;
                        }
                        for (int64_t c = 0; c < C; c++)
                            ck_assert_msg(kp[(h * R + r) * C + c] == want[c],
                                          "row_cover mode %d tau %g shape %d h %lld r %lld c %lld: %d, expected %d", mode,
                                          taus[i], s, (long long)h, (long long)r, (long long)c,
                                          kp[(h * R + r) * C + c], want[c]);
                    }
                free(ord);
                free(want);
                sl_tensor_release(&out);
            }
        }
        if (R != C) {
            sl_select_row_cover_params pm = {.tau = 0.5, .mode = 1};
            expect_fail(ctx, SL_OP_SELECT_ROW_COVER, &pm, in, SL_ESHAPE, "needs R = C");
        }
        release_n(in, 1);
    }
    tu_ctx_done(ctx, &al);
}
END_TEST

static void add_tests(TCase *tc)
{
    tcase_add_test(tc, test_select_row_cover);
    tcase_add_test(tc, test_select_cover);
    tcase_add_test(tc, test_select_backends_match_ref);
    tcase_add_test(tc, test_select_properties);
    tcase_add_loop_test(tc, test_from_blocks, 0, N_CASES);
    tcase_add_loop_test(tc, test_index_from_columns, 0, N_CASES);
    tcase_add_loop_test(tc, test_from_slashes, 0, N_CASES);
    tcase_add_test(tc, test_mask_builders_reject);
    tcase_add_test(tc, test_select_validation);
}

int main(void) { return run_op_suite("select_ops", add_tests); }
