-- harness.lua — a small test runner for the Lua tests: test(name, fn),
-- assertions that say what was expected and found, and a closing line
-- "N passed, N failed" (exit status 1 when any failed).
local H = {passed = 0, failed = 0}

-- SL_TEST_ONLY=ID runs only the tests whose name starts with the word ID
-- (the mutation harness, tests/lua/test_mutation.lua); SL_MUTATE=score_blind
-- replaces the estimators' scores by score-blind ones (tests/lua/mutate.lua).
local ONLY = os.getenv("SL_TEST_ONLY")
if os.getenv("SL_MUTATE") then require("mutate") end

function H.test(name, fn)
  if ONLY and not (name:sub(1, #ONLY) == ONLY and not name:sub(#ONLY + 1, #ONLY + 1):match("[%w_]")) then return end
  local ok, err = xpcall(fn, debug.traceback)
  if ok then
    H.passed = H.passed + 1
  else
    H.failed = H.failed + 1
    io.stderr:write("FAIL ", name, ": ", tostring(err), "\n")
  end
end

function H.near(got, want, tol, what)
  if type(got) ~= "number" or got ~= got or math.abs(got - want) > tol then
    error(string.format("%s: expected %.9g (tol %g), found %s", what or "value", want, tol, tostring(got)), 2)
  end
end

function H.eq(got, want, what)
  if got ~= want then
    error(string.format("%s: expected %s, found %s", what or "value", tostring(want), tostring(got)), 2)
  end
end

function H.truthy(v, what)
  if not v then error((what or "condition") .. " is false", 2) end
end

--- fn must raise an error whose message contains `pattern` (plain text).
function H.raises(fn, pattern, what)
  local ok, err = pcall(fn)
  if ok then error((what or "call") .. ": expected an error containing '" .. pattern .. "', none raised", 2) end
  if not tostring(err):find(pattern, 1, true) then
    error(string.format("%s: expected an error containing '%s', found '%s'", what or "call", pattern, tostring(err)), 2)
  end
end

--- Deep equality of nested tables of plain values (H.eq per leaf, lengths first).
function H.same(a, b, what)
  if type(a) ~= "table" then H.eq(a, b, what); return end
  H.eq(#a, #b, what .. ": length")
  for i = 1, #a do H.same(a[i], b[i], what) end
end

--- A mask's arrays (mask:arrays()) as Lua tables ({} for an empty one), closed after reading.
function H.mask_arrays(mask)
  local out = {}
  for i, t in ipairs({mask:arrays()}) do
    out[i] = t:numel() > 0 and t:totable() or {}
    t:close()
  end
  return out
end

--- The largest |a - b| over two tensors of one shape; -inf must meet -inf
--- (else math.huge).
function H.max_diff(a, b)
  local m = 0
  local function walk(x, y)
    if type(x) == "table" then
      for i = 1, #x do walk(x[i], y[i]) end
    elseif x == -math.huge or y == -math.huge then
      if x ~= y then m = math.huge end
    else
      m = math.max(m, math.abs(x - y))
    end
  end
  walk(a:totable(), b:totable())
  return m
end

--- The shipped TinyStories model, loaded once per process: the project's own
--- copy in experiments/data/tinystories260k (or $SPARSELAB_DATA). Returns
--- capture(name, layer): the Q/K/V problem of texts/<name>.txt at layer
--- (0-based); nil, with a SKIP line, when the model is not there.
local TS_CAPTURE
function H.tinystories()
  if TS_CAPTURE ~= nil then return TS_CAPTURE or nil end
  local sl = require "sparselab"
  local dir = os.getenv("SPARSELAB_DATA") or "experiments/data/tinystories260k"
  if dir:sub(-1) ~= "/" then dir = dir .. "/" end
  local f = io.open(dir .. "model.bin", "rb")
  if not f then print("SKIP: no TinyStories model at " .. dir) TS_CAPTURE = false return nil end
  f:close()
  local m = sl.model.load(dir .. "model.bin", {tokenizer = dir .. "tok512.bin"})
  TS_CAPTURE = function(name, layer)
    local fh = assert(io.open(dir .. "texts/" .. name .. ".txt"))
    local text = fh:read("a")
    fh:close()
    local c = m:capture{text = text, layers = {layer}}[layer + 1]
    return sl.problem{q = c.q, k = c.k, v = c.v}
  end
  return TS_CAPTURE
end

function H.done()
  print(string.format("%d passed, %d failed", H.passed, H.failed))
  os.exit(H.failed == 0 and 0 or 1)
end

return H
