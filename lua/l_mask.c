/* l_mask.c — materialised block masks in Lua: built from pattern terms,
 * union with `+`, density and kept counts, element tests, and printing as a
 * small block map. The lazy pattern objects live in sparselab/mask.lua. */
#include "lbind.h"

#include <stdio.h>
#include <string.h>

sl_lua_mask *sl__lua_push_mask(lua_State *L, sl_mask m)
{
    sl_lua_mask *u = lua_newuserdatauv(L, sizeof *u, 0);
    u->m = m;
    luaL_setmetatable(L, SL_LUA_MASK);
    return u;
}

sl_lua_mask *sl__lua_test_mask(lua_State *L, int idx) { return luaL_testudata(L, idx, SL_LUA_MASK); }

sl_lua_mask *sl__lua_check_mask(lua_State *L, int idx)
{
    sl_lua_mask *u = luaL_checkudata(L, idx, SL_LUA_MASK);
    if (!u->m.row_ptr.buf)
        luaL_argerror(L, idx, "mask was closed");
    return u;
}

static sl_pattern_kind kind_of(lua_State *L, const char *name)
{
    for (int k = 0; k < SL_PAT__COUNT; k++)
        if (strcmp(sl_pattern_name((sl_pattern_kind)k), name) == 0)
            return (sl_pattern_kind)k;
    sl__lua_error(L, "unknown mask pattern '%s' (expected full, causal, window or sink)", name);
    return SL_PAT_FULL;
}

/* sl.mask_c.pattern({{kind=, a=}, ...}, n_q, n_k, bq, bk) */
static int l_pattern(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_Integer nq = luaL_checkinteger(L, 2), nk = luaL_checkinteger(L, 3);
    lua_Integer bq = luaL_optinteger(L, 4, 64), bk = luaL_optinteger(L, 5, 64);
    int n = (int)luaL_len(L, 1);
    if (n > 64)
        sl__lua_error(L, "mask pattern: %d terms, at most 64", n);
    sl_pattern_term terms[64];
    for (int i = 0; i < n; i++) {
        lua_geti(L, 1, i + 1);
        luaL_checktype(L, -1, LUA_TTABLE);
        lua_getfield(L, -1, "kind");
        terms[i].kind = kind_of(L, luaL_checkstring(L, -1));
        terms[i].a = sl__lua_opt_int_field(L, -2, "a", 0);
        lua_pop(L, 2);
    }
    sl_ctx *ctx = sl__lua_ctx(L)->ctx;
    sl_mask m;
    if (bq > 4096 || bk > 4096 || bq < 1 || bk < 1)
        sl__lua_error(L, "mask: block sizes must be in [1, 4096], found %d x %d", (int)bq, (int)bk);
    if (sl_mask_from_pattern(ctx, terms, n, nq, nk, (int)bq, (int)bk, &m))
        return sl__lua_fail(L, ctx);
    sl__lua_push_mask(L, m);
    return 1;
}

/* A lazy pattern (a Lua table with materialize_like) beside a mask becomes a
 * mask of the same sizes, so `mask + pattern` works in either order. */
static void coerce(lua_State *L, int idx, int other)
{
    if (sl__lua_test_mask(L, idx) || !lua_istable(L, idx))
        return;
    if (lua_getfield(L, idx, "materialize_like") != LUA_TFUNCTION)
        sl__lua_error(L, "mask union: operand %d is neither a mask nor a pattern", idx);
    lua_pushvalue(L, idx);
    lua_pushvalue(L, other);
    lua_call(L, 2, 1);
    lua_replace(L, idx);
}

static int m_union(lua_State *L)
{
    lua_settop(L, 2);
    coerce(L, 1, 2);
    coerce(L, 2, 1);
    sl_lua_mask *a = sl__lua_check_mask(L, 1), *b = sl__lua_check_mask(L, 2);
    sl_ctx *ctx = sl__lua_ctx(L)->ctx;
    sl_mask out;
    if (sl_mask_union(ctx, &a->m, &b->m, &out))
        return sl__lua_fail(L, ctx);
    sl__lua_push_mask(L, out);
    return 1;
}

static int m_density(lua_State *L)
{
    sl_lua_mask *u = sl__lua_check_mask(L, 1);
    int causal = lua_isnoneornil(L, 2) ? 1 : lua_toboolean(L, 2);
    lua_pushnumber(L, sl_mask_density(&u->m, causal));
    return 1;
}

static int m_kept(lua_State *L)
{
    sl_lua_mask *u = sl__lua_check_mask(L, 1);
    lua_Integer h = luaL_optinteger(L, 2, 1);
    if (h < 1 || h > u->m.n_heads)
        sl__lua_error(L, "mask:kept: head %d out of 1..%d", (int)h, u->m.n_heads);
    lua_pushinteger(L, sl_mask_kept(&u->m, (int)h - 1));
    return 1;
}

/* m:get(head, row, key), all 1-based */
static int m_get(lua_State *L)
{
    sl_lua_mask *u = sl__lua_check_mask(L, 1);
    lua_Integer h = luaL_checkinteger(L, 2), r = luaL_checkinteger(L, 3), k = luaL_checkinteger(L, 4);
    lua_pushboolean(L, sl_mask_get(&u->m, (int)(h - 1), r - 1, k - 1));
    return 1;
}

static int m_info(lua_State *L)
{
    sl_lua_mask *u = sl__lua_check_mask(L, 1);
    const sl_mask *m = &u->m;
    lua_createtable(L, 0, 10);
    lua_Integer vals[] = {m->n_heads, m->n_q, m->n_k, m->bq, m->bk, m->n_qb, m->n_kb, m->col_idx.shape[0],
                          m->bits.shape[0]};
    const char *names[] = {"n_heads", "n_q", "n_k", "bq", "bk", "n_qb", "n_kb", "nnz", "n_part"};
    for (int i = 0; i < 9; i++) {
        lua_pushinteger(L, vals[i]);
        lua_setfield(L, -2, names[i]);
    }
    return 1;
}

/* m:arrays() -> row_ptr, col_idx, part, bits (new references) */
static int m_arrays(lua_State *L)
{
    sl_lua_mask *u = sl__lua_check_mask(L, 1);
    sl__lua_push_tensor(L, sl_tensor_retain(&u->m.row_ptr));
    sl__lua_push_tensor(L, sl_tensor_retain(&u->m.col_idx));
    sl__lua_push_tensor(L, sl_tensor_retain(&u->m.part));
    sl__lua_push_tensor(L, sl_tensor_retain(&u->m.bits));
    return 4;
}

/* A block map of head 1: '#' full block, '+' partial, '.' empty; at most 48
 * rows and columns (larger masks are shown by sampling blocks). */
static int m_tostring(lua_State *L)
{
    sl_lua_mask *u = luaL_checkudata(L, 1, SL_LUA_MASK);
    const sl_mask *m = &u->m;
    if (!m->row_ptr.buf) {
        lua_pushliteral(L, "mask(closed)");
        return 1;
    }
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    char line[160];
    snprintf(line, sizeof line, "mask %d head%s, n_q=%lld n_k=%lld, blocks %dx%d, density %.4f (of causal pairs)\n",
             m->n_heads, m->n_heads == 1 ? "" : "s", (long long)m->n_q, (long long)m->n_k, m->bq, m->bk,
             sl_mask_density(m, 1));
    luaL_addstring(&b, line);
    int64_t rows = m->n_qb < 48 ? m->n_qb : 48, cols = m->n_kb < 48 ? m->n_kb : 48;
    const int32_t *rp = m->row_ptr.data, *col = m->col_idx.data, *part = m->part.data;
    for (int64_t r = 0; r < rows; r++) {
        int64_t qb = r * m->n_qb / rows;
        char row[64];
        memset(row, '.', (size_t)cols);
        for (int32_t e = rp[qb]; e < rp[qb + 1]; e++) {
            int64_t c = (int64_t)col[e] * cols / m->n_kb;
            char ch = part[e] < 0 ? '#' : '+';
            if (row[c] != '#')
                row[c] = ch;
        }
        row[cols] = '\n';
        luaL_addlstring(&b, row, (size_t)cols + 1);
    }
    luaL_pushresult(&b);
    return 1;
}

static int m_close(lua_State *L)
{
    sl_lua_mask *u = luaL_checkudata(L, 1, SL_LUA_MASK);
    sl_mask_release(&u->m);
    return 0;
}

void sl__lua_open_mask(lua_State *L)
{
    static const luaL_Reg methods[] = {{"density", m_density}, {"kept", m_kept},     {"get", m_get},
                                       {"info", m_info},       {"arrays", m_arrays}, {"close", m_close},
                                       {"union", m_union},     {NULL, NULL}};
    static const luaL_Reg meta[] = {{"__gc", m_close},
                                    {"__close", m_close},
                                    {"__tostring", m_tostring},
                                    {"__add", m_union},
                                    {NULL, NULL}};
    if (luaL_newmetatable(L, SL_LUA_MASK)) {
        luaL_setfuncs(L, meta, 0);
        luaL_newlib(L, methods);
        lua_setfield(L, -2, "__index");
    }
    lua_pop(L, 1);
    lua_newtable(L);
    lua_pushcfunction(L, l_pattern);
    lua_setfield(L, -2, "pattern");
    lua_setfield(L, -2, "mask_c");
}
