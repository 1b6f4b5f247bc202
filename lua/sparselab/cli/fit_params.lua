-- sparselab.cli.fit_params — `sparselab fit-params METHOD --qkv F... --out
-- W.safetensors [--steps N] [--seed S] [--param K=V]...` (issue 14): fits
-- the small learned parts of a trainable method (its recipe's `fit`) on
-- captured Q/K/V and writes them as a safetensors file that the method
-- loads back through its `weights` parameter. Prints one line: the method,
-- the optimiser, the loss before and after, and the file's params_source.
local sl = require "sparselab"
local T = require "sparselab.trainable"

local function value_of(v)
  local x = tonumber(v)
  if x then return math.tointeger(x) or x end
  if v == "true" then return true elseif v == "false" then return false end
  return v
end

return function(argv, parse, out)
  local o, pos = parse(argv, 2, {qkv = "multi", out = "value", steps = "value", seed = "value", param = "multi",
    backend = "value", json = "flag"}, {"METHOD"})
  local id = pos[1]
  if not id or not o.qkv or not o.out then
    sl.fail("usage: sparselab fit-params METHOD --qkv FILE [--qkv FILE2]... --out W.safetensors [--steps N] [--seed S]")
  end
  local m = sl.methods.get(id)
  if not m.fit then
    sl.fail("%s: nothing to fit here (%s)", m.id, m.fit_why or "the method has no learned part this workbench fits")
  end
  local steps = tonumber(o.steps or "200")
  steps = steps and math.tointeger(steps)
  if not steps or steps < 1 then sl.fail("--steps expects a positive integer, found '%s'", tostring(o.steps)) end
  local seed = tonumber(o.seed or "1")
  seed = seed and math.tointeger(seed)
  if not seed then sl.fail("--seed expects an integer, found '%s'", tostring(o.seed)) end
  local given = {}
  for _, kv in ipairs(o.param or {}) do
    local key, val = kv:match("^([%w_]+)=(.*)$")
    if not key then sl.fail("--param expects K=V, found '%s'", kv) end
    given[key] = value_of(val)
  end
  if given.weights then sl.fail("fit-params: --param weights is the output; give --out instead") end
  local params = sl.registry.resolve(m, given)
  local probs = {}
  for i, path in ipairs(o.qkv) do
    local t = sl.load(path)
    if type(t) ~= "table" or not (t.q and t.k and t.v) then
      sl.fail("%s: expected a safetensors file (or directory) with tensors q, k, v", path)
    end
    probs[i] = sl.problem{q = t.q, k = t.k, v = t.v, backend = o.backend or "cpu", workload = "qkv:" .. path}
  end
  local ws, rep = m.fit(probs, {params = params, steps = steps, seed = seed})
  sl.save(o.out, ws)
  local source = T.file_source(o.out)
  if o.json then
    out(sl.json_encode{method = m.id, optimiser = rep.optimiser, loss_before = rep.loss_before,
      loss_after = rep.loss_after, steps = steps, seed = seed, out = o.out, params_source = source})
  else
    out(string.format("%s: %s, loss %.6g -> %.6g, wrote %s (params_source %s)", m.id, rep.optimiser, rep.loss_before,
      rep.loss_after, o.out, source))
  end
end
