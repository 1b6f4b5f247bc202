#!/usr/bin/python3
"""ref_estimators.py - CPU PyTorch ports of three reference estimators, timed
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
Usage: ref_estimators.py DIR [reps] [threads] [wall|cpu] -- DIR holds q.npy [Hq, n, d] and
k.npy [Hkv, n, d] (float32, sparselab's layout); prints one JSON object per
estimator: {"method", "n", "heads", "ms" (median), "threads", "torch"}; cpu:
process CPU time instead of wall time.
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
             ("xattention", lambda: xattn_estimate(q4, k4))]
    with torch.no_grad():
        for name, f in cases:
            ms = median_ms(reps, f, clock)
            print(json.dumps({"method": name, "n": n, "heads": hq, "ms": ms, "threads": threads,
                              "torch": torch.__version__}))
            sys.stdout.flush()


if __name__ == "__main__":
    main()
