/* l_json.h — JSON on cJSON, owned by l_json.c: sl.json_encode /
 * sl.json_decode, and the helpers the store binding builds its JSON with. */
#ifndef SL_L_JSON_H
#define SL_L_JSON_H

#include <lua.h>
#include <stddef.h>

struct cJSON;

/* sl.json_encode / sl.json_decode. */
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

#endif
