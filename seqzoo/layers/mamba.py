"""``mamba``: the selective state space mixer of Mamba (Gu & Dao 2023), without its outer norm/residual.

    x, z = split(u W_in)                                   # [B, T, E], E = expand * d_model (x and the gate z)
    x = silu(causal_conv1d(x, w, b))                       # depthwise, width 4
    dt_low, B, C = split(x W_x)                            # [B, T, R], [B, T, N], [B, T, N];  R = ceil(d_model/16)
    dt = softplus(dt_low W_dt + b_dt)                      # [B, T, E], the per-channel step size
    h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t ;  y_t = <h_t, C_t> + D x_t     # A = -exp(A_log) [E, N]
    out = (y * silu(z)) W_out

The scan is ``ops.selective_scan`` (dt's bias and softplus fused into it); decoding carries the last 3 conv
inputs and the [E, N] SSM state, so its memory does not grow with the length. Packed documents
(``cu_seqlens``, issue 27) go to the convolution and the scan as they are: each document is mixed as if alone,
and prefill's state holds one row per document.

Initialisation as in the paper: A_log = log(1..N) in every channel (S4D-Real), D = 1, dt_proj's bias the
inverse softplus of dt drawn log-uniformly in [dt_min, dt_max] (floored at 1e-4) and its weight uniform in
+-dt_scale / sqrt(R); in_proj, x_proj and out_proj keep PyTorch's Linear default, as mamba-ssm leaves them.
A_log and D carry ``_no_weight_decay``. ``post_init`` re-establishes these after a model's generic Linear init
(normal 0.02) has overwritten them: with the generic init's small B and C, Mamba sat at MQAR's 0.25 plateau
(one of the context's values) for all of 600 steps; with the paper's it left it by step 400.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .. import ops
from ..modules.short_conv import ShortConvolution, rename_parameters_on_load
from ..registry import LRASettings, register_mixer
from .base import Mixer, State, backend_for, check_float, check_int


@register_mixer(
    "mamba",
    description="selective state space model: input-dependent (dt, B, C) diagonal SSM with a gated conv branch",
    paper="Gu & Dao 2023, Mamba: Linear-Time Sequence Modeling with Selective State Spaces",
    family="selective SSM",
    demo=True,
    settings_source="Gu and Dao 2023: N 16, conv 4, expand 2, S4D-Real A",
    lm_mlp="none",  # its blocks are the whole layer, as in the paper
    test_kwargs={"d_state": 4},
    mqar_lr=1e-2,
    lra=LRASettings(
        overrides={"model.block": "prenorm", "model.norm": "rms", "model.mlp": "none", "optim.lr": 2e-3},
        note="Mamba: pre-norm RMSNorm blocks without MLP as its paper; causal (no bidirectional mode); lr 2e-3 "
        "(not from a paper: Mamba reports no LRA results)",
    ),
)
class Mamba(Mixer):
    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | None = None,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        dt_init_floor: float = 1e-4,
        dt_scale: float = 1.0,
        conv_bias: bool = True,
        bias: bool = False,
        backend: str = "auto",
    ):
        super().__init__(d_model)
        check_int("mamba", "d_state", d_state, 1, 256)
        check_int("mamba", "d_conv", d_conv, 2, 8)
        check_int("mamba", "expand", expand, 1, 16)
        if dt_rank is None:
            dt_rank = math.ceil(d_model / 16)
        check_int("mamba", "dt_rank", dt_rank, 1)
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"mamba: need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
        self.d_state, self.d_conv, self.expand, self.dt_rank = d_state, d_conv, expand, dt_rank
        check_float("mamba", "dt_init_floor", dt_init_floor, 0.0)
        check_float("mamba", "dt_scale", dt_scale, 0.0, open_low=True)
        self.dt_min, self.dt_max, self.dt_init_floor, self.dt_scale = dt_min, dt_max, dt_init_floor, dt_scale
        self.backend = backend
        e = self.d_inner = expand * d_model
        self.in_proj = nn.Linear(d_model, 2 * e, bias=bias)
        # Depthwise filter [E, W], uniform in +-1/sqrt(W) as nn.Conv1d(groups=E) initialises it.
        self.conv = ShortConvolution(
            e, d_conv, backend=backend_for(ops.causal_conv1d, backend), bias=conv_bias, bias_init="uniform"
        )
        rename_parameters_on_load(
            self, {"conv_weight": "conv.weight", "conv_bias": "conv.bias"}
        )  # checkpoints from before the move
        self.x_proj = nn.Linear(e, dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(dt_rank, e, bias=True)
        # S4D-Real: A_n = -(n + 1) in every channel, stored as a log so A stays negative under training.
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(e, 1))
        self.D = nn.Parameter(torch.ones(e))
        self.A_log._no_weight_decay = True
        self.D._no_weight_decay = True
        self.out_proj = nn.Linear(e, d_model, bias=bias)
        self.post_init()

    @torch.no_grad()
    def post_init(self) -> None:
        """The projections as the paper's code initialises them (a model's generic Linear init, normal 0.02,
        runs first and overwrites them): in_proj, x_proj and out_proj keep PyTorch's Linear default (uniform
        in +-1/sqrt(fan_in)), which mamba-ssm leaves in place; dt_proj as below."""
        for proj in (self.in_proj, self.x_proj, self.out_proj):
            proj.reset_parameters()
        std = self.dt_rank**-0.5 * self.dt_scale
        self.dt_proj.weight.uniform_(-std, std)
        # dt log-uniform in [dt_min, dt_max], floored; the bias is softplus^-1(dt) = dt + log(1 - exp(-dt)).
        log_lo, log_hi = math.log(self.dt_min), math.log(self.dt_max)
        dt = torch.exp(torch.rand(self.d_inner) * (log_hi - log_lo) + log_lo).clamp(min=self.dt_init_floor)
        self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, d_inner={self.d_inner}, d_state={self.d_state}, d_conv={self.d_conv}, "
            f"dt_rank={self.dt_rank}"
        )

    def _ssm_inputs(self, x):
        """From the conv branch's output x [..., E]: delta (dt before bias and softplus), B, C."""
        dt_low, B, C = self.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        return dt_low @ self.dt_proj.weight.t(), B, C

    def _mix(self, x, state=None, cu_seqlens=None):
        xz = self.in_proj(x)
        u, z = xz.chunk(2, dim=-1)
        # Packed (cu_seqlens): the conv and the scan each keep the documents apart; state rows are documents.
        conv_state = None if state is None else state["conv"]
        u, conv = self.conv(u, conv_state, output_state=True, cu_seqlens=cu_seqlens)
        delta, B, C = self._ssm_inputs(u)
        y, ssm = ops.selective_scan(
            u,
            delta,
            -torch.exp(self.A_log),
            B,
            C,
            D=self.D,
            z=z,
            delta_bias=self.dt_proj.bias,
            delta_softplus=True,
            initial_state=None if state is None else state["ssm"],
            output_final_state=True,
            backend=self.backend,
            cu_seqlens=cu_seqlens,
        )
        return self.out_proj(y), {"conv": conv, "ssm": ssm}

    def forward(self, x: torch.Tensor, cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
        """``cu_seqlens`` (int32 [N + 1]): x [1, T, d_model] packs N documents, each mixed as if alone."""
        self.check_input(x)
        self.check_packed(x, cu_seqlens)
        return self._mix(x, cu_seqlens=cu_seqlens)[0]

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        # fp32 states for fp32/fp16/bf16 models (fp64 for fp64), as the ops return them.
        dtype = torch.promote_types(dtype or torch.float32, torch.float32)
        return {
            "conv": torch.zeros(batch_size, self.d_inner, self.d_conv - 1, device=device, dtype=dtype),
            "ssm": torch.zeros(batch_size, self.d_inner, self.d_state, device=device, dtype=dtype),
        }

    def prefill(
        self, x: torch.Tensor, state: State | None = None, cu_seqlens: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, State]:
        """``cu_seqlens``: x [1, T, d_model] packs N documents; ``state`` (if given) and the returned state hold
        one row per document ([N, ...]), so ``step`` decodes them on as a batch of N."""
        self.check_input(x)
        self.check_decodable()
        if cu_seqlens is not None:
            self.check_packed(x, cu_seqlens, state, ("conv", "ssm"))
        elif state is not None:
            self.check_state(state, x.shape[0], ("conv", "ssm"))
        return self._mix(x, state, cu_seqlens)

    def step(self, x_t: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        self.check_input(x_t, "x_t", ndim=2)
        self.check_state(state, x_t.shape[0], ("conv", "ssm"))
        u, z = self.in_proj(x_t).chunk(2, dim=-1)
        u, conv = self.conv(u[:, None], state["conv"], output_state=True)
        u = u[:, 0]
        delta, B, C = self._ssm_inputs(u)
        # The step op has reference and torch backends only (one token is a few elementwise ops: no kernel
        # to fuse); a layer built for triton or cuda decodes with the step op's auto choice, which
        # ops.selective_state_update.last_backend reports like every op's.
        y, ssm = ops.selective_state_update(
            state["ssm"],
            u,
            delta,
            -torch.exp(self.A_log),
            B,
            C,
            D=self.D,
            z=z,
            dt_bias=self.dt_proj.bias,
            dt_softplus=True,
            backend=backend_for(ops.selective_state_update, self.backend),
        )
        return self.out_proj(y), {"conv": conv, "ssm": ssm}

    def state_size(self, seq_len: int) -> int:
        return self.d_inner * (self.d_conv - 1 + self.d_state)
