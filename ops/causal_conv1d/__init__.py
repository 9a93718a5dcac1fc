"""``ops.causal_conv1d``: causal depthwise (short) convolution with a decoding state.

    y, final_state = causal_conv1d(x, weight, bias=None, activation=None, initial_state=None,
                                   output_final_state=False, backend="auto")

x [B, T, D]; weight [D, W] with W in 2..8; bias [D]; activation None or "silu";
initial_state / final_state [B, D, W-1] (fp32): the last W-1 inputs, so decoding can continue the
convolution one token at a time. ``final_state`` is None unless ``output_final_state``.

    y_t = act( sum_k weight[:, k] * xp[t + k] + bias ),   xp = [initial_state ; x]

Backends: ``reference`` (F.conv1d in fp32), ``torch`` (shifted multiply-adds, CPU default),
``triton`` (forward and backward kernels, GPU default), ``causal_conv1d`` (Dao-AILab's package when
installed, widths 2 to 4).
"""

from __future__ import annotations

from .._checks import check_bool, check_same_device, check_shape, check_tensor
from .._dispatch import define_op, package_available, triton_unavailable_reason
from .._spec import BenchGrid, OpSpec
from . import reference as _reference
from . import torch as _torch

MAX_WIDTH = 8
ACTIVATIONS = (None, "silu")


def _validate(x, weight, bias=None, activation=None, initial_state=None, output_final_state=False):
    check_tensor("causal_conv1d", "x", x, 3)
    check_tensor("causal_conv1d", "weight", weight, 2)
    b, t, d = x.shape
    if t < 1:
        raise ValueError(f"causal_conv1d: x must hold at least one time step, got shape {tuple(x.shape)}")
    if weight.shape[0] != d:
        raise ValueError(f"causal_conv1d: weight must have shape [D={d}, W], got {tuple(weight.shape)}")
    width = weight.shape[1]
    if not 2 <= width <= MAX_WIDTH:
        raise ValueError(f"causal_conv1d: the width (weight.shape[1]) must be in 2..{MAX_WIDTH}, got {width}")
    if bias is not None:
        check_tensor("causal_conv1d", "bias", bias, 1)
        check_shape("causal_conv1d", "bias", bias, (d,))
    if activation not in ACTIVATIONS:
        raise ValueError(f"causal_conv1d: activation must be one of {ACTIVATIONS}, got {activation!r}")
    if initial_state is not None:
        check_tensor("causal_conv1d", "initial_state", initial_state, 3)
        check_shape("causal_conv1d", "initial_state", initial_state, (b, d, width - 1), "[B, D, W-1]")
    check_bool("causal_conv1d", "output_final_state", output_final_state)
    check_same_device("causal_conv1d", x=x, weight=weight, bias=bias, initial_state=initial_state)


def _example(s: dict, draw) -> dict:
    """A depthwise filter at nn.Conv1d's init scale, a small bias, silu; with the decoding state unless
    ``states`` is False."""
    states = s.get("states", True)
    return dict(
        x=draw("x"),
        weight=draw("weight") * s["W"] ** -0.5,
        bias=draw("bias") * 0.1,
        activation="silu",
        initial_state=draw("initial_state") if states else None,
        output_final_state=states,
    )


SPEC = OpSpec(
    shapes={"x": "B T D", "weight": "D W", "bias": "D", "initial_state": "B D W-1"},
    make=_example,
    sizes={"B": 2, "T": 5, "D": 3, "W": 3},
    bench=BenchGrid(
        cpu={"B": 2, "D": 512, "W": 4},
        quick={"B": 1, "D": 256, "W": 4},
        cuda={"D": 2048, "W": 4},
        tokens=32768,
    ),
    nonempty=("T",),
    states=(1,),
    state_arg="initial_state",
    returns_state_flag="output_final_state",
    extreme={"B": 1, "D": 4, "W": 4},
    audit={},
    audit_exempt="computes in fp32 by design: a sum of W terms (worst measured 1.5e-6 relative)",
)

causal_conv1d = define_op("causal_conv1d", __doc__, validate=_validate, spec=SPEC)
causal_conv1d.register("reference", _reference.causal_conv1d, description="F.conv1d in fp32")
causal_conv1d.register(
    "torch", _torch.causal_conv1d, description="shifted multiply-adds (packed: one pass)", varlen=True
)
causal_conv1d.register_lazy(
    "triton",
    ".causal_conv1d.triton",
    "causal_conv1d",
    unavailable=triton_unavailable_reason,
    description="Triton kernels, forward and backward",
)
causal_conv1d.register_lazy(
    "causal_conv1d",
    ".causal_conv1d.ext_causal_conv1d",
    "causal_conv1d",
    devices=("cuda",),
    unavailable=lambda device: (
        None if package_available("causal_conv1d") else "causal-conv1d is not installed"
    ),
    unsupported=lambda x, weight, *a, **k: (
        None if weight.shape[1] <= 4 else "causal-conv1d supports widths 2 to 4"
    ),
    description="Dao-AILab causal-conv1d (optional package)",
)
causal_conv1d.auto_order = {"cuda": ("triton", "torch"), "cpu": ("torch",)}

__all__ = ["causal_conv1d"]
