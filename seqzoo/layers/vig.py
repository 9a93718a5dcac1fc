"""``vig``: ViG's bidirectional gated linear attention with direction-wise gates and 2D locality injection
(Liao, Wang, Zhu, Zhang, Huang 2024, "ViG: Linear-complexity Visual Sequence Learning with Gated Linear
Attention"; the layer of hustvl/ViG ``classification/models/vig.py`` ``GatedLinearAttention``).

    local = act(DWConv(x))                        # x [B, T, D]; act SiLU (conv_act="silu") or none
    q, k, v = local Wq, local Wk, local Wv        # [B, T, H, K], [B, T, H, K], [B, T, H, V]; K = D/2, V = D
    g_fwd, g_bwd = split(logsigmoid(W2 W1 local + b) / 16)      # one log decay per key channel and direction
    S_t = exp(g_fwd_t) S_{t-1} + k_t^T v_t        # forward state, from t = 0
    R_t = exp(g_bwd_t) R_{t+1} + k_t^T v_t        # backward state, from t = T - 1 (the gate of the ARRIVING token)
    o_t = K^-1/2 q_t (S_t + R_t) / 2              # [B, T, H, V]; the self term k_t^T v_t is in both halves
    gate = sigmoid(local Wg + bg)                 # [B, T, V]
    y = Wo [RMSNorm_head(o) * gate + RMSNorm_head(local) * (1 - gate)]       # y [B, T, D]

DWConv is the 2D locality injection: with ``image_size=(H, W)`` the tokens are an H x W grid in row-major
order and DWConv is a depthwise 3 x 3 ``nn.Conv2d`` with zero padding (a token sees its 8 grid neighbours,
never the last pixel of the previous row); with ``image_size=None`` it is a depthwise width-3 convolution
along the sequence, zero-padded at both ends (non-causal). The local branch has D channels and is mixed with
the global branch of V channels, so V = D (``expand_v=1``).

Bidirectional by construction: there is no causal mode, ``prefill``/``step`` raise (as every bidirectional
mixer does). Both directions run in ONE ``ops.gla`` call (causal) on [x; flip(x)] concatenated on the batch axis
(ViG's training path: on a GPU gla's Triton chunked kernels run once over twice the batch, not once per
direction): :func:`bidirectional_gla`. This is
not ``ops.gla(causal=False)``, which has ONE gate, takes R_t = exp(g_{t+1}) R_{t+1} + k_t^T v_t (the gate of
the token it leaves) and counts the self term once; ``tests/test_vig.py`` pins the difference.

Packed documents (``cu_seqlens``, x [1, T, D]): every document is its own sequence (or its own image: with
``image_size`` every document must have H * W tokens). The convolution never reaches into a neighbour, and
the backward direction flips each document in place: [x, flip_per_document(x)] is one row of 2N documents
through one ``ops.gla(cu_seqlens=)`` call.

Two bugs of the upstream code are not copied: its fused bidirectional recurrent kernel has a broken backward
(inference only), and its inference path halves the output twice (hidden by the RMSNorm after it).
Init: xavier_uniform with gain 2^-2.5 on every projection and the convolution, as ViG (``post_init``, so a
model's GPT-style init does not replace it). ``conv_init="torch"`` leaves the convolution at PyTorch's init:
with ViG's, at d_model 64 the global branch starts below its RMSNorm's eps (switched off; ``post_init`` says
by how much), which a short training run may never leave.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from ..modules.norm import RMSNorm
from ..ops._varlen import seq_idx_from_cu_seqlens, sequence_starts
from ..registry import LRASettings, register_mixer
from .base import Mixer, State, check_bool, check_float, check_int
from .linear_attention import head_split

CONV_ACTS = ("silu", None)
INIT_GAIN = 2**-2.5  # ViG's xavier_uniform gain
CONV_INITS = ("vig", "torch")


def flip_documents(x: torch.Tensor, cu_seqlens: torch.Tensor | None) -> torch.Tensor:
    """x [B, T, ...] with each sequence reversed in time: the whole row without ``cu_seqlens``, else every
    document of the packed row x [1, T, ...] in place (position s + e - 1 - t for t in [s, e)). Its own inverse."""
    if cu_seqlens is None:
        return x.flip(1)
    cu = cu_seqlens.to(x.device).long()
    doc = seq_idx_from_cu_seqlens(cu)
    t = torch.arange(x.shape[1], device=x.device)
    return x[:, cu[doc] + cu[doc + 1] - 1 - t]


def bidirectional_gla(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g_fwd: torch.Tensor,
    g_bwd: torch.Tensor,
    scale: float | None = None,
    cu_seqlens: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """ViG's direction-wise bidirectional GLA, o [B, T, H, V] (q's dtype):

        S_t = exp(g_fwd_t) S_{t-1} + k_t^T v_t ;  R_t = exp(g_bwd_t) R_{t+1} + k_t^T v_t
        o_t = scale q_t (S_t + R_t) / 2                                   (scale default K^-1/2)

    q, k, g_fwd, g_bwd [B, T, H, K] (log decays <= 0), v [B, T, H, V]. The backward direction is the causal
    op on the time-reversed sequence with its own gate, so both run in one causal ``ops.gla`` call: the
    reversed copy concatenated on the batch axis ([B] + [B] rows), or, packed (x [1, T, ...] with
    ``cu_seqlens``, each document reversed in place), on the time axis as N more documents."""
    if cu_seqlens is None:
        o, _ = ops.gla(
            torch.cat([q, q.flip(1)]),
            torch.cat([k, k.flip(1)]),
            torch.cat([v, v.flip(1)]),
            torch.cat([g_fwd, g_bwd.flip(1)]),
            scale=scale,
            backend=backend,
        )
        o_fwd, o_bwd = o.chunk(2)
        return (o_fwd + o_bwd.flip(1)) / 2
    t = q.shape[1]
    cu = cu_seqlens.to(torch.int32)
    both = torch.cat([cu, cu[1:] + t])  # the N documents, then their N reversed copies

    def with_reversed(u):
        return torch.cat([u, flip_documents(u, cu)], dim=1)

    o, _ = ops.gla(
        with_reversed(q),
        with_reversed(k),
        with_reversed(v),
        torch.cat([g_fwd, flip_documents(g_bwd, cu)], dim=1),
        scale=scale,
        backend=backend,
        cu_seqlens=both,
    )
    return (o[:, :t] + flip_documents(o[:, t:], cu)) / 2


@register_mixer(
    "vig",
    description="ViG: bidirectional gated linear attention with direction-wise gates (shared q, k, v) and a "
    "depthwise 3x3 convolution (2D locality) gating the global output; encoder only",
    paper="Liao, Wang, Zhu, Zhang, Huang 2024, ViG: Linear-complexity Visual Sequence Learning with Gated "
    "Linear Attention",
    family="gated linear attention",
    settings_source="hustvl/ViG vig-t/vig-s: keys d/2, values d, low-rank gate 16, logit normalizer 16, "
    "SiLU after the 3x3 depthwise conv (vig-t), xavier gain 2^-2.5; bidirectional only, so no causal MQAR "
    "(left out of the MQAR grid)",
    test_kwargs={"n_heads": 2},
    lra=LRASettings(
        kwargs={"gate_logit_normalizer": 128.0},
        overrides={"model.block": "prenorm", "model.mlp": "gelu", "optim.lr": 1e-3},
        note="ViG: pre-norm blocks with a Linear-act-Linear MLP (ratio 4) as its paper (its act is SiLU, "
        "seqzoo's nearest MLP is gelu), but with the task's norm (BatchNorm on Pathfinder, as S4) for its "
        "paper's per-token RMSNorm: with RMSNorm neither vig, gla nor s4d fits even 64 Pathfinder images (a "
        "constant prediction after 30 steps; bench_results/lra-norm-probe.md); gate_logit_normalizer 128 for "
        "ViG's 16 (not from a paper: at 16 every decay starts at 0.958 per token, a 16-token half-life, half a "
        "row of the 32 x 32 grid; at 128, 4 rows); image_size from the task (32 x 32 on image and "
        "pathfinder); lr 1e-3 (not from a paper: ViG reports no LRA results)",
    ),
)
class ViG(Mixer):
    # Bidirectional whatever its arguments: there is no causal mode to decode with.
    bidirectional = True

    def __init__(
        self,
        d_model: int,
        n_heads: int | None = None,
        image_size: tuple[int, int] | None = None,
        expand_k: float = 0.5,
        expand_v: float = 1.0,
        conv_act: str | None = "silu",
        gate_low_rank: int = 16,
        gate_logit_normalizer: float = 16.0,
        norm_eps: float = 1e-5,
        conv_init: str = "vig",
        bidirectional: bool = True,
        backend: str = "auto",
    ):
        super().__init__(d_model)
        name = self.mixer_name
        if not check_bool(name, "bidirectional", bidirectional):
            raise ValueError(
                f"{name}: bidirectional must be True: ViG's layer reads both directions of the whole "
                "sequence by construction and has no causal mode (it cannot decode)"
            )
        self.n_heads = check_int(name, "n_heads", max(1, d_model // 64) if n_heads is None else n_heads, 1)
        for arg, value in (("expand_k", expand_k), ("expand_v", expand_v), ("norm_eps", norm_eps)):
            check_float(name, arg, value, 0.0, open_low=True)
        check_float(name, "gate_logit_normalizer", gate_logit_normalizer, 0.0, open_low=True)
        check_int(name, "gate_low_rank", gate_low_rank, 1)
        if conv_init not in CONV_INITS:
            raise ValueError(f"{name}: conv_init must be one of {CONV_INITS}, got {conv_init!r}")
        self.conv_init = conv_init
        if conv_act not in CONV_ACTS:
            raise ValueError(f"{name}: conv_act must be 'silu' or None, got {conv_act!r}")
        self.key_dim, self.value_dim = int(d_model * expand_k), int(d_model * expand_v)
        if self.value_dim != d_model:
            raise ValueError(
                f"{name}: expand_v must give a value width equal to d_model ({d_model}), got expand_v={expand_v!r} "
                f"(width {self.value_dim}): the local branch (d_model channels) is mixed with the global one"
            )
        self.head_k_dim = head_split(name, "key", self.key_dim, self.n_heads)
        self.head_v_dim = head_split(name, "value", self.value_dim, self.n_heads)
        self.image_size = self._check_image_size(image_size)
        self.conv_act, self.backend = conv_act, backend
        self.gate_logit_normalizer = float(gate_logit_normalizer)
        # Depthwise, no bias (ViG's use_bias_in_dwconv=False). 1D: the width-3 taps are applied by shifts in
        # _local (so packed documents stay apart); the module holds the weight [D, 1, 3].
        if self.image_size is None:
            self.conv = nn.Conv1d(d_model, d_model, 3, padding=1, groups=d_model, bias=False)
        else:
            self.conv = nn.Conv2d(d_model, d_model, 3, padding=1, groups=d_model, bias=False)
        self.qkv_proj = nn.Linear(d_model, 2 * self.key_dim + self.value_dim, bias=False)
        self.gk_proj = nn.Sequential(
            nn.Linear(d_model, gate_low_rank, bias=False),
            nn.Linear(gate_low_rank, 2 * self.key_dim, bias=True),
        )
        self.g_proj = nn.Linear(d_model, self.value_dim, bias=True)  # global / local mixing gate
        self.g_norm = RMSNorm(self.head_v_dim, eps=norm_eps)
        self.l_norm = RMSNorm(self.head_v_dim, eps=norm_eps)
        self.o_proj = nn.Linear(self.value_dim, d_model, bias=False)
        self.post_init()

    def _check_image_size(self, image_size):
        if image_size is None:
            return None
        ok = (
            isinstance(image_size, (tuple, list))
            and len(image_size) == 2
            and all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in image_size)
        )
        if not ok:
            raise ValueError(
                f"{self.mixer_name}: image_size must be None or (H, W), two positive ints, got {image_size!r}"
            )
        return (image_size[0], image_size[1])

    def post_init(self) -> None:
        """ViG's init (``reset_parameters``): xavier_uniform, gain 2^-2.5, on every weight but the norms';
        ``conv_init="torch"``: the depthwise convolution keeps PyTorch's own init instead.

        Why the option: the conv's xavier bound counts fan_out = d_model * 9, so at d_model 64 its output on
        unit-scale inputs has RMS ~0.015, q, k and v ~1e-3, and the global branch's output ~5e-8, far below
        the RMSNorm's sqrt(eps) = 3e-3 that follows it: the global branch starts switched off (its output
        and its gradients scaled by ~1e-5). PyTorch's init gives the conv ~0.3 and the global branch ~4e-4
        (``tests/test_vig.py`` measures both)."""
        weights = [self.qkv_proj.weight, self.g_proj.weight, self.o_proj.weight]
        weights += [self.gk_proj[0].weight, self.gk_proj[1].weight]
        if self.conv_init == "vig":
            weights.append(self.conv.weight)
        else:
            self.conv.reset_parameters()
        for w in weights:
            nn.init.xavier_uniform_(w, gain=INIT_GAIN)

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, n_heads={self.n_heads}, head_k_dim={self.head_k_dim}, "
            f"head_v_dim={self.head_v_dim}, image_size={self.image_size}, conv_act={self.conv_act}"
        )

    # -- the layer ------------------------------------------------------------------------------------

    def _local(self, x: torch.Tensor, bounds: list[int] | None, cu_seqlens=None) -> torch.Tensor:
        """act(DWConv(x)) [B, T, D]: the 3 x 3 grid convolution of each image, or the width-3 convolution of
        each sequence (zero padding at every document's ends)."""
        b, t, d = x.shape
        if self.image_size is not None:
            h, w = self.image_size
            lengths = [t] if bounds is None else [e - s for s, e in zip(bounds[:-1], bounds[1:])]
            if any(n != h * w for n in lengths):
                what = "x has T" if bounds is None else "cu_seqlens has documents of lengths"
                shown = t if bounds is None else lengths
                raise ValueError(
                    f"{self.mixer_name}: image_size {self.image_size} needs every sequence to be H * W = "
                    f"{h * w} tokens (one image, row-major), but {what} {shown}"
                )
            images = x.reshape(-1, h, w, d).permute(0, 3, 1, 2)  # a packed row: one image per document
            y = self.conv(images).permute(0, 2, 3, 1).reshape(b, t, d)
        else:
            # y_t = w0 x_{t-1} + w1 x_t + w2 x_{t+1} (nn.Conv1d's cross-correlation, padding 1), with the taps
            # that would cross a document boundary zeroed.
            taps = self.conv.weight[:, 0].to(x.dtype)  # [D, 3]
            prev = F.pad(x, (0, 0, 1, 0))[:, :-1]
            nxt = F.pad(x, (0, 0, 0, 1))[:, 1:]
            if cu_seqlens is not None:
                starts = sequence_starts(cu_seqlens.to(x.device))
                ends = torch.roll(starts, -1)  # the last position of a document precedes the next start
                prev = prev.masked_fill(starts[None, :, None], 0.0)
                nxt = nxt.masked_fill(ends[None, :, None], 0.0)
            y = prev * taps[:, 0] + x * taps[:, 1] + nxt * taps[:, 2]
        return F.silu(y) if self.conv_act == "silu" else y

    def _heads(self, u: torch.Tensor, head_dim: int) -> torch.Tensor:
        return u.reshape(u.shape[0], u.shape[1], self.n_heads, head_dim)

    def forward(self, x: torch.Tensor, cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
        """y [B, T, D] from x [B, T, D] (x [1, T, D] with ``cu_seqlens``: each document on its own)."""
        self.check_input(x)
        bounds = self.check_packed(x, cu_seqlens)
        b, t, _ = x.shape
        local = self._local(x, bounds, cu_seqlens)
        q, k, v = self.qkv_proj(local).split([self.key_dim, self.key_dim, self.value_dim], dim=-1)
        g = F.logsigmoid(self.gk_proj(local)) / self.gate_logit_normalizer
        g_fwd, g_bwd = g.split(self.key_dim, dim=-1)  # ViG's order: forward gate first
        hk = self.head_k_dim
        o = bidirectional_gla(
            self._heads(q, hk),
            self._heads(k, hk),
            self._heads(v, self.head_v_dim),
            self._heads(g_fwd, hk),
            self._heads(g_bwd, hk),
            cu_seqlens=cu_seqlens,
            backend=self.backend,
        )
        gate = self._heads(torch.sigmoid(self.g_proj(local)), self.head_v_dim)
        mixed = self.g_norm(o) * gate + self.l_norm(self._heads(local, self.head_v_dim)) * (1 - gate)
        return self.o_proj(mixed.reshape(b, t, self.value_dim))

    # -- no decoding: a bidirectional mixer sees the future ------------------------------------------------

    def prefill(self, x, state: State | None = None, cu_seqlens=None):
        self.check_decodable()

    def step(self, x_t, state: State):
        self.check_decodable()

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        self.check_decodable()

    def state_size(self, seq_len: int) -> int:
        self.check_decodable()
