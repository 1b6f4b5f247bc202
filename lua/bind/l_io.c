/* l_io.c — sl.load / sl.save: .npy files, safetensors files, and a directory
 * of q.npy/k.npy/v.npy, as tables of named tensors. */
#include "l_io.h"
#include "l_tensor.h"

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

static void push_safetensors(lua_State *L, sl_ctx *ctx, const char *path)
{
    sl_named_tensor *ts = NULL;
    int n = 0;
    if (sl_safetensors_read(ctx, path, &ts, &n))
        sl__lua_fail(L, ctx);
    lua_createtable(L, 0, n);
    for (int i = 0; i < n; i++) {
        sl_tensor_cache_checks(&ts[i].t); /* a fresh buffer the reader wrote (issue 20, session 4) */
        sl__lua_push_tensor(L, sl_tensor_retain(&ts[i].t));
        lua_setfield(L, -2, ts[i].name);
    }
    sl_named_tensors_free(ctx, ts, n);
}

/* sl.load(path) -> tensor (.npy) or {name = tensor} (safetensors, or a
 * directory: every *.npy in it by file stem; q/k/v when present). */
static int l_load(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    sl_ctx *ctx = sl__lua_ctx(L)->ctx;
    struct stat st;
    if (stat(path, &st) != 0)
        return sl__lua_error(L, "%s: cannot open (no such file or directory)", path);
    if (S_ISDIR(st.st_mode)) {
        static const char *const names[] = {"q", "k", "v", "o", "lse"};
        lua_newtable(L);
        int found = 0;
        for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
            lua_pushfstring(L, "%s/%s.npy", path, names[i]);
            const char *f = lua_tostring(L, -1);
            if (stat(f, &st) == 0) {
                sl_tensor t;
                if (sl_npy_read(ctx, f, &t))
                    return sl__lua_fail(L, ctx);
                sl_tensor_cache_checks(&t);
                sl__lua_push_tensor(L, t);
                lua_setfield(L, -3, names[i]);
                found++;
            }
            lua_pop(L, 1);
        }
        if (!found)
            return sl__lua_error(L, "%s: a directory without q.npy, k.npy or v.npy", path);
        return 1;
    }
    if (ends_with(path, ".npy")) {
        sl_tensor t;
        if (sl_npy_read(ctx, path, &t))
            return sl__lua_fail(L, ctx);
        sl_tensor_cache_checks(&t); /* a fresh buffer the reader wrote */
        sl__lua_push_tensor(L, t);
        return 1;
    }
    push_safetensors(L, ctx, path);
    return 1;
}

static int cmp_names(const void *a, const void *b)
{
    return strcmp(((const sl_named_tensor *)a)->name, ((const sl_named_tensor *)b)->name);
}

/* sl.save(path, tensor) for .npy; sl.save(path, {name = tensor}) for
 * safetensors (names sorted, so the file is reproducible). */
static int l_save(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    sl_ctx *ctx = sl__lua_ctx(L)->ctx;
    sl_lua_tensor *one = sl__lua_test_tensor(L, 2);
    if (one) {
        if (!ends_with(path, ".npy"))
            return sl__lua_error(L, "sl.save: a single tensor goes to a .npy file; give a table for safetensors");
        if (sl_npy_write(ctx, path, &one->t))
            return sl__lua_fail(L, ctx);
        return 0;
    }
    luaL_checktype(L, 2, LUA_TTABLE);
    int n = 0;
    lua_pushnil(L);
    while (lua_next(L, 2)) {
        if (lua_type(L, -2) != LUA_TSTRING || !sl__lua_test_tensor(L, -1))
            return sl__lua_error(L, "sl.save: the table must map names to tensors");
        n++;
        lua_pop(L, 1);
    }
    sl_named_tensor *ts = lua_newuserdatauv(L, sizeof *ts * (size_t)(n ? n : 1), 0);
    int i = 0;
    lua_pushnil(L);
    while (lua_next(L, 2)) {
        ts[i].name = (char *)lua_tostring(L, -2); /* anchored by the table during the call */
        ts[i].t = sl__lua_check_tensor(L, -1)->t;
        i++;
        lua_pop(L, 1);
    }
    qsort(ts, (size_t)n, sizeof *ts, cmp_names);
    if (sl_safetensors_write(ctx, path, ts, n))
        return sl__lua_fail(L, ctx);
    return 0;
}

void sl__lua_open_io(lua_State *L)
{
    static const luaL_Reg fns[] = {{"load", l_load}, {"save", l_save}, {NULL, NULL}};
    luaL_setfuncs(L, fns, 0);
}
