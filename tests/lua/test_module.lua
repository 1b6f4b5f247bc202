-- test_module.lua — the sparselab Lua module from a plain lua5.4: tensors,
-- the generic op binding, masks and their algebra, I/O, the store, and the
-- first three methods with their card checks. Run with
-- LUA_CPATH=build/?.so lua5.4 tests/lua/test_module.lua
package.path = "tests/lua/?.lua;" .. package.path
local H = require "harness"
local sl = require "sparselab"
local test, near, eq, truthy, raises = H.test, H.near, H.eq, H.truthy, H.raises

local TMP = os.tmpname()
os.remove(TMP)
os.execute("mkdir -p " .. TMP)

-- ---- tensors -------------------------------------------------------------

test("tensor from a nested table keeps values and shape", function()
  local t = sl.tensor{{1, 2, 3}, {4, 5, 6}}
  eq(#t:shape(), 2, "ndim")
  eq(t:shape()[1], 2, "rows")
  eq(t:shape()[2], 3, "cols")
  eq(t:get(2, 3), 6, "t[2,3]")
  t:set(1, 2, -7.5)
  eq(t:totable()[1][2], -7.5, "after set")
  raises(function() t:get(3, 1) end, "expected 1..2", "out of range index")
  raises(function() sl.tensor{{1, 2}, {3}} end, "ragged", "ragged table")
end)

test("randn is seeded: same seed same values, other seed other values", function()
  local a, b, c = sl.randn({2, 3, 4}, {seed = 9}), sl.randn({2, 3, 4}, {seed = 9}), sl.randn({2, 3, 4}, {seed = 10})
  local sa, sb, sc = a:stats(), b:stats(), c:stats()
  eq(sa, sb, "same seed")
  truthy(sa ~= sc, "different seed differs")
  raises(function() sl.randn({2}, {sed = 1}) end, "unknown key 'sed' (expected one of: seed, std, dtype)", "typo key")
end)

test("narrow shares memory and converts to f16 within half-precision error", function()
  local t = sl.randn({4, 10}, {seed = 3})
  local v = t:narrow(2, 3, 4)
  eq(v:shape()[2], 4, "narrowed width")
  eq(v:get(2, 1), t:get(2, 3), "view element")
  local h = t:to("f16")
  eq(h:dtype(), "f16", "dtype")
  for i = 1, 4 do
    for j = 1, 10 do
      local x = t:get(i, j)
      truthy(math.abs(h:get(i, j) - x) <= math.abs(x) * 2 ^ -11 + 2 ^ -24, "f16 rounding error bound")
    end
  end
end)

-- ---- ops -----------------------------------------------------------------

local function qkv(hq, hkv, n, d, seed)
  return sl.randn({hq, n, d}, {seed = seed}), sl.randn({hkv, n, d}, {seed = seed + 1}),
    sl.randn({hkv, n, d}, {seed = seed + 2})
end

test("op binding: unknown parameter keys and bad values are errors", function()
  local q, k, v = qkv(2, 1, 8, 4, 1)
  raises(function() sl.attn.dense(q, k, v, {causl = true}) end, "unknown parameter 'causl'", "typo")
  raises(function() sl.attn.dense(q, k, v, {scale = -1}) end, "outside", "range")
  raises(function() sl.attn.dense(q, k, v, {backend = "tpu"}) end, "unknown backend", "backend")
  raises(function() sl.attn.dense(q, k) end, "expected inputs q,k,v", "arity")
  local o, lse = sl.attn.dense(q, k, v, {causal = true, backend = "ref"})
  eq(o:shape()[3], 4, "o head_dim")
  eq(lse:shape()[2], 8, "lse rows")
end)

test("ref and cpu agree on dense attention; row 1 of causal attends to key 1 only", function()
  local q, k, v = qkv(4, 2, 33, 8, 11)
  local o1, l1 = sl.attn.dense(q, k, v, {backend = "ref"})
  local o2, l2 = sl.attn.dense(q, k, v, {backend = "cpu"})
  truthy(sl.metric.rel_l2(o2, o1) < 1e-6, "rel_l2 cpu vs ref")
  -- first query sees only the first key: O = V[g, 1], L = q·k/sqrt(d)
  for h = 1, 4 do
    local g = (h - 1) // 2 + 1
    local dot = 0
    for c = 1, 8 do dot = dot + q:get(h, 1, c) * k:get(g, 1, c) end
    near(l1:get(h, 1), dot / math.sqrt(8), 1e-5, "L of row 1")
    for c = 1, 8 do near(o1:get(h, 1, c), v:get(g, 1, c), 1e-6, "O of row 1") end
  end
end)

-- ---- masks ---------------------------------------------------------------

local function brute_count(m, n_q, n_k)
  local kept = 0
  for i = 1, n_q do for j = 1, n_k do if m:get(1, i, j) then kept = kept + 1 end end end
  return kept
end

test("pattern masks match a brute-force count of their definition", function()
  local n = 77
  for _, case in ipairs{{"window", 10}, {"sink", 5}, {"causal"}} do
    local pat = case[1] == "causal" and sl.mask.causal() or sl.mask[case[1]](case[2])
    local m = pat:materialize{n_q = n, n_k = n, bq = 16, bk = 8}
    local want = 0
    for i = 0, n - 1 do
      for j = 0, n - 1 do
        local keep
        if case[1] == "window" then keep = i - j >= 0 and i - j < case[2]
        elseif case[1] == "sink" then keep = j < case[2] and j <= i
        else keep = j <= i end
        if keep then want = want + 1 end
        eq(m:get(1, i + 1, j + 1), keep, case[1] .. " element")
      end
    end
    eq(m:kept(1), want, case[1] .. " kept")
    near(m:density(true), want / (n * (n + 1) / 2), 1e-12, case[1] .. " density")
  end
end)

test("union with + : sink + window, mask + pattern, and union with the empty mask", function()
  local n = 50
  local a = (sl.mask.sink(3) + sl.mask.window(7)):materialize{n_q = n, n_k = n, bq = 8, bk = 8}
  local w = sl.mask.window(7):materialize{n_q = n, n_k = n, bq = 8, bk = 8}
  local b = w + sl.mask.sink(3)       -- mask + pattern
  local c = sl.mask.sink(3) + w       -- pattern + mask
  eq(brute_count(a, n, n), brute_count(b, n, n), "pattern union vs mask union")
  eq(brute_count(b, n, n), brute_count(c, n, n), "order")
  local empty = sl.mask_c.pattern({}, n, n, 8, 8)
  eq(empty:kept(1), 0, "empty mask")
  local u = w + empty
  eq(brute_count(u, n, n), brute_count(w, n, n), "union with empty is identity")
  truthy(tostring(a):find("density", 1, true), "prints its density")
  raises(function() return w + sl.mask.window(3):materialize{n_q = n, n_k = n, bq = 16, bk = 8} end,
    "sizes differ", "size mismatch")
end)

test("streaming_llm mask rows have min(i+1, n_local) + max(0, min(n_init, i+1-n_local)) keys", function()
  local n, n_init, n_local = 90, 6, 20
  local prob = sl.problem{q = sl.randn({1, n, 4}, {seed = 1}), k = sl.randn({1, n, 4}, {seed = 2}),
    v = sl.randn({1, n, 4}, {seed = 3})}
  local m = sl.methods.get("streaming_llm").mask(prob, {n_init = n_init, n_local = n_local, bq = 16, bk = 16})
  for i = 0, n - 1 do
    local row = 0
    for j = 1, n do if m:get(1, i + 1, j) then row = row + 1 end end
    eq(row, math.min(i + 1, n_local) + math.max(0, math.min(n_init, i + 1 - n_local)), "row " .. i)
  end
end)

test("a mask must fit q and k; its arrays are copies; op_flops checks its inputs", function()
  local q, k, v = qkv(2, 2, 120, 8, 61)
  local m = sl.mask.causal():materialize{n_q = 100, n_k = 100, bq = 64, bk = 64}
  raises(function() sl.attn.block_sparse(q, k, v, m) end, "made for n_q = 100", "size mismatch")
  local rp = m:arrays()
  local before = m:density(true)
  rp:set(1, 2, 99999)
  eq(m:density(true), before, "mutating a copy leaves the mask alone")
  local bad = sl.tensor({{0, 5, 1}}, "i32")
  raises(function() sl.op_flops("attn.token_sparse", q, k, v, bad, sl.tensor({1}, "i32")) end,
    "attn.token_sparse", "op_flops validates")
  raises(function() q:narrow(1, 1, math.maxinteger) end, "outside", "narrow overflow")
  raises(function() sl.tensor({300}, "u8") end, "does not fit a u8", "u8 range")
end)

-- ---- methods and their card checks ------------------------------------------

test("the registry lists dense, sliding_window and streaming_llm with backends", function()
  local ids = table.concat(sl.methods.ids(), ",")
  for _, id in ipairs{"dense", "sliding_window", "streaming_llm"} do
    truthy(ids:find(id, 1, true), id .. " registered")
    local b = table.concat(sl.methods.backends(sl.methods.get(id)), ",")
    truthy(b:find("cpu", 1, true) and b:find("ref", 1, true), id .. " backends")
  end
  raises(function() sl.methods.get("no_such_method") end, "unknown method", "unknown id")
  raises(function() sl.eval("sliding_window", sl.problem{q = sl.randn({1, 4, 2}), k = sl.randn({1, 4, 2}),
    v = sl.randn({1, 4, 2})}, {params = {width = 3}}) end, "unknown parameter 'width'", "unknown param")
end)

local function problem(n, seed)
  local q, k, v = qkv(4, 2, n, 16, seed)
  return sl.problem{q = q, k = k, v = v}
end

test("sliding_window: w >= n equals dense causal; w = 1 returns V row-wise", function()
  local n = 70
  for _, backend in ipairs{"ref", "cpu"} do
    local prob = problem(n, 21)
    prob.backend = backend
    local r = sl.eval("sliding_window", prob, {budget = n})
    truthy(r.metrics.rel_l2 < 1e-6, backend .. " w >= n: rel_l2 " .. r.metrics.rel_l2)
    near(r.metrics.recall_min, 1, 1e-6, "full recall")
    local r1 = sl.eval("sliding_window", prob, {budget = 1})
    for h = 1, 4 do
      local g = (h - 1) // 2 + 1
      for i = 1, n, 13 do
        for c = 1, 16, 5 do near(r1.o:get(h, i, c), prob.v:get(g, i, c), 1e-6, "w=1 output") end
      end
    end
  end
end)

test("streaming_llm: n_local >= n equals dense; recall is monotone in the budget", function()
  local prob = problem(128, 31)
  local r = sl.eval("streaming_llm", prob, {budget = 128})
  truthy(r.metrics.rel_l2 < 1e-6, "n_local >= n")
  local prev = 0
  for _, w in ipairs{4, 16, 32, 64, 100, 128} do
    local rr = sl.eval("streaming_llm", prob, {budget = w})
    truthy(rr.metrics.recall_mean >= prev - 1e-12, "recall monotone at " .. w)
    prev = rr.metrics.recall_mean
  end
  -- sinks add mass: with the same window, n_init = 0 recalls no more than n_init = 8
  local no_sink = sl.eval("streaming_llm", prob, {budget = 16, params = {n_init = 0}})
  local sink = sl.eval("streaming_llm", prob, {budget = 16, params = {n_init = 8}})
  truthy(sink.metrics.recall_mean >= no_sink.metrics.recall_mean, "sinks add recall")
end)

test("eval reports executed flops equal to the kept block area", function()
  local prob = problem(64, 41)
  local r = sl.eval("sliding_window", prob, {budget = 16, params = {bq = 16, bk = 16}})
  -- blocks kept per query block r (0-based): the diagonal and the one before it (window 16)
  local blocks = 1 + 3 * 2
  near(r.metrics.flops, 4 * 16 * (blocks * 16 * 16) * 4, 1e-6, "flops")
end)

-- ---- I/O -------------------------------------------------------------------

test("save and load round-trip safetensors and npy", function()
  local a, b = sl.randn({2, 5, 3}, {seed = 5}), sl.randn({7}, {seed = 6})
  sl.save(TMP .. "/x.safetensors", {a = a, b = b})
  local t = sl.load(TMP .. "/x.safetensors")
  eq(sl.metric.max_abs(t.a, a), 0, "a")
  eq(sl.metric.max_abs(t.b, b), 0, "b")
  sl.save(TMP .. "/y.npy", a)
  eq(sl.metric.max_abs(sl.load(TMP .. "/y.npy"), a), 0, "npy")
  local f = io.open(TMP .. "/bad.safetensors", "wb")
  f:write("\16\0\0\0\0\0\0\0{\"a\":{\"dtype\"") -- truncated header
  f:close()
  raises(function() sl.load(TMP .. "/bad.safetensors") end, TMP .. "/bad.safetensors", "error names the file")
end)

-- ---- store ------------------------------------------------------------------

test("results recorded through the store come back from v_result", function()
  local db = sl.store.open(TMP .. "/r.db")
  local run = db:begin_run{script = "test_module.lua", seed = 3}
  local prob = problem(64, 51)
  local r = sl.eval("streaming_llm", prob, {budget = 32})
  sl.record(db, run, r)
  db:finish_run(run, "ok")
  local rows = db:query("SELECT method, budget, rel_l2, density FROM v_result WHERE run_id = ?", run)
  eq(#rows, 1, "one row")
  eq(rows[1].method, "streaming_llm", "method")
  eq(rows[1].budget, 32, "budget")
  near(rows[1].rel_l2, r.metrics.rel_l2, 1e-15, "rel_l2 stored")
  near(rows[1].density, r.metrics.density, 1e-15, "density stored")
  raises(function() db:record{run_id = run, method = "x", metricz = {}} end, "metricz", "unknown key")
  db:close()
end)

os.execute("rm -rf " .. TMP)
H.done()
