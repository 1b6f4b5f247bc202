-- test_sparse_split.lua — attn.block_sparse's cpu executor on chunks of one
-- run whose first or last block is partial (issue 20, session 4b): the tile's
-- rows are split into parts of 16 rows, each scored, masked and multiplied
-- only over its own key range (the columns at the run's two ends that none of
-- its rows keeps are skipped), and the softmax runs over that range only.
-- Compared with the float64 ref backend (O and L within 2e-5, -inf L exactly)
-- on causal windows not aligned to the blocks, ragged n (a last query block
-- whose rows are not a multiple of 16), d 16 / 64 / 128 (and 320: the packed
-- score product), bq 32 / 64 / 128 and bk != bq, and token masks with empty
-- rows and empty 16-row parts inside partial blocks. The ref backend itself is
-- checked against plain float64 attention written here on one case.
package.path = "tests/lua/?.lua;" .. package.path
local BUILD = os.getenv("BUILD") or "build"
package.cpath = BUILD .. "/?.so;" .. package.cpath
local H = require "harness"
local sl = require "sparselab"
local test = H.test

local max_diff = H.max_diff

local function compare(what, q, k, v, m, pv_skip, scale)
  local o1, l1 = sl.attn.block_sparse(q, k, v, m, {backend = "cpu", pv_skip = pv_skip, scale = scale})
  local o2, l2 = sl.attn.block_sparse(q, k, v, m, {backend = "ref", pv_skip = pv_skip, scale = scale})
  local dO, dL = max_diff(o1, o2), max_diff(l1, l2)
  H.truthy(dO <= 2e-5, what .. ": O within 2e-5 of ref (" .. dO .. ")")
  H.truthy(dL <= 2e-5, what .. ": L within 2e-5 of ref, -inf where ref has it (" .. dL .. ")")
end

local function qkv(h, n, d, seed)
  return sl.randn({h, n, d}, {seed = seed}), sl.randn({h, n, d}, {seed = seed + 1}), sl.randn({h, n, d}, {seed = seed + 2})
end

test("split runs: causal windows not aligned to blocks, ragged n, d 16 / 64 / 128 / 320, bq 32 / 64 / 128", function()
  for _, c in ipairs{{n = 611, d = 64, bq = 64, bk = 64, w = 37}, {n = 611, d = 64, bq = 64, bk = 64, w = 414},
                     {n = 467, d = 16, bq = 64, bk = 64, w = 101}, {n = 389, d = 128, bq = 64, bk = 64, w = 70},
                     {n = 301, d = 64, bq = 32, bk = 32, w = 45}, {n = 555, d = 64, bq = 128, bk = 128, w = 150},
                     {n = 421, d = 64, bq = 64, bk = 32, w = 83}, {n = 173, d = 320, bq = 64, bk = 64, w = 29},
                     {n = 530, d = 16, bq = 64, bk = 64, w = 1}} do
    local q, k, v = qkv(2, c.n, c.d, c.n + c.w)
    local m = sl.mask.window(c.w):materialize{n_q = c.n, n_k = c.n, bq = c.bq, bk = c.bk}
    compare(string.format("window n %d d %d bq %d bk %d w %d", c.n, c.d, c.bq, c.bk, c.w), q, k, v, m)
  end
end)

-- keep (i, j): causal window of w keys, except rows i with i % period in
-- [e0, e1) (whole 16-row parts, or parts of them) and every query block
-- r with r % 4 == 2, which keep nothing
local function holey_window(n, b, w, period, e0, e1)
  local rows = {}
  for i = 0, n - 1 do
    local r = {}
    local empty = (i % period >= e0 and i % period < e1) or (i // b) % 4 == 2
    for j = 0, n - 1 do r[j + 1] = (not empty and j <= i and j > i - w) and 1 or 0 end
    rows[i + 1] = r
  end
  return sl.mask.from_bits(sl.tensor({rows}, "u8"), b, b)
end

test("split runs: empty rows, empty 16-row parts and empty query blocks inside windows", function()
  for _, c in ipairs{{n = 290, d = 64, b = 64, w = 70, period = 64, e0 = 16, e1 = 32},
                     {n = 250, d = 16, b = 64, w = 40, period = 64, e0 = 0, e1 = 16},
                     {n = 233, d = 128, b = 64, w = 100, period = 7, e0 = 0, e1 = 2},
                     {n = 200, d = 64, b = 32, w = 20, period = 32, e0 = 10, e1 = 30}} do
    local q, k, v = qkv(1, c.n, c.d, c.n + c.w + 7)
    compare(string.format("holey window n %d d %d b %d w %d", c.n, c.d, c.b, c.w), q, k, v,
      holey_window(c.n, c.b, c.w, c.period, c.e0, c.e1))
  end
end)

test("the ref backend = plain float64 attention on a holey window (the reference of the two tests above)", function()
  local n, d, b, w = 80, 16, 32, 21
  local q, k, v = qkv(1, n, d, 99)
  local m = holey_window(n, b, w, 32, 4, 9)
  local o, l = sl.attn.block_sparse(q, k, v, m, {backend = "ref"})
  local Q, K, V, O, L = q:totable()[1], k:totable()[1], v:totable()[1], o:totable()[1], l:totable()[1]
  local s = 1 / math.sqrt(d)
  local worst = 0
  for i = 0, n - 1 do
    local empty = (i % 32 >= 4 and i % 32 < 9) or (i // b) % 4 == 2
    local sc, mx = {}, -math.huge
    for j = 0, n - 1 do
      if not empty and j <= i and j > i - w then
        local x = 0
        for c = 1, d do x = x + Q[i + 1][c] * K[j + 1][c] end
        sc[j] = x * s
        mx = math.max(mx, sc[j])
      end
    end
    if mx == -math.huge then
      H.eq(L[i + 1], -math.huge, "row " .. i .. " empty: L = -inf")
      for c = 1, d do worst = math.max(worst, math.abs(O[i + 1][c])) end
    else
      local sum, acc = 0, {}
      for c = 1, d do acc[c] = 0 end
      for j, x in pairs(sc) do
        local p = math.exp(x - mx)
        sum = sum + p
        for c = 1, d do acc[c] = acc[c] + p * V[j + 1][c] end
      end
      worst = math.max(worst, math.abs(L[i + 1] - (mx + math.log(sum))))
      for c = 1, d do worst = math.max(worst, math.abs(O[i + 1][c] - acc[c] / sum)) end
    end
  end
  H.truthy(worst <= 1e-6, "ref within 1e-6 of float64 attention (" .. worst .. ")")
end)

test("split runs with SpargeAttn's pv_skip (its marks count key blocks from the chunk's first column)", function()
  for _, c in ipairs{{n = 611, d = 64, b = 64, w = 300, lam = 1.5}, {n = 389, d = 32, b = 32, w = 90, lam = 0.5}} do
    local q, k, v = qkv(1, c.n, c.d, c.n + 3)
    local m = sl.mask.window(c.w):materialize{n_q = c.n, n_k = c.n, bq = c.b, bk = c.b}
    compare(string.format("window n %d d %d b %d w %d pv_skip %g", c.n, c.d, c.b, c.w, c.lam), q, k, v, m, c.lam,
      3 / math.sqrt(c.d)) -- scores spread three times wider, so that some blocks are skipped
  end
end)

H.done()
