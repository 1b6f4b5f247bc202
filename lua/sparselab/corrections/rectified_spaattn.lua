-- Rectified SpaAttn: Revisiting Attention Sparsity for Efficient Video
-- Generation — card: rectified_spaattn (the rectification, steps 1-3, 5-8).
-- Card steps implemented, on the base method's executed block mask M (its
-- blocks are the pooling blocks, Bq = bq, Bk = bk):
--   1-2. mean-pooled Q, K, V blocks; pooled logits scale·q̄_I·k̄_J;
--   3. IPAR: each pooled block weighted by the keys it stands for (the
--      softmax gets log |J|); per row, so that a causal diagonal block counts
--      the keys that row sees (the card is bidirectional video: there every
--      row sees |J|, the card's formula exactly);
--   5. GAPR: Err = |e^q·k̄| + |q̄·e^k| against Gain = |q̄·k̄| with mean absolute
--      deviations per channel, raw dot products (the Bq·Bk factor on both
--      sides is left out — the test is invariant to it);
--   6. C = M ∪ NG; R_i = Σ_{J∈C} P'_iJ, N_i = Σ_{J∉C} P'_iJ·v̄_J;
--   8. O_i = R_i·O*_i + N_i (correct.rectify). Weights sum to one:
--      R_i + restored_i = 1.
-- Not here: the Gilbert-curve token order, the critical-block selection of
-- step 4 (cdf/top-k + 3-D neighbours + first frame: the base method chooses
-- M), text tokens (IPAR's isolated pooling and step 9's dense text rows),
-- the warm-up schedule. Unknowns chosen: on causal problems a block a row
-- sees only in part (the one holding its own position) is pooled over the
-- keys that row sees — k̄, e^k and v̄ (causal_means = true, the default; false
-- = the earlier reading, the means of all its keys, future ones included,
-- which lets future keys into a row's correction); the output's L is the base's
-- (the op estimates the dropped mass, not the normaliser).
-- Needs a base whose run returns its executed block mask (every
-- block-sparse recipe does) or a composite one (vertical-slash blocks +
-- columns, read as its exact block mask); a base without one is an error.
local sl = require "sparselab"

return {
  id = "rectified_spaattn",
  card = "rectified_spaattn",
  aliases = {"rectify"},
  title = "Rectified SpaAttn: Revisiting Attention Sparsity for Efficient Video Generation",
  summary = "pooled block probabilities (IPAR block-size weights) rescale the block-sparse output by the estimated " ..
    "kept mass and restore the dropped blocks GAPR trusts from pooled V",
  params = {
    ipar = {default = true, doc = "weight pooled blocks by the keys they stand for (IPAR)"},
    gapr = {default = true, doc = "restore only dropped blocks whose pooled gain beats the pooling error (GAPR)"},
    causal_means = {default = true, doc = "causal: a partially visible block's means over the keys the row sees " ..
      "(false: over all its keys, future ones included — the earlier reading)"},
  },
  ops = {"correct.rectify"},
  checks = {"full mask: O equals dense", "no trusted block: O equals the plain block-sparse output",
    "bq = bk = 1: O equals dense for any mask", "block-constant Q and K: O equals dense",
    "R + restored = 1 (weights sum to one)", "0 < R <= 1", "GAPR invariant to the score scale"},
  after = function(prob, p, base)
    local mask = sl.mask.as_block(base.mask)
    if not mask then
      sl.fail("rectified_spaattn: the base method returned no block mask (it needs the executed block mask)")
    end
    local args = {causal = prob.causal ~= false, ipar = p.ipar and 1 or 0, gapr = p.gapr and 1 or 0,
      causal_means = p.causal_means and 1 or 0, backend = prob.backend}
    local o, r, restored, trusted = sl.correct.rectify(prob.q, prob.k, prob.v, mask, base.o, args)
    local flops = sl.op_flops("correct.rectify", prob.q, prob.k, prob.v, mask, base.o, args)
    local rsum = restored:stats()
    local tsum = trusted:stats()
    return {o = o, lse = base.lse, stats = {correction_flops = flops,
      rectify_restored_mean = rsum / restored:numel(), rectify_trusted_blocks = tsum}}
  end,
}
