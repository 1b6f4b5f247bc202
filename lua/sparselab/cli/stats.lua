-- sparselab.cli.stats — `sparselab stats DB --method ID [...]`: per-budget paired tests of a
-- method against dense over the same inputs (sparselab.stats: Wilcoxon signed-rank, sign test or
-- paired bootstrap), "not worse than dense by more than a margin", and the largest compression
-- that statistically preserves the metric (card sparse_frontier, step 6), optionally per task.
local sl = require "sparselab"
local stats = require "sparselab.stats"
local fit_db = require "sparselab.fit_db"
local report = require "sparselab.report"

local USAGE = "usage: sparselab stats DB --method ID [--metric EXPR] [--by EXPR] [--dense ID] [--margin X] " ..
  "[--alpha A] [--test wilcoxon|sign|bootstrap] [--where SQL] [--per EXPR] [--pair EXPR] [--compression EXPR] " ..
  "[--lower-better|--higher-better] [--bootstrap B] [--seed S] [--json]"

-- Metrics for which smaller is better (the rest: larger is better) unless a flag says otherwise.
local LOWER = {rel_l2 = true, max_abs = true, kl = true, ppl = true, nll = true, time_ms = true, flops = true}

-- One input across methods: everything that defines the problem, not the method or backend.
local PAIR = "coalesce(workload, '') || '|' || coalesce(workload_params_json, '') || '|' || coalesce(phase, '') " ..
  "|| '|' || coalesce(layer, '') || '|' || coalesce(head, '') || '|' || coalesce(n_q, '') || '|' || " ..
  "coalesce(n_k, '') || '|' || coalesce(head_dim, '') || '|' || coalesce(heads, '') || '|' || coalesce(kv_heads, '')"

local function number(s, what, integer) return report.number("stats", s, what, integer) end

local function g(v) return report.g(v) end

return function(argv, parse, out)
  local o, pos = parse(argv, 2, "stats")
  local path = pos[1]
  if not path or not o.method then sl.fail("%s", USAGE) end
  local f = io.open(path, "rb")
  if not f then sl.fail("%s: no such database", path) end
  f:close()
  local metric = o.metric or "score"
  local dense = o.dense or "dense"
  if o.method == dense then sl.fail("stats: --method and --dense are both '%s'", dense) end
  if o["lower-better"] and o["higher-better"] then
    sl.fail("stats: give --lower-better or --higher-better, not both")
  end
  local hib = not LOWER[metric]
  if o["lower-better"] then hib = false elseif o["higher-better"] then hib = true end
  local opts = {test = o.test or "wilcoxon", margin = o.margin and number(o.margin, "--margin") or 0,
    higher_is_better = hib, B = o.bootstrap and number(o.bootstrap, "--bootstrap", true) or nil,
    seed = o.seed and number(o.seed, "--seed", true) or nil, dense = dense}
  local alpha = o.alpha and number(o.alpha, "--alpha") or 0.05

  local items = {"method", fit_db.expand(o.by or "budget") .. " AS grp",
    fit_db.expand(o.compression or fit_db.DEFAULT_COLUMNS.C) .. " AS C", fit_db.expand(metric) .. " AS value",
    fit_db.expand(o.pair or PAIR) .. " AS key"}
  if o.per then items[#items + 1] = fit_db.expand(o.per) .. " AS per" end
  local sql = "SELECT " .. table.concat(items, ", ") .. " FROM v_result WHERE status = 'ok' AND method IN (?, ?)" ..
    (o.where and (" AND (" .. o.where .. ")") or "") .. " ORDER BY result_id"
  local db <close> = sl.store.open(path)
  local ok, rows = pcall(db.query, db, sql, o.method, dense)
  if not ok then sl.fail("stats: %s", (tostring(rows):gsub("\n", " "))) end
  local n_m, n_d = 0, 0
  for _, r in ipairs(rows) do
    r.group = r.grp
    if r.method == dense then n_d = n_d + 1 else n_m = n_m + 1 end
  end
  if n_m == 0 then sl.fail("stats: no ok results of method '%s' with %s in %s", o.method, metric, path) end
  if n_d == 0 then sl.fail("stats: no ok results of '%s' (the comparator) in %s", dense, path) end

  local per_res, summary = stats.max_compression_per(rows, o.method, alpha, opts)
  if o.json then
    local function emit(t) out(sl.json_encode(fit_db.clean(t))) end
    for _, p in ipairs(summary.order) do
      local res, per = per_res[p], o.per and p or nil
      for _, t in ipairs(res.groups) do
        emit{type = "test", method = o.method, per = per, budget = t.group, C = t.C, n = t.n,
          n_unpaired = t.n_unpaired, mean_diff = t.mean_diff, p_worse = t.p_worse, p_noninferior = t.p_noninferior,
          preserved = t.preserved, noninferior = t.noninferior, underpowered = t.underpowered}
      end
      emit{type = "max_compression", method = o.method, per = per, max_c = res.max_c, max_c_any = res.max_c_any,
        alpha = alpha, margin = opts.margin, test = opts.test, metric = metric}
    end
    if o.per then
      emit{type = "summary", method = o.method, n = summary.n, mean_max_c = summary.mean, sd_max_c = summary.sd}
    end
    return
  end
  out(string.format("%s vs %s on %s (%s is better; diff = %s), %s test, margin %g, alpha %g", o.method, dense,
    metric, hib and "higher" or "lower", hib and "method - dense" or "dense - method", opts.test, opts.margin, alpha))
  local tab = {}
  for _, p in ipairs(summary.order) do
    local res = per_res[p]
    for _, t in ipairs(res.groups) do
      local verdict = t.n == 0 and "no pairs" or (t.preserved and "preserved" or "worse")
      if t.underpowered then verdict = verdict .. " (too few pairs to reject)" end
      if t.noninferior then verdict = verdict .. ", non-inferior" end
      tab[#tab + 1] = {per = g(p), budget = g(t.group), C = g(t.C), n = t.n, mean_diff = g(t.mean_diff),
        p_worse = g(t.p_worse), p_noninferior = g(t.p_noninferior), verdict = verdict}
    end
  end
  local cols = {"budget", "C", "n", "mean_diff", "p_worse", "p_noninferior", "verdict"}
  if o.per then table.insert(cols, 1, "per") end
  out(report.table(tab, cols))
  for _, p in ipairs(summary.order) do
    out(string.format("max compression preserving %s%s: %s%s", metric, o.per and (" for " .. g(p)) or "",
      per_res[p].max_c and g(per_res[p].max_c) or "unknown (no compression: record density or compression)",
      per_res[p].max_c_any ~= per_res[p].max_c and
      string.format(" (a larger C, %s, passes again after a failure)", g(per_res[p].max_c_any)) or ""))
  end
  if o.per then
    out(string.format("max compression across %d groups: mean %s, sd %s", summary.n, g(summary.mean), g(summary.sd)))
  end
end
