-- sparselab.cli.merge — `sparselab merge OUT.db IN.db...` (DESIGN §9): the
-- union of shard databases. Each IN is read (attached, never written) and
-- its results copied into OUT with their metrics and runs (ids remapped),
-- one transaction per IN. A point key is in OUT once: a result whose key OUT
-- already holds as 'ok' is skipped; an 'ok' result replaces a 'failed' one;
-- a 'failed' result is skipped when OUT has the key in any state. A run is
-- copied only when one of its results is, and only once (a run with the same
-- start time, host, script and argv in OUT is reused), so merging the same
-- file twice adds nothing. Results without a point key are copied as they are.
-- Shards of a Slurm sweep record their config's hash (meta
-- sweep_config_sha256, sparselab/slurm.lua): inputs whose hashes differ from
-- each other or from OUT's are refused before OUT is touched, and OUT records
-- the hash they share.
local sl = require "sparselab"

local HASH_KEY = "sweep_config_sha256"

-- The config hash the attached database src records, or nil.
local function src_hash(db)
  local ok, rows = pcall(db.query, db, "SELECT value FROM src.meta WHERE key = ?", HASH_KEY)
  return ok and rows[1] and rows[1].value or nil
end

local APP_ID = 1397506370 -- "SLAB", set by migration 001

local function columns(db, tbl, schema)
  local cols, set = {}, {}
  for _, r in ipairs(db:query("SELECT name FROM pragma_table_info(?, ?)", tbl, schema)) do
    cols[#cols + 1] = r.name
    set[r.name] = true
  end
  return cols, set
end

-- Columns of tbl in both databases except the excluded ones, quoted.
local function common(db, tbl, exclude)
  local main_cols = columns(db, tbl, "main")
  local _, src = columns(db, tbl, "src")
  local out = {}
  for _, c in ipairs(main_cols) do
    if src[c] and not exclude[c] then out[#out + 1] = '"' .. c .. '"' end
  end
  return table.concat(out, ", ")
end

local function check_input(db, path, out_file)
  local f = io.open(path, "rb")
  if not f then sl.fail("%s: no such file", path) end
  f:close()
  local ok, err = pcall(db.query, db, "ATTACH DATABASE ? AS src", path)
  local function why(e) return (tostring(e):gsub("^sl_store_query: ", ""):gsub(" %(in: .*", "")) end
  if not ok then sl.fail("%s: not a sparselab database (%s)", path, why(err)) end
  local function detach_fail(fmt, ...)
    pcall(db.query, db, "DETACH DATABASE src")
    sl.fail(fmt, ...)
  end
  local ok2, rows = pcall(db.query, db, "PRAGMA src.application_id")
  if not ok2 then
    detach_fail("%s: not a sparselab database (%s)", path, why(rows))
  end
  if rows[1].application_id ~= APP_ID then detach_fail("%s: not a sparselab database (another application's SQLite file)", path) end
  local v = db:query("PRAGMA src.user_version")[1].user_version
  local mine = db:query("PRAGMA main.user_version")[1].user_version
  if v > mine then
    detach_fail("%s: written by a newer sparselab (schema version %d; this build knows %d)", path, v, mine)
  end
  for _, r in ipairs(db:query("PRAGMA database_list")) do
    if r.name == "src" and r.file == out_file then detach_fail("%s: is the output database itself", path) end
  end
end

-- Copies the results of the attached database src into main.
local function merge_one(db, known)
  local run_cols = common(db, "run", {id = true})
  local res_cols = common(db, "result", {id = true, run_id = true})
  local run_map = {}
  local n = {copied = 0, skipped = 0, replaced = 0, runs = 0}
  local function run_for(src_id)
    if run_map[src_id] then return run_map[src_id] end
    local same = db:query("SELECT m.id FROM main.run m JOIN src.run s ON s.id = ? WHERE m.started IS s.started " ..
      "AND m.host IS s.host AND m.script IS s.script AND m.argv IS s.argv ORDER BY m.id LIMIT 1", src_id)
    local id = same[1] and same[1].id
    if not id then
      id = db:query("INSERT INTO main.run (" .. run_cols .. ") SELECT " .. run_cols ..
        " FROM src.run WHERE id = ? RETURNING id", src_id)[1].id
      n.runs = n.runs + 1
    end
    run_map[src_id] = id
    return id
  end
  -- 'ok' first, so an ok result of a key wins over a failed one from the same file.
  local rows = db:query("SELECT id, run_id, point_key, status FROM src.result ORDER BY status = 'ok' DESC, id")
  for _, r in ipairs(rows) do
    local have = r.point_key and known[r.point_key]
    if have == "ok" or (have == "failed" and r.status ~= "ok") then
      n.skipped = n.skipped + 1
    else
      if have == "failed" then
        db:query("DELETE FROM main.result WHERE point_key = ? AND status = 'failed'", r.point_key)
        n.replaced = n.replaced + 1
      end
      local id = db:query("INSERT INTO main.result (run_id, " .. res_cols .. ") SELECT ?, " .. res_cols ..
        " FROM src.result WHERE id = ? RETURNING id", run_for(r.run_id), r.id)[1].id
      db:query("INSERT INTO main.metric (result_id, name, value) SELECT ?, name, value FROM src.metric " ..
        "WHERE result_id = ?", id, r.id)
      if r.point_key then known[r.point_key] = r.status end
      n.copied = n.copied + 1
    end
  end
  return n
end

return function(argv, parse, out)
  local _, pos = parse(argv, 2, "merge")
  if #pos < 2 then sl.fail("usage: sparselab merge OUT.db IN.db...") end
  local out_path = pos[1]
  -- Check every input before OUT is created or changed (in a scratch store).
  for i = 2, #pos do
    local f = io.open(pos[i], "rb")
    if not f then sl.fail("%s: no such file", pos[i]) end
    f:close()
    if pos[i] == out_path then sl.fail("%s: is the output database itself", pos[i]) end
  end
  local hash, hash_from
  local function agree(h, from)
    if not h then return end
    if hash and h ~= hash then
      sl.fail("%s: a sweep of another config (sha256 %s) than %s (sha256 %s); refusing to merge them", from,
        h:sub(1, 12), hash_from, hash:sub(1, 12))
    end
    hash, hash_from = h, hash_from or from
  end
  do
    local mem = sl.store.open(":memory:")
    local f = io.open(out_path, "rb")
    if f then
      f:close()
      check_input(mem, out_path, nil)
      agree(src_hash(mem), out_path)
      mem:query("DETACH DATABASE src")
    end
    for i = 2, #pos do
      check_input(mem, pos[i], nil)
      agree(src_hash(mem), pos[i])
      mem:query("DETACH DATABASE src")
    end
    mem:close()
  end
  local db = sl.store.open(out_path)
  if hash then db:query("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", HASH_KEY, hash) end
  local out_file = db:query("PRAGMA database_list")[1].file
  local known = {}
  for _, r in ipairs(db:query("SELECT point_key AS k, max(status = 'ok') AS ok FROM main.result " ..
      "WHERE point_key IS NOT NULL GROUP BY point_key")) do
    known[r.k] = r.ok == 1 and "ok" or "failed"
  end
  local total = 0
  for i = 2, #pos do
    check_input(db, pos[i], out_file)
    db:begin()
    local ok, n = pcall(merge_one, db, known)
    if not ok then
      pcall(db.rollback, db)
      pcall(db.query, db, "DETACH DATABASE src")
      db:close()
      error(n, 0)
    end
    db:commit()
    db:query("DETACH DATABASE src")
    total = total + n.copied
    out(string.format("%s: %d results copied%s, %d skipped (already in %s), %d run%s", pos[i], n.copied,
      n.replaced > 0 and string.format(" (%d replacing failed ones)", n.replaced) or "", n.skipped, out_path, n.runs,
      n.runs == 1 and "" or "s"))
  end
  local count = db:query("SELECT count(*) AS n, count(DISTINCT point_key) AS k FROM result")[1]
  db:close()
  out(string.format("merge: %d results copied; %s holds %d results, %d point keys", total, out_path, count.n, count.k))
end
