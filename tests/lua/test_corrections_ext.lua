-- test_corrections_ext.lua — the corrections re_ttention, flashblock, salad
-- and psa_pyramid (lua/sparselab/corrections/) and the psa_pyramid method:
-- each card's checks on small seeded problems against attn.dense or an
-- independent float64 computation written here. A correction is applied by
-- a local composer (base run, then the module's after) and, when the
-- framework sparselab.correct is present, also as "base+correction" through
-- the registry. Run with LUA_CPATH=build/?.so lua5.4 tests/lua/test_corrections_ext.lua
package.path = "tests/lua/?.lua;" .. package.path
local H = require "harness"
local sl = require "sparselab"
local test, near, eq, truthy = H.test, H.near, H.eq, H.truthy

local HQ, HKV, N, D = 4, 2, 96, 16

local function problem(seed, opts)
  opts = opts or {}
  local n = opts.n or N
  local q = sl.randn({HQ, n, D}, {seed = seed, std = opts.std or 1.0})
  local k = sl.randn({HKV, n, D}, {seed = seed + 1, std = opts.std or 1.0})
  local v = sl.randn({HKV, n, D}, {seed = seed + 2})
  return sl.problem{q = q, k = k, v = v, causal = opts.causal ~= false, state = opts.state}
end

local function dense(prob)
  return sl.attn.dense(prob.q, prob.k, prob.v, {causal = prob.causal})
end

local function module(id) return require("sparselab.corrections." .. id) end

-- defaults of a correction's params, overridden by over
local function cparams(corr, over)
  local p = {}
  for k, spec in pairs(corr.params) do p[k] = spec.default end
  for k, v in pairs(over or {}) do p[k] = v end
  return p
end

-- the base method (id, params) then the correction's after
local function apply(base_id, bparams, corr_id, over, prob)
  local base = sl.methods.get(base_id)
  local corr = module(corr_id)
  local bout = base.run(prob, sl.registry.resolve(base, bparams))
  return corr.after(prob, cparams(corr, over), bout), bout
end

local function rel(a, b) return sl.metric.rel_l2(a, b) end

local FULL = {"streaming_llm", {n_local = 100000, bq = 16, bk = 16}}
local WINDOW = {"sliding_window", {w = 12, bq = 16, bk = 16}}

-- ---- with a full mask every correction is a no-op: output = dense ----
for _, id in ipairs{"re_ttention", "flashblock", "salad", "psa_pyramid"} do
  test(id .. ": full mask gives dense", function()
    local prob = problem(11, {state = {}})
    local od = dense(prob)
    -- two steps on one state: the refresh and (for the stateful ones) a sparse step
    for step = 1, 2 do
      local out = apply(FULL[1], FULL[2], id, {drift = id == "re_ttention" and 0 or nil}, prob)
      truthy(rel(out.o, od) < 1e-5, string.format("%s step %d: rel_l2 %g", id, step, rel(out.o, od)))
    end
  end)
end

-- ---- re_ttention ----
test("re_ttention: refresh equals dense; an unchanged sparse step with drift 0 equals dense", function()
  local prob = problem(21, {state = {}})
  local od, ld = dense(prob)
  local out, bout = apply(WINDOW[1], WINDOW[2], "re_ttention", {drift = 0}, prob)
  eq(out.stats.re_ttention_refresh, 1, "first call refreshes")
  eq(sl.metric.max_abs(out.o, od), 0, "refresh output is dense exactly")
  truthy(rel(bout.o, od) > 0.05, "the window alone is far from dense")
  -- 0 < r <= 1 and r = exp(L_M - L) computed here
  local st = prob.state.re_ttention
  for h = 1, HQ do
    for i = 1, N, 7 do
      local r = st.ratio:get(h, i)
      truthy(r > 0 and r <= 1 + 1e-6, "0 < r <= 1")
      near(r, math.exp(bout.lse:get(h, i) - ld:get(h, i)), 1e-5, "r")
    end
  end
  local out2 = apply(WINDOW[1], WINDOW[2], "re_ttention", {drift = 0}, prob)
  eq(out2.stats.re_ttention_refresh, 0, "second call is a sparse step")
  truthy(rel(out2.o, od) < 1e-5, "sparse step after refresh = dense: " .. rel(out2.o, od))
  -- with drift the ratio grows by drift per sparse step, and the output leaves dense
  local out3 = apply(WINDOW[1], WINDOW[2], "re_ttention", {drift = 0.04}, prob)
  truthy(rel(out3.o, od) < 1e-5, "drift applies after the step: this step still = dense")
  near(st.ratio:get(1, 50), math.exp(bout.lse:get(1, 50) - ld:get(1, 50)) + 0.04, 1e-5, "r after one drift step")
  local out4 = apply(WINDOW[1], WINDOW[2], "re_ttention", {drift = 0.04}, prob)
  truthy(rel(out4.o, od) > 1e-3, "the drifted r moves the next output away from dense")
end)

test("re_ttention: reshaped weights sum to r (O = r·O_M on the sparse step without residual)", function()
  local prob = problem(23, {state = {}})
  apply(WINDOW[1], WINDOW[2], "re_ttention", {drift = 0}, prob)
  local st = prob.state.re_ttention
  local out, bout = apply(WINDOW[1], WINDOW[2], "re_ttention", {drift = 0, use_residual = false, refresh_every = 0},
    prob)
  for h = 1, HQ, 3 do
    for i = 5, N, 13 do
      local r = st.ratio:get(h, i)
      for c = 1, D, 5 do near(out.o:get(h, i, c), r * bout.o:get(h, i, c), 1e-5, "O = r·O_M") end
    end
  end
end)

test("re_ttention: without a state every call is a dense refresh; shapes replace the state", function()
  local prob = problem(25)
  local od = dense(prob)
  local out = apply(WINDOW[1], WINDOW[2], "re_ttention", {}, prob)
  eq(out.stats.re_ttention_refresh, 1, "refresh")
  eq(sl.metric.max_abs(out.o, od), 0, "dense")
  local st = {}
  local p1 = problem(26, {state = st})
  apply(WINDOW[1], WINDOW[2], "re_ttention", {}, p1)
  local p2 = problem(27, {state = st, n = 64})
  local o2 = apply(WINDOW[1], WINDOW[2], "re_ttention", {}, p2)
  eq(o2.stats.re_ttention_refresh, 1, "another n_q: refresh")
end)

test("re_ttention: refresh schedule and warm-up", function()
  local prob = problem(29, {state = {}})
  local seen = {}
  for step = 0, 6 do
    local out = apply(WINDOW[1], WINDOW[2], "re_ttention", {refresh_every = 3, warmup = 1}, prob)
    seen[#seen + 1] = out.stats.re_ttention_refresh
  end
  -- step 0 warm-up (dense), then refresh at steps 1, 4 (every 3 after warm-up)
  eq(table.concat(seen, ","), "1,1,0,0,1,0,0", "refresh pattern")
end)

-- ---- flashblock ----
test("flashblock: refresh is dense; unchanged reuse is dense; moved queries", function()
  local prob = problem(31, {state = {}})
  local od = dense(prob)
  local out = apply(WINDOW[1], WINDOW[2], "flashblock", {}, prob)
  eq(out.stats.flashblock_refresh, 1, "first call refreshes")
  truthy(rel(out.o, od) < 1e-5, "refresh = dense (lse merge exact): " .. rel(out.o, od))
  local out2 = apply(WINDOW[1], WINDOW[2], "flashblock", {}, prob)
  eq(out2.stats.flashblock_refresh, 0, "second call reuses")
  near(out2.stats.flashblock_reused, 1, 0, "every row reused")
  truthy(rel(out2.o, od) < 1e-5, "reused with unchanged Q = dense")
  -- next step: queries move a little (diffusion step); K, V fixed (earlier blocks)
  local q2 = sl.randn({HQ, N, D}, {seed = 99, std = 0.05})
  local qt, q2t = prob.q:totable(), q2:totable()
  for h = 1, HQ do for i = 1, N do for c = 1, D do q2t[h][i][c] = qt[h][i][c] + q2t[h][i][c] end end end
  local step = sl.problem{q = sl.tensor(q2t), k = prob.k, v = prob.v, state = prob.state}
  local od2 = dense(step)
  local base = sl.methods.get(WINDOW[1])
  local bo = base.run(step, sl.registry.resolve(base, WINDOW[2])).o
  local out3 = apply(WINDOW[1], WINDOW[2], "flashblock", {tau = 1}, step)
  eq(out3.stats.flashblock_refresh, 0, "reuse with moved queries")
  truthy(rel(out3.o, od2) < rel(bo, od2), string.format("stale cache still helps: %g < %g", rel(out3.o, od2),
    rel(bo, od2)))
  -- tau = 0: no row reuses, output = the base
  local out4 = apply(WINDOW[1], WINDOW[2], "flashblock", {tau = 0}, step)
  near(out4.stats.flashblock_reused, 0, 0, "no row reused")
  eq(sl.metric.max_abs(out4.o, bo), 0, "tau 0 with moved queries = the base")
end)

test("flashblock: cache invalidated when K/V or the mask change; refresh_every = 1 is dense", function()
  local st = {}
  local prob = problem(33, {state = st})
  apply(WINDOW[1], WINDOW[2], "flashblock", {}, prob)
  local other = problem(34, {state = st})
  local od = dense(other)
  local out = apply(WINDOW[1], WINDOW[2], "flashblock", {}, other)
  eq(out.stats.flashblock_refresh, 1, "K/V changed: refresh")
  truthy(rel(out.o, od) < 1e-5, "refresh = dense")
  local out2 = apply(WINDOW[1], {w = 20, bq = 16, bk = 16}, "flashblock", {}, other)
  eq(out2.stats.flashblock_refresh, 1, "mask changed: refresh")
  for _ = 1, 3 do
    local o3 = apply(WINDOW[1], WINDOW[2], "flashblock", {refresh_every = 1}, other)
    eq(o3.stats.flashblock_refresh, 1, "refresh_every = 1")
    truthy(rel(o3.o, od) < 1e-5, "always refreshing = dense")
  end
end)

-- ---- salad ----
test("salad: gate 0 is the sparse branch; closed-form gate; gate 1 is the linear branch", function()
  local prob = problem(41)
  local out, bout = apply(WINDOW[1], WINDOW[2], "salad", {gate = 0}, prob)
  eq(sl.metric.max_abs(out.o, bout.o), 0, "gate 0 = sparse branch exactly")
  local lin = sl.attn.linear(prob.q, prob.k, prob.v, {causal = true})
  local o1 = apply(WINDOW[1], WINDOW[2], "salad", {gate = 1}, prob)
  truthy(sl.metric.max_abs(o1.o, lin) < 1e-6, "gate 1, convex = linear branch")
  -- closed form: 1 - mean exp(L_M - L) over the sampled rows, computed here on all rows
  local _, ld = dense(prob)
  local o2 = apply(WINDOW[1], WINDOW[2], "salad", {gate_rows = N}, prob)
  local kept = 0
  for h = 1, HQ do for i = 1, N do kept = kept + math.exp(bout.lse:get(h, i) - ld:get(h, i)) end end
  near(o2.stats.salad_gate, 1 - kept / (HQ * N), 1e-5, "closed-form gate")
  -- the gate is one scalar: O = (1 - G)·O_s + G·O_l on every head and row
  local g = o2.stats.salad_gate
  for h = 1, HQ, 3 do
    for i = 1, N, 17 do
      near(o2.o:get(h, i, 3), (1 - g) * bout.o:get(h, i, 3) + g * lin:get(h, i, 3), 1e-5, "one gate for all")
    end
  end
end)

test("salad: linear branch weights are positive and sum to one (independent float64 check)", function()
  local prob = problem(43, {n = 24})
  local lin = sl.attn.linear(prob.q, prob.k, prob.v, {causal = true}):totable()
  local Q, K, V = prob.q:totable(), prob.k:totable(), prob.v:totable()
  local function phi(x) return x > 0 and x + 1 or math.exp(x) end
  for h = 1, HQ do
    local g = (h - 1) // (HQ // HKV) + 1
    for i = 1, 24 do
      local num, den, wsum = {}, 0, 0
      for c = 1, D do num[c] = 0 end
      local ws = {}
      for j = 1, i do
        local w = 0
        for c = 1, D do w = w + phi(Q[h][i][c]) * phi(K[g][j][c]) end
        truthy(w > 0, "positive weight")
        ws[j] = w; den = den + w
      end
      for j = 1, i do
        wsum = wsum + ws[j] / den
        for c = 1, D do num[c] = num[c] + ws[j] / den * V[g][j][c] end
      end
      near(wsum, 1, 1e-12, "weights sum to one")
      for c = 1, D do near(lin[h][i][c], num[c], 1e-5, "linear attention") end
    end
  end
end)

test("salad: weights from a file (card fusion O_s + G·P·O_l)", function()
  local dir = os.tmpname(); os.remove(dir)
  local path = dir .. ".safetensors"
  local P = {}
  for a = 1, D do P[a] = {}; for b = 1, D do P[a][b] = (a == b) and 0.5 or 0 end end
  local gw = {}
  for c = 1, D do gw[c] = 0 end
  sl.save(path, {proj = sl.tensor(P), gate_w = sl.tensor(gw), gate_b = sl.tensor({0})})
  local prob = problem(45)
  local out, bout = apply(WINDOW[1], WINDOW[2], "salad", {weights = path, convex = false}, prob)
  os.remove(path)
  eq(out.stats.salad_gate_from_file, 1, "gate from the file")
  near(out.stats.salad_gate, 0.5, 1e-12, "sigmoid(0)")
  local lin = sl.attn.linear(prob.q, prob.k, prob.v, {causal = true})
  near(out.o:get(2, 30, 4), bout.o:get(2, 30, 4) + 0.5 * 0.5 * lin:get(2, 30, 4), 1e-5, "O_s + G·P·O_l")
end)

-- ---- psa_pyramid (correction) ----
-- a block-level base (whole blocks, the diagonal with its causal bits):
-- the complement of its blocks is exactly the pairs it leaves out
local BLOCKS = {"power_attention", {block = 16, window = 1, sink = 0, bq = 16, bk = 16}}

test("psa_pyramid correction: level 1 fills every skipped block exactly; identical groups equal dense", function()
  local prob = problem(51)
  local od = dense(prob)
  local out, bout = apply(BLOCKS[1], BLOCKS[2], "psa_pyramid", {level = 1}, prob)
  truthy(rel(out.o, od) < 1e-5, "level 1 over the complement = dense: " .. rel(out.o, od))
  truthy(rel(bout.o, od) > 0.05, "the base alone is far from dense")
  local o8 = apply(BLOCKS[1], BLOCKS[2], "psa_pyramid", {level = 8}, prob)
  truthy(rel(o8.o, od) < rel(bout.o, od), "pooled blocks are better than none")
  -- keys and values constant over groups of 8: level 8 is exact (log s bias)
  local K, V = prob.k:totable(), prob.v:totable()
  for g = 1, HKV do
    for j = 1, N do
      local src = ((j - 1) // 8) * 8 + 1
      for c = 1, D do K[g][j][c] = K[g][src][c]; V[g][j][c] = V[g][src][c] end
    end
  end
  local p2 = sl.problem{q = prob.q, k = sl.tensor(K), v = sl.tensor(V)}
  local o_exact = apply(BLOCKS[1], BLOCKS[2], "psa_pyramid", {level = 8}, p2)
  truthy(rel(o_exact.o, dense(p2)) < 1e-5, "identical groups = dense: " .. rel(o_exact.o, dense(p2)))
  H.raises(function() apply(WINDOW[1], WINDOW[2], "psa_pyramid", {level = 6}, prob) end, "power of two")
end)

test("flashblock, psa_pyramid: a composite mask (block part + columns) is used through its materialize()", function()
  local base = sl.methods.get(BLOCKS[1])
  for _, id in ipairs{"flashblock", "psa_pyramid"} do
    local prob = problem(53)
    local bout = base.run(prob, sl.registry.resolve(base, BLOCKS[2]))
    local want = module(id).after(prob, cparams(module(id)), bout)
    local real = bout.mask
    bout.mask = setmetatable({}, {__index = {materialize = function() return real end}})
    local got = module(id).after(prob, cparams(module(id)), bout)
    eq(sl.metric.max_abs(got.o, want.o), 0, id .. ": same output through materialize()")
    bout.mask = nil
    H.raises(function() module(id).after(prob, cparams(module(id)), bout) end, "no block mask", id)
  end
end)

-- ---- psa_pyramid (method) ----
test("psa_pyramid method: all level 1 is dense; density accounting; importance against plain Lua", function()
  local prob = problem(61, {n = 128})
  local m = sl.methods.get("psa_pyramid")
  local od = dense(prob)
  local out = m.run(prob, sl.registry.resolve(m, {bq = 32, bk = 16, r1 = 1}))
  truthy(rel(out.o, od) < 1e-5, "r1 = 1: every block level 1 = dense")
  near(out.stats.density, 1, 1e-9, "density 1")
  local o2 = m.run(prob, sl.registry.resolve(m, {bq = 32, bk = 16}))
  truthy(o2.stats.density < 0.9 and o2.stats.density > o2.stats.density_level1, "pooled levels add density")
  truthy(rel(o2.o, od) < 0.9, "close to dense")
  -- scale 0: only the forced diagonal blocks
  local o0 = m.run(prob, sl.registry.resolve(m, {bq = 32, bk = 16, scale = 0}))
  truthy(o0.stats.density < o2.stats.density, "scale 0 keeps less")
  -- importance: max sampled probability per block, recomputed here for head 1, block (3, 2)
  local p = sl.registry.resolve(m, {bq = 32, bk = 16})
  local imp = m.importance(prob, p)
  truthy(imp[1][3][2] > 0 and imp[1][3][2] <= 1, "a probability")
  -- score.exact on the gathered sub-problem (when present) = the plain Lua loops
  local lua_imp = m.importance(prob, p, true)
  for h = 1, HQ do
    for I = 1, #imp[h] do
      for J = 1, #imp[h][I] do near(imp[h][I][J], lua_imp[h][I][J], 1e-5, "importance") end
    end
  end
end)

-- ---- through the framework, when present ----
local ok_fw, correct = pcall(require, "sparselab.correct")
if ok_fw and type(correct) == "table" and correct.apply then
  test("framework: base+correction ids evaluate and count correction cost apart", function()
    for _, id in ipairs{"re_ttention", "flashblock", "salad", "psa_pyramid"} do
      local prob = problem(71, {state = {}})
      local r = sl.eval("sliding_window+" .. id, prob, {params = WINDOW[2]})
      truthy(r.metrics.correction_flops and r.metrics.correction_flops > 0, id .. ": correction_flops")
      truthy(r.metrics.correction_ms ~= nil, id .. ": correction_ms")
      near(r.metrics.flops, r.metrics.base_flops + r.metrics.correction_flops, 1e-6 * r.metrics.flops,
        id .. ": flops = base + correction")
      -- the same numbers as the module applied by hand on a fresh state
      local own = apply(WINDOW[1], WINDOW[2], id, {}, problem(71, {state = {}}))
      near(r.metrics.rel_l2, rel(own.o, dense(prob)), 1e-6, id .. ": rel_l2 as composed by hand")
    end
  end)
end

H.done()
