-- sparselab.eval — one method on one problem: runs it and the dense
-- reference, measures fidelity (rel_l2, cosine, max_abs, recall from L) and
-- cost (executed FLOPs, median wall time) in the same record, and writes it
-- to the store with its provenance.
local sl = require "sparselab"

local E = {}

local PROBLEM_KEYS = {q = true, k = true, v = true, causal = true, backend = true, phase = true,
  workload = true, workload_params = true, layer = true, head = true, _checked = true, _dense = true,
  state = true, layout = true,
  save_mask = true}   -- decode replays record their executed selection (decode.lua, eval --save-mask)

--- A problem: {q =, k =, v =, causal = true, backend = "cpu", workload = "name", workload_params = {},
--- state = {} (optional: the explicit step state stateful corrections keep and update in place)}
function E.problem(t)
  for key in pairs(t) do
    if not PROBLEM_KEYS[key] then sl.fail("sl.problem: unknown key '%s'", tostring(key)) end
  end
  for _, key in ipairs{"q", "k", "v"} do
    if not t[key] then sl.fail("sl.problem: '%s' is required", key) end
  end
  local qs, ks, vs = t.q:shape(), t.k:shape(), t.v:shape()
  if #qs ~= 3 or #ks ~= 3 or #vs ~= 3 then
    sl.fail("sl.problem: q, k, v must be [heads, tokens, head_dim]; found %d, %d and %d dims", #qs, #ks, #vs)
  end
  if t.layout ~= nil then
    -- a token layout (sparselab.layout, issue 15): its n must be the problem's
    local layout = require "sparselab.layout"
    if not layout.is_layout(t.layout) then sl.fail("sl.problem: layout must be a sparselab.layout object") end
    -- the layout orders the keys; queries are the last n_q of them (decode convention)
    t.layout:check(ks[2], "sl.problem")
  end
  t.causal = t.causal ~= false
  t.backend = t.backend or "cpu"
  t.phase = t.phase or (qs[2] < ks[2] and "decode" or "prefill")
  return t
end

local function median(xs)
  table.sort(xs)
  local n = #xs
  if n % 2 == 1 then return xs[(n + 1) // 2] end
  return (xs[n // 2] + xs[n // 2 + 1]) / 2
end

-- Median wall time of reps runs; with more than one run, one untimed run
-- first, so first-touch costs (page faults, thread start-up) are not timed.
local function timed(reps, f)
  local times, out = {}, nil
  if reps > 1 then out = f() end
  for i = 1, reps do
    local t0 = sl.time()
    out = f()
    times[i] = (sl.time() - t0) * 1e3
  end
  return out, median(times)
end

--- The dense reference of a problem, kept on the problem and reused while
--- its inputs, causality and backend are the same and it was timed with at
--- least as many repetitions.
function E.dense(prob, reps)
  reps = reps or 1
  local c = prob._dense
  if not (c and c.q == prob.q and c.k == prob.k and c.v == prob.v and c.causal == prob.causal and
      c.backend == prob.backend and c.reps >= reps) then
    local dense = sl.methods.get("dense")
    local out, ms = timed(reps, function() return dense.run(prob, {}) end)
    out.time_ms = ms
    prob._dense = {q = prob.q, k = prob.k, v = prob.v, causal = prob.causal, backend = prob.backend, reps = reps,
      out = out}
  end
  return prob._dense.out
end

local TARGETS = {density = true, flops = true, kv_bytes = true}

-- A failed result for a target the knob cannot reach (issue 18): recorded, not dropped, with
-- the target and, parsed from budget.match's message, the reachable range.
local function unreachable(m, prob, opts, target, value, err)
  local qs, ks = prob.q:shape(), prob.k:shape()
  local params = {}
  for k, v in pairs(opts.params or {}) do params[k] = v end
  params["@target"] = {[target] = value}
  local metrics = {["target_" .. target] = value}
  local lo, hi = tostring(err):match("gives [%w_]+ in %[([^,%]]+), ([^%]]+)%]")
  metrics["reachable_" .. target .. "_min"], metrics["reachable_" .. target .. "_max"] = tonumber(lo), tonumber(hi)
  return {method = m.id, params = params, workload = prob.workload or "custom",
    workload_params = prob.workload_params or {}, phase = prob.phase, layer = prob.layer, head = prob.head,
    n_q = qs[2], n_k = ks[2], head_dim = qs[3], heads = qs[1], kv_heads = ks[1], backend = prob.backend,
    metrics = metrics, status = "failed", error = tostring(err)}
end

--- Runs method (id or table) on prob. opts: budget, params, reps (timing
--- repetitions, median reported), or a matched target instead of a budget: density =,
--- flops = or kv_bytes = (the knob solved by sl.budget.match; target_<name> and
--- achieved_<name> are added to the metrics). A target the knob cannot reach gives a result
--- with status "failed", the error (the reachable range) and target_<name>, which sl.record
--- records as a failed row. Returns a result table.
function E.run(method, prob, opts)
  opts = opts or {}
  local target
  for key in pairs(opts) do
    if TARGETS[key] then
      if target then sl.fail("sl.eval: give one target (density, flops or kv_bytes), found %s and %s", target, key) end
      target = key
    elseif key ~= "budget" and key ~= "params" and key ~= "reps" then
      sl.fail("sl.eval: unknown option '%s' (expected budget, params, reps, density, flops, kv_bytes)", tostring(key))
    end
  end
  if target and opts.budget ~= nil then sl.fail("sl.eval: give a budget or a %s target, not both", target) end
  local m = sl.methods.get(method)
  if m.phase == "model" then -- non-attention cards (sparselab.model_recipe, issue 17)
    sl.fail("%s acts on the model, not on an attention problem: %s", m.id, m.model and m.model.how or "see its recipe")
  end
  if type(prob) ~= "table" then sl.fail("sl.eval: expected a problem table, found %s", type(prob)) end
  prob = prob.q and prob._checked and prob or E.problem(prob)
  prob._checked = true
  local match
  if target then
    local ok, res = pcall(sl.budget.match, {method = m, prob = prob, target = target, value = opts[target],
      params = opts.params})
    if not ok then
      if not tostring(res):find("cannot ", 1, true) then error(res, 0) end
      return unreachable(m, prob, opts, target, opts[target], res)
    end
    match = res
  end
  local p = match and match.params or sl.registry.resolve(m, opts.params, opts.budget, prob)
  local reps = opts.reps == nil and 1 or (type(opts.reps) == "number" and math.tointeger(opts.reps))
  if not reps or reps < 1 then sl.fail("sl.eval: reps must be a positive integer, found %s", tostring(opts.reps)) end
  local dense = E.dense(prob, reps)
  local out, ms = timed(reps, function() return m.run(prob, p) end)
  local qs, ks = prob.q:shape(), prob.k:shape()
  local metrics = {
    rel_l2 = sl.metric.rel_l2(out.o, dense.o),
    max_abs = sl.metric.max_abs(out.o, dense.o),
    time_ms = ms,
    dense_time_ms = dense.time_ms,
    dense_flops = dense.stats.flops,
  }
  metrics.cosine_mean, metrics.cosine_min = sl.metric.cosine(out.o, dense.o)
  -- Non-softmax methods (issue 16) return no lse: recall through L does not
  -- apply to them, and none is recorded (rel_l2 and cosine above are their fidelity).
  if out.lse then metrics.recall_mean, metrics.recall_min = sl.metric.recall(out.lse, dense.lse) end
  for k, v in pairs(out.stats or {}) do metrics[k] = v end
  -- A method without an estimator (static patterns, dense) spends no time or
  -- FLOPs estimating: its whole time is execution. A dynamic method
  -- (family "*-estimate") reports its own split; none is invented for it.
  if not tostring(m.family):find("%-estimate$") then
    if metrics.estimate_ms == nil then metrics.estimate_ms = 0 end
    if metrics.execute_ms == nil then metrics.execute_ms = ms end
    if metrics.estimator_flops == nil then metrics.estimator_flops = 0 end
  end
  if metrics.kv_bytes == nil and out.mask and sl.mask.is_mask(out.mask) then
    metrics.kv_bytes = sl.budget.kv_bytes(out.mask, prob)
  end
  if metrics.flops and dense.stats.flops > 0 then metrics.flops_ratio = metrics.flops / dense.stats.flops end
  if ms > 0 then metrics.speedup = dense.time_ms / ms end
  if match then sl.budget.metrics(match, metrics) end
  return {
    method = m.id, params = p, budget = m.knob and p[m.knob] or nil,
    workload = prob.workload or "custom", workload_params = prob.workload_params or {},
    phase = prob.phase, layer = prob.layer, head = prob.head,
    n_q = qs[2], n_k = ks[2], head_dim = qs[3], heads = qs[1], kv_heads = ks[1],
    backend = prob.backend, metrics = metrics, o = out.o, lse = out.lse, mask = out.mask,
    semantic_mask = out.semantic_mask, -- the paper's mask where the method's executed mask differs
    steps = out.steps, dense_o = dense.o, dense_lse = dense.lse,
    -- decode replays (issue 13): the executed selection u8 [H, n_q, n_k] when prob.save_mask, or a dense run
    selection = out.selection, dense_run = out.dense_run,
  }
end

--- Records a result under run_id in db; returns the result id.
function E.record(db, run_id, r)
  local params = {}
  for k, v in pairs(r.params) do params[k] = v end
  return db:record{
    run_id = run_id, method = r.method, params = params, workload = r.workload,
    workload_params = r.workload_params, phase = r.phase, layer = r.layer, head = r.head,
    n_q = r.n_q, n_k = r.n_k, head_dim = r.head_dim, heads = r.heads, kv_heads = r.kv_heads,
    backend = r.backend, budget = r.budget, metrics = r.metrics, status = r.status, error = r.error,
  }
end

--- Opens the database an experiment writes to and starts its run with
--- provenance. o = {db = "results.db", script =, seed =, config = table}.
--- Returns the store and the run id; the run is marked finished by
--- db:finish_run(run_id, "ok") (done for `sparselab run` scripts at exit).
function E.experiment(o)
  o = o or {}
  local db = sl.store.open(o.db or "results.db")
  local script = o.script or (arg and arg[0]) or "repl"
  local sha
  local f = io.open(script, "rb")
  if f then sha = sl.sha256(f:read("a")); f:close() end
  local argv = {}
  for i = 1, #(arg or {}) do argv[i] = arg[i] end
  local run_id = db:begin_run{script = script, argv = argv, seed = o.seed,
    config = o.config and sl.json_encode(o.config) or nil, script_sha256 = sha}
  E.open_runs[#E.open_runs + 1] = {db = db, run_id = run_id}
  return db, run_id
end

--- Runs started by sl.experiment in this Lua state, so that `sparselab run`
--- can mark those a failing script left running as failed.
E.open_runs = {}

function E.close_open_runs(status)
  for _, r in ipairs(E.open_runs) do
    pcall(function()
      r.db:query("UPDATE run SET status = ?, finished = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') " ..
        "WHERE id = ? AND status = 'running'", status, r.run_id)
    end)
  end
  E.open_runs = {}
end

return E
