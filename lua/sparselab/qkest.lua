-- sparselab.qkest — qk_lowrank as a score estimator in the model runner
-- (issue 17; card qk_lowrank, "As an estimator"): the whitened rank-r
-- factors of W_q and W_k (prune.lowrank, CASP) give q~ = x Bq^T [n, r] and
-- k~ = x Bk^T [n, r]; per head the logits are estimated as
-- q~ (Aq_h^T Ak_g) k~^T (the r x r core of the head's slices), PRE-RoPE (the
-- card's RoPE caveat: this mode scores pre-RoPE; the exact attention that
-- runs on the selection uses the model's post-RoPE q, k). Each query row
-- keeps its top `keep` keys by the estimate (select.topk on score.rows of
-- q~C and k~; ties lower index), the selection runs exactly through
-- attn.block_sparse with 1 x 1 blocks (sl.mask.from_blocks, causal).
--
--   Q.build(m, calib, o) -> est {[layer] = {aq =, bq =, ak =, bk =}}; o.rank (8), o.whiten (true)
--   Q.hooks(m, est, o, stats) -> attention hook, site hook for m.c:forward
--     o.keep = keys per query row (32); o.scores = "lowrank" (default: pre-RoPE
--     core) | "lowrank_rope" (the low-rank q, k reconstructed and rotated by
--     the model's RoPE: the card's second RoPE option, no savings) |
--     "exact" (oracle: the exact post-RoPE softmax) | "first" | "random"
--     (score-blind baselines); o.seed; stats gets recall (sum over layers,
--     heads and rows of the exact attention mass the selection keeps) and
--     rows (count).
--   Q.run(m, seqs, est, o) -> mean NLL over all tokens, mean recall.
--
-- Not done: caching k~ for decode-time
-- selection, block pooling of the estimate, the recall-vs-entropy study.
local sl = require "sparselab"
local P = require "sparselab.prune"

local Q = {}

function Q.build(m, calib, o)
  o = o or {}
  local est = {}
  for l = 0, m.cfg.n_layers - 1 do
    local x = P.capture(m, calib, l).attn_in
    local e = {}
    for _, w in ipairs{"q", "k"} do
      local a, b = sl.prune.lowrank(m.c:weight(string.format("layers.%d.w%s", l, w)), x,
        {rank = o.rank or 8, whiten = o.whiten ~= false})
      e["a" .. w], e["b" .. w] = a, b
    end
    est[l] = e
  end
  return est
end

-- per-head cores C_h = Aq_h^T Ak_g as the rows of a [H, r_k, r_q] stack (mm.dense wants W [out, in])
local function cores(m, e)
  local H, G, hd = m.cfg.n_heads, m.cfg.n_kv_heads, m.cfg.head_dim
  local aq, ak = e.aq:totable(), e.ak:totable()
  local out = {}
  for h = 1, H do
    local g = (h - 1) // (H // G)
    local c = {}
    for j = 1, #ak[1] do
      c[j] = {}
      for i = 1, #aq[1] do
        local s = 0
        for t = 1, hd do s = s + aq[(h - 1) * hd + t][i] * ak[g * hd + t][j] end
        c[j][i] = s
      end
    end
    out[h] = sl.tensor(c)
  end
  return out
end

-- RoPE of the model (sl_model_config: rope_theta, rope_style pairs | halves; no Llama 3 scaling)
-- on rows [n][H * hd] at positions 0..n-1 -> nested [H][n][hd]
local function rope_heads(m, rows, heads)
  local hd, theta = m.cfg.head_dim, tonumber(m.cfg.rope_theta)
  local pairs_style = m.cfg.rope_style == "pairs"
  local half = hd // 2
  local out = {}
  for h = 1, heads do out[h] = {} end
  for i, row in ipairs(rows) do
    for h = 1, heads do
      local v = {}
      for t = 1, hd do v[t] = row[(h - 1) * hd + t] end
      for j = 0, half - 1 do
        local ang = (i - 1) * theta ^ (-2 * j / hd)
        local c, s = math.cos(ang), math.sin(ang)
        local a, b = pairs_style and 2 * j + 1 or j + 1, pairs_style and 2 * j + 2 or j + half + 1
        local x0, x1 = v[a], v[b]
        v[a], v[b] = x0 * c - x1 * s, x0 * s + x1 * c
      end
      out[h][i] = v
    end
  end
  return out
end

--- The low-rank q, k of one layer, rotated: (x Bq^T) Aq^T and (x Bk^T) Ak^T
--- with the model's RoPE at positions 0..n-1 -> tensors [H, n, hd], [H_kv, n, hd].
function Q.reconstruct(m, e, x)
  if m.cfg.rope_factor and m.cfg.rope_factor > 0 then sl.fail("qkest: scaled RoPE is not supported") end
  local qr = sl.mm.dense(sl.mm.dense(x, e.bq), e.aq):totable()
  local kr = sl.mm.dense(sl.mm.dense(x, e.bk), e.ak):totable()
  return sl.tensor(rope_heads(m, qr, m.cfg.n_heads)), sl.tensor(rope_heads(m, kr, m.cfg.n_kv_heads))
end

function Q.hooks(m, est, o, stats)
  o = o or {}
  local keep, mode = o.keep or 32, o.scores or "lowrank"
  local H, hd = m.cfg.n_heads, m.cfg.head_dim
  local xin = {}
  local core = {}
  local seed = o.seed or 1
  local function site(layer, name, x)
    if name == "attn_in" then xin[layer] = x end
    return nil
  end
  local function attention(layer, q, k, v)
    local n = q:shape()[2]
    local probs
    if mode == "lowrank" then
      local e = est[layer]
      core[layer] = core[layer] or cores(m, e)
      local qt, kt = sl.mm.dense(xin[layer], e.bq), sl.mm.dense(xin[layer], e.bk) -- [n, rq], [n, rk]
      local heads = {}
      for h = 1, H do heads[h] = sl.mm.dense(qt, core[layer][h]) end -- [n, rk]
      local qs = sl.cat(heads, 1) -- [H n, rk]
      local q3 = sl.tensor((function()
        local rows, out = qs:totable(), {}
        for h = 1, H do out[h] = {}; for i = 1, n do out[h][i] = rows[(h - 1) * n + i] end end
        return out
      end)())
      local k3 = sl.tensor({kt:totable()})
      local all = {}
      for i = 0, n - 1 do all[i + 1] = i end
      probs = sl.score.rows(q3, k3, sl.tensor(all, "i32"), {causal = true, scale = 1 / math.sqrt(hd)})
    elseif mode == "lowrank_rope" then
      local qh, kh = Q.reconstruct(m, est[layer], xin[layer])
      local all = {}
      for i = 0, n - 1 do all[i + 1] = i end
      probs = sl.score.rows(qh, kh, sl.tensor(all, "i32"), {causal = true})
    elseif mode == "exact" then
      local all = {}
      for i = 0, n - 1 do all[i + 1] = i end
      probs = sl.score.rows(q, k, sl.tensor(all, "i32"), {causal = true})
    else
      -- score-blind: first keys (position order) or seeded random values, same shape
      local rows = {}
      local s = 0x1F123BB5 + seed * 7919 + layer
      for h = 1, H do
        rows[h] = {}
        for i = 1, n do
          local r = {}
          for j = 1, n do
            if mode == "first" then r[j] = n - j else s = (s * 1103515245 + 12345) % 2147483648; r[j] = s end
          end
          rows[h][i] = r
        end
      end
      probs = sl.tensor(rows)
    end
    local sel = sl.select.topk(probs, {k = keep})
    local mask = sl.mask.from_blocks(sel, {n_q = n, n_k = n, bq = 1, bk = 1, causal = true})
    local out, lse = sl.attn.block_sparse(q, k, v, mask)
    if stats then -- recall: the exact attention mass the selection keeps, exp(lse_sel - lse_dense)
      local _, lse_dense = sl.attn.dense(q, k, v, {causal = true})
      local mean = sl.metric.recall(lse, lse_dense)
      stats.recall = (stats.recall or 0) + mean * H * n
      stats.rows = (stats.rows or 0) + H * n
    end
    return out
  end
  return attention, site
end

--- Mean NLL over all tokens of seqs with the estimator's selection, and
--- the mean recall of the exact attention mass.
function Q.run(m, seqs, est, o)
  local total, count, stats = 0, 0, {}
  for _, ids in ipairs(seqs) do
    local attn, site = Q.hooks(m, est, o, stats)
    local st <close> = m.c:state(#ids)
    local logits = m.c:forward(ids, st, attn, site)
    local c = sl.model_c.compare(logits, logits, ids)
    total, count = total + c.nll * c.n, count + c.n
  end
  return total / count, stats.recall / stats.rows
end

return Q
