-- FlexPrefill: A Context-Aware Sparse Attention Mechanism for Efficient
-- Long-Sequence Inference — card: flexprefill.
-- Card steps implemented:
--   (dense when n <= max(2·bs, ceil(min_budget/bs)·bs));
--   1. last-block probe: exact softmax of the last bs queries, causal corner
--      masked (score.last_q);
--   2. vertical profile v[j] = mean over the probe rows, slash profile s[o] =
--      diagonal sums / bs (reduce.columns, reduce.diagonals);
--   3. coverage budgets: with c = the number of entries of sorted v whose
--      cumulative sum is <= γ (the covering prefix is c + 1 entries), the
--      default keeps n_v = ceil((c + 1) / div) blocks = c // div + 1, the
--      same for s, clamped to [ceil(min_budget / bs), max_budget // bs]
--      (select.topp gives the covering prefix);
--   4. per head: D = sqrt(JSD(avg_qk, v_blk)) with avg_qk the softmax of the
--      mean probe query against block-mean keys (score.pooled on the probe
--      rows) and v_blk the block sums of v; D < τ: query-aware, else
--      vertical-slash;
--   5. vertical-slash heads: block sums of v and s; column block 0 and
--      offset block 0 forced (counted inside n_v, n_s as the reference's
--      +inf); top n_v column blocks -> (r, c) for r >= c, top n_s offset
--      blocks -> (r, r - o);
--   6. query-aware heads: the VS blocks at the minimum budget, plus the
--      block estimate Â = row softmax of q̄_r·k̄_c/sqrt(d) (score.pooled, mean
--      over the valid rows of a ragged block = the reference's bs/valid
--      rescale), flattened over all rows: by default the paper's smallest
--      set of blocks whose mass reaches γ · n_qb (the blocks while the
--      cumulative mass <= γ · n_qb, plus the one that crosses it);
--   7. executor attn.block_sparse, token causal inside diagonal tiles.
-- Default = the paper's rule: budget divisor = the block size, covering
-- sets include the crossing entry. Option fixed_div = true: the reference's
-- hard-coded // 128 only.
-- Option reference = true: bytedance/FlexPrefill exactly
-- (flex_prefill/ops/flex_prefill_attention.py, get_active_blocks with
-- score_cover_topk and score_cover_idx): n_v = score_cover_topk(v, γ) // 128
-- + 1 where score_cover_topk = c + 1 already, i.e. (c + 1) // 128 + 1 (the
-- default's c // div + 1 is one block fewer whenever c + 1 is a multiple of
-- 128), max budget ceil(max_budget / bs) (the default floors it);
-- query-aware heads keep only the blocks whose running sum stays within
-- γ · n_qb (score_cover_idx: one block fewer than the default per head);
-- slash profile pooled as the reference pools it (diagonal t = n-1-o in
-- blocks t // bs counted from the far end; the same as the default when
-- bs divides n). Divergences left: torch.topk's order among exactly equal
-- scores (here lower index first), float32 cumulative sums in the reference
-- (float64 here), a NaN JSD (a zero block) that the reference never calls
-- query-aware.
-- Estimator cost (issue 20, session 5): the slash profile's pooling per offset block is one C op
-- (reduce.segments64, float64 sums in offset order: the same sums as the old Lua loop, kept behind
-- opts.lua_pool as the oracle of tests/lua/test_estimators_c.lua); select.cover and select.topp sort by
-- a radix sort in C (linear in the entries; same order as their qsort).
-- Not implemented: gqa_interleave (heads are grouped consecutively: query
-- head h reads KV head h / (Hq/Hkv)); batch > 1 (a Lua loop).
-- Unknowns chosen: min_budget 512 tokens (README), max_budget none (0);
-- JSD in natural log, so D ∈ [0, sqrt(ln 2)]; ties lower index first.
local sl = require "sparselab"
local D = require "sparselab.dynamic"
local E = require "sparselab.blockest"

local ID = "flexprefill"

-- Kept count of a u8 keep row tensor (entries 0 / 1) per head: the sum of the head's entries, taken in C
-- (t:stats(); issue 20 session 5: the lists of n columns read into Lua cost 2 x 64K loop steps at n = 65536)
local function counts(keep)
  local out = {}
  for h = 1, keep:shape()[1] do out[h] = math.tointeger(keep:narrow(1, h, 1):stats()) end
  return out
end

-- Per head: 1 + the number of entries of the row (divided by `div`), sorted descending, whose running sum
-- is <= limit (score_cover_topk of the reference).
local function cover_counts(x, div, limit)
  local out = {}
  for h, row in ipairs(x:totable()) do
    local v = {}
    for i = 1, #row do v[i] = row[i] / div end
    -- descending order read from an ascending sort without a comparator (equal values add alike, so the
    -- running sums are those of the descending sort; issue 20, session 3: the comparator sort was most of
    -- the reference option's estimate)
    table.sort(v)
    local cum, c = 0, 0
    for i = #v, 1, -1 do
      cum = cum + v[i]
      if cum <= limit then c = c + 1 end
    end
    out[h] = c + 1
  end
  return out
end

local function jsd_sqrt(p, q)
  local sp, sq = 0, 0
  for i = 1, #p do sp, sq = sp + p[i], sq + q[i] end
  local js = 0
  for i = 1, #p do
    local a, b = p[i] / sp, q[i] / sq
    local m = (a + b) / 2
    if a > 0 then js = js + 0.5 * a * math.log(a / m) end
    if b > 0 then js = js + 0.5 * b * math.log(b / m) end
  end
  return math.sqrt(math.max(js, 0))
end

-- Indices (1-based) of the k largest of x[1..n] outside `skip`, larger first, lower index first on ties.
local function top(x, n, k, skip)
  local idx = {}
  for i = 1, n do if not skip[i] then idx[#idx + 1] = i end end
  table.sort(idx, function(a, b)
    if x[a] ~= x[b] then return x[a] > x[b] end
    return a < b
  end)
  local out = {}
  for t = 1, math.min(k, #idx) do out[t] = idx[t] end
  return out
end

-- The causal block triangle as a u8 keep tensor [hq, nqb, nqb].
local function dense_keep(hq, nqb)
  local keep = sl.zeros({hq, nqb, nqb}, "u8")
  for h = 1, hq do
    for r = 1, nqb do
      for c = 1, r do keep:set(h, r, c, 1) end
    end
  end
  return keep
end

-- opts.lua_cover: the query-aware cover in Lua (the path before select.cover; tests compare both);
-- opts.lua_pool: the slash profile pooled in Lua (the path before reduce.segments64; tests compare both)
local function estimate(prob, p, opts)
  local lua_cover = opts and opts.lua_cover
  local n = D.check_prefill(ID, prob)
  local hq, d = prob.q:shape()[1], prob.q:shape()[3]
  local bs = p.block
  local nb = (n + bs - 1) // bs
  local mk = function(keep)
    return sl.mask.from_blocks(keep, {n_q = n, n_k = n, bq = bs, bk = bs, causal = true})
  end
  if n <= math.max(2 * bs, ((p.min_budget + bs - 1) // bs) * bs) then
    return {mask = mk(dense_keep(hq, nb)), flops = 0, extra = {dense_fallback = 1}}
  end
  local be = prob.backend
  local pa = {last = bs, backend = be}
  local probs = sl.score.last_q(prob.q, prob.k, pa)
  local flops = sl.op_flops("score.last_q", prob.q, prob.k, pa) + 3 * probs:numel()
  local vcol, sdiag = sl.reduce.columns(probs), sl.reduce.diagonals(probs)
  local vblk_t = sl.reduce.block(probs, {br = bs, bc = bs, mode = 0})      -- [H, 1, nb] block sums of colsums
  probs:close()
  -- coverage counts: topp keeps the shortest prefix reaching γ; the entries with cumsum <= γ are one fewer
  local div = (p.fixed_div or p.reference) and 128 or bs
  local nv_tok, ns_tok
  if p.reference then
    -- score_cover_topk: (entries of the sorted profile with cumsum <= γ) + 1, the profiles being means over the
    -- bs probe rows (column / diagonal sums divided by bs)
    nv_tok, ns_tok = cover_counts(vcol, bs, p.gamma), cover_counts(sdiag, bs, p.gamma)
  else
    nv_tok, ns_tok = counts(sl.select.topp(vcol, {p = p.gamma})), counts(sl.select.topp(sdiag, {p = p.gamma}))
  end
  local min_b = (p.min_budget + bs - 1) // bs
  local max_b = p.max_budget > 0 and (p.max_budget // bs) or nb
  if p.reference and p.max_budget > 0 then max_b = math.min((p.max_budget + bs - 1) // bs, nb) end
  -- pattern decision
  local q_last = prob.q:narrow(2, n - bs + 1, bs)
  local pp = {bq = bs, bk = bs, softmax = true, causal = true, backend = be}
  local avg = sl.score.pooled(q_last, prob.k, pp)
  flops = flops + sl.op_flops("score.pooled", q_last, prob.k, pp)
  local need_qa = false
  local heads = {}
  -- the slash profile pooled per offset block: reduce.segments64 (float64 sums in offset order, the sums the
  -- Lua loop below formed; issue 20, session 5), or with opts.lua_pool (tests only) that loop over n offsets
  local sbt = not (opts and opts.lua_pool) and
    E.heads(sl.reduce.segments64(sdiag, {size = bs, from_end = p.reference and 1 or 0, backend = be})) or nil
  for h = 1, hq do
    local a = avg:narrow(1, h, 1):totable()[1][1]
    local vb = vblk_t:narrow(1, h, 1):totable()[1][1]
    local dist = jsd_sqrt(a, vb)
    local qa = dist < p.tau
    need_qa = need_qa or qa
    local sb
    if sbt then
      sb = sbt[h]
    else
      local sd = sdiag:narrow(1, h, 1):totable()[1]
      sb = {}
      for ob = 1, nb do sb[ob] = 0 end
      if p.reference then
        -- sum_all_diagonal_matrix puts offset o at t = n-1-o; torch_bhn_sumpool pools t // bs; offset block nb-1 - t // bs
        for o = 1, n do local ob = nb - (n - o) // bs; sb[ob] = sb[ob] + sd[o] end
      else
        for o = 1, n do local ob = (o - 1) // bs + 1; sb[ob] = sb[ob] + sd[o] end
      end
    end
    local nv, ns
    if p.reference then
      nv, ns = nv_tok[h] // div + 1, ns_tok[h] // div + 1
    else
      nv, ns = math.max(0, nv_tok[h] - 1) // div + 1, math.max(0, ns_tok[h] - 1) // div + 1
    end
    if qa then nv, ns = min_b, min_b end
    nv, ns = math.min(math.max(nv, min_b), max_b), math.min(math.max(ns, min_b), max_b)
    heads[h] = {qa = qa, dist = dist, vb = vb, sb = sb, nv = nv, ns = ns, cover_v = nv_tok[h], cover_s = ns_tok[h]}
  end
  local blocks
  if need_qa then
    local bp = {bq = bs, bk = bs, softmax = true, causal = true, backend = be}
    blocks = sl.score.pooled(prob.q, prob.k, bp)
    flops = flops + sl.op_flops("score.pooled", prob.q, prob.k, bp)
  end
  -- the keep tensor [hq, nb, nb] is written entry by entry (only the kept blocks: a Lua table of nb² entries
  -- per head made the estimate grow faster than its FLOPs at n = 65536; issue 19, session 3)
  local keep, n_qa, qa_on = sl.zeros({hq, nb, nb}, "u8"), 0, {}
  for h = 1, hq do qa_on[h] = 0 end
  for h = 1, hq do
    local H = heads[h]
    -- vertical-slash blocks (forced column block 0 and offset block 0 inside the budget)
    local cols = top(H.vb, nb, H.nv - 1, {[1] = true})
    cols[#cols + 1] = 1
    local offs = top(H.sb, nb, H.ns - 1, {[1] = true})
    offs[#offs + 1] = 1
    for _, c in ipairs(cols) do for r = c, nb do keep:set(h, r, c, 1) end end
    for _, o in ipairs(offs) do for r = o, nb do keep:set(h, r, r - o + 1, 1) end end
    if H.qa and not lua_cover then
      -- the cover rule of the Lua path below in C (select.cover over the head's block triangle after the loop,
      -- issue 20 session 3c): same order, same float64 running sum, so the same blocks; joined to keep inside the op
      n_qa = n_qa + 1
      qa_on[h] = 1
    elseif H.qa then
      n_qa = n_qa + 1
      local A = blocks:narrow(1, h, 1):totable()[1]
      -- the visible blocks (c <= r) by mass descending, ties row-major first: cnt = the entries whose running
      -- sum stays <= γ · n_qb. Equal values add equal amounts whatever their order, so cnt comes from the
      -- values sorted alone (table.sort without a comparator); the blocks are then the first cnt (+ 1) of the
      -- tie-broken order, which select.topk gives (larger first, lower flat index r·nb + c first) over the
      -- visible blocks (the others -inf). A comparator sort of {value, r, c} triples took 80 % of the
      -- estimate at n = 65536 (issue 20, session 3; tests/lua/test_estimators_f64.lua compares both).
      local vals, flat = {}, {}
      for r = 1, nb do
        local row = A[r]
        for c = 1, nb do
          if c <= r then vals[#vals + 1] = row[c]; flat[#flat + 1] = row[c] else flat[#flat + 1] = -math.huge end
        end
      end
      table.sort(vals)
      local limit, cum, cnt = p.gamma * nb, 0, 0
      for t = #vals, 1, -1 do
        cum = cum + vals[t]
        if cum > limit then break end
        cnt = cnt + 1
      end
      -- the paper's covering set includes the crossing block; score_cover_idx (reference) stops before it
      local take = math.min(p.reference and cnt or cnt + 1, #vals)
      if take > 0 then
        local sel = sl.select.topk(sl.tensor({flat}, "f32"), {k = take, backend = be})
        for _, f in ipairs(D.lists(sel)[1]) do keep:set(h, f // nb + 1, f % nb + 1, 1) end
        sel:close()
      end
    end
  end
  flops = flops + nb * nb * hq
  -- detail: the per-head intermediates (sqrt-JSD, decision, block profiles, coverage counts in entries, block
  -- budgets), for tests that recompute them (tests/lua/test_estimators_f64.lua)
  if not lua_cover and n_qa > 0 then
    -- one call for every head: opt.heads leaves the vertical-slash heads out of the cover, opt.base joins the
    -- VS blocks written above (a mask union of two block masks cost 2 × 30 ms at n = 65536)
    local joined = sl.select.cover(blocks, {heads = sl.tensor(qa_on, "u8"), base = keep, limit = p.gamma * nb,
      extra = p.reference and 0 or 1, causal = true, backend = be})
    keep:close()
    keep = joined
  end
  return {mask = mk(keep), flops = flops, extra = {query_aware_heads = n_qa}, detail = heads}
end

return {
  id = ID,
  card = ID,
  title = "FlexPrefill: A Context-Aware Sparse Attention Mechanism for Efficient Long-Sequence Inference",
  family = "block-estimate",
  phase = "prefill",
  causal_only = true,
  summary = "Per head: a last-block probe decides between query-aware block selection (pooled estimate, " ..
    "cumulative coverage γ) and vertical-slash blocks with coverage budgets.",
  knob = "gamma",
  knob_direction = 1,
  params = {
    gamma = {default = 0.9, min = 0, max = 1, doc = "γ: coverage of the attention mass"},
    tau = {default = 0.1, min = 0, max = 1, doc = "τ: sqrt-JSD threshold below which a head is query-aware"},
    block = {default = 128, min = 1, max = 4096, int = true, doc = "block size of the estimate and the executor"},
    min_budget = {default = 512, min = 0, int = true, doc = "minimum budget in tokens (rounded up to blocks)"},
    max_budget = {default = 0, min = 0, int = true, doc = "maximum budget in tokens (0: none)"},
    fixed_div = {default = false, doc = "true: the reference's budget divisor 128 whatever the block size"},
    reference = {default = false, doc = "true: bytedance/FlexPrefill get_active_blocks exactly (counts " ..
      "score_cover_topk // 128 + 1, query-aware blocks by score_cover_idx, its slash pooling; see the header)"},
  },
  ops = {"score.last_q", "reduce.columns", "reduce.diagonals", "reduce.block", "reduce.segments64", "select.topp",
    "score.pooled", "select.cover", "attn.block_sparse"},
  checks = {"γ -> 1 with τ = 0 and max budget equals dense", "column block 0 and diagonal in every row",
    "τ = 0 all VS, τ = 1 all QA", "recall monotone in γ"},
  mask = function(prob, p) return estimate(prob, p).mask end,
  estimate = estimate,
  run = D.runner(estimate),
}
