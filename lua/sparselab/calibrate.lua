-- sparselab.calibrate — offline calibration (issue 4): a method that needs
-- one (MInference's per-head pattern search, SpargeAttn's per-head
-- thresholds, SALE's thresholds, ...) exposes m.calibrate(problems, opts) ->
-- config table. sl.calibrate(method, {problems =, out =, params =}) runs it
-- and writes the config as JSON with its provenance; the method's string
-- param `config` names such a file and the recipe reads it back with
-- sl.calibrate.load(path, method_id), which refuses a file written for
-- another method or one that is not a calibration file.
--
-- File layout (JSON object):
--   format = "sparselab-calibration", version = 1,
--   method = id, card = card id, created = UTC date, sparselab_version,
--   params = the options' params (what the calibration ran with),
--   inputs = [{workload, q = [H, n, d], k = [...], v = [...], sha256 (of
--     the q, k, v tensors as one safetensors file), source (a file path,
--     when the problem came from one)}],
--   config = what m.calibrate returned.
local sl = require "sparselab"
local json = require "sparselab.json"

local C = {}

C.FORMAT = "sparselab-calibration"
C.VERSION = 1

local function shape_of(t)
  local s = t:shape()
  local out = {}
  for i, x in ipairs(s) do out[i] = x end
  return out
end

-- sha256 of q, k, v written as one safetensors file (a canonical byte form
-- of the inputs, computed in C).
local function tensors_sha(prob)
  local tmp = os.tmpname() .. ".safetensors"
  sl.save(tmp, {q = prob.q, k = prob.k, v = prob.v})
  local f = assert(io.open(tmp, "rb"))
  local sha = sl.sha256(f:read("a"))
  f:close()
  os.remove(tmp)
  local stem = tmp:sub(1, -#".safetensors" - 1)
  os.remove(stem)
  return sha
end

local RUN_KEYS = {problems = true, out = true, params = true, sources = true}

--- Runs m.calibrate over problems and writes the config file. opts =
--- {problems = {problem or {q=,k=,v=}, ...}, out = "cfg.json" (optional:
--- nothing is written without it), params = {...} (passed through to the
--- method), sources = {path per problem} (optional provenance)}.
--- Returns the config table and the document written.
function C.run(method, opts)
  local m = sl.methods.get(method)
  if type(opts) ~= "table" then sl.fail("sl.calibrate: expected an options table {problems =, out =}") end
  for k in pairs(opts) do
    if not RUN_KEYS[k] then
      sl.fail("sl.calibrate: unknown option '%s' (expected problems, out, params, sources)", tostring(k))
    end
  end
  if type(m.calibrate) ~= "function" then
    sl.fail("sl.calibrate: method %s needs no calibration (it has no calibrate function)", m.id)
  end
  local problems = opts.problems
  if type(problems) ~= "table" or #problems == 0 then
    sl.fail("sl.calibrate: 'problems' must be a non-empty list of problems")
  end
  local probs, inputs = {}, {}
  for i, p in ipairs(problems) do
    if type(p) ~= "table" or not (p.q and p.k and p.v) then
      sl.fail("sl.calibrate: problems[%d] must be a problem with q, k, v", i)
    end
    local prob = p._checked and p or sl.problem(p)
    prob._checked = true
    probs[i] = prob
    inputs[i] = {workload = prob.workload or "custom", q = shape_of(prob.q), k = shape_of(prob.k),
      v = shape_of(prob.v), sha256 = tensors_sha(prob), source = opts.sources and opts.sources[i] or nil}
  end
  local config = m.calibrate(probs, {params = opts.params or {}})
  if type(config) ~= "table" then
    sl.fail("sl.calibrate: %s.calibrate returned %s, expected a config table", m.id, type(config))
  end
  local doc = {format = C.FORMAT, version = C.VERSION, method = m.id, card = m.card,
    created = os.date("!%Y-%m-%dT%H:%M:%SZ"), sparselab_version = sl.version, params = opts.params or {},
    inputs = inputs, config = config}
  if opts.out then
    local text = sl.json_encode(doc)
    local f, err = io.open(opts.out, "wb")
    if not f then sl.fail("sl.calibrate: %s", err) end
    f:write(text, "\n")
    f:close()
  end
  return config, doc
end

--- The config table of the calibration file at path, which must have been
--- written for method_id. Raises one-line errors for a missing, malformed or
--- foreign file. Returns config, document.
function C.load(path, method_id)
  if type(path) ~= "string" or path == "" then
    sl.fail("sl.calibrate.load: expected a file path, found %s", tostring(path))
  end
  local f, err = io.open(path, "rb")
  if not f then sl.fail("sl.calibrate.load: %s", err) end
  local text = f:read("a")
  f:close()
  local ok, doc = pcall(json.decode, text, "sl.calibrate.load: " .. path)
  if not ok then sl.fail("%s", doc) end
  if type(doc) ~= "table" or doc.format ~= C.FORMAT then
    sl.fail("sl.calibrate.load: %s is not a calibration file (expected format '%s')", path, C.FORMAT)
  end
  if doc.version ~= C.VERSION then
    sl.fail("sl.calibrate.load: %s has version %s, expected %d", path, tostring(doc.version), C.VERSION)
  end
  if method_id and doc.method ~= method_id then
    sl.fail("sl.calibrate.load: %s was calibrated for method '%s', not '%s'", path, tostring(doc.method), method_id)
  end
  if type(doc.config) ~= "table" then
    sl.fail("sl.calibrate.load: %s has no 'config' object", path)
  end
  return doc.config, doc
end

return setmetatable(C, {__call = function(_, method, opts) return C.run(method, opts) end})
