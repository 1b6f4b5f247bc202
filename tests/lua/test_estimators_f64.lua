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

H.done()
