-- sparselab.sae — a TopK sparse autoencoder trained on captured activations
-- (issue 17; card k_sparse_autoencoder, step 3 with the step-5 trainer).
--
--   S.train(X, {latents =, k =, steps =, lr =, seed =, relu = true}) -> sae, losses
--     X a tensor [T, d] of activation rows; full-batch Adam on the MSE.
--   S.encode(sae, X [, k]) -> latents tensor [T, h], exactly k nonzero
--     candidates per row (act.topk; with relu the kept negatives become 0)
--   S.decode(sae, Z) -> X^ [T, d]
--   S.fvu(sae, X [, k]) -> fraction of variance unexplained, and the dead share
--   S.grad(sae, X) -> loss, gradients (the manual backward, for the checks)
--
-- Model (openai/sparse_autoencoder model.py Autoencoder + TopK, untied):
-- pre = W_enc (x - b_pre) + b_lat; z = scatter(topk_k(pre)) with ReLU on the
-- kept values; x^ = W_dec z + b_pre; loss = mean over rows of |x - x^|^2.
-- Init: decoder columns random unit vectors, encoder = decoder^T (tied init),
-- b_pre = the data mean (the reference uses the geometric median), b_lat =
-- 0. Backward: through W_dec and the selected encoder rows only (the other
-- latents are zero), the products by mm.act_sparse (the latents and their
-- gradients are k-sparse) and mm.dense. Not done: per-sample normalisation,
-- the k schedule and alpha-k test encoding (card step 2), active-subspace
-- init and effective rank (steps 1, 4), the sparse-attention analysis (6).
local sl = require "sparselab"

local S = {}

local function transpose(t)
  local out = {}
  for j = 1, #t[1] do
    local r = {}
    for i = 1, #t do r[i] = t[i][j] end
    out[j] = r
  end
  return out
end

local function add_bias(rows, b, sign)
  for _, r in ipairs(rows) do for j = 1, #r do r[j] = r[j] + (sign or 1) * b[j] end end
  return rows
end

local function col_sums(rows)
  local s = {}
  for j = 1, #rows[1] do s[j] = 0 end
  for _, r in ipairs(rows) do for j, v in ipairs(r) do s[j] = s[j] + v end end
  return s
end

local function new_sae(X, h, k, seed, relu)
  local x = X:totable()
  local d = #x[1]
  local g = sl.randn({d, h}, {seed = seed}):totable()
  for j = 1, h do
    local n = 0
    for i = 1, d do n = n + g[i][j] ^ 2 end
    n = math.sqrt(n)
    for i = 1, d do g[i][j] = g[i][j] / n end
  end
  local mean = col_sums(x)
  for j = 1, d do mean[j] = mean[j] / #x end
  local b_lat = {}
  for j = 1, h do b_lat[j] = 0 end
  return {W_dec = g, W_enc = transpose(g), b_pre = mean, b_lat = b_lat, k = k, relu = relu ~= false, d = d, h = h}
end

function S.encode(sae, X, k)
  local xc = add_bias(X:totable(), sae.b_pre, -1)
  local pre = add_bias(sl.mm.dense(sl.tensor(xc), sl.tensor(sae.W_enc)):totable(), sae.b_lat)
  local z = sl.act.topk(sl.tensor(pre), {k = k or sae.k, abs = false}):totable()
  if sae.relu then for _, r in ipairs(z) do for j, v in ipairs(r) do if v < 0 then r[j] = 0 end end end end
  return sl.tensor(z), xc
end

function S.decode(sae, Z)
  return sl.tensor(add_bias(sl.mm.dense(Z, sl.tensor(sae.W_dec)):totable(), sae.b_pre))
end

--- loss and gradients {W_enc, W_dec, b_pre, b_lat} (Lua tables)
function S.grad(sae, X)
  local Z, xc = S.encode(sae, X)
  local xh = S.decode(sae, Z):totable()
  local x = X:totable()
  local T, loss = #x, 0
  local e = {}
  for i = 1, T do
    local r = {}
    for j = 1, sae.d do
      local v = xh[i][j] - x[i][j]
      loss = loss + v * v
      r[j] = 2 * v / T
    end
    e[i] = r
  end
  loss = loss / T
  local z = Z:totable()
  local et = sl.tensor(e)
  -- W_dec [d, h]: dX^^T Z
  local gWdec = sl.mm.act_sparse(sl.tensor(transpose(e)), Z):totable()
  -- dZ = dX^ W_dec, only where a latent is active
  local dz = sl.mm.act_sparse(et, sl.tensor(sae.W_dec)):totable()
  for i, r in ipairs(dz) do for j = 1, sae.h do if z[i][j] == 0 then r[j] = 0 end end end
  local dzt = sl.tensor(dz)
  local gWenc = sl.mm.act_sparse(sl.tensor(transpose(dz)), sl.tensor(xc)):totable() -- [h, d]
  local gblat = col_sums(dz)
  local back = col_sums(sl.mm.act_sparse(dzt, sl.tensor(sae.W_enc)):totable())
  local gbpre = col_sums(e)
  for j = 1, sae.d do gbpre[j] = gbpre[j] - back[j] end
  return loss, {W_enc = gWenc, W_dec = gWdec, b_pre = gbpre, b_lat = gblat}
end

local function adam_step(p, g, st, lr, t)
  local b1, b2, eps = 0.9, 0.999, 1e-8
  local c1, c2 = 1 - b1 ^ t, 1 - b2 ^ t
  local function upd(pv, gv, m, v, key)
    m[key] = b1 * (m[key] or 0) + (1 - b1) * gv
    v[key] = b2 * (v[key] or 0) + (1 - b2) * gv * gv
    return pv - lr * (m[key] / c1) / (math.sqrt(v[key] / c2) + eps)
  end
  for name, gp in pairs(g) do
    st[name] = st[name] or {m = {}, v = {}}
    local m, v, par = st[name].m, st[name].v, p[name]
    if type(gp[1]) == "table" then
      local w = #gp[1]
      for i, row in ipairs(gp) do
        for j, gv in ipairs(row) do par[i][j] = upd(par[i][j], gv, m, v, (i - 1) * w + j) end
      end
    else
      for j, gv in ipairs(gp) do par[j] = upd(par[j], gv, m, v, j) end
    end
  end
end

function S.train(X, o)
  o = o or {}
  local sae = new_sae(X, o.latents or 256, o.k or 16, o.seed or 1, o.relu)
  local losses, st = {}, {}
  for t = 1, o.steps or 100 do
    local loss, g = S.grad(sae, X)
    losses[t] = loss
    adam_step(sae, g, st, o.lr or 1e-3, t)
  end
  return sae, losses
end

--- fraction of variance unexplained on X, and the share of latents never active
function S.fvu(sae, X, k)
  local Z = S.encode(sae, X, k)
  local xh, x, z = S.decode(sae, Z):totable(), X:totable(), Z:totable()
  local mean = col_sums(x)
  for j = 1, #mean do mean[j] = mean[j] / #x end
  local num, den = 0, 0
  for i = 1, #x do for j = 1, #x[i] do
    num = num + (x[i][j] - xh[i][j]) ^ 2
    den = den + (x[i][j] - mean[j]) ^ 2
  end end
  local alive = {}
  for _, r in ipairs(z) do for j, v in ipairs(r) do if v ~= 0 then alive[j] = true end end end
  local n_alive = 0
  for _ in pairs(alive) do n_alive = n_alive + 1 end
  return num / den, 1 - n_alive / sae.h
end

return S
