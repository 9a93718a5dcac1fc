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

Backends: ``reference`` (the sequential recurrence, computed in fp64 inside), ``torch`` (chunked, every
exponent <= 0: the CPU default), ``triton`` (chunked forward and backward kernels, :mod:`.triton_chunk`: the
GPU default), ``triton_recurrent`` (a fused token-by-token kernel with its backward, :mod:`.triton_recurrent`:
what :data:`gla_step` takes for a few tokens on a GPU).

Decoding: :data:`gla_step` (below) carries the state from one segment to the next.
"""

from __future__ import annotations

import inspect
import numbers

import torch as _pt  # not `torch`: that name is this package's torch.py backend

from .._checks import check_bool, check_nonempty, check_same_device, check_shape, check_tensor
from .._dispatch import (
    RECURRENT_MAX_T,
    define_op,
    define_step_op,
    triton_linear_attention_reason,
    triton_unavailable_reason,
)
from .._spec import BenchGrid, OpSpec
from . import reference as _reference
from . import torch as _torch

MAX_TRITON_HEAD_DIM = 256
_SIGNATURE = inspect.signature(_reference.gla)


def _check_args(op, q, k, v, g=None, scale=None, initial_state=None, output_final_state=False, causal=True):
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
    if g is not None:
        check_tensor(op, "g", g, (3, 4))
        if g.dim() == 4:
            check_shape(op, "g", g, (b, t, h, dk), "[B, T, H, K] per key channel, or [B, T, H] per head")
        else:
            check_shape(op, "g", g, (b, t, h), "[B, T, H] per head, or [B, T, H, K] per key channel")
    if scale is not None and (not isinstance(scale, numbers.Real) or isinstance(scale, bool)):
        raise TypeError(f"{op}: scale must be a number or None, got {type(scale).__name__}")
    if not isinstance(causal, bool):
        raise TypeError(f"{op}: causal must be a bool, got {type(causal).__name__}")
    if initial_state is not None:
        check_tensor(op, "initial_state", initial_state, 4)
        check_shape(op, "initial_state", initial_state, (b, h, dk, v.shape[-1]), "[B, H, K, V]")
    if not causal and (initial_state is not None or output_final_state):
        raise ValueError(
            f"{op}: causal=False (bidirectional) takes no initial_state and has no output_final_state"
        )
    check_same_device(op, q=q, k=k, v=v, g=g, initial_state=initial_state)


def _validate(*args, **kwargs):
    _check_args("gla", *args, **kwargs)


def _validate_step(q, k, v, g=None, scale=None, initial_state=None):
    _check_args("gla_step", q, k, v, g, scale, initial_state, True, True)


def _triton_unsupported(*args, **kwargs) -> str | None:
    a = _SIGNATURE.bind(*args, **kwargs).arguments
    if not a.get("causal", True):
        return "the Triton kernels are causal only (use backend='torch' for causal=False)"
    return triton_linear_attention_reason(a["q"], a["v"], MAX_TRITON_HEAD_DIM)


def _example(s: dict, draw) -> dict:
    """q, k, v as projections make them; g per key channel ("vector"), per head ("head") or none; every
    regime of the module docstring of ``ops._spec`` (strong: log decays to -20, weak: -1e-4 at every step)."""
    decay, regime = s["decay"], draw.regime
    g = None
    if decay == "vector":
        g = draw("g", "log_decay", "fp32")
    elif decay == "head" and regime == "layer":
        # RetNet's fixed per-head decays gamma_h = 1 - 2^(-5-h).
        gamma = 1 - 2.0 ** (-5 - _pt.arange(s["H"], device=draw.device, dtype=_pt.float32))
        g = gamma.log().expand(s["B"], s["T"], s["H"]).contiguous()
    elif decay == "head":
        g = draw("g", "log_decay", "fp32", shape="B T H")
    k = draw("k", "unit") if regime == "weak" else draw("k") * (s["K"] ** -0.5 if regime == "strong" else 1)
    state = draw("initial_state", dtype="fp32") * (10 if regime == "weak" else 1)
    return dict(q=draw("q"), k=k, v=draw("v"), g=g, scale=None, initial_state=state, output_final_state=True)


LINEAR_ATTENTION_SHAPES = {
    "q": "B T H K",
    "k": "B T H K",
    "v": "B T H V",
    "g": "B T H K",
    "initial_state": "B H K V",
}

SPEC = OpSpec(
    shapes=LINEAR_ATTENTION_SHAPES,
    make=_example,
    sizes={"B": 2, "T": 5, "H": 2, "K": 4, "V": 3, "decay": "vector"},
    bench=BenchGrid(
        cpu={"B": 1, "H": 4, "K": 64, "V": 64},
        cuda={"H": 16, "K": 64, "V": 64},
        cuda_t=(512, 1024, 2048, 4096, 8192, 16384),
    ),
    same_dtype=("q", "k", "v"),
    nonempty=("T", "K", "V"),
    states=(1,),
    state_arg="initial_state",
    returns_state_flag="output_final_state",
    # Per-channel decays (GLA, HGRN2) and one decay per head (RetNet, lightning): different intra-chunk paths.
    variants={"": {"decay": "vector"}, "gla_head_decay": {"decay": "head"}},
    extreme={"B": 1, "H": 1, "K": 8, "V": 8, "regime": "strong"},
    audit={
        "": {"T": 256, "B": 1, "H": 2, "K": 8, "V": 8, "regime": "weak"},
        "per_head": {"T": 256, "B": 1, "H": 2, "K": 8, "V": 8, "regime": "weak", "decay": "head"},
    },
)

gla = define_op(
    "gla",
    __doc__,
    validate=_validate,
    auto_order={"cuda": ("triton", "torch"), "cpu": ("torch",)},
    spec=SPEC,
)
gla.register("reference", _reference.gla, description="sequential recurrence, fp64 inside")
gla.register(
    "torch", _torch.gla, description="chunked PyTorch, exponents kept <= 0 (packed: one pass)", varlen=True
)
gla.register_lazy(
    "triton",
    ".gla.triton_chunk",
    "chunk_gla",
    unavailable=triton_unavailable_reason,
    unsupported=_triton_unsupported,
    description="Triton chunked kernels, forward and backward",
)
gla.register_lazy(
    "triton_recurrent",
    ".gla.triton_recurrent",
    "recurrent_gla",
    unavailable=triton_unavailable_reason,
    unsupported=_triton_unsupported,
    description="Triton fused recurrent kernel (decoding), forward and backward",
)


GLA_STEP_DOC = f"""``ops.gla_step``: advance a GLA decoding state by T new tokens (T = 1 per generated token, a prompt
in prefill).

    o, final_state = gla_step(q, k, v, g=None, scale=None, initial_state=None, backend="auto")

The causal :data:`gla` from ``initial_state`` (None: zeros) that always returns the state after the last
token: the same shapes, equation and dtypes, every input differentiable. Its backends are gla's, the same
functions; ``auto`` takes on a GPU the fused recurrent kernel (``triton_recurrent``) for up to
RECURRENT_MAX_T = {RECURRENT_MAX_T} tokens (one launch, no chunk padding) and the chunked kernels (``triton``)
for a longer segment, and ``torch`` on a CPU. Layers decode through it with their own ``backend``.
"""


gla_step = define_step_op(gla, "gla_step", GLA_STEP_DOC, validate=_validate_step)


__all__ = ["gla", "gla_step"]
