/* l_png.h — the opener of l_png.c, which owns this header. */
#ifndef SL_L_PNG_H
#define SL_L_PNG_H

#include <lua.h>

/* Adds sl.png_c (8-bit RGB PNG files through libpng) to the table on top. */
void sl__lua_open_png(lua_State *L);

#endif
