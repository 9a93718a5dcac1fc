"""Structured state space (S4, S4D) convolution kernels and the long convolution that applies them.

Complex parameters travel as separate real and imaginary tensors. Every SSM has H = d_model channels and keeps
N complex modes, one of each conjugate pair: the state of the real system is the N modes and their conjugates,
so each kernel is real and the state size of the real system is 2N.

    K = s4d_kernel(log_dt, A_re, A_im, B_re, B_im, C_re, C_im, L, discretization="zoh", backend="auto")

        log_dt [H], or [H, N] for one step per mode; A, B, C [H, N] (as *_re, *_im); K [H, L] in fp32 (fp64 for
        fp64 inputs).
        dt = exp(log_dt);  zoh:      Abar = exp(dt A),                    Bbar = (Abar - 1) / A * B
                           bilinear: Abar = (1 + dt A/2) / (1 - dt A/2),  Bbar = dt / (1 - dt A/2) * B
        K[h, l] = 2 Re( sum_n C[h,n] Bbar[h,n] Abar[h,n]^l )      l = 0..L-1
        (the factor 2 Re adds each mode's conjugate; it matches the recurrence
         x_t = Abar x_{t-1} + Bbar u_t,  y_t = 2 Re(sum_n C x_t) exactly). Re(A) < 0 keeps it stable.

    K = s4_kernel(log_dt, Lambda_re, Lambda_im, P_re, P_im, B_re, B_im, C_re, C_im, L, backend="auto")

        The DPLR system of S4 with its conjugate pairs restored: Lambda, P, B, C [H, N] stand for the 2N-vectors
        [v, conj v]; A = diag(Lambda) - sum_r P_r P_r^* (2N x 2N), bilinear discretisation with step dt =
        exp(log_dt). P [H, N] is rank 1; P [R, H, N] rank R (HiPPO-LegT needs 2), the Woodbury identity then
        inverting an R x R matrix per frequency (the triton backend takes rank 1 only and auto picks torch).
        log_dt [H], or [H, N] for one step per mode (``dt_tie=False``): then the system is x' = Delta (A x + B u),
        Delta = diag(dt) (both conjugates of a mode share its dt), discretised bilinearly with unit step, which
        is the tied case when every dt of a channel is equal.
        C is the paper's C~ = C_true (I - Abar^L): the truncated generating function of the kernel at the L-th
        roots of unity is then C~ (I - Abar z)^{-1} Bbar, which Cauchy sums and the Woodbury identity evaluate
        in O(N L); K = irfft of it. K[h, l] = C_true Abar^l Bbar (real), K [H, L].

    y = fft_conv(u, K, D=None, bidirectional=False, backend="auto")

        u [B, T, H]; K [H, L] ([2, H, L] when bidirectional); D [H]; y [B, T, H] in the dtype of u and K promoted
        (sums run in fp32). Taps past L are zero.
        y_t = sum_{s<=t} K[h, t-s] u_s + D u_t
        bidirectional: y_t = sum_{s<=t} K[0, h, t-s] u_s + sum_{s>t} K[1, h, s-t-1] u_s + D u_t

Backends: ``reference`` (materialises every power / the dense matrices / the Toeplitz matrix), ``torch``
(s4d: the Vandermonde product factored over blocks of ~sqrt(L) into one batched complex matmul; s4: Cauchy
+ Woodbury chunked over the frequencies; fft_conv: real FFTs of length 2T), ``triton`` (s4d_kernel: forward and backward Vandermonde kernels with no H x N x L
intermediate; s4_kernel: the Cauchy sums as forward and backward Triton kernels, the O(H L) Woodbury step and
the irfft in PyTorch; fft_conv: the convolution summed directly in tiles, O(T min(L, T)) per channel, forward
and backward; auto prefers cuFFT through torch on a GPU).
"""

from __future__ import annotations

import torch as _pt  # not `torch`: that name is this package's torch.py backend

from .._checks import (
    check_float64_all_or_none,
    check_nonempty,
    check_same_device,
    check_shape,
    check_tensor,
    no_float64,
)
from .._dispatch import define_op, triton_unavailable_reason
from .._spec import BenchGrid, OpSpec
from . import reference as _reference
from . import torch as _torch


def _check_len(op, L):
    if not isinstance(L, int) or isinstance(L, bool) or L < 1:
        raise ValueError(f"{op}: L must be a positive int, got {L!r}")


def _check_params(op, log_dt, named, low_rank=()):
    """log_dt [H] (one step per channel) or [H, N] (one per mode: ``dt_tie=False``); every named tensor [H, N],
    those in ``low_rank`` [H, N] (rank 1) or [R, H, N] (rank R)."""
    check_tensor(op, "log_dt", log_dt, (1, 2))
    h = log_dt.shape[0]
    first = log_dt.shape[1] if log_dt.dim() == 2 else None
    for name, x in named.items():
        if name in low_rank:
            check_tensor(op, name, x, (2, 3))
            if first is None:
                first = x.shape[-1]
            if x.dim() == 3:
                check_shape(op, name, x, (None, h, first), "[R, H, N] (rank R), H = log_dt.shape[0]")
                check_nonempty(op, name, x, "(rank R >= 1)")
                continue
        else:
            check_tensor(op, name, x, 2)
        if first is None:
            first = x.shape[1]
        check_shape(op, name, x, (h, first), "[H, N], H = log_dt.shape[0]")
    if log_dt.dim() == 2:
        check_shape(op, "log_dt", log_dt, (h, first), "[H] or [H, N] (one step per mode)")
    check_same_device(op, log_dt=log_dt, **named)
    # The kernels compute in fp64 for fp64 parameters and in fp32 for any mix of fp32/fp16/bf16 ones (the S4
    # layer keeps C~ in fp32 beside bf16 parameters); fp64 mixed with anything else failed inside torch.
    check_float64_all_or_none(op, log_dt=log_dt, **named)
    check_nonempty(op, "log_dt", log_dt, "[H]")


def _validate_s4d(log_dt, A_re, A_im, B_re, B_im, C_re, C_im, L, discretization="zoh"):
    _check_params(
        "s4d_kernel", log_dt, dict(A_re=A_re, A_im=A_im, B_re=B_re, B_im=B_im, C_re=C_re, C_im=C_im)
    )
    _check_len("s4d_kernel", L)
    if discretization not in ("zoh", "bilinear"):
        raise ValueError(f"s4d_kernel: discretization must be 'zoh' or 'bilinear', got {discretization!r}")


def _validate_s4(log_dt, Lambda_re, Lambda_im, P_re, P_im, B_re, B_im, C_re, C_im, L):
    _check_params(
        "s4_kernel",
        log_dt,
        dict(
            Lambda_re=Lambda_re,
            Lambda_im=Lambda_im,
            P_re=P_re,
            P_im=P_im,
            B_re=B_re,
            B_im=B_im,
            C_re=C_re,
            C_im=C_im,
        ),
        low_rank=("P_re", "P_im"),
    )
    if P_re.shape != P_im.shape:
        raise ValueError(
            f"s4_kernel: P_re and P_im must have the same shape, got {tuple(P_re.shape)} and {tuple(P_im.shape)}"
        )
    _check_len("s4_kernel", L)


def _validate_fft_conv(u, K, D=None, bidirectional=False):
    if not isinstance(bidirectional, bool):
        raise TypeError(f"fft_conv: bidirectional must be a bool, got {type(bidirectional).__name__}")
    check_tensor("fft_conv", "u", u, 3)
    check_nonempty("fft_conv", "u", u, "[B, T, H]")
    h = u.shape[2]
    if bidirectional:
        check_tensor("fft_conv", "K", K, 3)
        check_shape("fft_conv", "K", K, (2, h, None), "[2, H, L] when bidirectional, H = u.shape[2]")
    else:
        check_tensor("fft_conv", "K", K, 2)
        check_shape("fft_conv", "K", K, (h, None), "[H, L], H = u.shape[2]")
    check_nonempty("fft_conv", "K", K, "(the kernel length L)")
    if D is not None:
        check_tensor("fft_conv", "D", D, 1)
        check_shape("fft_conv", "D", D, (h,), "[H]")
    check_same_device("fft_conv", u=u, K=K, D=D)


def _modes(s: dict, draw, names: tuple[str, ...]) -> dict:
    """S4D-Lin / S4-LegS-like parameters for the kernels: Re(A) = -1/2 (strong: -1e3 exp(randn), fast modes),
    Im(A) = pi n, log dt in [log 1e-3, log 1e-1]; the others N(0, 1)."""
    import math

    h, n = s["H"], s["N"]
    out = {"log_dt": (_pt.empty(h, device=draw.device).uniform_(-6.9, -2.3)).to(draw.dtype)}
    for name in names:
        out[f"{name}_re"], out[f"{name}_im"] = draw(f"{name}_re"), draw(f"{name}_im")
    re = (
        -1e3 * _pt.exp(draw(f"{names[0]}_re", dtype="fp32"))
        if draw.regime == "strong"
        else _pt.full((h, n), -0.5)
    )
    out[f"{names[0]}_re"] = re.to(device=draw.device, dtype=draw.dtype)
    out[f"{names[0]}_im"] = (math.pi * _pt.arange(n, device=draw.device)).expand(h, n).to(draw.dtype)
    return out


def _mode_shapes(names: tuple[str, ...]) -> dict[str, str]:
    return {"log_dt": "H", **{f"{n}_{part}": "H N" for n in names for part in ("re", "im")}}


_S4D = ("A", "B", "C")
_S4 = ("Lambda", "P", "B", "C")
_KERNEL_SPEC = dict(
    sizes={"H": 3, "N": 4, "T": 5},
    nonempty=("H",),
    foreign_dtypes=(_pt.float64,),
    extreme={"H": 2, "N": 4, "regime": "strong"},
    audit={},
    audit_exempt="tested against the recurrence in fp64 in tests/test_s4.py",
)

s4d_kernel = define_op(
    "s4d_kernel",
    __doc__,
    validate=_validate_s4d,
    spec=OpSpec(
        shapes=_mode_shapes(_S4D),
        make=lambda s, draw: {
            **_modes(s, draw, _S4D),
            "L": s["T"],  # the kernel's length is the sequence length it convolves
            "discretization": s.get("discretization", "zoh"),
        },
        same_dtype=tuple(_mode_shapes(_S4D)),
        **_KERNEL_SPEC,
    ),
)
s4d_kernel.register("reference", _reference.s4d_kernel, description="every power Abar^l materialised")
s4d_kernel.register("torch", _torch.s4d_kernel, description="Vandermonde product as a blocked complex matmul")
s4d_kernel.register_lazy(
    "triton",
    ".s4.triton",
    "s4d_kernel",
    unavailable=triton_unavailable_reason,
    unsupported=no_float64,
    description="Triton Vandermonde kernels, forward and backward",
)


def _triton_s4_unsupported(*args, **kwargs):
    """The Triton Cauchy kernel sums the four numerators of a rank-1 Woodbury only: rank R > 1 (P [R, H, N])
    goes to torch under ``auto`` and is refused, naming ``rank``, when triton is asked for."""
    P_re = kwargs["P_re"] if "P_re" in kwargs else (args[3] if len(args) > 3 else None)
    if isinstance(P_re, _pt.Tensor) and P_re.dim() == 3 and P_re.shape[0] != 1:
        return f"takes rank 1 only (P [H, N]), got rank {P_re.shape[0]} (P_re shape {tuple(P_re.shape)})"
    return no_float64(*args, **kwargs)


s4_kernel = define_op(
    "s4_kernel",
    __doc__,
    validate=_validate_s4,
    spec=OpSpec(
        shapes=_mode_shapes(_S4),
        make=lambda s, draw: {**_modes(s, draw, _S4), "L": s["T"]},
        same_dtype=tuple(_mode_shapes(_S4)),
        **_KERNEL_SPEC,
    ),
)
s4_kernel.register("reference", _reference.s4_kernel, description="dense DPLR matrices, one product per l")
s4_kernel.register(
    "torch", _torch.s4_kernel, description="Cauchy sums + Woodbury at the roots of unity, irfft"
)
s4_kernel.register_lazy(
    "triton",
    ".s4.triton",
    "s4_kernel",
    unavailable=triton_unavailable_reason,
    unsupported=_triton_s4_unsupported,
    description="Triton Cauchy sums (forward and backward); Woodbury and irfft in PyTorch; rank 1 only",
)


def _fft_conv_example(s: dict, draw) -> dict:
    """A decaying kernel as an SSM makes one, in fp32 (the kernels' dtype) beside the inputs; ``bidirectional``:
    one kernel each way. Strong: a long, slowly decaying one."""
    bidirectional = s.get("bidirectional", False)
    shape = ("2 " if bidirectional else "") + "H L"
    L = draw.shape("K", shape)[-1]
    decay = _pt.exp(-_pt.arange(L, device=draw.device) / (20_000.0 if draw.regime == "strong" else L / 8.0))
    return dict(
        u=draw("u"),
        K=draw("K", dtype="fp32", shape=shape) * decay / L**0.5,
        D=draw("D", dtype="fp32"),
        bidirectional=bidirectional,
    )


fft_conv = define_op(
    "fft_conv",
    __doc__,
    validate=_validate_fft_conv,
    auto_order={"cuda": ("torch",), "cpu": ("torch",)},
    spec=OpSpec(
        shapes={"u": "B T H", "K": "H L", "D": "H"},
        make=_fft_conv_example,
        sizes={"B": 2, "T": 5, "H": 3},
        defaults={"L": "T"},  # a kernel as long as the sequence
        bench=BenchGrid(
            cpu={"B": 2, "H": 256},
            t=(1024, 2048, 4096, 8192),
            cuda={"H": 1024},
            cuda_t=(1024, 4096, 16384),
            tokens=32768,
        ),
        nonempty=("B", "T", "H", "L"),
        extreme={"B": 1, "H": 2, "regime": "strong"},
        audit={},
        audit_exempt="tested against the direct sum in fp64 in tests/test_s4.py and tests/test_extreme_inputs.py",
    ),
)
fft_conv.register("reference", _reference.fft_conv, description="explicit O(T^2) Toeplitz convolution")
fft_conv.register(
    "torch",
    _torch.fft_conv,
    description="real FFTs of length 2T (packed: similar lengths batched)",
    varlen=True,
)
fft_conv.register_lazy(
    "triton",
    ".s4.triton_direct_conv",
    "fft_conv",
    unavailable=triton_unavailable_reason,
    unsupported=no_float64,
    description="direct tiled convolution in Triton (O(T min(L, T))), forward and backward",
)

__all__ = ["s4d_kernel", "s4_kernel", "fft_conv"]
