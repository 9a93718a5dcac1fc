"""Gated linear attention in Triton, fused recurrent: a token-by-token kernel and its backward
(``recurrent_gla``, the ``triton_recurrent`` backend; ``ops.gla_step`` picks it for a few tokens on a GPU).

    S_t = exp(g_t)[:, None] * S_{t-1} + k_t^T v_t ;   o_t = (scale * q_t) S_t          (see reference.py)

One program per (batch, head, value tile) walks the sequence with its state
tile in registers; the backward walks forward once for dq and backward once for dk, dv and the initial
state's gradient. It is the decoding path (a few tokens, no chunk padding).

All states and accumulations are fp32; matmul operands take the inputs' dtype (fp32 matmuls use IEEE
precision, not TF32, so fp32 results match the reference to ~1e-6).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._triton_utils import device_guarded, row_offset
from ..common.triton_recurrent import apply, load_step, read, recurrent_tiles, write
from ..common.triton_tiles import split_bh, starting_state
from .triton_common import prepare_inputs


@triton.jit
def _recurrent_fwd_kernel(
    q,
    k,
    v,
    g,
    o,
    h0,
    ht,
    scale,
    T,
    H: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    USE_G: tl.constexpr,
    USE_H0: tl.constexpr,
    STORE_HT: tl.constexpr,
):
    # One program per (batch, head, value tile), the whole key dimension in registers.
    i_v, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h, i_bh = split_bh(i_bh, H)
    q += (i_b * T * H + i_h) * K
    k += (i_b * T * H + i_h) * K
    g += (i_b * T * H + i_h) * K
    v += (i_b * T * H + i_h) * V
    o += (i_b * T * H + i_h) * V
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    o_kv = o_k[:, None] * V + o_v[None, :]
    b_S = starting_state(h0 + i_bh * K * V, o_kv, m_kv, USE_H0, BK, BV)
    for t in range(T):
        b_q = load_step(q, t, H * K, o_k, m_k) * scale
        b_k = load_step(k, t, H * K, o_k, m_k)
        b_v = load_step(v, t, H * V, o_v, m_v)
        if USE_G:
            b_g = load_step(g, t, H * K, o_k, m_k)
            b_S = b_S * tl.exp(b_g)[:, None]
        b_S = write(b_S, b_k, b_v)
        tl.store(o + row_offset(t, (H * V)) + o_v, read(b_q, b_S).to(o.dtype.element_ty), mask=m_v)
    if STORE_HT:
        tl.store(ht + i_bh * K * V + o_kv, b_S, mask=m_kv)


@triton.jit
def _recurrent_bwd_kernel(
    q,
    k,
    v,
    g,
    do,
    h0,
    dht,
    dq,
    dk,
    dv,
    dh0,
    scale,
    T,
    B,
    H: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    USE_G: tl.constexpr,
    USE_H0: tl.constexpr,
    USE_DHT: tl.constexpr,
    STORE_DH0: tl.constexpr,
):
    # dq and dk come out per value tile (fp32 [NV, B, T, H, K], summed on the host); dv is whole per program.
    i_v, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h, i_bh = split_bh(i_bh, H)
    x_k = (i_b * T * H + i_h) * K
    x_v = (i_b * T * H + i_h) * V
    q += x_k
    k += x_k
    g += x_k
    v += x_v
    do += x_v
    dv += x_v
    dq += i_v.to(tl.int64) * B * T * H * K + x_k
    dk += i_v.to(tl.int64) * B * T * H * K + x_k
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    o_kv = o_k[:, None] * V + o_v[None, :]

    # Forward walk: dq_t = scale * S_t do_t. Written out rather than with write / apply: with those two
    # inlined here ptxas took 119 registers instead of 110 on sm_90 at K = V = 64 (the compile check), with
    # the same arithmetic; everywhere else they compile as before.
    b_S = starting_state(h0 + i_bh * K * V, o_kv, m_kv, USE_H0, BK, BV)
    for t in range(T):
        b_k = load_step(k, t, H * K, o_k, m_k)
        b_v = load_step(v, t, H * V, o_v, m_v)
        b_do = load_step(do, t, H * V, o_v, m_v)
        if USE_G:
            b_g = load_step(g, t, H * K, o_k, m_k)
            b_S = b_S * tl.exp(b_g)[:, None]
        b_S += b_k[:, None] * b_v[None, :]
        tl.store(dq + row_offset(t, (H * K)) + o_k, tl.sum(b_S * b_do[None, :], axis=1) * scale, mask=m_k)

    # Backward walk: dS_t = scale q_t^T do_t + exp(g_{t+1}) dS_{t+1}; dk_t = dS_t v_t, dv_t = k_t dS_t.
    b_dS = starting_state(dht + i_bh * K * V, o_kv, m_kv, USE_DHT, BK, BV)
    for i in range(T):
        t = T - 1 - i
        b_q = load_step(q, t, H * K, o_k, m_k) * scale
        b_k = load_step(k, t, H * K, o_k, m_k)
        b_v = load_step(v, t, H * V, o_v, m_v)
        b_do = load_step(do, t, H * V, o_v, m_v)
        b_dS = write(b_dS, b_q, b_do)
        tl.store(dk + row_offset(t, (H * K)) + o_k, apply(b_dS, b_v), mask=m_k)
        tl.store(dv + row_offset(t, (H * V)) + o_v, read(b_k, b_dS).to(dv.dtype.element_ty), mask=m_v)
        if USE_G:
            b_g = load_step(g, t, H * K, o_k, m_k)
            b_dS = b_dS * tl.exp(b_g)[:, None]
    if STORE_DH0:
        tl.store(dh0 + i_bh * K * V + o_kv, b_dS, mask=m_kv)


class RecurrentGLAFunction(torch.autograd.Function):
    @staticmethod
    @device_guarded
    def forward(ctx, q, k, v, g, scale, initial_state, output_final_state):
        B, T, H, K = q.shape
        V = v.shape[-1]
        BK, BV, warps = recurrent_tiles(K, V, wide=64)
        NV = triton.cdiv(V, BV)
        o = torch.empty_like(v)
        ht = torch.empty(B, H, K, V, device=q.device, dtype=torch.float32) if output_final_state else None
        _recurrent_fwd_kernel[(NV, B * H)](
            q,
            k,
            v,
            g if g is not None else q,
            o,
            initial_state if initial_state is not None else o,
            ht if ht is not None else o,
            scale,
            T,
            H=H,
            K=K,
            V=V,
            BK=BK,
            BV=BV,
            USE_G=g is not None,
            USE_H0=initial_state is not None,
            STORE_HT=ht is not None,
            num_warps=warps,
        )
        ctx.save_for_backward(q, k, v, g, initial_state, ht)
        ctx.scale = scale
        return o, ht

    @staticmethod
    @device_guarded
    def backward(ctx, do, dht):
        q, k, v, g, initial_state, ht = ctx.saved_tensors
        B, T, H, K = q.shape
        V = v.shape[-1]
        BK, BV, warps = recurrent_tiles(K, V, wide=64)
        NV = triton.cdiv(V, BV)
        do = do.contiguous()
        dht = dht.contiguous() if dht is not None else None
        dq = torch.empty(NV, B, T, H, K, device=q.device, dtype=torch.float32)
        dk = torch.empty_like(dq)
        dv = torch.empty_like(v)
        want_dh0 = initial_state is not None and ctx.needs_input_grad[5]
        dh0 = torch.empty(B, H, K, V, device=q.device, dtype=torch.float32) if want_dh0 else None
        _recurrent_bwd_kernel[(NV, B * H)](
            q,
            k,
            v,
            g if g is not None else q,
            do,
            initial_state if initial_state is not None else dv,
            dht if dht is not None else dv,
            dq,
            dk,
            dv,
            dh0 if dh0 is not None else dv,
            ctx.scale,
            T,
            B,
            H=H,
            K=K,
            V=V,
            BK=BK,
            BV=BV,
            USE_G=g is not None,
            USE_H0=initial_state is not None,
            USE_DHT=dht is not None,
            STORE_DH0=want_dh0,
            num_warps=warps,
        )
        dq, dk = dq.sum(0), dk.sum(0)
        dg = None
        if g is not None and ctx.needs_input_grad[3]:
            # The identity of the chunked backward:
            # dg_t = sum_{s >= t} (q_s dq_s - k_s dk_s) + the final state's share.
            dB = q.float() * dq - k.float() * dk
            dg = dB.flip(1).cumsum(1).flip(1)
            if ht is not None and dht is not None:
                dg = dg + (ht * dht).sum(-1)[:, None]
            dg = dg.to(g.dtype)
        if dh0 is not None:
            dh0 = dh0.to(initial_state.dtype)
        return dq.to(q.dtype), dk.to(k.dtype), dv, dg, None, dh0, None


def recurrent_gla(q, k, v, g=None, scale=None, initial_state=None, output_final_state=False, causal=True):
    q, k, v, g, scale, initial_state = prepare_inputs(q, k, v, g, scale, initial_state)
    return RecurrentGLAFunction.apply(q, k, v, g, scale, initial_state, output_final_state)
