"""Diagonal linear recurrence as a blocked scan in PyTorch (the CPU default).

    h_t = a_t * h_{t-1} + x_t          (reverse=True: h_t = a_t * h_{t+1} + x_t)

Shapes: a, x [B, T, D]; h [B, T, D]; initial / final state [B, D] in fp32 (fp64 for fp64 inputs).

A step-by-step loop costs T Python iterations of tiny tensor ops, and on a CPU the per-op overhead is what
dominates. Here time is cut into n chunks of length C ~ sqrt(T) and the scan runs in vectorised phases, so
the Python loop runs about 3 C + O(sqrt(n)) times instead of T:

1. every chunk's summary, all chunks at once: its total decay  p = a_1 ... a_C  and its final state from a
   zero start,  l_c = a_c l_{c-1} + x_c  (C steps over [B, n, D] slices);
2. across chunks: the state after chunk k,  s_k = p^{(k)} s_{k-1} + l^{(k)},  s_0 = initial state: the same
   recurrence over the n summaries, solved by this same function (recursively);
3. every chunk scanned again from its entering state, written straight into the output (C steps);
4. the T - nC leftover steps one at a time.

Memory traffic is two reads of a and x and one write of h; no [B, T, D] temporaries are made.

Only products and sums are formed, never a quotient or a logarithm, so it is exact for any real a (zero and
negative decays included) and agrees with the sequential loop to rounding. The same holds for complex a and x
(the scan then runs in complex64, complex128 for complex128 inputs; a real initial_state is promoted).

The backward pass is the same scan run the other way over the gradients (a custom autograd.Function). With g_t
the gradient reaching h_t from the loss, through h_t itself and through every later step,

    g_t = dh_t + conj(a_{t+1}) g_{t+1},   g_T = dh_T + dhT
    dx_t = g_t,   da_t = g_t * conj(h_{t-1}),   d initial_state = conj(a_1) g_1

conj is PyTorch's convention for complex autograd (for h = a x the gradient reaching x is g conj(a)); on real
tensors ``.conj()`` returns the tensor itself, so the real path is unchanged. A real input of a complex scan
gets the real part of its complex gradient.

``reverse=True`` runs the same phases with the time indices walked backwards (no flipped copies).

Packed documents (``cu_seqlens``, one pass): N documents in one row scan as one sequence in which each document's
first step (its last position when ``reverse``) forgets what came before and starts from its own initial state,

    a'_s = 0,   x'_s = x_s + a_s h0[n]       at each document's start s     (h0[n] = 0 without initial_state)

so h'_s = a_s h0[n] + x_s as in a separate run, and every later step of the document is the same recurrence. a'
and x' are made on the buffers the scan runs in (a custom autograd.Function, no other full-size buffer: on a CPU
each costs page faults), and its backward is the scan's own with a' (g does not cross into the previous document)
fixed up at the starts: da_s = g_s h0[n], d h0[n] = a_s g_s. Each document's final state is h at its last step
(its first position when ``reverse``). :func:`reset_at` makes a' and x' out of place, with autograd, for callers
that build a and x themselves (``ops.selective_scan``).
"""

from __future__ import annotations

import math

import torch

# Below this length a plain step-by-step loop is as fast as the blocked one.
SEQUENTIAL_BELOW = 24
# From this many channels (B * D) per step a plain loop is faster at any length: each step's op is then large
# enough that Python's per-op cost no longer matters, and the loop moves the data once where the blocked scan
# moves it about three times (one thread, CPU: [64, 64, 2048] 31 ms looped against 53 ms blocked, [8, 1024,
# 2048] 66 against 122; but [1, 2048, 4096] still favours the blocked scan, and [1, 2048, 2048] 15 against 33).
SEQUENTIAL_WIDTH = 16384
# ATen's at::internal::GRAIN_SIZE: elementwise CPU ops run on one thread below this many elements.
GRAIN_SIZE = 32768


def chunk_length(t: int, width: int = 1) -> int:
    """The chunk length C for a scan of length T over ``width`` = B * D channels: about sqrt(T), made odd.

    Shorter chunks mean fewer Python steps but larger [B, T/C, D] slices, each touching T/C rows C*D apart;
    on a CPU about sqrt(T) measured best (T = 4096, B*D = 512, one thread: 2.4 ms at C = 65 against 4.3 ms
    at C = 15). With several threads the slices must be big enough for ATen to split them (it parallelises
    elementwise ops from GRAIN_SIZE elements per thread), so C goes down to sqrt(T) / 2 to get there (two
    threads: 1.7 ms at C = 33 against 2.3 ms at C = 65). Odd, because with a power-of-two D an even C spaces
    the rows by a multiple of a large power of two: they fall in the same few cache sets and evict each other
    (measured up to 2.5x slower at C = 64 than at 63 or 65).
    """
    c = math.isqrt(t - 1) + 1
    threads = torch.get_num_threads()
    if threads > 1:
        n_parallel = -(-threads * GRAIN_SIZE // width)  # chunks for one grain per thread in each slice op
        c = min(c, max(t // n_parallel, (c + 1) // 2))
    return max(c, 1) | 1


def blocked_scan(
    a: torch.Tensor,
    x: torch.Tensor,
    h0: torch.Tensor | None = None,
    reverse: bool = False,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """All states h [B, T, D] of h_t = a_t h_{t-1} + x_t (h_{t+1} when ``reverse``), starting from ``h0``.

    Computes in the dtype of ``x`` (the caller upcasts); meant to run without autograd (see _LinearScan).
    ``out``, when given, is a [B, T, D] view with a unit stride over D and stride D over T that receives h.
    """
    b, t, d = x.shape
    h = torch.empty_like(x) if out is None else out
    s = x.new_zeros(b, d) if h0 is None else h0.to(x.dtype)
    if t < SEQUENTIAL_BELOW or b * d >= SEQUENTIAL_WIDTH:
        _sequential(a, x, s, h, range(t - 1, -1, -1) if reverse else range(t))
        return h
    c = chunk_length(t, b * d)
    n = t // c  # whole chunks; the r = T - n C leftover steps are scanned one by one at the end
    r = t - n * c
    # In processing order the chunks come first and the leftover steps last: at the end of time going
    # forward, at its start in reverse.
    main = slice(r, t) if reverse else slice(0, n * c)
    a_in = a[:, main].reshape(b, n, c, d).unbind(2)
    x_in = x[:, main].reshape(b, n, c, d).unbind(2)
    h_in = h[:, main].view(b, n, c, d).unbind(2)
    within = list(range(c - 1, -1, -1) if reverse else range(c))

    # 1. Each chunk's summary, for all chunks at once: its total decay p and its final state from zero, l.
    # Into preallocated buffers: a fresh [B, n, D] tensor per step would cost an allocation (and on Linux,
    # above 128 KiB, fresh pages to fault in) at every step.
    first = within[0]
    local, spare = x_in[first].clone(), torch.empty_like(x_in[first])
    decay = a_in[first].clone()
    for i in within[1:]:
        torch.addcmul(x_in[i], a_in[i], local, out=spare)
        local, spare = spare, local
        torch.mul(decay, a_in[i], out=decay)

    # 2. The state after each chunk: the same recurrence over the chunks' summaries, s_k = p_k s_{k-1} + l_k.
    after = blocked_scan(decay, local, s, reverse)  # [B, n, D]
    if reverse:
        entering, s = torch.cat([after[:, 1:], s[:, None]], dim=1), after[:, 0]
    else:
        entering, s = torch.cat([s[:, None], after[:, :-1]], dim=1), after[:, -1]

    # 3. Scan every chunk again from its entering state, writing the states straight into the output.
    prev = entering
    for i in within:
        torch.addcmul(x_in[i], a_in[i], prev, out=h_in[i])
        prev = h_in[i]

    # 4. The leftover steps (fewer than C), one at a time from the state after the last chunk.
    _sequential(a, x, s, h, range(r - 1, -1, -1) if reverse else range(n * c, t))
    return h


def _sequential(a, x, s, h, steps) -> None:
    """h_j = a_j s + x_j for j in ``steps`` (in order), s carried along; writes into h."""
    for j in steps:
        torch.addcmul(x[:, j], a[:, j], s, out=h[:, j])
        s = h[:, j]


class _LinearScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, x, initial_state, reverse):
        out_dtype = torch.promote_types(a.dtype, x.dtype)
        acc = torch.promote_types(out_dtype, torch.float32)
        a_acc, x_acc = a.to(acc), x.to(acc)
        h0 = None if initial_state is None else initial_state.to(acc)
        h = blocked_scan(a_acc, x_acc, h0, reverse)
        final = (h[:, 0] if reverse else h[:, -1]).clone()
        ctx.save_for_backward(a_acc, h, h0)
        ctx.reverse = reverse
        ctx.dtypes = (a.dtype, x.dtype, None if initial_state is None else initial_state.dtype)
        return h.to(out_dtype), final

    @staticmethod
    def backward(ctx, dh, dfinal):
        a, h, h0 = ctx.saved_tensors
        # Complex autograd multiplies by conjugates. .conj() is a lazy view (no copy), and the tensor itself
        # when real: the real path reads the same buffers as before.
        a, h = a.conj(), h.conj()
        h0 = None if h0 is None else h0.conj()
        a_dtype, x_dtype, h0_dtype = ctx.dtypes
        reverse = ctx.reverse
        b, t, d = h.shape
        dh = h.new_zeros(b, t, d) if dh is None else dh.to(h.dtype)
        # Written in time order as if forward; `reverse` mirrors every index (first/last, next/previous).
        # On a CPU every fresh [B, T, D] buffer costs page faults, so shifted copies of a and h are avoided:
        # the scans and products below read shifted views instead.
        first, last = (t - 1, 0) if reverse else (0, t - 1)
        g = torch.empty_like(h)
        g[:, last] = dh[:, last] if dfinal is None else dh[:, last] + dfinal.to(h.dtype)
        if t > 1:
            # g_t = dh_t + a_next(t) g_next(t) for every other t (a conjugated when complex): a scan against
            # the forward direction whose coefficients are a shifted by one step, started from g at the last step.
            if reverse:  # next(t) = t - 1
                blocked_scan(a[:, :-1], dh[:, 1:], g[:, last], False, out=g[:, 1:])
            else:  # next(t) = t + 1
                blocked_scan(a[:, 1:], dh[:, :-1], g[:, last], True, out=g[:, :-1])
        # da_t = g_t h_prev(t); the first step's previous state is the initial state.
        da = torch.empty_like(h)
        if reverse:
            torch.mul(g[:, :-1], h[:, 1:], out=da[:, :-1])
        else:
            torch.mul(g[:, 1:], h[:, :-1], out=da[:, 1:])
        if h0 is None:
            da[:, first] = 0
        else:
            torch.mul(g[:, first], h0, out=da[:, first])
        dh0 = None
        if ctx.needs_input_grad[2]:
            dh0 = _grad_as(a[:, first] * g[:, first], h0_dtype)
        return _grad_as(da, a_dtype), _grad_as(g, x_dtype), dh0, None


def _grad_as(grad: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A gradient in its input's dtype: a real input of a complex scan gets the real part (PyTorch's rule)."""
    if grad.is_complex() and not dtype.is_complex:
        grad = grad.real
    return grad.to(dtype)


def linear_scan(a, x, initial_state=None, output_final_state=False, reverse=False, cu_seqlens=None):
    if cu_seqlens is not None:
        return _packed(a, x, initial_state, output_final_state, bool(reverse), cu_seqlens)
    h, final = _LinearScan.apply(a, x, initial_state, bool(reverse))
    return h, (final if output_final_state else None)


def document_bounds(cu_seqlens: torch.Tensor, device, reverse: bool = False):
    """(first, last) positions of each packed document in the order a scan visits them, as [N] int64 on
    ``device``: (starts, ends) forward, (ends, starts) when ``reverse``."""
    cu = cu_seqlens.to(device=device, dtype=torch.long)
    starts, ends = cu[:-1], cu[1:] - 1
    return (ends, starts) if reverse else (starts, ends)


def reset_at(a, x, h0, first):
    """a', x' [B, T, M] of packed documents: a' = 0 at the positions ``first`` [N] (each document's first step)
    and x' = x + a h0[n] there (h0 [N, M], or None for zero states), so a plain scan restarts at each document.
    Autograd-tracked (out of place); the caller passes a, x and h0 in the scan's dtype (x is promoted to complex
    when a or h0 is complex and x is not: the scan would promote it anyway)."""
    a_first = a[:, first]  # [B, N, M]
    a = a.index_fill(1, first, 0)
    if h0 is not None:
        inject = a_first * h0[None]
        x = x.to(torch.promote_types(x.dtype, inject.dtype))
        x = x.index_add(1, first, inject.to(x.dtype))
    return a, x


def _packed(a, x, initial_state, output_final_state, reverse, cu_seqlens):
    """N documents packed in a, x [1, T, D] scanned in one pass (see the module docstring); the dispatcher has
    checked cu_seqlens and that initial_state has N rows."""
    first, last = document_bounds(cu_seqlens, x.device, reverse)
    h, final = _PackedLinearScan.apply(a, x, initial_state, first, last, reverse)
    return h, (final if output_final_state else None)


class _PackedLinearScan(torch.autograd.Function):
    """The scan of packed documents: _LinearScan on a' = a with zeros at the documents' first steps and
    x' = x + a h0[n] there, made on the copies the scan writes its states into (no other full-size buffer), with
    the backward fixed up at those steps: da_s = g_s h0[n] (not g_s h_{s-1}, which crosses documents), and
    d h0[n] = a_s g_s. The final states are the states at the documents' last steps."""

    @staticmethod
    def forward(ctx, a, x, initial_state, first, last, reverse):
        out_dtype = torch.promote_types(a.dtype, x.dtype)
        acc = torch.promote_types(out_dtype, torch.float32)
        a_reset = a.to(acc, copy=True)
        a_first = a_reset[:, first]  # [1, N, D], each document's first decay
        a_reset[:, first] = 0
        h = x.to(acc, copy=True)  # x', then the states written over it
        h0 = None if initial_state is None else initial_state.to(acc)
        if h0 is not None:
            # x + a h0 in the accumulation dtype, as a separate run's first step makes it.
            h.index_add_(1, first, a_first * h0[None])
        blocked_scan(a_reset, h, None, reverse, out=h)
        final = h[0, last]  # [N, D]
        ctx.save_for_backward(a_reset, h, h0, a_first, first, last)
        ctx.reverse = reverse
        ctx.dtypes = (a.dtype, x.dtype, None if initial_state is None else initial_state.dtype)
        return h.to(out_dtype), final

    @staticmethod
    def backward(ctx, dh, dfinal):
        a, h, h0, a_first, first, last = ctx.saved_tensors
        a, h, a_first = a.conj(), h.conj(), a_first.conj()  # complex autograd (see _LinearScan.backward)
        h0 = None if h0 is None else h0.conj()
        a_dtype, x_dtype, h0_dtype = ctx.dtypes
        reverse = ctx.reverse
        b, t, d = h.shape
        if dh is None:
            dh = h.new_zeros(b, t, d)
        elif dfinal is not None:
            dh = dh.to(h.dtype, copy=True)  # the final states' gradients go in at the documents' last steps
        else:
            dh = dh.to(h.dtype)
        if dfinal is not None:
            dh.index_add_(1, last, dfinal.to(h.dtype)[None])
        # g_t = dh_t + a'_next(t) g_next(t): a' is 0 at each document's first step, so nothing crosses into the
        # document before (the same scan as _LinearScan.backward's, whose comments explain the shifted views).
        row_first, row_last = (t - 1, 0) if reverse else (0, t - 1)
        g = torch.empty_like(h)
        g[:, row_last] = dh[:, row_last]
        if t > 1:
            if reverse:
                blocked_scan(a[:, :-1], dh[:, 1:], g[:, row_last], False, out=g[:, 1:])
            else:
                blocked_scan(a[:, 1:], dh[:, :-1], g[:, row_last], True, out=g[:, :-1])
        da = torch.empty_like(h)
        if reverse:
            torch.mul(g[:, :-1], h[:, 1:], out=da[:, :-1])
        else:
            torch.mul(g[:, 1:], h[:, :-1], out=da[:, 1:])
        # At each document's first step the previous state is its initial state (the row's first step is one).
        g_first = g[:, first]  # [1, N, D]
        da[:, first] = 0 if h0 is None else g_first * h0[None]
        dh0 = None
        if ctx.needs_input_grad[2]:
            dh0 = _grad_as((a_first * g_first)[0], h0_dtype)
        return _grad_as(da, a_dtype), _grad_as(g, x_dtype), dh0, None, None, None
