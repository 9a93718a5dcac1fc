"""Selective scan as a loop over time with a hand-written backward: the torch backend's path for wide scans.

    a_t = exp(dt_t A)                      [B, D, N]
    h_t = a_t * h_{t-1} + (dt_t u_t) B_t    (B_t broadcast over the channels of its group)
    y_t = <h_t, C_t>                       [B, D]    (D u and the gate are added by the caller)

Shapes: dt, u [B, T, D] (dt already softplus'ed, in the accumulation dtype); A [D, N] real; Bm, Cm [B, T, G, N];
h0 and the final state [B, D, N]. Real A only (a complex A takes the blocked path).

Why a loop: when B * D * N is large (Mamba at a small width with a training batch: 64 x 128 x 16 = 131K states)
every step's tensors are big enough that Python's per-op cost no longer matters, and a step touches only
[B, D, N] tensors that stay in cache. The blocked path instead materialises the decays, the inputs and the
states as [B, T, D, N] tensors and lets autograd keep several more; each of them is a pass over memory that
costs more than the whole loop (one Mamba layer at d_model 64, batch 64 x 64 tokens, forward and backward on
one thread: 0.60 s blocked against 0.17 s here).

Forward keeps the states h_t (T tensors [B, D, N], the one large thing it stores) for the backward, which walks time backwards
with the state's adjoint g (the gradient reaching h_t from every later step and from y_t):

    g_t    = g_{t+1} a_{t+1} + dy_t C_t                           (g_T starts from d final_state)
    dC_t   = sum_{d in group} dy_t[d] h_t[d]                      du_t  = dt_t <g_t, B_t>
    dB_t   = sum_{d in group} dt_t u_t [d] g_t[d]                 ddt_t = u_t <g_t, B_t> + <g_t h_{t-1} a_t, A>
    dA     = sum_{b, t} dt_t g_t h_{t-1} a_t                      dh0   = g_0 a_0
"""

from __future__ import annotations

import torch

# B * D * N from which the loop beats the blocked scan on a CPU (per step, a few ops over this many states).
LOOP_MIN_STATES = 32768


def use_loop(b: int, d: int, n: int, A: torch.Tensor, device: torch.device) -> bool:
    return device.type == "cpu" and not A.is_complex() and b * d * n >= LOOP_MIN_STATES


class LoopScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, dt, u, A, Bm, Cm, h0):
        b, t, d = u.shape
        g, n = Bm.shape[2], Bm.shape[3]
        k = d // g  # channels per group
        h = dt.new_zeros(b, d, n) if h0 is None else h0.to(dt.dtype)
        keep = any(ctx.needs_input_grad)
        # The states are kept as the T tensors the steps made, not copied into one [B, T, D, N] buffer: a
        # fresh buffer that size is paged in on first touch, and its copies cost more than the scan itself
        # (a Mamba MQAR layer, 64 x 128 x 16 states: 0.68 ms a copy against 0.4 ms for the step's arithmetic).
        states = []
        dtu = dt * u
        ys = []
        for i in range(t):
            a = torch.exp(dt[:, i, :, None] * A)
            # h = a h + (dt u) B, with B_t shared by the channels of a group: [B, G, K, N] views.
            h = torch.addcmul(
                (a * h).view(b, g, k, n), dtu[:, i].view(b, g, k, 1), Bm[:, i].view(b, g, 1, n)
            ).view(b, d, n)
            # y_t = <h_t, C_t> per channel: a [B, G, K, N] x [B, G, N, 1] matmul.
            ys.append(torch.matmul(h.view(b, g, k, n), Cm[:, i, :, :, None]).view(b, d))
            if keep:
                states.append(h)
        if keep:
            ctx.save_for_backward(dt, u, A, Bm, Cm, h0, *states)
        return torch.stack(ys, 1), h

    @staticmethod
    def backward(ctx, dy, dhT):
        dt, u, A, Bm, Cm, h0, *states = ctx.saved_tensors
        b, t, d = u.shape
        g, n = Bm.shape[2], Bm.shape[3]
        k = d // g
        dy = dt.new_zeros(b, t, d) if dy is None else dy.to(dt.dtype)
        grad = dt.new_zeros(b, d, n) if dhT is None else dhT.to(dt.dtype).clone()
        dtu = dt * u
        d_dtu = torch.empty_like(dt)  # d loss / d (dt u)
        ddt_decay = torch.empty_like(dt)  # the part of d loss / d dt that flows through the decay
        dA_acc = torch.zeros_like(grad)  # sum over t of dt_t g_t h_{t-1} a_t, summed over B at the end
        dB = torch.empty_like(Bm, dtype=dt.dtype)
        dC = torch.empty_like(Cm, dtype=dt.dtype)
        for i in range(t - 1, -1, -1):
            h = states[i]
            h_prev = states[i - 1] if i > 0 else (dt.new_zeros(b, d, n) if h0 is None else h0.to(dt.dtype))
            # g_t: what reaches h_t from later steps (grad) and from y_t.
            torch.addcmul(
                grad.view(b, g, k, n),
                dy[:, i].view(b, g, k, 1),
                Cm[:, i].view(b, g, 1, n),
                out=grad.view(b, g, k, n),
            )
            gv = grad.view(b, g, k, n)
            dC[:, i] = torch.matmul(dy[:, i].view(b, g, 1, k), h.view(b, g, k, n)).view(b, g, n)
            dB[:, i] = torch.matmul(dtu[:, i].view(b, g, 1, k), gv).view(b, g, n)
            d_dtu[:, i] = torch.matmul(gv, Bm[:, i, :, :, None]).view(b, d)
            a = torch.exp(dt[:, i, :, None] * A)
            dlog = grad * h_prev * a  # d loss / d (dt_t A)
            ddt_decay[:, i] = (dlog * A).sum(-1)
            dA_acc.addcmul_(dlog, dt[:, i, :, None])
            grad = grad * a  # on to h_{t-1}
        du = d_dtu * dt
        ddt = d_dtu * u + ddt_decay
        dh0 = grad if h0 is not None and ctx.needs_input_grad[5] else None
        return ddt, du, dA_acc.sum(0), dB, dC, dh0
