"""Memory-light PyTorch SSM kernels.

- :func:`s4d_kernel`: the Vandermonde product K[h, l] = 2 Re(sum_n W[h, n] exp(l log Abar[h, n])), factored
  over blocks of about sqrt(L) positions into one batched complex matmul (no [H, N, L] intermediate).
- :func:`s4_kernel`: the truncated generating function at the roots of unity by Cauchy sums with the Woodbury
  correction for the low-rank term (rank R: an R x R solve per frequency), then an inverse real FFT; chunked
  over the frequencies.
- :func:`fft_conv`: the convolution by real FFTs of length 2T (no wrap-around).
"""

from __future__ import annotations

import math

import torch

from .reference import _work, discretize_diagonal, low_rank, step_sizes


def diagonal_vandermonde_factors(log_dt, A_re, A_im, B_re, B_im, C_re, C_im, discretization):
    """W = C Bbar and log Abar [H, N] (complex), so that K[h, l] = 2 Re(sum_n W exp(l log Abar))."""
    Abar, Bbar = discretize_diagonal(log_dt, A_re, A_im, B_re, B_im, discretization)
    C = torch.complex(_work(C_re), _work(C_im))
    if discretization == "zoh":
        # log(exp(dt A)) = dt A exactly (no branch cut), and it keeps exp(l dt A) accurate for large l.
        log_abar = step_sizes(log_dt) * torch.complex(_work(A_re), _work(A_im))
    else:
        log_abar = torch.log(Abar)
    return C * Bbar, log_abar


def powers(base: torch.Tensor, n: int) -> torch.Tensor:
    """[..., n]: base^j for j = 0..n-1, by doubling (log2 n complex multiplies over the growing table).

    A complex exp costs tens of multiplies on a CPU (it is not vectorised there), so the table is built from
    products; its rounding error grows like j ulp, as it does for exp(j log base) taken in floating point.
    """
    table = torch.ones_like(base)[..., None]
    step = base  # base^m, m = the table's length
    while table.shape[-1] < n:
        table = torch.cat([table, table * step[..., None]], -1)
        step = step * step
    return table[..., :n]


def s4d_kernel(log_dt, A_re, A_im, B_re, B_im, C_re, C_im, L, discretization="zoh", chunk=None):
    """The Vandermonde product as a batched complex matmul over blocks of ``chunk`` positions (default ~sqrt L).

    With l = k c + j (k < ceil(L / c), j < c):  Abar^l = Abar^(k c) Abar^j, so

        K[h, k c + j] = 2 Re( sum_n (W Abar^(k c))[h, n, k] (Abar^j)[h, n, j] )  =  2 Re( Q[h]^T P[h] )[k, j]

    The two power tables hold H N (c + L/c) numbers (the direct product needs H N L powers), the H N L
    multiply-adds run as one [H, L/c, N] x [H, N, c] complex matmul, and nothing of size H x N x L is formed:
    the largest tensors are the [H, L] kernel itself and the factors.
    """
    w, log_abar = diagonal_vandermonde_factors(log_dt, A_re, A_im, B_re, B_im, C_re, C_im, discretization)
    c = chunk or max(1, math.isqrt(L))
    blocks = -(-L // c)
    P = powers(torch.exp(log_abar), c)  # [H, N, c]: Abar^j
    Q = w[..., None] * powers(torch.exp(c * log_abar), blocks)  # [H, N, L/c]: W Abar^(k c)
    K = 2 * torch.matmul(Q.transpose(1, 2), P).real  # [H, L/c, c]
    return K.reshape(K.shape[0], blocks * c)[:, :L]


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
    P = low_rank(P_re, P_im)  # [R, H, N]
    B = torch.complex(_work(B_re), _work(B_im))
    C = torch.complex(_work(C_re), _work(C_im))
    dt = step_sizes(log_dt).expand_as(lam)  # [H, N]
    R = P.shape[0]
    # Each conjugate pair (lam, conj lam) enters the sums: term a b / den(lam) plus conj(a b) / den(conj lam).
    a = torch.cat([dt * lam, dt * lam.conj()], -1)
    # Numerators, each times its mode's dt (so one dt per mode is exact, see below): C~.B, C~.P_j, P_i^*.B,
    # P_i^*.P_j  (1 + R + R + R^2 of them; R = 1 gives the four of the rank-1 Woodbury).
    Pc = P.conj()
    nums = torch.cat([(C * B)[None], C * P, Pc * B, (Pc[:, None] * P[None]).flatten(0, 1)]) * dt
    nums = torch.cat([nums, nums.conj()], -1)
    freqs = L // 2 + 1
    k = torch.arange(freqs, device=lam.device, dtype=dt.dtype)
    nodes = torch.exp(torch.complex(torch.zeros_like(k), -2 * math.pi * k / L))
    if cauchy is None:
        r = torch.cat([cauchy_sums(nums, a, nodes[i : i + chunk]) for i in range(0, freqs, chunk)], -1)
    else:
        r = cauchy(nums, a, nodes)
    # dt sum / den = (1 + z)^{-1} sum / (g - lam); with one dt per mode, sum x dt y / (g - dt lam) is what the
    # resolvent of Delta A (unit step) gives, so dt stays inside the sums.
    z = nodes
    r00, r01, r10, r11 = r[0], r[1 : 1 + R], r[1 + R : 1 + 2 * R], r[1 + 2 * R :].unflatten(0, (R, R))
    # Woodbury: K^(z) = 2/(1+z) [k00 - k01 (I + k11)^{-1} k10] with k = (1 + z) r, i.e.
    if R == 1:
        spectrum = 2 * (r00 - (1 + z) * r01[0] * r10[0] / (1 + (1 + z) * r11[0, 0]))
    else:
        eye = torch.eye(R, dtype=r.dtype, device=r.device)
        M = eye + ((1 + z) * r11).permute(2, 3, 0, 1)  # [H, F, R, R]
        x = torch.linalg.solve(M, r10.permute(1, 2, 0)[..., None])[..., 0]  # [H, F, R]
        spectrum = 2 * (r00 - (1 + z) * (r01.permute(1, 2, 0) * x).sum(-1))
    return torch.fft.irfft(spectrum, n=L)


def fft_conv(u, K, D=None, bidirectional=False, cu_seqlens=None):
    if cu_seqlens is not None:
        return fft_conv_packed(u, K, D, bidirectional, cu_seqlens=cu_seqlens)
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


# Packed documents: a group's documents are padded to its longest; a new group starts where the next document is
# more than this many times longer than the group's first (sorted by length: at most half of a group is padding).
PACKED_GROUP_RATIO = 2.0


def fft_conv_packed(u, K, D=None, bidirectional=False, *, cu_seqlens):
    """``fft_conv`` over documents packed in u [1, T, H] (``cu_seqlens``): documents of similar length (sorted, the
    longest of a group at most PACKED_GROUP_RATIO times its shortest) run as one zero-padded batch. Zeros after a
    document's end add nothing to its real positions, either way in time, so each position's sum is the one it
    has alone (only the FFT length, hence the rounding, differs)."""
    bounds = cu_seqlens.tolist()
    starts, lengths = bounds[:-1], [e - s for s, e in zip(bounds[:-1], bounds[1:])]
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    groups, current = [], [order[0]]
    for n in order[1:]:
        if lengths[n] > PACKED_GROUP_RATIO * lengths[current[0]]:
            groups.append(current)
            current = []
        current.append(n)
    groups.append(current)
    device = u.device
    outs, positions = [], []
    for group in groups:
        longest = max(lengths[n] for n in group)
        steps = torch.arange(longest, device=device)
        first = torch.tensor([starts[n] for n in group], device=device)
        size = torch.tensor([lengths[n] for n in group], device=device)
        real = steps < size[:, None]  # [G, Lmax]
        index = (first[:, None] + steps).masked_fill(~real, 0)  # padding reads token 0, then is zeroed
        batch = u[0, index] * real[..., None].to(u.dtype)  # [G, Lmax, H]
        y = fft_conv(batch, K, D, bidirectional)  # one batch of the group, unpacked
        outs.append(y[real])
        positions.append(index[real])
    y = torch.cat(outs)
    where = torch.cat(positions)
    out = y.new_empty(u.shape[1], *y.shape[1:])
    out = out.index_copy(0, where, y)
    return out[None]
