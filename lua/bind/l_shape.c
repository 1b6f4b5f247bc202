/* l_shape.c — sl.squeeze(t, dim): a view of t without dimension dim (1-based), which must
 * have size 1 (shares t's buffer). Reads PyTorch's [B, H, N, D] tensors with B = 1, or one
 * batch element t:narrow(1, b, 1), as [H, N, D] (issue 18). */
#include "l_shape.h"
#include "l_tensor.h"

static int l_squeeze(lua_State *L)
{
    sl_lua_tensor *u = sl__lua_check_tensor(L, 1);
    lua_Integer dim = luaL_checkinteger(L, 2);
    if (!u->t.buf)
        return sl__lua_error(L, "sl.squeeze: the tensor is closed");
    if (dim < 1 || dim > u->t.ndim)
        return sl__lua_error(L, "sl.squeeze: dim %d outside 1..%d", (int)dim, u->t.ndim);
    if (u->t.shape[dim - 1] != 1)
        return sl__lua_error(L, "sl.squeeze: dimension %d has size %d, expected 1", (int)dim,
                             (int)u->t.shape[dim - 1]);
    sl_tensor out = sl_tensor_retain(&u->t);
    for (int i = (int)dim - 1; i < out.ndim - 1; i++) {
        out.shape[i] = out.shape[i + 1];
        out.stride[i] = out.stride[i + 1];
    }
    out.ndim--;
    sl__lua_push_tensor(L, out);
    return 1;
}

void sl__lua_open_shape(lua_State *L)
{
    lua_pushcfunction(L, l_squeeze);
    lua_setfield(L, -2, "squeeze");
}
