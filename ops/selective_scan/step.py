"""One decoding step of the selective scan (Mamba's ``step``).

    dt = softplus(dt + dt_bias) if dt_softplus else dt + dt_bias       [B, D]
    state' = exp(dt A) * state + (dt x)[:, :, None] * B                 [B, D, N]
    y = <state', C> + D x ;  y *= silu(z) when z is given                [B, D]

state [B, D, N]; x, dt, z [B, D]; A [D, N]; B, C [B, N] or [B, G, N]; D, dt_bias [D]. Returns (y, state'),
y in x's dtype, state' in fp32 (fp64 for fp64); the state passed in is left unchanged.

Complex A (selective_scan's convention): B, C real or complex, state' complex64 (complex128 for fp64; a real
state passed in counts as a complex one with zero imaginary part), and y = 2 Re<state', C> + D x.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import reference as _reference


def reference_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False):
    """The definition: the reference selective_scan run over a one-token sequence from ``state``."""
    y, new_state = _reference.selective_scan(
        x[:, None],
        dt[:, None],
        A,
        B[:, None],
        C[:, None],
        D=D,
        z=None if z is None else z[:, None],
        delta_bias=dt_bias,
        delta_softplus=dt_softplus,
        initial_state=state,
        output_final_state=True,
    )
    return y[:, 0], new_state


def selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False):
    out_dtype = x.dtype
    acc = torch.promote_types(out_dtype, torch.float32)
    d = x.shape[1]
    sdt = _reference.state_dtype(acc, A)  # complex64 / complex128 for a complex A
    x_, A_ = x.to(acc), A.to(sdt)
    step = _reference.discretize(dt.to(acc), None if dt_bias is None else dt_bias.to(acc), dt_softplus)

    def per_channel(v):  # [B, N] -> [B, 1, N]; [B, G, N] -> [B, D, N]
        v = v.to(sdt if v.is_complex() else acc)
        return v[:, None] if v.dim() == 2 else v.repeat_interleave(d // v.shape[1], dim=1)

    new_state = torch.exp(step[..., None] * A_) * state.to(sdt) + (step * x_)[..., None] * per_channel(B)
    y = (new_state * per_channel(C)).sum(-1)
    if y.is_complex():  # the conjugate pair's share: <h, C> + conj(<h, C>)
        y = 2 * y.real
    if D is not None:
        y = y + D.to(acc) * x_
    if z is not None:
        y = y * F.silu(z.to(acc))
    return y.to(out_dtype), new_state
