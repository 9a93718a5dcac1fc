"""Gated linear attention in chunks, in plain PyTorch (the CPU default and the fallback anywhere).

The sequence is cut into chunks of C positions. Within a chunk, with G the inclusive cumulative sum of the
log decays *restarted at the chunk start* and h the state before the chunk (``scale`` multiplies o last):

    o_i   = (q_i * exp(G_i)) h  +  sum_{j <= i in chunk} (sum_k q_ik k_jk exp(G_ik - G_jk)) v_j
    h_out = exp(G_last)[:, None] * h  +  sum_j (k_j * exp(G_last - G_j))^T v_j

The exponents above are <= 0 (G does not increase, since g <= 0): strong decays underflow to zero and
never overflow. The intra-chunk term needs exp(G_i - G_j) for every pair; a naive exp(G_i) * exp(-G_j)
overflows as soon as a chunk decays by more than ~88 in log space. Two forms avoid that:

- factored (the common case): a chunk whose decays span R = G_first - G_last <= 60 in every channel uses
  exp(G_i - m) * exp(m - G_j) with m the midpoint of the span, each factor within exp(+-R/2): one matmul,
  masked to j <= i *after* it (masked entries may be huge, never multiplied by zero);
- halvings (strong decays): a block of 2s positions is [[A_first, 0], [off, A_second]], ``off`` being one
  matmul of decays taken to the pivot r = first position of the second half, exp(G_i - G_r) and
  exp(G_r - G_j) both <= 1; the diagonal of single positions has no decay. Every exponent is <= 0 (and
  raised to LOG_FLOOR = -40, which keeps the arithmetic out of the slow subnormal range).

One decay per head ([B, T, H]) is a decay with one channel that broadcasts over K; no decay skips all of it
and the chunk states are a running sum; without autograd (inference) it walks the chunks one by one, so that
a chunk's scores and the state stay in cache. Chunk states are passed by a short loop over the T / C
chunks (elementwise updates only); the rest is batched matmuls. Gradients come from autograd. Arithmetic is
fp32 (fp64 for fp64 inputs); outputs are cast back to the input dtype. ``causal=False`` adds the reverse
recurrence, run as the causal one on the flipped sequence (see reference.py for the definition).

Packed documents (``cu_seqlens``, one pass): each document is zero-padded to whole chunks inside one row
(``ops/_packed_chunks.py``; zero q, k, v and g add nothing and keep the state), the chunks of all documents are
computed together as above, and the loop that carries the state from chunk to chunk restarts it at each document's
first chunk from that document's initial state (zeros without one) and keeps it after the document's last chunk as
its final state. The chunk length is the power of two in 16..64 whose padded row costs least (its padding weighed by
``PACKED_CHUNK_COST``, or ``PACKED_CHUNK_COST_INFERENCE`` without autograd). A long row runs a group of consecutive
documents at a time (``GROUP_ELEMENTS``: its tensors stay in cache), a document longer than that alone, unpacked.
``causal=False`` (no state, no chunk loop to restart) runs once per document.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from .._packed_chunks import choose_chunk, document_groups, pack_chunks, run_in_groups

CHUNK = 64
# Packed rows: the relative cost of a padded position at each chunk length, against which the padding each saves
# is weighed. Measured packed (one CPU thread, H = 4, K = V = 64; 16 documents of 16..512 tokens padded to 1632,
# 1760, 2048 positions at C = 16, 32, 64, and 128 of 4..64 tokens to 3664, 4960, 8192): forward and backward 56,
# 61, 79 ms and 121, 157, 309 ms (the states of short chunks cost little next to the padding of long ones);
# forward only 28, 20, 25 ms and 65, 77, 105 ms (there the [K, V] state per chunk is a larger share).
PACKED_CHUNK_COST = {16: 0.9, 32: 0.9, 64: 1.0}
PACKED_CHUNK_COST_INFERENCE = {64: 1.0, 32: 1.05, 16: 1.45}
# A packed row runs one group of consecutive documents of up to this many elements per [T, H, K] tensor at a time
# (T H max(K, V); a longer document alone, unpacked), whose tensors stay in cache. The same 16 and 128 documents
# (H = 4, K = V = 64) in groups of up to 2^30, 2048, 1024, 512, 256 tokens and one at a time: forward only 30, 23,
# 20, 17, 18, 27 ms and 104, 82, 55, 43, 42, 128 ms; forward and backward 41, 42, 42, 51, 56, 74 ms and 131, 102,
# 107, 137, 157, 641 ms.
GROUP_ELEMENTS = 2048 * 256
GROUP_ELEMENTS_INFERENCE = 512 * 256
MIN_CHUNK = 16
# Largest per-channel decay span (in log space) of a chunk for the one-matmul intra-chunk form.
MAX_FACTORED_SPAN = 60.0
# Exponents of decay factors that multiply something bounded are raised to this floor: a weight below
# e^-40 (~4e-18, far below fp32 resolution next to the weight-1 diagonal) then stays at that size instead of
# passing through the subnormal range, whose arithmetic is ~100x slower on x86 CPUs (strong decays made
# this path 5x slower). Products of two floored factors stay normal (>= e^-80).
LOG_FLOOR = -40.0


def gla(
    q, k, v, g=None, scale=None, initial_state=None, output_final_state=False, causal=True, cu_seqlens=None
):
    if cu_seqlens is not None:
        return _packed(q, k, v, g, scale, initial_state, output_final_state, causal, cu_seqlens)
    if not causal:
        return _bidirectional(q, k, v, g, scale), None
    o, state = _causal(q, k, v, g, scale, initial_state, output_final_state)
    return o, state


def _bidirectional(q, k, v, g, scale):
    """Forward recurrence + reverse recurrence - the diagonal (see reference.py for the definition)."""
    dt = torch.promote_types(q.dtype, torch.float32)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if g is None:
        # No decay: every query sees the sum of all k_j^T v_j.
        kv = torch.einsum("bthk,bthv->bhkv", k.to(dt), v.to(dt))
        # The scale on the [K, V] state rather than on q: one pass less over a [B, T, H, K] tensor.
        return torch.einsum("bthk,bhkv->bthv", q.to(dt), kv * scale).to(q.dtype)
    fwd, _ = _causal(q, k, v, g, scale, None, False, out_dtype=dt)
    # The reverse recurrence R_t = exp(g_{t+1}) R_{t+1} + k_t^T v_t is the causal one on the flipped sequence
    # with the gates shifted by one: flipped position s uses g_{T-s}, and the first (s = 0) uses none.
    g_rev = torch.cat([torch.zeros_like(g[:, :1]), g.flip(1)[:, :-1]], dim=1)
    rev, _ = _causal(q.flip(1), k.flip(1), v.flip(1), g_rev, scale, None, False, out_dtype=dt)
    qf, kf, vf = q.to(dt), k.to(dt), v.to(dt)
    diag = scale * (qf * kf).sum(-1, keepdim=True) * vf
    return (fwd + rev.flip(1) - diag).to(q.dtype)


def _chunked(x, n_chunks, chunk):
    """[B, T, H, ...] -> [B, H, N, C, ...], zero-padded at the end of the sequence."""
    b, t, h = x.shape[:3]
    x = x.transpose(1, 2)
    pad = n_chunks * chunk - t
    if pad:
        # Zero keys/values add nothing and zero log decays keep the state: padding never changes a result.
        x = F.pad(x, (0, 0) * (x.dim() - 3) + (0, pad))
    # Contiguous once here, or every matmul below would copy its strided operand again.
    return x.reshape(b, h, n_chunks, chunk, *x.shape[3:]).contiguous()


def _packed(q, k, v, g, scale, initial_state, output_final_state, causal, cu_seqlens):
    """N documents packed in q, k, v, g [1, T, ...] (see the module docstring); cu_seqlens already checked and
    initial_state one row per document."""
    bounds = [int(x) for x in cu_seqlens.tolist()]
    if not causal:
        cut = lambda x, s, e: None if x is None else x[:, s:e]
        parts = [
            _bidirectional(cut(q, s, e), cut(k, s, e), cut(v, s, e), cut(g, s, e), scale)
            for s, e in zip(bounds[:-1], bounds[1:])
        ]
        return torch.cat(parts, dim=1), None
    training = _needs_grad(q, k, v, g, initial_state)
    width = q.shape[2] * max(q.shape[3], v.shape[3])
    groups = document_groups(
        bounds, max(1, (GROUP_ELEMENTS if training else GROUP_ELEMENTS_INFERENCE) // width)
    )
    if len(groups) > 1:
        packed = dict(q=q, k=k, v=v, g=g)
        rest = dict(scale=scale, output_final_state=output_final_state)
        return run_in_groups(gla, groups, bounds, cu_seqlens, packed, "initial_state", initial_state, **rest)
    lengths = [e - s for s, e in zip(bounds[:-1], bounds[1:])]
    costs = PACKED_CHUNK_COST if training else PACKED_CHUNK_COST_INFERENCE
    packing = pack_chunks(bounds, choose_chunk(lengths, costs), q.device)
    o, final = _causal(
        packing.pad(q), packing.pad(k), packing.pad(v), packing.pad(g), scale, initial_state, output_final_state,
        packing=packing,
    )  # fmt: skip
    return packing.unpad(o), final


def _restart(i, state, packing, state0, finals):
    """The state entering chunk i of a packed row: the document's initial state (zeros without one) at a chunk
    that begins a document, after keeping the state the previous document ended in; else ``state``."""
    doc = packing.restarts.get(i)
    if doc is None:
        return state
    if i > 0:
        finals.append(state)
    if state0 is None:
        return torch.zeros_like(state)
    return state0[doc][None]


def _causal(q, k, v, g, scale, initial_state, output_final_state, out_dtype=None, chunk=CHUNK, packing=None):
    """Causal GLA over q, k, v, g [B, T, ...]. With ``packing`` (a packed row padded to whole chunks, B = 1) the
    chunk length is packing's, initial_state has one row per document, the final state too, and o is the padded
    row's."""
    dt = torch.promote_types(q.dtype, torch.float32)
    b, t, h, dk = q.shape
    dv = v.shape[-1]
    scale = dk**-0.5 if scale is None else scale
    # Short inputs (decoding, prefill of a few tokens) take one chunk, a power of two (the halvings of
    # _intra_halvings need one) of at least MIN_CHUNK positions.
    chunk = min(chunk, max(MIN_CHUNK, 1 << (t - 1).bit_length())) if packing is None else packing.chunk
    n = -(-t // chunk)
    qc = _chunked(q.to(dt), n, chunk)  # [B, H, N, C, K]
    kc = _chunked(k.to(dt), n, chunk)
    vc = _chunked(v.to(dt), n, chunk)  # [B, H, N, C, V]
    state0 = None if initial_state is None else initial_state.to(dt)
    finals = []  # packed: the final state of every document but the last
    if packing is not None and state0 is not None:
        # The documents' initial states by unbind, not indexing: the backward of N index selects would build N
        # full-size zero gradients (quadratic in N); that of unbind is one stack.
        state0 = state0.unbind(0)

    if g is None and not _needs_grad(q, k, v, initial_state):
        # Inference without decay: chunk by chunk, so that the [C, C] scores and the state stay in cache (the
        # batched form below streams five [B, H, T, 64] tensors through memory: 1.2-2x slower forward on a
        # CPU at T = 1k..8k, bench_results/flow-core-vs-gla-cpu-interleaved.json).
        state = state0.clone() if state0 is not None and packing is None else qc.new_zeros(b, h, dk, dv)
        o = qc.new_empty(b, h, n, chunk, dv)
        for i in range(n):
            if packing is not None and i in packing.restarts:
                state = _restart(i, state, packing, state0, finals).clone()  # updated in place below
            qi, ki, vi = qc[:, :, i], kc[:, :, i], vc[:, :, i]
            torch.matmul((qi @ ki.transpose(-1, -2)).tril_(), vi, out=o[:, :, i])
            o[:, :, i].add_(qi @ state)
            state.add_(ki.transpose(-1, -2) @ vi)
        final = state if output_final_state else None
    elif g is None:
        scores = (qc @ kc.transpose(-1, -2)).tril_()
        delta = kc.transpose(-1, -2) @ vc  # [B, H, N, K, V]
        # No decay: the state before chunk n is the initial state plus every earlier chunk's k^T v, a running
        # sum over chunks. N elementwise adds: an [N, N] matmul costs as much as the matmuls above at N = 64
        # and grows as N^2 (2x slower at T = 4096 on a CPU), and cumsum over this middle dim is slower still.
        state = state0 if state0 is not None and packing is None else qc.new_zeros(b, h, dk, dv)
        starts = []
        for i, delta_i in enumerate(delta.unbind(2)):
            if packing is not None:
                state = _restart(i, state, packing, state0, finals)
            starts.append(state)
            state = state + delta_i
        o = (scores @ vc).add_(qc @ torch.stack(starts, dim=2))
        final = state if output_final_state else None
    else:
        gc = _chunked(g.to(dt), n, chunk)  # [B, H, N, C, K] or [B, H, N, C] (one decay per head)
        G = gc.cumsum(3)
        if g.dim() == 3:
            G = G[..., None]  # [B, H, N, C, 1]: broadcasts over the key channels below
        causal_mask = torch.ones(chunk, chunk, dtype=torch.bool, device=q.device).tril()
        scores, q_inter, k_state = _intra_chunk(qc, kc, G, causal_mask)
        chunk_decay = G[..., -1, :, None].exp()  # [B, H, N, K or 1, 1]
        delta = k_state.transpose(-1, -2) @ vc  # [B, H, N, K, V]
        state = state0 if state0 is not None and packing is None else qc.new_zeros(b, h, dk, dv)
        starts = []
        # One fused op per chunk: at T = 2048 this loop is a fair part of the CPU time.
        for i, (decay_i, delta_i) in enumerate(zip(chunk_decay.unbind(2), delta.unbind(2))):
            if packing is not None:
                state = _restart(i, state, packing, state0, finals)
            starts.append(state)
            state = torch.addcmul(delta_i, state, decay_i)
        o = (scores @ vc).add_(q_inter @ torch.stack(starts, dim=2))
        final = state if output_final_state else None

    if scale != 1.0:  # flow-attention, SSD and Liger call with scale 1: no pass over o for it
        o = o.mul_(scale)
    o = o.reshape(b, h, n * chunk, dv)[:, :, :t].transpose(1, 2)
    if packing is not None and output_final_state:
        final = torch.cat(finals + [final])
    return o.to(out_dtype or q.dtype), final


def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _intra_chunk(qc, kc, G, causal_mask):
    """The intra-chunk scores A_ij = sum_k q_ik k_jk exp(G_ik - G_jk) (j <= i), and the decayed queries
    q * exp(G) and keys k * exp(G_last - G) of the inter-chunk terms. G [B, H, N, C, K or 1].

    Where a chunk's decays span R = G_first - G_last <= MAX_FACTORED_SPAN in every channel (the usual case:
    trained gates forget slowly), exp(G_i - G_j) = exp(G_i - m) * exp(m - G_j) with m the midpoint of the
    span: each factor lies within exp(+-R/2), so nothing overflows or underflows harmfully, and the scores
    are one matmul. The decayed queries and keys of that form give the inter-chunk ones by a per-chunk
    factor, so only two exponentials of q's size are taken. Other chunks take :func:`_intra_halvings`,
    whose exponents are all <= 0 whatever the decays.
    """
    G_first, G_last = G[..., :1, :], G[..., -1:, :]
    span = (G_first - G_last).detach().amax(dim=(-2, -1))  # [B, H, N]
    mild = span <= MAX_FACTORED_SPAN
    if bool(mild.all()):
        # The midpoint m = G_last + R/2, so exp(G_i - m) = exp(G_i - G_last) * exp(-R/2): the keys' factor
        # exp(G_last - G_j) is that of the inter-chunk state, and the queries take exp(G - G_last) (<= e^R).
        # Separate exponentials rather than a reciprocal, whose gradient would square exp(-R).
        half = 0.5 * (G_first - G_last)
        mid = G_last + half
        k_state = kc * (G_last - G).exp()
        q_fact = qc * (G - mid).exp()
        # Above the diagonal the products may be huge (even inf): masked out, never multiplied by zero.
        scores = (q_fact @ (k_state * half.exp()).transpose(-1, -2)).masked_fill_(~causal_mask, 0.0)
        # exp(m) underflows only where m < -87; q * exp(G) <= q * exp(m + R/2) is then below e^-57 q.
        return scores, q_fact * mid.exp(), k_state
    q_inter, k_state = qc * _floored_exp(G), kc * _floored_exp(G_last - G)
    scores = _intra_halvings(qc, kc, G)
    if bool(mild.any()):
        # Mixed: the factored form sees no decay in the strongly decaying chunks (finite values, whose
        # gradient the where then zeroes, rather than inf * 0 = NaN).
        keep = mild[..., None, None]
        Gm = G * keep
        mid = 0.5 * (Gm[..., :1, :] + Gm[..., -1:, :])
        factored = ((qc * (Gm - mid).exp()) @ (kc * (mid - Gm).exp()).transpose(-1, -2)).masked_fill_(
            ~causal_mask, 0.0
        )
        scores = torch.where(keep, factored, scores)
    return scores, q_inter, k_state


def _floored_exp(x):
    """exp(x) for x <= 0, with x raised to LOG_FLOOR (see there)."""
    return x.clamp(min=LOG_FLOOR).exp()


def _intra_halvings(qc, kc, G):
    """Intra-chunk scores A_ij = sum_k q_ik k_jk exp(G_ik - G_jk) for j <= i, every exponent kept <= 0.

    Over halvings: a block of 2s positions is [[A_first, 0], [off, A_second]], where ``off`` (the second
    half's queries against the first half's keys) is one matmul of decays taken to the pivot r, the first
    position of the second half: exp(G_i - G_j) = exp(G_i - G_r) * exp(G_r - G_j), both factors <= 1. The
    diagonal of single positions has no decay at all. The off-diagonal blocks of every level and the diagonal
    are placed into the [C, C] matrix by one index_copy (see :func:`_halving_layout`).
    """
    b, h, n, c, dk = qc.shape
    parts = [(qc * kc).sum(-1)]  # the diagonal, exp(0) = 1
    s = 1
    while s < c:
        m = c // (2 * s)  # parent blocks of size 2s
        q1 = qc.reshape(b, h, n, m, 2, s, dk)[..., 1, :, :]
        k0 = kc.reshape(b, h, n, m, 2, s, dk)[..., 0, :, :]
        Gp = G.reshape(b, h, n, m, 2, s, G.shape[-1])  # G may have one channel (a decay per head)
        G0, G1 = Gp[..., 0, :, :], Gp[..., 1, :, :]
        pivot = G1[..., :1, :]
        qd, kd = q1 * _floored_exp(G1 - pivot), k0 * _floored_exp(pivot - G0)
        # [B, H, N, m, s, s]; a 1x1 "matmul" is cheaper as a dot product.
        off = (qd * kd).sum(-1, keepdim=True) if s == 1 else qd @ kd.transpose(-1, -2)
        parts.append(off.reshape(b, h, n, m * s * s))
        s *= 2
    flat = qc.new_zeros(b, h, n, c * c).index_copy(-1, _halving_layout(c, qc.device), torch.cat(parts, -1))
    return flat.reshape(b, h, n, c, c)


@functools.lru_cache(maxsize=8)
def _halving_layout(c: int, device: torch.device) -> torch.Tensor:
    """Flat [C * C] positions of the values _intra_halvings concatenates: the diagonal, then level by level
    the off-diagonal blocks (parent p, row i, column j) at row 2sp + s + i, column 2sp + j."""
    idx = [torch.arange(c) * (c + 1)]
    s = 1
    while s < c:
        p = torch.arange(c // (2 * s))[:, None, None]
        i = torch.arange(s)[None, :, None]
        j = torch.arange(s)[None, None, :]
        idx.append(((2 * s * p + s + i) * c + 2 * s * p + j).reshape(-1))
        s *= 2
    return torch.cat(idx).to(device)
