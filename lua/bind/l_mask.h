/* l_mask.h — the materialised-mask userdata and sl.mask_c, owned by l_mask.c. */
#ifndef SL_L_MASK_H
#define SL_L_MASK_H

#include <lua.h>

#include "sparselab.h"

#define SL_LUA_MASK "sparselab.mask"

typedef struct sl_lua_mask { sl_mask m; } sl_lua_mask;

/* Pushes a new userdata owning m (the reference moves into Lua). */
sl_lua_mask *sl__lua_push_mask(lua_State *L, sl_mask m);
sl_lua_mask *sl__lua_check_mask(lua_State *L, int idx);
sl_lua_mask *sl__lua_test_mask(lua_State *L, int idx);

/* Adds sl.mask_c (materialised masks) to the table on top. */
void sl__lua_open_mask(lua_State *L);

#endif
