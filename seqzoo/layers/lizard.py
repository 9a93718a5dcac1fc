"""``lizard``: gated linear attention for the global context plus sliding-window softmax attention with
learned meta-memory tokens, on one set of attention projections (Van Nguyen et al. 2025, Lizard).

    q = x Wq ;  [k, v] = x Wkv                            # Attention's projections; no RoPE by default
    # normalised gated linear attention, learned Hedgehog feature maps (per head, W [Dh, F]):
    phi(u) = [softmax_F(u W), softmax_F(-u W)]            # 2F positive features
    g_t = logsigmoid(x_t Wg + bg) / 16                    # log decay, one per head: the learned gating module
    o_gla_t = sum_{j<=t} e^{G_t - G_j} phi_q(q_t).phi_k(k_j) v_j / sum_{j<=t} e^{G_t - G_j} phi_q(q_t).phi_k(k_j)
    # sliding-window attention whose softmax also covers M learned meta tokens (keys mk, values mv per kv head):
    o_swa_t = (sum_{window} e^{s_tj} v_j + sum_m e^{q_t.mk_m / sqrt(Dh)} mv_m) / (sum_{window} e^{s_tj} + sum_m ...)
    y = (o_gla + alpha o_swa) Wo                          # alpha: a learned scalar, 1 at start

The GLA branch runs on ``ops.gla`` with a per-head decay and a column of ones appended to v, whose output is
the normaliser: its state S [B, H, 2F, Dh + 1] holds the numerator's state and, in the last column, the
decayed sum of phi_k. The window branch decodes from the last W keys/values, as ``liger``; the meta tokens are
parameters, not state. Memory is constant: H 2F (Dh + 1) + 2 W Hk Dh numbers per sequence. Packed documents
(``cu_seqlens``) and per-row positions work as in ``liger`` (the base class); the window branch takes a packed
row one document at a time, each document's queries seeing the meta tokens and its own window.

Sources. The paper's code is not public (to our knowledge); this follows the paper's description (gated
linear attention with a learnable gating module for global context, sliding-window attention "enhanced by
meta memory", a RoPE-free attention approximation) and two public re-implementations that agree on the
formulas: Hedgehog softmax feature maps phi_q, phi_k, the normalised GLA with gate sigmoid(W_gamma x), meta
tokens that enter the window's softmax, and y = o_gla + alpha * o_swa with alpha learned (initialised to 1).
Deviations and choices, each a keyword:

- the gate is one decay per head (the re-implementations use one per token, shared by the heads), divided
  by ``gate_normalizer`` = 16 as in GLA so that the decays start near 1 (``gate_normalizer=1`` gives the plain
  sigmoid(W_gamma x));
- the meta tokens have learned keys *and values* (``meta_v``, zeros at start): at initialisation they only
  add to the softmax's denominator, as in the re-implementations (an attention sink), and training may give
  them content, as Hymba's meta tokens have;
- the feature maps are per head (LoLCATs / Hedgehog), ``feature_dim`` = Dh by default, initialised to the
  identity;
- ``rotary=False`` by default (the paper's RoPE-free approximation); ``rotary=True`` rotates q and k of the
  window branch only, as ``liger`` does.

The meta-token window attention is computed here in blocks of queries (``window_attention_with_sinks``),
since ``ops.attention`` has no always-visible extra keys.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from ..registry import register_mixer
from .base import check_float, check_int
from .liger import AttentionHybridMixer

# Queries per block in window_attention_with_sinks: scores are [B, H, block, block + W - 1].
_QUERY_BLOCK = 128


def window_attention_with_sinks(q, k, v, window: int, sink_k=None, sink_v=None, scale=None):
    """Causal sliding-window softmax attention whose softmax also covers always-visible "sink" tokens.

    q [B, Tq, H, D] (the last Tq of the Tk positions, as ops.attention aligns them); k, v [B, Tk, Hk, D];
    sink_k, sink_v [Hk, M, D] or None. Query i at position p sees keys p - W < j <= p and every sink:

        o_i = (sum_j e^{s_ij} v_j + sum_m e^{s_im} sink_v_m) / (sum_j e^{s_ij} + sum_m e^{s_im}),
        s = scale * q . key, scale = D^-1/2 by default.

    Computed in blocks of queries (memory O(T (block + W)), not O(T^2)), in fp32 (fp64 for fp64 inputs).
    """
    b, tq, h, d = q.shape
    tk, hk = k.shape[1], k.shape[2]
    group = h // hk
    dt = torch.promote_types(q.dtype, torch.float32)
    scale = d**-0.5 if scale is None else scale
    qf = q.to(dt) * scale
    kf = k.to(dt).repeat_interleave(group, dim=2)
    vf = v.to(dt).repeat_interleave(group, dim=2)
    sinks = sink_k is not None and sink_k.shape[1] > 0
    if sinks:
        skf = sink_k.to(dt).repeat_interleave(group, dim=0)  # [H, M, D]
        svf = sink_v.to(dt).repeat_interleave(group, dim=0)
    offset = tk - tq
    out = []
    for s in range(0, tq, _QUERY_BLOCK):
        e = min(s + _QUERY_BLOCK, tq)
        p0, p1 = offset + s, offset + e  # positions of this block's queries
        k0 = max(0, p0 - window + 1)
        scores = torch.einsum("bihd,bjhd->bhij", qf[:, s:e], kf[:, k0:p1])
        pos_q = torch.arange(p0, p1, device=q.device)[:, None]
        pos_k = torch.arange(k0, p1, device=q.device)[None, :]
        scores = scores.masked_fill(~((pos_k <= pos_q) & (pos_k > pos_q - window)), float("-inf"))
        if sinks:
            # Every query sees itself, so no row is all -inf; the sinks only add mass.
            sink_scores = torch.einsum("bihd,hmd->bhim", qf[:, s:e], skf)
            p = torch.softmax(torch.cat([sink_scores, scores], dim=-1), dim=-1)
            m = sink_scores.shape[-1]
            o = torch.einsum("bhij,bjhd->bihd", p[..., m:], vf[:, k0:p1])
            o = o + torch.einsum("bhim,hmd->bihd", p[..., :m], svf)
        else:
            o = torch.einsum("bhij,bjhd->bihd", torch.softmax(scores, dim=-1), vf[:, k0:p1])
        out.append(o)
    return torch.cat(out, dim=1).to(q.dtype)


def hedgehog_feature_map(u: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """u [B, T, H, D], weight [H, D, F] -> [softmax(u W), softmax(-u W)] [B, T, H, 2F] (Hedgehog's softmax map)."""
    dt = torch.promote_types(u.dtype, torch.float32)
    uw = torch.einsum("bthd,hdf->bthf", u.to(dt), weight.to(dt))
    return torch.cat([torch.softmax(uw, dim=-1), torch.softmax(-uw, dim=-1)], dim=-1).to(u.dtype)


@register_mixer(
    "lizard",
    description="Lizard: normalised gated linear attention (learned Hedgehog feature maps, learned per-head "
    "gate) + sliding-window attention with learned meta-memory tokens, on one set of q/k/v/o projections",
    paper="Van Nguyen et al. 2025, Lizard: An Efficient Linearization Framework for Large Language Models",
    family="gated linear attention",
    settings_source="Van Nguyen et al. 2025: Hedgehog feature maps, learned per-head gate, 4 meta tokens, window "
    "64 (a public re-implementation uses 128), RoPE-free",
    test_kwargs={"n_heads": 4, "n_kv_heads": 2, "window": 5, "n_meta": 2, "feature_dim": 4},
    mqar_lr=3e-3,  # softmax attention over its window does not learn MQAR at 1e-2 (0.27), as attention
)
class Lizard(AttentionHybridMixer):
    def __init__(
        self,
        d_model: int,
        n_heads: int | None = None,
        n_kv_heads: int | None = None,
        head_dim: int | None = None,
        window: int = 64,
        n_meta: int = 4,
        feature_dim: int | None = None,
        gate_normalizer: float = 16.0,
        rope_base: float = 10000.0,
        rotary: bool = False,
        bias: bool = False,
        backend: str = "auto",
    ):
        super().__init__(d_model, n_heads, n_kv_heads, head_dim, window, rope_base, rotary, bias, backend)
        if not isinstance(n_meta, int) or isinstance(n_meta, bool) or n_meta < 0:
            raise ValueError(f"lizard: n_meta must be a non-negative int, got {n_meta!r}")
        feature_dim = self.head_dim if feature_dim is None else feature_dim
        check_int("lizard", "feature_dim", feature_dim, 1)
        self.gate_normalizer = check_float("lizard", "gate_normalizer", gate_normalizer, 0.0, open_low=True)
        self.n_meta, self.feature_dim = n_meta, feature_dim
        h, hk, dh = self.n_heads, self.n_kv_heads, self.head_dim
        self.gla_k_dim, self.gla_v_dim = 2 * feature_dim, dh + 1
        # Feature maps start as the identity (softmax(q) and softmax(-q)) when F = Dh, else small and random.
        init = torch.eye(dh, feature_dim) if feature_dim == dh else torch.randn(dh, feature_dim) * dh**-0.5
        self.phi_q = nn.Parameter(init.repeat(h, 1, 1))
        self.phi_k = nn.Parameter(init.repeat(h, 1, 1))
        self.g_proj = nn.Linear(d_model, h, bias=True)  # the gating module: one decay per head
        if n_meta:
            self.meta_k = nn.Parameter(torch.randn(hk, n_meta, dh))
            # Zero values: at start the meta tokens are pure attention sinks (they only take softmax mass).
            self.meta_v = nn.Parameter(torch.zeros(hk, n_meta, dh))
        else:
            self.meta_k = self.meta_v = None
        self.alpha = nn.Parameter(torch.ones(()))

    def extra_repr(self) -> str:
        return super().extra_repr() + f", n_meta={self.n_meta}, feature_dim={self.feature_dim}"

    def _gla_inputs(self, x, q, k, v):
        qg = hedgehog_feature_map(q, self.phi_q)
        kg = hedgehog_feature_map(self._repeat_kv(k), self.phi_k)
        v = self._repeat_kv(v)
        # The ones column makes ops.gla also return the normaliser sum_j e^{G_t - G_j} phi_q . phi_k.
        vg = torch.cat([v, torch.ones_like(v[..., :1])], dim=-1)
        g = F.logsigmoid(self.g_proj(x)) / self.gate_normalizer
        return qg, kg, vg, g

    def _gla_output(self, o):
        # Positive features and decays make the normaliser positive (it includes the token itself, with no
        # decay); the floor only keeps an underflow from producing 0/0. It is 1e-12 in fp32, not the smallest
        # normal number: with peaked features (large inputs) the normaliser underflows to 0, and the gradient
        # -o / n^2 at n = tiny overflowed to inf / NaN (tests/test_extreme_inputs.py).
        wide = o.to(torch.promote_types(o.dtype, torch.float32))
        return (wide[..., :-1] / wide[..., -1:].clamp_min(1e-12)).to(o.dtype)

    def _window_attention(self, q, k, v, cu_seqlens=None):
        # For seqzoo.analysis: this branch is plain torch, not an op (probed with window_attention_with_sinks).
        ops.note("lizard.window", q=q, k=k, v=v, cu_seqlens=cu_seqlens)
        if cu_seqlens is None:
            return window_attention_with_sinks(q, k, v, self.window, self.meta_k, self.meta_v)
        # Packed documents: one document at a time (the meta tokens are seen by every document's queries).
        bounds = [int(b) for b in cu_seqlens.tolist()]
        return torch.cat(
            [
                window_attention_with_sinks(
                    q[:, s:e], k[:, s:e], v[:, s:e], self.window, self.meta_k, self.meta_v
                )
                for s, e in zip(bounds[:-1], bounds[1:])
            ],
            dim=1,
        )

    def _mix(self, o_gla, o_swa):
        return o_gla + self.alpha.to(o_gla.dtype) * o_swa
