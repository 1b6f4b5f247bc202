/* test_model_naive.c — the model runner against an independent forward pass
 * written here in another style: it reads model.bin itself, keeps every
 * activation in double, walks token by token with explicit loops (no BLAS,
 * no KV-cache struct, RoPE from its definition), and scores each next token.
 * Every per-token log-likelihood of every shipped text must agree with
 * sl_model_forward to 1e-4; the README's reference mean NLLs (an independent
 * numpy forward) are checked too. */
#include "testutil.h"

#include <dirent.h>

#define MODEL "experiments/data/tinystories260k/model.bin"
#define TOKENIZER "experiments/data/tinystories260k/tok512.bin"
#define TEXTS "experiments/data/tinystories260k/texts"

typedef struct naive {
    int dim, hidden, layers, heads, kv_heads, vocab, seq;
    float *w; /* the whole file after the header */
    const float *emb, *rms_att, *wq, *wk, *wv, *wo, *rms_ffn, *w1, *w2, *w3, *rms_final;
} naive;

static void naive_load(naive *m)
{
    FILE *f = fopen(MODEL, "rb");
    ck_assert_ptr_nonnull(f);
    int h[7];
    ck_assert_int_eq((int)fread(h, sizeof(int), 7, f), 7);
    m->dim = h[0], m->hidden = h[1], m->layers = h[2], m->heads = h[3], m->kv_heads = h[4];
    m->vocab = h[5] < 0 ? -h[5] : h[5], m->seq = h[6];
    fseek(f, 0, SEEK_END);
    long bytes = ftell(f) - 28;
    fseek(f, 28, SEEK_SET);
    m->w = malloc((size_t)bytes);
    ck_assert_int_eq((long)fread(m->w, 1, (size_t)bytes, f), bytes);
    fclose(f);
    int hs = m->dim / m->heads, L = m->layers, d = m->dim, kvd = m->kv_heads * hs;
    const float *p = m->w;
    m->emb = p, p += m->vocab * d;
    m->rms_att = p, p += L * d;
    m->wq = p, p += L * d * d;
    m->wk = p, p += L * kvd * d;
    m->wv = p, p += L * kvd * d;
    m->wo = p, p += L * d * d;
    m->rms_ffn = p, p += L * d;
    m->w1 = p, p += L * m->hidden * d;
    m->w2 = p, p += L * d * m->hidden;
    m->w3 = p, p += L * m->hidden * d;
    m->rms_final = p;
}

static void norm(double *out, const double *x, const float *w, int d)
{
    double ss = 0;
    for (int i = 0; i < d; i++)
        ss += x[i] * x[i];
    double r = 1.0 / sqrt(ss / d + 1e-5);
    for (int i = 0; i < d; i++)
        out[i] = x[i] * r * w[i];
}

static void mv(double *y, const float *W, const double *x, int rows, int cols)
{
    for (int r = 0; r < rows; r++) {
        double s = 0;
        for (int c = 0; c < cols; c++)
            s += (double)W[r * cols + c] * x[c];
        y[r] = s;
    }
}

/* Log-likelihood of tokens[t+1] after tokens[0..t], for every t, into ll. */
static void naive_scores(const naive *m, const int32_t *tokens, int n, double *ll)
{
    int d = m->dim, hs = d / m->heads, kvd = m->kv_heads * hs, grp = m->heads / m->kv_heads;
    double *kc = calloc((size_t)m->layers * n * kvd, sizeof(double));
    double *vc = calloc((size_t)m->layers * n * kvd, sizeof(double));
    double *x = malloc(sizeof(double) * d), *xb = malloc(sizeof(double) * d), *q = malloc(sizeof(double) * d);
    double *att = malloc(sizeof(double) * d), *tmp = malloc(sizeof(double) * d), *sc = malloc(sizeof(double) * n);
    double *h1 = malloc(sizeof(double) * m->hidden), *h3 = malloc(sizeof(double) * m->hidden);
    double *logit = malloc(sizeof(double) * m->vocab);
    for (int t = 0; t + 1 < n; t++) {
        for (int i = 0; i < d; i++)
            x[i] = m->emb[tokens[t] * d + i];
        for (int l = 0; l < m->layers; l++) {
            double *kr = kc + ((size_t)l * n + t) * kvd, *vr = vc + ((size_t)l * n + t) * kvd;
            norm(xb, x, m->rms_att + l * d, d);
            mv(q, m->wq + (size_t)l * d * d, xb, d, d);
            mv(kr, m->wk + (size_t)l * kvd * d, xb, kvd, d);
            mv(vr, m->wv + (size_t)l * kvd * d, xb, kvd, d);
            for (int i = 0; i < d; i += 2) { /* adjacent pairs, angle t / 10000^((i mod hs)/hs) */
                double ang = t / pow(10000.0, (double)(i % hs) / hs), c = cos(ang), s = sin(ang);
                double a = q[i], b = q[i + 1];
                q[i] = a * c - b * s, q[i + 1] = a * s + b * c;
                if (i < kvd) {
                    a = kr[i], b = kr[i + 1];
                    kr[i] = a * c - b * s, kr[i + 1] = a * s + b * c;
                }
            }
            for (int h = 0; h < m->heads; h++) {
                int g = h / grp;
                double mx = -1e300, z = 0;
                for (int j = 0; j <= t; j++) {
                    const double *kj = kc + ((size_t)l * n + j) * kvd + g * hs;
                    double s = 0;
                    for (int c = 0; c < hs; c++)
                        s += q[h * hs + c] * kj[c];
                    sc[j] = s / sqrt((double)hs);
                    mx = fmax(mx, sc[j]);
                }
                for (int j = 0; j <= t; j++)
                    z += (sc[j] = exp(sc[j] - mx));
                for (int c = 0; c < hs; c++) {
                    double s = 0;
                    for (int j = 0; j <= t; j++)
                        s += sc[j] / z * vc[((size_t)l * n + j) * kvd + g * hs + c];
                    att[h * hs + c] = s;
                }
            }
            mv(tmp, m->wo + (size_t)l * d * d, att, d, d);
            for (int i = 0; i < d; i++)
                x[i] += tmp[i];
            norm(xb, x, m->rms_ffn + l * d, d);
            mv(h1, m->w1 + (size_t)l * m->hidden * d, xb, m->hidden, d);
            mv(h3, m->w3 + (size_t)l * m->hidden * d, xb, m->hidden, d);
            for (int i = 0; i < m->hidden; i++)
                h1[i] = h1[i] / (1 + exp(-h1[i])) * h3[i];
            mv(tmp, m->w2 + (size_t)l * d * m->hidden, h1, d, m->hidden);
            for (int i = 0; i < d; i++)
                x[i] += tmp[i];
        }
        norm(xb, x, m->rms_final, d);
        mv(logit, m->emb, xb, m->vocab, d);
        double mx = -1e300, z = 0;
        for (int v = 0; v < m->vocab; v++)
            mx = fmax(mx, logit[v]);
        for (int v = 0; v < m->vocab; v++)
            z += exp(logit[v] - mx);
        ll[t] = logit[tokens[t + 1]] - mx - log(z);
    }
    free(kc), free(vc), free(x), free(xb), free(q), free(att), free(tmp), free(sc), free(h1), free(h3), free(logit);
}

/* README table: mean NLL of each text (float32 numpy forward, BOS prepended). */
static const struct { const char *name; double nll; int tokens; } REF[] = {
    {"01_red_kite", 1.396268, 489},   {"02_lost_mitten", 1.344874, 492}, {"03_brave_turtle", 1.564982, 486},
    {"04_cake_for_mom", 1.711097, 491}, {"05_moon_friend", 1.439644, 484}, {"06_little_seed", 1.626963, 504},
    {"07_toy_shop", 1.809611, 495},   {"08_rainy_day", 1.596362, 489},
};

static char *read_text(const char *name)
{
    char path[256];
    snprintf(path, sizeof path, "%s/%s.txt", TEXTS, name);
    FILE *f = fopen(path, "rb");
    ck_assert_msg(f != NULL, "cannot open %s", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = malloc((size_t)n + 1);
    ck_assert_int_eq((long)fread(s, 1, (size_t)n, f), n);
    s[n] = 0;
    fclose(f);
    return s;
}

START_TEST(test_every_token_of_every_text)
{
    naive m;
    naive_load(&m);
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_model *model;
    sl_tokenizer *tok;
    ck_assert_int_eq(sl_model_load_llama2c(ctx, MODEL, &model), SL_OK);
    ck_assert_int_eq(sl_tokenizer_load(ctx, TOKENIZER, model->cfg.vocab_size, &tok), SL_OK);
    const char *name = REF[_i].name;
    char *text = read_text(name);
    sl_tensor ids, logits;
    ck_assert_int_eq(sl_tokenizer_encode(ctx, tok, text, 1, 0, &ids), SL_OK);
    int n = (int)ids.shape[0];
    ck_assert_int_eq(n, REF[_i].tokens);
    const int32_t *t = ids.data;
    sl_model_state *st;
    ck_assert_int_eq(sl_model_state_new(ctx, model, n, &st), SL_OK);
    ck_assert_int_eq(sl_model_forward(ctx, model, st, t, n, NULL, NULL, &logits), SL_OK);
    double *ll = malloc(sizeof(double) * (size_t)n);
    naive_scores(&m, t, n, ll);
    double worst = 0, mean = 0;
    int V = (int)model->cfg.vocab_size;
    for (int p = 0; p + 1 < n; p++) {
        const float *row = (const float *)logits.data + (size_t)p * V;
        double mx = -1e300, z = 0;
        for (int v = 0; v < V; v++)
            mx = fmax(mx, row[v]);
        for (int v = 0; v < V; v++)
            z += exp(row[v] - mx);
        double got = row[t[p + 1]] - mx - log(z);
        worst = fmax(worst, fabs(got - ll[p]));
        mean -= ll[p];
    }
    mean /= n - 1;
    printf("%s: %d tokens, max |dLL| %.2e, mean NLL %.6f (README %.6f)\n", name, n, worst, mean, REF[_i].nll);
    ck_assert_msg(worst < 1e-4, "%s: a token's log-likelihood differs by %g", name, worst);
    ck_assert_double_eq_tol(mean, REF[_i].nll, 2e-6);
    free(ll);
    free(text);
    free(m.w);
    sl_tensor_release(&ids);
    sl_tensor_release(&logits);
    sl_model_state_free(ctx, st);
    sl_tokenizer_free(ctx, tok);
    sl_model_free(ctx, model);
    tu_ctx_done(ctx, &al);
}
END_TEST

/* The README's sparse sanity value: every layer restricted to a causal
 * window of 64 tokens on 06_little_seed gives mean NLL 1.714215. */
static sl_status window64(void *ud, sl_ctx *ctx, int layer, const sl_tensor *q, const sl_tensor *k,
                          const sl_tensor *v, sl_tensor *o)
{
    (void)ud, (void)layer;
    sl_pattern_term w = {.kind = SL_PAT_WINDOW, .a = 64};
    sl_mask m;
    sl_status s = sl_mask_from_pattern(ctx, &w, 1, q->shape[1], k->shape[1], 16, 16, &m);
    if (s)
        return s;
    sl_tensor in[7], out[2];
    sl_mask_inputs(&m, q, k, v, in);
    sl_attn_block_params p = {.bq = 16, .bk = 16, .scale = 0};
    s = sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_ATTN_BLOCK_SPARSE, &p, in, out);
    sl_mask_release(&m);
    if (s == SL_OK) {
        *o = out[0];
        sl_tensor_release(&out[1]);
    }
    return s;
}

START_TEST(test_window_sanity_value)
{
    tu_alloc al;
    sl_ctx *ctx = tu_ctx(&al);
    sl_model *model;
    sl_tokenizer *tok;
    ck_assert_int_eq(sl_model_load_llama2c(ctx, MODEL, &model), SL_OK);
    ck_assert_int_eq(sl_tokenizer_load(ctx, TOKENIZER, model->cfg.vocab_size, &tok), SL_OK);
    char *text = read_text("06_little_seed");
    sl_tensor ids, logits;
    ck_assert_int_eq(sl_tokenizer_encode(ctx, tok, text, 1, 0, &ids), SL_OK);
    int n = (int)ids.shape[0], V = (int)model->cfg.vocab_size;
    sl_model_state *st;
    ck_assert_int_eq(sl_model_state_new(ctx, model, n, &st), SL_OK);
    ck_assert_int_eq(sl_model_forward(ctx, model, st, ids.data, n, window64, NULL, &logits), SL_OK);
    double nll = 0;
    const int32_t *t = ids.data;
    for (int p = 0; p + 1 < n; p++) {
        const float *row = (const float *)logits.data + (size_t)p * V;
        double mx = -1e300, z = 0;
        for (int v = 0; v < V; v++)
            mx = fmax(mx, row[v]);
        for (int v = 0; v < V; v++)
            z += exp(row[v] - mx);
        nll -= row[t[p + 1]] - mx - log(z);
    }
    nll /= n - 1;
    printf("06_little_seed, window 64: mean NLL %.6f (README 1.714215)\n", nll);
    ck_assert_double_eq_tol(nll, 1.714215, 2e-6);
    free(text);
    sl_tensor_release(&ids);
    sl_tensor_release(&logits);
    sl_model_state_free(ctx, st);
    sl_tokenizer_free(ctx, tok);
    sl_model_free(ctx, model);
    tu_ctx_done(ctx, &al);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("model_naive");
    TCase *tc = tcase_create("model_naive");
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, test_every_token_of_every_text, 0, (int)(sizeof REF / sizeof REF[0]));
    tcase_add_test(tc, test_window_sanity_value);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
