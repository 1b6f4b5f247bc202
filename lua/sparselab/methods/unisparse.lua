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

local function estimate(prob, p)
  if p.bq % p.c_q ~= 0 or p.bk % p.c_k ~= 0 then
    sl.fail("unisparse: bq %d must be a multiple of c_q %d and bk %d of c_k %d", p.bq, p.c_q, p.bk, p.c_k)
  end
  local hq = prob.q:shape()[1]
  local nqb, nkb = E.blocks(prob, p.bq, p.bk)
  local be = prob.backend
  local sargs = {bq = p.c_q, bk = p.c_k, causal = prob.causal and 1 or 0, pool = 0, softmax = 1, backend = be}
  local comp = sl.score.pooled(prob.q, prob.k, sargs)
  local rargs = {br = p.bq // p.c_q, bc = p.bk // p.c_k, mode = p.agg, backend = be}
  local blk = sl.reduce.block(comp, rargs)
  local est_flops = sl.op_flops("score.pooled", prob.q, prob.k, sargs) + sl.op_flops("reduce.block", comp, rargs)
  local x = E.heads(blk)
  local keep = E.zeros(hq, nqb, nkb)
  for h = 1, hq do
    for r = 1, nqb do
      local vis = E.visible(prob, r - 1, p.bq, p.bk, nkb)
      local row, xr = keep[h][r], x[h][r]
      local total = 0
      for c = 1, vis do total = total + xr[c] end
      local order = E.order_desc(xr, vis)
      local before = 0
      for i = 1, vis do
        if p.tau < 1 and before >= p.tau * total then break end
        row[order[i]] = 1
        before = before + xr[order[i]]
      end
      -- the diagonal block: the key block of the block's last row's own position (= the last visible
      -- block when causal; on a non-causal problem the last key block is not the diagonal)
      local nq, nk = prob.q:shape()[2], prob.k:shape()[2]
      local diag = math.min(nkb, (math.min(r * p.bq, nq) - 1 + nk - nq) // p.bk + 1)
      if vis > 0 then row[math.min(diag, vis)] = 1 end
    end
  end
  -- third value: the aggregated block scores (tests/lua/test_estimators_f64.lua recomputes them)
  return E.mask_from_keep(keep, prob, p.bq, p.bk), {estimator_flops = est_flops}, {blocks = x}
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
  intermediates = function(prob, p)
    local m, _, d = estimate(prob, p)
    return m, d
  end,
  run = E.block_run(estimate),
}
