"""``liger``: Liger Attention, an intra-layer hybrid of gated linear attention and sliding-window softmax
attention on ONE set of attention projections (Lan et al. 2025), and :class:`AttentionHybridMixer`, the
base it shares with ``lizard``.

    q = x Wq ;  [k, v] = x Wkv                         # q [B, T, H, Dh]; k, v [B, T, Hk, Dh]: Attention's own
    # gated linear attention (no RoPE), k, v and the gate repeated over the H / Hk query heads of a group:
    q' = softmax_Dh(q), k' = softmax_Dh(k), g = logsigmoid(k) / 16        # g: log decay per key channel
    S_t = diag(exp g_t) S_{t-1} + k'_t^T v_t ;  o_gla_t = q'_t S_t         # S [B, H, Dh, Dh]; scale 1
    # sliding-window softmax attention over the W most recent positions (itself included), with RoPE:
    o_swa = softmax(rope(q) rope(k)^T / sqrt(Dh) + window mask) v
    y = (0.5 o_gla + 0.5 o_swa) Wo

Liger adds no parameter: the decay gate is "pooled" from the key projection (the reference's
``AdaptiveAvgPool1d`` to the key width itself is the identity, so g = logsigmoid(x Wk) / 16, GLA's
normaliser 16), and the feature map is a softmax over each head's channels, so a trained attention layer's
q/k/v/o weights serve both branches as they are. :meth:`AttentionHybridMixer.from_attention` builds the
mixer from an :class:`~seqzoo.layers.attention.Attention` and copies them (``q_proj``, ``kv_proj``,
``o_proj``: the same names and shapes, GQA included).

Follows OpenSparseLLMs/Linearization (``liger_gla``: ``LigerGatedLinearAttention``): softmax feature maps
on q and k, g = logsigmoid(pool(k)) / 16, ``chunk_gla`` with scale 1 and no normaliser, flash-attn with
window (W - 1, 0), output 0.5 y_swa + 0.5 o_gla, no output norm; window 64 as in the paper. The weights are
arguments here (``gla_weight``, ``swa_weight``, 0.5 each by default).

Decoding: the state is S (fp32, fp64 for fp64 models), the last W rotated keys and values in time order
(``k``, ``v`` [B, W, Hk, Dh], oldest first; slots before the first token are zeros and never attended) and a
position counter per row (``pos`` [B]), so memory is constant: H Dh^2 + 2 W Hk Dh numbers per sequence. A
batch whose rows all stand at one position continues in one call; rows at different positions (after a
packed prefill) take their window branch one row at a time, with the same numbers.

Packed documents (issue 27, ``cu_seqlens``: x [1, T, d_model] holds N documents): the GLA branch runs
``ops.gla`` / ``ops.gla_step`` with ``cu_seqlens`` (a state per document), the window branch attends inside
each document with RoPE at each token's position in its own document, and a packed prefill returns (and
continues from) one state row per document.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from ..modules.rotary import apply_rotary
from ..ops._varlen import positions_from_cu_seqlens, seq_idx_from_cu_seqlens
from ..registry import register_mixer
from .attention import Attention, _position_range
from .base import Mixer, State, check_float, check_int


class AttentionHybridMixer(Mixer):
    """Attention's projections feeding a gated-linear-attention branch (``ops.gla``) and a sliding-window
    softmax branch, mixed per head before ``o_proj``. Subclasses implement the hooks below; the base does the
    projections, RoPE, the GLA state, the window of past keys/values, decoding and :meth:`from_attention`."""

    # Keyword arguments from_attention takes from the source attention (besides its shape and bias).
    _inherited_from_attention: tuple[str, ...] = ()

    def __init__(
        self,
        d_model: int,
        n_heads: int | None,
        n_kv_heads: int | None,
        head_dim: int | None,
        window: int,
        rope_base: float,
        rotary: bool,
        bias: bool,
        backend: str,
    ):
        super().__init__(d_model)
        name = self.mixer_name
        n_heads = max(1, d_model // 64) if n_heads is None else n_heads
        check_int(name, "n_heads", n_heads, 1)
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        check_int(name, "n_kv_heads", n_kv_heads, 1)
        if n_heads % n_kv_heads:
            raise ValueError(f"{name}: n_heads ({n_heads}) must be a multiple of n_kv_heads ({n_kv_heads})")
        if head_dim is None:
            if d_model % n_heads:
                raise ValueError(
                    f"{name}: d_model ({d_model}) must be a multiple of n_heads ({n_heads}), or give head_dim"
                )
            head_dim = d_model // n_heads
        check_int(name, "head_dim", head_dim, 1)
        check_int(name, "window", window, 1)
        for arg, value in (("rotary", rotary), ("bias", bias)):
            if not isinstance(value, bool):
                raise TypeError(f"{name}: {arg} must be a bool, got {value!r}")
        if rotary and head_dim % 2:
            raise ValueError(f"{name}: head_dim must be even for RoPE, got {head_dim} (or rotary=False)")
        self.rope_base = check_float(name, "rope_base", rope_base, 0.0, open_low=True)
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, head_dim
        self.window, self.rotary, self.backend = window, rotary, backend
        # The same names and shapes as Attention's, so that its weights load as they are.
        self.q_proj = nn.Linear(d_model, n_heads * head_dim, bias=bias)
        self.kv_proj = nn.Linear(d_model, 2 * n_kv_heads * head_dim, bias=bias)
        self.o_proj = nn.Linear(n_heads * head_dim, d_model, bias=bias)

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, n_heads={self.n_heads}, n_kv_heads={self.n_kv_heads}, "
            f"head_dim={self.head_dim}, window={self.window}, rotary={self.rotary}"
        )

    # -- subclass hooks -------------------------------------------------------------------------------

    # The GLA state's per-head sizes: S [B, H, gla_k_dim, gla_v_dim].
    gla_k_dim: int
    gla_v_dim: int

    def _gla_inputs(self, x, q, k, v):
        """x [B, T, D], q [B, T, H, Dh], k, v [B, T, Hk, Dh] (before RoPE) -> (q, k, v, g) for ops.gla."""
        raise NotImplementedError

    def _gla_output(self, o: torch.Tensor) -> torch.Tensor:
        """ops.gla's output -> o_gla [B, T, H, Dh]."""
        return o

    def _window_attention(self, q, k, v, cu_seqlens=None) -> torch.Tensor:
        """Causal softmax attention of q [B, Tq, H, Dh] (the last Tq positions) over k, v [B, Tk, Hk, Dh],
        each query seeing the ``window`` most recent positions; with ``cu_seqlens`` (Tq = Tk, batch 1) only
        those of its own document."""
        raise NotImplementedError

    def _mix(self, o_gla: torch.Tensor, o_swa: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # -- shared pieces ----------------------------------------------------------------------------------

    def _repeat_kv(self, u: torch.Tensor) -> torch.Tensor:
        """[B, T, Hk, ...] -> [B, T, H, ...]: query head h reads key/value head h // (H / Hk), as ops.attention."""
        group = self.n_heads // self.n_kv_heads
        return u if group == 1 else u.repeat_interleave(group, dim=2)

    def _project(self, x: torch.Tensor):
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.n_heads, self.head_dim)
        k, v = self.kv_proj(x).view(b, t, 2, self.n_kv_heads, self.head_dim).unbind(2)
        return q, k, v

    def _rope(self, q, k, positions):
        if not self.rotary:
            return q, k
        return apply_rotary(q, positions, self.rope_base), apply_rotary(k, positions, self.rope_base)

    def _gla(self, x, q, k, v, initial_state, backend, cu_seqlens=None):
        """The GLA branch; with ``initial_state`` (decoding) from that state through ``ops.gla_step``. With
        ``cu_seqlens`` the op keeps the documents apart (``initial_state`` and S one row per document)."""
        qg, kg, vg, g = self._gla_inputs(x, q, k, v)
        if initial_state is None:
            o, S = ops.gla(qg, kg, vg, g, scale=1.0, backend=backend, cu_seqlens=cu_seqlens)
        else:
            o, S = ops.gla_step(
                qg, kg, vg, g, scale=1.0, initial_state=initial_state, backend=backend, cu_seqlens=cu_seqlens
            )
        return self._gla_output(o), S

    def _output(self, o_gla, o_swa, x):
        o = self._mix(o_gla, o_swa.to(o_gla.dtype))
        return self.o_proj(o.reshape(x.shape[0], x.shape[1], -1))

    # -- the contract ----------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
        """``cu_seqlens`` (int32 [N + 1]): x [1, T, d_model] packs N documents, each mixed as if alone (both
        branches keep the documents apart; RoPE counts from each document's start)."""
        self.check_input(x)
        self.check_packed(x, cu_seqlens)
        q, k, v = self._project(x)
        o_gla, _ = self._gla(x, q, k, v, None, self.backend, cu_seqlens)
        if cu_seqlens is None:
            positions = torch.arange(x.shape[1], device=x.device)
        else:
            positions = positions_from_cu_seqlens(cu_seqlens.to(x.device))
        q, k = self._rope(q, k, positions)
        return self._output(o_gla, self._window_attention(q, k, v, cu_seqlens), x)

    _state_keys = ("S", "k", "v", "pos")

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        dtype = dtype or self.o_proj.weight.dtype
        # S in fp32 (fp64 for fp64 models), as ops.gla returns it; the window in the model's dtype.
        s_dtype = torch.promote_types(dtype, torch.float32)
        window = (batch_size, self.window, self.n_kv_heads, self.head_dim)
        return {
            "S": torch.zeros(
                batch_size, self.n_heads, self.gla_k_dim, self.gla_v_dim, device=device, dtype=s_dtype
            ),
            "k": torch.zeros(window, device=device, dtype=dtype),
            "v": torch.zeros(window, device=device, dtype=dtype),
            "pos": torch.zeros(batch_size, dtype=torch.long, device=device),
        }

    def _continue_window(self, q, k, v, win_k, win_v, start: int, attend: bool = True):
        """Rows that all stand at position ``start`` take the new (rotated) q, k, v [b, t, ...]: the window
        branch's output (None unless ``attend``) and the new windows (the last W keys, oldest first)."""
        w = self.window
        # The valid past keys are the last min(start, W) slots of the time-ordered window.
        n_past = min(start, w)
        k_all = torch.cat([win_k[:, w - n_past :].to(k.dtype), k], dim=1)
        v_all = torch.cat([win_v[:, w - n_past :].to(v.dtype), v], dim=1)
        o = self._window_attention(q, k_all, v_all) if attend else None
        new_k = torch.cat([win_k, k.to(win_k.dtype)], dim=1)[:, -w:]
        new_v = torch.cat([win_v, v.to(win_v.dtype)], dim=1)[:, -w:]
        return o, new_k, new_v

    def prefill(
        self, x: torch.Tensor, state: State | None = None, cu_seqlens: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, State]:
        """``cu_seqlens``: x [1, T, d_model] packs N documents; ``state`` (if given) and the returned state hold
        one row per document, each continuing from its own position."""
        self.check_input(x)
        self.check_decodable()
        bounds = self.check_packed(x, cu_seqlens, state, self._state_keys)
        fresh = state is None
        if fresh:
            rows = x.shape[0] if bounds is None else len(bounds) - 1
            state = self.init_state(rows, device=x.device, dtype=x.dtype)
        elif bounds is None:
            self.check_state(state, x.shape[0], self._state_keys)
        t, pos = x.shape[1], state["pos"]
        q, k, v = self._project(x)
        o_gla, S = self._gla(x, q, k, v, state["S"], self.backend, cu_seqlens)
        if bounds is None:
            start, last = _position_range(pos)
            if start == last:  # every row at one position: one call for the batch, as before
                q, k = self._rope(q, k, torch.arange(start, start + t, device=x.device))
                o_swa, new_k, new_v = self._continue_window(q, k, v, state["k"], state["v"], start)
                return self._output(o_gla, o_swa, x), {"S": S, "k": new_k, "v": new_v, "pos": pos + t}
            # Rows at different positions (a packed prefill's states): RoPE at each row's own positions.
            positions = pos.to(x.device)[:, None] + torch.arange(t, device=x.device)
            spans = [(n, n + 1, 0, t) for n in range(x.shape[0])]
        else:
            cu = cu_seqlens.to(x.device)
            positions = positions_from_cu_seqlens(cu) + pos.to(x.device)[seq_idx_from_cu_seqlens(cu)]
            spans = [(0, 1, s, e) for s, e in zip(bounds[:-1], bounds[1:])]
        q, k = self._rope(q, k, positions)
        # From no state the documents attend in one packed call; the rows below then only build windows.
        attend = not (fresh and bounds is not None)
        outs, ks, vs = [], [], []
        for n, ((b0, b1, s, e), start) in enumerate(zip(spans, pos.tolist())):
            rows = (slice(b0, b1), slice(s, e))
            past_k, past_v = state["k"][n : n + 1], state["v"][n : n + 1]
            o, k_n, v_n = self._continue_window(q[rows], k[rows], v[rows], past_k, past_v, start, attend)
            outs.append(o)
            ks.append(k_n)
            vs.append(v_n)
        if attend:
            o_swa = torch.cat(outs, dim=0 if bounds is None else 1)
        else:
            o_swa = self._window_attention(q, k, v, cu_seqlens)
        lengths = torch.tensor([e - s for _, _, s, e in spans], device=pos.device)
        new = {"S": S, "k": torch.cat(ks), "v": torch.cat(vs), "pos": pos + lengths}
        return self._output(o_gla, o_swa, x), new

    def step(self, x_t: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        self.check_input(x_t, "x_t", ndim=2)
        y, state = self.prefill(x_t[:, None], state)
        return y[:, 0], state

    def state_size(self, seq_len: int) -> int:
        return (
            self.n_heads * self.gla_k_dim * self.gla_v_dim + 2 * self.window * self.n_kv_heads * self.head_dim
        )

    # -- linearization ---------------------------------------------------------------------------------

    @classmethod
    def from_attention(cls, attn: Attention, **kwargs):
        """This mixer with ``attn``'s width, heads, kv-heads, head size, RoPE base and bias, and its
        ``q_proj`` / ``kv_proj`` / ``o_proj`` weights copied (on its device, in its dtype); ``kwargs`` set the
        rest (window, ...). A windowed source attention gives its window unless ``window`` is given."""
        name = cls.mixer_name
        if not isinstance(attn, Attention):
            raise TypeError(f"{name}.from_attention: attn must be an Attention, got {type(attn).__name__}")
        if attn.bidirectional:
            raise ValueError(f"{name}.from_attention: attn is bidirectional; {name} is causal")
        shape = {
            "n_heads": attn.n_heads,
            "n_kv_heads": attn.n_kv_heads,
            "head_dim": attn.head_dim,
            "bias": attn.q_proj.bias is not None,
        }
        for key, value in shape.items():
            if key in kwargs and kwargs[key] != value:
                raise ValueError(
                    f"{name}.from_attention: {key}={kwargs[key]!r} differs from the attention's {value!r}; "
                    "the copied weights fix it"
                )
        config = {**shape, "rope_base": attn.rope_base}
        if attn.window is not None:
            config["window"] = attn.window
        inherited = {"rotary": attn.rotary, "attention_backend": attn.backend}
        config.update({k: inherited[k] for k in cls._inherited_from_attention})
        config.update(kwargs)
        weight = attn.o_proj.weight
        mixer = cls(attn.d_model, **config).to(device=weight.device, dtype=weight.dtype)
        for proj in ("q_proj", "kv_proj", "o_proj"):
            getattr(mixer, proj).load_state_dict(getattr(attn, proj).state_dict())
        return mixer


@register_mixer(
    "liger",
    description="Liger attention: 0.5 gated linear attention (softmax feature maps, gate pooled from the keys, "
    "no new parameters) + 0.5 sliding-window softmax attention on one set of q/k/v/o projections",
    paper="Lan et al. 2025, Liger: Linearizing Large Language Models to Gated Recurrent Structures",
    family="gated linear attention",
    settings_source="Lan et al. 2025: softmax feature maps, gate logsigmoid(k)/16 (no new parameters), window 64, "
    "0.5 GLA + 0.5 SWA",
    test_kwargs={"n_heads": 4, "n_kv_heads": 2, "window": 5},
    mqar_lr=3e-3,  # softmax attention over its window does not learn MQAR at 1e-2 (0.26), as attention
)
class Liger(AttentionHybridMixer):
    _inherited_from_attention = ("rotary", "attention_backend")

    def __init__(
        self,
        d_model: int,
        n_heads: int | None = None,
        n_kv_heads: int | None = None,
        head_dim: int | None = None,
        window: int = 64,
        gla_weight: float = 0.5,
        swa_weight: float = 0.5,
        gate_normalizer: float = 16.0,
        rope_base: float = 10000.0,
        rotary: bool = True,
        bias: bool = False,
        backend: str = "auto",
        attention_backend: str = "auto",
    ):
        super().__init__(d_model, n_heads, n_kv_heads, head_dim, window, rope_base, rotary, bias, backend)
        self.gla_weight = check_float("liger", "gla_weight", gla_weight)
        self.swa_weight = check_float("liger", "swa_weight", swa_weight)
        self.gate_normalizer = check_float("liger", "gate_normalizer", gate_normalizer, 0.0, open_low=True)
        self.attention_backend = attention_backend
        self.gla_k_dim = self.gla_v_dim = self.head_dim

    def extra_repr(self) -> str:
        return super().extra_repr() + f", gla_weight={self.gla_weight}, swa_weight={self.swa_weight}"

    def _gla_inputs(self, x, q, k, v):
        dt = torch.promote_types(q.dtype, torch.float32)
        # Softmax over each head's channels (in fp32 for half-precision models, as the reference does).
        qg = torch.softmax(q.to(dt), dim=-1).to(q.dtype)
        kg = torch.softmax(k.to(dt), dim=-1).to(k.dtype)
        # The gate is the key projection itself: no parameter of its own. Dividing by 16 keeps the decays near 1.
        g = F.logsigmoid(k.to(dt)) / self.gate_normalizer
        return qg, self._repeat_kv(kg), self._repeat_kv(v), self._repeat_kv(g)

    def _window_attention(self, q, k, v, cu_seqlens=None):
        return ops.attention(
            q, k, v, causal=True, window=self.window, backend=self.attention_backend, cu_seqlens=cu_seqlens
        )

    def _mix(self, o_gla, o_swa):
        return self.gla_weight * o_gla + self.swa_weight * o_swa
