-- Magnitude pruning (Han et al. 2015; per layer / global) — card: magnitude_prune.
-- Kind: non-attention (sparselab.model_recipe); runs on the model, not on an attention problem.
-- Card steps done (sparselab.prune, prune.magnitude): 1 score |w|, 2 exactly floor(s . numel)
--   zeroed per tensor (ties by flat index), 3 global scope (one ranking over every prunable
--   linear), 5 N:M option, 6 the mask kept as the zeros of the pruned copy; the sparsity sweep
--   is in experiments/model_sparsity.lua. Prunable set: Q, K, V, O, gate, up, down.
-- Session 3: 4 random ERK and uniform random baselines (sparselab.prune P.erk; eps re-solved
--   while a tensor would pass density 1; Bernoulli masks from sl.rand).
-- Session 4: 7 the KV variant (sparselab.prune P.kv_prune / P.kv_hook: exactly floor(s . numel)
--   smallest |K| (and |V|) of a layer's visible cache zeroed by prune.magnitude, scope "layer"
--   as SparAMX's custom_llama_attention.py `sparsify` (read: kthvalue of |x| over the whole
--   post-RoPE tensor) or "head" (its `sparsify_per_head`). Divergence: the reference keeps
--   |x| >= the k-th smallest (k = int(numel . p)), so it zeroes k - 1 entries (fewer with ties);
--   this zeroes exactly floor(s . numel), ties by flat index (the card's count check). The
--   reference sparsifies once at prefill and its decode steps multiply the prefill's sparse K;
--   here each attention call prunes the cache
--   it sees: prefill = the card's one pruning, decode re-thresholds with the new row, the
--   stored cache stays dense: this workbench's reading), and the sweep's elbow (P.elbow: both
--   axes scaled to [0, 1], largest distance to the chord) plus P.essential (largest s within a
--   tolerance of dense). Tests: tests/lua/test_kv_prune.lua (exact counts, 0 % = dense,
--   rel-L2 monotone, kept >= pruned and magnitude beats a random mask of the same count,
--   elbow = the true knee where midpoint / steepest-step picks fail).
-- Not done: the KV cache stored in bitmap form and QK^T / PV through mm.bitmap (the hook
--   runs attn.dense on the zeroed K, V: same numbers, no speed-up); the seed loop.
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
    "kept magnitudes >= pruned ones (a random mask fails)", "KV variant: exact zero count, 0% = dense",
    "elbow returns the true knee of a piecewise-linear curve"},
  how = "sparselab.prune.magnitude(model, {sparsity =, scope =}) or experiments/model_sparsity.lua",
  apply = function(m, p) require("sparselab.prune").magnitude(m, {sparsity = p.sparsity, scope = p.scope}) end,
}
