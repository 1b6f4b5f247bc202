/* lbind.h — what the Lua binding files share: the per-state context, the
 * tensor and mask userdata, and error raising that releases C resources first. */
#ifndef SL_LBIND_H
#define SL_LBIND_H

#include <lauxlib.h>
#include <lua.h>

#include "sparselab.h"

#define SL_LUA_TENSOR "sparselab.tensor"
#define SL_LUA_MASK "sparselab.mask"
#define SL_LUA_CTX "sparselab.ctx"

/* One context per Lua state, kept in the registry. The interrupt flag is
 * raised by the host's SIGINT handler and polled by long-running ops. */
typedef struct sl_lua_ctx {
    sl_ctx *ctx;
    volatile int interrupt;
} sl_lua_ctx;

typedef struct sl_lua_tensor { sl_tensor t; } sl_lua_tensor;
typedef struct sl_lua_mask { sl_mask m; } sl_lua_mask;

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
sl_lua_mask *sl__lua_push_mask(lua_State *L, sl_mask m);
sl_lua_mask *sl__lua_check_mask(lua_State *L, int idx);
sl_lua_mask *sl__lua_test_mask(lua_State *L, int idx);
/* Reads an integer field of a table argument with a default. */
lua_Integer sl__lua_opt_int_field(lua_State *L, int idx, const char *key, lua_Integer def);
/* Errors when a table has a key outside the NULL-terminated list. */
void sl__lua_check_keys(lua_State *L, int idx, const char *what, const char *const *allowed);

void sl__lua_open_tensor(lua_State *L);   /* adds sl.tensor... to the table on top */
void sl__lua_open_ops(lua_State *L);      /* adds sl.<family>.<op> ... */
void sl__lua_open_mask(lua_State *L);     /* adds sl.mask_c (materialised masks) */
void sl__lua_open_io(lua_State *L);       /* adds sl.load / sl.save */
void sl__lua_open_util(lua_State *L);     /* sl.time, sl.backends, sl.bench_sgemm ... */
void sl__lua_open_model(lua_State *L);    /* sl.model_c, sl.tokenizer_c */
void sl__lua_open_fit(lua_State *L);      /* sl.fit_c (GSL least squares, distributions) */
int sl__lua_open_store(lua_State *L);     /* pushes the store table */
void sl__lua_open_runner(lua_State *L);   /* sl.runner_c (l_runner.c; the runner is runner.c) */
/* JSON on cJSON (l_json.c). sl.json_encode / sl.json_decode: */
int sl__lua_json_encode(lua_State *L);
int sl__lua_json_decode(lua_State *L);
/* Pushes the JSON text of the value at idx; errors start with root. */
void sl__lua_json_push(lua_State *L, int idx, const char *root);
/* Pushes a userdata owning a cJSON tree (deleted by __gc, so a raised error
 * leaks nothing) and returns its root slot. */
struct cJSON **sl__lua_json_box(lua_State *L);
/* Pushes the unformatted text of the tree in the box at index box and
 * frees the tree. */
void sl__lua_json_print(lua_State *L, int box);
/* A finite double as the shortest of %.15g/%.16g/%.17g that reads back;
 * infinities as 1e999 / -1e999. */
void sl__lua_json_number(double x, char *out, size_t n);
/* Installs loaders for the embedded pure-Lua library into package.preload. */
void sl__lua_preload_embedded(lua_State *L);

#endif
