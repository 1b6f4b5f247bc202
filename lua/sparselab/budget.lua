-- sparselab.budget — budget matching (issue 4): solves a method's one knob so
-- that it runs at a given cost, so every method can be compared at the same
-- density, FLOPs or K/V bytes. The achieved value is measured, not predicted,
-- and returned beside the target.
--
-- Targets (all measured on the problem given):
--   density   executed density: kept (query, key) pairs of the executed mask
--             over the causal pairs (all pairs for a non-causal problem),
--             averaged over mask heads — mask:density(prob.causal).
--   flops     the cost the method pays: executor FLOPs (stats.flops, from
--             sl.op_flops) + estimator FLOPs (stats.estimator_flops; 0 when
--             absent) — the estimator counts in the cost (issue 4).
--   kv_bytes  bytes of K and V the executor reads, from the executed block
--             mask (B.kv_bytes): for every KV head and every query block, the
--             keys of the key blocks that any query head of that KV head's
--             group keeps in that query block (each block counted once, its
--             full clipped width: the executor loads whole tiles), × head_dim
--             × 2 tensors (K and V) × 4 bytes (f32). A GQA group processed
--             together loads each tile once; dense causal attention reads
--             Hkv × Σ_r (keys up to query block r's last row, in whole tiles).
--
-- How: bisection over [min, max] of the knob's spec (max defaults to n_k for
-- an integer knob, 1 for a float one). knob_direction (+1 default: a larger
-- knob keeps more) says which end is cheap. density and kv_bytes use
-- m.mask(prob, p) when the method has one (the estimate and selection only,
-- no attention); flops, and methods without a mask, use m.run(prob, p).
-- Integer knobs: the exact boundary. Float knobs: until the achieved value
-- is within `tol` (relative, default 0.01) of the target, or 40 steps.
-- `side` picks the bracket end returned: "at_least" (default: the cheapest
-- setting reaching the target), "at_most" (the most expensive one not
-- exceeding it) or "nearest".
local sl = require "sparselab"

local B = {}

B.TARGETS = {density = true, flops = true, kv_bytes = true}
B.slice = 500000 -- elements of col_idx read per totable call (tests set it small)
local SIDES = {at_least = true, at_most = true, nearest = true}
local MATCH_KEYS = {method = true, prob = true, target = true, value = true, params = true, tol = true,
  side = true, max_steps = true}

--- K/V bytes an executor reads for the executed block mask `mk` on a problem
--- with q [Hq, n_q, d] and k [Hkv, n_k, d] (definition at the top).
function B.kv_bytes(mk, prob)
  local hq, d = prob.q:shape()[1], prob.q:shape()[3]
  local hkv = prob.k:shape()[1]
  local info = mk:info()
  local hm, nqb, bk, n_k = info.n_heads, info.n_qb, info.bk, info.n_k
  local row_ptr, col_idx = mk:arrays()
  local rp = row_ptr:totable()
  if hm == 1 and type(rp[1]) == "number" then rp = {rp} end
  -- col_idx read in slices: totable is limited to 1e6 elements
  local cols = {}
  local CH = B.slice
  for start = 1, info.nnz, CH do
    local len = math.min(CH, info.nnz - start + 1)
    for i, c in ipairs(col_idx:narrow(1, start, len):totable()) do cols[start + i - 1] = c end
  end
  row_ptr:close(); col_idx:close()
  local function width(c) return math.min(bk, n_k - c * bk) end
  -- mask heads serving each KV head: query head h uses KV head h // (hq/hkv)
  -- and mask head h // (hq/hm) (0-based)
  local heads_of = {}
  for g = 0, hkv - 1 do heads_of[g] = {} end
  for h = 0, hq - 1 do
    local g, mh = h // (hq // hkv), hm == 1 and 0 or h // (hq // hm)
    heads_of[g][mh] = true
  end
  local keys = 0
  for g = 0, hkv - 1 do
    local mheads = {}
    for mh in pairs(heads_of[g]) do mheads[#mheads + 1] = mh end
    for r = 1, nqb do
      if #mheads == 1 then
        local t = rp[mheads[1] + 1]
        for e = t[r] + 1, t[r + 1] do keys = keys + width(cols[e]) end
      else
        local seen = {}
        for _, mh in ipairs(mheads) do
          local t = rp[mh + 1]
          for e = t[r] + 1, t[r + 1] do
            local c = cols[e]
            if not seen[c] then seen[c] = true; keys = keys + width(c) end
          end
        end
      end
    end
  end
  return keys * d * 2 * 4
end

local function copy(t)
  local c = {}
  for k, v in pairs(t or {}) do c[k] = v end
  return c
end

-- The measuring function x -> achieved value of target for method m.
local function measurer(m, prob, params, target)
  return function(x)
    local p = sl.registry.resolve(m, params, x, prob)
    if target ~= "flops" and m.mask then
      local mk <close> = m.mask(prob, p)
      if target == "density" then return mk:density(prob.causal ~= false) end
      return B.kv_bytes(mk, prob)
    end
    local out = m.run(prob, p)
    local st = out.stats or {}
    if target == "density" then
      if type(st.density) ~= "number" then sl.fail("budget.match: %s reports no density; a density target needs one", m.id) end
      return st.density
    elseif target == "flops" then
      if type(st.flops) ~= "number" then sl.fail("budget.match: %s reports no flops; a flops target needs them", m.id) end
      return st.flops + (st.estimator_flops or 0)
    end
    if not out.mask then sl.fail("budget.match: %s returns no mask; a kv_bytes target needs one", m.id) end
    return B.kv_bytes(out.mask, prob)
  end
end

-- A hint for a target below what the knob reaches (issue 18): the block-size parameters the
-- method has (bq/bk, block), halved at most three times down to 8, at the knob's cheap end a;
-- the first setting that gets under the target is named, with what it reaches.
local BLOCK_PARAMS = {"bq", "bk", "block"}
local function block_hint(m, prob, params, target, t, a, fmtf)
  local names = {}
  for _, n in ipairs(BLOCK_PARAMS) do if m.params[n] then names[#names + 1] = n end end
  if #names == 0 then return "" end
  local ok, base = pcall(sl.registry.resolve, m, params, a, prob)
  if not ok then return "" end
  local size = math.tointeger(base[names[1]])
  if not size then return "" end
  for _ = 1, 3 do
    size = size // 2
    if size < 8 then break end
    local p = copy(params)
    for _, n in ipairs(names) do p[n] = size end
    local okv, v = pcall(measurer(m, prob, p, target), a)
    if okv and type(v) == "number" and v <= t then
      local set = {}
      for _, n in ipairs(names) do set[#set + 1] = string.format("--param %s=%d", n, size) end
      return string.format("; smaller blocks reach it: with %s, %s = %s gives %s %s", table.concat(set, " "),
        m.knob, tostring(a), target, fmtf(target, v))
    end
  end
  return ""
end

local function fmt(target, v)
  if target == "density" then return string.format("%.4g", v) end
  return string.format("%.4e", v)
end

--- Solves m's knob so that target reaches value. o = {method = id|table,
--- prob = problem, target = "density"|"flops"|"kv_bytes", value = number,
--- params = {other params}, tol = 0.01, side = "at_least", max_steps = 40}.
--- Returns {knob =, value = knob value, achieved =, target =, target_value =,
--- rel_err =, within_tol =, steps =, range = {cheapest, dearest}, params =}.
--- A target outside what the knob's range reaches is an error naming the range.
function B.match(o)
  if type(o) ~= "table" then sl.fail("budget.match: expected a table {method=, prob=, target=, value=}") end
  for k in pairs(o) do
    if not MATCH_KEYS[k] then
      sl.fail("budget.match: unknown key '%s' (expected method, prob, target, value, params, tol, side, max_steps)",
        tostring(k))
    end
  end
  local m = sl.methods.get(o.method)
  local target = o.target or "density"
  if not B.TARGETS[target] then
    sl.fail("budget.match: unknown target '%s' (expected density, flops or kv_bytes)", tostring(target))
  end
  local t = o.value
  if type(t) ~= "number" or t ~= t or t <= 0 or t == math.huge then
    sl.fail("budget.match: value must be a positive number, found %s", tostring(t))
  end
  if target == "density" and t > 1 then sl.fail("budget.match: a density target must be in (0, 1], found %g", t) end
  if not m.knob then sl.fail("budget.match: %s has no budget knob", m.id) end
  if type(o.prob) ~= "table" then sl.fail("budget.match: 'prob' must be a problem table") end
  local prob = o.prob.q and o.prob._checked and o.prob or sl.problem(o.prob)
  prob._checked = true
  local side = o.side or "at_least"
  if not SIDES[side] then sl.fail("budget.match: side must be at_least, at_most or nearest, found %s", tostring(side)) end
  local tol = o.tol or 0.01
  local max_steps = o.max_steps or 40
  local spec = m.params[m.knob]
  local dir = m.knob_direction or 1
  if dir ~= 1 and dir ~= -1 then sl.fail("budget.match: %s: knob_direction must be 1 or -1, found %s", m.id, tostring(dir)) end
  local n_k = prob.k:shape()[2]
  local lo, hi = spec.min, spec.max
  if spec.int then
    lo = lo or 0
    hi = hi or math.max(n_k, lo) -- an unbounded integer knob (a window, a count) saturates at n_k
    lo, hi = math.ceil(lo), math.floor(hi)
  else
    lo, hi = lo or 0, hi or 1
  end
  -- cheap end a, dear end b (in knob values)
  local a, b = lo, hi
  if dir < 0 then a, b = hi, lo end
  local f = measurer(m, prob, o.params, target)
  local fa, fb = f(a), f(b)
  local range = {fa, fb} -- the values at the cheap and the dear end of the knob's range
  local steps = 2
  local function close(v) return math.abs(v - t) <= tol * t end
  local function result(x, v)
    return {knob = m.knob, value = x, achieved = v, target = target, target_value = t,
      rel_err = (v - t) / t, within_tol = close(v), steps = steps, range = range,
      params = sl.registry.resolve(m, o.params, x, prob)}
  end
  if fb < t and not close(fb) then
    sl.fail("budget.match: %s cannot reach %s %s: its %s range [%s, %s] gives %s in [%s, %s]", m.id, target,
      fmt(target, t), m.knob, tostring(lo), tostring(hi), target, fmt(target, math.min(fa, fb)), fmt(target, fb))
  end
  if fa > t and not close(fa) then
    sl.fail("budget.match: %s cannot go down to %s %s: its %s range [%s, %s] gives %s in [%s, %s]%s", m.id, target,
      fmt(target, t), m.knob, tostring(lo), tostring(hi), target, fmt(target, fa), fmt(target, math.max(fa, fb)),
      block_hint(m, prob, o.params, target, t, a, fmt))
  end
  if fa >= t then return result(a, fa) end
  if fb < t then return result(b, fb) end -- within tol below the target at the dear end
  -- invariant: f(a) < t <= f(b) (values between are monotone in the knob)
  while true do
    if spec.int and math.abs(b - a) <= 1 then break end
    if not spec.int and (steps - 2 >= max_steps or close(fb) and side == "at_least") then break end
    local mid = spec.int and (a + b) // 2 or (a + b) / 2
    local v = f(mid)
    steps = steps + 1
    if v >= t then b, fb = mid, v else a, fa = mid, v end
    if not spec.int and close(v) and side == "nearest" then return result(mid, v) end
    if not spec.int and close(fa) and side == "at_most" then break end
  end
  if side == "at_least" then return result(b, fb) end
  if side == "at_most" then return result(a, fa) end
  if math.abs(fa - t) < math.abs(fb - t) then return result(a, fa) end
  return result(b, fb)
end

--- Copies r.metrics-ready fields of a match: target_<name>, achieved_<name>.
function B.metrics(match, metrics)
  metrics = metrics or {}
  metrics["target_" .. match.target] = match.target_value
  metrics["achieved_" .. match.target] = match.achieved
  metrics.budget_match_steps = match.steps
  return metrics
end

B.copy = copy

return B
