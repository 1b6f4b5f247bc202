/* l_model.c — the transformer runner and tokenizer in Lua: sl.model_c.load
 * (llama2.c file or Hugging Face directory), model:forward(tokens, state,
 * hook) where hook(layer, q, k, v) returns the attention output, KV-cache
 * states, and sl.tokenizer_c.load with encode/decode. Policy (schedules,
 * metrics, capture) is Lua: sparselab/model.lua. */
#include "l_model.h"
#include "l_tensor.h"

#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#define SL_LUA_MODEL "sparselab.model"
#define SL_LUA_STATE "sparselab.model_state"
#define SL_LUA_TOKENIZER "sparselab.tokenizer"

typedef struct l_model { sl_model *m; sl_model_exec *ex; sl_model_moe *moe; } l_model;
typedef struct l_state { sl_model_state *st; } l_state;
typedef struct l_tok { sl_tokenizer *t; } l_tok;

static l_model *check_model(lua_State *L, int idx)
{
    l_model *u = luaL_checkudata(L, idx, SL_LUA_MODEL);
    if (!u->m)
        luaL_argerror(L, idx, "model was closed");
    return u;
}

static l_state *check_state(lua_State *L, int idx)
{
    l_state *u = luaL_checkudata(L, idx, SL_LUA_STATE);
    if (!u->st)
        luaL_argerror(L, idx, "model state was closed");
    return u;
}

/* sl.model_c.load(path): a directory is a Hugging Face model, a file a llama2.c checkpoint. */
static int l_load(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    sl_ctx *ctx = sl__lua_ctx(L)->ctx;
    struct stat st;
    l_model *u = lua_newuserdatauv(L, sizeof *u, 0);
    u->m = NULL;
    u->ex = NULL;
    u->moe = NULL;
    luaL_setmetatable(L, SL_LUA_MODEL);
    sl_status s = stat(path, &st) == 0 && S_ISDIR(st.st_mode) ? sl_model_load_hf(ctx, path, &u->m)
                                                               : sl_model_load_llama2c(ctx, path, &u->m);
    if (s)
        return sl__lua_fail(L, ctx);
    return 1;
}

static int m_config(lua_State *L)
{
    const sl_model_config *c = &check_model(L, 1)->m->cfg;
    lua_createtable(L, 0, 12);
    const char *names[] = {"dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "head_dim", "vocab_size",
                           "seq_len"};
    int64_t vals[] = {c->dim, c->hidden_dim, c->n_layers, c->n_heads, c->n_kv_heads, c->head_dim, c->vocab_size,
                      c->seq_len};
    for (int i = 0; i < 8; i++) {
        lua_pushinteger(L, vals[i]);
        lua_setfield(L, -2, names[i]);
    }
    lua_pushnumber(L, c->rope_theta);
    lua_setfield(L, -2, "rope_theta");
    lua_pushnumber(L, c->norm_eps);
    lua_setfield(L, -2, "norm_eps");
    lua_pushstring(L, c->rope_style == SL_ROPE_PAIRS ? "pairs" : "half");
    lua_setfield(L, -2, "rope_style");
    lua_pushnumber(L, c->rope_factor);   /* 0: plain RoPE; > 0: Llama 3 scaling */
    lua_setfield(L, -2, "rope_factor");
    return 1;
}

/* model:state(capacity) -> a new, empty KV cache */
static int m_state(lua_State *L)
{
    l_model *u = check_model(L, 1);
    lua_Integer cap = luaL_optinteger(L, 2, u->m->cfg.seq_len);
    sl_ctx *ctx = sl__lua_ctx(L)->ctx;
    l_state *s = lua_newuserdatauv(L, sizeof *s, 0);
    s->st = NULL;
    luaL_setmetatable(L, SL_LUA_STATE);
    if (sl_model_state_new(ctx, u->m, cap, &s->st))
        return sl__lua_fail(L, ctx);
    return 1;
}

static int s_len(lua_State *L)
{
    lua_pushinteger(L, check_state(L, 1)->st->n);
    return 1;
}

/* state:reset([n]) forgets every cached position past n (default 0). */
static int s_reset(lua_State *L)
{
    l_state *s = check_state(L, 1);
    lua_Integer n = luaL_optinteger(L, 2, 0);
    if (n < 0 || n > s->st->n)
        return sl__lua_error(L, "state:reset: n = %I, expected 0..%I", (lua_Integer)n, (lua_Integer)s->st->n);
    s->st->n = n;
    return 0;
}

/* The hook's Lua side: the function sits at stack index `fn` of L. */
typedef struct hook_ud { lua_State *L; int fn; } hook_ud;

static sl_status lua_hook(void *p, sl_ctx *ctx, int layer, const sl_tensor *q, const sl_tensor *k,
                          const sl_tensor *v, sl_tensor *o)
{
    hook_ud *h = p;
    lua_State *L = h->L;
    int top = lua_gettop(L);
    lua_pushvalue(L, h->fn);
    lua_pushinteger(L, layer);
    sl__lua_push_tensor(L, sl_tensor_retain(q));
    sl__lua_push_tensor(L, sl_tensor_retain(k));
    sl__lua_push_tensor(L, sl_tensor_retain(v));
    if (lua_pcall(L, 4, 1, 0) != LUA_OK) {
        sl_status s = sl_ctx_fail(ctx, SL_EARG, "%s", lua_tostring(L, -1) ? lua_tostring(L, -1) : "attention hook failed");
        lua_settop(L, top);
        return s;
    }
    sl_lua_tensor *t = sl__lua_test_tensor(L, -1);
    if (!t || !t->t.buf) {
        lua_settop(L, top);
        return sl_ctx_fail(ctx, SL_EARG, "model: the attention hook of layer %d returned no tensor", layer);
    }
    /* Copy to an f32 contiguous tensor the forward pass can own. */
    sl_status s = sl_tensor_convert(ctx, &t->t, SL_F32, o);
    lua_settop(L, top);
    return s;
}

/* The site hook's Lua side (issue 17): fn(layer, site, x) with x a copy
 * [n, width]; a returned tensor of that shape replaces the activations. */
static sl_status lua_site(void *p, sl_ctx *ctx, int layer, const char *site, float *x, int64_t n, int64_t width)
{
    hook_ud *h = p;
    lua_State *L = h->L;
    int top = lua_gettop(L);
    sl_tensor t;
    int64_t sh[2] = {n, width};
    sl_status s = sl_tensor_new(ctx, SL_F32, 2, sh, &t);
    if (s)
        return s;
    memcpy(t.data, x, sizeof(float) * (size_t)(n * width));
    lua_pushvalue(L, h->fn);
    lua_pushinteger(L, layer);
    lua_pushstring(L, site);
    sl__lua_push_tensor(L, t);
    if (lua_pcall(L, 3, 1, 0) != LUA_OK) {
        s = sl_ctx_fail(ctx, SL_EARG, "%s", lua_tostring(L, -1) ? lua_tostring(L, -1) : "site hook failed");
        lua_settop(L, top);
        return s;
    }
    sl_lua_tensor *r = sl__lua_test_tensor(L, -1);
    if (r && r->t.buf) {
        if (r->t.ndim != 2 || r->t.shape[0] != n || r->t.shape[1] != width) {
            lua_settop(L, top);
            return sl_ctx_fail(ctx, SL_EARG, "model: the %s hook of layer %d returned a tensor not [%lld, %lld]", site,
                               layer, (long long)n, (long long)width);
        }
        sl_tensor c;
        if ((s = sl_tensor_convert(ctx, &r->t, SL_F32, &c)) == SL_OK) {
            memcpy(x, c.data, sizeof(float) * (size_t)(n * width));
            sl_tensor_release(&c);
        }
    }
    lua_settop(L, top);
    return s;
}

/* model:weight(name) -> the weight tensor (shares the model's buffer). */
static int m_weight(lua_State *L)
{
    l_model *u = check_model(L, 1);
    const char *name = luaL_checkstring(L, 2);
    sl_tensor *w = sl_model_weight(u->m, name);
    if (!w)
        return sl__lua_error(L, "model:weight: no weight called '%s' (tok_emb, rms_final, wcls, layers.L.wq ...)", name);
    sl__lua_push_tensor(L, sl_tensor_retain(w));
    return 1;
}

/* model:set_weight(name, t): an f32 copy of t (same shape) replaces the weight. */
static int m_set_weight(lua_State *L)
{
    l_model *u = check_model(L, 1);
    const char *name = luaL_checkstring(L, 2);
    sl_lua_tensor *t = sl__lua_test_tensor(L, 3);
    sl_tensor *w = sl_model_weight(u->m, name);
    if (!w)
        return sl__lua_error(L, "model:set_weight: no weight called '%s'", name);
    if (!t || !t->t.buf || t->t.ndim != w->ndim || memcmp(t->t.shape, w->shape, sizeof(int64_t) * (size_t)w->ndim))
        return sl__lua_error(L, "model:set_weight: '%s' needs a tensor of its shape", name);
    sl_ctx *ctx = sl__lua_ctx(L)->ctx;
    sl_tensor c;
    if (sl_tensor_convert(ctx, &t->t, SL_F32, &c))
        return sl__lua_fail(L, ctx);
    sl_tensor_release(w);
    *w = c;
    int layer;
    char kind[8];
    if (u->ex && sscanf(name, "layers.%d.%7s", &layer, kind) == 2 && sl_model_exec_format(u->ex, layer, kind) > 0 &&
        sl_model_exec_set(ctx, u->ex, u->m, layer, kind, SL_EXEC_DENSE, 0, 0))
        return sl__lua_fail(L, ctx); /* a replaced weight runs dense until set again */
    if (u->moe && sscanf(name, "layers.%d.%7s", &layer, kind) == 2 &&
        (!strcmp(kind, "w1") || !strcmp(kind, "w2") || !strcmp(kind, "w3")))
        sl_model_moe_unset(u->moe, layer); /* the MoE's copies are stale: that FFN runs dense until set again */
    return 0;
}

/* ---- the runner's sparse executors (issue 17, session 3) ---- */

static sl_model_exec *model_exec(lua_State *L, l_model *u)
{
    sl_ctx *ctx = sl__lua_ctx(L)->ctx;
    if (!u->ex && sl_model_exec_new(ctx, u->m, SL_BACKEND_CPU, &u->ex))
        sl__lua_fail(L, ctx);
    return u->ex;
}

/* model:exec_set(layer or -1, name, format [, n, m]): format "dense", "nm",
 * "bitmap", "act" or "auto"; creates the exec (cpu) on first use. */
static int m_exec_set(lua_State *L)
{
    l_model *u = check_model(L, 1);
    int layer = (int)luaL_optinteger(L, 2, -1);
    const char *name = luaL_checkstring(L, 3);
    static const char *const fmts[] = {"dense", "nm", "bitmap", "act", "auto", NULL};
    int f = luaL_checkoption(L, 4, NULL, fmts);
    int n = (int)luaL_optinteger(L, 5, 2), mm = (int)luaL_optinteger(L, 6, 4);
    sl_ctx *ctx = sl__lua_ctx(L)->ctx;
    if (sl_model_exec_set(ctx, model_exec(L, u), u->m, layer, name, (sl_exec_format)f, n, mm))
        return sl__lua_fail(L, ctx);
    return 0;
}

/* model:exec_gate(layer or -1, theta): w3 runs output-sparse on the gate support
 * |silu(g)| >= theta (f32 [hidden] or [n_layers, hidden] for -1). */
static int m_exec_gate(lua_State *L)
{
    l_model *u = check_model(L, 1);
    int layer = (int)luaL_checkinteger(L, 2);
    sl_lua_tensor *t = sl__lua_test_tensor(L, 3);
    if (!t)
        return sl__lua_error(L, "model:exec_gate: expected a tensor of thresholds");
    sl_ctx *ctx = sl__lua_ctx(L)->ctx;
    sl_tensor c;
    if (sl_tensor_convert(ctx, &t->t, SL_F32, &c))
        return sl__lua_fail(L, ctx);
    sl_status s = sl_model_exec_set_gate(ctx, model_exec(L, u), u->m, layer, &c);
    sl_tensor_release(&c);
    if (s)
        return sl__lua_fail(L, ctx);
    return 0;
}

/* model:exec_backend(name): a new exec on that backend (every weight dense). */
static int m_exec_backend(lua_State *L)
{
    l_model *u = check_model(L, 1);
    int b = sl_backend_from_name(luaL_checkstring(L, 2));
    if (b < 0)
        return sl__lua_error(L, "model:exec_backend: expected ref, cpu or cuda, found '%s'", lua_tostring(L, 2));
    sl_ctx *ctx = sl__lua_ctx(L)->ctx;
    sl_model_exec *e;
    if (sl_model_exec_new(ctx, u->m, (sl_backend_id)b, &e))
        return sl__lua_fail(L, ctx);
    sl_model_exec_free(ctx, u->ex);
    u->ex = e;
    return 0;
}

/* model:exec_off(): frees the exec; the runner multiplies densely, untimed. */
static int m_exec_off(lua_State *L)
{
    l_model *u = check_model(L, 1);
    sl_model_exec_free(sl__lua_ctx(L)->ctx, u->ex);
    u->ex = NULL;
    return 0;
}

static int m_exec_threshold(lua_State *L)
{
    l_model *u = check_model(L, 1);
    sl_model_exec_set_threshold(model_exec(L, u), luaL_checknumber(L, 2));
    return 0;
}

/* model:exec_min_macs(macs): products below it stay dense (counted in stats' small) */
static int m_exec_min_macs(lua_State *L)
{
    l_model *u = check_model(L, 1);
    sl_model_exec_set_min_macs(model_exec(L, u), luaL_checknumber(L, 2));
    return 0;
}

/* model:exec_crossover({{rows =, rho =}, ...} or nil): mm.act_sparse's
 * measured rho* per activation row count (sl_model_exec_set_crossover); nil
 * or {} clears it. */
static int m_exec_crossover(lua_State *L)
{
    l_model *u = check_model(L, 1);
    int64_t rows[SL_EXEC_MAX_CROSSOVER];
    double rho[SL_EXEC_MAX_CROSSOVER];
    int n = 0;
    if (!lua_isnoneornil(L, 2)) {
        luaL_checktype(L, 2, LUA_TTABLE);
        lua_Integer len = luaL_len(L, 2);
        if (len > SL_EXEC_MAX_CROSSOVER)
            return luaL_error(L, "model exec: expected at most %d crossover points, found %d", SL_EXEC_MAX_CROSSOVER,
                              (int)len);
        for (lua_Integer i = 1; i <= len; i++, n++) {
            lua_geti(L, 2, i);
            luaL_checktype(L, -1, LUA_TTABLE);
            lua_getfield(L, -1, "rows");
            lua_getfield(L, -2, "rho");
            if (!lua_isinteger(L, -2) || !lua_isnumber(L, -1))
                return luaL_error(L, "model exec: crossover point %d must be {rows = integer, rho = number}", (int)i);
            rows[n] = (int64_t)lua_tointeger(L, -2);
            rho[n] = lua_tonumber(L, -1);
            lua_pop(L, 3);
        }
    }
    sl_ctx *ctx = sl__lua_ctx(L)->ctx;
    if (sl_model_exec_set_crossover(ctx, model_exec(L, u), n, rows, rho))
        sl__lua_fail(L, ctx);
    return 0;
}

/* model:exec_spark(layer or -1, k, r, gate_up): w1 and w3 through Spark's
 * predictor and mm.out_sparse (sl_model_exec_set_spark). */
static int m_exec_spark(lua_State *L)
{
    l_model *u = check_model(L, 1);
    int layer = (int)luaL_checkinteger(L, 2);
    int k = (int)luaL_checkinteger(L, 3), r = (int)luaL_optinteger(L, 4, 0);
    int gate_up = lua_isnoneornil(L, 5) ? 1 : lua_toboolean(L, 5);
    sl_ctx *ctx = sl__lua_ctx(L)->ctx;
    if (sl_model_exec_set_spark(ctx, model_exec(L, u), layer, k, r, gate_up))
        return sl__lua_fail(L, ctx);
    return 0;
}

/* model:exec_format(layer, name) -> "dense" | "nm" | "bitmap" | "act" | nil */
static int m_exec_format(lua_State *L)
{
    l_model *u = check_model(L, 1);
    static const char *const fmts[] = {"dense", "nm", "bitmap", "act", "auto", "gated", "spark"};
    int f = u->ex ? sl_model_exec_format(u->ex, (int)luaL_checkinteger(L, 2), luaL_checkstring(L, 3)) : -1;
    if (f < 0 || f > 6)
        lua_pushnil(L);
    else
        lua_pushstring(L, fmts[f]);
    return 1;
}

/* model:exec_stats([reset]) -> {wq = {seconds, calls, rows, flops}, ...} summed over layers. */
static int m_exec_stats(lua_State *L)
{
    l_model *u = check_model(L, 1);
    static const char *const kinds[SL_EXEC_KINDS] = {"wq", "wk", "wv", "wo", "w1", "w3", "w2"};
    lua_createtable(L, 0, SL_EXEC_KINDS);
    for (int k = 0; u->ex && k < SL_EXEC_KINDS; k++) {
        sl_exec_stat t = sl_model_exec_stat(u->ex, k);
        lua_createtable(L, 0, 5);
        lua_pushnumber(L, t.seconds);
        lua_setfield(L, -2, "seconds");
        lua_pushinteger(L, (lua_Integer)t.calls);
        lua_setfield(L, -2, "calls");
        lua_pushinteger(L, (lua_Integer)t.rows);
        lua_setfield(L, -2, "rows");
        lua_pushnumber(L, t.flops);
        lua_setfield(L, -2, "flops");
        lua_pushinteger(L, (lua_Integer)t.small);
        lua_setfield(L, -2, "small");
        lua_pushinteger(L, (lua_Integer)t.over_rho);
        lua_setfield(L, -2, "over_rho");
        lua_setfield(L, -2, kinds[k]);
    }
    if (u->ex && lua_toboolean(L, 2))
        sl_model_exec_reset(u->ex);
    return 1;
}

/* ---- the routed MoE FFN (issue 17, session 4) ---- */

/* model:moe_on(experts, k, softmax, scale [, backend]): a new MoE (no layer set). */
static int m_moe_on(lua_State *L)
{
    l_model *u = check_model(L, 1);
    int E = (int)luaL_checkinteger(L, 2), k = (int)luaL_checkinteger(L, 3), sm = lua_toboolean(L, 4);
    double scale = luaL_optnumber(L, 5, 1.0);
    int b = sl_backend_from_name(luaL_optstring(L, 6, "cpu"));
    if (b < 0)
        return sl__lua_error(L, "model:moe_on: expected backend ref, cpu or cuda, found '%s'", luaL_optstring(L, 6, "cpu"));
    sl_ctx *ctx = sl__lua_ctx(L)->ctx;
    sl_model_moe *mo;
    if (sl_model_moe_new(ctx, u->m, (sl_backend_id)b, E, k, sm, scale, &mo))
        return sl__lua_fail(L, ctx);
    sl_model_moe_free(ctx, u->moe);
    u->moe = mo;
    return 0;
}

/* model:moe_layer(layer, router [E, dim], expert i32 [hidden]) */
static int m_moe_layer(lua_State *L)
{
    l_model *u = check_model(L, 1);
    if (!u->moe)
        return sl__lua_error(L, "model:moe_layer: call model:moe_on first");
    int layer = (int)luaL_checkinteger(L, 2);
    sl_lua_tensor *r = sl__lua_check_tensor(L, 3), *e = sl__lua_check_tensor(L, 4);
    sl_ctx *ctx = sl__lua_ctx(L)->ctx;
    sl_tensor rc, ec;
    if (sl_tensor_convert(ctx, &r->t, SL_F32, &rc))
        return sl__lua_fail(L, ctx);
    if (sl_tensor_convert(ctx, &e->t, SL_I32, &ec)) {
        sl_tensor_release(&rc);
        return sl__lua_fail(L, ctx);
    }
    sl_status s = sl_model_moe_set(ctx, u->moe, u->m, layer, &rc, &ec);
    sl_tensor_release(&rc);
    sl_tensor_release(&ec);
    if (s)
        return sl__lua_fail(L, ctx);
    return 0;
}

/* model:moe_off(): the FFNs run densely again. */
static int m_moe_off(lua_State *L)
{
    l_model *u = check_model(L, 1);
    sl_model_moe_free(sl__lua_ctx(L)->ctx, u->moe);
    u->moe = NULL;
    return 0;
}

/* model:moe_stats([reset]) -> {seconds, calls, rows, pairs, units, flops, dense_flops, load = {pairs per
 * expert id, up to the last used}} or nil */
static int m_moe_stats(lua_State *L)
{
    l_model *u = check_model(L, 1);
    if (!u->moe) {
        lua_pushnil(L);
        return 1;
    }
    sl_moe_stat t = sl_model_moe_stat(u->moe);
    lua_createtable(L, 0, 8);
    lua_pushnumber(L, t.seconds);
    lua_setfield(L, -2, "seconds");
    lua_pushinteger(L, (lua_Integer)t.calls);
    lua_setfield(L, -2, "calls");
    lua_pushinteger(L, (lua_Integer)t.rows);
    lua_setfield(L, -2, "rows");
    lua_pushinteger(L, (lua_Integer)t.pairs);
    lua_setfield(L, -2, "pairs");
    lua_pushinteger(L, (lua_Integer)t.units);
    lua_setfield(L, -2, "units");
    lua_pushnumber(L, t.flops);
    lua_setfield(L, -2, "flops");
    lua_pushnumber(L, t.dense_flops);
    lua_setfield(L, -2, "dense_flops");
    int last = 0;
    for (int e = 0; e < SL_MOE_MAX_EXPERTS; e++)
        if (t.load[e])
            last = e + 1;
    lua_createtable(L, last, 0);
    for (int e = 0; e < last; e++) {
        lua_pushinteger(L, (lua_Integer)t.load[e]);
        lua_rawseti(L, -2, e + 1);
    }
    lua_setfield(L, -2, "load");
    if (lua_toboolean(L, 2))
        sl_model_moe_reset(u->moe);
    return 1;
}

/* The linear hook of a forward: the MoE's FFN products first, then the exec's. */
static sl_status chain_linear(void *ud, sl_ctx *ctx, int layer, const char *name, const float *x, int64_t n,
                              const sl_tensor *w, float *y, int *done)
{
    l_model *u = ud;
    if (u->moe) {
        sl_status s = sl_model_moe_linear(u->moe, ctx, layer, name, x, n, w, y, done);
        if (s || *done)
            return s;
    }
    return u->ex ? sl_model_exec_linear(u->ex, ctx, layer, name, x, n, w, y, done) : SL_OK;
}

/* model:forward(tokens, state [, hook [, site]]) -> logits [n, vocab]. tokens
 * is a table of ids or an i32 tensor; hook(layer, q, k, v) -> o, layer
 * 0-based; site(layer, name, x) -> nil or a replacement (lua_site). */
static int m_forward(lua_State *L)
{
    l_model *u = check_model(L, 1);
    l_state *s = check_state(L, 3);
    sl_ctx *ctx = sl__lua_ctx(L)->ctx;
    lua_settop(L, 5); /* the hooks keep slots 4 and 5 whatever follows on the stack */
    int64_t n;
    const int32_t *ids;
    sl_lua_tensor *tt = sl__lua_test_tensor(L, 2);
    if (tt) {
        if (tt->t.dtype != SL_I32 || tt->t.ndim != 1 || !sl_tensor_is_contiguous(&tt->t))
            return sl__lua_error(L, "model:forward: tokens must be an i32 vector or a table of ids");
        n = tt->t.shape[0];
        ids = tt->t.data;
    } else {
        luaL_checktype(L, 2, LUA_TTABLE);
        n = (int64_t)luaL_len(L, 2);
        int32_t *buf = lua_newuserdatauv(L, sizeof(int32_t) * (size_t)(n > 0 ? n : 1), 0);
        for (int64_t i = 0; i < n; i++) {
            lua_geti(L, 2, i + 1);
            int isnum;
            lua_Integer id = lua_tointegerx(L, -1, &isnum);
            if (!isnum || id < INT32_MIN || id > INT32_MAX)
                return sl__lua_error(L, "model:forward: token %I is not an integer id", (lua_Integer)(i + 1));
            buf[i] = (int32_t)id;
            lua_pop(L, 1);
        }
        ids = buf;
    }
    hook_ud h = {L, 4};
    int has_hook = !lua_isnoneornil(L, 4);
    if (has_hook)
        luaL_checktype(L, 4, LUA_TFUNCTION);
    hook_ud sh = {L, 5};
    sl_model_hooks hooks = {&sh, NULL, u, u->ex || u->moe ? chain_linear : NULL};
    if (!lua_isnoneornil(L, 5)) {
        luaL_checktype(L, 5, LUA_TFUNCTION);
        hooks.site = lua_site;
    }
    if (hooks.site || hooks.linear)
        u->m->hooks = &hooks;
    sl_tensor logits;
    sl_status st = sl_model_forward(ctx, u->m, s->st, ids, n, has_hook ? lua_hook : NULL, &h, &logits);
    u->m->hooks = NULL;
    if (st)
        return sl__lua_fail(L, ctx);
    sl__lua_push_tensor(L, logits);
    return 1;
}

static int m_close(lua_State *L)
{
    l_model *u = luaL_checkudata(L, 1, SL_LUA_MODEL);
    sl_model_exec_free(sl__lua_ctx(L)->ctx, u->ex);
    u->ex = NULL;
    sl_model_moe_free(sl__lua_ctx(L)->ctx, u->moe);
    u->moe = NULL;
    sl_model_free(sl__lua_ctx(L)->ctx, u->m);
    u->m = NULL;
    return 0;
}

static int s_close(lua_State *L)
{
    l_state *u = luaL_checkudata(L, 1, SL_LUA_STATE);
    sl_model_state_free(sl__lua_ctx(L)->ctx, u->st);
    u->st = NULL;
    return 0;
}

/* log p(j) of row r of logits [n, V] into lp (float64) and its argmax. */
static int64_t log_softmax_row(const float *x, int64_t V, double *lp)
{
    double mx = -HUGE_VAL, z = 0;
    int64_t best = 0;
    for (int64_t j = 0; j < V; j++)
        if (x[j] > mx) {
            mx = x[j];
            best = j;
        }
    for (int64_t j = 0; j < V; j++)
        z += exp((double)x[j] - mx);
    double lz = mx + log(z);
    for (int64_t j = 0; j < V; j++)
        lp[j] = (double)x[j] - lz;
    return best;
}

/* sl.model_c.compare(logits_ref, logits, tokens) -> {nll_ref, nll, kl, top1, n}
 * over positions 1..n-1 predicting tokens[i+1]: mean negative
 * log-likelihoods, mean KL(ref || other) of the next-token distributions, and
 * the fraction of positions with the same top-1 token. */
static int l_compare(lua_State *L)
{
    sl_lua_tensor *a = sl__lua_check_tensor(L, 1), *b = sl__lua_check_tensor(L, 2);
    luaL_checktype(L, 3, LUA_TTABLE);
    if (a->t.dtype != SL_F32 || b->t.dtype != SL_F32 || a->t.ndim != 2 || b->t.ndim != 2 ||
        a->t.shape[0] != b->t.shape[0] || a->t.shape[1] != b->t.shape[1] || !sl_tensor_is_contiguous(&a->t) ||
        !sl_tensor_is_contiguous(&b->t))
        return sl__lua_error(L, "model compare: expected two f32 logits tensors [n, vocab] of one shape");
    int64_t n = a->t.shape[0], V = a->t.shape[1];
    if ((int64_t)luaL_len(L, 3) != n)
        return sl__lua_error(L, "model compare: %I tokens for %I logit rows", (lua_Integer)luaL_len(L, 3), (lua_Integer)n);
    double *lp = lua_newuserdatauv(L, sizeof(double) * (size_t)(2 * V), 0), *lq = lp + V;
    double nll_a = 0, nll_b = 0, kl = 0;
    int64_t same = 0, count = 0;
    for (int64_t i = 0; i + 1 < n; i++) {
        lua_geti(L, 3, i + 2);
        lua_Integer next = lua_tointeger(L, -1);
        lua_pop(L, 1);
        if (next < 0 || next >= V)
            return sl__lua_error(L, "model compare: token %I is outside the vocabulary", (lua_Integer)(i + 2));
        int64_t ta = log_softmax_row((const float *)a->t.data + i * V, V, lp);
        int64_t tb = log_softmax_row((const float *)b->t.data + i * V, V, lq);
        nll_a -= lp[next];
        nll_b -= lq[next];
        for (int64_t j = 0; j < V; j++)
            kl += exp(lp[j]) * (lp[j] - lq[j]);
        same += ta == tb;
        count++;
    }
    lua_createtable(L, 0, 5);
    lua_pushnumber(L, count ? nll_a / (double)count : 0);
    lua_setfield(L, -2, "nll_ref");
    lua_pushnumber(L, count ? nll_b / (double)count : 0);
    lua_setfield(L, -2, "nll");
    lua_pushnumber(L, count ? kl / (double)count : 0);
    lua_setfield(L, -2, "kl");
    lua_pushnumber(L, count ? (double)same / (double)count : 1);
    lua_setfield(L, -2, "top1");
    lua_pushinteger(L, count);
    lua_setfield(L, -2, "n");
    return 1;
}

/* sl.model_c.argmax(logits [n, V] [, row]) -> 0-based id of the largest logit of a row (default the last) */
static int l_argmax(lua_State *L)
{
    sl_lua_tensor *a = sl__lua_check_tensor(L, 1);
    if (a->t.dtype != SL_F32 || a->t.ndim != 2 || !sl_tensor_is_contiguous(&a->t))
        return sl__lua_error(L, "argmax: expected f32 logits [n, vocab]");
    int64_t n = a->t.shape[0], V = a->t.shape[1];
    lua_Integer r = luaL_optinteger(L, 2, n);
    if (r < 1 || r > n)
        return sl__lua_error(L, "argmax: row %I outside 1..%I", r, (lua_Integer)n);
    const float *x = (const float *)a->t.data + (r - 1) * V;
    int64_t best = 0;
    for (int64_t j = 1; j < V; j++)
        if (x[j] > x[best])
            best = j;
    lua_pushinteger(L, best);
    return 1;
}

/* ---- tokenizer ---- */

static l_tok *check_tok(lua_State *L, int idx)
{
    l_tok *u = luaL_checkudata(L, idx, SL_LUA_TOKENIZER);
    if (!u->t)
        luaL_argerror(L, idx, "tokenizer was closed");
    return u;
}

/* sl.tokenizer_c.load(path [, vocab_size]): tokenizer.bin (vocab_size needed), tokenizer.model or tokenizer.json
 * (vocab_size, when given, bounds the ids) */
static int l_tok_load(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    lua_Integer vocab = luaL_optinteger(L, 2, 0);
    sl_ctx *ctx = sl__lua_ctx(L)->ctx;
    l_tok *u = lua_newuserdatauv(L, sizeof *u, 0);
    u->t = NULL;
    luaL_setmetatable(L, SL_LUA_TOKENIZER);
    if (sl_tokenizer_load(ctx, path, vocab, &u->t))
        return sl__lua_fail(L, ctx);
    return 1;
}

/* tok:encode(text [, bos = true [, eos = false]]) -> table of ids */
static int t_encode(lua_State *L)
{
    l_tok *u = check_tok(L, 1);
    const char *text = luaL_checkstring(L, 2);
    int bos = lua_isnoneornil(L, 3) ? 1 : lua_toboolean(L, 3), eos = lua_toboolean(L, 4);
    sl_ctx *ctx = sl__lua_ctx(L)->ctx;
    sl_tensor ids;
    if (sl_tokenizer_encode(ctx, u->t, text, bos, eos, &ids))
        return sl__lua_fail(L, ctx);
    int64_t n = ids.shape[0];
    lua_createtable(L, (int)n, 0);
    for (int64_t i = 0; i < n; i++) {
        lua_pushinteger(L, ((const int32_t *)ids.data)[i]);
        lua_rawseti(L, -2, i + 1);
    }
    sl_tensor_release(&ids);
    return 1;
}

/* tok:decode(ids [, prev]) -> text of the ids following prev, as the tokenizer's decoder gives it */
static int t_decode(lua_State *L)
{
    l_tok *u = check_tok(L, 1);
    luaL_checktype(L, 2, LUA_TTABLE);
    lua_Integer prev = luaL_optinteger(L, 3, -1);
    int64_t vocab = sl_tokenizer_vocab(u->t);
    lua_Integer n = luaL_len(L, 2);
    int32_t *ids = lua_newuserdatauv(L, (size_t)(n > 0 ? n : 1) * sizeof *ids, 0);
    for (lua_Integer i = 1; i <= n; i++) {
        lua_geti(L, 2, i);
        lua_Integer id = luaL_checkinteger(L, -1);
        lua_pop(L, 1);
        if (id < 0 || id >= vocab)
            return sl__lua_error(L, "tokenizer:decode: id %I outside 0..%I", id, (lua_Integer)(vocab - 1));
        ids[i - 1] = (int32_t)id;
    }
    if (prev < -1 || prev >= vocab)
        return sl__lua_error(L, "tokenizer:decode: prev %I outside -1..%I", prev, (lua_Integer)(vocab - 1));
    sl_ctx *ctx = sl__lua_ctx(L)->ctx;
    char *text;
    size_t len;
    if (sl_tokenizer_decode_ids(ctx, u->t, ids, (int64_t)n, (int32_t)prev, &text, &len))
        return sl__lua_fail(L, ctx);
    lua_pushlstring(L, text, len);
    sl_ctx_dealloc(ctx, text, len + 1);
    return 1;
}

static int t_vocab(lua_State *L)
{
    lua_pushinteger(L, sl_tokenizer_vocab(check_tok(L, 1)->t));
    return 1;
}

static int t_close(lua_State *L)
{
    l_tok *u = luaL_checkudata(L, 1, SL_LUA_TOKENIZER);
    sl_tokenizer_free(sl__lua_ctx(L)->ctx, u->t);
    u->t = NULL;
    return 0;
}

static void new_type(lua_State *L, const char *name, const luaL_Reg *methods, lua_CFunction gc)
{
    if (luaL_newmetatable(L, name)) {
        lua_pushcfunction(L, gc);
        lua_setfield(L, -2, "__gc");
        lua_pushcfunction(L, gc);
        lua_setfield(L, -2, "__close");
        lua_newtable(L);
        luaL_setfuncs(L, methods, 0);
        lua_setfield(L, -2, "__index");
    }
    lua_pop(L, 1);
}

void sl__lua_open_model(lua_State *L)
{
    static const luaL_Reg model_methods[] = {
        {"config", m_config}, {"state", m_state}, {"forward", m_forward},
        {"weight", m_weight}, {"set_weight", m_set_weight}, {"close", m_close}, {"exec_set", m_exec_set}, {"exec_gate", m_exec_gate},
        {"exec_backend", m_exec_backend}, {"exec_off", m_exec_off}, {"exec_threshold", m_exec_threshold},
        {"exec_min_macs", m_exec_min_macs}, {"exec_crossover", m_exec_crossover},
        {"exec_spark", m_exec_spark},
        {"moe_on", m_moe_on}, {"moe_layer", m_moe_layer}, {"moe_off", m_moe_off}, {"moe_stats", m_moe_stats},
        {"exec_format", m_exec_format}, {"exec_stats", m_exec_stats}, {NULL, NULL}};
    static const luaL_Reg state_methods[] = {{"len", s_len}, {"reset", s_reset}, {"close", s_close}, {NULL, NULL}};
    static const luaL_Reg tok_methods[] = {
        {"encode", t_encode}, {"decode", t_decode}, {"vocab", t_vocab}, {"close", t_close}, {NULL, NULL}};
    new_type(L, SL_LUA_MODEL, model_methods, m_close);
    new_type(L, SL_LUA_STATE, state_methods, s_close);
    new_type(L, SL_LUA_TOKENIZER, tok_methods, t_close);
    lua_newtable(L);
    lua_pushcfunction(L, l_load);
    lua_setfield(L, -2, "load");
    lua_pushcfunction(L, l_compare);
    lua_setfield(L, -2, "compare");
    lua_pushcfunction(L, l_argmax);
    lua_setfield(L, -2, "argmax");
    lua_setfield(L, -2, "model_c");
    lua_newtable(L);
    lua_pushcfunction(L, l_tok_load);
    lua_setfield(L, -2, "load");
    lua_setfield(L, -2, "tokenizer_c");
}
