"""Binding of ``csrc/linear_scan.cu`` (the ``cuda`` backend of ``ops.linear_scan``) through ctypes.

    h_t = a_t * h_{t-1} + x_t          (reverse=True: h_t = a_t * h_{t+1} + x_t)

Shapes: a, x [B, T, D]; h [B, T, D] in their promoted dtype; initial / final state [B, D] fp32.

The library is compiled by nvcc for the current GPU the first time this backend runs (``load_library``);
nothing here is imported or built before that. a and x are cast to one dtype (the kernels take one), passed
with their element strides, and the outputs are allocated by torch; the launchers enqueue on torch's current
stream and return a cudaError_t, raised here as a RuntimeError with CUDA's message.
"""

from __future__ import annotations

import ctypes

import torch

from .._cuda_binding import check_launch, launcher, pointer, stream_handle

LIBRARY = "linear_scan"
_FWD_ARGTYPES = [ctypes.c_void_p] * 5 + [ctypes.c_int64] * 9 + [ctypes.c_int, ctypes.c_void_p]
_BWD_ARGTYPES = [ctypes.c_void_p] * 8 + [ctypes.c_int64] * 12 + [ctypes.c_int, ctypes.c_void_p]


def _function(kind: str, dtype: torch.dtype):
    return launcher(LIBRARY, "linear_scan", kind, dtype, _FWD_ARGTYPES if kind == "fwd" else _BWD_ARGTYPES)


def _check(status: int, what: str) -> None:
    check_launch(status, "linear_scan", what)


class _LinearScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, x, initial_state, reverse):
        dtype = torch.promote_types(a.dtype, x.dtype)
        a_k, x_k = a.to(dtype), x.to(dtype)
        b, t, d = x.shape
        h = torch.empty(b, t, d, device=x.device, dtype=dtype)
        final = torch.empty(b, d, device=x.device, dtype=torch.float32)
        h0 = None if initial_state is None else initial_state.float().contiguous()
        with torch.cuda.device(x.device):
            status = _function("fwd", dtype)(
                pointer(a_k),
                pointer(x_k),
                pointer(h0),
                pointer(h),
                pointer(final),
                b,
                t,
                d,
                *a_k.stride(),
                *x_k.stride(),
                int(reverse),
                stream_handle(x.device),
            )
        _check(status, "forward")
        ctx.save_for_backward(a_k, h, h0)
        ctx.reverse = reverse
        ctx.dtypes = (a.dtype, x.dtype, None if initial_state is None else initial_state.dtype)
        return h, final

    @staticmethod
    def backward(ctx, dh, dfinal):
        a, h, h0 = ctx.saved_tensors
        a_dtype, x_dtype, h0_dtype = ctx.dtypes
        b, t, d = h.shape
        dh = torch.zeros_like(h) if dh is None else dh.to(h.dtype)
        dfinal = None if dfinal is None else dfinal.float().contiguous()
        da = torch.empty(b, t, d, device=h.device, dtype=h.dtype)
        dx = torch.empty(b, t, d, device=h.device, dtype=h.dtype)
        dh0 = (
            torch.empty(b, d, device=h.device, dtype=torch.float32)
            if h0 is not None and ctx.needs_input_grad[2]
            else None
        )
        with torch.cuda.device(h.device):
            status = _function("bwd", h.dtype)(
                pointer(a),
                pointer(h),
                pointer(h0),
                pointer(dh),
                pointer(dfinal),
                pointer(da),
                pointer(dx),
                pointer(dh0),
                b,
                t,
                d,
                *a.stride(),
                *h.stride(),
                *dh.stride(),
                int(ctx.reverse),
                stream_handle(h.device),
            )
        _check(status, "backward")
        return da.to(a_dtype), dx.to(x_dtype), None if dh0 is None else dh0.to(h0_dtype), None


def linear_scan(a, x, initial_state=None, output_final_state=False, reverse=False):
    h, final = _LinearScan.apply(a, x, initial_state, bool(reverse))
    return h, (final if output_final_state else None)
