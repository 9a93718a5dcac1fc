"""Addressing and tile loads shared by the gla and delta_rule kernels (see the package docstring).

Layouts: inputs [B, T, H, C] (rows H * C elements apart), chunk-padded buffers [B, H, T_pad, C] (rows C
apart, every row of the last chunk allocated, so they load without a row mask), states [B, H, K, V].
Positions in time become int64 before they multiply a row stride (``row_offset``).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .._triton_utils import row_offset


def block(dim: int, cap: int) -> int:
    """The tile width for a dimension of ``dim``: its next power of two, at least 16 (``tl.dot`` needs every
    dimension >= 16; masks cover the padding) and at most ``cap``."""
    return min(cap, max(16, triton.next_power_of_2(dim)))


@triton.jit
def split_bh(i_bh, H: tl.constexpr):
    """A program's batch * head index -> (batch, head, batch * head); batch and batch * head as int64, as
    they multiply T * H * C and NT * K * V."""
    return (i_bh // H).to(tl.int64), i_bh % H, i_bh.to(tl.int64)


@triton.jit
def load_rows(x, o_t, m_t, o_c, m_c, STRIDE):
    """The [rows, columns] tile of a [T, H, C] slice (rows ``STRIDE`` = H * C apart), zeros where masked."""
    return tl.load(
        x + row_offset(o_t[:, None], STRIDE) + o_c[None, :], mask=m_t[:, None] & m_c[None, :], other=0.0
    )


@triton.jit
def load_padded_rows(x, o_t, o_c, m_c, STRIDE):
    """The [rows, columns] tile of a chunk-padded [T_pad, C] buffer: every row exists, only columns masked."""
    return tl.load(x + row_offset(o_t[:, None], STRIDE) + o_c[None, :], mask=m_c[None, :], other=0.0)


@triton.jit
def load_state(x, o_k, m_k, o_v, m_v, V: tl.constexpr):
    """The [BK, BV] tile of a [K, V] state (or state gradient), zeros where masked."""
    return tl.load(x + o_k[:, None] * V + o_v[None, :], mask=m_k[:, None] & m_v[None, :], other=0.0)


@triton.jit
def starting_state(x, o_kv, m_kv, USE: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr):
    """The fp32 [BK, BV] state a walk starts from: the tile of ``x`` (h0, or dht walking backwards) if
    ``USE``, else zeros."""
    b_S = tl.zeros([BK, BV], dtype=tl.float32)
    if USE:
        b_S += tl.load(x + o_kv, mask=m_kv, other=0.0).to(tl.float32)
    return b_S


class ChunkShapes:
    """The sizes a chunked launch needs, from q [B, T, H, K] and v [B, T, H, V]: B, T, H, K, V; BT the chunk
    and NT the chunks; BK, BV the key and value tiles (``block``, at most 64) and NK, NV their counts.
    ``consts`` gives the kernels' shared constexprs (H, K, V, BT, BK, BV), ``extra`` added or overriding."""

    def __init__(self, q, v, chunk: int):
        self.B, self.T, self.H, self.K = q.shape
        self.V = v.shape[-1]
        self.BT = chunk
        self.NT = triton.cdiv(self.T, chunk)
        self.BK = block(self.K, 64)
        self.BV = block(self.V, 64)
        self.NK = triton.cdiv(self.K, self.BK)
        self.NV = triton.cdiv(self.V, self.BV)

    def consts(self, **extra) -> dict:
        return {**dict(H=self.H, K=self.K, V=self.V, BT=self.BT, BK=self.BK, BV=self.BV), **extra}
