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
-- Session 4: 4 Spark's predictor (card: "select on a partial-dimension score, compute on the
--   full row"): op act.spark_score (ref/cpu/CUDA) scores the FFN units from the first r input
--   dims (r default ceil(dim/2), the card's r ~ d_model/2), act.topk (or act.stat_topk,
--   Spark's statistical top-k) selects, and the selected units get their exact h
--   (sparselab.actsparse kind "spark", spec {k, r, score, stat}). Readings for the card's
--   unknowns: score "gate" is Spark's (z = x[:r] . W1[:, :r]^T); "gate_up" (default) is
--   |silu(gate_r) . up_r| with the same r dims of W3, the untrained stand-in for a model not
--   trained with the predictor (Spark trains its split; this model was not). No public Spark
--   code (card). Tests: tests/lua/test_spark_ffn.lua (recall vs exact top-k against first-k and
--   random predictors, which fail its bar), tests/test_act_ops.c (act.spark_score).
--   In the runner's executors: sparselab.runexec spec.spark = {k, r, score} (exec format
--   SL_EXEC_SPARK): w1 scores and selects, w1 and w3 run mm.out_sparse over the selected
--   units, w2 mm.act_sparse (timed; equal to the hook, tested).
-- Not done: Spark's training of the split (out of scope: needs pre-training); one fused
--   score/select/gate/up kernel (the exec chains four op calls).
local MR = require "sparselab.model_recipe"
return MR.recipe{
  id = "topk_activation",
  title = "Top-k activation sparsity in the FFN",
  summary = "Per token keep the k FFN hidden units of largest |h|, zero the rest.",
  knob = "k",
  params = {k = {default = 64, min = 0, int = true, doc = "hidden units kept per token"}},
  ops = {"act.topk", "act.stat_topk", "act.spark_score"},
  checks = {"keeps exactly k per row", "the kept units are the k largest (first-k fails)",
    "Spark's predictor recalls the exact top-k above a bar first-k and random predictors fail"},
  how = "sparselab.actsparse.hook(model, {kind = 'topk', k =}) as the site hook of model.c:forward",
  apply = function(m, p) return {site = require("sparselab.actsparse").hook(m, {kind = "topk", k = p.k})} end,
}
