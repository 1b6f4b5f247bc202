-- mutate.lua — the score-blind mutation of the mutation harness
-- (tests/lua/test_mutation.lua; loaded by harness.lua when SL_MUTATE is set):
-- every score op (sl.score.*: exact, rows, last_q, lowbit, antidiag, hash,
-- pooled, strided, anchor) and the token pooling the gate-style estimators
-- score from (sl.pool.tokens) still runs, but its outputs are replaced by
-- score-blind ones of the same shape and dtype: finite float entries by
-- seeded uniform random numbers (infinities and NaNs — masked positions —
-- stay where they are), integer entries shuffled within their last
-- dimension; the same op on the same shapes gives the same blind values.
-- A method whose tests still pass under it tests plumbing, not its
-- estimator. SL_MUTATE=score_blind is the only variant.
local sl = require "sparselab"

local variant = os.getenv("SL_MUTATE")
if variant ~= "score_blind" then error("SL_MUTATE: unknown variant '" .. tostring(variant) .. "' (expected score_blind)") end

local state = 0x2545F491
local function rnd() -- xorshift32 in [0, 1): seeded, independent of math.random users
  state = state ~ ((state << 13) & 0xffffffff)
  state = state ~ (state >> 17)
  state = state ~ ((state << 5) & 0xffffffff)
  return (state & 0xffffff) / 0x1000000
end

local function blind_floats(t)
  if type(t) == "table" then
    local out = {}
    for i = 1, #t do out[i] = blind_floats(t[i]) end
    return out
  end
  if t ~= t or t == math.huge or t == -math.huge then return t end
  return rnd()
end

local function shuffle_ints(t)
  local out = {}
  if type(t[1]) == "table" then
    for i = 1, #t do out[i] = shuffle_ints(t[i]) end
    return out
  end
  for i = 1, #t do out[i] = t[i] end
  for i = #out, 2, -1 do
    local j = math.floor(rnd() * i) + 1
    out[i], out[j] = out[j], out[i]
  end
  return out
end

local function is_tensor(x)
  return type(x) == "userdata" and pcall(function() return x:dtype() end)
end

local function blind(x)
  if not is_tensor(x) or x:numel() == 0 or x:numel() > 1000000 then return x end
  local dt = x:dtype()
  local t = x:totable()
  if type(t) ~= "table" then return x end
  if dt == "f32" or dt == "f64" or dt == "f16" or dt == "bf16" then
    return sl.tensor(blind_floats(t), dt == "f64" and "f64" or "f32")
  end
  return sl.tensor(shuffle_ints(t), dt)
end

-- The stream restarts for every call from the op's name and the shapes of its outputs, so an estimate run
-- twice (a method's run and its mask()) gives the same blind scores: a kill must come from a check of the
-- estimator, not from two calls disagreeing.
local function reseed(name, r)
  local h = 2166136261
  local function mix(x) h = ((h ~ x) * 16777619) & 0xffffffff end
  for i = 1, #name do mix(name:byte(i)) end
  for i = 1, r.n do
    if is_tensor(r[i]) then for _, d in ipairs(r[i]:shape()) do mix(d & 0xffff) end end
  end
  state = h ~= 0 and h or 1
end

local function wrap(name, f)
  return function(...)
    local r = table.pack(f(...))
    reseed(name, r)
    for i = 1, r.n do r[i] = blind(r[i]) end
    return table.unpack(r, 1, r.n)
  end
end

for name, f in pairs(sl.score) do
  if type(f) == "function" then sl.score[name] = wrap("score." .. name, f) end
end
sl.pool.tokens = wrap("pool.tokens", sl.pool.tokens)

return true
