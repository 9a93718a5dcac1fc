"""Shared building blocks: norms, MLPs, rotary embeddings, the short convolution."""

from .mlp import MLP, build_mlp
from .norm import GatedRMSNorm, RMSNorm
from .rotary import apply_rotary, rotary_angles
from .short_conv import ShortConvolution, rename_parameters_on_load

__all__ = [
    "MLP",
    "build_mlp",
    "RMSNorm",
    "GatedRMSNorm",
    "apply_rotary",
    "rotary_angles",
    "ShortConvolution",
    "rename_parameters_on_load",
]
