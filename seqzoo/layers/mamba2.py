"""``mamba2``: the SSD mixer of Mamba-2 (Dao & Gu 2024), without its outer norm/residual.

    z, xBC, dt = split(u W_in)                             # [B, T, E], [B, T, E + 2 G N], [B, T, H]; E = expand d
    x, B, C = split(silu(causal_conv1d(xBC)))              # depthwise, width 4: [B, T, H, P], [B, T, G, N] x 2
    dt = softplus(dt + dt_bias) ;  A = -exp(A_log)         # one step size and one decay rate per head
    h_t = exp(dt_t A) h_{t-1} + dt_t B_t x_t^T ;  y_t = C_t^T h_t + D x_t      # h [N, P] per head (SSD)
    out = RMSNorm(y * silu(z)) W_out                       # gated RMSNorm over each group's E / G channels

H = E / P heads of size P (``headdim``, 64); the G groups of B and C (``n_groups``, 1) are shared by H / G
heads each. The SSD is a scalar-decay gated linear attention, and :func:`ssd` runs it on ``ops.gla``
(q = C, k = B, v = dt x, g = dt A, scale 1). Decoding carries the conv's last 3 inputs and h [H, N, P] in
fp32: constant memory.

Initialisation as mamba_ssm's Mamba2: A uniform in [1, 16] (stored as A_log), D = 1, dt_bias the inverse
softplus of dt log-uniform in [1e-3, 0.1] (floored at 1e-4), in_proj / out_proj PyTorch's Linear default
(``post_init`` restores it after a model's generic init, as :class:`seqzoo.layers.Mamba` does), the conv
filter as nn.Conv1d's. A_log, D and dt_bias carry ``_no_weight_decay``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from ..modules.norm import GatedRMSNorm
from ..modules.short_conv import ShortConvolution, rename_parameters_on_load
from ..registry import register_mixer
from .base import Mixer, State, backend_for, check_float, check_int
from .ssm_init import a_log_init, dt_bias_init


def ssd(
    x, dt, A, B, C, D=None, initial_state=None, output_final_state=False, backend="auto", cu_seqlens=None
):
    """Mamba-2's state space dual (SSD) layer as a scalar-decay ``ops.gla``.

        h_t = exp(dt_t A) h_{t-1} + B_t (dt_t x_t)^T ;   y_t = C_t^T h_t + D x_t

    x [B, T, H, P]; dt [B, T, H] (after softplus, > 0); A [H] (< 0); B, C [B, T, G, N] with G dividing H (head
    h reads group h // (H / G)); D [H] or None; initial_state / final state h [B, H, N, P] (fp32, fp64 for
    fp64). Returns (y [B, T, H, P] in x's dtype, final state or None). ``backend`` is ops.gla's; with
    ``output_final_state`` (decoding) it runs ``ops.gla_step``, whose ``auto`` decodes a few tokens on a GPU with
    the fused recurrent kernel. ``cu_seqlens``: the rows are packed documents (batch 1); the decay and the state
    restart at each (``ops.gla`` packs), and initial_state / the final state hold one row per document. The
    decay dt A is per position, so it needs no boundaries of its own.
    """
    if x.dim() != 4 or dt.dim() != 3 or dt.shape != x.shape[:3]:
        raise ValueError(
            f"ssd: x must be [B, T, H, P] and dt [B, T, H], got {tuple(x.shape)} and {tuple(dt.shape)}"
        )
    b, t, h, _ = x.shape
    if A.shape != (h,) or (D is not None and D.shape != (h,)):
        got = f"A {tuple(A.shape)}" + ("" if D is None else f", D {tuple(D.shape)}")
        raise ValueError(f"ssd: A and D must be [H] = [{h}], got {got}")
    if B.dim() != 4 or B.shape != C.shape or B.shape[:2] != (b, t) or h % B.shape[2]:
        raise ValueError(
            f"ssd: B and C must be [B, T, G, N] with G dividing H={h}, got {tuple(B.shape)}, {tuple(C.shape)}"
        )
    rep = h // B.shape[2]
    k, q = B.repeat_interleave(rep, dim=2), C.repeat_interleave(rep, dim=2)
    v = (x * dt[..., None]).to(x.dtype)
    q, k = q.to(x.dtype), k.to(x.dtype)
    if output_final_state:
        y, state = ops.gla_step(
            q, k, v, dt * A, scale=1.0, initial_state=initial_state, backend=backend, cu_seqlens=cu_seqlens
        )
    else:
        y, state = ops.gla(
            q, k, v, dt * A, scale=1.0, initial_state=initial_state, backend=backend, cu_seqlens=cu_seqlens
        )
    if D is not None:
        y = y + x * D.to(x.dtype)[:, None]
    return y, state


@register_mixer(
    "mamba2",
    description="Mamba-2 (SSD): selective SSM with a scalar decay per head, shared B/C groups, gated RMSNorm",
    paper="Dao & Gu 2024, Transformers are SSMs: Generalized Models and Efficient Algorithms Through "
    "Structured State Space Duality",
    family="structured state space duality",
    demo=True,
    settings_source="Dao and Gu 2024: N 128, head dim 64, expand 2, conv 4, one B/C group, A in [1, 16], dt in "
    "[1e-3, 0.1]",
    lm_mlp="none",  # its blocks are the whole layer, as in the paper
    test_kwargs={"d_state": 8, "headdim": 16, "n_groups": 2},
    mqar_lr=1e-2,
)
class Mamba2(Mixer):
    def __init__(
        self,
        d_model: int,
        d_state: int = 128,
        d_conv: int = 4,
        expand: int = 2,
        headdim: int = 64,
        n_groups: int = 1,
        a_init_range: tuple[float, float] = (1.0, 16.0),
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        dt_init_floor: float = 1e-4,
        norm_eps: float = 1e-5,
        conv_bias: bool = True,
        bias: bool = False,
        backend: str = "auto",
    ):
        super().__init__(d_model)
        check_int("mamba2", "d_state", d_state, 1, 256)
        check_int("mamba2", "d_conv", d_conv, 2, 8)
        check_int("mamba2", "expand", expand, 1, 16)
        check_int("mamba2", "headdim", headdim, 1, 256)
        check_int("mamba2", "n_groups", n_groups, 1, 1024)
        check_float("mamba2", "norm_eps", norm_eps, 0.0, open_low=True)
        check_float("mamba2", "dt_init_floor", dt_init_floor, 0.0)
        e = self.d_inner = expand * d_model
        if e % headdim:
            raise ValueError(f"mamba2: headdim ({headdim}) must divide expand * d_model ({e})")
        self.n_heads = e // headdim
        if self.n_heads % n_groups:
            raise ValueError(
                f"mamba2: n_groups ({n_groups}) must divide the number of heads ({self.n_heads})"
            )
        if not (isinstance(a_init_range, (tuple, list)) and len(a_init_range) == 2):
            raise ValueError(f"mamba2: a_init_range must be (a_min, a_max), got {a_init_range!r}")
        self.d_state, self.d_conv, self.expand, self.headdim, self.n_groups = (
            d_state,
            d_conv,
            expand,
            headdim,
            n_groups,
        )
        self.backend = backend
        self.conv_dim = e + 2 * n_groups * d_state
        self.in_proj = nn.Linear(d_model, e + self.conv_dim + self.n_heads, bias=bias)  # z, xBC, dt
        # As nn.Conv1d(groups=channels) initialises it, SiLU after it; ``backend`` names a gla backend.
        self.conv = ShortConvolution(
            self.conv_dim,
            d_conv,
            backend=backend_for(ops.causal_conv1d, backend),
            bias=conv_bias,
            bias_init="uniform",
        )
        rename_parameters_on_load(
            self, {"conv_weight": "conv.weight", "conv_bias": "conv.bias"}
        )  # checkpoints from before the move
        try:
            self.A_log = nn.Parameter(a_log_init(self.n_heads, *a_init_range))
            self.dt_bias = nn.Parameter(dt_bias_init(self.n_heads, dt_min, dt_max, dt_init_floor))
        except ValueError as err:
            raise ValueError(f"mamba2: {err}") from None
        self.D = nn.Parameter(torch.ones(self.n_heads))
        for p in (self.A_log, self.dt_bias, self.D):
            p._no_weight_decay = True
        self.norm = GatedRMSNorm(e, eps=norm_eps, norm_before_gate=False, group_size=e // n_groups)
        self.out_proj = nn.Linear(e, d_model, bias=bias)

    @torch.no_grad()
    def post_init(self) -> None:
        """in_proj and out_proj back to PyTorch's Linear default (uniform in +-1/sqrt(fan_in)), which mamba_ssm
        leaves in place, after a model's generic init (normal 0.02) has overwritten them."""
        self.in_proj.reset_parameters()
        self.out_proj.reset_parameters()

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, d_inner={self.d_inner}, n_heads={self.n_heads}, headdim={self.headdim}, "
            f"d_state={self.d_state}, n_groups={self.n_groups}, d_conv={self.d_conv}"
        )

    def _mix(self, u, state, keep_state, cu_seqlens=None):
        # Packed (cu_seqlens): the convolution and the SSD restart at each document; the rest is per position.
        b, t, _ = u.shape
        e, gn = self.d_inner, self.n_groups * self.d_state
        z, xbc, dt = self.in_proj(u).split([e, self.conv_dim, self.n_heads], dim=-1)
        xbc, conv = self.conv(
            xbc, None if state is None else state["conv"], keep_state, cu_seqlens=cu_seqlens
        )
        x, B, C = xbc.split([e, gn, gn], dim=-1)
        ft = torch.promote_types(u.dtype, torch.float32)
        dt = F.softplus(dt.to(ft) + self.dt_bias.to(ft))
        y, S = ssd(
            x.reshape(b, t, self.n_heads, self.headdim),
            dt,
            -self.A_log.to(ft).exp(),
            B.reshape(b, t, self.n_groups, self.d_state),
            C.reshape(b, t, self.n_groups, self.d_state),
            self.D,
            initial_state=None if state is None else state["S"],
            output_final_state=keep_state,
            backend=self.backend,
            cu_seqlens=cu_seqlens,
        )
        out = self.out_proj(self.norm(y.reshape(b, t, e), z))
        return out, ({"conv": conv, "S": S} if keep_state else None)

    def forward(self, x: torch.Tensor, cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
        """y [B, T, D]. ``cu_seqlens``: x [1, T, D] packs documents, each mixed as if alone."""
        self.check_input(x)
        self.check_packed(x, cu_seqlens)
        return self._mix(x, None, False, cu_seqlens)[0]

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        # fp32 states for fp32/fp16/bf16 models (fp64 for fp64), as the ops return them.
        dtype = torch.promote_types(dtype or torch.float32, torch.float32)
        return {
            "conv": torch.zeros(batch_size, self.conv_dim, self.d_conv - 1, device=device, dtype=dtype),
            "S": torch.zeros(
                batch_size, self.n_heads, self.d_state, self.headdim, device=device, dtype=dtype
            ),
        }

    def prefill(
        self, x: torch.Tensor, state: State | None = None, cu_seqlens: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, State]:
        """(y, state). ``cu_seqlens``: x [1, T, D] packs N documents; ``state`` (if given) and the returned
        state hold one row per document (conv [N, C, W - 1], S [N, H, N_state, P])."""
        self.check_input(x)
        if cu_seqlens is not None:
            self.check_packed(x, cu_seqlens, state, ("conv", "S"))
        elif state is not None:
            self.check_state(state, x.shape[0], ("conv", "S"))
        return self._mix(x, state, True, cu_seqlens)

    def step(self, x_t: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        self.check_input(x_t, "x_t", ndim=2)
        y, state = self.prefill(x_t[:, None], state)
        return y[:, 0], state

    def state_size(self, seq_len: int) -> int:
        return self.conv_dim * (self.d_conv - 1) + self.n_heads * self.d_state * self.headdim
