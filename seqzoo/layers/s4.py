"""``s4`` and ``s4d``: structured state space layers (Gu et al. 2022, S4; Gu et al. 2022, S4D).

Each of the H = d_model channels is its own linear SSM with N real states (N/2 complex modes kept, one of
each conjugate pair), applied as a long convolution in training and as a recurrence in decoding:

    k = ssm_kernel(T)                                  # [H, T]: ops.s4d_kernel / ops.s4_kernel
    v_t = sum_{s<=t} k[:, t-s] x_s + D x_t            # ops.fft_conv; both directions when bidirectional
    y = out(dropout(GELU(v)))                          # out: Linear(H, H), or Linear(H, 2H) then GLU

s4d: diagonal A (inits "legs", "lin", "inv", "real"), ZOH or bilinear discretisation; the recurrence is
x_t = Abar x_{t-1} + Bbar u_t, y_t = 2 Re(sum_n C x_t), with the same Abar, Bbar as the kernel.
s4: A = Lambda - P P^* (HiPPO-LegS in normal-plus-low-rank form, conjugate pairs restored), bilinear; the
trained C is the paper's C~ = C (I - Abar^l_max), and decoding runs the dense 2N x 2N bilinear step with
C = C~ (I - Abar^l_max)^{-1}. Sequences longer than l_max get the kernel at the next power-of-two multiple of
l_max, with C~ re-derived from C so the convolution still equals the recurrence.

The state is {"ssm": [B, H, N/2, 2]}: the kept complex modes as (real, imag), in fp32 (fp64 for fp64 models).
Packed documents (``cu_seqlens``, x [1, T, d_model]): one kernel as long as the longest document, each document
convolved alone with its first L_n taps (``ops.fft_conv(..., cu_seqlens=)``; the bidirectional kernel's
backward half starts at each document's end); ``prefill`` takes and returns one state row per document.
The kernel for length L is the first L taps of any longer one (S4 up to l_max; past it, from C~ re-derived),
so a document gets the kernel it gets alone.

The SSM parameters (A, dt, B, and P for s4) carry ``_optim = {"lr": 1e-3, "weight_decay": 0.0}``, which the
training recipe's ``param_groups`` honours, as the papers train them.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .. import ops
from ..ops._varlen import positions_from_cu_seqlens, seq_idx_from_cu_seqlens
from ..ops.s4.reference import discretize_diagonal, dplr_dense
from ..registry import LRASettings, register_mixer
from .base import Mixer, State
from .ssm_init import (
    DT_TRANSFORMS,
    MEASURE_RANK,
    S4_INITS,
    S4D_INITS,
    dplr_init,
    dt_init,
    log_dt_from_param,
    s4d_init,
)

SSM_OPTIM = {"lr": 1e-3, "weight_decay": 0.0}
REAL_TRANSFORMS = ("exp", "relu", "none")
# Re(A) of a mode whose A is exactly 0 (FouT's zero frequency) and the floor of -Re(A) under "exp": the s4
# repo's inv_transform clamp. At A = 0 the bilinear Abar has eigenvalue 1, so I - Abar^L (S4's C~) is singular.
REAL_FLOOR = 1e-4


def _longest(bounds: list[int]) -> int:
    return max(e - s for s, e in zip(bounds[:-1], bounds[1:]))


def _ssm_param(value: torch.Tensor) -> nn.Parameter:
    p = nn.Parameter(value.float())
    p._optim = dict(SSM_OPTIM)
    return p


class _SSMLayer(Mixer):
    """What S4 and S4D share: the convolution, the activation and output, and the state checks."""

    def __init__(self, d_model, d_state, output, dropout, bidirectional, backend):
        super().__init__(d_model)
        name = type(self).mixer_name
        if not isinstance(d_state, int) or d_state < 2 or d_state % 2:
            raise ValueError(f"{name}: d_state must be an even int >= 2, got {d_state!r}")
        if output not in ("linear", "glu"):
            raise ValueError(f"{name}: output must be 'linear' or 'glu', got {output!r}")
        if not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise ValueError(f"{name}: dropout must be in [0, 1), got {dropout!r}")
        if not isinstance(bidirectional, bool):
            raise TypeError(f"{name}: bidirectional must be a bool, got {type(bidirectional).__name__}")
        self.d_state, self.output, self.bidirectional, self.backend = d_state, output, bidirectional, backend
        # A bidirectional layer runs a second SSM backwards in time: 2H kernels.
        self.n_kernels = d_model * (2 if bidirectional else 1)
        self.D = nn.Parameter(torch.randn(d_model))
        self.dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(d_model, d_model * (2 if output == "glu" else 1))

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, d_state={self.d_state}, output={self.output}, "
            f"bidirectional={self.bidirectional}"
        )

    def _kernel(self, T: int) -> torch.Tensor:  # [n_kernels, T]
        raise NotImplementedError

    def _finish(self, v: torch.Tensor, dtype) -> torch.Tensor:
        y = self.out_proj(self.dropout(F.gelu(v.to(dtype))))
        return F.glu(y, -1) if self.output == "glu" else y

    def _conv(self, x: torch.Tensor, cu_seqlens=None, bounds=None) -> torch.Tensor:
        # Packed: one kernel as long as the longest document, each document convolved alone with its first L_n
        # taps (ops.fft_conv's cu_seqlens). The kernel for length L is the first L taps of any longer one (S4D's
        # at every length; S4's up to l_max, and past it the same taps from the re-derived C~), so each
        # document gets the kernel it gets alone.
        T = x.shape[1] if bounds is None else _longest(bounds)
        K = self._kernel(T)
        if self.bidirectional:
            K = K.view(2, self.d_model, -1)
        return ops.fft_conv(x, K, self.D, bidirectional=self.bidirectional, cu_seqlens=cu_seqlens)

    def forward(self, x: torch.Tensor, cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
        """y [B, T, d_model]; with ``cu_seqlens``, x [1, T, d_model] packs documents and each is mixed alone
        (bidirectional too: the backward SSM starts at each document's end)."""
        self.check_input(x)
        bounds = self.check_packed(x, cu_seqlens)
        return self._finish(self._conv(x, cu_seqlens, bounds), x.dtype)

    def prefill(
        self, x: torch.Tensor, state: State | None = None, cu_seqlens: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, State]:
        """y and the state after the last token. With ``cu_seqlens`` (x [1, T, d_model] packing N documents),
        ``state`` and the returned state hold one row per document, [N, H, N/2, 2]: each document's own."""
        bounds = self._begin(x, state, 3, cu_seqlens)
        v = self._conv(x, cu_seqlens, bounds)
        sd = self._state_dtype(x)
        if bounds is None:
            v, new = self._prefill_state(x.to(sd), v, state)
        else:
            v, new = self._prefill_state_packed(x.to(sd), v, state, cu_seqlens, bounds)
        return self._finish(v, x.dtype), {"ssm": new}

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        dtype = torch.promote_types(dtype or torch.float32, torch.float32)
        return {
            "ssm": torch.zeros(batch_size, self.d_model, self.d_state // 2, 2, device=device, dtype=dtype)
        }

    def state_size(self, seq_len: int) -> int:
        return self.d_model * self.d_state

    def _begin(self, x, state, ndim, cu_seqlens=None):
        """Check the input (and state); the boundaries of a packed x (None unpacked)."""
        self.check_input(x, "x" if ndim == 3 else "x_t", ndim)
        self.check_decodable()
        if cu_seqlens is not None:
            return self.check_packed(x, cu_seqlens, state, ("ssm",))
        if state is not None:
            self.check_state(state, x.shape[0], ("ssm",))
        return None

    @staticmethod
    def _documents(cu_seqlens, bounds, device):
        """Of a packed row: each position's document [T] and place in it [T], each document's length [N]."""
        cu = cu_seqlens.to(device)
        lengths = torch.tensor([e - s for s, e in zip(bounds[:-1], bounds[1:])], device=device)
        return seq_idx_from_cu_seqlens(cu), positions_from_cu_seqlens(cu), lengths

    def _state_dtype(self, x):
        return torch.promote_types(x.dtype, torch.float32)

    def _check_ssm_options(self, real_transform, dt_tie, dt_transform):
        name = type(self).mixer_name
        if real_transform not in REAL_TRANSFORMS:
            raise ValueError(
                f"{name}: real_transform must be one of {REAL_TRANSFORMS}, got {real_transform!r}"
            )
        if not isinstance(dt_tie, bool):
            raise TypeError(f"{name}: dt_tie must be a bool, got {type(dt_tie).__name__}")
        if dt_transform not in DT_TRANSFORMS:
            raise ValueError(f"{name}: dt_transform must be one of {DT_TRANSFORMS}, got {dt_transform!r}")
        self.real_transform, self.dt_tie, self.dt_transform = real_transform, dt_tie, dt_transform

    def _init_ssm(self, A, B, dt_min, dt_max, *, A_name="A", P=None, train_A_imag=True):
        """The SSM parameters both layers train, from the N/2 complex modes A, B ([N/2] or per SSM [n_kernels,
        N/2]; and S4's low-rank P, [R, N/2] or [R, n_kernels, N/2]), copied to every one of the n_kernels SSMs:

        - the step: ``log_dt`` (dt = exp, ``dt_transform="exp"``) or ``softplus_inv_dt`` (dt = softplus),
          [n_kernels], or [n_kernels, N/2] with ``dt_tie=False`` (one step per mode);
        - Re(A) = -exp(``log_{A_name}_real``) (``real_transform="exp"``: every mode stays stable whatever the
          optimiser does; -Re(A) is floored at 1e-4 at init), or -relu / minus ``{A_name}_decay`` ("relu",
          "none": Re(A) = 0 is exact, as FouT's diagonal has it);
        - ``{A_name}_imag`` (a zero buffer when not trained: S4D-Real), ``P_re``/``P_im`` when P is given
          ([n_kernels, N/2] at rank 1, [R, n_kernels, N/2] above), ``B_re``/``B_im``, and C (``C_re``/``C_im``,
          complex normal of unit variance, trained at the model's own lr; for S4 the paper's C~ = C (I -
          Abar^l_max)).

        The order here is the parameters' order in the state dict and the order the random draws are taken
        (the step, then C's real and imaginary parts): seeded models and saved checkpoints depend on it."""
        h, m = self.n_kernels, self.d_state // 2

        def per_kernel(v):
            return _ssm_param(v.expand(h, m).clone())

        shape = h if self.dt_tie else (h, m)
        self._dt_name = "log_dt" if self.dt_transform == "exp" else "softplus_inv_dt"
        setattr(self, self._dt_name, _ssm_param(dt_init(shape, dt_min, dt_max, self.dt_transform)))
        decay = -A.real
        # A mode at A = 0 exactly gets Re(A) = -1e-4 (see REAL_FLOOR); "exp" cannot hold 0 at all.
        decay = torch.where(A.abs() == 0, torch.full_like(decay, REAL_FLOOR), decay)
        self._real_name = f"log_{A_name}_real" if self.real_transform == "exp" else f"{A_name}_decay"
        if self.real_transform == "exp":
            setattr(self, self._real_name, per_kernel(torch.log(decay.clamp(min=REAL_FLOOR))))
        else:
            setattr(self, self._real_name, per_kernel(decay))
        if train_A_imag:
            setattr(self, f"{A_name}_imag", per_kernel(A.imag))
        else:
            self.register_buffer(f"{A_name}_imag", torch.zeros(h, m))
        if P is not None:
            if P.shape[0] == 1:  # rank 1: [n_kernels, N/2], as before rank R existed
                self.P_re, self.P_im = per_kernel(P[0].real), per_kernel(P[0].imag)
            else:
                r = P.shape[0]
                self.P_re = _ssm_param(P.real.expand(r, h, m).clone())
                self.P_im = _ssm_param(P.imag.expand(r, h, m).clone())
        self.B_re, self.B_im = per_kernel(B.real), per_kernel(B.imag)
        self.C_re = nn.Parameter(torch.randn(h, m) * 0.5**0.5)
        self.C_im = nn.Parameter(torch.randn(h, m) * 0.5**0.5)

    def _log_dt(self):
        """log dt [n_kernels] or [n_kernels, N/2], whatever the transform (the kernel ops take log dt)."""
        return log_dt_from_param(getattr(self, self._dt_name), self.dt_transform)

    def _real(self):
        """Re(A) [n_kernels, N/2] (<= 0 under every transform but "none")."""
        q = getattr(self, self._real_name)
        if self.real_transform == "exp":
            return -torch.exp(q)
        return -F.relu(q) if self.real_transform == "relu" else -q


@register_mixer(
    "s4d",
    description="diagonal structured state space (S4D): per-channel complex diagonal SSM as a long convolution",
    paper="Gu, Gupta, Goel, Re 2022, On the Parameterization and Initialization of Diagonal State Space Models",
    family="time-invariant SSM",
    demo=True,
    settings_source="Gu et al. 2022 (S4D): N 64, S4D-LegS init, ZOH",
    lm_mlp="gelu",
    test_kwargs={"d_state": 8},
    mqar_lr=1e-2,
    lra=LRASettings(note="S4D-LegS, the S4 paper's LRA settings"),
)
class S4D(_SSMLayer):
    def __init__(
        self,
        d_model: int,
        d_state: int = 64,
        init: str = "legs",
        discretization: str = "zoh",
        output: str = "glu",
        dropout: float = 0.0,
        bidirectional: bool = False,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        backend: str = "auto",
        dt_tie: bool = True,
        dt_transform: str = "exp",
    ):
        super().__init__(d_model, d_state, output, dropout, bidirectional, backend)
        self._check_ssm_options("exp", dt_tie, dt_transform)
        if init not in S4D_INITS:
            raise ValueError(f"s4d: init must be one of {S4D_INITS}, got {init!r}")
        if discretization not in ("zoh", "bilinear"):
            raise ValueError(f"s4d: discretization must be 'zoh' or 'bilinear', got {discretization!r}")
        self.init, self.discretization = init, discretization
        A, B = s4d_init(init, d_state)
        self._init_ssm(A, B, dt_min, dt_max, train_A_imag=init != "real")  # S4D-Real stays real

    def extra_repr(self) -> str:
        return super().extra_repr() + f", init={self.init}, discretization={self.discretization}"

    def _params(self):
        return (
            self._log_dt(),
            self._real(),
            self.A_imag,
            self.B_re,
            self.B_im,
            self.C_re,
            self.C_im,
        )

    def _kernel(self, T):
        return ops.s4d_kernel(*self._params(), T, self.discretization, backend=self.backend)

    def _system(self, dtype):
        log_dt, A_re, A_im, B_re, B_im, C_re, C_im = (p.to(dtype) for p in self._params())
        Abar, Bbar = discretize_diagonal(log_dt, A_re, A_im, B_re, B_im, self.discretization)
        return Abar, Bbar, torch.complex(C_re, C_im)

    @staticmethod
    def _powers(Abar, T):  # powers[h, n, j] = Abar^j, j = 0..T  (O(H N T) memory, prefill only)
        return torch.cumprod(
            torch.cat([torch.ones_like(Abar)[..., None], Abar[..., None].expand(-1, -1, T)], -1), -1
        )

    def _prefill_state(self, u, v, state):
        """v plus what the initial state adds, and the state after the last token (u: x in the state dtype)."""
        sd = u.dtype
        Abar, Bbar, C = self._system(sd)
        T = u.shape[1]
        powers = self._powers(Abar, T)
        # x_T = sum_s Abar^{T-1-s} Bbar u_s (+ Abar^T x_0)
        new = Bbar * torch.einsum("hns,bsh->bhn", powers[..., :T].flip(-1).to(C.dtype), u.to(C.dtype))
        if state is not None:
            x0 = torch.view_as_complex(state["ssm"].to(sd).contiguous())
            new = new + powers[..., T] * x0
            # y_t gains 2 Re(sum_n C Abar^{t+1} x_0)
            v = v + 2 * torch.einsum("hn,hnt,bhn->bth", C, powers[..., 1:], x0).real
        return v, torch.view_as_real(new).contiguous()

    def _prefill_state_packed(self, u, v, state, cu_seqlens, bounds):
        """``_prefill_state`` per document of a packed row u [1, T, H]: position t of document n (at place i,
        length L_n) adds Abar^(L_n-1-i) Bbar u_t to state row n, and row n of the initial state adds
        2 Re(C Abar^(i+1) x_0[n]) to y_t and Abar^L_n x_0[n] to the state."""
        sd = u.dtype
        Abar, Bbar, C = self._system(sd)
        seq, pos, lengths = self._documents(cu_seqlens, bounds, u.device)
        powers = self._powers(Abar, _longest(bounds))
        lag = lengths[seq] - 1 - pos  # [T]
        parts = Bbar * torch.einsum("hnt,th->thn", powers[..., lag].to(C.dtype), u[0].to(C.dtype))
        new = parts.new_zeros(len(bounds) - 1, *parts.shape[1:]).index_add(0, seq, parts)
        if state is not None:
            x0 = torch.view_as_complex(state["ssm"].to(sd).contiguous())  # [N, H, N/2]
            new = new + powers[..., lengths].permute(2, 0, 1) * x0
            v = v + 2 * torch.einsum("hn,hnt,thn->th", C, powers[..., pos + 1], x0[seq]).real[None]
        return v, torch.view_as_real(new).contiguous()

    def step(self, x_t: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        self._begin(x_t, state, 2)
        sd = self._state_dtype(x_t)
        Abar, Bbar, C = self._system(sd)
        u = x_t.to(sd)
        s = Abar * torch.view_as_complex(state["ssm"].to(sd).contiguous()) + Bbar * u[..., None]
        v = 2 * (C * s).sum(-1).real + self.D.to(sd) * u
        return self._finish(v[:, None], x_t.dtype)[:, 0], {"ssm": torch.view_as_real(s).contiguous()}


@register_mixer(
    "s4",
    description="structured state space (S4): HiPPO-LegS in diagonal-plus-low-rank form, Cauchy-kernel convolution",
    paper="Gu, Goel, Re 2022, Efficiently Modeling Long Sequences with Structured State Spaces",
    family="time-invariant SSM",
    settings_source="Gu et al. 2022: N 64, HiPPO-LegS, kernel length = the task's",
    seq_len_kwarg="l_max",
    lm_mlp="gelu",
    test_kwargs={"d_state": 8, "l_max": 8},
    mqar_lr=1e-2,
    lra=LRASettings(note="S4-LegS (NPLR), the S4 paper's LRA settings"),
)
class S4(_SSMLayer):
    def __init__(
        self,
        d_model: int,
        d_state: int = 64,
        l_max: int = 1024,
        init: str = "legs",
        output: str = "glu",
        dropout: float = 0.0,
        bidirectional: bool = False,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        backend: str = "auto",
        rank: int | None = None,
        real_transform: str = "exp",
        dt_tie: bool = True,
        dt_transform: str = "exp",
        B_clip: float | None = None,
    ):
        """``init``: a HiPPO measure in NPLR form ("legs", "legt" (rank 2), "lagt", "fout", "foud") or "hippo"
        (half the channels LegS, half FouT); ``rank`` of P (default: what the init needs); ``real_transform``
        of Re(Lambda) ("exp": -exp(p), floored at -1e-4 at init; "relu", "none": Re = 0 exact); ``dt_tie``
        (False: one dt per mode); ``dt_transform`` ("exp" or "softplus"); ``B_clip`` clips Im(V^* B) at init.
        See :mod:`seqzoo.layers.ssm_init`."""
        super().__init__(d_model, d_state, output, dropout, bidirectional, backend)
        if init not in S4_INITS:
            raise ValueError(f"s4: init must be one of {S4_INITS}, got {init!r}")
        if not isinstance(l_max, int) or l_max < 1:
            raise ValueError(f"s4: l_max must be a positive int, got {l_max!r}")
        need = 1 if init == "hippo" else MEASURE_RANK[init]
        if rank is not None and (not isinstance(rank, int) or isinstance(rank, bool) or rank < need):
            raise ValueError(f"s4: rank must be an int >= {need} for init {init!r} (or None), got {rank!r}")
        if B_clip is not None and (
            isinstance(B_clip, bool) or not isinstance(B_clip, (int, float)) or B_clip <= 0
        ):
            raise ValueError(f"s4: B_clip must be a positive number or None, got {B_clip!r}")
        self._check_ssm_options(real_transform, dt_tie, dt_transform)
        self.init, self.l_max, self.B_clip = init, l_max, B_clip
        lam, P, B = dplr_init(init, d_state, d_model, rank, B_clip)  # per channel
        if bidirectional:  # the backward SSM of channel c is kernel H + c: the same init
            lam, P, B = torch.cat([lam, lam]), torch.cat([P, P], 1), torch.cat([B, B])
        self.rank = P.shape[0]
        self._init_ssm(lam, B, dt_min, dt_max, A_name="Lambda", P=P)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", l_max={self.l_max}, init={self.init}, rank={self.rank}"

    def _params(self):
        return (
            self._log_dt(),
            self._real(),
            self.Lambda_imag,
            self.P_re,
            self.P_im,
            self.B_re,
            self.B_im,
            self.C_re,
            self.C_im,
        )

    def _kernel(self, T):
        params = self._params()
        L = self.l_max
        if T > L:
            while L < T:
                L *= 2
            # The trained C~ belongs to l_max; for length L use C (I - Abar^L), C = C~ (I - Abar^l_max)^{-1}.
            Abar, _, C = dplr_dense(*params, self.l_max)
            C = C - (C[:, None, :] @ torch.linalg.matrix_power(Abar, L))[:, 0]
            m = self.d_state // 2
            params = params[:-2] + (C[..., :m].real, C[..., :m].imag)
        return ops.s4_kernel(*params, L, backend=self.backend)[:, :T]

    def _system(self, dtype):
        # The dense system costs O(H N^3 log l_max) (solves and Abar^l_max): decoding reuses it for as long as
        # the parameters are unchanged (their version counters), outside autograd.
        key = (dtype, self.l_max) + tuple((p.data_ptr(), p._version, p.device) for p in self.parameters())
        cached = getattr(self, "_system_cache", None)
        if not torch.is_grad_enabled() and cached is not None and cached[0] == key:
            return cached[1]
        system = dplr_dense(*(p.to(dtype) for p in self._params()), self.l_max)
        if not torch.is_grad_enabled():
            self._system_cache = (key, system)
        return system

    @staticmethod
    def _full(x_half):  # restore the conjugate half of the state
        return torch.cat([x_half, x_half.conj()], -1)

    @staticmethod
    def _krylov(Abar, Bbar, T):
        """Abar^j Bbar, j = 0..T-1, [H, T, 2N] (a loop of T matrix-vector products; prefill only)."""
        kry = [Bbar]
        for _ in range(T - 1):
            kry.append((Abar @ kry[-1][..., None])[..., 0])
        return torch.stack(kry, 1)

    @staticmethod
    def _readout(C, Abar, T):
        """C Abar^(t+1), t = 0..T-1, [H, T, 2N]."""
        rows = [C]
        for _ in range(T):
            rows.append((rows[-1][:, None, :] @ Abar)[:, 0])
        return torch.stack(rows[1:], 1)

    def _prefill_state(self, u, v, state):
        """v plus what the initial state adds, and the state after the last token (u: x in the state dtype)."""
        sd = u.dtype
        Abar, Bbar, C = self._system(sd)
        T, m = u.shape[1], self.d_state // 2
        kry = self._krylov(Abar, Bbar, T)  # [H, T, 2N]
        u = u.to(C.dtype)
        new = torch.einsum("hsn,bsh->bhn", kry.flip(1), u)
        if state is not None:
            x0 = self._full(torch.view_as_complex(state["ssm"].to(sd).contiguous()))
            rows = self._readout(C, Abar, T)  # [H, T, 2N]
            v = v + torch.einsum("htn,bhn->bth", rows, x0).real
            new = new + torch.einsum("hij,bhj->bhi", torch.linalg.matrix_power(Abar, T), x0)
        return v, torch.view_as_real(new[..., :m]).contiguous()

    def _prefill_state_packed(self, u, v, state, cu_seqlens, bounds):
        """``_prefill_state`` per document of a packed row u [1, T, H]: position t of document n (at place i,
        length L_n) adds Abar^(L_n-1-i) Bbar u_t to state row n, and row n of the initial state adds
        Re(C Abar^(i+1) x_0[n]) to y_t and Abar^L_n x_0[n] to the state."""
        sd = u.dtype
        Abar, Bbar, C = self._system(sd)
        m, longest = self.d_state // 2, _longest(bounds)
        seq, pos, lengths = self._documents(cu_seqlens, bounds, u.device)
        kry = self._krylov(Abar, Bbar, longest)  # [H, longest, 2N]
        lag = lengths[seq] - 1 - pos  # [T]
        parts = torch.einsum("htn,th->thn", kry[:, lag], u[0].to(C.dtype))
        new = parts.new_zeros(len(bounds) - 1, *parts.shape[1:]).index_add(0, seq, parts)
        if state is not None:
            x0 = self._full(torch.view_as_complex(state["ssm"].to(sd).contiguous()))  # [N, H, 2N]
            rows = self._readout(C, Abar, longest)
            v = v + torch.einsum("htn,thn->th", rows[:, pos], x0[seq]).real[None]
            # Abar^L_n x_0[n], one matrix power per distinct length
            power = {n: torch.linalg.matrix_power(Abar, n) for n in set(lengths.tolist())}
            moved = [power[n] @ x0[i][..., None] for i, n in enumerate(lengths.tolist())]
            new = new + torch.stack(moved)[..., 0]
        return v, torch.view_as_real(new[..., :m]).contiguous()

    def step(self, x_t: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        self._begin(x_t, state, 2)
        sd = self._state_dtype(x_t)
        Abar, Bbar, C = self._system(sd)
        u = x_t.to(sd)
        s = self._full(torch.view_as_complex(state["ssm"].to(sd).contiguous()))
        s = torch.einsum("hij,bhj->bhi", Abar, s) + Bbar * u[..., None]
        v = (C * s).sum(-1).real + self.D.to(sd) * u
        m = self.d_state // 2
        return self._finish(v[:, None], x_t.dtype)[:, 0], {"ssm": torch.view_as_real(s[..., :m]).contiguous()}
