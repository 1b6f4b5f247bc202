-- Low-rank Q·K factors (CASP whitened factorisation) — card: qk_lowrank.
-- Kind: non-attention (sparselab.model_recipe).
-- Card steps done 1-5 as the compression row (prune.lowrank: whitened rank-r factors of W_q,
--   W_k from calibration inputs; whiten = false is plain SVD).
-- Divergence: a failed chol(XᵀX) gets growing damping instead of the reference's shift by the
--   smallest eigenvalue. Not done: the estimator use (low-rank scores -> selection; RoPE caveat)
--   and the recall-vs-entropy study.
local MR = require "sparselab.model_recipe"
return MR.recipe{
  id = "qk_lowrank",
  title = "Low-rank Q·K factors (whitened, CASP)",
  summary = "Replace W_q and W_k by rank-r factors whitened by the layers' calibration inputs.",
  knob = "rank",
  params = {
    rank = {default = 16, min = 1, int = true, doc = "rank of the factors"},
    whiten = {default = true, doc = "whiten by the calibration inputs (false: plain SVD)"},
  },
  ops = {"prune.lowrank"},
  checks = {"whitened factors beat plain SVD at the same rank (experiment)", "full rank reproduces W"},
  how = "sparselab.prune.lowrank_qk(model, calibration_seqs, {rank =, whiten =}) or experiments/model_sparsity.lua",
  apply = function(m, p, calib)
    if not calib then require("sparselab").fail("qk_lowrank: calibration sequences are required") end
    require("sparselab.prune").lowrank_qk(m, calib, {rank = p.rank, whiten = p.whiten})
  end,
}
