/* l_sparselab.c — luaopen_sparselab: builds the module table from the C
 * bindings, installs the embedded pure-Lua library, and runs
 * sparselab/init.lua, which adds methods, masks, evaluation and the CLI.
 *
 * Layers of lua/ (each includes only the ones below it):
 *   lua/prog/       the program (main.c, the REPL) and the build tool embed.c
 *   lua/bind/       the C bindings (this folder; l_X.h owned by l_X.c, l_tensor.h
 *                   the base every binding uses), luaopen_sparselab
 *   lua/runner/     the libuv sweep runner, a C library with no Lua in it
 *   core/, store/   the C library and the results store
 * lua/sparselab/ is the pure-Lua library, embedded into the bindings. */
#include "l_sparselab.h"
#include "l_fit.h"
#include "l_png.h"
#include "l_shape.h"
#include "l_io.h"
#include "l_json.h"
#include "l_kvcache.h"
#include "l_mask.h"
#include "l_model.h"
#include "l_op.h"
#include "l_runner.h"
#include "l_store.h"
#include "l_tensor.h"
#include "l_util.h"

#include <stdlib.h>
#include <string.h>

typedef struct sl_embedded_lua { const char *module, *path; const char *text; size_t len; } sl_embedded_lua;
extern const sl_embedded_lua sl__embedded_lua[];

/* Loader for one embedded module (upvalue: its index). With the environment
 * variable SPARSELAB_LUA_DIR set, the file is read from that directory
 * instead, so recipes can be edited without rebuilding. */
static int load_embedded(lua_State *L)
{
    const sl_embedded_lua *e = &sl__embedded_lua[lua_tointeger(L, lua_upvalueindex(1))];
    const char *dir = getenv("SPARSELAB_LUA_DIR");
    int st;
    if (dir && *dir) {
        /* e->path is "lua/<...>.lua"; the directory replaces "lua". */
        const char *rel = strchr(e->path, '/');
        lua_pushfstring(L, "%s%s", dir, rel ? rel : e->path);
        st = luaL_loadfilex(L, lua_tostring(L, -1), "t");
        lua_remove(L, -2);
    } else {
        lua_pushfstring(L, "@%s", e->path);
        st = luaL_loadbufferx(L, e->text, e->len, lua_tostring(L, -1), "t");
        lua_remove(L, -2);
    }
    if (st != LUA_OK)
        return lua_error(L);
    lua_pushstring(L, e->module);
    lua_call(L, 1, 1);
    return 1;
}

/* Installs loaders for the embedded pure-Lua library into package.preload. */
static void preload_embedded(lua_State *L)
{
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
    for (int i = 0; sl__embedded_lua[i].module; i++) {
        lua_pushinteger(L, i);
        lua_pushcclosure(L, load_embedded, 1);
        lua_setfield(L, -2, sl__embedded_lua[i].module);
    }
    lua_pop(L, 1);
}

/* sl.embedded_modules() -> sorted list of embedded module names */
static int l_embedded_modules(lua_State *L)
{
    lua_newtable(L);
    for (int i = 0; sl__embedded_lua[i].module; i++) {
        lua_pushstring(L, sl__embedded_lua[i].module);
        lua_rawseti(L, -2, i + 1);
    }
    return 1;
}

static int l_set_interrupt(lua_State *L)
{
    sl__lua_ctx(L)->interrupt = lua_toboolean(L, 1);
    return 0;
}

int luaopen_sparselab(lua_State *L)
{
    luaL_checkversion(L);
    sl__lua_ctx(L);
    lua_newtable(L);
    sl__lua_open_tensor(L);
    sl__lua_open_ops(L);
    sl__lua_open_mask(L);
    sl__lua_open_io(L);
    sl__lua_open_util(L);
    sl__lua_open_model(L);
    sl__lua_open_runner(L);
    sl__lua_open_fit(L);
    sl__lua_open_png(L);
    sl__lua_open_shape(L);
    sl__lua_open_kvcache(L);
    sl__lua_open_store(L);
    lua_setfield(L, -2, "store");
    lua_pushcfunction(L, sl__lua_json_encode);
    lua_setfield(L, -2, "json_encode");
    lua_pushcfunction(L, sl__lua_json_decode);
    lua_setfield(L, -2, "json_decode_c");
    lua_pushcfunction(L, l_embedded_modules);
    lua_setfield(L, -2, "embedded_modules");
    lua_pushcfunction(L, l_set_interrupt);
    lua_setfield(L, -2, "set_interrupt");
    /* Registered before init.lua runs so that the Lua files can
     * `require "sparselab"` while the module is still loading. */
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
    lua_pushvalue(L, -2);
    lua_setfield(L, -2, "sparselab");
    lua_pop(L, 1);
    preload_embedded(L);
    /* The embedded sparselab/init.lua is preloaded as "sparselab"; its
     * loader is called directly, since `require "sparselab"` now answers
     * with the table above. */
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
    lua_getfield(L, -1, "sparselab");
    lua_remove(L, -2);
    lua_pushliteral(L, "sparselab");
    lua_call(L, 1, 0);
    return 1;
}
