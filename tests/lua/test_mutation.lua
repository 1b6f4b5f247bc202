-- test_mutation.lua — the mutation harness (issue 20): for every dynamic
-- method of the registry (family "*-estimate", and since session 5 the
-- decode-kv, layer-reuse, budget, head-level and token-sparsity families),
-- its tests (those whose name starts with its id, in the files below) run
-- once more in a child lua5.4 with SL_MUTATE=score_blind
-- (tests/lua/mutate.lua: the score ops', the token pooling's, the block
-- mass's, the decode score ops' (page.token_scores, page.qscores,
-- page.bounds) and the video recipes' sampled-row outputs replaced by seeded
-- random / shuffled values of the same shape, select.pq_match's lists and
-- attn.bucket's threshold report (use_tau) by random ones of the same size)
-- and must fail.
-- A method whose tests all pass under the mutation, or that has no test,
-- survives; survivors are listed, and any
-- survivor not in KNOWN_SURVIVORS (each with the reason its estimator is out
-- of the mutation's reach) fails this test, as does a known survivor that
-- no longer survives (so the list stays true).
package.path = "tests/lua/?.lua;" .. package.path
local BUILD = os.getenv("BUILD") or "build"
package.cpath = BUILD .. "/?.so;" .. package.cpath
local H = require "harness"
local sl = require "sparselab"

local FILES = {"tests/lua/test_methods_dynamic_a.lua", "tests/lua/test_methods_dynamic_b.lua",
  "tests/lua/test_fidelity.lua", "tests/lua/test_corrections_ext.lua", "tests/lua/test_estimators_indep.lua",
  "tests/lua/test_methods_selectors.lua", "tests/lua/test_methods_nonsoftmax.lua", "tests/lua/test_methods_video.lua",
  "tests/lua/test_methods_trainable.lua", "tests/lua/test_decode.lua", "tests/lua/test_heads.lua",
  "tests/lua/test_estimators_f64.lua"}

-- Methods whose estimator the score-blind mutation cannot reach (none of the mutated ops or helpers in it).
local KNOWN_SURVIVORS = {
  -- hsr_attention was listed here ("its estimator is inside attn.bucket") until session 5: mutate.lua now
  -- replaces attn.bucket's threshold report (use_tau) by a random report of the same size, like pq_match's
  -- issue 20, session 5: the decode and head-level families are iterated too (see DYNAMIC below)
  sqa = "no estimator: a fixed reduction of the query heads by `ratio`, nothing is scored",
  sparse_guidance = "no estimator: tokens are dropped by a seeded random draw by design (the card's method)",
  sixteen_heads = "its estimator is the model loss's gradient in the head gates (forward passes of the model "
    .. "runner), not a score op; its tests compare with a score-blind order themselves",
  head_neuron_predictor = "its estimator is a predictor trained on the model's activations (ridge / MLP in Lua), "
    .. "not a score op; its tests compare with a score-blind mask themselves",
}

-- The dynamic families (issue 20, session 5: the decode-side and head-level ones were not iterated before):
-- prefill estimators ("*-estimate"), decode KV selection, cross-layer reuse, budget allocation, head-level
-- selection and token sparsity.
local DYNAMIC = {["decode-kv"] = true, ["layer-reuse"] = true, budget = true, ["head-level"] = true,
  ["token-sparsity"] = true}
local function is_dynamic(family)
  family = tostring(family)
  return family:find("%-estimate$") ~= nil or DYNAMIC[family] == true
end

-- issue 14, second half: the trainable recipes' tests (family "trainable": not iterated, listed for completeness)
FILES[#FILES + 1] = "tests/lua/test_methods_trainable2.lua"

local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

-- The files' text, to skip a child process for a file that never mentions the id (its tests are named after
-- the id, so such a file has none; a plain substring test, so a name built at run time still counts).
local TEXT = {}
for _, f in ipairs(FILES) do
  local fh = assert(io.open(f, "r"))
  TEXT[f] = fh:read("a")
  fh:close()
end

-- Runs the tests of id in every file under the mutation: passed, failed (summed over files).
local function run(id)
  local passed, failed = 0, 0
  for _, f in ipairs(FILES) do
    if not TEXT[f]:find(id, 1, true) then goto continue end
    local cmd = string.format("SL_TEST_ONLY=%s SL_MUTATE=score_blind LUA_CPATH=%s lua5.4 %s 2>/dev/null", q(id),
      q(BUILD .. "/?.so"), q(f))
    local p = io.popen(cmd, "r")
    local out = p:read("a")
    p:close()
    local np, nf = out:match("(%d+) passed, (%d+) failed%s*$")
    if not np then error(string.format("%s under the mutation: no summary line from %s", id, f), 0) end
    passed, failed = passed + tonumber(np), failed + tonumber(nf)
    ::continue::
  end
  return passed, failed
end

H.test("mutation: every dynamic method's tests fail with score-blind scores", function()
  local survivors, lines = {}, {}
  for _, id in ipairs(sl.methods.ids()) do
    local m = sl.methods.get(id)
    if is_dynamic(m.family) then
      local np, nf = run(id)
      local state = nf > 0 and "killed" or (np == 0 and "SURVIVED (no test)" or "SURVIVED")
      if nf == 0 then survivors[id] = true end
      lines[#lines + 1] = string.format("  %-24s %d of %d tests fail under score_blind: %s", id, nf, np + nf, state)
    end
  end
  print("mutation (score_blind):")
  print(table.concat(lines, "\n"))
  local unexpected, stale = {}, {}
  for id in pairs(survivors) do if not KNOWN_SURVIVORS[id] then unexpected[#unexpected + 1] = id end end
  for id in pairs(KNOWN_SURVIVORS) do if not survivors[id] then stale[#stale + 1] = id end end
  table.sort(unexpected)
  table.sort(stale)
  for id, why in pairs(KNOWN_SURVIVORS) do
    if survivors[id] then print(string.format("  known survivor %s: %s", id, why)) end
  end
  H.truthy(#unexpected == 0, "survivors: " .. table.concat(unexpected, ", "))
  H.truthy(#stale == 0, "known survivors now killed (remove them from KNOWN_SURVIVORS): " .. table.concat(stale, ", "))
end)

H.done()
