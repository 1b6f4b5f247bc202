-- tests/gpu/cusparse_check.lua — the cuSPARSE CSR path of mm.bitmap on a
-- real GPU (issue 17, session 3; run by tests/gpu/run.sh with the CUDA
-- build's module): at densities 1-25 % and ragged shapes, mm.bitmap on cuda
-- with csr_below = 1 (cuSPARSE SpMM) and csr_below = 0 (the CUDA-core
-- kernel) each equal ref within 1e-5 relative to max |y|; then both paths
-- and the dense mm.dense are timed at a 7B FFN shape (4096 x 11008) for
-- T = 1, 64, 512 at 50 / 75 / 90 % sparsity (median of 5, after a warm-up).
-- Exits 1 on a mismatch.
--   LUA_CPATH='build-cuda/?.so' lua5.4 tests/gpu/cusparse_check.lua
local sl = require "sparselab"
local BE = os.getenv("SL_CHECK_BACKEND") or "cuda" -- cpu: a dry run of the script without a GPU

local function bitmap_of(w)
  local bits, vals = sl.mm.bitmap_encode(w, {cap = 0})
  return bits, vals
end

local function maxrel(a, b)
  local ta, tb = a:totable(), b:totable()
  local d, big = 0, 0
  for i = 1, #ta do for j = 1, #ta[i] do
    d = math.max(d, math.abs(ta[i][j] - tb[i][j])); big = math.max(big, math.abs(tb[i][j]))
  end end
  return d / math.max(big, 1e-30)
end

local bad = 0
for _, c in ipairs{{1, 300, 1000, 0.99}, {7, 257, 777, 0.95}, {64, 512, 1024, 0.9}, {33, 100, 96, 0.75}} do
  local T, N, K, s = c[1], c[2], c[3], c[4]
  local w = sl.prune.magnitude(sl.randn({N, K}, {seed = N}), {sparsity = s})
  local x = sl.randn({T, K}, {seed = K})
  local bits, vals = bitmap_of(w)
  local ref = sl.mm.bitmap(x, bits, vals, {backend = "ref"})
  for _, csr in ipairs{1, 0} do
    local y = sl.mm.bitmap(x, bits, vals, {backend = BE, csr_below = csr})
    local r = maxrel(y, ref)
    local ok = r <= 1e-5
    if not ok then bad = bad + 1 end
    print(string.format("%-4s T %3d N %4d K %4d sparsity %.2f %-13s max rel err %.2e", ok and "ok" or "FAIL", T, N, K, s,
      csr == 1 and "cuSPARSE" or "CUDA-core", r))
  end
end

local function med(f)
  f()
  local ts = {}
  for i = 1, 5 do local t0 = sl.time(); f(); ts[i] = sl.time() - t0 end
  table.sort(ts)
  return ts[3]
end
print("\n| T | sparsity | dense ms | cuSPARSE ms | CUDA-core ms | cuSPARSE ÷ dense | CUDA-core ÷ dense |")
print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
local N, K = tonumber(os.getenv("SL_CHECK_N")) or 11008, tonumber(os.getenv("SL_CHECK_K")) or 4096
local w0 = sl.randn({N, K}, {seed = 1})
for _, T in ipairs{1, 64, 512} do
  local x = sl.randn({T, K}, {seed = T})
  local td = med(function() return sl.mm.dense(x, w0, {backend = BE}) end)
  for _, s in ipairs{0.5, 0.75, 0.9} do
    local bits, vals = bitmap_of(sl.prune.magnitude(w0, {sparsity = s}))
    local tc = med(function() return sl.mm.bitmap(x, bits, vals, {backend = BE, csr_below = 1}) end)
    local tk = med(function() return sl.mm.bitmap(x, bits, vals, {backend = BE, csr_below = 0}) end)
    print(string.format("| %d | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f |", T, s, 1e3 * td, 1e3 * tc, 1e3 * tk,
      tc / td, tk / td))
  end
end
os.exit(bad == 0 and 0 or 1)
