/* test_model.c — Check suite for the transformer runner (core/model/): the
 * llama2.c loader and forward pass against the reference values printed in
 * the stories260K README (an independent numpy/float64 forward), prefill
 * against token-by-token decode through the KV cache, the Hugging Face loader
 * on a conversion of the same model written here (f32, f16, bf16, tied and
 * untied), bad files of every kind, and failure of every allocation. */
#include "testutil.h"

#include <dirent.h>
#include <stdarg.h>
#include <sys/stat.h>

#define MODEL "experiments/data/tinystories260k/model.bin"
#define N_IDS 40

/* ck_assert records its location on every pass (a write to the parent);
 * loops over many values check this way instead. */
#define CHECK(cond, ...)               \
    do {                               \
        if (!(cond))                   \
            ck_abort_msg(__VA_ARGS__); \
    } while (0)

/* The README's greedy continuation of BOS (temperature 0). */
static const int32_t readme_greedy[20] = {1,   403, 407, 261, 378, 432, 383, 286, 261, 376,
                                          298, 315, 421, 395, 317, 426, 338, 401, 396, 267};

/* ---- fixture: a guarded context and a temporary directory ------------------ */

typedef struct fx {
    tu_alloc a;
    sl_ctx *ctx;
    char dir[64];
} fx;

static void fx_open(fx *f)
{
    f->ctx = tu_ctx(&f->a);
    ck_assert_ptr_nonnull(f->ctx);
    tu_tmpdir(f->dir, sizeof f->dir);
}

static void fx_path(const fx *f, const char *name, char *buf, size_t n) { snprintf(buf, n, "%s/%s", f->dir, name); }

/* Removes the directory's files and empty subdirectories. */
static void rm_tree(const char *dir)
{
    DIR *d = opendir(dir);
    ck_assert_ptr_nonnull(d);
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        char p[512];
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        if (unlink(p) != 0)
            rm_tree(p);
    }
    closedir(d);
    rmdir(dir);
}

/* Checks for leaks and overruns, then removes the directory. */
static void fx_close(fx *f)
{
    tu_ctx_done(f->ctx, &f->a);
    rm_tree(f->dir);
}

static void put_file(const char *path, const void *data, size_t n)
{
    FILE *fp = fopen(path, "wb");
    ck_assert_ptr_nonnull(fp);
    if (n)
        ck_assert_uint_eq(fwrite(data, 1, n, fp), n);
    ck_assert_int_eq(fclose(fp), 0);
}

static unsigned char *get_file(const char *path, size_t *n)
{
    FILE *fp = fopen(path, "rb");
    ck_assert_ptr_nonnull(fp);
    fseek(fp, 0, SEEK_END);
    *n = (size_t)ftell(fp);
    fseek(fp, 0, SEEK_SET);
    unsigned char *b = malloc(*n + 1);
    ck_assert_ptr_nonnull(b);
    ck_assert_uint_eq(fread(b, 1, *n, fp), *n);
    fclose(fp);
    return b;
}

/* A failure with status want whose one-line message holds each of the
 * given substrings (NULL-terminated list). */
static void expect_fail(sl_ctx *ctx, sl_status got, sl_status want, ...)
{
    const char *msg = sl_ctx_error(ctx);
    ck_assert_msg(got == want, "expected %s, got %s: %s", sl_status_name(want), sl_status_name(got), msg);
    ck_assert_msg(strchr(msg, '\n') == NULL, "message is not one line: %s", msg);
    va_list ap;
    va_start(ap, want);
    for (const char *sub; (sub = va_arg(ap, const char *)) != NULL;)
        ck_assert_msg(strstr(msg, sub) != NULL, "message lacks \"%s\": %s", sub, msg);
    va_end(ap);
}

/* ---- model helpers ------------------------------------------------------------ */

static sl_model *load_ref(sl_ctx *ctx)
{
    sl_model *m = NULL;
    sl_status s = sl_model_load_llama2c(ctx, MODEL, &m);
    ck_assert_msg(s == SL_OK, "%s", sl_ctx_error(ctx));
    return m;
}

/* Logits [n, vocab] of one prefill call over tokens. */
static sl_tensor prefill(sl_ctx *ctx, const sl_model *m, const int32_t *tokens, int64_t n)
{
    sl_model_state *st;
    sl_tensor lg;
    ck_assert_int_eq(sl_model_state_new(ctx, m, n, &st), SL_OK);
    sl_status s = sl_model_forward(ctx, m, st, tokens, n, NULL, NULL, &lg);
    ck_assert_msg(s == SL_OK, "%s", sl_ctx_error(ctx));
    ck_assert_int_eq(st->n, n);
    sl_model_state_free(ctx, st);
    return lg;
}

static int64_t argmax(const float *x, int64_t n)
{
    int64_t best = 0;
    for (int64_t i = 1; i < n; i++)
        if (x[i] > x[best])
            best = i;
    return best;
}

static double log_softmax_at(const float *x, int64_t n, int64_t k)
{
    double mx = x[argmax(x, n)], sum = 0;
    for (int64_t i = 0; i < n; i++)
        sum += exp((double)x[i] - mx);
    return (double)x[k] - mx - log(sum);
}

static double max_diff(const sl_tensor *a, const sl_tensor *b)
{
    ck_assert_int_eq(sl_tensor_numel(a), sl_tensor_numel(b));
    double d = 0;
    for (int64_t i = 0; i < sl_tensor_numel(a); i++)
        d = fmax(d, fabs((double)tu_at(a, i) - tu_at(b, i)));
    return d;
}

/* The README's 20 greedy ids, continued greedily to N_IDS by decoding. */
static void greedy_ids(sl_ctx *ctx, const sl_model *m, int32_t *ids)
{
    sl_model_state *st;
    ck_assert_int_eq(sl_model_state_new(ctx, m, N_IDS, &st), SL_OK);
    ids[0] = 1;
    for (int i = 0; i + 1 < N_IDS; i++) {
        sl_tensor lg;
        ck_assert_int_eq(sl_model_forward(ctx, m, st, &ids[i], 1, NULL, NULL, &lg), SL_OK);
        ids[i + 1] = (int32_t)argmax(lg.data, m->cfg.vocab_size);
        sl_tensor_release(&lg);
        if (i + 1 < 20)
            CHECK(ids[i + 1] == readme_greedy[i + 1], "greedy id %d: %d, README %d", i + 1, ids[i + 1],
                  readme_greedy[i + 1]);
    }
    sl_model_state_free(ctx, st);
}

/* Every weight of m rounded to the nearest f16 or bf16 (in place). */
static void round_weights(sl_model *m, sl_dtype dt)
{
    sl_tensor *ts[3 + 9 * 8];
    int n = 0;
    ts[n++] = &m->tok_emb; /* wcls shares it */
    ts[n++] = &m->rms_final;
    for (int64_t l = 0; l < m->cfg.n_layers; l++) {
        sl_model_layer *y = &m->layers[l];
        sl_tensor *per[9] = {&y->rms_att, &y->wq, &y->wk, &y->wv, &y->wo, &y->rms_ffn, &y->w1, &y->w2, &y->w3};
        for (int i = 0; i < 9; i++)
            ts[n++] = per[i];
    }
    for (int i = 0; i < n; i++) {
        float *x = ts[i]->data;
        for (int64_t k = 0; k < sl_tensor_numel(ts[i]); k++)
            x[k] = dt == SL_F16 ? sl_f16_to_f32(sl_f32_to_f16(x[k])) : sl_bf16_to_f32(sl_f32_to_bf16(x[k]));
    }
}

/* ---- a Hugging Face layout of a loaded model -------------------------------------- */

#define HF_MAX 64

typedef struct hf_set {
    sl_named_tensor t[HF_MAX];
    char names[HF_MAX][96];
    int n;
} hf_set;

/* Adds t under name (the set takes the reference). */
static void hf_add(hf_set *h, const char *name, sl_tensor t)
{
    ck_assert_int_lt(h->n, HF_MAX);
    snprintf(h->names[h->n], sizeof h->names[0], "%s", name);
    h->t[h->n].name = h->names[h->n];
    h->t[h->n].t = t;
    h->n++;
}

static sl_named_tensor *hf_find(hf_set *h, const char *name)
{
    for (int i = 0; i < h->n; i++)
        if (strcmp(h->names[i], name) == 0)
            return &h->t[i];
    ck_abort_msg("no tensor %s", name);
    return NULL;
}

static void hf_drop(hf_set *h, const char *name)
{
    sl_named_tensor *t = hf_find(h, name);
    int i = (int)(t - h->t);
    sl_tensor_release(&t->t);
    for (; i + 1 < h->n; i++) {
        memcpy(h->names[i], h->names[i + 1], sizeof h->names[0]);
        h->t[i].t = h->t[i + 1].t;
    }
    h->n--;
}

static void hf_free(hf_set *h)
{
    for (int i = 0; i < h->n; i++)
        sl_tensor_release(&h->t[i].t);
    h->n = 0;
}

/* A copy of w in dtype dt; with n_heads > 0 its rows are permuted from
 * llama2.c's RoPE pairs (2j, 2j+1) of each head to Hugging Face's halves
 * (j, j + hd/2), as transformers' convert_llama_weights_to_hf does. */
static sl_tensor hf_weight(sl_ctx *ctx, const sl_tensor *w, sl_dtype dt, int64_t n_heads, int64_t hd)
{
    sl_tensor p, out;
    ck_assert_int_eq(sl_tensor_convert(ctx, w, SL_F32, &p), SL_OK);
    if (n_heads > 0) {
        int64_t cols = w->shape[1];
        const float *src = w->data;
        float *dst = p.data;
        ck_assert_int_eq(w->shape[0], n_heads * hd);
        for (int64_t h = 0; h < n_heads; h++)
            for (int64_t j = 0; j < hd / 2; j++)
                for (int64_t e = 0; e < 2; e++)
                    memcpy(dst + (h * hd + e * (hd / 2) + j) * cols, src + (h * hd + 2 * j + e) * cols,
                           (size_t)cols * sizeof(float));
    }
    ck_assert_int_eq(sl_tensor_convert(ctx, &p, dt, &out), SL_OK);
    sl_tensor_release(&p);
    return out;
}

static void hf_build_rope(sl_ctx *ctx, const sl_model *m, sl_dtype dt, int with_lm_head, int permute, hf_set *h)
{
    const sl_model_config *c = &m->cfg;
    char name[96];
    h->n = 0;
    hf_add(h, "model.embed_tokens.weight", hf_weight(ctx, &m->tok_emb, dt, 0, 0));
    for (int64_t l = 0; l < c->n_layers; l++) {
        const sl_model_layer *y = &m->layers[l];
        struct {
            const char *suffix;
            const sl_tensor *w;
            int64_t heads;
        } parts[9] = {
            {"self_attn.q_proj.weight", &y->wq, c->n_heads},  {"self_attn.k_proj.weight", &y->wk, c->n_kv_heads},
            {"self_attn.v_proj.weight", &y->wv, 0},           {"self_attn.o_proj.weight", &y->wo, 0},
            {"mlp.gate_proj.weight", &y->w1, 0},              {"mlp.up_proj.weight", &y->w3, 0},
            {"mlp.down_proj.weight", &y->w2, 0},              {"input_layernorm.weight", &y->rms_att, 0},
            {"post_attention_layernorm.weight", &y->rms_ffn, 0},
        };
        for (int i = 0; i < 9; i++) {
            snprintf(name, sizeof name, "model.layers.%lld.%s", (long long)l, parts[i].suffix);
            hf_add(h, name, hf_weight(ctx, parts[i].w, dt, permute ? parts[i].heads : 0, c->head_dim));
        }
    }
    hf_add(h, "model.norm.weight", hf_weight(ctx, &m->rms_final, dt, 0, 0));
    if (with_lm_head)
        hf_add(h, "lm_head.weight", hf_weight(ctx, &m->wcls, dt, 0, 0));
}

static void hf_build(sl_ctx *ctx, const sl_model *m, sl_dtype dt, int with_lm_head, hf_set *h)
{
    hf_build_rope(ctx, m, dt, with_lm_head, 1, h);
}

/* config.json for the stories260K sizes as transformers writes it, with
 * `extra` appended (a later duplicate key overrides) and key `omit` left out. */
static void hf_config_text(char *buf, size_t n, int tie, const char *omit, const char *extra)
{
    static const char *const fields[] = {
        "\"architectures\": [\"LlamaForCausalLM\"]", "\"attention_bias\": false", "\"attention_dropout\": 0.0",
        "\"bos_token_id\": 1", "\"eos_token_id\": 2", "\"hidden_act\": \"silu\"", "\"hidden_size\": 64",
        "\"initializer_range\": 0.02", "\"intermediate_size\": 172", "\"max_position_embeddings\": 512",
        "\"model_type\": \"llama\"", "\"num_attention_heads\": 8", "\"num_hidden_layers\": 5",
        "\"num_key_value_heads\": 4", "\"pretraining_tp\": 1", "\"rms_norm_eps\": 1e-05", "\"rope_scaling\": null",
        "\"rope_theta\": 10000.0", "\"torch_dtype\": \"float32\"", "\"transformers_version\": \"4.44.0\"",
        "\"use_cache\": true", "\"vocab_size\": 512"};
    size_t w = (size_t)snprintf(buf, n, "{\n");
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++)
        if (!omit || strncmp(fields[i] + 1, omit, strlen(omit)) != 0 || fields[i][strlen(omit) + 1] != '"')
            w += (size_t)snprintf(buf + w, n - w, "  %s,\n", fields[i]);
    w += (size_t)snprintf(buf + w, n - w, "  \"tie_word_embeddings\": %s%s%s\n}\n", tie ? "true" : "false",
                          extra ? ",\n  " : "", extra ? extra : "");
    ck_assert_uint_lt(w, n);
}

static void hf_write(const fx *f, const hf_set *h, const char *config)
{
    char p[512];
    fx_path(f, "config.json", p, sizeof p);
    put_file(p, config, strlen(config));
    fx_path(f, "model.safetensors", p, sizeof p);
    sl_status s = sl_safetensors_write(f->ctx, p, h->t, h->n);
    ck_assert_msg(s == SL_OK, "%s", sl_ctx_error(f->ctx));
}

/* Writes h with the given config and loads the directory. */
static sl_status hf_load(const fx *f, const hf_set *h, const char *config, sl_model **m)
{
    hf_write(f, h, config);
    return sl_model_load_hf(f->ctx, f->dir, m);
}

/* ---- a. reference points --------------------------------------------------------- */

START_TEST(test_reference_points)
{
    fx f;
    fx_open(&f);
    sl_model *m = load_ref(f.ctx);
    const sl_model_config *c = &m->cfg;
    ck_assert(c->dim == 64 && c->hidden_dim == 172 && c->n_layers == 5 && c->n_heads == 8 && c->n_kv_heads == 4);
    ck_assert(c->vocab_size == 512 && c->seq_len == 512 && c->head_dim == 8 && c->rope_style == SL_ROPE_PAIRS);
    ck_assert_ptr_eq(m->wcls.buf, m->tok_emb.buf);
    int64_t V = c->vocab_size;

    int32_t bos = 1;
    sl_tensor lg = prefill(f.ctx, m, &bos, 1);
    const double first[4] = {-6.222914, 8.404342, -6.223739, -6.222544};
    for (int i = 0; i < 4; i++)
        ck_assert_double_eq_tol(tu_at(&lg, i), first[i], 1e-4);
    ck_assert_int_eq(argmax(lg.data, V), 403);
    ck_assert_double_eq_tol(tu_at(&lg, 403), 17.02352, 1e-3);
    sl_tensor_release(&lg);

    const int32_t once[5] = {1, 403, 407, 261, 378};
    lg = prefill(f.ctx, m, once, 5);
    const float *row4 = (const float *)lg.data + 4 * V;
    ck_assert_int_eq(argmax(row4, V), 432);
    ck_assert_double_eq_tol(row4[432], 17.7994, 1e-3);
    double ll = 0;
    for (int i = 0; i < 4; i++)
        ll += log_softmax_at((const float *)lg.data + i * V, V, once[i + 1]);
    ck_assert_double_eq_tol(ll, -0.274090, 1e-4);
    sl_tensor_release(&lg);

    int32_t ids[N_IDS];
    greedy_ids(f.ctx, m, ids); /* checks the README's 20 greedy ids */
    sl_model_free(f.ctx, m);
    fx_close(&f);
}
END_TEST

/* ---- b. prefill against decode, the hook, argument errors ------------------------- */

typedef struct hook_log {
    int calls, fail_layer;
    int64_t last_nk, last_nq;
} hook_log;

/* Dense attention that records what the runner hands it, and can fail. */
static sl_status logging_hook(void *ud, sl_ctx *ctx, int layer, const sl_tensor *q, const sl_tensor *k,
                              const sl_tensor *v, sl_tensor *o)
{
    hook_log *h = ud;
    CHECK(layer == h->calls % 5, "hook called for layer %d at call %d", layer, h->calls);
    CHECK(q->ndim == 3 && q->shape[0] == 8 && q->shape[2] == 8, "q shape");
    CHECK(k->ndim == 3 && k->shape[0] == 4 && k->shape[2] == 8 && v->shape[1] == k->shape[1], "k/v shape");
    h->calls++;
    h->last_nq = q->shape[1];
    h->last_nk = k->shape[1];
    if (layer == h->fail_layer)
        return sl_ctx_fail(ctx, SL_EUNSUPPORTED, "logging_hook: told to fail at layer %d", layer);
    sl_attn_params p = {.causal = 1, .scale = 0};
    sl_tensor lse = {0}; /* sl_attn_dense leaves it untouched on failure */
    sl_status s = sl_attn_dense(ctx, SL_BACKEND_CPU, &p, q, k, v, o, &lse);
    sl_tensor_release(&lse);
    return s;
}

START_TEST(test_prefill_vs_decode)
{
    fx f;
    fx_open(&f);
    sl_model *m = load_ref(f.ctx);
    int64_t V = m->cfg.vocab_size;
    int32_t ids[N_IDS];
    greedy_ids(f.ctx, m, ids);
    sl_tensor full = prefill(f.ctx, m, ids, N_IDS);

    /* One token at a time, then uneven chunks, through one state each. */
    const int64_t chunk_sets[2][5] = {{1, 0}, {7, 1, 13, 19, 0}};
    for (int cs = 0; cs < 2; cs++) {
        sl_model_state *st;
        ck_assert_int_eq(sl_model_state_new(f.ctx, m, N_IDS, &st), SL_OK);
        double worst = 0;
        for (int64_t pos = 0, k = 0; pos < N_IDS; k++) {
            int64_t n = chunk_sets[cs][cs == 0 ? 0 : k];
            sl_tensor lg;
            ck_assert_int_eq(sl_model_forward(f.ctx, m, st, ids + pos, n, NULL, NULL, &lg), SL_OK);
            ck_assert_int_eq(st->n, pos + n);
            for (int64_t i = 0; i < n * V; i++)
                worst = fmax(worst, fabs((double)tu_at(&lg, i) - tu_at(&full, pos * V + i)));
            sl_tensor_release(&lg);
            pos += n;
        }
        fprintf(stderr, "test_model: prefill vs %s: max |logit diff| %.3g\n", cs ? "chunks 7,1,13,19" : "decode",
                worst);
        ck_assert_double_lt(worst, 1e-4);

        /* The cache is full: one more token is an argument error and changes nothing. */
        sl_tensor lg = {0};
        expect_fail(f.ctx, sl_model_forward(f.ctx, m, st, ids, 1, NULL, NULL, &lg), SL_EARG, "capacity 40", NULL);
        ck_assert_ptr_null(lg.buf);
        ck_assert_int_eq(st->n, N_IDS);
        sl_model_state_free(f.ctx, st);
    }

    /* The hook sees every layer in order, with the cache up to the new tokens,
     * gives the dense answer, and a failing hook leaves the state unchanged. */
    sl_model_state *st;
    ck_assert_int_eq(sl_model_state_new(f.ctx, m, N_IDS, &st), SL_OK);
    hook_log h = {0, -1, 0, 0};
    sl_tensor lg;
    ck_assert_int_eq(sl_model_forward(f.ctx, m, st, ids, 30, logging_hook, &h, &lg), SL_OK);
    ck_assert(h.calls == 5 && h.last_nq == 30 && h.last_nk == 30);
    sl_tensor_release(&lg);
    h.fail_layer = 2;
    expect_fail(f.ctx, sl_model_forward(f.ctx, m, st, ids + 30, 4, logging_hook, &h, &lg), SL_EUNSUPPORTED,
                "told to fail at layer 2", NULL);
    ck_assert_int_eq(st->n, 30);
    ck_assert_ptr_null(lg.buf);
    h.fail_layer = -1;
    h.calls = 0;
    ck_assert_int_eq(sl_model_forward(f.ctx, m, st, ids + 30, 10, logging_hook, &h, &lg), SL_OK);
    ck_assert(h.calls == 5 && h.last_nq == 10 && h.last_nk == 40);
    double worst = 0;
    for (int64_t i = 0; i < 10 * V; i++)
        worst = fmax(worst, fabs((double)tu_at(&lg, i) - tu_at(&full, 30 * V + i)));
    ck_assert_double_lt(worst, 1e-4);
    sl_tensor_release(&lg);
    sl_model_state_free(f.ctx, st);

    /* Capacity, token ids and counts are checked before anything runs. */
    ck_assert_int_eq(sl_model_state_new(f.ctx, m, 5, &st), SL_OK);
    expect_fail(f.ctx, sl_model_forward(f.ctx, m, st, ids, 6, NULL, NULL, &lg), SL_EARG, "capacity 5", NULL);
    const int32_t bad_hi[3] = {1, 403, 512}, bad_lo[2] = {-1, 1};
    expect_fail(f.ctx, sl_model_forward(f.ctx, m, st, bad_hi, 3, NULL, NULL, &lg), SL_EARG, "token 2", "512", NULL);
    expect_fail(f.ctx, sl_model_forward(f.ctx, m, st, bad_lo, 2, NULL, NULL, &lg), SL_EARG, "token 0", "-1", NULL);
    expect_fail(f.ctx, sl_model_forward(f.ctx, m, st, ids, 0, NULL, NULL, &lg), SL_EARG, NULL);
    ck_assert_int_eq(st->n, 0);
    ck_assert_ptr_null(lg.buf);
    sl_model_state_free(f.ctx, st);
    sl_model_state *none = NULL;
    expect_fail(f.ctx, sl_model_state_new(f.ctx, m, 0, &none), SL_EARG, NULL);
    ck_assert_ptr_null(none);

    sl_tensor_release(&full);
    sl_model_free(f.ctx, m);
    fx_close(&f);
}
END_TEST

/* ---- c. the Hugging Face loader on a converted model ------------------------------ */

/* Writes m in Hugging Face layout (dtype dt), loads it back and returns the
 * largest logit difference to ref over ids; *top1 counts equal argmaxes. */
static double hf_roundtrip(fx *f, const sl_model *m, const sl_tensor *ref, const int32_t *ids, sl_dtype dt, int tie,
                           int *top1)
{
    hf_set h;
    char cfg[2048];
    hf_build(f->ctx, m, dt, !tie, &h);
    hf_config_text(cfg, sizeof cfg, tie, NULL, NULL);
    sl_model *hm = NULL;
    sl_status s = hf_load(f, &h, cfg, &hm);
    ck_assert_msg(s == SL_OK, "%s", sl_ctx_error(f->ctx));
    hf_free(&h);
    const sl_model_config *c = &hm->cfg;
    ck_assert(c->dim == 64 && c->hidden_dim == 172 && c->n_layers == 5 && c->n_heads == 8 && c->n_kv_heads == 4);
    ck_assert(c->vocab_size == 512 && c->seq_len == 512 && c->head_dim == 8 && c->rope_style == SL_ROPE_HALF);
    ck_assert(c->norm_eps == 1e-5 && c->rope_theta == 10000.0);
    ck_assert(tie ? hm->wcls.buf == hm->tok_emb.buf : hm->wcls.buf != hm->tok_emb.buf);
    ck_assert(hm->tok_emb.dtype == SL_F32 && hm->layers[4].w2.dtype == SL_F32);
    sl_tensor lg = prefill(f->ctx, hm, ids, N_IDS);
    double d = max_diff(&lg, ref);
    int64_t V = c->vocab_size;
    *top1 = 0;
    for (int i = 0; i < N_IDS; i++)
        *top1 += argmax((const float *)lg.data + i * V, V) == argmax((const float *)ref->data + i * V, V);
    sl_tensor_release(&lg);
    sl_model_free(f->ctx, hm);
    return d;
}

START_TEST(test_hf_matches_llama2c)
{
    fx f;
    fx_open(&f);
    sl_model *m = load_ref(f.ctx);
    int32_t ids[N_IDS];
    greedy_ids(f.ctx, m, ids);
    sl_tensor ref = prefill(f.ctx, m, ids, N_IDS);
    int top1;

    /* f32, tied as the original is, and untied with lm_head.weight written. */
    for (int tie = 1; tie >= 0; tie--) {
        double d = hf_roundtrip(&f, m, &ref, ids, SL_F32, tie, &top1);
        fprintf(stderr, "test_model: HF f32 (%s) vs llama2.c: max |logit diff| %.3g over %d positions\n",
                tie ? "tied" : "untied", d, N_IDS);
        ck_assert_double_lt(d, 1e-4);
        ck_assert_int_eq(top1, N_IDS);
    }

    /* f16 and bf16 files: the loader's conversion is exact, so the model they
     * load equals the llama2.c model with every weight rounded the same way. */
    const sl_dtype half[2] = {SL_F16, SL_BF16};
    for (int i = 0; i < 2; i++) {
        sl_model *r = load_ref(f.ctx);
        round_weights(r, half[i]);
        sl_tensor rref = prefill(f.ctx, r, ids, N_IDS);
        double d = hf_roundtrip(&f, m, &rref, ids, half[i], 1, &top1);
        double drift = max_diff(&rref, &ref);
        int same = 0;
        for (int p = 0; p < N_IDS; p++)
            same += argmax((const float *)rref.data + p * 512, 512) == argmax((const float *)ref.data + p * 512, 512);
        fprintf(stderr,
                "test_model: HF %s vs llama2.c rounded to %s: max |logit diff| %.3g; "
                "rounding itself moves logits by up to %.3g, top-1 kept at %d/%d positions\n",
                sl_dtype_name(half[i]), sl_dtype_name(half[i]), d, drift, same, N_IDS);
        ck_assert_double_lt(d, 1e-4);
        ck_assert_int_eq(top1, N_IDS);
        /* bf16 keeps 8 significant bits (relative error <= 2^-9 per weight);
         * over 5 layers of a 64-wide model the logits (|x| <~ 20) may move by
         * a few tenths, rarely enough to swap a near-tied top-1. */
        ck_assert_double_lt(drift, half[i] == SL_BF16 ? 0.5 : 0.05);
        ck_assert_int_ge(same, N_IDS - (half[i] == SL_BF16 ? 4 : 1));
        sl_tensor_release(&rref);
        sl_model_free(f.ctx, r);
    }

    /* Without the q/k row permutation the logits differ: the comparison above
     * does exercise Hugging Face's RoPE convention. */
    hf_set h;
    char cfg[2048];
    hf_build_rope(f.ctx, m, SL_F32, 0, 0, &h);
    hf_config_text(cfg, sizeof cfg, 1, NULL, NULL);
    sl_model *hm = NULL;
    ck_assert_int_eq(hf_load(&f, &h, cfg, &hm), SL_OK);
    hf_free(&h);
    sl_tensor lg = prefill(f.ctx, hm, ids, N_IDS);
    double unpermuted = max_diff(&lg, &ref);
    fprintf(stderr, "test_model: HF f32 without the q/k permutation: max |logit diff| %.3g (must be large)\n",
            unpermuted);
    ck_assert_double_gt(unpermuted, 0.1);
    sl_tensor_release(&lg);
    sl_model_free(f.ctx, hm);

    /* Tolerated extras: RoPE frequencies older exports saved, a classifier in
     * a tied checkpoint (transformers uses the embedding then), nested
     * unknown keys, and Mistral's sliding window (capping the context). */
    hf_build(f.ctx, m, SL_F32, 1, &h);
    float *lm = hf_find(&h, "lm_head.weight")->t.data;
    for (int i = 0; i < 512 * 64; i++)
        lm[i] = 0.f;
    int64_t four = 4;
    sl_tensor inv;
    ck_assert_int_eq(sl_tensor_zeros(f.ctx, SL_F32, 1, &four, &inv), SL_OK);
    hf_add(&h, "model.layers.3.self_attn.rotary_emb.inv_freq", inv);
    hf_config_text(cfg, sizeof cfg, 1, "model_type",
                   "\"model_type\": \"mistral\", \"sliding_window\": 300, \"head_dim\": null, \"task\": {\"x\": "
                   "[1, -2.5e-3, 0, true, false, null, \"s\\u00e9\\n\\\"\", {}, []], \"y\": {\"z\": [[]]}}");
    sl_status s = hf_load(&f, &h, cfg, &hm);
    ck_assert_msg(s == SL_OK, "%s", sl_ctx_error(f.ctx));
    ck_assert_int_eq(hm->cfg.seq_len, 300);
    ck_assert_int_eq(hm->cfg.head_dim, 8);
    ck_assert_ptr_eq(hm->wcls.buf, hm->tok_emb.buf);
    lg = prefill(f.ctx, hm, ids, N_IDS);
    ck_assert_double_lt(max_diff(&lg, &ref), 1e-4);
    sl_tensor_release(&lg);
    sl_model_free(f.ctx, hm);
    hf_free(&h);

    sl_tensor_release(&ref);
    sl_model_free(f.ctx, m);
    fx_close(&f);
}
END_TEST

/* ---- d. bad files ------------------------------------------------------------------- */

/* ---- sharded checkpoints (issue 18) ------------------------------------------------- */

/* Writes h as two shards (the first `cut` tensors, then the rest) and an index
 * mapping each tensor to its shard; `moved` (if not NULL) is mapped to the other
 * shard than the one it is written to. No model.safetensors. */
static void hf_write_sharded(const fx *f, const hf_set *h, int cut, const char *moved, const char *shard2_name)
{
    char p[512];
    fx_path(f, "model.safetensors", p, sizeof p);
    unlink(p);
    const char *shard[2] = {"model-00001-of-00002.safetensors", shard2_name};
    for (int k = 0; k < 2; k++) {
        if (strchr(shard[k], '/'))
            continue;
        fx_path(f, shard[k], p, sizeof p);
        sl_status s = sl_safetensors_write(f->ctx, p, h->t + (k ? cut : 0), k ? h->n - cut : cut);
        ck_assert_msg(s == SL_OK, "%s", sl_ctx_error(f->ctx));
    }
    size_t cap = 64 * 1024, w = 0;
    char *idx = malloc(cap);
    ck_assert_ptr_nonnull(idx);
    w += (size_t)snprintf(idx + w, cap - w, "{\"metadata\": {\"total_size\": 0}, \"weight_map\": {");
    for (int i = 0; i < h->n; i++) {
        int k = i >= cut;
        if (moved && strcmp(h->t[i].name, moved) == 0)
            k = !k;
        w += (size_t)snprintf(idx + w, cap - w, "%s\"%s\": \"%s\"", i ? ", " : "", h->t[i].name, shard[k]);
    }
    w += (size_t)snprintf(idx + w, cap - w, "}}\n");
    ck_assert_uint_lt(w, cap);
    fx_path(f, "model.safetensors.index.json", p, sizeof p);
    put_file(p, idx, w);
    free(idx);
}

START_TEST(test_hf_sharded)
{
    fx f;
    fx_open(&f);
    sl_model *ref = load_ref(f.ctx), *m = NULL;
    int32_t ids[N_IDS];
    greedy_ids(f.ctx, ref, ids);
    sl_tensor want = prefill(f.ctx, ref, ids, N_IDS);
    char cfg[2048], p[512];
    hf_config_text(cfg, sizeof cfg, 1, NULL, NULL);
    fx_path(&f, "config.json", p, sizeof p);
    put_file(p, cfg, strlen(cfg));
    hf_set h;
    hf_build(f.ctx, ref, SL_F32, 0, &h);
    const char *shard2 = "model-00002-of-00002.safetensors";

    /* two shards: the same model as the single file */
    hf_write_sharded(&f, &h, h.n / 2, NULL, shard2);
    sl_status s = sl_model_load_hf(f.ctx, f.dir, &m);
    ck_assert_msg(s == SL_OK, "%s", sl_ctx_error(f.ctx));
    sl_tensor lg = prefill(f.ctx, m, ids, N_IDS);
    double d = max_diff(&lg, &want);
    fprintf(stderr, "test_model: HF sharded (2 files) vs llama2.c: max |logit diff| %.3g\n", d);
    ck_assert_double_lt(d, 1e-4);
    sl_tensor_release(&lg);
    sl_model_free(f.ctx, m);
    m = NULL;

    /* a tensor in a shard the index does not map it to */
    hf_write_sharded(&f, &h, h.n / 2, "model.norm.weight", shard2);
    fx_path(&f, "model.safetensors.index.json", p, sizeof p);
    expect_fail(f.ctx, sl_model_load_hf(f.ctx, f.dir, &m), SL_EFORMAT, "'model.norm.weight'", "maps to another shard",
                NULL);
    ck_assert_ptr_null(m);
    /* a shard outside the folder, and a missing shard */
    hf_write_sharded(&f, &h, h.n / 2, NULL, "../evil.safetensors");
    expect_fail(f.ctx, sl_model_load_hf(f.ctx, f.dir, &m), SL_EFORMAT, p, "expected a shard file name", NULL);
    hf_write_sharded(&f, &h, h.n / 2, NULL, shard2);
    fx_path(&f, shard2, p, sizeof p);
    unlink(p);
    expect_fail(f.ctx, sl_model_load_hf(f.ctx, f.dir, &m), SL_EIO, shard2, NULL);
    ck_assert_ptr_null(m);
    /* an index without weight_map */
    fx_path(&f, "model.safetensors.index.json", p, sizeof p);
    put_file(p, "{\"metadata\": {}}", 16);
    expect_fail(f.ctx, sl_model_load_hf(f.ctx, f.dir, &m), SL_EFORMAT, "weight_map", NULL);

    hf_free(&h);
    sl_tensor_release(&want);
    sl_model_free(f.ctx, ref);
    fx_close(&f);
}
END_TEST

/* ---- Llama 3 scaled RoPE (issue 18) ------------------------------------------------- */

typedef struct q_capture { float q[8 * N_IDS * 8]; int got; } q_capture;

/* Dense attention that keeps layer 0's post-RoPE q [8, n, 8]. */
static sl_status capture_q_hook(void *ud, sl_ctx *ctx, int layer, const sl_tensor *q, const sl_tensor *k,
                                const sl_tensor *v, sl_tensor *o)
{
    q_capture *c = ud;
    if (layer == 0 && q->shape[1] == N_IDS) {
        memcpy(c->q, q->data, sizeof c->q);
        c->got = 1;
    }
    sl_attn_params p = {.causal = 1, .scale = 0};
    sl_tensor lse = {0};
    sl_status s = sl_attn_dense(ctx, SL_BACKEND_CPU, &p, q, k, v, o, &lse);
    sl_tensor_release(&lse);
    return s;
}

static void capture_q(sl_ctx *ctx, const sl_model *m, const int32_t *ids, q_capture *c)
{
    sl_model_state *st;
    ck_assert_int_eq(sl_model_state_new(ctx, m, N_IDS, &st), SL_OK);
    sl_tensor lg;
    c->got = 0;
    sl_status s = sl_model_forward(ctx, m, st, ids, N_IDS, capture_q_hook, c, &lg);
    ck_assert_msg(s == SL_OK, "%s", sl_ctx_error(ctx));
    ck_assert(c->got);
    sl_tensor_release(&lg);
    sl_model_state_free(ctx, st);
}

START_TEST(test_hf_llama3_rope)
{
    fx f;
    fx_open(&f);
    sl_model *ref = load_ref(f.ctx), *plain = NULL, *scaled = NULL;
    int32_t ids[N_IDS];
    greedy_ids(f.ctx, ref, ids);
    hf_set h;
    hf_build(f.ctx, ref, SL_F32, 0, &h);
    char cfg[2048];
    hf_config_text(cfg, sizeof cfg, 1, NULL, NULL);
    ck_assert_int_eq(hf_load(&f, &h, cfg, &plain), SL_OK);
    /* factor 8, low 1, high 4, original 64: with head_dim 8 the wavelengths 2*pi*10000^(2j/8)
     * are 6.3 (kept: < 64/4), 62.8 (mixed: between 16 and 64), 628 and 6283 (divided by 8) */
    hf_config_text(cfg, sizeof cfg, 1, NULL, "\"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8.0, "
                   "\"low_freq_factor\": 1.0, \"high_freq_factor\": 4.0, \"original_max_position_embeddings\": 64}");
    sl_status s = hf_load(&f, &h, cfg, &scaled);
    ck_assert_msg(s == SL_OK, "%s", sl_ctx_error(f.ctx));
    ck_assert(scaled->cfg.rope_factor == 8.0 && scaled->cfg.rope_orig_max_pos == 64);
    q_capture *a = malloc(sizeof *a), *b = malloc(sizeof *b);
    ck_assert(a && b);
    capture_q(f.ctx, plain, ids, a);
    capture_q(f.ctx, scaled, ids, b);
    /* undo the plain rotation, apply the scaled one (frequencies written here from the
     * Llama 3 rule), compare (rotate-half pairs: j and j + 4) */
    double worst = 0, moved = 0;
    for (int j = 0; j < 4; j++) {
        double fr = pow(10000.0, -2.0 * j / 8.0), w = 2 * M_PI / fr, fs;
        if (w < 64.0 / 4.0)
            fs = fr;
        else if (w > 64.0 / 1.0)
            fs = fr / 8.0;
        else {
            double sm = (64.0 / w - 1.0) / (4.0 - 1.0);
            fs = (1 - sm) * fr / 8.0 + sm * fr;
        }
        for (int hh = 0; hh < 8; hh++)
            for (int i = 0; i < N_IDS; i++) {
                const float *pa = a->q + (hh * N_IDS + i) * 8, *pb = b->q + (hh * N_IDS + i) * 8;
                double c0 = cos(i * fr), s0 = sin(i * fr);
                double x0 = pa[j] * c0 + pa[j + 4] * s0, x1 = -pa[j] * s0 + pa[j + 4] * c0; /* pre-RoPE */
                double c1 = cos(i * fs), s1 = sin(i * fs);
                double y0 = x0 * c1 - x1 * s1, y1 = x0 * s1 + x1 * c1;
                worst = fmax(worst, fmax(fabs(y0 - pb[j]), fabs(y1 - pb[j + 4])));
                moved = fmax(moved, fabs(pa[j] - pb[j]));
            }
    }
    fprintf(stderr, "test_model: llama3 RoPE vs its rule on layer 0's q: max |diff| %.3g (plain vs scaled differ by "
            "up to %.3g)\n", worst, moved);
    ck_assert_double_lt(worst, 1e-4);
    ck_assert_double_gt(moved, 1e-2);
    free(a);
    free(b);
    sl_model_free(f.ctx, plain);
    sl_model_free(f.ctx, scaled);
    /* other scalings are refused; a llama3 setting without its keys is a format error */
    sl_model *m = NULL;
    hf_config_text(cfg, sizeof cfg, 1, NULL, "\"rope_scaling\": {\"rope_type\": \"yarn\", \"factor\": 4.0}");
    expect_fail(f.ctx, hf_load(&f, &h, cfg, &m), SL_EUNSUPPORTED, "rope_scaling", "\"yarn\"", NULL);
    hf_config_text(cfg, sizeof cfg, 1, NULL, "\"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8.0}");
    expect_fail(f.ctx, hf_load(&f, &h, cfg, &m), SL_EFORMAT, "'low_freq_factor'", NULL);
    hf_config_text(cfg, sizeof cfg, 1, NULL, "\"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8.0, "
                   "\"low_freq_factor\": 4.0, \"high_freq_factor\": 1.0, \"original_max_position_embeddings\": 64}");
    expect_fail(f.ctx, hf_load(&f, &h, cfg, &m), SL_EFORMAT, "low_freq_factor < high_freq_factor", NULL);
    ck_assert_ptr_null(m);
    hf_free(&h);
    sl_model_free(f.ctx, ref);
    fx_close(&f);
}
END_TEST

START_TEST(test_llama2c_bad_files)
{
    fx f;
    fx_open(&f);
    size_t size;
    unsigned char *orig = get_file(MODEL, &size), *b = malloc(size + 4 * 512 * 64);
    ck_assert_ptr_nonnull(b);
    char p[512];
    fx_path(&f, "m.bin", p, sizeof p);
    sl_model *m = (sl_model *)&f; /* must be reset to NULL on failure */

    const size_t cuts[] = {0, 1, 27, 28, 29, 32, 1000, 131100, size / 2, size - 4 * 8 * 4, size - 4, size - 1};
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        put_file(p, orig, cuts[i]);
        expect_fail(f.ctx, sl_model_load_llama2c(f.ctx, p, &m), SL_EFORMAT, p, NULL);
        ck_assert_ptr_null(m);
    }
    memcpy(b, orig, size);
    memset(b + size, 0, 4);
    put_file(p, b, size + 4); /* a trailing extra float */
    expect_fail(f.ctx, sl_model_load_llama2c(f.ctx, p, &m), SL_EFORMAT, p, NULL);

    /* Headers that lie or cannot describe a model. */
    const struct {
        int field;
        int32_t value;
    } lies[] = {{0, 32},         {0, 0},         {0, -64},      {1, 171},        {1, -1},        {2, 4},
                {2, 0},          {2, 6},         {3, 0},        {3, 7},          {3, 16},        {4, 3},
                {4, 0},          {4, 16},        {5, 511},      {5, 0},          {5, INT32_MIN}, {6, 511},
                {6, 0},          {6, INT32_MAX}, {0, 1 << 20},  {1, INT32_MAX}, {2, INT32_MAX}, {5, INT32_MAX}};
    for (size_t i = 0; i < sizeof lies / sizeof lies[0]; i++) {
        memcpy(b, orig, size);
        memcpy(b + 4 * lies[i].field, &lies[i].value, 4);
        put_file(p, b, size);
        expect_fail(f.ctx, sl_model_load_llama2c(f.ctx, p, &m), SL_EFORMAT, p, NULL);
    }
    /* A header whose sizes are each legal but multiply out huge. */
    int32_t huge[7] = {1 << 20, 1 << 22, 4096, 4096, 4096, 1 << 24, 1 << 26};
    memcpy(b, orig, size);
    memcpy(b, huge, sizeof huge);
    put_file(p, b, size);
    expect_fail(f.ctx, sl_model_load_llama2c(f.ctx, p, &m), SL_EFORMAT, p, NULL);

    /* NaN and infinities name their tensor. */
    const size_t V = 512, d = 64, L = 5, hid = 172;
    const struct {
        size_t float_index;
        const char *tensor;
    } bad[] = {{0, "token_embedding"},
               {V * d + L * d + 5, "wq"},
               {V * d + L * d + L * d * d + L * 32 * d + L * 32 * d + L * d * d + L * d + 3 * L * hid * d - 1, "w3"},
               {(size - 28) / 4 - 1, "freq_cis"}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        for (int inf = 0; inf < 2; inf++) {
            memcpy(b, orig, size);
            float x = inf ? -INFINITY : NAN;
            memcpy(b + 28 + 4 * bad[i].float_index, &x, 4);
            put_file(p, b, size);
            char quoted[64];
            snprintf(quoted, sizeof quoted, "'%s'", bad[i].tensor);
            expect_fail(f.ctx, sl_model_load_llama2c(f.ctx, p, &m), SL_EFORMAT, p, quoted, NULL);
        }

    /* A negative vocab_size means a separate classifier follows. */
    memcpy(b, orig, size);
    int32_t neg = -512;
    memcpy(b + 20, &neg, 4);
    put_file(p, b, size);
    expect_fail(f.ctx, sl_model_load_llama2c(f.ctx, p, &m), SL_EFORMAT, p, NULL);
    memcpy(b + size, orig + 28, V * d * 4); /* wcls = the embedding */
    put_file(p, b, size + V * d * 4);
    ck_assert_int_eq(sl_model_load_llama2c(f.ctx, p, &m), SL_OK);
    ck_assert_ptr_ne(m->wcls.buf, m->tok_emb.buf);
    sl_model *r = load_ref(f.ctx);
    int32_t once[5] = {1, 403, 407, 261, 378};
    sl_tensor a = prefill(f.ctx, m, once, 5), e = prefill(f.ctx, r, once, 5);
    ck_assert_double_eq(max_diff(&a, &e), 0);
    sl_tensor_release(&a);
    sl_tensor_release(&e);
    sl_model_free(f.ctx, m);
    sl_model_free(f.ctx, r);

    fx_path(&f, "absent.bin", p, sizeof p);
    expect_fail(f.ctx, sl_model_load_llama2c(f.ctx, p, &m), SL_EIO, p, NULL);
    sl_status s = sl_model_load_llama2c(f.ctx, f.dir, &m); /* a directory */
    ck_assert_msg(s == SL_EIO || s == SL_EFORMAT, "%s", sl_status_name(s));
    expect_fail(f.ctx, s, s, f.dir, NULL);
    free(orig);
    free(b);
    fx_close(&f);
}
END_TEST

START_TEST(test_hf_bad_tensors)
{
    fx f;
    fx_open(&f);
    sl_model *ref = load_ref(f.ctx), *m = (sl_model *)&f;
    char cfg[2048], st[512];
    fx_path(&f, "model.safetensors", st, sizeof st);
    hf_config_text(cfg, sizeof cfg, 1, NULL, NULL);
    hf_set h;
    int64_t sh[2];
    sl_tensor t;

    hf_build(f.ctx, ref, SL_F32, 0, &h);
    hf_drop(&h, "model.layers.2.mlp.up_proj.weight");
    expect_fail(f.ctx, hf_load(&f, &h, cfg, &m), SL_EFORMAT, st, "'model.layers.2.mlp.up_proj.weight'",
                "expected [172, 64], found no such tensor", NULL);
    ck_assert_ptr_null(m);
    hf_free(&h);

    const char *globals[2] = {"model.embed_tokens.weight", "model.norm.weight"};
    for (int i = 0; i < 2; i++) {
        hf_build(f.ctx, ref, SL_F32, 0, &h);
        hf_drop(&h, globals[i]);
        expect_fail(f.ctx, hf_load(&f, &h, cfg, &m), SL_EFORMAT, st, globals[i], "no such tensor", NULL);
        hf_free(&h);
    }

    /* Untied without a classifier. */
    char untied[2048];
    hf_config_text(untied, sizeof untied, 0, NULL, NULL);
    hf_build(f.ctx, ref, SL_F32, 0, &h);
    expect_fail(f.ctx, hf_load(&f, &h, untied, &m), SL_EFORMAT, st, "'lm_head.weight'", "tie_word_embeddings", NULL);
    hf_free(&h);

    /* Wrong shapes: transposed, an extra dimension, and a 1-D weight. */
    hf_build(f.ctx, ref, SL_F32, 0, &h);
    sl_named_tensor *down = hf_find(&h, "model.layers.1.mlp.down_proj.weight");
    down->t.shape[0] = 172, down->t.shape[1] = 64, down->t.stride[0] = 64;
    expect_fail(f.ctx, hf_load(&f, &h, cfg, &m), SL_EFORMAT, st, "'model.layers.1.mlp.down_proj.weight'",
                "expected [64, 172], found [172, 64]", NULL);
    hf_free(&h);
    hf_build(f.ctx, ref, SL_F32, 0, &h);
    sl_named_tensor *nrm = hf_find(&h, "model.norm.weight");
    nrm->t.ndim = 2, nrm->t.shape[0] = 1, nrm->t.shape[1] = 64, nrm->t.stride[0] = 64, nrm->t.stride[1] = 1;
    expect_fail(f.ctx, hf_load(&f, &h, cfg, &m), SL_EFORMAT, st, "'model.norm.weight'", "expected [64], found [1, 64]",
                NULL);
    hf_free(&h);
    hf_build(f.ctx, ref, SL_F32, 0, &h);
    sl_named_tensor *q = hf_find(&h, "model.layers.0.self_attn.q_proj.weight");
    q->t.ndim = 1, q->t.shape[0] = 64 * 64, q->t.stride[0] = 1;
    expect_fail(f.ctx, hf_load(&f, &h, cfg, &m), SL_EFORMAT, st, "'model.layers.0.self_attn.q_proj.weight'",
                "expected [64, 64], found [4096]", NULL);
    hf_free(&h);

    /* A dtype the runner cannot use. */
    hf_build(f.ctx, ref, SL_F32, 0, &h);
    hf_drop(&h, "model.layers.4.input_layernorm.weight");
    sh[0] = 64;
    ck_assert_int_eq(sl_tensor_zeros(f.ctx, SL_I32, 1, sh, &t), SL_OK);
    hf_add(&h, "model.layers.4.input_layernorm.weight", t);
    expect_fail(f.ctx, hf_load(&f, &h, cfg, &m), SL_EFORMAT, st, "'model.layers.4.input_layernorm.weight'",
                "found i32", NULL);
    hf_free(&h);

    /* Biases, extra layers and unknown names. */
    const struct {
        const char *name;
        sl_status want;
        const char *says;
    } extras[] = {
        {"model.layers.0.self_attn.q_proj.bias", SL_EUNSUPPORTED, "bias"},
        {"model.layers.3.mlp.down_proj.bias", SL_EUNSUPPORTED, "bias"},
        {"lm_head.bias", SL_EUNSUPPORTED, "bias"},
        {"model.layers.5.mlp.up_proj.weight", SL_EFORMAT, "expected layers 0..4"},
        {"model.layers.99999999999999.mlp.up_proj.weight", SL_EFORMAT, "unknown name"},
        {"model.layers.01.mlp.up_proj.weight", SL_EFORMAT, "unknown name"},
        {"model.layers.1.mlp.sideways_proj.weight", SL_EFORMAT, "unknown name"},
        {"model.layers.", SL_EFORMAT, "unknown name"},
        {"model.embed_tokens.weight2", SL_EFORMAT, "unknown name"},
        {"transformer.wte.weight", SL_EFORMAT, "unknown name"},
        {"", SL_EFORMAT, "unknown name"},
        {"odd\x01name\x7f", SL_EFORMAT, "'odd?name?'"},
    };
    for (size_t i = 0; i < sizeof extras / sizeof extras[0]; i++) {
        hf_build(f.ctx, ref, SL_F32, 0, &h);
        sh[0] = 64;
        ck_assert_int_eq(sl_tensor_zeros(f.ctx, SL_F32, 1, sh, &t), SL_OK);
        hf_add(&h, extras[i].name, t);
        expect_fail(f.ctx, hf_load(&f, &h, cfg, &m), extras[i].want, st, extras[i].says, NULL);
        if (extras[i].name[0] > 0x20 && extras[i].name[0] != 'o')
            expect_fail(f.ctx, extras[i].want, extras[i].want, extras[i].name, NULL);
        ck_assert_ptr_null(m);
        hf_free(&h);
    }

    /* NaN (refused by the reader) and infinities (refused by the loader), in f32 and bf16. */
    for (int inf = 0; inf < 2; inf++)
        for (int bf = 0; bf < 2; bf++) {
            hf_build(f.ctx, ref, bf ? SL_BF16 : SL_F32, 0, &h);
            sl_named_tensor *k = hf_find(&h, "model.layers.3.self_attn.k_proj.weight");
            if (bf)
                ((uint16_t *)k->t.data)[100] = inf ? 0x7f80 : 0x7fc0;
            else
                ((float *)k->t.data)[100] = inf ? INFINITY : NAN;
            expect_fail(f.ctx, hf_load(&f, &h, cfg, &m), SL_EFORMAT, st, "'model.layers.3.self_attn.k_proj.weight'",
                        "100", NULL);
            hf_free(&h);
        }

    /* Sizes in config.json that the tensors do not have. */
    char small[2048];
    hf_config_text(small, sizeof small, 1, NULL, "\"hidden_size\": 32");
    hf_build(f.ctx, ref, SL_F32, 0, &h);
    expect_fail(f.ctx, hf_load(&f, &h, small, &m), SL_EFORMAT, st, "'model.embed_tokens.weight'",
                "expected [512, 32], found [512, 64]", NULL);
    hf_config_text(small, sizeof small, 1, NULL, "\"num_hidden_layers\": 6");
    expect_fail(f.ctx, hf_load(&f, &h, small, &m), SL_EFORMAT, st, "'model.layers.5.", "no such tensor", NULL);
    hf_config_text(small, sizeof small, 1, NULL, "\"num_hidden_layers\": 4");
    expect_fail(f.ctx, hf_load(&f, &h, small, &m), SL_EFORMAT, st, "'model.layers.4.", "expected layers 0..3", NULL);
    hf_config_text(small, sizeof small, 1, NULL, "\"num_key_value_heads\": 8");
    expect_fail(f.ctx, hf_load(&f, &h, small, &m), SL_EFORMAT, st, "k_proj.weight'", "expected [64, 64], found [32, 64]",
                NULL);
    hf_config_text(small, sizeof small, 1, NULL, "\"head_dim\": 16");
    expect_fail(f.ctx, hf_load(&f, &h, small, &m), SL_EFORMAT, st, "q_proj.weight'", "expected [128, 64]", NULL);
    hf_free(&h);

    /* Missing files and a directory where a file should be. */
    char p[512];
    unlink(st);
    expect_fail(f.ctx, sl_model_load_hf(f.ctx, f.dir, &m), SL_EIO, st, NULL);
    fx_path(&f, "config.json", p, sizeof p);
    unlink(p);
    expect_fail(f.ctx, sl_model_load_hf(f.ctx, f.dir, &m), SL_EIO, p, NULL);
    ck_assert_int_eq(mkdir(p, 0700), 0);
    expect_fail(f.ctx, sl_model_load_hf(f.ctx, f.dir, &m), SL_EIO, p, NULL);
    rmdir(p);
    expect_fail(f.ctx, sl_model_load_hf(f.ctx, MODEL, &m), SL_EIO, "config.json", NULL);
    ck_assert_ptr_null(m);

    sl_model_free(f.ctx, ref);
    fx_close(&f);
}
END_TEST

START_TEST(test_hf_bad_config)
{
    fx f;
    fx_open(&f);
    sl_model *ref = load_ref(f.ctx), *m = (sl_model *)&f;
    char cfg[4096], good[2048], p[512];
    fx_path(&f, "config.json", p, sizeof p);
    hf_set h;
    hf_build(f.ctx, ref, SL_F32, 0, &h);
    hf_config_text(good, sizeof good, 1, NULL, NULL);
    hf_write(&f, &h, good);
    hf_free(&h);
    ck_assert_int_eq(sl_model_load_hf(f.ctx, f.dir, &m), SL_OK);
    sl_model_free(f.ctx, m);

    /* Every cut of a good file is broken JSON (but for the final newline). */
    size_t len = strlen(good);
    for (size_t cut = 0; cut + 1 < len; cut++) {
        put_file(p, good, cut);
        sl_status s = sl_model_load_hf(f.ctx, f.dir, &m);
        CHECK(s == SL_EFORMAT && strstr(sl_ctx_error(f.ctx), p), "cut %zu: %s: %s", cut, sl_status_name(s),
              sl_ctx_error(f.ctx));
    }

    /* Values of the wrong kind or range for a key we need. */
    const struct {
        const char *extra;
        sl_status want;
        const char *says;
    } wrong[] = {
        {"\"hidden_size\": \"64\"", SL_EFORMAT, "key 'hidden_size': expected an integer or null, found \"64\""},
        {"\"hidden_size\": 64.5", SL_EFORMAT, "key 'hidden_size': expected an integer"},
        {"\"hidden_size\": true", SL_EFORMAT, "key 'hidden_size': expected an integer"},
        {"\"hidden_size\": [64]", SL_EFORMAT, "key 'hidden_size'"},
        {"\"hidden_size\": null", SL_EFORMAT, "expected key 'hidden_size'"},
        {"\"hidden_size\": -64", SL_EFORMAT, "model config"},
        {"\"hidden_size\": 1e400", SL_EFORMAT, "within double range"},
        {"\"hidden_size\": 1e300", SL_EFORMAT, "key 'hidden_size': expected an integer"},
        {"\"vocab_size\": 0", SL_EFORMAT, "model config"},
        {"\"num_attention_heads\": 0", SL_EFORMAT, "model config"},
        {"\"num_key_value_heads\": 3", SL_EFORMAT, "model config"},
        {"\"head_dim\": 7", SL_EFORMAT, "model config"},
        {"\"rms_norm_eps\": \"1e-5\"", SL_EFORMAT, "key 'rms_norm_eps': expected a number"},
        {"\"rms_norm_eps\": 0", SL_EFORMAT, "model config"},
        {"\"rope_theta\": -1", SL_EFORMAT, "model config"},
        {"\"sliding_window\": 0", SL_EFORMAT, "sliding_window"},
        {"\"tie_word_embeddings\": \"yes\"", SL_EFORMAT, "key 'tie_word_embeddings': expected true, false or null"},
        {"\"tie_word_embeddings\": 1", SL_EFORMAT, "tie_word_embeddings"},
        {"\"rope_scaling\": {\"type\": \"linear\", \"factor\": 2.0}", SL_EUNSUPPORTED, "rope_scaling"},
        {"\"rope_scaling\": false", SL_EUNSUPPORTED, "rope_scaling"},
        {"\"model_type\": \"gpt2\"", SL_EUNSUPPORTED, "found \"gpt2\""},
        {"\"model_type\": \"llama mistral\"", SL_EUNSUPPORTED, "model_type"},
        {"\"model_type\": \"llama\\u0000\"", SL_EFORMAT, "expected no \\u0000"},
        {"\"x\": 1e99999", SL_EFORMAT, "key 'x': expected a number within double range"},
        {"\"model_type\": \"a-very-long-model-type-name-beyond-the-buffer\"", SL_EUNSUPPORTED, "..."},
        {"\"model_type\": 3", SL_EFORMAT, "key 'model_type': expected a string or null"},
        {"\"hidden_act\": \"gelu\"", SL_EUNSUPPORTED, "hidden_act"},
    };
    for (size_t i = 0; i < sizeof wrong / sizeof wrong[0]; i++) {
        hf_config_text(cfg, sizeof cfg, 1, NULL, wrong[i].extra);
        put_file(p, cfg, strlen(cfg));
        expect_fail(f.ctx, sl_model_load_hf(f.ctx, f.dir, &m), wrong[i].want, p, wrong[i].says, NULL);
        ck_assert_ptr_null(m);
    }
    const char *required[] = {"hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                              "vocab_size"};
    for (size_t i = 0; i < 5; i++) {
        hf_config_text(cfg, sizeof cfg, 1, required[i], NULL);
        put_file(p, cfg, strlen(cfg));
        char says[64];
        snprintf(says, sizeof says, "expected key '%s'", required[i]);
        expect_fail(f.ctx, sl_model_load_hf(f.ctx, f.dir, &m), SL_EFORMAT, p, says, NULL);
    }

    /* Broken JSON after a complete set of keys: a syntax error, at a byte. */
    static const char *const junk[] = {
        "", "}", "\"x\"", "\"x\":", "\"x\": }",
        "\"x\": 1,", "\"x\": .5", "\"x\": -", "\"x\": 1e", "\"x\": 1e+",
        "\"x\": +1", "\"x\": tru", "\"x\": nul", "\"x\": NaN", "\"x\": Infinity",
        "\"x\": \"\\x\"", "\"x\": \"\\u12\"", "\"x\": \"\\u12g4\"", "\"x\": \"\x01\"", "\"x\": [1, 2}",
        "\"x\": {\"a\": 1]", "\"x\": {\"a\" 1}", "\"x\": {1: 2}", "'x': 1", "\"x\": [1 2]",
        "\"x\": \"unterminated"};
    for (size_t i = 0; i < sizeof junk / sizeof junk[0]; i++) {
        hf_config_text(cfg, sizeof cfg, 1, NULL, junk[i]);
        put_file(p, cfg, strlen(cfg));
        expect_fail(f.ctx, sl_model_load_hf(f.ctx, f.dir, &m), SL_EFORMAT, p, "invalid JSON at byte ", NULL);
    }
    /* What cJSON accepts and the old reader did not: leading zeros, a
     * trailing '.', numbers of more than 63 characters, raw tab, LF and CR
     * inside strings. */
    static const char *const lenient[] = {
        "\"x\": 01", "\"x\": 1.", "\"x\": 123456789012345678901234567890123456789012345678901234567890123456789",
        "\"x\": \"tab\there\"", "\"x\": \"a\nb\""};
    for (size_t i = 0; i < sizeof lenient / sizeof lenient[0]; i++) {
        hf_config_text(cfg, sizeof cfg, 1, NULL, lenient[i]);
        put_file(p, cfg, strlen(cfg));
        ck_assert_msg(sl_model_load_hf(f.ctx, f.dir, &m) == SL_OK, "%s: %s", lenient[i], sl_ctx_error(f.ctx));
        sl_model_free(f.ctx, m);
    }
    static const char *const whole[] = {"", " \n", "[]", "null", "{", "{}}", "{} x", "{}{}", "\xef\xbb\xbf{}",
                                        "{\"a\":1}\0"};
    for (size_t i = 0; i < sizeof whole / sizeof whole[0]; i++) {
        put_file(p, whole[i], strlen(whole[i]) + (i == 9));
        expect_fail(f.ctx, sl_model_load_hf(f.ctx, f.dir, &m), SL_EFORMAT, p, NULL);
    }
    /* Deep nesting is refused, not followed; the file size is capped. */
    size_t deep = 100000;
    char *big = malloc(deep + 2 * (1 << 20));
    ck_assert_ptr_nonnull(big);
    memcpy(big, "{\"x\": ", 6);
    memset(big + 6, '[', deep);
    put_file(p, big, deep + 6);
    expect_fail(f.ctx, sl_model_load_hf(f.ctx, f.dir, &m), SL_EFORMAT, p, "invalid JSON at byte", NULL);
    /* Within cJSON's limit (1000 levels), ours: 64 levels, the top object one of them. */
    for (int levels = 63; levels <= 64; levels++) {
        char nest[160] = "\"x\": ";
        memset(nest + 5, '[', (size_t)levels);
        memset(nest + 5 + levels, ']', (size_t)levels);
        nest[5 + 2 * levels] = '\0';
        hf_config_text(cfg, sizeof cfg, 1, NULL, nest);
        put_file(p, cfg, strlen(cfg));
        if (levels == 63) {
            ck_assert_msg(sl_model_load_hf(f.ctx, f.dir, &m) == SL_OK, "%s", sl_ctx_error(f.ctx));
            sl_model_free(f.ctx, m);
        } else {
            expect_fail(f.ctx, sl_model_load_hf(f.ctx, f.dir, &m), SL_EFORMAT, p, "key 'x': expected nesting at most 64",
                        NULL);
        }
    }
    size_t nl = strlen(good);
    memcpy(big, good, nl);
    memset(big + nl, ' ', (1 << 20) + 1);
    put_file(p, big, nl + (1 << 20) + 1);
    expect_fail(f.ctx, sl_model_load_hf(f.ctx, f.dir, &m), SL_EFORMAT, p, "at most", NULL);
    memset(big + nl, ' ', 1000); /* white space after the object is fine */
    put_file(p, big, nl + 1000);
    ck_assert_int_eq(sl_model_load_hf(f.ctx, f.dir, &m), SL_OK);
    sl_model_free(f.ctx, m);
    free(big);

    /* Random damage to a good file: any verdict but a crash or a leak. */
    sl_rng r;
    sl_rng_seed(&r, 260);
    static const char alphabet[] = "{}[]\",:0123456789.eE+-tfnrul\\ \n";
    int ok = 0;
    size_t live = sl_ctx_live_allocs(f.ctx); /* the reference model's */
    for (int it = 0; it < 1500; it++) {
        memcpy(cfg, good, len);
        for (int k = 1 + (int)(sl_rng_next(&r) % 3); k > 0; k--) {
            size_t at = (size_t)(sl_rng_next(&r) % len);
            cfg[at] = sl_rng_next(&r) % 4 ? alphabet[sl_rng_next(&r) % (sizeof alphabet - 1)]
                                          : (char)(sl_rng_next(&r) % 256);
        }
        put_file(p, cfg, len);
        sl_status s = sl_model_load_hf(f.ctx, f.dir, &m);
        CHECK(s == SL_OK || s == SL_EFORMAT || s == SL_EUNSUPPORTED, "%s: %s", sl_status_name(s),
              sl_ctx_error(f.ctx));
        CHECK(s == SL_OK || (m == NULL && strchr(sl_ctx_error(f.ctx), '\n') == NULL), "bad failure: %s",
              sl_ctx_error(f.ctx));
        if (s == SL_OK)
            sl_model_free(f.ctx, m), ok++;
        CHECK(sl_ctx_live_allocs(f.ctx) == live, "leak after mutation %d (%s: %s)", it, sl_status_name(s),
              sl_ctx_error(f.ctx));
    }
    fprintf(stderr, "test_model: config.json fuzz: %d of 1500 damaged files still loaded\n", ok);

    sl_model_free(f.ctx, ref);
    fx_close(&f);
}
END_TEST

/* ---- e. failure of every allocation ---------------------------------------------- */

enum { FAULT_LLAMA2C, FAULT_HF_F32, FAULT_HF_BF16, FAULT_FORWARD };

static void fault_loop(int what)
{
    fx f;
    fx_open(&f);
    sl_model *ref = load_ref(f.ctx);
    int32_t ids[N_IDS];
    greedy_ids(f.ctx, ref, ids);
    if (what == FAULT_HF_F32 || what == FAULT_HF_BF16) {
        hf_set h;
        char cfg[2048];
        hf_build(f.ctx, ref, what == FAULT_HF_BF16 ? SL_BF16 : SL_F32, 0, &h);
        hf_config_text(cfg, sizeof cfg, 1, NULL, NULL);
        hf_write(&f, &h, cfg);
        hf_free(&h);
    }
    long failures = 0;
    for (long k = 1;; k++) {
        ck_assert_int_lt(k, 100000);
        tu_alloc a;
        sl_ctx *ctx = tu_ctx(&a);
        ck_assert_ptr_nonnull(ctx);
        a.fail_at = a.calls + k;
        sl_model *m = (sl_model *)&f;
        sl_model_state *st = NULL;
        sl_tensor lg = {0};
        sl_status s;
        int64_t n_before = 0;
        if (what == FAULT_LLAMA2C) {
            s = sl_model_load_llama2c(ctx, MODEL, &m);
        } else if (what != FAULT_FORWARD) {
            s = sl_model_load_hf(ctx, f.dir, &m);
        } else {
            /* A prefill then one decode step, both through this context. */
            m = NULL;
            s = sl_model_state_new(ctx, ref, N_IDS, &st);
            if (s == SL_OK)
                s = sl_model_forward(ctx, ref, st, ids, 25, NULL, NULL, &lg);
            if (s == SL_OK) {
                sl_tensor_release(&lg);
                n_before = 25;
                s = sl_model_forward(ctx, ref, st, ids + 25, 1, NULL, NULL, &lg);
            }
        }
        if (s == SL_OK) {
            sl_model_free(ctx, m);
            sl_tensor_release(&lg);
            sl_model_state_free(ctx, st);
            tu_ctx_done(ctx, &a);
            break;
        }
        failures++;
        CHECK(s == SL_ENOMEM, "allocation %ld: %s: %s", k, sl_status_name(s), sl_ctx_error(ctx));
        CHECK(m == NULL, "allocation %ld: model left behind", k);
        CHECK(lg.buf == NULL, "allocation %ld: logits left behind", k);
        CHECK(st == NULL || st->n == n_before, "allocation %ld: state advanced on failure", k);
        sl_tensor_release(&lg);
        sl_model_state_free(ctx, st);
        tu_ctx_done(ctx, &a);
    }
    fprintf(stderr, "test_model: fault injection %d: %ld failing allocations, each cleaned up\n", what, failures);
    ck_assert_int_gt(failures, 2);
    sl_model_free(f.ctx, ref);
    fx_close(&f);
}

START_TEST(test_fault_llama2c) { fault_loop(FAULT_LLAMA2C); }
END_TEST
START_TEST(test_fault_hf_f32) { fault_loop(FAULT_HF_F32); }
END_TEST
START_TEST(test_fault_hf_bf16) { fault_loop(FAULT_HF_BF16); }
END_TEST
START_TEST(test_fault_forward) { fault_loop(FAULT_FORWARD); }
END_TEST

static Suite *model_suite(void)
{
    Suite *s = suite_create("model");
    TCase *tc = tcase_create("llama2c");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_reference_points);
    tcase_add_test(tc, test_prefill_vs_decode);
    tcase_add_test(tc, test_llama2c_bad_files);
    suite_add_tcase(s, tc);

    tc = tcase_create("hf");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_hf_matches_llama2c);
    tcase_add_test(tc, test_hf_bad_tensors);
    tcase_add_test(tc, test_hf_bad_config);
    tcase_add_test(tc, test_hf_sharded);
    tcase_add_test(tc, test_hf_llama3_rope);
    suite_add_tcase(s, tc);

    tc = tcase_create("robustness");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_fault_llama2c);
    tcase_add_test(tc, test_fault_hf_f32);
    tcase_add_test(tc, test_fault_hf_bf16);
    tcase_add_test(tc, test_fault_forward);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return tu_run(model_suite()); }
