/* model/llama2c.c — the llama2.c checkpoint loader ("legacy" version-0
 * export: 7 × int32 header, then f32 weights in a fixed order; a negative
 * vocab_size means a separate classifier follows the RoPE tables). */
#include "model.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

typedef struct reader {
    sl_ctx *ctx;
    FILE *f;
    const char *path;
} reader;

/* Reads `count` floats as a tensor of the given shape, checking for NaN. */
static sl_status read_tensor(reader *r, const char *name, int ndim, const int64_t *shape, sl_tensor *out)
{
    sl_status s = sl_tensor_new(r->ctx, SL_F32, ndim, shape, out);
    if (s)
        return s;
    size_t count = (size_t)sl_tensor_numel(out);
    if (fread(out->data, sizeof(float), count, r->f) != count) {
        sl_tensor_release(out);
        return sl_ctx_fail(r->ctx, SL_EFORMAT, "%s: tensor '%s': file ends inside it (truncated)", r->path, name);
    }
    const float *x = out->data;
    for (size_t i = 0; i < count; i++)
        if (x[i] != x[i] || x[i] - x[i] != 0.f) {
            sl_tensor_release(out);
            return sl_ctx_fail(r->ctx, SL_EFORMAT, "%s: tensor '%s': element %zu is not finite", r->path, name, i);
        }
    return SL_OK;
}

/* Layer l of a stacked [L, ...] tensor as a view of its own. */
static sl_tensor layer_view(const sl_tensor *all, int64_t l)
{
    sl_tensor v = sl_tensor_retain(all);
    int64_t per = all->stride[0];
    v.data = (float *)all->data + l * per;
    v.ndim = all->ndim - 1;
    for (int i = 0; i < v.ndim; i++) {
        v.shape[i] = all->shape[i + 1];
        v.stride[i] = all->stride[i + 1];
    }
    return v;
}

static sl_status read_stacked(reader *r, sl_model *m, const char *name, int64_t rows, int64_t cols, size_t field)
{
    int64_t L = m->cfg.n_layers;
    int64_t shape[3] = {L, rows, cols};
    sl_tensor all;
    sl_status s = read_tensor(r, name, cols ? 3 : 2, shape, &all);
    if (s)
        return s;
    for (int64_t l = 0; l < L; l++)
        *(sl_tensor *)((char *)&m->layers[l] + field) = layer_view(&all, l);
    sl_tensor_release(&all);
    return SL_OK;
}

sl_status sl_model_load_llama2c(sl_ctx *ctx, const char *path, sl_model **out)
{
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f)
        return sl_ctx_fail(ctx, SL_EIO, "%s: cannot open: %s", path, strerror(errno));
    int32_t h[7];
    if (fread(h, sizeof h, 1, f) != 1) {
        fclose(f);
        return sl_ctx_fail(ctx, SL_EFORMAT, "%s: expected a 28-byte llama2.c header, the file is shorter", path);
    }
    int shared = h[5] > 0;
    sl_model_config c = {.dim = h[0], .hidden_dim = h[1], .n_layers = h[2], .n_heads = h[3], .n_kv_heads = h[4],
                         .vocab_size = shared ? h[5] : -(int64_t)h[5], .seq_len = h[6], .rope_theta = 10000.0,
                         .norm_eps = 1e-5, .rope_style = SL_ROPE_PAIRS};
    c.head_dim = c.n_heads > 0 ? c.dim / c.n_heads : 0;
    sl_status s = sl__model_check_config(ctx, path, &c);
    if (s == SL_OK && c.head_dim * c.n_heads != c.dim)
        s = sl_ctx_fail(ctx, SL_EFORMAT, "%s: dim %lld is not a multiple of n_heads %lld", path, (long long)c.dim,
                        (long long)c.n_heads);
    if (s) {
        fclose(f);
        return s;
    }
    /* The whole layout is known from the header: check the size first. */
    int64_t d = c.dim, L = c.n_layers, qd = c.n_heads * c.head_dim, kd = c.n_kv_heads * c.head_dim;
    int64_t floats = c.vocab_size * d + L * d + L * qd * d + 2 * L * kd * d + L * d * qd + L * d +
                     3 * L * c.hidden_dim * d + d + c.seq_len * c.head_dim + (shared ? 0 : c.vocab_size * d);
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, (long)sizeof h, SEEK_SET);
    if (size != (long)sizeof h + floats * (long)sizeof(float)) {
        fclose(f);
        return sl_ctx_fail(ctx, SL_EFORMAT,
                           "%s: the header describes %lld bytes of weights (dim %lld, %lld layers, vocab %lld), the "
                           "file holds %ld",
                           path, (long long)(floats * 4), (long long)d, (long long)L, (long long)c.vocab_size,
                           size - (long)sizeof h);
    }
    sl_model *m;
    if ((s = sl__model_new(ctx, &c, &m))) {
        fclose(f);
        return s;
    }
    reader r = {ctx, f, path};
    int64_t emb[2] = {c.vocab_size, d}, fin[1] = {d}, rope_tab[2] = {c.seq_len, c.head_dim};
    sl_tensor rope_tables;
    if ((s = read_tensor(&r, "token_embedding", 2, emb, &m->tok_emb)) ||
        (s = read_stacked(&r, m, "rms_att_weight", d, 0, offsetof(sl_model_layer, rms_att))) ||
        (s = read_stacked(&r, m, "wq", qd, d, offsetof(sl_model_layer, wq))) ||
        (s = read_stacked(&r, m, "wk", kd, d, offsetof(sl_model_layer, wk))) ||
        (s = read_stacked(&r, m, "wv", kd, d, offsetof(sl_model_layer, wv))) ||
        (s = read_stacked(&r, m, "wo", d, qd, offsetof(sl_model_layer, wo))) ||
        (s = read_stacked(&r, m, "rms_ffn_weight", d, 0, offsetof(sl_model_layer, rms_ffn))) ||
        (s = read_stacked(&r, m, "w1", c.hidden_dim, d, offsetof(sl_model_layer, w1))) ||
        (s = read_stacked(&r, m, "w2", d, c.hidden_dim, offsetof(sl_model_layer, w2))) ||
        (s = read_stacked(&r, m, "w3", c.hidden_dim, d, offsetof(sl_model_layer, w3))) ||
        (s = read_tensor(&r, "rms_final_weight", 1, fin, &m->rms_final)) ||
        /* freq_cis_real and freq_cis_imag: RoPE is computed, the stored tables are skipped */
        (s = read_tensor(&r, "freq_cis", 2, rope_tab, &rope_tables))) {
        fclose(f);
        sl_model_free(ctx, m);
        return s;
    }
    sl_tensor_release(&rope_tables);
    if (shared)
        m->wcls = sl_tensor_retain(&m->tok_emb);
    else if ((s = read_tensor(&r, "wcls", 2, emb, &m->wcls))) {
        fclose(f);
        sl_model_free(ctx, m);
        return s;
    }
    fclose(f);
    *out = m;
    return SL_OK;
}
