/* model_common.h — the short forward pass the model targets run on a
 * model that loaded: only for small configurations (the fuzzer's time goes
 * to the loaders, not to matrix products), two tokens of prefill then one of
 * decode, every logit finite or the run a clean error. */
#ifndef SL_FUZZ_MODEL_COMMON_H
#define SL_FUZZ_MODEL_COMMON_H

#include "fuzz.h"

static inline void fuzz_forward(sl_ctx *ctx, const sl_model *m)
{
    const sl_model_config *c = &m->cfg;
    if (c->dim > 256 || c->hidden_dim > 1024 || c->n_layers > 4 || c->vocab_size > 4096 || c->seq_len < 3 ||
        c->n_heads > 16)
        return;
    sl_model_state *st = NULL;
    if (sl_model_state_new(ctx, m, 3, &st) != SL_OK)
        return;
    int32_t toks[2] = {0, (int32_t)(c->vocab_size > 1 ? 1 : 0)};
    sl_tensor logits;
    if (sl_model_forward(ctx, m, st, toks, 2, NULL, NULL, &logits) == SL_OK) {
        sl_tensor_release(&logits);
        if (sl_model_forward(ctx, m, st, toks, 1, NULL, NULL, &logits) == SL_OK)
            sl_tensor_release(&logits);
    }
    sl_model_state_free(ctx, st);
}

#endif
