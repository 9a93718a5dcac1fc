"""Softmax attention mixers: ``attention`` (MHA/GQA/MQA with RoPE and a KV cache) and ``sliding_window``
(local attention whose decoding state is a ring buffer of its window).

    q = rope(x Wq), k = rope(x Wk), v = x Wv           # q [B, T, H, Dh]; k, v [B, T, Hk, Dh]
    o = softmax(q k^T / sqrt(Dh) + mask) v              # causal; window W keeps the W most recent keys
    y = o Wo

Decoding: ``attention`` keeps every past key and value (the cache grows with the sequence); ``sliding_window``
keeps only the last W in a ring buffer, slot = position mod W, so it decodes in constant memory. RoPE is
applied before caching, so a key's slot order does not matter.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import ops
from ..modules.rotary import apply_rotary
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
        backend: str = "auto",
    ):
        super().__init__(d_model)
        if not isinstance(rotary, bool):
            raise TypeError(f"attention: rotary must be a bool, got {rotary!r}")
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
        self.o_proj = nn.Linear(n_heads * head_dim, d_model, bias=bias)

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, n_heads={self.n_heads}, n_kv_heads={self.n_kv_heads}, "
            f"head_dim={self.head_dim}, window={self.window}, bidirectional={self.bidirectional}, "
            f"rotary={self.rotary}"
        )

    def _project(self, x: torch.Tensor, positions: torch.Tensor):
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.n_heads, self.head_dim)
        k, v = self.kv_proj(x).view(b, t, 2, self.n_kv_heads, self.head_dim).unbind(2)
        if not self.rotary:
            return q, k, v
        return apply_rotary(q, positions, self.rope_base), apply_rotary(k, positions, self.rope_base), v

    def _attend(self, q, k, v, causal: bool, window):
        o = ops.attention(q, k, v, causal=causal, window=window, backend=self.backend)
        return self.o_proj(o.reshape(q.shape[0], q.shape[1], -1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        q, k, v = self._project(x, torch.arange(x.shape[1], device=x.device))
        return self._attend(q, k, v, not self.bidirectional, self.window)

    # -- decoding: a growing KV cache ------------------------------------------------------------------

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
        self.check_state(state, x.shape[0], ("k", "v", "pos"))
        return state

    def prefill(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        self.check_input(x)
        self.check_decodable()
        state = self._start(state, x)
        start = int(state["pos"][0])
        t = x.shape[1]
        q, k, v = self._project(x, torch.arange(start, start + t, device=x.device))
        k_all = torch.cat([state["k"], k.to(state["k"].dtype)], dim=1)
        v_all = torch.cat([state["v"], v.to(state["v"].dtype)], dim=1)
        y = self._attend(q, k_all.to(q.dtype), v_all.to(q.dtype), True, self.window)
        return y, {"k": k_all, "v": v_all, "pos": state["pos"] + t}

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

    def prefill(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        self.check_input(x)
        self.check_decodable()
        state = self._start(state, x)
        start = int(state["pos"][0])
        t, w = x.shape[1], self.window
        q, k, v = self._project(x, torch.arange(start, start + t, device=x.device))
        # Unroll the ring into time order (oldest first): the valid past keys, then the new ones.
        n_past = min(start, w)
        order = torch.arange(start - n_past, start, device=x.device) % w
        k_all = torch.cat([state["k"][:, order].to(k.dtype), k], dim=1)
        v_all = torch.cat([state["v"][:, order].to(v.dtype), v], dim=1)
        y = self._attend(q, k_all, v_all, True, w)
        # Write the last min(T + n_past, W) positions back to their slots.
        keep = min(n_past + t, w)
        slots = torch.arange(start + t - keep, start + t, device=x.device) % w
        new_k, new_v = state["k"].clone(), state["v"].clone()
        new_k[:, slots] = k_all[:, -keep:].to(new_k.dtype)
        new_v[:, slots] = v_all[:, -keep:].to(new_v.dtype)
        return y, {"k": new_k, "v": new_v, "pos": state["pos"] + t}

    def state_size(self, seq_len: int) -> int:
        return 2 * self.window * self.n_kv_heads * self.head_dim
