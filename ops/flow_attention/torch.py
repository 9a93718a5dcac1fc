"""Flow-attention in linear time and memory with PyTorch: the CPU default and the fallback anywhere.

Flow-attention splits into two parts (equations in :mod:`.reference`):

1. the flow normalisers I, O, Î, Ô, the allocation A and the competition c: prefix sums (or plain sums)
   of D-vectors and scalars over the sequence, O(T D) memory. :func:`flow_weights` folds them into

       q'_i = q_i A_i / I_i          v'_j = v_j c_j

2. linear attention without decay on the rescaled inputs, o_i = q'_i sum_{j<=i} k_j^T v'_j (causal) or
   o_i = q'_i (K^T V') (non-causal). The causal one runs chunk by chunk
   (:class:`ChunkedCausalLinearAttention`): within a chunk of C positions a masked [C, C] score matrix,
   across chunks a running [D, M] state. Its backward is written by hand with two more passes, so no
   per-chunk state is ever stored:

       dq: forward over chunks with S = sum k^T v'        dq_c = dO_c S^T + tril(dO_c V_c^T) K_c
       dk, dv': backward over chunks with G = sum q'^T dO  dk_c = tril(dO_c V_c^T)^T Q_c + V_c G^T
                                                           dv_c = tril(Q_c K_c^T)^T dO_c + K_c G

The largest tensors are the [B, T, H, D] / [B, T, H, M] inputs, a [B, H, C, C] block and the [B, H, D, M]
state: O(B H (T D + D M + C^2)) memory and never an O(T D M) tensor. Everything runs in fp32 (fp64 for fp64
inputs); the output comes back in the input dtype. The Triton backend shares part 1 with this module.

``flow_weights`` also takes and returns the running sums of a decoding state (see :mod:`.recurrent`), so
prefilling from a state and stepping token by token reuse the same code.
"""

from __future__ import annotations

import torch

EPS = 1e-6
DEFAULT_CHUNK = 64

# Names of the running sums a causal flow-attention carries from one segment to the next, with their shapes
# ([B, H, D] unless noted); "kv" (sum k^T v', [B, H, D, M]) and "count" ([B], positions seen) complete a
# decoding state.
SUM_KEYS = ("k_sum", "q_sum", "k_flow", "q_flow", "exp_sum")


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum(-1)


def flow_weights(q, k, v, causal=True, sums=None):
    """Fold the flow normalisers into the inputs: returns ``q' = q A / I``, ``v' = v c`` and the new sums.

    q, k [B, T, H, D], v [B, T, H, M], already in the compute dtype. ``sums`` (causal only) holds the running
    sums after the positions before this segment: ``k_sum`` = sum k, ``q_sum`` = sum q, ``k_flow`` =
    sum k n / O, ``q_flow`` = sum q n / I ([B, H, D]), ``exp_sum`` = sum exp(Ô) ([B, H]) and ``count``
    ([B], long); None means the segment starts the sequence. The returned sums (causal) hold the same after
    this segment; non-causal returns None for them.
    """
    b, t = q.shape[:2]
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


class ChunkedCausalLinearAttention(torch.autograd.Function):
    """o_i = q_i sum_{j<=i} k_j^T v_j, chunk by chunk; q, k [B, H, T, D], v [B, H, T, M] -> o [B, H, T, M]."""

    @staticmethod
    def forward(ctx, q, k, v, chunk: int):
        b, h, t, d = q.shape
        o = v.new_empty(b, h, t, v.shape[-1])
        state = q.new_zeros(b, h, d, v.shape[-1])
        for s in range(0, t, chunk):
            qc, kc, vc = q[:, :, s : s + chunk], k[:, :, s : s + chunk], v[:, :, s : s + chunk]
            scores = (qc @ kc.transpose(-1, -2)).tril_()
            o[:, :, s : s + chunk] = scores @ vc + qc @ state
            state += kc.transpose(-1, -2) @ vc
        ctx.save_for_backward(q, k, v)
        ctx.chunk = chunk
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v = ctx.saved_tensors
        chunk = ctx.chunk
        t = q.shape[2]
        do = do.to(q.dtype)
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        starts = range(0, t, chunk)
        # dq needs the state before each chunk: a forward pass.
        state = q.new_zeros(q.shape[0], q.shape[1], q.shape[3], v.shape[3])
        for s in starts:
            kc, vc, doc = k[:, :, s : s + chunk], v[:, :, s : s + chunk], do[:, :, s : s + chunk]
            dscores = (doc @ vc.transpose(-1, -2)).tril_()
            dq[:, :, s : s + chunk] = dscores @ kc + doc @ state.transpose(-1, -2)
            state += kc.transpose(-1, -2) @ vc
        # dk, dv need sum q^T dO over the later chunks: a backward pass.
        grad_state = state.zero_()
        for s in reversed(starts):
            qc, kc, vc, doc = (x[:, :, s : s + chunk] for x in (q, k, v, do))
            scores = (qc @ kc.transpose(-1, -2)).tril_()
            dscores = (doc @ vc.transpose(-1, -2)).tril_()
            dk[:, :, s : s + chunk] = dscores.transpose(-1, -2) @ qc + vc @ grad_state.transpose(-1, -2)
            dv[:, :, s : s + chunk] = scores.transpose(-1, -2) @ doc + kc @ grad_state
            grad_state += qc.transpose(-1, -2) @ doc
        return dq, dk, dv, None


def causal_linear_attention(q, k, v, chunk: int = DEFAULT_CHUNK):
    """q, k [B, T, H, D], v [B, T, H, M] -> o [B, T, H, M], o_i = q_i sum_{j<=i} k_j^T v_j (chunked)."""
    o = ChunkedCausalLinearAttention.apply(
        q.transpose(1, 2).contiguous(), k.transpose(1, 2).contiguous(), v.transpose(1, 2).contiguous(), chunk
    )
    return o.transpose(1, 2)


def linear_attention(q, k, v):
    """Non-causal: o_i = q_i (K^T V), two matmuls through a [B, H, D, M] state."""
    return torch.einsum("bthd,bhdm->bthm", q, torch.einsum("bthd,bthm->bhdm", k, v))


def flow_attention(q, k, v, causal=True, chunk_size: int = DEFAULT_CHUNK):
    out_dtype = q.dtype
    dt = torch.promote_types(q.dtype, torch.float32)
    q, k, v = q.to(dt), k.to(dt), v.to(dt)
    q_scaled, v_scaled, _ = flow_weights(q, k, v, causal)
    if causal:
        o = causal_linear_attention(q_scaled, k, v_scaled, chunk_size)
    else:
        o = linear_attention(q_scaled, k, v_scaled)
    return o.to(out_dtype)
