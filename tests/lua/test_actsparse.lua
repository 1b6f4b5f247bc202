-- test_actsparse.lua — FFN activation sparsity in the shipped TinyStories
-- model (sparselab.actsparse; cards topk_activation, channel_threshold,
-- act_sparse_matmul): top-k keeps exactly k hidden units per token and
-- beats k random units (score-blind); k = hidden and theta = 0 leave the
-- logits bit-identical; CATS / CHESS thresholds calibrated on two shipped
-- texts reach the target sparsity there, are evaluated on a held-out text,
-- and beat a random channel mask of the same density; the act-sparse down
-- projection equals the dense one on the real sparse activations.
package.path = "tests/lua/?.lua;" .. package.path
local H = require "harness"
local sl = require "sparselab"
local A = require "sparselab.actsparse"
local test, near, eq, truthy = H.test, H.near, H.eq, H.truthy

local DATA = "experiments/data/tinystories260k"
local m = sl.model.load(DATA .. "/model.bin")
local function text(name)
  local f = assert(io.open(DATA .. "/texts/" .. name .. ".txt", "rb"))
  local s = f:read("a")
  f:close()
  return s
end
local CALIB = {m:encode(text("03_brave_turtle")), m:encode(text("04_cake_for_mom"))}
local HELD = {m:encode(text("06_little_seed"))}
local hidden, L = m.cfg.hidden_dim, m.cfg.n_layers

local function logits(ids, hook)
  local st <close> = m.c:state(#ids)
  return m.c:forward(ids, st, nil, hook):totable()
end

local function same(a, b)
  for i = 1, #a do for j = 1, #a[i] do if a[i][j] ~= b[i][j] then return false end end end
  return true
end

-- score-blind: k (or a share of) units per token chosen at random
local function random_hook(keep_share, seed)
  local n = 0
  return function(_, site, x)
    if site ~= "ffn_hidden" then return nil end
    n = n + 1
    local r = sl.rand(x:shape(), {seed = seed + n}):totable()
    local h = x:totable()
    for i, row in ipairs(h) do for j = 1, #row do if r[i][j] >= keep_share then row[j] = 0 end end end
    return sl.tensor(h)
  end
end

local function nll_with(hook)
  local total, n = 0, 0
  for _, ids in ipairs(HELD) do
    local st <close> = m.c:state(#ids)
    local c = sl.model_c.compare(m.c:forward(ids, st), m.c:forward(ids, m.c:state(#ids), nil, hook), ids)
    total, n = total + c.nll * c.n, n + c.n
  end
  return total / n
end

test("top-k: exactly k units per token kept; k = hidden is the dense model", function()
  local ids = HELD[1]
  local stats = {}
  A.nll(m, {ids}, {kind = "topk", k = 32}, stats)
  eq(stats.kept, 32 * #ids * L, "k per token per layer")
  eq(stats.hidden, hidden * #ids * L, "units seen")
  near(stats.flops_down / stats.flops_down_dense, 32 / hidden, 1e-12, "down-projection FLOPs")
  truthy(same(logits(ids, A.hook(m, {kind = "topk", k = hidden})), logits(ids)), "k = hidden")
end)

test("top-k by |h| beats k random units per token (held-out NLL)", function()
  local dense = A.nll(m, HELD)
  local topk = A.nll(m, HELD, {kind = "topk", k = 43})
  local rnd = nll_with(random_hook(0.25, 100))
  truthy(topk < rnd, string.format("top-k %.4f < random %.4f (dense %.4f)", topk, rnd, dense))
  truthy(topk >= dense - 0.05, "sparsity does not help much")
end)

test("the act-sparse down projection equals the dense one on real sparse activations", function()
  local got
  local st <close> = m.c:state(#HELD[1])
  m.c:forward(HELD[1], st, nil, function(layer, site, x)
    if layer == 2 and site == "ffn_hidden" then got = sl.act.topk(x, {k = 20}); return got end
  end)
  local w2 = m.c:weight("layers.2.w2"):totable() -- [dim, hidden]
  local wt = {}
  for k = 1, hidden do wt[k] = {} for r = 1, #w2 do wt[k][r] = w2[r][k] end end
  local ys, yd = sl.mm.act_sparse(got, sl.tensor(wt)):totable(), sl.mm.dense(got, sl.tensor(w2)):totable()
  local err, scale = 0, 0
  for i, row in ipairs(yd) do for j, v in ipairs(row) do
    scale = math.max(scale, math.abs(v)); err = math.max(err, math.abs(v - ys[i][j]))
  end end
  truthy(err <= 1e-5 * scale, "rel err " .. err / scale)
  eq(sl.op_flops("mm.act_sparse", got, sl.tensor(wt)), 2 * 20 * #HELD[1] * #w2, "flops of the nonzeros")
end)

test("CATS / CHESS: calibrated on two texts to s = 0.5, evaluated on a held-out one", function()
  local cal = A.calibrate(m, CALIB, 0.5)
  -- achieved gate sparsity on the calibration set: about s
  for _, kind in ipairs{"cats", "chess"} do
    local stats = {}
    A.nll(m, CALIB, {kind = "threshold", theta = cal[kind]}, stats)
    near(1 - stats.kept / stats.hidden, 0.5, 0.03, kind .. " calibration sparsity")
  end
  local dense = A.nll(m, HELD)
  local res = {}
  for _, kind in ipairs{"cats", "chess"} do
    local stats = {}
    res[kind] = A.nll(m, HELD, {kind = "threshold", theta = cal[kind]}, stats)
    res[kind .. "_sparsity"] = 1 - stats.kept / stats.hidden
    truthy(res[kind .. "_sparsity"] > 0.35, kind .. " held-out sparsity " .. res[kind .. "_sparsity"])
  end
  local rnd = nll_with(random_hook(1 - res.cats_sparsity, 200))
  truthy(res.cats < rnd and res.chess < rnd, string.format("cats %.4f, chess %.4f < random %.4f (dense %.4f)",
    res.cats, res.chess, rnd, dense))
  -- theta = 0: the dense model
  local zero = {}
  for l = 0, L - 1 do zero[l] = sl.zeros({hidden}) end
  truthy(same(logits(HELD[1], A.hook(m, {kind = "threshold", theta = zero})), logits(HELD[1])), "theta = 0")
end)

test("temporal delta over the token axis: theta = 0 is dense, calibrated deltas beat random sends", function()
  local zero = {}
  for l = 0, L - 1 do zero[l] = sl.zeros({hidden}) end
  local dense = A.nll(m, HELD)
  near(A.nll(m, HELD, {kind = "delta", theta = zero}), dense, 1e-4, "theta = 0")
  local th = A.calibrate_delta(m, CALIB, 0.5)
  local cal_stats, stats = {}, {}
  A.nll(m, CALIB, {kind = "delta", theta = th}, cal_stats)
  local sent = cal_stats.kept / cal_stats.hidden
  truthy(sent > 0.3 and sent < 0.7, "calibration: share sent " .. sent)
  local nll = A.nll(m, HELD, {kind = "delta", theta = th}, stats)
  -- score-blind: send a random share of the units per token instead (the rest keep the last sent value)
  local share = stats.kept / stats.hidden
  local rnd_hook = function(layer, site, x)
    if site ~= "ffn_hidden" then return nil end
    local r = sl.rand(x:shape(), {seed = 300 + layer}):totable()
    local h = x:totable()
    for t = 2, #h do for j = 1, hidden do if r[t][j] >= share then h[t][j] = h[t - 1][j] end end end
    return sl.tensor(h)
  end
  local rnd = nll_with(rnd_hook)
  truthy(nll < rnd, string.format("delta %.4f < random sends %.4f (dense %.4f, sent %.3f)", nll, rnd, dense, share))
end)

H.done()
