"""Causal depthwise convolution, the definition through F.conv1d in fp32.

    xp = [initial_state ; x]                       # [B, W-1+T, D]; initial_state defaults to zeros
    y_t = act( sum_{k=0}^{W-1} weight[:, k] * xp[t + k] + bias )
    final_state = xp[-(W-1):]                      # the last W-1 inputs, for decoding

Shapes: x [B, T, D]; weight [D, W]; bias [D]; initial_state / final_state [B, D, W-1] (channel-first, as
causal-conv1d keeps them). ``activation`` is None or "silu".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def padded_input(x: torch.Tensor, initial_state: torch.Tensor | None, width: int) -> torch.Tensor:
    """[B, D, W-1+T]: the initial state (zeros when None) followed by x, channel-first."""
    b, t, d = x.shape
    xt = x.transpose(1, 2)
    if initial_state is None:
        initial_state = xt.new_zeros(b, d, width - 1)
    return torch.cat([initial_state.to(xt.dtype), xt], dim=2)


def causal_conv1d(x, weight, bias=None, activation=None, initial_state=None, output_final_state=False):
    width = weight.shape[1]
    # fp32 arithmetic (fp64 stays fp64, so float64 tests can be exact).
    dt = torch.promote_types(x.dtype, torch.float32)
    xp = padded_input(x.to(dt), None if initial_state is None else initial_state.to(dt), width)
    y = F.conv1d(xp, weight.to(dt).unsqueeze(1), None if bias is None else bias.to(dt), groups=x.shape[2])
    if activation == "silu":
        y = F.silu(y)
    final = xp[:, :, xp.shape[2] - (width - 1) :] if output_final_state else None
    return y.transpose(1, 2).to(x.dtype), final
