-- sparselab.model_recipe — the registry kind of the non-attention cards
-- (issue 17): methods that sparsify weights, FFN activations or tokens of the
-- model, not an attention problem. Their family is "non-attention" and their
-- phase "model"; they have no run(prob, p) (sl.eval on one of them fails with
-- a one-line message saying how to run it) and carry instead
--   model = {how = "one line: how to run it",
--            apply = function(m, p, calib) -> {attention =, site =, close =} | nil}
-- apply (where the card acts on the model) changes m's weights in place
-- (the caller snapshots and restores them: sparselab.prune) and returns the
-- hooks of m.c:forward(ids, st, attention, site) the card needs. Cards whose
-- product is a kernel or a trained side model (the sparse matmul executors,
-- the SAE) have no apply: `how` names the op or module.
-- Code that runs every method on attention problems skips this kind
-- (MR.is_model(m)).
local sl = require "sparselab"

local MR = {}

MR.FAMILY, MR.PHASE = "non-attention", "model"

function MR.is_model(m) return m.phase == MR.PHASE end

--- The method table of a non-attention recipe: t has id, card, title,
--- summary, params, ops, checks, how, apply (optional), knob (optional).
function MR.recipe(t)
  assert(t.id and t.title and t.how and t.params, "model_recipe: id, title, how and params are required")
  local id, how = t.id, t.how
  return {
    id = id, card = t.card or id, title = t.title, family = MR.FAMILY, phase = MR.PHASE,
    summary = t.summary, knob = t.knob, knob_direction = t.knob_direction, params = t.params,
    ops = t.ops or {}, checks = t.checks,
    model = {how = how, apply = t.apply},
    run = function() sl.fail("%s acts on the model, not on an attention problem: %s", id, how) end,
  }
end

--- Mean next-token NLL over seqs with method id applied to m (weights
--- restored afterwards); calib = calibration sequences (never the held-out ones).
function MR.nll(m, id, params, calib, seqs)
  local meth = sl.methods.get(id)
  if not (MR.is_model(meth) and meth.model.apply) then
    sl.fail("%s: not a model method with apply (%s)", tostring(id), meth.model and meth.model.how or "attention method")
  end
  local P = require "sparselab.prune"
  local snap = P.snapshot(m)
  local p = sl.registry.resolve(meth, params)
  local hooks
  local ok, res = pcall(function()
    hooks = meth.model.apply(m, p, calib) or {}
    local total, count = 0, 0
    for _, ids in ipairs(seqs) do
      local st <close> = m.c:state(#ids)
      local logits = m.c:forward(ids, st, hooks.attention, hooks.site)
      local c = sl.model_c.compare(logits, logits, ids)
      total, count = total + c.nll * c.n, count + c.n
    end
    return total / count
  end)
  if hooks and hooks.close then hooks.close() end -- runner state an apply installed (moe_split_route)
  P.restore(m, snap)
  if not ok then error(res, 0) end
  return res
end

return MR
