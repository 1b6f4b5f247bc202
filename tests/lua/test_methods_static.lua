-- test_methods_static.lua — the static-pattern recipes (s2_attention,
-- power_attention, triangle_mix, masformer, blindsight,
-- neighborhood_attention, videoxl2_chunk_prefill, lserve) against an
-- independent float64 reference of static_ref.lua: each card's mask by its own
-- definition (no mask code under test) and softmax attention over the kept
-- keys with plain loops; o and lse to 1e-5 relative L2, the reported density
-- to the brute-force kept-pair count; then the cards' cheap checks, the
-- schedules of sl.assign, and `sparselab methods --json`. (The same checks
-- through the CLI: test_methods_eval.lua.) Run with
-- LUA_CPATH=build/?.so lua5.4 tests/lua/test_methods_static.lua
package.path = "tests/lua/?.lua;" .. package.path
local H = require "harness"
local sl = require "sparselab"
local test, near, eq, truthy = H.test, H.near, H.eq, H.truthy

local R = require "static_ref"
local reference, rel_l2, brute_density, pow2 = R.reference, R.rel_l2, R.brute_density, R.pow2

local HQ, HKV = 4, 2

local function problem(n, d, seed, causal)
  local q, k, v = sl.randn({HQ, n, d}, {seed = seed}), sl.randn({HKV, n, d}, {seed = seed + 1}),
    sl.randn({HKV, n, d}, {seed = seed + 2})
  return sl.problem{q = q, k = k, v = v, causal = causal},
    {q = q:totable(), k = k:totable(), v = v:totable(), n = n, d = d, hq = HQ, hkv = HKV}
end

-- sl.eval against the reference: o, lse and density.
local function check(id, prob, t, params, keep, causal)
  params.bq, params.bk = params.bq or 16, params.bk or 16
  local r = sl.eval(id, prob, {params = params})
  local o, lse = reference(t, keep)
  local e_o, e_l = rel_l2(r.o:totable(), o), rel_l2(r.lse:totable(), lse)
  truthy(e_o <= 1e-5, string.format("%s: o rel_l2 %.3g <= 1e-5", id, e_o))
  truthy(e_l <= 1e-5, string.format("%s: lse rel_l2 %.3g <= 1e-5", id, e_l))
  near(r.metrics.density, brute_density(t, keep, causal ~= false), 1e-12, id .. " density")
  return r
end

local function is_dense(r, what)
  truthy(r.metrics.rel_l2 <= 1e-6, string.format("%s: rel_l2 vs dense %.3g", what, r.metrics.rel_l2))
  near(r.metrics.density, 1, 1e-12, what .. " density")
end

-- ---- s2_attention -------------------------------------------------------------

test("s2_attention equals the independent per-KV-head reference", function()
  for _, c in ipairs{{n = 97, d = 8, p = {local_blocks = 2, vert_stride = 3, block = 16}},
      {n = 130, d = 16, p = {local_blocks = 1, vert_stride = 4, block = 8, offset = 1, bq = 16, bk = 32}},
      {n = 75, d = 12, p = {local_blocks = 1, vert_stride = 2, block = 16, num_dense_heads = 1}}} do
    local prob, t = problem(c.n, c.d, c.n)
    local p = {}
    for k, v in pairs(c.p) do p[k] = v end
    check("s2_attention", prob, t, p, R.s2_keep(c.p, HQ, HKV))
  end
end)

test("s2_attention card checks: stride 1 / wide local = dense, shards cover, diagonal kept", function()
  local prob = problem(96, 8, 5)
  is_dense(sl.eval("s2_attention", prob, {params = {vert_stride = 1, local_blocks = 1, block = 16, bq = 16, bk = 16}}),
    "vert_stride 1")
  is_dense(sl.eval("s2_attention", prob, {params = {vert_stride = 5, local_blocks = 6, block = 16, bq = 16, bk = 16}}),
    "local_blocks >= n_blocks")
  -- coverage: local_blocks 1, stride 2 = Hkv·step: the last row's blocks over heads cover every key block
  local m = sl.methods.get("s2_attention").mask(prob, {local_blocks = 1, vert_stride = 2, block = 16, head_step = 0,
    offset = 0, num_dense_heads = 0, bq = 16, bk = 16})
  local bits = m:to_bits():totable()
  eq(#bits, HKV, "mask heads = KV heads")
  for c = 0, 4 do  -- block 5 is the last row's diagonal (local) block, in every head
    local hit = 0
    for g = 1, HKV do if bits[g][96][c * 16 + 1] == 1 then hit = hit + 1 end end
    eq(hit, 1, "key block " .. c .. " in exactly one shard (last row)")
  end
  for g = 1, HKV do for i = 1, 96 do eq(bits[g][i][i], 1, "diagonal") end end
end)

-- ---- power_attention ---------------------------------------------------------

test("power_attention equals the independent block-level reference", function()
  for _, c in ipairs{{n = 128, d = 8, p = {window = 1, block = 8, sink = 1}},
      {n = 101, d = 16, p = {window = 0, block = 1, sink = 0}},
      {n = 90, d = 8, p = {window = 2, block = 4, sink = 2}}} do
    local prob, t = problem(c.n, c.d, c.n + 7)
    local P = c.p
    check("power_attention", prob, t, {window = P.window, block = P.block, sink = P.sink}, R.power_keep(P))
  end
end)

test("power_attention card checks: token rows, out-degree, reachability, few blocks = dense", function()
  local n = 100
  local prob = problem(n, 8, 3)
  local m = sl.methods.get("power_attention").mask(prob, {window = 0, block = 1, sink = 0, bq = 16, bk = 16})
  local bits = m:to_bits():totable()[1]
  local adj = {}
  for i = 0, n - 1 do
    adj[i] = {}
    local deg = 0
    for j = 0, n - 1 do
      local want = j == i or pow2(i - j)
      eq(bits[i + 1][j + 1] == 1, want, string.format("token form (%d, %d)", i, j))
      if want then deg = deg + 1; adj[i][#adj[i] + 1] = j end
    end
    if i > 0 then truthy(deg <= math.floor(math.log(i, 2)) + 2, "out-degree of row " .. i) end
  end
  -- L layers reach every j with i - j < 2^L
  local L, i0 = 5, n - 1
  local seen = {[i0] = true}
  local front = {i0}
  for _ = 1, L do
    local nxt = {}
    for _, i in ipairs(front) do for _, j in ipairs(adj[i]) do if not seen[j] then seen[j] = true; nxt[#nxt + 1] = j end end end
    front = nxt
  end
  for j = i0 - 2 ^ L + 1, i0 do truthy(seen[math.tointeger(j)], "reachable " .. j) end
  is_dense(sl.eval("power_attention", prob, {params = {block = 32, window = 1, sink = 1, bq = 16, bk = 16}}),
    "4 blocks (distances 0, 1, 2 and sink)")
end)

-- ---- triangle_mix --------------------------------------------------------------

local triangle_keep = R.triangle_keep

test("triangle_mix equals the independent reference", function()
  for _, c in ipairs{{n = 110, d = 8, p = {n_init = 3, n_local = 17, n_last = 9}},
      {n = 77, d = 16, p = {n_init = 0, n_local = 1, n_last = 1}}} do
    local prob, t = problem(c.n, c.d, c.n + 11)
    check("triangle_mix", prob, t, {n_init = c.p.n_init, n_local = c.p.n_local, n_last = c.p.n_last},
      triangle_keep(c.p, c.n))
  end
end)

test("triangle_mix card checks: n_last >= n and shallow layers are dense; last rows dense; others A-shape", function()
  local n = 96
  local prob = problem(n, 8, 21)
  is_dense(sl.eval("triangle_mix", prob, {params = {n_last = n, n_local = 4, bq = 16, bk = 16}}), "n_last >= n")
  local shallow = problem(n, 8, 21)
  shallow.layer = 3
  is_dense(sl.eval("triangle_mix", shallow, {params = {n_last = 2, n_local = 4, starting_layer = 4, bq = 16, bk = 16}}),
    "layer < starting_layer")
  local r = sl.eval("triangle_mix", prob, {params = {n_init = 2, n_local = 9, n_last = 10, bq = 16, bk = 16}})
  local a = sl.eval("streaming_llm", prob, {params = {n_init = 2, n_local = 9, bq = 16, bk = 16}})
  local dense = sl.attn.dense(prob.q, prob.k, prob.v, {causal = true}):totable()
  local o, oa = r.o:totable(), a.o:totable()
  for h = 1, HQ do
    for i = 1, n do
      for c = 1, 8 do
        if i > n - 10 then near(o[h][i][c], dense[h][i][c], 1e-6, "last rows dense")
        else near(o[h][i][c], oa[h][i][c], 1e-6, "A-shape rows") end
      end
    end
  end
end)

-- ---- masformer -------------------------------------------------------------------

test("masformer equals the independent reference; full layers and span >= n are dense", function()
  local prob, t = problem(100, 16, 31)
  check("masformer", prob, t, {span = 13}, R.window_keep(13))
  local full = problem(100, 16, 31)
  full.layer = 8
  is_dense(sl.eval("masformer", full, {params = {span = 3, full_every = 4, bq = 16, bk = 16}}), "full layer 8")
  local sparse = problem(100, 16, 31)
  sparse.layer = 9
  truthy(sl.eval("masformer", sparse, {params = {span = 3, bq = 16, bk = 16}}).metrics.density < 0.1, "layer 9 sparse")
  is_dense(sl.eval("masformer", prob, {params = {span = 100, bq = 16, bk = 16}}), "span >= n")
end)

-- ---- blindsight ------------------------------------------------------------------

local blindsight_keep = R.blindsight_keep

test("blindsight equals the independent reference for every category", function()
  local n = 120
  local prob, t = problem(n, 8, 41)
  local images = {{10, 45}, {50, 90}, {90, 104}}
  local cats = {"intra_sink", "sink", "intra", "dense"}
  check("blindsight", prob, t, {images = images, categories = cats, k = 3}, blindsight_keep(images, n, 3, cats))
  for _, cat in ipairs{"intra", "sink", "intra_sink"} do
    local all = {cat, cat, cat, cat}
    check("blindsight", prob, t, {images = {{0, 60}, {70, 110}}, category = cat, k = 2},
      blindsight_keep({{0, 60}, {70, 110}}, n, 2, all))
  end
end)

test("blindsight card checks: dense category = dense; single image from 0 = dense on its rows; within causal", function()
  local n = 80
  local prob = problem(n, 8, 43)
  is_dense(sl.eval("blindsight", prob, {params = {images = {{5, 30}}, category = "dense", bq = 16, bk = 16}}), "dense")
  local r = sl.eval("blindsight", prob, {params = {images = {{0, 50}}, category = "intra", bq = 16, bk = 16}})
  is_dense(r, "single image starting the prompt (+ dense text rows)")
  local m = sl.methods.get("blindsight").mask(prob, {images = {{10, 30}, {40, 70}}, category = "intra_sink", k = 4,
    bq = 16, bk = 16})
  eq(m:causal_violations(), 0, "within causal")
end)

-- ---- neighborhood_attention -------------------------------------------------------

local na_keep = R.na_keep

test("neighborhood_attention equals the independent NATTEN-rule reference (1-D, 2-D, strided, dilated, causal)", function()
  for _, c in ipairs{{n = 100, grid = {100}, k = 9, s = 1, dil = 1, causal = false},
      {n = 101, grid = {101}, k = 8, s = 3, dil = 2, causal = false},
      {n = 90, grid = {90}, k = 11, s = 4, dil = 1, causal = true},
      {n = 96, grid = {8, 12}, k = 5, s = 2, dil = 1, causal = false},
      {n = 96, grid = {8, 12}, k = 4, s = 1, dil = 2, causal = true}} do
    local prob, t = problem(c.n, 8, c.n + c.k, c.causal)
    local p = {kernel = c.k, stride = c.s, dilation = c.dil, is_causal = c.causal and 1 or 0}
    if #c.grid > 1 then p.grid = c.grid end
    check("neighborhood_attention", prob, t, p, na_keep(c.grid, c.k, c.s, c.dil, c.causal), c.causal)
  end
end)

test("neighborhood_attention card checks: kernel = X dense; prod(k) keys per query; stride groups share keys", function()
  local n = 64
  local nc = problem(n, 8, 51, false)
  is_dense(sl.eval("neighborhood_attention", nc, {params = {kernel = n, bq = 16, bk = 16}}), "non-causal kernel = X")
  local ca = problem(n, 8, 51, true)
  is_dense(sl.eval("neighborhood_attention", ca, {params = {kernel = n, is_causal = 1, bq = 16, bk = 16}}),
    "causal kernel = X")
  local m = sl.methods.get("neighborhood_attention").mask(nc, {kernel = 3, stride = 2, dilation = 1, is_causal = 0,
    grid = {8, 8}, bq = 16, bk = 16})
  local bits = m:to_bits():totable()[1]
  for i = 1, n do
    local cnt = 0
    for j = 1, n do cnt = cnt + bits[i][j] end
    eq(cnt, 9, "keys of query " .. (i - 1))
  end
  -- queries (r, c) and (r, c + 1) with c even are one stride group in dim 2 (and r even / r + 1 in dim 1)
  for r = 0, 7, 2 do
    for c = 0, 7, 2 do
      for _, q2 in ipairs{{r, c + 1}, {r + 1, c}, {r + 1, c + 1}} do
        local a, b = r * 8 + c + 1, q2[1] * 8 + q2[2] + 1
        for j = 1, n do eq(bits[a][j], bits[b][j], "stride group shares keys") end
      end
    end
  end
end)

-- ---- videoxl2_chunk_prefill ---------------------------------------------------------

local vxl_keep = R.vxl_keep

test("videoxl2_chunk_prefill equals the independent template reference", function()
  for _, c in ipairs{{n = 128, p = {prefix_len = 5, suffix_len = 9, ts_len = 2, group_tokens = 6, block_size = 2,
        prev_blocks_num = 1}},
      {n = 111, p = {prefix_len = 0, suffix_len = 0, ts_len = 1, group_tokens = 4, block_size = 3, prev_blocks_num = 0}},
      {n = 90, p = {prefix_len = 12, suffix_len = 20, ts_len = 3, group_tokens = 7, block_size = 1, prev_blocks_num = 2}}} do
    local prob, t = problem(c.n, 8, c.n + 3)
    local p = {}
    for k, v in pairs(c.p) do p[k] = v end
    check("videoxl2_chunk_prefill", prob, t, p, vxl_keep(c.n, c.p))
  end
end)

test("videoxl2_chunk_prefill card check: prev_blocks_num >= chunks is dense causal", function()
  local prob = problem(100, 8, 61)
  is_dense(sl.eval("videoxl2_chunk_prefill", prob, {params = {prefix_len = 4, suffix_len = 6, ts_len = 2,
    group_tokens = 8, block_size = 2, prev_blocks_num = 5, bq = 16, bk = 16}}), "prev >= chunks")
end)

-- ---- lserve ---------------------------------------------------------------------

test("lserve (static streaming heads) equals the independent reference; sparsity 0 dense; streaming rows = streaming_llm", function()
  local n = 115
  local prob, t = problem(n, 16, 71)
  for _, s in ipairs{0.5, 1.0} do
    local ns = math.floor(s * HKV + 0.5)
    check("lserve", prob, t, {ctx_local = 20, ctx_sink = 4, static_sparsity = s}, R.lserve_keep(ns, 4, 20, HQ // HKV))
  end
  is_dense(sl.eval("lserve", prob, {params = {ctx_local = 5, static_sparsity = 0, bq = 16, bk = 16}}), "sparsity 0")
  local r = sl.eval("lserve", prob, {params = {ctx_local = 20, ctx_sink = 4, bq = 16, bk = 16}})
  local a = sl.eval("streaming_llm", prob, {params = {n_init = 4, n_local = 20, bq = 16, bk = 16}})
  local o, oa = r.o:totable(), a.o:totable()
  for h = 1, HQ // HKV do for i = 1, n do for c = 1, 16 do near(o[h][i][c], oa[h][i][c], 1e-6, "streaming head rows") end end end
end)

-- ---- registry and schedules ----------------------------------------------------------

local NEW = {"s2_attention", "power_attention", "triangle_mix", "masformer", "blindsight", "neighborhood_attention",
  "videoxl2_chunk_prefill", "lserve"}

test("every new recipe: card id, knob among params, checks listed, cpu backend", function()
  for _, id in ipairs(NEW) do
    local m = sl.methods.get(id)
    eq(m.card, id, id .. " card")
    truthy(m.knob and m.params[m.knob], id .. " knob")
    truthy(m.checks and #m.checks > 0, id .. " checks")
    truthy(table.concat(sl.methods.backends(m), ","):find("cpu", 1, true), id .. " cpu backend")
  end
end)

test("sparselab methods --json lists every new id with a cpu backend", function()
  local f = assert(io.popen((os.getenv("BUILD") or "build") .. "/sparselab methods --json"))
  local out = f:read("a")
  f:close()
  for _, id in ipairs(NEW) do
    local line = out:match("[^\n]*\"id\":\"" .. id .. "\"[^\n]*")
    truthy(line, "methods --json lists " .. id)
    truthy(line:match("\"backends\":%[[^%]]*\"cpu\""), id .. " backends contain cpu")
  end
end)

test("sl.assign.layers / heads give schedules model.lua reads; bad keys are errors", function()
  local s = sl.assign.layers{default = "sliding_window", [0] = "dense", [2] = {method = "lserve", budget = 64}}
  eq(s.default, "sliding_window", "default")
  eq(s.layers[0], "dense", "layer 0")
  eq(s.layers[2].budget, 64, "layer 2")
  local h = sl.assign.heads{default = "dense", [1] = "power_attention"}
  eq(h(5, 1), "power_attention", "head 1")
  eq(h(5, 0), "dense", "head 0")
  local nested = sl.assign.layers{default = h, [0] = "masformer"}
  eq(nested(0, 1), "masformer", "layer 0 overrides")
  eq(nested(3, 1), "power_attention", "nested heads")
  H.raises(function() sl.assign.layers{defualt = "dense"} end, "unknown key 'defualt'", "typo")
  H.raises(function() sl.assign.heads{[-1] = "dense"} end, "unknown key '-1'", "negative head")
  local tm = sl.methods.get("triangle_mix").schedule{n_local = 64, starting_layer = 2}
  eq(tm.layers[1], "dense", "triangle_mix layer 1 dense")
  eq(tm.default.method, "triangle_mix", "triangle_mix deep layers")
end)

test("sl.assign.heads_method runs each head with its spec (independent reference)", function()
  local n = 88
  local prob, t = problem(n, 8, 81)
  local m = sl.assign.heads_method{id = "mix_test", default = "dense",
    heads = {[1] = {method = "sliding_window", params = {w = 7, bq = 16, bk = 16}},
      [3] = {method = "triangle_mix", params = {n_init = 2, n_local = 5, n_last = 3, bq = 16, bk = 16}}}}
  local r = sl.eval(m, prob)
  local tri = triangle_keep({n_init = 2, n_local = 5, n_last = 3}, n)
  local keep = function(h, i, j)
    if h == 1 then return j <= i and i - j < 7 end
    if h == 3 then return tri(h, i, j) end
    return j <= i
  end
  local o, lse = reference(t, keep)
  truthy(rel_l2(r.o:totable(), o) <= 1e-5, "o")
  truthy(rel_l2(r.lse:totable(), lse) <= 1e-5, "lse")
  near(r.metrics.density, brute_density(t, keep, true), 1e-12, "density (mean over heads)")
  truthy(table.concat(sl.methods.backends(m), ","):find("cpu", 1, true), "backends")
end)

H.done()
