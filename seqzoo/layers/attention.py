"""Softmax attention mixers: ``attention`` (MHA/GQA/MQA with RoPE and a KV cache) and ``sliding_window``
(local attention whose decoding state is a ring buffer of its window).

    q = rope(x Wq), k = rope(x Wk), v = x Wv           # q [B, T, H, Dh]; k, v [B, T, Hk, Dh]
    o = softmax(q k^T / sqrt(Dh) + mask) v              # causal; window W keeps the W most recent keys
    y = o Wo

Decoding: ``attention`` keeps every past key and value (the cache grows with the sequence); ``sliding_window``
keeps only the last W in a ring buffer, slot = position mod W, so it decodes in constant memory. RoPE is
applied before caching, so a key's slot order does not matter.

Each row of a state has its own position, ``pos`` [B] (the number of tokens it has seen). ``attention``'s
cache holds row b's keys in slots 0 .. pos[b] - 1 and zeros after them (padding up to the longest row, never
attended); ``sliding_window``'s ring puts row b's position p in slot p mod W. When every row stands at the
same position (ordinary batched decoding) a prefill or step is one attention call, as before; rows at
different positions (after a packed prefill) attend one row at a time, with the same numbers.

Packed documents (issue 27): with ``cu_seqlens`` x [1, T, d_model] holds N documents; attention is
block-diagonal (``ops.attention(..., cu_seqlens=cu)``, the window inside each document) and RoPE takes each
token's position inside its own document (``positions_from_cu_seqlens``). A packed prefill returns one state
row per document (caches padded to the longest) and continues each document from its own row.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import ops
from ..modules.rotary import apply_rotary
from ..ops._varlen import positions_from_cu_seqlens, seq_idx_from_cu_seqlens
from ..registry import LRASettings, register_mixer
from .base import Mixer, State, check_float, check_int

# The Transformer baseline as S4's repository trains it on Long Range Arena beside S4 (same depth and width as
# the task's S4 model, pre-norm LayerNorm blocks with a GELU MLP); flow-attention runs in the same block.
TRANSFORMER_LRA_BLOCK = {
    "model.block": "prenorm",
    "model.norm": "layer",
    "model.mlp": "gelu",
    "model.mlp_ratio": 2.0,
}


def _position_range(pos: torch.Tensor) -> tuple[int, int]:
    """The smallest and largest of the rows' positions (0, 0 for no rows), read in one transfer from the device."""
    if pos.numel() == 0:
        return 0, 0
    lo, hi = torch.stack(torch.aminmax(pos)).tolist()
    return lo, hi


@register_mixer(
    "attention",
    description="multi-head softmax attention with RoPE; GQA/MQA via n_kv_heads; KV-cache decoding",
    paper="Vaswani et al. 2017, Attention Is All You Need; Su et al. 2021 (RoPE); Ainslie et al. 2023 (GQA)",
    family="softmax attention",
    demo=True,
    settings_source="Vaswani et al. 2017 with RoPE; one head per 64 channels (Zoology: 1 head)",
    test_kwargs={"n_heads": 4, "n_kv_heads": 2},
    mqar_lr=3e-3,  # does not learn MQAR at 1e-2 (0.27 on the easy cell)
    lra=LRASettings(
        overrides={**TRANSFORMER_LRA_BLOCK, "optim.lr": 5e-4, "optim.weight_decay": 0.0},
        note="Transformer: pre-norm LayerNorm + GELU MLP, lr 5e-4 (LRA's own baselines use other widths and "
        "schedules per task)",
    ),
)
class Attention(Mixer):
    def __init__(
        self,
        d_model: int,
        n_heads: int | None = None,
        n_kv_heads: int | None = None,
        head_dim: int | None = None,
        rope_base: float = 10000.0,
        window: int | None = None,
        bidirectional: bool = False,
        bias: bool = False,
        rotary: bool = True,
        rotary_dim: int | None = None,
        out_bias: bool | None = None,
        backend: str = "auto",
    ):
        """``bias``: biases on the q, k, v projections (and on the output projection unless ``out_bias`` says
        otherwise; RecurrentGemma: none on q, k, v, one on the output). ``rotary_dim``: RoPE on the first
        rotary_dim channels of each head only (even, <= head_dim; RecurrentGemma: head_dim / 2), None: all."""
        super().__init__(d_model)
        if not isinstance(rotary, bool):
            raise TypeError(f"attention: rotary must be a bool, got {rotary!r}")
        if not isinstance(bias, bool) or (out_bias is not None and not isinstance(out_bias, bool)):
            raise TypeError(f"attention: bias and out_bias must be bools, got {bias!r} and {out_bias!r}")
        for arg, value in (("n_heads", n_heads), ("n_kv_heads", n_kv_heads), ("head_dim", head_dim)):
            if value is not None:
                check_int("attention", arg, value, 1)
        check_float("attention", "rope_base", rope_base, 0.0, open_low=True)
        n_heads = n_heads or max(1, d_model // 64)
        head_dim = head_dim or d_model // n_heads
        n_kv_heads = n_kv_heads or n_heads
        if n_heads < 1 or n_heads % n_kv_heads != 0:
            raise ValueError(
                f"attention: n_heads ({n_heads}) must be a positive multiple of n_kv_heads ({n_kv_heads})"
            )
        if head_dim < 1 or (rotary and head_dim % 2):
            raise ValueError(f"attention: head_dim must be even and >= 2 for RoPE, got {head_dim}")
        if window is not None and (not isinstance(window, int) or window < 1):
            raise ValueError(f"attention: window must be a positive int or None, got {window!r}")
        if rotary_dim is not None:
            check_int("attention", "rotary_dim", rotary_dim, 2)
            if rotary_dim % 2 or rotary_dim > head_dim or not rotary:
                raise ValueError(
                    f"attention: rotary_dim must be even, <= head_dim ({head_dim}) and need rotary=True, "
                    f"got {rotary_dim!r}"
                )
        # None: every channel rotates (the same as rotary_dim = head_dim).
        self.rotary_dim = rotary_dim
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, head_dim
        # rotary=False leaves positions to the model (learned absolute embeddings, Zoology's protocol).
        self.rotary = rotary
        self.rope_base, self.window, self.bidirectional, self.backend = (
            rope_base,
            window,
            bidirectional,
            backend,
        )
        self.q_proj = nn.Linear(d_model, n_heads * head_dim, bias=bias)
        self.kv_proj = nn.Linear(d_model, 2 * n_kv_heads * head_dim, bias=bias)
        self.o_proj = nn.Linear(n_heads * head_dim, d_model, bias=bias if out_bias is None else out_bias)

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, n_heads={self.n_heads}, n_kv_heads={self.n_kv_heads}, "
            f"head_dim={self.head_dim}, window={self.window}, bidirectional={self.bidirectional}, "
            f"rotary={self.rotary}" + (f", rotary_dim={self.rotary_dim}" if self.rotary_dim else "")
        )

    def _project(self, x: torch.Tensor, positions: torch.Tensor):
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.n_heads, self.head_dim)
        k, v = self.kv_proj(x).view(b, t, 2, self.n_kv_heads, self.head_dim).unbind(2)
        if not self.rotary:
            return q, k, v
        rot = self.rotary_dim
        return (
            apply_rotary(q, positions, self.rope_base, rot),
            apply_rotary(k, positions, self.rope_base, rot),
            v,
        )

    def _attention(self, q, k, v, causal: bool, window, cu_seqlens=None):
        return ops.attention(
            q, k, v, causal=causal, window=window, backend=self.backend, cu_seqlens=cu_seqlens
        )

    def _out(self, o: torch.Tensor) -> torch.Tensor:
        return self.o_proj(o.reshape(o.shape[0], o.shape[1], -1))

    def forward(self, x: torch.Tensor, cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
        """``cu_seqlens`` (int32 [N + 1]): x [1, T, d_model] packs N documents; no token attends across a
        boundary and RoPE counts positions from each document's start, so each is mixed as if alone."""
        self.check_input(x)
        self.check_packed(x, cu_seqlens)
        if cu_seqlens is None:
            positions = torch.arange(x.shape[1], device=x.device)
        else:
            positions = positions_from_cu_seqlens(cu_seqlens.to(x.device))
        q, k, v = self._project(x, positions)
        return self._out(self._attention(q, k, v, not self.bidirectional, self.window, cu_seqlens))

    # -- decoding: a growing KV cache ------------------------------------------------------------------

    _state_keys = ("k", "v", "pos")

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        dtype = dtype or self.o_proj.weight.dtype
        empty = torch.zeros(batch_size, 0, self.n_kv_heads, self.head_dim, device=device, dtype=dtype)
        return {
            "k": empty,
            "v": empty.clone(),
            "pos": torch.zeros(batch_size, dtype=torch.long, device=device),
        }

    def _start(self, state: State | None, x: torch.Tensor) -> State:
        if state is None:
            return self.init_state(x.shape[0], device=x.device, dtype=x.dtype)
        self.check_state(state, x.shape[0], self._state_keys)
        return state

    def _common_start(self, state: State) -> int | None:
        """The position every row stands at, when they all stand at the same one and the cache holds exactly
        that many keys (no padding): then the whole batch continues in one call. None otherwise."""
        lo, hi = _position_range(state["pos"])
        if hi > state["k"].shape[1]:
            raise ValueError(
                f"{self.mixer_name}: state['k'] holds {state['k'].shape[1]} keys per row but state['pos'] reaches "
                f"{hi}; build the state with init_state() or prefill()"
            )
        return lo if lo == hi == state["k"].shape[1] else None

    def _continue(self, q, k, v, cache_k, cache_v, start: int, attend: bool = True):
        """Rows that all stand at position ``start`` (their keys in cache slots 0 .. start - 1) take the new
        q, k, v [b, t, ...]: the attention output (None unless ``attend``) and the caches holding all their keys."""
        k_all = torch.cat([cache_k[:, :start], k.to(cache_k.dtype)], dim=1)
        v_all = torch.cat([cache_v[:, :start], v.to(cache_v.dtype)], dim=1)
        o = self._attention(q, k_all.to(q.dtype), v_all.to(q.dtype), True, self.window) if attend else None
        return o, k_all, v_all

    @staticmethod
    def _stack_rows(rows: list[torch.Tensor]) -> torch.Tensor:
        """Rows [1, L_n, ...] as one [N, max L_n, ...], each padded with zeros after its own keys."""
        longest = max(r.shape[1] for r in rows)
        padded = [torch.cat([r, r.new_zeros(1, longest - r.shape[1], *r.shape[2:])], dim=1) for r in rows]
        return torch.cat(padded)

    def prefill(
        self, x: torch.Tensor, state: State | None = None, cu_seqlens: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, State]:
        """``cu_seqlens``: x [1, T, d_model] packs N documents; ``state`` (if given) and the returned state hold
        one row per document, each document continuing from its row's position (caches padded to the longest
        row; the padding is never attended)."""
        self.check_input(x)
        self.check_decodable()
        bounds = self.check_packed(x, cu_seqlens, state, self._state_keys)
        t = x.shape[1]
        if bounds is None:
            state = self._start(state, x)
            start = self._common_start(state)
            if start is not None:  # every row at the same position: one call for the batch
                q, k, v = self._project(x, torch.arange(start, start + t, device=x.device))
                o, new_k, new_v = self._continue(q, k, v, state["k"], state["v"], start)
                return self._out(o), {"k": new_k, "v": new_v, "pos": state["pos"] + t}
            # Rows at different positions (a packed prefill's states): RoPE at each row's own positions.
            positions = state["pos"].to(x.device)[:, None] + torch.arange(t, device=x.device)
            spans = [(n, n + 1, 0, t) for n in range(x.shape[0])]
            fresh = False
        else:
            fresh = state is None
            state = self.init_state(len(bounds) - 1, device=x.device, dtype=x.dtype) if fresh else state
            # Each token at its position inside its document, after what its document's row has seen.
            cu = cu_seqlens.to(x.device)
            positions = positions_from_cu_seqlens(cu) + state["pos"].to(x.device)[seq_idx_from_cu_seqlens(cu)]
            spans = [(0, 1, s, e) for s, e in zip(bounds[:-1], bounds[1:])]
        q, k, v = self._project(x, positions)
        # From no state the documents attend in one packed call (block-diagonal); the rows below only build caches.
        attend = not fresh
        outs, ks, vs = [], [], []
        for n, ((b0, b1, s, e), start) in enumerate(zip(spans, state["pos"].tolist())):
            rows = (slice(b0, b1), slice(s, e))
            past_k, past_v = state["k"][n : n + 1], state["v"][n : n + 1]
            o, k_n, v_n = self._continue(q[rows], k[rows], v[rows], past_k, past_v, start, attend)
            outs.append(o)
            ks.append(k_n)
            vs.append(v_n)
        if not attend:
            o = self._attention(q, k, v, True, self.window, cu_seqlens)
        else:
            o = torch.cat(outs, dim=0 if bounds is None else 1)
        lengths = torch.tensor([e - s for _, _, s, e in spans], device=state["pos"].device)
        new = {"k": self._stack_rows(ks), "v": self._stack_rows(vs), "pos": state["pos"] + lengths}
        return self._out(o), new

    def step(self, x_t: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        self.check_input(x_t, "x_t", ndim=2)
        y, state = self.prefill(x_t[:, None], state)
        return y[:, 0], state

    def state_size(self, seq_len: int) -> int:
        return 2 * seq_len * self.n_kv_heads * self.head_dim


@register_mixer(
    "sliding_window",
    description="local (sliding-window) softmax attention with RoPE; decodes from a ring buffer of its window",
    paper="Beltagy et al. 2020, Longformer; De et al. 2024, Griffin (local MQA)",
    family="local attention",
    demo=True,
    settings_source="Beltagy et al. 2020; the window is the task's knob (state = 2 W d)",
    test_kwargs={"n_heads": 2, "window": 5},
    mqar_lr=3e-3,  # does not learn MQAR at 1e-2 (0.13 on the easy cell)
)
class SlidingWindowAttention(Attention):
    def __init__(self, d_model: int, window: int = 128, **kwargs):
        if not isinstance(window, int) or window < 1:
            raise ValueError(f"sliding_window: window must be a positive int, got {window!r}")
        super().__init__(d_model, window=window, **kwargs)

    # -- decoding: a ring buffer of the last `window` keys and values ----------------------------------

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        dtype = dtype or self.o_proj.weight.dtype
        shape = (batch_size, self.window, self.n_kv_heads, self.head_dim)
        return {
            "k": torch.zeros(shape, device=device, dtype=dtype),
            "v": torch.zeros(shape, device=device, dtype=dtype),
            "pos": torch.zeros(batch_size, dtype=torch.long, device=device),
        }

    def _common_start(self, state: State) -> int | None:
        lo, hi = _position_range(state["pos"])
        return lo if lo == hi else None

    def _continue(self, q, k, v, ring_k, ring_v, start: int, attend: bool = True):
        """Rows that all stand at position ``start`` (position p in ring slot p mod W) take the new q, k, v."""
        t, w = q.shape[1], self.window
        # Unroll the ring into time order (oldest first): the valid past keys, then the new ones.
        n_past = min(start, w)
        order = torch.arange(start - n_past, start, device=q.device) % w
        k_all = torch.cat([ring_k[:, order].to(k.dtype), k], dim=1)
        v_all = torch.cat([ring_v[:, order].to(v.dtype), v], dim=1)
        o = self._attention(q, k_all, v_all, True, w) if attend else None
        # Write the last min(T + n_past, W) positions back to their slots.
        keep = min(n_past + t, w)
        slots = torch.arange(start + t - keep, start + t, device=q.device) % w
        new_k, new_v = ring_k.clone(), ring_v.clone()
        new_k[:, slots] = k_all[:, -keep:].to(new_k.dtype)
        new_v[:, slots] = v_all[:, -keep:].to(new_v.dtype)
        return o, new_k, new_v

    def state_size(self, seq_len: int) -> int:
        return 2 * self.window * self.n_kv_heads * self.head_dim
