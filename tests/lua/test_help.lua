-- test_help.lua — the REPL's `?` over the whole sl.* API (issue 18): every function of every
-- namespace (ops aside: they document themselves from core/ops.def) has a one-line doc in
-- lua/sparselab/api.lua, every entry there names a function that exists, and ?NAME resolves
-- full, partial and bare names, namespaces, methods and ops.
package.path = "tests/lua/?.lua;" .. package.path
local H = require "harness"
local sl = require "sparselab"
local help = require "sparselab.help"
local api = require "sparselab.api"
local test, eq, truthy = H.test, H.eq, H.truthy

local function capture(name)
  local buf = {}
  local w = io.write
  io.write = function(...) for _, x in ipairs{...} do buf[#buf + 1] = tostring(x) end end
  local ok, err = pcall(sl.help, name)
  io.write = w
  assert(ok, err)
  return table.concat(buf)
end

local OPS = {}
for _, o in ipairs(sl.ops()) do OPS["sl." .. o.name] = true end

-- every function under sl (top level, namespaces, classes), internals (*_c, _x) and ops aside
local function api_functions()
  local out = {}
  for k, v in pairs(sl) do
    if type(k) == "string" and type(v) == "function" and not k:match("^_") then out[#out + 1] = "sl." .. k end
  end
  for _, ns in ipairs(help.namespaces()) do
    for _, m in ipairs(help.members("sl." .. ns, sl[ns])) do
      if not OPS[m[1]] then out[#out + 1] = m[1] end
    end
  end
  table.sort(out)
  return out
end

test("every sl.* function has a one-line doc", function()
  local missing = {}
  for _, name in ipairs(api_functions()) do
    if not help.doc(name) then missing[#missing + 1] = name end
  end
  eq(#missing, 0, "functions without a line in lua/sparselab/api.lua (add one each): " .. table.concat(missing, ", "))
end)

test("every api.lua entry names a function", function()
  local stale = {}
  for name in pairs(api) do
    if type(help.lookup(name)) ~= "function" then stale[#stale + 1] = name end
  end
  table.sort(stale)
  eq(#stale, 0, "entries naming nothing: " .. table.concat(stale, ", "))
end)

test("?NAME: functions, namespaces, methods, ops", function()
  local s = capture("sl.mask.window")
  truthy(s:find("sl.mask.window(w | {w =", 1, true), "full name: " .. s)
  eq(capture("mask.window"), s, "without sl.")
  eq(capture("window"), s, "bare name")
  s = capture("sl.budget.match")
  truthy(s:find("sl.budget.match(o)", 1, true), "parameters read from the function: " .. s)
  s = capture("sl.viz")
  truthy(s:find("sl.viz.plot(db, o)", 1, true) and s:find("sl.viz.mask", 1, true), "namespace: " .. s)
  truthy(capture("Model.evaluate"):find("perplexity", 1, true), "class method by partial name")
  truthy(capture("streaming_llm"):find("the budget knob", 1, true), "a method")
  truthy(capture("attn.dense"):find("backends:", 1, true), "an op")
  truthy(capture("nope"):find("no function, namespace, method or op", 1, true), "unknown")
  local o = capture("")
  truthy(o:find("namespaces: sl.", 1, true) and o:find("sl.viz", 1, true), "overview lists namespaces")
end)

H.done()
