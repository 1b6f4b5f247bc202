/* l_kvcache.h — the opener of l_kvcache.c, which owns this header. */
#ifndef SL_L_KVCACHE_H
#define SL_L_KVCACHE_H

#include <lua.h>

/* Adds sl.kvcache_c to the table on top. */
void sl__lua_open_kvcache(lua_State *L);

#endif
