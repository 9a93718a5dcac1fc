"""``deltanet`` (Yang et al. 2024) and ``gated_deltanet`` (Yang, Kautz & Hatamizadeh 2024): the delta rule.

    q, k, v = silu(short_conv(x Wq)), silu(short_conv(x Wk)), silu(short_conv(x Wv))   # [B, T, H, K|K|V]
    q, k = q / ||q||, k / ||k||                          # L2 per head
    beta = sigmoid(x Wb)                                 # [B, T, H]; 2 sigmoid(x Wb) with allow_neg_eigval
    g = -exp(A_log) softplus(x Wa + dt_bias)             # [B, T, H] log decay: gated_deltanet only
    S_t = exp(g_t) (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T ;  o_t = K^-1/2 q_t S_t     # ops.delta_rule
    y = (RMSNorm_head(o) * silu(x Wg)) Wo                # the output gate (use_gate); RMSNorm_head(o) Wo without

Each write replaces the value the state holds for k_t by beta_t v_t + (1 - beta_t) (old value) instead of
adding to it, so a key can be overwritten; Gated DeltaNet also forgets everything by exp(g_t), a
Mamba-2-style data-dependent decay per head (A in [1, 16], softplus(dt_bias) log-uniform in [1e-3, 0.1] at
initialisation). With ``allow_neg_eigval`` beta ranges over (0, 2), so the transition I - beta k k^T can
have the eigenvalue 1 - beta < 0 (Grazzi et al. 2024); the recurrence stays bounded since the keys are unit.

With ``use_short_conv`` the SiLU is the convolution's activation (as in fla); without it q, k and v pass
through SiLU directly. The layers' defaults are minimal (no convolution; keys and values d_model wide, one
head per 64 channels); the papers' settings (short convolutions, Gated DeltaNet's values twice the keys) come
from ``seqzoo.models.mixer_settings``. Decoding carries S [B, H, K, V] in fp32 and the convolutions' last
inputs: constant memory.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from ..modules.norm import GatedRMSNorm, RMSNorm
from ..registry import register_mixer
from .base import State, check_float
from .linear_attention import GatedLinearAttentionMixer
from .ssm_init import a_log_init, dt_bias_init

# fla's l2norm: x / sqrt(sum x^2 + eps).
L2_EPS = 1e-6


def l2_normalize(x: torch.Tensor, eps: float = L2_EPS) -> torch.Tensor:
    """x / sqrt(sum(x^2) + eps) over the last dimension, in fp32 or wider, returned in x's dtype."""
    xf = x.to(torch.promote_types(x.dtype, torch.float32))
    return (xf * torch.rsqrt(xf.pow(2).sum(-1, keepdim=True) + eps)).to(x.dtype)


@register_mixer(
    "deltanet",
    description="DeltaNet: linear attention with the delta-rule update (write = overwrite the key's value, "
    "strength beta), L2-normalised SiLU q/k, gated output RMSNorm",
    paper="Yang et al. 2024, Parallelizing Linear Transformers with the Delta Rule over Sequence Length",
    family="delta rule",
    paper_settings={"use_short_conv": True},
    settings_source="Yang et al. 2024: keys and values d, SiLU + L2-normalised q/k, beta = sigmoid, short conv on "
    "q/k/v as in the paper and fla; output gate (fla's use_gate=True, its default is False); one head per 64 "
    "channels",
    test_kwargs={"n_heads": 2},
    mqar_lr=1e-2,
)
class DeltaNet(GatedLinearAttentionMixer):
    def __init__(
        self,
        d_model: int,
        n_heads: int | None = None,
        expand_k: float = 1.0,
        expand_v: float = 1.0,
        use_gate: bool = True,
        allow_neg_eigval: bool = False,
        use_short_conv: bool = False,
        conv_width: int = 4,
        norm_eps: float = 1e-5,
        backend: str = "auto",
    ):
        super().__init__(d_model, False, backend)
        for arg, value in (("expand_k", expand_k), ("expand_v", expand_v), ("norm_eps", norm_eps)):
            check_float(self.mixer_name, arg, value, 0.0, open_low=True)
        self._set_heads(n_heads, int(d_model * expand_k), int(d_model * expand_v))
        for flag, value in (("use_gate", use_gate), ("allow_neg_eigval", allow_neg_eigval)):
            if not isinstance(value, bool):
                raise TypeError(f"{self.mixer_name}: {flag} must be a bool, got {value!r}")
        self.use_gate, self.allow_neg_eigval = use_gate, allow_neg_eigval
        self.q_proj = nn.Linear(d_model, self.key_dim, bias=False)
        self.k_proj = nn.Linear(d_model, self.key_dim, bias=False)
        self.v_proj = nn.Linear(d_model, self.value_dim, bias=False)
        self.b_proj = nn.Linear(d_model, self.n_heads, bias=False)  # beta, one per head
        if use_gate:
            self.g_proj = nn.Linear(d_model, self.value_dim, bias=False)
            self.o_norm = GatedRMSNorm(self.head_v_dim, eps=norm_eps, norm_before_gate=True)
        else:
            self.o_norm = RMSNorm(self.head_v_dim, eps=norm_eps)
        self.o_proj = nn.Linear(self.value_dim, d_model, bias=False)
        self._add_short_convs(
            use_short_conv,
            conv_width,
            {"conv_q": self.key_dim, "conv_k": self.key_dim, "conv_v": self.value_dim},
        )

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, n_heads={self.n_heads}, head_k_dim={self.head_k_dim}, "
            f"head_v_dim={self.head_v_dim}, use_gate={self.use_gate}, allow_neg_eigval={self.allow_neg_eigval}"
        )

    def _log_decay(self, x: torch.Tensor) -> torch.Tensor | None:
        """g [B, T, H] for ops.delta_rule; DeltaNet has none."""
        return None

    def _features(self, x, state, keep_state, cu_seqlens=None):
        """x [B, T, D] -> q, k (unit per head), v, beta, g for ops.delta_rule, and the convolutions' states.
        Everything but the short convolutions (which take ``cu_seqlens``) acts on one position at a time."""
        q, k, v, convs = self._qkv(x, state, keep_state, cu_seqlens)
        if not self.convs:  # with the convolutions, their activation is the SiLU
            q, k, v = F.silu(q), F.silu(k), F.silu(v)
        q = l2_normalize(self._heads(q, self.head_k_dim))
        k = l2_normalize(self._heads(k, self.head_k_dim))
        beta = self.b_proj(x).to(torch.promote_types(x.dtype, torch.float32)).sigmoid()
        if self.allow_neg_eigval:
            beta = 2.0 * beta
        return q, k, self._heads(v, self.head_v_dim), beta, self._log_decay(x), convs

    def _output(self, o, x):
        if self.use_gate:
            o = self.o_norm(o, self._heads(self.g_proj(x), self.head_v_dim))
        else:
            o = self.o_norm(o)
        return self.o_proj(o.reshape(x.shape[0], x.shape[1], -1))

    def forward(self, x: torch.Tensor, cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
        """y [B, T, D]. ``cu_seqlens``: x [1, T, D] packs documents; the short convolutions and the delta rule
        restart at each one, so y is what each document alone gives."""
        self.check_input(x)
        self.check_packed(x, cu_seqlens)
        q, k, v, beta, g, _ = self._features(x, None, False, cu_seqlens)
        o, _ = ops.delta_rule(q, k, v, beta, g, backend=self.backend, cu_seqlens=cu_seqlens)
        return self._output(o, x)

    def prefill(
        self, x: torch.Tensor, state: State | None = None, cu_seqlens: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, State]:
        """(y, state). ``cu_seqlens``: x [1, T, D] packs N documents; ``state`` (if given) and the returned
        state hold one row per document (S [N, H, K, V] and the convolution tails)."""
        self.check_input(x)
        if cu_seqlens is not None:
            self.check_packed(x, cu_seqlens, state, self._state_keys())
        elif state is not None:
            self.check_state(state, x.shape[0], self._state_keys())
        q, k, v, beta, g, convs = self._features(x, state, True, cu_seqlens)
        # ops.delta_rule_step's auto: on a GPU, the fused recurrent kernel for a few tokens (decoding)
        o, S = ops.delta_rule_step(
            q,
            k,
            v,
            beta,
            g,
            initial_state=None if state is None else state["S"],
            backend=self.backend,
            cu_seqlens=cu_seqlens,
        )
        return self._output(o, x), {"S": S, **convs}

    # step (the base class's): prefill of one token, so S and the convolution tails are the whole state.


@register_mixer(
    "gated_deltanet",
    description="Gated DeltaNet: the delta rule with a Mamba-2-style data-dependent decay per head "
    "(-exp(A_log) softplus(x Wa + dt_bias)), gated output RMSNorm",
    paper="Yang, Kautz & Hatamizadeh 2024 (ICLR 2025), Gated Delta Networks: Improving Mamba2 with Delta Rule",
    family="delta rule",
    demo=True,
    paper_settings={"use_short_conv": True, "expand_v": 2.0},
    settings_source="Yang, Kautz & Hatamizadeh 2024: values 2x keys, short conv, output gate, A in [1, 16], dt in "
    "[1e-3, 0.1]; the paper's head dim is 256 (keys 0.75 d at 1.3B), here one head per 64 channels of keys "
    "(head dims 64 / 128) at small d",
    test_kwargs={"n_heads": 2},
    mqar_lr=1e-2,
)
class GatedDeltaNet(DeltaNet):
    def __init__(
        self,
        d_model: int,
        n_heads: int | None = None,
        expand_k: float = 1.0,
        expand_v: float = 1.0,
        use_gate: bool = True,
        allow_neg_eigval: bool = False,
        use_short_conv: bool = False,
        conv_width: int = 4,
        norm_eps: float = 1e-5,
        a_init_range: tuple[float, float] = (1.0, 16.0),
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        dt_init_floor: float = 1e-4,
        backend: str = "auto",
    ):
        super().__init__(
            d_model,
            n_heads=n_heads,
            expand_k=expand_k,
            expand_v=expand_v,
            use_gate=use_gate,
            allow_neg_eigval=allow_neg_eigval,
            use_short_conv=use_short_conv,
            conv_width=conv_width,
            norm_eps=norm_eps,
            backend=backend,
        )
        if not (isinstance(a_init_range, (tuple, list)) and len(a_init_range) == 2):
            raise ValueError(f"gated_deltanet: a_init_range must be (a_min, a_max), got {a_init_range!r}")
        try:
            A_log = a_log_init(self.n_heads, *a_init_range)
            dt_bias = dt_bias_init(self.n_heads, dt_min, dt_max, dt_init_floor)
        except ValueError as e:
            raise ValueError(f"gated_deltanet: {e}") from None
        self.a_proj = nn.Linear(d_model, self.n_heads, bias=False)
        self.A_log = nn.Parameter(A_log)
        self.dt_bias = nn.Parameter(dt_bias)
        self.A_log._no_weight_decay = True
        self.dt_bias._no_weight_decay = True

    def _log_decay(self, x):
        dt = torch.promote_types(x.dtype, torch.float32)
        rate = F.softplus(self.a_proj(x).to(dt) + self.dt_bias.to(dt))
        return -self.A_log.to(dt).exp() * rate
