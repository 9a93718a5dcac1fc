"""``ops.delta_rule``: the delta rule (DeltaNet) and its gated form (Gated DeltaNet).

    o, final_state = delta_rule(q, k, v, beta, g=None, scale=None, initial_state=None,
                                output_final_state=False, backend="auto")

    S_t = a_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T      # S [K, V] per (batch, head), fp32
    o_t = (scale * q_t) S_t

that is, in the [V, K] orientation of the papers (M = S^T maps keys to values):
M_t = a_t M_{t-1} (I - beta_t k_t k_t^T) + beta_t v_t k_t^T, o_t = M_t (scale * q_t).

q, k [B, T, H, K]; v [B, T, H, V]; beta [B, T, H], the write strength (values in (0, 2) keep the state
bounded for unit-norm keys; it is not clamped); o [B, T, H, V] in q's dtype. ``g`` is the log decay (<= 0), one
per head: [B, T, H], a_t = exp(g_t) (Gated DeltaNet); None means a_t = 1 (DeltaNet). ``scale`` defaults to
K ** -0.5. initial_state / final_state [B, H, K, V] in fp32 (fp64 for fp64 inputs); final_state is None unless
``output_final_state``. Every tensor input is differentiable (q, k, v, beta, g, initial_state).

The op does not L2-normalise q or k: the mixer does that (the recurrence is stable for unit-norm keys and
beta in (0, 2); other keys are taken as they are).

Backends: ``reference`` (the sequential recurrence, fp32), ``torch`` (chunkwise-parallel with the WY / UT
representation, every exponent <= 0: the CPU default), ``triton`` (the same chunked form in Triton kernels,
forward and backward: the GPU default), ``triton_recurrent`` (a fused token-by-token kernel with its backward,
for decoding: see :func:`decoding_backend`). The Triton backends take fp32/fp16/bf16 and head dims up to 256.
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
_SIGNATURE = inspect.signature(_reference.delta_rule)


def _validate(q, k, v, beta, g=None, scale=None, initial_state=None, output_final_state=False):
    for name, x in (("q", q), ("k", k), ("v", v)):
        check_tensor("delta_rule", name, x, 4)
    b, t, h, dk = q.shape
    check_shape("delta_rule", "k", k, (b, t, h, dk), "like q, [B, T, H, K]")
    check_shape("delta_rule", "v", v, (b, t, h, None), "[B, T, H, V]")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"delta_rule: q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if t < 1:
        raise ValueError(f"delta_rule: the sequence length (q.shape[1]) must be >= 1, got {t}")
    check_tensor("delta_rule", "beta", beta, 3)
    check_shape("delta_rule", "beta", beta, (b, t, h), "[B, T, H], one write strength per head")
    if g is not None:
        check_tensor("delta_rule", "g", g, 3)
        check_shape("delta_rule", "g", g, (b, t, h), "[B, T, H], one log decay per head")
    if scale is not None and (not isinstance(scale, numbers.Real) or isinstance(scale, bool)):
        raise TypeError(f"delta_rule: scale must be a number or None, got {type(scale).__name__}")
    if initial_state is not None:
        check_tensor("delta_rule", "initial_state", initial_state, 4)
        check_shape("delta_rule", "initial_state", initial_state, (b, h, dk, v.shape[-1]), "[B, H, K, V]")
    check_same_device("delta_rule", q=q, k=k, v=v, beta=beta, g=g, initial_state=initial_state)


def _triton_unsupported(*args, **kwargs) -> str | None:
    a = _SIGNATURE.bind(*args, **kwargs).arguments
    return triton_linear_attention_reason(a["q"], a["v"], MAX_TRITON_HEAD_DIM)


delta_rule = define_op(
    "delta_rule", __doc__, validate=_validate, auto_order={"cuda": ("triton", "torch"), "cpu": ("torch",)}
)
delta_rule.register("reference", _reference.delta_rule, description="sequential recurrence in fp32")
delta_rule.register(
    "torch", _torch.delta_rule, description="chunkwise-parallel PyTorch (WY/UT form), exponents kept <= 0"
)

delta_rule.register_lazy(
    "triton",
    ".delta_rule.triton",
    "chunk_delta_rule",
    unavailable=triton_unavailable_reason,
    unsupported=_triton_unsupported,
    description="Triton chunked kernels (WY/UT form), forward and backward",
)
delta_rule.register_lazy(
    "triton_recurrent",
    ".delta_rule.triton",
    "recurrent_delta_rule",
    unavailable=triton_unavailable_reason,
    unsupported=_triton_unsupported,
    description="Triton fused recurrent kernel (decoding), forward and backward",
)


# decoding_backend(backend, x, n_tokens): the fused recurrent kernel for a few tokens on a GPU.
decoding_backend = recurrent_decoding_backend


__all__ = ["delta_rule", "decoding_backend"]
