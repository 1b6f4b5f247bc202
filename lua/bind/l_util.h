/* l_util.h — the opener of l_util.c, which owns this header. */
#ifndef SL_L_UTIL_H
#define SL_L_UTIL_H

#include <lua.h>

/* Adds sl.time, sl.backends, sl.bench_sgemm ... to the table on top. */
void sl__lua_open_util(lua_State *L);

#endif
