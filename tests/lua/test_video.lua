-- test_video.lua — video layouts and permutations (issue 15): layout
-- coordinates, one-line errors for a layout whose product differs from n,
-- every order is a bijection and its round trip through perm.apply is the
-- identity on ref and cpu (a non-bijection is refused), the Gilbert curve's
-- continuity on even boxes, and the synthetic video workload's planted
-- structure (spatial heads keep their mass in the frame, temporal heads at
-- the same position; text keys draw mass; steps drift slowly).
-- Run with LUA_CPATH=build/?.so lua5.4 tests/lua/test_video.lua
package.path = "tests/lua/?.lua;" .. package.path
local H = require "harness"
local sl = require "sparselab"
local test, near, eq, truthy, raises = H.test, H.near, H.eq, H.truthy, H.raises
local layout = sl.layout

test("layout coordinates and text tokens", function()
  local lay = layout.video{frames = 3, height = 4, width = 5, text = 2}
  eq(lay.n, 62, "n")
  local t = 0
  for f = 0, 2 do for y = 0, 3 do for x = 0, 4 do
    local cf, cy, cx = lay:coord(t)
    eq(cf * 100 + cy * 10 + cx, f * 100 + y * 10 + x, "coord of " .. t)
    eq(lay:index(f, y, x), t, "index")
    t = t + 1
  end end end
  truthy(lay:is_text(60) and lay:is_text(61) and not lay:is_text(59), "text tokens at the end")
  local first = layout.video{frames = 3, height = 4, width = 5, text = 2, text_first = true}
  truthy(first:is_text(0) and first:is_text(1) and not first:is_text(2), "text tokens first")
  eq(first:index(0, 0, 0), 2, "video starts after the text")
end)

test("layout errors are one line", function()
  raises(function() layout.video{frames = 0, height = 4, width = 4} end, "frames must be a positive integer")
  raises(function() layout.video{frames = 2, height = 4, width = 4, txt = 1} end, "unknown key 'txt'")
  local q = sl.randn({2, 40, 8}, 1)
  local lay = layout.video{frames = 2, height = 4, width = 4, text = 3}
  local ok, err = pcall(sl.problem, {q = q, k = q, v = q, layout = lay})
  truthy(not ok, "a layout of 35 tokens on 40 is refused")
  truthy(tostring(err):find("layout video 2 frames x 4 x 4 + 3 text = 35 tokens, but the problem has 40 tokens", 1,
    true), tostring(err))
  truthy(not tostring(err):find("\n"), "one line")
  raises(function() layout.parse("video,frames=2,height=x") end, "height must be a positive integer")
  raises(function() lay:order("zzz") end, "layout order 'zzz' is unknown")
end)

-- the order is a bijection of [0, n) keeping the text tokens in place
local function check_bijection(lay, order, what)
  eq(#order, lay.n, what .. ": length")
  local seen = {}
  for p, t in ipairs(order) do
    truthy(t >= 0 and t < lay.n and not seen[t], what .. ": token " .. t .. " once")
    seen[t] = true
    if lay:is_text(t) then eq(p - 1, t, what .. ": text token stays") end
  end
end

test("every order is a bijection and permute then unpermute is the identity", function()
  for _, dims in ipairs{{3, 4, 5, 2}, {4, 6, 6, 0}, {5, 3, 7, 3}} do
    local lay = layout.video{frames = dims[1], height = dims[2], width = dims[3], text = dims[4]}
    local names = {"fyx", "yxf", "xfy", "gilbert", "tiles"}
    for _, name in ipairs(names) do
      check_bijection(lay, lay:order(name, {tf = 2, th = 3, tw = 2}), table.concat(dims, "x") .. " " .. name)
    end
    local x = sl.randn({4, lay.n, 6}, 15 + dims[1])
    -- one order per head pair: heads 0-1 token-major, 2-3 on the Gilbert curve
    local perm = lay:perm_tensor({"yxf", "gilbert"})
    for _, be in ipairs{"ref", "cpu"} do
      local y = layout.permute(x, perm, be)
      eq(sl.metric.max_abs(layout.unpermute(y, perm, be), x), 0, "round trip on " .. be)
      truthy(sl.metric.max_abs(y, x) > 0, "the order moved tokens")
    end
    -- frame-major is the identity order
    eq(sl.metric.max_abs(layout.permute(x, lay:perm_tensor("fyx")), x), 0, "fyx is the identity")
  end
  -- token-major: consecutive positions hold one (y, x) over the frames
  local lay = layout.video{frames = 3, height = 2, width = 2}
  local o = lay:order("yxf")
  eq(table.concat(o, ","), "0,4,8,1,5,9,2,6,10,3,7,11", "yxf")
  local tiles = lay:order("tiles", {tf = 1, th = 2, tw = 1})
  eq(table.concat(tiles, ",", 1, 4), "0,2,1,3", "tiles of 1x2x1")
end)

test("a permutation that is not a bijection is an error", function()
  local x = sl.randn({2, 5, 3}, 9)
  raises(function() layout.permute(x, sl.tensor({{0, 1, 1, 3, 4}}, "i32")) end,
    "perm.apply: perm row 0 is not a bijection: 1 at positions 1 and 2")
  raises(function() layout.permute(x, sl.tensor({{0, 1, 2, 3, 5}}, "i32")) end, "is outside [0, 5)")
  local lay = layout.video{frames = 2, height = 2, width = 2}
  raises(function() lay:perm_tensor({{0, 1, 2}}) end, "order 1 lists 3 tokens, expected 8")
end)

test("the Gilbert curve is continuous on even boxes and visits every point once", function()
  for _, b in ipairs{{8, 8, 4}, {6, 4, 2}, {16, 10, 6}, {5, 7, 3}} do
    local seen, count, prev, jumps = {}, 0, nil, 0
    layout.gilbert3d(b[1], b[2], b[3], function(x, y, z)
      local key = (z * b[2] + y) * b[1] + x
      truthy(x >= 0 and x < b[1] and y >= 0 and y < b[2] and z >= 0 and z < b[3] and not seen[key], "in box, once")
      seen[key] = true
      count = count + 1
      if prev and math.abs(x - prev[1]) + math.abs(y - prev[2]) + math.abs(z - prev[3]) ~= 1 then
        jumps = jumps + 1
      end
      prev = {x, y, z}
    end)
    eq(count, b[1] * b[2] * b[3], "points")
    if b[1] % 2 == 0 and b[2] % 2 == 0 and b[3] % 2 == 0 then eq(jumps, 0, table.concat(b, "x") .. " jumps") end
  end
end)

-- mean over sampled video rows of the probability mass in the query's frame,
-- at its (y, x) over all frames, and on text keys, per head
local function masses(q, k, lay)
  local rows = {}
  for i = 0, lay.n_video - 1, 5 do rows[#rows + 1] = i end
  local P = sl.score.rows(q, k, sl.tensor(rows, "i32"), {causal = false}):totable()
  local hw, out = lay.height * lay.width, {}
  for h = 1, #P do
    local frame, pos, text, other, n_other = 0, 0, 0, 0, 0
    for r, i in ipairs(rows) do
      for j = 0, lay.n - 1 do
        local p = P[h][r][j + 1]
        if lay:is_text(j) then text = text + p
        else
          if j // hw == i // hw then frame = frame + p end
          if j % hw == i % hw then pos = pos + p end
          if j // hw ~= i // hw and j % hw ~= i % hw then other, n_other = other + p, n_other + 1 end
        end
      end
    end
    -- text and other: mean probability of one such key
    out[h] = {frame = frame / #rows, pos = pos / #rows, text = text / #rows / lay.text, other = other / n_other}
  end
  return out
end

test("the video workload plants spatial heads, temporal heads and text keys", function()
  local q, k, v, p, lay, kinds = layout.video_workload{frames = 4, height = 6, width = 6, text = 4, heads = 6,
    seed = 5}
  eq(lay.n, 148, "n")
  eq(q:shape()[2], 148, "q tokens")
  local m = masses(q, k, lay)
  local ks = kinds:totable()
  local seen = {[0] = 0, [1] = 0}
  for h = 1, 6 do
    local kind = math.tointeger(ks[h])
    seen[kind] = seen[kind] + 1
    -- uniform attention would put 1/4 in the frame and 1/36 at the position
    if kind == 0 then truthy(m[h].frame > 0.6 and m[h].frame > 2 * m[h].pos, "spatial head " .. h)
    else truthy(m[h].pos > 0.5 and m[h].pos > 2 * m[h].frame / 4, "temporal head " .. h) end
    truthy(m[h].text > 3 * m[h].other, "a text key draws more than 3 unrelated video keys in head " .. h)
  end
  truthy(seen[0] > 0 and seen[1] > 0, "both kinds planted")
  -- steps drift slowly: step 1 is closer to step 0 than step 10 is
  local q1 = layout.video_workload{frames = 4, height = 6, width = 6, text = 4, heads = 6, seed = 5, step = 1}
  local q10 = layout.video_workload{frames = 4, height = 6, width = 6, text = 4, heads = 6, seed = 5, step = 10}
  local d1, d10 = sl.metric.rel_l2(q1, q), sl.metric.rel_l2(q10, q)
  truthy(d1 > 0 and d1 < 0.05 and d10 > 3 * d1, string.format("drift %g then %g", d1, d10))
  raises(function() layout.video_workload{frames = 2, colour = 1} end, "unknown option 'colour'")
  raises(function() layout.video_workload{frames = 2.5} end, "frames expects an integer")
end)

-- a trajectory of `count` denoising steps of one small video workload
local function trajectory(count, knobs)
  local list = {}
  for s = 0, count - 1 do
    local t = {frames = 4, height = 8, width = 8, text = 8, heads = 4, seed = 11, step = s}
    for key, val in pairs(knobs or {}) do t[key] = val end
    local q, k, v, _, lay = layout.video_workload(t)
    list[#list + 1] = {q = q, k = k, v = v, causal = false, layout = lay}
  end
  return list
end

test("a dense-steps schedule reproduces dense on those steps; refresh reuses the cached estimate", function()
  local sch = sl.steps.schedule{steps = 5, dense_first = 2, refresh = 2}
  local r = sl.steps.replay{method = "sparse_videogen", schedule = sch, trajectory = trajectory(5),
    params = {block = 16, rows = 16}}
  local actions = {}
  for i, rec in ipairs(r.steps) do actions[i] = rec.action end
  eq(table.concat(actions, ","), "dense,dense,estimate,reuse,estimate", "actions")
  for i = 1, 2 do
    truthy(r.steps[i].rel_l2 <= 1e-5, "dense step " .. i .. " rel_l2 " .. r.steps[i].rel_l2)
    near(r.steps[i].recall_mean, 1, 1e-6, "dense step recall")
  end
  truthy(r.steps[3].rel_l2 > 1e-3, "the estimate step is sparse")
  eq(r.steps[4].estimate_ms, 0, "a reuse step estimates nothing")
  truthy(r.steps[4].reuse_ms > 0, "reuse time recorded")
  -- the reuse step ran the kinds profiled at step 2 on step 3's tensors
  eq(r.state.cache.estimated, 4, "last estimate at step 4")
  near(r.mean.density, (2 + r.steps[3].density + r.steps[4].density + r.steps[5].density) / 5, 1e-12, "mean density")
  -- refresh = 1: every non-dense step estimates
  local every = sl.steps.replay{method = "sparse_videogen", schedule = {steps = 3, refresh = 1},
    trajectory = {steps = 3, problem = function(s) return trajectory(3)[s + 1] end}, params = {block = 16, rows = 16}}
  eq(every.steps[2].action, "estimate", "refresh 1")
  -- a per-step budget of 1 everywhere equals dense at every step
  local full = sl.steps.replay{method = "sparse_videogen", schedule = {steps = 3, budgets = {1, 1, 1}, refresh = 2},
    trajectory = trajectory(3), params = {block = 16, rows = 16}}
  for i = 1, 3 do truthy(full.steps[i].rel_l2 <= 1e-5, "budget 1 at step " .. i) end
end)

test("layer-level dense fallbacks: the first layers of a multi-layer trajectory run dense at every step", function()
  -- three layers (different seeds), three steps
  local traj = {}
  for st = 0, 2 do
    local layers = {}
    for l = 0, 2 do
      local q, k, v, _, lay = layout.video_workload{frames = 4, height = 8, width = 8, text = 8, heads = 2,
        seed = 30 + l, step = st}
      layers[l + 1] = {q = q, k = k, v = v, causal = false, layout = lay}
    end
    traj[st + 1] = {layers = layers}
  end
  local rsa = sl.methods.get("rectified_spaattn")
  local sch = rsa.schedule(3, 1, 2)
  eq(sch.dense_layers, 2, "dense layers in the schedule")
  local r = sl.steps.replay{method = rsa, schedule = sch, trajectory = traj, params = {block = 8, drop_rate = 0.8}}
  eq(#r.steps, 9, "a record per step and layer")
  eq(r.layers, 3, "three layers")
  for _, rec in ipairs(r.steps) do
    if rec.layer < 2 or rec.step < 1 then
      eq(rec.action, "dense", "layer " .. rec.layer .. " step " .. rec.step)
      truthy(rec.rel_l2 <= 1e-5, "dense fallback reproduces dense: " .. rec.rel_l2)
    else
      eq(rec.action, "estimate", "layer 2 follows the schedule at step " .. rec.step)
      truthy(rec.rel_l2 > 1e-4, "layer 2 is sparse")
    end
  end
  -- one state per layer: layer 2 estimated at steps 1 and 2, layers 0 and 1 never
  eq(r.states[2].cache.estimated, 2, "layer 2's own cache")
  eq(r.states[0].cache.estimated, nil, "layer 0 never estimated")
  -- without the fallback every layer is sparse after the warm-up step
  local r0 = sl.steps.replay{method = rsa, schedule = rsa.schedule(3, 1), trajectory = traj,
    params = {block = 8, drop_rate = 0.8}}
  for _, rec in ipairs(r0.steps) do if rec.step >= 1 then eq(rec.action, "estimate", "no layer fallback") end end
  -- errors: a ragged trajectory, a negative layer count
  local bad = {traj[1], {layers = {traj[2].layers[1]}}}
  raises(function() sl.steps.replay{method = rsa, schedule = {steps = 2}, trajectory = bad, params = {block = 8}} end,
    "step 1 has 1 layers, step 0 had 3")
  raises(function() sl.steps.schedule{steps = 2, dense_layers = -1} end, "dense_layers")
  -- sparse_videogen's step 5: the reference's fractions of steps and layers
  local svg = sl.methods.get("sparse_videogen").schedule(50, 60)
  eq(svg.dense_first, 5, "first 10% of 50 steps")
  eq(svg.dense_layers, 1, "first 3% of 60 layers")
end)

test("schedule and step-state errors are one line", function()
  raises(function()
    sl.steps.replay{method = "sparse_videogen", schedule = {steps = 6}, trajectory = trajectory(3)}
  end, "steps.replay: the schedule has 6 steps, the trajectory only 3")
  raises(function() sl.steps.schedule{steps = 4, dense_steps = {4}} end, "dense step 4 is outside the 4 steps")
  raises(function() sl.steps.schedule{steps = 4, refresh = 0} end, "refresh must be at least 1")
  raises(function() sl.steps.schedule{steps = 4, budgets = {1, 2}} end, "budgets must list one value per step (4)")
  raises(function() sl.steps.schedule{steps = 4, every = 2} end, "unknown key 'every'")
  local traj = trajectory(1)
  local prob = sl.problem(traj[1])
  local st = sl.steps.state{method = "sparse_videogen", prob = prob}
  local sch = sl.steps.schedule{steps = 2}
  local m = sl.methods.get("sparse_videogen")
  local p = sl.registry.resolve(m, {block = 16, rows = 8})
  raises(function() sl.steps.run_step(sch, st, "dense", prob, p, 0) end,
    "the step state belongs to method sparse_videogen, not dense")
  local q2, k2, v2, _, lay2 = layout.video_workload{frames = 2, height = 8, width = 8, text = 8, heads = 4}
  raises(function()
    sl.steps.run_step(sch, st, m, sl.problem{q = q2, k = k2, v = v2, causal = false, layout = lay2}, p, 0)
  end, "the step state was made for q [4, 264, 64] and 264 keys; this step has q [4, 136, 64]")
  raises(function() sl.steps.run_step(sch, st, m, prob, p, 2) end, "step 2 is past the schedule's 2 steps")
end)

test("reuse runs the cached mask in the estimate's token order; without a mask it estimates again", function()
  local traj = trajectory(3)
  local r = sl.steps.replay{method = "draft_attention", schedule = {steps = 2, refresh = 2}, trajectory = traj,
    params = {ph = 2, pw = 4, sparsity = 0.7}}
  eq(r.steps[2].action, "reuse", "step 1 reuses")
  -- the reused mask applied by hand in the tiles order equals the reuse step's output
  local lay = traj[2].layout
  local perm = lay:perm_tensor("tiles", {tf = 1, th = 2, tw = 4})
  local prob = traj[2]
  local o = sl.attn.block_sparse(layout.permute(prob.q, perm), layout.permute(prob.k, perm), layout.permute(prob.v, perm),
    r.state.cache.mask)
  local d = sl.attn.dense(prob.q, prob.k, prob.v, {causal = false})
  near(sl.metric.rel_l2(layout.unpermute(o, perm), d), r.steps[2].rel_l2, 1e-6, "reuse = cached mask in the tiles order")
  truthy(r.steps[2].rel_l2 < r.steps[1].rel_l2 + 0.05, "a drifted step keeps the estimate's quality")
  local psa = sl.steps.replay{method = "psa_pyramid", schedule = {steps = 2, refresh = 2}, trajectory = traj,
    params = {bq = 16, bk = 16}}
  eq(psa.steps[2].action, "estimate", "no block mask to reuse: estimate again")
end)

test("sparselab eval on the video workload (non-causal, layout carried) and its one-line errors", function()
  local bin = (os.getenv("BUILD") or "build") .. "/sparselab"
  local function sh(cmd)
    local f = io.popen(cmd .. " 2>&1")
    local out = f:read("a")
    return f:close(), out
  end
  local ok, out = sh(bin .. " eval sparse_videogen --workload video,frames=2,height=8,width=8,text=4,heads=2,seed=3 " ..
    "--param block=16 --param rows=8 --json")
  truthy(ok and out:find('"method":"sparse_videogen"', 1, true) and out:find('"workload":"video"', 1, true),
    "eval: " .. out)
  ok, out = sh(bin .. " eval dense --workload video,frames=2,colour=1")
  truthy(not ok and out:find("unknown option 'colour'", 1, true) and select(2, out:gsub("\n", "")) == 1,
    "one-line error: " .. out)
  ok, out = sh(bin .. " eval dense --workload video,frames=2,height=4,width=4 --layout video,frames=2,height=4,width=4")
  truthy(not ok and out:find("--layout is for --qkv tensors", 1, true), "layout twice: " .. out)
end)

test("sparselab bench shows a video method's executed density and speedup over dense", function()
  local bin = (os.getenv("BUILD") or "build") .. "/sparselab"
  local f = io.popen(bin .. " bench --only-estimators --methods draft_attention --n 2048 --quick --json 2>&1")
  local out = f:read("a")
  f:close()
  truthy(out:find('"name":"video:draft_attention"', 1, true), "bench row: " .. out)
  truthy(out:find('"speedup":', 1, true) and out:find('"density":', 1, true), "density and speedup: " .. out)
  truthy(not out:find('"error"', 1, true), "no error: " .. out)
end)

io.write(string.format("test_video: %d passed, %d failed\n", H.passed, H.failed))
os.exit(H.failed == 0 and 0 or 1)
