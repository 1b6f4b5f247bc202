/* fuzz_lua.h — the Lua state of the Lua-level targets: made once per process
 * (the sparselab module preloaded as the program does), with an allocator
 * that refuses past a cap (a memory bomb is a Lua memory error) and an
 * instruction-count hook that stops a run after a budget (an endless loop is
 * a Lua error), both armed around each input. */
#ifndef SL_FUZZ_LUA_H
#define SL_FUZZ_LUA_H

#include "fuzz.h"
#include "bind/l_sparselab.h"

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

typedef struct fuzz_lua {
    lua_State *L;
    size_t used, cap; /* bytes; cap 0 = no cap */
} fuzz_lua;

static inline void *fuzz_lua_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    fuzz_lua *f = ud;
    if (!ptr)
        osize = 0;
    if (nsize == 0) {
        free(ptr);
        f->used -= osize;
        return NULL;
    }
    if (f->cap && nsize > osize && f->used + (nsize - osize) > f->cap)
        return NULL;
    void *p = realloc(ptr, nsize);
    if (p)
        f->used = f->used - osize + nsize;
    return p;
}

static inline void fuzz_lua_hook(lua_State *L, lua_Debug *ar)
{
    (void)ar;
    luaL_error(L, "fuzz: instruction budget spent");
}

/* The state (made on first use); the stack is empty on return. */
static inline fuzz_lua *fuzz_lua_get(void)
{
    static fuzz_lua f;
    if (!f.L) {
        f.L = lua_newstate(fuzz_lua_alloc, &f);
        if (!f.L)
            abort();
        luaL_openlibs(f.L);
        luaL_getsubtable(f.L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
        lua_pushcfunction(f.L, luaopen_sparselab);
        lua_setfield(f.L, -2, "sparselab");
        lua_pop(f.L, 1);
        if (luaL_dostring(f.L, "sl = require 'sparselab'") != LUA_OK) {
            fprintf(stderr, "fuzz: %s\n", lua_tostring(f.L, -1));
            abort();
        }
    }
    return &f;
}

/* Runs the Lua source `code` as a function of (path, bytes) under the limits
 * (instructions, extra bytes); a Lua error is a normal outcome. */
static inline void fuzz_lua_run(const char *code, const char *path, const uint8_t *data, size_t size, int instructions,
                         size_t extra_bytes)
{
    fuzz_lua *f = fuzz_lua_get();
    lua_State *L = f->L;
    if (luaL_loadstring(L, code) != LUA_OK) {
        fprintf(stderr, "fuzz: %s\n", lua_tostring(L, -1));
        abort();
    }
    lua_pushstring(L, path);
    lua_pushlstring(L, (const char *)data, size);
    f->cap = f->used + extra_bytes;
    lua_sethook(L, fuzz_lua_hook, LUA_MASKCOUNT, instructions);
    (void)lua_pcall(L, 2, 0, 0);
    lua_sethook(L, NULL, 0, 0);
    f->cap = 0;
    lua_settop(L, 0);
    lua_gc(L, LUA_GCCOLLECT);
}

#endif
