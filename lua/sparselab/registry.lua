-- sparselab.registry — the method registry: every recipe under
-- sparselab/methods/ (one per card id), plus methods registered at run time
-- (a corrected method, a user's own recipe). A method is a table:
--   id, title (paper or seed title), card, family, phase, summary,
--   knob (the one budget parameter), params = {name = {default=, min=, max=, int=, doc=}},
--   ops (the ops it runs: backends are derived from them),
--   backends (optional: the backends a recipe that runs no op, a Lua loop on
--     the host, can honestly claim; without it `ops = {}` would list every one),
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

--- Backends on which every op the method uses has a kernel (and, when the
--- method declares `backends`, only those of them).
function R.backends(m)
  local ops = {}
  for _, o in ipairs(sl.ops()) do ops[o.name] = o.backends end
  local only
  if m.backends then only = {} for _, name in ipairs(m.backends) do only[name] = true end end
  local out = {}
  for _, b in ipairs(sl.backends()) do
    local ok = not only or only[b.name] == true
    for _, name in ipairs(m.ops or {}) do
      if not (ops[name] and ops[name][b.name]) then ok = false end
    end
    if ok then out[#out + 1] = b.name end
  end
  return out
end

-- ---- block sizes: one naming scheme across methods (issue 18) ----------------------------
-- Recipes name their executor / estimator blocks either `block` (one size) or `bq`/`bk`
-- (query rows, keys). Every block-based method accepts `block` (one size for both), and one with
-- bq/bk also `block_q` / `block_k`; R.resolve maps them onto the recipe's own names. A method
-- whose `block` means something else beside bq/bk (power_attention, s2_attention) keeps its own
-- `block`; there only block_q/block_k are aliases.
-- Relative defaults: for the dynamic prefill families below, when the problem is short for the
-- recipe's default blocks (fewer than RELATIVE_BLOCKS key blocks), blocks not given by the caller
-- are divided by the smallest power of two that brings the largest to at most a power of two
-- <= n_k / RELATIVE_BLOCKS (ratios between bq and bk kept; never below a parameter's min). The
-- blocks of these families are the executor's / estimator's tile, which the cards size for GPU
-- tiles at long context (4K-128K tokens); at ~500 tokens 128-token blocks leave 4 key blocks, and
-- the always-kept diagonal alone is then above any density below ~0.4. A recipe opts out with
-- `block_fixed = "reason"`.
local RELATIVE_FAMILIES = {["block-estimate"] = true, ["stripe-estimate"] = true, ["token-estimate"] = true,
  ["head-estimate"] = true}
local RELATIVE_BLOCKS = 16

--- The block-size aliases of m: {alias = {recipe names}} (empty when it has no block sizes).
function R.block_aliases(m)
  local a, p = {}, m.params
  if p.bq and p.bk then
    a.block_q, a.block_k = {"bq"}, {"bk"}
    if not p.block then a.block = {"bq", "bk"} end
  end
  return a
end

--- The recipe's block parameters scaled with the input length (nil when none are): see above.
function R.block_relative(m)
  if m.block_fixed or not RELATIVE_FAMILIES[m.family] or not (m.phase == "prefill" or m.phase == "both") then
    return nil
  end
  if m.params.bq and m.params.bk then
    if m.params.block then return nil end
    return {"bq", "bk"}
  end
  if m.params.block then return {"block"} end
  return nil
end

--- One line for `sparselab methods ID`: the block names and the relative default rule.
function R.block_doc(m)
  local parts = {}
  local al = R.block_aliases(m)
  local names = {}
  for k in pairs(al) do names[#names + 1] = k end
  table.sort(names)
  for _, k in ipairs(names) do parts[#parts + 1] = k .. " = " .. table.concat(al[k], " and ") end
  local rel = R.block_relative(m)
  local s = #parts > 0 and ("aliases: " .. table.concat(parts, ", ")) or ""
  if rel then
    s = s .. (s ~= "" and "; " or "") .. string.format("defaults (%s) relative to the input: when n_k / %d is "
      .. "below the largest, divided by a power of two to at most the largest power of two <= n_k / %d",
      table.concat(rel, ", "), RELATIVE_BLOCKS, RELATIVE_BLOCKS)
  elseif m.block_fixed then
    s = s .. (s ~= "" and "; " or "") .. "fixed defaults: " .. tostring(m.block_fixed)
  end
  return s ~= "" and s or nil
end

local function apply_block_aliases(m, params)
  local al = R.block_aliases(m)
  if next(al) == nil or params == nil then return params end
  local out, given = {}, {}
  for k, v in pairs(params) do
    if not al[k] then out[k] = v; given[k] = true end
  end
  for _, alias in ipairs{"block", "block_q", "block_k"} do
    local v = params[alias]
    if v ~= nil and al[alias] then
      for _, name in ipairs(al[alias]) do
        if given[name] and out[name] ~= v then
          error(string.format("%s: parameter '%s' = %s and '%s' = %s disagree (%s is an alias of %s)", m.id, alias,
            tostring(v), name, tostring(out[name]), alias, table.concat(al[alias], " and ")), 0)
        end
        out[name] = v
        given[name] = true
      end
    end
  end
  return out
end

local function relative_blocks(m, p, params, prob)
  local names = R.block_relative(m)
  if not names or not prob or not prob.k or type(prob.k.shape) ~= "function" then return end
  for _, n in ipairs(names) do if params and params[n] ~= nil then return end end
  local n_k = prob.k:shape()[2]
  if not n_k then return end
  local cap = 1
  while cap * 2 <= n_k / RELATIVE_BLOCKS do cap = cap * 2 end
  local largest = 0
  for _, n in ipairs(names) do
    if type(p[n]) ~= "number" then return end
    largest = math.max(largest, p[n])
  end
  local f = 1
  while largest / f > cap do f = f * 2 end
  if f == 1 then return end
  for _, n in ipairs(names) do
    local spec = m.params[n]
    p[n] = math.max(p[n] // f, spec.min or 1, 1)
  end
end

--- Resolves a method's parameters: defaults, then `params`, then the budget
--- on the knob. Unknown names and out-of-range values are errors. Block-size
--- aliases (block, block_q, block_k) are mapped onto the recipe's names; with
--- prob, block defaults of the dynamic prefill families follow the input length
--- (see R.block_relative).
function R.resolve(m, params, budget, prob)
  local p = {}
  for k, spec in pairs(m.params) do p[k] = spec.default end
  params = apply_block_aliases(m, params)
  relative_blocks(m, p, params, prob)
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
