"""Attention through PyTorch's scaled_dot_product_attention (fused kernels on CPU and GPU).

SDPA aligns a causal mask top-left when Tq != Tk, while seqzoo aligns queries to the last positions
(decoding with a cache), so an explicit mask is built for every case but the plain square causal one.
"""

from __future__ import annotations

import torch.nn.functional as F

from .reference import attention_mask


def attention(q, k, v, causal=True, window=None, scale=None):
    tq, tk = q.shape[1], k.shape[1]
    # [B, T, H, D] -> [B, H, T, D], the layout SDPA expects.
    qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    gqa = q.shape[2] != k.shape[2]
    if causal and window is None and tq == tk:
        o = F.scaled_dot_product_attention(qt, kt, vt, is_causal=True, scale=scale, enable_gqa=gqa)
    else:
        mask = attention_mask(tq, tk, causal, window, device=q.device)
        o = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask, scale=scale, enable_gqa=gqa)
    return o.transpose(1, 2)
