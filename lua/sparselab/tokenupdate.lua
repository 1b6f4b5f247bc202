-- sparselab.tokenupdate — sparse token update in the model runner (issue 17;
-- card sparse_token_update, Focus-DETR's q_sparse mode with its nested
-- cascade): from layer `from` on, only the selected tokens are updated by
-- each block (attention queries and FFN); the other rows pass through
-- unchanged (scatter "replace": their residual stream is bit-identical to
-- the input of the block). Every token stays a key/value (K/V = all
-- tokens, from their current hidden states).
--
--   U.hooks(m, o, stats) -> attention hook, site hook for m.c:forward
--     o.rho = 0.5 (share of tokens updated at the first sparse layer)
--     o.cascade = {1.0, 0.8, 0.6, 0.6, 0.4, 0.2} (Focus-DETR; layer from + i
--       updates floor(rho . cascade[i+1] . N) tokens, the last value repeats)
--     o.from = 1 (first sparse layer; earlier layers are dense)
--     o.scores = "act_mag" (default: SparseViT's token magnitude a_t = mean_c
--       |x_tc| of the block input (the normed attention input of layer
--       `from`)) | "ffn_mag" (mean |h| of the FFN hidden units of layer
--       from - 1) | "attn" (attention each token receives at layer `from`:
--       column sums of the softmax over all rows (score.rows, reduce.heads,
--       reduce.columns) divided by the rows that see the column, ZipVL's
--       causal correction; measured worse than random here: a token that
--       is attended is not the token whose own update matters) | "first" |
--       "random" (score-blind baselines), o.seed
--     o.attention = function(layer, q, k, v) -> o: the attention executor
--       (default dense causal; e.g. a sparse attention method's)
--     stats gets selected = {[layer] = sorted 0-based rows updated}.
--   U.nll(m, seqs, o) -> mean NLL over all tokens, mean updated share
--     over the sparse layers.
--
-- One score vector, sets nested across layers (the top-N_l prefix of one
-- ordering, ties by the lower index), as Focus-DETR and SparseViT do.
-- The runner has no row-subset executor: the skipped rows' attention
-- output (before W_o) and FFN hidden units (before W_2) are zeroed (the
-- token.scatter op, replace mode, with zero rows), which
-- gives exactly the gather -> compute -> scatter(replace) result for the
-- updated rows and the identity for the others; the FLOPs of the compacted
-- computation are what stats reports (updated share).
-- Not done: window scores (window_norm, mask_any), varlen packing, the
-- w_sparse / axial modes, scatter "add", Focus-DETR's top-down modulation
-- and dual attention (the card's detection-model parts).
local sl = require "sparselab"

local U = {}

-- magnitude scores: the site they are read at and the layer offset from `from`
local SCORE_SITE = {act_mag = {"attn_in", 0}, ffn_mag = {"ffn_hidden", -1}}

local function ordering(o, scores, n)
  local idx = {}
  for i = 0, n - 1 do idx[i + 1] = i end
  if o.scores == "first" then return idx end
  if o.scores == "random" then
    local s = 0x51ED2701 + (o.seed or 1) * 7919
    for i = n, 2, -1 do
      s = (s * 1103515245 + 12345) % 2147483648
      local j = s % i + 1
      idx[i], idx[j] = idx[j], idx[i]
    end
    return idx
  end
  table.sort(idx, function(a, b)
    if scores[a + 1] ~= scores[b + 1] then return scores[a + 1] > scores[b + 1] end
    return a < b
  end)
  return idx
end

--- Attention each key receives (mean over heads, sum over rows), divided by
--- the number of rows that see it (causal): [n] Lua array.
function U.received(q, k)
  local n = q:shape()[2]
  local rows = {}
  for i = 0, n - 1 do rows[i + 1] = i end
  local pr = sl.score.rows(q, k, sl.tensor(rows, "i32"), {causal = true})
  local s = sl.reduce.columns(sl.reduce.heads(pr, {group = 0, mode = 2})):totable()[1]
  for j = 1, n do s[j] = s[j] / (n - j + 1) end
  return s
end

function U.hooks(m, o, stats)
  o = o or {}
  local rho, from = o.rho or 0.5, o.from or 1
  local cascade = o.cascade or {1.0, 0.8, 0.6, 0.6, 0.4, 0.2}
  if rho < 0 or rho > 1 then sl.fail("tokenupdate: rho must be in [0, 1], found %s", tostring(rho)) end
  local order -- one ordering of the rows, fixed at layer `from`
  local chosen = {} -- [layer] = set of updated rows
  local function select_for(layer, n)
    if chosen[layer] then return chosen[layer] end
    local c = cascade[math.min(#cascade, layer - from + 1)]
    local count = math.max(0, math.min(n, math.floor(rho * c * n + 1e-9)))
    local set, list = {}, {}
    for i = 1, count do set[order[i]] = true; list[i] = order[i] end
    table.sort(list)
    if stats then stats.selected = stats.selected or {}; stats.selected[layer] = list end
    chosen[layer] = set
    return set
  end
  local function attention(layer, q, k, v)
    local out = o.attention and o.attention(layer, q, k, v) or sl.attn.dense(q, k, v, {causal = true})
    if layer == from and (o.scores == "attn" or o.scores == "first" or o.scores == "random") then
      local n = q:shape()[2]
      order = ordering(o, o.scores == "attn" and U.received(q, k) or nil, n)
    end
    return out
  end
  local function site(layer, name, x)
    local at = SCORE_SITE[o.scores or "act_mag"]
    if at and layer == from + at[2] and name == at[1] then
      -- SparseViT's activation magnitude: mean |.| per token of the layer before the sparse ones
      local s = {}
      for i, row in ipairs(x:totable()) do
        local a = 0
        for _, v in ipairs(row) do a = a + math.abs(v) end
        s[i] = a / #row
      end
      order = ordering(o, s, #s)
    end
    if layer < from or (name ~= "attn_out" and name ~= "ffn_hidden") then return nil end
    local n, width = x:shape()[1], x:shape()[2]
    local set = select_for(layer, n)
    local skipped = {}
    for i = 0, n - 1 do if not set[i] then skipped[#skipped + 1] = i end end
    if #skipped == 0 then return nil end
    -- the skipped rows' block contribution is zero: token.scatter (replace) of zero rows
    return sl.token.scatter(x, sl.zeros({#skipped, width}), sl.tensor(skipped, "i32"))
  end
  return attention, site
end

--- Mean next-token NLL over all tokens of seqs, and the mean updated share
--- over the sparse layers.
function U.nll(m, seqs, o)
  local total, count, share, ns = 0, 0, 0, 0
  for _, ids in ipairs(seqs) do
    local stats = {}
    local attn, site = U.hooks(m, o, stats)
    local st <close> = m.c:state(#ids)
    local logits = m.c:forward(ids, st, attn, site)
    local c = sl.model_c.compare(logits, logits, ids)
    total, count = total + c.nll * c.n, count + c.n
    for _, list in pairs(stats.selected or {}) do share, ns = share + #list / #ids, ns + 1 end
  end
  return total / count, ns > 0 and share / ns or 1
end

return U
