-- sparselab.blockest — what the dynamic-estimate recipes of issue 4 (group b:
-- sparge_attn, seer_attention, prism, sale, unisparse, dhsa, biformer,
-- sparse_flash_attention, hsr_attention) share: keep tables → block masks,
-- the run skeleton that times estimate and execute apart and fills the stats
-- every method reports, row-level helpers over block scores (softmax, the
-- cdf rule, top-k with deterministic ties), and the calibration config.
-- Loops here run over block-level scores only (rows × blocks), never over
-- token pairs.
local sl = require "sparselab"

local E = {}

--- Number of query / key blocks of a problem at (bq, bk).
function E.blocks(prob, bq, bk)
  local nq, nk = prob.q:shape()[2], prob.k:shape()[2]
  return (nq + bq - 1) // bq, (nk + bk - 1) // bk, nq, nk
end

--- Key blocks visible to query block r (0-based) under the decode-offset
--- causal rule: the last key block holding a key <= the block's last row's
--- position, as a count (blocks 0 .. count-1). Not causal: every block.
function E.visible(prob, r, bq, bk, nkb)
  if not prob.causal then return nkb end
  local nq, nk = prob.q:shape()[2], prob.k:shape()[2]
  local last_row = math.min((r + 1) * bq, nq) - 1
  local pos = last_row + nk - nq
  return math.min(nkb, pos // bk + 1)
end

--- A u8 keep tensor [H, R, C] from a Lua table keep[h][r][c] (1-based, 0/1),
--- then the block mask of the kept blocks ∩ causal (sl.mask.from_blocks).
function E.mask_from_keep(keep, prob, bq, bk, causal)
  if causal == nil then causal = prob.causal end
  local t = sl.tensor(keep, "u8")
  return sl.mask.from_blocks(t, {n_q = prob.q:shape()[2], n_k = prob.k:shape()[2], bq = bq, bk = bk,
    causal = causal})
end

--- A tensor's heads as Lua tables, read one head at a time on first use
--- (t[h] = t:narrow(1, h, 1):totable()[1]): totable refuses more than 1e6
--- elements, which a whole [H, rows, cols] score tensor passes at long n,
--- and so can one head ([rows, d] keys at 16K x 128), so a large head is
--- read in slices of rows under that limit.
local TOTABLE_MAX = 1000000
function E.heads(t)
  local shape = t:shape()
  local n = shape[1]
  return setmetatable({}, {
    __index = function(self, h)
      if type(h) ~= "number" or h < 1 or h > n then return nil end
      local th = t:narrow(1, h, 1)
      local v
      if th:numel() <= TOTABLE_MAX or #shape < 3 then
        v = th:totable()[1]
      else
        local rows = shape[2]
        local step = math.max(1, TOTABLE_MAX // math.max(1, th:numel() // rows))
        v = {}
        for r0 = 1, rows, step do
          local c = math.min(step, rows - r0 + 1)
          local pv = th:narrow(2, r0, c)
          local part = pv:totable()[1]
          pv:close()
          for i = 1, c do v[r0 + i - 1] = part[i] end
        end
      end
      th:close() -- views hold t's buffer until collected (issue 19: a closed t is then freed at once)
      rawset(self, h, v)
      return v
    end,
    __len = function() return n end,
  })
end

--- Calls fn(r, row) for every row r (1-based) of head h of t [H, R, C], in
--- order, reading `per` rows per totable (default about 2^18 values; issue 19:
--- a whole [H, R, C] block map in one totable was n² Lua numbers and passed
--- Lua's 1e6-element limit at 32K with 8 heads), closing each view once read.
function E.each_row(t, h, fn, per)
  local shape = t:shape()
  local R, C = shape[2], shape[3]
  per = per or math.max(1, (1 << 18) // math.max(1, C))
  local th = t:narrow(1, h, 1)
  for r0 = 0, R - 1, per do
    local c = math.min(per, R - r0)
    local rv = th:narrow(2, r0 + 1, c)
    local rows = rv:totable()[1]
    rv:close()
    for i = 1, c do fn(r0 + i, rows[i]) end
  end
  th:close()
end

--- An all-zero keep table [H][R][C].
function E.zeros(H, R, C)
  local t = {}
  for h = 1, H do
    local rows = {}
    for r = 1, R do
      local row = {}
      for c = 1, C do row[c] = 0 end
      rows[r] = row
    end
    t[h] = rows
  end
  return t
end

--- Softmax of x[1..n] in place (entries -inf get 0; all -inf: all 0).
function E.softmax(x, n)
  local m = -math.huge
  for i = 1, n do if x[i] > m then m = x[i] end end
  if m == -math.huge then
    for i = 1, n do x[i] = 0 end
    return x
  end
  local z = 0
  for i = 1, n do
    local e = x[i] == -math.huge and 0 or math.exp(x[i] - m)
    x[i] = e
    z = z + e
  end
  for i = 1, n do x[i] = x[i] / z end
  return x
end

--- Indices 1..n ordered by x descending, ties by lower index first.
function E.order_desc(x, n)
  local idx = {}
  for i = 1, n do idx[i] = i end
  table.sort(idx, function(a, b)
    if x[a] ~= x[b] then return x[a] > x[b] end
    return a < b
  end)
  return idx
end

--- Marks in row (row[c] = 1) the cnt largest of x[1..lim], ties to the
--- lower index; sv holds x[1..lim] sorted ascending (a plain numeric
--- table.sort: no Lua comparator per row, issue 20's estimator bench at 64K).
--- The cnt-th largest value t is sv[lim - cnt + 1]: every entry above t, then
--- the first ones equal to it.
function E.mark_largest(row, x, lim, sv, cnt)
  if cnt <= 0 then return end
  local t, need = sv[lim - cnt + 1], cnt
  for c = 1, lim do if x[c] > t then row[c] = 1; need = need - 1 end end
  for c = 1, lim do
    if need <= 0 then break end
    if x[c] == t then row[c] = 1; need = need - 1 end
  end
end

--- The calibration config a method runs with: p.config_table (set by the
--- method's own calibrate loop, which has no file) or the file named by the
--- string param `config` (sl.calibrate.load checks it was written for id),
--- else nil (the card's fallback defaults).
function E.config(p, id)
  if p.config_table then return p.config_table end
  if (p.config or "") ~= "" then return (sl.calibrate.load(p.config, id)) end
  return nil
end

--- Writes cfg as a calibration file for method id (the layout of
--- sl.calibrate, without input provenance): hand-made or test configs.
function E.save_config(path, cfg, id)
  local f, err = io.open(path, "wb")
  if not f then sl.fail("config: cannot write '%s': %s", tostring(path), tostring(err)) end
  f:write(sl.json_encode({format = sl.calibrate.FORMAT, version = sl.calibrate.VERSION, method = id,
    created = os.date("!%Y-%m-%dT%H:%M:%SZ"), params = {}, inputs = {}, config = cfg}), "\n")
  f:close()
end

--- A per-head value: config[key][h] when a config list is given, else the
--- scalar fallback.
function E.per_head(cfg, key, h, fallback)
  if cfg and type(cfg[key]) == "table" and cfg[key][h] ~= nil then return cfg[key][h] end
  return fallback
end

--- The shared run(prob, p) of a block-mask method: estimate(prob, p) returns
--- the executed mask and info {estimator_flops =, semantic = mask or nil,
--- pv_skip =, stats = {extra numbers}}; then attn.block_sparse, and the stats
--- of PLAN.md (flops, estimator_flops, density, density_semantic,
--- estimate_ms, execute_ms).
function E.block_run(estimate)
  return function(prob, p)
    local t0 = sl.time()
    local m, info = estimate(prob, p)
    info = info or {}
    local t1 = sl.time()
    local args = {backend = prob.backend}
    if info.pv_skip and info.pv_skip > 0 then args.pv_skip = info.pv_skip end
    if info.scale then args.scale = info.scale end -- a recipe's own score scale (e.g. biformer reference_scale)
    local o, lse = sl.attn.block_sparse(prob.q, prob.k, prob.v, m, args)
    local t2 = sl.time()
    local stats = {
      flops = sl.op_flops("attn.block_sparse", prob.q, prob.k, prob.v, m, args),
      estimator_flops = info.estimator_flops or 0,
      density = m:density(prob.causal),
      estimate_ms = (t1 - t0) * 1e3,
      execute_ms = (t2 - t1) * 1e3,
    }
    if info.semantic then stats.density_semantic = info.semantic:density(prob.causal) end
    for k, v in pairs(info.stats or {}) do stats[k] = v end
    return {o = o, lse = lse, mask = m, semantic_mask = info.semantic, stats = stats}
  end
end

--- Causal (or full) pairs of a problem over query heads: the denominator of
--- densities computed from counts.
function E.pairs(prob)
  local hq, nq = prob.q:shape()[1], prob.q:shape()[2]
  local nk = prob.k:shape()[2]
  if not prob.causal then return hq * nq * nk end
  local off = nk - nq
  return hq * (nq * off + nq * (nq + 1) / 2)
end

return E
