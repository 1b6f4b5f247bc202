-- Plain (causal) sliding-window / local attention — card: sliding_window
-- (Longformer/Mistral-style SWA; the baseline in PowerAttention, MASFormer,
-- TriangleMix, LServe and The Sparse Frontier).
-- Card steps implemented:
--   1. causal mask: key j visible to query i iff 0 <= i - j < w (w counts the
--      query itself — the workbench convention the card fixes);
--   2. executor: band-limited flash attention — attn.block_sparse over the
--      window's blocks; boundary blocks carry the exact band as token bits, so
--      the executed mask equals the semantic mask (density reports both as one);
-- Not here yet: the block-rounded variant (step 3), the decode ring buffer
-- (step 4) and dilation (step 5).
local sl = require "sparselab"
local recipe = require "sparselab.recipe"

local function mask_for(prob, p)
  return recipe.materialize(sl.mask.window(p.w), prob, p)
end

return {
  id = "sliding_window",
  card = "sliding_window",
  title = "Plain (causal) sliding-window / local attention",
  family = "static-pattern",
  phase = "both",
  causal_only = true,
  summary = "Each query sees the w most recent keys including itself; no sinks. Cost O(n*w*d).",
  knob = "w",
  params = recipe.block_params{
    w = {default = 1024, min = 1, int = true, doc = "visible keys including the query itself"},
  },
  ops = {"attn.block_sparse"},
  -- card checks with a test (tests/lua/test_module.lua; the executor's mask by brute force in test_mask/test_attn_ops)
  checks = {"w >= n equals dense causal", "w = 1 returns V row-wise", "row i keeps min(i+1, w) keys",
    "executed mask equals the token mask (exact bits in boundary blocks)"},
  mask = mask_for,
  run = recipe.block_sparse_run(mask_for),
}
