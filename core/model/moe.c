/* model/moe.c — the routed MoE FFN inside the model runner (issue 17,
 * session 4; card moe_split_route, executor steps 1-4): per layer a router
 * [E, dim] and a unit -> expert map; the FFN products of that layer run as
 * one mm.moe call (grouped GEMM over the experts the router picked) instead
 * of the dense w1, w3, w2 products. See sparselab.h. */
#include "model.h"

#include <math.h>
#include <string.h>

typedef struct moe_layer {
    int on;
    sl_tensor router;      /* f32 [E, dim] */
    sl_tensor w1, w3, w2t; /* f32 [hidden, dim], units in expert order */
    sl_tensor offs;        /* i32 [E + 1] */
} moe_layer;

struct sl_model_moe {
    sl_backend_id backend;
    int64_t n_layers, E, dim, hidden;
    int k, softmax;
    double scale;
    moe_layer *layers;
    float *y; /* the layer's FFN output, handed out at its w2 product */
    size_t y_bytes;
    int y_layer;
    int64_t y_n;
    sl_moe_stat stat;
};

sl_status sl_model_moe_new(sl_ctx *ctx, const sl_model *m, sl_backend_id b, int E, int k, int softmax, double scale,
                           sl_model_moe **out)
{
    *out = NULL;
    const sl_model_config *c = &m->cfg;
    if (!sl_backend_available(b))
        return sl_ctx_fail(ctx, SL_EDEVICE, "model moe: backend %s is unavailable: %s", sl_backend_name(b),
                           sl_backend_status(b));
    if (E < 1 || E > SL_MOE_MAX_EXPERTS || E > c->hidden_dim)
        return sl_ctx_fail(ctx, SL_EARG, "model moe: experts must be in [1, %lld], found %d",
                           (long long)(c->hidden_dim < SL_MOE_MAX_EXPERTS ? c->hidden_dim : SL_MOE_MAX_EXPERTS), E);
    if (k < 0 || k > E)
        return sl_ctx_fail(ctx, SL_EARG, "model moe: k must be in [0, experts = %d], found %d", E, k);
    if (!(scale >= 0) || !isfinite(scale))
        return sl_ctx_fail(ctx, SL_EARG, "model moe: scale must be finite and >= 0, found %g", scale);
    sl_model_moe *mo = sl_ctx_alloc(ctx, sizeof *mo);
    if (!mo)
        return SL_ENOMEM;
    memset(mo, 0, sizeof *mo);
    mo->backend = b;
    mo->n_layers = c->n_layers;
    mo->E = E;
    mo->dim = c->dim;
    mo->hidden = c->hidden_dim;
    mo->k = k;
    mo->softmax = softmax;
    mo->scale = scale;
    mo->y_layer = -1;
    size_t bytes = sizeof *mo->layers * (size_t)mo->n_layers;
    if (!(mo->layers = sl_ctx_alloc(ctx, bytes))) {
        sl_ctx_dealloc(ctx, mo, sizeof *mo);
        return SL_ENOMEM;
    }
    memset(mo->layers, 0, bytes);
    *out = mo;
    return SL_OK;
}

static void layer_clear(moe_layer *l)
{
    sl_tensor_release(&l->router);
    sl_tensor_release(&l->w1);
    sl_tensor_release(&l->w3);
    sl_tensor_release(&l->w2t);
    sl_tensor_release(&l->offs);
    memset(l, 0, sizeof *l);
}

void sl_model_moe_free(sl_ctx *ctx, sl_model_moe *mo)
{
    if (!mo)
        return;
    for (int64_t l = 0; l < mo->n_layers; l++)
        layer_clear(&mo->layers[l]);
    sl_ctx_dealloc(ctx, mo->y, mo->y_bytes);
    sl_ctx_dealloc(ctx, mo->layers, sizeof *mo->layers * (size_t)mo->n_layers);
    sl_ctx_dealloc(ctx, mo, sizeof *mo);
}

sl_status sl_model_moe_set(sl_ctx *ctx, sl_model_moe *mo, const sl_model *m, int layer, const sl_tensor *router,
                           const sl_tensor *expert)
{
    int64_t E = mo->E, D = mo->dim, H = mo->hidden;
    if (layer < 0 || layer >= mo->n_layers)
        return sl_ctx_fail(ctx, SL_EARG, "model moe: layer %d is outside [0, %lld)", layer, (long long)mo->n_layers);
    if (router->dtype != SL_F32 || router->ndim != 2 || router->shape[0] != E || router->shape[1] != D ||
        !sl_tensor_is_contiguous(router))
        return sl_ctx_fail(ctx, SL_ESHAPE, "model moe: the router of layer %d must be f32 [%lld, %lld] (experts, dim)",
                           layer, (long long)E, (long long)D);
    if (expert->dtype != SL_I32 || expert->ndim != 1 || expert->shape[0] != H || !sl_tensor_is_contiguous(expert))
        return sl_ctx_fail(ctx, SL_ESHAPE, "model moe: the expert map of layer %d must be i32 [%lld] (hidden units)",
                           layer, (long long)H);
    const int32_t *of = expert->data;
    for (int64_t u = 0; u < H; u++)
        if (of[u] < 0 || of[u] >= E)
            return sl_ctx_fail(ctx, SL_EARG, "model moe: layer %d unit %lld is in expert %d, outside [0, %lld)", layer,
                               (long long)u, of[u], (long long)E);
    const sl_model_layer *y = &m->layers[layer];
    moe_layer t;
    memset(&t, 0, sizeof t);
    int64_t rs[2] = {E, D}, ws[2] = {H, D}, os[1] = {E + 1};
    sl_status s;
    if ((s = sl_tensor_new(ctx, SL_F32, 2, rs, &t.router)) || (s = sl_tensor_new(ctx, SL_F32, 2, ws, &t.w1)) ||
        (s = sl_tensor_new(ctx, SL_F32, 2, ws, &t.w3)) || (s = sl_tensor_new(ctx, SL_F32, 2, ws, &t.w2t)) ||
        (s = sl_tensor_new(ctx, SL_I32, 1, os, &t.offs))) {
        layer_clear(&t);
        return s;
    }
    memcpy(t.router.data, router->data, sizeof(float) * (size_t)(E * D));
    int32_t *offs = t.offs.data;
    const float *w1 = y->w1.data, *w3 = y->w3.data, *w2 = y->w2.data; /* w1, w3 [H, D]; w2 [D, H] */
    float *p1 = t.w1.data, *p3 = t.w3.data, *p2 = t.w2t.data;
    int64_t i = 0;
    for (int64_t e = 0; e < E; e++) {
        offs[e] = (int32_t)i;
        for (int64_t u = 0; u < H; u++) {
            if (of[u] != e)
                continue;
            memcpy(p1 + i * D, w1 + u * D, sizeof(float) * (size_t)D);
            memcpy(p3 + i * D, w3 + u * D, sizeof(float) * (size_t)D);
            for (int64_t d = 0; d < D; d++)
                p2[i * D + d] = w2[d * H + u];
            i++;
        }
    }
    offs[E] = (int32_t)i;
    t.on = 1;
    layer_clear(&mo->layers[layer]);
    mo->layers[layer] = t;
    return SL_OK;
}

void sl_model_moe_unset(sl_model_moe *mo, int layer)
{
    if (mo && layer >= 0 && layer < mo->n_layers)
        layer_clear(&mo->layers[layer]);
}

int sl_model_moe_on(const sl_model_moe *mo, int layer)
{
    return mo && layer >= 0 && layer < mo->n_layers && mo->layers[layer].on;
}

sl_moe_stat sl_model_moe_stat(const sl_model_moe *mo) { return mo->stat; }

void sl_model_moe_reset(sl_model_moe *mo) { memset(&mo->stat, 0, sizeof mo->stat); }

/* Top-k of one row of logits (value descending, ties: lower id) and the weights. */
static void route_row(const sl_model_moe *mo, const float *lg, int32_t *route, float *rw)
{
    int64_t E = mo->E;
    int taken[SL_MOE_MAX_EXPERTS] = {0};
    for (int j = 0; j < mo->k; j++) {
        int64_t best = -1;
        for (int64_t e = 0; e < E; e++)
            if (!taken[e] && (best < 0 || lg[e] > lg[best]))
                best = e;
        taken[best] = 1;
        route[j] = (int32_t)best;
    }
    if (!mo->softmax) {
        for (int j = 0; j < mo->k; j++)
            rw[j] = (float)mo->scale;
        return;
    }
    double mx = -INFINITY, z = 0;
    for (int j = 0; j < mo->k; j++)
        mx = fmax(mx, (double)lg[route[j]]);
    for (int j = 0; j < mo->k; j++)
        z += exp((double)lg[route[j]] - mx);
    for (int j = 0; j < mo->k; j++)
        rw[j] = (float)(exp((double)lg[route[j]] - mx) / z * mo->scale);
}

static sl_status moe_ffn(sl_ctx *ctx, sl_model_moe *mo, const moe_layer *ly, const float *x, int64_t n)
{
    int64_t D = mo->dim, E = mo->E, k = mo->k;
    sl_tensor in[7], lg[1], out[1];
    memset(in, 0, sizeof in);
    int64_t xs[2] = {n, D}, rs[2] = {n, k};
    sl_status s;
    if ((s = sl_tensor_new(ctx, SL_F32, 2, xs, &in[0])))
        return s;
    memcpy(in[0].data, x, sizeof(float) * (size_t)(n * D));
    sl_tensor rin[2] = {in[0], ly->router};
    if ((s = sl_op_run(ctx, mo->backend, SL_OP_MM_DENSE, NULL, rin, lg))) {
        sl_tensor_release(&in[0]);
        return s;
    }
    double flops = sl_op_flops(SL_OP_MM_DENSE, NULL, rin);
    if ((s = sl_tensor_new(ctx, SL_I32, 2, rs, &in[5])) || (s = sl_tensor_new(ctx, SL_F32, 2, rs, &in[6]))) {
        sl_tensor_release(&in[0]);
        sl_tensor_release(&in[5]);
        sl_tensor_release(&lg[0]);
        return s;
    }
    for (int64_t t = 0; t < n; t++)
        route_row(mo, (const float *)lg[0].data + t * E, (int32_t *)in[5].data + t * k, (float *)in[6].data + t * k);
    sl_tensor_release(&lg[0]);
    in[1] = ly->w1, in[2] = ly->w3, in[3] = ly->w2t, in[4] = ly->offs;
    s = sl_op_run(ctx, mo->backend, SL_OP_MM_MOE, NULL, in, out);
    if (s == SL_OK) {
        size_t bytes = sizeof(float) * (size_t)(n * D);
        if (bytes > mo->y_bytes) {
            sl_ctx_dealloc(ctx, mo->y, mo->y_bytes);
            mo->y_bytes = 0;
            if (!(mo->y = sl_ctx_alloc(ctx, bytes)))
                s = SL_ENOMEM;
            else
                mo->y_bytes = bytes;
        }
        if (s == SL_OK) {
            memcpy(mo->y, out[0].data, bytes);
            flops += sl_op_flops(SL_OP_MM_MOE, NULL, in);
            const int32_t *r = in[5].data, *offs = ly->offs.data;
            for (int64_t i = 0; i < n * k; i++) {
                mo->stat.load[r[i]]++;
                mo->stat.units += offs[r[i] + 1] - offs[r[i]];
            }
            mo->stat.pairs += n * k;
            mo->stat.flops += flops;
            mo->stat.dense_flops += 6.0 * (double)n * (double)mo->hidden * (double)D;
        }
        sl_tensor_release(&out[0]);
    }
    sl_tensor_release(&in[0]);
    sl_tensor_release(&in[5]);
    sl_tensor_release(&in[6]);
    return s;
}

sl_status sl_model_moe_linear(void *ud, sl_ctx *ctx, int layer, const char *name, const float *x, int64_t n,
                              const sl_tensor *w, float *y, int *done)
{
    sl_model_moe *mo = ud;
    if (!sl_model_moe_on(mo, layer))
        return SL_OK;
    int64_t N = w->shape[0];
    if (strcmp(name, "w1") == 0) {
        double t0 = sl_time_now();
        sl_status s = moe_ffn(ctx, mo, &mo->layers[layer], x, n);
        if (s)
            return s;
        mo->y_layer = layer;
        mo->y_n = n;
        mo->stat.seconds += sl_time_now() - t0;
        mo->stat.calls++;
        mo->stat.rows += n;
    } else if (strcmp(name, "w3") == 0) {
        /* h = silu(0) . 0 = 0 at every unit: the dense products are skipped */
    } else if (strcmp(name, "w2") == 0) {
        if (mo->y_layer != layer || mo->y_n != n)
            return sl_ctx_fail(ctx, SL_EARG, "model moe: layers.%d.w2 ran but that layer's w1 did not run through "
                               "the MoE in this pass", layer);
        memcpy(y, mo->y, sizeof(float) * (size_t)(n * N));
        mo->y_layer = -1;
        *done = 1;
        return SL_OK;
    } else
        return SL_OK;
    memset(y, 0, sizeof(float) * (size_t)(n * N));
    *done = 1;
    return SL_OK;
}
