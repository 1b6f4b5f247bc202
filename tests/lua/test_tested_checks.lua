-- test_tested_checks.lua — `sparselab methods --json` reports, per method,
-- the card checks a test states (issue 20; lua/sparselab/tested_checks.lua):
-- the matching rule on hand-made names (a check stated in a test's name
-- counts, one merely sharing its common words does not, a test of another
-- method never does), and the CLI's report on this suite (every check is
-- either tested, with an existing test of that method, or listed untested).
-- Run with LUA_CPATH=build/?.so lua5.4 tests/lua/test_tested_checks.lua
package.path = "tests/lua/?.lua;" .. package.path
local H = require "harness"
local sl = require "sparselab"
local tc = require "sparselab.tested_checks"
local test, eq, truthy = H.test, H.eq, H.truthy

local function names(list)
  local out = {}
  for _, n in ipairs(list) do out[#out + 1] = {name = n, file = "x.lua"} end
  return out
end

test("tested_checks: a check stated in one clause of a test name is tested, with that test", function()
  local m, n = tc.match("foo", {"w >= n equals dense causal", "row i keeps min(i+1, w) keys", "sinks raise recall"},
    names{"foo: w >= n is dense causal; rows keep min(i+1, w) keys", "foo: recall is monotone", "foobar: sinks raise recall"})
  eq(n, 2, "tests of foo (foobar is another method)")
  eq(m[1].test, "foo: w >= n is dense causal; rows keep min(i+1, w) keys", "check 1")
  eq(m[2].test, "foo: w >= n is dense causal; rows keep min(i+1, w) keys", "check 2")
  eq(m[3].test, nil, "check 3: only another method's test states it")
end)

test("tested_checks: common words alone (equal, dense, rows) do not make a match", function()
  local m = tc.match("bar", {"text rows equal dense rows", "image rows equal dense rows"},
    names{"bar card checks: dense category = dense; single image from 0 = dense on its rows"})
  eq(m[1].test, nil, "text rows: no clause names text")
  eq(m[2].test, "bar card checks: dense category = dense; single image from 0 = dense on its rows", "image rows")
end)

test("tested_checks: no test files gives no tests", function()
  eq(#tc.test_names("tests/lua/no_such_dir"), 0, "names")
  local m, n = tc.match("foo", {"a check"}, {})
  eq(n, 0, "tests")
  eq(m[1].test, nil, "untested")
end)

test("methods --json: per method, tested checks name a test of that method; tested + untested = declared", function()
  local bin = (os.getenv("BUILD") or "build") .. "/sparselab"
  local p = io.popen(bin .. " methods --json", "r")
  local all = tc.test_names("tests/lua")
  local exists = {}
  for _, t in ipairs(all) do exists[t.name] = true end
  local rows, tested_total = 0, 0
  for line in p:lines() do
    local r = sl.json_decode(line)
    rows = rows + 1
    local tested, untested = r.checks_tested or {}, r.checks_untested or {}
    eq(#tested + #untested, r.checks, r.id .. ": tested + untested")
    for _, x in ipairs(tested) do
      truthy(exists[x.test], r.id .. ": test '" .. tostring(x.test) .. "' exists")
      local named = x.test:sub(1, #r.id) == r.id
      for _, a in ipairs(r.aliases or {}) do named = named or x.test:sub(1, #a) == a end
      truthy(named, r.id .. ": the test '" .. x.test .. "' is named after the method or an alias")
      tested_total = tested_total + 1
    end
    if r.id == "streaming_llm" then
      eq(tested[1] and tested[1].check, "n_local >= n equals dense causal", "streaming_llm's first check")
    end
  end
  p:close()
  truthy(rows > 20, "methods listed")
  truthy(tested_total > 50, "checks with a test in this suite: " .. tested_total)
end)

-- issue 20, session 5: the CLI end to end on a suite written here — one test states one of
-- streaming_llm's checks; every other declared check (of streaming_llm and of every other method) must
-- come back untested, with no test named.
test("methods --json: a declared check no test states is reported untested (a one-test suite written here)", function()
  local bin = (os.getenv("BUILD") or "build") .. "/sparselab"
  if bin:sub(1, 1) ~= "/" then bin = os.getenv("PWD") .. "/" .. bin end
  local dir = io.popen("mktemp -d"):read("l")
  truthy(dir and dir ~= "", "temporary directory")
  os.execute("mkdir -p '" .. dir .. "/tests/lua'")
  local f = assert(io.open(dir .. "/tests/lua/test_only.lua", "w"))
  f:write('test("streaming_llm: n_local >= n equals dense causal", function() end)\n')
  f:close()
  local p = io.popen("cd '" .. dir .. "' && '" .. bin .. "' methods --json", "r")
  local seen, others = false, 0
  for line in p:lines() do
    local r = sl.json_decode(line)
    local tested, untested = r.checks_tested or {}, r.checks_untested or {}
    if r.id == "streaming_llm" then
      seen = true
      eq(r.tests, 1, "streaming_llm: one test")
      eq(#tested, 1, "streaming_llm: one check tested")
      eq(tested[1] and tested[1].check, "n_local >= n equals dense causal", "the stated check")
      eq(tested[1] and tested[1].test, "streaming_llm: n_local >= n equals dense causal", "with its test")
      eq(#untested, r.checks - 1, "streaming_llm: the other declared checks untested")
      for _, c in ipairs(untested) do truthy(c ~= "n_local >= n equals dense causal", "not listed twice") end
    elseif (r.checks or 0) > 0 then
      others = others + 1
      eq(#tested, 0, r.id .. ": no check tested without a test")
      eq(#untested, r.checks, r.id .. ": every declared check untested")
    end
  end
  p:close()
  os.execute("rm -rf '" .. dir .. "'")
  truthy(seen, "streaming_llm listed")
  truthy(others > 20, "other methods with declared checks: " .. others)
end)

H.done()
