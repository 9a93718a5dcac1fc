"""``orchid``: a causal, data-dependent long convolution after Orchid (Karami and Ghodsi 2024).

Width D, M = ``n_kernels`` data-dependent basis kernels per channel (default 4):

    u = x W_in + b_in;  a = u[..., 2D:]                  # [B, T, 3D]; a: projected v, before the short filter
    x_0, x_1, v = split(shortconv(u))                    # causal depthwise, width 3, no activation
    c = LayerNorm(SiLU(condconv(a)))                     # conditioning network: [B, T, D, M], causal, width 3
    z = x_1 * v
    h_t(j) = h_0(j) + sum_m c_{t,m} h_m(j)               # the kernel applied at output t, per channel
    w_t = sum_{s<=t} h_t(t-s) z_s + D z_t                # = (h_0 conv z) + sum_m c_m * (h_m conv z) + D z
    r = h_r conv x + D_r x                               # Orchid's static residual long convolution ("sconv")
    y = (x_0 * w + r) W_out + b_out

h_0, h_1..h_M and h_r are Hyena's implicit filters (:class:`~seqzoo.layers.hyena.ImplicitFilter`, any length),
applied with ops.fft_conv: M + 2 FFT convolutions of length T per channel, O(M T log T).

What the paper does, and where this differs. Orchid's kernel is h(x) = h_static + NN(x): the authors' code
(Karami-m/orchid, ``OrchidOperator``, conditioning ``absfreq`` / ``convtf``) runs a depthwise conv (width 3,
centred) and LayerNorm over the projected v, takes |FFT|^2 over the whole sequence (which makes the kernel
invariant to shifts of x, so the convolution stays shift-equivariant), a conv + LayerNorm along frequency,
and an inverse FFT to a length-T kernel; it is applied as a circular FFT convolution of length T; the chain is
x_0 * (h(x) conv (x_1 * v)) plus a static residual long convolution of the input, then an output projection,
as here. A kernel computed from the whole sequence sees the future, as does a centred conv or a circular
convolution, so the paper's layer is not causal: it was built for encoders (masked LM, classification). The
causal version here keeps what makes Orchid Orchid, a convolution kernel that is a function of the input and
shift-equivariant in it, and changes when the kernel may look:

- the kernel applied at output t, h_t, depends on x_{<=t} only, through c_t, which a causal conditioning
  network computes (causal depthwise conv width 3 + SiLU + LayerNorm: the authors' time-domain half, causal);
  it moves with x (shift x and c, hence y, shift with it);
- the adaptive part lives in the span of M learned static kernels (coefficients c_{t,m}) instead of being an
  arbitrary length-T kernel from a spectral network: with one kernel per output position the layer is
  sum_m c_m * (h_m conv z), still M FFT convolutions, where a free kernel per position would cost O(T^2);
- the spectral step (|FFT|^2 and the frequency-domain conv) is dropped: it needs the whole sequence;
- convolutions are linear (zero-padded), not circular.

Decoding: the long convolutions keep their inputs, {"conv": [B, 3D, W-1], "cond": [B, D, W_c - 1],
"z": [B, t, D], "x": [B, t, D]} (the last two grow by 2D numbers per token, as attention's KV cache). ``step``
at position t costs O(t D (M + 2)) (direct sums over the cache) plus the filters' taps (cached outside
autograd). ``state_size(t) = 3D (W-1) + D (W_c - 1) + 2 t D`` (t D without the residual convolution).

Packed documents (``cu_seqlens``): the short, conditioning and long convolutions run per document (the long ones
with the longest document's taps); LayerNorm, gates and projections are per position. A packed ``prefill``
returns one state row per document, the caches "z" and "x" padded to the longest document, each document's
inputs right-aligned after zeros (``hyena.CachedConvMixer``).

``bidirectional=True``: every long convolution is two-sided (second filter MLPs for lags -1, -2, ...), the
kernel still weighted by c_t at the output; the short and conditioning convolutions stay causal. It is the
setting for classifiers (closer to the paper's encoder use) and cannot decode.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import ops
from ..modules.short_conv import ShortConvolution
from ..registry import register_mixer
from .base import State, backend_for, check_bool, check_int
from .hyena import (
    CachedConvMixer,
    ImplicitFilter,
    check_filter_args,
    continue_long_conv,
    continue_long_conv_cache,
)


@register_mixer(
    "orchid",
    description="Orchid (causal): long convolution whose kernel a conditioning network makes from the input",
    paper="Karami and Ghodsi 2024, Orchid: Flexible and Data-Dependent Convolution for Sequence Modeling",
    family="long convolution",
    settings_source="Karami and Ghodsi 2024, the authors' OrchidOperator defaults (order 2, filter MLP width 64, "
    "short filter 3, conditioning conv 3, residual long conv); causal variant with 4 basis kernels (orchid.py)",
    seq_len_kwarg="l_max",
    test_kwargs={"filter_order": 8, "n_kernels": 2},
    mqar_lr=1e-2,
)
class Orchid(CachedConvMixer):
    def __init__(
        self,
        d_model: int,
        l_max: int = 1024,
        n_kernels: int = 4,
        filter_order: int = 64,
        emb_dim: int = 3,
        n_inner_mlps: int = 2,
        sin_freq: float = 1.0,
        short_width: int = 3,
        cond_width: int = 3,
        residual_conv: bool = True,
        bidirectional: bool = False,
        backend: str = "auto",
    ):
        super().__init__(d_model)
        name = "orchid"
        check_filter_args(name, l_max, filter_order, emb_dim, n_inner_mlps, sin_freq)
        check_int(name, "n_kernels", n_kernels, 1)
        check_int(name, "short_width", short_width, 2, 8)
        check_int(name, "cond_width", cond_width, 2, 8)
        check_bool(name, "residual_conv", residual_conv)
        self.bidirectional = check_bool(name, "bidirectional", bidirectional)
        self.l_max, self.n_kernels, self.residual_conv, self.backend = (
            l_max,
            n_kernels,
            residual_conv,
            backend,
        )
        self.short_width, self.cond_width = short_width, cond_width
        d, m = d_model, n_kernels
        filt = dict(
            emb_dim=emb_dim,
            n_inner=n_inner_mlps,
            sin_freq=sin_freq,
            bidirectional=bidirectional,
            weight_decay=0.0,
        )
        self.in_proj = nn.Linear(d, 3 * d)
        conv_backend = backend_for(ops.causal_conv1d, backend)  # backend names an fft_conv backend
        self.short_filter = ShortConvolution(3 * d, short_width, backend=conv_backend, activation=None)
        # Conditioning network: M causal depthwise filters per channel (with ShortConvolution's SiLU), then
        # LayerNorm over the D*M coefficients of a position (as the authors normalise their conditioning).
        self.cond_conv = ShortConvolution(d * m, cond_width, backend=conv_backend)
        self.cond_norm = nn.LayerNorm(d * m)
        # h_0 (static) and h_1..h_M (weighted by c) as one bank, channel v (M+1) + k (safari's interleaving).
        self.filter = ImplicitFilter(d * (m + 1), l_max, filter_order, **filt)
        self.bias = nn.Parameter(torch.randn(d))
        if residual_conv:
            self.filter_res = ImplicitFilter(d, l_max, filter_order, **filt)
            self.bias_res = nn.Parameter(torch.randn(d))
        self.out_proj = nn.Linear(d, d)

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, l_max={self.l_max}, n_kernels={self.n_kernels}, "
            f"short_width={self.short_width}, cond_width={self.cond_width}, "
            f"residual_conv={self.residual_conv}, bidirectional={self.bidirectional}"
        )

    def _long(self, u, past, K, D, keep_state, packing=None):
        """The causal (or two-sided) long convolution of u with K; with a cache, continued after ``past``
        (and the cache returned). ``packing``: u packs documents, each convolved alone."""
        if not keep_state:
            cu = None if packing is None else packing.cu_seqlens
            y = ops.fft_conv(u, K, D, bidirectional=self.bidirectional, backend=self.backend, cu_seqlens=cu)
            return y, None
        return continue_long_conv(past, u, K, D, self.backend, packing)

    def _mix(self, x, state, keep_state, packing=None):
        d, m = self.d_model, self.n_kernels
        B, T = x.shape[:2]
        cu = None if packing is None else packing.cu_seqlens
        u = self.in_proj(x)
        past_z = past_x = cond_state = conv_state = None
        if keep_state:
            # Packed: one cache row per document.
            empty = x.new_zeros(B if packing is None else packing.n, 0, d)
            past_z = empty if state is None else state["z"]
            # (no "x" without the residual convolution: the state holds none)
            if self.residual_conv:
                past_x = empty if state is None else state["x"]
        if state is not None:
            conv_state, cond_state = state["conv"], state["cond"].repeat_interleave(m, 1)
        # Conditioning: c [B, T, D, M] from the projected v up to each position (of its own document).
        a = u[..., 2 * d :]
        c, cond = self.cond_conv(a.repeat_interleave(m, -1), cond_state, keep_state, cu_seqlens=cu)
        c = self.cond_norm(c).unflatten(-1, (d, m))
        u, conv = self.short_filter(u, conv_state, keep_state, cu_seqlens=cu)
        x0, x1, v = u.split(d, -1)
        z = x1 * v
        t0 = 0 if past_z is None else past_z.shape[1]
        # Packed: each document convolves alone, so the longest one's taps suffice.
        span = t0 + (T if packing is None else packing.longest)
        K = self.filter.taps(span)
        # Every basis kernel sees the same z: channel v (M+1) + k of the bank convolves z_v.
        w, _ = self._long(
            z.repeat_interleave(m + 1, -1),
            None if past_z is None else past_z.repeat_interleave(m + 1, -1),
            K,
            None,
            keep_state,
            packing,
        )
        w = w.unflatten(-1, (d, m + 1))
        w = w[..., 0] + (c * w[..., 1:]).sum(-1) + self.bias * z
        # For seqzoo.analysis: the gates, coefficients and skip that combine the convolutions outside the ops.
        ops.note("orchid", x0=x0, x1=x1, v=v, z=z, coef=c, bias=self.bias, w=w)
        y = x0 * w
        if self.residual_conv:
            r, cache_x = self._long(x, past_x, self.filter_res.taps(span), self.bias_res, keep_state, packing)
            y = y + r
        y = self.out_proj(y)
        if not keep_state:
            return y, None
        if packing is None:
            cache_z = torch.cat([past_z, z.to(past_z.dtype)], 1)
        else:  # each document's [past ; z] right-aligned after zeros, as continue_long_conv pads its inputs
            cache_z = continue_long_conv_cache(past_z, z.to(past_z.dtype), packing)
        new = {
            "conv": conv,
            "cond": cond.unflatten(1, (d, m))[:, :, 0],  # the M copies hold the same inputs: keep one
            "z": cache_z,
        }
        if self.residual_conv:
            new["x"] = (
                torch.cat([past_x, x.to(past_x.dtype)], 1) if packing is None else cache_x.to(past_x.dtype)
            )
        return y, new

    def _keys(self):
        return ("conv", "cond", "z") + (("x",) if self.residual_conv else ())

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        dtype = dtype or self.out_proj.weight.dtype
        conv_dtype = torch.promote_types(dtype, torch.float32)  # as ops.causal_conv1d returns it
        d = self.d_model
        state = {
            "conv": torch.zeros(batch_size, 3 * d, self.short_width - 1, device=device, dtype=conv_dtype),
            "cond": torch.zeros(batch_size, d, self.cond_width - 1, device=device, dtype=conv_dtype),
            "z": torch.zeros(batch_size, 0, d, device=device, dtype=dtype),
        }
        if self.residual_conv:
            state["x"] = torch.zeros(batch_size, 0, d, device=device, dtype=dtype)
        return state

    def state_size(self, seq_len: int) -> int:
        d = self.d_model
        fixed = 3 * d * (self.short_width - 1) + d * (self.cond_width - 1)
        return fixed + seq_len * d * (2 if self.residual_conv else 1)
