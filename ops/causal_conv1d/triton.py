"""Causal depthwise convolution in Triton: a forward kernel and two backward kernels, no atomics.

Indexing time by position p = -(W-1) .. T-1, with xp[p] = x[p] for p >= 0 and xp[p] =
initial_state[:, :, p + W-1] for p < 0 (zeros when there is no initial state):

    z_t = sum_{k=0}^{W-1} weight[:, k] * xp[t - (W-1) + k] + bias
    y_t = act(z_t)                                  # act: identity or silu
    final_state = xp[T-(W-1) .. T-1]                # [B, D, W-1], fp32 (fp64 for fp64 inputs)

Shapes: x, y [B, T, D] (channel-last, any float dtype; y has x's dtype); weight [D, W] with W in 2..8;
bias [D]; initial_state [B, D, W-1] (channel-first, as causal-conv1d keeps it). Arithmetic is in fp32
(fp64 for fp64 inputs, as the reference does).

Backward, with g = dL/dz = dy * act'(z):

    dxp[p]        = sum_k weight[:, k] * g[p + (W-1) - k]   over 0 <= p + (W-1) - k < T
                    (dx for p >= 0, d initial_state for p < 0)
    dweight[:, k] = sum_{b, t} g[b, t] * xp[b, t - (W-1) + k]
    dbias         = sum_{b, t} g[b, t]

Kernels (gridded over (time tiles, B, channel tiles): time goes on the grid axis without CUDA's 65535
limit, and neighbouring programs share their tiles' overlapping rows in cache; channels are the contiguous
axis, so every load of a [BLOCK_T, BLOCK_D] tile is coalesced along D):

- ``_forward_kernel``: y. z is not stored: the backward recomputes it where silu needs it.
- ``_grad_z_kernel``: per time chunk, g (written to a buffer only for silu; otherwise g is dy) and the
  chunk's partial sums of dweight and dbias, written to [slots, W, D] and [slots, D] buffers that torch
  reduces. One slot per (batch, chunk) keeps the result deterministic, which atomics would not.
- ``_grad_x_kernel``: dxp from g, a correlation with the flipped weights. Its time tiles start at
  p = -(W-1), so the initial state's positions are ordinary rows of the first tile.

The final state is a slice of [initial_state ; x] taken with torch outside the autograd Function, so its
gradient (into x's last W-1 steps and into initial_state) is autograd's, not ours.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from .._dispatch import triton_interpreting
from .._triton_utils import device_guarded

# ----------------------------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------------------------
#
# Every kernel works on [BLOCK_T, BLOCK_D] tiles of the flattened [B*T, D] tensors. A tile is addressed from a
# scalar int64 offset of its first row plus offsets inside it (rows * D + channel) of type IDX: tensors over
# 2**31 elements index correctly while the per-element arithmetic stays 32-bit on a GPU (64-bit offsets per
# element cost registers that the unrolled taps need). IDX is int64 only under the interpreter.
#
# Taps that reach back before t = 0 read the initial state, which only the first tile of a sequence does.
# They are a separate correction under a runtime branch, rather than a second masked load in every tap:
# two sets of pointers per unrolled tap more than doubled the registers and made the kernels spill.


@triton.jit
def _taps_from_x(
    tile_ptr,
    w_ptr,
    rows,
    t0,
    offs_d,
    mask_d,
    T,
    D,
    W: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """sum_k weight[:, k] * x[t - (W-1) + k] for the tile's steps t = t0 + rows; steps before 0 read 0."""
    acc = tl.zeros([BLOCK_T, BLOCK_D], dtype=ACC)
    # W is a constexpr, so the taps unroll; their shifted loads overlap and mostly hit cache.
    for k in tl.static_range(W):
        shift = k - (W - 1)
        src = t0 + rows + shift
        xv = tl.load(
            tile_ptr + (rows + shift)[:, None] * D + offs_d[None, :],
            mask=((src >= 0) & (src < T))[:, None] & mask_d[None, :],
            other=0.0,
        ).to(ACC)
        w_k = tl.load(w_ptr + offs_d * W + k, mask=mask_d, other=0.0).to(ACC)
        acc += xv * w_k[None, :]
    return acc


@triton.jit
def _taps_from_state(
    h0_ptr,
    w_ptr,
    offs_t,
    offs_d,
    mask_d,
    D,
    W: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """The taps of steps offs_t that reach position p = t - (W-1) + k < 0: initial_state[:, p + W-1].

    ``h0_ptr`` points at this sequence's [D, W-1] state. A runtime loop, not unrolled, so its loads are not
    hoisted next to each other (this runs once per sequence; registers matter more than speed here)."""
    acc = tl.zeros([BLOCK_T, BLOCK_D], dtype=ACC)
    for k in range(W - 1):  # tap W-1 reads x_t itself, never the state
        pos = offs_t + (k - (W - 1))
        h = tl.load(
            h0_ptr + offs_d[None, :] * (W - 1) + (pos + (W - 1))[:, None],
            mask=(pos < 0)[:, None] & mask_d[None, :],
            other=0.0,
        ).to(ACC)
        w_k = tl.load(w_ptr + offs_d * W + k, mask=mask_d, other=0.0).to(ACC)
        acc += h * w_k[None, :]
    return acc


@triton.jit
def _forward_kernel(
    x_ptr,
    w_ptr,
    b_ptr,
    h0_ptr,
    y_ptr,
    T,
    D,
    W: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_INIT: tl.constexpr,
    SILU: tl.constexpr,
    ACC: tl.constexpr,
    IDX: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    t0 = tl.program_id(0).to(IDX) * BLOCK_T
    pid_b = tl.program_id(1).to(tl.int64)
    rows = tl.arange(0, BLOCK_T).to(IDX)
    offs_d = tl.program_id(2).to(IDX) * BLOCK_D + tl.arange(0, BLOCK_D).to(IDX)
    mask_d = offs_d < D
    tile = (pid_b * T + t0) * D  # int64 offset of the tile's first row

    z = _taps_from_x(x_ptr + tile, w_ptr, rows, t0, offs_d, mask_d, T, D, W, ACC, BLOCK_T, BLOCK_D)
    if HAS_INIT:
        if t0 < W - 1:
            z += _taps_from_state(
                h0_ptr + pid_b * D * (W - 1), w_ptr, t0 + rows, offs_d, mask_d, D, W, ACC, BLOCK_T, BLOCK_D
            )
    if HAS_BIAS:
        z += tl.load(b_ptr + offs_d, mask=mask_d, other=0.0).to(ACC)[None, :]
    if SILU:
        z = z * tl.sigmoid(z)
    mask = (t0 + rows < T)[:, None] & mask_d[None, :]
    tl.store(y_ptr + tile + rows[:, None] * D + offs_d[None, :], z.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _grad_z_kernel(
    x_ptr,
    w_ptr,
    b_ptr,
    h0_ptr,
    dy_ptr,
    g_ptr,
    dw_part_ptr,
    db_part_ptr,
    T,
    D,
    n_chunks,
    W: tl.constexpr,
    W_PAD: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_INIT: tl.constexpr,
    SILU: tl.constexpr,
    NEED_DW: tl.constexpr,
    NEED_DB: tl.constexpr,
    ACC: tl.constexpr,
    IDX: tl.constexpr,
    CHUNK_T: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid_c = tl.program_id(0).to(IDX)
    pid_b = tl.program_id(1).to(tl.int64)
    rows = tl.arange(0, BLOCK_T).to(IDX)
    offs_d = tl.program_id(2).to(IDX) * BLOCK_D + tl.arange(0, BLOCK_D).to(IDX)
    mask_d = offs_d < D
    h0_seq = h0_ptr + pid_b * D * (W - 1)
    # Tap k of the dweight sums goes to row k of a [W_PAD, BLOCK_D] accumulator (W_PAD: W rounded up to a
    # power of two, as tl.arange needs).
    offs_k = tl.arange(0, W_PAD).to(IDX)
    if HAS_BIAS and SILU:
        bias = tl.load(b_ptr + offs_d, mask=mask_d, other=0.0).to(ACC)

    # The initial state only reaches the first tile of the first chunk (BLOCK_T >= W-1). Its work is done
    # once, outside the loop below: the state's share of that tile's z before it, its share of dweight after
    # it, from the tile's g kept in registers. Runtime branches inside the loop cost far more registers.
    first = pid_c == 0
    z_state = tl.zeros([BLOCK_T, BLOCK_D], dtype=ACC)
    if HAS_INIT and SILU:
        if first:
            z_state = _taps_from_state(h0_seq, w_ptr, rows, offs_d, mask_d, D, W, ACC, BLOCK_T, BLOCK_D)
    g_first = tl.zeros([BLOCK_T, BLOCK_D], dtype=ACC)

    dw_acc = tl.zeros([W_PAD, BLOCK_D], dtype=ACC)
    db_acc = tl.zeros([BLOCK_D], dtype=ACC)
    # A program walks a chunk of CHUNK_T steps in BLOCK_T tiles, so the partial-sum buffer has one slot per
    # chunk rather than per tile: CHUNK_T / BLOCK_T times smaller, still deterministic.
    for s in range(0, CHUNK_T, BLOCK_T):
        t0 = pid_c * CHUNK_T + s
        offs_t = t0 + rows
        tile = (pid_b * T + t0) * D
        tile_offs = rows[:, None] * D + offs_d[None, :]
        mask = (offs_t < T)[:, None] & mask_d[None, :]
        # Steps past T (and channels past D) load dy = 0, so they add nothing to the sums below.
        g = tl.load(dy_ptr + tile + tile_offs, mask=mask, other=0.0).to(ACC)
        if SILU:
            # z is not kept from the forward: recomputing it costs W cached loads, storing it a full
            # [B, T, D] write and read.
            z = _taps_from_x(x_ptr + tile, w_ptr, rows, t0, offs_d, mask_d, T, D, W, ACC, BLOCK_T, BLOCK_D)
            if HAS_INIT:
                z += tl.where(s == 0, z_state, 0.0)
            if HAS_BIAS:
                z += bias[None, :]
            sig = tl.sigmoid(z)
            g = g * sig * (1.0 + z * (1.0 - sig))  # silu'(z)
            tl.store(g_ptr + tile + tile_offs, g.to(g_ptr.dtype.element_ty), mask=mask)
        if NEED_DB:
            db_acc += tl.sum(g, axis=0)
        if NEED_DW:
            # dweight[:, k] += sum_t g[t] * x[t - (W-1) + k]: the forward's loads, reduced over time.
            for k in tl.static_range(W):
                shift = k - (W - 1)
                src = offs_t + shift
                xv = tl.load(
                    x_ptr + tile + (rows + shift)[:, None] * D + offs_d[None, :],
                    mask=((src >= 0) & (src < T))[:, None] & mask_d[None, :],
                    other=0.0,
                ).to(ACC)
                dw_acc += tl.where(offs_k[:, None] == k, tl.sum(g * xv, axis=0)[None, :], 0.0)
            if HAS_INIT:
                g_first = tl.where(s == 0, g, g_first)

    if HAS_INIT and NEED_DW:
        if first:
            # dweight[:, j] += sum_t g[t] * initial_state[:, t + j] for the taps that reach before t = 0 (a
            # runtime loop, as in _taps_from_state).
            for j in range(W - 1):
                pos = rows + (j - (W - 1))
                h = tl.load(
                    h0_seq + offs_d[None, :] * (W - 1) + (pos + (W - 1))[:, None],
                    mask=(pos < 0)[:, None] & mask_d[None, :],
                    other=0.0,
                ).to(ACC)
                dw_acc += tl.where(offs_k[:, None] == j, tl.sum(g_first * h, axis=0)[None, :], 0.0)

    slot = pid_b * n_chunks + pid_c
    if NEED_DW:
        dw_offs = offs_k[:, None] * D + offs_d[None, :]
        tl.store(dw_part_ptr + slot * W * D + dw_offs, dw_acc, mask=(offs_k < W)[:, None] & mask_d[None, :])
    if NEED_DB:
        tl.store(db_part_ptr + slot * D + offs_d, db_acc, mask=mask_d)


@triton.jit
def _grad_x_kernel(
    g_ptr,
    w_ptr,
    dx_ptr,
    dh0_ptr,
    T,
    D,
    W: tl.constexpr,
    NEED_DX: tl.constexpr,
    NEED_DINIT: tl.constexpr,
    ACC: tl.constexpr,
    IDX: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    # Positions start at -(W-1): the first W-1 rows of the first tile are the initial state's.
    p0 = tl.program_id(0).to(IDX) * BLOCK_T - (W - 1)
    pid_b = tl.program_id(1).to(tl.int64)
    rows = tl.arange(0, BLOCK_T).to(IDX)
    offs_p = p0 + rows
    offs_d = tl.program_id(2).to(IDX) * BLOCK_D + tl.arange(0, BLOCK_D).to(IDX)
    mask_d = offs_d < D
    tile = (pid_b * T + p0) * D  # may point before the sequence; such rows are masked

    acc = tl.zeros([BLOCK_T, BLOCK_D], dtype=ACC)
    for k in tl.static_range(W):
        # Position p fed output t = p + (W-1) - k through tap k.
        shift = (W - 1) - k
        t = offs_p + shift
        gv = tl.load(
            g_ptr + tile + (rows + shift)[:, None] * D + offs_d[None, :],
            mask=((t >= 0) & (t < T))[:, None] & mask_d[None, :],
            other=0.0,
        ).to(ACC)
        w_k = tl.load(w_ptr + offs_d * W + k, mask=mask_d, other=0.0).to(ACC)
        acc += gv * w_k[None, :]

    if NEED_DX:
        in_x = (offs_p >= 0) & (offs_p < T)
        dx_offs = rows[:, None] * D + offs_d[None, :]
        tl.store(
            dx_ptr + tile + dx_offs, acc.to(dx_ptr.dtype.element_ty), mask=in_x[:, None] & mask_d[None, :]
        )
    if NEED_DINIT:
        dh_offs = offs_d[None, :] * (W - 1) + (offs_p + (W - 1))[:, None]
        tl.store(
            dh0_ptr + pid_b * D * (W - 1) + dh_offs,
            acc.to(dh0_ptr.dtype.element_ty),
            mask=(offs_p < 0)[:, None] & mask_d[None, :],
        )


# ----------------------------------------------------------------------------------------------------------
# Launch helpers
# ----------------------------------------------------------------------------------------------------------


def _acc_dtype(x: torch.Tensor):
    # fp32 arithmetic for fp32/fp16/bf16; fp64 inputs keep fp64, as the reference does.
    return tl.float64 if x.dtype == torch.float64 else tl.float32


def _index_dtype():
    # In-tile offsets are int32 on a GPU (see "Kernels"). The interpreter checks every int32 add and
    # multiply for overflow in numpy, which int64 ones skip: int64 there makes the CPU tests ~1.5x faster.
    return tl.int64 if triton_interpreting() else tl.int32


class Tiles(NamedTuple):
    block_t: int  # steps per tile of the forward and dx kernels
    block_d: int  # channels per tile, every kernel
    grad_block_t: int  # steps per tile of the g / dweight kernel
    grad_chunk_t: int  # steps per program of that kernel, one dweight partial sum: whole grad tiles


# Tiles under TRITON_INTERPRET=1. The interpreter runs programs (and the tiles of a chunk) one after
# another in numpy, so its time grows with their number: these keep the tests' shapes (T up to ~40, D up to
# ~40) at two time tiles and one partial channel tile. A test shrinks them to cover many tiles, chunks of
# several tiles and several channel tiles.
INTERPRET_TILES = Tiles(block_t=32, block_d=64, grad_block_t=32, grad_chunk_t=32)


def _tiles(d: int) -> Tiles:
    if triton_interpreting():
        return INTERPRET_TILES
    # On a GPU, 64 channels (128 B of bf16) a row keep loads coalesced, and 16 x 64 tiles at 4 warps leave
    # the unrolled taps of the forward and dx kernels spill-free up to W = 8 (checked with ptxas for sm_90).
    # The g / dweight kernel holds more (z, g, the dweight accumulator), so its tiles are 8 steps; a program
    # walks 128 steps, which keeps the partial-sum buffer at B * T / 128 slots of [W, D].
    block_d = min(64, max(16, triton.next_power_of_2(d)))
    return Tiles(block_t=16, block_d=block_d, grad_block_t=8, grad_chunk_t=128)


@device_guarded
def _forward(x, weight, bias, h0, silu: bool) -> torch.Tensor:
    b, t, d = x.shape
    width = weight.shape[1]
    y = torch.empty_like(x)
    if y.numel() == 0:
        return y
    tiles = _tiles(d)
    grid = (triton.cdiv(t, tiles.block_t), b, triton.cdiv(d, tiles.block_d))
    _forward_kernel[grid](
        x,
        weight,
        bias if bias is not None else x,  # a dummy pointer, never read (HAS_BIAS=False)
        h0 if h0 is not None else x,
        y,
        t,
        d,
        W=width,
        HAS_BIAS=bias is not None,
        HAS_INIT=h0 is not None,
        SILU=silu,
        ACC=_acc_dtype(x),
        IDX=_index_dtype(),
        BLOCK_T=tiles.block_t,
        BLOCK_D=tiles.block_d,
    )
    return y


@device_guarded
def _backward(dy, x, weight, bias, h0, silu: bool, needs: tuple[bool, bool, bool, bool]):
    need_dx, need_dw, need_db, need_dh0 = needs
    need_db = need_db and bias is not None
    need_dh0 = need_dh0 and h0 is not None
    b, t, d = x.shape
    width = weight.shape[1]
    tiles = _tiles(d)
    # A chunk must be whole tiles, or neighbouring chunks would overlap and count steps twice; and the
    # state's taps must fall in the first tile, where _grad_z_kernel looks for them.
    assert tiles.grad_chunk_t % tiles.grad_block_t == 0 and tiles.grad_block_t >= width - 1, tiles
    acc = _acc_dtype(x)
    part_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    n_chunks = triton.cdiv(t, tiles.grad_chunk_t)
    slots = b * n_chunks

    dx = dw = db = dh0 = None
    # g = dL/dz: without an activation it is dy itself and needs no buffer.
    g = dy
    if silu or need_dw or need_db:
        if silu:
            g = torch.empty(b, t, d, dtype=part_dtype, device=x.device)
        dw_part = torch.empty(slots, width, d, dtype=part_dtype, device=x.device) if need_dw else x
        db_part = torch.empty(slots, d, dtype=part_dtype, device=x.device) if need_db else x
        grid = (n_chunks, b, triton.cdiv(d, tiles.block_d))
        if dy.numel() > 0:
            _grad_z_kernel[grid](
                x,
                weight,
                bias if bias is not None else x,
                h0 if h0 is not None else x,
                dy,
                g,
                dw_part,
                db_part,
                t,
                d,
                n_chunks,
                W=width,
                W_PAD=triton.next_power_of_2(width),
                HAS_BIAS=bias is not None,
                HAS_INIT=h0 is not None,
                SILU=silu,
                NEED_DW=need_dw,
                NEED_DB=need_db,
                ACC=acc,
                IDX=_index_dtype(),
                CHUNK_T=tiles.grad_chunk_t,
                BLOCK_T=tiles.grad_block_t,
                BLOCK_D=tiles.block_d,
            )
        # One fixed-order reduction over the slots: deterministic, unlike atomic adds.
        if need_dw:
            dw = dw_part.sum(0).t().to(weight.dtype) if slots > 0 else torch.zeros_like(weight)
        if need_db:
            db = db_part.sum(0).to(bias.dtype) if slots > 0 else torch.zeros_like(bias)

    if need_dx or need_dh0:
        # Buffers not asked for are replaced by a dummy pointer the kernel never writes.
        dx = torch.empty_like(x) if need_dx else x
        dh0 = torch.empty_like(h0) if need_dh0 else x
        # Tiles cover positions -(W-1) .. T-1.
        grid = (triton.cdiv(t + width - 1, tiles.block_t), b, triton.cdiv(d, tiles.block_d))
        if b * d > 0:
            _grad_x_kernel[grid](
                g,
                weight,
                dx,
                dh0,
                t,
                d,
                W=width,
                NEED_DX=need_dx,
                NEED_DINIT=need_dh0,
                ACC=acc,
                IDX=_index_dtype(),
                BLOCK_T=tiles.block_t,
                BLOCK_D=tiles.block_d,
            )
        dx = dx if need_dx else None
        dh0 = dh0 if need_dh0 else None
    return dx, dw, db, dh0


class _CausalConv1dFunction(torch.autograd.Function):
    """y = act(causal depthwise conv of [initial_state ; x]); gradients for all four tensor inputs."""

    @staticmethod
    def forward(ctx, x, weight, bias, initial_state, silu):
        y = _forward(x, weight, bias, initial_state, silu)
        ctx.save_for_backward(x, weight, bias, initial_state)
        ctx.silu = silu
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, bias, initial_state = ctx.saved_tensors
        needs = tuple(ctx.needs_input_grad[:4])
        dx, dw, db, dh0 = _backward(dy.contiguous(), x, weight, bias, initial_state, ctx.silu, needs)
        return dx, dw, db, dh0, None


def causal_conv1d(x, weight, bias=None, activation=None, initial_state=None, output_final_state=False):
    """Triton backend of :func:`seqzoo.ops.causal_conv1d` (arguments are validated by the op)."""
    width = weight.shape[1]
    # The kernels index dense row-major tensors.
    xc = x.contiguous()
    y = _CausalConv1dFunction.apply(
        xc,
        weight.contiguous(),
        None if bias is None else bias.contiguous(),
        None if initial_state is None else initial_state.contiguous(),
        activation == "silu",
    )
    final = None
    if output_final_state:
        # Plain torch ops, so autograd differentiates the state into x and initial_state by itself.
        state_dtype = torch.promote_types(x.dtype, torch.float32)
        b, t, d = x.shape
        if initial_state is None:
            head = x.new_zeros(b, d, width - 1, dtype=state_dtype)
        else:
            head = initial_state.to(state_dtype)
        tail = x[:, max(t - (width - 1), 0) :].transpose(1, 2).to(state_dtype)
        xp_end = torch.cat([head, tail], dim=2)
        final = xp_end[:, :, xp_end.shape[2] - (width - 1) :]
    return y, final
