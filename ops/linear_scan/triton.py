"""Diagonal linear recurrence in Triton: tiled forward and backward kernels and their autograd.Function.

    h_t = a_t * h_{t-1} + x_t          (reverse=True: h_t = a_t * h_{t+1} + x_t)

Shapes: a, x [B, T, D] (fp32/fp16/bf16); h [B, T, D] in their promoted dtype; initial / final state [B, D]
fp32.

The scan is memory-bound: each element of a and x is read once and h written once, so the kernel keeps
the state in registers and streams time through it. One program owns one batch row and BLOCK_D channels
and walks time in tiles of BLOCK_T steps: a tile of a and x is loaded at once (BLOCK_T x BLOCK_D loads in
flight rather than one step's worth), scanned along time with ``tl.associative_scan`` over the pairs
(a, x) with the composition

    (a1, x1) then (a2, x2)  =  (a1 a2, a2 x1 + x2)          (h -> a1 h + x1, then -> a2 h + x2)

and the carried state enters as  h = A_cum * h_carry + X_cum. Positions past the end load (a, x) = (1, 0), so
the state stays put there and the tile's last row is always the carry. ``reverse`` walks the tiles from the
end: row i of a tile holds processing step s, at time T-1-s, so one kernel serves both directions.

Backward (the same scan against the forward's direction): with g_t the gradient reaching h_t,

    g_s = dh_s + a_{s+1} g_{s+1},   g_{T-1} = dh_{T-1} + dhT          (s: forward processing order)
    dx_s = g_s,   da_s = g_s * h_{s-1} (h_{-1} = initial state),   d initial_state = a_0 g_0

so the backward kernel scans (a shifted by one step, dh) from the last processing step to the first,
reading the saved output h for da. Accumulation is fp32 throughout.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._dispatch import triton_interpreting
from .._triton_utils import device_guarded


@triton.jit
def _compose(a1, x1, a2, x2):
    # Step (a1, x1) followed by step (a2, x2), as one step.
    return a1 * a2, a2 * x1 + x2


@triton.jit
def _linear_scan_fwd_kernel(
    A,
    X,
    H,
    H0,
    HT,
    T,
    D,
    REVERSE: tl.constexpr,
    HAS_H0: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid_d = tl.program_id(0)
    pid_b = tl.program_id(1)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    rows = tl.arange(0, BLOCK_T)
    base = pid_b.to(tl.int64) * T * D  # int64: B*T*D can pass 2^31
    if HAS_H0:
        h = tl.load(H0 + pid_b * D + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    else:
        h = tl.zeros([BLOCK_D], dtype=tl.float32)
    for start in range(0, T, BLOCK_T):
        s = start + rows  # processing steps of this tile
        if REVERSE:
            t = T - 1 - s
        else:
            t = s
        mask = (s < T)[:, None] & mask_d[None, :]
        offs = base + t.to(tl.int64)[:, None] * D + offs_d[None, :]
        a = tl.load(A + offs, mask=mask, other=1.0).to(tl.float32)
        x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
        a_cum, x_cum = tl.associative_scan((a, x), 0, _compose)
        hs = a_cum * h[None, :] + x_cum
        tl.store(H + offs, hs.to(H.dtype.element_ty), mask=mask)
        h = tl.sum(tl.where(rows[:, None] == BLOCK_T - 1, hs, 0.0), axis=0)
    tl.store(HT + pid_b * D + offs_d, h, mask=mask_d)


@triton.jit
def _linear_scan_bwd_kernel(
    A,
    H,
    H0,
    DH,
    DHT,
    DA,
    DX,
    DH0,
    T,
    D,
    REVERSE: tl.constexpr,
    HAS_H0: tl.constexpr,
    HAS_DHT: tl.constexpr,
    NEED_DH0: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid_d = tl.program_id(0)
    pid_b = tl.program_id(1)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    rows = tl.arange(0, BLOCK_T)
    base = pid_b.to(tl.int64) * T * D
    if HAS_DHT:
        g = tl.load(DHT + pid_b * D + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    else:
        g = tl.zeros([BLOCK_D], dtype=tl.float32)
    if HAS_H0:
        h0 = tl.load(H0 + pid_b * D + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    else:
        h0 = tl.zeros([BLOCK_D], dtype=tl.float32)
    # One time step forward in the forward pass's processing order.
    if REVERSE:
        step = -1
    else:
        step = 1
    for start in range(0, T, BLOCK_T):
        u = start + rows  # backward steps: forward processing step s = T-1-u
        s = T - 1 - u
        valid = u < T
        if REVERSE:
            t = T - 1 - s
        else:
            t = s
        mask = valid[:, None] & mask_d[None, :]
        offs = base + t.to(tl.int64)[:, None] * D + offs_d[None, :]
        # Coefficient a at the next forward step (1 at the last one: the final state's gradient is the carry).
        has_next = valid & (s + 1 < T)
        c = tl.load(A + offs + step * D, mask=has_next[:, None] & mask_d[None, :], other=1.0).to(tl.float32)
        dh = tl.load(DH + offs, mask=mask, other=0.0).to(tl.float32)
        c_cum, dh_cum = tl.associative_scan((c, dh), 0, _compose)
        gs = c_cum * g[None, :] + dh_cum
        tl.store(DX + offs, gs.to(DX.dtype.element_ty), mask=mask)
        # The state before each step: the saved output one forward step back, or the initial state.
        has_prev = valid & (s >= 1)
        h_prev = tl.load(H + offs - step * D, mask=has_prev[:, None] & mask_d[None, :], other=0.0).to(
            tl.float32
        )
        h_prev = tl.where((s == 0)[:, None], h0[None, :], h_prev)
        tl.store(DA + offs, (gs * h_prev).to(DA.dtype.element_ty), mask=mask)
        g = tl.sum(tl.where(rows[:, None] == BLOCK_T - 1, gs, 0.0), axis=0)
    if NEED_DH0:
        # g is now the gradient at the first forward step.
        if REVERSE:
            t_first = T - 1
        else:
            t_first = 0
        a_first = tl.load(A + base + t_first * D + offs_d, mask=mask_d, other=0.0).to(tl.float32)
        tl.store(DH0 + pid_b * D + offs_d, a_first * g, mask=mask_d)


def _blocks(d: int) -> tuple[int, int, int]:
    """(BLOCK_T, BLOCK_D, num_warps). Fixed rather than autotuned: the interpreter cannot benchmark, and
    for a memory-bound scan a tile of a few thousand elements per program keeps enough loads in flight."""
    block_d = min(64, max(16, triton.next_power_of_2(d)))
    if triton_interpreting():
        # The interpreter runs a custom associative_scan element by element: keep tiles small.
        return 8, min(block_d, 32), 1
    return 32, block_d, 4


class _LinearScan(torch.autograd.Function):
    @staticmethod
    @device_guarded
    def forward(ctx, a, x, initial_state, reverse):
        a = a.contiguous()
        x = x.contiguous()
        b, t, d = x.shape
        h = torch.empty(b, t, d, device=x.device, dtype=torch.promote_types(a.dtype, x.dtype))
        final = torch.empty(b, d, device=x.device, dtype=torch.float32)
        h0 = None if initial_state is None else initial_state.float().contiguous()
        block_t, block_d, warps = _blocks(d)
        grid = (triton.cdiv(d, block_d), b)
        _linear_scan_fwd_kernel[grid](
            a,
            x,
            h,
            h if h0 is None else h0,
            final,
            t,
            d,
            REVERSE=reverse,
            HAS_H0=h0 is not None,
            BLOCK_T=block_t,
            BLOCK_D=block_d,
            num_warps=warps,
        )
        ctx.save_for_backward(a, h, h0)
        ctx.reverse = reverse
        ctx.dtypes = (x.dtype, None if initial_state is None else initial_state.dtype)
        return h, final

    @staticmethod
    @device_guarded
    def backward(ctx, dh, dfinal):
        a, h, h0 = ctx.saved_tensors
        x_dtype, h0_dtype = ctx.dtypes
        b, t, d = h.shape
        dh = torch.zeros_like(h) if dh is None else dh.contiguous()
        dfinal = None if dfinal is None else dfinal.float().contiguous()
        need_dh0 = h0 is not None and ctx.needs_input_grad[2]
        da = torch.empty_like(a)
        dx = torch.empty(b, t, d, device=h.device, dtype=x_dtype)
        dh0 = torch.empty(b, d, device=h.device, dtype=torch.float32) if need_dh0 else None
        block_t, block_d, warps = _blocks(d)
        grid = (triton.cdiv(d, block_d), b)
        # Unused pointer arguments get any valid tensor (the constexpr flags keep them unread).
        _linear_scan_bwd_kernel[grid](
            a,
            h,
            h if h0 is None else h0,
            dh,
            dh if dfinal is None else dfinal,
            da,
            dx,
            da if dh0 is None else dh0,
            t,
            d,
            REVERSE=ctx.reverse,
            HAS_H0=h0 is not None,
            HAS_DHT=dfinal is not None,
            NEED_DH0=need_dh0,
            BLOCK_T=block_t,
            BLOCK_D=block_d,
            num_warps=warps,
        )
        return da, dx, None if dh0 is None else dh0.to(h0_dtype), None


def linear_scan(a, x, initial_state=None, output_final_state=False, reverse=False):
    h, final = _LinearScan.apply(a, x, initial_state, bool(reverse))
    return h, (final if output_final_state else None)
