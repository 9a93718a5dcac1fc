"""The chunk-state and chunk-output arithmetic shared by gla's and delta_rule's chunked kernels.

In a chunk of BT positions with h the state before it, G the log decays summed from the chunk start and
G_last = G at the chunk's last row (GLA: per key, G [BT, BK] and G_last [BK]; the delta rule: per head,
G [BT] and G_last a scalar), x the values the chunk writes (GLA: v; the delta rule: u = U - W h):

    h_next = exp(G_last) h + (k exp(G_last - G))^T x                          forward state
    dh     = exp(G_last) dh' + (scale q exp(G))^T do   (- W^T du: the caller)  backward, the same form
    o      = scale ((q exp(G)) h + A x)                                       output
    dx     = scale A^T do + (k exp(G_last - G)) dh'                           dv (GLA), du (delta rule)

The decay factors (from ``key_decays`` / ``head_decays``) are tiles that broadcast against [BT, BK] and [BK, BV] (per key:
[BT, BK] and [BK, 1]; per head: [BT, 1] and a scalar), so the per-key / per-head choice is one constexpr
here and none in the arithmetic. Every exponent is <= 0 (G decreases along the chunk). Matmul operands
take the type DT (the inputs' type, or fp32 in IEEE precision); accumulations are fp32.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .._triton_utils import row_offset
from .triton_tiles import load_padded_rows


@triton.jit
def key_decays(G, i_n, o_t, o_k, m_k, BT: tl.constexpr, K: tl.constexpr):
    """(G [BT, BK], G_last [BK]) of chunk ``i_n`` from the chunk-padded per-key log decays G [T_pad, K]."""
    b_G = load_padded_rows(G, o_t, o_k, m_k, K)
    b_Gl = tl.load(G + (row_offset(i_n, BT) + BT - 1) * K + o_k, mask=m_k, other=0.0)
    return b_G, b_Gl


@triton.jit
def head_decays(G, i_n, o_t, BT: tl.constexpr):
    """(G [BT], G_last) of chunk ``i_n`` from the chunk-padded per-head log decays G [T_pad]."""
    return tl.load(G + o_t), tl.load(G + i_n * BT + BT - 1)


@triton.jit
def to_chunk_end(b_G, b_Gl, PER_KEY: tl.constexpr):
    """exp(G_last - G): a row's decay to the chunk's end, [BT, BK] per key or [BT, 1] per head."""
    if PER_KEY:
        b_d = tl.exp(b_Gl[None, :] - b_G)
    else:
        b_d = tl.exp(b_Gl - b_G)[:, None]
    return b_d


@triton.jit
def from_chunk_start(b_G, PER_KEY: tl.constexpr):
    """exp(G): a row's decay from the chunk's start, [BT, BK] per key or [BT, 1] per head."""
    if PER_KEY:
        b_d = tl.exp(b_G)
    else:
        b_d = tl.exp(b_G)[:, None]
    return b_d


@triton.jit
def over_chunk(b_Gl, PER_KEY: tl.constexpr):
    """exp(G_last): the state's decay over the whole chunk, [BK, 1] per key (rows of the state) or a scalar."""
    if PER_KEY:
        b_d = tl.exp(b_Gl)[:, None]
    else:
        b_d = tl.exp(b_Gl)
    return b_d


@triton.jit
def carry_state(b_h, b_hdecay, b_a, b_adecay, b_x, DECAY: tl.constexpr, DT: tl.constexpr):
    """h * h_decay + (a * a_decay)^T x: [BK, BV] fp32, from the [BK, BV] state tile h, the [BT, BK] rows a and
    the [BT, BV] rows x. The forward's state over one chunk (a = k, decays over_chunk / to_chunk_end, x the
    values written) and, walking backwards, the state gradient's (a = scale q, decays over_chunk /
    from_chunk_start, x = do). Without ``DECAY`` the decays are not read: h + a^T x."""
    b_a = b_a.to(tl.float32)
    if DECAY:
        b_a = b_a * b_adecay
        b_h = b_h * b_hdecay
    return b_h + tl.dot(tl.trans(b_a.to(DT)), b_x.to(DT), input_precision="ieee")


@triton.jit
def decayed_dot(b_a, b_adecay, b_s, DECAY: tl.constexpr, DT: tl.constexpr):
    """(a * a_decay) s: [BT, BV] fp32 from the [BT, BK] rows a and a [BK, BV] state tile s. The output's
    inter-chunk term (a = q, decay from_chunk_start, s = h) and the written values' gradient from the next
    state's (a = k, decay to_chunk_end, s = dh'). Without ``DECAY``: a s."""
    if DECAY:
        b_a = b_a.to(tl.float32) * b_adecay
    return tl.dot(b_a.to(DT), b_s.to(DT), input_precision="ieee")


@triton.jit
def chunk_tile(A, BT: tl.constexpr):
    """The [BT, BT] fp32 matrix of one chunk (A, Aqk, dA: pointer at the chunk's first element)."""
    o_r = tl.arange(0, BT)
    return tl.load(A + o_r[:, None] * BT + o_r[None, :])


# The two below take the [BT, BT] tile already loaded (chunk_tile): the callers load it where they did before
# sharing these (before the values in one kernel, after them in another), as the load order moves ptxas's
# register and shared-memory choices (gla's dv kernel took 24 KiB instead of 16 with the load here).


@triton.jit
def intra_output(b_o, b_A, b_x, DT: tl.constexpr):
    """b_o + A x: the output's intra-chunk term added to its inter-chunk one ([BT, BV] fp32), A the chunk's
    [BT, BT] causal scores (zero above the diagonal), x [BT, BV] the values written."""
    return b_o + tl.dot(b_A.to(DT), b_x.to(DT), input_precision="ieee")


@triton.jit
def intra_values_grad(b_A, b_do, scale, DT: tl.constexpr):
    """scale A^T do: the written values' gradient through the intra-chunk output, [BT, BV] fp32."""
    return tl.dot(tl.trans(b_A).to(DT), b_do.to(DT), input_precision="ieee") * scale
