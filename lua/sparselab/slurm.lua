-- sparselab.slurm — a sweep as a Slurm job array (issue 21). Nothing here
-- schedules anything itself: it writes an sbatch script, submits it with
-- `sbatch --parsable`, reads shard state from the shard databases and from
-- `squeue`/`sacct`, and resubmits the shards that need it.
--
-- Layout of DIR (--dir, default "<config name>.slurm" beside the config):
--   sweep.sbatch            the array script: task i runs
--                           `sparselab sweep CONFIG --shard i/N --db DIR/shard_i.db --resume
--                            --config-sha256 H`
--   shard_<i>.db            shard i's database (its meta row sweep_config_sha256 = H)
--   shard_<i>.out / .err    task i's stdout / stderr (the latest submission's)
--   slurm.json              {config, config_sha256, shards, script, program, submissions =
--                            [{job_id, shards = [...], at}]} — what status and resubmit read
--
-- The config hash H is the SHA-256 of the config's point keys, sorted and
-- joined by newlines (M.config_hash): it changes exactly when the set of
-- points changes (not when only workers or timeouts do). A task refuses to
-- run when CONFIG no longer hashes to H, a shard database refuses a sweep of
-- another hash, and `sparselab merge` refuses to combine databases whose
-- recorded hashes differ.
local sl = require "sparselab"
local sweep = require "sparselab.sweep"
local json = require "sparselab.json"

local M = {}

M.META_KEY = "sweep_config_sha256"
M.SCRIPT = "sweep.sbatch"
M.STATE = "slurm.json"

--- The shell word for s (single quotes, ' written as '\'').
function M.quote(s)
  s = tostring(s)
  if s:match("^[%w%%+,./:=@_-]+$") then return s end
  return "'" .. s:gsub("'", "'\\''") .. "'"
end

--- SHA-256 (hex) of the sorted point keys of a checked config.
function M.config_hash(cfg, where)
  local keys = {}
  for i, p in ipairs(sweep.expand(cfg, where)) do keys[i] = p.key end
  table.sort(keys)
  return sl.store.sha256(table.concat(keys, "\n")), keys
end

-- Runs a shell command; returns its output (stdout and stderr) and whether it exited 0.
local function shell(cmd)
  local f = io.popen(cmd .. " 2>&1", "r")
  if not f then return "", false end
  local text = f:read("a") or ""
  local ok = f:close()
  return text, ok == true
end

--- True when the command is on PATH.
function M.have(cmd)
  local _, ok = shell("command -v " .. M.quote(cmd) .. " >/dev/null")
  return ok
end

local function absolute(path)
  if path:sub(1, 1) == "/" then return path end
  local cwd = os.getenv("PWD")
  if not cwd or cwd == "" then
    cwd = shell("pwd"):gsub("%s+$", "")
  end
  return (cwd .. "/" .. path):gsub("/%./", "/")
end
M.absolute = absolute

--- The path of the running program (the sparselab binary), or nil.
function M.program()
  local env = os.getenv("SPARSELAB_PROGRAM")
  if env and env ~= "" then return env end
  local p = shell('readlink -f "/proc/$PPID/exe"'):gsub("%s+$", "")
  if p ~= "" and p:match("sparselab[^/]*$") then return p end
  return nil
end

local function read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

local function write_file(path, text)
  local tmp = path .. ".tmp"
  local f, err = io.open(tmp, "wb")
  if not f then sl.fail("cannot write %s: %s", tmp, tostring(err)) end
  f:write(text)
  f:close()
  local ok, err2 = os.rename(tmp, path)
  if not ok then sl.fail("cannot write %s: %s", path, tostring(err2)) end
end

--- The state of DIR (slurm.json), or a one-line failure naming what is missing.
function M.load_state(dir)
  local path = dir .. "/" .. M.STATE
  local text = read_file(path)
  if not text then sl.fail("%s: no %s (not a directory written by `sparselab sweep CONFIG --slurm --dir DIR`)", dir, M.STATE) end
  local st = json.decode(text, path)
  if type(st) ~= "table" or type(st.shards) ~= "number" or type(st.config) ~= "string" then
    sl.fail("%s: not a sparselab slurm state file", path)
  end
  st.submissions = st.submissions or {}
  return st
end

local function save_state(dir, st)
  if #st.submissions == 0 then st.submissions = nil end
  local text = sl.json_encode(st)
  st.submissions = st.submissions or {}
  write_file(dir .. "/" .. M.STATE, text .. "\n")
end

local function mkdir(dir)
  local out, ok = shell("mkdir -p " .. M.quote(dir))
  if not ok then sl.fail("cannot create %s: %s", dir, (out:gsub("%s+$", ""))) end
end

local SIZE = {partition = "^[%w,._-]+$", time = "^[%d:-]+$", mem = "^%d+[KMGT]?$"}

--- Writes the array script and the state file. o = {config = checked table,
--- config_path =, dir =, array = N (shards; default: the points, at most 100),
--- partition =, time =, cpus_per_task =, gpus_per_task =, mem =, program =}.
--- Returns {script =, dir =, shards =, hash =, points =}.
function M.write(o)
  local cfg = o.config
  local hash, keys = M.config_hash(cfg, o.config_path)
  local n = o.array or math.max(1, math.min(#keys, 100))
  for k, pat in pairs(SIZE) do
    local v = o[k]
    if v ~= nil and not tostring(v):match(pat) then sl.fail("--%s: '%s' is not a valid value", k, tostring(v)) end
  end
  local program = o.program or M.program()
  if not program then sl.fail("cannot find the sparselab program's path (set SPARSELAB_PROGRAM)") end
  local dir = absolute(o.dir)
  mkdir(dir)
  local config = absolute(o.config_path)
  local lines = {
    "#!/bin/sh",
    "#SBATCH --job-name=sparselab-" .. (tostring(cfg.name or "sweep"):gsub("[^%w._-]", "_")),
    string.format("#SBATCH --array=1-%d", n),
    "#SBATCH --output=" .. dir .. "/shard_%a.out",
    "#SBATCH --error=" .. dir .. "/shard_%a.err",
    "#SBATCH --ntasks=1",
  }
  if o.partition then lines[#lines + 1] = "#SBATCH --partition=" .. o.partition end
  if o.time then lines[#lines + 1] = "#SBATCH --time=" .. o.time end
  if o.cpus_per_task then lines[#lines + 1] = string.format("#SBATCH --cpus-per-task=%d", o.cpus_per_task) end
  if o.gpus_per_task then lines[#lines + 1] = string.format("#SBATCH --gpus-per-task=%d", o.gpus_per_task) end
  if o.mem then lines[#lines + 1] = "#SBATCH --mem=" .. o.mem end
  local rest = {
    "#",
    "# Written by `sparselab sweep --slurm`: a sweep of " .. #keys .. " points in " .. n .. " shards.",
    "# config:        " .. config,
    "# config sha256: " .. hash .. "  (of its sorted point keys; a task refuses a changed config)",
    "# Submit:        sbatch " .. dir .. "/" .. M.SCRIPT,
    "# Status:        sparselab slurm status " .. dir,
    "# Merge:         sparselab merge OUT.db " .. dir .. "/shard_*.db",
    "set -eu",
    'i="${SLURM_ARRAY_TASK_ID:?this script runs as a Slurm array task: sbatch it}"',
    string.format('exec %s sweep %s --shard "$i/%d" --db %s/shard_"$i".db --resume --config-sha256 %s',
      M.quote(program), M.quote(config), n, M.quote(dir), hash),
  }
  for _, l in ipairs(rest) do lines[#lines + 1] = l end
  local script = dir .. "/" .. M.SCRIPT
  write_file(script, table.concat(lines, "\n") .. "\n")
  local st = {config = config, config_sha256 = hash, shards = n, script = script, program = program,
    points = #keys, submissions = {}}
  local old = read_file(dir .. "/" .. M.STATE)
  if old then
    local ok, prev = pcall(json.decode, old, dir)
    if ok and type(prev) == "table" and prev.config_sha256 == hash and prev.shards == n then
      st.submissions = prev.submissions or {}
    end
  end
  save_state(dir, st)
  return {script = script, dir = dir, shards = n, hash = hash, points = #keys}
end

--- "1-3,5" for a sorted list of shard numbers.
function M.ranges(list)
  local out, i = {}, 1
  while i <= #list do
    local j = i
    while j < #list and list[j + 1] == list[j] + 1 do j = j + 1 end
    out[#out + 1] = i == j and tostring(list[i]) or string.format("%d-%d", list[i], list[j])
    i = j + 1
  end
  return table.concat(out, ",")
end

--- Submits DIR's script (for the listed shards, default all) with `sbatch
--- --parsable`; records the submission; returns the job id.
function M.submit(dir, shards)
  if not M.have("sbatch") then
    sl.fail("sbatch: not found (Slurm is not installed here); submit on a cluster login node with: sbatch %s/%s",
      dir, M.SCRIPT)
  end
  local st = M.load_state(dir)
  if not shards then
    shards = {}
    for i = 1, st.shards do shards[i] = i end
  end
  local cmd = "sbatch --parsable --array=" .. M.ranges(shards) .. " " .. M.quote(st.script)
  local text, ok = shell(cmd)
  text = text:gsub("%s+$", "")
  local id = text:match("([%d_]+)[;%w._-]*$")
  if not ok or not id then sl.fail("sbatch failed: %s", (text:gsub("\n", " | "))) end
  id = id:match("^(%d+)")
  st.submissions[#st.submissions + 1] = {job_id = id, shards = shards, at = os.date("!%Y-%m-%dT%H:%M:%SZ")}
  save_state(dir, st)
  return id
end

local ACTIVE = {PENDING = true, RUNNING = true, CONFIGURING = true, COMPLETING = true, REQUEUED = true,
  RESIZING = true, SUSPENDED = true, REQUEUE_HOLD = true, REQUEUE_FED = true, SIGNALING = true, STAGE_OUT = true}

-- {["job_task"] = STATE} from squeue (active tasks) and sacct (finished), where they answer.
local function scheduler_states(st)
  local states, sources = {}, {}
  local ids = {}
  for _, s in ipairs(st.submissions) do ids[#ids + 1] = s.job_id end
  if #ids == 0 then return states, sources end
  local list = table.concat(ids, ",")
  if M.have("sacct") then
    local text, ok = shell("sacct -n -P -X -o JobID,State -j " .. list)
    if ok then
      sources[#sources + 1] = "sacct"
      for id, task, state in text:gmatch("(%d+)_(%d+)|(%u+)") do states[id .. "_" .. task] = state end
    end
  end
  if M.have("squeue") then
    -- squeue lists only the active tasks: what it says is newer than sacct
    local text, ok = shell("squeue -h -r -o '%F %K %T' -j " .. list)
    if ok then
      sources[#sources + 1] = "squeue"
      for id, task, state in text:gmatch("(%d+) (%d+) (%u+)") do states[id .. "_" .. task] = state end
    end
  end
  return states, sources
end

local function shard_db_counts(path, keys)
  local f = io.open(path, "rb")
  if not f then return nil end
  f:close()
  local ok, db = pcall(sl.store.open, path, {read_only = true})
  if not ok then return {error = tostring(db)} end
  local r = {ok = 0, failed = 0}
  local have = {}
  local ok2, rows = pcall(db.query, db, "SELECT point_key AS k, max(status = 'ok') AS ok FROM result " ..
    "WHERE point_key IS NOT NULL GROUP BY point_key")
  if ok2 then
    for _, row in ipairs(rows) do have[row.k] = row.ok == 1 end
  end
  local ok3, meta = pcall(db.query, db, "SELECT value FROM meta WHERE key = ?", M.META_KEY)
  r.hash = ok3 and meta[1] and meta[1].value or nil
  db:close()
  for _, k in ipairs(keys) do
    if have[k] == true then r.ok = r.ok + 1 elseif have[k] == false then r.failed = r.failed + 1 end
  end
  return r
end

--- Per shard of DIR: {shard =, state = "done"|"running"|"pending"|"failed"|"missing", points =, ok =,
--- failed =, job =, scheduler = (squeue/sacct state), why =}; and the sources consulted.
function M.status(dir)
  local st = M.load_state(dir)
  local cfg = sweep.load_config(st.config)
  local hash = M.config_hash(cfg, st.config)
  local all = sweep.expand(cfg, st.config)
  local sched, sources = scheduler_states(st)
  local rows = {}
  for i = 1, st.shards do
    local keys = {}
    for _, p in ipairs(sweep.shard(all, i, st.shards)) do keys[#keys + 1] = p.key end
    local r = {shard = i, points = #keys, ok = 0, failed = 0}
    -- the latest submission that covers shard i
    for _, s in ipairs(st.submissions) do
      for _, x in ipairs(s.shards or {}) do
        if x == i then r.job = s.job_id end
      end
    end
    r.scheduler = r.job and sched[r.job .. "_" .. i] or nil
    local c = shard_db_counts(dir .. "/shard_" .. i .. ".db", keys)
    if c and c.error then r.why = c.error end
    if c and not c.error then r.ok, r.failed, r.db_hash = c.ok, c.failed, c.hash end
    if hash ~= st.config_sha256 then
      r.state, r.why = "failed", "the config changed since the script was written (write it again with --slurm)"
    elseif r.scheduler and ACTIVE[r.scheduler] then
      r.state = r.scheduler == "PENDING" and "pending" or "running"
    elseif c and not c.error and r.ok == #keys then
      r.state = "done"
    elseif c or (r.scheduler and not ACTIVE[r.scheduler]) then
      r.state = "failed"
      if not r.why then
        r.why = string.format("%d of %d points ok, %d failed%s", r.ok, #keys, r.failed,
          r.scheduler and ("; Slurm: " .. r.scheduler) or "")
      end
    elseif r.job and #sources > 0 then
      -- submitted, known to neither squeue nor sacct, and no database: it ended before starting
      r.state, r.why = "failed", "job " .. r.job .. " ended without creating its database"
    elseif r.job then
      r.state, r.why = "pending", "submitted as job " .. r.job .. " (no squeue/sacct here to ask)"
    else
      r.state = "missing"
    end
    rows[i] = r
  end
  return rows, sources, st
end

--- Resubmits DIR's failed and missing shards; returns the job id (nil when
--- nothing needs it) and the shard list.
function M.resubmit(dir)
  local rows = M.status(dir)
  local list = {}
  for _, r in ipairs(rows) do
    if r.state == "failed" or r.state == "missing" then list[#list + 1] = r.shard end
  end
  if #list == 0 then return nil, list end
  return M.submit(dir, list), list
end

--- Checked in a shard task (--config-sha256 H): the config still hashes to H,
--- and the database records H (or records it now, when it has none).
function M.check_shard(cfg, config_path, db_path, want)
  local hash = M.config_hash(cfg, config_path)
  if hash ~= want then
    sl.fail("%s: its points changed since the Slurm script was written (config sha256 %s, the script's %s); " ..
      "write the script again with --slurm", config_path, hash:sub(1, 12), want:sub(1, 12))
  end
  local db = sl.store.open(db_path)
  db:begin()
  local row = db:query("SELECT value FROM meta WHERE key = ?", M.META_KEY)[1]
  if row and row.value ~= want then
    db:rollback()
    db:close()
    sl.fail("%s: holds a sweep of another config (sha256 %s, this one %s)", db_path, row.value:sub(1, 12),
      want:sub(1, 12))
  end
  if not row then db:query("INSERT INTO meta (key, value) VALUES (?, ?)", M.META_KEY, want) end
  db:commit()
  db:close()
end

return M
