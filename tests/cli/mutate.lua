-- mutate.lua — writes a seeded mutant of a file (issue 19's CLI mutation
-- test): 1 to 4 edits, each one of: flip a bit, set a byte to a boundary
-- value, truncate, delete a slice, duplicate a slice, insert random bytes,
-- and (text files) replace a number by a huge, negative, zero or fractional
-- one. Binary edits fall in the first 256 bytes half of the time (headers).
--   lua5.4 tests/cli/mutate.lua IN OUT SEED
local src, dst, seed = arg[1], arg[2], tonumber(arg[3])
assert(src and dst and seed, "usage: mutate.lua IN OUT SEED")
math.randomseed(seed)
local f = assert(io.open(src, "rb"))
local s = f:read("a")
f:close()
local text = not s:sub(1, 512):find("[%z\1-\8\14-\31\128-\255]")

local function pos(n)
  if n <= 0 then return 1 end
  if math.random() < 0.5 then return math.random(math.min(n, 256)) end
  return math.random(n)
end

local SPECIAL = {0, 255, 127, 128, 1, 0x7f, 0x80, 0xfe, 48, 57, 45, 34, 123, 125, 91, 93, 44, 10}
local NUMBERS = {"1e308", "-1", "0", "-2147483649", "4294967296", "1e-320", "0.5", "nan", "999999999999", "-0"}

local function edit(x)
  local n = #x
  local op = math.random(text and 8 or 7)
  if op == 1 and n > 0 then -- bit flip
    local i = pos(n)
    return x:sub(1, i - 1) .. string.char(x:byte(i) ~ (1 << math.random(0, 7))) .. x:sub(i + 1)
  elseif op == 2 and n > 0 then -- boundary byte
    local i = pos(n)
    return x:sub(1, i - 1) .. string.char(SPECIAL[math.random(#SPECIAL)]) .. x:sub(i + 1)
  elseif op == 3 then -- truncate
    return x:sub(1, math.random(0, n))
  elseif op == 4 and n > 1 then -- delete a slice
    local i = pos(n)
    return x:sub(1, i - 1) .. x:sub(i + math.random(1, math.min(64, n - i + 1)))
  elseif op == 5 and n > 1 then -- duplicate a slice
    local i = pos(n)
    local j = math.min(n, i + math.random(0, 63))
    return x:sub(1, j) .. x:sub(i, j) .. x:sub(j + 1)
  elseif op == 6 then -- insert random bytes
    local i = pos(n + 1)
    local b = {}
    for k = 1, math.random(1, 16) do b[k] = string.char(math.random(0, 255)) end
    return x:sub(1, i - 1) .. table.concat(b) .. x:sub(i)
  elseif op == 7 and n > 8 then -- overwrite 4 or 8 bytes with an extreme integer
    local i = pos(n - 8)
    local v = ({0, -1, 0x7fffffff, -0x80000000, 0x7fffffffffffffff})[math.random(5)]
    local w = math.random() < 0.5 and string.pack("<i4", v & 0xffffffff > 0x7fffffff and -1 or v) or string.pack("<i8", v)
    return x:sub(1, i - 1) .. w .. x:sub(i + #w)
  elseif op == 8 then -- a number in the text
    local starts = {}
    for p in x:gmatch("()%-?%d") do starts[#starts + 1] = p end
    if #starts == 0 then return x end
    local i = starts[math.random(#starts)]
    local j = x:find("[^%-%d%.eE+]", i) or n + 1
    return x:sub(1, i - 1) .. NUMBERS[math.random(#NUMBERS)] .. x:sub(j)
  end
  return x
end

for _ = 1, math.random(1, 4) do s = edit(s) end
f = assert(io.open(dst, "wb"))
f:write(s)
f:close()
