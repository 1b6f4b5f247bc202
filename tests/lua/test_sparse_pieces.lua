-- test_sparse_pieces.lua — attn.block_sparse's cpu score products (issue 20,
-- session 4): the scores of a chunk run as unpacked TT products over the
-- transposed scaled q in pieces of 64·128·64 / (rows·d) keys (pieces of at
-- least 32 keys; above d = 256 the packed q·kᵀ product of the whole chunk).
-- Checked against the float64 ref backend at head dims on both sides of the
-- switch (16, 64, 128, 320), ragged query blocks (rows < bq), chunks of one
-- run and of several, empty query blocks (zero output, -inf lse); causal
-- windows, whose chunks' first and last blocks have columns no row keeps
-- (not computed: chunk_trim).
package.path = "tests/lua/?.lua;" .. package.path
local BUILD = os.getenv("BUILD") or "build"
package.cpath = BUILD .. "/?.so;" .. package.cpath
local H = require "harness"
local sl = require "sparselab"
local test = H.test

local max_diff = H.max_diff

-- a block mask: per query block, seeded random key blocks at or below the
-- diagonal (some rows empty), plus the causal diagonal on the others
local function random_mask(n, b, seed)
  math.randomseed(seed)
  local nb = (n + b - 1) // b
  local keep = {}
  for r = 1, nb do
    keep[r] = {}
    for c = 1, nb do
      -- every fifth query block keeps nothing; others their diagonal and
      -- random blocks below it
      keep[r][c] = (r % 5 ~= 4 and c <= r and (c == r or math.random() < 0.45)) and 1 or 0
    end
  end
  return sl.mask.from_blocks(sl.tensor({keep}, "u8"), {n_q = n, n_k = n, bq = b, bk = b, causal = true})
end

test("block_sparse cpu = ref at d 16, 64, 128, 320 (TT pieces and the packed product), ragged blocks, empty rows", function()
  for _, c in ipairs{{n = 333, d = 16, b = 32}, {n = 700, d = 64, b = 64}, {n = 301, d = 128, b = 64},
                     {n = 200, d = 320, b = 32}, {n = 530, d = 64, b = 16}} do
    local q = sl.randn({2, c.n, c.d}, {seed = c.n + 1})
    local k = sl.randn({2, c.n, c.d}, {seed = c.n + 2})
    local v = sl.randn({2, c.n, c.d}, {seed = c.n + 3})
    local m = random_mask(c.n, c.b, c.d)
    local o1, l1 = sl.attn.block_sparse(q, k, v, m, {backend = "cpu"})
    local o2, l2 = sl.attn.block_sparse(q, k, v, m, {backend = "ref"})
    local what = string.format("n %d d %d b %d", c.n, c.d, c.b)
    H.truthy(max_diff(o1, o2) <= 2e-5, what .. ": O within 2e-5 of ref (" .. max_diff(o1, o2) .. ")")
    H.truthy(max_diff(l1, l2) <= 2e-5, what .. ": L within 2e-5 of ref, -inf where ref has it (" .. max_diff(l1, l2) .. ")")
  end
end)

test("block_sparse cpu = ref on causal windows (columns no row keeps at a chunk's ends are skipped)", function()
  for _, c in ipairs{{n = 611, d = 64, b = 64, w = 100}, {n = 611, d = 64, b = 64, w = 30}, {n = 300, d = 32, b = 32, w = 77},
                     {n = 257, d = 128, b = 64, w = 5}, {n = 400, d = 64, b = 16, w = 200}} do
    local q = sl.randn({2, c.n, c.d}, {seed = c.w + 1})
    local k = sl.randn({2, c.n, c.d}, {seed = c.w + 2})
    local v = sl.randn({2, c.n, c.d}, {seed = c.w + 3})
    local m = sl.mask.window(c.w):materialize{n_q = c.n, n_k = c.n, bq = c.b, bk = c.b}
    local o1, l1 = sl.attn.block_sparse(q, k, v, m, {backend = "cpu"})
    local o2, l2 = sl.attn.block_sparse(q, k, v, m, {backend = "ref"})
    local what = string.format("n %d d %d b %d w %d", c.n, c.d, c.b, c.w)
    H.truthy(max_diff(o1, o2) <= 2e-5, what .. ": O within 2e-5 of ref (" .. max_diff(o1, o2) .. ")")
    H.truthy(max_diff(l1, l2) <= 2e-5, what .. ": L within 2e-5 of ref (" .. max_diff(l1, l2) .. ")")
  end
end)

test("block_sparse cpu = ref on token masks whose blocks keep only middle columns (both ends of a chunk trimmed)", function()
  -- keep (i, j): j <= i and lo <= j mod b < hi: every block partial, with
  -- columns no row keeps at both ends of every run of blocks
  for _, c in ipairs{{n = 290, d = 64, b = 64, lo = 5, hi = 40}, {n = 200, d = 32, b = 32, lo = 0, hi = 20},
                     {n = 150, d = 16, b = 16, lo = 3, hi = 16}} do
    local rows = {}
    for i = 0, c.n - 1 do
      local r = {}
      for j = 0, c.n - 1 do r[j + 1] = (j <= i and j % c.b >= c.lo and j % c.b < c.hi) and 1 or 0 end
      rows[i + 1] = r
    end
    local m = sl.mask.from_bits(sl.tensor({rows}, "u8"), c.b, c.b)
    local q = sl.randn({1, c.n, c.d}, {seed = c.hi + 1})
    local k = sl.randn({1, c.n, c.d}, {seed = c.hi + 2})
    local v = sl.randn({1, c.n, c.d}, {seed = c.hi + 3})
    local o1, l1 = sl.attn.block_sparse(q, k, v, m, {backend = "cpu"})
    local o2, l2 = sl.attn.block_sparse(q, k, v, m, {backend = "ref"})
    local what = string.format("n %d b %d keep [%d, %d)", c.n, c.b, c.lo, c.hi)
    H.truthy(max_diff(o1, o2) <= 2e-5, what .. ": O within 2e-5 of ref (" .. max_diff(o1, o2) .. ")")
    H.truthy(max_diff(l1, l2) <= 2e-5, what .. ": L within 2e-5 of ref (" .. max_diff(l1, l2) .. ")")
  end
end)

H.done()
