/* l_runner.c — the Lua binding of the sweep runner (runner.h):
 *
 *   sl.runner_c.run{program =, args = {...}, points = {line, ...}, workers = 1,
 *     timeout = seconds (nil or 0: none), progress = true|false|"tty"|"lines",
 *     label = "run", on_result = function(i, reply, err, signal, seconds) -> failed?,
 *     on_tick = function() end}
 *   -> {done =, failed =, seconds =, interrupted = signal number or nil}
 *
 * on_result(i, reply, err, signal, seconds) gets point i's reply line (without
 * the protocol prefix), or reply nil with err and signal; a true return
 * counts the point as failed. An error raised by a callback stops the run and
 * is raised again by run() once every worker and handle is gone. Also
 * sl.runner_c.prefix and .hello (the protocol's line prefix and greeting),
 * and, only when SPARSELAB_TEST_METHODS=1, the test hooks sl.__test_crash()
 * (dies of SIGSEGV) and sl.__test_sleep(seconds) behind the test methods. */
#include "l_runner.h"
#include "l_tensor.h"
#include "runner/runner.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

/* Stack slots of run(): 1 options, 2 points, 3 on_result, 4 on_tick. */
enum { SLOT_OPTS = 1, SLOT_POINTS, SLOT_RESULT, SLOT_TICK };

typedef struct lrunner {
    lua_State *L;
    int has_tick;
    int error_ref; /* a callback's error, or LUA_NOREF */
} lrunner;

typedef struct result_args {
    int64_t point;
    const char *reply, *err;
    size_t reply_len;
    int signal;
    double seconds;
} result_args;

/* Called under lua_pcall with (args, on_result). */
static int call_result(lua_State *L)
{
    const result_args *a = lua_touserdata(L, 1);
    lua_pushvalue(L, 2);
    lua_pushinteger(L, (lua_Integer)a->point);
    if (a->reply)
        lua_pushlstring(L, a->reply, a->reply_len);
    else
        lua_pushnil(L);
    if (a->err)
        lua_pushstring(L, a->err);
    else
        lua_pushnil(L);
    if (a->signal)
        lua_pushinteger(L, a->signal);
    else
        lua_pushnil(L);
    lua_pushnumber(L, a->seconds);
    lua_call(L, 5, 1);
    return 1;
}

/* Called under lua_pcall with (nil, on_tick). */
static int call_tick(lua_State *L)
{
    lua_pushvalue(L, 2);
    lua_call(L, 0, 0);
    lua_pushboolean(L, 0);
    return 1;
}

/* fn(ud, the callback in slot) under lua_pcall, so no Lua error unwinds
 * through libuv: returns fn's boolean, or -1 after keeping the error. */
static int lrunner_call(lrunner *lr, lua_CFunction fn, void *ud, int slot)
{
    lua_State *L = lr->L;
    lua_pushcfunction(L, fn);
    lua_pushlightuserdata(L, ud);
    lua_pushvalue(L, slot);
    if (lua_pcall(L, 2, 1, 0) != LUA_OK) {
        if (lr->error_ref == LUA_NOREF)
            lr->error_ref = luaL_ref(L, LUA_REGISTRYINDEX);
        else
            lua_pop(L, 1);
        return -1;
    }
    int b = lua_toboolean(L, -1);
    lua_pop(L, 1);
    return b;
}

static const char *on_point(void *ud, int64_t i, size_t *len)
{
    lrunner *lr = ud;
    /* The string stays anchored in the points table for the whole run. */
    lua_rawgeti(lr->L, SLOT_POINTS, (lua_Integer)i);
    const char *s = lua_tolstring(lr->L, -1, len);
    lua_pop(lr->L, 1);
    return s;
}

static int on_result(void *ud, int64_t i, const char *reply, size_t len, const char *err, int sig, double seconds)
{
    lrunner *lr = ud;
    result_args a = {i, reply, err, len, sig, seconds};
    return lrunner_call(lr, call_result, &a, SLOT_RESULT);
}

static int on_tick(void *ud)
{
    lrunner *lr = ud;
    return lrunner_call(lr, call_tick, NULL, SLOT_TICK) < 0 ? -1 : 0;
}

static double opt_number(lua_State *L, const char *key, double def)
{
    lua_getfield(L, SLOT_OPTS, key);
    double v = luaL_opt(L, luaL_checknumber, -1, def);
    lua_pop(L, 1);
    return v;
}

/* Reads the options into o and the slots; strings stay owned by the options. */
static void read_options(lua_State *L, sl_runner_opts *o, lrunner *lr)
{
    static const char *const keys[] = {"program", "args", "points", "workers", "timeout", "progress",
                                       "label", "on_result", "on_tick", NULL};
    luaL_checktype(L, SLOT_OPTS, LUA_TTABLE);
    sl__lua_check_keys(L, SLOT_OPTS, "runner.run", keys);
    lua_settop(L, SLOT_OPTS);
    if (lua_getfield(L, SLOT_OPTS, "points") != LUA_TTABLE)
        sl__lua_error(L, "runner.run: 'points' must be a table of strings");
    if (lua_getfield(L, SLOT_OPTS, "on_result") != LUA_TFUNCTION)
        sl__lua_error(L, "runner.run: 'on_result' must be a function");
    int t = lua_getfield(L, SLOT_OPTS, "on_tick");
    if (t != LUA_TFUNCTION && t != LUA_TNIL)
        sl__lua_error(L, "runner.run: 'on_tick' must be a function");
    lr->has_tick = t == LUA_TFUNCTION;
    o->n_points = (int64_t)luaL_len(L, SLOT_POINTS);
    for (int64_t i = 1; i <= o->n_points; i++) {
        if (lua_rawgeti(L, SLOT_POINTS, (lua_Integer)i) != LUA_TSTRING)
            sl__lua_error(L, "runner.run: points[%d] must be a string, found %s", (int)i, luaL_typename(L, -1));
        size_t n;
        const char *s = lua_tolstring(L, -1, &n);
        if (memchr(s, '\n', n))
            sl__lua_error(L, "runner.run: points[%d] holds a newline (one line per point)", (int)i);
        lua_pop(L, 1);
    }
    double workers = opt_number(L, "workers", 1);
    if (workers < 1 || workers > 1024 || workers != (int)workers)
        sl__lua_error(L, "runner.run: 'workers' must be an integer in [1, 1024], found %f", workers);
    o->n_workers = (int)workers;
    o->timeout_s = opt_number(L, "timeout", 0);
    if (!(o->timeout_s >= 0 && o->timeout_s < 1e9))
        sl__lua_error(L, "runner.run: 'timeout' must be seconds >= 0");
    lua_getfield(L, SLOT_OPTS, "progress");
    if (lua_type(L, -1) == LUA_TSTRING) {
        const char *p = lua_tostring(L, -1);
        o->progress = strcmp(p, "tty") == 0 ? 2 : strcmp(p, "lines") == 0 ? 1 : -2;
        if (o->progress == -2)
            sl__lua_error(L, "runner.run: 'progress' must be a boolean, \"tty\" or \"lines\"");
    } else {
        o->progress = lua_toboolean(L, -1) ? -1 : 0;
    }
    lua_pop(L, 1);
    lua_getfield(L, SLOT_OPTS, "label");
    o->label = lua_isnil(L, -1) ? NULL : luaL_checkstring(L, -1);
    lua_pop(L, 1);
    if (lua_getfield(L, SLOT_OPTS, "program") != LUA_TSTRING)
        sl__lua_error(L, "runner.run: 'program' must be a path");
    lua_pop(L, 1);
    t = lua_getfield(L, SLOT_OPTS, "args");
    if (t != LUA_TTABLE && t != LUA_TNIL)
        sl__lua_error(L, "runner.run: 'args' must be a table of strings");
    lua_Integer n = t == LUA_TTABLE ? luaL_len(L, -1) : 0;
    for (lua_Integer i = 1; i <= n; i++) {
        if (lua_rawgeti(L, -1, i) != LUA_TSTRING)
            sl__lua_error(L, "runner.run: args[%d] must be a string", (int)i);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
}

/* program, args..., NULL (the strings belong to the options table); NULL
 * when memory runs out. */
static char **build_argv(lua_State *L)
{
    lua_getfield(L, SLOT_OPTS, "args");
    lua_Integer n = lua_istable(L, -1) ? luaL_len(L, -1) : 0;
    char **argv = calloc((size_t)n + 2, sizeof *argv);
    if (argv) {
        lua_getfield(L, SLOT_OPTS, "program");
        argv[0] = (char *)lua_tostring(L, -1);
        lua_pop(L, 1);
        for (lua_Integer i = 1; i <= n; i++) {
            lua_rawgeti(L, -1, i);
            argv[i] = (char *)lua_tostring(L, -1);
            lua_pop(L, 1);
        }
    }
    lua_pop(L, 1);
    return argv;
}

static int l_run(lua_State *L)
{
    sl_runner_opts o;
    memset(&o, 0, sizeof o);
    lrunner lr = {L, 0, LUA_NOREF};
    luaL_checkstack(L, 40, "runner.run");
    read_options(L, &o, &lr); /* may raise: nothing is held yet */
    char **argv = build_argv(L);
    if (!argv)
        return sl__lua_error(L, "runner.run: out of memory");
    o.argv = argv;
    o.ud = &lr;
    o.point = on_point;
    o.result = on_result;
    o.tick = lr.has_tick ? on_tick : NULL;
    sl_runner_summary sum;
    char err[600];
    sl_status st = sl_runner_run(&o, &sum, err, sizeof err);
    free(argv);
    if (lr.error_ref != LUA_NOREF) {
        lua_rawgeti(L, LUA_REGISTRYINDEX, lr.error_ref);
        luaL_unref(L, LUA_REGISTRYINDEX, lr.error_ref);
        return lua_error(L);
    }
    if (st != SL_OK)
        return sl__lua_error(L, "runner.run: %s", err);
    lua_createtable(L, 0, 4);
    lua_pushinteger(L, (lua_Integer)sum.done);
    lua_setfield(L, -2, "done");
    lua_pushinteger(L, (lua_Integer)sum.failed);
    lua_setfield(L, -2, "failed");
    lua_pushnumber(L, sum.seconds);
    lua_setfield(L, -2, "seconds");
    if (sum.signal) {
        lua_pushinteger(L, sum.signal);
        lua_setfield(L, -2, "interrupted");
    }
    return 1;
}

/* ---- test hooks (SPARSELAB_TEST_METHODS=1 only) ------------------------------ */

/* sl.__test_crash(): dies of a real SIGSEGV, with no core file and no
 * sanitizer handler in the way: what a crashing kernel looks like to the runner. */
static int l_test_crash(lua_State *L)
{
    (void)L;
    struct rlimit no_core = {0, 0};
    setrlimit(RLIMIT_CORE, &no_core);
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    sigaction(SIGSEGV, &dfl, NULL);
    raise(SIGSEGV);
    abort(); /* not reached */
}

/* sl.__test_sleep(seconds): sleeps (a stand-in for a point that hangs). */
static int l_test_sleep(lua_State *L)
{
    double s = luaL_checknumber(L, 1);
    if (!(s >= 0 && s < 1e6))
        return luaL_argerror(L, 1, "seconds in [0, 1e6)");
    struct timespec t = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    while (nanosleep(&t, &t) != 0) {
    }
    return 0;
}

void sl__lua_open_runner(lua_State *L)
{
    static const luaL_Reg fns[] = {{"run", l_run}, {NULL, NULL}};
    luaL_newlib(L, fns);
    lua_pushstring(L, SL_RUNNER_PREFIX);
    lua_setfield(L, -2, "prefix");
    lua_pushstring(L, SL_RUNNER_HELLO);
    lua_setfield(L, -2, "hello");
    lua_setfield(L, -2, "runner_c");
    const char *test = getenv("SPARSELAB_TEST_METHODS");
    if (test && strcmp(test, "1") == 0) {
        lua_pushcfunction(L, l_test_crash);
        lua_setfield(L, -2, "__test_crash");
        lua_pushcfunction(L, l_test_sleep);
        lua_setfield(L, -2, "__test_sleep");
    }
}
