/* main.c — the `sparselab` program: a Lua 5.4 host with the sparselab module
 * linked in. With no arguments it is a REPL (libedit: history, tab completion
 * of sl.*, `?name` help, auto-print, Ctrl-C interrupts the running
 * statement); otherwise it runs a subcommand of sparselab/cli/init.lua (module
 * sparselab.cli). Layer: the program, the top of lua/; it includes only the
 * bindings (lua/bind/l_sparselab.h, the module entry, and l_tensor.h, the
 * per-state context), which include the runner, core and store.
 * Exit status: 0 success, 1 user error (one line on stderr), 2 internal error. */
#include <errno.h>
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <editline/readline.h>
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "bind/l_sparselab.h"
#include "bind/l_tensor.h"

/* A signal handler can reach nothing else, so the state it interrupts is the
 * one piece of file-level mutable state in the program (as in lua.c). The
 * library itself keeps none. */
static lua_State *interrupt_state;
static volatile int *op_interrupt;
static volatile sig_atomic_t interrupted;

static void stop_hook(lua_State *L, lua_Debug *ar)
{
    (void)ar;
    lua_sethook(L, NULL, 0, 0);
    luaL_error(L, "interrupted");
}

static void on_sigint(int sig)
{
    (void)sig;
    interrupted = 1;
    if (interrupt_state) {
        /* Long C ops poll the context's flag; Lua code stops at the next hook. */
        if (op_interrupt)
            *op_interrupt = 1;
        lua_sethook(interrupt_state, stop_hook, LUA_MASKCALL | LUA_MASKRET | LUA_MASKCOUNT, 1);
    }
}

/* Installs the SIGINT handler. With L, Ctrl-C interrupts the code running
 * in L (an op polls the flag; Lua stops at the next hook); without, it only
 * notes the interrupt (at a prompt, where readline returns). */
static void catch_sigint(lua_State *L)
{
    interrupt_state = L;
    op_interrupt = L ? &sl__lua_ctx(L)->interrupt : NULL;
    interrupted = 0;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigint;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
}

static int msg_handler(lua_State *L)
{
    const char *msg = lua_tostring(L, 1);
    if (!msg) {
        if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING)
            return 1;
        msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
    }
    const char *dbg = getenv("SPARSELAB_DEBUG");
    if (dbg && strcmp(dbg, "1") == 0)
        luaL_traceback(L, L, msg, 1);
    else
        lua_pushstring(L, msg);
    return 1;
}

/* Runs the function on top with nargs arguments under the message handler.
 * Also clears the interrupt flag the op layer polls. */
static int docall(lua_State *L, int nargs, int nres)
{
    int base = lua_gettop(L) - nargs;
    lua_pushcfunction(L, msg_handler);
    lua_insert(L, base);
    /* An interrupt that arrived before this call (at a prompt) is not this call's. */
    lua_sethook(L, NULL, 0, 0);
    sl__lua_ctx(L)->interrupt = 0;
    catch_sigint(L);
    int st = lua_pcall(L, nargs, nres, base);
    catch_sigint(NULL);
    lua_sethook(L, NULL, 0, 0);
    sl__lua_ctx(L)->interrupt = 0;
    lua_remove(L, base);
    return st;
}

/* A Lua runtime error ("attempt to ...") positioned inside
 * sparselab's own Lua files is a bug (exit 2); every other error is about
 * the user's input (exit 1): sparselab raises those without a position. */
static int report(lua_State *L, int st)
{
    if (st == LUA_OK)
        return 0;
    const char *msg = lua_tostring(L, -1);
    if (!msg)
        msg = "(error object is not a string)";
    int ours = strncmp(msg, "lua/sparselab/", 14) == 0;
    int internal = (ours && strstr(msg, "attempt to")) || st == LUA_ERRMEM || st == LUA_ERRERR;
    const char *dbg = getenv("SPARSELAB_DEBUG");
    if (!(dbg && strcmp(dbg, "1") == 0)) {
        /* One line: the first line of the message. */
        size_t n = strcspn(msg, "\n");
        fprintf(stderr, "sparselab: %s%.*s\n", internal ? "internal error: " : "", (int)n, msg);
    } else
        fprintf(stderr, "sparselab: %s%s\n", internal ? "internal error: " : "", msg);
    lua_pop(L, 1);
    return internal ? 2 : 1;
}

static lua_State *new_state(void)
{
    lua_State *L = luaL_newstate();
    if (!L) {
        fprintf(stderr, "sparselab: cannot create a Lua state (out of memory)\n");
        exit(2);
    }
    luaL_openlibs(L);
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
    lua_pushcfunction(L, luaopen_sparselab);
    lua_setfield(L, -2, "sparselab");
    lua_pop(L, 1);
    return L;
}

static int require_sparselab(lua_State *L)
{
    lua_getglobal(L, "require");
    lua_pushliteral(L, "sparselab");
    int st = docall(L, 1, 1);
    if (st == LUA_OK)
        lua_setglobal(L, "sl");
    return report(L, st);
}

/* ---- REPL ---- */

/* libedit's completion callback has no user pointer: the state is file-level. */
static lua_State *completion_state;

/* Candidates for "a.b.c" or "a.b:c": the fields of the table the prefix
 * names (and of its metatable's __index table), filtered by the last part.
 * Runs under lua_pcall, so an erroring __index cannot abort the REPL. */
static int collect_candidates(lua_State *L)
{
    const char *text = lua_tostring(L, 1);
    const char *sep = strrchr(text, '.'), *colon = strrchr(text, ':');
    if (colon && (!sep || colon > sep))
        sep = colon;
    size_t plen = sep ? (size_t)(sep - text) + 1 : 0;
    const char *part = sep ? sep + 1 : text;
    lua_newtable(L); /* 2: results */
    lua_pushglobaltable(L);
    if (sep) {
        lua_pushlstring(L, text, plen - 1);
        const char *path = lua_tostring(L, -1);
        lua_pop(L, 1);
        lua_pushglobaltable(L);
        lua_replace(L, 3);
        size_t i = 0, n = strlen(path);
        while (i < n) {
            size_t j = strcspn(path + i, ".:");
            if (!lua_istable(L, -1) && !lua_isuserdata(L, -1))
                return 1;
            lua_pushlstring(L, path + i, j);
            lua_gettable(L, -2);
            lua_remove(L, -2);
            i += j + 1;
        }
    }
    int n_out = 0;
    for (int pass = 0; pass < 2; pass++) {
        int t = lua_gettop(L);
        if (pass == 1) {
            if (!lua_getmetatable(L, t))
                break;
            if (lua_getfield(L, -1, "__index") != LUA_TTABLE)
                break;
            t = lua_gettop(L);
        }
        if (!lua_istable(L, t))
            continue;
        lua_pushnil(L);
        while (lua_next(L, t)) {
            lua_pop(L, 1);
            if (lua_type(L, -1) != LUA_TSTRING)
                continue;
            const char *key = lua_tostring(L, -1);
            if (strncmp(key, part, strlen(part)) != 0 || (key[0] == '_' && part[0] != '_'))
                continue;
            lua_pushlstring(L, text, plen);
            lua_pushvalue(L, -2);
            lua_concat(L, 2);
            lua_rawseti(L, 2, ++n_out);
        }
    }
    lua_settop(L, 2);
    return 1;
}

static char *complete_next(const char *text, int state)
{
    /* readline's generator protocol keeps its cursor between calls. */
    static char **list;
    static int n_list, pos;
    lua_State *L = completion_state;
    if (state == 0) {
        for (int i = 0; i < n_list; i++)
            free(list[i]);
        free(list);
        list = NULL;
        n_list = pos = 0;
        int top = lua_gettop(L);
        lua_pushcfunction(L, collect_candidates);
        lua_pushstring(L, text);
        if (lua_pcall(L, 1, 1, 0) == LUA_OK && lua_istable(L, -1)) {
            int n = (int)lua_rawlen(L, -1);
            list = n ? malloc(sizeof *list * (size_t)n) : NULL;
            for (int i = 0; list && i < n; i++) {
                lua_rawgeti(L, -1, i + 1);
                list[n_list] = strdup(lua_tostring(L, -1));
                n_list += list[n_list] != NULL;
                lua_pop(L, 1);
            }
        }
        lua_settop(L, top);
    }
    return pos < n_list ? strdup(list[pos++]) : NULL;
}

static char **complete(const char *text, int start, int end)
{
    (void)start;
    (void)end;
    rl_attempted_completion_over = 1;
    rl_completion_append_character = '\0';
    return rl_completion_matches(text, complete_next);
}

static int incomplete(lua_State *L, int st)
{
    if (st != LUA_ERRSYNTAX)
        return 0;
    size_t len;
    const char *msg = lua_tolstring(L, -1, &len);
    return len >= 5 && strcmp(msg + len - 5, "<eof>") == 0;
}

/* Compiles a REPL entry: first as an expression to print, then as a
 * statement, reading continuation lines while the chunk is incomplete. */
static int compile_entry(lua_State *L, const char *line)
{
    lua_pushfstring(L, "return %s;", line);
    if (luaL_loadbuffer(L, lua_tostring(L, -1), lua_rawlen(L, -1), "=stdin") == LUA_OK) {
        lua_remove(L, -2);
        return LUA_OK;
    }
    lua_pop(L, 2);
    lua_pushstring(L, line);
    for (;;) {
        int st = luaL_loadbuffer(L, lua_tostring(L, -1), lua_rawlen(L, -1), "=stdin");
        if (!incomplete(L, st)) {
            lua_remove(L, -2);
            return st;
        }
        lua_pop(L, 1);
        catch_sigint(NULL);
        char *more = readline(">> ");
        if (!more) {
            lua_pop(L, 1);
            lua_pushstring(L, interrupted ? "interrupted" : "incomplete statement");
            return LUA_ERRSYNTAX;
        }
        lua_pushfstring(L, "%s\n%s", lua_tostring(L, -1), more);
        lua_remove(L, -2);
        free(more);
    }
}

static void print_results(lua_State *L, int base)
{
    int n = lua_gettop(L) - base;
    if (n <= 0)
        return;
    lua_getglobal(L, "print");
    lua_insert(L, base + 1);
    if (docall(L, n, 0) != LUA_OK)
        report(L, LUA_ERRRUN);
}

static void repl(lua_State *L)
{
    char hist[1024] = "";
    const char *home = getenv("HOME");
    if (home)
        snprintf(hist, sizeof hist, "%s/.sparselab_history", home);
    using_history();
    if (hist[0])
        read_history(hist);
    completion_state = L;
    rl_attempted_completion_function = complete;
    rl_basic_word_break_characters = " \t\n\"\\'`@$><=;|&{(,+-*/%^#~[]";
    printf("sparselab %s (Lua 5.4) — `sl` is loaded; ?name for help, Ctrl-D to quit\n", SL_VERSION);
    for (;;) {
        catch_sigint(NULL);
        char *line = readline("sl> ");
        if (!line) {
            if (interrupted) {
                printf("\n");
                continue;
            }
            break;
        }
        if (line[0])
            add_history(line);
        int base = lua_gettop(L);
        int st;
        if (line[0] == '?') {
            lua_getglobal(L, "sl");
            lua_getfield(L, -1, "help");
            lua_remove(L, -2);
            lua_pushstring(L, line + 1 + strspn(line + 1, " "));
            st = docall(L, 1, 0);
        } else {
            st = compile_entry(L, line);
            if (st == LUA_OK)
                st = docall(L, 0, LUA_MULTRET);
            if (st == LUA_OK)
                print_results(L, base);
        }
        free(line);
        if (st != LUA_OK)
            report(L, st); /* errors never end the REPL */
        lua_settop(L, base);
    }
    if (hist[0])
        write_history(hist);
    printf("\n");
}

int main(int argc, char **argv)
{
    /* Kernels write their outputs into fresh buffers; keeping freed memory in
     * the heap (instead of returning it to the kernel) spares a page fault per
     * 4 KiB of output on every call, which measured ~20% of a sparse call. */
    mallopt(M_MMAP_THRESHOLD, 1 << 30);
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
    lua_State *L = new_state();
    int rc = require_sparselab(L);
    if (rc) {
        lua_close(L);
        return rc;
    }
    if (argc == 1) {
        if (isatty(0))
            repl(L);
        else {
            /* A script on standard input. */
            int st = luaL_loadfilex(L, NULL, "t");
            if (st == LUA_OK)
                st = docall(L, 0, 0);
            rc = report(L, st);
        }
        lua_close(L);
        return rc;
    }
    lua_getglobal(L, "require");
    lua_pushliteral(L, "sparselab.cli");
    int st = docall(L, 1, 1);
    if (st == LUA_OK) {
        lua_getfield(L, -1, "main");
        lua_remove(L, -2);
        lua_createtable(L, argc - 1, 0);
        for (int i = 1; i < argc; i++) {
            lua_pushstring(L, argv[i]);
            lua_rawseti(L, -2, i);
        }
        st = docall(L, 1, 0);
    }
    rc = report(L, st);
    if (fflush(stdout) != 0 && errno != EPIPE && rc == 0)
        rc = 1;
    lua_close(L);
    return rc;
}
