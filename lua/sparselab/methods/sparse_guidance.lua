-- Guiding Token-Sparse Diffusion Models (Sparse Guidance, SG) — card:
-- sparse_guidance. The card's method is model-level (a token-sparse network
-- run twice); here it is read at the attention level, the one place a
-- single-layer problem can show it:
--   1-2. the same attention evaluated twice with token sparsity: a strong
--        branch that drops a fraction gamma_strong of the key/value tokens
--        and a weak branch that drops gamma_weak > gamma_strong (one seeded
--        draw per token, the same for both branches, so the weak branch's
--        tokens are a subset of the strong one's; text tokens are never
--        dropped when the problem has a layout);
--   3. guidance: O = O_weak + omega·(O_strong - O_weak) (the CFG form with the
--      weak sparse branch in place of the unconditional one);
--   4. cost: both branches' executed pairs (stats.flops of both passes).
-- Readings: L is the strong branch's log-sum-exp (guidance has no
-- normaliser of its own). Not here: the model-level token dropping (all
-- layers, re-inserted tokens) and the learned mask token — a model-level
-- experiment (sl.model) would be needed. There is no estimator: tokens are
-- dropped at random by design, so the "score-blind estimator" check of the
-- other cards does not apply; the tests check the card's identities and
-- that guidance extrapolates away from the weak branch.
local sl = require "sparselab"

local M = {}
local ID = "sparse_guidance"

--- One branch: attention over the keys kept at drop rate gamma.
function M.branch(prob, p, gamma)
  local n_q, n_k = prob.q:shape()[2], prob.k:shape()[2]
  local pat = sl.mask.drop{rate = gamma, seed = p.seed, shared = true, causal = prob.causal}
  if prob.layout and prob.layout.text > 0 then
    local lay = prob.layout
    local cols = {}
    for j = 0, lay.n - 1 do if lay:is_text(j) then cols[#cols + 1] = j end end
    pat = pat + sl.mask.dense_cols{cols = cols, causal = prob.causal}
  end
  if prob.causal then pat = pat * sl.mask.causal() end
  local mask = pat:materialize{n_q = n_q, n_k = n_k, bq = p.block, bk = p.block}
  local o, lse = sl.attn.block_sparse(prob.q, prob.k, prob.v, mask, {backend = prob.backend})
  return o, lse, mask, sl.op_flops("attn.block_sparse", prob.q, prob.k, prob.v, mask, {})
end

--- O_weak + omega (O_strong - O_weak), elementwise (in Lua: no op computes
--- a linear combination of two outputs).
function M.guide(o_strong, o_weak, omega)
  local H, n = o_strong:shape()[1], o_strong:shape()[2]
  local rows = math.max(1, 262144 // o_strong:shape()[3])   -- chunks well inside totable's limit
  local heads = {}
  for h = 1, H do
    local parts = {}
    for r0 = 1, n, rows do
      local len = math.min(rows, n - r0 + 1)
      local s = o_strong:narrow(1, h, 1):narrow(2, r0, len):totable()
      local w = o_weak:narrow(1, h, 1):narrow(2, r0, len):totable()
      for i = 1, len do
        local rs, rw = s[1][i], w[1][i]
        for c = 1, #rs do rs[c] = rw[c] + omega * (rs[c] - rw[c]) end
      end
      parts[#parts + 1] = sl.tensor(s)
    end
    heads[h] = #parts == 1 and parts[1] or sl.cat(parts, 2)
  end
  return #heads == 1 and heads[1] or sl.cat(heads, 1)
end

local function run(prob, p)
  if p.gamma_strong > p.gamma_weak then
    sl.fail("%s: gamma_strong = %g must not exceed gamma_weak = %g", ID, p.gamma_strong, p.gamma_weak)
  end
  local t0 = sl.time()
  local os, ls, ms, fs = M.branch(prob, p, p.gamma_strong)
  local ow, _, mw, fw = M.branch(prob, p, p.gamma_weak)
  local o = M.guide(os, ow, p.omega)
  local t1 = sl.time()
  local causal = prob.causal
  return {o = o, lse = ls, mask = ms, stats = {flops = fs + fw,
    density = (ms:density(causal) + mw:density(causal)), density_strong = ms:density(causal),
    density_weak = mw:density(causal), execute_ms = (t1 - t0) * 1e3, estimate_ms = 0}}
end

M.id = ID
M.card = ID
M.title = "Guiding Token-Sparse Diffusion Models"
M.family = "token-sparsity"
M.phase = "prefill"
M.summary = "Two token-sparse passes of the same attention (strong: few tokens dropped, weak: many), combined CFG-style."
M.knob = "gamma_weak"
M.knob_direction = -1
M.params = {
  gamma_strong = {default = 0, min = 0, max = 1, doc = "fraction of key tokens the strong branch drops"},
  gamma_weak = {default = 0.5, min = 0, max = 1, doc = "fraction of key tokens the weak branch drops"},
  omega = {default = 1.5, min = -100, max = 100, doc = "guidance scale"},
  seed = {default = 1, min = 0, max = 1 << 30, int = true, doc = "seed of the token draw"},
  block = {default = 64, min = 1, max = 4096, int = true, doc = "executor block size"},
}
M.ops = {"attn.block_sparse"}
M.checks = {"gamma_strong = gamma_weak gives the strong branch for any omega", "omega = 1 gives the strong branch",
  "text tokens are never dropped", "gamma_strong = 0 and omega = 1 equal dense"}
M.workload = "video"       -- benchmarked on the video workload (bench_video)
M.run = run
-- No estimator: a reuse step runs both branches again.
M.reuse = function(prob, p) return run(prob, p) end

return M
