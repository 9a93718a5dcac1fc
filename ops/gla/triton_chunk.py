"""Gated linear attention in Triton, chunked: forward and backward kernels (``chunk_gla``, the ``triton`` backend).

    S_t = exp(g_t)[:, None] * S_{t-1} + k_t^T v_t ;   o_t = (scale * q_t) S_t          (see reference.py)

Chunks of BT = 64 positions, sub-chunks of BC = 16. G is the cumulative sum of g restarted at every
chunk start (fp32, [B, H, T_pad, K]; positions past T get g = 0, so G stays flat there and
every kernel may read G of a whole chunk unmasked). With h_n the state before chunk n:

    forward   h_{n+1} = exp(G_last) * h_n + (k * exp(G_last - G))^T v          (_chunk_fwd_h_kernel, a loop
                                                                              over chunks per state tile)
              A_ij    = sum_k q_ik k_jk exp(G_ik - G_jk), j <= i                (_chunk_intra_A_kernel)
              o       = scale * ((q * exp(G)) h_n + A v)                        (_chunk_fwd_o_kernel)

A is never formed with a positive exponent: between sub-chunks the decays are taken to a pivot (the query
sub-chunk's first position, so exp(G_i - G_r) and exp(G_r - G_j) are both <= 1); inside a sub-chunk the
exact pairwise [BC, BC, BK] form is masked to i >= j before the exponential.

    backward  dh_n   = exp(G_last) * dh_{n+1} + scale (q * exp(G))^T do          (grad of the state after
                                                                              chunk n-1; _chunk_bwd_dh_kernel)
              dA     = scale * (do v^T), j <= i                                (_chunk_bwd_dA_kernel)
              dv     = scale A^T do + (k * exp(G_last - G)) dh_{n+1}           (_chunk_bwd_dv_kernel)
              dq, dk = intra-chunk terms from dA (pivots as above)             (_chunk_bwd_intra_kernel)
                     + scale (do h_n^T) * exp(G),  (v dh_{n+1}^T) * exp(G_last - G)
                                                                              (_chunk_bwd_inter_kernel)
              dg_t   = sum_{s >= t} (q_s dq_s - k_s dk_s) + sum_v (S_T * dS_T)  (_reverse_cumsum_kernel)

The last line holds because g_t enters only through the cumulative sums B_s (s >= t), and every term of the
output and of the final state carries exp(B_i - B_j) from a query or final-state side (+) and a key side (-).
The backward recomputes G, the chunk states and A instead of keeping them from the forward: activations
stay at the inputs' size.

All states and accumulations are fp32; matmul operands take the inputs' dtype (fp32 matmuls use IEEE
precision, not TF32, so fp32 results match the reference to ~1e-6).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._triton_utils import device_guarded, row_offset
from ..common.triton_chunk import (
    carry_state,
    chunk_tile,
    decayed_dot,
    from_chunk_start,
    intra_output,
    intra_values_grad,
    key_decays,
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

CHUNK = 64  # BT
# Warps for the kernels holding [BT, 64] fp32 tiles: with 4 they spill registers on sm_90 (checked by
# compiling for sm_90 ahead of time); the small-tile kernels keep Triton's default of 4.
WIDE_WARPS = 8
SUB_CHUNK = 16  # BC
N_SUB = CHUNK // SUB_CHUNK  # NC


# -- chunked forward --------------------------------------------------------------------------------------
#
# Addressing: every program turns its (batch, head) into one int64 scalar offset per tensor, and positions
# in time into int64 before they multiply a row stride (H*K, H*V, K or K*V): T * H * K passes 2^31 near a
# million tokens at H*K = 2048, and an int32 product would wrap. Column offsets stay int32. Layouts: q, k, g, dq, dk, dg [B, T, H, K] and v, o,
# do, dv [B, T, H, V] (rows H*K or H*V apart); G, dB, dq_intra, dk_intra [B, H, T_pad, K]; h, dh
# [B, H, NT, K, V]; A, dA [B, H, NT, BT, BT]; h0, ht, dh0, dht [B, H, K, V].


@triton.jit
def _chunk_cumsum_kernel(g, G, T, NT, H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr):
    i_k, i_n, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = (i_bh // H).to(tl.int64), i_bh % H
    o_t = i_n * BT + tl.arange(0, BT)
    o_k = i_k * BK + tl.arange(0, BK)
    m_k = o_k < K
    b_g = tl.load(
        g + (i_b * T * H + i_h) * K + row_offset(o_t[:, None], (H * K)) + o_k[None, :],
        mask=(o_t[:, None] < T) & m_k[None, :],
        other=0.0,
    ).to(tl.float32)
    # Rows past T get g = 0, so G stays flat to the end of the last chunk.
    tl.store(
        G + i_bh.to(tl.int64) * NT * BT * K + row_offset(o_t[:, None], K) + o_k[None, :],
        tl.cumsum(b_g, axis=0),
        mask=m_k[None, :],
    )


@triton.jit
def _chunk_fwd_h_kernel(
    k,
    v,
    G,
    h,
    h0,
    ht,
    T,
    NT,
    H: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    USE_H0: tl.constexpr,
    STORE_HT: tl.constexpr,
):
    i_k, i_v, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h, i_bh = split_bh(i_bh, H)
    k += (i_b * T * H + i_h) * K
    v += (i_b * T * H + i_h) * V
    G += i_bh * NT * BT * K
    h += i_bh * NT * K * V
    o_k = i_k * BK + tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    o_kv = o_k[:, None] * V + o_v[None, :]
    b_S = starting_state(h0 + i_bh * K * V, o_kv, m_kv, USE_H0, BK, BV)
    for i_n in range(NT):
        tl.store(h + row_offset(i_n, K * V) + o_kv, b_S, mask=m_kv)
        o_t = i_n * BT + tl.arange(0, BT)
        m_t = o_t < T
        b_k = load_rows(k, o_t, m_t, o_k, m_k, H * K)
        b_v = load_rows(v, o_t, m_t, o_v, m_v, H * V)
        b_G, b_Gl = key_decays(G, i_n, o_t, o_k, m_k, BT, K)
        b_S = carry_state(
            b_S, over_chunk(b_Gl, True), b_k, to_chunk_end(b_G, b_Gl, True), b_v, True, b_v.dtype
        )
    if STORE_HT:
        tl.store(ht + i_bh * K * V + o_kv, b_S, mask=m_kv)


@triton.jit
def _chunk_intra_A_kernel(
    q,
    k,
    G,
    A,
    T,
    NT,
    H: tl.constexpr,
    K: tl.constexpr,
    BT: tl.constexpr,
    BC: tl.constexpr,
    BK: tl.constexpr,
    NC: tl.constexpr,
):
    # One program per (query sub-chunk, key sub-chunk) block of one chunk's [BT, BT] score matrix.
    i_c, i_n, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h, i_bh = split_bh(i_bh, H)
    q += (i_b * T * H + i_h) * K
    k += (i_b * T * H + i_h) * K
    G += i_bh * NT * BT * K
    i_i, i_j = i_c // NC, i_c % NC
    o_c = tl.arange(0, BC)
    o_i = i_n * BT + i_i * BC + o_c
    o_j = i_n * BT + i_j * BC + o_c
    m_i, m_j = o_i < T, o_j < T
    b_A = tl.zeros([BC, BC], dtype=tl.float32)
    if i_i > i_j:
        # Decays to the pivot r (first row of the query sub-chunk): j < r <= i, so both exponents are <= 0.
        r = i_n * BT + i_i * BC
        for i_k in range(0, K, BK):
            o_k = i_k + tl.arange(0, BK)
            m_k = o_k < K
            b_q = load_rows(q, o_i, m_i, o_k, m_k, H * K)
            b_k = load_rows(k, o_j, m_j, o_k, m_k, H * K)
            b_Gi = load_padded_rows(G, o_i, o_k, m_k, K)
            b_Gj = load_padded_rows(G, o_j, o_k, m_k, K)
            b_Gr = tl.load(G + r * K + o_k, mask=m_k, other=0.0)
            b_qg = b_q.to(tl.float32) * tl.exp(b_Gi - b_Gr[None, :])
            b_kg = b_k.to(tl.float32) * tl.exp(b_Gr[None, :] - b_Gj)
            b_A += tl.dot(b_qg, tl.trans(b_kg), input_precision="ieee")
    elif i_i == i_j:
        causal = o_c[:, None] >= o_c[None, :]
        for i_k in range(0, K, BK):
            o_k = i_k + tl.arange(0, BK)
            m_k = o_k < K
            b_q = load_rows(q, o_i, m_i, o_k, m_k, H * K)
            b_k = load_rows(k, o_i, m_i, o_k, m_k, H * K)
            b_G = load_padded_rows(G, o_i, o_k, m_k, K)
            # [BC, BC, BK]: masked before the exponential, so above the diagonal it is exp(-inf) = 0,
            # never inf.
            b_w = tl.exp(tl.where(causal[:, :, None], b_G[:, None, :] - b_G[None, :, :], float("-inf")))
            b_A += tl.sum(b_q.to(tl.float32)[:, None, :] * b_k.to(tl.float32)[None, :, :] * b_w, axis=2)
    # Blocks above the diagonal are written as zeros.
    tl.store(A + ((i_bh * NT + i_n) * BT + i_i * BC) * BT + o_c[:, None] * BT + i_j * BC + o_c[None, :], b_A)


@triton.jit
def _chunk_fwd_o_kernel(
    q,
    v,
    G,
    h,
    A,
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
):
    i_v, i_n, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h, i_bh = split_bh(i_bh, H)
    q += (i_b * T * H + i_h) * K
    v += (i_b * T * H + i_h) * V
    o += (i_b * T * H + i_h) * V
    G += i_bh * NT * BT * K
    h += (i_bh * NT + i_n) * K * V
    A += (i_bh * NT + i_n) * BT * BT
    o_t = i_n * BT + tl.arange(0, BT)
    o_v = i_v * BV + tl.arange(0, BV)
    m_t, m_v = o_t < T, o_v < V
    m_tv = m_t[:, None] & m_v[None, :]
    b_v = load_rows(v, o_t, m_t, o_v, m_v, H * V)
    b_o = tl.zeros([BT, BV], dtype=tl.float32)
    for i_k in range(0, K, BK):
        o_k = i_k + tl.arange(0, BK)
        m_k = o_k < K
        b_q = load_rows(q, o_t, m_t, o_k, m_k, H * K)
        b_G = load_padded_rows(G, o_t, o_k, m_k, K)
        b_h = load_state(h, o_k, m_k, o_v, m_v, V)
        b_o += decayed_dot(b_q, from_chunk_start(b_G, True), b_h, True, b_v.dtype)
    b_o = intra_output(b_o, chunk_tile(A, BT), b_v, b_v.dtype)
    tl.store(
        o + row_offset(o_t[:, None], (H * V)) + o_v[None, :], (b_o * scale).to(o.dtype.element_ty), mask=m_tv
    )


# -- chunked backward -------------------------------------------------------------------------------------


@triton.jit
def _chunk_bwd_dh_kernel(
    q,
    do,
    G,
    dh,
    dht,
    dh0,
    scale,
    T,
    NT,
    H: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    USE_DHT: tl.constexpr,
    STORE_DH0: tl.constexpr,
):
    # dh[n] is the gradient of the state after chunk n (before chunk n + 1), walking the chunks backwards.
    i_k, i_v, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h, i_bh = split_bh(i_bh, H)
    q += (i_b * T * H + i_h) * K
    do += (i_b * T * H + i_h) * V
    G += i_bh * NT * BT * K
    dh += i_bh * NT * K * V
    o_k = i_k * BK + tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    o_kv = o_k[:, None] * V + o_v[None, :]
    b_dS = starting_state(dht + i_bh * K * V, o_kv, m_kv, USE_DHT, BK, BV)
    for i in range(NT):
        i_n = NT - 1 - i
        tl.store(dh + row_offset(i_n, K * V) + o_kv, b_dS, mask=m_kv)
        o_t = i_n * BT + tl.arange(0, BT)
        m_t = o_t < T
        b_q = load_rows(q, o_t, m_t, o_k, m_k, H * K).to(tl.float32) * scale
        b_do = load_rows(do, o_t, m_t, o_v, m_v, H * V)
        b_G, b_Gl = key_decays(G, i_n, o_t, o_k, m_k, BT, K)
        b_dS = carry_state(
            b_dS, over_chunk(b_Gl, True), b_q, from_chunk_start(b_G, True), b_do, True, b_do.dtype
        )
    if STORE_DH0:
        tl.store(dh0 + i_bh * K * V + o_kv, b_dS, mask=m_kv)


@triton.jit
def _chunk_bwd_dA_kernel(
    v,
    do,
    dA,
    scale,
    T,
    NT,
    H: tl.constexpr,
    V: tl.constexpr,
    BT: tl.constexpr,
    BV: tl.constexpr,
):
    i_n, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h, i_bh = split_bh(i_bh, H)
    v += (i_b * T * H + i_h) * V
    do += (i_b * T * H + i_h) * V
    o_t = i_n * BT + tl.arange(0, BT)
    m_t = o_t < T
    b_dA = tl.zeros([BT, BT], dtype=tl.float32)
    for i_v in range(0, V, BV):
        o_v = i_v + tl.arange(0, BV)
        b_do = load_rows(do, o_t, m_t, o_v, o_v < V, H * V)
        b_v = load_rows(v, o_t, m_t, o_v, o_v < V, H * V)
        b_dA += tl.dot(b_do, tl.trans(b_v), input_precision="ieee")
    o_r = tl.arange(0, BT)
    b_dA = tl.where(o_r[:, None] >= o_r[None, :], b_dA * scale, 0.0)
    tl.store(dA + (i_bh * NT + i_n) * BT * BT + o_r[:, None] * BT + o_r[None, :], b_dA)


@triton.jit
def _chunk_bwd_dv_kernel(
    k,
    G,
    A,
    dh,
    do,
    dv,
    scale,
    T,
    NT,
    H: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
):
    i_v, i_n, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h, i_bh = split_bh(i_bh, H)
    k += (i_b * T * H + i_h) * K
    do += (i_b * T * H + i_h) * V
    dv += (i_b * T * H + i_h) * V
    G += i_bh * NT * BT * K
    dh += (i_bh * NT + i_n) * K * V
    o_t = i_n * BT + tl.arange(0, BT)
    o_v = i_v * BV + tl.arange(0, BV)
    m_t, m_v = o_t < T, o_v < V
    m_tv = m_t[:, None] & m_v[None, :]
    b_A = chunk_tile(A + (i_bh * NT + i_n) * BT * BT, BT)
    b_do = load_rows(do, o_t, m_t, o_v, m_v, H * V)
    b_dv = intra_values_grad(b_A, b_do, scale, b_do.dtype)
    for i_k in range(0, K, BK):
        o_k = i_k + tl.arange(0, BK)
        m_k = o_k < K
        b_k = load_rows(k, o_t, m_t, o_k, m_k, H * K)
        b_G, b_Gl = key_decays(G, i_n, o_t, o_k, m_k, BT, K)
        b_dh = load_state(dh, o_k, m_k, o_v, m_v, V)
        b_dv += decayed_dot(b_k, to_chunk_end(b_G, b_Gl, True), b_dh, True, b_do.dtype)
    tl.store(dv + row_offset(o_t[:, None], (H * V)) + o_v[None, :], b_dv.to(dv.dtype.element_ty), mask=m_tv)


@triton.jit
def _chunk_bwd_intra_kernel(
    q,
    k,
    G,
    dA,
    dq,
    dk,
    T,
    NT,
    H: tl.constexpr,
    K: tl.constexpr,
    BT: tl.constexpr,
    BC: tl.constexpr,
    BK: tl.constexpr,
    NC: tl.constexpr,
):
    # Intra-chunk parts of dq and dk for one sub-chunk of rows, written to fp32 [B, H, T_pad, K] buffers.
    i_k, i_nc, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h, i_bh = split_bh(i_bh, H)
    i_n, i_i = i_nc // NC, i_nc % NC
    q += (i_b * T * H + i_h) * K
    k += (i_b * T * H + i_h) * K
    G += i_bh * NT * BT * K
    dq += i_bh * NT * BT * K
    dk += i_bh * NT * BT * K
    dA += (i_bh * NT + i_n) * BT * BT
    o_c = tl.arange(0, BC)
    o_k = i_k * BK + tl.arange(0, BK)
    m_k = o_k < K
    o_i = i_n * BT + i_i * BC + o_c
    b_q = load_rows(q, o_i, o_i < T, o_k, m_k, H * K).to(tl.float32)
    b_k = load_rows(k, o_i, o_i < T, o_k, m_k, H * K).to(tl.float32)
    b_G = load_padded_rows(G, o_i, o_k, m_k, K)

    # dq_i = sum_{j < sub-chunk} dA_ij k_j exp(G_i - G_j), through the pivot r = first row of this sub-chunk.
    b_Gr = tl.load(G + (row_offset(i_n, BT) + i_i * BC) * K + o_k, mask=m_k, other=0.0)
    b_dq = tl.zeros([BC, BK], dtype=tl.float32)
    for i_j in range(0, i_i):
        o_j = i_n * BT + i_j * BC + o_c
        b_kj = load_rows(k, o_j, o_j < T, o_k, m_k, H * K).to(tl.float32)
        b_Gj = load_padded_rows(G, o_j, o_k, m_k, K)
        b_dA = tl.load(dA + (i_i * BC + o_c[:, None]) * BT + i_j * BC + o_c[None, :])
        b_dq += tl.dot(b_dA, b_kj * tl.exp(b_Gr[None, :] - b_Gj), input_precision="ieee")
    b_dq *= tl.exp(b_G - b_Gr[None, :])

    # dk_j = sum_{i > sub-chunk} dA_ij q_i exp(G_i - G_j), through the pivot e = last row of this sub-chunk.
    b_Ge = tl.load(G + (row_offset(i_n, BT) + i_i * BC + BC - 1) * K + o_k, mask=m_k, other=0.0)
    b_dk = tl.zeros([BC, BK], dtype=tl.float32)
    for i_j in range(i_i + 1, NC):
        o_j = i_n * BT + i_j * BC + o_c
        b_qj = load_rows(q, o_j, o_j < T, o_k, m_k, H * K).to(tl.float32)
        b_Gj = load_padded_rows(G, o_j, o_k, m_k, K)
        b_dA = tl.load(dA + (i_j * BC + o_c[:, None]) * BT + i_i * BC + o_c[None, :])
        b_dk += tl.dot(tl.trans(b_dA), b_qj * tl.exp(b_Gj - b_Ge[None, :]), input_precision="ieee")
    b_dk *= tl.exp(b_Ge[None, :] - b_G)

    # Inside the sub-chunk: the pairwise decays [i, j, k], masked to i >= j before the exponential.
    b_dAd = tl.load(dA + (i_i * BC + o_c[:, None]) * BT + i_i * BC + o_c[None, :])
    causal = o_c[:, None] >= o_c[None, :]
    b_w = tl.exp(tl.where(causal[:, :, None], b_G[:, None, :] - b_G[None, :, :], float("-inf")))
    b_dq += tl.sum(b_dAd[:, :, None] * b_k[None, :, :] * b_w, axis=1)
    b_dk += tl.sum(b_dAd[:, :, None] * b_q[:, None, :] * b_w, axis=0)
    tl.store(dq + row_offset(o_i[:, None], K) + o_k[None, :], b_dq, mask=m_k[None, :])
    tl.store(dk + row_offset(o_i[:, None], K) + o_k[None, :], b_dk, mask=m_k[None, :])


@triton.jit
def _chunk_bwd_inter_kernel(
    q,
    k,
    v,
    G,
    h,
    dh,
    do,
    dq_intra,
    dk_intra,
    dq,
    dk,
    dB,
    scale,
    T,
    NT,
    H: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
):
    i_k, i_n, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h, i_bh = split_bh(i_bh, H)
    x_k = (i_b * T * H + i_h) * K  # q, k, dq, dk
    x_v = (i_b * T * H + i_h) * V  # v, do
    x_G = i_bh * NT * BT * K  # G, dq_intra, dk_intra, dB
    h += (i_bh * NT + i_n) * K * V
    dh += (i_bh * NT + i_n) * K * V
    o_t = i_n * BT + tl.arange(0, BT)
    o_k = i_k * BK + tl.arange(0, BK)
    m_t, m_k = o_t < T, o_k < K
    m_tk = m_t[:, None] & m_k[None, :]
    b_dq = tl.zeros([BT, BK], dtype=tl.float32)
    b_dk = tl.zeros([BT, BK], dtype=tl.float32)
    for i_v in range(0, V, BV):
        o_v = i_v + tl.arange(0, BV)
        m_v = o_v < V
        b_do = load_rows(do + x_v, o_t, m_t, o_v, m_v, H * V)
        b_v = load_rows(v + x_v, o_t, m_t, o_v, m_v, H * V)
        b_h = load_state(h, o_k, m_k, o_v, m_v, V)
        b_dh = load_state(dh, o_k, m_k, o_v, m_v, V)
        b_dq += tl.dot(b_do, tl.trans(b_h.to(b_do.dtype)), input_precision="ieee")
        b_dk += tl.dot(b_v, tl.trans(b_dh.to(b_v.dtype)), input_precision="ieee")
    o_G = row_offset(o_t[:, None], K) + o_k[None, :]
    b_G = tl.load(G + x_G + o_G, mask=m_k[None, :], other=0.0)
    b_Gl = tl.load(G + x_G + (row_offset(i_n, BT) + BT - 1) * K + o_k, mask=m_k, other=0.0)
    b_dq = b_dq * tl.exp(b_G) * scale + tl.load(dq_intra + x_G + o_G, mask=m_k[None, :], other=0.0)
    b_dk = b_dk * tl.exp(b_Gl[None, :] - b_G) + tl.load(dk_intra + x_G + o_G, mask=m_k[None, :], other=0.0)
    o_x = row_offset(o_t[:, None], (H * K)) + o_k[None, :]
    b_q = tl.load(q + x_k + o_x, mask=m_tk, other=0.0).to(tl.float32)
    b_k = tl.load(k + x_k + o_x, mask=m_tk, other=0.0).to(tl.float32)
    tl.store(dq + x_k + o_x, b_dq.to(dq.dtype.element_ty), mask=m_tk)
    tl.store(dk + x_k + o_x, b_dk.to(dk.dtype.element_ty), mask=m_tk)
    # d(loss)/d(cumulative log decay) at each position, summed backwards into dg by _reverse_cumsum_kernel.
    tl.store(dB + x_G + o_G, b_q * b_dq - b_k * b_dk, mask=m_k[None, :])


@triton.jit
def _reverse_cumsum_kernel(
    dB,
    dg_last,
    dg,
    T,
    NT,
    H: tl.constexpr,
    K: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    USE_LAST: tl.constexpr,
):
    # dg_t = sum_{s >= t} dB_s (+ dg_last, the final state's share, at every t): chunks walked backwards.
    i_k, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h, i_bh = split_bh(i_bh, H)
    dB += i_bh * NT * BT * K
    dg += (i_b * T * H + i_h) * K
    o_k = i_k * BK + tl.arange(0, BK)
    m_k = o_k < K
    b_carry = tl.zeros([BK], dtype=tl.float32)
    if USE_LAST:
        b_carry += tl.load(dg_last + i_bh * K + o_k, mask=m_k, other=0.0)
    for i in range(NT):
        i_n = NT - 1 - i
        o_t = i_n * BT + tl.arange(0, BT)
        b_x = tl.load(dB + row_offset(o_t[:, None], K) + o_k[None, :], mask=m_k[None, :], other=0.0)
        b_total = tl.sum(b_x, axis=0)
        b_rev = b_total[None, :] - tl.cumsum(b_x, axis=0) + b_x + b_carry[None, :]
        tl.store(
            dg + row_offset(o_t[:, None], (H * K)) + o_k[None, :],
            b_rev.to(dg.dtype.element_ty),
            mask=(o_t < T)[:, None] & m_k[None, :],
        )
        b_carry += b_total


# -- host side of the chunked kernels ---------------------------------------------------------------------


class _Shapes(ChunkShapes):
    def __init__(self, q, v):
        super().__init__(q, v, CHUNK)
        # The [BC, BC, BK] pairwise blocks are the register-hungry part: smaller key tiles there.
        self.BKI = _block(self.K, 32)


def _cumsum(g, s: _Shapes, like):
    """G [B, H, T_pad, K] fp32: the log decays summed within each chunk (zeros when there is no decay)."""
    if g is None:
        return torch.zeros(s.B, s.H, s.NT * CHUNK, s.K, device=like.device, dtype=torch.float32)
    G = torch.empty(s.B, s.H, s.NT * CHUNK, s.K, device=g.device, dtype=torch.float32)
    _chunk_cumsum_kernel[(s.NK, s.NT, s.B * s.H)](g, G, s.T, s.NT, H=s.H, K=s.K, BT=CHUNK, BK=s.BK)
    return G


def _states(k, v, G, initial_state, output_final_state, s: _Shapes):
    h = torch.empty(s.B, s.H, s.NT, s.K, s.V, device=k.device, dtype=torch.float32)
    ht = torch.empty(s.B, s.H, s.K, s.V, device=k.device, dtype=torch.float32) if output_final_state else None
    _chunk_fwd_h_kernel[(s.NK, s.NV, s.B * s.H)](
        k,
        v,
        G,
        h,
        initial_state if initial_state is not None else h,
        ht if ht is not None else h,
        s.T,
        s.NT,
        **s.consts(),
        USE_H0=initial_state is not None,
        STORE_HT=ht is not None,
        num_warps=WIDE_WARPS,
    )
    return h, ht


def _intra_scores(q, k, G, s: _Shapes):
    A = torch.empty(s.B, s.H, s.NT, CHUNK, CHUNK, device=q.device, dtype=torch.float32)
    _chunk_intra_A_kernel[(N_SUB * N_SUB, s.NT, s.B * s.H)](
        q, k, G, A, s.T, s.NT, H=s.H, K=s.K, BT=CHUNK, BC=SUB_CHUNK, BK=s.BKI, NC=N_SUB
    )
    return A


class ChunkGLAFunction(torch.autograd.Function):
    @staticmethod
    @device_guarded
    def forward(ctx, q, k, v, g, scale, initial_state, output_final_state):
        s = _Shapes(q, v)
        G = _cumsum(g, s, q)
        h, ht = _states(k, v, G, initial_state, output_final_state, s)
        A = _intra_scores(q, k, G, s)
        o = torch.empty_like(v)
        _chunk_fwd_o_kernel[(s.NV, s.NT, s.B * s.H)](
            q,
            v,
            G,
            h,
            A,
            o,
            scale,
            s.T,
            s.NT,
            **s.consts(),
            num_warps=WIDE_WARPS,
        )
        ctx.save_for_backward(q, k, v, g, initial_state, ht)
        ctx.scale = scale
        return o, ht

    @staticmethod
    @device_guarded
    def backward(ctx, do, dht):
        q, k, v, g, initial_state, ht = ctx.saved_tensors
        scale = ctx.scale
        s = _Shapes(q, v)
        do = do.contiguous()
        dht = dht.contiguous() if dht is not None else None
        # Recomputed rather than kept from the forward: G, the chunk-start states and the intra-chunk scores.
        G = _cumsum(g, s, q)
        h, _ = _states(k, v, G, initial_state, False, s)
        A = _intra_scores(q, k, G, s)

        dh = torch.empty_like(h)
        want_dh0 = initial_state is not None and ctx.needs_input_grad[5]
        dh0 = torch.empty(s.B, s.H, s.K, s.V, device=q.device, dtype=torch.float32) if want_dh0 else None
        _chunk_bwd_dh_kernel[(s.NK, s.NV, s.B * s.H)](
            q,
            do,
            G,
            dh,
            dht if dht is not None else dh,
            dh0 if dh0 is not None else dh,
            scale,
            s.T,
            s.NT,
            **s.consts(),
            USE_DHT=dht is not None,
            STORE_DH0=want_dh0,
            num_warps=WIDE_WARPS,
        )
        dA = torch.empty_like(A)
        _chunk_bwd_dA_kernel[(s.NT, s.B * s.H)](
            v, do, dA, scale, s.T, s.NT, H=s.H, V=s.V, BT=CHUNK, BV=s.BV, num_warps=WIDE_WARPS
        )
        dv = torch.empty_like(v)
        _chunk_bwd_dv_kernel[(s.NV, s.NT, s.B * s.H)](
            k,
            G,
            A,
            dh,
            do,
            dv,
            scale,
            s.T,
            s.NT,
            **s.consts(),
            num_warps=WIDE_WARPS,
        )
        dq_intra = torch.empty_like(G)
        dk_intra = torch.empty_like(G)
        _chunk_bwd_intra_kernel[(triton.cdiv(s.K, s.BKI), s.NT * N_SUB, s.B * s.H)](
            q,
            k,
            G,
            dA,
            dq_intra,
            dk_intra,
            s.T,
            s.NT,
            H=s.H,
            K=s.K,
            BT=CHUNK,
            BC=SUB_CHUNK,
            BK=s.BKI,
            NC=N_SUB,
        )
        dq, dk = torch.empty_like(q), torch.empty_like(k)
        dB = torch.empty_like(G)
        _chunk_bwd_inter_kernel[(s.NK, s.NT, s.B * s.H)](
            q,
            k,
            v,
            G,
            h,
            dh,
            do,
            dq_intra,
            dk_intra,
            dq,
            dk,
            dB,
            scale,
            s.T,
            s.NT,
            **s.consts(),
            num_warps=WIDE_WARPS,
        )
        dg = None
        if g is not None and ctx.needs_input_grad[3]:
            dg = torch.empty(s.B, s.T, s.H, s.K, device=q.device, dtype=torch.float32)
            dg_last = (ht * dht).sum(-1).contiguous() if (ht is not None and dht is not None) else None
            _reverse_cumsum_kernel[(s.NK, s.B * s.H)](
                dB,
                dg_last if dg_last is not None else dB,
                dg,
                s.T,
                s.NT,
                H=s.H,
                K=s.K,
                BT=CHUNK,
                BK=s.BK,
                USE_LAST=dg_last is not None,
            )
            dg = dg.to(g.dtype)
        if dh0 is not None:
            dh0 = dh0.to(initial_state.dtype)
        return dq, dk, dv, dg, None, dh0, None


def chunk_gla(q, k, v, g=None, scale=None, initial_state=None, output_final_state=False, causal=True):
    q, k, v, g, scale, initial_state = prepare_inputs(q, k, v, g, scale, initial_state)
    return ChunkGLAFunction.apply(q, k, v, g, scale, initial_state, output_final_state)
