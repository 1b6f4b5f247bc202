-- Efficient Streaming Language Models with Attention Sinks (StreamingLLM,
-- Xiao et al. 2023) — card: streaming_llm ("A-shape" prefill mask as used by
-- MInference, TriangleMix, LServe).
-- Card steps implemented:
--   1. parameters n_init (sinks at positions 0..n_init-1) and n_local (recent
--      window counting the query itself);
--   2. prefill mask: key j visible to query i iff j <= i and
--      (i - j < n_local or j < n_init), with original positions (MInference);
--   3. executor: one attn.block_sparse pass over the union mask. The card's
--      reference runs two passes (window, then sinks outside the window) merged
--      by log-sum-exp; one pass over the union is the same softmax (the union
--      counts each sink once), which the op tests check against dense.
--   4. decode (issue 13): a decode hook over the paged cache keeps the first
--      n_init and the last n_local tokens (the newest included) and evicts the
--      rest for good (sl.kvcache evict), the query attending to all that is
--      left; cache length never exceeds n_init + n_local.
-- Not here yet: pos_shift (step 4's RoPE re-positioning needs pre-RoPE keys;
-- the cache holds the captured post-RoPE keys, so positions stay original)
-- and the block variant (step 5).
local sl = require "sparselab"
local recipe = require "sparselab.recipe"

local function mask_for(prob, p)
  return recipe.materialize(sl.mask.sink(p.n_init) + sl.mask.window(p.n_local), prob, p)
end

return {
  id = "streaming_llm",
  card = "streaming_llm",
  title = "Efficient Streaming Language Models with Attention Sinks",
  family = "static-pattern",
  phase = "both",
  causal_only = true,
  summary = "Attention sinks (the first n_init tokens) plus a sliding window of n_local recent tokens.",
  knob = "n_local",
  params = recipe.block_params{
    n_init = {default = 4, min = 0, int = true, doc = "sink tokens at positions 0..n_init-1"},
    n_local = {default = 1024, min = 1, int = true, doc = "recent keys including the query itself"},
  },
  ops = {"attn.block_sparse"},
  -- card checks with a test (tests/lua/test_module.lua)
  checks = {"n_local >= n equals dense causal", "row i keeps min(i+1, n_local) + max(0, min(n_init, i+1-n_local)) keys",
    "sinks raise recall over the same window without them", "recall is monotone in n_local"},
  mask = mask_for,
  run = recipe.block_sparse_run(mask_for),
  decode = function(st, ls, step, p)
    return require("sparselab.decode").static_cache_step(ls.cache, step.q, p.n_init, p.n_local, step.backend)
  end,
}
