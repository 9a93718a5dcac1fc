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

Backends: ``reference`` (the sequential recurrence, computed in fp64 inside), ``torch`` (chunkwise-parallel
with the WY / UT representation, every exponent <= 0: the CPU default), ``triton`` (the same chunked form in
Triton kernels, forward and backward: the GPU default), ``triton_recurrent`` (a fused token-by-token kernel
with its backward: what :data:`delta_rule_step` takes for a few tokens on a GPU). The Triton backends take
fp32/fp16/bf16 and head dims up to 256.

Decoding: :data:`delta_rule_step` (below) carries the state from one segment to the next.
"""

from __future__ import annotations

import inspect
import numbers

from .._checks import check_bool, check_nonempty, check_same_device, check_shape, check_tensor
from .._dispatch import (
    RECURRENT_MAX_T,
    define_op,
    define_step_op,
    triton_linear_attention_reason,
    triton_unavailable_reason,
)
from ..gla import LINEAR_ATTENTION_SHAPES
from ..gla import SPEC as _GLA_SPEC
from . import reference as _reference
from . import torch as _torch

MAX_TRITON_HEAD_DIM = 256
_SIGNATURE = inspect.signature(_reference.delta_rule)


def _check_args(op, q, k, v, beta, g=None, scale=None, initial_state=None, output_final_state=False):
    for name, x in (("q", q), ("k", k), ("v", v)):
        check_tensor(op, name, x, 4)
    b, t, h, dk = q.shape
    check_shape(op, "k", k, (b, t, h, dk), "like q, [B, T, H, K]")
    check_shape(op, "v", v, (b, t, h, None), "[B, T, H, V]")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"{op}: q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if t < 1:
        raise ValueError(f"{op}: the sequence length (q.shape[1]) must be >= 1, got {t}")
    # A head size of 0 (K or V) has no state to carry, and scale = K ** -0.5 would divide by zero.
    check_nonempty(op, "q", q, "[B, T, H, K]")
    check_nonempty(op, "v", v, "[B, T, H, V]")
    check_bool(op, "output_final_state", output_final_state)
    check_tensor(op, "beta", beta, 3)
    check_shape(op, "beta", beta, (b, t, h), "[B, T, H], one write strength per head")
    if g is not None:
        check_tensor(op, "g", g, 3)
        check_shape(op, "g", g, (b, t, h), "[B, T, H], one log decay per head")
    if scale is not None and (not isinstance(scale, numbers.Real) or isinstance(scale, bool)):
        raise TypeError(f"{op}: scale must be a number or None, got {type(scale).__name__}")
    if initial_state is not None:
        check_tensor(op, "initial_state", initial_state, 4)
        check_shape(op, "initial_state", initial_state, (b, h, dk, v.shape[-1]), "[B, H, K, V]")
    check_same_device(op, q=q, k=k, v=v, beta=beta, g=g, initial_state=initial_state)


def _validate(*args, **kwargs):
    _check_args("delta_rule", *args, **kwargs)


def _validate_step(q, k, v, beta, g=None, scale=None, initial_state=None):
    _check_args("delta_rule_step", q, k, v, beta, g, scale, initial_state, True)


def _triton_unsupported(*args, **kwargs) -> str | None:
    a = _SIGNATURE.bind(*args, **kwargs).arguments
    return triton_linear_attention_reason(a["q"], a["v"], MAX_TRITON_HEAD_DIM)


def _example(s: dict, draw) -> dict:
    """As DeltaNet's layer makes them: L2-normalised q and k, beta = sigmoid of a projection; g (Gated DeltaNet:
    one log decay per head) when ``gated``. Weak regime: beta ~ 1e-2 and a decay of -1e-4 at every step."""
    regime = draw.regime
    beta = draw("beta", "uniform") * (1e-2 if regime == "weak" else 1)
    state = draw("initial_state", dtype="fp32") * (10 if regime == "weak" else 1)
    return dict(
        q=draw("q", "normal" if regime == "strong" else "unit"),
        k=draw("k", "unit"),
        v=draw("v"),
        beta=beta,
        g=draw("g", "log_decay", "fp32") if s["gated"] else None,
        scale=None,
        initial_state=state,
        output_final_state=True,
    )


delta_rule = define_op(
    "delta_rule",
    __doc__,
    validate=_validate,
    auto_order={"cuda": ("triton", "torch"), "cpu": ("torch",)},
    spec=_GLA_SPEC.derive(
        shapes={**LINEAR_ATTENTION_SHAPES, "beta": "B T H", "g": "B T H"},
        make=_example,
        sizes={"B": 2, "T": 5, "H": 2, "K": 4, "V": 3, "gated": True},
        # DeltaNet (no decay) and Gated DeltaNet (one log decay per head).
        variants={"": {"gated": False}, "gated_delta_rule": {"gated": True}},
        audit={"": {"T": 256, "B": 1, "H": 2, "K": 8, "V": 8, "regime": "weak"}},
    ),
)
delta_rule.register("reference", _reference.delta_rule, description="sequential recurrence, fp64 inside")
delta_rule.register(
    "torch",
    _torch.delta_rule,
    description="chunkwise-parallel PyTorch (WY/UT form), exponents kept <= 0 (packed: one pass)",
    varlen=True,
)

delta_rule.register_lazy(
    "triton",
    ".delta_rule.triton_chunk",
    "chunk_delta_rule",
    unavailable=triton_unavailable_reason,
    unsupported=_triton_unsupported,
    description="Triton chunked kernels (WY/UT form), forward and backward",
)
delta_rule.register_lazy(
    "triton_recurrent",
    ".delta_rule.triton_recurrent",
    "recurrent_delta_rule",
    unavailable=triton_unavailable_reason,
    unsupported=_triton_unsupported,
    description="Triton fused recurrent kernel (decoding), forward and backward",
)


DELTA_RULE_STEP_DOC = f"""``ops.delta_rule_step``: advance a (Gated) DeltaNet decoding state by T new tokens (T = 1 per
generated token, a prompt in prefill).

    o, final_state = delta_rule_step(q, k, v, beta, g=None, scale=None, initial_state=None, backend="auto")

:data:`delta_rule` from ``initial_state`` (None: zeros) that always returns the state after the last token: the
same shapes, equation and dtypes, every input differentiable. Its backends are delta_rule's, the same
functions; ``auto`` takes on a GPU the fused recurrent kernel (``triton_recurrent``) for up to
RECURRENT_MAX_T = {RECURRENT_MAX_T} tokens and the chunked kernels (``triton``) for a longer segment, and
``torch`` on a CPU. Layers decode through it with their own ``backend``.
"""


delta_rule_step = define_step_op(delta_rule, "delta_rule_step", DELTA_RULE_STEP_DOC, validate=_validate_step)


__all__ = ["delta_rule", "delta_rule_step"]
