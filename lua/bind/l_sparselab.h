/* l_sparselab.h — the module entry, owned by l_sparselab.c: builds the
 * sparselab table from every binding's opener. For the host (lua/prog/main.c). */
#ifndef SL_L_SPARSELAB_H
#define SL_L_SPARSELAB_H

#include <lua.h>

int luaopen_sparselab(lua_State *L);

#endif
