--- sparselab.runexec — the model runner's sparse executors (issue 17,
--- session 3). The runner hands each linear product (wq, wk, wv, wo, w1,
--- w3, w2 of every layer) to an executor (core/model/exec.c): the dense
--- sgemm, mm.nm (N:M-compressed weight), mm.bitmap (bitmap-compressed
--- weight) or mm.act_sparse (the product's zero activations skipped; w2
--- behind an ffn_hidden hook that zeroes units), and times every product.
local sl = require "sparselab"

local E = {}
E.KINDS = {"wq", "wk", "wv", "wo", "w1", "w3", "w2"}
E.FFN = {"w1", "w3", "w2"}

--- Sets the formats of model m (a sparselab.model): spec.weights is the
--- format of every pruned linear ("dense", "nm", "bitmap", "auto"; n, m for
--- "nm"; threshold for "auto"), spec.kinds the weights it applies to (default
--- all seven), spec.act = true runs w2 through mm.act_sparse. spec.backend
--- picks the executors' backend (default cpu); spec.min_macs: products with
--- fewer multiply-adds run as the dense sgemm (stats' small counts them);
--- spec.crossover: mm.act_sparse's stored rho* (see E.crossover_from_store):
--- act products whose activation density is above it run dense (over_rho).
function E.use(m, spec)
  spec = spec or {}
  m.c:exec_backend(spec.backend or "cpu")
  if spec.threshold then m.c:exec_threshold(spec.threshold) end
  -- spec.min_macs: products below it stay the dense sgemm (default in C; 0: never)
  if spec.min_macs then m.c:exec_min_macs(spec.min_macs) end
  for _, k in ipairs(spec.kinds or E.KINDS) do
    m.c:exec_set(-1, k, spec.weights or "dense", spec.n, spec.m)
  end
  if spec.act then m.c:exec_set(-1, "w2", "act") end
  -- spec.crossover: the stored rho* (a store or its path: E.crossover_from_store for w2's shape
  -- and spec.backend) or a list {{rows =, rho =}, ...}: act products above it run dense; none
  -- stored: only min_macs decides (the earlier rule)
  if spec.crossover then
    local pts = spec.crossover
    if type(pts) ~= "table" then -- a path or an open store
      pts = E.crossover_from_store(pts, {backend = spec.backend or "cpu", nearest = spec.crossover_nearest}, m)
    end
    m.c:exec_crossover(pts)
    E.last_crossover = pts
  end
  -- spec.spark = {k =, r =, score = "gate_up" | "gate"}: w1 and w3 through Spark's predictor
  -- (act.spark_score, act.topk) and mm.out_sparse over the selected units (topk_activation 4)
  if spec.spark then
    local sp = spec.spark
    m.c:exec_spark(-1, sp.k, sp.r or 0, (sp.score or "gate_up") == "gate_up")
  end
  -- spec.gate = {[layer] = theta [hidden]}: w3 output-sparse on |silu(g)| >= theta (CATS / CHESS)
  for l, theta in pairs(spec.gate or {}) do m.c:exec_gate(l, theta) end
end

--- The measured crossover densities rho* of mm.act_sparse stored in SQLite
--- by `sparselab bench --db` (rows "mm.act_crossover", metric
--- crossover_density, card act_sparse_matmul step 5) for one (shape,
--- backend): db is a store (sl.store.open) or a path; o = {backend = "cpu",
--- N =, K =} with the bench's naming (x [T, K] . W^T [K, N]; the runner's w2
--- is K = hidden_dim, N = dim, its defaults; o.nearest = true: the stored
--- shape closest in N . K on a log scale when that one was not measured).
--- Per row count T the newest stored value. Returns {{rows = T, rho = rho*}, ...} ascending in T ({}
--- when none is stored).
function E.crossover_from_store(db, o, m)
  o = o or {}
  local own = type(db) == "string"
  if own then db = sl.store.open(db) end
  local N = o.N or (m and m.cfg.dim)
  local K = o.K or (m and m.cfg.hidden_dim)
  if o.nearest then
    -- the measured shape closest in N . K (log scale) stands in for an unmeasured one
    local shapes = db:query([[SELECT DISTINCT json_extract(r.params_json, '$.N') AS n,
      json_extract(r.params_json, '$.K') AS k FROM result r
      WHERE r.method = 'mm.act_crossover' AND r.status = 'ok' AND r.backend = ?]], o.backend or "cpu")
    local best, bd = nil, math.huge
    for _, sh in ipairs(shapes) do
      local dd = sh.n and sh.k and math.abs(math.log(sh.n * sh.k) - math.log(N * K)) or math.huge
      if dd < bd then best, bd = sh, dd end
    end
    if best then N, K = best.n, best.k end
  end
  local rows = db:query([[SELECT r.n_k AS rows, d.value AS rho FROM result r
    JOIN metric d ON d.result_id = r.id AND d.name = 'crossover_density'
    WHERE r.method = 'mm.act_crossover' AND r.status = 'ok' AND r.backend = ?
      AND json_extract(r.params_json, '$.N') = ? AND json_extract(r.params_json, '$.K') = ?
    ORDER BY r.id DESC]], o.backend or "cpu", N, K)
  if own then db:close() end
  local seen, out = {}, {}
  for _, r in ipairs(rows) do
    local t = math.tointeger(r.rows)
    if t and not seen[t] and r.rho then
      seen[t] = true
      out[#out + 1] = {rows = t, rho = r.rho}
    end
  end
  table.sort(out, function(a, b) return a.rows < b.rows end)
  return out
end

--- Back to the runner's untimed dense sgemm.
function E.off(m) m.c:exec_off() end

--- Runs the sequences (lists of ids) through m with the site hook, and
--- returns the executors' stats: per kind {seconds, calls, rows, flops}, plus
--- ffn = {seconds, rows, flops} summed over w1, w3, w2, and ffn_us_per_token.
function E.time(m, seqs, site)
  m.c:exec_stats(true)
  local tokens = 0
  for _, ids in ipairs(seqs) do
    local st <close> = m.c:state(#ids)
    m.c:forward(ids, st, nil, site)
    tokens = tokens + #ids
  end
  local s = m.c:exec_stats(true)
  local f = {seconds = 0, flops = 0, rows = 0}
  for _, k in ipairs(E.FFN) do
    f.seconds, f.flops = f.seconds + s[k].seconds, f.flops + s[k].flops
  end
  f.rows = tokens
  s.ffn = f
  s.ffn_us_per_token = 1e6 * f.seconds / tokens
  return s
end

return E
