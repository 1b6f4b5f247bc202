/* l_json.c — JSON for the Lua side on cJSON (Debian libcjson): sl.json_encode,
 * sl.json_decode (behind sparselab.json), and the helpers the store binding
 * uses for params columns and point keys.
 *
 * Encoding (stable, so equal values give equal text and equal keys):
 *   nil → null; booleans; integers in decimal; floats in the shortest of
 *   %.15g/%.16g/%.17g that reads back exactly (64.0 and 64 both give 64),
 *   +inf/-inf → 1e999/-1e999 (valid JSON grammar, read back as infinities by
 *   common parsers), NaN is an error; strings escaped by cJSON (", \, control
 *   bytes), other bytes as they are, a NUL byte is an error (cJSON strings are
 *   C strings); a table whose keys are exactly 1..n is an array; a table with
 *   string keys is an object with keys sorted bytewise; the empty table is {};
 *   other keys, mixed tables, functions, userdata and nesting deeper than 100
 *   (a cycle) are errors naming the path (params.a[2]).
 *   Numbers are handed to cJSON as raw text formatted here: cJSON itself
 *   prints integers above 2^31 through %g, 16-digit doubles with 17 digits,
 *   and NaN/inf as null, all of which would change stored texts and keys.
 *
 * Decoding: cJSON's parser; objects become tables with string keys, arrays
 *   sequences, null the given sentinel, numbers Lua integers when integral and
 *   within ±2^53, floats otherwise. Errors: "<where>: invalid JSON at byte N
 *   near '...'" (1-based), or "... trailing text at byte N".
 *
 * Every cJSON tree lives in a "box" userdata whose __gc deletes it, so an
 * error raised half-way (a bad value, out of memory) leaks nothing. */
#include "l_json.h"
#include "l_tensor.h"

#include <cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SL_LUA_JSON_BOX "sparselab.json_box"
#define JSON_MAX_DEPTH 100

/* ---- the box ---------------------------------------------------------------- */

typedef struct jbox {
    cJSON *root;
    char *text; /* printed text, until copied into a Lua string */
} jbox;

static int box_gc(lua_State *L)
{
    jbox *b = luaL_checkudata(L, 1, SL_LUA_JSON_BOX);
    cJSON_Delete(b->root);
    cJSON_free(b->text);
    b->root = NULL;
    b->text = NULL;
    return 0;
}

cJSON **sl__lua_json_box(lua_State *L)
{
    jbox *b = lua_newuserdatauv(L, sizeof *b, 0);
    b->root = NULL;
    b->text = NULL;
    if (luaL_newmetatable(L, SL_LUA_JSON_BOX)) {
        lua_pushcfunction(L, box_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_setmetatable(L, -2);
    return &b->root;
}

void sl__lua_json_print(lua_State *L, int box)
{
    jbox *b = luaL_checkudata(L, box, SL_LUA_JSON_BOX);
    b->text = b->root ? cJSON_PrintUnformatted(b->root) : NULL;
    if (!b->text)
        sl__lua_error(L, "json: out of memory");
    lua_pushstring(L, b->text);
    cJSON_free(b->text);
    b->text = NULL;
    cJSON_Delete(b->root);
    b->root = NULL;
}

/* ---- encoding ------------------------------------------------------------------ */

void sl__lua_json_number(double x, char *out, size_t n)
{
    if (isinf(x)) {
        snprintf(out, n, "%s", x > 0 ? "1e999" : "-1e999");
        return;
    }
    for (int prec = 15; prec <= 17; prec++) {
        snprintf(out, n, "%.*g", prec, x);
        if (strtod(out, NULL) == x)
            break;
    }
    /* A locale with a decimal comma must not leak into JSON. */
    for (char *c = out; *c; c++)
        if (*c == ',')
            *c = '.';
}

/* Where a value sits inside the one being encoded, for messages. */
typedef struct jpath {
    const struct jpath *up;
    const char *key; /* object member (NULL for an array element) */
    size_t key_len;
    lua_Integer index; /* array element, 1-based */
} jpath;

static void path_format(const jpath *p, const char *root, char *out, size_t n)
{
    if (!p) {
        snprintf(out, n, "%s", root);
        return;
    }
    path_format(p->up, root, out, n);
    size_t len = strlen(out);
    if (len + 1 >= n)
        return;
    if (p->key)
        snprintf(out + len, n - len, ".%.*s", (int)(p->key_len < 60 ? p->key_len : 60), p->key);
    else
        snprintf(out + len, n - len, "[%lld]", (long long)p->index);
}

static int enc_fail(lua_State *L, const jpath *p, const char *root, const char *what)
{
    char where[256];
    path_format(p, root, where, sizeof where);
    return sl__lua_error(L, "%s: %s", where, what);
}

typedef struct enc {
    lua_State *L;
    const char *root;
} enc;

/* Attaches item under parent (an array, an object with key, or the box's
 * root when parent is NULL) before it is filled, so the box owns it. */
static cJSON *attach(enc *e, cJSON **slot, cJSON *parent, const char *key, cJSON *item)
{
    if (!item)
        sl__lua_error(e->L, "%s: out of memory", e->root);
    if (!parent)
        *slot = item;
    else if (key)
        cJSON_AddItemToObject(parent, key, item);
    else
        cJSON_AddItemToArray(parent, item);
    return item;
}

typedef struct jkey {
    const char *s;
    size_t n;
} jkey;

static int jkey_cmp(const void *a, const void *b)
{
    const jkey *x = a, *y = b;
    size_t n = x->n < y->n ? x->n : y->n;
    int c = memcmp(x->s, y->s, n);
    if (c != 0)
        return c;
    return x->n < y->n ? -1 : x->n > y->n;
}

static void enc_value(enc *e, cJSON **slot, cJSON *parent, const char *key, int idx, int depth, const jpath *p);

static void enc_table(enc *e, cJSON **slot, cJSON *parent, const char *key, int idx, int depth, const jpath *p)
{
    lua_State *L = e->L;
    if (depth > JSON_MAX_DEPTH)
        enc_fail(L, p, e->root, "tables nested deeper than 100 levels (a cycle?)");
    luaL_checkstack(L, 8, "json: nested too deep");
    /* Classify the keys: all strings (object) or exactly 1..n (array). */
    lua_Integer n_keys = 0, n_str = 0, max_int = 0;
    int other = 0;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        n_keys++;
        if (lua_type(L, -1) == LUA_TSTRING)
            n_str++;
        else if (lua_isinteger(L, -1) && lua_tointeger(L, -1) >= 1) {
            if (lua_tointeger(L, -1) > max_int)
                max_int = lua_tointeger(L, -1);
        } else
            other = 1;
    }
    if (n_keys == 0) {
        attach(e, slot, parent, key, cJSON_CreateObject());
        return;
    }
    if (n_str == 0 && !other && max_int == n_keys) {
        cJSON *arr = attach(e, slot, parent, key, cJSON_CreateArray());
        for (lua_Integer i = 1; i <= n_keys; i++) {
            jpath here = {p, NULL, 0, i};
            lua_rawgeti(L, idx, i);
            enc_value(e, slot, arr, NULL, lua_gettop(L), depth + 1, &here);
            lua_pop(L, 1);
        }
        return;
    }
    if (n_str != n_keys)
        enc_fail(L, p, e->root,
                 "cannot encode a table that mixes string keys with other keys "
                 "(JSON objects have string keys; arrays have keys 1..n)");
    /* Sort the keys so the text does not depend on table iteration order
     * (cJSON prints members in insertion order). The key strings stay alive:
     * the table holds them. */
    jkey *keys = lua_newuserdatauv(L, sizeof *keys * (size_t)n_keys, 0);
    lua_Integer k = 0;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        keys[k].s = lua_tolstring(L, -1, &keys[k].n);
        k++;
    }
    qsort(keys, (size_t)n_keys, sizeof *keys, jkey_cmp);
    cJSON *obj = attach(e, slot, parent, key, cJSON_CreateObject());
    for (k = 0; k < n_keys; k++) {
        jpath here = {p, keys[k].s, keys[k].n, 0};
        if (strlen(keys[k].s) != keys[k].n)
            enc_fail(L, &here, e->root, "cannot encode a key with a NUL byte");
        lua_pushlstring(L, keys[k].s, keys[k].n);
        lua_rawget(L, idx);
        enc_value(e, slot, obj, keys[k].s, lua_gettop(L), depth + 1, &here);
        lua_pop(L, 1);
    }
    lua_pop(L, 1); /* keys */
}

static void enc_value(enc *e, cJSON **slot, cJSON *parent, const char *key, int idx, int depth, const jpath *p)
{
    lua_State *L = e->L;
    char num[40];
    size_t n;
    const char *s;
    switch (lua_type(L, idx)) {
    case LUA_TNIL: attach(e, slot, parent, key, cJSON_CreateNull()); break;
    case LUA_TBOOLEAN: attach(e, slot, parent, key, cJSON_CreateBool(lua_toboolean(L, idx))); break;
    case LUA_TNUMBER:
        if (lua_isinteger(L, idx)) {
            snprintf(num, sizeof num, "%lld", (long long)lua_tointeger(L, idx));
        } else {
            double x = lua_tonumber(L, idx);
            if (isnan(x))
                enc_fail(L, p, e->root, "cannot encode NaN (JSON has no NaN)");
            sl__lua_json_number(x, num, sizeof num);
        }
        attach(e, slot, parent, key, cJSON_CreateRaw(num));
        break;
    case LUA_TSTRING:
        s = lua_tolstring(L, idx, &n);
        if (strlen(s) != n)
            enc_fail(L, p, e->root, "cannot encode a string with a NUL byte");
        attach(e, slot, parent, key, cJSON_CreateString(s));
        break;
    case LUA_TTABLE: enc_table(e, slot, parent, key, idx, depth, p); break;
    default: {
        char what[64];
        snprintf(what, sizeof what, "cannot encode a %s", luaL_typename(L, idx));
        enc_fail(L, p, e->root, what);
    }
    }
}

void sl__lua_json_push(lua_State *L, int idx, const char *root)
{
    idx = lua_absindex(L, idx);
    cJSON **slot = sl__lua_json_box(L);
    int box = lua_gettop(L);
    enc e = {L, root};
    enc_value(&e, slot, NULL, NULL, idx, 0, NULL);
    sl__lua_json_print(L, box);
    lua_remove(L, box);
}

int sl__lua_json_encode(lua_State *L)
{
    luaL_checkany(L, 1);
    sl__lua_json_push(L, 1, "json.encode: value");
    return 1;
}

/* ---- decoding ------------------------------------------------------------------ */

static void dec_value(lua_State *L, const cJSON *v, int null_idx, int depth)
{
    luaL_checkstack(L, 4, "json: nested too deep");
    if (cJSON_IsObject(v) || cJSON_IsArray(v)) {
        int object = cJSON_IsObject(v);
        lua_newtable(L);
        lua_Integer i = 0;
        for (const cJSON *c = v->child; c; c = c->next) {
            dec_value(L, c, null_idx, depth + 1);
            if (object)
                lua_setfield(L, -2, c->string); /* a repeated key: the last wins */
            else
                lua_rawseti(L, -2, ++i);
        }
    } else if (cJSON_IsString(v)) {
        lua_pushstring(L, v->valuestring);
    } else if (cJSON_IsNumber(v)) {
        double d = v->valuedouble;
        if (d == floor(d) && fabs(d) <= 9007199254740992.0)
            lua_pushinteger(L, (lua_Integer)d);
        else
            lua_pushnumber(L, d);
    } else if (cJSON_IsBool(v)) {
        lua_pushboolean(L, cJSON_IsTrue(v));
    } else {
        lua_pushvalue(L, null_idx);
    }
}

/* Up to 16 bytes from p for a message, control characters as '?'. */
static void near_text(const char *p, const char *end, char *out, size_t n)
{
    size_t w = 0;
    for (; p < end && w + 1 < n && w < 16; p++)
        out[w++] = ((unsigned char)*p < 0x20 || *p == 0x7f) ? '?' : *p;
    out[w] = '\0';
}

/* sl.json_decode(text [, where [, null]]) -> value; null decodes to the
 * third argument (nil when absent). */
int sl__lua_json_decode(lua_State *L)
{
    size_t len;
    const char *where = luaL_optstring(L, 2, "json");
    if (lua_type(L, 1) != LUA_TSTRING)
        return sl__lua_error(L, "%s: expected a string, found %s", where, luaL_typename(L, 1));
    const char *text = lua_tolstring(L, 1, &len);
    lua_settop(L, 3);
    cJSON **slot = sl__lua_json_box(L);
    const char *end = NULL;
    *slot = cJSON_ParseWithLengthOpts(text, len, &end, 0);
    if (!*slot) {
        size_t at = end && end >= text && end <= text + len ? (size_t)(end - text) : len;
        char near[24];
        near_text(text + at, text + len, near, sizeof near);
        if (at >= len)
            return sl__lua_error(L, "%s: invalid JSON at byte %d (unexpected end of text)", where, (int)at + 1);
        return sl__lua_error(L, "%s: invalid JSON at byte %d near '%s'", where, (int)at + 1, near);
    }
    while (end < text + len && (*end == ' ' || *end == '\t' || *end == '\n' || *end == '\r'))
        end++;
    if (end != text + len)
        return sl__lua_error(L, "%s: trailing text at byte %d", where, (int)(end - text) + 1);
    dec_value(L, *slot, 3, 0);
    return 1;
}
