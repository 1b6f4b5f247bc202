-- isoflops.lua — Question: at equal total FLOPs, is it better to read a short
-- context densely or a long context sparsely? On the shipped TinyStories 260K
-- model, the mean NLL of the last 64 tokens of each shipped text is measured
-- (a) with dense attention over only the last L tokens (denser-short) and
-- (b) with streaming_llm over the whole text (sparser-long), its window
-- solved so that the attention pairs it executes do not exceed (a)'s.
-- Total FLOPs — 2·params per token processed plus 4·head_dim FLOPs per
-- attention pair per head and layer (a static mask has no estimator cost) —
-- are recorded for both, with whether (b) fits (a)'s total: on a model this
-- small the per-token linear layers dominate, so reading more tokens costs
-- more than any attention saving can buy back, and the table says so.
-- Cards: streaming_llm, sparse_frontier (step 5, isoFLOPS). Writes to the
-- database given as the first argument (default isoflops.db).
local sl = require "sparselab"

local data = "experiments/data/tinystories260k"
local db, run_id = sl.experiment{db = arg and arg[1] or "isoflops.db", seed = 1, config = {tail = 64}}
local m = sl.model.load(data .. "/model.bin")
local c = m.cfg
local qd, kd = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
local params = c.vocab_size * c.dim + c.dim + c.n_layers * (2 * c.dim + c.dim * qd + 2 * c.dim * kd + qd * c.dim +
  3 * c.dim * c.hidden_dim)
local TAIL = 64

local function flops(tokens, pairs)
  return 2 * params * tokens + 4 * c.head_dim * c.n_heads * c.n_layers * pairs
end

-- mean NLL of the last TAIL next-token predictions of `tokens` under logits
local function tail_nll(logits, tokens)
  local n, total = #tokens, 0
  local rows = logits:narrow(1, n - TAIL, TAIL):totable()
  for i, row in ipairs(rows) do
    local mx = -math.huge
    for _, x in ipairs(row) do mx = math.max(mx, x) end
    local z = 0
    for _, x in ipairs(row) do z = z + math.exp(x - mx) end
    total = total - (row[tokens[n - TAIL + i] + 1] - mx - math.log(z))
  end
  return total / TAIL
end

local function streaming_pairs(n, n_local, n_init)
  local kept = 0
  for i = 0, n - 1 do kept = kept + math.min(i + 1, n_local) + math.max(0, math.min(n_init, i + 1 - n_local)) end
  return kept
end

db:begin()
local rows = {}
for _, name in ipairs(sl.listdir(data .. "/texts")) do
  local f = assert(io.open(data .. "/texts/" .. name, "rb"))
  local tokens = m:encode(f:read("a"))
  f:close()
  local n = #tokens
  for _, L in ipairs{96, 128, 192, 256} do
    local short = {}
    for i = n - L, n do short[#short + 1] = tokens[i] end -- L + 1 tokens: the last TAIL targets lie inside
    local budget = flops(#short, #short * (#short + 1) / 2)
    local dense_nll = tail_nll(m:run{tokens = short}, short)
    -- the largest window whose attention pairs stay within the short run's
    local short_pairs = #short * (#short + 1) / 2
    local lo, hi = 1, n
    while lo < hi do
      local mid = (lo + hi + 1) // 2
      if streaming_pairs(n, mid, 4) <= short_pairs then lo = mid else hi = mid - 1 end
    end
    local spec = {method = "streaming_llm", budget = lo, params = {n_init = 4, bq = 16, bk = 16}}
    local sparse_nll = tail_nll(m:run{tokens = tokens, attention = spec}, tokens)
    local full_nll = tail_nll(m:run{tokens = tokens}, tokens)
    for _, r in ipairs{
      {method = "dense", setting = "short", L = #short, window = nil, nll = dense_nll, f = budget},
      {method = "streaming_llm", setting = "long", L = n, window = lo, nll = sparse_nll,
        f = flops(n, streaming_pairs(n, lo, 4))}} do
      db:record{run_id = run_id, method = r.method, params = {setting = r.setting, window = r.window, n_init = 4},
        workload = "isoflops:" .. name, workload_params = {text = name, L_short = L, tail = TAIL}, n_q = r.L,
        n_k = r.L, heads = c.n_heads, kv_heads = c.n_kv_heads, head_dim = c.head_dim, backend = "cpu",
        budget = L, metrics = {tail_nll = r.nll, total_flops = r.f, full_dense_tail_nll = full_nll,
          fits_total = r.f <= budget and 1 or 0}}
    end
  end
end
db:commit()
db:finish_run(run_id, "ok")
local out = db:query([[
  SELECT r.budget AS L_short, r.method, avg(n_q) AS context,
         avg((SELECT value FROM metric WHERE result_id = r.id AND name = 'total_flops')) AS flops,
         avg((SELECT value FROM metric WHERE result_id = r.id AND name = 'tail_nll')) AS tail_nll,
         avg((SELECT value FROM metric WHERE result_id = r.id AND name = 'full_dense_tail_nll')) AS full_dense,
         min((SELECT value FROM metric WHERE result_id = r.id AND name = 'fits_total')) AS fits_total
    FROM result r WHERE r.run_id = ? GROUP BY r.budget, r.method ORDER BY r.budget, r.method]], run_id)
print("Mean NLL of the last 64 tokens of the 8 shipped texts: dense over the last L tokens vs streaming_llm over")
print("the whole text with at most as many attention pairs; fits_total = 1 when its total FLOPs also fit")
print(sl.report.table(out, out.columns))
db:close()
