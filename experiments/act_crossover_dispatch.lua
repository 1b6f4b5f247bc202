-- experiments/act_crossover_dispatch.lua — card act_sparse_matmul step 5 end
-- to end (issue 17, session 4): measure rho* of mm.act_sparse at the shipped
-- model's w2 shape (x [T, 172] . W^T [172, 64]) with sparselab.bench_mm, store
-- it in a SQLite store as `sparselab bench --db` does, then time the model's
-- FFN with top-k units (w2 through the exec) three ways in one run: the dense
-- sgemm, mm.act_sparse on every product (min_macs 0, no rho*), and dispatch on
-- the stored rho* (min_macs 0). Prints the stored points and FFN us/token.
--   LUA_CPATH='build/?.so' lua5.4 experiments/act_crossover_dispatch.lua [db] [reps]
local sl = require "sparselab"
local B = require "sparselab.bench_mm"
local E = require "sparselab.runexec"
local A = require "sparselab.actsparse"

local DATA = "experiments/data/tinystories260k"
local m = sl.model.load(DATA .. "/model.bin")
local path = arg and arg[1] or os.tmpname()
local reps = tonumber(arg and arg[2]) or 5
local f = assert(io.open(DATA .. "/texts/06_little_seed.txt", "rb"))
local ids = m:encode(f:read("a"))
f:close()

local db = sl.store.open(path)
local run_id = db:begin_run{script = "act_crossover_dispatch", argv = {}}
local rows = B.run{N = m.cfg.dim, K = m.cfg.hidden_dim, rows = {1, #ids}, reps = reps, sparsities = {0.75},
  densities = {0.02, 0.05, 0.1, 0.25, 0.5}}
for _, r in ipairs(rows) do
  db:record{run_id = run_id, method = r.name, params = r.params, workload = "bench", backend = r.backend,
    n_q = r.n, n_k = r.n, head_dim = r.d, heads = r.heads, kv_heads = r.heads, metrics = r.metrics}
  if r.name == "mm.act_sparse" then
    print(string.format("T %d density %.3f ratio to sgemm %.2f", r.n, r.metrics.density, r.metrics.ratio_to_sgemm))
  end
end
db:finish_run(run_id, "ok")
db:close()
local pts = E.crossover_from_store(path, {backend = "cpu"}, m)
for _, p in ipairs(pts) do print(string.format("stored rho* at T = %d: %.3f", p.rows, p.rho)) end

local hook = A.hook(m, {kind = "topk", k = 43})
local function time_ffn(spec)
  local t = {}
  for r = 1, reps do
    if spec then E.use(m, spec) else E.use(m, {}) end
    local s = E.time(m, {ids}, hook)
    t[r] = {us = s.ffn_us_per_token, over = s.w2.over_rho, calls = s.w2.calls}
    E.off(m)
  end
  table.sort(t, function(a, b) return a.us < b.us end)
  return t[(reps + 1) // 2]
end
print("| w2 path (top-k 43 of 172 units, prefill " .. #ids .. " tokens) | FFN us/token | w2 calls dense by rho* |")
print("| --- | ---: | ---: |")
for _, c in ipairs{{"dense sgemm", nil}, {"mm.act_sparse always", {act = true, min_macs = 0}},
    {"stored rho*", {act = true, min_macs = 0, crossover = path}}} do
  local r = time_ffn(c[2])
  print(string.format("| %s | %.2f | %d of %d |", c[1], r.us, r.over, r.calls))
end
if not (arg and arg[1]) then os.remove(path) end
