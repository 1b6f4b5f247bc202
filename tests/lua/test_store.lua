-- test_store.lua — the Lua binding of the store (sl.store) and sl.json_encode:
-- runs and results round trips, unknown keys, stable JSON and point keys,
-- queries with parameters, transactions, closing, and refused files.
-- Run from the repository root with build/sparselab.so on package.cpath.
package.path = "tests/lua/?.lua;" .. package.path
package.cpath = (os.getenv("BUILD") or "build") .. "/?.so;" .. package.cpath
local H = require "harness"
local sl = require "sparselab"
local enc = sl.json_encode

local tmpdir = os.tmpname()
os.remove(tmpdir)
assert(os.execute("mkdir -p '" .. tmpdir .. "'"))
local function tmp(name) return tmpdir .. "/" .. name end

local function write(path, text)
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
end

-- ---- JSON -------------------------------------------------------------------

H.test("json scalars", function()
  H.eq(enc(nil), "null")
  H.eq(enc(true), "true")
  H.eq(enc(false), "false")
  H.eq(enc(42), "42")
  H.eq(enc(-7), "-7")
  H.eq(enc(64.0), "64", "an integral float")
  H.eq(enc(0.1), "0.1", "shortest round trip")
  H.eq(enc(1 / 3), "0.3333333333333333")
  H.eq(enc(0.1 + 0.2), "0.30000000000000004")
  H.eq(enc(1e300), "1e+300")
  H.eq(enc(math.huge), "1e999")
  H.eq(enc(-math.huge), "-1e999")
  H.eq(enc(math.mininteger), tostring(math.mininteger))
  H.eq(enc("a\"b\\c\n\t\1\127é"), '"a\\"b\\\\c\\n\\t\\u0001\127é"')
  H.raises(function() enc(0 / 0) end, "NaN")
end)

H.test("json round trip of random floats", function()
  math.randomseed(20240501)
  for _ = 1, 2000 do
    local x = (math.random() - 0.5) * 10 ^ math.random(-30, 30)
    local s = enc(x)
    H.eq(tonumber(s), x, "reading back " .. s)
    H.truthy(#s <= 24, "short text " .. s)
  end
end)

H.test("json tables", function()
  H.eq(enc({}), "{}")
  H.eq(enc({1, 2, "x"}), '[1,2,"x"]')
  H.eq(enc({b = 1, a = {z = true, y = {1.5}}, A = "k"}), '{"A":"k","a":{"y":[1.5],"z":true},"b":1}')
  -- Insertion order never shows: the same keys built differently give the same text.
  local t1, t2 = {}, {}
  for i = 1, 50 do t1["k" .. i] = i end
  for i = 50, 1, -1 do t2["k" .. i] = i end
  H.eq(enc(t1), enc(t2))
  H.raises(function() enc({1, 2, x = 3}) end, "mixes")
  H.raises(function() enc({[1] = 1, [3] = 3}) end, "mixes")
  H.raises(function() enc({[1.5] = 1}) end, "mixes")
  H.raises(function() enc({a = {b = {print}}}) end, "value.a.b[1]: cannot encode a function")
  local cyc = {}
  cyc.self = cyc
  H.raises(function() enc(cyc) end, "deeper than 100")
end)

-- ---- the store -------------------------------------------------------------------

H.test("open, tostring, path, close", function()
  local path = tmp("a.db")
  local db = sl.store.open(path)
  H.eq(db:path(), path)
  H.truthy(tostring(db):find(path, 1, true), "tostring names the path")
  db:close()
  db:close() -- twice is fine
  H.truthy(tostring(db):find("(closed)", 1, true), "tostring says closed")
  H.raises(function() db:query("SELECT 1") end, "is closed")
  do
    local db2 <close> = sl.store.open(path)
    H.eq(db2:query("SELECT count(*) AS n FROM run")[1].n, 0)
  end
  for _ = 1, 20 do sl.store.open(path) end -- left to the collector
  collectgarbage()
  collectgarbage()
end)

H.test("refused files", function()
  local bad = tmp("garbage.db")
  local bytes = {}
  for i = 1, 4096 do bytes[i] = string.char((i * 131 + 7) % 256) end
  write(bad, table.concat(bytes))
  H.raises(function() sl.store.open(bad) end, bad)
  H.raises(function() sl.store.open(bad) end, "not a SQLite database")
  H.raises(function() sl.store.open(tmp("no/such/dir.db")) end, "cannot open")
end)

H.test("begin_run records provenance and arguments", function()
  local db <close> = sl.store.open(tmp("runs.db"))
  local script = tmp("exp.lua")
  write(script, "-- an experiment\nreturn 1\n")
  local id = db:begin_run{script = script, argv = {"--n", "4", 'q"uote'}, seed = 99, config = {workers = 2, tag = "x"}}
  H.eq(math.type(id), "integer")
  local r = db:query("SELECT * FROM run WHERE id = ?", id)[1]
  H.eq(r.status, "running")
  H.eq(r.script, script)
  H.eq(r.argv, '["--n","4","q\\"uote"]')
  H.eq(r.seed, 99)
  H.eq(r.config_json, '{"tag":"x","workers":2}')
  H.eq(r.script_sha256, sl.store.sha256("-- an experiment\nreturn 1\n"))
  H.truthy(r.host and #r.host > 0, "host")
  H.truthy(r.sparselab_version, "version")
  H.truthy(r.started:match("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%dZ$"), "started is UTC ISO-8601: " .. r.started)
  db:finish_run(id, "interrupted")
  H.eq(db:query("SELECT status FROM run WHERE id = ?", id)[1].status, "interrupted")
  H.raises(function() db:finish_run(id, "done") end, "'ok', 'failed' or 'interrupted'")
  H.raises(function() db:begin_run{scirpt = "x"} end, "scirpt")
  H.raises(function() db:begin_run{argv = {1, 2}} end, "argv[1] must be a string")
  H.raises(function() db:begin_run{config = "{broken"} end, "CHECK constraint")
  local id2 = db:begin_run()
  H.eq(db:query("SELECT argv FROM run WHERE id = ?", id2)[1].argv, nil)
  H.eq(sl.store.sha256("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
end)

H.test("record round trip, metrics, views, point keys", function()
  local db <close> = sl.store.open(tmp("results.db"))
  local run = db:begin_run{seed = 1}
  math.randomseed(777)
  for trial = 1, 30 do
    local rel = math.random()
    local point = {
      run_id = run, method = "quest", params = {page = math.random(1, 64), tau = math.random()},
      workload = "niah", workload_params = {seed = trial}, phase = "prefill", layer = trial % 4, head = trial % 8,
      n_q = 1024, n_k = 1024 * trial, head_dim = 64, heads = 8, kv_heads = 2, backend = "cpu",
      budget = math.random(),
      metrics = {rel_l2 = rel, density = math.random(), time_ms = 2.0, dense_time_ms = 10.0, extra = 0 / 0},
    }
    local id = db:record(point)
    local row = db:query("SELECT * FROM v_result WHERE result_id = ?", id)[1]
    H.eq(row.method, "quest")
    H.eq(row.params_json, enc(point.params))
    H.eq(row.workload_params_json, '{"seed":' .. trial .. "}")
    H.eq(row.n_k, 1024 * trial)
    H.eq(row.budget, point.budget)
    H.eq(row.rel_l2, rel)
    H.eq(row.speedup, 5.0)
    H.eq(row.status, "ok")
    H.eq(row.point_key, sl.store.point_key(point))
    -- NaN metrics are kept as NULL rows in long form.
    local m = db:query("SELECT value FROM metric WHERE result_id = ? AND name = 'extra'", id)
    H.eq(#m, 1)
    H.eq(m[1].value, nil)
  end
  H.eq(db:query("SELECT count(*) AS n FROM result")[1].n, 30)
  H.eq(db:query("SELECT count(DISTINCT point_key) AS n FROM result")[1].n, 30)

  -- The documented point-key text, rebuilt by hand.
  local p = {run_id = run, method = "w", params = {w = 64}, n_k = 10, budget = 0.5}
  local text = '["sparselab-point-v1","w",{"w":64},null,null,null,null,null,null,10,null,null,null,null,0.5]'
  H.eq(sl.store.point_key(p), sl.store.sha256(text))
  -- Integral floats and integers, key order: the same point.
  H.eq(sl.store.point_key{method = "w", params = {w = 64.0}, n_k = 10, budget = 0.5}, sl.store.point_key(p))
  H.truthy(sl.store.point_key{method = "w", params = {w = 65}, n_k = 10, budget = 0.5} ~= sl.store.point_key(p),
    "another parameter, another key")
  -- run_id, status, error and metrics do not define the point.
  H.eq(sl.store.point_key{method = "w", params = {w = 64}, n_k = 10, budget = 0.5, run_id = 5, status = "failed",
    error = "boom", metrics = {x = 1}}, sl.store.point_key(p))

  -- A given key is kept; failed points carry their error.
  local id = db:record{run_id = run, method = "w", point_key = "mine", status = "failed", error = "timeout after 60 s"}
  local r = db:query("SELECT point_key, status, error FROM result WHERE id = ?", id)[1]
  H.eq(r.point_key, "mine")
  H.eq(r.status, "failed")
  H.eq(r.error, "timeout after 60 s")
end)

H.test("record refuses typos and bad values", function()
  local db <close> = sl.store.open(tmp("bad.db"))
  local run = db:begin_run{}
  H.raises(function() db:record{run_id = run, methdo = "x"} end, "unknown key 'methdo'")
  H.raises(function() db:record{run_id = run} end, "'method' is required")
  H.raises(function() db:record{method = "x"} end, "'run_id' is required")
  H.raises(function() db:record{run_id = run, method = "x", layer = 1.5} end, "'layer' must be an integer")
  H.raises(function() db:record{run_id = run, method = "x", n_q = "8"} end, "'n_q' must be an integer")
  H.raises(function() db:record{run_id = run, method = 3} end, "'method' must be a string")
  H.raises(function() db:record{run_id = run, method = "x", params = {f = print}} end, "params.f: cannot encode")
  H.raises(function() db:record{run_id = run, method = "x", metrics = {rel = "low"}} end, "metrics.rel must be a number")
  H.raises(function() db:record{run_id = run, method = "x", metrics = {1}} end, "metrics keys must be names")
  H.raises(function() db:record{run_id = run, method = "x", status = "meh"} end, "status must be")
  H.raises(function() db:record{run_id = run + 100, method = "x"} end, "no run")
  H.raises(function() db:record{run_id = run, method = "x", params = "{not json"} end, "CHECK constraint")
  H.eq(db:query("SELECT count(*) AS n FROM result")[1].n, 0)
end)

H.test("query parameters and columns", function()
  local db <close> = sl.store.open(tmp("q.db"))
  db:exec("CREATE TABLE t (i INTEGER, x REAL, s TEXT, z ANY) STRICT")
  for i = 1, 10 do db:query("INSERT INTO t VALUES (?, ?, ?, ?)", i, i / 4, "s" .. i, i % 2 == 0) end
  db:query("INSERT INTO t VALUES (?, ?, ?, ?)", 11, nil, nil, nil)
  local rows = db:query("SELECT i, x, s, z FROM t WHERE i > ? ORDER BY i", 8)
  H.eq(#rows, 3)
  H.eq(table.concat(rows.columns, ","), "i,x,s,z")
  H.eq(rows[1].i, 9)
  H.eq(math.type(rows[1].i), "integer")
  H.eq(rows[2].x, 2.5)
  H.eq(rows[2].s, "s10")
  H.eq(rows[2].z, 1)
  H.eq(rows[1].z, 0)
  H.eq(rows[3].x, nil)
  local none = db:query("SELECT i AS a, s AS b FROM t WHERE i < 0")
  H.eq(#none, 0)
  H.eq(table.concat(none.columns, ","), "a,b")
  H.raises(function() db:query("SELECT ?, ?", 1) end, "2 parameters, 1 given")
  H.raises(function() db:query("SELECT ?", {}) end, "query parameter")
  H.raises(function() db:query("SELECT 1; SELECT 2") end, "one statement at a time")
  H.raises(function() db:query("SELECT nope FROM t") end, "no such column: nope")
  H.raises(function() db:exec("NOT SQL") end, "syntax error")
  -- Many rows (the row tables are built under pcall one by one).
  db:exec("CREATE TABLE big (n INTEGER)")
  db:begin()
  for i = 1, 5000 do db:query("INSERT INTO big VALUES (?)", i) end
  db:commit()
  local all = db:query("SELECT n FROM big ORDER BY n")
  H.eq(#all, 5000)
  H.eq(all[5000].n, 5000)
end)

H.test("transactions", function()
  local db <close> = sl.store.open(tmp("tx.db"))
  local run = db:begin_run{}
  db:begin()
  for i = 1, 25 do db:record{run_id = run, method = "m", budget = i / 25} end
  db:rollback()
  H.eq(db:query("SELECT count(*) AS n FROM result")[1].n, 0)
  db:begin()
  for i = 1, 25 do db:record{run_id = run, method = "m", budget = i / 25} end
  H.raises(function() db:begin() end, "within a transaction")
  db:commit()
  H.eq(db:query("SELECT count(*) AS n FROM result")[1].n, 25)
  H.raises(function() db:commit() end, "no transaction is active")
end)

os.execute("rm -rf '" .. tmpdir .. "'")
H.done()
