"""Flow-attention (Flowformer), the definition: every sum written out, computed in fp64.

Shapes: q, k [B, T, H, D] (non-negative: the layer applies a sigmoid feature map), v [B, T, H, M];
o [B, T, H, M]. ``a . b`` is a dot product over the feature dimension D (one scalar per token and head) and
``S + eps`` adds eps to every element of the summed vector S.

Non-causal (m = n = T sources and sinks):

    I_i = (q_i + eps) . (sum_j k_j + eps)              incoming flow of sink i
    O_j = (k_j + eps) . (sum_i q_i + eps)              outgoing flow of source j
    Î_i = (q_i + eps) . (sum_j k_j / O_j + eps)        incoming flow with conserved outgoing flow
    Ô_j = clamp((k_j + eps) . (sum_i q_i / I_i + eps), -1, 1)
    A_i = sigmoid(Î_i * n / m)                         allocation
    c_j = softmax_j(Ô) * m                             competition
    o_i = A_i * (q_i / I_i) sum_j k_j^T (v_j c_j)

Causal: every sum runs over j <= i and n_i = i + 1 positions have been seen:

    I_i = (q_i + eps) . (sum_{j<=i} k_j + eps)
    O_i = (k_i + eps) . (sum_{j<=i} q_j + eps)
    Î_i = (q_i + eps) . (sum_{j<=i} k_j n_j / O_j + eps) / n_i
    Ô_i = clamp((k_i + eps) . (sum_{j<=i} q_j n_j / I_j + eps) / n_i, -1, 1)
    A_i = sigmoid(Î_i)
    c_i = exp(Ô_i) / sum_{j<=i} exp(Ô_j) * n_i        competition among the sources seen at i
    o_i = A_i * (q_i / I_i) sum_{j<=i} k_j^T (v_j c_j)

c_j inside the last sum is c as defined at position j, so the sum is a running state of size D x M. These are
the paper's equations (Wu et al. 2022, the causal variant of its flow-attention) and what the authors' causal
code computes (thuml/Flowformer, ``Flow_Attention_Causal``: the position count n multiplies the reciprocal
flows 1/I and 1/O and divides the conserved flows, broadcast over [B, H, T] as above), and seqzoo matches
them. Ô is clamped to [-1, 1], as in the authors' language-model code (one of their copies clamps to
[-10, 10], one not at all), so exp(Ô) lies in [1/e, e] and needs no shift.

The causal reference materialises the prefix sums of k_j^T (v_j c_j): a [B, T, H, D, M] tensor. It is slow
and memory hungry on purpose, the plainest statement of the equations; the non-causal one forms the
[B, H, T, T] flow matrix (q_i / I_i) . k_j explicitly, a different route from the kernels' (q K^T) V order.
It computes in fp64 whatever the inputs and returns o in q's dtype: in fp32 the non-causal sums over T lost
up to 1.3e-5 relative in the gradients (T = 4096, values sharing an offset), where the kernels keep ~1e-6.
"""

from __future__ import annotations

import torch

EPS = 1e-6


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum(-1)


def flow_attention(q, k, v, causal=True):
    out_dtype = q.dtype
    dt = torch.float64  # the arithmetic, whatever the inputs (see the module docstring)
    q, k, v = q.to(dt), k.to(dt), v.to(dt)
    t = q.shape[1]
    if causal:
        n = torch.arange(1, t + 1, device=q.device, dtype=dt)[None, :, None]  # [1, T, 1]
        incoming = _dot(q + EPS, k.cumsum(1) + EPS)  # I [B, T, H]
        outgoing = _dot(k + EPS, q.cumsum(1) + EPS)  # O
        incoming_hat = _dot(q + EPS, (k * (n / outgoing)[..., None]).cumsum(1) + EPS) / n
        outgoing_hat = _dot(k + EPS, (q * (n / incoming)[..., None]).cumsum(1) + EPS) / n
        outgoing_hat = outgoing_hat.clamp(-1.0, 1.0)
        allocation = torch.sigmoid(incoming_hat)
        e = outgoing_hat.exp()
        competition = e / e.cumsum(1) * n
        # Prefix sums of k_j^T (v_j c_j): [B, T, H, D, M].
        kv = torch.einsum("bthd,bthm->bthdm", k, v * competition[..., None]).cumsum(1)
        o = torch.einsum("bthd,bthdm->bthm", q / incoming[..., None], kv) * allocation[..., None]
    else:
        incoming = _dot(q + EPS, k.sum(1, keepdim=True) + EPS)  # [B, T, H]
        outgoing = _dot(k + EPS, q.sum(1, keepdim=True) + EPS)
        incoming_hat = _dot(q + EPS, (k / outgoing[..., None]).sum(1, keepdim=True) + EPS)
        outgoing_hat = _dot(k + EPS, (q / incoming[..., None]).sum(1, keepdim=True) + EPS).clamp(-1.0, 1.0)
        allocation = torch.sigmoid(incoming_hat * (t / t))  # n / m = 1: as many sinks as sources
        competition = torch.softmax(outgoing_hat, dim=1) * t
        # Flow matrix F[i, j] = (q_i / I_i) . k_j, then o_i = A_i sum_j F[i, j] c_j v_j.
        flow = torch.einsum("bihd,bjhd->bhij", q / incoming[..., None], k)
        o = torch.einsum("bhij,bjhm->bihm", flow, v * competition[..., None]) * allocation[..., None]
    return o.to(out_dtype)
