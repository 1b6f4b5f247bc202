-- test_prune.lua — weight pruning of the shipped TinyStories model
-- (sparselab.prune; cards magnitude_prune, nm_sparse_matmul, sparsegpt_prune):
-- exact sparsity per tensor and globally, N:M per group, 0% pruning leaves
-- the logits bit-identical, SparseGPT's calibration error (on the layer
-- inputs it was calibrated on) is below magnitude pruning's at the same
-- sparsity and a random mask's is above both, pruned weights round-trip
-- through safetensors, and the compressed formats run a pruned layer exactly.
package.path = "tests/lua/?.lua;" .. package.path
local H = require "harness"
local sl = require "sparselab"
local P = require "sparselab.prune"
local test, near, eq, truthy = H.test, H.near, H.eq, H.truthy

local DATA = "experiments/data/tinystories260k"
local m = sl.model.load(DATA .. "/model.bin")
local function text(name)
  local f = assert(io.open(DATA .. "/texts/" .. name .. ".txt", "rb"))
  local s = f:read("a")
  f:close()
  return s
end
-- calibration texts and held-out texts are never the same
local CALIB = {m:encode(text("01_red_kite")), m:encode(text("02_lost_mitten"))}
local HELD = {m:encode(text("05_moon_friend"))}
local dense = P.snapshot(m)

local function zeros(t)
  local z = 0
  local function walk(x)
    if type(x) == "table" then for _, y in ipairs(x) do walk(y) end elseif x == 0 then z = z + 1 end
  end
  walk(t:totable())
  return z
end

local function logits_of(ids)
  local st <close> = m.c:state(#ids)
  return m.c:forward(ids, st)
end

local function same(a, b)
  local x, y = a:totable(), b:totable()
  for i = 1, #x do for j = 1, #x[i] do if x[i][j] ~= y[i][j] then return false end end end
  return true
end

test("magnitude, layer scope: every linear has exactly floor(s . numel) zeros", function()
  P.magnitude(m, {sparsity = 0.6})
  for _, name in ipairs(P.linears(m)) do
    local w = m.c:weight(name)
    eq(zeros(w), math.floor(0.6 * w:numel()), name)
  end
  P.restore(m, dense)
end)

test("magnitude, global scope: exact total, and every kept |w| >= every pruned |w|", function()
  P.magnitude(m, {sparsity = 0.7, scope = "global"})
  local total, z, min_kept, max_pruned = 0, 0, math.huge, 0
  for _, name in ipairs(P.linears(m)) do
    local w, d = m.c:weight(name):totable(), dense[name]:totable()
    for i = 1, #w do for j = 1, #w[i] do
      total = total + 1
      if w[i][j] == 0 then z = z + 1; max_pruned = math.max(max_pruned, math.abs(d[i][j]))
      else min_kept = math.min(min_kept, math.abs(d[i][j])) end
    end end
  end
  eq(z, math.floor(0.7 * total), "global zeros")
  truthy(min_kept >= max_pruned, "kept dominate pruned")
  -- per-layer sparsities come out unequal (class-blind)
  local a, b = zeros(m.c:weight("layers.0.wq")), zeros(m.c:weight("layers.0.w2"))
  truthy(a / m.c:weight("layers.0.wq"):numel() ~= b / m.c:weight("layers.0.w2"):numel(), "unequal per layer")
  P.restore(m, dense)
end)

test("N:M 2:4 and 4:8 masks keep exactly N of every M along the input dim", function()
  for _, nm in ipairs{{2, 4}, {4, 8}} do
    P.magnitude(m, {n = nm[1], m = nm[2]})
    for _, name in ipairs{"layers.0.wq", "layers.2.w2", "layers.4.w1"} do
      local w = m.c:weight(name):totable()
      for _, row in ipairs(w) do
        for g = 0, #row // nm[2] - 1 do
          local kept = 0
          for i = 1, nm[2] do if row[g * nm[2] + i] ~= 0 then kept = kept + 1 end end
          eq(kept, nm[1], name .. " group")
        end
      end
    end
    P.restore(m, dense)
  end
end)

test("nm_sparse_matmul: soft masks (PGF decay and structure schedule; step 2)", function()
  -- decay factors and the structure schedule, from the card's formulas
  near(P.soft_beta("linear", 0.1, 3), 0.7, 1e-12, "linear")
  eq(P.soft_beta("linear", 0.1, 30), 0, "linear clamps at 0")
  near(P.soft_beta("exp", 0.1, 3), math.exp(-0.3), 1e-12, "exp")
  eq(P.soft_beta("step", 5, 1), 0, "step")
  local function pats(n, mm)
    local out = {}
    for _, p in ipairs(P.pgf_schedule(n, mm)) do out[#out + 1] = p.n .. ":" .. p.m end
    return table.concat(out, ",")
  end
  eq(pats(2, 4), "3:4,2:4", "2:4")
  eq(pats(1, 8), "7:8,4:8,2:8,1:8", "1:8")
  eq(pats(1, 16), "15:16,8:16,4:16,2:16,1:16", "1:16")
  eq(pats(4, 8), "7:8,4:8", "4:8")
  eq(pats(2, 2), "2:2", "n = m")
  -- per group of mm along the input dim: entries equal to the dense weight (kept) and
  -- entries equal to beta . w (pruned), counted against the snapshot
  local function check(beta, n, mm, what)
    for _, name in ipairs{"layers.0.wq", "layers.2.w2", "layers.4.w1"} do
      local w, d = m.c:weight(name):totable(), dense[name]:totable()
      for r, row in ipairs(w) do
        for g = 0, #row // mm - 1 do
          local kept, soft, kmin, pmax = 0, 0, math.huge, 0
          for i = 1, mm do
            local c = g * mm + i
            local v, o = row[c], d[r][c]
            if v == o then kept, kmin = kept + 1, math.min(kmin, math.abs(o))
            else
              truthy(math.abs(v - beta * o) <= 1e-6 * math.abs(o), what .. ": pruned entry = beta . w")
              soft, pmax = soft + 1, math.max(pmax, math.abs(o))
            end
          end
          if beta < 1 then
            eq(kept, n, what .. ": kept per group")
            truthy(kmin >= pmax, what .. ": kept |w| >= pruned |w|")
          end
        end
      end
    end
  end
  P.nm_soft(m, {n = 2, m = 4, beta = 0.3})
  check(0.3, 2, 4, "beta 0.3")
  local st <close> = m.c:state(#HELD[1])
  local soft_nll = sl.model_c.compare(m.c:forward(HELD[1], st), m.c:forward(HELD[1], m.c:state(#HELD[1])), HELD[1]).nll
  P.restore(m, dense)
  P.nm_soft(m, {n = 2, m = 4, decay = "linear", c = 0.25, t = 2}) -- beta 0.5
  check(0.5, 2, 4, "linear decay")
  P.restore(m, dense)
  P.nm_soft(m, {n = 1, m = 8, frame = 2, decay = "exp", c = 1, t = 1}) -- 4:8, beta e^-1
  check(math.exp(-1), 4, 8, "frame 2 of 1:8")
  P.restore(m, dense)
  -- beta 0 (step) is the hard N:M mask bit for bit; beta 1 leaves every weight
  P.nm_soft(m, {n = 2, m = 4, decay = "step"})
  local soft0 = P.snapshot(m)
  P.restore(m, dense)
  P.magnitude(m, {n = 2, m = 4})
  local hard_nll = P.nll(m, HELD)
  for name, t in pairs(soft0) do eq(sl.metric.max_abs(t, m.c:weight(name)), 0, name .. ": step = hard N:M") end
  P.restore(m, dense)
  P.nm_soft(m, {n = 2, m = 4, beta = 1})
  for name, t in pairs(dense) do eq(sl.metric.max_abs(t, m.c:weight(name)), 0, name .. ": beta 1 = dense") end
  P.restore(m, dense)
  H.raises(function() P.nm_soft(m, {beta = 2}) end, "beta must be in", "beta > 1")
  H.raises(function() P.nm_soft(m, {n = 2, m = 4, frame = 3}) end, "frame must be in", "frame past the schedule")
  print(string.format("  soft 2:4 beta 0.3 NLL %.4f (one text), hard 2:4 NLL %.4f", soft_nll, hard_nll))
end)

test("pruning at 0% leaves the logits bit-identical (magnitude and SparseGPT)", function()
  local ids = HELD[1]
  local ref = logits_of(ids)
  P.magnitude(m, {sparsity = 0})
  truthy(same(logits_of(ids), ref), "magnitude 0%")
  P.magnitude(m, {sparsity = 0, scope = "global"})
  truthy(same(logits_of(ids), ref), "global magnitude 0%")
  P.restore(m, dense)
  truthy(same(logits_of(ids), ref), "restored")
end)

-- ||W X^T - W' X^T||_F with X the captured inputs of the linear
local function recon(w, w2, x)
  local a, b = sl.mm.dense(x, w):totable(), sl.mm.dense(x, w2):totable()
  local s = 0
  for i, row in ipairs(a) do
    local rb = b[i]
    for j, v in ipairs(row) do s = s + (v - rb[j]) ^ 2 end
  end
  return math.sqrt(s)
end

test("SparseGPT 50%: calibration error below magnitude's on every linear of layer 0; random is worse", function()
  local x = P.capture(m, CALIB, 0)
  local worse_rand = 0
  for _, k in ipairs{"wq", "wk", "wv", "wo", "w1", "w3", "w2"} do
    local name = "layers.0." .. k
    local w, xs = m.c:weight(name), x[P.SITE[k]]
    local sg = sl.prune.sparsegpt(w, xs, {sparsity = 0.5})
    local mg = sl.prune.magnitude(w, {sparsity = 0.5})
    eq(zeros(sg), math.floor(0.5 * w:numel()), name .. " exact sparsity (blocks of 128 cover it)")
    local e_sg, e_mg = recon(w, sg, xs), recon(w, mg, xs)
    truthy(e_sg < e_mg, string.format("%s: sparsegpt %.4g < magnitude %.4g", name, e_sg, e_mg))
    -- score-blind mask (random, same count): worse than SparseGPT
    local r = sl.prune.magnitude(sl.rand(w:shape(), {seed = 17}), {sparsity = 0.5}):totable()
    local wt = w:totable()
    for i, row in ipairs(r) do for j, v in ipairs(row) do row[j] = v == 0 and 0 or wt[i][j] end end
    if recon(w, sl.tensor(r), xs) > e_sg then worse_rand = worse_rand + 1 end
  end
  eq(worse_rand, 7, "a random mask is worse than SparseGPT on every linear")
end)

test("SparseGPT over the whole model (sequential) beats magnitude on held-out NLL at 50%", function()
  local base = P.nll(m, HELD)
  P.magnitude(m, {sparsity = 0.5})
  local mag = P.nll(m, HELD)
  P.restore(m, dense)
  P.sparsegpt(m, CALIB, {sparsity = 0.5})
  local sg = P.nll(m, HELD)
  near(P.sparsity(m), 0.5, 0.01, "overall sparsity")
  truthy(sg < mag, string.format("held-out nll: sparsegpt %.4f < magnitude %.4f (dense %.4f)", sg, mag, base))
  -- save, restore dense, load: identical logits
  local path = os.tmpname() .. ".safetensors"
  local want = logits_of(HELD[1])
  P.save(m, path)
  P.restore(m, dense)
  truthy(not same(logits_of(HELD[1]), want), "dense differs")
  P.load(m, path)
  truthy(same(logits_of(HELD[1]), want), "loaded pruned weights give the same logits")
  os.remove(path)
  P.restore(m, dense)
end)

test("a pruned linear runs through mm.nm / mm.bitmap exactly as its dense product", function()
  local x = P.capture(m, {HELD[1]}, 1).ffn_in
  local w = sl.prune.magnitude(m.c:weight("layers.1.w1"), {n = 2, m = 4})
  local vals, pos = sl.mm.nm_encode(w, {n = 2, m = 4})
  local y_nm, y_dense = sl.mm.nm(x, vals, pos, {n = 2, m = 4}), sl.mm.dense(x, w)
  local w2 = sl.prune.magnitude(m.c:weight("layers.1.w1"), {sparsity = 0.75})
  local bits, bv = sl.mm.bitmap_encode(w2)
  local y_bm, y_d2 = sl.mm.bitmap(x, bits, bv), sl.mm.dense(x, w2)
  for _, pair in ipairs{{y_nm, y_dense}, {y_bm, y_d2}} do
    local a, b, scale, err = pair[1]:totable(), pair[2]:totable(), 0, 0
    for i, row in ipairs(b) do for j, v in ipairs(row) do
      scale = math.max(scale, math.abs(v)); err = math.max(err, math.abs(v - a[i][j]))
    end end
    truthy(err <= 1e-5 * scale, "rel err " .. err / scale)
  end
end)

test("qk_lowrank: whitened rank-8 W_q, W_k beat plain SVD on held-out NLL; full rank is the dense model", function()
  local dense_nll = P.nll(m, HELD)
  P.lowrank_qk(m, CALIB, {rank = 8})
  local white = P.nll(m, HELD)
  P.restore(m, dense)
  P.lowrank_qk(m, CALIB, {rank = 8, whiten = false})
  local plain = P.nll(m, HELD)
  P.restore(m, dense)
  truthy(white < plain, string.format("whitened %.4f < plain %.4f (dense %.4f)", white, plain, dense_nll))
  P.lowrank_qk(m, CALIB, {rank = 64})
  near(P.nll(m, HELD), dense_nll, 1e-3, "full rank")
  P.restore(m, dense)
end)

test("magnitude_prune: random ERK densities sum to 1 - s (1e-6), none above 1, the masks hit it; uniform too", function()
  for _, s in ipairs{0.5, 0.9, 0.99} do
    local dens, expected = P.erk(m, {sparsity = s, seed = 3})
    near(expected, 1 - s, 1e-6, "expected total density at s = " .. s)
    local total, kept, by_ratio = 0, 0, {}
    for _, name in ipairs(P.linears(m)) do
      local d = dens[name]
      truthy(d >= 0 and d <= 1, name .. " density in [0, 1]")
      local w = m.c:weight(name)
      local sh = w:shape()
      local z = zeros(w)
      total, kept = total + sh[1] * sh[2], kept + sh[1] * sh[2] - z
      -- ERK: density proportional to (n_in + n_out) / (n_in n_out) among the tensors below 1
      if d < 1 then by_ratio[#by_ratio + 1] = d / ((sh[1] + sh[2]) / (sh[1] * sh[2])) end
    end
    for i = 2, #by_ratio do near(by_ratio[i], by_ratio[1], 1e-9 * by_ratio[1], "one eps for every sparse tensor") end
    near(kept / total, 1 - s, 0.01, "realised density at s = " .. s)
    P.restore(m, dense)
  end
  -- the shapes differ (wq 64x64: (64+64)/64^2 = 0.031; w1 172x64: 236/11008 = 0.021): ERK keeps the
  -- smaller tensor denser, in that ratio
  local dens = P.erk(m, {sparsity = 0.5, seed = 3})
  near(dens["layers.0.wq"] / dens["layers.0.w1"], (128 / 4096) / (236 / 11008), 1e-9, "ERK density ratio wq / w1")
  P.restore(m, dense)
  local uni, e2 = P.erk(m, {sparsity = 0.5, seed = 3, uniform = true})
  near(e2, 0.5, 1e-9, "uniform expected density")
  near(uni["layers.0.wq"], 0.5, 1e-12, "uniform: every tensor at 1 - s")
  P.restore(m, dense)
end)

H.done()
