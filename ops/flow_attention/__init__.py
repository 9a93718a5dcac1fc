"""``ops.flow_attention``: Flowformer's flow-attention, causal or not, in linear time.

    o = flow_attention(q, k, v, causal=True, backend="auto")

q, k [B, T, H, D] non-negative (the layer applies a sigmoid feature map; the op does not check, as that
would cost a device sync), v [B, T, H, M]; o [B, T, H, M] in the input dtype. The flow normalisers
(incoming/outgoing flows, allocation and competition) rescale q and v, then a linear attention without
decay mixes them (equations in :mod:`.reference`):

    o_i = sigmoid(Î_i) (q_i / I_i) sum_{j<=i} k_j^T (v_j c_j)          (all j when causal=False)

Backends: ``reference`` (the definition, materialising the [B, T, H, D, M] prefix sums causally and the
[B, H, T, T] flow matrix otherwise), ``torch`` (normalisers by prefix sums, chunked causal linear attention
with a hand-written backward; O(T D + D M) memory, the CPU default) and ``triton`` (the same normalisers in
torch, the linear-attention part as Triton kernels forward and backward; the GPU default).

Decoding with a constant-size state (running sums) lives in :mod:`.recurrent`:
``flow_attention_prefill`` and ``flow_attention_step``.
"""

from __future__ import annotations

# Not `import torch`: that name would shadow this package's own `torch` backend module.
from torch import bfloat16, float16, float32

from .._checks import check_same_device, check_tensor
from .._dispatch import define_op, triton_unavailable_reason
from . import reference as _reference
from . import torch as _torch

MAX_HEAD_DIM = 256


def _validate(q, k, v, causal=True):
    for name, x in (("q", q), ("k", k), ("v", v)):
        check_tensor("flow_attention", name, x, 4)
    check_same_device("flow_attention", q=q, k=k, v=v)
    if k.shape != q.shape:
        raise ValueError(
            f"flow_attention: k must have the shape of q {tuple(q.shape)} [B, T, H, D], got {tuple(k.shape)}"
        )
    if v.shape[:3] != q.shape[:3]:
        raise ValueError(
            f"flow_attention: v must have shape [B, T, H, M] with [B, T, H] = {tuple(q.shape[:3])}, "
            f"got {tuple(v.shape)}"
        )
    if q.shape[1] < 1:
        raise ValueError(f"flow_attention: q, k, v need at least one position (T >= 1), got T = {q.shape[1]}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"flow_attention: q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not isinstance(causal, bool):
        raise TypeError(f"flow_attention: causal must be a bool, got {type(causal).__name__}")


def _triton_unsupported(q, k, v, causal=True):
    if q.dtype not in (float32, float16, bfloat16):
        return f"the Triton kernels take fp32/fp16/bf16, got {q.dtype}"
    if q.shape[-1] > MAX_HEAD_DIM or v.shape[-1] > MAX_HEAD_DIM:
        return (
            f"the Triton kernels take head sizes up to {MAX_HEAD_DIM}, got D={q.shape[-1]}, M={v.shape[-1]}"
        )
    return None


flow_attention = define_op(
    "flow_attention",
    __doc__,
    validate=_validate,
    auto_order={"cuda": ("triton", "torch"), "cpu": ("torch",)},
)
flow_attention.register(
    "reference", _reference.flow_attention, description="the definition, materialised, fp32"
)
flow_attention.register(
    "torch",
    _torch.flow_attention,
    description="prefix-sum normalisers, chunked linear attention, O(T D) memory",
)
flow_attention.register_lazy(
    "triton",
    ".flow_attention.triton",
    "flow_attention",
    unavailable=triton_unavailable_reason,
    unsupported=_triton_unsupported,
    description="torch normalisers, Triton chunked linear attention forward and backward",
)

__all__ = ["flow_attention"]
