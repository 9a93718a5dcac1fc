"""``ops.flow_attention``: Flowformer's flow-attention, causal or not, in linear time.

    o = flow_attention(q, k, v, causal=True, backend="auto")

q, k [B, T, H, D] non-negative (the layer applies a sigmoid feature map; the op does not check, as that
would cost a device sync), v [B, T, H, M]; o [B, T, H, M] in the input dtype. The flow normalisers
(incoming/outgoing flows, allocation and competition) rescale q and v, then a linear attention without
decay mixes them (equations in :mod:`.reference`):

    o_i = sigmoid(Î_i) (q_i / I_i) sum_{j<=i} k_j^T (v_j c_j)          (all j when causal=False)

Backends: ``reference`` (the definition, materialising the [B, T, H, D, M] prefix sums causally and the
[B, H, T, T] flow matrix otherwise), ``torch`` (normalisers by prefix sums, then the linear attention without
decay as ``ops.gla(q', k, v', g=None, scale=1, causal=...)`` on gla's torch backend; the CPU default) and
``triton`` (the same normalisers in torch, the linear attention on gla's chunked Triton kernels; causal only,
the GPU default: non-causal it is two matmuls, which ``torch`` runs on the GPU's BLAS). See :mod:`.torch`.

Decoding with a constant-size state (running sums, :mod:`.recurrent`):

    o, state = flow_attention_prefill(q, k, v, state=None, backend="auto")    # q, k [B, T, H, D], v [B, T, H, M]
    o_t, state = flow_attention_step(q_t, k_t, v_t, state, backend="auto")     # q_t, k_t [B, H, D], v_t [B, H, M]

``flow_attention_prefill`` is causal flow-attention over a segment that follows ``state`` (None: the sequence
starts here); backends ``reference`` (the recurrence token by token), ``torch`` (prefix sums and
``ops.gla_step`` on gla's torch backend: the CPU default) and ``triton`` (the same on gla's Triton kernels:
the fused recurrent one for up to 16 tokens, the chunked ones beyond; the GPU default).
``flow_attention_step`` advances one token through the recurrence: backends ``reference`` and ``torch`` (the
recurrence in PyTorch, the default on every device: one token has no faster form) and ``triton`` (one token
through the ``triton`` prefill, gla's fused recurrent kernel). Both return the new state (a dict of running
sums, batch first, see :func:`.recurrent.init_state`) and leave the given one unmodified.
"""

from __future__ import annotations

import functools

import torch as _pt  # not `torch`: that name is this package's torch.py backend

from .._checks import check_same_device, check_tensor
from .._dispatch import define_op, triton_linear_attention_reason, triton_unavailable_reason
from .._spec import BenchGrid, OpSpec
from ..gla import MAX_TRITON_HEAD_DIM as MAX_HEAD_DIM  # the Triton backends run gla's kernels
from . import recurrent as _recurrent
from . import reference as _reference
from . import torch as _torch


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
    if not causal:
        return (
            "gla's Triton kernels are causal only (non-causal flow-attention is two matmuls: backend='torch')"
        )
    return triton_linear_attention_reason(q, v, MAX_HEAD_DIM)


def _example(s: dict, draw) -> dict:
    """q, k through the layer's sigmoid feature map (the op expects non-negative features); regime
    "value_offset": values sharing an offset of 100 (the non-causal sums' gradients cancel in fp32)."""
    v = draw("v") + (100.0 if draw.regime == "value_offset" else 0.0)
    q, k = (_pt.sigmoid(draw(n, dtype="fp32")).to(draw.dtype) for n in ("q", "k"))
    return dict(q=q, k=k, v=v, causal=s.get("causal", True))


_FLOW_SPEC = OpSpec(
    shapes={"q": "B T H D", "k": "B T H D", "v": "B T H M"},
    make=_example,
    sizes={"B": 2, "T": 5, "H": 2, "D": 4, "M": 3},
    defaults={"M": "D"},  # values as wide as the features unless a call says otherwise
    # The same B, H, D as the attention bench (and its GPU grid exactly), so the two tables line up.
    bench=BenchGrid(
        cpu={"B": 2, "H": 4, "D": 64}, t=(1024, 2048, 4096, 8192, 16384), cuda={"H": 16, "D": 64}
    ),
    same_dtype=("q", "k", "v"),
    nonempty=("T",),
    variants={"": {"causal": True}, "flow_attention_noncausal": {"causal": False}},
    extreme={"B": 1, "H": 1, "D": 4},
    audit={
        "value_offset": {
            "B": 1,
            "T": 1024,
            "H": 1,
            "D": 16,
            "M": 8,
            "regime": "value_offset",
            "causal": False,
        }
    },
    kernels_of="gla",
)

flow_attention = define_op(
    "flow_attention",
    __doc__,
    validate=_validate,
    spec=_FLOW_SPEC,
    auto_order={"cuda": ("triton", "torch"), "cpu": ("torch",)},
)
flow_attention.register(
    "reference", _reference.flow_attention, description="the definition, materialised, fp64 inside"
)
flow_attention.register(
    "torch",
    _torch.flow_attention,
    description="prefix-sum normalisers, linear attention by ops.gla (backend torch)",
    varlen=True,  # packed: per-document sums (ops.linear_scan's reset), ops.gla with cu_seqlens
)
flow_attention.register(
    "triton",
    functools.partial(_torch.flow_attention, gla_backend="triton"),
    unavailable=triton_unavailable_reason,
    unsupported=_triton_unsupported,
    description="torch normalisers, linear attention by ops.gla (backend triton, causal)",
)


# -- decoding ------------------------------------------------------------------------------------------------


def _validate_prefill(q, k, v, state=None):
    _recurrent._check_inputs("flow_attention_prefill", q, k, v, 4)
    if q.shape[1] < 1:
        raise ValueError(
            f"flow_attention_prefill: q, k, v need at least one position (T >= 1), got T = {q.shape[1]}"
        )
    if state is not None:
        b, _, h, d = q.shape
        _recurrent._check_state("flow_attention_prefill", state, b, h, d, v.shape[-1])


def _validate_step(q, k, v, state):
    _recurrent._check_inputs("flow_attention_step", q, k, v, 3)
    b, h, d = q.shape
    _recurrent._check_state("flow_attention_step", state, b, h, d, v.shape[-1])


def _triton_prefill_unsupported(q, k, v, state=None):
    return triton_linear_attention_reason(q, v, MAX_HEAD_DIM)


_DECODING = dict(
    variants={"": {}},
    audit={},
    audit_exempt="the running sums of flow_attention's equations, held to its audited reference in "
    "tests/test_flow_attention.py",
)

flow_attention_prefill = define_op(
    "flow_attention_prefill",
    __doc__,
    validate=_validate_prefill,
    spec=_FLOW_SPEC.derive(
        make=lambda s, draw: {**{n: x for n, x in _example(s, draw).items() if n != "causal"}, "state": None},
        extreme=None,  # flow_attention's long run covers the same prefix sums
        states=(1,),
        state_arg="state",
        **_DECODING,
    ),
    auto_order={"cuda": ("triton", "torch"), "cpu": ("torch",)},
)
flow_attention_prefill.register(
    "reference", _recurrent.prefill_by_steps, description="the recurrence, token by token"
)
flow_attention_prefill.register(
    "torch", _recurrent.prefill, description="prefix-sum normalisers, ops.gla_step (backend torch)"
)
flow_attention_prefill.register(
    "triton",
    functools.partial(_recurrent.prefill, gla_backend="triton"),
    unavailable=triton_unavailable_reason,
    unsupported=_triton_prefill_unsupported,
    description="prefix-sum normalisers, ops.gla_step on gla's Triton kernels",
)


def _step_example(s: dict, draw) -> dict:
    """One token after a prefill of T tokens."""
    prefix = _FLOW_SPEC.example(draw.dtype, draw.device, **s)
    _, state = _recurrent.prefill(prefix["q"], prefix["k"], prefix["v"])
    q, k = (_pt.sigmoid(draw(n, dtype="fp32", shape="B H D")).to(draw.dtype) for n in ("q", "k"))
    return dict(q=q, k=k, v=draw("v", shape="B H M"), state=state)


flow_attention_step = define_op(
    "flow_attention_step",
    __doc__,
    validate=_validate_step,
    spec=_FLOW_SPEC.derive(
        shapes={"q": "B H D", "k": "B H D", "v": "B H M"},
        make=_step_example,
        # No bench of its own: its state is a dict of running sums, not a tensor a bench can make at each shape
        # (flow_attention_prefill times the same recurrence over a segment).
        bench=None,
        nonempty=(),
        extreme=None,
        **_DECODING,
    ),
    auto_order={"cuda": ("torch",), "cpu": ("torch",)},
)
flow_attention_step.register("reference", _recurrent.step, description="the recurrence (one token)")
flow_attention_step.register("torch", _recurrent.step, description="the recurrence (one token)")
flow_attention_step.register(
    "triton",
    _recurrent.step_on_gla_triton,
    unavailable=triton_unavailable_reason,
    unsupported=lambda q, k, v, state: triton_linear_attention_reason(q, v, MAX_HEAD_DIM),
    description="one token through the triton prefill (gla's fused recurrent kernel)",
)

__all__ = ["flow_attention", "flow_attention_prefill", "flow_attention_step"]
