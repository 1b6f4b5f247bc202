-- sparselab.sweep — sweeps (DESIGN §9): a config file (a Lua table, loaded
-- in an empty environment) expands into points with stable keys; points are
-- run in worker processes by the libuv runner (runner.c), and this process
-- is the single writer of the database, committing in batches.
--
-- Config (unknown keys anywhere are errors; a config returns its table, or
-- assigns the keys as globals; only math, string and table are visible):
--   name      = "smoke",                    -- recorded with the run
--   methods   = {                           -- required; in order
--     "dense",                              -- a method at its defaults
--     {id = "sliding_window", budgets = {32, 64},          -- the method's knob
--      params = {bq = 16, bk = {16, 32}}},                 -- a list is an axis
--     {id = "streaming_llm", targets = {density = {0.1, 0.25}}}, -- knob solved per point
--     (targets: density, flops or kv_bytes — solved by sl.budget.match, nearest setting)
--   },
--   workloads = {                           -- default {{name = "synthetic"}}
--     {name = "synthetic", heads = 4, kv_heads = 2, d = 64},   -- + n_sink, sink, local,
--                                                               -- corr_len, needles, needle, n
--     {name = "qkv", path = "capture_layer%d.safetensors", layers = {0, 1}, split_heads = true},
--   },
--   sizes   = {256, 512},   -- n of synthetic workloads without their own n (default {1024})
--   seeds   = {1, 2},       -- seeds of synthetic workloads (default {1})
--   backend = "cpu", causal = true, reps = 1,     -- reps: timing repetitions (median)
--   timeout = 60, workers = 4,                    -- defaults for --timeout / --workers
--
-- Points, in this order: workload × layer × size × seed × head (outer, so a
-- worker reuses one problem and its dense reference for many points), then
-- method × budget|target × parameter grid (names sorted). A point is a plain
-- table {method =, params = (resolved, knob included), budget =, target =,
-- workload = {name =, n =, heads =, kv_heads =, d =, seed =, ...}, backend =,
-- causal =, reps =}; its key is sl.store.point_key of the record it gives
-- (S.describe), and the result is recorded with exactly that key. A target
-- point's key holds the target (params["@target"]) instead of the knob; its
-- record holds the solved knob and the metric target_<name>.
--
-- Resume: points whose key has an 'ok' result are always skipped; points
-- whose key has only a 'failed' result are skipped too unless --resume, which
-- runs them again and replaces the failed row, so a key is in a database once.
-- A sweep killed midway therefore finishes by running it again (with or
-- without --resume); its run row stays 'running'.
--
-- Claims (table claim, migration 003): a sweep claims the points it will run
-- in the write transaction in which it reads what is recorded, and skips
-- (and reports) points that another live sweep has claimed, so two sweeps,
-- shards or resumes of one config on one database never run a point twice.
-- A point's claim goes in the transaction that records it; the rest when the
-- sweep ends (interrupted or not). A claim of a process of this host that is
-- gone (SIGKILL) is taken over at once; one of another host once it has not
-- committed for S.CLAIM_STALE_SECONDS.
--
-- Worker protocol (framing and process handling in runner.h): each point
-- goes to a worker as one line, S.encode of {method, params, budget, target,
-- workload, backend, causal, reps}; the reply is S.encode of {ok = true,
-- metrics = {...}, params, budget, n_q, n_k, head_dim, heads, kv_heads} or
-- {ok = false, error = "..."}. S.encode writes Lua literals on one line
-- (\ddd escapes, 1e999 for infinities, (0/0) for NaN) and S.decode loads
-- them in an empty environment. Failed points are recorded with status
-- 'failed', the error ("killed by signal 11 (SIGSEGV)", "timeout after 60 s
-- (killed with SIGKILL)", or the Lua error) and the metric `signal`; every
-- result gets the metric point_wall_s (seconds from hand-out to reply).
local sl = require "sparselab"

local S = {}

S.BATCH = 20          -- results per transaction at most
S.BATCH_SECONDS = 1   -- and a transaction stays open about this long at most
S.CLAIM_STALE_SECONDS = 600 -- a claim of another host's sweep that has not committed for this long is taken over

if os.getenv("SPARSELAB_TEST_METHODS") == "1" then require("sparselab.sweep_testing") end

-- ---- one-line Lua literals (the worker protocol) ---------------------------

local KEYWORDS = {}
for w in ("and break do else elseif end false for function goto if in local nil not or repeat return then true " ..
    "until while"):gmatch("%a+") do KEYWORDS[w] = true end

local function encode_value(v, out)
  local t = type(v)
  if t == "string" then
    out[#out + 1] = '"' .. v:gsub('[%c"\\\128-\255]', function(c) return string.format("\\%03d", c:byte()) end) .. '"'
  elseif t == "number" then
    if math.type(v) == "integer" then out[#out + 1] = string.format("%d", v)
    elseif v ~= v then out[#out + 1] = "(0/0)"
    elseif v == math.huge then out[#out + 1] = "1e999"
    elseif v == -math.huge then out[#out + 1] = "-1e999"
    else
      local s = string.format("%.17g", v):gsub(",", ".")
      out[#out + 1] = s:find("[.eEn]") and s or s .. ".0" -- stays a float
    end
  elseif t == "boolean" then
    out[#out + 1] = tostring(v)
  elseif t == "table" then
    local keys = {}
    for k in pairs(v) do
      if type(k) ~= "string" and math.type(k) ~= "integer" then
        error("sweep.encode: table keys must be strings or integers, found " .. type(k), 0)
      end
      keys[#keys + 1] = k
    end
    table.sort(keys, function(a, b)
      if type(a) == type(b) then return a < b end
      return type(a) == "number"
    end)
    out[#out + 1] = "{"
    for i, k in ipairs(keys) do
      if i > 1 then out[#out + 1] = "," end
      if type(k) == "string" and k:match("^[%a_][%w_]*$") and not KEYWORDS[k] then out[#out + 1] = k .. "="
      else
        out[#out + 1] = "["
        encode_value(k, out)
        out[#out + 1] = "]="
      end
      encode_value(v[k], out)
    end
    out[#out + 1] = "}"
  elseif v == nil then
    out[#out + 1] = "nil"
  else
    error("sweep.encode: cannot encode a " .. t, 0)
  end
end

--- One line of Lua that S.decode reads back as v (strings, numbers incl.
--- inf/NaN, booleans and tables of them).
function S.encode(v)
  local out = {}
  encode_value(v, out)
  return table.concat(out)
end

--- The value of a line written by S.encode (evaluated in an empty environment).
function S.decode(line)
  local f, err = load("return " .. line, "=line", "t", {})
  if not f then error("sweep.decode: " .. err, 0) end
  return f()
end

-- ---- config -------------------------------------------------------------

local TOP_KEYS = {name = true, methods = true, workloads = true, sizes = true, seeds = true, backend = true,
  causal = true, reps = true, timeout = true, workers = true}
local METHOD_KEYS = {id = true, budgets = true, targets = true, params = true}
local SYNTH_KEYS = {name = true, n = true, heads = true, kv_heads = true, d = true, n_sink = true, sink = true,
  ["local"] = true, corr_len = true, needles = true, needle = true, split_heads = true}
local QKV_KEYS = {name = true, path = true, layers = true, split_heads = true}
local TARGETS = {density = true, flops = true, kv_bytes = true} -- sl.budget.TARGETS

local function sorted_keys(t)
  local ks = {}
  for k in pairs(t) do ks[#ks + 1] = tostring(k) end
  table.sort(ks)
  return ks
end

local function check_keys(t, allowed, where)
  for k in pairs(t) do
    if not allowed[k] then
      sl.fail("%s: unknown key '%s' (expected one of: %s)", where, tostring(k), table.concat(sorted_keys(allowed), ", "))
    end
  end
end

local function check_list(v, where, kind)
  if type(v) ~= "table" or #v == 0 then sl.fail("%s must be a non-empty list", where) end
  for k in pairs(v) do
    if math.type(k) ~= "integer" or k < 1 or k > #v then sl.fail("%s must be a list (keys 1..n)", where) end
  end
  for i, x in ipairs(v) do
    if kind == "integer" and math.type(x) ~= "integer" then
      sl.fail("%s[%d] must be an integer, found %s", where, i, tostring(x))
    elseif kind == "number" and type(x) ~= "number" then
      sl.fail("%s[%d] must be a number, found %s", where, i, tostring(x))
    end
  end
  return v
end

local function copy(t)
  local c = {}
  for k, v in pairs(t) do c[k] = v end
  return c
end

--- Checks a config table (what S.load_config returns); `where` prefixes messages.
function S.check_config(cfg, where)
  check_keys(cfg, TOP_KEYS, where)
  if cfg.methods == nil then sl.fail("%s: 'methods' is required", where) end
  check_list(cfg.methods, where .. ": methods")
  for i, e in ipairs(cfg.methods) do
    local w = string.format("%s: methods[%d]", where, i)
    if type(e) == "string" then e = {id = e} end
    if type(e) ~= "table" then sl.fail("%s must be a method id or a table {id = ...}", w) end
    check_keys(e, METHOD_KEYS, w)
    local ok, m = pcall(sl.methods.get, e.id)
    if not ok then sl.fail("%s: %s", w, tostring(m)) end
    if e.budgets and e.targets then sl.fail("%s: give budgets or targets, not both", w) end
    if (e.budgets or e.targets) and not m.knob then sl.fail("%s: method '%s' has no budget knob", w, m.id) end
    if e.budgets then check_list(e.budgets, w .. ".budgets", "number") end
    if e.targets then
      if type(e.targets) ~= "table" then sl.fail("%s.targets must be a table {density = {...}}", w) end
      check_keys(e.targets, TARGETS, w .. ".targets")
      for name, vals in pairs(e.targets) do check_list(vals, w .. ".targets." .. name, "number") end
    end
    if e.params ~= nil and type(e.params) ~= "table" then sl.fail("%s.params must be a table", w) end
    for k, v in pairs(e.params or {}) do
      if type(v) == "table" then check_list(v, w .. ".params." .. tostring(k)) end
    end
  end
  if cfg.workloads ~= nil then check_list(cfg.workloads, where .. ": workloads") end
  for i, wl in ipairs(cfg.workloads or {}) do
    local w = string.format("%s: workloads[%d]", where, i)
    if type(wl) ~= "table" then sl.fail("%s must be a table {name = ...}", w) end
    if wl.name == "synthetic" then check_keys(wl, SYNTH_KEYS, w)
    elseif wl.name == "qkv" then
      check_keys(wl, QKV_KEYS, w)
      if type(wl.path) ~= "string" then sl.fail("%s: 'path' must be a file name", w) end
      if wl.layers then check_list(wl.layers, w .. ".layers", "integer") end
    else
      sl.fail("%s: unknown workload '%s' (expected synthetic or qkv)", w, tostring(wl.name))
    end
  end
  if cfg.sizes ~= nil then check_list(cfg.sizes, where .. ": sizes", "integer") end
  if cfg.seeds ~= nil then check_list(cfg.seeds, where .. ": seeds", "integer") end
  if cfg.backend ~= nil and type(cfg.backend) ~= "string" then sl.fail("%s: 'backend' must be a string", where) end
  if cfg.backend ~= nil then
    -- here, not in the worker, where every point would fail alike
    local names, known = {}, false
    for _, b in ipairs(sl.backends()) do
      names[#names + 1] = b.name
      known = known or b.name == cfg.backend
    end
    if not known then
      sl.fail("%s: unknown backend '%s' (expected one of %s)", where, cfg.backend, table.concat(names, ", "))
    end
  end
  if cfg.reps ~= nil and (math.type(cfg.reps) ~= "integer" or cfg.reps < 1) then
    sl.fail("%s: 'reps' must be a positive integer", where)
  end
  if cfg.timeout ~= nil and (type(cfg.timeout) ~= "number" or cfg.timeout < 0) then
    sl.fail("%s: 'timeout' must be seconds >= 0", where)
  end
  if cfg.workers ~= nil and (math.type(cfg.workers) ~= "integer" or cfg.workers < 1) then
    sl.fail("%s: 'workers' must be a positive integer", where)
  end
  return cfg
end

S.CONFIG_TIMEOUT = 10    -- seconds a config may take to evaluate (--config-timeout)
S.CONFIG_MEMORY = 1024   -- MiB a config may allocate while it evaluates (--config-memory)

--- Loads and checks the config file at path. The config is evaluated in a
--- child process (sl.limited_call) killed after limits.timeout seconds of
--- wall-clock time (default S.CONFIG_TIMEOUT; this stops endless loops and
--- tail calls and single long C calls such as a pathological string.match)
--- and refused more than limits.memory MiB (default S.CONFIG_MEMORY); its
--- table comes back as an S.encode line. Exceeding a limit is a user error
--- naming the config file and the limit.
function S.load_config(path, limits)
  limits = limits or {}
  local f, err = io.open(path, "rb")
  if not f then sl.fail("%s", err) end
  local text = f:read("a")
  f:close()
  local env = {math = copy(math), string = copy(string), table = copy(table)}
  local libs = {math = env.math, string = env.string, table = env.table}
  local chunk, lerr = load(text, "@" .. path, "t", env)
  if not chunk then sl.fail("%s", lerr) end
  local timeout = limits.timeout or S.CONFIG_TIMEOUT
  local mib = limits.memory or S.CONFIG_MEMORY
  local ok, res = sl.limited_call(function()
    local cfg = chunk()
    if cfg == nil then
      cfg = {}
      for k, v in pairs(env) do if libs[k] ~= v then cfg[k] = v end end
    end
    if type(cfg) ~= "table" then
      error(string.format("%s: a sweep config returns a table (or assigns its keys), found a %s", path, type(cfg)), 0)
    end
    local eok, line = pcall(S.encode, cfg)
    if not eok then error(string.format("%s: %s", path, tostring(line)), 0) end
    return line
  end, timeout, math.floor(mib * 1048576))
  if not ok then
    if res == "timeout" then
      sl.fail("%s: the config took more than %g s to evaluate (--config-timeout)", path, timeout)
    elseif res == "memory" then
      sl.fail("%s: the config used more than %g MiB of memory to evaluate (--config-memory)", path, mib)
    end
    sl.fail("%s", tostring(res))
  end
  local cfg = S.decode(res)
  return S.check_config(cfg, path)
end

-- ---- expansion ------------------------------------------------------------

-- Shapes of a captured Q/K/V file (loaded once per path).
local function qkv_shapes(path, cache)
  if not cache[path] then
    local ok, t = pcall(sl.load, path)
    if not ok then sl.fail("%s", tostring(t)) end
    if type(t) ~= "table" or not (t.q and t.k and t.v) then sl.fail("%s: expected tensors q, k, v", path) end
    local q, k = t.q:shape(), t.k:shape()
    cache[path] = {heads = q[1], n_q = q[2], head_dim = q[3], kv_heads = k[1], n_k = k[2]}
  end
  return cache[path]
end

-- The workload instances of one workload entry: plain tables a worker can
-- rebuild the problem from.
local function instances(cfg, wl, cache, where)
  local list = {}
  local function add_heads(inst, kv_heads)
    if wl.split_heads then
      for h = 0, kv_heads - 1 do
        local c = copy(inst)
        c.head = h
        list[#list + 1] = c
      end
    else
      list[#list + 1] = inst
    end
  end
  if wl.name == "qkv" then
    for _, layer in ipairs(wl.layers or {false}) do
      local path = wl.path
      if layer then
        local ok, p = pcall(string.format, wl.path, layer)
        if not ok or p == wl.path then sl.fail("%s: with layers, 'path' needs a %%d for the layer", where) end
        path = p
      end
      local sh = qkv_shapes(path, cache)
      add_heads({name = "qkv", path = path, layer = layer or nil}, sh.kv_heads)
    end
    return list
  end
  for _, n in ipairs(wl.n and {wl.n} or cfg.sizes or {1024}) do
    for _, seed in ipairs(cfg.seeds or {1}) do
      local inst = {name = "synthetic", n = n, d = wl.d or 64, heads = wl.heads or 8, seed = seed}
      inst.kv_heads = wl.kv_heads or inst.heads
      for k, v in pairs(wl) do
        if inst[k] == nil and k ~= "name" and k ~= "split_heads" then inst[k] = v end
      end
      add_heads(inst, inst.kv_heads)
    end
  end
  return list
end

--- The record fields (everything but run_id, metrics, status) of a point;
--- its key is sl.store.point_key of this. `shapes` caches qkv file shapes.
function S.describe(p, shapes)
  local wl = p.workload
  local d = {method = p.method, backend = p.backend, budget = p.budget}
  d.params = copy(p.params)
  if p.target then d.params["@target"] = p.target end
  local n_q, n_k, hd, heads, kv
  if wl.name == "qkv" then
    local sh = qkv_shapes(wl.path, shapes or {})
    n_q, n_k, hd, heads, kv = sh.n_q, sh.n_k, sh.head_dim, sh.heads, sh.kv_heads
    d.workload = "qkv:" .. wl.path
    d.workload_params = {path = wl.path}
  else
    n_q, n_k, hd, heads, kv = wl.n, wl.n, wl.d, wl.heads, wl.kv_heads
    d.workload = "synthetic"
    d.workload_params = copy(wl)
    d.workload_params.name, d.workload_params.head = nil, nil
  end
  if p.causal == false then d.workload_params.causal = false end
  if wl.head then heads, kv = heads // kv, 1 end
  d.layer, d.head = wl.layer, wl.head
  d.n_q, d.n_k, d.head_dim, d.heads, d.kv_heads = n_q, n_k, hd, heads, kv
  d.phase = n_q < n_k and "decode" or "prefill"
  return d
end

-- The cross product of a params table whose list values are axes (names sorted).
local function param_grid(params)
  local combos = {{}}
  for _, k in ipairs(sorted_keys(params or {})) do
    local v = params[k]
    local vals = type(v) == "table" and v or {v}
    local next_combos = {}
    for _, c in ipairs(combos) do
      for _, x in ipairs(vals) do
        local c2 = copy(c)
        c2[k] = x
        next_combos[#next_combos + 1] = c2
      end
    end
    combos = next_combos
  end
  return combos
end

--- Every point of a checked config, in the documented order, each with .key
--- (and .desc, its record fields). `where` prefixes messages.
function S.expand(cfg, where)
  where = where or "sweep"
  local shapes, points = {}, {}
  local entries = {}
  for i, e in ipairs(cfg.methods) do
    if type(e) == "string" then e = {id = e} end
    local m = sl.methods.get(e.id)
    local settings = {}
    for _, b in ipairs(e.budgets or {}) do settings[#settings + 1] = {budget = b} end
    for _, name in ipairs(sorted_keys(e.targets or {})) do
      for _, v in ipairs(e.targets[name]) do settings[#settings + 1] = {target = {[name] = v}} end
    end
    if #settings == 0 then settings[1] = {} end
    local combos = param_grid(e.params)
    for _, s in ipairs(settings) do
      for _, c in ipairs(combos) do
        local ok, p = pcall(sl.registry.resolve, m, c, s.budget)
        if not ok then sl.fail("%s: methods[%d]: %s", where, i, tostring(p)) end
        if s.target then p[m.knob] = nil end
        entries[#entries + 1] = {method = m.id, params = p, budget = m.knob and p[m.knob] or nil, target = s.target}
      end
    end
  end
  for wi, wl in ipairs(cfg.workloads or {{name = "synthetic"}}) do
    for _, inst in ipairs(instances(cfg, wl, shapes, string.format("%s: workloads[%d]", where, wi))) do
      for _, e in ipairs(entries) do
        local p = {method = e.method, params = e.params, budget = e.budget, target = e.target, workload = inst,
          backend = cfg.backend or "cpu", causal = cfg.causal ~= false, reps = cfg.reps or 1}
        p.desc = S.describe(p, shapes)
        p.key = sl.store.point_key(p.desc)
        points[#points + 1] = p
      end
    end
  end
  return points
end

--- The points of shard i of n (1 <= i <= n): by key, so shards partition the
--- set whatever the order, and a point keeps its shard when the config grows.
function S.shard(points, i, n)
  local out = {}
  for _, p in ipairs(points) do
    if tonumber(p.key:sub(1, 12), 16) % n == i - 1 then out[#out + 1] = p end
  end
  return out
end

-- ---- running one point (in a worker, or in-process) ----------------------------

local current = {id = nil, prob = nil} -- the last problem, with its dense reference

local function problem_for(point)
  local wl = point.workload
  local id = S.encode{wl, point.backend, point.causal}
  if current.id == id then return current.prob end
  current.id, current.prob = nil, nil
  collectgarbage()
  local q, k, v
  if wl.name == "qkv" then
    local t = sl.load(wl.path)
    q, k, v = t.q, t.k, t.v
  else
    local sp = copy(wl)
    sp.name, sp.head = nil, nil
    q, k, v = sl.synthetic(sp)
  end
  if wl.head then
    local g = q:shape()[1] // k:shape()[1]
    q, k, v = q:narrow(1, wl.head * g + 1, g), k:narrow(1, wl.head + 1, 1), v:narrow(1, wl.head + 1, 1)
  end
  local prob = sl.problem{q = q, k = k, v = v, causal = point.causal ~= false, backend = point.backend or "cpu",
    workload = wl.name, layer = wl.layer, head = wl.head}
  current.id, current.prob = id, prob
  return prob
end

--- Runs one point in this process: {metrics =, params =, budget =, n_q =, ...}.
function S.run_point(point)
  local m = sl.methods.get(point.method)
  local prob = problem_for(point)
  local params = copy(point.params)
  local match
  if point.target then
    -- the knob solved by sl.budget.match (nearest setting; a target out of
    -- the knob's reach fails the point with the reachable range)
    local name, value = next(point.target)
    match = sl.budget.match{method = m, prob = prob, target = name, value = value, params = params, side = "nearest"}
    params[m.knob] = match.value
  end
  local r = sl.eval(m, prob, {params = params, reps = point.reps or 1})
  if match then sl.budget.metrics(match, r.metrics) end
  return {metrics = r.metrics, params = r.params, budget = r.budget, n_q = r.n_q, n_k = r.n_k,
    head_dim = r.head_dim, heads = r.heads, kv_heads = r.kv_heads}
end

--- The worker loop (`sparselab sweep --worker`): a point per input line, a
--- reply per point on output; returns when input ends.
function S.worker(input, output)
  local prefix = sl.runner_c.prefix
  output:write(prefix, sl.runner_c.hello, "\n")
  output:flush()
  for line in input:lines() do
    local ok, res = pcall(function() return S.run_point(S.decode(line)) end)
    local reply
    if ok then
      res.ok = true
      reply = res
    else
      reply = {ok = false, error = tostring(res)}
    end
    local enc_ok, text = pcall(S.encode, reply)
    if not enc_ok then text = S.encode{ok = false, error = "cannot encode the result: " .. tostring(text)} end
    output:write(prefix, text, "\n")
    output:flush()
  end
end

-- ---- the sweep -----------------------------------------------------------

-- key -> "ok" | "failed" for every keyed result in db.
local function recorded(db)
  local map = {}
  for _, row in ipairs(db:query("SELECT point_key AS k, max(status = 'ok') AS ok FROM result " ..
      "WHERE point_key IS NOT NULL GROUP BY point_key")) do
    map[row.k] = row.ok == 1 and "ok" or "failed"
  end
  return map
end

local function record_fields(p, run_id, reply, err, sig, seconds)
  local r = copy(p.desc)
  r.run_id, r.point_key = run_id, p.key
  r.params = copy(p.desc.params)
  if reply and reply.ok then
    for _, f in ipairs{"n_q", "n_k", "head_dim", "heads", "kv_heads"} do
      if reply[f] ~= r[f] then
        reply = {ok = false, error = string.format("internal: the worker's %s is %s, the point's %s", f,
          tostring(reply[f]), tostring(r[f]))}
        break
      end
    end
  end
  if reply and reply.ok then
    r.metrics = reply.metrics
    r.metrics.point_wall_s = seconds
    if p.target then r.params, r.budget = reply.params, reply.budget end
    return r, false
  end
  r.status = "failed"
  r.error = reply and tostring(reply.error) or err
  r.metrics = {point_wall_s = seconds, signal = sig}
  return r, true
end

--- Runs a sweep. o = {config = checked table, config_path =, db = path,
--- workers =, timeout =, resume =, shard = {i, n}, program =, args = (the
--- worker command; default this program's `sweep --worker`), argv = (for the
--- run record), progress = true|false|"tty"|"lines", dry_run =, say = function(line)}.
--- Returns a summary {points =, skipped_ok =, skipped_failed =, todo =, done =,
--- failed =, interrupted =, seconds =, run_id =}.
function S.run(o)
  local say = o.say or function() end
  local cfg = o.config
  local where = o.config_path or "sweep"
  local all = S.expand(cfg, where)
  local points = o.shard and S.shard(all, o.shard[1], o.shard[2]) or all
  local sum = {points = #points, total = #all, skipped_ok = 0, skipped_failed = 0, done = 0, failed = 0}
  sum.skipped_claimed = 0
  local db = sl.store.open(o.db)
  -- What is recorded and what other live sweeps have claimed is read, and
  -- our points claimed, in one write transaction (BEGIN IMMEDIATE), so two
  -- sweeps never both take a point.
  local me = sl.process_token()
  if not o.dry_run then db:begin() end
  local have = recorded(db)
  local claimed = {}
  local now = os.time()
  local alive = {}
  for _, row in ipairs(db:query("SELECT point_key AS k, owner, beat FROM claim")) do
    if row.owner ~= me then
      local live = alive[row.owner]
      if live == nil then
        live = sl.process_alive(row.owner)
        if live == nil then live = now - row.beat < S.CLAIM_STALE_SECONDS end -- another host's sweep
        alive[row.owner] = live
      end
      if live then claimed[row.k] = true end
    end
  end
  local todo = {}
  for _, p in ipairs(points) do
    local st = have[p.key]
    if st == "ok" then sum.skipped_ok = sum.skipped_ok + 1
    elseif st == "failed" and not o.resume then sum.skipped_failed = sum.skipped_failed + 1
    elseif claimed[p.key] then sum.skipped_claimed = sum.skipped_claimed + 1
    else
      p.replace = st == "failed"
      todo[#todo + 1] = p
    end
  end
  if not o.dry_run then
    for _, p in ipairs(todo) do
      db:query("INSERT OR REPLACE INTO claim (point_key, owner, beat) VALUES (?, ?, ?)", p.key, me, now)
    end
    db:commit()
  end
  sum.todo = #todo
  local workers = math.max(1, math.min(o.workers or cfg.workers or sl.threads(), #todo))
  local timeout = o.timeout or cfg.timeout
  local shard = o.shard and string.format(" (shard %d/%d of %d)", o.shard[1], o.shard[2], #all) or ""
  local skipped = ""
  if sum.skipped_ok + sum.skipped_failed > 0 then
    skipped = string.format("; %d already in %s (%d ok, %d failed%s)", sum.skipped_ok + sum.skipped_failed, o.db,
      sum.skipped_ok, sum.skipped_failed, sum.skipped_failed > 0 and ", not retried without --resume" or "")
  end
  if sum.skipped_claimed > 0 then
    skipped = skipped .. string.format("; %d claimed by another running sweep (skipped; run again once it ends " ..
      "to pick up any it leaves)", sum.skipped_claimed)
  end
  local running = #todo == 0 and "" or string.format("; running %d with %d worker%s%s", #todo, workers,
    workers == 1 and "" or "s", timeout and timeout > 0 and string.format(", timeout %g s", timeout) or "")
  say(string.format("sweep %s: %d points%s%s%s", where, #points, shard, skipped, running))
  if o.dry_run or #todo == 0 then
    db:close()
    sum.list = todo
    return sum
  end
  local cfg_json
  do
    local ok, j = pcall(sl.json_encode, cfg)
    cfg_json = ok and j or nil
  end
  local ok_run, run_id = pcall(db.begin_run, db, {script = o.config_path, argv = o.argv, config = cfg_json})
  if not ok_run then
    pcall(db.query, db, "DELETE FROM claim WHERE owner = ?", me)
    db:close()
    error(run_id, 0)
  end
  sum.run_id = run_id
  db:query("UPDATE claim SET run_id = ? WHERE owner = ?", run_id, me)
  local function release()
    db:query("DELETE FROM claim WHERE owner = ?", me)
  end
  local lines = {}
  for i, p in ipairs(todo) do
    lines[i] = S.encode{method = p.method, params = p.params, budget = p.budget, target = p.target,
      workload = p.workload, backend = p.backend, causal = p.causal, reps = p.reps}
  end
  local pending, opened = 0, 0
  local function flush()
    if pending > 0 then
      db:query("UPDATE claim SET beat = ? WHERE owner = ?", os.time(), me)
      db:commit()
      pending = 0
    end
  end
  local function on_result(i, line, err, sig, seconds)
    local p = todo[i]
    local reply
    if line then
      local ok, v = pcall(S.decode, line)
      reply = ok and type(v) == "table" and v or {ok = false, error = "unreadable reply from the worker: " .. line:sub(1, 200)}
    end
    local rec, failed = record_fields(p, run_id, reply, err, sig, seconds)
    if pending == 0 then
      db:begin()
      opened = sl.time()
    end
    if p.replace then db:query("DELETE FROM result WHERE point_key = ? AND status = 'failed'", p.key) end
    db:record(rec)
    db:query("DELETE FROM claim WHERE point_key = ? AND owner = ?", p.key, me)
    pending = pending + 1
    if pending >= S.BATCH then flush() end
    return failed
  end
  local function on_tick()
    if pending > 0 and sl.time() - opened >= S.BATCH_SECONDS then flush() end
  end
  local program, args = o.program or "/proc/self/exe", o.args or {"sweep", "--worker"}
  local ok, res = pcall(sl.runner_c.run, {program = program, args = args, points = lines, workers = workers,
    timeout = timeout, progress = o.progress, label = "sweep", on_result = on_result, on_tick = on_tick})
  if not ok then
    pcall(flush)
    pcall(release)
    pcall(db.finish_run, db, run_id, "failed")
    db:close()
    error(res, 0)
  end
  flush()
  release()
  db:finish_run(run_id, res.interrupted and "interrupted" or "ok")
  db:close()
  sum.done, sum.failed, sum.interrupted, sum.seconds = res.done, res.failed, res.interrupted, res.seconds
  return sum
end

return S
