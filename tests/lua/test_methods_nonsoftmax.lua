-- test_methods_nonsoftmax.lua — the non-softmax recipes of issue 16 (entmax
-- so far): each card's checks on small seeded random inputs (GQA 4:2), with
-- the weights recomputed independently here in float64 (plain Lua loops).
-- Non-softmax outputs have no log-sum-exp: the evaluation records rel_l2 /
-- cosine against softmax and no recall, checked here. Run with
-- LUA_CPATH=build/?.so lua5.4 tests/lua/test_methods_nonsoftmax.lua
package.path = "tests/lua/?.lua;" .. package.path
local H = require "harness"
local sl = require "sparselab"
local test, near, eq, truthy = H.test, H.near, H.eq, H.truthy

local HQ, HKV = 4, 2

local function problem(n, d, seed, causal, std)
  local q = sl.randn({HQ, n, d}, {seed = seed, std = std or 1})
  local k = sl.randn({HKV, n, d}, {seed = seed + 1, std = std or 1})
  local v = sl.randn({HKV, n, d}, {seed = seed + 2})
  return sl.problem{q = q, k = k, v = v, causal = causal}, {q = q:totable(), k = k:totable(), v = v:totable(), n = n, d = d}
end

-- float64 scaled scores of row i (1-based) of head h over its visible keys
local function scores(t, h, i, causal)
  local g = (h - 1) // (HQ // HKV) + 1
  local z, lim = {}, causal and i or t.n
  for j = 1, lim do
    local s = 0
    for c = 1, t.d do s = s + t.q[h][i][c] * t.k[g][j][c] end
    z[j] = s / math.sqrt(t.d)
  end
  return z
end

-- sparsemax weights by Michelot's projection algorithm (no sort): start from
-- every key, τ = (Σ_S z - 1)/|S|, drop keys with z <= τ, repeat until stable
local function sparsemax(z)
  local S = {}
  for j = 1, #z do S[j] = true end
  local tau
  repeat
    local sum, cnt = 0, 0
    for j in pairs(S) do sum = sum + z[j]; cnt = cnt + 1 end
    tau = (sum - 1) / cnt
    local changed = false
    for j in pairs(S) do if z[j] <= tau then S[j] = nil; changed = true end end
  until not changed
  local p = {}
  for j = 1, #z do p[j] = S[j] and z[j] - tau or 0 end
  return p
end

local function output_of(t, h, i, p)
  local g = (h - 1) // (HQ // HKV) + 1
  local o = {}
  for c = 1, t.d do
    local s = 0
    for j = 1, #p do s = s + p[j] * t.v[g][j][c] end
    o[c] = s
  end
  return o
end

test("entmax: sparsemax output equals Michelot's projection (float64); support counts match", function()
  for _, backend in ipairs{"ref", "cpu"} do
    for _, causal in ipairs{true, false} do
      local prob, t = problem(24, 8, 1601, causal, 2)
      prob.backend = backend
      local m = sl.methods.get("entmax")
      local out = m.run(prob, sl.registry.resolve(m, {algo = "sort"}, 2))
      local o, sup = out.o:totable(), out.support:totable()
      for h = 1, HQ do
        for i = 1, t.n do
          local p = sparsemax(scores(t, h, i, causal))
          local want = output_of(t, h, i, p)
          for c = 1, t.d do near(o[h][i][c], want[c], 1e-5, backend .. " O") end
          local pos = 0
          for j = 1, #p do if p[j] > 0 then pos = pos + 1 end end
          eq(sup[h][i], pos, backend .. " support")
        end
      end
    end
  end
end)

test("entmax: the support is the top-|S| scores; a score-blind support of the same size fails the check", function()
  local prob, t = problem(32, 8, 1602, true, 2)
  local m = sl.methods.get("entmax")
  local out = m.run(prob, sl.registry.resolve(m, {}, 2))
  local sup = out.support:totable()
  local blind_ok, rows = 0, 0
  for h = 1, HQ do
    for i = 4, t.n do
      local z = scores(t, h, i, true)
      local order = {}
      for j = 1, #z do order[j] = j end
      table.sort(order, function(a, b) return z[a] > z[b] end)
      local s = sup[h][i]
      -- the method's weights, from its own output's projection, keep exactly the top s
      local p = sparsemax(z)
      for r = 1, #order do eq(p[order[r]] > 0, r <= s, "top-s support") end
      -- score-blind: the first s keys, weights z - τ' renormalised over them
      local first = {}
      for j = 1, s do first[j] = true end
      local same = true
      for r = 1, s do if not first[order[r]] then same = false end end
      if same then blind_ok = blind_ok + 1 end
      rows = rows + 1
    end
  end
  truthy(blind_ok < rows / 4, string.format("first-k support matched the method's in %d of %d rows", blind_ok, rows))
end)

test("entmax: density falls as alpha grows; alpha 1 is dense softmax (rel_l2 0, no recall recorded)", function()
  local prob = problem(40, 16, 1603, true, 1.5)
  local d1 = sl.eval("entmax", prob, {params = {alpha = 1}})
  near(d1.metrics.rel_l2, 0, 1e-5, "alpha 1 vs dense")
  near(d1.metrics.density, 1, 1e-12, "alpha 1 density")
  eq(d1.metrics.recall_mean, nil, "no recall for a non-softmax method")
  local d15 = sl.eval("entmax", prob, {params = {alpha = 1.5}})
  local d2 = sl.eval("entmax", prob, {params = {alpha = 2}})
  truthy(d2.metrics.density < d15.metrics.density and d15.metrics.density < 1,
    string.format("density alpha 1.5 %.3f, 2 %.3f", d15.metrics.density, d2.metrics.density))
  truthy(d2.metrics.rel_l2 > d15.metrics.rel_l2, "sparser weights move further from softmax")
  local b2 = sl.eval("entmax", prob, {params = {alpha = 2, algo = "bisect"}})
  near(b2.metrics.rel_l2, d2.metrics.rel_l2, 1e-4, "bisection vs sort")
  near(b2.metrics.density, d2.metrics.density, 0.01, "bisection vs sort density")
  H.raises(function() sl.eval("entmax", prob, {params = {alpha = 1.7}}) end, "needs alpha 1, 1.5 or 2", "sort at 1.7")
  local b17 = sl.eval("entmax", prob, {params = {alpha = 1.7, algo = "bisect"}})
  truthy(b17.metrics.density < d15.metrics.density and b17.metrics.density > d2.metrics.density, "alpha 1.7 between")
end)

-- float64 ReLU attention rows (independent of attn.relu): weights max(z - b, 0)^a
local function relu_row(t, h, i, causal, a, b, keys)
  local z = scores(t, h, i, causal)
  local g = (h - 1) // (HQ // HKV) + 1
  local o, den, cnt = {}, 0, 0
  for c = 1, t.d do o[c] = 0 end
  for j = 1, #z do
    if (not keys or keys[j]) and z[j] - b > 0 then
      local w = (z[j] - b) ^ a
      den = den + w; cnt = cnt + 1
      for c = 1, t.d do o[c] = o[c] + w * t.v[g][j][c] end
    end
  end
  return o, den, cnt
end

test("rela: output equals float64 ReLU attention + gated RMSNorm over the concatenated heads; density counts nonzeros", function()
  for _, backend in ipairs{"ref", "cpu"} do
    local prob, t = problem(20, 8, 1604, true)
    prob.backend = backend
    local m = sl.methods.get("rela")
    for _, stab in ipairs{"none", "gated", "rms"} do
      local out = m.run(prob, sl.registry.resolve(m, {stabilise = stab}))
      local y = out.o:totable()
      local kept, pairs = 0, 0
      for i = 1, t.n do
        local rows, ms = {}, 0
        for h = 1, HQ do
          local o, _, cnt = relu_row(t, h, i, true, 1, 0)
          rows[h] = o
          kept = kept + cnt; pairs = pairs + i
          for c = 1, t.d do ms = ms + o[c] * o[c] end
        end
        ms = ms / (HQ * t.d)
        for h = 1, HQ do
          for c = 1, t.d do
            local u, want = rows[h][c], rows[h][c]
            if stab ~= "none" then want = u / math.sqrt(ms + 1.1920928955078125e-07) end
            if stab == "gated" then want = want / (1 + math.exp(-u)) end
            near(y[h][i][c], want, 1e-4 * math.max(1, math.abs(want)), backend .. " " .. stab)
          end
        end
      end
      near(out.stats.density, kept / pairs, 1e-12, "density")
      truthy(out.stats.density > 0.2 and out.stats.density < 0.8, "ReLU zeroes about half the weights")
    end
  end
end)

test("rela: scaling V leaves the RMS-normalised output unchanged; no recall recorded", function()
  local prob = problem(24, 8, 1605, true)
  local m = sl.methods.get("rela")
  local r1 = m.run(prob, sl.registry.resolve(m, {stabilise = "rms"}))
  local prob3 = sl.problem{q = prob.q, k = prob.k, v = sl.tensor((function()
    local v = prob.v:totable()
    for a = 1, #v do for b = 1, #v[a] do for c = 1, #v[a][b] do v[a][b][c] = 3 * v[a][b][c] end end end
    return v end)())}
  local r3 = m.run(prob3, sl.registry.resolve(m, {stabilise = "rms"}))
  local a, b = r1.o:totable(), r3.o:totable()
  for h = 1, HQ do for i = 1, 24 do for c = 1, 8 do near(b[h][i][c], a[h][i][c], 1e-4, "scale invariance") end end end
  local r = sl.eval("rela", prob, {})
  eq(r.metrics.recall_mean, nil, "no recall for ReLA")
  truthy(r.metrics.rel_l2 > 0, "rel_l2 recorded")
end)

test("hsr_attention relu: thresholded ReLU^α equals float64 ReLU^α over the reported set only; the set is score-driven", function()
  local prob, t = problem(24, 8, 1606, true, 1.5)
  for _, norm in ipairs{0, 1} do
    local m = sl.methods.get("hsr_attention")
    local out = m.run(prob, sl.registry.resolve(m, {activation = "relu", alpha = 2, relu_norm = norm}, 0.5))
    local o, cnt = out.o:totable(), out.count:totable()
    local blind_err = 0
    for h = 1, HQ do
      for i = 1, t.n do
        local z = scores(t, h, i, true)
        local report, n_rep = {}, 0
        for j = 1, #z do if z[j] > 0.5 then report[j] = true; n_rep = n_rep + 1 end end
        local want, den = relu_row(t, h, i, true, 2, 0.5, report)
        eq(cnt[h][i], n_rep, "count = |S_i|")
        -- a score-blind report of the same size (the first n_rep keys) gives another output
        local first = {}
        for j = 1, n_rep do first[j] = true end
        local blind, bden = relu_row(t, h, i, true, 2, 0.5, first)
        for c = 1, t.d do
          local w = norm == 1 and (den > 0 and want[c] / den or 0) or want[c]
          near(o[h][i][c], w, 1e-4 * math.max(1, math.abs(w)), "ReLU^α over S_i")
          local bw = norm == 1 and (bden > 0 and blind[c] / bden or 0) or blind[c]
          blind_err = math.max(blind_err, math.abs(bw - w))
        end
      end
    end
    truthy(blind_err > 1e-2, "a first-k report would pass the check")
  end
  local r = sl.eval("hsr_attention", prob, {params = {activation = "relu"}, budget = -1e4})
  eq(r.metrics.recall_mean, nil, "no recall for ReLU^α")
end)

test("gated_attention: q_proj split per KV group matches a hand-built projection (headwise and elementwise)", function()
  local ga = sl.methods.get("gated_attention")
  local hq, hkv, d = 4, 2, 3
  for _, elementwise in ipairs{false, true} do
    local w = elementwise and d or 1
    -- the value encodes (head, channel, is_gate) where the reference puts it
    local row = {}
    for g = 0, hkv - 1 do
      for i = 0, 1 do for c = 1, d do row[#row + 1] = 100 * (g * 2 + i + 1) + c end end
      for i = 0, 1 do for c = 1, w do row[#row + 1] = -(100 * (g * 2 + i + 1) + c) end end
    end
    local q, gate = ga.split_qproj(row, hq, hkv, d, elementwise)
    for h = 1, hq do
      for c = 1, d do eq(q[h][c], 100 * h + c, "query head " .. h) end
      for c = 1, w do eq(gate[h][c], -(100 * h + c), "gate of head " .. h) end
    end
    -- a wrong split order (all queries first, then all gates) permutes the gates of GQA groups
    local flat_gate = row[hkv * 2 * d + 1]
    truthy(flat_gate ~= gate[1][1], "the naive split reads a query value as head 1's gate")
  end
  H.raises(function() ga.split_qproj({1, 2, 3}, hq, hkv, d, false) end, "expected 16 values", "length check")
end)

test("gated_attention: open gates equal dense; output = dense o ⊙ σ(g) (float64); eps skips exactly", function()
  local prob = problem(20, 8, 1607, true)
  local dense = sl.eval("dense", prob, {})
  local big = sl.eval("gated_attention", prob, {params = {bias = 100, gain = 0}})
  near(big.metrics.rel_l2, 0, 1e-7, "gate -> +inf is ungated")
  eq(big.metrics.recall_mean, nil, "no recall for gated outputs")
  for _, mode in ipairs{"headwise", "elementwise"} do
    local m = sl.methods.get("gated_attention")
    local out = m.run(prob, sl.registry.resolve(m, {mode = mode, eps = 0.5}))
    local y, g, o = out.o:totable(), out.gate:totable(), dense.o:totable()
    local zeros, total = 0, 0
    for h = 1, HQ do
      for i = 1, 20 do
        for c = 1, 8 do
          local x = g[h][i][mode == "headwise" and 1 or c]
          local sig = 1 / (1 + math.exp(-x))
          local want = sig >= 0.5 and o[h][i][c] * sig or 0
          near(y[h][i][c], want, 1e-6, mode)
          if sig < 0.5 then eq(y[h][i][c], 0.0, "skipped output is exactly 0"); zeros = zeros + 1 end
          total = total + 1
        end
      end
    end
    near(out.stats.gate_density, 1 - zeros / total, 1e-12, "gate density")
    truthy(zeros > 0 and zeros < total, "some outputs skipped")
  end
end)

test("fast_fastmax: equals float64 row-normalised 1 + x + x²/2 of max-norm-scaled scores; density 1", function()
  for _, backend in ipairs{"ref", "cpu"} do
    local prob, t = problem(18, 8, 1608, true)
    prob.backend = backend
    local m = sl.methods.get("fast_fastmax")
    local out = m.run(prob, sl.registry.resolve(m, {}))
    local o = out.o:totable()
    local function maxnorm(x, h, n)
      local best = 0
      for i = 1, n do
        local s = 0
        for c = 1, t.d do s = s + x[h][i][c] ^ 2 end
        best = math.max(best, math.sqrt(s))
      end
      return best
    end
    for h = 1, HQ do
      local g = (h - 1) // (HQ // HKV) + 1
      local sc = 1 / (maxnorm(t.q, h, t.n) * maxnorm(t.k, g, t.n))
      for i = 1, t.n do
        local num, den = {}, 0
        for c = 1, t.d do num[c] = 0 end
        for j = 1, i do
          local x = 0
          for c = 1, t.d do x = x + t.q[h][i][c] * t.k[g][j][c] end
          x = x * sc
          local f = 1 + x + x * x / 2
          truthy(f > 0, "positive weight")
          den = den + f
          for c = 1, t.d do num[c] = num[c] + f * t.v[g][j][c] end
        end
        for c = 1, t.d do near(o[h][i][c], num[c] / den, 1e-5, backend .. " fastmax") end
      end
    end
    eq(out.stats.density, 1.0, "not sparse")
  end
end)

test("tra: output equals a float64 TRA with the recipe's δ; density counts positive scores; no recall", function()
  local prob, t = problem(16, 8, 1609, true)
  local m = sl.methods.get("tra")
  local out = m.run(prob, sl.registry.resolve(m, {gate_gain = 2}))
  local o, delta = out.o:totable(), out.delta:totable()
  local function nrm(x)
    local s = 0
    for c = 1, #x do s = s + x[c] ^ 2 end
    local f = 1 / math.sqrt(s / #x + 1e-6)
    local y = {}
    for c = 1, #x do y[c] = x[c] * f end
    return y
  end
  local kept_total, pairs = 0, 0
  for h = 1, HQ do
    local g = (h - 1) // (HQ // HKV) + 1
    for i = 1, t.n do
      local qi = nrm(t.q[h][i])
      local S, kept = {}, {}
      for j = 1, i do
        local kj, s = nrm(t.k[g][j]), 0
        for c = 1, t.d do s = s + qi[c] * kj[c] end
        S[j] = s / math.sqrt(t.d)
        kept[j] = S[j] > 0
      end
      local A, mx = {}, -math.huge
      for j = 1, i do
        if kept[j] then
          local cnt = 0
          for l = j, i do if kept[l] then cnt = cnt + 1 end end
          A[j] = S[j] + delta[h][i] * cnt
          mx = math.max(mx, A[j])
          kept_total = kept_total + 1
        end
      end
      pairs = pairs + i
      local num, den = {}, 0
      for c = 1, t.d do num[c] = 0 end
      for j = 1, i do
        if kept[j] then
          local w = math.exp(A[j] - mx)
          den = den + w
          for c = 1, t.d do num[c] = num[c] + w * t.v[g][j][c] end
        end
      end
      for c = 1, t.d do near(o[h][i][c], den > 0 and num[c] / den or 0, 1e-5, "tra O") end
    end
  end
  near(out.stats.density, kept_total / pairs, 1e-12, "density")
  local r = sl.eval("tra", prob, {})
  eq(r.metrics.recall_mean, nil, "no recall for TRA")
end)

test("asr_sparse_monotonic: α_h = 1 heads are softmax, α_h = 2 heads sparsemax; monotonic stops never decrease", function()
  local prob = problem(24, 8, 1610, true, 1.5)
  local m = sl.methods.get("asr_sparse_monotonic")
  local dense = sl.eval("dense", prob, {}).o:totable()
  local out = m.run(prob, sl.registry.resolve(m, {alphas = "1,2"}))
  local o = out.o:totable()
  local sm = sl.attn.entmax(prob.q, prob.k, prob.v, {alpha = 2, algo = 0}):totable()
  for h = 1, HQ do
    local want = h % 2 == 1 and dense or sm
    for i = 1, 24 do for c = 1, 8 do near(o[h][i][c], want[h][i][c], 1e-5, "head " .. h) end end
  end
  truthy(out.stats.density < 1, "sparsemax heads are sparse")
  for _, backend in ipairs{"ref", "cpu"} do
    prob.backend = backend
    local mo = m.run(prob, sl.registry.resolve(m, {mode = "monotonic", chunk = 4, r = -0.5}))
    local stop = mo.stop:totable()
    local moved = 0
    for h = 1, HQ do
      local last = -1
      for i = 1, 24 do
        local j = stop[h][i]
        if j >= 0 then
          truthy(j >= last, "monotonic stop")
          truthy(j <= i - 1, "causal stop")
          if j > last and last >= 0 then moved = moved + 1 end
          last = j
        end
      end
    end
    truthy(moved > 0, "the pointer moves")
    local r = sl.eval("asr_sparse_monotonic", prob, {params = {mode = "monotonic", chunk = 4}})
    truthy(r.metrics.recall_mean and r.metrics.recall_mean < 1, "monotonic records recall")
  end
end)

H.done()
