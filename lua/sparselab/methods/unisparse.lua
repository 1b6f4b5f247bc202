-- A Unified Sparse Attention via Multi-Granularity Compression — card:
-- unisparse.
-- Card steps implemented:
--   1. sequence-level compression into composite tokens: every c_q
--      consecutive queries and every c_k consecutive keys averaged
--      (score.pooled at bq = c_q, bk = c_k, mean), so a block of S tokens is
--      S/c_q composite queries and S/c_k composite keys;
--   2. attention among composite tokens: row softmax of the composite scores
--      (scale 1/sqrt(d)) over the causally visible composite keys
--      (score.pooled softmax = 1);
--   3. block-level selection: the composite probabilities aggregated per
--      (query block, key block) — agg = 0 sum (default), 1 max
--      (reduce.block) — then per row the smallest set of blocks holding a
--      fraction tau of the row's aggregated mass (cdf / top-p rule), the
--      diagonal block always kept (the key block holding the block's last
--      row's own position, also on non-causal problems);
--   4. executor attn.block_sparse.
-- NOT implemented: further granularity levels (across heads or block
-- scales; the card could not verify them).
-- Unknowns chosen (card: c_q, c_k, S, threshold and the aggregation are not
-- known): S = 64, c_q = c_k = 16, tau = 0.9, sum aggregation, top-p selection
-- per head, the diagonal block forced (every block row keeps its own block,
-- as the block-sparse prefill methods it compares with).
local sl = require "sparselab"
local E = require "sparselab.blockest"

-- Memory linear in n (issue 19): the composite map [Hq, n/c_q, n/c_k] and
-- Lua tables of the block map and keep were n²; now score.pooled and
-- reduce.block run on row blocks of query blocks (~SCORE_BUDGET composite
-- scores each: q rows [r0·bq, r1·bq) against keys 0 .. the block's last
-- position when causal, the same composite softmax), and the keep is a u8
-- tensor written in place. with_blocks (tests): also the aggregated block
-- map as Lua tables [H][nqb][nkb] (0 past a row's visible blocks); per
-- (tests): query blocks per call.
local SCORE_BUDGET = 1 << 22
local function estimate(prob, p, with_blocks, per)
  if p.bq % p.c_q ~= 0 or p.bk % p.c_k ~= 0 then
    sl.fail("unisparse: bq %d must be a multiple of c_q %d and bk %d of c_k %d", p.bq, p.c_q, p.bk, p.c_k)
  end
  local hq = prob.q:shape()[1]
  local nq, nk = prob.q:shape()[2], prob.k:shape()[2]
  local nqb, nkb = E.blocks(prob, p.bq, p.bk)
  local be = prob.backend
  local sargs = {bq = p.c_q, bk = p.c_k, causal = prob.causal and 1 or 0, pool = 0, softmax = 1, backend = be}
  local rargs = {br = p.bq // p.c_q, bc = p.bk // p.c_k, mode = p.agg, backend = be}
  local nck = (nk + p.c_k - 1) // p.c_k
  -- reduce.block counts one operation per composite score
  local est_flops = sl.op_flops("score.pooled", prob.q, prob.k, sargs) + hq * ((nq + p.c_q - 1) // p.c_q) * nck
  local keep = sl.zeros({hq, nqb, nkb}, "u8")
  local blocks
  if with_blocks then blocks = {}; for h = 1, hq do blocks[h] = {} end end
  per = per or math.max(1, SCORE_BUDGET // math.max(1, hq * (p.bq // p.c_q) * nck))
  for r0 = 0, nqb - 1, per do
    local r1 = math.min(nqb, r0 + per)
    local q, k = prob.q, prob.k
    if r0 > 0 or r1 < nqb then
      local i0, i1 = r0 * p.bq, math.min(nq, r1 * p.bq)
      q = prob.q:narrow(2, i0 + 1, i1 - i0)
      if prob.causal then k = prob.k:narrow(2, 1, math.min(nk, i1 + nk - nq)) end
    end
    local x = E.heads(sl.reduce.block(sl.score.pooled(q, k, sargs), rargs))
    for h = 1, hq do
      for rr = 1, r1 - r0 do
        local r = r0 + rr
        local vis = E.visible(prob, r - 1, p.bq, p.bk, nkb)
        local xr = x[h][rr]
        local total = 0
        for c = 1, vis do total = total + xr[c] end
        local order = E.order_desc(xr, vis)
        local before = 0
        for i = 1, vis do
          if p.tau < 1 and before >= p.tau * total then break end
          keep:set(h, r, order[i], 1)
          before = before + xr[order[i]]
        end
        -- the diagonal block: the key block of the block's last row's own position (= the last visible
        -- block when causal; on a non-causal problem the last key block is not the diagonal)
        local diag = math.min(nkb, (math.min(r * p.bq, nq) - 1 + nk - nq) // p.bk + 1)
        if vis > 0 then keep:set(h, r, math.min(diag, vis), 1) end
        if blocks then
          local row = {}
          for c = 1, nkb do row[c] = xr[c] or 0 end
          blocks[h][r] = row
        end
      end
    end
  end
  local m = sl.mask.from_blocks(keep, {n_q = nq, n_k = nk, bq = p.bq, bk = p.bk, causal = prob.causal})
  -- third value: the aggregated block scores (tests/lua/test_estimators_f64.lua recomputes them)
  return m, {estimator_flops = est_flops}, blocks and {blocks = blocks} or nil
end

return {
  id = "unisparse",
  card = "unisparse",
  title = "A Unified Sparse Attention via Multi-Granularity Compression",
  family = "block-estimate",
  phase = "prefill",
  summary = "Composite tokens (c_q / c_k averages) inside each block, composite softmax aggregated per block, top-p.",
  knob = "tau",
  knob_direction = 1,
  params = {
    bq = {default = 64, min = 1, max = 4096, int = true, doc = "block size S of the queries"},
    bk = {default = 64, min = 1, max = 4096, int = true, doc = "block size S of the keys"},
    c_q = {default = 16, min = 1, max = 4096, int = true, doc = "queries per composite token"},
    c_k = {default = 16, min = 1, max = 4096, int = true, doc = "keys per composite token"},
    tau = {default = 0.9, min = 0, max = 1, doc = "fraction of each row's aggregated mass kept"},
    agg = {default = 0, min = 0, max = 1, int = true, doc = "0 sum, 1 max of the composite probabilities per block"},
  },
  ops = {"score.pooled", "reduce.block", "attn.block_sparse"},
  checks = {"c = 1 and tau = 1 equals dense", "c = S reduces to one mean per block", "diagonal always kept"},
  mask = function(prob, p) return (estimate(prob, p)) end,
  --- mask and intermediates ({blocks = [H][nqb][nkb] aggregated composite probabilities}) for tests
  intermediates = function(prob, p, per)
    local m, _, d = estimate(prob, p, true, per)
    return m, d
  end,
  run = E.block_run(estimate),
}
