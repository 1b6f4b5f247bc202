-- sparselab.decode — the decode runtime of issue 13 in Lua: the paged KV
-- cache (sl.kvcache_c, core/kvcache.c: pages of P tokens with channel-wise
-- min/max/mean kept up to date on append and evict), explicit decode state
-- carried across steps and layers, and the decode driver that calls a
-- method's `decode` hook beside its prefill `run`.
--
-- A method with a decode hook has
--   decode = function(st, ls, step, p) -> {o =, lse =, pages =, stats =}
-- where st is the decode state (D.state), ls = st:layer(step.layer) holds
-- that layer's cache (ls.cache) and whatever the method keeps there (saved
-- selections, accumulated scores), step = {q = [Hq, 1, D], k =, v = [Hkv, 1, D],
-- layer =, backend =} (the new token's key and value are appended by the
-- driver before the hook runs), p the resolved parameters. The driver
-- checks the state belongs to the method and the shapes match.
local sl = require "sparselab"

local D = {}

--- A cache of `heads` kv heads of head_dim channels, pages of `page` tokens;
--- who names the caller in errors.
function D.cache(heads, head_dim, page, who)
  who = who or "decode"
  if type(page) ~= "number" or page < 1 or page ~= math.floor(page) then
    sl.fail("%s: page = %s; expected a page size >= 1 tokens", who, tostring(page))
  end
  return sl.kvcache_c(heads, head_dim, page)
end

--- A cache holding k and v ([Hkv, n, D], n >= 1).
function D.cache_from(k, v, page, who)
  local ks = k:shape()
  local c = D.cache(ks[1], ks[3], page, who)
  if ks[2] < 1 then sl.fail("%s: empty cache (k has 0 tokens)", who or "decode") end
  c:append(k, v)
  return c
end

--- i32 [lists, rows, n_pages] listing every page (the dense selection).
function D.all_pages(lists, rows, n_pages)
  local row = {}
  for p = 1, n_pages do row[p] = p - 1 end
  local t = {}
  for l = 1, lists do
    t[l] = {}
    for r = 1, rows do t[l][r] = row end
  end
  return sl.tensor(t, "i32")
end

--- i32 [lists, 1, b - a] listing tokens a .. b-1 (pages of one token).
function D.token_range(lists, a, b)
  local row = {}
  for j = a, b - 1 do row[#row + 1] = j end
  if #row == 0 then row[1] = -1 end
  local t = {}
  for l = 1, lists do t[l] = {row} end
  return sl.tensor(t, "i32")
end

--- The exact attention probabilities of q (one row) over every cached
--- token, as a Lua table P[h][j] (1-based), and the LSE per head.
function D.attention_probs(cache, q, backend)
  local n, hq = cache:len(), q:shape()[1]
  local _, lse = D.attend_tokens(cache, q, D.token_range(hq, 0, n), {backend = backend})
  local z, l = D.token_scores(cache, q, {backend = backend}):totable(), lse:totable()
  local P = {}
  for h = 1, hq do
    local row, zr, lh = {}, z[h][1], l[h][1]
    for j = 1, n do row[j] = math.exp(zr[j] - lh) end
    P[h] = row
  end
  return P
end

--- A step over per-KV-head kept prompt tokens (Lua lists, 0-based) plus
--- every token generated since the prefill: the lists, attention and stats.
--- Physical per-head eviction (issue 13, session 3): the layer's cache is
--- split into one cache per KV head holding only that head's kept prompt
--- tokens (kept[g], 0-based) and every generated token, each shrunk to its
--- pages in use; the shared cache is replaced by an empty one. Later decode
--- steps append to the head caches (D.step) and attend over them
--- (D.heads_step). ls.head_ids[g] keeps the logical positions.
function D.compact_heads(ls, kept)
  local cache, n = ls.cache, ls.cache:len()
  local hkv, d, P = cache:heads(), cache:head_dim(), cache:page_size()
  local kb, vb, kz = cache:quant()
  local k, v, pos = cache:tensor("k"), cache:tensor("v"), cache:tensor("pos"):totable()
  ls.heads, ls.head_ids = {}, {}
  for g = 1, hkv do
    local c = D.cache(1, d, P, "decode")
    if kb > 0 then c:set_quant(kb, vb, kz) end
    -- the head cache keeps each slot's token position (the shared cache's)
    c:append(k:narrow(1, g, 1):narrow(2, 1, n), v:narrow(1, g, 1):narrow(2, 1, n), sl.tensor({pos[g]}, "i32"))
    local keep, ev, ids = {}, {}, {}
    for _, j in ipairs(kept[g]) do keep[j] = true end
    for j = 0, n - 1 do
      if j < ls.n_prefill and not keep[j] then ev[#ev + 1] = j else ids[#ids + 1] = j end
    end
    if #ev > 0 then c:evict(sl.tensor({ev}, "i32")) end
    c:shrink()
    ls.heads[g], ls.head_ids[g] = c, ids
  end
  cache:close()
  ls.cache = D.cache(hkv, d, P, "decode")
  if kb > 0 then ls.cache:set_quant(kb, vb, kz) end
end

--- Resident bytes of a layer's caches (the shared one and any head caches).
function D.layer_bytes(ls)
  local b = ls.cache:bytes()
  for _, c in ipairs(ls.heads or {}) do b = b + c:bytes() end
  return b
end

--- One decode step over per-head compacted caches: query head h attends
--- every token of its KV head's cache. Returns the kept_step result (pages:
--- the logical token positions read).
function D.heads_step(ls, q, backend)
  local hq, hkv = q:shape()[1], #ls.heads
  local G = hq // hkv
  local os, lses, lists, tokens, d = {}, {}, {}, 0, q:shape()[3]
  for g = 1, hkv do
    local c = ls.heads[g]
    local o, lse = D.attend(c, q:narrow(1, (g - 1) * G + 1, G), D.all_pages(1, 1, c:pages()), {backend = backend})
    os[g], lses[g] = o, lse
    local l = {}
    for i, j in ipairs(ls.head_ids[g]) do l[i] = j end
    lists[g] = l
    tokens = tokens + c:len()
  end
  local t = D.lists_tensor(lists)
  return {o = sl.cat(os, 1), lse = sl.cat(lses, 1), pages = t,
    stats = {tokens_read = tokens / hkv, density = tokens / (hkv * ls.seen), kv_bytes = 8 * d * tokens,
      resident_bytes = D.layer_bytes(ls)}}
end

--- Decode over kept prompt positions (per KV head, kept[g] 0-based) and
--- every generated token: token lists over the full cache, or, with evict,
--- physical per-head compaction on the first call (D.compact_heads) and
--- dense attention over the compacted head caches afterwards.
function D.kept_step(ls, q, kept, backend, evict)
  if evict and evict ~= 0 then
    if not ls.heads then D.compact_heads(ls, kept) end
    return D.heads_step(ls, q, backend)
  end
  local cache, n = ls.cache, ls.cache:len()
  local hkv, d = cache:heads(), cache:head_dim()
  local lists, tokens = {}, 0
  for g = 1, hkv do
    local l = {}
    for i, j in ipairs(kept[g]) do l[i] = j end
    for j = ls.n_prefill, n - 1 do l[#l + 1] = j end
    lists[g] = l
    tokens = tokens + #l
  end
  local t = D.lists_tensor(lists)
  local o, lse = D.attend_tokens(cache, q, t, {backend = backend})
  return {o = o, lse = lse, pages = t,
    stats = {tokens_read = tokens / hkv, density = tokens / (hkv * n), kv_bytes = 8 * d * tokens,
      resident_bytes = D.layer_bytes(ls)}}
end

--- Kernel-level run of a layer-reuse method: a layer after the first
--- selection layer that does not select itself selects for itself (the
--- oracle of its own scores) and attends over that.
function D.reuse_kernel_run(M, prob, p, layer, first_select, selects)
  local sparse = layer > first_select and not selects(layer)
  return D.kernel_run(M, prob, p, {layer = layer, step = {self_select = sparse or nil}})
end

--- Double Sparsity's channel ranking: per head of x ([H, n, D], the first
--- n rows used), the r channels of largest mean |x| (ties: lower channel
--- first), as i32 [H, r]; with y (same shape) the statistic is mean |x.y|
--- (the reference's "qk" channel).
function D.channel_rank(x, r, n, y)
  local xs = x:shape()
  n = n or xs[2]
  local xt = x:narrow(2, 1, n):totable()
  local yt = y and y:narrow(2, 1, n):totable()
  local out = {}
  for h = 1, xs[1] do
    local stat, ids = {}, {}
    for c = 1, xs[3] do stat[c] = 0; ids[c] = c end
    for t = 1, n do
      local row, yrow = xt[h][t], yt and yt[h][t]
      for c = 1, xs[3] do stat[c] = stat[c] + math.abs(yrow and row[c] * yrow[c] or row[c]) end
    end
    table.sort(ids, function(a, b) if stat[a] ~= stat[b] then return stat[a] > stat[b] end return a < b end)
    out[h] = {}
    for i = 1, r do out[h][i] = ids[i] - 1 end
  end
  return sl.tensor(out, "i32")
end

--- SnapKV's importance per KV head: the softmax probabilities the last w
--- prefill queries (obs_q [Hq, w, D], at positions n - w .. n - 1) give each
--- key of the cache's first n tokens, summed over those rows and the query
--- heads of the group, then pooled along the keys (kernel, padding
--- kernel // 2; pooling 0 average counting the padding as torch's
--- avg_pool1d does, 1 max). span (optional, default n): only keys 1..span
--- are pooled, as one vector padded at both ends (SparseMM's reference pools
--- the prefix before the window); entries past span are left unpooled.
--- Returns a Lua table [Hkv][n].
function D.snapkv_importance(cache, obs_q, n, kernel, pooling, backend, span)
  local qs = obs_q:shape()
  local hq, w = qs[1], qs[2]
  local hkv = cache:heads()
  local s = sl.page.token_scores(obs_q, cache:tensor("k"), {n = n, causal = 1, backend = backend}):totable()
  local imp = {}
  for g = 1, hkv do
    imp[g] = {}
    for j = 1, n do imp[g][j] = 0 end
  end
  for h = 1, hq do
    local g = (h - 1) // (hq // hkv) + 1
    for i = 1, w do
      local row, mx, z = s[h][i], -math.huge, 0
      for j = 1, n do if row[j] > mx then mx = row[j] end end
      for j = 1, n do if row[j] > -math.huge then z = z + math.exp(row[j] - mx) end end
      for j = 1, n do
        if row[j] > -math.huge then imp[g][j] = imp[g][j] + math.exp(row[j] - mx) / z end
      end
    end
  end
  local half, out, m = kernel // 2, {}, span or n
  for g = 1, hkv do
    out[g] = {}
    for j = m + 1, n do out[g][j] = imp[g][j] end
    for j = 1, m do
      local acc = pooling == 1 and -math.huge or 0
      for t = j - half, j + half do
        local x = (t >= 1 and t <= m) and imp[g][t] or 0
        if pooling == 1 then acc = math.max(acc, x) else acc = acc + x end
      end
      out[g][j] = pooling == 1 and acc or acc / kernel
    end
  end
  return out
end

--- i32 [lists, 1, m] from Lua lists of 0-based token positions (sorted
--- ascending here), padded with -1 to the longest.
function D.lists_tensor(lists)
  local m = 1
  for _, l in ipairs(lists) do table.sort(l); m = math.max(m, #l) end
  local t = {}
  for i, l in ipairs(lists) do
    local row = {}
    for j = 1, m do row[j] = l[j] or -1 end
    t[i] = {row}
  end
  return sl.tensor(t, "i32")
end

--- Token-sparse attention over token lists (page.attend with pages of one token).
function D.attend_tokens(cache, q, lists, opts)
  opts = opts or {}
  return sl.page.attend(q, cache:tensor("k"), cache:tensor("v"), lists,
    {page = 1, n = cache:len(), causal = opts.causal ~= false, split = opts.split or 0, backend = opts.backend})
end

--- Token scores of q against the cache (page.token_scores): opts channels
--- (i32 [H, r]), pages (i32 lists over pages of opts.page tokens), bits, backend.
function D.token_scores(cache, q, opts)
  opts = opts or {}
  return sl.page.token_scores(q, cache:tensor("k"), {channels = opts.channels, pages = opts.pages,
    page = opts.page or cache:page_size(), n = cache:len(), bits = opts.bits or 0, qbits = opts.qbits or 0,
    backend = opts.backend})
end

--- The usual kernel-level run of a decode method: prefill (n_q = n_k) dense,
--- a decode problem replayed step by step through a cache of its prefix.
function D.kernel_run(M, prob, p, opts)
  local qs, ks = prob.q:shape(), prob.k:shape()
  if qs[2] == ks[2] then
    local o, lse = sl.attn.dense(prob.q, prob.k, prob.v, {causal = prob.causal, backend = prob.backend})
    return {o = o, lse = lse, stats = {density = 1}, dense_run = true}
  end
  local page = p.page or 16
  if page > ks[2] - qs[2] then
    sl.fail("%s: page = %d is larger than the cache (%d tokens before the decode rows)", M.id, page, ks[2] - qs[2])
  end
  local r = D.replay(M, prob, p, opts)
  return {o = r.o, lse = r.lse, stats = D.replay_stats(r.steps), steps = r.steps, selection = r.selection}
end

--- Per decode step (row r of a decode result against the dense result):
--- recall (mean over heads of exp(L - L_dense)), rel_l2 of the row's output
--- and the method's own step stats (kv_bytes read for that token, ...).
function D.per_step(o, lse, dense_o, dense_lse, steps)
  local rows = o:shape()[2]
  local out = {}
  for r = 1, rows do
    -- non-softmax methods (entmax, rela, ...) return no lse: no recall through L
    local rec = lse and sl.metric.recall(lse:narrow(2, r, 1), dense_lse:narrow(2, r, 1)) or nil
    local e = sl.metric.rel_l2(o:narrow(2, r, 1), dense_o:narrow(2, r, 1))
    local row = {step = r, recall = rec, rel_l2 = e}
    for key, val in pairs(steps and steps[r] or {}) do row[key] = val end
    out[r] = row
  end
  return out
end

--- The quantised pages a method's caches hold ({k = kbits, v = vbits}; 0:
--- f32): its parameters kv_bits / v_bits (and kv_zero: asymmetric codes,
--- z = 1) when it has them.
function D.cache_quant(m, p)
  if m.params and m.params.kv_bits then
    local k = p.kv_bits or 0
    return {k = k, v = k > 0 and (p.v_bits or 0) or 0, z = k > 0 and (p.kv_zero or 0) or 0}
  end
  return {k = 0, v = 0, z = 0}
end

--- Bytes of K and V read per cached token and kv head (codes plus their share
--- of the per-page scales when the cache holds quantised pages).
function D.token_bytes(cache)
  local d, P = cache:head_dim(), cache:page_size()
  local kb, vb, kz = cache:quant()
  -- codes plus the token's share of the per-page scales (and zero points)
  local function side(b) return b == 0 and 4 * d or (b == 8 and d or (d + 1) // 2) + (kz == 1 and 8 or 4) * d / P end
  return side(kb) + side(vb)
end

--- Page-sparse attention of q ([Hq, R, D], the last R positions of the cache)
--- over the listed pages of cache. opts: backend, causal (default true), split.
--- A cache of quantised pages is read directly (page.attend_q).
function D.attend(cache, q, pages, opts)
  opts = opts or {}
  local kb, vb, kz = cache:quant()
  if kb > 0 then
    return sl.page.attend_q(q, cache:tensor("kcodes"), cache:tensor("kscales"),
      cache:tensor(vb > 0 and "vcodes" or "v"), pages,
      {vscale = vb > 0 and cache:tensor("vscales") or nil, kzero = kz == 1 and cache:tensor("kzeros") or nil,
       vzero = kz == 1 and vb > 0 and cache:tensor("vzeros") or nil, kbits = kb, vbits = vb > 0 and vb or 8,
       page = cache:page_size(), n = cache:len(), causal = opts.causal ~= false, split = opts.split or 0,
       backend = opts.backend})
  end
  return sl.page.attend(q, cache:tensor("k"), cache:tensor("v"), pages,
    {page = cache:page_size(), n = cache:len(), causal = opts.causal ~= false, split = opts.split or 0,
     backend = opts.backend})
end

--- Quest's page bound of q against the cache's metadata: [Hq, R, n_pages].
function D.bounds(cache, q, backend)
  return sl.page.bounds(q, cache:tensor("min"), cache:tensor("max"), {backend = backend})
end

--- Distinct pages listed per list (a -1 entry is padding), summed over
--- lists and rows, and the tokens they cover in a cache of n tokens.
function D.pages_read(pages, page, n)
  local t, count, tokens = pages:totable(), 0, 0
  local last = (n + page - 1) // page - 1
  for _, list in ipairs(t) do
    for _, row in ipairs(list) do
      for _, id in ipairs(row) do
        if id >= 0 then
          count = count + 1
          tokens = tokens + (id == last and n - last * page or page)
        end
      end
    end
  end
  return count, tokens
end

-- ---- decode state ----

local State = {}
State.__index = State

--- A decode state for method (id) over layers of hq query heads, hkv kv
--- heads of head_dim d, caches paged by `page`. Everything a method carries
--- between steps and layers lives here (never in globals).
function D.state(method, o)
  for _, key in ipairs{"hq", "hkv", "d", "page"} do
    if type(o[key]) ~= "number" or o[key] < 1 then
      sl.fail("%s: decode state: %s = %s; expected a count >= 1", method, key, tostring(o[key]))
    end
  end
  if o.hq % o.hkv ~= 0 then
    sl.fail("%s: decode state: hq = %d is not a multiple of hkv = %d", method, o.hq, o.hkv)
  end
  local quant = o.quant or {k = 0, v = 0}
  return setmetatable({method = method, hq = o.hq, hkv = o.hkv, d = o.d, page = o.page, bits = o.bits or 0,
    quant = {k = quant.k or 0, v = quant.v or 0, z = quant.z or 0}, steps = 0, layers = {}}, State)
end

--- The per-layer part of the state (created on first use).
function State:layer(l)
  local ls = self.layers[l + 1]
  if not ls then
    ls = {cache = D.cache(self.hkv, self.d, self.page, self.method), saved = nil, acc = nil}
    if self.bits > 0 then ls.cache:set_bits(self.bits) end
    if self.quant.k > 0 then ls.cache:set_quant(self.quant.k, self.quant.v, self.quant.z) end
    self.layers[l + 1] = ls
  end
  return ls
end

--- Checks that the state belongs to method and fits q (and k, v).
function State:check(method, q, k)
  if self.method ~= method then
    sl.fail("%s: decode state belongs to method '%s'", method, tostring(self.method))
  end
  local qs = q:shape()
  if qs[1] ~= self.hq or qs[3] ~= self.d then
    sl.fail("%s: decode state is for q [%d, *, %d], found q [%d, %d, %d]", method, self.hq, self.d, qs[1], qs[2], qs[3])
  end
  if k then
    local ks = k:shape()
    if ks[1] ~= self.hkv or ks[3] ~= self.d then
      sl.fail("%s: decode state is for k [%d, *, %d], found k [%d, %d, %d]", method, self.hkv, self.d, ks[1], ks[2], ks[3])
    end
  end
end

--- A readable summary: method, shapes, steps, per layer the cache and the
--- method's own fields (tensors by shape, tables by size).
function State:dump()
  local out = {string.format("decode state of %s: hq=%d hkv=%d d=%d page=%d steps=%d", self.method, self.hq, self.hkv,
    self.d, self.page, self.steps)}
  local ids = {}
  for l in pairs(self.layers) do ids[#ids + 1] = l end
  table.sort(ids)
  for _, l in ipairs(ids) do
    local ls = self.layers[l]
    local parts = {string.format("  layer %d: cache len=%d pages=%d", l - 1, ls.cache:len(), ls.cache:pages())}
    for g, c in ipairs(ls.heads or {}) do
      parts[#parts + 1] = string.format("    kv head %d (compacted): len=%d bytes=%d", g - 1, c:len(), c:bytes())
    end
    local keys = {}
    for key in pairs(ls) do if key ~= "cache" then keys[#keys + 1] = key end end
    table.sort(keys)
    for _, key in ipairs(keys) do
      local v = ls[key]
      local desc
      if type(v) == "userdata" and v.shape then desc = "[" .. table.concat(v:shape(), ", ") .. "]"
      elseif type(v) == "table" then desc = "table(" .. #v .. ")"
      else desc = tostring(v) end
      parts[#parts + 1] = key .. "=" .. desc
    end
    out[#out + 1] = table.concat(parts, " ")
  end
  return table.concat(out, "\n")
end

D.State = State

-- ---- the driver ----

--- Starts decoding with method (id or table): returns its state. o: hq, hkv,
--- d, page, and bits (a low-bit copy of K in every layer's cache) or params
--- (the method's parameters, from which a method with cache_bits(p) sets it).
function D.begin(method, o)
  local m = sl.methods.get(method)
  if m.cache_bits and o.params and not o.bits then
    o.bits = m.cache_bits(sl.registry.resolve(m, o.params))
  end
  if o.params and not o.quant then o.quant = D.cache_quant(m, sl.registry.resolve(m, o.params)) end
  if not m.decode then
    sl.fail("%s: no decode hook (phase %s)", m.id, tostring(m.phase))
  end
  return D.state(m.id, o)
end

--- Appends a prefill's keys and values of one layer ([Hkv, n, D]) to the
--- state; opts.q: the prefill's queries ([Hq, n_q, D], the last rows are the
--- prompt's end), kept for methods that look at them (SnapKV's observation
--- window).
function D.prefill(st, layer, k, v, opts)
  st:check(st.method, sl.zeros({st.hq, 1, st.d}), k)
  if k:shape()[2] < 1 then
    sl.fail("%s: prefill of layer %d with an empty cache: k holds 0 tokens (expected at least 1)", st.method, layer)
  end
  local ls = st:layer(layer)
  ls.cache:append(k, v)
  ls.n_prefill = ls.cache:len()
  ls.seen = ls.cache:len()   -- tokens ever appended (an evicting cache holds fewer)
  if opts and opts.q then
    st:check(st.method, opts.q)
    ls.obs_q = opts.q
  end
end

--- One decode step of one layer: appends step.k, step.v to the layer's cache,
--- then runs the method's decode hook. params: the method's parameters
--- (resolved with its defaults).
function D.step(method, st, step, params)
  local m = sl.methods.get(method)
  if not m.decode then sl.fail("%s: no decode hook (phase %s)", m.id, tostring(m.phase)) end
  if getmetatable(st) ~= State then sl.fail("%s: expected a decode state from sl decode.begin, found %s", m.id, type(st)) end
  st:check(m.id, step.q, step.k)
  local layer = step.layer or 0
  local ls = st.layers[layer + 1]
  if not ls or (ls.cache:len() == 0 and not ls.heads) then
    sl.fail("%s: decode before prefill (layer %d has an empty cache)", m.id, layer)
  end
  if step.q:shape()[2] ~= 1 or step.k:shape()[2] ~= 1 then
    sl.fail("%s: a decode step takes one query row and one key, found %d and %d", m.id, step.q:shape()[2],
      step.k:shape()[2])
  end
  if ls.heads then   -- per-head compacted caches (D.compact_heads)
    local at = sl.tensor({{ls.seen}}, "i32")   -- the new token's position
    for g, c in ipairs(ls.heads) do
      c:append(step.k:narrow(1, g, 1), step.v:narrow(1, g, 1), at)
      ls.head_ids[g][#ls.head_ids[g] + 1] = ls.seen
    end
  else
    ls.cache:append(step.k, step.v)
  end
  ls.seen = (ls.seen or 0) + 1
  local p = sl.registry.resolve(m, params)
  if layer == 0 then st.steps = st.steps + 1 end   -- a step starts at layer 0
  return m.decode(st, ls, step, p)
end

-- ---- the executed selection of a replay (eval --save-mask, issue 13 session 4) ----
-- The executors are tapped while a step runs: every page.attend /
-- page.attend_q call is recorded with its lists, and every attn.lse_merge
-- with its two inputs, and every attn.dense call (a method attending all
-- of a rebuilt K/V: zipvl's mixed-precision cache; a pooled one is refused
-- below). The step's output o must be one recorded call's
-- output (or a merge of such outputs, or per-KV-head outputs concatenated
-- along the heads): its lists then say exactly which cache slots each query
-- head attended, and the cache's slot positions (kept through evictions,
-- session 4b) map them to token positions. When o is not an executor's
-- output, or attends derived (pooled) keys, the export is refused in one line.
local function tap_executors()
  local rec = {}
  local attend, attend_q, merge, dense, cat = sl.page.attend, sl.page.attend_q, sl.attn.lse_merge, sl.attn.dense, sl.cat
  sl.page.attend = function(q, k, v, pages, o)
    local a, b = attend(q, k, v, pages, o)
    rec[#rec + 1] = {o = a, q = q, pages = pages, opts = o or {}, nk = k:shape()[2]}
    return a, b
  end
  sl.page.attend_q = function(q, kq, ks, v, pages, o)
    local a, b = attend_q(q, kq, ks, v, pages, o)
    rec[#rec + 1] = {o = a, q = q, pages = pages, opts = o or {}, nk = kq:shape()[2]}
    return a, b
  end
  sl.attn.lse_merge = function(o1, l1, o2, l2, o)
    local a, b = merge(o1, l1, o2, l2, o)
    rec[#rec + 1] = {o = a, parts = {o1, o2}}
    return a, b
  end
  sl.attn.dense = function(q, k, v, o)
    local a, b = dense(q, k, v, o)
    rec[#rec + 1] = {o = a, q = q, dense = true, nk = k:shape()[2]}
    return a, b
  end
  sl.cat = function(parts, dim)   -- per-KV-head outputs of compacted caches (D.heads_step) are concatenated
    local a = cat(parts, dim)
    rec[#rec + 1] = {o = a, cat = parts, dim = dim}
    return a
  end
  return rec, function()
    sl.page.attend, sl.page.attend_q, sl.attn.lse_merge, sl.attn.dense, sl.cat = attend, attend_q, merge, dense, cat
  end
end

-- Adds to keep[h][position] = true the token positions that the executor
-- output o attended for query heads h0 + 1 .. h0 + hq (one decode row), from
-- the tapped calls. lay: the layer's caches at the end of the step: HQ query
-- heads, slots n (the shared cache's length) and pos[g][slot + 1], the token
-- position of each slot of KV head g (the cache keeps them through evictions;
-- per-head compacted caches have their own).
local function attended_slots(id, rec, o, h0, hq, keep, lay)
  local hit
  for i = #rec, 1, -1 do if rawequal(rec[i].o, o) then hit = rec[i]; break end end
  if not hit then
    sl.fail("--save-mask: %s's decode output is not that of a page.attend / page.attend_q call (or their LSE merge); "
      .. "its executed selection cannot be read", id)
  end
  local G = lay.HQ // #lay.pos
  local function mark(h, slot)   -- h: local query head (1-based), slot 0-based in its KV head's cache
    local g = (h0 + h - 1) // G + 1
    local t = lay.pos[g][slot + 1]
    if not t then
      sl.fail("--save-mask: %s attended slot %d of KV head %d, past the %d tokens its cache holds", id, slot, g - 1,
        #lay.pos[g])
    end
    keep[h0 + h][t] = true
  end
  if hit.parts then
    for _, x in ipairs(hit.parts) do attended_slots(id, rec, x, h0, hq, keep, lay) end
    return
  end
  if hit.cat then
    if hit.dim ~= 1 then
      sl.fail("--save-mask: %s's decode output concatenates along dim %d (expected query heads, dim 1)", id, hit.dim)
    end
    local off = h0
    for _, x in ipairs(hit.cat) do
      local w = x:shape()[1]
      attended_slots(id, rec, x, off, w, keep, lay)
      off = off + w
    end
    if off ~= h0 + hq then
      sl.fail("--save-mask: %s's concatenated output holds %d heads, expected %d", id, off - h0, hq)
    end
    return
  end
  if hit.dense then   -- every key of a K/V rebuilt from the cache: only when it holds the cache's tokens
    if lay.heads or hit.nk ~= lay.n or hit.q:shape()[2] ~= 1 then
      sl.fail("--save-mask: %s attended %d derived keys (pooled chunk means or a rebuilt K), not the cache's %d "
        .. "tokens; a pooled key averages several tokens, so no set of attended (query, token) pairs gives "
        .. "its output and none is written", id, hit.nk, lay.n)
    end
    for h = 1, hq do for j = 0, hit.nk - 1 do mark(h, j) end end
    return
  end
  local qs, ps = hit.q:shape(), hit.pages:shape()
  if qs[1] ~= hq or qs[2] ~= 1 then
    sl.fail("--save-mask: %s's executor ran q [%d, %d, *]; expected [%d, 1, *] (one decode row, every head)", id,
      qs[1], qs[2], hq)
  end
  local P, n = hit.opts.page or 16, (hit.opts.n and hit.opts.n > 0) and hit.opts.n or hit.nk
  local lists, t = ps[1], hit.pages:totable()
  for h = 1, hq do
    local row = t[(h - 1) // (hq // lists) + 1][1]
    for _, id_ in ipairs(row) do
      if id_ >= 0 then for j = id_ * P, math.min(id_ * P + P, n) - 1 do mark(h, j) end end
    end
  end
end

--- eval --steps (kernel-level decode replay of a captured prefill): q
--- [Hq, n, D] split into its last S rows (the decode steps) and the prefix's
--- queries [Hq, n - S, D] — what the model runner's prefill hands to
--- D.prefill {q =} and SnapKV-style methods read as problem.state.obs_q.
function D.steps_split(q, S)
  local n = q:shape()[2]
  if not math.tointeger(S) or S < 1 or S >= n then
    sl.fail("decode.steps_split: S must be an integer in [1, %d), found %s", n, tostring(S))
  end
  return q:narrow(2, n - S + 1, S), q:narrow(2, 1, n - S)
end

--- Kernel-level replay of a decode problem (q [Hq, R, D] at the last R
--- positions of k, v [Hkv, N, D]): the prefix k[0 .. N-R) is the cache, then
--- each row is one decode step (its key appended, the hook run). Returns
--- {o = [Hq, R, D], lse = [Hq, R], steps = {per step: pages, tokens, ...}}.
--- opts: layer, step (extra fields for every step table), page.
function D.replay(method, prob, p, opts)
  opts = opts or {}
  local m = sl.methods.get(method)
  local qs, ks = prob.q:shape(), prob.k:shape()
  local R, N = qs[2], ks[2]
  if N - R < 1 then sl.fail("%s: decode replay needs a prefix: n_q = %d, n_k = %d", m.id, R, N) end
  local st = D.state(m.id, {hq = qs[1], hkv = ks[1], d = qs[3], page = p.page or opts.page or 16,
    bits = m.cache_bits and m.cache_bits(p) or 0, quant = D.cache_quant(m, p)})
  D.prefill(st, opts.layer or 0, prob.k:narrow(2, 1, N - R), prob.v:narrow(2, 1, N - R),
    {q = opts.prefill_q or (prob.state and prob.state.obs_q)})
  local os, ls, steps = {}, {}, {}
  local hq, bits = qs[1], prob.save_mask and {} or nil
  for r = 1, R do
    local pos = N - R + r
    local step = {q = prob.q:narrow(2, r, 1), k = prob.k:narrow(2, pos, 1), v = prob.v:narrow(2, pos, 1),
      layer = opts.layer or 0, backend = prob.backend}
    for key, val in pairs(opts.step or {}) do step[key] = val end
    local out
    if bits then
      local rec, untap = tap_executors()
      local ok, err = pcall(function() out = D.step(m, st, step, p) end)
      untap()
      if not ok then error(err, 0) end
      -- slots -> token positions: every cache keeps each slot's position
      -- through evictions (shared cache, or one compacted cache per KV head)
      local lc = st:layer(opts.layer or 0)
      local lay = {HQ = hq, n = lc.cache:len(), heads = lc.heads ~= nil, pos = {}}
      if lc.heads then
        for g, c in ipairs(lc.heads) do lay.pos[g] = c:len() > 0 and c:tensor("pos"):totable()[1] or {} end
      else
        lay.pos = lc.cache:tensor("pos"):totable()
      end
      local keep = {}
      for h = 1, hq do keep[h] = {} end
      attended_slots(m.id, rec, out.o, 0, hq, keep, lay)
      for h = 1, hq do
        local row = {}
        for j = 1, N do row[j] = keep[h][j - 1] and 1 or 0 end
        bits[h] = bits[h] or {}
        bits[h][r] = row
      end
    else
      out = D.step(m, st, step, p)
    end
    os[r], ls[r] = out.o, out.lse
    steps[r] = out.stats or {}
  end
  local o = R == 1 and os[1] or sl.cat(os, 2)
  local lse = R == 1 and ls[1] or sl.cat(ls, 2)
  return {o = o, lse = lse, steps = steps, state = st, selection = bits and sl.tensor(bits, "u8") or nil}
end

--- Stats of a page-sparse step: tokens attended per list, density (tokens
--- attended / tokens cached), and the bytes read for this token: the listed
--- pages' K and V rows (f32) of every list plus est_bytes read by the
--- estimator (page metadata, a low-bit copy of K).
function D.page_stats(pages, cache, est_bytes)
  local n, P, d = cache:len(), cache:page_size(), cache:head_dim()
  local count, tokens = D.pages_read(pages, P, n)
  local lists = pages:shape()[1]
  return {pages_read = count, tokens_read = tokens / lists, density = tokens / (lists * n),
    kv_bytes = D.token_bytes(cache) * tokens + (est_bytes or 0)}
end

--- The decode hook of a layer-reuse method (tidaldecode's layer roles):
--- layers below first_select dense; at a selection layer (selects(layer)) the
--- layer attends densely and select(cache, q, p, backend) -> token lists
--- (i32 [lists, 1, m], one-token pages, -1 padding) is saved in the state;
--- later layers of the same step attend over the saved lists. step.self_select
--- (kernel level, one layer): the layer selects for itself and attends
--- sparsely. Returns the usual {o, lse, pages, stats}.
function D.reuse_step(id, st, ls, step, p, first_select, selects, select)
  local layer, cache, q = step.layer or 0, ls.cache, step.q
  local n, hq, d = cache:len(), q:shape()[1], cache:head_dim()
  local lists = D.token_range(hq, 0, n)
  if selects(layer) or step.self_select then
    st.saved = {layer = layer, step = st.steps, lists = select(cache, q, p, step.backend)}
    if step.self_select then lists = st.saved.lists end
  elseif layer > first_select then
    local sv = st.saved
    if not sv or sv.step ~= st.steps then
      sl.fail("%s: layer %d has no selection of this step (run layer %d first)", id, layer, first_select)
    end
    lists = sv.lists
  end
  local o, lse = D.attend_tokens(cache, q, lists, {backend = step.backend})
  local _, tokens = D.pages_read(lists, 1, n)
  local nl = lists:shape()[1]
  return {o = o, lse = lse, pages = lists,
    stats = {tokens_read = tokens / nl, density = tokens / (nl * n), kv_bytes = 8 * d * tokens * cache:heads() / nl}}
end

--- One list shared by every head: i32 [hkv, 1, m] repeating positions.
function D.shared_lists(hkv, positions)
  local l = {}
  for g = 1, hkv do
    l[g] = {}
    for i, j in ipairs(positions) do l[g][i] = j end
  end
  return D.lists_tensor(l)
end

--- Evicts, in every head, the cache positions [a, b) (a cache that keeps
--- sinks and a recent window drops its middle).
function D.evict_range(cache, a, b)
  if b <= a then return end
  local row = {}
  for j = a, b - 1 do row[#row + 1] = j end
  local t = {}
  for g = 1, cache:heads() do t[g] = row end
  cache:evict(sl.tensor(t, "i32"))
end

--- The decode hook of a static cache policy: after the new token is
--- appended, the cache keeps its first n_sink tokens and its last n_recent
--- (the rest is evicted for good), and the query attends to everything left.
function D.static_cache_step(cache, q, n_sink, n_recent, backend, shift)
  local n = cache:len()
  if n > n_sink + n_recent then D.evict_range(cache, n_sink, n - n_recent) end
  n = cache:len()
  local hq, d = q:shape()[1], cache:head_dim()
  local o, lse
  if shift and shift.evicted > 0 and n_sink > 0 then
    -- pos_shift: keys re-positioned to their cache slots, the query at slot n - 1
    local k = cache:tensor("k"):narrow(2, 1, n)
    local sinks = D.rope_rotate(k:narrow(2, 1, math.min(n_sink, n)), shift.evicted, shift.rope)
    local ks = n > n_sink and sl.cat({sinks, k:narrow(2, n_sink + 1, n - n_sink)}, 2) or sinks
    o, lse = sl.page.attend(q, ks, cache:tensor("v"):narrow(2, 1, n), D.token_range(hq, 0, n),
      {page = 1, n = n, causal = true, backend = backend})
  else
    o, lse = D.attend_tokens(cache, q, D.token_range(hq, 0, n), {backend = backend})
  end
  return {o = o, lse = lse, stats = {tokens_read = n, cache_len = n, kv_bytes = 8 * d * n * cache:heads()}}
end

--- Keys x [H, t, D] (already rotated by RoPE at their positions) rotated by
--- `by` more positions: RoPE is a rotation per channel pair (rope.style
--- "pairs": channels 2j, 2j+1; "half": j, j + D/2) by angle pos . theta^(-2j/D),
--- and rotations compose, so R(p + by) k_pre = R(by) R(p) k_pre.
function D.rope_rotate(x, by, rope)
  local t = x:totable()
  local dd = #t[1][1]
  local half = dd // 2
  for _, head in ipairs(t) do
    for _, v in ipairs(head) do
      for j = 0, half - 1 do
        local ang = by * rope.theta ^ (-2 * j / dd)
        local c, s = math.cos(ang), math.sin(ang)
        local a, b = rope.style == "pairs" and 2 * j + 1 or j + 1, rope.style == "pairs" and 2 * j + 2 or j + half + 1
        local x0, x1 = v[a], v[b]
        v[a], v[b] = x0 * c - x1 * s, x0 * s + x1 * c
      end
    end
  end
  return sl.tensor(t)
end

--- The mean of each per-step stat over the steps of a replay, plus the
--- last step's values as *_last.
function D.replay_stats(steps)
  local sum, n = {}, #steps
  for _, s in ipairs(steps) do
    for key, v in pairs(s) do sum[key] = (sum[key] or 0) + v end
  end
  local out = {}
  for key, v in pairs(sum) do out[key] = v / n end
  return out
end

return D
