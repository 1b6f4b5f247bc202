-- k-sparse autoencoder on captured activations — card: k_sparse_autoencoder.
-- Kind: non-attention (sparselab.model_recipe); a trained side model: no model apply.
-- Card steps done: 3 TopK SAE (untied, ReLU on the kept latents; openai/sparse_autoencoder's
--   model) with the step-5 trainer (full-batch Adam, manual backward through mm.act_sparse).
-- Not done: effective rank (1), tied variant with k schedule (2), active-subspace init (4),
--   the dense-vs-sparse-attention analysis (6).
local MR = require "sparselab.model_recipe"
return MR.recipe{
  id = "k_sparse_autoencoder",
  title = "k-sparse autoencoder (TopK SAE) on the model's activations",
  summary = "Dictionary with exactly k active latents per token, trained on captured activations.",
  knob = "k",
  params = {k = {default = 16, min = 1, int = true, doc = "active latents per token"}},
  ops = {"act.topk", "mm.act_sparse"},
  checks = {"exactly k latents active per token", "k random latents reconstruct worse"},
  how = "sparselab.sae.train(X, {k =, latents =}) on activations captured with model.c:forward's site hook",
}
