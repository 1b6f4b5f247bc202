/* model/hf.c — the Hugging Face LLaMA loader: config.json through cJSON
 * (json.h), keeping only the keys the runner needs, then
 * model.safetensors (or, as large checkpoints ship, the shards named by
 * model.safetensors.index.json's weight_map, each tensor in the shard the map
 * names), each tensor matched to its slot by name, checked for
 * dtype, shape and finite values, and converted to f32. What the runner
 * cannot reproduce exactly (scaled RoPE other than Llama 3's, biases, another
 * activation or architecture) is refused rather than approximated. */
#include "model.h"
#include "../json.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* Real configs are a few kilobytes; the cap keeps a wrong file from being slurped. */
#define CONFIG_MAX_BYTES ((long long)1 << 20)
/* Nesting of containers, the top object included; deeper is refused. */
#define JSON_MAX_DEPTH 64

/* Copies src (len bytes) into dst [n] for a message: control bytes become
 * '?', a cut is marked "...". */
static void clean(char *dst, size_t n, const char *src, size_t len)
{
    size_t i = 0;
    for (; i < len && i + 1 < n; i++)
        dst[i] = (unsigned char)src[i] < 0x20 || (unsigned char)src[i] >= 0x7f ? '?' : src[i];
    dst[i] = '\0';
    if (i < len && i >= 3)
        memcpy(dst + i - 3, "...", 3);
}

/* ---- config.json ------------------------------------------------------------ */

/* Numeric keys; those before K_EPS hold integers, those before K_KV are required. */
enum { K_HIDDEN, K_INTER, K_LAYERS, K_HEADS, K_VOCAB, K_KV, K_MAXPOS, K_HEAD_DIM, K_SLIDING, K_EPS, K_THETA, K__COUNT };
static const char *const num_keys[K__COUNT] = {
    "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size",
    "num_key_value_heads", "max_position_embeddings", "head_dim", "sliding_window", "rms_norm_eps", "rope_theta"};

typedef struct hf_config {
    double v[K__COUNT];
    int set[K__COUNT];
    int tie;
    double rope[4]; /* Llama 3 rope_scaling: factor, low_freq_factor, high_freq_factor, original max positions */
    int rope_llama3;
} hf_config;

/* "<path>: key 'k': expected X, found <v>" */
static sl_status member_fail(sl_ctx *ctx, const char *path, const cJSON *v, const char *expected)
{
    char key[64], found[48];
    clean(key, sizeof key, v->string, strlen(v->string));
    sl__json_describe(v, found, sizeof found);
    return sl_ctx_fail(ctx, SL_EFORMAT, "%s: key '%s': expected %s, found %s", path, key, expected, found);
}

/* Takes member v when it is one we need; later duplicates override. */
/* rope_scaling: Llama 3's {"rope_type": "llama3", "factor", "low_freq_factor", "high_freq_factor",
 * "original_max_position_embeddings"} is read (issue 18); any other scaling is refused. */
static sl_status rope_scaling(sl_ctx *ctx, const char *path, const cJSON *v, hf_config *c)
{
    const cJSON *t = cJSON_IsObject(v) ? cJSON_GetObjectItemCaseSensitive(v, "rope_type") : NULL;
    if (cJSON_IsObject(v) && !cJSON_IsString(t))
        t = cJSON_GetObjectItemCaseSensitive(v, "type");
    if (!cJSON_IsString(t) || strcmp(t->valuestring, "llama3") != 0) {
        char shown[32] = "a setting";
        if (cJSON_IsString(t))
            clean(shown, sizeof shown, t->valuestring, strlen(t->valuestring));
        return sl_ctx_fail(ctx, SL_EUNSUPPORTED, "%s: key 'rope_scaling': expected null or {\"rope_type\": \"llama3\", "
                           "...}, found %s%s%s: only plain RoPE and Llama 3's scaled RoPE are supported", path,
                           cJSON_IsString(t) ? "type \"" : "", shown, cJSON_IsString(t) ? "\"" : "");
    }
    static const char *const keys[4] = {"factor", "low_freq_factor", "high_freq_factor",
                                        "original_max_position_embeddings"};
    for (int i = 0; i < 4; i++) {
        const cJSON *x = cJSON_GetObjectItemCaseSensitive(v, keys[i]);
        if (!cJSON_IsNumber(x) || !(x->valuedouble > 0) || (i == 3 && (x->valuedouble != floor(x->valuedouble) ||
                                                                       x->valuedouble > 1e12)))
            return sl_ctx_fail(ctx, SL_EFORMAT, "%s: key 'rope_scaling': expected '%s' (a positive %s) in the llama3 "
                               "setting", path, keys[i], i == 3 ? "integer" : "number");
        c->rope[i] = x->valuedouble;
    }
    c->rope_llama3 = 1;
    return SL_OK;
}

static sl_status config_member(sl_ctx *ctx, const char *path, const cJSON *v, hf_config *c)
{
    const char *key = v->string;
    for (int k = 0; k < K__COUNT; k++)
        if (strcmp(key, num_keys[k]) == 0) {
            /* null means "the default", as in transformers; cJSON already
             * refused numbers beyond double range. */
            int num = cJSON_IsNumber(v);
            if (!cJSON_IsNull(v) &&
                (!num || (k < K_EPS && (v->valuedouble != floor(v->valuedouble) || fabs(v->valuedouble) > 1e15))))
                return member_fail(ctx, path, v, k < K_EPS ? "an integer or null" : "a number or null");
            c->v[k] = num ? v->valuedouble : 0;
            c->set[k] = num;
            return SL_OK;
        }
    if (strcmp(key, "tie_word_embeddings") == 0) {
        if (!cJSON_IsBool(v) && !cJSON_IsNull(v))
            return member_fail(ctx, path, v, "true, false or null");
        c->tie = cJSON_IsTrue(v);
    } else if (strcmp(key, "rope_scaling") == 0 && !cJSON_IsNull(v)) {
        return rope_scaling(ctx, path, v, c);
    } else if (strcmp(key, "model_type") == 0 || strcmp(key, "hidden_act") == 0) {
        int arch = key[0] == 'm';
        if (cJSON_IsNull(v))
            return SL_OK;
        if (!cJSON_IsString(v))
            return member_fail(ctx, path, v, "a string or null");
        const char *str = v->valuestring;
        if (arch ? strcmp(str, "llama") == 0 || strcmp(str, "mistral") == 0 : strcmp(str, "silu") == 0)
            return SL_OK;
        char shown[32];
        clean(shown, sizeof shown, str, strlen(str));
        return sl_ctx_fail(ctx, SL_EUNSUPPORTED, "%s: key '%s': expected %s, found \"%s\": %s", path, key,
                           arch ? "\"llama\" or \"mistral\"" : "\"silu\"", shown,
                           arch ? "only the LLaMA architecture is supported" : "the runner's feed-forward is SwiGLU");
    }
    return SL_OK;
}

static sl_status parse_config(sl_ctx *ctx, const char *path, const char *text, size_t n, hf_config *c)
{
    cJSON *root;
    sl_status s = sl__json_parse(ctx, path, text, n, 0, JSON_MAX_DEPTH, &root);
    if (s)
        return s;
    if (!cJSON_IsObject(root)) {
        char found[48];
        sl__json_describe(root, found, sizeof found);
        s = sl_ctx_fail(ctx, SL_EFORMAT, "%s: expected a JSON object, found %s", path, found);
    }
    for (const cJSON *m = root->child; m && !s; m = m->next)
        s = config_member(ctx, path, m, c);
    cJSON_Delete(root);
    return s;
}

static sl_status read_config(sl_ctx *ctx, const char *path, hf_config *c)
{
    char *text = NULL;
    size_t n = 0;
    sl_status s = sl__json_read_file(ctx, path, CONFIG_MAX_BYTES, &text, &n);
    memset(c, 0, sizeof *c);
    if (!s)
        s = parse_config(ctx, path, text, n, c);
    if (text)
        sl_ctx_dealloc(ctx, text, n + 1);
    return s;
}

static sl_status make_config(sl_ctx *ctx, const char *path, const hf_config *h, sl_model_config *c)
{
    for (int k = 0; k < K_KV; k++)
        if (!h->set[k])
            return sl_ctx_fail(ctx, SL_EFORMAT, "%s: expected key '%s' (a number), found none", path, num_keys[k]);
    const double *v = h->v;
    *c = (sl_model_config){.dim = (int64_t)v[K_HIDDEN], .hidden_dim = (int64_t)v[K_INTER],
                           .n_layers = (int64_t)v[K_LAYERS], .n_heads = (int64_t)v[K_HEADS],
                           .vocab_size = (int64_t)v[K_VOCAB], .rope_style = SL_ROPE_HALF};
    c->n_kv_heads = h->set[K_KV] ? (int64_t)v[K_KV] : c->n_heads;
    c->seq_len = h->set[K_MAXPOS] ? (int64_t)v[K_MAXPOS] : 2048;
    c->head_dim = h->set[K_HEAD_DIM] ? (int64_t)v[K_HEAD_DIM] : c->n_heads > 0 ? c->dim / c->n_heads : 0;
    c->norm_eps = h->set[K_EPS] ? v[K_EPS] : 1e-6;
    c->rope_theta = h->set[K_THETA] ? v[K_THETA] : 10000.0;
    if (h->rope_llama3) {
        c->rope_factor = h->rope[0];
        c->rope_low_freq_factor = h->rope[1];
        c->rope_high_freq_factor = h->rope[2];
        c->rope_orig_max_pos = (int64_t)h->rope[3];
    }
    /* Mistral's window: inside it dense causal attention is the exact model,
     * so the usable context stops there. */
    if (h->set[K_SLIDING] && v[K_SLIDING] < 1)
        return sl_ctx_fail(ctx, SL_EFORMAT, "%s: key 'sliding_window': expected a positive integer or null, found %.0f",
                           path, v[K_SLIDING]);
    if (h->set[K_SLIDING] && (int64_t)v[K_SLIDING] < c->seq_len)
        c->seq_len = (int64_t)v[K_SLIDING];
    return sl__model_check_config(ctx, path, c);
}

/* ---- model.safetensors -------------------------------------------------------- */

enum { S_Q, S_KV, S_O, S_UP, S_DOWN, S_VEC, S_EMB };

static const struct { const char *suffix; size_t field; int kind; } layer_slots[9] = {
    {"self_attn.q_proj.weight", offsetof(sl_model_layer, wq), S_Q},
    {"self_attn.k_proj.weight", offsetof(sl_model_layer, wk), S_KV},
    {"self_attn.v_proj.weight", offsetof(sl_model_layer, wv), S_KV},
    {"self_attn.o_proj.weight", offsetof(sl_model_layer, wo), S_O},
    {"mlp.gate_proj.weight", offsetof(sl_model_layer, w1), S_UP},
    {"mlp.down_proj.weight", offsetof(sl_model_layer, w2), S_DOWN},
    {"mlp.up_proj.weight", offsetof(sl_model_layer, w3), S_UP},
    {"input_layernorm.weight", offsetof(sl_model_layer, rms_att), S_VEC},
    {"post_attention_layernorm.weight", offsetof(sl_model_layer, rms_ffn), S_VEC},
};

typedef struct loader {
    sl_ctx *ctx;
    const char *path;
    sl_model *m;
    int tie;
} loader;

static void shape_text(char *buf, size_t n, int ndim, const int64_t *shape)
{
    size_t w = (size_t)snprintf(buf, n, "[");
    for (int i = 0; i < ndim && w < n; i++)
        w += (size_t)snprintf(buf + w, n - w, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (w < n)
        snprintf(buf + w, n - w, "]");
}

/* The expected shape of a slot kind as text ("[172, 64]"); *ndim and shape too. */
static void expected(const sl_model_config *c, int kind, int *ndim, int64_t shape[2], char *buf, size_t n)
{
    int64_t qd = c->n_heads * c->head_dim, kd = c->n_kv_heads * c->head_dim;
    const int64_t table[7][2] = {{qd, c->dim}, {kd, c->dim}, {c->dim, qd}, {c->hidden_dim, c->dim},
                                 {c->dim, c->hidden_dim}, {c->dim, 0}, {c->vocab_size, c->dim}};
    shape[0] = table[kind][0];
    shape[1] = table[kind][1];
    *ndim = kind == S_VEC ? 1 : 2;
    shape_text(buf, n, *ndim, shape);
}

/* "<path>: tensor '<name>': <message>" */
#if defined(__GNUC__)
__attribute__((format(printf, 4, 5)))
#endif
static sl_status tensor_fail(const loader *ld, sl_status s, const char *name, const char *fmt, ...);
static sl_status tensor_fail(const loader *ld, sl_status s, const char *name, const char *fmt, ...)
{
    char msg[256], shown[128];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    clean(shown, sizeof shown, name, strlen(name));
    return sl_ctx_fail(ld->ctx, s, "%s: tensor '%s': %s", ld->path, shown, msg);
}

/* Checks one tensor against its slot and stores it there as f32. */
static sl_status place(const loader *ld, const sl_named_tensor *nt, sl_tensor *dst, int kind)
{
    const sl_tensor *t = &nt->t;
    int64_t shape[2];
    int ndim;
    char want[64], found[64];
    expected(&ld->m->cfg, kind, &ndim, shape, want, sizeof want);
    if (t->dtype != SL_F32 && t->dtype != SL_F16 && t->dtype != SL_BF16)
        return tensor_fail(ld, SL_EFORMAT, nt->name, "expected f32, f16 or bf16, found %s", sl_dtype_name(t->dtype));
    if (t->ndim != ndim || t->shape[0] != shape[0] || (ndim == 2 && t->shape[1] != shape[1])) {
        shape_text(found, sizeof found, t->ndim, t->shape);
        return tensor_fail(ld, SL_EFORMAT, nt->name, "expected %s, found %s", want, found);
    }
    sl_status s = SL_OK;
    if (t->dtype == SL_F32)
        *dst = sl_tensor_retain(t);
    else if ((s = sl_tensor_convert(ld->ctx, t, SL_F32, dst)))
        return s;
    /* The reader refuses NaN; infinities are refused here, as in llama2.c files. */
    const float *x = dst->data;
    for (int64_t i = 0, n = sl_tensor_numel(dst); i < n; i++)
        if (x[i] - x[i] != 0.f) {
            const char *what = x[i] != x[i] ? "NaN" : "an infinity";
            sl_tensor_release(dst);
            return tensor_fail(ld, SL_EFORMAT, nt->name, "expected finite values, found %s at flat index %lld", what,
                               (long long)i);
        }
    return SL_OK;
}

static sl_status match(const loader *ld, const sl_named_tensor *nt)
{
    static const char prefix[] = "model.layers.";
    const char *name = nt->name;
    sl_model *m = ld->m;
    size_t len = strlen(name);
    if (len >= 5 && strcmp(name + len - 5, ".bias") == 0)
        return tensor_fail(ld, SL_EUNSUPPORTED, name, "expected no biases (the runner's LLaMA has none), found one");
    if (strcmp(name, "model.embed_tokens.weight") == 0)
        return place(ld, nt, &m->tok_emb, S_EMB);
    if (strcmp(name, "model.norm.weight") == 0)
        return place(ld, nt, &m->rms_final, S_VEC);
    /* A tied checkpoint may still carry the classifier; transformers then
     * uses the embedding, and so do we. */
    if (strcmp(name, "lm_head.weight") == 0)
        return ld->tie ? SL_OK : place(ld, nt, &m->wcls, S_EMB);
    if (strncmp(name, prefix, sizeof prefix - 1) == 0) {
        const char *d = name + sizeof prefix - 1, *p = d;
        int64_t l = 0;
        while (*p >= '0' && *p <= '9' && p - d < 12)
            l = l * 10 + (*p++ - '0');
        int layer = p > d && *p == '.' && !(*d == '0' && p - d > 1); /* "model.layers.<N>.", N written plainly */
        if (layer && l >= m->cfg.n_layers)
            return tensor_fail(ld, SL_EFORMAT, name, "expected layers 0..%lld (num_hidden_layers %lld), found %lld",
                               (long long)m->cfg.n_layers - 1, (long long)m->cfg.n_layers, (long long)l);
        for (int i = 0; layer && i < 9; i++)
            if (strcmp(p + 1, layer_slots[i].suffix) == 0)
                return place(ld, nt, (sl_tensor *)((char *)&m->layers[l] + layer_slots[i].field), layer_slots[i].kind);
        /* Older exports saved RoPE's frequencies; the runner computes them. */
        if (layer && strcmp(p + 1, "self_attn.rotary_emb.inv_freq") == 0)
            return SL_OK;
    }
    return tensor_fail(ld, SL_EFORMAT, name, "expected a LLaMA weight (model.embed_tokens.weight, model.layers.N.*, "
                       "model.norm.weight, lm_head.weight), found an unknown name");
}

/* The first slot left empty, as SL_EFORMAT. */
static sl_status check_complete(const loader *ld)
{
    sl_model *m = ld->m;
    char name[96] = "", want[64];
    const char *note = "";
    int kind = S_EMB, ndim;
    int64_t shape[2];
    if (!m->tok_emb.buf)
        snprintf(name, sizeof name, "model.embed_tokens.weight");
    else if (!m->rms_final.buf)
        snprintf(name, sizeof name, "model.norm.weight"), kind = S_VEC;
    else if (!ld->tie && !m->wcls.buf)
        snprintf(name, sizeof name, "lm_head.weight"), note = " (tie_word_embeddings is false)";
    for (int64_t l = 0; l < m->cfg.n_layers && !name[0]; l++)
        for (int i = 0; i < 9 && !name[0]; i++)
            if (!((sl_tensor *)((char *)&m->layers[l] + layer_slots[i].field))->buf) {
                snprintf(name, sizeof name, "model.layers.%lld.%s", (long long)l, layer_slots[i].suffix);
                kind = layer_slots[i].kind;
            }
    if (!name[0])
        return SL_OK;
    expected(&m->cfg, kind, &ndim, shape, want, sizeof want);
    return tensor_fail(ld, SL_EFORMAT, name, "expected %s%s, found no such tensor", want, note);
}

/* ---- sharded checkpoints: model.safetensors.index.json ------------------------ */

#define INDEX_MAX_BYTES ((long long)16 << 20)

/* Loads every shard that the index's weight_map names (in the order they first
 * appear) into ld->m; a shard file name must be a plain name in dir, and a tensor
 * found in a shard must be mapped to that shard. */
static sl_status load_shards(loader *ld, const char *dir, const char *ipath)
{
    sl_ctx *ctx = ld->ctx;
    char *text;
    size_t n;
    sl_status s = sl__json_read_file(ctx, ipath, INDEX_MAX_BYTES, &text, &n);
    if (s)
        return s;
    cJSON *root = NULL;
    s = sl__json_parse(ctx, ipath, text, n, 0, JSON_MAX_DEPTH, &root);
    sl_ctx_dealloc(ctx, text, n + 1);
    if (s)
        return s;
    const cJSON *map = cJSON_IsObject(root) ? cJSON_GetObjectItemCaseSensitive(root, "weight_map") : NULL;
    if (!cJSON_IsObject(map) || !map->child)
        s = sl_ctx_fail(ctx, SL_EFORMAT, "%s: expected an object with a non-empty \"weight_map\" "
                        "{tensor name: shard file}", ipath);
    for (const cJSON *e = map ? map->child : NULL; e && !s; e = e->next) {
        const char *shard = cJSON_IsString(e) ? e->valuestring : NULL;
        if (!shard || !shard[0] || strchr(shard, '/') || strcmp(shard, "..") == 0 || strcmp(shard, ".") == 0) {
            char shown[64];
            sl__json_describe(e, shown, sizeof shown);
            s = sl_ctx_fail(ctx, SL_EFORMAT, "%s: weight_map['%.80s']: expected a shard file name in the model's "
                            "folder, found %s", ipath, e->string, shown);
            break;
        }
        /* each shard once: at the first entry that names it */
        int first = 1;
        for (const cJSON *p = map->child; p != e; p = p->next)
            if (strcmp(p->valuestring, shard) == 0)
                first = 0;
        if (!first)
            continue;
        char spath[4096];
        if ((size_t)snprintf(spath, sizeof spath, "%s/%s", dir, shard) >= sizeof spath) {
            s = sl_ctx_fail(ctx, SL_EARG, "%s: shard path too long", ipath);
            break;
        }
        sl_named_tensor *ts = NULL;
        int nt = 0;
        if ((s = sl_safetensors_read(ctx, spath, &ts, &nt)))
            break;
        ld->path = spath;
        for (int i = 0; i < nt && !s; i++) {
            const cJSON *where = cJSON_GetObjectItemCaseSensitive(map, ts[i].name);
            if (!cJSON_IsString(where) || strcmp(where->valuestring, shard) != 0)
                s = tensor_fail(ld, SL_EFORMAT, ts[i].name, "expected only the tensors %s maps to %s, found one "
                                "it %s", ipath, shard, where ? "maps to another shard" : "does not list");
            else
                s = match(ld, &ts[i]);
        }
        sl_named_tensors_free(ctx, ts, nt);
        ld->path = ipath;
    }
    cJSON_Delete(root);
    return s;
}

sl_status sl_model_load_hf(sl_ctx *ctx, const char *dir, sl_model **out)
{
    *out = NULL;
    char cpath[4096], wpath[4096];
    if (!dir || (size_t)snprintf(cpath, sizeof cpath, "%s/config.json", dir) >= sizeof cpath)
        return sl_ctx_fail(ctx, SL_EARG, "sl_model_load_hf: expected a directory path of at most 4000 bytes");
    snprintf(wpath, sizeof wpath, "%s/model.safetensors", dir);
    hf_config h;
    sl_model_config c;
    sl_named_tensor *ts = NULL;
    int n = 0;
    sl_model *m = NULL;
    sl_status s = read_config(ctx, cpath, &h);
    if (s || (s = make_config(ctx, cpath, &h, &c)))
        return s;
    /* no model.safetensors but an index: a sharded checkpoint */
    char ipath[4096];
    struct stat sb;
    snprintf(ipath, sizeof ipath, "%s/model.safetensors.index.json", dir);
    int sharded = stat(wpath, &sb) != 0 && errno == ENOENT && stat(ipath, &sb) == 0;
    if (!sharded && (s = sl_safetensors_read(ctx, wpath, &ts, &n)))
        return s;
    loader ld = {ctx, sharded ? ipath : wpath, NULL, h.tie};
    if (!(s = sl__model_new(ctx, &c, &ld.m))) {
        if (sharded)
            s = load_shards(&ld, dir, ipath);
        for (int i = 0; i < n && !s; i++)
            s = match(&ld, &ts[i]);
        if (!s)
            s = check_complete(&ld);
        m = ld.m;
    }
    sl_named_tensors_free(ctx, ts, n);
    if (s) {
        sl_model_free(ctx, m);
        return s;
    }
    if (h.tie)
        m->wcls = sl_tensor_retain(&m->tok_emb);
    *out = m;
    return SL_OK;
}
