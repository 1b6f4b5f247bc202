/* ref/attn_lines.c — the reference attn.lines (issue 19): per row a keep
 * mask over all keys from the contract read literally (column j kept when j
 * <= p, key p - o kept for every diagonal o <= p; a key marked twice is one
 * key), then the shared float64 row routine. */
#include "ref.h"

#include <string.h>

sl_status sl__ref_attn_lines(const sl__kargs *a)
{
    const sl_attn_rows_params *p = a->params;
    sl__attn_dims dm = sl__attn_dims_of(&a->in[0], &a->in[1], p->scale);
    const float *q = a->in[0].data, *k = a->in[1].data, *v = a->in[2].data;
    const int32_t *cols = a->in[3].data, *offs = a->in[4].data;
    int64_t hl = a->in[3].shape[0], nc = a->in[3].shape[1], ns = a->in[4].shape[1];
    float *o = a->out[0].data, *lse = a->out[1].data;
    uint8_t *keep = a->scratch;
    double *score = (double *)((char *)a->scratch + sl__ref_keep_bytes(dm.nk));
    for (int64_t h = 0; h < dm.hq; h++) {
        int64_t g = h / dm.group, lh = h / (dm.hq / hl);
        for (int64_t r = 0; r < dm.nq; r++) {
            if (sl_ctx_interrupted(a->ctx))
                return sl_ctx_fail(a->ctx, SL_EINTERRUPT, "attn.lines[ref]: interrupted");
            int64_t pos = dm.offset + r;
            memset(keep, 0, (size_t)dm.nk);
            for (int64_t i = 0; i < nc; i++) {
                int64_t j = cols[lh * nc + i];
                if (j >= 0 && j <= pos)
                    keep[j] = 1;
            }
            for (int64_t i = 0; i < ns; i++) {
                int64_t off = offs[lh * ns + i];
                if (off >= 0 && off <= pos)
                    keep[pos - off] = 1;
            }
            sl__ref_row(q + (h * dm.nq + r) * dm.d, k + g * dm.nk * dm.d, v + g * dm.nk * dm.d, dm.nk, dm.d, dm.scale,
                        keep, NULL, score, o + (h * dm.nq + r) * dm.d, lse + h * dm.nq + r);
        }
    }
    return SL_OK;
}
