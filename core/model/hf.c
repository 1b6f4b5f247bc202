/* model/hf.c — the Hugging Face LLaMA loader: config.json through a small
 * strict JSON reader that keeps only the keys the runner needs, then
 * model.safetensors, each tensor matched to its slot by name, checked for
 * dtype, shape and finite values, and converted to f32. What the runner
 * cannot reproduce exactly (scaled RoPE, biases, another activation or
 * architecture) is refused rather than approximated. */
#include "model.h"

#include <errno.h>
#include <locale.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* Real configs are a few kilobytes; the cap keeps a wrong file from being slurped. */
#define CONFIG_MAX_BYTES ((long long)1 << 20)
/* Unknown values are skipped recursively; deeper nesting is refused, not followed. */
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

typedef struct json {
    sl_ctx *ctx;
    const char *path;
    const char *begin, *p, *end;
    const char *key; /* the member being read, for messages; NULL at the top */
} json;

/* "<path>: byte N: [key 'k': ]expected X, found Y" */
static sl_status jfail(const json *j, const char *expected)
{
    char found[32] = "the end of the file";
    unsigned char c = j->p < j->end ? (unsigned char)*j->p : 0;
    if (j->p < j->end)
        snprintf(found, sizeof found, c < 0x20 || c >= 0x7f ? "byte 0x%02x" : "'%c'", c);
    return sl_ctx_fail(j->ctx, SL_EFORMAT, "%s: byte %lld: %s%s%sexpected %s, found %s", j->path,
                       (long long)(j->p - j->begin), j->key ? "key '" : "", j->key ? j->key : "",
                       j->key ? "': " : "", expected, found);
}

/* Skips white space; then 1 (and consumes it) when c is next. jeat(j, ' ')
 * only skips white space. */
static int jeat(json *j, char c)
{
    while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r'))
        j->p++;
    if (j->p >= j->end || *j->p != c)
        return 0;
    j->p++;
    return 1;
}

/* A string; its first cap-1 bytes and a NUL go to buf (when not NULL), its
 * length to *len. Only ASCII matters to us, so \u escapes above 0x7f become
 * one 0xff byte. */
static sl_status jstring(json *j, char *buf, size_t cap, size_t *len)
{
    static const char from[] = "\"\\/bfnrtu", to[] = "\"\\/\b\f\n\r\t", hex[] = "0123456789abcdef0123456789ABCDEF";
    if (!jeat(j, '"'))
        return jfail(j, "a string");
    size_t n = 0;
    for (;; n++) {
        if (j->p >= j->end || (unsigned char)*j->p < 0x20)
            return jfail(j, "the closing '\"' of a string (control characters escaped)");
        unsigned char c = (unsigned char)*j->p++;
        if (c == '"')
            break;
        if (c == '\\') {
            const char *e = j->p < j->end ? memchr(from, *j->p, sizeof from - 1) : NULL;
            if (!e)
                return jfail(j, "an escape (one of \" \\ / b f n r t u)");
            unsigned v = (unsigned char)to[e - from];
            for (int i = 1; *e == 'u' && i <= 4; i++) {
                const char *h = j->p + i < j->end ? memchr(hex, j->p[i], sizeof hex - 1) : NULL;
                if (!h) {
                    j->p += i;
                    return jfail(j, "four hex digits after \\u");
                }
                v = (i == 1 ? 0 : v << 4) | (unsigned)((h - hex) % 16);
            }
            c = v < 0x80 ? (unsigned char)v : 0xff;
            j->p += *e == 'u' ? 5 : 1;
        }
        if (buf && n + 1 < cap)
            buf[n] = (char)c;
    }
    if (buf)
        buf[n < cap ? n : cap - 1] = '\0';
    *len = n;
    return SL_OK;
}

static const char *digits(const char *p, const char *end)
{
    while (p < end && *p >= '0' && *p <= '9')
        p++;
    return p;
}

/* A number in JSON's grammar, converted by strtod. */
static sl_status jnumber(json *j, double *v)
{
    const char *s = j->p, *e = j->end, *d;
    j->p += j->p < e && *j->p == '-';
    if (j->p >= e || *j->p < '0' || *j->p > '9')
        return jfail(j, "a number");
    j->p = *j->p == '0' ? j->p + 1 : digits(j->p, e);
    if (j->p < e && *j->p == '.') {
        d = j->p + 1;
        if ((j->p = digits(d, e)) == d)
            return jfail(j, "a digit after '.'");
    }
    if (j->p < e && (*j->p == 'e' || *j->p == 'E')) {
        d = j->p + 1 + (j->p + 1 < e && (j->p[1] == '+' || j->p[1] == '-'));
        if ((j->p = digits(d, e)) == d)
            return jfail(j, "a digit in the exponent");
    }
    char tmp[64], *dot;
    size_t n = (size_t)(j->p - s);
    if (n < sizeof tmp) {
        memcpy(tmp, s, n);
        tmp[n] = '\0';
        /* strtod reads the locale's decimal point; a host program may have set one. */
        if ((dot = strchr(tmp, '.')) != NULL)
            *dot = *localeconv()->decimal_point;
        *v = strtod(tmp, NULL);
    }
    if (n >= sizeof tmp || !isfinite(*v)) {
        j->p = s;
        return jfail(j, "a number of at most 63 characters within double range");
    }
    return SL_OK;
}

/* One value: kind 'n' (num), 's' (str: first bytes, NUL, full length in
 * len), 't', 'f', '0' (null), or '{' / '[' (read through, contents dropped). */
typedef struct jval {
    int kind;
    double num;
    char str[32];
    size_t len;
} jval;

static sl_status jvalue(json *j, int depth, jval *v)
{
    static const char *const lits[3] = {"true", "false", "null"};
    sl_status s;
    jeat(j, ' ');
    char c = j->p < j->end ? *j->p : '\0';
    v->kind = c == '"' ? 's' : c == '-' || (c >= '0' && c <= '9') ? 'n' : c == '{' || c == '[' ? c : 0;
    if (v->kind == 's')
        return jstring(j, v->str, sizeof v->str, &v->len);
    if (v->kind == 'n')
        return jnumber(j, &v->num);
    for (int i = 0; i < 3 && !v->kind; i++)
        if ((size_t)(j->end - j->p) >= strlen(lits[i]) && memcmp(j->p, lits[i], strlen(lits[i])) == 0) {
            j->p += strlen(lits[i]);
            v->kind = "tf0"[i];
        }
    if (v->kind != '{' && v->kind != '[')
        return v->kind ? SL_OK : jfail(j, "a JSON value");
    if (depth >= JSON_MAX_DEPTH)
        return jfail(j, "nesting of at most 64 levels");
    char close = c == '{' ? '}' : ']';
    j->p++;
    if (jeat(j, close))
        return SL_OK;
    jval inner;
    do {
        if (c == '{' && ((s = jstring(j, NULL, 0, &inner.len)) || (!jeat(j, ':') && (s = jfail(j, "':'")))))
            return s;
        if ((s = jvalue(j, depth + 1, &inner)))
            return s;
    } while (jeat(j, ','));
    return jeat(j, close) ? SL_OK : jfail(j, c == '{' ? "',' or '}'" : "',' or ']'");
}

/* Numeric keys; those before K_EPS hold integers, those before K_KV are required. */
enum { K_HIDDEN, K_INTER, K_LAYERS, K_HEADS, K_VOCAB, K_KV, K_MAXPOS, K_HEAD_DIM, K_SLIDING, K_EPS, K_THETA, K__COUNT };
static const char *const num_keys[K__COUNT] = {
    "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size",
    "num_key_value_heads", "max_position_embeddings", "head_dim", "sliding_window", "rms_norm_eps", "rope_theta"};

typedef struct hf_config {
    double v[K__COUNT];
    int set[K__COUNT];
    int tie;
} hf_config;

/* Takes the value v of key (read from `at`) when it is one we need. */
static sl_status config_member(json *j, const char *key, const jval *v, const char *at, hf_config *c)
{
    char word[40], shown[32];
    j->p = at; /* messages point at the value */
    for (int k = 0; k < K__COUNT; k++)
        if (strcmp(key, num_keys[k]) == 0) {
            /* null means "the default", as in transformers */
            if (v->kind != '0' && (v->kind != 'n' || (k < K_EPS && (v->num != floor(v->num) || fabs(v->num) > 1e15))))
                return jfail(j, k < K_EPS ? "an integer or null" : "a number or null");
            c->v[k] = v->kind == 'n' ? v->num : 0;
            c->set[k] = v->kind == 'n';
            return SL_OK;
        }
    if (strcmp(key, "tie_word_embeddings") == 0) {
        if (v->kind != 't' && v->kind != 'f' && v->kind != '0')
            return jfail(j, "true, false or null");
        c->tie = v->kind == 't';
    } else if (strcmp(key, "rope_scaling") == 0 && v->kind != '0') {
        return sl_ctx_fail(j->ctx, SL_EUNSUPPORTED, "%s: key 'rope_scaling': expected null, found a setting: scaled "
                           "RoPE (linear, dynamic, yarn, llama3) is not supported, only plain RoPE", j->path);
    } else if (strcmp(key, "model_type") == 0 || strcmp(key, "hidden_act") == 0) {
        int arch = key[0] == 'm';
        const char *allowed = arch ? " llama mistral " : " silu ";
        if (v->kind == '0')
            return SL_OK;
        if (v->kind != 's')
            return jfail(j, "a string or null");
        snprintf(word, sizeof word, " %s ", v->str);
        if (v->len < sizeof v->str && strlen(v->str) == v->len && !strchr(v->str, ' ') && strstr(allowed, word))
            return SL_OK;
        clean(shown, sizeof shown, v->str, v->len < sizeof v->str ? v->len : sizeof v->str);
        return sl_ctx_fail(j->ctx, SL_EUNSUPPORTED, "%s: key '%s': expected %s, found \"%s\": %s", j->path, key,
                           arch ? "\"llama\" or \"mistral\"" : "\"silu\"", shown,
                           arch ? "only the LLaMA architecture is supported" : "the runner's feed-forward is SwiGLU");
    }
    return SL_OK;
}

static sl_status parse_config(json *j, hf_config *c)
{
    if (!jeat(j, '{'))
        return jfail(j, "a JSON object");
    for (int done = jeat(j, '}'); !done;) {
        char key[64], shown[64];
        size_t len;
        jval v;
        sl_status s = jstring(j, key, sizeof key, &len);
        if (s)
            return s;
        clean(shown, sizeof shown, key, len < sizeof key ? len : sizeof key);
        j->key = shown;
        if (!jeat(j, ':'))
            return jfail(j, "':'");
        jeat(j, ' ');
        const char *at = j->p, *after;
        if ((s = jvalue(j, 1, &v)))
            return s;
        after = j->p;
        /* A longer key, or one with a NUL inside, is none of ours. */
        if ((s = config_member(j, len < sizeof key && strlen(key) == len ? key : "", &v, at, c)))
            return s;
        j->p = after;
        j->key = NULL;
        if (!(done = jeat(j, '}')) && !jeat(j, ','))
            return jfail(j, "',' or '}'");
    }
    jeat(j, ' ');
    return j->p == j->end ? SL_OK : jfail(j, "the end of the file after the object");
}

static sl_status read_config(sl_ctx *ctx, const char *path, hf_config *c)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return sl_ctx_fail(ctx, SL_EIO, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    sl_status s = SL_OK;
    char *text = NULL;
    size_t n = 0;
    if (fstat(fileno(f), &sb) != 0 || !S_ISREG(sb.st_mode))
        s = sl_ctx_fail(ctx, SL_EIO, "%s: expected a regular file", path);
    else if ((long long)sb.st_size > CONFIG_MAX_BYTES)
        s = sl_ctx_fail(ctx, SL_EFORMAT, "%s: expected at most %lld bytes of JSON, found %lld", path,
                        CONFIG_MAX_BYTES, (long long)sb.st_size);
    else if (!(text = sl_ctx_alloc(ctx, (n = (size_t)sb.st_size) + 1)))
        s = SL_ENOMEM;
    else if (fread(text, 1, n, f) != n)
        s = sl_ctx_fail(ctx, SL_EIO, "%s: expected %zu bytes, the read stopped short", path, n);
    fclose(f);
    memset(c, 0, sizeof *c);
    if (!s) {
        json j = {ctx, path, text, text, text + n, NULL};
        s = parse_config(&j, c);
    }
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
    if (s || (s = make_config(ctx, cpath, &h, &c)) || (s = sl_safetensors_read(ctx, wpath, &ts, &n)))
        return s;
    loader ld = {ctx, wpath, NULL, h.tie};
    if (!(s = sl__model_new(ctx, &c, &ld.m))) {
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
