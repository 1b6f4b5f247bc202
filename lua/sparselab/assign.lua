-- sparselab.assign — per-layer and per-head method assignment: schedules for
-- sl.model (m:run{attention = schedule}, in the form model.lua reads: a
-- spec, a table {default =, layers =, heads =} or a function (layer, head) ->
-- spec), and a per-head method for kernel-level use (sl.eval).
-- A spec is nil / "dense", a method id, a method table or
-- {method =, budget =, params =}; layers and heads are 0-based.
--   sl.assign.layers{default = spec, [0] = spec, [5] = spec, ...}
--   sl.assign.heads{default = spec, [0] = spec, ...}    (every layer)
--   sl.assign.layers{default = sl.assign.heads{...}, [0] = "dense"}  (nested)
--   sl.assign.heads_method{id =, heads = {[h] = spec}, default = spec}
local sl = require "sparselab"

local A = {}

local function is_spec(s)
  return s == nil or type(s) == "string" or (type(s) == "table" and (s.run ~= nil or s.method ~= nil))
end

-- A schedule made here (a function tagged by this table) or a nested one.
local made = setmetatable({}, {__mode = "k"})

local function check(fname, t)
  if type(t) ~= "table" then sl.fail("sl.assign.%s: expected a table {default =, [index] = spec}", fname) end
  for k, v in pairs(t) do
    if k ~= "default" and not (math.type(k) == "integer" and k >= 0) then
      sl.fail("sl.assign.%s: unknown key '%s' (expected default or a 0-based integer index)", fname, tostring(k))
    end
    if not is_spec(v) and not made[v] then
      sl.fail("sl.assign.%s: entry %s is neither a spec ({method=, budget=, params=}, an id, a method) nor a schedule",
        fname, tostring(k))
    end
  end
end

-- resolves a nested schedule at (layer, head)
local function resolve(s, layer, head)
  if made[s] then return s(layer, head) end
  return s
end

--- Per-layer schedule: {default = spec, [layer] = spec}.
function A.layers(t)
  check("layers", t)
  local nested = made[t.default] ~= nil
  for _, v in pairs(t) do if made[v] then nested = true end end
  if not nested then
    local layers = {}
    for k, v in pairs(t) do if k ~= "default" then layers[k] = v end end
    -- model.lua's table form; "dense" stays a spec (nil would fall back to default)
    return {default = t.default or "dense", layers = layers}
  end
  local f = function(layer, head)
    local s = t[layer]
    if s == nil then s = t.default end
    return resolve(s, layer, head)
  end
  made[f] = true
  return f
end

--- Per-head schedule (the same in every layer): {default = spec, [head] = spec}.
--- Heads are query heads; the hook runs each head with its KV head.
function A.heads(t)
  check("heads", t)
  local f = function(layer, head)
    local s = head ~= nil and t[head] or nil
    if s == nil then s = t.default end
    return resolve(s, layer, head)
  end
  made[f] = true
  return f
end

local function normalise(spec)
  if spec == nil or spec == "dense" then return {method = sl.methods.get("dense")} end
  if type(spec) == "string" or (type(spec) == "table" and spec.run) then return {method = sl.methods.get(spec)} end
  return {method = sl.methods.get(spec.method), budget = spec.budget, params = spec.params}
end

--- A method that runs each query head h with heads[h] (0-based; default for
--- the others) on q[h] and its KV head, and concatenates o and lse. Stats:
--- flops summed, density the mean over heads.
function A.heads_method(o)
  if type(o) ~= "table" or type(o.id) ~= "string" then sl.fail("sl.assign.heads_method: give {id =, heads =, default =}") end
  for k in pairs(o) do
    if k ~= "id" and k ~= "heads" and k ~= "default" and k ~= "title" then
      sl.fail("sl.assign.heads_method: unknown key '%s' (expected id, heads, default, title)", tostring(k))
    end
  end
  local heads = o.heads or {}
  check("heads_method", heads)
  local ops, seen = {}, {}
  local function add_ops(spec)
    for _, name in ipairs(normalise(spec).method.ops or {}) do
      if not seen[name] then seen[name] = true; ops[#ops + 1] = name end
    end
  end
  add_ops(o.default)
  for _, s in pairs(heads) do add_ops(s) end
  return {
    id = o.id,
    title = o.title or ("per-head assignment " .. o.id),
    family = "assign",
    phase = "both",
    summary = "Each query head runs its own method; outputs concatenated over heads.",
    params = {},
    ops = ops,
    run = function(prob, _)
      local hq, hkv = prob.q:shape()[1], prob.k:shape()[1]
      local group = hq // hkv
      local os_, ls, flops, dens = {}, {}, 0, 0
      for h = 0, hq - 1 do
        local spec = heads[h]
        if spec == nil then spec = o.default end
        local s = normalise(spec)
        local g = h // group
        local sub = sl.problem{q = prob.q:narrow(1, h + 1, 1), k = prob.k:narrow(1, g + 1, 1),
          v = prob.v:narrow(1, g + 1, 1), causal = prob.causal, backend = prob.backend, phase = prob.phase,
          layer = prob.layer, head = h}
        local r = s.method.run(sub, sl.registry.resolve(s.method, s.params, s.budget))
        os_[h + 1], ls[h + 1] = r.o, r.lse
        flops = flops + ((r.stats and r.stats.flops) or 0)
        dens = dens + ((r.stats and r.stats.density) or 1)
      end
      return {o = sl.cat(os_, 1), lse = sl.cat(ls, 1), stats = {flops = flops, density = dens / hq}}
    end,
  }
end

return A
