-- LServe: Efficient Long-sequence LLM Serving with Unified Sparse Attention
-- — card: lserve. ONLY the static streaming-head prefill part.
-- Card steps implemented:
--   prefill 1. streaming KV heads: Λ-shaped mask, sinks j < ctx_sink and the
--      window 0 <= i - j < ctx_local, ∩ causal;
--   prefill 2. the other (retrieval) KV heads: dense causal;
--   roles are per KV head and shared by its query heads (the mask has Hkv
--   heads); executor: attn.block_sparse.
-- NOT implemented: the dynamic decode part (steps 3-5: Quest-style logical /
-- physical page scores, top-k page selection with the last page forced, the
-- reusable selector, the streaming heads' decode sink/local cache) and the
-- DuoAttention gate calibration of head roles.
-- Unknowns chosen: without gate scores, the streaming heads are the first
-- round(static_sparsity · Hkv) KV heads (0-based 0 .. s-1); defaults
-- static_sparsity 0.5, ctx_sink 128, ctx_local 8192 (the card's).
local sl = require "sparselab"
local recipe = require "sparselab.recipe"

local function n_streaming(p, hkv)
  return math.floor(p.static_sparsity * hkv + 0.5)
end

local function mask_for(prob, p)
  local hkv = prob.k:shape()[1]
  local ns = n_streaming(p, hkv)
  local items = {}
  for h = 0, hkv - 1 do
    if h < ns then
      items[h + 1] = sl.mask.sink{s = p.ctx_sink} + sl.mask.window{w = p.ctx_local}
    else
      items[h + 1] = sl.mask.causal()
    end
  end
  return recipe.materialize(sl.mask.assign(items), prob, p, hkv)
end

return {
  id = "lserve",
  card = "lserve",
  title = "LServe: Efficient Long-sequence LLM Serving with Unified Sparse Attention",
  family = "static-pattern",
  phase = "prefill",
  causal_only = true,
  summary = "Static part only: streaming KV heads run sinks + a local window, the others dense (prefill).",
  knob = "ctx_local",
  params = recipe.block_params{
    ctx_local = {default = 8192, min = 1, int = true, doc = "streaming heads' window including the query"},
    ctx_sink = {default = 128, min = 0, int = true, doc = "streaming heads' sink tokens"},
    static_sparsity = {default = 0.5, min = 0, max = 1, doc = "fraction of KV heads that stream"},
  },
  ops = {"attn.block_sparse"},
  checks = {"output and density equal an independent reference", "static_sparsity 0 equals dense",
    "streaming head rows equal streaming_llm rows (same sink and window)"},
  mask = mask_for,
  run = recipe.block_sparse_run(mask_for),
}
