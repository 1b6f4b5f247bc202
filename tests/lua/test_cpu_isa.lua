-- test_cpu_isa.lua — the cpu kernels' instruction-set paths (issue 20):
-- every path this CPU runs (portable C, AVX2+FMA, AVX-512), forced through
-- sl.cpu_isa (the context's choice), gives attn.dense and attn.block_sparse
-- equal to the float64 ref backend on ragged shapes (row lengths that are
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

H.done()
