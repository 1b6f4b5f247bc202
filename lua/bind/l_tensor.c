/* l_tensor.c — the Lua tensor type (userdata over a value tensor), the
 * per-state context, and tensor constructors (sl.tensor, sl.zeros, sl.randn). */
#include "l_tensor.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* The registry key of the state's context (its metatable is SL_LUA_CTX). */
#define CTX_KEY "sparselab.ctx.instance"

static int ctx_gc(lua_State *L)
{
    sl_lua_ctx *c = luaL_checkudata(L, 1, SL_LUA_CTX);
    /* Tensors still alive at state close release into a freed context
     * otherwise; Lua finalises in reverse creation order, and the context is
     * created before any tensor, so it goes last. */
    sl_ctx_free(c->ctx);
    c->ctx = NULL;
    return 0;
}

sl_lua_ctx *sl__lua_ctx(lua_State *L)
{
    if (lua_getfield(L, LUA_REGISTRYINDEX, CTX_KEY) == LUA_TUSERDATA) {
        sl_lua_ctx *c = lua_touserdata(L, -1);
        lua_pop(L, 1);
        return c;
    }
    lua_pop(L, 1);
    sl_lua_ctx *c = lua_newuserdatauv(L, sizeof *c, 0);
    c->interrupt = 0;
    c->ctx = sl_ctx_new(NULL);
    if (!c->ctx)
        sl__lua_error(L, "sparselab: cannot allocate a context");
    sl_ctx_set_interrupt(c->ctx, &c->interrupt);
    luaL_newmetatable(L, SL_LUA_CTX);
    lua_pushcfunction(L, ctx_gc);
    lua_setfield(L, -2, "__gc");
    lua_setmetatable(L, -2);
    lua_setfield(L, LUA_REGISTRYINDEX, CTX_KEY);
    return c;
}

int sl__lua_fail(lua_State *L, sl_ctx *ctx)
{
    lua_pushstring(L, sl_ctx_error(ctx));
    return lua_error(L);
}

int sl__lua_error(lua_State *L, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    lua_pushvfstring(L, fmt, ap);
    va_end(ap);
    return lua_error(L);
}

sl_lua_tensor *sl__lua_push_tensor(lua_State *L, sl_tensor t)
{
    /* Lua sees a few bytes of userdata per tensor, not the buffer behind it:
     * a GC step sized to the buffer keeps collection in pace with the memory
     * really allocated, so dropped outputs are freed (and their pages reused)
     * before the next op allocates. */
    size_t kib = sl_tensor_nbytes(&t) / 1024;
    if (kib > 0)
        lua_gc(L, LUA_GCSTEP, kib > (1u << 30) ? (1 << 30) : (int)kib);
    sl_lua_tensor *u = lua_newuserdatauv(L, sizeof *u, 0);
    u->t = t;
    luaL_setmetatable(L, SL_LUA_TENSOR);
    return u;
}

sl_lua_tensor *sl__lua_test_tensor(lua_State *L, int idx) { return luaL_testudata(L, idx, SL_LUA_TENSOR); }

sl_lua_tensor *sl__lua_check_tensor(lua_State *L, int idx)
{
    sl_lua_tensor *u = luaL_checkudata(L, idx, SL_LUA_TENSOR);
    if (!u->t.buf)
        luaL_argerror(L, idx, "tensor was closed");
    return u;
}

lua_Integer sl__lua_opt_int_field(lua_State *L, int idx, const char *key, lua_Integer def)
{
    lua_getfield(L, idx, key);
    lua_Integer v = luaL_optinteger(L, -1, def);
    lua_pop(L, 1);
    return v;
}

void sl__lua_check_keys(lua_State *L, int idx, const char *what, const char *const *allowed)
{
    idx = lua_absindex(L, idx);
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        int ok = 0;
        if (lua_type(L, -1) == LUA_TSTRING)
            for (const char *const *a = allowed; *a && !ok; a++)
                ok = strcmp(*a, lua_tostring(L, -1)) == 0;
        if (!ok) {
            const char *bad = luaL_tolstring(L, -1, NULL);
            luaL_Buffer b;
            luaL_buffinit(L, &b);
            for (const char *const *a = allowed; *a; a++) {
                luaL_addstring(&b, a == allowed ? "" : ", ");
                luaL_addstring(&b, *a);
            }
            luaL_pushresult(&b);
            sl__lua_error(L, "%s: unknown key '%s' (expected one of: %s)", what, bad, lua_tostring(L, -1));
        }
    }
}

/* ---- shapes ---- */

static int read_shape(lua_State *L, int idx, int64_t *shape)
{
    luaL_checktype(L, idx, LUA_TTABLE);
    int n = (int)luaL_len(L, idx);
    if (n > SL_MAX_DIMS)
        sl__lua_error(L, "shape has %d dims, at most %d are allowed", n, SL_MAX_DIMS);
    for (int i = 0; i < n; i++) {
        lua_geti(L, idx, i + 1);
        int isnum;
        lua_Integer v = lua_tointegerx(L, -1, &isnum);
        if (!isnum || v < 0)
            sl__lua_error(L, "shape entry %d must be a non-negative integer", i + 1);
        shape[i] = v;
        lua_pop(L, 1);
    }
    return n;
}

static sl_dtype opt_dtype(lua_State *L, int idx, sl_dtype def)
{
    const char *nm = luaL_optstring(L, idx, NULL);
    if (!nm)
        return def;
    int dt = sl_dtype_from_name(nm);
    if (dt < 0)
        sl__lua_error(L, "unknown dtype '%s' (expected f32, f16, bf16, f64, i32 or u8)", nm);
    return (sl_dtype)dt;
}

static sl_lua_tensor *new_tensor(lua_State *L, sl_dtype dt, int ndim, const int64_t *shape, int zero)
{
    sl_ctx *ctx = sl__lua_ctx(L)->ctx;
    sl_tensor t;
    sl_status s = zero ? sl_tensor_zeros(ctx, dt, ndim, shape, &t) : sl_tensor_new(ctx, dt, ndim, shape, &t);
    if (s)
        sl__lua_fail(L, ctx);
    /* a tensor Lua creates is written only through t:set afterwards
     * (sl_tensor_set bumps its version): its input scans can be remembered */
    sl_tensor_cache_checks(&t);
    return sl__lua_push_tensor(L, t);
}

/* sl.zeros(shape [, dtype]) */
static int l_zeros(lua_State *L)
{
    int64_t shape[SL_MAX_DIMS];
    int n = read_shape(L, 1, shape);
    new_tensor(L, opt_dtype(L, 2, SL_F32), n, shape, 1);
    return 1;
}

/* sl.randn(shape [, {seed=, std=, dtype=}]) */
static int l_randn(lua_State *L)
{
    int64_t shape[SL_MAX_DIMS];
    int n = read_shape(L, 1, shape);
    lua_Integer seed = 0;
    double std = 1.0;
    sl_dtype dt = SL_F32;
    if (lua_istable(L, 2)) {
        static const char *const keys[] = {"seed", "std", "dtype", NULL};
        sl__lua_check_keys(L, 2, "sl.randn", keys);
        seed = sl__lua_opt_int_field(L, 2, "seed", 0);
        lua_getfield(L, 2, "std");
        std = luaL_optnumber(L, -1, 1.0);
        lua_getfield(L, 2, "dtype");
        dt = opt_dtype(L, -1, SL_F32);
        lua_pop(L, 2);
    }
    sl_lua_tensor *u = new_tensor(L, dt, n, shape, 0);
    sl_rng r;
    sl_rng_seed(&r, (uint64_t)seed);
    sl_ctx *ctx = sl__lua_ctx(L)->ctx;
    if (sl_tensor_fill_normal(ctx, &u->t, &r, std))
        sl__lua_fail(L, ctx);
    return 1;
}

/* sl.rand(shape [, {seed=}]) -> f32 uniform draws in [0, 1) */
static int l_rand(lua_State *L)
{
    int64_t shape[SL_MAX_DIMS];
    int n = read_shape(L, 1, shape);
    lua_Integer seed = 0;
    if (lua_istable(L, 2)) {
        static const char *const keys[] = {"seed", NULL};
        sl__lua_check_keys(L, 2, "sl.rand", keys);
        seed = sl__lua_opt_int_field(L, 2, "seed", 0);
    }
    sl_lua_tensor *u = new_tensor(L, SL_F32, n, shape, 0);
    sl_rng r;
    sl_rng_seed(&r, (uint64_t)seed);
    float *x = u->t.data;
    for (int64_t i = 0; i < sl_tensor_numel(&u->t); i++) {
        x[i] = (float)sl_rng_uniform(&r);
        if (x[i] >= 1.f) /* rounding to float can reach 1 */
            x[i] = 0x1.fffffep-1f;
    }
    return 1;
}

/* Infers the shape of a nested table of numbers. */
static int nested_shape(lua_State *L, int idx, int64_t *shape)
{
    int nd = 0;
    lua_pushvalue(L, idx);
    while (lua_istable(L, -1)) {
        if (nd == SL_MAX_DIMS)
            sl__lua_error(L, "sl.tensor: more than %d levels of nesting", SL_MAX_DIMS);
        shape[nd++] = (int64_t)luaL_len(L, -1);
        if (shape[nd - 1] == 0)
            break;
        lua_geti(L, -1, 1);
        lua_remove(L, -2);
    }
    lua_pop(L, 1);
    return nd;
}

/* A value for an element of t: integer dtypes take only integral values in range. */
static double checked_value(lua_State *L, const sl_tensor *t, double v)
{
    if (t->dtype == SL_I32 && !(v == (double)(int64_t)v && v >= INT32_MIN && v <= INT32_MAX))
        sl__lua_error(L, "tensor: %f does not fit an i32 element", v);
    if (t->dtype == SL_U8 && !(v == (double)(int64_t)v && v >= 0 && v <= 255))
        sl__lua_error(L, "tensor: %f does not fit a u8 element (0..255)", v);
    return v;
}

static void fill_nested(lua_State *L, int idx, sl_tensor *t, int dim, int64_t *pos)
{
    int64_t n = (int64_t)luaL_len(L, idx);
    if (n != t->shape[dim])
        sl__lua_error(L, "sl.tensor: ragged table (dim %d has %I and %I entries)", dim + 1, (lua_Integer)t->shape[dim],
                   (lua_Integer)n);
    for (int64_t i = 0; i < n; i++) {
        lua_geti(L, idx, i + 1);
        pos[dim] = i;
        if (dim + 1 < t->ndim) {
            if (!lua_istable(L, -1))
                sl__lua_error(L, "sl.tensor: expected a table at depth %d", dim + 2);
            fill_nested(L, lua_gettop(L), t, dim + 1, pos);
        } else {
            int isnum;
            double v = lua_tonumberx(L, -1, &isnum);
            if (!isnum)
                sl__lua_error(L, "sl.tensor: expected a number, found %s", luaL_typename(L, -1));
            sl_tensor_set(t, pos, checked_value(L, t, v));
        }
        lua_pop(L, 1);
    }
}

/* sl.tensor(nested_table [, dtype]) */
static int l_tensor(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    int64_t shape[SL_MAX_DIMS], pos[SL_MAX_DIMS] = {0};
    int nd = nested_shape(L, 1, shape);
    sl_lua_tensor *u = new_tensor(L, opt_dtype(L, 2, SL_F32), nd, shape, 1);
    if (nd > 0)
        fill_nested(L, 1, &u->t, 0, pos);
    return 1;
}

/* ---- methods ---- */

static void read_index(lua_State *L, const sl_tensor *t, int first, int64_t *idx)
{
    int n = lua_gettop(L) - first + 1;
    if (n < t->ndim)
        sl__lua_error(L, "tensor index: expected %d indices, found %d", t->ndim, n);
    for (int d = 0; d < t->ndim; d++) {
        lua_Integer i = luaL_checkinteger(L, first + d);
        if (i < 1 || i > t->shape[d])
            sl__lua_error(L, "tensor index %d is %I, expected 1..%I", d + 1, (lua_Integer)i, (lua_Integer)t->shape[d]);
        idx[d] = i - 1;
    }
}

static int t_get(lua_State *L)
{
    sl_lua_tensor *u = sl__lua_check_tensor(L, 1);
    int64_t idx[SL_MAX_DIMS];
    read_index(L, &u->t, 2, idx);
    lua_pushnumber(L, sl_tensor_get(&u->t, idx));
    return 1;
}

static int t_set(lua_State *L)
{
    sl_lua_tensor *u = sl__lua_check_tensor(L, 1);
    int64_t idx[SL_MAX_DIMS];
    double v = checked_value(L, &u->t, luaL_checknumber(L, lua_gettop(L)));
    lua_pop(L, 1);
    read_index(L, &u->t, 2, idx);
    sl_tensor_set(&u->t, idx, v);
    return 0;
}

static int t_shape(lua_State *L)
{
    sl_lua_tensor *u = sl__lua_check_tensor(L, 1);
    lua_createtable(L, u->t.ndim, 0);
    for (int d = 0; d < u->t.ndim; d++) {
        lua_pushinteger(L, u->t.shape[d]);
        lua_rawseti(L, -2, d + 1);
    }
    return 1;
}

static int t_dtype(lua_State *L)
{
    lua_pushstring(L, sl_dtype_name(sl__lua_check_tensor(L, 1)->t.dtype));
    return 1;
}

static int t_numel(lua_State *L)
{
    lua_pushinteger(L, sl_tensor_numel(&sl__lua_check_tensor(L, 1)->t));
    return 1;
}

static void push_nested(lua_State *L, const sl_tensor *t, int dim, int64_t *pos)
{
    if (t->ndim == 0) {
        lua_pushnumber(L, sl_tensor_get(t, pos));
        return;
    }
    lua_createtable(L, (int)t->shape[dim], 0);
    for (int64_t i = 0; i < t->shape[dim]; i++) {
        pos[dim] = i;
        if (dim + 1 < t->ndim)
            push_nested(L, t, dim + 1, pos);
        else
            lua_pushnumber(L, sl_tensor_get(t, pos));
        lua_rawseti(L, -2, i + 1);
    }
}

static int t_totable(lua_State *L)
{
    sl_lua_tensor *u = sl__lua_check_tensor(L, 1);
    if (sl_tensor_numel(&u->t) > 1000000)
        sl__lua_error(L, "tensor:totable: %I elements is too many for a Lua table (limit 1e6)",
                   (lua_Integer)sl_tensor_numel(&u->t));
    int64_t pos[SL_MAX_DIMS] = {0};
    push_nested(L, &u->t, 0, pos);
    return 1;
}

/* t:narrow(dim, start, len) — 1-based dim and start; shares memory. */
static int t_narrow(lua_State *L)
{
    sl_lua_tensor *u = sl__lua_check_tensor(L, 1);
    lua_Integer dim = luaL_checkinteger(L, 2), start = luaL_checkinteger(L, 3), len = luaL_checkinteger(L, 4);
    if (dim < 1 || dim > u->t.ndim)
        return sl__lua_error(L, "tensor:narrow: dim %I outside 1..%d", dim, u->t.ndim);
    sl_ctx *ctx = sl__lua_ctx(L)->ctx;
    sl_tensor out;
    if (sl_tensor_narrow(ctx, &u->t, (int)dim - 1, start - 1, len, &out))
        return sl__lua_fail(L, ctx);
    sl__lua_push_tensor(L, out);
    return 1;
}

/* t:to(dtype) — a contiguous converted copy. */
static int t_to(lua_State *L)
{
    sl_lua_tensor *u = sl__lua_check_tensor(L, 1);
    sl_dtype dt = opt_dtype(L, 2, u->t.dtype);
    sl_ctx *ctx = sl__lua_ctx(L)->ctx;
    sl_tensor out;
    if (sl_tensor_convert(ctx, &u->t, dt, &out))
        return sl__lua_fail(L, ctx);
    sl_tensor_cache_checks(&out); /* a fresh copy (new_tensor's reason) */
    sl__lua_push_tensor(L, out);
    return 1;
}

static int t_close(lua_State *L)
{
    sl_lua_tensor *u = luaL_checkudata(L, 1, SL_LUA_TENSOR);
    sl_tensor_release(&u->t);
    return 0;
}

static int t_tostring(lua_State *L)
{
    sl_lua_tensor *u = luaL_checkudata(L, 1, SL_LUA_TENSOR);
    if (!u->t.buf) {
        lua_pushliteral(L, "tensor(closed)");
        return 1;
    }
    char desc[128];
    sl_tensor_describe(&u->t, desc, sizeof desc);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    luaL_addstring(&b, "tensor ");
    luaL_addstring(&b, desc);
    int64_t n = sl_tensor_numel(&u->t), show = n < 6 ? n : 6;
    luaL_addstring(&b, " {");
    int64_t idx[SL_MAX_DIMS] = {0};
    for (int64_t i = 0; i < show; i++) {
        char num[40];
        snprintf(num, sizeof num, i ? ", %.6g" : "%.6g", sl_tensor_get(&u->t, idx));
        luaL_addstring(&b, num);
        for (int d = u->t.ndim - 1; d >= 0; d--) {
            if (++idx[d] < u->t.shape[d])
                break;
            idx[d] = 0;
        }
    }
    luaL_addstring(&b, n > show ? ", ...}" : "}");
    luaL_pushresult(&b);
    return 1;
}

static int t_len(lua_State *L)
{
    sl_lua_tensor *u = sl__lua_check_tensor(L, 1);
    lua_pushinteger(L, u->t.ndim ? u->t.shape[0] : 1);
    return 1;
}

/* Sum, min and max over all elements (float64), handy in scripts and tests. */
static int t_stats(lua_State *L)
{
    sl_lua_tensor *u = sl__lua_check_tensor(L, 1);
    double sum = 0, mn = INFINITY, mx = -INFINITY;
    int64_t n = sl_tensor_numel(&u->t), idx[SL_MAX_DIMS] = {0};
    for (int64_t i = 0; i < n; i++) {
        double v = sl_tensor_get(&u->t, idx);
        sum += v;
        mn = v < mn ? v : mn;
        mx = v > mx ? v : mx;
        for (int d = u->t.ndim - 1; d >= 0; d--) {
            if (++idx[d] < u->t.shape[d])
                break;
            idx[d] = 0;
        }
    }
    lua_pushnumber(L, sum);
    lua_pushnumber(L, mn);
    lua_pushnumber(L, mx);
    return 3;
}

/* sl.cat({t1, t2, ...}, dim) — concatenation along dim (1-based) of f32
 * tensors whose other dims agree; a new contiguous tensor. */
static int l_cat(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_Integer dim = luaL_optinteger(L, 2, 1);
    int n = (int)luaL_len(L, 1);
    if (n < 1)
        return sl__lua_error(L, "sl.cat: expected at least one tensor");
    lua_geti(L, 1, 1);
    const sl_tensor *first = &sl__lua_check_tensor(L, -1)->t;
    lua_pop(L, 1);
    if (dim < 1 || dim > first->ndim)
        return sl__lua_error(L, "sl.cat: dim %I outside 1..%d", dim, first->ndim);
    int d = (int)dim - 1;
    int64_t shape[SL_MAX_DIMS];
    memcpy(shape, first->shape, sizeof shape);
    shape[d] = 0;
    for (int i = 1; i <= n; i++) {
        lua_geti(L, 1, i);
        const sl_tensor *t = &sl__lua_check_tensor(L, -1)->t;
        lua_pop(L, 1);
        if (t->ndim != first->ndim || t->dtype != SL_F32)
            return sl__lua_error(L, "sl.cat: tensor %d is not f32 with %d dims", i, first->ndim);
        for (int k = 0; k < t->ndim; k++)
            if (k != d && t->shape[k] != first->shape[k])
                return sl__lua_error(L, "sl.cat: tensor %d has size %I in dim %d, tensor 1 has %I", i,
                                     (lua_Integer)t->shape[k], k + 1, (lua_Integer)first->shape[k]);
        shape[d] += t->shape[d];
    }
    sl_lua_tensor *u = new_tensor(L, SL_F32, first->ndim, shape, 0);
    int64_t offset = 0, idx[SL_MAX_DIMS];
    for (int i = 1; i <= n; i++) {
        lua_geti(L, 1, i);
        const sl_tensor *t = &sl__lua_check_tensor(L, -1)->t;
        int64_t count = sl_tensor_numel(t);
        memset(idx, 0, sizeof idx);
        for (int64_t e = 0; e < count; e++) {
            int64_t dst[SL_MAX_DIMS];
            memcpy(dst, idx, sizeof dst);
            dst[d] += offset;
            sl_tensor_set(&u->t, dst, sl_tensor_get(t, idx));
            for (int k = t->ndim - 1; k >= 0; k--) {
                if (++idx[k] < t->shape[k])
                    break;
                idx[k] = 0;
            }
        }
        offset += t->shape[d];
        lua_pop(L, 1);
    }
    return 1;
}

void sl__lua_open_tensor(lua_State *L)
{
    static const luaL_Reg methods[] = {{"get", t_get},         {"set", t_set},     {"shape", t_shape},
                                       {"dtype", t_dtype},     {"numel", t_numel}, {"totable", t_totable},
                                       {"narrow", t_narrow},   {"to", t_to},       {"close", t_close},
                                       {"stats", t_stats},     {NULL, NULL}};
    static const luaL_Reg meta[] = {{"__gc", t_close},
                                    {"__close", t_close},
                                    {"__tostring", t_tostring},
                                    {"__len", t_len},
                                    {NULL, NULL}};
    if (luaL_newmetatable(L, SL_LUA_TENSOR)) {
        luaL_setfuncs(L, meta, 0);
        luaL_newlib(L, methods);
        lua_setfield(L, -2, "__index");
        lua_pushliteral(L, "tensor");
        lua_setfield(L, -2, "__name");
    }
    lua_pop(L, 1);
    static const luaL_Reg fns[] = {
        {"tensor", l_tensor}, {"zeros", l_zeros}, {"randn", l_randn}, {"rand", l_rand}, {"cat", l_cat}, {NULL, NULL}};
    luaL_setfuncs(L, fns, 0);
}
