"""``gla``: gated linear attention with a data-dependent, per-channel forget gate (Yang et al. 2023).

    q = x Wq, k = x Wk, v = x Wv                      # [B, T, H, K], [B, T, H, K], [B, T, H, V]
    g = logsigmoid(W2 W1 x + b) / 16                  # log decay per key channel, low-rank (W1: D -> 16)
    S_t = exp(g_t)[:, None] * S_{t-1} + k_t^T v_t ;  o_t = K^-1/2 q_t S_t
    y = (RMSNorm_head(o) * swish(x Wr)) Wo

The normaliser 16 keeps the gates close to 1 (slow forgetting) at initialisation, as in the paper. With
``use_short_conv`` q, k and v first pass through causal depthwise convolutions (``ops.causal_conv1d``,
SiLU), whose last inputs join the decoding state. Defaults follow the paper: key width d_model / 2, value
width d_model.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from ..modules.norm import RMSNorm
from ..registry import LRASettings, register_mixer
from .base import check_float, check_int
from .linear_attention import GatedLinearAttentionMixer


@register_mixer(
    "gla",
    description="gated linear attention: data-dependent per-channel decay (low-rank logsigmoid gate), "
    "swish output gate",
    paper="Yang et al. 2023, Gated Linear Attention Transformers with Hardware-Efficient Training",
    family="gated linear attention",
    demo=True,
    paper_settings={"use_short_conv": True},
    settings_source="Yang et al. 2023: keys d/2, values d, low-rank gate 16; short conv as in fla and Zoology's "
    "MQAR models",
    test_kwargs={"n_heads": 2},
    mqar_lr=1e-2,
    lra=LRASettings(
        kwargs={"use_short_conv": False, "gate_normalizer": 128.0},
        overrides={"model.block": "prenorm", "model.mlp": "swiglu", "optim.lr": 1e-3},
        note="GLA: pre-norm blocks with SwiGLU as its paper, but with the task's norm (BatchNorm on "
        "Pathfinder, as S4) for its paper's per-token RMSNorm: with RMSNorm neither gla, vig nor s4d fits "
        "even 64 Pathfinder images (a constant prediction after 30 steps; bench_results/lra-norm-probe.md); "
        "gate_normalizer 128 for its 16 (not from a paper: LRA's sequences are 1,000+ tokens, and at 16 "
        "every decay starts with a 16-token half-life); bidirectional, so without the (causal) short "
        "convolution fla adds; lr 1e-3 (not from a paper: GLA reports no LRA results)",
    ),
)
class GLA(GatedLinearAttentionMixer):
    def __init__(
        self,
        d_model: int,
        n_heads: int | None = None,
        expand_k: float = 0.5,
        expand_v: float = 1.0,
        gate_low_rank: int = 16,
        gate_normalizer: float = 16.0,
        use_short_conv: bool = False,
        conv_width: int = 4,
        norm_eps: float = 1e-5,
        bidirectional: bool = False,
        backend: str = "auto",
    ):
        super().__init__(d_model, bidirectional, backend)
        for arg, value in (("expand_k", expand_k), ("expand_v", expand_v), ("norm_eps", norm_eps)):
            check_float(self.mixer_name, arg, value, 0.0, open_low=True)
        self._set_heads(n_heads, int(d_model * expand_k), int(d_model * expand_v))
        check_int("gla", "gate_low_rank", gate_low_rank, 1)
        if not gate_normalizer > 0:
            raise ValueError(f"gla: gate_normalizer must be positive, got {gate_normalizer!r}")
        self.gate_normalizer = float(gate_normalizer)
        self.q_proj = nn.Linear(d_model, self.key_dim, bias=False)
        self.k_proj = nn.Linear(d_model, self.key_dim, bias=False)
        self.v_proj = nn.Linear(d_model, self.value_dim, bias=False)
        self.gk_proj = nn.Sequential(
            nn.Linear(d_model, gate_low_rank, bias=False), nn.Linear(gate_low_rank, self.key_dim, bias=True)
        )
        self.r_proj = nn.Linear(d_model, self.value_dim, bias=False)  # the output gate
        self.norm = RMSNorm(self.head_v_dim, eps=norm_eps)
        self.o_proj = nn.Linear(self.value_dim, d_model, bias=False)
        self._add_short_convs(
            use_short_conv,
            conv_width,
            {"conv_q": self.key_dim, "conv_k": self.key_dim, "conv_v": self.value_dim},
        )

    def _features(self, x, state, positions, keep_state, cu_seqlens=None):
        q, k, v, conv_states = self._qkv(x, state, keep_state, cu_seqlens)
        g = F.logsigmoid(self.gk_proj(x)) / self.gate_normalizer
        return (
            self._heads(q, self.head_k_dim),
            self._heads(k, self.head_k_dim),
            self._heads(v, self.head_v_dim),
            self._heads(g, self.head_k_dim),
            conv_states,
        )

    def _output(self, o, x):
        r = self._heads(self.r_proj(x), self.head_v_dim)
        return self.o_proj((self.norm(o) * F.silu(r)).reshape(x.shape[0], x.shape[1], -1))
