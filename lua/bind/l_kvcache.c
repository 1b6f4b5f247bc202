/* l_kvcache.c — the paged KV cache object of decode (sl_kvcache, issue 13)
 * as Lua userdata: sl.kvcache_c(heads, head_dim, page) and its methods
 * append (k, v [, pos i32 [H, t]]), evict, len, pages, page_size, heads, head_dim, bytes, tensor,
 * set_bits (a low-bit copy of K), close. The pure-Lua wrapper (sparselab/decode.lua) adds the decode steps. */
#include <limits.h>
#include "l_kvcache.h"
#include "l_tensor.h"

#define SL_LUA_KVCACHE "sparselab.kvcache"

typedef struct l_kvcache { sl_kvcache *c; } l_kvcache;

static sl_kvcache *check_cache(lua_State *L)
{
    l_kvcache *u = luaL_checkudata(L, 1, SL_LUA_KVCACHE);
    if (!u->c)
        sl__lua_error(L, "kvcache: used after close");
    return u->c;
}

/* sl.kvcache_c(heads, head_dim, page) */
static int l_new(lua_State *L)
{
    lua_Integer h = luaL_checkinteger(L, 1), d = luaL_checkinteger(L, 2), p = luaL_checkinteger(L, 3);
    l_kvcache *u = lua_newuserdatauv(L, sizeof *u, 0);
    u->c = NULL;
    luaL_setmetatable(L, SL_LUA_KVCACHE);
    sl_ctx *ctx = sl__lua_ctx(L)->ctx;
    if (sl_kvcache_new(ctx, (int64_t)h, (int64_t)d, (int64_t)p, &u->c))
        sl__lua_fail(L, ctx);
    return 1;
}

static int c_append(lua_State *L)
{
    sl_kvcache *c = check_cache(L);
    sl_lua_tensor *k = sl__lua_check_tensor(L, 2), *v = sl__lua_check_tensor(L, 3);
    sl_lua_tensor *pos = lua_isnoneornil(L, 4) ? NULL : sl__lua_check_tensor(L, 4);
    sl_ctx *ctx = sl__lua_ctx(L)->ctx;
    if (sl_kvcache_append_at(ctx, c, &k->t, &v->t, pos ? &pos->t : NULL))
        sl__lua_fail(L, ctx);
    return 0;
}

static int c_evict(lua_State *L)
{
    sl_kvcache *c = check_cache(L);
    sl_lua_tensor *idx = sl__lua_check_tensor(L, 2);
    sl_ctx *ctx = sl__lua_ctx(L)->ctx;
    if (sl_kvcache_evict(ctx, c, &idx->t))
        sl__lua_fail(L, ctx);
    return 0;
}

static int c_set_bits(lua_State *L)
{
    sl_kvcache *c = check_cache(L);
    lua_Integer bits = luaL_checkinteger(L, 2);
    sl_ctx *ctx = sl__lua_ctx(L)->ctx;
    if (sl_kvcache_set_bits(ctx, c, (int)bits))
        sl__lua_fail(L, ctx);
    return 0;
}

static int c_set_quant(lua_State *L)
{
    sl_kvcache *c = check_cache(L);
    lua_Integer kb = luaL_checkinteger(L, 2), vb = luaL_optinteger(L, 3, 0), zero = luaL_optinteger(L, 4, 0);
    sl_ctx *ctx = sl__lua_ctx(L)->ctx;
    /* all or nothing: a bad zero argument leaves the bit widths as they were */
    if (kb < INT_MIN || kb > INT_MAX || vb < INT_MIN || vb > INT_MAX || zero < INT_MIN || zero > INT_MAX)
        return luaL_error(L, "set_quant: kbits %I, vbits %I, zero %I out of range", kb, vb, zero);
    if (sl_kvcache_set_quant_all(ctx, c, (int)kb, (int)vb, (int)zero))
        sl__lua_fail(L, ctx);
    return 0;
}

static int c_shrink(lua_State *L)
{
    sl_kvcache *c = check_cache(L);
    sl_ctx *ctx = sl__lua_ctx(L)->ctx;
    if (sl_kvcache_shrink(ctx, c))
        sl__lua_fail(L, ctx);
    return 0;
}

static int c_quant(lua_State *L)
{
    sl_kvcache *c = check_cache(L);
    int vb = 0, kb = sl_kvcache_quant(c, &vb);
    lua_pushinteger(L, kb);
    lua_pushinteger(L, vb);
    lua_pushinteger(L, sl_kvcache_quant_zero(c));
    return 3;
}

static int c_tensor(lua_State *L)
{
    sl_kvcache *c = check_cache(L);
    const char *which = luaL_checkstring(L, 2);
    sl_ctx *ctx = sl__lua_ctx(L)->ctx;
    sl_tensor t;
    if (sl_kvcache_tensor(ctx, c, which, &t))
        sl__lua_fail(L, ctx);
    sl__lua_push_tensor(L, t);
    return 1;
}

static int c_len(lua_State *L) { lua_pushinteger(L, (lua_Integer)sl_kvcache_len(check_cache(L))); return 1; }
static int c_pages(lua_State *L) { lua_pushinteger(L, (lua_Integer)sl_kvcache_pages(check_cache(L))); return 1; }
static int c_page_size(lua_State *L) { lua_pushinteger(L, (lua_Integer)sl_kvcache_page_size(check_cache(L))); return 1; }
static int c_heads(lua_State *L) { lua_pushinteger(L, (lua_Integer)sl_kvcache_heads(check_cache(L))); return 1; }
static int c_head_dim(lua_State *L) { lua_pushinteger(L, (lua_Integer)sl_kvcache_head_dim(check_cache(L))); return 1; }
static int c_bits(lua_State *L) { lua_pushinteger(L, (lua_Integer)sl_kvcache_bits(check_cache(L))); return 1; }
static int c_bytes(lua_State *L) { lua_pushinteger(L, (lua_Integer)sl_kvcache_bytes(check_cache(L))); return 1; }

static int c_close(lua_State *L)
{
    l_kvcache *u = luaL_checkudata(L, 1, SL_LUA_KVCACHE);
    sl_kvcache_free(u->c);
    u->c = NULL;
    return 0;
}

static int c_tostring(lua_State *L)
{
    l_kvcache *u = luaL_checkudata(L, 1, SL_LUA_KVCACHE);
    if (!u->c)
        lua_pushliteral(L, "kvcache (closed)");
    else
        lua_pushfstring(L, "kvcache heads=%I head_dim=%I page=%I len=%I pages=%I",
                        (lua_Integer)sl_kvcache_heads(u->c), (lua_Integer)sl_kvcache_head_dim(u->c),
                        (lua_Integer)sl_kvcache_page_size(u->c), (lua_Integer)sl_kvcache_len(u->c),
                        (lua_Integer)sl_kvcache_pages(u->c));
    return 1;
}

void sl__lua_open_kvcache(lua_State *L)
{
    static const luaL_Reg methods[] = {{"append", c_append}, {"evict", c_evict},   {"tensor", c_tensor},
                                       {"len", c_len},       {"pages", c_pages},   {"page_size", c_page_size},
                                       {"heads", c_heads},   {"head_dim", c_head_dim}, {"bytes", c_bytes},
                                       {"close", c_close},   {"set_bits", c_set_bits}, {"bits", c_bits},
                                       {"set_quant", c_set_quant}, {"quant", c_quant},
                                       {"shrink", c_shrink},       {NULL, NULL}};
    static const luaL_Reg meta[] = {{"__gc", c_close}, {"__close", c_close}, {"__tostring", c_tostring}, {NULL, NULL}};
    if (luaL_newmetatable(L, SL_LUA_KVCACHE)) {
        luaL_setfuncs(L, meta, 0);
        luaL_newlib(L, methods);
        lua_setfield(L, -2, "__index");
        lua_pushliteral(L, "kvcache");
        lua_setfield(L, -2, "__name");
    }
    lua_pop(L, 1);
    lua_pushcfunction(L, l_new);
    lua_setfield(L, -2, "kvcache_c");
}
