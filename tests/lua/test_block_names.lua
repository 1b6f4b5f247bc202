-- test_block_names.lua — one block-size naming scheme across methods and block defaults relative
-- to the input length (issue 18; sl.registry.block_aliases / block_relative).
package.path = "tests/lua/?.lua;" .. package.path
local H = require "harness"
local sl = require "sparselab"
local test, eq, truthy, raises = H.test, H.eq, H.truthy, H.raises
local R = sl.registry

local function fake_prob(n) -- resolve only reads prob.k:shape()
  return {k = {shape = function() return {2, n, 16} end}}
end

test("every block-based method accepts block (and block_q/block_k where q and k differ)", function()
  local n_bqbk, n_block = 0, 0
  for _, id in ipairs(sl.methods.ids()) do
    local m = sl.methods.get(id)
    if m.params.bq and m.params.bk then
      n_bqbk = n_bqbk + 1
      local p = R.resolve(m, {block_q = 8, block_k = 4})
      eq(p.bq, 8, id .. " block_q -> bq"); eq(p.bk, 4, id .. " block_k -> bk")
      if not m.params.block then
        p = R.resolve(m, {block = 8})
        eq(p.bq, 8, id .. " block -> bq"); eq(p.bk, 8, id .. " block -> bk")
        raises(function() R.resolve(m, {block = 8, bq = 16}) end, "disagree", id .. " conflicting names")
        eq(R.resolve(m, {block = 8, bq = 8}).bq, 8, id .. " agreeing names")
      end
      truthy(R.block_doc(m):find("block_q = bq", 1, true), id .. " documents its aliases")
    elseif m.params.block then
      n_block = n_block + 1
      eq(R.resolve(m, {block = 8}).block, 8, id .. " block")
    end
  end
  truthy(n_bqbk >= 10 and n_block >= 10, string.format("methods seen: %d bq/bk, %d block", n_bqbk, n_block))
  raises(function() R.resolve(sl.methods.get("xattention"), {block_q = 8}) end, "unknown parameter", "no block_q on a one-size method")
end)

test("block defaults follow the input length in the dynamic prefill families only", function()
  local xa, sale, sw = sl.methods.get("xattention"), sl.methods.get("sale"), sl.methods.get("sliding_window")
  -- n_k = 489: largest power of two <= 489/16 is 16
  eq(R.resolve(xa, {}, nil, fake_prob(489)).block, 16, "xattention 128 -> 16 at 489 tokens")
  eq(R.resolve(xa, {}, nil, fake_prob(8192)).block, 128, "card default kept at 8192 tokens")
  eq(R.resolve(xa, {}, nil, fake_prob(1024)).block, 64, "1024 tokens: 64")
  eq(R.resolve(xa, {block = 128}, nil, fake_prob(489)).block, 128, "a block given is kept")
  eq(R.resolve(xa, {}).block, 128, "no problem: the card default")
  local p = R.resolve(sale, {}, nil, fake_prob(489))
  eq(p.bq, 16, "sale bq 64 -> 16"); eq(p.bk, 8, "sale bk 32 -> 8 (ratio kept)")
  p = R.resolve(sw, {}, nil, fake_prob(489))
  eq(p.bq, 64, "static patterns keep their blocks")
  truthy(R.block_doc(xa):find("relative", 1, true), "documented")
end)

test("matched density 0.1 on the shipped Q/K/V: reached with the relative defaults, not with the card's", function()
  local data = "experiments/data/tinystories260k"
  local model = sl.model.load(data .. "/model.bin")
  local f = assert(io.open(data .. "/texts/01_red_kite.txt", "rb"))
  local cap = model:capture{text = f:read("a")}
  f:close()
  local t = cap[3]
  local prob = sl.problem{q = t.q, k = t.k, v = t.v, workload = "tinystories:01_red_kite", layer = 2}
  for _, id in ipairs{"xattention", "proxy_attn"} do
    local r = sl.eval(sl.methods.get(id), prob, {density = 0.1})
    eq(r.status or "ok", "ok", id .. " reaches 0.1")
    truthy(math.abs(r.metrics.achieved_density - 0.1) <= 0.01, id .. " achieved " .. r.metrics.achieved_density)
    eq(r.params.block, 16, id .. " ran 16-token blocks")
    local old = sl.eval(sl.methods.get(id), prob, {density = 0.1, params = {block = 128}})
    eq(old.status, "failed", id .. " with the card's 128-token blocks cannot reach 0.1")
  end
end)

H.done()
