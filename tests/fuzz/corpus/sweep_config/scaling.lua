-- scaling.lua — methods × compression × sequence length on the structured
-- synthetic workload (sinks + locality + needles; 4 query / 2 KV heads,
-- head_dim 64), for experiments/scaling_sweep.lua. Compression C = 1/density
-- in {2, 3.3, 5, 10, 20}: each point solves the method's knob for the target
-- density at its length. 2 methods x 5 targets x 4 lengths x 2 seeds + dense
-- = 88 points.
--   sparselab sweep configs/sweeps/scaling.lua --db scaling.db --workers 2
return {
  name = "scaling",
  methods = {
    "dense",
    {id = "sliding_window", targets = {density = {0.5, 0.3, 0.2, 0.1, 0.05}}, params = {bq = 32, bk = 32}},
    {id = "streaming_llm", targets = {density = {0.5, 0.3, 0.2, 0.1, 0.05}}, params = {n_init = 4, bq = 32, bk = 32}},
  },
  workloads = {{name = "synthetic", heads = 4, kv_heads = 2, d = 64}},
  sizes = {512, 1024, 2048, 4096},
  seeds = {1, 2},
  timeout = 120,
}
