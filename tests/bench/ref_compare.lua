-- ref_compare.lua — our estimators against CPU PyTorch ports of the reference
-- estimators (tests/bench/ref_estimators.py) on the same inputs (issue 20,
-- part 3). Inputs: what `sparselab bench` times estimators on (sl.synthetic,
-- 8 query / 2 KV heads, d = 64, seed 1). Ours: m.mask(prob, p) at the
-- method's defaults (estimate + selection, no attention; vertical_slash also
-- with widen = true, which adds the reference kernel's index conversion);
-- theirs: the reference's estimator up to its selection.
-- usage: LUA_CPATH='build/?.so' lua5.4 tests/bench/ref_compare.lua [n=8192] [reps=3] [threads=2] [wall|cpu]
-- cpu: process CPU time on both sides (steadier than wall time on a shared
-- machine; meant with one thread on both sides, where CPU time is the work
-- done: run under `taskset -c 1` with OPENBLAS_NUM_THREADS=1 — sparselab
-- takes its thread count from the affinity mask).
local sl = require "sparselab"
local n = tonumber(arg[1] or 8192)
local reps = tonumber(arg[2] or 3)
local threads = tonumber(arg[3] or sl.threads())
local mode = arg[4] or "wall"
local clock = mode == "cpu" and os.clock or sl.time

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

local wl = {n = n, heads = 8, kv_heads = 2, d = 64, seed = 1}
local q, k, v = sl.synthetic(wl)
local prob = sl.problem{q = q, k = k, v = v, backend = "cpu", workload = "synthetic", workload_params = wl}
local dir = os.tmpname()
os.remove(dir)
assert(os.execute("mkdir -p " .. dir))
sl.save(dir .. "/q.npy", q)
sl.save(dir .. "/k.npy", k)

local ours = {}
for _, c in ipairs{{"vertical_slash", {}}, {"vertical_slash", {widen = true}, "vertical_slash widen"},
  {"flexprefill", {}}, {"flexprefill", {reference = true}, "flexprefill reference"}, {"xattention", {}},
  {"xattention", {reference = true}, "xattention reference"}} do
  local m = sl.methods.get(c[1])
  local p = sl.registry.resolve(m, c[2])
  ours[#ours + 1] = {name = c[3] or c[1], id = c[1], ms = median_ms(function()
    local mk <close> = m.mask(prob, p)
    return mk
  end)}
  collectgarbage()
end
local cmd = string.format("/usr/bin/python3 tests/bench/ref_estimators.py %s %d %d %s", dir, reps, threads, mode)
local pipe = assert(io.popen(cmd))
local theirs = {}
for line in pipe:lines() do
  local r = sl.json_decode(line)
  theirs[r.method] = r
end
pipe:close()
os.execute("rm -rf " .. dir)
print(string.format("n = %d, 8 query / 2 KV heads, d = 64, %d threads (sparselab %d), %s time, torch %s, isa %s", n,
  threads, sl.threads(), mode, (theirs.vertical_slash or {}).torch or "?", sl.cpu_isa()))
print(string.format("%-24s %12s %14s %8s", "estimator", "ours (ms)", "reference (ms)", "ratio"))
for _, o in ipairs(ours) do
  local t = theirs[o.id]
  print(string.format("%-24s %12.1f %14.1f %8.1f", o.name, o.ms, t and t.ms or 0 / 0, t and t.ms / o.ms or 0 / 0))
end
