-- MoBA: Mixture of Block Attention for Long-Context LLMs — card: moba.
-- Card steps implemented:
--   1. block representatives: keys mean-pooled per block of `block` keys
--      (the last block over its valid keys; score.pooled, pool = mean, bq = 1);
--   2. gate s_{t,i} = q_t · k̄_i (unscaled: ranking only);
--   3. causality: a block counts by score only when complete before the
--      query (t >= (i+1)·block); the query's own block is always kept
--      (+inf), later blocks never;
--   4. top-k blocks per (query head, query row), the own block included
--      (ties: lower block index, where the reference's torch.topk leaves
--      ties unspecified);
--   5. one exact softmax over the union of the selected blocks, causal inside
--      the own block (attn.block_sparse over a bq = 1 block mask).
-- Reference: MoonshotAI/MoBA moba/moba_naive.py (moba_attn_varlen_naive):
-- matched (mean-pooled gate weights, -inf for incomplete blocks, +inf for
-- the own block, topk, tril); heads are gated independently (a GQA kv head
-- is shared by the query heads of its group, each choosing its own blocks).
-- The efficient varlen + lse-merge version (moba_efficient.py) is not read;
-- its parity with the naive one is not checked here.
-- Parameters: none learned. MoBA trains the ordinary projections under the
-- sparse gate, so the workbench runs it training-free on any Q/K/V
-- (params_source "parameter-free"); `sparselab fit-params moba` says there is
-- nothing to fit.
-- Defaults: block 512, topk 3 (the paper's scaling experiments: 512 / top-3
-- at 8K, from the card; Kimi deployment 4096 / top-12).
-- NOT implemented: decode (dense in the Kimi deployment); hybrid layer
-- schedules.
local sl = require "sparselab"
local E = require "sparselab.blockest"

-- Memory linear in n (issue 19): the gate scores [Hq, n, n/block] and a
-- keep of the same size were whole Lua tables; now the scores are read for
-- blocks of ~ROW_BUDGET entries of rows, and each row's kept blocks (at
-- most topk, ascending: the chosen complete blocks, then the own block, the
-- largest) go to i32 lists [Hq, n, topk] (-1 padded) that
-- sl.mask.from_blocks reads. The same selection (tested against the
-- whole-table form, which stays as estimate_table).
local ROW_BUDGET = 1 << 20
local function estimate(prob, p, rows_per)
  local hq, nq = prob.q:shape()[1], prob.q:shape()[2]
  local nk = prob.k:shape()[2]
  local B = p.block
  local nkb = (nk + B - 1) // B
  local args = {bq = 1, bk = B, causal = 0, pool = 0, scale = 1, backend = prob.backend}
  local L = math.min(p.topk, nkb)
  local lists = {}
  for h = 1, hq do lists[h] = {} end
  local per = rows_per or math.max(1, ROW_BUDGET // math.max(1, hq * nkb))
  for r0 = 0, nq - 1, per do
    local m = math.min(per, nq - r0)
    local q = (r0 == 0 and m == nq) and prob.q or prob.q:narrow(2, r0 + 1, m)
    local S = E.heads(sl.score.pooled(q, prob.k, args))
    for h = 1, hq do
      local Sh, Lh = S[h], lists[h]
      for i = 1, m do
        local t = r0 + i
        local pos = nk - nq + t - 1
        local own = pos // B + 1 -- 1-based block of the query
        local chosen = {}
        if p.topk > 1 and own > 1 then
          local order = E.order_desc(Sh[i], own - 1)
          for x = 1, math.min(p.topk - 1, own - 1) do chosen[x] = order[x] end
          table.sort(chosen)
        end
        local row = {}
        for x, c in ipairs(chosen) do row[x] = c - 1 end
        row[#row + 1] = own - 1
        for x = #row + 1, L do row[x] = -1 end
        Lh[t] = row
      end
    end
  end
  return sl.mask.from_blocks(sl.tensor(lists, "i32"), {n_q = nq, n_k = nk, bq = 1, bk = B, causal = true}),
    {estimator_flops = sl.op_flops("score.pooled", prob.q, prob.k, args)}
end

-- The whole-table form (before issue 19's session 4), for the test only.
local function estimate_table(prob, p)
  local hq, nq = prob.q:shape()[1], prob.q:shape()[2]
  local nk = prob.k:shape()[2]
  local B = p.block
  local nkb = (nk + B - 1) // B
  local args = {bq = 1, bk = B, causal = 0, pool = 0, scale = 1, backend = prob.backend}
  local S = E.heads(sl.score.pooled(prob.q, prob.k, args))
  local keep = E.zeros(hq, nq, nkb)
  for h = 1, hq do
    local Sh, Kh = S[h], keep[h]
    for t = 1, nq do
      local pos = nk - nq + t - 1
      local own = pos // B + 1 -- 1-based block of the query
      local row, x = Kh[t], Sh[t]
      row[own] = 1
      if p.topk > 1 and own > 1 then
        local order = E.order_desc(x, own - 1)
        for i = 1, math.min(p.topk - 1, own - 1) do row[order[i]] = 1 end
      end
    end
  end
  return E.mask_from_keep(keep, prob, 1, B, true),
    {estimator_flops = sl.op_flops("score.pooled", prob.q, prob.k, args)}
end

local run_blocks = E.block_run(estimate)

return {
  id = "moba",
  card = "moba",
  title = "MoBA: Mixture of Block Attention for Long-Context LLMs",
  family = "trainable",
  phase = "prefill",
  causal_only = true,
  summary = "Parameter-free top-k gating over mean-pooled key blocks, own block always kept; exact attention over the union.",
  knob = "topk",
  params = {
    block = {default = 512, min = 1, max = 1 << 20, int = true, doc = "keys per block (moba_chunk_size)"},
    topk = {default = 3, min = 1, int = true, doc = "blocks per query, the own block included (moba_topk)"},
  },
  ops = {"score.pooled", "attn.block_sparse"},
  checks = {"own block always selected, no future key attended", "topk >= #blocks equals dense",
    "independent float64 MoBA to 1e-5", "score-blind gate loses recall"},
  params_sources = {"parameter-free"},
  fit_why = "MoBA has no learned part of its own (parameter-free gate; training only changes the projections)",
  mask = function(prob, p) return (estimate(prob, p)) end,
  estimate = estimate,
  estimate_table = estimate_table,
  run = function(prob, p)
    local out = run_blocks(prob, p)
    p.params_source = "parameter-free"
    out.params_source = "parameter-free"
    return out
  end,
}
