-- test_heads.lua — head-level sparsity in the model runner (issue 16):
-- head masks ("skip" specs), head importance (sparselab.heads) and the card
-- check of sixteen_heads: removing a head whose importance is zero leaves the
-- model's logits unchanged. The model is a small llama2.c checkpoint written
-- here from seeded random weights, with the W_o columns of one head zeroed
-- (that head then contributes nothing: its importance is exactly 0 under
-- every measure). Run with LUA_CPATH=build/?.so lua5.4 tests/lua/test_heads.lua
package.path = "tests/lua/?.lua;" .. package.path
local H = require "harness"
local sl = require "sparselab"
local Hd = require "sparselab.heads"
local test, near, eq, truthy = H.test, H.near, H.eq, H.truthy

local DIM, HID, L, NH, NKV, V, SEQ = 16, 32, 2, 4, 2, 32, 48
local HD = DIM // NH
local DEAD_L, DEAD_H = 1, 2

-- writes a llama2.c checkpoint; head (DEAD_L, DEAD_H)'s W_o columns are 0
local function write_model(path)
  local st = 12345
  local function rnd()
    -- Box-Muller from a seeded LCG
    st = (st * 1103515245 + 12345) % 2147483648
    local u1 = (st + 1) / 2147483649
    st = (st * 1103515245 + 12345) % 2147483648
    local u2 = st / 2147483648
    return math.sqrt(-2 * math.log(u1)) * math.cos(2 * math.pi * u2)
  end
  local parts = {string.pack("<i4i4i4i4i4i4i4", DIM, HID, L, NH, NKV, V, SEQ)}
  local function floats(n, f)
    local t = {}
    for i = 1, n do t[i] = string.pack("<f", f(i)) end
    parts[#parts + 1] = table.concat(t)
  end
  local kd = NKV * HD
  floats(V * DIM, function() return 0.5 * rnd() end)          -- tok_emb
  floats(L * DIM, function() return 1 end)                    -- rms_att
  floats(L * DIM * DIM, function() return 0.4 * rnd() end)    -- wq
  floats(L * kd * DIM, function() return 0.4 * rnd() end)     -- wk
  floats(L * kd * DIM, function() return 0.4 * rnd() end)     -- wv
  floats(L * DIM * DIM, function(i)                           -- wo [L][dim][dim]: (out, in)
    local l = (i - 1) // (DIM * DIM)
    local col = (i - 1) % DIM
    if l == DEAD_L and col // HD == DEAD_H then return 0 end
    return 0.4 * rnd()
  end)
  floats(L * DIM, function() return 1 end)                    -- rms_ffn
  floats(L * HID * DIM, function() return 0.3 * rnd() end)    -- w1
  floats(L * DIM * HID, function() return 0.3 * rnd() end)    -- w2
  floats(L * HID * DIM, function() return 0.3 * rnd() end)    -- w3
  floats(DIM, function() return 1 end)                        -- rms_final
  floats(SEQ * HD, function() return 0 end)                   -- freq_cis (skipped by the loader)
  local f = assert(io.open(path, "wb"))
  f:write(table.concat(parts))
  f:close()
end

local path = os.tmpname()
write_model(path)
local model = sl.model.load(path)
local tokens = {}
for i = 1, 40 do tokens[i] = (i * 7 + 3) % V end

local function max_diff(a, b)
  local x, y, m = a:totable(), b:totable(), 0
  for i = 1, #x do for j = 1, #x[i] do m = math.max(m, math.abs(x[i][j] - y[i][j])) end end
  return m
end

test("importance: the zeroed head scores 0 under ablation, kl and l2-of-contribution; others do not", function()
  local abl = Hd.importance(model, {tokens}, "ablation")
  local kl = Hd.importance(model, {tokens}, "kl")
  eq(abl[DEAD_L][DEAD_H], 0.0, "ablation of the dead head")
  near(kl[DEAD_L][DEAD_H], 0, 1e-12, "kl of the dead head")
  local live = 0
  for l = 0, L - 1 do for h = 0, NH - 1 do
    if not (l == DEAD_L and h == DEAD_H) and math.abs(abl[l][h]) > 1e-6 then live = live + 1 end
  end end
  eq(live, L * NH - 1, "every other head matters")
  local l2 = Hd.importance(model, {tokens}, "l2")
  truthy(l2[DEAD_L][DEAD_H] > 0, "l2 of its attention output is not 0 (only W_o kills it): l2 alone is a proxy")
end)

test("removing a zero-importance head leaves the logits unchanged; removing a live one changes them", function()
  local all_dense = {default = "dense", heads = {[0] = {[0] = "dense"}}}  -- the per-head path, nothing removed
  local ref = model:run{tokens = tokens, attention = all_dense}
  local plain = model:run{tokens = tokens}
  truthy(max_diff(ref, plain) < 1e-5, "the per-head path equals the plain forward")
  local imp = Hd.importance(model, {tokens}, "ablation")
  local lowest = Hd.lowest(imp, 1)
  truthy(lowest[DEAD_L] and lowest[DEAD_L][DEAD_H], "the dead head is the least important")
  local cut = model:run{tokens = tokens, attention = Hd.schedule(lowest)}
  eq(max_diff(cut, ref), 0.0, "logits unchanged")
  -- a score-blind choice (the first head) is not harmless
  local blind = model:run{tokens = tokens, attention = Hd.schedule({[0] = {[0] = true}})}
  truthy(max_diff(blind, ref) > 1e-3, "removing a live head changes the logits")
end)

test("head masks: removing the least important heads (KL measure) moves the output less than the most important", function()
  local imp = Hd.importance(model, {tokens}, "kl")
  local lo, hi = Hd.lowest(imp, 3), nil
  local neg = {}
  for l, hs in pairs(imp) do neg[l] = {}; for h, s in pairs(hs) do neg[l][h] = -s end end
  hi = Hd.lowest(neg, 3)
  local a = model:evaluate{tokens = tokens, attention = Hd.schedule(lo)}
  local b = model:evaluate{tokens = tokens, attention = Hd.schedule(hi)}
  truthy(a.kl < b.kl, string.format("KL to dense pruning least important %.4f, most important %.4f", a.kl, b.kl))
end)

os.remove(path)
H.done()
