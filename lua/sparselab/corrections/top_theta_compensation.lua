-- Top-Theta Attention: Sparsifying Transformers by Compensated Thresholding
-- — card: top_theta_compensation (the compensation terms only).
-- Card steps implemented, on any base method's output (O over its kept keys
-- S_i and their L = log Z_kept):
--   2a. SDC with the exact estimate: Z_miss = Z_full - Z_kept, Z_full from a
--       dense pass (attn.dense's L; the card's "exact" reference estimate,
--       which reads every key: its cost is counted in correction_flops);
--       kept weights scaled by Z_kept / (Z_kept + c·Z_miss), c = sdc_scale;
--   3. VMC: the lost mass λ = 1 - Z_kept/(Z_kept + c·Z_miss) times the
--      causal running mean of V (mean over keys 0..pos(i)) is added;
--   rows seeing at most min_len keys are untouched (the calibration K).
-- Not here: the exp-threshold estimate 2b (needs the base's θ and pruned
-- counts; correct.compensate takes any log Z_miss with estimate = 1, so a
-- Top-θ recipe exposing them can pass it), the offline-calibrated table 2c,
-- post-softmax placement. With c = 1 and VMC off the kept weights are the
-- true dense probabilities; L becomes log(Z_kept + c·Z_miss) (= the dense L
-- at c = 1).
local sl = require "sparselab"

return {
  id = "top_theta_compensation",
  card = "top_theta_compensation",
  aliases = {"compensate"},
  title = "Top-Theta Attention: Sparsifying Transformers by Compensated Thresholding",
  summary = "softmax-denominator compensation (exact missing mass) and V-mean compensation of the lost mass",
  params = {
    sdc_scale = {default = 1.0, min = 0, max = 1e6, doc = "c: the denominator becomes Z_kept + c.Z_miss"},
    vmc = {default = true, doc = "add the lost mass times the running mean of V"},
    min_len = {default = 0, min = 0, max = 1 << 30, int = true, doc = "rows seeing at most this many keys are untouched"},
  },
  ops = {"attn.dense", "correct.compensate"},
  checks = {"full mask: O equals dense", "SDC exact c = 1, no VMC: kept weights are the dense probabilities",
    "SDC + VMC with constant V: O equals dense", "rows of length <= min_len untouched"},
  after = function(prob, p, base)
    local dargs = {causal = prob.causal ~= false, backend = prob.backend}
    local _, lse_full = sl.attn.dense(prob.q, prob.k, prob.v, dargs)
    local args = {sdc_scale = p.sdc_scale, vmc = p.vmc and 1 or 0, causal = prob.causal ~= false and 1 or 0,
      min_len = p.min_len, estimate = 0, backend = prob.backend}
    local o, lse, lost = sl.correct.compensate(base.o, base.lse, lse_full, prob.v, args)
    local flops = sl.op_flops("attn.dense", prob.q, prob.k, prob.v, dargs) +
      sl.op_flops("correct.compensate", base.o, base.lse, lse_full, prob.v, args)
    return {o = o, lse = lse, stats = {correction_flops = flops, compensate_lost_mean = lost:stats() / lost:numel()}}
  end,
}
