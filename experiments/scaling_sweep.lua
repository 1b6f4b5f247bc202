-- scaling_sweep.lua — Question: how does each static method's error grow with
-- compression, and does it depend on sequence length? Fits, per method, the
-- log-linear law log(rel_l2) = a + b_L·log L + b_C·log C (card sparse_frontier,
-- step 7, with rel_l2 in place of a task score) on the sweep of
-- configs/sweeps/scaling.lua, fitting on L <= 2048 and predicting L = 4096
-- (held-out extrapolation), with bootstrap CIs; then a power law
-- rel_l2 = a·C^b per method at the largest length.
-- Cards: sliding_window, streaming_llm, sparse_frontier.
--   sparselab run experiments/scaling_sweep.lua [DB (default scaling.db)] [WORKERS (default 2)]
local sl = require "sparselab"
local cli = require "sparselab.cli"

local db = arg and arg[1] or "scaling.db"
local workers = arg and arg[2] or "2"

cli.main({"sweep", "configs/sweeps/scaling.lua", "--db", db, "--workers", workers})

for _, method in ipairs{"sliding_window", "streaming_llm"} do
  print(string.format("\n== %s: log(rel_l2) = a + b_L log L + b_C log C, fit on L <= 2048, held out L = 4096", method))
  cli.main({"fit", db, "--law", "loglinear", "--x", "L,C", "--y", "ln(rel_l2)", "--link", "identity",
    "--where", string.format("method = '%s' AND rel_l2 > 0", method), "--heldout", "L:2048",
    "--bootstrap", "200", "--seed", "1"})
  print(string.format("\n== %s: rel_l2 = a * C^b at L = 4096", method))
  cli.main({"fit", db, "--law", "power", "--no-offset", "--y", "rel_l2",
    "--where", string.format("method = '%s' AND n_k = 4096", method), "--bootstrap", "200", "--seed", "1"})
end
print("\nfits are stored in the fit table: sparselab query " .. db .. " \"SELECT id, law, r2, params_json FROM fit\"")
