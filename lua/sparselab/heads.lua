-- sparselab.heads — head-level sparsity in the model runner (issue 16):
-- head masks as attention schedules (a removed head is the spec "skip": its
-- attention is not computed and its output, hence its W_o slice's
-- contribution, is 0 — the ξ_h = 0 of Michel et al.), and gradient-free
-- head-importance measures on a model:
--   "ablation"  |ΔNLL| when the head alone is removed (a finite difference of
--               the loss in ξ_h from 1 to 0: the stand-in for the card's
--               gradient proxy |∂L/∂ξ_h|, which needs autograd), averaged over
--               the texts; optionally normalised per layer by the ℓ2 norm
--               over its heads (the paper's normalisation);
--   "l2"        mean ‖o_h‖ over tokens of the head's attention output (a
--               DejaVu-style magnitude, forward only);
--   "kl"        KL(dense ‖ head removed) of the next-token distributions
--               (ShadowLLM's oracle ablation).
-- Layers and heads are 0-based, tables are imp[layer][head].
local sl = require "sparselab"

local Hd = {}

--- The schedule that removes the heads in `removed` ({[layer] = {[head] =
--- true}}) and runs every other head densely.
function Hd.schedule(removed)
  local heads = {}
  for l, hs in pairs(removed) do
    for h, off in pairs(hs) do
      if off then heads[l] = heads[l] or {}; heads[l][h] = "skip" end
    end
  end
  return {default = "dense", heads = heads}
end

--- NLL (and KL to dense) of the model on tokens under a schedule.
local function score(model, tokens, schedule)
  local m = model:evaluate{tokens = tokens, attention = schedule}
  return m.nll, m.kl
end

--- Importance of every head: imp[layer][head] (0-based) by measure over the
--- texts (lists of token ids or strings). opts.normalize: divide each layer's
--- scores by their ℓ2 norm.
function Hd.importance(model, texts, measure, opts)
  opts = opts or {}
  local L, H = model.cfg.n_layers, model.cfg.n_heads
  local imp = {}
  for l = 0, L - 1 do imp[l] = {}; for h = 0, H - 1 do imp[l][h] = 0 end end
  local toks = {}
  for i, t in ipairs(texts) do toks[i] = type(t) == "string" and model:encode(t) or t end
  if measure == "l2" then
    for _, tokens in ipairs(toks) do
      model:run{tokens = tokens, attention = function(layer, head)
        return {method = {id = "l2_probe", title = "probe", family = "probe", phase = "both", params = {},
          run = function(prob)
            local o = sl.attn.dense(prob.q, prob.k, prob.v, {causal = true})
            local t, s = o:totable()[1], 0
            for _, row in ipairs(t) do
              local r = 0
              for _, x in ipairs(row) do r = r + x * x end
              s = s + math.sqrt(r)
            end
            imp[layer][head] = imp[layer][head] + s / #t / #toks
            return {o = o}
          end}}
      end}
    end
  elseif measure == "ablation" or measure == "kl" then
    for _, tokens in ipairs(toks) do
      local base = score(model, tokens, nil)
      for l = 0, L - 1 do
        for h = 0, H - 1 do
          local nll, kl = score(model, tokens, Hd.schedule({[l] = {[h] = true}}))
          -- |ΔNLL| per text, then the mean (the card takes |.| per example)
          imp[l][h] = imp[l][h] + (measure == "kl" and kl or math.abs(nll - base)) / #toks
        end
      end
    end
  else
    sl.fail("heads.importance: measure must be 'ablation', 'kl' or 'l2', found '%s'", tostring(measure))
  end
  if opts.normalize then
    for l = 0, L - 1 do
      local n2 = 0
      for h = 0, H - 1 do n2 = n2 + imp[l][h] ^ 2 end
      n2 = math.sqrt(n2)
      if n2 > 0 then for h = 0, H - 1 do imp[l][h] = imp[l][h] / n2 end end
    end
  end
  return imp
end

--- The `count` least important heads over all layers (ties: lower layer,
--- then lower head), as {[layer] = {[head] = true}}.
function Hd.lowest(imp, count)
  local all = {}
  for l, hs in pairs(imp) do for h, s in pairs(hs) do all[#all + 1] = {l, h, s} end end
  table.sort(all, function(a, b)
    if a[3] ~= b[3] then return a[3] < b[3] end
    if a[1] ~= b[1] then return a[1] < b[1] end
    return a[2] < b[2]
  end)
  local out = {}
  for i = 1, math.min(count, #all) do
    local l, h = all[i][1], all[i][2]
    out[l] = out[l] or {}
    out[l][h] = true
  end
  return out
end

return Hd
