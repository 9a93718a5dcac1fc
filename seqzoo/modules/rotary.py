"""Rotary position embeddings (RoPE, Su et al. 2021), half-split ("NeoX") layout.

For a head vector x = [x1, x2] (two halves of size D/2) at position p, with frequencies
f_i = base^(-2i/D):   rope(x, p) = [x1 cos(p f) - x2 sin(p f),  x2 cos(p f) + x1 sin(p f)].

Partial rotary (``rotary_dim`` R < D; RecurrentGemma rotates the first half of each head): the first R
channels are rotated as a head of size R (frequencies base^(-2i/R), halves of R/2), the other D - R pass.

Angles and the rotation are computed in fp32 (fp64 for fp64 inputs, so an fp64 model stays fp64).
"""

from __future__ import annotations

import torch


def rotary_angles(
    positions: torch.Tensor, head_dim: int, base: float = 10000.0, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """positions [...] (int) -> angles [..., head_dim // 2] in ``dtype`` (fp32 by default)."""
    inv_freq = base ** (-torch.arange(0, head_dim // 2, device=positions.device, dtype=dtype) * 2 / head_dim)
    return positions.to(dtype)[..., None] * inv_freq


def apply_rotary(
    x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0, rotary_dim: int | None = None
) -> torch.Tensor:
    """x [B, T, H, D]; positions [T] or [B, T]; ``rotary_dim`` R (even, <= D; default D): rotate the first R
    channels of each head (frequencies of a head of size R) and pass the rest. Returns x rotated, in x's dtype."""
    d = x.shape[-1] if rotary_dim is None else rotary_dim
    if d > x.shape[-1]:
        raise ValueError(f"apply_rotary: rotary_dim {d} exceeds the head size {x.shape[-1]}")
    half = d // 2
    dt = torch.promote_types(x.dtype, torch.float32)
    ang = rotary_angles(positions, d, base, dt)  # [T, D/2] or [B, T, D/2]
    if ang.dim() == 2:
        ang = ang[None]
    cos, sin = ang.cos()[:, :, None, :], ang.sin()[:, :, None, :]  # broadcast over heads
    xf = x.to(dt)
    x1, x2 = xf[..., :half], xf[..., half : 2 * half]
    out = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin, xf[..., 2 * half :]], dim=-1)
    return out.to(x.dtype)
