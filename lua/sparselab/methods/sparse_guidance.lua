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

--- The keys a branch keeps (0-based, ascending): the shared drop draw plus
--- every text key. The draw is per key (shared = true: one for all heads and
--- query rows), so one query row of the pattern gives it: O(n).
function M.kept_cols(prob, p, gamma)
  local n_k = prob.k:shape()[2]
  local pat = sl.mask.drop{rate = gamma, seed = p.seed, shared = true, causal = false}
  if prob.layout and prob.layout.text > 0 then
    local lay = prob.layout
    local cols = {}
    for j = 0, lay.n - 1 do if lay:is_text(j) then cols[#cols + 1] = j end end
    pat = pat + sl.mask.dense_cols{cols = cols, causal = false}
  end
  local row = pat:materialize{n_q = 1, n_k = n_k, bq = 1, bk = p.block}:to_bits():totable()[1][1]
  local kept = {}
  for j = 1, n_k do if row[j] == 1 then kept[#kept + 1] = j - 1 end end
  return kept
end

--- The branch's block mask (the pairs a branch keeps; n_q × n_k bits, so for
--- tests and small problems only: the branch itself never builds it).
function M.branch_mask(prob, p, gamma)
  local n_q, n_k = prob.q:shape()[2], prob.k:shape()[2]
  local pat = sl.mask.drop{rate = gamma, seed = p.seed, shared = true, causal = prob.causal}
  if prob.layout and prob.layout.text > 0 then
    local lay = prob.layout
    local cols = {}
    for j = 0, lay.n - 1 do if lay:is_text(j) then cols[#cols + 1] = j end end
    pat = pat + sl.mask.dense_cols{cols = cols, causal = prob.causal}
  end
  if prob.causal then pat = pat * sl.mask.causal() end
  return pat:materialize{n_q = n_q, n_k = n_k, bq = p.block, bk = p.block}
end

--- One token-sparse pass: attention over the kept keys, memory O(n) (issue
--- 19: the block mask of a token drop held n² token bits). Not causal: one
--- index list of the kept keys for all rows (attn.token_sparse); causal: the
--- kept keys as columns of attn.lines (row p reads the kept keys <= p).
--- Returns o, lse, the kept pairs' density, the FLOPs.
function M.branch(prob, p, gamma)
  local n_q, n_k = prob.q:shape()[2], prob.k:shape()[2]
  local kept = M.kept_cols(prob, p, gamma)
  local be = {backend = prob.backend}
  if #kept == 0 then
    local hq, d = prob.q:shape()[1], prob.q:shape()[3]
    local lse = {}
    for h = 1, hq do lse[h] = {} for i = 1, n_q do lse[h][i] = -math.huge end end
    return sl.zeros({hq, n_q, d}), sl.tensor(lse), 0, 0
  end
  local idx = sl.tensor({kept}, "i32")
  if not prob.causal then
    local rpt, col = sl.tensor({{0, #kept}}, "i32"), sl.tensor(kept, "i32")
    local args = {rows_per_entry = n_q, backend = prob.backend}
    local o, lse = sl.attn.token_sparse(prob.q, prob.k, prob.v, rpt, col, args)
    return o, lse, #kept / n_k, sl.op_flops("attn.token_sparse", prob.q, prob.k, prob.v, rpt, col, args)
  end
  local offs = sl.zeros({1, 0}, "i32")
  local o, lse = sl.attn.lines(prob.q, prob.k, prob.v, idx, offs, be)
  local pairs, x = 0, 0
  for i = 0, n_q - 1 do
    local pos = n_k - n_q + i
    while x < #kept and kept[x + 1] <= pos do x = x + 1 end
    pairs = pairs + x
  end
  local causal_pairs = n_q * (n_k - n_q) + n_q * (n_q + 1) / 2
  return o, lse, pairs / causal_pairs, sl.op_flops("attn.lines", prob.q, prob.k, prob.v, idx, offs, be)
end

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
  local os, ls, ds, fs = M.branch(prob, p, p.gamma_strong)
  local ow, _, dw, fw = M.branch(prob, p, p.gamma_weak)
  local o = M.guide(os, ow, p.omega)
  local t1 = sl.time()
  return {o = o, lse = ls, stats = {flops = fs + fw,
    density = ds + dw, density_strong = ds,
    density_weak = dw, execute_ms = (t1 - t0) * 1e3, estimate_ms = 0}}
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
M.ops = {"attn.token_sparse", "attn.lines"}
M.checks = {"gamma_strong = gamma_weak gives the strong branch for any omega", "omega = 1 gives the strong branch",
  "text tokens are never dropped", "gamma_strong = 0 and omega = 1 equal dense"}
M.workload = "video"       -- benchmarked on the video workload (bench_video)
M.run = run
-- No estimator: a reuse step runs both branches again.
M.reuse = function(prob, p) return run(prob, p) end

return M
