"""Shared building blocks: norms, MLPs, rotary embeddings."""

from .mlp import MLP, build_mlp
from .norm import GatedRMSNorm, RMSNorm
from .rotary import apply_rotary, rotary_angles

__all__ = ["MLP", "build_mlp", "RMSNorm", "GatedRMSNorm", "apply_rotary", "rotary_angles"]
