-- slow.lua — 240 points of about 20 ms each (test_sleep), so a parent can be
-- killed midway. Needs SPARSELAB_TEST_METHODS=1.
methods = {{id = "test_sleep", budgets = {0.02, 0.021, 0.022, 0.023, 0.024, 0.025}}}
workloads = {{name = "synthetic", heads = 2, kv_heads = 1, d = 16}}
sizes = {32, 64}
seeds = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20}
