-- Token Sparse Attention (Jo et al. 2025; dongwonjo/Token-Sparse-Attention) —
-- card: token_sparse_attention.
-- Card steps implemented (one layer's problem; the profiled choice of sparse
-- layers is the caller's: run it on the layers it applies to):
--   0. applies only when coverage > 0 and n > m_min + W (else: dense, identity);
--   1. importance per head of each prefix key j < n - W: the mean over the
--      last W queries of their softmax probabilities over ALL keys
--      (score.last_q);
--   2. smoothing: average pooling, kernel ks, stride 1, zero "same" padding
--      (divided by ks, PyTorch's avg_pool1d default count_include_pad);
--   3. budget: g = the head-mean importance; g and each head's importance
--      normalised to sum 1; sorted ascending, D = #{cumsum < coverage} + 1
--      (the reference's +1), none when that count is 0;
--      B = max(m_min, (n - W) - D), the same for every head;
--   4. per head the top-B prefix keys by its importance (ties: the earlier),
--      plus the W window positions, sorted;
--   5-7. queries AND keys gathered at those positions (gather.rows), dense
--      causal attention on the compressed sequence (attn.dense), outputs
--      scattered back; a dropped position's output is 0 for that head (L =
--      -inf: its residual passes unchanged, recall counts it as lost).
-- Estimator cost (issue 20, sessions 4-5): steps 1-4 after the probe are one
--   C op, select.token_budget (float64, the Lua path's arithmetic operation
--   for operation; the budget's count and each head's cut by quickselect,
--   linear in n). The Lua paths stay as the oracles of
--   tests/lua/test_estimators_c.lua: select(prob, p, blind, {lua_top =
--   true}) (session 4: sums by reduce.columns64, smoothing, normalisation
--   and two number sorts in Lua) and {lua_sums = true} (all in Lua).
-- Not here: composing with another sparse kernel on the compressed sequence
--   (step 6's option), the per-layer profiling.
-- Reference: dongwonjo/Token-Sparse-Attention sparse_attn/token_sparse/
--   sparse_cluster.py (SparseCluster.get_index, compress_qkv,
--   decompress_output), kernel.py (_prefix_meanprob_kernel) per the card;
--   read in issue 20, session 5 (sparse_cluster.py SparseCluster.get_index,
--   kernel.py _stats_m_l_kernel / _prefix_meanprob_kernel /
--   triton_get_attn_cache). Matched: dense when q_len <= min_tokens + W or
--   coverage = 0; the last W queries' softmax over all keys (causal inside
--   the window only), mean over the W rows, for the prefix keys; avg_pool1d
--   (ks, padding ks // 2, stride 1, zero padding counted); head mean; both
--   normalised by their sums; ascending sort, count of cumsum < coverage, none
--   -> dense, else + 1; B = max(min_tokens, (n - W) - D); per-head top-B plus
--   the window, sorted. Divergences: (a) the reference returns the importance
--   in the model dtype (out_dtype = query dtype, bf16) before pooling, and
--   divides by (sum + 1e-8); float64 here; (b) torch.topk's tie order (here the
--   earlier key); (c) D is computed over the batch with .item() (batch 1 here).
--   Defaults: coverage 0.005, m_min 1024, W 128, ks 7.
local sl = require "sparselab"
local E = require "sparselab.blockest"
local D = require "sparselab.dynamic"

local ID = "token_sparse_attention"

-- per head sorted 0-based kept positions, or nil for the identity
local function select(prob, p, blind, opts)
  local n = D.check_prefill(ID, prob)
  local hq, W = prob.q:shape()[1], math.min(p.window, n)
  if p.coverage <= 0 or n <= p.m_min + W then return nil, 0 end
  local args = {last = W, causal = 1, backend = prob.backend}
  -- [hq, W, n]: read per head in blocks of rows (a head's W × n table passes
  -- totable's limit at W·n >= 1e6, and memory stays O(n · rows))
  local probs = sl.score.last_q(prob.q, prob.k, args)
  local rows = math.max(1, 65536 // n)
  local est = sl.op_flops("score.last_q", prob.q, prob.k, args)
  local npre = n - W
  if not (opts and (opts.lua_sums or opts.lua_top)) then
    -- steps 1-4 in one C op (issue 20, session 5): the same float64 arithmetic as the Lua path below, the
    -- budget's count and each head's cut by quickselect (linear in n: the Lua path's two number sorts of n
    -- entries made the estimate grow faster than its FLOPs)
    local tb = {ks = p.ks, coverage = p.coverage, m_min = p.m_min, backend = prob.backend}
    local idx, info = sl.select.token_budget(probs, tb)
    est = est + sl.op_flops("select.token_budget", probs, tb)
    local count, B = table.unpack(info:totable())
    if count == 0 or B >= npre then return nil, est end
    local out = {}
    local lists = not blind and E.heads(idx:narrow(2, 1, B + W)) or nil
    for h = 1, hq do
      if blind then  -- score-blind: the first B keys
        local kept = {}
        for t = 1, B do kept[t] = t - 1 end
        for j = npre, n - 1 do kept[#kept + 1] = j end
        out[h] = kept
      else
        out[h] = lists[h]
      end
    end
    return out, est
  end
  -- the Lua paths (tests only): opts.lua_top = session 4's (sums in C, the rest in Lua), opts.lua_sums = the
  -- path before it (sums in Lua too)
  local imp, g = {}, {}
  for j = 1, npre do g[j] = 0 end
  local half = p.ks // 2
  -- the column sums over the W rows: reduce.columns64 (float64 in row
  -- order, the sums the old Lua loop formed; issue 20, session 4) or, with
  -- opts.lua_sums, that loop reading the map in blocks of rows (tests only)
  local sums = not (opts and opts.lua_sums) and E.heads(sl.reduce.columns64(probs, {backend = prob.backend})) or nil
  for h = 1, hq do
    local raw
    if sums then
      raw = sums[h]
    else
      local ph = probs:narrow(1, h, 1)
      raw = {}
      for j = 1, npre do raw[j] = 0 end
      for t0 = 1, W, rows do
        local P = ph:narrow(2, t0, math.min(rows, W - t0 + 1)):totable()[1]
        for t = 1, #P do
          local Pt = P[t]
          for j = 1, npre do raw[j] = raw[j] + Pt[j] end
        end
      end
    end
    for j = 1, npre do raw[j] = raw[j] / W end
    local sm, tot = {}, 0
    for j = 1, npre do
      local s = 0
      for x = j - half, j + half do if x >= 1 and x <= npre then s = s + raw[x] end end
      sm[j] = s / p.ks
      tot = tot + sm[j]
    end
    for j = 1, npre do
      sm[j] = tot > 0 and sm[j] / tot or 0
      g[j] = g[j] + sm[j] / hq
    end
    imp[h] = sm
  end
  local gt = 0
  for j = 1, npre do gt = gt + g[j] end
  local gs = {}
  for j = 1, npre do gs[j] = gt > 0 and g[j] / gt or 0 end
  table.sort(gs)
  local cum, count = 0, 0
  for j = 1, npre do
    cum = cum + gs[j]
    if cum < p.coverage then count = count + 1 else break end
  end
  if count == 0 then return nil, est end
  local drop = count + 1
  local B = math.max(p.m_min, npre - drop)
  if B >= npre then return nil, est end
  local out = {}
  for h = 1, hq do
    local x = imp[h]
    if blind then x = {}; for j = 1, npre do x[j] = -j end end  -- score-blind: the first B keys
    local kept = {}
    if opts and opts.lua_sums then
      -- the old path: a full comparator sort, then the kept positions sorted
      local order = E.order_desc(x, npre)
      for t = 1, B do kept[t] = order[t] - 1 end
      for j = npre, n - 1 do kept[#kept + 1] = j end
      table.sort(kept)
    else
      -- the same set without the comparator sorts: the top B by value (ties:
      -- the earlier) are all but the npre - B smallest, ties dropped from the
      -- later end; v = the (npre - B)-th smallest value (a plain number sort)
      local D = npre - B
      local vals = table.move(x, 1, npre, 1, {})
      table.sort(vals)
      local v, drop = vals[D], {}
      local need = D
      for j = 1, npre do if x[j] < v then drop[j] = true; need = need - 1 end end
      for j = npre, 1, -1 do
        if need == 0 then break end
        if x[j] == v then drop[j] = true; need = need - 1 end
      end
      for j = 1, npre do if not drop[j] then kept[#kept + 1] = j - 1 end end
      for j = npre, n - 1 do kept[#kept + 1] = j end
    end
    out[h] = kept
  end
  return out, est
end

local function execute(prob, idx)
  local hq, n, d = prob.q:shape()[1], prob.q:shape()[2], prob.q:shape()[3]
  local it = sl.tensor(idx, "i32")
  local be = {backend = prob.backend}
  local gq, gk, gv = sl.gather.rows(prob.q, it, be), sl.gather.rows(prob.k, it, be), sl.gather.rows(prob.v, it, be)
  local args = {causal = 1, backend = prob.backend}
  local oc, lc = sl.attn.dense(gq, gk, gv, args)
  local flops = sl.op_flops("attn.dense", gq, gk, gv, args)
  -- O: the gathered rows' outputs put back by gather.rows over an inverse
  -- index (position i of head h reads its row of oc, or an appended zero
  -- row when i was dropped): tensors throughout, O(n . d) bytes, no Lua rows.
  local m = #idx[1]
  local oc_pad = sl.cat({oc, sl.zeros({hq, 1, d})}, 2)
  local inv, L = {}, {}
  local LC = lc:totable()
  for h = 1, hq do
    local r, ls = {}, {}
    for i = 1, n do r[i], ls[i] = m, -math.huge end
    for t, j in ipairs(idx[h]) do r[j + 1], ls[j + 1] = t - 1, LC[h][t] end
    inv[h], L[h] = r, ls
  end
  local O = sl.gather.rows(oc_pad, sl.tensor(inv, "i32"), be)
  return O, sl.tensor(L), flops
end

local function run(prob, p, blind)
  local t0 = sl.time()
  local idx, est = select(prob, p, blind)
  local t1 = sl.time()
  local o, lse, flops, kept_pairs
  local hq = prob.q:shape()[1]
  if not idx then
    local args = {causal = 1, backend = prob.backend}
    o, lse = sl.attn.dense(prob.q, prob.k, prob.v, args)
    flops = sl.op_flops("attn.dense", prob.q, prob.k, prob.v, args)
    kept_pairs = E.pairs(prob)
  else
    o, lse, flops = execute(prob, idx)
    local m = #idx[1]
    kept_pairs = hq * m * (m + 1) / 2
  end
  local t2 = sl.time()
  return {o = o, lse = lse, index = idx, stats = {flops = flops, estimator_flops = est,
    density = kept_pairs / E.pairs(prob), kept_tokens = idx and #idx[1] or prob.q:shape()[2],
    estimate_ms = (t1 - t0) * 1e3, execute_ms = (t2 - t1) * 1e3}}
end

return {
  id = ID,
  card = ID,
  title = "Token Sparse Attention: compressing queries and keys per head by importance",
  family = "token-estimate",
  phase = "prefill",
  causal_only = true,
  summary = "Importance of prefix tokens from the last W queries' attention; drop the least important up to a coverage of mass, run dense attention on the kept tokens per head, scatter back.",
  knob = "coverage",
  knob_direction = -1,
  params = {
    coverage = {default = 0.005, min = 0, max = 1, doc = "c: mass of the head-mean importance that may be dropped"},
    m_min = {default = 1024, min = 0, int = true, doc = "floor of kept prefix tokens (and: n <= m_min + W stays dense)"},
    window = {default = 128, min = 1, int = true, doc = "W: observation window (always kept)"},
    ks = {default = 7, min = 1, int = true, doc = "smoothing kernel (average pooling)"},
  },
  ops = {"score.last_q", "select.token_budget", "reduce.columns64", "gather.rows", "attn.dense"},
  checks = {"coverage 0 or n <= m_min + W is the identity", "kept rows equal dense attention over the kept set",
    "dropped positions output 0, window always kept", "B identical across heads", "score-blind importance loses recall"},
  select = select,
  run_with = run,
  run = function(prob, p) return run(prob, p, false) end,
}
