-- test_corrections.lua — the correction framework (sl.correct, the registry's
-- "base+corr" ids) and each correction's card checks, against independent
-- float64 references written here with plain loops (dense attention, the
-- delta rule, ...), on fresh seeded random inputs. Run with
-- LUA_CPATH=build/?.so lua5.4 tests/lua/test_corrections.lua
package.path = "tests/lua/?.lua;" .. package.path
local H = require "harness"
local sl = require "sparselab"
local test, near, eq, truthy, raises = H.test, H.near, H.eq, H.truthy, H.raises

local function problem(hq, hkv, n, d, seed, causal, n_k)
  n_k = n_k or n
  local q, k, v = sl.randn({hq, n, d}, {seed = seed}), sl.randn({hkv, n_k, d}, {seed = seed + 1}),
    sl.randn({hkv, n_k, d}, {seed = seed + 2})
  return sl.problem{q = q, k = k, v = v, causal = causal}
end

-- Dense attention rows in float64 from the problem's tensors (plain loops):
-- out[h][i] = {o = {...}, lse = x} for the requested rows (0-based).
local function dense_rows(prob, rows)
  local q, k, v = prob.q:totable(), prob.k:totable(), prob.v:totable()
  local hq, nq, d = #q, #q[1], #q[1][1]
  local hkv, nk = #k, #k[1]
  local off, scale = nk - nq, 1 / math.sqrt(d)
  local out = {}
  for h = 1, hq do
    local g = (h - 1) // (hq // hkv) + 1
    out[h] = {}
    for _, i in ipairs(rows) do
      local lim = prob.causal and (off + i + 1) or nk
      local s, mx = {}, -math.huge
      for j = 1, lim do
        local dot = 0
        for c = 1, d do dot = dot + q[h][i + 1][c] * k[g][j][c] end
        s[j] = dot * scale
        if s[j] > mx then mx = s[j] end
      end
      local z, o = 0, {}
      for c = 1, d do o[c] = 0 end
      for j = 1, lim do
        local p = math.exp(s[j] - mx)
        z = z + p
        for c = 1, d do o[c] = o[c] + p * v[g][j][c] end
      end
      for c = 1, d do o[c] = o[c] / z end
      out[h][i] = {o = o, lse = mx + math.log(z)}
    end
  end
  return out
end

local function all_rows(n)
  local r = {}
  for i = 0, n - 1 do r[#r + 1] = i end
  return r
end

-- max |a - b| over the given rows of a [H, N, D] tensor against reference rows
local function max_row_err(t, ref, rows)
  local x = t:totable()
  local e = 0
  for h = 1, #x do
    for _, i in ipairs(rows) do
      for c = 1, #x[h][i + 1] do e = math.max(e, math.abs(x[h][i + 1][c] - ref[h][i].o[c])) end
    end
  end
  return e
end

local function layout(n, gamma, tail)
  local n_tail = math.min(n, n % gamma + math.max(tail, gamma))
  local s_p = n - n_tail
  return s_p, (s_p + gamma - 1) // gamma, n_tail
end

-- ---- framework ------------------------------------------------------------

test("sl.correct.delta{...}(m) is a method: composed id, base knob and family, union of params and ops", function()
  local base = sl.methods.get("streaming_llm")
  local m = sl.correct.delta{gamma = 16}(base)
  eq(m.id, "streaming_llm+delta_attention", "id")
  eq(m.knob, base.knob, "knob")
  eq(m.family, base.family, "family")
  eq(m.phase, base.phase, "phase")
  eq(m.params.gamma.default, 16, "the wrapper's gamma becomes the default")
  eq(m.params.n_local.default, base.params.n_local.default, "base params kept")
  local ops = table.concat(m.ops, ",")
  truthy(ops:find("attn.block_sparse", 1, true) and ops:find("attn.rows", 1, true) and
    ops:find("correct.delta", 1, true), "ops union: " .. ops)
  truthy(m.mask, "the base's mask function carries over (budget matching)")
  local m2 = sl.correct.apply("streaming_llm", "delta_attention", {gamma = 16})
  eq(m2.id, m.id, "apply gives the same id")
end)

test("the registry resolves base+corr ids (aliases too) and rejects malformed ones", function()
  eq(sl.methods.get("sliding_window+delta_attention").id, "sliding_window+delta_attention", "card id")
  eq(sl.methods.get("sliding_window+delta").id, "sliding_window+delta_attention", "alias")
  eq(sl.methods.get("sliding_window+delta+delta").id, "sliding_window+delta_attention+delta_attention", "stacked")
  raises(function() sl.methods.get("sliding_window+nosuch") end, "unknown correction 'nosuch'")
  raises(function() sl.methods.get("nosuch+delta") end, "unknown method 'nosuch'")
  raises(function() sl.methods.get("dense+") end, "expected base+correction")
  raises(function() sl.correct.delta{gama = 3} end, "unknown parameter 'gama'")
  raises(function() sl.correct.delta{gamma = 0}("dense") end, "outside")
end)

test("a correction parameter named like a base parameter is prefixed; both reach their stage", function()
  local seen = {}
  local toy = {id = "toy_gamma", title = "toy", family = "static-pattern", phase = "both", knob = "gamma",
    params = {gamma = {default = 8, min = 1, int = true}},
    run = function(prob, p)
      seen.base = p.gamma
      return sl.methods.get("dense").run(prob, {})
    end}
  local m = sl.correct.delta{gamma = 4}(toy)
  truthy(m.params.gamma and m.params["delta_attention.gamma"], "both gamma params")
  eq(m.params["delta_attention.gamma"].default, 4, "prefixed default")
  local prob = problem(1, 1, 40, 8, 7, true)
  local r = sl.eval(m, prob, {budget = 3, params = {["delta_attention.gamma"] = 2}})
  eq(seen.base, 3, "the base got its own gamma (the knob)")
  eq(r.params["delta_attention.gamma"], 2, "recorded correction param")
  eq(r.method, "toy_gamma+delta_attention", "recorded id")
end)

test("stats: flops = base executor + correction FLOPs; correction_ms measured; mask is the base's", function()
  local prob = problem(2, 1, 300, 16, 11, true)
  local r = sl.eval("streaming_llm+delta", prob, {budget = 32})
  local base = sl.eval("streaming_llm", prob, {budget = 32})
  near(r.metrics.base_flops, base.metrics.flops, 0, "base_flops")
  truthy(r.metrics.correction_flops > 0, "correction flops counted")
  near(r.metrics.flops, r.metrics.base_flops + r.metrics.correction_flops, 0, "flops sum")
  truthy(type(r.metrics.correction_ms) == "number" and r.metrics.correction_ms >= 0, "correction_ms")
  near(r.metrics.density, base.metrics.density, 0, "density of the executed (base) mask")
  truthy(r.metrics.rel_l2 < base.metrics.rel_l2, "delta lowers rel_l2 here (" .. r.metrics.rel_l2 .. " vs " ..
    base.metrics.rel_l2 .. ")")
  -- stacked: the second correction's cost adds to the first's
  local r2 = sl.eval("streaming_llm+delta+delta", prob, {budget = 32})
  truthy(r2.metrics.correction_flops > r.metrics.correction_flops, "stacked correction flops add up")
  near(r2.metrics.base_flops, base.metrics.flops, 0, "stacked base_flops")
end)

test("a corrected method is budget-matched through its base's mask and recorded under its id", function()
  local prob = problem(2, 1, 256, 16, 13, true)
  local cli = require "sparselab.cli"
  local m = sl.methods.get("streaming_llm+delta")
  local knob = cli.solve_density(m, prob, {}, 0.3)
  local kb = cli.solve_density(sl.methods.get("streaming_llm"), prob, {}, 0.3)
  eq(knob, kb, "same knob as the base for the same density")
  local path = os.tmpname()
  os.remove(path)
  local db = sl.store.open(path)
  local run_id = db:begin_run{script = "test_corrections"}
  local r = sl.eval(m, prob, {budget = knob})
  sl.record(db, run_id, r)
  db:finish_run(run_id, "ok")
  local rows = db:query("SELECT method, params_json AS params FROM result")
  eq(#rows, 1, "one row")
  eq(rows[1].method, "streaming_llm+delta_attention", "recorded method")
  truthy(tostring(rows[1].params):find('"gamma":64', 1, true), "gamma in params: " .. tostring(rows[1].params))
  db:close()
  os.remove(path)
end)

test("a sweep point with a base+corr id and a density target runs", function()
  local S = require "sparselab.sweep"
  local m = sl.methods.get("streaming_llm+delta_attention")
  local r = S.run_point{method = m.id, params = sl.registry.resolve(m, {bq = 16, bk = 16}), target = {density = 0.3},
    workload = {name = "synthetic", n = 128, heads = 2, kv_heads = 1, d = 16, seed = 3}}
  truthy(r.metrics and r.metrics.correction_flops and r.metrics.correction_flops > 0, "metrics with correction_flops")
end)

-- ---- delta_attention ------------------------------------------------------

test("delta: a full mask makes delta a no-op (O equals dense to 1e-5)", function()
  local prob = problem(2, 1, 200, 8, 21, true)
  local ref = dense_rows(prob, all_rows(200))
  local r = sl.eval("streaming_llm+delta", prob, {budget = 200, params = {gamma = 8}})
  truthy(max_row_err(r.o, ref, all_rows(200)) < 1e-5, "max err " .. max_row_err(r.o, ref, all_rows(200)))
end)

test("delta: sampled rows and the tail equal dense exactly; other rows follow the card's rule", function()
  for _, case in ipairs{{n = 300, gamma = 16, tail = 128, causal = true}, {n = 200, gamma = 24, tail = 10, causal = true},
      {n = 150, gamma = 7, tail = 0, causal = false}} do
    local prob = problem(2, 1, case.n, 8, 31 + case.n, case.causal)
    local base_id = case.causal and "streaming_llm" or "sliding_window"
    local base = sl.methods.get(base_id)
    local bp = sl.registry.resolve(base, {}, 12)
    if not case.causal then prob.causal = false end
    local bout = base.run(prob, bp)
    local m = sl.correct.delta{gamma = case.gamma, tail = case.tail}(base)
    local out = m.run(prob, sl.registry.resolve(m, {}, 12))
    local s_p, groups, n_tail = layout(case.n, case.gamma, case.tail)
    local ref = dense_rows(prob, all_rows(case.n))
    local o, bo = out.o:totable(), bout.o:totable()
    local sampled = {}
    for g = 0, groups - 1 do sampled[#sampled + 1] = g * case.gamma end
    local tail = {}
    for i = s_p, case.n - 1 do tail[#tail + 1] = i end
    eq(#tail, n_tail, "tail length")
    truthy(max_row_err(out.o, ref, sampled) < 1e-6, "sampled rows: " .. max_row_err(out.o, ref, sampled))
    truthy(max_row_err(out.o, ref, tail) < 1e-6, "tail rows: " .. max_row_err(out.o, ref, tail))
    local lse = out.lse:totable()
    for h = 1, 2 do
      for _, i in ipairs(sampled) do near(lse[h][i + 1], ref[h][i].lse, 1e-5, "dense L at sampled row " .. i) end
    end
    -- every other row: A*[i] + (A[gγ] - A*[gγ]) with A from the float64 reference
    local err = 0
    for h = 1, 2 do
      for i = 0, s_p - 1 do
        local g0 = (i // case.gamma) * case.gamma
        for c = 1, 8 do
          local want = bo[h][i + 1][c] + ref[h][g0].o[c] - bo[h][g0 + 1][c]
          err = math.max(err, math.abs(o[h][i + 1][c] - want))
        end
      end
    end
    truthy(err < 2e-6, "delta rule: max err " .. err)
    eq(out.stats.delta_rows, groups + n_tail, "rows counted")
  end
end)

test("delta: gamma = 1 gives dense, in delta and recompute modes", function()
  local prob = problem(2, 2, 180, 8, 41, true)
  local ref = dense_rows(prob, all_rows(180))
  for _, mode in ipairs{"delta", "recompute"} do
    local r = sl.eval("sliding_window+delta", prob, {budget = 5, params = {gamma = 1, tail = 0, mode = mode}})
    truthy(max_row_err(r.o, ref, all_rows(180)) < 1e-5, mode .. ": " .. max_row_err(r.o, ref, all_rows(180)))
  end
end)

test("delta: recompute writes dense rows only at I; smooth interpolates between groups (independent rule)", function()
  local n, gamma = 260, 20
  local prob = problem(2, 1, n, 8, 51, true)
  local base = sl.methods.get("streaming_llm")
  local bp = sl.registry.resolve(base, {}, 16)
  local bo = base.run(prob, bp).o:totable()
  local ref = dense_rows(prob, all_rows(n))
  local s_p, groups = layout(n, gamma, 0)
  local rec = sl.correct.delta{gamma = gamma, tail = 0, mode = "recompute"}(base)
  local ro = rec.run(prob, sl.registry.resolve(rec, {}, 16)).o:totable()
  local sm = sl.correct.delta{gamma = gamma, tail = 0, smooth = true}(base)
  local so = sm.run(prob, sl.registry.resolve(sm, {}, 16)).o:totable()
  local e_rec, e_sm = 0, 0
  for h = 1, 2 do
    for i = 0, s_p - 1 do
      local g = i // gamma
      local g2 = math.min(g + 1, groups - 1)
      local r = (i % gamma) / gamma
      for c = 1, 8 do
        local want_rec = (i % gamma == 0) and ref[h][i].o[c] or bo[h][i + 1][c]
        e_rec = math.max(e_rec, math.abs(ro[h][i + 1][c] - want_rec))
        local d1 = ref[h][g * gamma].o[c] - bo[h][g * gamma + 1][c]
        local d2 = ref[h][g2 * gamma].o[c] - bo[h][g2 * gamma + 1][c]
        local want_sm = bo[h][i + 1][c] + (1 - r) * d1 + r * d2
        e_sm = math.max(e_sm, math.abs(so[h][i + 1][c] - want_sm))
      end
    end
  end
  truthy(e_rec < 1e-6, "recompute err " .. e_rec)
  truthy(e_sm < 2e-6, "smooth err " .. e_sm)
end)

test("delta: decode offset (n_q < n_k) uses causal limits at the query positions", function()
  local prob = problem(2, 1, 40, 8, 61, true, 150)
  local ref = dense_rows(prob, all_rows(40))
  local r = sl.eval("streaming_llm+delta", prob, {budget = 150, params = {gamma = 4, tail = 0}})
  truthy(max_row_err(r.o, ref, all_rows(40)) < 1e-5, "full mask decode err " .. max_row_err(r.o, ref, all_rows(40)))
  local r2 = sl.eval("streaming_llm+delta", prob, {budget = 8, params = {gamma = 4, tail = 0}})
  truthy(max_row_err(r2.o, ref, {0, 4, 8, 36}) < 1e-6, "sampled decode rows")
end)

test("sl.correct.delta{gamma = 64}(m) works for every method in the registry", function()
  local prob = problem(4, 2, 256, 16, 71, true)
  -- the parameters a method cannot run without (its template)
  local needs = {blindsight = {images = {{16, 96}, {120, 200}}}}
  local n_ok = 0
  for _, id in ipairs(sl.methods.ids()) do
    local m = sl.correct.delta{gamma = 64}(id)
    eq(m.id, id .. "+delta_attention", "id")
    local r = sl.eval(m, prob, {params = needs[id]})
    -- 256 rows, gamma 64: tail 128 rows, sampled rows 0 and 64
    local ref = dense_rows(prob, {0, 64, 128, 255})
    local e = max_row_err(r.o, ref, {0, 64, 128, 255})
    truthy(e < 1e-5, id .. ": sampled/tail rows differ from dense by " .. e)
    truthy(r.metrics.correction_flops > 0, id .. ": correction flops")
    n_ok = n_ok + 1
  end
  truthy(n_ok >= 10, "methods covered: " .. n_ok)
end)

test("delta: the FLOP counter at n = 4096, gamma = 64 matches independent arithmetic; sampled part ≈ dense/64", function()
  local n, d, gamma = 4096, 16, 64
  local prob = problem(1, 1, n, d, 81, true)
  local m = sl.correct.delta{gamma = gamma}("streaming_llm")
  local out = m.run(prob, sl.registry.resolve(m, {bq = 64, bk = 64}, 64))
  -- independent: s_p = 4096 - 128 = 3968, 62 groups; row i sees i + 1 keys
  local sampled_keys, tail_keys = 0, 0
  for g = 0, 61 do sampled_keys = sampled_keys + 64 * g + 1 end
  for i = 3968, 4095 do tail_keys = tail_keys + i + 1 end
  local dense_flops = 4 * d * n * (n + 1) / 2
  local elementwise = d * 3968 -- one subtraction per delta element (62 groups), one add on the other 3906 rows
  near(out.stats.delta_sampled_flops, 4 * d * sampled_keys, 1e-6, "sampled-row FLOPs")
  near(out.stats.delta_tail_flops, 4 * d * tail_keys, 1e-6, "tail FLOPs")
  near(out.stats.correction_flops, 4 * d * (sampled_keys + tail_keys) + elementwise, 1e-6, "correction FLOPs")
  local ratio = out.stats.delta_sampled_flops / dense_flops
  truthy(math.abs(ratio * gamma - 1) < 0.1, "sampled part / dense = " .. ratio .. ", expected ≈ 1/64")
  eq(out.stats.delta_rows, 62 + 128, "dense rows")
end)

H.done()
