-- Token pruning between layers by attention score, with a KV keep list — card:
-- token_prune_attn_score (SparseVLM / VASparse / FastV-style raters on a text LM).
-- Kind: non-attention (sparselab.model_recipe): acts on the model through the runner's
-- attention hook (sparselab.tokenprune).
-- Card steps done: 1 raters = the last `probe` rows (the "last n rows" option), 2 s_j = mean over
--   heads, sum over raters of the softmax probabilities A[R, j] (score.rows on the gathered kept
--   tokens; only the |R| x N block), 3 ratio budget k = floor(r . V) or a fixed per-layer list,
--   4 top-k over the candidates (select.topk, ties lower index), prefix and rater tokens always
--   kept, order preserved, 5 layers > l see only the kept keys (attn.token_sparse with the keep
--   list; positions keep_original), several pruning layers.
-- Not done: text raters / head subset / RoPE de-bias / VASparse prior / neuron-match scores,
--   rank / cdf / elbow budgets, renumber positions, recycle (6), decode contrastive branch (7).
-- Reading for a text-only LM: "visual" candidates = tokens [prefix, N - probe); the card's clamp
--   k <= V - 1 is not applied so that k = V drops nothing.
-- Reference code (Gumpest/SparseVLMs modelling_sparse_llama.py) was not read: this follows the
--   card's description.
local MR = require "sparselab.model_recipe"
return MR.recipe{
  id = "token_prune_attn_score",
  title = "Token pruning by attention score (SparseVLM / FastV-style raters) with a KV keep list",
  summary = "At pruning layers keep the top-k context tokens by the raters' attention; later layers see only them.",
  knob = "ratio",
  params = {
    ratio = {default = 0.3, min = 0, max = 1, doc = "kept share of the candidate tokens at each pruning layer"},
    layer = {default = 0, min = 0, int = true, doc = "pruning layer (pruning acts on the layers after it)"},
    probe = {default = 32, min = 1, int = true, doc = "last rows that rate the candidates (never pruned)"},
    prefix = {default = 1, min = 0, int = true, doc = "first tokens never pruned (BOS)"},
  },
  ops = {"score.rows", "reduce.heads", "reduce.columns", "select.topk", "gather.rows", "attn.token_sparse"},
  checks = {"k = V leaves every later activation bit-identical", "scores from the |R| x V block equal those of the full attention matrix",
    "|K| = k, prefix and raters kept, order preserved", "attention scores beat first-k and random keeps (NLL)"},
  how = "sparselab.tokenprune.hook(model, {ratio =, layers =, probe =}) as the attention hook; sparselab.tokenprune.nll",
  apply = function(m, p)
    return {attention = require("sparselab.tokenprune").hook(m, {ratio = p.ratio, layers = {p.layer}, probe = p.probe,
      prefix = p.prefix})}
  end,
}
