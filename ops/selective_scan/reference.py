"""Selective scan (Mamba's S6), the definition: one time step at a time, in fp32.

    dt_t = softplus(delta_t + delta_bias) if delta_softplus else delta_t + delta_bias     [B, D]
    h_t  = exp(dt_t[:, :, None] * A) * h_{t-1} + (dt_t * u_t)[:, :, None] * B_t[:, None, :]   [B, D, N]
    y_t  = sum_n h_t[:, :, n] * C_t[:, None, n] + D * u_t
    y_t  = y_t * silu(z_t)                                                        (when z is given)

Shapes: u, delta, z [B, T, D]; A [D, N]; B, C [B, T, N] or [B, T, G, N] (channel d reads group d // (D/G));
D, delta_bias [D]; initial_state and the final state [B, D, N] in fp32 (fp64 for fp64 inputs); y [B, T, D] in
u's dtype. Gradients come from autograd through the loop.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def per_channel(x: torch.Tensor, d: int) -> torch.Tensor:
    """B or C as one row per channel: [B, T, N] -> [B, T, 1, N]; [B, T, G, N] -> [B, T, D, N] (groups repeated)."""
    if x.dim() == 3:
        return x[:, :, None, :]
    return x.repeat_interleave(d // x.shape[2], dim=2)


def discretize(delta, delta_bias, delta_softplus):
    dt = delta if delta_bias is None else delta + delta_bias
    return F.softplus(dt) if delta_softplus else dt


def selective_scan(
    u,
    delta,
    A,
    B,
    C,
    D=None,
    z=None,
    delta_bias=None,
    delta_softplus=False,
    initial_state=None,
    output_final_state=False,
):
    out_dtype = u.dtype
    acc = torch.promote_types(out_dtype, torch.float32)  # fp32, fp64 kept for fp64 tests
    u, delta, A, B, C = (x.to(acc) for x in (u, delta, A, B, C))
    b, t, d = u.shape
    dt = discretize(delta, None if delta_bias is None else delta_bias.to(acc), delta_softplus)
    Bc, Cc = per_channel(B, d), per_channel(C, d)
    h = u.new_zeros(b, d, A.shape[1]) if initial_state is None else initial_state.to(acc)
    ys = []
    for i in range(t):
        h = torch.exp(dt[:, i, :, None] * A) * h + (dt[:, i] * u[:, i])[:, :, None] * Bc[:, i]
        ys.append((h * Cc[:, i]).sum(-1))
    y = torch.stack(ys, dim=1)
    if D is not None:
        y = y + D.to(acc) * u
    if z is not None:
        y = y * F.silu(z.to(acc))
    return y.to(out_dtype), (h if output_final_state else None)
