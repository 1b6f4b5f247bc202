-- sparselab.tested_checks — which of a method's card checks have a test
-- (issue 20: `methods --json` reports tested checks, not declared ones).
--
-- Derived from the Lua test suite by the convention the mutation harness
-- uses (tests/lua/test_mutation.lua, SL_TEST_ONLY in harness.lua): a test
-- belongs to method ID when its name starts with the word ID. A check counts
-- as tested when one of the method's test names states it: the check's
-- content words (lower case, plural s dropped, "is"/"equals"/"=" read as
-- "equal", stop words removed) are at least MIN_SHARE of them in one test's
-- name, and at least two of them (one for a one-word check). The match is
-- reported with the test's name, so it can be read and disputed; a check
-- stated in no test name is reported untested even where a test exercises
-- it in its body.
local sl = require "sparselab"

local T = {}

T.MIN_SHARE = 0.6

local STOP = {}
for w in ("the a an of in on is are be to for its it at by as with and or from than that this when where " ..
  "every each all any one same only exactly always never not no"):gmatch("%S+") do STOP[w] = true end
-- kept although common: they carry the check ("not", "no", "all" ... are
-- stop words only because names phrase them freely)

local SYN = {equals = "equal", equal = "equal", ["="] = "equal", ["=="] = "equal", is = "equal", gives = "equal",
  match = "equal", matches = "equal", ["->"] = "equal", ["≈"] = "equal", dense = "dense", monotone = "monotone",
  kept = "keep", keeps = "keep", forced = "keep", present = "keep"}

local function words(s)
  s = s:lower():gsub("%b()", " ")
  local out, seen = {}, {}
  for w in s:gmatch("[^%s,;:%(%)%[%]\"'`]+") do
    w = w:gsub("^%.+", ""):gsub("%.+$", "")
    w = SYN[w] or w
    if #w > 3 and w:sub(-1) == "s" and not w:find("ss$") then w = w:sub(1, -2) end
    w = SYN[w] or w
    if w ~= "" and not STOP[w] and not seen[w] then
      seen[w] = true
      out[#out + 1] = w
    end
  end
  return out
end
T.words = words

--- Test names found in the Lua test files of dir (default "tests/lua"): a
-- list of {name, file}. Empty when the directory is not there.
function T.test_names(dir)
  dir = dir or "tests/lua"
  local names = {}
  local ok, files = pcall(sl.listdir, dir)
  if ok then table.sort(files) end
  for _, f in ipairs(ok and files or {}) do
    if f:match("^test_.*%.lua$") then
      local fh = io.open(dir .. "/" .. f)
      if fh then
        local text = fh:read("a")
        fh:close()
        for name in text:gmatch('test%(%s*"([^"\n]+)"') do names[#names + 1] = {name = name, file = dir .. "/" .. f} end
      end
    end
  end
  return names
end

-- the names whose first word is id (the harness's SL_TEST_ONLY rule)
local function of_method(names, id)
  local out = {}
  for _, t in ipairs(names) do
    if t.name:sub(1, #id) == id and not t.name:sub(#id + 1, #id + 1):match("[%w_]") then out[#out + 1] = t end
  end
  return out
end

-- Words that most checks share (a match on them alone says little): a
-- check with other words must share at least one of those too.
local WEAK = {}
for w in ("equal dense row key block head mask recall keep output density independent reference float64 " ..
  "monotone per over test check card method"):gmatch("%S+") do WEAK[w] = true end

--- checks: list of strings; names: list of {name, file} (all tests; those
--- of id are picked here) -> list of {check, test = name or nil, file}, and
--- the method's test count. A test name is read clause by clause (split at
--- ";"), and a check matches the clause that states most of it.
function T.match(id, checks, names)
  local mine = of_method(names, id)
  local clauses = {}
  for _, t in ipairs(mine) do
    for cl in (t.name:sub(#id + 1) .. ";"):gmatch("([^;]*);") do
      local set = {}
      for _, w in ipairs(words(cl)) do set[w] = true end
      clauses[#clauses + 1] = {set = set, test = t}
    end
  end
  local out = {}
  for _, c in ipairs(checks or {}) do
    local cw = words(c)
    local strong = 0
    for _, w in ipairs(cw) do if not WEAK[w] then strong = strong + 1 end end
    local best, bt = 0, nil
    for _, cl in ipairs(clauses) do
      local hit, strong_hit = 0, 0
      for _, w in ipairs(cw) do
        if cl.set[w] then
          hit = hit + 1
          if not WEAK[w] then strong_hit = strong_hit + 1 end
        end
      end
      local share = #cw > 0 and hit / #cw or 0
      if share >= T.MIN_SHARE and hit >= math.min(2, #cw) and (strong == 0 or strong_hit > 0) and share > best then
        best, bt = share, cl.test
      end
    end
    out[#out + 1] = {check = c, test = bt and bt.name, file = bt and bt.file}
  end
  return out, #mine
end

return T
