"""Binding of ``csrc/selective_scan.cu`` (the ``cuda`` backend of ``ops.selective_scan``) through ctypes.

    h_t = exp(dt_t A) * h_{t-1} + dt_t u_t B_t        y_t = <h_t, C_t> + D u_t,  y *= silu(z)

Shapes: u, delta, z [B, T, D]; A [D, N]; B, C [B, T, N] or [B, T, G, N]; h [B, D, N] fp32.

The kernel computes the scan proper (y_t = <h_t, C_t> and the final state) and its backward; dt = softplus(delta
+ delta_bias), D u and the gate are torch operations around it, so autograd carries their gradients. The
library is compiled by nvcc for the current GPU the first time this backend runs (``load_library``). Tensors
are passed contiguous; B and C are cast to u's dtype (the kernels take one element type); the forward keeps
only chunk-boundary states for the backward. Launch failures raise a RuntimeError with CUDA's message.

The backward is deterministic: the kernel writes dB and dC as partial sums, one per channel block of a group
([n_cblocks, B, T, G, N] fp32, no atomics), and they are summed here over the channel blocks in a fixed order;
``channel_blocks`` picks n_cblocks from the shapes alone, so the same call gives bitwise the same gradients.
"""

from __future__ import annotations

import ctypes

import torch

from .._cuda_binding import check_launch, launcher, pointer, stream_handle
from .pre_post import run_kernel

LIBRARY = "selective_scan"
CHUNK = 64  # steps between the checkpoints the backward recomputes from
BWD_WARPS = 4  # channels a backward block walks at once (csrc/selective_scan.cu kBwdWarps)
# The backward's grid: enough blocks to fill a GPU (an H100 holds ~800 of them), and partials of dB and dC
# within a budget (they take n_cblocks times the memory of dB and dC; a block walks more channels instead).
TARGET_BLOCKS = 1024
PARTIALS_BUDGET_BYTES = 256 * 2**20
_FWD_ARGTYPES = [ctypes.c_void_p] * 9 + [ctypes.c_int64] * 7 + [ctypes.c_void_p]
_BWD_ARGTYPES = [ctypes.c_void_p] * 15 + [ctypes.c_int64] * 8 + [ctypes.c_void_p]


def channel_blocks(batch: int, seqlen: int, groups: int, d_per_group: int, dstate: int) -> int:
    """How many channel blocks the backward splits each group into (each writes its own dB, dC partials).

    A function of the shapes only, never of the device or of free memory: the gradients' summation order, and
    so their bits, must not change from run to run. No block is left without a channel."""
    if d_per_group < 1:
        return 1
    most = max(1, -(-d_per_group // BWD_WARPS))  # one warp per channel, one round
    want = max(1, -(-TARGET_BLOCKS // max(1, groups * batch)))
    partial_bytes = 2 * 4 * batch * seqlen * groups * dstate  # dB and dC partials of one channel block
    fits = max(1, PARTIALS_BUDGET_BYTES // max(1, partial_bytes))
    n = min(most, want, fits)
    per_block = -(-d_per_group // n)
    return max(1, -(-d_per_group // per_block))


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
        ncb = channel_blocks(b, t, g, d // g, n)
        # Every entry is written by the kernel, except with no channel at all (D = 0: it launches nothing).
        alloc = torch.empty if d > 0 else torch.zeros
        dBp, dCp = alloc(ncb, b, t, g, n, **f32), alloc(ncb, b, t, g, n, **f32)
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
                pointer(dBp),
                pointer(dCp),
                pointer(dh0),
                b,
                t,
                d,
                g,
                n,
                CHUNK,
                nc,
                ncb,
                stream_handle(dev),
            )
        _check(status, "backward")
        # The channel blocks' partials, summed in one fixed order (torch's reduction is deterministic).
        dB, dC = (p[0] if ncb == 1 else p.sum(0) for p in (dBp, dCp))
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
