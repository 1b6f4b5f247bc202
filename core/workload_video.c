/* workload_video.c — the synthetic video-DiT workload (issue 15): seeded
 * Q, K, V over a frames × height × width token grid plus text tokens, with
 * spatial heads (attend within their frame, local in y/x), temporal heads
 * (attend to the same (y, x) in every frame), text keys every video query
 * leans to, and a slow drift of every tensor across denoising steps. See
 * sl_video_params in sparselab.h for the knobs. */
#include "internal.h"

#include <math.h>
#include <string.h>

/* Random Fourier features of a Gaussian kernel: feat[c] = sqrt(2/m) cos(w_c .
 * (y, x) + b_c), so feat(p) . feat(p') ≈ exp(-|p - p'|^2 / (2 len^2)). */
typedef struct rff {
    double *w, *b; /* w: 2 per feature, b: one phase per feature */
} rff;

static void rff_draw(sl_rng *r, rff *f, int64_t m, double len, int phases_only)
{
    for (int64_t c = 0; c < m; c++) {
        if (!phases_only) {
            f->w[2 * c] = sl_rng_normal(r) / len;
            f->w[2 * c + 1] = sl_rng_normal(r) / len;
        }
        f->b[c] = 2.0 * M_PI * sl_rng_uniform(r);
    }
}

/* x[c] += a · sqrt(2/m) cos(w_c . (y, x) + b_c) for every channel c < m. */
static void rff_add(float *x, const rff *f, int64_t m, double py, double px, double a)
{
    double s = a * sqrt(2.0 / (double)m);
    for (int64_t c = 0; c < m; c++)
        x[c] += (float)(s * cos(f->w[2 * c] * py + f->w[2 * c + 1] * px + f->b[c]));
}

static void fill_drifted(sl_tensor *t, sl_rng *r, double drift, double angle)
{
    float *x = t->data;
    int64_t n = sl_tensor_numel(t);
    double ca = drift * cos(angle), sa = drift * sin(angle);
    for (int64_t i = 0; i < n; i++) {
        double base = sl_rng_normal(r), za = sl_rng_normal(r), zb = sl_rng_normal(r);
        x[i] = (float)(base + ca * za + sa * zb);
    }
}

sl_status sl_workload_video(sl_ctx *ctx, const sl_video_params *p, sl_tensor *q, sl_tensor *k, sl_tensor *v,
                            sl_tensor *kinds)
{
    memset(q, 0, sizeof *q);
    memset(k, 0, sizeof *k);
    memset(v, 0, sizeof *v);
    memset(kinds, 0, sizeof *kinds);
    if (p->heads < 1 || p->frames < 1 || p->height < 1 || p->width < 1 || p->text < 0 || p->d < 2 || p->step < 0 ||
        p->spatial_frac < 0 || p->spatial_frac > 1 || p->spatial_len <= 0 || p->temporal_len <= 0 || p->drift < 0)
        return sl_ctx_fail(ctx, SL_EARG,
                           "video workload: expected heads, frames, height, width >= 1, text >= 0, d >= 2, step >= 0, "
                           "spatial_frac in [0, 1], lengths > 0, drift >= 0; found heads %lld, frames %lld, height "
                           "%lld, width %lld, text %lld, d %lld, step %lld",
                           (long long)p->heads, (long long)p->frames, (long long)p->height, (long long)p->width,
                           (long long)p->text, (long long)p->d, (long long)p->step);
    int64_t H = p->heads, F = p->frames, HH = p->height, W = p->width, d = p->d, nv = F * HH * W, n = nv + p->text;
    if (n > INT32_MAX)
        return sl_ctx_fail(ctx, SL_EARG, "video workload: %lld tokens; at most 2^31 - 1", (long long)n);
    int64_t sh[3] = {H, n, d}, sk[1] = {H};
    sl_status s;
    if ((s = sl_tensor_new(ctx, SL_F32, 3, sh, q)) || (s = sl_tensor_new(ctx, SL_F32, 3, sh, k)) ||
        (s = sl_tensor_new(ctx, SL_F32, 3, sh, v)) || (s = sl_tensor_new(ctx, SL_I32, 1, sk, kinds)))
        goto fail;
    size_t fbytes = sizeof(double) * (size_t)(3 * d + d);
    double *buf = sl_ctx_alloc(ctx, fbytes);
    if (!buf) {
        s = SL_ENOMEM;
        goto fail;
    }
    rff f = {buf, buf + 2 * d};
    double *u = buf + 3 * d;
    /* The structure (kinds, features, text direction) depends on the seed
     * only; the base noise and its drift on the seed and the step. */
    sl_rng r, noise;
    sl_rng_seed(&r, p->seed);
    sl_rng_seed(&noise, p->seed ^ 0x5eed0fd1f7ull);
    double angle = (double)p->step * M_PI / 40.0;
    fill_drifted(q, &noise, p->drift, angle);
    fill_drifted(k, &noise, p->drift, angle);
    fill_drifted(v, &noise, p->drift, angle);
    int32_t *kind = kinds->data;
    double root_d = sqrt((double)d);
    for (int64_t h = 0; h < H; h++) {
        kind[h] = sl_rng_uniform(&r) < p->spatial_frac ? 0 : 1;
        float *qh = (float *)q->data + h * n * d, *kh = (float *)k->data + h * n * d;
        if (kind[h] == 0) {
            /* spatial: features over (y, x) with fresh phases in every frame,
             * so tokens of different frames share nothing */
            double a = sqrt(p->spatial_strength * root_d);
            rff_draw(&r, &f, d, p->spatial_len, 0);
            for (int64_t fr = 0; fr < F; fr++) {
                if (fr > 0)
                    rff_draw(&r, &f, d, p->spatial_len, 1);
                for (int64_t y = 0; y < HH; y++)
                    for (int64_t x = 0; x < W; x++) {
                        int64_t t = (fr * HH + y) * W + x;
                        rff_add(qh + t * d, &f, d, (double)y, (double)x, a);
                        rff_add(kh + t * d, &f, d, (double)y, (double)x, a);
                    }
            }
        } else {
            /* temporal: short-range features over (y, x), the same in every frame */
            double a = sqrt(p->temporal_strength * root_d);
            rff_draw(&r, &f, d, p->temporal_len, 0);
            for (int64_t t = 0; t < nv; t++) {
                int64_t y = (t / W) % HH, x = t % W;
                rff_add(qh + t * d, &f, d, (double)y, (double)x, a);
                rff_add(kh + t * d, &f, d, (double)y, (double)x, a);
            }
        }
        /* text: every video query leans to a direction the text keys hold */
        double norm = 0;
        for (int64_t c = 0; c < d; c++) {
            u[c] = sl_rng_normal(&r);
            norm += u[c] * u[c];
        }
        double a = sqrt(p->text_strength) * pow((double)d, 0.25) / sqrt(norm);
        for (int64_t t = 0; t < n; t++) {
            float *row = t < nv ? qh + t * d : kh + t * d;
            for (int64_t c = 0; c < d; c++)
                row[c] += (float)(a * u[c]);
        }
    }
    sl_ctx_dealloc(ctx, buf, fbytes);
    return SL_OK;
fail:
    sl_tensor_release(q);
    sl_tensor_release(k);
    sl_tensor_release(v);
    sl_tensor_release(kinds);
    return s;
}
