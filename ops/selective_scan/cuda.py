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
import torch.nn.functional as F

from .. import _csrc
from .reference import discretize

LIBRARY = "selective_scan"
CHUNK = 64  # steps between the checkpoints the backward recomputes from
_SUFFIX = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16"}
_FWD_ARGTYPES = [ctypes.c_void_p] * 9 + [ctypes.c_int64] * 7 + [ctypes.c_void_p]
_BWD_ARGTYPES = [ctypes.c_void_p] * 15 + [ctypes.c_int64] * 7 + [ctypes.c_void_p]


def cuda_unavailable_reason() -> str | None:
    """Why the kernel cannot be built here (None when it can): nvcc is needed on first use."""
    try:
        _csrc.find_nvcc()
    except RuntimeError as e:
        return str(e)
    return None


def _function(kind: str, dtype: torch.dtype):
    lib = _csrc.load_library(LIBRARY)
    fn = getattr(lib, f"seqzoo_selective_scan_{kind}_{_SUFFIX[dtype]}")
    fn.argtypes = _FWD_ARGTYPES if kind == "fwd" else _BWD_ARGTYPES
    fn.restype = ctypes.c_int
    return fn


def _check(status: int, what: str) -> None:
    if status != 0:
        abi = _csrc.load_library("seqzoo_abi")
        abi.seqzoo_cuda_error_string.restype = ctypes.c_char_p
        abi.seqzoo_cuda_error_string.argtypes = [ctypes.c_int]
        message = abi.seqzoo_cuda_error_string(status).decode(errors="replace")
        raise RuntimeError(
            f"selective_scan (cuda): the {what} kernel failed to launch: {message} (error {status})"
        )


def _ptr(t: torch.Tensor | None):
    return None if t is None else ctypes.c_void_p(t.data_ptr())


def _stream(device: torch.device):
    return ctypes.c_void_p(torch.cuda.current_stream(device).cuda_stream)


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
                _ptr(u),
                _ptr(dt),
                _ptr(A),
                _ptr(Bk),
                _ptr(Ck),
                _ptr(h0c),
                _ptr(y),
                _ptr(hc),
                _ptr(hT),
                b,
                t,
                d,
                g,
                n,
                CHUNK,
                nc,
                _stream(u.device),
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
                _ptr(u),
                _ptr(dt),
                _ptr(A),
                _ptr(Bk),
                _ptr(Ck),
                _ptr(hc),
                _ptr(dy),
                _ptr(dhT),
                _ptr(ws),
                _ptr(du),
                _ptr(ddt),
                _ptr(dA),
                _ptr(dB),
                _ptr(dC),
                _ptr(dh0),
                b,
                t,
                d,
                g,
                n,
                CHUNK,
                nc,
                _stream(dev),
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


def selective_scan(
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
    dt = discretize(delta.float(), None if delta_bias is None else delta_bias.float(), delta_softplus)
    Bm = B[:, :, None] if B.dim() == 3 else B
    Cm = C[:, :, None] if C.dim() == 3 else C
    y, final = _SelectiveScan.apply(u, dt, A, Bm, Cm, initial_state)
    if D is not None:
        y = y + D.float() * u.float()
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(u.dtype), (final if output_final_state else None)
