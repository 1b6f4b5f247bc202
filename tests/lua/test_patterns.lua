-- test_patterns.lua — the Lua surface of masks: every pattern constructor
-- (table arguments, unknown keys, number shorthands), lazy `+` `*` `-` on
-- patterns, the same operators on materialised masks and mixed, assign,
-- permute / inverse_permute and the causal test, resize, coarsen, align,
-- index and bits conversions, and printing. Run with
-- LUA_CPATH=build/?.so lua5.4 tests/lua/test_patterns.lua
package.path = "tests/lua/?.lua;" .. package.path
local H = require "harness"
local sl = require "sparselab"
local test, near, eq, truthy, raises = H.test, H.near, H.eq, H.truthy, H.raises

--- Every (head, row, key) of m against keep(h, i, j) with 0-based head, query
--- position i and key j; returns the kept count.
local function same(m, keep, what)
  local info = m:info()
  local kept = 0
  for h = 1, info.n_heads do
    for r = 1, info.n_q do
      local i = info.n_k - info.n_q + r - 1
      for j = 0, info.n_k - 1 do
        local want = keep(h - 1, i, j) and true or false
        if m:get(h, r, j + 1) ~= want then
          error(string.format("%s: head %d position %d key %d: mask %s, want %s", what, h, i, j,
            tostring(m:get(h, r, j + 1)), tostring(want)), 2)
        end
        if want then kept = kept + 1 end
      end
    end
  end
  return kept
end

local SIZE = {n_q = 37, n_k = 37, bq = 8, bk = 4}

test("constructors take tables, name unknown keys, and keep the number shorthands", function()
  local cases = {
    {"window", {w = 3, dilation = 2, block = 2}}, {"sink", {s = 2}}, {"strided", {stride = 3}},
    {"block_diag", {size = 5}}, {"power", {block = 4}}, {"triangle", {n_init = 1, n_local = 4, n_last = 3}},
    {"neighborhood", {kernel = 3}}, {"document", {segments = {5, 20}}}, {"segment_sink", {segments = {5}, k = 2}},
    {"global_tokens", {tokens = {3}}}, {"dense_rows", {last = 2}}, {"dense_cols", {first = 2}},
    {"vertical", {cols = {1, 9}}}, {"slash", {offsets = {0, 5}}}, {"drop", {rate = 0.5}}, {"full", {}}, {"causal", {}},
  }
  for _, c in ipairs(cases) do
    local p = sl.mask[c[1]](c[2])
    truthy(sl.mask.is_pattern(p), c[1] .. " is a pattern")
    truthy(tostring(p):find(c[1], 1, true), c[1] .. " prints its name")
    local m = p:materialize(SIZE)
    truthy(sl.mask.is_mask(m), c[1] .. " materialises")
    local bad = {}
    for k, v in pairs(c[2]) do bad[k] = v end
    bad.wdith = 1
    raises(function() sl.mask[c[1]](bad) end, "unknown key 'wdith'", c[1] .. " unknown key")
  end
  eq(sl.mask.window(4):materialize(SIZE):kept(1), sl.mask.window{w = 4}:materialize(SIZE):kept(1), "window(4)")
  eq(sl.mask.sink(3):materialize(SIZE):kept(1), sl.mask.sink{s = 3}:materialize(SIZE):kept(1), "sink(3)")
  raises(function() sl.mask.window{} end, "w is required", "missing key")
  raises(function() sl.mask.window{w = 0} end, "below 1", "range")
  raises(function() sl.mask.window{w = 2.5} end, "must be an integer", "integer")
  raises(function() sl.mask.drop{rate = 2} end, "rate must be a number in [0, 1]", "drop rate")
  raises(function() sl.mask.window{w = 3, causal = "yes"} end, "causal must be a boolean", "causal flag")
  raises(function() sl.mask.window(3):materialize{n_q = 8, bq = 4, bk = 4, heads = 2} end, "unknown key 'heads'",
    "materialize keys")
end)

test("patterns materialise to their definitions", function()
  local n = 37
  local function check(p, keep, what, size)
    same(p:materialize(size or SIZE), keep, what)
  end
  check(sl.mask.window{w = 3, dilation = 2}, function(_, i, j) local d = i - j return d >= 0 and d < 6 and d % 2 == 0 end,
    "dilated window")
  check(sl.mask.window{w = 2, block = 5}, function(_, i, j)
    local d = i // 5 - j // 5 return j <= i and d >= 0 and d < 2 end, "block window")
  check(sl.mask.window{w = 2, block = 5, causal = false}, function(_, i, j)
    local d = i // 5 - j // 5 return d >= 0 and d < 2 end, "block window without token causality")
  check(sl.mask.full(), function() return true end, "full")
  check(sl.mask.full{causal = true}, function(_, i, j) return j <= i end, "full causal")
  check(sl.mask.power{block = 3}, function(_, i, j)
    local d = i // 3 - j // 3 return j <= i and d >= 0 and (d & (d - 1)) == 0 end, "power")
  check(sl.mask.triangle{n_init = 2, n_local = 4, n_last = 5}, function(_, i, j)
    return j <= i and (j < 2 or i - j < 4 or i >= n - 5) end, "triangle")
  check(sl.mask.block_diag{size = 6}, function(_, i, j) return j <= i and i // 6 == j // 6 end, "block_diag")
  check(sl.mask.document{segments = {10, 25}, prev = 1}, function(_, i, j)
    local function seg(x) return (x >= 10 and 1 or 0) + (x >= 25 and 1 or 0) end
    local d = seg(i) - seg(j) return j <= i and d >= 0 and d <= 1 end, "document")
  check(sl.mask.segment_sink{segments = {10, 25}, k = 2}, function(_, i, j)
    return j <= i and (j < 2 or (j >= 10 and j < 12) or (j >= 25 and j < 27)) end, "segment_sink")
  check(sl.mask.global_tokens{tokens = {4, 30}}, function(_, i, j)
    return j <= i and (i == 4 or i == 30 or j == 4 or j == 30) end, "global_tokens")
  check(sl.mask.dense_rows{rows = {3}, last = 2}, function(_, i, j) return j <= i and (i == 3 or i >= n - 2) end,
    "dense_rows")
  check(sl.mask.dense_cols{first = 3}, function(_, i, j) return j <= i and j < 3 end, "dense_cols")
  check(sl.mask.slash{offsets = {0, 7}, width = 2}, function(_, i, j)
    local d = i - j return (d >= 0 and d < 2) or (d >= 7 and d < 9) end, "slash")
  check(sl.mask.neighborhood{grid = {5, 7}, kernel = 3}, function(_, i, j)
    if i >= 35 or j >= 35 then return false end
    local qy, qx, ky, kx = i // 7, i % 7, j // 7, j % 7
    local cy, cx = math.min(math.max(qy, 1), 3), math.min(math.max(qx, 1), 5)
    return math.abs(ky - cy) <= 1 and math.abs(kx - cx) <= 1 end, "neighborhood 5x7 k3")
  local m = sl.mask.drop{rate = 0.5, q_rate = 0.25, seed = 9}:materialize(SIZE)
  same(m, function(_, i, j)
    return j <= i and sl.mask_c.drop_draw(9, 0, 1, i) >= 0.25 and sl.mask_c.drop_draw(9, 0, 0, j) >= 0.5 end, "drop")
end)

test("per-head patterns: strided offsets, vertical and slash lists", function()
  local p = sl.mask.strided{stride = 4, head_step = 1, block = 4, causal = false}
  local m = p:materialize{n_q = 32, n_k = 32, bq = 4, bk = 4, n_heads = 4}
  eq(m:info().n_heads, 4, "strided heads")
  same(m, function(h, _, j) return (j // 4 + h) % 4 == 0 end, "strided shards")
  local v = sl.mask.vertical{cols = {{1, 5}, {2, 9, 10}}} + sl.mask.slash{offsets = {{0}, {0, 7}}}
  local mv = v:materialize{n_q = 20, n_k = 20, bq = 4, bk = 4}
  eq(mv:info().n_heads, 2, "heads from the lists")
  local cols = {{[1] = true, [5] = true}, {[2] = true, [9] = true, [10] = true}}
  same(mv, function(h, i, j) return j <= i and (cols[h + 1][j] or i == j or (h == 1 and i - j == 7)) end, "vertical+slash")
  local per = sl.mask.strided{stride = 2, offsets = {0, 1, 1}}
  eq(per:materialize{n_q = 8, n_k = 8, bq = 4, bk = 4}:info().n_heads, 3, "offsets per head")
  raises(function() return sl.mask.vertical{cols = {{1}, {2}}} + sl.mask.slash{offsets = {{0}, {1}, {2}}} end,
    "do not fit together", "head counts")
  raises(function() per:materialize{n_q = 8, n_k = 8, bq = 4, bk = 4, n_heads = 2} end, "3 per-head offsets but 2 heads",
    "n_heads mismatch")
end)

test("+ * - on patterns, on masks and mixed agree with the definitions", function()
  local w, s, c = sl.mask.window{w = 5}, sl.mask.sink{s = 3}, sl.mask.causal()
  local fw = function(_, i, j) return i - j >= 0 and i - j < 5 end
  local fs = function(_, i, j) return j <= i and j < 3 end
  local fc = function(_, i, j) return j <= i end
  local mw, ms, mc = w:materialize(SIZE), s:materialize(SIZE), c:materialize(SIZE)
  local cases = {
    {"pattern +", w + s, function(...) return fw(...) or fs(...) end},
    {"pattern *", (w + s) * s, fs},
    {"pattern -", c - w, function(...) return fc(...) and not fw(...) end},
    {"pattern - +", (c - w) + s, function(...) return (fc(...) and not fw(...)) or fs(...) end},
    {"mask +", mw + ms, function(...) return fw(...) or fs(...) end},
    {"mask *", mc * mw, fw},
    {"mask -", mc - ms, function(...) return fc(...) and not fs(...) end},
    {"mask + pattern", mw + s, function(...) return fw(...) or fs(...) end},
    {"pattern * mask", c * mw, fw},
    {"mask - pattern", mc - w, function(...) return fc(...) and not fw(...) end},
    {"pattern - mask", c - mw, function(...) return fc(...) and not fw(...) end},
  }
  for _, case in ipairs(cases) do
    local m = case[2]
    if sl.mask.is_pattern(m) then m = m:materialize(SIZE) end
    same(m, case[3], case[1])
  end
  local empty = sl.mask_c.pattern({}, SIZE.n_q, SIZE.n_k, SIZE.bq, SIZE.bk)
  eq((mw + empty):kept(1), mw:kept(1), "union with the empty mask")
  eq((mw - empty):kept(1), mw:kept(1), "difference with the empty mask")
  raises(function() return mw + sl.mask.window(3):materialize{n_q = 37, n_k = 37, bq = 16, bk = 4} end, "resize first",
    "block sizes differ")
  raises(function() return mw * 3 end, "expected two masks", "a number")
end)

test("assign builds per-head masks from patterns and masks", function()
  local a = sl.mask.assign{sl.mask.window(3), sl.mask.causal(), sl.mask.sink(2)}
  truthy(sl.mask.is_pattern(a), "all patterns: lazy")
  local m = a:materialize(SIZE)
  eq(m:info().n_heads, 3, "three heads")
  eq(m:kept(1), sl.mask.window(3):materialize(SIZE):kept(1), "head 1")
  eq(m:kept(2), sl.mask.causal():materialize(SIZE):kept(1), "head 2")
  local mixed = sl.mask.assign{sl.mask.window(3):materialize(SIZE), sl.mask.sink(2)}
  truthy(sl.mask.is_mask(mixed), "with a mask: a mask")
  eq(mixed:kept(2), sl.mask.sink(2):materialize(SIZE):kept(1), "mixed head 2")
  raises(function() sl.mask.assign{sl.mask.window(3), 5} end, "entry 2 is neither", "bad entry")
  raises(function() sl.mask.assign{sl.mask.window(3), x = 1} end, "unknown key 'x'", "bad key")
end)

test("permute, inverse_permute and the causal test on original positions", function()
  local n = 24
  local m = (sl.mask.window(5) + sl.mask.sink(2)):materialize{n_q = n, n_k = n, bq = 4, bk = 4}
  local perm = {}
  for i = 0, n - 1 do perm[i + 1] = (i * 5) % n end
  local p = m:permute(perm)
  same(p, function(_, i, j) return m:get(1, perm[i + 1] + 1, perm[j + 1] + 1) end, "permuted")
  local back = p:inverse_permute(perm)
  eq((back - m):kept(1) + (m - back):kept(1), 0, "permute then inverse is the identity")
  eq(p:causal_violations(perm), 0, "causal in original positions")
  truthy(p:causal_violations() > 0, "not causal in permuted order")
  local t = sl.tensor(perm, "i32")
  eq((m:permute(t) - p):kept(1), 0, "an i32 tensor works too")
  raises(function() m:permute({0, 0, 1}) end, "expected 24 positions", "wrong length")
  local dup = {}
  for i = 1, n do dup[i] = 0 end
  raises(function() m:permute(dup) end, "not a permutation", "duplicates")
end)

test("resize keeps the pairs, coarsen keeps whole blocks, align reports both", function()
  local m = (sl.mask.window(6) + sl.mask.sink(1)):materialize{n_q = 40, n_k = 40, bq = 4, bk = 4}
  local r = m:resize{bq = 7, bk = 3}
  eq(r:info().bq, 7, "new bq")
  same(r, function(_, i, j) return m:get(1, i + 1, j + 1) end, "resize")
  local c = m:coarsen{bq = 8, bk = 8}
  eq(c:info().n_part, 0, "coarsened blocks are full")
  same(c, function(_, i, j)
    for a = (i // 8) * 8, math.min(39, (i // 8) * 8 + 7) do
      for b = (j // 8) * 8, math.min(39, (j // 8) * 8 + 7) do
        if m:get(1, a + 1, b + 1) then return true end
      end
    end
    return false end, "coarsen")
  local al = sl.mask.align(m, c)
  near(al.recall, 1, 0, "executed ⊇ semantic")
  near(al.density_semantic, m:density(true), 1e-12, "semantic density")
  near(al.density_executed, c:density(true), 1e-12, "executed density")
  near(al.extra, al.density_executed - al.density_semantic, 1e-12, "extra")
  local al2 = sl.mask.align(sl.mask.window(3), m, {causal = false})
  near(al2.recall, 1, 0, "window(3) inside window(6)")
  near(al2.density_semantic, sl.mask.window(3):materialize{n_q = 40, n_k = 40, bq = 4, bk = 4}:density(false), 1e-12,
    "non-causal denominator")
  raises(function() m:resize{bq = 7, bz = 3} end, "unknown key 'bz'", "resize keys")
  raises(function() m:coarsen{bq = 0} end, "block sizes must be", "coarsen range")
  raises(function() sl.mask.align(m, c, {causall = true}) end, "unknown key 'causall'", "align keys")
  raises(function() sl.mask.align(sl.mask.window(3), sl.mask.sink(1)) end, "materialise one", "two patterns")
end)

test("index lists and dense bits round-trip", function()
  local m = (sl.mask.window(4) + sl.mask.vertical{cols = {0, 9}}):materialize{n_q = 30, n_k = 30, bq = 8, bk = 8}
  local x = m:to_index{rows_per_entry = 1}
  eq(x.n_entries, 30, "entries")
  eq(x.row_ptr:shape()[2], 31, "row_ptr width")
  eq(x.col:numel(), m:kept(1), "one index per kept pair")
  local back = sl.mask.from_index(x, 8, 8)
  eq((back - m):kept(1) + (m - back):kept(1), 0, "index round trip")
  local xb = m:to_index{rows_per_entry = 4}
  local sup = sl.mask.from_index(xb, 8, 8)
  eq((m - sup):kept(1), 0, "per-block lists cover the rows")
  truthy(sl.mask.align(m, sup).extra > 0, "and execute more")
  raises(function() m:to_index{rows = 2} end, "unknown key 'rows'", "to_index keys")
  local bits = m:to_bits()
  eq(bits:dtype(), "u8", "bits dtype")
  local mb = sl.mask.from_bits(bits, 5, 3)
  same(mb, function(_, i, j) return m:get(1, i + 1, j + 1) end, "bits round trip")
  raises(function() sl.mask.from_bits(sl.zeros{4, 4}, 2, 2) end, "expected u8", "float bits")
end)

test("index lists run on attn.token_sparse exactly as the block mask on attn.block_sparse", function()
  if not (sl.attn and sl.attn.token_sparse) then print("SKIP attn.token_sparse absent") return end
  local q, k, v = sl.randn({2, 40, 8}, {seed = 1}), sl.randn({2, 40, 8}, {seed = 2}), sl.randn({2, 40, 8}, {seed = 3})
  local m = (sl.mask.window(7) + sl.mask.vertical{cols = {{0, 9}, {3}}}):materialize{n_q = 40, n_k = 40, bq = 8, bk = 8}
  local x = m:to_index{rows_per_entry = 1}
  local o1, l1 = sl.attn.block_sparse(q, k, v, m, {backend = "ref"})
  local o2, l2 = sl.attn.token_sparse(q, k, v, x.row_ptr, x.col, {rows_per_entry = x.rows_per_entry, backend = "ref"})
  near(sl.metric.max_abs(o1, o2), 0, 1e-6, "O")
  near(sl.metric.max_abs(l1, l2), 0, 1e-6, "L")
end)

test("masks print as a block map with their density", function()
  local m = (sl.mask.window(20) + sl.mask.sink(4)):materialize{n_q = 64, n_k = 64, bq = 8, bk = 8}
  local s = tostring(m)
  truthy(s:find("density", 1, true), "density shown")
  truthy(s:find("#", 1, true) and s:find("+", 1, true), "full and partial blocks shown")
  truthy(tostring(sl.mask.window(8) * sl.mask.causal()):find("window(w=8)", 1, true), "pattern label")
  local mh = sl.mask.strided{stride = 2, head_step = 1}:materialize{n_q = 16, n_k = 16, bq = 4, bk = 4, n_heads = 2}
  truthy(tostring(mh):find("2 heads", 1, true), "heads shown")
end)

H.done()
