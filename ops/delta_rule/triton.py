"""The delta rule (DeltaNet, Gated DeltaNet) in Triton: chunked kernels and a fused recurrent kernel, each with
its backward.

    S_t = a_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T ;   o_t = scale * q_t^T S_t   (see reference.py)

a_t = exp(g_t) (g [B, T, H], one log decay per head) or 1 (g=None). S [K, V] per (batch, head), fp32.

Chunked (``chunk_delta_rule``, chunks of BT = 64 positions): the WY / UT form of torch.py. In a chunk, with h
the state before it, G the log decays summed from the chunk start, D_ij = exp(G_i - G_j) (j <= i) and
L_ij = beta_i D_ij k_i . k_j (j < i):

    X = (I + L)^-1   (forward substitution, row by row, in fp32)          (_chunk_prep_kernel, per chunk)
    U = X diag(beta) V ;  W = X diag(beta exp(G)) K ;  Aqk = (Q K^T) * D
    u = U - W h ;  h_next = exp(G_last) h + (K exp(G_last - G))^T u        (_chunk_fwd_h_kernel, a loop over
                                                                            chunks per value tile)
    o = scale (diag(exp G) Q h + Aqk u)                                    (_chunk_fwd_o_kernel)

The backward recomputes all of that, walks the chunks backwards for the state's gradient (dh' the
gradient of h_next: du = scale Aqk^T do + (K exp(G_last - G)) dh', dh = exp(G_last) dh' + scale
(Q exp(G))^T do - W^T du; _chunk_bwd_dh_kernel), then takes every input's gradient chunk by chunk through
the triangular solve (d(I + L) = -X^T [du, -du h^T] [U, W]^T below the diagonal; _chunk_bwd_kernel).
Every exponent is masked to j <= i before exp: none is positive. u = U - W h needs the whole key
dimension of the state: the sequential kernels keep their program's state columns in h / dh (global
memory) and read them back key tile by key tile, so head dims up to 256 need no [256, BV] register tile.

Recurrent (``recurrent_delta_rule``): each value column s_j of the state evolves on its own,

    s_j <- a s_j ;   p_j = k . s_j ;   u_j = beta (v_j - p_j) ;   s_j <- s_j + k u_j ;   o_j = scale q . s_j

so one program owns (batch, head, a tile of value columns) with the whole key dimension, and walks the
sequence with the state tile in registers: the decoding path (a few tokens, no chunk padding).

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

All states and accumulations are fp32; inputs may be fp32, fp16 or bf16 (the chunked kernels' matmul
operands take the inputs' type, fp32 ones run in IEEE precision).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._dispatch import triton_interpreting
from .._triton_utils import device_guarded, row_offset

# Steps between the recurrent forward's state checkpoints (and the backward's scratch depth).
SEGMENT = 32
# Positions per chunk of the chunked kernels (BT).
CHUNK = 64
# Warps for the chunked kernels, which hold [BT, BT] and [BT, 64] fp32 tiles.
WIDE_WARPS = 8
# Key / value tile of the chunked backward's per-chunk kernel, and the key tile of its reverse pass before
# sm_90 for K <= 64 (64 elsewhere).
BWD_TILE = 32
# The kernels that read back what they wrote (the states in h / dh, the partial dq / dk) run without
# software pipelining: a load prefetched for a later iteration must not pass the barrier before it. It also
# keeps their shared memory small (A100: 163 KiB per block).
SELF_READ_STAGES = 1


# -- fused recurrent kernels ------------------------------------------------------------------------------
#
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
    i_b, i_h = (i_bh // H).to(tl.int64), i_bh % H
    i_bh = i_bh.to(tl.int64)
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
    b_S = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_H0:
        b_S += tl.load(h0 + i_bh * K * V + o_kv, mask=m_kv, other=0.0).to(tl.float32)
    for t in range(T):
        if SAVE:
            if t % SEG == 0:
                tl.store(hs + row_offset(t // SEG, K * V) + o_kv, b_S, mask=m_kv)
        b_q = tl.load(q + row_offset(t, (H * K)) + o_k, mask=m_k, other=0.0).to(tl.float32) * scale
        b_k = tl.load(k + row_offset(t, (H * K)) + o_k, mask=m_k, other=0.0).to(tl.float32)
        b_v = tl.load(v + row_offset(t, (H * V)) + o_v, mask=m_v, other=0.0).to(tl.float32)
        b_beta = tl.load(beta + row_offset(t, H)).to(tl.float32)
        if USE_G:
            b_S = b_S * tl.exp(tl.load(g + row_offset(t, H)).to(tl.float32))
        b_p = tl.sum(b_S * b_k[:, None], axis=0)
        b_u = b_beta * (b_v - b_p)
        b_S += b_k[:, None] * b_u[None, :]
        b_o = tl.sum(b_S * b_q[:, None], axis=0)
        tl.store(o + row_offset(t, (H * V)) + o_v, b_o.to(o.dtype.element_ty), mask=m_v)
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
    i_b, i_h = (i_bh // H).to(tl.int64), i_bh % H
    i_bh = i_bh.to(tl.int64)
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

    b_dS = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_DHT:
        b_dS += tl.load(dht + i_bh * K * V + o_kv, mask=m_kv, other=0.0).to(tl.float32)
    for i_n in range(NS):
        n = NS - 1 - i_n
        # Forward through the segment from its checkpoint, keeping the state before every step.
        b_S = tl.load(hs + row_offset(n, K * V) + o_kv, mask=m_kv, other=0.0)
        for s in range(SEG):
            t = n * SEG + s
            if t < T:
                tl.store(scratch + s * BK * BV + o_sc, b_S)
                b_k = tl.load(k + row_offset(t, (H * K)) + o_k, mask=m_k, other=0.0).to(tl.float32)
                b_v = tl.load(v + row_offset(t, (H * V)) + o_v, mask=m_v, other=0.0).to(tl.float32)
                b_beta = tl.load(beta + row_offset(t, H)).to(tl.float32)
                if USE_G:
                    b_S = b_S * tl.exp(tl.load(g + row_offset(t, H)).to(tl.float32))
                b_u = b_beta * (b_v - tl.sum(b_S * b_k[:, None], axis=0))
                b_S += b_k[:, None] * b_u[None, :]
        # The stores above are read back below by other threads of the program.
        tl.debug_barrier()
        for j in range(SEG):
            s = SEG - 1 - j
            t = n * SEG + s
            if t < T:
                b_S = tl.load(scratch + s * BK * BV + o_sc)  # S_{t-1}
                b_q = tl.load(q + row_offset(t, (H * K)) + o_k, mask=m_k, other=0.0).to(tl.float32) * scale
                b_k = tl.load(k + row_offset(t, (H * K)) + o_k, mask=m_k, other=0.0).to(tl.float32)
                b_v = tl.load(v + row_offset(t, (H * V)) + o_v, mask=m_v, other=0.0).to(tl.float32)
                b_do = tl.load(do + row_offset(t, (H * V)) + o_v, mask=m_v, other=0.0).to(tl.float32)
                b_beta = tl.load(beta + row_offset(t, H)).to(tl.float32)
                if USE_G:
                    b_a = tl.exp(tl.load(g + row_offset(t, H)).to(tl.float32))
                    b_S = b_S * b_a  # S'_t
                b_r = b_v - tl.sum(b_S * b_k[:, None], axis=0)  # v - p
                b_u = b_beta * b_r
                b_dS += b_q[:, None] * b_do[None, :]
                # dq_t = scale S_t do_t with S_t = S' + k u^T
                b_dq = tl.sum(b_S * b_do[None, :], axis=1) + b_k * tl.sum(b_u * b_do)
                tl.store(dq + row_offset(t, (H * K)) + o_k, b_dq * scale, mask=m_k)
                b_du = tl.sum(b_dS * b_k[:, None], axis=0)
                tl.store(dv + row_offset(t, (H * V)) + o_v, (b_beta * b_du).to(dv.dtype.element_ty), mask=m_v)
                tl.store(dbeta + row_offset(t, H), tl.sum(b_du * b_r))
                b_dp = -b_beta * b_du
                b_dk = tl.sum(b_dS * b_u[None, :], axis=1) + tl.sum(b_S * b_dp[None, :], axis=1)
                tl.store(dk + row_offset(t, (H * K)) + o_k, b_dk, mask=m_k)
                b_dS += b_k[:, None] * b_dp[None, :]
                if USE_G:
                    tl.store(dg + row_offset(t, H), tl.sum(b_S * b_dS))
                    b_dS = b_dS * b_a
        # The scratch is overwritten by the next segment.
        tl.debug_barrier()
    if STORE_DH0:
        tl.store(dh0 + i_bh * K * V + o_kv, b_dS, mask=m_kv)


def _recurrent_blocks(K, V, backward):
    BK = triton.next_power_of_2(K)
    # The state tiles [BK, BV] live in registers (three of them in the backward): narrower value tiles and
    # more warps for wide keys.
    if backward:
        BV = min(triton.next_power_of_2(V), 32 if BK <= 64 else 16)
    else:
        BV = min(triton.next_power_of_2(V), 64 if BK <= 64 else 32)
    return BK, BV, 4 if BK <= 64 else 8


class RecurrentDeltaRuleFunction(torch.autograd.Function):
    @staticmethod
    @device_guarded
    def forward(ctx, q, k, v, beta, g, scale, initial_state, output_final_state):
        B, T, H, K = q.shape
        V = v.shape[-1]
        BK, BV, warps = _recurrent_blocks(K, V, backward=False)
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
        BK, BV, warps = _recurrent_blocks(K, V, backward=True)
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


# -- chunked kernels --------------------------------------------------------------------------------------
#
# Layouts besides the inputs': G [B, H, T_pad] (log decays summed within each chunk; positions past T get
# g = 0, so G is flat to the chunk's end); Ai, Aqk [B, H, NT, BT, BT]; W, dq/dk scratch [B, H, T_pad, K] or
# [B, T, H, K]; U, u, du [B, H, T_pad, V]; h, dh [B, H, NT + 1, K, V] (h[n] the state before chunk n,
# h[NT] the final one; dh[n] the gradient of h[n]). DT is the matmul operand type: fp32 (IEEE) for fp32
# inputs, the inputs' type for fp16 / bf16 (fp32 under the interpreter for bf16: numpy has no bf16).


@triton.jit
def _chunk_prep_kernel(
    q,
    k,
    v,
    beta,
    g,
    G,
    Ai,
    Aqk,
    W,
    U,
    T,
    NT,
    H: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    USE_G: tl.constexpr,
    DT: tl.constexpr,
):
    # One program per (chunk, batch * head): the scores, the triangular solve, W and U.
    i_n, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = (i_bh // H).to(tl.int64), i_bh % H
    i_bh = i_bh.to(tl.int64)
    x_s = i_b * T * H + i_h
    q += x_s * K
    k += x_s * K
    v += x_s * V
    beta += x_s
    g += x_s
    o_r = tl.arange(0, BT)
    o_t = i_n * BT + o_r
    m_t = o_t < T
    b_beta = tl.load(beta + row_offset(o_t, H), mask=m_t, other=0.0).to(tl.float32)
    lower = o_r[:, None] >= o_r[None, :]
    strict = o_r[:, None] > o_r[None, :]
    if USE_G:
        b_g = tl.load(g + row_offset(o_t, H), mask=m_t, other=0.0).to(tl.float32)
        b_G = tl.cumsum(b_g, axis=0)
        tl.store(G + i_bh * NT * BT + o_t, b_G)
        # D_ij = exp(G_i - G_j) for j <= i: masked before the exponential, so never exp(+large).
        b_D = tl.exp(tl.where(lower, b_G[:, None] - b_G[None, :], float("-inf")))
        b_gamma = tl.exp(b_G)
    else:
        b_D = tl.where(lower, 1.0, 0.0)
        b_gamma = tl.full([BT], 1.0, dtype=tl.float32)
    b_kk = tl.zeros([BT, BT], dtype=tl.float32)
    b_qk = tl.zeros([BT, BT], dtype=tl.float32)
    for i_k in range(0, K, BK):
        o_k = i_k + tl.arange(0, BK)
        m_tk = m_t[:, None] & (o_k < K)[None, :]
        o_x = row_offset(o_t[:, None], (H * K)) + o_k[None, :]
        b_k = tl.load(k + o_x, mask=m_tk, other=0.0).to(DT)
        b_q = tl.load(q + o_x, mask=m_tk, other=0.0).to(DT)
        b_kk += tl.dot(b_k, tl.trans(b_k), input_precision="ieee")
        b_qk += tl.dot(b_q, tl.trans(b_k), input_precision="ieee")
    o_cc = (i_bh * NT + i_n) * BT * BT + o_r[:, None] * BT + o_r[None, :]
    tl.store(Aqk + o_cc, b_qk * b_D)
    # (I + L)^-1 with L_ij = beta_i D_ij k_i . k_j (j < i), by forward substitution, row by row:
    # X_i = e_i - sum_{j < i} L_ij X_j (L_ij = 0 for j >= i, so summing over every row is the same).
    b_L = tl.where(strict, b_beta[:, None] * b_D * b_kk, 0.0)
    b_X = tl.where(o_r[:, None] == o_r[None, :], 1.0, 0.0)
    for i in range(1, BT):
        b_l = tl.sum(tl.where(o_r[:, None] == i, b_L, 0.0), axis=0)  # row i of L, over j
        b_x = tl.where(o_r == i, 1.0, 0.0) - tl.sum(b_l[:, None] * b_X, axis=0)
        b_X = tl.where(o_r[:, None] == i, b_x[None, :], b_X)
    tl.store(Ai + o_cc, b_X)
    b_Xd = b_X.to(DT)
    # W = X diag(beta exp(G)) K, U = X diag(beta) V.
    for i_k in range(0, K, BK):
        o_k = i_k + tl.arange(0, BK)
        m_k = o_k < K
        b_k = tl.load(
            k + row_offset(o_t[:, None], (H * K)) + o_k[None, :], mask=m_t[:, None] & m_k[None, :], other=0.0
        ).to(tl.float32)
        b_w = tl.dot(b_Xd, (b_k * (b_beta * b_gamma)[:, None]).to(DT), input_precision="ieee")
        tl.store(W + i_bh * NT * BT * K + row_offset(o_t[:, None], K) + o_k[None, :], b_w, mask=m_k[None, :])
    for i_v in range(0, V, BV):
        o_v = i_v + tl.arange(0, BV)
        m_v = o_v < V
        b_v = tl.load(
            v + row_offset(o_t[:, None], (H * V)) + o_v[None, :], mask=m_t[:, None] & m_v[None, :], other=0.0
        ).to(tl.float32)
        b_u = tl.dot(b_Xd, (b_v * b_beta[:, None]).to(DT), input_precision="ieee")
        tl.store(U + i_bh * NT * BT * V + row_offset(o_t[:, None], V) + o_v[None, :], b_u, mask=m_v[None, :])


@triton.jit
def _chunk_fwd_h_kernel(
    k,
    G,
    W,
    U,
    u,
    h,
    h0,
    T,
    NT,
    H: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    USE_G: tl.constexpr,
    USE_H0: tl.constexpr,
    DT: tl.constexpr,
):
    # The sequential pass over chunks, one program per (value tile, batch * head). u = U - W h needs the
    # whole key dimension of the state: the state lives in h (global memory, the program's own columns),
    # read back key tile by key tile.
    i_v, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = (i_bh // H).to(tl.int64), i_bh % H
    i_bh = i_bh.to(tl.int64)
    k += (i_b * T * H + i_h) * K
    G += i_bh * NT * BT
    W += i_bh * NT * BT * K
    U += i_bh * NT * BT * V
    u += i_bh * NT * BT * V
    h += i_bh * (NT + 1) * K * V
    o_r = tl.arange(0, BT)
    o_v = i_v * BV + tl.arange(0, BV)
    m_v = o_v < V
    for i_k in range(0, K, BK):
        o_k = i_k + tl.arange(0, BK)
        m_kv = (o_k < K)[:, None] & m_v[None, :]
        o_kv = o_k[:, None] * V + o_v[None, :]
        b_h = tl.zeros([BK, BV], dtype=tl.float32)
        if USE_H0:
            b_h += tl.load(h0 + i_bh * K * V + o_kv, mask=m_kv, other=0.0).to(tl.float32)
        tl.store(h + o_kv, b_h, mask=m_kv)
    tl.debug_barrier()
    for i_n in range(NT):
        o_t = i_n * BT + o_r
        m_t = o_t < T
        o_tv = row_offset(o_t[:, None], V) + o_v[None, :]
        b_u = tl.load(U + o_tv, mask=m_v[None, :], other=0.0)
        for i_k in range(0, K, BK):
            o_k = i_k + tl.arange(0, BK)
            m_k = o_k < K
            b_w = tl.load(W + row_offset(o_t[:, None], K) + o_k[None, :], mask=m_k[None, :], other=0.0)
            b_h = tl.load(
                h + row_offset(i_n, K * V) + o_k[:, None] * V + o_v[None, :],
                mask=m_k[:, None] & m_v[None, :],
                other=0.0,
            )
            b_u -= tl.dot(b_w.to(DT), b_h.to(DT), input_precision="ieee")
        tl.store(u + o_tv, b_u, mask=m_v[None, :])
        b_ud = b_u.to(DT)
        if USE_G:
            b_G = tl.load(G + o_t)
            b_Gl = tl.load(G + i_n * BT + BT - 1)
            b_e = tl.exp(b_Gl - b_G)
            b_gl = tl.exp(b_Gl)
        for i_k in range(0, K, BK):
            o_k = i_k + tl.arange(0, BK)
            m_k = o_k < K
            m_kv = m_k[:, None] & m_v[None, :]
            o_kv = o_k[:, None] * V + o_v[None, :]
            b_k = tl.load(
                k + row_offset(o_t[:, None], (H * K)) + o_k[None, :],
                mask=m_t[:, None] & m_k[None, :],
                other=0.0,
            ).to(tl.float32)
            b_h = tl.load(h + row_offset(i_n, K * V) + o_kv, mask=m_kv, other=0.0)
            if USE_G:
                b_k = b_k * b_e[:, None]
                b_h = b_h * b_gl
            b_h += tl.dot(tl.trans(b_k.to(DT)), b_ud, input_precision="ieee")
            tl.store(h + row_offset(i_n + 1, K * V) + o_kv, b_h, mask=m_kv)
        tl.debug_barrier()


@triton.jit
def _chunk_fwd_o_kernel(
    q,
    G,
    Aqk,
    h,
    u,
    o,
    scale,
    T,
    NT,
    H: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    USE_G: tl.constexpr,
    DT: tl.constexpr,
):
    # o = scale (diag(exp G) Q h_n + Aqk u), Aqk = (Q K^T) * D on and below the diagonal.
    i_v, i_n, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = (i_bh // H).to(tl.int64), i_bh % H
    i_bh = i_bh.to(tl.int64)
    q += (i_b * T * H + i_h) * K
    o += (i_b * T * H + i_h) * V
    h += (i_bh * (NT + 1) + i_n) * K * V
    o_r = tl.arange(0, BT)
    o_t = i_n * BT + o_r
    o_v = i_v * BV + tl.arange(0, BV)
    m_t, m_v = o_t < T, o_v < V
    b_o = tl.zeros([BT, BV], dtype=tl.float32)
    for i_k in range(0, K, BK):
        o_k = i_k + tl.arange(0, BK)
        m_k = o_k < K
        b_q = tl.load(
            q + row_offset(o_t[:, None], (H * K)) + o_k[None, :], mask=m_t[:, None] & m_k[None, :], other=0.0
        )
        b_h = tl.load(h + o_k[:, None] * V + o_v[None, :], mask=m_k[:, None] & m_v[None, :], other=0.0)
        b_o += tl.dot(b_q.to(DT), b_h.to(DT), input_precision="ieee")
    if USE_G:
        b_o = b_o * tl.exp(tl.load(G + i_bh * NT * BT + o_t))[:, None]
    b_A = tl.load(Aqk + (i_bh * NT + i_n) * BT * BT + o_r[:, None] * BT + o_r[None, :])
    b_u = tl.load(u + i_bh * NT * BT * V + row_offset(o_t[:, None], V) + o_v[None, :], mask=m_v[None, :])
    b_o += tl.dot(b_A.to(DT), b_u.to(DT), input_precision="ieee")
    tl.store(
        o + row_offset(o_t[:, None], (H * V)) + o_v[None, :],
        (b_o * scale).to(o.dtype.element_ty),
        mask=m_t[:, None] & m_v[None, :],
    )


@triton.jit
def _chunk_bwd_dh_kernel(
    q,
    k,
    do,
    G,
    Aqk,
    W,
    du,
    dh,
    dht,
    scale,
    T,
    NT,
    H: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    USE_G: tl.constexpr,
    USE_DHT: tl.constexpr,
    DT: tl.constexpr,
):
    # The reverse pass over chunks: with dh' the gradient of the state after chunk n,
    #   du   = scale Aqk^T do + (k exp(G_last - G)) dh'
    #   dh_n = exp(G_last) dh' + scale (q exp(G))^T do - W^T du
    # the gradient lives in dh (global memory, the program's own columns), as the state in the forward.
    i_v, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = (i_bh // H).to(tl.int64), i_bh % H
    i_bh = i_bh.to(tl.int64)
    q += (i_b * T * H + i_h) * K
    k += (i_b * T * H + i_h) * K
    do += (i_b * T * H + i_h) * V
    G += i_bh * NT * BT
    W += i_bh * NT * BT * K
    du += i_bh * NT * BT * V
    dh += i_bh * (NT + 1) * K * V
    o_r = tl.arange(0, BT)
    o_v = i_v * BV + tl.arange(0, BV)
    m_v = o_v < V
    for i_k in range(0, K, BK):
        o_k = i_k + tl.arange(0, BK)
        m_kv = (o_k < K)[:, None] & m_v[None, :]
        o_kv = o_k[:, None] * V + o_v[None, :]
        b_dh = tl.zeros([BK, BV], dtype=tl.float32)
        if USE_DHT:
            b_dh += tl.load(dht + i_bh * K * V + o_kv, mask=m_kv, other=0.0).to(tl.float32)
        tl.store(dh + row_offset(NT, K * V) + o_kv, b_dh, mask=m_kv)
    tl.debug_barrier()
    for i in range(NT):
        i_n = NT - 1 - i
        o_t = i_n * BT + o_r
        m_t = o_t < T
        b_do = tl.load(
            do + row_offset(o_t[:, None], (H * V)) + o_v[None, :], mask=m_t[:, None] & m_v[None, :], other=0.0
        ).to(DT)
        b_A = tl.load(Aqk + (i_bh * NT + i_n) * BT * BT + o_r[:, None] * BT + o_r[None, :])
        b_du = tl.dot(tl.trans(b_A).to(DT), b_do, input_precision="ieee") * scale
        if USE_G:
            b_G = tl.load(G + o_t)
            b_Gl = tl.load(G + i_n * BT + BT - 1)
            b_e = tl.exp(b_Gl - b_G)
            b_gl = tl.exp(b_Gl)
        for i_k in range(0, K, BK):
            o_k = i_k + tl.arange(0, BK)
            m_k = o_k < K
            b_k = tl.load(
                k + row_offset(o_t[:, None], (H * K)) + o_k[None, :],
                mask=m_t[:, None] & m_k[None, :],
                other=0.0,
            ).to(tl.float32)
            if USE_G:
                b_k = b_k * b_e[:, None]
            b_dh = tl.load(
                dh + row_offset(i_n + 1, K * V) + o_k[:, None] * V + o_v[None, :],
                mask=m_k[:, None] & m_v[None, :],
                other=0.0,
            )
            b_du += tl.dot(b_k.to(DT), b_dh.to(DT), input_precision="ieee")
        tl.store(du + row_offset(o_t[:, None], V) + o_v[None, :], b_du, mask=m_v[None, :])
        b_dud = b_du.to(DT)
        for i_k in range(0, K, BK):
            o_k = i_k + tl.arange(0, BK)
            m_k = o_k < K
            m_kv = m_k[:, None] & m_v[None, :]
            o_kv = o_k[:, None] * V + o_v[None, :]
            b_q = tl.load(
                q + row_offset(o_t[:, None], (H * K)) + o_k[None, :],
                mask=m_t[:, None] & m_k[None, :],
                other=0.0,
            ).to(tl.float32)
            b_w = tl.load(W + row_offset(o_t[:, None], K) + o_k[None, :], mask=m_k[None, :], other=0.0)
            b_dh = tl.load(dh + row_offset(i_n + 1, K * V) + o_kv, mask=m_kv, other=0.0)
            b_q = b_q * scale
            if USE_G:
                b_q = b_q * tl.exp(b_G)[:, None]
                b_dh = b_dh * b_gl
            b_dh += tl.dot(tl.trans(b_q.to(DT)), b_do, input_precision="ieee")
            b_dh -= tl.dot(tl.trans(b_w.to(DT)), b_dud, input_precision="ieee")
            tl.store(dh + row_offset(i_n, K * V) + o_kv, b_dh, mask=m_kv)
        tl.debug_barrier()


@triton.jit
def _chunk_bwd_kernel(
    q,
    k,
    v,
    beta,
    do,
    G,
    Ai,
    Aqk,
    u,
    du,
    h,
    dh,
    dq,
    dk,
    dv,
    dbeta,
    dg,
    scale,
    T,
    NT,
    H: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    USE_G: tl.constexpr,
    DT: tl.constexpr,
):
    # One program per (chunk, batch * head): every gradient of the chunk's inputs, given du (the gradient
    # of the written values u = U - W h), dh' = dh[n + 1] and h = h[n]. With X = (I + L)^-1:
    #   dR = X^T [dU, dW] (dU = du, dW = -du h^T);  dL = -(dR_u U^T + dR_w W^T) below the diagonal,
    #   where dR_w W^T = -X^T du (W h)^T = -dR_u (U - u)^T: dL = -dR_u u^T, no key loop needed for it
    #   dv = beta dR_u;  dk gets beta exp(G) dR_w, exp(G_last - G) (u dh'^T), (E + E^T) K with
    #   E = dL * beta_i D_ij, and the intra-chunk output's (dP * D)^T Q (dP = scale do u^T);
    #   dq = scale exp(G) do h^T + (dP * D) K.  dG collects every exponent's share; dg sums it backwards.
    # Register budget (sm_80's mma.sync keeps both operands of every dot in registers, where sm_90's
    # wgmma reads them from shared memory): few [BT, BT] fp32 tiles live at once. The key loop holds
    # none but X^T; dL and dP are summed in the value loop, K K^T in a loop of its own, D is made after
    # the loops and Q K^T * D read back from Aqk.
    i_n, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = (i_bh // H).to(tl.int64), i_bh % H
    i_bh = i_bh.to(tl.int64)
    x_s = i_b * T * H + i_h
    q += x_s * K
    k += x_s * K
    dq += x_s * K
    dk += x_s * K
    v += x_s * V
    do += x_s * V
    dv += x_s * V
    beta += x_s
    dbeta += x_s
    dg += x_s
    G += i_bh * NT * BT
    u += i_bh * NT * BT * V
    du += i_bh * NT * BT * V
    h += (i_bh * (NT + 1) + i_n) * K * V
    dh += (i_bh * (NT + 1) + i_n + 1) * K * V
    o_r = tl.arange(0, BT)
    o_t = i_n * BT + o_r
    m_t = o_t < T
    o_cc = (i_bh * NT + i_n) * BT * BT + o_r[:, None] * BT + o_r[None, :]
    b_beta = tl.load(beta + row_offset(o_t, H), mask=m_t, other=0.0).to(tl.float32)
    if USE_G:
        b_G = tl.load(G + o_t)
        b_Gl = tl.load(G + i_n * BT + BT - 1)
        b_gamma = tl.exp(b_G)
        b_e = tl.exp(b_Gl - b_G)
    else:
        b_gamma = tl.full([BT], 1.0, dtype=tl.float32)
        b_e = tl.full([BT], 1.0, dtype=tl.float32)
    b_XT = tl.trans(tl.load(Ai + o_cc)).to(DT)
    b_dbeta = tl.zeros([BT], dtype=tl.float32)
    b_dG = tl.zeros([BT], dtype=tl.float32)
    b_dGl = tl.zeros([BT], dtype=tl.float32)  # shares of G_last, per position j (summed at the end)
    b_hdh = tl.zeros([BK], dtype=tl.float32)  # <h, dh'>, per key row
    # Keys: dW, the inter-chunk parts of dq and dk; dq and dk so far go to their outputs (fp32), finished
    # below once dL is whole.
    for i_k in range(0, K, BK):
        o_k = i_k + tl.arange(0, BK)
        m_k = o_k < K
        m_tk = m_t[:, None] & m_k[None, :]
        o_xk = row_offset(o_t[:, None], (H * K)) + o_k[None, :]
        b_dW = tl.zeros([BT, BK], dtype=tl.float32)
        b_dqi = tl.zeros([BT, BK], dtype=tl.float32)
        b_dKd = tl.zeros([BT, BK], dtype=tl.float32)
        for i_v in range(0, V, BV):
            o_v = i_v + tl.arange(0, BV)
            m_v = o_v < V
            m_kv = m_k[:, None] & m_v[None, :]
            o_kv = o_k[:, None] * V + o_v[None, :]
            o_sv = row_offset(o_t[:, None], V) + o_v[None, :]
            b_du = tl.load(du + o_sv, mask=m_v[None, :], other=0.0).to(DT)
            b_u = tl.load(u + o_sv, mask=m_v[None, :], other=0.0).to(DT)
            b_do = tl.load(
                do + row_offset(o_t[:, None], (H * V)) + o_v[None, :],
                mask=m_t[:, None] & m_v[None, :],
                other=0.0,
            ).to(DT)
            b_h = tl.load(h + o_kv, mask=m_kv, other=0.0)
            b_dh = tl.load(dh + o_kv, mask=m_kv, other=0.0)
            b_hT = tl.trans(b_h.to(DT))
            b_dW -= tl.dot(b_du, b_hT, input_precision="ieee")
            b_dqi += tl.dot(b_do, b_hT, input_precision="ieee")
            b_dKd += tl.dot(b_u, tl.trans(b_dh.to(DT)), input_precision="ieee")
            if USE_G:
                b_hdh += tl.sum(b_h * b_dh, axis=1)
        b_dRw = tl.dot(b_XT, b_dW.to(DT), input_precision="ieee")
        b_kf = tl.load(k + o_xk, mask=m_tk, other=0.0).to(tl.float32)
        b_rw = tl.sum(b_dRw * b_kf, axis=1)
        b_dbeta += b_gamma * b_rw
        b_dqi = b_dqi * (scale * b_gamma)[:, None]
        b_dk = (b_beta * b_gamma)[:, None] * b_dRw + b_e[:, None] * b_dKd
        if USE_G:
            b_q = tl.load(q + o_xk, mask=m_tk, other=0.0).to(tl.float32)
            b_ek = b_e * tl.sum(b_dKd * b_kf, axis=1)
            b_dG += b_beta * b_gamma * b_rw + tl.sum(b_q * b_dqi, axis=1) - b_ek
            b_dGl += b_ek
        tl.store(dq + o_xk, b_dqi, mask=m_tk)
        tl.store(dk + o_xk, b_dk, mask=m_tk)
    # Values: dv, beta's share through U, dL and dP.
    b_dL = tl.zeros([BT, BT], dtype=tl.float32)
    b_dP = tl.zeros([BT, BT], dtype=tl.float32)
    for i_v in range(0, V, BV):
        o_v = i_v + tl.arange(0, BV)
        m_v = o_v < V
        m_tv = m_t[:, None] & m_v[None, :]
        o_sv = row_offset(o_t[:, None], V) + o_v[None, :]
        o_xv = row_offset(o_t[:, None], (H * V)) + o_v[None, :]
        b_du = tl.load(du + o_sv, mask=m_v[None, :], other=0.0)
        b_dRu = tl.dot(b_XT, b_du.to(DT), input_precision="ieee")
        tl.store(dv + o_xv, (b_dRu * b_beta[:, None]).to(dv.dtype.element_ty), mask=m_tv)
        b_v = tl.load(v + o_xv, mask=m_tv, other=0.0).to(tl.float32)
        b_dbeta += tl.sum(b_dRu * b_v, axis=1)
        b_u = tl.load(u + o_sv, mask=m_v[None, :], other=0.0)
        b_dL += tl.dot(b_dRu.to(DT), tl.trans(b_u.to(DT)), input_precision="ieee")
        b_do = tl.load(do + o_xv, mask=m_tv, other=0.0)
        b_dP += tl.dot(b_do.to(DT), tl.trans(b_u.to(DT)), input_precision="ieee")
    b_kk = tl.zeros([BT, BT], dtype=tl.float32)
    for i_k in range(0, K, BK):
        o_k = i_k + tl.arange(0, BK)
        b_k = tl.load(
            k + row_offset(o_t[:, None], (H * K)) + o_k[None, :],
            mask=m_t[:, None] & (o_k < K)[None, :],
            other=0.0,
        ).to(DT)
        b_kk += tl.dot(b_k, tl.trans(b_k), input_precision="ieee")
    lower = o_r[:, None] >= o_r[None, :]
    strict = o_r[:, None] > o_r[None, :]
    if USE_G:
        # D_ij = exp(G_i - G_j) for j <= i: masked before the exponential, so never exp(+large).
        b_D = tl.exp(tl.where(lower, b_G[:, None] - b_G[None, :], float("-inf")))
    else:
        b_D = tl.where(lower, 1.0, 0.0)
    b_dLD = tl.where(strict, -b_dL, 0.0) * b_D
    b_dbeta += tl.sum(b_dLD * b_kk, axis=1)
    b_E = b_dLD * b_beta[:, None]
    b_dPs = tl.where(lower, b_dP * scale, 0.0)
    if USE_G:
        # The share of every D_ij (its exponent is G_i - G_j); dP's goes through Aqk = (Q K^T) * D.
        b_Z = b_E * b_kk
        b_dG += tl.sum(b_Z, axis=1) - tl.sum(b_Z, axis=0)
        b_Z = b_dPs * tl.load(Aqk + o_cc)
        b_dG += tl.sum(b_Z, axis=1) - tl.sum(b_Z, axis=0)
        # h' = exp(G_last) h + ...: G_last's share from the state passed on.
        b_dG += tl.where(o_r == BT - 1, tl.sum(b_dGl) + tl.exp(b_Gl) * tl.sum(b_hdh), 0.0)
    b_dPD = b_dPs * b_D
    # The partial dq and dk stored above are read back by other threads of the program.
    tl.debug_barrier()
    # E is strictly lower triangular: E + E^T is exact, one matmul for both.
    b_EEd = (b_E + tl.trans(b_E)).to(DT)
    b_dPDd = b_dPD.to(DT)
    b_dPDTd = tl.trans(b_dPD).to(DT)
    for i_k in range(0, K, BK):
        o_k = i_k + tl.arange(0, BK)
        m_tk = m_t[:, None] & (o_k < K)[None, :]
        o_xk = row_offset(o_t[:, None], (H * K)) + o_k[None, :]
        b_k = tl.load(k + o_xk, mask=m_tk, other=0.0).to(DT)
        b_dq = tl.load(dq + o_xk, mask=m_tk, other=0.0)
        b_dq += tl.dot(b_dPDd, b_k, input_precision="ieee")
        tl.store(dq + o_xk, b_dq, mask=m_tk)
        b_q = tl.load(q + o_xk, mask=m_tk, other=0.0).to(DT)
        b_dk = tl.load(dk + o_xk, mask=m_tk, other=0.0)
        b_dk += tl.dot(b_EEd, b_k, input_precision="ieee")
        b_dk += tl.dot(b_dPDTd, b_q, input_precision="ieee")
        tl.store(dk + o_xk, b_dk, mask=m_tk)
    tl.store(dbeta + row_offset(o_t, H), b_dbeta, mask=m_t)
    if USE_G:
        # G_i = sum_{l <= i} g_l within the chunk: dg_l = sum_{i >= l} dG_i, G_last collecting its own share.
        b_dg = tl.sum(b_dG, axis=0) - tl.cumsum(b_dG, axis=0) + b_dG
        tl.store(dg + row_offset(o_t, H), b_dg, mask=m_t)


# -- host side of the chunked kernels ---------------------------------------------------------------------


def _block(dim: int, cap: int) -> int:
    # tl.dot needs every dimension >= 16; masks cover the padding.
    return min(cap, max(16, triton.next_power_of_2(dim)))


def _dot_dtype(x: torch.Tensor):
    """The matmul operand type: fp32 (IEEE) for fp32 inputs, the inputs' own for fp16 / bf16 - except bf16
    under the interpreter, whose bf16 matmuls are wrong (numpy has no bf16): fp32 there."""
    if x.dtype == torch.float16:
        return tl.float16
    if x.dtype == torch.bfloat16 and not triton_interpreting():
        return tl.bfloat16
    return tl.float32


def _dh_key_tile(K: int) -> int:
    """The key tile of _chunk_bwd_dh_kernel's loops. Before sm_90 (A100: mma.sync) a matmul holds both its
    operands in registers; with K <= 64 one 64-wide key tile makes each key loop a single pass, whose loads
    the compiler hoists next to the [BT, BV] du, do and A^T: ptxas spills (128-144 B at bf16, 28 KB at fp32).
    Two 32-wide tiles keep the loops; longer keys keep 64 (32 spills more there). sm_90's wgmma reads its
    operands from shared memory and keeps 64, as does the interpreter (tiles as on H100)."""
    if K <= 64 and not triton_interpreting():
        from triton.runtime import driver

        arch = driver.active.get_current_target().arch
        if isinstance(arch, int) and arch < 90:
            return _block(K, BWD_TILE)
    return _block(K, 64)


class _ChunkShapes:
    def __init__(self, q, v, chunk):
        self.B, self.T, self.H, self.K = q.shape
        self.V = v.shape[-1]
        self.BT = chunk
        self.NT = triton.cdiv(self.T, chunk)
        self.BK = _block(self.K, 64)
        self.BV = _block(self.V, 64)
        self.NV = triton.cdiv(self.V, self.BV)
        self.DT = _dot_dtype(q)

    def consts(self, **extra):
        return {**dict(H=self.H, K=self.K, V=self.V, BT=self.BT, BK=self.BK, BV=self.BV, DT=self.DT), **extra}


def _chunk_parts(q, k, v, beta, g, initial_state, s: _ChunkShapes):
    """The forward's per-chunk quantities (G, X = (I + L)^-1, Aqk, W, U), the chunk states h and the written
    values u: computed by the forward, recomputed by the backward."""
    f32 = dict(device=q.device, dtype=torch.float32)
    B, H, NT, BT = s.B, s.H, s.NT, s.BT
    G = torch.empty(B, H, NT * BT, **f32) if g is not None else None
    Ai = torch.empty(B, H, NT, BT, BT, **f32)
    Aqk = torch.empty_like(Ai)
    W = torch.empty(B, H, NT * BT, s.K, **f32)
    U = torch.empty(B, H, NT * BT, s.V, **f32)
    _chunk_prep_kernel[(NT, B * H)](
        q,
        k,
        v,
        beta,
        g if g is not None else beta,
        G if G is not None else Ai,
        Ai,
        Aqk,
        W,
        U,
        s.T,
        NT,
        **s.consts(USE_G=g is not None),
        num_warps=WIDE_WARPS,
    )
    u = torch.empty_like(U)
    h = torch.empty(B, H, NT + 1, s.K, s.V, **f32)
    _chunk_fwd_h_kernel[(s.NV, B * H)](
        k,
        G if G is not None else Ai,
        W,
        U,
        u,
        h,
        initial_state if initial_state is not None else h,
        s.T,
        NT,
        **s.consts(USE_G=g is not None, USE_H0=initial_state is not None),
        num_warps=WIDE_WARPS,
        num_stages=SELF_READ_STAGES,
    )
    return G, Ai, Aqk, W, U, u, h


class ChunkDeltaRuleFunction(torch.autograd.Function):
    @staticmethod
    @device_guarded
    def forward(ctx, q, k, v, beta, g, scale, initial_state, output_final_state, chunk):
        s = _ChunkShapes(q, v, chunk)
        G, Ai, Aqk, W, U, u, h = _chunk_parts(q, k, v, beta, g, initial_state, s)
        o = torch.empty_like(v)
        _chunk_fwd_o_kernel[(s.NV, s.NT, s.B * s.H)](
            q,
            G if G is not None else Ai,
            Aqk,
            h,
            u,
            o,
            scale,
            s.T,
            s.NT,
            **s.consts(USE_G=g is not None),
            num_warps=WIDE_WARPS,
        )
        ht = h[:, :, s.NT].clone() if output_final_state else None
        ctx.save_for_backward(q, k, v, beta, g, initial_state)
        ctx.scale, ctx.chunk = scale, chunk
        return o, ht

    @staticmethod
    @device_guarded
    def backward(ctx, do, dht):
        q, k, v, beta, g, initial_state = ctx.saved_tensors
        scale = ctx.scale
        s = _ChunkShapes(q, v, ctx.chunk)
        do = do.contiguous()
        dht = dht.contiguous() if dht is not None else None
        # Recomputed rather than kept from the forward: activations stay at the inputs' size.
        G, Ai, Aqk, W, U, u, h = _chunk_parts(q, k, v, beta, g, initial_state, s)
        f32 = dict(device=q.device, dtype=torch.float32)
        du = torch.empty_like(u)
        dh = torch.empty_like(h)
        _chunk_bwd_dh_kernel[(s.NV, s.B * s.H)](
            q,
            k,
            do,
            G if G is not None else Ai,
            Aqk,
            W,
            du,
            dh,
            dht if dht is not None else dh,
            scale,
            s.T,
            s.NT,
            **s.consts(USE_G=g is not None, USE_DHT=dht is not None, BK=_dh_key_tile(s.K)),
            num_warps=WIDE_WARPS,
            num_stages=SELF_READ_STAGES,
        )
        dq = torch.empty(s.B, s.T, s.H, s.K, **f32)
        dk = torch.empty_like(dq)
        dv = torch.empty_like(v)
        dbeta = torch.empty(s.B, s.T, s.H, **f32)
        dg = torch.empty_like(dbeta) if g is not None else None
        _chunk_bwd_kernel[(s.NT, s.B * s.H)](
            q,
            k,
            v,
            beta,
            do,
            G if G is not None else Ai,
            Ai,
            Aqk,
            u,
            du,
            h,
            dh,
            dq,
            dk,
            dv,
            dbeta,
            dg if dg is not None else dbeta,
            scale,
            s.T,
            s.NT,
            # Narrower key and value tiles than the other kernels: this one also holds six [BT, BT] tiles.
            **s.consts(USE_G=g is not None, BK=_block(s.K, BWD_TILE), BV=_block(s.V, BWD_TILE)),
            num_warps=WIDE_WARPS,
            num_stages=SELF_READ_STAGES,
        )
        dh0 = None
        if initial_state is not None and ctx.needs_input_grad[6]:
            dh0 = dh[:, :, 0].to(initial_state.dtype)
        dg = dg.to(g.dtype) if dg is not None else None
        return dq.to(q.dtype), dk.to(k.dtype), dv, dbeta.to(beta.dtype), dg, None, dh0, None, None


# -- the backends -----------------------------------------------------------------------------------------


def _prepare(q, k, v, beta, g, scale, initial_state):
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    q, k, v, beta = q.contiguous(), k.contiguous(), v.contiguous(), beta.contiguous()
    g = g.contiguous() if g is not None else None
    initial_state = initial_state.contiguous() if initial_state is not None else None
    return q, k, v, beta, g, scale, initial_state


def recurrent_delta_rule(q, k, v, beta, g=None, scale=None, initial_state=None, output_final_state=False):
    q, k, v, beta, g, scale, initial_state = _prepare(q, k, v, beta, g, scale, initial_state)
    return RecurrentDeltaRuleFunction.apply(q, k, v, beta, g, scale, initial_state, output_final_state)


def chunk_delta_rule(
    q, k, v, beta, g=None, scale=None, initial_state=None, output_final_state=False, chunk=CHUNK
):
    if chunk < 16 or chunk & (chunk - 1):
        raise ValueError(f"chunk_delta_rule: chunk must be a power of two >= 16, got {chunk}")
    q, k, v, beta, g, scale, initial_state = _prepare(q, k, v, beta, g, scale, initial_state)
    return ChunkDeltaRuleFunction.apply(q, k, v, beta, g, scale, initial_state, output_final_state, chunk)
