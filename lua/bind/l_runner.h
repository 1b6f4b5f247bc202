/* l_runner.h — the opener of l_runner.c, which owns this header. */
#ifndef SL_L_RUNNER_H
#define SL_L_RUNNER_H

#include <lua.h>

/* Adds sl.runner_c to the table on top (the runner itself is lua/runner/runner.c). */
void sl__lua_open_runner(lua_State *L);

#endif
