-- sparselab.bench_video — executed density and speedup over dense of the
-- video / DiT methods (issue 15): each method at its default parameters on
-- one denoising step of the synthetic video workload (sl.synthetic_video,
-- frames x 32 x 32 tokens + 64 text, 2 heads, d = 64, non-causal; light_forcing
-- on its autoregressive chunk: the last two frames' queries), its whole run
-- (estimate + execution) timed against our dense attention on the same
-- inputs. Medians of repeated runs after one untimed warm-up; only ratios
-- carry meaning on a shared machine. `sparselab bench --video` (or
-- --methods naming video methods).
local sl = require "sparselab"

local V = {}

local function median_ms(reps, f)
  f()
  local t = {}
  for i = 1, reps do
    local t0 = sl.time()
    f()
    t[i] = (sl.time() - t0) * 1e3
  end
  table.sort(t)
  return t[(reps + 1) // 2]
end

--- Is method m a video method (needs a layout or a bidirectional problem)?
function V.is_video(m)
  return m.needs_layout == true or m.noncausal_only == true or m.workload == "video"
end

--- Ids of the video methods.
function V.ids()
  local ids = {}
  for _, id in ipairs(sl.methods.ids()) do
    local ok, m = pcall(sl.methods.get, id)
    if ok and V.is_video(m) then ids[#ids + 1] = id end
  end
  return ids
end

--- o = {quick =, backend =, reps =, methods = {ids} (default V.ids()), n =
--- (video tokens, a multiple of 1024; default 16384, quick 4096)} -> rows
--- {name = "video:<id>", n, d, heads, metrics = {density, time_ms,
--- dense_time_ms, speedup, estimate_ms, execute_ms}} (error on failure).
function V.run(o)
  o = o or {}
  local backend = o.backend or "cpu"
  local reps = o.reps or (o.quick and 2 or 3)
  local n = o.n or (o.quick and 4096 or 16384)
  local side = 32
  if n % (side * side) ~= 0 then sl.fail("bench --video: n = %d must be a multiple of %d (frames of 32 x 32)", n, side * side) end
  local frames = n // (side * side)
  local q, k, v, wp, lay = sl.layout.video_workload{frames = frames, height = side, width = side, text = 64, heads = 2,
    seed = 1}
  local prob = sl.problem{q = q, k = k, v = v, causal = false, layout = lay, backend = backend, workload = "video",
    workload_params = wp}
  local S = side * side
  local ar = sl.problem{q = q:narrow(2, (frames - 2) * S + 1, 2 * S), k = k:narrow(2, 1, frames * S),
    v = v:narrow(2, 1, frames * S), causal = false, backend = backend,
    layout = sl.layout.video{frames = frames, height = side, width = side}}
  local dense_ms, ar_dense_ms
  local results = {}
  for _, id in ipairs(o.methods or V.ids()) do
    local m = sl.methods.get(id)
    local pr = id == "light_forcing" and ar or prob
    local r = {name = "video:" .. m.id, method = m.id, n = pr.k:shape()[2], n_q = pr.q:shape()[2], d = 64, heads = 2,
      kv_heads = 2, backend = backend, params = {method = m.id, frames = frames}, metrics = {}}
    local ok, err = pcall(function()
      if pr == ar then
        ar_dense_ms = ar_dense_ms or median_ms(reps, function() return sl.attn.dense(ar.q, ar.k, ar.v,
          {causal = false, backend = backend}) end)
      else
        dense_ms = dense_ms or median_ms(reps, function() return sl.attn.dense(q, k, v, {causal = false,
          backend = backend}) end)
      end
      local dms = pr == ar and ar_dense_ms or dense_ms
      local p = sl.registry.resolve(m, {}, nil)
      if m.calibrate then p.config = m.calibrate({pr}, {params = {}}) end
      local last
      local ms = median_ms(reps, function() last = m.run(pr, p) return last end)
      local st = last.stats or {}
      r.metrics = {density = st.density, time_ms = ms, dense_time_ms = dms, speedup = dms / ms,
        estimate_ms = st.estimate_ms, execute_ms = st.execute_ms}
    end)
    if not ok then r.error = tostring(err) end
    results[#results + 1] = r
    collectgarbage()
  end
  return results
end

return V
