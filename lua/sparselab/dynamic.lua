-- sparselab.dynamic — pieces the dynamic-prefill recipes (issue 4) share:
-- selections (u8 keep tensors) to per-head index lists and back, the
-- "vertical + slash" executed mask (a block mask plus gathered column lists,
-- run by attn.vs_mixed), causal pair counts, and the stats table every
-- recipe returns. Lists here are 0-based token / block positions.
local sl = require "sparselab"

local D = {}

--- Causal pairs of one head: row r (position n_k - n_q + r) sees r + 1 + offset keys.
function D.causal_pairs(n_q, n_k)
  local off = n_k - n_q
  return n_q * off + n_q * (n_q + 1) / 2
end

--- Prefill problems only (n_q == n_k, causal): the cards define these methods there.
function D.check_prefill(id, prob)
  local n_q, n_k = prob.q:shape()[2], prob.k:shape()[2]
  if not prob.causal then sl.fail("%s: needs a causal problem (the card's estimate is causal)", id) end
  if n_q ~= n_k then sl.fail("%s: prefill only: expected n_q == n_k, found n_q = %d, n_k = %d", id, n_q, n_k) end
  return n_q
end

--- keep u8 [H, C] (or [H, 1, C]) -> {[h] = sorted 0-based list of kept
--- columns}, h = 1..H.
function D.lists(keep)
  local s = keep:shape()
  if #s == 3 and s[2] ~= 1 then error("dynamic.lists: expected [H, C] or [H, 1, C]", 2) end
  local out = {}
  for h = 1, s[1] do
    local row = keep:narrow(1, h, 1):totable()[1]
    if #s == 3 then row = row[1] end
    local l = {}
    for j = 1, s[#s] do if row[j] ~= 0 then l[#l + 1] = j - 1 end end
    out[h] = l
  end
  return out
end

--- Per-head lists -> i32 [H, max(#list, 1)] padded with -1 (what the mask
--- builders take: -1 entries are skipped).
function D.padded(lists)
  local width = 1
  for _, l in ipairs(lists) do if #l > width then width = #l end end
  local rows = {}
  for h, l in ipairs(lists) do
    local r = {}
    for i = 1, width do r[i] = l[i] or -1 end
    rows[h] = r
  end
  return sl.tensor(rows, "i32")
end

--- Sorted union of a list with forced entries (both 0-based, unique).
function D.union(a, b)
  local seen, out = {}, {}
  for _, x in ipairs(a) do if not seen[x] then seen[x] = true; out[#out + 1] = x end end
  for _, x in ipairs(b) do if not seen[x] then seen[x] = true; out[#out + 1] = x end end
  table.sort(out)
  return out
end

--- Sets x[h, j] = -inf for j in [0, count) of every head (entries a
--- selector must not count: forced keeps are added afterwards).
function D.knock_out(x, count)
  local s = x:shape()
  for h = 1, s[1] do
    for j = 1, math.min(count, s[2]) do x:set(h, j, -math.huge) end
  end
end

--- Number of pairs of the token-exact "columns ∪ diagonals" mask of one
--- head (n_q == n_k == n, causal): Σ_cols (n - j) + Σ_offsets (n - o) minus
--- the pairs on both (column j, offset o with j + o < n).
function D.vs_pairs(n, cols, offsets)
  local total = 0
  for _, j in ipairs(cols) do total = total + (n - j) end
  for _, o in ipairs(offsets) do total = total + (n - o) end
  -- overlap: for each column j, the offsets o <= n - 1 - j; columns
  -- ascending make that bound fall, so one pointer walks the sorted offsets down
  local k = #offsets
  for _, j in ipairs(cols) do
    while k > 0 and offsets[k] > n - 1 - j do k = k - 1 end
    total = total - k
  end
  return total
end

-- ---- the vertical + slash executed mask ---------------------------------------------

local VS = {}
VS.__index = VS

--- Executed density: kept pairs of the union of the block part and the
--- gathered column pairs (every row of an entry reads its list), over
--- causal pairs, averaged over heads. (attn.vs_mixed's FLOP count charges a
--- column pair also in the block part twice: the kernel computes both.)
function VS:density() return self._density end
function VS:kept() return self._kept end
function VS:info() return self.blocks:info() end
function VS:arrays() return self.blocks:arrays() end
--- The exact union as one block mask (token bits): small problems only.
function VS:materialize()
  local info = self.blocks:info()
  local cols = sl.mask.from_index(self.index, info.bq, info.bk)
  local m = self.blocks + cols
  cols:close()
  return m
end
function VS:close()
  if self.blocks then self.blocks:close() end
  for _, t in ipairs{self.index and self.index.row_ptr, self.index and self.index.col} do
    if t then t:close() end
  end
end
VS.__close = VS.close
VS.__tostring = function(self)
  return string.format("vertical-slash mask (%d heads, block part + column lists), density %.4g",
    self.blocks:info().n_heads, self._density)
end

--- Column lists per head (sorted 0-based) -> strict index lists for
--- attn.vs_mixed (an entry of bq rows lists the columns up to its first
--- row; the block part must hold the diagonal tile for the rest).
function D.columns_index(cols, n_q, n_k, bq)
  return sl.mask.index_from_columns(D.padded(cols), {n_q = n_q, n_k = n_k, rows_per_entry = bq, causal = true,
    strict = true})
end

-- The column pairs (entry rows × listed key) that the block part already
-- keeps are counted in C (sl.mask.index_overlap: a listed key j of entry r
-- counts every row of r when its key block is a full kept block, the rows of
-- its token bits when partial); it was a Lua pass over the lists before
-- (issue 20, session 3; tests/lua/test_vs_c.lua keeps that pass as the
-- reference).

--- A VS mask from a block part (heads H) and column lists per head. Its
--- density counts the union of the two parts exactly (a pair on both once);
--- `kept`, when the caller knows the union's size analytically, skips the
--- overlap count (a Lua pass over the lists).
function D.vs_mask(blocks, cols, n_q, n_k, kept)
  local info = blocks:info()
  local idx = D.columns_index(cols, n_q, n_k, info.bq)
  local rp = idx.row_ptr:totable()
  local kept_cols = 0
  for h = 1, #rp do
    local r = rp[h]
    for e = 1, #r - 1 do
      local rows = math.min(info.bq, n_q - (e - 1) * info.bq)
      kept_cols = kept_cols + rows * (r[e + 1] - r[e])
    end
  end
  local kept_blocks = 0
  for h = 1, info.n_heads do kept_blocks = kept_blocks + blocks:kept(h) end
  kept = kept or (kept_blocks + kept_cols - sl.mask.index_overlap(blocks, idx))
  return setmetatable({blocks = blocks, index = idx, _kept = kept,
    _density = kept / (D.causal_pairs(n_q, n_k) * math.max(info.n_heads, #cols))}, VS)
end

--- The pairs (i, j) with j a listed column inside row i's own query block
--- (block start <= j <= i) that the strict gathered lists leave out, as a
--- block mask with token bits — nil when every head's offsets hold 0 ..
--- bq-1 (the diagonals then cover them). Built from per-row lists (only
--- in-block columns: about #cols · bq / 2 pairs per head), never through
--- a full vertical pattern (every tile of it would be partial).
function D.in_block_columns(cols, offs, n, bq, bk)
  local covered = true
  for h = 1, #cols do
    local have = 0
    for _, o in ipairs(offs[h]) do if o < bq then have = have + 1 end end
    if have < math.min(bq, n) then covered = false end
  end
  if covered then return nil end
  -- the per-row lists are built in C (issue 20, session 3; the Lua loop it
  -- replaces is kept as the reference in tests/lua/test_vs_c.lua)
  return sl.mask.columns_in_block(D.padded(cols), {n = n, bq = bq, bk = bk})
end

-- ---- exact lines: attn.lines (issue 19) -------------------------------------------

--- The executed mask of exact "columns ∪ diagonals" lines: the lists
--- themselves (i32 [H, width] padded with -1), run by attn.lines, which
--- reads each row's keys by offset — memory O(n · lines), never a tile of
--- token bits per diagonal (a partial block per slash and query block made
--- this quadratic in n before). density() and kept() count the lines'
--- pairs analytically; materialize() builds the union as one block mask
--- (small problems: tests).
local Lines = {}
Lines.__index = Lines
function Lines:density() return self._density end
function Lines:kept() return self._kept end
function Lines:materialize()
  local o = {n_q = self.n, n_k = self.n, bq = self.bq, bk = self.bk}
  local v = sl.mask.vertical{cols = self.col_lists}:materialize{n_q = self.n, n_k = self.n, bq = self.bq,
    bk = self.bk, n_heads = #self.col_lists}
  local s = sl.mask.from_slashes(self.offs, {n_q = o.n_q, n_k = o.n_k, bq = o.bq, bk = o.bk, widen = false})
  local m = v + s
  v:close(); s:close()
  return m
end
function Lines:close()
  for _, t in ipairs{self.cols, self.offs} do t:close() end
end
Lines.__close = Lines.close
Lines.__tostring = function(self)
  return string.format("lines mask (%d heads, columns + diagonals), density %.4g", #self.col_lists, self._density)
end

--- The executed mask of "columns ∪ diagonals" lines per head (sorted
--- 0-based lists; n_q == n_k == n). Without widen: the exact lines, a
--- lines mask run by attn.lines (executed = semantic, counted
--- analytically). With widen (MInference's kernel): slashes as 64-key
--- tiles of a block mask, columns inside each query block's own rows as
--- token bits of the diagonal tile, the other columns as strict gathered
--- lists, run by attn.vs_mixed.
function D.lines_mask(cols, offs, n, bq, bk, widen)
  local sem = 0
  for h = 1, #cols do sem = sem + D.vs_pairs(n, cols[h], offs[h]) end
  local sem_density = sem / (D.causal_pairs(n, n) * #cols)
  if not widen then
    return setmetatable({cols = D.padded(cols), offs = D.padded(offs), col_lists = cols, n = n, bq = bq, bk = bk,
      _kept = sem, _density = sem_density}, Lines), sem_density
  end
  return D.vs_lines_mask(cols, offs, n, bq, bk, widen), sem_density
end

--- The lines as a block mask plus gathered columns (attn.vs_mixed): the
--- executor of widen = true; exact diagonals (widen false) cost a partial
--- tile per slash and query block, memory quadratic in n.
function D.vs_lines_mask(cols, offs, n, bq, bk, widen)
  local slashes = sl.mask.from_slashes(D.padded(offs), {n_q = n, n_k = n, bq = bq, bk = bk, widen = widen})
  local blocks = slashes
  local lc = D.in_block_columns(cols, offs, n, bq, bk)
  if lc then
    blocks = slashes + lc
    slashes:close()
    lc:close()
  end
  local sem
  if not widen then
    sem = 0
    for h = 1, #cols do sem = sem + D.vs_pairs(n, cols[h], offs[h]) end
  end
  return D.vs_mask(blocks, cols, n, n, sem)
end

--- A mask-like object for executors that are not one block mask (a
--- permuted or continued pass): density known, materialize() for small
--- problems (tests), close().
local Light = {}
Light.__index = Light
function Light:density() return self._density end
function Light:materialize() return self._materialize() end
function Light:close() if self._close then self._close() end end
Light.__close = Light.close
Light.__tostring = function(self) return string.format("%s mask, density %.4g", self.kind, self._density) end
function D.light_mask(kind, density, materialize, close)
  return setmetatable({kind = kind, _density = density, _materialize = materialize, _close = close}, Light)
end

--- attn.vs_mixed over a VS mask: o, lse, flops.
function D.vs_run(prob, m)
  local args = {backend = prob.backend}
  local o, lse = sl.attn.vs_mixed(prob.q, prob.k, prob.v, m.blocks, m.index.row_ptr, m.index.col, args)
  return o, lse, sl.op_flops("attn.vs_mixed", prob.q, prob.k, prob.v, m.blocks, m.index.row_ptr, m.index.col, args)
end

--- attn.lines over a lines mask: o, lse, flops.
function D.lines_run(prob, m)
  local args = {backend = prob.backend}
  local o, lse = sl.attn.lines(prob.q, prob.k, prob.v, m.cols, m.offs, args)
  return o, lse, sl.op_flops("attn.lines", prob.q, prob.k, prob.v, m.cols, m.offs, args)
end

--- attn.block_sparse over a block mask: o, lse, flops.
function D.block_run(prob, m)
  local args = {backend = prob.backend}
  local o, lse = sl.attn.block_sparse(prob.q, prob.k, prob.v, m, args)
  return o, lse, sl.op_flops("attn.block_sparse", prob.q, prob.k, prob.v, m, args)
end

--- Density of a block mask, VS mask or light mask (executed).
function D.density(m)
  if getmetatable(m) == VS or getmetatable(m) == Light or getmetatable(m) == Lines then return m:density() end
  return m:density(true)
end

--- Wall time of f() in ms and its results.
function D.timed(f)
  local t0 = sl.time()
  local a, b, c = f()
  return (sl.time() - t0) * 1e3, a, b, c
end

--- The run function of a recipe whose estimate(prob, p) returns
--- {mask =, semantic_density = (optional), flops = estimator FLOPs,
--- extra = {stats}, execute = (optional) fn() -> o, lse, flops} and whose
--- executor is execute or else chosen by the mask's kind.
function D.runner(estimate)
  return function(prob, p)
    local est_ms, e = D.timed(function() return estimate(prob, p) end)
    local exe_ms, o, lse, flops = D.timed(function()
      if e.execute then return e.execute() end
      if getmetatable(e.mask) == VS then return D.vs_run(prob, e.mask) end
      if getmetatable(e.mask) == Lines then return D.lines_run(prob, e.mask) end
      return D.block_run(prob, e.mask)
    end)
    local stats = {flops = flops, estimator_flops = e.flops or 0, density = D.density(e.mask),
      estimate_ms = est_ms, execute_ms = exe_ms}
    if e.semantic_density then stats.density_semantic = e.semantic_density end
    for k, v in pairs(e.extra or {}) do stats[k] = v end
    return {o = o, lse = lse, mask = e.mask, semantic_mask = e.semantic_mask, stats = stats}
  end
end

D.VS = VS
function D.is_vs(m) return getmetatable(m) == VS end
D.Lines = Lines
function D.is_lines(m) return getmetatable(m) == Lines end

return D
