"""The delta rule (DeltaNet, Gated DeltaNet) in Triton, chunked: forward and backward kernels
(``chunk_delta_rule``, the ``triton`` backend).

    S_t = a_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T ;   o_t = scale * q_t^T S_t   (see reference.py)

a_t = exp(g_t) (g [B, T, H], one log decay per head) or 1 (g=None). S [K, V] per (batch, head), fp32.

Chunks of BT = 64 positions (``chunk``): the WY / UT form of torch.py. In a chunk, with h the state before
it, G the log decays summed from the chunk start, D_ij = exp(G_i - G_j) (j <= i) and
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

The state recurrence, the state gradient's, the output's inter- and intra-chunk terms and du are GLA's
with a per-head decay and x = u in place of v: they are ``ops/common/triton_chunk.py``'s device functions,
which gla's chunked kernels call too.

All states and accumulations are fp32; inputs may be fp32, fp16 or bf16 (the matmul operands take the
inputs' type, fp32 ones run in IEEE precision). Nothing here has run on a GPU in this repository's checks:
the kernels run under the interpreter (tests/test_delta_rule.py) and are compiled for sm_90 / sm_80 without
one (``make compile-check``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._dispatch import triton_interpreting
from .._triton_utils import device_guarded, row_offset
from ..common.triton_chunk import (
    carry_state,
    chunk_tile,
    decayed_dot,
    from_chunk_start,
    head_decays,
    intra_output,
    intra_values_grad,
    over_chunk,
    to_chunk_end,
)
from ..common.triton_tiles import (
    ChunkShapes,
    load_padded_rows,
    load_rows,
    load_state,
    split_bh,
    starting_state,
)
from ..common.triton_tiles import block as _block
from .triton_common import prepare_inputs

# Positions per chunk (BT).
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
    i_b, i_h, i_bh = split_bh(i_bh, H)
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
        b_k = load_rows(k, o_t, m_t, o_k, m_k, H * K).to(tl.float32)
        b_w = tl.dot(b_Xd, (b_k * (b_beta * b_gamma)[:, None]).to(DT), input_precision="ieee")
        tl.store(W + i_bh * NT * BT * K + row_offset(o_t[:, None], K) + o_k[None, :], b_w, mask=m_k[None, :])
    for i_v in range(0, V, BV):
        o_v = i_v + tl.arange(0, BV)
        m_v = o_v < V
        b_v = load_rows(v, o_t, m_t, o_v, m_v, H * V).to(tl.float32)
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
    i_b, i_h, i_bh = split_bh(i_bh, H)
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
        tl.store(h + o_kv, starting_state(h0 + i_bh * K * V, o_kv, m_kv, USE_H0, BK, BV), mask=m_kv)
    tl.debug_barrier()
    for i_n in range(NT):
        o_t = i_n * BT + o_r
        m_t = o_t < T
        o_tv = row_offset(o_t[:, None], V) + o_v[None, :]
        b_u = tl.load(U + o_tv, mask=m_v[None, :], other=0.0)
        for i_k in range(0, K, BK):
            o_k = i_k + tl.arange(0, BK)
            m_k = o_k < K
            b_w = load_padded_rows(W, o_t, o_k, m_k, K)
            b_h = load_state(h + row_offset(i_n, K * V), o_k, m_k, o_v, m_v, V)
            b_u -= tl.dot(b_w.to(DT), b_h.to(DT), input_precision="ieee")
        tl.store(u + o_tv, b_u, mask=m_v[None, :])
        b_ud = b_u.to(DT)
        b_e, b_gl = 1.0, 1.0  # read only with USE_G
        if USE_G:
            b_G, b_Gl = head_decays(G, i_n, o_t, BT)
            b_e, b_gl = to_chunk_end(b_G, b_Gl, False), over_chunk(b_Gl, False)
        for i_k in range(0, K, BK):
            o_k = i_k + tl.arange(0, BK)
            m_k = o_k < K
            m_kv = m_k[:, None] & m_v[None, :]
            o_kv = o_k[:, None] * V + o_v[None, :]
            b_k = load_rows(k, o_t, m_t, o_k, m_k, H * K)
            b_h = tl.load(h + row_offset(i_n, K * V) + o_kv, mask=m_kv, other=0.0)
            b_h = carry_state(b_h, b_gl, b_k, b_e, b_ud, USE_G, DT)
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
    i_b, i_h, i_bh = split_bh(i_bh, H)
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
        b_q = load_rows(q, o_t, m_t, o_k, m_k, H * K)
        b_h = load_state(h, o_k, m_k, o_v, m_v, V)
        b_o += decayed_dot(b_q, 1.0, b_h, False, DT)
    if USE_G:
        # One decay per row: applied once after the key loop, not per key tile.
        b_o = b_o * from_chunk_start(tl.load(G + i_bh * NT * BT + o_t), False)
    b_A = chunk_tile(Aqk + (i_bh * NT + i_n) * BT * BT, BT)
    # Unmasked rows, no `other`: u is chunk-padded, and the masked columns' garbage stays out of o's store.
    b_u = tl.load(u + i_bh * NT * BT * V + row_offset(o_t[:, None], V) + o_v[None, :], mask=m_v[None, :])
    b_o = intra_output(b_o, b_A, b_u, DT)
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
    i_b, i_h, i_bh = split_bh(i_bh, H)
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
        b_dh = starting_state(dht + i_bh * K * V, o_kv, m_kv, USE_DHT, BK, BV)
        tl.store(dh + row_offset(NT, K * V) + o_kv, b_dh, mask=m_kv)
    tl.debug_barrier()
    for i in range(NT):
        i_n = NT - 1 - i
        o_t = i_n * BT + o_r
        m_t = o_t < T
        b_do = load_rows(do, o_t, m_t, o_v, m_v, H * V).to(DT)
        b_du = intra_values_grad(chunk_tile(Aqk + (i_bh * NT + i_n) * BT * BT, BT), b_do, scale, DT)
        b_e, b_gl, b_s = 1.0, 1.0, 1.0  # read only with USE_G
        if USE_G:
            b_G, b_Gl = head_decays(G, i_n, o_t, BT)
            b_e, b_gl, b_s = (
                to_chunk_end(b_G, b_Gl, False),
                over_chunk(b_Gl, False),
                from_chunk_start(b_G, False),
            )
        for i_k in range(0, K, BK):
            o_k = i_k + tl.arange(0, BK)
            m_k = o_k < K
            b_k = load_rows(k, o_t, m_t, o_k, m_k, H * K)
            b_dh = load_state(dh + row_offset(i_n + 1, K * V), o_k, m_k, o_v, m_v, V)
            b_du += decayed_dot(b_k, b_e, b_dh, USE_G, DT)
        tl.store(du + row_offset(o_t[:, None], V) + o_v[None, :], b_du, mask=m_v[None, :])
        b_dud = b_du.to(DT)
        for i_k in range(0, K, BK):
            o_k = i_k + tl.arange(0, BK)
            m_k = o_k < K
            m_kv = m_k[:, None] & m_v[None, :]
            o_kv = o_k[:, None] * V + o_v[None, :]
            b_q = load_rows(q, o_t, m_t, o_k, m_k, H * K).to(tl.float32) * scale
            b_w = load_padded_rows(W, o_t, o_k, m_k, K)
            b_dh = tl.load(dh + row_offset(i_n + 1, K * V) + o_kv, mask=m_kv, other=0.0)
            b_dh = carry_state(b_dh, b_gl, b_q, b_s, b_do, USE_G, DT)
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
    i_b, i_h, i_bh = split_bh(i_bh, H)
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
        b_G, b_Gl = head_decays(G, i_n, o_t, BT)
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
            b_do = load_rows(do, o_t, m_t, o_v, m_v, H * V).to(DT)
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
        b_k = load_rows(k, o_t, m_t, o_k, o_k < K, H * K).to(DT)
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


class _ChunkShapes(ChunkShapes):
    """ChunkShapes with the matmul operand type DT, a constexpr of every chunked kernel here."""

    def __init__(self, q, v, chunk):
        super().__init__(q, v, chunk)
        self.DT = _dot_dtype(q)

    def consts(self, **extra):
        return super().consts(**{"DT": self.DT, **extra})


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


def chunk_delta_rule(
    q, k, v, beta, g=None, scale=None, initial_state=None, output_final_state=False, chunk=CHUNK
):
    if chunk < 16 or chunk & (chunk - 1):
        raise ValueError(f"chunk_delta_rule: chunk must be a power of two >= 16, got {chunk}")
    q, k, v, beta, g, scale, initial_state = prepare_inputs(q, k, v, beta, g, scale, initial_state)
    return ChunkDeltaRuleFunction.apply(q, k, v, beta, g, scale, initial_state, output_final_state, chunk)
