-- Delta networks over the token axis — card: temporal_delta.
-- Kind: non-attention (sparselab.model_recipe).
-- Card steps done 1-3 (act.delta: reference state, |d| > θ sent, y = W x̂) over the tokens of a
--   prefill on the FFN hidden units, with per-layer θ = the s-quantile of consecutive-token
--   differences on calibration texts. Not done: periodic refresh (4; each forward restarts),
--   training (5).
local MR = require "sparselab.model_recipe"
return MR.recipe{
  id = "temporal_delta",
  title = "Delta networks: send only activation changes above a threshold",
  summary = "FFN hidden units are updated only where they changed by more than θ since the last send.",
  knob = "sparsity",
  knob_direction = -1, -- a larger sparsity keeps less
  params = {sparsity = {default = 0.5, min = 0, max = 1, doc = "quantile of |h_t - h_{t-1}| used as θ"}},
  ops = {"act.delta", "mm.act_sparse"},
  checks = {"|x̂ - x| <= θ", "nothing sent on a constant channel", "density monotone in θ",
    "accumulated act-sparse products of Δ equal W x̂"},
  how = "sparselab.actsparse.calibrate_delta(model, seqs, s) then sparselab.actsparse.hook(model, {kind = 'delta', theta =})",
  apply = function(m, p, calib)
    local A = require "sparselab.actsparse"
    if not calib then require("sparselab").fail("temporal_delta: calibration sequences are required") end
    return {site = A.hook(m, {kind = "delta", theta = A.calibrate_delta(m, calib, p.sparsity)})}
  end,
}
