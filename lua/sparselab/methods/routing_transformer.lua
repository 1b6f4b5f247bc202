-- Efficient Content-Based Sparse Attention with Routing Transformers —
-- card: routing_transformer.
-- Card steps implemented:
--   1. queries and keys normalised to the unit sphere (pool.tokens with
--      block 1, normalize; the paper's scale-free layer norm is not applied);
--   2. centroids mu [Hq, C, D] per query head: from a weights file, fitted
--      here by spherical k-means (`sparselab fit-params routing_transformer`),
--      or a stand-in (below); the paper's online EMA update (lambda 0.999)
--      and commitment loss are training-time and not run;
--   3. balanced routing: per cluster c the top-w queries by q̂·mu_c and the top-w
--      keys by k̂·mu_c (ties: lower position) — lucidrains distribution():
--      topk along the sequence (score.pooled of the centroids against the
--      tokens, select.topk per cluster row); a token may be in several
--      clusters or none;
--   4. attention within each cluster with the causal mask on original
--      positions, a query's output the mean over the clusters holding it
--      (trainable.routing); a query in no cluster, or whose clusters hold no
--      earlier key, gets 0 (the reference's learned memory key/value that
--      avoids empty rows is not implemented).
-- Reference: lucidrains/routing-transformer routing_transformer.py (Kmeans:
-- buffer `means` [heads, clusters, head_dim], kmeans_iter: spherical means,
-- empty clusters keep their mean; distribution(): top window_size per cluster;
-- KmeansAttention: causal mask, mem kv). The official google-research code not read.
-- Parameters from a file (param `weights`): kmeans.means [Hq, C, D] (float;
-- C >= 1), the reference's buffer name; C is then the file's.
-- Stand-in without weights (params_source "standin:random_centroids"):
-- C = `clusters` unit centroids drawn from N(0, 1) with `seed` (content-blind
-- centroids, the untrained module's torch.randn). centroids = "self" instead
-- runs spherical k-means on the evaluated input's own q̂ and k̂ (params_source
-- "self-kmeans": a transductive fit, reads no attention map).
-- Fitting: spherical k-means (Lloyd, 10 iterations, k-means++-free init from
-- `--seed`-chosen tokens) over the fitting inputs' q̂ (query head h) and k̂ (its
-- kv head): closed form, no gradient; the test checks the k-means fixed
-- point (every centroid the normalised mean of its members).
-- Knob: w (members per cluster); clusters default round(sqrt(n)) (paper).
-- NOT implemented: the local-attention heads the paper mixes in, the EMA
-- training, the memory key/value, decode.
local sl = require "sparselab"
local T = require "sparselab.trainable"
local E = require "sparselab.blockest"

local dims = T.dims

local function unit(x)
  local s = 0
  for i = 1, #x do s = s + x[i] * x[i] end
  s = math.sqrt(s)
  local o = {}
  for i = 1, #x do o[i] = s > 0 and x[i] / s or 0 end
  return o
end

local function normalized(t) return sl.pool.tokens(t, {block = 1, normalize = 1}) end

-- Spherical k-means of a list of unit vectors into C centroids (Lloyd).
local function kmeans(xs, C, d, seed, iters)
  local r = sl.rand({C}, {seed = seed}):totable()
  local mu, used = {}, {}
  for c = 1, C do
    local i = math.floor(r[c] * #xs) + 1
    while used[i] do i = i % #xs + 1 end
    used[i] = true
    mu[c] = {table.unpack(xs[i])}
  end
  for _ = 1, iters do
    local sum, cnt = {}, {}
    for c = 1, C do sum[c] = {}; cnt[c] = 0; for e = 1, d do sum[c][e] = 0 end end
    for _, x in ipairs(xs) do
      local best, bv = 1, -math.huge
      for c = 1, C do
        local s = 0
        for e = 1, d do s = s + x[e] * mu[c][e] end
        if s > bv then best, bv = c, s end
      end
      cnt[best] = cnt[best] + 1
      for e = 1, d do sum[best][e] = sum[best][e] + x[e] end
    end
    for c = 1, C do if cnt[c] > 0 then mu[c] = unit(sum[c]) end end
  end
  return mu
end
local M = {}
M.kmeans = kmeans

-- The unit q̂ of head h and k̂ of its kv head, as lists of vectors.
local function vectors(prob, into)
  local hq, _, _, hkv = dims(prob)
  local Q, K = E.heads(normalized(prob.q)), E.heads(normalized(prob.k))
  for h = 1, hq do
    into[h] = into[h] or {}
    for _, x in ipairs(Q[h]) do into[h][#into[h] + 1] = x end
    for _, x in ipairs(K[(h - 1) // (hq // hkv) + 1]) do into[h][#into[h] + 1] = x end
  end
  return into
end

local function clusters_of(prob, p)
  local _, nq = dims(prob)
  return p.clusters > 0 and p.clusters or math.max(1, math.floor(math.sqrt(nq) + 0.5))
end

-- Centroids [Hq][C][D] and the params_source.
local function centroids(prob, p)
  local hq, _, d = dims(prob)
  if (p.weights or "") ~= "" then
    -- the raw read only sizes C; load_weights reports a bad file (with the method's name)
    local okw, ws = pcall(sl.load, p.weights)
    if not okw or type(ws) ~= "table" then ws = {} end
    local mu = ws["kmeans.means"]
    local C = mu and #mu:shape() == 3 and mu:shape()[2] or 1
    ws = T.load_weights("routing_transformer", p.weights,
      {{name = "kmeans.means", shape = {hq, C, d}, dims = "(query heads, clusters, head_dim)", required = true}})
    local t = ws["kmeans.means"]:totable()
    for h = 1, hq do for c = 1, C do t[h][c] = unit(t[h][c]) end end
    return t, T.file_source(p.weights)
  end
  local C = clusters_of(prob, p)
  if p.centroids == "self" then
    local xs = vectors(prob, {})
    local mu = {}
    for h = 1, hq do mu[h] = kmeans(xs[h], C, d, p.seed + h, 10) end
    return mu, "self-kmeans"
  elseif p.centroids ~= "random" then
    sl.fail("routing_transformer: centroids must be 'random' or 'self', found '%s'", tostring(p.centroids))
  end
  local r = sl.randn({hq, C, d}, {seed = p.seed}):totable()
  for h = 1, hq do for c = 1, C do r[h][c] = unit(r[h][c]) end end
  return r, "standin:random_centroids"
end

-- Member lists [Hq, C, w] (i32, ascending, -1 padded) of the top-w tokens
-- per cluster. The scores of every token against every centroid are C·n
-- (n^1.5 at C = sqrt(n)): they are made for blocks of clusters (~4M scores
-- each) and each block's top-w keep becomes lists in place
-- (sl.mask.block_lists), so memory stays linear in n (issue 19: the whole
-- [Hq, C, n] keep read into Lua was ~95 MB per head at n = 32K).
local SCORE_BUDGET = 1 << 22
local function members(mu, tokens, w, be)
  local M = sl.tensor(mu)
  local hq, C, n = M:shape()[1], M:shape()[2], tokens:shape()[2]
  local out = sl.zeros({hq, C, w}, "i32")
  local per = math.max(1, SCORE_BUDGET // math.max(1, hq * n))
  for c0 = 0, C - 1, per do
    local m = math.min(per, C - c0)
    local mc = (c0 == 0 and m == C) and M or M:narrow(2, c0 + 1, m)
    local sc = sl.score.pooled(mc, tokens, {bq = 1, bk = 1, causal = 0, pool = 0, scale = 1, backend = be})
    sl.mask.block_lists(sl.select.topk(sc, {k = w, backend = be}), w, out, c0 + 1)
  end
  return out
end

M.id = "routing_transformer"
M.card = "routing_transformer"
M.title = "Efficient Content-Based Sparse Attention with Routing Transformers"
M.family = "trainable"
M.phase = "prefill"
M.causal_only = true
M.summary = "Balanced k-means routing: each cluster's top-w queries attend its top-w keys (causal); mean over clusters."
M.knob = "w"
M.params = {
  w = {default = 64, min = 1, int = true, doc = "queries and keys per cluster (window)"},
  clusters = {default = 0, min = 0, max = 65536, int = true, doc = "C (0: round(sqrt(n)); a weights file fixes it)"},
  centroids = {default = "random", doc = "stand-in without weights: random (seeded) or self (k-means on the input)"},
  seed = {default = 1, min = 0, int = true, doc = "seed of the random centroids / k-means init"},
  weights = {default = "", doc = "safetensors file with kmeans.means [Hq, C, D]"},
}
M.ops = {"pool.tokens", "score.pooled", "select.topk", "trainable.routing"}
M.checks = {"each cluster has exactly w queries and w keys", "C = 1, w = n equals dense",
  "float64 independent cluster attention (op tests)", "no key after the query contributes",
  "random (score-blind) centroids lose recall against k-means ones", "k-means fixed point"}
M.params_sources = {"standin:random_centroids", "self-kmeans", "sha256:<weights file>"}

function M.run(prob, p)
  local hq, nq, _, _, nk = dims(prob)
  local mu, source = centroids(prob, p)
  local w = math.min(p.w, nq, nk)
  local qsel = members(mu, normalized(prob.q), math.min(w, nq), prob.backend)
  local ksel = members(mu, normalized(prob.k), math.min(w, nk), prob.backend)
  local o, lse, count = sl.trainable.routing(prob.q, prob.k, prob.v, qsel, ksel, {backend = prob.backend})
  -- density: per query head and row, the union of its clusters' causal keys over the causal keys
  local Q, K = E.heads(qsel), E.heads(ksel)
  local kept, causal = 0, 0
  for h = 1, hq do
    local rows = {}
    for c, list in ipairs(Q[h]) do
      for _, t in ipairs(list) do
        if t >= 0 then rows[t] = rows[t] or {}; rows[t][#rows[t] + 1] = c end
      end
    end
    for t = 0, nq - 1 do
      local pos, seen, n = nk - nq + t, {}, 0
      for _, c in ipairs(rows[t] or {}) do
        for _, j in ipairs(K[h][c]) do
          if j >= 0 and j <= pos and not seen[j] then seen[j] = true; n = n + 1 end
        end
      end
      kept, causal = kept + n, causal + pos + 1
    end
  end
  p.params_source = source
  return {o = o, lse = lse, qsel = qsel, ksel = ksel, params_source = source,
    stats = {flops = sl.op_flops("trainable.routing", prob.q, prob.k, prob.v, qsel, ksel), density = kept / causal,
      clusters = #mu[1]}}
end

--- Fits kmeans.means by spherical k-means over the inputs' q̂ and k̂.
function M.fit(probs, o)
  local p = o.params
  local hq, _, d = dims(probs[1])
  local xs = {}
  for i, prob in ipairs(probs) do
    local h2, _, d2 = dims(prob)
    if h2 ~= hq or d2 ~= d then
      sl.fail("routing_transformer fit: input %d has %d heads of dim %d, input 1 has %d of dim %d", i, h2, d2, hq, d)
    end
    vectors(prob, xs)
  end
  local C = clusters_of(probs[1], p)
  local mu = {}
  local function spread(m, list)
    local s = 0
    for _, x in ipairs(list) do
      local best = -math.huge
      for c = 1, #m do local v = 0 for e = 1, d do v = v + x[e] * m[c][e] end best = math.max(best, v) end
      s = s + (1 - best)
    end
    return s / #list
  end
  local before, after = 0, 0
  for h = 1, hq do
    mu[h] = kmeans(xs[h], C, d, (o.seed or 1) * 1000 + h, 10)
    before = before + spread(kmeans(xs[h], C, d, (o.seed or 1) * 1000 + h, 0), xs[h]) / hq
    after = after + spread(mu[h], xs[h]) / hq
  end
  return {["kmeans.means"] = sl.tensor(mu)},
    {loss_before = before, loss_after = after, optimiser = "spherical k-means (Lloyd, 10 iterations)"}
end

return M
