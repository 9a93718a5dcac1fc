"""``ops.gla``: gated linear attention (GLA, RetNet / lightning, HGRN2 and plain linear attention).

    o, final_state = gla(q, k, v, g=None, scale=None, initial_state=None, output_final_state=False,
                         causal=True, backend="auto")

    S_t = exp(g_t)[:, None] * S_{t-1} + k_t^T v_t            # S [K, V] per (batch, head), fp32
    o_t = (scale * q_t) S_t

q, k [B, T, H, K]; v [B, T, H, V]; o [B, T, H, V] in q's dtype. ``g`` is the log decay (<= 0): [B, T, H, K]
(one per key channel, GLA / HGRN2), [B, T, H] (one per head, RetNet / lightning) or None (no decay: linear
attention). ``scale`` defaults to K ** -0.5. initial_state / final_state [B, H, K, V] in fp32 (fp64 for fp64
inputs); final_state is None unless ``output_final_state``.

``causal=False`` is the bidirectional form for encoders: o_t = scale * q_t (S_t + R_t - k_t^T v_t), with S the
forward recurrence above and R_t = exp(g_{t+1}) R_{t+1} + k_t^T v_t the reverse one, so position t sees every
position j with the decay exp(G_t - G_j) (j <= t) or exp(G_j - G_t) (j >= t), G = cumsum g, and itself once.
Without g it is plain linear attention over the whole sequence. It takes no initial or final state.

Backends: ``reference`` (the sequential recurrence, fp32), ``torch`` (chunked, every exponent <= 0: the CPU
default), ``triton`` (chunked forward and backward kernels: the GPU default), ``triton_recurrent`` (a fused
token-by-token kernel with its backward, for decoding: see :func:`decoding_backend`).
"""

from __future__ import annotations

import inspect
import numbers

from .._checks import check_same_device, check_shape, check_tensor
from .._dispatch import (
    define_op,
    recurrent_decoding_backend,
    triton_linear_attention_reason,
    triton_unavailable_reason,
)
from . import reference as _reference
from . import torch as _torch

MAX_TRITON_HEAD_DIM = 256
_SIGNATURE = inspect.signature(_reference.gla)


def _validate(q, k, v, g=None, scale=None, initial_state=None, output_final_state=False, causal=True):
    for name, x in (("q", q), ("k", k), ("v", v)):
        check_tensor("gla", name, x, 4)
    b, t, h, dk = q.shape
    check_shape("gla", "k", k, (b, t, h, dk), "like q, [B, T, H, K]")
    check_shape("gla", "v", v, (b, t, h, None), "[B, T, H, V]")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"gla: q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if t < 1:
        raise ValueError(f"gla: the sequence length (q.shape[1]) must be >= 1, got {t}")
    if g is not None:
        check_tensor("gla", "g", g, (3, 4))
        if g.dim() == 4:
            check_shape("gla", "g", g, (b, t, h, dk), "[B, T, H, K] per key channel, or [B, T, H] per head")
        else:
            check_shape("gla", "g", g, (b, t, h), "[B, T, H] per head, or [B, T, H, K] per key channel")
    if scale is not None and (not isinstance(scale, numbers.Real) or isinstance(scale, bool)):
        raise TypeError(f"gla: scale must be a number or None, got {type(scale).__name__}")
    if not isinstance(causal, bool):
        raise TypeError(f"gla: causal must be a bool, got {type(causal).__name__}")
    if initial_state is not None:
        check_tensor("gla", "initial_state", initial_state, 4)
        check_shape("gla", "initial_state", initial_state, (b, h, dk, v.shape[-1]), "[B, H, K, V]")
    if not causal and (initial_state is not None or output_final_state):
        raise ValueError(
            "gla: causal=False (bidirectional) takes no initial_state and has no output_final_state"
        )
    check_same_device("gla", q=q, k=k, v=v, g=g, initial_state=initial_state)


def _triton_unsupported(*args, **kwargs) -> str | None:
    a = _SIGNATURE.bind(*args, **kwargs).arguments
    if not a.get("causal", True):
        return "the Triton kernels are causal only (use backend='torch' for causal=False)"
    return triton_linear_attention_reason(a["q"], a["v"], MAX_TRITON_HEAD_DIM)


gla = define_op(
    "gla", __doc__, validate=_validate, auto_order={"cuda": ("triton", "torch"), "cpu": ("torch",)}
)
gla.register("reference", _reference.gla, description="sequential recurrence in fp32")
gla.register("torch", _torch.gla, description="chunked PyTorch, exponents kept <= 0")
gla.register_lazy(
    "triton",
    ".gla.triton",
    "chunk_gla",
    unavailable=triton_unavailable_reason,
    unsupported=_triton_unsupported,
    description="Triton chunked kernels, forward and backward",
)
gla.register_lazy(
    "triton_recurrent",
    ".gla.triton",
    "recurrent_gla",
    unavailable=triton_unavailable_reason,
    unsupported=_triton_unsupported,
    description="Triton fused recurrent kernel (decoding), forward and backward",
)


# decoding_backend(backend, x, n_tokens): the fused recurrent kernel for a few tokens on a GPU.
decoding_backend = recurrent_decoding_backend


__all__ = ["gla", "decoding_backend"]
