-- sparselab.mask_export — sl.mask.save(mask, "m.safetensors" [, {bits = true}]): a block mask
-- for FlexAttention users (issue 18), in the layout of
-- torch.nn.attention.flex_attention.BlockMask.from_kv_blocks:
--   kv_num_blocks       i32 [1, H, n_qb]        partial kv blocks of each query block (the blocks
--                                               whose pairs are not all kept: mask_mod decides)
--   kv_indices          i32 [1, H, n_qb, n_kb]  per query block: its partial kv blocks ascending,
--                                               then every other kv block ascending (the order of
--                                               a stable descending argsort of the dense block map,
--                                               as BlockMask builds it from a dense map)
--   full_kv_num_blocks  i32 [1, H, n_qb]        full kv blocks (every pair kept: no mask_mod)
--   full_kv_indices     i32 [1, H, n_qb, n_kb]  likewise
--   block_size          i32 [2]                 (Q_BLOCK_SIZE, KV_BLOCK_SIZE) = (bq, bk)
--   seq_lengths         i32 [2]                 (n_q, n_k)
--   bits                u8 [H, n_q, n_k]        the token-level mask (1 = kept), for a mask_mod
--                                               (left out with {bits = false}: n_q·n_k bytes a head)
-- H is the mask's heads (1 for a mask shared by all heads: FlexAttention broadcasts it).
-- In Python:
--   t = safetensors.torch.load_file("m.safetensors", device="cuda")
--   bits = t["bits"].bool()
--   bm = BlockMask.from_kv_blocks(t["kv_num_blocks"], t["kv_indices"], t["full_kv_num_blocks"],
--       t["full_kv_indices"], BLOCK_SIZE=tuple(t["block_size"].tolist()),
--       mask_mod=lambda b, h, q, kv: bits[h, q, kv], seq_lengths=tuple(t["seq_lengths"].tolist()))
-- (FlexAttention's kernels want block sizes that are multiples of 16, typically 128.)
local sl = require "sparselab"

local X = {}

local function read_all(t)
  local n, out = t:shape()[1], {}
  if n == 0 then return out end
  for s = 1, n, 500000 do
    local part = t:narrow(1, s, math.min(500000, n - s + 1)):totable()
    for i = 1, #part do out[#out + 1] = part[i] end
  end
  return out
end

--- The BlockMask arrays of a mask as Lua tables: {kv_num_blocks, kv_indices, full_kv_num_blocks,
--- full_kv_indices} (nested [1][H][n_qb]([n_kb])), and the mask's info.
function X.arrays(mask)
  local m = sl.mask.as_block(mask)
  if not m then sl.fail("sl.mask.save: expected a block mask, found %s", tostring(mask)) end
  local info = m:info()
  local row_ptr, col_idx, part = m:arrays()
  local rp = row_ptr:totable()
  if type(rp[1]) == "number" then rp = {rp} end
  local ci, pa = read_all(col_idx), read_all(part)
  local kvn, kvi, fn, fi = {}, {}, {}, {}
  for h = 1, info.n_heads do
    kvn[h], kvi[h], fn[h], fi[h] = {}, {}, {}, {}
    for r = 1, info.n_qb do
      local partial, full = {}, {}
      for e = rp[h][r] + 1, rp[h][r + 1] do
        if pa[e] < 0 then full[#full + 1] = ci[e] else partial[#partial + 1] = ci[e] end
      end
      -- col_idx is sorted per row; the rest follows in ascending order
      local function order(first)
        local row = {}
        for _, c in ipairs(first) do row[#row + 1] = c end
        local mine = {}
        for _, c in ipairs(first) do mine[c] = true end
        for c = 0, info.n_kb - 1 do if not mine[c] then row[#row + 1] = c end end
        return row
      end
      kvn[h][r], kvi[h][r] = #partial, order(partial)
      fn[h][r], fi[h][r] = #full, order(full)
    end
  end
  row_ptr:close(); col_idx:close(); part:close()
  return {kv_num_blocks = {kvn}, kv_indices = {kvi}, full_kv_num_blocks = {fn}, full_kv_indices = {fi}}, info, m
end

--- Writes the file; see the header. → the info of the mask.
function X.save(mask, path, opts)
  opts = opts or {}
  for k in pairs(opts) do
    if k ~= "bits" then sl.fail("sl.mask.save: unknown option '%s' (expected bits)", tostring(k)) end
  end
  if type(path) ~= "string" or not path:match("%.safetensors$") then
    sl.fail("sl.mask.save: expected a file name ending in .safetensors, found %s", tostring(path))
  end
  local a, info, m = X.arrays(mask)
  local t = {}
  for name, v in pairs(a) do t[name] = sl.tensor(v, "i32") end
  t.block_size = sl.tensor({info.bq, info.bk}, "i32")
  t.seq_lengths = sl.tensor({info.n_q, info.n_k}, "i32")
  if opts.bits ~= false then t.bits = m:to_bits() end
  sl.save(path, t)
  if m ~= mask then m:close() end
  return info
end

return X
