-- Sparse token update (gather -> compute -> scatter; Focus-DETR q_sparse with its nested cascade,
-- SparseViT's activation-magnitude score) — card: sparse_token_update.
-- Kind: non-attention (sparselab.model_recipe): acts on the model through the runner's attention
-- and site hooks (sparselab.tokenupdate).
-- Card steps done: 1 score = token magnitude mean_c |x_tc| of the block input (SparseViT's
--   act_mag, per token instead of per window; "attn" received-attention and score-blind "first" /
--   "random" as options), 2 one score vector, nested top-N_l sets with Focus-DETR's cascade
--   [1, .8, .6, .6, .4, .2] x rho (ties lower index), 4 q_sparse: only the selected rows query and
--   run the FFN, K/V = all tokens, 5 scatter replace: the other rows pass through bit-identical.
--   Step 3 (gather into a compact buffer) is realised by zeroing the skipped rows before W_o and
--   W_2 with token.scatter (replace; the runner has no row-subset executor): the same numbers; the
--   FLOPs of the compacted run are the updated share in stats. token.scatter (ref/cpu/CUDA) with
--   gather.rows is the card's gather -> compute -> scatter pair as ops.
-- Not done: window scores and window modes (w_sparse, axial), varlen packing, scatter "add",
--   Focus-DETR's top-down modulation and dual attention.
-- Reference code (mit-han-lab/sparsevit, detrex focus_detr) was not read; this follows the card.
local MR = require "sparselab.model_recipe"
return MR.recipe{
  id = "sparse_token_update",
  title = "Sparse token update: only the selected tokens are updated by each block (Focus-DETR / SparseViT)",
  summary = "From a layer on, only the top tokens by activation magnitude run attention queries and the FFN.",
  knob = "rho",
  params = {
    rho = {default = 0.5, min = 0, max = 1, doc = "share of tokens updated at the first sparse layer (x cascade)"},
    from = {default = 3, min = 0, int = true, doc = "first sparse layer (earlier layers are dense)"},
    scores = {default = "act_mag", doc = "act_mag | ffn_mag | attn | first | random"},
  },
  ops = {"score.rows", "reduce.heads", "reduce.columns", "attn.dense", "token.scatter"},
  checks = {"all tokens selected equals the dense model", "unselected rows bit-identical to the block input",
    "nested selection across layers", "activation magnitude beats first-k and random (NLL)"},
  how = "sparselab.tokenupdate.hooks(model, {rho =, from =}) -> attention and site hooks; sparselab.tokenupdate.nll",
  apply = function(m, p)
    local attention, site = require("sparselab.tokenupdate").hooks(m, {rho = p.rho, from = p.from, scores = p.scores})
    return {attention = attention, site = site}
  end,
}
