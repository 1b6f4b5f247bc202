-- sparselab — the Lua side of the workbench. The C module (l_sparselab.c)
-- has already put tensors, ops (sl.attn.*, sl.metric.*), materialised masks,
-- I/O, the store and host facts into this table; here come lazy mask
-- patterns, the method registry, evaluation, experiments and reports.
local sl = require "sparselab"

sl.mask = require "sparselab.mask"
sl.registry = require "sparselab.registry"

-- Metric ops return small f64 tensors; scripts want numbers.
do
  local raw = sl.metric
  sl.metric = {}
  for name, f in pairs(raw) do
    sl.metric[name] = function(...)
      local t = f(...)
      if t:numel() == 1 then return t:get(1) end
      return t:get(1), t:get(2)
    end
  end
end

--- sl.methods.get(id), sl.methods.ids(), sl.methods.register(m)
sl.methods = {
  get = sl.registry.get,
  ids = sl.registry.ids,
  register = sl.registry.register,
  backends = sl.registry.backends,
}

local eval = require "sparselab.eval"
sl.problem = eval.problem
sl.eval = eval.run
sl.record = eval.record
sl.experiment = eval.experiment
sl.report = require "sparselab.report"
sl.model = require "sparselab.model"
sl.assign = require "sparselab.assign"
sl.correct = require "sparselab.correct"
sl.json_decode = require("sparselab.json").decode
sl.budget = require "sparselab.budget"
sl.calibrate = require "sparselab.calibrate"
sl.viz = require "viz" -- plots, mask pictures, reports (viz/, issue 18)
sl.progress = require "sparselab.progress" -- progress with ETA on stderr (issue 18)
sl.qkv = require "sparselab.qkv" -- q, k, v files as PyTorch has them (issue 18)
sl.layout = require "sparselab.layout"
sl.steps = require "sparselab.steps"

--- Raises a user error (no position prefix): bad input, not a bug.
function sl.fail(fmt, ...)
  error(string.format(fmt, ...), 0)
end

--- ?name in the REPL: a function or namespace of sl.* (parameters, one-line doc), a method
--- (its title, card, knob and parameters), an op (inputs, outputs, parameters, backends), or
--- the overview.
function sl.help(name)
  local out = io.write
  -- the overview, and any function or namespace of sl.* (sparselab/help.lua, sparselab/api.lua)
  if require("sparselab.help").show(name, out) then return end
  for _, o in ipairs(sl.ops()) do
    if o.name == name or "sl." .. o.name == name then
      out(o.name, "(", o.inputs, ") -> ", o.outputs, "\n  ", o.doc, "\n")
      for _, p in ipairs(o.params) do
        out(string.format("  %-8s %-6s default %-6g [%g, %g]  %s\n", p.name, p.kind, p.default, p.min, p.max, p.doc))
      end
      local b = {}
      for k, v in pairs(o.backends) do if v then b[#b + 1] = k end end
      table.sort(b)
      out("  backends: ", table.concat(b, ", "), "\n")
      return
    end
  end
  local ok, m = pcall(sl.methods.get, name)
  if ok then
    out(m.id, " — ", m.title, "\n")
    out("  card: ", m.card and ("methods/" .. m.card .. ".md") or "none", "   family: ", m.family,
      "   phase: ", m.phase, "\n")
    if m.summary then out("  ", m.summary, "\n") end
    local names = {}
    for k in pairs(m.params) do names[#names + 1] = k end
    table.sort(names)
    for _, k in ipairs(names) do
      local p = m.params[k]
      out(string.format("  %-10s default %-8s %s%s\n", k, tostring(p.default), p.doc or "",
        k == m.knob and "  (the budget knob)" or ""))
    end
    return
  end
  out("no function, namespace, method or op called '", tostring(name), "'; ?  lists them\n")
end

return sl
