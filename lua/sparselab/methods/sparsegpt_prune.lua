-- SparseGPT (Frantar & Alistarh 2023) — card: sparsegpt_prune.
-- Kind: non-attention (sparselab.model_recipe).
-- Card steps done 1-6 (prune.sparsegpt, float64: H = 2/S XᵀX from calibration inputs, dead
--   columns, damping 0.01, upper Cholesky of H⁻¹, per-block adaptive mask or N:M, lazy block
--   updates, block 128), sequential over layers (sparselab.prune.sparsegpt).
-- Divergence: exactly floor(s . n) pruned per block (ties by index; the reference prunes every
--   score <= the floor(s . n)-th), so s = 0 leaves W unchanged. apply needs calibration
--   sequences (the shipped texts; never the held-out ones).
local MR = require "sparselab.model_recipe"
return MR.recipe{
  id = "sparsegpt_prune",
  title = "SparseGPT: Massive Language Models Can Be Accurately Pruned in One-Shot",
  summary = "Layer-wise OBS pruning with the Hessian of calibration activations; unstructured or N:M.",
  knob = "sparsity",
  knob_direction = -1, -- a larger sparsity keeps less
  params = {
    sparsity = {default = 0.5, min = 0, max = 1, doc = "unstructured sparsity (when n = 0)"},
    n = {default = 0, min = 0, int = true, doc = "N:M kept per group (0: unstructured)"},
    m = {default = 4, min = 1, int = true, doc = "N:M group size"},
  },
  ops = {"prune.sparsegpt"},
  checks = {"error on the calibration batch below magnitude pruning's at the same sparsity",
    "s = 0 leaves W unchanged", "exact per-block sparsity"},
  how = "sparselab.prune.sparsegpt(model, calibration_seqs, {sparsity = | n =, m =}) or experiments/model_sparsity.lua",
  apply = function(m, p, calib)
    if not calib then require("sparselab").fail("sparsegpt_prune: calibration sequences are required") end
    local o = p.n > 0 and {n = p.n, m = p.m} or {sparsity = p.sparsity}
    require("sparselab.prune").sparsegpt(m, calib, o)
  end,
}
