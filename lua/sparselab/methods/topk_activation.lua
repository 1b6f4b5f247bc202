-- Top-k FFN activation sparsity — card: topk_activation.
-- Kind: non-attention (sparselab.model_recipe).
-- Card steps done: 1 exact top-k per token of the FFN hidden units (act.topk; by |h|, h =
--   silu(gate) . up: SwiGLU units are signed, this workbench's reading), 5 density in stats.
-- Session 3: 2 statistical top-k (act.stat_topk: theta = mean + std . Phi^-1(s), shifted ReLU;
--   sparselab.actsparse kind "stat_topk" on the gate pre-activation, Gemma 3n's order, SiLU here);
--   the runner can run w2 through mm.act_sparse on the zeroed units (sparselab.runexec).
-- Session 3c: 3 percentile core neurons (sparselab.actsparse core_token / core_sentence, hook kind
--   "core": the prompt's sentence-level core neurons of |h| kept alone in decode; rho, beta as
--   fractions; tests/lua/test_core_neurons.lua). On the shipped 260K model a static core set
--   is far worse than per-token top-k and not reliably better than the first |C| units.
-- Not done: Spark's predictor (4).
local MR = require "sparselab.model_recipe"
return MR.recipe{
  id = "topk_activation",
  title = "Top-k activation sparsity in the FFN",
  summary = "Per token keep the k FFN hidden units of largest |h|, zero the rest.",
  knob = "k",
  params = {k = {default = 64, min = 0, int = true, doc = "hidden units kept per token"}},
  ops = {"act.topk"},
  checks = {"keeps exactly k per row", "the kept units are the k largest (first-k fails)"},
  how = "sparselab.actsparse.hook(model, {kind = 'topk', k =}) as the site hook of model.c:forward",
  apply = function(m, p) return {site = require("sparselab.actsparse").hook(m, {kind = "topk", k = p.k})} end,
}
