-- test_decode.lua — the decode runtime of issue 13 (paged KV cache object,
-- explicit decode state, the decode driver) and the decode methods' card
-- checks on small seeded inputs (GQA 4:2). Each method's test also runs the
-- same check with its estimator replaced by a score-blind one (first-k pages
-- and random pages) and asserts that the check then fails. Independent
-- references are float64 Lua loops here. Run with
-- LUA_CPATH=build/?.so lua5.4 tests/lua/test_decode.lua
package.path = "tests/lua/?.lua;" .. package.path
local H = require "harness"
local sl = require "sparselab"
local decode = require "sparselab.decode"
local test, near, eq, truthy, raises = H.test, H.near, H.eq, H.truthy, H.raises

local HQ, HKV, D = 4, 2, 16

-- float64 attention of query head h (row 1 of q [Hq, 1, D]) over the keys
-- listed by keep (a set of 0-based key indices) of k, v tables.
local function attend_ref(qt, kt, vt, h, keep)
  local g = (h - 1) // (HQ // HKV) + 1
  local scale = 1 / math.sqrt(D)
  local s, mx = {}, -math.huge
  for j in pairs(keep) do
    local dot = 0
    for c = 1, D do dot = dot + qt[h][1][c] * kt[g][j + 1][c] end
    s[j] = dot * scale
    if s[j] > mx then mx = s[j] end
  end
  local z, acc = 0, {}
  for c = 1, D do acc[c] = 0 end
  for j, x in pairs(s) do
    local w = math.exp(x - mx)
    z = z + w
    for c = 1, D do acc[c] = acc[c] + w * vt[g][j + 1][c] end
  end
  for c = 1, D do acc[c] = acc[c] / z end
  return acc, mx + math.log(z)
end

-- Keys of the pages of list l (1-based) in an i32 [lists, 1, m] tensor.
local function keys_of(pages, l, P, n)
  local keep = {}
  for _, id in ipairs(pages:totable()[l][1]) do
    if id >= 0 then
      for j = id * P, math.min((id + 1) * P, n) - 1 do keep[j] = true end
    end
  end
  return keep
end

-- A decode problem with a few "hot" pages per KV head whose keys align with
-- the group's queries (peaked attention); the hot pages avoid the first
-- pages and the last one, so neither first-k nor the forced last page finds them.
local function peaked(n, P, seed)
  local qt, kt, vt = {}, {}, {}
  local base = sl.randn({HKV, 1, D}, {seed = seed}):totable()
  local noise = sl.randn({HQ, 1, D}, {seed = seed + 1, std = 0.1}):totable()
  local kn = sl.randn({HKV, n, D}, {seed = seed + 2}):totable()
  local np = (n + P - 1) // P
  local hot = {}
  for g = 1, HKV do
    hot[g] = {}
    local x = (seed * 7 + g * 13) % 1000
    for i = 1, 3 do
      x = (x * 1103515245 + 12345) % 2147483648
      hot[g][4 + x % (np - 6)] = true
    end
  end
  for h = 1, HQ do
    qt[h] = {{}}
    local g = (h - 1) // (HQ // HKV) + 1
    for c = 1, D do qt[h][1][c] = base[g][1][c] + noise[h][1][c] end
  end
  for g = 1, HKV do
    kt[g] = {}
    for j = 1, n do
      kt[g][j] = {}
      local pg = (j - 1) // P
      for c = 1, D do
        kt[g][j][c] = hot[g][pg] and 1.5 * base[g][1][c] + 0.5 * kn[g][j][c] or kn[g][j][c]
      end
    end
  end
  vt = sl.randn({HKV, n, D}, {seed = seed + 3}):totable()
  return sl.tensor(qt), sl.tensor(kt), sl.tensor(vt), hot
end

-- Recall (kept mass exp(L - L_dense)), mean over heads, of a page_step.
local function recall_of(out, q, cache)
  local all = decode.all_pages(HQ, 1, cache:pages())
  local _, ld = decode.attend(cache, q, all)
  local r = sl.metric.recall(out.lse, ld)
  return r
end

-- ---- the cache object ----

test("kvcache: appends and evictions keep len, pages and metadata = page.meta", function()
  local c = decode.cache(HKV, D, 8)
  c:append(sl.randn({HKV, 21, D}, {seed = 1}), sl.randn({HKV, 21, D}, {seed = 2}))
  c:append(sl.randn({HKV, 1, D}, {seed = 3}), sl.randn({HKV, 1, D}, {seed = 4}))
  eq(c:len(), 22, "len")
  eq(c:pages(), 3, "pages")
  c:evict(sl.tensor({{0, 5, 20}, {1, 2, 3}}, "i32"))
  eq(c:len(), 19, "len after evicting 3 per head")
  local ks = c:tensor("k"):narrow(2, 1, 19)
  local mn, mx, me = sl.page.meta(ks, {page = 8})
  for _, pair in ipairs{{c:tensor("min"), mn}, {c:tensor("max"), mx}, {c:tensor("mean"), me}} do
    near(sl.metric.max_abs(pair[1], pair[2]), 0, 1e-6, "incremental metadata = page.meta")
  end
  truthy(tostring(c):find("len=19"), "tostring shows len")
  raises(function() c:evict(sl.tensor({{3, 2}, {0, 1}}, "i32")) end, "strictly increasing", "unsorted eviction")
  raises(function() decode.cache(HKV, D, 0, "quest") end, "quest: page = 0", "page 0")
  local e = decode.cache(HKV, D, 4)
  raises(function() e:tensor("min") end, "empty", "empty cache metadata")
end)

-- ---- decode state and driver ----

test("decode state: dump, wrong method, wrong shape, decode before prefill", function()
  local st = decode.begin("quest", {hq = HQ, hkv = HKV, d = D, page = 8})
  local k, v = sl.randn({HKV, 40, D}, {seed = 5}), sl.randn({HKV, 40, D}, {seed = 6})
  local step = {q = sl.randn({HQ, 1, D}, {seed = 7}), k = sl.randn({HKV, 1, D}, {seed = 8}),
    v = sl.randn({HKV, 1, D}, {seed = 9}), layer = 3}
  raises(function() decode.step("quest", st, step, {budget = 16, page = 8}) end, "quest: decode before prefill", "before prefill")
  decode.prefill(st, 3, k, v)
  local out = decode.step("quest", st, step, {budget = 16, page = 8})
  eq(out.o:shape()[1], HQ, "o heads")
  truthy(st:dump():find("layer 3: cache len=41"), "dump shows the layer cache: " .. st:dump())
  local other = decode.state("double_sparsity", {hq = HQ, hkv = HKV, d = D, page = 8})
  raises(function() decode.step("quest", other, step, {}) end, "quest: decode state belongs to method 'double_sparsity'", "other method")
  local bad = {q = sl.randn({2, 1, D}), k = step.k, v = step.v, layer = 3}
  raises(function() decode.step("quest", st, bad, {}) end, "quest: decode state is for q [4, *, 16], found q [2", "wrong shape")
  raises(function() decode.begin("streaming_llm", {hq = HQ, hkv = HKV, d = D, page = 8}) end, "no decode hook", "prefill-only")
  raises(function() decode.state("quest", {hq = HQ, hkv = HKV, d = D, page = 0}) end, "quest: decode state: page = 0", "page 0")
end)

-- ---- quest ----

test("quest: budget >= cache equals dense (kernel level and every step)", function()
  local q, k, v = sl.randn({HQ, 3, D}, {seed = 11}), sl.randn({HKV, 90, D}, {seed = 12}), sl.randn({HKV, 90, D}, {seed = 13})
  for variant = 0, 2 do
    for share = 0, 1 do
      local r = sl.eval("quest", sl.problem{q = q, k = k, v = v}, {params = {budget = 96, page = 16, variant = variant, share = share}})
      truthy(r.metrics.rel_l2 <= 1e-5, string.format("variant %d share %d: rel_l2 %.3g", variant, share, r.metrics.rel_l2))
      near(r.metrics.recall_mean, 1, 1e-5, "recall 1")
    end
  end
  raises(function() sl.eval("quest", sl.problem{q = q, k = k, v = v}, {params = {page = 88}}) end,
    "quest: page = 88 is larger than the cache", "page above the cache")
end)

test("quest: output = float64 attention over its selected pages; current page kept; |selected| = min(k_p, n_p)", function()
  local q, k, v = peaked(120, 8, 21)
  local quest = sl.methods.get("quest")
  local cache = decode.cache_from(k, v, 8)
  local qt, kt, vt = q:totable(), k:totable(), v:totable()
  for _, variant in ipairs{0, 1, 2} do
    local p = sl.registry.resolve(quest, {budget = 32, page = 8, variant = variant})
    local out = quest.page_step(cache, q, p, 5)
    local m = out.pages:shape()[3]
    eq(m, variant == 2 and 5 or 4, "list length (k_p = 4; variant 1: max(3, k_p); variant 2: k_p + 1)")
    local ot, lt = out.o:totable(), out.lse:totable()
    for h = 1, HQ do
      local keep = keys_of(out.pages, h, 8, 120)
      if variant ~= 1 then truthy(keep[119], "current page kept") end
      local o, l = attend_ref(qt, kt, vt, h, keep)
      near(lt[h][1], l, 1e-5, "lse vs float64")
      for c = 1, D do near(ot[h][1][c], o[c], 1e-5, "o vs float64") end
    end
  end
end)

test("quest: the bound finds the hot pages; first-k and random page selection fail the same check", function()
  local quest = sl.methods.get("quest")
  local q, k, v, hot = peaked(160, 8, 31)
  local cache = decode.cache_from(k, v, 8)
  local p = sl.registry.resolve(quest, {budget = 32, page = 8})
  local function check(scorer)
    local out = quest.page_step(cache, q, p, 5, nil, scorer)
    local recall = recall_of(out, q, cache)
    local found = 0
    local t = out.pages:totable()
    for h = 1, HQ do
      local g = (h - 1) // (HQ // HKV) + 1
      for _, id in ipairs(t[h][1]) do if hot[g][id] then found = found + 1 end end
    end
    return recall >= 0.9 and found == 3 * HQ, recall, found
  end
  local ok, recall, found = check(nil)
  truthy(ok, string.format("quest: recall %.3f, hot pages found %d of %d", recall, found, 3 * HQ))
  local np = cache:pages()
  local first = function() return sl.zeros({HQ, 1, np}) end
  local random = function() return sl.randn({HQ, 1, np}, {seed = 99}) end
  for name, scorer in pairs{first_k = first, random = random} do
    local bad, r2 = check(scorer)
    truthy(not bad, string.format("score-blind %s selection must fail (recall %.3f)", name, r2))
  end
  -- share = 1: one list per KV head, same hot pages
  local ps = sl.registry.resolve(quest, {budget = 32, page = 8, share = 1})
  local out = quest.page_step(cache, q, ps, 5)
  eq(out.pages:shape()[1], HKV, "one list per KV head")
  truthy(recall_of(out, q, cache) >= 0.9, "shared lists keep the mass")
end)

test("quest: decode replay through the cache, per step recall and bytes", function()
  local q, k, v = sl.randn({HQ, 4, D}, {seed = 41}), sl.randn({HKV, 64, D}, {seed = 42}), sl.randn({HKV, 64, D}, {seed = 43})
  local r = sl.eval("quest", sl.problem{q = q, k = k, v = v}, {params = {budget = 16, page = 8}})
  truthy(r.metrics.density < 0.5, "sparse at budget 16 of 64: " .. r.metrics.density)
  truthy(r.metrics.kv_bytes > 0, "kv bytes")
  -- dense layers are dense
  local rd = sl.eval("quest", sl.problem{q = q, k = k, v = v, layer = 0}, {params = {budget = 16, page = 8}})
  truthy(rd.metrics.rel_l2 <= 1e-5, "layer 0 (dense_layers 2) is dense")
end)

H.done()
