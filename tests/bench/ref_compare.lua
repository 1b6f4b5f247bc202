-- ref_compare.lua — our prefill estimators against CPU PyTorch ports of the
-- reference estimators (tests/bench/ref_estimators.py) on the same inputs,
-- with a floor per method: the least time any implementation needs on one
-- core for the method's minimal work (issue 20, part 3; sessions 3 and 5).
--
-- One command (a bench, not part of `make test`; needs Debian's python3-torch,
-- run by /usr/bin/python3, and a C compiler for the exp rate):
--   one core, CPU time (the work done; steady on a shared machine):
--     OPENBLAS_NUM_THREADS=1 LUA_CPATH='build/?.so' taskset -c 1 lua5.4 tests/bench/ref_compare.lua 8192 3 1 cpu
--   two threads, wall time:
--     LUA_CPATH='build/?.so' lua5.4 tests/bench/ref_compare.lua 8192 3 2 wall
-- args: [n=8192] [reps=3] [threads=sl.threads()] [wall|cpu] [methods, comma-separated: all]
-- (sparselab takes its thread count from the affinity mask: taskset -c 1 gives one.)
--
-- Inputs: what `sparselab bench` times estimators on (sl.synthetic, 8 query /
-- 2 KV heads, d = 64, seed 1), saved as .npy for the ports. Ours: m.mask(prob, p)
-- at the method's defaults (estimate + selection, no attention; a few named
-- options too); theirs: the reference's estimator up to its selection. Median
-- of reps after one warm-up, each side.
--
-- Floors: floor = max(GEMM FLOPs / sgemm rate + exps × exp time, bytes read /
-- read rate), with one core's best measured rates (process CPU time): OpenBLAS
-- sgemm at 2048² (through torch, which links the same OpenBLAS), the faster of
-- sparselab's AVX-512 exp_sum (tests/bench/exp_rate.c) and torch.exp, and a
-- streaming read of 64 MiB. The work counted is what the method's definition
-- cannot avoid (see WORK below); everything else (reductions, sorts, masks,
-- the Python/Lua glue) is left out, so the floor is below any real
-- implementation. "10x possible" = reference / 10 >= floor, judged on one
-- core's CPU time only (the floor is a one-core figure; a wall-clock run on a
-- shared machine prints the floors but no verdict).
local sl = require "sparselab"
local n = tonumber(arg[1] or 8192)
local reps = tonumber(arg[2] or 3)
local threads = tonumber(arg[3] or sl.threads())
local mode = arg[4] or "wall"
local only = arg[5]
local clock = mode == "cpu" and os.clock or sl.time
local H, HK, D, F = 8, 2, 64, 4

-- The minimal work of each method's estimator at n (H query / HK KV heads, d = D):
-- gemm FLOPs, exps, bytes that must be read. Every probe row's softmax needs its
-- scores (a GEMM) and one exp per visible score; pooling reads all of q and k.
local function tri(m) return m * (m + 1) / 2 end
local QK_BYTES = function() return F * (H + HK) * n * D end
local WORK = {
  -- MInference: the last 64 query rows against all keys, softmax (causal in the last 64)
  vertical_slash = function()
    local L = 64
    return {gemm = H * 2 * L * n * D, exps = H * (L * (n - L) + tri(L)), bytes = F * (HK * n * D + H * L * D)}
  end,
  -- FlexPrefill: the last 128 rows likewise (the pooled JSD and query-aware parts are O(n d))
  flexprefill = function()
    local L = 128
    return {gemm = H * 2 * L * n * D, exps = H * (L * (n - L) + tri(L)), bytes = F * (HK * n * D + H * L * D)}
  end,
  -- XAttention: stride-8 super-tokens (n/8 rows and keys of width 8d), causal half only
  xattention = function()
    local R = n // 8
    return {gemm = H * 2 * tri(R) * D * 8, exps = H * tri(R), bytes = QK_BYTES()}
  end,
  -- MInference block-sparse: pool q and k in blocks of 64 (all of both read), causal pooled GEMM
  minference_block_sparse = function()
    local nb = (n + 63) // 64
    return {gemm = H * 2 * tri(nb) * D, exps = 0, bytes = QK_BYTES()}
  end,
  -- PBS-Attn: the last 128 rows against the complete segments' keys (no causal mask), the
  -- pooled off-segment softmax; all of q and k read for the pools
  pbs_attn = function()
    local B, S = 128, 256
    local nc, nb = (n // S) * S, (n + B - 1) // B
    return {gemm = H * 2 * B * nc * D + H * 2 * tri(nb) * D, exps = H * B * nc + H * tri(nb), bytes = QK_BYTES()}
  end,
  -- PRISM: pooled blocks of 128, two band GEMMs (d/2 and 3d/4 wide) over the causal block pairs
  prism = function()
    local nb = n // 128
    return {gemm = H * 2 * tri(nb) * (D // 2 + 3 * D // 4), exps = 2 * H * tri(nb), bytes = QK_BYTES()}
  end,
  -- SpargeAttn: pooled q (128) / k (64) blocks and their self-similarity (|sum of unit rows|²,
  -- O(n d), no GEMM needed), the pooled causal GEMM
  sparge_attn = function()
    local nq, nk = n // 128, n // 64
    return {gemm = H * 2 * (nq * nk / 2) * D, exps = H * nq * nk / 2, bytes = QK_BYTES()}
  end,
}

local CASES = {
  {"vertical_slash", {}}, {"vertical_slash", {widen = true}, "vertical_slash widen"},
  {"flexprefill", {}}, {"flexprefill", {reference = true}, "flexprefill reference"},
  {"xattention", {}}, {"xattention", {reference = true}, "xattention reference"},
  {"minference_block_sparse", {}}, {"pbs_attn", {}}, {"prism", {}}, {"sparge_attn", {}},
}
local want
if only and only ~= "" and only ~= "all" then
  want = {}
  for id in only:gmatch("[^,]+") do want[id] = true end
end

local function median_ms(f)
  f()
  local t = {}
  for i = 1, reps do
    local t0 = clock()
    f()
    t[i] = (clock() - t0) * 1e3
  end
  table.sort(t)
  return t[(reps + 1) // 2]
end

local wl = {n = n, heads = H, kv_heads = HK, d = D, seed = 1}
local q, k, v = sl.synthetic(wl)
local prob = sl.problem{q = q, k = k, v = v, backend = "cpu", workload = "synthetic", workload_params = wl}
local dir = os.tmpname()
os.remove(dir)
assert(os.execute("mkdir -p " .. dir))
sl.save(dir .. "/q.npy", q)
sl.save(dir .. "/k.npy", k)

local ours, ids = {}, {}
for _, c in ipairs(CASES) do
  if not want or want[c[1]] then
    local m = sl.methods.get(c[1])
    local p = sl.registry.resolve(m, c[2])
    ours[#ours + 1] = {name = c[3] or c[1], id = c[1], ms = median_ms(function()
      local mk <close> = m.mask(prob, p)
      return mk
    end)}
    if not ids[c[1]] then ids[#ids + 1] = c[1]; ids[c[1]] = true end
    collectgarbage()
  end
end
local function run_lines(cmd)
  local pipe = assert(io.popen(cmd))
  local out = {}
  for line in pipe:lines() do
    if line:sub(1, 1) == "{" then out[#out + 1] = sl.json_decode(line) end
  end
  pipe:close()
  return out
end
-- each reference estimator in a fresh process: run after the others, the same port took
-- twice as long (minference_block_sparse 12-13 ms alone, 26-28 ms after xattention's large
-- tensors: allocator state), so every reference gets a clean start
local theirs = {}
for _, id in ipairs(ids) do
  for _, r in ipairs(run_lines(string.format("/usr/bin/python3 tests/bench/ref_estimators.py %s %d %d %s %s", dir, reps,
    threads, mode, id))) do
    theirs[r.method] = r
  end
end

-- one core's rates (process CPU time, best of 5); the exp rate of sparselab's own exp_sum
-- where a C compiler builds tests/bench/exp_rate.c against build/libsparselab.a
local rates = run_lines("OPENBLAS_NUM_THREADS=1 /usr/bin/python3 tests/bench/ref_estimators.py --rates")[1] or {}
local exe = dir .. "/exp_rate"
local libs = "$(pkg-config --libs lua5.4 sqlite3 openblas libuv libedit gsl libcjson libpng sentencepiece libpcre2-8) " ..
  "-lstdc++ -lm -lpthread"
local ok = os.execute(string.format("cc -O2 -std=c11 -Icore $(pkg-config --cflags openblas) tests/bench/exp_rate.c " ..
  "build/libsparselab.a %s -o %s 2>/dev/null", libs, exe))
local exp_ns, exp_src = rates.torch_exp_ns, "torch.exp"
if ok then
  local r = run_lines(exe)[1]
  if r and r.exp_ns and (not exp_ns or r.exp_ns < exp_ns) then exp_ns, exp_src = r.exp_ns, "sparselab exp_sum " .. r.isa end
end
os.execute("rm -rf " .. dir)
local gflops, read_gbs = rates.torch_sgemm_gflops_2048, rates.torch_read_gbs

print(string.format("n = %d, %d query / %d KV heads, d = %d, %d threads (sparselab %d), %s time, torch %s, isa %s", n, H,
  HK, D, threads, sl.threads(), mode, (select(2, next(theirs)) or {}).torch or "?", sl.cpu_isa()))
if gflops then
  print(string.format("floor rates (1 core, CPU time, best of 5): sgemm %.1f GFLOP/s (2048^2; %.1f at 64 x 8192 x 64), " ..
    "exp %.3f ns (%s; torch.exp %.3f), read %.1f GB/s", gflops, rates.torch_sgemm_gflops_64x8192x64 or 0 / 0, exp_ns,
    exp_src, rates.torch_exp_ns or 0 / 0, read_gbs))
end
print(string.format("%-24s %10s %10s %7s %10s %9s %8s %8s %10s", "estimator", "ours ms", "ref ms", "ratio", "floor ms",
  "ref/floor", "GFLOP", "Mexp", "10x poss."))
for _, o in ipairs(ours) do
  local t = theirs[o.id]
  local w = WORK[o.id] and WORK[o.id]()
  local floor = 0 / 0
  if w and gflops then
    floor = math.max(w.gemm / (gflops * 1e6) + w.exps * exp_ns * 1e-6, w.bytes / (read_gbs * 1e6))
  end
  local rms = t and t.ms or 0 / 0
  print(string.format("%-24s %10.1f %10.1f %7.2f %10.2f %9.1f %8.3f %8.2f %10s", o.name, o.ms, rms, rms / o.ms, floor,
    rms / floor, w and w.gemm / 1e9 or 0 / 0, w and w.exps / 1e6 or 0 / 0,
    mode ~= "cpu" and "(cpu only)" or floor == floor and rms == rms and (rms / 10 >= floor and "yes" or "no") or "?"))
end
