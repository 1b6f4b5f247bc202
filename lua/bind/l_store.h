/* l_store.h — the opener of l_store.c, which owns this header. */
#ifndef SL_L_STORE_H
#define SL_L_STORE_H

#include <lua.h>

/* Pushes the store table. */
int sl__lua_open_store(lua_State *L);

#endif
