-- test_bench.lua — the masks `sparselab bench` times, checked by brute force
-- (not the timings: those are recorded, not tested): the random-block mask
-- executes exactly the share rho of dense causal work (to one block), keeps
-- every diagonal block with its causal bits and nothing above the diagonal,
-- draws its blocks uniformly (each row keeps about rho of its blocks) and
-- is the same for the same seed; the block-list builder keeps exactly the
-- listed blocks. Run with LUA_CPATH=build/?.so lua5.4 tests/lua/test_bench.lua
package.path = "tests/lua/?.lua;" .. package.path
local H = require "harness"
local sl = require "sparselab"
local B = require "sparselab.bench"
local test, near, eq, truthy = H.test, H.near, H.eq, H.truthy

local n, b = 512, 8  -- the diagonal alone is 2b/n of the causal work: below every rho tested
local nb = n // b
local q = sl.randn({1, n, 8}, {seed = 1})
local kv = sl.randn({1, n, 8}, {seed = 2})

-- kept[r][c] for the blocks of head 0, from the token bits.
local function kept_blocks(m)
  local bits = m:to_bits():totable()[1]
  local kept = {}
  for r = 0, nb - 1 do
    kept[r] = {}
    for c = 0, nb - 1 do
      local any = false
      for i = r * b + 1, (r + 1) * b do
        for j = c * b + 1, (c + 1) * b do
          if bits[i][j] == 1 then any = true; break end
        end
        if any then break end
      end
      kept[r][c] = any
    end
  end
  return kept, bits
end

test("random blocks: executed share = rho to one block, diagonal causal, nothing above it", function()
  local dense = sl.op_flops("attn.dense", q, kv, kv, {causal = true})
  for _, rho in ipairs{0.05, 0.1, 0.25, 0.5} do
    local m = B.block_list_mask(n, b, B.random_rows(n, b, rho, 42), true)
    local exec = sl.op_flops("attn.block_sparse", q, kv, kv, m) / dense
    truthy(math.abs(exec - rho) <= b * b / (n * (n + 1) / 2) / 2 + 1e-12,
      string.format("rho %.2f: executed share %.5f", rho, exec))
    eq(m:causal_violations(), 0, "within causal")
    local kept, bits = kept_blocks(m)
    local n_blocks = 0
    for r = 0, nb - 1 do
      for c = 0, nb - 1 do if kept[r][c] then n_blocks = n_blocks + 1 end end
      truthy(kept[r][r], "diagonal block " .. r)
      for i = r * b + 1, (r + 1) * b do
        for j = r * b + 1, (r + 1) * b do eq(bits[i][j], j <= i and 1 or 0, "causal bits of a diagonal block") end
      end
    end
    -- block areas: every kept block is b x b, so the share is a block count
    near(exec, n_blocks * b * b / (n * (n + 1) / 2), 1e-12, "executed share = kept blocks x block area")
  end
end)

test("random blocks are drawn uniformly below the diagonal and repeat with the seed", function()
  local rows = B.random_rows(n, b, 0.5, 7)
  local again = B.random_rows(n, b, 0.5, 7)
  local other = B.random_rows(n, b, 0.5, 8)
  local same_other = true
  local lower, upper = 0, 0  -- kept in the lower and upper half of the candidates by row
  for r = 1, nb - 1 do
    local l = rows[r] or {}
    eq(#l, #(again[r] or {}), "same seed, row " .. r)
    for i, c in ipairs(l) do
      eq(c, again[r][i], "same seed, same blocks")
      truthy(c >= 0 and c < r, "strictly below the diagonal")
      if i > 1 then truthy(c > l[i - 1], "sorted, unique") end
    end
    if #l ~= #(other[r] or {}) then same_other = false end
    for i, c in ipairs(l) do if not other[r] or other[r][i] ~= c then same_other = false end end
    if r >= nb // 2 then lower = lower + #l else upper = upper + #l end
  end
  truthy(not same_other, "another seed draws other blocks")
  -- rows past the middle hold about 3/4 of the candidates (rows r have r each)
  local share = lower / (lower + upper)
  local want = 0
  for r = nb // 2, nb - 1 do want = want + r end
  want = want / (nb * (nb - 1) / 2)
  truthy(math.abs(share - want) < 0.1, string.format("share of kept blocks in the lower rows %.3f ~ %.3f", share, want))
end)

test("block_list_mask keeps exactly the listed blocks; empty lists keep nothing", function()
  local rows = {[3] = {0, 2}, [7] = {5}}
  local kept = kept_blocks(B.block_list_mask(n, b, rows, false))
  for r = 0, nb - 1 do
    for c = 0, nb - 1 do
      local want = (r == 3 and (c == 0 or c == 2)) or (r == 7 and c == 5)
      eq(kept[r][c], want, string.format("block (%d, %d)", r, c))
    end
  end
  near(B.block_list_mask(n, b, {}, false):density(true), 0, 0, "empty mask")
end)

H.done()
