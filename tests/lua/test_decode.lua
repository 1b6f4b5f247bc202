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
  raises(function() decode.begin("xattention", {hq = HQ, hkv = HKV, d = D, page = 8}) end, "no decode hook", "prefill-only")
  raises(function() decode.state("quest", {hq = HQ, hkv = HKV, d = D, page = 0}) end, "quest: decode state: page = 0", "page 0")
  -- an empty prefill names the method and the value (session 4)
  local st0 = decode.begin("quest", {hq = HQ, hkv = HKV, d = D, page = 8})
  raises(function() decode.prefill(st0, 1, sl.randn({HKV, 0, D}), sl.randn({HKV, 0, D})) end,
    "quest: prefill of layer 1 with an empty cache: k holds 0 tokens", "empty prefill")
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

test("quest: int8/int4 pages replace f32 K/V (kv_bits): fewer bytes, same pages, output within the quantisation error; score-blind fails", function()
  local quest = sl.methods.get("quest")
  local q, k, v, hot = peaked(160, 8, 33)
  local f32 = decode.cache_from(k, v, 8)
  local p = sl.registry.resolve(quest, {budget = 32, page = 8})
  local ref = quest.page_step(f32, q, p, 5)
  local err = {}
  -- kbits, vbits, rel_l2 bound, bytes bound, zero points (session 4: asymmetric pages, kv_zero)
  for _, mode in ipairs{{8, 8, 0.02, 0.62}, {8, 0, 0.02, 0.9}, {4, 4, 0.25, 0.5}, {4, 4, 0.25, 0.56, 1}, {8, 8, 0.02, 0.68, 1}} do
    local kb, vb, tol, ratio, z = mode[1], mode[2], mode[3], mode[4], mode[5] or 0
    local st = decode.state("quest", {hq = HQ, hkv = HKV, d = D, page = 8, quant = {k = kb, v = vb, z = z}})
    local cache = st:layer(0).cache
    cache:append(k, v)
    local got_k, got_v, got_z = cache:quant()
    eq(got_k * 100 + got_v * 10 + got_z, kb * 100 + vb * 10 + z, "the cache holds quantised pages")
    truthy(cache:bytes() < ratio * f32:bytes(), string.format("%d/%d bits: %d bytes vs f32 %d", kb, vb, cache:bytes(), f32:bytes()))
    local function check(scorer)
      local out = quest.page_step(cache, q, p, 5, nil, scorer)
      local found, t = 0, out.pages:totable()
      for h = 1, HQ do
        local g = (h - 1) // (HQ // HKV) + 1
        for _, id in ipairs(t[h][1]) do if hot[g][id] then found = found + 1 end end
      end
      return found == 3 * HQ, out, found
    end
    local ok, out, found = check(nil)
    truthy(ok, string.format("%d-bit pages: hot pages found %d of %d", kb, found, 3 * HQ))
    -- same pages as the f32 cache; output = page.attend over the dequantised copies, close to f32
    local same, a, b = true, out.pages:totable(), ref.pages:totable()
    for h = 1, HQ do for e = 1, #a[h][1] do same = same and a[h][1][e] == b[h][1][e] end end
    truthy(same, "same page lists as f32")
    local o2 = sl.page.attend(q, cache:tensor("k"), cache:tensor("v"):narrow(2, 1, 160), out.pages, {page = 8, n = 160})
    near(sl.metric.max_abs(out.o, o2), 0, 1e-5, "page.attend_q = page.attend(dequantised)")
    local e = sl.metric.rel_l2(out.o, ref.o)
    truthy(e < tol and e > 0, string.format("%d/%d bits: rel_l2 vs f32 %.4g (< %g, not 0)", kb, vb, e, tol))
    err[kb * 100 + vb * 10 + z] = e
    truthy(out.stats.kv_bytes < ref.stats.kv_bytes, "fewer K/V bytes read per step")
    local np = cache:pages()
    for name, scorer in pairs{first_k = function() return sl.zeros({HQ, 1, np}) end,
                              random = function() return sl.randn({HQ, 1, np}, {seed = 98}) end} do
      truthy(not check(scorer), "score-blind " .. name .. " selection over quantised pages must fail")
    end
  end
  -- zero points use the page's range [min, max] with 2^b levels instead of [-max|x|, max|x|] with 2^b - 1
  truthy(err[441] < err[440], string.format("asymmetric int4 pages beat symmetric: rel_l2 %.4g vs %.4g", err[441], err[440]))
  -- through the method: eval with kv_bits, and bad bits named in one line
  local qd, kd, vd = sl.randn({HQ, 3, D}, {seed = 14}), sl.randn({HKV, 90, D}, {seed = 15}), sl.randn({HKV, 90, D}, {seed = 16})
  local r = sl.eval("quest", sl.problem{q = qd, k = kd, v = vd}, {params = {budget = 96, page = 16, kv_bits = 8, v_bits = 8}})
  truthy(r.metrics.rel_l2 < 0.02 and r.metrics.rel_l2 > 0, "int8 pages at full budget: rel_l2 " .. r.metrics.rel_l2)
  local rz = sl.eval("quest", sl.problem{q = qd, k = kd, v = vd}, {params = {budget = 96, page = 16, kv_bits = 4, v_bits = 4, kv_zero = 1}})
  local rs = sl.eval("quest", sl.problem{q = qd, k = kd, v = vd}, {params = {budget = 96, page = 16, kv_bits = 4, v_bits = 4}})
  truthy(rz.metrics.rel_l2 > 0 and rz.metrics.rel_l2 < rs.metrics.rel_l2,
    string.format("eval kv_zero = 1: int4 rel_l2 %.4g below symmetric %.4g", rz.metrics.rel_l2, rs.metrics.rel_l2))
  raises(function() sl.eval("quest", sl.problem{q = qd, k = kd, v = vd}, {params = {page = 16, kv_bits = 5}}) end,
    "kbits = 5", "kv_bits 5")
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

-- float64 top-k token sets of q (row 1) per query head over k, ties lower index.
local function oracle_topk(qt, kt, n, kk)
  local sets = {}
  for h = 1, HQ do
    local g = (h - 1) // (HQ // HKV) + 1
    local sc, ids = {}, {}
    for j = 1, n do
      local dot = 0
      for c = 1, D do dot = dot + qt[h][1][c] * kt[g][j][c] end
      sc[j], ids[j] = dot, j
    end
    table.sort(ids, function(a, b) if sc[a] ~= sc[b] then return sc[a] > sc[b] end return a < b end)
    sets[h] = {}
    for i = 1, kk do sets[h][ids[i] - 1] = true end
  end
  return sets
end

local function same_set(list_row, set)
  local n = 0
  for _, id in ipairs(list_row) do
    if id >= 0 then
      if not set[id] then return false end
      n = n + 1
    end
  end
  local m = 0
  for _ in pairs(set) do m = m + 1 end
  return n == m
end

-- zeros over the first `upto` tokens (all when nil), -inf after: a score-blind
-- estimator whose ranking is token order.
local function blind(n, upto)
  local row = {}
  for j = 1, n do row[j] = (not upto or j <= upto) and 0 or -math.huge end
  local t = {}
  for h = 1, HQ do t[h] = {row} end
  return sl.tensor(t)
end

-- ---- double_sparsity ----

test("double_sparsity: dense at budget >= n; r = d equals the oracle top-k; score-blind fails", function()
  local ds = sl.methods.get("double_sparsity")
  local q, k, v = sl.randn({HQ, 2, D}, {seed = 51}), sl.randn({HKV, 70, D}, {seed = 52}), sl.randn({HKV, 70, D}, {seed = 53})
  local r = sl.eval("double_sparsity", sl.problem{q = q, k = k, v = v}, {params = {budget = 80}})
  truthy(r.metrics.rel_l2 <= 1e-5, "dense at budget >= n: " .. r.metrics.rel_l2)
  raises(function() sl.eval("double_sparsity", sl.problem{q = q, k = k, v = v}, {params = {channel = 1}}) end,
    "double_sparsity: channel = 1 needs calibration queries", "q ranking without calibration")
  local qp, kp, vp = peaked(120, 8, 61)
  local cache = decode.cache_from(kp, vp, 8)
  local all = decode.channel_rank(cache:tensor("k"), D, cache:len())
  for _, row in ipairs(all:totable()) do
    local seen = {}
    for _, c in ipairs(row) do truthy(c >= 0 and c < D and not seen[c], "channel ranking is a permutation"); seen[c] = true end
  end
  local p = sl.registry.resolve(ds, {budget = 24, group_factor = 1})
  local out = ds.token_step(cache, qp, p, 5, nil, all)
  local sets = oracle_topk(qp:totable(), kp:totable(), 120, 24)
  for h = 1, HQ do truthy(same_set(out.pages:totable()[h][1], sets[h]), "r = d selection = oracle top-k, head " .. h) end
  local p8 = sl.registry.resolve(ds, {budget = 24, group_factor = 2})
  local ch = decode.channel_rank(cache:tensor("k"), D // 2, cache:len())
  local good = recall_of(ds.token_step(cache, qp, p8, 5, nil, ch), qp, cache)
  truthy(good >= 0.9, "r = d/2 recall " .. good)
  local bad = recall_of(ds.token_step(cache, qp, p8, 5, nil, ch, function() return blind(120) end), qp, cache)
  truthy(bad < 0.9, "first-k token selection must fail: recall " .. bad)
  local rnd = recall_of(ds.token_step(cache, qp, p8, 5, nil, ch, function() return sl.randn({HQ, 1, 120}, {seed = 5}) end), qp, cache)
  truthy(rnd < 0.9, "random token selection must fail: recall " .. rnd)
end)

test("double_sparsity: label_bits pseudo-quantises q[C] and k[C] per row (float64 check); recall holds; blind fails", function()
  local ds = sl.methods.get("double_sparsity")
  local qp, kp, vp = peaked(120, 8, 62)
  local cache = decode.cache_from(kp, vp, 8)
  local r = D // 2
  local ch = decode.channel_rank(cache:tensor("k"), r, cache:len())
  local function pq(xs, bits)   -- the reference's pseudo_quantize over one row
    local lo, hi = math.huge, -math.huge
    for _, x in ipairs(xs) do lo = math.min(lo, x); hi = math.max(hi, x) end
    local step = (hi - lo) / (2 ^ bits - 1)
    local out = {}
    for i, x in ipairs(xs) do out[i] = step > 0 and lo + math.floor((x - lo) / step + 0.5) * step or x end
    return out
  end
  local qt, kt, ct = qp:totable(), kp:totable(), ch:totable()
  for _, bits in ipairs{4, 8} do
    local p = sl.registry.resolve(ds, {budget = 24, group_factor = 2, label_bits = bits})
    local out = ds.token_step(cache, qp, p, 5, nil, ch)
    local lists = out.pages:totable()
    for h = 1, HQ do
      local g = (h - 1) // (HQ // HKV) + 1
      local cols = ct[g]
      local qrow = {}
      for i, c in ipairs(cols) do qrow[i] = qt[h][1][c + 1] end
      qrow = pq(qrow, bits)
      local scores, idx = {}, {}
      for j = 1, 120 do
        local krow = {}
        for i, c in ipairs(cols) do krow[i] = kt[g][j][c + 1] end
        krow = pq(krow, bits)
        local sum = 0
        for i = 1, #cols do sum = sum + qrow[i] * krow[i] end
        scores[j], idx[j] = sum, j
      end
      table.sort(idx, function(a, b) return scores[a] > scores[b] or (scores[a] == scores[b] and a < b) end)
      local set = {}
      for i = 1, 24 do set[idx[i] - 1] = true end
      truthy(same_set(lists[h][1], set), string.format("label_bits %d: selection = float64 pseudo-quantised top-k, head %d", bits, h))
    end
    truthy(recall_of(out, qp, cache) >= 0.9, "label_bits " .. bits .. " recall " .. recall_of(out, qp, cache))
    local bad = recall_of(ds.token_step(cache, qp, p, 5, nil, ch, function() return blind(120) end), qp, cache)
    truthy(bad < 0.9, "first-k token selection with quantised labels must fail: recall " .. bad)
    truthy(out.stats.kv_bytes < ds.token_step(cache, qp, sl.registry.resolve(ds, {budget = 24, group_factor = 2}), 5, nil, ch).stats.kv_bytes,
      "quantised labels read fewer bytes")
  end
  raises(function() ds.token_step(cache, qp, sl.registry.resolve(ds, {budget = 24, label_bits = 9}), 5, nil, ch) end,
    "double_sparsity: label_bits = 9", "label_bits 9")
end)

test("seer_attention_r: learned gate from a weights file selects what a hand-built gate predicts; zero gate fails", function()
  local sr = sl.methods.get("seer_attention_r")
  local G = HQ // HKV
  local qp, kp, vp, hot = peaked(160, 8, 231)
  -- hand-built gate, dg = D: Q_gate = mean of the group's queries, K_gate = the block's mean key
  local function weights(scale_q)
    local wq, wk = {}, {}
    for h = 1, HKV do
      wq[h], wk[h] = {}, {}
      for o = 1, D do
        local rq, rk = {}, {}
        for i = 1, G * D do rq[i] = ((i - 1) % D + 1 == o) and scale_q / G or 0 end
        for i = 1, 3 * D do rk[i] = (i == 2 * D + o) and 1 or 0 end
        wq[h][o], wk[h][o] = rq, rk
      end
    end
    local path = os.tmpname() .. ".safetensors"
    sl.save(path, {wq = sl.tensor(wq), wk = sl.tensor(wk)})
    return path
  end
  local good_path, zero_path = weights(1), weights(0)
  local function run(path, steps)
    local st = decode.begin("seer_attention_r", {hq = HQ, hkv = HKV, d = D, page = 8})
    decode.prefill(st, 2, kp:narrow(2, 1, 159 - steps), vp:narrow(2, 1, 159 - steps))
    -- gate_rope = 0: this hand-built gate is checked without the gate's RoPE (the next test has it)
    local p = {budget = 32, block = 8, gate = 1, weights = path, gate_rope = 0}
    local out
    for s = 0, steps do
      local pos = 160 - steps + s
      out = decode.step("seer_attention_r", st, {q = qp, k = kp:narrow(2, pos, 1), v = vp:narrow(2, pos, 1), layer = 2}, p)
    end
    return out, st
  end
  local out, st = run(good_path, 0)
  -- the prediction, float64 here: blocks 0..18 complete (159 keys + 1 = 160: block 19 complete too, but scored with the rest)
  local qt, kt = qp:totable(), kp:totable()
  local lists = out.pages:totable()
  for g = 1, HKV do
    local qm = {}
    for c = 1, D do
      qm[c] = 0
      for j = 1, G do qm[c] = qm[c] + qt[(g - 1) * G + j][1][c] / G end
    end
    local sc, idx = {}, {}
    for b = 0, 19 do
      local s = 0
      for c = 1, D do
        local m = 0
        for t = b * 8 + 1, b * 8 + 8 do m = m + kt[g][t][c] / 8 end
        s = s + qm[c] * m
      end
      sc[b], idx[#idx + 1] = s, b
    end
    table.sort(idx, function(a, b) return sc[a] > sc[b] or (sc[a] == sc[b] and a < b) end)
    local want = {[19] = true}
    local taken = 1
    for _, b in ipairs(idx) do if taken < 4 and not want[b] then want[b] = true; taken = taken + 1 end end
    local got = {}
    for _, b in ipairs(lists[g][1]) do if b >= 0 then got[b] = true end end
    for b in pairs(want) do truthy(got[b], string.format("kv head %d: predicted block %d selected", g, b)) end
    local found = 0
    for b in pairs(got) do if hot[g][b] then found = found + 1 end end
    truthy(found >= 2, "the gate finds the hot blocks of kv head " .. g .. ": " .. found)
  end
  local full = decode.cache_from(kp, vp, 8)
  local good_recall = recall_of(out, qp, full)
  truthy(good_recall >= 0.8, "gate recall " .. good_recall)
  -- a zero gate (score-blind: every block ties) picks the first blocks and fails the same checks
  local bad = run(zero_path, 0)
  local found = 0
  for g, row in ipairs(bad.pages:totable()) do for _, b in ipairs(row[1]) do if hot[g][b] then found = found + 1 end end end
  local bad_recall = recall_of(bad, qp, full)
  truthy(found < 2 * HKV and bad_recall < 0.8, string.format("a score-blind (zero) gate must fail: found %d, recall %.3f", found, bad_recall))
  -- the K compression cache after steps across block boundaries = recomputed from scratch
  local _, st2 = run(good_path, 12)
  local ls = st2:layer(2)
  local fresh = {}
  local w = st2.gate[2]
  sr.gate_keys(fresh, ls.cache, {block = 8, gate_rope = 0}, w)
  eq(ls.kgate.blocks, fresh.kgate.blocks, "complete blocks")
  for g = 1, HKV do
    for b = 1, fresh.kgate.blocks do
      for c = 1, D do near(ls.kgate.rows[g][b][c], fresh.kgate.rows[g][b][c], 1e-6, "K compression cache = recomputation") end
    end
  end
  raises(function() run("", 0) end, "seer_attention_r: gate = 1 needs --param weights=FILE", "no weights")
  os.remove(good_path)
  os.remove(zero_path)
end)

test("seer_attention_r: gate RMSNorm and RoPE (float64 prediction of scores, K cache rows, gate_kpos); zero gate fails", function()
  local G = HQ // HKV
  local DG, THETA, B = 2 * D, 1e8, 8
  local qp, kp, vp, hot = peaked(160, B, 377)
  -- hand-built gate: the group mean of q / the block mean of k land on the gate channels that RoPE barely
  -- rotates at THETA (j in [DG/4, DG/2) and their partners), plus small random weights everywhere
  local function slot(c) return c <= D // 2 and DG // 4 + c or 3 * DG // 4 + c - D // 2 end
  local nz = sl.randn({HKV, DG, G * D + 3 * D}, {seed = 91, std = 0.02}):totable()
  local nw = sl.randn({2, DG}, {seed = 92}):totable()
  local qn, kn = {}, {}
  for o = 1, DG do qn[o], kn[o] = 0.75 + 0.25 * math.tanh(nw[1][o]), 0.75 + 0.25 * math.tanh(nw[2][o]) end
  local function weights(on)
    local wq, wk = {}, {}
    for h = 1, HKV do
      wq[h], wk[h] = {}, {}
      for o = 1, DG do
        local rq, rk = {}, {}
        for i = 1, G * D do rq[i] = on * ((slot((i - 1) % D + 1) == o and 1 / G or 0) + nz[h][o][i]) end
        for i = 1, 3 * D do rk[i] = on * ((i > 2 * D and slot(i - 2 * D) == o and 1 or 0) + nz[h][o][G * D + i]) end
        wq[h][o], wk[h][o] = rq, rk
      end
    end
    local path = os.tmpname() .. ".safetensors"
    sl.save(path, {wq = sl.tensor(wq), wk = sl.tensor(wk), qnorm = sl.tensor(qn), knorm = sl.tensor(kn)})
    return path, wq, wk
  end
  local good, wq, wk = weights(1)
  local zero = weights(0)
  local function run(path, steps, extra)
    local st = decode.begin("seer_attention_r", {hq = HQ, hkv = HKV, d = D, page = 8})
    decode.prefill(st, 1, kp:narrow(2, 1, 159 - steps), vp:narrow(2, 1, 159 - steps))
    local p = {budget = 32, block = B, gate = 1, weights = path, gate_norm = 1, gate_theta = THETA}
    for key, val in pairs(extra or {}) do p[key] = val end
    local out
    for s = 0, steps do
      local pos = 160 - steps + s
      out = decode.step("seer_attention_r", st, {q = qp, k = kp:narrow(2, pos, 1), v = vp:narrow(2, pos, 1), layer = 1}, p)
    end
    return out, st
  end
  -- float64 gate, written from the reference's formulas: y = W x; RMSNorm w x / sqrt(mean x^2 + 1e-6);
  -- RoPE rotate_half: (x_j, x_{j+DG/2}) rotated by pos . THETA^(-2j/DG)
  local function proj(W, x)
    local y = {}
    for o = 1, DG do
      local s = 0
      for i = 1, #x do s = s + W[o][i] * x[i] end
      y[o] = s
    end
    return y
  end
  local function norm(x, w)
    local s = 0
    for _, v in ipairs(x) do s = s + v * v end
    local y = {}
    for i, v in ipairs(x) do y[i] = w[i] * v / math.sqrt(s / #x + 1e-6) end
    return y
  end
  local function rot(x, pos)
    local y, half = {}, DG // 2
    for i = 1, DG do y[i] = x[i] end
    for j = 0, half - 1 do
      local a = pos * THETA ^ (-2 * j / DG)
      y[j + 1] = x[j + 1] * math.cos(a) - x[j + half + 1] * math.sin(a)
      y[j + half + 1] = x[j + half + 1] * math.cos(a) + x[j + 1] * math.sin(a)
    end
    return y
  end
  local qt, kt = qp:totable(), kp:totable()
  local function kgate(g, b, pos)
    local mx, mn, me = {}, {}, {}
    for c = 1, D do
      mx[c], mn[c], me[c] = -math.huge, math.huge, 0
      for t = b * B + 1, b * B + B do
        local x = kt[g][t][c]
        mx[c], mn[c], me[c] = math.max(mx[c], x), math.min(mn[c], x), me[c] + x / B
      end
    end
    local x = {}
    for _, part in ipairs{mx, mn, me} do for _, v in ipairs(part) do x[#x + 1] = v end end
    return rot(norm(proj(wk[g], x), kn), pos)
  end
  local out, st = run(good, 0)
  local lists = out.pages:totable()
  local ls = st:layer(1)
  for g = 1, HKV do
    local x = {}
    for j = 1, G do for c = 1, D do x[#x + 1] = qt[(g - 1) * G + j][1][c] end end
    local qg = rot(norm(proj(wq[g], x), qn), 159)
    local sc, idx = {}, {}
    for b = 0, 19 do
      local kg = kgate(g, b, b * B)
      for c = 1, DG do near(ls.kgate.rows[g][b + 1][c], kg[c], 1e-4, "K compression row = float64 gate key") end
      local s = 0
      for c = 1, DG do s = s + qg[c] * kg[c] end
      sc[b], idx[#idx + 1] = s / math.sqrt(DG), b
    end
    table.sort(idx, function(a, b) return sc[a] > sc[b] end)
    local want, taken = {[19] = true}, 1
    for _, b in ipairs(idx) do if taken < 4 and not want[b] then want[b] = true; taken = taken + 1 end end
    local got, found = {}, 0
    for _, b in ipairs(lists[g][1]) do if b >= 0 then got[b] = true end end
    for b in pairs(want) do truthy(got[b], string.format("kv head %d: predicted block %d selected", g, b)) end
    for b in pairs(got) do if hot[g][b] then found = found + 1 end end
    truthy(found >= 2, "the normalised, rotated gate finds the hot blocks of kv head " .. g .. ": " .. found)
  end
  local full = decode.cache_from(kp, vp, 8)
  local r_good = recall_of(out, qp, full)
  truthy(r_good >= 0.8, "gate recall " .. r_good)
  -- score-blind: a zero projection (every block ties) fails the same checks
  local bad = run(zero, 0)
  local found = 0
  for g, row in ipairs(bad.pages:totable()) do for _, b in ipairs(row[1]) do if hot[g][b] then found = found + 1 end end end
  local r_bad = recall_of(bad, qp, full)
  truthy(found < 2 * HKV and r_bad < 0.8, string.format("a score-blind (zero) gate must fail: found %d, recall %.3f", found, r_bad))
  -- gate_kpos = 1: blocks completed while decoding (18, 19 here: 147 prefill tokens) rotate at their last token
  local _, st3 = run(good, 12, {gate_kpos = 1})
  local rows = st3:layer(1).kgate.rows
  for g = 1, HKV do
    for _, bp in ipairs{{17, 17 * B}, {18, 18 * B + B - 1}, {19, 19 * B + B - 1}} do
      local kg = kgate(g, bp[1], bp[2])
      for c = 1, DG do near(rows[g][bp[1] + 1][c], kg[c], 1e-4, "gate_kpos = 1 row of block " .. bp[1]) end
    end
  end
  local nonorm = os.tmpname() .. ".safetensors"
  sl.save(nonorm, {wq = sl.tensor(wq), wk = sl.tensor(wk)})
  raises(function() run(nonorm, 0) end, "seer_attention_r: gate_norm = 1: " .. nonorm .. " has no qnorm.1 / qnorm", "no norm weights")
  for _, f in ipairs{good, zero, nonorm} do os.remove(f) end
end)

test("zipvl: re-compression every N generated tokens (decode queries as probes); tau mass; blind order fails", function()
  local zv = sl.methods.get("zipvl")
  local qp, kp, vp = peaked(100, 8, 241)
  local n0, N, W = 60, 24, 12
  -- generated keys: random, except two per window aligned with the group's query (the tokens decoding attends to)
  local kt, qt = kp:totable(), qp:totable()
  local hotpos = {[n0 + 5] = true, [n0 + 9] = true, [n0 + W + 4] = true, [n0 + W + 10] = true}
  for g = 1, HKV do
    for pos in pairs(hotpos) do
      for c = 1, D do kt[g][pos + 1][c] = 2.5 * qt[(g - 1) * (HQ // HKV) + 1][1][c] end
    end
  end
  local k = sl.tensor(kt)
  local obs = sl.randn({HQ, 8, D}, {seed = 242})
  local function run(p, imp_fn)
    local st = decode.begin("zipvl", {hq = HQ, hkv = HKV, d = D, page = 8})
    decode.prefill(st, 0, k:narrow(2, 1, n0), vp:narrow(2, 1, n0), {q = obs})
    local ls = st:layer(0)
    local out
    for s = 1, N do
      local pos = n0 + s
      ls.cache:append(k:narrow(2, pos, 1), vp:narrow(2, pos, 1))
      ls.seen = ls.seen + 1
      out = zv.decode(st, ls, {q = qp, layer = 0}, sl.registry.resolve(zv, p), imp_fn)
    end
    return out, ls
  end
  local p = {tau = 0.8, bits_high = 8, bits_low = 2, probe = 8, recompress = W}
  local out, ls = run(p)
  local z = ls.zipvl
  eq(#z.windows, 2, "two windows of " .. W .. " generated tokens re-compressed")
  eq(z.done, n0 + N, "every generated token compressed")
  eq(out.stats.compressed, n0 + N, "stats report the compressed prefix")
  -- float64 here: the window's normalised importance from its decode queries (softmax over keys <= position)
  local scale = 1 / math.sqrt(D)
  for wi, win in ipairs(z.windows) do
    local imp = {}
    for j = win.from, win.to - 1 do imp[j] = 0 end
    for h = 1, HQ do
      local g = (h - 1) // (HQ // HKV) + 1
      for pos = win.from, win.to - 1 do   -- the query decoding token pos sees keys 0..pos
        local sc, mx, z2 = {}, -math.huge, 0
        for j = 0, pos do
          local dot = 0
          for c = 1, D do dot = dot + qt[h][1][c] * kt[g][j + 1][c] end
          sc[j] = dot * scale
          mx = math.max(mx, sc[j])
        end
        for j = 0, pos do z2 = z2 + math.exp(sc[j] - mx) end
        for j = win.from, pos do imp[j] = imp[j] + math.exp(sc[j] - mx) / z2 end
      end
    end
    local total, in_set, smallest = 0, 0, math.huge
    for j = win.from, win.to - 1 do
      imp[j] = imp[j] / (win.to - j)   -- the probes that see key j
      total = total + imp[j]
    end
    for j in pairs(win.set) do in_set = in_set + imp[j]; smallest = math.min(smallest, imp[j]) end
    truthy(in_set >= p.tau * total - 1e-9, string.format("window %d: the set holds >= tau of the importance", wi))
    truthy(in_set - smallest < p.tau * total + 1e-9, string.format("window %d: the set is minimal", wi))
    for pos in pairs(hotpos) do
      if pos >= win.from and pos < win.to then truthy(win.set[pos], "window " .. wi .. ": aligned token " .. pos .. " kept at b_h") end
    end
    -- stored keys of the window within half a quantisation step of the originals (per channel and class)
    local stored = z.k:narrow(2, win.from + 1, win.to - win.from):totable()
    for g = 1, HKV do
      for c = 1, D do
        for _, high in ipairs{true, false} do
          local lo, hi = math.huge, -math.huge
          for j = win.from, win.to - 1 do
            if (win.set[j] == true) == high then lo = math.min(lo, kt[g][j + 1][c]); hi = math.max(hi, kt[g][j + 1][c]) end
          end
          local half = (hi - lo) / ((1 << (high and 8 or 2)) - 1) / 2
          for j = win.from, win.to - 1 do
            if (win.set[j] == true) == high then
              truthy(math.abs(stored[g][j - win.from + 1][c] - kt[g][j + 1][c]) <= half + 1e-6, "quantisation within half a step")
            end
          end
        end
      end
    end
  end
  -- recompress = 0: generated tokens stay f32
  local _, ls0 = run({tau = 0.5, bits_high = 8, bits_low = 2, probe = 8, recompress = 0})
  eq(ls0.zipvl.done, n0, "recompress = 0 leaves generated tokens uncompressed")
  -- position order (score-blind) misses the aligned tokens of the windows
  local _, lsb = run(p, function(n)
    local imp = {}
    for j = 1, n do imp[j] = 1 / j end
    return imp
  end)
  local missed = 0
  for _, win in ipairs(lsb.zipvl.windows) do
    for pos in pairs(hotpos) do if pos >= win.from and pos < win.to and not win.set[pos] then missed = missed + 1 end end
  end
  truthy(missed > 0, "position-order importance must miss aligned tokens: missed " .. missed)
end)

test("spatten: cascade head pruning by accumulated |o_h|; pruned heads stay out; index-order pruning fails", function()
  local spm = sl.methods.get("spatten")
  local qp, kp, vp = peaked(60, 8, 161)
  -- the second KV group's values are larger: its query heads matter more
  local vt = vp:totable()
  for t = 1, 60 do for c = 1, D do vt[2][t][c] = 4 * vt[2][t][c] end end
  local v = sl.tensor(vt)
  local p = sl.registry.resolve(spm, {budget = 1000, prune_layer = 0, heads = 2, head_prune_layer = 1})
  local function run(rank)
    local st = decode.state("spatten", {hq = HQ, hkv = HKV, d = D, page = 8})
    for l = 0, 2 do decode.prefill(st, l, kp:narrow(2, 1, 56), v:narrow(2, 1, 56)) end
    local outs, pruned = {}, {}
    for t = 1, 4 do
      local q = sl.randn({HQ, 1, D}, {seed = 170 + t})
      for l = 0, 2 do
        local ls = st:layer(l)
        ls.cache:append(kp:narrow(2, 56 + t, 1), v:narrow(2, 56 + t, 1))
        local out = spm.decode(st, ls, {q = q, layer = l}, p, rank)
        local dense = decode.attend(ls.cache, q, decode.all_pages(HQ, 1, ls.cache:pages()))
        outs[#outs + 1] = {layer = l, step = t, out = out, dense = dense}
      end
      local now = {}
      for h in pairs(st.spatten.head_pruned or {}) do now[h] = true end
      for h in pairs(pruned) do truthy(now[h], "cascade: pruned head " .. h .. " came back") end
      pruned = now
    end
    return st, outs
  end
  local st, outs = run(nil)
  local np = 0
  for h in pairs(st.spatten.head_pruned) do np = np + 1; truthy(h < 2, "the small-|o| heads (group 1) are pruned: " .. h) end
  eq(np, 2, "two heads pruned")
  -- importance = accumulated |o_h|: step 1, layer 0 (before any pruning) from the dense output
  local st1 = decode.state("spatten", {hq = HQ, hkv = HKV, d = D, page = 8})
  decode.prefill(st1, 0, kp:narrow(2, 1, 56), v:narrow(2, 1, 56))
  local ls1 = st1:layer(0)
  ls1.cache:append(kp:narrow(2, 57, 1), v:narrow(2, 57, 1))
  local q1 = sl.randn({HQ, 1, D}, {seed = 171})
  spm.decode(st1, ls1, {q = q1, layer = 0}, p)
  local od = decode.attend(ls1.cache, q1, decode.all_pages(HQ, 1, ls1.cache:pages())):totable()
  for h = 1, HQ do
    local m = 0
    for c = 1, D do m = m + math.abs(od[h][1][c]) end
    near(st1.spatten.head_score[h - 1], m, 1e-5, "head importance = |o_h|, head " .. h)
  end
  -- after pruning, the pruned heads output 0 and the kept heads equal dense
  local err_good, err_bad = 0, 0
  for _, r in ipairs(outs) do
    if r.layer >= 1 and r.step >= 2 then err_good = err_good + sl.metric.rel_l2(r.out.o, r.dense) end
  end
  local _, bad = run({head = function(_, h) return -h end})   -- index order: keeps heads 0 and 1
  for _, r in ipairs(bad) do
    if r.layer >= 1 and r.step >= 2 then err_bad = err_bad + sl.metric.rel_l2(r.out.o, r.dense) end
  end
  truthy(err_good < err_bad, string.format("|o|-ranked pruning loses less than index order: %.3f vs %.3f", err_good, err_bad))
end)

test("spatten: progressive quantisation: confident heads keep the MSB result (float64 check), the rest are exact", function()
  local spm = sl.methods.get("spatten")
  local qp, kp, vp = peaked(80, 8, 181)
  local function step_with(conf)
    local st = decode.state("spatten", {hq = HQ, hkv = HKV, d = D, page = 8})
    decode.prefill(st, 0, kp:narrow(2, 1, 79), vp:narrow(2, 1, 79))
    local ls = st:layer(0)
    ls.cache:append(kp:narrow(2, 80, 1), vp:narrow(2, 80, 1))
    local p = sl.registry.resolve(spm, {budget = 1000, prune_layer = 5, confidence = conf, msb_bits = 4})
    return spm.decode(st, ls, {q = qp, layer = 0}, p), ls.cache
  end
  local exact, cache = step_with(0)
  local none = step_with(1.01)
  eq(none.stats.msb_heads, 0, "threshold above 1: no head is confident")
  near(sl.metric.max_abs(none.o, exact.o), 0, 1e-6, "no confident head: exact")
  -- float64 here: MSB scores from q and k quantised per row to 4 bits (asymmetric min/max)
  local function qdq(row)
    local lo, hi = math.huge, -math.huge
    for _, x in ipairs(row) do lo = math.min(lo, x); hi = math.max(hi, x) end
    local step, out = (hi - lo) / 15, {}
    for i, x in ipairs(row) do out[i] = step > 0 and lo + math.floor((x - lo) / step + 0.5) * step or x end
    return out
  end
  local qt, kt, vt = qp:totable(), kp:totable(), vp:totable()
  local peak, msb_o = {}, {}
  for h = 1, HQ do
    local g = (h - 1) // (HQ // HKV) + 1
    local qq = qdq(qt[h][1])
    local sc, mx = {}, -math.huge
    for t = 1, 80 do
      local kk = qdq(kt[g][t])
      local dot = 0
      for c = 1, D do dot = dot + qq[c] * kk[c] end
      sc[t] = dot / math.sqrt(D)
      mx = math.max(mx, sc[t])
    end
    local z = 0
    for t = 1, 80 do z = z + math.exp(sc[t] - mx) end
    peak[h] = 1 / z
    msb_o[h] = {}
    for c = 1, D do
      local acc = 0
      for t = 1, 80 do acc = acc + math.exp(sc[t] - mx) / z * vt[g][t][c] end
      msb_o[h][c] = acc
    end
  end
  local sorted = {}
  for h = 1, HQ do sorted[h] = peak[h] end
  table.sort(sorted)
  local thr = (sorted[2] + sorted[3]) / 2   -- two heads confident, two not
  local mixed = step_with(thr)
  eq(mixed.stats.msb_heads, 2, "two heads answered from the MSBs")
  local mo, eo = mixed.o:totable(), exact.o:totable()
  for h = 1, HQ do
    for c = 1, D do
      if peak[h] >= thr then
        near(mo[h][1][c], msb_o[h][c], 1e-5, "confident head " .. h .. ": softmax of the MSB scores . V")
      else
        near(mo[h][1][c], eo[h][1][c], 1e-6, "flat head " .. h .. ": exact")
      end
    end
  end
  truthy(sl.metric.rel_l2(mixed.o, exact.o) < 0.2, "MSB heads stay close to exact: " .. sl.metric.rel_l2(mixed.o, exact.o))
  local _ = cache
end)

test("streaming_llm: pos_shift re-positions keys to cache slots (float64 pre-RoPE check); no shift before eviction", function()
  local theta, n_init, n_local, N = 10000, 2, 6, 20
  -- pre-RoPE q and k, rotated here (RoPE "half" style) at their text positions
  local function rot(v, pos)
    local out, half = {}, D // 2
    for c = 1, D do out[c] = v[c] end
    for j = 0, half - 1 do
      local ang = pos * theta ^ (-2 * j / D)
      local a, b = j + 1, j + half + 1
      out[a] = v[a] * math.cos(ang) - v[b] * math.sin(ang)
      out[b] = v[a] * math.sin(ang) + v[b] * math.cos(ang)
    end
    return out
  end
  local kpre = sl.randn({HKV, N, D}, {seed = 251}):totable()
  local qpre = sl.randn({HQ, N, D}, {seed = 252}):totable()
  local vt = sl.randn({HKV, N, D}, {seed = 253}):totable()
  local kpost, qpost = {}, {}
  for g = 1, HKV do kpost[g] = {}; for t = 1, N do kpost[g][t] = rot(kpre[g][t], t - 1) end end
  for h = 1, HQ do qpost[h] = {}; for t = 1, N do qpost[h][t] = rot(qpre[h][t], t - 1) end end
  local k, v, q = sl.tensor(kpost), sl.tensor(vt), sl.tensor(qpost)
  local function run(shift)
    local st = decode.begin("streaming_llm", {hq = HQ, hkv = HKV, d = D, page = 4})
    decode.prefill(st, 0, k:narrow(2, 1, 5), v:narrow(2, 1, 5))
    local outs = {}
    for pos = 6, N do
      outs[pos] = decode.step("streaming_llm", st, {q = q:narrow(2, pos, 1), k = k:narrow(2, pos, 1), v = v:narrow(2, pos, 1),
        layer = 0, rope = {theta = theta, style = "half"}}, {n_init = n_init, n_local = n_local, pos_shift = shift})
    end
    return outs
  end
  local shifted, plain = run(1), run(0)
  for pos = 6, n_init + n_local do
    near(sl.metric.max_abs(shifted[pos].o, plain[pos].o), 0, 1e-6, "no eviction yet: pos_shift changes nothing")
  end
  -- after evictions: float64 attention with every key at its cache slot and the query at the last slot
  for _, pos in ipairs{12, N} do
    local slots = {}
    for j = 0, n_init - 1 do slots[#slots + 1] = j end
    for j = pos - n_local, pos - 1 do slots[#slots + 1] = j end
    local L = #slots
    local ot = shifted[pos].o:totable()
    local diff = 0
    for h = 1, HQ do
      local g = (h - 1) // (HQ // HKV) + 1
      local qq = rot(qpre[h][pos], L - 1)
      local sc, mx = {}, -math.huge
      for si, j in ipairs(slots) do
        local kk = rot(kpre[g][j + 1], si - 1)
        local dot = 0
        for c = 1, D do dot = dot + qq[c] * kk[c] end
        sc[si] = dot / math.sqrt(D)
        mx = math.max(mx, sc[si])
      end
      local z = 0
      for si = 1, L do z = z + math.exp(sc[si] - mx) end
      for c = 1, D do
        local acc = 0
        for si, j in ipairs(slots) do acc = acc + math.exp(sc[si] - mx) / z * vt[g][j + 1][c] end
        near(ot[h][1][c], acc, 1e-5, "pos_shift output = attention at cache slots, step " .. pos)
        diff = math.max(diff, math.abs(acc - plain[pos].o:totable()[h][1][c]))
      end
    end
    truthy(diff > 1e-4, "after eviction the shift matters (step " .. pos .. ", max diff " .. diff .. ")")
  end
  raises(function()
    local st = decode.begin("streaming_llm", {hq = HQ, hkv = HKV, d = D, page = 4})
    decode.prefill(st, 0, k:narrow(2, 1, 12), v:narrow(2, 1, 12))
    decode.step("streaming_llm", st, {q = q:narrow(2, 13, 1), k = k:narrow(2, 13, 1), v = v:narrow(2, 13, 1), layer = 0},
      {n_init = 2, n_local = 6, pos_shift = 1})
  end, "streaming_llm: pos_shift = 1 needs the model's RoPE", "no RoPE outside the model runner")
  -- model level: the runner passes its RoPE; pos_shift runs and changes the result once tokens are evicted
  local model = sl.model.load("experiments/data/tinystories260k/model.bin")
  local toks = model:encode("Once upon a time there was a little girl who liked to play in the park with her dog.")
  local a = model:evaluate_decode{tokens = toks, prefix = 8, decode = {method = "streaming_llm", params = {n_init = 2, n_local = 6, pos_shift = 1}}}
  local b = model:evaluate_decode{tokens = toks, prefix = 8, decode = {method = "streaming_llm", params = {n_init = 2, n_local = 6}}}
  truthy(a.kl == a.kl and a.kl >= 0 and math.abs(a.kl - b.kl) > 1e-6, string.format("model: pos_shift KL %.4f vs %.4f", a.kl, b.kl))
end)

test("spatten: local V pruning reads only rows with probability >= threshold (float64 check); random rows lose more", function()
  local spm = sl.methods.get("spatten")
  local qp, kp, vp = peaked(80, 8, 191)
  local function step_with(thr)
    local st = decode.state("spatten", {hq = HQ, hkv = HKV, d = D, page = 8})
    decode.prefill(st, 0, kp:narrow(2, 1, 79), vp:narrow(2, 1, 79))
    local ls = st:layer(0)
    ls.cache:append(kp:narrow(2, 80, 1), vp:narrow(2, 80, 1))
    return spm.decode(st, ls, {q = qp, layer = 0}, sl.registry.resolve(spm, {budget = 1000, prune_layer = 5, v_threshold = thr}))
  end
  local full, pruned = step_with(0), step_with(0.01)
  eq(full.stats.v_rows_read, 80 * HQ, "threshold 0 reads every V row")
  truthy(pruned.stats.v_rows_read < 80 * HQ / 2, "threshold 0.01 reads fewer rows: " .. pruned.stats.v_rows_read)
  local qt, kt, vt = qp:totable(), kp:totable(), vp:totable()
  local ot, err_good, err_rand = pruned.o:totable(), 0, 0
  local ft = full.o:totable()
  for h = 1, HQ do
    local all = {}
    for j = 0, 79 do all[j] = true end
    local _, l = attend_ref(qt, kt, vt, h, all)
    local g = (h - 1) // (HQ // HKV) + 1
    local keep, count = {}, 0
    for j = 0, 79 do
      local dot = 0
      for c = 1, D do dot = dot + qt[h][1][c] * kt[g][j + 1][c] end
      if math.exp(dot / math.sqrt(D) - l) >= 0.01 then keep[j] = true; count = count + 1 end
    end
    local o = attend_ref(qt, kt, vt, h, keep)
    for c = 1, D do near(ot[h][1][c], o[c], 1e-5, "head " .. h .. ": attention over the rows >= threshold") end
    -- the same number of rows chosen at random (score-blind)
    local rnd, taken, x = {}, 0, h * 7919
    while taken < count do
      x = (x * 1103515245 + 12345) % 2147483648
      local j = x % 80
      if not rnd[j] then rnd[j] = true; taken = taken + 1 end
    end
    local orand = attend_ref(qt, kt, vt, h, rnd)
    for c = 1, D do
      err_good = err_good + (o[c] - ft[h][1][c]) ^ 2
      err_rand = err_rand + (orand[c] - ft[h][1][c]) ^ 2
    end
  end
  truthy(err_good < err_rand, string.format("probability-ranked rows lose less than random rows: %.4g vs %.4g", err_good, err_rand))
end)

-- ---- twilight_topp ----

test("twilight_topp: p = 1 keeps S0 (= quest); dense at B0 >= n, p = 1; S within S0; peaked pruning; blind fails", function()
  local tw, quest = sl.methods.get("twilight_topp"), sl.methods.get("quest")
  local q, k, v = sl.randn({HQ, 2, D}, {seed = 71}), sl.randn({HKV, 70, D}, {seed = 72}), sl.randn({HKV, 70, D}, {seed = 73})
  local r = sl.eval("twilight_topp", sl.problem{q = q, k = k, v = v}, {params = {budget = 96, p = 1}})
  truthy(r.metrics.rel_l2 <= 1e-5, "p = 1, B0 >= n is dense: " .. r.metrics.rel_l2)
  local qp, kp, vp = peaked(160, 8, 81)
  local cache = decode.cache_from(kp, vp, 8)
  -- the stored int4 copy of K gives the estimator the same weights as quantising on the fly
  local cq = decode.cache(HKV, D, 8)
  cq:set_bits(4)
  cq:append(kp, vp)
  eq(cq:bits(), 4, "cache keeps 4-bit keys")
  local ps = sl.registry.resolve(tw, {budget = 64, page = 8, p = 0.9})
  local pf = sl.registry.resolve(tw, {budget = 64, page = 8, p = 0.9, stored = 0})
  local a1, a2 = tw.token_step(cq, qp, ps, 5), tw.token_step(cache, qp, pf, 5)
  truthy(sl.metric.rel_l2(a1.o, a2.o) <= 1e-5, "stored int4 K = on-the-fly quantisation")
  local r4 = sl.eval("twilight_topp", sl.problem{q = sl.randn({HQ, 2, D}, {seed = 74}), k = kp, v = vp}, {params = {budget = 64, page = 8}})
  local r0 = sl.eval("twilight_topp", sl.problem{q = sl.randn({HQ, 2, D}, {seed = 74}), k = kp, v = vp}, {params = {budget = 64, page = 8, stored = 0}})
  truthy(sl.metric.rel_l2(r4.o, r0.o) <= 1e-5, "kernel level: stored = on the fly")
  cq:close()
  local p1 = sl.registry.resolve(tw, {budget = 64, page = 8, p = 1})
  local pq = sl.registry.resolve(quest, {budget = 64, page = 8})
  local a, b = tw.token_step(cache, qp, p1, 5), quest.page_step(cache, qp, pq, 5)
  truthy(sl.metric.rel_l2(a.o, b.o) <= 1e-5, "p = 1 equals the selector alone")
  local p9 = sl.registry.resolve(tw, {budget = 64, page = 8, p = 0.9})
  local out = tw.token_step(cache, qp, p9, 5)
  local s0 = out.selector:totable()
  local kept = out.pages:totable()
  local total_s, total_s0 = 0, 0
  for h = 1, HQ do
    local in_s0 = {}
    for _, pg in ipairs(s0[h][1]) do if pg >= 0 then in_s0[pg] = true; total_s0 = total_s0 + 8 end end
    for _, t in ipairs(kept[h][1]) do
      if t >= 0 then truthy(in_s0[t // 8], "S within S0"); total_s = total_s + 1 end
    end
  end
  local good = recall_of(out, qp, cache)
  local function passes(o, n_kept) return recall_of(o, qp, cache) >= 0.85 and n_kept <= total_s0 / 2 end
  truthy(passes(out, total_s), string.format("pruned to %d of %d tokens at recall %.3f", total_s, total_s0, good))
  local blind_out = tw.token_step(cache, qp, p9, 5, nil, function(c, qq, sel)
    -- uniform weights on S0: the pruner keeps S0's first tokens
    local sc = decode.token_scores(c, qq, {pages = sel, page = 8, bits = 4})
    local t = sc:totable()
    for h = 1, HQ do for j = 1, #t[h][1] do if t[h][1][j] > -math.huge then t[h][1][j] = 0 end end end
    return sl.tensor(t)
  end)
  local _, nb = decode.pages_read(blind_out.pages, 1, 160)
  truthy(not passes(blind_out, nb), string.format("score-blind pruning must fail (%d tokens, recall %.3f)", nb,
    recall_of(blind_out, qp, cache)))
end)

-- ---- tidaldecode ----

test("tidaldecode: selection layer dense, reused selection equals the saved one, blind selection fails", function()
  local qp, kp, vp = peaked(120, 8, 91)
  local p = {budget = 24, select_layer = 2, correction_layer = 4, page = 8}
  local st = decode.begin("tidaldecode", {hq = HQ, hkv = HKV, d = D, page = 8})
  local prefix_k, prefix_v = kp:narrow(2, 1, 119), vp:narrow(2, 1, 119)
  for l = 0, 5 do decode.prefill(st, l, prefix_k, prefix_v) end
  local last_k, last_v = kp:narrow(2, 120, 1), vp:narrow(2, 120, 1)
  local outs = {}
  for l = 0, 5 do outs[l] = decode.step("tidaldecode", st, {q = qp, k = last_k, v = last_v, layer = l}, p) end
  local cache = st:layer(3).cache
  local all = decode.all_pages(HQ, 1, cache:pages())
  local od = decode.attend(cache, qp, all)
  truthy(sl.metric.max_abs(outs[2].o, od) == 0 or sl.metric.rel_l2(outs[2].o, od) <= 1e-6, "selection layer is dense")
  local saved = st.saved
  eq(saved.layer, 4, "the correction layer re-selected")
  local t3, t2 = outs[3].pages:totable(), outs[5].pages:totable()
  local sv = saved.lists:totable()
  for h = 1, HQ do
    for i, id in ipairs(t2[h][1]) do eq(id, sv[h][1][i], "layer 5 reuses the saved selection") end
    eq(#t3[h][1], 24, "layer 3 attends k tokens")
  end
  truthy(recall_of(outs[3], qp, cache) >= 0.9, "reused selection keeps the mass")
  truthy(st:dump():find("steps=1"), "dump")
  -- score-blind selection at the selection layer
  local tid = sl.methods.get("tidaldecode")
  local st2 = decode.begin("tidaldecode", {hq = HQ, hkv = HKV, d = D, page = 8})
  for l = 2, 3 do decode.prefill(st2, l, kp, vp) end
  local pp = sl.registry.resolve(tid, p)
  tid.decode(st2, st2:layer(2), {q = qp, layer = 2}, pp, function() return blind(120) end)
  local o3 = tid.decode(st2, st2:layer(3), {q = qp, layer = 3}, pp)
  truthy(recall_of(o3, qp, cache) < 0.9, "first-k selection must fail")
  -- a sparse layer with no selection of this step
  local st3 = decode.begin("tidaldecode", {hq = HQ, hkv = HKV, d = D, page = 8})
  decode.prefill(st3, 3, prefix_k, prefix_v)
  raises(function() decode.step("tidaldecode", st3, {q = qp, k = last_k, v = last_v, layer = 3}, p) end,
    "tidaldecode: layer 3 has no selection of this step", "no selection")
  local r = sl.eval("tidaldecode", sl.problem{q = qp, k = kp, v = vp}, {params = {budget = 200}})
  truthy(r.metrics.rel_l2 <= 1e-5, "budget >= n is dense")
end)

-- ---- hgca ----

test("hgca: merge of window + all older equals dense; empty CPU set = window alone; disjoint; blind fails", function()
  local hg = sl.methods.get("hgca")
  local qp, kp, vp = peaked(160, 8, 101)
  local cache = decode.cache_from(kp, vp, 8)
  local all = decode.all_pages(HQ, 1, cache:pages())
  local od, ld = decode.attend(cache, qp, all)
  local full = hg.split_step(cache, qp, sl.registry.resolve(hg, {window = 32, budget = 128}), "cpu")
  truthy(sl.metric.rel_l2(full.o, od) <= 1e-5, "all older tokens: merge equals dense")
  near(sl.metric.max_abs(full.lse, ld), 0, 1e-5, "lse equals dense")
  eq(full.stats.pcie_bytes, 4 * HQ * (D + 1), "bytes between devices")
  local none = hg.split_step(cache, qp, sl.registry.resolve(hg, {window = 32, budget = 0}), "cpu")
  local ow = decode.attend_tokens(cache, qp, decode.token_range(HQ, 128, 160))
  eq(sl.metric.max_abs(none.o, ow), 0, "empty CPU set = the window part")
  local p = sl.registry.resolve(hg, {window = 8, budget = 24})
  local out = hg.split_step(cache, qp, p, "cpu")
  for _, list in ipairs(out.pages:totable()) do
    for _, id in ipairs(list[1]) do truthy(id < out.window_start, "CPU set before the window") end
  end
  local good = recall_of(out, qp, cache)
  truthy(good >= 0.9, "top-k older tokens recall " .. good)
  local bad = recall_of(hg.split_step(cache, qp, p, "cpu", function(_, _, old) return blind(160, old) end), qp, cache)
  truthy(bad < 0.9, "first-k older tokens must fail: recall " .. bad)
end)

-- ---- snapkv / ada_snapkv ----

test("snapkv, ada_snapkv: dense when the prompt fits; kept sets; Ada allocation; position-blind selection fails", function()
  local qp, kp, vp = peaked(160, 8, 111)
  -- prompt queries like the decode query (SnapKV's premise), 12 rows
  local obs = {}
  local qt = qp:totable()
  local noise = sl.randn({HQ, 12, D}, {seed = 112, std = 0.2}):totable()
  for h = 1, HQ do
    obs[h] = {}
    for i = 1, 12 do
      obs[h][i] = {}
      for c = 1, D do obs[h][i][c] = qt[h][1][c] + noise[h][i][c] end
    end
  end
  obs = sl.tensor(obs)
  local r = sl.eval("snapkv", sl.problem{q = qp, k = kp, v = vp, state = {obs_q = obs}}, {params = {budget = 200}})
  truthy(r.metrics.rel_l2 <= 1e-5, "prompt within the budget: dense " .. r.metrics.rel_l2)
  raises(function() sl.eval("snapkv", sl.problem{q = qp, k = kp, v = vp}, {params = {budget = 50}}) end,
    "snapkv: a decode problem needs the prompt's queries", "no obs queries")
  for _, id in ipairs{"snapkv", "ada_snapkv"} do
    local m = sl.methods.get(id)
    local p = sl.registry.resolve(m, {budget = 48, obs_window = 12, ["local"] = 8, prefix = 4, kernel = 7})
    local function run(imp_fn)
      local st = decode.begin(id, {hq = HQ, hkv = HKV, d = D, page = 8})
      decode.prefill(st, 3, kp:narrow(2, 1, 159), vp:narrow(2, 1, 159), {q = obs})
      local ls = st:layer(3)
      ls.cache:append(kp:narrow(2, 160, 1), vp:narrow(2, 160, 1))
      return m.step_with(ls, qp, p, nil, imp_fn), ls
    end
    local out, ls = run(nil)
    local total = 0
    for g = 1, HKV do
      local set = {}
      for _, j in ipairs(ls.kept[g]) do set[j] = true end
      for j = 0, 3 do truthy(set[j], id .. ": prefix kept") end
      for j = 151, 158 do truthy(set[j], id .. ": local window kept") end
      total = total + #ls.kept[g]
      if id == "snapkv" then eq(#ls.kept[g], 48, "uniform capacity") end
      if id == "ada_snapkv" then truthy(#ls.kept[g] >= 12 + math.floor(0.2 * 36), "Ada: each head keeps its minimum share") end
    end
    eq(total, 48 * HKV, id .. ": the layer's total budget")
    local cache = ls.cache
    local good = recall_of(out, qp, cache)
    truthy(good >= 0.9, id .. " recall " .. good)
    local blind_out = run(function(_, _, n)
      local imp = {}
      for g = 1, HKV do imp[g] = {}; for j = 1, n do imp[g][j] = -j end end
      return imp
    end)
    local bad = recall_of(blind_out, qp, cache)
    truthy(bad < 0.9, id .. ": position-blind selection must fail: recall " .. bad)
  end
end)

-- Physical per-head eviction (evict = 1): the same steps through token lists
-- (evict = 0) and through per-head compacted caches give the same outputs;
-- the compacted caches hold only the kept tokens (resident bytes = each
-- head's pages in use); a position-blind importance fails the recall check
-- on the compacted path too.
local function evict_case(id, base_params, extra_state)
  local m = sl.methods.get(id)
  local qp, kp, vp = peaked(170, 8, 301)
  local obs = {}
  local qt = qp:totable()
  local noise = sl.randn({HQ, 12, D}, {seed = 302, std = 0.2}):totable()
  for h = 1, HQ do
    obs[h] = {}
    for i = 1, 12 do obs[h][i] = {}; for c = 1, D do obs[h][i][c] = qt[h][1][c] + noise[h][i][c] end end
  end
  obs = sl.tensor(obs)
  local steps, n0 = 10, 159
  local qs = sl.randn({HQ, steps, D}, {seed = 303})
  local function begin(evict)
    local p = {}
    for key, val in pairs(base_params) do p[key] = val end
    p.evict = evict
    local st = decode.begin(id, {hq = HQ, hkv = HKV, d = D, page = 8})
    st.head_scores = extra_state
    decode.prefill(st, 3, kp:narrow(2, 1, n0), vp:narrow(2, 1, n0), {q = obs})
    return st, p
  end
  local st0, p0 = begin(0)
  local st1, p1 = begin(1)
  local full_bytes = st0:layer(3).cache:bytes()
  for s = 1, steps do
    local pos = n0 + s
    local step = {q = s == 1 and qp or qs:narrow(2, s, 1), k = kp:narrow(2, pos, 1), v = vp:narrow(2, pos, 1), layer = 3}
    local a = decode.step(id, st0, step, p0)
    local b = decode.step(id, st1, step, p1)
    near(sl.metric.max_abs(a.o, b.o), 0, 1e-5, id .. ": compacted = token lists (o), step " .. s)
    near(sl.metric.max_abs(a.lse, b.lse), 0, 1e-5, id .. ": compacted = token lists (lse), step " .. s)
    if s == 1 then
      local ls = st1:layer(3)
      truthy(ls.heads and #ls.heads == HKV, id .. ": one cache per KV head")
      local want, kept_total = 0, 0
      for g = 1, HKV do
        local len = ls.heads[g]:len()
        eq(len, #ls.kept[g] + 1, id .. ": head cache = kept prompt tokens + the generated one")
        local cap = (len + 7) // 8 * 8
        want = want + 8 * D * cap + 12 * D * cap // 8 + 4 * cap   -- K, V, metadata, slot positions (i32)
        kept_total = kept_total + len
      end
      eq(decode.layer_bytes(ls), want, id .. ": resident bytes = the head caches' pages in use")
      eq(b.stats.resident_bytes, want, id .. ": reported resident bytes")
      truthy(want < full_bytes * (kept_total / (HKV * 160)) * 1.2,
        string.format("%s: bytes %d vs full %d, kept %.3f", id, want, full_bytes, kept_total / (HKV * 160)))
      truthy(recall_of(b, qp, st0:layer(3).cache) >= 0.9, id .. ": compacted recall")
      truthy(st1:dump():find("compacted"), id .. ": dump shows the head caches")
    end
  end
  -- position-blind importance on the compacted path fails the recall check
  local stb, pb = begin(1)
  local ls = stb:layer(3)
  ls.cache:append(kp:narrow(2, 160, 1), vp:narrow(2, 160, 1))
  ls.seen = ls.seen + 1
  local blind = function(_, _, n)
    local imp = {}
    for g = 1, HKV do imp[g] = {}; for j = 1, n do imp[g][j] = -j end end
    return imp
  end
  local out = m.step_with and m.step_with(ls, qp, pb, nil, blind) or m.decode(stb, ls, {q = qp, layer = 3}, pb, blind)
  truthy(ls.heads ~= nil, id .. ": the blind run compacted too")
  truthy(recall_of(out, qp, st0:layer(3).cache) < 0.9, id .. ": position-blind eviction must fail")
end

test("snapkv: evict = 1 compacts each KV head physically; outputs = token lists; bytes drop; blind fails", function()
  evict_case("snapkv", {budget = 48, obs_window = 12, ["local"] = 8, prefix = 4, kernel = 7})
end)

test("ada_snapkv: evict = 1 compacts each KV head to its own budget; outputs = token lists; bytes drop; blind fails", function()
  evict_case("ada_snapkv", {budget = 48, obs_window = 12, ["local"] = 8, prefix = 4, kernel = 7})
end)

test("sparsemm: evict = 1 compacts each KV head to its scored budget; outputs = token lists; bytes drop; blind fails", function()
  evict_case("sparsemm", {base_capacity = 64, window = 8, ratio = 0.25, kernel = 3}, {[4] = {3, 1}})
end)

-- runs layers 0..last of one decode step of method id on the peaked inputs;
-- returns the outputs per layer, the state and the cache of layer 3.
local function layer_step(id, p, qp, kp, vp, last)
  local n = kp:shape()[2]
  local st = decode.begin(id, {hq = HQ, hkv = HKV, d = D, page = 8})
  for l = 0, last do decode.prefill(st, l, kp:narrow(2, 1, n - 1), vp:narrow(2, 1, n - 1)) end
  local outs = {}
  for l = 0, last do
    outs[l] = decode.step(id, st, {q = qp, k = kp:narrow(2, n, 1), v = vp:narrow(2, n, 1), layer = l}, p)
  end
  return outs, st, st:layer(3).cache
end

-- ---- lessismore ----

test("lessismore: union properties, reuse equals saved, dense at K >= n, blind selection fails", function()
  local lim = sl.methods.get("lessismore")
  local qp, kp, vp = peaked(160, 8, 121)
  local p = {budget = 72, sinks = 4, r_mid = 0.75, select_layer = 2, correction_layer = 4}
  local outs, st, cache = layer_step("lessismore", p, qp, kp, vp, 5)
  local pp = sl.registry.resolve(lim, p)
  local set, union = lim.select_set(cache, qp, pp)
  truthy(#set <= 72, "|ρ| <= K")
  local seen = {}
  for _, j in ipairs(union) do
    truthy(not seen[j] and j >= 4 and j < 160 - 14, "union: distinct, in the middle [a, n - K_recent)")
    seen[j] = true
  end
  truthy(#union <= 54, "union length <= K_mid")
  local sv = st.saved.lists:totable()
  for g = 1, HKV do
    for i, id in ipairs(outs[5].pages:totable()[g][1]) do eq(id, sv[g][1][i], "layer 5 reuses the saved set") end
  end
  truthy(recall_of(outs[3], qp, cache) >= 0.9, "lessismore recall " .. recall_of(outs[3], qp, cache))
  -- all heads agree (one query for every head): union = that head's top-K_mid
  local q1 = {}
  local qt = qp:totable()
  for h = 1, HQ do q1[h] = qt[1] end
  q1 = sl.tensor(q1)
  local c1 = decode.cache_from(kp:narrow(1, 1, 1), vp:narrow(1, 1, 1), 8)
  local kk = {kp:totable()[1], kp:totable()[1]}
  local _, u1 = lim.select_set(c1, q1, pp)
  local mid = {}
  for j = 4, 160 - 15 do mid[#mid + 1] = j end
  local top = oracle_topk(q1:totable(), {kk[1], kk[1]}, 160, 160)
  local _ = top
  local sc = {}
  for _, j in ipairs(mid) do
    local dot = 0
    for c = 1, D do dot = dot + qt[1][1][c] * kk[1][j + 1][c] end
    sc[j] = dot
  end
  table.sort(mid, function(x, y) if sc[x] ~= sc[y] then return sc[x] > sc[y] end return x < y end)
  for i = 1, 54 do eq(u1[i], mid[i], "agreeing heads: union = the head's ranking") end
  c1:close()
  -- score-blind middle selection
  local st2 = decode.begin("lessismore", {hq = HQ, hkv = HKV, d = D, page = 8})
  for l = 2, 3 do decode.prefill(st2, l, kp, vp) end
  lim.decode(st2, st2:layer(2), {q = qp, layer = 2}, pp, function(_, _, lo, hi)
    local t = blind(160, hi):totable()
    for h = 1, HQ do for j = 1, lo do t[h][1][j] = -math.huge end end
    return sl.tensor(t)
  end)
  local o3 = lim.decode(st2, st2:layer(3), {q = qp, layer = 3}, pp)
  truthy(recall_of(o3, qp, cache) < 0.9, "first-k middle selection must fail")
  local r = sl.eval("lessismore", sl.problem{q = qp, k = kp, v = vp}, {params = {budget = 200}})
  truthy(r.metrics.rel_l2 <= 1e-5, "K >= n is dense")
end)

-- ---- delta_layer_aware ----

test("delta_layer_aware: Δ-layer dense, page set shape, reuse equals saved, blind selection fails", function()
  local dl = sl.methods.get("delta_layer_aware")
  local qp, kp, vp = peaked(160, 8, 131)
  local p = {budget = 7, recent = 1, page = 8, warmup = 2, delta_a = 2, delta_b = 4, delta_c = -1}
  local outs, st, cache = layer_step("delta_layer_aware", p, qp, kp, vp, 5)
  local all = decode.all_pages(HQ, 1, cache:pages())
  local od = decode.attend(cache, qp, all)
  truthy(sl.metric.rel_l2(outs[2].o, od) <= 1e-6, "Δ-layer is dense")
  local pp = sl.registry.resolve(dl, p)
  local set = dl.select_pages(cache, qp, pp)
  eq(#set, 7, "K pages")
  eq(set[#set], 19, "the last page kept")
  local sv = st.saved.lists:totable()
  eq(st.saved.layer, 4, "the second Δ-layer re-selected")
  for g = 1, HKV do
    for i, id in ipairs(outs[5].pages:totable()[g][1]) do eq(id, sv[g][1][i], "layer 5 reuses the saved set") end
  end
  truthy(recall_of(outs[3], qp, cache) >= 0.9, "delta recall " .. recall_of(outs[3], qp, cache))
  local st2 = decode.begin("delta_layer_aware", {hq = HQ, hkv = HKV, d = D, page = 8})
  for l = 2, 3 do decode.prefill(st2, l, kp, vp) end
  dl.decode(st2, st2:layer(2), {q = qp, layer = 2}, pp, function(n)
    local s = {}
    for t = 1, n do s[t] = 1 / t end   -- position order: the first pages win
    return s
  end)
  local o3 = dl.decode(st2, st2:layer(3), {q = qp, layer = 3}, pp)
  truthy(recall_of(o3, qp, cache) < 0.9, "first-k page selection must fail")
  local r = sl.eval("delta_layer_aware", sl.problem{q = qp, k = kp, v = vp}, {params = {budget = 40, page = 8}})
  truthy(r.metrics.rel_l2 <= 1e-5, "K >= n_pages is dense")
end)

test("delta_layer_aware: position_bias = 1e-7 ranks pages as the reference's v2 selector (score - 1e-7 x page)", function()
  local dl = sl.methods.get("delta_layer_aware")
  local qp, kp, vp = peaked(160, 8, 133)
  local p = {budget = 3, recent = 1, page = 8, warmup = 2, delta_a = 2, delta_b = -1, delta_c = -1}
  local _, _, cache = layer_step("delta_layer_aware", p, qp, kp, vp, 3)
  local n = cache:len()
  -- page scores (8 tokens each): page 1 = 1, page 4 = 1 + 2e-7, page 9 = 1 + 5e-7, the rest 0.1
  local function probs(m)
    local s = {}
    for t = 1, m do
      local u = (t - 1) // 8
      s[t] = (u == 1 and 1 or u == 4 and 1 + 2e-7 or u == 9 and 1 + 5e-7 or 0.1) / 8
    end
    return s
  end
  local function older_chosen(bias)
    local pb = {position_bias = bias}
    for k, v in pairs(p) do pb[k] = v end
    local pp = sl.registry.resolve(dl, pb)
    local set = dl.select_pages(cache, qp, pp, nil, probs)
    local got = {}
    for _, u in ipairs(set) do if u < (n + 7) // 8 - 1 then got[#got + 1] = u end end
    return got
  end
  -- independent ranking of the older pages by S_u - bias . u (ties: lower page)
  local function expect(bias)
    local S = {}
    local s = probs(n)
    for u = 0, (n + 7) // 8 - 2 do
      local acc = 0
      for t = u * 8 + 1, math.min((u + 1) * 8, n) do acc = acc + s[t] end
      S[#S + 1] = {u = u, v = acc - bias * u}
    end
    table.sort(S, function(a, b) if a.v ~= b.v then return a.v > b.v end return a.u < b.u end)
    local top = {S[1].u, S[2].u}
    table.sort(top)
    return top
  end
  local d, r = older_chosen(0), older_chosen(1e-7)
  eq(table.concat(d, ","), table.concat(expect(0), ","), "default: exact ties only")
  eq(table.concat(r, ","), table.concat(expect(1e-7), ","), "position_bias 1e-7: the reference's ranking")
  eq(table.concat(d, ","), "4,9", "default keeps the two highest scores")
  eq(table.concat(r, ","), "1,4", "the bias drops page 9 (5e-7 above page 1 but 8 pages later)")
end)

-- ---- spatten ----

test("spatten: importance = column sums of P; cascade invariant; dense at budget >= n; position-order pruning fails", function()
  local spm = sl.methods.get("spatten")
  local qp, kp, vp = peaked(120, 8, 141)
  local p = sl.registry.resolve(spm, {budget = 60, prune_layer = 1})
  local function run(rank_fn, steps)
    local st = decode.state("spatten", {hq = HQ, hkv = HKV, d = D, page = 8})
    for l = 0, 2 do decode.prefill(st, l, kp:narrow(2, 1, 100), vp:narrow(2, 1, 100)) end
    local outs, alive_hist = {}, {}
    for t = 1, steps do
      local pos = 100 + t
      -- the query of every step and layer looks for the hot tokens
      local qn = sl.randn({HQ, 1, D}, {seed = 150 + t, std = 0.05}):totable()
      local qt = qp:totable()
      for h = 1, HQ do for c = 1, D do qn[h][1][c] = qn[h][1][c] + qt[h][1][c] end end
      local q = sl.tensor(qn)
      for l = 0, 2 do
        local ls = st:layer(l)
        ls.cache:append(kp:narrow(2, pos, 1), vp:narrow(2, pos, 1))
        outs[#outs + 1] = {layer = l, out = spm.decode(st, ls, {q = q, layer = l}, p, rank_fn), q = q, cache = ls.cache}
      end
      local a = {}
      for j in pairs(st.spatten.alive) do a[j] = true end
      alive_hist[t] = a
    end
    return st, outs, alive_hist
  end
  -- importance after one layer of one step equals the float64 column sums
  local st1 = decode.state("spatten", {hq = HQ, hkv = HKV, d = D, page = 8})
  decode.prefill(st1, 0, kp:narrow(2, 1, 119), vp:narrow(2, 1, 119))
  local ls1 = st1:layer(0)
  ls1.cache:append(kp:narrow(2, 120, 1), vp:narrow(2, 120, 1))
  spm.decode(st1, ls1, {q = qp, layer = 0}, p)
  local qt, kt = qp:totable(), kp:totable()
  for _, j in ipairs{0, 17, 60, 119} do
    local want = 0
    for h = 1, HQ do
      local g = (h - 1) // (HQ // HKV) + 1
      local mx, z, sj = -math.huge, 0, 0
      local sc = {}
      for t = 1, 120 do
        local dot = 0
        for c = 1, D do dot = dot + qt[h][1][c] * kt[g][t][c] end
        sc[t] = dot / math.sqrt(D)
        mx = math.max(mx, sc[t])
      end
      for t = 1, 120 do z = z + math.exp(sc[t] - mx) end
      sj = math.exp(sc[j + 1] - mx) / z
      want = want + sj
    end
    near(st1.spatten.score[j], want, 1e-5, "importance of token " .. j)
  end
  local st, outs, hist = run(nil, 6)
  for t = 2, 6 do
    for j in pairs(hist[t]) do truthy(hist[t - 1][j] or j >= 100 + t - 1, "cascade: pruned token " .. j .. " came back") end
  end
  local last = outs[#outs]
  truthy(recall_of(last.out, last.q, last.cache) >= 0.9, "spatten recall " .. recall_of(last.out, last.q, last.cache))
  local _, outs2 = run(function(_, j) return (j * 37) % 101 end, 6)
  local l2 = outs2[#outs2]
  truthy(recall_of(l2.out, l2.q, l2.cache) < 0.9, "score-blind (hashed position) pruning must fail")
  local r = sl.eval("spatten", sl.problem{q = qp, k = kp, v = vp}, {params = {budget = 200}})
  truthy(r.metrics.rel_l2 <= 1e-5, "budget >= n is dense")
  local _ = st
end)

-- ---- hylra ----

test("hylra: DP plan = brute force; reuse equals saved; dense at k >= n; first-k sets fail", function()
  local hy = sl.methods.get("hylra")
  -- DP against every FULL/REUSE pattern on seeded random similarity matrices
  local seed = 7
  local function rnd() seed = (seed * 1103515245 + 12345) % 2147483648; return seed / 2147483648 end
  for trial = 1, 20 do
    local L = 6
    local sim, sens = {}, {}
    for i = 1, L do sim[i] = {}; for j = i + 1, L do sim[i][j] = rnd() end end
    for j = 1, L do sens[j] = rnd() < 0.15 end
    local _, fulls, simsum = hy.plan(sim, sens, 0.5, L)
    local bf, bs = math.huge, -1
    for mask = 0, (1 << (L - 1)) - 1 do
      local src, f, s, ok = 1, 1, 0, true
      for j = 2, L do
        if (mask >> (j - 2)) & 1 == 1 then f = f + 1; src = j
        elseif sens[j] or sim[src][j] < 0.5 then ok = false; break
        else s = s + sim[src][j] end
      end
      if ok and (f < bf or (f == bf and s > bs + 1e-12)) then bf, bs = f, s end
    end
    eq(fulls, bf, "trial " .. trial .. ": fewest FULL layers")
    near(simsum, bs, 1e-12, "trial " .. trial .. ": tie-break similarity")
  end
  local qp, kp, vp = peaked(120, 8, 161)
  local p = {budget = 80, page = 8}
  local st = decode.begin("hylra", {hq = HQ, hkv = HKV, d = D, page = 8})
  st.plan = {0, 0, 0, 3, 3, 0}
  for l = 0, 5 do decode.prefill(st, l, kp:narrow(2, 1, 119), vp:narrow(2, 1, 119)) end
  local outs = {}
  for l = 0, 5 do outs[l] = decode.step("hylra", st, {q = qp, k = kp:narrow(2, 120, 1), v = vp:narrow(2, 120, 1), layer = l}, p) end
  local saved = st.hylra_sets[3].set
  for _, l in ipairs{3, 4} do
    local row = outs[l].pages:totable()[1][1]
    eq(#row, #saved, "reused set size")
    for i, j in ipairs(saved) do eq(row[i], j, "layer " .. l .. " reuses layer 2's set") end
  end
  local cache = st:layer(3).cache
  truthy(recall_of(outs[3], qp, cache) >= 0.9, "hylra recall " .. recall_of(outs[3], qp, cache))
  local st2 = decode.begin("hylra", {hq = HQ, hkv = HKV, d = D, page = 8})
  st2.plan = {0, 0, 0, 3}
  for l = 2, 3 do decode.prefill(st2, l, kp, vp) end
  local pp = sl.registry.resolve(hy, p)
  hy.decode(st2, st2:layer(2), {q = qp, layer = 2}, pp, function(n)
    local w = {}
    for j = 1, n do w[j] = -j end
    return w
  end)
  local o3 = hy.decode(st2, st2:layer(3), {q = qp, layer = 3}, pp)
  truthy(recall_of(o3, qp, cache) < 0.9, "first-k sets must fail")
  local st3 = decode.begin("hylra", {hq = HQ, hkv = HKV, d = D, page = 8})
  decode.prefill(st3, 0, kp, vp)
  raises(function() decode.step("hylra", st3, {q = qp, k = kp:narrow(2, 1, 1), v = vp:narrow(2, 1, 1), layer = 0}, p) end,
    "hylra: no layer plan", "no plan")
  local st4 = decode.begin("hylra", {hq = HQ, hkv = HKV, d = D, page = 8})
  for l = 0, 1 do decode.prefill(st4, l, kp:narrow(2, 1, 119), vp:narrow(2, 1, 119)) end
  decode.step("hylra", st4, {q = qp, k = kp:narrow(2, 120, 1), v = vp:narrow(2, 120, 1), layer = 0}, {budget = 80, full_every = 2})
  local o1 = decode.step("hylra", st4, {q = qp, k = kp:narrow(2, 120, 1), v = vp:narrow(2, 120, 1), layer = 1},
    {budget = 80, full_every = 2})
  eq(#o1.pages:totable()[1][1], 80, "full_every: layer 1 reuses layer 0's set")
  -- profiling on this step: the peaked layers are similar to themselves
  local sim, sens = hy.profile({{q = qp, k = kp, v = vp}, {q = qp, k = kp, v = vp}}, pp)
  near(sim[1][2], 1, 1e-12, "identical layers overlap fully")
  truthy(sens[1], "layer 0 is FULL")
  local r = sl.eval("hylra", sl.problem{q = qp, k = kp, v = vp}, {params = {budget = 200}})
  truthy(r.metrics.rel_l2 <= 1e-5, "k >= n is dense")
end)

-- ---- kernel-level decode replay in eval and the CLI ----

test("eval --steps: per-step recall, rel_l2 and kv bytes; bad input names method and value", function()
  local q, k, v = sl.synthetic{n = 200, heads = HQ, kv_heads = HKV, d = D, seed = 3}
  local dq = q:narrow(2, 197, 4)
  local r = sl.eval("quest", sl.problem{q = dq, k = k, v = v}, {params = {budget = 32, page = 8}})
  local rows = decode.per_step(r.o, r.lse, r.dense_o, r.dense_lse, r.steps)
  eq(#rows, 4, "one row per step")
  local mean = 0
  for i, row in ipairs(rows) do
    truthy(row.recall > 0 and row.recall <= 1 + 1e-6, "recall in (0, 1]")
    truthy(row.kv_bytes > 0 and row.tokens_read <= 32 + 8, "step " .. i .. " reads about the budget")
    mean = mean + row.recall / 4
  end
  near(mean, r.metrics.recall_mean, 1e-6, "per-step recalls average to recall_mean")
  local bin = (os.getenv("BUILD") or "build") .. "/sparselab"
  local f = io.popen(bin .. " eval quest --workload synthetic,n=200,heads=4,kv_heads=2,d=16 --steps 3 --budget 32 --param page=8 --json 2>&1")
  local text = f:read("a")
  f:close()
  local j = sl.json_decode(text)
  eq(#j.per_step, 3, "CLI per_step rows")
  truthy(j.per_step[1].kv_bytes > 0, "CLI kv bytes per token")
  f = io.popen(bin .. " eval quest --workload synthetic,n=40 --steps 2 --param page=64 2>&1")
  text = f:read("a")
  f:close()
  truthy(text:find("quest: page = 64 is larger than the cache", 1, true), "page above the cache: " .. text)
end)

test("eval --save-mask: a decode replay's executed selection; attention over exactly its keys (float64) = o", function()
  local q, k, v = sl.synthetic{n = 120, heads = HQ, kv_heads = HKV, d = D, seed = 77}
  local dq = q:narrow(2, 117, 4)
  local kt, vt, qt = k:totable(), v:totable(), dq:totable()
  local G = HQ // HKV
  for _, case in ipairs{{"quest", {budget = 32, page = 8}}, {"hgca", {budget = 16, window = 24}}, {"twilight_topp", {budget = 48}},
                        {"seer_attention_r", {budget = 32, block = 8, page = 8}}, {"snapkv", {budget = 40, ["local"] = 8, obs_window = 16}},
                        {"double_sparsity", {budget = 24}}, {"lessismore", {budget = 24}}} do
    local r = sl.eval(case[1], sl.problem{q = dq, k = k, v = v, save_mask = true, state = {obs_q = q:narrow(2, 101, 16)}},
      {params = case[2]})
    local bits = require("sparselab.savemask").bits(r, sl.methods.get(case[1]), true)
    local sh = bits:shape()
    eq(sh[1] * 1000000 + sh[2] * 1000 + sh[3], HQ * 1000000 + 4 * 1000 + 120, case[1] .. ": mask [H, n_q, n_k]")
    local b, o = bits:totable(), r.o:totable()
    local sparse = false
    for h = 1, HQ do
      local g = (h - 1) // G + 1
      for i = 1, 4 do
        local pos, mx, z, acc, m = 116 + i, -math.huge, 0, {}, 0
        local s = {}
        for j = 1, 120 do
          if b[h][i][j] == 1 then
            truthy(j <= pos, case[1] .. ": no key after the row's position")
            local dot = 0
            for c = 1, D do dot = dot + qt[h][i][c] * kt[g][j][c] end
            s[j] = dot / math.sqrt(D)
            mx = math.max(mx, s[j])
            m = m + 1
          end
        end
        sparse = sparse or m < pos
        for c = 1, D do acc[c] = 0 end
        for j, x in pairs(s) do
          local w = math.exp(x - mx)
          z = z + w
          for c = 1, D do acc[c] = acc[c] + w * vt[g][j][c] end
        end
        for c = 1, D do
          near(o[h][i][c], acc[c] / z, 2e-5, string.format("%s: head %d row %d ch %d = attention over the mask", case[1], h, i, c))
        end
      end
    end
    truthy(sparse, case[1] .. ": the mask is sparse at this budget")
  end
  -- video_xl2 attends mean-pooled chunk tokens, not a subset of the keys: refused, not approximated,
  -- in one line that says why
  local ok, err = pcall(sl.eval, "video_xl2", sl.problem{q = dq, k = k, v = v, save_mask = true}, {params = {chunk = 8, topk = 1}})
  truthy(not ok and tostring(err):find("--save-mask: video_xl2 attended", 1, true), "pooled keys refused: " .. tostring(err))
  truthy(tostring(err):find("averages several tokens", 1, true) and not tostring(err):find("\n"), "one line saying why: " .. tostring(err))
  -- zipvl attends every cached token (its sparsity is precision): every key up to the row
  local rz = sl.eval("zipvl", sl.problem{q = dq, k = k, v = v, save_mask = true, state = {obs_q = q:narrow(2, 101, 16)}}, {})
  local zb = rz.selection:totable()
  for h = 1, HQ do for i = 1, 4 do for j = 1, 120 do
    eq(zb[h][i][j], j <= 116 + i and 1 or 0, "zipvl: every key up to the row")
  end end end
  local bin = (os.getenv("BUILD") or "build") .. "/sparselab"
  local out = os.tmpname() .. ".safetensors"
  local f = io.popen(bin .. " eval quest --workload synthetic,n=64,heads=4,kv_heads=2,d=16 --steps 2 --budget 16 --param page=8 --out "
    .. out .. " --save-mask 2>&1")
  local text = f:read("a")
  f:close()
  local saved = sl.load(out)
  truthy(saved.mask and saved.mask:shape()[3] == 64, "CLI writes the decode mask: " .. text)
  os.remove(out)
end)

-- The largest |o - float64 attention over exactly the keys of bits| over
-- every head, row and channel (rows at positions N - R + 1 .. N), and
-- whether a key after a row's position or an empty row appeared.
local function mask_attention_err(bits, o, q, k, v, N)
  local kt, vt, qt, b, ot = k:totable(), v:totable(), q:totable(), bits:totable(), o:totable()
  local hq, R, d, hkv = #qt, #qt[1], #qt[1][1], #kt
  local G, worst, bad, sparse = hq // hkv, 0, false, false
  for h = 1, hq do
    local g = (h - 1) // G + 1
    for i = 1, R do
      local pos, mx, z, s, m = N - R + i, -math.huge, 0, {}, 0
      for j = 1, N do
        if b[h][i][j] == 1 then
          if j > pos then bad = true end
          local dot = 0
          for c = 1, d do dot = dot + qt[h][i][c] * kt[g][j][c] end
          s[j] = dot / math.sqrt(d)
          mx = math.max(mx, s[j])
          m = m + 1
        end
      end
      if m == 0 then bad = true end
      sparse = sparse or m < pos
      local acc = {}
      for c = 1, d do acc[c] = 0 end
      for j, x in pairs(s) do
        local w = math.exp(x - mx)
        z = z + w
        for c = 1, d do acc[c] = acc[c] + w * vt[g][j][c] end
      end
      for c = 1, d do worst = math.max(worst, math.abs(ot[h][i][c] - acc[c] / z)) end
    end
  end
  return worst, bad, sparse
end

test("eval --save-mask: evicting caches write the token positions they attended; float64 attention over the mask = o", function()
  -- session 4b: every cache slot keeps its token position through evictions (shared cache or one
  -- compacted cache per KV head), so the executed selection of an evicting method is exact
  local N, R = 120, 4
  local q, k, v = sl.synthetic{n = N, heads = HQ, kv_heads = HKV, d = D, seed = 91}
  local dq = q:narrow(2, N - R + 1, R)
  local obs = q:narrow(2, N - R - 15, 16)
  local D_ = require "sparselab.decode"
  local cases = {
    {"snapkv", {budget = 40, ["local"] = 8, obs_window = 16, evict = 1}},
    {"ada_snapkv", {budget = 40, ["local"] = 8, obs_window = 16, evict = 1}},
    {"sparsemm", {base_capacity = 40, window = 8, ratio = 0.25, kernel = 3, evict = 1}},
    {"streaming_llm", {n_init = 4, n_local = 24}, true},
    {"sliding_window", {w = 20}, true},
  }
  for _, case in ipairs(cases) do
    local id, params, replay = case[1], case[2], case[3]
    local m = sl.methods.get(id)
    local prob = sl.problem{q = dq, k = k, v = v, save_mask = true, state = {obs_q = obs}}
    local r, evicted
    if replay then   -- static cache policies evict in their decode hook (kernel-level eval runs their mask)
      r = D_.replay(m, prob, sl.registry.resolve(m, params), {prefill_q = obs})
      local lc = r.state:layer(0)
      evicted = lc.cache:len() < N
    else
      local st0 = D_.replay(m, sl.problem{q = dq, k = k, v = v, state = {obs_q = obs}}, sl.registry.resolve(m, params),
        {prefill_q = obs}).state
      evicted = st0:layer(0).heads ~= nil
      r = sl.eval(id, prob, {params = params})
    end
    truthy(evicted, id .. ": the run evicted cache entries")
    local bits = r.selection
    local sh = bits:shape()
    eq(sh[1] * 1000000 + sh[2] * 1000 + sh[3], HQ * 1000000 + R * 1000 + N, id .. ": mask [H, n_q, n_k]")
    local err, bad, sparse = mask_attention_err(bits, r.o, dq, k, v, N)
    truthy(err < 1e-5, string.format("%s: attention over the written mask = o (max err %.3g)", id, err))
    truthy(not bad, id .. ": every row attends something, nothing past its position")
    truthy(sparse, id .. ": the mask is sparse")
    -- the same mask with cache slots read as positions (what the cache could not tell before) fails
    local b, naive = bits:totable(), {}
    for h = 1, HQ do
      naive[h] = {}
      for i = 1, R do
        local cnt, row = 0, {}
        for j = 1, N do cnt = cnt + b[h][i][j] end
        for j = 1, N do row[j] = j <= cnt and 1 or 0 end
        naive[h][i] = row
      end
    end
    local nerr = mask_attention_err(sl.tensor(naive, "u8"), r.o, dq, k, v, N)
    truthy(nerr > 1e-3, string.format("%s: slots taken as positions give another output (err %.3g)", id, nerr))
  end
end)

-- ---- model level: the runner's decode loop calls the decode hook ----

test("model: teacher-forced decode through the cache; budget >= cache equals dense; greedy agreement", function()
  local m = sl.model.load("experiments/data/tinystories260k/model.bin")
  local f = assert(io.open("experiments/data/tinystories260k/texts/01_red_kite.txt", "rb"))
  local toks = m:encode(f:read("a"))
  f:close()
  local t = {}
  for i = 1, 120 do t[i] = toks[i] end
  local r, st = m:evaluate_decode{tokens = t, prefix = 64, decode = {method = "quest", params = {budget = 1000, page = 8}}}
  truthy(r.kl < 1e-9 and r.top1 == 1, "budget >= cache: dense (kl " .. r.kl .. ")")
  eq(st.steps, 56, "one decode step per token after the prefix")
  local rs = m:evaluate_decode{tokens = t, prefix = 64, decode = {method = "quest", params = {budget = 16, page = 8, dense_layers = 1}}}
  truthy(rs.kl > 1e-4, "a small budget changes the logits (kl " .. rs.kl .. ")")
  local rt = m:evaluate_decode{tokens = t, prefix = 64, attention = {method = "sliding_window", budget = 32, params = {bq = 16, bk = 16}},
    decode = {method = "tidaldecode", params = {budget = 1000, select_layer = 1, correction_layer = 3}}}
  truthy(rt.n > 0, "a prefill schedule mixed with a decode method runs")
  local dense_ids = m:generate{prompt = {1}, steps = 12}
  local ids = m:generate{prompt = {1}, steps = 12, decode = {method = "hgca", params = {budget = 1000, window = 4, page = 4}}}
  for i, id in ipairs(dense_ids) do eq(ids[i], id, "greedy ids equal dense at full budget, id " .. i) end
  raises(function() m:generate{prompt = {1}, steps = 2, decode = "xattention"} end, "has no decode hook", "prefill-only method")
end)

-- ---- decode halves of static methods: streaming_llm, sliding_window ----

test("streaming_llm / sliding_window / s2_attention / prism decode: cache bounded, decode steps = the prefill mask's rows", function()
  local q, k, v = sl.randn({HQ, 6, D}, {seed = 171}), sl.randn({HKV, 80, D}, {seed = 172}), sl.randn({HKV, 80, D}, {seed = 173})
  for _, c in ipairs{{"streaming_llm", {n_init = 4, n_local = 16, bq = 16, bk = 16}, 20},
                     {"sliding_window", {w = 12, bq = 16, bk = 16}, 12},
                     {"s2_attention", {block = 8, local_blocks = 2, vert_stride = 3, bq = 16, bk = 16}, 80},
                     {"prism", {p = 1, bq = 16, bk = 16}, 80}} do
    local id, p, cap = c[1], c[2], c[3]
    local m = sl.methods.get(id)
    local pp = sl.registry.resolve(m, p)
    local r = decode.replay(m, sl.problem{q = q, k = k, v = v}, pp, {page = 8})
    -- the same rows through the prefill mask (original positions)
    local ref = m.run(sl.problem{q = q, k = k, v = v}, pp)
    truthy(sl.metric.rel_l2(r.o, ref.o) <= 1e-5, id .. ": decode steps = the mask's rows")
    for _, ls in pairs(r.state.layers) do eq(ls.cache:len(), cap, id .. ": cache bounded") end
  end
end)

-- ---- lserve decode ----

test("lserve decode: streaming heads sink+local, selector reused between updates, dense at budget, blind pages fail", function()
  local ls_m = sl.methods.get("lserve")
  local qp, kp, vp = peaked(160, 8, 181)
  local p = sl.registry.resolve(ls_m, {static_sparsity = 0, dec_budget = 48, page = 4, sub_chunks = 2, update_interval = 3})
  local st = decode.begin("lserve", {hq = HQ, hkv = HKV, d = D, page = 4})
  decode.prefill(st, 0, kp:narrow(2, 1, 156), vp:narrow(2, 1, 156))
  local sels = {}
  for t = 1, 4 do
    local out = decode.step("lserve", st, {q = qp, k = kp:narrow(2, 156 + t, 1), v = vp:narrow(2, 156 + t, 1), layer = 0}, p)
    sels[t] = out.selection
    if t == 4 then
      truthy(recall_of(out, qp, st:layer(0).cache) >= 0.9, "lserve recall " .. recall_of(out, qp, st:layer(0).cache))
    end
  end
  truthy(sels[2] == sels[1] and sels[3] == sels[1], "the selector is reused between updates")
  truthy(sels[4] ~= sels[1], "and recomputed every update_interval steps")
  -- blind physical pages (uniform bounds: the first pages win)
  local cache = st:layer(0).cache
  local np = cache:pages()
  local st2 = decode.begin("lserve", {hq = HQ, hkv = HKV, d = D, page = 4})
  decode.prefill(st2, 0, kp, vp)
  local bad = ls_m.decode(st2, st2:layer(0), {q = qp, layer = 0}, p, function() return sl.zeros({HQ, 1, np}) end)
  truthy(recall_of(bad, qp, cache) < 0.9, "score-blind physical pages must fail")
  -- streaming heads: sinks + local only
  local ps = sl.registry.resolve(ls_m, {static_sparsity = 1, dec_sink = 4, dec_local = 8, page = 4})
  local so = ls_m.decode(st2, st2:layer(0), {q = qp, layer = 0}, ps)
  for _, row in ipairs(so.pages:totable()) do
    eq(#row[1], 12, "streaming head reads sink + local")
    eq(row[1][5], 152, "local window starts n - dec_local")
  end
  local r = sl.eval("lserve", sl.problem{q = sl.randn({HQ, 2, D}, {seed = 5}), k = kp, v = vp},
    {params = {static_sparsity = 0, dec_budget = 4096, page = 4}})
  truthy(r.metrics.rel_l2 <= 1e-5, "budget >= cache is dense")
end)

-- ---- seer_attention_r (oracle) ----

test("seer_attention_r: last block kept, one selection per group, dense at budget, first-k blocks fail", function()
  local sr = sl.methods.get("seer_attention_r")
  local qp, kp, vp = peaked(160, 8, 191)
  local cache = decode.cache_from(kp, vp, 8)
  local p = sl.registry.resolve(sr, {budget = 32, block = 8})
  local out = sr.block_step(cache, qp, p)
  eq(out.pages:shape()[1], HKV, "one list per KV head (shared by its group)")
  for _, row in ipairs(out.pages:totable()) do eq(row[1][#row[1]], 19, "the last block is selected") end
  -- group-max pooling, checked in float64 here for one KV head
  local qt, kt = qp:totable(), kp:totable()
  local best = {}
  for b = 0, 19 do best[b] = 0 end
  for h = 1, 2 do
    local sc, mx, z = {}, -math.huge, 0
    for j = 1, 160 do
      local dot = 0
      for c = 1, D do dot = dot + qt[h][1][c] * kt[1][j][c] end
      sc[j] = dot / math.sqrt(D); mx = math.max(mx, sc[j])
    end
    for j = 1, 160 do z = z + math.exp(sc[j] - mx) end
    for j = 1, 160 do best[(j - 1) // 8] = math.max(best[(j - 1) // 8], math.exp(sc[j] - mx) / z) end
  end
  local order = {}
  for b = 0, 18 do order[#order + 1] = b end
  table.sort(order, function(a, b) if best[a] ~= best[b] then return best[a] > best[b] end return a < b end)
  local want = {order[1], order[2], order[3], 19}
  table.sort(want)
  for i, b in ipairs(out.pages:totable()[1][1]) do eq(b, want[i], "KV head 0 blocks = float64 group-max oracle") end
  truthy(recall_of(out, qp, cache) >= 0.9, "recall " .. recall_of(out, qp, cache))
  local bad = sr.block_step(cache, qp, p, nil, function(_, _, nb) return sl.zeros({HKV, 1, nb}) end)
  truthy(recall_of(bad, qp, cache) < 0.9, "first-k blocks must fail")
  local r = sl.eval("seer_attention_r", sl.problem{q = qp, k = kp, v = vp}, {params = {budget = 200, block = 8}})
  truthy(r.metrics.rel_l2 <= 1e-5, "budget >= n is dense")
end)

test("sparselab model --decode: a decode method in the runner's loop from the CLI", function()
  local bin = (os.getenv("BUILD") or "build") .. "/sparselab"
  local base = bin .. " model experiments/data/tinystories260k/model.bin --text experiments/data/tinystories260k/texts/06_little_seed.txt --gen 4 --json"
  local f = io.popen(base .. " --decode quest:budget=4096,page=8 --prefix 40 2>&1")
  local j = sl.json_decode(f:read("a"))
  f:close()
  truthy(j.kl < 1e-9 and j.top1 == 1 and j.decode == "quest", "full budget through the decode loop is dense")
  f = io.popen(base .. " --decode xattention 2>&1")
  local text = f:read("a")
  f:close()
  truthy(text:find("xattention has no decode hook", 1, true), "prefill-only method refused: " .. text)
end)

-- ---- sparsemm ----

test("sparsemm: budgets sum and floor, uniform = SnapKV budgets, head scores shift budgets, blind eviction fails", function()
  local sm = sl.methods.get("sparsemm")
  local p = sl.registry.resolve(sm, {base_capacity = 64, window = 8, ratio = 0.25, kernel = 3})
  local u = sm.allocate(nil, HKV, p, 0, 1)
  for h = 1, HKV do eq(u[h], 56, "uniform: base - window each") end
  local b = sm.allocate({3, 1}, HKV, p, 4, 1)
  eq(b[1] + b[2], 112, "budgets sum to Hkv . b")
  truthy(b[1] > b[2] and b[2] >= 14, "the scored head gets more, every head its floor")
  local qp, kp, vp = peaked(160, 8, 201)
  local obs = {}
  local qt = qp:totable()
  local noise = sl.randn({HQ, 8, D}, {seed = 202, std = 0.2}):totable()
  for h = 1, HQ do
    obs[h] = {}
    for i = 1, 8 do obs[h][i] = {}; for c = 1, D do obs[h][i][c] = qt[h][1][c] + noise[h][i][c] end end
  end
  obs = sl.tensor(obs)
  local function run(imp_fn, scores)
    local st = decode.begin("sparsemm", {hq = HQ, hkv = HKV, d = D, page = 8})
    st.head_scores = scores
    decode.prefill(st, 3, kp:narrow(2, 1, 159), vp:narrow(2, 1, 159), {q = obs})
    local ls = st:layer(3)
    ls.cache:append(kp:narrow(2, 160, 1), vp:narrow(2, 160, 1))
    return sm.decode(st, ls, {q = qp, layer = 3}, p, imp_fn), ls
  end
  local out, ls = run(nil, nil)
  for g = 1, HKV do eq(#ls.kept[g], 64, "uniform: capacity per head") end
  local cache = ls.cache
  truthy(recall_of(out, qp, cache) >= 0.9, "sparsemm recall " .. recall_of(out, qp, cache))
  local _, ls2 = run(nil, {[4] = {3, 1}})
  truthy(#ls2.kept[1] > #ls2.kept[2], "head scores move budget between heads")
  local bad = run(function(_, _, n)
    local imp = {}
    for g = 1, HKV do imp[g] = {}; for j = 1, n do imp[g][j] = -j end end
    return imp
  end, nil)
  truthy(recall_of(bad, qp, cache) < 0.9, "position-order eviction must fail")
  local r = sl.eval("sparsemm", sl.problem{q = qp, k = kp, v = vp, state = {obs_q = obs}}, {params = {base_capacity = 400, window = 8}})
  truthy(r.metrics.rel_l2 <= 1e-5, "budget >= prompt keeps everything")
end)

test("sparsemm: reference_pool pools the prefix alone (the reference's calcul_attn_sore); both spans equal float64 pooling", function()
  local sm = sl.methods.get("sparsemm")
  local qp, kp, vp = peaked(160, 8, 203)
  local W, n0 = 8, 159
  -- the window queries point at the first window key (position n0 - W), so
  -- pooling across the prefix/window boundary lifts the last prefix keys
  local ob, kt = sl.randn({HQ, W, D}, {seed = 204, std = 0.3}):totable(), kp:totable()
  for h = 1, HQ do
    local g = (h - 1) // (HQ // HKV) + 1
    for i = 1, W do for c = 1, D do ob[h][i][c] = ob[h][i][c] + 2 * kt[g][n0 - W + 1][c] end end
  end
  local obs = sl.tensor(ob)
  local function kept_of(ref)
    local p = sl.registry.resolve(sm, {base_capacity = 40, window = W, ratio = 0.25, kernel = 7, reference_pool = ref})
    local st = decode.begin("sparsemm", {hq = HQ, hkv = HKV, d = D, page = 8})
    decode.prefill(st, 3, kp:narrow(2, 1, n0), vp:narrow(2, 1, n0), {q = obs})
    local ls = st:layer(3)
    ls.cache:append(kp:narrow(2, 160, 1), vp:narrow(2, 160, 1))
    sm.decode(st, ls, {q = qp, layer = 3}, p)
    return ls.kept, ls.budgets
  end
  -- float64: window row i (position n0 - W + i, 0-based i) over keys 0..pos, summed over rows and the group
  local Q, K = obs:totable(), kp:totable()
  local imp = {}
  for g = 1, HKV do imp[g] = {}; for j = 1, n0 do imp[g][j] = 0 end end
  for h = 1, HQ do
    local g = (h - 1) // (HQ // HKV) + 1
    for i = 1, W do
      local pos, s, mx, z = n0 - W + i, {}, -math.huge, 0
      for j = 1, pos do
        local dot = 0
        for c = 1, D do dot = dot + Q[h][i][c] * K[g][j][c] end
        s[j] = dot / math.sqrt(D)
        mx = math.max(mx, s[j])
      end
      for j = 1, pos do z = z + math.exp(s[j] - mx) end
      for j = 1, pos do imp[g][j] = imp[g][j] + math.exp(s[j] - mx) / z end
    end
  end
  local function pooled(g, j, span)
    local m = 0
    for t = j - 3, j + 3 do if t >= 1 and t <= span then m = math.max(m, imp[g][t]) end end
    return m
  end
  local differ, sets = 0, {}
  for _, ref in ipairs({false, true}) do
    local kept, budgets = kept_of(ref)
    sets[#sets + 1] = kept
    for g = 1, HKV do
      local span = ref and n0 - W or n0
      local order = {}
      for j = 1, n0 - W do order[j] = j end
      local v = {}
      for j = 1, n0 - W do v[j] = pooled(g, j, span) end
      table.sort(order, function(a, b) if v[a] ~= v[b] then return v[a] > v[b] end return a < b end)
      local want = {}
      for x = 1, budgets[g] do want[order[x] - 1] = true end
      local got = 0
      for x = 1, budgets[g] do
        truthy(want[kept[g][x]], string.format("reference_pool %s, kv head %d: kept %d is in the float64 top-%d",
          tostring(ref), g, kept[g][x], budgets[g]))
        got = got + 1
      end
      eq(got, budgets[g], "budget kept")
      if math.abs(pooled(g, n0 - W, n0) - pooled(g, n0 - W, n0 - W)) > 1e-6 then differ = differ + 1 end
    end
  end
  truthy(differ > 0, "the two spans pool the last prefix key differently on this input")
  local same = true
  for g = 1, HKV do
    local a, b = {}, {}
    for _, j in ipairs(sets[1][g]) do a[j] = true end
    for _, j in ipairs(sets[2][g]) do b[j] = true end
    for j in pairs(a) do if not b[j] then same = false end end
  end
  truthy(not same, "the kept sets differ between the spans")
end)

-- ---- video_xl2 ----

test("video_xl2: every chunk selected = dense; forced chunks; relevant chunks beat the first ones", function()
  local vx = sl.methods.get("video_xl2")
  local qp, kp, vp = peaked(160, 8, 211)
  local function run(p, scorer)
    local st = decode.begin("video_xl2", {hq = HQ, hkv = HKV, d = D, page = 8})
    decode.prefill(st, 0, kp:narrow(2, 1, 159), vp:narrow(2, 1, 159))
    local ls = st:layer(0)
    ls.cache:append(kp:narrow(2, 160, 1), vp:narrow(2, 160, 1))
    return vx.decode(st, ls, {q = qp, layer = 0}, sl.registry.resolve(vx, p), scorer), ls.cache
  end
  local all, cache = run({topk = 40, chunk = 8, step = 4})
  local od = decode.attend(cache, qp, decode.all_pages(HQ, 1, cache:pages()))
  eq(sl.metric.max_abs(all.o, od) < 1e-6, true, "every chunk dense = dense attention")
  local out = run({topk = 6, chunk = 8, step = 8})
  for _, c in ipairs{0, 1, 19} do truthy(out.keep[c], "chunk " .. c .. " is always dense") end
  local n = 0
  for _ in pairs(out.keep) do n = n + 1 end
  eq(n, 9, "topk + 3 dense chunks")
  truthy(recall_of(out, qp, cache) >= 0.85, "video_xl2 recall " .. recall_of(out, qp, cache))
  local bad = run({topk = 6, chunk = 8, step = 8}, function(nc) return sl.zeros({HQ, 1, nc}) end)
  truthy(recall_of(bad, qp, cache) < 0.85, "first chunks must fail: recall " .. recall_of(bad, qp, cache))
end)

-- ---- zipvl ----

test("zipvl: 8-bit everywhere is near dense; the set holds tau of the importance; position order fails", function()
  local zv = sl.methods.get("zipvl")
  local qp, kp, vp = peaked(160, 8, 221)
  local obs = {}
  local qt = qp:totable()
  local noise = sl.randn({HQ, 8, D}, {seed = 222, std = 0.2}):totable()
  for h = 1, HQ do
    obs[h] = {}
    for i = 1, 8 do obs[h][i] = {}; for c = 1, D do obs[h][i][c] = qt[h][1][c] + noise[h][i][c] end end
  end
  obs = sl.tensor(obs)
  local function run(p, imp_fn)
    local st = decode.begin("zipvl", {hq = HQ, hkv = HKV, d = D, page = 8})
    decode.prefill(st, 0, kp:narrow(2, 1, 159), vp:narrow(2, 1, 159), {q = obs})
    local ls = st:layer(0)
    ls.cache:append(kp:narrow(2, 160, 1), vp:narrow(2, 160, 1))
    return zv.decode(st, ls, {q = qp, layer = 0}, sl.registry.resolve(zv, p), imp_fn), ls.cache
  end
  local hi, cache = run({tau = 1, bits_high = 8, bits_low = 8, probe = 8})
  local od = decode.attend(cache, qp, decode.all_pages(HQ, 1, cache:pages()))
  truthy(sl.metric.rel_l2(hi.o, od) < 0.02, "8-bit K/V is close to dense: " .. sl.metric.rel_l2(hi.o, od))
  local row = {0.3, -1.2, 2.0, 0.7}
  local qd = zv.qdq(row, 2)
  for i, x in ipairs(qd) do truthy(math.abs(x - row[i]) <= (3.2 / 3) / 2 + 1e-12, "2-bit error within half a step") end
  local p = {tau = 0.6, bits_high = 8, bits_low = 2, probe = 8}
  local good = run(p)
  local n_set = 0
  for _ in pairs(good.important) do n_set = n_set + 1 end
  truthy(n_set < 100, "a peaked prompt needs few important tokens: " .. n_set)
  -- the decode query's true attention mass on the important set (the high-precision tokens)
  local P = decode.attention_probs(cache, qp)
  local function mass(set)
    local m = 0
    for h = 1, HQ do for j in pairs(set) do m = m + P[h][j + 1] end end
    return m / HQ
  end
  local mg = mass(good.important)
  local bad = run(p, function(n0)
    local imp = {}
    for j = 1, n0 do imp[j] = 1 / j end   -- position order: the first tokens
    return imp
  end)
  local blind = {}
  local c = 0
  for j = 0, 158 do if c < n_set then blind[j] = true; c = c + 1 end end
  local mb = mass(blind)
  truthy(mg >= 0.9 * p.tau and mb < 0.5 * mg, string.format("probe importance covers %.3f of the attention, the first %d tokens %.3f", mg, n_set, mb))
  truthy(sl.metric.rel_l2(bad.o, od) > sl.metric.rel_l2(good.o, od), "and its output is further from dense")
  local r = sl.eval("zipvl", sl.problem{q = qp, k = kp, v = vp, state = {obs_q = obs}}, {params = {tau = 1, bits_high = 8, bits_low = 8}})
  truthy(r.metrics.rel_l2 < 0.02, "kernel level: 8-bit everywhere close to dense")
end)

-- ---- loopserve decode ----

test("loopserve decode: re-selection every interval from recent outputs; dense at budget; blind selection fails", function()
  local lp = sl.methods.get("loopserve")
  local qp, kp, vp = peaked(160, 8, 231)
  local p = sl.registry.resolve(lp, {dec_budget = 40, dec_window = 4, dec_interval = 3})
  local function run(importance)
    local st = decode.begin("loopserve", {hq = HQ, hkv = HKV, d = D, page = 8})
    decode.prefill(st, 0, kp:narrow(2, 1, 150), vp:narrow(2, 1, 150))
    local outs = {}
    for t = 1, 10 do
      st.steps = st.steps + 1
      local ls = st:layer(0)
      ls.cache:append(kp:narrow(2, 150 + t, 1), vp:narrow(2, 150 + t, 1))
      local qn = sl.randn({HQ, 1, D}, {seed = 240 + t, std = 0.05}):totable()
      for h = 1, HQ do for c = 1, D do qn[h][1][c] = qn[h][1][c] + qp:totable()[h][1][c] end end
      outs[t] = {out = lp.decode(st, ls, {q = sl.tensor(qn), layer = 0}, p, importance), q = sl.tensor(qn)}
    end
    return outs, st:layer(0).cache
  end
  local outs, cache = run(nil)
  truthy(outs[1].out.selection and outs[2].out.selection == outs[1].out.selection and
    outs[3].out.selection == outs[1].out.selection and outs[4].out.selection ~= outs[1].out.selection,
    "re-selected every dec_interval steps")
  local last = outs[10]
  truthy(recall_of(last.out, last.q, cache) >= 0.9, "loopserve recall " .. recall_of(last.out, last.q, cache))
  local bouts = run(function(_, _, n)
    local imp = {}
    for g = 1, HKV do imp[g] = {}; for j = 1, n do imp[g][j] = -j end end
    return imp
  end)
  truthy(recall_of(bouts[10].out, bouts[10].q, cache) < 0.9, "position-order selection must fail")
  -- a budget above the cache: every token, dense
  local st = decode.begin("loopserve", {hq = HQ, hkv = HKV, d = D, page = 8})
  decode.prefill(st, 0, kp:narrow(2, 1, 159), vp:narrow(2, 1, 159))
  local full = decode.step("loopserve", st, {q = qp, k = kp:narrow(2, 160, 1), v = vp:narrow(2, 160, 1), layer = 0},
    {dec_budget = 4096})
  local od = decode.attend(st:layer(0).cache, qp, decode.all_pages(HQ, 1, st:layer(0).cache:pages()))
  truthy(sl.metric.rel_l2(full.o, od) <= 1e-6, "budget above the cache is dense")
end)

-- ---- videoxl2_chunk_prefill decode (bi-level KV on the template) ----

test("videoxl2_chunk_prefill decode: all chunks dense = dense; timestamps kept; relevant chunks beat the first", function()
  local vx = sl.methods.get("videoxl2_chunk_prefill")
  local qp, kp, vp = peaked(160, 8, 251)
  local base = {prefix_len = 4, ts_len = 2, group_tokens = 10, block_size = 1, suffix_len = 8, dec_step = 10}
  local function run(extra, scorer)
    local p = {}
    for key, val in pairs(base) do p[key] = val end
    for key, val in pairs(extra) do p[key] = val end
    local st = decode.begin("videoxl2_chunk_prefill", {hq = HQ, hkv = HKV, d = D, page = 8})
    decode.prefill(st, 0, kp:narrow(2, 1, 159), vp:narrow(2, 1, 159))
    local ls = st:layer(0)
    ls.cache:append(kp:narrow(2, 160, 1), vp:narrow(2, 160, 1))
    return vx.decode(st, ls, {q = qp, layer = 0}, sl.registry.resolve(vx, p), scorer), ls.cache
  end
  local all, cache = run({dec_topk = 100})
  local od = decode.attend(cache, qp, decode.all_pages(HQ, 1, cache:pages()))
  truthy(sl.metric.max_abs(all.o, od) < 1e-6, "every chunk dense = dense attention")
  local out = run({dec_topk = 4})
  -- prompt 159 tokens: prefix 4, visual [4, 151) = 12 groups of 2 timestamps +
  -- 10 visual tokens and a last partial one of 3 tokens (13 chunks), suffix 8
  truthy(out.keep[1] and out.keep[13], "first and last visual chunks dense")
  -- dense: chunk 1 (12), chunk 13 (3), 4 relevant (48); 7 compressed chunks
  -- to 2 timestamps + 1 pooled row; prefix 4; suffix 8 + the new token
  eq(out.stats.tokens_read, 4 + 63 + 21 + 9, "mixed cache rows")
  local good = recall_of(out, qp, cache)
  local bad = recall_of(run({dec_topk = 4}, function(nc) return sl.zeros({HQ, 1, nc}) end), qp, cache)
  truthy(good >= 0.85 and bad < good - 0.1, string.format("relevant chunks (recall %.3f) beat the first ones (%.3f)", good, bad))
end)

-- ---- hip_attention decode (issue 16, session 3) ----

-- The blocks (0-based, sorted) hip_attention keeps for query head h of the
-- one-row q (a Lua table) over the first n keys of kt: float64 block scores
-- (max over the block's keys of q.k / sqrt(D)) written here, HiP's tree (the
-- recipe's Lua tree, not the C op under test) over the blocks before the
-- window, plus the window blocks.
local function hip_expect(M, qt, kt, n, p, h)
  local g = (h - 1) // (HQ // HKV) + 1
  local C = (n + p.bk - 1) // p.bk
  local T = math.min(math.max(0, (n - 1 - p.window) // p.bk), C)
  local Kb = math.max(1, (p.budget + p.bk - 1) // p.bk)
  local sc = {}
  for c = 1, T do
    local m = -math.huge
    for j = (c - 1) * p.bk + 1, math.min(c * p.bk, n) do
      local dot = 0
      for x = 1, D do dot = dot + qt[h][1][x] * kt[g][j][x] end
      m = math.max(m, dot / math.sqrt(D))
    end
    sc[c] = m
  end
  local set = {}
  for _, c in ipairs((M.tree(sc, T, Kb))) do set[c - 1] = true end
  for c = T, C - 1 do set[c] = true end
  local l = {}
  for c = 0, C - 1 do if set[c] then l[#l + 1] = c end end
  return l
end

local function same_list(a, b)
  if #a ~= #b then return false end
  for i = 1, #a do if a[i] ~= b[i] then return false end end
  return true
end

test("hip_attention: decode tree selection reused between refreshes, re-selected at the refresh step, dense at budget, first-k blocks fail", function()
  local M = sl.methods.get("hip_attention")
  eq(M.phase, "both", "prefill and decode")
  local qp, kp, vp = peaked(160, 8, 201)
  local qt, kt, vt = qp:totable(), kp:totable(), vp:totable()
  local qn = {}
  for h = 1, HQ do qn[h] = {{}}; for x = 1, D do qn[h][1][x] = -qt[h][1][x] end end
  local qneg = sl.tensor(qn)
  local p = sl.registry.resolve(M, {budget = 48, bk = 8, window = 16, refresh = 3})
  local st = decode.begin("hip_attention", {hq = HQ, hkv = HKV, d = D, page = 8})
  decode.prefill(st, 0, kp:narrow(2, 1, 156), vp:narrow(2, 1, 156))
  local sels = {}
  for t = 1, 4 do
    local n = 156 + t
    local q, qtab = t == 4 and qneg or qp, t == 4 and qn or qt
    local out = decode.step("hip_attention", st, {q = q, k = kp:narrow(2, n, 1), v = vp:narrow(2, n, 1), layer = 0}, p)
    sels[t] = out.selection
    eq(out.refreshed, t == 1 or t == 4, "step " .. t .. ": tree searched at steps 1 and 1 + refresh only")
    local o = out.o:totable()
    for h = 1, HQ do
      -- the saved selection equals the tree over the cache at the refresh step
      if t == 1 or t == 4 then
        truthy(same_list(out.selection.blocks[h], hip_expect(M, qtab, kt, n, p, h)),
          string.format("step %d head %d: selection = the tree over the cache at the refresh", t, h))
      end
      -- attended: the saved blocks plus the current window blocks, one softmax
      local keep = {}
      for _, c in ipairs(out.selection.blocks[h]) do
        for j = c * p.bk, math.min((c + 1) * p.bk, n) - 1 do keep[j] = true end
      end
      for j = math.max(0, (n - 1 - p.window) // p.bk) * p.bk, n - 1 do keep[j] = true end
      local ref = attend_ref(qtab, kt, vt, h, keep)
      for x = 1, D do near(o[h][1][x], ref[x], 1e-4, string.format("step %d head %d: output", t, h)) end
    end
    if t <= 3 then
      local r = recall_of(out, qp, st:layer(0).cache)
      truthy(r >= 0.9, string.format("step %d: recall %.3f", t, r))
    end
  end
  truthy(sels[2] == sels[1] and sels[3] == sels[1], "the saved selection is reused between refreshes")
  truthy(sels[4] ~= sels[1] and sels[4].step == 4, "and re-selected at step 1 + refresh")
  local differ = false
  for h = 1, HQ do if not same_list(sels[4].blocks[h], sels[1].blocks[h]) then differ = true end end
  truthy(differ, "the re-selection follows the new query")
  -- score-blind: the first K_b blocks of the tree range instead of the tree
  local cache = st:layer(0).cache
  local st2 = decode.begin("hip_attention", {hq = HQ, hkv = HKV, d = D, page = 8})
  decode.prefill(st2, 0, kp, vp)
  local good = recall_of(M.decode(st2, st2:layer(0), {q = qp, layer = 0}, p), qp, cache)
  local st3 = decode.begin("hip_attention", {hq = HQ, hkv = HKV, d = D, page = 8})
  decode.prefill(st3, 0, kp, vp)
  local firstk = function(_, _, _, T, Kb)
    local l = {}
    for h = 1, HQ do l[h] = {}; for c = 0, math.min(T, Kb) - 1 do l[h][#l[h] + 1] = c end end
    return l
  end
  local bad = recall_of(M.decode(st3, st3:layer(0), {q = qp, layer = 0}, p, firstk), qp, cache)
  truthy(good >= 0.9 and bad < 0.9, string.format("the tree (recall %.3f) beats the first K_b blocks (%.3f)", good, bad))
  -- rep = minmax (the draft's grouped representative): the decode selection
  -- = a float64 tree over max(q.k_min, q.k_max) of each block's channel-wise
  -- min/max keys, plus the window blocks
  local pm = sl.registry.resolve(M, {budget = 48, bk = 8, window = 16, refresh = 3, rep = "minmax"})
  local st4 = decode.begin("hip_attention", {hq = HQ, hkv = HKV, d = D, page = 8})
  decode.prefill(st4, 0, kp, vp)
  local om = M.decode(st4, st4:layer(0), {q = qp, layer = 0}, pm)
  local n = 160
  for h = 1, HQ do
    local g = (h - 1) // (HQ // HKV) + 1
    local T = (n - 1 - pm.window) // pm.bk
    local sc = {}
    for c = 1, T do
      local a, b = 0, 0
      for x = 1, D do
        local lo, hi = math.huge, -math.huge
        for j = (c - 1) * pm.bk + 1, c * pm.bk do lo = math.min(lo, kt[g][j][x]); hi = math.max(hi, kt[g][j][x]) end
        a, b = a + qt[h][1][x] * lo, b + qt[h][1][x] * hi
      end
      sc[c] = math.max(a, b)
    end
    local set = {}
    for _, c in ipairs((M.tree(sc, T, pm.budget // pm.bk))) do set[c - 1] = true end
    for c = T, (n - 1) // pm.bk do set[c] = true end
    local want = {}
    for c = 0, (n - 1) // pm.bk do if set[c] then want[#want + 1] = c end end
    truthy(same_list(om.selection.blocks[h], want), "head " .. h .. ": min/max decode selection = the float64 min/max tree")
  end
  -- budget >= cache: every block at every step, = dense
  local r = sl.eval("hip_attention", sl.problem{q = sl.randn({HQ, 3, D}, {seed = 7}), k = kp, v = vp},
    {params = {budget = 4096, window = 16, refresh = 2}})
  truthy(r.metrics.rel_l2 <= 1e-5, "budget >= cache is dense: rel_l2 " .. r.metrics.rel_l2)
end)

-- issue 13, session 4c: eval --steps hands the prefix's queries to the decode hook
test("snapkv: eval --steps replay keeps the set float64 SnapKV scores of the prefix queries give; random prompt queries fail", function()
  local N, S, W, KER = 128, 6, 16, 5
  local p = sl.registry.resolve(sl.methods.get("snapkv"),
    {budget = 40, obs_window = W, ["local"] = 8, prefix = 4, kernel = KER, page = 8})
  local q = sl.randn({HQ, N, D}, {seed = 4301})
  local k = sl.randn({HKV, N, D}, {seed = 4302})
  local v = sl.randn({HKV, N, D}, {seed = 4303})
  local rows, prompt = decode.steps_split(q, S)   -- what `eval --steps S` does
  local n0 = N - S
  eq(prompt:shape()[2], n0, "prefix queries")
  -- independent float64 SnapKV: softmax rows of the last W prompt queries
  -- (causal, 1/sqrt(D)), column sums over rows and the group's query heads,
  -- average pooling along keys (zero padding counted), then prefix + local +
  -- the top middle positions (ties: lower position)
  local qt, kt = q:totable(), k:totable()
  local function kept_ref()
    local col = {}
    for g = 1, HKV do col[g] = {}; for j = 1, n0 do col[g][j] = 0 end end
    for h = 1, HQ do
      local g = (h - 1) // (HQ // HKV) + 1
      for i = n0 - W + 1, n0 do            -- 1-based row = position i - 1
        local lg, mx = {}, -math.huge
        for j = 1, i do
          local dot = 0
          for c = 1, D do dot = dot + qt[h][i][c] * kt[g][j][c] end
          lg[j] = dot / math.sqrt(D)
          if lg[j] > mx then mx = lg[j] end
        end
        local z = 0
        for j = 1, i do z = z + math.exp(lg[j] - mx) end
        for j = 1, i do col[g][j] = col[g][j] + math.exp(lg[j] - mx) / z end
      end
    end
    local sets, gaps = {}, {}
    for g = 1, HKV do
      local pooled = {}
      for j = 1, n0 do
        local acc = 0
        for t = j - KER // 2, j + KER // 2 do if t >= 1 and t <= n0 then acc = acc + col[g][t] end end
        pooled[j] = acc / KER
      end
      local set, mid = {}, {}
      for j = 0, 3 do set[j] = true end
      for j = n0 - 8, n0 - 1 do set[j] = true end
      for j = 4, n0 - 9 do mid[#mid + 1] = j end
      table.sort(mid, function(a, b)
        if pooled[a + 1] ~= pooled[b + 1] then return pooled[a + 1] > pooled[b + 1] end
        return a < b
      end)
      local share = 40 - 4 - 8
      for i = 1, share do set[mid[i]] = true end
      sets[g], gaps[g] = set, pooled[mid[share] + 1] - pooled[mid[share + 1] + 1]
    end
    return sets, gaps
  end
  local want, gaps = kept_ref()
  for g = 1, HKV do truthy(gaps[g] > 1e-5, "the cut is not a near-tie (float32 scores): gap " .. gaps[g]) end
  local function same(kept)
    for g = 1, HKV do
      local n = 0
      for _, j in ipairs(kept[g]) do
        if not want[g][j] then return false end
        n = n + 1
      end
      local m = 0
      for _ in pairs(want[g]) do m = m + 1 end
      if n ~= m then return false end
    end
    return true
  end
  local function replay(obs)
    local prob = sl.problem{q = rows, k = k, v = v, state = {obs_q = obs}}
    return decode.replay("snapkv", prob, p, {prefill_q = obs}), prob
  end
  local r, prob = replay(prompt)
  truthy(same(r.state:layer(0).kept), "replay's kept set = float64 SnapKV over the prefix queries")
  -- sl.eval on the same problem (the CLI's path) runs this replay: same outputs
  local e = sl.eval("snapkv", prob, {params = {budget = 40, obs_window = W, ["local"] = 8, prefix = 4, kernel = KER, page = 8}})
  truthy(sl.metric.max_abs(e.o, r.o) == 0, "sl.eval --steps path = the replay")
  truthy(e.metrics.recall_mean < 0.9999 and e.metrics.recall_mean > 0, "sparse run: recall " .. e.metrics.recall_mean)
  -- the check is sensitive: random prompt queries give another kept set
  local rr = replay(sl.randn({HQ, n0, D}, {seed = 4304}))
  truthy(not same(rr.state:layer(0).kept), "random prompt queries must fail the kept-set check")
  raises(function() decode.steps_split(q, N) end, "S must be an integer in [1, 128), found 128", "S = n")
end)

test("kvcache: asymmetric pages of a channel spanning +-FLT_MAX stay finite (saturate), no NaN", function()
  -- hi - lo of finite values near +-FLT_MAX overflows float: the scale was inf and every
  -- dequantised value of the page NaN (session 4 review); now the channel saturates
  for _, bits in ipairs{8, 4} do
    local c = sl.kvcache_c(1, 4, 4)
    c:set_quant(bits, bits, 1)
    local k = sl.randn({1, 8, 4}, {seed = 77 + bits})
    k:set(1, 1, 1, 2e38); k:set(1, 2, 1, -2e38); k:set(1, 5, 2, 3.3e38); k:set(1, 6, 2, -3.3e38)
    c:append(k, sl.randn({1, 8, 4}, {seed = 78 + bits}))
    local t = c:tensor("k"):totable()[1]
    for i, row in ipairs(t) do
      for j, x in ipairs(row) do
        truthy(x == x and math.abs(x) < math.huge, string.format("int%d k[%d][%d] = %s", bits, i, j, x))
      end
    end
    truthy(t[1][1] > 1e38 and t[2][1] < -1e38, "the extremes keep their signs and stay large")
    -- an ordinary channel of the same page is unaffected: within a quantisation step
    local k3 = k:totable()[1]
    for i = 1, 8 do truthy(math.abs(t[i][3] - k3[i][3]) < 1, "ordinary channel") end
  end
end)

test("kvcache: set_quant(kb, vb, zero) is all or nothing (a failing zero step leaves the bit widths)", function()
  -- issue 13 review: the bit widths were set before the zero step was checked, so a bad
  -- zero argument left the cache half-changed (8-bit pages, symmetric) after the error
  local c = sl.kvcache_c(2, 4, 4)
  raises(function() c:set_quant(8, 4, 2) end, "asym = 2; expected 0 or 1", "zero = 2")
  local kb, vb, z = c:quant()
  eq(kb, 0, "kbits after the refused call"); eq(vb, 0, "vbits after the refused call"); eq(z, 0, "zero")
  c:set_quant(8, 8, 1)
  -- zero points with f32 K: refused before the widths drop to 0 (the old code freed the pages first)
  raises(function() c:set_quant(0, 0, 1) end, "zero points go with quantised pages", "zero with kbits 0")
  kb, vb, z = c:quant()
  eq(kb, 8, "kbits kept"); eq(vb, 8, "vbits kept"); eq(z, 1, "zero kept")
  raises(function() c:set_quant(4, 4, 1 + (1 << 32)) end, "out of range", "zero past int")
  kb, vb, z = c:quant()
  eq(kb, 8, "kbits kept after an out-of-range zero"); eq(z, 1, "zero kept after an out-of-range zero")
  c:set_quant(4, 0, 0)
  kb, vb, z = c:quant()
  eq(kb, 4, "kbits set"); eq(vb, 0, "vbits set"); eq(z, 0, "zero set")
  -- the cache still works after the refusals
  c:append(sl.randn({2, 6, 4}, {seed = 91}), sl.randn({2, 6, 4}, {seed = 92}))
  eq(c:len(), 6, "len after append")
end)

H.done()
