-- test_heads.lua — head-level sparsity in the model runner (issue 16):
-- head masks ("skip" specs), head importance (sparselab.heads) and the card
-- check of sixteen_heads: removing a head whose importance is zero leaves the
-- model's logits unchanged. The model is a small llama2.c checkpoint written
-- here from seeded random weights, with the W_o columns of one head zeroed
-- (that head then contributes nothing: its importance is exactly 0 under
-- every measure). Run with LUA_CPATH=build/?.so lua5.4 tests/lua/test_heads.lua
package.path = "tests/lua/?.lua;" .. package.path
local H = require "harness"
local sl = require "sparselab"
local Hd = require "sparselab.heads"
local test, near, eq, truthy = H.test, H.near, H.eq, H.truthy

local DIM, HID, L, NH, NKV, V, SEQ = 16, 32, 2, 4, 2, 32, 48
local HD = DIM // NH
local DEAD_L, DEAD_H = 1, 2

-- writes a llama2.c checkpoint; head (DEAD_L, DEAD_H)'s W_o columns are 0
local function write_model(path)
  local st = 12345
  local function rnd()
    -- Box-Muller from a seeded LCG
    st = (st * 1103515245 + 12345) % 2147483648
    local u1 = (st + 1) / 2147483649
    st = (st * 1103515245 + 12345) % 2147483648
    local u2 = st / 2147483648
    return math.sqrt(-2 * math.log(u1)) * math.cos(2 * math.pi * u2)
  end
  local parts = {string.pack("<i4i4i4i4i4i4i4", DIM, HID, L, NH, NKV, V, SEQ)}
  local function floats(n, f)
    local t = {}
    for i = 1, n do t[i] = string.pack("<f", f(i)) end
    parts[#parts + 1] = table.concat(t)
  end
  local kd = NKV * HD
  floats(V * DIM, function() return 0.5 * rnd() end)          -- tok_emb
  floats(L * DIM, function() return 1 end)                    -- rms_att
  floats(L * DIM * DIM, function() return 0.4 * rnd() end)    -- wq
  floats(L * kd * DIM, function() return 0.4 * rnd() end)     -- wk
  floats(L * kd * DIM, function() return 0.4 * rnd() end)     -- wv
  floats(L * DIM * DIM, function(i)                           -- wo [L][dim][dim]: (out, in)
    local l = (i - 1) // (DIM * DIM)
    local col = (i - 1) % DIM
    if l == DEAD_L and col // HD == DEAD_H then return 0 end
    return 0.4 * rnd()
  end)
  floats(L * DIM, function() return 1 end)                    -- rms_ffn
  floats(L * HID * DIM, function() return 0.3 * rnd() end)    -- w1
  floats(L * DIM * HID, function() return 0.3 * rnd() end)    -- w2
  floats(L * HID * DIM, function() return 0.3 * rnd() end)    -- w3
  floats(DIM, function() return 1 end)                        -- rms_final
  floats(SEQ * HD, function() return 0 end)                   -- freq_cis (skipped by the loader)
  local f = assert(io.open(path, "wb"))
  f:write(table.concat(parts))
  f:close()
end

local path = os.tmpname()
write_model(path)
local model = sl.model.load(path)
local tokens = {}
for i = 1, 40 do tokens[i] = (i * 7 + 3) % V end

local function max_diff(a, b)
  local x, y, m = a:totable(), b:totable(), 0
  for i = 1, #x do for j = 1, #x[i] do m = math.max(m, math.abs(x[i][j] - y[i][j])) end end
  return m
end

test("importance: the zeroed head scores 0 under ablation, kl and l2-of-contribution; others do not", function()
  local abl = Hd.importance(model, {tokens}, "ablation")
  local kl = Hd.importance(model, {tokens}, "kl")
  eq(abl[DEAD_L][DEAD_H], 0.0, "ablation of the dead head")
  near(kl[DEAD_L][DEAD_H], 0, 1e-12, "kl of the dead head")
  local live = 0
  for l = 0, L - 1 do for h = 0, NH - 1 do
    if not (l == DEAD_L and h == DEAD_H) and math.abs(abl[l][h]) > 1e-6 then live = live + 1 end
  end end
  eq(live, L * NH - 1, "every other head matters")
  local l2 = Hd.importance(model, {tokens}, "l2")
  truthy(l2[DEAD_L][DEAD_H] > 0, "l2 of its attention output is not 0 (only W_o kills it): l2 alone is a proxy")
end)

test("removing a zero-importance head leaves the logits unchanged; removing a live one changes them", function()
  local all_dense = {default = "dense", heads = {[0] = {[0] = "dense"}}}  -- the per-head path, nothing removed
  local ref = model:run{tokens = tokens, attention = all_dense}
  local plain = model:run{tokens = tokens}
  truthy(max_diff(ref, plain) < 1e-5, "the per-head path equals the plain forward")
  local imp = Hd.importance(model, {tokens}, "ablation")
  local lowest = Hd.lowest(imp, 1)
  truthy(lowest[DEAD_L] and lowest[DEAD_L][DEAD_H], "the dead head is the least important")
  local cut = model:run{tokens = tokens, attention = Hd.schedule(lowest)}
  eq(max_diff(cut, ref), 0.0, "logits unchanged")
  -- a score-blind choice (the first head) is not harmless
  local blind = model:run{tokens = tokens, attention = Hd.schedule({[0] = {[0] = true}})}
  truthy(max_diff(blind, ref) > 1e-3, "removing a live head changes the logits")
end)

test("head masks: removing the least important heads (KL measure) moves the output less than the most important", function()
  local imp = Hd.importance(model, {tokens}, "kl")
  local lo, hi = Hd.lowest(imp, 3), nil
  local neg = {}
  for l, hs in pairs(imp) do neg[l] = {}; for h, s in pairs(hs) do neg[l][h] = -s end end
  hi = Hd.lowest(neg, 3)
  local a = model:evaluate{tokens = tokens, attention = Hd.schedule(lo)}
  local b = model:evaluate{tokens = tokens, attention = Hd.schedule(hi)}
  truthy(a.kl < b.kl, string.format("KL to dense pruning least important %.4f, most important %.4f", a.kl, b.kl))
end)

-- ---- problem-level recipes: sixteen_heads and elastic_attention ----

local function problem(hq, hkv, n, d, seed)
  return sl.problem{q = sl.randn({hq, n, d}, {seed = seed, std = 1.5}), k = sl.randn({hkv, n, d}, {seed = seed + 1, std = 1.5}),
    v = sl.randn({hkv, n, d}, {seed = seed + 2, std = 1})}
end

test("sixteen_heads: keep 1 is dense; the kept heads are the largest-output ones; a score-blind order loses more", function()
  -- values scaled per kv head so that output norms differ
  local prob = problem(8, 4, 64, 8, 1801)
  local v = prob.v:totable()
  for g = 1, 4 do for i = 1, 64 do for c = 1, 8 do v[g][i][c] = v[g][i][c] * (0.3 + 0.5 * (g - 1)) end end end
  prob = sl.problem{q = prob.q, k = prob.k, v = sl.tensor(v)}
  local r1 = sl.eval("sixteen_heads", prob, {budget = 1})
  near(r1.metrics.rel_l2, 0, 1e-7, "dense")
  local m = sl.methods.get("sixteen_heads")
  local p = sl.registry.resolve(m, {}, 0.5)
  local out = m.run(prob, p)
  -- independent: mean row norm of each head's dense output
  local dense = sl.attn.dense(prob.q, prob.k, prob.v, {causal = true}):totable()
  local score = {}
  for h = 1, 8 do
    local s = 0
    for i = 1, 64 do local r = 0; for c = 1, 8 do r = r + dense[h][i][c] ^ 2 end; s = s + math.sqrt(r) end
    score[h] = s / 64
  end
  for h = 1, 8 do
    local rank = 1
    for x = 1, 8 do if score[x] > score[h] or (score[x] == score[h] and x < h) then rank = rank + 1 end end
    eq(out.kept[h] == true, rank <= 4, "head " .. h .. " kept by rank")
  end
  local blind = m.run_with(prob, p, true)
  local ref = sl.methods.get("dense").run(prob, {}).o
  local ek, eb = sl.metric.rel_l2(out.o, ref), sl.metric.rel_l2(blind.o, ref)
  truthy(ek < eb, string.format("rel_l2 importance %.3f, first heads %.3f", ek, eb))
end)

test("elastic_attention: sa_ratio 0 is dense; SA heads follow the streaming mask; oracle routing beats random", function()
  local prob = problem(8, 4, 192, 16, 1802)
  local params = {block = 16, sink = 16, local_window = 48}
  local r0 = sl.eval("elastic_attention", prob, {budget = 0, params = params})
  near(r0.metrics.rel_l2, 0, 1e-5, "dense")
  local m = sl.methods.get("elastic_attention")
  local p = sl.registry.resolve(m, params, 0.5)
  local mk = m.estimate(prob, p)
  local bits = mk:to_bits():totable()
  local sa_heads = 0
  for g = 1, 4 do
    local full = true
    for i = 1, 192 do for j = 1, i do if bits[g][i][j] ~= 1 then full = false end end end
    if not full then
      sa_heads = sa_heads + 1
      for i = 1, 192 do
        for j = 1, i do
          local c, rb = (j - 1) // 16, (i - 1) // 16
          local want = ((j - 1) < 16 or c > rb - 3) and 1 or 0
          eq(bits[g][i][j], want, "streaming mask")
        end
      end
    end
  end
  eq(sa_heads, 2, "half the kv heads in SA")
  local dense = sl.eval("dense", prob, {})
  local ro = sl.eval("elastic_attention", prob, {budget = 0.5, params = params})
  local worst = 1
  for seed = 1, 4 do
    local pr = {}
    for k2, v2 in pairs(params) do pr[k2] = v2 end
    pr.router, pr.seed = "random", seed
    local rr = sl.eval("elastic_attention", prob, {budget = 0.5, params = pr})
    worst = math.min(worst, rr.metrics.recall_mean)
    truthy(ro.metrics.recall_mean >= rr.metrics.recall_mean - 1e-9, "oracle >= random seed " .. seed)
  end
  truthy(ro.metrics.recall_mean > worst + 1e-3, "oracle beats the worst random routing")
end)

test("elastic_attention: the oracle router's SA heads are the kv heads with the least float64 lost mass", function()
  local hq, hkv, n, d = 8, 4, 192, 16
  -- keys scaled per kv head (sharper or flatter attention), so that the heads' lost masses differ
  local prob = problem(hq, hkv, n, d, 1804)
  local kt = prob.k:totable()
  local kscale = {0.9, 0.2, 1.4, 0.5}
  for g = 1, hkv do for j = 1, n do for c = 1, d do kt[g][j][c] = kt[g][j][c] * kscale[g] end end end
  prob = sl.problem{q = prob.q, k = sl.tensor(kt), v = prob.v}
  local params = {block = 16, sink = 16, local_window = 48, window_q = 32}
  local m = sl.methods.get("elastic_attention")
  local p = sl.registry.resolve(m, params, 0.5)
  local bits = m.estimate(prob, p):to_bits():totable()
  -- lost mass of the streaming mask (sink 16, the 3 most recent blocks of 16) for the last 32 queries, summed over
  -- the group's query heads; exact softmax in float64
  local q, k = prob.q:totable(), prob.k:totable()
  local loss = {}
  for g = 1, hkv do
    local s = 0
    for h = (g - 1) * (hq // hkv) + 1, g * (hq // hkv) do
      for i = n - 32, n - 1 do
        local sc, mx = {}, -math.huge
        for j = 0, i do
          local x = 0
          for c = 1, d do x = x + q[h][i + 1][c] * k[g][j + 1][c] end
          sc[j] = x / math.sqrt(d)
          mx = math.max(mx, sc[j])
        end
        local z, lost = 0, 0
        for j = 0, i do
          local e = math.exp(sc[j] - mx)
          z = z + e
          if not (j < 16 or j // 16 > i // 16 - 3) then lost = lost + e end
        end
        s = s + lost / z
      end
    end
    loss[g] = s
  end
  local order = {1, 2, 3, 4}
  table.sort(order, function(a, b) return loss[a] < loss[b] end)
  truthy(loss[order[3]] - loss[order[2]] > 1e-3 * loss[order[3]], string.format(
    "a clear split between the 2nd and 3rd head: lost masses %.6g %.6g %.6g %.6g", loss[1], loss[2], loss[3], loss[4]))
  for rank, g in ipairs(order) do
    local full = true
    for i = 1, n do for j = 1, i do if bits[g][i][j] ~= 1 then full = false end end end
    eq(not full, rank <= 2, string.format("kv head %d (lost mass %.6g, rank %d) in SA", g, loss[g], rank))
  end
end)

test("sqa: ratio 1 is dense; FLOPs scale with the query heads; a pooled head is attention of the mean query", function()
  local prob = problem(8, 2, 40, 8, 1803)
  local r1 = sl.eval("sqa", prob, {budget = 1})
  near(r1.metrics.rel_l2, 0, 1e-7, "dense")
  local m = sl.methods.get("sqa")
  local out2 = m.run(prob, sl.registry.resolve(m, {}, 2))
  local out4 = m.run(prob, sl.registry.resolve(m, {}, 4))
  near(out2.stats.flops / r1.metrics.flops, 0.5, 1e-9, "half the query heads, half the FLOPs")
  near(out4.stats.flops / r1.metrics.flops, 0.25, 1e-9, "a quarter")
  -- float64: head 3 (1-based) with ratio 2 is in pooled head 2 = mean of heads 3, 4 over kv head 1
  local q, k, v = prob.q:totable(), prob.k:totable(), prob.v:totable()
  local o = out2.o:totable()
  for i = 1, 40 do
    local qm = {}
    for c = 1, 8 do qm[c] = (q[3][i][c] + q[4][i][c]) / 2 end
    local s, mx = {}, -math.huge
    for j = 1, i do
      local x = 0
      for c = 1, 8 do x = x + qm[c] * k[1][j][c] end
      s[j] = x / math.sqrt(8)
      mx = math.max(mx, s[j])
    end
    local z, num = 0, {}
    for c = 1, 8 do num[c] = 0 end
    for j = 1, i do
      local w = math.exp(s[j] - mx)
      z = z + w
      for c = 1, 8 do num[c] = num[c] + w * v[1][j][c] end
    end
    for c = 1, 8 do
      near(o[3][i][c], num[c] / z, 1e-5, "pooled head output")
      near(o[4][i][c], num[c] / z, 1e-5, "shared by the group")
    end
  end
  H.raises(function() m.run(prob, sl.registry.resolve(m, {}, 3)) end, "ratio must divide", "bad ratio")
end)

test("head_neuron_predictor: 0% is dense; per-layer masks of floor(p·H); oracle predictor = oracle mask", function()
  local prob = problem(8, 4, 32, 8, 1804)
  near(sl.eval("head_neuron_predictor", prob, {budget = 0}).metrics.rel_l2, 0, 1e-7, "dense")
  local out = sl.methods.get("head_neuron_predictor").run(prob, sl.registry.resolve(sl.methods.get("head_neuron_predictor"), {}, 0.4))
  eq(out.stats.heads_kept, 8 - 3, "floor(0.4 * 8) masked")
  local scores = {}
  for t = 1, 5 * 8 do scores[t] = math.sin(t * 2.3) end
  local m = Hd.per_layer(scores, 5, 8, 0.4)
  for l = 0, 4 do
    local c = 0
    for _ in pairs(m[l]) do c = c + 1 end
    eq(c, 3, "per layer")
  end
  near(Hd.spearman(scores, scores), 1, 1e-12, "oracle Spearman")
  local Wz = {{}}
  for t = 1, 40 do Wz[1][t] = 0 end
  local m2 = Hd.per_layer(Hd.predict_scores({mean = scores, W = Wz}, {0}), 5, 8, 0.4)
  for l = 0, 4 do for h in pairs(m[l]) do truthy(m2[l][h], "oracle mask") end end
end)

test("head_neuron_predictor: a predictor trained on ablation scores masks the zero-importance head (logits unchanged); a score-blind mask does not", function()
  local samples = {}
  for len = 16, 40, 4 do
    local p = {}
    for i = 1, len do p[i] = tokens[i] end
    samples[#samples + 1] = Hd.sample(model, p, "ablation")
  end
  local P = Hd.train_predictor(samples, 10)
  local pred = Hd.predict_scores(P, Hd.features(model, tokens))
  near(pred[DEAD_L * NH + DEAD_H + 1], 0, 1e-12, "the dead head's predicted score")
  local mask = Hd.per_layer(pred, L, NH, 0.25)
  truthy(mask[DEAD_L][DEAD_H], "predicted mask holds the dead head")
  local ref = model:run{tokens = tokens, attention = {default = "dense", heads = {[0] = {[0] = "dense"}}}}
  local cut = model:run{tokens = tokens, attention = Hd.schedule({[DEAD_L] = mask[DEAD_L]})}
  eq(max_diff(cut, ref), 0.0, "logits unchanged")
  -- score-blind: a fixed pseudo-random score vector picks another head of that layer
  local blind = {}
  for t = 1, L * NH do blind[t] = ((t * 37) % 11) / 11 end
  local bm = Hd.per_layer(blind, L, NH, 0.25)
  truthy(not bm[DEAD_L][DEAD_H], "the blind mask misses the dead head")
  local bcut = model:run{tokens = tokens, attention = Hd.schedule({[DEAD_L] = bm[DEAD_L]})}
  truthy(max_diff(bcut, ref) > 1e-3, "the blind mask changes the logits")
end)

test("sixteen_heads: the central difference in ξ_h converges to the analytic ∂L/∂ξ_h on a tiny layer (float64, written here)", function()
  -- y_t = x_t + Σ_h ξ_h o_{h,t} W_o,h ; logits_t = y_t W_out ; L = mean_t −log softmax(logits_t)[target_t]
  local n, D, NHt, HDt, Vt = 6, 4, 2, 2, 5
  local st = 99
  local function u() st = (st * 1103515245 + 12345) % 2147483648; return st / 2147483648 * 2 - 1 end
  local x, o, Wo, Wout, tgt = {}, {}, {}, {}, {}
  for t = 1, n do x[t] = {}; for c = 1, D do x[t][c] = u() end; tgt[t] = (t * 3) % Vt + 1 end
  for h = 1, NHt do
    o[h], Wo[h] = {}, {}
    for t = 1, n do o[h][t] = {}; for e = 1, HDt do o[h][t][e] = u() end end
    for e = 1, HDt do Wo[h][e] = {}; for c = 1, D do Wo[h][e][c] = u() end end
  end
  for c = 1, D do Wout[c] = {}; for v = 1, Vt do Wout[c][v] = 2 * u() end end
  local function contrib(h, t) -- o_{h,t} W_o,h  [D]
    local r = {}
    for c = 1, D do r[c] = 0; for e = 1, HDt do r[c] = r[c] + o[h][t][e] * Wo[h][e][c] end end
    return r
  end
  local function logits(xi, t)
    local y = {}
    for c = 1, D do y[c] = x[t][c] end
    for h = 1, NHt do local r = contrib(h, t); for c = 1, D do y[c] = y[c] + xi[h] * r[c] end end
    local z = {}
    for v = 1, Vt do z[v] = 0; for c = 1, D do z[v] = z[v] + y[c] * Wout[c][v] end end
    return z
  end
  local function loss(xi)
    local s = 0
    for t = 1, n do
      local z, m = logits(xi, t), -math.huge
      for v = 1, Vt do m = math.max(m, z[v]) end
      local lz = 0
      for v = 1, Vt do lz = lz + math.exp(z[v] - m) end
      s = s - (z[tgt[t]] - m - math.log(lz))
    end
    return s / n
  end
  local ones = {1, 1}
  for h = 1, NHt do
    -- analytic: mean_t Σ_v (p_tv − [v = target_t]) (o_{h,t} W_o,h W_out)_v
    local g = 0
    for t = 1, n do
      local z, m = logits(ones, t), -math.huge
      for v = 1, Vt do m = math.max(m, z[v]) end
      local lz = 0
      for v = 1, Vt do lz = lz + math.exp(z[v] - m) end
      local r = contrib(h, t)
      for v = 1, Vt do
        local dv = 0
        for c = 1, D do dv = dv + r[c] * Wout[c][v] end
        g = g + (math.exp(z[v] - m) / lz - (v == tgt[t] and 1 or 0)) * dv
      end
    end
    g = g / n
    local function fd(eps)
      return Hd.central_diff(function(a) local xi = {1, 1}; xi[h] = a; return loss(xi) end, 1, eps)
    end
    local e1, e2, e3 = math.abs(fd(0.2) - g), math.abs(fd(0.1) - g), math.abs(fd(1e-3) - g)
    truthy(e1 > 0 and e2 / e1 < 0.3 and e2 / e1 > 0.2, string.format("O(ε²): error %.3g at 0.2, %.3g at 0.1", e1, e2))
    near(fd(1e-3), g, 1e-7 * math.max(1, math.abs(g)), "ε = 1e-3 equals the analytic derivative")
    truthy(math.abs(g) > 1e-3, "a nonzero derivative")
    truthy(e3 < e2, "smaller step, smaller error")
  end
end)

test("sixteen_heads: gradient importance on the runner: the dead head is exactly 0, live heads are not; ε and ε/2 agree; the lowest-gradient head's removal keeps the logits, a score-blind removal does not", function()
  local g1 = Hd.importance(model, {tokens}, "gradient", {eps = 1e-2})
  local g2 = Hd.importance(model, {tokens}, "gradient", {eps = 5e-3})
  eq(g1[DEAD_L][DEAD_H], 0.0, "dead head")
  local live = 0
  for l = 0, L - 1 do for h = 0, NH - 1 do
    if not (l == DEAD_L and h == DEAD_H) then
      truthy(g1[l][h] > 1e-4, "live head has a gradient")
      near(g2[l][h], g1[l][h], 0.05 * g1[l][h] + 1e-4, "steps agree")
      live = live + 1
    end
  end end
  eq(live, L * NH - 1, "live heads")
  local pick = Hd.lowest(g1, 1)
  truthy(pick[DEAD_L] and pick[DEAD_L][DEAD_H], "the lowest gradient is the dead head")
  local ref = model:run{tokens = tokens, attention = {default = "dense", heads = {[0] = {[0] = "dense"}}}}
  eq(max_diff(model:run{tokens = tokens, attention = Hd.schedule(pick)}, ref), 0.0, "logits unchanged")
  -- score-blind: the first head in order (layer 0, head 0)
  truthy(max_diff(model:run{tokens = tokens, attention = Hd.schedule({[0] = {[0] = true}})}, ref) > 1e-3,
    "a score-blind removal changes the logits")
  H.raises(function() Hd.importance(model, {tokens}, "hessian") end, "measure must be", "bad measure")
end)

test("sixteen_heads: iterative pruning with re-scoring removes count heads, the dead head first, each once; step = count is one-shot", function()
  local removed, order = Hd.iterative(model, {tokens}, "gradient", 3, 1, {eps = 1e-2})
  eq(#order, 3, "three removed")
  eq(order[1][1], DEAD_L, "dead head first (layer)")
  eq(order[1][2], DEAD_H, "dead head first (head)")
  local seen = {}
  for _, lh in ipairs(order) do
    local key = lh[1] * NH + lh[2]
    truthy(not seen[key], "each head once")
    seen[key] = true
    truthy(removed[lh[1]][lh[2]], "in the removed set")
  end
  -- one round of 3 is the one-shot lowest 3
  local once = Hd.iterative(model, {tokens}, "gradient", 3, 3, {eps = 1e-2})
  local shot = Hd.lowest(Hd.importance(model, {tokens}, "gradient", {eps = 1e-2}), 3)
  for l, hs in pairs(shot) do for h in pairs(hs) do truthy(once[l][h], "one-shot equivalence") end end
  -- re-scoring with the dead head removed leaves its score 0 and changes no other head's (it contributed nothing)
  local a = Hd.importance(model, {tokens}, "ablation")
  local b = Hd.importance(model, {tokens}, "ablation", {removed = {[DEAD_L] = {[DEAD_H] = true}}})
  for l = 0, L - 1 do for h = 0, NH - 1 do near(b[l][h], a[l][h], 1e-9, "same scores without a dead head") end end
end)

test("head_neuron_predictor: the MLP's manual backward matches central differences of its loss", function()
  local net = Hd.mlp_init(3, 5, 2, 11)
  local X, Y = {}, {}
  for i = 1, 6 do
    X[i] = {math.sin(i), math.cos(2 * i), 0.3 * i - 1}
    Y[i] = {math.sin(i * 0.7), i % 2 == 0 and 1 or -1}
  end
  local _, g = Hd.mlp_grad(net, X, Y)
  local h = 1e-2 -- the products run in f32: a step large enough for f32 rounding, small for the curvature
  local checked = 0
  for _, name in ipairs{"W1", "b1", "W2", "b2"} do
    local par = net[name]
    local cells = {}
    if type(par[1]) == "table" then
      for i = 1, #par do for j = 1, #par[1] do cells[#cells + 1] = {i, j} end end
    else
      for i = 1, #par do cells[#cells + 1] = {i} end
    end
    for _, c in ipairs(cells) do
      local function set(v) if c[2] then par[c[1]][c[2]] = v else par[c[1]] = v end end
      local v0 = c[2] and par[c[1]][c[2]] or par[c[1]]
      set(v0 + h); local lp = Hd.mlp_grad(net, X, Y)
      set(v0 - h); local lm = Hd.mlp_grad(net, X, Y)
      set(v0)
      local num = (lp - lm) / (2 * h)
      local ana = c[2] and g[name][c[1]][c[2]] or g[name][c[1]]
      near(ana, num, 2e-3 + 2e-2 * math.abs(num), name .. " gradient")
      checked = checked + 1
    end
  end
  eq(checked, 3 * 5 + 5 + 5 * 2 + 2, "every parameter")
end)

test("head_neuron_predictor: the MLP predictor learns a nonlinear score map the ridge map cannot; a shuffled-target MLP does not", function()
  -- scores of 6 'heads' depending on |x1| and x2·x3 (no linear signal)
  local function draw(seed, n)
    local st, out = seed, {}
    local function u() st = (st * 1103515245 + 12345) % 2147483648; return st / 2147483648 * 2 - 1 end
    for i = 1, n do
      local x = {u(), u(), u(), 1}
      local y = {}
      for t = 1, 6 do y[t] = (t <= 3 and math.abs(x[1]) or x[2] * x[3]) * t + (t % 2) * 0.2 end
      out[i] = {x = x, y = y}
    end
    return out
  end
  local train, test_s = draw(3, 60), draw(4, 30)
  -- measure the R² of head 1 (|x1|) and head 4 (x2·x3) on held-out samples
  local function r2(P, t)
    local m, ss, sr = 0, 0, 0
    for _, s in ipairs(test_s) do m = m + s.y[t] end
    m = m / #test_s
    for _, s in ipairs(test_s) do
      local p = Hd.predict_scores(P, s.x)[t]
      ss = ss + (s.y[t] - m) ^ 2
      sr = sr + (s.y[t] - p) ^ 2
    end
    return 1 - sr / ss
  end
  local mlp = Hd.train(train, "mlp", {hidden = 64, steps = 300, lr = 1e-2, seed = 5})
  local ridge = Hd.train(train, "ridge", {lambda = 1e-3})
  for _, t in ipairs{1, 4} do
    local a, b = r2(mlp, t), r2(ridge, t)
    truthy(a > 0.8, string.format("MLP held-out R² of head %d: %.3f", t, a))
    truthy(b < 0.3, string.format("ridge held-out R² of head %d: %.3f", t, b))
  end
  -- score-blind: the same MLP trained on targets shuffled across samples
  local shuf = {}
  for i, s in ipairs(train) do shuf[i] = {x = s.x, y = train[(i * 17) % #train + 1].y} end
  local blind = Hd.train(shuf, "mlp", {hidden = 64, steps = 300, lr = 1e-2, seed = 5})
  truthy(r2(blind, 1) < 0.3, string.format("shuffled-target MLP R² %.3f", r2(blind, 1)))
  H.raises(function() Hd.train(train, "svm") end, "must be 'ridge' or 'mlp'", "bad kind")
end)

test("head_neuron_predictor: an MLP predictor trained on ablation scores masks the zero-importance head (logits unchanged)", function()
  local samples = {}
  for len = 16, 40, 4 do
    local p = {}
    for i = 1, len do p[i] = tokens[i] end
    samples[#samples + 1] = Hd.sample(model, p, "ablation")
  end
  local P = Hd.train(samples, "mlp", {hidden = 32, steps = 100, seed = 2})
  local pred = Hd.predict_scores(P, Hd.features(model, tokens))
  near(pred[DEAD_L * NH + DEAD_H + 1], 0, 1e-12, "a target that is 0 on every prompt is predicted as 0")
  local mask = Hd.per_layer(pred, L, NH, 0.25)
  truthy(mask[DEAD_L][DEAD_H], "predicted mask holds the dead head")
  local ref = model:run{tokens = tokens, attention = {default = "dense", heads = {[0] = {[0] = "dense"}}}}
  local cut = model:run{tokens = tokens, attention = Hd.schedule({[DEAD_L] = mask[DEAD_L]})}
  eq(max_diff(cut, ref), 0.0, "logits unchanged")
end)

os.remove(path)
H.done()
