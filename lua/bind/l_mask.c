/* l_mask.c — materialised masks in Lua: built from pattern terms, the
 * algebra as operators (+ union, * intersect, - difference) and methods
 * (permute, resize, coarsen, ...), conversions to index lists and dense
 * bits, density and kept counts, element tests, and printing as a small
 * block map. The lazy pattern objects live in sparselab/mask.lua; a pattern
 * beside a mask is materialised at the mask's sizes. Positions given to
 * these functions are 0-based token positions (like the index tensors of
 * the ops); m:get and m:kept take 1-based head, row and key numbers. */
#include "l_mask.h"
#include "l_tensor.h"

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

/* An integer list at idx (a sequence of integers or a 1-D i32 tensor) as an
 * int64 array in a new userdata left on the stack. */
static int64_t *read_ints(lua_State *L, int idx, const char *what, int64_t *n)
{
    idx = lua_absindex(L, idx);
    sl_lua_tensor *t = sl__lua_test_tensor(L, idx);
    if (t) {
        if (t->t.dtype != SL_I32 || t->t.ndim != 1)
            sl__lua_error(L, "%s: expected a table of integers or an i32 vector", what);
        *n = t->t.shape[0];
        int64_t *out = lua_newuserdatauv(L, (size_t)(*n > 0 ? *n : 1) * sizeof(int64_t), 0);
        for (int64_t i = 0; i < *n; i++)
            out[i] = ((const int32_t *)t->t.data)[i * t->t.stride[0]];
        return out;
    }
    if (!lua_istable(L, idx))
        sl__lua_error(L, "%s: expected a table of integers or an i32 vector, found %s", what, luaL_typename(L, idx));
    *n = (int64_t)luaL_len(L, idx);
    int64_t *out = lua_newuserdatauv(L, (size_t)(*n > 0 ? *n : 1) * sizeof(int64_t), 0);
    for (int64_t i = 0; i < *n; i++) {
        lua_geti(L, idx, i + 1);
        int ok;
        lua_Integer v = lua_tointegerx(L, -1, &ok);
        if (!ok)
            sl__lua_error(L, "%s: entry %d must be an integer, found %s", what, (int)(i + 1), luaL_typename(L, -1));
        out[i] = v;
        lua_pop(L, 1);
    }
    return out;
}

/* Up to 3 integers (dims) from field key of the table at idx. */
static void read_dims(lua_State *L, int idx, const char *key, int64_t *out)
{
    if (lua_getfield(L, idx, key) != LUA_TNIL) {
        int64_t n;
        int64_t *v = read_ints(L, -1, key, &n);
        if (n > SL_PATTERN_MAX_DIMS)
            sl__lua_error(L, "mask pattern: %s has %d entries, at most 3", key, (int)n);
        for (int64_t i = 0; i < n; i++)
            out[i] = v[i];
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
}

static lua_Integer int_field(lua_State *L, int idx, const char *key)
{
    lua_getfield(L, idx, key);
    int ok = 1;
    lua_Integer v = lua_isnil(L, -1) ? 0 : lua_tointegerx(L, -1, &ok);
    if (!ok)
        sl__lua_error(L, "mask pattern: %s must be an integer, found %s", key, luaL_typename(L, -1));
    lua_pop(L, 1);
    return v;
}

static const char *const TERM_KEYS[] = {"kind",  "a",       "b",      "c",    "causal", "unit",     "offset",
                                        "head_step", "idx", "idx_ptr", "rate", "q_rate", "seed",    "n_dims",
                                        "grid",  "kernel",  "stride", "dilation", "dim_causal", NULL};

/* Reads term i of the table at idx into *t; arrays stay on the stack. */
static void read_term(lua_State *L, int idx, sl_pattern_term *t)
{
    int ti = lua_gettop(L);
    if (!lua_istable(L, ti))
        sl__lua_error(L, "mask pattern: a term must be a table");
    sl__lua_check_keys(L, ti, "mask pattern term", TERM_KEYS);
    memset(t, 0, sizeof *t);
    lua_getfield(L, ti, "kind");
    int k = sl_pattern_from_name(lua_tostring(L, -1));
    if (k < 0)
        sl__lua_error(L, "unknown mask pattern '%s'", lua_isstring(L, -1) ? lua_tostring(L, -1) : "?");
    lua_pop(L, 1);
    t->kind = (sl_pattern_kind)k;
    t->a = int_field(L, ti, "a");
    t->b = int_field(L, ti, "b");
    t->c = int_field(L, ti, "c");
    t->causal = (int)int_field(L, ti, "causal");
    t->unit = int_field(L, ti, "unit");
    t->offset = int_field(L, ti, "offset");
    t->head_step = int_field(L, ti, "head_step");
    t->seed = (uint64_t)int_field(L, ti, "seed");
    t->n_dims = (int)int_field(L, ti, "n_dims");
    lua_getfield(L, ti, "rate");
    t->rate = luaL_optnumber(L, -1, 0);
    lua_getfield(L, ti, "q_rate");
    t->q_rate = luaL_optnumber(L, -1, 0);
    lua_pop(L, 2);
    read_dims(L, ti, "grid", t->grid);
    read_dims(L, ti, "kernel", t->kernel);
    read_dims(L, ti, "stride", t->stride);
    read_dims(L, ti, "dilation", t->dilation);
    int64_t dc[SL_PATTERN_MAX_DIMS] = {0, 0, 0};
    read_dims(L, ti, "dim_causal", dc);
    for (int d = 0; d < SL_PATTERN_MAX_DIMS; d++)
        t->dim_causal[d] = dc[d] != 0;
    if (lua_getfield(L, ti, "idx") != LUA_TNIL)
        t->idx = read_ints(L, -1, "idx", &t->n_idx); /* the userdata stays above the field */
    if (lua_getfield(L, ti, "idx_ptr") != LUA_TNIL) {
        int64_t n;
        t->idx_ptr = read_ints(L, -1, "idx_ptr", &n);
        t->n_lists = (int)(n - 1);
        if (n < 2)
            sl__lua_error(L, "mask pattern: idx_ptr needs at least 2 entries");
    }
    (void)idx;
}

/* sl.mask_c.pattern({{kind=, a=, ...}, ...}, n_q, n_k [, bq, bk, n_heads]) */
static int l_pattern(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_Integer nq = luaL_checkinteger(L, 2), nk = luaL_checkinteger(L, 3);
    lua_Integer bq = luaL_optinteger(L, 4, 64), bk = luaL_optinteger(L, 5, 64), heads = luaL_optinteger(L, 6, 1);
    lua_Integer n = luaL_len(L, 1);
    if (n > 4096)
        sl__lua_error(L, "mask pattern: %d terms, at most 4096", (int)n);
    if (bq > 4096 || bk > 4096 || bq < 1 || bk < 1)
        sl__lua_error(L, "mask: block sizes must be in [1, 4096], found %d x %d", (int)bq, (int)bk);
    if (heads < 1 || heads > 65536)
        sl__lua_error(L, "mask: n_heads must be in [1, 65536], found %d", (int)heads);
    sl_pattern_term *terms = lua_newuserdatauv(L, sizeof *terms * (size_t)(n > 0 ? n : 1), 0);
    for (lua_Integer i = 0; i < n; i++) {
        luaL_checkstack(L, 8, "mask pattern");
        lua_geti(L, 1, i + 1);
        read_term(L, 1, &terms[i]);
        /* The term table stays on the stack below its arrays; both are
         * anchored until the call returns. */
    }
    sl_ctx *ctx = sl__lua_ctx(L)->ctx;
    sl_mask m;
    if (sl_mask_from_pattern_heads(ctx, terms, (int)n, (int)heads, nq, nk, (int)bq, (int)bk, &m))
        return sl__lua_fail(L, ctx);
    sl__lua_push_mask(L, m);
    return 1;
}

/* A lazy pattern (a Lua table with materialize_like) beside a mask becomes a
 * mask of the same sizes, so `mask op pattern` works in either order. */
static void coerce(lua_State *L, int idx, int other, const char *what)
{
    if (sl__lua_test_mask(L, idx) || !lua_istable(L, idx) || !sl__lua_test_mask(L, other))
        return;
    if (lua_getfield(L, idx, "materialize_like") != LUA_TFUNCTION)
        sl__lua_error(L, "%s: operand %d is neither a mask nor a pattern", what, idx);
    lua_pushvalue(L, idx);
    lua_pushvalue(L, other);
    lua_call(L, 2, 1);
    lua_replace(L, idx);
}

typedef sl_status (*binop_fn)(sl_ctx *, const sl_mask *, const sl_mask *, sl_mask *);

static int binop(lua_State *L, binop_fn fn, const char *what)
{
    lua_settop(L, 2);
    coerce(L, 1, 2, what);
    coerce(L, 2, 1, what);
    if (!sl__lua_test_mask(L, 1) || !sl__lua_test_mask(L, 2))
        sl__lua_error(L, "%s: expected two masks (or a mask and a pattern), found %s and %s", what,
                      luaL_typename(L, 1), luaL_typename(L, 2));
    sl_lua_mask *a = sl__lua_check_mask(L, 1), *b = sl__lua_check_mask(L, 2);
    sl_ctx *ctx = sl__lua_ctx(L)->ctx;
    sl_mask out;
    if (fn(ctx, &a->m, &b->m, &out))
        return sl__lua_fail(L, ctx);
    sl__lua_push_mask(L, out);
    return 1;
}

static int m_union(lua_State *L) { return binop(L, sl_mask_union, "mask union"); }
static int m_intersect(lua_State *L) { return binop(L, sl_mask_intersect, "mask intersect"); }
static int m_difference(lua_State *L) { return binop(L, sl_mask_difference, "mask difference"); }

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
    /* Copies: writing into the mask's own arrays would break the invariants
     * every query on it relies on. */
    sl_lua_mask *u = sl__lua_check_mask(L, 1);
    sl_ctx *ctx = sl__lua_ctx(L)->ctx;
    const sl_tensor *arrays[4] = {&u->m.row_ptr, &u->m.col_idx, &u->m.part, &u->m.bits};
    for (int i = 0; i < 4; i++) {
        sl_tensor copy;
        if (sl_tensor_convert(ctx, arrays[i], arrays[i]->dtype, &copy))
            return sl__lua_fail(L, ctx);
        sl__lua_push_tensor(L, copy);
    }
    return 4;
}

/* The permutation at idx (a table or i32 vector of 0-based positions), or
 * NULL when absent; n must match. */
static const int64_t *read_perm(lua_State *L, int idx, int64_t want, const char *what)
{
    if (lua_isnoneornil(L, idx))
        return NULL;
    int64_t n;
    const int64_t *p = read_ints(L, idx, what, &n);
    if (n != want)
        sl__lua_error(L, "%s: expected %d positions, found %d", what, (int)want, (int)n);
    return p;
}

static int permute_common(lua_State *L, int inverse)
{
    sl_lua_mask *u = sl__lua_check_mask(L, 1);
    const char *what = inverse ? "mask:inverse_permute" : "mask:permute";
    lua_settop(L, 3);
    if (lua_isnoneornil(L, 2))
        sl__lua_error(L, "%s: expected a permutation (table or i32 vector of 0-based positions)", what);
    const int64_t *pk = read_perm(L, 3, u->m.n_k, what);
    const int64_t *pq = read_perm(L, 2, pk ? u->m.n_q : u->m.n_k, what);
    sl_ctx *ctx = sl__lua_ctx(L)->ctx;
    sl_mask out;
    sl_status s = inverse ? sl_mask_permute_inverse(ctx, &u->m, pq, pk, &out) : sl_mask_permute(ctx, &u->m, pq, pk, &out);
    if (s)
        return sl__lua_fail(L, ctx);
    sl__lua_push_mask(L, out);
    return 1;
}

/* m:permute(perm [, perm_k]) / m:inverse_permute(perm [, perm_k]) */
static int m_permute(lua_State *L) { return permute_common(L, 0); }
static int m_inverse_permute(lua_State *L) { return permute_common(L, 1); }

/* m:causal_violations([perm [, perm_k]]) -> kept pairs that look ahead in original positions */
static int m_causal_violations(lua_State *L)
{
    sl_lua_mask *u = sl__lua_check_mask(L, 1);
    lua_settop(L, 3);
    const int64_t *pk = read_perm(L, 3, u->m.n_k, "mask:causal_violations");
    const int64_t *pq = read_perm(L, 2, pk ? u->m.n_q : u->m.n_k, "mask:causal_violations");
    if (!pk && pq && u->m.n_q != u->m.n_k)
        sl__lua_error(L, "mask:causal_violations: one permutation needs n_q == n_k");
    lua_pushinteger(L, sl_mask_causal_violations(&u->m, pq, pk));
    return 1;
}

/* Block sizes from a {bq=, bk=} table at idx (defaults: the mask's). */
static void read_blocks(lua_State *L, int idx, const char *what, const sl_mask *m, int *bq, int *bk)
{
    static const char *const keys[] = {"bq", "bk", NULL};
    *bq = m->bq;
    *bk = m->bk;
    if (lua_isnoneornil(L, idx))
        return;
    luaL_checktype(L, idx, LUA_TTABLE);
    sl__lua_check_keys(L, idx, what, keys);
    lua_Integer q = sl__lua_opt_int_field(L, idx, "bq", m->bq), k = sl__lua_opt_int_field(L, idx, "bk", m->bk);
    if (q < 1 || k < 1 || q > 4096 || k > 4096)
        sl__lua_error(L, "%s: block sizes must be in [1, 4096], found %d x %d", what, (int)q, (int)k);
    *bq = (int)q;
    *bk = (int)k;
}

static int resize_common(lua_State *L, int coarsen)
{
    sl_lua_mask *u = sl__lua_check_mask(L, 1);
    const char *what = coarsen ? "mask:coarsen" : "mask:resize";
    int bq, bk;
    read_blocks(L, 2, what, &u->m, &bq, &bk);
    sl_ctx *ctx = sl__lua_ctx(L)->ctx;
    sl_mask out;
    sl_status s = coarsen ? sl_mask_coarsen(ctx, &u->m, bq, bk, &out) : sl_mask_resize(ctx, &u->m, bq, bk, &out);
    if (s)
        return sl__lua_fail(L, ctx);
    sl__lua_push_mask(L, out);
    return 1;
}

/* m:resize{bq=, bk=} (same pairs) / m:coarsen{bq=, bk=} (blocks with a kept pair become full) */
static int m_resize(lua_State *L) { return resize_common(L, 0); }
static int m_coarsen(lua_State *L) { return resize_common(L, 1); }

/* m:to_index{rows_per_entry=} -> {row_ptr=, col=, rows_per_entry=, n_q=, n_k=, n_heads=, n_entries=} */
static int m_to_index(lua_State *L)
{
    sl_lua_mask *u = sl__lua_check_mask(L, 1);
    lua_Integer b = 1;
    if (!lua_isnoneornil(L, 2)) {
        static const char *const keys[] = {"rows_per_entry", NULL};
        luaL_checktype(L, 2, LUA_TTABLE);
        sl__lua_check_keys(L, 2, "mask:to_index", keys);
        b = sl__lua_opt_int_field(L, 2, "rows_per_entry", 1);
    }
    sl_ctx *ctx = sl__lua_ctx(L)->ctx;
    sl_mask_index x;
    if (sl_mask_to_index(ctx, &u->m, b, &x))
        return sl__lua_fail(L, ctx);
    lua_createtable(L, 0, 7);
    sl__lua_push_tensor(L, x.row_ptr);
    lua_setfield(L, -2, "row_ptr");
    sl__lua_push_tensor(L, x.col);
    lua_setfield(L, -2, "col");
    lua_Integer vals[] = {x.rows_per_entry, x.n_q, x.n_k, x.n_heads, x.n_entries};
    const char *names[] = {"rows_per_entry", "n_q", "n_k", "n_heads", "n_entries"};
    for (int i = 0; i < 5; i++) {
        lua_pushinteger(L, vals[i]);
        lua_setfield(L, -2, names[i]);
    }
    return 1;
}

/* m:to_bits() -> u8 tensor [heads, n_q, n_k] */
static int m_to_bits(lua_State *L)
{
    sl_lua_mask *u = sl__lua_check_mask(L, 1);
    sl_ctx *ctx = sl__lua_ctx(L)->ctx;
    sl_tensor t;
    if (sl_mask_to_bits(ctx, &u->m, &t))
        return sl__lua_fail(L, ctx);
    sl__lua_push_tensor(L, t);
    return 1;
}

/* sl.mask_c.from_bits(tensor, bq, bk) */
static int l_from_bits(lua_State *L)
{
    sl_lua_tensor *t = sl__lua_check_tensor(L, 1);
    lua_Integer bq = luaL_optinteger(L, 2, 64), bk = luaL_optinteger(L, 3, 64);
    if (bq < 1 || bk < 1 || bq > 4096 || bk > 4096)
        sl__lua_error(L, "mask from_bits: block sizes must be in [1, 4096], found %d x %d", (int)bq, (int)bk);
    sl_ctx *ctx = sl__lua_ctx(L)->ctx;
    sl_mask m;
    if (sl_mask_from_bits(ctx, &t->t, (int)bq, (int)bk, &m))
        return sl__lua_fail(L, ctx);
    sl__lua_push_mask(L, m);
    return 1;
}

/* sl.mask_c.from_index({row_ptr=, col=, rows_per_entry=, n_q=, n_k=}, bq, bk) */
static int l_from_index(lua_State *L)
{
    static const char *const keys[] = {"row_ptr", "col", "rows_per_entry", "n_q", "n_k", "n_heads", "n_entries", NULL};
    luaL_checktype(L, 1, LUA_TTABLE);
    sl__lua_check_keys(L, 1, "mask from_index", keys);
    lua_Integer bq = luaL_optinteger(L, 2, 64), bk = luaL_optinteger(L, 3, 64);
    if (bq < 1 || bk < 1 || bq > 4096 || bk > 4096)
        sl__lua_error(L, "mask from_index: block sizes must be in [1, 4096], found %d x %d", (int)bq, (int)bk);
    lua_getfield(L, 1, "row_ptr");
    sl_lua_tensor *rp = sl__lua_test_tensor(L, -1);
    lua_getfield(L, 1, "col");
    sl_lua_tensor *col = sl__lua_test_tensor(L, -1);
    if (!rp || !col)
        sl__lua_error(L, "mask from_index: row_ptr and col must be tensors");
    sl_mask_index x = {0};
    x.row_ptr = rp->t;
    x.col = col->t;
    x.rows_per_entry = sl__lua_opt_int_field(L, 1, "rows_per_entry", 1);
    x.n_q = sl__lua_opt_int_field(L, 1, "n_q", -1);
    x.n_k = sl__lua_opt_int_field(L, 1, "n_k", -1);
    x.n_heads = rp->t.ndim == 2 ? (int)rp->t.shape[0] : 0;
    if (x.n_q < 0 || x.n_k < 0)
        sl__lua_error(L, "mask from_index: n_q and n_k are required");
    x.n_entries = x.rows_per_entry > 0 ? (x.n_q + x.rows_per_entry - 1) / x.rows_per_entry : 0;
    sl_ctx *ctx = sl__lua_ctx(L)->ctx;
    sl_mask m;
    if (sl_mask_from_index(ctx, &x, (int)bq, (int)bk, &m))
        return sl__lua_fail(L, ctx);
    sl__lua_push_mask(L, m);
    return 1;
}

/* A boolean (or 0/1) field of the options table at idx, def when absent. */
static int bool_field(lua_State *L, int idx, const char *fn, const char *key, int def)
{
    int t = lua_getfield(L, idx, key), v = def;
    if (t == LUA_TBOOLEAN)
        v = lua_toboolean(L, -1);
    else if (t == LUA_TNUMBER && (lua_tonumber(L, -1) == 0 || lua_tonumber(L, -1) == 1))
        v = lua_tonumber(L, -1) != 0;
    else if (t != LUA_TNIL)
        sl__lua_error(L, "%s: %s must be a boolean, found %s", fn, key, luaL_typename(L, -1));
    lua_pop(L, 1);
    return v;
}

/* n_q and n_k (required) and block sizes of a selection's options table. */
static void sel_sizes(lua_State *L, int idx, const char *fn, const char *const *keys, int64_t *n_q, int64_t *n_k,
                      lua_Integer *bq, lua_Integer *bk)
{
    luaL_checktype(L, idx, LUA_TTABLE);
    sl__lua_check_keys(L, idx, fn, keys);
    *n_q = sl__lua_opt_int_field(L, idx, "n_q", -1);
    *n_k = sl__lua_opt_int_field(L, idx, "n_k", -1);
    if (*n_q < 0 || *n_k < 0)
        sl__lua_error(L, "%s: n_q and n_k are required (found n_q = %I, n_k = %I)", fn, (lua_Integer)*n_q,
                      (lua_Integer)*n_k);
    if (bq) {
        *bq = sl__lua_opt_int_field(L, idx, "bq", 64);
        *bk = sl__lua_opt_int_field(L, idx, "bk", 64);
        if (*bq < 1 || *bk < 1 || *bq > 4096 || *bk > 4096)
            sl__lua_error(L, "%s: block sizes must be in [1, 4096], found %I x %I", fn, *bq, *bk);
    }
}

/* sl.mask_c.from_blocks(keep_u8, {n_q=, n_k=, bq=64, bk=64, causal=true}) */
static int l_from_blocks(lua_State *L)
{
    static const char *const keys[] = {"n_q", "n_k", "bq", "bk", "causal", NULL};
    const char *fn = "sl.mask.from_blocks";
    sl_lua_tensor *t = sl__lua_check_tensor(L, 1);
    int64_t n_q, n_k;
    lua_Integer bq, bk;
    sel_sizes(L, 2, fn, keys, &n_q, &n_k, &bq, &bk);
    int causal = bool_field(L, 2, fn, "causal", 1);
    sl_ctx *ctx = sl__lua_ctx(L)->ctx;
    sl_mask m;
    if (sl_mask_from_blocks(ctx, &t->t, n_q, n_k, (int)bq, (int)bk, causal, &m))
        return sl__lua_fail(L, ctx);
    sl__lua_push_mask(L, m);
    return 1;
}

/* sl.mask_c.block_lists(keep_u8 [H, R, C], L [, into_i32 [H, R', L], row0 (1-based)]) -> i32 [H, R, L] (or into) */
static int l_block_lists(lua_State *L)
{
    sl_lua_tensor *t = sl__lua_check_tensor(L, 1);
    lua_Integer len = luaL_checkinteger(L, 2);
    sl_ctx *ctx = sl__lua_ctx(L)->ctx;
    if (!lua_isnoneornil(L, 3)) {
        sl_lua_tensor *into = sl__lua_check_tensor(L, 3);
        lua_Integer row = luaL_checkinteger(L, 4);
        if (sl_mask_block_lists(ctx, &t->t, (int64_t)len, &into->t, (int64_t)row - 1, NULL))
            return sl__lua_fail(L, ctx);
        lua_pushvalue(L, 3);
        return 1;
    }
    sl_tensor out;
    if (sl_mask_block_lists(ctx, &t->t, (int64_t)len, NULL, 0, &out))
        return sl__lua_fail(L, ctx);
    sl__lua_push_tensor(L, out);
    return 1;
}

/* sl.mask_c.from_slashes(offsets_i32, {n_q=, n_k=, bq=64, bk=64, widen=true}) */
static int l_from_slashes(lua_State *L)
{
    static const char *const keys[] = {"n_q", "n_k", "bq", "bk", "widen", NULL};
    const char *fn = "sl.mask.from_slashes";
    sl_lua_tensor *t = sl__lua_check_tensor(L, 1);
    int64_t n_q, n_k;
    lua_Integer bq, bk;
    sel_sizes(L, 2, fn, keys, &n_q, &n_k, &bq, &bk);
    int widen = bool_field(L, 2, fn, "widen", 1);
    sl_ctx *ctx = sl__lua_ctx(L)->ctx;
    sl_mask m;
    if (sl_mask_from_slashes(ctx, &t->t, n_q, n_k, (int)bq, (int)bk, widen, &m))
        return sl__lua_fail(L, ctx);
    sl__lua_push_mask(L, m);
    return 1;
}

/* sl.mask_c.index_from_columns(cols_i32, {n_q=, n_k=, rows_per_entry=64, causal=true})
 * -> {row_ptr=, col=, rows_per_entry=, n_q=, n_k=, n_heads=, n_entries=} (as m:to_index) */
static int l_index_from_columns(lua_State *L)
{
    static const char *const keys[] = {"n_q", "n_k", "rows_per_entry", "causal", "strict", NULL};
    const char *fn = "sl.mask.index_from_columns";
    sl_lua_tensor *t = sl__lua_check_tensor(L, 1);
    int64_t n_q, n_k;
    sel_sizes(L, 2, fn, keys, &n_q, &n_k, NULL, NULL);
    lua_Integer b = sl__lua_opt_int_field(L, 2, "rows_per_entry", 64);
    int causal = bool_field(L, 2, fn, "causal", 1);
    if (causal && bool_field(L, 2, fn, "strict", 0))
        causal = 2;
    sl_ctx *ctx = sl__lua_ctx(L)->ctx;
    sl_mask_index x;
    if (sl_mask_index_from_columns(ctx, &t->t, n_q, n_k, b, causal, &x))
        return sl__lua_fail(L, ctx);
    lua_createtable(L, 0, 7);
    sl__lua_push_tensor(L, x.row_ptr);
    lua_setfield(L, -2, "row_ptr");
    sl__lua_push_tensor(L, x.col);
    lua_setfield(L, -2, "col");
    lua_Integer vals[] = {x.rows_per_entry, x.n_q, x.n_k, x.n_heads, x.n_entries};
    const char *names[] = {"rows_per_entry", "n_q", "n_k", "n_heads", "n_entries"};
    for (int i = 0; i < 5; i++) {
        lua_pushinteger(L, vals[i]);
        lua_setfield(L, -2, names[i]);
    }
    return 1;
}

/* sl.mask_c.columns_in_block(cols, {n=, bq=64, bk=64}) -> mask (issue 20) */
static int l_columns_in_block(lua_State *L)
{
    static const char *const keys[] = {"n", "bq", "bk", NULL};
    sl_lua_tensor *t = sl__lua_check_tensor(L, 1);
    luaL_checktype(L, 2, LUA_TTABLE);
    sl__lua_check_keys(L, 2, "sl.mask.columns_in_block", keys);
    lua_Integer n = sl__lua_opt_int_field(L, 2, "n", -1), bq = sl__lua_opt_int_field(L, 2, "bq", 64),
                bk = sl__lua_opt_int_field(L, 2, "bk", 64);
    if (n < 0)
        sl__lua_error(L, "sl.mask.columns_in_block: n is required");
    if (bq < 1 || bk < 1 || bq > 4096 || bk > 4096)
        sl__lua_error(L, "sl.mask.columns_in_block: block sizes must be in [1, 4096], found %d x %d", (int)bq, (int)bk);
    sl_ctx *ctx = sl__lua_ctx(L)->ctx;
    sl_mask m;
    if (sl_mask_columns_in_block(ctx, &t->t, n, (int)bq, (int)bk, &m))
        return sl__lua_fail(L, ctx);
    sl__lua_push_mask(L, m);
    return 1;
}

/* sl.mask_c.index_overlap(mask, {row_ptr=, col=, rows_per_entry=, n_q=, n_k=, ...}) -> pairs (issue 20) */
static int l_index_overlap(lua_State *L)
{
    sl_lua_mask *m = sl__lua_check_mask(L, 1);
    luaL_checktype(L, 2, LUA_TTABLE);
    lua_getfield(L, 2, "row_ptr");
    sl_lua_tensor *rp = sl__lua_test_tensor(L, -1);
    lua_getfield(L, 2, "col");
    sl_lua_tensor *col = sl__lua_test_tensor(L, -1);
    if (!rp || !col)
        sl__lua_error(L, "sl.mask.index_overlap: expected index lists {row_ptr = tensor, col = tensor, ...}");
    sl_mask_index x = {0};
    x.row_ptr = rp->t;
    x.col = col->t;
    x.rows_per_entry = sl__lua_opt_int_field(L, 2, "rows_per_entry", 1);
    x.n_q = sl__lua_opt_int_field(L, 2, "n_q", -1);
    x.n_k = sl__lua_opt_int_field(L, 2, "n_k", -1);
    x.n_heads = rp->t.ndim == 2 ? (int)rp->t.shape[0] : 0;
    x.n_entries = x.rows_per_entry > 0 ? (x.n_q + x.rows_per_entry - 1) / x.rows_per_entry : 0;
    sl_ctx *ctx = sl__lua_ctx(L)->ctx;
    int64_t pairs;
    if (sl_mask_index_overlap(ctx, &m->m, &x, &pairs))
        return sl__lua_fail(L, ctx);
    lua_pushinteger(L, (lua_Integer)pairs);
    return 1;
}

/* sl.mask_c.assign({mask, ...}) */
static int l_assign(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_Integer n = luaL_len(L, 1);
    if (n < 1 || n > 65536)
        sl__lua_error(L, "mask assign: expected 1..65536 masks, found %d", (int)n);
    sl_mask *ms = lua_newuserdatauv(L, sizeof *ms * (size_t)n, 0);
    for (lua_Integer i = 0; i < n; i++) {
        lua_geti(L, 1, i + 1);
        sl_lua_mask *u = sl__lua_test_mask(L, -1);
        if (!u || !u->m.row_ptr.buf)
            sl__lua_error(L, "mask assign: entry %d is not a mask", (int)(i + 1));
        ms[i] = u->m;
        lua_pop(L, 1);
    }
    sl_ctx *ctx = sl__lua_ctx(L)->ctx;
    sl_mask out;
    if (sl_mask_assign(ctx, ms, (int)n, &out))
        return sl__lua_fail(L, ctx);
    sl__lua_push_mask(L, out);
    return 1;
}

/* sl.mask_c.align(semantic, executed [, causal]) -> table */
static int l_align(lua_State *L)
{
    sl_lua_mask *a = sl__lua_check_mask(L, 1), *b = sl__lua_check_mask(L, 2);
    int causal = lua_isnoneornil(L, 3) ? 1 : lua_toboolean(L, 3);
    sl_ctx *ctx = sl__lua_ctx(L)->ctx;
    sl_mask_alignment al;
    if (sl_mask_align(ctx, &a->m, &b->m, causal, &al))
        return sl__lua_fail(L, ctx);
    lua_createtable(L, 0, 7);
    lua_pushnumber(L, al.density_semantic);
    lua_setfield(L, -2, "density_semantic");
    lua_pushnumber(L, al.density_executed);
    lua_setfield(L, -2, "density_executed");
    lua_pushnumber(L, al.recall);
    lua_setfield(L, -2, "recall");
    lua_pushnumber(L, al.extra);
    lua_setfield(L, -2, "extra");
    lua_pushinteger(L, al.kept_semantic);
    lua_setfield(L, -2, "kept_semantic");
    lua_pushinteger(L, al.kept_executed);
    lua_setfield(L, -2, "kept_executed");
    lua_pushinteger(L, al.kept_both);
    lua_setfield(L, -2, "kept_both");
    return 1;
}

/* sl.mask_c.is_mask(x) */
static int l_is_mask(lua_State *L)
{
    lua_pushboolean(L, sl__lua_test_mask(L, 1) != NULL);
    return 1;
}

/* sl.mask_c.drop_draw(seed, head, which, position) */
static int l_drop_draw(lua_State *L)
{
    lua_pushnumber(L, sl_mask_drop_draw((uint64_t)luaL_checkinteger(L, 1), luaL_checkinteger(L, 2),
                                        (int)luaL_checkinteger(L, 3), luaL_checkinteger(L, 4)));
    return 1;
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
    char line[200];
    snprintf(line, sizeof line, "mask %d head%s, n_q=%lld n_k=%lld, blocks %dx%d, density %.4f (of causal pairs)%s\n",
             m->n_heads, m->n_heads == 1 ? "" : "s", (long long)m->n_q, (long long)m->n_k, m->bq, m->bk,
             sl_mask_density(m, 1), m->n_heads > 1 ? "; head 1:" : "");
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
    static const luaL_Reg methods[] = {{"density", m_density},
                                       {"kept", m_kept},
                                       {"get", m_get},
                                       {"info", m_info},
                                       {"arrays", m_arrays},
                                       {"close", m_close},
                                       {"union", m_union},
                                       {"intersect", m_intersect},
                                       {"difference", m_difference},
                                       {"permute", m_permute},
                                       {"inverse_permute", m_inverse_permute},
                                       {"causal_violations", m_causal_violations},
                                       {"resize", m_resize},
                                       {"coarsen", m_coarsen},
                                       {"to_index", m_to_index},
                                       {"to_bits", m_to_bits},
                                       {NULL, NULL}};
    static const luaL_Reg meta[] = {{"__gc", m_close},       {"__close", m_close}, {"__tostring", m_tostring},
                                    {"__add", m_union},      {"__mul", m_intersect}, {"__sub", m_difference},
                                    {NULL, NULL}};
    static const luaL_Reg lib[] = {{"pattern", l_pattern},     {"from_bits", l_from_bits}, {"from_index", l_from_index},
                                   {"assign", l_assign},       {"align", l_align},         {"drop_draw", l_drop_draw},
                                   {"is_mask", l_is_mask},     {"from_blocks", l_from_blocks}, {"block_lists", l_block_lists},
                                   {"from_slashes", l_from_slashes}, {"index_from_columns", l_index_from_columns},
                                   {"columns_in_block", l_columns_in_block}, {"index_overlap", l_index_overlap},
                                   {NULL, NULL}};
    if (luaL_newmetatable(L, SL_LUA_MASK)) {
        luaL_setfuncs(L, meta, 0);
        luaL_newlib(L, methods);
        lua_setfield(L, -2, "__index");
    }
    lua_pop(L, 1);
    luaL_newlib(L, lib);
    lua_setfield(L, -2, "mask_c");
}
