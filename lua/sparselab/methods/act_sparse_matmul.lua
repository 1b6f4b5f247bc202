-- Activation-sparse matmul (skip zero activation rows/columns) — card: act_sparse_matmul.
-- Kind: non-attention (sparselab.model_recipe); a kernel card: no model apply of its own (the
-- activation-sparsity cards topk_activation / channel_threshold / temporal_delta produce the
-- zeros it skips; sparselab.actsparse counts the FLOPs it executes for the down projection).
-- Card steps done: 1 input-sparse executor (mm.act_sparse), 3 tile union on CPU (a weight row
--   loaded once per 8-row tile if any row uses it), 4 delta mode (with act.delta).
-- Session 3: the runner runs w2 through mm.act_sparse on the zeroed activations
--   (sparselab.runexec; equal to the dense product, timed).
-- Session 3c: step 5 half: `sparselab bench` measures rho* per (T, shape, backend) (rows
--   mm.act_sparse at densities 2..50 %, row mm.act_crossover, sparselab.bench_mm) and --db stores
--   them; output-sparse mode (2) is mm.out_sparse (session 3).
-- Session 4: step 5 done: the runner dispatches on the stored rho* (sparselab.runexec
--   E.crossover_from_store reads the newest mm.act_crossover rows of w2's shape and the
--   backend per row count T; sl_model_exec_set_crossover: an act product whose activation
--   density exceeds its T's rho* runs as the dense sgemm, counted in stats over_rho; nothing
--   stored: min_macs alone decides, the earlier rule). Test: tests/lua/test_act_crossover.lua.
-- Not done: rho* per device beyond the backend name (the bench stores no CPU model key).
local MR = require "sparselab.model_recipe"
return MR.recipe{
  id = "act_sparse_matmul",
  title = "Activation-sparse matmul: read only the weight rows of nonzero activations",
  summary = "x . Wᵀ touching only the weight columns whose activation is nonzero.",
  params = {},
  ops = {"mm.act_sparse"},
  checks = {"equals the dense matmul to 1e-5 relative", "FLOPs count the nonzeros",
    "the runner follows the stored rho*"},
  how = "sl.mm.act_sparse(x, w) (a kernel; in the model via topk_activation / channel_threshold / temporal_delta)",
}
