-- Video-XL-2: Towards Very Long-Video Understanding Through Task-Aware KV
-- Sparsification — card: videoxl2_chunk_prefill.
-- Card steps implemented:
--   1. template: [prefix (prefix_len tokens)] [visual section: groups of
--      ts_len timestamp tokens then group_tokens visual tokens; the last group
--      may be partial] [suffix (suffix_len question tokens)]; chunks pack
--      block_size consecutive groups, boundaries at group (timestamp) starts;
--   2. mask M: within chunk; the prev_blocks_num preceding chunks; prefix
--      columns seen by every row; suffix rows see everything; timestamp rows
--      and columns fully on; final mask = M ∩ causal;
--   3. executor: attn.block_sparse over the mask (the released code runs
--      dense SDPA with an additive mask; the output is the same), density =
--      allowed ∩ causal over causal pairs — the card's FLOP ratio.
-- Not here: bi-level KV decoding (step 4).
-- Unknowns chosen: tokens per group (group_tokens = 64 visual + ts_len = 8
-- timestamp tokens), prefix_len = 16, suffix_len = 32; block_size 6 and
-- prev_blocks_num 5 are the LongVideoBench eval values. The prefix and the
-- suffix are clamped to the sequence (prefix first).
local sl = require "sparselab"
local recipe = require "sparselab.recipe"

local M = {}

--- The template at n tokens: prefix end, suffix start, chunk starts,
--- timestamp positions (0-based).
function M.layout(n, p)
  local pre = math.min(p.prefix_len, n)
  local suf = math.max(pre, n - p.suffix_len)
  local group = p.ts_len + p.group_tokens
  local chunks, ts = {}, {}
  local g = 0
  for s = pre, suf - 1, group do
    if g % p.block_size == 0 then chunks[#chunks + 1] = s end
    for t = s, math.min(s + p.ts_len, suf) - 1 do ts[#ts + 1] = t end
    g = g + 1
  end
  return pre, suf, chunks, ts
end

local function mask_for(prob, p)
  local n = prob.k:shape()[2]
  local pre, suf, chunks, ts = M.layout(n, p)
  local segs = {}
  for _, s in ipairs(chunks) do if s > 0 then segs[#segs + 1] = s end end
  if suf < n and suf > 0 and segs[#segs] ~= suf then segs[#segs + 1] = suf end
  -- segment 0 is the prefix (or the first chunk when there is no prefix);
  -- the suffix is the last segment: its rows are dense anyway
  local pat = #segs > 0 and sl.mask.document{segments = segs, prev = p.prev_blocks_num} or sl.mask.causal()
  if pre > 0 then pat = pat + sl.mask.dense_cols{first = pre} end
  if suf < n then pat = pat + sl.mask.dense_rows{last = n - suf} end
  if #ts > 0 then pat = pat + sl.mask.global_tokens{tokens = ts} end
  return recipe.materialize(pat, prob, p)
end

M.id = "videoxl2_chunk_prefill"
M.card = "videoxl2_chunk_prefill"
M.title = "Video-XL-2: Towards Very Long-Video Understanding Through Task-Aware KV Sparsification"
M.family = "static-pattern"
M.phase = "prefill"
M.causal_only = true
M.summary = "Chunk-local prefill over frame groups with a window of previous chunks, global timestamps, prefix and question."
M.knob = "prev_blocks_num"
M.params = recipe.block_params{
  prev_blocks_num = {default = 5, min = 0, int = true, doc = "preceding chunks visible to a chunk"},
  block_size = {default = 6, min = 1, int = true, doc = "timestamp groups per chunk"},
  group_tokens = {default = 64, min = 0, int = true, doc = "visual tokens per timestamp group"},
  ts_len = {default = 8, min = 0, int = true, doc = "timestamp tokens at the start of each group"},
  prefix_len = {default = 16, min = 0, int = true, doc = "tokens before the visual section"},
  suffix_len = {default = 32, min = 0, int = true, doc = "question tokens after the visual section"},
}
M.ops = {"attn.block_sparse"}
M.checks = {"output and density equal an independent reference", "prev_blocks_num >= chunks equals dense",
  "timestamp rows/cols on, prefix columns visible, suffix rows dense", "last chunk may be partial"}
M.mask = mask_for
M.run = recipe.block_sparse_run(mask_for)
return M
