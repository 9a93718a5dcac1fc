"""``combiner``: Combiner attention (Ren et al. 2021, "Combiner: Full Attention Transformer with Sparse Computation
Cost", NeurIPS): every past position keeps probability > 0, at O(T sqrt T) cost.

    q = rope(x Wq), k = rope(x Wk), v = x Wv                 # [B, T, H, Dh]
    o = ops.combiner(q, k, v, segment=s, variant=...)         # one joint softmax: own segment + abstractions
    y = o Wo

Positions are cut into segments of s tokens (``segment``; default ceil(sqrt(l_max)), the sequence length the
layer is built for). A query attends exactly to its own segment (j <= i) and, in the same softmax, to one
abstraction per earlier segment, which spreads its probability over that segment's tokens:
``variant="fixed"`` (max-pooled key; value = the segment's attention from its max-pooled query) or
``variant="axial"`` (segments are rows: from column c, the key k_(r, c) and the complete row-r attention output
at (r, c)). Equations and shapes in :mod:`seqzoo.ops.combiner`. ``bidirectional=True``: the own segment in full
and every other segment's abstraction (no decoding).

Decoding keeps the current segment's keys and values (s each) and one summary per finished segment:
fixed, the running max of the segment's queries [H, Dh] and a (key, value) per finished segment, so
2 s + 1 + 2 floor(T / s) vectors per head, O(s + T / s); axial, the current row's queries too and, per finished
row, a (key, value) for each of its s columns (a query at column c will read column c of every row): 3 s +
2 s floor(T / s) vectors, O(T) like a KV cache (a later query at column c reads column c of every finished row,
and which column comes next is not known in advance, so every column's key and row-attention output is kept;
an O(s + T / s) axial state would need a summary per row, the reference code's other ``row_summary`` options, which
this variant, ``row_summary = none``, does not use). A
segment's summary is made when its last token arrives and is used only by later segments, so step == forward
exactly. ``prefill`` from the empty state runs the prompt in parallel (``ops.combiner``, then the state from the
same summaries: :func:`seqzoo.ops.combiner.step.state_from_prefix`); from a later state it, and ``step``, run
``ops.combiner_step`` token by token. Both use the layer's ``backend``.

State: {"q", "k", "v": the current segment (zeros after its pos mod s tokens; fixed's "q" [B, 1, H, Dh] is the
running max), "sk", "sv": summaries [B, n, H, Dh] (axial [B, n, s, H, Dh]), n = the most finished segments of any
row (zeros after a row's own pos // s), "pos" [B]}. Packed documents (``cu_seqlens``): each document runs alone
(its segments and RoPE positions from its own start); a packed prefill returns one state row per document.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import ops
from ..modules.rotary import apply_rotary
from ..ops._varlen import positions_from_cu_seqlens, seq_idx_from_cu_seqlens
from ..ops.combiner.reference import VARIANTS, default_segment
from ..ops.combiner.step import init_state, state_from_prefix
from ..registry import LRASettings, register_mixer
from .attention import TRANSFORMER_LRA_BLOCK
from .base import Mixer, State, check_bool, check_float, check_int


@register_mixer(
    "combiner",
    description="Combiner: softmax attention with full support at O(T sqrt T) cost (own segment exactly, one "
    "joint-softmax abstraction per earlier segment); variants fixed and axial",
    paper="Ren, Dai, Dai, Yang, Leskovec, Schuurmans, Dai 2021, Combiner: Full Attention Transformer with Sparse "
    "Computation Cost (NeurIPS)",
    family="softmax attention",
    settings_source="Ren et al. 2021, Wiki-40B LM config (12 heads of 64, max_seg_len 128 at seq 2048, "
    "identity-max pooling) scaled: one head per 64 channels, segment ceil(sqrt(seq_len)), RoPE for positions",
    seq_len_kwarg="l_max",
    test_kwargs={"n_heads": 2, "segment": 3},
    # Probe, seed 0: easy cell 0.384 (3e-3) vs 0.459 (1e-2), hard cell 0.166 vs 0.066: 3e-3, as attention.
    mqar_lr=3e-3,
    lra=LRASettings(
        overrides={**TRANSFORMER_LRA_BLOCK, "optim.lr": 5e-4, "optim.weight_decay": 0.0},
        note="Combiner-Fixed in the Transformer baseline's block and optimiser (pre-norm LayerNorm + GELU MLP, "
        "lr 5e-4); not the paper's LRA hyperparameters, which are not transcribed here",
    ),
)
class Combiner(Mixer):
    def __init__(
        self,
        d_model: int,
        n_heads: int | None = None,
        head_dim: int | None = None,
        variant: str = "fixed",
        segment: int | None = None,
        l_max: int = 1024,
        rope_base: float = 10000.0,
        rotary: bool = True,
        bidirectional: bool = False,
        bias: bool = False,
        backend: str = "auto",
    ):
        super().__init__(d_model)
        for arg, value in (("n_heads", n_heads), ("head_dim", head_dim), ("segment", segment)):
            if value is not None:
                check_int("combiner", arg, value, 1)
        check_int("combiner", "l_max", l_max, 1)
        check_float("combiner", "rope_base", rope_base, 0.0, open_low=True)
        check_bool("combiner", "rotary", rotary)
        check_bool("combiner", "bidirectional", bidirectional)
        if variant not in VARIANTS:
            raise ValueError(f"combiner: variant must be one of {VARIANTS}, got {variant!r}")
        n_heads = n_heads or max(1, d_model // 64)
        head_dim = head_dim or d_model // n_heads
        if head_dim < 1 or (rotary and head_dim % 2):
            raise ValueError(f"combiner: head_dim must be even and >= 2 for RoPE, got {head_dim}")
        self.n_heads, self.head_dim, self.variant = n_heads, head_dim, variant
        # Fixed at build (decoding must cut the same segments as training): sqrt of the length it is built for.
        self.segment = segment if segment is not None else default_segment(l_max)
        self.rope_base, self.rotary, self.bidirectional, self.backend = (
            rope_base,
            rotary,
            bidirectional,
            backend,
        )
        self.qkv_proj = nn.Linear(d_model, 3 * n_heads * head_dim, bias=bias)
        self.o_proj = nn.Linear(n_heads * head_dim, d_model, bias=bias)

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, n_heads={self.n_heads}, head_dim={self.head_dim}, variant={self.variant}, "
            f"segment={self.segment}, bidirectional={self.bidirectional}, rotary={self.rotary}"
        )

    def _project(self, x: torch.Tensor, positions: torch.Tensor):
        b, t, _ = x.shape
        q, k, v = self.qkv_proj(x).view(b, t, 3, self.n_heads, self.head_dim).unbind(2)
        if not self.rotary:
            return q, k, v
        return apply_rotary(q, positions, self.rope_base), apply_rotary(k, positions, self.rope_base), v

    def _out(self, o: torch.Tensor) -> torch.Tensor:
        return self.o_proj(o.reshape(o.shape[0], o.shape[1], -1))

    def forward(self, x: torch.Tensor, cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
        """``cu_seqlens`` (int32 [N + 1]): x [1, T, d_model] packs N documents, each mixed as if alone."""
        self.check_input(x)
        self.check_packed(x, cu_seqlens)
        if cu_seqlens is None:
            positions = torch.arange(x.shape[1], device=x.device)
        else:
            positions = positions_from_cu_seqlens(cu_seqlens.to(x.device))
        q, k, v = self._project(x, positions)
        o = ops.combiner(
            q,
            k,
            v,
            segment=self.segment,
            variant=self.variant,
            causal=not self.bidirectional,
            backend=self.backend,
            cu_seqlens=cu_seqlens,
        )
        return self._out(o)

    # -- decoding: the current segment plus one summary per finished segment -------------------------------

    _state_keys = ("q", "k", "v", "sk", "sv", "pos")

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        dtype = dtype or self.o_proj.weight.dtype
        return init_state(
            batch_size, self.n_heads, self.head_dim, self.head_dim, self.segment, self.variant, device, dtype
        )

    def _steps(self, q, k, v, state: State) -> tuple[torch.Tensor, State]:
        """q, k, v [b, t, H, Dh] through ``ops.combiner_step`` token by token with the layer's ``backend``."""
        outs = []
        for i in range(q.shape[1]):
            o, state = ops.combiner_step(
                q[:, i], k[:, i], v[:, i], state, variant=self.variant, backend=self.backend
            )
            outs.append(o)
        return torch.stack(outs, 1), state

    def _parallel(self, q, k, v, cu_seqlens=None) -> torch.Tensor:
        return ops.combiner(
            q, k, v, segment=self.segment, variant=self.variant, causal=True, backend=self.backend,
            cu_seqlens=cu_seqlens,
        )  # fmt: skip

    def _prefix_state(self, q, k, v, state: State) -> State:
        """The state after q, k, v [b, t, H, Dh] from ``state`` (at position 0): its summary slots and dtype kept."""
        return state_from_prefix(
            q, k, v, self.segment, self.variant, n_min=state["sk"].shape[1], dtype=state["k"].dtype
        )

    @staticmethod
    def _stack(parts: list[State]) -> State:
        """Row states as one, the summaries zero-padded after each row's own (to the most finished segments)."""
        n = max(p["sk"].shape[1] for p in parts)

        def pad(x):
            return torch.cat([x, x.new_zeros(x.shape[0], n - x.shape[1], *x.shape[2:])], 1)

        out = {key: torch.cat([p[key] for p in parts]) for key in ("q", "k", "v", "pos")}
        out.update({key: torch.cat([pad(p[key]) for p in parts]) for key in ("sk", "sv")})
        return out

    def prefill(
        self, x: torch.Tensor, state: State | None = None, cu_seqlens: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, State]:
        """``cu_seqlens``: x [1, T, d_model] packs N documents; ``state`` (if given) and the returned state hold
        one row per document, each continuing from its own position."""
        self.check_input(x)
        self.check_decodable()
        bounds = self.check_packed(x, cu_seqlens, state, self._state_keys)
        t = x.shape[1]
        rows_n = x.shape[0] if bounds is None else len(bounds) - 1
        if state is None:
            state = self.init_state(rows_n, device=x.device, dtype=x.dtype)
        else:
            self.check_state(state, rows_n, self._state_keys)
        pos = state["pos"].to(x.device)
        # From the empty state (every row at position 0) the prompt runs in parallel: the forward pass's
        # output (causal Combiner is exactly what stepping computes) and the state from the same summaries.
        fresh = t > 1 and not bool(pos.any())
        if bounds is None:
            q, k, v = self._project(x, pos[:, None] + torch.arange(t, device=x.device))
            if fresh:
                o = self._parallel(q, k, v)
                return self._out(o), self._prefix_state(q, k, v, state)
            o, new = self._steps(q, k, v, state)
            return self._out(o.to(x.dtype)), new
        cu = cu_seqlens.to(x.device)
        positions = positions_from_cu_seqlens(cu) + pos[seq_idx_from_cu_seqlens(cu)]
        q, k, v = self._project(x, positions)
        if fresh:
            o = self._parallel(q, k, v, cu_seqlens=cu)
            parts = [
                self._prefix_state(
                    q[:, s:e], k[:, s:e], v[:, s:e], {key: x[n : n + 1] for key, x in state.items()}
                )
                for n, (s, e) in enumerate(zip(bounds[:-1], bounds[1:]))
            ]
            return self._out(o), self._stack(parts)
        outs, parts = [], []
        for n, (s, e) in enumerate(zip(bounds[:-1], bounds[1:])):
            row = {key: value[n : n + 1] for key, value in state.items()}
            o, new = self._steps(q[:, s:e], k[:, s:e], v[:, s:e], row)
            outs.append(o)
            parts.append(new)
        return self._out(torch.cat(outs, 1).to(x.dtype)), self._stack(parts)

    def step(self, x_t: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        self.check_input(x_t, "x_t", ndim=2)
        y, state = self.prefill(x_t[:, None], state)
        return y[:, 0], state

    def state_size(self, seq_len: int) -> int:
        s, hd = self.segment, self.n_heads * self.head_dim
        done = seq_len // s
        if self.variant == "fixed":
            return (1 + 2 * s + 2 * done) * hd
        return (3 * s + 2 * done * s) * hd
