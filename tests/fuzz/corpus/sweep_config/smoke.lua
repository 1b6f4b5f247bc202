-- smoke.lua — a small sweep that runs in seconds: two static-pattern methods
-- at three budgets and at two matched densities, against dense, on small
-- synthetic workloads (2 sizes x 2 seeds). 2 x 2 x (1 + 3 + 3 + 2) = 36 points.
--   sparselab sweep configs/sweeps/smoke.lua --db smoke.db --workers 2
return {
  name = "smoke",
  methods = {
    "dense",
    {id = "sliding_window", budgets = {32, 64, 128}, params = {bq = 16, bk = 16}},
    {id = "streaming_llm", budgets = {32, 64, 128}, params = {n_init = 4, bq = 16, bk = 16}},
    {id = "streaming_llm", targets = {density = {0.25, 0.5}}, params = {n_init = 4, bq = 16, bk = 16}},
  },
  workloads = {
    {name = "synthetic", heads = 4, kv_heads = 2, d = 64},
  },
  sizes = {256, 512},
  seeds = {1, 2},
  timeout = 60,
}
