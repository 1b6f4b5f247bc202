/* l_op.c — the one generic op binding: walks the op table and registers
 * sl.<family>.<name>(inputs..., {params, backend=}) for every op (optional
 * inputs as params: bias = t for opt.bias, state_o = t for state.o), plus
 * sl.ops() (the table of ops, parameters and backends) and sl.op_flops(). */
#include "l_op.h"
#include "l_mask.h"
#include "l_tensor.h"

#include <stdio.h>
#include <string.h>

/* The name of input i ("opt.bias") into buf. */
static void input_name(const sl_op_info *info, int i, char *buf, size_t n)
{
    const char *p = info->inputs;
    for (int k = 0; k < i && p; k++)
        if ((p = strchr(p, ',')))
            p++;
    size_t len = p ? strcspn(p, ",") : 0;
    if (len >= n)
        len = n - 1;
    memcpy(buf, p ? p : "", len);
    buf[len] = '\0';
}

/* Optional inputs (opt.X, state.X) come from the params table: opt.X from
 * key X, state.X from key state_X. Returns the slot of key, or -1. */
static int optional_slot(const sl_op_info *info, const char *key)
{
    for (int i = 0; i < info->n_in; i++) {
        char nm[32], want[40];
        input_name(info, i, nm, sizeof nm);
        if (strncmp(nm, "opt.", 4) == 0)
            snprintf(want, sizeof want, "%s", nm + 4);
        else if (strncmp(nm, "state.", 6) == 0)
            snprintf(want, sizeof want, "state_%s", nm + 6);
        else
            continue;
        if (strcmp(want, key) == 0)
            return i;
    }
    return -1;
}

/* 1 when the op has a parameter called key: an optional input of the same
 * name (select.topk's opt.k beside its param k) then takes a tensor, the
 * parameter a number. */
static int param_named(sl_op op, const char *key)
{
    const sl_op_info *info = sl_op_info_get(op);
    for (int i = 0; i < info->n_fields; i++)
        if (strcmp(info->fields[i].name, key) == 0)
            return 1;
    return 0;
}

/* Inputs before the first optional one must be given. */
static int required_inputs(const sl_op_info *info)
{
    for (int i = 0; i < info->n_in; i++) {
        char nm[32];
        input_name(info, i, nm, sizeof nm);
        if (strncmp(nm, "opt.", 4) == 0 || strncmp(nm, "state.", 6) == 0)
            return i;
    }
    return info->n_in;
}

/* Collects the op's inputs from the stack (masks expand into their arrays)
 * and its parameters from an optional trailing table. Returns the backend.
 * in has SL_OP_MAX_INPUTS slots; optional inputs not given stay empty. */
static sl_backend_id read_call(lua_State *L, sl_op op, sl_tensor *in, void *params)
{
    const sl_op_info *info = sl_op_info_get(op);
    sl_ctx *ctx = sl__lua_ctx(L)->ctx;
    int top = lua_gettop(L), n = 0, ptab = 0;
    memset(in, 0, SL_OP_MAX_INPUTS * sizeof *in);
    if (top > 0 && lua_type(L, top) == LUA_TTABLE)
        ptab = top--;
    sl_op_params_default(op, params);
    int mask_given = 0;
    for (int a = 1; a <= top; a++) {
        sl_lua_mask *m = sl__lua_test_mask(L, a);
        if (m) {
            if (n != 3 || !strstr(info->inputs, "mask."))
                sl__lua_error(L, "%s: a mask at argument %d, but the op takes no mask there (inputs %s)", info->name, a,
                           info->inputs);
            if (m->m.n_q != in[0].shape[1] || m->m.n_k != in[1].shape[1])
                sl__lua_error(L, "%s: the mask was made for n_q = %I, n_k = %I but q has %I tokens and k %I",
                              info->name, (lua_Integer)m->m.n_q, (lua_Integer)m->m.n_k, (lua_Integer)in[0].shape[1],
                              (lua_Integer)in[1].shape[1]);
            sl_mask_inputs(&m->m, &in[0], &in[1], &in[2], in); /* fills slots 3..6 */
            n += 4;
            mask_given = 1;
            if (sl_op_params_set(ctx, op, params, "bq", m->m.bq) || sl_op_params_set(ctx, op, params, "bk", m->m.bk))
                sl__lua_fail(L, ctx);
            continue;
        }
        sl_lua_tensor *t = sl__lua_test_tensor(L, a);
        if (!t)
            sl__lua_error(L, "%s: argument %d must be a tensor%s, found %s", info->name, a,
                       strstr(info->inputs, "mask.") ? " or a mask" : "", luaL_typename(L, a));
        if (n >= info->n_in)
            sl__lua_error(L, "%s: too many inputs (expected %s)", info->name, info->inputs);
        in[n++] = t->t;
    }
    if (n < required_inputs(info))
        sl__lua_error(L, "%s: expected inputs %s, found %d tensor(s)%s", info->name, info->inputs, n,
                   strstr(info->inputs, "mask.") && !mask_given ? " and no mask" : "");
    sl_backend_id be = SL_BACKEND_CPU;
    if (ptab) {
        lua_pushnil(L);
        while (lua_next(L, ptab)) {
            if (lua_type(L, -2) != LUA_TSTRING)
                sl__lua_error(L, "%s: parameter keys must be strings", info->name);
            const char *key = lua_tostring(L, -2);
            if (strcmp(key, "backend") == 0) {
                int b = sl_backend_from_name(luaL_checkstring(L, -1));
                if (b < 0)
                    sl__lua_error(L, "%s: unknown backend '%s' (expected ref, cpu or cuda)", info->name,
                               lua_tostring(L, -1));
                be = (sl_backend_id)b;
            } else if (optional_slot(info, key) >= 0 &&
                       !(lua_type(L, -1) == LUA_TNUMBER && param_named(op, key))) {
                int slot = optional_slot(info, key);
                sl_lua_tensor *t = sl__lua_test_tensor(L, -1);
                if (!t || !t->t.buf)
                    sl__lua_error(L, "%s: parameter '%s' must be an open tensor, found %s", info->name, key,
                               luaL_typename(L, -1));
                if (slot < n)
                    sl__lua_error(L, "%s: input %d is given both as an argument and as '%s'", info->name, slot + 1,
                               key);
                in[slot] = t->t;
            } else if (sl__lua_test_tensor(L, -1)) {
                sl__lua_error(L, "%s: '%s' is not an optional input of this op (inputs %s)", info->name, key,
                           info->inputs);
            } else {
                double v = 0;
                if (lua_isboolean(L, -1))
                    v = lua_toboolean(L, -1);
                else if (lua_type(L, -1) == LUA_TNUMBER)
                    v = lua_tonumber(L, -1);
                else
                    sl__lua_error(L, "%s: parameter '%s' must be a number or boolean, found %s", info->name, key,
                               luaL_typename(L, -1));
                if (sl_op_params_set(ctx, op, params, key, v))
                    sl__lua_fail(L, ctx);
            }
            lua_pop(L, 1);
        }
    }
    return be;
}

static int l_op_call(lua_State *L)
{
    sl_op op = (sl_op)lua_tointeger(L, lua_upvalueindex(1));
    const sl_op_info *info = sl_op_info_get(op);
    _Alignas(8) unsigned char params[256];
    sl_tensor in[SL_OP_MAX_INPUTS], out[4];
    sl_backend_id be = read_call(L, op, in, params);
    sl_ctx *ctx = sl__lua_ctx(L)->ctx;
    if (sl_op_run(ctx, be, op, params, in, out))
        return sl__lua_fail(L, ctx);
    for (int i = 0; i < info->n_out; i++) {
        /* fresh buffers Lua then writes only through t:set: remember their
         * input scans (issue 20, session 4) */
        sl_tensor_cache_checks(&out[i]);
        sl__lua_push_tensor(L, out[i]);
    }
    return info->n_out;
}

/* sl.op_flops(name, inputs..., params) — the cost function of an op. */
static int l_op_flops(lua_State *L)
{
    const char *name = luaL_checkstring(L, 1);
    sl_op op = sl_op_find(name);
    if (op == SL_OP__COUNT)
        sl__lua_error(L, "sl.op_flops: unknown op '%s'", name);
    lua_remove(L, 1);
    _Alignas(8) unsigned char params[256];
    sl_tensor in[SL_OP_MAX_INPUTS];
    read_call(L, op, in, params);
    sl_ctx *ctx = sl__lua_ctx(L)->ctx;
    if (sl_op_check(ctx, op, params, in))
        return sl__lua_fail(L, ctx);
    lua_pushnumber(L, sl_op_flops(op, params, in));
    return 1;
}

static const char *kind_name(sl_param_kind k)
{
    return k == SL_PK_INT ? "int" : k == SL_PK_BOOL ? "bool" : "number";
}

/* sl.ops() — every op with its inputs, outputs, parameters and backends. */
static int l_ops(lua_State *L)
{
    lua_createtable(L, SL_OP__COUNT, 0);
    for (int o = 0; o < SL_OP__COUNT; o++) {
        const sl_op_info *info = sl_op_info_get((sl_op)o);
        lua_createtable(L, 0, 8);
        lua_pushstring(L, info->name);
        lua_setfield(L, -2, "name");
        lua_pushstring(L, info->inputs);
        lua_setfield(L, -2, "inputs");
        lua_pushstring(L, info->outputs);
        lua_setfield(L, -2, "outputs");
        lua_pushstring(L, info->doc);
        lua_setfield(L, -2, "doc");
        lua_createtable(L, info->n_fields, 0);
        int k = 0;
        for (int f = 0; f < info->n_fields; f++) {
            const sl_param_field *fd = &info->fields[f];
            if (strcmp(fd->name, "reserved") == 0)
                continue;
            lua_createtable(L, 0, 6);
            lua_pushstring(L, fd->name);
            lua_setfield(L, -2, "name");
            lua_pushstring(L, kind_name(fd->kind));
            lua_setfield(L, -2, "kind");
            lua_pushnumber(L, fd->def);
            lua_setfield(L, -2, "default");
            lua_pushnumber(L, fd->lo);
            lua_setfield(L, -2, "min");
            lua_pushnumber(L, fd->hi);
            lua_setfield(L, -2, "max");
            lua_pushstring(L, fd->doc);
            lua_setfield(L, -2, "doc");
            lua_rawseti(L, -2, ++k);
        }
        lua_setfield(L, -2, "params");
        lua_createtable(L, 0, SL_BACKEND__COUNT);
        for (int b = 0; b < SL_BACKEND__COUNT; b++) {
            lua_pushboolean(L, sl_backend_supports((sl_backend_id)b, (sl_op)o));
            lua_setfield(L, -2, sl_backend_name((sl_backend_id)b));
        }
        lua_setfield(L, -2, "backends");
        /* dtypes: per backend with a kernel, the dtypes it reads natively for q, k, v */
        lua_createtable(L, 0, SL_BACKEND__COUNT);
        for (int b = 0; b < SL_BACKEND__COUNT; b++) {
            if (!sl_backend_supports((sl_backend_id)b, (sl_op)o))
                continue;
            const unsigned bits = sl_backend_native_dtypes((sl_backend_id)b, (sl_op)o);
            const sl_dtype order[3] = {SL_F32, SL_BF16, SL_F16};
            lua_createtable(L, 3, 0);
            int n = 0;
            for (int t = 0; t < 3; t++)
                if (bits & (1u << order[t])) {
                    lua_pushstring(L, sl_dtype_name(order[t]));
                    lua_rawseti(L, -2, ++n);
                }
            lua_setfield(L, -2, sl_backend_name((sl_backend_id)b));
        }
        lua_setfield(L, -2, "dtypes");
        lua_rawseti(L, -2, o + 1);
    }
    return 1;
}

void sl__lua_open_ops(lua_State *L)
{
    for (int o = 0; o < SL_OP__COUNT; o++) {
        const sl_op_info *info = sl_op_info_get((sl_op)o);
        const char *dot = strchr(info->name, '.');
        lua_pushlstring(L, info->name, (size_t)(dot - info->name));
        if (lua_getfield(L, -2, lua_tostring(L, -1)) != LUA_TTABLE) {
            lua_pop(L, 1);
            lua_newtable(L);
            lua_pushvalue(L, -1);
            lua_setfield(L, -4, lua_tostring(L, -3));
        }
        lua_pushinteger(L, o);
        lua_pushcclosure(L, l_op_call, 1);
        lua_setfield(L, -2, dot + 1);
        lua_pop(L, 2);
    }
    lua_pushcfunction(L, l_ops);
    lua_setfield(L, -2, "ops");
    lua_pushcfunction(L, l_op_flops);
    lua_setfield(L, -2, "op_flops");
}
