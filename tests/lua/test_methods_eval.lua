-- test_methods_eval.lua — issue 3's must-show through the program a user
-- runs: for each static-pattern method (sliding_window, streaming_llm,
-- s2_attention, power_attention, triangle_mix, masformer, blindsight,
-- neighborhood_attention, videoxl2_chunk_prefill, lserve) write a fresh
-- seeded random q/k/v safetensors file (GQA 4:2, ragged n), run
-- `sparselab eval METHOD --qkv F --out O --json` with a non-default budget
-- and parameters that make the mask non-trivial, and check O's o and lse
-- against the independent float64 reference of static_ref.lua (the card's
-- mask as a predicate, plain loops) to 1e-5 relative L2 and the reported
-- density against the brute-force kept-pair count; then that
-- `sparselab methods --json` lists each with a cpu backend.
-- Run with LUA_CPATH=build/?.so lua5.4 tests/lua/test_methods_eval.lua
package.path = "tests/lua/?.lua;" .. package.path
local H = require "harness"
local R = require "static_ref"
local sl = require "sparselab"
local test, near, eq, truthy = H.test, H.near, H.eq, H.truthy

local BUILD = os.getenv("BUILD") or "build"
local SL = BUILD .. "/sparselab"
local HQ, HKV, D = 4, 2, 16
local tmp = os.tmpname()  -- a unique name; the files below add suffixes to it

-- Runs a command, returns its stdout and whether it exited 0.
local function sh(cmd)
  local f = assert(io.popen(cmd .. " 2>&1"))
  local out = f:read("a")
  local ok = f:close()
  return out, ok
end

local function quote(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

-- Each case: the method, tokens, CLI arguments, and the card's mask as keep(h, i, j).
local CASES = {
  {id = "sliding_window", n = 203, args = {"--budget", "37"}, keep = R.window_keep(37)},
  {id = "streaming_llm", n = 190, args = {"--budget", "29", "--param", "n_init=5"}, keep = R.streaming_keep(5, 29)},
  {id = "s2_attention", n = 161, args = {"--budget", "2", "--param", "vert_stride=3", "--param", "block=16"},
    keep = R.s2_keep({local_blocks = 2, vert_stride = 3, block = 16}, HQ, HKV)},
  {id = "power_attention", n = 150, args = {"--budget", "1", "--param", "block=8", "--param", "sink=1"},
    keep = R.power_keep{window = 1, block = 8, sink = 1}},
  {id = "triangle_mix", n = 171, args = {"--budget", "17", "--param", "n_init=3", "--param", "n_last=9"},
    keep = R.triangle_keep({n_init = 3, n_local = 17, n_last = 9}, 171)},
  {id = "masformer", n = 133, args = {"--budget", "13"}, keep = R.window_keep(13)},
  {id = "blindsight", n = 120, args = {"--budget", "3", "--param", "images={{10,45},{50,90},{90,104}}",
    "--param", "categories={intra_sink,sink,intra,dense}"},
    keep = R.blindsight_keep({{10, 45}, {50, 90}, {90, 104}}, 120, 3, {"intra_sink", "sink", "intra", "dense"})},
  {id = "neighborhood_attention", n = 150, args = {"--budget", "5", "--param", "grid={10,15}", "--param", "stride=2",
    "--param", "is_causal=1"}, keep = R.na_keep({10, 15}, 5, 2, 1, true)},
  {id = "videoxl2_chunk_prefill", n = 141, args = {"--budget", "1", "--param", "prefix_len=5", "--param", "suffix_len=9",
    "--param", "ts_len=2", "--param", "group_tokens=6", "--param", "block_size=2"},
    keep = R.vxl_keep(141, {prefix_len = 5, suffix_len = 9, ts_len = 2, group_tokens = 6, block_size = 2,
      prev_blocks_num = 1})},
  {id = "lserve", n = 115, args = {"--budget", "20", "--param", "ctx_sink=4", "--param", "static_sparsity=0.5"},
    keep = R.lserve_keep(1, 4, 20, HQ // HKV)},
}

for ci, c in ipairs(CASES) do
  test(c.id .. ": sparselab eval --out matches the card's mask in float64; density = brute-force count", function()
    local seed = 7100 + 10 * ci
    local q, k, v = sl.randn({HQ, c.n, D}, {seed = seed}), sl.randn({HKV, c.n, D}, {seed = seed + 1}),
      sl.randn({HKV, c.n, D}, {seed = seed + 2})
    local fin, fout = tmp .. "." .. c.id .. ".qkv.safetensors", tmp .. "." .. c.id .. ".out.safetensors"
    sl.save(fin, {q = q, k = k, v = v})
    local argv = {SL, "eval", c.id, "--qkv", fin, "--out", fout, "--json"}
    for _, a in ipairs(c.args) do argv[#argv + 1] = a end
    for i, a in ipairs(argv) do argv[i] = quote(a) end
    local out, ok = sh(table.concat(argv, " "))
    os.remove(fin)
    truthy(ok, c.id .. ": sparselab eval exited 0 (output: " .. out:sub(1, 300) .. ")")
    eq(out:match('"method":"([^"]+)"'), c.id, "method in the JSON line")
    local got = sl.load(fout)
    os.remove(fout)
    local t = {q = q:totable(), k = k:totable(), v = v:totable(), n = c.n, d = D, hq = HQ, hkv = HKV}
    local o, lse = R.reference(t, c.keep)
    local e_o, e_l = R.rel_l2(got.o:totable(), o), R.rel_l2(got.lse:totable(), lse)
    truthy(e_o <= 1e-5, string.format("%s: o rel_l2 %.3g <= 1e-5", c.id, e_o))
    truthy(e_l <= 1e-5, string.format("%s: lse rel_l2 %.3g <= 1e-5", c.id, e_l))
    local density = tonumber(out:match('"density":([-+%d.eE]+)'))
    local want = R.brute_density(t, c.keep, true)
    truthy(want > 0.02 and want < 0.9, string.format("%s: mask is non-trivial (density %.3f)", c.id, want))
    near(density, want, 1e-12, c.id .. " reported density vs brute-force count")
  end)
end

test("sparselab methods --json lists each method with a cpu backend", function()
  local out, ok = sh(quote(SL) .. " methods --json")
  truthy(ok, "sparselab methods --json exited 0")
  for _, c in ipairs(CASES) do
    local line = out:match("[^\n]*\"id\":\"" .. c.id .. "\"[^\n]*")
    truthy(line, "methods --json lists " .. c.id)
    truthy(line:match("\"backends\":%[[^%]]*\"cpu\""), c.id .. " backends contain cpu")
  end
end)

os.remove(tmp)
H.done()
