-- N:M structured sparsity and its sparse matmul — card: nm_sparse_matmul.
-- Kind: non-attention (sparselab.model_recipe).
-- Card steps done: 1 hard N:M mask by magnitude (prune.magnitude with n, m; SparseGPT's N:M
--   scores via sparsegpt_prune), 3 plain compressed format (mm.nm_encode: values f32 + u8
--   positions, ragged last group), 5 executors mm.nm (CPU AVX2, CUDA gather kernel).
-- Session 4: step 2, soft masks (forward effect only): sparselab.prune.nm_soft, W_eff = W . (mask +
--   (1 - mask) beta) with beta = max(0, 1 - c t) | exp(-c t) | 0 (step), and the PGF structure decay
--   schedule (M-1):M, M/2:M, M/4:M, ... N:M as frames (prune.pgf_schedule). Reading for the card's
--   training schedule (this workbench does not train): a point t of the schedule (or a frame) is
--   applied once, an ablation of its forward effect; param beta > 0 here. SR-STE is training-only.
-- Not done: STen grouped format (4), the mma.sp 2:4 kernel (sm_80+ fp16
--   hardware only). apply prunes the model N:M; session 3: the runner runs the pruned weights
--   through mm.nm (sparselab.runexec, sl_model_exec; timed); mm.nm is also timed in
--   `sparselab bench --only-mm`.
local MR = require "sparselab.model_recipe"
return MR.recipe{
  id = "nm_sparse_matmul",
  title = "N:M structured sparsity (2:4, 4:8) with a compressed-format sparse matmul",
  summary = "Keep the n largest |w| of every m along the input dim; compress; multiply compressed x dense.",
  params = {
    n = {default = 2, min = 1, int = true, doc = "kept weights per group"},
    m = {default = 4, min = 1, int = true, doc = "group size along the input dim"},
    beta = {default = 0, min = 0, max = 1, doc = "soft mask: pruned weights scaled by beta (0: the hard mask; PGF step 2)"},
  },
  ops = {"prune.magnitude", "mm.nm_encode", "mm.nm"},
  checks = {"N:M masks have exactly N nonzeros per M", "soft masks: beta 0 = the hard mask, beta 1 = dense, pruned entries = beta . w", "sparse matmul equals the dense matmul of the masked weights to 1e-5 relative"},
  how = "sl.mm.nm_encode / sl.mm.nm (sparselab bench --only-mm); model: sparselab.prune.magnitude(model, {n =, m =})",
  apply = function(m, p)
    local P = require "sparselab.prune"
    if (p.beta or 0) > 0 then P.nm_soft(m, {n = p.n, m = p.m, beta = p.beta}) else P.magnitude(m, {n = p.n, m = p.m}) end
  end,
}
