-- decode_frontier.lua — Question: at matched KV budgets (tokens a decode step
-- reads), how much of dense decoding does each decode method keep — at kernel
-- level on captured Q/K/V replayed one decode step at a time through the
-- paged cache (recall, rel_l2, KV bytes per token), and at model level on the
-- shipped model with the method in the runner's decode loop (teacher-forced
-- KL to dense decoding, top-1 agreement, perplexity)?
-- Cards: every method of the registry with a decode hook (issue 13: quest,
-- double_sparsity, twilight_topp, tidaldecode, hgca, spatten, snapkv,
-- ada_snapkv, lessismore, delta_layer_aware, hylra, ...: whichever are
-- registered when it runs); dense is the reference of every result.
-- Inputs: Q/K/V captured from the shipped TinyStories 260K model
-- (experiments/data/tinystories260k: 5 layers, 8 query / 4 KV heads,
-- head_dim 8) on one text; the last STEPS rows of every layer are decoded
-- through a cache of the rows before them (SnapKV's observation window is
-- the OBS prompt rows just before); model level: the first PREFIX tokens are
-- the prompt (dense prefill), every later token one decode step.
-- Matching: every method gets the same token budget B per step; methods whose
-- knob is not a token count get its equivalent (delta_layer_aware: B / page
-- pages; twilight_topp: selector budget 2B, p = 0.9, so it reads at most 2B;
-- hgca: B/2 window + B/2 CPU tokens; streaming_llm 4 sinks + B - 4 recent;
-- lserve's dense heads dec_budget = B; double_sparsity r = 4 of the 8
-- channels, since d/8 would leave one; s2_attention B/16 local blocks of 8
-- plus its strided shards; sparsemm base capacity B; prism is dense at
-- decode whatever B; video_xl2 B/8 dense chunks of 8, the others pooled to
-- one token each);
-- the tokens actually read are recorded (tokens_read) and shown beside the
-- budget; hylra runs at model level with full_every = 2 (no profiling pass
-- in the runner). A method that fails is recorded as failed with its reason.
--   sparselab run experiments/decode_frontier.lua [DB] [--quick]
local sl = require "sparselab"
local decode = require "sparselab.decode"

local db_path, quick = "results.db", false
for _, a in ipairs(arg or {}) do
  if a == "--quick" then quick = true
  elseif a:sub(1, 2) == "--" then sl.fail("decode_frontier: unknown option %s (expected --quick)", a)
  else db_path = a end
end
local BUDGETS = quick and {16, 64} or {16, 32, 64, 128}
local STEPS, OBS, PREFIX, PAGE = quick and 8 or 32, 16, 64, 8
local data = "experiments/data/tinystories260k"
local text_name = "01_red_kite"

local methods = {}
for _, id in ipairs(sl.methods.ids()) do
  local ok, m = pcall(sl.methods.get, id)
  if ok and m.decode and (m.phase == "decode" or m.phase == "both") then methods[#methods + 1] = m.id end
end

local db, run_id = sl.experiment{db = db_path, seed = 1, config = {budgets = BUDGETS, steps = STEPS, prefix = PREFIX,
  page = PAGE, methods = methods, text = text_name, quick = quick}}

local function params_for(id, b)
  local m = sl.methods.get(id)
  local p = {}
  if m.params.page then p.page = PAGE end
  if m.params.bq then p.bq, p.bk = 16, 16 end
  if id == "delta_layer_aware" then p.budget = math.max(1, b // PAGE); p.recent = 1
  elseif id == "twilight_topp" then p.budget = 2 * b; p.p = 0.9
  elseif id == "snapkv" or id == "ada_snapkv" then p.budget = b; p.obs_window = OBS; p["local"] = math.min(16, b // 2)
  elseif id == "hgca" then p.budget = b // 2; p.window = b - b // 2
  elseif id == "double_sparsity" then p.budget = b; p.group_factor = 2   -- head_dim 8: r = 4 label channels
  elseif id == "seer_attention_r" then p.budget = b; p.block = PAGE
  elseif id == "lserve" then p.dec_budget = b; p.static_sparsity = 0; p.sub_chunks = 2; p.page = PAGE // 2
  elseif id == "streaming_llm" then p.n_init = 4; p.n_local = math.max(1, b - 4)
  elseif id == "sliding_window" then p.w = b
  elseif id == "s2_attention" then p.block = PAGE; p.local_blocks = math.max(1, b // (2 * PAGE)); p.vert_stride = 8
  elseif id == "sparsemm" then p.base_capacity = b; p.window = math.min(16, b // 2)
  elseif id == "prism" then p.p = 0.95   -- decode falls back to dense: the budget does not apply
  elseif id == "hylra" then p.budget = b; p.full_every = 2   -- the runner does not profile: FULL every 2nd layer
  elseif id == "loopserve" then p.dec_budget = math.max(1, b - 4); p.dec_window = 4; p.dec_interval = 4
  elseif id == "videoxl2_chunk_prefill" then   -- a small template: chunks of one 16-token group
    p.prefix_len, p.ts_len, p.group_tokens, p.block_size, p.suffix_len = 4, 2, 14, 1, 8
    p.dec_step = 14; p.dec_topk = math.max(0, b // 16 - 2)
  elseif id == "zipvl" then p.tau = 0.9; p.probe = OBS   -- reads every token at 4 / 2 bits: the budget does not apply
  elseif id == "hip_attention" then   -- tree blocks of one page, a window of half the budget, refresh every 4 steps
    p.bq, p.bk = 1, PAGE; p.window = math.min(16, b // 2); p.budget = b - p.window; p.refresh = 4
  elseif id == "video_xl2" then p.chunk = PAGE; p.step = PAGE; p.topk = math.max(0, b // PAGE - 3)
  elseif id == "nsa" then   -- issue 14: blocks of one page, l = page, s = page/2, n = budget/page blocks, no window
    p.bs, p.l, p.s, p.n, p.window = PAGE, PAGE, PAGE // 2, math.max(3, b // PAGE), 0
  elseif id == "nosa" then   -- blocks of one page: the own block, then half the rest query-aware, half by eviction score
    local rest = math.max(0, b // PAGE - 1)
    p.block, p.sub, p.k_e = PAGE, PAGE // 2, rest // 2
    p.k_q = rest - p.k_e
  else p.budget = b end
  return p
end

local model = sl.model.load(data .. "/model.bin")
local f = assert(io.open(data .. "/texts/" .. text_name .. ".txt", "rb"))
local text = f:read("a")
f:close()
local tokens = model:encode(text)
if quick then
  local t = {}
  for i = 1, math.min(#tokens, 160) do t[i] = tokens[i] end
  tokens = t
end

-- kernel level: every layer's captured Q/K/V, the last STEPS rows decoded
for li, t in ipairs(model:capture{tokens = tokens}) do
  local n = t.q:shape()[2]
  local prob = sl.problem{q = t.q:narrow(2, n - STEPS + 1, STEPS), k = t.k, v = t.v,
    workload = "tinystories:" .. text_name, workload_params = {model = "stories260K", text = text_name, steps = STEPS},
    state = {obs_q = t.q:narrow(2, n - STEPS - OBS + 1, OBS)}}
  io.stderr:write(string.format("decode_frontier: kernel level, layer %d, n = %d\n", li - 1, n))
  for _, id in ipairs(methods) do
    db:begin()
    for _, b in ipairs(BUDGETS) do
      local p = params_for(id, b)
      local ok, err = pcall(function()
        local r = sl.eval(id, prob, {params = p})
        r.layer = li - 1
        r.metrics.budget_tokens = b
        sl.record(db, run_id, r)
      end)
      if not ok then
        db:record{run_id = run_id, method = id, params = p, workload = prob.workload, workload_params = prob.workload_params,
          phase = "decode", layer = li - 1, n_q = STEPS, n_k = n, head_dim = t.q:shape()[3], heads = t.q:shape()[1],
          kv_heads = t.k:shape()[1], backend = "cpu", status = "failed", error = tostring(err), metrics = {budget_tokens = b}}
      end
    end
    db:commit()
  end
end

-- model level: teacher-forced decoding through each method's decode hook
io.stderr:write(string.format("decode_frontier: model level, %d tokens, prefix %d\n", #tokens, PREFIX))
for _, id in ipairs(methods) do
  db:begin()
  for _, b in ipairs(BUDGETS) do
    local p = params_for(id, b)
    local ok, err = pcall(function()
      local r = model:evaluate_decode{tokens = tokens, prefix = PREFIX, decode = {method = id, params = p}}
      db:record{run_id = run_id, method = id, params = p, workload = "model:" .. text_name,
        workload_params = {model = "stories260K", text = text_name, prefix = PREFIX}, phase = "decode",
        n_q = #tokens - PREFIX, n_k = #tokens, backend = "cpu",
        metrics = {budget_tokens = b, kl = r.kl, top1 = r.top1, ppl = r.ppl, ppl_dense = r.ppl_dense, n = r.n}}
    end)
    if not ok then
      db:record{run_id = run_id, method = id, params = p, workload = "model:" .. text_name,
        workload_params = {model = "stories260K", text = text_name, prefix = PREFIX}, phase = "decode",
        backend = "cpu", status = "failed", error = tostring(err), metrics = {budget_tokens = b}}
    end
  end
  db:commit()
end
db:finish_run(run_id, "ok")

local function show(title, sql)
  local rows = db:query(sql, run_id)
  print(title)
  print(#rows > 0 and sl.report.table(rows, rows.columns) or "(none)")
  print()
end

local function metric(name)
  return string.format("(SELECT value FROM metric WHERE result_id = r.id AND name = '%s')", name)
end
show("Kernel level (captured Q/K/V, last steps decoded through the cache; mean over layers)", string.format([[
  SELECT r.method, %s AS tokens_budget, count(*) AS layers, round(avg(%s), 1) AS tokens_read,
         round(avg(%s), 4) AS recall, round(avg(%s), 4) AS rel_l2, round(avg(%s)) AS kv_bytes_per_token
    FROM result r JOIN run ON run.id = r.run_id
   WHERE r.run_id = ? AND r.workload LIKE 'tinystories:%%' AND %s IS NOT NULL AND %s IS NOT NULL
   GROUP BY r.method, tokens_budget ORDER BY r.method, tokens_budget]], metric("budget_tokens"), metric("tokens_read"),
  metric("recall_mean"), metric("rel_l2"), metric("kv_bytes"), metric("budget_tokens"), metric("recall_mean")))
show("Model level (teacher-forced decode loop vs dense decoding)", string.format([[
  SELECT r.method, %s AS tokens_budget, round(%s, 5) AS kl, round(%s, 4) AS top1, round(%s, 4) AS ppl,
         round(%s, 4) AS ppl_dense
    FROM result r
   WHERE r.run_id = ? AND r.workload LIKE 'model:%%' AND %s IS NOT NULL
   ORDER BY r.method, tokens_budget]], metric("budget_tokens"), metric("kl"), metric("top1"), metric("ppl"), metric("ppl_dense"),
  metric("kl")))
show("Failed", [[
  SELECT method, workload, count(*) AS n, min(error) AS reason FROM result
   WHERE run_id = ? AND status = 'failed' GROUP BY method, workload ORDER BY method]])
print(string.format("run %d recorded in %s", run_id, db_path))
db:close()
