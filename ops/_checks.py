"""Argument checks shared by the ops: errors name the argument, what was expected and what was given."""

from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
# Taken only where an op says so (``complex_ok=True``): complex A in selective_scan, complex a/x in linear_scan.
COMPLEX_DTYPES = (torch.complex64, torch.complex128)


def check_tensor(
    op: str,
    name: str,
    x,
    ndim: int | tuple[int, ...],
    *,
    floating: bool = True,
    complex_ok: bool = False,
) -> None:
    """x is a tensor with one of the ``ndim`` dimensions and (``floating``) a float dtype, or also complex64 /
    complex128 when ``complex_ok``."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(x).__name__}")
    dims = (ndim,) if isinstance(ndim, int) else ndim
    if x.dim() not in dims:
        want = " or ".join(str(d) for d in dims)
        raise ValueError(f"{op}: {name} must have {want} dimensions, got shape {tuple(x.shape)}")
    if floating and x.dtype not in FLOAT_DTYPES and not (complex_ok and x.dtype in COMPLEX_DTYPES):
        allowed = (
            "float32, float16, bfloat16, complex64 or complex128"
            if complex_ok
            else "float32, float16 or bfloat16"
        )
        raise TypeError(f"{op}: {name} must be {allowed}, got {x.dtype}")


def check_shape(op: str, name: str, x: torch.Tensor, expected: tuple, what: str = "") -> None:
    """``expected`` may hold None for a free dimension."""
    ok = x.dim() == len(expected) and all(e is None or e == s for e, s in zip(expected, x.shape))
    if not ok:
        shown = tuple("*" if e is None else e for e in expected)
        extra = f" ({what})" if what else ""
        raise ValueError(f"{op}: {name} must have shape {shown}{extra}, got {tuple(x.shape)}")


def check_nonempty(op: str, name: str, x: torch.Tensor, what: str = "") -> None:
    """No dimension of x is 0 (for ops whose kernels cannot take an empty tensor: FFTs, blocked scans)."""
    if x.numel() == 0:
        extra = f" {what}" if what else ""
        raise ValueError(f"{op}: {name}{extra} must have no dimension of size 0, got shape {tuple(x.shape)}")


def check_bool(op: str, name: str, value) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{op}: {name} must be a bool, got {value!r}")


def check_float64_all_or_none(op: str, **tensors) -> None:
    """Either every tensor given (None skipped) is float64 or none is: for ops that compute in fp64 for fp64
    inputs and in fp32 for any mix of fp32/fp16/bf16 ones. The error names both sides."""
    given = {n: t for n, t in tensors.items() if isinstance(t, torch.Tensor)}
    wide = [n for n, t in given.items() if t.dtype == torch.float64]
    if wide and len(wide) < len(given):
        narrow = ", ".join(f"{n} is {t.dtype}" for n, t in given.items() if t.dtype != torch.float64)
        raise TypeError(
            f"{op}: float64 inputs need every input in float64; {', '.join(wide)} float64 but {narrow}"
        )


def check_same_device(op: str, **tensors) -> None:
    devices = {n: t.device for n, t in tensors.items() if isinstance(t, torch.Tensor)}
    if len(set(devices.values())) > 1:
        shown = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"{op}: all tensors must be on one device, got {shown}")


def no_float64(*args, **kwargs) -> str | None:
    """Why a backend that computes in fp32 at most cannot take these arguments: one of them is a float64
    tensor; None when none is. Takes an op's arguments as they come, so it serves as ``unsupported=`` itself
    (``foo.register_lazy("triton", ..., unsupported=no_float64)``) or inside a longer check."""
    if any(isinstance(t, torch.Tensor) and t.dtype == torch.float64 for t in (*args, *kwargs.values())):
        return "takes fp32/fp16/bf16 inputs, not float64"
    return None
