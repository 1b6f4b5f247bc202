-- test_sweep.lua — sparselab.sweep and the runner binding from a plain
-- lua5.4: the one-line literal codec, config checks (unknown keys, empty
-- environment), expansion (count, order, unique keys equal to the keys
-- db:record stores), shards partitioning the points, a point run in-process
-- (budget and density target), and sl.runner_c.run against small shell
-- workers: results in any order each once, a crash and a hang turned into
-- failed points, workers that never start, a wrong protocol, a missing
-- program, an error raised by on_result, and a sweep through the program.
-- Run from the repository root with build/sparselab.so on package.cpath.
package.path = "tests/lua/?.lua;" .. package.path
local BUILD = os.getenv("BUILD") or "build"
package.cpath = BUILD .. "/?.so;" .. package.cpath
local H = require "harness"
local sl = require "sparselab"
local S = require "sparselab.sweep"

local tmpdir = os.tmpname()
os.remove(tmpdir)
assert(os.execute("mkdir -p '" .. tmpdir .. "'"))
local function tmp(name) return tmpdir .. "/" .. name end
local function write(path, text)
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
end

H.test("encode/decode round trip", function()
  local v = {a = 1, b = 2.0, c = -0.1, s = "line\nbreak \"q\" \\ \0 \200 end", t = true, f = false,
    inf = math.huge, ninf = -math.huge, list = {1, 2, {x = "y"}}, ["not id"] = 3, ["end"] = 4, [7] = "seven",
    big = math.maxinteger, tiny = 5e-324}
  local line = S.encode(v)
  H.truthy(not line:find("\n"), "one line")
  local w = S.decode(line)
  for k, x in pairs(v) do
    if type(x) ~= "table" then
      H.eq(w[k], x, "field " .. tostring(k))
      H.eq(math.type(w[k]), math.type(x), "number type of " .. tostring(k))
    end
  end
  H.eq(w.list[3].x, "y", "nested")
  local nan = S.decode(S.encode{n = 0 / 0}).n
  H.truthy(nan ~= nan, "NaN survives")
  H.eq(S.encode(v), line, "stable text")
  H.raises(function() S.encode{f = print} end, "cannot encode a function")
  H.raises(function() S.decode("{") end, "sweep.decode")
  H.raises(function() S.decode("os.exit(1)") end, "attempt to index a nil value")
end)

H.test("config checks", function()
  H.raises(function() S.check_config({methods = {"dense"}, sizez = {1}}, "c") end, "c: unknown key 'sizez'")
  H.raises(function() S.check_config({}, "c") end, "'methods' is required")
  H.raises(function() S.check_config({methods = {"nope"}}, "c") end, "methods[1]: unknown method 'nope'")
  H.raises(function() S.check_config({methods = {{id = "sliding_window", budgets = {1}, targets = {density = {0.1}}}}}, "c") end,
    "not both")
  H.raises(function() S.check_config({methods = {{id = "dense", budgets = {1}}}}, "c") end, "has no budget knob")
  H.raises(function() S.check_config({methods = {{id = "sliding_window", targets = {latency = {1}}}}}, "c") end,
    "unknown key 'latency'")
  H.raises(function() S.check_config({methods = {"dense"}, workloads = {{name = "niah"}}}, "c") end, "unknown workload 'niah'")
  H.raises(function() S.check_config({methods = {"dense"}, workloads = {{name = "synthetic", dd = 1}}}, "c") end,
    "workloads[1]: unknown key 'dd'")
  H.raises(function() S.check_config({methods = {"dense"}, sizes = {64.5}}, "c") end, "sizes[1] must be an integer")
  H.raises(function() S.check_config({methods = {"dense"}, seeds = {}}, "c") end, "non-empty list")
  -- an unknown backend fails at load, naming the valid ones (every point
  -- failed in the worker before)
  H.raises(function() S.check_config({methods = {"dense"}, backend = "gpu"}, "c") end,
    "c: unknown backend 'gpu' (expected one of ref, cpu, cuda)")
  H.eq(S.check_config({methods = {"dense"}, backend = "ref"}, "c").backend, "ref", "a known backend loads")
  write(tmp("os.lua"), "return {methods = {os.getenv('HOME')}}")
  H.raises(function() S.load_config(tmp("os.lua")) end, "global 'os'")
  write(tmp("globals.lua"), "methods = {'dense'}\nsizes = {math.floor(64.7)}\nname = string.upper('x')\n")
  local cfg = S.load_config(tmp("globals.lua"))
  H.eq(cfg.sizes[1], 64, "globals-style config")
  H.eq(cfg.name, "X", "string library")
  H.eq(cfg.math, nil, "libraries are not config keys")
  write(tmp("num.lua"), "return 3")
  H.raises(function() S.load_config(tmp("num.lua")) end, "returns a table")
end)

local CFG = {methods = {"dense", {id = "sliding_window", budgets = {8, 16}, params = {bq = {16, 32}, bk = 16}},
  {id = "streaming_llm", targets = {density = {0.5}}, params = {bq = 16, bk = 16}}},
  workloads = {{name = "synthetic", heads = 2, kv_heads = 1, d = 16}, {name = "synthetic", heads = 4, kv_heads = 2,
  d = 16, n = 64, split_heads = true}}, sizes = {64, 128}, seeds = {1, 2, 3}}

H.test("expansion: count, order, keys", function()
  S.check_config(CFG, "cfg")
  local pts = S.expand(CFG)
  -- settings: dense 1 + sliding_window 2 budgets x 2 bq + 1 target = 6;
  -- instances: 2 sizes x 3 seeds + (n = 64) x 3 seeds x 2 heads = 12
  H.eq(#pts, 6 * 12, "points")
  local again = S.expand(CFG)
  local seen = {}
  for i, p in ipairs(pts) do
    H.eq(again[i].key, p.key, "deterministic key " .. i)
    H.truthy(not seen[p.key], "unique key " .. i)
    seen[p.key] = true
    H.eq(sl.store.point_key(p.desc), p.key, "key of the record")
  end
  H.eq(pts[1].method, "dense", "methods vary fastest")
  H.eq(pts[2].params.bq, 16, "grid, sorted names")
  H.eq(pts[3].params.bq, 32, "grid")
  H.eq(pts[2].budget, 8, "budget")
  H.eq(pts[6].params.n_local, nil, "a target point leaves the knob to the worker")
  H.eq(pts[6].desc.params["@target"].density, 0.5, "the target is in the key")
  H.eq(pts[7].workload.seed, 2, "then seeds")
  local h = pts[#pts]
  H.eq(h.workload.head, 1, "split heads")
  H.eq(h.desc.heads, 2, "a head's q group")
  H.eq(h.desc.kv_heads, 1, "one kv head")
end)

H.test("shards partition the points", function()
  local pts = S.expand(CFG)
  local seen, total = {}, 0
  for i = 1, 3 do
    local part = S.shard(pts, i, 3)
    H.truthy(#part > 0, "shard " .. i .. " non-empty")
    for _, p in ipairs(part) do
      H.truthy(not seen[p.key], "in one shard only")
      seen[p.key] = true
    end
    total = total + #part
  end
  H.eq(total, #pts, "every point in a shard")
end)

H.test("a point in-process, recorded with its key", function()
  local pts = S.expand(CFG)
  local db = sl.store.open(tmp("one.db"))
  local run = db:begin_run{script = "test"}
  for _, i in ipairs{2, 6, #pts} do
    local p = pts[i]
    local r = S.run_point(S.decode(S.encode{method = p.method, params = p.params, budget = p.budget,
      target = p.target, workload = p.workload, backend = p.backend, causal = p.causal, reps = 1}))
    H.truthy(r.metrics.rel_l2 >= 0, "rel_l2")
    H.eq(r.heads, p.desc.heads, "heads")
    if p.target then
      H.near(r.metrics.density, 0.5, 0.05, "density near the target")
      H.eq(r.metrics.target_density, 0.5, "target recorded")
    else
      local rec = {}
      for k, v in pairs(p.desc) do rec[k] = v end
      rec.run_id, rec.metrics = run, r.metrics
      local id = db:record(rec) -- no point_key given: db:record computes it
      H.eq(db:query("SELECT point_key FROM result WHERE id = ?", id)[1].point_key, p.key, "stored key")
    end
  end
  db:close()
end)

-- A shell worker speaking the protocol: a reply per line; "crash" kills it
-- with SIGTERM (a sanitizer preloaded into sh would catch SIGSEGV), "hang" sleeps in a child process, "p1" prints a stray line.
local SH = [[printf '\001sl:hello 1\n'; while read -r l; do case "$l" in
  *crash*) kill -TERM $$;; *hang*) sleep 30;; p1) printf 'chatter relayed to stderr\n';; esac; printf '\001sl:{ok=true,echo="%s"}\n' "$l"; done]]

local function run_sh(script, points, o)
  local got, n = {}, 0
  local opts = {program = "/bin/sh", args = {"-c", script}, points = points, workers = 3, progress = false,
    on_result = function(i, reply, err, sig)
      n = n + 1
      H.truthy(not got[i], "point " .. i .. " reported once")
      got[i] = {reply = reply, err = err, sig = sig}
      return err ~= nil
    end}
  for k, v in pairs(o or {}) do opts[k] = v end
  local res = sl.runner_c.run(opts)
  return res, got, n
end

H.test("runner: points, a crash and a hang", function()
  local pts = {}
  for i = 1, 40 do pts[i] = "p" .. i end
  pts[7], pts[30] = "crash", "hang"
  local t0 = sl.time()
  local res, got, n = run_sh(SH, pts, {timeout = 0.5})
  H.truthy(sl.time() - t0 < 10, "the hang's sleep was killed with its worker")
  H.eq(n, 40, "every point reported")
  H.eq(res.done, 40, "done")
  H.eq(res.failed, 2, "failed")
  H.eq(res.interrupted, nil, "not interrupted")
  H.eq(S.decode(got[12].reply).echo, "p12", "reply of point 12")
  H.eq(got[7].sig, 15, "crash signal")
  H.eq(got[7].err, "killed by signal 15 (SIGTERM)", "crash message")
  H.eq(got[30].sig, 9, "timeout kill")
  H.truthy(got[30].err:find("timeout after 0.5 s", 1, true), "timeout message")
end)

H.test("runner: errors", function()
  H.raises(function() run_sh("exit 3", {"a", "b"}) end, "workers end before they start")
  H.raises(function() run_sh("echo hi; printf '\\001sl:hello 2\\n'; cat", {"a"}) end, "speaks another protocol")
  H.raises(function() sl.runner_c.run{program = tmp("none"), points = {"a"}, on_result = print} end,
    "cannot start a worker")
  H.raises(function() run_sh(SH, {"a", "b", "c", "d"}, {on_result = function() error("boom", 0) end}) end, "boom")
  H.raises(function() sl.runner_c.run{program = "/bin/sh", points = {"a\nb"}, on_result = print} end, "newline")
  H.raises(function() sl.runner_c.run{program = "/bin/sh", points = {}, on_result = print, workerz = 1} end,
    "unknown key")
  local res = sl.runner_c.run{program = "/bin/sh", points = {}, on_result = print}
  H.eq(res.done, 0, "no points")
end)

H.test("a sweep through the program", function()
  write(tmp("small.lua"), "return {methods = {'dense', {id = 'sliding_window', budgets = {8, 16}}}, " ..
    "workloads = {{name = 'synthetic', heads = 2, kv_heads = 1, d = 16}}, sizes = {32, 64}, seeds = {1, 2}}")
  local cfg = S.load_config(tmp("small.lua"))
  local lines = {}
  local sum = S.run{config = cfg, config_path = tmp("small.lua"), db = tmp("small.db"), workers = 2,
    program = BUILD .. "/sparselab", progress = false, say = function(l) lines[#lines + 1] = l end}
  H.eq(sum.done, 12, "points run")
  H.eq(sum.failed, 0, "none failed")
  H.truthy(lines[1]:find("12 points", 1, true), "what will run")
  local db = sl.store.open(tmp("small.db"))
  H.eq(db:query("SELECT count(DISTINCT point_key) AS n FROM result")[1].n, 12, "keys")
  db:close()
  sum = S.run{config = cfg, config_path = tmp("small.lua"), db = tmp("small.db"), program = BUILD .. "/sparselab"}
  H.eq(sum.todo, 0, "resumed: nothing left")
end)

os.execute("rm -rf '" .. tmpdir .. "'")
H.done()
