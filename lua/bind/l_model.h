/* l_model.h — the opener of l_model.c, which owns this header. */
#ifndef SL_L_MODEL_H
#define SL_L_MODEL_H

#include <lua.h>

/* Adds sl.model_c, sl.tokenizer_c to the table on top. */
void sl__lua_open_model(lua_State *L);

#endif
