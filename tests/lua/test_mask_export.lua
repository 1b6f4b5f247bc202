-- test_mask_export.lua — sl.mask.save (issue 18): the FlexAttention BlockMask layout, checked
-- against the dense bits of the same file read back block by block (independent of the mask's
-- CSR arrays), the kv_indices order of BlockMask's dense-to-ordered conversion, and the bits
-- against the pattern's own rule.
package.path = "tests/lua/?.lua;" .. package.path
local H = require "harness"
local sl = require "sparselab"
local test, eq, truthy, raises = H.test, H.eq, H.truthy, H.raises

local path = os.tmpname() .. ".safetensors"

test("BlockMask arrays agree with the bits; partial and full split; order", function()
  local n, bq, bk, w = 96, 32, 16, 20
  -- two heads: a window and a window with sinks (per-head assignment)
  local m = sl.mask.assign{sl.mask.window(w), sl.mask.sink(3) + sl.mask.window(w)}:materialize{n_q = n, bq = bq, bk = bk}
  sl.mask.save(m, path)
  local t = sl.load(path)
  local nqb, nkb = n // bq, n // bk
  eq(table.concat(t.kv_indices:shape(), ","), "1,2," .. nqb .. "," .. nkb, "kv_indices shape")
  local bs, sq = t.block_size:totable(), t.seq_lengths:totable()
  eq(bs[1], bq, "block_size q"); eq(bs[2], bk, "block_size kv")
  eq(sq[1], n, "seq_lengths q"); eq(sq[2], n, "seq_lengths kv")
  eq(t.kv_indices:dtype(), "i32", "i32 indices")
  local bits = t.bits:totable()
  -- the bits against the rule of each head, computed here
  for h = 1, 2 do
    for i = 0, n - 1 do
      for j = 0, n - 1 do
        local want = (i - j >= 0 and i - j < w) or (h == 2 and j < 3 and j <= i)
        if (bits[h][i + 1][j + 1] == 1) ~= want then error(string.format("bits h%d (%d,%d)", h, i, j)) end
      end
    end
  end
  local kvn, kvi = t.kv_num_blocks:totable()[1], t.kv_indices:totable()[1]
  local fn, fi = t.full_kv_num_blocks:totable()[1], t.full_kv_indices:totable()[1]
  for h = 1, 2 do
    for r = 1, nqb do
      -- each kv block classified from the bits: none, all, or some of its pairs kept
      local want_p, want_f = {}, {}
      for c = 1, nkb do
        local ones = 0
        for i = (r - 1) * bq + 1, r * bq do
          for j = (c - 1) * bk + 1, c * bk do ones = ones + bits[h][i][j] end
        end
        if ones == bq * bk then want_f[#want_f + 1] = c - 1 elseif ones > 0 then want_p[#want_p + 1] = c - 1 end
      end
      eq(kvn[h][r], #want_p, string.format("kv_num_blocks h%d r%d", h, r))
      eq(fn[h][r], #want_f, string.format("full_kv_num_blocks h%d r%d", h, r))
      -- order: the listed blocks ascending, then every other block ascending
      local function check(row, listed, what)
        local seen = {}
        for i, c in ipairs(listed) do eq(row[i], c, what .. " listed " .. i) end
        for _, c in ipairs(row) do truthy(not seen[c], what .. " repeats " .. c); seen[c] = true end
        for i = #listed + 2, #row do truthy(row[i] > row[i - 1], what .. " rest ascending") end
        eq(#row, nkb, what .. " length")
      end
      check(kvi[h][r], want_p, "kv_indices")
      check(fi[h][r], want_f, "full_kv_indices")
    end
  end
end)

test("without bits; bad names", function()
  local m = sl.mask.window(16):materialize{n_q = 64, bq = 16, bk = 16}
  sl.mask.save(m, path, {bits = false})
  eq(sl.load(path).bits, nil, "no bits")
  raises(function() sl.mask.save(m, "/tmp/x.npy") end, "ending in .safetensors", "name")
  raises(function() sl.mask.save(m, path, {dense = true}) end, "unknown option 'dense'", "option")
  raises(function() sl.mask.save(42, path) end, "expected a block mask", "not a mask")
end)

-- An independent reader (tests/tools/flex_blockmask.py: numpy only) rebuilds the dense mask
-- from the BlockMask arrays by FlexAttention's documented semantics (full blocks: every pair;
-- partial blocks: mask_mod; others: none), with mask_mod = the stored bits and with mask_mod =
-- the pattern's rule written again in Python. The check against torch's own BlockMask is
-- pending: Debian's python3-torch (1.13) has no flex_attention and nothing else is installable.
local function flex_check(file, rules)
  local cmd = "env -u LD_PRELOAD /usr/bin/python3 tests/tools/flex_blockmask.py " .. file
  for _, r in ipairs(rules or {}) do cmd = cmd .. " " .. r end
  local pipe = assert(io.popen(cmd .. " 2>&1"))
  local text = pipe:read("a")
  local ok = pipe:close()
  return ok, text
end

test("FlexAttention BlockMask semantics: an independent numpy reader rebuilds the mask", function()
  local cases = {
    {sl.mask.window(20):materialize{n_q = 96, bq = 32, bk = 16}, {"window:20"}},
    {sl.mask.assign{sl.mask.window(20), sl.mask.sink(3) + sl.mask.window(20)}:materialize{n_q = 96, bq = 32, bk = 16},
      {"window:20", "window:20,sink:3"}},
    {sl.mask.window(10):materialize{n_q = 100, bq = 32, bk = 16}, {"window:10"}}, -- ragged last blocks
    {sl.mask.window(64):materialize{n_q = 128, bq = 16, bk = 16}, {"window:64"}}, -- full blocks inside
  }
  for i, c in ipairs(cases) do
    sl.mask.save(c[1], path)
    local ok, text = flex_check(path, c[2])
    truthy(ok and text:find("^ok "), "case " .. i .. ": " .. text)
    if i == 4 then truthy(not text:find("full=0 ", 1, true), "case 4 has full blocks: " .. text) end
    -- the same file against a wider rule must fail (pairs in blocks the lists skip): the check has
    -- teeth; with full blocks, a narrower rule fails too (a full block keeps pairs the rule drops)
    local wider, narrower = {}, {}
    for j, r in ipairs(c[2]) do
      wider[j] = r:gsub("window:(%d+)", function(w) return "window:" .. (tonumber(w) + 32) end)
      narrower[j] = r:gsub("window:(%d+)", function(w) return "window:" .. (tonumber(w) - 1) end)
    end
    local okb, textb = flex_check(path, wider)
    truthy(not okb and textb:find("differs", 1, true), "case " .. i .. " wider rule fails: " .. textb)
    if i == 4 then
      okb, textb = flex_check(path, narrower)
      truthy(not okb and textb:find("differs", 1, true), "case 4 narrower rule fails: " .. textb)
    end
  end
  -- a dynamic method's block-level mask (xattention on seeded random Q/K/V): bits only
  local q, k, v = sl.randn({2, 128, 16}, {seed = 181}), sl.randn({2, 128, 16}, {seed = 182}), sl.randn({2, 128, 16}, {seed = 183})
  local xa = sl.methods.get("xattention")
  local r = xa.run(sl.problem{q = q, k = k, v = v}, sl.registry.resolve(xa, {block = 16, threshold = 0.5}))
  sl.mask.save(r.mask, path)
  local ok, text = flex_check(path)
  truthy(ok and text:find("^ok H=2"), "xattention mask: " .. text)
end)

os.remove(path)
H.done()
