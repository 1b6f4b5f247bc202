-- sparselab.mask — lazy mask patterns (causal, window, sink, full) that
-- compose with `+` (union) and materialise into block masks at a size.
-- Materialised masks are C objects (l_mask.c); `pattern + mask` and
-- `mask + pattern` both give a mask.
local sl = require "sparselab"

local M = {}
local Pattern = {}
Pattern.__index = Pattern

local function new(terms, label)
  return setmetatable({terms = terms, label = label}, Pattern)
end

local function int_arg(fname, key, x, min)
  if type(x) == "table" then x = x[key] end
  if math.type(x) ~= "integer" and not (type(x) == "number" and x == math.floor(x)) then
    error(string.format("sl.mask.%s: %s must be an integer, found %s", fname, key, tostring(x)), 3)
  end
  x = math.tointeger(x)
  if x < min then
    error(string.format("sl.mask.%s: %s = %d is below %d", fname, key, x, min), 3)
  end
  return x
end

--- Every pair (not causal).
function M.full() return new({{kind = "full"}}, "full") end
--- Key j visible to query i iff j <= i.
function M.causal() return new({{kind = "causal"}}, "causal") end
--- Causal window: 0 <= i - j < w (w counts the query itself; card sliding_window).
function M.window(w)
  w = int_arg("window", "w", w, 1)
  return new({{kind = "window", a = w}}, "window(" .. w .. ")")
end
--- Sink tokens: j < s (and j <= i).
function M.sink(s)
  s = int_arg("sink", "s", s, 0)
  return new({{kind = "sink", a = s}}, "sink(" .. s .. ")")
end

function Pattern.__add(a, b)
  if getmetatable(a) == Pattern and getmetatable(b) == Pattern then
    local terms = {}
    for _, t in ipairs(a.terms) do terms[#terms + 1] = t end
    for _, t in ipairs(b.terms) do terms[#terms + 1] = t end
    return new(terms, a.label .. " + " .. b.label)
  end
  -- one side is a materialised mask: materialise the pattern like it
  if getmetatable(a) == Pattern then return a:materialize_like(b) + b end
  return a + b:materialize_like(a)
end

function Pattern.__tostring(p)
  return "pattern " .. p.label .. " (materialise with :materialize{n_q=, n_k=, bq=, bk=})"
end

--- Materialises at sizes: {n_q =, n_k = (default n_q), bq = 64, bk = 64}.
function Pattern:materialize(o)
  if type(o) ~= "table" then error("materialize: expected a table {n_q=, n_k=, bq=, bk=}", 2) end
  for k in pairs(o) do
    if k ~= "n_q" and k ~= "n_k" and k ~= "bq" and k ~= "bk" then
      error("materialize: unknown key '" .. tostring(k) .. "' (expected n_q, n_k, bq, bk)", 2)
    end
  end
  local n_q = o.n_q or o.n_k
  if not n_q then error("materialize: n_q or n_k is required", 2) end
  return sl.mask_c.pattern(self.terms, n_q, o.n_k or n_q, o.bq or 64, o.bk or 64)
end

function Pattern:materialize_like(mask)
  local i = mask:info()
  return self:materialize{n_q = i.n_q, n_k = i.n_k, bq = i.bq, bk = i.bk}
end

--- Density of the pattern at a size (kept pairs / causal pairs).
function Pattern:density(o)
  local m <close> = self:materialize(o)
  return m:density(true)
end

M.Pattern = Pattern
function M.is_pattern(x) return getmetatable(x) == Pattern end

return M
