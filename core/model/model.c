/* model/model.c — the LLaMA-architecture forward pass (RMSNorm, RoPE, GQA
 * attention through a hook, SwiGLU FFN, logits), the KV cache, and freeing. */
#include "model.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

void sl_model_free(sl_ctx *ctx, sl_model *m)
{
    if (!m)
        return;
    if (m->layers) {
        for (int64_t l = 0; l < m->cfg.n_layers; l++) {
            sl_model_layer *y = &m->layers[l];
            sl_tensor *ts[] = {&y->rms_att, &y->wq, &y->wk, &y->wv, &y->wo, &y->rms_ffn, &y->w1, &y->w2, &y->w3};
            for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++)
                sl_tensor_release(ts[i]);
        }
        sl_ctx_dealloc(ctx, m->layers, sizeof *m->layers * (size_t)m->cfg.n_layers);
    }
    sl_tensor_release(&m->tok_emb);
    sl_tensor_release(&m->rms_final);
    sl_tensor_release(&m->wcls);
    sl_ctx_dealloc(ctx, m, sizeof *m);
}

sl_status sl__model_new(sl_ctx *ctx, const sl_model_config *cfg, sl_model **out)
{
    *out = NULL;
    sl_model *m = sl_ctx_alloc(ctx, sizeof *m);
    if (!m)
        return SL_ENOMEM;
    memset(m, 0, sizeof *m);
    m->cfg = *cfg;
    m->layers = sl_ctx_alloc(ctx, sizeof *m->layers * (size_t)cfg->n_layers);
    if (!m->layers) {
        sl_ctx_dealloc(ctx, m, sizeof *m);
        return SL_ENOMEM;
    }
    memset(m->layers, 0, sizeof *m->layers * (size_t)cfg->n_layers);
    *out = m;
    return SL_OK;
}

sl_status sl__model_check_config(sl_ctx *ctx, const char *path, const sl_model_config *c)
{
    if (c->dim < 1 || c->hidden_dim < 1 || c->n_layers < 1 || c->n_heads < 1 || c->n_kv_heads < 1 ||
        c->vocab_size < 1 || c->seq_len < 1 || c->head_dim < 2 || c->head_dim % 2 || c->n_heads % c->n_kv_heads ||
        c->dim > (1 << 20) || c->hidden_dim > (1 << 22) || c->n_layers > 4096 || c->vocab_size > (1 << 24) ||
        c->n_heads > 4096 || c->head_dim > 4096 || c->seq_len > (1 << 26) || !(c->norm_eps > 0) || !(c->rope_theta > 0))
        return sl_ctx_fail(ctx, SL_EFORMAT,
                           "%s: model config: expected positive sizes with n_heads %% n_kv_heads == 0 and an even "
                           "head_dim, found dim %lld, hidden %lld, layers %lld, heads %lld/%lld, head_dim %lld, "
                           "vocab %lld, seq_len %lld",
                           path, (long long)c->dim, (long long)c->hidden_dim, (long long)c->n_layers,
                           (long long)c->n_heads, (long long)c->n_kv_heads, (long long)c->head_dim,
                           (long long)c->vocab_size, (long long)c->seq_len);
    if (c->rope_factor != 0 &&
        !(c->rope_factor > 0 && c->rope_low_freq_factor > 0 && c->rope_high_freq_factor > c->rope_low_freq_factor &&
          c->rope_orig_max_pos > 0))
        return sl_ctx_fail(ctx, SL_EFORMAT,
                           "%s: rope_scaling (llama3): expected factor > 0, 0 < low_freq_factor < high_freq_factor "
                           "and original_max_position_embeddings > 0, found factor %g, low %g, high %g, original %lld",
                           path, c->rope_factor, c->rope_low_freq_factor, c->rope_high_freq_factor,
                           (long long)c->rope_orig_max_pos);
    return SL_OK;
}

sl_status sl_model_state_new(sl_ctx *ctx, const sl_model *m, int64_t capacity, sl_model_state **out)
{
    *out = NULL;
    if (capacity < 1)
        return sl_ctx_fail(ctx, SL_EARG, "sl_model_state_new: capacity %lld, expected >= 1", (long long)capacity);
    sl_model_state *st = sl_ctx_alloc(ctx, sizeof *st);
    if (!st)
        return SL_ENOMEM;
    int64_t L = m->cfg.n_layers;
    *st = (sl_model_state){0, capacity, L, NULL, NULL};
    st->k = sl_ctx_alloc(ctx, sizeof(sl_tensor) * (size_t)L);
    st->v = sl_ctx_alloc(ctx, sizeof(sl_tensor) * (size_t)L);
    if (!st->k || !st->v) {
        sl_ctx_dealloc(ctx, st->k, sizeof(sl_tensor) * (size_t)L);
        sl_ctx_dealloc(ctx, st->v, sizeof(sl_tensor) * (size_t)L);
        sl_ctx_dealloc(ctx, st, sizeof *st);
        return SL_ENOMEM;
    }
    memset(st->k, 0, sizeof(sl_tensor) * (size_t)L);
    memset(st->v, 0, sizeof(sl_tensor) * (size_t)L);
    int64_t shape[3] = {m->cfg.n_kv_heads, capacity, m->cfg.head_dim};
    for (int64_t l = 0; l < L; l++) {
        sl_status s;
        if ((s = sl_tensor_zeros(ctx, SL_F32, 3, shape, &st->k[l])) ||
            (s = sl_tensor_zeros(ctx, SL_F32, 3, shape, &st->v[l]))) {
            sl_model_state_free(ctx, st);
            return s;
        }
    }
    *out = st;
    return SL_OK;
}

void sl_model_state_free(sl_ctx *ctx, sl_model_state *st)
{
    if (!st)
        return;
    for (int64_t l = 0; l < st->n_layers; l++) {
        sl_tensor_release(&st->k[l]);
        sl_tensor_release(&st->v[l]);
    }
    sl_ctx_dealloc(ctx, st->k, sizeof(sl_tensor) * (size_t)st->n_layers);
    sl_ctx_dealloc(ctx, st->v, sizeof(sl_tensor) * (size_t)st->n_layers);
    sl_ctx_dealloc(ctx, st, sizeof *st);
}

/* y[i] = x[i] / rms(x[i]) * w for each of n rows of width d. */
static void rmsnorm(float *y, const float *x, const float *w, int64_t n, int64_t d, double eps)
{
    for (int64_t i = 0; i < n; i++) {
        double ss = 0;
        for (int64_t c = 0; c < d; c++)
            ss += (double)x[i * d + c] * x[i * d + c];
        float inv = (float)(1.0 / sqrt(ss / (double)d + eps));
        for (int64_t c = 0; c < d; c++)
            y[i * d + c] = x[i * d + c] * inv * w[c];
    }
}

/* y [n, out] = x [n, in] · W^T, W [out, in] row-major. */
static void matmul(float *y, const float *x, const sl_tensor *w, int64_t n)
{
    int64_t out = w->shape[0], in = w->shape[1];
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, (int)out, (int)in, 1.f, x, (int)in, w->data, (int)in,
                0.f, y, (int)out);
}

/* y = x . w^T of weight `name` of layer l: the linear hook's executor when it
 * takes the product (issue 17, session 3), else the dense sgemm. */
static sl_status linear(sl_ctx *ctx, const sl_model *m, int64_t l, const char *name, float *y, const float *x,
                        const sl_tensor *w, int64_t n)
{
    int done = 0;
    if (m->hooks && m->hooks->linear) {
        sl_status s = m->hooks->linear(m->hooks->linear_ud, ctx, (int)l, name, x, n, w, y, &done);
        if (s)
            return s;
    }
    if (!done)
        matmul(y, x, w, n);
    return SL_OK;
}

/* The hook site `name` of layer l (issue 17): none without hooks. */
static sl_status hook_site(sl_ctx *ctx, const sl_model *m, int64_t l, const char *name, float *x, int64_t n, int64_t w)
{
    return m->hooks && m->hooks->site ? m->hooks->site(m->hooks->ud, ctx, (int)l, name, x, n, w) : SL_OK;
}

/* Rotates the n_heads heads of each of n rows (row i at position pos0 + i). */
/* RoPE frequency j of hd/2 (Llama 3 scaling when c->rope_factor > 0; see sl_model_config). */
static double rope_freq(const sl_model_config *c, int64_t j, int64_t hd)
{
    double f = pow(c->rope_theta, -2.0 * (double)j / (double)hd);
    if (!(c->rope_factor > 0))
        return f;
    double w = 2.0 * M_PI / f, orig = (double)c->rope_orig_max_pos;
    if (w < orig / c->rope_high_freq_factor)
        return f;
    if (w > orig / c->rope_low_freq_factor)
        return f / c->rope_factor;
    double s = (orig / w - c->rope_low_freq_factor) / (c->rope_high_freq_factor - c->rope_low_freq_factor);
    return (1.0 - s) * f / c->rope_factor + s * f;
}

static void rope(float *x, int64_t n, int64_t n_heads, int64_t hd, int64_t pos0, const sl_model_config *cfg,
                 sl_rope_style style)
{
    int64_t half = hd / 2;
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < half; j++) {
            double ang = (double)(pos0 + i) * rope_freq(cfg, j, hd);
            float c = (float)cos(ang), s = (float)sin(ang);
            for (int64_t h = 0; h < n_heads; h++) {
                float *v = x + (i * n_heads + h) * hd;
                int64_t a = style == SL_ROPE_PAIRS ? 2 * j : j, b = style == SL_ROPE_PAIRS ? 2 * j + 1 : j + half;
                float x0 = v[a], x1 = v[b];
                v[a] = x0 * c - x1 * s;
                v[b] = x0 * s + x1 * c;
            }
        }
}

static sl_status dense_hook(void *ud, sl_ctx *ctx, int layer, const sl_tensor *q, const sl_tensor *k,
                            const sl_tensor *v, sl_tensor *o)
{
    (void)ud;
    (void)layer;
    sl_attn_params p = {.causal = 1, .scale = 0};
    sl_tensor lse = {0};
    sl_status s = sl_attn_dense(ctx, SL_BACKEND_CPU, &p, q, k, v, o, &lse);
    sl_tensor_release(&lse);
    return s;
}

/* Scratch of one forward call, one allocation carved into arrays. */
typedef struct fwd_buf {
    float *x, *xb, *q, *k, *v, *att, *h1, *h3;
    size_t bytes;
    void *base;
} fwd_buf;

static sl_status fwd_alloc(sl_ctx *ctx, const sl_model_config *c, int64_t n, fwd_buf *b)
{
    int64_t qd = c->n_heads * c->head_dim, kd = c->n_kv_heads * c->head_dim;
    size_t sizes[8] = {(size_t)(n * c->dim), (size_t)(n * c->dim), (size_t)(n * qd), (size_t)(n * kd),
                       (size_t)(n * kd), (size_t)(n * qd), (size_t)(n * c->hidden_dim), (size_t)(n * c->hidden_dim)};
    size_t total = 0;
    for (int i = 0; i < 8; i++)
        total += sizes[i];
    b->bytes = total * sizeof(float);
    b->base = sl_ctx_alloc(ctx, b->bytes);
    if (!b->base)
        return SL_ENOMEM;
    float **slots[8] = {&b->x, &b->xb, &b->q, &b->k, &b->v, &b->att, &b->h1, &b->h3};
    float *p = b->base;
    for (int i = 0; i < 8; i++) {
        *slots[i] = p;
        p += sizes[i];
    }
    return SL_OK;
}

/* Moves [n, H, hd] rows into a head-major tensor [H, n, hd] and back. */
static void to_heads(float *dst, const float *src, int64_t n, int64_t H, int64_t hd)
{
    for (int64_t i = 0; i < n; i++)
        for (int64_t h = 0; h < H; h++)
            memcpy(dst + (h * n + i) * hd, src + (i * H + h) * hd, (size_t)hd * sizeof(float));
}

static void from_heads(float *dst, const float *src, int64_t n, int64_t H, int64_t hd)
{
    for (int64_t i = 0; i < n; i++)
        for (int64_t h = 0; h < H; h++)
            memcpy(dst + (i * H + h) * hd, src + (h * n + i) * hd, (size_t)hd * sizeof(float));
}

/* One layer's attention: RoPE, cache append, the hook, back to rows in b->att. */
static sl_status attention(sl_ctx *ctx, const sl_model *m, sl_model_state *st, int64_t l, int64_t n, fwd_buf *b,
                           sl_model_attn_fn attn, void *ud)
{
    const sl_model_config *c = &m->cfg;
    int64_t hd = c->head_dim, Hq = c->n_heads, Hkv = c->n_kv_heads, pos0 = st->n;
    rope(b->q, n, Hq, hd, pos0, c, c->rope_style);
    rope(b->k, n, Hkv, hd, pos0, c, c->rope_style);
    float *kc = st->k[l].data, *vc = st->v[l].data;
    for (int64_t i = 0; i < n; i++)
        for (int64_t h = 0; h < Hkv; h++) {
            memcpy(kc + (h * st->capacity + pos0 + i) * hd, b->k + (i * Hkv + h) * hd, (size_t)hd * sizeof(float));
            memcpy(vc + (h * st->capacity + pos0 + i) * hd, b->v + (i * Hkv + h) * hd, (size_t)hd * sizeof(float));
        }
    sl_tensor q, kv_k, kv_v, o = {0};
    int64_t qs[3] = {Hq, n, hd};
    sl_status s = sl_tensor_new(ctx, SL_F32, 3, qs, &q);
    if (s)
        return s;
    to_heads(q.data, b->q, n, Hq, hd);
    if ((s = sl_tensor_narrow(ctx, &st->k[l], 1, 0, pos0 + n, &kv_k))) {
        sl_tensor_release(&q);
        return s;
    }
    if ((s = sl_tensor_narrow(ctx, &st->v[l], 1, 0, pos0 + n, &kv_v))) {
        sl_tensor_release(&q);
        sl_tensor_release(&kv_k);
        return s;
    }
    s = (attn ? attn : dense_hook)(ud, ctx, (int)l, &q, &kv_k, &kv_v, &o);
    if (s == SL_OK && (o.dtype != SL_F32 || o.ndim != 3 || o.shape[0] != Hq || o.shape[1] != n ||
                       o.shape[2] != hd || !sl_tensor_is_contiguous(&o)))
        s = sl_ctx_fail(ctx, SL_ESHAPE, "model: layer %lld attention returned an output that is not f32 [%lld, %lld, %lld]",
                        (long long)l, (long long)Hq, (long long)n, (long long)hd);
    if (s == SL_OK)
        from_heads(b->att, o.data, n, Hq, hd);
    sl_tensor_release(&o);
    sl_tensor_release(&q);
    sl_tensor_release(&kv_k);
    sl_tensor_release(&kv_v);
    return s;
}

sl_status sl_model_forward(sl_ctx *ctx, const sl_model *m, sl_model_state *st, const int32_t *tokens, int64_t n,
                           sl_model_attn_fn attn, void *ud, sl_tensor *logits)
{
    memset(logits, 0, sizeof *logits);
    const sl_model_config *c = &m->cfg;
    if (n < 1)
        return sl_ctx_fail(ctx, SL_EARG, "model: expected at least one token, found %lld", (long long)n);
    if (st->n + n > st->capacity || st->n_layers != c->n_layers)
        return sl_ctx_fail(ctx, SL_EARG, "model: %lld cached + %lld new tokens exceed the cache capacity %lld",
                           (long long)st->n, (long long)n, (long long)st->capacity);
    for (int64_t i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= c->vocab_size)
            return sl_ctx_fail(ctx, SL_EARG, "model: token %lld is id %d, expected 0..%lld", (long long)i, tokens[i],
                               (long long)(c->vocab_size - 1));
    fwd_buf b;
    sl_status s = fwd_alloc(ctx, c, n, &b);
    if (s)
        return s;
    int64_t d = c->dim, hid = c->hidden_dim;
    for (int64_t i = 0; i < n; i++)
        memcpy(b.x + i * d, (const float *)m->tok_emb.data + (int64_t)tokens[i] * d, (size_t)d * sizeof(float));
    for (int64_t l = 0; l < c->n_layers && s == SL_OK; l++) {
        const sl_model_layer *y = &m->layers[l];
        rmsnorm(b.xb, b.x, y->rms_att.data, n, d, c->norm_eps);
        if ((s = hook_site(ctx, m, l, "attn_in", b.xb, n, d)))
            break;
        if ((s = linear(ctx, m, l, "wq", b.q, b.xb, &y->wq, n)))
            break;
        if ((s = linear(ctx, m, l, "wk", b.k, b.xb, &y->wk, n)))
            break;
        if ((s = linear(ctx, m, l, "wv", b.v, b.xb, &y->wv, n)))
            break;
        if ((s = attention(ctx, m, st, l, n, &b, attn, ud)))
            break;
        if ((s = hook_site(ctx, m, l, "attn_out", b.att, n, y->wo.shape[1])))
            break;
        if ((s = linear(ctx, m, l, "wo", b.xb, b.att, &y->wo, n)))
            break;
        for (int64_t i = 0; i < n * d; i++)
            b.x[i] += b.xb[i];
        rmsnorm(b.xb, b.x, y->rms_ffn.data, n, d, c->norm_eps);
        if ((s = hook_site(ctx, m, l, "ffn_in", b.xb, n, d)))
            break;
        if ((s = linear(ctx, m, l, "w1", b.h1, b.xb, &y->w1, n)))
            break;
        if ((s = linear(ctx, m, l, "w3", b.h3, b.xb, &y->w3, n)))
            break;
        for (int64_t i = 0; i < n * hid; i++)
            b.h1[i] = b.h1[i] / (1.f + expf(-b.h1[i])) * b.h3[i];
        if ((s = hook_site(ctx, m, l, "ffn_hidden", b.h1, n, hid)))
            break;
        if ((s = linear(ctx, m, l, "w2", b.xb, b.h1, &y->w2, n)))
            break;
        for (int64_t i = 0; i < n * d; i++)
            b.x[i] += b.xb[i];
        if ((s = hook_site(ctx, m, l, "layer_out", b.x, n, d)))
            break;
    }
    if (s == SL_OK) {
        int64_t ls[2] = {n, c->vocab_size};
        if ((s = sl_tensor_new(ctx, SL_F32, 2, ls, logits)) == SL_OK) {
            rmsnorm(b.xb, b.x, m->rms_final.data, n, d, c->norm_eps);
            matmul(logits->data, b.xb, &m->wcls, n);
            st->n += n;
        }
    }
    sl_ctx_dealloc(ctx, b.base, b.bytes);
    return s;
}
