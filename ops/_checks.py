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


def check_same_device(op: str, **tensors) -> None:
    devices = {n: t.device for n, t in tensors.items() if isinstance(t, torch.Tensor)}
    if len(set(devices.values())) > 1:
        shown = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"{op}: all tensors must be on one device, got {shown}")
