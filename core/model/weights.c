/* model/weights.c — a model's weight tensors by name (issue 17: pruning
 * reads and replaces them). */
#include "model.h"

#include <stdlib.h>
#include <string.h>

sl_tensor *sl_model_weight(sl_model *m, const char *name)
{
    if (!m || !name)
        return NULL;
    if (strcmp(name, "tok_emb") == 0)
        return &m->tok_emb;
    if (strcmp(name, "rms_final") == 0)
        return &m->rms_final;
    if (strcmp(name, "wcls") == 0)
        return &m->wcls;
    if (strncmp(name, "layers.", 7) != 0)
        return NULL;
    char *end;
    long l = strtol(name + 7, &end, 10);
    if (end == name + 7 || *end != '.' || l < 0 || l >= m->cfg.n_layers)
        return NULL;
    sl_model_layer *y = &m->layers[l];
    static const char *const names[] = {"rms_att", "wq", "wk", "wv", "wo", "rms_ffn", "w1", "w2", "w3"};
    sl_tensor *const ts[] = {&y->rms_att, &y->wq, &y->wk, &y->wv, &y->wo, &y->rms_ffn, &y->w1, &y->w2, &y->w3};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strcmp(end + 1, names[i]) == 0)
            return ts[i];
    return NULL;
}
