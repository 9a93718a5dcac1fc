"""``ops.linear_scan``: a diagonal (per-channel) linear recurrence, forward or reverse in time.

    h, final_state = linear_scan(a, x, initial_state=None, output_final_state=False, reverse=False,
                                 backend="auto")

    h_t = a_t * h_{t-1} + x_t            t = 1..T, h_0 = initial_state (zeros when None)
    reverse=True:  h_t = a_t * h_{t+1} + x_t, scanning from the end, h_{T+1} = initial_state

a, x [B, T, D] (T >= 1; fp32, fp16 or bf16, possibly different); h [B, T, D] in their promoted dtype;
initial_state [B, D]; final_state [B, D] in fp32 (the last state the scan reaches: h_T, or h_1 when
``reverse``), None unless ``output_final_state``. The recurrence accumulates in fp32 whatever the input
dtype. Differentiable in a, x and initial_state. This is the core of RG-LRU (Griffin), HGRN and any diagonal
linear RNN; ``reverse`` gives the backward half of a bidirectional one.

Complex recurrences (a diagonal complex SSM such as S4D or selective_scan with a complex A): a and/or x may
be complex64 (complex128 in fp64 tests); h and the final state are then complex64 (complex128), and
initial_state may be real or complex. A complex initial_state needs a complex a or x. Gradients follow
PyTorch's convention for complex autograd (the conjugate Wirtinger derivative). Complex runs on ``reference``
and ``torch`` only; ``triton`` and ``cuda`` refuse it (``auto`` then picks ``torch``).

Backends: ``reference`` (the step-by-step loop, fp64 inside), ``torch`` (blocked scan in ~2 sqrt(T) vectorised
steps, exact for any real or complex a; the CPU default), ``triton`` (tiled forward and backward kernels; the
GPU default), ``cuda`` (``csrc/linear_scan.cu``, compiled by nvcc on first use).
"""

from __future__ import annotations

import torch as _pt  # not `torch`: that name is this package's torch.py backend

from .._checks import check_same_device, check_shape, check_tensor, no_float64
from .._cuda_binding import csrc_unavailable
from .._dispatch import define_op, triton_unavailable_reason
from .._spec import BenchGrid, OpSpec
from . import reference as _reference
from . import torch as _torch


def _validate(a, x, initial_state=None, output_final_state=False, reverse=False):
    check_tensor("linear_scan", "a", a, 3, complex_ok=True)
    check_tensor("linear_scan", "x", x, 3, complex_ok=True)
    if a.shape != x.shape:
        raise ValueError(
            f"linear_scan: a and x must have the same shape [B, T, D], "
            f"got a {tuple(a.shape)} and x {tuple(x.shape)}"
        )
    b, t, d = x.shape
    if t < 1:
        raise ValueError(
            f"linear_scan: x must have at least one time step (T >= 1), got shape {tuple(x.shape)}"
        )
    if initial_state is not None:
        check_tensor("linear_scan", "initial_state", initial_state, 2, complex_ok=True)
        check_shape("linear_scan", "initial_state", initial_state, (b, d), "[B, D]")
        if initial_state.is_complex() and not (a.is_complex() or x.is_complex()):
            # h takes the dtype of a and x: a real scan has nowhere to keep the imaginary part.
            raise TypeError(
                f"linear_scan: initial_state is {initial_state.dtype} but a ({a.dtype}) and x ({x.dtype}) are "
                "real; a complex initial_state needs a complex a or x"
            )
    for name, flag in (("output_final_state", output_final_state), ("reverse", reverse)):
        if not isinstance(flag, bool):
            raise TypeError(f"linear_scan: {name} must be a bool, got {type(flag).__name__}")
    check_same_device("linear_scan", a=a, x=x, initial_state=initial_state)


def _real_low_precision_only(a, x, initial_state=None, *args, **kwargs) -> str | None:
    """Why the triton and cuda kernels cannot take these inputs: they scan real fp32/fp16/bf16 only."""
    tensors = [t for t in (a, x, initial_state) if t is not None]
    if any(t.is_complex() for t in tensors):
        return "takes real a, x and initial_state; complex ones run on the reference and torch backends"
    return no_float64(*tensors)


def _example(s: dict, draw) -> dict:
    """Decays as RG-LRU makes them (a per-channel base in [0.9, 0.999] raised to 8 r_t, r_t a gate); strong: exp of
    log decays down to -20; weak: a = 1 - 1e-6 with a state far larger than x (a h rounds alike at every step)."""
    shape = draw.shape("a")
    if draw.regime == "strong":
        a = _pt.exp(draw("a", "log_decay", "fp32"))
    elif draw.regime == "weak":
        a = _pt.full(shape, 1 - 1e-6, device=draw.device)
    else:
        base = _pt.empty(shape[-1], device=draw.device).uniform_(0.9, 0.999)
        a = base ** (8 * _pt.sigmoid(_pt.randn(shape, device=draw.device)))
    weak = draw.regime == "weak"
    return dict(
        x=draw("x") * (0.1 if weak else 1) + (1 if weak else 0),
        a=a.to(draw.dtype),
        initial_state=draw("initial_state", dtype="fp32") * (1e3 if weak else 1),
        output_final_state=True,
        reverse=s.get("reverse", False),
    )


SPEC = OpSpec(
    # x first: the checks name x for a size of 0 (a and x must match: a change to either names both).
    shapes={"x": "B T D", "a": "B T D", "initial_state": "B D"},
    make=_example,
    sizes={"B": 2, "T": 5, "D": 3},
    bench=BenchGrid(
        cpu={"B": 2, "D": 256},
        t=(1024, 2048, 4096, 8192),
        quick={"B": 1, "D": 256},
        cuda={"D": 2048},
        tokens=32768,
    ),
    nonempty=("T",),
    references={},
    states=(1,),
    state_arg="initial_state",
    returns_state_flag="output_final_state",
    extreme={"B": 1, "D": 4, "regime": "strong"},
    audit={"": {"B": 1, "T": 4096, "D": 2, "regime": "weak"}},
)

linear_scan = define_op(
    "linear_scan",
    __doc__,
    validate=_validate,
    spec=SPEC,
    # Triton first on a GPU: it needs no compiler beyond the package, while the cuda backend builds with nvcc
    # on first use (and is there to be chosen by name, or when Triton is missing).
    auto_order={"cuda": ("triton", "cuda", "torch"), "cpu": ("torch",)},
)
linear_scan.register("reference", _reference.linear_scan, description="step-by-step loop, fp64 inside")
linear_scan.register(
    "torch",
    _torch.linear_scan,
    description="blocked scan, ~2 sqrt(T) vectorised steps (packed: one pass)",
    varlen=True,
)
linear_scan.register_lazy(
    "triton",
    ".linear_scan.triton",
    "linear_scan",
    unavailable=triton_unavailable_reason,
    unsupported=_real_low_precision_only,
    description="Triton kernels (tiled scan), forward and backward",
)
linear_scan.register_lazy(
    "cuda",
    ".linear_scan.cuda",
    "linear_scan",
    unavailable=csrc_unavailable,
    unsupported=_real_low_precision_only,
    description="csrc/linear_scan.cu through ctypes, forward and backward",
)

__all__ = ["linear_scan"]
