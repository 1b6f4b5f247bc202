-- test_vs_c.lua — the vertical-slash mask pieces moved from Lua loops to C
-- (issue 20, session 3): sl.mask.columns_in_block and sl.mask.index_overlap
-- against (a) the Lua passes they replace, kept here verbatim as the old
-- path, and (b) a brute-force count over the dense bits written here; and
-- the widened vertical_slash / sample_attention masks built through them.
-- Random column lists (seeded), ragged n, bq ≠ bk.
package.path = "tests/lua/?.lua;" .. package.path
local BUILD = os.getenv("BUILD") or "build"
package.cpath = BUILD .. "/?.so;" .. package.cpath
local H = require "harness"
local sl = require "sparselab"
local D = require "sparselab.dynamic"
local test, eq, truthy = H.test, H.eq, H.truthy

-- ---- the old Lua path (lua/sparselab/dynamic.lua before this change) ----------

local function read_all(t)
  local n, out = t:shape()[1], {}
  local step = 500000
  for s = 1, n, step do
    local part = t:narrow(1, s, math.min(step, n - s + 1)):totable()
    for i = 1, #part do out[#out + 1] = part[i] end
  end
  return out
end

local function old_overlap(blocks, idx, n_q)
  local info = blocks:info()
  local row_ptr, col_idx, part, bits = blocks:arrays()
  local rp, ci, pa = row_ptr:totable(), read_all(col_idx), read_all(part)
  if info.n_heads == 1 and type(rp[1]) == "number" then rp = {rp} end
  local irp = idx.row_ptr:totable()
  local icol = read_all(idx.col)
  local bq, bk = info.bq, info.bk
  local total = 0
  for h = 1, #irp do
    local brow, lrow = rp[math.min(h, #rp)], irp[h]
    for r = 1, #lrow - 1 do
      local rows = math.min(bq, n_q - (r - 1) * bq)
      local kept = {}
      for e = brow[r] + 1, brow[r + 1] do kept[ci[e]] = pa[e] end
      for e = lrow[r] + 1, lrow[r + 1] do
        local j = icol[e]
        local pt = kept[j // bk]
        if pt == -1 then
          total = total + rows
        elseif pt then
          local c = j % bk
          for i = 0, rows - 1 do
            if bits:get(pt + 1, i + 1, c + 1) ~= 0 then total = total + 1 end
          end
        end
      end
    end
  end
  return total
end

local function old_in_block_columns(cols, n, bq, bk)
  local row_ptr, col = {}, {}
  for h = 1, #cols do
    local per_row = {}
    for _, j in ipairs(cols[h]) do
      local stop = math.min(n, (j // bq + 1) * bq) - 1
      for i = j, stop do
        local l = per_row[i]
        if not l then l = {}; per_row[i] = l end
        l[#l + 1] = j
      end
    end
    local rp = {#col}
    for i = 0, n - 1 do
      local l = per_row[i]
      if l then for _, j in ipairs(l) do col[#col + 1] = j end end
      rp[#rp + 1] = #col
    end
    row_ptr[h] = rp
  end
  if #col == 0 then col[1] = 0 end
  local ct = sl.tensor(col, "i32")
  if row_ptr[#row_ptr][n + 1] == 0 then ct = ct:narrow(1, 1, 0) end
  local idx = {row_ptr = sl.tensor(row_ptr, "i32"), col = ct, rows_per_entry = 1, n_q = n, n_k = n,
    n_heads = #cols, n_entries = n}
  return sl.mask.from_index(idx, bq, bk)
end

-- ---- helpers -------------------------------------------------------------------

-- seeded random sorted column lists (distinct, 0-based) per head
local function random_lists(heads, n, count, seed)
  math.randomseed(seed)
  local out = {}
  for h = 1, heads do
    local seen, l = {}, {}
    local c = math.min(n, count + h * 3)
    while #l < c do
      local j = math.random(0, n - 1)
      if not seen[j] then seen[j] = true; l[#l + 1] = j end
    end
    table.sort(l)
    out[h] = l
  end
  return out
end

local function bits_of(m) return m:to_bits():totable() end

local function same_bits(a, b, what)
  local x, y = bits_of(a), bits_of(b)
  eq(#x, #y, what .. ": heads")
  for h = 1, #x do
    for i = 1, #x[h] do
      for j = 1, #x[h][i] do
        if x[h][i][j] ~= y[h][i][j] then
          error(string.format("%s: head %d, row %d, key %d: %d vs %d", what, h, i - 1, j - 1, x[h][i][j], y[h][i][j]), 2)
        end
      end
    end
  end
end

local GEOMS = {{n = 200, bq = 64, bk = 64}, {n = 257, bq = 32, bk = 64}, {n = 300, bq = 64, bk = 16},
  {n = 131, bq = 16, bk = 16}, {n = 190, bq = 48, bk = 20}}

test("columns_in_block equals the old Lua per-row lists and the rule (j listed, same query block, j <= i)", function()
  for gi, g in ipairs(GEOMS) do
    local cols = random_lists(3, g.n, 25, 10 + gi)
    local new = sl.mask.columns_in_block(D.padded(cols), {n = g.n, bq = g.bq, bk = g.bk})
    local old = old_in_block_columns(cols, g.n, g.bq, g.bk)
    same_bits(new, old, string.format("n %d bq %d bk %d", g.n, g.bq, g.bk))
    -- the rule itself, pair by pair
    local b = bits_of(new)
    for h = 1, 3 do
      local listed = {}
      for _, j in ipairs(cols[h]) do listed[j] = true end
      for i = 0, g.n - 1 do
        for j = 0, g.n - 1 do
          local want = (listed[j] and j <= i and j // g.bq == i // g.bq) and 1 or 0
          if b[h][i + 1][j + 1] ~= want then error(string.format("head %d (%d, %d): %d", h, i, j, b[h][i + 1][j + 1])) end
        end
      end
    end
    new:close(); old:close()
  end
  -- no columns: an empty mask; a u8 keep lists the same columns
  local e = sl.mask.columns_in_block(sl.tensor({{-1, -1}}, "i32"), {n = 100, bq = 32, bk = 32})
  eq(e:density(true), 0, "no columns keep nothing")
  local keep = {}
  for j = 1, 100 do keep[j] = (j % 7 == 0) and 1 or 0 end
  local ku = sl.mask.columns_in_block(sl.tensor({keep}, "u8"), {n = 100, bq = 32, bk = 32})
  local li = {}
  for j = 1, 100 do if keep[j] == 1 then li[#li + 1] = j - 1 end end
  same_bits(ku, sl.mask.columns_in_block(D.padded({li}), {n = 100, bq = 32, bk = 32}), "u8 keep = i32 list")
  H.raises(function() sl.mask.columns_in_block(sl.tensor({{5, 200}}, "i32"), {n = 100}) end, "outside")
end)

test("index_overlap equals the old Lua pass and a count over the dense bits", function()
  for gi, g in ipairs(GEOMS) do
    if g.n % 1 == 0 then
      local heads = 3
      local cols = random_lists(heads, g.n, 30, 40 + gi)
      local offs = random_lists(heads, g.n, 12, 60 + gi)
      for h = 1, heads do offs[h] = D.union(offs[h], {0, 1}) end
      local sl_mask = sl.mask.from_slashes(D.padded(offs), {n_q = g.n, n_k = g.n, bq = g.bq, bk = g.bk, widen = true})
      local lc = sl.mask.columns_in_block(D.padded(cols), {n = g.n, bq = g.bq, bk = g.bk})
      local blocks = sl_mask + lc
      local idx = D.columns_index(cols, g.n, g.n, g.bq)
      local new = sl.mask.index_overlap(blocks, idx)
      local old = old_overlap(blocks, idx, g.n)
      eq(new, old, string.format("n %d bq %d bk %d: C vs old Lua", g.n, g.bq, g.bk))
      -- brute force: every (row of entry e, listed key j) with the bit set
      local b, rp, col = bits_of(blocks), idx.row_ptr:totable(), idx.col:totable()
      local want = 0
      for h = 1, heads do
        for e = 1, #rp[h] - 1 do
          for x = rp[h][e] + 1, rp[h][e + 1] do
            local j = col[x]
            for i = (e - 1) * g.bq, math.min(g.n, e * g.bq) - 1 do
              if b[h][i + 1][j + 1] ~= 0 then want = want + 1 end
            end
          end
        end
      end
      eq(new, want, "C vs dense bits")
      truthy(new > 0, "the overlap is not trivially empty")
      -- a one-head mask is read by every list head
      local one = sl.mask.from_slashes(D.padded({offs[1]}), {n_q = g.n, n_k = g.n, bq = g.bq, bk = g.bk, widen = true})
      eq(sl.mask.index_overlap(one, idx), old_overlap(one, idx, g.n), "one mask head")
      sl_mask:close(); lc:close(); blocks:close(); one:close()
    end
  end
  local m = sl.mask.from_slashes(sl.tensor({{0}}, "i32"), {n_q = 128, n_k = 128, bq = 64, bk = 64, widen = true})
  local idx = D.columns_index({{3}}, 128, 128, 32)
  H.raises(function() sl.mask.index_overlap(m, idx) end, "geometry")
end)

-- The widened vertical-slash mask (D.vs_lines_mask) with the C pieces against
-- the same mask assembled with the old Lua pieces: equal bits and density.
local function old_vs_lines_mask(cols, offs, n, bq, bk)
  local slashes = sl.mask.from_slashes(D.padded(offs), {n_q = n, n_k = n, bq = bq, bk = bk, widen = true})
  local blocks = slashes + old_in_block_columns(cols, n, bq, bk)
  local idx = D.columns_index(cols, n, n, bq)
  local kept_cols, rp = 0, idx.row_ptr:totable()
  for h = 1, #rp do
    for e = 1, #rp[h] - 1 do kept_cols = kept_cols + math.min(bq, n - (e - 1) * bq) * (rp[h][e + 1] - rp[h][e]) end
  end
  local kb = 0
  for h = 1, blocks:info().n_heads do kb = kb + blocks:kept(h) end
  return blocks, (kb + kept_cols - old_overlap(blocks, idx, n)) / (D.causal_pairs(n, n) * #cols)
end

test("vertical_slash: widen = true selects the same executed mask through the C pieces as through the old Lua path",
  function()
  local q, k, v = sl.synthetic{heads = 4, kv_heads = 2, n = 384, d = 16, seed = 5}
  local prob = sl.problem{q = q, k = k, v = v}
  local m = sl.methods.get("vertical_slash")
  local p = sl.registry.resolve(m, {widen = true, vertical_size = 40, slash_size = 60, ["local"] = 8, bq = 32,
    bk = 64})
  local e = m.estimate(prob, p)
  local blocks, dens = old_vs_lines_mask(e.cols, e.offs, 384, 32, 64)
  same_bits(e.mask:materialize(), (function()
    local c = sl.mask.from_index(D.columns_index(e.cols, 384, 384, 32), 32, 64)
    return blocks + c
  end)(), "executed union")
  H.near(e.mask:density(), dens, 1e-12, "density")
end)

H.done()
