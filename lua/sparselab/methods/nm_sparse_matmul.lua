-- N:M structured sparsity and its sparse matmul — card: nm_sparse_matmul.
-- Kind: non-attention (sparselab.model_recipe).
-- Card steps done: 1 hard N:M mask by magnitude (prune.magnitude with n, m; SparseGPT's N:M
--   scores via sparsegpt_prune), 3 plain compressed format (mm.nm_encode: values f32 + u8
--   positions, ragged last group), 5 executors mm.nm (CPU AVX2, CUDA gather kernel).
-- Not done: soft masks / decay (2), STen grouped format (4), the mma.sp 2:4 kernel (sm_80+ fp16
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
  },
  ops = {"prune.magnitude", "mm.nm_encode", "mm.nm"},
  checks = {"N:M masks have exactly N nonzeros per M", "sparse matmul equals the dense matmul of the masked weights to 1e-5 relative"},
  how = "sl.mm.nm_encode / sl.mm.nm (sparselab bench --only-mm); model: sparselab.prune.magnitude(model, {n =, m =})",
  apply = function(m, p) require("sparselab.prune").magnitude(m, {n = p.n, m = p.m}) end,
}
