"""``base_conv``: Zoology's BaseConv (Arora et al. 2023), a linear projection gating a convolution.

    p = x W + b                                          # [B, T, D]
    c = (h_s conv x + b_s) + (h_l conv x + x)            # short causal depthwise (width 3) + implicit long
    y = p * c + x                                        # y = silu(p) * silu(c) + x with use_act=True

The paper's BaseConv is y = (u W + b_1) * (h conv u + b_2); its code (HazyResearch/zoology, ``BaseConv``) adds
the input back (``y + u``, kept here), has no output projection (none here), and builds h as either a short
depthwise Conv1d (``kernel_size=3``) or an implicit long filter (``kernel_size=-1``,
``ImplicitLongConvolution``: Hyena's filter with an MLP of width 16, emb_dim 3, Sin frequency 1, and a unit
skip, ``fft_conv(u, k) + u``), one kind per layer. Here every layer sums both, the combination of short and
long filters the paper motivates; ``short_width=None`` or ``long_conv=False`` leaves one of them out, which
reproduces Zoology's per-layer choice. The long filter is :class:`~seqzoo.layers.hyena.ImplicitFilter`
(generated at any length, see ``hyena``), applied with ``ops.fft_conv``.

Decoding: the short convolution keeps its last W-1 inputs, ``{"conv": [B, D, W-1]}``; the long convolution has
no finite state and keeps every input so far, ``{"x": [B, t, D]}`` (a cache growing by D numbers per token,
like attention's KV cache). ``step`` at position t costs O(t D) plus the filter's taps (cached outside
autograd); ``state_size(t) = D (W-1) + t D`` (each term only when that convolution is there).

Packed documents (``cu_seqlens``): both convolutions run per document (the long one with the longest
document's taps); a packed ``prefill`` returns one state row per document, the cache "x" padded to the longest
document, each document's inputs right-aligned after zeros (``hyena.CachedConvMixer``).

``bidirectional=True`` makes the long convolution two-sided (a second filter MLP for lags -1, -2, ...); the
short convolution stays causal. It needs the long convolution and cannot decode.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from ..modules.short_conv import ShortConvolution
from ..registry import register_mixer
from .base import State, backend_for, check_bool, check_int
from .hyena import CachedConvMixer, ImplicitFilter, check_filter_args, continue_long_conv


@register_mixer(
    "base_conv",
    description="BaseConv: a linear projection gating a short plus an implicit long convolution (FFT)",
    paper="Arora et al. 2023, Zoology: Measuring and Improving Recall in Efficient Language Models",
    family="long convolution",
    settings_source="Arora et al. 2023 (Zoology's BaseConv): short conv 3 plus implicit long conv (filter MLP "
    "width 16, emb_dim 3, Sin freq 1), input added back; kernel length = the task's",
    seq_len_kwarg="l_max",
    test_kwargs={"filter_order": 8},
    mqar_lr=1e-2,
)
class BaseConv(CachedConvMixer):
    def __init__(
        self,
        d_model: int,
        l_max: int = 1024,
        short_width: int | None = 3,
        long_conv: bool = True,
        filter_order: int = 16,
        emb_dim: int = 3,
        n_inner_mlps: int = 2,
        sin_freq: float = 1.0,
        use_act: bool = False,
        bidirectional: bool = False,
        backend: str = "auto",
    ):
        super().__init__(d_model)
        name = "base_conv"
        if short_width is not None:
            check_int(name, "short_width", short_width, 2, 8)
        check_bool(name, "long_conv", long_conv)
        if short_width is None and not long_conv:
            raise ValueError(f"{name}: short_width=None and long_conv=False leave no convolution")
        check_filter_args(name, l_max, filter_order, emb_dim, n_inner_mlps, sin_freq)
        check_bool(name, "use_act", use_act)
        check_bool(name, "bidirectional", bidirectional)
        if bidirectional and not long_conv:
            raise ValueError(f"{name}: bidirectional=True needs the long convolution (long_conv=True)")
        self.l_max, self.short_width, self.long_conv, self.use_act = l_max, short_width, long_conv, use_act
        self.bidirectional, self.backend = bidirectional, backend
        self.projection = nn.Linear(d_model, d_model)
        self.short = (  # Zoology's short filter: a plain depthwise convolution, no activation
            None
            if short_width is None
            else ShortConvolution(
                d_model, short_width, backend=backend_for(ops.causal_conv1d, backend), activation=None
            )
        )
        self.filter = None
        if long_conv:
            self.filter = ImplicitFilter(
                d_model,
                l_max,
                filter_order,
                emb_dim=emb_dim,
                n_inner=n_inner_mlps,
                sin_freq=sin_freq,
                bidirectional=bidirectional,
            )

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, l_max={self.l_max}, short_width={self.short_width}, "
            f"long_conv={self.long_conv}, use_act={self.use_act}, bidirectional={self.bidirectional}"
        )

    def _mix(self, x, state, keep_state, packing=None):
        cu = None if packing is None else packing.cu_seqlens
        new_state = {}
        c = 0
        if self.short is not None:
            s, conv = self.short(x, None if state is None else state["conv"], keep_state, cu_seqlens=cu)
            c = c + s
            new_state["conv"] = conv
        if self.filter is not None:
            past = None if state is None else state["x"]
            t0 = 0 if past is None else past.shape[1]
            # Packed: each document convolves alone, so the longest one's taps suffice.
            K = self.filter.taps(t0 + (x.shape[1] if packing is None else packing.longest))
            if keep_state:
                rows = x.shape[0] if packing is None else packing.n
                prev = x.new_zeros(rows, 0, self.d_model) if past is None else past
                long, new_state["x"] = continue_long_conv(prev, x, K, None, self.backend, packing)
            else:
                long = ops.fft_conv(
                    x, K, bidirectional=self.bidirectional, backend=self.backend, cu_seqlens=cu
                )
            c = c + long.to(x.dtype) + x  # Zoology's long convolution adds its input (a unit skip)
        p = self.projection(x)
        ops.note("base_conv", values=x, c=c, p=p)  # for seqzoo.analysis: the gate outside the ops
        y = F.silu(c) * F.silu(p) if self.use_act else c * p
        return y + x, new_state

    def _keys(self):
        return (("conv",) if self.short is not None else ()) + (("x",) if self.filter is not None else ())

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        dtype = dtype or self.projection.weight.dtype
        state = {}
        if self.short is not None:
            conv_dtype = torch.promote_types(dtype, torch.float32)  # as ops.causal_conv1d returns it
            shape = (batch_size, self.d_model, self.short_width - 1)
            state["conv"] = torch.zeros(shape, device=device, dtype=conv_dtype)
        if self.filter is not None:
            state["x"] = torch.zeros(batch_size, 0, self.d_model, device=device, dtype=dtype)
        return state

    def state_size(self, seq_len: int) -> int:
        short = 0 if self.short is None else self.d_model * (self.short_width - 1)
        return short + (seq_len * self.d_model if self.filter is not None else 0)
