-- test_sae.lua — the TopK sparse autoencoder (sparselab.sae; card
-- k_sparse_autoencoder): the manual backward against finite differences,
-- exactly k active latents per row, perfect reconstruction with k = h and an
-- orthonormal tied dictionary, and a small SAE trained on the shipped
-- model's attention writes (o_proj outputs) that reconstructs held-out
-- tokens better than the same dictionary with k random latents.
package.path = "tests/lua/?.lua;" .. package.path
local H = require "harness"
local sl = require "sparselab"
local S = require "sparselab.sae"
local test, near, eq, truthy = H.test, H.near, H.eq, H.truthy

test("manual backward = finite differences (tiny SAE)", function()
  local X = sl.randn({6, 5}, {seed = 3})
  local sae = S.train(X, {latents = 8, k = 3, steps = 3, lr = 1e-2, seed = 2})
  local _, g = S.grad(sae, X)
  local function fd(get, set)
    local v, eps = get(), 1e-2
    set(v + eps); local lp = S.grad(sae, X)
    set(v - eps); local lm = S.grad(sae, X)
    set(v)
    return (lp - lm) / (2 * eps)
  end
  local checks = {
    {g.W_dec[2][3], function() return sae.W_dec[2][3] end, function(v) sae.W_dec[2][3] = v end},
    {g.b_pre[4], function() return sae.b_pre[4] end, function(v) sae.b_pre[4] = v end},
  }
  -- an encoder weight and bias of a latent active somewhere
  local z = S.encode(sae, X):totable()
  local act
  for j = 1, 8 do for i = 1, 6 do if z[i][j] > 0.05 then act = act or j end end end
  checks[#checks + 1] = {g.W_enc[act][1], function() return sae.W_enc[act][1] end, function(v) sae.W_enc[act][1] = v end}
  checks[#checks + 1] = {g.b_lat[act], function() return sae.b_lat[act] end, function(v) sae.b_lat[act] = v end}
  for i, c in ipairs(checks) do
    local num = fd(c[2], c[3])
    truthy(math.abs(num - c[1]) <= 0.03 * math.max(math.abs(num), 1e-2), string.format("check %d: %g vs %g", i, c[1], num))
  end
end)

test("exactly k latents per row (linear); k = h with an orthonormal tied dictionary reconstructs exactly", function()
  local X = sl.randn({10, 6}, {seed = 4})
  local sae = S.train(X, {latents = 12, k = 4, steps = 1, relu = false})
  for _, r in ipairs(S.encode(sae, X):totable()) do
    local nz = 0
    for _, v in ipairs(r) do if v ~= 0 then nz = nz + 1 end end
    eq(nz, 4, "k per row")
  end
  local id, idt, zb = {}, {}, {}
  for i = 1, 6 do id[i], idt[i], zb[i] = {}, {}, 0 for j = 1, 6 do id[i][j] = i == j and 1 or 0; idt[i][j] = id[i][j] end end
  local exact = {W_dec = id, W_enc = idt, b_pre = zb, b_lat = {0, 0, 0, 0, 0, 0}, k = 6, relu = false, d = 6, h = 6}
  near(S.fvu(exact, X), 0, 1e-12, "perfect reconstruction")
end)

test("trained on attention writes of the shipped model: held-out FVU, beats random latents", function()
  local DATA = "experiments/data/tinystories260k"
  local m = sl.model.load(DATA .. "/model.bin")
  local function writes(name)
    local f = assert(io.open(DATA .. "/texts/" .. name .. ".txt", "rb"))
    local ids = m:encode(f:read("a"))
    f:close()
    local out
    local st <close> = m.c:state(#ids)
    m.c:forward(ids, st, nil, function(layer, site, x)
      if layer == 2 and site == "attn_out" then out = sl.mm.dense(x, m.c:weight("layers.2.wo")) end
    end)
    return out
  end
  local train, held = writes("07_toy_shop"), writes("08_rainy_day")
  local sae, losses = S.train(train, {latents = 128, k = 8, steps = 40, lr = 3e-3, seed = 5})
  truthy(losses[#losses] < 0.5 * losses[1], string.format("loss %g -> %g", losses[1], losses[#losses]))
  local fvu, dead = S.fvu(sae, held)
  truthy(fvu < 0.6, "held-out fvu " .. fvu)
  -- score-blind: the same dictionary with k random latents per row
  local Z, xc = S.encode(sae, held)
  local pre = sl.mm.dense(sl.tensor(xc), sl.tensor(sae.W_enc)):totable()
  local r = sl.rand({#pre, 128}, {seed = 9}):totable()
  local pick = sl.act.topk(sl.tensor(r), {k = 8, abs = false}):totable()
  for i, row in ipairs(pick) do for j, v in ipairs(row) do row[j] = v ~= 0 and math.max(pre[i][j] + sae.b_lat[j], 0) or 0 end end
  local xr, x = S.decode(sae, sl.tensor(pick)):totable(), held:totable()
  local xo = S.decode(sae, Z):totable()
  local er, eo = 0, 0
  for i = 1, #x do for j = 1, #x[i] do er = er + (x[i][j] - xr[i][j]) ^ 2; eo = eo + (x[i][j] - xo[i][j]) ^ 2 end end
  truthy(eo < er, string.format("top-k error %g < random-k %g (fvu %.3f, dead %.3f)", eo, er, fvu, dead))
end)

H.done()
