-- LoopServe: An Adaptive Dual-phase LLM Inference Acceleration System for
-- Multi-Turn Dialogues — card: loopserve (prefill; decode side from issue 13).
-- Card steps implemented (the card marks the estimator as UNVERIFIED; the
-- reading below is the card's candidate composition):
--   1. online estimation from the new input's own queries: `windows` windows
--      of `rows` consecutive query rows, evenly spread over the new input
--      [new_start, n) (the last window ends at n), exact softmax rows
--      (score.rows), not only the prompt's last rows;
--   2. selection: column sums (reduce.columns) and diagonal sums
--      (reduce.diagonals, each window at its own row position) summed over
--      the windows; per head the fewest vertical lines and, separately, the
--      fewest slash lines holding alpha of the sampled mass (select.topp,
--      the cdf rule); the diagonal (offset 0) always kept;
--   3. executor attn.lines over the exact lines (memory O(n · lines));
--      widen = true runs MInference-style slash tiles on attn.vs_mixed, as
--      vertical_slash.
--   4. decode (issue 13; the card's summary, parameters unknown): a decode
--      hook re-selects a compact KV subset every dec_interval steps from the
--      attention of the last dec_window generated tokens' queries (kept in
--      the decode state; summed over the rows and the query heads of a
--      group, as SnapKV's importance but from outputs instead of the
--      prompt's end): per KV head the top dec_budget tokens plus the last
--      dec_window; tokens arriving after a selection are attended until the
--      next one.
-- Not implemented: the multi-turn cache reuse (the caller runs one prefill per turn with the
-- cached history as the prompt head and new_start at the turn's start).
-- Unknowns chosen: alpha 0.9, 8 windows of 16 rows, new_start 0 (the whole
-- prompt is new input), the forced diagonal; decode: budget 1024, window 16,
-- interval 16.
local sl = require "sparselab"
local recipe = require "sparselab.recipe"
local D = require "sparselab.dynamic"

local ID = "loopserve"

local function estimate(prob, p)
  local n = D.check_prefill(ID, prob)
  local hq = prob.q:shape()[1]
  local w = math.min(p.rows, n)
  local s0 = math.min(math.max(0, p.new_start), n - w)
  local starts, seen = {}, {}
  for t = 0, p.windows - 1 do
    local st = p.windows == 1 and (n - w) or (s0 + ((n - w - s0) * t) // (p.windows - 1))
    if not seen[st] then seen[st] = true; starts[#starts + 1] = st end
  end
  local colsum, diagsum = {}, {}
  for h = 1, hq do
    colsum[h], diagsum[h] = {}, {}
    for j = 1, n do colsum[h][j], diagsum[h][j] = 0, 0 end
  end
  local flops = 0
  for _, st in ipairs(starts) do
    local rows = {}
    for i = st, st + w - 1 do rows[#rows + 1] = i end
    local rt = sl.tensor(rows, "i32")
    local args = {backend = prob.backend}
    local pr = sl.score.rows(prob.q, prob.k, rt, args)
    flops = flops + sl.op_flops("score.rows", prob.q, prob.k, rt, args) + 2 * pr:numel()
    local c, dg = sl.reduce.columns(pr), sl.reduce.diagonals(pr, {row_pos0 = st})
    pr:close()
    for h = 1, hq do
      local cr, dr = c:narrow(1, h, 1):totable()[1], dg:narrow(1, h, 1):totable()[1]
      local ch, dh = colsum[h], diagsum[h]
      for j = 1, n do ch[j], dh[j] = ch[j] + cr[j], dh[j] + dr[j] end
    end
  end
  local cols = D.lists(sl.select.topp(sl.tensor(colsum), {p = p.alpha}))
  local offs = D.lists(sl.select.topp(sl.tensor(diagsum), {p = p.alpha}))
  for h = 1, hq do offs[h] = D.union(offs[h], {0}) end
  local m, sem = D.lines_mask(cols, offs, n, p.bq, p.bk, p.widen)
  local nv, ns = 0, 0
  for h = 1, hq do nv, ns = nv + #cols[h], ns + #offs[h] end
  return {mask = m, flops = flops, semantic_density = sem,
    extra = {verticals = nv / hq, slashes = ns / hq, sampled_rows = #starts * w}}
end

-- Decode: progressive KV compression from the recent outputs' attention.
-- importance(cache, obs, n) replaces the estimate in tests.
local function decode_step(st, ls, step, p, importance)
  local decode = require "sparselab.decode"
  local cache, q = ls.cache, step.q
  local n, hkv = cache:len(), cache:heads()
  ls.loop_q = ls.loop_q or {}
  table.insert(ls.loop_q, q)
  while #ls.loop_q > p.dec_window do table.remove(ls.loop_q, 1) end
  local sel = ls.loop_sel
  if n > p.dec_budget and (not sel or st.steps - sel.step >= p.dec_interval) then
    local w = #ls.loop_q
    local obs = w == 1 and ls.loop_q[1] or sl.cat(ls.loop_q, 2)
    local imp = importance and importance(cache, obs, n) or decode.snapkv_importance(cache, obs, n, 1, 0, step.backend)
    local kept = {}
    for g = 1, hkv do
      local order = {}
      for j = 0, n - w - 1 do order[#order + 1] = j end
      table.sort(order, function(a, b)
        if imp[g][a + 1] ~= imp[g][b + 1] then return imp[g][a + 1] > imp[g][b + 1] end
        return a < b
      end)
      kept[g] = {}
      for i = 1, math.min(p.dec_budget, #order) do kept[g][i] = order[i] end
      for j = n - w, n - 1 do kept[g][#kept[g] + 1] = j end
    end
    sel = {step = st.steps, kept = kept, upto = n}
    ls.loop_sel = sel
  end
  if not sel then
    local all = {}
    for g = 1, hkv do all[g] = {}; for j = 0, n - 1 do all[g][j + 1] = j end end
    sel = {kept = all, upto = n}
  end
  local lists = {}
  for g = 1, hkv do
    local l = {}
    for i, j in ipairs(sel.kept[g]) do l[i] = j end
    for j = sel.upto, n - 1 do l[#l + 1] = j end
    lists[g] = l
  end
  local t = decode.lists_tensor(lists)
  local o, lse = decode.attend_tokens(cache, q, t, {backend = step.backend})
  local _, tokens = decode.pages_read(t, 1, n)
  return {o = o, lse = lse, pages = t, selection = ls.loop_sel,
    stats = {tokens_read = tokens / hkv, density = tokens / (hkv * n), kv_bytes = 8 * cache:head_dim() * tokens}}
end

local M = {
  id = ID,
  card = ID,
  title = "LoopServe: An Adaptive Dual-phase LLM Inference Acceleration System for Multi-Turn Dialogues",
  family = "stripe-estimate",
  phase = "both",
  causal_only = true,
  summary = "Windows of query rows spread over the new input estimate vertical and slash lines; the fewest " ..
    "lines holding alpha of the sampled mass are executed (prefill part).",
  knob = "alpha",
  knob_direction = 1,
  params = recipe.block_params{
    alpha = {default = 0.9, min = 0, max = 1, doc = "share of the sampled mass the kept lines hold (each kind)"},
    windows = {default = 8, min = 1, int = true, doc = "sampled windows of query rows"},
    rows = {default = 16, min = 1, int = true, doc = "query rows per window"},
    new_start = {default = 0, min = 0, int = true, doc = "first position of the current turn's new input"},
    widen = {default = false, doc = "true: MInference-style slash tiles (executed ⊇ semantic)"},
    dec_budget = {default = 1024, min = 1, int = true, doc = "decode: tokens kept per KV head at each re-selection"},
    dec_window = {default = 16, min = 1, int = true, doc = "decode: recent output queries whose attention scores the cache"},
    dec_interval = {default = 16, min = 1, int = true, doc = "decode: steps between re-selections"},
    page = {default = 16, min = 1, int = true, doc = "decode: page size of the cache"},
  },
  ops = {"score.rows", "reduce.columns", "reduce.diagonals", "select.topp", "attn.lines", "attn.vs_mixed"},
  checks = {"alpha = 1 equals dense", "diagonal always kept", "recall monotone in alpha",
    "estimate uses rows spread over the new input (question position)"},
  mask = function(prob, p) return estimate(prob, p).mask end,
  estimate = estimate,
  decode = decode_step,
}

local prefill_run = D.runner(estimate)

--- Prefill problems run the estimate; a decode problem (n_q < n_k) is
--- replayed step by step through the decode hook.
function M.run(prob, p)
  if prob.q:shape()[2] < prob.k:shape()[2] then
    return require("sparselab.decode").kernel_run(M, prob, p, {})
  end
  return prefill_run(prob, p)
end

return M
