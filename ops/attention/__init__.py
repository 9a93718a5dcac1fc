"""``ops.attention``: softmax attention, causal or not, sliding window, GQA/MQA.

    o = attention(q, k, v, causal=True, window=None, scale=None, backend="auto")

q [B, Tq, H, D], k [B, Tk, Hk, D], v [B, Tk, Hk, Dv] with H a multiple of Hk; o [B, Tq, H, Dv].
Queries are the last Tq of the Tk positions (so decoding passes one query against the whole cache).
``window=W`` keeps the W most recent positions (causal) or |i - j| < W (non-causal). ``scale`` defaults
to D ** -0.5.

Backends: ``reference`` (explicit softmax, computed in fp64 inside), ``torch`` (SDPA), ``flash`` (flash-attn,
when installed, CUDA fp16/bf16). ``auto`` takes flash on a GPU when it can, else SDPA.
"""

from __future__ import annotations

from .._checks import check_bool, check_same_device, check_tensor
from .._dispatch import define_op, package_available
from . import reference as _reference
from . import torch as _torch


def _validate(q, k, v, causal=True, window=None, scale=None):
    for name, x in (("q", q), ("k", k), ("v", v)):
        check_tensor("attention", name, x, 4)
    check_bool("attention", "causal", causal)
    if scale is not None and (not isinstance(scale, (int, float)) or isinstance(scale, bool)):
        raise TypeError(f"attention: scale must be a number or None, got {scale!r}")
    check_same_device("attention", q=q, k=k, v=v)
    b, tq, h, d = q.shape
    if k.shape[0] != b or k.shape[3] != d:
        raise ValueError(f"attention: k must have shape [B={b}, Tk, Hk, D={d}], got {tuple(k.shape)}")
    if v.shape[:3] != k.shape[:3]:
        raise ValueError(
            f"attention: v must have shape [B, Tk, Hk, Dv] = {tuple(k.shape[:3])} + [Dv], got {tuple(v.shape)}"
        )
    if h % k.shape[2] != 0:
        raise ValueError(
            f"attention: the number of query heads ({h}) must be a multiple of key/value heads ({k.shape[2]})"
        )
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"attention: q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if causal and tq > k.shape[1]:
        raise ValueError(
            f"attention: causal attention needs Tq <= Tk (queries are the last positions), got {tq} > {k.shape[1]}"
        )
    if window is not None and (not isinstance(window, int) or isinstance(window, bool) or window < 1):
        raise ValueError(f"attention: window must be a positive int or None, got {window!r}")


attention = define_op(
    "attention",
    __doc__,
    validate=_validate,
    auto_order={"cuda": ("flash", "torch"), "cpu": ("torch",)},
)
attention.register("reference", _reference.attention, description="explicit softmax, fp64 inside")
attention.register("torch", _torch.attention, description="torch scaled_dot_product_attention")
attention.register_lazy(
    "flash",
    ".attention.ext_flash_attn",
    "attention",
    devices=("cuda",),
    unavailable=lambda device: None if package_available("flash_attn") else "flash-attn is not installed",
    unsupported=lambda *a, **k: __import__(__name__ + ".ext_flash_attn", fromlist=["x"]).unsupported(*a, **k),
    description="flash-attn (optional package)",
)

__all__ = ["attention"]
