/* l_io.h — the opener of l_io.c, which owns this header. */
#ifndef SL_L_IO_H
#define SL_L_IO_H

#include <lua.h>

/* Adds sl.load / sl.save to the table on top. */
void sl__lua_open_io(lua_State *L);

#endif
