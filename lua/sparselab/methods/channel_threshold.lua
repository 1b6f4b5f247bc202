-- Calibrated activation thresholds (CATS, CHESS) — card: channel_threshold.
-- Kind: non-attention (sparselab.model_recipe).
-- Card steps done: 1 CATS per-layer gate threshold, 2 CHESS per-channel thresholds, 5, 6 the two
--   calibration passes (thresholds.py's order) on calibration texts; act.threshold applies them.
-- Not done: CHESS+ attention thresholds (3, 4, 7).
local MR = require "sparselab.model_recipe"
return MR.recipe{
  id = "channel_threshold",
  title = "CATS / CHESS: calibrated thresholds on the FFN gate activation",
  summary = "Zero gate activations below a threshold calibrated per layer (CATS) or per channel (CHESS).",
  knob = "sparsity",
  knob_direction = -1, -- a larger sparsity keeps less
  params = {
    sparsity = {default = 0.5, min = 0, max = 1, doc = "target activation sparsity on the calibration data"},
    variant = {default = "chess", doc = "chess (per channel) or cats (per layer)"},
  },
  ops = {"act.threshold"},
  checks = {"threshold 0 is the identity", "density monotone in the threshold",
    "CHESS beats CATS at the same density (experiment)"},
  how = "sparselab.actsparse.calibrate(model, seqs, s) then sparselab.actsparse.hook(model, {kind = 'threshold', theta =})",
  apply = function(m, p, calib)
    local A = require "sparselab.actsparse"
    if not calib then require("sparselab").fail("channel_threshold: calibration sequences are required") end
    if p.variant ~= "chess" and p.variant ~= "cats" then
      require("sparselab").fail("channel_threshold: variant must be chess or cats, found %s", tostring(p.variant))
    end
    local cal = A.calibrate(m, calib, p.sparsity)
    return {site = A.hook(m, {kind = "threshold", theta = cal[p.variant]})}
  end,
}
