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
--   4b. (issue 13 session 3) pos_shift = 1 in the model runner's decode loop:
--      positions are cache slots, as the reference's pos_shift
--      (streaming_llm/pos_shift/modify_llama.py re-applies RoPE to pre-RoPE
--      keys with positions arange(kv_seq_len)). The runner's keys arrive
--      post-RoPE, and RoPE rotations compose, so instead of storing pre-RoPE
--      keys the hook rotates keys from their original position p to their
--      slot s by R(s - p): the recent window sits at slots ending at the
--      query's slot n - 1 with the same relative distances as before (no
--      change), the sinks (slot = position) move by +e, e = tokens evicted —
--      so only the sinks are rotated, by e positions, at read time
--      (decode.rope_rotate with the model's theta and pairs/half style, from
--      step.rope). Kernel-level inputs carry no RoPE information: pos_shift
--      there is refused with a one-line error, as is Llama 3 scaled RoPE.
-- Not here yet: the block variant (step 5).
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
    pos_shift = {default = 0, min = 0, max = 1, int = true,
      doc = "decode: RoPE positions are cache slots (the reference's pos_shift; needs the model runner's RoPE)"},
  },
  ops = {"attn.block_sparse"},
  -- card checks with a test (tests/lua/test_module.lua)
  checks = {"n_local >= n equals dense causal", "row i keeps min(i+1, n_local) + max(0, min(n_init, i+1-n_local)) keys",
    "sinks raise recall over the same window without them", "recall is monotone in n_local"},
  mask = mask_for,
  run = recipe.block_sparse_run(mask_for),
  decode = function(st, ls, step, p)
    local shift
    if p.pos_shift == 1 then
      if not step.rope then
        sl.fail("streaming_llm: pos_shift = 1 needs the model's RoPE (the model runner's decode loop); this step has none")
      end
      if (step.rope.factor or 0) > 0 then
        sl.fail("streaming_llm: pos_shift = 1 with Llama 3 scaled RoPE (rope_factor = %g) is not supported", step.rope.factor)
      end
      shift = {rope = step.rope, evicted = (ls.seen or ls.cache:len()) - math.min(ls.seen or 0, p.n_init + p.n_local)}
    end
    return require("sparselab.decode").static_cache_step(ls.cache, step.q, p.n_init, p.n_local, step.backend, shift)
  end,
}
