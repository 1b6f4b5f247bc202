-- sparselab.cli — the subcommands of the `sparselab` program (DESIGN §7):
-- run, methods, ops, eval, query, bench. User errors are raised without a
-- position (error(msg, 0)) so the host prints one line and exits 1.
local sl = require "sparselab"
local report = require "sparselab.report"

local C = {}

local function out(s) io.stdout:write(s, "\n") end

local commands = require "sparselab.cli.commands"

-- Parses argv[first..] against a command's declaration (sparselab/cli/commands.lua): spec is
-- the command's name (or, for callers of the old form, a table {flag = "value"|"flag"|"multi"},
-- whose every option must be declared for the command argv[1]). --name V, --name=V, -x V for
-- an option with a short name; "--" ends the options.
local function parse(argv, first, spec, positional_names)
  local cmd = type(spec) == "string" and spec or argv[1]
  local decl, short = commands.spec(cmd)
  if type(spec) == "table" then
    for name in pairs(spec) do
      if not decl or not decl[name] then
        error(string.format("sparselab %s: option --%s is not declared in sparselab/cli/commands.lua",
          tostring(cmd), name))
      end
    end
  end
  decl = decl or (type(spec) == "table" and spec) or {}
  short = short or {}
  local c = commands.by_name[cmd]
  local o, pos = {}, {}
  local i = first
  local only_pos = false
  while i <= #argv do
    local a = argv[i]
    if only_pos or a == "-" or not a:match("^%-.") then
      pos[#pos + 1] = a
    elseif a == "--" then
      only_pos = true
    else
      local name, inline
      if a:sub(1, 2) == "--" then
        name, inline = a:match("^%-%-([%w_-]+)=(.*)$")
        name = name or a:sub(3)
      else
        local letter = a:sub(2, 2)
        name = short[letter]
        if not name then sl.fail("unknown option %s (sparselab %s --help lists the options)", a, tostring(cmd)) end
        if #a > 2 then inline = a:sub(3) end
      end
      local kind = decl[name]
      if not kind then sl.fail("unknown option --%s (sparselab %s --help lists the options)", name, tostring(cmd)) end
      if kind == "flag" then
        if inline then sl.fail("option --%s takes no value", name) end
        o[name] = true
      else
        local v = inline
        if not v then
          i = i + 1
          v = argv[i]
          if v == nil then sl.fail("option --%s needs a value", name) end
        end
        if kind == "multi" then
          o[name] = o[name] or {}
          table.insert(o[name], v)
        else
          o[name] = v
        end
      end
    end
    i = i + 1
  end
  local max = c and c.max_pos
  if positional_names and not c then max = #positional_names end
  if max and #pos > max then
    sl.fail("unexpected argument '%s' (%s)", pos[max + 1], c and commands.usage(cmd) or "sparselab help")
  end
  return o, pos
end

local table_of

local function value_of(s)
  if s == "true" then return true elseif s == "false" then return false end
  if s:match("^%s*{") then return table_of(s) end
  return tonumber(s) or s
end

-- A list value of --param K={...}: nested braces holding numbers, true/false
-- and bare or "quoted" words, e.g. images={{10,45},{50,90}} or
-- categories={sink,intra}. Read by hand: nothing of it is run as code.
table_of = function(s)
  local pos = 1
  local function skip() pos = s:find("%S", pos) or #s + 1 end
  local function bad(what) sl.fail("--param: expected %s at character %d of '%s'", what, pos, s) end
  local function item()
    skip()
    if s:sub(pos, pos) == "{" then
      pos = pos + 1
      local t = {}
      skip()
      if s:sub(pos, pos) == "}" then pos = pos + 1; return t end
      while true do
        t[#t + 1] = item()
        skip()
        local c = s:sub(pos, pos)
        if c ~= "," and c ~= "}" then bad("',' or '}'") end
        pos = pos + 1
        if c == "}" then return t end
      end
    end
    local q = s:match('^"([^"]*)"', pos)
    if q then pos = pos + #q + 2; return q end
    local w = s:match("^[%w_%.%-%+]+", pos)
    if not w then bad("a number, a word or '{'") end
    pos = pos + #w
    return value_of(w)
  end
  local v = item()
  skip()
  if pos <= #s then bad("the end") end
  return v
end

-- The method parameters of --param K=V options and the number of --budget.
local function method_args(o)
  local params = {}
  for _, kv in ipairs(o.param or {}) do
    local key, val = kv:match("^([%w_]+)=(.*)$")
    if not key then sl.fail("--param expects K=V, found '%s'", kv) end
    params[key] = value_of(val)
  end
  local budget = o.budget and tonumber(o.budget)
  if o.budget and not budget then sl.fail("--budget expects a number, found '%s'", o.budget) end
  return params, budget
end

-- ---- run ------------------------------------------------------------------

function C.run(argv)
  local script = argv[2]
  if not script then sl.fail("usage: sparselab run SCRIPT.lua [ARGS]") end
  local chunk, err = loadfile(script, "t")
  if not chunk then sl.fail("%s", err) end
  local args = {[0] = script}
  for i = 3, #argv do args[#args + 1] = argv[i] end
  _G.arg = args
  -- A script that fails leaves its runs marked failed, not running; what it
  -- committed before the error stays in the database.
  local debug_on = os.getenv("SPARSELAB_DEBUG") == "1"
  local ok, err = xpcall(chunk, function(e) return debug_on and debug.traceback(e, 2) or e end, table.unpack(args))
  require("sparselab.eval").close_open_runs(ok and "ok" or "failed")
  if not ok then error(err, 0) end
end

-- ---- methods / ops ------------------------------------------------------

-- methods --json: the card checks a test states (sparselab.tested_checks:
-- tests in ./tests/lua named after the method or correction), as
-- checks_tested ({check, test}), checks_untested and tests (their count);
-- nothing is added where ./tests/lua holds no tests.
local function add_tested_checks(r, names)
  if #names == 0 then return end
  local item = r.kind == "correction" and sl.correct.get(r.id) or sl.methods.get(r.id)
  -- tests may be named after the id or an alias (corrections: delta for delta_attention)
  local m, n_tests = require("sparselab.tested_checks").match(r.id, item.checks, names)
  for _, alias in ipairs(item.aliases or {}) do
    local ma, na = require("sparselab.tested_checks").match(alias, item.checks, names)
    n_tests = n_tests + na
    for i, x in ipairs(ma) do if not m[i].test then m[i] = x end end
  end
  r.tests, r.checks_tested, r.checks_untested = n_tests, {}, {}
  for _, x in ipairs(m) do
    if x.test then
      r.checks_tested[#r.checks_tested + 1] = {check = x.check, test = x.test}
    else
      r.checks_untested[#r.checks_untested + 1] = x.check
    end
  end
end

-- sparselab methods ID: one method's card fields and parameters (issue 18: block-size names)
local function method_detail(id, json)
  local m = sl.methods.get(id)
  local rows, names = {}, {}
  for k in pairs(m.params) do names[#names + 1] = k end
  table.sort(names)
  for _, k in ipairs(names) do
    local spec = m.params[k]
    rows[#rows + 1] = {param = k, default = spec.default, min = spec.min, max = spec.max,
      knob = k == m.knob and "knob" or "", doc = spec.doc or ""}
  end
  local blocks = sl.registry.block_doc(m)
  if json then
    out(sl.json_encode{id = m.id, title = m.title, card = m.card, family = m.family, phase = m.phase, knob = m.knob,
      params = rows, block_sizes = blocks})
    return
  end
  out(string.format("%s — %s\nfamily %s, phase %s, knob %s, backends %s", m.id, m.title, m.family, m.phase,
    tostring(m.knob or "-"), table.concat(sl.methods.backends(m), ",")))
  out(report.table(rows, {"param", "default", "min", "max", "knob", "doc"}))
  if blocks then out("block sizes: " .. blocks) end
end

function C.methods(argv)
  local o, pos = parse(argv, 2, "methods")
  if pos and pos[1] then return method_detail(pos[1], o.json) end
  local rows = {}
  for _, id in ipairs(sl.methods.ids()) do
    local m = sl.methods.get(id)
    rows[#rows + 1] = {kind = "method", id = m.id, title = m.title, card = m.card or "", family = m.family,
      phase = m.phase, knob = m.knob or "", knob_direction = m.knob and (m.knob_direction or 1) or "",
      backends = table.concat(sl.methods.backends(m), ","),
      checks = m.checks and #m.checks or 0,
      -- what a caller needs to run it (mem_sweep.sh): a video layout, no
      -- causal problem, a benchmark workload, inputs without defaults
      needs_layout = m.needs_layout or nil, noncausal_only = m.noncausal_only or nil,
      workload = m.workload, requires = m.requires and table.concat(m.requires, ",") or nil}
  end
  -- corrections (sl.correct): any method takes them (eval --correct ID,
  -- or the method id base+ID); listed with kind = "correction"
  for _, id in ipairs(sl.correct.ids()) do
    local c = sl.correct.get(id)
    rows[#rows + 1] = {kind = "correction", id = c.id, title = c.title, card = c.card or "", family = "correction",
      phase = c.phase or "both", knob = "", backends = table.concat(sl.methods.backends(c), ","),
      checks = c.checks and #c.checks or 0, aliases = table.concat(c.aliases or {}, ",")}
  end
  local cols = {"id", "family", "phase", "knob", "knob_direction", "backends", "checks", "title"}
  if o.json then
    local test_names = require("sparselab.tested_checks").test_names("tests/lua")
    for _, r in ipairs(rows) do
      add_tested_checks(r, test_names)
      local b = {}
      for name in r.backends:gmatch("[^,]+") do b[#b + 1] = name end
      r.backends = b
      if r.requires then
        local q = {}
        for name in r.requires:gmatch("[^,]+") do q[#q + 1] = name end
        r.requires = q
      end
      if r.aliases then
        local a = {}
        for name in r.aliases:gmatch("[^,]+") do a[#a + 1] = name end
        r.aliases = a
      end
      out(sl.json_encode(r))
    end
  else
    out(report.table(rows, cols))
  end
end

function C.ops(argv)
  local o = parse(argv, 2, "ops")
  local rows, bnames = {}, {}
  for _, b in ipairs(sl.backends()) do bnames[#bnames + 1] = b.name end
  for _, op in ipairs(sl.ops()) do
    local r = {op = op.name, inputs = op.inputs, outputs = op.outputs}
    for _, b in ipairs(sl.backends()) do
      r[b.name] = op.backends[b.name] and (b.available and "yes" or "built, unavailable") or "-"
    end
    if o.json then
      local params = {}
      for i, p in ipairs(op.params) do params[i] = p end
      out(sl.json_encode{op = op.name, inputs = op.inputs, outputs = op.outputs, doc = op.doc,
        params = params, backends = op.backends, dtypes = op.dtypes})
    else
      rows[#rows + 1] = r
    end
  end
  if not o.json then
    local cols = {"op"}
    for _, b in ipairs(bnames) do cols[#cols + 1] = b end
    cols[#cols + 1] = "inputs"
    cols[#cols + 1] = "outputs"
    out(report.table(rows, cols))
  end
end

-- ---- eval ---------------------------------------------------------------

-- q, k, v of a --qkv file (sparselab/qkv.lua: PyTorch names, [B, H, N, D]); the batch element
-- `index` (1-based) of a batch, and the batch size.
local function load_qkv(path, names, index)
  local list = require("sparselab.qkv").load(path, names)
  local e = list[index or 1]
  if not e then sl.fail("%s: batch element %s of %d", path, tostring(index), #list) end
  return e.q, e.k, e.v, #list, e.batch
end

-- FILE.ext -> FILE_b<i>.ext (one output per batch element)
local function batch_path(p, b)
  local stem, ext = p:match("^(.*)(%.[^./]+)$")
  return (stem or p) .. "_b" .. b .. (ext or "")
end

-- --workload synthetic[,n=2048,heads=8,kv_heads=2,d=64,seed=1,...]
local function load_workload(spec)
  local name, rest = spec:match("^([%w_]+),?(.*)$")
  if name == "video" then return sl.layout.video_workload(rest) end
  if name ~= "synthetic" then
    sl.fail("unknown workload '%s' (available: synthetic[,n=..,heads=..,kv_heads=..,d=..,seed=..], "
      .. "video[,frames=..,height=..,width=..,text=..])", spec)
  end
  local p = {n = 1024, heads = 8, kv_heads = 2, d = 64, seed = 1}
  local INTS = {n = true, heads = true, kv_heads = true, d = true, seed = true, n_sink = true, needles = true}
  for kv in rest:gmatch("[^,]+") do
    local k, v = kv:match("^([%w_]+)=(.+)$")
    if not k then sl.fail("workload option '%s' is not KEY=VALUE", kv) end
    local x = tonumber(v)
    if not x or (INTS[k] and not math.tointeger(x)) then
      sl.fail("workload option %s expects %s, found '%s'", k, INTS[k] and "an integer" or "a number", v)
    end
    p[k] = INTS[k] and math.tointeger(x) or x
  end
  local q, k, v = sl.synthetic(p)
  return q, k, v, p
end


local TARGET_FLAGS = {density = "density", flops = "flops", ["kv-bytes"] = "kv_bytes"}

function C.eval(argv)
  local o, pos = parse(argv, 2, "eval")
  if o["save-mask"] and not o.out then sl.fail("--save-mask writes into the --out file: give --out FILE too") end
  local id = pos[1]
  if not id then sl.fail("usage: sparselab eval METHOD --qkv FILE [options] (sparselab eval --help)") end
  local m = sl.methods.get(id)
  for _, spec in ipairs(o.correct or {}) do m = C.corrected(m, spec) end
  if o.qkv and o.workload then sl.fail("give --qkv or --workload, not both") end
  local q, k, v, wl, wp, layout
  if o.qkv then
    local index = o["batch-index"] and math.tointeger(tonumber(o["batch-index"]))
    local nb, batch
    q, k, v, nb, batch = load_qkv(o.qkv, o.names, index and index + 1)
    if nb > 1 and not index then
      -- a batch: each element evaluated (and recorded) on its own, outputs suffixed _b<i>
      for b = 0, nb - 1 do
        local a = {}
        for i, x in ipairs(argv) do a[i] = x end
        a[#a + 1] = "--batch-index"
        a[#a + 1] = tostring(b)
        C.eval(a)
      end
      return
    end
    wl, wp = "qkv:" .. o.qkv, {batch = batch}
    if batch then
      if o.out then o.out = batch_path(o.out, batch) end
      if o["mask-png"] then o["mask-png"] = batch_path(o["mask-png"], batch) end
    end
  else
    q, k, v, wp, layout = load_workload(o.workload or "synthetic")
    wl = layout and "video" or "synthetic"
  end
  if o.layout then
    if layout then sl.fail("--layout is for --qkv tensors; the video workload has its own layout") end
    layout = sl.layout.parse(o.layout)
  end
  local replay_state
  if o.steps then
    -- decode replay: the last S rows become decode steps through the cache
    local S = tonumber(o.steps) and math.tointeger(tonumber(o.steps))
    local n = q:shape()[2]
    if not S or S < 1 or S >= n then
      sl.fail("--steps expects an integer in [1, %d) (the rows decoded after the prefix), found '%s'", n, o.steps)
    end
    if n ~= k:shape()[2] then sl.fail("--steps needs q with as many rows as k (a captured prefill), found %d and %d", n, k:shape()[2]) end
    -- the prefix's queries go with the problem, as the model runner's prefill
    -- hands them over (decode.prefill {q =}): SnapKV-style methods (snapkv,
    -- ada_snapkv, sparsemm, zipvl) score the cache with the last prompt rows
    -- (not with --correct: flashblock / re_ttention keep their step state in
    -- problem.state, and --reps would then turn into cache hits)
    local prompt_q
    q, prompt_q = require("sparselab.decode").steps_split(q, S)
    if not o.correct then replay_state = {obs_q = prompt_q} end
    wp.steps = S
  end
  local params, budget = method_args(o)
  local reps = 1
  if o.reps then
    reps = tonumber(o.reps) and math.tointeger(tonumber(o.reps))
    if not reps or reps < 1 then sl.fail("--reps expects a positive integer, found '%s'", o.reps) end
  end
  if o["no-causal"] and m.causal_only then
    sl.fail("%s is a causal method; --no-causal would compare it with non-causal dense attention", m.id)
  end
  if o["save-mask"] then require("sparselab.savemask").check(q:shape()[1], q:shape()[2], k:shape()[2]) end
  local prob = sl.problem{q = q, k = k, v = v, causal = not o["no-causal"] and wl ~= "video",
    backend = o.backend or "cpu", workload = wl, workload_params = wp, layout = layout,
    state = replay_state, save_mask = o["save-mask"] or nil}   -- decode replays record their executed selection only when asked
  local given = o.budget and {"--budget"} or {}
  local target, tvalue
  for flag, name in pairs(TARGET_FLAGS) do
    if o[flag] then
      given[#given + 1] = "--" .. flag
      target = name
      tvalue = tonumber(o[flag])
      if not tvalue or tvalue <= 0 or tvalue ~= tvalue or tvalue == math.huge or (name == "density" and tvalue > 1) then
        sl.fail("--%s expects a number in %s, found '%s'", flag, name == "density" and "(0, 1]" or "(0, inf)", o[flag])
      end
    end
  end
  if #given > 1 then table.sort(given); sl.fail("give one of %s, not several", table.concat(given, ", ")) end
  local match
  if target then
    match = sl.budget.match{method = m, prob = prob, target = target, value = tvalue, params = params}
    budget = match.value
  end
  local r = sl.eval(m, prob, {budget = budget, params = params, reps = reps})
  if match then sl.budget.metrics(match, r.metrics) end
  if o.out then
    local t = {o = r.o, lse = r.lse}
    if o["save-mask"] then t.mask = require("sparselab.savemask").bits(r, m, not o["no-causal"]) end
    sl.save(o.out, t)
  end
  if o["mask-png"] then C.mask_png(r, prob, o["mask-png"]) end
  if o.db then
    local db = sl.store.open(o.db)
    local run_id = db:begin_run{script = "sparselab eval", argv = argv}
    sl.record(db, run_id, r)
    db:finish_run(run_id, "ok")
    db:close()
  end
  local flat = {method = r.method, budget = r.budget, workload = r.workload, backend = r.backend,
    n_q = r.n_q, n_k = r.n_k, heads = r.heads, kv_heads = r.kv_heads, head_dim = r.head_dim, params = r.params}
  for key, val in pairs(r.metrics) do flat[key] = val end
  local per_step = o.steps and require("sparselab.decode").per_step(r.o, r.lse, r.dense_o, r.dense_lse, r.steps)
  flat.per_step = per_step
  if o.json then
    out(sl.json_encode(flat))
    return
  end
  out(string.format("%s on %s: q %dx%dx%d, k/v %dx%dx%d, backend %s", r.method, r.workload, r.heads, r.n_q,
    r.head_dim, r.kv_heads, r.n_k, r.head_dim, r.backend))
  local mt = r.metrics
  local function f(x) return x == nil and "-" or report.cell(x) end
  out(string.format("density %s%s  recall mean %s worst row %s  rel_l2 %s", f(mt.density),
    mt.density_semantic and (" (semantic " .. f(mt.density_semantic) .. ")") or "", f(mt.recall_mean),
    f(mt.recall_min), f(mt.rel_l2)))
  out(string.format("time %s ms = estimate %s ms + execute %s ms; flops %s + estimator %s",
    f(mt.time_ms), f(mt.estimate_ms), f(mt.execute_ms), f(mt.flops), f(mt.estimator_flops)))
  if match then
    out(string.format("%s %s solved for %s %s: achieved %s", m.knob, f(match.value), target, f(tvalue),
      f(match.achieved)))
  end
  local names = {}
  for key in pairs(r.metrics) do names[#names + 1] = key end
  table.sort(names)
  local rows = {}
  for _, key in ipairs(names) do rows[#rows + 1] = {metric = key, value = r.metrics[key]} end
  out(report.table(rows, {"metric", "value"}))
  if per_step then
    local cols = {"step", "recall", "rel_l2"}
    if per_step[1].kv_bytes then cols[#cols + 1] = "kv_bytes" end
    if per_step[1].tokens_read then cols[#cols + 1] = "tokens_read" end
    out(report.table(per_step, cols))
  end
end

--- eval --mask-png FILE: the executed mask of result r (the semantic one beside it when the
--- method has one in the same blocks), shaded by the exact attention mass of each block
--- (score.exact on the problem's q and k), one panel per query head (viz/mask.lua).
function C.mask_png(r, prob, path)
  local exec = r.mask and sl.mask.as_block(r.mask)
  if not exec then sl.fail("--mask-png: %s returns no block mask to draw", r.method) end
  local info = exec:info()
  local sem = r.semantic_mask and sl.mask.as_block(r.semantic_mask)
  if sem then
    local si = sem:info()
    if si.bq ~= info.bq or si.bk ~= info.bk then sem = nil end
  end
  local mass = sl.score.exact(prob.q, prob.k, {bq = info.bq, bk = info.bk, causal = prob.causal ~= false,
    backend = prob.backend})
  if sem then
    sl.viz.mask(sem, path, {mass = mass, executed = exec})
  else
    sl.viz.mask(exec, path, {mass = mass})
  end
end

--- method corrected by the --correct spec "ID[:K=V,...]" (ID a correction
--- id or alias; K=V the correction's parameters, as defaults of the new method).
function C.corrected(m, spec)
  local cid, rest = spec:match("^([%w_]+):?(.*)$")
  if not cid then sl.fail("--correct expects ID[:K=V,...], found '%s'", spec) end
  local params = {}
  for kv in rest:gmatch("[^,]+") do
    local key, val = kv:match("^([%w_]+)=(.*)$")
    if not key then sl.fail("--correct %s: expected K=V, found '%s'", cid, kv) end
    params[key] = value_of(val)
  end
  return sl.correct.apply(m, cid, params)
end

--- The knob of m that keeps at least `target` of the causal pairs
--- (sl.budget.match with a density target; kept for callers of the old name).
function C.solve_density(m, prob, params, target)
  return sl.budget.match{method = m, prob = prob, target = "density", value = target, params = params}.value
end

-- ---- calibrate ----------------------------------------------------------

function C.calibrate(argv)
  local o, pos = parse(argv, 2, "calibrate")
  local id = pos[1]
  if not id or not o.qkv or not o.out then
    sl.fail("usage: sparselab calibrate METHOD --qkv FILE [--qkv FILE2]... --out CFG.json [--param K=V]... "
      .. "[--layout video,...] [--no-causal]")
  end
  local m = sl.methods.get(id)
  local params = method_args(o)
  local layout = o.layout and sl.layout.parse(o.layout) or nil
  local problems = {}
  for _, path in ipairs(o.qkv) do
    for _, e in ipairs(require("sparselab.qkv").load(path, o.names)) do
      -- a video layout means video attention: not causal
      problems[#problems + 1] = sl.problem{q = e.q, k = e.k, v = e.v, workload = "qkv:" .. path,
        workload_params = {batch = e.batch}, layout = layout, causal = not (o["no-causal"] or layout)}
    end
  end
  local config = sl.calibrate(m, {problems = problems, out = o.out, params = params, sources = o.qkv})
  local n = 0
  for _ in pairs(config) do n = n + 1 end
  out(string.format("%s calibrated on %d input(s): %d config entries written to %s", m.id, #problems, n, o.out))
end

-- ---- model --------------------------------------------------------------

local function read_file(path)
  local f, err = io.open(path, "rb")
  if not f then sl.fail("%s", err) end
  local s = f:read("a")
  f:close()
  return s
end

function C.model(argv)
  local o, pos = parse(argv, 2, "model")
  local path = pos[1]
  if not path or not o.text then
    sl.fail("usage: sparselab model PATH --text FILE [--method ID] [--budget X] [--decode ID[:K=V,...] [--prefix N]]")
  end
  local m = sl.model.load(path)
  local id = o.method or "dense"
  local method = sl.methods.get(id)
  local params, budget = method_args(o)
  local resolved = sl.registry.resolve(method, params, budget) -- fails early on bad parameters
  local dense_layers = tonumber(o["dense-layers"] or "0")
  local spec = id ~= "dense" and {method = id, budget = budget, params = params} or nil
  local attention = spec
  if spec and dense_layers > 0 then
    attention = {default = spec, layers = {}}
    for l = 0, dense_layers - 1 do attention.layers[l] = "dense" end
  end
  local text = read_file(o.text)
  -- --decode ID[:K=V,...]: a decode method in the runner's decode loop (the
  -- text's first --prefix tokens are the prompt, prefilled by --method)
  local dspec
  if o.decode then
    local did, rest = o.decode:match("^([%w_]+):?(.*)$")
    if not did then sl.fail("--decode expects ID[:K=V,...], found '%s'", o.decode) end
    local dparams = {}
    for kv in rest:gmatch("[^,]+") do
      local key, val = kv:match("^([%w_]+)=(.*)$")
      if not key then sl.fail("--decode %s: expected K=V, found '%s'", did, kv) end
      dparams[key] = value_of(val)
    end
    local dm = sl.methods.get(did)
    if not dm.decode then sl.fail("--decode: %s has no decode hook (phase %s)", dm.id, tostring(dm.phase)) end
    sl.registry.resolve(dm, dparams)
    dspec = {method = did, params = dparams}
  end
  local r, tokens
  if dspec then
    tokens = m:encode(text)
    local prefix = o.prefix and math.tointeger(tonumber(o.prefix)) or #tokens // 2
    if not prefix or prefix < 1 or prefix >= #tokens then
      sl.fail("--prefix expects an integer in [1, %d), found '%s'", #tokens, tostring(o.prefix))
    end
    r = m:evaluate_decode{tokens = tokens, prefix = prefix, attention = attention, decode = dspec}
    r.prefix = prefix
  else
    r, tokens = m:evaluate{text = text, attention = attention}
  end
  -- greedy generation from the text's first tokens, dense and with the method
  local steps = tonumber(o.gen or "64")
  local prompt = {}
  for i = 1, math.min(8, #tokens) do prompt[i] = tokens[i] end
  local dense_ids = m:generate{prompt = prompt, steps = steps}
  local ids, gen_text = m:generate{prompt = prompt, steps = steps, attention = attention, decode = dspec}
  r.gen_common_prefix = sl.model.common_prefix(dense_ids, ids, #prompt)
  r.gen_steps = steps
  if o.db then
    local db = sl.store.open(o.db)
    local run_id = db:begin_run{script = "sparselab model", argv = argv}
    local metrics = {}
    for k, v in pairs(r) do metrics[k] = v end
    db:record{run_id = run_id, method = dspec and dspec.method or id, params = dspec and dspec.params or resolved,
      workload = "text:" .. o.text, workload_params = {model = path, dense_layers = dense_layers, prefill = id,
      prefix = r.prefix}, phase = dspec and "decode" or "prefill", n_q = r.n + 1,
      n_k = r.n + 1, heads = m.cfg.n_heads, kv_heads = m.cfg.n_kv_heads, head_dim = m.cfg.head_dim,
      backend = "cpu", budget = method.knob and resolved[method.knob] or nil, metrics = metrics}
    db:finish_run(run_id, "ok")
    db:close()
  end
  if o.json then
    local t = {method = id, model = path, text = o.text, budget = method.knob and resolved[method.knob] or nil,
      params = resolved, dense_layers = dense_layers, decode = dspec and dspec.method or nil,
      decode_params = dspec and dspec.params or nil}
    for k, v in pairs(r) do t[k] = v end
    out(sl.json_encode(t))
    return
  end
  if dspec then
    out(string.format("%s prefill of %d tokens + %s decoding %d tokens through its cache, %s, model %s", id, r.prefix,
      dspec.method, r.n + 1, o.text, path))
  else
    out(string.format("%s on %s (%d tokens), model %s", id, o.text, r.n + 1, path))
  end
  local rows = {}
  for _, k in ipairs{"ppl", "ppl_dense", "nll", "nll_dense", "kl", "top1", "gen_common_prefix", "gen_steps"} do
    rows[#rows + 1] = {metric = k, value = r[k]}
  end
  out(report.table(rows, {"metric", "value"}))
  out("generated: " .. (gen_text or ""):gsub("\n", " "))
end

-- ---- query --------------------------------------------------------------

function C.query(argv)
  local o, pos = parse(argv, 2, "query")
  if #pos < 2 then sl.fail("usage: sparselab query DB SQL [--csv|--json] [--write]") end
  local f = io.open(pos[1], "rb")
  if not f then sl.fail("%s: no such database", pos[1]) end
  f:close()
  -- read-only: a store the user cannot write (or in a directory they cannot
  -- write) still answers queries, and a query cannot change it
  -- (--write opens it for writing: a statement that changes the database is refused without it)
  local db = sl.store.open(pos[1], {read_only = not o.write})
  local ok, rows = pcall(db.query, db, pos[2])
  db:close()
  if not ok then
    local msg = tostring(rows)
    if not o.write and msg:find("readonly database", 1, true) then
      sl.fail("query: %s is opened read-only, and this statement writes; give --write to change the database",
        pos[1])
    end
    error(msg, 0)
  end
  local cols = rows.columns or {}
  report.print(rows, cols, o, out)
end

-- ---- bench --------------------------------------------------------------

function C.bench(argv)
  local o = parse(argv, 2, "bench")
  -- a comma-separated list of integers >= lo (or of numbers in (0, 1] when frac)
  local function list(name, lo, frac)
    local s = o[name]
    if not s then return nil end
    local l = {}
    for w in (s .. ","):gmatch("([^,]*),") do
      local x = tonumber(w)
      if frac then
        if not (x and x > 0 and x <= 1) then sl.fail("--%s expects numbers in (0, 1], found '%s'", name, s) end
      else
        x = x and math.tointeger(x)
        if not (x and x >= lo) then sl.fail("--%s expects integers >= %d, found '%s'", name, lo, s) end
      end
      l[#l + 1] = x
    end
    return l
  end
  local function one(name, lo)
    local l = list(name, lo)
    if l and #l ~= 1 then sl.fail("--%s expects one integer, found '%s'", name, o[name]) end
    return l and l[1]
  end
  local sizes = list("n", 64)
  local words = {}
  for _, name in ipairs{"patterns", "dtypes"} do
    if o[name] then
      words[name] = {}
      for w in o[name]:gmatch("[^,]+") do words[name][#words[name] + 1] = w end
    end
  end
  for _, p in ipairs(words.patterns or {}) do
    if p ~= "window" and p ~= "random_blocks" then sl.fail("--patterns: unknown pattern '%s' (window, random_blocks)", p) end
  end
  for _, t in ipairs(words.dtypes or {}) do
    if t ~= "f32" and t ~= "f16" and t ~= "bf16" then sl.fail("--dtypes: unknown dtype '%s' (f32, f16, bf16)", t) end
  end
  if o["no-estimators"] and (o["only-estimators"] or o.methods) then
    sl.fail("--no-estimators excludes --only-estimators and --methods")
  end
  -- each result is printed as soon as it is measured (a long run that is
  -- cut short keeps what it had)
  local function show(r)
    if o.json then
      local t = {name = r.name, backend = r.backend, n = r.n, d = r.d, heads = r.heads, params = r.params,
        method = r.method, kv_heads = r.kv_heads, error = r.error}
      for key, val in pairs(r.metrics) do t[key] = val end
      out(sl.json_encode(t))
    else
      local parts = {}
      local keys = {}
      for key in pairs(r.metrics) do keys[#keys + 1] = key end
      table.sort(keys)
      for _, key in ipairs(keys) do parts[#parts + 1] = key .. "=" .. report.cell(r.metrics[key]) end
      if r.error then parts[#parts + 1] = "error: " .. r.error end
      if r.params and r.params.isa then table.insert(parts, 1, "isa=" .. r.params.isa) end
      out(string.format("%-22s n=%-6d d=%-4d %s", r.name, r.n, r.d, table.concat(parts, " ")))
    end
    io.stdout:flush()
  end
  local results = {}
  if o["only-decode"] then
    -- the paged-cache decode rows alone (issue 13: bench_decode), in one run
    local rows = setmetatable({}, {__newindex = function(t, i, r) rawset(t, i, r); show(r) end})
    require("sparselab.bench_decode").run(rows, {quick = o.quick, backend = o.backend or "cpu", reps = one("reps", 1),
      n = one("decode-n", 64)})
    for i, r in ipairs(rows) do results[i] = r end
    o["no-mm"], o["only-estimators"], o["no-estimators"] = true, true, true
  end
  if not o["only-estimators"] and not o["no-mm"] then
    -- sparse matmul against sgemm (issue 17; bench_mm.lua)
    local parts = {}
    for w in (o["mm-parts"] or "sparse"):gmatch("[^,]+") do
      if w ~= "sparse" and w ~= "moe" then sl.fail("bench: --mm-parts expects sparse and/or moe, found '%s'", w) end
      parts[w] = true
    end
    local BM = require "sparselab.bench_mm"
    if parts.sparse then
      for _, r in ipairs(BM.run{quick = o.quick, backend = o.backend or "cpu",
        rows = list("mm-rows", 1), reps = one("reps", 1), emit = show}) do results[#results + 1] = r end
    end
    if parts.moe then
      local E, K = (o["mm-moe"] or "8:2"):match("^(%d+):(%d+)$")
      if not E then sl.fail("bench: --mm-moe expects E:K (e.g. 8:2), found '%s'", tostring(o["mm-moe"])) end
      for _, r in ipairs(BM.moe{quick = o.quick, backend = o.backend or "cpu", E = tonumber(E), k = tonumber(K),
        rows = list("mm-rows", 1), reps = one("reps", 1), emit = show}) do results[#results + 1] = r end
    end
  end
  if o["only-mm"] then o["only-estimators"], o["no-estimators"] = true, true end
  if not o["only-estimators"] then
    local mm_rows = results
    results = require("sparselab.bench").run{quick = o.quick, backend = o.backend or "cpu", n = sizes,
      d = list("d", 1), heads = one("heads", 1), densities = list("densities", 0, true), patterns = words.patterns,
      reps = one("reps", 1), dtypes = words.dtypes, sgemm = not o["no-sgemm"], decode = not o["no-decode"],
      decode_n = one("decode-n", 64), decode_keys = one("decode-keys", 1), decode_nq = list("decode-nq", 1),
      decode_parts = o["decode-parts"], emit = show}
    for i, r in ipairs(mm_rows) do table.insert(results, i, r) end -- the mm rows go to --db too
  end
  if not o["no-estimators"] then
    -- estimator overhead of the dynamic prefill methods (bench_estimators.lua)
    local est = require "sparselab.bench_estimators"
    -- video methods (issue 15) run on the video workload: bench_video
    local bv = require "sparselab.bench_video"
    local ids, vids
    if o.methods then
      ids, vids = {}, {}
      for id in o.methods:gmatch("[^,]+") do
        local m = sl.methods.get(id)
        if bv.is_video(m) then vids[#vids + 1] = m.id else ids[#ids + 1] = m.id end
      end
      if #ids + #vids == 0 then sl.fail("--methods expects a comma-separated list of method ids") end
    elseif o.video then
      vids = bv.ids()
    end
    local eh, ekv
    if o["est-heads"] then
      eh, ekv = o["est-heads"]:match("^(%d+):(%d+)$")
      if not eh then eh = o["est-heads"]:match("^(%d+)$"); ekv = eh end
      eh, ekv = tonumber(eh), tonumber(ekv)
      if not eh or eh < 1 or ekv < 1 or eh % ekv ~= 0 then
        sl.fail("--est-heads: expected H or H:KV with KV dividing H, found '%s'", o["est-heads"])
      end
    end
    if not ids or #ids > 0 then
      local base = {}
      for _, est_n in ipairs(sizes or {false}) do
        for _, r in ipairs(est.run{quick = o.quick, backend = o.backend or "cpu", methods = ids, n = est_n or nil,
          heads = eh, kv_heads = ekv, base = base}) do
          results[#results + 1] = r
          show(r)
        end
      end
    end
    if vids and #vids > 0 then
      for _, vn in ipairs(sizes or {false}) do
        for _, r in ipairs(bv.run{quick = o.quick, backend = o.backend or "cpu", methods = vids, n = vn or nil}) do
          results[#results + 1] = r
          show(r)
        end
      end
    end
  end
  if o.db then
    local db = sl.store.open(o.db)
    local run_id = db:begin_run{script = "sparselab bench", argv = argv}
    for _, r in ipairs(results) do
      db:record{run_id = run_id, method = r.name, params = r.params, workload = "bench", backend = r.backend,
        n_q = r.n_q or r.n, n_k = r.n, head_dim = r.d, heads = r.heads, kv_heads = r.kv_heads or r.heads,
        metrics = r.metrics, status = r.error and "failed" or nil, error = r.error}
    end
    db:finish_run(run_id, "ok")
    db:close()
  end

end

-- Subcommands that live in modules of their own (sparselab/cli/<name>.lua,
-- each returning function(argv, parse, out)).
for _, name in ipairs{"sweep", "merge", "fit", "compare", "stats", "plot", "report", "slurm", "fit-params"} do
  C[name] = function(argv)
    local ok, f = pcall(require, "sparselab.cli." .. name:gsub("-", "_"))
    if not ok then sl.fail("sparselab %s: not available in this build (%s)", name, tostring(f)) end
    return f(argv, parse, out)
  end
end

--- sparselab help [COMMAND]
function C.help(argv)
  local name = argv and argv[2]
  if name == nil then out(commands.overview()) return end
  if not commands.by_name[name] then
    local names = {}
    for _, c in ipairs(commands.list) do names[#names + 1] = c.name end
    sl.fail("help: unknown command '%s' (commands: %s)", name, table.concat(names, ", "))
  end
  out(commands.help(name))
end

-- Whether argv asks for the command's help: --help or -h among its arguments (for `run`,
-- only right after the command: the script's own arguments follow).
local function wants_help(argv, decl)
  if decl.passthrough then return argv[2] == "--help" or argv[2] == "-h" end
  for i = 2, #argv do
    if argv[i] == "--" then return false end
    if argv[i] == "--help" or argv[i] == "-h" then return true end
  end
  return false
end

--- Entry point: argv is the program's arguments (argv[1] = subcommand).
function C.main(argv)
  local cmd = argv[1]
  if cmd == "--help" or cmd == "-h" then out(commands.overview()) return end
  local f = C[cmd]
  local decl = commands.by_name[cmd]
  if not f or not decl then
    sl.fail("unknown command '%s' (sparselab --help lists the commands)", tostring(cmd))
  end
  if wants_help(argv, decl) then out(commands.help(cmd)) return end
  return f(argv)
end

return C
