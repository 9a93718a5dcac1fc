"""The delta rule (DeltaNet, Gated DeltaNet) in Triton, fused recurrent: a token-by-token kernel and its backward
(``recurrent_delta_rule``, the ``triton_recurrent`` backend; ``ops.delta_rule_step`` picks it for a few tokens on
a GPU).

    S_t = a_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T ;   o_t = scale * q_t^T S_t   (see reference.py)

a_t = exp(g_t) (g [B, T, H], one log decay per head) or 1 (g=None). Each value column s_j of the state evolves
on its own,

    s_j <- a s_j ;   p_j = k . s_j ;   u_j = beta (v_j - p_j) ;   s_j <- s_j + k u_j ;   o_j = scale q . s_j

so one program owns (batch, head, a tile of value columns) with the whole key dimension, and walks the
sequence with the state tile in registers: the decoding path (a few tokens, no chunk padding). The token's
reads and writes of the state are gla's (``ops/common/triton_recurrent.py``).

Its backward needs S_{t-1} at every step in reverse order. (I - beta k k^T) is singular for beta |k|^2 = 1
(beta = 1 and a unit key: the write replaces what k stored), so the state is never recovered by inverting a
step. The forward stores the state every SEGMENT steps (``hs`` [B, H, NS, K, V], only when a gradient is
wanted); the backward walks the segments from last to first, recomputes each segment forward from its
checkpoint into a per-program scratch buffer (SEGMENT states of the program's tile), then walks it backwards:

    dS_t += scale q_t do_t^T ;              dq_t = scale S_t do_t
    du    = dS_t^T k_t ;                    dv_t = beta_t du ;   dbeta_t = du . (v_t - p)
    dp    = -beta_t du ;                    dk_t = dS_t u + S'_t dp        (S'_t = a_t S_{t-1})
    dS'   = dS_t + k_t dp^T ;               dg_t = <S'_t, dS'> ;   dS_{t-1} = a_t dS'

dq, dk, dbeta and dg sum over the value columns: every program writes its tile's share (fp32
[NV, B, T, H, ...]) and torch sums them (deterministic, no atomics). dv is whole per program.

All states and accumulations are fp32; inputs may be fp32, fp16 or bf16. Nothing here has run on a GPU in
this repository's checks: the kernels run under the interpreter (tests/test_delta_rule.py) and are compiled
for sm_90 / sm_80 without one (``make compile-check``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._triton_utils import device_guarded, row_offset
from ..common.triton_recurrent import apply, load_step, read, recurrent_tiles, write
from ..common.triton_tiles import split_bh, starting_state
from .triton_common import prepare_inputs

# Steps between the recurrent forward's state checkpoints (and the backward's scratch depth).
SEGMENT = 32

# Layouts: q, k, dq, dk [B, T, H, K]; v, o, do, dv [B, T, H, V]; beta, g [B, T, H]; h0, ht, dh0, dht
# [B, H, K, V]; hs [B, H, NS, K, V]; partial gradients carry a leading [NV] axis. Positions in time turn into
# int64 before they multiply a row stride (row_offset).


@triton.jit
def _recurrent_fwd_kernel(
    q,
    k,
    v,
    beta,
    g,
    o,
    h0,
    ht,
    hs,
    scale,
    T,
    NS,
    H: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    SEG: tl.constexpr,
    USE_G: tl.constexpr,
    USE_H0: tl.constexpr,
    STORE_HT: tl.constexpr,
    SAVE: tl.constexpr,
):
    # One program per (value tile, batch * head), the whole key dimension in registers.
    i_v, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h, i_bh = split_bh(i_bh, H)
    x_s = i_b * T * H + i_h
    q += x_s * K
    k += x_s * K
    v += x_s * V
    o += x_s * V
    beta += x_s
    g += x_s
    hs += i_bh * NS * K * V
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    o_kv = o_k[:, None] * V + o_v[None, :]
    b_S = starting_state(h0 + i_bh * K * V, o_kv, m_kv, USE_H0, BK, BV)
    for t in range(T):
        if SAVE:
            if t % SEG == 0:
                tl.store(hs + row_offset(t // SEG, K * V) + o_kv, b_S, mask=m_kv)
        b_q = load_step(q, t, H * K, o_k, m_k) * scale
        b_k = load_step(k, t, H * K, o_k, m_k)
        b_v = load_step(v, t, H * V, o_v, m_v)
        b_beta = tl.load(beta + row_offset(t, H)).to(tl.float32)
        if USE_G:
            b_S = b_S * tl.exp(tl.load(g + row_offset(t, H)).to(tl.float32))
        b_u = b_beta * (b_v - read(b_k, b_S))
        b_S = write(b_S, b_k, b_u)
        tl.store(o + row_offset(t, (H * V)) + o_v, read(b_q, b_S).to(o.dtype.element_ty), mask=m_v)
    if STORE_HT:
        tl.store(ht + i_bh * K * V + o_kv, b_S, mask=m_kv)


@triton.jit
def _recurrent_bwd_kernel(
    q,
    k,
    v,
    beta,
    g,
    do,
    hs,
    dht,
    dq,
    dk,
    dv,
    dbeta,
    dg,
    dh0,
    scratch,
    scale,
    T,
    NS,
    B,
    H: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    SEG: tl.constexpr,
    USE_G: tl.constexpr,
    USE_DHT: tl.constexpr,
    STORE_DH0: tl.constexpr,
):
    i_v, i_bh = tl.program_id(0), tl.program_id(1)
    NV = tl.num_programs(0)
    i_b, i_h, i_bh = split_bh(i_bh, H)
    x_s = i_b * T * H + i_h
    x_nv = i_v.to(tl.int64) * B * T * H  # this value tile's slice of the partial gradients
    q += x_s * K
    k += x_s * K
    v += x_s * V
    do += x_s * V
    dv += x_s * V
    beta += x_s
    g += x_s
    dq += (x_nv + x_s) * K
    dk += (x_nv + x_s) * K
    dbeta += x_nv + x_s
    dg += x_nv + x_s
    hs += i_bh * NS * K * V
    scratch += (i_bh * NV + i_v) * SEG * BK * BV
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    o_kv = o_k[:, None] * V + o_v[None, :]
    o_sc = o_k[:, None] * BV + tl.arange(0, BV)[None, :]  # a scratch tile: [BK, BV], padded, unmasked

    b_dS = starting_state(dht + i_bh * K * V, o_kv, m_kv, USE_DHT, BK, BV)
    for i_n in range(NS):
        n = NS - 1 - i_n
        # Forward through the segment from its checkpoint, keeping the state before every step.
        b_S = tl.load(hs + row_offset(n, K * V) + o_kv, mask=m_kv, other=0.0)
        for s in range(SEG):
            t = n * SEG + s
            if t < T:
                tl.store(scratch + s * BK * BV + o_sc, b_S)
                b_k = load_step(k, t, H * K, o_k, m_k)
                b_v = load_step(v, t, H * V, o_v, m_v)
                b_beta = tl.load(beta + row_offset(t, H)).to(tl.float32)
                if USE_G:
                    b_S = b_S * tl.exp(tl.load(g + row_offset(t, H)).to(tl.float32))
                b_S = write(b_S, b_k, b_beta * (b_v - read(b_k, b_S)))
        # The stores above are read back below by other threads of the program.
        tl.debug_barrier()
        for j in range(SEG):
            s = SEG - 1 - j
            t = n * SEG + s
            if t < T:
                b_S = tl.load(scratch + s * BK * BV + o_sc)  # S_{t-1}
                b_q = load_step(q, t, H * K, o_k, m_k) * scale
                b_k = load_step(k, t, H * K, o_k, m_k)
                b_v = load_step(v, t, H * V, o_v, m_v)
                b_do = load_step(do, t, H * V, o_v, m_v)
                b_beta = tl.load(beta + row_offset(t, H)).to(tl.float32)
                if USE_G:
                    b_a = tl.exp(tl.load(g + row_offset(t, H)).to(tl.float32))
                    b_S = b_S * b_a  # S'_t
                b_r = b_v - read(b_k, b_S)  # v - p
                b_u = b_beta * b_r
                b_dS = write(b_dS, b_q, b_do)
                # dq_t = scale S_t do_t with S_t = S' + k u^T
                b_dq = apply(b_S, b_do) + b_k * tl.sum(b_u * b_do)
                tl.store(dq + row_offset(t, (H * K)) + o_k, b_dq * scale, mask=m_k)
                b_du = read(b_k, b_dS)
                tl.store(dv + row_offset(t, (H * V)) + o_v, (b_beta * b_du).to(dv.dtype.element_ty), mask=m_v)
                tl.store(dbeta + row_offset(t, H), tl.sum(b_du * b_r))
                b_dp = -b_beta * b_du
                b_dk = apply(b_dS, b_u) + apply(b_S, b_dp)
                tl.store(dk + row_offset(t, (H * K)) + o_k, b_dk, mask=m_k)
                b_dS = write(b_dS, b_k, b_dp)
                if USE_G:
                    tl.store(dg + row_offset(t, H), tl.sum(b_S * b_dS))
                    b_dS = b_dS * b_a
        # The scratch is overwritten by the next segment.
        tl.debug_barrier()
    if STORE_DH0:
        tl.store(dh0 + i_bh * K * V + o_kv, b_dS, mask=m_kv)


class RecurrentDeltaRuleFunction(torch.autograd.Function):
    @staticmethod
    @device_guarded
    def forward(ctx, q, k, v, beta, g, scale, initial_state, output_final_state):
        B, T, H, K = q.shape
        V = v.shape[-1]
        BK, BV, warps = recurrent_tiles(K, V, wide=64)
        NV = triton.cdiv(V, BV)
        NS = triton.cdiv(T, SEGMENT)
        save = any(ctx.needs_input_grad)
        o = torch.empty_like(v)
        ht = torch.empty(B, H, K, V, device=q.device, dtype=torch.float32) if output_final_state else None
        hs = torch.empty(B, H, NS, K, V, device=q.device, dtype=torch.float32) if save else None
        _recurrent_fwd_kernel[(NV, B * H)](
            q,
            k,
            v,
            beta,
            g if g is not None else beta,
            o,
            initial_state if initial_state is not None else o,
            ht if ht is not None else o,
            hs if hs is not None else o,
            scale,
            T,
            NS,
            H=H,
            K=K,
            V=V,
            BK=BK,
            BV=BV,
            SEG=SEGMENT,
            USE_G=g is not None,
            USE_H0=initial_state is not None,
            STORE_HT=ht is not None,
            SAVE=save,
            num_warps=warps,
        )
        ctx.save_for_backward(q, k, v, beta, g, hs)
        ctx.scale = scale
        ctx.h0_dtype = initial_state.dtype if initial_state is not None else None
        return o, ht

    @staticmethod
    @device_guarded
    def backward(ctx, do, dht):
        q, k, v, beta, g, hs = ctx.saved_tensors
        B, T, H, K = q.shape
        V = v.shape[-1]
        # Three state tiles live in registers here: half the forward's value tile.
        BK, BV, warps = recurrent_tiles(K, V, wide=32)
        NV = triton.cdiv(V, BV)
        NS = hs.shape[2]
        do = do.contiguous()
        dht = dht.contiguous() if dht is not None else None
        f32 = dict(device=q.device, dtype=torch.float32)
        dq = torch.empty(NV, B, T, H, K, **f32)
        dk = torch.empty_like(dq)
        dbeta = torch.empty(NV, B, T, H, **f32)
        dg = torch.empty_like(dbeta) if g is not None else None
        dv = torch.empty_like(v)
        want_dh0 = ctx.h0_dtype is not None and ctx.needs_input_grad[6]
        dh0 = torch.empty(B, H, K, V, **f32) if want_dh0 else None
        scratch = torch.empty(B * H * NV, SEGMENT, BK, BV, **f32)
        _recurrent_bwd_kernel[(NV, B * H)](
            q,
            k,
            v,
            beta,
            g if g is not None else beta,
            do,
            hs,
            dht if dht is not None else hs,
            dq,
            dk,
            dv,
            dbeta,
            dg if dg is not None else dbeta,
            dh0 if dh0 is not None else hs,
            scratch,
            ctx.scale,
            T,
            NS,
            B,
            H=H,
            K=K,
            V=V,
            BK=BK,
            BV=BV,
            SEG=SEGMENT,
            USE_G=g is not None,
            USE_DHT=dht is not None,
            STORE_DH0=want_dh0,
            num_warps=warps,
        )
        dq, dk, dbeta = dq.sum(0).to(q.dtype), dk.sum(0).to(k.dtype), dbeta.sum(0).to(beta.dtype)
        dg = dg.sum(0).to(g.dtype) if dg is not None else None
        dh0 = dh0.to(ctx.h0_dtype) if dh0 is not None else None
        return dq, dk, dv, dbeta, dg, None, dh0, None


def recurrent_delta_rule(q, k, v, beta, g=None, scale=None, initial_state=None, output_final_state=False):
    q, k, v, beta, g, scale, initial_state = prepare_inputs(q, k, v, beta, g, scale, initial_state)
    return RecurrentDeltaRuleFunction.apply(q, k, v, beta, g, scale, initial_state, output_final_state)
