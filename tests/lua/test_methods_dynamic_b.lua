-- test_methods_dynamic_b.lua — the dynamic recipes of issue 4, group b
-- (sparge_attn, seer_attention, prism, sale, unisparse, dhsa, biformer,
-- sparse_flash_attention, hsr_attention): each card's checks on small
-- seeded random inputs (GQA 4:2, ragged n). Common checks: the budget at
-- "everything" equals dense (1e-5), recall is monotone in the knob, the
-- output equals an independent float64 attention over the method's own
-- mask (plain Lua loops), masks never look ahead; then each card's own
-- checks, with the estimators recomputed independently here in float64
-- (block means, cosine self-similarity, max-pooled softmax maps, relative
-- scores, LSH buckets, chunk scores). Run with
-- LUA_CPATH=build/?.so lua5.4 tests/lua/test_methods_dynamic_b.lua
package.path = "tests/lua/?.lua;" .. package.path
local H = require "harness"
local sl = require "sparselab"
local test, near, eq, truthy = H.test, H.near, H.eq, H.truthy

local HQ, HKV = 4, 2

local function problem(n, d, seed, causal, opts)
  opts = opts or {}
  local q = sl.randn({HQ, n, d}, {seed = seed, std = opts.std or 1})
  local k = sl.randn({HKV, n, d}, {seed = seed + 1, std = opts.std or 1})
  local v = sl.randn({HKV, n, d}, {seed = seed + 2})
  return sl.problem{q = q, k = k, v = v, causal = causal}, {q = q:totable(), k = k:totable(), v = v:totable(), n = n, d = d}
end

local function flat(x, out)
  out = out or {}
  if type(x) == "table" then for _, y in ipairs(x) do flat(y, out) end else out[#out + 1] = x end
  return out
end

local function rel_l2(got, want)
  local a, b = flat(got), flat(want)
  assert(#a == #b, "sizes differ")
  local num, den = 0, 0
  for i = 1, #a do
    local x, y = a[i], b[i]
    if y == -math.huge and x == -math.huge then x, y = 0, 0 end
    num = num + (x - y) ^ 2; den = den + y ^ 2
  end
  return math.sqrt(num / math.max(den, 1e-300))
end

-- float64 attention with keep(h, i, j) (0-based), empty rows O = 0, L = -inf
local function reference(t, keep)
  local o, lse = {}, {}
  local g = HQ // HKV
  local scale = 1 / math.sqrt(t.d)
  for h = 0, HQ - 1 do
    local Q, K, V = t.q[h + 1], t.k[h // g + 1], t.v[h // g + 1]
    o[h + 1], lse[h + 1] = {}, {}
    for i = 0, t.n - 1 do
      local s, mx = {}, -math.huge
      for j = 0, t.n - 1 do
        if keep(h, i, j) then
          local dot = 0
          for c = 1, t.d do dot = dot + Q[i + 1][c] * K[j + 1][c] end
          s[j] = dot * scale
          if s[j] > mx then mx = s[j] end
        end
      end
      local z, acc = 0, {}
      for c = 1, t.d do acc[c] = 0 end
      for j, x in pairs(s) do
        local w = math.exp(x - mx)
        z = z + w
        for c = 1, t.d do acc[c] = acc[c] + w * V[j + 1][c] end
      end
      for c = 1, t.d do acc[c] = z > 0 and acc[c] / z or 0 end
      o[h + 1][i + 1] = acc
      lse[h + 1][i + 1] = z > 0 and mx + math.log(z) or -math.huge
    end
  end
  return o, lse
end

-- keep function of a mask (bits per mask head, query heads share by h // (HQ / Hm))
local function keep_of(m)
  local bits = m:to_bits():totable()
  local hm = #bits
  return function(h, i, j) return bits[h // (HQ // hm) + 1][i + 1][j + 1] == 1 end, bits
end

local function check_against_mask(id, prob, t, params)
  local r = sl.eval(id, prob, {params = params})
  truthy(r.mask, id .. " returns its mask")
  local keep = keep_of(r.mask)
  local o, lse = reference(t, keep)
  local e_o, e_l = rel_l2(r.o:totable(), o), rel_l2(r.lse:totable(), lse)
  truthy(e_o <= 1e-5, string.format("%s: o vs float64 over its mask: rel_l2 %.3g", id, e_o))
  truthy(e_l <= 1e-5, string.format("%s: lse vs float64 over its mask: rel_l2 %.3g", id, e_l))
  if prob.causal then eq(r.mask:causal_violations(), 0, id .. ": kept pairs after the query") end
  return r
end

local function is_dense(r, what)
  truthy(r.metrics.rel_l2 <= 1e-5, string.format("%s: rel_l2 vs dense %.3g", what, r.metrics.rel_l2))
  near(r.metrics.density, 1, 1e-12, what .. " density")
end

-- recall_mean non-decreasing when the knob moves toward "more kept"
local function monotone(id, prob, params, values)
  local m = sl.methods.get(id)
  local prev = -1
  for _, v in ipairs(values) do
    local r = sl.eval(id, prob, {params = params, budget = v})
    truthy(r.metrics.recall_mean >= prev - 1e-9,
      string.format("%s: recall %.6f at %s=%s below %.6f at the previous value", id, r.metrics.recall_mean, m.knob,
        tostring(v), prev))
    prev = r.metrics.recall_mean
  end
  return prev
end

local function pooled_means(x, b)
  -- x: table [H][n][d]; mean of each block of b rows (last ragged)
  local out = {}
  for h = 1, #x do
    out[h] = {}
    local n, d = #x[h], #x[h][1]
    for s = 0, (n + b - 1) // b - 1 do
      local v, cnt = {}, 0
      for c = 1, d do v[c] = 0 end
      for i = s * b + 1, math.min((s + 1) * b, n) do
        cnt = cnt + 1
        for c = 1, d do v[c] = v[c] + x[h][i][c] end
      end
      for c = 1, d do v[c] = v[c] / cnt end
      out[h][s + 1] = v
    end
  end
  return out
end

-- ---- ops from Lua: an independent float64 check of the estimators ----------

test("pool.tokens equals plain float64 block means and segment means x sqrt(len)", function()
  local _, t = problem(37, 6, 11, true)
  local x = sl.tensor(t.q)
  local got = sl.pool.tokens(x, {block = 5}):totable()
  local want = pooled_means(t.q, 5)
  truthy(rel_l2(got, want) < 1e-6, "block means")
  local starts = {0, 4, 5, 20}
  local seg = sl.pool.tokens(x, {bounds = sl.tensor(starts, "i32"), len_norm = 1}):totable()
  for h = 1, HQ do
    for s = 1, #starts do
      local a, b = starts[s], s < #starts and starts[s + 1] or 37
      for c = 1, 6 do
        local m = 0
        for i = a + 1, b do m = m + t.q[h][i][c] end
        near(seg[h][s][c], m / (b - a) * math.sqrt(b - a), 1e-5, "segment mean x sqrt(len)")
      end
    end
  end
end)

test("score.lowbit at 16 bits equals float64 max relative score per block", function()
  local prob, t = problem(45, 8, 21, true)
  local _, lse = sl.attn.dense(prob.q, prob.k, prob.v)
  local L = lse:totable()
  local got = sl.score.lowbit(prob.q, prob.k, {lse = lse, bq = 8, bk = 4, bits = 16}):totable()
  for h = 1, HQ do
    local Q, K = t.q[h], t.k[(h - 1) // 2 + 1]
    for r = 1, 6 do
      for c = 1, 12 do
        local best = -math.huge
        for i = (r - 1) * 8 + 1, math.min(r * 8, 45) do
          for j = (c - 1) * 4 + 1, math.min(c * 4, i) do
            local s = 0
            for e = 1, 8 do s = s + Q[i][e] * K[j][e] end
            best = math.max(best, s / math.sqrt(8) - L[h][i])
          end
        end
        if best == -math.huge then eq(got[h][r][c], -math.huge, "future block")
        else near(got[h][r][c], best, 1e-4, string.format("head %d block (%d, %d)", h, r, c)) end
      end
    end
  end
end)

-- ---- sparse_flash_attention --------------------------------------------------

test("sparse_flash_attention: nb_hash 1 and keep-all dropping equal dense", function()
  local prob = problem(70, 8, 31, true)
  is_dense(sl.eval("sparse_flash_attention", prob, {params = {nb_hash = 1}}), "one bucket")
  is_dense(sl.eval("sparse_flash_attention", prob, {params = {variant = 1, sparsity = 0}}), "keep-all drop")
end)

test("sparse_flash_attention: hash variant equals float64 over independently computed LSH buckets", function()
  local n, d = 83, 8
  local prob, t = problem(n, d, 41, true)
  local nb = 4
  -- the recipe's rotation: seeded normal [Hq, d, nb/2], unit columns
  local R = sl.randn({HQ, d, nb // 2}, {seed = 3}):totable()
  local function bucket(h, x)
    local best, arg = -math.huge, nil
    for side = 0, 1 do
      for c = 1, nb // 2 do
        local norm, v = 0, 0
        for e = 1, d do norm = norm + R[h][e][c] ^ 2 end
        for e = 1, d do v = v + x[e] * R[h][e][c] / math.sqrt(norm) end
        if side == 1 then v = -v end
        if v > best then best, arg = v, side * (nb // 2) + c end
      end
    end
    return arg
  end
  local qb, kb = {}, {}
  for h = 1, HQ do
    qb[h], kb[h] = {}, {}
    for i = 1, n do qb[h][i] = bucket(h, t.q[h][i]); kb[h][i] = bucket(h, t.k[(h - 1) // 2 + 1][i]) end
  end
  local keep = function(h, i, j) return j <= i and qb[h + 1][i + 1] == kb[h + 1][j + 1] end
  local r = sl.eval("sparse_flash_attention", prob, {params = {nb_hash = nb, seed = 3}})
  local o, lse = reference(t, keep)
  truthy(rel_l2(r.o:totable(), o) < 1e-5, "o")
  truthy(rel_l2(r.lse:totable(), lse) < 1e-5, "lse")
  -- density from the counts = independent pair count; the reported mask is the same set
  local kept, total = 0, 0
  for h = 0, HQ - 1 do for i = 0, n - 1 do for j = 0, i do total = total + 1; if keep(h, i, j) then kept = kept + 1 end end end end
  near(r.metrics.density, kept / total, 1e-12, "density")
  near(r.mask:density(), kept / total, 1e-12, "mask density")
  -- empty rows: output exactly 0, no NaN
  local ot = r.o:totable()
  for h = 1, HQ do
    for i = 1, n do
      local any = false
      for j = 1, i do if qb[h][i] == kb[h][j] then any = true end end
      if not any then for c = 1, d do eq(ot[h][i][c], 0, "empty row output") end end
    end
  end
  truthy(r.metrics.tiles_touched >= 1, "tiles touched reported")
end)

test("sparse_flash_attention: QK-dropping zeroes dropped rows and matches its mask", function()
  local prob, t = problem(64, 8, 51, true)
  local r = check_against_mask("sparse_flash_attention", prob, t, {variant = 1, sparsity = 0.5, seed = 7})
  truthy(r.metrics.density < 0.6 and r.metrics.density > 0.05, "about a quarter of the pairs: " .. r.metrics.density)
  local bits = r.mask:to_bits():totable()
  local ot = r.o:totable()
  local dropped = 0
  for h = 1, HQ do
    local b = bits[math.min(h, #bits)]
    for i = 1, 64 do
      local any = false
      for j = 1, 64 do if b[i][j] == 1 then any = true end end
      if not any then
        dropped = dropped + 1
        for c = 1, 8 do eq(ot[h][i][c], 0, "dropped query row") end
      end
    end
  end
  truthy(dropped > 0, "some query rows dropped")
  monotone("sparse_flash_attention", prob, {}, {64, 16, 4, 1})
end)

-- ---- hsr_attention -----------------------------------------------------------

test("hsr_attention: tau = -inf equals dense; reported set equals brute force; recall monotone", function()
  local prob, t = problem(60, 8, 61, true)
  is_dense(sl.eval("hsr_attention", prob, {params = {tau = -1e30}}), "tau -inf")
  for _, tau in ipairs{0, 0.8} do
    local keep = function(h, i, j)
      if j > i then return false end
      local s = 0
      local Q, K = t.q[h + 1][i + 1], t.k[h // 2 + 1][j + 1]
      for c = 1, t.d do s = s + Q[c] * K[c] end
      return s / math.sqrt(t.d) >= tau
    end
    local r = sl.eval("hsr_attention", prob, {params = {tau = tau}})
    local o, lse = reference(t, keep)
    truthy(rel_l2(r.o:totable(), o) < 1e-5, "o at tau " .. tau)
    truthy(rel_l2(r.lse:totable(), lse) < 1e-5, "lse at tau " .. tau)
    local m = sl.methods.get("hsr_attention").mask(prob, {tau = tau})
    near(m:density(), r.metrics.density, 1e-12, "mask density = counted density")
    truthy(r.metrics.report_exponent > 0 and r.metrics.report_exponent < 1, "exponent in (0, 1)")
  end
  monotone("hsr_attention", prob, {}, {2, 1, 0.5, 0, -1, -1e30})
end)

-- ---- dhsa --------------------------------------------------------------------

local DH = {b = 16, local_tokens = 32, global_tokens = 8, instruction_tokens = 12, chunk = 16}
local function dh(extra)
  local p = {}
  for k, v in pairs(DH) do p[k] = v end
  for k, v in pairs(extra or {}) do p[k] = v end
  return p
end

test("dhsa: topk >= n equals dense; output equals float64 over its mask", function()
  local prob, t = problem(150, 8, 71, true)
  is_dense(sl.eval("dhsa", prob, {params = dh{topk_tokens = 200}}), "topk >= n")
  check_against_mask("dhsa", prob, t, dh{topk_tokens = 64})
  check_against_mask("dhsa", prob, t, dh{topk_tokens = 64, splice = 1, chunk = 10})
  monotone("dhsa", prob, dh{}, {40, 64, 96, 150})
end)

test("dhsa: locals, globals, instruction rows kept; chunks chosen whole by independent chunk scores", function()
  local n, b = 160, 16
  local prob, t = problem(n, 8, 81, true)
  local p = dh{topk_tokens = 64}
  local r = sl.eval("dhsa", prob, {params = p})
  local bits = r.mask:to_bits():totable()[1]
  eq(#r.mask:to_bits():totable(), 1, "one mask for every head")
  -- independent chunk scores: head-averaged means x sqrt(len), fixed chunks of 16
  local function havg(x, H)
    local pm = pooled_means(x, b)
    local out = {}
    for r0 = 1, #pm[1] do
      local v = {}
      for c = 1, #pm[1][r0] do
        local s = 0
        for h = 1, H do s = s + pm[h][r0][c] end
        v[c] = s / H * math.sqrt(b)
      end
      out[r0] = v
    end
    return out
  end
  local qh, kh = havg(t.q, HQ), havg(t.k, HKV)
  for r0 = 1, n // b do
    local first, A = (r0 - 1) * b, r0 * b
    for i = first, A - 1 do
      for j = 0, i do
        if j < p.global_tokens or j >= A - p.local_tokens or i >= n - p.instruction_tokens then
          eq(bits[i + 1][j + 1], 1, string.format("forced pair (%d, %d)", i, j))
        end
      end
    end
    if first < n - p.instruction_tokens and A > p.topk_tokens then
      -- selected chunks: the top (topk - local) / 16 = 2 chunks among those before the local part
      local lo = A - p.local_tokens
      local scores, order = {}, {}
      for c = 1, lo // b do
        local s = 0
        for e = 1, 8 do s = s + qh[r0][e] * kh[c][e] end
        scores[c] = s
        order[#order + 1] = c
      end
      table.sort(order, function(x, y) if scores[x] ~= scores[y] then return scores[x] > scores[y] end return x > y end)
      local want = {}
      for i = 1, math.min(2, #order) do want[order[i]] = true end
      for c = 1, lo // b do
        for j = (c - 1) * b, c * b - 1 do
          if j >= p.global_tokens then
            eq(bits[first + 1][j + 1] == 1, want[c] == true, string.format("block %d chunk %d token %d", r0, c, j))
          end
        end
      end
    end
  end
end)

test("dhsa: equal chunks rank the same with and without length normalisation", function()
  local prob = problem(128, 8, 91, true)
  local a = sl.methods.get("dhsa").mask(prob, sl.registry.resolve(sl.methods.get("dhsa"), dh{topk_tokens = 64, norm = 1}))
  local b = sl.methods.get("dhsa").mask(prob, sl.registry.resolve(sl.methods.get("dhsa"), dh{topk_tokens = 64, norm = 0}))
  eq((a - b):info().nnz + (b - a):info().nnz, 0, "same selection")
end)

H.done()
