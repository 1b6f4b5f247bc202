/* l_tensor.h — what every Lua binding file uses, owned by l_tensor.c (the
 * lowest binding, which includes no other): the per-state context, the tensor
 * userdata, error raising that releases C resources first, and table-argument
 * helpers; and sl__lua_open_tensor (sl.tensor, sl.zeros, sl.randn ...). */
#ifndef SL_L_TENSOR_H
#define SL_L_TENSOR_H

#include <lauxlib.h>
#include <lua.h>

#include "sparselab.h"

#define SL_LUA_TENSOR "sparselab.tensor"
#define SL_LUA_CTX "sparselab.ctx"

/* One context per Lua state, kept in the registry. The interrupt flag is
 * raised by the host's SIGINT handler and polled by long-running ops. */
typedef struct sl_lua_ctx {
    sl_ctx *ctx;
    volatile int interrupt;
} sl_lua_ctx;

typedef struct sl_lua_tensor { sl_tensor t; } sl_lua_tensor;

/* The state's context (created on first use). */
sl_lua_ctx *sl__lua_ctx(lua_State *L);
/* Raises a Lua error with the context's message (no position prefix, so the
 * host can tell a user error from a bug in sparselab's own Lua code). */
int sl__lua_fail(lua_State *L, sl_ctx *ctx);
/* luaL_error without the position prefix: errors about the user's input read
 * the same wherever the call came from (lua_pushfstring formats: %s %d %I %f %p %c %%). */
int sl__lua_error(lua_State *L, const char *fmt, ...);
/* Pushes a new userdata owning t (the reference moves into Lua). */
sl_lua_tensor *sl__lua_push_tensor(lua_State *L, sl_tensor t);
sl_lua_tensor *sl__lua_check_tensor(lua_State *L, int idx);
sl_lua_tensor *sl__lua_test_tensor(lua_State *L, int idx);
/* Reads an integer field of a table argument with a default. */
lua_Integer sl__lua_opt_int_field(lua_State *L, int idx, const char *key, lua_Integer def);
/* Errors when a table has a key outside the NULL-terminated list. */
void sl__lua_check_keys(lua_State *L, int idx, const char *what, const char *const *allowed);

/* Adds sl.tensor, sl.zeros, sl.randn ... to the table on top. */
void sl__lua_open_tensor(lua_State *L);

#endif
