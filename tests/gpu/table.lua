-- tests/gpu/table.lua — the one table of tests/gpu/run.sh (issue 12): ours / peer / ratio per
-- measurement, from the JSON lines of `sparselab bench --json` (LOGDIR/bench.jsonl) and of the peer
-- tool tests/gpu/cudnn_sdpa (LOGDIR/peer.jsonl). A missing or failed measurement is a row with its
-- reason, never an error: the table is printed whatever the steps before it did.
--   usage: sparselab run tests/gpu/table.lua LOGDIR      (or lua5.4 with LUA_CPATH=build/?.so)
local sl = require "sparselab"
local dir = assert(arg and arg[1], "usage: table.lua LOGDIR")

local function read(name)
  local rows, bad = {}, 0
  local f = io.open(dir .. "/" .. name)
  if not f then return rows, name .. " missing" end
  for line in f:lines() do
    if line:match("^%s*{") then
      local ok, t = pcall(sl.json_decode, line)
      if ok and type(t) == "table" then rows[#rows + 1] = t else bad = bad + 1 end
    end
  end
  f:close()
  return rows, (#rows == 0) and (name .. " has no result lines") or nil
end

local bench, bench_why = read("bench.jsonl")
local peer, peer_why = read("peer.jsonl")

local function find(rows, pred)
  for _, r in ipairs(rows) do if pred(r) then return r end end
end
local function p(r) return r.params or {} end
local function fmt(x, unit)
  if type(x) ~= "number" or x ~= x then return "-" end
  local s
  if math.abs(x) >= 100 then s = string.format("%.0f", x)
  elseif math.abs(x) >= 10 then s = string.format("%.1f", x)
  else s = string.format("%.3g", x) end
  return unit and (s .. " " .. unit) or s
end

local out = {}
local function row(what, ours, peer_s, ratio, note)
  out[#out + 1] = {what, ours or "-", peer_s or "-", ratio or "-", note or ""}
end

-- sizes: those the bench ran dense at, else those the peer ran
local sizes, seen = {}, {}
for _, r in ipairs(bench) do
  if r.name == "attn.dense" and not p(r).dtype and not seen[r.n] then sizes[#sizes + 1] = r.n; seen[r.n] = true end
end
for _, r in ipairs(peer) do
  if r.name == "cudnn_sdpa" and r.n and r.n > 0 and not seen[r.n] then sizes[#sizes + 1] = r.n; seen[r.n] = true end
end
table.sort(sizes)

local function peer_err(name, n)
  local e = find(peer, function(r) return r.name == name and r.error and (r.n == n or r.n == 0) end)
  return e and ("peer: " .. tostring(e.error):sub(1, 70)) or peer_why or ("no " .. name .. " line")
end

local check = find(peer, function(r) return r.name == "cudnn_sdpa_check" end)
if check then
  if check.error then
    row("cudnn_sdpa check n=256", "-", "FAIL", "-", tostring(check.error):sub(1, 90))
  else
    row("cudnn_sdpa check n=256", "-", check.ok and "ok" or "WRONG", "-",
      string.format("max |err| o %s, lse %s", fmt(check.max_abs_err_o), fmt(check.max_abs_err_lse)))
  end
end

for _, n in ipairs(sizes) do
  local d = find(bench, function(r) return r.name == "attn.dense" and r.n == n and not p(r).dtype and not r.error end)
  local c = find(peer, function(r) return r.name == "cudnn_sdpa" and r.n == n and r.ms end)
  local st = find(peer, function(r) return r.name == "staging_f32" and r.n == n and r.ms end)
  local parts = find(bench, function(r) return r.name == "attn.block_sparse" and r.n == n and p(r).pattern == "parts" end)
  local ours_ms = d and d.time_ms
  local ours_tf = d and d.gflops and d.gflops / 1e3
  row(string.format("dense f32 n=%d ms (TFLOP/s)", n),
    ours_ms and string.format("%s (%s)", fmt(ours_ms), fmt(ours_tf)) or (bench_why or "no attn.dense row"),
    c and string.format("%s (%s) %s", fmt(c.ms), fmt(c.tflops), c.dtype or "") or peer_err("cudnn_sdpa", n),
    (ours_ms and c) and fmt(c.ms / ours_ms) or "-",
    "ratio = peer ms / ours ms (1 = parity); ours includes staging")
  if ours_ms and (st or parts) then
    -- the kernel's own time: our call less its staging (the peer tool's copy of it, else our empty-mask call)
    local base = st and st.ms or parts.empty_mask_ms
    local k = ours_ms - base
    row(string.format("  dense f32 n=%d less staging", n), k > 0 and fmt(k) or "<0",
      c and fmt(c.ms) or "-", (c and k > 0) and fmt(c.ms / k) or "-",
      string.format("staging %s ms (%s)", fmt(base), st and "staging_f32" or "empty-mask call"))
  end
  local b16 = find(bench, function(r) return r.name == "attn.dense" and r.n == n and p(r).dtype == "bf16" end)
  if b16 and b16.error then
    row(string.format("dense bf16 n=%d", n), "bf16: not in this build", c and fmt(c.ms) or "-", "-",
      tostring(b16.error):sub(1, 80))
  elseif b16 then
    row(string.format("dense bf16 n=%d ms", n), fmt(b16.time_ms), c and fmt(c.ms) or "-",
      (c and b16.time_ms) and fmt(c.ms / b16.time_ms) or "-", "ratio = peer ms / ours ms")
  else
    row(string.format("dense bf16 n=%d", n), "bf16: not in this build", c and fmt(c.ms) or "-", "-",
      "not requested (--dtypes)")
  end
  for _, r in ipairs(bench) do
    if r.name == "attn.block_sparse" and r.n == n and p(r).rho then
      row(string.format("block_sparse %s rho=%s n=%d ms", p(r).pattern, fmt(p(r).rho), n), fmt(r.time_ms),
        fmt(r.dense_time_ms) .. " (our dense)", fmt(r.speedup) .. "x",
        string.format("speedup over our dense; target %sx; exec share %s", fmt(r.target_speedup), fmt(r.exec_density)))
    end
  end
end

if #sizes == 0 then
  row("dense / block_sparse", bench_why or "no attn.dense row", peer_why or peer_err("cudnn_sdpa", 0), "-")
end

local mc = find(peer, function(r) return r.name == "memcpy_d2d" and r.gbps end)
local one = find(bench, function(r) return r.name == "attn.token_sparse" and p(r).pattern == "parts" end)
local any_decode = false
for _, r in ipairs(bench) do
  if r.name == "attn.token_sparse" and r.kv_gbps then
    any_decode = true
    row(string.format("decode token_sparse n=%d nq=%d lists=%d GB/s", r.n, p(r).n_q or 1, p(r).list_heads or 0),
      fmt(r.kv_gbps), mc and fmt(mc.gbps_rw) or peer_err("memcpy_d2d", 0),
      mc and fmt(r.kv_gbps / mc.gbps_rw) or "-",
      string.format("K/V bytes read / s vs memcpy D2D read+write; %s keys per list", fmt(p(r).keys_per_list)))
    if one and one.n == r.n and one.one_key_ms and r.time_ms > one.one_key_ms then
      local g = r.kv_bytes and r.kv_bytes / ((r.time_ms - one.one_key_ms) * 1e-3) / 1e9
      row("  same, less a one-key call", fmt(g), mc and fmt(mc.gbps_rw) or "-", (g and mc) and fmt(g / mc.gbps_rw) or "-",
        string.format("one-key call %s ms (staging of K, V)", fmt(one.one_key_ms)))
    end
  end
end
if not any_decode then row("decode token_sparse", bench_why or "no attn.token_sparse row", mc and fmt(mc.gbps_rw) or "-", "-") end
for _, n in ipairs(sizes) do
  local st = find(peer, function(r) return r.name == "staging_f32" and r.n == n and r.ms end)
  if st then
    row(string.format("staging f32 q,k,v,o,lse n=%d", n), "-", fmt(st.ms) .. " ms", "-",
      string.format("%s GB/s: what our cuda backend copies per call", fmt(st.gbps)))
  end
end

local w = {0, 0, 0, 0}
local head = {"measurement", "ours", "peer", "ratio", "note"}
for _, r in ipairs(out) do for i = 1, 4 do w[i] = math.max(w[i], #r[i], #head[i]) end end
local f = string.format("%%-%ds  %%-%ds  %%-%ds  %%-%ds  %%s", w[1], w[2], w[3], w[4])
print(string.format(f, table.unpack(head)))
for _, r in ipairs(out) do print(string.format(f, table.unpack(r))) end
if #out == 0 then print("(no measurements: " .. (bench_why or "") .. " " .. (peer_why or "") .. ")") end
