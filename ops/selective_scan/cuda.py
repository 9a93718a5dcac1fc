"""Binding of ``csrc/selective_scan.cu`` (the ``cuda`` backend of ``ops.selective_scan``) through ctypes.

    h_t = exp(dt_t A) * h_{t-1} + dt_t u_t B_t        y_t = <h_t, C_t> + D u_t,  y *= silu(z)

Shapes: u, delta, z [B, T, D]; A [D, N]; B, C [B, T, N] or [B, T, G, N]; h [B, D, N] fp32.

The kernel computes the scan proper (y_t = <h_t, C_t> and the final state) and its backward; dt = softplus(delta
+ delta_bias), D u and the gate are torch operations around it, so autograd carries their gradients. The
library is compiled by nvcc for the current GPU the first time this backend runs (``load_library``). Tensors
are passed contiguous; B and C are cast to u's dtype (the kernels take one element type); the forward keeps
only chunk-boundary states for the backward. Launch failures raise a RuntimeError with CUDA's message.
"""

from __future__ import annotations

import ctypes

import torch

from .._cuda_binding import check_launch, launcher, pointer, stream_handle
from .pre_post import run_kernel

LIBRARY = "selective_scan"
CHUNK = 64  # steps between the checkpoints the backward recomputes from
_FWD_ARGTYPES = [ctypes.c_void_p] * 9 + [ctypes.c_int64] * 7 + [ctypes.c_void_p]
_BWD_ARGTYPES = [ctypes.c_void_p] * 15 + [ctypes.c_int64] * 7 + [ctypes.c_void_p]


def _function(kind: str, dtype: torch.dtype):
    return launcher(LIBRARY, "selective_scan", kind, dtype, _FWD_ARGTYPES if kind == "fwd" else _BWD_ARGTYPES)


def _check(status: int, what: str) -> None:
    check_launch(status, "selective_scan", what)


class _SelectiveScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, dt, A, Bm, Cm, h0):
        dtype = u.dtype
        u, dt, A = u.contiguous(), dt.float().contiguous(), A.float().contiguous()
        Bk, Ck = Bm.to(dtype).contiguous(), Cm.to(dtype).contiguous()
        b, t, d = u.shape
        g, n = Bk.shape[2], Bk.shape[3]
        nc = -(-t // CHUNK)
        y = torch.empty(b, t, d, device=u.device, dtype=torch.float32)
        hc = torch.empty(b, nc, d, n, device=u.device, dtype=torch.float32)
        hT = torch.empty(b, d, n, device=u.device, dtype=torch.float32)
        h0c = None if h0 is None else h0.float().contiguous()
        with torch.cuda.device(u.device):
            status = _function("fwd", dtype)(
                pointer(u),
                pointer(dt),
                pointer(A),
                pointer(Bk),
                pointer(Ck),
                pointer(h0c),
                pointer(y),
                pointer(hc),
                pointer(hT),
                b,
                t,
                d,
                g,
                n,
                CHUNK,
                nc,
                stream_handle(u.device),
            )
        _check(status, "forward")
        ctx.save_for_backward(u, dt, A, Bk, Ck, hc)
        ctx.meta = (h0 is not None, None if h0 is None else h0.dtype, Bm.dtype, Cm.dtype)
        return y, hT

    @staticmethod
    def backward(ctx, dy, dhT):
        u, dt, A, Bk, Ck, hc = ctx.saved_tensors
        has_h0, h0_dtype, b_dtype, c_dtype = ctx.meta
        b, t, d = u.shape
        g, n = Bk.shape[2], Bk.shape[3]
        nc = hc.shape[1]
        dev = u.device
        f32 = dict(device=dev, dtype=torch.float32)
        dy = torch.zeros(b, t, d, **f32) if dy is None else dy.float().contiguous()
        dhT = None if dhT is None else dhT.float().contiguous()
        ws = torch.empty(b, d, CHUNK, n, **f32)
        du, ddt = torch.empty(b, t, d, **f32), torch.empty(b, t, d, **f32)
        dA = torch.empty(b, d, n, **f32)
        dB, dC = torch.zeros(b, t, g, n, **f32), torch.zeros(b, t, g, n, **f32)
        dh0 = torch.empty(b, d, n, **f32) if has_h0 else None
        with torch.cuda.device(dev):
            status = _function("bwd", u.dtype)(
                pointer(u),
                pointer(dt),
                pointer(A),
                pointer(Bk),
                pointer(Ck),
                pointer(hc),
                pointer(dy),
                pointer(dhT),
                pointer(ws),
                pointer(du),
                pointer(ddt),
                pointer(dA),
                pointer(dB),
                pointer(dC),
                pointer(dh0),
                b,
                t,
                d,
                g,
                n,
                CHUNK,
                nc,
                stream_handle(dev),
            )
        _check(status, "backward")
        return (
            du.to(u.dtype),
            ddt,
            dA.sum(0),
            dB.to(b_dtype),
            dC.to(c_dtype),
            dh0.to(h0_dtype) if has_h0 else None,
        )


def selective_scan(*args, **kwargs):
    return run_kernel(_SelectiveScan.apply, *args, **kwargs)
