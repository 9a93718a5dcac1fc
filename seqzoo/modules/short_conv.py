"""``ShortConvolution``: the causal depthwise convolution every mixer with a short convolution uses.

    y[b, t, c] = act(sum_{j<W} weight[c, j] u[b, t - W + 1 + j, c] + bias[c])     # ops.causal_conv1d

u, y [B, T, C]; weight [C, W]; bias [C] or none; act is SiLU (the linear-attention family, mamba, mamba2) or
the identity (short_conv's default, rglru, Hyena's, BaseConv's and Orchid's short filters). Decoding carries
the last W - 1 inputs, [B, C, W - 1]: ``y, state = conv(u, state, output_state=True)``.

The weight is drawn as ``nn.Conv1d`` draws a depthwise filter (uniform in +-1/sqrt(W)); the bias starts at zero
or, with ``bias_init="uniform"``, as ``nn.Conv1d``'s (Mamba's). :func:`rename_parameters_on_load` lets a layer
that used to hold the convolution's parameters itself (``conv_weight``, ``conv_bias``) load its old checkpoints.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import ops


class ShortConvolution(nn.Module):
    def __init__(
        self,
        channels: int,
        width: int,
        backend: str = "auto",
        activation: str | None = "silu",
        bias: bool = True,
        bias_init: str = "zeros",
    ):
        super().__init__()
        if activation not in (None, "silu"):
            raise ValueError(f"ShortConvolution: activation must be None or 'silu', got {activation!r}")
        if bias_init not in ("zeros", "uniform"):
            raise ValueError(f"ShortConvolution: bias_init must be 'zeros' or 'uniform', got {bias_init!r}")
        bound = width**-0.5
        self.weight = nn.Parameter(torch.empty(channels, width).uniform_(-bound, bound))
        if not bias:
            self.bias = None
        elif bias_init == "uniform":
            self.bias = nn.Parameter(torch.empty(channels).uniform_(-bound, bound))
        else:
            self.bias = nn.Parameter(torch.zeros(channels))
        self.channels, self.width, self.backend, self.activation = channels, width, backend, activation

    def extra_repr(self) -> str:
        return f"channels={self.channels}, width={self.width}, activation={self.activation}"

    def forward(self, u, state=None, output_state=False, cu_seqlens=None):
        """``cu_seqlens``: u [1, T, C] packs sequences; no tap reaches across a boundary, and ``state`` / the
        returned state hold one row per sequence."""
        return ops.causal_conv1d(
            u,
            self.weight,
            self.bias,
            activation=self.activation,
            initial_state=state,
            output_final_state=output_state,
            backend=self.backend,
            cu_seqlens=cu_seqlens,
        )


def rename_parameters_on_load(module: nn.Module, renames: dict[str, str]) -> None:
    """Map old parameter names (relative to ``module``) to new ones when a state dict is loaded into it, so
    that checkpoints saved before a parameter moved (e.g. ``conv_weight`` -> ``conv.weight``) still load."""

    def hook(state_dict, prefix, *args):
        for old, new in renames.items():
            if prefix + old in state_dict and prefix + new not in state_dict:
                state_dict[prefix + new] = state_dict.pop(prefix + old)

    module._register_load_state_dict_pre_hook(hook)
