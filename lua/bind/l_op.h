/* l_op.h — the opener of l_op.c, which owns this header. */
#ifndef SL_L_OP_H
#define SL_L_OP_H

#include <lua.h>

/* Adds sl.<family>.<op> ... to the table on top. */
void sl__lua_open_ops(lua_State *L);

#endif
