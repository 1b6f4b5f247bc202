-- Delta Attention: Fast and Accurate Sparse Attention Inference by Delta
-- Correction (Willette et al. 2025) — card: delta_attention.
-- Card steps implemented (any base method is step 1, S):
--   2. tail n_tail = (n mod γ) + max(tail, γ) rows (tail = 128: the reference
--      code's max(128, γ)), clamped to n; s_p = n - n_tail;
--   3. sampled rows I = {0, γ, 2γ, ...} below s_p (the FIRST row of every
--      group of γ) ∪ the tail rows s_p .. n-1;
--   4. dense attention of the rows in I only, each row over keys 0..pos(i)
--      (attn.rows with causal limits; decode: pos(i) = n_k - n_q + i);
--   5-6. Δ_g = A[gγ] - A*[gγ], O[i] = A*[i] + Δ_{⌊i/γ⌋} below s_p, O = A on
--      the sampled rows and the tail (correct.delta);
--   7. smooth = true: Δ interpolated linearly between groups g and g+1 (the
--      last group uses its own Δ for both);
--   8. mode = "recompute": dense rows replace their sparse rows, no delta.
-- When γ does not divide s_p (γ neither divides 128 nor is ≥ 128) the last
-- group is shorter than γ; the card assumes it never is.
-- Not causal problems: every row sees every key (limit n_k); the card is causal.
-- L of the output: the dense L on sampled and tail rows, the base's L
-- elsewhere (see correct.delta in sparselab.h).
-- Cost: correction_flops = attn.rows FLOPs (the dense rows) + correct.delta's
-- element-wise FLOPs; stats.delta_rows, delta_sampled_flops and
-- delta_tail_flops split the dense-row cost into the γ-sampled part
-- (≈ dense / γ) and the tail (n_tail · n · 4d per head, which dominates at
-- small n: at n = 4096, γ = 64 it is 6.2 % of dense against 1.4 %).
local sl = require "sparselab"

-- The card's layout (the same rule as sl_correct_delta_layout in C).
local function layout(n, gamma, tail)
  local n_tail = n % gamma + math.max(tail, gamma)
  if n_tail > n then n_tail = n end
  local s_p = n - n_tail
  return s_p, (s_p + gamma - 1) // gamma, n_tail
end

-- rows (i32 [1, R]) and limits (i32 [1, R]) of the sampled then tail rows.
local function row_lists(n_q, n_k, causal, gamma, tail)
  local s_p, groups, n_tail = layout(n_q, gamma, tail)
  local rows, limits = {}, {}
  local off = n_k - n_q
  local function add(i)
    rows[#rows + 1] = i
    limits[#limits + 1] = causal and (off + i + 1) or n_k
  end
  for g = 0, groups - 1 do add(g * gamma) end
  for i = s_p, n_q - 1 do add(i) end
  return rows, limits, s_p, groups, n_tail
end

local MODES = {delta = 0, recompute = 1}

return {
  id = "delta_attention",
  card = "delta_attention",
  aliases = {"delta"},
  title = "Delta Attention: Fast and Accurate Sparse Attention Inference by Delta Correction",
  summary = "dense attention on the first row of every group of gamma rows and a dense tail; each group's " ..
    "difference dense - sparse is added to the sparse rows of the group",
  params = {
    gamma = {default = 64, min = 1, max = 1 << 30, int = true, doc = "rows per group (one dense row per group)"},
    tail = {default = 128, min = 0, max = 1 << 30, int = true,
      doc = "dense tail: n_tail = (n mod gamma) + max(tail, gamma), at most n"},
    smooth = {default = false, doc = "interpolate the deltas of neighbouring groups (the smooth variant)"},
    mode = {default = "delta", doc = "delta | recompute (dense rows replace sparse rows, no delta)"},
  },
  ops = {"attn.rows", "correct.delta"},
  checks = {"full mask: O equals dense", "sampled rows and tail rows equal dense exactly", "gamma = 1 gives dense",
    "recompute with gamma = 1 gives dense", "smooth at r = 0 equals plain", "Δ is a vector per head and group",
    "FLOP counter counts s_p/gamma + n_tail dense rows", "works on every registered method"},
  after = function(prob, p, base)
    local mode = MODES[p.mode]
    if not mode then sl.fail("delta_attention: mode must be 'delta' or 'recompute', found '%s'", tostring(p.mode)) end
    if not base.lse then sl.fail("delta_attention: the base method returned no lse") end
    local qs, ks = prob.q:shape(), prob.k:shape()
    local rows, limits, s_p, groups, n_tail = row_lists(qs[2], ks[2], prob.causal ~= false, p.gamma, p.tail)
    local rt, lt = sl.tensor({rows}, "i32"), sl.tensor({limits}, "i32")
    local rargs = {backend = prob.backend}
    local o_rows, lse_rows = sl.attn.rows(prob.q, prob.k, prob.v, rt, lt, rargs)
    local dargs = {gamma = p.gamma, tail = p.tail, smooth = p.smooth and 1 or 0, mode = mode, backend = prob.backend}
    local o, lse = sl.correct.delta(base.o, base.lse, o_rows, lse_rows, dargs)
    -- the dense-row cost apart: sampled rows, then the tail
    local per_key = sl.op_flops("attn.rows", prob.q, prob.k, prob.v, rt, lt, rargs)
    local keys_sampled, keys_all = 0, 0
    for r = 1, #limits do
      keys_all = keys_all + limits[r]
      if r <= groups then keys_sampled = keys_sampled + limits[r] end
    end
    local rows_flops = per_key
    local sampled = keys_all > 0 and rows_flops * keys_sampled / keys_all or 0
    local delta_flops = sl.op_flops("correct.delta", base.o, base.lse, o_rows, lse_rows, dargs)
    rt:close(); lt:close()
    return {o = o, lse = lse, stats = {
      correction_flops = rows_flops + delta_flops,
      delta_rows = #rows, delta_groups = groups, delta_tail_rows = n_tail, delta_s_p = s_p,
      delta_sampled_flops = sampled, delta_tail_flops = rows_flops - sampled, delta_elementwise_flops = delta_flops,
    }}
  end,
}
