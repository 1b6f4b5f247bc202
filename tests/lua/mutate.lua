-- mutate.lua — the score-blind mutation of the mutation harness
-- (tests/lua/test_mutation.lua; loaded by harness.lua when SL_MUTATE is set):
-- every score op (sl.score.*: exact, rows, last_q, lowbit, antidiag, hash,
-- pooled, strided, anchor) and the token pooling the gate-style estimators
-- score from (sl.pool.tokens) still runs, but its outputs are replaced by
-- score-blind ones of the same shape and dtype: finite float entries by
-- seeded uniform random numbers (infinities and NaNs — masked positions —
-- stay where they are), integer entries shuffled within their last
-- dimension; the same op on the same shapes gives the same blind values.
-- The same replacement reaches the other estimator quantities computed
-- outside sl.score: the exact block mass (sl.mass.blocks, AdaSpa's W) and
-- the sampled-row profiles of the video recipes (sparselab.video's
-- dense_rows and list_rows: the O and L of a few sampled query rows that
-- RainFusion's ARM and Sparse VideoGen's head classifier compare; the
-- methods' executed attention never goes through them), and the decode
-- estimators' score ops (page.token_scores, page.qscores, page.bounds:
-- session 5). A selector op that
-- scores internally and returns index lists (sl.select.pq_match: PQ code
-- matching) keeps its row_ptr, and each row's keys are replaced by as many
-- keys drawn at random from that row's visible keys (sorted, valid for the
-- executor): a score-blind selection of the same size; likewise
-- sl.select.hip_tree (HiP's tree, issue 16 session 3) keeps its evals and
-- each query block's count of kept key blocks, drawn at random from the
-- blocks it sees; and attn.bucket's threshold report (HSR, use_tau: search
-- and attention fused in one op) becomes a random report of the same size
-- run by attn.token_sparse. No other executor (sl.attn.*) is mutated.
-- A method whose tests still pass under it tests plumbing, not its
-- estimator. SL_MUTATE=score_blind is the only variant.
local sl = require "sparselab"

local variant = os.getenv("SL_MUTATE")
if variant ~= "score_blind" then error("SL_MUTATE: unknown variant '" .. tostring(variant) .. "' (expected score_blind)") end

local state = 0x2545F491
local function rnd() -- xorshift32 in [0, 1): seeded, independent of math.random users
  state = state ~ ((state << 13) & 0xffffffff)
  state = state ~ (state >> 17)
  state = state ~ ((state << 5) & 0xffffffff)
  return (state & 0xffffff) / 0x1000000
end

-- cnt distinct keys of 0..vis-1, ascending, drawn by rnd (a partial
-- Fisher-Yates: the first cnt of a shuffle).
local function sorted_sample(vis, cnt)
  local pool = {}
  for j = 0, vis - 1 do pool[j + 1] = j end
  for t = 1, cnt do
    local u = t + math.floor(rnd() * (vis - t + 1))
    pool[t], pool[u] = pool[u], pool[t]
  end
  local l = {}
  for t = 1, cnt do l[t] = pool[t] end
  table.sort(l)
  return l
end

local function blind_floats(t)
  if type(t) == "table" then
    local out = {}
    for i = 1, #t do out[i] = blind_floats(t[i]) end
    return out
  end
  if t ~= t or t == math.huge or t == -math.huge then return t end
  return rnd()
end

local function shuffle_ints(t)
  local out = {}
  if type(t[1]) == "table" then
    for i = 1, #t do out[i] = shuffle_ints(t[i]) end
    return out
  end
  for i = 1, #t do out[i] = t[i] end
  for i = #out, 2, -1 do
    local j = math.floor(rnd() * i) + 1
    out[i], out[j] = out[j], out[i]
  end
  return out
end

local function is_tensor(x)
  return type(x) == "userdata" and pcall(function() return x:dtype() end)
end

local function blind(x)
  if not is_tensor(x) or x:numel() == 0 or x:numel() > 1000000 then return x end
  local dt = x:dtype()
  local t = x:totable()
  if type(t) ~= "table" then return x end
  if dt == "f32" or dt == "f64" or dt == "f16" or dt == "bf16" then
    return sl.tensor(blind_floats(t), dt == "f64" and "f64" or "f32")
  end
  return sl.tensor(shuffle_ints(t), dt)
end

-- The stream restarts for every call from the op's name and the shapes of its outputs, so an estimate run
-- twice (a method's run and its mask()) gives the same blind scores: a kill must come from a check of the
-- estimator, not from two calls disagreeing.
local function reseed(name, r)
  local h = 2166136261
  local function mix(x) h = ((h ~ x) * 16777619) & 0xffffffff end
  for i = 1, #name do mix(name:byte(i)) end
  for i = 1, r.n do
    if is_tensor(r[i]) then for _, d in ipairs(r[i]:shape()) do mix(d & 0xffff) end end
  end
  state = h ~= 0 and h or 1
end

local function wrap(name, f)
  return function(...)
    local r = table.pack(f(...))
    reseed(name, r)
    for i = 1, r.n do r[i] = blind(r[i]) end
    return table.unpack(r, 1, r.n)
  end
end

for name, f in pairs(sl.score) do
  if type(f) == "function" then sl.score[name] = wrap("score." .. name, f) end
end
sl.pool.tokens = wrap("pool.tokens", sl.pool.tokens)
sl.mass.blocks = wrap("mass.blocks", sl.mass.blocks)

-- The decode estimators' score ops (issue 20, session 5): page.token_scores (exact or quantised q.k per cached
-- token), page.bounds (Quest's per-page upper bounds) and page.qscores (Twilight's quantised-K logits). Their
-- finite outputs become seeded random values like sl.score's; page.attend / attend_q (executors) are untouched.
-- token_scores and qscores draw from one stream ("page.scores"): the same logits read from the f32 keys or
-- from their stored int4 copy get the same blind values, so a kill comes from a check of the selection, not
-- from the two paths disagreeing.
sl.page.token_scores = wrap("page.scores", sl.page.token_scores)
sl.page.qscores = wrap("page.scores", sl.page.qscores)
sl.page.bounds = wrap("page.bounds", sl.page.bounds)

local video = require "sparselab.video"
video.dense_rows = wrap("video.dense_rows", video.dense_rows)
video.list_rows = wrap("video.list_rows", video.list_rows)

-- select.pq_match(q, k, codebook, args) -> row_ptr [Hq, Nq + 1], col [total]: the same row_ptr, each row's
-- min(n_i, nnz) keys drawn at random (seeded as above) from its visible keys j < Nk (causal: j <= i + Nk - Nq).
local pq_match = sl.select.pq_match
sl.select.pq_match = function(q, k, cb, args)
  local rp, col = pq_match(q, k, cb, args)
  reseed("select.pq_match", table.pack(rp, col))
  local nq, nk = q:shape()[2], k:shape()[2]
  local causal = args and args.causal ~= nil and args.causal ~= 0 and args.causal ~= false
  local r = rp:totable()
  local out = {}
  for h = 1, #r do
    for i = 1, nq do
      local cnt = r[h][i + 1] - r[h][i]
      local vis = causal and math.min(nk, i + nk - nq) or nk
      if cnt > vis then error(string.format("mutate: select.pq_match row %d keeps %d of %d visible keys", i, cnt, vis)) end
      local l = sorted_sample(vis, cnt)
      local at = r[h][i]
      for t = 1, cnt do out[at + t] = l[t] end
    end
  end
  return rp, sl.tensor(out, "i32")
end

-- attn.bucket with use_tau and no buckets (HSR's half-space report, issue 20 session 5): the threshold search
-- and the attention are fused in this one op, so its selection is replaced the way select.pq_match's is —
-- each row attends as many keys as the op reported, drawn at random (seeded as above) from its visible keys,
-- through attn.token_sparse (an executor, not mutated); count is kept. Bucketed calls (SCFA: qb, kb from the
-- already mutated score.hash) pass through.
local bucket = sl.attn.bucket
sl.attn.bucket = function(q, k, v, args)
  if not (args and args.use_tau and args.use_tau ~= 0 and args.use_tau ~= false) or args.qb or args.kb then
    return bucket(q, k, v, args)
  end
  local _, _, count = bucket(q, k, v, args)
  reseed("attn.bucket", table.pack(count))
  local nq, nk = q:shape()[2], k:shape()[2]
  local causal = args.causal ~= nil and args.causal ~= 0 and args.causal ~= false
  local c = count:totable()
  local rp, col = {}, {}
  for h = 1, #c do
    rp[h] = {#col}
    for i = 1, nq do
      local vis = causal and math.min(nk, i + nk - nq) or nk
      local cnt = c[h][i]
      for _, j in ipairs(sorted_sample(vis, cnt)) do col[#col + 1] = j end
      rp[h][i + 1] = #col
    end
  end
  if #col == 0 then col[1] = 0 end
  local o, lse = sl.attn.token_sparse(q, k, v, sl.tensor(rp, "i32"), sl.tensor(col, "i32"),
    {scale = args.scale, backend = args.backend})
  return o, lse, count
end

-- select.hip_tree(q, k, args) -> keep u8 [Hq, R, C], evals: each (head, query block) keeps as many key blocks,
-- drawn at random (seeded as above) from the blocks its last row sees (causal) or all C.
local hip_tree = sl.select.hip_tree
sl.select.hip_tree = function(q, k, args)
  local keep, evals = hip_tree(q, k, args)
  reseed("select.hip_tree", table.pack(keep, evals))
  local nq, nk = q:shape()[2], k:shape()[2]
  local bq, bk = args.bq or 32, args.bk or 8
  local causal = args.causal == nil or (args.causal ~= 0 and args.causal ~= false)
  local t = keep:totable()
  for _, hr in ipairs(t) do
    for r, row in ipairs(hr) do
      local cnt = 0
      for _, x in ipairs(row) do cnt = cnt + x end
      local last = math.min(r * bq, nq) - 1
      local vis = causal and math.min(#row, (last + nk - nq) // bk + 1) or #row
      local pool = {}
      for c = 1, vis do pool[c] = c end
      for i = 1, cnt do
        local u = i + math.floor(rnd() * (vis - i + 1))
        pool[i], pool[u] = pool[u], pool[i]
      end
      for c = 1, #row do row[c] = 0 end
      for i = 1, cnt do row[pool[i]] = 1 end
    end
  end
  return sl.tensor(t, "u8"), evals
end

return true
