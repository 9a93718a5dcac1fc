"""Channel MLPs used between mixers.

- ``swiglu``: W2 (silu(W1 x) * W3 x), hidden = 8/3 * d * ratio/4 rounded to a multiple of 8 (LLaMA);
- ``geglu``: W2 (gelu(W1 x) * W3 x), the gated-GeLU MLP of Griffin;
- ``gelu``:   W2 gelu(W1 x), hidden = ratio * d (GPT-2).

``hidden`` gives the width of each branch exactly instead (a converted checkpoint's width: RecurrentGemma's
3 d per branch), and ``bias`` adds biases to W1, W3 and W2 (RecurrentGemma's MLP has them).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

MLP_KINDS = ("swiglu", "geglu", "gelu", "none")


class MLP(nn.Module):
    def __init__(
        self,
        d_model: int,
        kind: str = "swiglu",
        ratio: float = 4.0,
        bias: bool = False,
        hidden: int | None = None,
    ):
        super().__init__()
        if kind not in MLP_KINDS[:-1]:
            raise ValueError(f"mlp kind must be one of {MLP_KINDS}, got {kind!r}")
        if not isinstance(bias, bool):
            raise TypeError(f"mlp: bias must be a bool, got {bias!r}")
        self.kind = kind
        gated = kind in ("swiglu", "geglu")
        if hidden is None:
            hidden = int(ratio * d_model * (2 / 3 if gated else 1))
            hidden = max(8, (hidden + 7) // 8 * 8)
        elif not isinstance(hidden, int) or isinstance(hidden, bool) or hidden < 1:
            raise ValueError(f"mlp: hidden must be a positive int (the width of each branch), got {hidden!r}")
        self.w1 = nn.Linear(d_model, hidden, bias=bias)
        self.w3 = nn.Linear(d_model, hidden, bias=bias) if gated else None
        self.w2 = nn.Linear(hidden, d_model, bias=bias)

    def forward(self, x):
        h = self.w1(x)
        if self.kind == "swiglu":
            h = F.silu(h) * self.w3(x)
        elif self.kind == "geglu":
            h = F.gelu(h, approximate="tanh") * self.w3(x)
        else:
            h = F.gelu(h, approximate="tanh")
        return self.w2(h)


def build_mlp(
    d_model: int, kind: str = "swiglu", ratio: float = 4.0, bias: bool = False, hidden: int | None = None
) -> nn.Module | None:
    """The MLP of a block, or None for ``kind="none"`` (Zoology's mixer-only models)."""
    if kind == "none":
        return None
    return MLP(d_model, kind, ratio, bias=bias, hidden=hidden)
