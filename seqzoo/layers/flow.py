"""``flow``: Flowformer's flow-attention, linear-time attention that conserves flow.

    q = sigmoid(x Wq), k = sigmoid(x Wk), v = x Wv       # q, k [B, T, H, Dh] (non-negative), v [B, T, H, Dv]
    o = flow_attention(q, k, v, causal)                   # ops.flow_attention: incoming/outgoing flows,
    y = o Wo                                              # allocation (sigmoid) and competition (softmax)

Tokens are sinks (queries) and sources (keys); fixing the flow each one emits or receives makes the keys
compete for a softmax-normalised share of the output and lets each query gate how much it takes in, with no
T x T matrix. Causal by default; ``bidirectional=True`` for encoders (Long Range Arena). Decoding keeps the
running sums of the causal recurrence (:mod:`seqzoo.ops.flow_attention.recurrent`): per head four D-vectors,
one scalar and a D x Dv matrix, whatever the length.

Packed documents (``cu_seqlens``): the projections act per position, and ``ops.flow_attention`` /
``ops.flow_attention_prefill`` take the boundaries, so the flows, the normalisers (incoming and outgoing
flows, the competition's softmax over the keys) and the running sums all stay inside each document, causal or
bidirectional; prefill's state holds one row per document.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import ops
from ..ops.flow_attention import recurrent
from ..registry import LRASettings, register_mixer
from .attention import TRANSFORMER_LRA_BLOCK
from .base import Mixer, State, check_int


@register_mixer(
    "flow",
    description="Flowformer flow-attention: linear attention conserving flow (competition and allocation)",
    paper="Wu et al. 2022, Flowformer: Linearizing Transformers with Conservation Flows (ICML)",
    family="flow attention",
    demo=True,
    settings_source="Wu et al. 2022 (Flowformer): sigmoid features, no convolution",
    test_kwargs={"n_heads": 4},
    mqar_lr=1e-2,
    lra=LRASettings(
        overrides={**TRANSFORMER_LRA_BLOCK, "optim.lr": 5e-4, "optim.weight_decay": 0.0},
        note="Flowformer: the Transformer baseline with flow-attention (Wu et al. 2022 follow LRA's Transformer)",
    ),
)
class FlowAttention(Mixer):
    def __init__(
        self,
        d_model: int,
        n_heads: int | None = None,
        head_dim: int | None = None,
        bidirectional: bool = False,
        bias: bool = False,
        backend: str = "auto",
    ):
        super().__init__(d_model)
        if n_heads is not None:
            check_int("flow", "n_heads", n_heads, 1)
        n_heads = n_heads or max(1, d_model // 64)
        if not isinstance(n_heads, int) or n_heads < 1:
            raise ValueError(f"flow: n_heads must be a positive int, got {n_heads!r}")
        if head_dim is None:
            if d_model % n_heads:
                raise ValueError(
                    f"flow: d_model ({d_model}) must be a multiple of n_heads ({n_heads}), or give head_dim"
                )
            head_dim = d_model // n_heads
        if not isinstance(head_dim, int) or head_dim < 1:
            raise ValueError(f"flow: head_dim must be a positive int, got {head_dim!r}")
        self.n_heads, self.head_dim = n_heads, head_dim
        self.bidirectional, self.backend = bool(bidirectional), backend
        self.qkv_proj = nn.Linear(d_model, 3 * n_heads * head_dim, bias=bias)
        self.o_proj = nn.Linear(n_heads * head_dim, d_model, bias=bias)

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, n_heads={self.n_heads}, head_dim={self.head_dim}, "
            f"bidirectional={self.bidirectional}"
        )

    def _project(self, x: torch.Tensor):
        """x [..., d_model] -> q, k (sigmoid features), v, each [..., H, Dh]."""
        q, k, v = self.qkv_proj(x).unflatten(-1, (3, self.n_heads, self.head_dim)).unbind(-3)
        return torch.sigmoid(q), torch.sigmoid(k), v

    def _out(self, o: torch.Tensor) -> torch.Tensor:
        return self.o_proj(o.flatten(-2))

    def forward(self, x: torch.Tensor, cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
        """y [B, T, D]. ``cu_seqlens``: x [1, T, D] packs documents, each attended to as if alone."""
        self.check_input(x)
        self.check_packed(x, cu_seqlens)
        q, k, v = self._project(x)
        o = ops.flow_attention(
            q, k, v, causal=not self.bidirectional, backend=self.backend, cu_seqlens=cu_seqlens
        )
        return self._out(o)

    # -- decoding: constant-size running sums -----------------------------------------------------------

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        return recurrent.init_state(
            batch_size,
            self.n_heads,
            self.head_dim,
            self.head_dim,
            device=device,
            dtype=dtype or self.o_proj.weight.dtype,
        )

    def prefill(
        self, x: torch.Tensor, state: State | None = None, cu_seqlens: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, State]:
        """(y, state). ``cu_seqlens``: x [1, T, D] packs N documents; ``state`` (if given) and the returned
        state hold one row per document."""
        self.check_input(x)
        self.check_decodable()
        if cu_seqlens is not None:
            self.check_packed(x, cu_seqlens, state, recurrent.STATE_KEYS)
        elif state is not None:
            self.check_state(state, x.shape[0], recurrent.STATE_KEYS)
        q, k, v = self._project(x)
        o, state = ops.flow_attention_prefill(q, k, v, state, backend=self.backend, cu_seqlens=cu_seqlens)
        return self._out(o), state

    def step(self, x_t: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        self.check_input(x_t, "x_t", ndim=2)
        self.check_decodable()
        self.check_state(state, x_t.shape[0], recurrent.STATE_KEYS)
        q, k, v = self._project(x_t)
        o, state = ops.flow_attention_step(q, k, v, state, backend=self.backend)
        return self._out(o), state

    def state_size(self, seq_len: int) -> int:
        return recurrent.state_size(self.n_heads, self.head_dim, self.head_dim)
