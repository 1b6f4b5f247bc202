-- Ada-SnapKV (adaptive budget allocation across heads, Ada-KV applied to
-- SnapKV) as the decode baseline of The Sparse Frontier — card:
-- sparse_frontier. The snapkv recipe with adaptive = 1: every KV head of a
-- layer keeps at least min_ratio (0.2) of the uniform middle budget, the rest
-- of the layer's budget goes to the largest pooled importances across heads.
-- See lua/sparselab/methods/snapkv.lua for the steps and divergences.
local snapkv = require "sparselab.methods.snapkv"

local M = {}
for key, val in pairs(snapkv) do M[key] = val end
M.id = "ada_snapkv"
M.title = "Ada-KV: Optimizing KV Cache Eviction by Adaptive Budget Allocation for Efficient LLM Inference"
M.summary = "SnapKV with the layer's KV budget allocated adaptively across heads (each head keeps >= min_ratio of its share)."
M.params = {}
for key, val in pairs(snapkv.params) do
  local c = {}
  for f, x in pairs(val) do c[f] = x end
  M.params[key] = c
end
M.params.adaptive.default = 1
M.checks = {"budget >= prompt length keeps everything (dense)",
  "per-head counts differ, their total equals the uniform total, each head >= min_ratio share",
  "importance beats first-k (position) selection on peaked inputs"}
-- run and decode dispatch on the resolved params, where adaptive = 1 by default
return M
