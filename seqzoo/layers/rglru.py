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

Document starts reset the recurrence (issue 27), as recurrentgemma does: at a token whose position in its
document is 0 the decay is zeroed and the input is not scaled,

    h_t = i_t * u_t          (a_t := 0, sqrt(1 - a_t^2) := 1)

following google-deepmind/recurrentgemma, recurrentgemma/torch/layers.py (``RGLRU.forward``: ``reset =
segment_pos == 0``, ``multiplier = reset + ~reset * multiplier``; ``rnn_scan``: ``a = a * ~reset``). The first
token of every sequence is such a start: a forward (or a prefill without a state) resets its position 0, a
packed call (``cu_seqlens``) every document's first position. This CHANGED the output at the first token of
every sequence (before issue 27 the first token was scaled by sqrt(1 - a_0^2) like any other); later tokens
see a different h_0 and change with it. So that decoding agrees with the full forward, the state carries a
flag ``fresh`` [B] (fp32, 1 in ``init_state``, 0 once a row has seen a token): a prefill or step from a state
resets the first token of each row whose flag is 1, so ``init_state`` then ``step`` equals ``forward``, and
``prefill(x, init_state(B))`` equals ``prefill(x)``.

``bias=True`` adds biases to the three projections W_gate, W_in and W_out (recurrentgemma's ``linear_y``,
``linear_x`` and ``linear_out`` have them; the convolution and the gates have biases either way), so a
converted RecurrentGemma checkpoint is this block; the default (no biases) is Griffin's paper block as before.

Decoding keeps the last 3 inputs of the convolution [B, W, 3] and the recurrent state [B, W], both fp32, and
the flag: constant memory, whatever the length. Packed prefill returns these with one row per document.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from ..modules.short_conv import ShortConvolution, rename_parameters_on_load
from ..ops._varlen import sequence_starts
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
        bias: bool = False,
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
        if not isinstance(bias, bool):
            raise TypeError(f"{name}: bias must be a bool, got {bias!r}")
        if not 0 < min_decay <= max_decay < 1:
            raise ValueError(
                f"{name}: need 0 < min_decay <= max_decay < 1, got {min_decay!r} and {max_decay!r}"
            )
        self.lru_width, self.n_heads, self.conv_width, self.c = lru_width, n_heads, conv_width, float(c)
        self.backend = backend
        block = lru_width // n_heads

        self.gate_proj = nn.Linear(d_model, lru_width, bias=bias)
        self.in_proj = nn.Linear(d_model, lru_width, bias=bias)
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
        self.out_proj = nn.Linear(lru_width, d_model, bias=bias)

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

    def _rglru(self, u: torch.Tensor, h0: torch.Tensor | None, reset: torch.Tensor, cu_seqlens=None):
        """RG-LRU over u [B, T, W] from state h0; ``reset`` [B, T] bool marks document starts (a_t = 0, input
        multiplier 1). Returns (h [B, T, W] in u's dtype, final state fp32; one row per document when packed)."""
        acc = torch.promote_types(u.dtype, torch.float32)
        r = torch.sigmoid(self._gate(u, self.gate_a_weight, self.gate_a_bias).to(acc))
        i = torch.sigmoid(self._gate(u, self.gate_x_weight, self.gate_x_bias).to(acc))
        log_a = -self.c * F.softplus(self.a_param.to(acc)) * r
        a = torch.exp(log_a)
        # 1 - a^2 through expm1: exact for a near 1, where 1 - a*a would cancel.
        multiplier = sqrt_bounded_grad(-torch.expm1(2 * log_a))
        # recurrentgemma's reset: at a start nothing of h_{t-1} survives and the input enters unscaled. torch.where
        # (not a product) so that the start's sqrt and its clipped gradient do not enter at all.
        start = reset[..., None]
        a = torch.where(start, torch.zeros((), dtype=acc, device=a.device), a)
        multiplier = torch.where(start, torch.ones((), dtype=acc, device=a.device), multiplier)
        x = multiplier * (i * u.to(acc))
        h, final = ops.linear_scan(
            a, x, initial_state=h0, output_final_state=True, backend=self.backend, cu_seqlens=cu_seqlens
        )
        return h.to(u.dtype), final

    def _resets(self, x: torch.Tensor, state: State | None, cu_seqlens) -> torch.Tensor:
        """[B, T] bool: the tokens that start a sequence. Without a state every row's (every document's) first
        token; from a state, the first token of the rows (documents) whose ``fresh`` flag is set."""
        b, t, _ = x.shape
        reset = torch.zeros(b, t, dtype=torch.bool, device=x.device)
        if t == 0:
            return reset
        if cu_seqlens is None:
            reset[:, 0] = True if state is None else state["fresh"].to(x.device) > 0.5
            return reset
        starts = cu_seqlens[:-1].to(device=x.device, dtype=torch.long)
        if state is None:
            reset[0] = sequence_starts(cu_seqlens.to(x.device))
        else:
            reset[0, starts] = state["fresh"].to(x.device) > 0.5
        return reset

    def _conv(self, v: torch.Tensor, state: torch.Tensor | None, cu_seqlens=None):
        return self.conv(v, state, output_state=True, cu_seqlens=cu_seqlens)

    def _mix(self, x: torch.Tensor, state: State | None, cu_seqlens=None) -> tuple[torch.Tensor, State]:
        gate = F.gelu(self.gate_proj(x), approximate="tanh")
        reset = self._resets(x, state, cu_seqlens)
        u, conv_state = self._conv(self.in_proj(x), None if state is None else state["conv"], cu_seqlens)
        h, h_state = self._rglru(u, None if state is None else state["h"], reset, cu_seqlens)
        if state is not None and x.shape[1] == 0:
            fresh = state["fresh"]
        else:
            # Every row (document) has now seen a token.
            fresh = torch.zeros(h_state.shape[0], dtype=torch.float32, device=x.device)
        return self.out_proj(h * gate), {"conv": conv_state, "h": h_state, "fresh": fresh}

    # -- the contract --------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
        """y [B, T, d_model]; position 0 of every row is a sequence start (the reset above). ``cu_seqlens``
        (int32 [N + 1]): x [1, T, d_model] packs N documents, each reset at its start and mixed as if alone."""
        self.check_input(x)
        self.check_packed(x, cu_seqlens)
        return self._mix(x, None, cu_seqlens)[0]

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        # fp32 states for fp32/fp16/bf16 models (fp64 for fp64), as the ops return them.
        dtype = torch.promote_types(dtype or torch.float32, torch.float32)
        return {
            "conv": torch.zeros(batch_size, self.lru_width, self.conv_width - 1, device=device, dtype=dtype),
            "h": torch.zeros(batch_size, self.lru_width, device=device, dtype=dtype),
            # 1: the row has seen no token yet, so its next token starts a sequence (is reset).
            "fresh": torch.ones(batch_size, dtype=torch.float32, device=device),
        }

    def prefill(
        self, x: torch.Tensor, state: State | None = None, cu_seqlens: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, State]:
        """``cu_seqlens``: x [1, T, d_model] packs N documents; ``state`` (if given) and the returned state hold
        one row per document. Without a state every document starts afresh (is reset at its first token);
        from a state, the documents whose row is ``fresh``."""
        self.check_input(x)
        keys = ("conv", "h", "fresh")
        if cu_seqlens is not None:
            self.check_packed(x, cu_seqlens, state, keys)
        elif state is not None:
            self.check_state(state, x.shape[0], keys)
        return self._mix(x, state, cu_seqlens)

    def step(self, x_t: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        self.check_input(x_t, "x_t", ndim=2)
        y, state = self.prefill(x_t[:, None], state)
        return y[:, 0], state

    def state_size(self, seq_len: int) -> int:
        # The conv's inputs and h; the one-number flag "fresh" is counted as position counters are (not at all).
        return self.lru_width * (self.conv_width - 1) + self.lru_width


def decay_at_full_gate(block: RGLRUBlock) -> torch.Tensor:
    """exp(-c softplus(Lambda)): each channel's decay when the recurrence gate is fully open (r = 1)."""
    return torch.exp(-block.c * F.softplus(block.a_param.detach().double()))


__all__ = ["RGLRUBlock", "decay_at_full_gate", "sqrt_bounded_grad"]
