-- Unstructured sparse weights times dense activations (bitmap format; SparAMX-style) — card:
-- unstructured_sparse_matmul. Kind: non-attention (sparselab.model_recipe).
-- Card steps done: 1 bitmap + values packed per row (mm.bitmap_encode; row-major 32-bit words,
--   per-row value slots instead of per-thread offsets), 2 portable decode (no AVX-512 expand:
--   AVX2 box), 3 CUDA warp/popcount kernel (mm.bitmap).
-- Session 3: cuSPARSE CSR SpMM on CUDA below mm.bitmap's csr_below density (nvcc builds; the
--   simulator keeps the CUDA-core kernel; tests/gpu/run.sh checks it on a GPU), and the model
--   runner runs pruned weights through mm.bitmap (sparselab.runexec, sl_model_exec), timed.
-- Not done: the KV-cache variant (4). mm.bitmap is also timed in `sparselab bench --only-mm`.
local MR = require "sparselab.model_recipe"
return MR.recipe{
  id = "unstructured_sparse_matmul",
  title = "Unstructured sparse matmul (bitmap-compressed weights x dense activations)",
  summary = "Bitmap + packed values per weight row; executor reads only the nonzeros.",
  knob = "sparsity",
  knob_direction = -1, -- a larger sparsity keeps less
  params = {sparsity = {default = 0.75, min = 0, max = 1, doc = "magnitude-pruned share of each linear"}},
  ops = {"prune.magnitude", "mm.bitmap_encode", "mm.bitmap"},
  checks = {"sparse matmul equals the dense matmul of the masked weights to 1e-5 relative",
    "compress -> decode reproduces the masked weight bit-exactly"},
  how = "sl.mm.bitmap_encode / sl.mm.bitmap (sparselab bench --only-mm); model: sparselab.prune.magnitude",
  apply = function(m, p) require("sparselab.prune").magnitude(m, {sparsity = p.sparsity}) end,
}
