-- faults.lua — points that crash (SIGSEGV), raise an error and hang (past
-- --timeout) among points that succeed: 2 seeds x 6 settings = 12 points.
-- Needs SPARSELAB_TEST_METHODS=1.
return {
  methods = {"dense", {id = "sliding_window", budgets = {8, 16}}, "test_crash", "test_error",
    {id = "test_sleep", budgets = {30}}},
  workloads = {{name = "synthetic", heads = 2, kv_heads = 1, d = 16}},
  sizes = {64},
  seeds = {1, 2},
}
