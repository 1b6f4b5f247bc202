/* l_shape.h — the opener of l_shape.c, which owns this header. */
#ifndef SL_L_SHAPE_H
#define SL_L_SHAPE_H

#include <lua.h>

/* Adds sl.squeeze (a view without a dimension of size 1) to the table on top. */
void sl__lua_open_shape(lua_State *L);

#endif
