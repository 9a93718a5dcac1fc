"""Attention through flash-attn (optional package, CUDA, fp16/bf16). Same function as the reference:
flash-attn aligns causal masks bottom-right and handles GQA/MQA natively; a window W maps to
window_size=(W - 1, 0) (causal) or (W - 1, W - 1)."""

from __future__ import annotations


def attention(q, k, v, causal=True, window=None, scale=None):
    from flash_attn import flash_attn_func

    if window is None:
        window_size = (-1, -1)
    else:
        window_size = (window - 1, 0) if causal else (window - 1, window - 1)
    return flash_attn_func(q, k, v, softmax_scale=scale, causal=causal, window_size=window_size)


def unsupported(q, k, v, causal=True, window=None, scale=None):
    import torch

    if q.dtype not in (torch.float16, torch.bfloat16):
        return f"flash-attn takes fp16/bf16, got {q.dtype}"
    if q.shape[-1] != v.shape[-1] or q.shape[-1] > 256:
        return "flash-attn needs equal q/v head sizes up to 256"
    if q.shape[1] > k.shape[1] and causal:
        return "more queries than keys"
    return None
