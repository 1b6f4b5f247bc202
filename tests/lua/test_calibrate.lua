-- test_calibrate.lua — offline calibration (sl.calibrate, issue 4) with a
-- fake method registered here: the config written and read back equals what
-- the method computed (recomputed independently here), provenance fields,
-- the method loads its config through its `config` param, and the loader
-- refuses files for another method, malformed files and non-calibration
-- JSON. Also the JSON reader against sl.json_encode on random values.
-- Run with LUA_CPATH=build/?.so lua5.4 tests/lua/test_calibrate.lua
package.path = "tests/lua/?.lua;" .. package.path
local H = require "harness"
local sl = require "sparselab"
local test, near, eq, truthy, raises = H.test, H.near, H.eq, H.truthy, H.raises

local TMP = os.tmpname()
os.remove(TMP)
os.execute("mkdir -p " .. TMP)

local function write(path, text)
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
end

-- per-head mean of q[h, :, 1] over every problem (what the fake calibrates)
local function head_means(problems)
  local hq = problems[1].q:shape()[1]
  local sums, count = {}, 0
  for h = 1, hq do sums[h] = 0 end
  for _, p in ipairs(problems) do
    local n = p.q:shape()[2]
    for h = 1, hq do
      for i = 1, n do sums[h] = sums[h] + p.q:get(h, i, 1) end
    end
    count = count + n
  end
  for h = 1, hq do sums[h] = sums[h] / count end
  return sums
end

local seen_opts
sl.methods.register{
  id = "fake_calibrated", title = "test: a method with offline calibration", family = "test-estimate",
  phase = "prefill", knob = "scale",
  params = {scale = {default = 1, min = 0, max = 10, doc = "multiplier"},
    config = {default = "", doc = "calibration file (sl.calibrate)"}},
  calibrate = function(problems, opts)
    seen_opts = opts
    return {thresholds = head_means(problems), scale = opts.params.scale or 1, note = "fake"}
  end,
  run = function(prob, p)
    local cfg = p.config ~= "" and sl.calibrate.load(p.config, "fake_calibrated") or {thresholds = {}}
    return {o = prob.q, stats = {n_thresholds = #cfg.thresholds}}
  end,
}
sl.methods.register{id = "fake_other", title = "another", family = "test-estimate", phase = "prefill",
  params = {}, calibrate = function() return {x = 1} end, run = function() end}

local function problem(seed, n)
  return sl.problem{q = sl.randn({3, n, 4}, {seed = seed}), k = sl.randn({1, n, 4}, {seed = seed + 1}),
    v = sl.randn({1, n, 4}, {seed = seed + 2}), workload = "test" .. seed}
end

test("calibrate writes the method's config with provenance; load returns it", function()
  local probs = {problem(3, 40), problem(9, 25)}
  local path = TMP .. "/cfg.json"
  local cfg = sl.calibrate("fake_calibrated", {problems = probs, out = path, params = {scale = 2.5}})
  eq(seen_opts.params.scale, 2.5, "params passed to m.calibrate")
  local back, doc = sl.calibrate.load(path, "fake_calibrated")
  local want = head_means(probs)
  eq(#back.thresholds, 3, "one threshold per head")
  for h = 1, 3 do
    near(back.thresholds[h], want[h], 1e-12, "threshold " .. h)
    eq(back.thresholds[h], cfg.thresholds[h], "exact JSON round trip of a double")
  end
  eq(back.scale, 2.5, "scale")
  eq(back.note, "fake", "string")
  eq(doc.method, "fake_calibrated", "method id")
  truthy(doc.created:match("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%dZ$"), "created date: " .. tostring(doc.created))
  eq(#doc.inputs, 2, "two inputs")
  eq(doc.inputs[1].q[2], 40, "shape of the first input's q")
  eq(doc.inputs[2].k[1], 1, "kv heads of the second")
  truthy(#doc.inputs[1].sha256 == 64, "sha256 hex")
  truthy(doc.inputs[1].sha256 ~= doc.inputs[2].sha256, "different inputs, different hashes")
  -- the same tensors again hash the same; a changed value changes the hash
  local again = select(2, sl.calibrate("fake_calibrated", {problems = {problem(3, 40)}}))
  eq(again.inputs[1].sha256, doc.inputs[1].sha256, "same inputs, same hash")
  local p3 = problem(3, 40)
  p3.q:set(1, 1, 1, p3.q:get(1, 1, 1) + 1)
  local changed = select(2, sl.calibrate("fake_calibrated", {problems = {p3}}))
  truthy(changed.inputs[1].sha256 ~= doc.inputs[1].sha256, "changed input, changed hash")
end)

test("a recipe loads its config through the config param", function()
  local path = TMP .. "/cfg2.json"
  sl.calibrate("fake_calibrated", {problems = {problem(5, 16)}, out = path})
  local m = sl.methods.get("fake_calibrated")
  local out = m.run(problem(6, 8), sl.registry.resolve(m, {config = path}))
  eq(out.stats.n_thresholds, 3, "thresholds loaded")
end)

test("load refuses another method's file, malformed and foreign files", function()
  local path = TMP .. "/other.json"
  sl.calibrate("fake_other", {problems = {problem(1, 8)}, out = path})
  raises(function() sl.calibrate.load(path, "fake_calibrated") end, "calibrated for method 'fake_other', not 'fake_calibrated'",
    "other method")
  write(TMP .. "/trunc.json", '{"format":"sparselab-calibration","version":1,"method":"fake_calibrated","config":{"a":')
  raises(function() sl.calibrate.load(TMP .. "/trunc.json", "fake_calibrated") end, "trunc.json", "truncated")
  write(TMP .. "/foreign.json", '{"a": 1}')
  raises(function() sl.calibrate.load(TMP .. "/foreign.json", "fake_calibrated") end, "is not a calibration file", "foreign")
  write(TMP .. "/noconf.json", '{"format":"sparselab-calibration","version":1,"method":"fake_calibrated"}')
  raises(function() sl.calibrate.load(TMP .. "/noconf.json", "fake_calibrated") end, "has no 'config' object", "no config")
  raises(function() sl.calibrate.load(TMP .. "/none.json", "fake_calibrated") end, "none.json", "missing file")
  raises(function() sl.calibrate("sliding_window", {problems = {problem(1, 8)}}) end, "needs no calibration", "static")
  raises(function() sl.calibrate("fake_calibrated", {problems = {}}) end, "non-empty list", "no problems")
  raises(function() sl.calibrate("fake_calibrated", {problems = {problem(1, 8)}, outt = "x"}) end,
    "unknown option 'outt'", "typo")
end)

-- random JSON-able values: nested objects/arrays of numbers, strings, booleans
local function random_value(depth)
  local r = math.random(1, depth > 2 and 4 or 6)
  if r == 1 then return (math.random() - 0.5) * 10 ^ math.random(-30, 30) end
  if r == 2 then return math.random(-2 ^ 40, 2 ^ 40) end
  if r == 3 then
    local chars = {}
    for i = 1, math.random(0, 12) do chars[i] = string.char(math.random(1, 127)) end
    return table.concat(chars) .. "é✓"
  end
  if r == 4 then return math.random() < 0.5 end
  if r == 5 then
    local t = {}
    for i = 1, math.random(1, 5) do t[i] = random_value(depth + 1) end
    return t
  end
  local t = {}
  for i = 1, math.random(1, 5) do t["k" .. i .. string.char(math.random(65, 90))] = random_value(depth + 1) end
  return t
end

local function same(a, b, where)
  if type(a) ~= type(b) then error(where .. ": type " .. type(a) .. " vs " .. type(b)) end
  if type(a) ~= "table" then
    if a ~= b then error(string.format("%s: %s vs %s", where, tostring(a), tostring(b))) end
    return
  end
  for k, v in pairs(a) do same(v, b[k], where .. "." .. tostring(k)) end
  for k in pairs(b) do if a[k] == nil then error(where .. ": extra key " .. tostring(k)) end end
end

test("JSON reader inverts sl.json_encode on random values", function()
  math.randomseed(53)
  for i = 1, 200 do
    local v = random_value(0)
    same(sl.json_decode(sl.json_encode(v)), v, "value " .. i)
  end
  -- cJSON's parser names the byte where the text stopped being JSON.
  raises(function() sl.json_decode('{"a":1,}', "cfg.json") end, "cfg.json: invalid JSON at byte 8 near '}'",
    "trailing comma")
  raises(function() sl.json_decode('[1, 2') end, "json: invalid JSON at byte 5", "unterminated array")
  raises(function() sl.json_decode('{"a":1} x') end, "json: trailing text at byte 9", "trailing")
  raises(function() sl.json_decode(42) end, "expected a string, found number", "not text")
  -- cJSON reads a leading zero as the number (strtod); integral numbers are integers.
  eq(sl.json_decode('01'), 1, "leading zero")
  eq(math.type(sl.json_decode('64')), "integer", "integer")
  eq(math.type(sl.json_decode('0.5')), "float", "float")
  eq(sl.json_decode('{"a":null}').a, require("sparselab.json").null, "null sentinel")
  eq(sl.json_decode('1e999'), math.huge, "1e999 reads back as inf")
  eq(sl.json_decode('"\\u00e9\\ud83d\\ude00"'), "é😀", "unicode escapes")
end)

os.execute("rm -rf " .. TMP)
H.done()
