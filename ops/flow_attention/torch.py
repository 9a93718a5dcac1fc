"""Flow-attention in linear time and memory: the normalisers in PyTorch, the linear attention by ``ops.gla``.

Flow-attention splits into two parts (equations in :mod:`.reference`):

1. the flow normalisers I, O, Î, Ô, the allocation A and the competition c: prefix sums (or plain sums)
   of D-vectors and scalars over the sequence, O(T D) memory. :func:`flow_weights` folds them into

       q'_i = q_i A_i / I_i          v'_j = v_j c_j

2. linear attention without decay on the rescaled inputs, o_i = q'_i sum_{j<=i} k_j^T v'_j (causal) or
   o_i = q'_i (K^T V') (non-causal): ``ops.gla(q', k, v', g=None, scale=1, causal=...)``, a special case of
   gated linear attention, so flow-attention runs on gla's kernels rather than keeping its own
   (issue 14; the timings that decided it: ``bench_results/flow-core-vs-gla-cpu-interleaved.json``).

:func:`flow_attention` is the ``torch`` backend (gla's chunked PyTorch, everything in fp32, fp64 for fp64
inputs) and, with ``gla_backend="triton"``, the ``triton`` one (gla's chunked Triton kernels, causal only,
reading the inputs' dtype: tensor cores for bf16/fp16, fp32 accumulation). No [B, T, H, D, M] tensor is formed:
the largest are the inputs, gla's [C, C] score blocks per chunk and its chunk-start states [B, H, T/C, D, M].

``flow_weights`` also takes and returns the running sums of a decoding state (see :mod:`.recurrent`), so
prefilling from a state and stepping token by token reuse the same code.
"""

from __future__ import annotations

import torch

from .._varlen import lengths_from_cu_seqlens, positions_from_cu_seqlens, seq_idx_from_cu_seqlens
from ..gla import gla

EPS = 1e-6

# Names of the running sums a causal flow-attention carries from one segment to the next, with their shapes
# ([B, H, D] unless noted); "kv" (sum k^T v', [B, H, D, M]) and "count" ([B], positions seen) complete a
# decoding state.
SUM_KEYS = ("k_sum", "q_sum", "k_flow", "q_flow", "exp_sum")


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum(-1)


def _segment_tools(cu_seqlens, x):
    """For packed documents: (prefix, total, n) where prefix(x) is each document's own running sum over time,
    total(x) its whole sum at every position, and n [1, T, 1, 1]-broadcastable the positions seen (1-based) or
    the document's length (for total)."""
    from ..linear_scan import linear_scan  # a reset at each document start: exact per-document running sums

    seq = seq_idx_from_cu_seqlens(cu_seqlens.to(x.device))
    lengths = lengths_from_cu_seqlens(cu_seqlens).to(x.device, x.dtype)

    def prefix(y):
        flat = y.reshape(1, y.shape[1], -1)
        h, _ = linear_scan(torch.ones_like(flat), flat, cu_seqlens=cu_seqlens, backend="torch")
        return h.reshape(y.shape)

    def total(y):
        sums = y.new_zeros(lengths.numel(), *y.shape[2:]).index_add(0, seq, y[0])
        return sums[seq][None]

    positions = positions_from_cu_seqlens(cu_seqlens.to(x.device)).to(x.dtype) + 1
    return prefix, total, positions[None, :, None], lengths[seq][None, :, None]


def flow_weights(q, k, v, causal=True, sums=None, cu_seqlens=None):
    """Fold the flow normalisers into the inputs: returns ``q' = q A / I``, ``v' = v c`` and the new sums.

    q, k [B, T, H, D], v [B, T, H, M], already in the compute dtype. ``sums`` (causal only) holds the running
    sums after the positions before this segment: ``k_sum`` = sum k, ``q_sum`` = sum q, ``k_flow`` =
    sum k n / O, ``q_flow`` = sum q n / I ([B, H, D]), ``exp_sum`` = sum exp(Ô) ([B, H]) and ``count``
    ([B], long); None means the segment starts the sequence. The returned sums (causal) hold the same after
    this segment; non-causal returns None for them.
    """
    b, t = q.shape[:2]
    if cu_seqlens is not None:
        return _packed_flow_weights(q, k, v, causal, cu_seqlens)
    if not causal:
        incoming = _dot(q + EPS, k.sum(1, keepdim=True) + EPS)  # I [B, T, H]
        outgoing = _dot(k + EPS, q.sum(1, keepdim=True) + EPS)  # O
        incoming_hat = _dot(q + EPS, (k / outgoing[..., None]).sum(1, keepdim=True) + EPS)
        outgoing_hat = _dot(k + EPS, (q / incoming[..., None]).sum(1, keepdim=True) + EPS).clamp(-1.0, 1.0)
        allocation = torch.sigmoid(incoming_hat)  # n / m = 1
        competition = torch.softmax(outgoing_hat, dim=1) * t
        return q * (allocation / incoming)[..., None], v * competition[..., None], None

    count = sums["count"] if sums is not None else torch.zeros(b, dtype=torch.long, device=q.device)
    # n_i: positions seen up to and including token i, per sequence (a state may sit at any position).
    n = (count[:, None].to(q.dtype) + torch.arange(1, t + 1, device=q.device, dtype=q.dtype))[..., None]

    def prefix(x, key):
        c = x.cumsum(1)
        return c if sums is None else c + sums[key][:, None].to(c.dtype)

    k_sum, q_sum = prefix(k, "k_sum"), prefix(q, "q_sum")
    incoming = _dot(q + EPS, k_sum + EPS)  # [B, T, H]
    outgoing = _dot(k + EPS, q_sum + EPS)
    k_flow = prefix(k * (n / outgoing)[..., None], "k_flow")
    q_flow = prefix(q * (n / incoming)[..., None], "q_flow")
    incoming_hat = _dot(q + EPS, k_flow + EPS) / n
    outgoing_hat = (_dot(k + EPS, q_flow + EPS) / n).clamp(-1.0, 1.0)
    allocation = torch.sigmoid(incoming_hat)
    # |Ô| <= 1, so exp needs no max-shift and the running sum grows at most linearly.
    e = outgoing_hat.exp()
    exp_sum = prefix(e, "exp_sum")
    competition = e / exp_sum * n
    new_sums = {
        "k_sum": k_sum[:, -1],
        "q_sum": q_sum[:, -1],
        "k_flow": k_flow[:, -1],
        "q_flow": q_flow[:, -1],
        "exp_sum": exp_sum[:, -1],
        "count": count + t,
    }
    return q * (allocation / incoming)[..., None], v * competition[..., None], new_sums


def _packed_flow_weights(q, k, v, causal, cu_seqlens):
    """flow_weights over documents packed in one row: every sum (running or whole) is the document's own, and n
    counts positions inside it; the same equations as the unpacked path."""
    prefix, total, n, length = _segment_tools(cu_seqlens, q)
    if not causal:
        incoming = _dot(q + EPS, total(k) + EPS)
        outgoing = _dot(k + EPS, total(q) + EPS)
        incoming_hat = _dot(q + EPS, total(k / outgoing[..., None]) + EPS)
        outgoing_hat = _dot(k + EPS, total(q / incoming[..., None]) + EPS).clamp(-1.0, 1.0)
        allocation = torch.sigmoid(incoming_hat)
        e = outgoing_hat.exp()  # |Ô| <= 1: the softmax over each document needs no max-shift
        competition = e / total(e) * length
        return q * (allocation / incoming)[..., None], v * competition[..., None], None
    incoming = _dot(q + EPS, prefix(k) + EPS)
    outgoing = _dot(k + EPS, prefix(q) + EPS)
    incoming_hat = _dot(q + EPS, prefix(k * (n / outgoing)[..., None]) + EPS) / n
    outgoing_hat = (_dot(k + EPS, prefix(q * (n / incoming)[..., None]) + EPS) / n).clamp(-1.0, 1.0)
    allocation = torch.sigmoid(incoming_hat)
    e = outgoing_hat.exp()
    competition = e / prefix(e) * n
    return q * (allocation / incoming)[..., None], v * competition[..., None], None


def flow_attention(q, k, v, causal=True, gla_backend="torch", cu_seqlens=None):
    """q, k [B, T, H, D], v [B, T, H, M] -> o [B, T, H, M] in q's dtype; ``gla_backend``: ``torch`` or ``triton``.
    ``cu_seqlens``: q, k, v [1, T, ...] pack documents; the normalisers are each document's own and ops.gla
    takes the boundaries."""
    out_dtype = q.dtype
    # The normalisers in fp32 (fp64 stays fp64): prefix sums over long sequences would drift in bf16.
    dt = torch.promote_types(q.dtype, torch.float32)
    k_in = k  # gla's Triton kernels read k as given
    q, k, v = q.to(dt), k.to(dt), v.to(dt)  # once: k's two gradients then add up in fp32
    q_scaled, v_scaled, _ = flow_weights(q, k, v, causal, cu_seqlens=cu_seqlens)
    if gla_backend == "triton":
        q_scaled, v_scaled = q_scaled.to(out_dtype), v_scaled.to(out_dtype)
    else:
        k_in = k
    o, _ = gla(
        q_scaled, k_in, v_scaled, None, scale=1.0, causal=causal, backend=gla_backend, cu_seqlens=cu_seqlens
    )
    return o.to(out_dtype)
