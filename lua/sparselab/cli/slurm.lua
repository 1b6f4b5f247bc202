-- sparselab.cli.slurm — `sparselab slurm status DIR` and `sparselab slurm
-- resubmit DIR` (also `sweep CONFIG --slurm-status DIR` / `--slurm-resubmit
-- DIR`) for a directory written by `sparselab sweep CONFIG --slurm`
-- (sparselab/slurm.lua). status prints one line per shard and a summary; its
-- exit status is 0 whatever the shards' states (it is a report).
local sl = require "sparselab"

local USAGE = "usage: sparselab slurm status DIR | sparselab slurm resubmit DIR [--json]"

return function(argv, parse, out)
  local o, pos = parse(argv, 2, {json = "flag"}, nil)
  local what, dir = pos[1], pos[2]
  if (what ~= "status" and what ~= "resubmit") or not dir or pos[3] then sl.fail("%s", USAGE) end
  local slurm = require "sparselab.slurm"
  if what == "resubmit" then
    local id, list = slurm.resubmit(dir)
    if not id then
      out(string.format("slurm: nothing to resubmit in %s (no failed or missing shard)", dir))
    else
      out(string.format("slurm: resubmitted shard%s %s as job %s", #list == 1 and "" or "s", slurm.ranges(list), id))
      out(id)
    end
    return
  end
  local rows, sources, st = slurm.status(dir)
  if o.json then
    out(sl.json_encode{shards = rows, sources = sources, config = st.config, config_sha256 = st.config_sha256})
    return
  end
  local count = {}
  for _, r in ipairs(rows) do
    count[r.state] = (count[r.state] or 0) + 1
    out(string.format("shard %d/%d  %-8s %d/%d points ok%s%s%s", r.shard, st.shards, r.state, r.ok, r.points,
      r.job and ("  job " .. r.job .. "_" .. r.shard) or "", r.scheduler and ("  " .. r.scheduler) or "",
      r.why and r.state ~= "done" and ("  (" .. r.why .. ")") or ""))
  end
  local parts = {}
  for _, s in ipairs{"done", "running", "pending", "failed", "missing"} do
    if count[s] then parts[#parts + 1] = count[s] .. " " .. s end
  end
  out(string.format("slurm %s: %s (from the shard databases%s)", dir, table.concat(parts, ", "),
    #sources > 0 and (", " .. table.concat(sources, ", ")) or "; no squeue/sacct here"))
end
