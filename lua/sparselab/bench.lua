-- sparselab.bench — performance as ratios measured in one run (DESIGN §10):
-- our dense attention FLOP rate against the OpenBLAS sgemm ceiling, the
-- block-sparse executor's speedup over our dense at set densities, and the
-- token-sparse decode's K/V read rate against memcpy. Medians of repeated
-- runs; the machine is shared, so only ratios carry meaning.
-- Block-sparse masks come in two kinds: a causal window (the kept share of
-- causal pairs is rho, but 64-blocks round the executed share up) and seeded
-- random blocks (the diagonal plus blocks below it, as many as make the
-- executed share rho). Beside them, timing of parts: the call with an empty
-- mask (validation, NaN scan, dispatch) and with the diagonal blocks only, so
-- the cost of the remaining blocks can be set against dense's cost per FLOP.
local sl = require "sparselab"

local B = {}

local function median_ms(reps, f)
  local t = {}
  f() -- warm-up
  for i = 1, reps do
    local t0 = sl.time()
    f()
    t[i] = (sl.time() - t0) * 1e3
  end
  table.sort(t)
  return t[(reps + 1) // 2]
end

-- A block mask (bq = bk = b) from a list per query block of kept key blocks
-- (sorted, strictly below the diagonal), plus every diagonal block with its
-- causal bits (diag = true). Lists and diagonal can both be empty.
function B.block_list_mask(n, b, rows, diag)
  local nb = (n + b - 1) // b
  local rp, col = {0}, {}
  for r = 0, nb - 1 do
    for _, c in ipairs(rows[r] or {}) do
      for j = c * b, math.min(n, (c + 1) * b) - 1 do col[#col + 1] = j end
    end
    rp[#rp + 1] = #col
  end
  local m = sl.mask.from_index({row_ptr = sl.tensor({rp}, "i32"), col = sl.tensor(col, "i32"), rows_per_entry = b,
    n_q = n, n_k = n}, b, b)
  if diag then m = m + sl.mask.block_diag(b):materialize{n_q = n, n_k = n, bq = b, bk = b} end
  return m
end

-- Seeded random blocks below the diagonal, drawn uniformly among all of them
-- (so a row keeps about the same share of its blocks as any other), as many
-- as make the diagonal plus them rho of the causal pairs in block area (n a
-- multiple of b: each block is b x b).
function B.random_rows(n, b, rho, seed)
  local nb = n // b
  local want = math.floor(rho * (n * (n + 1) / 2) / (b * b) + 0.5) - nb
  local cand = {}
  for r = 1, nb - 1 do for c = 0, r - 1 do cand[#cand + 1] = r * nb + c end end
  math.randomseed(seed)
  want = math.max(0, math.min(want, #cand))
  for i = 1, want do  -- partial Fisher-Yates: cand[1..want] is the sample
    local j = math.random(i, #cand)
    cand[i], cand[j] = cand[j], cand[i]
  end
  local rows = {}
  for i = 1, want do
    local r, c = cand[i] // nb, cand[i] % nb
    rows[r] = rows[r] or {}
    table.insert(rows[r], c)
  end
  for _, l in pairs(rows) do table.sort(l) end
  return rows
end

-- The dtypes the op computes in on a backend, as the op listing says
-- (sl.ops()[i].dtypes: a list, or a table of lists by backend); a listing
-- without them means f32 only (op.c converts other float inputs to f32
-- before dispatch, so a bf16 call runs but computes in f32).
function B.native_dtypes(op_name, backend)
  for _, op in ipairs(sl.ops()) do
    if op.name == op_name and type(op.dtypes) == "table" then
      local l = op.dtypes[backend] or op.dtypes
      local out = {}
      for _, t in ipairs(l) do out[#out + 1] = t end
      if #out > 0 then return out end
    end
  end
  return {"f32"}
end

local function has(list, x)
  for _, y in ipairs(list) do if y == x then return true end end
  return false
end

--- o = {quick = bool, backend = "cpu", n = {sizes}, d = {head dims}, heads = H, densities = {rho},
---      patterns = {"window", "random_blocks"}, reps = R, dtypes = {"f32", "bf16"}, sgemm = bool (default true),
---      decode = bool (default true), decode_n = N, decode_keys = SEL, decode_nq = {1, 2, 3, 4},
---      decode_parts = bool (a one-key call beside them), emit = function(row) (called as each row is measured)}
--- -> array of {name, n, d, heads, backend, params, metrics [, error]}.
-- Defaults (every option nil) are those of `sparselab bench [--quick]`:
-- n {4096} quick / {4096, 8192, 16384}, d {64, 128}, heads = sl.threads(),
-- rho {0.05, 0.1, 0.25, 0.5}, both patterns, reps 3 quick / 5. Block-sparse
-- runs at the first d of the list. A dtype other than f32 is timed on dense
-- when B.native_dtypes lists it, and reported as a row with an error otherwise.
function B.run(o)
  local quick = o.quick
  local backend = o.backend or "cpu"
  local reps = o.reps or (quick and 3 or 5)
  -- every row appended is also handed to o.emit at once (rows are complete
  -- when appended)
  local results = setmetatable({}, {__newindex = function(t, i, r)
    rawset(t, i, r)
    if o.emit then o.emit(r) end
  end})
  local ceiling
  if o.sgemm ~= false then
    local sgemm_n = quick and 2048 or 4096
    ceiling = sl.bench_sgemm(sgemm_n, reps)
    -- the 1-minute load average beside the ceiling (Linux): on a shared
    -- machine it says how far time-slicing moves this run's ratios
    local f = io.open("/proc/loadavg")
    local load = f and tonumber((f:read("l") or ""):match("^(%S+)"))
    if f then f:close() end
    results[#results + 1] = {name = "sgemm", n = sgemm_n, d = sgemm_n, heads = 1, backend = "openblas",
      params = {threads = sl.threads()}, metrics = {gflops = ceiling, load_1m = load}}
  end
  local sizes = o.n or (quick and {4096} or {4096, 8192, 16384})
  local dims = o.d or {64, 128}
  local heads = o.heads or sl.threads()
  local densities = o.densities or {0.05, 0.1, 0.25, 0.5}
  local patterns = o.patterns or {"window", "random_blocks"}
  local native = B.native_dtypes("attn.dense", backend)
  -- the instruction set the cpu kernels' row operations run (sl.cpu_isa:
  -- the context's choice, else SL_CPU_ISA, else the CPU's best); the GEMMs
  -- are OpenBLAS's own (its core is in sgemm's row)
  local isa = backend == "cpu" and sl.cpu_isa() or nil
  for _, n in ipairs(sizes) do
    for _, d in ipairs(dims) do
      local q = sl.randn({heads, n, d}, {seed = 1})
      local k = sl.randn({heads, n, d}, {seed = 2})
      local v = sl.randn({heads, n, d}, {seed = 3})
      local args = {causal = true, backend = backend}
      local ms = median_ms(reps, function() return sl.attn.dense(q, k, v, args) end)
      local dense_flops = sl.op_flops("attn.dense", q, k, v, args)
      local gflops = dense_flops / (ms * 1e-3) / 1e9
      results[#results + 1] = {name = "attn.dense", n = n, d = d, heads = heads, backend = backend,
        params = {causal = true, isa = isa}, metrics = {gflops = gflops, sgemm_gflops = ceiling,
          ratio_to_sgemm = ceiling and gflops / ceiling, time_ms = ms, target = 0.75}}
      for _, dt in ipairs(o.dtypes or {}) do
        if dt ~= "f32" then
          local row = {name = "attn.dense", n = n, d = d, heads = heads, backend = backend,
            params = {causal = true, dtype = dt}, metrics = {}}
          if has(native, dt) then
            local qt, kt, vt = q:to(dt), k:to(dt), v:to(dt)
            local tms = median_ms(reps, function() return sl.attn.dense(qt, kt, vt, args) end)
            row.metrics = {gflops = dense_flops / (tms * 1e-3) / 1e9, time_ms = tms, f32_time_ms = ms}
          else
            row.error = string.format("%s: not in this build (attn.dense on %s computes in %s)", dt, backend,
              table.concat(native, ","))
          end
          results[#results + 1] = row
        end
      end
      if d == dims[1] and #densities > 0 then
        local b = 64
        local function time_mask(m)
          return median_ms(reps, function() return sl.attn.block_sparse(q, k, v, m, {backend = backend}) end)
        end
        -- parts: the fixed cost of a call (empty mask) and the diagonal blocks alone
        local empty = B.block_list_mask(n, b, {}, false)
        local diag = B.block_list_mask(n, b, {}, true)
        local empty_ms, diag_ms = time_mask(empty), time_mask(diag)
        local diag_flops = sl.op_flops("attn.block_sparse", q, k, v, diag)
        results[#results + 1] = {name = "attn.block_sparse", n = n, d = d, heads = heads, backend = backend,
          params = {pattern = "parts", bq = b, bk = b, isa = isa},
          metrics = {empty_mask_ms = empty_ms, diag_only_ms = diag_ms, dense_time_ms = ms,
            diag_exec_density = diag_flops / dense_flops,
            -- dense time per FLOP over the diagonal blocks' time per FLOP
            diag_efficiency = (ms / dense_flops) / (diag_ms / diag_flops)}}
        for _, rho in ipairs(densities) do
          local w = math.max(1, math.floor(n * (1 - math.sqrt(1 - rho)) + 0.5))
          local kinds = {}
          if has(patterns, "window") then
            kinds[#kinds + 1] = {pattern = "window", params = {w = w},
              mask = sl.mask.window(w):materialize{n_q = n, n_k = n, bq = b, bk = b}}
          end
          if has(patterns, "random_blocks") then
            kinds[#kinds + 1] = {pattern = "random_blocks", params = {seed = 100 + math.floor(rho * 100)},
              mask = B.block_list_mask(n, b, B.random_rows(n, b, rho, 100 + math.floor(rho * 100)), true)}
          end
          for _, kind in ipairs(kinds) do
            local m = kind.mask
            local sms = time_mask(m)
            -- the executor computes whole 64x64 blocks: the fraction of dense
            -- work it really does is its FLOPs over dense FLOPs
            local flops = sl.op_flops("attn.block_sparse", q, k, v, m)
            local exec = flops / dense_flops
            local params = {pattern = kind.pattern, rho = rho, bq = b, bk = b, isa = isa}
            for key, val in pairs(kind.params) do params[key] = val end
            results[#results + 1] = {name = "attn.block_sparse", n = n, d = d, heads = heads, backend = backend,
              params = params,
              metrics = {rho = rho, density = m:density(true), exec_density = exec, time_ms = sms, dense_time_ms = ms,
                speedup = ms / sms, speedup_x_rho = ms / sms * rho, target_speedup = 0.9 / rho,
                exec_efficiency = ms / sms * exec,
                -- the blocks beyond the diagonal: dense time per FLOP over theirs
                marginal_efficiency = flops > diag_flops and (ms / dense_flops) / ((sms - diag_ms) / (flops - diag_flops))
                  or nil}}
          end
        end
      end
      q, k, v = nil, nil, nil
      collectgarbage()
    end
  end
  if o.decode ~= false then
    B.decode(results, {quick = quick, backend = backend, reps = reps, n = o.decode_n, sel = o.decode_keys,
      nq = o.decode_nq, parts = o.decode_parts})
    -- the paged cache of issue 13: page-sparse decode, metadata update, memory
    require("sparselab.bench_decode").run(results, {quick = quick, backend = backend, reps = reps, n = o.decode_n})
  end
  return results
end

-- Index lists for decode: per list head, `sel` keys spread over the cache
-- (one random key in each of sel equal strides), one entry per head.
local function spread_lists(n_heads, n, sel, seed)
  math.randomseed(seed)
  local rp, col, stride = {}, {}, n // sel
  for h = 1, n_heads do
    rp[h] = {(h - 1) * sel, h * sel}
    for i = 0, sel - 1 do col[#col + 1] = i * stride + math.random(0, stride - 1) end
  end
  return sl.tensor(rp, "i32"), sl.tensor(col, "i32")
end

--- Token-sparse decode (DESIGN §10): K/V bytes the executor reads per second
-- over the memcpy bandwidth measured in the same run (bytes copied per second,
-- all threads). Nq = 1 .. 4 queries (o.nq) at the end of an n-key cache
-- (o.n), Hq = 32, Hkv = 8, d = 128, ~2048 listed keys per list head (o.sel);
-- lists per query head (each head reads its own rows) and per kv head (a GQA
-- group shares them, so each row is read once for four query heads). Beside
-- them (o.parts), a call that reads one key per kv head ("parts": validation,
-- dispatch and, on a staging backend, the copies), so the executor's own
-- share can be told.
-- Appends to results.
function B.decode(results, o)
  local backend, reps = o.backend or "cpu", o.reps or 5
  local hq, hkv, d, sel = 32, 8, 128, o.sel or 2048
  local n = o.n or (o.quick and 16384 or 65536)
  sel = math.min(sel, n)
  local copy_bytes = (o.quick and 64 or 256) * 1024 * 1024
  local bw = sl.bench_memcpy(copy_bytes, reps)
  results[#results + 1] = {name = "memcpy", n = copy_bytes, d = 0, heads = 1, backend = "libc",
    params = {threads = sl.threads()}, metrics = {gbps = bw}}
  local k = sl.randn({hkv, n, d}, {seed = 11})
  local v = sl.randn({hkv, n, d}, {seed = 12})
  local nqs = o.nq or {1, 2, 3, 4}
  for _, hm in ipairs{hq, hkv} do
    local rp, col = spread_lists(hm, n, sel, 13)
    for _, nq in ipairs(nqs) do
      local q = sl.randn({hq, nq, d}, {seed = 14})
      local args = {rows_per_entry = nq, backend = backend}
      local ms = median_ms(reps, function() return sl.attn.token_sparse(q, k, v, rp, col, args) end)
      local bytes = hm * sel * 2 * d * 4 -- each list's K and V rows, read once
      local gbps = bytes / (ms * 1e-3) / 1e9
      results[#results + 1] = {name = "attn.token_sparse", n = n, n_q = nq, d = d, heads = hq, kv_heads = hkv,
        backend = backend, params = {phase = "decode", n_q = nq, list_heads = hm, keys_per_list = sel,
          isa = backend == "cpu" and sl.cpu_isa() or nil},
        metrics = {kv_gbps = gbps, memcpy_gbps = bw, ratio_to_memcpy = gbps / bw, time_ms = ms, target = 0.5,
          n_q = nq, list_heads = hm, kv_bytes = bytes}}
    end
  end
  if o.parts then
    -- one listed key per kv head: the call's cost without the reading
    local rp, col = spread_lists(hkv, n, 1, 13)
    local q = sl.randn({hq, 1, d}, {seed = 14})
    local args = {rows_per_entry = 1, backend = backend}
    local ms = median_ms(reps, function() return sl.attn.token_sparse(q, k, v, rp, col, args) end)
    results[#results + 1] = {name = "attn.token_sparse", n = n, n_q = 1, d = d, heads = hq, kv_heads = hkv,
      backend = backend, params = {phase = "decode", pattern = "parts", n_q = 1, list_heads = hkv, keys_per_list = 1},
      metrics = {one_key_ms = ms, n_q = 1}}
  end
end

return B
