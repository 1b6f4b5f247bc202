-- PSA: Pyramid Sparse Attention for Efficient Video Understanding and
-- Generation — card: psa_pyramid (block-estimate with a graded mask;
-- executor attn.pooled_kv). The same module serves the psa_pyramid
-- correction (corrections/psa_pyramid.lua) through M.levels_tensor.
-- Card steps implemented:
--   1. KV pyramid: keys/values mean-pooled by s = 2, 4, 8 (... up to bk)
--      inside each key block (attn.pooled_kv pools on the fly);
--   2. block importance: `sample` = 1/4 of the rows of every query block and
--      1/4 of the keys of every key block at random offsets shared by all
--      blocks (seeded: param seed); softmax of the sampled queries over the
--      sampled keys (scale 1/sqrt(d)); importance[I, J] = max over the
--      sampled (i ∈ I, j ∈ J) of that probability (score.exact with
--      reduce = max on the gathered sub-problem when the op exists, else the
--      same in plain Lua);
--   3. graded mask, mode "topk": per query-block row the visible key blocks
--      sorted by importance (descending, ties: lower block first), rank
--      fraction f = rank / n_visible: f < r1 -> level 1, < r1+r2 -> 2,
--      < r1+r2+r4 -> 4, < r1+r2+r4+r8 -> 8, else 0 (skipped); defaults
--      r1 = 0.10, r2 = 0.05, r4 = 0, r8 = 0.20 (the reference's mask_ratios),
--      each multiplied by the knob `scale`;
--   4. executor: attn.pooled_kv (logit + log s, one online softmax).
-- Not here: "thresholdbound" mode, the tile-alignment rounding of interval
-- lengths, the similarity constraint (use_sim_mask is False by default),
-- token re-arrangement and dense warm-up steps (pipeline config).
-- Readings for causal problems (the card is non-causal diffusion):
--   * the diagonal key block of every query block is forced to level 1 (a
--     pooled group straddling the causal cut would be dropped; the card's
--     "text blocks forced to level 1" is the analogue), and blocks entirely
--     in the future get level 0;
--   * the sampled softmax is over all sampled keys (non-causal, as the
--     reference's estimator) — only the ranking per block row is used.
-- stats.density = executed pooled pairs / causal pairs (the card's budget
-- accounting Σ fraction/level), density_level1 = level-1 pairs alone.
local sl = require "sparselab"

local M = {}

-- Offsets 0-based of `count` distinct positions in [0, size), seeded.
local function sample_offsets(size, count, seed)
  local idx = {}
  for i = 0, size - 1 do idx[i + 1] = i end
  local x = seed * 2654435761 % 4294967296 + 1
  for i = size, 2, -1 do
    x = (x * 1103515245 + 12345) % 2147483648
    local j = x % i + 1
    idx[i], idx[j] = idx[j], idx[i]
  end
  local out = {}
  for i = 1, math.min(count, size) do out[i] = idx[i] end
  table.sort(out)
  return out
end

-- Rows of t ([H, n, d]) at 0-based positions pos, as one tensor [H, #pos, d].
local function gather_rows(t, pos)
  local parts = {}
  for i, p in ipairs(pos) do parts[i] = t:narrow(2, p + 1, 1) end
  return sl.cat(parts, 2)
end

-- importance[h][I][J] (1-based tables) for Hq query heads; plain_lua forces
-- the Lua computation (tests compare it with score.exact's).
function M.importance(prob, p, plain_lua)
  local qs, ks = prob.q:shape(), prob.k:shape()
  local nq, nk, d = qs[2], ks[2], qs[3]
  local nqb, nkb = (nq + p.bq - 1) // p.bq, (nk + p.bk - 1) // p.bk
  local sr, sk = math.max(1, p.bq // p.sample), math.max(1, p.bk // p.sample)
  local ro, ko = sample_offsets(p.bq, sr, p.seed), sample_offsets(p.bk, sk, p.seed + 7)
  -- sampled positions and the block each belongs to (ragged last blocks keep those inside)
  local rows, rblk, keys, kblk = {}, {}, {}, {}
  for I = 0, nqb - 1 do
    for _, o in ipairs(ro) do
      if I * p.bq + o < nq then rows[#rows + 1] = I * p.bq + o; rblk[#rows] = I + 1 end
    end
  end
  for J = 0, nkb - 1 do
    for _, o in ipairs(ko) do
      if J * p.bk + o < nk then keys[#keys + 1] = J * p.bk + o; kblk[#keys] = J + 1 end
    end
  end
  local imp = {}
  for h = 1, qs[1] do
    imp[h] = {}
    for I = 1, nqb do
      imp[h][I] = {}
      for J = 1, nkb do imp[h][I][J] = 0 end
    end
  end
  local qg, kg = gather_rows(prob.q, rows), gather_rows(prob.k, keys)
  local score = rawget(sl, "score")
  if not plain_lua and score and score.exact and nq % p.bq == 0 and nk % p.bk == 0 then
    -- every block holds sr sampled rows and sk sampled keys: the blocks of the sub-problem
    local t = score.exact(qg, kg, {bq = sr, bk = sk, reduce = 1, causal = false, backend = prob.backend})
    local tt = t:totable()
    for h = 1, qs[1] do
      for I = 1, nqb do
        for J = 1, nkb do imp[h][I][J] = tt[h][I][J] end
      end
    end
    t:close()
  else
    local Q, K = qg:totable(), kg:totable()
    local scale = 1 / math.sqrt(d)
    local group = qs[1] // ks[1]
    for h = 1, qs[1] do
      local Kh = K[(h - 1) // group + 1]
      for a, qrow in ipairs(Q[h]) do
        local s, mx = {}, -math.huge
        for b, krow in ipairs(Kh) do
          local dot = 0
          for c = 1, d do dot = dot + qrow[c] * krow[c] end
          s[b] = dot * scale
          if s[b] > mx then mx = s[b] end
        end
        local sum = 0
        for b = 1, #s do s[b] = math.exp(s[b] - mx); sum = sum + s[b] end
        local row = imp[h][rblk[a]]
        for b = 1, #s do
          local pr = s[b] / sum
          if pr > row[kblk[b]] then row[kblk[b]] = pr end
        end
      end
    end
  end
  qg:close(); kg:close()
  return imp, nqb, nkb
end

--- levels u8 [H, nqb, nkb] from a function level(h, I, J) (1-based) -> s.
function M.levels_tensor(h, nqb, nkb, level)
  local t = {}
  for hh = 1, h do
    local th = {}
    for I = 1, nqb do
      local row = {}
      for J = 1, nkb do row[J] = level(hh, I, J) end
      th[I] = row
    end
    t[hh] = th
  end
  return sl.tensor(t, "u8")
end

-- Largest power of two <= x (x >= 1).
function M.pow2_floor(x)
  local s = 1
  while s * 2 <= x do s = s * 2 end
  return s
end

local function graded_levels(prob, p)
  local imp, nqb, nkb = M.importance(prob, p)
  local qs, ks = prob.q:shape(), prob.k:shape()
  local nq, nk = qs[2], ks[2]
  local off = nk - nq
  local causal = prob.causal ~= false
  local r1, r2, r4, r8 = p.r1 * p.scale, p.r2 * p.scale, p.r4 * p.scale, p.r8 * p.scale
  local cap = M.pow2_floor(p.bk)
  local lv = {}
  for h = 1, qs[1] do
    lv[h] = {}
    for I = 1, nqb do
      local last_pos = off + math.min(I * p.bq, nq) - 1 -- last row's position
      local first_pos = off + (I - 1) * p.bq
      local vis = {}
      for J = 1, nkb do
        if not causal or (J - 1) * p.bk <= last_pos then vis[#vis + 1] = J end
      end
      table.sort(vis, function(a, b)
        local x, y = imp[h][I][a], imp[h][I][b]
        if x ~= y then return x > y end
        return a < b
      end)
      local row = {}
      for J = 1, nkb do row[J] = 0 end
      local n = #vis
      for rank, J in ipairs(vis) do
        local f = (rank - 1) / n
        local s = f < r1 and 1 or f < r1 + r2 and 2 or f < r1 + r2 + r4 and 4 or f < r1 + r2 + r4 + r8 and 8 or 0
        row[J] = s > cap and cap or s
      end
      if causal then
        -- blocks holding the causal cut of some row of the block: exact (level 1)
        for J = 1, nkb do
          local k0, k1 = (J - 1) * p.bk, math.min(J * p.bk, nk) - 1
          if k1 > first_pos and k0 <= last_pos then row[J] = 1 end
        end
      end
      lv[h][I] = row
    end
  end
  return M.levels_tensor(qs[1], nqb, nkb, function(h, I, J) return lv[h][I][J] end), lv, nqb, nkb
end

M.id = "psa_pyramid"
M.card = "psa_pyramid"
M.title = "PSA: Pyramid Sparse Attention for Efficient Video Understanding and Generation"
M.family = "block-estimate"
M.phase = "prefill"
M.summary = "sampled block importance, then per query block the top blocks at full resolution and the next ones " ..
  "on mean-pooled keys/values (levels 2, 4, 8 with a log s bias), the rest skipped"
M.knob = "scale"
M.knob_direction = 1
M.params = {
  bq = {default = 128, min = 1, max = 4096, int = true, doc = "query rows per block (block_m)"},
  bk = {default = 64, min = 1, max = 4096, int = true, doc = "keys per block (block_n)"},
  scale = {default = 1.0, min = 0, max = 100, doc = "multiplies every level's share of the visible blocks"},
  r1 = {default = 0.10, min = 0, max = 1, doc = "share of blocks at level 1 (full resolution)"},
  r2 = {default = 0.05, min = 0, max = 1, doc = "share of blocks at level 2"},
  r4 = {default = 0.0, min = 0, max = 1, doc = "share of blocks at level 4"},
  r8 = {default = 0.20, min = 0, max = 1, doc = "share of blocks at level 8"},
  sample = {default = 4, min = 1, max = 4096, int = true, doc = "the estimator samples 1/sample of rows and keys"},
  seed = {default = 1, min = 0, max = 1 << 30, int = true, doc = "seed of the sampled offsets"},
}
M.ops = {"attn.pooled_kv"}
M.checks = {"all blocks at level 1: exact dense", "identical keys in a level-s group: same as level 1",
  "level 0: no contribution", "density = Σ level fractions / level", "scale 0 keeps only the forced diagonal blocks"}

function M.run(prob, p)
  local t0 = sl.time()
  local levels, lv, nqb, nkb = graded_levels(prob, p)
  local t1 = sl.time()
  local args = {bq = p.bq, bk = p.bk, causal = prob.causal ~= false, backend = prob.backend}
  local o, lse = sl.attn.pooled_kv(prob.q, prob.k, prob.v, levels, args)
  local t2 = sl.time()
  local flops = sl.op_flops("attn.pooled_kv", prob.q, prob.k, prob.v, levels, args)
  -- densities: pooled keys executed (and level-1 keys alone) over causal pairs
  local qs, ks = prob.q:shape(), prob.k:shape()
  local dense = sl.op_flops("attn.dense", prob.q, prob.k, prob.v, {causal = prob.causal ~= false})
  local ones = M.levels_tensor(qs[1], nqb, nkb, function(h, I, J) return lv[h][I][J] == 1 and 1 or 0 end)
  local f1 = sl.op_flops("attn.pooled_kv", prob.q, prob.k, prob.v, ones, args)
  ones:close()
  -- the pooling's own adds are not pairs: take them out of the density
  local pool = 0
  local seen = {}
  for h = 1, qs[1] do
    for I = 1, nqb do
      for J = 1, nkb do
        local s = lv[h][I][J]
        if s > 1 and not seen[s] then seen[s] = true; pool = pool + 2 * ks[1] * ks[2] * qs[3] end
      end
    end
  end
  -- estimator cost: sampled rows × sampled keys × 2d per query head
  local sr, sk = math.max(1, p.bq // p.sample), math.max(1, p.bk // p.sample)
  local est = 2 * qs[3] * qs[1] * (nqb * sr) * (nkb * sk)
  levels:close()
  return {o = o, lse = lse, stats = {flops = flops, estimator_flops = est, density = dense > 0 and (flops - pool) / dense or 0,
    density_level1 = dense > 0 and f1 / dense or 0, estimate_ms = (t1 - t0) * 1e3, execute_ms = (t2 - t1) * 1e3}}
end

return M
