-- sparselab.model — a trained transformer with pluggable attention: every
-- layer's (and optionally every head's) attention is a sparselab method, so
-- methods, schedules and corrected methods can be judged by model-level
-- numbers (perplexity, KL to dense, top-1 agreement, greedy agreement), and
-- Q/K/V can be captured for kernel-level replay.
local sl = require "sparselab"

local M = {}
local Model = {}
Model.__index = Model

local function exists(path)
  local f = io.open(path, "rb")
  if f then f:close() end
  return f ~= nil
end

--- sl.model.load(path [, {tokenizer = path}]): a llama2.c checkpoint file or a
--- Hugging Face directory. A tokenizer next to the checkpoint (or inside the
--- directory) is loaded too, the first found of: tok<vocab>.bin, tokenizer.bin
--- (llama2.c), tokenizer.model (SentencePiece), tokenizer.json (byte-level BPE).
function M.load(path, opts)
  opts = opts or {}
  local c = sl.model_c.load(path)
  local self = setmetatable({c = c, path = path, cfg = c:config()}, Model)
  -- a Hugging Face model is a directory; a llama2.c checkpoint sits in one
  local dir = pcall(sl.listdir, path) and path or (path:match("^(.*)/[^/]*$") or ".")
  local tok = opts.tokenizer
  if not tok then
    for _, name in ipairs{"tok" .. self.cfg.vocab_size .. ".bin", "tokenizer.bin", "tokenizer.model", "tokenizer.json"} do
      if exists(dir .. "/" .. name) then tok = dir .. "/" .. name; break end
    end
  end
  if tok then self.tok = sl.tokenizer_c.load(tok, self.cfg.vocab_size) end
  return self
end

function Model:encode(text, bos)
  if not self.tok then sl.fail("%s: no tokenizer loaded (give {tokenizer = path})", self.path) end
  return self.tok:encode(text, bos ~= false)
end

function Model:decode(ids, prev)
  if not self.tok then sl.fail("%s: no tokenizer loaded", self.path) end
  return self.tok:decode(ids, prev)
end

-- A spec is nil/"dense" (exact), "skip" (head removed: output 0), a method id, a method table, or
-- {method =, budget =, params =}. A schedule is a spec, a function
-- (layer, head) -> spec, or {default = spec, layers = {[layer] = spec},
-- heads = {[layer] = {[head] = spec}}} with 0-based layers and heads.
local function normalise(spec)
  if spec == nil or spec == "dense" then return nil end
  if type(spec) == "string" or (type(spec) == "table" and spec.run) then
    return {method = sl.methods.get(spec)}
  end
  if type(spec) == "table" and spec.method then
    return {method = sl.methods.get(spec.method), budget = spec.budget, params = spec.params}
  end
  sl.fail("attention: expected a method id, a method, {method=, budget=, params=} or a schedule")
end

local function is_schedule(s)
  return type(s) == "function" or (type(s) == "table" and not s.run and not s.method and
    (s.default ~= nil or s.layers ~= nil or s.heads ~= nil))
end

local function spec_for(schedule, layer, head)
  if type(schedule) == "function" then return schedule(layer, head) end
  if not is_schedule(schedule) then return schedule end
  if head and schedule.heads and schedule.heads[layer] and schedule.heads[layer][head] ~= nil then
    return schedule.heads[layer][head]
  end
  if schedule.layers and schedule.layers[layer] ~= nil then return schedule.layers[layer] end
  return schedule.default
end

local function run_spec(spec, q, k, v)
  -- "skip" (issue 16, head masks): the head is removed, its attention is not
  -- computed and its output is 0 (its W_o slice then contributes nothing)
  if spec == "skip" then return sl.zeros(q:shape()) end
  spec = normalise(spec)
  if not spec then
    local o = sl.attn.dense(q, k, v, {causal = true})
    return o
  end
  local prob = sl.problem{q = q, k = k, v = v, causal = true}
  local p = sl.registry.resolve(spec.method, spec.params, spec.budget)
  return spec.method.run(prob, p).o
end

--- The attention hook for a schedule (nil = every layer dense).
local function hook_for(schedule)
  if schedule == nil then return nil end
  local per_head = is_schedule(schedule) and (type(schedule) == "function" or schedule.heads ~= nil)
  return function(layer, q, k, v)
    if not per_head then return run_spec(spec_for(schedule, layer), q, k, v) end
    local hq, hkv = q:shape()[1], k:shape()[1]
    local group, outs = hq // hkv, {}
    for h = 0, hq - 1 do
      local g = h // group
      outs[h + 1] = run_spec(spec_for(schedule, layer, h), q:narrow(1, h + 1, 1), k:narrow(1, g + 1, 1),
        v:narrow(1, g + 1, 1))
    end
    return sl.cat(outs, 1)
  end
end

--- The attention hook of a decode method (issue 13): prefill calls (as many
--- query rows as keys) run the prefill schedule (dense when nil) and fill
--- the method's decode state with the layer's keys, values and queries;
--- decode calls (one query row) go through the method's decode hook. Returns
--- the hook and a function giving the decode state.
local function decode_hook_for(prefill_schedule, dspec, cfg)
  local decode = require "sparselab.decode"
  local spec = normalise(dspec)
  if not spec then sl.fail("model: decode = expects a decode method (dense needs no decode hook)") end
  local m = spec.method
  if not m.decode then sl.fail("model: %s has no decode hook (phase %s)", m.id, tostring(m.phase)) end
  local p = sl.registry.resolve(m, spec.params, spec.budget)
  local prefill = hook_for(prefill_schedule)
  local st
  local function hook(layer, q, k, v)
    local nq, nk = q:shape()[2], k:shape()[2]
    if not st then
      st = decode.state(m.id, {hq = q:shape()[1], hkv = k:shape()[1], d = q:shape()[3], page = p.page or 16,
        bits = m.cache_bits and m.cache_bits(p) or 0, quant = decode.cache_quant(m, p)})
    end
    local ls = st.layers[layer + 1]
    if nq == nk or not ls then
      if nq ~= nk then sl.fail("%s: decode before prefill (layer %d)", m.id, layer) end
      local o = prefill and prefill(layer, q, k, v) or sl.attn.dense(q, k, v, {causal = true})
      decode.prefill(st, layer, k, v, {q = q})
      return o
    end
    if nq ~= 1 then sl.fail("%s: a decode step takes one query row, the model gave %d", m.id, nq) end
    if ls.seen ~= nk - 1 then
      sl.fail("%s: decode state out of step with the model (layer %d has seen %d tokens, the model %d)", m.id, layer,
        ls.seen, nk - 1)
    end
    -- rope: the model's RoPE (keys arrive rotated), for methods that re-position cached keys (pos_shift)
    local rope = cfg and {theta = tonumber(cfg.rope_theta), style = cfg.rope_style, factor = cfg.rope_factor or 0}
    return decode.step(m, st, {q = q, k = k:narrow(2, nk, 1), v = v:narrow(2, nk, 1), layer = layer, rope = rope}, p).o
  end
  return hook, function() return st end
end

local function tokens_of(self, o)
  local tokens = o.tokens or (o.text and self:encode(o.text))
  if not tokens then sl.fail("model: give tokens = {...} or text = '...'") end
  if #tokens > self.cfg.seq_len then
    sl.fail("model: %d tokens exceed the model's context of %d", #tokens, self.cfg.seq_len)
  end
  return tokens
end

--- m:run{tokens = | text =, attention = schedule} -> logits [n, vocab], tokens
function Model:run(o)
  local tokens = tokens_of(self, o)
  local st <close> = self.c:state(#tokens)
  return self.c:forward(tokens, st, hook_for(o.attention)), tokens
end

--- m:evaluate{tokens = | text =, attention = schedule} -> metrics against
--- dense: ppl, ppl_dense, nll, nll_dense, kl, top1 (agreement), n
function Model:evaluate(o)
  local dense, tokens = self:run{tokens = o.tokens, text = o.text}
  local sparse = self:run{tokens = tokens, attention = o.attention}
  local c = sl.model_c.compare(dense, sparse, tokens)
  return {ppl = math.exp(c.nll), ppl_dense = math.exp(c.nll_ref), nll = c.nll, nll_dense = c.nll_ref,
    kl = c.kl, top1 = c.top1, n = c.n}, tokens
end

--- m:evaluate_decode{tokens = | text =, prefix = n0, decode = spec, attention = prefill schedule}
--- teacher-forced scoring through the cache: the first n0 tokens are one
--- prefill (attention schedule, dense by default), every later token one
--- decode step through the decode method's hook. Metrics against dense as
--- in evaluate, over the decoded positions only, plus the decode state.
function Model:evaluate_decode(o)
  local tokens = tokens_of(self, o)
  local n0 = o.prefix or #tokens // 2
  if n0 < 1 or n0 >= #tokens then
    sl.fail("model: prefix = %s; expected 1 <= prefix < %d tokens", tostring(n0), #tokens)
  end
  local dense = self:run{tokens = tokens}
  local hook, state = decode_hook_for(o.attention, o.decode, self.cfg)
  local st <close> = self.c:state(#tokens)
  local pre = {}
  for i = 1, n0 do pre[i] = tokens[i] end
  self.c:forward(pre, st, hook)
  -- rows n0+1 .. n: each a decode step; row i predicts token i+1
  local rows = {}
  for i = n0 + 1, #tokens do rows[#rows + 1] = self.c:forward({tokens[i]}, st, hook) end
  local sparse = sl.cat(rows, 1)
  local tail = {}
  for i = n0 + 1, #tokens do tail[#tail + 1] = tokens[i] end
  local c = sl.model_c.compare(dense:narrow(1, n0 + 1, #tokens - n0):to("f32"), sparse, tail)
  return {ppl = math.exp(c.nll), ppl_dense = math.exp(c.nll_ref), nll = c.nll, nll_dense = c.nll_ref,
    kl = c.kl, top1 = c.top1, n = c.n}, state()
end

--- m:generate{prompt = ids | text =, steps = 64, attention =, decode =, temperature = 0, seed = 1}
--- -> ids (prompt included), text of the generated part. decode = a decode
--- method (spec): the prompt runs the attention schedule, every generated
--- token goes through the method's decode hook.
function Model:generate(o)
  local ids = {}
  for i, t in ipairs(o.prompt or self:encode(o.text or "")) do ids[i] = t end
  local steps = o.steps or 64
  local st <close> = self.c:state(math.min(self.cfg.seq_len, #ids + steps))
  local hook = o.decode and decode_hook_for(o.attention, o.decode, self.cfg) or hook_for(o.attention)
  local logits = self.c:forward(ids, st, hook)
  local draws = o.temperature and o.temperature > 0 and sl.rand({steps}, {seed = o.seed or 1})
  local start = #ids
  for s = 1, steps do
    local next_id
    if o.temperature and o.temperature > 0 then
      local row = logits:narrow(1, logits:shape()[1], 1):totable()[1]
      local mx = -math.huge
      for _, x in ipairs(row) do mx = math.max(mx, x) end
      local z, p = 0, {}
      for j, x in ipairs(row) do p[j] = math.exp((x - mx) / o.temperature); z = z + p[j] end
      local u = draws:get(s) -- inverse-CDF draw
      local acc = 0
      next_id = #row - 1
      for j = 1, #row do
        acc = acc + p[j] / z
        if u <= acc then next_id = j - 1; break end
      end
    else
      next_id = sl.model_c.argmax(logits)
    end
    ids[#ids + 1] = next_id
    if s == steps or #ids >= self.cfg.seq_len then break end
    logits = self.c:forward({next_id}, st, hook)
  end
  local gen = {}
  for i = start + 1, #ids do gen[#gen + 1] = ids[i] end
  return ids, self.tok and self:decode(gen, ids[start]) or nil
end

--- m:capture{tokens = | text =, layers = {0, 1, ...} (default all), out = dir, name = "text"}
--- writes out/<name>_layer<L>.safetensors with q, k, v (post-RoPE) and the
--- dense lse of each layer; returns the list of files. Without `out` it
--- returns the tensors instead: {[layer + 1] = {q =, k =, v =, lse =}}.
function Model:capture(o)
  local tokens = tokens_of(self, o)
  local want = {}
  for _, l in ipairs(o.layers or {}) do want[l] = true end
  local all = o.layers == nil
  local files = {}
  local st <close> = self.c:state(#tokens)
  self.c:forward(tokens, st, function(layer, q, k, v)
    local out, lse = sl.attn.dense(q, k, v, {causal = true})
    if (all or want[layer]) and o.out then
      local path = string.format("%s/%s_layer%d.safetensors", o.out, o.name or "capture", layer)
      sl.save(path, {q = q, k = k, v = v, lse = lse})
      files[#files + 1] = path
    elseif all or want[layer] then
      files[layer + 1] = {q = q, k = k, v = v, lse = lse}
    end
    return out
  end)
  return files
end

--- Length of the common prefix of two id lists after `skip` entries.
function M.common_prefix(a, b, skip)
  local n = 0
  for i = (skip or 0) + 1, math.min(#a, #b) do
    if a[i] ~= b[i] then break end
    n = n + 1
  end
  return n
end

M.Model = Model
return M
