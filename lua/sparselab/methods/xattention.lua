-- XAttention: Block Sparse Attention with Antidiagonal Scoring — card: xattention.
-- Card steps implemented:
--   1-2. stride-S super-tokens (keys in order, queries in "inverse" order),
--        so q̃_i·k̃_j is the antidiagonal sum of the S × S tile; W = row
--        softmax of q̃ k̃ᵀ / (sqrt(d)·S·norm) over the visible super-tokens
--        (score.antidiag, one C op: ref, cpu, cuda);
--   3. block scores A[r, c] = Σ W over the (B/S × B/S) super-token tile;
--   4. per query block row (find_blocks_chunked; select.row_cover, one C
--        op: ref, cpu, cuda): key block 0 and the
--      diagonal block always; the other visible blocks by A descending
--      (ties: lower index first), added while the cumulative sum (forced
--      mass first) is below τ · row mass, the crossing block included;
--      nothing right of the diagonal;
--   5. per-head τ (param thresholds, one per query head);
--   6. executor attn.block_sparse (token causal inside the diagonal tile).
-- Not implemented: the chunked processing and its padding (the op never
-- materialises more than one tile row per work item; padding rows are
-- treated as zero vectors, which is what the reference's zero padding
-- computes for the last partial super-token); the Triton fused path.
-- Option reference = true: mit-han-lab/x-attention's selection as its code
-- computes it (xattn/src/utils.py find_blocks_chunked, in the ordinary
-- single-chunk prefill: current_index 0, chunk_num = block_num = n_qb; then
-- Xattention_prefill's tril and forced diagonal), which is not the card's
-- rule: (a) the diagonal assignment mask[..., 0:chunk_num] = eye overwrites
-- the forced first block, so only the diagonal is forced; (b) the running
-- sum is laid out for two forced blocks (the sums before each position are
-- of [0, F, s_0, s_1, ...], F the diagonal's mass, s_i the other blocks
-- descending), so the largest other block s_0 is always kept and s_j
-- (j >= 1) is kept while F + s_0 + ... + s_{j-2} < τ · row mass — one
-- block later than the card's rule; (c) excluded positions are sent to index 0, so
-- block 0 comes back whenever any position is excluded; blocks right of the
-- diagonal are then cleared and the diagonal set. Float64 as the reference
-- (input_tensor.to(float)); ties among equal scores lower index first (torch
-- sort order is unspecified there). Default: the card's rule (below).
-- Unknowns chosen: τ >= 1 keeps every causal block (the card's check);
-- norm = 1; GQA: each query head scores against its KV head (the reference
-- repeats K); a ragged last block's row mass is its super-row count.
local sl = require "sparselab"
local D = require "sparselab.dynamic"

local ID = "xattention"

-- keep rows for one head: A (rows of block scores), τ, n_qb, n_kb, visible(r) -> last visible key block
local function select_rows(A, tau, nqb, nkb, last_vis)
  local keep = {}
  for r = 1, nqb do
    local row, lim = {}, last_vis(r - 1)
    for c = 1, nkb do row[c] = 0 end
    if tau >= 1 then
      for c = 1, lim + 1 do row[c] = 1 end
    else
      local a = A[r]
      local total = 0
      for c = 1, lim + 1 do total = total + a[c] end
      row[1], row[lim + 1] = 1, 1
      local cum = a[1] + (lim > 0 and a[lim + 1] or 0)
      local order = {}
      for c = 2, lim do order[#order + 1] = c end
      table.sort(order, function(x, y)
        if a[x] ~= a[y] then return a[x] > a[y] end
        return x < y
      end)
      for _, c in ipairs(order) do
        if cum >= tau * total then break end
        row[c] = 1
        cum = cum + a[c]
      end
    end
    keep[r] = row
  end
  return keep
end

-- The reference's rows (find_blocks_chunked, single chunk, causal; see the header): A rows, τ, n_qb = n_kb.
local function select_rows_reference(A, tau, nqb, nkb)
  local keep = {}
  for r = 1, nqb do
    local a = A[r]
    local x = {}
    for c = 1, nkb do x[c] = c <= r and a[c] or 0 end -- blocks right of the diagonal score 0 (causal softmax)
    local total = 0
    for c = 1, nkb do total = total + x[c] end
    local req = total * tau
    -- forced: the diagonal only (eye over columns 0..chunk_num-1 overwrote column 0)
    local forced = r
    local others = {}
    for c = 1, nkb do if c ~= forced then others[#others + 1] = c end end
    table.sort(others, function(u, w)
      if x[u] ~= x[w] then return x[u] > x[w] end
      return u < w
    end)
    -- index: the forced block first, then the others by score; running sum [0, F, s_0, s_1, ..., s_{B-3}]
    local index = {forced}
    for _, c in ipairs(others) do index[#index + 1] = c end
    local sv = {0, x[forced]}
    for i = 1, nkb - 2 do sv[#sv + 1] = x[others[i]] end
    local row = {}
    for c = 1, nkb do row[c] = 0 end
    local cum = 0
    for t = 1, nkb do
      -- cumulative_sum_without_self[t] = sum of sv[1 .. t-1]
      if t > 1 then cum = cum + sv[t - 1] end
      if cum < req then row[index[t]] = 1 else row[1] = 1 end -- excluded positions go to index 0
    end
    for c = r + 1, nkb do row[c] = 0 end -- Xattention_prefill: tril
    row[r] = 1                            -- ... and the diagonal
    keep[r] = row
  end
  return keep
end

-- opts.lua_rows: the per-row selection in Lua (select_rows / select_rows_reference above, the path before
-- select.row_cover; tests/lua/test_estimators_c.lua compares both)
local function estimate(prob, p, opts)
  local lua_rows = opts and opts.lua_rows
  local n = D.check_prefill(ID, prob)
  local hq = prob.q:shape()[1]
  if p.block % p.stride ~= 0 then sl.fail("%s: block %d is not a multiple of stride %d", ID, p.block, p.stride) end
  local args = {block = p.block, stride = p.stride, causal = true, backend = prob.backend}
  if p.norm ~= 1 then args.scale = 1 / (math.sqrt(prob.q:shape()[3]) * p.stride * p.norm) end
  local A = sl.score.antidiag(prob.q, prob.k, args)
  local flops = sl.op_flops("score.antidiag", prob.q, prob.k, args)
  local s = A:shape()
  local nqb, nkb = s[2], s[3]
  -- key block c is visible from query block r when its first key <= r's last row
  local function last_vis(r) return math.min(nkb - 1, (math.min((r + 1) * p.block, n) - 1) // p.block) end
  local taus = p.thresholds
  if taus ~= nil and (type(taus) ~= "table" or #taus ~= hq) then
    sl.fail("%s: thresholds must list one τ per query head (%d), found %s", ID, hq,
      type(taus) == "table" and tostring(#taus) or type(taus))
  end
  if p.reference and nqb ~= nkb then sl.fail("%s: reference = true is the single-chunk prefill (n_q = n_k)", ID) end
  local keep_t
  if lua_rows then
    local keep = {}
    for h = 1, hq do
      local rows = A:narrow(1, h, 1):totable()[1]
      if p.reference then
        keep[h] = select_rows_reference(rows, taus and taus[h] or p.threshold, nqb, nkb)
      else
        keep[h] = select_rows(rows, taus and taus[h] or p.threshold, nqb, nkb, last_vis)
      end
    end
    keep_t = sl.tensor(keep, "u8")
  else
    -- the same rules in C (select.row_cover, issue 20 session 4b: the Lua rows were 88 of 562 ms CPU at 64K);
    -- its visible extent r + (C - R) equals last_vis here (n_q = n_k, so nqb = nkb). τ is a float64 param:
    -- per-head τ runs one call per head (an f64 tensor input would be rounded to f32)
    local mode = p.reference and 1 or 0
    if taus then
      -- (the heads' keeps joined through a Lua table: sl.cat takes f32 only and u8 does not convert; this
      -- option alone pays the nb² table)
      local keep = {}
      for h = 1, hq do
        local kh = sl.select.row_cover(A:narrow(1, h, 1), {tau = taus[h], mode = mode, backend = prob.backend})
        keep[h] = kh:totable()[1]
        kh:close()
      end
      keep_t = sl.tensor(keep, "u8")
    else
      keep_t = sl.select.row_cover(A, {tau = p.threshold, mode = mode, backend = prob.backend})
    end
  end
  flops = flops + A:numel() * math.log(math.max(nkb, 2), 2)
  local m = sl.mask.from_blocks(keep_t, {n_q = n, n_k = n, bq = p.block, bk = p.block, causal = true})
  return {mask = m, flops = flops, scores = A}
end

return {
  id = ID,
  card = ID,
  title = "XAttention: Block Sparse Attention with Antidiagonal Scoring",
  family = "block-estimate",
  phase = "prefill",
  causal_only = true,
  summary = "Antidiagonal sums of stride-S tiles as a cheap block estimate; per query block the fewest blocks " ..
    "(first and diagonal forced) holding τ of the estimated mass.",
  knob = "threshold",
  knob_direction = 1,
  params = {
    threshold = {default = 0.9, min = 0, max = 2, doc = "τ: share of the estimated row mass kept (>= 1: every causal block)"},
    stride = {default = 8, min = 1, int = true, doc = "S: tokens per super-token (8 or 16)"},
    block = {default = 128, min = 1, max = 4096, int = true, doc = "B: block size of the estimate and the executor"},
    norm = {default = 1, min = 1e-6, doc = "extra divisor of the softmax temperature"},
    thresholds = {default = nil, doc = "per query head τ (a list of Hq numbers), overriding threshold"},
    reference = {default = false, doc = "true: the selection of mit-han-lab/x-attention's find_blocks_chunked " ..
      "(single-chunk prefill) instead of the card's rule; see the header"},
  },
  ops = {"score.antidiag", "select.row_cover", "attn.block_sparse"},
  checks = {"τ >= 1 equals dense", "antidiagonal identity (C suite)", "block 0 and diagonal in every row",
    "selected estimated mass >= τ · row mass", "monotone in τ", "independent float64 estimate on a tiny input"},
  mask = function(prob, p) return estimate(prob, p).mask end,
  estimate = estimate,
  run = D.runner(estimate),
}
