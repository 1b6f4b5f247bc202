-- quant_pages.lua — Question: when the paged KV cache holds int8 / int4 pages
-- INSTEAD of f32 K (and V) — one scale per page and channel, dequantised
-- inside page.attend_q — how much memory does the cache drop, and how close
-- do Quest's selection and page-sparse decode stay to the f32 cache?
-- Cards: quest (kv_bits / v_bits: issue 13, session 3; not a card step).
-- Memory: a synthetic cache of 8 KV heads, head_dim 128, N tokens, pages of
-- 16 (the issue's bench shape, N scaled to the 2-core box): resident bytes of
-- the cache (codes, scales, page metadata, the open page's f32 rows) against
-- the f32 cache, and K/V bytes read per attended token.
-- Fidelity: Q/K/V captured from the shipped TinyStories 260K model (5 layers,
-- 8 q / 4 kv heads, head_dim 8); the last STEPS rows of every layer decoded
-- one step at a time through Quest's cache at a budget of B tokens (pages of
-- 8): recall and rel_l2 against dense attention, rel_l2 against the same run
-- on the f32 cache, the overlap of the selected page lists with the f32
-- cache's (page recall), and the top-32 key overlap of q.k' (dequantised
-- keys) with q.k (token top-k recall, last row of every layer and head).
-- Model level: the runner's teacher-forced decode loop with Quest on the
-- quantised cache, KL to dense decoding.
-- Session 4: every mode also with zero points (kv_zero = 1: asymmetric
-- codes, per page and channel min and range), and the fidelity block on a
-- synthetic workload too (sl.synthetic, 512 tokens, 8 q / 4 kv heads, d 64).
-- rel_l2_vs_f32 at budget 4096 (every page) is the quantisation error alone.
--   sparselab run experiments/quant_pages.lua [DB] [--quick]
local sl = require "sparselab"
local decode = require "sparselab.decode"

local db_path, quick = "results.db", false
for _, a in ipairs(arg or {}) do
  if a == "--quick" then quick = true
  elseif a:sub(1, 2) == "--" then sl.fail("quant_pages: unknown option %s (expected --quick)", a)
  else db_path = a end
end
local N, STEPS, B, PAGE, PREFIX = quick and 2048 or 16384, quick and 8 or 32, 64, 8, 64
local MODES = {{0, 0, 0}, {8, 0, 0}, {8, 0, 1}, {8, 8, 0}, {8, 8, 1}, {4, 0, 0}, {4, 0, 1}, {4, 4, 0}, {4, 4, 1}}
local data = "experiments/data/tinystories260k"
local text_name = "01_red_kite"
local db, run_id = sl.experiment{db = db_path, seed = 1, config = {n = N, steps = STEPS, budget = B, page = PAGE,
  modes = MODES, text = text_name, quick = quick}}

-- memory at the bench shape
local k, v = sl.randn({8, N, 128}, {seed = 7}), sl.randn({8, N, 128}, {seed = 8})
local f32_bytes
db:begin()
for _, m in ipairs(MODES) do
  local st = decode.state("quest", {hq = 32, hkv = 8, d = 128, page = 16, quant = {k = m[1], v = m[2], z = m[3]}})
  local c = st:layer(0).cache
  c:append(k, v)
  local bytes = c:bytes()
  f32_bytes = f32_bytes or bytes
  db:record{run_id = run_id, method = "quest", params = {kv_bits = m[1], v_bits = m[2], kv_zero = m[3]}, workload = "memory",
    workload_params = {n = N, heads = 8, d = 128, page = 16}, phase = "decode", backend = "cpu",
    metrics = {bytes = bytes, ratio = bytes / f32_bytes, read_per_token = decode.token_bytes(c), kbits = m[1], vbits = m[2],
      zero = m[3]}}
  c:close()
end
db:commit()
k, v = nil, nil
collectgarbage()

local function top_overlap(a, b, kk)
  local function top(t)
    local idx = {}
    for j = 1, #t do idx[j] = j end
    table.sort(idx, function(x, y) return t[x] > t[y] or (t[x] == t[y] and x < y) end)
    local s = {}
    for j = 1, math.min(kk, #idx) do s[idx[j]] = true end
    return s
  end
  local sa, sb, hit, n = top(a), top(b), 0, 0
  for j in pairs(sb) do n = n + 1; if sa[j] then hit = hit + 1 end end
  return hit / n
end

-- fidelity on captured Q/K/V
local model = sl.model.load(data .. "/model.bin")
local f = assert(io.open(data .. "/texts/" .. text_name .. ".txt", "rb"))
local tokens = model:encode(f:read("a"))
f:close()
if quick then local t = {}; for i = 1, math.min(#tokens, 160) do t[i] = tokens[i] end; tokens = t end
local function fidelity(li, t, workload)
  local n, hq, hkv, d = t.q:shape()[2], t.q:shape()[1], t.k:shape()[1], t.q:shape()[3]
  local prob = sl.problem{q = t.q:narrow(2, n - STEPS + 1, STEPS), k = t.k, v = t.v, layer = 5}
  local base, base_all
  db:begin()
  for _, m in ipairs(MODES) do
    local p = {budget = B, page = PAGE, kv_bits = m[1], v_bits = m[2], kv_zero = m[3]}
    local r = sl.eval("quest", prob, {params = p})
    base = base or r
    -- every page read: the quantisation error alone
    local pa = {budget = 4096, page = PAGE, kv_bits = m[1], v_bits = m[2], kv_zero = m[3]}
    local ra = sl.eval("quest", prob, {params = pa})
    base_all = base_all or ra
    -- page lists and top-k keys of the last row against the f32 cache
    local qlast = t.q:narrow(2, n, 1)
    local c = decode.state("quest", {hq = hq, hkv = hkv, d = d, page = PAGE, quant = {k = m[1], v = m[2], z = m[3]}}):layer(0).cache
    local cf = decode.cache_from(t.k, t.v, PAGE)
    c:append(t.k, t.v)
    local quest = sl.methods.get("quest")
    local pr = sl.registry.resolve(quest, {budget = B, page = PAGE})
    local lq, lf = quest.page_step(c, qlast, pr, 5).pages:totable(), quest.page_step(cf, qlast, pr, 5).pages:totable()
    local hit, tot = 0, 0
    for h = 1, #lf do
      local set = {}
      for _, id in ipairs(lq[h][1]) do set[id] = true end
      for _, id in ipairs(lf[h][1]) do if id >= 0 then tot = tot + 1; if set[id] then hit = hit + 1 end end end
    end
    local sq = decode.token_scores(c, qlast):totable()
    local sf = decode.token_scores(cf, qlast):totable()
    local tk = 0
    for h = 1, #sf do tk = tk + top_overlap(sq[h][1], sf[h][1], 32) end
    db:record{run_id = run_id, method = "quest", params = p, workload = workload,
      workload_params = {steps = STEPS}, phase = "decode", layer = li - 1, backend = "cpu",
      metrics = {kbits = m[1], vbits = m[2], zero = m[3], recall = r.metrics.recall_mean, rel_l2 = r.metrics.rel_l2,
        rel_l2_vs_f32 = sl.metric.rel_l2(r.o, base.o), page_recall = hit / tot, topk_recall = tk / #sf,
        quant_rel_l2 = sl.metric.rel_l2(ra.o, base_all.o),
        kv_bytes = r.metrics.kv_bytes, bytes_ratio = c:bytes() / cf:bytes()}}
    c:close()
    cf:close()
  end
  db:commit()
end
for li, t in ipairs(model:capture{tokens = tokens}) do fidelity(li, t, "tinystories:" .. text_name) end
do
  local q, k, v = sl.synthetic{n = quick and 256 or 512, heads = 8, kv_heads = 4, d = 64, seed = 11}
  fidelity(1, {q = q, k = k, v = v}, "synthetic")
end

-- model level
db:begin()
for _, m in ipairs(MODES) do
  for _, b in ipairs{B, 4096} do
    local p = {budget = b, page = PAGE, kv_bits = m[1], v_bits = m[2], kv_zero = m[3]}
    local r = model:evaluate_decode{tokens = tokens, prefix = PREFIX, decode = {method = "quest", params = p}}
    db:record{run_id = run_id, method = "quest", params = p, workload = "model:" .. text_name, phase = "decode",
      backend = "cpu", metrics = {kbits = m[1], vbits = m[2], zero = m[3], budget_tokens = b, kl = r.kl, top1 = r.top1, ppl = r.ppl,
        ppl_dense = r.ppl_dense}}
  end
end
db:commit()
db:finish_run(run_id, "ok")

local function metric(name)
  if name == "mode" then   -- k and v storage: f32, or the bits of the codes
    return "(SELECT CASE WHEN k.value = 0 THEN 'f32' ELSE 'k' || CAST(k.value AS INT) || ' v' || "
      .. "CASE WHEN v.value = 0 THEN 'f32' ELSE CAST(v.value AS INT) END || "
      .. "CASE WHEN z.value = 1 THEN ' asym' ELSE ' sym' END END FROM metric k, metric v, metric z "
      .. "WHERE k.result_id = r.id AND k.name = 'kbits' AND v.result_id = r.id AND v.name = 'vbits' "
      .. "AND z.result_id = r.id AND z.name = 'zero')"
  end
  return string.format("(SELECT value FROM metric WHERE result_id = r.id AND name = '%s')", name)
end
local function show(title, sql)
  local rows = db:query(sql, run_id)
  print(title)
  print(#rows > 0 and sl.report.table(rows, rows.columns) or "(none)")
  print()
end
show(string.format("Memory (8 kv heads, head_dim 128, %d tokens, pages of 16)", N), string.format([[
  SELECT %s AS mode, %s AS bytes, round(%s, 4) AS vs_f32, round(%s, 2) AS kv_bytes_read_per_token
    FROM result r WHERE r.run_id = ? AND r.workload = 'memory' ORDER BY r.id]],
  metric("mode"), metric("bytes"), metric("ratio"), metric("read_per_token")))
for _, wl in ipairs{{"tinystories:%", "captured Q/K/V"}, {"synthetic", "synthetic Q/K/V, d 64"}} do
  show(string.format("Kernel level (%s, last %d rows decoded through Quest's cache, budget %d, mean over layers; "
    .. "quant_rel_l2: every page read, vs f32 pages)", wl[2], STEPS, B), string.format([[
  SELECT %s AS mode, round(avg(%s), 4) AS recall, round(avg(%s), 4) AS rel_l2, round(avg(%s), 4) AS rel_l2_vs_f32,
         round(avg(%s), 4) AS quant_rel_l2, round(avg(%s), 4) AS page_recall, round(avg(%s), 4) AS top32_recall,
         round(avg(%s)) AS kv_bytes, round(avg(%s), 3) AS cache_vs_f32
    FROM result r WHERE r.run_id = ? AND r.workload LIKE '%s' GROUP BY 1 ORDER BY min(r.id)]],
    metric("mode"), metric("recall"), metric("rel_l2"), metric("rel_l2_vs_f32"), metric("quant_rel_l2"),
    metric("page_recall"), metric("topk_recall"), metric("kv_bytes"), metric("bytes_ratio"), wl[1]))
end
show("Model level (teacher-forced decode loop, prefix 64, KL to dense decoding)", string.format([[
  SELECT %s AS mode, %s AS budget, round(%s, 5) AS kl, round(%s, 4) AS top1, round(%s, 4) AS ppl, round(%s, 4) AS ppl_dense
    FROM result r WHERE r.run_id = ? AND r.workload LIKE 'model:%%' ORDER BY r.id]],
  metric("mode"), metric("budget_tokens"), metric("kl"), metric("top1"), metric("ppl"), metric("ppl_dense")))
print(string.format("run %d recorded in %s", run_id, db_path))
db:close()
