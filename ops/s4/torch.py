"""Memory-light PyTorch SSM kernels.

- :func:`s4d_kernel`: the Vandermonde product K[h, l] = 2 Re(sum_n W[h, n] exp(l log Abar[h, n])) in chunks of
  ``chunk`` positions, so the largest intermediate is [H, N, chunk] rather than [H, N, L].
- :func:`s4_kernel`: the truncated generating function at the roots of unity by Cauchy sums with the Woodbury
  correction for the rank-1 term, then an inverse real FFT; chunked over the frequencies.
- :func:`fft_conv`: the convolution by real FFTs of length 2T (no wrap-around).
"""

from __future__ import annotations

import math

import torch

from .reference import _work, discretize_diagonal


def diagonal_vandermonde_factors(log_dt, A_re, A_im, B_re, B_im, C_re, C_im, discretization):
    """W = C Bbar and log Abar [H, N] (complex), so that K[h, l] = 2 Re(sum_n W exp(l log Abar))."""
    Abar, Bbar = discretize_diagonal(log_dt, A_re, A_im, B_re, B_im, discretization)
    C = torch.complex(_work(C_re), _work(C_im))
    if discretization == "zoh":
        # log(exp(dt A)) = dt A exactly (no branch cut), and it keeps exp(l dt A) accurate for large l.
        log_abar = torch.exp(_work(log_dt))[:, None] * torch.complex(_work(A_re), _work(A_im))
    else:
        log_abar = torch.log(Abar)
    return C * Bbar, log_abar


def s4d_kernel(log_dt, A_re, A_im, B_re, B_im, C_re, C_im, L, discretization="zoh", chunk=256):
    w, log_abar = diagonal_vandermonde_factors(log_dt, A_re, A_im, B_re, B_im, C_re, C_im, discretization)
    out = []
    for start in range(0, L, chunk):
        pos = torch.arange(start, min(L, start + chunk), device=w.device, dtype=w.real.dtype)
        vander = torch.exp(log_abar[..., None] * pos)  # [H, N, chunk]
        out.append(2 * torch.einsum("hn,hnl->hl", w, vander).real)
    return torch.cat(out, -1)


def cauchy_sums(nums, a, z):
    """sum_m nums[k, h, m] / (2 (1 - z) - a[h, m] (1 + z)) for nodes z [F]: [K, H, F] (complex).

    With a = dt lam this is (dt (1 + z))^{-1} times sum nums / (g(z) - lam), g(z) = (2/dt)(1 - z)/(1 + z), written
    without the division by 1 + z so the node z = -1 (present for even L) needs no special case.
    """
    den = 2 * (1 - z) - a[..., None] * (1 + z)  # [H, M, F]
    return torch.einsum("khm,hmf->khf", nums, 1 / den)


def s4_kernel(log_dt, Lambda_re, Lambda_im, P_re, P_im, B_re, B_im, C_re, C_im, L, chunk=512, cauchy=None):
    """``cauchy`` computes :func:`cauchy_sums` over all the nodes at once (the Triton backend passes its kernel);
    by default it runs here in chunks of ``chunk`` nodes, so the largest intermediate is [H, 2N, chunk]."""
    lam = torch.complex(_work(Lambda_re), _work(Lambda_im))
    P = torch.complex(_work(P_re), _work(P_im))
    B = torch.complex(_work(B_re), _work(B_im))
    C = torch.complex(_work(C_re), _work(C_im))
    dt = torch.exp(_work(log_dt))[:, None]
    # Each conjugate pair (lam, conj lam) enters the sums: term a b / den(lam) plus conj(a b) / den(conj lam).
    a = dt * torch.cat([lam, lam.conj()], -1)
    nums = torch.stack([C * B, C * P, P.conj() * B, P.conj() * P])  # C~.B, C~.P, P^*.B, P^*.P
    nums = torch.cat([nums, nums.conj()], -1)
    freqs = L // 2 + 1
    k = torch.arange(freqs, device=lam.device, dtype=dt.dtype)
    nodes = torch.exp(torch.complex(torch.zeros_like(k), -2 * math.pi * k / L))
    if cauchy is None:
        r = torch.cat([cauchy_sums(nums, a, nodes[i : i + chunk]) for i in range(0, freqs, chunk)], -1)
    else:
        r = cauchy(nums, a, nodes)
    r00, r01, r10, r11 = dt * r  # dt sum / den = (1 + z)^{-1} sum / (g - lam)
    z = nodes
    # Woodbury: K^(z) = 2/(1+z) [k00 - k01 k10 / (1 + k11)] with k = (1 + z) r, i.e.
    spectrum = 2 * (r00 - (1 + z) * r01 * r10 / (1 + (1 + z) * r11))
    return torch.fft.irfft(spectrum, n=L)


def fft_conv(u, K, D=None, bidirectional=False):
    b, t, h = u.shape
    out_dtype = torch.promote_types(u.dtype, K.dtype)  # the FFTs run in fp32 (fp64) whatever the inputs
    u = _work(u)
    K = _work(K)
    n = 2 * t

    def fit(k):  # the first T taps, zero-padded when the kernel is shorter
        return torch.nn.functional.pad(k[..., :t], (0, max(0, t - k.shape[-1])))

    if bidirectional:
        # Causal taps at lags 0..T-1, anti-causal ones at lags -1..-(T-1) wrap to positions 2T-1..T+1.
        k = torch.cat([fit(K[0]), K.new_zeros(h, 1), fit(K[1])[:, : t - 1].flip(-1)], -1)
    else:
        k = fit(K)
    k_f = torch.fft.rfft(k, n=n)  # [H, F]
    u_f = torch.fft.rfft(u.transpose(1, 2), n=n)  # [B, H, F]
    y = torch.fft.irfft(u_f * k_f, n=n)[..., :t].transpose(1, 2)
    if D is not None:
        y = y + u * _work(D)
    return y.to(out_dtype)
