/* l_store.c — the Lua binding of the results store (sl.store.open and the
 * store object's methods) and point keys. Tables in params columns are JSON
 * text from l_json.c (its header says how values are encoded); point keys and
 * argv are built as cJSON trees too.
 *
 * Point key: when record{} has no point_key, it is the SHA-256 (lowercase hex)
 * of this one-line JSON text, nil fields written null, params and
 * workload_params inserted as their JSON text (table → encoded as above;
 * string → verbatim):
 *   ["sparselab-point-v1",method,params,workload,workload_params,phase,layer,
 *    head,n_q,n_k,head_dim,heads,kv_heads,backend,budget]
 * with no spaces, e.g. ["sparselab-point-v1","quest",{"page":16},"niah",null,
 * "prefill",null,null,4096,4096,64,8,8,"cpu",0.1]. store.point_key{...} gives
 * the same key before a point runs (sweeps skip keys already recorded). */
#include "l_store.h"
#include "l_json.h"
#include "l_tensor.h"
#include "store.h"

#include <cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SL_LUA_STORE "sparselab.store"
#define POINT_KEY_VERSION "sparselab-point-v1"

/* ---- reading fields of argument tables --------------------------------------------- */

/* Each getter pushes the field and leaves it on the stack, so the strings it
 * returns stay alive until the caller's function returns. */

static const char *field_string(lua_State *L, int t, const char *key, const char *what)
{
    lua_getfield(L, t, key);
    int type = lua_type(L, -1);
    if (type == LUA_TNIL)
        return NULL;
    if (type != LUA_TSTRING)
        sl__lua_error(L, "%s: field '%s' must be a string, found %s", what, key, luaL_typename(L, -1));
    size_t n;
    const char *s = lua_tolstring(L, -1, &n);
    if (strlen(s) != n)
        sl__lua_error(L, "%s: field '%s' holds a NUL byte", what, key);
    return s;
}

static int64_t field_int(lua_State *L, int t, const char *key, const char *what)
{
    lua_getfield(L, t, key);
    if (lua_isnil(L, -1))
        return SL_STORE_NULL_INT;
    int ok = 0;
    lua_Integer v = lua_tointegerx(L, -1, &ok);
    if (!ok || lua_type(L, -1) != LUA_TNUMBER)
        sl__lua_error(L, "%s: field '%s' must be an integer, found %s", what, key,
                   lua_type(L, -1) == LUA_TNUMBER ? lua_pushfstring(L, "%f", lua_tonumber(L, -1))
                                                   : luaL_typename(L, -1));
    if (v == SL_STORE_NULL_INT)
        sl__lua_error(L, "%s: field '%s' is out of range", what, key);
    return v;
}

static double field_number(lua_State *L, int t, const char *key, const char *what)
{
    lua_getfield(L, t, key);
    if (lua_isnil(L, -1))
        return NAN;
    if (lua_type(L, -1) != LUA_TNUMBER)
        sl__lua_error(L, "%s: field '%s' must be a number, found %s", what, key, luaL_typename(L, -1));
    return lua_tonumber(L, -1);
}

/* A JSON field: a table (encoded) or a string (taken as JSON text). */
static const char *field_json(lua_State *L, int t, const char *key, const char *what)
{
    lua_getfield(L, t, key);
    switch (lua_type(L, -1)) {
    case LUA_TNIL: return NULL;
    case LUA_TSTRING: return lua_tostring(L, -1);
    case LUA_TTABLE: {
        char root[96];
        snprintf(root, sizeof root, "%s: %s", what, key);
        sl__lua_json_push(L, -1, root);
        lua_remove(L, -2); /* keep only the text */
        return lua_tostring(L, -1);
    }
    default:
        sl__lua_error(L, "%s: field '%s' must be a table or a JSON string, found %s", what, key, luaL_typename(L, -1));
        return NULL;
    }
}

/* ---- point keys ------------------------------------------------------------------ */

/* Adds one element to a point key's array: text, integer or number, where
 * NULL, SL_STORE_NULL_INT and NaN are null. */
static void key_add(lua_State *L, cJSON *arr, cJSON *item)
{
    if (!item)
        sl__lua_error(L, "store.point_key: out of memory");
    cJSON_AddItemToArray(arr, item);
}

static void key_text(lua_State *L, cJSON *arr, const char *s)
{
    key_add(L, arr, s ? cJSON_CreateString(s) : cJSON_CreateNull());
}

static void key_int(lua_State *L, cJSON *arr, int64_t v)
{
    char num[32];
    snprintf(num, sizeof num, "%lld", (long long)v);
    key_add(L, arr, v == SL_STORE_NULL_INT ? cJSON_CreateNull() : cJSON_CreateRaw(num));
}

/* The key of the point r describes (the text is documented at the top).
 * params and workload_params are JSON text already, inserted raw. */
static void point_key(lua_State *L, const sl_store_result *r, char out[65])
{
    cJSON **slot = sl__lua_json_box(L);
    int box = lua_gettop(L);
    cJSON *arr = *slot = cJSON_CreateArray();
    if (!arr)
        sl__lua_error(L, "store.point_key: out of memory");
    key_text(L, arr, POINT_KEY_VERSION);
    key_text(L, arr, r->method);
    key_add(L, arr, r->params_json ? cJSON_CreateRaw(r->params_json) : cJSON_CreateNull());
    key_text(L, arr, r->workload);
    key_add(L, arr, r->workload_params_json ? cJSON_CreateRaw(r->workload_params_json) : cJSON_CreateNull());
    key_text(L, arr, r->phase);
    const int64_t ints[] = {r->layer, r->head, r->n_q, r->n_k, r->head_dim, r->heads, r->kv_heads};
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++)
        key_int(L, arr, ints[i]);
    key_text(L, arr, r->backend);
    if (isnan(r->budget)) {
        key_add(L, arr, cJSON_CreateNull());
    } else {
        char num[40];
        sl__lua_json_number(r->budget, num, sizeof num);
        key_add(L, arr, cJSON_CreateRaw(num));
    }
    sl__lua_json_print(L, box);
    size_t len;
    const char *text = lua_tolstring(L, -1, &len);
    sl_sha256_hex(text, len, out);
    lua_pop(L, 2); /* text, box */
}

static const char *const record_keys[] = {
    "run_id", "method", "params", "workload", "workload_params", "phase", "layer", "head", "n_q", "n_k",
    "head_dim", "heads", "kv_heads", "backend", "budget", "point_key", "status", "error", "metrics", NULL};

/* Reads a record{} table at t into r (strings anchored on the stack). */
static void read_result(lua_State *L, int t, const char *what, sl_store_result *r, int need_run)
{
    luaL_checktype(L, t, LUA_TTABLE);
    luaL_checkstack(L, 40, what);
    sl__lua_check_keys(L, t, what, record_keys);
    sl_store_result_init(r);
    r->run_id = field_int(L, t, "run_id", what);
    if (need_run && r->run_id == SL_STORE_NULL_INT)
        sl__lua_error(L, "%s: field 'run_id' is required", what);
    r->method = field_string(L, t, "method", what);
    if (!r->method || !r->method[0])
        sl__lua_error(L, "%s: field 'method' is required", what);
    r->params_json = field_json(L, t, "params", what);
    r->workload = field_string(L, t, "workload", what);
    r->workload_params_json = field_json(L, t, "workload_params", what);
    r->phase = field_string(L, t, "phase", what);
    r->layer = field_int(L, t, "layer", what);
    r->head = field_int(L, t, "head", what);
    r->n_q = field_int(L, t, "n_q", what);
    r->n_k = field_int(L, t, "n_k", what);
    r->head_dim = field_int(L, t, "head_dim", what);
    r->heads = field_int(L, t, "heads", what);
    r->kv_heads = field_int(L, t, "kv_heads", what);
    r->backend = field_string(L, t, "backend", what);
    r->budget = field_number(L, t, "budget", what);
    r->point_key = field_string(L, t, "point_key", what);
    r->status = field_string(L, t, "status", what);
    r->error = field_string(L, t, "error", what);
}

/* store.point_key{method=..., ...}: the key record{} would compute. */
static int l_point_key(lua_State *L)
{
    sl_store_result r;
    read_result(L, 1, "store.point_key", &r, 0);
    char key[65];
    point_key(L, &r, key);
    lua_pushstring(L, key);
    return 1;
}

static int l_sha256(lua_State *L)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    char hex[65];
    sl_sha256_hex(s, n, hex);
    lua_pushstring(L, hex);
    return 1;
}

/* ---- the store object ----------------------------------------------------------- */

typedef struct lstore {
    sl_store *st;
} lstore;

static lstore *to_store(lua_State *L, int idx)
{
    lstore *u = luaL_checkudata(L, idx, SL_LUA_STORE);
    if (!u->st) {
        lua_getiuservalue(L, idx, 1);
        sl__lua_error(L, "store '%s' is closed", lua_tostring(L, -1));
    }
    return u;
}

static int store_fail(lua_State *L, lstore *u) { return sl__lua_error(L, "%s", sl_store_error(u->st)); }

static int l_open(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    /* The userdata exists before the database is open, so an error after
     * sl_store_open cannot leak the handle: __gc closes it. */
    lstore *u = lua_newuserdatauv(L, sizeof *u, 1);
    u->st = NULL;
    luaL_setmetatable(L, SL_LUA_STORE);
    lua_pushvalue(L, 1);
    lua_setiuservalue(L, -2, 1);
    char err[640];
    /* sl.store.open(path [, {read_only = true}]) */
    int ro = 0;
    if (lua_istable(L, 2)) {
        lua_getfield(L, 2, "read_only");
        ro = lua_toboolean(L, -1);
        lua_pop(L, 1);
    }
    if ((ro ? sl_store_open_readonly : sl_store_open)(path, &u->st, err, sizeof err) != SL_STORE_OK)
        return sl__lua_error(L, "%s", err);
    return 1;
}

static int l_close(lua_State *L)
{
    lstore *u = luaL_checkudata(L, 1, SL_LUA_STORE);
    sl_store_close(u->st);
    u->st = NULL;
    return 0;
}

static int l_tostring(lua_State *L)
{
    lstore *u = luaL_checkudata(L, 1, SL_LUA_STORE);
    lua_getiuservalue(L, 1, 1);
    lua_pushfstring(L, "sparselab.store: %s%s", lua_tostring(L, -1), u->st ? "" : " (closed)");
    return 1;
}

static int l_path(lua_State *L)
{
    luaL_checkudata(L, 1, SL_LUA_STORE);
    lua_getiuservalue(L, 1, 1);
    return 1;
}

static const char *const run_keys[] = {"script", "argv", "seed", "config", "script_sha256", "gpu", NULL};

/* db:begin_run{script=, argv=, seed=, config=, script_sha256=, gpu=} → run id.
 * Provenance is collected here (git in the script's directory); the
 * script's SHA-256 is computed when not given and the file is readable. */
static int l_begin_run(lua_State *L)
{
    static const char what[] = "db:begin_run";
    lstore *u = to_store(L, 1);
    int t = 2;
    if (lua_isnoneornil(L, 2)) {
        lua_settop(L, 1);
        lua_newtable(L);
    }
    luaL_checktype(L, t, LUA_TTABLE);
    luaL_checkstack(L, 20, what);
    sl__lua_check_keys(L, t, what, run_keys);

    sl_store_run run;
    sl_store_run_init(&run);
    run.script = field_string(L, t, "script", what);
    run.script_sha256 = field_string(L, t, "script_sha256", what);
    run.seed = field_int(L, t, "seed", what);
    run.gpu = field_string(L, t, "gpu", what);
    run.config_json = field_json(L, t, "config", what);

    /* argv is always a JSON array, even when empty. */
    lua_getfield(L, t, "argv");
    if (!lua_isnil(L, -1)) {
        if (!lua_istable(L, -1))
            sl__lua_error(L, "%s: field 'argv' must be a table of strings, found %s", what, luaL_typename(L, -1));
        int a = lua_gettop(L);
        lua_Integer n = luaL_len(L, a);
        cJSON **slot = sl__lua_json_box(L);
        int box = lua_gettop(L);
        cJSON *arr = *slot = cJSON_CreateArray();
        if (!arr)
            sl__lua_error(L, "%s: out of memory", what);
        for (lua_Integer i = 1; i <= n; i++) {
            if (lua_rawgeti(L, a, i) != LUA_TSTRING)
                sl__lua_error(L, "%s: argv[%d] must be a string, found %s", what, (int)i, luaL_typename(L, -1));
            size_t len;
            const char *s = lua_tolstring(L, -1, &len);
            if (strlen(s) != len)
                sl__lua_error(L, "%s: argv[%d] holds a NUL byte", what, (int)i);
            cJSON *item = cJSON_CreateString(s);
            if (!item)
                sl__lua_error(L, "%s: out of memory", what);
            cJSON_AddItemToArray(arr, item);
            lua_pop(L, 1);
        }
        sl__lua_json_print(L, box);
        lua_remove(L, box);
        run.argv = lua_tostring(L, -1);
    }

    char sha[65];
    if (!run.script_sha256 && run.script) {
        char err[256];
        if (sl_sha256_file_hex(run.script, sha, err, sizeof err) == SL_STORE_OK)
            run.script_sha256 = sha;
    }
    /* git answers for the checkout that holds the script, wherever the
     * program was started from. */
    char dir[1024] = "";
    const char *slash = run.script ? strrchr(run.script, '/') : NULL;
    if (slash) {
        size_t n = (size_t)(slash - run.script);
        if (n == 0)
            n = 1; /* "/x.lua" */
        if (n < sizeof dir) {
            memcpy(dir, run.script, n);
            dir[n] = '\0';
        }
    }
    sl_provenance prov;
    sl_provenance_collect(&prov, dir[0] ? dir : NULL);
    prov.sparselab_version = SL_VERSION; /* the store knows no library version */
    sl_provenance_fill_run(&prov, &run);

    int64_t id;
    if (sl_store_run_begin(u->st, &run, &id) != SL_STORE_OK)
        return store_fail(L, u);
    lua_pushinteger(L, (lua_Integer)id);
    return 1;
}

static int l_finish_run(lua_State *L)
{
    lstore *u = to_store(L, 1);
    lua_Integer id = luaL_checkinteger(L, 2);
    const char *status = luaL_optstring(L, 3, "ok");
    if (sl_store_run_finish(u->st, (int64_t)id, status) != SL_STORE_OK)
        return store_fail(L, u);
    return 0;
}

/* db:record{...} → result id. */
static int l_record(lua_State *L)
{
    static const char what[] = "db:record";
    lstore *u = to_store(L, 1);
    sl_store_result r;
    read_result(L, 2, what, &r, 1);

    char key[65];
    if (!r.point_key) {
        point_key(L, &r, key);
        r.point_key = key;
    }

    int n_metrics = 0;
    sl_store_metric *m = NULL;
    lua_getfield(L, 2, "metrics");
    if (!lua_isnil(L, -1)) {
        if (!lua_istable(L, -1))
            sl__lua_error(L, "%s: field 'metrics' must be a table of name = number, found %s", what,
                       luaL_typename(L, -1));
        int mt = lua_gettop(L);
        lua_pushnil(L);
        while (lua_next(L, mt)) {
            lua_pop(L, 1);
            n_metrics++;
        }
        m = lua_newuserdatauv(L, sizeof *m * (size_t)(n_metrics ? n_metrics : 1), 0);
        int i = 0;
        lua_pushnil(L);
        while (lua_next(L, mt)) {
            if (lua_type(L, -2) != LUA_TSTRING)
                sl__lua_error(L, "%s: metrics keys must be names (strings), found %s", what, luaL_typename(L, -2));
            if (lua_type(L, -1) != LUA_TNUMBER)
                sl__lua_error(L, "%s: metrics.%s must be a number, found %s", what, lua_tostring(L, -2),
                           luaL_typename(L, -1));
            m[i].name = lua_tostring(L, -2); /* held by the metrics table */
            m[i].value = lua_tonumber(L, -1);
            i++;
            lua_pop(L, 1);
        }
    }

    int64_t id;
    if (sl_store_result_add(u->st, &r, m, n_metrics, &id) != SL_STORE_OK)
        return store_fail(L, u);
    lua_pushinteger(L, (lua_Integer)id);
    return 1;
}

static int l_begin(lua_State *L)
{
    lstore *u = to_store(L, 1);
    if (sl_store_begin(u->st) != SL_STORE_OK)
        return store_fail(L, u);
    return 0;
}

static int l_commit(lua_State *L)
{
    lstore *u = to_store(L, 1);
    if (sl_store_commit(u->st) != SL_STORE_OK)
        return store_fail(L, u);
    return 0;
}

static int l_rollback(lua_State *L)
{
    lstore *u = to_store(L, 1);
    if (sl_store_rollback(u->st) != SL_STORE_OK)
        return store_fail(L, u);
    return 0;
}

static int l_exec(lua_State *L)
{
    lstore *u = to_store(L, 1);
    const char *sql = luaL_checkstring(L, 2);
    if (sl_store_exec(u->st, sql) != SL_STORE_OK)
        return store_fail(L, u);
    return 0;
}

/* The rows of db:query are built inside lua_pcall, one call per row, so a
 * Lua error (out of memory) never unwinds through SQLite's frames and the
 * statement is always finalised by sl_store_query_params. */
typedef struct qctx {
    lua_State *L;
    int rows;                    /* stack index of the result table */
    lua_Integer n_rows;
    int n_cols;
    const char *const *names;
    const sl_store_cell *cells;  /* NULL for the header call */
    int failed;                  /* the error object is on the stack */
} qctx;

static int q_build(lua_State *L)
{
    qctx *q = lua_touserdata(L, 2); /* 1: the rows table */
    if (!q->cells) {
        lua_createtable(L, q->n_cols, 0);
        for (int c = 0; c < q->n_cols; c++) {
            lua_pushstring(L, q->names[c]);
            lua_rawseti(L, -2, c + 1);
        }
        lua_setfield(L, 1, "columns");
        return 0;
    }
    lua_createtable(L, 0, q->n_cols);
    for (int c = 0; c < q->n_cols; c++) {
        const sl_store_cell *x = &q->cells[c];
        switch (x->type) {
        case SL_STORE_INT: lua_pushinteger(L, (lua_Integer)x->i); break;
        case SL_STORE_REAL: lua_pushnumber(L, x->r); break;
        case SL_STORE_TEXT:
        case SL_STORE_BLOB: lua_pushlstring(L, x->s ? x->s : "", x->n); break;
        default: continue; /* NULL: the key stays absent */
        }
        lua_setfield(L, -2, q->names[c]);
    }
    lua_rawseti(L, 1, ++q->n_rows);
    return 0;
}

static int q_row(void *ud, int n_cols, const char *const *names, const sl_store_cell *cells)
{
    qctx *q = ud;
    q->n_cols = n_cols;
    q->names = names;
    q->cells = cells;
    lua_pushcfunction(q->L, q_build);
    lua_pushvalue(q->L, q->rows);
    lua_pushlightuserdata(q->L, q);
    if (lua_pcall(q->L, 2, 0, 0) != LUA_OK) {
        q->failed = 1;
        return 1;
    }
    return 0;
}

/* db:query(sql, ...) → rows: an array of tables keyed by column name (NULL
 * columns absent) with rows.columns the column names in order. */
static int l_query(lua_State *L)
{
    lstore *u = to_store(L, 1);
    const char *sql = luaL_checkstring(L, 2);
    int n_params = lua_gettop(L) - 2;
    sl_store_cell *params = lua_newuserdatauv(L, sizeof *params * (size_t)(n_params > 0 ? n_params : 1), 0);
    for (int i = 0; i < n_params; i++) {
        int a = 3 + i;
        sl_store_cell *c = &params[i];
        memset(c, 0, sizeof *c);
        switch (lua_type(L, a)) {
        case LUA_TNIL: c->type = SL_STORE_NULL; break;
        case LUA_TBOOLEAN:
            c->type = SL_STORE_INT;
            c->i = lua_toboolean(L, a);
            break;
        case LUA_TNUMBER:
            if (lua_isinteger(L, a)) {
                c->type = SL_STORE_INT;
                c->i = (int64_t)lua_tointeger(L, a);
            } else {
                c->type = SL_STORE_REAL;
                c->r = lua_tonumber(L, a);
            }
            break;
        case LUA_TSTRING:
            c->type = SL_STORE_TEXT;
            c->s = lua_tolstring(L, a, &c->n);
            break;
        default:
            return luaL_argerror(L, a, lua_pushfstring(L, "a query parameter must be nil, a boolean, a number "
                                                          "or a string, found %s", luaL_typename(L, a)));
        }
    }
    lua_newtable(L);
    qctx q = {L, lua_gettop(L), 0, 0, NULL, NULL, 0};
    luaL_checkstack(L, 10, "db:query");
    sl_store_status s = sl_store_query_params(u->st, sql, params, n_params, q_row, &q);
    if (q.failed)
        return lua_error(L); /* the error object from q_build is on top */
    if (s != SL_STORE_OK)
        return store_fail(L, u);
    lua_settop(L, q.rows);
    return 1;
}

static int l_gc(lua_State *L)
{
    lstore *u = luaL_checkudata(L, 1, SL_LUA_STORE);
    sl_store_close(u->st);
    u->st = NULL;
    return 0;
}

int sl__lua_open_store(lua_State *L)
{
    static const luaL_Reg methods[] = {
        {"begin_run", l_begin_run}, {"finish_run", l_finish_run}, {"record", l_record},
        {"begin", l_begin},         {"commit", l_commit},         {"rollback", l_rollback},
        {"exec", l_exec},           {"query", l_query},           {"close", l_close},
        {"path", l_path},           {NULL, NULL}};
    static const luaL_Reg meta[] = {{"__gc", l_gc}, {"__close", l_gc}, {"__tostring", l_tostring}, {NULL, NULL}};
    static const luaL_Reg module[] = {
        {"open", l_open}, {"point_key", l_point_key}, {"sha256", l_sha256}, {NULL, NULL}};
    if (luaL_newmetatable(L, SL_LUA_STORE)) {
        luaL_setfuncs(L, meta, 0);
        luaL_newlib(L, methods);
        lua_setfield(L, -2, "__index");
    }
    lua_pop(L, 1);
    luaL_newlib(L, module);
    return 1;
}
