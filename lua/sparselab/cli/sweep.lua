-- sparselab.cli.sweep — `sparselab sweep CONFIG.lua --db FILE [--workers N]
-- [--timeout S] [--resume] [--shard I/N] [--dry-run] [--config-timeout S]
-- [--config-memory MIB]` (DESIGN §9; the config
-- format and the resume rule are in sparselab/sweep.lua). The hidden
-- `sparselab sweep --worker` is the worker process the runner starts.
--
-- Output: a line saying what will run, a progress bar on a TTY (plain lines
-- otherwise) on stderr, and a summary line. Exit status 0 when the sweep
-- went through (failed points are recorded, not fatal), 1 on a user error,
-- 128 + the signal (130 for Ctrl-C) when interrupted, after committing
-- everything finished so far.
local sl = require "sparselab"
local sweep = require "sparselab.sweep"

local USAGE = "usage: sparselab sweep CONFIG.lua --db FILE [--workers N] [--timeout S] [--resume] [--shard I/N] [--dry-run] [--config-timeout S] [--config-memory MIB]\n" ..
  "       sparselab sweep CONFIG.lua --slurm [--array N] [--partition P] [--time T] [--cpus-per-task C] [--gpus-per-task G] [--mem M] [--dir DIR] [--submit]\n" ..
  "       sparselab sweep CONFIG.lua --slurm-status DIR | --slurm-resubmit DIR"


local function positive_int(s, what)
  local n = math.tointeger(tonumber(s))
  if not n or n < 1 then sl.fail("--%s expects a positive integer, found '%s'", what, s) end
  return n
end

-- `sweep CONFIG --slurm ...`: writes (and with --submit submits) the array script.
local function slurm_write(o, path, out)
  local slurm = require "sparselab.slurm"
  if o.db or o.shard or o.resume or o.workers then sl.fail("--slurm writes a script: --db, --shard, --resume and " ..
    "--workers are the tasks' own (their database is DIR/shard_i.db)") end
  local cfg = sweep.load_config(path)
  local w = slurm.write{config = cfg, config_path = path, dir = o.dir or (path:gsub("%.lua$", "") .. ".slurm"),
    array = o.array and positive_int(o.array, "array"), partition = o.partition, time = o.time,
    cpus_per_task = o["cpus-per-task"] and positive_int(o["cpus-per-task"], "cpus-per-task"),
    gpus_per_task = o["gpus-per-task"] and positive_int(o["gpus-per-task"], "gpus-per-task"), mem = o.mem}
  out(string.format("slurm: wrote %s (%d points in %d shards; config sha256 %s)", w.script, w.points, w.shards,
    w.hash:sub(1, 12)))
  if o.submit then
    local id = slurm.submit(w.dir)
    out(string.format("slurm: submitted job %s (array 1-%d); status: sparselab slurm status %s", id, w.shards, w.dir))
    out(id)
  elseif slurm.have("sbatch") then
    out(string.format("slurm: submit with: sbatch %s   (or add --submit)", w.script))
  else
    out(string.format("slurm: sbatch is not installed here; on the cluster's login node run: sbatch %s", w.script))
  end
  out(string.format("slurm: then: sparselab slurm status %s; sparselab merge OUT.db %s/shard_*.db", w.dir, w.dir))
end

return function(argv, parse, out)
  local o, pos = parse(argv, 2, "sweep")
  if o.worker then
    sweep.worker(io.stdin, io.stdout)
    return
  end
  local path = pos[1]
  if o["slurm-status"] or o["slurm-resubmit"] then
    return require("sparselab.cli.slurm")({"slurm", o["slurm-status"] and "status" or "resubmit",
      o["slurm-status"] or o["slurm-resubmit"]}, parse, out)
  end
  if not path then sl.fail("%s", USAGE) end
  if o.slurm then return slurm_write(o, path, out) end
  for _, k in ipairs{"array", "partition", "time", "cpus-per-task", "gpus-per-task", "mem", "submit", "dir"} do
    if o[k] then sl.fail("--%s goes with --slurm", k) end
  end
  if not o.db then sl.fail("sparselab sweep: --db FILE is required (%s)", USAGE) end
  local shard
  if o.shard then
    local i, n = o.shard:match("^(%d+)/(%d+)$")
    i, n = tonumber(i), tonumber(n)
    if not i or n < 1 or i < 1 or i > n then sl.fail("--shard expects I/N with 1 <= I <= N, found '%s'", o.shard) end
    shard = {i, n}
  end
  local timeout
  if o.timeout then
    timeout = tonumber(o.timeout)
    if not timeout or timeout <= 0 then sl.fail("--timeout expects seconds > 0, found '%s'", o.timeout) end
  end
  local limits = {}
  for _, k in ipairs{"timeout", "memory"} do
    local v = o["config-" .. k]
    if v then
      limits[k] = tonumber(v)
      if not limits[k] or limits[k] <= 0 then sl.fail("--config-%s expects a number > 0, found '%s'", k, v) end
    end
  end
  local cfg = sweep.load_config(path, limits)
  if o["config-sha256"] then require("sparselab.slurm").check_shard(cfg, path, o.db, o["config-sha256"]) end
  local sum = sweep.run{config = cfg, config_path = path, db = o.db, resume = o.resume, shard = shard,
    workers = o.workers and positive_int(o.workers, "workers"), timeout = timeout, argv = argv,
    progress = true, dry_run = o["dry-run"], say = out}
  if o["dry-run"] then
    for _, p in ipairs(sum.list) do
      local wl = p.workload
      local setting = p.target and string.format("target %s=%g", next(p.target), select(2, next(p.target)))
        or (p.budget and string.format("budget %s", tostring(p.budget)) or "defaults")
      out(string.format("%s  %s %s  %s%s", p.key, p.method, setting,
        wl.name == "qkv" and wl.path or string.format("synthetic n=%d heads=%d/%d d=%d seed=%d", wl.n, wl.heads,
          wl.kv_heads, wl.d, wl.seed), wl.head and string.format(" head=%d", wl.head) or ""))
    end
    return
  end
  if sum.todo == 0 then
    if sum.skipped_claimed > 0 then
      out(string.format("sweep: nothing to do (%d points in %s already, %d claimed by another running sweep)",
        sum.skipped_ok + sum.skipped_failed, o.db, sum.skipped_claimed))
    else
      out(string.format("sweep: nothing to do (%d points in %s already)", sum.points, o.db))
    end
    return
  end
  if sum.interrupted then
    local names = {[2] = "SIGINT", [15] = "SIGTERM"}
    io.stderr:write(string.format("sparselab: sweep interrupted (%s): %d of %d points recorded and committed in %s; "
      .. "run it again (with --resume to retry failed points) to finish\n", names[sum.interrupted] or
      ("signal " .. sum.interrupted), sum.done, sum.todo, o.db))
    io.stdout:flush()
    os.exit(128 + sum.interrupted, true)
  end
  out(string.format("sweep: %d points in %.1f s: %d ok, %d failed%s; %s run %d", sum.done, sum.seconds,
    sum.done - sum.failed, sum.failed,
    sum.failed > 0 and " (SELECT error FROM result WHERE status = 'failed')" or "", o.db, sum.run_id))
end
