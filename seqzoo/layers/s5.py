"""``s5``: one MIMO diagonal state space model per layer (Smith, Warrington, Linderman, ICLR 2023).

Where S4/S4D run H = d_model independent single-input SSMs, S5 runs one linear SSM with H inputs, H outputs and
P states (P = ``d_state``), diagonalised, as a parallel (linear) scan:

    continuous:  x'(t) = Lambda x(t) + B~ u(t),   y(t) = C~ x(t) + D u(t)      u, y in R^H, x in C^P
    ZOH:         Lambda_bar = exp(Lambda dt),  B_bar = Lambda^{-1} (Lambda_bar - 1) B~       dt in R^P (per state)
    bilinear:    Lambda_bar = (1 - dt/2 Lambda)^{-1} (1 + dt/2 Lambda),  B_bar = (1 - dt/2 Lambda)^{-1} dt B~
    x_k = Lambda_bar * x_{k-1} + B_bar u_k                     ops.linear_scan (complex a, x)
    y_k = 2 Re(C~ x_k) + D * u_k       (conj_sym: P/2 modes kept, one of each conjugate pair; else Re(C~ x_k))
    bidirectional: a second scan of the same (Lambda_bar, B_bar u) backwards in time, C~ = [C~1 C~2] [H, 2m]:
                   y_k = 2 Re(C~1 x_k + C~2 x_k^bwd) + D u_k

followed by S5's activation (``activation``): ``half_glu1`` (default) z = gelu(y), z * sigmoid(W z);
``half_glu2`` y * sigmoid(W gelu(y)); ``full_glu`` W1 z * sigmoid(W2 z); ``gelu`` gelu(y); dropout as S5's
SequenceLayer places it. Shapes: Lambda [m], B~ [m, H], C~ [H, m] (or [H, 2m]), D [H], log_step [m] where m =
P/2 with conj_sym, else P.

Inits (``init``): ``"legs"`` (S5's default): A = blockdiag of J = ``blocks`` copies of HiPPO-N of size P/J (the
normal part S = A_LegS + P P^T of LegS, diagonalised by a Hermitian eig: Lambda = -1/2 + i omega, V unitary;
with conj_sym the negative-imaginary half of each block, as S5's ``eigh`` order); ``"ptd"`` (S5-PTD, Yu et al.
2024): each block the perturb-then-diagonalize of LegS itself (``seqzoo.layers.ptd``), all modes kept
(conj_sym off: perturbed eigenvalues are not conjugate pairs). B~ = V^{-1} lecun_normal [P, H], C~ = C V with C
truncated standard normal per row (``C_init="trunc_standard_normal"``), lecun normal (``"lecun_normal"``) or
complex normal without V (``"complex_normal"``); D ~ N(0, 1); log_step ~ U[log dt_min, log dt_max] per state.

Lambda (``Lambda_re``, ``Lambda_im``), B and log_step train at ``ssm_lr`` without weight decay (S5's ssm group,
``param._optim``, honoured by the recipe's param groups); C, D and the activation's weights at the model's lr.
``clip_eigs``: Re Lambda clipped to <= -1e-4 (S5's advice for autoregressive use / unbounded lengths).

State {"ssm": [B, m, 2]}: x_k as (real, imag), fp32 (fp64 for fp64 models). Packed documents (``cu_seqlens``):
the scan restarts at each document (``ops.linear_scan(..., cu_seqlens=)``, the backward scan too), ``prefill``
takes and returns one state row per document.

The scan (``scan``): ``"complex"`` runs ops.linear_scan on complex a = Lambda_bar, x = B_bar u (its reference
and torch backends); ``"real"`` runs the same recurrence in a frame rotating with each mode's phase, where the
decay |Lambda_bar| is real (``_scan_real``), on any linear_scan backend, Triton and CUDA included; ``"auto"``
(default): real on a GPU (or with backend triton/cuda), complex elsewhere. Both agree to rounding (tests).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .. import ops
from ..registry import LRASettings, register_mixer
from .base import Mixer, State, check_bool, check_float, check_int
from .ptd import ptd_legs
from .ssm_init import hippo_legs, log_dt_init

S5_INITS = ("legs", "ptd")
C_INITS = ("trunc_standard_normal", "lecun_normal", "complex_normal")
ACTIVATIONS = ("half_glu1", "half_glu2", "full_glu", "gelu")
SCANS = ("auto", "complex", "real")


def hippo_n(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(Lambda [n], V [n, n]) complex128 of S5's HiPPO-N: S = A_LegS + P P^T = -I/2 + skew (P[k] = sqrt(k + 1/2)),
    Lambda = -1/2 + i eig(-i skew) ascending in the imaginary part, V unitary (a Hermitian eigendecomposition)."""
    A, _ = hippo_legs(n)
    P = torch.sqrt(torch.arange(n, dtype=torch.float64) + 0.5)
    skew = A + P[:, None] * P[None, :] + 0.5 * torch.eye(n, dtype=torch.float64)
    omega, V = torch.linalg.eigh(-1j * skew.to(torch.complex128))
    return torch.complex(torch.full_like(omega, -0.5), omega), V


def block_init(init: str, block: int, blocks: int, conj_sym: bool):
    """(Lambda [m], V [P, m], V^{-1} [m, P]) complex128 for ``blocks`` copies of one block of size ``block``
    on the diagonal (P = blocks * block; m = P/2 with conj_sym, the first half of each block's modes)."""
    if init == "legs":
        lam, V = hippo_n(block)
        Vinv = V.conj().T
    else:
        lam, V, Vinv = ptd_legs(block)
    if conj_sym:
        k = block // 2
        lam, V, Vinv = lam[:k], V[:, :k], Vinv[:k]
    return lam.repeat(blocks), torch.block_diag(*[V] * blocks), torch.block_diag(*[Vinv] * blocks)


def lecun_normal(*shape: int, fan_in: int) -> torch.Tensor:
    """JAX's lecun_normal: a normal truncated at 2 std with variance 1 / fan_in, fp64."""
    std = math.sqrt(1.0 / fan_in) / 0.87962566103423978  # the truncation's variance correction, as JAX
    return nn.init.trunc_normal_(torch.empty(*shape, dtype=torch.float64), std=std, a=-2 * std, b=2 * std)


def _ssm_param(value: torch.Tensor, lr: float) -> nn.Parameter:
    p = nn.Parameter(value.float())
    p._optim = {"lr": lr, "weight_decay": 0.0}
    return p


@register_mixer(
    "s5",
    description="simplified state space (S5): one MIMO diagonal SSM per layer as a parallel (linear) scan",
    paper="Smith, Warrington, Linderman 2023, Simplified State Space Layers for Sequence Modeling",
    family="time-invariant SSM",
    settings_source="S5 run_train.py defaults: P 256, J 8 blocks, HiPPO-N init, ZOH, conj_sym, half_glu1, "
    "C trunc_standard_normal, dt in [1e-3, 1e-1], ssm_lr 1e-3",
    lm_mlp="none",  # S5's layer is SSM + GLU activation: no MLP in its blocks
    test_kwargs={"d_state": 8, "blocks": 2},
    mqar_lr=1e-2,  # probe on the mqar-cpu cells, 3 seeds: 0.263 / 0.129 at 1e-2, 0.236 / 0.094 at 3e-3
    lra=LRASettings(
        kwargs={"ssm_lr": 9e-4},
        overrides={
            "model.block": "prenorm",
            "model.norm": "batch",
            "model.mlp": "none",
            "model.dropout": 0.05,
            "optim.lr": 4.5e-3,
            "optim.weight_decay": 0.03,
        },
        note="S5's Pathfinder script (lindermanlab/S5 bin/run_experiments/run_lra_pathfinder.sh): pre-norm "
        "BatchNorm, P 256, J 8, bidirectional, dropout 0.05, ssm_lr 9e-4, lr 5 x ssm_lr, wd 0.03, for every task "
        "(S5's per-task P, J, activation and lr are not applied: ListOps uses P 16, half_glu2, lr 3e-3, wd 0.04); "
        "the task config's width, depth, batch and schedule",
    ),
)
class S5(Mixer):
    def __init__(
        self,
        d_model: int,
        d_state: int = 256,
        blocks: int = 8,
        init: str = "legs",
        discretization: str = "zoh",
        conj_sym: bool | None = None,
        C_init: str = "trunc_standard_normal",
        activation: str = "half_glu1",
        dropout: float = 0.0,
        bidirectional: bool = False,
        clip_eigs: bool = False,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        ssm_lr: float = 1e-3,
        scan: str = "auto",
        backend: str = "auto",
    ):
        super().__init__(d_model)
        name = "s5"
        check_int(name, "d_state", d_state, 1)
        check_int(name, "blocks", blocks, 1)
        if init not in S5_INITS:
            raise ValueError(f"s5: init must be one of {S5_INITS}, got {init!r}")
        if conj_sym is None:
            conj_sym = init == "legs"  # PTD's eigenvalues come in no conjugate pairs (S5-PTD forces it off)
        check_bool(name, "conj_sym", conj_sym)
        if conj_sym and init == "ptd":
            raise ValueError(
                "s5: init='ptd' needs conj_sym=False (perturbed eigenvalues are not conjugate pairs)"
            )
        if d_state % blocks:
            raise ValueError(f"s5: d_state ({d_state}) must be a multiple of blocks ({blocks})")
        block = d_state // blocks
        if conj_sym and block % 2:
            raise ValueError(f"s5: with conj_sym, d_state / blocks must be even, got {block}")
        if discretization not in ("zoh", "bilinear"):
            raise ValueError(f"s5: discretization must be 'zoh' or 'bilinear', got {discretization!r}")
        if C_init not in C_INITS:
            raise ValueError(f"s5: C_init must be one of {C_INITS}, got {C_init!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"s5: activation must be one of {ACTIVATIONS}, got {activation!r}")
        check_float(name, "dropout", dropout, 0.0, 1.0)
        check_bool(name, "bidirectional", bidirectional)
        check_bool(name, "clip_eigs", clip_eigs)
        check_float(name, "dt_min", dt_min, 0.0, open_low=True)
        check_float(name, "dt_max", dt_max, dt_min)
        check_float(name, "ssm_lr", ssm_lr, 0.0, open_low=True)
        if scan not in SCANS:
            raise ValueError(f"s5: scan must be one of {SCANS}, got {scan!r}")
        self.d_state, self.blocks, self.init, self.discretization = d_state, blocks, init, discretization
        self.conj_sym, self.C_init, self.activation = conj_sym, C_init, activation
        self.bidirectional, self.clip_eigs, self.backend = bidirectional, clip_eigs, backend
        self.scan = scan

        lam, V, Vinv = block_init(init, block, blocks, conj_sym)
        self.n_modes = m = lam.shape[0]
        H = d_model
        # Draw order (seeded models depend on it): B, C (each direction), D, log_step.
        B = Vinv @ lecun_normal(d_state, H, fan_in=d_state).to(torch.complex128)  # [m, H]
        Cs = [self._init_C(V, H, d_state) for _ in range(2 if bidirectional else 1)]
        self.Lambda_re = _ssm_param(lam.real, ssm_lr)
        self.Lambda_im = _ssm_param(lam.imag, ssm_lr)
        self.B = _ssm_param(torch.view_as_real(B), ssm_lr)  # [m, H, 2]
        self.C = nn.Parameter(torch.view_as_real(torch.cat(Cs, 1)).float())  # [H, m or 2m, 2]
        self.D = nn.Parameter(torch.randn(H))
        self.log_step = _ssm_param(log_dt_init(m, dt_min, dt_max), ssm_lr)
        self.dropout = nn.Dropout(dropout)
        if activation in ("half_glu1", "half_glu2", "full_glu"):
            self.out2 = nn.Linear(H, H)
        if activation == "full_glu":
            self.out1 = nn.Linear(H, H)

    def _init_C(self, V, H, P):
        if self.C_init == "complex_normal":  # no V: drawn directly in the eigenbasis
            m = V.shape[1]
            return torch.complex(
                torch.randn(H, m, dtype=torch.float64), torch.randn(H, m, dtype=torch.float64)
            ) * (0.5**0.5)
        # trunc_standard_normal: S5 draws each row with lecun_normal over the row (fan_in P); lecun_normal over
        # the whole [H, P] matrix uses fan_in H (JAX's in_axis -2).
        fan_in = P if self.C_init == "trunc_standard_normal" else H
        C = lecun_normal(H, P, 2, fan_in=fan_in)
        return torch.complex(C[..., 0], C[..., 1]) @ V

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, d_state={self.d_state}, blocks={self.blocks}, init={self.init}, "
            f"discretization={self.discretization}, conj_sym={self.conj_sym}, bidirectional={self.bidirectional}"
        )

    # -- the system ---------------------------------------------------------------------------------------

    def discrete(self, dtype=torch.float32):
        """(Lambda_bar [m], B_bar [m, H], C~ [H, m or 2m]) complex, computed in ``dtype`` (fp32 or fp64)."""
        re = self.Lambda_re.to(dtype)
        if self.clip_eigs:
            re = re.clamp(max=-1e-4)
        lam = torch.complex(re, self.Lambda_im.to(dtype))
        B = torch.view_as_complex(self.B.to(dtype).contiguous())
        C = torch.view_as_complex(self.C.to(dtype).contiguous())
        dt = torch.exp(self.log_step.to(dtype))
        if self.discretization == "zoh":
            Lbar = torch.exp(lam * dt)
            return Lbar, ((Lbar - 1) / lam)[:, None] * B, C
        bl = 1 / (1 - dt / 2 * lam)
        return bl * (1 + dt / 2 * lam), (bl * dt)[:, None] * B, C

    def _state_dtype(self, x):
        return torch.promote_types(x.dtype, torch.float32)

    def _readout(self, h: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
        """2 Re(C~ h) (Re with conj_sym off): h [..., m] -> [..., H]."""
        y = (h @ C.transpose(0, 1)).real
        return 2 * y if self.conj_sym else y

    def _real_form(self, x) -> bool:
        """Whether to scan in the rotating frame (``_scan_real``): ``scan="real"``, or ``"auto"`` on a GPU or
        with a GPU backend named (linear_scan's triton and cuda kernels take real inputs only)."""
        if self.scan != "auto":
            return self.scan == "real"
        return x.is_cuda or self.backend in ("triton", "cuda")

    def _scan(self, Lbar, Bu, h0=None, cu_seqlens=None, reverse=False, final=False, real=False):
        if not real:
            return ops.linear_scan(
                Lbar.expand_as(Bu),
                Bu,
                initial_state=h0,
                output_final_state=final,
                reverse=reverse,
                backend=self.backend,
                cu_seqlens=cu_seqlens,
            )
        return self._scan_real(Lbar, Bu, h0, cu_seqlens, reverse, final)

    def _scan_real(self, Lbar, Bu, h0, cu_seqlens, reverse, final):
        """x_t = Lbar x_{t-1} + Bu_t on real kernels. With Lbar = r e^{i theta} (r = |Lbar| > 0) and t the row
        position, g_t = e^{-i s theta t} x_t (s = 1, or -1 for the reverse scan x_t = Lbar x_{t+1} + Bu_t) obeys

            g_t = r g_{t-1 (t+1 reversed)} + e^{-i s theta t} Bu_t,      x_t = e^{i s theta t} g_t

        a recurrence with the REAL decay r, so Re g and Im g are one real ops.linear_scan over 2m channels (every
        backend: triton and cuda too). The phases are taken in fp64 (theta t grows with t). A document starting
        at row position p (packed) starts from g = e^{-i s theta (p - s)} x_0 (its state one step before p); its final
        x = e^{i s theta q} g_q at its last scanned position q."""
        B, T, m = Bu.shape
        sd = Bu.real.dtype
        r, theta = Lbar.abs(), torch.angle(Lbar.to(torch.complex128))
        sign = -1.0 if reverse else 1.0
        pos = torch.arange(T, device=Bu.device, dtype=torch.float64)
        # the state one step before position p: e^{-i s theta (p - s)} = e^{-i s theta p} e^{i theta}
        step_back = torch.polar(torch.ones_like(theta), theta)

        def phase(t):  # e^{i s theta t} [.., m] for positions t [..]
            return torch.polar(torch.ones_like(t[..., None] * theta), sign * t[..., None] * theta).to(
                Bu.dtype
            )

        Gu = Bu * phase(pos).conj()
        g0 = None
        if h0 is not None:
            if cu_seqlens is None:
                start = torch.full((h0.shape[0],), T - 1.0 if reverse else 0.0, dtype=torch.float64)
            else:
                cu = cu_seqlens.to(device=Bu.device, dtype=torch.float64)
                start = cu[1:] - 1 if reverse else cu[:-1]
            g0 = h0 * phase(start.to(Bu.device)).conj() * step_back.to(Bu.dtype)
            g0 = torch.cat([g0.real, g0.imag], -1)
        g, gT = ops.linear_scan(
            r.repeat(2).expand(B, T, 2 * m),
            torch.cat([Gu.real, Gu.imag], -1),
            initial_state=g0,
            output_final_state=final,
            backend=self.backend,
            reverse=reverse,
            cu_seqlens=cu_seqlens,
        )
        h = torch.complex(g[..., :m], g[..., m:]) * phase(pos)
        if not final:
            return h, None
        if cu_seqlens is None:
            last = torch.full((B,), 0.0 if reverse else T - 1.0, dtype=torch.float64)
        else:
            cu = cu_seqlens.to(dtype=torch.float64)
            last = cu[:-1] if reverse else cu[1:] - 1
        hT = torch.complex(gT[..., :m].to(sd), gT[..., m:].to(sd)) * phase(last.to(Bu.device))
        return h, hT

    def ssm(self, x, h0=None, cu_seqlens=None, final=False):
        """The SSM alone, before the activation: y [B, T, H] (in the state dtype) and the final state x_T
        [B or N, m] complex when ``final``; h0 [B or N, m] complex or None."""
        sd = self._state_dtype(x)
        Lbar, Bbar, C = self.discrete(sd)
        u = x.to(sd)
        Bu = u.to(Bbar.dtype) @ Bbar.transpose(0, 1)  # [B, T, m]
        m, real = self.n_modes, self._real_form(x)
        h, hT = self._scan(Lbar, Bu, h0, cu_seqlens, final=final, real=real)
        y = self._readout(h, C[:, :m])
        if self.bidirectional:
            hb, _ = self._scan(Lbar, Bu, cu_seqlens=cu_seqlens, reverse=True, real=real)
            y = y + self._readout(hb, C[:, m:])
        return y + self.D.to(sd) * u, hT

    def _finish(self, y: torch.Tensor, dtype) -> torch.Tensor:
        """S5's activation and dropout (lindermanlab/S5 SequenceLayer)."""
        y = y.to(dtype)
        if self.activation == "gelu":
            return self.dropout(F.gelu(y))
        z = self.dropout(F.gelu(y))
        if self.activation == "half_glu1":
            out = z * torch.sigmoid(self.out2(z))
        elif self.activation == "half_glu2":
            out = y * torch.sigmoid(self.out2(z))
        else:
            out = self.out1(z) * torch.sigmoid(self.out2(z))
        return self.dropout(out)

    # -- the contract -------------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
        """y [B, T, d_model]; with ``cu_seqlens``, x [1, T, d_model] packs documents and each is mixed alone
        (bidirectional too: the backward scan starts at each document's end)."""
        self.check_input(x)
        self.check_packed(x, cu_seqlens)
        return self._finish(self.ssm(x, cu_seqlens=cu_seqlens)[0], x.dtype)

    def prefill(
        self, x: torch.Tensor, state: State | None = None, cu_seqlens: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, State]:
        """y and the state after the last token. With ``cu_seqlens`` (x [1, T, d_model] packing N documents),
        ``state`` and the returned state hold one row per document, [N, m, 2]."""
        self.check_input(x)
        self.check_decodable()
        if cu_seqlens is not None:
            self.check_packed(x, cu_seqlens, state, ("ssm",))
        elif state is not None:
            self.check_state(state, x.shape[0], ("ssm",))
        sd = self._state_dtype(x)
        h0 = None if state is None else torch.view_as_complex(state["ssm"].to(sd).contiguous())
        y, hT = self.ssm(x, h0, cu_seqlens, final=True)
        return self._finish(y, x.dtype), {"ssm": torch.view_as_real(hT).to(sd).contiguous()}

    def step(self, x_t: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        self.check_input(x_t, "x_t", 2)
        self.check_decodable()
        self.check_state(state, x_t.shape[0], ("ssm",))
        sd = self._state_dtype(x_t)
        Lbar, Bbar, C = self.discrete(sd)
        u = x_t.to(sd)
        s = Lbar * torch.view_as_complex(state["ssm"].to(sd).contiguous()) + u.to(Bbar.dtype) @ Bbar.T
        y = self._readout(s, C) + self.D.to(sd) * u
        return self._finish(y[:, None], x_t.dtype)[:, 0], {"ssm": torch.view_as_real(s).contiguous()}

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        dtype = torch.promote_types(dtype or torch.float32, torch.float32)
        return {"ssm": torch.zeros(batch_size, self.n_modes, 2, device=device, dtype=dtype)}

    def state_size(self, seq_len: int) -> int:
        return 2 * self.n_modes
