-- test_globals.lua — no Lua file of the project reads or writes a global
-- other than Lua's own library names. A local dropped by a refactor (a
-- recipe's `local be = prob.backend` moved into a helper) turns every later
-- use into a silent read of the nil global `be`; luac's listing shows each
-- global access as GETTABUP / SETTABUP on _ENV, so it is caught here before
-- anything runs. Files: git's tracked .lua files under lua/, experiments/,
-- configs/, viz/ and tests/lua/ (found by `find` outside a git checkout).
-- The sweep configs under tests/cli set globals by design and are not
-- checked. luac5.4 comes with the lua5.4 package.
package.path = "tests/lua/?.lua;" .. package.path
local H = require "harness"
local test, eq, truthy = H.test, H.eq, H.truthy

local STD = {}
for name in ([[_G _VERSION arg assert collectgarbage coroutine debug dofile error getmetatable io ipairs
  load loadfile math next os package pairs pcall print rawequal rawget rawlen rawset require select
  setmetatable string table tonumber tostring type utf8 warn xpcall]]):gmatch("%S+") do STD[name] = true end

local function lines(cmd)
  local p = assert(io.popen(cmd))
  local out = {}
  for l in p:lines() do out[#out + 1] = l end
  p:close()
  return out
end

-- The global names a chunk touches (sorted), from `luac5.4 -p -l -l`.
local function globals(path)
  local seen, names = {}, {}
  for _, l in ipairs(lines("luac5.4 -p -l -l '" .. path .. "' 2>&1")) do
    if l:match("[GS]ETTABUP") then
      local name = l:match('_ENV "([%a_][%w_]*)"')
      if name and not seen[name] then seen[name] = true; names[#names + 1] = name end
    end
  end
  table.sort(names)
  return names
end

test("globals: the check sees a global read and a global write", function()
  local path = os.tmpname()
  local f = assert(io.open(path, "w"))
  f:write("local function g(p) local x = be; y = p; return x, math.pi end\nreturn g\n")
  f:close()
  local got = table.concat(globals(path), ",")
  os.remove(path)
  eq(got, "be,math,y", "globals of the probe chunk")
end)

test("globals: no project Lua file touches a global outside Lua's library", function()
  local files = lines("git ls-files 'lua/*.lua' 'experiments/*.lua' 'configs/*.lua' 'viz/*.lua' 'tests/lua/*.lua'" ..
    " 2>/dev/null || find lua experiments configs viz tests/lua -name '*.lua' 2>/dev/null")
  truthy(#files > 100, string.format("git lists the project's Lua files (found %d)", #files))
  local bad = {}
  for _, path in ipairs(files) do
    for _, name in ipairs(globals(path)) do
      if not STD[name] then bad[#bad + 1] = path .. ": " .. name end
    end
  end
  eq(#bad, 0, "files touching a non-library global (" .. table.concat(bad, "; ") .. ")")
end)

H.done()
