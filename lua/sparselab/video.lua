-- sparselab.video — pieces the video-DiT recipes share (issue 15): the
-- problem's layout (required, non-causal), seeded row samples, sampled-row
-- outputs (dense and over per-row key lists), text-token masks, and running
-- a block mask under per-head token orders (perm.apply before, its inverse
-- after, on O and on L).
local sl = require "sparselab"
local layout = require "sparselab.layout"

local V = {}

--- The video layout of prob, or a one-line error naming the method.
function V.layout_of(id, prob)
  if not prob.layout then
    sl.fail("%s: needs a video layout on the problem (sl.problem{layout = sl.layout.video{...}} or --layout video,...)",
      id)
  end
  if prob.causal then sl.fail("%s: video attention is not causal; give a non-causal problem (causal = false)", id) end
  local n_q, n_k = prob.q:shape()[2], prob.k:shape()[2]
  if n_q ~= n_k then sl.fail("%s: expected n_q == n_k (full-sequence attention), found %d and %d", id, n_q, n_k) end
  if prob.q:shape()[1] ~= prob.k:shape()[1] then
    sl.fail("%s: expected as many key heads as query heads (video DiTs are multi-head), found %d and %d", id,
      prob.k:shape()[1], prob.q:shape()[1])
  end
  return prob.layout
end

--- `count` distinct 0-based positions in [lo, hi), sorted, from seed (a
--- Fisher-Yates shuffle driven by a 64-bit LCG).
function V.sample(lo, hi, count, seed)
  local size = hi - lo
  local idx = {}
  for i = 1, size do idx[i] = lo + i - 1 end
  local x = (seed * 6364136223846793005 + 1442695040888963407) & 0x7fffffffffffffff
  local m = math.min(count, size)
  for i = 1, m do
    x = (x * 6364136223846793005 + 1442695040888963407) & 0x7fffffffffffffff
    local j = i + (x >> 17) % (size - i + 1)
    idx[i], idx[j] = idx[j], idx[i]
  end
  local out = {}
  for i = 1, m do out[i] = idx[i] end
  table.sort(out)
  return out
end

--- q rows at 0-based positions rows (one list for every head): [H, R, d].
function V.gather_rows(x, rows)
  local H = x:shape()[1]
  local t = {}
  for h = 1, H do t[h] = rows end
  return sl.gather.rows(x, sl.tensor(t, "i32"), {backend = "cpu"})
end

--- Dense attention of the query rows at positions rows over every key:
--- O [H, R, d], L [H, R].
function V.dense_rows(prob, rows)
  local n = prob.k:shape()[2]
  local lim = {}
  for i = 1, #rows do lim[i] = n end
  return sl.attn.rows(prob.q, prob.k, prob.v, sl.tensor({rows}, "i32"), sl.tensor({lim}, "i32"),
    {backend = prob.backend})
end

--- Attention of queries qs [H, R, d] over per-row key lists (lists[r] a
--- sorted 0-based list, the same for every head) of k, v.
function V.list_rows(qs, k, v, lists, backend)
  local rp, col = {0}, {}
  for r, l in ipairs(lists) do
    for _, j in ipairs(l) do col[#col + 1] = j end
    rp[r + 1] = #col
  end
  if #col == 0 then col[1] = 0 end
  return sl.attn.token_sparse(qs, k, v, sl.tensor({rp}, "i32"), sl.tensor(col, "i32"),
    {rows_per_entry = 1, backend = backend})
end

--- Mean squared difference of head h of a and b ([H, R, d]): rel_l2^2 times
--- |b|^2 is monotone in it; per head we compare candidates on the same b,
--- so rel_l2 orders them the same way.
function V.head_err(a, b, h)
  return sl.metric.rel_l2(a:narrow(1, h, 1), b:narrow(1, h, 1))
end

--- The text tokens' rows and columns, all on (non-causal patterns).
function V.text_patterns(lay)
  if lay.text == 0 then return nil end
  if lay.text_first then
    return sl.mask.dense_rows{first = lay.text, causal = false} + sl.mask.dense_cols{first = lay.text, causal = false}
  end
  return sl.mask.dense_rows{last = lay.text, causal = false} + sl.mask.dense_cols{last = lay.text, causal = false}
end

--- A block mask from a Lua keep table keep[I][J] (1-based, 0/1) over
--- nb x nb blocks of b tokens — or one per head, keep[h][I][J], or a u8
--- tensor [H, nb, nb] — united with the text rows and columns.
function V.block_mask(keep, n, b, lay)
  if type(keep) == "table" then
    if type(keep[1][1]) ~= "table" then keep = {keep} end
    keep = sl.tensor(keep, "u8")
  end
  local m = sl.mask.from_blocks(keep, {n_q = n, n_k = n, bq = b, bk = b, causal = 0})
  local text = V.text_patterns(lay)
  if text then m = m + text end
  return m
end

--- Block-sparse attention of prob under mask, head h running in the token
--- order orders[h] (nil: all in the original order; see layout:perm_tensor):
--- Q, K, V permuted per head, O and L permuted back. Returns o, lse, the
--- permutation time (ms) and the executor FLOPs.
function V.run_permuted(prob, mask, perm)
  local be = prob.backend
  local q, k, v = prob.q, prob.k, prob.v
  local perm_ms = 0
  if perm then
    local t0 = sl.time()
    q, k, v = layout.permute(q, perm, be), layout.permute(k, perm, be), layout.permute(v, perm, be)
    perm_ms = (sl.time() - t0) * 1e3
  end
  local o, lse = sl.attn.block_sparse(q, k, v, mask, {backend = be})
  local flops = sl.op_flops("attn.block_sparse", q, k, v, mask, {})
  if perm then
    local t0 = sl.time()
    o, lse = layout.unpermute(o, perm, be), layout.unpermute(lse, perm, be)
    perm_ms = perm_ms + (sl.time() - t0) * 1e3
  end
  return o, lse, perm_ms, flops
end

--- Calibration problems grouped by layer: {[layer + 1] = {problems}}.
function V.by_layer(problems)
  local out = {}
  for _, prob in ipairs(problems) do
    local l = (prob.layer or 0) + 1
    out[l] = out[l] or {}
    table.insert(out[l], prob)
  end
  return out
end

--- The layer entry of an offline plan for prob: p.config is a calibration
--- file path or its table; without one, search(prob) makes the plan from
--- the problem itself. The plan must have been made with p.block; its layer
--- entry must list `field` for every query head.
function V.plan_layer(id, prob, p, field, search)
  local cfg = p.config
  if type(cfg) == "string" then cfg = require("sparselab.calibrate").load(cfg, id) end
  if type(cfg) ~= "table" then cfg = search(prob) end
  if cfg.block ~= p.block then
    sl.fail("%s: the plan was searched with block %s, the run uses %d", id, tostring(cfg.block), p.block)
  end
  local layer = (cfg.layers or {})[(prob.layer or 0) + 1]
  local H = prob.q:shape()[1]
  if not layer or type(layer[field]) ~= "table" or #layer[field] ~= H then
    sl.fail("%s: the plan has no entry of %d heads for layer %d", id, H, prob.layer or 0)
  end
  return layer
end

return V
