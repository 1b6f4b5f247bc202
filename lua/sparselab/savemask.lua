-- sparselab.savemask — the executed selection of a method as dense bits, for
-- `sparselab eval --out FILE --save-mask` (issue 20): mask u8 [H, n_q, n_k]
-- with H the query heads, 1 where query i of head h attended key j (the
-- mask carries causality, so this is exactly what the executor computed).
-- A mask of fewer heads (shared by a GQA group, or one for all heads) is
-- repeated over the query heads that use it (head h reads mask head
-- h / (H / H_mask)); a composite mask (block part + gathered columns) is
-- taken through its exact materialize(); dense attention (no mask) is every
-- causal (or every) pair. Above 2^28 elements it refuses in one line.
local sl = require "sparselab"

local M = {}

M.MAX_ELEMENTS = 1 << 28

--- Fails (one line) when a mask of h x n_q x n_k exceeds 2^28 elements.
function M.check(h, n_q, n_k)
  local n = h * n_q * n_k
  if n > M.MAX_ELEMENTS then
    sl.fail("--save-mask: the mask would hold %d x %d x %d = %d elements, above 2^28 (%d); use a smaller problem",
      h, n_q, n_k, n, M.MAX_ELEMENTS)
  end
end

--- u8 tensor [H, n_q, n_k] of the result r of method m (sl.eval's table).
function M.bits(r, m, causal)
  local h, n_q, n_k = r.heads, r.n_q, r.n_k
  M.check(h, n_q, n_k)
  local blk
  if r.selection then return r.selection end   -- a decode replay's executed selection (decode.lua)
  if r.mask == nil then
    if m.id ~= "dense" and not r.dense_run then
      sl.fail("--save-mask: %s returns no selection mask (its executor is not driven by one)", m.id)
    end
    local bq = math.min(64, math.max(1, n_q))
    if causal then
      blk = sl.mask.window(n_k):materialize{n_q = n_q, n_k = n_k, bq = bq, bk = 64}
    else
      local nqb, nkb = (n_q + bq - 1) // bq, (n_k + 63) // 64
      local keep = {}
      for i = 1, nqb do
        keep[i] = {}
        for j = 1, nkb do keep[i][j] = 1 end
      end
      blk = sl.mask.from_blocks(sl.tensor({keep}, "u8"), {n_q = n_q, n_k = n_k, bq = bq, bk = 64, causal = false})
    end
  else
    blk = sl.mask.as_block(r.mask)
    if not blk then sl.fail("--save-mask: %s's mask cannot be written as bits (%s)", m.id, tostring(r.mask)) end
  end
  local info = blk:info()
  local bits = blk:to_bits()
  if info.n_heads == h then return bits end
  if info.n_heads < 1 or h % info.n_heads ~= 0 then
    sl.fail("--save-mask: %s's mask has %d heads for %d query heads", m.id, info.n_heads, h)
  end
  local group = h // info.n_heads
  local per, ms = {}, {}
  for i = 1, info.n_heads do per[i] = sl.mask.from_bits(bits:narrow(1, i, 1), info.bq, info.bk) end
  for i = 1, h do ms[i] = per[(i - 1) // group + 1] end
  local all = sl.mask_c.assign(ms)
  local out = all:to_bits()
  all:close()
  for _, x in ipairs(per) do x:close() end
  return out
end

return M
