/* model/hf.c — placeholder until the Hugging Face loader lands. */
#include "model.h"

sl_status sl_model_load_hf(sl_ctx *ctx, const char *dir, sl_model **out)
{
    *out = NULL;
    return sl_ctx_fail(ctx, SL_EUNSUPPORTED, "%s: Hugging Face model directories are not supported yet", dir);
}
