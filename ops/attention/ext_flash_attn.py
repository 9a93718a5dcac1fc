"""Attention through flash-attn (optional package, CUDA, fp16/bf16). Same function as the reference:
flash-attn aligns causal masks bottom-right and handles GQA/MQA natively; a window W maps to
window_size=(W - 1, 0) (causal) or (W - 1, W - 1).

Packed documents (``cu_seqlens``): flash-attn's own varlen kernel, ``flash_attn_varlen_func`` over the row as
[T, H, D] with the same cu_seqlens for queries and keys (self-attention), one launch for every document."""

from __future__ import annotations


def _window_size(causal, window):
    if window is None:
        return (-1, -1)
    return (window - 1, 0) if causal else (window - 1, window - 1)


def attention(q, k, v, causal=True, window=None, scale=None, cu_seqlens=None):
    if cu_seqlens is not None:
        return _packed(q, k, v, causal, window, scale, cu_seqlens)
    from flash_attn import flash_attn_func

    return flash_attn_func(
        q, k, v, softmax_scale=scale, causal=causal, window_size=_window_size(causal, window)
    )


def _packed(q, k, v, causal, window, scale, cu_seqlens):
    import torch
    from flash_attn import flash_attn_varlen_func

    from .torch import check_packed_self_attention

    check_packed_self_attention(q, k)
    cu = cu_seqlens.to(device=q.device, dtype=torch.int32)
    longest = int((cu[1:] - cu[:-1]).max())
    o = flash_attn_varlen_func(
        q[0], k[0], v[0], cu, cu, longest, longest,
        softmax_scale=scale, causal=causal, window_size=_window_size(causal, window),
    )  # fmt: skip
    return o[None]


def unsupported(q, k, v, causal=True, window=None, scale=None):
    import torch

    if q.dtype not in (torch.float16, torch.bfloat16):
        return f"flash-attn takes fp16/bf16, got {q.dtype}"
    if q.shape[-1] != v.shape[-1] or q.shape[-1] > 256:
        return "flash-attn needs equal q/v head sizes up to 256"
    if q.shape[1] > k.shape[1] and causal:
        return "more queries than keys"
    return None
