"""``short_conv``: a causal depthwise convolution between two projections.

    u = x W_in                                   # [B, T, D]
    h_t = act( sum_{k<W} w[:, k] * u_{t-W+1+k} + b )
    y = h W_out

A short convolution sees only the last W tokens, so it cannot recall anything further back: the
baseline that MQAR separates from attention (Zoology). Decoding keeps the last W-1 projected inputs.
"""

from __future__ import annotations

import torch
from torch import nn

from ..modules.short_conv import ShortConvolution, rename_parameters_on_load
from ..registry import register_mixer
from .base import Mixer, State


@register_mixer(
    "short_conv",
    description="causal depthwise short convolution between input and output projections",
    paper="Arora et al. 2023, Zoology (short-convolution baseline); Poli et al. 2023, Hyena (short filters)",
    family="short convolution",
    demo=True,
    settings_source="Zoology's short-convolution baseline, width 4",
    mqar_lr=1e-2,
)
class ShortConv(Mixer):
    def __init__(self, d_model: int, width: int = 4, activation: str | None = "silu", backend: str = "auto"):
        super().__init__(d_model)
        if not isinstance(width, int) or not 2 <= width <= 8:
            raise ValueError(f"short_conv: width must be an int in 2..8, got {width!r}")
        if activation not in (None, "silu"):
            raise ValueError(f"short_conv: activation must be None or 'silu', got {activation!r}")
        self.width, self.activation, self.backend = width, activation, backend
        self.in_proj = nn.Linear(d_model, d_model, bias=False)
        # Depthwise filter [D, W]; uniform in +-1/sqrt(W), as a Conv1d with groups=D initialises it.
        self.conv = ShortConvolution(d_model, width, backend=backend, activation=activation)
        rename_parameters_on_load(
            self, {"conv_weight": "conv.weight", "conv_bias": "conv.bias"}
        )  # checkpoints from before the move
        self.out_proj = nn.Linear(d_model, d_model, bias=False)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, width={self.width}, activation={self.activation}"

    def _conv(self, u, initial_state=None, output_final_state=False, cu_seqlens=None):
        return self.conv(u, initial_state, output_final_state, cu_seqlens=cu_seqlens)

    def forward(self, x: torch.Tensor, cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
        self.check_input(x)
        self.check_packed(x, cu_seqlens)
        h, _ = self._conv(self.in_proj(x), cu_seqlens=cu_seqlens)
        return self.out_proj(h)

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        # The state is fp32 for fp32/fp16/bf16 models (fp64 for fp64), as the op returns it.
        dtype = torch.promote_types(dtype or torch.float32, torch.float32)
        return {"conv": torch.zeros(batch_size, self.d_model, self.width - 1, device=device, dtype=dtype)}

    def prefill(
        self, x: torch.Tensor, state: State | None = None, cu_seqlens: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, State]:
        self.check_input(x)
        if cu_seqlens is not None:
            self.check_packed(x, cu_seqlens, state, ("conv",))
        elif state is not None:
            self.check_state(state, x.shape[0], ("conv",))
        h, conv = self._conv(
            self.in_proj(x), None if state is None else state["conv"], True, cu_seqlens=cu_seqlens
        )
        return self.out_proj(h), {"conv": conv}

    def step(self, x_t: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        self.check_input(x_t, "x_t", ndim=2)
        y, state = self.prefill(x_t[:, None], state)
        return y[:, 0], state

    def state_size(self, seq_len: int) -> int:
        return self.d_model * (self.width - 1)
