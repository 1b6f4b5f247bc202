-- sparselab.moe — dense FFN -> MoE conversion in the model runner (issue 17;
-- card moe_split_route, part A with SPT's unit weighting of part C), through
-- the runner's site hooks: the FFN's hidden neurons are split into E
-- disjoint experts, a router picks the top-k experts per token, and the
-- neurons of the other experts contribute nothing (their hidden units are
-- zeroed before the down projection, which is what a routed grouped-GEMM
-- executor computes; the runner's own product stays dense on the zeroed
-- units and the FLOPs the routed executor runs are counted in stats).
--
--   E.build(m, calib, o) -> moe {experts = {[layer] = {{neuron, ...}, ...}},
--     router = {[layer] = tensor [E, dim]}, E =, k =, weights =, scale =}
--     o.experts = E (4), o.k = experts per token (2),
--     o.split  = "importance" (default) | "sequential" | "random"
--     o.router = "cluster" (default: k-means centroids of the FFN inputs,
--                LLaMA-MoE v2's hidden clustering) | "random" (random
--                calibration vectors, the card's other option; with a
--                sequential split: the score-blind baseline)
--     o.weights = "unit" (SPT: no router weighting; default) | "softmax"
--                (p = softmax of the top-k logits . scale, Mixtral-style)
--     o.scale = 1, o.seed = 1, o.iters = 20 (k-means)
--     o.impl = "op" (default: k-means and the gating run as the ops
--              cluster.kmeans and cluster.route on o.backend, default cpu)
--              | "lua" (the same loops in Lua; same results)
--   E.hook(m, moe, stats) -> site hook for m.c:forward(ids, st, nil, hook);
--     stats gets units (hidden units seen) and kept (units computed).
--   E.route(logits_rows, k) -> {[row] = {expert ids (1-based), ...}} top-k
--     by select.topk (ties: the lower expert id).
--   E.use(m, moe [, backend]) -> puts the MoE into the model runner (session 4):
--     every layer's FFN runs as the router (mm.dense, top-k in C, ties lower
--     id) and ONE mm.moe call, the grouped-GEMM executor (pairs sorted by
--     expert, rows gathered per expert, sgemm per expert block, weighted
--     scatter back); the dense w1, w3, w2 products are skipped. E.off(m)
--     removes it; E.stats(m [, reset]) = model:moe_stats (seconds, pairs,
--     units, executed flops, dense_flops, load per expert).
--   E.nll(m, seqs, moe [, o]) runs through E.use (o.exec = "hook": the
--     site-hook path of sessions 2-3, which zeroes the unrouted units and
--     keeps the dense products; same numbers within 1e-5).
--
-- Split "importance": tokens of the calibration texts are assigned to
-- their top-1 cluster; neuron j's importance for cluster e is the mean
-- |h_j| (h = silu(gate) . up) over the cluster's tokens; experts take
-- neurons in turn, each the most important remaining one for its cluster
-- (a partition; sizes differ by at most one). This replaces LLaMA-MoE v2's
-- gradient importance (split_gradient_v2.py, not read here) by activation
-- magnitude: no gradients in this workbench.
-- Not done: the attention-MoE (part B), SPT's sigmoid block router, the
-- align post-training, a shared residual expert.
local sl = require "sparselab"

local E = {}

local function lcg(seed)
  local s = 0x2545F491 + seed * 7919
  return function(n) s = (s * 1103515245 + 12345) % 2147483648; return s % n + 1 end
end

-- FFN inputs (normed, ffn_in) and hidden units per layer over the calibration sequences
local function collect(m, calib)
  local xs, hs = {}, {}
  for l = 0, m.cfg.n_layers - 1 do xs[l], hs[l] = {}, {} end
  for _, ids in ipairs(calib) do
    local st <close> = m.c:state(#ids)
    m.c:forward(ids, st, nil, function(layer, site, x)
      local dst = site == "ffn_in" and xs[layer] or site == "ffn_hidden" and hs[layer] or nil
      if dst then for _, row in ipairs(x:totable()) do dst[#dst + 1] = row end end
      return nil
    end)
  end
  return xs, hs
end

local function dist2(a, b)
  local s = 0
  for i = 1, #a do local d = a[i] - b[i]; s = s + d * d end
  return s
end

local function kmeans(rows, k, iters, rng)
  local c = {}
  local used = {}
  while #c < k do
    local i = rng(#rows)
    if not used[i] then used[i] = true; c[#c + 1] = {table.unpack(rows[i])} end
  end
  for _ = 1, iters do
    local sum, cnt = {}, {}
    for e = 1, k do sum[e], cnt[e] = {}, 0; for j = 1, #rows[1] do sum[e][j] = 0 end end
    for _, r in ipairs(rows) do
      local best, bd = 1, math.huge
      for e = 1, k do local d = dist2(r, c[e]); if d < bd then best, bd = e, d end end
      cnt[best] = cnt[best] + 1
      for j = 1, #r do sum[best][j] = sum[best][j] + r[j] end
    end
    for e = 1, k do
      if cnt[e] > 0 then for j = 1, #sum[e] do c[e][j] = sum[e][j] / cnt[e] end end
    end
  end
  return c
end

-- the same rounds through the cluster.kmeans op (issue 17, session 3): the
-- same init draws, the Lloyd loop in C / CUDA; returns the centroids tensor
local function kmeans_op(rows, k, iters, rng, backend)
  local init, used = {}, {}
  while #init < k do
    local i = rng(#rows)
    if not used[i] then used[i] = true; init[#init + 1] = rows[i] end
  end
  return (sl.cluster.kmeans(sl.tensor(rows, "f32"), sl.tensor(init, "f32"), {iters = iters, backend = backend}))
end
E.kmeans_lua = function(rows, k, iters, seed) return kmeans(rows, k, iters, lcg(seed)) end
E.kmeans_op = function(rows, k, iters, seed, backend) return kmeans_op(rows, k, iters, lcg(seed), backend) end

--- Top-k experts per row of router logits (select.topk; ties: lower id).
function E.route(rows, k)
  local keep = sl.select.topk(sl.tensor(rows, "f32"), {k = k}):totable()
  local out = {}
  for i, row in ipairs(keep) do
    out[i] = {}
    for e, flag in ipairs(row) do if flag ~= 0 then out[i][#out[i] + 1] = e end end
  end
  return out
end

function E.build(m, calib, o)
  o = o or {}
  local nE, k = o.experts or 4, o.k or 2
  local hidden = m.cfg.hidden_dim
  if nE < 1 or nE > hidden then sl.fail("moe: experts must be in [1, %d], found %s", hidden, tostring(nE)) end
  if k < 0 or k > nE then sl.fail("moe: k must be in [0, experts = %d], found %s", nE, tostring(k)) end
  local split, router = o.split or "importance", o.router or "cluster"
  if split ~= "importance" and split ~= "sequential" and split ~= "random" then
    sl.fail("moe: split must be importance, sequential or random, found %s", tostring(split))
  end
  if router ~= "cluster" and router ~= "random" then
    sl.fail("moe: router must be cluster or random, found %s", tostring(router))
  end
  local rng = lcg(o.seed or 1)
  local xs, hs = collect(m, calib)
  local moe = {experts = {}, router = {}, E = nE, k = k, weights = o.weights or "unit", scale = o.scale or 1,
    expert_of = {}, impl = o.impl or "op", backend = o.backend}
  for l = 0, m.cfg.n_layers - 1 do
    local cent
    if router == "cluster" then
      if moe.impl == "lua" then cent = kmeans(xs[l], nE, o.iters or 20, rng)
      else cent = kmeans_op(xs[l], nE, o.iters or 20, rng, o.backend) end
    else
      cent = {}
      for e = 1, nE do cent[e] = {table.unpack(xs[l][rng(#xs[l])])} end
    end
    moe.router[l] = type(cent) == "table" and sl.tensor(cent) or cent
    local experts = {}
    for e = 1, nE do experts[e] = {} end
    if split == "sequential" then
      for j = 1, hidden do experts[(j - 1) * nE // hidden + 1][#experts[(j - 1) * nE // hidden + 1] + 1] = j end
    elseif split == "random" then
      local perm = {}
      for j = 1, hidden do perm[j] = j end
      for j = hidden, 2, -1 do local r = rng(j); perm[j], perm[r] = perm[r], perm[j] end
      for i, j in ipairs(perm) do local e = (i - 1) * nE // hidden + 1; experts[e][#experts[e] + 1] = j end
    else
      local top1 = E.route(sl.mm.dense(sl.tensor(xs[l]), moe.router[l]):totable(), 1)
      local imp, cnt = {}, {}
      for e = 1, nE do imp[e], cnt[e] = {}, 0; for j = 1, hidden do imp[e][j] = 0 end end
      for t, h in ipairs(hs[l]) do
        local e = top1[t][1]
        cnt[e] = cnt[e] + 1
        for j = 1, hidden do imp[e][j] = imp[e][j] + math.abs(h[j]) end
      end
      local order = {}
      for e = 1, nE do
        order[e] = {}
        for j = 1, hidden do order[e][j] = j end
        local s = imp[e]
        table.sort(order[e], function(a, b) if s[a] ~= s[b] then return s[a] > s[b] end return a < b end)
      end
      local taken, pos, left, e = {}, {}, hidden, 1
      for i = 1, nE do pos[i] = 1 end
      while left > 0 do
        while taken[order[e][pos[e]]] do pos[e] = pos[e] + 1 end
        local j = order[e][pos[e]]
        taken[j] = true
        experts[e][#experts[e] + 1] = j
        left = left - 1
        e = e % nE + 1
      end
      for i = 1, nE do table.sort(experts[i]) end
    end
    moe.experts[l] = experts
    local of = {}
    for e, units in ipairs(experts) do for _, j in ipairs(units) do of[j] = e - 1 end end
    moe.expert_of[l] = sl.tensor(of, "i32")
  end
  return moe
end

function E.hook(m, moe, stats)
  local routes, probs = {}, {}
  return function(layer, site, x)
    local op = moe.impl ~= "lua" and moe.k > 0
    if site == "ffn_in" and op then
      -- the gating runs as the cluster.route op at ffn_hidden; routes only for the stats
      local lt = sl.mm.dense(x, moe.router[layer])
      routes[layer] = lt
      if stats then probs[layer] = E.route(lt:totable(), moe.k) end
      return nil
    elseif site == "ffn_hidden" and op then
      local y = sl.cluster.route(x, routes[layer], moe.expert_of[layer],
        {k = moe.k, softmax = moe.weights == "softmax", scale = moe.scale, backend = moe.backend})
      if stats then
        local experts, kept = moe.experts[layer], 0
        for _, r in ipairs(probs[layer]) do for _, e in ipairs(r) do kept = kept + #experts[e] end end
        stats.units = (stats.units or 0) + x:shape()[1] * m.cfg.hidden_dim
        stats.kept = (stats.kept or 0) + kept
      end
      return y
    elseif site == "ffn_in" then
      local logits = sl.mm.dense(x, moe.router[layer]):totable()
      routes[layer] = E.route(logits, moe.k)
      if moe.weights == "softmax" then
        probs[layer] = {}
        for i, row in ipairs(logits) do
          local mx = -math.huge
          for _, e in ipairs(routes[layer][i]) do mx = math.max(mx, row[e]) end
          local z, p = 0, {}
          for _, e in ipairs(routes[layer][i]) do p[e] = math.exp(row[e] - mx); z = z + p[e] end
          for e, v in pairs(p) do p[e] = v / z end
          probs[layer][i] = p
        end
      end
      return nil
    elseif site == "ffn_hidden" then
      local rows = x:totable()
      local experts, kept = moe.experts[layer], 0
      for i, row in ipairs(rows) do
        local w = {}
        for _, e in ipairs(routes[layer][i]) do
          local f = moe.weights == "softmax" and probs[layer][i][e] * moe.scale or moe.scale
          for _, j in ipairs(experts[e]) do w[j] = f end
        end
        for j = 1, #row do
          if w[j] then row[j] = row[j] * w[j]; kept = kept + 1 else row[j] = 0 end
        end
      end
      if stats then
        stats.units = (stats.units or 0) + #rows * m.cfg.hidden_dim
        stats.kept = (stats.kept or 0) + kept
      end
      return sl.tensor(rows)
    end
    return nil
  end
end

--- The MoE into the model runner: every layer's FFN through the grouped executor mm.moe.
function E.use(m, moe, backend)
  if moe.k < 1 then sl.fail("moe: the grouped executor needs k >= 1, found %s", tostring(moe.k)) end
  m.c:moe_on(moe.E, moe.k, moe.weights == "softmax", moe.scale, backend or moe.backend or "cpu")
  for l = 0, m.cfg.n_layers - 1 do m.c:moe_layer(l, moe.router[l], moe.expert_of[l]) end
end

function E.off(m) m.c:moe_off() end

function E.stats(m, reset) return m.c:moe_stats(reset) end

--- Mean next-token NLL over seqs with the MoE, and the kept share of FFN units
--- (o.exec = "grouped" (default, the runner's mm.moe) | "hook"; o.attention: attention hook).
function E.nll(m, seqs, moe, o)
  o = o or {}
  local grouped = (o.exec or "grouped") == "grouped" and moe.k > 0
  local total, count, stats = 0, 0, {}
  if grouped then E.use(m, moe, o.backend) end
  local ok, err = pcall(function()
    for _, ids in ipairs(seqs) do
      local st <close> = m.c:state(#ids)
      local logits = m.c:forward(ids, st, o.attention, not grouped and E.hook(m, moe, stats) or nil)
      local c = sl.model_c.compare(logits, logits, ids)
      total, count = total + c.nll * c.n, count + c.n
    end
  end)
  local share, gs
  if grouped then
    gs = E.stats(m)
    share = gs.units / (gs.rows * m.cfg.hidden_dim)
    E.off(m)
  end
  if not ok then error(err, 0) end
  return total / count, share or (stats.units and stats.kept / stats.units or 0), gs
end

return E
