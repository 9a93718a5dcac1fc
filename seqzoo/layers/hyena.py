"""``hyena``: the Hyena operator (Poli et al. 2023, Hyena Hierarchy), and the implicit long filter it
shares with ``base_conv`` and ``orchid``.

Order N (default 2), width D, as HazyResearch/safari's ``HyenaOperator`` computes it:

    u = x W_in + b_in                                   # [B, T, (N+1) D]
    u = shortconv(u)                                    # causal depthwise, width 3, no activation
    x_0, ..., x_{N-1}, v = split(u)                     # each [B, T, D]
    for o = 0 .. N-2:                                   # with x_i = x_{N-1-o}
        z = x_i * v                                     # gate, then the o-th long convolution
        v_t = sum_{s<=t} h_o[:, t-s] z_s + D_o z_t      # ops.fft_conv, O(T log T)
    y = (x_0 * v) W_out + b_out

The paper writes order N as N long convolutions (z^{n+1} = x^n * (h^n conv z^n)); its code (safari, and
Zoology's Hyena) gates before the first one, so order N has N-1 long convolutions: order 2 is
y = x_0 * (h conv (x_1 * v) + D (x_1 * v)). This module follows the code.

The implicit filter (safari's ``HyenaFilter``): for tap i = 0, 1, 2, ... and a reference length l_max,

    t_i = i / (l_max - 1),  w_i = 2 pi i / l_max,  f = linspace(1e-4, B-1, B), B = (emb_dim - 1) / 2
    z_i = [t_i, cos(f w_i), -sin(f w_i)]                 # [emb_dim]: time and complex-exponential bands
    h[:, i] = MLP(z_i) * exp(-|delta| t_i)               # MLP: Linear, Sin, (Linear, Sin) x n_inner, Linear
    Sin(a) = sin(freq * a), freq learnable [filter_order], shared by the MLP's activations
    delta = linspace(log(1e-2)/1.5, log(1e-2)/0.3, C)    # ExponentialModulation (modulate=True; shift 0)

Deviations from safari, all so that a filter exists at every length: the positional features are computed
from i (safari keeps a table of l_max rows, trained at lr 1e-5; its associative-recall runs freeze it,
lr_pos_emb=0, as here), and taps past l_max follow the same formulas (t_i > 1, further decayed) where safari
truncates the input to l_max. A filter is a function of the tap index alone, so the filter for T taps is the
first T taps of any longer one: decoding generates taps as it goes. The filter MLP's parameters carry
``_optim = {"weight_decay": 0.0}`` (safari's wd=0 for filters).

Decoding: Hyena has no finite recurrent state. ``prefill`` and ``step`` keep the inputs of every long
convolution seen so far, ``state = {"conv": [B, (N+1) D, W-1], "z": [B, t, (N-1) D]}`` (W = ``short_width``):
a cache that grows by (N-1) D numbers per token, like attention's KV cache. ``step`` at position t costs
O(t (N-1) D) (the direct sum over the cache) plus the filter's taps (generated up to the next power of two
past t and cached while the parameters are unchanged, outside autograd; inside autograd, t taps per step);
a ``prefill`` of T tokens after t cached ones costs one FFT convolution over t + T.
``state_size(t) = (N+1) D (W-1) + t (N-1) D``.

Packed documents (``cu_seqlens``, x [1, T, d_model]): the short filter and every long convolution run per
document (``ops.fft_conv(..., cu_seqlens=)``, with the taps of the longest document: a filter is a function of
the tap index alone, so a document gets the taps it gets alone); gates and projections are per position. A
packed ``prefill`` returns one state row per document, the cache "z" padded to the longest document with each
document's inputs right-aligned after zeros (``state["z"][n, -L_n:]`` is document n's own cache): zeros before
a document's start add nothing to the causal sums over lags that ``step`` computes, so decoding on (batch N),
or a packed ``prefill`` continued from these rows, equals the separate runs (see ``CachedConvMixer``).

``bidirectional=True`` (encoders, Long Range Arena classifiers): every long convolution is two-sided, a second
filter MLP giving the taps at lags -1, -2, ... (ops.fft_conv(bidirectional=True)); the short convolution stays
causal. A bidirectional Hyena cannot decode.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .. import ops
from ..modules.short_conv import ShortConvolution
from ..ops._varlen import cu_seqlens_from_lengths, seq_idx_from_cu_seqlens
from ..registry import register_mixer
from .base import Mixer, State, backend_for, check_bool, check_float, check_int

# -- the short filter -----------------------------------------------------------------------------------


# -- the implicit long filter ---------------------------------------------------------------------------


def check_filter_args(mixer: str, l_max, filter_order, emb_dim, n_inner_mlps, sin_freq) -> None:
    """The implicit filter's arguments as a mixer takes them (hyena, base_conv, orchid): ValueError naming them."""
    check_int(mixer, "l_max", l_max, 2)
    check_int(mixer, "filter_order", filter_order, 1)
    check_int(mixer, "emb_dim", emb_dim, 3)
    if emb_dim % 2 == 0:
        raise ValueError(f"{mixer}: emb_dim must be odd (time, then cosine and sine bands), got {emb_dim}")
    check_int(mixer, "n_inner_mlps", n_inner_mlps, 0)
    check_float(mixer, "sin_freq", sin_freq, 0.0, open_low=True)


class ImplicitFilter(nn.Module):
    """Hyena's implicitly parameterised long filter: ``filter(L)`` is [C, L] ([2, C, L] when bidirectional:
    taps at lags 0.. and at lags -1..), the taps of an MLP over positional features times a decay window.

    ``channels`` C filters; ``l_max`` the length that normalises positions (t = 1 at tap l_max - 1); ``width``
    the MLP width (safari's filter ``order``); ``emb_dim`` odd >= 3; ``n_inner`` hidden Linear+Sin layers;
    ``sin_freq`` the initial frequency of the Sin activations; ``modulate`` the exponential decay window."""

    def __init__(
        self,
        channels: int,
        l_max: int,
        width: int,
        emb_dim: int = 3,
        n_inner: int = 2,
        sin_freq: float = 1.0,
        modulate: bool = True,
        bidirectional: bool = False,
        weight_decay: float | None = None,
        fast_decay_pct: float = 0.3,
        slow_decay_pct: float = 1.5,
        target: float = 1e-2,
    ):
        super().__init__()
        self.channels, self.l_max, self.width, self.emb_dim = channels, l_max, width, emb_dim
        self.modulate, self.bidirectional = modulate, bidirectional
        # One learnable frequency per hidden unit, shared by every Sin of the MLP (safari reuses one module).
        self.freq = nn.Parameter(torch.full((width,), float(sin_freq)))
        self.mlp = self._mlp(emb_dim, width, channels, n_inner)
        # The anti-causal taps get their own MLP (Orchid's filter_rev); the window and features are shared.
        self.mlp_rev = self._mlp(emb_dim, width, channels, n_inner) if bidirectional else None
        # ExponentialModulation's rates, fixed (safari: modulation_lr=0.0 registers them as a buffer).
        slowest, fastest = math.log(target) / slow_decay_pct, math.log(target) / fast_decay_pct
        self.register_buffer("deltas", torch.linspace(slowest, fastest, channels).abs(), persistent=False)
        bands = (emb_dim - 1) // 2
        self.register_buffer("bands", torch.linspace(1e-4, bands - 1, bands), persistent=False)
        if weight_decay is not None:
            for p in self.parameters():
                p._optim = {"weight_decay": float(weight_decay)}
        self._taps_cache = None

    @staticmethod
    def _mlp(emb_dim, width, channels, n_inner) -> nn.ModuleList:
        layers = [nn.Linear(emb_dim, width)] + [nn.Linear(width, width) for _ in range(n_inner)]
        return nn.ModuleList(layers + [nn.Linear(width, channels, bias=False)])

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, l_max={self.l_max}, width={self.width}, emb_dim={self.emb_dim}, "
            f"modulate={self.modulate}, bidirectional={self.bidirectional}"
        )

    def features(self, L: int):
        """z [L, emb_dim] and t [L, 1] for taps 0..L-1 (safari's PositionalEmbedding, at any length)."""
        dtype, device = self.freq.dtype, self.freq.device
        i = torch.arange(L, device=device, dtype=dtype)[:, None]
        t = i / (self.l_max - 1)
        phase = self.bands.to(dtype) * (2 * math.pi * i / self.l_max)  # [L, bands]
        return torch.cat([t, torch.cos(phase), -torch.sin(phase)], -1), t

    def _run(self, mlp: nn.ModuleList, z: torch.Tensor) -> torch.Tensor:
        for layer in mlp[:-1]:
            z = torch.sin(self.freq * layer(z))
        return mlp[-1](z)  # [L, C]

    def forward(self, L: int) -> torch.Tensor:
        z, t = self.features(L)
        window = torch.exp(-t * self.deltas.to(t.dtype)) if self.modulate else torch.ones_like(t)
        h = (self._run(self.mlp, z) * window).t()
        if self.bidirectional:
            h = torch.stack([h, (self._run(self.mlp_rev, z) * window).t()])
        return h

    def taps(self, L: int) -> torch.Tensor:
        """``self(L)``; outside autograd, the first L taps of a cached longer filter (decoding asks for one
        more tap per token: the cache is regenerated at the next power of two when it runs out, or when a
        parameter changes)."""
        if torch.is_grad_enabled():
            return self(L)
        key = tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in self.parameters())
        cached = self._taps_cache
        if cached is None or cached[0] != key or cached[1].shape[-1] < L:
            n = max(self.l_max, 1 << max(L - 1, 0).bit_length())
            self._taps_cache = cached = (key, self(n))
        return cached[1][..., :L]


# -- a causal long convolution continued from its cached inputs -----------------------------------------


class Packing:
    """The documents of a packed row (``cu_seqlens``, checked by ``Mixer.check_packed``) as the long-convolution
    mixers need them: the tensor to hand to the ops, the boundaries and each document's length."""

    def __init__(self, cu_seqlens: torch.Tensor, bounds: list[int]):
        self.cu_seqlens, self.bounds = cu_seqlens, bounds
        self.lengths = [e - s for s, e in zip(bounds[:-1], bounds[1:])]
        self.n = len(self.lengths)
        # Every filter is a function of the tap index alone, so the longest document's taps serve all of them.
        self.longest = max(self.lengths)

    def histories(self, past_len: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Where [cache ; new tokens] of each document lies in one packed row of histories (document n is its
        ``past_len`` cached inputs, then its L_n new ones): (cu_seqlens of that row [N + 1] int32, the index of
        each of its positions in [cache rows flattened ; new tokens] [S], the row position of each new token
        [T])."""
        lengths = torch.tensor(self.lengths, device=device)
        starts = torch.tensor(self.bounds[:-1], device=device)
        cu = cu_seqlens_from_lengths(lengths + past_len, device=device)
        seq = seq_idx_from_cu_seqlens(cu)  # [S]
        j = torch.arange(int(cu[-1]), device=device) - cu.long()[seq]  # position inside the history
        from_cache = seq * past_len + j
        from_new = self.n * past_len + starts[seq] + (j - past_len)
        source = torch.where(j < past_len, from_cache, from_new)
        new_seq = seq_idx_from_cu_seqlens(self.cu_seqlens.to(device))
        new_pos = torch.arange(self.bounds[-1], device=device) + (new_seq + 1) * past_len
        return cu, source, new_pos

    def history_row(self, past: torch.Tensor, new: torch.Tensor):
        """[past_n ; new_n] of every document as one packed row [1, S, C] (past [N, t, C], new [1, T, C]), its
        cu_seqlens, and the row position of each new token (None when t = 0: the row is ``new`` itself)."""
        if past.shape[1] == 0:
            return new, self.cu_seqlens, None
        cu, source, new_pos = self.histories(past.shape[1], new.device)
        flat = torch.cat([past.to(new.dtype).reshape(-1, past.shape[2]), new[0]], 0)
        return flat[source][None], cu, new_pos

    def padded_cache(self, row: torch.Tensor, cu: torch.Tensor) -> torch.Tensor:
        """The per-document histories of a packed row ``row`` [1, S, C] (cu_seqlens ``cu``) as a cache
        [N, longest history, C], each history right-aligned after zeros. A cache grows with its document, and
        documents differ in length: the zeros stand before the start of the shorter ones, where a causal
        convolution summed over lags (``continue_long_conv``) finds nothing, so decoding on from a padded row
        equals decoding on from the document's own cache."""
        hist = (cu[1:] - cu[:-1]).long()  # [N]
        width = int(hist.max())
        k = torch.arange(width, device=row.device)
        shift = width - hist  # leading zeros of each row
        index = cu.long()[:-1, None] + k[None, :] - shift[:, None]  # [N, width]
        pad = row.shape[1]  # index of an appended zero row
        index = torch.where(k[None, :] >= shift[:, None], index, torch.full_like(index, pad))
        rows = torch.cat([row[0], row.new_zeros(1, row.shape[2])], 0)
        return rows[index]


def continue_long_conv(
    past: torch.Tensor, new: torch.Tensor, K: torch.Tensor, D, backend: str, packing: Packing | None = None
):
    """The outputs at the new positions of the causal convolution of [past ; new] (per channel), and
    [past ; new].

    past [B, t, C] (t may be 0), new [B, n, C]; K [C, >= t + n]; D [C] or None. One new token is the direct
    sum over the cache, O(t C); more run one FFT convolution over t + n.

    ``packing``: ``new`` [1, T, C] packs N documents and ``past`` [N, t, C] holds one cache per document (a
    shorter one right-aligned after zeros); K needs t + ``packing.longest`` taps. Each document's history
    [past_n ; new_n] is convolved on its own (one ``ops.fft_conv`` over a packed row of histories), and the
    returned caches [N, t + longest, C] are right-aligned after zeros (``Packing.padded_cache``)."""
    if packing is not None:
        row, cu, new_pos = packing.history_row(past, new)
        y = ops.fft_conv(row, K, D, backend=backend, cu_seqlens=cu)
        if new_pos is not None:
            y = y[:, new_pos]
        return y, packing.padded_cache(row, cu)
    full = torch.cat([past.to(new.dtype), new], 1)
    if new.shape[1] == 1:
        out_dtype = torch.promote_types(new.dtype, K.dtype)
        work = torch.promote_types(out_dtype, torch.float32)
        T = full.shape[1]
        y = torch.einsum("btc,ct->bc", full.to(work), K[:, :T].flip(-1).to(work))
        if D is not None:
            y = y + D.to(work) * new[:, 0].to(work)
        y = y[:, None].to(out_dtype)
    else:
        y = ops.fft_conv(full, K, D, backend=backend)[:, past.shape[1] :]
    return y, full


def continue_long_conv_cache(past: torch.Tensor, new: torch.Tensor, packing: Packing) -> torch.Tensor:
    """The caches ``continue_long_conv(past, new, ..., packing)`` returns, without convolving: [N, t + longest,
    C], each document's [past_n ; new_n] right-aligned after zeros."""
    row, cu, _ = packing.history_row(past, new)
    return packing.padded_cache(row, cu)


class CachedConvMixer(Mixer):
    """What the long-convolution mixers (hyena, base_conv, orchid) share: ``forward`` runs the subclass's
    ``_mix(x, None, False, packing)``; ``prefill`` and ``step`` run ``_mix(x, state, True, packing)``, which
    continues each long convolution over the cache of its inputs (``continue_long_conv``); ``_keys()`` names
    the state's tensors.

    Packed documents (``cu_seqlens``): every long convolution runs per document (``ops.fft_conv(...,
    cu_seqlens=)``, the taps of the longest document shared, a filter being a function of the tap index
    alone), as does every short convolution; the rest is per position. A packed ``prefill`` returns one state
    row per document: the fixed-size short-convolution states as they are, and the growing caches of long-
    convolution inputs padded to the longest document, each right-aligned after zeros (zeros before a
    document's start add nothing to its causal convolution): ``state["z"][n, -L_n:]`` is document n's own
    cache. ``step`` (batch N) and a packed ``prefill`` continued from such states equal separate runs."""

    def _keys(self) -> tuple[str, ...]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _mix(self, x, state, keep_state, packing=None):  # pragma: no cover - abstract
        raise NotImplementedError

    def _begin(self, x, state, ndim, cu_seqlens=None):
        self.check_input(x, "x" if ndim == 3 else "x_t", ndim)
        self.check_decodable()
        if cu_seqlens is not None:
            return self._packing(x, cu_seqlens, state)
        if state is not None:
            self.check_state(state, x.shape[0], self._keys())
        return None

    def _packing(self, x, cu_seqlens, state=None) -> Packing | None:
        bounds = self.check_packed(x, cu_seqlens, state, self._keys())
        return None if bounds is None else Packing(cu_seqlens, bounds)

    def forward(self, x: torch.Tensor, cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
        """y [B, T, d_model]; with ``cu_seqlens``, x [1, T, d_model] packs documents and each is mixed alone."""
        self.check_input(x)
        return self._mix(x, None, False, self._packing(x, cu_seqlens))[0]

    def prefill(
        self, x: torch.Tensor, state: State | None = None, cu_seqlens: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, State]:
        """With ``cu_seqlens``: one state row per document, the caches padded (see the class docstring)."""
        packing = self._begin(x, state, 3, cu_seqlens)
        return self._mix(x, state, True, packing)

    def step(self, x_t: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        self._begin(x_t, state, 2)
        y, state = self._mix(x_t[:, None], state, True)
        return y[:, 0], state


@register_mixer(
    "hyena",
    description="Hyena operator: gates and implicitly parameterised long convolutions (FFT), short filters",
    paper="Poli et al. 2023, Hyena Hierarchy: Towards Larger Convolutional Language Models",
    family="long convolution",
    demo=True,
    paper_settings={"emb_dim": 5, "sin_freq": 10.0},
    settings_source="Poli et al. 2023, safari's associative-recall config: order 2, filter MLP width 64, emb_dim "
    "5, Sin freq 10, short filter 3, frozen positional features; kernel length = the task's",
    seq_len_kwarg="l_max",
    test_kwargs={"filter_order": 8},
    mqar_lr=3e-3,  # diverged to below chance at 1e-2 (0.03)
)
class Hyena(CachedConvMixer):
    def __init__(
        self,
        d_model: int,
        l_max: int = 1024,
        order: int = 2,
        filter_order: int = 64,
        emb_dim: int = 3,
        n_inner_mlps: int = 2,
        sin_freq: float = 1.0,
        modulate: bool = True,
        short_width: int = 3,
        dropout: float = 0.0,
        bidirectional: bool = False,
        backend: str = "auto",
    ):
        super().__init__(d_model)
        name = "hyena"
        check_filter_args(name, l_max, filter_order, emb_dim, n_inner_mlps, sin_freq)
        check_int(name, "order", order, 2)
        check_bool(name, "modulate", modulate)
        check_int(name, "short_width", short_width, 2, 8)
        check_float(name, "dropout", dropout, 0.0, 1.0)
        self.bidirectional = check_bool(name, "bidirectional", bidirectional)
        self.l_max, self.order, self.short_width, self.backend = l_max, order, short_width, backend
        d = d_model
        self.in_proj = nn.Linear(d, (order + 1) * d)
        # Hyena's short filter is a plain depthwise convolution: no activation.
        conv_backend = backend_for(ops.causal_conv1d, backend)  # backend names an fft_conv backend
        self.short_filter = ShortConvolution(
            (order + 1) * d, short_width, backend=conv_backend, activation=None
        )
        # One filter bank for the N-1 long convolutions; channel c = v (N-1) + o, as safari lays it out.
        self.filter = ImplicitFilter(
            d * (order - 1),
            l_max,
            filter_order,
            emb_dim=emb_dim,
            n_inner=n_inner_mlps,
            sin_freq=sin_freq,
            modulate=modulate,
            bidirectional=bidirectional,
            weight_decay=0.0,
        )
        self.bias = nn.Parameter(torch.randn(d * (order - 1)))  # the D (skip) of each long convolution
        self.dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(d, d)

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, l_max={self.l_max}, order={self.order}, "
            f"short_width={self.short_width}, bidirectional={self.bidirectional}"
        )

    def _filters(self, T: int):
        """Per long convolution o: K_o [D, T] ([2, D, T] when bidirectional) and D_o [D]."""
        d, n = self.d_model, self.order - 1
        K = self.filter.taps(T)
        K = K.unflatten(-2, (d, n)).movedim(-2, 0)  # [N-1, (2,) D, T]
        return K, self.bias.view(d, n).t()

    def _mix(self, x, state, keep_state, packing=None):
        d, n = self.d_model, self.order - 1
        conv_state = None if state is None else state["conv"]
        cu = None if packing is None else packing.cu_seqlens
        u, conv = self.short_filter(self.in_proj(x), conv_state, keep_state, cu_seqlens=cu)
        *gates, v = u.split(d, -1)
        past = None if state is None else state["z"]
        t0 = 0 if past is None else past.shape[1]
        # Packed: each document convolves alone, so the longest one's taps suffice.
        K, D = self._filters(t0 + (x.shape[1] if packing is None else packing.longest))
        inputs = []
        for o, x_i in enumerate(reversed(gates[1:])):
            ops.note("hyena.gate", value=v, gate=x_i)  # for seqzoo.analysis: the gate outside the ops
            z = self.dropout(v * x_i)
            if past is None and not keep_state:
                v = ops.fft_conv(
                    z, K[o], D[o], bidirectional=self.bidirectional, backend=self.backend, cu_seqlens=cu
                )
            else:
                rows = z.shape[0] if packing is None else packing.n
                prev = z.new_zeros(rows, 0, d) if past is None else past[..., o * d : (o + 1) * d]
                v, full = continue_long_conv(prev, z, K[o], D[o], self.backend, packing)
                inputs.append(full)
        ops.note("hyena.gate", value=v, gate=gates[0])
        y = self.out_proj(v * gates[0])
        if not keep_state:
            return y, None
        assert len(inputs) == n
        return y, {"conv": conv, "z": torch.cat(inputs, -1)}

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        dtype = dtype or self.out_proj.weight.dtype
        c = (self.order + 1) * self.d_model
        conv_dtype = torch.promote_types(dtype, torch.float32)  # as ops.causal_conv1d returns it
        return {
            "conv": torch.zeros(batch_size, c, self.short_width - 1, device=device, dtype=conv_dtype),
            "z": torch.zeros(batch_size, 0, (self.order - 1) * self.d_model, device=device, dtype=dtype),
        }

    def _keys(self):
        return ("conv", "z")

    def state_size(self, seq_len: int) -> int:
        d = self.d_model
        return (self.order + 1) * d * (self.short_width - 1) + seq_len * (self.order - 1) * d
