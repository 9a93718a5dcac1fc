"""The delta rule (DeltaNet, Gated DeltaNet), the definition: a sequential recurrence, computed in fp64.

With the state stored as S [K, V] per (batch, head) (the transpose of the [V, K] map from keys to values):

    S_t = a_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T     # S_{-1} = initial_state
    o_t = scale * q_t^T S_t

a_t = 1 without ``g`` (DeltaNet) and a_t = exp(g_t) with ``g`` [B, T, H] (Gated DeltaNet). Step by step, as
written below: decay the state, read the value it stores for k_t, move that value towards v_t by beta_t,

    S <- a_t S;   u_t = beta_t (v_t - S^T k_t);   S <- S + k_t u_t^T;   o_t = S^T (scale q_t)

Shapes: q, k [B, T, H, K]; v [B, T, H, V]; beta [B, T, H]; g [B, T, H] or None; initial_state / final state
[B, H, K, V] in fp32 (fp64 for fp64 inputs); o in q's dtype.

The recurrence runs in fp64 whatever the inputs: in fp32 a weak decay exp(g) (g near -1e-4) is rounded the
same way at every step and the rounding compounds over the sequence (8e-5 relative error at T = 4096), where
the kernels under test keep ~1e-6. The reference is the ground truth, so it is the exact one.
"""

from __future__ import annotations

import torch


def delta_rule(q, k, v, beta, g=None, scale=None, initial_state=None, output_final_state=False):
    dt = torch.float64  # the arithmetic, whatever the inputs (see the module docstring)
    b, t_len, h, dk = q.shape
    dv = v.shape[-1]
    scale = dk**-0.5 if scale is None else scale
    qf, kf, vf, bf = (x.to(dt) for x in (q, k, v, beta))
    gf = None if g is None else g.to(dt)

    state = qf.new_zeros(b, h, dk, dv) if initial_state is None else initial_state.to(dt)
    out = []
    for t in range(t_len):
        if gf is not None:
            state = state * gf[:, t].exp()[..., None, None]
        kt = kf[:, t]  # [B, H, K]
        stored = torch.einsum("bhk,bhkv->bhv", kt, state)
        u = bf[:, t, :, None] * (vf[:, t] - stored)
        state = state + kt[..., :, None] * u[..., None, :]
        out.append(torch.einsum("bhk,bhkv->bhv", qf[:, t] * scale, state))
    o = torch.stack(out, dim=1)
    final = state.to(torch.promote_types(q.dtype, torch.float32)) if output_final_state else None
    return o.to(q.dtype), final
