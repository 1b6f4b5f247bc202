-- test_slurm.lua — sparselab.slurm without a Slurm (the real-Slurm test is
-- tests/slurm/test_slurm.sh, `make test-slurm`): the config hash (of the
-- sorted point keys: equal for a reordered config, different when a point
-- changes), the array script (array range, #SBATCH options, the task
-- command with shard, database, --resume and the hash; its shell words
-- quoted), the state file, shard ranges for resubmission, status of a
-- directory whose shards are partly done (from the shard databases alone),
-- a shard database refusing a sweep of another hash, and bad option values.
package.path = "tests/lua/?.lua;" .. package.path
local BUILD = os.getenv("BUILD") or "build"
package.cpath = BUILD .. "/?.so;" .. package.cpath
local H = require "harness"
local sl = require "sparselab"
local S = require "sparselab.sweep"
local slurm = require "sparselab.slurm"

local tmpdir = os.tmpname()
os.remove(tmpdir)
assert(os.execute("mkdir -p '" .. tmpdir .. "'"))
local function tmp(name) return tmpdir .. "/" .. name end
local function read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

local function cfg(seeds, order)
  local methods = {"dense", {id = "sliding_window", budgets = {16, 32}, params = {bq = 16, bk = 16}}}
  if order then methods = {methods[2], methods[1]} end
  return S.check_config({name = "t", methods = methods, sizes = {64}, seeds = seeds,
    workloads = {{name = "synthetic", heads = 2, kv_heads = 1, d = 16}}}, "t")
end

H.test("config hash: of the point keys", function()
  local h1, keys = slurm.config_hash(cfg{1, 2}, "t")
  H.eq(#keys, 6, "points")
  H.eq(#h1, 64, "hex sha256")
  local sorted = {}
  for i, k in ipairs(keys) do sorted[i] = k end
  table.sort(sorted)
  H.eq(h1, sl.store.sha256(table.concat(sorted, "\n")), "sha256 of the sorted keys joined by newlines")
  H.eq(slurm.config_hash(cfg({1, 2}, true), "t"), h1, "methods reordered: same points, same hash")
  H.truthy(slurm.config_hash(cfg{1, 3}, "t") ~= h1, "another seed: another hash")
end)

H.test("the array script and the state file", function()
  local path = tmp("my config's.lua")
  local f = assert(io.open(path, "wb"))
  f:write('return {name = "t", methods = {"dense"}, sizes = {64, 128}, seeds = {1, 2, 3}, ' ..
    'workloads = {{name = "synthetic", heads = 2, kv_heads = 1, d = 16}}}')
  f:close()
  local c = S.load_config(path)
  local w = slurm.write{config = c, config_path = path, dir = tmp("d"), array = 3, partition = "gpu", time = "1:00:00",
    cpus_per_task = 4, gpus_per_task = 1, mem = "8G", program = "/opt/sl bin/sparselab"}
  H.eq(w.shards, 3, "shards")
  H.eq(w.points, 6, "points")
  local s = read(w.script)
  for _, want in ipairs{"#SBATCH --array=1-3\n", "#SBATCH --partition=gpu\n", "#SBATCH --time=1:00:00\n",
      "#SBATCH --cpus-per-task=4\n", "#SBATCH --gpus-per-task=1\n", "#SBATCH --mem=8G\n",
      "#SBATCH --output=" .. tmp("d") .. "/shard_%a.out\n", "#SBATCH --error=" .. tmp("d") .. "/shard_%a.err\n",
      "# config sha256: " .. w.hash, "'/opt/sl bin/sparselab' sweep '" .. tmpdir .. "/my config'\\''s.lua' " ..
      '--shard "$i/3" --db ' .. tmp("d") .. '/shard_"$i".db --resume --config-sha256 ' .. w.hash .. "\n"} do
    H.truthy(s:find(want, 1, true), "script holds " .. want)
  end
  local st = slurm.load_state(tmp("d"))
  H.eq(st.shards, 3, "state: shards")
  H.eq(st.config_sha256, w.hash, "state: hash")
  H.eq(#st.submissions, 0, "state: no submission")
  -- status from the shard databases alone: shard 1 run, 2 partly, 3 never
  local all = S.expand(c, path)
  S.run{config = c, config_path = path, db = tmp("d/shard_1.db"), shard = {1, 3}, workers = 1,
    program = BUILD .. "/sparselab", progress = false}
  local part = S.shard(all, 2, 3)
  H.truthy(#part >= 1, "shard 2 has points")
  local db = sl.store.open(tmp("d/shard_2.db"))
  db:close()
  local rows = slurm.status(tmp("d"))
  H.eq(rows[1].state, "done", "shard 1 done")
  H.eq(rows[1].ok, #S.shard(all, 1, 3), "shard 1 ok points")
  H.eq(rows[2].state, "failed", "shard 2: a database without its points is failed")
  H.eq(rows[3].state, "missing", "shard 3 missing")
  H.raises(function() slurm.write{config = c, config_path = path, dir = tmp("e"), time = "1h; rm -rf /",
    program = "/x"} end, "--time")
  H.raises(function() slurm.load_state(tmp("nowhere")) end, "no slurm.json")
end)

H.test("shard ranges", function()
  H.eq(slurm.ranges{1, 2, 3, 5, 7, 8}, "1-3,5,7-8", "ranges")
  H.eq(slurm.ranges{4}, "4", "one")
end)

H.test("a shard database refuses another config's sweep", function()
  local c1, c2 = cfg{1}, cfg{2}
  local h1, h2 = slurm.config_hash(c1, "t"), slurm.config_hash(c2, "t")
  slurm.check_shard(c1, "t", tmp("s.db"), h1)
  slurm.check_shard(c1, "t", tmp("s.db"), h1) -- again: fine
  H.raises(function() slurm.check_shard(c2, "t", tmp("s.db"), h2) end, "holds a sweep of another config")
  H.raises(function() slurm.check_shard(c2, "t", tmp("s2.db"), h1) end, "changed since the Slurm script was written")
  local db = sl.store.open(tmp("s.db"))
  H.eq(db:query("SELECT value FROM meta WHERE key = 'sweep_config_sha256'")[1].value, h1, "recorded hash")
  db:close()
end)

os.execute("rm -rf '" .. tmpdir .. "'")
H.done()
