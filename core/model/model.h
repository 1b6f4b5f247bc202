/* model/model.h — what the model files share: construction and config checks. */
#ifndef SL_MODEL_H
#define SL_MODEL_H

#include "../internal.h"

/* An empty model with cfg and a zeroed layer array. */
sl_status sl__model_new(sl_ctx *ctx, const sl_model_config *cfg, sl_model **out);
/* SL_EFORMAT naming path when the config's sizes cannot describe a model. */
sl_status sl__model_check_config(sl_ctx *ctx, const char *path, const sl_model_config *cfg);

#endif
