"""``rglru``: Griffin's recurrent block around the Real-Gated Linear Recurrent Unit (Hawk the model: the preset ``hawk``).

    gate = gelu(x W_gate)                                    # [B, T, W], W = lru_width (default d_model)
    u    = conv(x W_in)                                      # causal depthwise conv of width 4
    r_t  = sigmoid(u_t W_a + b_a)                            # recurrence gate  } block-diagonal weights:
    i_t  = sigmoid(u_t W_x + b_x)                            # input gate       } n_heads blocks of W/n_heads
    log a_t = -c * softplus(Lambda) * r_t                    # c = 8; Lambda [W], a_t in (0, 1)
    h_t  = a_t * h_{t-1} + sqrt(1 - a_t^2) * (i_t * u_t)     # ops.linear_scan, fp32 state
    y    = (h * gate) W_out

The recurrence gate only ever shrinks the decay (a_t = a^(c r_t) with a = exp(-softplus(Lambda))), and
sqrt(1 - a_t^2) keeps the state's scale when a_t is near 1. Lambda starts so that the decay at r = 1,
exp(-c softplus(Lambda)), is uniform in [0.9, 0.999] (Griffin, section 2.4). The derivative of the square
root is unbounded as a_t -> 1 (it happens when r_t -> 0), so its gradient is clipped at 1000 (the forward
value is exact).

Decoding keeps the last 3 inputs of the convolution [B, W, 3] and the recurrent state [B, W], both fp32:
constant memory, whatever the length.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from ..modules.short_conv import ShortConvolution, rename_parameters_on_load
from ..registry import register_mixer
from .base import Mixer, State, backend_for

# Griffin's scale of the log-decay: a_t = a^(c r_t).
DECAY_SCALE = 8.0
# The largest derivative the square root sqrt(1 - a_t^2) passes back.
MAX_SQRT_GRAD = 1000.0


class _SqrtBoundedGrad(torch.autograd.Function):
    """sqrt(y) for y >= 0, with the derivative 1 / (2 sqrt(y)) capped at MAX_SQRT_GRAD."""

    @staticmethod
    def forward(ctx, y):
        root = torch.sqrt(y)
        ctx.save_for_backward(root)
        return root

    @staticmethod
    def backward(ctx, grad):
        (root,) = ctx.saved_tensors
        return grad / torch.clamp(2 * root, min=1.0 / MAX_SQRT_GRAD)


def sqrt_bounded_grad(y: torch.Tensor) -> torch.Tensor:
    return _SqrtBoundedGrad.apply(y)


@register_mixer(
    "rglru",
    description="Griffin recurrent block: gelu gate x (short conv -> RG-LRU gated linear recurrence)",
    paper="De et al. 2024, Griffin: Mixing Gated Linear Recurrences with Local Attention (RG-LRU, Hawk)",
    family="gated RNN",
    demo=True,
    settings_source="De et al. 2024 (Griffin): temporal conv width 4, width d",
    lm_mlp="geglu",
    test_kwargs={"n_heads": 4},
    mqar_lr=1e-2,
)
class RGLRUBlock(Mixer):
    def __init__(
        self,
        d_model: int,
        lru_width: int | None = None,
        n_heads: int | None = None,
        conv_width: int = 4,
        c: float = DECAY_SCALE,
        min_decay: float = 0.9,
        max_decay: float = 0.999,
        backend: str = "auto",
    ):
        super().__init__(d_model)
        name = self.mixer_name
        lru_width = d_model if lru_width is None else lru_width
        if not isinstance(lru_width, int) or isinstance(lru_width, bool) or lru_width < 1:
            raise ValueError(f"{name}: lru_width must be a positive int, got {lru_width!r}")
        # One block per head, as Griffin matches the gates' blocks to its attention heads (head size 128).
        n_heads = max(1, lru_width // 128) if n_heads is None else n_heads
        if not isinstance(n_heads, int) or isinstance(n_heads, bool) or n_heads < 1 or lru_width % n_heads:
            raise ValueError(
                f"{name}: n_heads must be a positive int dividing lru_width={lru_width}, got {n_heads!r}"
            )
        if not isinstance(conv_width, int) or not 2 <= conv_width <= 8:
            raise ValueError(f"{name}: conv_width must be an int in 2..8, got {conv_width!r}")
        if not c > 0:
            raise ValueError(f"{name}: c must be positive, got {c!r}")
        if not 0 < min_decay <= max_decay < 1:
            raise ValueError(
                f"{name}: need 0 < min_decay <= max_decay < 1, got {min_decay!r} and {max_decay!r}"
            )
        self.lru_width, self.n_heads, self.conv_width, self.c = lru_width, n_heads, conv_width, float(c)
        self.backend = backend
        block = lru_width // n_heads

        self.gate_proj = nn.Linear(d_model, lru_width, bias=False)
        self.in_proj = nn.Linear(d_model, lru_width, bias=False)
        # Griffin's temporal convolution: no activation; the filter drawn as nn.Conv1d draws a depthwise one.
        self.conv = ShortConvolution(
            lru_width, conv_width, backend=backend_for(ops.causal_conv1d, backend), activation=None
        )
        rename_parameters_on_load(
            self, {"conv_weight": "conv.weight", "conv_bias": "conv.bias"}
        )  # checkpoints from before the move
        # Block-diagonal gate weights [n_heads, block, block] (LeCun-normal per block) and biases.
        self.gate_a_weight = nn.Parameter(torch.randn(n_heads, block, block) * block**-0.5)
        self.gate_a_bias = nn.Parameter(torch.zeros(n_heads, block))
        self.gate_x_weight = nn.Parameter(torch.randn(n_heads, block, block) * block**-0.5)
        self.gate_x_bias = nn.Parameter(torch.zeros(n_heads, block))
        # Lambda such that exp(-c softplus(Lambda)), the decay at r = 1, is uniform in [min_decay, max_decay]:
        # softplus(Lambda) = -log(u) / c, so Lambda = log(expm1(-log(u) / c)).
        u = torch.empty(lru_width, dtype=torch.float64).uniform_(min_decay, max_decay)
        self.a_param = nn.Parameter(torch.log(torch.expm1(-torch.log(u) / self.c)).float())
        self.out_proj = nn.Linear(lru_width, d_model, bias=False)

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, lru_width={self.lru_width}, n_heads={self.n_heads}, "
            f"conv_width={self.conv_width}, c={self.c}"
        )

    # -- the pieces ----------------------------------------------------------------------------------

    def _gate(self, u: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, t, _ = u.shape
        uh = u.view(b, t, self.n_heads, -1)
        return (torch.einsum("bthi,hij->bthj", uh, weight) + bias).reshape(b, t, self.lru_width)

    def _rglru(self, u: torch.Tensor, h0: torch.Tensor | None):
        """RG-LRU over u [B, T, W] from state h0; returns (h [B, T, W] in u's dtype, final state fp32)."""
        acc = torch.promote_types(u.dtype, torch.float32)
        r = torch.sigmoid(self._gate(u, self.gate_a_weight, self.gate_a_bias).to(acc))
        i = torch.sigmoid(self._gate(u, self.gate_x_weight, self.gate_x_bias).to(acc))
        log_a = -self.c * F.softplus(self.a_param.to(acc)) * r
        a = torch.exp(log_a)
        # 1 - a^2 through expm1: exact for a near 1, where 1 - a*a would cancel.
        multiplier = sqrt_bounded_grad(-torch.expm1(2 * log_a))
        x = multiplier * (i * u.to(acc))
        h, final = ops.linear_scan(a, x, initial_state=h0, output_final_state=True, backend=self.backend)
        return h.to(u.dtype), final

    def _conv(self, v: torch.Tensor, state: torch.Tensor | None):
        return self.conv(v, state, output_state=True)

    def _mix(self, x: torch.Tensor, state: State | None) -> tuple[torch.Tensor, State]:
        gate = F.gelu(self.gate_proj(x), approximate="tanh")
        u, conv_state = self._conv(self.in_proj(x), None if state is None else state["conv"])
        h, h_state = self._rglru(u, None if state is None else state["h"])
        return self.out_proj(h * gate), {"conv": conv_state, "h": h_state}

    # -- the contract --------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self._mix(x, None)[0]

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        # fp32 states for fp32/fp16/bf16 models (fp64 for fp64), as the ops return them.
        dtype = torch.promote_types(dtype or torch.float32, torch.float32)
        return {
            "conv": torch.zeros(batch_size, self.lru_width, self.conv_width - 1, device=device, dtype=dtype),
            "h": torch.zeros(batch_size, self.lru_width, device=device, dtype=dtype),
        }

    def prefill(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        self.check_input(x)
        if state is not None:
            self.check_state(state, x.shape[0], ("conv", "h"))
        return self._mix(x, state)

    def step(self, x_t: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        self.check_input(x_t, "x_t", ndim=2)
        y, state = self.prefill(x_t[:, None], state)
        return y[:, 0], state

    def state_size(self, seq_len: int) -> int:
        return self.lru_width * (self.conv_width - 1) + self.lru_width


def decay_at_full_gate(block: RGLRUBlock) -> torch.Tensor:
    """exp(-c softplus(Lambda)): each channel's decay when the recurrence gate is fully open (r = 1)."""
    return torch.exp(-block.c * F.softplus(block.a_param.detach().double()))


__all__ = ["RGLRUBlock", "decay_at_full_gate", "sqrt_bounded_grad"]
