-- Low-rank Q·K factors (CASP whitened factorisation) — card: qk_lowrank.
-- Kind: non-attention (sparselab.model_recipe).
-- Card steps done 1-5 as the compression row (prune.lowrank: whitened rank-r factors of W_q,
--   W_k from calibration inputs; whiten = false is plain SVD).
-- Estimator use (use = "estimator", sparselab.qkest): per query row the top `keep` keys by the
--   low-rank logits, run exactly (attn.block_sparse, 1 x 1 blocks). RoPE: "lowrank" scores pre-RoPE
--   with the r x r core Aq_h^T Ak_g (the savings; measured recall 0.24-0.28 here: RoPE matters in
--   this model), "lowrank_rope" rotates the reconstructed low-rank q, k (no savings; recall 0.83-0.87
--   at keep 16, exact top-k 0.89, random 0.03).
-- Divergence: a failed chol(XᵀX) gets growing damping instead of the reference's shift by the
--   smallest eigenvalue. Not done: caching k~ for decode, block pooling of the estimate, the
--   recall-vs-entropy study.
local MR = require "sparselab.model_recipe"
return MR.recipe{
  id = "qk_lowrank",
  title = "Low-rank Q·K factors (whitened, CASP)",
  summary = "Replace W_q and W_k by rank-r factors whitened by the layers' calibration inputs.",
  knob = "rank",
  params = {
    rank = {default = 16, min = 1, int = true, doc = "rank of the factors"},
    whiten = {default = true, doc = "whiten by the calibration inputs (false: plain SVD)"},
    use = {default = "compress", doc = "compress (replace W_q, W_k) | estimator (select keys by low-rank scores)"},
    keep = {default = 32, min = 1, int = true, doc = "estimator: keys kept per query row"},
    scores = {default = "lowrank_rope", doc = "estimator: lowrank (pre-RoPE core) | lowrank_rope | exact | first | random"},
  },
  ops = {"prune.lowrank", "mm.dense", "score.rows", "select.topk", "attn.block_sparse"},
  checks = {"whitened factors beat plain SVD at the same rank (experiment)", "full rank reproduces W",
    "full-rank estimator q, k equal the model's post-RoPE q, k", "estimator recall far above first-k / random keys"},
  how = "sparselab.prune.lowrank_qk(model, calibration_seqs, {rank =, whiten =}); estimator: sparselab.qkest",
  apply = function(m, p, calib)
    if not calib then require("sparselab").fail("qk_lowrank: calibration sequences are required") end
    if p.use == "estimator" then
      local Q = require "sparselab.qkest"
      local attention, site = Q.hooks(m, Q.build(m, calib, {rank = p.rank, whiten = p.whiten}),
        {keep = p.keep, scores = p.scores})
      return {attention = attention, site = site}
    elseif p.use ~= "compress" then
      require("sparselab").fail("qk_lowrank: use must be compress or estimator, found %s", tostring(p.use))
    end
    require("sparselab.prune").lowrank_qk(m, calib, {rank = p.rank, whiten = p.whiten})
  end,
}
