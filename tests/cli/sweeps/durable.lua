-- durable.lua — 480 points of about 20 ms each (test_sleep) for the
-- durability loop (tests/cli/test_durability.sh): long enough that 20 and
-- more SIGKILLs of the parent land midway. Needs SPARSELAB_TEST_METHODS=1.
methods = {{id = "test_sleep", budgets = {0.02, 0.0201, 0.0202, 0.0203, 0.0204, 0.0205, 0.0206, 0.0207, 0.0208,
  0.0209, 0.021, 0.0211}}}
workloads = {{name = "synthetic", heads = 2, kv_heads = 1, d = 16}}
sizes = {32, 64}
seeds = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20}
