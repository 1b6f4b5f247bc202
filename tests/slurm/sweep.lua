-- sweep.lua — the sweep of tests/slurm/test_slurm.sh: 24 points on small
-- synthetic workloads, a third of them test_sleep (SPARSELAB_TEST_METHODS=1)
-- so that a shard runs long enough to be cancelled midway.
return {
  name = "slurmtest",
  methods = {
    "dense",
    {id = "sliding_window", budgets = {32, 64}, params = {bq = 16, bk = 16}},
    {id = "streaming_llm", budgets = {32}, params = {n_init = 4, bq = 16, bk = 16}},
    {id = "test_sleep", budgets = {1, 1.5}},
  },
  workloads = {{name = "synthetic", heads = 2, kv_heads = 1, d = 32}},
  sizes = {128, 256},
  seeds = {1, 2},
  timeout = 60,
}
