-- Top-k FFN activation sparsity — card: topk_activation.
-- Kind: non-attention (sparselab.model_recipe).
-- Card steps done: 1 exact top-k per token of the FFN hidden units (act.topk; by |h|, h =
--   silu(gate) . up: SwiGLU units are signed, this workbench's reading), 5 density in stats.
-- Session 3: 2 statistical top-k (act.stat_topk: theta = mean + std . Phi^-1(s), shifted ReLU;
--   sparselab.actsparse kind "stat_topk" on the gate pre-activation, Gemma 3n's order, SiLU here);
--   the runner can run w2 through mm.act_sparse on the zeroed units (sparselab.runexec).
-- Not done: percentile core neurons (3), Spark's predictor (4).
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
