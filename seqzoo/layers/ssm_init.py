"""Initialisations of the S4 / S4D state matrices (Gu et al. 2022, S4; Gu et al. 2022, S4D; Gu et al. 2023,
How to Train Your HiPPO = HTTYH).

Every function returns complex tensors for N/2 modes, one of each conjugate pair (the layers add the conjugates
through 2 Re(.) or by restoring them), given the real state size N (even).

HiPPO measures (:func:`hippo`, the *training* convention of state-spaces/s4 ``src/models/hippo/hippo.py``
``transition()``, which the S4 layers use; its ``visualizations.py`` doubles LegT and FouT, see below):

- ``legs`` (scaled Legendre, S4's default): A[n, k] = -sqrt(2n+1) sqrt(2k+1) (n > k), -(n+1) (n = k), 0 (n < k);
  B[n] = sqrt(2n+1); P = sqrt(n + 1/2) (rank 1).
- ``legt`` (translated Legendre = LMU up to normalisation), *halved* for timescale correctness:
  A[n, k] = -1/2 sqrt(2n+1) sqrt(2k+1) (1 if n >= k else (-1)^(n-k)), B[n] = 1/2 sqrt(2n+1);
  P: **rank 2**, sqrt(2n+1)/sqrt(2) on the odd n (row 0) and on the even n (row 1).
- ``lagt`` (translated Laguerre): A = I/2 - tril(1), B = 1; P = sqrt(1/2) (rank 1).
- ``fout`` (S4-FouT, truncated Fourier on a sliding window): with d = (0, 0, 1, 0, 2, 0, 3, ...) (N-1 entries),
  A = pi (-diag(d, +1) + diag(d, -1)) - B B^T, B = (1, 0, sqrt2, 0, sqrt2, 0, ...); P = B (rank 1). A + P P^T
  is skew-symmetric: every eigenvalue of the diagonal part has real part exactly 0, and the zero frequency gives
  one zero eigenvalue (state 1 is decoupled and never driven).
- ``foud`` (diagonal Fourier with decay): A = 2 pi (-diag(d, +1) + diag(d, -1)) - I/2, B as FouT; P = 0 (A is
  already normal).
  (hippo.py's ``visualizations.py`` uses 2 pi and B scaled by 2 for FouT and the unhalved LegT: both are the
  training matrices times 2, i.e. the same system run with twice the step.)

- :func:`rank_correction`: the P [rank, N] with A + P^T P normal (``sum_r P_r P_r^T``).
- :func:`nplr`: A = V (Lambda - P~^T conj(P~)) V^*, conjugate pairs restored; returns Lambda [N/2],
  P~ = V^* P [rank, N/2], B~ = V^* B [N/2] and V [N, N/2]. A + P^T P = w I + S with S real skew-symmetric
  (w = the mean of its diagonal), so Lambda = w + i eig(-i S) comes from a Hermitian eigendecomposition (stable,
  V unitary). The N/2 eigenvalues with *positive* imaginary part are kept (hippo.py keeps the negative ones: the
  conjugates, which describe the same real system). FouT/FouD's zero eigenvalue (a 2-dim null space of S) gets
  the hand-set eigenvector (e_0 - i e_1)/sqrt2, as hippo.py does, so that it and its conjugate span it.
  ``B_clip`` clips Im(B~) to [-B_clip, B_clip] (the repo's option; HTTYH uses 2).
- :func:`nplr_legs`: the LegS case of :func:`nplr` as (Lambda, P~ [N/2], B~) (S4's original init).
- :func:`dplr_init`: per-SSM (Lambda, P, B) for the S4 layer's ``init``, including the repo's ``hippo`` mix
  (half the SSM copies LegS, half FouT).
- :func:`s4d_init`: "legs" (the diagonal part Lambda of the LegS NPLR, B = V^* B), "foud" (FouD's, already
  diagonal), "lin" (A = -1/2 + i pi n), "inv" (A = -1/2 + i N/pi (N/(2n+1) - 1)), "inv2" (-1/2 + i N/pi (N/(n+1)
  - 1)), "quad" (-1/2 + i (2n+1)^2 / pi), "real" (A = -(n+1)); B = 1 except for "legs" and "foud".

Step sizes:
- :func:`dt_range`: the HTTYH timescale rule, (dt_min, dt_max) = (1/max_dependency, 1/min_dependency).
- :func:`log_dt_init`: log dt uniform in [log dt_min, log dt_max] (1e-3, 1e-1), one per channel; :func:`dt_init`
  for any shape (``dt_tie=False``: one per state) and the raw parameter of ``dt_transform`` "exp" or "softplus";
  :func:`log_dt_from_param` maps it back to the log dt the kernel ops take.
- :func:`dt_bias_init`, :func:`a_log_init`: Mamba-2's per-head step-size bias (softplus(bias) log-uniform in
  [dt_min, dt_max], floored) and log decay rate (A uniform in [1, 16]), which Gated DeltaNet reuses.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

S4D_INITS = ("legs", "lin", "inv", "real", "foud", "inv2", "quad", "legs-ptd")
HIPPO_MEASURES = ("legs", "legt", "lagt", "fout", "foud")
# The S4 layer's inits: a measure, or "hippo" (the repo's combination: half the SSM copies legs, half fout).
S4_INITS = HIPPO_MEASURES + ("hippo",)
DT_TRANSFORMS = ("exp", "softplus")
# Natural rank of each measure's correction P (legt needs 2; foud has none, stored as one zero row).
MEASURE_RANK = {"legs": 1, "legt": 2, "lagt": 1, "fout": 1, "foud": 1}


def _check_n(n: int) -> None:
    if not isinstance(n, int) or n < 2 or n % 2:
        raise ValueError(f"state size N must be an even int >= 2, got {n!r}")


def _check_measure(measure: str) -> None:
    if measure not in HIPPO_MEASURES:
        raise ValueError(f"measure must be one of {HIPPO_MEASURES}, got {measure!r}")


def hippo_legs(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    q = torch.sqrt(2 * torch.arange(n, dtype=torch.float64) + 1)
    A = -torch.tril(q[:, None] * q[None, :], -1) - torch.diag(torch.arange(n, dtype=torch.float64) + 1)
    return A, q.clone()


def _fourier_B(n: int) -> torch.Tensor:
    B = torch.zeros(n, dtype=torch.float64)
    B[0::2] = math.sqrt(2.0)
    B[0] = 1.0
    return B


def _fourier_skew(n: int, scale: float) -> torch.Tensor:
    """scale * (-diag(d, +1) + diag(d, -1)), d = (0, 0, 1, 0, 2, 0, ...): cos/sin pairs (2k, 2k+1) at frequency k."""
    freqs = torch.arange(n // 2, dtype=torch.float64)
    d = torch.stack([torch.zeros_like(freqs), freqs], -1).reshape(-1)[1:]
    return scale * (-torch.diag(d, 1) + torch.diag(d, -1))


def hippo(measure: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(A [N, N], B [N]) float64 of a HiPPO measure, in the training convention of state-spaces/s4's hippo.py
    ``transition()`` (LegT halved, FouT with pi); see the module docstring for the matrices."""
    _check_measure(measure)
    _check_n(n)
    q = torch.arange(n, dtype=torch.float64)
    if measure == "legs":
        return hippo_legs(n)
    if measure == "legt":
        R = torch.sqrt(2 * q + 1)
        i, j = q[:, None], q[None, :]
        sign = torch.where(i >= j, torch.ones_like(i - j), (-1.0) ** (i - j))
        return -0.5 * R[:, None] * sign * R[None, :], 0.5 * R
    if measure == "lagt":
        eye = torch.eye(n, dtype=torch.float64)
        return eye / 2 - torch.tril(torch.ones(n, n, dtype=torch.float64)), torch.ones(n, dtype=torch.float64)
    B = _fourier_B(n)
    if measure == "fout":
        return _fourier_skew(n, math.pi) - B[:, None] * B[None, :], B
    return _fourier_skew(n, 2 * math.pi) - 0.5 * torch.eye(n, dtype=torch.float64), B  # foud


def rank_correction(measure: str, n: int, rank: int | None = None) -> torch.Tensor:
    """P [rank, N] float64 such that A + sum_r P_r P_r^T is normal (identity times a constant plus skew)."""
    _check_measure(measure)
    _check_n(n)
    natural = MEASURE_RANK[measure]
    rank = natural if rank is None else rank
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < natural:
        raise ValueError(f"rank must be an int >= {natural} for measure {measure!r}, got {rank!r}")
    q = torch.arange(n, dtype=torch.float64)
    if measure == "legs":
        P = torch.sqrt(q + 0.5)[None]
    elif measure == "legt":
        R = torch.sqrt(2 * q + 1) * 2**-0.5  # halved like the matrix
        odd = R.clone()
        odd[0::2] = 0.0
        even = R.clone()
        even[1::2] = 0.0
        P = torch.stack([odd, even])
    elif measure == "lagt":
        P = torch.full((1, n), 0.5**0.5, dtype=torch.float64)
    elif measure == "fout":
        P = _fourier_B(n)[None]
    else:  # foud: already normal
        P = torch.zeros(1, n, dtype=torch.float64)
    return torch.cat([P, P.new_zeros(rank - natural, n)])


def nplr(
    measure: str, n: int, rank: int | None = None, B_clip: float | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(Lambda [N/2], P~ [rank, N/2], B~ [N/2], V [N, N/2]) complex128 with, conjugates restored
    (V_f = [V, conj V], Lambda_f = [Lambda, conj Lambda], P~_f = [P~, conj P~]):

        A = V_f (diag(Lambda_f) - P~_f^T conj(P~_f)) V_f^*,   B = V_f B~_f = 2 Re(V B~),   P = 2 Re(V P~^T)^T

    for the measure's (A, B) = :func:`hippo` and P = :func:`rank_correction` (``rank`` pads P with zero rows).
    ``B_clip``: clip Im(B~) to [-B_clip, B_clip] (HTTYH's option; then B is no longer the HiPPO B exactly).
    Computed on the CPU whatever the default device (a model built under ``torch.device("meta")`` still needs
    the numbers: the eigen-decomposition reads some of them)."""
    with torch.device("cpu"):
        return _nplr(measure, n, rank, B_clip)


def _nplr(measure: str, n: int, rank: int | None, B_clip: float | None):
    A, B = hippo(measure, n)
    P = rank_correction(measure, n, rank)
    if B_clip is not None and not (isinstance(B_clip, (int, float)) and B_clip > 0):
        raise ValueError(f"B_clip must be a positive number or None, got {B_clip!r}")
    AP = A + P.T @ P
    w = AP.diagonal().mean()
    if w.abs() < 1e-12 * max(1.0, AP.abs().max().item()):
        w = torch.zeros_like(w)  # LegT, LagT, FouT: Re(Lambda) = 0 exactly, not the rounding of sqrt(x)^2 - x
    S = AP - w * torch.eye(n, dtype=torch.float64)
    if (S + S.T).abs().max() > 1e-9 * max(1.0, S.abs().max().item()):
        raise ValueError(f"nplr: A + P^T P of measure {measure!r} is not a multiple of I plus a skew matrix")
    # S real skew-symmetric: -i S is Hermitian, real eigenvalues in +- pairs, unitary eigenvectors.
    evals, V = torch.linalg.eigh(-1j * S.to(torch.complex128))
    keep = torch.argsort(evals, descending=True)[: n // 2]  # the positive imaginary parts (and one zero)
    evals, V = evals[keep], V[:, keep]
    tol = 1e-8 * max(1.0, evals.abs().max().item())
    if n >= 4 and evals[-2].abs() < tol:
        raise ValueError(f"nplr: measure {measure!r} has more than one zero eigenvalue pair")
    if evals[-1].abs() < tol:
        # A zero eigenvalue (FouT, FouD: the frequency-0 pair, states 0 and 1): eigh returns any basis of the
        # null space; pick (e_0 - i e_1)/sqrt2 so that it and its conjugate span it (hippo.py's hand-set vector).
        v = torch.zeros(n, dtype=torch.complex128)
        v[0], v[1] = 2**-0.5, -1j * 2**-0.5
        if (S.to(torch.complex128) @ v).abs().max() > tol:
            raise ValueError(f"nplr: the zero eigenvalue of measure {measure!r} is not on states 0 and 1")
        V = V.clone()
        V[:, -1] = v
        evals = evals.clone()
        evals[-1] = 0.0
    lam = torch.complex(w.expand(n // 2).clone(), evals)
    Vh = V.conj().T
    Bt = Vh @ B.to(torch.complex128)
    if B_clip is not None:
        Bt = torch.complex(Bt.real, Bt.imag.clamp(-B_clip, B_clip))
    return lam, P.to(torch.complex128) @ V.conj(), Bt, V


def nplr_legs(n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(Lambda, P~, B~) [N/2] complex128 such that the system with both conjugates is similar to HiPPO-LegS:
    :func:`nplr` of ``legs`` (rank 1)."""
    _check_n(n)
    lam, P, B, _ = nplr("legs", n)
    return lam, P[0], B


def dplr_init(
    init: str, n: int, h: int, rank: int | None = None, B_clip: float | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(Lambda [h, N/2], P~ [rank, h, N/2], B~ [h, N/2]) complex128 for h SSM copies: one measure's :func:`nplr`
    on every copy, or ``hippo`` (state-spaces/s4's ``combination``): copies 0..ceil(h/2)-1 LegS, the rest FouT.
    ``rank`` defaults to the largest rank the inits need (legt: 2)."""
    if init not in S4_INITS:
        raise ValueError(f"init must be one of {S4_INITS}, got {init!r}")
    parts = {"legs": (h + 1) // 2, "fout": h // 2} if init == "hippo" else {init: h}
    rank = max(MEASURE_RANK[m] for m in parts) if rank is None else rank
    lams, Ps, Bs = [], [], []
    for measure, copies in parts.items():
        lam, P, B, _ = nplr(measure, n, rank, B_clip)
        lams.append(lam.expand(copies, -1))
        Ps.append(P[:, None].expand(-1, copies, -1))
        Bs.append(B.expand(copies, -1))
    return torch.cat(lams), torch.cat(Ps, 1), torch.cat(Bs)


def s4d_init(kind: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) [N/2] complex128 for the diagonal SSM of S4D."""
    _check_n(n)
    m = torch.arange(n // 2, dtype=torch.float64)
    half = torch.full_like(m, -0.5)
    ones = torch.ones(n // 2, dtype=torch.complex128)
    if kind == "legs":
        lam, _, B = nplr_legs(n)
        return lam, B
    if kind == "foud":
        lam, _, B, _ = nplr("foud", n)
        return lam, B
    if kind == "lin":
        return torch.complex(half, math.pi * m), ones
    if kind == "inv":
        return torch.complex(half, n / math.pi * (n / (2 * m + 1) - 1)), ones
    if kind == "inv2":
        return torch.complex(half, n / math.pi * (n / (m + 1) - 1)), ones
    if kind == "quad":
        return torch.complex(half, (2 * m + 1) ** 2 / math.pi), ones
    if kind == "real":
        return torch.complex(-(m + 1), torch.zeros_like(m)), ones
    if kind == "legs-ptd":  # S4-PTD: perturb-then-diagonalize of LegS of size N/2 (seqzoo/layers/ptd.py)
        from .ptd import s4d_legs_ptd

        return s4d_legs_ptd(n)
    raise ValueError(f"init must be one of {S4D_INITS}, got {kind!r}")


def dt_range(min_dependency: float, max_dependency: float) -> tuple[float, float]:
    """(dt_min, dt_max) = (1 / max_dependency, 1 / min_dependency): the timescale rule of How to Train Your HiPPO.

    An SSM with step dt sees dependencies of about 1/dt steps: the FouT / LegT kernels are (truncated) bases on a
    window of 2/dt steps in the training convention (1/dt in visualizations.py's), and the TI-LegS kernel decays
    on a scale of about 1/dt steps. So to cover dependencies from ``min_dependency`` to ``max_dependency`` steps,
    draw log dt uniformly in [log(1/max_dependency), log(1/min_dependency)]. S4's default (1e-3, 1e-1) is
    ``dt_range(10, 1000)``; the s4 repo's Path-X (16384 steps) config lowers dt_min to 1e-4."""
    for name, v in (("min_dependency", min_dependency), ("max_dependency", max_dependency)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0 or math.isinf(v):
            raise ValueError(f"dt_range: {name} must be a positive finite number of steps, got {v!r}")
    if min_dependency > max_dependency:
        raise ValueError(
            f"dt_range: need min_dependency <= max_dependency, got {min_dependency} > {max_dependency}"
        )
    return 1.0 / max_dependency, 1.0 / min_dependency


def log_dt_init(h, dt_min: float = 1e-3, dt_max: float = 1e-1, generator=None) -> torch.Tensor:
    """log dt [h] (or of shape h, a tuple) float64, uniform in [log dt_min, log dt_max]."""
    if not 0 < dt_min <= dt_max:
        raise ValueError(f"need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
    u = torch.rand(h, generator=generator, dtype=torch.float64)
    return math.log(dt_min) + u * (math.log(dt_max) - math.log(dt_min))


def dt_init(shape, dt_min=1e-3, dt_max=1e-1, transform="exp", generator=None) -> torch.Tensor:
    """The raw step-size parameter (float64) of ``shape`` ([H] tied, [H, N/2] with ``dt_tie=False``) for
    ``transform``: "exp" stores log dt (dt = exp(p)), "softplus" stores softplus^-1(dt) (dt = softplus(p), the s4
    repo's current default); dt is log-uniform in [dt_min, dt_max] either way (the same draws)."""
    if transform not in DT_TRANSFORMS:
        raise ValueError(f"dt_transform must be one of {DT_TRANSFORMS}, got {transform!r}")
    log_dt = log_dt_init(shape, dt_min, dt_max, generator)
    if transform == "exp":
        return log_dt
    dt = torch.exp(log_dt)
    return dt + torch.log(-torch.expm1(-dt))  # softplus^-1


def log_dt_from_param(p: torch.Tensor, transform: str) -> torch.Tensor:
    """log dt from the raw parameter of :func:`dt_init` (what the kernel ops take)."""
    if transform == "exp":
        return p
    # log softplus(p), which is p itself (to rounding) where softplus(p) = log1p(e^p) would underflow
    return torch.where(p > -30, torch.log(F.softplus(p.clamp(min=-30))), p)


def dt_bias_init(
    h: int, dt_min: float = 1e-3, dt_max: float = 1e-1, dt_init_floor: float = 1e-4
) -> torch.Tensor:
    """[h] fp32 biases b with softplus(b) = dt, dt log-uniform in [dt_min, dt_max] and floored at dt_init_floor
    (Mamba-2's dt_bias): b = softplus^-1(dt) = dt + log(1 - exp(-dt))."""
    if not 0 < dt_min <= dt_max:
        raise ValueError(f"need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
    if not dt_init_floor >= 0:
        raise ValueError(f"need dt_init_floor >= 0, got dt_init_floor={dt_init_floor}")
    dt = torch.exp(log_dt_init(h, dt_min, dt_max)).clamp(min=dt_init_floor)
    return (dt + torch.log(-torch.expm1(-dt))).float()


def a_log_init(h: int, a_min: float = 1.0, a_max: float = 16.0) -> torch.Tensor:
    """[h] fp32 log A with A uniform in [a_min, a_max] (Mamba-2's A_init_range); the decay rate is -exp(A_log)."""
    if not 0 < a_min <= a_max:
        raise ValueError(f"a_init_range: need 0 < a_min <= a_max, got a_min={a_min}, a_max={a_max}")
    return torch.empty(h, dtype=torch.float32).uniform_(a_min, a_max).log()
