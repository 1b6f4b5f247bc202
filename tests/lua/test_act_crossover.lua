-- test_act_crossover.lua — the runner dispatches mm.act_sparse on the
-- crossover density rho* stored in SQLite (card act_sparse_matmul step 5,
-- issue 17 session 4): rows recorded as `sparselab bench --db` records them
-- (method mm.act_crossover, metric crossover_density, params N, K, n_k = the
-- activation rows T) are read back for the w2 shape and backend, the newest
-- per T; a product whose activation density is above its T's rho* runs as the
-- dense sgemm (stats over_rho), one below runs act-sparse (fewer flops);
-- with nothing stored for that shape only min_macs decides, as before. The
-- logits equal dense either way (the same zeroed activations).
package.path = "tests/lua/?.lua;" .. package.path
local H = require "harness"
local sl = require "sparselab"
local A = require "sparselab.actsparse"
local E = require "sparselab.runexec"
local test, eq, truthy = H.test, H.eq, H.truthy

local DATA = "experiments/data/tinystories260k"
local m = sl.model.load(DATA .. "/model.bin")
local f = assert(io.open(DATA .. "/texts/06_little_seed.txt", "rb"))
local ids = m:encode(f:read("a"))
f:close()
local P, D = 40, 3 -- prefill rows, decode steps
local L, dim, hid = m.cfg.n_layers, m.cfg.dim, m.cfg.hidden_dim
local K_UNITS = 43 -- top-k units per token: activation density 43 / 172 = 0.25

-- a store holding crossover rows: pts = {{T, rho, N, K, backend}, ...} in recording order
local function store_with(pts)
  local path = os.tmpname()
  local db = sl.store.open(path)
  local run_id = db:begin_run{script = "test_act_crossover", argv = {}}
  for _, p in ipairs(pts) do
    db:record{run_id = run_id, method = "mm.act_crossover", params = {N = p[3] or dim, K = p[4] or hid},
      workload = "bench", backend = p[5] or "cpu", n_q = p[1], n_k = p[1], head_dim = p[4] or hid, heads = 1,
      kv_heads = 1, metrics = {crossover_density = p[2], crossover_kind = 0}}
  end
  db:finish_run(run_id, "ok")
  db:close()
  return path
end

-- prefill P tokens then D single-token steps with top-k units and w2 through the exec;
-- returns the logits of every step and w2's stats of the prefill and of the decode
local function run(spec)
  E.use(m, spec)
  local hook = A.hook(m, {kind = "topk", k = K_UNITS})
  local st <close> = m.c:state(P + D)
  local pre = {}
  for i = 1, P do pre[i] = ids[i] end
  m.c:exec_stats(true)
  local out = {m.c:forward(pre, st, nil, hook):totable()}
  local sp = m.c:exec_stats(true).w2
  for i = 1, D do out[#out + 1] = m.c:forward({ids[P + i]}, st, nil, hook):totable() end
  local sd = m.c:exec_stats(true).w2
  E.off(m)
  return out, sp, sd
end

local function dense_logits()
  local hook = A.hook(m, {kind = "topk", k = K_UNITS})
  local st <close> = m.c:state(P + D)
  local pre = {}
  for i = 1, P do pre[i] = ids[i] end
  local out = {m.c:forward(pre, st, nil, hook):totable()}
  for i = 1, D do out[#out + 1] = m.c:forward({ids[P + i]}, st, nil, hook):totable() end
  return out
end

local function close_to(a, b, what)
  for s = 1, #a do
    local d, big = 0, 0
    for i = 1, #a[s] do
      for j = 1, #a[s][i] do
        d = math.max(d, math.abs(a[s][i][j] - b[s][i][j]))
        big = math.max(big, math.abs(a[s][i][j]))
      end
    end
    truthy(d <= 1e-5 * big, what .. ": logits equal dense (" .. d .. ")")
  end
end

local DENSE = dense_logits()
local ACT_FLOPS_MAX = 2 * dim * K_UNITS -- per row, act-sparse w2

test("act_sparse_matmul: the runner dispatches on the stored rho* per row count", function()
  -- prefill (T = P) stored below the density 0.25 -> dense; decode (T = 1) above -> act
  local path = store_with{{1, 0.9}, {P, 0.6}, -- older rows, superseded below
    {1, 0.5}, {P, 0.1},
    {1, 0.01, 2 * dim, hid}, {1, 0.01, dim, hid, "cuda"}} -- other shape / backend: ignored
  local pts = E.crossover_from_store(path, {backend = "cpu"}, m)
  eq(#pts, 2, "two row counts stored for w2's shape on cpu")
  eq(pts[1].rows, 1); eq(pts[1].rho, 0.5, "the newest value at T = 1")
  eq(pts[2].rows, P); eq(pts[2].rho, 0.1, "the newest value at T = P")
  local out, sp, sd = run{act = true, min_macs = 0, crossover = path}
  close_to(out, DENSE, "stored rho*")
  eq(sp.calls, L, "one w2 product per layer in prefill")
  eq(sp.over_rho, L, "prefill: density 0.25 > rho* 0.1 -> dense")
  eq(sp.flops, 2 * P * dim * hid * L, "prefill ran the dense flops")
  eq(sd.calls, L * D, "decode products")
  eq(sd.over_rho, 0, "decode: density 0.25 < rho* 0.5 -> act-sparse")
  truthy(sd.flops <= ACT_FLOPS_MAX * L * D, "decode ran the act-sparse flops: " .. sd.flops)
  os.remove(path)
end)

test("act_sparse_matmul: the decision flips with the stored value around the density", function()
  for _, c in ipairs{{0.2, true}, {0.3, false}, {-1, true}, {1, false}} do
    local path = store_with{{1, c[1]}}
    local _, sp, sd = run{act = true, min_macs = 0, crossover = path}
    eq(sp.over_rho, c[2] and L or 0, "prefill (the only point applies) at rho* " .. c[1])
    eq(sd.over_rho, c[2] and L * D or 0, "decode at rho* " .. c[1])
    os.remove(path)
  end
end)

test("act_sparse_matmul: with no rho* stored for the shape, min_macs decides as before", function()
  local path = store_with{{1, 0.01, 2 * dim, hid}}
  eq(#E.crossover_from_store(path, {backend = "cpu"}, m), 0, "nothing for w2's shape")
  -- nearest: the other shape's value stands in (2 dim x hid is the only one stored)
  local near = E.crossover_from_store(path, {backend = "cpu", nearest = true}, m)
  eq(#near, 1, "the nearest shape's point"); eq(near[1].rho, 0.01)
  local _, spn = run{act = true, min_macs = 0, crossover = path, crossover_nearest = true}
  eq(spn.over_rho, L, "nearest: 0.25 > 0.01 -> dense")
  local out, sp, sd = run{act = true, min_macs = 0, crossover = path}
  close_to(out, DENSE, "none stored")
  eq(sp.over_rho + sd.over_rho, 0, "never dense by rho*")
  truthy(sp.flops < 2 * P * dim * hid * L, "act-sparse in prefill")
  local _, sp2, sd2 = run{act = true, crossover = path, min_macs = 1e12}
  eq(sp2.small, L, "below min_macs: dense (small)"); eq(sd2.small, L * D, "decode small")
  eq(sp2.over_rho + sd2.over_rho, 0, "small is decided first")
  os.remove(path)
end)

test("act_sparse_matmul: bad crossover points fail in one line", function()
  local ok, err = pcall(m.c.exec_crossover, m.c, {{rows = 4, rho = 0.2}, {rows = 2, rho = 0.3}})
  truthy(not ok and err:match("ascending"), tostring(err))
  ok, err = pcall(m.c.exec_crossover, m.c, {{rows = 1, rho = 2}})
  truthy(not ok and err:match("%[%-1, 1%]"), tostring(err))
  E.off(m)
end)

H.done()
