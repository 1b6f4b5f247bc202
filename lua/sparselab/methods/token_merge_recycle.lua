-- Token merging with recycling (SparseVLM v1's recycling after token pruning) — card:
-- token_merge_recycle. Kind: non-attention (sparselab.model_recipe): acts on the model through the
-- runner's attention hook and its "layer_out" site (sparselab.tokenprune with recycle = true).
-- Card steps done (part A): 1 candidates = the top m = floor(0.3 n_p) + 1 pruned tokens by score,
--   2 c = floor(m / 10) + 1, 3 DPC-kNN (distances / sqrt(D), density from the c nearest squared
--   distances with self, parent distance, centres = top-c by rho . delta; ties by index instead
--   of the reference's 1e-6 noise), 4 nearest-centre assignment with centres forced to
--   themselves, 5 unweighted means (T.dpc, T.merge_mean).
-- Divergence: the merged token is written into the slot of its cluster's last member (largest
--   original position, so that no earlier token sees it) and keeps that position, instead of
--   being inserted after the kept visual tokens with renumbered positions: the runner keeps the
--   sequence length (the KV keep list formulation of token_prune_attn_score).
-- Not done: part B (STViT semantic tokens, cross-attention refinement, recover), the size vector
--   and proportional attention (C). Session 3: DPC-kNN runs as the op cluster.dpc (ref/cpu/CUDA;
--   T.dpc_op, same results as the Lua T.dpc, which stays under o.dpc = "lua").
-- Reference code (Gumpest/SparseVLMs utils.py cluster_and_merge) was not read; this follows the card.
local MR = require "sparselab.model_recipe"
return MR.recipe{
  id = "token_merge_recycle",
  title = "Token recycling: pruned tokens merged by density-peak clustering (SparseVLM)",
  summary = "After attention-score token pruning, the best pruned tokens are clustered (DPC-kNN) and kept as means.",
  knob = "ratio",
  params = {
    ratio = {default = 0.3, min = 0, max = 1, doc = "kept share of the candidates at the pruning layer"},
    layer = {default = 0, min = 0, int = true, doc = "pruning layer"},
    probe = {default = 32, min = 1, int = true, doc = "last rows that rate the candidates"},
    prefix = {default = 1, min = 0, int = true, doc = "first tokens never pruned"},
    frac = {default = 0.3, min = 0, max = 1, doc = "share of the pruned tokens recycled (m = floor(frac n_p) + 1)"},
    cluster_div = {default = 10, min = 1, int = true, doc = "c = floor(m / cluster_div) + 1"},
  },
  ops = {"score.rows", "reduce.heads", "reduce.columns", "select.topk", "gather.rows", "attn.token_sparse"},
  checks = {"every candidate in exactly one cluster, centres in their own", "merged = mean of its members (fp64)",
    "c = m gives back the candidates", "well-separated blobs recovered", "invariant to input permutation"},
  how = "sparselab.tokenprune.hook(model, {ratio =, recycle = true}) -> attention and site hooks",
  apply = function(m, p)
    local attention, site = require("sparselab.tokenprune").hook(m, {ratio = p.ratio, layers = {p.layer},
      probe = p.probe, prefix = p.prefix, recycle = true, recycle_frac = p.frac, cluster_div = p.cluster_div})
    return {attention = attention, site = site}
  end,
}
