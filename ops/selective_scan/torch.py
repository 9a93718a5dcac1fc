"""Selective scan as a chunked parallel scan in PyTorch (the CPU default).

    h_t = exp(dt_t A) * h_{t-1} + dt_t u_t B_t        y_t = <h_t, C_t> + D u_t,  y *= silu(z)

Shapes: u, delta, z [B, T, D]; A [D, N]; B, C [B, T, N] or [B, T, G, N]; h [B, D, N] fp32 (fp64 for fp64).

Complex A (the reference's convention): h complex64 (complex128 for fp64), B and C real or complex, and
y_t = 2 Re<h_t, C_t> + D u_t. The blocked scan runs unchanged in complex arithmetic (``ops.linear_scan``
takes complex decays and inputs, its backward conjugates them as PyTorch's complex autograd does).

For a fixed (channel, state) pair the recurrence is the diagonal linear recurrence of ``ops.linear_scan``
with decay a_t = exp(dt_t A) and input x_t = dt_t u_t B_t, so the D*N pairs are scanned together by its
blocked scan: time is cut into chunks of about sqrt(T); every chunk is scanned from a zero start (all
chunks at once, in vectorised steps), the chunk summaries (total decay, local final state) are scanned
across chunks to pass the entering states along, and every chunk is finished from its entering state. That
costs O(sqrt(T)) Python steps over [B, T/C, D*N] slices instead of T steps of the reference, and a custom
backward (the same scan run backwards) rather than an autograd graph of T steps.

Why decays as per-step factors rather than exponentials of cumulative log-decays: with dt A <= 0 every
factor exp(dt_t A) lies in [0, 1] (in the unit disc for a complex A with Re A <= 0) and the blocked scan only
multiplies and adds them, so nothing can overflow or lose precision whatever the chunk length or the decay strength (cumulative sums of log-decays
need an exp of a difference per pair of positions, an L x L x D x N tensor per chunk, which on a CPU costs
far more than the scan itself). Everything around the scan (softplus, the exponentials, <h, C>, D u, the
gate) is ordinary autograd.

Packed documents (``cu_seqlens``, one pass): at each document's first position the decay is set to 0 and the
document's initial state is injected into the input, x_s += exp(dt_s A) h0[n] (``linear_scan``'s reset), so the
one scan over the row restarts at every document as a separate run does; each document's final state is the state at
its last position. With autograd that is done on the [1, T, D*N] decays and inputs ahead of the scan, one pass per
group of consecutive documents of up to ``GROUP_STATES`` states (their tensors stay in cache; a longer document
runs alone, as a separate run); without it (inference), on each segment's buffers before it is scanned, and the
final states are read off the segment. The wide-scan loop path (``torch_loop.py``, many states per step) runs once
per document: it steps through time anyway, so one pass would save nothing there.
"""

from __future__ import annotations

import torch

from .._packed_chunks import document_groups, run_in_groups
from ..linear_scan.torch import blocked_scan, document_bounds, reset_at
from ..linear_scan.torch import linear_scan as _linear_scan
from .pre_post import finish
from .reference import discretize, per_channel, state_dtype
from .torch_loop import LoopScan, use_loop


def _contract(h, C, d):
    """y_t[d] = <h_t[d], C_t[group(d)]>, without forming the [B, T, D, N] product (einsum reduces in place)."""
    b, t, _, n = h.shape
    if C.dim() == 3:
        return torch.einsum("btdn,btn->btd", h, C)
    g = C.shape[2]
    return torch.einsum("btgkn,btgn->btgk", h.view(b, t, g, d // g, n), C).reshape(b, t, d)


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
    cu_seqlens=None,
):
    if cu_seqlens is not None:
        return _packed(
            u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, output_final_state, cu_seqlens
        )
    out_dtype = u.dtype
    acc = torch.promote_types(out_dtype, torch.float32)
    b, t, d = u.shape
    n = A.shape[1]
    sdt = state_dtype(acc, A)  # complex64 / complex128 for a complex A
    u_, A_ = u.to(acc), A.to(sdt)
    dt = discretize(delta.to(acc), None if delta_bias is None else delta_bias.to(acc), delta_softplus)
    # B and C stay real when they are (real products and a real contraction are cheaper); complex ones in sdt.
    B_, C_ = (x.to(sdt if x.is_complex() else acc) for x in (B, C))
    Bc = per_channel(B_, d)
    if use_loop(b, d, n, A, u.device):
        # Wide scans (many states per step): a loop over time with a hand-written backward (torch_loop.py).
        as_groups = lambda x: x[:, :, None] if x.dim() == 3 else x  # [B, T, N] -> [B, T, 1, N]
        h0 = None if initial_state is None else initial_state.to(sdt)
        y, final = LoopScan.apply(dt, u_, A_, as_groups(B_), as_groups(C_), h0)
        return finish(y, u_, D, z, acc, out_dtype), (final if output_final_state else None)
    h0 = None if initial_state is None else initial_state.to(sdt).reshape(b, d * n)
    tensors = (u, delta, A, B, C, D, z, delta_bias, initial_state)
    if torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in tensors):
        decay = torch.exp(dt[..., None] * A_)  # [B, T, D, N], each in [0, 1] for A <= 0 (|.| <= 1 if complex)
        inp = (dt * u_)[..., None] * Bc  # [B, T, D, N]; real with a complex A and real B (the scan promotes)
        h, _ = _linear_scan(decay.reshape(b, t, d * n), inp.reshape(b, t, d * n), h0)
        h = h.view(b, t, d, n)
        final = h[:, -1].clone() if output_final_state else None
        return finish(_output(h, C_, d), u_, D, z, acc, out_dtype), final
    # Inference: time in segments whose decays and inputs (two [B, S, D, N] buffers, reused, the states
    # written over the inputs) stay in cache, each scanned from the state the previous one ended in. Fresh
    # [B, T, D, N] tensors would cost a page fault per 4 KiB and a trip to memory per pass.
    seg = min(t, max(64, SEGMENT_STATES // (b * d * n)))
    decay = torch.empty((b, seg, d, n), dtype=sdt, device=u.device)
    inp = torch.empty((b, seg, d, n), dtype=sdt, device=u.device)
    dtu = dt * u_
    y = torch.empty((b, t, d), dtype=acc, device=u.device)
    h = h0
    for s0 in range(0, t, seg):
        s1 = min(t, s0 + seg)
        a_s, x_s = decay[:, : s1 - s0], inp[:, : s1 - s0]
        torch.mul(dt[:, s0:s1, :, None], A_, out=a_s).exp_()
        torch.mul(dtu[:, s0:s1, :, None], Bc[:, s0:s1], out=x_s)
        states = blocked_scan(
            a_s.view(b, s1 - s0, d * n), x_s.view(b, s1 - s0, d * n), h, out=x_s.view(b, s1 - s0, d * n)
        )
        y[:, s0:s1] = _output(x_s, C_[:, s0:s1], d)
        h = states[:, -1].clone()  # the next segment overwrites the buffer
    final = h.view(b, d, n) if output_final_state else None
    return finish(y, u_, D, z, acc, out_dtype), final


# Packed rows with autograd run one pass per group of consecutive documents of up to this many states
# (tokens * D * N; a longer document alone, as a separate run): autograd keeps about ten [T, D*N] tensors, and on a
# CPU one pass over a row whose tensors outgrow the caches costs more per token than several over documents whose
# tensors stay in them (D = 256, N = 16, 16 documents of 16..512 tokens, one thread: one pass over the 1526 tokens
# 220-340 ms, once per document 160-260 ms). Groups keep both the locality and few calls for short documents.
GROUP_STATES = 1 << 19


# States per inference segment (B * S * D * N): two fp32 buffers of 4 MiB, which a CPU's L3 holds. Measured at
# B=1, T=2048, D=128, N=16 (2 threads): 2^19 15 ms, 2^20 9.4 ms, 2^21 8.3-11 ms, one segment (2^22) 12-18 ms.
SEGMENT_STATES = 1 << 20


def _output(h, C, d):
    """y_t = <h_t, C_t>; for a complex state 2 Re<h_t, C_t> (with a real C only h's real part takes part)."""
    if not h.is_complex():
        return _contract(h, C, d)
    return 2 * (_contract(h.real, C, d) if not C.is_complex() else _contract(h, C, d).real)


def _packed(
    u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, output_final_state, cu_seqlens
):
    """N documents packed in u [1, T, D] (see the module docstring); cu_seqlens already checked and
    initial_state [N, D, N_state] one row per document."""
    out_dtype = u.dtype
    acc = torch.promote_types(out_dtype, torch.float32)
    _, t, d = u.shape
    n = A.shape[1]
    bounds = [int(x) for x in cu_seqlens.tolist()]
    docs = len(bounds) - 1
    tensors = (u, delta, A, B, C, D, z, delta_bias, initial_state)
    training = torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in tensors)
    if use_loop(1, d, n, A, u.device):
        # The loop steps through time whatever the packing: once per document costs the same steps.
        groups = [(i, i + 1) for i in range(docs)]
    elif training:
        groups = document_groups(bounds, GROUP_STATES // (d * n))
    else:
        groups = [(0, docs)]  # inference walks the row in cache-sized segments already
    if len(groups) > 1:
        packed = dict(u=u, delta=delta, B=B, C=C, z=z)
        rest = dict(A=A, D=D, delta_bias=delta_bias, delta_softplus=delta_softplus)
        rest.update(output_final_state=output_final_state)
        return run_in_groups(
            selective_scan, groups, bounds, cu_seqlens, packed, "initial_state", initial_state, **rest
        )
    sdt = state_dtype(acc, A)
    u_, A_ = u.to(acc), A.to(sdt)
    dt = discretize(delta.to(acc), None if delta_bias is None else delta_bias.to(acc), delta_softplus)
    B_, C_ = (x.to(sdt if x.is_complex() else acc) for x in (B, C))
    Bc = per_channel(B_, d)
    h0 = None if initial_state is None else initial_state.to(sdt).reshape(docs, d * n)
    first, last = document_bounds(cu_seqlens, u.device)
    if training:
        inp = ((dt * u_)[..., None] * Bc).reshape(1, t, d * n)
        if A_.is_complex():
            decay = torch.exp(dt[..., None] * A_).reshape(1, t, d * n)
            decay, inp = reset_at(decay, inp, h0, first)
        else:
            # The reset made in place on fresh intermediates rather than on copies ([1, T, D*N] tensors are the
            # largest this op makes): the exponent is -inf at the starts, so the decay is exactly 0 there with a
            # zero gradient, and the state is injected with the starts' own decays, taken apart.
            exponent = dt[..., None] * A_  # [1, T, D, N]
            if h0 is not None:
                inject = torch.exp(exponent[:, first]).reshape(1, docs, d * n) * h0[None]
                inp = inp.index_add_(1, first, inject)
            decay = torch.exp(exponent.index_fill_(1, first, float("-inf"))).reshape(1, t, d * n)
        h, _ = _linear_scan(decay, inp)
        final = h[0, last].view(docs, d, n) if output_final_state else None
        return finish(_output(h.view(1, t, d, n), C_, d), u_, D, z, acc, out_dtype), final
    # Inference: the segments of the unpacked path, each reset at the documents that start in it before it is
    # scanned, and the documents that end in it read off its states.
    seg = min(t, max(64, SEGMENT_STATES // (d * n)))
    decay = torch.empty((1, seg, d, n), dtype=sdt, device=u.device)
    inp = torch.empty((1, seg, d, n), dtype=sdt, device=u.device)
    dtu = dt * u_
    y = torch.empty((1, t, d), dtype=acc, device=u.device)
    final = torch.empty((docs, d * n), dtype=sdt, device=u.device)
    starts, ends = bounds[:-1], [e - 1 for e in bounds[1:]]
    h = None
    for s0 in range(0, t, seg):
        s1 = min(t, s0 + seg)
        a_s, x_s = decay[:, : s1 - s0], inp[:, : s1 - s0]
        torch.mul(dt[:, s0:s1, :, None], A_, out=a_s).exp_()
        torch.mul(dtu[:, s0:s1, :, None], Bc[:, s0:s1], out=x_s)
        a_flat, x_flat = a_s.view(1, s1 - s0, d * n), x_s.view(1, s1 - s0, d * n)
        here = [i for i, p in enumerate(starts) if s0 <= p < s1]
        if here:
            at = torch.tensor([starts[i] - s0 for i in here], device=u.device)
            if h0 is not None:
                x_flat[0, at] += a_flat[0, at] * h0[here]
            a_flat[0, at] = 0
        states = blocked_scan(a_flat, x_flat, h, out=x_flat)
        y[:, s0:s1] = _output(x_s, C_[:, s0:s1], d)
        done = [i for i, p in enumerate(ends) if s0 <= p < s1]
        if done:
            final[done] = states[0, torch.tensor([ends[i] - s0 for i in done], device=u.device)]
        h = states[:, -1].clone()  # the next segment overwrites the buffer
    final = final.view(docs, d, n) if output_final_state else None
    return finish(y, u_, D, z, acc, out_dtype), final
