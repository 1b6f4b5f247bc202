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

local function mask_for(prob, p)
  local n_q, n_k = prob.q:shape()[2], prob.k:shape()[2]
  return sl.mask.window(p.w):materialize{n_q = n_q, n_k = n_k, bq = p.bq, bk = p.bk}
end

return {
  id = "sliding_window",
  card = "sliding_window",
  title = "Plain (causal) sliding-window / local attention",
  family = "static-pattern",
  phase = "both",
  summary = "Each query sees the w most recent keys including itself; no sinks. Cost O(n*w*d).",
  knob = "w",
  params = {
    w = {default = 1024, min = 1, int = true, doc = "visible keys including the query itself"},
    bq = {default = 64, min = 1, max = 4096, int = true, doc = "query rows per executor block"},
    bk = {default = 64, min = 1, max = 4096, int = true, doc = "keys per executor block"},
  },
  ops = {"attn.block_sparse"},
  mask = mask_for,
  run = function(prob, p)
    local m = mask_for(prob, p)
    local args = {backend = prob.backend}
    local o, lse = sl.attn.block_sparse(prob.q, prob.k, prob.v, m, args)
    return {o = o, lse = lse, mask = m,
      stats = {flops = sl.op_flops("attn.block_sparse", prob.q, prob.k, prob.v, m, args), density = m:density(true)}}
  end,
}
