-- SpargeAttn: Accurate Sparse Attention Accelerating Any Model Inference
-- — card: sparge_attn.
-- Card steps implemented:
--   1. block pooling: mean-pooled query blocks (bq) and key blocks (bk), the
--      last block averaged over its valid rows (score.pooled, mean);
--   2. self-similarity: sim = mean over all token pairs of a block of
--      cos(x_a, x_b), diagonal included = |mean of the L2-normalised tokens|²
--      (pool.tokens normalize=1); a block is self-similar iff sim > θ_h;
--      non-similar query blocks get their whole causal row, non-similar key
--      blocks their whole causal column, and are left out of the pooled
--      softmax (score -inf);
--   3. P̂ = row softmax of q̄·k̄/sqrt(d) over the block-causal key blocks
--      (c < (r+1)·bq/bk, i.e. blocks holding a key at or before the block's
--      last row);
--   4. selection per row: sort descending, keep the first N blocks with N =
--      the number of prefix sums <= τ_h (searchsorted right), at least 1;
--      τ >= 1 keeps every block. `topk` > 0 is the reference's top-k API
--      instead: the first max(1, floor(topk · visible blocks)) blocks
--      (topk_all = true: floor(topk · all key blocks), the reference's count);
--      Final map = selected ∪ forced ∩ causal; attention_sink forces key
--      block 0;
--   5. stage 2 (paper default): the online PV skip of attn.block_sparse with
--      pv_skip = λ·ln 2 (λ in log2 units as in the card): a kept key block
--      whose max score is more than λ below the running max leaves out its
--      P·V and row-sum update. stage2 = 0 is the reference code's default
--      (λ = 50, in effect off) — nothing skipped;
--   calibration (`calibrate`): per head, a grid over θ, for each a bisection
--   of τ to meet relative L1 error < l1 (0.07), keeping the sparsest, then a
--   bisection of λ in [0, 50] for L1 < pv_l1 (0.08); written as a config.
-- NOT implemented: the Sage INT8 QK / FP8 PV quantisation (the executor is
-- f32; quantisation is orthogonal to the mask) and therefore K smoothing
-- (step 0 only matters for the quantised K; the estimate uses the original
-- K); the skip's per-warp granularity (our executor decides per row, which
-- skips at least as much as a warp of rows would).
-- Unknowns chosen: no config → the card's fallback θ = 0.6, τ = 0.98 for every
-- head and λ = 16 for stage 2 (the paper tunes λ per head; 16 treats
-- probabilities below 2^-16 as zero); with a config its per-head θ, τ, λ are
-- used (the knob then no longer applies); per-head λ runs as one executor
-- pass with the smallest λ of the heads (the most conservative skip);
-- bq = 128, bk = 64 (the sm80/89 block sizes).
-- Reference read (issue 20, session 5): thu-ml/SpargeAttn spas_sage_attn/utils.py
--   (get_block_map_meansim, get_block_map_meansim_fuse_quant,
--   triton_bmm_pool_sim_simmean, fill_block_map_triton, fill_causal_mask_triton).
--   Matched: pooled means over the valid rows (sum / BS_), sim = sum of the
--   normalised tokens' Gram matrix / BS_² > simthreshd1, non-similar key
--   blocks -inf in the pooled scores (scale d^-1/2) and forced, non-similar
--   query blocks forced, block causality k < (q + 1)·BLKQ/BLKK, softmax, sort,
--   searchsorted(cdf, τ, right) with 0 -> 1, attention_sink.
--   Divergences: (a) topk — the reference selects int(topk · K) with K = ALL
--   key blocks (then the causal mask), i.e. min(candidates, max(1,
--   int(topk·K))) per row; the default counts the visible blocks, max(1,
--   floor(topk · visible)); named option topk_all = true is the reference's
--   count (the same on non-causal problems). No option for the rest: (b) a
--   ragged last block: its masked rows load as 0, their norm is 0 and x / |x|
--   is NaN, so the Gram sum is NaN and the block is never self-similar
--   there (its whole row / column forced); here its similarity is computed over
--   its valid rows; (c) the normalised tokens are fp16 in the Gram product;
--   (d) torch.sort's tie order. get_block_map_meansim's own defaults
--   (simthreshd1 0.1, cdfthreshd 0.9) differ from the card's fallback used
--   here (θ 0.6, τ 0.98).
local sl = require "sparselab"
local recipe = require "sparselab.recipe"
local E = require "sparselab.blockest"

local LN2 = math.log(2)

local function sims(t, h, n)
  -- t: pooled normalised vectors as a table [H][nb][d]; |mean|² per block
  local out = {}
  local rows = t[h]
  for b = 1, n do
    local s = 0
    for _, x in ipairs(rows[b]) do s = s + x * x end
    out[b] = s
  end
  return out
end

-- The u8 keep [H, nqb, nkb] of keep[h][r] (a row is `ones`, shared by the
-- forced rows, or a 0/1 table). Few zeros (most rows forced, the usual case):
-- an all-ones tensor made in C (select.threshold of zeros at t = 0) with the
-- zeros written one by one; many: the nested-table conversion (sl.tensor), as
-- before. The same tensor either way.
local function keep_tensor(keep, ones, hq, nqb, nkb, be)
  local writes = 0
  for h = 1, hq do
    for _, row in ipairs(keep[h]) do
      if row ~= ones then
        for c = 1, nkb do if row[c] == 0 then writes = writes + 1 end end
      end
    end
  end
  if writes * 8 > hq * nqb * nkb then return sl.tensor(keep, "u8") end
  local z <close> = sl.zeros({hq, nqb, nkb})
  local t = sl.select.threshold(z, {t = 0, backend = be})
  for h = 1, hq do
    for r, row in ipairs(keep[h]) do
      if row ~= ones then
        for c = 1, nkb do if row[c] == 0 then t:set(h, r, c, 0) end end
      end
    end
  end
  return t
end

-- Both paths' probe: the normalised pooled q and k blocks, the pooled
-- logits (per head, E.heads) and the estimate's FLOPs.
local function probe(prob, p)
  local bq, bk = p.bq, p.bk
  local hq, hkv = prob.q:shape()[1], prob.k:shape()[1]
  local g = hq // hkv
  local nqb, nkb = E.blocks(prob, bq, bk)
  local cfg = E.config(p, "sparge_attn")
  local be = prob.backend
  local pq_args = {block = bq, normalize = 1, backend = be}
  local pk_args = {block = bk, normalize = 1, backend = be}
  local qn = E.heads(sl.pool.tokens(prob.q, pq_args))
  local kn = E.heads(sl.pool.tokens(prob.k, pk_args))
  local sc_args = {bq = bq, bk = bk, causal = prob.causal and 1 or 0, pool = 0, softmax = 0, backend = be}
  local logits = E.heads(sl.score.pooled(prob.q, prob.k, sc_args))
  local est_flops = sl.op_flops("pool.tokens", prob.q, pq_args) + sl.op_flops("pool.tokens", prob.k, pk_args) +
    sl.op_flops("score.pooled", prob.q, prob.k, sc_args)
  return {bq = bq, bk = bk, hq = hq, hkv = hkv, g = g, nqb = nqb, nkb = nkb, cfg = cfg, qn = qn, kn = kn,
    logits = logits, est_flops = est_flops, be = be}
end

-- The Lua selection of sessions 1-5 (per-row Lua tables, a comparator sort,
-- the keep table converted whole), kept as the oracle of
-- tests/lua/test_estimators_c.lua only (M.estimate(prob, p, {lua_select = true})).
local function estimate_lua(prob, p)
  local P = probe(prob, p)
  local bq, bk, hq, hkv, g, nqb, nkb = P.bq, P.bk, P.hq, P.hkv, P.g, P.nqb, P.nkb
  local cfg, qn, kn, logits, est_flops = P.cfg, P.qn, P.kn, P.logits, P.est_flops
  local keep = E.zeros(hq, nqb, nkb)
  local ksim = {}
  for kh = 1, hkv do ksim[kh] = sims(kn, kh, nkb) end
  local forced, lam = 0, math.huge
  for h = 1, hq do
    local theta = E.per_head(cfg, "theta", h, p.simthreshd1)
    local tau = E.per_head(cfg, "tau", h, p.cdfthreshd)
    lam = math.min(lam, E.per_head(cfg, "lambda", h, p.pv_threshold))
    local qsim = sims(qn, h, nqb)
    local ks = ksim[(h - 1) // g + 1]
    for r = 1, nqb do
      local vis = E.visible(prob, r - 1, bq, bk, nkb)
      local row, lrow = keep[h][r], logits[h][r]
      if not (qsim[r] > theta) then
        for c = 1, vis do row[c] = 1 end
        forced = forced + 1
      else
        local x, n_sim = {}, 0
        for c = 1, vis do
          if ks[c] > theta then x[c] = lrow[c]; n_sim = n_sim + 1 else x[c] = -math.huge; row[c] = 1 end
        end
        if n_sim > 0 then
          E.softmax(x, vis)
          local order = E.order_desc(x, vis)
          local n
          if p.topk > 0 then
            n = math.max(1, math.floor(p.topk * (p.topk_all and nkb or vis)))
          elseif tau >= 1 then
            n = vis
          else
            n = 0
            local cdf = 0
            for i = 1, vis do
              cdf = cdf + x[order[i]]
              if cdf <= tau then n = i else break end
            end
            n = math.max(1, n)
          end
          for i = 1, math.min(n, n_sim) do row[order[i]] = 1 end
        end
        if p.attention_sink ~= 0 and vis > 0 then row[1] = 1 end
      end
    end
  end
  local m = E.mask_from_keep(keep, prob, bq, bk)
  local pv = 0
  if p.stage2 ~= 0 and lam < 50 then pv = lam * LN2 end
  return m, {estimator_flops = est_flops, pv_skip = pv,
    stats = {forced_rows = forced, pv_skip = pv}}
end

local function estimate(prob, p, opts)
  if opts and opts.lua_select then return estimate_lua(prob, p) end
  local P = probe(prob, p)
  local bq, bk, hq, hkv, g, nqb, nkb = P.bq, P.bk, P.hq, P.hkv, P.g, P.nqb, P.nkb
  local cfg, qn, kn, logits, est_flops = P.cfg, P.qn, P.kn, P.logits, P.est_flops
  local be = P.be
  -- keep[h][r]: a forced row (query block not self-similar) shares one
  -- all-ones row (mask.from_blocks' causal rule clears what the row does not
  -- see, the same blocks the old per-row fill up to `vis` left out); the
  -- other rows get their own zero row. The pooled logits are read into Lua
  -- only for a head with a non-forced row.
  local ones = {}
  for c = 1, nkb do ones[c] = 1 end
  local keep = {}
  local ksim = {}
  for kh = 1, hkv do ksim[kh] = sims(kn, kh, nkb) end
  local forced, lam = 0, math.huge
  for h = 1, hq do
    local theta = E.per_head(cfg, "theta", h, p.simthreshd1)
    local tau = E.per_head(cfg, "tau", h, p.cdfthreshd)
    lam = math.min(lam, E.per_head(cfg, "lambda", h, p.pv_threshold))
    local qsim = sims(qn, h, nqb)
    local ks = ksim[(h - 1) // g + 1]
    local krows = {}
    keep[h] = krows
    for r = 1, nqb do
      local vis = E.visible(prob, r - 1, bq, bk, nkb)
      if not (qsim[r] > theta) then
        krows[r] = ones
        forced = forced + 1
      else
        local row, lrow = {}, logits[h][r]
        for c = 1, nkb do row[c] = 0 end
        krows[r] = row
        local x, n_sim = {}, 0
        for c = 1, vis do
          if ks[c] > theta then x[c] = lrow[c]; n_sim = n_sim + 1 else x[c] = -math.huge; row[c] = 1 end
        end
        if n_sim > 0 then
          E.softmax(x, vis)
          local n
          if p.topk > 0 then
            n = math.max(1, math.floor(p.topk * (p.topk_all and nkb or vis)))
          elseif tau >= 1 then
            n = vis
          end
          -- the masses sorted ascending by table.sort's own numeric
          -- comparison (no Lua comparator per pair): the cdf walks them from
          -- the largest, the same values in the same order as the order by
          -- value (equal values give equal sums whatever their indices), and
          -- E.mark_largest keeps the first cnt of that order, ties to the
          -- lower index
          local sv = table.move(x, 1, vis, 1, {})
          table.sort(sv)
          if not n then
            n = 0
            local cdf = 0
            for i = 1, vis do
              cdf = cdf + sv[vis - i + 1]
              if cdf <= tau then n = i else break end
            end
            n = math.max(1, n)
          end
          E.mark_largest(row, x, vis, sv, math.min(n, n_sim))
        end
        if p.attention_sink ~= 0 and vis > 0 then row[1] = 1 end
      end
    end
  end
  local kt <close> = keep_tensor(keep, ones, hq, nqb, nkb, be)
  local m = sl.mask.from_blocks(kt, {n_q = prob.q:shape()[2], n_k = prob.k:shape()[2], bq = bq, bk = bk,
    causal = prob.causal})
  local pv = 0
  if p.stage2 ~= 0 and lam < 50 then pv = lam * LN2 end
  return m, {estimator_flops = est_flops, pv_skip = pv,
    stats = {forced_rows = forced, pv_skip = pv}}
end

local M = {
  id = "sparge_attn",
  card = "sparge_attn",
  title = "SpargeAttn: Accurate Sparse Attention Accelerating Any Model Inference",
  family = "block-estimate",
  phase = "prefill",
  summary = "Self-similarity-gated mean-pooled block softmax, cdf selection; online PV skip (stage 2).",
  knob = "cdfthreshd",
  knob_direction = 1,
  params = {
    bq = {default = 128, min = 1, max = 4096, int = true, doc = "query rows per block"},
    bk = {default = 64, min = 1, max = 4096, int = true, doc = "keys per block"},
    cdfthreshd = {default = 0.98, min = 0, max = 1, doc = "τ: pooled-softmax mass each row keeps (cdf rule)"},
    simthreshd1 = {default = 0.6, min = -1, max = 1, doc = "θ: blocks with mean cosine self-similarity <= θ are forced"},
    topk = {default = 0, min = 0, max = 1, doc = "reference top-k API: fraction of visible blocks per row (0 = cdf rule)"},
    topk_all = {default = false, doc = "topk counts all key blocks, int(topk·K) then the causal mask (get_block_map_meansim)"},
    stage2 = {default = 1, min = 0, max = 1, int = true, doc = "1: online PV skip (paper); 0: reference default (off)"},
    pv_threshold = {default = 16, min = 0, max = 50, doc = "λ (log2 units) of the PV skip when no config gives one"},
    attention_sink = {default = 0, min = 0, max = 1, int = true, doc = "1: always keep key block 0"},
    config = {default = "", doc = "calibration JSON (per-head theta, tau, lambda) from calibrate()"},
  },
  ops = {"pool.tokens", "score.pooled", "attn.block_sparse"},
  checks = {"tau = 1 and theta = -1 with stage2 off equals dense", "theta = 1 forces every block (dense)",
    "non-similar rows and columns are kept", "at least one block per row", "pv skip never drops a row's max block"},
  mask = function(prob, p) return (estimate(prob, p)) end,
  estimate = estimate, -- (prob, p [, {lua_select = true}]): mask, info; the option runs the former Lua path
  run = E.block_run(estimate),
}

--- Offline calibration (card: autotune): problems is a list of sl.problem
--- tables; opts = {l1 = 0.07, pv_l1 = 0.08, thetas = {...}, steps = 8,
--- params = {...}}. Returns {theta = {per head}, tau = {...}, lambda = {...}}
--- (sl.calibrate("sparge_attn", {problems =, out = path}) writes it; pass
--- the path as the `config` param).
function M.calibrate(problems, opts)
  opts = opts or {}
  local l1, pv_l1, steps = opts.l1 or 0.07, opts.pv_l1 or 0.08, opts.steps or 8
  local thetas = opts.thetas or {-1, -0.5, 0, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9}
  local base = sl.registry.resolve(M, opts.params or {})
  local hq = problems[1].q:shape()[1]
  -- per-head relative L1 of o against dense, worst over the problems
  local function head_errors(params)
    local worst = {}
    for h = 1, hq do worst[h] = 0 end
    for _, prob in ipairs(problems) do
      prob.causal = prob.causal ~= false
      local out = M.run(prob, params)
      local od = sl.attn.dense(prob.q, prob.k, prob.v, {causal = prob.causal and 1 or 0, backend = prob.backend})
      local a, b = E.heads(out.o), E.heads(od)
      for h = 1, hq do
        local num, den = 0, 0
        for i, row in ipairs(b[h]) do
          local ar = a[h][i]
          for c, x in ipairs(row) do num = num + math.abs(ar[c] - x); den = den + math.abs(x) end
        end
        local e = num / math.max(den, 1e-30)
        if e > worst[h] then worst[h] = e end
      end
    end
    return worst
  end
  local function head_density(params)
    local dens, n = {}, 0
    for h = 1, hq do dens[h] = 0 end
    for _, prob in ipairs(problems) do
      local m = M.mask(prob, params)
      n = n + 1
      local hm = m:info().n_heads
      for h = 1, hq do dens[h] = dens[h] + m:kept(((h - 1) * hm) // hq + 1) end
    end
    return dens
  end
  local best = {theta = {}, tau = {}, lambda = {}}
  local best_d = {}
  for h = 1, hq do best_d[h] = math.huge; best.theta[h] = 1; best.tau[h] = 1; best.lambda[h] = 50 end
  local function with(tab)
    local q = {}
    for k, v in pairs(base) do q[k] = v end
    for k, v in pairs(tab) do q[k] = v end
    return q
  end
  for _, th in ipairs(thetas) do
    -- bisection of τ per head: all heads move together, each keeps its own bracket
    local lo, hi = {}, {}
    local th_list, l50 = {}, {}
    for h = 1, hq do lo[h], hi[h] = 0, 1; th_list[h] = th; l50[h] = 50 end
    for _ = 1, steps do
      local taus = {}
      for h = 1, hq do taus[h] = (lo[h] + hi[h]) / 2 end
      local err = head_errors(with{config_table = {theta = th_list, tau = taus, lambda = l50}, stage2 = 0})
      for h = 1, hq do if err[h] < l1 then hi[h] = taus[h] else lo[h] = taus[h] end end
    end
    local dens = head_density(with{config_table = {theta = th_list, tau = hi, lambda = l50}, stage2 = 0})
    for h = 1, hq do
      if dens[h] < best_d[h] then best_d[h] = dens[h]; best.theta[h] = th; best.tau[h] = hi[h] end
    end
  end
  -- λ: bisection per head on [0, 50] for L1 < pv_l1 with the chosen θ, τ
  local lo, hi = {}, {}
  for h = 1, hq do lo[h], hi[h] = 0, 50 end
  for _ = 1, steps do
    local lam = {}
    for h = 1, hq do lam[h] = (lo[h] + hi[h]) / 2 end
    local err = head_errors(with{config_table = {theta = best.theta, tau = best.tau, lambda = lam}, stage2 = 1})
    -- a larger λ skips less; keep the smallest λ that still meets the bound
    for h = 1, hq do if err[h] < pv_l1 then hi[h] = lam[h] else lo[h] = lam[h] end end
  end
  best.lambda = hi
  return best
end

return M
