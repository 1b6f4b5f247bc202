-- Efficient Long-Range Transformers: You Need to Attend More, but Not
-- Necessarily at Every Layer (MASFormer) — card: masformer.
-- Card steps implemented:
--   1. full layers F: layer l is full iff full_every > 0 and
--      l % full_every == 0 (a problem without a layer is a sparse layer);
--   2. other layers: causal sliding window of `span` keys (the query
--      included) — attn.block_sparse over mask.window(span);
--   4. FLOPs are the executor's (full layers: the causal mask's).
-- Not here: training with the schedule (step 3) and the decode cache bound.
-- For a model use M.schedule(p, n_layers) (sl.assign.layers).
-- Unknowns chosen: placement of F (every full_every-th layer from layer 0),
-- |F| = 1/4 of the layers (full_every = 4, from "up to 75% compute
-- reduction"), sparse kind = sliding window, span = 1024.
local sl = require "sparselab"
local recipe = require "sparselab.recipe"

local function is_full(p, layer)
  return layer ~= nil and p.full_every > 0 and layer % p.full_every == 0
end

local function mask_for(prob, p)
  if is_full(p, prob.layer) then return recipe.materialize(sl.mask.causal(), prob, p) end
  return recipe.materialize(sl.mask.window{w = p.span}, prob, p)
end

local M = {
  id = "masformer",
  card = "masformer",
  title = "Efficient Long-Range Transformers: You Need to Attend More, but Not Necessarily at Every Layer",
  family = "static-pattern",
  phase = "both",
  causal_only = true,
  summary = "Full causal attention in every full_every-th layer, a sliding window of span keys elsewhere.",
  knob = "span",
  params = recipe.block_params{
    span = {default = 1024, min = 1, int = true, doc = "keys of the sparse layers' window, query included"},
    full_every = {default = 4, min = 0, int = true, doc = "layer l is full when l % full_every == 0 (0: none)"},
  },
  ops = {"attn.block_sparse"},
  checks = {"output and density equal an independent reference", "full layer equals dense",
    "span >= n equals dense"},
  mask = mask_for,
  run = recipe.block_sparse_run(mask_for),
}

--- A model schedule over n_layers layers: full layers dense, the others
--- masformer with params p.
function M.schedule(p, n_layers)
  local sp = {}
  for k, v in pairs(p or {}) do sp[k] = v end
  local every = sp.full_every or M.params.full_every.default
  local t = {default = {method = "masformer", params = sp}}
  if every > 0 then for l = 0, (n_layers or 0) - 1 do if l % every == 0 then t[l] = "dense" end end end
  return require("sparselab.assign").layers(t)
end

return M
