"""``ops.attention``: softmax attention, causal or not, sliding window, GQA/MQA.

    o = attention(q, k, v, causal=True, window=None, scale=None, backend="auto")

q [B, Tq, H, D], k [B, Tk, Hk, D], v [B, Tk, Hk, Dv] with H a multiple of Hk; o [B, Tq, H, Dv].
Queries are the last Tq of the Tk positions (so decoding passes one query against the whole cache).
``window=W`` keeps the W most recent positions (causal) or |i - j| < W (non-causal). ``scale`` defaults
to D ** -0.5.

Backends: ``reference`` (explicit softmax, computed in fp64 inside), ``torch`` (SDPA), ``flash`` (flash-attn,
when installed, CUDA fp16/bf16). ``auto`` takes flash on a GPU when it can, else SDPA.

With ``cu_seqlens`` (packed documents) q, k and v hold the same documents, Tq = Tk = T, and each document attends
only to itself (causal / window inside it); ``torch`` batches documents of similar lengths into one SDPA call,
``flash`` runs flash-attn's varlen kernel.
"""

from __future__ import annotations

from .._checks import check_bool, check_same_device, check_tensor
from .._dispatch import define_op, package_available
from .._spec import BenchGrid, OpSpec
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


def _example(s: dict, draw) -> dict:
    """Queries over S keys of G heads (GQA when G < H). Regimes: "strong" and "large_logits" scale q and k (a
    peaked softmax, logits ~1e2), "value_offset" shifts v by 1e3 (the softmax backward cancels in fp32)."""
    scale = {"strong": 3.0, "large_logits": 10.0}.get(draw.regime, 1.0)
    v = draw("v") * (3.0 if draw.regime == "strong" else 1.0)
    if draw.regime == "value_offset":
        v = v + 1e3
    return dict(q=draw("q") * scale, k=draw("k") * scale, v=v, causal=True, window=None, scale=None)


SPEC = OpSpec(
    shapes={"q": "B T H D", "k": "B S G D", "v": "B S G E"},
    make=_example,
    sizes={"B": 2, "T": 5, "H": 2, "D": 4},
    # Keys as long as the queries, as many heads, values as wide as keys unless a call says otherwise.
    defaults={"S": "T", "G": "H", "E": "D"},
    bench=BenchGrid(cpu={"B": 2, "H": 4, "D": 64}, cuda={"H": 16, "D": 64}),
    same_dtype=("q", "k", "v"),
    packed_args=("q", "k", "v"),  # self-attention: keys and values packed as the queries
    # O(T^2) on a CPU: 18 s at T = 65,536 (tests/test_extreme_inputs.py runs the full length as exhaustive).
    extreme={"B": 1, "T": 8192, "H": 1, "D": 8, "regime": "strong"},
    audit={
        "large_logits": {"B": 1, "T": 64, "H": 2, "D": 32, "regime": "large_logits"},
        "value_offset": {"B": 1, "T": 64, "H": 2, "D": 32, "regime": "value_offset"},
    },
)

attention = define_op(
    "attention",
    __doc__,
    validate=_validate,
    spec=SPEC,
    auto_order={"cuda": ("flash", "torch"), "cpu": ("torch",)},
)
attention.register("reference", _reference.attention, description="explicit softmax, fp64 inside")
attention.register(
    "torch",
    _torch.attention,
    description="torch scaled_dot_product_attention (packed: documents batched by length)",
    varlen=True,
)
attention.register_lazy(
    "flash",
    ".attention.ext_flash_attn",
    "attention",
    devices=("cuda",),
    unavailable=lambda device: None if package_available("flash_attn") else "flash-attn is not installed",
    unsupported=lambda *a, **k: __import__(__name__ + ".ext_flash_attn", fromlist=["x"]).unsupported(*a, **k),
    description="flash-attn (optional package; packed: flash_attn_varlen_func)",
    varlen=True,
)

__all__ = ["attention"]
