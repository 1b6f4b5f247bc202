-- test_cpu_isa.lua — the cpu kernels' instruction-set paths (issue 20):
-- every path this CPU runs (portable C, AVX2+FMA, AVX-512), forced through
-- sl.cpu_isa (the context's choice), gives attn.dense, attn.block_sparse and
-- the gathered executors (attn.token_sparse, attn.rows) equal to the float64
-- ref backend on ragged shapes (row lengths that are
-- not multiples of 8 or 16, so every vector tail runs), fully masked rows and
-- partial blocks; unknown names and sets beyond this CPU are refused in one
-- line. Run with LUA_CPATH=build/?.so lua5.4 tests/lua/test_cpu_isa.lua
package.path = "tests/lua/?.lua;" .. package.path
local H = require "harness"
local sl = require "sparselab"
local bench = require "sparselab.bench"
local test, near, eq, truthy, raises = H.test, H.near, H.eq, H.truthy, H.raises

local ORDER = {"portable", "avx2", "avx512"}
local _, best = sl.cpu_isa("auto")
local paths = {}
for _, name in ipairs(ORDER) do
  paths[#paths + 1] = name
  if name == best then break end
end

local function flat(t, out)
  out = out or {}
  for _, x in ipairs(t) do
    if type(x) == "table" then flat(x, out) else out[#out + 1] = x end
  end
  return out
end

-- O and L of a cpu call under each path against ref: O within 2e-5, L within 2e-5 (or both -inf).
local function against_ref(what, call)
  local ro, rl = call("ref")
  local outs = {}
  for _, isa in ipairs(paths) do
    eq(sl.cpu_isa(isa), isa, "path in effect")
    local o, l = call("cpu")
    near(sl.metric.max_abs(o, ro), 0, 2e-5, what .. " O, " .. isa .. " vs ref")
    local lf, rf = flat(l:totable()), flat(rl:totable())
    eq(#lf, #rf, what .. " L size")
    for i = 1, #rf do
      local x, r = lf[i], rf[i]
      if r == -math.huge then eq(x, r, what .. " L (empty row), " .. isa)
      else near(x, r, 2e-5, string.format("%s L[%d], %s vs ref", what, i, isa)) end
    end
    outs[isa] = o
  end
  sl.cpu_isa("auto")
  return outs
end

test("the paths: auto runs the best, each path up to it can be forced, the rest are refused", function()
  eq(sl.cpu_isa("auto"), best, "auto")
  truthy(#paths >= 1 and paths[1] == "portable", "portable always runs")
  for i, name in ipairs(ORDER) do
    if i > #paths then raises(function() sl.cpu_isa(name) end, "runs at most " .. best, name) end
  end
  raises(function() sl.cpu_isa("sse9") end, "expected auto, portable, avx2 or avx512, found 'sse9'", "unknown")
  eq(sl.cpu_isa(), best, "a refused name leaves the choice as it was")
  print("  paths on this CPU: " .. table.concat(paths, ", "))
end)

test("attn.dense: every path equals ref (causal and not, GQA, ragged n and d)", function()
  for _, c in ipairs{{hq = 2, hk = 1, n = 203, d = 64}, {hq = 2, hk = 2, n = 77, d = 40}, {hq = 4, hk = 2, n = 300, d = 128}} do
    local q = sl.randn({c.hq, c.n, c.d}, {seed = 11 + c.n})
    local k = sl.randn({c.hk, c.n, c.d}, {seed = 12 + c.n})
    local v = sl.randn({c.hk, c.n, c.d}, {seed = 13 + c.n})
    for _, causal in ipairs{true, false} do
      local what = string.format("dense n=%d d=%d causal=%s", c.n, c.d, tostring(causal))
      local outs = against_ref(what, function(b) return sl.attn.dense(q, k, v, {causal = causal, backend = b}) end)
      if outs.avx512 and outs.avx2 then
        near(sl.metric.max_abs(outs.avx512, outs.avx2), 0, 2e-6, what .. ": avx512 vs avx2")
      end
    end
  end
end)

test("attn.block_sparse: every path equals ref (random blocks with empty rows, partial blocks, a window)", function()
  local n, d, b = 200, 64, 16
  local q = sl.randn({2, n, d}, {seed = 21})
  local k = sl.randn({2, n, d}, {seed = 22})
  local v = sl.randn({2, n, d}, {seed = 23})
  -- random blocks below the diagonal, no diagonal: some query blocks keep nothing
  local rows = bench.random_rows(192, b, 0.2, 5)
  rows[3] = nil
  local masks = {
    {"random blocks, no diagonal", bench.block_list_mask(n, b, rows, false)},
    {"random blocks + causal diagonal", bench.block_list_mask(n, b, rows, true)},
    {"window 37", sl.mask.window(37):materialize{n_q = n, n_k = n, bq = b, bk = b}},
    -- 20-key blocks: bit rows of 20 = 16 + 4 = 8 + 8 + 4 (every tail of the mask row operation)
    {"window 45, 20-blocks", sl.mask.window(45):materialize{n_q = n, n_k = n, bq = 20, bk = 20}},
  }
  for _, m in ipairs(masks) do
    against_ref("block_sparse " .. m[1], function(be) return sl.attn.block_sparse(q, k, v, m[2], {backend = be}) end)
  end
  -- 64-key blocks scattered: chunks of several long runs (values read in
  -- place) beside the 16-key runs above (values copied)
  local n2 = 704
  local q2, k2, v2 = sl.randn({1, n2, 32}, {seed = 24}), sl.randn({1, n2, 32}, {seed = 25}), sl.randn({1, n2, 32}, {seed = 26})
  local m2 = bench.block_list_mask(n2, 64, bench.random_rows(n2, 64, 0.4, 7), true)
  against_ref("block_sparse random 64-blocks", function(be) return sl.attn.block_sparse(q2, k2, v2, m2, {backend = be}) end)
end)

-- seeded index lists: per list head and entry, a random sorted subset of the keys (some entries empty)
local function lists(hm, n_entries, nk, seed)
  math.randomseed(seed)
  local rp, col = {}, {}
  for h = 1, hm do
    local row = {#col}
    for r = 1, n_entries do
      if r % 5 ~= 0 then
        for j = 0, nk - 1 do if math.random() < 0.3 then col[#col + 1] = j end end
      end
      row[#row + 1] = #col
    end
    rp[h] = row
  end
  return sl.tensor(rp, "i32"), sl.tensor(col, "i32")
end

test("gathered executors (attn.token_sparse, attn.rows): every path equals ref (d 40, 64, 128; GQA)", function()
  -- hm = 4: each query head its own lists (odd row counts: the one-row
  -- remainder of the two-row P·V); hm = 2: a GQA pair reads each row once
  for _, c in ipairs{{d = 64, rpe = 3, hm = 4}, {d = 64, rpe = 3, hm = 2}, {d = 40, rpe = 1, hm = 2},
      {d = 128, rpe = 5, hm = 4}} do
    local nq, nk = 23, 150
    local q = sl.randn({4, nq, c.d}, {seed = 31 + c.d})
    local k = sl.randn({2, nk, c.d}, {seed = 32 + c.d})
    local v = sl.randn({2, nk, c.d}, {seed = 33 + c.d})
    local rp, col = lists(c.hm, (nq + c.rpe - 1) // c.rpe, nk, 34 + c.d)
    against_ref(string.format("token_sparse d=%d rows_per_entry=%d list heads=%d", c.d, c.rpe, c.hm), function(b)
      return sl.attn.token_sparse(q, k, v, rp, col, {rows_per_entry = c.rpe, backend = b})
    end)
    local rows, lim = {}, {}
    for r = 0, nq - 1, 2 do rows[#rows + 1] = r; lim[#lim + 1] = 100 + r end
    against_ref(string.format("rows d=%d", c.d), function(b)
      return sl.attn.rows(q, k, v, sl.tensor({rows}, "i32"), sl.tensor({lim}, "i32"), {backend = b})
    end)
  end
end)

test("score ops (score.last_q: softmax rows by the row operations): every path equals ref", function()
  local q = sl.randn({2, 50, 40}, {seed = 41})
  local k = sl.randn({1, 50, 40}, {seed = 42})
  local ref = sl.score.last_q(q, k, {last = 13, backend = "ref"})
  for _, isa in ipairs(paths) do
    sl.cpu_isa(isa)
    near(sl.metric.max_abs(sl.score.last_q(q, k, {last = 13, backend = "cpu"}), ref), 0, 2e-6, "last_q " .. isa)
  end
  sl.cpu_isa("auto")
end)

test("bench reports the instruction set of each kernel it times", function()
  local rows = bench.run{n = {256}, d = {32}, heads = 1, densities = {0.5}, patterns = {"window"}, reps = 1,
    sgemm = false, decode = false}
  local seen = 0
  for _, r in ipairs(rows) do
    if r.name == "attn.dense" or r.name == "attn.block_sparse" then
      eq(r.params.isa, best, r.name .. " isa")
      seen = seen + 1
    end
  end
  truthy(seen >= 3, "dense and block-sparse rows")
end)

-- issue 13, session 4: page.attend_q's dequantisation (cpu/deqops.c) on every path: int8 / int4 pages,
-- symmetric and with zero points, head_dim 72 (two 32-channel int4 AVX-512 steps, four 16-channel AVX2
-- steps and a tail of 8) and 37 (odd: the last int4 byte holds one channel), against ref
test("page.attend_q: every dequantisation path equals ref (int8/int4, symmetric and zero points, ragged head_dim)", function()
  local decode = require "sparselab.decode"
  for _, d in ipairs{72, 37} do
    for _, mode in ipairs{{8, 8, 0}, {4, 4, 0}, {8, 8, 1}, {4, 4, 1}} do
      local c = decode.cache(2, d, 16, "isa")
      c:set_quant(mode[1], mode[2], mode[3])
      c:append(sl.randn({2, 150, d}, {seed = d + 1}), sl.randn({2, 150, d}, {seed = d + 2}))
      local q = sl.randn({4, 1, d}, {seed = d + 3})
      local pages = sl.tensor({{{0, 3, 5, 9}}, {{1, 2, 7, 9}}}, "i32")
      against_ref(string.format("page.attend_q d %d k%d v%d zero %d", d, mode[1], mode[2], mode[3]),
        function(backend) return decode.attend(c, q, pages, {backend = backend}) end)
      c:close()
    end
  end
end)

H.done()
