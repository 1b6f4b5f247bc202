-- sparselab.cli.compare — `sparselab compare DB [--by COL] [--where SQL] [--all-runs] [--csv|--json]`:
-- one aligned table of the common metrics per group (method by default)
-- and budget, averaged over the results that match, from v_result. Only the
-- latest result of each point is counted (the same method, parameters, input,
-- sizes, backend and target: a rerun replaces, it does not double), unless
-- --all-runs. --by target_density: per method and matched target density.
local sl = require "sparselab"
local report = require "sparselab.report"

local GROUPS = {method = true, workload = true, backend = true, n_k = true, head_dim = true, phase = true,
  layer = true, script = true, run_id = true, target_density = true}

-- the latest result of each point (as in viz/report.lua)
local LATEST = [[result_id IN (SELECT max(result_id) FROM v_result GROUP BY method, params_json, workload,
  workload_params_json, phase, layer, head, n_q, n_k, heads, kv_heads, head_dim, backend, target_density, target_flops,
  target_kv_bytes)]]

return function(argv, parse, out)
  local o, pos = parse(argv, 2, "compare")
  local path = pos[1]
  if not path then sl.fail("usage: sparselab compare DB [--by method] [--where SQL]") end
  local f = io.open(path, "rb")
  if not f then sl.fail("%s: no such database", path) end
  f:close()
  local by = o.by or "method"
  if not GROUPS[by] then
    local names = {}
    for k in pairs(GROUPS) do names[#names + 1] = k end
    table.sort(names)
    sl.fail("compare: --by %s is not a grouping column (expected one of: %s)", by, table.concat(names, ", "))
  end
  local where = (o.where and ("AND (" .. o.where .. ") ") or "") .. (o["all-runs"] and "" or ("AND " .. LATEST))
  local db <close> = sl.store.open(path, {read_only = true})
  -- target_density: per method and target (the budget that reached it differs per input)
  local second = by == "target_density" and "method" or "budget"
  local sql = string.format([[
    SELECT %s AS %s, %s, count(*) AS n, avg(density) AS density, avg(flops_ratio) AS flops_ratio,
           avg(rel_l2) AS rel_l2, avg(cosine_mean) AS cosine, min(cosine_min) AS cosine_min,
           avg(recall_mean) AS recall, min(recall_min) AS recall_min, avg(ppl) AS ppl, avg(kl) AS kl,
           avg(time_ms) AS time_ms, avg(speedup) AS speedup
      FROM v_result WHERE status = 'ok' %s
     GROUP BY %s, %s ORDER BY %s, %s]], by, by, second, where, by, second, by, second)
  local ok, rows = pcall(db.query, db, sql)
  if not ok then sl.fail("compare: %s", tostring(rows):gsub("\n", " ")) end
  -- drop columns that are empty in every row
  local cols = {}
  for _, c in ipairs(rows.columns) do
    local any = false
    for _, r in ipairs(rows) do if r[c] ~= nil then any = true; break end end
    if any then cols[#cols + 1] = c end
  end
  report.print(rows, cols, o, out)
end
