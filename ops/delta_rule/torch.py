"""The delta rule in chunks, in plain PyTorch (the CPU default and the fallback anywhere).

The chunkwise-parallel form of Yang et al. 2024, "Parallelizing Linear Transformers with the Delta Rule over
Sequence Length", with the per-head decays of Gated DeltaNet folded in as flash-linear-attention's
``chunk_gated_delta_rule`` does. The sequence is cut into chunks of C positions (default 64); in a chunk,
with h the state [K, V] before it, G_i the inclusive cumulative sum of the log decays restarted at the chunk
start (G = 0 without decay) and D_ij = exp(G_i - G_j) for j <= i (0 above the diagonal):

    S_i   = exp(G_i) h + sum_{j <= i} D_ij k_j u_j^T            (u_j: the value written at step j)
    u_i   = beta_i (v_i - exp(G_i) h^T k_i - sum_{j < i} D_ij (k_i . k_j) u_j)

so (I + L) u = diag(beta) (V - diag(exp G) K h) with L_ij = beta_i D_ij k_i . k_j strictly below the
diagonal. The UT / WY representation solves the triangular system once per chunk, for every chunk at once:

    U = (I + L)^-1 diag(beta) V,   W = (I + L)^-1 diag(beta exp(G)) K,   u = U - W h

(one ``solve_triangular``); then only a short loop over the T / C chunks remains, passing the state
(two batched matmuls per chunk):

    h_next = exp(G_last) h + sum_j D_last,j k_j u_j^T
    o_i    = scale (exp(G_i) q_i^T h + sum_{j <= i} D_ij (q_i . k_j) u_j)     # batched after the loop

Every exponent is <= 0 (G does not increase, since g <= 0): strong decays underflow to zero, nothing
overflows. The pairwise sums G_i - G_j are summed directly (a masked cumulative sum, no difference of two
large cumulative sums, which in fp32 loses ~1e-4 of a weight once a chunk has decayed by ~1000), and
exponents are raised to LOG_FLOOR = -40 (a weight below e^-40, ~4e-18, is invisible next to the weight-1
diagonal, and this keeps the arithmetic out of the slow subnormal range, as in ops.gla's torch backend).

The sequence is zero-padded to a whole number of chunks (zero k, v, beta and g leave the state as it is), and
a sequence shorter than the chunk is one chunk of its own length. Gradients come from autograd. Arithmetic is
fp32 (fp64 for fp64 inputs); the output is cast back to the input dtype.

Packed documents (``cu_seqlens``, one pass): each document is zero-padded to whole chunks inside one row
(``ops/_packed_chunks.py``; zero k, v, beta and g leave the state as it is), every chunk's triangular solve runs
for all documents at once as above, and the chunk loop restarts the state at each document's first chunk from
that document's initial state (zeros without one), keeping the state after its last chunk as its final state. The
chunk length is the one of 16, 32, 64 that weighs padding against the cost per position (``PACKED_CHUNK_COST``).
A long row runs a group of consecutive documents at a time (``GROUP_ELEMENTS``: its tensors stay in cache), a
document longer than that alone, unpacked.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._packed_chunks import choose_chunk, document_groups, pack_chunks, run_in_groups

CHUNK = 64
# Packed rows: the relative cost of a position at each chunk length (forward and backward, one CPU thread, H = 4,
# K = V = 64, T = 2048, per-head decays: 473, 502 and 591 ms at C = 16, 32, 64), weighed against the padding.
# Packed: 16 documents of 16..512 tokens 75, 79, 127 ms; 128 of 4..64 tokens 177, 231, 496 ms (C = 16 chosen).
PACKED_CHUNK_COST = {16: 0.8, 32: 0.85, 64: 1.0}
# A packed row runs one group of consecutive documents of up to this many elements per [T, H, K] tensor at a time
# (a longer document alone, unpacked): the same 16 and 128 documents (H = 4, K = V = 64) in groups of up to 2^30,
# 2048, 1024, 512, 256 tokens and one at a time: forward only 54, 22, 22, 27, 26, 30 ms and 93, 83, 47, 50, 47, 126
# ms; forward and backward 59, 54, 54, 59, 68, 84 ms and 147, 140, 146, 151, 166, 741 ms.
GROUP_ELEMENTS = 2048 * 256
GROUP_ELEMENTS_INFERENCE = 1024 * 256
# Exponents of decay factors are raised to this floor: see the module docstring.
LOG_FLOOR = -40.0


def delta_rule(
    q,
    k,
    v,
    beta,
    g=None,
    scale=None,
    initial_state=None,
    output_final_state=False,
    chunk=CHUNK,
    cu_seqlens=None,
):
    packing = None
    if cu_seqlens is not None:
        # Documents on whole chunks of one padded row (see the module docstring); the outputs read back at the end.
        bounds = [int(x) for x in cu_seqlens.tolist()]
        training = torch.is_grad_enabled() and any(
            x is not None and x.requires_grad for x in (q, k, v, beta, g, initial_state)
        )
        width = q.shape[2] * max(q.shape[3], v.shape[3])
        groups = document_groups(
            bounds, max(1, (GROUP_ELEMENTS if training else GROUP_ELEMENTS_INFERENCE) // width)
        )
        if len(groups) > 1:
            packed = dict(q=q, k=k, v=v, beta=beta, g=g)
            rest = dict(scale=scale, output_final_state=output_final_state, chunk=chunk)
            return run_in_groups(
                delta_rule, groups, bounds, cu_seqlens, packed, "initial_state", initial_state, **rest
            )
        lengths = [e - s for s, e in zip(bounds[:-1], bounds[1:])]
        # (A chunk length the caller chose is kept; the default one gives way to the one that pads least.)
        c = choose_chunk(lengths, PACKED_CHUNK_COST) if chunk == CHUNK else chunk
        packing = pack_chunks(bounds, c, q.device)
        q, k, v, beta, g = (packing.pad(x) for x in (q, k, v, beta, g))
    dt = torch.promote_types(q.dtype, torch.float32)
    b, t, h, dk = q.shape
    dv = v.shape[-1]
    scale = dk**-0.5 if scale is None else scale
    c = min(chunk, t) if packing is None else packing.chunk
    n = -(-t // c)
    qc = _chunked(q.to(dt), n, c)  # [BH, N, C, K]
    kc = _chunked(k.to(dt), n, c)
    vc = _chunked(v.to(dt), n, c)  # [BH, N, C, V]
    bc = _chunked(beta.to(dt), n, c)  # [BH, N, C]
    ones = torch.ones(c, c, dtype=torch.bool, device=q.device)
    lower, strict = ones.tril(), ones.tril(-1)  # j <= i, j < i

    kk = kc @ kc.transpose(-1, -2)  # [BH, N, C, C]
    qk = qc @ kc.transpose(-1, -2)
    if g is None:
        kk = kk.masked_fill(~strict, 0.0)
        qk = qk.masked_fill(~lower, 0.0)
        k_write = kc * bc[..., None]
        k_state, q_inter, chunk_decay = kc, qc, None
    else:
        gc = _chunked(g.to(dt), n, c)  # [BH, N, C]
        decay = _pair_decays(gc, strict, lower)  # D, [BH, N, C, C]
        gamma = _floored_exp(gc.cumsum(-1))  # exp(G_i), [BH, N, C]
        kk = (kk * decay).masked_fill(~strict, 0.0)
        qk = qk * decay
        k_write = kc * (bc * gamma)[..., None]
        k_state = kc * decay[..., -1, :, None]  # k_j exp(G_last - G_j)
        q_inter = qc * gamma[..., None]
        chunk_decay = gamma[..., -1, None, None]  # exp(G_last), [BH, N, 1, 1]

    # (I + L) X = diag(beta) [V, exp(G) K], L_ij = beta_i D_ij k_i . k_j (j < i): the diagonal of the matrix
    # handed over is zero, and unitriangular=True takes it as one.
    rhs = torch.cat([vc * bc[..., None], k_write], dim=-1)
    x = torch.linalg.solve_triangular(kk * bc[..., None], rhs, upper=False, unitriangular=True)
    U, W = x[..., :dv], x[..., dv:]

    if initial_state is None or packing is not None:
        state = qc.new_zeros(b * h, dk, dv)
    else:
        state = initial_state.to(dt).reshape(b * h, dk, dv)
    finals = []  # packed: the final state of every document but the last
    # By unbind, not indexing, as the per-chunk operands below (N index selects: N full-size zero gradients).
    initial_rows = None if packing is None or initial_state is None else initial_state.to(dt).unbind(0)
    # Per-chunk operands by unbind, not indexing: the backward of n index selects would build n full-size
    # zero gradients (quadratic in n); that of unbind is one stack.
    U_n, W_n, k_state_n = U.unbind(1), W.unbind(1), k_state.transpose(-1, -2).unbind(1)
    decay_n = chunk_decay.unbind(1) if chunk_decay is not None else (None,) * n
    starts, written = [], []
    for i, (U_i, W_i, k_i, decay_i) in enumerate(zip(U_n, W_n, k_state_n, decay_n)):
        doc = None if packing is None else packing.restarts.get(i)
        if doc is not None:  # a document begins: keep the last one's state, start from this one's
            if i > 0:
                finals.append(state)
            state = torch.zeros_like(state) if initial_state is None else initial_rows[doc]
        starts.append(state)
        u = torch.baddbmm(U_i, W_i, state, alpha=-1.0)  # [BH, C, V]
        written.append(u)
        if decay_i is not None:
            state = state * decay_i
        state = torch.baddbmm(state, k_i, u)
    u = torch.stack(written, dim=1)  # [BH, N, C, V]
    o = (q_inter @ torch.stack(starts, dim=1)).add_(qk @ u).mul_(scale)
    o = o.reshape(b, h, n * c, dv)[:, :, :t].transpose(1, 2)
    if packing is not None:
        final = torch.stack(finals + [state]) if output_final_state else None  # [N, H, K, V]
        return packing.unpad(o.to(q.dtype)), final
    final = state.reshape(b, h, dk, dv) if output_final_state else None
    return o.to(q.dtype), final


def _chunked(x, n_chunks, chunk):
    """[B, T, H, ...] -> [B * H, N, C, ...], zero-padded at the end of the sequence."""
    b, t, h = x.shape[:3]
    x = x.transpose(1, 2)
    pad = n_chunks * chunk - t
    if pad:
        x = F.pad(x, (0, 0) * (x.dim() - 3) + (0, pad))
    # Contiguous once here, or every matmul below would copy its strided operand again.
    return x.reshape(b * h, n_chunks, chunk, *x.shape[3:]).contiguous()


def _floored_exp(x):
    """exp(x) for x <= 0, with x raised to LOG_FLOOR (see the module docstring)."""
    return x.clamp(min=LOG_FLOOR).exp()


def _pair_decays(g, strict, lower):
    """D_ij = exp(sum_{j < l <= i} g_l) for j <= i, 0 above the diagonal; g [..., C] -> [..., C, C].

    The sums are taken term by term (a cumulative sum over l of g_l kept where l > j), never as the
    difference of two cumulative sums: no cancellation, and every exponent is <= 0. Above the diagonal the
    masked sum is 0, so exp never sees a large argument there (its gradient stays finite before the mask).
    """
    c = g.shape[-1]
    terms = g[..., :, None].expand(*g.shape, c).masked_fill(~strict, 0.0)  # [.., l, j]: g_l where l > j
    return _floored_exp(terms.cumsum(-2)).masked_fill(~lower, 0.0)
