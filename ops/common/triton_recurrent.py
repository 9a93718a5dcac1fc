"""One token of the fused recurrent kernels of gla and delta_rule, and their tile choice (see the package
docstring). A program owns a [BK, BV] state tile (the whole key dimension, a tile of value columns) in
registers and walks the sequence token by token:

    GLA:         S <- exp(g_t)[:, None] S + k_t v_t^T                           o_t = scale q_t S
    delta rule:  S <- a_t S ;  u = beta_t (v_t - k_t S) ;  S <- S + k_t u^T     o_t = scale q_t S

``write`` is the rank-one write, ``read`` (q S, over keys) and ``apply`` (S x, over values) the two products
with a vector that the forward and backward walks take.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .._triton_utils import row_offset


def recurrent_tiles(K: int, V: int, wide: int) -> tuple[int, int, int]:
    """(BK, BV, num_warps) for a state tile in registers: the whole key dimension, value tiles of ``wide``
    (half that for keys over 64) and 8 warps for keys over 64, so the tile stays within the registers."""
    BK = triton.next_power_of_2(K)
    BV = min(triton.next_power_of_2(V), wide if BK <= 64 else wide // 2)
    return BK, BV, 4 if BK <= 64 else 8


@triton.jit
def load_step(x, t, STRIDE, o_c, m_c):
    """Row ``t`` (the columns o_c) of a [T, H, C] slice whose rows are ``STRIDE`` apart, as fp32."""
    return tl.load(x + row_offset(t, STRIDE) + o_c, mask=m_c, other=0.0).to(tl.float32)


@triton.jit
def write(b_S, b_k, b_x):
    """S + k x^T: [BK, BV]."""
    return b_S + b_k[:, None] * b_x[None, :]


@triton.jit
def read(b_q, b_S):
    """q S: [BV], summed over the keys."""
    return tl.sum(b_S * b_q[:, None], axis=0)


@triton.jit
def apply(b_S, b_x):
    """S x: [BK], summed over the value columns of the tile."""
    return tl.sum(b_S * b_x[None, :], axis=1)
