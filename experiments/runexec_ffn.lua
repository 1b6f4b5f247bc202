-- runexec_ffn.lua — wall time per token of the FFN (w1, w3, w2) when the
-- model runner dispatches its products to the sparse executors (issue 17,
-- session 3; sparselab.runexec), against the runner's dense sgemm path, in
-- one run: the shipped TinyStories model (dim 64, hidden 172) and a
-- synthetic one-layer model of a larger shape (default dim 1024, hidden
-- 2816: random normal weights written as a llama2.c checkpoint to /tmp).
-- Per configuration: the FFN weights magnitude-pruned (2:4 through mm.nm,
-- 50/75/90 % through mm.bitmap) and/or the FFN hidden units top-k'd (w2
-- through mm.act_sparse; CHESS: w3 through mm.out_sparse on the gate
-- support, w2 through mm.act_sparse), prefill (T rows per product) and decode (one row
-- per product, one token at a time with the KV cache). Each configuration is
-- timed `reps` times, configurations interleaved, and the median taken;
-- ratio = median ÷ the dense median of the same phase in the same run.
-- min_macs (6th argument, default the exec's own): products with fewer
-- multiply-adds run as the dense sgemm on the zeroed operands (session 3c);
-- 0 sends every product through the sparse executors.
-- Session 4: the MoE rows (card moe_split_route): the FFN split sequentially
-- into E experts with a random-vector router (timing only), top-k per token,
-- the runner's FFN as router + one mm.moe call (sparselab.moe.use); time and
-- flops from model:moe_stats.
--   LUA_CPATH='build/?.so' lua5.4 experiments/runexec_ffn.lua [dim hidden prefill decode reps [min_macs [pattern]]]
local sl = require "sparselab"
local E = require "sparselab.runexec"
local P = require "sparselab.prune"
local A = require "sparselab.actsparse"
local MOE = require "sparselab.moe"

local DIM, HID = tonumber(arg[1]) or 1024, tonumber(arg[2]) or 2816
local PREFILL, DECODE, REPS = tonumber(arg[3]) or 64, tonumber(arg[4]) or 16, tonumber(arg[5]) or 3
local MIN_MACS = tonumber(arg[6])

local function synthetic(path, d, hid, seed)
  local heads, vocab, seq = 8, 32, 256
  local hd = d // heads
  local f = assert(io.open(path, "wb"))
  f:write(string.pack("<i4i4i4i4i4i4i4", d, hid, 1, heads, heads, vocab, seq))
  local rng = sl.rng and sl.rng(seed) or nil
  math.randomseed(seed)
  local function normal(n, scale)
    local buf, chunk = {}, {}
    for i = 1, n do
      local u1, u2 = 1 - math.random(), math.random()
      chunk[#chunk + 1] = scale * math.sqrt(-2 * math.log(u1)) * math.cos(2 * math.pi * u2)
      if #chunk == 4096 or i == n then
        buf[#buf + 1] = string.pack("<" .. string.rep("f", #chunk), table.unpack(chunk))
        chunk = {}
      end
      if #buf == 64 then f:write(table.concat(buf)); buf = {} end
    end
    f:write(table.concat(buf))
  end
  local function ones(n) f:write(string.rep(string.pack("<f", 1), n)) end
  local _ = rng
  normal(vocab * d, 1)
  ones(d)
  for _ = 1, 4 do normal(d * d, 1 / math.sqrt(d)) end
  ones(d)
  normal(hid * d, 1 / math.sqrt(d))
  normal(d * hid, 1 / math.sqrt(hid))
  normal(hid * d, 1 / math.sqrt(d))
  ones(d)
  normal(seq * hd, 1)
  f:close()
end

local function ffn_names(m, kinds)
  local out = {}
  for l = 0, m.cfg.n_layers - 1 do
    for _, k in ipairs(kinds) do out[#out + 1] = string.format("layers.%d.%s", l, k) end
  end
  return out
end

local function prune_ffn(m, params)
  for _, name in ipairs(ffn_names(m, E.FFN)) do
    m.c:set_weight(name, sl.prune.magnitude(m.c:weight(name), params))
  end
end

-- configurations: prune params (nil: dense weights), executor spec, top-k share of hidden units
local CONFIGS = {
  {name = "dense (runner sgemm, timed)", spec = {weights = "dense"}},
  {name = "2:4 -> mm.nm", prune = {n = 2, m = 4}, spec = {weights = "nm", n = 2, m = 4, kinds = E.FFN}},
  {name = "50 % -> mm.bitmap", prune = {sparsity = 0.5}, spec = {weights = "bitmap", kinds = E.FFN}},
  {name = "75 % -> mm.bitmap", prune = {sparsity = 0.75}, spec = {weights = "bitmap", kinds = E.FFN}},
  {name = "90 % -> mm.bitmap", prune = {sparsity = 0.9}, spec = {weights = "bitmap", kinds = E.FFN}},
  {name = "top-k 25 % units -> w2 mm.act_sparse", topk = 0.25, spec = {weights = "dense", act = true}},
  {name = "top-k 10 % units -> w2 mm.act_sparse", topk = 0.10, spec = {weights = "dense", act = true}},
  {name = "75 % bitmap w1,w3 + top-k 25 % act w2", prune = {sparsity = 0.75}, topk = 0.25,
   spec = {weights = "bitmap", kinds = {"w1", "w3"}, act = true}},
  {name = "CHESS 50 %: w3 mm.out_sparse on the gate support + w2 act", chess = 0.5,
   spec = {weights = "dense", act = true}},
  -- session 4: Spark's predictor (gate.up on dim/8 input dims) picks 10 % of the units; w1, w3
  -- run mm.out_sparse over them, w2 act-sparse
  {name = "Spark 10 % units (r = dim/8): w1, w3 mm.out_sparse + w2 act", spark = {share = 0.10, rdiv = 8},
   spec = {weights = "dense", act = true}},
  {name = "MoE 8 experts, top-2: router + mm.moe", moe = {experts = 8, k = 2}, spec = {weights = "dense"}},
  {name = "MoE 8 experts, top-1: router + mm.moe", moe = {experts = 8, k = 1}, spec = {weights = "dense"}},
}
-- 7th argument: a Lua pattern; only configurations whose name matches run (dense always)
if arg and arg[7] and arg[7] ~= "" then
  local keep = {CONFIGS[1]}
  for i = 2, #CONFIGS do if CONFIGS[i].name:match(arg[7]) then keep[#keep + 1] = CONFIGS[i] end end
  CONFIGS = keep
end

local function median(xs)
  table.sort(xs)
  return xs[(#xs + 1) // 2]
end

local function bench(label, m, prefill_ids)
  local snap = P.snapshot(m)
  local res = {}
  local chess = {}
  local moes = {}
  for _, c in ipairs(CONFIGS) do
    if c.chess then chess[c.chess] = A.calibrate(m, {prefill_ids}, c.chess).chess end
    if c.moe then
      moes[c.name] = MOE.build(m, {prefill_ids}, {experts = c.moe.experts, k = c.moe.k, split = "sequential",
        router = "random"})
    end
  end
  for _, c in ipairs(CONFIGS) do res[c.name] = {pre = {}, dec = {}, flops_pre = 0} end
  for _ = 1, REPS do
    for _, c in ipairs(CONFIGS) do
      if c.prune then prune_ffn(m, c.prune) end
      c.spec.min_macs = MIN_MACS
      if c.spark then
        c.spec.spark = {k = math.max(1, math.floor(c.spark.share * m.cfg.hidden_dim)),
          r = math.max(1, m.cfg.dim // c.spark.rdiv)}
      end
      E.use(m, c.spec)
      local site = c.topk and A.hook(m, {kind = "topk", k = math.max(1, math.floor(c.topk * m.cfg.hidden_dim))})
      if c.chess then
        -- calibrated on the timed text itself (a timing run, not an accuracy one); the hook's own
        -- Lua mask work is outside the timed products
        for l, th in pairs(chess[c.chess]) do m.c:exec_gate(l, th) end
        site = A.hook(m, {kind = "threshold", theta = chess[c.chess]})
      end
      if c.moe then MOE.use(m, moes[c.name]); m.c:moe_stats(true) end
      local s = E.time(m, {prefill_ids}, site)
      if c.moe then
        local ms = m.c:moe_stats(true)
        s.ffn.seconds, s.ffn.flops = s.ffn.seconds + ms.seconds, s.ffn.flops + ms.flops
      end
      table.insert(res[c.name].pre, s.ffn.seconds / #prefill_ids)
      res[c.name].flops_pre = s.ffn.flops / #prefill_ids
      -- decode: one token per forward with the KV cache
      local st <close> = m.c:state(DECODE + 1)
      m.c:forward({prefill_ids[1]}, st, nil, site)
      m.c:exec_stats(true)
      if c.moe then m.c:moe_stats(true) end
      for i = 1, DECODE do m.c:forward({prefill_ids[1 + i % #prefill_ids]}, st, nil, site) end
      local d = m.c:exec_stats(true)
      local moe_s = c.moe and m.c:moe_stats(true).seconds or 0
      table.insert(res[c.name].dec, (d.w1.seconds + d.w3.seconds + d.w2.seconds + moe_s) / DECODE)
      if c.moe then MOE.off(m) end
      E.off(m)
      P.restore(m, snap)
    end
  end
  local dense = res[CONFIGS[1].name]
  local dpre, ddec = median(dense.pre), median(dense.dec)
  local rate_pre = dense.flops_pre / dpre / 1e9
  local rate_dec = (dense.flops_pre) / ddec / 1e9
  print(string.format("\n### %s (dim %d, hidden %d, %d layer(s)); prefill %d tokens, decode %d tokens, %d reps",
    label, m.cfg.dim, m.cfg.hidden_dim, m.cfg.n_layers, #prefill_ids, DECODE, REPS))
  print(string.format("dense FFN sgemm rate: prefill %.2f GFLOP/s, decode %.2f GFLOP/s\n", rate_pre, rate_dec))
  print("| configuration | FFN flops/token ÷ dense | prefill µs/token | ÷ dense | decode µs/token | ÷ dense |")
  print("| --- | ---: | ---: | ---: | ---: | ---: |")
  for _, c in ipairs(CONFIGS) do
    local r = res[c.name]
    local p, d = median(r.pre), median(r.dec)
    print(string.format("| %s | %.3f | %.1f | %.2f | %.1f | %.2f |", c.name, r.flops_pre / dense.flops_pre,
      1e6 * p, p / dpre, 1e6 * d, d / ddec))
  end
end

local DATA = "experiments/data/tinystories260k"
local m = sl.model.load(DATA .. "/model.bin")
local f = assert(io.open(DATA .. "/texts/06_little_seed.txt", "rb"))
local ids = m:encode(f:read("a"))
f:close()
print(string.format("machine: %s, cpu isa %s", io.popen("nproc"):read("l") .. " cores", sl.cpu_isa and sl.cpu_isa() or "?"))
bench("shipped stories260K", m, ids)

local path = string.format("/tmp/sl_runexec_%d_%d.bin", DIM, HID)
synthetic(path, DIM, HID, 17)
local big = sl.model.load(path, {tokenizer = false})
local pre = {}
for i = 1, PREFILL do pre[i] = (i * 7) % big.cfg.vocab_size end
bench("synthetic", big, pre)
os.remove(path)
