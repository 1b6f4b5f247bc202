-- test_runexec.lua — the model runner dispatches its own products to the
-- sparse executors (issue 17, session 3; cards nm_sparse_matmul,
-- unstructured_sparse_matmul, act_sparse_matmul, topk_activation,
-- channel_threshold): with 2:4-pruned weights run through mm.nm, 50 %
-- magnitude-pruned weights through mm.bitmap, top-k activations through
-- mm.act_sparse, the logits equal the runner's dense sgemm on the same zeroed
-- weights / activations (max |diff| <= 1e-5 . max |logit|: the products are
-- the same sums in another order, f32); the executors really ran (their
-- stats count the products and the flops they did, below dense); an N:M
-- format on a weight that is not N:M is refused in one line; a replaced
-- weight falls back to dense.
package.path = "tests/lua/?.lua;" .. package.path
local H = require "harness"
local sl = require "sparselab"
local P = require "sparselab.prune"
local A = require "sparselab.actsparse"
local E = require "sparselab.runexec"
local test, eq, truthy = H.test, H.eq, H.truthy

local DATA = "experiments/data/tinystories260k"
local m = sl.model.load(DATA .. "/model.bin")
local f = assert(io.open(DATA .. "/texts/06_little_seed.txt", "rb"))
local IDS = m:encode(f:read("a"))
f:close()
local L = m.cfg.n_layers
local RTOL = 1e-5

local function logits(site)
  local st <close> = m.c:state(#IDS)
  return m.c:forward(IDS, st, nil, site):totable()
end

local function maxdiff(a, b)
  local d, big = 0, 0
  for i = 1, #a do
    for j = 1, #a[i] do
      d = math.max(d, math.abs(a[i][j] - b[i][j]))
      big = math.max(big, math.abs(a[i][j]))
    end
  end
  return d, big
end

local function same_as_dense(site, what)
  m.c:exec_stats(true) -- reset
  local sparse = logits(site)
  local stats = m.c:exec_stats(true)
  E.off(m)
  local dense = logits(site)
  local d, big = maxdiff(sparse, dense)
  truthy(d <= RTOL * big, string.format("%s: max |logit diff| %.3g <= %g . max |logit| %.3g", what, d, RTOL, big))
  return stats
end

local snap = P.snapshot(m)

test("runexec: 2:4-pruned weights run through mm.nm and equal the dense sgemm on them", function()
  P.magnitude(m, {n = 2, m = 4})
  E.use(m, {weights = "nm", n = 2, m = 4})
  for l = 0, L - 1 do for _, k in ipairs(E.KINDS) do eq(m.c:exec_format(l, k), "nm", "format") end end
  local s = same_as_dense(nil, "2:4 nm")
  for _, k in ipairs(E.KINDS) do
    eq(s[k].calls, L, k .. " products through the executor")
    eq(s[k].rows, L * #IDS, k .. " rows")
  end
  local w2 = m.c:weight("layers.0.w2"):shape()
  -- mm.nm forms every kept slot: half the dense flops
  H.near(s.w2.flops, L * #IDS * w2[1] * w2[2], 0.5, "w2 flops (2 per kept weight = half of dense)")
  P.restore(m, snap)
end)

test("runexec: 50 % magnitude-pruned weights run through mm.bitmap (and auto picks it) and equal dense", function()
  P.magnitude(m, {sparsity = 0.5})
  E.use(m, {weights = "auto", threshold = 0.6})
  for _, k in ipairs(E.KINDS) do eq(m.c:exec_format(2, k), "bitmap", "auto at density 0.5 < 0.6") end
  local s = same_as_dense(nil, "bitmap 50 %")
  local w1 = m.c:weight("layers.0.w1"):shape()
  H.near(s.w1.flops, L * #IDS * w1[1] * w1[2], 1, "w1 flops: 2 per set bit")
  E.use(m, {weights = "auto", threshold = 0.4})
  eq(m.c:exec_format(2, "w1"), "dense", "auto at density 0.5 >= 0.4")
  P.restore(m, snap)
end)

test("runexec: top-k FFN activations run w2 through mm.act_sparse and equal dense", function()
  local stats = {}
  local k = 43
  E.use(m, {act = true})
  eq(m.c:exec_format(0, "w2"), "act", "w2 format")
  local s = same_as_dense(A.hook(m, {kind = "topk", k = k}, stats), "act-sparse w2")
  local d = m.cfg.dim
  -- act_sparse flops: 2 . dim per nonzero activation, k per token (top-k keeps exactly k)
  H.near(s.w2.flops, L * #IDS * k * 2 * d, 0.5, "w2 flops = 2 dim per kept unit")
  E.use(m, {act = true})
  local th = A.calibrate(m, {IDS}, 0.5)
  local s2 = same_as_dense(A.hook(m, {kind = "threshold", theta = th.chess}), "act-sparse w2 (CHESS thresholds)")
  truthy(s2.w2.flops < 0.75 * L * #IDS * m.cfg.hidden_dim * 2 * d, "thresholded w2 flops well below dense")
  -- CATS/CHESS pipeline: gate dense -> support -> up output-sparse (mm.out_sparse) -> down input-sparse
  E.use(m, {act = true})
  for l = 0, L - 1 do m.c:exec_gate(l, th.chess[l]) end
  eq(m.c:exec_format(0, "w3"), "gated", "w3 format")
  local s4 = same_as_dense(A.hook(m, {kind = "threshold", theta = th.chess}), "gated w3 + act-sparse w2 (CHESS)")
  local w3 = m.c:weight("layers.0.w3"):shape()
  truthy(s4.w3.flops < 0.75 * L * #IDS * w3[1] * w3[2] * 2, "gated w3 flops well below dense")
  truthy(s4.w3.flops > 0, "gated w3 ran through mm.out_sparse")
  E.use(m, {act = true})
  local s3 = same_as_dense(A.hook(m, {kind = "stat_topk", sparsity = 0.8}), "act-sparse w2 (statistical top-k)")
  truthy(s3.w2.flops < 0.5 * L * #IDS * m.cfg.hidden_dim * 2 * d, "stat_topk 0.8: w2 flops well below dense")
end)

test("runexec: dense format equals the untimed runner exactly and is timed", function()
  E.use(m, {weights = "dense"})
  local a = logits()
  local s = m.c:exec_stats(true)
  E.off(m)
  local b = logits()
  local dd = maxdiff(a, b)
  eq(dd, 0, "dense executor = runner sgemm")
  truthy(s.w1.seconds > 0 and s.w1.calls == L, "dense products timed")
end)

test("runexec: N:M on a weight that is not N:M is refused in one line; a replaced weight runs dense", function()
  H.raises(function() m.c:exec_set(0, "w1", "nm", 2, 4) end, "layers.0.w1 is not 2:4 sparse", "unpruned nm")
  H.raises(function() m.c:exec_set(0, "w9", "dense") end, "expected a weight wq", "unknown weight")
  P.magnitude(m, {n = 2, m = 4})
  E.use(m, {weights = "nm"})
  P.restore(m, snap) -- set_weight on every linear
  eq(m.c:exec_format(1, "w2"), "dense", "a replaced weight falls back to dense")
  E.off(m)
end)

-- Decode: one token per forward with the KV cache; the logits of all steps.
local function decode_logits(site, n)
  local st <close> = m.c:state(n)
  local out = {}
  for i = 1, n do out[i] = m.c:forward({IDS[i]}, st, nil, site):totable()[1] end
  return out
end

test("runexec: products below min_macs run as the dense sgemm on the zeroed operands, counted in small", function()
  local NDEC, d, hid = 6, m.cfg.dim, m.cfg.hidden_dim
  truthy(d * hid < 262144, "the shipped model's decode products are below the default min_macs")
  local th = A.calibrate(m, {IDS}, 0.5)
  local cases = {
    {"2:4 nm", function() P.magnitude(m, {n = 2, m = 4}); E.use(m, {weights = "nm", n = 2, m = 4}) end},
    {"75 % bitmap", function() P.magnitude(m, {sparsity = 0.75}); E.use(m, {weights = "bitmap"}) end},
    {"act w2 + gated w3", function()
      E.use(m, {act = true}); for l = 0, L - 1 do m.c:exec_gate(l, th.chess[l]) end
    end, A.hook(m, {kind = "threshold", theta = th.chess})},
  }
  for _, c in ipairs(cases) do
    local name, set, site = c[1], c[2], c[3]
    set()
    m.c:exec_stats(true)
    local small = decode_logits(site, NDEC)
    local s1 = m.c:exec_stats(true)
    m.c:exec_min_macs(0)
    local sparse = decode_logits(site, NDEC)
    local s0 = m.c:exec_stats(true)
    E.off(m)
    local dense = decode_logits(site, NDEC)
    local d1, big = maxdiff(small, dense)
    truthy(d1 <= RTOL * big, string.format("%s small path: max |diff| %.3g vs dense", name, d1))
    local d0 = maxdiff(sparse, dense)
    truthy(d0 <= RTOL * big, string.format("%s executors: max |diff| %.3g vs dense", name, d0))
    for _, k in ipairs(E.FFN) do
      eq(s1[k].calls, L * NDEC, name .. " " .. k .. " calls")
      eq(s0[k].small, 0, name .. " " .. k .. ": min_macs 0 never takes the small path")
    end
    -- the non-dense FFN weights of this case took the small path, with dense flops
    local nondense = name == "act w2 + gated w3" and {"w3", "w2"} or E.FFN
    for _, k in ipairs(nondense) do
      eq(s1[k].small, L * NDEC, name .. " " .. k .. " products counted small")
      local w = m.c:weight("layers.0." .. k):shape()
      H.near(s1[k].flops, L * NDEC * 2 * w[1] * w[2], 0.5, name .. " " .. k .. " small path flops = dense")
      truthy(s0[k].flops < s1[k].flops, name .. " " .. k .. " executors ran fewer flops than the small path")
    end
    P.restore(m, snap)
  end
  E.off(m)
end)

H.done()
