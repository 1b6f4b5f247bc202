-- Plain (causal) sliding-window / local attention — card: sliding_window
-- (Longformer/Mistral-style SWA; the baseline in PowerAttention, MASFormer,
-- TriangleMix, LServe and The Sparse Frontier).
-- Card steps implemented:
--   1. causal mask: key j visible to query i iff 0 <= i - j < w (w counts the
--      query itself — the workbench convention the card fixes);
--   2. executor: band-limited flash attention — attn.block_sparse over the
--      window's blocks; boundary blocks carry the exact band as token bits, so
--      the executed mask equals the semantic mask (density reports both as one);
--   4. decode (issue 13): a decode hook keeps the last w keys in the paged
--      cache (older ones evicted as the window slides: a ring buffer in
--      effect), positions original;
-- Not here yet: the block-rounded variant (step 3) and dilation (step 5).
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
  decode = function(st, ls, step, p)
    return require("sparselab.decode").static_cache_step(ls.cache, step.q, 0, p.w, step.backend)
  end,
}
