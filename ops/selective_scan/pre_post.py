"""What every backend of the selective scan does around its scan proper (y_t = <h_t, C_t> and the states):
the step size before it, D u and the gate after it, as ordinary autograd operations.

    dt = softplus(delta + delta_bias) (or delta + delta_bias);   y = (y_scan + D u) * silu(z)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .reference import discretize


def finish(y, u, D, z, acc, out_dtype):
    """y + D u, gated by silu(z), computed in ``acc`` and returned in ``out_dtype``."""
    if D is not None:
        y = y + D.to(acc) * u.to(acc)
    if z is not None:
        y = y * F.silu(z.to(acc))
    return y.to(out_dtype)


def run_kernel(
    scan,
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
    """A kernel backend: ``scan(u, dt, A, Bm, Cm, h0) -> (y, final)`` with B, C as [B, T, G, N], in fp32."""
    dt = discretize(delta.float(), None if delta_bias is None else delta_bias.float(), delta_softplus)
    Bm = B[:, :, None] if B.dim() == 3 else B
    Cm = C[:, :, None] if C.dim() == 3 else C
    y, final = scan(u, dt, A.float(), Bm, Cm, initial_state)
    return finish(y, u, D, z, torch.float32, u.dtype), (final if output_final_state else None)
