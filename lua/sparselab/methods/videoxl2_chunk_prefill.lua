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
--   4. bi-level KV decoding (issue 13; the card only summarises it, the
--      video_xl2 card's mechanism on this template): after the prefill the
--      prefix, the first and the last visual chunks and the dec_topk most
--      relevant other chunks (q . chunk mean key summed over heads, chosen at
--      the first decode step) keep dense KV; every other chunk keeps its
--      timestamp tokens and average-pools each group's visual tokens by
--      dec_step; question and generated tokens stay dense; decoding is dense
--      attention over that mixed cache (pool.tokens over segment bounds).
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
M.phase = "both"
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
M.params.dec_topk = {default = 4, min = 0, int = true, doc = "decode: relevant chunks kept dense besides prefix, first and last"}
M.params.dec_step = {default = 16, min = 1, int = true, doc = "decode: pooling window of a compressed group's visual tokens"}
M.params.page = {default = 16, min = 1, int = true, doc = "decode: page size of the cache"}
M.ops = {"attn.block_sparse", "pool.tokens", "page.token_scores", "attn.dense"}
M.checks = {"output and density equal an independent reference", "prev_blocks_num >= chunks equals dense",
  "timestamp rows/cols on, prefix columns visible, suffix rows dense", "last chunk may be partial"}
M.mask = mask_for
M.run = recipe.block_sparse_run(mask_for)

-- Visual chunks of a prompt of n0 tokens: {start, stop} (0-based, stop
-- exclusive), the prefix end, the suffix start and the timestamp set.
local function visual_chunks(n0, p)
  local pre, suf, chunks, ts = M.layout(n0, p)
  local out = {}
  for i, a in ipairs(chunks) do out[i] = {a, chunks[i + 1] or suf} end
  local tset = {}
  for _, t in ipairs(ts) do tset[t] = true end
  return out, pre, suf, tset
end

--- Decode (step 4): scorer(n_chunks) replaces the chunk relevance in tests.
function M.decode(st, ls, step, p, scorer)
  local cache, q = ls.cache, step.q
  local n, n0 = cache:len(), ls.n_prefill
  local ch, pre, suf, tset = visual_chunks(n0, p)
  if not ls.vx_keep then
    local keep = {[1] = true, [#ch] = true}
    local others = #ch - 2
    if p.dec_topk >= others then
      for c = 1, #ch do keep[c] = true end
    elseif #ch > 0 then
      local s
      if scorer then
        s = scorer(#ch)
      else
        local starts = {}
        for i, c in ipairs(ch) do starts[i] = c[1] - ch[1][1] end
        local means = sl.pool.tokens(cache:tensor("k"):narrow(2, ch[1][1] + 1, suf - ch[1][1]),
          {bounds = sl.tensor(starts, "i32"), mode = 0, backend = step.backend})
        s = sl.page.token_scores(q, means, {causal = 0, backend = step.backend})
      end
      local t = s:totable()
      local score, order = {}, {}
      for c = 2, #ch - 1 do
        local acc = 0
        for h = 1, #t do acc = acc + t[h][1][c] end
        score[c] = acc
        order[#order + 1] = c
      end
      table.sort(order, function(a, b) if score[a] ~= score[b] then return score[a] > score[b] end return a < b end)
      for i = 1, p.dec_topk do keep[order[i]] = true end
    end
    ls.vx_keep = keep
  end
  -- segment starts: the prefix token by token, dense chunks token by token,
  -- compressed chunks: timestamps alone, visual runs pooled by dec_step
  local b = {}
  for j = 0, pre - 1 do b[#b + 1] = j end
  for c, range in ipairs(ch) do
    local j = range[1]
    while j < range[2] do
      if ls.vx_keep[c] or tset[j] then
        b[#b + 1] = j
        j = j + 1
      else
        b[#b + 1] = j
        local e = j
        while e < range[2] and not tset[e] and e - j < p.dec_step do e = e + 1 end
        j = e
      end
    end
  end
  for j = suf, n - 1 do b[#b + 1] = j end
  local bt = sl.tensor(b, "i32")
  local km = sl.pool.tokens(cache:tensor("k"):narrow(2, 1, n), {bounds = bt, mode = 0, backend = step.backend})
  local vm = sl.pool.tokens(cache:tensor("v"):narrow(2, 1, n), {bounds = bt, mode = 0, backend = step.backend})
  local o, lse = sl.attn.dense(q, km, vm, {causal = false, backend = step.backend})
  return {o = o, lse = lse, keep = ls.vx_keep,
    stats = {tokens_read = #b, density = #b / n, kv_bytes = 8 * cache:head_dim() * #b * cache:heads()}}
end

return M
