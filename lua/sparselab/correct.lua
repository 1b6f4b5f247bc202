-- sparselab.correct — corrections as composable stages (DESIGN §4, issue 5).
-- A correction module (sparselab/corrections/<card id>.lua) returns
--   {id, card, title, summary, aliases = {"delta"}, params = {...}, ops = {...},
--    before = fn(prob, p) -> prob' [, carry] (optional),
--    after = fn(prob, p, base_out, carry) -> out (optional), checks = {...}}
-- where p holds the correction's own parameters (under its own names) and
-- `after` sees the ORIGINAL problem (before's prob' is for the base method;
-- `carry` is whatever `before` returned second). `after` returns
-- {o =, lse =, stats = {correction_flops =, <extras> ...}}.
--
-- sl.correct.<id or alias>{params}(method) and sl.correct.apply(method, id,
-- params) return a NEW method table: id "<base id>+<correction id>", family,
-- phase, knob and knob_direction of the base, params = base params ∪
-- correction params (a correction parameter named like one of the base's is
-- renamed "<correction id>.<name>"), the given params becoming its defaults,
-- ops = base ops ∪ correction ops. It is evaluated, swept, budget-matched
-- (mask = the base's mask on the problem `before` gives) and recorded like
-- any method; the registry resolves "base+corr[+corr2]" ids through apply.
-- Its run's stats: the base's, plus correction_flops and correction_ms (wall
-- time of before + after), base_flops, and flops = base executor +
-- correction FLOPs.
local sl = require "sparselab"

local C = {}

-- The C ops of the correct family (the generic binding put them at
-- sl.correct before this module replaced that table).
C.ops = {}
for name, f in pairs(rawget(sl, "correct") or {}) do C.ops[name] = f end

--- The C op correct.<name> (for correction modules; an error names it when
--- this build lacks it).
function C.op(name)
  local f = C.ops[name]
  if type(f) ~= "function" then sl.fail("the op correct.%s is not available", name) end
  return f
end

local PREFIX = "sparselab.corrections."
local cache = {}     -- id -> module
local alias_of = nil -- alias -> id, built on first need

local function validate(c, where)
  for _, k in ipairs{"id", "title", "params"} do
    if c[k] == nil then error(where .. ": correction lacks '" .. k .. "'", 0) end
  end
  if not c.before and not c.after then error(where .. ": correction has neither before nor after", 0) end
  return c
end

--- Ids (card ids) of every correction module, sorted.
function C.ids()
  local ids = {}
  for _, mod in ipairs(sl.embedded_modules()) do
    if mod:sub(1, #PREFIX) == PREFIX then ids[#ids + 1] = mod:sub(#PREFIX + 1) end
  end
  table.sort(ids)
  return ids
end

local function load(id)
  if cache[id] then return cache[id] end
  local ok, c = pcall(require, PREFIX .. id)
  if not ok then
    if tostring(c):find("module '" .. PREFIX .. id .. "' not found", 1, true) then return nil end
    error(c, 0)
  end
  cache[id] = validate(c, "correction " .. id)
  return cache[id]
end

--- The correction module called id (a card id or one of its aliases).
function C.get(id)
  if type(id) == "table" then return validate(id, "correction") end
  if type(id) ~= "string" then sl.fail("sl.correct: expected a correction id, found %s", type(id)) end
  local c = load(id)
  if c then return c end
  if not alias_of then
    alias_of = {}
    for _, cid in ipairs(C.ids()) do
      for _, a in ipairs(load(cid).aliases or {}) do alias_of[a] = cid end
    end
  end
  if alias_of[id] then return load(alias_of[id]) end
  local names = {}
  for _, cid in ipairs(C.ids()) do
    local a = load(cid).aliases
    names[#names + 1] = cid .. (a and #a > 0 and (" (" .. table.concat(a, ", ") .. ")") or "")
  end
  sl.fail("unknown correction '%s' (known: %s)", id, table.concat(names, ", "))
end

--- Fails on a parameter the correction does not have.
function C.check_params(corr, params)
  for k in pairs(params or {}) do
    if not corr.params[k] then
      local names = {}
      for n in pairs(corr.params) do names[#names + 1] = n end
      table.sort(names)
      sl.fail("%s: unknown parameter '%s' (expected one of: %s)", corr.id, tostring(k), table.concat(names, ", "))
    end
  end
end

local function copy(t)
  local o = {}
  for k, v in pairs(t or {}) do o[k] = v end
  return o
end

--- A new method: `method` (id or table) followed by correction `id` with
--- `params` as the defaults of the correction's parameters (names as the
--- correction knows them).
function C.apply(method, id, params)
  local base = sl.methods.get(method)
  local corr = C.get(id)
  params = params or {}
  -- the composed method's name for each correction parameter
  local name_of, spec_of = {}, {}
  for pname, spec in pairs(corr.params) do
    local full = base.params[pname] and (corr.id .. "." .. pname) or pname
    name_of[pname] = full
    spec_of[full] = pname
  end
  C.check_params(corr, params)
  local mparams = {}
  for k, spec in pairs(base.params) do mparams[k] = spec end
  for pname, spec in pairs(corr.params) do
    local s = copy(spec)
    if params[pname] ~= nil then s.default = params[pname] end
    s.doc = "[" .. corr.id .. "] " .. (spec.doc or "")
    mparams[name_of[pname]] = s
  end
  -- the given defaults must be valid values (checked once, here)
  local m = {
    id = base.id .. "+" .. corr.id,
    title = base.title .. " + " .. corr.title,
    card = base.card,
    corrections = {},
    base = base,
    family = base.family,
    phase = base.phase,
    causal_only = base.causal_only,
    summary = (base.summary or "") .. " Corrected by " .. corr.id .. ": " .. (corr.summary or ""),
    knob = base.knob,
    knob_direction = base.knob_direction,
    params = mparams,
    checks = base.checks,
  }
  for _, c in ipairs(base.corrections or {}) do m.corrections[#m.corrections + 1] = c end
  m.corrections[#m.corrections + 1] = corr.id
  local ops, seen = {}, {}
  for _, list in ipairs{base.ops or {}, corr.ops or {}} do
    for _, o in ipairs(list) do
      if not seen[o] then seen[o] = true; ops[#ops + 1] = o end
    end
  end
  m.ops = ops

  -- the composed params split into the base's and the correction's
  local function split(p)
    local bp, cp = {}, {}
    for k, v in pairs(p) do
      if spec_of[k] then cp[spec_of[k]] = v elseif base.params[k] then bp[k] = v end
    end
    for pname, spec in pairs(corr.params) do
      if cp[pname] == nil then cp[pname] = spec.default end
    end
    return bp, cp
  end

  if base.mask then
    m.mask = function(prob, p)
      local bp, cp = split(p)
      local prob2 = corr.before and corr.before(prob, cp) or prob
      return base.mask(prob2, bp)
    end
  end
  if base.semantic_mask then
    m.semantic_mask = function(prob, p)
      local bp, cp = split(p)
      local prob2 = corr.before and corr.before(prob, cp) or prob
      return base.semantic_mask(prob2, bp)
    end
  end

  m.run = function(prob, p)
    local bp, cp = split(p)
    local t0 = sl.time()
    local prob2, carry = prob, nil
    if corr.before then prob2, carry = corr.before(prob, cp) end
    local t_before = sl.time() - t0
    local base_out = base.run(prob2, bp)
    local bstats = base_out.stats or {}
    local stats = copy(bstats)
    local out, own = base_out, 0
    local t1 = sl.time()
    if corr.after then
      out = corr.after(prob, cp, base_out, carry)
      for k, v in pairs(out.stats or {}) do
        if k == "correction_flops" then own = v else stats[k] = v end
      end
    end
    local t_after = sl.time() - t1
    -- stacked corrections add up; base_flops stays the innermost executor's
    stats.correction_flops = (bstats.correction_flops or 0) + own
    stats.correction_ms = (bstats.correction_ms or 0) + (t_before + t_after) * 1e3
    stats.base_flops = bstats.base_flops or bstats.flops or 0
    stats.flops = stats.base_flops + stats.correction_flops
    return {o = out.o, lse = out.lse, mask = base_out.mask, semantic_mask = base_out.semantic_mask, stats = stats}
  end
  -- fail early on bad defaults (e.g. gamma = 0)
  sl.registry.resolve(m, {}, nil)
  return m
end

-- sl.correct.<name> serves two callers under one name: the C op of that
-- name (correct.delta, correct.rectify, ...) when called with a tensor first,
-- and the wrapper sl.correct.<id or alias>{params}(method) -> corrected
-- method when called with a parameter table (or nothing).
setmetatable(C, {__index = function(_, key)
  if type(key) ~= "string" then return nil end
  local op = C.ops[key]
  local corr
  if op then
    local ok, c = pcall(C.get, key)
    corr = ok and c or nil
    if not corr then return op end
  else
    corr = C.get(key)
  end
  return function(first, ...)
    if op and type(first) == "userdata" then return op(first, ...) end
    if first ~= nil and type(first) ~= "table" then
      sl.fail("sl.correct.%s: expected a parameter table (the wrapper) or tensors (the op), found %s", key, type(first))
    end
    C.check_params(corr, first)
    return function(method) return C.apply(method, corr.id, first) end
  end
end})

return C
