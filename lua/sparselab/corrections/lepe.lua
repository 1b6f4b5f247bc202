-- BiFormer: Vision Transformer with Bi-Level Routing Attention — LePE, the
-- local positional term of card biformer (step 5).
-- BiFormer adds a depthwise convolution of V (kernel side_dwconv = 5, 2-D on
-- the image grid, trained weights) to the attention output. Here, on token
-- sequences, the 1-D form (correct.lepe): O_i += alpha · Σ_t w_t ⊙ v_{p+t'}
-- over `kernel` taps ending at the query's position (causal) or centred on
-- it, zero padding outside the sequence. Without trained weights the closed
-- form is the box filter w_t = 1/kernel (the local mean of V); weights come
-- from a file when `weights` names one (a tensor [1 or Hq, kernel, head_dim],
-- or a safetensors file holding it as "w" or "lepe").
-- Not here: the 2-D (image grid) convolution. LePE is an additive branch of
-- the architecture, not an approximation of dense attention: with a full
-- mask O equals dense PLUS the term (the card's check), and it moves the
-- output away from dense unless the model was trained with it.
local sl = require "sparselab"

local function load_weights(path)
  local t = sl.load(path)
  if type(t) == "table" then t = t.w or t.lepe end
  if not t then sl.fail("lepe: %s holds no tensor 'w' or 'lepe'", path) end
  return t
end

return {
  id = "lepe",
  card = "biformer",
  title = "BiFormer LePE: local positional enhancement (depthwise convolution of V)",
  summary = "adds a depthwise 1-D convolution of V around each query position (box filter without weights)",
  params = {
    kernel = {default = 5, min = 1, max = 4095, int = true, doc = "taps (BiFormer side_dwconv = 5)"},
    alpha = {default = 1.0, min = -1e6, max = 1e6, doc = "multiplier of the local term (0: off)"},
    weights = {default = "", doc = "file with depthwise weights [1 or Hq, kernel, head_dim] ('' = box filter)"},
  },
  ops = {"correct.lepe"},
  checks = {"full mask: O equals dense plus the local term", "alpha = 0: no-op"},
  after = function(prob, p, base)
    local args = {kernel = p.kernel, alpha = p.alpha, causal = prob.causal ~= false and 1 or 0, backend = prob.backend}
    if p.weights ~= "" then args.w = load_weights(p.weights) end
    local o = sl.correct.lepe(base.o, prob.v, args)
    return {o = o, lse = base.lse, stats = {correction_flops = sl.op_flops("correct.lepe", base.o, prob.v, args)}}
  end,
}
