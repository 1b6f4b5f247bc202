-- ShadowLLM: predictor-based contextual sparsity (Akhauri et al., EMNLP
-- 2024) — card: head_neuron_predictor (heads only).
-- Card steps implemented:
--   1. importance criteria without autograd: "l2" (mean ‖o_h‖, forward only)
--      and "ablation" (|ΔNLL| of removing the head alone, the card's oracle
--      ablation; "kl" too), per (layer, head) and per prompt
--      (sparselab.heads.sample);
--   2. predictor: input the layer-1 queries of the last token (a linear image
--      of the state after the first layer: ShadowLLM's "b1e"), output L·H head
--      scores. The card's MLP (sparselab.heads.train_mlp; B1EPredModel of
--      abdelfattah-lab/shadow_llm emnlp_activation_predictor.py: fc(F ->
--      2048), ReLU, fc(2048 -> L·H); MSE; AdamW lr 1e-3, CosineAnnealingLR),
--      trained full-batch on CPU with a manual backward (matrix products by
--      mm.dense), features and targets standardised on the training set;
--      option "ridge" (sparselab.heads.train_predictor: a ridge map on the
--      residual over the static mean) kept for comparison
--      (sparselab.heads.train(samples, "mlp" | "ridge")). Evaluated by
--      Spearman ρ on held-out prompts (sparselab.heads.spearman;
--      experiments/head_predictor.lua, experiments/heads.lua). Divergences:
--      full batch instead of mini-batches, no train/validation early stop.
--   3. apply per layer: the floor(p·H) heads with the lowest predicted score
--      are masked (skipped, output 0) — sparselab.heads.per_layer + schedule;
--   4. the static variant (criterion averaged over calibration prompts, a
--      fixed mask): this recipe's run on an attention problem, with the l2
--      criterion of the problem's own heads (a stored static mask: use
--      sixteen_heads with its calibrate).
-- Not here: FFN neuron prediction and skipping (the runner has no FFN hook),
--   the gradient criteria (plainact, fisher, ...; sixteen_heads has the
--   head-mask gradient |∂L/∂ξ_h|), the b1eL / ble predictor styles.
-- Fidelity as sixteen_heads: masked heads output 0 (L = -inf).
-- Reference read (issue 20): abdelfattah-lab/shadow_llm
--   llm-interpret/lm-evaluation-harness/lm_eval/base.py (calculate_importance:
--   per prompt and (layer, head) the sum over tokens of |grad . act| of the
--   head's context output, "plainact", after one backward pass of the
--   continuation's loss; the first layers divided by all tokens, the last by
--   the label tokens), emnlp_activation_predictor.py (B1EPredModel:
--   Linear(E, 2048) + ReLU + Linear(2048, L.H); MSE, AdamW 1e-3, cosine
--   schedule, 100 epochs; Spearman on held-out prompts) and
--   lm_eval/models/opt.py (at inference the input is the first layer's
--   attention output of the last token, min-max normalised; prune_style
--   "perlayer" masks the int(head_percent_mask · H / 100) lowest predicted
--   heads of each layer — as here — "global" and "hybrid" rank across
--   layers, not here). Divergences (no option): the criterion needs
--   gradients (not available here: l2 and ablation instead); the predictor
--   is a ridge map from the layer-1 queries of the last token (a linear image
--   of the first layer's output) on a few dozen prompts, not the MLP.
local sl = require "sparselab"

local S = require "sparselab.methods.sixteen_heads"

local function keep_of(prob, p)
  local hq, hkv = prob.q:shape()[1], prob.k:shape()[1]
  -- the problem is one layer: per-layer masking of floor(p·H) heads
  local masked = math.floor(p.percent * hq + 1e-9)
  return (hq - masked) / hq, hkv
end

local function run(prob, p)
  local keep = keep_of(prob, p)
  local sp = {keep = keep, config = ""}
  return S.run_with(prob, sp, false)
end

return {
  id = "head_neuron_predictor",
  card = "head_neuron_predictor",
  title = "ShadowLLM: predictor-based contextual head sparsity (heads)",
  family = "head-level",
  phase = "both",
  summary = "Per-layer head masks from an importance criterion: predicted per prompt (sparselab.heads predictor, model level) or static (this run).",
  knob = "percent",
  knob_direction = -1,
  params = {
    percent = {default = 0.4, min = 0, max = 1, doc = "fraction of each layer's heads masked (head_percent_mask)"},
  },
  ops = {"attn.dense"},
  checks = {"0% masked equals dense", "per layer exactly floor(p·H) heads masked",
    "a predictor equal to the oracle gives Spearman 1 and the oracle mask",
    "the predicted mask removes a zero-importance head (logits unchanged) where a score-blind one does not"},
  run = run,
}
