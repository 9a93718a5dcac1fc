"""Rotary position embeddings (RoPE, Su et al. 2021), half-split ("NeoX") layout.

For a head vector x = [x1, x2] (two halves of size D/2) at position p, with frequencies
f_i = base^(-2i/D):   rope(x, p) = [x1 cos(p f) - x2 sin(p f),  x2 cos(p f) + x1 sin(p f)].
"""

from __future__ import annotations

import torch


def rotary_angles(positions: torch.Tensor, head_dim: int, base: float = 10000.0) -> torch.Tensor:
    """positions [...] (int) -> angles [..., head_dim // 2] in fp32."""
    inv_freq = base ** (
        -torch.arange(0, head_dim // 2, device=positions.device, dtype=torch.float32) * 2 / head_dim
    )
    return positions.float()[..., None] * inv_freq


def apply_rotary(x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """x [B, T, H, D]; positions [T] or [B, T]. Returns x rotated, in x's dtype."""
    d = x.shape[-1]
    half = d // 2
    ang = rotary_angles(positions, d, base)  # [T, D/2] or [B, T, D/2]
    if ang.dim() == 2:
        ang = ang[None]
    cos, sin = ang.cos()[:, :, None, :], ang.sin()[:, :, None, :]  # broadcast over heads
    xf = x.float()
    x1, x2 = xf[..., :half], xf[..., half : 2 * half]
    out = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin, xf[..., 2 * half :]], dim=-1)
    return out.to(x.dtype)
