"""Selective scan as a loop over time with a hand-written backward: the torch backend's path for wide scans.

    a_t = exp(dt_t A)                      [B, D, N]
    h_t = a_t * h_{t-1} + (dt_t u_t) B_t    (B_t broadcast over the channels of its group)
    y_t = <h_t, C_t>                       [B, D]    (D u and the gate are added by the caller)

Shapes: dt, u [B, T, D] (dt already softplus'ed, in the accumulation dtype); A [D, N] real; Bm, Cm [B, T, G, N];
h0 and the final state [B, D, N]. Real A only (a complex A takes the blocked path).

Why a loop: when B * D * N is large (Mamba at a small width with a training batch: 64 x 128 x 16 = 131K states)
every step's tensors are big enough that Python's per-op cost no longer matters, and a step touches only
one state's worth of tensors, which stay in cache. The blocked path instead materialises the decays, the inputs and the
states as [B, T, D, N] tensors and lets autograd keep several more; each of them is a pass over memory that
costs more than the whole loop (one Mamba layer at d_model 64, batch 64 x 64 tokens, forward and backward on
one thread: 0.60 s blocked against 0.17 s here).

Forward keeps the states h_t (T tensors [B, G, N, K], the one large thing it stores) for the backward, which walks time backwards
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


_LOG2E = 1.4426950408889634  # exp(x) = exp2(x log2 e): exp2 costs about half of exp on a CPU


def _state_major(x, g, k, n):
    """[B, D, N] -> [B, G, N, K]: the loop's layout (see LoopScan)."""
    return x.reshape(x.shape[0], g, k, n).transpose(2, 3).contiguous()


def _time_major(x):
    """[B, T, ...] -> [T, B, ...], contiguous."""
    return x.transpose(0, 1).contiguous()


def _channel_major(x, d, n):
    """[B, G, N, K] -> [B, D, N]: the op's layout."""
    return x.transpose(2, 3).reshape(x.shape[0], d, n)


class LoopScan(torch.autograd.Function):
    """The loop keeps each state as [B, G, N, K] (channels last) rather than the op's [B, D, N]: every
    per-step contraction then runs along the K channels of a group, rows of length K, which a CPU matrix
    product does in a fraction of the time of the many length-N rows the [B, D, N] layout gives it
    (y_t = <h_t, C_t> at B = 64, D = 128, N = 16 on one thread: 0.29 ms as [D, N] x [N] products against
    0.04 ms as [N] x [N, D]). The decay uses exp2 of dt A log2(e), half the cost of exp here."""

    @staticmethod
    def forward(ctx, dt, u, A, Bm, Cm, h0):
        b, t, d = u.shape
        g, n = Bm.shape[2], Bm.shape[3]
        k = d // g  # channels per group
        A2 = _state_major(A[None] * _LOG2E, g, k, n)  # [1, G, N, K]
        h = dt.new_zeros(b, g, n, k) if h0 is None else _state_major(h0.to(dt.dtype), g, k, n)
        keep = any(ctx.needs_input_grad)
        # The states are kept as the T tensors the steps made, not copied into one [B, T, D, N] buffer: a
        # fresh buffer that size is paged in on first touch, and its copies cost more than the scan itself
        # (a Mamba MQAR layer, 64 x 128 x 16 states: 0.68 ms a copy against 0.4 ms for the step's arithmetic).
        states = []
        # Time-major copies of the [B, T, ...] inputs: every step then reads contiguous slices (a strided
        # operand sends a batched matrix product down a per-matrix loop, ten times slower here).
        dtv = _time_major(dt).view(t, b, g, 1, k)
        dtu = _time_major(dt * u).view(t, b, g, 1, k)
        Bv = _time_major(Bm)[..., None]  # [T, B, G, N, 1]
        Cv = _time_major(Cm)[:, :, :, None, :]  # [T, B, G, 1, N]
        y = dt.new_empty(t, b, g, 1, k)
        for i in range(t):
            a = torch.exp2(dtv[i] * A2)  # [B, G, N, K]
            h = torch.addcmul(a * h, Bv[i], dtu[i])  # h = a h + B_t (dt u)_t
            torch.matmul(Cv[i], h, out=y[i])  # y_t = <C_t, h_t>: [1, N] x [N, K] per (batch, group)
            if keep:
                states.append(h)
        if keep:
            ctx.save_for_backward(dt, u, A, Bm, Cm, h0, *states)
        return y.view(t, b, d).transpose(0, 1), _channel_major(h, d, n)

    @staticmethod
    def backward(ctx, dy, dhT):
        dt, u, A, Bm, Cm, h0, *states = ctx.saved_tensors
        b, t, d = u.shape
        g, n = Bm.shape[2], Bm.shape[3]
        k = d // g
        A_ = _state_major(A[None].to(dt.dtype), g, k, n)  # [1, G, N, K]
        A2 = A_ * _LOG2E
        grad = dt.new_zeros(b, g, n, k) if dhT is None else _state_major(dhT.to(dt.dtype), g, k, n)
        first = None if h0 is None else _state_major(h0.to(dt.dtype), g, k, n)  # h_{-1}
        dyv = dt.new_zeros(t, b, g, 1, k) if dy is None else _time_major(dy.to(dt.dtype)).view(t, b, g, 1, k)
        dtv = _time_major(dt).view(t, b, g, 1, k)
        dtu = _time_major(dt * u).view(t, b, g, 1, k)
        Bv = _time_major(Bm)[:, :, :, None, :]  # [T, B, G, 1, N]
        Cv = _time_major(Cm)[..., None]  # [T, B, G, N, 1]
        d_dtu = dt.new_empty(t, b, g, 1, k)  # d loss / d (dt u)
        ddt_decay = dt.new_zeros(t, b, g, 1, k)  # the part of d loss / d dt that flows through the decay
        dA_acc = torch.zeros_like(grad)  # sum over t of dt_t g_t h_{t-1} a_t, summed over B at the end
        dB = dt.new_empty(t, b, g, n, 1)
        dC = dt.new_empty(t, b, g, n, 1)
        for i in range(t - 1, -1, -1):
            h = states[i]
            # g_t: what reaches h_t from later steps (grad) and from y_t.
            grad = torch.addcmul(grad, Cv[i], dyv[i])
            # Sums over the group's channels as a product and a row sum: as [N, K] x [K] matrix products
            # they take four times as long.
            torch.sum(h * dyv[i], dim=-1, keepdim=True, out=dC[i])  # sum_k h dy
            torch.sum(grad * dtu[i], dim=-1, keepdim=True, out=dB[i])  # sum_k g (dt u)
            torch.matmul(Bv[i], grad, out=d_dtu[i])  # sum_n B g: a [1, N] x [N, K] product
            ga = grad * torch.exp2(dtv[i] * A2)  # g_t a_t: on to h_{t-1}
            # h_{-1} = 0 without an initial state: then the first decay multiplies nothing (ddt_decay stays 0).
            if i > 0 or first is not None:
                dlog = ga * (states[i - 1] if i > 0 else first)  # d loss / d (dt_t A)
                torch.sum(dlog * A_, dim=2, keepdim=True, out=ddt_decay[i])
                dA_acc.addcmul_(dlog, dtv[i])
            grad = ga
        d_dtu = d_dtu.view(t, b, d).transpose(0, 1)
        du = d_dtu * dt
        ddt = d_dtu * u + ddt_decay.view(t, b, d).transpose(0, 1)
        dA = _channel_major(dA_acc.sum(0, keepdim=True), d, n)[0]
        dB = dB.view(t, b, g, n).transpose(0, 1)
        dC = dC.view(t, b, g, n).transpose(0, 1)
        dh0 = _channel_major(grad, d, n) if h0 is not None and ctx.needs_input_grad[5] else None
        return ddt, du, dA, dB, dC, dh0
