#!/usr/bin/python3
"""ref_estimators.py - CPU PyTorch ports of seven reference estimators, timed
on the inputs sparselab's estimator bench uses (issue 20, part 3).

Written for this comparison from reading the reference code (estimator part
only, up to the selection; the attention kernels are not ported):
  * vertical_slash: microsoft/MInference minference/modules/minference_forward.py
    vertical_and_slash_kernel (last_q = 64 softmax rows, column sums, top-k
    verticals with the first 30 forced, sum_all_diagonal_matrix, top-k slashes
    with the last 100 forced), called once per head as the reference's forward
    does, plus the index sorts of ops/pit_sparse_flash_attention_v2.py
    vertical_slash_sparse_attention. Its convert_vertical_slash_indexes is a
    CUDA kernel (csrc/vertical_slash_index.cu) with no CPU path: not timed.
  * flexprefill: bytedance/FlexPrefill flex_prefill/ops/flex_prefill_attention.py
    get_active_blocks (with its helpers score_cover_topk, score_cover_idx,
    sum_all_diagonal_matrix, torch_bhn_sumpool, transform_veritcal_slash_idx,
    square_root_js_divergence); triton_bnhd_pool (a Triton kernel) is replaced
    by the same average pool in torch; budgets as flex_prefill_attention
    passes them (ceil(min_budget / block), ceil(max_budget / block)).
  * xattention: mit-han-lab/x-attention xattn/src/Xattention.py xattn_estimate
    on its torch path (use_triton = False, select_mode "inverse", kdb = 1,
    chunk_size as Xattention_prefill picks it) and xattn/src/utils.py
    find_blocks_chunked (mode "prefill", causal); K repeated to the query
    heads (the reference asserts equal head counts).
  Added in session 5 (each port's docstring names the reference file and function):
  * minference_block_sparse: MInference block_sparse_flash_attention.py _build_block_index
    (with block_sparse_attention's q/k padding);
  * pbs_attn: xinghaow99/pbs-attn permute_states.py last_block_attn_sorting, pbs.py
    permuted_block_selection, utils.py block_pooled_attn / select_blocks;
  * prism: xinghaow99/prism prism/prism.py prism_block_estimate (its torch fallback);
  * sparge_attn: thu-ml/SpargeAttn spas_sage_attn/utils.py get_block_map_meansim (its Triton
    pool/similarity, causal-fill and map-fill kernels replaced by torch, the Gram GEMM kept).
  Not ported (no public PyTorch estimator): sample_attention and unisparse (paper only),
  proxy_attn (repository not obtainable here), anchor_attention (Triton kernels only).
Usage: ref_estimators.py DIR [reps] [threads] [wall|cpu] [methods] -- DIR holds q.npy
[Hq, n, d] and k.npy [Hkv, n, d] (float32, sparselab's layout); methods: a comma-separated
subset (default all); prints one JSON object per estimator: {"method", "n", "heads", "ms"
(median), "threads", "torch"}; cpu: process CPU time instead of wall time.
ref_estimators.py --rates: one thread's best OpenBLAS sgemm (2048^2 and 64 x 8192 x 64),
torch.exp and streaming-read rates in process CPU time (the floors' denominators).
"""
import json
import math
import sys
import time

import numpy as np
import torch


# ---- MInference: vertical_and_slash_kernel ---------------------------------

def _mi_sum_all_diagonal_matrix(mat):
    b, h, n, m = mat.shape
    zero_mat = torch.zeros((b, h, n, n))
    mat_padded = torch.cat((zero_mat, mat, zero_mat), -1)
    mat_strided = mat_padded.as_strided((1, 1, n, n + m), (1, n * (2 * n + m), 2 * n + m + 1, 1))
    sum_diags = torch.sum(mat_strided, 2)
    return sum_diags[:, :, 1:]


def minference_vs(q, k, vertical_size=1000, slash_size=6096):
    """q [1, Hq, n, d], k [1, Hq, n, d] (repeated) -> per head (v_idx, s_idx)."""
    q_len, head_dim = q.shape[2], q.shape[3]
    last_q = min(64, q_len)
    ar = torch.arange(64)
    mask = ar[None, None, :, None] >= ar[None, None, None, :]
    out = []
    for head in range(q.shape[1]):
        qh, kh = q[:, head:head + 1], k[:, head:head + 1]
        vs, ss = min(q_len, max(vertical_size, 30)), min(q_len, max(slash_size, 50))
        qk = torch.einsum('bhmk, bhnk -> bhmn', qh[:, :, -last_q:, :], kh) / math.sqrt(head_dim)
        qk[:, :, :, -last_q:] = torch.where(mask[..., -last_q:, -last_q:], qk[:, :, :, -last_q:], -torch.inf)
        qk = torch.nn.functional.softmax(qk, dim=-1, dtype=torch.float32)
        vertical = qk.sum(-2, keepdim=True)
        vertical[..., :30] = torch.inf
        vertical_topk = torch.topk(vertical, vs, -1).indices
        slash = _mi_sum_all_diagonal_matrix(qk)[..., :-last_q + 1]
        slash[..., -100:] = torch.inf
        slash = (q_len - 1) - torch.topk(slash, ss, -1).indices
        v_idx = vertical_topk.to(torch.int32).reshape((1, 1, -1)).sort(dim=-1, descending=False)[0]
        s_idx = slash.to(torch.int32).reshape((1, 1, -1)).sort(dim=-1, descending=True)[0]
        out.append((v_idx, s_idx))
    return out


# ---- FlexPrefill: get_active_blocks -----------------------------------------

def _fp_bhn_sumpool(x, kernel_size):
    b, h, n = x.shape
    x = torch.nn.functional.pad(x, (0, math.ceil(n / kernel_size) * kernel_size - n), value=0)
    return x.view(b, h, -1, kernel_size).sum(-1)


def _fp_bnhd_avgpool(x, kernel_size):
    # stands in for triton_bnhd_pool(x, kernel_size) (avg): [b, n, h, d] -> [b, ceil(n/ks), h, d]
    b, n, h, d = x.shape
    nb = math.ceil(n / kernel_size)
    pad = nb * kernel_size - n
    s = torch.nn.functional.pad(x, (0, 0, 0, 0, 0, pad)).view(b, nb, kernel_size, h, d).sum(2)
    cnt = torch.full((nb,), float(kernel_size))
    cnt[-1] = kernel_size - pad
    return s / cnt[None, :, None, None]


def _fp_score_cover_topk(x, score):
    cumsum_x = torch.cumsum(torch.sort(x, dim=-1, descending=True).values, dim=-1)
    return torch.sum(cumsum_x <= score, dim=-1) + 1


def _fp_score_cover_idx(x, score, padding_value=0):
    x, idx = torch.sort(x, dim=-1, descending=True)
    cumsum_x = torch.cumsum(x, dim=-1)
    idx[cumsum_x > score] = padding_value
    return idx


def _fp_sum_all_diagonal_matrix(mat):
    b, h, n, m = mat.shape
    mat_padded = torch.nn.functional.pad(mat, (n - 1, 0), value=0)
    mat_strided = mat_padded.as_strided((b, h, m, n), (h * n * (n + m - 1), n * (n + m - 1), 1, n + m))
    return torch.sum(mat_strided, -1)


def _fp_transform_vertical_slash_idx(v_idx, s_idx, num_blocks):
    batch_size, num_heads, _ = v_idx.shape
    range_blocks = torch.arange(num_blocks)[None, None, :, None]
    v_idx = (torch.arange(0, num_blocks)[None, None, :, None] * num_blocks + v_idx[:, :, None, :]).view(
        batch_size, num_heads, -1)
    v_idx[v_idx // num_blocks < v_idx % num_blocks] = 0
    s_idx = (range_blocks * num_blocks + range_blocks + s_idx[:, :, None, :] * num_blocks).view(
        batch_size, num_heads, -1)
    s_idx[s_idx >= num_blocks * num_blocks] = 0
    vs_idx = torch.cat((s_idx, v_idx), dim=-1)
    return [[torch.unique(vs_idx[b, h]) for h in range(num_heads)] for b in range(batch_size)]


def _fp_sqrt_jsd(p, q):
    m = (p + q) / 2
    return torch.sqrt(0.5 * (p * torch.log(p / m)).sum(-1) + 0.5 * (q * torch.log(q / m)).sum(-1))


def flexprefill_active_blocks(q, k, block_size=128, gamma=0.9, tau=0.1, min_budget=512, max_budget=2147483647):
    """q [1, n, Hq, d], k [1, n, Hkv, d] (the reference's layout) -> block_idx[b][h]."""
    min_budget, max_budget = math.ceil(min_budget / block_size), math.ceil(max_budget / block_size)
    batch_size, seq_len, num_heads, head_dim = q.shape
    num_share_q_heads = num_heads // k.shape[2]
    num_blocks = math.ceil(seq_len / block_size)
    max_budget = min(max_budget, num_blocks)
    last_q = q[:, -block_size:, :, :] / math.sqrt(head_dim)
    qk = torch.einsum("bihgd, bjhgd -> bhgij",
                      last_q.view(last_q.shape[0], last_q.shape[1], -1, num_share_q_heads, head_dim),
                      k.view(k.shape[0], k.shape[1], -1, 1, head_dim))
    causal_mask = torch.arange(0, block_size)
    causal_mask = (causal_mask[:, None] >= causal_mask[None, :])[None, None, None, ...]
    qk[..., -block_size:].masked_fill_(~causal_mask[..., :block_size, :block_size], float("-inf"))
    qk = torch.nn.functional.softmax(qk, dim=-1, dtype=torch.float32)
    b_, h_, g_, i_, j_ = qk.shape
    qk = qk.reshape(b_, h_ * g_, i_, j_)  # rearrange "b h g i j -> b (h g) i j"
    slash = _fp_sum_all_diagonal_matrix(qk) / qk.shape[-2]
    vertical = qk.mean(-2)
    num_vertical_blocks = _fp_score_cover_topk(vertical, gamma) // 128 + 1
    num_slash_blocks = _fp_score_cover_topk(slash, gamma) // 128 + 1
    num_vertical_blocks[num_vertical_blocks < min_budget] = min_budget
    num_vertical_blocks[num_vertical_blocks > max_budget] = max_budget
    num_slash_blocks[num_slash_blocks < min_budget] = min_budget
    num_slash_blocks[num_slash_blocks > max_budget] = max_budget
    vertical = _fp_bhn_sumpool(vertical, block_size)
    slash = _fp_bhn_sumpool(slash, block_size)
    avg_k = _fp_bnhd_avgpool(k, block_size).repeat_interleave(num_share_q_heads, 2)
    avg_qk = torch.einsum("bihd, bjhd -> bhij", last_q.mean(1, keepdim=True), avg_k).squeeze(2)
    avg_qk = torch.softmax(avg_qk, dim=-1, dtype=torch.float32)
    kl_div = _fp_sqrt_jsd(avg_qk, vertical)
    block_sparse_mask = kl_div < tau
    num_vertical_blocks[block_sparse_mask] = min_budget
    num_slash_blocks[block_sparse_mask] = min_budget
    vertical[..., :1] = torch.inf
    slash[..., -1:] = torch.inf
    num_slash_blocks = num_slash_blocks.view(batch_size * num_heads)
    slash = slash.view(batch_size * num_heads, -1)
    slash_topk = (num_blocks - 1) - slash.topk(min(num_slash_blocks.max().item(), num_blocks), -1).indices
    slash_topk[torch.arange(slash_topk.shape[-1])[None, :] >= num_slash_blocks[:, None]] = 0
    slash_topk = slash_topk.view(batch_size, num_heads, -1)
    num_vertical_blocks = num_vertical_blocks.view(batch_size * num_heads)
    vertical = vertical.view(batch_size * num_heads, -1)
    vertical_topk = vertical.topk(min(num_vertical_blocks.max().item(), num_blocks), -1).indices
    vertical_topk[torch.arange(vertical_topk.shape[-1])[None, :] >= num_vertical_blocks[:, None]] = 0
    vertical_topk = vertical_topk.view(batch_size, num_heads, -1)
    block_idx = _fp_transform_vertical_slash_idx(vertical_topk, slash_topk, num_blocks)
    block_causal_mask = None
    for b, h in block_sparse_mask.nonzero():
        if block_causal_mask is None:
            block_causal_mask = torch.tril(torch.ones(num_blocks, num_blocks, dtype=torch.bool))
        pad_q = math.ceil(seq_len / block_size) * block_size - seq_len
        avg_q = torch.nn.functional.pad(q[b, :, h, :], (0, 0, 0, pad_q), value=0).view(
            num_blocks, block_size, head_dim).mean(1)
        avg_q[-1, :] = avg_q[-1, :] * block_size / (block_size - pad_q)
        attn = torch.einsum("id, jd -> ij", avg_q / math.sqrt(head_dim), avg_k[b, :, h, :]).masked_fill_(
            ~block_causal_mask, float("-inf"))
        attn = torch.softmax(attn, dim=-1, dtype=torch.float32).view(-1)
        block_topk = _fp_score_cover_idx(attn, gamma * num_blocks)
        block_idx[b][h] = torch.unique(torch.cat((block_idx[b][h], block_topk), dim=-1))
    return block_idx, block_sparse_mask


# ---- XAttention: xattn_estimate (torch path) + find_blocks_chunked ----------

def _xa_find_blocks_chunked(input_tensor, current_index, threshold):
    batch_size, head_num, chunk_num, block_num = input_tensor.shape
    input_tensor = input_tensor.to(float)
    total_sum = input_tensor.sum(dim=-1, keepdim=True)
    required_sum = total_sum * threshold
    mask = torch.zeros_like(input_tensor, dtype=torch.bool)
    mask[:, :, :, 0] = 1
    mask[:, :, :, current_index:current_index + chunk_num] = (
        torch.eye(chunk_num).unsqueeze(0).unsqueeze(0).expand(1, head_num, chunk_num, chunk_num))
    other_values = input_tensor.masked_fill(mask, 0)
    sorted_values, _ = torch.sort(other_values, dim=-1, descending=True)
    sorted_values = torch.cat([torch.zeros((batch_size, head_num, chunk_num, 1)),
                               torch.where(mask, input_tensor, 0).sum(dim=-1, keepdim=True),
                               sorted_values[:, :, :, :-2]], dim=-1)
    _, index = torch.sort(torch.where(mask, 100000 * (1 + input_tensor), input_tensor), dim=-1, descending=True)
    cumulative_sum_without_self = torch.cat([torch.zeros((batch_size, head_num, chunk_num, 1)),
                                             sorted_values[:, :, :, 0:-1]], dim=-1).cumsum(dim=-1)
    index_mask = cumulative_sum_without_self < required_sum
    index = torch.where(index_mask, index, 0)
    mask = mask.view(batch_size, head_num * chunk_num, block_num)
    index = index.view(batch_size, head_num * chunk_num, block_num)
    mask[:, torch.arange(mask.shape[1]).unsqueeze(dim=-1), index] = True
    return mask.view(batch_size, head_num, chunk_num, block_num)


def xattn_estimate(query_states, key_states, block_size=128, stride=8, norm=1, threshold=0.9, chunk_size=None):
    """query_states, key_states [1, H, n, d] (K repeated to the query heads) -> (attn_sums, simple_masks)."""
    batch_size, num_kv_head, k_len, head_dim = key_states.shape
    batch_size, num_q_head, q_len, head_dim = query_states.shape
    if chunk_size is None:  # as Xattention_prefill picks it
        chunk_size = int(max(min(max(2048, 1 << (k_len - 1).bit_length()),
                                 128 * 1024 * 2048 // (1 << (k_len - 1).bit_length())), 2048))
    kdb = 1
    k_num_to_pad = ((k_len + chunk_size - 1) // chunk_size) * chunk_size - k_len
    q_num_to_pad = ((q_len + chunk_size - 1) // chunk_size) * chunk_size - q_len
    k_chunk_num = (k_len + k_num_to_pad) // chunk_size
    k_block_num = (k_len + k_num_to_pad) // block_size
    q_chunk_num = (q_len + q_num_to_pad) // chunk_size
    q_block_num = (q_len + q_num_to_pad) // block_size
    offset_token_chunk_num = k_chunk_num - q_chunk_num
    pad_key_states = torch.nn.functional.pad(key_states, (0, 0, 0, k_num_to_pad), value=0) if k_num_to_pad else key_states
    pad_query_states = (torch.nn.functional.pad(query_states, (0, 0, 0, q_num_to_pad), value=0) if q_num_to_pad
                        else query_states)
    reshaped_chunk_size = chunk_size // stride
    reshaped_block_size = block_size // stride
    k_reshaped_num_to_pad = k_num_to_pad // stride
    q_reshaped_num_to_pad = q_num_to_pad // stride
    num_blocks_per_chunk = reshaped_chunk_size // reshaped_block_size
    reshaped_key = torch.cat([(pad_key_states[:, :, k::stride, :]) for k in range(stride)], dim=-1)
    reshaped_query = torch.cat([(pad_query_states[:, :, (stride - 1 - q)::(stride * kdb), :]) for q in range(stride)],
                               dim=-1)
    attn_sum_list, simple_mask_list = [], []
    for chunk_idx in range(q_chunk_num):
        chunked_query = reshaped_query[:, :, (chunk_idx * reshaped_chunk_size) // kdb:
                                       (chunk_idx * reshaped_chunk_size + reshaped_chunk_size) // kdb, :]
        attn_weights_slice = torch.matmul(chunked_query, reshaped_key.transpose(2, 3))
        attn_weights_slice = attn_weights_slice / math.sqrt(head_dim) / stride / norm
        causal_mask = torch.zeros((batch_size, num_q_head, reshaped_chunk_size, reshaped_chunk_size * k_chunk_num))
        if k_reshaped_num_to_pad:
            causal_mask[:, :, :, (-k_reshaped_num_to_pad):] = float("-inf")
        chunk_start = (chunk_idx + offset_token_chunk_num) * reshaped_chunk_size
        chunk_end = chunk_start + reshaped_chunk_size
        causal_mask[:, :, :, chunk_start:chunk_end] = torch.triu(
            torch.ones(1, num_q_head, reshaped_chunk_size, reshaped_chunk_size) * float("-inf"), diagonal=1)
        if chunk_idx == q_chunk_num - 1 and q_reshaped_num_to_pad != 0:
            causal_mask[:, :, (-(q_reshaped_num_to_pad // kdb)):, :] = float("-inf")
        causal_mask[:, :, :, chunk_end:] = float("-inf")
        causal_mask = causal_mask[:, :, kdb - 1::kdb, :]
        attn_weights_slice = attn_weights_slice + causal_mask
        attn_weights_slice = torch.nn.functional.softmax(attn_weights_slice, dim=-1, dtype=torch.float32).to(
            pad_query_states.dtype)
        if chunk_idx == q_chunk_num - 1 and q_reshaped_num_to_pad != 0:
            attn_weights_slice[:, :, (-(q_reshaped_num_to_pad // kdb)):, :] = 0
        attn_sum = attn_weights_slice.view(batch_size, num_kv_head, num_blocks_per_chunk, reshaped_block_size // kdb,
                                           -1, reshaped_block_size).sum(dim=-1).sum(dim=-2)
        simple_mask = _xa_find_blocks_chunked(attn_sum, k_block_num - q_block_num + chunk_idx * num_blocks_per_chunk,
                                              threshold)
        attn_sum_list.append(attn_sum)
        simple_mask_list.append(simple_mask)
    attn_sums = torch.cat(attn_sum_list, dim=-2)
    simple_masks = torch.cat(simple_mask_list, dim=-2)
    simple_masks[:, :, -q_block_num:, -q_block_num:] = torch.where(
        torch.tril(torch.ones(q_block_num, q_block_num, dtype=bool), diagonal=0),
        simple_masks[:, :, -q_block_num:, -q_block_num:], False)
    return attn_sums, simple_masks


# ---- MInference block-sparse: _build_block_index ------------------------------

def minference_block_index(q, k, top_k=100, block=64):
    """Port of microsoft/MInference minference/ops/block_sparse_flash_attention.py
    _build_block_index, with the q/k padding of block_sparse_attention (which pads by a
    whole block when n is a multiple of 64). q, k [1, H, n, d] (K repeated)."""
    n = q.shape[2]
    pad = block - (n & (block - 1))
    qp = torch.nn.functional.pad(q, [0, 0, 0, pad])
    kp = torch.nn.functional.pad(k, [0, 0, 0, pad])
    b, h, ctx, d = qp.shape
    q_pool = qp.reshape(b, h, -1, block, d).mean(-2)
    k_pool = kp.reshape(b, h, -1, block, d).mean(-2)
    rows = torch.arange(q_pool.shape[-2], dtype=torch.int32) * block
    cols = torch.arange(k_pool.shape[-2], dtype=torch.int32) * block
    s = torch.einsum('bhmk, bhnk -> bhmn', q_pool, k_pool)
    s = s.where(rows[None, None, :, None] >= cols[None, None, None, :], torch.tensor(-math.inf))
    kk = min(top_k, ctx // block)
    return torch.topk(s, kk, dim=-1).indices.to(torch.int32).sort(dim=-1).values


# ---- PBS-Attn: last_block_attn_sorting + permuted_block_selection -------------

def pbs_estimate(q, k, block=128, segment=256, threshold=0.9):
    """Port of xinghaow99/pbs-attn: pbs_attn/src/permute_states.py last_block_attn_sorting
    (probe softmax of the last block over the complete segments, mean over the probe rows,
    argsort inside each segment, keys gathered), pbs_attn/src/pbs.py permuted_block_selection
    (segment / causal block mask, first_token_mask) with pbs_attn/src/utils.py
    block_pooled_attn (mean pools, softmax) and select_blocks (sort, cumsum, first crossing).
    The value permutation (step 3 of permuted_block_sparse_attn_fwd) is not timed.
    q, k [1, H, n, d] (K repeated, as the reference's patch does) -> block mask."""
    b, h, n, d = k.shape
    nseg, rem = n // segment, n % segment
    nc = nseg * segment
    probe = q[:, :, -block:, :]
    pr = torch.softmax(torch.matmul(probe, k[:, :, :nc, :].transpose(-1, -2)) / math.sqrt(d), dim=-1,
                       dtype=torch.float32)
    key_score = pr.mean(-2).reshape(b, h, nseg, segment)
    order = torch.argsort(key_score, dim=-1, descending=True)
    kperm = torch.gather(k[:, :, :nc, :].reshape(b, h, nseg, segment, d), 3,
                         order.unsqueeze(-1).expand(-1, -1, -1, -1, d)).reshape(b, h, nc, d)
    kidx = (order + torch.arange(0, nc, segment).view(1, 1, nseg, 1)).reshape(b, h, nc)
    if rem:
        kperm = torch.cat([kperm, k[:, :, nc:, :]], 2)
        kidx = torch.cat([kidx, torch.arange(nc, n).view(1, 1, -1).expand(b, h, -1)], 2)
    pad = (-n) % block
    qq = torch.nn.functional.pad(q, (0, 0, 0, pad)) if pad else q
    if pad:
        kperm = torch.nn.functional.pad(kperm, (0, 0, 0, pad))
        kidx = torch.cat([kidx, torch.arange(n, n + pad).view(1, 1, -1).expand(b, h, -1)], 2)
    nb = (n + pad) // block
    per_seg = segment // block
    qi, ki = torch.arange(nb)[:, None], torch.arange(nb)[None, :]
    seg_mask = (qi // per_seg) == (ki // per_seg)
    allowed = ~seg_mask & (ki <= qi)
    qpool = qq.reshape(b, h, nb, block, d).mean(-2)
    kpool = kperm.reshape(b, h, nb, block, d).mean(-2)
    sc = torch.einsum("bhqd,bhkd->bhqk", qpool, kpool) / math.sqrt(d)
    sc = torch.softmax(sc.masked_fill(~allowed, float("-inf")), dim=-1, dtype=torch.float32)
    sc = torch.nan_to_num(sc, nan=0.0)
    sv, si = torch.sort(sc, dim=-1, descending=True)
    over = torch.cumsum(sv, dim=-1) >= threshold
    first = torch.argmax(over.int(), dim=-1, keepdim=True)
    sel_sorted = (torch.arange(nb).view(1, 1, 1, nb) <= first) & torch.any(over, dim=-1, keepdim=True)
    bm = torch.empty_like(sc, dtype=torch.bool).scatter_(-1, si, sel_sorted)
    bm |= (kidx.view(b, h, -1, block) == 0).any(-1)[:, :, None, :]
    return bm | seg_mask[None, None], kidx


# ---- PRISM: prism_block_estimate (its torch fallback) ---------------------------

def prism_estimate(q, k, block=128, p=0.95, calibrate=True, force_sink=True, force_recent=True):
    """Port of xinghaow99/prism prism/prism.py prism_block_estimate on its torch path
    (USE_TRITON_* off or no CUDA): mean_pool, get_high_freq_components /
    get_low_freq_components (high d/2, low 3d/4: the 64 / 96 of d = 128), energy
    calibration, two band logits (masked, one softmax), top_p_select per band, union, sink and
    recent blocks. q, k [1, H, n, d] (K repeated by repeat_kv, as the forward does)."""
    b, h, n, d = q.shape
    hd, ld = d // 2, 3 * d // 4
    nb = n // block
    qb = q.view(b, h, nb, block, d).mean(-2)
    kb = k.view(b, h, nb, block, d).mean(-2)

    def high(x):
        return torch.cat([x[..., :hd // 2], x[..., d // 2:d // 2 + hd // 2]], -1)

    def low(x):
        return torch.cat([x[..., d // 2 - ld // 2:d // 2], x[..., d - ld // 2:]], -1)

    qh, ql, kh, kl = high(qb), low(qb), high(kb), low(kb)
    if calibrate:
        def rms(x):
            return torch.sqrt(torch.mean(x ** 2, dim=(-2, -1), keepdim=True))
        eps = 1e-6
        th = math.sqrt(hd / d) * (rms(qh) / rms(qb).clamp(min=eps)) * (rms(kh) / rms(kb).clamp(min=eps))
        tl = math.sqrt(ld / d) * (rms(ql) / rms(qb).clamp(min=eps)) * (rms(kl) / rms(kb).clamp(min=eps))
    else:
        th = tl = 1.0
    sh, sl_ = math.sqrt(hd) * th, math.sqrt(ld) * tl
    causal = (torch.arange(nb)[None, :] <= torch.arange(nb)[:, None])[None, None]
    logits = torch.empty((b, h, 2 * nb, nb))
    logits[:, :, :nb] = (torch.einsum("bhqd,bhkd->bhqk", qh, kh) / sh).masked_fill(~causal, float("-inf"))
    logits[:, :, nb:] = (torch.einsum("bhqd,bhkd->bhqk", ql, kl) / sl_).masked_fill(~causal, float("-inf"))
    probs = torch.nan_to_num(torch.softmax(logits, dim=-1, dtype=torch.float32), nan=0.0)
    sv, si = torch.sort(probs, dim=-1, descending=True)
    keep_sorted = (torch.cumsum(sv, dim=-1) - sv) < p
    sel = torch.empty_like(probs, dtype=torch.bool).scatter_(-1, si, keep_sorted)
    mh, ml = sel.split(nb, dim=2)
    bm = mh | ml
    if force_sink:
        bm[:, :, :, 0] = True
    if force_recent:
        r = torch.arange(nb)
        bm[:, :, r, r] = True
    return bm


# ---- SpargeAttn: get_block_map_meansim (Triton kernels replaced by torch) -------

def _sp_pool_sim(x, bs, theta):
    # stands in for triton_bmm_pool_sim_simmean: per block the mean row and whether the mean
    # of its normalised Gram matrix (tl.dot(x, x^T), the kernel's GEMM) exceeds theta
    b, h, n, d = x.shape
    nb = (n + bs - 1) // bs
    pad = nb * bs - n
    xp = torch.nn.functional.pad(x, (0, 0, 0, pad)) if pad else x
    blk = xp.view(b, h, nb, bs, d)
    cnt = torch.full((nb,), float(bs))
    cnt[-1] = bs - pad
    pool = blk.sum(-2) / cnt[None, None, :, None]
    xn = blk / torch.linalg.vector_norm(blk, dim=-1, keepdim=True).clamp(min=1e-30)
    gram = torch.matmul(xn, xn.transpose(-1, -2))
    sim = gram.sum((-2, -1)) / (cnt * cnt)[None, None, :] > theta
    return pool, sim


def sparge_block_map(q, k, bq=128, bk=64, theta=0.6, cdf=0.98):
    """Port of thu-ml/SpargeAttn spas_sage_attn/utils.py get_block_map_meansim (is_causal,
    cdfthreshd rule): get_pool_sim_triton_simmean (a Triton kernel: per-block mean and
    normalised-Gram self-similarity, here torch with the same Gram GEMM),
    fill_causal_mask_triton and fill_block_map_triton (Triton, here torch index ops).
    θ = 0.6, τ = 0.98 as sparselab's recipe defaults. q, k [1, H, n, d] (K repeated)."""
    nq = (q.shape[-2] + bq - 1) // bq
    nk = (k.shape[-2] + bk - 1) // bk
    pq, sq = _sp_pool_sim(q, bq, theta)
    pk, sk = _sp_pool_sim(k, bk, theta)
    skx = sk.unsqueeze(-2).expand(-1, -1, nq, -1)
    sqx = sq.unsqueeze(-1).expand(-1, -1, -1, nk)
    score = pq @ pk.transpose(-1, -2) * q.shape[-1] ** -0.5
    score[~skx] = -torch.inf
    causal = torch.arange(nk)[None, :] < (torch.arange(nq)[:, None] + 1) * (bq / bk)
    score = score.masked_fill(~causal[None, None], -torch.inf).softmax(-1)
    sv, si = torch.sort(score, dim=-1, descending=True)
    c = torch.cumsum(sv, dim=-1)
    b, h, Q, K = c.shape
    num = torch.searchsorted(c, torch.full((b, h, Q, 1), cdf), right=True).squeeze(-1)
    num = num.clamp(min=1)
    fm = torch.zeros_like(score, dtype=torch.bool)
    fm[~skx] = True
    fm[~sqx] = True
    take = torch.arange(K).view(1, 1, 1, K) < num.unsqueeze(-1)
    fm.scatter_(-1, si, take | fm.gather(-1, si))
    fm = fm & causal[None, None]
    return fm


# ---- floor rates: one thread's sgemm, exp and read rates in torch ------------------

def best_ms(reps, f, clock=time.process_time):
    f()
    t = []
    for _ in range(reps):
        t0 = clock()
        f()
        t.append((clock() - t0) * 1e3)
    return min(t)


def rates(reps=5):
    """Best-of-reps process-CPU-time rates on one thread (the floors' denominators)."""
    median_ms = best_ms
    torch.set_num_threads(1)
    out = {}
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    c = torch.empty(2048, 2048)
    ms = median_ms(reps, lambda: [torch.mm(a, b, out=c) for _ in range(3)]) / 3
    out["torch_sgemm_gflops_2048"] = 2 * 2048 ** 3 / ms / 1e6
    qq, kk = torch.randn(64, 64), torch.randn(8192, 64)
    s = torch.empty(64, 8192)
    ms = median_ms(reps, lambda: [torch.mm(qq, kk.t(), out=s) for _ in range(20)])
    out["torch_sgemm_gflops_64x8192x64"] = 20 * 2 * 64 * 8192 * 64 / ms / 1e6
    x = torch.randn(1 << 18) * 4
    y = torch.empty_like(x)
    ms = median_ms(reps, lambda: [torch.exp(x, out=y) for _ in range(40)])
    out["torch_exp_ns"] = ms * 1e6 / (40 * x.numel())
    big = torch.randn(1 << 24)  # 64 MiB
    ms = median_ms(reps, lambda: [big.sum() for _ in range(4)]) / 4
    out["torch_read_gbs"] = big.numel() * 4 / ms / 1e6
    return out


# ---- timing -------------------------------------------------------------------

def median_ms(reps, f, clock=time.perf_counter):
    f()  # warm-up
    t = []
    for _ in range(reps):
        t0 = clock()
        f()
        t.append((clock() - t0) * 1e3)
    t.sort()
    return t[(len(t) - 1) // 2]


def main():
    if sys.argv[1] == "--rates":
        print(json.dumps(dict(rates(), torch=torch.__version__)))
        return
    d = sys.argv[1]
    reps = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    threads = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    # "cpu": process CPU time (steadier than wall time on a time-sliced machine; use with 1 thread)
    clock = time.process_time if len(sys.argv) > 4 and sys.argv[4] == "cpu" else time.perf_counter
    torch.set_num_threads(threads)
    q = torch.from_numpy(np.load(d + "/q.npy"))  # [Hq, n, d]
    k = torch.from_numpy(np.load(d + "/k.npy"))  # [Hkv, n, d]
    hq, n, _ = q.shape
    group = hq // k.shape[0]
    krep = k.repeat_interleave(group, 0)
    q4, k4 = q[None], krep[None]                                    # [1, H, n, d]
    qf, kf = q.permute(1, 0, 2)[None].contiguous(), k.permute(1, 0, 2)[None].contiguous()  # [1, n, H, d]
    cases = [("vertical_slash", lambda: minference_vs(q4, k4)),
             ("flexprefill", lambda: flexprefill_active_blocks(qf, kf)),
             ("xattention", lambda: xattn_estimate(q4, k4)),
             ("minference_block_sparse", lambda: minference_block_index(q4, k4)),
             ("pbs_attn", lambda: pbs_estimate(q4, k4)),
             ("prism", lambda: prism_estimate(q4, k4)),
             ("sparge_attn", lambda: sparge_block_map(q4, k4))]
    only = set(sys.argv[5].split(",")) if len(sys.argv) > 5 and sys.argv[5] else None
    cases = [c for c in cases if only is None or c[0] in only]
    with torch.no_grad():
        for name, f in cases:
            ms = median_ms(reps, f, clock)
            print(json.dumps({"method": name, "n": n, "heads": hq, "ms": ms, "threads": threads,
                              "torch": torch.__version__}))
            sys.stdout.flush()


if __name__ == "__main__":
    main()
