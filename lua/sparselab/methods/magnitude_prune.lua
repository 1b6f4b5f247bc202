-- Magnitude pruning (Han et al. 2015; per layer / global) — card: magnitude_prune.
-- Kind: non-attention (sparselab.model_recipe); runs on the model, not on an attention problem.
-- Card steps done (sparselab.prune, prune.magnitude): 1 score |w|, 2 exactly floor(s . numel)
--   zeroed per tensor (ties by flat index), 3 global scope (one ranking over every prunable
--   linear), 5 N:M option, 6 the mask kept as the zeros of the pruned copy; the sparsity sweep
--   is in experiments/model_sparsity.lua. Prunable set: Q, K, V, O, gate, up, down.
-- Session 3: 4 random ERK and uniform random baselines (sparselab.prune P.erk; eps re-solved
--   while a tensor would pass density 1; Bernoulli masks from sl.rand).
-- Not done: the KV-cache variant (7), elbow detection.
local MR = require "sparselab.model_recipe"
return MR.recipe{
  id = "magnitude_prune",
  title = "Learning both Weights and Connections for Efficient Neural Networks (magnitude pruning)",
  summary = "Zero the smallest |w| of every linear (per layer or one global ranking) to an exact sparsity.",
  knob = "sparsity",
  knob_direction = -1, -- a larger sparsity keeps less
  params = {
    sparsity = {default = 0.5, min = 0, max = 1, doc = "share of each tensor's weights zeroed (exactly floor(s . numel))"},
    scope = {default = "layer", doc = "layer: per tensor; global: one ranking over all prunable linears"},
  },
  ops = {"prune.magnitude"},
  checks = {"hits the requested sparsity exactly", "pruning at 0% leaves the logits unchanged",
    "kept magnitudes >= pruned ones (a random mask fails)"},
  how = "sparselab.prune.magnitude(model, {sparsity =, scope =}) or experiments/model_sparsity.lua",
  apply = function(m, p) require("sparselab.prune").magnitude(m, {sparsity = p.sparsity, scope = p.scope}) end,
}
