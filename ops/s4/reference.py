"""Reference SSM kernels: every kernel materialises the full product, step by step.

The kernels are the ground truth the fast backends are tested against, so they compute in fp64 whatever the
inputs' dtype and return the inputs' working dtype (fp32 for fp16/bf16/fp32): in fp32 the dense S4 solve is
badly conditioned when L * dt is small (L = 1 or 2, or L = 16 with dt near 1e-3 lost ~1e-4 relative accuracy,
where the torch backend keeps 1e-7), and the powers Abar^l of S4D accumulate rounding over long kernels.

- :func:`s4d_kernel`: powers of the diagonal discrete state matrix, K[h, l] = 2 Re(sum_n C Bbar Abar^l).
- :func:`s4_kernel`: the dense DPLR system (conjugate pairs restored), C = C~ (I - Abar^L)^{-1}, then
  K[h, l] = C Abar^l Bbar, one matrix-vector product per l.
- :func:`fft_conv`: the explicit O(T^2) (Toeplitz) convolution.
"""

from __future__ import annotations

import torch


def _work(x):
    return x.to(torch.promote_types(x.dtype, torch.float32))


def step_sizes(log_dt):
    """dt [H, 1] (one per channel) or [H, N] (one per mode) from log_dt [H] or [H, N], in the working dtype."""
    dt = torch.exp(_work(log_dt))
    return dt[:, None] if dt.dim() == 1 else dt


def low_rank(P_re, P_im):
    """P [R, H, N] complex from P [H, N] (rank 1) or [R, H, N]."""
    P = torch.complex(_work(P_re), _work(P_im))
    return P[None] if P.dim() == 2 else P


def discretize_diagonal(log_dt, A_re, A_im, B_re, B_im, discretization):
    """Abar, Bbar [H, N] (complex) of the diagonal system x' = A x + B u with step dt = exp(log_dt)."""
    A = torch.complex(_work(A_re), _work(A_im))
    B = torch.complex(_work(B_re), _work(B_im))
    dt = step_sizes(log_dt)
    dtA = dt * A
    if discretization == "zoh":
        Abar = torch.exp(dtA)
        Bbar = (Abar - 1) / A * B
    else:  # bilinear
        Abar = (1 + dtA / 2) / (1 - dtA / 2)
        Bbar = dt / (1 - dtA / 2) * B
    return Abar, Bbar


def _in_fp64(kernel):
    """Run ``kernel`` on fp64 copies of its tensor arguments; return the result in the inputs' working dtype."""

    def run(*args, **kwargs):
        def up(a):
            return a.double() if isinstance(a, torch.Tensor) else a

        first = next(a for a in [*args, *kwargs.values()] if isinstance(a, torch.Tensor))
        out = kernel(*map(up, args), **{k: up(v) for k, v in kwargs.items()})
        return out.to(_work(first).dtype)

    run.__doc__, run.__name__, run.__wrapped__ = kernel.__doc__, kernel.__name__, kernel
    return run


@_in_fp64
def s4d_kernel(log_dt, A_re, A_im, B_re, B_im, C_re, C_im, L, discretization="zoh"):
    Abar, Bbar = discretize_diagonal(log_dt, A_re, A_im, B_re, B_im, discretization)
    C = torch.complex(_work(C_re), _work(C_im))
    w = C * Bbar
    power = torch.ones_like(Abar)
    cols = []
    for _ in range(L):
        cols.append(2 * (w * power).sum(-1).real)
        power = power * Abar
    return torch.stack(cols, -1)


def dplr_dense(log_dt, Lambda_re, Lambda_im, P_re, P_im, B_re, B_im, C_re, C_im, L):
    """The bilinear discrete system of S4 as dense complex matrices, conjugate pairs restored.

    P is [H, N] (rank 1) or [R, H, N]: A = diag(Lambda) - sum_r P_r P_r^*. log_dt [H] or [H, N] (one step per
    mode: x' = Delta (A x + B u) discretised with unit step, Delta = diag(dt)).
    Returns Abar [H, 2N, 2N], Bbar [H, 2N], C [H, 2N] with C = C~ (I - Abar^L)^{-1} (the op's C is C~), so that
    K[l] = C Abar^l Bbar for l < L and the recurrence x_t = Abar x_{t-1} + Bbar u_t, y_t = Re(C x_t) + D u_t
    gives the same outputs as the convolution.
    """

    def full(z):
        return torch.cat([z, z.conj()], -1)

    def cplx(re, im):
        return torch.complex(_work(re), _work(im))

    Lam, B, Ct = full(cplx(Lambda_re, Lambda_im)), full(cplx(B_re, B_im)), full(cplx(C_re, C_im))
    P = full(low_rank(P_re, P_im))  # [R, H, 2N]
    dt = step_sizes(log_dt).expand(Lam.shape[0], Lam.shape[1] // 2)
    dt = torch.cat([dt, dt], -1)  # [H, 2N]: a mode and its conjugate share their dt
    n = Lam.shape[-1]
    eye = torch.eye(n, dtype=Lam.dtype, device=Lam.device).expand(Lam.shape[0], n, n)
    A = torch.diag_embed(Lam) - torch.einsum("rhi,rhj->hij", P, P.conj())
    # x' = Delta (A x + B u), Delta = diag(dt), bilinear with unit step (dt tied: the usual step dt).
    dtA = dt[..., None] * A
    M = eye - dtA / 2
    Abar = torch.linalg.solve(M, eye + dtA / 2)
    Bbar = torch.linalg.solve(M, dt * B)
    AL = torch.linalg.matrix_power(Abar, L)
    # C (I - Abar^L) = C~  <=>  (I - Abar^L)^T C^T = C~^T
    C = torch.linalg.solve((eye - AL).transpose(-1, -2), Ct)
    return Abar, Bbar, C


@_in_fp64
def s4_kernel(log_dt, Lambda_re, Lambda_im, P_re, P_im, B_re, B_im, C_re, C_im, L):
    Abar, Bbar, C = dplr_dense(log_dt, Lambda_re, Lambda_im, P_re, P_im, B_re, B_im, C_re, C_im, L)
    v = Bbar
    cols = []
    for _ in range(L):
        cols.append((C * v).sum(-1).real)
        v = (Abar @ v[..., None])[..., 0]
    return torch.stack(cols, -1)


def fft_conv(u, K, D=None, bidirectional=False):
    b, t, h = u.shape
    u = _work(u)
    K = _work(K)
    idx = torch.arange(t, device=u.device)
    lag = idx[:, None] - idx[None, :]  # t - s
    Kc = K[0] if bidirectional else K
    L = Kc.shape[-1]

    def gather(k, lags, valid):
        padded = torch.cat([k, k.new_zeros(h, 1)], -1)  # index L reads zero
        lags = torch.where(valid & (lags < L), lags, torch.full_like(lags, L))
        return padded[:, lags]  # [H, T, T]

    T = gather(Kc, lag, lag >= 0)
    if bidirectional:
        T = T + gather(K[1], -lag - 1, lag < 0)
    y = torch.einsum("hts,bsh->bth", T, u)
    if D is not None:
        y = y + u * _work(D)
    return y
