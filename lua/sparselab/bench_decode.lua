-- sparselab.bench_decode — the decode runtime's performance ratios (issue 13),
-- measured in one run beside the memcpy rate: page-sparse decode over a
-- paged cache (page.attend, one query row, Hq = 32, Hkv = 8, d = 128, a
-- 65536-token cache, 2048 tokens = 128 pages of 16 listed per list) as K/V
-- bytes read per second over the memcpy bandwidth, with lists per query head
-- and per KV head (shared by a GQA group); the page metadata update of one
-- appended token against one decode step's attention time; and the cache's
-- memory (storage + metadata) over the raw f32 K/V bytes; and (issue 13,
-- session 3) the same page-sparse steps over caches of int8 / int4 pages
-- (page.attend_q: bytes = codes + per-page scales read, time against the f32
-- step, cache bytes against the f32 cache). Appends rows to a `sparselab
-- bench` result list.
local sl = require "sparselab"
local decode = require "sparselab.decode"

local D = {}

local function median_ms(reps, f)
  local t = {}
  f()
  for i = 1, reps do
    local t0 = sl.time()
    f()
    t[i] = (sl.time() - t0) * 1e3
  end
  table.sort(t)
  return t[(reps + 1) // 2]
end

-- m pages spread over np pages (one in each of m equal strides), per list.
local function spread_pages(lists, np, m, seed)
  math.randomseed(seed)
  local stride, t = np // m, {}
  for l = 1, lists do
    local row = {}
    for i = 0, m - 1 do row[i + 1] = i * stride + math.random(0, stride - 1) end
    row[m] = np - 1 == row[m] and row[m] or math.max(row[m], np - 1)   -- the current page, as decode keeps it
    t[l] = {row}
  end
  return sl.tensor(t, "i32")
end

--- o: quick, backend, reps, n (cache tokens), sel (tokens listed), page.
function D.run(results, o)
  local backend, reps = o.backend or "cpu", o.reps or 5
  local hq, hkv, d, P = 32, 8, 128, o.page or 16
  local n = o.n or (o.quick and 16384 or 65536)
  local sel = math.min(o.sel or 2048, n)
  local m = sel // P
  local copy_bytes = (o.quick and 64 or 256) * 1024 * 1024
  local bw = sl.bench_memcpy(copy_bytes, reps)
  local cache = decode.cache(hkv, d, P, "bench")
  do
    local k, v = sl.randn({hkv, n, d}, {seed = 21}), sl.randn({hkv, n, d}, {seed = 22})
    cache:append(k, v)
    k:close(); v:close()
  end
  collectgarbage()
  local q = sl.randn({hq, 1, d}, {seed = 23})
  local np = cache:pages()
  local attend_ms, f32_ms = nil, {}
  for _, lists in ipairs{hq, hkv} do
    local pages = spread_pages(lists, np, m, 24)
    local ms = median_ms(reps, function() return decode.attend(cache, q, pages, {backend = backend}) end)
    local bytes = lists * m * P * 2 * d * 4
    local gbps = bytes / (ms * 1e-3) / 1e9
    if lists == hq then attend_ms = ms end
    f32_ms[lists] = ms
    results[#results + 1] = {name = "page.attend", n = n, n_q = 1, d = d, heads = hq, kv_heads = hkv, backend = backend,
      params = {phase = "decode", list_heads = lists, pages_per_list = m, page = P},
      metrics = {kv_gbps = gbps, memcpy_gbps = bw, ratio_to_memcpy = gbps / bw, time_ms = ms, target = 0.5,
        list_heads = lists, kv_bytes = bytes}}
  end
  -- quantised pages (issue 13 session 3): the same steps over a cache whose
  -- pages hold int8 K and V codes with per-page, per-channel scales
  -- (page.attend_q dequantises in the kernel); bytes = codes + scales read
  for _, bits in ipairs{8, 4} do
    local qc = decode.cache(hkv, d, P, "bench")
    qc:set_quant(bits, bits)
    do
      local k, v = sl.randn({hkv, n, d}, {seed = 21}), sl.randn({hkv, n, d}, {seed = 22})
      qc:append(k, v)
      k:close(); v:close()
    end
    collectgarbage()
    for _, lists in ipairs{hq, hkv} do
      local pages = spread_pages(lists, np, m, 24)
      local ms = median_ms(reps, function() return decode.attend(qc, q, pages, {backend = backend}) end)
      local bytes = lists * m * P * decode.token_bytes(qc)
      local gbps = bytes / (ms * 1e-3) / 1e9
      results[#results + 1] = {name = "page.attend_q", n = n, n_q = 1, d = d, heads = hq, kv_heads = hkv,
        backend = backend, params = {phase = "decode", list_heads = lists, pages_per_list = m, page = P, bits = bits},
        metrics = {kv_gbps = gbps, memcpy_gbps = bw, ratio_to_memcpy = gbps / bw, time_ms = ms, kv_bytes = bytes,
          f32_time_ratio = ms / f32_ms[lists], cache_bytes_ratio = qc:bytes() / cache:bytes(), list_heads = lists}}
    end
    qc:close()
    collectgarbage()
  end
  -- metadata update: one token appended (K and V copied, the last page's
  -- min/max/sum folded) against the decode step above
  local k1, v1 = sl.randn({hkv, 1, d}, {seed = 25}), sl.randn({hkv, 1, d}, {seed = 26})
  local app_ms = median_ms(reps * 20, function() cache:append(k1, v1) end)
  results[#results + 1] = {name = "kvcache.append", n = n, d = d, heads = hq, kv_heads = hkv, backend = "host",
    params = {phase = "decode", page = P},
    metrics = {time_ms = app_ms, attend_ms = attend_ms, ratio_to_attend = app_ms / attend_ms, target = 0.05}}
  -- memory: the tokens held and their pages' metadata (3 rows of d floats),
  -- and what the storage holds allocated (capacity grows by half), plus
  -- each slot's token position (i32, issue 13 session 4b)
  local raw = 2 * hkv * cache:len() * d * 4
  local used = raw + 3 * hkv * cache:pages() * d * 4 + 4 * hkv * cache:len()
  results[#results + 1] = {name = "kvcache.memory", n = cache:len(), d = d, heads = hq, kv_heads = hkv, backend = "host",
    params = {page = P}, metrics = {bytes = used, allocated_bytes = cache:bytes(), raw_kv_bytes = raw,
      ratio_to_raw = used / raw, allocated_ratio = cache:bytes() / raw, target = 1.1}}
  cache:close()
  collectgarbage()
  return results
end

return D
