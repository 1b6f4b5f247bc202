-- Generalized Neighborhood Attention: Multi-dimensional Sparse Attention at
-- the Speed of Light — card: neighborhood_attention.
-- Card steps implemented:
--   1-4. the GNA mask on a token grid (1-D over all keys by default, or
--      params.grid = {X1[, X2[, X3]]} row-major), with kernel, stride and
--      dilation applied to every dimension and is_causal (0/1) to every
--      dimension: dilation groups, stride-group leaders, window clamping at
--      borders, the causal rule ending at the group leader (mask.neighborhood
--      holds the exact rule, core/sparselab.h); kernel and stride are clamped
--      to each dimension's extent (kernel <= X, stride <= kernel);
--   5. executor: attn.block_sparse over the mask in token order (partial
--      blocks carry exact bits).
-- Not here: the tile permutation (step 5's out-of-kernel reordering) — it
-- changes speed only, not the output.
-- Unknowns chosen: kernel default 1024 (per-model configs not in the card).
-- Density: kept pairs / causal pairs when is_causal = 1, kept pairs / all
-- pairs otherwise (the non-causal mask is compared with non-causal dense:
-- give the problem causal = false).
local sl = require "sparselab"
local recipe = require "sparselab.recipe"

local function pattern(prob, p)
  local n = prob.k:shape()[2]
  local grid = p.grid or {n}
  local kernel, stride = {}, {}
  for d = 1, #grid do
    kernel[d] = math.min(p.kernel, grid[d])
    stride[d] = math.min(p.stride, kernel[d])
  end
  return sl.mask.neighborhood{grid = p.grid and grid or nil, kernel = kernel, stride = stride,
    dilation = p.dilation, is_causal = p.is_causal == 1}
end

local function mask_for(prob, p)
  return recipe.materialize(pattern(prob, p), prob, p)
end

local function run(prob, p)
  local m = mask_for(prob, p)
  local args = {backend = prob.backend}
  local o, lse = sl.attn.block_sparse(prob.q, prob.k, prob.v, m, args)
  return {o = o, lse = lse, mask = m,
    stats = {flops = sl.op_flops("attn.block_sparse", prob.q, prob.k, prob.v, m, args),
      density = m:density(p.is_causal == 1)}}
end

return {
  id = "neighborhood_attention",
  card = "neighborhood_attention",
  title = "Generalized Neighborhood Attention: Multi-dimensional Sparse Attention at the Speed of Light",
  family = "static-pattern",
  phase = "both",
  summary = "Each query sees a kernel-sized neighbourhood on the token grid (strided groups share windows).",
  knob = "kernel",
  params = recipe.block_params{
    kernel = {default = 1024, min = 1, int = true, doc = "window per grid dimension"},
    stride = {default = 1, min = 1, int = true, doc = "stride per dimension (queries of a group share a window)"},
    dilation = {default = 1, min = 1, int = true, doc = "dilation per dimension"},
    is_causal = {default = 0, min = 0, max = 1, int = true, doc = "1: causal in every dimension"},
    grid = {default = nil, doc = "token grid {X1[, X2[, X3]]} (default 1-D over all keys)"},
  },
  ops = {"attn.block_sparse"},
  checks = {"output and density equal an independent reference (1-D and 2-D, strided, dilated, causal)",
    "kernel = X, stride 1 equals dense (non-causal and causal)",
    "every query sees exactly prod(k) keys (non-causal, non-dilated)",
    "queries of one stride group share their key set (non-causal)"},
  mask = mask_for,
  run = run,
}
