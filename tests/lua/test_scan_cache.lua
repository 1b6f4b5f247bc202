-- test_scan_cache.lua — remembered input scans (issue 20, session 4). An op
-- call scans its float inputs (NaN / inf) and attention's q, k (score range);
-- on a buffer marked by sl_tensor_cache_checks (every tensor the Lua bindings
-- create) the result is remembered per contiguous view until the buffer's
-- write version moves. Checked here: an unchanged tensor is not rescanned
-- (sl.input_scans counts the scans run); a value written in place after a
-- clean check is still caught, through every path that writes an existing
-- buffer from Lua (t:set, t:set on a view sharing the buffer, op outputs,
-- tensors made by sl.tensor / sl.cat / :to / sl.synthetic / sl.load of .npy
-- and safetensors); buffers written in place by C owners (the KV cache) are
-- not marked and are scanned on every call.
package.path = "tests/lua/?.lua;" .. package.path
local BUILD = os.getenv("BUILD") or "build"
package.cpath = BUILD .. "/?.so;" .. package.cpath
local H = require "harness"
local sl = require "sparselab"
local test, eq, truthy = H.test, H.eq, H.truthy

local HEADS, N, D = 2, 40, 16

local function qkv(seed)
  return sl.randn({HEADS, N, D}, {seed = seed}), sl.randn({HEADS, N, D}, {seed = seed + 1}),
    sl.randn({HEADS, N, D}, {seed = seed + 2})
end

local function dense(q, k, v) return sl.attn.dense(q, k, v, {causal = true, backend = "cpu"}) end

-- scans run by f()
local function scans(f)
  local s0 = sl.input_scans()
  f()
  return sl.input_scans() - s0
end

-- t (any float tensor already checked clean by call()) gets a NaN at a
-- middle position, then +inf: call() must refuse both; restored, it runs.
local function caught_in_place(t, call, what)
  local idx = {}
  for i, s in ipairs(t:shape()) do idx[i] = (s + 1) // 2 end
  local old = t:get(table.unpack(idx))
  for _, bad in ipairs{0 / 0, math.huge} do
    idx[#idx + 1] = bad
    t:set(table.unpack(idx))
    idx[#idx] = nil
    H.raises(call, "expected finite", what .. ": " .. tostring(bad) .. " written after a clean check")
  end
  idx[#idx + 1] = old
  t:set(table.unpack(idx))
  call()
end

test("an unchanged q, k, v is scanned once: the second call runs no scan", function()
  local q, k, v = qkv(11)
  local first = scans(function() dense(q, k, v) end)
  eq(first, 5, "first call: NaN scans of q, k, v and range scans of q, k")
  eq(scans(function() dense(q, k, v) end), 0, "second call on the same tensors")
  -- another op on the same q, k reuses them too
  local m = sl.mask.window(8):materialize{n_q = N, n_k = N, bq = 8, bk = 8}
  eq(scans(function() sl.attn.block_sparse(q, k, v, m, {backend = "cpu"}) end), 0, "block_sparse after dense")
  -- a view is scanned once on its own, then remembered beside the whole tensor
  local qv, kv, vv = q:narrow(2, 9, 16), k:narrow(2, 9, 16), v:narrow(2, 9, 16)
  eq(scans(function() dense(qv, kv, vv) end), 5, "a strided view is converted (a fresh copy): scanned")
  eq(scans(function() dense(qv, kv, vv) end), 5, "and scanned again: copies are never remembered")
  local q1, k1, v1 = q:narrow(1, 2, 1), k:narrow(1, 2, 1), v:narrow(1, 2, 1) -- contiguous views of head 2
  eq(scans(function() dense(q1, k1, v1) end), 5, "a new contiguous view is scanned")
  eq(scans(function() dense(q1, k1, v1) end), 0, "and then remembered")
  eq(scans(function() dense(q, k, v) end), 0, "the whole tensors are still remembered")
  -- a write bumps the version: the next call scans the written tensor again
  q:set(1, 1, 1, 0.5)
  eq(scans(function() dense(q, k, v) end), 2, "q written: its NaN and range scans run again")
  eq(scans(function() dense(q, k, v) end), 0, "then remembered again")
end)

test("NaN or inf written by t:set after a clean check is caught in q, k and v", function()
  local q, k, v = qkv(21)
  dense(q, k, v)
  dense(q, k, v) -- remembered
  caught_in_place(q, function() return dense(q, k, v) end, "q")
  caught_in_place(k, function() return dense(q, k, v) end, "k")
  caught_in_place(v, function() return dense(q, k, v) end, "v")
end)

test("a write through a view sharing the buffer is caught on the whole tensor and on other views", function()
  local q, k, v = qkv(31)
  local k1 = k:narrow(1, 1, 1)
  dense(q, k, v)
  dense(q:narrow(1, 1, 1), k1, v:narrow(1, 1, 1))
  k1:set(1, N, D, 0 / 0) -- the last element of head 1
  H.raises(function() dense(q, k, v) end, "NaN", "whole k after a write through its view")
  H.raises(function() dense(q:narrow(1, 1, 1), k1, v:narrow(1, 1, 1)) end, "NaN", "the view itself")
  k1:set(1, N, D, 0.25)
  dense(q, k, v)
end)

test("a finite value that overflows the scores, written after a clean check, is caught (score-range scan)", function()
  local q, k, v = qkv(41)
  dense(q, k, v)
  dense(q, k, v)
  q:set(2, 3, 4, 1e30)
  k:set(1, 5, 6, 1e30)
  H.raises(function() dense(q, k, v) end, "scores overflow float32", "remembered range after a write")
  q:set(2, 3, 4, 0.5)
  k:set(1, 5, 6, 0.5)
  dense(q, k, v)
end)

test("op outputs, sl.tensor, sl.cat, :to, sl.synthetic: written in place after a clean check, caught", function()
  local q, k, v = qkv(51)
  local o = dense(q, k, v) -- an op output used as the next call's v
  dense(q, k, o)
  caught_in_place(o, function() return dense(q, k, o) end, "op output")
  local rows = {}
  for h = 1, HEADS do
    rows[h] = {}
    for i = 1, N do
      rows[h][i] = {}
      for j = 1, D do rows[h][i][j] = math.sin(h * 1000 + i * 37 + j) end
    end
  end
  local t = sl.tensor(rows)
  dense(q, t, v)
  caught_in_place(t, function() return dense(q, t, v) end, "sl.tensor")
  local c = sl.cat({k:narrow(2, 1, 20), k:narrow(2, 21, 20)}, 2)
  dense(q, c, v)
  caught_in_place(c, function() return dense(q, c, v) end, "sl.cat")
  local c2 = v:to("f32")
  dense(q, k, c2)
  caught_in_place(c2, function() return dense(q, k, c2) end, ":to")
  local sq, sk, sv = sl.synthetic{heads = 2, n = 64, d = 16, seed = 3}
  local function syn() return dense(sq, sk, sv) end
  syn()
  caught_in_place(sq, syn, "sl.synthetic q")
  caught_in_place(sv, syn, "sl.synthetic v")
end)

test("tensors read from .npy and safetensors: written in place after a clean check, caught", function()
  local q, k, v = qkv(61)
  local dir = os.tmpname()
  os.remove(dir)
  sl.mkdir(dir)
  sl.save(dir .. "/k.npy", k)
  sl.save(dir .. "/qkv.safetensors", {q = q, k = k, v = v})
  local kn = sl.load(dir .. "/k.npy")
  dense(q, kn, v)
  caught_in_place(kn, function() return dense(q, kn, v) end, ".npy")
  local st = sl.load(dir .. "/qkv.safetensors")
  local function call() return dense(st.q, st.k, st.v) end
  call()
  caught_in_place(st.q, call, "safetensors q")
  caught_in_place(st.v, call, "safetensors v")
  -- a file holding NaN is refused on load or on the first call
  kn:set(1, 1, 1, 0 / 0)
  sl.save(dir .. "/bad.npy", kn)
  local ok = pcall(function() return dense(q, sl.load(dir .. "/bad.npy"), v) end)
  truthy(not ok, "NaN read from a file")
  for _, f in ipairs(sl.listdir(dir)) do os.remove(dir .. "/" .. f) end
  os.remove(dir)
end)

test("the KV cache's storage (written in place by C on append) is scanned on every call", function()
  local H2, P = 2, 4
  local c = sl.kvcache_c(H2, D, P)
  local kn, vn = sl.randn({H2, 6, D}, {seed = 71}), sl.randn({H2, 6, D}, {seed = 72})
  c:append(kn, vn)
  local K, V = c:tensor("k"), c:tensor("v")
  local cap = K:shape()[2]
  truthy(cap > 6, "room for one more token in place (capacity " .. cap .. ")")
  local q = sl.randn({H2, cap, D}, {seed = 73})
  for h = 1, H2 do for j = 1, D do q:set(h, cap, j, 1e18) end end
  dense(q, K, V)
  eq(scans(function() dense(q, K, V) end), 3, "storage views scanned again: NaN K, V and range K (q remembered)")
  -- one more token, written into the same storage: |k| = 1e20 makes the
  -- scores' bound overflow with |q| = 1e18
  local big = sl.randn({H2, 1, D}, {seed = 74})
  for h = 1, H2 do for j = 1, D do big:set(h, 1, j, 1e20) end end
  c:append(big, sl.randn({H2, 1, D}, {seed = 75}))
  local K2 = c:tensor("k")
  eq(K2:shape()[2], cap, "appended in place")
  H.raises(function() dense(q, K2, V) end, "scores overflow float32", "KV cache written by append")
end)

H.done()
