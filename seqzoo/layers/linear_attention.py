"""``linear_attention`` and the machinery every mixer over ``ops.gla`` shares (gla, retnet, lightning, hgrn2).

    q = phi(x Wq), k = phi(x Wk), v = x Wv                # [B, T, H, K], [B, T, H, K], [B, T, H, V]
    S_t = S_{t-1} + k_t^T v_t ;  o_t = K^-1/2 q_t S_t     # no decay: causal linear attention
    y = RMSNorm_head(o) Wo

phi is the feature map: ``identity``, ``elu+1`` (Katharopoulos et al. 2020), ``relu`` or ``silu``. There is
no denominator: a per-head RMSNorm of the output takes its place (as in TransNormer), so the output's scale
does not grow with the length. ``use_short_conv`` puts causal depthwise convolutions (SiLU) on q, k and v
before the feature map, as Zoology's MQAR models do; every mixer of the family takes it.

:class:`GatedLinearAttentionMixer` holds what the family shares: the heads, the call to ``ops.gla`` with a
state, decoding (the state is S [B, H, K, V] in fp32, plus the short-convolution tails and a position
counter for the mixers that have them) and the bidirectional (encoder) mode, which runs the op with
``causal=False``. A subclass supplies ``_features`` (x -> q, k, v, g) and ``_output`` (o, x -> y).

Packed documents (``cu_seqlens``, ``ops/_varlen.py``): ``forward(x, cu_seqlens=cu)`` and ``prefill(x, state,
cu_seqlens=cu)`` take N documents in one row x [1, T, d] and compute what N separate calls compute. The
projections, feature maps and output norms act on one position at a time; the three things that run along time
are told the boundaries: the short convolutions and ``ops.gla`` / ``ops.gla_step`` take ``cu_seqlens`` (states
[N, ...] in and out), and the positions of the rotary mixers restart at every document (continuing from each
document's own ``state["pos"]``). The bidirectional mode packs the same way: ``ops.gla(causal=False,
cu_seqlens=cu)`` lets each position see its own document, both ways, and nothing beyond it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from ..modules.norm import RMSNorm
from ..modules.short_conv import ShortConvolution  # noqa: F401 (the family's; re-exported)
from ..ops._varlen import lengths_from_cu_seqlens, positions_from_cu_seqlens, seq_idx_from_cu_seqlens
from ..registry import register_mixer
from .base import Mixer, State, check_float, check_int

FEATURE_MAPS = ("identity", "elu+1", "relu", "silu")


def feature_map(x: torch.Tensor, name: str) -> torch.Tensor:
    if name == "identity":
        return x
    if name == "elu+1":
        return F.elu(x) + 1.0
    if name == "relu":
        return F.relu(x)
    if name == "silu":
        return F.silu(x)
    raise ValueError(f"unknown feature map {name!r}; expected one of {FEATURE_MAPS}")


def head_split(mixer: str, what: str, total: int, n_heads: int) -> int:
    """Per-head size of a width ``total`` split over ``n_heads``; a clear error when it does not divide."""
    if total < n_heads or total % n_heads:
        raise ValueError(
            f"{mixer}: the {what} width ({total}) must be a positive multiple of n_heads ({n_heads})"
        )
    return total // n_heads


class GatedLinearAttentionMixer(Mixer):
    """Base of the mixers over ``ops.gla``. Subclasses implement ``_features`` and ``_output``."""

    # True for mixers whose features depend on the absolute position (rotary): the state carries "pos".
    uses_position = False

    def __init__(self, d_model: int, bidirectional: bool, backend: str):
        super().__init__(d_model)
        if not isinstance(bidirectional, bool):
            raise TypeError(f"{self.mixer_name}: bidirectional must be a bool, got {bidirectional!r}")
        self.bidirectional, self.backend = bidirectional, backend
        # Short convolutions by state name ("conv_q", ...); a subclass fills it before use.
        self.convs = nn.ModuleDict()

    def _set_heads(self, n_heads, key_dim: int, value_dim: int) -> None:
        """Split ``key_dim`` and ``value_dim`` over ``n_heads`` (default: one head per 64 of d_model)."""
        name = self.mixer_name
        self.n_heads = check_int(
            name, "n_heads", max(1, self.d_model // 64) if n_heads is None else n_heads, 1
        )
        self.key_dim, self.value_dim = key_dim, value_dim
        self.head_k_dim = head_split(name, "key", key_dim, self.n_heads)
        self.head_v_dim = head_split(name, "value", value_dim, self.n_heads)

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, n_heads={self.n_heads}, head_k_dim={self.head_k_dim}, "
            f"head_v_dim={self.head_v_dim}, bidirectional={self.bidirectional}"
        )

    # -- subclass hooks -------------------------------------------------------------------------------

    def _features(
        self, x: torch.Tensor, state: State | None, positions: torch.Tensor, keep_state: bool, cu_seqlens=None
    ):
        """x [B, T, D] -> (q, k, v, g, conv_states) for ops.gla; conv_states maps state names to tensors.
        ``positions`` [T] is each token's position (inside its own document when packed); ``cu_seqlens`` goes
        to every short convolution (``_qkv`` / ``_maybe_conv`` take it)."""
        raise NotImplementedError

    def _output(self, o: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """o [B, T, H, V] -> y [B, T, D]."""
        raise NotImplementedError

    # -- shared pieces for subclasses ------------------------------------------------------------------

    def _add_short_convs(self, use_short_conv: bool, conv_width: int, channels: dict[str, int]) -> None:
        """With ``use_short_conv``, a causal depthwise convolution (width ``conv_width``, SiLU) on each named
        projection ({"conv_q": key_dim, ...}): the short convolutions Zoology, GLA, DeltaNet and Based put in
        front of linear attention. Their last inputs join the decoding state."""
        name = self.mixer_name
        if not isinstance(use_short_conv, bool):
            raise TypeError(f"{name}: use_short_conv must be a bool, got {use_short_conv!r}")
        check_int(name, "conv_width", conv_width, 2, 8)
        if not use_short_conv:
            return
        if self.bidirectional:
            raise ValueError(
                f"{name}: the short convolution is causal; use use_short_conv=False with bidirectional=True"
            )
        check_int(name, "conv_width", conv_width, 2, 8)
        for conv_name, width in channels.items():
            self.convs[conv_name] = ShortConvolution(width, conv_width)

    def _maybe_conv(
        self, name: str, u: torch.Tensor, state, keep_state: bool, conv_states: dict, cu_seqlens=None
    ):
        """``u`` through short convolution ``name`` when the mixer has one, else unchanged."""
        if name not in self.convs:
            return u
        return self._conv(name, u, state, keep_state, conv_states, cu_seqlens)

    def _qkv(self, x: torch.Tensor, state, keep_state: bool, cu_seqlens=None):
        """x Wq, x Wk, x Wv [B, T, width], each through its short convolution when there is one, and the
        convolutions' decoding states (for mixers with q_proj, k_proj and v_proj)."""
        convs: dict = {}
        q = self._maybe_conv("conv_q", self.q_proj(x), state, keep_state, convs, cu_seqlens)
        k = self._maybe_conv("conv_k", self.k_proj(x), state, keep_state, convs, cu_seqlens)
        v = self._maybe_conv("conv_v", self.v_proj(x), state, keep_state, convs, cu_seqlens)
        return q, k, v, convs

    def _conv(
        self,
        name: str,
        u: torch.Tensor,
        state: State | None,
        keep_state: bool,
        conv_states: dict,
        cu_seqlens=None,
    ):
        """Short convolution ``name`` over u [B, T, C], continuing from (and recording) its decoding state.
        Packed (``cu_seqlens``): no tap reaches into the previous document; states hold a row per document."""
        y, tail = self.convs[name](
            u, None if state is None else state[name], keep_state, cu_seqlens=cu_seqlens
        )
        if keep_state:
            conv_states[name] = tail
        return y

    def _heads(self, x: torch.Tensor, head_dim: int) -> torch.Tensor:
        return x.reshape(x.shape[0], x.shape[1], self.n_heads, head_dim)

    # -- the contract ----------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
        """y [B, T, D]. ``cu_seqlens``: x [1, T, D] packs documents; y is what each document alone gives (the
        bidirectional mode sees its whole document, never the next)."""
        self.check_input(x)
        self.check_packed(x, cu_seqlens)
        positions = self._positions(x, None, cu_seqlens)
        q, k, v, g, _ = self._features(x, None, positions, False, cu_seqlens)
        o, _ = ops.gla(q, k, v, g, causal=not self.bidirectional, backend=self.backend, cu_seqlens=cu_seqlens)
        return self._output(o, x)

    def _positions(self, x: torch.Tensor, state: State | None, cu_seqlens) -> torch.Tensor:
        """Each token's position for the rotary mixers: [T] from 0 without a state; [B, T] from each row's own
        state["pos"] with one (rows may stand at different positions: a batch decoding on from a packed prefill's
        documents); packed, [T], the position inside its own document, from that document's row of state["pos"]."""
        t = x.shape[1]
        if cu_seqlens is None:
            steps = torch.arange(t, device=x.device)
            if state is not None and self.uses_position:
                return state["pos"].to(x.device)[:, None] + steps
            return steps
        cu = cu_seqlens.to(x.device)
        positions = positions_from_cu_seqlens(cu)
        if state is not None and self.uses_position:
            positions = positions + state["pos"].to(x.device)[seq_idx_from_cu_seqlens(cu)]
        return positions

    def _state_keys(self) -> tuple[str, ...]:
        return ("S", *self.convs.keys(), *(("pos",) if self.uses_position else ()))

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        # fp32 for fp32/fp16/bf16 models (fp64 for fp64), as the op returns it.
        dtype = torch.promote_types(dtype or torch.float32, torch.float32)
        state = {
            "S": torch.zeros(
                batch_size, self.n_heads, self.head_k_dim, self.head_v_dim, device=device, dtype=dtype
            )
        }
        for name, conv in self.convs.items():
            state[name] = torch.zeros(batch_size, conv.channels, conv.width - 1, device=device, dtype=dtype)
        if self.uses_position:
            state["pos"] = torch.zeros(batch_size, dtype=torch.long, device=device)
        return state

    def prefill(
        self, x: torch.Tensor, state: State | None = None, cu_seqlens: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, State]:
        """(y, state). ``cu_seqlens``: x [1, T, D] packs N documents; ``state`` (if given) and the returned
        state hold one row per document, each continuing that document alone (``step`` then decodes batch N)."""
        self.check_input(x)
        self.check_decodable()
        if cu_seqlens is not None:
            self.check_packed(x, cu_seqlens, state, self._state_keys())
        elif state is not None:
            self.check_state(state, x.shape[0], self._state_keys())
        q, k, v, g, conv_states = self._features(
            x, state, self._positions(x, state, cu_seqlens), True, cu_seqlens
        )
        o, S = ops.gla_step(
            q,
            k,
            v,
            g,
            initial_state=None if state is None else state["S"],
            backend=self.backend,
            cu_seqlens=cu_seqlens,
        )
        new_state = {"S": S, **conv_states}
        if self.uses_position:
            if cu_seqlens is None:
                rows, advance = x.shape[0], x.shape[1]
            else:  # each document moves its own position on by its own length
                advance = lengths_from_cu_seqlens(cu_seqlens.to(x.device))
                rows = advance.numel()
            start = (
                state["pos"] if state is not None else torch.zeros(rows, dtype=torch.long, device=x.device)
            )
            new_state["pos"] = start + advance
        return self._output(o, x), new_state

    def step(self, x_t: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        self.check_input(x_t, "x_t", ndim=2)
        y, state = self.prefill(x_t[:, None], state)
        return y[:, 0], state

    def state_size(self, seq_len: int) -> int:
        conv = sum(c.channels * (c.width - 1) for c in self.convs.values())
        return self.n_heads * self.head_k_dim * self.head_v_dim + conv


@register_mixer(
    "linear_attention",
    description="causal linear attention (no decay) with a feature map (identity, elu+1, relu, silu) and an "
    "output RMSNorm",
    paper="Katharopoulos et al. 2020, Transformers are RNNs; "
    "Qin et al. 2022, The Devil in Linear Transformer",
    family="gated linear attention",
    paper_settings={"use_short_conv": True},
    settings_source="Katharopoulos et al. 2020: elu+1 features; short conv as in Zoology's MQAR models",
    test_kwargs={"n_heads": 2},
    mqar_lr=1e-2,
)
class LinearAttention(GatedLinearAttentionMixer):
    def __init__(
        self,
        d_model: int,
        n_heads: int | None = None,
        expand_k: float = 1.0,
        expand_v: float = 1.0,
        feature_map: str = "elu+1",
        output_norm: bool = True,
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
        if feature_map not in FEATURE_MAPS:
            raise ValueError(
                f"linear_attention: feature_map must be one of {FEATURE_MAPS}, got {feature_map!r}"
            )
        self.feature_map = feature_map
        self.q_proj = nn.Linear(d_model, self.key_dim, bias=False)
        self.k_proj = nn.Linear(d_model, self.key_dim, bias=False)
        self.v_proj = nn.Linear(d_model, self.value_dim, bias=False)
        self.norm = RMSNorm(self.head_v_dim, eps=norm_eps) if output_norm else None
        self.o_proj = nn.Linear(self.value_dim, d_model, bias=False)

    def _features(self, x, state, positions, keep_state, cu_seqlens=None):
        q, k, v, convs = self._qkv(x, state, keep_state, cu_seqlens)
        q = feature_map(self._heads(q, self.head_k_dim), self.feature_map)
        k = feature_map(self._heads(k, self.head_k_dim), self.feature_map)
        return q, k, self._heads(v, self.head_v_dim), None, convs

    def _output(self, o, x):
        if self.norm is not None:
            o = self.norm(o)
        return self.o_proj(o.reshape(x.shape[0], x.shape[1], -1))
