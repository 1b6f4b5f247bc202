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

-- sqrt of the Jensen-Shannon divergence of the normalised p and q, written as
-- entropies, JSD = H((P + Q) / 2) - (H(P) + H(Q)) / 2 (not the recipe's KL form).
local function entropy(x, total)
  local h = 0
  for i = 1, #x do
    local v = x[i] / total
    if v > 0 then h = h - v * math.log(v) end
  end
  return h
end

local function jsd_sqrt(p, q)
  local sp, sq = 0, 0
  for i = 1, #p do sp, sq = sp + p[i], sq + q[i] end
  local m = {}
  for i = 1, #p do m[i] = (p[i] / sp + q[i] / sq) / 2 end
  local js = entropy(m, 1) - (entropy(p, sp) + entropy(q, sq)) / 2
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

-- mean of rows [a, b] (1-based, inclusive) of a table of vectors
local function mean_rows(X, a, b)
  local m = {}
  for c = 1, #X[a] do m[c] = 0 end
  for i = a, b do for c = 1, #m do m[c] = m[c] + X[i][c] end end
  for c = 1, #m do m[c] = m[c] / (b - a + 1) end
  return m
end

-- keep bits of a block mask: bits[h][r][c] (1-based blocks), read at the block's last row and first key
local function block_bits(mask, hq, nb, B, n)
  local bt = mask:to_bits():totable()
  local out = {}
  for h = 1, hq do
    out[h] = {}
    for r = 1, nb do
      out[h][r] = {}
      for c = 1, nb do out[h][r][c] = bt[h][math.min(r * B, n)][(c - 1) * B + 1] end
    end
  end
  return out
end

-- the top-p rule of a row x over blocks 1..vis: keep sorted blocks while the mass before them is < p·total
local function topp_row(x, vis, p, total)
  local order = {}
  for c = 1, vis do order[c] = c end
  table.sort(order, function(a, b) if x[a] ~= x[b] then return x[a] > x[b] end return a < b end)
  local keep, before, margin = {}, 0, math.huge
  for i = 1, vis do
    margin = math.min(margin, math.abs(before - p * total))
    if p < 1 and before >= p * total then break end
    keep[order[i]] = true
    before = before + x[order[i]]
  end
  return keep, margin
end

test("unisparse: the row-block estimate (issue 19: composite map per block of query blocks) keeps the one-call mask and block map",
  function()
  local m = sl.methods.get("unisparse")
  for ci, c in ipairs{{n = 256, nq = 256, causal = true, o = {bq = 32, bk = 32, c_q = 8, c_k = 8, tau = 0.6}},
      {n = 250, nq = 250, causal = true, o = {bq = 16, bk = 32, c_q = 4, c_k = 8, tau = 0.8, agg = 1}},
      {n = 240, nq = 96, causal = true, o = {bq = 32, bk = 16, c_q = 8, c_k = 4, tau = 0.7}},
      {n = 192, nq = 192, causal = false, o = {bq = 32, bk = 32, c_q = 8, c_k = 8, tau = 0.5}}} do
    local q, k, v = sl.synthetic{heads = 4, kv_heads = 2, n = c.n, d = 16, seed = 90 + ci}
    if c.nq < c.n then q = q:narrow(2, c.n - c.nq + 1, c.nq):to("f32") end
    local prob = sl.problem{q = q, k = k, v = v, causal = c.causal}
    local p = sl.registry.resolve(m, c.o)
    local m1, d1 = m.intermediates(prob, p, 1 << 30)
    local b1 = m1:to_bits():totable()
    for _, per in ipairs{1, 3} do
      local m2, d2 = m.intermediates(prob, p, per)
      local b2 = m2:to_bits():totable()
      local bad = 0
      for h = 1, 4 do for i = 1, c.nq do for j = 1, c.n do if b1[h][i][j] ~= b2[h][i][j] then bad = bad + 1 end end end end
      eq(bad, 0, string.format("case %d, %d query blocks per call: pairs differing", ci, per))
      for h = 1, 4 do for r = 1, #d1.blocks[h] do for cb = 1, #d1.blocks[h][r] do
        near(d2.blocks[h][r][cb], d1.blocks[h][r][cb], 1e-6, string.format("case %d block map (%d, %d, %d)", ci, h, r, cb))
      end end end
    end
  end
end)

test("unisparse: composite-token softmax aggregated per block, and the top-p rows, equal a float64 re-computation",
  function()
  local n, S, c, hq, hkv, d = 192, 32, 8, 4, 2, 16
  local q, k, v = sl.synthetic{heads = hq, kv_heads = hkv, n = n, d = d, seed = 31}
  local prob = sl.problem{q = q, k = k, v = v}
  local Q, K = q:totable(), k:totable()
  local m = sl.methods.get("unisparse")
  local tau = 0.6
  local mask, det = m.intermediates(prob, sl.registry.resolve(m, {bq = S, bk = S, c_q = c, c_k = c, tau = tau}))
  local nb, nc, per = n // S, n // c, S // c
  local bits = block_bits(mask, hq, nb, S, n)
  local kept = 0
  for h = 1, hq do
    local Qh, Kh = Q[h], K[(h - 1) // (hq // hkv) + 1]
    local qc, kc = {}, {}
    for t = 1, nc do qc[t] = mean_rows(Qh, (t - 1) * c + 1, t * c); kc[t] = mean_rows(Kh, (t - 1) * c + 1, t * c) end
    local want = {}
    for r = 1, nb do want[r] = {}; for cb = 1, nb do want[r][cb] = 0 end end
    for t = 1, nc do
      local p = softmax_row(qc[t], kc, t)   -- causal at composite level: composite key j <= t
      local r = (t - 1) // per + 1
      for j = 1, t do local cb = (j - 1) // per + 1; want[r][cb] = want[r][cb] + p[j] end
    end
    for r = 1, nb do
      local total = 0
      for cb = 1, r do
        near(det.blocks[h][r][cb], want[r][cb], 2e-5, string.format("head %d block (%d, %d)", h, r, cb))
        total = total + want[r][cb]
      end
      local keep, margin = topp_row(want[r], r, tau, total)
      keep[r] = true   -- the diagonal block
      truthy(margin > 1e-5, string.format("head %d row %d: no prefix mass within 1e-5 of τ", h, r))
      for cb = 1, nb do
        eq(bits[h][r][cb], keep[cb] and 1 or 0, string.format("head %d block (%d, %d) kept", h, r, cb))
        kept = kept + bits[h][r][cb]
      end
    end
  end
  truthy(kept < hq * nb * (nb + 1) / 2, "τ < 1 drops some visible blocks")
  mask:close()
end)

test("proxy_attn: proxy-head strided block maxima A and per-head budgets equal a float64 re-computation", function()
  local n, B, S, hq, hkv, d, G = 256, 32, 4, 4, 2, 16, 4   -- one proxy group of all 4 query heads (2 KV heads)
  local q, k, v = sl.synthetic{heads = hq, kv_heads = hkv, n = n, d = d, seed = 37}
  local prob = sl.problem{q = q, k = k, v = v}
  local Q, K = q:totable(), k:totable()
  local m = sl.methods.get("proxy_attn")
  local gamma = 0.7
  local e = m.estimate(prob, sl.registry.resolve(m, {gamma = gamma, group = G, stride = S, block = B}))
  local A = e.scores:totable()
  local nb = n // B
  -- step 1: proxy head = mean over the group's heads (queries over 4 heads, keys over their 2 KV heads)
  local Qg, Kg = {}, {}
  for i = 1, n do
    Qg[i], Kg[i] = {}, {}
    for t = 1, d do
      local sq, sk = 0, 0
      for h = 1, hq do sq = sq + Q[h][i][t] end
      for h = 1, hkv do sk = sk + K[h][i][t] end
      Qg[i][t], Kg[i][t] = sq / hq, sk / hkv
    end
  end
  -- steps 2-3: strided grid (positions 0, S, 2S, ...), causal softmax, max over each block tile
  local want = {}
  for r = 1, nb do want[r] = {}; for c = 1, nb do want[r][c] = 0 end end
  local Ks = {}
  for j = 0, n - 1, S do Ks[#Ks + 1] = Kg[j + 1] end
  for i = 0, n - 1, S do
    local p = softmax_row(Qg[i + 1], Ks, i // S + 1)
    local r = i // B + 1
    for a = 1, i // S + 1 do
      local c = ((a - 1) * S) // B + 1
      if p[a] > want[r][c] then want[r][c] = p[a] end
    end
  end
  for r = 1, nb do
    for c = 1, r do near(A[1][r][c], want[r][c], 2e-5, string.format("A block (%d, %d)", r, c)) end
  end
  -- step 4: per head, the last query block's exact softmax mean-pooled to key blocks, cover γ
  for h = 1, hq do
    local Qh, Kh = Q[h], K[(h - 1) // (hq // hkv) + 1]
    local a = {}
    for c = 1, nb do a[c] = 0 end
    for i = n - B + 1, n do
      local p = softmax_row(Qh[i], Kh, i)
      for j = 1, i do a[(j - 1) // B + 1] = a[(j - 1) // B + 1] + p[j] end
    end
    local cnt, margin = cover(a, gamma)
    truthy(margin > 1e-6, string.format("head %d: cumulative mass not within 1e-6 of γ", h))
    near(e.budget[h], cnt / nb, 1e-12, string.format("head %d budget", h))
  end
  local b = {}
  for h = 1, hq do b[h] = e.budget[h] end
  table.sort(b)
  truthy(b[1] < 1, "some head's budget is below the full row")
  e.mask:close()
  e.scores:close()
end)

test("prism: per-head band temperatures and per-band block softmaxes equal a float64 re-computation", function()
  local n, B, hq, hkv, d = 256, 16, 4, 2, 16
  local q, k, v = sl.synthetic{heads = hq, kv_heads = hkv, n = n, d = d, seed = 41}
  local prob = sl.problem{q = q, k = k, v = v}
  local Q, K = q:totable(), k:totable()
  local m = sl.methods.get("prism")
  local pth = 0.8
  local mask, det = m.intermediates(prob, sl.registry.resolve(m, {bq = B, bk = B, p = pth}))
  local nb = n // B
  local bits = block_bits(mask, hq, nb, B, n)
  -- card step 2, NeoX layout, h = d/2 = 8, l = 3d/4 = 12 (0-based dims): high [0,4) ∪ [8,12), low [2,8) ∪ [10,16)
  local bands = {{8, {0, 1, 2, 3, 8, 9, 10, 11}}, {12, {2, 3, 4, 5, 6, 7, 10, 11, 12, 13, 14, 15}}}
  local function pool(X)
    local out = {}
    for r = 1, nb do out[r] = mean_rows(X, (r - 1) * B + 1, r * B) end
    return out
  end
  local function rms(P, dims)
    local s, cnt = 0, 0
    for _, row in ipairs(P) do for _, t in ipairs(dims) do s = s + row[t + 1] ^ 2; cnt = cnt + 1 end end
    return math.sqrt(s / cnt)
  end
  local all = {}
  for t = 0, d - 1 do all[#all + 1] = t end
  local dropped = 0
  for h = 1, hq do
    local qp, kp = pool(Q[h]), pool(K[(h - 1) // (hq // hkv) + 1])
    local keep = {}
    for r = 1, nb do keep[r] = {} end
    for bi, bd in ipairs(bands) do
      local w, dims = bd[1], bd[2]
      local t = math.sqrt(w / d) * (rms(qp, dims) / rms(qp, all)) * (rms(kp, dims) / rms(kp, all))
      near(det[h].t[bi], t, 1e-6 * t, string.format("head %d band %d temperature", h, bi))
      for r = 1, nb do
        local x, mx = {}, -math.huge
        for c = 1, r do
          local s = 0
          for _, i in ipairs(dims) do s = s + qp[r][i + 1] * kp[c][i + 1] end
          x[c] = s / (math.sqrt(w) * t)
          if x[c] > mx then mx = x[c] end
        end
        local z = 0
        for c = 1, r do x[c] = math.exp(x[c] - mx); z = z + x[c] end
        for c = 1, r do
          x[c] = x[c] / z
          near(det[h].probs[bi][r][c], x[c], 2e-5, string.format("head %d band %d block (%d, %d)", h, bi, r, c))
        end
        local kb, margin = topp_row(x, r, pth, 1)
        truthy(margin > 1e-5, string.format("head %d band %d row %d: no prefix mass within 1e-5 of p", h, bi, r))
        for c in pairs(kb) do keep[r][c] = true end
      end
    end
    for r = 1, nb do
      keep[r][1], keep[r][r] = true, true   -- sink and diagonal
      for c = 1, nb do
        eq(bits[h][r][c], keep[r][c] and 1 or 0, string.format("head %d block (%d, %d) kept", h, r, c))
        if c <= r and not keep[r][c] then dropped = dropped + 1 end
      end
    end
  end
  truthy(dropped > 0, "p < 1 drops some visible blocks")
  mask:close()
end)

test("psa_pyramid: the row-block importance (score.exact on blocks of sampled rows) keeps the one-call levels", function()
  local m = sl.methods.get("psa_pyramid")
  local saved = m.ROW_SCORES
  local ok, err = pcall(function()
    for _, c in ipairs{{n = 256, causal = true, params = {bq = 32, bk = 16, sample = 4, seed = 5}},
                       {n = 256, causal = false, params = {bq = 32, bk = 16, sample = 4, seed = 9, mode = "thresholdbound"}},
                       {n = 192, causal = true, params = {bq = 16, bk = 16, sample = 2, seed = 3, tile_n = 4, format = "lists"}}} do
      local q, k, v = sl.synthetic{heads = 4, kv_heads = 2, n = c.n, d = 16, seed = 47 + c.n}
      local prob = sl.problem{q = q, k = k, v = v, causal = c.causal}
      local p = sl.registry.resolve(m, c.params)
      m.ROW_SCORES = 1 << 30
      local _, lv_whole = m.graded_levels(prob, p)
      local whole = sl.eval("psa_pyramid", prob, {params = c.params})
      local nkb = c.n // c.params.bk
      for _, lim in ipairs{1, 3 * 4 * nkb} do   -- 1 and 3 query blocks per call
        m.ROW_SCORES = lim
        local what = string.format("n %d causal %s entries/call %d", c.n, tostring(c.causal), lim)
        local _, lv = m.graded_levels(prob, p)
        H.same(lv, lv_whole, what .. ": levels")
        local r = sl.eval("psa_pyramid", prob, {params = c.params})
        eq(H.max_diff(r.o, whole.o), 0, what .. ": o")
        eq(r.metrics.density, whole.metrics.density, what .. ": density")
      end
    end
  end)
  m.ROW_SCORES = saved
  if not ok then error(err, 0) end
end)

test("psa_pyramid: sampled block importance and the graded levels equal a float64 re-computation", function()
  local n, bq, bk, hq, hkv, d, smp = 256, 32, 16, 4, 2, 16, 4
  local q, k, v = sl.synthetic{heads = hq, kv_heads = hkv, n = n, d = d, seed = 43}
  local prob = sl.problem{q = q, k = k, v = v}
  local Q, K = q:totable(), k:totable()
  local m = sl.methods.get("psa_pyramid")
  local p = sl.registry.resolve(m, {bq = bq, bk = bk, sample = smp, seed = 5, scale = 1.9})
  local imp = m.importance(prob, p)
  local _, lv = m.graded_levels(prob, p)
  -- the recipe's seeded random offsets (the card: random, shared by all blocks); the rest from the card
  local ro, ko = m.sample_offsets(bq, bq // smp, 5), m.sample_offsets(bk, bk // smp, 5 + 7)
  local nqb, nkb = n // bq, n // bk
  local seen = 0
  for h = 1, hq do
    local Qh, Kh = Q[h], K[(h - 1) // (hq // hkv) + 1]
    local keys, kblk = {}, {}
    for J = 0, nkb - 1 do for _, o in ipairs(ko) do keys[#keys + 1] = Kh[J * bk + o + 1]; kblk[#keys] = J + 1 end end
    local want = {}
    for I = 1, nqb do
      want[I] = {}
      for J = 1, nkb do want[I][J] = 0 end
      for _, o in ipairs(ro) do
        local pr = softmax_row(Qh[(I - 1) * bq + o + 1], keys, #keys)   -- over all sampled keys (non-causal)
        for b = 1, #keys do if pr[b] > want[I][kblk[b]] then want[I][kblk[b]] = pr[b] end end
      end
      for J = 1, nkb do near(imp[h][I][J], want[I][J], 2e-5, string.format("head %d importance (%d, %d)", h, I, J)) end
      -- card step 3, mode topk, ratios 0.10, 0.05, 0, 0.20 times scale 1.9 (no rank fraction k/v, v <= 16,
      -- lies within 5e-4 of a bound): f < b1 -> 1, < b2 -> 2, (level 4 empty), < b8 -> 8, else 0
      local vis = {}
      for J = 1, nkb do if (J - 1) * bk <= I * bq - 1 then vis[#vis + 1] = J end end
      table.sort(vis, function(a, b) return want[I][a] > want[I][b] end)
      local lev = {}
      for J = 1, nkb do lev[J] = 0 end
      for rank, J in ipairs(vis) do
        local f = (rank - 1) / #vis
        local b1 = 0.10 * 1.9
        local b2, b8 = b1 + 0.05 * 1.9, b1 + 0.05 * 1.9 + 0.20 * 1.9
        truthy(math.abs(f - b1) > 5e-4 and math.abs(f - b2) > 5e-4 and math.abs(f - b8) > 5e-4, "rank fraction off the bounds")
        lev[J] = f < b1 and 1 or f < b2 and 2 or f < b8 and 8 or 0
      end
      for rank = 2, #vis do   -- neighbours at a level change are not near-ties
        if lev[vis[rank - 1]] ~= lev[vis[rank]] then
          truthy(want[I][vis[rank - 1]] - want[I][vis[rank]] > 1e-5, string.format("head %d row %d: tie at a level change", h, I))
        end
      end
      -- causal reading: key blocks holding the causal cut of a row of query block I are exact (level 1)
      for J = 1, nkb do
        if math.min(J * bk, n) - 1 > (I - 1) * bq and (J - 1) * bk <= I * bq - 1 then lev[J] = 1 end
      end
      for J = 1, nkb do
        eq(lv[h][I][J], lev[J], string.format("head %d level (%d, %d)", h, I, J))
        if lev[J] == 8 then seen = seen + 1 end
      end
    end
  end
  truthy(seen > 0, "some blocks are read at level 8")
end)

-- prism's card check "RoPE slash pattern": a pure positional input — one constant vector under NeoX
-- RoPE (dim t pairs with t + d/2, θ_t = base^(-2t/d)), keys shifted by δ positions, so q_i · k_j depends
-- on i - j only and peaks at j = i - δ (a slash δ below the diagonal). Mean pooling averages the
-- high-frequency pairs away; the calibrated high band must still single out the slash block, sharper
-- than the full-dim mean pool (h = l = d, no calibration: the card's reduction).
test("prism: RoPE slash pattern — the high band ranks the slash block first in every row, sharper than the full-dim mean pool",
  function()
  local n, B, d = 256, 16, 16
  local half, nb = d // 2, n // B
  local m = sl.methods.get("prism")
  for _, base in ipairs{1000, 10000} do
    for _, delta in ipairs{B, 2 * B} do
      local function rope(pos)
        local out = {}
        for t = 1, half do
          local th = base ^ (-(2 * (t - 1)) / d)
          local c, s = math.cos(pos * th), math.sin(pos * th)
          out[t], out[t + half] = c - s, s + c   -- the vector of ones rotated
        end
        return out
      end
      local Q, K = {{}}, {{}}
      for i = 0, n - 1 do Q[1][i + 1] = rope(i); K[1][i + 1] = rope(i + delta) end
      local q, k = sl.tensor(Q, "f32"), sl.tensor(K, "f32")
      local prob = sl.problem{q = q, k = k, v = q}
      local mh, dh = m.intermediates(prob, sl.registry.resolve(m, {bq = B, bk = B, p = 0.95}))
      local mf, df = m.intermediates(prob, sl.registry.resolve(m, {bq = B, bk = B, p = 0.95, high_dim = d,
        low_dim = d, calibrate = 0}))
      local off = delta // B
      local cover_h, cover_f = 0, 0
      for r = off + 2, nb do
        local xh, xf, c0 = dh[1].probs[1][r], df[1].probs[1][r], r - off
        local what = string.format("base %d δ %d row %d", base, delta, r)
        for c = 1, r do
          if c ~= c0 then truthy(xh[c] < xh[c0], what .. ": the high band ranks the slash block first") end
        end
        truthy(xh[c0] > xf[c0] + 0.05, string.format("%s: high band mass on the slash block %.3f > full-dim %.3f + 0.05",
          what, xh[c0], xf[c0]))
        cover_h, cover_f = cover_h + cover(xh, 0.5), cover_f + cover(xf, 0.5)
      end
      truthy(2 * cover_h < cover_f + 1, string.format("base %d δ %d: blocks covering half of each row's mass: high %d, full %d",
        base, delta, cover_h, cover_f))
      mh:close(); mf:close(); q:close(); k:close()
    end
  end
end)

-- sparsed (issue 20, session 5): the card's step 2a/2b intermediates — per head and query block the
-- exact softmax of its rows over all keys (non-causal, 1/sqrt(d)), the tile importance = tile sum / B² (a
-- ragged tile divided by B² too), the top floor(n_kb·select) + 1 key blocks; with a generation region,
-- columns >= last cleared and re-chosen from a softmax over the keys from last·B on, top floor(n_gen·select)
-- + 1 of its blocks — written here in float64 from q and k, against the recipe's block map.
test("sparsed: exact-softmax tile importance and the prompt / generation-region top blocks equal a float64 re-computation",
  function()
  local sp = sl.methods.get("sparsed")
  local hq, n, d, b = 2, 100, 16, 16
  local q, k, v = sl.randn({hq, n, d}, {seed = 811}), sl.randn({hq, n, d}, {seed = 812}), sl.randn({hq, n, d}, {seed = 813})
  local prob = sl.problem{q = q, k = k, v = v, causal = false}
  local Q, K = q:totable(), k:totable()
  local nb = (n + b - 1) // b
  for _, case in ipairs{{select = 0.3, gen = 0}, {select = 0.45, gen = 30}} do
    local p = sl.registry.resolve(sp, {block = b, select = case.select, gen = case.gen})
    local keeps = sp.build(prob, p)
    -- last = the first query block I with n - I·B <= gen (here 100 - 5·16 = 20 <= 30: I = 5)
    local last
    if case.gen > 0 then
      last = nb - 1
      for I = 0, nb - 1 do if n - I * b <= case.gen then last = I; break end end
      eq(last, 5, "generation region starts at block 5")
    end
    local kp = math.floor(nb * case.select) + 1
    local margin = math.huge
    -- top `cnt` of imp over blocks (ties would need the recipe's order: asserted away by the margin)
    local function top(imp, cnt)
      local idx = {}
      for J = 1, #imp do idx[J] = J end
      table.sort(idx, function(a, c) return imp[a] > imp[c] end)
      local set = {}
      for x = 1, math.min(cnt, #idx) do set[idx[x]] = true end
      if cnt < #idx then margin = math.min(margin, imp[idx[cnt]] - imp[idx[cnt + 1]]) end
      return set
    end
    for h = 1, hq do
      for I = 1, nb do
        local want = {}
        -- prompt pass: softmax over all n keys, tile sums / B²
        local imp = {}
        for J = 1, nb do imp[J] = 0 end
        for i = (I - 1) * b + 1, math.min(n, I * b) do
          local pr = softmax_row(Q[h][i], K[h], n)
          for j = 1, n do imp[(j - 1) // b + 1] = imp[(j - 1) // b + 1] + pr[j] / (b * b) end
        end
        for J in pairs(top(imp, kp)) do want[J] = true end
        if last then
          for J = last + 1, nb do want[J] = nil end
          local from = last * b
          local Kg = {}
          for j = from + 1, n do Kg[#Kg + 1] = K[h][j] end
          local ngen = nb - last
          local gimp = {}
          for J = 1, ngen do gimp[J] = 0 end
          for i = (I - 1) * b + 1, math.min(n, I * b) do
            local pr = softmax_row(Q[h][i], Kg, #Kg)
            for j = 1, #Kg do gimp[(j - 1) // b + 1] = gimp[(j - 1) // b + 1] + pr[j] / (b * b) end
          end
          for J in pairs(top(gimp, math.floor(ngen * case.select) + 1)) do want[last + J] = true end
        end
        for J = 1, nb do
          eq(keeps[h][I][J], want[J] and 1 or 0,
            string.format("select %.2f gen %d head %d block (%d, %d)", case.select, case.gen, h, I, J))
        end
      end
    end
    truthy(margin > 1e-6, string.format("select %.2f: no importance within 1e-6 of the cut (%.3g)", case.select, margin))
  end
end)

-- draft_attention (issue 20, session 5): the card's steps 1-3 — the draft token of a region (ph x pw tokens
-- of one frame) is the mean of its queries / keys, the draft map per head is the softmax over the S draft
-- keys of q̄·k̄/sqrt(d), and the head-global selection keeps every entry >= the k-th smallest of the S x S map
-- (k = floor(sparsity·S²)) — written here in float64 from the UN-permuted q, k by token coordinates (frame,
-- y, x), against the recipe's draft map (read from its reordered tokens) and its selection.
test("draft_attention: region-mean draft map and the head-global percentile selection equal a float64 re-computation",
  function()
  local draft = sl.methods.get("draft_attention")
  local F, Hh, W, ph, pw, hq, d = 2, 4, 8, 2, 4, 2, 16
  local lay = sl.layout.video{frames = F, height = Hh, width = W, text = 0}
  local n = lay.n
  local q, k = sl.randn({hq, n, d}, {seed = 821}), sl.randn({hq, n, d}, {seed = 822})
  local p = sl.registry.resolve(draft, {ph = ph, pw = pw, sparsity = 0.7})
  local perm = lay:perm_tensor("tiles", {tf = 1, th = ph, tw = pw})
  local qp, kp = sl.layout.permute(q, perm, "cpu"), sl.layout.permute(k, perm, "cpu")
  local map = draft.draft_map(qp, kp, lay, p)
  local keep = draft.select(map, p.sparsity)
  local Q, K = q:totable(), k:totable()
  local ry, rx = Hh // ph, W // pw
  local S = F * ry * rx
  -- region r (0-based, frame-major, then region row, region column) of token (f, y, x)
  local function region(f, y, x) return (f * ry + y // ph) * rx + x // pw end
  for h = 1, hq do
    local qb, kb, cnt = {}, {}, {}
    for r = 1, S do
      qb[r], kb[r], cnt[r] = {}, {}, 0
      for c = 1, d do qb[r][c], kb[r][c] = 0, 0 end
    end
    for f = 0, F - 1 do for y = 0, Hh - 1 do for x = 0, W - 1 do
      local t = (f * Hh + y) * W + x + 1
      local r = region(f, y, x) + 1
      cnt[r] = cnt[r] + 1
      for c = 1, d do qb[r][c] = qb[r][c] + Q[h][t][c]; kb[r][c] = kb[r][c] + K[h][t][c] end
    end end end
    for r = 1, S do
      eq(cnt[r], ph * pw, "region size")
      for c = 1, d do qb[r][c] = qb[r][c] / cnt[r]; kb[r][c] = kb[r][c] / cnt[r] end
    end
    local want, flat = {}, {}
    for I = 1, S do
      want[I] = softmax_row(qb[I], kb, S)
      for J = 1, S do
        near(map[h][I][J], want[I][J], 2e-6, string.format("head %d draft map (%d, %d)", h, I, J))
        flat[#flat + 1] = want[I][J]
      end
    end
    table.sort(flat)
    local kk = math.floor(p.sparsity * S * S)
    local thr = flat[kk]
    truthy(flat[kk + 1] - thr > 1e-5 and thr - flat[kk - 1] > 1e-5,
      string.format("head %d: no map entry within 1e-5 of the threshold", h))
    local kept = 0
    for I = 1, S do for J = 1, S do
      eq(keep[h][I][J], want[I][J] >= thr and 1 or 0, string.format("head %d kept (%d, %d)", h, I, J))
      kept = kept + keep[h][I][J]
    end end
    eq(kept, S * S - kk + 1, "head " .. h .. ": the threshold entry and the larger ones")
  end
end)

-- pbs_attn (issue 20, session 5): xinghaow99/pbs-attn's selection transcribed in float64 from q and k —
-- last_block_attn_sorting (the last `block` queries' softmax over the complete segments' keys, no causal
-- mask, mean over the probe rows, a descending sort per segment, the partial tail in order), then
-- permuted_block_selection on the permuted keys: Q and K zero-padded to a multiple of block and mean-pooled
-- over `block` rows (pad = true; pad = false: over the valid rows), q̄·k̄/sqrt(d), softmax over the blocks of
-- earlier segments, select_blocks (sort, cumsum, the first index with cumsum >= threshold kept), the block
-- holding token 0 OR-ed in; executed with the segment blocks (causal by original index). Compared token by
-- token with the recipe's executed mask in original key positions, at a ragged n where the two poolings
-- select differently.
test("pbs_attn: permutation, pooled block softmax and the threshold selection (pad = true: the reference's zero padding) equal a float64 re-computation",
  function()
  local m = sl.methods.get("pbs_attn")
  local hq, n, d, B, S, tau = 2, 300, 16, 32, 64, 0.8
  -- a direction u shared by the last (ragged) query block's rows and, with a random weight, by every key:
  -- the sorted segments then pool into blocks with clearly different scores, so the poolings' temperatures
  -- (mean of 12 valid rows vs their sum / 32) keep different numbers of blocks
  local Q, K = sl.randn({hq, n, d}, {seed = 831}):totable(), sl.randn({hq, n, d}, {seed = 832}):totable()
  local g = sl.randn({hq, n, 1}, {seed = 834}):totable()
  for h = 1, hq do
    for i = 289, n do for c = 1, d do Q[h][i][c] = 0.3 * Q[h][i][c] + (c <= 4 and 1.5 or 0) end end
    for j = 1, n do for c = 1, 4 do K[h][j][c] = K[h][j][c] + 1.5 * g[h][j][1] end end
  end
  local q, k, v = sl.tensor(Q), sl.tensor(K), sl.randn({hq, n, d}, {seed = 833})
  local prob = sl.problem{q = q, k = k, v = v, causal = true}
  Q, K = q:totable(), k:totable()
  local nb, per = (n + B - 1) // B, S // B
  local n_c = (n // S) * S
  local sc = 1 / math.sqrt(d)
  local function expected(h, pad)
    local Qh, Kh = Q[h], K[h]
    -- the permutation
    local score = {}
    for j = 1, n_c do score[j] = 0 end
    for i = n - B + 1, n do
      local a = softmax_row(Qh[i], Kh, n_c)
      for j = 1, n_c do score[j] = score[j] + a[j] / B end
    end
    local perm = {}
    for s0 = 0, n_c - 1, S do
      local seg = {}
      for j = s0, s0 + S - 1 do seg[#seg + 1] = j end
      table.sort(seg, function(x, y) return score[x + 1] > score[y + 1] end)
      for _, j in ipairs(seg) do perm[#perm + 1] = j end
    end
    for j = n_c, n - 1 do perm[#perm + 1] = j end
    local slot = {}
    for t, j in ipairs(perm) do slot[j] = t - 1 end
    -- pooled blocks (query rows in order, keys permuted)
    local function pool(rows_of, r)
      local out, cnt = {}, 0
      for c = 1, d do out[c] = 0 end
      for t = r * B, math.min(n, (r + 1) * B) - 1 do
        local x = rows_of(t)
        cnt = cnt + 1
        for c = 1, d do out[c] = out[c] + x[c] end
      end
      local div = pad and B or cnt
      for c = 1, d do out[c] = out[c] / div end
      return out
    end
    local kb = {}
    for c = 0, nb - 1 do kb[c] = pool(function(t) return Kh[perm[t + 1] + 1] end, c) end
    local keep, margin = {}, math.huge
    for r = 0, nb - 1 do
      keep[r] = {}
      local lim = (r // per) * per
      if lim > 0 then
        local qb = pool(function(t) return Qh[t + 1] end, r)
        local x, mx = {}, -math.huge
        for c = 0, lim - 1 do x[c] = dot(qb, kb[c]) * sc; mx = math.max(mx, x[c]) end
        local z = 0
        for c = 0, lim - 1 do x[c] = math.exp(x[c] - mx); z = z + x[c] end
        local order = {}
        for c = 0, lim - 1 do x[c] = x[c] / z; order[#order + 1] = c end
        table.sort(order, function(a, b2) return x[a] > x[b2] end)
        local cum = 0
        for _, c in ipairs(order) do
          cum = cum + x[c]
          keep[r][c] = true
          margin = math.min(margin, math.abs(cum - tau))
          if cum >= tau then break end
        end
        keep[r][slot[0] // B] = true
      end
    end
    return function(i, j)
      if i // S == j // S then return j <= i end
      return i // S > j // S and keep[i // B][slot[j] // B] == true
    end, margin
  end
  local differ = 0
  local want = {}
  for _, pad in ipairs{true, false} do
    local mask = m.mask(prob, sl.registry.resolve(m, {block = B, segment = S, threshold = tau, pad = pad}))
    local bits = sl.mask.as_block(mask):to_bits():totable()
    want[pad] = {}
    for h = 1, hq do
      local f, margin = expected(h, pad)
      want[pad][h] = f
      truthy(margin > 1e-6, string.format("pad %s head %d: no cumulative mass within 1e-6 of the threshold", tostring(pad), h))
      local bad = 0
      for i = 0, n - 1 do for j = 0, n - 1 do
        if bits[h][i + 1][j + 1] ~= (f(i, j) and 1 or 0) then bad = bad + 1 end
      end end
      eq(bad, 0, string.format("pad %s head %d: executed pairs differing from the float64 transcription", tostring(pad), h))
    end
  end
  for h = 1, hq do
    for i = 0, n - 1 do for j = 0, n - 1 do
      if want[true][h](i, j) ~= want[false][h](i, j) then differ = differ + 1 end
    end end
  end
  truthy(differ > 0, "the reference's zero padding selects differently from the valid-row mean here (" .. differ .. " pairs)")
end)

-- rectified_spaattn (issue 20, session 5): the card's steps 1-4 — on the curve-ordered tokens, block means
-- q̄_I, k̄_J, IPAR's P'_IJ = softmax_J(q̄_I·k̄_J/sqrt(d) + log |J|) (a ragged last block counts its own size),
-- then per video query block the count(sorted cumsum <= p_remain) + 1 first blocks, at least top_k =
-- floor((1 - drop_rate)·nb) — written here in float64 (the Gilbert order is the layout's, checked by
-- test_video.lua), against the recipe's P' and its selection.
test("rectified_spaattn: IPAR pooled probabilities P' and the p_remain / top_k critical-block count equal a float64 re-computation",
  function()
  local m = sl.methods.get("rectified_spaattn")
  local lay = sl.layout.video{frames = 2, height = 8, width = 8, text = 0}
  local n, hq, d, b = lay.n, 2, 8, 12
  local nb = (n + b - 1) // b
  local q, k = sl.randn({hq, n, d}, {seed = 841}), sl.randn({hq, n, d}, {seed = 842})
  local p = sl.registry.resolve(m, {block = b, drop_rate = 0.75, p_remain = 0.3, neighbours = false})
  local order = lay:order("gilbert")
  local perm = lay:perm_tensor({order})
  local qp, kp = sl.layout.permute(q, perm, "cpu"), sl.layout.permute(k, perm, "cpu")
  local P = m.probs(qp, kp, lay, b)
  local Q, K = q:totable(), k:totable()
  local top_k = math.floor((1 - p.drop_rate) * nb)
  local margin, by_cum = math.huge, 0
  for h = 1, hq do
    -- block means over the curve order: block I holds the tokens order[I·b + 1 .. (I+1)·b]
    local function means(X)
      local out = {}
      for I = 1, nb do
        local mrow, cnt = {}, 0
        for c = 1, d do mrow[c] = 0 end
        for pos = (I - 1) * b + 1, math.min(n, I * b) do
          local t = order[pos] + 1
          cnt = cnt + 1
          for c = 1, d do mrow[c] = mrow[c] + X[h][t][c] end
        end
        for c = 1, d do mrow[c] = mrow[c] / cnt end
        out[I] = mrow
      end
      return out
    end
    local qb, kb = means(Q), means(K)
    local keep = m.select(P[h], p, nb, nil, {}, nil)
    for I = 1, nb do
      local x, mx = {}, -math.huge
      for J = 1, nb do
        x[J] = dot(qb[I], kb[J]) / math.sqrt(d) + math.log(math.min(b, n - (J - 1) * b))
        mx = math.max(mx, x[J])
      end
      local z = 0
      for J = 1, nb do x[J] = math.exp(x[J] - mx); z = z + x[J] end
      for J = 1, nb do
        x[J] = x[J] / z
        near(P[h][I][J], x[J], 2e-6, string.format("head %d P' (%d, %d)", h, I, J))
      end
      local idx = {}
      for J = 1, nb do idx[J] = J end
      table.sort(idx, function(a, c) return x[a] > x[c] end)
      local cum, count = 0, 0
      for _, J in ipairs(idx) do
        cum = cum + x[J]
        margin = math.min(margin, math.abs(cum - p.p_remain))
        if cum <= p.p_remain then count = count + 1 else break end
      end
      if count + 1 > top_k then by_cum = by_cum + 1 end
      count = math.min(nb, math.max(count + 1, top_k))
      for r = 1, nb - 1 do margin = math.min(margin, x[idx[r]] - x[idx[r + 1]]) end
      local want = {}
      for r = 1, count do want[idx[r]] = true end
      for J = 1, nb do eq(keep[I][J], want[J] and 1 or 0, string.format("head %d kept (%d, %d)", h, I, J)) end
    end
  end
  truthy(margin > 1e-6, string.format("no cumulative sum on p_remain and no tie (%.3g)", margin))
  truthy(by_cum > 0, "the p_remain rule decides some rows (count + 1 > top_k): " .. by_cum)
end)

-- pq_code_match (issue 20, session 5): the card's steps 1-3 with the recipe's own fitted codebook (step 5,
-- a calibration, taken as given) — every q and k row's code per subspace = the L1-nearest codeword (ties:
-- lower index), match counts m_ij over the causal keys, slot = min(floor(4·m/S), 3), keys from the highest
-- slot down in ascending j until nnz = n / coeff — written here in float64, against the recipe's lists.
test("pq_code_match: product-quantised codes, match counts and the slot-ordered candidate lists equal a float64 re-computation",
  function()
  local m = sl.methods.get("pq_code_match")
  local hq, n, d = 2, 96, 16
  local q, k = sl.randn({hq, n, d}, {seed = 851}), sl.randn({1, n, d}, {seed = 852})
  local prob = sl.problem{q = q, k = k, v = sl.randn({1, n, d}, {seed = 853}), causal = true}
  local p = sl.registry.resolve(m, {subspaces = 4, codewords = 8, coeff = 8})
  local cb = m.fit({prob}, p)
  local rp, col, _, nnz = m.lists(prob, p, sl.tensor(cb))
  eq(nnz, n // 8, "nnz = n / coeff")
  local RP, COL = rp:totable(), col:totable()
  local Q, K = q:totable(), k:totable()
  local S, dc = 4, d // 4
  local margin = math.huge
  local function code(x)
    local out = {}
    for s0 = 1, S do
      local best, second, arg = math.huge, math.huge, 0
      for c = 1, #cb[1][s0] do
        local w, dist = cb[1][s0][c], 0
        for e = 1, dc do dist = dist + math.abs(x[(s0 - 1) * dc + e] - w[e]) end
        if dist < best then best, second, arg = dist, best, c elseif dist < second then second = dist end
      end
      margin = math.min(margin, second - best)
      out[s0] = arg
    end
    return out
  end
  local kc = {}
  for j = 1, n do kc[j] = code(K[1][j]) end
  local reordered = 0
  for h = 1, hq do
    for i = 1, n do
      local qc = code(Q[h][i])
      local by_slot = {{}, {}, {}, {}}
      for j = 1, i do
        local mcount = 0
        for s0 = 1, S do if qc[s0] == kc[j][s0] then mcount = mcount + 1 end end
        local slot = math.min(4 * mcount // S, 3)
        table.insert(by_slot[slot + 1], j - 1)
      end
      local want = {}
      for slot = 4, 1, -1 do
        for _, j in ipairs(by_slot[slot]) do if #want < nnz then want[#want + 1] = j end end
      end
      table.sort(want)
      if #want == nnz and want[nnz] ~= nnz - 1 then reordered = reordered + 1 end
      local a = RP[h][i]
      eq(RP[h][i + 1] - a, #want, string.format("head %d row %d: list length", h, i - 1))
      for t = 1, #want do eq(COL[a + t], want[t], string.format("head %d row %d entry %d", h, i - 1, t)) end
    end
  end
  truthy(margin > 1e-5, string.format("no code within 1e-5 of a tie (%.3g)", margin))
  truthy(reordered > n, "the slots reorder the candidates (rows whose list is not the first nnz keys: " .. reordered .. ")")
end)

-- adaspa (issue 20, session 5): the card's steps 1, 3, 4 — the exact block mass W[p, q] = Σ exp(s_ij − LSE_i)
-- with a fresh LSE, each head's recall at the base sparsity s (mean over block rows of the top-k row mass /
-- row mass), the head-adaptive sparsities (n = #recall > bar capped at H/2; the n highest get s + δ, the n
-- lowest s − δ, δ = min((1 − s)/2, s)), and each head's top round((1 − s_h)·nb) blocks per row — written here
-- in float64 from q and k, against the recipe's W and its executed block mask.
test("adaspa: exact block mass W, per-head recalls, adaptive sparsities and the row top-k blocks equal a float64 re-computation",
  function()
  local m = sl.methods.get("adaspa")
  local lay = sl.layout.video{frames = 2, height = 8, width = 8, text = 0}
  local n, hq, d, b = lay.n, 4, 16, 16
  local nb = n // b
  -- per-head key scales so that the heads' recalls differ clearly
  local Q, K = sl.randn({hq, n, d}, {seed = 861}):totable(), sl.randn({hq, n, d}, {seed = 862}):totable()
  for h = 1, hq do for j = 1, n do for c = 1, d do K[h][j][c] = K[h][j][c] * (0.4 + 0.5 * h) end end end
  local q, k = sl.tensor(Q), sl.tensor(K)
  local prob = sl.problem{q = q, k = k, v = sl.randn({hq, n, d}, {seed = 863}), causal = false, layout = lay}
  Q, K = q:totable(), k:totable()
  local s, bar = 0.5, 0.0
  local p = sl.registry.resolve(m, {block = b, sparsity = s, recall_bar = bar})
  local _, lse = sl.attn.dense(q, k, prob.v, {causal = false})
  local W = m.block_mass(prob, lse, p) -- a tensor [H, nqb, nkb] since issue 19's chunked reads
  if type(W) ~= "table" then W = W:totable() end
  local want, rec, margin = {}, {}, math.huge
  local function topk(row, cnt)
    local idx = {}
    for J = 1, nb do idx[J] = J end
    table.sort(idx, function(a, c) return row[a] > row[c] end)
    if cnt >= 1 and cnt < nb then margin = math.min(margin, row[idx[cnt]] - row[idx[cnt + 1]]) end
    local set, kept = {}, 0
    for x = 1, cnt do set[idx[x]] = true; kept = kept + row[idx[x]] end
    return set, kept
  end
  local k0 = math.floor((1 - s) * nb + 0.5)
  for h = 1, hq do
    want[h] = {}
    local r = 0
    for I = 1, nb do
      local row = {}
      for J = 1, nb do row[J] = 0 end
      for i = (I - 1) * b + 1, I * b do
        local pr = softmax_row(Q[h][i], K[h], n)
        for j = 1, n do row[(j - 1) // b + 1] = row[(j - 1) // b + 1] + pr[j] end
      end
      for J = 1, nb do near(W[h][I][J], row[J], 2e-5, string.format("head %d W (%d, %d)", h, I, J)) end
      want[h][I] = row
      local _, kept = topk(row, k0)
      local tot = 0
      for J = 1, nb do tot = tot + row[J] end
      near(tot, b, 1e-9, "a fresh-LSE row of W sums to the block's rows")
      r = r + kept / tot
    end
    rec[h] = r / nb
  end
  -- step 4 in float64
  local cnt = 0
  for h = 1, hq do if rec[h] > bar then cnt = cnt + 1 end end
  cnt = math.min(cnt, hq // 2)
  local order = {}
  for h = 1, hq do order[h] = h end
  table.sort(order, function(a, c) return rec[a] > rec[c] end)
  for x = 1, hq - 1 do margin = math.min(margin, rec[order[x]] - rec[order[x + 1]]) end
  local delta = math.min((1 - s) / 2, s)
  local sh = {}
  for h = 1, hq do sh[h] = s end
  for x = 1, cnt do sh[order[x]] = s + delta; sh[order[hq - x + 1]] = s - delta end
  eq(cnt, 2, "two heads shifted each way")
  local r = m.run(prob, p)
  local bits = sl.mask.as_block(r.mask):to_bits():totable()
  local distinct = {}
  for h = 1, hq do
    local kh = math.floor((1 - sh[h]) * nb + 0.5)
    distinct[kh] = true
    for I = 1, nb do
      local set = topk(want[h][I], kh)
      for J = 1, nb do
        eq(bits[h][(I - 1) * b + 1][(J - 1) * b + 1], set[J] and 1 or 0, string.format("head %d block (%d, %d)", h, I, J))
      end
    end
  end
  local nd = 0
  for _ in pairs(distinct) do nd = nd + 1 end
  eq(nd, 2, "the adaptive rule gives two keep counts")
  truthy(margin > 1e-6, string.format("no W entry or recall within 1e-6 of a cut (%.3g)", margin))
end)

-- light_forcing (issue 20, session 5): the card's Hierarchical Sparse Attention per query block — frame
-- scores = mean-pooled query block · mean of each cached frame's keys, the top ceil(2(1 − s)·F) candidate
-- frames (the sink frame apart), block scores inside them, the top round((1 − s)·F·blocks per frame) blocks;
-- ∪ the chunk's own frames and the sink frame — written here in float64 (only the rankings matter: no scale),
-- against the recipe's executed block mask.
test("light_forcing: frame-level then block-level pooled rankings of the cache equal a float64 re-computation",
  function()
  local lf = sl.methods.get("light_forcing")
  local F, hh, ww, hq, d, b, bq, sp = 8, 4, 8, 2, 16, 8, 16, 0.6
  local lay = sl.layout.video{frames = F, height = hh, width = ww, text = 0}
  local S, n_k = hh * ww, lay.n
  local n_q = 2 * S
  local q, k = sl.randn({hq, n_q, d}, {seed = 871}), sl.randn({hq, n_k, d}, {seed = 872})
  local prob = sl.problem{q = q, k = k, v = sl.randn({hq, n_k, d}, {seed = 873}), causal = false, layout = lay}
  local p = sl.registry.resolve(lf, {block = b, bq = bq, sparsity = sp})
  local out = lf.run(prob, p)
  local bits = sl.mask.as_block(out.mask):to_bits():totable()
  local Q, K = q:totable(), k:totable()
  local bpf, hist = S // b, F - n_q // S
  local cand = {}
  for f = 1, hist - 1 do cand[#cand + 1] = f end
  local nf = math.min(#cand, math.ceil(2 * (1 - sp) * #cand))
  local kb = math.floor((1 - sp) * #cand * bpf + 0.5)
  local margin = math.huge
  local function mean(X, a, c)
    local m = {}
    for e = 1, d do m[e] = 0 end
    for t = a, c do for e = 1, d do m[e] = m[e] + X[t][e] / (c - a + 1) end end
    return m
  end
  local function top(vals, ids, cnt)
    local idx = {}
    for _, x in ipairs(ids) do idx[#idx + 1] = x end
    table.sort(idx, function(a, c) return vals[a] > vals[c] end)
    if cnt < #idx then margin = math.min(margin, vals[idx[cnt]] - vals[idx[cnt + 1]]) end
    local set = {}
    for x = 1, cnt do set[idx[x]] = true end
    return set, idx
  end
  for h = 1, hq do
    for I = 1, n_q // bq do
      local qb = mean(Q[h], (I - 1) * bq + 1, I * bq)
      local fv = {}
      for _, f in ipairs(cand) do fv[f] = dot(qb, mean(K[h], f * S + 1, (f + 1) * S)) end
      local frames, ordered = top(fv, cand, nf)
      local bv, blocks = {}, {}
      for x = 1, nf do
        local f = ordered[x]
        for J = f * bpf, (f + 1) * bpf - 1 do
          blocks[#blocks + 1] = J
          bv[J] = dot(qb, mean(K[h], J * b + 1, (J + 1) * b))
        end
      end
      local chosen = top(bv, blocks, kb)
      for J = 0, n_k // b - 1 do
        local f = J // bpf
        local want = f == 0 or f >= hist or (chosen[J] == true and frames[f] == true)
        eq(bits[h][(I - 1) * bq + 1][J * b + 1], want and 1 or 0, string.format("head %d query block %d key block %d", h, I, J))
      end
    end
  end
  truthy(margin > 1e-5, string.format("no frame or block score within 1e-5 of a cut (%.3g)", margin))
end)

-- sparse_videogen (issue 20, session 5): the card's online profiling — for the sampled query rows, the dense
-- output, the output under the spatial band (blocks |I − J| < w in frame-major order, text keys on) and under
-- the temporal band (the same band in token-major order), per head the squared error of each candidate; the
-- head is temporal when its temporal error is smaller — written here in float64 from q, k, v (the sampled rows
-- and the token-major order are the layout's helpers, not estimator quantities), against the recipe's kinds.
test("sparse_videogen: profiling errors of the spatial and temporal bands on the sampled rows, and the head kinds, equal a float64 re-computation",
  function()
  local svg = sl.methods.get("sparse_videogen")
  local video = require "sparselab.video"
  local q, k, v, _, lay = sl.layout.video_workload{frames = 4, height = 8, width = 8, text = 8, heads = 8, seed = 21}
  local prob = sl.problem{q = q, k = k, v = v, causal = false, layout = lay}
  local p = sl.registry.resolve(svg, {block = 16, rows = 16, density = 0.3})
  local n, b = lay.n, p.block
  local w = svg.width_blocks(p, n, lay.text)
  local kinds = svg.classify(prob, p, lay, w)
  local rows = video.sample(lay.video0, lay.video0 + math.min(p.max_row, lay.n_video), p.rows, p.seed)
  local order = lay:order("yxf")
  local where = {}
  for pos, t in ipairs(order) do where[t] = pos - 1 end
  local Q, K, V = q:totable(), k:totable(), v:totable()
  local hq, d = #Q, #Q[1][1]
  local t0 = lay.text_first and 0 or lay.n_video
  -- keys (original token ids) of the band around position pos of an order (tok: position -> token id)
  local function band(pos, tok)
    local I = pos // b
    local out = {}
    for j = math.max(0, (I - w + 1) * b), math.min(n, (I + w) * b) - 1 do out[tok(j)] = true end
    for j = t0, t0 + lay.text - 1 do out[j] = true end
    return out
  end
  local function attend(h, i, set)
    local g = (h - 1) // (hq // #K) + 1
    local sc, mx = {}, -math.huge
    for j = 0, n - 1 do
      if set == nil or set[j] then sc[j] = dot(Q[h][i + 1], K[g][j + 1]) / math.sqrt(d); mx = math.max(mx, sc[j]) end
    end
    local o, z = {}, 0
    for c = 1, d do o[c] = 0 end
    for j, x in pairs(sc) do
      local e = math.exp(x - mx)
      z = z + e
      for c = 1, d do o[c] = o[c] + e * V[g][j + 1][c] end
    end
    for c = 1, d do o[c] = o[c] / z end
    return o
  end
  local seen = {}
  for h = 1, hq do
    local es, et = 0, 0
    for _, i in ipairs(rows) do
      local ref = attend(h, i, nil)
      local os_ = attend(h, i, band(i, function(j) return j end))
      local ot = attend(h, i, band(where[i], function(j) return order[j + 1] end))
      for c = 1, d do es = es + (os_[c] - ref[c]) ^ 2; et = et + (ot[c] - ref[c]) ^ 2 end
    end
    truthy(math.abs(es - et) > 1e-6 * (es + et), string.format("head %d: the two errors are apart (%.3g, %.3g)", h, es, et))
    local want = et < es and 1 or 0
    eq(kinds[h], want, string.format("head %d kind (spatial error %.4g, temporal %.4g)", h, es, et))
    seen[want] = true
  end
  truthy(seen[0] and seen[1], "both head kinds occur")
end)

-- rainfusion (issue 20, session 5): the card's ARM — for the sampled first-frame queries, the exact softmax
-- mass R'(M) inside the temporal pattern (kh x kw positions around (y, x) in every frame, kh = round(sqrt(bw)·H))
-- and inside the spatial one (the cf = round(bw·F) frames around the query's frame, NATTEN's shifted window),
-- text keys in both, averaged over the rows; temporal if R'(temporal) >= alpha, else spatial if R'(spatial)
-- >= alpha, else textural — written here in float64 (the sampled rows are the recipe's, a sampling helper),
-- against the recipe's recalls and head kinds.
test("rainfusion: ARM masses of the temporal and spatial patterns on the sampled rows, and the head kinds, equal a float64 re-computation",
  function()
  local rf = sl.methods.get("rainfusion")
  local video = require "sparselab.video"
  local q, k, v, _, lay = sl.layout.video_workload{frames = 4, height = 8, width = 8, text = 8, heads = 6, seed = 5,
    spatial_len = 6}
  local prob = sl.problem{q = q, k = k, v = v, causal = false, layout = lay}
  local p = sl.registry.resolve(rf, {})
  local rows = rf.sample_rows(lay, p)
  local heads = rf.classify(prob, lay, p)
  local Q, K = q:totable(), k:totable()
  local hq, hk, d = #Q, #K, #Q[1][1]
  local F, Hh, W = lay.frames, lay.height, lay.width
  local function rnd(x) return math.floor(x + 0.5) end
  local bw = p.bandwidth
  local cf = math.max(1, math.min(F, rnd(bw * F)))
  local kh, kw = math.max(1, math.min(Hh, rnd(math.sqrt(bw) * Hh))), math.max(1, math.min(W, rnd(math.sqrt(bw) * W)))
  local function win(x, kk, X)
    local lf = kk // 2
    local c = math.min(math.max(x, lf), X - 1 - (kk - 1 - lf))
    return c - lf, c - lf + kk - 1
  end
  -- token t (0-based video token, frame-major, text after the video) -> f, y, x
  local function coord(t) return t // (Hh * W), (t // W) % Hh, t % W end
  local function inside(t, j, kf, ky, kx)
    if j >= lay.n_video then return true end
    local f, y, x = coord(t)
    local g, yy, xx = coord(j)
    local f0, f1 = win(f, kf, F)
    local y0, y1 = win(y, ky, Hh)
    local x0, x1 = win(x, kx, W)
    return g >= f0 and g <= f1 and yy >= y0 and yy <= y1 and xx >= x0 and xx <= x1
  end
  local _, ref_lse = video.dense_rows(prob, rows)
  local got_t = rf.recalls(prob, lay, rows, {F, kh, kw}, ref_lse)
  local got_s = rf.recalls(prob, lay, rows, {cf, Hh, W}, ref_lse)
  local seen, margin = {}, math.huge
  for h = 1, hq do
    local g = (h - 1) // (hq // hk) + 1
    local rt, rs = 0, 0
    for _, t in ipairs(rows) do
      local pr = softmax_row(Q[h][t + 1], K[g], lay.n)
      for j = 0, lay.n - 1 do
        if inside(t, j, F, kh, kw) then rt = rt + pr[j + 1] end
        if inside(t, j, cf, Hh, W) then rs = rs + pr[j + 1] end
      end
    end
    rt, rs = rt / #rows, rs / #rows
    near(got_t[h], rt, 2e-5, "head " .. h .. ": R'(temporal)")
    near(got_s[h], rs, 2e-5, "head " .. h .. ": R'(spatial)")
    margin = math.min(margin, math.abs(rt - p.alpha), math.abs(rs - p.alpha))
    local want = rt >= p.alpha and "temporal" or (rs >= p.alpha and "spatial" or "textural")
    eq(heads[h].kind, want, string.format("head %d kind (R' temporal %.4f, spatial %.4f)", h, rt, rs))
    seen[want] = true
  end
  truthy(margin > 1e-5, string.format("no R' within 1e-5 of alpha (%.3g)", margin))
  local kinds = 0
  for _ in pairs(seen) do kinds = kinds + 1 end
  truthy(kinds >= 2, "at least two head kinds occur")
end)

H.done()
