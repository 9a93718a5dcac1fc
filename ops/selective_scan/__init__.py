"""``ops.selective_scan``: Mamba's selective state space scan (S6), and its one-token decoding step.

    y, final_state = selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                                    initial_state=None, output_final_state=False, backend="auto")

    dt_t = softplus(delta_t + delta_bias) if delta_softplus else delta_t + delta_bias
    h_t  = exp(dt_t A) * h_{t-1} + dt_t u_t B_t            (per channel d and state n)
    y_t  = <h_t, C_t> + D u_t ;   y_t *= silu(z_t) when z is given

u, delta, z [B, T, D] (T >= 1); A [D, N] real (N <= 256; Mamba keeps A < 0); B, C [B, T, N], or [B, T, G, N]
with G dividing D (channel d reads group d // (D/G)); D, delta_bias [D]; initial_state and final_state
[B, D, N] fp32; y [B, T, D] in u's dtype. Inputs fp32, fp16 or bf16 (fp64 on reference/torch); the state
accumulates in fp32. Differentiable in every tensor argument.

Complex A (an option, mamba-ssm's ``selective_scan_ref`` convention; e.g. S4D-Lin, A = -1/2 + i pi n):
A complex64 [D, N] (complex128 for fp64 tests), Re A < 0. The state is complex, each state standing for
itself and its conjugate pair, so the readout doubles the real part:

    h_t = exp(dt_t A) * h_{t-1} + dt_t u_t B_t   (complex)      y_t = 2 Re<h_t, C_t> + D u_t

B and C may be real or complex (same shapes); u, delta, z, D, delta_bias stay real. initial_state and
final_state are complex64 [B, D, N] (complex128 for fp64 inputs); a real initial_state is accepted and taken
with a zero imaginary part. A complex B, C or initial_state with a real A is a TypeError naming it. Complex A
runs on ``reference`` and ``torch``; ``triton`` and ``cuda`` refuse it (``auto`` then picks ``torch``).

    y, new_state = selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None,
                                          dt_softplus=False, backend="auto")

one step of the same recurrence for decoding: state [B, D, N], x, dt, z [B, D], B, C [B, N] or [B, G, N];
returns y [B, D] and the next state (fp32; the input state is not modified). With a complex A, as above: the
next state is complex, B, C and state real or complex.

Backends: ``reference`` (the step-by-step loop, fp64 inside), ``torch`` (the D*N recurrences as one blocked
chunked scan; the CPU default), ``triton`` (chunked scan kernels, forward and a backward that recomputes
states from chunk-boundary checkpoints; the GPU default), ``cuda`` (``csrc/selective_scan.cu``).
"""

from __future__ import annotations

import torch as _pt  # not `torch`: that name is this package's torch.py backend

from .._checks import check_nonempty, check_same_device, check_shape, check_tensor, no_float64
from .._cuda_binding import csrc_unavailable
from .._dispatch import define_op, triton_unavailable_reason
from .._spec import BenchGrid, OpSpec
from . import reference as _reference
from . import step as _step
from . import torch as _torch

MAX_D_STATE = 256


def _check_complex_with_A(op, name, x, A):
    """B, C and the state may be complex only with a complex A (a real scan has no imaginary part to keep)."""
    if x.is_complex() and not A.is_complex():
        raise TypeError(
            f"{op}: {name} is {x.dtype} but A is real ({A.dtype}); a complex {name} needs a complex A [D, N]"
        )


def _check_bc(op, name, x, b, t, d, A):
    """B or C: [B, T, N] or [B, T, G, N] (t None: the decoding step's [B, N] / [B, G, N]); N is A's."""
    lead = (b,) if t is None else (b, t)
    n_expected = A.shape[1]
    check_tensor(op, name, x, (len(lead) + 1, len(lead) + 2), complex_ok=True)
    _check_complex_with_A(op, name, x, A)
    if tuple(x.shape[: len(lead)]) != lead:
        raise ValueError(f"{op}: {name} must have leading dimensions {lead}, got shape {tuple(x.shape)}")
    if x.dim() == len(lead) + 2:
        g = x.shape[len(lead)]
        if g < 1 or d % g:
            raise ValueError(f"{op}: {name} has {g} groups, which must divide D={d} (shape {tuple(x.shape)})")
    if x.shape[-1] != n_expected:
        raise ValueError(f"{op}: {name} must have last dimension N={n_expected} (A's), got {tuple(x.shape)}")


def _check_common(op, A, D, bias, bias_name, d, flag_name, flag):
    check_tensor(op, "A", A, 2, complex_ok=True)
    if A.shape[0] != d:
        raise ValueError(f"{op}: A must have shape [D={d}, N], got {tuple(A.shape)}")
    if not 1 <= A.shape[1] <= MAX_D_STATE:
        raise ValueError(f"{op}: A's d_state N must be in 1..{MAX_D_STATE}, got {A.shape[1]}")
    for name, v in (("D", D), (bias_name, bias)):
        if v is not None:
            check_tensor(op, name, v, 1)
            check_shape(op, name, v, (d,), "[D]")
    if not isinstance(flag, bool):
        raise TypeError(f"{op}: {flag_name} must be a bool, got {type(flag).__name__}")


def _validate(
    u,
    delta,
    A,
    B,
    C,
    D=None,
    z=None,
    delta_bias=None,
    delta_softplus=False,
    initial_state=None,
    output_final_state=False,
):
    op = "selective_scan"
    check_tensor(op, "u", u, 3)
    b, t, d = u.shape
    if t < 1:
        raise ValueError(f"{op}: u must have at least one time step (T >= 1), got shape {tuple(u.shape)}")
    check_nonempty(op, "u", u, "[B, T, D]")
    check_tensor(op, "delta", delta, 3)
    check_shape(op, "delta", delta, (b, t, d), "[B, T, D] like u")
    if z is not None:
        check_tensor(op, "z", z, 3)
        check_shape(op, "z", z, (b, t, d), "[B, T, D] like u")
    _check_common(op, A, D, delta_bias, "delta_bias", d, "delta_softplus", delta_softplus)
    n = A.shape[1]
    _check_bc(op, "B", B, b, t, d, A)
    _check_bc(op, "C", C, b, t, d, A)
    if initial_state is not None:
        # Real or complex with a complex A (a real one is promoted), real with a real A.
        check_tensor(op, "initial_state", initial_state, 3, complex_ok=True)
        check_shape(op, "initial_state", initial_state, (b, d, n), "[B, D, N]")
        _check_complex_with_A(op, "initial_state", initial_state, A)
    if not isinstance(output_final_state, bool):
        raise TypeError(f"{op}: output_final_state must be a bool, got {type(output_final_state).__name__}")
    check_same_device(
        op, u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias, initial_state=initial_state
    )


def _validate_step(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False):
    op = "selective_state_update"
    check_tensor(op, "x", x, 2)
    b, d = x.shape
    check_tensor(op, "dt", dt, 2)
    check_shape(op, "dt", dt, (b, d), "[B, D] like x")
    if z is not None:
        check_tensor(op, "z", z, 2)
        check_shape(op, "z", z, (b, d), "[B, D] like x")
    _check_common(op, A, D, dt_bias, "dt_bias", d, "dt_softplus", dt_softplus)
    n = A.shape[1]
    check_tensor(op, "state", state, 3, complex_ok=True)
    check_shape(op, "state", state, (b, d, n), "[B, D, N]")
    _check_complex_with_A(op, "state", state, A)
    _check_bc(op, "B", B, b, None, d, A)
    _check_bc(op, "C", C, b, None, d, A)
    check_same_device(op, state=state, x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias)


def _real_low_precision_only(*args, **kwargs) -> str | None:
    """Why the triton and cuda kernels cannot take these arguments: a real A, and fp32/fp16/bf16 inputs."""
    tensors = [v for v in (*args, *kwargs.values()) if isinstance(v, _pt.Tensor)]
    # Validation lets B, C and initial_state be complex only with a complex A, so any complex tensor means one.
    if any(v.is_complex() for v in tensors):
        return "takes a real A; complex A runs on the reference and torch backends"
    return no_float64(*tensors)


def _a_matrix(s: dict, draw) -> _pt.Tensor:
    """A [D, N] as the mamba mixer makes it (S4D-Real: -(1..N)); strong: -exp(2 randn) (poles to -3000);
    weak: -(2 rand + 0.1); ``complex``: with an imaginary part."""
    d, n = s["D"], s["N"]
    if draw.regime == "strong":
        A = -_pt.exp(draw("A", dtype="fp32") * 2)
    elif draw.regime == "weak":
        A = -(draw("A", "uniform", "fp32") * 2 + 0.1)
    else:
        A = -_pt.arange(1, n + 1, dtype=_pt.float32, device=draw.device).repeat(d, 1)
    return _pt.complex(A, draw("A", dtype="fp32")) if s.get("complex") else A


def _example(s: dict, draw) -> dict:
    """As the mamba mixer makes them: delta before a softplus with dt's init bias (dt ~ 1e-3..1e-1), a gate z,
    D = 1; B, C shared by all channels unless G groups. Strong: delta 3 randn; weak: dt = 1e-3 (Mamba's dt_min:
    exp(dt A) just below 1, the same at every step) with a state 10x the inputs."""
    import math

    regime = draw.regime
    A = _a_matrix(s, draw)
    bc = "B T G N" if s.get("G") else "B T N"
    dt = _pt.exp(_pt.empty(s["D"], device=draw.device).uniform_(math.log(1e-3), math.log(1e-1)))
    delta = draw("delta") * {"strong": 3.0, "layer": 0.1}.get(regime, 0.0) + (
        1e-3 if regime == "weak" else 0.0
    )
    state = _pt.randn(draw.shape("initial_state"), device=draw.device, dtype=A.dtype)
    return dict(
        u=draw("u"),
        delta=delta,
        A=A,
        B=draw("B", shape=bc),
        C=draw("C", shape=bc),
        D=draw("D", dtype="fp32") if regime != "layer" else _pt.ones(s["D"], device=draw.device),
        z=draw("z"),
        delta_bias=None if regime == "weak" else dt + _pt.log(-_pt.expm1(-dt)),  # softplus^-1(dt)
        delta_softplus=regime != "weak",
        initial_state=state * (10 if regime == "weak" else 1),
        output_final_state=True,
    )


SPEC = OpSpec(
    shapes={
        "u": "B T D",
        "delta": "B T D",
        "A": "D N",
        "B": "B T N",
        "C": "B T N",
        "D": "D",
        "z": "B T D",
        "delta_bias": "D",
        "initial_state": "B D N",
    },
    make=_example,
    sizes={"B": 2, "T": 5, "D": 3, "N": 4},
    bench=BenchGrid(
        cpu={"B": 1, "D": 128, "N": 16},
        quick={"B": 1, "D": 64, "N": 16},
        cuda={"D": 1536, "N": 16},
        cuda_t=(512, 1024, 2048, 4096, 8192),
        cuda_extra=tuple({"B": 4, "T": 2048, "D": 1536, "N": n} for n in (64, 256)),
    ),
    nonempty=("B", "T", "D"),
    states=(1,),
    state_arg="initial_state",
    returns_state_flag="output_final_state",
    extreme={"B": 1, "D": 3, "N": 4, "regime": "strong"},
    audit={
        "": {"B": 1, "T": 256, "D": 4, "N": 8, "regime": "weak"},
        "complex_A": {"B": 1, "T": 256, "D": 4, "N": 8, "regime": "weak", "complex": True},
    },
)

selective_scan = define_op(
    "selective_scan",
    __doc__,
    validate=_validate,
    spec=SPEC,
    # Triton first on a GPU: it needs no compiler beyond the package (the cuda backend builds with nvcc on
    # first use, and is there to be chosen by name or when Triton is missing).
    auto_order={"cuda": ("triton", "cuda", "torch"), "cpu": ("torch",)},
)
selective_scan.register("reference", _reference.selective_scan, description="step-by-step loop, fp64 inside")
selective_scan.register(
    "torch",
    _torch.selective_scan,
    description="the D*N recurrences as one blocked chunked scan (packed: one pass)",
    varlen=True,
)
selective_scan.register_lazy(
    "triton",
    ".selective_scan.triton",
    "selective_scan",
    unavailable=triton_unavailable_reason,
    unsupported=_real_low_precision_only,
    description="Triton chunked scan, forward and backward (states recomputed from chunk checkpoints)",
)
selective_scan.register_lazy(
    "cuda",
    ".selective_scan.cuda",
    "selective_scan",
    unavailable=csrc_unavailable,
    unsupported=_real_low_precision_only,
    description="csrc/selective_scan.cu through ctypes, forward and backward",
)


def _step_example(s: dict, draw) -> dict:
    """One decoding step from a state, with selective_scan's values (A as the mamba mixer makes it)."""
    return dict(
        state=draw("state", dtype="fp32"),
        x=draw("x"),
        dt=draw("dt") * 0.1,
        A=_a_matrix(s, draw),
        B=draw("B"),
        C=draw("C"),
        D=draw("D", dtype="fp32"),
        z=draw("z"),
        dt_bias=draw("dt_bias", dtype="fp32"),
        dt_softplus=True,
    )


selective_state_update = define_op(
    "selective_state_update",
    __doc__,
    validate=_validate_step,
    spec=OpSpec(
        # x first: it fixes B and D for the others (the state is checked against x and A).
        shapes={
            "x": "B D",
            "dt": "B D",
            "A": "D N",
            "state": "B D N",
            "B": "B N",
            "C": "B N",
            "D": "D",
            "z": "B D",
            "dt_bias": "D",
        },
        make=_step_example,
        sizes={"B": 2, "D": 3, "N": 4},
        bench=BenchGrid(cpu={"B": 16, "D": 1536, "N": 16}, t=(1,), quick_t=(1,), cuda_t=(1,), tokens=64),
        states=(1,),
        audit={},
        audit_exempt="its reference is selective_scan's for one token, audited there",
    ),
    auto_order={"cuda": ("torch",), "cpu": ("torch",)},
)
selective_state_update.register(
    "reference", _step.reference_state_update, description="selective_scan's reference run for one token"
)
selective_state_update.register("torch", _step.selective_state_update, description="the one-step update")

__all__ = ["selective_scan", "selective_state_update"]
