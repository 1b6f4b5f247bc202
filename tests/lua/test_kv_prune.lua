-- test_kv_prune.lua — magnitude_prune step 7 (issue 17, session 4): the KV
-- variant (SparAMX: a magnitude threshold over a layer's whole K or V cache)
-- and the elbow of the sparsity sweep. Card checks: exactly floor(s . numel)
-- zeros (per layer, or per head), 0 % leaves the logits unchanged, attention
-- output rel-L2 monotone in s on random data, every kept |entry| >= every
-- pruned one (a random mask of the same count fails it), and on the shipped
-- model magnitude KV pruning beats random KV pruning of the same count. The
-- elbow returns the true knee of synthetic piecewise-linear curves (the
-- midpoint and the steepest step, score-blind picks, fail).
package.path = "tests/lua/?.lua;" .. package.path
local H = require "harness"
local sl = require "sparselab"
local P = require "sparselab.prune"
local test, eq, truthy = H.test, H.eq, H.truthy

local DATA = "experiments/data/tinystories260k"
local m = sl.model.load(DATA .. "/model.bin")
local f = assert(io.open(DATA .. "/texts/07_toy_shop.txt", "rb"))
local ids = m:encode(f:read("a"))
f:close()
local seq = {}
for i = 1, math.min(120, #ids) do seq[i] = ids[i] end

local function flat(t)
  local out = {}
  local function walk(x) if type(x) == "table" then for _, y in ipairs(x) do walk(y) end else out[#out + 1] = x end end
  walk(t:totable())
  return out
end

-- zeros of p, and whether every kept |entry| of p is >= every entry of t zeroed in p
local function zeros_and_dominance(t, p)
  local a, b = flat(t), flat(p)
  local z, lo_kept, hi_pruned = 0, math.huge, -math.huge
  for i = 1, #a do
    if b[i] == 0 then z = z + 1; hi_pruned = math.max(hi_pruned, math.abs(a[i]))
    else lo_kept = math.min(lo_kept, math.abs(a[i])); eq(b[i], a[i], "a kept entry is copied") end
  end
  return z, lo_kept >= hi_pruned
end

-- the model's K and V caches of every layer at the end of a prefill
local caches = {}
do
  local st <close> = m.c:state(#seq)
  m.c:forward(seq, st, function(layer, q, k, v)
    caches[layer] = {k = k, v = v}
    return (sl.attn.dense(q, k, v, {causal = true}))
  end)
end

test("magnitude_prune: KV caches hold exactly floor(s . numel) zeros, kept >= pruned; a random mask fails", function()
  for l = 0, m.cfg.n_layers - 1 do
    for _, which in ipairs{"k", "v"} do
      local t = caches[l][which]
      local H_, n, d = t:shape()[1], t:shape()[2], t:shape()[3]
      for _, s in ipairs{0.3, 0.5, 0.9} do
        local z, dom = zeros_and_dominance(t, P.kv_prune(t, s))
        eq(z, math.floor(s * H_ * n * d), "layer scope count")
        truthy(dom, "layer scope: kept >= pruned")
        local zh = 0
        local ph = P.kv_prune(t, s, {scope = "head"})
        for h = 1, H_ do
          local zz, dh = zeros_and_dominance(t:narrow(1, h, 1), ph:narrow(1, h, 1))
          eq(zz, math.floor(s * n * d), "head scope count")
          truthy(dh, "head scope: kept >= pruned within the head")
          zh = zh + zz
        end
        local zr, dr = zeros_and_dominance(t, P.kv_prune(t, s, {blind = "random", seed = l}))
        eq(zr, math.floor(s * H_ * n * d), "the random control zeroes the same count")
        truthy(not dr, "a random mask does not keep the largest")
      end
    end
  end
end)

test("magnitude_prune: KV pruning at 0 % leaves the logits unchanged", function()
  local st <close> = m.c:state(#seq)
  local dense = m.c:forward(seq, st):totable()
  local st2 <close> = m.c:state(#seq)
  local kv = m.c:forward(seq, st2, P.kv_hook({k = 0, v = 0})):totable()
  for i = 1, #dense do for j = 1, #dense[i] do eq(kv[i][j], dense[i][j], "0 % is dense") end end
end)

test("magnitude_prune: attention output rel-L2 grows with the KV sparsity (random data)", function()
  local q = sl.randn({4, 50, 16}, {seed = 1770})
  local k = sl.randn({2, 50, 16}, {seed = 1771})
  local v = sl.randn({2, 50, 16}, {seed = 1772})
  local o = flat(sl.attn.dense(q, k, v, {causal = true}))
  local prev = -1
  for _, s in ipairs{0, 0.2, 0.4, 0.6, 0.8, 0.95} do
    local ps = flat(sl.attn.dense(q, P.kv_prune(k, s), P.kv_prune(v, s), {causal = true}))
    local num, den = 0, 0
    for i = 1, #o do num = num + (ps[i] - o[i]) ^ 2; den = den + o[i] ^ 2 end
    local e = math.sqrt(num / den)
    if s == 0 then eq(e, 0, "s = 0 is exact") end
    truthy(e > prev, string.format("rel-L2 %.4f at s %.2f above %.4f", e, s, prev))
    prev = e
  end
end)

test("magnitude_prune: KV magnitude pruning beats random KV pruning of the same count on the model", function()
  local function nll(hook)
    local st <close> = m.c:state(#seq)
    local lg = m.c:forward(seq, st, hook)
    return sl.model_c.compare(lg, lg, seq).nll
  end
  for _, s in ipairs{0.3, 0.5} do
    local mag = nll(P.kv_hook({k = s, v = s}))
    local rnd = nll(P.kv_hook({k = s, v = s, blind = "random"}))
    truthy(mag < rnd, string.format("s %.1f: magnitude %.3f < random %.3f", s, mag, rnd))
  end
end)

test("magnitude_prune: the elbow is the knee of piecewise-linear curves; blind picks fail", function()
  local xs = {0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98}
  local rng = sl.rand({40}, {seed = 1775}):totable()
  local mid_fails, steep_fails = 0, 0
  for c = 1, 20 do
    local knee = 2 + math.floor(rng[c] * 9) -- index 2..10
    local slope1, slope2 = 0.05 + rng[c + 20], 20 + 30 * rng[c + 20]
    local ys = {}
    for i, x in ipairs(xs) do
      ys[i] = x <= xs[knee] and slope1 * x or slope1 * xs[knee] + slope2 * (x - xs[knee])
    end
    local bi, bx = P.elbow(xs, ys)
    eq(bi, knee, "the elbow at the knee (curve " .. c .. ")"); eq(bx, xs[knee])
    -- score-blind picks: the middle of the sweep; the steepest single step's start
    if math.floor((#xs + 1) / 2) ~= knee then mid_fails = mid_fails + 1 end
    local si, sv = 1, -math.huge
    for i = 1, #xs - 1 do
      local g = (ys[i + 1] - ys[i]) / (xs[i + 1] - xs[i])
      if g > sv then si, sv = i, g end
    end
    if si ~= knee then steep_fails = steep_fails + 1 end
  end
  truthy(mid_fails >= 10, "the midpoint misses most knees: " .. mid_fails)
  truthy(steep_fails >= 10, "the steepest step misses most knees: " .. steep_fails)
  -- essential sparsity: the largest x within tol of the first point
  eq(P.essential({0, 0.1, 0.2, 0.3}, {5, 5.01, 5.04, 6}, 0.05), 0.2)
  eq(P.essential({0, 0.1}, {5, 9}, 0.05), 0)
end)

H.done()
