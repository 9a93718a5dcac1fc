"""Initialisations of the S4 / S4D state matrices (Gu et al. 2022, S4; Gu et al. 2022, S4D).

Every function returns complex tensors for N/2 modes, one of each conjugate pair (the layers add the conjugates
through 2 Re(.) or by restoring them), given the real state size N (even).

- :func:`hippo_legs`: the HiPPO-LegS matrix A [N, N] and B [N]:
  A[n, k] = -sqrt(2n+1) sqrt(2k+1) (n > k), -(n+1) (n = k), 0 (n < k);  B[n] = sqrt(2n+1).
- :func:`nplr_legs`: A = V (Lambda - P P^*) V^* with P[n] = sqrt(n + 1/2): A + P P^T = -I/2 + S, S skew-symmetric,
  so Lambda = -1/2 + i eig(-i S) comes from a Hermitian eigendecomposition (stable, V unitary). Returns the N/2
  eigenvalues with positive imaginary part and V^* P, V^* B on those modes.
- :func:`s4d_init`: "legs" (the diagonal part Lambda of the NPLR, B = V^* B), "lin" (A = -1/2 + i pi n),
  "inv" (A = -1/2 + i N/pi (N/(2n+1) - 1)), "real" (A = -(n+1)); B = 1 except for "legs".
- :func:`log_dt_init`: log dt uniform in [log dt_min, log dt_max] (1e-3, 1e-1).
- :func:`dt_bias_init`, :func:`a_log_init`: Mamba-2's per-head step-size bias (softplus(bias) log-uniform in
  [dt_min, dt_max], floored) and log decay rate (A uniform in [1, 16]), which Gated DeltaNet reuses.
"""

from __future__ import annotations

import math

import torch

S4D_INITS = ("legs", "lin", "inv", "real", "legs-ptd")


def _check_n(n: int) -> None:
    if not isinstance(n, int) or n < 2 or n % 2:
        raise ValueError(f"state size N must be an even int >= 2, got {n!r}")


def hippo_legs(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    q = torch.sqrt(2 * torch.arange(n, dtype=torch.float64) + 1)
    A = -torch.tril(q[:, None] * q[None, :], -1) - torch.diag(torch.arange(n, dtype=torch.float64) + 1)
    return A, q.clone()


def nplr_legs(n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(Lambda, P, B) [N/2] complex128 such that the system with both conjugates is similar to HiPPO-LegS."""
    _check_n(n)
    A, B = hippo_legs(n)
    P = torch.sqrt(torch.arange(n, dtype=torch.float64) + 0.5)
    S = A + P[:, None] * P[None, :]
    skew = S + 0.5 * torch.eye(n, dtype=torch.float64)  # S = -I/2 + skew
    # skew is real skew-symmetric, so -i skew is Hermitian: real eigenvalues, unitary eigenvectors.
    evals, V = torch.linalg.eigh(-1j * skew.to(torch.complex128))
    lam = -0.5 + 1j * evals
    keep = torch.argsort(evals, descending=True)[: n // 2]  # the positive imaginary parts
    V = V[:, keep]
    Vh = V.conj().T
    return lam[keep], Vh @ P.to(torch.complex128), Vh @ B.to(torch.complex128)


def s4d_init(kind: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) [N/2] complex128 for the diagonal SSM of S4D."""
    _check_n(n)
    m = torch.arange(n // 2, dtype=torch.float64)
    ones = torch.ones(n // 2, dtype=torch.complex128)
    if kind == "legs":
        lam, _, B = nplr_legs(n)
        return lam, B
    if kind == "lin":
        return torch.complex(torch.full_like(m, -0.5), math.pi * m), ones
    if kind == "inv":
        return torch.complex(torch.full_like(m, -0.5), n / math.pi * (n / (2 * m + 1) - 1)), ones
    if kind == "real":
        return torch.complex(-(m + 1), torch.zeros_like(m)), ones
    if kind == "legs-ptd":  # S4-PTD: perturb-then-diagonalize of LegS of size N/2 (seqzoo/layers/ptd.py)
        from .ptd import s4d_legs_ptd

        return s4d_legs_ptd(n)
    raise ValueError(f"init must be one of {S4D_INITS}, got {kind!r}")


def log_dt_init(h: int, dt_min: float = 1e-3, dt_max: float = 1e-1, generator=None) -> torch.Tensor:
    if not 0 < dt_min <= dt_max:
        raise ValueError(f"need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
    u = torch.rand(h, generator=generator, dtype=torch.float64)
    return math.log(dt_min) + u * (math.log(dt_max) - math.log(dt_min))


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
