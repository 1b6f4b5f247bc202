-- sparselab.cli.compare — `sparselab compare DB [--by COL] [--where SQL] [--csv|--json]`:
-- one aligned table of the common metrics per group (method by default)
-- and budget, averaged over the results that match, from v_result.
local sl = require "sparselab"
local report = require "sparselab.report"

local GROUPS = {method = true, workload = true, backend = true, n_k = true, head_dim = true, phase = true,
  layer = true, script = true, run_id = true}

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
  local where = o.where and ("AND (" .. o.where .. ")") or ""
  local db <close> = sl.store.open(path)
  local sql = string.format([[
    SELECT %s AS %s, budget, count(*) AS n, avg(density) AS density, avg(flops_ratio) AS flops_ratio,
           avg(rel_l2) AS rel_l2, avg(cosine_mean) AS cosine, min(cosine_min) AS cosine_min,
           avg(recall_mean) AS recall, min(recall_min) AS recall_min, avg(ppl) AS ppl, avg(kl) AS kl,
           avg(time_ms) AS time_ms, avg(speedup) AS speedup
      FROM v_result WHERE status = 'ok' %s
     GROUP BY %s, budget ORDER BY %s, budget]], by, by, where, by, by)
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
