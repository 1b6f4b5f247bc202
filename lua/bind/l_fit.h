/* l_fit.h — the opener of l_fit.c, which owns this header. */
#ifndef SL_L_FIT_H
#define SL_L_FIT_H

#include <lua.h>

/* Adds sl.fit_c (GSL least squares, distributions) to the table on top. */
void sl__lua_open_fit(lua_State *L);

#endif
