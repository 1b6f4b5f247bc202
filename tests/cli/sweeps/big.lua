-- big.lua — the sweep tests' main config: 224 fast points (tiny synthetic
-- workloads) of real methods: 16 workloads (2 sizes x 8 seeds) x 14 settings.
methods = {
  "dense",
  {id = "sliding_window", budgets = {4, 8, 16, 32, 48}, params = {bq = 16, bk = 16}},
  {id = "streaming_llm", budgets = {8, 16, 32, 64}, params = {n_init = {2, 4}, bq = 16, bk = 16}},
}
workloads = {{name = "synthetic", heads = 2, kv_heads = 1, d = 16}}
sizes = {64, 128}
seeds = {1, 2, 3, 4, 5, 6, 7, 8}
