"""``retnet`` (retention) and ``lightning`` (TransNormerLLM's lightning attention): one fixed decay per head.

    q = phi(x Wq), k = phi(x Wk), v = x Wv            # [B, T, H, K], [B, T, H, K], [B, T, H, V]
    q, k = rope(q), rope(k)                           # retnet: relative positions (RetNet's xPos rotation)
    S_t = gamma_h S_{t-1} + k_t^T v_t ;  o_t = K^-1/2 q_t S_t
    y = (RMSNorm_head(o) * swish(x Wr)) Wo             # TransNormerLLM-style normalised, gated output

Decays: ``retnet`` gamma_h = 1 - 2^(-5-h) (RetNet, h = 0..H-1: from 0.969 towards 1);
``lightning`` gamma_h = exp(-2^(-8(h+1)/H)) (the ALiBi slopes that lightning attention / TransNormerLLM use
for its first layer), with SiLU on q and k and no rotation. RetNet's defaults keep key width d_model and
value width 2 d_model, as in the paper. With ``use_short_conv`` q, k and v first pass through causal
depthwise convolutions (SiLU), as Zoology's MQAR models and fla put in front of linear attention (the
per-mixer settings table turns them on); their last inputs join the decoding state.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..modules.norm import RMSNorm
from ..modules.rotary import apply_rotary
from ..registry import register_mixer
from .base import check_float
from .linear_attention import FEATURE_MAPS, GatedLinearAttentionMixer, feature_map

DECAYS = ("retnet", "lightning")


def head_log_decays(kind: str, n_heads: int) -> torch.Tensor:
    """log gamma_h for each head, fp64."""
    h = torch.arange(n_heads, dtype=torch.float64)
    if kind == "retnet":
        return torch.log1p(-(2.0 ** (-5.0 - h)))
    if kind == "lightning":
        return -(2.0 ** (-8.0 * (h + 1) / n_heads))
    raise ValueError(f"unknown decay schedule {kind!r}; expected one of {DECAYS}")


@register_mixer(
    "retnet",
    description="retention: linear attention with one fixed decay per head, rotary positions, "
    "normalised gated output",
    paper="Sun et al. 2023, Retentive Network: A Successor to Transformer for Large Language Models",
    family="gated linear attention",
    paper_settings={"use_short_conv": True},
    settings_source="Sun et al. 2023: values 2d, rotary positions, fixed per-head decays; short conv as in Zoology/fla",
    test_kwargs={"n_heads": 2},
    mqar_lr=1e-2,
)
class RetNet(GatedLinearAttentionMixer):
    def __init__(
        self,
        d_model: int,
        n_heads: int | None = None,
        expand_k: float = 1.0,
        expand_v: float = 2.0,
        decay: str = "retnet",
        feature_map: str = "identity",
        rotary: bool = True,
        rope_base: float = 10000.0,
        norm_eps: float = 1e-5,
        use_short_conv: bool = False,
        conv_width: int = 4,
        bidirectional: bool = False,
        backend: str = "auto",
    ):
        super().__init__(d_model, bidirectional, backend)
        for arg, value in (("expand_k", expand_k), ("expand_v", expand_v), ("norm_eps", norm_eps)):
            check_float(self.mixer_name, arg, value, 0.0, open_low=True)
        self._set_heads(n_heads, int(d_model * expand_k), int(d_model * expand_v))
        self._add_short_convs(
            use_short_conv,
            conv_width,
            {"conv_q": self.key_dim, "conv_k": self.key_dim, "conv_v": self.value_dim},
        )
        name = self.mixer_name
        check_float(name, "rope_base", rope_base, 0.0, open_low=True)
        if decay not in DECAYS:
            raise ValueError(f"{name}: decay must be one of {DECAYS}, got {decay!r}")
        if feature_map not in FEATURE_MAPS:
            raise ValueError(f"{name}: feature_map must be one of {FEATURE_MAPS}, got {feature_map!r}")
        if rotary and self.head_k_dim % 2:
            raise ValueError(f"{name}: rotary positions need an even key head size, got {self.head_k_dim}")
        self.decay, self.feature_map, self.rotary, self.rope_base = (
            decay,
            feature_map,
            bool(rotary),
            rope_base,
        )
        self.uses_position = self.rotary
        self.q_proj = nn.Linear(d_model, self.key_dim, bias=False)
        self.k_proj = nn.Linear(d_model, self.key_dim, bias=False)
        self.v_proj = nn.Linear(d_model, self.value_dim, bias=False)
        self.r_proj = nn.Linear(d_model, self.value_dim, bias=False)
        self.norm = RMSNorm(self.head_v_dim, eps=norm_eps)
        self.o_proj = nn.Linear(self.value_dim, d_model, bias=False)
        # Fixed, not learned; a buffer so that .to()/.double() move it, not saved (rebuilt from the config).
        self.register_buffer("log_decay", head_log_decays(decay, self.n_heads).float(), persistent=False)

    def extra_repr(self) -> str:
        return (
            super().extra_repr()
            + f", decay={self.decay}, feature_map={self.feature_map}, rotary={self.rotary}"
        )

    def _features(self, x, state, positions, keep_state, cu_seqlens=None):
        q, k, v, convs = self._qkv(x, state, keep_state, cu_seqlens)
        q = feature_map(self._heads(q, self.head_k_dim), self.feature_map)
        k = feature_map(self._heads(k, self.head_k_dim), self.feature_map)
        if self.rotary:
            q, k = apply_rotary(q, positions, self.rope_base), apply_rotary(k, positions, self.rope_base)
        b, t = x.shape[:2]
        g = self.log_decay.to(torch.promote_types(x.dtype, torch.float32)).expand(b, t, self.n_heads)
        return q, k, self._heads(v, self.head_v_dim), g, convs

    def _output(self, o, x):
        r = self._heads(self.r_proj(x), self.head_v_dim)
        return self.o_proj((self.norm(o) * F.silu(r)).reshape(x.shape[0], x.shape[1], -1))


@register_mixer(
    "lightning",
    description="lightning attention (TransNormerLLM): SiLU linear attention with ALiBi-slope decays, "
    "normalised gated output",
    paper="Qin et al. 2023, TransNormerLLM; Qin et al. 2024, Lightning Attention-2",
    family="gated linear attention",
    paper_settings={"use_short_conv": True},
    settings_source="Qin et al. 2023 (TransNormerLLM): SiLU features, ALiBi-slope decays; short conv as in Zoology/fla",
    test_kwargs={"n_heads": 2},
    mqar_lr=1e-2,
)
class Lightning(RetNet):
    def __init__(
        self,
        d_model: int,
        n_heads: int | None = None,
        expand_k: float = 1.0,
        expand_v: float = 1.0,
        decay: str = "lightning",
        feature_map: str = "silu",
        rotary: bool = False,
        rope_base: float = 10000.0,
        norm_eps: float = 1e-5,
        use_short_conv: bool = False,
        conv_width: int = 4,
        bidirectional: bool = False,
        backend: str = "auto",
    ):
        super().__init__(
            d_model,
            n_heads=n_heads,
            expand_k=expand_k,
            expand_v=expand_v,
            decay=decay,
            feature_map=feature_map,
            rotary=rotary,
            rope_base=rope_base,
            norm_eps=norm_eps,
            use_short_conv=use_short_conv,
            conv_width=conv_width,
            bidirectional=bidirectional,
            backend=backend,
        )
