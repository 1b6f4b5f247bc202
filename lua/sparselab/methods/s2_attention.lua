-- Efficient LLM Training and Serving with Heterogeneous Context Sharding
-- among Attention Heads (S2-Attention / DKernel) — card: s2_attention.
-- Card steps implemented:
--   1. block grid of `block` tokens (query block r, key block c);
--   2. local part: 0 <= r - c < local_blocks (the diagonal block included);
--   3. strided part, absolute positions, per KV head h:
--      (c + h·head_step + offset) % vert_stride == 0 with head_step =
--      max(1, vert_stride // Hkv) when head_step = 0 (the default);
--   4. mask = (local ∪ strided) ∩ causal (token-causal inside diagonal
--      blocks); KV heads h >= Hkv - num_dense_heads are dense causal; the
--      pattern is per KV head and shared by that head's query heads (the
--      mask has Hkv heads);
--   6. executor: attn.block_sparse (executor blocks bq/bk are independent of
--      the pattern's `block`; partial blocks carry exact token bits).
--   decode (issue 13): a decode hook over the paged cache — the new query
--      (position n - 1, query block r) of KV head h attends to the key blocks
--      of its pattern's last row: local blocks r - c < local_blocks and the
--      head's strided residue, dense heads everything (page.attend with pages
--      = pattern blocks, one list per KV head); equals the prefill mask's row.
-- Not here: KV-cache eviction (step 5: the blocks a head no longer needs are
-- left out of its reads, not freed — the cache keeps equal lengths per
-- head), the relative ("bidirectional")
-- variant, homo_head (use head_step = vert_stride to give every head the same
-- residue), hybrid dense/S2 layers (use sl.assign.layers, step 7).
-- Unknowns chosen: defaults from the README example (block 64,
-- local_blocks 32, vert_stride 8); num_heads in head_step is the KV heads.
local sl = require "sparselab"
local recipe = require "sparselab.recipe"

local function mask_for(prob, p)
  local hkv = prob.k:shape()[1]
  local step = p.head_step > 0 and p.head_step or math.max(1, p.vert_stride // hkv)
  local items = {}
  for h = 0, hkv - 1 do
    if h >= hkv - p.num_dense_heads then
      items[h + 1] = sl.mask.causal()
    else
      items[h + 1] = sl.mask.window{w = p.local_blocks, block = p.block} +
        sl.mask.strided{stride = p.vert_stride, offset = h * step + p.offset, block = p.block}
    end
  end
  return recipe.materialize(sl.mask.assign(items), prob, p, hkv)
end

-- Decode: the key blocks of KV head h's pattern row for a query at position
-- n - 1 (Lua lists of 0-based block ids per KV head).
local function decode_blocks(n, hkv, p)
  local step = p.head_step > 0 and p.head_step or math.max(1, p.vert_stride // hkv)
  local r = (n - 1) // p.block
  local lists = {}
  for h = 0, hkv - 1 do
    local l = {}
    for c = 0, r do
      local keep = h >= hkv - p.num_dense_heads or r - c < p.local_blocks or
        (c + h * step + p.offset) % p.vert_stride == 0
      if keep then l[#l + 1] = c end
    end
    lists[h + 1] = l
  end
  return lists
end

return {
  id = "s2_attention",
  card = "s2_attention",
  title = "Efficient LLM Training and Serving with Heterogeneous Context Sharding among Attention Heads",
  family = "static-pattern",
  phase = "both",
  causal_only = true,
  summary = "Per-KV-head strided key-block shards (disjoint residues, union covers the context) plus local blocks.",
  knob = "local_blocks",
  params = recipe.block_params{
    local_blocks = {default = 32, min = 1, int = true, doc = "local key blocks including the diagonal block"},
    vert_stride = {default = 8, min = 1, int = true, doc = "stride of the per-head vertical key blocks"},
    block = {default = 64, min = 1, int = true, doc = "tokens per pattern block"},
    head_step = {default = 0, min = 0, int = true, doc = "residue step between KV heads (0: max(1, vert_stride // Hkv))"},
    offset = {default = 0, min = 0, int = true, doc = "head_sliding_offset added to every head's residue"},
    num_dense_heads = {default = 0, min = 0, int = true, doc = "last KV heads that run dense causal"},
  },
  ops = {"attn.block_sparse"},
  checks = {"output and density equal an independent token-level reference", "vert_stride = 1 equals dense",
    "local_blocks >= n_blocks equals dense", "union of the strided shards over heads covers every key block",
    "diagonal block always present"},
  mask = mask_for,
  run = recipe.block_sparse_run(mask_for),
  decode = function(st, ls, step, p)
    local decode = require "sparselab.decode"
    local cache = ls.cache
    local n, hkv = cache:len(), cache:heads()
    local lists = decode.lists_tensor(decode_blocks(n, hkv, p))
    local o, lse = sl.page.attend(step.q, cache:tensor("k"), cache:tensor("v"), lists,
      {page = p.block, n = n, backend = step.backend})
    local _, tokens = decode.pages_read(lists, p.block, n)
    return {o = o, lse = lse, pages = lists,
      stats = {tokens_read = tokens / hkv, density = tokens / (hkv * n), kv_bytes = 8 * cache:head_dim() * tokens}}
  end,
}
