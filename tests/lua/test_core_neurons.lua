-- test_core_neurons.lua — percentile core neurons (card topk_activation step
-- 3, CoreMatching / CoreInfer; issue 17 session 3c): the card's check
-- |C_rho(x)| = ceil((1 - rho) |A+|) on seeded normal rows (no ties), the kept
-- neurons dominate the dropped positive ones (a first-|C| selector fails
-- that), the sentence level against a count written here, and the model
-- hook (prompt -> core neurons, decode on them alone).
package.path = "tests/lua/?.lua;" .. package.path
local H = require "harness"
local sl = require "sparselab"
local A = require "sparselab.actsparse"
local test, eq, truthy = H.test, H.eq, H.truthy

local rows = sl.randn({12, 200}, {seed = 1703}):totable()

test("topk_activation: token-level core neurons hold ceil((1 - rho) |A+|) and dominate the rest", function()
  for _, rho in ipairs{0, 0.5, 0.8, 0.9, 0.99} do
    for _, row in ipairs(rows) do
      local npos = 0
      for _, v in ipairs(row) do if v > 0 then npos = npos + 1 end end
      local c = A.core_token(row, rho)
      eq(#c, math.ceil((1 - rho) * npos - 1e-9), "|C_rho| at rho = " .. rho)
      local inside, lo = {}, math.huge
      for _, n in ipairs(c) do inside[n] = true; lo = math.min(lo, row[n]); truthy(row[n] > 0, "positive") end
      for n, v in ipairs(row) do
        if not inside[n] and v > 0 then truthy(v < lo, "a dropped positive is below every kept one") end
      end
      if rho == 0.8 then -- the score-blind control (the first |C| positive units) fails the same check
        local blind, k, blo, fails = {}, 0, math.huge, false
        for n, v in ipairs(row) do if v > 0 and k < #c then k = k + 1; blind[n] = true; blo = math.min(blo, v) end end
        for n, v in ipairs(row) do if not blind[n] and v > 0 and v >= blo then fails = true end end
        truthy(fails, "first-|C| positive units are not the core")
      end
    end
  end
end)

test("topk_activation: sentence-level core neurons by token counts", function()
  local rho, beta = 0.8, 0.9
  local core, f = A.core_sentence(rows, rho, beta)
  -- f counted here from the definition: n in C_rho(x_t) iff fewer than ceil((1 - rho)|A+|)
  -- positive entries of row t exceed a_n (no ties in normal draws)
  for n = 1, 200 do
    local cnt = 0
    for _, row in ipairs(rows) do
      local npos, above = 0, 0
      for _, v in ipairs(row) do
        if v > 0 then npos = npos + 1 end
        if v > row[n] then above = above + 1 end
      end
      if row[n] > 0 and above < math.ceil((1 - rho) * npos - 1e-9) then cnt = cnt + 1 end
    end
    eq(f[n], cnt, "f(" .. n .. ")")
  end
  truthy(#core >= math.ceil(0.1 * 200), "at least ceil((1 - beta) m) neurons (ties included)")
  local inside, lo = {}, math.huge
  for _, n in ipairs(core) do inside[n] = true; lo = math.min(lo, f[n]) end
  for n = 1, 200 do if not inside[n] then truthy(f[n] < lo or f[n] == 0, "dropped neurons count less") end end
end)

test("topk_activation: the core hook keeps the prompt's core neurons alone in decode", function()
  local DATA = "experiments/data/tinystories260k"
  local m = sl.model.load(DATA .. "/model.bin")
  local f = assert(io.open(DATA .. "/texts/06_little_seed.txt", "rb"))
  local ids = m:encode(f:read("a"))
  f:close()
  local P, D, L, hid = 48, 4, m.cfg.n_layers, m.cfg.hidden_dim
  local function run(site)
    local st <close> = m.c:state(P + D)
    local pre = {}
    for i = 1, P do pre[i] = ids[i] end
    m.c:forward(pre, st, nil, site)
    local out = {}
    for i = 1, D do out[i] = m.c:forward({ids[P + i]}, st, nil, site):totable()[1] end
    return out
  end
  local dense = run(nil)
  local s0 = {}
  local all = run(A.hook(m, {kind = "core", rho = 0, beta = 0}, s0))
  for i = 1, D do for j = 1, #dense[i] do eq(all[i][j], dense[i][j], "rho = beta = 0 keeps every active unit") end end
  local s1 = {}
  run(A.hook(m, {kind = "core", rho = 0.5, beta = 0.5}, s1))
  -- prefill rows are counted whole (dense), decode rows keep |C^beta| units per layer
  local dec = s1.kept - L * P * hid
  truthy(dec > 0 and dec <= 0.55 * L * D * hid, "decode keeps about half of the units: " .. dec)
  eq(s1.hidden, L * (P + D) * hid, "units seen")
end)

H.done()
