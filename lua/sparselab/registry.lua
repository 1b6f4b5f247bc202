-- sparselab.registry — the method registry: every recipe under
-- sparselab/methods/ (one per card id), plus methods registered at run time
-- (a corrected method, a user's own recipe). A method is a table:
--   id, title (paper or seed title), card, family, phase, summary,
--   knob (the one budget parameter), params = {name = {default=, min=, max=, int=, doc=}},
--   ops (the ops it runs: backends are derived from them),
--   run(prob, p) -> {o =, lse =, mask = (optional), stats = {flops =, density =, ...}}
local sl = require "sparselab"

local R = {}
local registered = {}   -- id -> method (runtime registrations)
local loaded = {}       -- id -> method (from embedded recipes)

local PREFIX = "sparselab.methods."

local function validate(m, where)
  for _, k in ipairs{"id", "title", "family", "phase", "run", "params"} do
    if m[k] == nil then error(where .. ": method lacks '" .. k .. "'", 3) end
  end
  if m.knob and not m.params[m.knob] then
    error(where .. ": knob '" .. m.knob .. "' is not among its params", 3)
  end
  return m
end

--- Ids of every known method, sorted.
function R.ids()
  local seen, ids = {}, {}
  for _, mod in ipairs(sl.embedded_modules()) do
    if mod:sub(1, #PREFIX) == PREFIX then
      local id = mod:sub(#PREFIX + 1)
      if not seen[id] then seen[id] = true; ids[#ids + 1] = id end
    end
  end
  for id in pairs(registered) do
    if not seen[id] then seen[id] = true; ids[#ids + 1] = id end
  end
  table.sort(ids)
  return ids
end

--- The method called id (error listing the known ids when there is none).
--- "base+corr[+corr2...]" is the method base corrected by corr, then corr2
--- (sl.correct.apply), built on first use and kept.
function R.get(id)
  if type(id) == "table" then return validate(id, "method") end
  if registered[id] then return registered[id] end
  if loaded[id] then return loaded[id] end
  if type(id) == "string" and id:find("+", 1, true) then
    local parts = {}
    for part in id:gmatch("[^+]+") do parts[#parts + 1] = part end
    if #parts < 2 or id:sub(1, 1) == "+" or id:sub(-1) == "+" or id:find("++", 1, true) then
      error(string.format("method id '%s': expected base+correction[+correction...]", id), 0)
    end
    local correct = require "sparselab.correct"
    local m = R.get(parts[1])
    for i = 2, #parts do m = correct.apply(m, parts[i]) end
    loaded[id] = m
    return m
  end
  local ok, m = pcall(require, PREFIX .. id)
  if not ok then
    if tostring(m):find("module '" .. PREFIX .. id .. "' not found", 1, true) then
      error(string.format("unknown method '%s' (known: %s)", tostring(id), table.concat(R.ids(), ", ")), 0)
    end
    error(m, 0)
  end
  loaded[id] = validate(m, "method " .. id)
  return loaded[id]
end

--- Registers a method table under m.id (replacing any earlier registration).
function R.register(m)
  validate(m, "sl.methods.register")
  registered[m.id] = m
  return m
end

--- Backends on which every op the method uses has a kernel.
function R.backends(m)
  local ops = {}
  for _, o in ipairs(sl.ops()) do ops[o.name] = o.backends end
  local out = {}
  for _, b in ipairs(sl.backends()) do
    local ok = true
    for _, name in ipairs(m.ops or {}) do
      if not (ops[name] and ops[name][b.name]) then ok = false end
    end
    if ok then out[#out + 1] = b.name end
  end
  return out
end

--- Resolves a method's parameters: defaults, then `params`, then the budget
--- on the knob. Unknown names and out-of-range values are errors.
function R.resolve(m, params, budget)
  local p = {}
  for k, spec in pairs(m.params) do p[k] = spec.default end
  for k, v in pairs(params or {}) do
    local spec = m.params[k]
    if not spec then
      local names = {}
      for n in pairs(m.params) do names[#names + 1] = n end
      table.sort(names)
      error(string.format("%s: unknown parameter '%s' (expected one of: %s)", m.id, tostring(k),
        table.concat(names, ", ")), 0)
    end
    p[k] = v
  end
  if budget ~= nil then
    if not m.knob then error(m.id .. ": has no budget knob; set parameters with --param", 0) end
    p[m.knob] = budget
  end
  for k, spec in pairs(m.params) do
    local v = p[k]
    if spec.int then
      local i = type(v) == "number" and math.tointeger(v)
      if not i then
        error(string.format("%s: parameter '%s' must be an integer (within 64 bits), found %s", m.id, k,
          tostring(v)), 0)
      end
      p[k] = i
    end
    if type(v) == "number" and ((spec.min and v < spec.min) or (spec.max and v > spec.max)) then
      error(string.format("%s: parameter '%s' = %s is outside [%s, %s]", m.id, k, tostring(v),
        tostring(spec.min or "-inf"), tostring(spec.max or "inf")), 0)
    end
  end
  return p
end

return R
