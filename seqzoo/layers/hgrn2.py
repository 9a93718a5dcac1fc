"""``hgrn2``: gated linear RNN with state expansion (Qin et al. 2024), as gated linear attention.

    f = lb + (1 - lb) * sigmoid(x Wf)                 # forget gate per key channel, lower bound lb in [0, 1)
    q = swish(x Wq), k = 1 - f, g = log f, v = x Wi   # the input gate is tied to the forget gate
    S_t = f_t[:, None] * S_{t-1} + k_t^T v_t ;  o_t = K^-1/2 q_t S_t
    y = RMSNorm(o) Wo

The key 1 - f = (1 - lb) sigmoid(-x Wf) and log f are both computed without cancellation. Each head holds a
[K, V] state with K = ``expand_ratio`` (128 in the paper) and V = d_model / H; heads default to
d_model / expand_ratio. In a deep HGRN2 the lower bound rises with depth; here it is one fixed number per
layer (``lower_bound``). With ``use_short_conv`` the query and the input (not the forget gate, which stays
a function of x_t alone) pass through causal depthwise convolutions with SiLU, Zoology-style; this is not in
the HGRN2 paper, and the per-mixer settings table says so.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..modules.norm import RMSNorm
from ..registry import register_mixer
from .base import check_float, check_int
from .linear_attention import GatedLinearAttentionMixer


@register_mixer(
    "hgrn2",
    description="HGRN2: forget-gated linear RNN with outer-product state expansion (key = 1 - forget gate)",
    paper="Qin et al. 2024, HGRN2: Gated Linear RNNs with State Expansion",
    family="gated linear attention",
    paper_settings={"use_short_conv": True},
    settings_source="Qin et al. 2024: state expansion 128; short conv on q and input (Zoology-style, not in the paper)",
    test_kwargs={"n_heads": 2, "expand_ratio": 8},
    mqar_lr=1e-2,
)
class HGRN2(GatedLinearAttentionMixer):
    def __init__(
        self,
        d_model: int,
        n_heads: int | None = None,
        expand_ratio: int = 128,
        lower_bound: float = 0.0,
        norm_eps: float = 1e-5,
        use_short_conv: bool = False,
        conv_width: int = 4,
        bidirectional: bool = False,
        backend: str = "auto",
    ):
        super().__init__(d_model, bidirectional, backend)
        check_int("hgrn2", "expand_ratio", expand_ratio, 1)
        check_float("hgrn2", "norm_eps", norm_eps, 0.0, open_low=True)
        if n_heads is None:
            n_heads = max(1, d_model // expand_ratio)
        check_int("hgrn2", "n_heads", n_heads, 1)
        self._set_heads(n_heads, n_heads * expand_ratio, d_model)
        if not (isinstance(lower_bound, (int, float)) and 0.0 <= lower_bound < 1.0):
            raise ValueError(f"hgrn2: lower_bound must be in [0, 1), got {lower_bound!r}")
        self.lower_bound = float(lower_bound)
        self.q_proj = nn.Linear(d_model, self.key_dim, bias=False)
        self.f_proj = nn.Linear(d_model, self.key_dim, bias=False)
        self.i_proj = nn.Linear(d_model, self.value_dim, bias=False)
        self.norm = RMSNorm(self.value_dim, eps=norm_eps)
        self.o_proj = nn.Linear(self.value_dim, d_model, bias=False)
        # Short convolutions on the query and the input (the forget gate stays a function of x_t alone).
        self._add_short_convs(use_short_conv, conv_width, {"conv_q": self.key_dim, "conv_v": self.value_dim})

    def extra_repr(self) -> str:
        return super().extra_repr() + f", lower_bound={self.lower_bound}"

    def _features(self, x, state, positions, keep_state, cu_seqlens=None):
        f = self.f_proj(x)
        lb = self.lower_bound
        if lb == 0.0:
            g = F.logsigmoid(f)
            k = torch.sigmoid(-f)
        else:
            # log(lb + (1 - lb) sigmoid(f)) and 1 - that gate = (1 - lb) sigmoid(-f).
            g = torch.logaddexp(torch.full_like(f, math.log(lb)), math.log1p(-lb) + F.logsigmoid(f))
            k = (1.0 - lb) * torch.sigmoid(-f)
        convs = {}
        q = self._maybe_conv("conv_q", self.q_proj(x), state, keep_state, convs, cu_seqlens)
        q = q if "conv_q" in self.convs else F.silu(q)  # the convolution ends in SiLU already
        v = self._maybe_conv("conv_v", self.i_proj(x), state, keep_state, convs, cu_seqlens)
        return (
            self._heads(q, self.head_k_dim),
            self._heads(k, self.head_k_dim),
            self._heads(v, self.head_v_dim),
            self._heads(g, self.head_k_dim),
            convs,
        )

    def _output(self, o, x):
        return self.o_proj(self.norm(o.reshape(x.shape[0], x.shape[1], -1)))
