/* model/exec.c — the model runner's sparse executors (issue 17, session 3):
 * per weight of the model a format (dense sgemm, mm.nm, mm.bitmap,
 * mm.act_sparse), the compressed forms built once from the weight, and the
 * products timed per weight kind. See sparselab.h. */
#include "model.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

static const char *const kind_names[SL_EXEC_KINDS] = {"wq", "wk", "wv", "wo", "w1", "w3", "w2"};

typedef struct exec_slot {
    int format;            /* resolved: never SL_EXEC_AUTO */
    int n, m;              /* SL_EXEC_NM */
    sl_tensor a, b;        /* nm: vals, pos; bitmap: bits, vals; act: wt */
    sl_mm_nm_params nmp;
    sl_mm_bitmap_params bmp;
} exec_slot;

struct sl_model_exec {
    sl_backend_id backend;
    int64_t n_layers;
    double threshold;
    double min_macs;   /* products with fewer multiply-adds stay dense (sl_model_exec_set_min_macs) */
    int n_cross;       /* rho* points of mm.act_sparse (sl_model_exec_set_crossover); 0: none */
    int64_t cross_rows[SL_EXEC_MAX_CROSSOVER];
    double cross_rho[SL_EXEC_MAX_CROSSOVER];
    exec_slot *slots; /* [n_layers][SL_EXEC_KINDS] */
    sl_exec_stat stat[SL_EXEC_KINDS];
    const sl_model *model; /* the model the exec was built for (spark reads the layer's w3) */
    int32_t *sel;      /* spark: the last w1's selected units [rows][k] (-1 padding) */
    size_t sel_bytes;
    int sel_layer;
    int64_t sel_rows;
    float *gate;       /* the last w1 output of a layer whose w3 is gated */
    size_t gate_bytes;
    int gate_layer;
};

static int kind_of(const char *name)
{
    for (int k = 0; k < SL_EXEC_KINDS; k++)
        if (strcmp(name, kind_names[k]) == 0)
            return k;
    return -1;
}

static void slot_clear(exec_slot *s)
{
    sl_tensor_release(&s->a);
    sl_tensor_release(&s->b);
    memset(s, 0, sizeof *s);
}

sl_status sl_model_exec_new(sl_ctx *ctx, const sl_model *m, sl_backend_id b, sl_model_exec **out)
{
    *out = NULL;
    if (!sl_backend_available(b))
        return sl_ctx_fail(ctx, SL_EDEVICE, "model exec: backend %s is unavailable: %s", sl_backend_name(b),
                           sl_backend_status(b));
    sl_model_exec *e = sl_ctx_alloc(ctx, sizeof *e);
    if (!e)
        return SL_ENOMEM;
    memset(e, 0, sizeof *e);
    e->backend = b;
    e->model = m;
    e->sel_layer = -1;
    e->n_layers = m->cfg.n_layers;
    e->threshold = 0.4;
    e->min_macs = SL_EXEC_MIN_MACS_DEFAULT;
    size_t bytes = sizeof *e->slots * (size_t)(e->n_layers * SL_EXEC_KINDS);
    if (!(e->slots = sl_ctx_alloc(ctx, bytes))) {
        sl_ctx_dealloc(ctx, e, sizeof *e);
        return SL_ENOMEM;
    }
    memset(e->slots, 0, bytes);
    *out = e;
    return SL_OK;
}

void sl_model_exec_free(sl_ctx *ctx, sl_model_exec *e)
{
    if (!e)
        return;
    for (int64_t i = 0; i < e->n_layers * SL_EXEC_KINDS; i++)
        slot_clear(&e->slots[i]);
    sl_ctx_dealloc(ctx, e->gate, e->gate_bytes);
    sl_ctx_dealloc(ctx, e->sel, e->sel_bytes);
    sl_ctx_dealloc(ctx, e->slots, sizeof *e->slots * (size_t)(e->n_layers * SL_EXEC_KINDS));
    sl_ctx_dealloc(ctx, e, sizeof *e);
}

void sl_model_exec_set_threshold(sl_model_exec *e, double density)
{
    e->threshold = density;
}

void sl_model_exec_set_min_macs(sl_model_exec *e, double macs)
{
    e->min_macs = macs > 0 ? macs : 0;
}

sl_status sl_model_exec_set_crossover(sl_ctx *ctx, sl_model_exec *e, int n, const int64_t *rows, const double *rho)
{
    if (n < 0 || n > SL_EXEC_MAX_CROSSOVER)
        return sl_ctx_fail(ctx, SL_EARG, "model exec: expected 0..%d crossover points, found %d", SL_EXEC_MAX_CROSSOVER,
                           n);
    for (int i = 0; i < n; i++) {
        if (rows[i] < 1 || (i > 0 && rows[i] <= rows[i - 1]))
            return sl_ctx_fail(ctx, SL_EARG,
                               "model exec: crossover rows must be >= 1 and ascending, found %lld at point %d",
                               (long long)rows[i], i);
        if (!(rho[i] >= -1 && rho[i] <= 1))
            return sl_ctx_fail(ctx, SL_EARG, "model exec: crossover density must lie in [-1, 1], found %g at point %d",
                               rho[i], i);
    }
    for (int i = 0; i < n; i++) {
        e->cross_rows[i] = rows[i];
        e->cross_rho[i] = rho[i];
    }
    e->n_cross = n;
    return SL_OK;
}

/* rho* for a product of n rows: the point with the largest rows <= n, else the first. */
static double crossover_for(const sl_model_exec *e, int64_t n)
{
    int pick = 0;
    for (int i = 1; i < e->n_cross; i++)
        if (e->cross_rows[i] <= n)
            pick = i;
    return e->cross_rho[pick];
}

static const sl_tensor *layer_weight(const sl_model *m, int64_t l, int k)
{
    const sl_model_layer *y = &m->layers[l];
    const sl_tensor *ts[SL_EXEC_KINDS] = {&y->wq, &y->wk, &y->wv, &y->wo, &y->w1, &y->w3, &y->w2};
    return ts[k];
}

/* Builds slot s of weight w (layer l, kind k) in format f. */
static sl_status slot_build(sl_ctx *ctx, sl_model_exec *e, exec_slot *s, const sl_tensor *w, int64_t l, int k,
                            int f, int n, int mm)
{
    const float *W = w->data;
    int64_t N = w->shape[0], K = w->shape[1];
    int64_t cap = 0, nnz = 0;
    for (int64_t r = 0; r < N; r++) {
        int64_t c = 0;
        for (int64_t j = 0; j < K; j++)
            c += W[r * K + j] != 0.f;
        cap = c > cap ? c : cap;
        nnz += c;
    }
    if (f == SL_EXEC_AUTO)
        f = (double)nnz < e->threshold * (double)(N * K) ? SL_EXEC_BITMAP : SL_EXEC_DENSE;
    exec_slot t;
    memset(&t, 0, sizeof t);
    t.format = f;
    sl_tensor out[2];
    sl_status st = SL_OK;
    if (f == SL_EXEC_NM) {
        if (n < 1 || mm < n || mm > 255)
            return sl_ctx_fail(ctx, SL_EARG, "model exec: N:M expects 1 <= n <= m <= 255, found n = %d, m = %d", n,
                               mm);
        for (int64_t r = 0; r < N; r++)
            for (int64_t g = 0; g < K; g += mm) {
                int c = 0;
                for (int64_t j = g; j < K && j < g + mm; j++)
                    c += W[r * K + j] != 0.f;
                if (c > n)
                    return sl_ctx_fail(ctx, SL_EARG,
                                       "model exec: layers.%lld.%s is not %d:%d sparse: row %lld, columns %lld.. hold "
                                       "%d nonzeros (prune it first)",
                                       (long long)l, kind_names[k], n, mm, (long long)r, (long long)g, c);
            }
        t.n = n;
        t.m = mm;
        sl_op_params_default(SL_OP_MM_NM, &t.nmp);
        t.nmp.n = n;
        t.nmp.m = mm;
        if ((st = sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_MM_NM_ENCODE, &t.nmp, w, out)))
            return st;
        t.a = out[0];
        t.b = out[1];
    } else if (f == SL_EXEC_BITMAP) {
        sl_op_params_default(SL_OP_MM_BITMAP, &t.bmp);
        t.bmp.cap = (int)(cap > 0 ? cap : 1);
        if ((st = sl_op_run(ctx, SL_BACKEND_CPU, SL_OP_MM_BITMAP_ENCODE, &t.bmp, w, out)))
            return st;
        t.a = out[0];
        t.b = out[1];
    } else if (f == SL_EXEC_ACT) {
        int64_t sh[2] = {K, N};
        if ((st = sl_tensor_new(ctx, SL_F32, 2, sh, &t.a)))
            return st;
        float *T = t.a.data;
        for (int64_t r = 0; r < N; r++)
            for (int64_t j = 0; j < K; j++)
                T[j * N + r] = W[r * K + j];
    } else if (f != SL_EXEC_DENSE) {
        return sl_ctx_fail(ctx, SL_EARG, "model exec: unknown format %d", f);
    }
    slot_clear(s);
    *s = t;
    return SL_OK;
}

sl_status sl_model_exec_set(sl_ctx *ctx, sl_model_exec *e, const sl_model *m, int layer, const char *name,
                            sl_exec_format f, int n, int mm)
{
    int k = kind_of(name);
    if (k < 0)
        return sl_ctx_fail(ctx, SL_EARG, "model exec: expected a weight wq, wk, wv, wo, w1, w3 or w2, found '%s'",
                           name);
    if (m->cfg.n_layers != e->n_layers)
        return sl_ctx_fail(ctx, SL_EARG, "model exec: built for %lld layers, model has %lld",
                           (long long)e->n_layers, (long long)m->cfg.n_layers);
    if (layer < -1 || layer >= e->n_layers)
        return sl_ctx_fail(ctx, SL_EARG, "model exec: layer %d outside -1..%lld", layer, (long long)e->n_layers - 1);
    for (int64_t l = layer < 0 ? 0 : layer; l < (layer < 0 ? e->n_layers : layer + 1); l++) {
        sl_status s = slot_build(ctx, e, &e->slots[l * SL_EXEC_KINDS + k], layer_weight(m, l, k), l, k, f, n, mm);
        if (s)
            return s;
    }
    return SL_OK;
}

sl_status sl_model_exec_set_gate(sl_ctx *ctx, sl_model_exec *e, const sl_model *m, int layer, const sl_tensor *theta)
{
    int64_t hid = m->cfg.hidden_dim, L = e->n_layers;
    int all = layer < 0;
    if (layer < -1 || layer >= L)
        return sl_ctx_fail(ctx, SL_EARG, "model exec: layer %d outside -1..%lld", layer, (long long)L - 1);
    int64_t want = all ? L * hid : hid;
    if (!theta || theta->dtype != SL_F32 || !sl_tensor_is_contiguous(theta) || sl_tensor_numel(theta) != want)
        return sl_ctx_fail(ctx, SL_EARG, "model exec: gate thresholds must be f32 with %lld entries (%s)",
                           (long long)want, all ? "[n_layers, hidden_dim]" : "[hidden_dim]");
    for (int64_t l = all ? 0 : layer; l < (all ? L : layer + 1); l++) {
        exec_slot t;
        memset(&t, 0, sizeof t);
        t.format = SL_EXEC_GATED;
        int64_t sh[1] = {hid};
        sl_status st = sl_tensor_new(ctx, SL_F32, 1, sh, &t.a);
        if (st)
            return st;
        memcpy(t.a.data, (const float *)theta->data + (all ? l * hid : 0), sizeof(float) * (size_t)hid);
        exec_slot *s = &e->slots[l * SL_EXEC_KINDS + 5]; /* w3 */
        slot_clear(s);
        *s = t;
    }
    return SL_OK;
}

sl_status sl_model_exec_set_spark(sl_ctx *ctx, sl_model_exec *e, int layer, int k, int r, int gate_up)
{
    int64_t L = e->n_layers;
    if (layer < -1 || layer >= L)
        return sl_ctx_fail(ctx, SL_EARG, "model exec: layer %d outside -1..%lld", layer, (long long)L - 1);
    if (k < 1 || r < 0)
        return sl_ctx_fail(ctx, SL_EARG, "model exec: spark expects k >= 1 and r >= 0, found k = %d, r = %d", k, r);
    for (int64_t l = layer < 0 ? 0 : layer; l < (layer < 0 ? L : layer + 1); l++)
        for (int kind = 4; kind <= 5; kind++) { /* w1, w3 */
            exec_slot *s = &e->slots[l * SL_EXEC_KINDS + kind];
            slot_clear(s);
            s->format = SL_EXEC_SPARK;
            s->n = k;
            s->m = r;
            s->bmp.cap = gate_up != 0; /* reused as the gate_up flag */
        }
    e->sel_layer = -1;
    return SL_OK;
}

/* Runs mm.out_sparse on in and copies its output into y (the caller's
 * buffer); *flops = the op's executed FLOPs. */
static sl_status out_sparse_into(sl_ctx *ctx, sl_backend_id b, sl_tensor *in, float *y, double *flops)
{
    sl_tensor out[1];
    sl_status st = sl_op_run(ctx, b, SL_OP_MM_OUT_SPARSE, NULL, in, out);
    if (st == SL_OK) {
        memcpy(y, out[0].data, sl_tensor_nbytes(&out[0]));
        sl_tensor_release(&out[0]);
        *flops = sl_op_flops(SL_OP_MM_OUT_SPARSE, NULL, in);
    }
    return st;
}

/* Spark's w1: the scores, the selection into e->sel [n][k], then mm.out_sparse. */
static sl_status spark_w1(sl_ctx *ctx, sl_model_exec *e, exec_slot *s, int layer, const float *x, int64_t n,
                          const sl_tensor *w, float *y, double *flops)
{
    int64_t N = w->shape[0], K = w->shape[1], k = s->n < N ? s->n : N;
    exec_slot *up = &e->slots[layer * SL_EXEC_KINDS + 5];
    if (up->format != SL_EXEC_SPARK)
        return sl_ctx_fail(ctx, SL_EARG, "model exec: layers.%d.w1 runs spark but its w3 does not (replaced? set "
                           "spark again)", layer);
    sl_tensor in[3], z, kept;
    memset(in, 0, sizeof in);
    int64_t xs[2] = {n, K};
    sl_status st = sl_tensor_new(ctx, SL_F32, 2, xs, &in[0]);
    if (st)
        return st;
    memcpy(in[0].data, x, sizeof(float) * (size_t)(n * K));
    in[1] = *w;
    if (s->bmp.cap)
        in[2] = e->model->layers[layer].w3;
    sl_act_spark_params sp;
    sl_op_params_default(SL_OP_ACT_SPARK_SCORE, &sp);
    sp.r = s->m;
    if ((st = sl_op_run(ctx, e->backend, SL_OP_ACT_SPARK_SCORE, &sp, in, &z))) {
        sl_tensor_release(&in[0]);
        return st;
    }
    *flops = sl_op_flops(SL_OP_ACT_SPARK_SCORE, &sp, in);
    sl_act_topk_params tp;
    sl_op_params_default(SL_OP_ACT_TOPK, &tp);
    tp.k = k;
    tp.abs = 0;
    st = sl_op_run(ctx, e->backend, SL_OP_ACT_TOPK, &tp, &z, &kept);
    sl_tensor_release(&z);
    if (st) {
        sl_tensor_release(&in[0]);
        return st;
    }
    size_t bytes = sizeof(int32_t) * (size_t)(n * k);
    if (bytes > e->sel_bytes) {
        sl_ctx_dealloc(ctx, e->sel, e->sel_bytes);
        e->sel_bytes = 0;
        if (!(e->sel = sl_ctx_alloc(ctx, bytes))) {
            sl_tensor_release(&kept);
            sl_tensor_release(&in[0]);
            return SL_ENOMEM;
        }
        e->sel_bytes = bytes;
    }
    const float *kv = kept.data;
    for (int64_t r = 0; r < n; r++) {
        int64_t c = 0;
        for (int64_t j = 0; j < N && c < k; j++)
            if (kv[r * N + j] != 0.f)
                e->sel[r * k + c++] = (int32_t)j;
        for (; c < k; c++)
            e->sel[r * k + c] = -1;
    }
    sl_tensor_release(&kept);
    e->sel_layer = layer;
    e->sel_rows = n;
    int64_t ss[2] = {n, k};
    if ((st = sl_tensor_new(ctx, SL_I32, 2, ss, &in[2]))) {
        sl_tensor_release(&in[0]);
        return st;
    }
    memcpy(in[2].data, e->sel, bytes);
    sl_tensor in4[4] = {in[0], *w, in[2], {0}};
    double f = 0;
    st = out_sparse_into(ctx, e->backend, in4, y, &f);
    *flops += f;
    sl_tensor_release(&in[2]);
    sl_tensor_release(&in[0]);
    return st;
}

/* Spark's w3: mm.out_sparse over the units w1 selected in this pass. */
static sl_status spark_w3(sl_ctx *ctx, sl_model_exec *e, exec_slot *s, int layer, const float *x, int64_t n,
                          const sl_tensor *w, float *y, double *flops)
{
    int64_t N = w->shape[0], K = w->shape[1], k = s->n < N ? s->n : N;
    if (e->slots[layer * SL_EXEC_KINDS + 4].format != SL_EXEC_SPARK || e->sel_layer != layer || e->sel_rows != n ||
        !e->sel)
        return sl_ctx_fail(ctx, SL_EARG, "model exec: layers.%d.w3 runs spark but w1 of that layer did not run "
                           "spark in this pass (replaced? set spark again)", layer);
    sl_tensor in[4];
    memset(in, 0, sizeof in);
    int64_t xs[2] = {n, K}, ss[2] = {n, k};
    sl_status st = sl_tensor_new(ctx, SL_F32, 2, xs, &in[0]);
    if (st)
        return st;
    memcpy(in[0].data, x, sizeof(float) * (size_t)(n * K));
    if ((st = sl_tensor_new(ctx, SL_I32, 2, ss, &in[2]))) {
        sl_tensor_release(&in[0]);
        return st;
    }
    memcpy(in[2].data, e->sel, sizeof(int32_t) * (size_t)(n * k));
    e->sel_layer = -1; /* one w3 per w1 selection */
    in[1] = *w;
    st = out_sparse_into(ctx, e->backend, in, y, flops);
    sl_tensor_release(&in[2]);
    sl_tensor_release(&in[0]);
    return st;
}

int sl_model_exec_format(const sl_model_exec *e, int layer, const char *name)
{
    int k = kind_of(name);
    if (k < 0 || layer < 0 || layer >= e->n_layers)
        return -1;
    return e->slots[layer * SL_EXEC_KINDS + k].format;
}

sl_exec_stat sl_model_exec_stat(const sl_model_exec *e, int kind)
{
    sl_exec_stat z = {0};
    return kind >= 0 && kind < SL_EXEC_KINDS ? e->stat[kind] : z;
}

void sl_model_exec_reset(sl_model_exec *e)
{
    memset(e->stat, 0, sizeof e->stat);
}

/* Runs op on inputs in (the activations first) and copies the output into
 * y; *seconds: the wall time of that, *flops (counted after the clock
 * stops: sl_op_flops scans bitmaps and activations). */
static sl_status run_into(sl_ctx *ctx, sl_model_exec *e, sl_op op, const void *p, const sl_tensor *in, float *y,
                          double t0, double *seconds, double *flops)
{
    sl_tensor out[1];
    sl_status s = sl_op_run(ctx, e->backend, op, p, in, out);
    if (s)
        return s;
    memcpy(y, out[0].data, sl_tensor_nbytes(&out[0]));
    sl_tensor_release(&out[0]);
    *seconds = sl_time_now() - t0;
    *flops = sl_op_flops(op, p, in);
    return SL_OK;
}

sl_status sl_model_exec_linear(void *ud, sl_ctx *ctx, int layer, const char *name, const float *x, int64_t n,
                               const sl_tensor *w, float *y, int *done)
{
    sl_model_exec *e = ud;
    int k = kind_of(name);
    if (k < 0 || layer < 0 || layer >= e->n_layers)
        return SL_OK; /* not ours: the dense sgemm */
    exec_slot *s = &e->slots[layer * SL_EXEC_KINDS + k];
    int64_t N = w->shape[0], K = w->shape[1];
    double t0 = sl_time_now(), flops = 0, seconds = 0;
    sl_status st = SL_OK;
    /* Below min_macs the call through sl_op_run (argument checks, content
     * scans, staging, the output's finite check) costs more than the product:
     * run the runner's sgemm on the same operands instead. The weight is the
     * runner's own, already zeroed where the compressed form has no entry
     * (nm, bitmap), and the activations are the hook's, zeroed where act
     * skips them, so the sums are the same ones in another order; gated w3
     * zeroes the outputs outside its support afterwards. Counted in small. */
    if (s->format == SL_EXEC_SPARK) {
        st = k == 4 ? spark_w1(ctx, e, s, layer, x, n, w, y, &flops) : k == 5 ? spark_w3(ctx, e, s, layer, x, n, w, y, &flops)
                    : sl_ctx_fail(ctx, SL_EINTERNAL, "model exec: spark on %s", kind_names[k]);
        if (st)
            return st;
        sl_exec_stat *t = &e->stat[k];
        t->seconds += sl_time_now() - t0;
        t->calls++;
        t->rows += n;
        t->flops += flops;
        *done = 1;
        return SL_OK;
    }
    int small = s->format != SL_EXEC_DENSE && (double)n * (double)N * (double)K < e->min_macs;
    /* act above the stored crossover density: the dense sgemm on the same
     * zeroed activations (card act_sparse_matmul step 5) */
    int over = 0;
    if (s->format == SL_EXEC_ACT && !small && e->n_cross > 0) {
        int64_t nz = 0;
        for (int64_t i = 0; i < n * K; i++)
            nz += x[i] != 0.f;
        over = (double)nz > crossover_for(e, n) * (double)(n * K);
    }
    if (s->format == SL_EXEC_GATED && small &&
        (e->gate_layer != layer || !e->gate || e->gate_bytes < sizeof(float) * (size_t)(n * N)))
        return sl_ctx_fail(ctx, SL_EARG, "model exec: layers.%d.w3 is gated but w1 of that layer did not "
                           "run through the exec in this pass", layer);
    if (s->format == SL_EXEC_DENSE || small || over) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, (int)N, (int)K, 1.f, x, (int)K, w->data, (int)K,
                    0.f, y, (int)N);
        if (s->format == SL_EXEC_GATED) {
            const float *th = s->a.data;
            for (int64_t r = 0; r < n; r++)
                for (int64_t j = 0; j < N; j++) {
                    double g = e->gate[r * N + j], a = g / (1 + exp(-g));
                    if (!(fabs(a) >= (double)th[j]))
                        y[r * N + j] = 0.f;
                }
        }
        seconds = sl_time_now() - t0;
        flops = 2.0 * (double)n * (double)N * (double)K;
    } else {
        sl_tensor in[4];
        memset(in, 0, sizeof in);
        int64_t xs[2] = {n, K};
        if ((st = sl_tensor_new(ctx, SL_F32, 2, xs, &in[0])))
            return st;
        memcpy(in[0].data, x, sizeof(float) * (size_t)(n * K));
        if (s->format == SL_EXEC_GATED) {
            if (e->gate_layer != layer || !e->gate || e->gate_bytes < sizeof(float) * (size_t)(n * N)) {
                sl_tensor_release(&in[0]);
                return sl_ctx_fail(ctx, SL_EARG, "model exec: layers.%d.w3 is gated but w1 of that layer did not "
                                   "run through the exec in this pass", layer);
            }
            int64_t ss[2] = {n, N};
            if ((st = sl_tensor_new(ctx, SL_I32, 2, ss, &in[2]))) {
                sl_tensor_release(&in[0]);
                return st;
            }
            const float *th = s->a.data;
            int32_t *sel = in[2].data;
            for (int64_t r = 0; r < n; r++) {
                int64_t c = 0;
                for (int64_t j = 0; j < N; j++) {
                    double g = e->gate[r * N + j], a = g / (1 + exp(-g));
                    if (fabs(a) >= (double)th[j])
                        sel[r * N + c++] = (int32_t)j;
                }
                for (; c < N; c++)
                    sel[r * N + c] = -1;
            }
            in[1] = *w;
            st = run_into(ctx, e, SL_OP_MM_OUT_SPARSE, NULL, in, y, t0, &seconds, &flops);
            sl_tensor_release(&in[2]);
        } else if (s->format == SL_EXEC_NM) {
            in[1] = s->a;
            in[2] = s->b;
            st = run_into(ctx, e, SL_OP_MM_NM, &s->nmp, in, y, t0, &seconds, &flops);
        } else if (s->format == SL_EXEC_BITMAP) {
            in[1] = s->a;
            in[2] = s->b;
            st = run_into(ctx, e, SL_OP_MM_BITMAP, &s->bmp, in, y, t0, &seconds, &flops);
        } else {
            in[1] = s->a;
            st = run_into(ctx, e, SL_OP_MM_ACT_SPARSE, NULL, in, y, t0, &seconds, &flops);
        }
        sl_tensor_release(&in[0]);
        if (st)
            return st;
    }
    if (k == 4 && e->slots[layer * SL_EXEC_KINDS + 5].format == SL_EXEC_GATED) { /* keep g for w3 */
        size_t bytes = sizeof(float) * (size_t)(n * N);
        if (bytes > e->gate_bytes) {
            sl_ctx_dealloc(ctx, e->gate, e->gate_bytes);
            e->gate_bytes = 0;
            if (!(e->gate = sl_ctx_alloc(ctx, bytes)))
                return SL_ENOMEM;
            e->gate_bytes = bytes;
        }
        memcpy(e->gate, y, bytes);
        e->gate_layer = layer;
    }
    sl_exec_stat *t = &e->stat[k];
    t->seconds += seconds;
    t->calls++;
    t->rows += n;
    t->flops += flops;
    t->small += small;
    t->over_rho += over;
    *done = 1;
    return SL_OK;
}
