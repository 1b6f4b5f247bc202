-- test_budget.lua — sl.budget.match (issue 4 budget matching): bisection on
-- sliding_window's integer knob and on a float knob with knob_direction -1
-- (fake methods registered here), density / flops / kv_bytes targets checked
-- against independent counts in plain Lua, targets out of reach, and
-- sl.budget.kv_bytes against a brute-force count over the mask's pairs.
-- Run with LUA_CPATH=build/?.so lua5.4 tests/lua/test_budget.lua
package.path = "tests/lua/?.lua;" .. package.path
local H = require "harness"
local sl = require "sparselab"
local recipe = require "sparselab.recipe"
local test, near, eq, truthy, raises = H.test, H.near, H.eq, H.truthy, H.raises

local function problem(hq, hkv, n, d, seed)
  return sl.problem{q = sl.randn({hq, n, d}, {seed = seed}), k = sl.randn({hkv, n, d}, {seed = seed + 1}),
    v = sl.randn({hkv, n, d}, {seed = seed + 2})}
end

-- density of a causal window w at n tokens, counted pair by pair
local function window_density(n, w)
  local kept = 0
  for i = 0, n - 1 do kept = kept + math.min(i + 1, w) end
  return kept / (n * (n + 1) / 2)
end

-- A float-knob method with knob_direction -1 (larger threshold keeps fewer
-- pairs, like a score threshold): a causal window of round((1 - t)·n) keys.
local function w_of(t, n) return math.max(1, math.floor((1 - t) * n + 0.5)) end
sl.methods.register{
  id = "fake_threshold", title = "test: float knob, larger keeps fewer", family = "test-estimate",
  phase = "prefill", knob = "t", knob_direction = -1,
  params = recipe.block_params{t = {default = 0.5, min = 0, max = 1, doc = "threshold"}},
  mask = function(prob, p) return recipe.materialize(sl.mask.window(w_of(p.t, prob.k:shape()[2])), prob, p) end,
  run = function() error("budget.match must use mask for a density target") end,
}

-- A method without mask whose cost is known in closed form: executor FLOPs
-- 1000·x, estimator FLOPs 5000 (both must count).
local runs = 0
sl.methods.register{
  id = "fake_cost", title = "test: cost known in closed form", family = "test-estimate", phase = "prefill",
  knob = "x", params = {x = {default = 1, min = 1, max = 100, int = true}},
  run = function(prob, p)
    runs = runs + 1
    return {o = prob.q, lse = nil, stats = {flops = 1000 * p.x, estimator_flops = 5000, density = p.x / 100}}
  end,
}

test("density target on sliding_window: the smallest window reaching it", function()
  math.randomseed(41)
  for _ = 1, 3 do
    local n = math.random(300, 700)
    local prob = problem(2, 1, n, 16, math.random(1, 1000))
    local target = 0.05 + math.random() * 0.6
    local r = sl.budget.match{method = "sliding_window", prob = prob, target = "density", value = target,
      params = {bq = 32, bk = 32}}
    eq(r.knob, "w", "knob")
    local want = window_density(n, r.value)
    near(r.achieved, want, 1e-12, "achieved density equals the independent count")
    truthy(want >= target, "window reaches the target")
    truthy(window_density(n, r.value - 1) < target, "one key less does not")
    eq(r.target_value, target, "target kept")
    truthy(r.steps <= 2 + math.ceil(math.log(n, 2)) + 1, "bisection step count " .. r.steps)
  end
end)

test("float knob with knob_direction -1 reaches the target within tolerance", function()
  local n = 1024
  local prob = problem(2, 1, n, 16, 7)
  for _, target in ipairs{0.05, 0.2, 0.5} do
    local r = sl.budget.match{method = "fake_threshold", prob = prob, target = "density", value = target,
      params = {bq = 32, bk = 32}, tol = 0.01}
    truthy(r.within_tol, "within tolerance at " .. target .. ": achieved " .. r.achieved)
    truthy(math.abs(r.achieved - target) <= 0.01 * target, "relative error")
    near(r.achieved, window_density(n, w_of(r.value, n)), 1e-12, "achieved equals the independent count")
    truthy(r.value > 0 and r.value < 1, "threshold strictly inside its range")
    -- direction -1: a larger threshold keeps fewer pairs, so the dear end is 0
    near(r.range[1], window_density(n, 1), 1e-12, "range[1]: the density at the cheap end (t = 1, w = 1)")
    near(r.range[2], 1, 1e-12, "range[2]: the density at the dear end (t = 0, dense)")
  end
end)

test("targets out of reach fail with the reachable range", function()
  local prob = problem(2, 1, 256, 16, 3)
  raises(function() sl.budget.match{method = "sliding_window", prob = prob, value = 0.001, params = {bq = 16, bk = 16}} end,
    "cannot go down to density", "too small")
  local lo = window_density(256, 1)
  raises(function() sl.budget.match{method = "sliding_window", prob = prob, target = "flops", value = 1e15} end,
    "cannot reach flops", "too large")
  local ok, err = pcall(sl.budget.match, {method = "sliding_window", prob = prob, value = 0.001, params = {bq = 16, bk = 16}})
  truthy(not ok and err:find(string.format("%.4g", lo), 1, true), "message gives the reachable low end: " .. tostring(err))
  raises(function() sl.budget.match{method = "sliding_window", prob = prob, value = 1.5} end, "in (0, 1]", "density > 1")
  raises(function() sl.budget.match{method = "sliding_window", prob = prob, target = "latency", value = 1} end,
    "unknown target 'latency'", "unknown target")
  raises(function() sl.budget.match{method = "dense", prob = prob, value = 0.5} end, "has no budget knob", "no knob")
  raises(function() sl.budget.match{method = "sliding_window", prob = prob, valeu = 0.5} end, "unknown key 'valeu'", "typo")
end)

test("flops target counts estimator FLOPs (method without a mask: run)", function()
  local prob = problem(1, 1, 64, 8, 5)
  math.randomseed(43)
  for _ = 1, 4 do
    local target = math.random(7000, 100000) + 0.5
    runs = 0
    local r = sl.budget.match{method = "fake_cost", prob = prob, target = "flops", value = target}
    -- smallest x with 1000·x + 5000 >= target
    local want = math.max(1, math.ceil((target - 5000) / 1000))
    eq(r.value, want, "knob for flops " .. target)
    eq(r.achieved, 1000 * want + 5000, "achieved = executor + estimator")
    truthy(runs >= 2, "run was used")
  end
  raises(function() sl.budget.match{method = "fake_cost", prob = prob, target = "flops", value = 5500} end,
    "cannot go down to flops", "below the estimator's own cost")
end)

test("flops target on sliding_window equals the executor's FLOPs at the solved window", function()
  local prob = problem(4, 2, 384, 16, 9)
  local lo = sl.eval("sliding_window", prob, {budget = 1, params = {bq = 32, bk = 32}}).metrics.flops
  local hi = sl.eval("sliding_window", prob, {budget = 384, params = {bq = 32, bk = 32}}).metrics.flops
  local target = lo + 0.37 * (hi - lo)
  local r = sl.budget.match{method = "sliding_window", prob = prob, target = "flops", value = target,
    params = {bq = 32, bk = 32}}
  local at = sl.eval("sliding_window", prob, {budget = r.value, params = {bq = 32, bk = 32}}).metrics
  eq(r.achieved, at.flops + at.estimator_flops, "achieved = recorded flops")
  truthy(r.achieved >= target, "reaches the target")
  local below = sl.eval("sliding_window", prob, {budget = r.value - 1, params = {bq = 32, bk = 32}}).metrics.flops
  truthy(below < target, "one key less is below it")
end)

-- K/V bytes by brute force: for every KV head g and query block, a key block
-- counts (its clipped width) when any pair in it is kept by any query head of g.
local function brute_kv_bytes(mk, hq, hkv, d)
  local info = mk:info()
  local hm, n_q, n_k, bq, bk = info.n_heads, info.n_q, info.n_k, info.bq, info.bk
  local keys = 0
  for g = 0, hkv - 1 do
    for r0 = 0, n_q - 1, bq do
      for c0 = 0, n_k - 1, bk do
        local used = false
        for h = g * (hq // hkv), (g + 1) * (hq // hkv) - 1 do
          local mh = hm == 1 and 0 or h // (hq // hm)
          for i = r0, math.min(r0 + bq, n_q) - 1 do
            for j = c0, math.min(c0 + bk, n_k) - 1 do
              if mk:get(mh + 1, i + 1, j + 1) then used = true break end
            end
            if used then break end
          end
          if used then break end
        end
        if used then keys = keys + math.min(bk, n_k - c0) end
      end
    end
  end
  return keys * d * 2 * 4
end

test("kv_bytes equals a brute-force count (shared, per-KV-head and per-query-head masks)", function()
  math.randomseed(47)
  local hq, hkv, n, d = 4, 2, 150, 8
  local prob = problem(hq, hkv, n, d, 11)
  local items = {}
  for h = 1, hq do items[h] = sl.mask.window(math.random(5, 60)) + sl.mask.sink(math.random(0, 3)) end
  for _, heads in ipairs{1, hkv, hq} do
    local pat = heads == 1 and items[1] or sl.mask.assign({table.unpack(items, 1, heads)})
    local mk = pat:materialize{n_q = n, n_k = n, bq = 16, bk = 24, n_heads = heads}
    local got = sl.budget.kv_bytes(mk, prob)
    eq(got, brute_kv_bytes(mk, hq, hkv, d), "kv_bytes with " .. heads .. " mask heads")
    sl.budget.slice = 7 -- col_idx read in many slices gives the same count
    eq(sl.budget.kv_bytes(mk, prob), got, "sliced read, " .. heads .. " mask heads")
    sl.budget.slice = 500000
    truthy(got > 0, "positive")
  end
end)

test("kv_bytes target on sliding_window: smallest window reaching it", function()
  local prob = problem(4, 2, 320, 8, 13)
  local p = {bq = 32, bk = 32}
  local full = sl.budget.kv_bytes(sl.methods.get("sliding_window").mask(prob, sl.registry.resolve(
    sl.methods.get("sliding_window"), p, 320)), prob)
  -- dense causal with 32-wide tiles: Σ_r (r+1)·32 keys per KV head
  local nqb = 10
  eq(full, 2 * (nqb * (nqb + 1) / 2) * 32 * 8 * 2 * 4, "dense causal kv_bytes")
  local r = sl.budget.match{method = "sliding_window", prob = prob, target = "kv_bytes", value = full * 0.4, params = p}
  truthy(r.achieved >= full * 0.4, "reaches the target")
  local m = sl.methods.get("sliding_window")
  local below = sl.budget.kv_bytes(m.mask(prob, sl.registry.resolve(m, p, r.value - 1)), prob)
  truthy(below < full * 0.4, "one key less is below")
  local res = sl.eval("sliding_window", prob, {budget = r.value, params = p})
  eq(res.metrics.kv_bytes, r.achieved, "eval records the same kv_bytes")
end)

test("eval reports estimate/execute split for a static method", function()
  local prob = problem(2, 1, 128, 8, 17)
  local m = sl.eval("sliding_window", prob, {budget = 32, params = {bq = 16, bk = 16}}).metrics
  eq(m.estimate_ms, 0, "static: estimate_ms = 0")
  eq(m.estimator_flops, 0, "static: estimator_flops = 0")
  eq(m.execute_ms, m.time_ms, "static: execute_ms = time_ms")
end)

H.done()
