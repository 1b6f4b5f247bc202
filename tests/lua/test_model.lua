-- test_model.lua — the transformer runner from Lua: the shipped TinyStories
-- model against the reference values in its README (independent numpy
-- forward), schedules (per layer, per head), capture, and generation.
package.path = "tests/lua/?.lua;" .. package.path
local H = require "harness"
local sl = require "sparselab"
local test, near, eq, truthy, raises = H.test, H.near, H.eq, H.truthy, H.raises

local DATA = "experiments/data/tinystories260k"
local m = sl.model.load(DATA .. "/model.bin")
local function text(name)
  local f = assert(io.open(DATA .. "/texts/" .. name .. ".txt", "rb"))
  local s = f:read("a")
  f:close()
  return s
end

test("config read from the checkpoint header", function()
  local c = m.cfg
  eq(c.dim, 64, "dim"); eq(c.n_layers, 5, "layers"); eq(c.n_heads, 8, "heads")
  eq(c.n_kv_heads, 4, "kv heads"); eq(c.vocab_size, 512, "vocab"); eq(c.hidden_dim, 172, "hidden")
end)

test("greedy generation from BOS reproduces the README's ids", function()
  local want = {1, 403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426, 338, 401, 396, 267}
  local ids = m:generate{prompt = {1}, steps = #want - 1}
  for i, id in ipairs(want) do eq(ids[i], id, "id " .. i) end
end)

test("perplexity of 01_red_kite is the README's 4.0401; dense attention = no change", function()
  local r = m:evaluate{text = text("01_red_kite"), attention = "dense"}
  near(r.ppl_dense, 4.0401, 1e-4, "ppl")
  near(r.kl, 0, 1e-12, "kl dense vs dense")
  eq(r.top1, 1, "agreement")
end)

test("every layer on a 64-token window gives the README's sanity value 1.714215", function()
  local r = m:evaluate{text = text("06_little_seed"),
    attention = {method = "sliding_window", budget = 64, params = {bq = 16, bk = 16}}}
  near(r.nll, 1.714215, 2e-6, "nll window 64")
  near(r.nll_dense, 1.626963, 2e-6, "nll dense")
  truthy(r.kl > 0 and r.top1 < 1, "a window of 64 changes predictions")
end)

test("schedules: dense layers and per-head dense reproduce dense; one sparse layer changes little", function()
  local t = text("03_brave_turtle")
  local all_dense = m:evaluate{text = t, attention = {default = "dense", layers = {[2] = "dense"}}}
  near(all_dense.kl, 0, 1e-12, "schedule of dense")
  local heads = m:evaluate{text = t, attention = function() return "dense" end}
  near(heads.kl, 0, 1e-9, "per-head dense via cat")
  local sw = {method = "sliding_window", budget = 16, params = {bq = 16, bk = 16}}
  local one = m:evaluate{text = t, attention = {default = "dense", layers = {[4] = sw}}}
  local all = m:evaluate{text = t, attention = sw}
  truthy(one.kl > 0 and one.kl < all.kl, "one sparse layer < all sparse layers: " .. one.kl .. " vs " .. all.kl)
  -- per head: only head 0 of every layer sparse sits between the two
  local h0 = m:evaluate{text = t, attention = function(_, head) return head == 0 and sw or "dense" end}
  truthy(h0.kl > 0 and h0.kl < all.kl, "one sparse head")
  raises(function() m:evaluate{text = t, attention = {method = "nope"}} end, "unknown method", "bad method")
end)

test("capture writes post-RoPE q, k, v and the dense lse that replay exactly", function()
  local dir = os.tmpname()
  os.remove(dir)
  sl.mkdir(dir)
  local files = m:capture{text = "Once upon a time, there was a cat.", out = dir, name = "t", layers = {1, 3}}
  eq(#files, 2, "two layers")
  local t = sl.load(files[2])
  eq(t.q:shape()[1], 8, "q heads"); eq(t.k:shape()[1], 4, "k heads"); eq(t.q:shape()[3], 8, "head_dim")
  local o, lse = sl.attn.dense(t.q, t.k, t.v, {backend = "ref"})
  truthy(sl.metric.max_abs(lse, t.lse) < 1e-5, "stored lse replays")
  -- query row 1 sees key 1 only, so its lse is its scaled self-score: RoPE at position 0 is the identity
  local dot = 0
  for c = 1, 8 do dot = dot + t.q:get(1, 1, c) * t.k:get(1, 1, c) end
  near(t.lse:get(1, 1), dot / math.sqrt(8), 1e-5, "row 1")
  os.execute("rm -rf " .. dir)
end)

test("bad inputs: context overflow, token out of range, missing file", function()
  local long = {}
  for i = 1, 600 do long[i] = 5 end
  raises(function() m:run{tokens = long} end, "exceed the model's context", "too long")
  raises(function() m:run{tokens = {1, 9999}} end, "token 1 is id 9999", "out of range id")
  raises(function() sl.model.load("/nonexistent/model.bin") end, "/nonexistent/model.bin", "missing file")
end)

H.done()
