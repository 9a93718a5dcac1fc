"""Selective scan in Triton: a chunked scan, forward and backward, and its autograd.Function.

    h_t = exp(dt_t A) * h_{t-1} + dt_t u_t B_t        y_t = <h_t, C_t>   (+ D u_t, * silu(z_t): in torch)

Shapes: u [B, T, D]; dt [B, T, D] fp32 (softplus(delta + delta_bias) is formed in torch, so autograd carries
its gradient to delta and delta_bias); A [D, N] fp32; B, C [B, T, G, N] (a [B, T, N] input is G = 1);
h0 / hT [B, D, N] fp32.

Forward: one program owns one batch row and BLOCK_D channels (all N states, in registers) and walks time in
chunks of CHUNK steps. A chunk is loaded as [CHUNK, BLOCK_D, N] tiles of the per-step decays a = exp(dt A) and
inputs x = dt u B and scanned along time with ``tl.associative_scan`` under the composition
(a1, x1) then (a2, x2) = (a1 a2, a2 x1 + x2); positions past T load dt = 0, i.e. the identity step. The state
entering every chunk is stored (a checkpoint, [B, n_chunks, D, N]): that is all the backward keeps.

Backward, chunks from last to first, from the state entering the chunk: the states before each step are
recomputed by scanning the chunk's steps shifted by one (h_prev), h = a h_prev + x; the state's adjoint
g_t = a_{t+1} g_{t+1} + dy_t C_t is the same scan run backwards (tiles flipped along time); then

    du_t = dt_t <g_t, B_t>,   ddt_t = u_t <g_t, B_t> + <g_t h_prev_t a_t, A>,   dA = sum_t g_t h_prev_t a_t dt_t
    dB_t = sum_{d in group} g_t dt_t u_t,   dC_t = sum_{d in group} dy_t h_t,    dh0 = a_0 g_0

No atomics: a program's channels lie in one group (BLOCK_D divides D / G), so it writes its own partial dB,
dC [n_blocks, B, T, N] and dA [B, D, N]; torch sums the partials (deterministic gradients). The backward's
tiles are smaller than the forward's (it holds several times as many alive; see ``_bwd_blocks``): a program
also takes a block of the N states only, so du and ddt (sums over the states) are partials [n_state_blocks,
B, T, D], summed in torch as well.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._dispatch import triton_interpreting
from .._triton_utils import device_guarded
from .pre_post import run_kernel


@triton.jit
def _compose(a1, x1, a2, x2):
    return a1 * a2, a2 * x1 + x2


@triton.jit
def _last_row(v, rows, L: tl.constexpr):
    return tl.sum(tl.where(rows[:, None, None] == L - 1, v, 0.0), axis=0)


@triton.jit
def _first_row(v, rows):
    return tl.sum(tl.where(rows[:, None, None] == 0, v, 0.0), axis=0)


@triton.jit
def _load_steps(U, DT, A, BM, t, b, T, D, G, N, DPG, offs_d, offs_n, mask_d, mask_n):
    """a = exp(dt A) and x = dt u B at times t [L] ([L, BD, BN]; the identity step where t is outside [0, T))."""
    valid = (t >= 0) & (t < T)
    m2 = valid[:, None] & mask_d[None, :]
    row = (b * T + t).to(tl.int64)
    dt = tl.load(DT + row[:, None] * D + offs_d[None, :], mask=m2, other=0.0)
    u = tl.load(U + row[:, None] * D + offs_d[None, :], mask=m2, other=0.0).to(tl.float32)
    a_mat = tl.load(
        A + offs_d[:, None] * N + offs_n[None, :], mask=mask_d[:, None] & mask_n[None, :], other=0.0
    )
    grp = offs_d // DPG
    m3 = m2[:, :, None] & mask_n[None, None, :]
    bt = tl.load(
        BM + (row[:, None, None] * G + grp[None, :, None]) * N + offs_n[None, None, :], mask=m3, other=0.0
    ).to(tl.float32)
    a = tl.exp(dt[:, :, None] * a_mat[None, :, :])
    x = (dt * u)[:, :, None] * bt
    return a, x, dt, u, bt, a_mat


@triton.jit
def _ss_fwd_kernel(
    U,
    DT,
    A,
    BM,
    CM,
    H0,
    Y,
    HC,
    HT,
    T,
    D,
    G,
    N,
    DPG,
    NC,
    HAS_H0: tl.constexpr,
    L: tl.constexpr,
    BD: tl.constexpr,
    BN: tl.constexpr,
):
    pid_d = tl.program_id(0)
    b = tl.program_id(1)
    offs_d = pid_d * BD + tl.arange(0, BD)
    offs_n = tl.arange(0, BN)
    mask_d = offs_d < D
    mask_n = offs_n < N
    m_dn = mask_d[:, None] & mask_n[None, :]
    rows = tl.arange(0, L)
    state_offs = offs_d[:, None] * N + offs_n[None, :]
    if HAS_H0:
        h = tl.load(H0 + b * D * N + state_offs, mask=m_dn, other=0.0)
    else:
        h = tl.zeros([BD, BN], dtype=tl.float32)
    grp = offs_d // DPG
    for c in range(0, NC):
        tl.store(HC + (b * NC + c).to(tl.int64) * D * N + state_offs, h, mask=m_dn)
        t = c * L + rows
        a, x, dt, u, bt, a_mat = _load_steps(
            U, DT, A, BM, t, b, T, D, G, N, DPG, offs_d, offs_n, mask_d, mask_n
        )
        a_cum, x_cum = tl.associative_scan((a, x), 0, _compose)
        hs = a_cum * h[None, :, :] + x_cum
        valid = t < T
        row = (b * T + t).to(tl.int64)
        m3 = (valid[:, None] & mask_d[None, :])[:, :, None] & mask_n[None, None, :]
        ct = tl.load(
            CM + (row[:, None, None] * G + grp[None, :, None]) * N + offs_n[None, None, :], mask=m3, other=0.0
        ).to(tl.float32)
        y = tl.sum(hs * ct, axis=2)
        tl.store(Y + row[:, None] * D + offs_d[None, :], y, mask=valid[:, None] & mask_d[None, :])
        h = _last_row(hs, rows, L)
    tl.store(HT + b * D * N + state_offs, h, mask=m_dn)


@triton.jit
def _ss_bwd_kernel(
    U,
    DT,
    A,
    BM,
    CM,
    HC,
    DY,
    DHT,
    DU,
    DDT,
    DA,
    DB,
    DC,
    DH0,
    B,
    T,
    D,
    G,
    N,
    DPG,
    NC,
    HAS_DHT: tl.constexpr,
    L: tl.constexpr,
    BD: tl.constexpr,
    BN: tl.constexpr,
):
    pid_d = tl.program_id(0)
    b = tl.program_id(1)
    pid_n = tl.program_id(2)  # this program's BN states; du and ddt are its partial sums over them
    offs_d = pid_d * BD + tl.arange(0, BD)
    offs_n = pid_n * BN + tl.arange(0, BN)
    mask_d = offs_d < D
    mask_n = offs_n < N
    m_dn = mask_d[:, None] & mask_n[None, :]
    rows = tl.arange(0, L)
    state_offs = offs_d[:, None] * N + offs_n[None, :]
    grp = offs_d // DPG
    # Gradient reaching the state after the last step handled so far, from everything after it.
    if HAS_DHT:
        carry = tl.load(DHT + b * D * N + state_offs, mask=m_dn, other=0.0)
    else:
        carry = tl.zeros([BD, BN], dtype=tl.float32)
    da_acc = tl.zeros([BD, BN], dtype=tl.float32)
    for cc in range(0, NC):
        c = NC - 1 - cc
        t = c * L + rows
        valid = t < T
        row = (b * T + t).to(tl.int64)
        m2 = valid[:, None] & mask_d[None, :]
        m3 = m2[:, :, None] & mask_n[None, None, :]
        h_start = tl.load(HC + (b * NC + c).to(tl.int64) * D * N + state_offs, mask=m_dn, other=0.0)
        a, x, dt, u, bt, a_mat = _load_steps(
            U, DT, A, BM, t, b, T, D, G, N, DPG, offs_d, offs_n, mask_d, mask_n
        )
        # States before each step: the chunk's steps shifted one later (the first one the identity), scanned.
        t_prev = tl.where(rows == 0, -1, t - 1)
        ap, xp, _dt, _u, _bt, _am = _load_steps(
            U, DT, A, BM, t_prev, b, T, D, G, N, DPG, offs_d, offs_n, mask_d, mask_n
        )
        ap_cum, xp_cum = tl.associative_scan((ap, xp), 0, _compose)
        h_prev = ap_cum * h_start[None, :, :] + xp_cum
        hs = a * h_prev + x
        ct = tl.load(
            CM + (row[:, None, None] * G + grp[None, :, None]) * N + offs_n[None, None, :], mask=m3, other=0.0
        ).to(tl.float32)
        dy = tl.load(DY + row[:, None] * D + offs_d[None, :], mask=m2, other=0.0)
        # Adjoint, backwards in time: g_t = a_{t+1} g_{t+1} + dy_t C_t, g_last = carry + dy_last C_last.
        # a_{t+1}: the decays shifted one earlier (identity past the chunk: the carry already holds them).
        t_next = tl.where(rows == L - 1, -1, t + 1)
        an, _xn, _dtn, _un, _btn, _amn = _load_steps(
            U, DT, A, BM, t_next, b, T, D, G, N, DPG, offs_d, offs_n, mask_d, mask_n
        )
        e = dy[:, :, None] * ct
        cr_cum, er_cum = tl.associative_scan((tl.flip(an, 0), tl.flip(e, 0)), 0, _compose)
        g = tl.flip(cr_cum * carry[None, :, :] + er_cum, 0)
        dlog = g * h_prev * a  # d loss / d(dt A)
        da_acc += tl.sum(dlog * dt[:, :, None], axis=0)
        gb = tl.sum(g * bt, axis=2)
        rowp = (pid_n.to(tl.int64) * B + b) * T + t  # du, ddt partials [n_blocks_n, B, T, D]: int64 first
        tl.store(DU + rowp[:, None] * D + offs_d[None, :], dt * gb, mask=m2)
        tl.store(
            DDT + rowp[:, None] * D + offs_d[None, :],
            u * gb + tl.sum(dlog * a_mat[None, :, :], axis=2),
            mask=m2,
        )
        # Partial dB, dC of this program's channels (one group), summed over them.
        db = tl.sum(g * (dt * u)[:, :, None], axis=1)
        dc = tl.sum(dy[:, :, None] * hs, axis=1)
        part = (pid_d.to(tl.int64) * B + b) * T + t  # n_blocks * B * T may pass 2^31
        m_tn = valid[:, None] & mask_n[None, :]
        tl.store(DB + part[:, None] * N + offs_n[None, :], db, mask=m_tn)
        tl.store(DC + part[:, None] * N + offs_n[None, :], dc, mask=m_tn)
        carry = _first_row(g * a, rows)
    tl.store(DA + b * D * N + state_offs, da_acc, mask=m_dn)
    tl.store(DH0 + b * D * N + state_offs, carry, mask=m_dn)


def _blocks(d_per_group: int, n: int) -> tuple[int, int, int, int]:
    """(CHUNK, BLOCK_D, BLOCK_N, num_warps) of the forward: fixed, not autotuned (the interpreter cannot
    benchmark). BLOCK_D divides D/G so a program's channels share one group, and a chunk tile stays ~4K elements."""
    bn = triton.next_power_of_2(n)
    chunk = 8 if triton_interpreting() else 16
    budget = 512 if triton_interpreting() else 4096
    return chunk, _block_d(d_per_group, chunk, bn, budget), bn, 1 if triton_interpreting() else 4


def _block_d(d_per_group: int, chunk: int, bn: int, budget: int) -> int:
    """The largest power of two up to 16 that divides D/G and keeps a [chunk, BLOCK_D, BLOCK_N] tile in budget."""
    bd = 1
    while bd * 2 <= 16 and d_per_group % (bd * 2) == 0 and chunk * bd * 2 * bn <= budget:
        bd *= 2
    return bd


# The backward holds many more chunk tiles alive than the forward (the decays and inputs at t, t - 1 and t + 1,
# the recomputed states, the adjoint and its scans): with the forward's [CHUNK, BLOCK_D, BLOCK_N] tiles (~4K
# elements) it needed all 255 registers a thread and spilled. Its tiles hold BWD_TILE elements,
# BWD_ELEMS_PER_THREAD a thread. Both channels and states are split over programs: channel blocks write partial
# dB, dC (summed over a group's blocks), state blocks partial du, ddt (summed over the blocks of N), so the
# tile is split as evenly as it can be between the two, which keeps the partials' memory smallest.
BWD_TILE = 1024
BWD_ELEMS_PER_THREAD = 8


def _bwd_blocks(d_per_group: int, chunk: int, bn: int) -> tuple[int, int, int]:
    """(BLOCK_D, BLOCK_N, num_warps) of the backward; its CHUNK is the forward's (the checkpoints are per chunk).
    BLOCK_D divides D/G (a program's channels share one group) and is at most 16; BLOCK_N at most N's."""
    budget = 512 if triton_interpreting() else BWD_TILE
    bd, bns = 1, 1

    def fits(d, n):
        return chunk * d * n <= budget

    while True:
        grow_d = bd * 2 <= 16 and d_per_group % (bd * 2) == 0 and fits(bd * 2, bns)
        grow_n = bns * 2 <= bn and fits(bd, bns * 2)
        if grow_d and (bd <= bns or not grow_n):
            bd *= 2
        elif grow_n:
            bns *= 2
        else:
            break
    warps = 1 if triton_interpreting() else max(1, chunk * bd * bns // (32 * BWD_ELEMS_PER_THREAD))
    return bd, bns, warps


class _SelectiveScan(torch.autograd.Function):
    @staticmethod
    @device_guarded
    def forward(ctx, u, dt, A, Bm, Cm, h0):
        u, dt, A, Bm, Cm = (x.contiguous() for x in (u, dt, A, Bm, Cm))
        b, t, d = u.shape
        g, n = Bm.shape[2], Bm.shape[3]
        chunk, bd, bn, warps = _blocks(d // g, n)
        nc = triton.cdiv(t, chunk)
        y = torch.empty(b, t, d, device=u.device, dtype=torch.float32)
        hc = torch.empty(b, nc, d, n, device=u.device, dtype=torch.float32)
        hT = torch.empty(b, d, n, device=u.device, dtype=torch.float32)
        h0c = None if h0 is None else h0.float().contiguous()
        grid = (triton.cdiv(d, bd), b)
        _ss_fwd_kernel[grid](
            u,
            dt,
            A,
            Bm,
            Cm,
            hT if h0c is None else h0c,
            y,
            hc,
            hT,
            t,
            d,
            g,
            n,
            d // g,
            nc,
            HAS_H0=h0c is not None,
            L=chunk,
            BD=bd,
            BN=bn,
            num_warps=warps,
        )
        ctx.save_for_backward(u, dt, A, Bm, Cm, hc)
        ctx.meta = (
            chunk,
            bn,
            h0 is not None,
            None if h0 is None else h0.dtype,
            Bm.dtype,
            Cm.dtype,
        )
        return y, hT

    @staticmethod
    @device_guarded
    def backward(ctx, dy, dhT):
        u, dt, A, Bm, Cm, hc = ctx.saved_tensors
        chunk, bn, has_h0, h0_dtype, b_dtype, c_dtype = ctx.meta
        b, t, d = u.shape
        g, n = Bm.shape[2], Bm.shape[3]
        bd, bn, warps = _bwd_blocks(d // g, chunk, bn)
        nc = hc.shape[1]
        dev = u.device
        dy = torch.zeros(b, t, d, device=dev) if dy is None else dy.float().contiguous()
        dhT = None if dhT is None else dhT.float().contiguous()
        nblk = triton.cdiv(d, bd)
        nblk_n = triton.cdiv(n, bn)
        du = torch.empty(nblk_n, b, t, d, device=dev, dtype=torch.float32)
        ddt = torch.empty(nblk_n, b, t, d, device=dev, dtype=torch.float32)
        da = torch.empty(b, d, n, device=dev, dtype=torch.float32)
        db = torch.empty(nblk, b, t, n, device=dev, dtype=torch.float32)
        dc = torch.empty(nblk, b, t, n, device=dev, dtype=torch.float32)
        dh0 = torch.empty(b, d, n, device=dev, dtype=torch.float32)
        _ss_bwd_kernel[(nblk, b, nblk_n)](
            u,
            dt,
            A,
            Bm,
            Cm,
            hc,
            dy,
            dy if dhT is None else dhT,
            du,
            ddt,
            da,
            db,
            dc,
            dh0,
            b,
            t,
            d,
            g,
            n,
            d // g,
            nc,
            HAS_DHT=dhT is not None,
            L=chunk,
            BD=bd,
            BN=bn,
            num_warps=warps,
        )

        # The partials of the blocks of one group, summed (blocks are in channel order, groups contiguous).
        def per_group(p):
            return p.view(g, nblk // g, b, t, n).sum(1).permute(1, 2, 0, 3)

        # The state blocks' partials of du and ddt, summed likewise.
        du, ddt = (p[0] if nblk_n == 1 else p.sum(0) for p in (du, ddt))
        return (
            du.to(u.dtype),
            ddt,
            da.sum(0),
            per_group(db).to(b_dtype),
            per_group(dc).to(c_dtype),
            dh0.to(h0_dtype) if has_h0 else None,
        )


def selective_scan(*args, **kwargs):
    return run_kernel(_SelectiveScan.apply, *args, **kwargs)
