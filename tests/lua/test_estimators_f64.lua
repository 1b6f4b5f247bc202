-- test_estimators_f64.lua — float64 re-computations of estimators'
-- INTERMEDIATE quantities (issue 20, part 2), not only their final masks:
--   * flexprefill: per head the probe's vertical and slash profiles pooled
--     to blocks, the coverage counts (entries of the sorted profile up to γ),
--     the block budgets n_v, n_s, the sqrt-JSD between the pooled-query
--     block estimate and the vertical profile, and the query-aware decision —
--     all written here from the card's steps in float64 from q and k.
--   * xattention: the antidiagonal block scores A (the estimate's `scores`)
--     from the stride-S super-tokens, softmax in float64.
-- Names start with the method id, so the mutation harness runs them (a
-- score-blind estimator changes the intermediates).
package.path = "tests/lua/?.lua;" .. package.path
local BUILD = os.getenv("BUILD") or "build"
package.cpath = BUILD .. "/?.so;" .. package.cpath
local H = require "harness"
local sl = require "sparselab"
local test, eq, truthy, near = H.test, H.eq, H.truthy, H.near

local function dot(a, b)
  local s = 0
  for i = 1, #a do s = s + a[i] * b[i] end
  return s
end

-- softmax over keys 1..last of row qi (Lua tables, 1-based), scale 1/sqrt(d)
local function softmax_row(qi, K, last)
  local sc, x, m = 1 / math.sqrt(#qi), {}, -math.huge
  for j = 1, last do x[j] = dot(qi, K[j]) * sc; if x[j] > m then m = x[j] end end
  local z = 0
  for j = 1, last do x[j] = math.exp(x[j] - m); z = z + x[j] end
  for j = 1, last do x[j] = x[j] / z end
  return x
end

-- entries of the shortest prefix of x sorted descending whose sum reaches p · Σx
local function cover(x, p)
  local s, t = {}, 0
  for i = 1, #x do s[i] = x[i]; t = t + x[i] end
  table.sort(s, function(a, b) return a > b end)
  local cum = 0
  for i = 1, #s do
    cum = cum + s[i]
    if cum >= p * t then return i, math.abs(cum - p * t) end
  end
  return #s, 0
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

-- The card's flexprefill steps 1-4 per head in float64 (default rule: budget divisor bs).
local function flex_f64(Q, K, hq, hkv, n, bs, gamma, tau, min_budget)
  local nb = (n + bs - 1) // bs
  local min_b, max_b = (min_budget + bs - 1) // bs, nb
  local out = {}
  for h = 1, hq do
    local Qh, Kh = Q[h], K[(h - 1) // (hq // hkv) + 1]
    local v, s = {}, {}
    for j = 1, n do v[j], s[j] = 0, 0 end
    local qbar = {}
    for c = 1, #Qh[1] do qbar[c] = 0 end
    for i = n - bs + 1, n do
      local p = softmax_row(Qh[i], Kh, i)
      for j = 1, i do v[j] = v[j] + p[j]; s[i - j + 1] = s[i - j + 1] + p[j] end
      for c = 1, #qbar do qbar[c] = qbar[c] + Qh[i][c] / bs end
    end
    local vb, sb = {}, {}
    for b = 1, nb do vb[b], sb[b] = 0, 0 end
    for j = 1, n do vb[(j - 1) // bs + 1] = vb[(j - 1) // bs + 1] + v[j]; sb[(j - 1) // bs + 1] = sb[(j - 1) // bs + 1] + s[j] end
    -- block estimate of the probe: softmax over key blocks of q̄ · k̄_c / sqrt(d)
    local kb = {}
    for b = 1, nb do
      local m, cnt = {}, 0
      for c = 1, #qbar do m[c] = 0 end
      for j = (b - 1) * bs + 1, math.min(n, b * bs) do
        cnt = cnt + 1
        for c = 1, #qbar do m[c] = m[c] + Kh[j][c] end
      end
      for c = 1, #qbar do m[c] = m[c] / cnt end
      kb[b] = m
    end
    local avg = softmax_row(qbar, kb, nb)
    local dist = jsd_sqrt(avg, vb)
    local cv, mv = cover(v, gamma)
    local cs, ms = cover(s, gamma)
    local qa = dist < tau
    local nv, ns = (cv - 1) // bs + 1, (cs - 1) // bs + 1
    if qa then nv, ns = min_b, min_b end
    nv, ns = math.min(math.max(nv, min_b), max_b), math.min(math.max(ns, min_b), max_b)
    out[h] = {vb = vb, sb = sb, dist = dist, qa = qa, cover_v = cv, cover_s = cs, nv = nv, ns = ns,
      margin = math.min(mv, ms, math.abs(dist - tau))}
  end
  return out
end

test("flexprefill: per-head profiles, coverage counts, budgets, sqrt-JSD and decision equal a float64 re-computation",
  function()
  local n, bs, hq, hkv = 400, 16, 4, 2
  local q, k, v = sl.synthetic{heads = hq, kv_heads = hkv, n = n, d = 16, seed = 21}
  local prob = sl.problem{q = q, k = k, v = v}
  local Q, K = q:totable(), k:totable()
  local m = sl.methods.get("flexprefill")
  local ref_any = flex_f64(Q, K, hq, hkv, n, bs, 0.9, 0, 16)
  -- τ between the heads' distances, so that both kinds occur
  local dists = {}
  for h = 1, hq do dists[h] = ref_any[h].dist end
  table.sort(dists)
  local tau = (dists[2] + dists[3]) / 2
  for _, gamma in ipairs{0.5, 0.9} do
    local p = sl.registry.resolve(m, {block = bs, gamma = gamma, tau = tau, min_budget = 16})
    local e = m.estimate(prob, p)
    local want = flex_f64(Q, K, hq, hkv, n, bs, gamma, tau, 16)
    local kinds = {}
    for h = 1, hq do
      local got, w = e.detail[h], want[h]
      truthy(w.margin > 1e-5, string.format("head %d: no quantity within 1e-5 of its boundary (%.3g)", h, w.margin))
      near(got.dist, w.dist, 2e-5, string.format("γ %.1f head %d: sqrt-JSD", gamma, h))
      eq(got.qa, w.qa, string.format("γ %.1f head %d: query-aware decision", gamma, h))
      eq(got.cover_v, w.cover_v, string.format("γ %.1f head %d: vertical coverage count", gamma, h))
      eq(got.cover_s, w.cover_s, string.format("γ %.1f head %d: slash coverage count", gamma, h))
      eq(got.nv, w.nv, string.format("γ %.1f head %d: vertical block budget", gamma, h))
      eq(got.ns, w.ns, string.format("γ %.1f head %d: slash block budget", gamma, h))
      for b = 1, #w.vb do
        near(got.vb[b], w.vb[b], 2e-5, string.format("head %d vertical block %d", h, b))
        near(got.sb[b], w.sb[b], 2e-5, string.format("head %d slash block %d", h, b))
      end
      kinds[w.qa] = true
    end
    truthy(kinds[true] and kinds[false], "both head kinds occur")
    e.mask:close()
  end
end)

test("xattention: the antidiagonal block scores A equal a float64 re-computation from the super-tokens", function()
  local n, B, S, hq, hkv = 200, 32, 8, 4, 2  -- ragged last block and super-token
  local q, k, v = sl.synthetic{heads = hq, kv_heads = hkv, n = n, d = 16, seed = 23}
  local prob = sl.problem{q = q, k = k, v = v}
  local Q, K = q:totable(), k:totable()
  local m = sl.methods.get("xattention")
  local e = m.estimate(prob, sl.registry.resolve(m, {block = B, stride = S, threshold = 0.9}))
  local A = e.scores:totable()
  local ns, nb, d = (n + S - 1) // S, (n + B - 1) // B, 16
  for h = 1, hq do
    local Qh, Kh = Q[h], K[(h - 1) // (hq // hkv) + 1]
    local function tok(X, i) return X[i] or nil end
    -- super-token scores: q̃_I · k̃_J = Σ_t q[I·S + S-1-t] · k[J·S + t] (queries in inverse order; missing rows 0)
    local want = {}
    for r = 1, nb do want[r] = {}; for c = 1, nb do want[r][c] = 0 end end
    for I = 0, ns - 1 do
      local x, mx = {}, -math.huge
      for J = 0, I do
        local sdot = 0
        for t = 0, S - 1 do
          local qi, kj = tok(Qh, I * S + S - 1 - t + 1), tok(Kh, J * S + t + 1)
          if qi and kj then sdot = sdot + dot(qi, kj) end
        end
        x[J] = sdot / (math.sqrt(d) * S)
        if x[J] > mx then mx = x[J] end
      end
      local z = 0
      for J = 0, I do z = z + math.exp(x[J] - mx) end
      local r = (I * S) // B + 1
      for J = 0, I do
        local c = (J * S) // B + 1
        want[r][c] = want[r][c] + math.exp(x[J] - mx) / z
      end
    end
    for r = 1, nb do
      for c = 1, r do
        near(A[h][r][c], want[r][c], 2e-5, string.format("head %d block (%d, %d)", h, r - 1, c - 1))
      end
    end
  end
  e.mask:close()
end)


-- The query-aware selection before issue 20 session 3 (a comparator sort of {mass, r, c} triples), kept here
-- as the old path: blocks of A (rows of visible block masses) -> keep[r][c].
local function old_qa_keep(A, nb, gamma, reference)
  local k = {}
  for r = 1, nb do k[r] = {}; for c = 1, nb do k[r][c] = 0 end end
  local flat = {}
  for r = 1, nb do for c = 1, r do flat[#flat + 1] = {A[r][c], r, c} end end
  table.sort(flat, function(x, y)
    if x[1] ~= y[1] then return x[1] > y[1] end
    if x[2] ~= y[2] then return x[2] < y[2] end
    return x[3] < y[3]
  end)
  local limit, cum, cnt = gamma * nb, 0, 0
  for _, e in ipairs(flat) do
    cum = cum + e[1]
    if cum > limit then break end
    cnt = cnt + 1
  end
  for t = 1, math.min(reference and cnt or cnt + 1, #flat) do k[flat[t][2]][flat[t][3]] = 1 end
  return k
end

test("flexprefill: query-aware blocks (select.topk after a value sort) equal the old comparator sort of triples",
  function()
  local n, bs, hq, hkv = 640, 16, 4, 2
  local q, k, v = sl.synthetic{heads = hq, kv_heads = hkv, n = n, d = 16, seed = 29}
  local prob = sl.problem{q = q, k = k, v = v}
  local nb = n // bs
  local A = sl.score.pooled(q, k, {bq = bs, bk = bs, softmax = true, causal = true}):totable()
  -- equal masses in one row: ties must fall row-major first in both paths
  local m = sl.methods.get("flexprefill")
  for _, ref in ipairs{false, true} do
    for _, gamma in ipairs{0.3, 0.9} do
      -- τ = 1: every head query-aware, budgets at the minimum (1 block): column block 0 and the diagonal
      local p = sl.registry.resolve(m, {block = bs, gamma = gamma, tau = 1, min_budget = 16, reference = ref})
      local e = m.estimate(prob, p)
      local bt = e.mask:to_bits()
      local differ, kept = 0, 0
      for h = 1, hq do
        local bits = {[h] = bt:narrow(1, h, 1):totable()[1]}
        local want = old_qa_keep(A[h], nb, gamma, ref)
        for r = 1, nb do
          want[r][1], want[r][r] = 1, 1
          for c = 1, r do
            local got = bits[h][r * bs][(c - 1) * bs + 1]
            if got ~= want[r][c] then differ = differ + 1 end
            kept = kept + got
          end
        end
      end
      eq(differ, 0, string.format("reference %s, γ %.1f: blocks differing from the old path", tostring(ref), gamma))
      truthy(kept > 2 * nb * hq, "the query-aware part adds blocks beyond column 0 and the diagonal")
      e.mask:close()
    end
  end
end)

H.done()
