-- TidalDecode: Fast and Accurate LLM Decoding with Position Persistent
-- Sparse Attention — card: tidaldecode. Token selection at two layers of a
-- decode step, reused by the layers after them.
-- Card steps implemented:
--   1. layers below select_layer (s = 2) and the whole prefill: dense;
--   2. selection layer s: exact logits q.K/sqrt(d) (page.token_scores),
--      per query head top-k token indices (page.select over one-token pages),
--      saved in the decode state (st.saved = {layer, step, lists}); the layer
--      itself attends densely;
--   3. sparse layers: attend only to the saved indices (same head), exact
--      softmax over this layer's K, V at those positions (page.attend);
--   4. correction layer c (13): dense again, new top-k replace the saved set;
--   5. the saved set lives in the explicit state, recomputed every step at
--      layers s and c; a sparse layer without a selection of the same step
--      is an error.
-- Unknowns chosen: the current token is not forced into the set (the
-- reference relies on top-k; force_current = 1 adds it); per query head
-- sets (the reference's per-head top-k). Kernel level (one layer): the
-- problem's layer is the selection layer of its own step, so kernel-level
-- eval measures the oracle top-k at that layer; the reuse loss shows in the
-- model-level loop and in tests/lua/test_decode.lua.
-- Reference read (issue 20): DerrickYLJ/TidalDecode
--   src/tidal_build/modify_llama.py (llama_tidal_attention_forward,
--   enable_llama_tidal_attention), src/models/llama_tidaldecoding.py
--   (LlamaModel.forward carries pos_dict from layer to layer), src/enable_tidal.py
--   (defaults top_k 256, sparse_layer_start 2, correction_layer 13).
--   Matched: layers below the start and the prefill dense (SDPA); at the
--   start and correction layers torch.topk over each query head's logits
--   q.K/sqrt(d) (GQA keys repeated: per query head, as here), the layer
--   itself dense, the 0/1 mask saved; other layers mask_fill the rest with
--   the dtype's minimum and take the softmax over the kept tokens; k =
--   min(n, top_k); the current token not forced. Divergences: torch.topk's
--   order on equal logits is unspecified (here the lower position wins);
--   the masked logits are the dtype minimum, not -inf (the same softmax
--   unless every token is masked); enable_llama_tidal_attention's own default
--   correction layer is 9, enable_tidal's (the documented entry) 13 — the
--   default here — so `correction_layer = 9` gives the other one.
local sl = require "sparselab"
local decode = require "sparselab.decode"

local M = {
  id = "tidaldecode",
  card = "tidaldecode",
  title = "TidalDecode: Fast and Accurate LLM Decoding with Position Persistent Sparse Attention",
  family = "layer-reuse",
  phase = "decode",
  causal_only = true,
  summary = "Top-k tokens chosen by exact scores at two selection layers, reused by the layers after each.",
  knob = "budget",
  params = {
    budget = {default = 256, min = 1, int = true, doc = "tokens kept per head"},
    select_layer = {default = 2, min = 0, int = true, doc = "first selection layer s (layers below are dense)"},
    correction_layer = {default = 13, min = 0, int = true, doc = "re-selection layer c"},
    force_current = {default = 0, min = 0, max = 1, int = true, doc = "1: the current token always joins the set"},
    page = {default = 16, min = 1, int = true, doc = "page size of the decode cache"},
  },
  ops = {"page.token_scores", "page.select", "page.attend"},
  checks = {"budget >= cache length equals dense", "selection layers equal dense exactly",
    "the reused selection equals the saved one", "reuse beats first-k selection on peaked inputs"},
}

-- Top-k lists of q over the cache (scorer replaces the exact scores in tests).
local function select_tokens(cache, q, p, backend, scorer)
  local s = scorer and scorer(cache, q) or decode.token_scores(cache, q, {backend = backend})
  local lists = sl.page.select(s, {k = p.budget, last = p.force_current, backend = backend})
  return lists
end
M.select_tokens = select_tokens

function M.decode(st, ls, step, p, scorer)
  return decode.reuse_step(M.id, st, ls, step, p, p.select_layer,
    function(l) return l == p.select_layer or l == p.correction_layer end,
    function(cache, q, pp, backend) return select_tokens(cache, q, pp, backend, scorer) end)
end

--- Kernel level (one layer): a sparse layer selects for itself (the oracle
--- top-k of its own scores) and attends over the selection; the selection
--- and dense layers attend densely.
function M.run(prob, p)
  return decode.reuse_kernel_run(M, prob, p, prob.layer or p.select_layer + 1, p.select_layer,
    function(l) return l == p.select_layer or l == p.correction_layer end)
end

return M
