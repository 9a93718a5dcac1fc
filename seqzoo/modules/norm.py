"""RMSNorm: y = x / sqrt(mean(x^2) + eps) * weight, computed in fp32 for stability (fp64 stays fp64).

GemmaRMSNorm: the same normalisation scaled by (1 + weight), the weight starting at zero (Gemma,
RecurrentGemma; transformers' ``GemmaRMSNorm``, which also multiplies before casting back to x's dtype).

GatedRMSNorm: RMSNorm with a SiLU gate z, in the two orders the papers use:

    norm_before_gate=True:   y = RMSNorm(x) * silu(z)      # DeltaNet / Gated DeltaNet (fla's FusedRMSNormGated)
    norm_before_gate=False:  y = RMSNorm(x * silu(z))      # Mamba-2 (mamba_ssm's RMSNormGated)

``group_size`` normalises each run of that many channels of the last dimension on its own (Mamba-2 with
n_groups > 1); the weight has one entry per channel either way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _rms(x: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.to(torch.promote_types(x.dtype, torch.float32))
    return xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _rms(x, self.eps)
        return (y * self.weight.to(y.dtype)).to(x.dtype)


class GemmaRMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * (1 + weight); x [..., dim], weight [dim] zero at init (scale 1).

    Computed in fp32 (fp64 stays fp64) and cast back to x's dtype after the scale, as transformers'
    ``GemmaRMSNorm`` does ((x * w).to(fp16), not x.to(fp16) * w)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _rms(x, self.eps)
        return (y * (1.0 + self.weight.to(y.dtype))).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.numel()}, eps={self.eps}"


class GatedRMSNorm(nn.Module):
    def __init__(
        self, dim: int, eps: float = 1e-5, norm_before_gate: bool = True, group_size: int | None = None
    ):
        super().__init__()
        group_size = dim if group_size is None else group_size
        if group_size < 1 or dim % group_size:
            raise ValueError(f"GatedRMSNorm: group_size must divide dim ({dim}), got {group_size}")
        self.eps, self.norm_before_gate, self.group_size = eps, norm_before_gate, group_size
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        dt = torch.promote_types(x.dtype, torch.float32)
        xf, gate = x.to(dt), F.silu(z.to(dt))
        if not self.norm_before_gate:
            xf = xf * gate
        shape = xf.shape
        y = _rms(xf.reshape(*shape[:-1], -1, self.group_size), self.eps).reshape(shape) * self.weight.to(dt)
        if self.norm_before_gate:
            y = y * gate
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        return (
            f"{self.weight.numel()}, norm_before_gate={self.norm_before_gate}, group_size={self.group_size}"
        )
