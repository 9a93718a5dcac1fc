"""``based``: linear attention with a second-order Taylor feature map (Arora et al. 2024, Based).

    q = x Wq, k = x Wk                      # [B, T, H, d]: d = feature_dim (16) per head, much smaller than v's
    v = x Wv                                # [B, T, H, Dv], Dv = d_model / H
    phi(u) = [1, u / d^(1/4), (u (x) u).flatten() / (sqrt(2) sqrt(d))]      # 1 + d + d^2 features (273 at d=16)
    y_t = sum_{j<=t} phi(q_t).phi(k_j) v_j / (sum_{j<=t} phi(q_t).phi(k_j) + eps)
    y = y Wo

phi(q).phi(k) = 1 + s + s^2 / 2 with s = q.k / sqrt(d): the Taylor expansion of exp(s) to second order, so
the layer is softmax attention with exp replaced by its quadratic approximation. 1 + s + s^2/2 >= 1/2 for
every s, so the normaliser is positive and the output is a weighted average of the values, as in softmax
attention (eps = 1e-12, as in the Based code, only guards an all-zero input).

Computed with ``ops.gla`` (no decay, g = None) on the expanded features, with a column of ones appended to v:
the op's extra output column is the normaliser, and its state S [B, H, 1 + d + d^2, Dv + 1] holds both the
running sum of phi(k)^T v and, in the last column, the running sum z of phi(k). Decoding is exact and
constant in memory. ``bidirectional=True`` runs the op with ``causal=False`` (the Based code's non-causal
view: every position sees the whole sequence).

Follows HazyResearch/based ``based/models/mixers/linear_attention.py`` (TaylorExp, LinearAttention) and
Zoology's ``zoology/mixers/based.py``: projections q, k to ``feature_dim`` per head, v and o at the model
width, no output norm. The full d x d outer product is used, as in those; fla's ``TaylorFeatureMap`` keeps only
its upper triangle (d (d + 1) / 2 terms, off-diagonal ones scaled by sqrt(2)), which gives the same kernel
with a smaller state. The Based architecture gets its local mixing from separate BaseConv (``base_conv``)
and sliding-window layers, not from inside this layer, so there is no short convolution by default;
``use_short_conv=True`` adds the family's (q, k, v) convolutions for Zoology-style single-mixer models.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..registry import register_mixer
from .base import check_int
from .linear_attention import GatedLinearAttentionMixer, head_split


def taylor_feature_map(u: torch.Tensor) -> torch.Tensor:
    """u [..., d] -> [..., 1 + d + d^2] with phi(a).phi(b) = 1 + s + s^2 / 2, s = a.b / sqrt(d)."""
    d = u.shape[-1]
    rd = math.sqrt(d)
    # (a (x) a).(b (x) b) = (a.b)^2, so this block contributes (a.b)^2 / (2 d) = s^2 / 2.
    u2 = (u[..., :, None] * u[..., None, :]).flatten(-2) / (math.sqrt(2.0) * rd)
    return torch.cat([torch.ones_like(u[..., :1]), u / math.sqrt(rd), u2], dim=-1)


@register_mixer(
    "based",
    description="Based linear attention: 2nd-order Taylor feature map of exp(q.k/sqrt(d)) (feature dim 16 "
    "-> 273), normalised",
    paper="Arora et al. 2024, Simple linear attention language models balance the recall-throughput tradeoff",
    family="Taylor linear attention",
    demo=True,
    settings_source="Arora et al. 2024: Taylor feature dim 16 (273 expanded), normalised, no convolution inside "
    "the layer (the Based architecture adds BaseConv layers: `base_conv`; Zoology's MQAR uses 1 head at d 64, "
    "as here)",
    test_kwargs={"n_heads": 2, "feature_dim": 4},
    mqar_lr=1e-2,
)
class Based(GatedLinearAttentionMixer):
    def __init__(
        self,
        d_model: int,
        n_heads: int | None = None,
        feature_dim: int = 16,
        head_dim: int | None = None,
        eps: float = 1e-12,
        use_short_conv: bool = False,
        conv_width: int = 4,
        bidirectional: bool = False,
        backend: str = "auto",
    ):
        super().__init__(d_model, bidirectional, backend)
        check_int("based", "feature_dim", feature_dim, 1)
        n_heads = max(1, d_model // 64) if n_heads is None else n_heads
        check_int("based", "n_heads", n_heads, 1)
        if head_dim is None:
            head_dim = head_split("based", "value", d_model, n_heads)
        check_int("based", "head_dim", head_dim, 1)
        if not (isinstance(eps, (int, float)) and not isinstance(eps, bool) and eps >= 0):
            raise ValueError(f"based: eps must be a non-negative number, got {eps!r}")
        self.eps = float(eps)
        self.n_heads, self.feature_dim, self.value_head_dim = n_heads, feature_dim, head_dim
        self.key_dim, self.value_dim = n_heads * feature_dim, n_heads * head_dim
        # The op's per-head sizes, which the family's init_state / state_size read: the expanded features,
        # and the values plus the ones column whose output is the normaliser.
        self.head_k_dim = 1 + feature_dim + feature_dim**2
        self.head_v_dim = head_dim + 1
        self.q_proj = nn.Linear(d_model, self.key_dim, bias=False)
        self.k_proj = nn.Linear(d_model, self.key_dim, bias=False)
        self.v_proj = nn.Linear(d_model, self.value_dim, bias=False)
        self.o_proj = nn.Linear(self.value_dim, d_model, bias=False)
        self._add_short_convs(
            use_short_conv,
            conv_width,
            {"conv_q": self.key_dim, "conv_k": self.key_dim, "conv_v": self.value_dim},
        )

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, n_heads={self.n_heads}, feature_dim={self.feature_dim} "
            f"(expanded {self.head_k_dim}), head_dim={self.value_head_dim}, bidirectional={self.bidirectional}"
        )

    def _features(self, x, state, positions, keep_state, cu_seqlens=None):
        q, k, v, convs = self._qkv(x, state, keep_state, cu_seqlens)
        q = taylor_feature_map(self._heads(q, self.feature_dim))
        k = taylor_feature_map(self._heads(k, self.feature_dim))
        v = self._heads(v, self.value_head_dim)
        # The ones column makes the op also return the normaliser phi(q_t) . sum_j phi(k_j).
        v = torch.cat([v, torch.ones_like(v[..., :1])], dim=-1)
        return q, k, v, None, convs

    def _output(self, o, x):
        # ops.gla scales q by K^-1/2 (K = the expanded size); numerator and normaliser both carry it, so it
        # cancels, and eps is scaled alike to keep num / (den + eps) exactly the Based formula.
        scale = self.head_k_dim**-0.5
        y = o[..., :-1] / (o[..., -1:] + self.eps * scale)
        return self.o_proj(y.reshape(x.shape[0], x.shape[1], -1))
