-- HiP Attention: Sparse Sub-Quadratic Attention with Hierarchical Attention
-- Pruning (Lee et al., ICLR 2025) — card: hip_attention (the v1.1 binary tree,
-- not v1.2 InfiniteHiP).
-- Card steps implemented, per head and query block of bq rows:
--   1. the eligible key blocks [0, T) (T: blocks before the sliding window of
--      the block's first row; the window blocks are attended separately, never
--      in the tree, so nothing counts twice) split into K_b = budget / bk equal
--      groups;
--   2. repeat while a group holds more than one block: split every kept group
--      into halves, score each half by its representative — its first key
--      block — as the max over the block's queries and the representative's
--      keys of the scaled q·k (raw dot products, no softmax), keep the top K_b
--      halves (ties: the earlier half);
--   3. the K_b surviving blocks, plus the window blocks (the query block's
--      own block and the `window` tokens before it), causal, one softmax:
--      attn.block_sparse over the union (step 4).
--   5. decode (session 3c): per decode step the step's query row is its own
--      query block (bq = 1) and select.hip_tree runs over the whole cache
--      (tree range: the blocks before the window of that row); the kept
--      blocks (tree + window) are saved in the layer's decode state
--      (ls.hip = {step, n, blocks}) and reused until `refresh` steps have
--      passed (tree searches at decode steps 0, r, 2r, ... counted from 0:
--      v1.2's HiPMaskRefreshState, decode_index % interval == 0, one stage
--      here). Between refreshes a step attends the saved blocks plus the
--      current window blocks (so the tokens appended since, and the saved
--      window, stay in; budget >= cache stays dense), one softmax.
--      Default refresh 8: v1.2's mask_refresh_interval [64, 16, 8] has 8 for
--      its finest stage; the single v1.1 tree is refreshed as that stage.
--   rep = "minmax" (option, session 3c): the v1.1 draft's block_size_k_group
--      > 1 representative. The draft reduces each group of keys to its
--      channel-wise min and max vectors and scores a node as max(q.k_min,
--      q.k_max) over the block's queries (masking_iteration_draft_numba_kernel,
--      the block_size_k_group > 1 branch). Here the group is the bk-token key
--      block (the draft's block_size_k = 1 with groups of 8 is read as bk = 8,
--      as for rep = "first"); min/max from page.meta, the scores from
--      score.lowbit at 16 bits, the tree in Lua over that dense map (cost
--      ~ n.C, not the C tree's visited nodes; estimator_flops counts it).
--      qstride must be 1 with it.
-- Not here: the Self-Extend RoPE re-positioning, sink tokens of later
--   versions, sifters (the draft's stage-0 offset; one sifter = offset 0
--   here), v1.2's multi-stage chunk pruning (another card).
-- Estimator (session 3): select.hip_tree, one C op (ref, cpu, CUDA) that
--   scores only the representatives of the nodes the tree visits: each new
--   half's first key block against the block's query rows, when the half is
--   made — about (2·log2(T/K_b) + 1)·K_b block scores per query block, so the
--   estimate grows ~ n·K_b·log n, not n² (experiments/hip_cost.lua measures
--   it against attn.dense at 4K/8K/16K). estimator_flops counts exactly the
--   scores it made. The old emulation (score.lowbit's dense tile-max map,
--   then the tree in Lua) stays as estimator = "lowbit", for comparison only:
--   both keep the same blocks (tested).
--   Memory (issue 19, session 4): the tree runs on row blocks of query
--   blocks (about 4 MiB of keep each) and each block's keep becomes i32
--   lists of at most K_b + (bq + window)/bk + 2 blocks per query block
--   (sl.mask.block_lists), which sl.mask.from_blocks reads: O(n) memory,
--   not the whole u8 keep [Hq, n/bq, n/bk] (n²/256 bytes per head at the
--   defaults). The same mask (tested against the one-call form). The
--   comparison paths (estimator = "lowbit", rep = "minmax", score-blind)
--   still hold a dense block map in Lua: options, not the default.
-- Reference, read this session: DeepAuto-AI/hip-attention
--   src/hip_attn/v1_1/attention2_draft.py, masking_iteration_draft_numba_kernel.
--   Matched: groups start at int(BSRC/K_b · i); a group splits with the left
--   half holding floor(size/2) blocks; a half's score is the max of raw q·k
--   over its first block's keys and the block's queries (qstride = 2 reads
--   the draft's q[1::2]; default 1 reads every row); the top K_b halves by
--   score survive each level. Divergences: ties go to the earlier half (the
--   draft's argsort(-scores) leaves them to numpy's quicksort); the tree range
--   ends `window` tokens before the block's FIRST row (the draft slices keys
--   up to the block's last row, then drops sliding_window_size), so the
--   window blocks here never overlap the tree; scores carry the softmax scale
--   (order-preserving).
-- Defaults: mask_k 512, block_size_q 32; the draft's block_size_k = 1 with
--   groups of 8 keys is read here as bk = 8-token key blocks (the
--   representative); window 128.
-- Budget: `budget` tokens (K_b = ceil(budget / bk) blocks); budget >= n
--   keeps every block = dense causal.
local sl = require "sparselab"
local E = require "sparselab.blockest"

local function tree(scores, T, Kb)
  -- scores[c] (1-based block c) for c = 1..T; returns the kept 1-based blocks
  if T <= Kb then
    local all = {}
    for c = 1, T do all[c] = c end
    return all, 0
  end
  local groups, evals = {}, 0
  for g = 0, Kb - 1 do
    local a, b = (g * T) // Kb + 1, ((g + 1) * T) // Kb
    if b >= a then groups[#groups + 1] = {a, b} end
  end
  while true do
    local big = false
    for _, g in ipairs(groups) do if g[2] > g[1] then big = true; break end end
    if not big then break end
    local halves = {}
    for _, g in ipairs(groups) do
      if g[2] > g[1] then
        local mid = g[1] + (g[2] - g[1] + 1) // 2 - 1 -- the draft's split: left floor(size / 2)
        halves[#halves + 1] = {g[1], mid}
        halves[#halves + 1] = {mid + 1, g[2]}
      else
        halves[#halves + 1] = g
      end
    end
    for _, hv in ipairs(halves) do hv.s = scores[hv[1]]; evals = evals + 1 end
    table.sort(halves, function(x, y)
      if x.s ~= y.s then return x.s > y.s end
      return x[1] < y[1]
    end)
    groups = {}
    for i = 1, math.min(Kb, #halves) do groups[i] = halves[i] end
  end
  local out = {}
  for i, g in ipairs(groups) do out[i] = g[1] end
  table.sort(out)
  return out, evals
end

-- The draft's grouped representative (rep = "minmax"; the v1.1 draft's
-- block_size_k_group > 1): per key block of bk tokens the channel-wise
-- minimum and maximum keys (page.meta with page = bk), and a block's score =
-- the max over the query block's rows of max(q.k_min, q.k_max) (scaled),
-- from score.lowbit at 16 bits (f32 q.k, no quantisation) with bk = 1
-- against [k_min; k_max] (zero rows appended when 2C < n_q, as score.lowbit
-- needs n_q <= n_k; their columns are not read). Returns map[h][r][c] (Lua
-- tables, 1-based, c = 1..C).
local function minmax_map(q, k, bq, bk, backend)
  local kmin, kmax = sl.page.meta(k, {page = bk, backend = backend})
  local hkv, C, d = kmin:shape()[1], kmin:shape()[2], kmin:shape()[3]
  local parts = {kmin, kmax}
  local nq = q:shape()[2]
  if 2 * C < nq then parts[3] = sl.zeros({hkv, nq - 2 * C, d}) end
  local a = {bq = bq, bk = 1, bits = 16, smooth_k = 0, causal = 0, backend = backend}
  local s = sl.score.lowbit(q, sl.cat(parts, 2), a):totable()
  local out = {}
  for h, hr in ipairs(s) do
    out[h] = {}
    for r, row in ipairs(hr) do
      local o = {}
      for c = 1, C do o[c] = math.max(row[c], row[C + c]) end
      out[h][r] = o
    end
  end
  return out
end

local function check_rep(p)
  if p.rep ~= "first" and p.rep ~= "minmax" then
    sl.fail("hip_attention: rep must be 'first' or 'minmax'; found '%s'", tostring(p.rep))
  end
  if p.rep == "minmax" and p.qstride ~= 1 then
    sl.fail("hip_attention: rep = 'minmax' scores every query row; expected qstride = 1, found %d", p.qstride)
  end
end

-- The old emulation (estimator = "lowbit"): every tile's max from
-- score.lowbit (dense cost), then the Lua tree above over the map; kept only
-- to compare against the C tree, which must give the same keep.
local function estimate_lowbit(prob, p, blind)
  local hq = prob.q:shape()[1]
  local d = prob.q:shape()[3]
  local nqb, nkb, nq, nk = E.blocks(prob, p.bq, p.bk)
  local smap
  if not blind and p.rep == "minmax" then
    smap = minmax_map(prob.q, prob.k, p.bq, p.bk, prob.backend)
  elseif not blind then
    local sargs = {bq = p.bq, bk = p.bk, bits = 16, smooth_k = 0, causal = prob.causal and 1 or 0, backend = prob.backend}
    smap = E.heads(sl.score.lowbit(prob.q, prob.k, sargs))
  end
  local Kb = math.max(1, (p.budget + p.bk - 1) // p.bk)
  local keep, evals = E.zeros(hq, nqb, nkb), 0
  for h = 1, hq do
    local rows = smap and smap[h]
    for r = 1, nqb do
      local vis = E.visible(prob, r - 1, p.bq, p.bk, nkb)
      -- the window: from the block of (first row's position - window) to the last visible block
      local first_pos = (r - 1) * p.bq + (nk - nq)
      local wstart = prob.causal and math.max(0, (first_pos - p.window) // p.bk) or vis
      for c = wstart + 1, vis do keep[h][r][c] = 1 end
      local T = math.min(wstart, vis)
      local sc = {}
      for c = 1, T do sc[c] = blind and -c or rows[r][c] end
      local kept, ev = tree(sc, T, Kb)
      evals = evals + ev
      for _, c in ipairs(kept) do keep[h][r][c] = 1 end
    end
  end
  local m = E.mask_from_keep(keep, prob, p.bq, p.bk)
  -- the minmax map is dense: two f32 scores per (query row, key block)
  local flops = (p.rep == "minmax" and not blind) and 4 * hq * nq * nkb * d or evals * p.bq * p.bk * 2 * d
  return m, {estimator_flops = flops, stats = {tree_evaluations = evals}, keep = keep}
end

-- The C tree (select.hip_tree): only the representatives of the visited
-- nodes are scored, ~ (2·log2(T/K_b) + 1)·K_b block scores per query block.
-- blind = true: the score-blind variant (tree ordered by position, no
-- scores), through the Lua tree.
-- chunk (tests only): query blocks per select.hip_tree call; 0: one call
-- over the whole problem with the whole keep (the pre-issue-19 form).
local KEEP_BYTES = 1 << 22
local function estimate(prob, p, blind, chunk)
  check_rep(p)
  if blind or p.estimator == "lowbit" or p.rep == "minmax" then return estimate_lowbit(prob, p, blind) end
  if p.estimator ~= "tree" then sl.fail("hip_attention: estimator must be 'tree' or 'lowbit'; found '%s'", tostring(p.estimator)) end
  local Kb = math.max(1, (p.budget + p.bk - 1) // p.bk)
  local args = {bq = p.bq, bk = p.bk, kb = Kb, window = p.window, causal = prob.causal and 1 or 0,
    qstride = p.qstride, backend = prob.backend}
  local hq, nq, nk = prob.q:shape()[1], prob.q:shape()[2], prob.k:shape()[2]
  local R, C = (nq + p.bq - 1) // p.bq, (nk + p.bk - 1) // p.bk
  local ev, m = 0, nil
  if chunk == 0 then -- the whole keep [Hq, R, C] in one call (tests: the form the chunks must equal)
    local keep, evals = sl.select.hip_tree(prob.q, prob.k, args)
    m = sl.mask.from_blocks(keep, {n_q = nq, n_k = nk, bq = p.bq, bk = p.bk, causal = prob.causal})
    ev = math.floor(evals:stats()) -- the sum of the per-block counts
  else
    -- Linear memory (issue 19): the keep of a whole problem is n²/(bq·bk)
    -- bytes per head, so the tree runs on row blocks of query blocks (about
    -- KEEP_BYTES of keep each, or `chunk` query blocks) and each block's keep
    -- becomes lists of at most L blocks per query block (K_b tree blocks plus
    -- the window's): q rows [r0·bq, r1·bq) against keys 0 .. the block's
    -- last visible key, the same causal offset (n_k - n_q + r0·bq) and so the
    -- same tree; a non-causal problem reads every key.
    local L = math.min(C, Kb + (p.bq + p.window) // p.bk + 2)
    local per = chunk or math.max(1, KEEP_BYTES // math.max(1, hq * C))
    local lists = sl.zeros({hq, R, L}, "i32")
    for r0 = 0, R - 1, per do
      local r1 = math.min(R, r0 + per)
      local i0, i1 = r0 * p.bq, math.min(nq, r1 * p.bq)
      local q, k = prob.q, prob.k
      if r0 > 0 or r1 < R then
        q = prob.q:narrow(2, i0 + 1, i1 - i0)
        if prob.causal then k = prob.k:narrow(2, 1, math.min(nk, i1 + nk - nq)) end
      end
      local keep, evals = sl.select.hip_tree(q, k, args)
      sl.mask.block_lists(keep, L, lists, r0 + 1)
      ev = ev + math.floor(evals:stats())
    end
    m = sl.mask.from_blocks(lists, {n_q = nq, n_k = nk, bq = p.bq, bk = p.bk, causal = prob.causal})
  end
  local rows = (p.bq + p.qstride - 1) // p.qstride
  return m, {estimator_flops = ev * rows * p.bk * 2 * prob.q:shape()[3], stats = {tree_evaluations = ev}}
end

-- ---- decode (card step 5) ----

-- Every kept block (tree and window) of one decode row: per query head a
-- sorted Lua list of 0-based key blocks, from select.hip_tree over the whole
-- cache with bq = 1 (the step's query row is its own query block).
-- selector (tests only) replaces the tree: selector(cache, q, p, T, Kb) ->
-- per query head the tree blocks (0-based, < T); the window blocks are added.
local function decode_select(cache, q, p, backend, selector)
  local n, hq = cache:len(), q:shape()[1]
  local C = (n + p.bk - 1) // p.bk
  local w0 = math.max(0, (n - 1 - p.window) // p.bk)
  local T = math.min(w0, C)
  local Kb = math.max(1, (p.budget + p.bk - 1) // p.bk)
  local lists, evals = {}, 0
  check_rep(p)
  if p.rep == "minmax" and not selector then
    local map = minmax_map(q, cache:tensor("k"):narrow(2, 1, n), 1, p.bk, backend)
    selector = function()
      local out = {}
      for h = 1, hq do
        local sc = {}
        for c = 1, T do sc[c] = map[h][1][c] end
        local kept, ev = tree(sc, T, Kb)
        evals = evals + ev
        out[h] = {}
        for i, c in ipairs(kept) do out[h][i] = c - 1 end
      end
      return out
    end
  end
  if selector then
    local tree_blocks = selector(cache, q, p, T, Kb)
    for h = 1, hq do
      local l = {}
      for _, c in ipairs(tree_blocks[h]) do l[#l + 1] = c end
      for c = T, C - 1 do l[#l + 1] = c end
      table.sort(l)
      lists[h] = l
    end
    return lists, evals
  end
  local keep, ev = sl.select.hip_tree(q, cache:tensor("k"):narrow(2, 1, n),
    {bq = 1, bk = p.bk, kb = Kb, window = p.window, causal = 1, qstride = 1, backend = backend})
  evals = math.floor(ev:stats())
  for h, hr in ipairs(keep:totable()) do
    local l = {}
    for c, x in ipairs(hr[1]) do if x ~= 0 then l[#l + 1] = c - 1 end end
    lists[h] = l
  end
  return lists, evals
end

-- The decode hook: the selection (tree + window blocks at the refresh step)
-- is saved in the layer's decode state (ls.hip = {step, n, blocks}) and
-- reused for `refresh` - 1 steps; each step attends the saved blocks plus
-- the current window blocks (the tokens appended since the selection
-- included), one softmax. selector: see decode_select (tests only).
local function decode_hook(st, ls, step, p, selector)
  local decode = require "sparselab.decode"
  local cache, q = ls.cache, step.q
  local n, hq, d = cache:len(), q:shape()[1], cache:head_dim()
  local saved, refreshed, evals = ls.hip, false, 0
  if not saved or st.steps - saved.step >= p.refresh then
    local blocks
    blocks, evals = decode_select(cache, q, p, step.backend, selector)
    saved = {step = st.steps, n = n, blocks = blocks}
    ls.hip, refreshed = saved, true
  end
  local w0 = math.max(0, (n - 1 - p.window) // p.bk)
  local lists, tokens = {}, 0
  for h = 1, hq do
    local have, l = {}, {}
    for _, c in ipairs(saved.blocks[h]) do have[c] = true end
    for c = w0, (n - 1) // p.bk do have[c] = true end
    for c = 0, (n - 1) // p.bk do
      if have[c] then
        for j = c * p.bk, math.min((c + 1) * p.bk, n) - 1 do l[#l + 1] = j end
      end
    end
    lists[h] = l
    tokens = tokens + #l
  end
  local t = decode.lists_tensor(lists)
  local o, lse = decode.attend_tokens(cache, q, t, {backend = step.backend})
  return {o = o, lse = lse, pages = t, selection = saved, refreshed = refreshed,
    stats = {tokens_read = tokens / hq, density = tokens / (hq * n), kv_bytes = 8 * d * tokens,
      tree_evaluations = evals, estimator_flops = evals * p.bk * 2 * d, refreshed = refreshed and 1 or 0}}
end

local block_run = E.block_run(estimate)

return {
  id = "hip_attention",
  card = "hip_attention",
  title = "HiP Attention: Sparse Sub-Quadratic Attention with Hierarchical Attention Pruning",
  family = "block-estimate",
  phase = "both",
  causal_only = true,
  summary = "Per query block, a binary tree over key-block groups keeps the top-K_b halves by their first block's max q·k, plus a sliding window.",
  knob = "budget",
  params = {
    budget = {default = 512, min = 1, int = true, doc = "mask_k: key tokens chosen by the tree (K_b = budget / bk blocks)"},
    bq = {default = 32, min = 1, max = 4096, int = true, doc = "query rows per block"},
    bk = {default = 8, min = 1, max = 4096, int = true, doc = "keys per key block (the representative)"},
    window = {default = 128, min = 0, int = true, doc = "sliding window tokens attended besides the tree"},
    qstride = {default = 1, min = 1, int = true, doc = "a representative's score uses every qstride-th row of the query block (v1.1 draft: 2)"},
    refresh = {default = 8, min = 1, int = true, doc = "decode: steps between tree searches (the mask-refresh interval); the selection is reused in between"},
    rep = {default = "first", doc = "representative of a half: 'first' (its first block's keys) or 'minmax' (the draft's block_size_k_group > 1: max(q.k_min, q.k_max) of the block's channel-wise min/max keys; Lua tree over a dense map)"},
    estimator = {default = "tree", doc = "'tree': select.hip_tree scores only visited nodes; 'lowbit': the old dense tile-max map + Lua tree (comparison only)"},
  },
  ops = {"select.hip_tree", "attn.block_sparse"},
  checks = {"budget >= n equals dense", "K_b groups per level, final groups one block, sorted unique < T",
    "a needle key per region is found", "score-blind representatives lose recall",
    "decode: budget >= cache is dense; the selection is reused between refreshes; refresh re-selects; first-k blocks fail"},
  estimate = estimate,
  tree = tree,
  mask = function(prob, p) return (estimate(prob, p)) end,
  decode = decode_hook,
  decode_select = decode_select,
  minmax_map = minmax_map,
  -- a decode problem (n_q < n_k) is replayed step by step through the decode hook
  run = function(prob, p)
    if prob.q:shape()[2] < prob.k:shape()[2] then
      local D = require "sparselab.decode"
      local prefix = prob.k:shape()[2] - prob.q:shape()[2]
      local r = D.replay(sl.methods.get("hip_attention"), prob, p, {page = math.max(1, math.min(16, prefix))})
      return {o = r.o, lse = r.lse, stats = D.replay_stats(r.steps), steps = r.steps}
    end
    return block_run(prob, p)
  end,
}
