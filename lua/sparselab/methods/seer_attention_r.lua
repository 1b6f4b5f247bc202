-- SeerAttention-R: Sparse Attention Adaptation for Long Reasoning — card:
-- seer_attention_r. Decode-time block selection per KV head; this recipe is
-- the reference's `oracle_sparse` implementation (exact scores at the same
-- budget), the stand-in DESIGN names for a learned gate without weights.
-- Card steps implemented (oracle variant):
--   3'. scores: the exact attention probabilities exp(z - LSE) of every query
--       head (page.token_scores, page.attend over every page for the LSE),
--       max-pooled over each KV block of `block` tokens (reduce.block, max),
--       then max-pooled over the query heads of the GQA group (reduce.heads,
--       max) — the training ground truth's pooling;
--   4. top (budget / block) blocks per KV head with the last (incomplete)
--      block always selected (page.select, last forced); one selection per
--      GQA group;
--   5. executor: exact attention over the selected blocks (page.attend with
--      page = block, lists per KV head: split-K over the selected blocks).
-- Not implemented: the learned gate (steps 1-2: W_q, W_k and the K
-- compression cache; no trained weights are available here), the threshold
-- variant, the optional sliding window, training.
local sl = require "sparselab"
local decode = require "sparselab.decode"

local M = {
  id = "seer_attention_r",
  card = "seer_attention_r",
  title = "SeerAttention-R: Sparse Attention Adaptation for Long Reasoning",
  family = "decode-kv",
  phase = "decode",
  causal_only = true,
  summary = "Oracle stand-in for the learned gate: blocks ranked by group-max of block-max attention probability; last block kept.",
  knob = "budget",
  params = {
    budget = {default = 4096, min = 1, int = true, doc = "token budget B (B / block blocks per KV head)"},
    block = {default = 64, min = 1, int = true, doc = "KV block b"},
    page = {default = 16, min = 1, int = true, doc = "page size of the decode cache"},
  },
  ops = {"page.token_scores", "page.attend", "reduce.block", "reduce.heads", "page.select"},
  checks = {"budget >= n is dense", "the last block is always selected; one selection per GQA group",
    "oracle block choice beats first-k blocks on peaked inputs"},
}

local function block_scores(cache, q, p, backend)
  local hq = q:shape()[1]
  local P = decode.attention_probs(cache, q, backend)
  local rows = {}
  for h = 1, hq do rows[h] = {P[h]} end
  local probs = sl.tensor(rows)
  local bm = sl.reduce.block(probs, {br = 1, bc = p.block, mode = 1, backend = backend})
  return sl.reduce.heads(bm, {group = hq // cache:heads(), mode = 1, backend = backend})
end

local function block_step(cache, q, p, backend, scorer)
  local n, hkv, d = cache:len(), cache:heads(), cache:head_dim()
  local nb = (n + p.block - 1) // p.block
  local kb = math.max(1, p.budget // p.block)
  local lists
  if kb >= nb then
    lists = decode.all_pages(hkv, 1, nb)
  else
    local s = scorer and scorer(cache, q, nb) or block_scores(cache, q, p, backend)
    lists = sl.page.select(s, {k = kb, last = 1, backend = backend})
  end
  local o, lse = sl.page.attend(q, cache:tensor("k"), cache:tensor("v"), lists,
    {page = p.block, n = n, backend = backend})
  local _, tokens = decode.pages_read(lists, p.block, n)
  return {o = o, lse = lse, pages = lists,
    stats = {tokens_read = tokens / hkv, density = tokens / (hkv * n), kv_bytes = 8 * d * tokens}}
end
M.block_step = block_step

function M.decode(st, ls, step, p)
  return block_step(ls.cache, step.q, p, step.backend)
end

function M.run(prob, p)
  return decode.kernel_run(M, prob, p, {})
end

return M
