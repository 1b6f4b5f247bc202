-- TriangleMix: A Lossless and Efficient Attention Pattern for Long Context
-- Prefilling — card: triangle_mix.
-- Card steps implemented:
--   1. layer schedule: a problem with layer < starting_layer runs dense
--      causal attention (as one full block mask); otherwise (and when the
--      problem names no layer) Triangle attention. For a model, use
--      M.schedule(p) (a sl.assign.layers schedule), since model hooks do not
--      pass the layer to the problem;
--   2. Triangle mask: sinks j < n_init, window 0 <= i - j < n_local, and the
--      last min(n_last, n - 1) query positions see every key, ∩ causal;
--   3. executor: one attn.block_sparse pass over the triangle mask. The
--      reference runs the A-shape band and a dense last-row slab and
--      concatenates rows; the rows are disjoint, so one pass over the union
--      is the same computation.
-- Not here: TriangleMix + dynamic methods in shallow layers (step 5; give a
-- schedule with sl.assign.layers).
-- Unknowns chosen: none; defaults are the tri_mix ones (8, 512, 128, 16).
local sl = require "sparselab"
local recipe = require "sparselab.recipe"

local function mask_for(prob, p)
  if prob.layer ~= nil and prob.layer < p.starting_layer then
    return recipe.materialize(sl.mask.causal(), prob, p)
  end
  return recipe.materialize(sl.mask.triangle{n_init = p.n_init, n_local = p.n_local, n_last = p.n_last}, prob, p)
end

local M = {
  id = "triangle_mix",
  card = "triangle_mix",
  title = "TriangleMix: A Lossless and Efficient Attention Pattern for Long Context Prefilling",
  family = "static-pattern",
  phase = "prefill",
  causal_only = true,
  summary = "Dense shallow layers; deep layers keep sinks + a local window, and the last n_last rows see everything.",
  knob = "n_local",
  params = recipe.block_params{
    n_init = {default = 8, min = 0, int = true, doc = "sink tokens"},
    n_local = {default = 512, min = 0, int = true, doc = "window including the query itself"},
    n_last = {default = 128, min = 0, int = true, doc = "last query rows that see every key"},
    starting_layer = {default = 16, min = 0, int = true, doc = "first layer running Triangle attention"},
  },
  ops = {"attn.block_sparse"},
  checks = {"output and density equal an independent reference", "n_last >= n equals dense",
    "layer < starting_layer equals dense", "last n_last rows equal dense rows",
    "rows before the last n_last equal streaming_llm (A-shape) rows"},
  mask = mask_for,
  run = recipe.block_sparse_run(mask_for),
}

--- A model schedule: layers < starting_layer dense, the others triangle_mix
--- with params p (a table; defaults when nil).
function M.schedule(p)
  local sp = {}
  for k, v in pairs(p or {}) do sp[k] = v end
  local l0 = sp.starting_layer or M.params.starting_layer.default
  local t = {default = {method = "triangle_mix", params = sp}}
  for l = 0, l0 - 1 do t[l] = "dense" end
  return require("sparselab.assign").layers(t)
end

return M
