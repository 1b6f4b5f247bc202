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

test("sl.budget.match: density matches the base's knob; a flops target pays for the correction", function()
  local prob = problem(2, 1, 512, 16, 17, true)
  local mc = sl.budget.match{method = "streaming_llm+delta", prob = prob, target = "density", value = 0.2}
  local mb = sl.budget.match{method = "streaming_llm", prob = prob, target = "density", value = 0.2}
  eq(mc.value, mb.value, "same knob at the same density")
  local dense_flops = sl.op_flops("attn.dense", prob.q, prob.k, prob.v, {causal = true})
  local fc = sl.budget.match{method = "streaming_llm+delta", prob = prob, target = "flops", value = 0.95 * dense_flops}
  local fb = sl.budget.match{method = "streaming_llm", prob = prob, target = "flops", value = 0.95 * dense_flops}
  truthy(fc.value < fb.value, "the corrected method affords a smaller window at equal FLOPs (" .. fc.value .. " < " ..
    fb.value .. ")")
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

test("delta: a sliding-window base keeps its rows where the window covers the group's sample (Δ = 0)", function()
  local prob = problem(2, 1, 300, 8, 37, true)
  local base = sl.methods.get("streaming_llm")
  local bp = sl.registry.resolve(base, {n_init = 0}, 100)
  local bo = base.run(prob, bp).o:totable()
  local m = sl.correct.delta{gamma = 16}(base)
  local o = m.run(prob, sl.registry.resolve(m, {n_init = 0}, 100)).o:totable()
  -- samples 0, 16, ..., 96 see at most 97 <= 100 keys: A* = A there, so rows 0 .. 111 are the base's rows
  local e = 0
  for h = 1, 2 do
    for i = 1, 112 do
      for c = 1, 8 do e = math.max(e, math.abs(o[h][i][c] - bo[h][i][c])) end
    end
  end
  truthy(e < 1e-6, "rows of zero-delta groups: " .. e)
  local moved = 0
  for c = 1, 8 do moved = math.max(moved, math.abs(o[1][130][c] - bo[1][130][c])) end
  truthy(moved > 1e-3, "a group past the window moves")
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
  local gate = os.tmpname() .. ".safetensors" -- seer_attention needs AttnGate weights (random ones here)
  sl.save(gate, {["model.layers.0.self_attn.attn_gate.mask_linear_k.weight"] = sl.randn({2, 48, 16}, {seed = 3})})
  local needs = {blindsight = {images = {{16, 96}, {120, 200}}}, seer_attention = {gate = gate}}
  local n_ok = 0
  for _, id in ipairs(sl.methods.ids()) do
    local base = sl.methods.get(id)
    -- video methods need a layout and a bidirectional problem (issue 15); non-attention cards
    -- (phase "model") run on the model, not on attention problems
    if base.needs_layout or base.noncausal_only or base.phase == "model" then goto continue end
    local m = sl.correct.delta{gamma = 64}(id)
    eq(m.id, id .. "+delta_attention", "id")
    -- non-softmax methods (issue 16) return no lse: an LSE-based correction
    -- does not apply to them, and delta says so
    if sl.methods.get(id).family == "non-softmax" then
      H.raises(function() sl.eval(m, prob, {}) end, "returned no lse", id)
      goto continue
    end
    local r = sl.eval(m, prob, {params = needs[id]})
    -- 256 rows, gamma 64: tail 128 rows, sampled rows 0 and 64
    local ref = dense_rows(prob, {0, 64, 128, 255})
    local e = max_row_err(r.o, ref, {0, 64, 128, 255})
    truthy(e < 1e-5, id .. ": sampled/tail rows differ from dense by " .. e)
    truthy(r.metrics.correction_flops > 0, id .. ": correction flops")
    n_ok = n_ok + 1
    ::continue::
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

-- ---- every correction ---------------------------------------------------

test("with a full mask every correction is a no-op (O equals dense, 1e-5); lepe adds exactly its local term", function()
  local n = 96
  local prob = problem(4, 2, n, 8, 91, true)
  local ref = dense_rows(prob, all_rows(n))
  for _, cid in ipairs(sl.correct.ids()) do
    local m = sl.correct.apply("streaming_llm", cid)
    local r = sl.eval(m, prob, {budget = n, params = {bq = 16, bk = 16}})
    if cid == "lepe" then
      -- dense + the mean of v over the 5 positions ending at i (zero padded), float64 here
      local v = prob.v:totable()
      local want = {}
      for h = 1, 4 do
        want[h] = {}
        for i = 0, n - 1 do
          local o = {}
          for c = 1, 8 do
            local acc = 0
            for j = math.max(0, i - 4), i do acc = acc + v[(h - 1) // 2 + 1][j + 1][c] end
            o[c] = ref[h][i].o[c] + acc / 5
          end
          want[h][i] = {o = o}
        end
      end
      local e = max_row_err(r.o, want, all_rows(n))
      truthy(e < 1e-5, "lepe: dense + local mean, err " .. e)
      local r0 = sl.eval(m, prob, {budget = n, params = {bq = 16, bk = 16, alpha = 0}})
      truthy(max_row_err(r0.o, ref, all_rows(n)) < 1e-5, "lepe alpha = 0 is a no-op")
    else
      local e = max_row_err(r.o, ref, all_rows(n))
      truthy(e < 1e-5, cid .. ": full mask differs from dense by " .. e)
      near(r.metrics.recall_mean, 1, 1e-5, cid .. ": L stays the dense L")
    end
    truthy(r.metrics.correction_flops > 0, cid .. ": correction flops")
  end
  truthy(#sl.correct.ids() >= 5, "corrections: " .. table.concat(sl.correct.ids(), ", "))
end)

-- ---- rectified_spaattn ------------------------------------------------------

-- A base whose executed mask is whole blocks of a window (block-aligned):
-- what the rectification's exactness needs.
local block_window = {id = "toy_block_window", title = "whole blocks of a window", family = "static-pattern",
  phase = "prefill", knob = "w", params = {w = {default = 12, min = 1, int = true}, bq = {default = 8, int = true},
    bk = {default = 8, int = true}},
  run = function(prob, p)
    local n = prob.q:shape()[2]
    local m = sl.mask.window(p.w):materialize{n_q = n, n_k = prob.k:shape()[2], bq = p.bq, bk = p.bk, n_heads = 1}
    m = m:coarsen{bq = p.bq, bk = p.bk}
    local o, lse = sl.attn.block_sparse(prob.q, prob.k, prob.v, m)
    return {o = o, lse = lse, mask = m, stats = {flops = 0, density = m:density(false)}}
  end}

-- q, k, v with rows constant within blocks of b (each block a fresh random row)
local function block_constant(hq, hkv, n, d, b, seed)
  local function t(h, s)
    local x = sl.randn({h, n, d}, {seed = s}):totable()
    for hh = 1, h do
      for i = 1, n do x[hh][i] = x[hh][((i - 1) // b) * b + 1] end
    end
    return sl.tensor(x)
  end
  return t(hq, seed), t(hkv, seed + 1), sl.randn({hkv, n, d}, {seed = seed + 2})
end

test("rectify: block size 1 reproduces dense for any mask (causal), block-constant Q and K do (bidirectional)", function()
  local prob = problem(2, 1, 48, 8, 101, true)
  local ref = dense_rows(prob, all_rows(48))
  local base = sl.eval("streaming_llm", prob, {budget = 6, params = {bq = 1, bk = 1, n_init = 2}})
  truthy(max_row_err(base.o, ref, all_rows(48)) > 0.05, "the base drops mass")
  local r = sl.eval("streaming_llm+rectify", prob, {budget = 6, params = {bq = 1, bk = 1, n_init = 2}})
  truthy(max_row_err(r.o, ref, all_rows(48)) < 1e-5, "B = 1: " .. max_row_err(r.o, ref, all_rows(48)))
  local q, k, v = block_constant(2, 1, 48, 8, 8, 111)
  local p2 = sl.problem{q = q, k = k, v = v, causal = false}
  local ref2 = dense_rows(p2, all_rows(48))
  local m = sl.correct.rectify{}(block_window)
  local b2 = sl.eval(block_window, p2)
  truthy(max_row_err(b2.o, ref2, all_rows(48)) > 0.05, "the block base drops mass")
  local r2 = sl.eval(m, p2)
  truthy(max_row_err(r2.o, ref2, all_rows(48)) < 1e-5, "block-constant: " .. max_row_err(r2.o, ref2, all_rows(48)))
  truthy(r2.metrics.rectify_trusted_blocks > 0, "GAPR trusts the exact pooled blocks")
end)

test("rectify: R matches the card's IPAR/GAPR formulas computed here; weights sum to one", function()
  local n, d, b, scale = 24, 4, 4, 0.5
  -- block means with a little noise per row: some blocks trusted, some not
  local q0, k0 = sl.randn({1, n, d}, {seed = 121}):totable(), sl.randn({1, n, d}, {seed = 122}):totable()
  for i = 1, n do
    for c = 1, d do
      q0[1][i][c] = q0[1][((i - 1) // b) * b + 1][c] * 2 + 0.2 * q0[1][i][c]
      k0[1][i][c] = k0[1][((i - 1) // b) * b + 1][c] * 2 + 0.2 * k0[1][i][c]
    end
  end
  local q, k, v = sl.tensor(q0), sl.tensor(k0), sl.randn({1, n, d}, {seed = 123})
  local mask = sl.mask.window(6):materialize{n_q = n, n_k = n, bq = b, bk = b, n_heads = 1}:coarsen{bq = b, bk = b}
  local os = sl.attn.block_sparse(q, k, v, mask)
  local o, r, restored, trusted = sl.correct.rectify(q, k, v, mask, os, {causal = false, scale = scale})
  local bits = sl.mask_c and nil
  local inm = {}
  local mbits = mask:to_bits():totable()[1]
  local nb = n // b
  local function mean(x, I)
    local m, e = {}, {}
    for c = 1, d do
      local s = 0
      for i = I * b + 1, I * b + b do s = s + x[1][i][c] end
      m[c] = s / b
      local a = 0
      for i = I * b + 1, I * b + b do a = a + math.abs(x[1][i][c] - m[c]) end
      e[c] = a / b
    end
    return m, e
  end
  local function dotp(a, c2) local s = 0 for c = 1, d do s = s + a[c] * c2[c] end return s end
  local rt, rest_t = r:totable()[1], restored:totable()[1]
  local n_restored_blocks = 0
  for I = 0, nb - 1 do
    local qm, qe = mean(q0, I)
    local w, inC, z = {}, {}, 0
    for J = 0, nb - 1 do
      local km, ke = mean(k0, J)
      local raw = dotp(qm, km)
      w[J] = b * math.exp(scale * raw)
      z = z + w[J]
      local kept = false
      for i = I * b + 1, I * b + b do for j = J * b + 1, J * b + b do kept = kept or mbits[i][j] ~= 0 end end
      local ng = not (math.abs(raw) > math.abs(dotp(qe, km)) + math.abs(dotp(qm, ke)))
      inC[J] = kept or ng
      if not inC[J] then n_restored_blocks = n_restored_blocks + 1 end
    end
    local R = 0
    for J = 0, nb - 1 do if inC[J] then R = R + w[J] / z end end
    for i = I * b + 1, I * b + b do
      near(rt[i], R, 1e-5, "R of row " .. i)
      near(rt[i] + rest_t[i], 1, 1e-6, "R + restored of row " .. i)
    end
  end
  truthy(n_restored_blocks > 0, "some dropped block is trusted here")
  local tsum = trusted:stats()
  near(tsum, n_restored_blocks, 0, "trusted count")
end)

test("rectify: on iid noise GAPR trusts (almost) nothing; without GAPR every dropped block is restored", function()
  local prob = problem(2, 1, 128, 16, 131, true)
  local base = sl.eval("streaming_llm", prob, {budget = 32, params = {bq = 16, bk = 16}})
  local r = sl.eval("streaming_llm+rectify", prob, {budget = 32, params = {bq = 16, bk = 16}})
  local all = sl.eval("streaming_llm+rectify", prob, {budget = 32, params = {bq = 16, bk = 16, gapr = false}})
  -- query block I keeps block 0 (sinks) and I-2 .. I (window 32): it drops blocks 1 .. I-3,
  -- I - 3 of them for I = 4..7: 10 per head, 2 heads
  near(all.metrics.rectify_trusted_blocks, 20, 0, "without GAPR every dropped block")
  truthy(r.metrics.rectify_trusted_blocks <= 0.2 * 20, "GAPR trusts few: " .. r.metrics.rectify_trusted_blocks)
  truthy(sl.metric.max_abs(r.o, base.o) < sl.metric.max_abs(all.o, base.o), "GAPR changes less than restoring all")
  raises(function() sl.eval("dense+rectify", prob) end, "returned no block mask")
end)

-- ---- top_theta_compensation -----------------------------------------------

test("compensate: exact SDC (c = 1) gives the dense L; with constant V rows SDC + VMC gives dense", function()
  local prob = problem(2, 1, 80, 8, 141, true)
  local dense = sl.eval("dense", prob)
  local r = sl.eval("streaming_llm+compensate", prob, {budget = 10, params = {vmc = false}})
  near(r.metrics.recall_min, 1, 1e-5, "L = dense L on every row")
  local base = sl.eval("streaming_llm", prob, {budget = 10})
  truthy(base.metrics.recall_min < 0.9, "the base drops mass")
  -- V with every key row equal: the lost mass times the running mean is exact
  local vt = prob.v:totable()
  for i = 2, 80 do vt[1][i] = vt[1][1] end
  local p2 = sl.problem{q = prob.q, k = prob.k, v = sl.tensor(vt)}
  local d2 = sl.eval("dense", p2)
  local r2 = sl.eval("streaming_llm+compensate", p2, {budget = 10})
  truthy(sl.metric.max_abs(r2.o, d2.o) < 1e-5, "constant V: " .. sl.metric.max_abs(r2.o, d2.o))
  -- rows of length <= min_len are untouched
  local r3 = sl.eval("streaming_llm+compensate", prob, {budget = 10, params = {min_len = 80}})
  near(sl.metric.max_abs(r3.o, base.o), 0, 0, "min_len = n leaves every row")
end)

-- ---- smooth_k ---------------------------------------------------------------

test("smooth_k: a static pattern's output and L are unchanged", function()
  local prob = problem(2, 1, 100, 8, 151, true)
  local base = sl.eval("streaming_llm", prob, {budget = 20})
  local r = sl.eval("streaming_llm+smooth_k", prob, {budget = 20})
  truthy(sl.metric.max_abs(r.o, base.o) < 1e-5, "O unchanged")
  truthy(sl.metric.max_abs(r.lse, base.lse) < 1e-4, "L moved back: " .. sl.metric.max_abs(r.lse, base.lse))
end)

H.done()
