"""Combiner attention, the definition: the implied T x T probability matrix, built densely in fp64, applied to v.

Combiner (Ren et al. 2021) keeps softmax attention's full support at sparse cost by factorising

    p(j|i) = p(j|i)                       j in the direct part Omega_i^0 (exact attention)
    p(j|i) = p(r|i) q(j|r)                j in region r (attend to the region's abstraction, then within it)

with one joint softmax over [scale q_i.k_j (j in Omega_i^0) ; scale q_i.kbar_r (r a region of i)] and a
within-region distribution q(j|r) = softmax_{j in r}(scale qbar_r . k_j). Positions are cut into segments of
``segment`` = s tokens (the last one shorter when s does not divide T: only its real tokens are pooled).

- ``fixed`` (Combiner-Fixed): Omega_i^0 = i's own segment (causal: j <= i); each other segment r (causal: each
  earlier one) is one region, kbar_r = max_{j in r} k_j, qbar_r = max_{j in r} q_j (max-pooling, the LM
  configs' ``identity-max``; a true max, not the TF code's cumsum approximation).
- ``axial`` (Combiner-Axial, row-major, ``row_summary = none``): segments are rows of s columns; Omega_i^0 = i's
  own row (causal: j <= i); for each other row r (causal: each earlier one) the region is row r seen from i's
  column c: kbar = k_(r,c), and q(j|r) is the complete (non-causal) row-r attention of q_(r,c).

A region is abstractly an index ``a`` with a key ``kbar_a``, a within-distribution ``W[a, :]`` over positions and
a mask ``region[i, a]`` saying which queries see it; the implied matrix is

    P[i, j] = exp(l_ij) [j in Omega_i^0] / Z_i + sum_a region[i, a] exp(m_ia) W[a, j] / Z_i
    Z_i = sum_{j in Omega_i^0} exp(l_ij) + sum_a region[i, a] exp(m_ia),   l_ij = scale q_i.k_j, m_ia = scale q_i.kbar_a

Every row sums to 1 and P[i, j] > 0 for every j <= i (causal) or every j (bidirectional): full support.
Shapes: q, k [B, T, H, D], v [B, T, H, E] -> o [B, T, H, E] in q's dtype. The op is linear in v.
"""

from __future__ import annotations

import math

import torch

VARIANTS = ("fixed", "axial")


def default_segment(t: int) -> int:
    """sqrt(T) rounded up: the segment length that balances the direct (T s) and region (T^2 / s) costs."""
    return math.isqrt(t - 1) + 1 if t > 0 else 1


def _regions(q, k, s: int, variant: str, causal: bool, scale: float):
    """Region keys kbar [B, A, H, D], within-distributions W [B, H, A, T] and visibility region [T, A]."""
    b, t, h, d = q.shape
    pos = torch.arange(t, device=q.device)
    seg, col = pos // s, pos % s
    n = (t + s - 1) // s
    if variant == "fixed":
        kbar = torch.stack([k[:, seg == r].amax(1) for r in range(n)], 1)  # [B, n, H, D]
        qbar = torch.stack([q[:, seg == r].amax(1) for r in range(n)], 1)
        logits = torch.einsum("brhd,bjhd->bhrj", qbar, k) * scale
        inside = seg[None, :] == torch.arange(n, device=q.device)[:, None]  # [n, T]
        W = torch.softmax(logits.masked_fill(~inside, float("-inf")), dim=-1)
        a_seg = torch.arange(n, device=q.device)
        region = (a_seg[None, :] < seg[:, None]) if causal else (a_seg[None, :] != seg[:, None])
        return kbar, W, region
    # axial: one region per position a = (row r, column c), seen by the queries of column c in other rows.
    logits = torch.einsum("bahd,bjhd->bhaj", q, k) * scale
    same_row = seg[:, None] == seg[None, :]
    W = torch.softmax(logits.masked_fill(~same_row, float("-inf")), dim=-1)  # complete row attention
    other = (seg[None, :] < seg[:, None]) if causal else (seg[None, :] != seg[:, None])
    # A short last row (s does not divide T) is read from column c at its last real column when it has no c.
    row_len = (t - seg * s).clamp(max=s)  # [A]: the length of region a's row
    region = other & (col[None, :] == torch.minimum(col[:, None], row_len[None, :] - 1))
    return k, W, region


def implied_matrix(
    q, k, segment: int, variant: str = "fixed", causal: bool = True, scale=None
) -> torch.Tensor:
    """The probability matrix P [B, H, T, T] (fp64) that Combiner applies to v: o = P v."""
    d, t = q.shape[-1], q.shape[1]
    scale = d**-0.5 if scale is None else scale
    q, k = q.to(torch.float64), k.to(torch.float64)
    s = int(segment)
    pos = torch.arange(t, device=q.device)
    seg = pos // s
    direct = seg[:, None] == seg[None, :]
    if causal:
        direct = direct & (pos[None, :] <= pos[:, None])
    kbar, W, region = _regions(q, k, s, variant, causal, scale)
    l_direct = (torch.einsum("bihd,bjhd->bhij", q, k) * scale).masked_fill(~direct, float("-inf"))
    l_region = (torch.einsum("bihd,bahd->bhia", q, kbar) * scale).masked_fill(~region, float("-inf"))
    # One joint softmax over the direct logits and the region logits.
    p = torch.softmax(torch.cat([l_direct, l_region], -1), dim=-1)
    p_direct, p_region = p[..., :t], p[..., t:]
    return p_direct + torch.einsum("bhia,bhaj->bhij", p_region, W)


def combiner(q, k, v, segment=None, variant="fixed", causal=True, scale=None):
    s = default_segment(q.shape[1]) if segment is None else segment
    P = implied_matrix(q, k, s, variant, causal, scale)
    o = torch.einsum("bhij,bjhe->bihe", P, v.to(torch.float64))
    return o.to(q.dtype)
