-- Dense FFN -> MoE: neuron experts with a router (LLaMA-MoE v2; SPT's unit weighting) — card:
-- moe_split_route. Kind: non-attention (sparselab.model_recipe): acts on the model through the
-- runner's FFN site hooks (sparselab.moe).
-- Card steps done: A1 split of the FFN neurons into E disjoint experts (sequential, random, and an
--   importance split: per token cluster the neurons of largest mean |h| on calibration texts,
--   taken in turn — activation magnitude instead of LLaMA-MoE v2's gradient importance), A2 router
--   = k-means centroids of the FFN inputs (hidden clustering) or random calibration vectors, A3
--   top-k experts per token (select.topk, ties lower id) with unit weights (SPT, default) or
--   softmax of the top-k logits x scale.
-- Executor steps 1-4 (session 4): the op mm.moe (ref/cpu/CUDA) sorts the (token, expert) pairs by
--   expert, gathers each expert's rows, runs its unit block as GEMMs (cpu: sgemm per task; CUDA: one
--   launch per stage over a tile table) and adds the weighted rows back; apply puts it into the model
--   runner (sparselab.moe.use: the dense w1/w3/w2 products of every layer are skipped; router +
--   mm.moe time, executed FLOPs and per-expert load in model:moe_stats). The site-hook path that
--   zeroes unrouted units stays as sparselab.moe.hook (tests: both equal within 1e-5).
-- Not done: attention-MoE (B), SPT's sigmoid block router (C), align post-training, shared expert.
-- Session 3: the k-means router and the gating run as the ops cluster.kmeans and cluster.route
--   (ref/cpu/CUDA; same results as the Lua loops, kept under o.impl = "lua").
-- Reference code: the conversion (OpenSparseLLMs/LLaMA-MoE-v2 split/convert scripts, ytgui/SPT-proto)
--   was not read; it follows the card. The executor was compared (session 4) with the Mixtral MoE
--   forward that LLaMA-MoE v2's modeling_mixtral.py builds on (MixtralSparseMoeBlock.forward, read in
--   copies found by the code search): softmax over all E logits, top-k, renormalised over the top-k
--   (= our softmax over the top-k logits; x scale here), then per expert torch.where -> gather ->
--   expert MLP x weight -> index_add_. mm.moe does the same grouping (pairs sorted by expert, token
--   order kept) in one call; divergence: the weighted rows are added per token in slot order
--   (top-1 first) instead of index_add_ in expert order, so float sums differ in order only.
local MR = require "sparselab.model_recipe"
return MR.recipe{
  id = "moe_split_route",
  title = "LLaMA-MoE v2: dense FFN split into routed neuron experts",
  summary = "FFN neurons split into E experts; a clustering router picks the top-k experts per token.",
  knob = "k",
  params = {
    experts = {default = 4, min = 1, int = true, doc = "number of experts E"},
    k = {default = 2, min = 0, int = true, doc = "experts per token"},
    split = {default = "importance", doc = "importance | sequential | random"},
    router = {default = "cluster", doc = "cluster (k-means of FFN inputs) | random (calibration vectors)"},
    weights = {default = "unit", doc = "unit (SPT) | softmax (top-k softmax x scale)"},
    scale = {default = 1, min = 0, doc = "expert output scale"},
  },
  ops = {"mm.dense", "select.topk", "mm.moe"},
  checks = {"top-k = E with unit weights equals the dense FFN", "every split is a partition of the neurons",
    "importance split + clustering router beat a sequential split with a random router (NLL)"},
  how = "sparselab.moe.build(model, calibration_seqs, {experts =, k =}) then sparselab.moe.use(model, moe): the runner's FFN as mm.moe",
  apply = function(m, p, calib)
    if not calib then require("sparselab").fail("moe_split_route: calibration sequences are required") end
    local E = require "sparselab.moe"
    local moe = E.build(m, calib, {experts = p.experts, k = p.k, split = p.split, router = p.router,
      weights = p.weights, scale = p.scale})
    if moe.k < 1 then return {site = E.hook(m, moe)} end -- k = 0: no expert, nothing to execute
    E.use(m, moe)
    return {close = function() E.off(m) end}
  end,
}
